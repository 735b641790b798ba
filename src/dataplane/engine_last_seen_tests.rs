//! "Last seen": the snapshot dates the device's latest authenticated packet, which moves with
//! every packet (keepalives too), unlike the last handshake.

use std::time::SystemTime;

use super::*;

fn last_seen(engine: &Engine, imsi: &Imsi) -> Option<SystemTime> {
    engine
        .snapshot(imsi, SystemTime::now())
        .and_then(|s| s.last_received)
}

fn age(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}

#[test]
fn last_seen_follows_authenticated_packets_only() {
    let mut a = device(2, None);
    let engine = engine_with(&[&a]);
    assert_eq!(
        last_seen(&engine, &a.session.imsi),
        None,
        "never heard from"
    );

    // The handshake and its keepalive arrived a minute ago (by the engine's monotonic clock).
    let minute_ago = Instant::now()
        .checked_sub(Duration::from_secs(60))
        .expect("the monotonic clock is past one minute");
    connect(&engine, &mut a, minute_ago);
    let seen = last_seen(&engine, &a.session.imsi).expect("seen at the handshake");
    let since = age(seen);
    assert!(
        since >= Duration::from_secs(59) && since < Duration::from_secs(70),
        "dated a minute back, was {since:?} ago"
    );

    // A packet to the device is not a sign of life from it.
    let mut out = Outbox::new();
    let mut buf = vec![0u8; BUFFER_SIZE];
    let platform = Ipv4Addr::new(100, 127, 100, 127);
    engine.handle_tun_packet(
        &packet(platform, a.ip, b"to"),
        Instant::now(),
        &mut buf,
        &mut out,
    );
    assert!(
        age(last_seen(&engine, &a.session.imsi).expect("still seen")) >= Duration::from_secs(59)
    );

    // A forged datagram from elsewhere does not move it; the device's own packet does.
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&[0u8; 60]);
    let elsewhere = SocketAddr::from(([203, 0, 113, 9], 1));
    engine.handle_datagram(0, elsewhere, &forged, Instant::now(), &mut buf, &mut out);
    assert!(
        age(last_seen(&engine, &a.session.imsi).expect("still seen")) >= Duration::from_secs(59)
    );
    send(&engine, &mut a, platform, b"hello", &mut out);
    let fresh = last_seen(&engine, &a.session.imsi).expect("seen now");
    assert!(
        age(fresh) < Duration::from_secs(5),
        "seen just now, was {:?} ago",
        age(fresh)
    );
}
