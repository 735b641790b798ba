//! arcd extension `GET /v1/arcd/sim_counts`: how many SIMs the caller has. The official listing
//! pages by cursor and carries no total; the management page shows this next to its list.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{json, ApiError, Operator, SharedState};
use crate::store::db::Backend;
use crate::store::sims;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimCountsView {
    /// Every SIM of the caller (the rows `listSims` pages through).
    pub total: u64,
    /// Those not terminated (what `sims.max_per_operator` limits).
    pub not_terminated: u64,
}

pub async fn get(
    State(state): State<SharedState>,
    Operator(operator): Operator,
) -> Result<Response, ApiError> {
    let counts = state
        .db(move |store| store.read_db(|db| sims::count(db, &operator)))
        .await?;
    Ok(json(
        StatusCode::OK,
        &SimCountsView {
            total: counts.total,
            not_terminated: counts.not_terminated,
        },
    ))
}
