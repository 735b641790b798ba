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
//! Every inner packet carries `MAGIC`, its device number and its sequence number, and a payload
//! derived from both, so what comes out of the server's TUN can be checked packet by packet.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use quinn_udp::{Transmit, UdpSocketState};

use crate::fleet::{checksum, DeviceSpec, StormConfig};

/// Marks a flood packet's payload.
pub const MAGIC: [u8; 4] = *b"FLD1";
const IP_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
/// MAGIC, device number, sequence number.
const TAG: usize = 12;
/// The largest UDP payload of one GSO send (the IP packet carrying it is at most 64 KiB).
const GSO_BYTES: usize = 65_000;
/// Handshake attempts per device before the flood gives up.
const HANDSHAKE_TRIES: u32 = 10;
/// A window that has not drained at all for this long holds packets the server lost.
const LOST_AFTER: Duration = Duration::from_millis(20);
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
    let chunk = specs.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Vec<FloodDevice>, FloodError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, spec)| prepare_one(n * chunk + i, spec, config))
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

/// An IPv4/UDP packet of `len` bytes from `source` to `target`, for device `index`; its
/// sequence number is set by `set_sequence`.
pub fn flood_packet(
    source: Ipv4Addr,
    target: SocketAddrV4,
    len: usize,
    index: usize,
    seq: u32,
) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&source.octets());
    p[16..20].copy_from_slice(&target.ip().octets());
    let source_port = 10_000 + (index % 50_000) as u16;
    p[20..22].copy_from_slice(&source_port.to_be_bytes());
    p[22..24].copy_from_slice(&target.port().to_be_bytes());
    p[24..26].copy_from_slice(&((len - IP_HEADER) as u16).to_be_bytes());
    let payload = IP_HEADER + UDP_HEADER;
    p[payload..payload + 4].copy_from_slice(&MAGIC);
    p[payload + 4..payload + 8].copy_from_slice(&(index as u32).to_be_bytes());
    set_sequence(&mut p, seq);
    p
}

/// Writes the sequence number, the payload bytes derived from it, the IP identification and
/// both checksums.
fn set_sequence(p: &mut [u8], seq: u32) {
    let payload = IP_HEADER + UDP_HEADER;
    p[payload + 8..payload + TAG].copy_from_slice(&seq.to_be_bytes());
    let fill = filler(p, seq);
    for (i, byte) in p[payload + TAG..].iter_mut().enumerate() {
        *byte = fill.wrapping_add(i as u8);
    }
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[10..12].fill(0);
    let header = checksum(&p[..IP_HEADER]);
    p[10..12].copy_from_slice(&header.to_be_bytes());
    p[26..28].fill(0);
    let udp = udp_checksum(p);
    p[26..28].copy_from_slice(&udp.to_be_bytes());
}

/// The first payload byte after the tag: device number and sequence number mixed.
fn filler(p: &[u8], seq: u32) -> u8 {
    let payload = IP_HEADER + UDP_HEADER;
    let index = u32::from_be_bytes([
        p[payload + 4],
        p[payload + 5],
        p[payload + 6],
        p[payload + 7],
    ]);
    (index.wrapping_mul(31) ^ seq) as u8
}

fn udp_checksum(p: &[u8]) -> u16 {
    let udp_len = p.len() - IP_HEADER;
    let mut pseudo = Vec::with_capacity(12 + udp_len);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[IP_HEADER..]);
    match checksum(&pseudo) {
        0 => 0xffff, // 0 means "no checksum" in UDP over IPv4
        sum => sum,
    }
}

#[allow(dead_code)] // for tests/storm_flood.rs
/// The device number and sequence number of an intact flood packet of `len` bytes to `target`:
/// `None` for anything else, or a flood packet whose payload or checksums do not match.
pub fn parse_flood_packet(p: &[u8], target: SocketAddrV4, len: usize) -> Option<(u32, u32)> {
    let payload = IP_HEADER + UDP_HEADER;
    if p.len() != len || p[0] != 0x45 || p[9] != 17 || p[16..20] != target.ip().octets() {
        return None;
    }
    if p[payload..payload + 4] != MAGIC || p[22..24] != target.port().to_be_bytes() {
        return None;
    }
    let index = u32::from_be_bytes(p[payload + 4..payload + 8].try_into().ok()?);
    let seq = u32::from_be_bytes(p[payload + 8..payload + TAG].try_into().ok()?);
    let source = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let expected = flood_packet(source, target, len, index as usize, seq);
    (expected == p).then_some((index, seq))
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
    let endpoint: SocketAddr = config.storm.endpoint;
    let window = config.window as u64;
    let mut outcome = SendOutcome::default();
    let start = Instant::now();
    let stop_at = start + config.duration;
    let mut last_delivered = 0u64;
    let mut last_progress = start;
    loop {
        let mut left = false;
        let mut progressed = false;
        for device in devices.iter_mut() {
            if device.sent == device.count {
                continue;
            }
            left = true;
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
                    outcome.sent += n as u64;
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // quinn-udp turned GSO off after the kernel refused it: the same datagrams go
                // again, one at a time.
                Err(_) if n > 1 && device.state.max_gso_segments() == 1 => {}
                Err(error) => {
                    return Err(FloodError::Io {
                        index: device.index,
                        context: "sending",
                        error,
                    })
                }
            }
        }
        let now = Instant::now();
        outcome.elapsed = now - start;
        if !left || now >= stop_at {
            break;
        }
        if window > 0 && outcome.sent - outcome.presumed_lost >= last_delivered + window {
            outcome.full += 1;
            // Wait until half the window has drained, or the server has stopped delivering.
            while let Some(now_delivered) = delivered() {
                let now = Instant::now();
                if now_delivered > last_delivered {
                    last_delivered = now_delivered;
                    last_progress = now;
                } else if now - last_progress > LOST_AFTER {
                    outcome.presumed_lost = outcome.sent.saturating_sub(last_delivered);
                    last_progress = now;
                    break;
                }
                if outcome.sent - outcome.presumed_lost <= last_delivered + window / 2
                    || now >= stop_at
                {
                    break;
                }
                std::thread::sleep(FULL_WAIT);
            }
        } else if !progressed {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(outcome)
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
