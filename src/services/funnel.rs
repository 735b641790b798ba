//! Funnel (`funnel.soracom.io` = 100.127.65.43, HTTP 80 and TCP/UDP 23080): wraps a device's
//! message with who sent it and when, and hands it to the group's destination (group namespace
//! `SoracomFunnel`, see `destination.rs`) through the asynchronous delivery queue
//! (`funnel_delivery.rs`). The device is answered as soon as the message is queued: 204 over
//! HTTP, `200` over TCP/UDP, `400 Invalid JSON is send to funnel.` when the group requires JSON
//! (`contentType: "json"`) and the message is not.
//!
//! The envelope is Funnel's: `{"operatorId", "timestamp" (UNIX ms), "destination",
//! "credentialsId", "payloads", "sourceProtocol" ("http"|"tcp"|"udp"), "imsi" (the primary IMSI),
//! "simId"}`; `payloads` is the message itself when it is JSON, else the text as a string, else
//! `{"payload": base64}`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

use super::destination::{self, Route, Secret, FUNNEL};
use super::http::{identify, text};
use super::raw::{self, MAX_MESSAGE_BYTES};
use super::{Caller, SharedContext};
use crate::store::db::Backend;
use crate::store::{now_ms, Rule, StoreError};

pub const INVALID_JSON: &str = "Invalid JSON is send to funnel.";
pub const DISABLED: &str = "Funnel is not enabled for this SIM's group.";
pub const BUSY: &str = "Funnel's delivery queue is full; try again later.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Queued,
    InvalidJson,
    Disabled,
    /// Switched on, but the destination cannot be used (e.g. its credentials were changed).
    Unusable(String),
    Busy,
    Internal,
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Queued => StatusCode::NO_CONTENT,
            Outcome::InvalidJson | Outcome::Disabled => StatusCode::BAD_REQUEST,
            Outcome::Unusable(_) => StatusCode::BAD_GATEWAY,
            Outcome::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Outcome::Queued => String::new(),
            Outcome::InvalidJson => INVALID_JSON.into(),
            Outcome::Disabled => DISABLED.into(),
            Outcome::Unusable(reason) => format!("Funnel's destination is not usable: {reason}"),
            Outcome::Busy => BUSY.into(),
            Outcome::Internal => "internal error; see the arcd log".into(),
        }
    }

    pub fn http(&self) -> Response {
        match self {
            Outcome::Queued => {
                let mut response = Response::default();
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            other => text(other.status(), other.message()),
        }
    }

    /// The TCP/UDP reply: `200`, or the status and the message.
    pub fn raw(&self) -> Vec<u8> {
        match self {
            Outcome::Queued => b"200\n".to_vec(),
            other => format!("{} {}\n", other.status().as_u16(), other.message()).into_bytes(),
        }
    }
}

/// `payloads` of the envelope.
pub fn payloads_of(message: &[u8]) -> Value {
    if let Ok(document) = serde_json::from_slice::<Value>(message) {
        return document;
    }
    match std::str::from_utf8(message) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "payload": base64::engine::general_purpose::STANDARD.encode(message) }),
    }
}

pub fn envelope(
    caller: &Caller,
    route: &Route,
    message: &[u8],
    protocol: Protocol,
    timestamp: i64,
) -> Value {
    json!({
        "operatorId": caller.sim.operator_id.as_str(),
        "timestamp": timestamp,
        "destination": route.destination,
        "credentialsId": route.credentials_id,
        "payloads": payloads_of(message),
        "sourceProtocol": protocol.name(),
        "imsi": caller.primary_imsi.as_str(),
        "simId": caller.sim.sim_id.as_str(),
    })
}

/// The route and secret of the caller's group; the store is read only when credentials are
/// named (the group itself came with the caller).
async fn resolve(
    ctx: &SharedContext,
    caller: &Caller,
) -> Result<Option<(Route, Option<Secret>)>, StoreError> {
    let route = destination::route(&caller.configuration, FUNNEL)
        .map_err(|reason| StoreError::Rule(Rule::InvalidServiceConfiguration(reason)))?;
    match route {
        None => Ok(None),
        Some(route) if route.credentials_id.is_none() => Ok(Some((route, None))),
        Some(_) => {
            let (ctx, caller) = (ctx.clone(), caller.clone());
            tokio::task::spawn_blocking(move || {
                ctx.store.read_db(|db| {
                    destination::resolve(db, &caller.sim.operator_id, &caller.configuration, FUNNEL)
                })
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("credentials lookup stopped: {e}")))?
        }
    }
}

/// Wraps and queues one message of `caller` (also used by the unified endpoint).
pub async fn accept(
    ctx: &SharedContext,
    caller: &Caller,
    message: &[u8],
    protocol: Protocol,
) -> Outcome {
    let (route, secret) = match resolve(ctx, caller).await {
        Ok(Some(resolved)) => resolved,
        Ok(None) => return Outcome::Disabled,
        Err(StoreError::Rule(Rule::InvalidServiceConfiguration(reason))) => {
            ctx.funnel.stats.count("failed");
            tracing::warn!(service = "funnel", sim_id = %caller.sim.sim_id, %reason, "Funnel destination unusable");
            return Outcome::Unusable(reason);
        }
        Err(e) => {
            tracing::error!(service = "funnel", error = %e, "store failure while reading Funnel's destination");
            return Outcome::Internal;
        }
    };
    if route.require_json && serde_json::from_slice::<Value>(message).is_err() {
        return Outcome::InvalidJson;
    }
    let envelope = envelope(caller, &route, message, protocol, now_ms()).to_string();
    match ctx
        .funnel
        .submit(&route.target, secret, envelope.into_bytes())
    {
        Ok(()) => Outcome::Queued,
        Err(_) => Outcome::Busy,
    }
}

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .fallback(any(post_message))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(ctx)
}

async fn post_message(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Funnel takes POST");
    }
    let caller = match identify(&ctx, remote, || text(StatusCode::BAD_REQUEST, DISABLED)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    accept(&ctx, &caller, &body, Protocol::Http).await.http()
}

/// The raw entry point's handler for `protocol`.
pub fn raw_handler(ctx: SharedContext, protocol: Protocol) -> raw::Handler {
    std::sync::Arc::new(move |remote: SocketAddr, message: Vec<u8>| {
        let ctx = ctx.clone();
        Box::pin(async move {
            let outcome = match identify(&ctx, remote, || text(StatusCode::BAD_REQUEST, DISABLED))
                .await
            {
                Ok(caller) => accept(&ctx, &caller, &message, protocol).await,
                Err(response) if response.status() == StatusCode::BAD_REQUEST => Outcome::Disabled,
                Err(_) => Outcome::Internal,
            };
            tracing::info!(service = "funnel", caller = %remote.ip(), protocol = protocol.name(), bytes = message.len(), status = outcome.status().as_u16(), "raw message");
            outcome.raw()
        })
    })
}
