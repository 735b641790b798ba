//! First handshakes on one engine from 1 thread and from 2 (issue 16: handshakes in parallel).
//!
//! Run with `cargo bench --bench handshakes_parallel` (a plain `main`, `harness = false`).
//! `BENCH_HANDSHAKES` (default 8,000) devices with loaded sessions send one initiation each; the
//! same initiations go to a fresh engine once per thread count, split into equal contiguous
//! shares, one share per thread, as the data plane's workers would get them. A peer lock or the
//! peer index serialising handshakes would show as a wall-clock rate that does not grow with the
//! threads while the CPU per handshake does.
//!
//! The rate limiter is kept out of the way as in `benches/handshakes.rs`: one listener per 40
//! devices, all with the same server key. Times: wall clock, and the sum of the threads' CPU
//! times (`CLOCK_THREAD_CPUTIME_ID`), so a machine busy with other work shows as wall > CPU.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![allow(unsafe_code)] // clock_gettime, for each thread's CPU time

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arcd::dataplane::engine::{Engine, Listener, Outbox, Outgoing, BUFFER_SIZE};
use arcd::dataplane::Applied;
use arcd::store::ActiveSession;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

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

/// Devices per listener: below the 50 initiations a rate-limit window admits.
const PER_LISTENER: usize = 40;
const HANDSHAKE_RESPONSE: u8 = 2;

fn session(i: usize, public_key: &[u8; 32], rp_id: String) -> ActiveSession {
    let imsi = arcd::ids::Imsi::new(format!("99999{i:010}"));
    ActiveSession {
        imsi: imsi.clone(),
        primary_imsi: imsi,
        sim_id: format!("8942310000{i:09}").into(),
        operator_id: "OP0000000001".into(),
        session_id: format!("{:032x}", rand::random::<u128>()),
        rp_id: rp_id.into(),
        client_public_key: arcd::wgkey::encode(public_key),
        client_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 2)) + i as u32),
        group_id: None,
        vpg_id: None,
    }
}

fn client_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32);
    SocketAddr::new(IpAddr::V4(ip), 51_820)
}

fn engine(server_private: [u8; 32], sessions: &[ActiveSession]) -> Engine {
    let listeners = sessions.len().div_ceil(PER_LISTENER);
    let engine = Engine::new(
        (0..listeners)
            .map(|l| Listener::new(&format!("rp-{l}").into(), server_private))
            .collect(),
    );
    let mut out = Outbox::new();
    for session in sessions {
        engine.apply(&Applied::Added(session.clone()), Instant::now(), &mut out);
    }
    assert_eq!(engine.peer_count(), sessions.len());
    engine
}

/// Feeds `initiations[i]` to the listener of device `i`; answers counted, CPU time returned.
fn feed(engine: &Engine, first: usize, initiations: &[Vec<u8>]) -> (usize, Duration) {
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut responses = 0;
    let cpu_before = thread_cpu();
    for (offset, datagram) in initiations.iter().enumerate() {
        let device = first + offset;
        let listener = device / PER_LISTENER;
        engine.handle_datagram(
            listener,
            client_addr(device),
            datagram,
            Instant::now(),
            &mut scratch,
            &mut out,
        );
        responses += out
            .iter()
            .filter(|o| matches!(o, Outgoing::Udp { data, .. } if data[0] == HANDSHAKE_RESPONSE))
            .count();
        out.clear();
    }
    (responses, thread_cpu() - cpu_before)
}

fn main() {
    let n: usize = std::env::var("BENCH_HANDSHAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8_000);
    let server_private = StaticSecret::random_from_rng(rand::thread_rng());
    let server_public = PublicKey::from(&server_private);
    let mut buf = vec![0u8; 256];
    let mut sessions = Vec::with_capacity(n);
    let mut initiations = Vec::with_capacity(n);
    for i in 0..n {
        let client_private = StaticSecret::random_from_rng(rand::thread_rng());
        let client_public = PublicKey::from(&client_private);
        sessions.push(session(
            i,
            client_public.as_bytes(),
            format!("rp-{}", i / PER_LISTENER),
        ));
        let mut tunn = Tunn::new(client_private, server_public, None, None, i as u32, None);
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => initiations.push(p.to_vec()),
            other => panic!("client made no initiation: {other:?}"),
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "first handshakes of {n} loaded peers, one engine; load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| threads | wall s | handshakes/s (wall) | CPU s (all threads) | handshakes per CPU-s | wall speed-up |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut single_rate = None;
    for threads in [1usize, 2] {
        let engine = engine(server_private.to_bytes(), &sessions);
        let share = n.div_ceil(threads);
        let started = Instant::now();
        let results: Vec<(usize, Duration)> = std::thread::scope(|scope| {
            let workers: Vec<_> = initiations
                .chunks(share)
                .enumerate()
                .map(|(t, chunk)| {
                    let engine = &engine;
                    scope.spawn(move || feed(engine, t * share, chunk))
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let wall = started.elapsed();
        let responses: usize = results.iter().map(|(r, _)| r).sum();
        let cpu: Duration = results.iter().map(|(_, c)| *c).sum();
        assert_eq!(responses, n, "every initiation must be answered");
        let rate = n as f64 / wall.as_secs_f64();
        let speedup = single_rate.map_or(1.0, |single| rate / single);
        single_rate.get_or_insert(rate);
        println!(
            "| {threads} | {:.3} | {rate:.0} | {:.3} | {:.0} | {speedup:.2}× |",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            n as f64 / cpu.as_secs_f64()
        );
    }
}
