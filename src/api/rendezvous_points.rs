//! arcd extension `GET /v1/arcd/rendezvous_points`: the configured rendezvous points with their
//! public identity and the caller's live data-plane figures there (rendezvous points are shared
//! by all operators; each sees only its own sessions). The private key never leaves the store.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{json, ApiError, Operator, SharedState};
use crate::dataplane::engine::ONLINE_WINDOW;
use crate::dataplane::stats::PeerSnapshot;
use crate::ids::RendezvousPointId;
use crate::store::db::Backend;
use crate::store::{rendezvous, sessions};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RendezvousPointView {
    /// The placement region id sessions show (`placement.region`).
    pub rendezvous_point_id: RendezvousPointId,
    pub display_name: String,
    /// `host:port` devices are told (`arcServerEndpoint`).
    pub endpoint: String,
    pub public_key: String,
    #[serde(rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
    pub pool: String,
    /// The caller's sessions at this rendezvous point.
    pub sessions: u64,
    /// Of those, devices with a handshake in the last 180 s.
    pub online_devices: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

fn is_online(peer: &PeerSnapshot, now: SystemTime) -> bool {
    peer.last_handshake
        .and_then(|at| now.duration_since(at).ok())
        .is_some_and(|age| age < ONLINE_WINDOW)
}

pub async fn list(
    State(state): State<SharedState>,
    Operator(operator): Operator,
) -> Result<Response, ApiError> {
    let config = state.config.clone();
    let records = state
        .db(move |store| {
            store.read_db(|db| {
                config
                    .rendezvous_points
                    .iter()
                    .map(|rp| {
                        let record = rendezvous::get(db, &rp.id)?;
                        let imsis = sessions::operator_imsis_at(db, &operator, &rp.id)?;
                        Ok((record, imsis))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .await?;
    let now = SystemTime::now();
    let body: Vec<RendezvousPointView> = records
        .into_iter()
        .zip(&state.config.rendezvous_points)
        .map(|((rp, imsis), configured)| {
            // Live figures of the caller's peers still on this listener (a peer being moved to
            // another rendezvous point counts where the data plane has it).
            let snapshots: Vec<PeerSnapshot> = imsis
                .iter()
                .filter_map(|imsi| state.engine.snapshot(imsi, now))
                .filter(|peer| peer.rp_id == rp.rp_id)
                .collect();
            RendezvousPointView {
                display_name: configured.display_name().to_string(),
                sessions: imsis.len() as u64,
                online_devices: snapshots.iter().filter(|p| is_online(p, now)).count() as u64,
                rx_bytes: snapshots.iter().map(|p| p.rx_bytes).sum(),
                tx_bytes: snapshots.iter().map(|p| p.tx_bytes).sum(),
                rendezvous_point_id: rp.rp_id,
                endpoint: rp.endpoint,
                public_key: rp.public_key,
                allowed_ips: rp.allowed_ips,
                pool: rp.pool.to_string(),
            }
        })
        .collect();
    Ok(json(StatusCode::OK, &body))
}
