//! Peer-scale and handshake benchmark of the data-plane engine (issue 3, "Performance").
//!
//! Run with `cargo bench --bench handshakes` (a plain `main`, `harness = false`). It drives
//! `arcd::dataplane::engine::Engine` directly (the engine is sans-I/O: datagrams in, packets to
//! send out), on one thread, and prints tables:
//!
//! 1. Loading sessions: `Engine::apply(Applied::Added)` for `BENCH_SESSIONS` (default 100,000)
//!    sessions into the engine's one peer index, as `Dataplane::start` does at start, with the
//!    resident memory after it.
//! 2. Handshakes: `BENCH_HANDSHAKES` (default 20,000) initiations from as many distinct boringtun
//!    `Tunn` clients, made before the timed region, then fed to the engine one by one:
//!    (A1) first handshake of a loaded peer (its `Tunn` is made on first use),
//!    (A2) the next handshake of the same peers (rekey: the `Tunn` exists),
//!    (B) an initiation refused under load (cookie reply),
//!    (C) an initiation with a bad mac1 (dropped),
//!    (D) an initiation under load that carries a valid cookie (mac2) and so is served,
//!    (T) one timer tick of a handshaken, quiet peer (`run_timers`), extrapolated to all sessions.
//! 3. The boringtun steps the engine's handshake path is made of, timed alone on the same
//!    initiations, to show where the time goes, with one X25519 DH as a calibration.
//!
//! Every handshake message goes through `Engine::screen_handshake` first, as a packet worker
//! does: not under load for (A1)/(A2), under load (a worker's handshake queue half full, see
//! `src/dataplane/handshake_load.rs`) for (B) to (D). Only messages it lets through reach
//! `Engine::handle_datagram`.
//!
//! Times: wall clock and this thread's CPU time (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`),
//! so that other processes on the machine show up as wall > CPU rather than as a slower figure.
//! The rate "per core" is computed from CPU time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![allow(unsafe_code)] // libc::kill: the test sends arcd the signal a service manager would

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcd::dataplane::engine::{
    Engine, Listener, Outbox, Outgoing, Screened, BUFFER_SIZE, IDLE_AFTER, TIMER_PERIOD,
};
use arcd::dataplane::Applied;
use arcd::store::ActiveSession;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::RngCore;

const RP: &str = "ap-northeast-1";
/// WireGuard message types (first byte).
const HANDSHAKE_RESPONSE: u8 = 2;
const COOKIE_REPLY: u8 = 3;
/// Offset of mac1 in a 148-byte handshake initiation.
const INIT_MAC1: usize = 116;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        Err(_) => default,
    }
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    // From the C library std already links (no extra dependency).
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// Linux `CLOCK_THREAD_CPUTIME_ID`.
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// This thread's CPU time (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, nanosecond resolution).
fn thread_cpu() -> Duration {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (x86_64/aarch64 Linux layout: two 64-bit fields).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Machine-wide CPU time from /proc/stat: (total, steal) in clock ticks.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are already in user/nice).
    let total = fields.iter().take(8).sum();
    (total, fields.get(7).copied().unwrap_or(0))
}

/// Resident memory of this process: (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let value = f();
    let (wall, cpu) = (wall0.elapsed(), thread_cpu().saturating_sub(cpu0));
    (value, wall, cpu)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn us_each(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn per_sec(d: Duration, n: usize) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Thousands separators for the tables.
fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

/// A session as `store::sessions::list_active_sessions` returns it (same field shapes).
fn session(i: usize, public_key: &[u8; 32], rp_id: &str) -> ActiveSession {
    let imsi = arcd::ids::Imsi::new(format!("99999{:010}", i));
    ActiveSession {
        imsi: imsi.clone(),
        primary_imsi: imsi,
        sim_id: format!("8942310000{:09}", i).into(),
        operator_id: "OP0000000001".into(),
        session_id: format!("{:032x}", rand::random::<u128>()),
        rp_id: rp_id.into(),
        client_public_key: arcd::wgkey::encode(public_key),
        // 10.64.0.2 onwards, as from the pool 10.64.0.0/14.
        client_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 2)) + i as u32),
        group_id: None,
        vpg_id: None,
    }
}

/// A device: a boringtun client and the address it sends from (one IP per device, as cookies
/// are per source IP).
struct Client {
    tunn: Tunn,
    from: SocketAddr,
}

fn client_addr(i: usize) -> SocketAddr {
    // 198.18.0.0/15 (benchmarking range): 131,072 addresses, then the port changes.
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i % 131_072) as u32);
    SocketAddr::new(IpAddr::V4(ip), 51_820 + (i / 131_072) as u16)
}

fn initiation(tunn: &mut Tunn, buf: &mut [u8]) -> Vec<u8> {
    match tunn.format_handshake_initiation(buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("client made no initiation: {other:?}"),
    }
}

/// What the engine answered to a batch of datagrams.
#[derive(Default, Debug)]
struct Answers {
    responses: usize,
    cookies: usize,
    other: usize,
    silent: usize,
}

impl Answers {
    fn count(&mut self, out: &Outbox) {
        if out.is_empty() {
            self.silent += 1;
        }
        for o in out {
            match o {
                Outgoing::Udp { data, .. } if data[0] == HANDSHAKE_RESPONSE => self.responses += 1,
                Outgoing::Udp { data, .. } if data[0] == COOKIE_REPLY => self.cookies += 1,
                _ => self.other += 1,
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} responses, {} cookie replies, {} other, {} unanswered",
            self.responses, self.cookies, self.other, self.silent
        )
    }
}

/// Feeds `datagrams[i]` from `clients[i]`, one at a time, as a packet worker and its handshake
/// task do: screened (`under_load` as given), then handled when let through (a fresh
/// `Instant::now()` per datagram, the outbox drained after each).
fn feed(
    engine: &Engine,
    datagrams: &[Vec<u8>],
    clients: &[Client],
    under_load: bool,
) -> (Answers, Duration, Duration) {
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut answers = Answers::default();
    let ((), wall, cpu) = timed(|| {
        for (i, datagram) in datagrams.iter().enumerate() {
            let from = clients[i].from;
            if engine.screen_handshake(0, from, datagram, under_load, &mut scratch, &mut out)
                == Screened::Queue
            {
                engine.handle_datagram(0, from, datagram, Instant::now(), &mut scratch, &mut out);
            }
            answers.count(&out);
            out.clear();
        }
    });
    (answers, wall, cpu)
}

struct Row {
    name: String,
    n: usize,
    wall: Duration,
    cpu: Duration,
    target: &'static str,
    verdict: String,
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "| {:<68} | {:>7} | {:>9} | {:>9} | {:>12} | {:>12} | {:<12} | {:<4} |",
        "operation", "n", "µs/op cpu", "µs/op wall", "ops/s (cpu)", "ops/s (wall)", "target", "met"
    );
    println!(
        "|{:-<70}|{:->9}|{:->11}|{:->11}|{:->14}|{:->14}|{:-<14}|{:-<6}|",
        "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<68} | {:>7} | {:>9.2} | {:>10.2} | {:>12} | {:>12} | {:<12} | {:<4} |",
            r.name,
            grouped(r.n as f64),
            us_each(r.cpu, r.n),
            us_each(r.wall, r.n),
            grouped(per_sec(r.cpu, r.n)),
            grouped(per_sec(r.wall, r.n)),
            r.target,
            r.verdict
        );
    }
}

fn verdict(ok: bool) -> String {
    if ok { "yes" } else { "NO" }.to_string()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, and
    // then a small smoke run (debug build) proves the bench still works without taking minutes.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let (default_sessions, default_handshakes) = if smoke { (300, 60) } else { (100_000, 20_000) };
    let n_sessions = env_usize("BENCH_SESSIONS", default_sessions);
    let n_handshakes = env_usize("BENCH_HANDSHAKES", default_handshakes);
    assert!(
        n_handshakes <= n_sessions,
        "BENCH_HANDSHAKES must not exceed BENCH_SESSIONS"
    );
    let ticks_start = machine_ticks();
    let server_private = random_key();
    let server_public = PublicKey::from(&StaticSecret::from(server_private));

    println!("arcd data-plane engine: peer scale and handshakes (one thread)");
    println!(
        "machine: {} CPUs; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "sessions: {} (BENCH_SESSIONS), handshakes: {} (BENCH_HANDSHAKES)",
        grouped(n_sessions as f64),
        grouped(n_handshakes as f64)
    );

    // ---- Setup (untimed): device keys, clients and their initiations. -------------------
    let setup = Instant::now();
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut client_keys = Vec::with_capacity(n_handshakes);
    let mut clients: Vec<Client> = (0..n_handshakes)
        .map(|i| {
            let secret = StaticSecret::from(random_key());
            client_keys.push(*PublicKey::from(&secret).as_bytes());
            Client {
                tunn: Tunn::new(secret, server_public, None, None, i as u32, None),
                from: client_addr(i),
            }
        })
        .collect();
    let (initiations, client_wall, client_cpu) = timed(|| {
        clients
            .iter_mut()
            .map(|c| initiation(&mut c.tunn, &mut buf))
            .collect::<Vec<_>>()
    });
    // Devices that never handshake in this bench: any 32 bytes are a key to the engine (their
    // `Tunn` is made only on a first packet).
    let device_key = |i: usize| {
        if i < n_handshakes {
            client_keys[i]
        } else {
            random_key()
        }
    };
    let sessions: Vec<ActiveSession> = (0..n_sessions)
        .map(|i| session(i, &device_key(i), RP))
        .collect();
    println!(
        "setup (untimed): {} clients and initiations, {} sessions in {:.1} s; client-side \
         format_handshake_initiation {:.1} µs CPU each",
        grouped(n_handshakes as f64),
        grouped(n_sessions as f64),
        secs(setup.elapsed()),
        us_each(client_cpu, n_handshakes),
    );
    let _ = client_wall;

    // ---- 1. Loading sessions at start. ------------------------------------------------------
    let (rss_before, _) = rss_kib();
    let input = sessions.clone();
    let (rss_input, _) = rss_kib();
    // Dataplane::start: apply each of list_active_sessions(...) to the engine.
    let engine = Engine::new(vec![Listener::new(&RP.into(), server_private)]);
    let mut startup = Outbox::new();
    let (_, engine_wall, engine_cpu) = timed(|| {
        let now = Instant::now();
        for s in input {
            engine.apply(&Applied::Added(s), now, &mut startup);
        }
    });
    let (rss_engine, hwm_engine) = rss_kib();
    assert_eq!(engine.peer_count(), n_sessions);
    assert!(startup.is_empty(), "loading sends nothing");
    assert!(
        engine.next_deadline().is_none(),
        "loaded peers cost no timers"
    );

    println!("\n1. Loading {} sessions", grouped(n_sessions as f64));
    println!(
        "| {:<68} | {:>9} | {:>9} | {:>10} | {:>11} |",
        "step", "wall s", "CPU s", "µs/session", "RSS +MiB"
    );
    println!(
        "|{:-<70}|{:->11}|{:->11}|{:->12}|{:->13}|",
        "", "", "", "", ""
    );
    let load_row = |name: &str, wall: Duration, cpu: Duration, rss: f64| {
        println!(
            "| {:<68} | {:>9.3} | {:>9.3} | {:>10.2} | {:>11.1} |",
            name,
            secs(wall),
            secs(cpu),
            us_each(wall, n_sessions),
            rss
        );
    };
    load_row(
        "Engine: apply(Added) each (the in-memory part of the < 3 s start target)",
        engine_wall,
        engine_cpu,
        mib(rss_engine.saturating_sub(rss_input)),
    );
    println!(
        "RSS: {:.1} MiB before the sessions were copied, {:.1} MiB with the input Vec ({:.1} MiB \
         for {} ActiveSession), {:.1} MiB after loading (peak {:.1} MiB). SQLite reading is not \
         included: scripts/bench/peers.sh measures the whole start.",
        mib(rss_before),
        mib(rss_input),
        mib(rss_input.saturating_sub(rss_before)),
        grouped(n_sessions as f64),
        mib(rss_engine),
        mib(hwm_engine)
    );
    println!(
        "Engine RSS per loaded session: {:.0} bytes. boringtun's Tunn is {} bytes \
         (size_of::<Option<Tunn>>() = {}); a peer that never handshakes holds no Tunn, but an \
         Option<Tunn> stored inline still takes that much room.",
        (rss_engine.saturating_sub(rss_input) * 1024) as f64 / n_sessions as f64,
        std::mem::size_of::<Tunn>(),
        std::mem::size_of::<Option<Tunn>>()
    );

    // The engines below are built afresh; keep one peer index's worth of memory at a time.
    drop(engine);

    // ---- 2. Handshakes. ---------------------------------------------------------------------
    let mut rows = Vec::new();

    // (A1)/(A2): one listener, not under load.
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let spread = Engine::new(vec![Listener::new(&RP.into(), server_private)]);
    let mut out = Outbox::new();
    for s in &sessions {
        spread.apply(&Applied::Added(s.clone()), Instant::now(), &mut out);
    }
    out.clear();
    assert_eq!(spread.peer_count(), n_sessions);
    let (a1, wall, cpu) = feed(&spread, &initiations, &clients, false);
    assert_eq!(
        a1.responses,
        n_handshakes,
        "(A1) every initiation must be answered: {}",
        a1.describe()
    );
    rows.push(Row {
        name: format!(
            "(A1) first handshake of a loaded peer ({} peers)",
            grouped(n_sessions as f64)
        ),
        n: n_handshakes,
        wall,
        cpu,
        target: ">= 4,000/s",
        verdict: verdict(per_sec(cpu, n_handshakes) >= 4000.0),
    });

    // (A2): the same peers handshake again (rekey); their Tunn exists now.
    let (rekeys, _, _) = timed(|| {
        clients
            .iter_mut()
            .map(|c| initiation(&mut c.tunn, &mut buf))
            .collect::<Vec<_>>()
    });
    let (a2, wall, cpu) = feed(&spread, &rekeys, &clients, false);
    assert_eq!(
        a2.responses,
        n_handshakes,
        "(A2) every initiation must be answered: {}",
        a2.describe()
    );
    rows.push(Row {
        name: "(A2) next handshake of the same peers (rekey, Tunn exists)".into(),
        n: n_handshakes,
        wall,
        cpu,
        target: ">= 4,000/s",
        verdict: verdict(per_sec(cpu, n_handshakes) >= 4000.0),
    });

    // (T): timers of active peers. After (A1)/(A2) every handshaken peer is scheduled every
    // TIMER_PERIOD until it has been quiet for 600 s (IDLE_AFTER): the standing
    // cost of connected but quiet devices. Eight rounds in virtual time, every peer due each one.
    let rounds = 8u32;
    let base = Instant::now();
    let mut timer_out = Outbox::new();
    let mut timer_packets = 0usize;
    assert!(
        spread.next_deadline().is_some(),
        "handshaken peers are scheduled"
    );
    let ((), wall, cpu) = timed(|| {
        for round in 1..=rounds {
            spread.run_timers(base + TIMER_PERIOD * round, &mut scratch, &mut timer_out);
            timer_packets += timer_out.len();
            timer_out.clear();
        }
    });
    let timer_ticks = rounds as usize * n_handshakes;
    let timer_cpu = cpu;
    rows.push(Row {
        name: format!(
            "(T) timer tick of a handshaken, quiet peer (every {} ms)",
            TIMER_PERIOD.as_millis()
        ),
        n: timer_ticks,
        wall,
        cpu,
        target: "",
        verdict: String::new(),
    });
    drop(spread);

    // (B): one listener, under load: every initiation is refused with a cookie reply. A fresh
    // engine, so that (B) to (D) run well inside one 128-second cookie secret period.
    let engine = Engine::new(vec![Listener::new(&RP.into(), server_private)]);
    for s in &sessions {
        engine.apply(&Applied::Added(s.clone()), Instant::now(), &mut out);
    }
    out.clear();
    let (b, wall, cpu) = feed(&engine, &initiations, &clients, true);
    assert_eq!(
        b.cookies,
        n_handshakes,
        "(B) every initiation must get a cookie reply: {}",
        b.describe()
    );
    rows.push(Row {
        name: "(B) initiation refused under load -> cookie reply".into(),
        n: n_handshakes,
        wall,
        cpu,
        target: "",
        verdict: String::new(),
    });

    // (C): bad mac1 (one bit flipped): dropped before any other work.
    let bad_mac1: Vec<Vec<u8>> = initiations
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p[INIT_MAC1] ^= 1;
            p
        })
        .collect();
    let (c, wall, cpu) = feed(&engine, &bad_mac1, &clients, true);
    assert_eq!(
        c.silent,
        n_handshakes,
        "(C) bad mac1 must be dropped: {}",
        c.describe()
    );
    rows.push(Row {
        name: "(C) initiation with a bad mac1 -> dropped".into(),
        n: n_handshakes,
        wall,
        cpu,
        target: "",
        verdict: String::new(),
    });

    // (D): still under load, initiations that carry the cookie of a previous cookie reply.
    // Setup (untimed): fresh initiation -> cookie reply -> client takes the cookie -> new
    // initiation with mac2.
    let mut with_cookie = Vec::with_capacity(n_handshakes);
    for (i, client) in clients.iter_mut().enumerate() {
        let first = initiation(&mut client.tunn, &mut buf);
        let screened =
            engine.screen_handshake(0, client.from, &first, true, &mut scratch, &mut out);
        assert_eq!(screened, Screened::Answered);
        let reply = match out.pop() {
            Some(Outgoing::Udp { data, .. }) if data[0] == COOKIE_REPLY => data,
            other => panic!("(D) setup: expected a cookie reply for client {i}: {other:?}"),
        };
        out.clear();
        match client
            .tunn
            .decapsulate(Some(client.from.ip()), &reply, &mut buf)
        {
            TunnResult::Done => {}
            other => panic!("(D) setup: client {i} refused the cookie reply: {other:?}"),
        }
        with_cookie.push(initiation(&mut client.tunn, &mut buf));
    }
    let (d, wall, cpu) = feed(&engine, &with_cookie, &clients, true);
    assert_eq!(
        d.responses,
        n_handshakes,
        "(D) initiations with a valid cookie must be served: {}",
        d.describe()
    );
    rows.push(Row {
        name: "(D) under load, initiation with a valid cookie (mac2)".into(),
        n: n_handshakes,
        wall,
        cpu,
        target: ">= 4,000/s",
        verdict: verdict(per_sec(cpu, n_handshakes) >= 4000.0),
    });
    print_rows(
        &format!(
            "2. Handshake initiations fed to Engine::handle_datagram ({} peers loaded)",
            grouped(n_sessions as f64)
        ),
        &rows,
    );
    println!(
        "   (A1)/(A2): not under load. Answers: A1 {}; A2 {}.",
        a1.describe(),
        a2.describe()
    );
    let per_peer_second =
        us_each(timer_cpu, timer_ticks) * 1e-6 * (1000 / TIMER_PERIOD.as_millis()) as f64;
    println!(
        "   (T): {} rounds over {} peers, {} packets sent. Extrapolated: {} connected, quiet \
         devices cost {:.1} % of one core in timers alone (each ticked {} times a second for up \
         to {} s after its last packet; a device with a persistent keepalive never stops).",
        rounds,
        grouped(n_handshakes as f64),
        timer_packets,
        grouped(n_sessions as f64),
        100.0 * per_peer_second * n_sessions as f64,
        1000 / TIMER_PERIOD.as_millis(),
        IDLE_AFTER.as_secs()
    );
    drop(engine);

    // ---- 3. The steps of the engine's handshake path, each alone. ----------------------------
    // Fresh initiations (a server Tunn rejects a timestamp it has seen).
    let fresh: Vec<Vec<u8>> = clients
        .iter_mut()
        .map(|c| initiation(&mut c.tunn, &mut buf))
        .collect();
    let server_secret = StaticSecret::from(server_private);
    let unlimited = Arc::new(RateLimiter::new(&server_public, u64::MAX));
    let mut steps = Vec::new();
    let mut step = |name: &str, wall: Duration, cpu: Duration| {
        steps.push(Row {
            name: name.into(),
            n: n_handshakes,
            wall,
            cpu,
            target: "",
            verdict: String::new(),
        })
    };
    let ((), wall, cpu) = timed(|| {
        for key in &client_keys {
            let shared = server_secret.diffie_hellman(&PublicKey::from(*key));
            std::hint::black_box(shared);
        }
    });
    step(
        "x25519-dalek DH alone (calibration: 5 in (A1), 4 in (A2))",
        wall,
        cpu,
    );
    let ((), wall, cpu) = timed(|| {
        for (i, p) in fresh.iter().enumerate() {
            let ok = unlimited.verify_packet(Some(clients[i].from.ip()), p, &mut scratch);
            assert!(ok.is_ok());
        }
    });
    step(
        "RateLimiter::verify_packet (mac1 ok, not under load)",
        wall,
        cpu,
    );
    let ((), wall, cpu) = timed(|| {
        for p in &fresh {
            let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(p) else {
                panic!("not an initiation");
            };
            let half = parse_handshake_anon(&server_secret, &server_public, &init)
                .expect("anonymous parse");
            std::hint::black_box(half);
        }
    });
    step(
        "parse_handshake_anon (1 DH: finds the peer's key)",
        wall,
        cpu,
    );
    let (mut server_tunns, wall, cpu) = timed(|| {
        client_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                Tunn::new(
                    server_secret.clone(),
                    PublicKey::from(*key),
                    None,
                    None,
                    i as u32,
                    Some(unlimited.clone()),
                )
            })
            .collect::<Vec<_>>()
    });
    step(
        "Tunn::new (server side, first use: 1 basepoint mult + 1 DH)",
        wall,
        cpu,
    );
    let ((), wall, cpu) = timed(|| {
        for (i, p) in fresh.iter().enumerate() {
            match server_tunns[i].decapsulate(Some(clients[i].from.ip()), p, &mut scratch) {
                TunnResult::WriteToNetwork(r) if r[0] == HANDSHAKE_RESPONSE => {}
                other => panic!("no response: {other:?}"),
            }
        }
    });
    step(
        "Tunn::decapsulate(init) -> response (boringtun alone: 3 DH + keygen)",
        wall,
        cpu,
    );
    print_rows(
        "3. The same work in boringtun alone (what the engine's handshake path is made of)",
        &steps,
    );
    println!(
        "   engine (A1) = verify_packet + parse_handshake_anon + Tunn::new + decapsulate (which \
         runs verify_packet again); (A2) = the same without Tunn::new."
    );
    let ticks_end = machine_ticks();
    let ticks = ticks_end.0.saturating_sub(ticks_start.0).max(1);
    println!(
        "\nsteal time during the run: {:.1} % of the machine's CPU time (hypervisor)",
        100.0 * ticks_end.1.saturating_sub(ticks_start.1) as f64 / ticks as f64
    );
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
