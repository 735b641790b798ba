//! Runs the engine on `workers` packet workers. Each worker has its own UDP socket per rendezvous
//! point (the kernel spreads devices over them by flow), its own handshake task (handshake
//! messages are queued there, so their key agreement never delays the worker's data packets;
//! the queue's backlog decides when cookies are demanded, see `handshake_load.rs`) and, when the
//! TUN device is multi-queue, its own queue reader. One task more runs timers, one applies peer
//! changes. Tasks only move bytes; decisions are the engine's, which locks per peer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::engine::{
    Counters, Engine, Listener, Outbox, Resumed, Screened, BUFFER_SIZE, TIMER_PERIOD,
};
use super::handshake_load::{HandshakeLoad, DEFAULT_HANDSHAKE_QUEUE, STALE_AFTER};
use super::handshake_queue::{HandshakeQueue, Pushed, QueuedHandshake};
use super::peer_index::Applied;
use super::udp_io::{bind_group, Io, SendBuffers, WorkerSockets};
use super::{RecvBatch, TunIo};
use crate::ids::RendezvousPointId;
use crate::store::endpoints::SavedEndpoint;
use crate::store::{ActiveSession, PeerChange};

/// A rendezvous point to listen for.
pub struct ListenerConfig {
    pub rp_id: RendezvousPointId,
    pub bind: SocketAddr,
    pub private_key: [u8; 32],
}

/// How the data plane spreads its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Packet workers (at least 1).
    pub workers: usize,
    /// Handshake messages each worker queues at most (at least 1); cookies are demanded from half
    /// of it (`HandshakeLoad`).
    pub handshake_queue: usize,
}

impl WorkerOptions {
    /// `workers` workers with the default handshake queue.
    pub fn workers(workers: usize) -> WorkerOptions {
        WorkerOptions {
            workers,
            handshake_queue: DEFAULT_HANDSHAKE_QUEUE,
        }
    }
}

pub struct Dataplane {
    pub engine: Arc<Engine>,
    /// Bound UDP address of each rendezvous point (useful when configured with port 0).
    pub udp_addrs: Vec<(RendezvousPointId, SocketAddr)>,
    /// Packet workers running (sockets per rendezvous point, handshake tasks).
    pub workers: usize,
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

impl Dataplane {
    /// Binds every listener (`workers` sockets each), installs `sessions` (the store's active
    /// ones), and starts the tasks; then starts the handshake toward each `resume` endpoint (saved
    /// by the previous run), paced.
    pub fn start<T: TunIo>(
        listeners: Vec<ListenerConfig>,
        tun: T,
        sessions: Vec<ActiveSession>,
        changes: mpsc::UnboundedReceiver<PeerChange>,
        resume: Vec<SavedEndpoint>,
        options: WorkerOptions,
    ) -> io::Result<Dataplane> {
        let workers = options.workers.max(1);
        let handshake_queue = options.handshake_queue.max(1);
        let mut per_worker: Vec<Vec<tokio::net::UdpSocket>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut udp_addrs = Vec::new();
        for listener in &listeners {
            let group = bind_group(listener.bind, workers).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "rendezvous point {} cannot listen on UDP {}: {e}",
                        listener.rp_id, listener.bind
                    ),
                )
            })?;
            udp_addrs.push((listener.rp_id.clone(), group[0].local_addr()?));
            for (worker, socket) in group.into_iter().enumerate() {
                per_worker[worker].push(socket);
            }
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

        let worker_sockets = per_worker
            .into_iter()
            .map(|sockets| {
                let states = sockets
                    .iter()
                    .map(|socket| quinn_udp::UdpSocketState::new(socket.into()))
                    .collect::<io::Result<Vec<_>>>()?;
                Ok(WorkerSockets { sockets, states })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let io = Arc::new(Io {
            workers: worker_sockets,
            tun,
        });
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let handshakes = WorkerHandshakes {
                queue: Arc::new(HandshakeQueue::new(handshake_queue, STALE_AFTER)),
                load: Arc::new(HandshakeLoad::new(handshake_queue, now)),
            };
            for listener in 0..listeners.len() {
                tasks.push(tokio::spawn(udp_loop(
                    engine.clone(),
                    io.clone(),
                    Receiver { worker, listener },
                    handshakes.clone(),
                )));
            }
            tasks.push(tokio::spawn(handshake_loop(
                engine.clone(),
                io.clone(),
                worker,
                handshakes.queue,
            )));
        }
        // A TUN with fewer queues than workers (the in-memory one has one) is read by as many.
        for queue in 0..io.tun.queues().min(workers) {
            tasks.push(tokio::spawn(tun_loop(engine.clone(), io.clone(), queue)));
        }
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
            tracing::info!(rendezvous_point = %rp, %addr, workers, "WireGuard listening");
        }
        Ok(Dataplane {
            engine,
            udp_addrs,
            workers,
            tasks,
        })
    }
}

/// The worker that runs tasks not tied to a socket or TUN queue (timers, peer changes, resume):
/// they send through its sockets, which share each rendezvous point's address and port.
const CONTROL_WORKER: usize = 0;

/// Handshake messages handled before their answers are sent.
const HANDSHAKE_BATCH: usize = 32;

/// A worker's handshake queue (newest first) and the load rule that guards it. A full queue
/// drops its oldest message (counted as `queue_full`; the device retries after WireGuard's
/// REKEY_TIMEOUT), so a storm of handshakes costs memory and CPU bounded by its size, never the
/// data packets' turn.
#[derive(Clone)]
struct WorkerHandshakes {
    queue: Arc<HandshakeQueue>,
    load: Arc<HandshakeLoad>,
}

/// Which socket a receive loop reads: `listener`'s socket of `worker`.
#[derive(Clone, Copy)]
struct Receiver {
    worker: usize,
    listener: usize,
}

/// WireGuard handshake initiations (type 1, 148 bytes) and responses (type 2, 92 bytes): the
/// messages whose processing costs key agreements. Anything else, whatever its first byte, stays
/// on the data path (where a malformed one is dropped cheaply).
fn is_handshake(datagram: &[u8]) -> bool {
    matches!(
        (datagram.first(), datagram.len()),
        (Some(1), 148) | (Some(2), 92)
    )
}

/// Datagrams taken from the kernel per receive call (recvmmsg).
const RECV_BATCH: usize = 32;

async fn udp_loop<T: TunIo>(
    engine: Arc<Engine>,
    io: Arc<Io<T>>,
    Receiver { worker, listener }: Receiver,
    handshakes: WorkerHandshakes,
) {
    let sockets = &io.workers[worker];
    let (socket, state) = (&sockets.sockets[listener], &sockets.states[listener]);
    // With UDP GRO the kernel may hand over up to `gro_segments` coalesced datagrams per buffer.
    let buffer_size = BUFFER_SIZE.max(state.gro_segments() * 1500);
    let mut buffers: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; buffer_size]).collect();
    // Made once: the receive call writes through them and the datagrams are read back through them.
    let mut slices: Vec<std::io::IoSliceMut> = buffers
        .iter_mut()
        .map(|b| std::io::IoSliceMut::new(b))
        .collect();
    let mut meta = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!(error = %e, "UDP socket failed; rendezvous point stops receiving");
            return;
        }
        let received = socket.try_io(tokio::io::Interest::READABLE, || {
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
        for (buffer, meta) in slices.iter().zip(&meta).take(count) {
            let stride = meta.stride.max(1);
            for datagram in buffer[..meta.len].chunks(stride) {
                if is_handshake(datagram) {
                    let arrival = Arrival {
                        listener,
                        from: meta.addr,
                        received: now,
                    };
                    queue_handshake(
                        &engine,
                        &handshakes,
                        arrival,
                        datagram,
                        &mut scratch,
                        &mut out,
                    );
                } else {
                    engine.handle_datagram(
                        listener,
                        meta.addr,
                        datagram,
                        now,
                        &mut scratch,
                        &mut out,
                    );
                }
            }
        }
        io.flush(worker, &mut out, &mut sends).await;
    }
}

/// Where and when a datagram arrived.
#[derive(Clone, Copy)]
struct Arrival {
    listener: usize,
    from: SocketAddr,
    received: Instant,
}

/// Screens a handshake message (a cookie reply into `out` when the worker is under load and the
/// message has no valid cookie) and queues it when it is worth a handshake.
fn queue_handshake(
    engine: &Engine,
    handshakes: &WorkerHandshakes,
    arrival: Arrival,
    datagram: &[u8],
    scratch: &mut [u8],
    out: &mut Outbox,
) {
    let Arrival {
        listener,
        from,
        received,
    } = arrival;
    let under_load = handshakes
        .load
        .under_load(handshakes.queue.backlog(), received);
    if engine.screen_handshake(listener, from, datagram, under_load, scratch, out)
        != Screened::Queue
    {
        return;
    }
    let queued = QueuedHandshake {
        listener,
        from,
        datagram: datagram.to_vec(),
        received,
    };
    if let Pushed::QueuedDroppingOldest { listener } = handshakes.queue.push(queued) {
        if let Some(rp) = engine.listeners().nth(listener) {
            Counters::bump(&rp.counters.handshakes.queue_full);
        }
    }
}

/// Handles one worker's queued handshake messages, in batches, and sends their answers through
/// the worker's sockets. It runs beside the worker's receive loops, so the runtime can run it on
/// another thread while they go on with data packets.
async fn handshake_loop<T: TunIo>(
    engine: Arc<Engine>,
    io: Arc<Io<T>>,
    worker: usize,
    queue: Arc<HandshakeQueue>,
) {
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    loop {
        let taken = queue.take(HANDSHAKE_BATCH, Instant::now).await;
        for listener in taken.stale {
            if let Some(rp) = engine.listeners().nth(listener) {
                Counters::bump(&rp.counters.handshakes.stale);
            }
        }
        let now = Instant::now();
        for handshake in taken.batch {
            engine.handle_datagram(
                handshake.listener,
                handshake.from,
                &handshake.datagram,
                now,
                &mut scratch,
                &mut out,
            );
        }
        io.flush(worker, &mut out, &mut sends).await;
        // A batch is up to ~10 ms of key agreements, and while handshakes are queued `take` never
        // waits: without this the task would keep its thread for as long as the backlog lasts,
        // and the receive loops sharing the thread would not read (their sockets overflow, and a
        // reconnect storm loses its own retries). Let them run between batches.
        tokio::task::yield_now().await;
    }
}

/// Packets taken from the TUN device before their datagrams are sent: a burst to one device
/// leaves in a few GSO sends instead of one system call per packet.
const TUN_BATCH: usize = 64;

/// Reads TUN queue `queue` and sends what it encrypts through the sockets of worker `queue`.
async fn tun_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>, queue: usize) {
    let mut batch = RecvBatch::new(io.tun.mtu());
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    loop {
        if let Err(e) = io.tun.recv_batch(queue, &mut batch).await {
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
            match io.tun.try_recv_batch(queue, &mut batch) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "TUN read failed");
                    break;
                }
            }
        }
        io.flush(queue, &mut out, &mut sends).await;
    }
}

async fn timer_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>) {
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    loop {
        // At most a second: peers scheduled meanwhile (a handshake, a peer change) do not wake
        // this loop, and their timers must not wait longer than one period.
        let latest = Instant::now() + TIMER_PERIOD;
        let wake = engine.next_deadline().map_or(latest, |at| at.min(latest));
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        engine.run_timers(now, &mut scratch, &mut out);
        io.flush(CONTROL_WORKER, &mut out, &mut sends).await;
    }
}

async fn change_loop<T: TunIo>(
    engine: Arc<Engine>,
    io: Arc<Io<T>>,
    mut changes: mpsc::UnboundedReceiver<PeerChange>,
) {
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    while let Some(change) = changes.recv().await {
        let applied = engine.apply_change(change, Instant::now(), &mut out);
        super::log_applied(&applied);
        io.flush(CONTROL_WORKER, &mut out, &mut sends).await;
    }
}

/// Handshake initiations sent per tick when resuming the sessions of a previous run: 80 a second,
/// a trickle beside what a worker handles, leaving its handshake queue to devices that handshake
/// on their own.
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
    let mut sends = SendBuffers::default();
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
        io.flush(CONTROL_WORKER, &mut out, &mut sends).await;
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
