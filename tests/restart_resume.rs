//! After a clean restart, arcd itself starts the WireGuard handshake toward each device's last
//! known endpoint: a device that does nothing on its own (no keepalive, no new initiation, as a
//! sleeping device or one whose rekey timer is far off) passes traffic again within 2 s.

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

use arcd::server;
use boringtun::noise::TunnResult;
use support::server::{test_config, TestServer};
use support::wgclient::{payload_of, source_of, udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);
/// Issue 12's bound: traffic again within 2 s of the restart.
const RESUME_BOUND: Duration = Duration::from_secs(2);
const HANDSHAKE_INITIATION: u8 = 1;

/// A UDP port free right now, so both runs listen where the device sends (as a configured
/// rendezvous point does).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn restarted_arcd_initiates_the_handshake_and_the_idle_device_passes_traffic() {
    let wg_listen: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let mut first = TestServer::start_with(|c| c.rendezvous_points[0].listen = wg_listen).await;
    let api = first.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let status = &sim["arcSessionStatus"];
    let ip: Ipv4Addr = status["arcClientPeerIpAddress"]
        .as_str()
        .expect("client ip")
        .parse()
        .expect("ipv4");
    let mut device = WgClient::new(
        sim["profiles"][sim_id]["arcClientPeerPrivateKey"]
            .as_str()
            .expect("private key"),
        status["arcServerPeerPublicKey"]
            .as_str()
            .expect("server key"),
        wg_listen,
    )
    .await;
    let hello = udp_packet(ip, METADATA, 40000, 80, b"before restart");
    assert!(device.connect(&hello, WAIT).await, "first handshake");
    let tun = first.running.tun_peer.as_mut().expect("memory TUN");
    let inbound = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("packet reaches the TUN in time")
        .expect("TUN open");
    assert_eq!(payload_of(&inbound), b"before restart");

    first.running.shutdown().await;
    let config = test_config(first.data_dir.parent().expect("data dir parent"));
    let mut config = config;
    config.rendezvous_points[0].listen = wg_listen;

    let restarted = Instant::now();
    let mut second = server::start(config).await.expect("arcd starts again");
    // The device only answers what arrives, as a WireGuard peer does.
    let mut datagram = vec![0u8; 2048];
    let mut buf = vec![0u8; 2048];
    let (len, from) = tokio::time::timeout(RESUME_BOUND, device.socket.recv_from(&mut datagram))
        .await
        .expect("arcd sends a handshake initiation to the device within 2 s of starting")
        .expect("recv");
    assert_eq!(datagram[0], HANDSHAKE_INITIATION, "a handshake initiation");
    assert_eq!(from, wg_listen, "from the rendezvous point's address");
    match device
        .tunn
        .decapsulate(Some(from.ip()), &datagram[..len], &mut buf)
    {
        TunnResult::WriteToNetwork(response) => {
            device.socket.send_to(response, from).await.expect("send");
        }
        _ => panic!("the device cannot answer arcd's initiation"),
    }

    // Both directions pass on the new session.
    let tun = second.tun_peer.as_mut().expect("memory TUN");
    tun.to_dataplane
        .send(udp_packet(METADATA, ip, 80, 40000, b"after restart"))
        .await
        .expect("push packet");
    let reply = device
        .recv(RESUME_BOUND.saturating_sub(restarted.elapsed()))
        .await
        .expect("the platform's packet reaches the device within 2 s of the restart");
    assert_eq!(payload_of(&reply), b"after restart");
    device
        .send(&udp_packet(ip, METADATA, 40000, 80, b"device again"))
        .await;
    let inbound = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("device packet reaches the TUN in time")
        .expect("TUN open");
    assert_eq!(source_of(&inbound), ip);
    assert_eq!(payload_of(&inbound), b"device again");
    let took = restarted.elapsed();
    eprintln!("restart to traffic both ways, device idle: {took:?}");
    assert!(took < RESUME_BOUND, "took {took:?}");
    second.shutdown().await;
}
