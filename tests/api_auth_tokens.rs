//! HTTPS integration tests of API token lifetime against an in-process arcd: tokens die with
//! their auth key and with `POST /v1/auth/logout` (and stay dead across a restart, while other
//! tokens live on), and signing in needs no database write (a failed sign-in takes no write
//! transaction; a correct one works while the database refuses writes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::path::Path;
use std::sync::mpsc;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::checked::{expect_status, text, Checked};
use support::server::{assert_error, test_config, Api, TestServer};

fn with_client(api: &Api, client: &reqwest::Client, base: &str) -> Checked {
    Checked(Api {
        client: client.clone(),
        base: base.to_string(),
        ..api.clone()
    })
}

/// A client for an arcd serving `data_dir` at `base`, trusting its certificate.
fn client_for(data_dir: &Path) -> reqwest::Client {
    let pem = std::fs::read(data_dir.join("tls-cert.pem")).expect("generated certificate");
    let cert = reqwest::Certificate::from_pem(&pem).expect("pem");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .expect("client")
}

async fn sims_status(api: &Checked) -> StatusCode {
    let (status, _) = api.get("/v1/sims").await;
    status
}

#[tokio::test]
async fn deleting_an_auth_key_revokes_its_tokens_at_once() {
    let server = TestServer::start().await;
    let root = Checked(server.login().await);
    let keys_path = format!("/v1/operators/{}/auth_keys", root.operator_id);
    let (status, generated) = root.post_empty(&keys_path).await;
    expect_status(status, &generated, StatusCode::CREATED);
    let key_id = text(&generated, "/authKeyId").to_string();
    let secret = text(&generated, "/authKey").to_string();

    // One token already used (so it is known in memory), one never used before the deletion.
    let used = Checked(server.login_with(&key_id, &secret).await);
    assert_eq!(sims_status(&used).await, StatusCode::OK);
    let unused = Checked(server.login_with(&key_id, &secret).await);

    let (status, body) = root.delete(&format!("{keys_path}/{key_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for api in [&used, &unused] {
        let (status, error) = api.get("/v1/sims").await;
        assert_error(status, &error, StatusCode::UNAUTHORIZED);
        let (status, error) = api
            .post(
                "/v1/sims",
                json!({"type": "virtual", "subscription": "planArc01"}),
            )
            .await;
        assert_error(status, &error, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        sims_status(&root).await,
        StatusCode::OK,
        "tokens of the operator's other key keep working"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn logout_revokes_only_the_calling_token_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let data_dir = config.data_dir.clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let first = arcd::server::start(config.clone())
        .await
        .expect("arcd starts");
    let root = first
        .new_root_credentials
        .as_ref()
        .map(|r| (r.auth_key_id.clone(), r.auth_key.clone()))
        .expect("root credentials");
    let client = client_for(&data_dir);
    let base = format!("https://127.0.0.1:{}", first.api_addr.expect("API").port());
    let anonymous = Checked(Api {
        client: client.clone(),
        base: base.clone(),
        api_key: String::new(),
        token: String::new(),
        operator_id: String::new(),
    });
    let mut signed_in = Vec::new();
    for _ in 0..2 {
        let (status, body) = anonymous
            .post("/v1/auth", json!({"authKeyId": root.0, "authKey": root.1}))
            .await;
        expect_status(status, &body, StatusCode::OK);
        signed_in.push(Checked(Api {
            api_key: text(&body, "/apiKey").to_string(),
            token: text(&body, "/token").to_string(),
            operator_id: text(&body, "/operatorId").to_string(),
            ..anonymous.0.clone()
        }));
    }
    let (leaving, staying) = (&signed_in[0], &signed_in[1]);
    assert_eq!(sims_status(leaving).await, StatusCode::OK);

    let (status, body) = leaving.call(Method::POST, "/v1/auth/logout", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, error) = leaving.get("/v1/sims").await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    let (status, error) = leaving.call(Method::POST, "/v1/auth/logout", None).await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    assert_eq!(sims_status(staying).await, StatusCode::OK);

    // Same data directory, new process state: the kept token still works, the other does not.
    first.shutdown().await;
    let second = arcd::server::start(config).await.expect("arcd restarts");
    let base = format!("https://127.0.0.1:{}", second.api_addr.expect("API").port());
    let staying = with_client(staying, &client, &base);
    let leaving = with_client(leaving, &client, &base);
    assert_eq!(
        sims_status(&staying).await,
        StatusCode::OK,
        "tokens survive a restart"
    );
    let (status, error) = leaving.get("/v1/sims").await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    second.shutdown().await;
}

#[tokio::test]
async fn signing_in_needs_no_database_write() {
    let server = TestServer::start().await;
    let root = (
        server.root.auth_key_id.clone(),
        server.root.auth_key.clone(),
    );
    let anonymous = Checked(Api {
        api_key: String::new(),
        token: String::new(),
        operator_id: String::new(),
        ..server.login().await
    });

    // Another connection holds the database's write lock meanwhile: any sign-in that took a
    // write transaction would wait for it (and fail after the busy timeout).
    let database = server.data_dir.join("arcd.sqlite");
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let other = arcd::store::Store::open(&database).expect("second connection");
        other
            .sqlite()
            .expect("a SQLite store")
            .write(|tx| {
                tx.execute(
                    "UPDATE settings SET value = value WHERE key = 'root_operator_id'",
                    [],
                )?;
                let _ = locked_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
            .expect("hold the write lock");
    });
    locked_rx.recv().expect("write lock taken");
    let (status, error) = anonymous
        .post(
            "/v1/auth",
            json!({"authKeyId": root.0, "authKey": "secret-wrong"}),
        )
        .await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    assert_eq!(error["code"], "AUM0002", "{error}");
    let (status, body) = anonymous
        .post("/v1/auth", json!({"authKeyId": root.0, "authKey": root.1}))
        .await;
    expect_status(status, &body, StatusCode::OK);
    let fresh = Checked(Api {
        api_key: text(&body, "/apiKey").to_string(),
        token: text(&body, "/token").to_string(),
        operator_id: text(&body, "/operatorId").to_string(),
        ..anonymous.0.clone()
    });
    assert_eq!(sims_status(&fresh).await, StatusCode::OK);
    release_tx.send(()).expect("release");
    holder.join().expect("holder thread");

    // The database refuses every write (as when it is read-only): signing in still works, even
    // with a key never used before (whose lastUsedDateTime cannot be recorded), and so does the
    // new token, while a write through the API fails.
    let keys_path = format!("/v1/operators/{}/auth_keys", fresh.operator_id);
    let (status, generated) = fresh.post_empty(&keys_path).await;
    expect_status(status, &generated, StatusCode::CREATED);
    let new_key = (
        text(&generated, "/authKeyId").to_string(),
        text(&generated, "/authKey").to_string(),
    );
    let store = server.running.store.clone();
    tokio::task::spawn_blocking(move || {
        store.sqlite().expect("a SQLite store").write(|tx| {
            tx.execute_batch("PRAGMA query_only = ON")?;
            Ok(())
        })
    })
    .await
    .expect("join")
    .expect("make the writer read-only");
    let (status, body) = anonymous
        .post(
            "/v1/auth",
            json!({"authKeyId": new_key.0, "authKey": new_key.1}),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    let read_only = Checked(Api {
        api_key: text(&body, "/apiKey").to_string(),
        token: text(&body, "/token").to_string(),
        operator_id: text(&body, "/operatorId").to_string(),
        ..anonymous.0.clone()
    });
    assert_eq!(sims_status(&read_only).await, StatusCode::OK);
    let (status, error) = read_only
        .post(
            "/v1/sims",
            json!({"type": "virtual", "subscription": "planArc01"}),
        )
        .await;
    assert_error(status, &error, StatusCode::INTERNAL_SERVER_ERROR);
    server.running.shutdown().await;
}
