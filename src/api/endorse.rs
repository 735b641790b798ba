//! The verification key of Endorse's tokens, published as a JWKS for backends that verify them
//! offline (the signing key and tokens: `services::endorse_key`, `services::endorse`).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, SharedState};

/// A verifier may cache the set this long; the key does not change while arcd runs on the store.
const CACHE_CONTROL: &str = "public, max-age=300";

pub async fn jwks(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let jwks = state.endorse_keys.jwks().await.map_err(|e| {
        tracing::error!(error = %e, "the Endorse signing key is not available");
        ApiError::internal()
    })?;
    let mut response = (StatusCode::OK, axum::Json(jwks)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    Ok(response)
}
