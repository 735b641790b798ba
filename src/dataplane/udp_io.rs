//! The data plane's UDP side: binding each rendezvous point's sockets (one per worker, sharing
//! the port with SO_REUSEPORT), and sending what the engine produced (GSO trains of datagrams,
//! batches of TUN packets).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::engine::{Outbox, Outgoing};
use super::packet_buffers;
use super::{TunIo, TunWrites};

/// Socket buffers large enough that bursts are not dropped in the kernel (the main cause of
/// retransmits in the baseline measurements, docs/BENCHMARKS.md "Data-plane baseline").
const SOCKET_BUFFER_BYTES: usize = 7 * 1024 * 1024;

/// `workers` sockets bound to `addr`: the kernel hashes each device's flow (its address and port)
/// to one of them, so each device's datagrams arrive at one worker. One worker binds without
/// SO_REUSEPORT, so that, as before workers, a port another process holds is an error. With
/// several, another process of the same user that sets SO_REUSEPORT could join the group; arcd
/// runs as its own user (or root) for that reason among others.
pub(super) fn bind_group(addr: SocketAddr, workers: usize) -> io::Result<Vec<UdpSocket>> {
    let shared = workers > 1;
    let first = bind_udp(addr, shared)?;
    // Port 0 gets a port on the first bind; the others join that one.
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_udp(bound, shared)?);
    }
    Ok(sockets)
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: without CAP_NET_ADMIN the kernel caps these at net.core.*mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// What the workers send and receive through: each worker's own sockets and the TUN device.
pub(super) struct Io<T> {
    /// Indexed by worker.
    pub(super) workers: Vec<WorkerSockets>,
    pub(super) tun: T,
}

/// One worker's socket of every rendezvous point, in the engine's listener order. The sockets
/// of one rendezvous point share its address and port (SO_REUSEPORT), so a reply leaves from the
/// address the device sent to whichever worker sends it.
pub(super) struct WorkerSockets {
    pub(super) sockets: Vec<UdpSocket>,
    /// quinn-udp's per-socket state (GRO/GSO support found at setup), one per socket.
    pub(super) states: Vec<quinn_udp::UdpSocketState>,
}

/// Largest GSO send: the kernel's limit for one UDP datagram train.
const MAX_GSO_BYTES: usize = 64_000;

/// What a task keeps from one flush to the next so that sending allocates nothing per packet:
/// the GSO train's buffer (64 KB, grown once) and the TUN write buffers.
#[derive(Default)]
pub(super) struct SendBuffers {
    train: GsoTrain,
    to_tun: TunWrites,
}

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
            // Full size at once: growing by doubling would copy the train several times, and a
            // buffer freed per train makes the allocator hand its pages back (madvise, and TLB
            // shootdowns on the other cores) only to fault them in again for the next train.
            self.contents
                .reserve(MAX_GSO_BYTES.saturating_sub(self.contents.len()));
        } else if data.len() < self.segment {
            self.closed = true;
        }
        self.contents.extend_from_slice(data);
        self.count += 1;
    }

    /// Empty again, keeping the buffer.
    fn clear(&mut self) {
        self.target = None;
        self.segment = 0;
        self.count = 0;
        self.contents.clear();
        self.closed = false;
    }
}

impl<T: TunIo> Io<T> {
    /// Sends everything the engine produced for `worker` through that worker's sockets and TUN
    /// queue: UDP datagrams to the same peer in GSO trains, packets for the TUN in one batch
    /// (merged per flow by a device with offloads).
    pub(super) async fn flush(&self, worker: usize, out: &mut Outbox, buffers: &mut SendBuffers) {
        let sockets = &self.workers[worker];
        let SendBuffers { train, to_tun } = buffers;
        train.clear();
        to_tun.clear();
        for outgoing in out.drain(..) {
            match outgoing {
                Outgoing::Udp { listener, to, data } => {
                    let max_segments = sockets
                        .states
                        .get(listener)
                        .map_or(1, |s| s.max_gso_segments());
                    if !train.accepts(listener, to, data.len(), max_segments) {
                        sockets.send_train(train).await;
                    }
                    train.push(listener, to, &data);
                    packet_buffers::recycle(data);
                }
                Outgoing::Tun(packet) => {
                    to_tun.push(&packet);
                    packet_buffers::recycle(packet);
                }
            }
        }
        sockets.send_train(train).await;
        if let Err(e) = self.tun.send_batch(worker, to_tun.pending()).await {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}

impl WorkerSockets {
    /// Sends the train (if any) and empties it.
    async fn send_train(&self, train: &mut GsoTrain) {
        self.send_train_once(train).await;
        train.clear();
    }

    async fn send_train_once(&self, taken: &GsoTrain) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_shares_one_port_and_a_single_socket_keeps_it_exclusive() {
        let group = bind_group(SocketAddr::from(([127, 0, 0, 1], 0)), 3).expect("bind");
        let addrs: Vec<SocketAddr> = group.iter().map(|s| s.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        assert_ne!(addrs[0].port(), 0);
        assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");

        let single = bind_group(SocketAddr::from(([127, 0, 0, 1], 0)), 1).expect("bind");
        let taken = single[0].local_addr().unwrap();
        let err = bind_group(taken, 1).expect_err("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        let err = bind_group(taken, 2).expect_err("a group cannot join a port held alone");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

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
