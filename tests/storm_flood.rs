//! The storm generator's flood mode (examples/storm/flood.rs) against an in-process arcd with two
//! packet workers: a few devices handshake, encrypt their packets beforehand, then send them in
//! GSO batches, paced by what comes out of the (memory) TUN. The test checks packet by packet
//! that every datagram arcd accepted came out of the TUN, intact and once, and that arcd's own
//! count agrees; one datagram altered in flight shows the check sees a loss. So the benchmark
//! (scripts/bench/flood.sh) measures packets arcd really decrypted and delivered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

#[allow(dead_code)] // the example uses all of it; this test only what flood.rs needs
#[path = "../examples/storm/fleet.rs"]
mod fleet;

#[path = "../examples/storm/flood.rs"]
mod flood;

#[path = "../examples/storm/flood_packet.rs"]
mod flood_packet;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::{DeviceSpec, StormConfig};
use flood::FloodConfig;
use support::server::TestServer;

const DEVICES: usize = 6;
const PACKETS: usize = 400;
const PACKET_LEN: usize = 1400;
/// A platform address: the data plane hands packets for it to the TUN.
const TARGET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(100, 127, 100, 127), 9);
/// The one datagram the test alters: device 1's packet 123.
const ALTERED: (u32, u32) = (1, 123);

fn device_of(sim: &serde_json::Value) -> DeviceSpec {
    DeviceSpec::of_created_sim(sim).expect("createSim answers with keys and an address")
}

/// What came out of the memory TUN.
#[derive(Default)]
struct TunSide {
    flood: AtomicU64,
    seen: Mutex<HashSet<(u32, u32)>>,
    duplicates: AtomicU64,
    other: AtomicU64,
}

fn decrypted_by_arcd(server: &TestServer) -> u64 {
    let engine = &server.running.dataplane.engine;
    engine
        .listeners()
        .map(|l| l.counters.rx_packets.load(Ordering::Relaxed))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flood_packet_arcd_accepted_comes_out_of_the_tun() {
    let mut server = TestServer::start_with(|c| c.dataplane.workers = Some(2)).await;
    assert_eq!(server.running.dataplane.workers, 2);
    let api = server.login().await;
    let mut specs = Vec::new();
    for _ in 0..DEVICES {
        specs.push(device_of(&api.create_sim().await));
    }
    let mut tun = server.running.tun_peer.take().expect("memory TUN");
    let tun_side = Arc::new(TunSide::default());
    let drain = {
        let tun_side = tun_side.clone();
        tokio::spawn(async move {
            while let Some(packet) = tun.from_dataplane.recv().await {
                match flood_packet::parse_flood_packet(&packet, TARGET, PACKET_LEN) {
                    Some(id) => {
                        if !tun_side.seen.lock().unwrap().insert(id) {
                            tun_side.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        tun_side.flood.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        tun_side.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let endpoint = server.running.dataplane.udp_addrs[0].1;
    let storm = StormConfig::wireguard_timers(
        endpoint,
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        *TARGET.ip(),
    );
    let config = FloodConfig {
        storm,
        target: TARGET,
        packet_len: PACKET_LEN,
        packets_per_device: PACKETS,
        duration: Duration::from_secs(30),
        // The memory TUN holds 1,024 packets and drops beyond: the pacing must keep under it.
        window: 256,
        handshake_timeout: Duration::from_millis(500),
    };
    let prepare = config.clone();
    let mut devices = tokio::task::spawn_blocking(move || flood::prepare(&specs, &prepare, 2))
        .await
        .unwrap()
        .expect("handshakes and encryption");
    assert_eq!(devices.len(), DEVICES);
    // One datagram altered in its authentication tag: arcd must refuse it, and the TUN side
    // must miss exactly that packet.
    let altered = devices[ALTERED.0 as usize]
        .datagram_mut(ALTERED.1 as usize)
        .unwrap();
    let last = altered.len() - 1;
    altered[last] ^= 0x01;

    let decrypted_before = decrypted_by_arcd(&server);
    let delivered_side = tun_side.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut delivered = || Some(delivered_side.flood.load(Ordering::Relaxed));
        let outcome = flood::send(&mut devices, &config, &mut delivered).unwrap();
        flood::settle(
            &mut delivered,
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        let sent: Vec<usize> = devices.iter().map(flood::FloodDevice::sent).collect();
        (outcome, sent)
    })
    .await
    .unwrap();
    let (outcome, sent_per_device) = outcome;
    let total = (DEVICES * PACKETS) as u64;
    assert_eq!(outcome.sent, total, "{outcome:?}");
    assert!(sent_per_device.iter().all(|&n| n == PACKETS));
    assert!(outcome.full > 0, "the window was never full: {outcome:?}");

    let decrypted = decrypted_by_arcd(&server) - decrypted_before;
    let seen = tun_side.seen.lock().unwrap().clone();
    assert_eq!(tun_side.duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(tun_side.other.load(Ordering::Relaxed), 0);
    // What arcd accepted is what came out of the TUN, packet for packet...
    assert_eq!(decrypted, seen.len() as u64);
    // ...and that is everything sent but the altered datagram.
    let expected: HashSet<(u32, u32)> = (0..DEVICES as u32)
        .flat_map(|d| (0..PACKETS as u32).map(move |s| (d, s)))
        .filter(|id| *id != ALTERED)
        .collect();
    let missing: Vec<_> = expected.difference(&seen).take(10).collect();
    assert!(missing.is_empty(), "never came out of the TUN: {missing:?}");
    assert!(
        !seen.contains(&ALTERED),
        "arcd accepted an altered datagram"
    );
    assert_eq!(seen.len() as u64, total - 1);
    drain.abort();
    server.running.shutdown().await;
}
