//! An arcd started in-process for a test: HTTPS on 127.0.0.1 with its own generated certificate
//! (which the client trusts, so TLS is verified for real), and a temp-dir SQLite (or a fresh
//! PostgreSQL schema, see `store_engine`).

use std::path::PathBuf;

use arcd::bootstrap::RootCredentials;
use arcd::config::Config;
use arcd::server::{self, Running};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct TestServer {
    pub base: String,
    pub running: Running,
    pub root: RootCredentials,
    pub data_dir: PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Default test configuration: ephemeral API port, TLS on, data in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.api.listen = "127.0.0.1:0".parse().expect("literal address");
    // In-memory TUN (no root, no clash between parallel tests) and an ephemeral WireGuard port.
    config.tun.enabled = false;
    config.rendezvous_points[0].listen = "127.0.0.1:0".parse().expect("literal address");
    super::store_engine::use_test_engine(&mut config);
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let data_dir = config.data_dir.clone();
        let running = server::start(config).await.expect("arcd starts");
        let root = running
            .new_root_credentials
            .as_ref()
            .map(|r| RootCredentials {
                operator_id: r.operator_id.clone(),
                auth_key_id: r.auth_key_id.clone(),
                auth_key: r.auth_key.clone(),
            })
            .expect("first start makes root credentials");
        Self::connect(running, root, data_dir, dir)
    }

    /// Starts arcd on a data directory the test prepared in `dir` (`test_config(dir)`'s
    /// data_dir, e.g. a database from a fixture): not a first start, so the caller names the
    /// root credentials that database holds.
    pub async fn start_prepared(
        dir: tempfile::TempDir,
        root: RootCredentials,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let data_dir = config.data_dir.clone();
        let running = server::start(config).await.expect("arcd starts");
        Self::connect(running, root, data_dir, dir)
    }

    fn connect(
        running: Running,
        root: RootCredentials,
        data_dir: PathBuf,
        dir: tempfile::TempDir,
    ) -> TestServer {
        let scheme = if running.tls { "https" } else { "http" };
        let base = format!(
            "{scheme}://127.0.0.1:{}",
            running
                .api_addr
                .expect("the test server serves the API")
                .port()
        );
        let mut builder = reqwest::Client::builder();
        if running.tls {
            let pem = std::fs::read(data_dir.join("tls-cert.pem")).expect("generated certificate");
            let cert = reqwest::Certificate::from_pem(&pem).expect("pem");
            builder = builder.tls_certs_only([cert]);
        }
        let client = builder.build().expect("client");
        TestServer {
            base,
            running,
            root,
            data_dir,
            client,
            _dir: dir,
        }
    }

    /// Reads the server's store from a plain thread: the PostgreSQL engine's blocking client
    /// must not run on the test's async runtime (and SQLite's reads should not block it either).
    pub fn read_store<T: Send>(
        &self,
        read: impl FnMut(&mut dyn arcd::store::db::Db) -> arcd::store::Result<T> + Send,
    ) -> T {
        use arcd::store::db::Backend;
        let store = &self.running.store;
        std::thread::scope(|scope| scope.spawn(move || store.read_db(read)).join())
            .expect("store read thread")
            .expect("store read")
    }

    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Signs in with the root auth key.
    pub async fn login(&self) -> Api {
        self.login_with(&self.root.auth_key_id, &self.root.auth_key)
            .await
    }

    pub async fn login_with(&self, auth_key_id: &str, auth_key: &str) -> Api {
        let anonymous = Api {
            client: self.client.clone(),
            base: self.base.clone(),
            api_key: String::new(),
            token: String::new(),
            operator_id: String::new(),
        };
        let (status, body) = anonymous
            .call(
                Method::POST,
                "/v1/auth",
                Some(serde_json::json!({"authKeyId": auth_key_id, "authKey": auth_key})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "auth failed: {body}");
        Api {
            api_key: body["apiKey"].as_str().expect("apiKey").to_string(),
            token: body["token"].as_str().expect("token").to_string(),
            operator_id: body["operatorId"].as_str().expect("operatorId").to_string(),
            ..anonymous
        }
    }

    /// A second operator with its own auth key, signed in.
    pub async fn other_operator(&self) -> Api {
        use arcd::store::db::Backend;
        let store = self.running.store.clone();
        let (key_id, secret) = tokio::task::spawn_blocking(move || {
            store
                .write_db(|db| {
                    let op = arcd::store::operators::create_operator(db)?;
                    let key = arcd::store::operators::create_auth_key(db, &op)?;
                    Ok((key.auth_key_id.clone(), key.secret.clone()))
                })
                .expect("second operator")
        })
        .await
        .expect("join");
        self.login_with(&key_id, &secret).await
    }
}

/// A signed-in API client.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub api_key: String,
    pub token: String,
    pub operator_id: String,
}

impl Api {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        if self.api_key.is_empty() {
            builder
        } else {
            builder
                .header("X-Soracom-API-Key", &self.api_key)
                .header("X-Soracom-Token", &self.token)
        }
    }

    /// Sends JSON (or nothing) and returns the status and the parsed body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.expect("request");
        let (status, _, body) = read(response).await;
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

    /// Creates a standalone virtual SIM and returns the 201 body.
    pub async fn create_sim(&self) -> Value {
        let (status, body) = self
            .post(
                "/v1/sims",
                serde_json::json!({"type": "virtual", "subscription": "planArc01"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "createSim: {body}");
        body
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, headers, body)
}

/// Asserts an error response in the API's shape.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "unexpected status, body: {body}");
    assert!(body["code"].is_string(), "error body needs a code: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error body needs a message: {body}"
    );
}
