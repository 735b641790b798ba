//! Unified endpoint (`uni.soracom.io` = 100.127.69.42, HTTP 80 and TCP/UDP 23080): one message
//! fanned out to whichever of Beam, Funnel, Funk and Harvest Data the caller's group has on. With
//! one service on, the device gets that service's own answer; with several, the unified format
//! `{"statusCode": 200|207, "body": {"result": "ok"|"ng", "detail": {"beam": {...}, "funnel":
//! {...}, "funk": {...}, "harvest": {...}}}}`. An HTTP request for the host `funk.*` (arcd's DNS
//! answers `funk.soracom.io` with this address) goes to Funk alone. Over TCP/UDP 23080 the fan-out
//! covers Funnel and Funk (Harvest's raw entry is its own port 8514; Beam's TCP/UDP entry points
//! are not implemented).

use std::net::SocketAddr;

use axum::body::{to_bytes, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

use super::funnel::{self, Protocol};
use super::http::{identify, text};
use super::{beam, destination, funk, harvest, raw, Caller, SharedContext};

pub const NOTHING_ENABLED: &str =
    "None of Harvest Data, Beam, Funnel or Funk is enabled for this SIM's group.";

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .fallback(any(entry))
        .layer(DefaultBodyLimit::max(harvest::MAX_ENTRY_BYTES))
        .with_state(ctx)
}

/// Whether the request names Funk's host (`funk.soracom.io`, `funk.<local domain>`).
fn for_funk(headers: &HeaderMap) -> bool {
    headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(|host| host.to_ascii_lowercase().starts_with("funk."))
}

fn funnel_on(caller: &Caller) -> bool {
    !matches!(
        destination::route(&caller.configuration, destination::FUNNEL),
        Ok(None)
    )
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
    let funk_only = for_funk(&headers);
    let refusal = if funk_only {
        funk::DISABLED
    } else {
        NOTHING_ENABLED
    };
    let caller = match identify(&ctx, remote, || text(StatusCode::BAD_REQUEST, refusal)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let content_type = headers.get(header::CONTENT_TYPE);
    if funk_only {
        return funk::invoke(&ctx, &caller, body, content_type).await;
    }
    let harvest_on = caller.enabled("SoracomHarvest", "enabled");
    let beam_route = beam::route_for(&caller, uri.path());
    // X-Soracom-Timestamp is honoured only on harvest.soracom.io itself, as on the platform.
    let harvest_answer = async {
        match harvest_on {
            true => Some(harvest::accept_post(&ctx, &caller, &headers, &body, false).await),
            false => None,
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
    let funnel_answer = async {
        match funnel_on(&caller) {
            true => Some(
                funnel::accept(&ctx, &caller, &body, Protocol::Http)
                    .await
                    .http(),
            ),
            false => None,
        }
    };
    let funk_answer = async {
        match funk::is_on(&caller) {
            true => Some(funk::invoke(&ctx, &caller, body.clone(), content_type).await),
            false => None,
        }
    };
    let (beam, funnel, funk, harvest) =
        tokio::join!(beam_answer, funnel_answer, funk_answer, harvest_answer);
    let answers: Vec<(&str, Response)> = [
        ("beam", beam),
        ("funnel", funnel),
        ("funk", funk),
        ("harvest", harvest),
    ]
    .into_iter()
    .filter_map(|(name, answer)| answer.map(|answer| (name, answer)))
    .collect();
    combine(answers).await
}

/// The device's answer: none on → refusal, one → its own answer, several → the unified format.
async fn combine(mut answers: Vec<(&str, Response)>) -> Response {
    if answers.len() <= 1 {
        return match answers.pop() {
            Some((_, only)) => only,
            None => text(StatusCode::BAD_REQUEST, NOTHING_ENABLED),
        };
    }
    let mut detail = serde_json::Map::new();
    let mut all_ok = true;
    for (name, answer) in answers {
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

/// TCP/UDP 23080: Funnel and Funk. Funnel alone replies `200` (or its error), Funk alone the
/// function's body, both the unified JSON.
pub fn raw_handler(ctx: SharedContext, protocol: Protocol) -> raw::Handler {
    std::sync::Arc::new(move |remote: SocketAddr, message: Vec<u8>| {
        let ctx = ctx.clone();
        Box::pin(async move {
            let reply = raw_reply(&ctx, remote, message, protocol).await;
            tracing::info!(service = "unified", caller = %remote.ip(), protocol = protocol.name(), reply_bytes = reply.len(), "raw message");
            reply
        })
    })
}

async fn raw_reply(
    ctx: &SharedContext,
    remote: SocketAddr,
    message: Vec<u8>,
    protocol: Protocol,
) -> Vec<u8> {
    let refusal = || format!("400 {NOTHING_ENABLED}\n").into_bytes();
    let Ok(caller) = identify(ctx, remote, || text(StatusCode::BAD_REQUEST, "")).await else {
        return refusal();
    };
    let funnel_answer = async {
        match funnel_on(&caller) {
            true => Some(funnel::accept(ctx, &caller, &message, protocol).await),
            false => None,
        }
    };
    let funk_answer = async {
        match funk::is_on(&caller) {
            true => Some(funk::invoke(ctx, &caller, Bytes::from(message.clone()), None).await),
            false => None,
        }
    };
    match tokio::join!(funnel_answer, funk_answer) {
        (None, None) => refusal(),
        (Some(funnel), None) => funnel.raw(),
        (None, Some(funk)) => {
            let status = funk.status();
            let body = to_bytes(funk.into_body(), beam::MAX_BODY_BYTES)
                .await
                .map(|body| body.to_vec())
                .unwrap_or_default();
            if status.is_success() {
                body
            } else {
                // An error of arcd's or of the function: its status first, as Funnel's are.
                let mut reply = format!("{} ", status.as_u16()).into_bytes();
                reply.extend_from_slice(&body);
                reply.push(b'\n');
                reply
            }
        }
        (Some(funnel), Some(funk)) => {
            let answers = vec![("funnel", funnel.http()), ("funk", funk)];
            let combined = combine(answers).await;
            to_bytes(combined.into_body(), beam::MAX_BODY_BYTES)
                .await
                .map(|body| body.to_vec())
                .unwrap_or_default()
        }
    }
}
