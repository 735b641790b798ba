//! The outbox follower is the one path from a committed session change to the data plane, on
//! both store engines (scripts/test-postgres.sh runs this file on PostgreSQL too): changes made
//! through the API reach the engine before the API answers, changes written to the store by
//! anyone else arrive by the follower's own poll (or NOTIFY), and the commit→applied latency is
//! printed for a few hundred changes.

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

use arcd::config::Coverage;
use arcd::ids::{Imsi, OperatorId, SimId};
use arcd::store::db::Backend;
use arcd::store::outbox::{self, OutboxChange};
use arcd::store::{sims, PeerChange, Store};
use serde_json::Value;
use support::server::TestServer;
use support::store_engine::on_postgres;
use support::wgclient::{udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);

/// The IMSI of a standalone virtual SIM (its profile's primary IMSI).
fn imsi_of(sim: &Value) -> Imsi {
    let sim_id = sim["simId"].as_str().unwrap();
    Imsi::new(sim["profiles"][sim_id]["primaryImsi"].as_str().unwrap())
}

async fn handshakes(sim: &Value, server: SocketAddr) -> bool {
    let (mut client, ip) = WgClient::for_sim(sim, server).await;
    client
        .connect(&udp_packet(ip, METADATA, 40000, 80, b"hi"), WAIT)
        .await
}

/// Polls `engine` until the IMSI's peer is there (`true`) or not (`false`), for up to `limit`.
async fn wait_for_peer(
    engine: &arcd::dataplane::engine::Engine,
    imsi: &Imsi,
    present: bool,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if engine.session(imsi).is_some() == present {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Runs store work on a plain thread (the PostgreSQL client must not run on the test runtime).
async fn on_store<T: Send + 'static>(
    store: std::sync::Arc<Store>,
    work: impl FnOnce(&Store) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .unwrap()
}

#[tokio::test]
async fn api_changes_reach_the_data_plane_before_the_answer() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let engine = &server.running.dataplane.engine;
    let udp = server.running.dataplane.udp_addrs[0].1;
    let sim = api.create_sim().await;
    let imsi = imsi_of(&sim);
    let applied = engine
        .session(&imsi)
        .expect("the peer is there when createSim answers");
    assert!(handshakes(&sim, udp).await, "the device handshakes");

    let sim_id = sim["simId"].as_str().unwrap();
    let (status, _) = api
        .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
        .await;
    assert_eq!(status, 200);
    let replaced = engine.session(&imsi).expect("a new session");
    assert_ne!(replaced.session_id, applied.session_id);

    api.post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(engine.session(&imsi).is_none(), "the peer is gone");
    assert!(
        !handshakes(&sim, udp).await,
        "a terminated SIM cannot handshake"
    );
    server.running.shutdown().await;
}

/// A change committed without the API (another node, or a tool) and without a wake-up on
/// SQLite: the follower's poll (or PostgreSQL's NOTIFY) brings it.
#[tokio::test]
async fn a_change_written_to_the_store_by_anyone_arrives() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let engine = server.running.dataplane.engine.clone();
    let sim = api.create_sim().await;
    let imsi = imsi_of(&sim);
    let operator = server.root.operator_id.clone();
    let sim_id = SimId::new(sim["simId"].as_str().unwrap());
    assert!(engine.session(&imsi).is_some());
    on_store(server.running.store.clone(), move |store| {
        store
            .write_db(|db| {
                sims::set_termination_enabled(db, &operator, &sim_id, true)?;
                let (_, changes) = sims::terminate(db, &operator, &sim_id)?;
                let rows: Vec<OutboxChange> = changes.iter().map(OutboxChange::from).collect();
                outbox::record(db, &rows)
            })
            .unwrap()
    })
    .await;
    assert!(
        wait_for_peer(&engine, &imsi, false, Duration::from_secs(10)).await,
        "the follower removed the peer"
    );
    server.running.shutdown().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Commit→applied for 300 createSims written straight to the store, as the API writes them: on
/// SQLite woken as the API wakes its follower, on PostgreSQL by the NOTIFY after the commit only
/// (the path of a change from another node).
#[tokio::test]
async fn commit_to_applied_latency() {
    let server = TestServer::start().await;
    let engine = server.running.dataplane.engine.clone();
    let operator: OperatorId = server.root.operator_id.clone();
    let policy = arcd::bootstrap::session_policy(&arcd::config::Config::default());
    let mut latencies = Vec::new();
    for _ in 0..300 {
        let (operator, policy) = (operator.clone(), policy.clone());
        let (imsi, committed) = on_store(server.running.store.clone(), move |store| {
            let imsi = store
                .write_db(|db| {
                    let created =
                        sims::create_virtual(db, &operator, Coverage::Jp, "8942", &policy)?;
                    outbox::record(db, &[(&PeerChange::Upsert(created.session.clone())).into()])?;
                    Ok(created.session.imsi)
                })
                .unwrap();
            let committed = Instant::now();
            outbox::notify_followers(store);
            (imsi, committed)
        })
        .await;
        if !on_postgres() {
            server.running.follower.wake();
        }
        while engine.session(&imsi).is_none() {
            assert!(
                committed.elapsed() < Duration::from_secs(10),
                "never applied"
            );
            tokio::task::yield_now().await;
        }
        latencies.push(committed.elapsed());
    }
    latencies.sort();
    let engine_name = if on_postgres() { "postgres" } else { "sqlite" };
    eprintln!(
        "commit→applied ({engine_name}, {} changes): p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    server.running.shutdown().await;
}
