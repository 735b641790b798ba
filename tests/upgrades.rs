//! Upgrades: a database of every shipped schema version (tests/fixtures/schema/vN.sql, see the
//! README there) is opened by this arcd, migrated, and reads back through the API as it was
//! written: sign-in with the stored auth keys, SIMs (status, IMSI, group, session, tags), groups
//! and their configuration, Harvest data, VPGs, and the per-operator live-SIM count.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arcd::bootstrap::RootCredentials;
use arcd::store::SCHEMA_VERSION;
use reqwest::StatusCode;
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;
use support::server::{Api, TestServer};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema")
}

/// The versions that have a fixture, from the file names `vN.sql`.
fn fixture_versions() -> Vec<i64> {
    let mut versions: Vec<i64> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory")
        .filter_map(|entry| {
            let name = entry.expect("entry").file_name().into_string().ok()?;
            name.strip_prefix('v')?.strip_suffix(".sql")?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// Adding a migration without a fixture of the version it makes fails here.
#[test]
fn every_schema_version_has_a_fixture() {
    assert_eq!(
        fixture_versions(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "tests/fixtures/schema needs one vN.sql per schema version 1..={SCHEMA_VERSION}: make the new one with make_fixtures.py (see the README there)"
    );
}

/// What a fixture holds, read from its rows before arcd touches it.
#[derive(Debug, Default)]
struct Expected {
    /// sim_id -> (operator, status, group, primary IMSI, session client address, tags)
    sims: BTreeMap<String, ExpectedSim>,
    groups: BTreeMap<String, String>,
    harvest_per_sim: BTreeMap<String, i64>,
    live_vpgs: BTreeMap<String, i64>,
}

#[derive(Debug)]
struct ExpectedSim {
    operator_id: String,
    status: String,
    group_id: Option<String>,
    primary_imsi: String,
    client_ip: Option<String>,
    tags: BTreeMap<String, String>,
}

fn table_exists(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .expect("sqlite_master")
    .is_some()
}

fn expected(conn: &Connection) -> Expected {
    let mut expected = Expected::default();
    let mut sims = conn
        .prepare(
            "SELECT s.sim_id, s.operator_id, s.status, s.group_id, p.imsi,
                    (SELECT client_ip FROM arc_sessions a WHERE a.sim_id = s.sim_id)
             FROM sims s JOIN subscribers p ON p.sim_id = s.sim_id AND p.is_primary = 1",
        )
        .expect("prepare");
    let rows = sims
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                ExpectedSim {
                    operator_id: row.get(1)?,
                    status: row.get(2)?,
                    group_id: row.get(3)?,
                    primary_imsi: row.get(4)?,
                    client_ip: row.get(5)?,
                    tags: BTreeMap::new(),
                },
            ))
        })
        .expect("sims");
    for row in rows {
        let (sim_id, sim) = row.expect("sim row");
        expected.sims.insert(sim_id, sim);
    }
    let mut tags = conn
        .prepare("SELECT sim_id, name, value FROM sim_tags")
        .expect("prepare");
    for row in tags
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
        })
        .expect("tags")
    {
        let (sim_id, name, value) = row.expect("tag row");
        if let Some(sim) = expected.sims.get_mut(&sim_id) {
            sim.tags.insert(name, value);
        }
    }
    let mut groups = conn
        .prepare("SELECT group_id, operator_id FROM groups")
        .expect("prepare");
    for row in groups
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("groups")
    {
        let (group_id, operator_id) = row.expect("group row");
        expected.groups.insert(group_id, operator_id);
    }
    if table_exists(conn, "harvest_entries") {
        let mut harvest = conn
            .prepare("SELECT sim_id, count(*) FROM harvest_entries GROUP BY sim_id")
            .expect("prepare");
        for row in harvest
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("harvest")
        {
            let (sim_id, n) = row.expect("harvest row");
            expected.harvest_per_sim.insert(sim_id, n);
        }
    }
    if table_exists(conn, "vpgs") {
        let mut vpgs = conn
            .prepare(
                "SELECT operator_id, count(*) FROM vpgs WHERE status <> 'terminated' GROUP BY operator_id",
            )
            .expect("prepare");
        for row in vpgs
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("vpgs")
        {
            let (operator_id, n) = row.expect("vpg row");
            expected.live_vpgs.insert(operator_id, n);
        }
    }
    expected
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FixtureCredentials {
    operator_id: String,
    auth_key_id: String,
    auth_key: String,
}

/// The auth keys of fixture `version`'s two operators ("root" and "other").
fn credentials(version: i64) -> BTreeMap<String, FixtureCredentials> {
    let text = std::fs::read(fixture_dir().join("credentials.json")).expect("credentials.json");
    let mut all: BTreeMap<String, BTreeMap<String, FixtureCredentials>> =
        serde_json::from_slice(&text).expect("credentials JSON");
    all.remove(&format!("v{version}"))
        .unwrap_or_else(|| panic!("credentials.json has no entry v{version}"))
}

/// Loads fixture `version` into a fresh data directory and returns what it holds.
fn prepare(version: i64) -> (tempfile::TempDir, Expected) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = support::server::test_config(dir.path()).data_dir;
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let sql = std::fs::read_to_string(fixture_dir().join(format!("v{version}.sql")))
        .expect("fixture file");
    let conn = Connection::open(data_dir.join("arcd.sqlite")).expect("database");
    conn.execute_batch(&sql).expect("fixture loads");
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("user_version");
    assert_eq!(found, version, "v{version}.sql sets user_version {found}");
    let expected = expected(&conn);
    assert!(
        expected.sims.len() >= 5 && !expected.groups.is_empty(),
        "v{version}.sql holds too little to test an upgrade"
    );
    (dir, expected)
}

async fn list_all_sims(api: &Api) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut path = "/v1/sims?limit=100".to_string();
    loop {
        let response = api
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .expect("listSims");
        assert_eq!(response.status(), StatusCode::OK);
        let next = response
            .headers()
            .get("x-soracom-next-key")
            .map(|v| v.to_str().expect("ascii").to_string());
        let page: Vec<Value> = response.json().await.expect("page");
        all.extend(
            page.iter()
                .map(|sim| sim["simId"].as_str().expect("simId").to_string()),
        );
        match next {
            Some(key) => path = format!("/v1/sims?limit=100&last_evaluated_key={key}"),
            None => return all,
        }
    }
}

async fn check_operator(version: i64, api: &Api, expected: &Expected) {
    let context = format!("fixture v{version}, operator {}", api.operator_id);
    let mine: BTreeMap<&String, &ExpectedSim> = expected
        .sims
        .iter()
        .filter(|(_, sim)| sim.operator_id == api.operator_id)
        .collect();
    assert!(!mine.is_empty(), "{context}: no SIMs in the fixture");
    let listed = list_all_sims(api).await;
    let wanted: BTreeSet<String> = mine.keys().map(|id| id.to_string()).collect();
    assert_eq!(listed, wanted, "{context}: listSims");
    for (sim_id, sim) in &mine {
        let (status, body) = api.get(&format!("/v1/sims/{sim_id}")).await;
        assert_eq!(status, StatusCode::OK, "{context}: getSim {sim_id}: {body}");
        assert_eq!(body["status"], sim.status.as_str(), "{context}: {sim_id}");
        assert_eq!(
            body["groupId"].as_str(),
            sim.group_id.as_deref(),
            "{context}: group of {sim_id}"
        );
        assert_eq!(
            body["profiles"][sim_id.as_str()]["primaryImsi"],
            sim.primary_imsi.as_str(),
            "{context}: IMSI of {sim_id}: {body}"
        );
        assert_eq!(
            body["arcSessionStatus"]["arcClientPeerIpAddress"].as_str(),
            sim.client_ip.as_deref(),
            "{context}: session of {sim_id}: {body}"
        );
        for (name, value) in &sim.tags {
            assert_eq!(body["tags"][name], value.as_str(), "{context}: tag {name}");
        }
        if let Some(&entries) = expected.harvest_per_sim.get(*sim_id) {
            let (status, data) = api.get(&format!("/v1/sims/{sim_id}/data")).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{context}: data of {sim_id}: {data}"
            );
            let got = data.as_array().map_or(0, Vec::len) as i64;
            assert_eq!(got, entries, "{context}: Harvest entries of {sim_id}");
        }
    }
    let (status, groups) = api.get("/v1/groups").await;
    assert_eq!(status, StatusCode::OK);
    let listed: BTreeSet<&str> = groups
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["groupId"].as_str().expect("groupId"))
        .collect();
    let wanted: BTreeSet<&str> = expected
        .groups
        .iter()
        .filter(|(_, operator)| **operator == api.operator_id)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(listed, wanted, "{context}: listGroups");
    for group in groups.as_array().expect("groups") {
        assert_eq!(
            group["configuration"]["SoracomHarvest"]["enabled"], true,
            "{context}: configuration of {group}"
        );
    }
    if version >= 4 {
        let (status, vpgs) = api.get("/v1/virtual_private_gateways").await;
        assert_eq!(status, StatusCode::OK);
        let wanted = expected
            .live_vpgs
            .get(&api.operator_id)
            .copied()
            .unwrap_or(0);
        assert_eq!(
            vpgs.as_array().map_or(0, Vec::len) as i64,
            wanted,
            "{context}: VPGs"
        );
    }
}

async fn check_fixture(version: i64) {
    let credentials = credentials(version);
    let (dir, expected) = prepare(version);
    let root = &credentials["root"];
    let server = TestServer::start_prepared(
        dir,
        RootCredentials {
            operator_id: root.operator_id.as_str().into(),
            auth_key_id: root.auth_key_id.clone(),
            auth_key: root.auth_key.clone(),
        },
        // Fixture entries are dated when they were made; keep retention from removing them.
        |config| config.services.harvest_retention_days = 365 * 100,
    )
    .await;
    for (name, who) in &credentials {
        let api = server.login_with(&who.auth_key_id, &who.auth_key).await;
        assert_eq!(
            api.operator_id, who.operator_id,
            "fixture v{version}: {name}"
        );
        check_operator(version, &api, &expected).await;
    }
    let store = server.running.store.clone();
    let (schema, counts, live) = tokio::task::spawn_blocking(move || {
        store.sqlite().expect("a SQLite store").read(|conn| {
            let schema: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            let pairs = |sql: &str| -> rusqlite::Result<BTreeMap<String, i64>> {
                let mut statement = conn.prepare(sql)?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect()
            };
            Ok((
                schema,
                pairs("SELECT operator_id, live_sims FROM operator_sim_counts WHERE live_sims > 0")?,
                pairs(
                    "SELECT operator_id, count(*) FROM sims WHERE status <> 'terminated' GROUP BY operator_id",
                )?,
            ))
        })
    })
    .await
    .expect("join")
    .expect("read");
    assert_eq!(
        schema, SCHEMA_VERSION,
        "fixture v{version} was not migrated"
    );
    assert_eq!(counts, live, "fixture v{version}: operator_sim_counts");
    let terminated = expected
        .sims
        .values()
        .filter(|sim| sim.status == "terminated")
        .count();
    assert!(terminated >= 1, "fixture v{version} needs a terminated SIM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_migrated_and_reads_back_through_the_api() {
    for version in fixture_versions() {
        check_fixture(version).await;
    }
}
