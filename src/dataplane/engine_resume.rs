//! Device endpoints across a restart: the engine reports the endpoints it learned so they can be
//! saved, and after a restart starts the handshake toward each saved one, so a device passes
//! traffic again at once instead of after its own rekey timeout (15 s with traffic, up to 180 s).

use std::sync::Arc;
use std::time::Instant;

use super::{Engine, Outbox, Peer};
use crate::store::endpoints::SavedEndpoint;

/// What `Engine::resume` did for one saved endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// A handshake initiation is on its way to the device.
    Initiated,
    /// The device reached arcd first (its endpoint is known): nothing to do.
    AlreadyBack,
    /// The session is gone or was replaced since the endpoint was saved.
    NoSession,
}

impl Engine {
    /// Endpoints that changed since they were last saved (`endpoints_saved`), for the store.
    pub fn unsaved_endpoints(&self) -> Vec<SavedEndpoint> {
        let all: Vec<Arc<Peer>> = self.peer_index.read().by_imsi.values().cloned().collect();
        all.iter()
            .filter_map(|peer| {
                let state = peer.state.lock();
                let endpoint = state.endpoint?;
                (state.saved_endpoint != Some(endpoint)).then(|| SavedEndpoint {
                    imsi: peer.imsi.clone(),
                    session_id: peer.session_id.clone(),
                    endpoint,
                })
            })
            .collect()
    }

    /// Records that these endpoints are in the store (after the transaction committed).
    pub fn endpoints_saved(&self, saved: &[SavedEndpoint]) {
        for entry in saved {
            if let Some(peer) = self.peer_of_session(entry) {
                peer.state.lock().saved_endpoint = Some(entry.endpoint);
            }
        }
    }

    /// Starts the handshake toward a device's saved endpoint, unless the device already came back
    /// on its own or the session changed.
    pub fn resume(&self, saved: &SavedEndpoint, now: Instant, out: &mut Outbox) -> Resumed {
        let Some(peer) = self.peer_of_session(saved) else {
            return Resumed::NoSession;
        };
        {
            let mut state = peer.state.lock();
            if state.endpoint.is_some() {
                return Resumed::AlreadyBack;
            }
            state.saved_endpoint = Some(saved.endpoint);
        }
        self.initiate(&peer, saved.endpoint, now, out);
        Resumed::Initiated
    }

    fn peer_of_session(&self, saved: &SavedEndpoint) -> Option<Arc<Peer>> {
        self.peer_index
            .read()
            .by_imsi
            .get(&saved.imsi)
            .filter(|peer| peer.session_id == saved.session_id)
            .cloned()
    }
}
