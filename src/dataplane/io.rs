//! The data plane's two kinds of I/O behind small interfaces, so the packet path runs against a
//! real TUN device in production and an in-memory one in tests.

use std::future::Future;
use std::io;

use tokio::sync::{mpsc, Mutex};

/// A layer-3 device: whole IP packets in and out.
pub trait TunIo: Send + Sync + 'static {
    /// Waits for the next packet from the kernel (or the test) and copies it into `buf`.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Hands one packet to the kernel (or the test).
    fn send(&self, packet: &[u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// The next packet if one is already waiting, else `WouldBlock`: lets the data plane drain
    /// a burst and send it in batches instead of one system call per packet.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
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

impl TunIo for MemoryTun {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let packet = self
            .inbound
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "memory TUN closed"))?;
        let n = packet.len().min(buf.len());
        buf[..n].copy_from_slice(&packet[..n]);
        Ok(n)
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let would_block = || io::Error::from(io::ErrorKind::WouldBlock);
        let mut inbound = self.inbound.try_lock().map_err(|_| would_block())?;
        let packet = inbound.try_recv().map_err(|e| match e {
            mpsc::error::TryRecvError::Empty => would_block(),
            mpsc::error::TryRecvError::Disconnected => {
                io::Error::new(io::ErrorKind::BrokenPipe, "memory TUN closed")
            }
        })?;
        let n = packet.len().min(buf.len());
        buf[..n].copy_from_slice(&packet[..n]);
        Ok(n)
    }

    async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // A full queue drops, like a kernel TUN queue would; the test reads what it needs.
        match self.outbound.try_send(packet.to_vec()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(packet.len()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "memory TUN closed",
            )),
        }
    }
}
