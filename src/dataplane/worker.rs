//! One packet worker's data path in one task: its UDP socket of every rendezvous point and, when
//! the TUN device has a queue for it, that queue.
//!
//! One task rather than one per socket and one per queue, because the kernel keeps a device's
//! traffic on one worker in both directions: the device's datagrams reach the worker's socket
//! (SO_REUSEPORT hashes its address and port), the worker writes what they carry to its own TUN
//! queue, and a multi-queue TUN sends the packets of a flow back to the queue that flow was last
//! written on. As separate tasks, the receive side and the TUN side of one device ran on both of
//! tokio's threads by turns, woke each other's thread and met on the device's lock: context
//! switches that cost more CPU per GB than the packets' own system calls on a busy machine. As
//! one task they take turns on one thread, and other workers' devices use the other cores.

use std::future::poll_fn;
use std::io;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::mpsc;

use super::engine::{Counters, Engine, Outbox, BUFFER_SIZE};
use super::runtime::QueuedHandshake;
use super::udp_io::{Io, SendBuffers};
use super::{RecvBatch, TunIo};

/// Datagrams taken from the kernel per receive call (recvmmsg).
const RECV_BATCH: usize = 32;

/// Packets taken from the TUN device before their datagrams are sent: a burst to one device
/// leaves in a few GSO sends instead of one system call per packet.
const TUN_BATCH: usize = 64;

/// What woke the worker.
enum Ready {
    /// The socket of this listener has datagrams waiting, or failed.
    Udp(usize, io::Result<()>),
    /// The TUN queue was read into the batch.
    Tun(io::Result<()>),
}

/// Runs worker `worker` until its sockets or its TUN queue fail; `reads_tun` when the TUN device
/// has a queue of that number. Handshake messages go to `handshakes` (the worker's handshake
/// task), so their key agreement never delays data packets.
pub(super) async fn worker_loop<T: TunIo>(
    engine: Arc<Engine>,
    io: Arc<Io<T>>,
    worker: usize,
    reads_tun: bool,
    handshakes: mpsc::Sender<QueuedHandshake>,
) {
    let sockets = &io.workers[worker];
    // With UDP GRO the kernel may hand over up to `gro_segments` coalesced datagrams per buffer.
    let gro_segments = sockets.states.iter().map(|s| s.gro_segments()).max();
    let buffer_size = BUFFER_SIZE.max(gro_segments.unwrap_or(1) * 1500);
    let mut buffers: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; buffer_size]).collect();
    // Made once: the receive call writes through them and the datagrams are read back through them.
    let mut slices: Vec<IoSliceMut> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
    let mut meta = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
    let mut tun_batch = RecvBatch::new(io.tun.mtu());
    let mut scratch = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut sends = SendBuffers::default();
    let mut udp_open: Vec<bool> = vec![true; sockets.sockets.len()];
    let mut tun_open = reads_tun;
    // The socket asked first; it moves on after each receive so a busy rendezvous point cannot
    // keep the worker from another one's socket.
    let mut first = 0;
    while tun_open || udp_open.contains(&true) {
        let ready = tokio::select! {
            (listener, result) = poll_fn(|cx| {
                let count = sockets.sockets.len();
                for listener in (0..count).map(|i| (first + i) % count) {
                    if !udp_open[listener] {
                        continue;
                    }
                    if let Poll::Ready(result) = sockets.sockets[listener].poll_recv_ready(cx) {
                        return Poll::Ready((listener, result));
                    }
                }
                Poll::Pending
            }), if udp_open.contains(&true) => Ready::Udp(listener, result),
            read = io.tun.recv_batch(worker, &mut tun_batch), if tun_open => Ready::Tun(read),
        };
        match ready {
            Ready::Udp(listener, Err(e)) => {
                tracing::warn!(error = %e, "UDP socket failed; rendezvous point stops receiving");
                udp_open[listener] = false;
                continue;
            }
            Ready::Udp(listener, Ok(())) => {
                first = (listener + 1) % sockets.sockets.len();
                let (socket, state) = (&sockets.sockets[listener], &sockets.states[listener]);
                let received = socket.try_io(tokio::io::Interest::READABLE, || {
                    state.recv(socket.into(), &mut slices, &mut meta)
                });
                let count = match received {
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        // ICMP errors surface here (ECONNREFUSED); not fatal for a server socket.
                        tracing::debug!(error = %e, "UDP receive error");
                        continue;
                    }
                };
                let now = Instant::now();
                for (buffer, meta) in slices.iter().zip(&meta).take(count) {
                    let stride = meta.stride.max(1);
                    for datagram in buffer[..meta.len].chunks(stride) {
                        if is_handshake(datagram) {
                            queue_handshake(&engine, &handshakes, listener, meta.addr, datagram);
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
            }
            Ready::Tun(Err(e)) => {
                tracing::warn!(error = %e, "TUN read failed; data plane stops reading the device");
                tun_open = false;
                continue;
            }
            Ready::Tun(Ok(())) => {
                let now = Instant::now();
                let mut taken = 0;
                loop {
                    for packet in tun_batch.packets() {
                        engine.handle_tun_packet(packet, now, &mut scratch, &mut out);
                    }
                    taken += tun_batch.len();
                    if taken >= TUN_BATCH {
                        break;
                    }
                    match io.tun.try_recv_batch(worker, &mut tun_batch) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "TUN read failed");
                            break;
                        }
                    }
                }
            }
        }
        io.flush(worker, &mut out, &mut sends).await;
    }
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

fn queue_handshake(
    engine: &Engine,
    handshakes: &mpsc::Sender<QueuedHandshake>,
    listener: usize,
    from: SocketAddr,
    datagram: &[u8],
) {
    let queued = QueuedHandshake {
        listener,
        from,
        datagram: datagram.to_vec(),
    };
    if handshakes.try_send(queued).is_err() {
        if let Some(rp) = engine.listeners().nth(listener) {
            Counters::bump(&rp.counters.handshakes.queue_full);
        }
    }
}
