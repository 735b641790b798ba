//! A full disk answers 507 with a message saying so, to API clients and to devices posting Harvest
//! data, and writes nothing. The database is made "full" through SQLite's real error path: the
//! writer connection's `max_page_count` is capped at the current size, so any write that needs a
//! new page fails with SQLITE_FULL exactly as on a file system with no space left.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use arcd::store::db::Backend;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use arcd::services::harvest;
use arcd::store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::server::{assert_error, TestServer};

fn cap_database_at_its_current_size(store: &Store) {
    store
        .sqlite()
        .expect("a SQLite store")
        .write(|tx| {
            let pages: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let cap: i64 = tx.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })?;
            assert_eq!(cap, pages, "cap applied");
            Ok(())
        })
        .expect("cap the database");
}

async fn sim_count(server: &TestServer) -> i64 {
    let store = server.running.store.clone();
    tokio::task::spawn_blocking(move || {
        store.read_db(|db| db.query_one("SELECT count(*) FROM sims", &[])?.int(0))
    })
    .await
    .expect("join")
    .expect("count")
}

#[tokio::test]
async fn api_write_on_a_full_disk_answers_507_and_writes_nothing() {
    let server = TestServer::start().await;
    let api = server.login().await;
    cap_database_at_its_current_size(&server.running.store);

    // Free pages inside the file are used first; within a few hundred SIMs the file must grow.
    let mut refused = None;
    for _ in 0..2000 {
        let (status, body) = api
            .post(
                "/v1/sims",
                json!({"type": "virtual", "subscription": "planArc01"}),
            )
            .await;
        if status != StatusCode::CREATED {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body): (StatusCode, Value) = refused.expect("the capped database fills up");
    assert_error(status, &body, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(body["code"], "COM0507", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("disk is full"),
        "{body}"
    );
    // The refused request left nothing behind; reads still work.
    let before = sim_count(&server).await;
    let (status, body) = api
        .post(
            "/v1/sims",
            json!({"type": "virtual", "subscription": "planArc01"}),
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(sim_count(&server).await, before);
    let (status, _) = api.get("/v1/sims?limit=1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn harvest_on_a_full_disk_tells_the_device_507() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let ip: Ipv4Addr = sim["arcSessionStatus"]["arcClientPeerIpAddress"]
        .as_str()
        .expect("client address")
        .parse()
        .expect("IPv4");
    let (status, group) = api
        .post(
            "/v1/groups",
            json!({"tags": {"name": "h"}, "configuration": {"SoracomHarvest": {"enabled": true}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let (status, body) = api
        .post(
            &format!("/v1/sims/{sim_id}/set_group"),
            json!({"groupId": group["groupId"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ctx = server.running.services.clone();
    let device = SocketAddr::from((ip, 40_000));
    let mut stored = false;
    for _ in 0..200 {
        if harvest::store_raw(&ctx, device, b"warm-up\n").await == b"201\n" {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored, "the device can post before the disk fills");

    cap_database_at_its_current_size(&server.running.store);
    let message = vec![b'h'; 4096];
    let mut answer: &[u8] = b"201\n";
    for _ in 0..2000 {
        answer = harvest::store_raw(&ctx, device, &message).await;
        if answer != b"201\n" {
            break;
        }
    }
    assert_eq!(
        String::from_utf8_lossy(answer),
        "507\n",
        "a full disk is 507 for the device"
    );
}
