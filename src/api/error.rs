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
                };
                ApiError::new(StatusCode::BAD_REQUEST, code, rule.to_string())
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
