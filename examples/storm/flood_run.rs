//! `storm flood`: the command around flood.rs. Reads the devices, prepares them (handshakes and
//! encryption, untimed), then floods and measures over the timed region: the server's TUN
//! receive counters (the TUN interface's line in /proc/PID/net/dev: the server's network
//! namespace, read from the generator's), the server's CPU time (utime+stime of all its threads)
//! and the generator's own. The last line, `FLOOD_RESULT key=value ...`, is for
//! scripts/bench/flood.sh.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::fleet::StormConfig;
use crate::flood::{self, FloodConfig};
use crate::flood_packet::{IP_HEADER, UDP_HEADER};

#[derive(clap::Args)]
pub struct FloodArgs {
    #[arg(long)]
    devices: PathBuf,
    /// Use only the first N devices of the file.
    #[arg(long)]
    count: Option<usize>,
    #[arg(long)]
    endpoint: SocketAddr,
    /// Source addresses, comma-separated; a network stands for its hosts (as for `run`).
    #[arg(long, value_delimiter = ',', required = true)]
    sources: Vec<String>,
    #[arg(long, default_value_t = 20_000)]
    first_port: u16,
    #[arg(long, default_value_t = 1)]
    ports_per_source: usize,
    /// Destination of the inner UDP packets, behind the server's TUN.
    #[arg(long, default_value = "10.64.0.1:9")]
    target: SocketAddrV4,
    /// Size of each inner IPv4 packet.
    #[arg(long, default_value_t = 1400)]
    packet_len: usize,
    /// Packets each device encrypts before the timed region.
    #[arg(long, default_value_t = 10_000)]
    packets: usize,
    /// The flood stops after this many seconds even if packets are left.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Packets in flight at most (needs --server-pid and --tun); 0: no pacing.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// The server process: its CPU time, and its network namespace for --tun.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's TUN interface, whose receive counter tells what the server delivered.
    #[arg(long)]
    tun: Option<String>,
    /// Threads that handshake and encrypt (the flood itself is one thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The receive counters (bytes, packets) of `interface` in the network namespace of `pid`.
fn tun_counters(pid: u32, interface: &str) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let line = table
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(interface)?.strip_prefix(':'))?;
    let mut fields = line.split_whitespace();
    let bytes = fields.next()?.parse().ok()?;
    let packets = fields.next()?.parse().ok()?;
    Some((bytes, packets))
}

/// Busy and total CPU ticks of the whole machine (/proc/stat's `cpu` line: busy is user, nice,
/// system, irq, softirq and steal).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

/// CPU seconds of each thread of `pid` (thread id, name, seconds).
fn thread_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let name = stat.split_once(" (")?.1.rsplit_once(") ")?.0.to_string();
            let seconds = crate::cpu_seconds(&task.path().join("stat").to_string_lossy())?;
            Some((tid, name, seconds))
        })
        .collect()
}

/// The server's threads that used at least 10 ms of CPU between the two samples, busiest first:
/// `name:seconds,...` (whether the work spread over threads, i.e. over cores).
fn busy_threads(before: &[(u32, String, f64)], after: &[(u32, String, f64)]) -> String {
    let mut busy: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, name, cpu)| {
            let earlier = before.iter().find(|t| t.0 == *tid).map_or(0.0, |t| t.2);
            (name.replace(',', "_"), cpu - earlier)
        })
        .filter(|(_, cpu)| *cpu >= 0.01)
        .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1));
    let listed: Vec<String> = busy.iter().map(|(n, c)| format!("{n}:{c:.2}")).collect();
    if listed.is_empty() {
        "-".to_string()
    } else {
        listed.join(",").replace(' ', "_")
    }
}

pub fn run(args: FloodArgs) -> Result<(), String> {
    let mut specs = crate::devices::read(&args.devices).map_err(|e| e.to_string())?;
    if let Some(count) = args.count {
        if count > specs.len() {
            return Err(format!(
                "--count {count}: the file has {} devices",
                specs.len()
            ));
        }
        specs.truncate(count);
    }
    let sources = crate::source_addresses(&args.sources)?;
    let mut storm = StormConfig::wireguard_timers(args.endpoint, sources, *args.target.ip());
    storm.first_port = args.first_port;
    storm.ports_per_source = args.ports_per_source;
    let config = FloodConfig {
        storm,
        target: args.target,
        packet_len: args.packet_len,
        packets_per_device: args.packets,
        duration: Duration::from_secs_f64(args.seconds),
        window: args.window,
        handshake_timeout: Duration::from_secs(1),
    };
    let counters = match (args.server_pid, &args.tun) {
        (Some(pid), Some(tun)) => {
            tun_counters(pid, tun).ok_or(format!("no interface {tun} in /proc/{pid}/net/dev"))?;
            Some((pid, tun.clone()))
        }
        _ => None,
    };
    let read_counters = || {
        counters
            .as_ref()
            .and_then(|(pid, tun)| tun_counters(*pid, tun))
    };
    let bytes = specs.len() * args.packets * flood::datagram_len(args.packet_len);
    eprintln!(
        "preparing {} devices: handshakes, then {} packets each encrypted ({:.0} MB)",
        specs.len(),
        args.packets,
        bytes as f64 / 1e6
    );
    let prepare_start = Instant::now();
    let mut devices = flood::prepare(&specs, &config, args.threads).map_err(|e| e.to_string())?;
    eprintln!(
        "prepared in {:.1} s; flooding",
        prepare_start.elapsed().as_secs_f64()
    );
    let before = read_counters();
    let server_before = args.server_pid.and_then(crate::cpu_seconds_of);
    let threads_before = args.server_pid.map(thread_cpu).unwrap_or_default();
    let self_before = crate::cpu_seconds_of_self();
    let machine_before = machine_ticks();
    let measure_start = Instant::now();
    // Delivered packets, from the TUN's receive counters: the server may write several packets
    // of a flow as one offloaded write (UDP GSO), which the kernel counts as one packet of all
    // their bytes but one IP and UDP header. So the UDP payload delivered is the bytes less one
    // header per write, and each flood packet carries `packet_len - 28` bytes of it. (Counting
    // bytes / packet_len instead lags by a merged header per packet: the window then seems full
    // while the server sits idle.)
    let headers = (IP_HEADER + UDP_HEADER) as u64;
    let payload = args.packet_len as u64 - headers;
    let packet_len = args.packet_len as u64;
    let mut delivered = || {
        let (now, then) = (read_counters()?, before?);
        let (bytes, writes) = (now.0 - then.0, now.1 - then.1);
        Some(bytes.saturating_sub(writes * headers) / payload)
    };
    let start = Instant::now();
    let sent = flood::send(&mut devices, &config, &mut delivered).map_err(|e| e.to_string())?;
    let (_, end) = flood::settle(
        &mut delivered,
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    let self_cpu = crate::cpu_seconds_of_self()
        .zip(self_before)
        .map(|(a, b)| a - b);
    let server_cpu = args
        .server_pid
        .and_then(crate::cpu_seconds_of)
        .zip(server_before)
        .map(|(a, b)| a - b);
    let threads_after = args.server_pid.map(thread_cpu).unwrap_or_default();
    let machine_after = machine_ticks();
    let measured = measure_start.elapsed().as_secs_f64();
    let after = read_counters();
    // Cores busy on the whole machine while this was measured: with the server's and the
    // generator's CPU, what everything else (other work on the box) took.
    let busy_cores = machine_after
        .zip(machine_before)
        .map(|(a, b)| (a.0 - b.0) as f64 / crate::USER_HZ / measured);
    let elapsed = end.saturating_duration_since(start).max(sent.elapsed);
    let tun = after.zip(before).map(|(a, b)| (a.0 - b.0, a.1 - b.1));
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    if let Some((tun_bytes, writes)) = tun {
        let seconds = elapsed.as_secs_f64();
        let packets = tun_bytes.saturating_sub(writes * headers) / payload;
        println!(
            "{} devices sent {} packets in {:.3} s; the server's TUN received {:.0} packets/s, \
             {:.3} Gbit/s of inner packets; server CPU {} s, generator CPU {} s",
            devices.len(),
            sent.sent,
            sent.elapsed.as_secs_f64(),
            packets as f64 / seconds,
            (packets * packet_len) as f64 * 8.0 / seconds / 1e9,
            opt(server_cpu),
            opt(self_cpu)
        );
    }
    println!(
        "FLOOD_RESULT devices={} packets_per_device={} packet_len={} sent={} send_s={:.3} \
         elapsed_s={:.3} tun_rx_bytes={} tun_rx_packets={} server_cpu_s={} generator_cpu_s={} \
         window={} window_full={} presumed_lost={} measured_s={measured:.3} \
         machine_busy_cores={} server_threads={}",
        devices.len(),
        args.packets,
        args.packet_len,
        sent.sent,
        sent.elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        tun.map_or("-".to_string(), |t| t.0.to_string()),
        tun.map_or("-".to_string(), |t| t.1.to_string()),
        opt(server_cpu),
        opt(self_cpu),
        args.window,
        sent.full,
        sent.presumed_lost,
        opt(busy_cores),
        busy_threads(&threads_before, &threads_after)
    );
    Ok(())
}
