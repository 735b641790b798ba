//! The data plane's two kinds of I/O behind small interfaces, so the packet path runs against a
//! real TUN device in production and an in-memory one in tests.

use std::future::Future;
use std::io;

use tokio::sync::{mpsc, Mutex};

/// Bytes kept free in front of every packet handed to `TunIo::send_batch`: room for the
/// virtio-net header a TUN device with offloads expects (tun-rs writes it there).
pub const TUN_HEADROOM: usize = 10;

/// Packets taken from a TUN device by one read. With offloads on, one read can carry a TCP
/// super-segment that is split here into packets of at most the MTU.
pub struct RecvBatch {
    /// The raw read: virtio-net header and the unsplit packet.
    pub(crate) original: Vec<u8>,
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) sizes: Vec<usize>,
    pub(crate) count: usize,
}

/// Packets one read may be split into (tun-rs's IDEAL_BATCH_SIZE: a 64 KB super-segment cut at
/// the smallest MTU still fits).
const RECV_BATCH_PACKETS: usize = 128;

impl RecvBatch {
    /// Buffers for packets of up to `mtu` bytes.
    pub fn new(mtu: usize) -> RecvBatch {
        RecvBatch {
            original: vec![0; TUN_HEADROOM + 65_535],
            bufs: vec![vec![0; mtu.max(1280)]; RECV_BATCH_PACKETS],
            sizes: vec![0; RECV_BATCH_PACKETS],
            count: 0,
        }
    }

    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.sizes)
            .take(self.count)
            .map(|(buf, len)| &buf[..*len])
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Packets on their way to the TUN, each with `TUN_HEADROOM` free bytes in front, in buffers
/// kept from one batch to the next. The first ones are roomy: a device with offloads merges a
/// flow's packets into the buffer of its first packet, and tun-rs never grows a buffer to do so.
#[derive(Default)]
pub struct TunWrites {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

/// Room for merging about 22 full-size TCP segments into one write.
const MERGE_CAPACITY: usize = 32 * 1024;
/// Buffers given that room (8 MiB at most); packets past them are written unmerged.
const ROOMY_BUFFERS: usize = 256;

impl TunWrites {
    pub fn push(&mut self, packet: &[u8]) {
        if self.len == self.bufs.len() {
            let capacity = if self.len < ROOMY_BUFFERS {
                MERGE_CAPACITY
            } else {
                TUN_HEADROOM + packet.len()
            };
            self.bufs.push(Vec::with_capacity(capacity));
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf.resize(TUN_HEADROOM, 0);
        buf.extend_from_slice(packet);
        self.len += 1;
    }

    /// The packets pushed since the last `clear`.
    pub fn pending(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[..self.len]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A layer-3 device: whole IP packets in and out, in batches so a burst costs few system calls.
/// A device may have several queues (a multi-queue TUN): the kernel spreads the packets it sends
/// over them by flow, and each data-plane worker reads and writes its own queue.
pub trait TunIo: Send + Sync + 'static {
    /// Largest packet the device carries (receive buffers are this big).
    fn mtu(&self) -> usize;
    /// Queues the device was opened with (at least 1); `queue` arguments are below this.
    fn queues(&self) -> usize {
        1
    }
    /// Waits for packets from the kernel (or the test) on `queue` and reads one batch.
    fn recv_batch(
        &self,
        queue: usize,
        batch: &mut RecvBatch,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads one more batch from `queue` if packets are already waiting, else fails with
    /// `WouldBlock`.
    fn try_recv_batch(&self, queue: usize, batch: &mut RecvBatch) -> io::Result<()>;
    /// Hands `packets` (each with `TUN_HEADROOM` bytes in front) to the kernel (or the test)
    /// through `queue`; a device with offloads merges packets of one TCP or UDP flow into one
    /// write (and may reorder and resize the buffers to do so).
    fn send_batch(
        &self,
        queue: usize,
        packets: &mut [Vec<u8>],
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// A TUN stand-in for tests: what the data plane writes comes out of `MemoryTunPeer::from_dataplane`,
/// what the test pushes into `to_dataplane` is read by the data plane as if the kernel sent it.
pub struct MemoryTun {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::Sender<Vec<u8>>,
}

pub struct MemoryTunPeer {
    pub to_dataplane: mpsc::Sender<Vec<u8>>,
    pub from_dataplane: mpsc::Receiver<Vec<u8>>,
}

/// Packets queued in each direction before a sender waits.
const MEMORY_TUN_DEPTH: usize = 1024;

impl MemoryTun {
    pub fn pair() -> (MemoryTun, MemoryTunPeer) {
        let (to_dataplane, inbound) = mpsc::channel(MEMORY_TUN_DEPTH);
        let (outbound, from_dataplane) = mpsc::channel(MEMORY_TUN_DEPTH);
        (
            MemoryTun {
                inbound: Mutex::new(inbound),
                outbound,
            },
            MemoryTunPeer {
                to_dataplane,
                from_dataplane,
            },
        )
    }
}

impl MemoryTun {
    fn take(packet: Vec<u8>, batch: &mut RecvBatch) {
        let n = packet.len().min(batch.bufs[0].len());
        batch.bufs[0][..n].copy_from_slice(&packet[..n]);
        batch.sizes[0] = n;
        batch.count = 1;
    }
}

impl TunIo for MemoryTun {
    fn mtu(&self) -> usize {
        65_535
    }

    async fn recv_batch(&self, _queue: usize, batch: &mut RecvBatch) -> io::Result<()> {
        let packet = self
            .inbound
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "memory TUN closed"))?;
        Self::take(packet, batch);
        Ok(())
    }

    fn try_recv_batch(&self, _queue: usize, batch: &mut RecvBatch) -> io::Result<()> {
        let would_block = || io::Error::from(io::ErrorKind::WouldBlock);
        let mut inbound = self.inbound.try_lock().map_err(|_| would_block())?;
        let packet = inbound.try_recv().map_err(|e| match e {
            mpsc::error::TryRecvError::Empty => would_block(),
            mpsc::error::TryRecvError::Disconnected => {
                io::Error::new(io::ErrorKind::BrokenPipe, "memory TUN closed")
            }
        })?;
        Self::take(packet, batch);
        Ok(())
    }

    async fn send_batch(&self, _queue: usize, packets: &mut [Vec<u8>]) -> io::Result<()> {
        for packet in packets.iter() {
            let packet = packet.get(TUN_HEADROOM..).unwrap_or_default().to_vec();
            // A full queue drops, like a kernel TUN queue would; the test reads what it needs.
            if let Err(mpsc::error::TrySendError::Closed(_)) = self.outbound.try_send(packet) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "memory TUN closed",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tun_writes_keep_headroom_and_reuse_roomy_buffers() {
        let mut writes = TunWrites::default();
        writes.push(b"first");
        writes.push(b"second");
        let pending = writes.pending();
        assert_eq!(pending.len(), 2);
        assert_eq!(&pending[0][..TUN_HEADROOM], &[0; TUN_HEADROOM]);
        assert_eq!(&pending[0][TUN_HEADROOM..], b"first");
        assert_eq!(&pending[1][TUN_HEADROOM..], b"second");
        assert!(
            pending[0].capacity() >= MERGE_CAPACITY,
            "room to merge a flow"
        );
        let first_buffer = pending[0].as_ptr();

        writes.clear();
        assert!(writes.pending().is_empty());
        writes.push(b"again");
        assert_eq!(&writes.pending()[0][TUN_HEADROOM..], b"again");
        assert_eq!(
            writes.pending()[0].as_ptr(),
            first_buffer,
            "no new allocation"
        );
    }
}
