//! The Prometheus metrics listener: off by default; when on, a scrape after real API calls, a
//! WireGuard handshake and traffic (in-process boringtun client over loopback UDP) and a Harvest
//! entry shows the counters moved by exactly what was done.
//!
//! The API, service and store counters are process-wide, so this binary runs one server that
//! makes requests at a time: the off-by-default test makes no API or service request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use arcd::services::harvest;
use serde_json::json;
use support::server::TestServer;
use support::wgclient::{udp_packet, WgClient};

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(3);
const RP: &str = "ap-northeast-1";

/// `name{labels}` → value of every sample in a text-format scrape.
type Samples = HashMap<String, f64>;

async fn scrape(addr: SocketAddr) -> Samples {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics answer");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = response.text().await.expect("body");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            (key.to_string(), value.parse().expect("number"))
        })
        .collect()
}

fn value(samples: &Samples, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

fn delta(before: &Samples, after: &Samples, key: &str) -> f64 {
    value(after, key) - value(before, key)
}

#[tokio::test]
async fn metrics_move_with_api_calls_tunnel_traffic_and_harvest() {
    let mut server = TestServer::start_with(|config| {
        config.metrics.enabled = true;
        config.metrics.listen = "127.0.0.1:0".parse().expect("literal address");
    })
    .await;
    let metrics = server.running.metrics_addr.expect("metrics listener");
    let before = scrape(metrics).await;
    assert_eq!(
        value(
            &before,
            &format!(
                "arcd_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );

    // API: one auth, one createSim, one request to a path no route matches.
    let api = server.login().await;
    let sim = api.create_sim().await;
    let (status, _) = api.get("/v1/no/such/path/12345").await;
    assert_eq!(status, 404);

    // Tunnel: handshake, one packet from the device, one back to it.
    let sim_id = sim["simId"].as_str().expect("simId");
    let private = sim["profiles"][sim_id]["arcClientPeerPrivateKey"]
        .as_str()
        .expect("private key");
    let session = &sim["arcSessionStatus"];
    let ip: Ipv4Addr = session["arcClientPeerIpAddress"]
        .as_str()
        .expect("client ip")
        .parse()
        .expect("ipv4");
    let mut device = WgClient::new(
        private,
        session["arcServerPeerPublicKey"].as_str().expect("key"),
        server.running.dataplane.udp_addrs[0].1,
    )
    .await;
    let hello = udp_packet(ip, METADATA, 40000, 80, b"hello metrics");
    assert!(device.connect(&hello, WAIT).await, "handshake completes");
    let tun = server.running.tun_peer.as_mut().expect("memory TUN");
    let inbound = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("packet reaches the TUN in time")
        .expect("packet");
    assert_eq!(inbound, hello);
    let reply = udp_packet(METADATA, ip, 80, 40000, b"hello device");
    tun.to_dataplane
        .send(reply.clone())
        .await
        .expect("push packet");
    assert_eq!(device.recv(WAIT).await.as_deref(), Some(&reply[..]));
    // A packet claiming another source is dropped; the next good one shows it was handled
    // (one socket, one receive task: in order).
    device
        .send(&udp_packet(
            Ipv4Addr::new(10, 9, 9, 9),
            METADATA,
            1,
            2,
            b"spoof",
        ))
        .await;
    let after_spoof = udp_packet(ip, METADATA, 40000, 80, b"still here");
    device.send(&after_spoof).await;
    let next = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("good packet after the spoofed one")
        .expect("packet");
    assert_eq!(next, after_spoof);

    // Harvest: one entry written, one refused (empty message).
    let (status, group) = api
        .post(
            "/v1/groups",
            json!({"tags": {"name": "metrics"}, "configuration": {"SoracomHarvest": {"enabled": true}}}),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let (status, body) = api
        .post(
            &format!("/v1/sims/{sim_id}/set_group"),
            json!({"groupId": group["groupId"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ctx = server.running.services.clone();
    let from = SocketAddr::from((ip, 5555));
    assert_eq!(
        harvest::store_raw(&ctx, from, b"{\"t\":21}\n").await,
        b"201\n"
    );
    assert_eq!(harvest::store_raw(&ctx, from, b"\n").await, b"400\n");

    let after = scrape(metrics).await;
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(
        d("arcd_api_requests_total{operation=\"createSim\",status=\"201\"}"),
        1.0
    );
    assert_eq!(
        d("arcd_api_requests_total{operation=\"auth\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        d("arcd_api_requests_total{operation=\"unmatched\",status=\"404\"}"),
        1.0,
        "unknown paths share one label"
    );
    assert!(
        !after.keys().any(|k| k.contains("no/such/path")),
        "never the raw path"
    );
    assert_eq!(
        d("arcd_api_request_duration_seconds_count{operation=\"createSim\"}"),
        1.0
    );
    assert!(d("arcd_api_request_duration_seconds_sum{operation=\"createSim\"}") > 0.0);
    let rp = |name: &str, label: &str| format!("{name}{{rendezvous_point=\"{RP}\",{label}}}");
    assert_eq!(d(&rp("arcd_handshakes_total", "result=\"completed\"")), 1.0);
    assert_eq!(d(&rp("arcd_packets_total", "direction=\"rx\"")), 2.0);
    assert_eq!(d(&rp("arcd_packets_total", "direction=\"tx\"")), 1.0);
    assert_eq!(
        d(&rp("arcd_bytes_total", "direction=\"rx\"")),
        (hello.len() + after_spoof.len()) as f64
    );
    assert_eq!(
        d(&rp("arcd_bytes_total", "direction=\"tx\"")),
        reply.len() as f64
    );
    assert_eq!(
        d(&rp(
            "arcd_dropped_packets_total",
            "reason=\"spoofed_source\""
        )),
        1.0
    );
    let gauge = |name: &str| value(&after, &format!("{name}{{rendezvous_point=\"{RP}\"}}"));
    assert_eq!(gauge("arcd_sessions"), 1.0);
    assert_eq!(gauge("arcd_devices_online"), 1.0);
    assert_eq!(d("arcd_harvest_entries_total{result=\"written\"}"), 1.0);
    assert_eq!(d("arcd_harvest_entries_total{result=\"refused\"}"), 1.0);
    // createSim, createGroup, setGroup and the Harvest entry each commit at least once.
    assert!(d("arcd_store_write_duration_seconds_count") >= 4.0);
    if support::store_engine::on_postgres() {
        assert!(
            !after.contains_key("arcd_store_wal_bytes"),
            "no WAL gauge on PostgreSQL"
        );
    } else {
        assert!(value(&after, "arcd_store_wal_bytes") > 0.0);
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let server = TestServer::start().await;
    assert!(server.running.metrics_addr.is_none());
    let default_listen = arcd::config::Config::default().metrics.listen;
    assert!(default_listen.ip().is_loopback());
    assert!(
        tokio::net::TcpStream::connect(default_listen)
            .await
            .is_err(),
        "nothing listens on the default metrics address"
    );
    server.running.shutdown().await;
}
