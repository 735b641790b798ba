//! Metadata service (`http://metadata.soracom.io` = 100.127.100.127:80): a device reads its own
//! subscriber record, single values by dotted path, its group's user data, and may write its tags
//! when the group allows it. Switched on per group by `SoracomAir.metadata.enabled`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use serde_json::Value;

use super::http::{identify, internal_error, text};
use super::{Caller, SharedContext};
use crate::api::views;
use crate::store::db::Backend;
use crate::store::sims;

pub const FORBIDDEN: &str = "You are not allowed to access Metadata Server.";
pub const NO_SUCH_KEY: &str = "Specified key does not exist.";
const READ_ONLY: &str = "Metadata Server is read-only for this SIM's group.";

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .route("/v1/subscriber", get(subscriber))
        .route("/v1/{dotted}", get(subscriber_value))
        .route("/v1/subscriber/tags", put(put_tags))
        .route("/v1/userdata", get(userdata))
        .fallback(|| async { text(StatusCode::NOT_FOUND, NO_SUCH_KEY) })
        .layer(axum::middleware::map_response(|response: Response| async {
            crate::metrics::metadata_request(response.status().as_u16());
            response
        }))
        .with_state(ctx)
}

/// The metadata settings of the caller's group (`SoracomAir.metadata`).
struct Settings {
    enabled: bool,
    /// Writes need `readonly: false`; like the platform, read-only is the default.
    readonly: bool,
    allow_origin: Option<String>,
}

fn settings(caller: &Caller) -> Settings {
    let metadata = caller.setting("SoracomAir", "metadata");
    let field = |name: &str| metadata.and_then(|m| m.get(name));
    Settings {
        enabled: field("enabled").and_then(Value::as_bool) == Some(true),
        readonly: field("readonly").and_then(Value::as_bool) != Some(false),
        allow_origin: field("allowOrigin")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// The caller, when metadata is on for its group; else the documented 403.
async fn allowed_caller(
    ctx: &SharedContext,
    remote: SocketAddr,
) -> Result<(Caller, Settings), Response> {
    let caller = identify(ctx, remote, forbidden).await?;
    let settings = settings(&caller);
    if !settings.enabled {
        return Err(forbidden());
    }
    Ok((caller, settings))
}

fn forbidden() -> Response {
    text(StatusCode::FORBIDDEN, FORBIDDEN)
}

fn with_cors(mut response: Response, settings: &Settings) -> Response {
    if let Some(origin) = settings
        .allow_origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

fn record_of(caller: &Caller) -> Value {
    serde_json::to_value(views::subscriber(&caller.sim)).unwrap_or(Value::Null)
}

async fn subscriber(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    match allowed_caller(&ctx, remote).await {
        Ok((caller, settings)) => {
            with_cors(axum::Json(record_of(&caller)).into_response(), &settings)
        }
        Err(response) => response,
    }
}

/// `/v1/subscriber.imsi`, `/v1/subscriber.tags.location`, ...: one value as text. Strings come
/// bare, other JSON values as JSON text.
async fn subscriber_value(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(dotted): Path<String>,
) -> Response {
    let Some(path) = dotted.strip_prefix("subscriber.") else {
        return text(StatusCode::NOT_FOUND, NO_SUCH_KEY);
    };
    let (caller, settings) = match allowed_caller(&ctx, remote).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let record = record_of(&caller);
    let response = match lookup(&record, path) {
        Some(Value::String(s)) => text(StatusCode::OK, s.clone()),
        Some(value) => text(StatusCode::OK, value.to_string()),
        None => text(StatusCode::NOT_FOUND, NO_SUCH_KEY),
    };
    with_cors(response, &settings)
}

/// Follows `a.b.c` through objects; a tag name may itself contain dots, so once inside `tags`
/// the rest of the path is one key.
fn lookup<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(tag) = path.strip_prefix("tags.") {
        return record.get("tags")?.get(tag);
    }
    path.split('.')
        .try_fold(record, |value, key| value.get(key))
        .filter(|v| !v.is_null())
}

async fn userdata(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    let (caller, settings) = match allowed_caller(&ctx, remote).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let response = match caller.setting("SoracomAir", "userdata") {
        Some(Value::String(s)) => text(StatusCode::OK, s.clone()),
        Some(Value::Null) | None => text(StatusCode::NOT_FOUND, NO_SUCH_KEY),
        Some(other) => text(StatusCode::OK, other.to_string()),
    };
    with_cors(response, &settings)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TagUpdate {
    tag_name: String,
    tag_value: String,
}

const MAX_TAGS_BODY: usize = 64 * 1024;

async fn put_tags(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let (caller, settings) = match allowed_caller(&ctx, remote).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if settings.readonly {
        return with_cors(text(StatusCode::FORBIDDEN, READ_ONLY), &settings);
    }
    if body.len() > MAX_TAGS_BODY {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let updates: Vec<TagUpdate> = match serde_json::from_slice(&body) {
        Ok(updates) => updates,
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                r#"body must be [{"tagName":"...","tagValue":"..."}]"#,
            )
        }
    };
    if updates.iter().any(|t| t.tag_name.is_empty()) {
        return text(StatusCode::BAD_REQUEST, "tagName must not be empty");
    }
    let tags: Vec<(String, String)> = updates
        .into_iter()
        .map(|t| (t.tag_name, t.tag_value))
        .collect();
    let store = ctx.store.clone();
    let (operator, sim_id) = (caller.sim.operator_id.clone(), caller.sim.sim_id.clone());
    let written = tokio::task::spawn_blocking(move || {
        store.write_db(|db| sims::put_tags(db, &operator, &sim_id, &tags))
    })
    .await;
    match written {
        Ok(Ok(sim)) => {
            tracing::info!(sim_id = %sim.sim_id, "tags written through the metadata service");
            let record = serde_json::to_value(views::subscriber(&sim)).unwrap_or(Value::Null);
            with_cors(axum::Json(record).into_response(), &settings)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "metadata tag write failed");
            internal_error()
        }
        Err(_) => internal_error(),
    }
}
