//! The live state of peers as the API and `wg show` read it: endpoint, last handshake and packet,
//! bytes, dated on the caller's wall clock.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Engine, Peer, PeerSnapshot};
use crate::ids::{Imsi, RendezvousPointId};

impl Engine {
    /// Live state of one session's peer; `now` (the wall clock) dates its last handshake.
    pub fn snapshot(&self, imsi: &Imsi, now: SystemTime) -> Option<PeerSnapshot> {
        let peer = self.peer_index.read().by_imsi.get(imsi).cloned()?;
        Some(self.snapshot_of(&peer, now))
    }

    /// Live state of every peer of one rendezvous point; `now` as for [`Engine::snapshot`].
    pub fn snapshots(&self, rp_id: &RendezvousPointId, now: SystemTime) -> Vec<PeerSnapshot> {
        let of_rp: Vec<Arc<Peer>> = self
            .peer_index
            .read()
            .by_imsi
            .values()
            .filter(|p| self.listeners[p.listener].rp_id == *rp_id)
            .cloned()
            .collect();
        of_rp.iter().map(|p| self.snapshot_of(p, now)).collect()
    }

    /// boringtun reports the time since the last handshake (its own monotonic clock); the
    /// snapshot dates it, and the latest packet's age on the same clock, from the caller's wall
    /// clock `now`.
    pub(super) fn snapshot_of(&self, peer: &Peer, now: SystemTime) -> PeerSnapshot {
        let state = peer.state.lock();
        let (since_handshake, tx_bytes, rx_bytes) = state
            .tunn
            .as_ref()
            .map(|t| {
                let (since, tx, rx, _, _) = t.stats();
                (since, tx, rx)
            })
            .unwrap_or((None, 0, 0));
        PeerSnapshot {
            imsi: peer.imsi.clone(),
            rp_id: self.listeners[peer.listener].rp_id.clone(),
            public_key: peer.public_key,
            client_ip: peer.client_ip,
            endpoint: state.endpoint,
            last_handshake: since_handshake.and_then(|d| now.checked_sub(d)),
            last_received: state
                .last_received
                .and_then(|at| now.checked_sub(Instant::now().saturating_duration_since(at))),
            rx_bytes: rx_bytes as u64,
            tx_bytes: tx_bytes as u64,
        }
    }
}
