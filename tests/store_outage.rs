//! PostgreSQL out of reach (issue 14, item 5): established tunnels keep passing traffic, the API
//! answers 503 `{code, message}`, and everything resumes without a restart when the database is
//! back. The database "goes away" through a TCP relay the test cuts (support/tcp_proxy.rs), so the
//! shared test server stays up for the other tests. PostgreSQL only: SQLite cannot be unreachable
//! (scripts/test-postgres.sh runs this file, where it cannot return early).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::server::{Api, TestServer};
use support::store_engine::on_postgres;
use support::tcp_proxy::{redirect_postgres_url, TcpProxy};
use support::wgclient::{udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);

/// A device with a session, connected, and the address it sends from.
async fn connected_device(server: &TestServer, sim: &Value) -> (WgClient, Ipv4Addr) {
    let (mut device, ip) = WgClient::for_sim(sim, server.running.dataplane.udp_addrs[0].1).await;
    // A new peer reaches the data plane shortly after the API answered: retry the handshake.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let hello = udp_packet(ip, METADATA, 40000, 80, b"hello");
    while !device.connect(&hello, Duration::from_millis(500)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device never completed its handshake"
        );
    }
    (device, ip)
}

/// One packet each way through the tunnel (device → TUN, TUN → device).
async fn round_trip(server: &mut TestServer, device: &mut WgClient, ip: Ipv4Addr, tag: &[u8]) {
    let tun = server.running.tun_peer.as_mut().expect("memory TUN");
    // Drain what the handshake's first packet left.
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(50), tun.from_dataplane.recv()).await
    {}
    let up = udp_packet(ip, METADATA, 40000, 80, tag);
    device.send(&up).await;
    let inbound = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("the device's packet reaches the TUN")
        .expect("packet");
    assert_eq!(inbound, up);
    let down = udp_packet(METADATA, ip, 80, 40000, tag);
    tun.to_dataplane.send(down.clone()).await.expect("push");
    assert_eq!(device.recv(WAIT).await.as_deref(), Some(&down[..]));
}

/// Polls `GET path` until it answers `want`, within `limit`; returns the last body.
async fn until_status(api: &Api, path: &str, want: StatusCode, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = api.get(path).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path}: still {status} after {limit:?}, wanted {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_survive_a_lost_database_and_the_api_resumes_without_restart() {
    if !on_postgres() {
        eprintln!("store_outage: PostgreSQL only (run by scripts/test-postgres.sh)");
        return;
    }
    let url = std::env::var(support::store_engine::POSTGRES_URL_VAR).expect("url");
    let (upstream, _) = redirect_postgres_url(&url, "127.0.0.1:1".parse().unwrap());
    let proxy = TcpProxy::start(upstream).await;
    let mut server = TestServer::start_with(|config| {
        let schema_url = config.store.url.clone().expect("test schema URL");
        config.store.url = Some(redirect_postgres_url(&schema_url, proxy.addr).1);
    })
    .await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_path = format!("/v1/sims/{}", sim["simId"].as_str().expect("simId"));
    let (mut device, ip) = connected_device(&server, &sim).await;
    round_trip(&mut server, &mut device, ip, b"before").await;

    proxy.cut();
    let refused = until_status(&api, &sim_path, StatusCode::SERVICE_UNAVAILABLE, WAIT).await;
    assert_eq!(refused["code"], "COM0503", "{refused}");
    assert!(
        refused["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{refused}"
    );
    let (status, body) = api
        .post(
            "/v1/sims",
            serde_json::json!({"type": "virtual", "subscription": "planArc01"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    round_trip(&mut server, &mut device, ip, b"during").await;
    // Still passing after the store's retries and the data plane's own jobs ran into the outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    round_trip(&mut server, &mut device, ip, b"still during").await;

    proxy.restore();
    let back = until_status(&api, &sim_path, StatusCode::OK, Duration::from_secs(15)).await;
    assert_eq!(back["simId"], sim["simId"]);
    round_trip(&mut server, &mut device, ip, b"after").await;
    // Writes work again, and a device created now connects: nothing needed a restart.
    let second = api.create_sim().await;
    let (mut second_device, second_ip) = connected_device(&server, &second).await;
    round_trip(&mut server, &mut second_device, second_ip, b"new device").await;
    server.running.shutdown().await;
}
