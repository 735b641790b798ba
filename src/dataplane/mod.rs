//! The userspace WireGuard data plane. The engine's peer index holds the store's set of active
//! sessions this node serves, loaded from the store at start and changed by the `PeerChange`s the
//! outbox follower (`server::follower`) sends for each committed change; the engine (boringtun `Tunn` per peer) serves them through `dataplane.workers`
//! packet workers, each with its own UDP socket per rendezvous point and its own TUN queue.

pub mod egress;
pub mod engine;
pub mod handshake_load;
mod handshake_queue;
pub mod host_routes;
pub mod interface_name;
mod io;
mod packet_buffers;
mod peer_index;
pub mod runtime;
pub mod stats;
pub mod tun_device;
pub mod uapi;
mod udp_io;
pub mod vpg_plane;

pub use io::{MemoryTun, MemoryTunPeer, RecvBatch, TunIo, TunWrites, TUN_HEADROOM};
pub use peer_index::Applied;
pub use runtime::{Dataplane, ListenerConfig, WorkerOptions};

use tokio::sync::mpsc;

use crate::store::PeerChange;

/// The outbox follower's end of the peer-change channel. Sending never blocks the follower: the
/// channel is unbounded because every change must arrive, and changes are small and rare next to
/// packets.
#[derive(Clone, Debug)]
pub struct PeerChanges {
    tx: mpsc::UnboundedSender<PeerChange>,
}

impl PeerChanges {
    pub fn channel() -> (PeerChanges, mpsc::UnboundedReceiver<PeerChange>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (PeerChanges { tx }, rx)
    }

    /// Only with a committed session's state (the follower reads it after the commit).
    pub fn send(&self, change: PeerChange) {
        if self.tx.send(change).is_err() {
            tracing::error!("data plane is gone; peer change dropped");
        }
    }
}

pub(crate) fn log_applied(applied: &Applied) {
    match applied {
        Applied::Added(peer) => {
            tracing::info!(imsi = %peer.imsi, rp = %peer.rp_id, ip = %peer.client_ip, "peer added")
        }
        Applied::NewSession(peer) => {
            tracing::info!(imsi = %peer.imsi, rp = %peer.rp_id, ip = %peer.client_ip, "peer session replaced")
        }
        Applied::Updated(peer) => tracing::debug!(imsi = %peer.imsi, "peer attributes updated"),
        Applied::Removed(imsi) => tracing::info!(imsi = %imsi, "peer removed"),
        Applied::Unknown(imsi) => {
            tracing::debug!(imsi = %imsi, "removal of an unknown peer ignored")
        }
    }
}
