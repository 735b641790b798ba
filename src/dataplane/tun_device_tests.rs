//! Tests of the TUN device: the root-only ones create real devices (see `test_support`).

use super::test_support::{require_root, unique_name};
use super::*;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

fn ip_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .expect("run `ip`");
    assert!(
        out.status.success(),
        "ip -j {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ip -j prints JSON")
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request from `src` to `dst`.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let payload = b"arcd tun test";
    let icmp_len = 8 + payload.len();
    let total = 20 + icmp_len;
    let mut packet = vec![0u8; total];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[8] = 64; // TTL
    packet[9] = 1; // ICMP
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp = &mut packet[20..];
    icmp[0] = 8; // echo request
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let icmp_sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    packet
}

#[tokio::test]
#[ignore = "needs root: TUN device"]
async fn creates_addresses_answers_and_vanishes() {
    require_root("creates_addresses_answers_and_vanishes");
    let name = unique_name("arct");
    let octet = (rand::random::<u8>() % 200) + 20;
    let pool_host: Ipv4Net = format!("10.{octet}.0.1/16").parse().unwrap();
    let service: Ipv4Net = "100.127.100.127/32".parse().unwrap();
    let device = open(&name, 1380, &[pool_host, service], 1).expect("open the TUN device");
    assert_eq!(device.name(), name);
    assert_eq!(device.mtu(), 1380);
    assert_eq!(device.addresses(), &[pool_host, service]);

    // Addresses, MTU and link state as the kernel reports them.
    let shown = ip_json(&["addr", "show", "dev", &name]);
    let link = &shown[0];
    assert_eq!(link["ifname"], name.as_str(), "{shown}");
    assert_eq!(link["mtu"], 1380, "{shown}");
    assert_eq!(link["txqlen"], TX_QUEUE_LEN, "{shown}");
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(flags.contains(&"UP"), "link not up: {shown}");
    assert!(flags.contains(&"LOWER_UP"), "no carrier: {shown}");
    let inet: Vec<(String, u64)> = link["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_owned(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    for net in [pool_host, service] {
        assert!(
            inet.contains(&(net.addr().to_string(), u64::from(net.prefix_len()))),
            "{net} missing from {inet:?}"
        );
    }
    // The pool address makes the kernel route the whole pool to the device.
    let routes = ip_json(&["route", "show", "dev", &name]);
    let pool = pool_host.trunc().to_string();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == pool.as_str()),
        "no route for {pool}: {routes}"
    );

    // ICMP echo through the device: a "device" in the pool pings the service address; the
    // kernel answers back into the TUN.
    let device_ip = Ipv4Addr::from(u32::from(pool_host.network()) + 2);
    let id = rand::random::<u16>();
    let request = echo_request(device_ip, service.addr(), id, 1);
    assert!(
        device.device().tcp_gso(),
        "TCP offload on (IFF_VNET_HDR + TUNSETOFFLOAD)"
    );
    let mut out = crate::dataplane::TunWrites::default();
    out.push(&request);
    device.send_batch(0, out.pending()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut batch = RecvBatch::new(1380);
    'wait: loop {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, device.recv_batch(0, &mut batch))
            .await
            .expect("echo reply within 5 s")
            .unwrap();
        for packet in batch.packets() {
            let is_reply = packet.len() >= 28
                && packet[0] >> 4 == 4
                && packet[9] == 1
                && packet[20] == 0
                && packet[24..26] == id.to_be_bytes();
            if is_reply {
                assert_eq!(&packet[12..16], &service.addr().octets());
                assert_eq!(&packet[16..20], &device_ip.octets());
                break 'wait;
            }
        }
    }

    drop(device);
    let deadline = Instant::now() + Duration::from_secs(3);
    while interface_exists(&name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!interface_exists(&name), "{name} still exists after drop");
}

/// Waits up to 5 s for the echo reply with `id` on any of the device's queues.
async fn echo_reply_on_any_queue(device: &TunDevice, id: u16) -> bool {
    let wait_on = |queue: usize| async move {
        let mut batch = RecvBatch::new(1420);
        loop {
            device.recv_batch(queue, &mut batch).await.unwrap();
            let replied = batch
                .packets()
                .any(|p| p.len() >= 28 && p[9] == 1 && p[20] == 0 && p[24..26] == id.to_be_bytes());
            if replied {
                return;
            }
        }
    };
    let any = first_of(wait_on(0), wait_on(1));
    tokio::time::timeout(Duration::from_secs(5), any)
        .await
        .is_ok()
}

async fn first_of(
    a: impl std::future::Future<Output = ()>,
    b: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = a => {}
        () = b => {}
    }
}

#[tokio::test]
#[ignore = "needs root: TUN device"]
async fn a_multi_queue_device_carries_packets_written_to_each_queue() {
    require_root("a_multi_queue_device_carries_packets_written_to_each_queue");
    let name = unique_name("arct");
    let octet = (rand::random::<u8>() % 200) + 20;
    let pool_host: Ipv4Net = format!("10.{octet}.0.1/16").parse().unwrap();
    let device = open(&name, 1420, &[pool_host], 2).expect("open a 2-queue TUN device");
    assert_eq!(device.queues(), 2);
    let device_ip = Ipv4Addr::from(u32::from(pool_host.network()) + 2);
    for queue in 0..2 {
        let id = rand::random::<u16>();
        let mut out = crate::dataplane::TunWrites::default();
        out.push(&echo_request(device_ip, pool_host.addr(), id, 1));
        device.send_batch(queue, out.pending()).await.unwrap();
        assert!(
            echo_reply_on_any_queue(&device, id).await,
            "no echo reply to a request written to queue {queue}"
        );
    }
    drop(device);
    let deadline = Instant::now() + Duration::from_secs(3);
    while interface_exists(&name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!interface_exists(&name), "{name} still exists after drop");
}

#[tokio::test]
#[ignore = "needs root: TUN device"]
async fn refuses_an_existing_interface() {
    require_root("refuses_an_existing_interface");
    let name = unique_name("arct");
    let first = open(&name, 1420, &[], 1).expect("open the TUN device");
    let err = open(&name, 1420, &[], 1).expect_err("a second device of the same name");
    assert!(
        matches!(err, TunError::AlreadyExists { .. }),
        "unexpected error: {err}"
    );
    drop(first);
}

#[test]
fn permission_errors_say_what_to_do() {
    let expected_start = "creating TUN device `arc0` needs root or CAP_NET_ADMIN: run arcd as root, or `setcap cap_net_admin+ep ";
    for source in [
        io::Error::from_raw_os_error(EPERM),
        io::Error::from_raw_os_error(EACCES),
        io::Error::from(io::ErrorKind::PermissionDenied),
    ] {
        for err in [
            classify_create("arc0", io::Error::new(source.kind(), source.to_string())),
            classify("arc0", "setting MTU 1420", source),
        ] {
            let message = err.to_string();
            assert!(
                matches!(err, TunError::PermissionDenied { .. }),
                "{message}"
            );
            assert!(message.starts_with(expected_start), "{message}");
            assert!(message.ends_with('`'), "{message}");
        }
    }
    // The raw errno path, exactly as TUNSETIFF reports it.
    let err = classify_create("arc0", io::Error::from_raw_os_error(EPERM));
    let TunError::PermissionDenied { exe, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        err.to_string(),
        format!("creating TUN device `arc0` needs root or CAP_NET_ADMIN: run arcd as root, or `setcap cap_net_admin+ep {exe}`")
    );
}

#[test]
fn other_creation_errors() {
    let err = classify_create("arc0", io::Error::from_raw_os_error(ENOENT));
    assert!(matches!(err, TunError::NoTunDriver { .. }), "{err}");
    assert!(err.to_string().contains("/dev/net/tun"), "{err}");
    let err = classify_create("arc0", io::Error::from_raw_os_error(ENODEV));
    assert!(matches!(err, TunError::NoTunDriver { .. }), "{err}");
    let err = classify_create("arc0", io::Error::from_raw_os_error(EBUSY));
    assert!(matches!(err, TunError::AlreadyExists { .. }), "{err}");
    let err = classify("arc0", "setting MTU 99999", io::Error::other("boom"));
    assert_eq!(
        err.to_string(),
        "TUN device `arc0`: setting MTU 99999: boom"
    );
}

#[tokio::test]
async fn rejects_bad_names_before_touching_the_kernel() {
    for name in ["", "a-name-that-is-too-long", "arc 0", "arc/0", ".."] {
        let err = open(name, 1420, &[], 1).expect_err(name);
        assert!(
            matches!(&err, TunError::Io { action, .. } if action == "invalid device name"),
            "{name:?}: {err}"
        );
    }
}
