//! Request bodies at the edge: a deadline for receiving the whole body (hyper has none, so a
//! client sending one byte a minute would hold its connection forever), and the mapping of body
//! read errors to the right answer (too large 413, too slow 408, malformed 400).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

use super::error::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body did not arrive within `api.body_timeout_seconds`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(Duration);

/// A body that fails with `BodyTimeout` once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(BoxError::from)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: the request's body must be complete within `timeout` from now (its head has
/// arrived). A handler that never reads the body is unaffected (hyper then closes the
/// connection instead of draining it).
pub async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        })
    });
    next.run(request).await
}

/// What a failed body read means for the client: over `limit` bytes (413), too slow (408), or
/// not a valid HTTP body, e.g. a bad chunk size (400).
pub fn read_error(error: axum::Error, limit: usize) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "COM0013",
                format!("request body is larger than {limit} bytes"),
            );
        }
        if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, "COM0008", timeout.to_string());
        }
        cause = e.source();
    }
    ApiError::bad_request(format!("malformed request body: {error}"))
}
