//! The storm itself: a fleet of emulated WireGuard devices that all come back at once.
//!
//! Each device is a boringtun `Tunn` client with its own UDP socket (so its own source port:
//! to the server, N distinct endpoints), prepared before the start (socket bound, `Tunn` made, a
//! first initiation formatted with an ICMP echo queued behind it, as a device whose application
//! wants to send after an outage). At the start every device sends its initiation; then each one
//! behaves like a WireGuard client:
//! - a handshake response gives it a session (the first timestamp); boringtun answers it with a
//!   keepalive and then releases the queued echo, both sent at once;
//! - a cookie reply (the server is under load) is only stored; the next initiation, sent when the
//!   retry timer fires, carries the cookie MAC (mac2), as the WireGuard paper's client does;
//! - no answer: a new initiation after REKEY_TIMEOUT (5 s) plus a jitter of up to 333 ms (the
//!   Linux driver's retry), until the fleet's deadline (REKEY_ATTEMPT_TIME, 90 s, by default);
//! - with a session but no echo reply: the echo again every `echo_retry` (as `ping` would);
//! - the echo reply from the target address (the second timestamp) ends the device.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// WireGuard's message types (first byte of a datagram).
const HANDSHAKE_RESPONSE: u8 = 2;
const COOKIE_REPLY: u8 = 3;
/// Room for any message of a handshake or a small data packet (the largest, an initiation, is
/// 148 bytes; boringtun wants at least 148 bytes of output room).
const BUFFER: usize = 512;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// One device: its key, the server's key and its address inside the tunnel.
#[derive(Clone)]
pub struct DeviceSpec {
    pub private_key: [u8; 32],
    pub server_public: [u8; 32],
    pub address: Ipv4Addr,
}

impl DeviceSpec {
    /// The device of a SIM as createSim answers it (its private key, the rendezvous point's
    /// public key, its tunnel address); `None` when the answer lacks one of them.
    pub fn of_created_sim(sim: &serde_json::Value) -> Option<DeviceSpec> {
        let key = |text: &serde_json::Value| arcd::wgkey::parse_key(text.as_str()?);
        let sim_id = sim["simId"].as_str()?;
        let session = &sim["arcSessionStatus"];
        Some(DeviceSpec {
            private_key: key(&sim["profiles"][sim_id]["arcClientPeerPrivateKey"])?,
            server_public: key(&session["arcServerPeerPublicKey"])?,
            // An address with a prefix length ("10.64.0.2/32") names the same device.
            address: session["arcClientPeerIpAddress"]
                .as_str()?
                .split('/')
                .next()?
                .parse()
                .ok()?,
        })
    }
}

/// How the fleet behaves (see the module comment).
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// The server's WireGuard endpoint.
    pub endpoint: SocketAddr,
    /// Source addresses; device i sends from `sources[i / ports_per_source]`.
    pub sources: Vec<IpAddr>,
    /// First source port on each address; 0 lets the kernel choose every port.
    pub first_port: u16,
    pub ports_per_source: usize,
    /// The in-tunnel address that answers ICMP echo.
    pub target: Ipv4Addr,
    pub rekey_timeout: Duration,
    pub rekey_jitter: Duration,
    pub echo_retry: Duration,
    /// Devices without an echo reply by then give up.
    pub deadline: Duration,
    /// The fleet's first device is device number `first_index` (for its source address, port,
    /// boringtun index and ICMP id): several generator processes share one fleet.
    pub first_index: usize,
}

impl StormConfig {
    /// A real client's timers: REKEY_TIMEOUT 5 s, jitter up to 333 ms, 90 s of attempts.
    pub fn wireguard_timers(endpoint: SocketAddr, sources: Vec<IpAddr>, target: Ipv4Addr) -> Self {
        StormConfig {
            endpoint,
            sources,
            first_port: 0,
            ports_per_source: 40_000,
            target,
            rekey_timeout: Duration::from_secs(5),
            rekey_jitter: Duration::from_millis(333),
            echo_retry: Duration::from_secs(1),
            deadline: Duration::from_secs(90),
            first_index: 0,
        }
    }

    pub fn source_of(&self, index: usize) -> Option<SocketAddr> {
        let ip = *self.sources.get(index / self.ports_per_source.max(1))?;
        let port = if self.first_port == 0 {
            0
        } else {
            let offset = u16::try_from(index % self.ports_per_source).ok()?;
            self.first_port.checked_add(offset)?
        };
        Some(SocketAddr::new(ip, port))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error(
        "{devices} devices need more source addresses than the {sources} given ({per} ports each)"
    )]
    TooFewSources {
        devices: usize,
        sources: usize,
        per: usize,
    },
    #[error("device {index}: binding {address}: {error}")]
    Bind {
        index: usize,
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("device {index}: boringtun made no initiation")]
    NoInitiation { index: usize },
}

/// What happened to one device (times since the start).
#[derive(Clone, Debug, Default)]
pub struct DeviceOutcome {
    pub session_at: Option<Duration>,
    pub answered_at: Option<Duration>,
    pub initiations: u32,
    pub responses: u32,
    pub cookies: u32,
}

/// A device ready to go: socket bound, initiation formatted.
pub struct PreparedDevice {
    socket: std::net::UdpSocket,
    tunn: Tunn,
    initiation: Vec<u8>,
    echo: Vec<u8>,
}

/// Live counters, for a progress line while the storm runs.
#[derive(Default)]
pub struct Progress {
    pub sessions: AtomicUsize,
    pub answered: AtomicUsize,
    pub cookies: AtomicUsize,
    pub initiations: AtomicUsize,
}

/// Binds every device's socket and formats its first initiation (the CPU-heavy part: one
/// basepoint multiplication and three DH per device), on `threads` threads.
pub fn prepare(
    specs: &[DeviceSpec],
    config: &StormConfig,
    threads: usize,
) -> Result<Vec<PreparedDevice>, StormError> {
    let per = config.ports_per_source.max(1);
    if config.first_index + specs.len() > config.sources.len() * per {
        return Err(StormError::TooFewSources {
            devices: specs.len(),
            sources: config.sources.len(),
            per,
        });
    }
    on_threads(specs, threads, |index, spec| {
        prepare_one(index, spec, config)
    })
}

/// `prepare(index, spec)` for every device, the fleet split into `threads` contiguous parts
/// prepared side by side (key agreements and socket set-up take seconds for a large fleet); the
/// results in the devices' order, or the first error.
pub fn on_threads<T: Send, E: Send>(
    specs: &[DeviceSpec],
    threads: usize,
    prepare: impl Fn(usize, &DeviceSpec) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    let chunk = specs.len().div_ceil(threads.max(1)).max(1);
    let prepare = &prepare;
    let parts: Vec<Result<Vec<T>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, spec)| prepare(n * chunk + i, spec))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut devices = Vec::with_capacity(specs.len());
    for part in parts {
        devices.extend(part?);
    }
    Ok(devices)
}

fn prepare_one(
    index: usize,
    spec: &DeviceSpec,
    config: &StormConfig,
) -> Result<PreparedDevice, StormError> {
    let index = config.first_index + index;
    let source = config.source_of(index).ok_or(StormError::TooFewSources {
        devices: index + 1,
        sources: config.sources.len(),
        per: config.ports_per_source,
    })?;
    let bind_error = |error| StormError::Bind {
        index,
        address: source,
        error,
    };
    let socket = std::net::UdpSocket::bind(source).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    let mut tunn = Tunn::new(
        StaticSecret::from(spec.private_key),
        PublicKey::from(spec.server_public),
        None,
        None,
        // boringtun shifts the index left by 8 bits: 24 bits of it are ours.
        (index as u32) & 0x00ff_ffff,
        None,
    );
    let echo = icmp_echo(spec.address, config.target, index as u16);
    let mut buf = [0u8; BUFFER];
    // The echo is queued behind the handshake boringtun starts for it.
    let initiation = match tunn.encapsulate(&echo, &mut buf) {
        TunnResult::WriteToNetwork(packet) => packet.to_vec(),
        _ => return Err(StormError::NoInitiation { index }),
    };
    Ok(PreparedDevice {
        socket,
        tunn,
        initiation,
        echo,
    })
}

/// Starts every device at once (at `start_at` when given: the moment other generator processes
/// of the same fleet start too) and waits until each has its echo answered or gave up.
/// Returns the outcomes in device order and the instant of the start.
pub async fn run(
    devices: Vec<PreparedDevice>,
    config: &StormConfig,
    progress: Arc<Progress>,
    start_at: Option<std::time::SystemTime>,
) -> std::io::Result<(Vec<DeviceOutcome>, Instant)> {
    // Every task registers its socket and then waits at the gate, so that the start is one
    // moment for the whole fleet rather than the time it takes to spawn it.
    let (gate, opened) = watch::channel(None::<Instant>);
    let config = Arc::new(config.clone());
    let mut tasks = Vec::with_capacity(devices.len());
    for prepared in devices {
        let socket = UdpSocket::from_std(prepared.socket)?;
        let mut opened = opened.clone();
        let device = Device {
            socket,
            tunn: prepared.tunn,
            echo: prepared.echo,
            config: config.clone(),
            progress: progress.clone(),
            outcome: DeviceOutcome::default(),
        };
        let initiation = prepared.initiation;
        tasks.push(tokio::spawn(async move {
            let start = match opened.wait_for(Option::is_some).await {
                Ok(start) => (*start).unwrap_or_else(Instant::now),
                Err(_) => return DeviceOutcome::default(),
            };
            device.live(start, initiation).await
        }));
    }
    tokio::task::yield_now().await;
    if let Some(wait) = start_at.and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
    {
        tokio::time::sleep(wait).await;
    }
    let start = Instant::now();
    gate.send_replace(Some(start));
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_default());
    }
    Ok((outcomes, start))
}

struct Device {
    socket: UdpSocket,
    tunn: Tunn,
    echo: Vec<u8>,
    config: Arc<StormConfig>,
    progress: Arc<Progress>,
    outcome: DeviceOutcome,
}

impl Device {
    async fn live(mut self, start: Instant, initiation: Vec<u8>) -> DeviceOutcome {
        let give_up = start + self.config.deadline;
        let mut buf = [0u8; BUFFER];
        let mut datagram = [0u8; BUFFER];
        self.send_initiation(&initiation).await;
        let mut next_initiation = Some(self.retry_time());
        let mut next_echo: Option<Instant> = None;
        loop {
            let wake = match (next_initiation, next_echo) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => give_up,
            }
            .min(give_up);
            let received =
                tokio::time::timeout_at(wake, self.socket.recv_from(&mut datagram)).await;
            let now = Instant::now();
            match received {
                Err(_elapsed) => {
                    if now >= give_up {
                        break;
                    }
                    if next_initiation.is_some_and(|t| now >= t) {
                        // The Linux driver's retransmission: a fresh initiation (with the cookie
                        // MAC when a cookie reply came since).
                        if let TunnResult::WriteToNetwork(packet) =
                            self.tunn.format_handshake_initiation(&mut buf, true)
                        {
                            let packet = packet.to_vec();
                            self.send_initiation(&packet).await;
                        }
                        next_initiation = Some(self.retry_time());
                    }
                    if next_echo.is_some_and(|t| now >= t) {
                        if let TunnResult::WriteToNetwork(packet) =
                            self.tunn.encapsulate(&self.echo, &mut buf)
                        {
                            let _ = self.socket.send_to(packet, self.config.endpoint).await;
                        }
                        next_echo = Some(now + self.config.echo_retry);
                    }
                }
                Ok(Err(_)) => continue,
                Ok(Ok((len, from))) => {
                    if from != self.config.endpoint || len == 0 {
                        continue;
                    }
                    let kind = datagram[0];
                    match kind {
                        COOKIE_REPLY => {
                            self.outcome.cookies += 1;
                            self.progress.cookies.fetch_add(1, Ordering::Relaxed);
                        }
                        HANDSHAKE_RESPONSE => self.outcome.responses += 1,
                        _ => {}
                    }
                    let mut result =
                        self.tunn
                            .decapsulate(Some(from.ip()), &datagram[..len], &mut buf);
                    let mut answered = false;
                    // boringtun answers a handshake response it accepted (and only such) with
                    // the keepalive that confirms the session.
                    let established = kind == HANDSHAKE_RESPONSE
                        && matches!(result, TunnResult::WriteToNetwork(_));
                    loop {
                        match result {
                            // The keepalive, then the queued echo.
                            TunnResult::WriteToNetwork(packet) => {
                                let _ = self.socket.send_to(packet, self.config.endpoint).await;
                                result = self.tunn.decapsulate(None, &[], &mut buf);
                            }
                            TunnResult::WriteToTunnelV4(packet, _) => {
                                answered |= is_echo_reply(packet, self.config.target);
                                break;
                            }
                            _ => break,
                        }
                    }
                    if established && self.outcome.session_at.is_none() {
                        self.outcome.session_at = Some(now - start);
                        self.progress.sessions.fetch_add(1, Ordering::Relaxed);
                        next_initiation = None;
                        next_echo = Some(now + self.config.echo_retry);
                    }
                    if answered {
                        self.outcome.answered_at = Some(now - start);
                        self.progress.answered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        self.outcome
    }

    async fn send_initiation(&mut self, packet: &[u8]) {
        self.outcome.initiations += 1;
        self.progress.initiations.fetch_add(1, Ordering::Relaxed);
        let _ = self.socket.send_to(packet, self.config.endpoint).await;
    }

    fn retry_time(&self) -> Instant {
        let jitter_ms = self.config.rekey_jitter.as_millis() as u64;
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms));
        Instant::now() + self.config.rekey_timeout + jitter
    }
}

/// An ICMP echo request of 56 bytes of payload (as `ping` sends), identifier `id`.
pub fn icmp_echo(source: Ipv4Addr, target: Ipv4Addr, id: u16) -> Vec<u8> {
    let icmp_len = 8 + 56;
    let total = 20 + icmp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&source.octets());
    p[16..20].copy_from_slice(&target.octets());
    let header = checksum(&p[..20]);
    p[10..12].copy_from_slice(&header.to_be_bytes());
    p[20] = ICMP_ECHO_REQUEST;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&1u16.to_be_bytes());
    let icmp = checksum(&p[20..]);
    p[22..24].copy_from_slice(&icmp.to_be_bytes());
    p
}

/// An IPv4 ICMP echo reply from `target`.
pub fn is_echo_reply(packet: &[u8], target: Ipv4Addr) -> bool {
    let header_len = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    packet.len() > header_len
        && packet[0] >> 4 == 4
        && packet[9] == 1
        && packet[12..16] == target.octets()
        && packet[header_len] == ICMP_ECHO_REPLY
}

/// The Internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Summary figures of a storm.
#[derive(Debug)]
pub struct Summary {
    pub devices: usize,
    pub sessions: usize,
    pub answered: usize,
    pub cookies: u64,
    pub initiations: u64,
    pub responses: u64,
    pub devices_with_cookie: usize,
}

impl Summary {
    pub fn of(outcomes: &[DeviceOutcome]) -> Summary {
        Summary {
            devices: outcomes.len(),
            sessions: outcomes.iter().filter(|o| o.session_at.is_some()).count(),
            answered: outcomes.iter().filter(|o| o.answered_at.is_some()).count(),
            cookies: outcomes.iter().map(|o| u64::from(o.cookies)).sum(),
            initiations: outcomes.iter().map(|o| u64::from(o.initiations)).sum(),
            responses: outcomes.iter().map(|o| u64::from(o.responses)).sum(),
            devices_with_cookie: outcomes.iter().filter(|o| o.cookies > 0).count(),
        }
    }
}

/// The time by which `percent` % of all devices (not only those that made it) had reached a
/// point; `None` when fewer did.
pub fn time_to_percent(times: &[Option<Duration>], percent: f64) -> Option<Duration> {
    let mut reached: Vec<Duration> = times.iter().flatten().copied().collect();
    reached.sort_unstable();
    let needed = ((times.len() as f64) * percent / 100.0).ceil().max(1.0) as usize;
    reached.get(needed - 1).copied()
}
