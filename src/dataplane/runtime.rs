//! Runs the engine on `workers` packet workers. Each worker has its own UDP socket per rendezvous
//! point (the kernel spreads devices over them by flow) and, when the TUN device is multi-queue,
//! its own queue, all read by one task (worker.rs), and its own handshake task (handshake
//! messages are queued there, so their key agreement never delays the worker's data packets).
//! One task more runs timers, one applies peer changes. Tasks only move bytes; decisions are the
//! engine's, which locks per peer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::engine::{Engine, Listener, Outbox, Resumed, BUFFER_SIZE};
use super::peer_index::Applied;
use super::udp_io::{bind_group, Io, SendBuffers, WorkerSockets};
use super::worker::worker_loop;
use super::TunIo;
use crate::ids::RendezvousPointId;
use crate::store::endpoints::SavedEndpoint;
use crate::store::{ActiveSession, PeerChange};

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
        workers: usize,
    ) -> io::Result<Dataplane> {
        let workers = workers.max(1);
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
            let (handshakes, queued) = mpsc::channel(HANDSHAKE_QUEUE);
            // A TUN with fewer queues than workers (the in-memory one has one) is read by as many.
            let reads_tun = worker < io.tun.queues();
            tasks.push(tokio::spawn(worker_loop(
                engine.clone(),
                io.clone(),
                worker,
                reads_tun,
                handshakes,
            )));
            tasks.push(tokio::spawn(handshake_loop(
                engine.clone(),
                io.clone(),
                worker,
                queued,
            )));
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

/// Handshake messages waiting per worker. A full queue drops further ones (counted as
/// `queue_full`; the device retries after WireGuard's REKEY_TIMEOUT), so a storm of handshakes
/// costs memory and CPU bounded by this, never the data packets' turn.
const HANDSHAKE_QUEUE: usize = 4096;

/// Handshake messages handled before their answers are sent.
const HANDSHAKE_BATCH: usize = 32;

/// A handshake message taken off a worker's data path.
pub(super) struct QueuedHandshake {
    pub(super) listener: usize,
    pub(super) from: SocketAddr,
    pub(super) datagram: Vec<u8>,
}

/// Handles one worker's queued handshake messages, in batches, and sends their answers through
/// the worker's sockets. It runs beside the worker's receive loops, so the runtime can run it on
/// another thread while they go on with data packets.
async fn handshake_loop<T: TunIo>(
    engine: Arc<Engine>,
    io: Arc<Io<T>>,
    worker: usize,
    mut queued: mpsc::Receiver<QueuedHandshake>,
) {
    let mut batch = Vec::with_capacity(HANDSHAKE_BATCH);
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    while queued.recv_many(&mut batch, HANDSHAKE_BATCH).await > 0 {
        let now = Instant::now();
        for handshake in batch.drain(..) {
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
    }
}

async fn timer_loop<T: TunIo>(engine: Arc<Engine>, io: Arc<Io<T>>) {
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
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
