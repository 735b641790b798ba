//! Reconnect-storm load generator (issue 16): N emulated WireGuard devices that all come back at
//! once, as a fleet does after an outage or a server restart.
//!
//!   storm keys --count N --network 10.64.0.0/14 --server-key FILE --devices OUT --wg-conf OUT
//!   storm provision --api http://HOST:PORT --credentials root-credentials.json --count N --devices OUT
//!   storm run --devices FILE --endpoint IP:PORT --sources IP|NET,... --target IP [--server-pid PID]
//!   storm flood --devices FILE --endpoint IP:PORT --sources IP|NET,... [--server-pid PID --tun IF]
//!
//! `run` prepares every device (its own UDP socket, so its own source port; a boringtun `Tunn`;
//! a first initiation), starts them at the same instant, and reports the time until 50/90/99/100 %
//! of the fleet had a session (handshake response received) and had its data packet (an ICMP echo
//! to `--target` through the tunnel) answered, the server's CPU time over the storm (utime+stime of
//! `--server-pid`, all threads, from /proc/PID/stat), the generator's own CPU time, and the cookie
//! replies received. The last line, `STORM_RESULT key=value ...`, is for scripts
//! (scripts/bench/storm.sh). fleet.rs says how a device behaves.
//!
//! `flood` measures the server's data plane rather than its handshakes: each device handshakes,
//! encrypts all its data packets before the timed region, then the fleet sends them as fast as
//! the server takes them (flood.rs; scripts/bench/flood.sh).
//!
//! Why an example and not a `[[bench]]`: it is a tool a script runs with arguments, as root in a
//! network namespace; `cargo build --release --example storm` gives it a fixed path
//! (target/release/examples/storm), whereas a bench binary's name carries a hash and cargo passes
//! it `--bench`. `cargo test --all-targets` (CI) compiles it, and tests/storm_generator.rs runs its
//! fleet against an in-process arcd, so the tool cannot rot unnoticed.
//!
//! 100,000 devices need 100,000 sockets: the open-file limit must allow it (`ulimit -n`; the run
//! refuses to start otherwise). Device i sends from address `i / --ports-per-source` of
//! `--sources` (a list of addresses or networks), port `--first-port + i % --ports-per-source`;
//! storm.sh gives one address per device out of a locally routed /14.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool: its output is its result

mod devices;
mod fleet;
mod flood;
mod flood_packet;
mod flood_run;
mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fleet::{Progress, StormConfig};

#[derive(Parser)]
#[command(about = "Reconnect-storm load generator for WireGuard servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Key pairs and addresses for a server configured with `wg setconf`, and its configuration.
    Keys {
        #[arg(long)]
        count: usize,
        /// The tunnel network: the server has its second host, devices the following ones.
        #[arg(long)]
        network: ipnet::Ipv4Net,
        /// The server's private key (as `wg genkey` writes it).
        #[arg(long)]
        server_key: PathBuf,
        #[arg(long, default_value_t = 51820)]
        listen_port: u16,
        #[arg(long)]
        devices: PathBuf,
        #[arg(long)]
        wg_conf: PathBuf,
    },
    /// Virtual SIMs created through arcd's API (POST /v1/sims), one device each.
    Provision {
        /// Base URL of the API, e.g. http://10.216.0.1:8443
        #[arg(long)]
        api: String,
        /// arcd's root-credentials.json (authKeyId, authKey).
        #[arg(long)]
        credentials: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long)]
        devices: PathBuf,
    },
    /// The storm: every device initiates at once.
    Run {
        #[arg(long)]
        devices: PathBuf,
        /// Use only the first N devices of the file.
        #[arg(long)]
        count: Option<usize>,
        #[arg(long)]
        endpoint: SocketAddr,
        /// Source addresses, comma-separated; a network (10.220.0.0/14) stands for its hosts
        /// (with a local route for it, `ip route add local NET dev lo`, every one can be bound).
        #[arg(long, value_delimiter = ',', required = true)]
        sources: Vec<String>,
        /// First source port on each address (0: the kernel chooses).
        #[arg(long, default_value_t = 20_000)]
        first_port: u16,
        #[arg(long, default_value_t = 40_000)]
        ports_per_source: usize,
        /// In-tunnel address that answers ICMP echo.
        #[arg(long)]
        target: Ipv4Addr,
        /// The server process, for its CPU time.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Seconds until devices give up (a real client tries for 90 s).
        #[arg(long, default_value_t = 90)]
        deadline: u64,
        /// Threads that prepare devices and run the fleet.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Skip the file's first N devices; the rest keep their numbers (source address, port):
        /// how several processes share a fleet larger than one process's open-file limit.
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Start at this time (milliseconds since the UNIX epoch), the same for every process.
        #[arg(long)]
        start_at: Option<u64>,
        /// After preparing, print "ready" and wait until this file exists; it holds the start
        /// time (milliseconds since the UNIX epoch), written once every process is ready.
        #[arg(long)]
        wait_for: Option<PathBuf>,
        /// Also write each device's outcome there, for `merge`.
        #[arg(long)]
        outcomes: Option<PathBuf>,
    },
    /// Data packets encrypted beforehand, sent as fast as the server takes them.
    Flood(flood_run::FloodArgs),
    /// One report for a fleet run by several processes (their --outcomes files).
    Merge {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = |threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
    };
    let result: Result<(), String> = match cli.command {
        Command::Keys {
            count,
            network,
            server_key,
            listen_port,
            devices,
            wg_conf,
        } => devices::make_keys(count, network, &server_key, listen_port, &devices, &wg_conf)
            .map_err(|e| e.to_string()),
        Command::Provision {
            api,
            credentials,
            count,
            concurrency,
            devices,
        } => runtime(2).map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(devices::provision(
                &api,
                &credentials,
                count,
                concurrency,
                &devices,
            ))
            .map_err(|e| e.to_string())
        }),
        Command::Run {
            devices,
            count,
            endpoint,
            sources,
            first_port,
            ports_per_source,
            target,
            server_pid,
            deadline,
            threads,
            skip,
            start_at,
            wait_for,
            outcomes,
        } => {
            let sources = match source_addresses(&sources) {
                Ok(sources) => sources,
                Err(message) => {
                    eprintln!("storm: {message}");
                    return ExitCode::FAILURE;
                }
            };
            let mut config = StormConfig::wireguard_timers(endpoint, sources, target);
            config.first_port = first_port;
            config.ports_per_source = ports_per_source;
            config.deadline = Duration::from_secs(deadline);
            config.first_index = skip;
            let options = RunOptions {
                count,
                server_pid,
                threads,
                start_at: start_at.map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
                wait_for,
                outcomes,
            };
            runtime(threads)
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(run(&devices, config, options)))
        }
        Command::Flood(args) => flood_run::run(args),
        Command::Merge { files } => report::merge(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("storm: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `--sources`: addresses, and networks standing for their hosts.
fn source_addresses(items: &[String]) -> Result<Vec<IpAddr>, String> {
    let mut sources = Vec::new();
    for item in items {
        if item.contains('/') {
            let network: ipnet::Ipv4Net =
                item.parse().map_err(|e| format!("--sources {item}: {e}"))?;
            sources.extend(network.hosts().map(IpAddr::V4));
        } else {
            sources.push(item.parse().map_err(|e| format!("--sources {item}: {e}"))?);
        }
    }
    Ok(sources)
}

struct RunOptions {
    count: Option<usize>,
    server_pid: Option<u32>,
    threads: usize,
    start_at: Option<std::time::SystemTime>,
    wait_for: Option<PathBuf>,
    outcomes: Option<PathBuf>,
}

async fn run(
    devices_path: &std::path::Path,
    config: StormConfig,
    options: RunOptions,
) -> Result<(), String> {
    let mut specs = devices::read(devices_path).map_err(|e| e.to_string())?;
    let skip = config.first_index;
    if skip > specs.len() {
        return Err(format!(
            "--skip {skip}: the file has {} devices",
            specs.len()
        ));
    }
    specs.drain(..skip);
    if let Some(count) = options.count {
        if count > specs.len() {
            return Err(format!(
                "--count {count}: the file has {} devices after --skip",
                specs.len()
            ));
        }
        specs.truncate(count);
    }
    let needed = specs.len() as u64 + 64;
    match open_file_limit() {
        Some(limit) if limit >= needed => {}
        limit => {
            return Err(format!(
                "{} devices need {needed} open files; the limit is {limit:?} (raise it with \
                 ulimit -n, or split the fleet over processes with --skip/--count)",
                specs.len()
            ))
        }
    }
    eprintln!("preparing {} devices", specs.len());
    let threads = options.threads;
    let prepared = tokio::task::block_in_place(|| fleet::prepare(&specs, &config, threads))
        .map_err(|e| e.to_string())?;
    drop(specs);
    let mut start_at = options.start_at;
    if let Some(path) = &options.wait_for {
        eprintln!("ready");
        start_at = Some(wait_for_start(path).await);
    }
    let progress = Arc::new(Progress::default());
    let reporter = tokio::spawn(report_progress(progress.clone()));
    let server_before = options.server_pid.and_then(cpu_seconds_of);
    let self_before = cpu_seconds_of_self();
    let (outcomes, start) = fleet::run(prepared, &config, progress, start_at)
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    let server_cpu = options
        .server_pid
        .and_then(cpu_seconds_of)
        .zip(server_before)
        .map(|(after, before)| after - before);
    let self_cpu = cpu_seconds_of_self().zip(self_before).map(|(a, b)| a - b);
    reporter.abort();
    if let Some(path) = &options.outcomes {
        report::write_outcomes(path, &outcomes, elapsed, server_cpu, self_cpu)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    report::print_report(&outcomes, elapsed, server_cpu, self_cpu);
    Ok(())
}

/// Polls `path` until it holds a start time (milliseconds since the UNIX epoch).
async fn wait_for_start(path: &std::path::Path) -> std::time::SystemTime {
    loop {
        if let Some(ms) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        {
            return std::time::UNIX_EPOCH + Duration::from_millis(ms);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn report_progress(progress: Arc<Progress>) {
    let start = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "  {:>5.1} s: {} sessions, {} echoes answered, {} initiations sent, {} cookie replies",
            start.elapsed().as_secs_f64(),
            progress.sessions.load(Ordering::Relaxed),
            progress.answered.load(Ordering::Relaxed),
            progress.initiations.load(Ordering::Relaxed),
            progress.cookies.load(Ordering::Relaxed),
        );
    }
}

/// USER_HZ, the unit of /proc/PID/stat's times: 100 in Linux's ABI on every architecture.
const USER_HZ: f64 = 100.0;

/// utime+stime of a process, all its threads (dead ones included), in seconds.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_of_self() -> Option<f64> {
    cpu_seconds("/proc/self/stat")
}

fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after "(comm) ": state is the first; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The soft limit on open files (/proc/self/limits).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
