//! The served router and the route table agree: every operation `arcd::api::operations()` lists
//! is answered (never 404 or 405), and on every path `openapi.yaml` documents, each method it
//! does not document answers 405. With the unit test in src/api/routes.rs (table == document),
//! the router's routes on documented paths are exactly the documented operations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::server::TestServer;

/// `path` with each `{parameter}` replaced by a value: only routing is under test (the calls
/// carry no token, so authenticated operations answer 401 before reading their parameters).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "p1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn documented_paths() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    let document: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml parses");
    document["paths"]
        .as_mapping()
        .expect("paths")
        .keys()
        .map(|k| k.as_str().expect("path").to_string())
        .collect()
}

async fn status_of(server: &TestServer, method: &str, path: &str) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let response = server
        .client()
        .request(method, format!("{}/v1{}", server.base, concrete(path)))
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_router_serves_the_route_table_and_nothing_else_on_documented_paths() {
    let server = TestServer::start().await;
    let operations = arcd::api::operations();
    for (method, path) in &operations {
        let (status, body) = status_of(&server, method, path).await;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is in the route table but the router answers {status} {body}"
        );
    }
    for path in documented_paths() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if operations.contains(&(method, path.as_str())) {
                continue;
            }
            let (status, body) = status_of(&server, method, &path).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is not in the route table, yet the router answers {body}"
            );
        }
    }
    server.running.shutdown().await;
}
