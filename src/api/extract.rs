//! Request parsing that answers bad input in the API's error shape: JSON bodies (content type,
//! size limit, types) and query strings.

use std::num::IntErrorKind;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body of an ordinary request.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads the body (at most `LIMIT` bytes, else 413; 408 too slow, 400 malformed) as JSON. An empty body is `None` (for
/// operations whose body is optional).
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY_BYTES>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|e| super::request_body::read_error(e, LIMIT))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        match content_type.as_deref() {
            Some("application/json") => {}
            Some(other) if other.ends_with("+json") => {}
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "COM0015",
                    "request body must be JSON with Content-Type: application/json",
                ))
            }
        }
        parse_json(&bytes).map(|value| JsonBody(Some(value)))
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    super::strict_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

impl<T, const LIMIT: usize> JsonBody<T, LIMIT> {
    /// The body, or a 400 naming what was expected when there was none.
    pub fn required(self, what: &str) -> Result<T, ApiError> {
        self.0
            .ok_or_else(|| ApiError::bad_request(format!("request body is required: {what}")))
    }
}

/// `axum::extract::Path` whose rejections (e.g. a segment that is not UTF-8 once decoded) are
/// answered in the API's error shape instead of axum's plain text.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) if rejection.status().is_client_error() => {
                Err(ApiError::bad_request(rejection.body_text()))
            }
            Err(rejection) => {
                tracing::error!(error = %rejection.body_text(), "path extraction failed");
                Err(ApiError::internal())
            }
        }
    }
}

/// The query string as repeated `name=value` pairs, kept in order.
pub struct QueryParams(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        Ok(QueryParams(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

impl QueryParams {
    /// The first value of `name`; an empty value counts as absent (for free-text parameters).
    pub fn first(&self, name: &str) -> Option<&str> {
        self.raw(name).filter(|v| !v.is_empty())
    }

    /// The first value of `name` as sent, empty or not.
    fn raw(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, repeated keys and comma-separated lists alike.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// An integer parameter; a value that is present but not an integer (empty included) is a
    /// 400, as the official schemas type these parameters `integer`.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.raw(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("query parameter `{name}` must be an integer"))
                })
            })
            .transpose()
    }

    /// An enumerated parameter: absent, or one of `allowed` (an empty value is not one).
    pub fn choice(&self, name: &str, allowed: &[&str]) -> Result<Option<&str>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v)),
            Some(v) => Err(ApiError::bad_request(format!(
                "query parameter `{name}` is `{v}`; use one of {}",
                allowed.join(", ")
            ))),
        }
    }

    /// `limit` where the official schema bounds it to `1..=max`: 400 outside, `default` when
    /// absent.
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.limit_value()? {
            None => Ok(default),
            Some(n) if n >= 1 && n <= i64::from(max) => Ok(n as u32),
            Some(_) => Err(ApiError::bad_request(format!(
                "`limit` must be between 1 and {max}"
            ))),
        }
    }

    /// `limit` where the official schema allows any integer: values below 1 read as 1 and
    /// values above `max` as `max` (the page is smaller than asked and `x-soracom-next-key`
    /// leads on); `default` when absent.
    pub fn limit_clamped(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        Ok(self
            .limit_value()?
            .map_or(default, |n| n.clamp(1, i64::from(max)) as u32))
    }

    /// `limit` where the official schema sets only a maximum and `format: int32`: 400 above
    /// `max` or below the int32 range, values below 1 read as 1.
    pub fn limit_at_most(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.limit_value()? {
            None => Ok(default),
            Some(n) if n > i64::from(max) || n < i64::from(i32::MIN) => Err(ApiError::bad_request(
                format!("`limit` must be an int32 of at most {max}"),
            )),
            Some(n) => Ok(n.max(1) as u32),
        }
    }

    /// The integer `limit`, saturated at the ends of `i64` (a JSON-schema integer has no size
    /// limit, so 99999999999999999999 is a valid, very large limit).
    fn limit_value(&self) -> Result<Option<i64>, ApiError> {
        self.raw("limit")
            .map(|v| {
                v.parse::<i64>().or_else(|e| match e.kind() {
                    IntErrorKind::PosOverflow => Ok(i64::MAX),
                    IntErrorKind::NegOverflow => Ok(i64::MIN),
                    _ => Err(ApiError::bad_request(
                        "query parameter `limit` must be an integer",
                    )),
                })
            })
            .transpose()
    }
}

/// `#[serde(default, deserialize_with = "non_null")]` on an `Option` field: the field may be
/// left out, but an explicit `null` is refused like any other wrong type (the official schemas
/// mark no request field `nullable`).
pub fn non_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
