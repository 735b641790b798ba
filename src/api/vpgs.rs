//! Virtual Private Gateways (official operations) and arcd's device-to-device switch.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::extract::{non_null, JsonBody, Path, QueryParams};
use super::{
    json, page_response, page_url, request_coverage, views, ApiError, Operator, SharedState,
};
use crate::config::Coverage;
use crate::ids::VpgId;
use crate::store::db::Backend;
use crate::store::vpgs::{self, NewVpg, TagFilter};

#[derive(Deserialize)]
struct PlacementRequest {
    #[serde(default, deserialize_with = "non_null")]
    region: Option<String>,
}

/// Accepted for its types and ignored: arcd has no SORACOM Transit Gateway.
#[derive(Deserialize)]
struct TransitGatewayRequest {
    #[allow(dead_code)]
    #[serde(default, deserialize_with = "non_null")]
    asn: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateVpgRequest {
    #[serde(rename = "type")]
    vpg_type: i64,
    #[serde(default, deserialize_with = "non_null")]
    placement: Option<PlacementRequest>,
    #[serde(default, deserialize_with = "non_null")]
    device_subnet_cidr_range: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    use_internet_gateway: Option<bool>,
    #[allow(dead_code)]
    #[serde(default, deserialize_with = "non_null")]
    soracom_transit_gateway: Option<TransitGatewayRequest>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// arcd extension: devices of the VPG may reach each other (default false).
    #[serde(default)]
    arcd_device_to_device: bool,
}

/// The official default placement of each coverage.
fn default_region(coverage: Coverage) -> &'static str {
    match coverage {
        Coverage::Jp => "ap-northeast-1",
        Coverage::G => "eu-central-1",
    }
}

pub async fn create(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    headers: HeaderMap,
    body: JsonBody<CreateVpgRequest>,
) -> Result<Response, ApiError> {
    let request = body.required(r#"{"type":14,"placement":{"region":"ap-northeast-1"}}"#)?;
    let region = request
        .placement
        .and_then(|p| p.region)
        .unwrap_or_else(|| default_region(request_coverage(&state.config, &headers)).to_string());
    let new = NewVpg {
        vpg_type: request.vpg_type,
        region,
        device_subnet: request.device_subnet_cidr_range,
        use_internet_gateway: request.use_internet_gateway,
        device_to_device: request.arcd_device_to_device,
        tags: request.tags,
    };
    let config = state.config.clone();
    let vpg = state
        .write_changing_vpgs(move |db| vpgs::create(db, &operator, &new, &config.rendezvous_points))
        .await?;
    Ok(json(StatusCode::CREATED, &views::vpg(&vpg)))
}

fn tag_filter(query: &QueryParams) -> Result<Option<TagFilter>, ApiError> {
    let prefix = query.choice("tag_value_match_mode", &["exact", "prefix"])? == Some("prefix");
    match (query.first("tag_name"), query.first("tag_value")) {
        (None, None) => Ok(None),
        (Some(name), Some(value)) => Ok(Some(TagFilter {
            name: name.to_string(),
            value: value.to_string(),
            prefix,
        })),
        _ => Err(ApiError::bad_request(
            "`tag_name` and `tag_value` must be given together",
        )),
    }
}

pub async fn list(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit_clamped(100, 1000)?;
    let tag = tag_filter(&query)?;
    let after = query.first("last_evaluated_key").map(str::to_string);
    let page = state
        .db(move |store| {
            store.read_db(|db| vpgs::list(db, &operator, tag.as_ref(), after.as_deref(), limit + 1))
        })
        .await?;
    Ok(page_response(
        page,
        limit,
        |v| v.vpg_id.to_string(),
        views::vpg,
        &page_url("/v1/virtual_private_gateways", &query),
    ))
}

pub async fn get(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(vpg_id): Path<VpgId>,
) -> Result<Response, ApiError> {
    let vpg = state
        .db(move |store| store.read_db(|db| vpgs::get(db, &operator, &vpg_id)))
        .await?;
    Ok(json(StatusCode::OK, &views::vpg(&vpg)))
}

pub async fn terminate(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(vpg_id): Path<VpgId>,
) -> Result<StatusCode, ApiError> {
    state
        .write_changing_vpgs(move |db| vpgs::terminate(db, &operator, &vpg_id))
        .await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceToDevice {
    enabled: bool,
}

/// arcd extension: `PUT /v1/arcd/virtual_private_gateways/{vpg_id}/device_to_device`.
pub async fn set_device_to_device(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(vpg_id): Path<VpgId>,
    body: JsonBody<DeviceToDevice>,
) -> Result<Response, ApiError> {
    let enabled = body.required(r#"{"enabled":true}"#)?.enabled;
    let vpg = state
        .write_changing_vpgs(move |db| vpgs::set_device_to_device(db, &operator, &vpg_id, enabled))
        .await?;
    Ok(json(StatusCode::OK, &views::vpg(&vpg)))
}
