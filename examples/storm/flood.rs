//! Flood mode (issue 16): the server's data-plane scaling with the client's crypto taken out.
//!
//! With a real WireGuard client on a 2-core machine the client's encryption costs about what the
//! server's decryption does, so the client is the bottleneck and a second server worker has no
//! core to run on. Here every device does its handshake and then encrypts all its data packets
//! (`Tunn::encapsulate` of an IPv4/UDP packet to `target`) BEFORE the timed region; during it
//! the generator only hands ready datagrams to the kernel, a GSO batch (up to 64 KB, one system
//! call) at a time, round-robin over the devices. Each device has its own socket, so its own
//! source address and port, and SO_REUSEPORT spreads devices over the server's workers.
//!
//! Nonces: `encapsulate` numbers a session's packets 0, 1, 2, ...; each device's datagrams go out
//! in that order on its one socket, so they arrive in order (or are lost), always inside the
//! server's replay window.
//!
//! Pacing: on a 2-core machine, datagrams sent faster than the server decrypts would be dropped
//! at its socket, and the kernel's work for them runs on the generator's time and core, the core
//! the second worker needs. So the generator keeps at most `window` packets in flight: it reads
//! how many the server has delivered (for the benchmark, the TUN interface's receive counter; for
//! the test, the memory TUN) and, when the window is full, sleeps until half of it has drained.
//!
//! The inner packets (flood_packet.rs) carry their device's and sequence numbers, so what comes
//! out of the server's TUN can be checked packet by packet.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use quinn_udp::{Transmit, UdpSocketState};

use crate::fleet::{DeviceSpec, StormConfig};
use crate::flood_packet::{flood_packet, set_sequence, IP_HEADER, TAG, UDP_HEADER};

/// The largest UDP payload of one GSO send (the IP packet carrying it is at most 64 KiB).
const GSO_BYTES: usize = 65_000;
/// Handshake attempts per device before the flood gives up.
const HANDSHAKE_TRIES: u32 = 10;
/// A window that has not drained at all for this long holds packets the server lost (long
/// enough that a server descheduled on a busy machine is not taken for one that dropped).
const LOST_AFTER: Duration = Duration::from_millis(250);
/// How long to sleep while the window is full.
const FULL_WAIT: Duration = Duration::from_micros(500);

/// A WireGuard data message's size as boringtun makes it: 16-byte header, the packet (boringtun
/// does not pad it to 16 bytes), 16-byte tag.
pub fn datagram_len(packet_len: usize) -> usize {
    16 + packet_len + 16
}

#[derive(Clone, Debug)]
pub struct FloodConfig {
    /// The server's endpoint and the devices' source addresses and ports (as a storm's).
    pub storm: StormConfig,
    /// Where the inner packets go: an address behind the server's TUN.
    pub target: SocketAddrV4,
    /// Size of each inner IPv4 packet.
    pub packet_len: usize,
    pub packets_per_device: usize,
    /// The flood stops after this long even if packets are left.
    pub duration: Duration,
    /// Packets in flight at most (sent, not yet delivered); 0: no pacing.
    pub window: usize,
    /// How long a device waits for its handshake response before trying again.
    pub handshake_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    #[error("packets of {0} bytes: a flood packet has 40 to 1,420 bytes")]
    PacketLen(usize),
    #[error("device {index} has no source address (too few --sources)")]
    NoSource { index: usize },
    #[error("device {index}: {context}: {error}")]
    Io {
        index: usize,
        context: &'static str,
        error: std::io::Error,
    },
    #[error("device {index}: no handshake response after {HANDSHAKE_TRIES} initiations")]
    NoSession { index: usize },
    #[error("device {index}: boringtun did not encrypt packet {seq} to {expected} bytes")]
    Encrypt {
        index: usize,
        seq: usize,
        expected: usize,
    },
}

/// A device with a session and all its datagrams encrypted, in nonce order.
pub struct FloodDevice {
    index: usize,
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    datagrams: Vec<u8>,
    datagram_len: usize,
    count: usize,
    sent: usize,
}

#[allow(dead_code)] // for tests/storm_flood.rs
impl FloodDevice {
    /// Datagram `seq` as it will be sent (a test alters one to see the server refuse it).
    pub fn datagram_mut(&mut self, seq: usize) -> Option<&mut [u8]> {
        let start = seq.checked_mul(self.datagram_len)?;
        self.datagrams.get_mut(start..start + self.datagram_len)
    }

    pub fn sent(&self) -> usize {
        self.sent
    }
}

/// Handshakes every device and encrypts its packets, on `threads` threads.
pub fn prepare(
    specs: &[DeviceSpec],
    config: &FloodConfig,
    threads: usize,
) -> Result<Vec<FloodDevice>, FloodError> {
    if !(IP_HEADER + UDP_HEADER + TAG..=1420).contains(&config.packet_len) {
        return Err(FloodError::PacketLen(config.packet_len));
    }
    crate::fleet::on_threads(specs, threads, |index, spec| {
        prepare_one(index, spec, config)
    })
}

fn prepare_one(
    index: usize,
    spec: &DeviceSpec,
    config: &FloodConfig,
) -> Result<FloodDevice, FloodError> {
    let index = config.storm.first_index + index;
    let io = |context| {
        move |error| FloodError::Io {
            index,
            context,
            error,
        }
    };
    let source = config
        .storm
        .source_of(index)
        .ok_or(FloodError::NoSource { index })?;
    let socket = std::net::UdpSocket::bind(source).map_err(io("binding"))?;
    let mut tunn = Tunn::new(
        StaticSecret::from(spec.private_key),
        PublicKey::from(spec.server_public),
        None,
        None,
        (index as u32) & 0x00ff_ffff,
        None,
    );
    handshake(index, &mut tunn, &socket, config)?;
    let datagram_len = datagram_len(config.packet_len);
    let count = config.packets_per_device;
    let mut datagrams = vec![0u8; count * datagram_len];
    let mut packet = flood_packet(spec.address, config.target, config.packet_len, index, 0);
    for (seq, slot) in datagrams.chunks_mut(datagram_len).enumerate() {
        set_sequence(&mut packet, seq as u32);
        match tunn.encapsulate(&packet, slot) {
            TunnResult::WriteToNetwork(d) if d.len() == datagram_len => {}
            _ => {
                return Err(FloodError::Encrypt {
                    index,
                    seq,
                    expected: datagram_len,
                })
            }
        }
    }
    socket.set_nonblocking(true).map_err(io("non-blocking"))?;
    let state = UdpSocketState::new((&socket).into()).map_err(io("socket options"))?;
    Ok(FloodDevice {
        index,
        socket,
        state,
        datagrams,
        datagram_len,
        count,
        sent: 0,
    })
}

/// Initiates until a handshake response gives the device a session, and confirms it with the
/// keepalive boringtun makes (the server may then use the session for replies too).
fn handshake(
    index: usize,
    tunn: &mut Tunn,
    socket: &std::net::UdpSocket,
    config: &FloodConfig,
) -> Result<(), FloodError> {
    let io = |context| {
        move |error| FloodError::Io {
            index,
            context,
            error,
        }
    };
    let endpoint = config.storm.endpoint;
    socket
        .set_read_timeout(Some(config.handshake_timeout))
        .map_err(io("read timeout"))?;
    let mut buf = [0u8; 512];
    let mut datagram = [0u8; 512];
    for _ in 0..HANDSHAKE_TRIES {
        if let TunnResult::WriteToNetwork(initiation) =
            tunn.format_handshake_initiation(&mut buf, true)
        {
            socket
                .send_to(initiation, endpoint)
                .map_err(io("sending an initiation"))?;
        }
        let waited_since = Instant::now();
        while waited_since.elapsed() < config.handshake_timeout {
            let (len, from) = match socket.recv_from(&mut datagram) {
                Ok(received) => received,
                Err(e) if is_timeout(&e) => break,
                Err(e) => return Err(io("receiving")(e)),
            };
            if from != endpoint {
                continue;
            }
            // A response gives a session and a keepalive to send; a cookie reply is stored by
            // boringtun for the next initiation's mac2.
            if let TunnResult::WriteToNetwork(keepalive) =
                tunn.decapsulate(Some(from.ip()), &datagram[..len], &mut buf)
            {
                socket
                    .send_to(keepalive, endpoint)
                    .map_err(io("sending the keepalive"))?;
                return Ok(());
            }
        }
    }
    Err(FloodError::NoSession { index })
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// What the timed region did.
#[derive(Debug, Default)]
pub struct SendOutcome {
    pub sent: u64,
    /// From the first send to the last.
    pub elapsed: Duration,
    /// Packets counted as lost by the pacing (in flight, but the server stopped delivering).
    pub presumed_lost: u64,
    /// Times the window was full.
    pub full: u64,
}

/// Sends every device's datagrams, round-robin, one GSO batch per device in turn, until all are
/// sent or `config.duration` has passed. `delivered` says how many packets the server has
/// delivered since the start (None: unknown; then there is no pacing).
pub fn send(
    devices: &mut [FloodDevice],
    config: &FloodConfig,
    delivered: &mut dyn FnMut() -> Option<u64>,
) -> Result<SendOutcome, FloodError> {
    let window = config.window as u64;
    let mut outcome = SendOutcome::default();
    let mut pacing = Pacing {
        delivered: 0,
        progress_at: Instant::now(),
    };
    let start = Instant::now();
    let stop_at = start + config.duration;
    let mut left: usize = devices.iter().map(|d| d.count - d.sent).sum();
    let fleet = devices.len();
    let mut next = 0;
    let mut idle = 0;
    while left > 0 && Instant::now() < stop_at {
        if window > 0 && outcome.sent - outcome.presumed_lost >= pacing.delivered + window {
            outcome.full += 1;
            pacing.wait_for_room(&mut outcome, window, delivered, stop_at);
            continue;
        }
        let device = &mut devices[next];
        next = (next + 1) % fleet;
        if device.sent == device.count {
            continue;
        }
        match send_batch(device, config.storm.endpoint) {
            Ok(0) => idle += 1,
            Ok(n) => {
                outcome.sent += n as u64;
                left -= n;
                idle = 0;
            }
            Err(error) => {
                return Err(FloodError::Io {
                    index: device.index,
                    context: "sending",
                    error,
                })
            }
        }
        // Every socket would block: let the kernel drain them.
        if idle >= fleet {
            std::thread::sleep(Duration::from_micros(50));
            idle = 0;
        }
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

/// Sends the device's next GSO batch; how many datagrams went (0: the socket would block).
fn send_batch(device: &mut FloodDevice, endpoint: SocketAddr) -> std::io::Result<usize> {
    let segment = device.datagram_len;
    let per_call = device
        .state
        .max_gso_segments()
        .clamp(1, GSO_BYTES / segment);
    let n = per_call.min(device.count - device.sent);
    let contents = &device.datagrams[device.sent * segment..(device.sent + n) * segment];
    let transmit = Transmit {
        destination: endpoint,
        ecn: None,
        contents,
        segment_size: (n > 1).then_some(segment),
        src_ip: None,
    };
    match device.state.try_send((&device.socket).into(), &transmit) {
        Ok(()) => {
            device.sent += n;
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        // quinn-udp turned GSO off after the kernel refused it: the same datagrams go again,
        // one at a time.
        Err(_) if n > 1 && device.state.max_gso_segments() == 1 => Ok(0),
        Err(e) => Err(e),
    }
}

/// What the server is known to have delivered, and since when it has not delivered more.
struct Pacing {
    delivered: u64,
    progress_at: Instant,
}

impl Pacing {
    /// Waits until half the window has drained, or the server has stopped delivering (then
    /// what is still in flight is counted as lost), or the flood's time is up.
    fn wait_for_room(
        &mut self,
        outcome: &mut SendOutcome,
        window: u64,
        delivered: &mut dyn FnMut() -> Option<u64>,
        stop_at: Instant,
    ) {
        while let Some(now_delivered) = delivered() {
            let now = Instant::now();
            if now_delivered > self.delivered {
                self.delivered = now_delivered;
                self.progress_at = now;
            } else if now - self.progress_at > LOST_AFTER {
                outcome.presumed_lost = outcome.sent.saturating_sub(self.delivered);
                self.progress_at = now;
                return;
            }
            if outcome.sent - outcome.presumed_lost <= self.delivered + window / 2 || now >= stop_at
            {
                return;
            }
            std::thread::sleep(FULL_WAIT);
        }
        // No count of what was delivered: no pacing.
        outcome.presumed_lost = outcome.sent;
        self.delivered = 0;
    }
}

/// Polls `delivered` until it has not changed for `quiet`; returns the last count and when it
/// last changed (the end of the server's work).
pub fn settle(
    delivered: &mut dyn FnMut() -> Option<u64>,
    quiet: Duration,
    give_up: Duration,
) -> (Option<u64>, Instant) {
    let begin = Instant::now();
    let mut last = delivered();
    let mut changed_at = begin;
    while changed_at.elapsed() < quiet && begin.elapsed() < give_up {
        std::thread::sleep(Duration::from_millis(2));
        let now = delivered();
        if now != last {
            last = now;
            changed_at = Instant::now();
        }
    }
    (last, changed_at)
}
