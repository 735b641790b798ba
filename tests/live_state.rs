//! Live state across nodes (PostgreSQL only): node A serves the API and no rendezvous point, node B
//! serves every rendezvous point and no API, both on one schema. A device handshakes with B and
//! passes traffic; A's getSim and listSims show it online with its traffic from the figures B
//! publishes; once B stops, A shows it offline after the silence threshold, keeping the figures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use arcd::store::live::SILENT_AFTER;
use serde_json::Value;
use support::server::{test_config, Api, TestServer};
use support::store_engine::on_postgres;
use support::wgclient::{payload_of, udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);

/// Polls A's getSim until `done` holds for its `arcdSessionStats`, or fails at the deadline.
async fn sim_until(api: &Api, sim_id: &str, within: Duration, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let (status, sim) = api.get(&format!("/v1/sims/{sim_id}")).await;
        assert_eq!(status, 200, "{sim}");
        if done(&sim["arcdSessionStats"]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "getSim on the API node did not get there within {within:?}: {sim}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn online_with_traffic(stats: &Value) -> bool {
    stats["deviceOnline"] == Value::Bool(true)
        && stats["rxBytes"].as_u64().is_some_and(|n| n > 0)
        && stats["txBytes"].as_u64().is_some_and(|n| n > 0)
}

#[tokio::test]
async fn an_api_node_shows_the_live_state_an_rp_node_publishes() {
    if !on_postgres() {
        eprintln!(
            "live_state: PostgreSQL only; run it with scripts/test-postgres.sh --test live_state"
        );
        return;
    }
    let mut shared_url = None;
    let node_a = TestServer::start_with(|config| {
        config.node.api = true;
        config.node.rendezvous_points = Vec::new();
        shared_url = config.store.url.clone();
    })
    .await;
    assert!(node_a.running.dataplane.udp_addrs.is_empty());
    let api = node_a.login().await;
    // B loads sessions at its start: the SIM exists before it.
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    assert!(
        sim.get("arcdSessionStats").is_none(),
        "A holds no peer: {sim}"
    );

    let dir_b = tempfile::tempdir().unwrap();
    let mut config_b = test_config(dir_b.path());
    config_b.node.api = false;
    config_b.node.rendezvous_points = vec!["*".into()];
    config_b.store.url = shared_url;
    let mut node_b = arcd::server::start(config_b).await.expect("node B starts");
    assert_eq!(node_b.api_addr, None);

    let (mut device, device_ip) = WgClient::for_sim(&sim, node_b.dataplane.udp_addrs[0].1).await;
    let started = Instant::now();
    let hello = udp_packet(device_ip, METADATA, 40000, 80, b"hello node B");
    assert!(device.connect(&hello, WAIT).await, "handshake with node B");
    let tun = node_b.tun_peer.as_mut().expect("memory TUN");
    let inbound = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("packet reaches B's TUN")
        .expect("TUN open");
    assert_eq!(payload_of(&inbound), b"hello node B");
    tun.to_dataplane
        .send(udp_packet(METADATA, device_ip, 80, 40000, b"hello device"))
        .await
        .unwrap();
    let reply = device.recv(WAIT).await.expect("reply from B");
    assert_eq!(payload_of(&reply), b"hello device");

    // Published within one period and a commit; 10 s leaves room for a loaded machine.
    sim_until(&api, &sim_id, Duration::from_secs(10), online_with_traffic).await;
    eprintln!(
        "handshake on B to online with traffic on A: {:?}",
        started.elapsed()
    );
    let (_, sim) = api.get(&format!("/v1/sims/{sim_id}")).await;
    let stats = sim["arcdSessionStats"].clone();
    assert_eq!(
        stats["deviceEndpoint"].as_str(),
        Some(device.socket.local_addr().unwrap().to_string().as_str())
    );
    assert!(stats["lastHandshakeAt"].as_i64().is_some_and(|t| t > 0));
    // "Last seen" (the device's latest packet, here its data after the handshake) reaches the
    // API-only node too, never before the handshake.
    assert!(
        stats["lastSeenAt"].as_i64() >= stats["lastHandshakeAt"].as_i64(),
        "{stats}"
    );
    let (_, page) = api.get("/v1/sims").await;
    let listed = page
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["simId"] == sim_id.as_str())
        .expect("listed");
    assert!(online_with_traffic(&listed["arcdSessionStats"]), "{listed}");

    // The web page's network view: the caller's devices at the rendezvous point B serves.
    let (_, rps) = api.get("/v1/arcd/rendezvous_points").await;
    let tokyo = rps
        .as_array()
        .expect("list")
        .iter()
        .find(|rp| rp["rendezvousPointId"] == "ap-northeast-1")
        .expect("ap-northeast-1");
    assert_eq!(tokyo["sessions"], 1, "{tokyo}");
    assert_eq!(tokyo["onlineDevices"], 1, "{tokyo}");
    assert_eq!(tokyo["rxBytes"], stats["rxBytes"], "{tokyo}");
    assert_eq!(tokyo["txBytes"], stats["txBytes"], "{tokyo}");

    // A clean stop publishes once more; then B is silent and A shows the device offline after
    // the threshold, with the last figures kept.
    node_b.shutdown().await;
    let stopped = Instant::now();
    let (_, sim) = api.get(&format!("/v1/sims/{sim_id}")).await;
    assert!(
        online_with_traffic(&sim["arcdSessionStats"]),
        "still online right after the stop, before the silence threshold: {sim}"
    );
    sim_until(
        &api,
        &sim_id,
        SILENT_AFTER + Duration::from_secs(5),
        |stats| stats["deviceOnline"] == Value::Bool(false),
    )
    .await;
    let silent_after = stopped.elapsed();
    eprintln!("B stopped to offline on A: {silent_after:?} (threshold {SILENT_AFTER:?})");
    assert!(silent_after >= SILENT_AFTER - Duration::from_secs(2));
    let (_, sim) = api.get(&format!("/v1/sims/{sim_id}")).await;
    let last = &sim["arcdSessionStats"];
    assert_eq!(last["lastHandshakeAt"], stats["lastHandshakeAt"], "{sim}");
    assert!(last["rxBytes"].as_u64().is_some_and(|n| n > 0), "{sim}");
    let (_, rps) = api.get("/v1/arcd/rendezvous_points").await;
    assert_eq!(rps[0]["onlineDevices"], 0, "{rps}");
    node_a.running.shutdown().await;
}
