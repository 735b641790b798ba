//! The data plane with several packet workers (`dataplane.workers` > 1) on a multi-threaded
//! runtime: many in-process boringtun devices at once over loopback UDP (the kernel spreads them
//! over the workers' SO_REUSEPORT sockets), handshakes while data flows, peers removed while
//! their devices still send. The TUN is the in-memory one.

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

use arcd::dataplane::{Dataplane, ListenerConfig, MemoryTun, PeerChanges, WorkerOptions};
use arcd::store::{ActiveSession, PeerChange};
use arcd::wgkey::KeyPair;
use support::wgclient::{payload_of, source_of, udp_packet, WgClient};
use tokio::sync::mpsc;

const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
const WAIT: Duration = Duration::from_secs(10);
const WORKERS: usize = 4;

struct Plane {
    dataplane: Dataplane,
    server_key: String,
    devices: Vec<(KeyPair, ActiveSession)>,
    changes: PeerChanges,
    /// Every packet the data plane wrote to the TUN, drained as it comes (the memory TUN drops
    /// what nobody reads, like a kernel queue).
    from_tun: mpsc::UnboundedReceiver<Vec<u8>>,
    to_tun: mpsc::Sender<Vec<u8>>,
}

fn device_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 2)) + n as u32)
}

fn start(devices: usize) -> Plane {
    let server_pair = arcd::wgkey::generate();
    let devices: Vec<(KeyPair, ActiveSession)> = (0..devices)
        .map(|n| {
            let pair = arcd::wgkey::generate();
            let imsi = format!("9999900000{n:05}");
            let session = ActiveSession {
                imsi: imsi.clone().into(),
                primary_imsi: imsi.into(),
                sim_id: format!("sim{n}").into(),
                operator_id: "OP0000000001".into(),
                session_id: format!("s{n}"),
                rp_id: "ap-northeast-1".into(),
                client_public_key: pair.public_key.clone(),
                client_ip: device_ip(n),
                group_id: None,
                vpg_id: None,
            };
            (pair, session)
        })
        .collect();
    let (changes, rx) = PeerChanges::channel();
    let (tun, mut tun_peer) = MemoryTun::pair();
    let dataplane = Dataplane::start(
        vec![ListenerConfig {
            rp_id: "ap-northeast-1".into(),
            bind: "127.0.0.1:0".parse().expect("addr"),
            private_key: arcd::wgkey::parse_key(&server_pair.private_key).expect("key"),
        }],
        tun,
        devices.iter().map(|(_, s)| s.clone()).collect(),
        rx,
        Vec::new(),
        WorkerOptions::workers(WORKERS),
    )
    .expect("data plane starts");
    assert_eq!(dataplane.workers, WORKERS);
    let (tx, from_tun) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(packet) = tun_peer.from_dataplane.recv().await {
            if tx.send(packet).is_err() {
                return;
            }
        }
    });
    Plane {
        dataplane,
        server_key: server_pair.public_key,
        devices,
        changes,
        from_tun,
        to_tun: tun_peer.to_dataplane,
    }
}

impl Plane {
    fn udp(&self) -> SocketAddr {
        self.dataplane.udp_addrs[0].1
    }

    async fn client(&self, n: usize) -> WgClient {
        WgClient::new(&self.devices[n].0.private_key, &self.server_key, self.udp()).await
    }

    /// Reads the TUN until `wanted` packets arrived or `WAIT` passed; counts them by source and
    /// checks each device's sequence numbers come in order.
    async fn collect(&mut self, wanted: usize) -> HashMap<Ipv4Addr, u32> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last_seq: HashMap<Ipv4Addr, u32> = HashMap::new();
        let mut counts: HashMap<Ipv4Addr, u32> = HashMap::new();
        let mut total = 0;
        while total < wanted {
            let Ok(Some(packet)) = tokio::time::timeout_at(deadline, self.from_tun.recv()).await
            else {
                break;
            };
            let source = source_of(&packet);
            let seq = sequence(payload_of(&packet));
            if let Some(previous) = last_seq.insert(source, seq) {
                assert!(seq > previous, "{source}: packet {seq} after {previous}");
            }
            *counts.entry(source).or_default() += 1;
            total += 1;
        }
        counts
    }
}

fn numbered(seq: u32) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.resize(200, b'x');
    payload
}

fn sequence(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"))
}

/// Connects device `n` (its first packet, number 0, behind the handshake), then sends
/// `packets - 1` more, numbered.
async fn connect_and_send(mut client: WgClient, n: usize, packets: u32) -> WgClient {
    let ip = device_ip(n);
    assert!(
        client
            .connect(&udp_packet(ip, METADATA, 1, 2, &numbered(0)), WAIT)
            .await,
        "device {n} got no session"
    );
    for seq in 1..packets {
        client
            .send(&udp_packet(ip, METADATA, 1, 2, &numbered(seq)))
            .await;
        if seq % 16 == 0 {
            // Loopback UDP has no flow control: pace a little so the socket buffers never drop.
            tokio::task::yield_now().await;
        }
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_devices_at_once_reach_the_tun_in_order_and_get_answers() {
    const DEVICES: usize = 48;
    // All packets fit the memory TUN's queue (1024) at once: none is lost if this test's reader
    // falls behind on a loaded machine.
    const PACKETS: u32 = 16;
    let mut plane = start(DEVICES);
    let mut senders = Vec::new();
    for n in 0..DEVICES {
        let client = plane.client(n).await;
        senders.push(tokio::spawn(connect_and_send(client, n, PACKETS)));
    }
    let counts = plane.collect(DEVICES * PACKETS as usize).await;
    let mut clients = Vec::new();
    for sender in senders {
        clients.push(sender.await.expect("sender task"));
    }
    for n in 0..DEVICES {
        assert_eq!(
            counts.get(&device_ip(n)).copied().unwrap_or(0),
            PACKETS,
            "device {n}: {counts:?}"
        );
    }
    // Answers from the TUN side, read by the workers' TUN reader, reach every device.
    for n in 0..DEVICES {
        let answer = udp_packet(METADATA, device_ip(n), 2, 1, &numbered(1000 + n as u32));
        plane.to_tun.send(answer).await.expect("push to TUN");
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let packet = client.recv(WAIT).await.expect("the answer arrives");
        assert_eq!(sequence(payload_of(&packet)), 1000 + n as u32);
    }
    let handshakes = &plane.dataplane.engine.listeners().next().unwrap().counters;
    assert_eq!(
        handshakes
            .handshakes
            .completed
            .load(std::sync::atomic::Ordering::Relaxed),
        DEVICES as u64,
        "one handshake per device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshakes_of_many_devices_do_not_stop_a_running_stream() {
    const LATECOMERS: usize = 64;
    // The stream goes in windows, each read back before the next is sent, so no queue on the
    // way can overflow however loaded the machine is: a missing packet is a data-plane fault.
    const WINDOWS: u32 = 40;
    const WINDOW: u32 = 50;
    let mut plane = start(LATECOMERS + 1);
    let mut streamer = connect_and_send(plane.client(0).await, 0, 1).await;
    assert_eq!(plane.collect(1).await.get(&device_ip(0)), Some(&1));
    let mut latecomers = Vec::new();
    for n in 1..=LATECOMERS {
        let client = plane.client(n).await;
        latecomers.push(tokio::spawn(connect_and_send(client, n, 1)));
    }
    let mut counts: HashMap<Ipv4Addr, u32> = HashMap::new();
    let mut seq = 1;
    for _ in 0..WINDOWS {
        for _ in 0..WINDOW {
            let packet = udp_packet(device_ip(0), METADATA, 1, 2, &numbered(seq));
            streamer.send(&packet).await;
            seq += 1;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let streamed = |counts: &HashMap<Ipv4Addr, u32>| counts.get(&device_ip(0)).copied();
        while streamed(&counts).unwrap_or(0) < seq - 1 {
            let Ok(Some(packet)) = tokio::time::timeout_at(deadline, plane.from_tun.recv()).await
            else {
                panic!("stream stalled at {:?} of {}", streamed(&counts), seq - 1);
            };
            *counts.entry(source_of(&packet)).or_default() += 1;
        }
    }
    for latecomer in latecomers {
        latecomer.await.expect("latecomer task");
    }
    let latecomers_seen: u32 = (1..=LATECOMERS)
        .filter_map(|n| counts.get(&device_ip(n)))
        .sum();
    let rest = plane.collect(LATECOMERS - latecomers_seen as usize).await;
    for (source, count) in rest {
        *counts.entry(source).or_default() += count;
    }
    assert_eq!(counts.get(&device_ip(0)).copied(), Some(WINDOWS * WINDOW));
    for n in 1..=LATECOMERS {
        assert_eq!(counts.get(&device_ip(n)).copied(), Some(1), "device {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_removed_while_their_devices_send_stop_and_the_others_go_on() {
    const DEVICES: usize = 16;
    let mut plane = start(DEVICES);
    let mut clients = Vec::new();
    for n in 0..DEVICES {
        clients.push(connect_and_send(plane.client(n).await, n, 1).await);
    }
    assert_eq!(plane.collect(DEVICES).await.len(), DEVICES);

    // Every device streams; the odd ones' peers are removed in the middle of it.
    let mut streams = Vec::new();
    for (n, mut client) in clients.into_iter().enumerate() {
        streams.push(tokio::spawn(async move {
            for seq in 1..=400u32 {
                client
                    .send(&udp_packet(device_ip(n), METADATA, 1, 2, &numbered(seq)))
                    .await;
                if seq % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            client
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    for (_, session) in plane.devices.iter().skip(1).step_by(2) {
        plane.changes.send(PeerChange::Remove {
            imsi: session.imsi.clone(),
            rp_id: session.rp_id.clone(),
        });
    }
    let mut clients = Vec::new();
    for stream in streams {
        clients.push(stream.await.expect("stream task"));
    }
    let engine = &plane.dataplane.engine;
    let deadline = tokio::time::Instant::now() + WAIT;
    while engine.peer_count() != DEVICES / 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(engine.peer_count(), DEVICES / 2);
    // Drain the stream, then each device sends one marker: only the kept ones arrive.
    while tokio::time::timeout(Duration::from_millis(300), plane.from_tun.recv())
        .await
        .is_ok()
    {}
    for (n, client) in clients.iter_mut().enumerate() {
        client
            .send(&udp_packet(device_ip(n), METADATA, 1, 2, &numbered(10_000)))
            .await;
    }
    let mut markers = plane.collect(DEVICES / 2).await;
    // A removed device's marker, had it got through, would come within this.
    while let Ok(Some(packet)) =
        tokio::time::timeout(Duration::from_millis(500), plane.from_tun.recv()).await
    {
        *markers.entry(source_of(&packet)).or_default() += 1;
    }
    for n in 0..DEVICES {
        let arrived = markers.get(&device_ip(n)).copied().unwrap_or(0);
        assert_eq!(arrived, u32::from(n % 2 == 0), "device {n}: {markers:?}");
    }
}
