//! Two arcd nodes in one process sharing one PostgreSQL schema: node A serves only the API,
//! node B only the rendezvous points. A change made through A reaches B's data plane through
//! the outbox, also after B's connections (its LISTEN among them) were killed. PostgreSQL only:
//! without `ARCD_TEST_POSTGRES_URL` it returns at once, with a note (scripts/test-postgres.sh
//! runs it with the variable set, where it cannot skip). Endorse: the API node publishes the key
//! the rendezvous node signs with.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arcd::dataplane::engine::Engine;
use arcd::ids::Imsi;
use serde_json::Value;
use support::server::{test_config, TestServer};
use support::store_engine::on_postgres;
use support::wgclient::{udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
/// NOTIFY brings a change at once; after a killed connection the follower's one-second poll
/// and its reconnect backoff do, well within this.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(15);

fn imsi_of(sim: &Value) -> Imsi {
    let sim_id = sim["simId"].as_str().unwrap();
    Imsi::new(sim["profiles"][sim_id]["primaryImsi"].as_str().unwrap())
}

async fn wait_for_peer(engine: &Engine, imsi: &Imsi, present: bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < PROPAGATION_LIMIT {
        if engine.session(imsi).is_some() == present {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn handshakes(sim: &Value, server: SocketAddr) -> bool {
    let (mut client, ip) = WgClient::for_sim(sim, server).await;
    client
        .connect(
            &udp_packet(ip, METADATA, 40000, 80, b"hi"),
            Duration::from_secs(3),
        )
        .await
}

/// `url` with `application_name` set, so the test can find this node's connections.
fn named(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// Terminates every backend of `application_name`; returns (all, those that were LISTENing).
fn kill_backends(api_node: &TestServer, application_name: &str) -> (i64, i64) {
    let name = application_name.to_string();
    api_node.read_store(move |db| {
        let row = db.query_one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE query LIKE 'LISTEN%'),
                    bool_and(pg_terminate_backend(pid, 10000))
             FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )?;
        Ok((row.int(0)?, row.int(1)?))
    })
}

#[tokio::test]
async fn a_change_through_the_api_node_reaches_the_rendezvous_node() {
    if !on_postgres() {
        eprintln!("two_nodes: PostgreSQL only (set ARCD_TEST_POSTGRES_URL, or run scripts/test-postgres.sh); skipped");
        return;
    }
    let mut shared_url = None;
    let api_node = TestServer::start_with(|config| {
        config.node.rendezvous_points = Vec::new();
        shared_url = config.store.url.clone();
    })
    .await;
    let application_name = format!("arcd_b_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.url = Some(named(&shared_url.unwrap(), &application_name));
    config.node.api = false;
    config.node.rendezvous_points = vec!["*".into()];
    let rp_node = arcd::server::start(config).await.expect("node B starts");
    assert!(api_node.running.dataplane.udp_addrs.is_empty());
    let udp = rp_node.dataplane.udp_addrs[0].1;
    let engine = rp_node.dataplane.engine.clone();
    let api = api_node.login().await;

    let first = api.create_sim().await;
    let took = wait_for_peer(&engine, &imsi_of(&first), true)
        .await
        .expect("node B took the new session");
    eprintln!("createSim on A → peer on B: {took:?}");
    assert!(
        handshakes(&first, udp).await,
        "the device handshakes with B"
    );

    let (killed, listening) = kill_backends(&api_node, &application_name);
    assert!(
        killed >= 1 && listening == 1,
        "killed {killed}, of which LISTEN {listening}"
    );
    let second = api.create_sim().await;
    let took = wait_for_peer(&engine, &imsi_of(&second), true)
        .await
        .expect("node B took a session made after its connections were killed");
    eprintln!("createSim on A → peer on B after B's connections were killed: {took:?}");
    assert!(handshakes(&second, udp).await);

    let sim_id = first["simId"].as_str().unwrap();
    api.post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_peer(&engine, &imsi_of(&first), false)
        .await
        .expect("node B removed the terminated SIM's peer");
    let outbox_rows = api_node.read_store(|db| {
        db.query_one("SELECT COUNT(*) FROM peer_outbox", &[])?
            .int(0)
    });
    assert!(outbox_rows >= 3, "{outbox_rows}");
    rp_node.shutdown().await;
    api_node.running.shutdown().await;
}

/// Endorse's key is the store's: the rendezvous node that signs a device's first token makes it,
/// and the API-only node publishes that same key for verifiers.
#[tokio::test]
async fn the_api_node_publishes_the_key_the_rendezvous_node_signs_with() {
    if !on_postgres() {
        eprintln!("two_nodes: PostgreSQL only (set ARCD_TEST_POSTGRES_URL, or run scripts/test-postgres.sh); skipped");
        return;
    }
    let mut shared_url = None;
    let api_node = TestServer::start_with(|config| {
        config.node.rendezvous_points = Vec::new();
        shared_url = config.store.url.clone();
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.url = shared_url;
    config.node.api = false;
    config.node.rendezvous_points = vec!["*".into()];
    let rp_node = arcd::server::start(config).await.expect("node B starts");

    let signing = rp_node.services.endorse_keys.current().await.expect("key");
    let api = api_node.login().await;
    let published: Value = api_node
        .client()
        .get(format!("{}/v1/arcd/endorse/jwks", api.base))
        .send()
        .await
        .expect("JWKS")
        .json()
        .await
        .expect("JSON");
    assert_eq!(published["keys"], serde_json::json!([signing.jwk()]));
    rp_node.shutdown().await;
    api_node.running.shutdown().await;
}
