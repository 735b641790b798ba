//! Live state for other nodes: every peer's figures tied to its session, for the publisher that
//! writes them to a shared store (server/live_publisher.rs). Read like `wg show` reads them: the
//! peer index briefly, then each peer's own lock, never the packet path's.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Engine, Peer};
use crate::store::live::SessionLive;

impl Engine {
    /// The figures of every peer this engine holds, dated by the wall clock `now`.
    pub fn live_figures(&self, now: SystemTime) -> Vec<SessionLive> {
        let all: Vec<Arc<Peer>> = self.peer_index.read().by_imsi.values().cloned().collect();
        all.iter()
            .map(|peer| {
                let snapshot = self.snapshot_of(peer, now);
                SessionLive {
                    imsi: snapshot.imsi,
                    session_id: peer.session_id.clone(),
                    rp_id: snapshot.rp_id,
                    last_handshake_at: snapshot
                        .last_handshake
                        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                        .and_then(|d| i64::try_from(d.as_millis()).ok()),
                    last_seen_at: snapshot
                        .last_received
                        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                        .and_then(|d| i64::try_from(d.as_millis()).ok()),
                    device_endpoint: snapshot.endpoint.map(|e| e.to_string()),
                    rx_bytes: snapshot.rx_bytes,
                    tx_bytes: snapshot.tx_bytes,
                }
            })
            .collect()
    }
}
