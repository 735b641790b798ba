//! The VPG device-to-device switch driving the data plane, in-process: sessions joined to VPGs
//! through the HTTPS API, in-process boringtun clients over loopback UDP, the TUN in memory.
//! Traffic between two devices of a VPG flows only while its switch is on; devices outside it
//! (no VPG, or another VPG that allows it) never reach them; the switch survives a restart;
//! terminating a VPG removes it from the data plane's allowed set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::Ipv4Net;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::server::{test_config, Api, TestServer};
use support::wgclient::{payload_of, source_of, udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);
/// How long a packet that must not arrive is waited for.
const QUIET: Duration = Duration::from_millis(400);
const TOKYO: &str = "ap-northeast-1";

struct Device {
    ip: Ipv4Addr,
    private_key: String,
    server_key: String,
    client: WgClient,
}

async fn create_vpg(api: &Api, subnet: &str, device_to_device: bool) -> String {
    let (status, vpg) = api
        .post(
            "/v1/virtual_private_gateways",
            json!({"type": 14, "placement": {"region": TOKYO},
                   "deviceSubnetCidrRange": subnet, "arcdDeviceToDevice": device_to_device}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vpg}");
    assert_eq!(vpg["arcdDeviceToDevice"], json!(device_to_device));
    vpg["vpgId"].as_str().expect("vpgId").to_string()
}

async fn create_group(api: &Api, vpg_id: &str) -> String {
    let (status, group) = api
        .post(
            "/v1/groups",
            json!({"configuration": {"SoracomAir": {"vpgId": vpg_id}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    group["groupId"].as_str().expect("groupId").to_string()
}

async fn switch(api: &Api, vpg_id: &str, enabled: bool) {
    let (status, vpg) = api
        .put(
            &format!("/v1/arcd/virtual_private_gateways/{vpg_id}/device_to_device"),
            json!({"enabled": enabled}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{vpg}");
    assert_eq!(vpg["arcdDeviceToDevice"], json!(enabled));
}

fn server_udp(running: &arcd::server::Running) -> SocketAddr {
    running.dataplane.udp_addrs[0].1
}

/// A SIM whose session is in the group's VPG (a session joins its VPG only when (re-)created, so
/// the SIM is moved into the group and its session re-created), connected to the data plane.
async fn new_device(server: &mut TestServer, api: &Api, group: Option<(&str, Ipv4Net)>) -> Device {
    let mut sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let private_key = sim["profiles"][&sim_id]["arcClientPeerPrivateKey"]
        .as_str()
        .expect("private key")
        .to_string();
    if let Some((group_id, _)) = group {
        let (status, body) = api
            .post(
                &format!("/v1/sims/{sim_id}/set_group"),
                json!({"groupId": group_id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = api
            .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        sim = body;
    }
    let status: &Value = &sim["arcSessionStatus"];
    let ip: Ipv4Addr = status["arcClientPeerIpAddress"]
        .as_str()
        .expect("client ip")
        .parse()
        .expect("ipv4");
    if let Some((_, subnet)) = group {
        assert!(subnet.contains(&ip), "{ip} is not in the VPG's {subnet}");
    }
    let server_key = status["arcServerPeerPublicKey"]
        .as_str()
        .expect("server key")
        .to_string();
    let client = connect(server, &private_key, &server_key, ip).await;
    Device {
        ip,
        private_key,
        server_key,
        client,
    }
}

/// Handshakes with a first packet to the platform, which must come out of the TUN.
async fn connect(
    server: &mut TestServer,
    private_key: &str,
    server_key: &str,
    ip: Ipv4Addr,
) -> WgClient {
    let mut client = WgClient::new(private_key, server_key, server_udp(&server.running)).await;
    assert!(
        client
            .connect(&udp_packet(ip, METADATA, 1, 2, b"hello"), WAIT)
            .await,
        "handshake of {ip}"
    );
    let peer = server.running.tun_peer.as_mut().expect("memory TUN");
    let first = tokio::time::timeout(WAIT, peer.from_dataplane.recv())
        .await
        .ok()
        .flatten()
        .expect("first packet reaches the TUN");
    assert_eq!(source_of(&first), ip);
    client
}

fn denied(running: &arcd::server::Running) -> u64 {
    running
        .dataplane
        .engine
        .counters
        .peer_to_peer_denied
        .load(Ordering::Relaxed)
}

/// Sends `from` → `to`, which must be dropped by policy (the denial counter rises, nothing
/// arrives at `to`).
async fn assert_dropped(running: &arcd::server::Running, from: &mut Device, to: &mut Device) {
    let before = denied(running);
    from.client
        .send(&udp_packet(from.ip, to.ip, 5, 6, b"must not pass"))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while denied(running) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} -> {} was not denied",
            from.ip,
            to.ip
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(denied(running), before + 1);
    assert!(
        to.client.recv(QUIET).await.is_none(),
        "{} received a packet from {}",
        to.ip,
        from.ip
    );
}

async fn assert_delivered(from: &mut Device, to: &mut Device, payload: &[u8]) {
    from.client
        .send(&udp_packet(from.ip, to.ip, 7, 9, payload))
        .await;
    let packet = to
        .client
        .recv(WAIT)
        .await
        .unwrap_or_else(|| panic!("{} never received {:?} from {}", to.ip, payload, from.ip));
    assert_eq!(source_of(&packet), from.ip);
    assert_eq!(payload_of(&packet), payload);
}

#[tokio::test]
async fn device_to_device_follows_the_vpg_switch() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let lab_net: Ipv4Net = "10.201.0.0/24".parse().expect("net");
    let other_net: Ipv4Net = "10.202.0.0/24".parse().expect("net");
    let lab = create_vpg(&api, "10.201.0.0/24", false).await;
    let other = create_vpg(&api, "10.202.0.0/24", true).await;
    let lab_group = create_group(&api, &lab).await;
    let other_group = create_group(&api, &other).await;

    let mut a = new_device(&mut server, &api, Some((&lab_group, lab_net))).await;
    let mut b = new_device(&mut server, &api, Some((&lab_group, lab_net))).await;
    // Outside any VPG, and inside another VPG that lets its own devices talk.
    let mut outsider = new_device(&mut server, &api, None).await;
    let mut neighbour = new_device(&mut server, &api, Some((&other_group, other_net))).await;
    let engine = server.running.dataplane.engine.clone();
    assert!(!engine.allows_device_to_device(&lab.as_str().into()));
    assert!(
        engine.allows_device_to_device(&other.as_str().into()),
        "created with the switch on"
    );

    // Off (the default): isolated from each other.
    assert_dropped(&server.running, &mut a, &mut b).await;
    assert_dropped(&server.running, &mut b, &mut a).await;

    switch(&api, &lab, true).await;
    assert!(engine.allows_device_to_device(&lab.as_str().into()));
    assert_delivered(&mut a, &mut b, b"a to b").await;
    assert_delivered(&mut b, &mut a, b"b to a").await;
    for stranger in [&mut outsider, &mut neighbour] {
        assert_dropped(&server.running, stranger, &mut a).await;
        assert_dropped(&server.running, &mut a, stranger).await;
        assert_dropped(&server.running, stranger, &mut b).await;
    }

    // Switching it off again isolates them at once.
    switch(&api, &lab, false).await;
    assert!(!engine.allows_device_to_device(&lab.as_str().into()));
    assert_dropped(&server.running, &mut a, &mut b).await;
    assert_dropped(&server.running, &mut b, &mut a).await;
    // The other VPG's switch was never touched.
    assert!(engine.allows_device_to_device(&other.as_str().into()));
    server.running.shutdown().await;
}

#[tokio::test]
async fn terminating_a_vpg_removes_it_from_the_data_plane() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let vpg = create_vpg(&api, "10.203.0.0/24", true).await;
    let engine = server.running.dataplane.engine.clone();
    assert!(engine.allows_device_to_device(&vpg.as_str().into()));
    let (status, body) = api
        .post_empty(&format!("/v1/virtual_private_gateways/{vpg}/terminate"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!engine.allows_device_to_device(&vpg.as_str().into()));
    // A refused switch (the VPG is gone) leaves the data plane alone.
    let (status, _) = api
        .put(
            &format!("/v1/arcd/virtual_private_gateways/{vpg}/device_to_device"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!engine.allows_device_to_device(&vpg.as_str().into()));
    server.running.shutdown().await;
}

#[tokio::test]
async fn the_switch_survives_a_restart() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let lab_net: Ipv4Net = "10.201.0.0/24".parse().expect("net");
    let lab = create_vpg(&api, "10.201.0.0/24", true).await;
    let switched_off = create_vpg(&api, "10.202.0.0/24", true).await;
    switch(&api, &switched_off, false).await;
    let switched_on = create_vpg(&api, "10.203.0.0/24", false).await;
    switch(&api, &switched_on, true).await;
    let terminated = create_vpg(&api, "10.204.0.0/24", true).await;
    let (status, body) = api
        .post_empty(&format!(
            "/v1/virtual_private_gateways/{terminated}/terminate"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let group = create_group(&api, &lab).await;
    let mut a = new_device(&mut server, &api, Some((&group, lab_net))).await;
    let mut b = new_device(&mut server, &api, Some((&group, lab_net))).await;
    assert_delivered(&mut a, &mut b, b"before restart").await;

    // Stop, and start again on the same data directory (the temp dir lives on in `server`).
    server.running.shutdown().await;
    let dir = server
        .data_dir
        .parent()
        .expect("data dir parent")
        .to_path_buf();
    let mut running = arcd::server::start(test_config(&dir))
        .await
        .expect("arcd restarts");
    assert!(
        running.new_root_credentials.is_none(),
        "same data directory"
    );
    let engine = running.dataplane.engine.clone();
    assert!(engine.allows_device_to_device(&lab.as_str().into()));
    assert!(engine.allows_device_to_device(&switched_on.as_str().into()));
    assert!(!engine.allows_device_to_device(&switched_off.as_str().into()));
    assert!(!engine.allows_device_to_device(&terminated.as_str().into()));

    // The persisted sessions and keys come back, and the devices still reach each other.
    let udp = server_udp(&running);
    for device in [&mut a, &mut b] {
        device.client = WgClient::new(&device.private_key, &device.server_key, udp).await;
        assert!(
            device
                .client
                .connect(&udp_packet(device.ip, METADATA, 1, 2, b"back"), WAIT)
                .await
        );
        let peer = running.tun_peer.as_mut().expect("memory TUN");
        let first = tokio::time::timeout(WAIT, peer.from_dataplane.recv())
            .await
            .ok()
            .flatten()
            .expect("first packet after restart");
        assert_eq!(source_of(&first), device.ip);
    }
    assert_delivered(&mut a, &mut b, b"after restart").await;
    assert_delivered(&mut b, &mut a, b"and back").await;
    assert_eq!(
        running
            .dataplane
            .engine
            .counters
            .peer_to_peer_denied
            .load(Ordering::Relaxed),
        0
    );
    running.shutdown().await;
}
