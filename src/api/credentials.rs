//! SORACOM's credentials API (`/v1/credentials`): secrets for the destinations Funnel and Funk
//! deliver to, named by a credentials id the group configuration refers to (`credentialsId`).
//! An answer never carries the secret fields, as on the platform: once stored they are only
//! ever sent to the destination.
//!
//! Types arcd can use: `username-password-credentials` (`username`, `password`: MQTT login, or
//! HTTP Basic for a webhook or function URL) and `api-token-credentials` (`token`: sent as
//! `Authorization: Bearer <token>` to a webhook or function URL).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::extract::{JsonBody, Path};
use super::{json, ApiError, Operator, SharedState};
use crate::store::credentials::{self, CredentialsRecord, NewCredentials};
use crate::store::db::Backend;

/// Credentials types arcd uses, each with its required secret fields.
pub const TYPES: &[(&str, &[&str])] = &[
    ("username-password-credentials", &["username", "password"]),
    ("api-token-credentials", &["token"]),
];

const LONGEST_ID: usize = 100;
const LONGEST_FIELD: usize = 4096;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    credentials: Map<String, Value>,
}

const SHAPE: &str = r#"{"type":"username-password-credentials","description":"...","credentials":{"username":"...","password":"..."}}"#;

/// The credentials as the API shows them: everything but the secret.
fn view(record: &CredentialsRecord) -> Value {
    json!({
        "credentialsId": record.credentials_id,
        "type": record.kind,
        "description": record.description,
        "createDateTime": record.created_at / 1000,
        "updateDateTime": record.updated_at / 1000,
    })
}

fn check_id(credentials_id: &str) -> Result<(), ApiError> {
    let valid = !credentials_id.is_empty()
        && credentials_id.len() <= LONGEST_ID
        && credentials_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "credentials_id must be 1 to {LONGEST_ID} characters of A-Z, a-z, 0-9, '-', '_', '.'"
        )))
    }
}

/// The request's type must be one arcd uses and its secret exactly that type's fields, each a
/// non-empty string: a typo fails here, not at the first delivery.
fn check_request(request: &CredentialsRequest) -> Result<(), ApiError> {
    let Some((_, fields)) = TYPES.iter().find(|(kind, _)| *kind == request.kind) else {
        let known: Vec<&str> = TYPES.iter().map(|(kind, _)| *kind).collect();
        return Err(ApiError::bad_request(format!(
            "unsupported credentials type `{}`; arcd supports {}",
            request.kind,
            known.join(", ")
        )));
    };
    for field in *fields {
        match request.credentials.get(*field).and_then(Value::as_str) {
            Some(value) if !value.is_empty() && value.len() <= LONGEST_FIELD => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "credentials.{field} must be a non-empty string for type {}",
                    request.kind
                )))
            }
        }
    }
    if let Some(extra) = request
        .credentials
        .keys()
        .find(|key| !fields.contains(&key.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "credentials.{extra} is not a field of type {}; it takes {}",
            request.kind,
            fields.join(", ")
        )));
    }
    if request.description.len() > LONGEST_FIELD {
        return Err(ApiError::bad_request("description is too long"));
    }
    Ok(())
}

pub async fn list(
    State(state): State<SharedState>,
    Operator(operator): Operator,
) -> Result<Response, ApiError> {
    let records = state
        .db(move |store| store.read_db(|db| credentials::list(db, &operator)))
        .await?;
    let views: Vec<Value> = records.iter().map(view).collect();
    Ok(json(StatusCode::OK, &views))
}

pub async fn create(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(credentials_id): Path<String>,
    body: JsonBody<CredentialsRequest>,
) -> Result<Response, ApiError> {
    check_id(&credentials_id)?;
    let request = body.required(SHAPE)?;
    check_request(&request)?;
    let record = state
        .db(move |store| {
            store.write_db(|db| {
                credentials::create(db, &operator, &credentials_id, &new_of(&request))
            })
        })
        .await?;
    tracing::info!(credentials_id = %record.credentials_id, kind = %record.kind, "credentials created");
    Ok(json(StatusCode::CREATED, &view(&record)))
}

pub async fn update(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(credentials_id): Path<String>,
    body: JsonBody<CredentialsRequest>,
) -> Result<Response, ApiError> {
    check_id(&credentials_id)?;
    let request = body.required(SHAPE)?;
    check_request(&request)?;
    let record = state
        .db(move |store| {
            store.write_db(|db| {
                // Groups that use these credentials must still find a usable type.
                let record =
                    credentials::update(db, &operator, &credentials_id, &new_of(&request))?;
                crate::services::destination::check_groups_using(db, &operator, &credentials_id)?;
                Ok(record)
            })
        })
        .await?;
    tracing::info!(credentials_id = %record.credentials_id, kind = %record.kind, "credentials updated");
    Ok(json(StatusCode::OK, &view(&record)))
}

pub async fn delete(
    State(state): State<SharedState>,
    Operator(operator): Operator,
    Path(credentials_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .db(move |store| {
            store.write_db(|db| {
                credentials::delete(db, &operator, &credentials_id)?;
                crate::services::destination::check_groups_using(db, &operator, &credentials_id)
            })
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn new_of(request: &CredentialsRequest) -> NewCredentials<'_> {
    NewCredentials {
        kind: &request.kind,
        description: &request.description,
        secret: &request.credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, credentials: Value) -> CredentialsRequest {
        CredentialsRequest {
            kind: kind.into(),
            description: String::new(),
            credentials: credentials.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn requests_need_a_known_type_and_exactly_its_fields() {
        let ok = request(
            "username-password-credentials",
            json!({"username": "u", "password": "p"}),
        );
        assert!(check_request(&ok).is_ok());
        assert!(check_request(&request("api-token-credentials", json!({"token": "t"}))).is_ok());
        for bad in [
            request("aws-credentials", json!({"accessKeyId": "a"})),
            request("username-password-credentials", json!({"username": "u"})),
            request(
                "username-password-credentials",
                json!({"username": "u", "password": ""}),
            ),
            request("api-token-credentials", json!({"token": 5})),
            request("api-token-credentials", json!({"token": "t", "extra": "x"})),
        ] {
            assert!(check_request(&bad).is_err(), "accepted {}", bad.kind);
        }
    }

    #[test]
    fn ids_are_plain_names() {
        assert!(check_id("my-broker_1.prod").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(101)] {
            assert!(check_id(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_view_has_no_secret() {
        let mut secret = Map::new();
        secret.insert("password".into(), "hunter2".into());
        let record = CredentialsRecord {
            credentials_id: "broker".into(),
            kind: "username-password-credentials".into(),
            description: "d".into(),
            secret,
            created_at: 1_000,
            updated_at: 2_000,
        };
        let shown = view(&record).to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("password\""),
            "{shown}"
        );
        assert_eq!(view(&record)["createDateTime"], 1);
    }
}
