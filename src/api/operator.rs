//! The calling operator: `auth::require_token` establishes it from the request's token and every
//! authenticated handler takes it as an argument (`Operator(operator): Operator`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;

/// The caller's operator id, set by the auth middleware on every `/v1` call except
/// `POST /v1/auth`, and copied onto the response for the request log.
#[derive(Clone, Debug)]
pub struct Operator(pub crate::ids::OperatorId);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    /// A handler that takes an `Operator` on a route without the token check is a wiring bug:
    /// it answers 500 in the error shape (and logs why) instead of serving an unknown caller.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Operator>().cloned().ok_or_else(|| {
            tracing::error!(
                path = %parts.uri.path(),
                "no operator on the request: the route is not behind the token check"
            );
            ApiError::internal()
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::Operator;

    async fn whoami(Operator(operator): Operator) -> String {
        operator.into_string()
    }

    async fn answer(router: Router, request: Request<Body>) -> (StatusCode, String) {
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_operator_set_by_the_middleware_reaches_the_handler() {
        let router = Router::new()
            .route("/", get(whoami))
            .layer(axum::middleware::map_request(
                |mut request: Request<Body>| async move {
                    request
                        .extensions_mut()
                        .insert(Operator("OP0012345678".into()));
                    request
                },
            ));
        let request = Request::get("/").body(Body::empty()).expect("request");
        assert_eq!(
            answer(router, request).await,
            (StatusCode::OK, "OP0012345678".to_string())
        );
    }

    #[tokio::test]
    async fn a_route_without_the_token_check_answers_500_in_the_error_shape() {
        let router = Router::new().route("/", get(whoami));
        let request = Request::get("/").body(Body::empty()).expect("request");
        let (status, body) = answer(router, request).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["code"], "COM0500", "{body}");
    }
}
