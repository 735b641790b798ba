//! The SORACOM-compatible `/v1` API (plus arcd's marked extensions) on axum over hyper 1.

mod auth;
mod auth_limit;
mod credentials;
mod data;
mod endorse;
mod error;
mod extract;
mod groups;
mod host_header;
mod iot_sims;
pub(crate) mod leading_slashes;
mod live;
mod openapi;
mod operator;
mod rendezvous_points;
mod request_body;
mod routes;
mod sim_counts;
mod sims;
mod strict_json;
mod tokens;
pub mod views;
mod vpgs;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use error::ApiError;
pub(crate) use openapi::OPENAPI;
pub use operator::Operator;

use crate::config::{Config, Coverage};
use crate::server::follower::FollowerHandle;
use crate::store::db::{Backend, Db, WriteIsolation};
use crate::store::outbox::{self, OutboxChange, Position};
use crate::store::sessions::SessionPolicy;
use crate::store::{self, PeerChange, Store};

/// How long a write waits for this node's data plane to take its change before answering
/// (`write_notifying`); past it the answer goes anyway and the change still arrives. As long as
/// a write waits for the store's locks: only a write transaction left open on the database (which
/// holds PostgreSQL's outbox watermark back) comes near it.
const OWN_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct AppState {
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub policy: SessionPolicy,
    /// This node's outbox follower, which alone brings committed changes to its data plane
    /// (see `write_notifying`).
    pub follower: FollowerHandle,
    pub tokens: tokens::Tokens,
    /// The data plane's engine, read for live per-session figures (handshakes, endpoints,
    /// bytes); never written from the API.
    pub engine: Arc<crate::dataplane::engine::Engine>,
    /// Endorse's signing key, whose public half `GET /v1/arcd/endorse/jwks` publishes.
    pub endorse_keys: crate::services::endorse_key::EndorseKeys,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Runs blocking store work off the async threads.
    pub async fn db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> store::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "store task failed");
                ApiError::internal()
            })?
            .map_err(ApiError::from)
    }
}

impl AppState {
    /// One write transaction that also records its peer changes (picked out of its result by
    /// `changes_of`) in the outbox, which every node's follower reads (docs/ARCHITECTURE.md,
    /// section 3, step 8); on PostgreSQL a NOTIFY after the commit wakes the other nodes. The
    /// answer waits, at most 5 s, until this node's follower has taken them, so a device can
    /// handshake with this node as soon as its session is acknowledged.
    pub async fn write_notifying<T: Send + 'static>(
        &self,
        work: impl FnMut(&mut dyn Db) -> store::Result<T> + Send + 'static,
        changes_of: impl Fn(&T) -> Vec<PeerChange> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.write_notifying_at(WriteIsolation::Serializable, work, changes_of)
            .await
    }

    /// `write_notifying` at the given isolation: `ReadCommitted` for a hot path whose store
    /// function guards its own reads (see `Backend::write_db_read_committed`).
    pub async fn write_notifying_at<T: Send + 'static>(
        &self,
        isolation: WriteIsolation,
        work: impl FnMut(&mut dyn Db) -> store::Result<T> + Send + 'static,
        changes_of: impl Fn(&T) -> Vec<PeerChange> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.write_recording(isolation, work, move |value| {
            changes_of(value).iter().map(OutboxChange::from).collect()
        })
        .await
    }

    /// A VPG write (made, terminated, switched): recorded in the outbox like `write_notifying`,
    /// so every node's follower rebuilds its VPG rules and routes from the running set.
    pub async fn write_changing_vpgs<T: Send + 'static>(
        &self,
        work: impl FnMut(&mut dyn Db) -> store::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.write_recording(WriteIsolation::Serializable, work, |_| {
            vec![OutboxChange::Vpgs]
        })
        .await
    }

    async fn write_recording<T: Send + 'static>(
        &self,
        isolation: WriteIsolation,
        mut work: impl FnMut(&mut dyn Db) -> store::Result<T> + Send + 'static,
        rows_of: impl Fn(&T) -> Vec<OutboxChange> + Send + 'static,
    ) -> Result<T, ApiError> {
        // The closure may run again (PostgreSQL retries a serialization failure): each run is a
        // fresh transaction, so it records its rows afresh and a failed run's rows are gone.
        let (value, position) = self
            .db(move |store| {
                let run = |db: &mut dyn Db| {
                    let value = work(db)?;
                    let position = outbox::record(db, &rows_of(&value))?;
                    Ok((value, position))
                };
                let (value, position) = match isolation {
                    WriteIsolation::Serializable => store.write_db(run),
                    WriteIsolation::ReadCommitted => store.write_db_read_committed(run),
                }?;
                if position.is_some() {
                    outbox::notify_followers(store);
                }
                Ok((value, position))
            })
            .await?;
        if let Some(position) = position {
            self.wait_applied(position).await;
        }
        Ok(value)
    }

    async fn wait_applied(&self, position: Position) {
        if !self.follower.wait_applied(position, OWN_CHANGE_WAIT).await {
            tracing::warn!(
                wait_ms = OWN_CHANGE_WAIT.as_millis() as u64,
                "this node's data plane has not taken a committed change yet; answering anyway (it follows the outbox)"
            );
        }
    }
}

/// Coverage (`jp` or `g`) of the request, chosen by its Host header.
pub fn request_coverage(config: &Config, headers: &HeaderMap) -> Coverage {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    config.coverage_for_host(host)
}

/// Every `/v1` operation the router serves, as (method in lower case, path under `/v1` as
/// `openapi.yaml` writes it), from the same table `router` is built from.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    let unused_limiter = std::sync::Arc::new(auth_limit::AuthFailureLimiter::new(
        1,
        std::time::Duration::ZERO,
    ));
    routes::sign_in(unused_limiter)
        .into_iter()
        .chain(routes::public())
        .chain(routes::authenticated())
        .map(|r| (r.verb.name(), r.path))
        .collect()
}

/// The whole HTTP surface: the `/v1` operations of `routes.rs` (every `/v1` route belongs in its
/// table, which the route-set test compares with `openapi.yaml`), `/openapi.yaml` and the web
/// page, with the layers every request passes.
pub fn router(state: SharedState) -> Router {
    let authenticated = routes::into_router(routes::authenticated()).route_layer(
        middleware::from_fn_with_state(state.clone(), auth::require_token),
    );
    let limiter = auth_limit::AuthFailureLimiter::from_config(&state.config.api);
    let v1 = routes::into_router(routes::sign_in(limiter))
        .merge(routes::into_router(routes::public()))
        .merge(authenticated)
        .method_not_allowed_fallback(method_not_allowed);

    Router::new()
        .nest("/v1", v1)
        .route("/openapi.yaml", get(openapi::openapi))
        .merge(web::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            std::time::Duration::from_secs(state.config.api.body_timeout_seconds),
            request_body::deadline,
        ))
        .layer(middleware::from_fn(host_header::require_one_host))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "COM0005",
        "method not allowed on this path",
    )
}

/// One log line per request: method, route (never the query, which may hold keys), status, time;
/// and the request's metrics.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let operation = crate::metrics::operation_of(
        method.as_str(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str()),
    );
    let response = next.run(request).await;
    crate::metrics::api_request(&operation, response.status().as_u16(), started.elapsed());
    let operator = response
        .extensions()
        .get::<Operator>()
        .map(|o| o.0.as_str())
        .unwrap_or("-");
    tracing::info!(
        %method,
        route = %route,
        status = response.status().as_u16(),
        operator,
        elapsed_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// `path` with the request's query minus `last_evaluated_key`: the next page's URL keeps the
/// filters and `limit` of the page it follows.
pub fn page_url(path: &str, query: &extract::QueryParams) -> String {
    let rest = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query.0.iter().filter(|(k, _)| k != "last_evaluated_key"))
        .finish();
    if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    }
}

/// Listings fetch `limit + 1` rows: an extra row means another page follows. Trims `page` to
/// `limit` and returns the key of its last row in that case.
/// A listing's answer: the first `limit` rows as JSON (the query fetched one more, to know
/// whether another page follows), with the pagination headers when it does. `url` as in
/// `with_next_key`.
pub fn page_response<T, V: serde::Serialize>(
    mut rows: Vec<T>,
    limit: u32,
    key_of: impl Fn(&T) -> String,
    view: impl Fn(&T) -> V,
    url: &str,
) -> Response {
    let next_key = trim_page(&mut rows, limit, key_of);
    let body: Vec<V> = rows.iter().map(view).collect();
    with_next_key(json(StatusCode::OK, &body), url, next_key)
}

pub(super) fn trim_page<T>(
    page: &mut Vec<T>,
    limit: u32,
    key_of: impl Fn(&T) -> String,
) -> Option<String> {
    if page.len() > limit as usize {
        page.truncate(limit as usize);
        page.last().map(key_of)
    } else {
        None
    }
}

/// Adds the pagination headers of the official API when a page was full. `url` is the listing's
/// path, with its query when it has one (see `page_url`).
pub(super) fn with_next_key(
    mut response: Response,
    url: &str,
    next_key: Option<String>,
) -> Response {
    if let Some(key) = next_key {
        let encoded: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
        if let Ok(value) = HeaderValue::from_str(&key) {
            response.headers_mut().insert("x-soracom-next-key", value);
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        if let Ok(value) = HeaderValue::from_str(&format!(
            "<{url}{separator}last_evaluated_key={encoded}>; rel=next"
        )) {
            response.headers_mut().insert("link", value);
        }
    }
    response
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}
