//! The data plane end to end inside the test process: sessions made through the HTTPS API, an
//! in-process boringtun client talking to arcd over loopback UDP, the TUN replaced by memory.

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

use serde_json::Value;
use support::server::{Api, TestServer};
use support::wgclient::{destination_of, payload_of, source_of, udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);

struct Device {
    sim_id: String,
    ip: Ipv4Addr,
    client: WgClient,
}

fn server_udp(server: &TestServer) -> SocketAddr {
    server.running.dataplane.udp_addrs[0].1
}

async fn new_device(server: &TestServer, api: &Api) -> Device {
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let private = sim["profiles"][&sim_id]["arcClientPeerPrivateKey"]
        .as_str()
        .expect("private key")
        .to_string();
    device_with_key(server, &sim, &private).await
}

async fn device_with_key(server: &TestServer, sim: &Value, private_key: &str) -> Device {
    let status = &sim["arcSessionStatus"];
    let ip: Ipv4Addr = status["arcClientPeerIpAddress"]
        .as_str()
        .expect("client ip")
        .parse()
        .expect("ipv4");
    let client = WgClient::new(
        private_key,
        status["arcServerPeerPublicKey"]
            .as_str()
            .expect("server key"),
        server_udp(server),
    )
    .await;
    Device {
        sim_id: sim["simId"].as_str().expect("simId").to_string(),
        ip,
        client,
    }
}

/// Takes the next packet the data plane wrote to the (memory) TUN.
async fn from_tun(server: &mut TestServer) -> Option<Vec<u8>> {
    let peer = server.running.tun_peer.as_mut().expect("memory TUN");
    tokio::time::timeout(WAIT, peer.from_dataplane.recv())
        .await
        .ok()
        .flatten()
}

async fn to_tun(server: &TestServer, packet: Vec<u8>) {
    let peer = server.running.tun_peer.as_ref().expect("memory TUN");
    peer.to_dataplane.send(packet).await.expect("push packet");
}

#[tokio::test]
async fn handshake_and_traffic_both_ways_right_after_create() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let started = std::time::Instant::now();
    let mut device = new_device(&server, &api).await;
    let hello = udp_packet(device.ip, METADATA, 40000, 80, b"hello arcd");
    assert!(
        device.client.connect(&hello, WAIT).await,
        "handshake completes"
    );
    let handshake_took = started.elapsed();
    let inbound = from_tun(&mut server).await.expect("packet reaches the TUN");
    assert_eq!(source_of(&inbound), device.ip);
    assert_eq!(destination_of(&inbound), METADATA);
    assert_eq!(payload_of(&inbound), b"hello arcd");
    eprintln!("createSim 201 to first packet through: {handshake_took:?}");

    // Reply from the platform side, routed by destination to the device.
    to_tun(
        &server,
        udp_packet(METADATA, device.ip, 80, 40000, b"hello device"),
    )
    .await;
    let reply = device
        .client
        .recv(WAIT)
        .await
        .expect("reply reaches the device");
    assert_eq!(payload_of(&reply), b"hello device");

    // Live stats appear on getSim as the arcd extension.
    let (_, sim) = api.get(&format!("/v1/sims/{}", device.sim_id)).await;
    let stats = &sim["arcdSessionStats"];
    assert_eq!(stats["deviceOnline"], Value::Bool(true), "{sim}");
    assert!(stats["lastHandshakeAt"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(
        stats["deviceEndpoint"].as_str(),
        Some(
            device
                .client
                .socket
                .local_addr()
                .expect("addr")
                .to_string()
                .as_str()
        )
    );
    assert!(stats["rxBytes"].as_u64().is_some_and(|n| n > 0));
    assert!(stats["txBytes"].as_u64().is_some_and(|n| n > 0));
    server.running.shutdown().await;
}

#[tokio::test]
async fn spoofed_inner_source_is_dropped_and_counted() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let mut device = new_device(&server, &api).await;
    let other = new_device(&server, &api).await;
    let hello = udp_packet(device.ip, METADATA, 1, 2, b"ok");
    assert!(device.client.connect(&hello, WAIT).await);
    assert!(from_tun(&mut server).await.is_some());
    let spoofed = udp_packet(other.ip, METADATA, 1, 2, b"spoof");
    device.client.send(&spoofed).await;
    let counters = &server.running.dataplane.engine.counters;
    let deadline = std::time::Instant::now() + WAIT;
    while counters.spoofed_source.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "spoofed packet not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counters.spoofed_source.load(Ordering::Relaxed), 1);
    let peer = server.running.tun_peer.as_mut().expect("memory TUN");
    assert!(
        peer.from_dataplane.try_recv().is_err(),
        "nothing spoofed reaches the TUN"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn devices_outside_a_vpg_cannot_reach_each_other() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let mut a = new_device(&server, &api).await;
    let mut b = new_device(&server, &api).await;
    assert!(
        b.client
            .connect(&udp_packet(b.ip, METADATA, 1, 2, b"b"), WAIT)
            .await
    );
    assert!(from_tun(&mut server).await.is_some());
    assert!(
        a.client
            .connect(&udp_packet(a.ip, b.ip, 1, 2, b"to b"), WAIT)
            .await
    );
    assert!(b.client.recv(Duration::from_millis(500)).await.is_none());
    let counters = &server.running.dataplane.engine.counters;
    assert_eq!(counters.peer_to_peer_denied.load(Ordering::Relaxed), 1);
    server.running.shutdown().await;
}

#[tokio::test]
async fn delete_session_forces_a_new_handshake_and_traffic_resumes() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let mut device = new_device(&server, &api).await;
    assert!(
        device
            .client
            .connect(&udp_packet(device.ip, METADATA, 1, 2, b"one"), WAIT)
            .await
    );
    assert!(from_tun(&mut server).await.is_some());
    let (_, sim) = api.get(&format!("/v1/sims/{}", device.sim_id)).await;
    let before_ms = sim["arcdSessionStats"]["lastHandshakeAt"]
        .as_i64()
        .expect("handshake");
    // lastHandshakeAt has millisecond resolution; make "after" distinguishable from "before".
    tokio::time::sleep(Duration::from_millis(20)).await;

    let started = std::time::Instant::now();
    let reset_at = std::time::SystemTime::now();
    let (status, _) = api
        .post_empty(&format!("/v1/sims/{}/delete_session", device.sim_id))
        .await;
    assert_eq!(status, 200);
    // The server starts the new handshake itself; the device answers it while receiving.
    to_tun(
        &server,
        udp_packet(METADATA, device.ip, 2, 1, b"after reset"),
    )
    .await;
    let mut resumed = false;
    for _ in 0..10 {
        if let Some(packet) = device.client.recv(Duration::from_millis(300)).await {
            resumed = payload_of(&packet) == b"after reset";
            if resumed {
                break;
            }
        }
        to_tun(
            &server,
            udp_packet(METADATA, device.ip, 2, 1, b"after reset"),
        )
        .await;
    }
    assert!(resumed, "traffic resumes over a new session");
    let reset_at_ms = reset_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let (_, sim) = api.get(&format!("/v1/sims/{}", device.sim_id)).await;
    let handshake_at = sim["arcdSessionStats"]["lastHandshakeAt"]
        .as_i64()
        .expect("handshake");
    assert!(
        handshake_at >= reset_at_ms - 1000 && handshake_at >= before_ms,
        "a new handshake happened after the reset ({before_ms} -> {handshake_at}, reset {reset_at_ms})"
    );
    eprintln!("delete_session to traffic resumed: {:?}", started.elapsed());
    server.running.shutdown().await;
}

#[tokio::test]
async fn renewed_key_replaces_the_old_one_at_once() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let mut device = new_device(&server, &api).await;
    assert!(
        device
            .client
            .connect(&udp_packet(device.ip, METADATA, 1, 2, b"old"), WAIT)
            .await
    );
    assert!(from_tun(&mut server).await.is_some());

    let (status, renewed) = api
        .put(
            &format!("/v1/sims/{}/credentials/arc", device.sim_id),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    // The old key can neither use its session nor make a new one.
    device
        .client
        .send(&udp_packet(device.ip, METADATA, 1, 2, b"stale"))
        .await;
    let (_, sim) = api.get(&format!("/v1/sims/{}", device.sim_id)).await;
    let mut old_key_again = device_with_key(&server, &sim, &device.client.private_key).await;
    assert!(
        !old_key_again
            .client
            .connect(
                &udp_packet(device.ip, METADATA, 1, 2, b"old again"),
                Duration::from_millis(700)
            )
            .await,
        "the old key gets no handshake"
    );
    let peer = server.running.tun_peer.as_mut().expect("memory TUN");
    assert!(
        peer.from_dataplane.try_recv().is_err(),
        "nothing from the old key reaches the TUN"
    );

    let new_private = renewed["arcClientPeerPrivateKey"]
        .as_str()
        .expect("server-made pair");
    let mut renewed_device = device_with_key(&server, &sim, new_private).await;
    assert!(
        renewed_device
            .client
            .connect(&udp_packet(device.ip, METADATA, 1, 2, b"new"), WAIT)
            .await
    );
    let inbound = from_tun(&mut server).await.expect("new key works");
    assert_eq!(payload_of(&inbound), b"new");
    server.running.shutdown().await;
}

#[tokio::test]
async fn terminated_sim_gets_no_handshake() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let private = sim["profiles"][&sim_id]["arcClientPeerPrivateKey"]
        .as_str()
        .expect("key")
        .to_string();
    for path in ["enable_termination", "terminate"] {
        let (status, body) = api.post_empty(&format!("/v1/sims/{sim_id}/{path}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut device = device_with_key(&server, &sim, &private).await;
    assert!(
        !device
            .client
            .connect(
                &udp_packet(device.ip, METADATA, 1, 2, b"x"),
                Duration::from_millis(700)
            )
            .await
    );
    assert!(server
        .running
        .tun_peer
        .as_mut()
        .expect("tun")
        .from_dataplane
        .try_recv()
        .is_err());
    server.running.shutdown().await;
}

/// Datagrams the listener dropped as malformed, from an unknown peer or failing the noise checks.
fn rejected(counters: &arcd::dataplane::engine::Counters) -> u64 {
    counters.malformed.load(Ordering::Relaxed)
        + counters.unknown_peer.load(Ordering::Relaxed)
        + counters.wireguard_errors.load(Ordering::Relaxed)
}

/// Malformed datagrams (truncated and bit-flipped copies of real messages) and a flood of
/// replayed initiations, through the real sockets. Random sequences of such garbage against the
/// engine itself are the reference-model property test's job (src/dataplane/engine_model_tests.rs).
#[tokio::test]
async fn malformed_and_replayed_datagrams_never_break_the_listener() {
    // A small handshake queue, so that a few hundred replays put the worker under load.
    let mut server = TestServer::start_with(|c| c.dataplane.handshake_queue = Some(32)).await;
    let api = server.login().await;
    let mut device = new_device(&server, &api).await;
    assert!(
        device
            .client
            .connect(&udp_packet(device.ip, METADATA, 1, 2, b"pre"), WAIT)
            .await
    );
    assert!(from_tun(&mut server).await.is_some());

    // Capture real messages to mutate: a handshake initiation and a data packet.
    let mut valid = Vec::new();
    let mut buf = vec![0u8; 2048];
    if let boringtun::noise::TunnResult::WriteToNetwork(d) = device
        .client
        .tunn
        .format_handshake_initiation(&mut buf, true)
    {
        valid.push(d.to_vec());
    }
    if let boringtun::noise::TunnResult::WriteToNetwork(d) = device
        .client
        .tunn
        .encapsulate(&udp_packet(device.ip, METADATA, 1, 2, b"data"), &mut buf)
    {
        valid.push(d.to_vec());
    }
    assert_eq!(valid.len(), 2);
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // (An empty datagram never reaches the engine: the receive loop hands over no chunk.)
    let mut malformed: Vec<Vec<u8>> = vec![vec![1], vec![4, 0, 0, 0], vec![9; 148]];
    for message in &valid {
        for len in [1, 4, 16, 31, message.len() / 2, message.len() - 1] {
            malformed.push(message[..len].to_vec());
        }
        // Type byte, reserved byte, inside the key or ciphertext, inside mac1 or the tag: each
        // must fail a check (a flip in mac2 would leave a valid initiation, a flip in a data
        // packet's counter could read as a replay, which is not counted).
        for bit in [0, 9, 8 * 16 + 3, 8 * (message.len() - 20) + 5] {
            let mut flipped = message.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            malformed.push(flipped);
        }
    }
    for datagram in &malformed {
        attacker
            .send_to(datagram, server_udp(&server))
            .await
            .expect("send");
    }
    // Every malformed datagram is dropped and counted (before the flood, whose replays count too).
    let deadline = std::time::Instant::now() + WAIT;
    while rejected(&server.running.dataplane.engine.counters) < malformed.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "malformed datagrams not all rejected: {:?}",
            server.running.dataplane.engine.counters
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A burst of replayed (mac1-valid) initiations fills the handshake queue past half (each
    // costs a key agreement to reject, reading one costs a MAC): the listener is under load and
    // must answer with cookies instead of queueing more handshakes.
    for _ in 0..300 {
        attacker
            .send_to(&valid[0], server_udp(&server))
            .await
            .expect("send");
    }
    // Wait until the listener answers the flood with cookies.
    let deadline = std::time::Instant::now() + WAIT;
    let cookies = |server: &TestServer| {
        let counters = &server.running.dataplane.engine.counters;
        counters.cookie_replies.load(Ordering::Relaxed)
    };
    while cookies(&server) == 0 {
        assert!(std::time::Instant::now() < deadline, "no cookie reply");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The established session still carries traffic, and a fresh handshake still works.
    device
        .client
        .send(&udp_packet(device.ip, METADATA, 1, 2, b"after fuzz"))
        .await;
    let inbound = from_tun(&mut server).await.expect("session survives");
    assert_eq!(payload_of(&inbound), b"after fuzz");
    // Under the flood the listener demanded cookies; a new device still gets through.
    let mut second = new_device(&server, &api).await;
    assert!(
        second
            .client
            .connect(&udp_packet(second.ip, METADATA, 1, 2, b"new"), WAIT)
            .await
    );
    let counters = &server.running.dataplane.engine.counters;
    assert!(
        counters.cookie_replies.load(Ordering::Relaxed) > 0,
        "{counters:?}"
    );
    assert!(
        rejected(counters) >= malformed.len() as u64,
        "garbage was seen and rejected: {counters:?}"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn two_clients_in_an_allowing_vpg_talk_over_loopback() {
    use arcd::dataplane::{Dataplane, ListenerConfig, MemoryTun, PeerChanges, WorkerOptions};
    use arcd::store::ActiveSession;

    let server_pair = arcd::wgkey::generate();
    let devices: Vec<(arcd::wgkey::KeyPair, ActiveSession)> = (2..=3u8)
        .map(|n| {
            let pair = arcd::wgkey::generate();
            let session = ActiveSession {
                imsi: format!("99999000000000{n}").into(),
                primary_imsi: format!("99999000000000{n}").into(),
                sim_id: format!("sim{n}").into(),
                operator_id: "OP0000000001".into(),
                session_id: format!("s{n}"),
                rp_id: "ap-northeast-1".into(),
                client_public_key: pair.public_key.clone(),
                client_ip: Ipv4Addr::new(10, 128, 0, n),
                group_id: None,
                vpg_id: Some("vpg-lab".into()),
            };
            (pair, session)
        })
        .collect();
    let sessions = devices.iter().map(|(_, s)| s.clone()).collect();
    let (_changes, rx) = PeerChanges::channel();
    let (tun, _tun_peer) = MemoryTun::pair();
    let dataplane = Dataplane::start(
        vec![ListenerConfig {
            rp_id: "ap-northeast-1".into(),
            bind: "127.0.0.1:0".parse().expect("addr"),
            private_key: arcd::wgkey::parse_key(&server_pair.private_key).expect("key"),
        }],
        tun,
        sessions,
        rx,
        Vec::new(),
        WorkerOptions::workers(1),
    )
    .expect("data plane starts");
    dataplane.engine.set_vpgs(&[arcd::store::vpgs::RunningVpg {
        vpg_id: "vpg-lab".into(),
        device_subnet: "10.128.0.0/9".parse().expect("net"),
        device_to_device: true,
        use_internet_gateway: true,
    }]);
    let udp = dataplane.udp_addrs[0].1;
    let (a_ip, b_ip) = (devices[0].1.client_ip, devices[1].1.client_ip);
    let mut a = WgClient::new(&devices[0].0.private_key, &server_pair.public_key, udp).await;
    let mut b = WgClient::new(&devices[1].0.private_key, &server_pair.public_key, udp).await;
    assert!(
        b.connect(&udp_packet(b_ip, a_ip, 1, 2, b"b is here"), WAIT)
            .await
    );
    // a's first packet rides behind its handshake and is forwarded to b inside the data plane.
    assert!(
        a.connect(&udp_packet(a_ip, b_ip, 7, 9, b"hello b"), WAIT)
            .await
    );
    let at_b = b.recv(WAIT).await.expect("b receives a's packet");
    assert_eq!(source_of(&at_b), a_ip);
    assert_eq!(payload_of(&at_b), b"hello b");
    b.send(&udp_packet(b_ip, a_ip, 9, 7, b"hello a")).await;
    let at_a = a.recv(WAIT).await.expect("a receives b's answer");
    assert_eq!(payload_of(&at_a), b"hello a");
}

#[tokio::test]
async fn a_burst_from_the_tun_reaches_each_device_complete_and_in_order() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let mut first = new_device(&server, &api).await;
    let mut second = new_device(&server, &api).await;
    for device in [&mut first, &mut second] {
        let hello = udp_packet(device.ip, METADATA, 1, 2, b"hi");
        assert!(device.client.connect(&hello, WAIT).await);
        // The responder may send only once the device's first data packet confirmed the keys.
        let confirmed = from_tun(&mut server).await.expect("first packet through");
        assert_eq!(source_of(&confirmed), device.ip);
    }
    // Equal-size packets (one GSO train per device), a shorter one now and then (ends a train),
    // and the two devices interleaved (a train never mixes peers).
    const BURST: usize = 200;
    let payload = |n: usize| {
        let size = if n.is_multiple_of(37) { 60 } else { 400 };
        let mut bytes = format!("{n:06}").into_bytes();
        bytes.resize(size, b'x');
        bytes
    };
    for n in 0..BURST {
        let to = if n % 50 < 40 { &first } else { &second };
        to_tun(&server, udp_packet(METADATA, to.ip, 80, 40000, &payload(n))).await;
    }
    for (device, wanted) in [
        (
            &mut first,
            (0..BURST).filter(|n| n % 50 < 40).collect::<Vec<_>>(),
        ),
        (
            &mut second,
            (0..BURST).filter(|n| n % 50 >= 40).collect::<Vec<_>>(),
        ),
    ] {
        for n in wanted {
            let packet = device
                .client
                .recv(WAIT)
                .await
                .unwrap_or_else(|| panic!("packet {n} never arrived"));
            assert_eq!(payload_of(&packet), payload(n).as_slice(), "packet {n}");
        }
    }
    server.running.shutdown().await;
}
