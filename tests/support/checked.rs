//! The harness client with every successful JSON body checked against the official spec.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::conformance::{validate_response, validate_schema, validate_schema_strict};
use super::server::{read, Api};

/// The harness client with every 2xx JSON body validated against the official spec (the path is
/// mapped onto its template; the arcd extension's items are validated as `Sim`).
#[derive(Clone)]
pub struct Checked(pub Api);

impl std::ops::Deref for Checked {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.0
    }
}

impl Checked {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, body) = self.0.call(method.clone(), path, body).await;
        check_success(&method, path, status, &body);
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::POST, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// `GET` keeping the response headers (pagination).
    pub async fn get_with_headers(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .expect("request");
        let (status, headers, body) = read(response).await;
        check_success(&Method::GET, path, status, &body);
        (status, headers, body)
    }

    pub async fn create_sim(&self) -> Value {
        let sim = self.0.create_sim().await;
        check_success(&Method::POST, "/v1/sims", StatusCode::CREATED, &sim);
        if let Err(e) = validate_schema_strict("Sim", &sim) {
            panic!("{e}");
        }
        sim
    }
}

#[track_caller]
pub fn check_success(method: &Method, path: &str, status: StatusCode, body: &Value) {
    if !status.is_success() || body.is_null() {
        return;
    }
    let path = path.split('?').next().unwrap_or(path);
    let result = if path.starts_with("/v1/arcd/virtual_private_gateways/") {
        // setArcdVpgDeviceToDevice (arcd extension) answers the official VPG object.
        validate_schema_strict("VirtualPrivateGateway", body)
    } else if path == "/v1/arcd/iot_sims" {
        match body.as_array() {
            Some(items) => items.iter().try_for_each(|sim| validate_schema("Sim", sim)),
            None => Err(format!("importIotSims answers an array: {body}")),
        }
    } else {
        validate_response(method.as_str(), path, status.as_u16(), body)
    };
    if let Err(e) = result {
        panic!("{method} {path}: {e}");
    }
}

#[track_caller]
pub fn conforms(method: &str, template: &str, status: StatusCode, body: &Value) {
    if let Err(e) = validate_response(method, template, status.as_u16(), body) {
        panic!("{e}");
    }
}

#[track_caller]
pub fn expect_status(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "unexpected status, body: {body}");
}

#[track_caller]
pub fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}
