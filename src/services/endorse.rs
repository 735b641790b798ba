//! Endorse (`endorse.soracom.io`, at arcd's address 100.127.120.120 port 80): a device's GET or
//! POST is answered `{"token": "<JWT>"}`, a token signed RS256 (see `endorse_key`) asserting the
//! caller's identity, always as the primary IMSI. Switched on per group by
//! `SoracomEndorse.enabled`; the other keys SORACOM documents for the namespace:
//! `parametersToEndorse {imsi, simId, msisdn, imei, requestParameters}`, `tokenTimeoutSeconds`,
//! `allowOrigin` (CORS) and `authorizedRedirectUrls` (a GET with `redirect_url` is redirected
//! there with `soracom_endorse_token=<token>` added to its query).
//!
//! The claims are SORACOM's: `iss` `https://soracom.io`, `aud` `soracom-endorse-audience`, `sub`
//! `soracom-endorse`, `iat`, `nbf` (a minute before `iat`, for clock skew), `exp`, `jti`, and
//! `soracom-endorse-claim` with the fields the group enables, so verifiers written for SORACOM's
//! tokens check arcd's unchanged but for the key.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::http::{identify, internal_error, text};
use super::{Caller, SharedContext};

pub const NAMESPACE: &str = "SoracomEndorse";
/// arcd's answer when the caller's group has Endorse off (SORACOM documents none).
pub const DISABLED: &str = "Endorse is not enabled for this SIM's group.";
pub const DEFAULT_TOKEN_TIMEOUT_SECONDS: u64 = 600;
/// A day: a longer-lived identity token is a credential that outlives its reason.
pub const MAX_TOKEN_TIMEOUT_SECONDS: u64 = 86_400;
const MAX_BODY_BYTES: usize = 16 * 1024;
const NOT_BEFORE_SKEW_SECONDS: u64 = 60;
const PARAMETERS: [&str; 5] = ["imsi", "simId", "msisdn", "imei", "requestParameters"];

/// The caller group's `SoracomEndorse` settings, defaults where a key is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    pub imsi: bool,
    pub sim_id: bool,
    pub msisdn: bool,
    pub imei: bool,
    pub request_parameters: bool,
    pub token_timeout_seconds: u64,
    pub allow_origin: Option<String>,
    pub authorized_redirect_urls: Vec<String>,
}

impl Settings {
    /// Reads the namespace; a value of the wrong shape counts as absent (the API refuses those
    /// when they are set, see `check_setting`, so only a hand-edited store has them).
    pub fn of(namespace: Option<&Map<String, Value>>) -> Settings {
        let empty = Map::new();
        let namespace = namespace.unwrap_or(&empty);
        let parameters = namespace.get("parametersToEndorse");
        // SORACOM's console starts with the IMSI ticked: a token that asserts nothing is useless.
        let include = |name: &str, default: bool| {
            parameters
                .and_then(|p| p.get(name))
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        Settings {
            enabled: namespace.get("enabled").and_then(Value::as_bool) == Some(true),
            imsi: include("imsi", true),
            sim_id: include("simId", false),
            msisdn: include("msisdn", false),
            imei: include("imei", false),
            request_parameters: include("requestParameters", false),
            token_timeout_seconds: namespace
                .get("tokenTimeoutSeconds")
                .and_then(Value::as_u64)
                .filter(|s| (1..=MAX_TOKEN_TIMEOUT_SECONDS).contains(s))
                .unwrap_or(DEFAULT_TOKEN_TIMEOUT_SECONDS),
            allow_origin: namespace
                .get("allowOrigin")
                .and_then(Value::as_str)
                .filter(|o| !o.is_empty())
                .map(str::to_string),
            authorized_redirect_urls: namespace
                .get("authorizedRedirectUrls")
                .and_then(Value::as_array)
                .map(|urls| {
                    urls.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Whether `value` is usable for `key` of the namespace: the API refuses it at configuration
/// time otherwise, so a device never meets a silently ignored setting.
pub fn check_setting(key: &str, value: &Value) -> Result<(), String> {
    match key {
        "enabled" => value
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| "must be true or false".to_string()),
        "parametersToEndorse" => {
            let object = value
                .as_object()
                .ok_or_else(|| format!("must be an object with booleans {PARAMETERS:?}"))?;
            for (name, flag) in object {
                if !PARAMETERS.contains(&name.as_str()) {
                    return Err(format!("unknown parameter `{name}`; use {PARAMETERS:?}"));
                }
                if !flag.is_boolean() {
                    return Err(format!("`{name}` must be true or false"));
                }
            }
            Ok(())
        }
        "tokenTimeoutSeconds" => value
            .as_u64()
            .filter(|s| (1..=MAX_TOKEN_TIMEOUT_SECONDS).contains(s))
            .map(|_| ())
            .ok_or_else(|| format!("must be whole seconds, 1 to {MAX_TOKEN_TIMEOUT_SECONDS}")),
        "allowOrigin" => value
            .as_str()
            .filter(|o| HeaderValue::from_str(o).is_ok())
            .map(|_| ())
            .ok_or_else(|| "must be an origin such as https://example.com".to_string()),
        "authorizedRedirectUrls" => {
            let urls = value.as_array().ok_or("must be a list of URLs")?;
            if urls
                .iter()
                .all(|u| u.as_str().is_some_and(|u| absolute_http_url(u).is_some()))
            {
                Ok(())
            } else {
                Err("each must be an absolute http(s) URL".to_string())
            }
        }
        _ => Ok(()),
    }
}

fn absolute_http_url(url: &str) -> Option<Uri> {
    let uri: Uri = url.parse().ok()?;
    matches!(uri.scheme_str(), Some("http" | "https")).then_some(())?;
    uri.host()?;
    Some(uri)
}

/// The token's claims for `caller` at `now` (UNIX seconds).
pub fn claims(
    caller: &Caller,
    settings: &Settings,
    request_parameters: Map<String, Value>,
    now: u64,
) -> Value {
    let mut endorsed = Map::new();
    if settings.imsi {
        endorsed.insert("imsi".into(), json!(caller.primary_imsi.as_str()));
    }
    if settings.sim_id {
        endorsed.insert("simId".into(), json!(caller.sim.sim_id.as_str()));
    }
    if settings.msisdn {
        let msisdn = caller
            .sim
            .subscribers
            .iter()
            .find(|s| s.imsi == caller.primary_imsi)
            .and_then(|s| s.msisdn.clone());
        if let Some(msisdn) = msisdn {
            endorsed.insert("msisdn".into(), json!(msisdn));
        }
    }
    // `imei`: a virtual SIM's device has no module to report one, so arcd never asserts it.
    if settings.request_parameters && !request_parameters.is_empty() {
        endorsed.insert(
            "requestParameters".into(),
            Value::Object(request_parameters),
        );
    }
    json!({
        "iss": "https://soracom.io",
        "aud": "soracom-endorse-audience",
        "sub": "soracom-endorse",
        "iat": now,
        "nbf": now.saturating_sub(NOT_BEFORE_SKEW_SECONDS),
        "exp": now + settings.token_timeout_seconds,
        "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        "soracom-endorse-claim": endorsed,
    })
}

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .fallback(any(issue))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(|response: Response| async {
            crate::metrics::endorse_request(response.status().as_u16());
            response
        }))
        .with_state(ctx)
}

async fn issue(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if ![Method::GET, Method::POST, Method::OPTIONS].contains(&method) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Endorse takes GET or POST");
    }
    let caller = match identify(&ctx, remote, || text(StatusCode::FORBIDDEN, DISABLED)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let settings = Settings::of(caller.configuration.get(NAMESPACE));
    if !settings.enabled {
        return text(StatusCode::FORBIDDEN, DISABLED);
    }
    if method == Method::OPTIONS {
        // A browser's preflight before a cross-origin POST of JSON (`allowOrigin`).
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        return with_allow_origin(response, settings.allow_origin.as_deref());
    }
    let mut parameters = query_parameters(&uri);
    let redirect_url = parameters.remove("redirect_url").and_then(|v| match v {
        Value::String(url) => Some(url),
        _ => None,
    });
    if method == Method::POST && !body.is_empty() {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        match body_parameters(&body, content_type) {
            Some(posted) => parameters.extend(posted),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the body must be a JSON object or form fields",
                )
            }
        }
    }
    if let Some(url) = &redirect_url {
        if !settings.authorized_redirect_urls.contains(url) {
            return text(
                StatusCode::BAD_REQUEST,
                "redirect_url is not in this group's SoracomEndorse.authorizedRedirectUrls",
            );
        }
    }
    let key = match ctx.endorse_keys.current().await {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(error = %e, "no Endorse signing key");
            return internal_error();
        }
    };
    let now = (crate::store::now_ms() / 1000).max(0) as u64;
    let token = match key.sign(&claims(&caller, &settings, parameters, now)) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "Endorse token not signed");
            return internal_error();
        }
    };
    tracing::info!(imsi = %caller.primary_imsi, kid = %key.kid(), "Endorse token issued");
    let response = match redirect_url {
        Some(url) => redirect_with_token(&url, &token),
        None => (StatusCode::OK, axum::Json(json!({ "token": token }))).into_response(),
    };
    with_allow_origin(response, settings.allow_origin.as_deref())
}

fn query_parameters(uri: &Uri) -> Map<String, Value> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// A JSON object as sent (also under curl's default form content type, as SORACOM's example
/// `curl -X POST -d '{"username": "sora"}'` sends it), else form fields (`a=1&b=2`, what an HTML
/// form posts) as strings.
fn body_parameters(body: &[u8], content_type: Option<&str>) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
        return Some(object);
    }
    if content_type.is_some_and(|t| t.starts_with("application/json")) {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let fields: Map<String, Value> = form_urlencoded::parse(text.trim().as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    (!fields.is_empty()).then_some(fields)
}

fn redirect_with_token(url: &str, token: &str) -> Response {
    let separator = if url.contains('?') { '&' } else { '?' };
    let location = format!("{url}{separator}soracom_endorse_token={token}");
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "redirect_url is not a valid URL"),
    }
}

fn with_allow_origin(mut response: Response, origin: Option<&str>) -> Response {
    if let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    response
}

#[cfg(test)]
#[path = "endorse_tests.rs"]
mod tests;
