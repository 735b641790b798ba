//! Plain HTTP for the in-tunnel services: the caller's tunnel address reaches handlers as
//! `ConnectInfo`, and every request gets one log line.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;

use super::{Caller, CallerError, SharedContext};

pub async fn serve(service: &'static str, listener: TcpListener, router: Router) {
    let app = router.layer(middleware::from_fn(move |request: Request, next: Next| {
        log_request(service, request, next)
    }));
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, make).await {
        tracing::error!(service, error = %e, "service stopped");
    }
}

/// One line per request: service, caller address, method, path (never the query), status.
async fn log_request(service: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let caller = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "-".into());
    let response = next.run(request).await;
    tracing::info!(
        service,
        %caller,
        %method,
        path = %path,
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "service request"
    );
    response
}

/// A plain-text answer, the way the platform's services talk to devices.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The caller behind a tunnel address, or the answer for one that is not (or a store failure).
/// The store is read off the async workers, as the API does.
pub async fn identify(
    ctx: &SharedContext,
    remote: SocketAddr,
    unknown: impl FnOnce() -> Response,
) -> Result<Caller, Response> {
    let lookup = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || super::caller::identify(&ctx, remote.ip())).await
    };
    let Ok(lookup) = lookup else {
        return Err(internal_error());
    };
    match lookup {
        Ok(caller) => Ok(caller),
        Err(CallerError::Unknown(ip)) => {
            tracing::debug!(%ip, "service request from an address without a session");
            Err(unknown())
        }
        Err(CallerError::Store(e)) => {
            tracing::error!(error = %e, "store failure while identifying a caller");
            Err(internal_error())
        }
    }
}

pub fn internal_error() -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the arcd log",
    )
}
