//! `arcd store copy` as a user runs it: the real binary, a SQLite box stopped after real use,
//! its state copied into PostgreSQL (when `ARCD_TEST_POSTGRES_URL` names a server, see
//! scripts/test-postgres.sh), then `arcd serve` on PostgreSQL signs in with the box's root key.
//! Refusals (wrong engines, the source in use) need no PostgreSQL and always run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arcd::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::child_arcd::{free_port, ChildArcd};
use support::store_engine::{on_postgres, use_test_engine};

/// The rendezvous point ChildArcd serves, so the configuration files agree with it.
const RENDEZVOUS_POINT: &str = r#"
[[rendezvous_points]]
id = "ap-northeast-1"
listen = "127.0.0.1:0"
endpoint = "127.0.0.1:11010"
pool = "10.64.0.0/16"
allowed_ips = ["100.127.0.0/16"]
"#;

/// A configuration file in `dir`: `data_dir` and, for PostgreSQL, `[store]`.
fn config_file(dir: &Path, name: &str, data_dir: &Path, postgres_url: Option<&str>) -> PathBuf {
    let mut text = format!("data_dir = {:?}\n", data_dir.to_str().expect("utf-8 path"));
    if let Some(url) = postgres_url {
        text.push_str(&format!("[store]\nengine = \"postgres\"\nurl = {url:?}\n"));
    }
    text.push_str(RENDEZVOUS_POINT);
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// `arcd store copy --from FROM --to TO`, with no ARCD_* variable of the test's environment.
fn store_copy(dir: &Path, from: &Path, to: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcd"));
    command.current_dir(dir).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ARCD_") {
            command.env_remove(&key);
        }
    }
    command
        .args(["store", "copy", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .expect("run arcd store copy")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh PostgreSQL schema's URL, as the in-process tests get theirs.
fn postgres_url(data_dir: &Path) -> String {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    use_test_engine(&mut config);
    config.store.url.expect("a PostgreSQL URL")
}

#[test]
fn only_sqlite_to_postgres_is_a_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = config_file(dir.path(), "a.toml", &dir.path().join("a"), None);
    let postgres = config_file(
        dir.path(),
        "b.toml",
        &dir.path().join("b"),
        Some("postgres://arcd@127.0.0.1:1/arcd"),
    );
    for (from, to) in [
        (&postgres, &sqlite),
        (&sqlite, &sqlite),
        (&postgres, &postgres),
    ] {
        let ran = store_copy(dir.path(), from, to);
        assert!(!ran.status.success(), "{from:?} -> {to:?}");
        let stderr = text(&ran.stderr);
        assert!(
            stderr.contains("store copy goes from a SQLite configuration to a PostgreSQL one"),
            "{stderr}"
        );
    }
    // A source without a database is refused, not created empty and "copied".
    let ran = store_copy(dir.path(), &sqlite, &postgres);
    assert!(!ran.status.success());
    assert!(
        text(&ran.stderr).contains("has no database"),
        "{}",
        text(&ran.stderr)
    );
    assert!(!dir.path().join("a/arcd.sqlite").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_box_moves_to_postgres_and_keeps_its_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client");

    // The box: a real first start on SQLite (root operator, auth key, RP server key).
    let port = free_port();
    let mut box_a = ChildArcd::spawn(&a, port, dir.path(), "a", &[]);
    box_a.wait_ready(&a, port, &http).await;
    let credentials: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("root-credentials.json")).unwrap())
            .unwrap();

    // While it runs, its data directory is locked: no copy of a store in use.
    let url = if on_postgres() {
        postgres_url(&b)
    } else {
        "postgres://arcd@127.0.0.1:1/arcd".to_string()
    };
    let from = config_file(dir.path(), "a.toml", &a, None);
    let to = config_file(dir.path(), "b.toml", &b, Some(&url));
    let ran = store_copy(dir.path(), &from, &to);
    assert!(!ran.status.success());
    assert!(
        text(&ran.stderr).contains("is in use by another `arcd serve`"),
        "{}",
        text(&ran.stderr)
    );
    box_a.sigterm();
    assert!(
        box_a.child.wait().expect("wait").success(),
        "{}",
        box_a.stderr()
    );
    if !on_postgres() {
        return;
    }

    let ran = store_copy(dir.path(), &from, &to);
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let rows: Value = serde_json::from_slice(&ran.stdout).expect("rows per table as JSON");
    assert_eq!(rows["operators"], 1, "{rows}");
    assert_eq!(rows["auth_keys"], 1, "{rows}");
    assert_eq!(rows["rendezvous_points"], 1, "{rows}");

    // The new node on PostgreSQL: root-credentials.json is copied by hand (as documented); the
    // box's root auth key signs in there.
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(
        a.join("root-credentials.json"),
        b.join("root-credentials.json"),
    )
    .unwrap();
    let port = free_port();
    let url_env = [
        ("ARCD_STORE__ENGINE", "postgres"),
        ("ARCD_STORE__URL", url.as_str()),
        // Info, to see whether it made a server key of its own.
        ("RUST_LOG", "info"),
    ];
    let mut node_b = ChildArcd::spawn(&b, port, dir.path(), "b", &url_env);
    node_b.wait_ready(&b, port, &http).await;
    let response = http
        .post(format!("http://127.0.0.1:{port}/v1/auth"))
        .json(&json!({
            "authKeyId": credentials["authKeyId"],
            "authKey": credentials["authKey"],
        }))
        .send()
        .await
        .expect("auth");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !node_b.stderr().contains("server key pair generated"),
        "the copied server key is used: {}",
        node_b.stderr()
    );
    node_b.sigterm();
    node_b.child.wait().expect("wait");

    // A second copy into the now filled store is refused.
    let ran = store_copy(dir.path(), &from, &to);
    assert!(!ran.status.success());
    assert!(
        text(&ran.stderr).contains("already holds data"),
        "{}",
        text(&ran.stderr)
    );
}
