//! Unified endpoint (`uni.soracom.io` = 100.127.69.42:80): one POST fanned out to whichever of
//! Harvest Data and Beam the caller's group has on. With one service on, the device gets that
//! service's own answer; with both, the unified format
//! `{"statusCode": 200|207, "body": {"result": "ok"|"ng", "detail": {"beam": {...}, "harvest": {...}}}}`.

use std::net::SocketAddr;

use axum::body::{to_bytes, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

use super::http::{identify, text};
use super::{beam, harvest, SharedContext};

pub const NOTHING_ENABLED: &str = "Neither Harvest Data nor Beam is enabled for this SIM's group.";

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .fallback(any(entry))
        .layer(DefaultBodyLimit::max(harvest::MAX_ENTRY_BYTES))
        .with_state(ctx)
}

async fn entry(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the unified endpoint takes POST",
        );
    }
    let caller = match identify(&ctx, remote, || {
        text(StatusCode::BAD_REQUEST, NOTHING_ENABLED)
    })
    .await
    {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let harvest_on = caller.enabled("SoracomHarvest", "enabled");
    let beam_route = beam::route_for(&caller, uri.path());
    // X-Soracom-Timestamp is honoured only on harvest.soracom.io itself, as on the platform.
    let harvest_answer = async {
        if harvest_on {
            Some(harvest::accept_post(&ctx, &caller, &headers, &body, false).await)
        } else {
            None
        }
    };
    let beam_answer = async {
        match &beam_route {
            Some(route) => Some(
                beam::forward(
                    &ctx,
                    &caller,
                    route,
                    method.clone(),
                    &uri,
                    &headers,
                    body.clone(),
                )
                .await,
            ),
            None => None,
        }
    };
    match tokio::join!(harvest_answer, beam_answer) {
        (None, None) => text(StatusCode::BAD_REQUEST, NOTHING_ENABLED),
        (Some(only), None) | (None, Some(only)) => only,
        (Some(harvest), Some(beam)) => {
            let mut detail = serde_json::Map::new();
            let mut all_ok = true;
            for (name, answer) in [("beam", beam), ("harvest", harvest)] {
                all_ok &= answer.status().is_success();
                detail.insert(name.to_string(), summarise(answer).await);
            }
            let status = if all_ok {
                StatusCode::OK
            } else {
                StatusCode::MULTI_STATUS
            };
            let body = json!({
                "statusCode": status.as_u16(),
                "body": { "result": if all_ok { "ok" } else { "ng" }, "detail": detail },
            });
            (status, axum::Json(body)).into_response()
        }
    }
}

/// `{statusCode, body}` of one service's answer; a JSON body stays JSON, anything else is text.
async fn summarise(answer: Response) -> Value {
    let status = answer.status().as_u16();
    let bytes = to_bytes(answer.into_body(), beam::MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    json!({ "statusCode": status, "body": body })
}
