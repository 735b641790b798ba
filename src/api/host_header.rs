//! Exactly one `Host` header per request (RFC 9112 section 3.2): two of them, or an HTTP/1.1
//! request without one, is answered 400 before routing, as coverage is chosen by Host.

use axum::extract::Request;
use axum::http::{header, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

pub async fn require_one_host(request: Request, next: Next) -> Response {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return ApiError::bad_request("the request has more than one Host header").into_response();
    }
    if hosts == 0 && request.version() >= Version::HTTP_11 {
        return ApiError::bad_request("an HTTP/1.1 request needs a Host header").into_response();
    }
    next.run(request).await
}
