//! Groups and their configuration namespaces.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::extract::{JsonBody, Path, QueryParams};
use super::{json, page_response, page_url, views, ApiError, Operator, SharedState};
use crate::ids::GroupId;
use crate::services::destination;
use crate::store::db::Backend;
use crate::store::groups::{self, Configuration};
use crate::store::sims;

/// Namespaces of `putConfigurationParameters` in the official API.
const NAMESPACES: &[&str] = &[
    "SoracomAir",
    "SoracomBeam",
    "SoracomEndorse",
    "SoracomFlux",
    "SoracomFunk",
    "SoracomFunnel",
    "SoracomHarvest",
    "SoracomHarvestFiles",
    "SoracomKrypton",
    "SoracomOrbit",
    "UnifiedEndpoint",
];

fn check_namespace(namespace: &str) -> Result<(), ApiError> {
    if NAMESPACES.contains(&namespace) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "unknown configuration namespace `{namespace}`; use one of {}",
            NAMESPACES.join(", ")
        )))
    }
}

/// A value a platform service would not understand is refused when it is set, not met by a
/// device later; each service with documented keys checks its own namespace.
fn check_value(namespace: &str, key: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    let checked = match namespace {
        crate::services::endorse::NAMESPACE => crate::services::endorse::check_setting(key, value),
        _ => Ok(()),
    };
    checked.map_err(|message| ApiError::bad_request(format!("{namespace}.{key} {message}")))
}

#[derive(Deserialize)]
pub struct CreateGroupRequest {
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    configuration: Configuration,
}

pub async fn create(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    body: JsonBody<CreateGroupRequest>,
) -> Result<Response, ApiError> {
    let request = body.required(r#"{} or {"tags":{...},"configuration":{...}}"#)?;
    for (namespace, values) in &request.configuration {
        check_namespace(namespace)?;
        for (key, value) in values {
            check_value(namespace, key, value)?;
        }
    }
    let group = state
        .db(move |store| {
            store.write_db(|db| {
                let group = groups::create(db, &operator, &request.tags, &request.configuration)?;
                destination::check_configuration(db, &operator, &group.configuration)?;
                Ok(group)
            })
        })
        .await?;
    Ok(json(StatusCode::CREATED, &views::group(&group)))
}

pub async fn list(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_clamped(100, 1000)?;
    // Validated as the official schema says; arcd does not filter groups by tag yet.
    query.choice("tag_value_match_mode", &["exact", "prefix"])?;
    let after = query.first("last_evaluated_key").map(str::to_string);
    let page = state
        .db(move |store| {
            store.read_db(|db| groups::list(db, &operator, after.as_deref(), limit + 1))
        })
        .await?;
    Ok(page_response(
        page,
        limit,
        |g| g.group_id.to_string(),
        views::group,
        &page_url("/v1/groups", &query),
    ))
}

pub async fn get(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(group_id): Path<GroupId>,
) -> Result<Response, ApiError> {
    let group = state
        .db(move |store| store.read_db(|db| groups::get(db, &operator, &group_id)))
        .await?;
    Ok(json(StatusCode::OK, &views::group(&group)))
}

pub async fn delete(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(group_id): Path<GroupId>,
) -> Result<StatusCode, ApiError> {
    state
        .db(move |store| store.write_db(|db| groups::delete(db, &operator, &group_id)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ConfigurationUpdate {
    key: String,
    value: serde_json::Value,
}

pub async fn put_configuration(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((group_id, namespace)): Path<(GroupId, String)>,
    body: JsonBody<Vec<ConfigurationUpdate>>,
) -> Result<Response, ApiError> {
    check_namespace(&namespace)?;
    let updates = body.required(r#"[{"key":"...","value":...}]"#)?;
    if updates.iter().any(|u| u.key.is_empty()) {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    for update in &updates {
        check_value(&namespace, &update.key, &update.value)?;
    }
    let values: Vec<(String, serde_json::Value)> =
        updates.into_iter().map(|u| (u.key, u.value)).collect();
    let group = state
        .db(move |store| {
            store.write_db(|db| {
                let group =
                    groups::put_configuration(db, &operator, &group_id, &namespace, &values)?;
                // Funnel and Funk destinations are checked as a whole, once every key is in.
                destination::check_configuration(db, &operator, &group.configuration)?;
                Ok(group)
            })
        })
        .await?;
    Ok(json(StatusCode::OK, &views::group(&group)))
}

pub async fn delete_configuration(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((group_id, namespace, name)): Path<(GroupId, String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .db(move |store| {
            store.write_db(|db| {
                groups::delete_configuration(db, &operator, &group_id, &namespace, &name)?;
                let group = groups::get(db, &operator, &group_id)?;
                destination::check_configuration(db, &operator, &group.configuration)
            })
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_subscribers(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(group_id): Path<GroupId>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_clamped(100, 1000)?;
    let after = query.first("last_evaluated_key").map(str::to_string);
    let path = page_url(&format!("/v1/groups/{group_id}/subscribers"), &query);
    let page = state
        .db(move |store| {
            store.read_db(|db| {
                sims::list_in_group(db, &operator, &group_id, after.as_deref(), limit + 1)
            })
        })
        .await?;
    super::sims::sim_page(&state, &path, page, limit).await
}
