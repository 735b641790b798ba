//! Runs the engine: one task per rendezvous point socket, one for the TUN device, one for timers
//! and one applying peer changes. Tasks only move bytes; decisions are the engine's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::engine::{Engine, Listener, Outbox, Outgoing, Resumed, BUFFER_SIZE};
use super::peer_index::Applied;
use super::{RecvBatch, TunIo, TunWrites};
use crate::ids::RendezvousPointId;
use crate::store::endpoints::SavedEndpoint;
use crate::store::{ActiveSession, PeerChange};

/// Socket buffers large enough that bursts are not dropped in the kernel (the main cause of
/// retransmits in the baseline measurements, docs/BENCHMARKS.md "Data-plane baseline").
const SOCKET_BUFFER_BYTES: usize = 7 * 1024 * 1024;

/// A rendezvous point to listen for.
pub struct ListenerConfig {
    pub rp_id: RendezvousPointId,
    pub bind: SocketAddr,
    pub private_key: [u8; 32],
}

pub struct Dataplane {
    pub engine: Arc<Engine>,
    /// Bound UDP address of each rendezvous point (useful when configured with port 0).
    pub udp_addrs: Vec<(RendezvousPointId, SocketAddr)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Stops every task and waits until they are gone, so the sockets and the TUN device they
    /// own are closed when this returns (dropping only asks the runtime to stop them).
    pub async fn stop(&mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: without CAP_NET_ADMIN the kernel caps these at net.core.*mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

impl Dataplane {
    /// Binds every listener, installs `sessions` (the store's active ones), and starts the tasks; then
    /// starts the handshake toward each `resume` endpoint (saved by the previous run), paced.
    pub fn start<T: TunIo>(
        listeners: Vec<ListenerConfig>,
        tun: T,
        sessions: Vec<ActiveSession>,
        changes: mpsc::UnboundedReceiver<PeerChange>,
        resume: Vec<SavedEndpoint>,
    ) -> io::Result<Dataplane> {
        let mut sockets = Vec::new();
        let mut udp_addrs = Vec::new();
        for listener in &listeners {
            let socket = bind_udp(listener.bind).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "rendezvous point {} cannot listen on UDP {}: {e}",
                        listener.rp_id, listener.bind
                    ),
                )
            })?;
            udp_addrs.push((listener.rp_id.clone(), socket.local_addr()?));
            sockets.push(socket);
        }
        let engine = Arc::new(Engine::new(
            listeners
                .iter()
                .map(|l| Listener::new(&l.rp_id, l.private_key))
                .collect(),
        ));
        let now = Instant::now();
        let mut startup = Outbox::new();
        for session in sessions {
            engine.apply(&Applied::Added(session), now, &mut startup);
        }
        tracing::info!(peers = engine.peer_count(), "data plane peers loaded");

        let states = sockets
            .iter()
            .map(|socket| quinn_udp::UdpSocketState::new(socket.into()))
            .collect::<io::Result<Vec<_>>>()?;
        let io = Arc::new(Io {
            sockets,
            states,
            tun,
        });
        let mut tasks = Vec::new();
        for index in 0..io.sockets.len() {
            tasks.push(tokio::spawn(udp_loop(engine.clone(), io.clone(), index)));
        }
        tasks.push(tokio::spawn(tun_loop(engine.clone(), io.clone())));
        tasks.push(tokio::spawn(timer_loop(engine.clone(), io.clone())));
        tasks.push(tokio::spawn(change_loop(
            engine.clone(),
            io.clone(),
            changes,
        )));
        tasks.push(tokio::spawn(resume_loop(
            engine.clone(),
            io.clone(),
            resume,
        )));
        for (rp, addr) in &udp_addrs {
            tracing::info!(rendezvous_point = %rp, %addr, "WireGuard listening");
        }
        Ok(Dataplane {
            engine,
            udp_addrs,
            tasks,
        })
    }
}

struct Io<T> {
    sockets: Vec<UdpSocket>,
    /// quinn-udp's per-socket state (GRO/GSO support found at setup), one per socket.
    states: Vec<quinn_udp::UdpSocketState>,
    tun: T,
}

/// Largest GSO send: the kernel's limit for one UDP datagram train.
const MAX_GSO_BYTES: usize = 64_000;

/// Consecutive datagrams to one peer, sent with one system call (UDP GSO): equal-size segments,
/// only the last one may be shorter.
#[derive(Default)]
struct GsoTrain {
    target: Option<(usize, SocketAddr)>,
    segment: usize,
    count: usize,
    contents: Vec<u8>,
    /// A shorter segment ended the train.
    closed: bool,
}

impl GsoTrain {
    fn accepts(&self, listener: usize, to: SocketAddr, len: usize, max_segments: usize) -> bool {
        match self.target {
            None => true,
            Some(target) => {
                target == (listener, to)
                    && !self.closed
                    && len <= self.segment
                    && self.count < max_segments
                    && self.contents.len() + len <= MAX_GSO_BYTES
            }
        }
    }

    fn push(&mut self, listener: usize, to: SocketAddr, data: &[u8]) {
        if self.target.is_none() {
            self.target = Some((listener, to));
            self.segment = data.len();
        } else if data.len() < self.segment {
            self.closed = true;
        }
        self.contents.extend_from_slice(data);
        self.count += 1;
    }
}

impl<T: TunIo> Io<T> {
    /// Sends everything the engine produced: UDP datagrams to the same peer in GSO trains, packets
    /// for the TUN in one batch (merged per flow by a device with offloads).
    async fn flush(&self, out: &mut Outbox, to_tun: &mut TunWrites) {
        let mut train = GsoTrain::default();
        to_tun.clear();
        for outgoing in out.drain(..) {
            match outgoing {
                Outgoing::Udp { listener, to, data } => {
                    let max_segments = self
                        .states
                        .get(listener)
                        .map_or(1, |s| s.max_gso_segments());
                    if !train.accepts(listener, to, data.len(), max_segments) {
                        self.send_train(&mut train).await;
                    }
                    train.push(listener, to, &data);
                }
                Outgoing::Tun(packet) => to_tun.push(&packet),
            }
        }
        self.send_train(&mut train).await;
        if let Err(e) = self.tun.send_batch(to_tun.pending()).await {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }

    async fn send_train(&self, train: &mut GsoTrain) {
        let taken = std::mem::take(train);
        let Some((listener, to)) = taken.target else {
            return;
        };
        let (Some(socket), Some(state)) = (self.sockets.get(listener), self.states.get(listener))
        else {
            return;
        };
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: &taken.contents,
            segment_size: (taken.count > 1).then_some(taken.segment),
            src_ip: None,
        };
        loop {
            if let Err(e) = socket.writable().await {
                tracing::debug!(%to, error = %e, "UDP socket not writable");
                return;
            }
            match socket.try_io(tokio::io::Interest::WRITABLE, || {
                state.try_send(socket.into(), &transmit)
            }) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if taken.count > 1 && matches!(e.raw_os_error(), Some(5 | 22)) => {
                    // EIO/EINVAL: the path cannot segment (quinn-udp stops offering GSO for the
                    // socket); this train goes out one datagram at a time instead of being lost.
                    for datagram in taken.contents.chunks(taken.segment) {
                        if let Err(e) = socket.send_to(datagram, to).await {
                            tracing::debug!(%to, error = %e, "UDP send failed");
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(%to, datagrams = taken.count, error = %e, "UDP send failed");
                    return;
                }
            }
        }
    }
}

/// Datagrams taken from the kernel per receive call (recvmmsg).
const RECV_BATCH: usize = 32;

async fn udp_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>, index: usize) {
    let (socket, state) = (&io.sockets[index], &io.states[index]);
    // With UDP GRO the kernel may hand over up to `gro_segments` coalesced datagrams per buffer.
    let buffer_size = BUFFER_SIZE.max(state.gro_segments() * 1500);
    let mut buffers: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; buffer_size]).collect();
    let mut meta = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut to_tun = TunWrites::default();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!(error = %e, "UDP socket failed; rendezvous point stops receiving");
            return;
        }
        let received = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut slices: Vec<std::io::IoSliceMut> = buffers
                .iter_mut()
                .map(|b| std::io::IoSliceMut::new(b))
                .collect();
            state.recv(socket.into(), &mut slices, &mut meta)
        });
        let count = match received {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // ICMP errors surface here (ECONNREFUSED); they are not fatal for a server socket.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let now = Instant::now();
        for (buffer, meta) in buffers.iter().zip(&meta).take(count) {
            let stride = meta.stride.max(1);
            for datagram in buffer[..meta.len].chunks(stride) {
                engine.handle_datagram(index, meta.addr, datagram, now, &mut scratch, &mut out);
            }
        }
        io.flush(&mut out, &mut to_tun).await;
    }
}

/// Packets taken from the TUN device before their datagrams are sent: a burst to one device
/// leaves in a few GSO sends instead of one system call per packet.
const TUN_BATCH: usize = 64;

async fn tun_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>) {
    let mut batch = RecvBatch::new(io.tun.mtu());
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut to_tun = TunWrites::default();
    loop {
        if let Err(e) = io.tun.recv_batch(&mut batch).await {
            tracing::warn!(error = %e, "TUN read failed; data plane stops reading the device");
            return;
        }
        let now = Instant::now();
        let mut taken = 0;
        loop {
            for packet in batch.packets() {
                engine.handle_tun_packet(packet, now, &mut scratch, &mut out);
            }
            taken += batch.len();
            if taken >= TUN_BATCH {
                break;
            }
            match io.tun.try_recv_batch(&mut batch) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "TUN read failed");
                    break;
                }
            }
        }
        io.flush(&mut out, &mut to_tun).await;
    }
}

async fn timer_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>) {
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut to_tun = TunWrites::default();
    let mut next_rate_reset = Instant::now() + Duration::from_secs(1);
    loop {
        let wake = engine
            .next_deadline()
            .map_or(next_rate_reset, |at| at.min(next_rate_reset));
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if now >= next_rate_reset {
            engine.reset_rate_limits();
            next_rate_reset = now + Duration::from_secs(1);
        }
        engine.run_timers(now, &mut scratch, &mut out);
        io.flush(&mut out, &mut to_tun).await;
    }
}

async fn change_loop<T: TunIo>(
    engine: Arc<Engine>,
    io: Arc<Io<T>>,
    mut changes: mpsc::UnboundedReceiver<PeerChange>,
) {
    let mut out = Outbox::new();
    let mut to_tun = TunWrites::default();
    while let Some(change) = changes.recv().await {
        let applied = engine.apply_change(change, Instant::now(), &mut out);
        super::log_applied(&applied);
        io.flush(&mut out, &mut to_tun).await;
    }
}

/// Handshake initiations sent per tick when resuming the sessions of a previous run. 80 a second
/// stays under a rendezvous point's handshake rate limit (100 a second, which the devices'
/// responses count against), leaving room for devices that handshake on their own.
const RESUME_PER_TICK: usize = 8;
const RESUME_TICK: Duration = Duration::from_millis(100);

/// Starts the handshake toward each device's saved endpoint (see `Engine::resume`), paced.
async fn resume_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>, saved: Vec<SavedEndpoint>) {
    if saved.is_empty() {
        return;
    }
    let started = Instant::now();
    let (mut initiated, mut already_back, mut gone) = (0usize, 0usize, 0usize);
    let mut out = Outbox::new();
    let mut to_tun = TunWrites::default();
    let mut tick = tokio::time::interval(RESUME_TICK);
    for chunk in saved.chunks(RESUME_PER_TICK) {
        tick.tick().await;
        let now = Instant::now();
        for entry in chunk {
            match engine.resume(entry, now, &mut out) {
                Resumed::Initiated => initiated += 1,
                Resumed::AlreadyBack => already_back += 1,
                Resumed::NoSession => gone += 1,
            }
        }
        io.flush(&mut out, &mut to_tun).await;
    }
    tracing::info!(
        saved = saved.len(),
        initiated,
        already_back,
        gone,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "handshakes started toward the devices' last known endpoints"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_gso_train_holds_equal_segments_to_one_peer_and_ends_after_a_short_one() {
        let mut train = GsoTrain::default();
        assert!(train.accepts(0, addr(1), 100, 64));
        train.push(0, addr(1), &[1; 100]);
        assert!(train.accepts(0, addr(1), 100, 64));
        assert!(!train.accepts(0, addr(2), 100, 64), "another peer");
        assert!(!train.accepts(1, addr(1), 100, 64), "another socket");
        assert!(!train.accepts(0, addr(1), 101, 64), "a longer segment");
        train.push(0, addr(1), &[2; 100]);
        assert!(!train.accepts(0, addr(1), 100, 2), "segment limit");
        assert!(train.accepts(0, addr(1), 40, 64));
        train.push(0, addr(1), &[3; 40]);
        assert!(
            !train.accepts(0, addr(1), 40, 64),
            "a short segment ends the train"
        );
        assert_eq!(
            (train.count, train.segment, train.contents.len()),
            (3, 100, 240)
        );
    }

    #[test]
    fn a_gso_train_stays_under_the_datagram_train_limit() {
        let mut train = GsoTrain::default();
        let segment = vec![0u8; 1452];
        let mut pushed = 0;
        while train.accepts(0, addr(1), segment.len(), 64) {
            train.push(0, addr(1), &segment);
            pushed += 1;
        }
        assert_eq!(pushed, MAX_GSO_BYTES / 1452);
        assert!(train.contents.len() <= MAX_GSO_BYTES);
    }
}
