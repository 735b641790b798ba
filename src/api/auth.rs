//! `POST /v1/auth`, `POST /v1/auth/logout`, the token check every other call passes, and
//! operator auth keys (see `tokens` for what a token is).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Path};
use super::{json, views, ApiError, Operator, SharedState};
use std::time::Duration;

use super::tokens::TokenCheck;
use crate::config::MAX_TOKEN_TIMEOUT_SECONDS;
use crate::ids;
use crate::ids::OperatorId;
use crate::store::db::Backend;
use crate::store::now_ms;
use crate::store::operators::{self, VerifiedAuthKey};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthRequest {
    auth_key_id: Option<String>,
    auth_key: Option<String>,
    email: Option<String>,
    user_name: Option<String>,
    token_timeout_seconds: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthResponse {
    api_key: String,
    token: String,
    operator_id: OperatorId,
}

pub async fn auth(
    State(state): State<SharedState>,
    body: JsonBody<AuthRequest>,
) -> Result<Response, ApiError> {
    let request = body.required("authKeyId and authKey")?;
    let timeout = match request.token_timeout_seconds {
        None => state.config.api.token_timeout_seconds,
        Some(t) if (1..=MAX_TOKEN_TIMEOUT_SECONDS as i64).contains(&t) => t as u64,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "tokenTimeoutSeconds must be between 1 and {MAX_TOKEN_TIMEOUT_SECONDS}"
            )))
        }
    };
    let (Some(key_id), Some(secret)) = (request.auth_key_id, request.auth_key) else {
        let message = if request.email.is_some() || request.user_name.is_some() {
            "arcd accepts only auth keys: send authKeyId and authKey"
        } else {
            "authKeyId and authKey are required"
        };
        return Err(ApiError::unauthorized("AUM0001", message));
    };
    let loading = state.clone();
    let verified = state
        .db(move |store| {
            loading.tokens.load(store)?;
            store.read_db(|db| operators::verify_auth_key(db, &key_id, &secret))
        })
        .await?
        .ok_or_else(|| ApiError::unauthorized("AUM0002", "invalid authKeyId or authKey"))?;
    let api_key = ids::new_api_key();
    let expires_at_ms = now_ms() + (timeout as i64) * 1000;
    let token = state
        .tokens
        .issue(&api_key, &verified, expires_at_ms)
        .ok_or_else(ApiError::internal)?;
    record_sign_in(&state, &verified).await;
    tracing::info!(operator = %verified.operator_id, "token issued");
    Ok(json(
        StatusCode::OK,
        &AuthResponse {
            api_key,
            token,
            operator_id: verified.operator_id,
        },
    ))
}

/// How long a sign-in waits for its `lastUsedDateTime` update before answering anyway.
const SIGN_IN_RECORD_WAIT: Duration = Duration::from_millis(200);

/// Best effort: updates the key's `lastUsedDateTime` (at most once a minute per key). Signing in
/// never depends on it, so a full disk, a read-only database or a busy writer delay the answer
/// by at most `SIGN_IN_RECORD_WAIT` and never fail it.
async fn record_sign_in(state: &SharedState, key: &VerifiedAuthKey) {
    let now = now_ms();
    if !state
        .tokens
        .should_touch(&key.auth_key_id, key.last_used_at_ms, now)
    {
        return;
    }
    let writer = state.clone();
    let auth_key_id = key.auth_key_id.clone();
    let update = tokio::spawn(async move {
        writer
            .db(move |store| store.write_db(|db| operators::touch_auth_key(db, &auth_key_id, now)))
            .await
    });
    match tokio::time::timeout(SIGN_IN_RECORD_WAIT, update).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(
                code = error.code,
                "could not record the sign-in time of an auth key"
            )
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("recording the sign-in time of an auth key is slow; answered without it")
        }
    }
}

/// The API key and expiry of the token a request was authorised with (for logout).
#[derive(Clone, Debug)]
pub struct SignedIn {
    api_key: String,
    expires_at_ms: i64,
}

/// Middleware: `X-Soracom-API-Key` + `X-Soracom-Token` (any case) must name a live token.
pub async fn require_token(
    State(state): State<SharedState>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(api_key), Some(token)) = (header("x-soracom-api-key"), header("x-soracom-token"))
    else {
        return Err(ApiError::unauthorized(
            "AUM0003",
            "X-Soracom-API-Key and X-Soracom-Token headers are required; get them from POST /v1/auth",
        ));
    };
    let check = match state.tokens.check(&api_key, &token) {
        Some(check) => check,
        None => {
            let checking = state.clone();
            state
                .db(move |store| checking.tokens.check_in_store(store, &api_key, &token))
                .await?
        }
    };
    let (operator, signed_in) = match check {
        TokenCheck::Valid(claims) => (
            Operator(claims.operator_id),
            SignedIn {
                api_key: claims.api_key,
                expires_at_ms: claims.expires_at_ms,
            },
        ),
        TokenCheck::Expired => {
            return Err(ApiError::unauthorized(
                "AUM0005",
                "the API token has expired; call POST /v1/auth again",
            ))
        }
        TokenCheck::Invalid => {
            return Err(ApiError::unauthorized(
                "AUM0004",
                "invalid API key or token",
            ))
        }
    };
    request.extensions_mut().insert(operator.clone());
    request.extensions_mut().insert(signed_in);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(operator);
    Ok(response)
}

/// Another operator's id looks exactly like one that does not exist.
fn own_operator(operator: &Operator, path_operator: &OperatorId) -> Result<(), ApiError> {
    if operator.0 == *path_operator {
        Ok(())
    } else {
        Err(ApiError::not_found("operator not found"))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeneratedAuthKey {
    auth_key_id: String,
    auth_key: String,
}

pub async fn generate_auth_key(
    State(state): State<SharedState>,
    operator: Operator,
    Path(operator_id): Path<OperatorId>,
) -> Result<Response, ApiError> {
    own_operator(&operator, &operator_id)?;
    let key = state
        .db(move |store| store.write_db(|db| operators::create_auth_key(db, &operator_id)))
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &GeneratedAuthKey {
            auth_key_id: key.auth_key_id.clone(),
            auth_key: key.secret.clone(),
        },
    ))
}

pub async fn list_auth_keys(
    State(state): State<SharedState>,
    operator: Operator,
    Path(operator_id): Path<OperatorId>,
) -> Result<Response, ApiError> {
    own_operator(&operator, &operator_id)?;
    let keys = state
        .db(move |store| store.read_db(|db| operators::list_auth_keys(db, &operator_id)))
        .await?;
    let body: Vec<views::AuthKey> = keys.iter().map(views::auth_key).collect();
    Ok(json(StatusCode::OK, &body))
}

pub async fn delete_auth_key(
    State(state): State<SharedState>,
    operator: Operator,
    Path((operator_id, auth_key_id)): Path<(OperatorId, String)>,
) -> Result<StatusCode, ApiError> {
    own_operator(&operator, &operator_id)?;
    let deleted = auth_key_id.clone();
    state
        .db(move |store| {
            store.write_db(|db| operators::delete_auth_key(db, &operator_id, &auth_key_id))
        })
        .await?;
    state.tokens.auth_key_deleted(&deleted);
    tracing::info!(operator = %operator.0, "auth key deleted; its tokens are revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/logout`: revokes the API key and token the request was made with; the
/// operator's other tokens keep working.
pub async fn logout(
    State(state): State<SharedState>,
    operator: Operator,
    Extension(signed_in): Extension<SignedIn>,
) -> Result<StatusCode, ApiError> {
    let revoked = signed_in.clone();
    state
        .db(move |store| {
            store.write_db(|db| {
                operators::revoke_api_key(db, &revoked.api_key, revoked.expires_at_ms, now_ms())
            })
        })
        .await?;
    state
        .tokens
        .api_key_revoked(&signed_in.api_key, signed_in.expires_at_ms);
    tracing::info!(operator = %operator.0, "signed out");
    Ok(StatusCode::NO_CONTENT)
}
