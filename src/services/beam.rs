//! Beam (`beam.soracom.io:8888` = 100.127.127.100): forwards a device's HTTP request to the
//! destination its group configures, adding who sent it (primary IMSI, SIM ID, time) and, with a
//! pre-shared key, a signature the destination can verify. The device never waits longer than
//! `services.beam_timeout_seconds`: a slow destination is 504, an unreachable one 502.
//!
//! Group configuration, namespace `SoracomBeam` (documented in config/arcd.toml and openapi.yaml):
//! key = entry point URL, e.g. `http://beam.soracom.io:8888/` or `http://beam.soracom.io:8888/in`;
//! value = `{"enabled": true, "destination": "https://...", "psk": "...", "customHeaders": {}}`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::http::{identify, text};
use super::{Caller, SharedContext, BEAM_HTTP_PORT};
use crate::ids::Imsi;
use crate::metrics;
use crate::store::now_ms;

pub const SIGNATURE_VERSION: &str = "20151001";
pub const NOT_CONFIGURED: &str = "Beam is not configured for this path in this SIM's group.";
/// Largest request body a device may send through Beam, and largest answer relayed back.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_ANSWER_BYTES: usize = 10 * 1024 * 1024;

/// One upstream HTTP(S) client shared by all devices (connection reuse, one TLS configuration).
#[derive(Clone)]
pub struct BeamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl BeamClient {
    pub fn new(timeout: Duration) -> BeamClient {
        let tls = tls_client_config();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        BeamClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }
}

/// The TLS client configuration of every upstream arcd's services reach (Beam, Funnel, Funk):
/// the system's root certificates, ring as the provider.
pub fn tls_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "could not read some system root certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates: https:// and mqtts:// destinations will fail"
                );
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
            let tls = match tls {
                Ok(tls) => tls,
                Err(e) => {
                    // Only possible with a provider lacking every default protocol version.
                    tracing::error!(error = %e, "TLS client configuration failed");
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }
            };
            std::sync::Arc::new(tls)
        })
        .clone()
}

/// How an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Failed(String),
    #[error("no answer within the timeout")]
    Timeout,
}

impl BeamClient {
    /// Sends `request` and reads the whole answer (at most `max_answer` bytes), within the
    /// client's timeout; used by Funnel's webhooks and Funk.
    pub async fn exchange(
        &self,
        request: hyper::Request<Full<Bytes>>,
        max_answer: usize,
    ) -> Result<(axum::http::response::Parts, Bytes), ExchangeError> {
        let exchange = async {
            let answer = self
                .client
                .request(request)
                .await
                .map_err(|e| ExchangeError::Failed(e.to_string()))?;
            let (parts, body) = answer.into_parts();
            let body = Limited::new(body, max_answer)
                .collect()
                .await
                .map_err(|e| ExchangeError::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout)?
    }
}

/// Where one entry point sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The entry point's path (`/` when the key has none).
    pub prefix: String,
    pub destination: String,
    pub psk: Option<String>,
    pub custom_headers: Vec<(String, String)>,
}

/// The enabled HTTP entry point whose path is the longest prefix of `path`.
pub fn route_for(caller: &Caller, path: &str) -> Option<Route> {
    let entries = caller.configuration.get("SoracomBeam")?;
    entries
        .iter()
        .filter_map(|(key, value)| route_of(key, value))
        .filter(|route| path_has_prefix(path, &route.prefix))
        .max_by_key(|route| route.prefix.len())
}

fn route_of(key: &str, value: &Value) -> Option<Route> {
    let rest = key.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if !authority.ends_with(&format!(":{BEAM_HTTP_PORT}")) {
        return None;
    }
    if value.get("enabled").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let destination = value.get("destination")?.as_str()?.to_string();
    if !(destination.starts_with("http://") || destination.starts_with("https://")) {
        return None;
    }
    let custom_headers = value
        .get("customHeaders")
        .and_then(Value::as_object)
        .map(|headers| {
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(Route {
        prefix: path.to_string(),
        destination,
        psk: value
            .get("psk")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        custom_headers,
    })
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Destination URL for a request: the destination, then the request path past the entry point's
/// own path, then the request's query.
pub fn target_url(route: &Route, path: &str, query: Option<&str>) -> String {
    let rest = path
        .strip_prefix(route.prefix.trim_end_matches('/'))
        .unwrap_or("")
        .trim_start_matches('/');
    let mut url = if rest.is_empty() {
        route.destination.clone()
    } else {
        format!("{}/{rest}", route.destination.trim_end_matches('/'))
    };
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(query);
    }
    url
}

/// `X-Soracom-Signature`: hex SHA-256 of the pre-shared key followed by the signed headers as
/// `name=value`, lower-case names in alphabetical order (a virtual SIM has no IMEI to sign).
pub fn signature(psk: &str, imsi: &Imsi, timestamp: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(psk.as_bytes());
    hasher.update(format!("x-soracom-imsi={imsi}").as_bytes());
    hasher.update(format!("x-soracom-timestamp={timestamp}").as_bytes());
    hex::encode(hasher.finalize())
}

/// Headers that belong to one connection, not to the request, and never travel on.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The headers sent upstream: the device's own (minus hop-by-hop ones and any `X-Soracom-*` it
/// tried to set itself), the entry point's custom headers, then the platform's.
pub fn upstream_headers(
    device: &HeaderMap,
    route: &Route,
    caller: &Caller,
    timestamp: i64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in device {
        if is_hop_by_hop(name) || name.as_str().starts_with("x-soracom-") {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    for (name, value) in &route.custom_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-soracom-imsi", caller.primary_imsi.as_str());
    set("x-soracom-sim-id", caller.sim.sim_id.as_str());
    set("x-soracom-timestamp", &timestamp.to_string());
    if let Some(psk) = &route.psk {
        set(
            "x-soracom-signature",
            &signature(psk, &caller.primary_imsi, timestamp),
        );
        set("x-soracom-signature-version", SIGNATURE_VERSION);
    }
    headers
}

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .fallback(any(entry))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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
    let caller = match identify(&ctx, remote, || {
        text(StatusCode::BAD_REQUEST, NOT_CONFIGURED)
    })
    .await
    {
        Ok(caller) => caller,
        Err(response) => {
            metrics::beam_forward("not_configured");
            return response;
        }
    };
    let Some(route) = route_for(&caller, uri.path()) else {
        metrics::beam_forward("not_configured");
        return text(StatusCode::BAD_REQUEST, NOT_CONFIGURED);
    };
    forward(&ctx, &caller, &route, method, &uri, &headers, body).await
}

/// Sends the device's request along `route` and relays the answer (also used by the unified
/// endpoint).
pub async fn forward(
    ctx: &SharedContext,
    caller: &Caller,
    route: &Route,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let url = target_url(route, uri.path(), uri.query());
    let Ok(target) = url.parse::<Uri>() else {
        metrics::beam_forward("upstream_error");
        return text(
            StatusCode::BAD_GATEWAY,
            "Beam destination is not a valid URL",
        );
    };
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = target;
    *request.headers_mut() = upstream_headers(headers, route, caller, now_ms());
    let beam = &ctx.beam;
    let exchange = async {
        let answer = beam.client.request(request).await?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Relay::Body(e.to_string()))?
            .to_bytes();
        Ok::<_, Relay>((parts, body))
    };
    match tokio::time::timeout(beam.timeout, exchange).await {
        Ok(Ok((parts, body))) => {
            tracing::debug!(status = parts.status.as_u16(), "Beam destination answered");
            metrics::beam_forward("forwarded");
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if !is_hop_by_hop(name) {
                    response.headers_mut().append(name.clone(), value.clone());
                }
            }
            response
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "Beam destination failed");
            metrics::beam_forward("upstream_error");
            text(
                StatusCode::BAD_GATEWAY,
                format!("Beam destination failed: {e}"),
            )
        }
        Err(_) => {
            metrics::beam_forward("timeout");
            text(
                StatusCode::GATEWAY_TIMEOUT,
                "Beam destination did not answer in time",
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Relay {
    #[error("{0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer: {0}")]
    Body(String),
}
