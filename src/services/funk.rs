//! Funk (`funk.soracom.io`, which arcd's DNS answers with the unified endpoint's address:
//! HTTP 80 with that host name, or through the unified endpoint's fan-out, and TCP/UDP 23080):
//! invokes the group's function URL (namespace `SoracomFunk`, `destination` = `{"provider":
//! "http", "resourceUrl": "https://..."}`; OpenFaaS, Knative and Lambda function URLs all take a
//! plain POST) and returns the function's answer to the device. The function gets the device's
//! payload as the body and who sent it in `X-Soracom-Imsi` (the primary IMSI),
//! `X-Soracom-Sim-Id` and `X-Soracom-Timestamp`, plus `Authorization` from `credentialsId`. It
//! must answer within `services.funk_timeout_seconds` (504 otherwise; 502 when unreachable).

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use http_body_util::Full;
use serde_json::Value;

use super::beam::ExchangeError;
use super::destination::{self, Secret, FUNK};
use super::funnel_delivery::authorization;
use super::http::text;
use super::{Caller, SharedContext};
use crate::metrics;
use crate::store::db::Backend;
use crate::store::{now_ms, Rule, StoreError};

pub const DISABLED: &str = "Funk is not enabled for this SIM's group.";
pub const INVALID_JSON: &str = "Invalid JSON is send to funk.";
/// Largest function answer relayed to a device.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Whether the caller's group has Funk switched on (an unusable configuration counts as on, so
/// the device learns why).
pub fn is_on(caller: &Caller) -> bool {
    !matches!(destination::route(&caller.configuration, FUNK), Ok(None))
}

async fn resolve(
    ctx: &SharedContext,
    caller: &Caller,
) -> Result<Option<(destination::Route, Option<Secret>)>, StoreError> {
    let (ctx, caller) = (ctx.clone(), caller.clone());
    tokio::task::spawn_blocking(move || {
        ctx.store.read_db(|db| {
            destination::resolve(db, &caller.sim.operator_id, &caller.configuration, FUNK)
        })
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("Funk lookup stopped: {e}")))?
}

/// Invokes the caller's function with `payload` and relays its answer as an HTTP response.
pub async fn invoke(
    ctx: &SharedContext,
    caller: &Caller,
    payload: Bytes,
    content_type: Option<&HeaderValue>,
) -> Response {
    let (route, secret) = match resolve(ctx, caller).await {
        Ok(Some(resolved)) => resolved,
        Ok(None) => {
            metrics::funk_invocation("disabled");
            return text(StatusCode::BAD_REQUEST, DISABLED);
        }
        Err(StoreError::Rule(Rule::InvalidServiceConfiguration(reason))) => {
            metrics::funk_invocation("upstream_error");
            tracing::warn!(service = "funk", sim_id = %caller.sim.sim_id, %reason, "Funk destination unusable");
            return text(
                StatusCode::BAD_GATEWAY,
                format!("Funk's function is not usable: {reason}"),
            );
        }
        Err(e) => {
            tracing::error!(service = "funk", error = %e, "store failure while reading Funk's function");
            return super::http::internal_error();
        }
    };
    if route.require_json && serde_json::from_slice::<Value>(&payload).is_err() {
        metrics::funk_invocation("invalid_json");
        return text(StatusCode::BAD_REQUEST, INVALID_JSON);
    }
    let destination::Target::Http { url } = &route.target else {
        // `destination::route` gives Funk only HTTP targets.
        return super::http::internal_error();
    };
    let Ok(uri) = url.parse::<Uri>() else {
        return text(StatusCode::BAD_GATEWAY, "Funk's function URL is not valid");
    };
    let mut request = hyper::Request::new(Full::new(payload));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = function_headers(caller, content_type, secret.as_ref(), now_ms());
    match ctx.funk.exchange(request, MAX_ANSWER_BYTES).await {
        Ok((parts, body)) => {
            metrics::funk_invocation("answered");
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = parts.status;
            if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, kind.clone());
            }
            response
        }
        Err(ExchangeError::Timeout) => {
            metrics::funk_invocation("timeout");
            tracing::info!(service = "funk", "function did not answer in time");
            text(
                StatusCode::GATEWAY_TIMEOUT,
                "Funk's function did not answer in time",
            )
        }
        Err(ExchangeError::Failed(error)) => {
            metrics::funk_invocation("upstream_error");
            tracing::info!(service = "funk", %error, "function call failed");
            text(
                StatusCode::BAD_GATEWAY,
                format!("Funk's function failed: {error}"),
            )
        }
    }
}

/// What the function gets besides the payload: its type, who sent it and when, and the
/// credentials' `Authorization`.
pub fn function_headers(
    caller: &Caller,
    content_type: Option<&HeaderValue>,
    secret: Option<&Secret>,
    timestamp: i64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        content_type
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set("x-soracom-imsi", caller.primary_imsi.as_str());
    set("x-soracom-sim-id", caller.sim.sim_id.as_str());
    set("x-soracom-timestamp", &timestamp.to_string());
    if let Some(value) = authorization(secret) {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}
