//! `POST /v1/arcd/iot_sims`: arcd's own import of IoT SIMs (an extension, outside the official
//! surface).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::extract::JsonBody;
use super::live::Live;
use super::{json, request_coverage, views, ApiError, Operator, SharedState};
use crate::store::db::Backend;
use crate::store::sims;
use crate::store::subscriptions::{self, IotSimImport};

/// Most IoT SIMs one import call may register.
pub const MAX_IMPORT_ITEMS: usize = 10_000;

/// Room for `MAX_IMPORT_ITEMS` rows of about 100 bytes each (ICCID, IMSI, MSISDN, plan).
pub const MAX_IMPORT_BODY_BYTES: usize = 2 * 1024 * 1024;

pub async fn import_iot_sims(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    headers: HeaderMap,
    body: JsonBody<Vec<IotSimImport>, MAX_IMPORT_BODY_BYTES>,
) -> Result<Response, ApiError> {
    let items =
        body.required(r#"[{"iccid":"...","imsi":"...","msisdn":"...","subscription":"plan-D"}]"#)?;
    if items.is_empty() || items.len() > MAX_IMPORT_ITEMS {
        return Err(ApiError::bad_request(format!(
            "send between 1 and {MAX_IMPORT_ITEMS} IoT SIMs"
        )));
    }
    let coverage = request_coverage(&state.config, &headers);
    let limit = state.config.sims.max_per_operator;
    let sims = state
        .db(move |store| {
            store.write_db(|db| {
                match sims::check_sim_quota(db, &operator, items.len() as u64, limit)? {
                    Ok(()) => {
                        subscriptions::import_iot_sims(db, &operator, coverage, &items).map(Ok)
                    }
                    Err(exceeded) => Ok(Err(exceeded)),
                }
            })
        })
        .await??;
    let body: Vec<views::Sim> = sims
        .iter()
        .map(|s| views::sim(s, None, &Live::local(&state.engine)))
        .collect();
    Ok(json(StatusCode::CREATED, &body))
}
