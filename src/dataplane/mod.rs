//! The data plane's view of the store: the set of peers it must serve, rebuilt from SQLite at start
//! and changed by `PeerChange`s sent after each committed write. The WireGuard engine (boringtun
//! `Tunn` per peer, UDP and TUN I/O) plugs in behind this table.

mod peer_table;

pub use peer_table::{Applied, PeerTable};

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::store::PeerChange;

/// The API's end of the peer-change channel. Sending never blocks a request: the channel is
/// unbounded because every change must arrive, and changes are small and rare next to packets.
#[derive(Clone, Debug)]
pub struct PeerChanges {
    tx: mpsc::UnboundedSender<PeerChange>,
}

impl PeerChanges {
    pub fn channel() -> (PeerChanges, mpsc::UnboundedReceiver<PeerChange>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (PeerChanges { tx }, rx)
    }

    /// Call only after the transaction that made `change` has committed.
    pub fn send(&self, change: PeerChange) {
        if self.tx.send(change).is_err() {
            tracing::error!("data plane is gone; peer change dropped");
        }
    }

    pub fn send_all(&self, changes: impl IntoIterator<Item = PeerChange>) {
        for change in changes {
            self.send(change);
        }
    }
}

/// Applies changes to the shared table until the API side is dropped.
pub async fn apply_changes(
    table: Arc<Mutex<PeerTable>>,
    mut rx: mpsc::UnboundedReceiver<PeerChange>,
) {
    while let Some(change) = rx.recv().await {
        let applied = table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .apply(change);
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
}
