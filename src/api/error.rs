//! The one mapping from errors to `{"code","message"}` and an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::store::{Rule, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "COM0001", message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "COM0004", message)
    }

    /// 507: the data directory's file system (or the database's size limit) is full; nothing of
    /// the request was written, and the same request can succeed once space is freed.
    pub fn disk_full() -> ApiError {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "COM0507",
            crate::store::DISK_FULL_MESSAGE,
        )
    }

    /// 503: the store's database (PostgreSQL) cannot be reached; arcd reconnects by itself.
    pub fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "COM0503",
            "the database is unavailable: arcd reconnects by itself, retry shortly (a write cut \
             off while it committed may or may not have been applied)",
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "COM0500",
            "internal error; see the arcd log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::store::sims::SimQuotaExceeded> for ApiError {
    fn from(error: crate::store::sims::SimQuotaExceeded) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "SEM0070", error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound(entity) => {
                ApiError::not_found(format!("{} not found", entity.name()))
            }
            StoreError::Rule(rule) => {
                let code = match &rule {
                    Rule::TerminationProtected => "SEM0030",
                    Rule::SimTerminated => "SEM0031",
                    Rule::VirtualStatusChange(_) => "SEM0032",
                    Rule::NoSession => "SEM0016",
                    Rule::NoArcCredentials => "SEM0040",
                    Rule::UnsupportedPrimarySubscription(_) => "SEM0041",
                    Rule::UnsupportedSubscription => "SEM0042",
                    Rule::AlreadyHasVirtualSubscriber(_) => "SEM0043",
                    Rule::NotAnIotSim => "SEM0044",
                    Rule::NotSecondaryVirtual => "SEM0045",
                    Rule::GroupInUse(_) => "GRM0010",
                    Rule::PoolExhausted(..) => "RPM0001",
                    Rule::IdentifiersExhausted(_) => "SEM0050",
                    Rule::UnknownRendezvousPoint(_) => "RPM0002",
                    Rule::ImportItem { .. } => "SEM0060",
                    Rule::InvalidVpg(_) => "COM0001",
                    Rule::VpgInUse { .. } => "VPG0001",
                    Rule::GroupVpgUnusable { .. } => "VPG0002",
                    Rule::VpgSubnetExhausted(..) => "VPG0003",
                    Rule::CredentialsExist(_) => "CRD0001",
                    Rule::InvalidServiceConfiguration(_) => "GRM0020",
                };
                ApiError::new(StatusCode::BAD_REQUEST, code, rule.to_string())
            }
            down if down.is_unavailable() => {
                tracing::warn!(error = %down, "store unavailable");
                ApiError::unavailable()
            }
            full if full.is_disk_full() => {
                tracing::error!(error = %full, "store failure: the disk is full");
                ApiError::disk_full()
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::testing::temp_pg_store;
    use crate::store::db::{Backend, PgStore};

    /// PostgreSQL raising `errcode` (a condition name) in a write, as arcd's API answers it.
    fn answer_to_postgres_error(store: &PgStore, errcode: &str) -> ApiError {
        let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{errcode}'; END $$");
        let error = store
            .write_db(|db| db.execute(&sql, &[]))
            .expect_err("raised");
        ApiError::from(error)
    }

    #[test]
    fn an_unreachable_database_is_503() {
        // Port 1 on loopback: nothing listens there.
        let Err(error) = PgStore::connect("postgres://arcd@127.0.0.1:1/arcd?connect_timeout=2")
        else {
            panic!("connected to port 1");
        };
        let answer = ApiError::from(error);
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.code, "COM0503");
        assert!(
            answer.message.contains("database is unavailable"),
            "{}",
            answer.message
        );
    }

    #[test]
    fn a_server_shutting_down_is_503() {
        let Some(store) = temp_pg_store() else {
            return;
        };
        for errcode in [
            "admin_shutdown",
            "cannot_connect_now",
            "too_many_connections",
        ] {
            let answer = answer_to_postgres_error(&store, errcode);
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{errcode}");
            assert_eq!(answer.code, "COM0503", "{errcode}");
        }
    }

    #[test]
    fn a_full_postgres_disk_is_507_like_sqlite() {
        let Some(store) = temp_pg_store() else {
            return;
        };
        for errcode in ["disk_full", "out_of_memory"] {
            let answer = answer_to_postgres_error(&store, errcode);
            assert_eq!(answer.status, StatusCode::INSUFFICIENT_STORAGE, "{errcode}");
            assert_eq!(answer.code, "COM0507", "{errcode}");
            assert_eq!(answer.message, crate::store::DISK_FULL_MESSAGE);
        }
    }

    #[test]
    fn other_postgres_errors_stay_500() {
        let Some(store) = temp_pg_store() else {
            return;
        };
        let answer = answer_to_postgres_error(&store, "division_by_zero");
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
