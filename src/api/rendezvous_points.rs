//! arcd extension `GET /v1/arcd/rendezvous_points`: the configured rendezvous points with their
//! public identity and the caller's live data-plane figures there (rendezvous points are shared
//! by all operators; each sees only its own sessions). The private key never leaves the store.
//! A rendezvous point this node serves is counted from its own data plane; on a PostgreSQL store,
//! one another node serves is counted from the figures that node publishes (`api::live`).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{json, ApiError, Operator, SharedState};
use crate::dataplane::engine::ONLINE_WINDOW;
use crate::dataplane::stats::PeerSnapshot;
use crate::ids::RendezvousPointId;
use crate::store::db::Backend;
use crate::store::live::{self, LiveTotals, SILENT_AFTER};
use crate::store::{rendezvous, sessions, Store};

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

fn millis(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
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
    let now = SystemTime::now();
    let served_here: HashSet<RendezvousPointId> =
        state.engine.listeners().map(|l| l.rp_id.clone()).collect();
    let shared_store = matches!(*state.store, Store::Postgres(_));
    let now_ms = crate::store::now_ms();
    let online_since = now_ms.saturating_sub(millis(ONLINE_WINDOW));
    let heard_since = now_ms.saturating_sub(millis(SILENT_AFTER));
    let records = state
        .db(move |store| {
            store.read_db(|db| {
                config
                    .rendezvous_points
                    .iter()
                    .map(|rp| {
                        let record = rendezvous::get(db, &rp.id)?;
                        let imsis = sessions::operator_imsis_at(db, &operator, &rp.id)?;
                        let published = (shared_store && !served_here.contains(&rp.id))
                            .then(|| {
                                live::operator_totals_at(
                                    db,
                                    &operator,
                                    &rp.id,
                                    online_since,
                                    heard_since,
                                )
                            })
                            .transpose()?;
                        Ok((record, imsis, published))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .await?;
    let body: Vec<RendezvousPointView> = records
        .into_iter()
        .zip(&state.config.rendezvous_points)
        .map(|((rp, imsis, published), configured)| {
            let totals = published.unwrap_or_else(|| {
                // Live figures of the caller's peers still on this listener (a peer being moved
                // to another rendezvous point counts where the data plane has it).
                let snapshots: Vec<PeerSnapshot> = imsis
                    .iter()
                    .filter_map(|imsi| state.engine.snapshot(imsi, now))
                    .filter(|peer| peer.rp_id == rp.rp_id)
                    .collect();
                LiveTotals {
                    online_devices: snapshots.iter().filter(|p| is_online(p, now)).count() as u64,
                    rx_bytes: snapshots.iter().map(|p| p.rx_bytes).sum(),
                    tx_bytes: snapshots.iter().map(|p| p.tx_bytes).sum(),
                }
            });
            RendezvousPointView {
                display_name: configured.display_name().to_string(),
                sessions: imsis.len() as u64,
                online_devices: totals.online_devices,
                rx_bytes: totals.rx_bytes,
                tx_bytes: totals.tx_bytes,
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
