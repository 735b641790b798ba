//! SIM operations: create, read, list/search, Arc sessions and credentials, lifecycle, groups,
//! tags, session events and secondary virtual subscribers.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::extract::{non_null, JsonBody, Path, QueryParams};
use super::live::Live;
use super::{
    json, page_response, page_url, request_coverage, trim_page, views, with_next_key, ApiError,
    AppState, Operator, SharedState,
};
use crate::ids::{GroupId, Imsi, OperatorId, SimId};
use crate::store::db::{Backend, WriteIsolation};
use crate::store::sims::{self, SimQuery, StatusAction};
use crate::store::{sessions, subscriptions, PeerChange, SimRecord};
use crate::wgkey;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSimRequest {
    #[serde(rename = "type")]
    sim_type: String,
    subscription: String,
}

pub async fn create_sim(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    headers: HeaderMap,
    body: JsonBody<CreateSimRequest>,
) -> Result<Response, ApiError> {
    let request = body.required(r#"{"type":"virtual","subscription":"planArc01"}"#)?;
    if request.sim_type != "virtual" || request.subscription != "planArc01" {
        return Err(ApiError::bad_request(
            "only {\"type\":\"virtual\",\"subscription\":\"planArc01\"} can be created",
        ));
    }
    let coverage = request_coverage(&state.config, &headers);
    let prefix = state.config.sims.iccid_prefix.clone();
    let policy = state.policy.clone();
    let limit = state.config.sims.max_per_operator;
    // READ COMMITTED on PostgreSQL: concurrent creates share no row (sharded live-SIM count,
    // address tickets, numbers from sequences), and under SERIALIZABLE they would still abort
    // each other over index pages (docs/design/store-engines.md, createSim). The quota is then
    // a soft limit there: concurrent creates may pass it by at most their number.
    let created = state
        .write_notifying_at(
            WriteIsolation::ReadCommitted,
            move |db| {
                sims::create_virtual_within_quota(db, &operator, coverage, &prefix, &policy, limit)
            },
            |created| match created {
                Ok(created) => vec![PeerChange::Upsert(created.session.clone())],
                Err(_) => Vec::new(),
            },
        )
        .await??;
    let view = views::sim(
        &created.sim,
        Some(views::OneTimeKey {
            iccid: created.sim.sim_id.as_str(),
            private_key: &created.private_key,
        }),
        &Live::local(&state.engine),
    );
    tracing::info!(sim_id = %created.sim.sim_id, "virtual SIM created");
    Ok(json(StatusCode::CREATED, &view))
}

pub async fn get_sim(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    let sim = state
        .db(move |store| store.read_db(|db| sims::get(db, &operator, &sim_id)))
        .await?;
    sim_response(&state, &sim).await
}

/// 200 with the SIM as the official `Sim` (live session figures from the data plane holding its
/// peer, see `api::live`).
async fn sim_response(state: &AppState, sim: &SimRecord) -> Result<Response, ApiError> {
    let live = state.live_for(std::slice::from_ref(sim)).await?;
    Ok(json(StatusCode::OK, &views::sim(sim, None, &live)))
}

/// Responds with one page, fetched with one extra row to know whether another page follows; the
/// live figures of the page's SIMs are read in one batch.
pub(super) async fn sim_page(
    state: &AppState,
    path: &str,
    mut page: Vec<SimRecord>,
    limit: u32,
) -> Result<Response, ApiError> {
    let next_key = trim_page(&mut page, limit, |s| s.sim_id.to_string());
    let live = state.live_for(&page).await?;
    let body: Vec<views::Sim> = page.iter().map(|s| views::sim(s, None, &live)).collect();
    Ok(with_next_key(json(StatusCode::OK, &body), path, next_key))
}

pub async fn list_sims(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_clamped(100, 1000)?;
    let after = query.first("last_evaluated_key").map(str::to_string);
    let page = state
        .db(move |store| store.read_db(|db| sims::list(db, &operator, after.as_deref(), limit + 1)))
        .await?;
    sim_page(&state, &page_url("/v1/sims", &query), page, limit).await
}

pub async fn search_sims(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_at_most(10, 100)?;
    let after = query.first("last_evaluated_key").map(str::to_string);
    let filter = search_filter(&query)?;
    let page = state
        .db(move |store| {
            store.read_db(|db| sims::search(db, &operator, &filter, after.as_deref(), limit + 1))
        })
        .await?;
    sim_page(&state, &page_url("/v1/query/sims", &query), page, limit).await
}

/// The `searchSims` filter from the query: each parameter's values, the session state and
/// whether all or any parameter must match; 400 for too many values or too short ones.
fn search_filter(query: &QueryParams) -> Result<SimQuery, ApiError> {
    let session_online = match query.choice("session_status", &["NA", "ONLINE", "OFFLINE"])? {
        Some("ONLINE") => Some(true),
        Some("OFFLINE") => Some(false),
        _ => None,
    };
    let match_all = query.choice("search_type", &["and", "or"])? != Some("or");
    let filter = SimQuery {
        name: query.all("name"),
        sim_id: query.all("sim_id"),
        imsi: query.all("imsi"),
        msisdn: query.all("msisdn"),
        status: query.all("status"),
        tag: query.all("tag"),
        group_id: query.all("group_id"),
        subscription: query.all("subscription"),
        module_type: query.all("module_type"),
        iccid: query.all("iccid"),
        group: query.all("group"),
        absent_fields: !query.all("serial_number").is_empty() || !query.all("bundles").is_empty(),
        session_online,
        match_all,
    };
    let partial = [
        &filter.name,
        &filter.sim_id,
        &filter.imsi,
        &filter.msisdn,
        &filter.tag,
        &filter.iccid,
        &filter.group,
    ];
    check_search_value_counts(&filter)?;
    if partial
        .iter()
        .any(|values| values.iter().any(|v| v.chars().count() < 2))
    {
        return Err(ApiError::bad_request(
            "search values of name, sim_id, imsi, msisdn, tag, iccid and group need at least 2 characters",
        ));
    }
    Ok(filter)
}

/// Most values one search parameter of `searchSims` may list (comma-separated or repeated). Each
/// value becomes one term of an OR chain in the query, and SQLite refuses expressions deeper than
/// 1000 terms: these caps keep every search well below that, and its cost bounded.
pub const MAX_SEARCH_VALUES_PER_PARAMETER: usize = 100;
/// Most values all search parameters of one `searchSims` call may list together.
pub const MAX_SEARCH_VALUES_TOTAL: usize = 200;

/// Refuses a search with more values than the caps above, naming the cap it broke.
fn check_search_value_counts(filter: &SimQuery) -> Result<(), ApiError> {
    let parameters = [
        ("name", &filter.name),
        ("sim_id", &filter.sim_id),
        ("imsi", &filter.imsi),
        ("msisdn", &filter.msisdn),
        ("status", &filter.status),
        ("tag", &filter.tag),
        ("group_id", &filter.group_id),
        ("subscription", &filter.subscription),
        ("module_type", &filter.module_type),
        ("iccid", &filter.iccid),
        ("group", &filter.group),
    ];
    if let Some((name, values)) = parameters
        .iter()
        .find(|(_, values)| values.len() > MAX_SEARCH_VALUES_PER_PARAMETER)
    {
        return Err(ApiError::bad_request(format!(
            "search parameter `{name}` lists {} values; at most {MAX_SEARCH_VALUES_PER_PARAMETER} are allowed per parameter",
            values.len()
        )));
    }
    let total: usize = parameters.iter().map(|(_, values)| values.len()).sum();
    if total > MAX_SEARCH_VALUES_TOTAL {
        return Err(ApiError::bad_request(format!(
            "the search lists {total} values; at most {MAX_SEARCH_VALUES_TOTAL} are allowed in all parameters together"
        )));
    }
    Ok(())
}

/// `createArcSession` takes `{}` (the body is required and may have no property).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyObject {}

pub async fn create_arc_session(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
    body: JsonBody<EmptyObject>,
) -> Result<Response, ApiError> {
    body.required("{}")?;
    let sim = recreate_session(&state, operator, sim_id, false).await?;
    let status = views::arc_session_status(&sim).ok_or_else(ApiError::internal)?;
    Ok(json(
        StatusCode::OK,
        &views::ArcSessionCreateResponse::from(status),
    ))
}

pub async fn delete_session(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    let sim = recreate_session(&state, operator, sim_id, true).await?;
    sim_response(&state, &sim).await
}

/// A new session for the SIM (`sessions::recreate`; `require_existing` as there), sent to the
/// data plane once committed; returns the SIM as it is now.
async fn recreate_session(
    state: &AppState,
    operator: OperatorId,
    sim_id: SimId,
    require_existing: bool,
) -> Result<SimRecord, ApiError> {
    let policy = state.policy.clone();
    let (_, sim) = state
        .write_notifying(
            move |db| {
                let session =
                    sessions::recreate(db, &operator, &sim_id, &policy, require_existing)?;
                Ok((session, sims::get(db, &operator, &sim_id)?))
            },
            |(session, _)| vec![PeerChange::Upsert(session.clone())],
        )
        .await?;
    Ok(sim)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRequest {
    #[serde(default, deserialize_with = "non_null")]
    arc_client_peer_public_key: Option<String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsResponse {
    arc_client_peer_public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    arc_client_peer_private_key: Option<String>,
}

/// `renewArcCredentials`, and `attachArcCredentials` (deprecated in the official API), which
/// behaves the same so an old key never keeps working.
pub async fn renew_credentials(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
    body: JsonBody<CredentialsRequest>,
) -> Result<Response, ApiError> {
    let request = body.required(r#"{} or {"arcClientPeerPublicKey":"..."}"#)?;
    let client_key = match request.arc_client_peer_public_key {
        Some(key) if !key.trim().is_empty() => {
            let parsed = wgkey::parse_key(&key).ok_or_else(|| {
                ApiError::bad_request(
                    "arcClientPeerPublicKey must be a base64 WireGuard key (32 bytes)",
                )
            })?;
            Some(wgkey::encode(&parsed))
        }
        _ => None,
    };
    let policy = state.policy.clone();
    let renewed = state
        .write_notifying(
            move |db| {
                sessions::renew_credentials(db, &operator, &sim_id, client_key.clone(), &policy)
            },
            |renewed| vec![PeerChange::Upsert(renewed.session.clone())],
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &CredentialsResponse {
            arc_client_peer_public_key: renewed.public_key,
            arc_client_peer_private_key: renewed.private_key,
        },
    ))
}

pub async fn remove_credentials(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<StatusCode, ApiError> {
    state
        .write_notifying(
            move |db| sessions::remove_credentials(db, &operator, &sim_id),
            |change| change.iter().cloned().collect(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn terminate(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    let (sim, _) = state
        .write_notifying(
            move |db| sims::terminate(db, &operator, &sim_id),
            |(_, changes)| changes.clone(),
        )
        .await?;
    tracing::info!(sim_id = %sim.sim_id, "SIM terminated");
    sim_response(&state, &sim).await
}

async fn termination(
    state: SharedState,
    operator: OperatorId,
    sim_id: SimId,
    enabled: bool,
) -> Result<Response, ApiError> {
    let sim = state
        .db(move |store| {
            store.write_db(|db| sims::set_termination_enabled(db, &operator, &sim_id, enabled))
        })
        .await?;
    sim_response(&state, &sim).await
}

pub async fn enable_termination(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    termination(state, operator, sim_id, true).await
}

pub async fn disable_termination(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    termination(state, operator, sim_id, false).await
}

async fn change_status(
    state: SharedState,
    operator: OperatorId,
    sim_id: SimId,
    action: StatusAction,
) -> Result<Response, ApiError> {
    let sim = state
        .db(move |store| store.write_db(|db| sims::change_status(db, &operator, &sim_id, action)))
        .await?;
    sim_response(&state, &sim).await
}

pub async fn activate(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    change_status(state, operator, sim_id, StatusAction::Activate).await
}

pub async fn deactivate(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    change_status(state, operator, sim_id, StatusAction::Deactivate).await
}

pub async fn suspend(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    change_status(state, operator, sim_id, StatusAction::Suspend).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetGroupRequest {
    group_id: GroupId,
}

async fn move_to_group(
    state: SharedState,
    operator: OperatorId,
    sim_id: SimId,
    group_id: Option<GroupId>,
) -> Result<Response, ApiError> {
    let (sim, _) = state
        .write_notifying(
            move |db| sims::set_group(db, &operator, &sim_id, group_id.as_ref()),
            |(_, change)| change.iter().cloned().collect(),
        )
        .await?;
    sim_response(&state, &sim).await
}

pub async fn set_group(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
    body: JsonBody<SetGroupRequest>,
) -> Result<Response, ApiError> {
    let request = body.required(r#"{"groupId":"..."}"#)?;
    move_to_group(state, operator, sim_id, Some(request.group_id)).await
}

pub async fn unset_group(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
) -> Result<Response, ApiError> {
    move_to_group(state, operator, sim_id, None).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagUpdate {
    tag_name: String,
    tag_value: String,
}

pub async fn put_tags(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
    body: JsonBody<Vec<TagUpdate>>,
) -> Result<Response, ApiError> {
    let updates = body.required(r#"[{"tagName":"...","tagValue":"..."}]"#)?;
    if updates.iter().any(|t| t.tag_name.is_empty()) {
        return Err(ApiError::bad_request("tagName must not be empty"));
    }
    let tags: Vec<(String, String)> = updates
        .into_iter()
        .map(|t| (t.tag_name, t.tag_value))
        .collect();
    let sim = state
        .db(move |store| store.write_db(|db| sims::put_tags(db, &operator, &sim_id, &tags)))
        .await?;
    sim_response(&state, &sim).await
}

pub async fn delete_tag(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((sim_id, tag_name)): Path<(SimId, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .db(move |store| store.write_db(|db| sims::delete_tag(db, &operator, &sim_id, &tag_name)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_session_events(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_clamped(100, 1000)?;
    let from = query.integer("from")?;
    let to = query.integer("to")?;
    let before = query
        .first("last_evaluated_key")
        .map(|k| {
            k.parse::<i64>()
                .map_err(|_| ApiError::bad_request("last_evaluated_key is not from this listing"))
        })
        .transpose()?;
    let path = page_url(&format!("/v1/sims/{sim_id}/events/sessions"), &query);
    let events = state
        .db(move |store| {
            store.read_db(|db| {
                sessions::list_events(db, &operator, &sim_id, from, to, before, limit + 1)
            })
        })
        .await?;
    Ok(page_response(
        events,
        limit,
        |e| e.event_id.to_string(),
        views::session_event,
        &path,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddSubscriptionRequest {
    subscription: String,
    #[serde(rename = "type", default, deserialize_with = "non_null")]
    subscription_type: Option<String>,
    #[allow(dead_code)] // accepted as in the official API; ignored for virtual subscribers
    #[serde(default, deserialize_with = "non_null")]
    enable: Option<bool>,
    /// Checked against the official pattern, then ignored (arcd runs no OTA scripts).
    #[serde(default, deserialize_with = "non_null")]
    tag: Option<String>,
}

/// The official `tag` rule: 1 to 64 of `A-Z a-z 0-9 - _ :`.
fn valid_ota_tag(tag: &str) -> bool {
    (1..=64).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
}

pub async fn add_subscription(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((sim_id, iccid)): Path<(SimId, String)>,
    body: JsonBody<AddSubscriptionRequest>,
) -> Result<Response, ApiError> {
    let request = body.required(r#"{"subscription":"planArc01","type":"virtual"}"#)?;
    if request.tag.as_deref().is_some_and(|t| !valid_ota_tag(t)) {
        return Err(ApiError::bad_request(
            "tag must be 1 to 64 letters, digits, `-`, `_` or `:`",
        ));
    }
    let is_virtual = request.subscription_type.as_deref().unwrap_or("virtual") == "virtual";
    if request.subscription != "planArc01" || !is_virtual {
        return Err(
            crate::store::StoreError::from(crate::store::Rule::UnsupportedSubscription).into(),
        );
    }
    let policy = state.policy.clone();
    let added = state
        .write_notifying(
            move |db| {
                subscriptions::add_virtual_subscriber(db, &operator, &sim_id, &iccid, &policy)
            },
            |added| vec![PeerChange::Upsert(added.session.clone())],
        )
        .await?;
    tracing::info!(sim_id = %added.sim.sim_id, imsi = %added.imsi, "virtual subscriber added");
    let profile = views::profile_of(
        &added.sim,
        &added.iccid,
        &added.private_key,
        &Live::local(&state.engine),
    )
    .ok_or_else(ApiError::internal)?;
    Ok(json(StatusCode::OK, &profile))
}

pub async fn terminate_subscription(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((sim_id, iccid, imsi)): Path<(SimId, String, Imsi)>,
) -> Result<StatusCode, ApiError> {
    state
        .write_notifying(
            move |db| {
                subscriptions::terminate_virtual_subscriber(db, &operator, &sim_id, &iccid, &imsi)
            },
            |change| change.iter().cloned().collect(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
