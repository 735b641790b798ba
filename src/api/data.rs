//! Harvest Data read API: `getDataEntries`, `getDataEntry`, `deleteDataEntry`,
//! `listDataSourceResources`, `getDataFromSim` and `getDataFromSubscriber`.
//!
//! Everything is scoped to the caller's operator: another operator's data answers exactly like no
//! data (an empty list, or 404 for one entry). Only `Subscriber` (resource ID = IMSI) and `Sim`
//! (resource ID = SIM ID) ever have data in arcd; the other resource types are valid and empty.
//!
//! `Sim` resources: devices' entries are stored under resource type `Subscriber` (their primary
//! IMSI) and the SIM ID. `/data/Sim/{sim_id}` (and `/{time}`) reads the SIM's entries by SIM ID
//! and returns them as stored, with `resourceType` `Subscriber` and the IMSI as `resourceId`, the
//! same entries `/sims/{sim_id}/data` returns: no entry is ever shown under two identities.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::extract::{Path, QueryParams};
use super::routes::{delete, get, Route};
use super::{
    json, page_response, page_url, trim_page, with_next_key, ApiError, Operator, SharedState,
};
use crate::ids::{Imsi, OperatorId, SimId};
use crate::store::db::Backend;
use crate::store::harvest::{self, Cursor, Entry, EntryQuery, Order, ResourceCursor, Scope};
use crate::store::sims;

/// The six operations, part of the authenticated `/v1` route table.
pub fn routes() -> Vec<Route> {
    vec![
        get("/data/resources", list_resources),
        get("/data/{resource_type}/{resource_id}", get_entries),
        get("/data/{resource_type}/{resource_id}/{time}", get_entry),
        delete("/data/{resource_type}/{resource_id}/{time}", delete_entry),
        get("/sims/{sim_id}/data", get_from_sim),
        get("/subscribers/{imsi}/data", get_from_subscriber),
    ]
}

/// `resource_type` values of the official API.
const RESOURCE_TYPES: &[&str] = &[
    "Subscriber",
    "LoraDevice",
    "Sim",
    "SigfoxDevice",
    "Device",
    "SoraCam",
];

/// The official `DataEntry`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataEntry<'a> {
    time: i64,
    content_type: &'a str,
    content: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'a str>,
}

fn data_entry(entry: &Entry) -> DataEntry<'_> {
    DataEntry {
        time: entry.time,
        content_type: &entry.content_type,
        content: &entry.content,
        resource_type: &entry.resource_type,
        resource_id: &entry.resource_id,
        category: entry.category.as_deref(),
    }
}

/// The official `DataResourceMetadata` (arcd does not track `attributeNames`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DataResourceMetadata {
    resource_type: String,
    resource_id: String,
    last_modified_time: i64,
}

fn check_resource_type(resource_type: &str) -> Result<(), ApiError> {
    if RESOURCE_TYPES.contains(&resource_type) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "unknown resource_type `{resource_type}`; use one of {}",
            RESOURCE_TYPES.join(", ")
        )))
    }
}

/// The entries a `/data/{resource_type}/{resource_id}` path names.
fn scope_of(resource_type: String, resource_id: String) -> Result<Scope, ApiError> {
    check_resource_type(&resource_type)?;
    Ok(if resource_type == "Sim" {
        Scope::Sim(SimId::new(resource_id))
    } else {
        Scope::Resource {
            resource_type,
            resource_id,
        }
    })
}

fn parse_time(time: &str) -> Result<i64, ApiError> {
    time.parse::<i64>()
        .map_err(|_| ApiError::bad_request("`time` must be an integer (UNIX time in milliseconds)"))
}

fn bad_key() -> ApiError {
    ApiError::bad_request("last_evaluated_key is not from this listing")
}

/// `from`, `to`, `sort`, `limit` (1..=1000, default 10) and `last_evaluated_key`; the store is
/// asked for one row more than `limit` (see `trim_page`).
fn entry_query(query: &QueryParams) -> Result<(EntryQuery, u32), ApiError> {
    let limit = query.limit(10, 1000)?;
    let order = match query.choice("sort", &["desc", "asc"])? {
        Some("asc") => Order::Asc,
        _ => Order::Desc,
    };
    let after = query
        .first("last_evaluated_key")
        .map(|key| Cursor::parse(key).ok_or_else(bad_key))
        .transpose()?;
    let entries = EntryQuery {
        from: query.integer("from")?,
        to: query.integer("to")?,
        order,
        limit: limit + 1,
        after,
    };
    Ok((entries, limit))
}

/// One page of `scope`'s entries; `require_sim` makes an unknown or foreign SIM a 404.
async fn entries_page(
    state: SharedState,
    operator: OperatorId,
    scope: Scope,
    query: QueryParams,
    path: String,
    require_sim: Option<SimId>,
) -> Result<Response, ApiError> {
    let (entry_query, limit) = entry_query(&query)?;
    let mut page = state
        .db(move |store| {
            store.read_db(|db| {
                if let Some(sim_id) = &require_sim {
                    sims::require_sim(db, &operator, sim_id)?;
                }
                harvest::list_entries(db, &operator, &scope, &entry_query)
            })
        })
        .await?;
    // Not `page_response`: entries are shown borrowed (contents up to 64 KiB are not copied).
    let next_key = trim_page(&mut page, limit, harvest::next_key);
    let body: Vec<DataEntry> = page.iter().map(data_entry).collect();
    Ok(with_next_key(
        json(StatusCode::OK, &body),
        &page_url(&path, &query),
        next_key,
    ))
}

pub async fn get_entries(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((resource_type, resource_id)): Path<(String, String)>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let path = format!("/v1/data/{resource_type}/{resource_id}");
    let scope = scope_of(resource_type, resource_id)?;
    entries_page(state, operator, scope, query, path, None).await
}

pub async fn get_from_sim(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(sim_id): Path<SimId>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let path = format!("/v1/sims/{sim_id}/data");
    let scope = Scope::Sim(sim_id.clone());
    entries_page(state, operator, scope, query, path, Some(sim_id)).await
}

/// An unknown IMSI (or another operator's) has no data: an empty list, as for `getDataEntries`.
pub async fn get_from_subscriber(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(imsi): Path<Imsi>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let path = format!("/v1/subscribers/{imsi}/data");
    let scope = Scope::Resource {
        resource_type: harvest::SUBSCRIBER.to_string(),
        resource_id: imsi.into_string(),
    };
    entries_page(state, operator, scope, query, path, None).await
}

pub async fn get_entry(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((resource_type, resource_id, time)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let scope = scope_of(resource_type, resource_id)?;
    let time = parse_time(&time)?;
    let entry = state
        .db(move |store| store.read_db(|db| harvest::get_entry(db, &operator, &scope, time)))
        .await?;
    Ok(json(StatusCode::OK, &data_entry(&entry)))
}

/// Deletes every entry of the resource at that millisecond.
pub async fn delete_entry(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path((resource_type, resource_id, time)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = scope_of(resource_type, resource_id)?;
    let time = parse_time(&time)?;
    state
        .db(move |store| store.write_db(|db| harvest::delete_entries(db, &operator, &scope, time)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_resources(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_clamped(100, 1000)?;
    let resource_type = query
        .choice("resource_type", RESOURCE_TYPES)?
        .map(str::to_string);
    let after = query
        .first("last_evaluated_key")
        .map(|key| {
            ResourceCursor::parse(key)
                .filter(|c| RESOURCE_TYPES.contains(&c.resource_type.as_str()))
                .ok_or_else(bad_key)
        })
        .transpose()?;
    let page = state
        .db(move |store| {
            store.read_db(|db| {
                harvest::list_resources(
                    db,
                    &operator,
                    resource_type.as_deref(),
                    after.as_ref(),
                    limit + 1,
                )
            })
        })
        .await?;
    Ok(page_response(
        page,
        limit,
        harvest::resource_key,
        |r| DataResourceMetadata {
            resource_type: r.resource_type.clone(),
            resource_id: r.resource_id.clone(),
            last_modified_time: r.last_modified_time,
        },
        &page_url("/v1/data/resources", &query),
    ))
}
