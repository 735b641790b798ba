//! The reconnect-storm generator (examples/storm) against an in-process arcd: its fleet code,
//! unchanged, with 50 devices whose SIMs were made through the API, over loopback UDP. The TUN is
//! memory here; the test answers the devices' ICMP echoes on it as the kernel would. So the tool
//! the storm benchmark depends on is exercised by every `cargo test` and cannot rot unnoticed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

#[allow(dead_code)] // the example uses all of it; this test only the fleet's core
#[path = "../examples/storm/fleet.rs"]
mod fleet;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use fleet::{DeviceSpec, Progress, StormConfig, Summary};
use support::server::TestServer;
use tokio::sync::mpsc;

const DEVICES: usize = 50;
/// An address the data plane hands to the TUN (the metadata service's).
const TARGET: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);

/// Answers every ICMP echo request written to the memory TUN, as the kernel answers a ping.
fn answer_echoes(
    mut from_dataplane: mpsc::Receiver<Vec<u8>>,
    to_dataplane: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(mut packet) = from_dataplane.recv().await {
            let header = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() <= header + 8 || packet[9] != 1 || packet[header] != 8 {
                continue;
            }
            let (source, destination) = (packet[12..16].to_vec(), packet[16..20].to_vec());
            packet[12..16].copy_from_slice(&destination);
            packet[16..20].copy_from_slice(&source);
            packet[10..12].fill(0);
            let sum = fleet::checksum(&packet[..header]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            packet[header] = 0;
            packet[header + 2..header + 4].fill(0);
            let sum = fleet::checksum(&packet[header..]);
            packet[header + 2..header + 4].copy_from_slice(&sum.to_be_bytes());
            if to_dataplane.send(packet).await.is_err() {
                break;
            }
        }
    })
}

fn device_of(sim: &serde_json::Value) -> DeviceSpec {
    DeviceSpec::of_created_sim(sim).expect("createSim answers with keys and an address")
}

/// Short timers, so that a device refused under load (cookie reply) retries within the test.
fn fast_config(server: &TestServer, deadline: Duration) -> StormConfig {
    let endpoint = server.running.dataplane.udp_addrs[0].1;
    let mut config =
        StormConfig::wireguard_timers(endpoint, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], TARGET);
    config.rekey_timeout = Duration::from_millis(500);
    config.rekey_jitter = Duration::from_millis(100);
    config.echo_retry = Duration::from_millis(300);
    config.deadline = deadline;
    config
}

fn cookie_replies(server: &TestServer) -> u64 {
    let counters = &server.running.dataplane.engine.counters;
    counters
        .cookie_replies
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Creates `DEVICES` SIMs and starts answering echoes on the server's memory TUN.
async fn fleet_of(server: &mut TestServer) -> (Vec<DeviceSpec>, tokio::task::JoinHandle<()>) {
    let api = server.login().await;
    let mut specs = Vec::new();
    for _ in 0..DEVICES {
        specs.push(device_of(&api.create_sim().await));
    }
    let tun = server.running.tun_peer.take().expect("memory TUN");
    (specs, answer_echoes(tun.from_dataplane, tun.to_dataplane))
}

/// With a handshake queue of 4, a fleet of fifty arriving at once puts the worker under load:
/// most devices get a cookie reply, take it, and are served when they try again with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_devices_come_back_with_the_cookie_and_are_served() {
    let mut server = TestServer::start_with(|c| c.dataplane.handshake_queue = Some(4)).await;
    let (specs, _echoes) = fleet_of(&mut server).await;
    let config = fast_config(&server, Duration::from_secs(30));
    let prepared = fleet::prepare(&specs, &config, 2).unwrap();
    let (outcomes, _start) = fleet::run(prepared, &config, Arc::new(Progress::default()), None)
        .await
        .unwrap();
    let summary = Summary::of(&outcomes);
    assert_eq!(summary.sessions, DEVICES, "{summary:?}");
    assert_eq!(summary.answered, DEVICES, "{summary:?}");
    assert!(summary.devices_with_cookie > 0, "{summary:?}");
    assert!(cookie_replies(&server) >= summary.devices_with_cookie as u64);
    // A device that got a cookie sent at least one more initiation, with it.
    assert!(summary.initiations >= DEVICES as u64 + summary.devices_with_cookie as u64);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_fifty_connects_and_is_answered() {
    let mut server = TestServer::start().await;
    let (specs, echoes) = fleet_of(&mut server).await;

    let config = fast_config(&server, Duration::from_secs(30));
    let prepared = fleet::prepare(&specs, &config, 2).unwrap();
    let progress = Arc::new(Progress::default());
    let (outcomes, _start) = fleet::run(prepared, &config, progress.clone(), None)
        .await
        .unwrap();
    let summary = Summary::of(&outcomes);
    assert_eq!(summary.sessions, DEVICES, "every device has a session");
    assert_eq!(summary.answered, DEVICES, "every device's echo is answered");
    for (i, outcome) in outcomes.iter().enumerate() {
        let (session, answer) = (outcome.session_at.unwrap(), outcome.answered_at.unwrap());
        assert!(session <= answer, "device {i}: answered before its session");
        assert!(
            outcome.initiations >= 1 && outcome.responses >= 1,
            "device {i}"
        );
    }
    // Fifty handshakes are far below half of a worker's default handshake queue: nobody is asked
    // for a cookie, by the generator's count and by arcd's.
    assert_eq!(summary.devices_with_cookie, 0, "{summary:?}");
    assert_eq!(cookie_replies(&server), 0);
    assert!(summary.initiations >= DEVICES as u64);
    let times: Vec<_> = outcomes.iter().map(|o| o.answered_at).collect();
    assert!(fleet::time_to_percent(&times, 50.0) <= fleet::time_to_percent(&times, 100.0));
    assert_eq!(
        progress.answered.load(std::sync::atomic::Ordering::Relaxed),
        DEVICES
    );

    // A device arcd does not know never gets a session: the generator does not count it.
    let stranger = DeviceSpec {
        private_key: [7u8; 32],
        ..specs[0].clone()
    };
    let config = fast_config(&server, Duration::from_secs(2));
    let prepared = fleet::prepare(&[stranger], &config, 1).unwrap();
    let (outcomes, _) = fleet::run(prepared, &config, Arc::new(Progress::default()), None)
        .await
        .unwrap();
    let summary = Summary::of(&outcomes);
    assert_eq!((summary.sessions, summary.answered), (0, 0));
    assert!(
        summary.initiations >= 2,
        "it retried: {}",
        summary.initiations
    );
    assert!(fleet::time_to_percent(&[None], 50.0).is_none());
    echoes.abort();
}
