//! `POST /v1/auth`, the token check every other call passes, and operator auth keys.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Path};
use super::{json, views, ApiError, Operator, SharedState};
use crate::config::MAX_TOKEN_TIMEOUT_SECONDS;
use crate::store::operators::{self, TokenCheck};

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
    operator_id: String,
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
    let issued = state
        .db(move |store| store.write(|tx| operators::issue_token(tx, &key_id, &secret, timeout)))
        .await?
        .ok_or_else(|| ApiError::unauthorized("AUM0002", "invalid authKeyId or authKey"))?;
    tracing::info!(operator = %issued.operator_id, "token issued");
    Ok(json(
        StatusCode::OK,
        &AuthResponse {
            api_key: issued.api_key,
            token: issued.token,
            operator_id: issued.operator_id,
        },
    ))
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
            let cache_state = state.clone();
            state
                .db(move |store| cache_state.tokens.check_in_store(store, &api_key, &token))
                .await?
        }
    };
    let operator = match check {
        TokenCheck::Valid { operator_id } => Operator(operator_id),
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
    let mut response = next.run(request).await;
    response.extensions_mut().insert(operator);
    Ok(response)
}

/// Another operator's id looks exactly like one that does not exist.
fn own_operator(operator: &Operator, path_operator: &str) -> Result<(), ApiError> {
    if operator.0 == path_operator {
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
    Extension(operator): Extension<Operator>,
    Path(operator_id): Path<String>,
) -> Result<Response, ApiError> {
    own_operator(&operator, &operator_id)?;
    let key = state
        .db(move |store| store.write(|tx| operators::create_auth_key(tx, &operator_id)))
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
    Extension(operator): Extension<Operator>,
    Path(operator_id): Path<String>,
) -> Result<Response, ApiError> {
    own_operator(&operator, &operator_id)?;
    let keys = state
        .db(move |store| store.read(|conn| operators::list_auth_keys(conn, &operator_id)))
        .await?;
    let body: Vec<views::AuthKey> = keys.iter().map(views::auth_key).collect();
    Ok(json(StatusCode::OK, &body))
}

pub async fn delete_auth_key(
    State(state): State<SharedState>,
    Extension(operator): Extension<Operator>,
    Path((operator_id, auth_key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    own_operator(&operator, &operator_id)?;
    state
        .db(move |store| {
            store.write(|tx| operators::delete_auth_key(tx, &operator_id, &auth_key_id))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
