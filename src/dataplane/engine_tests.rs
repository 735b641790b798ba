//! The engine driven directly, without sockets: devices are boringtun `Tunn`s whose datagrams are
//! handed to the engine and whose answers are read from the outbox.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::*;
use crate::ids::Imsi;
use crate::store::{ActiveSession, PeerChange};

const SERVER_KEY: [u8; 32] = [7u8; 32];

struct Device {
    tunn: Tunn,
    addr: SocketAddr,
    ip: Ipv4Addr,
    session: ActiveSession,
}

fn device(n: u8, vpg: Option<&str>) -> Device {
    let secret = StaticSecret::from([n; 32]);
    let public = PublicKey::from(&secret);
    let server_public = PublicKey::from(&StaticSecret::from(SERVER_KEY));
    let ip = Ipv4Addr::new(10, 64, 0, n);
    Device {
        tunn: Tunn::new(secret, server_public, None, None, u32::from(n), None),
        addr: SocketAddr::from(([192, 0, 2, n], 50_000)),
        ip,
        session: ActiveSession {
            imsi: format!("99999000000000{n}").into(),
            primary_imsi: format!("99999000000000{n}").into(),
            sim_id: format!("sim{n}").into(),
            operator_id: "OP0000000001".into(),
            session_id: format!("session-{n}"),
            rp_id: "ap-northeast-1".into(),
            client_public_key: crate::wgkey::encode(public.as_bytes()),
            client_ip: ip,
            group_id: None,
            vpg_id: vpg.map(Into::into),
        },
    }
}

fn engine_with(devices: &[&Device]) -> Engine {
    let engine = Engine::new(vec![Listener::new(&"ap-northeast-1".into(), SERVER_KEY)]);
    let mut out = Outbox::new();
    for d in devices {
        engine.apply(&Applied::Added(d.session.clone()), Instant::now(), &mut out);
    }
    assert!(out.is_empty(), "loading sessions sends nothing");
    engine
}

fn udp_payloads(out: &mut Outbox, to: SocketAddr) -> Vec<Vec<u8>> {
    let mut taken = Vec::new();
    out.retain(|o| match o {
        Outgoing::Udp { to: t, data, .. } if *t == to => {
            taken.push(data.clone());
            false
        }
        _ => true,
    });
    taken
}

/// Feeds every datagram for `d` back into its Tunn; returns decrypted packets and answers to send.
fn deliver(d: &mut Device, datagrams: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut packets, mut replies) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; BUFFER_SIZE];
    for datagram in datagrams {
        let mut result = d.tunn.decapsulate(None, &datagram, &mut buf);
        loop {
            match result {
                TunnResult::WriteToNetwork(p) => {
                    replies.push(p.to_vec());
                    result = d.tunn.decapsulate(None, &[], &mut buf);
                }
                TunnResult::WriteToTunnelV4(p, _) => {
                    packets.push(p.to_vec());
                    break;
                }
                _ => break,
            }
        }
    }
    (packets, replies)
}

/// Handshake `d` with the engine; returns with the session established on both sides.
fn connect(engine: &Engine, d: &mut Device, now: Instant) {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let init = match d.tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    engine.handle_datagram(0, d.addr, &init, now, &mut buf, &mut out);
    let responses = udp_payloads(&mut out, d.addr);
    assert_eq!(responses.len(), 1, "one handshake response");
    let (_, replies) = deliver(d, responses);
    // boringtun's initiator confirms with a keepalive once it has data to send; send one.
    for reply in replies {
        engine.handle_datagram(0, d.addr, &reply, now, &mut buf, &mut out);
    }
    let keepalive = match d.tunn.encapsulate(&[], &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no keepalive: {other:?}"),
    };
    engine.handle_datagram(0, d.addr, &keepalive, now, &mut buf, &mut out);
}

/// The endpoint the engine knows for a peer (its snapshot's).
fn endpoint_of(engine: &Engine, imsi: &Imsi) -> Option<SocketAddr> {
    engine
        .snapshot(imsi, std::time::SystemTime::now())
        .and_then(|s| s.endpoint)
}

fn packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload.len()];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253; // experimental protocol: the engine must not care
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(payload);
    p
}

fn send(engine: &Engine, from: &mut Device, dst: Ipv4Addr, payload: &[u8], out: &mut Outbox) {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let datagram = match from
        .tunn
        .encapsulate(&packet(from.ip, dst, payload), &mut buf)
    {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no session: {other:?}"),
    };
    engine.handle_datagram(0, from.addr, &datagram, Instant::now(), &mut buf, out);
}

#[test]
fn device_to_device_only_inside_an_allowing_vpg() {
    let mut a = device(2, Some("vpg-1"));
    let mut b = device(3, Some("vpg-1"));
    let mut c = device(4, Some("vpg-2"));
    let engine = engine_with(&[&a, &b, &c]);
    let now = Instant::now();
    for d in [&mut a, &mut b, &mut c] {
        connect(&engine, d, now);
    }

    let mut out = Outbox::new();
    send(&engine, &mut a, b.ip, b"off", &mut out);
    assert!(out.is_empty(), "VPG without device-to-device: dropped");
    assert_eq!(
        engine.counters.peer_to_peer_denied.load(Ordering::Relaxed),
        1
    );

    engine.set_vpgs(&[vpg("vpg-1", true, true)]);
    send(&engine, &mut a, b.ip, b"on", &mut out);
    let to_b = udp_payloads(&mut out, b.addr);
    let (packets, _) = deliver(&mut b, to_b);
    assert_eq!(
        packets.len(),
        1,
        "forwarded inside the data plane, never via the TUN"
    );
    assert_eq!(&packets[0][20..], b"on");
    assert!(out.is_empty());

    send(&engine, &mut a, c.ip, b"other vpg", &mut out);
    assert!(out.is_empty(), "another VPG stays unreachable");
    engine.set_vpgs(&[vpg("vpg-1", false, true)]);
    send(&engine, &mut a, b.ip, b"off again", &mut out);
    assert!(out.is_empty());
    assert_eq!(
        engine.counters.peer_to_peer_denied.load(Ordering::Relaxed),
        3
    );
}

fn vpg(id: &str, device_to_device: bool, use_internet_gateway: bool) -> RunningVpg {
    RunningVpg {
        vpg_id: id.into(),
        device_subnet: "10.128.0.0/9".parse().expect("net"),
        device_to_device,
        use_internet_gateway,
    }
}

#[test]
fn internet_gateway_off_keeps_only_platform_addresses_and_the_vpg() {
    let mut a = device(2, Some("closed"));
    let mut b = device(3, Some("closed"));
    let mut outside = device(4, None);
    let engine = engine_with(&[&a, &b, &outside]);
    let now = Instant::now();
    for d in [&mut a, &mut b, &mut outside] {
        connect(&engine, d, now);
    }
    engine.set_vpgs(&[vpg("closed", true, false)]);
    let internet = Ipv4Addr::new(192, 0, 2, 10);
    let platform = Ipv4Addr::new(100, 127, 111, 111);

    let mut out = Outbox::new();
    send(&engine, &mut a, internet, b"out", &mut out);
    assert!(out.is_empty(), "internet gateway off: nothing leaves");
    assert_eq!(engine.counters.internet_denied.load(Ordering::Relaxed), 1);

    send(&engine, &mut a, platform, b"harvest", &mut out);
    assert_eq!(out, vec![Outgoing::Tun(packet(a.ip, platform, b"harvest"))]);

    let mut out = Outbox::new();
    send(&engine, &mut a, b.ip, b"neighbour", &mut out);
    assert_eq!(
        udp_payloads(&mut out, b.addr).len(),
        1,
        "device-to-device is not egress"
    );

    let mut out = Outbox::new();
    send(&engine, &mut outside, internet, b"free", &mut out);
    assert_eq!(
        out,
        vec![Outgoing::Tun(packet(outside.ip, internet, b"free"))]
    );

    engine.set_vpgs(&[vpg("closed", true, true)]);
    let mut out = Outbox::new();
    send(&engine, &mut a, internet, b"open", &mut out);
    assert_eq!(out, vec![Outgoing::Tun(packet(a.ip, internet, b"open"))]);
    assert_eq!(engine.counters.internet_denied.load(Ordering::Relaxed), 1);
}

#[test]
fn platform_traffic_goes_to_the_tun_and_back_by_destination() {
    let mut a = device(2, None);
    let mut b = device(3, None);
    let engine = engine_with(&[&a, &b]);
    connect(&engine, &mut a, Instant::now());
    connect(&engine, &mut b, Instant::now());
    let platform = Ipv4Addr::new(100, 127, 100, 127);
    let mut out = Outbox::new();
    send(&engine, &mut a, platform, b"ping", &mut out);
    assert_eq!(out, vec![Outgoing::Tun(packet(a.ip, platform, b"ping"))]);

    let mut out = Outbox::new();
    let mut buf = vec![0u8; BUFFER_SIZE];
    engine.handle_tun_packet(
        &packet(platform, b.ip, b"pong"),
        Instant::now(),
        &mut buf,
        &mut out,
    );
    let to_b = udp_payloads(&mut out, b.addr);
    let (packets, _) = deliver(&mut b, to_b);
    assert_eq!(packets, vec![packet(platform, b.ip, b"pong")]);
    engine.handle_tun_packet(
        &packet(platform, Ipv4Addr::new(10, 64, 9, 9), b"x"),
        Instant::now(),
        &mut buf,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(engine.counters.no_route.load(Ordering::Relaxed), 1);
}

#[test]
fn roaming_follows_the_latest_authenticated_packet() {
    let mut a = device(2, None);
    let engine = engine_with(&[&a]);
    connect(&engine, &mut a, Instant::now());
    let mut out = Outbox::new();
    a.addr = SocketAddr::from(([198, 51, 100, 1], 40_000));
    send(
        &engine,
        &mut a,
        Ipv4Addr::new(100, 127, 0, 53),
        b"moved",
        &mut out,
    );
    assert_eq!(endpoint_of(&engine, &a.session.imsi), Some(a.addr));
    // An unauthenticated packet from elsewhere does not move it.
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&[0u8; 60]);
    engine.handle_datagram(
        0,
        SocketAddr::from(([203, 0, 113, 9], 1)),
        &forged,
        Instant::now(),
        &mut buf,
        &mut out,
    );
    assert_eq!(endpoint_of(&engine, &a.session.imsi), Some(a.addr));
}

#[test]
fn idle_sessions_cost_no_timers_and_active_ones_stop_after_idling() {
    let devices: Vec<Device> = (2..=250).map(|n| device(n, None)).collect();
    let refs: Vec<&Device> = devices.iter().collect();
    let engine = engine_with(&refs);
    assert_eq!(engine.peer_count(), 249);
    assert_eq!(
        engine.next_deadline(),
        None,
        "loaded, never-seen sessions schedule nothing"
    );

    let mut a = device(2, None);
    let start = Instant::now();
    connect(&engine, &mut a, start);
    let due = engine.next_deadline().expect("active peer scheduled");
    assert!(due > start && due <= start + TIMER_PERIOD);
    assert_eq!(
        engine.timers.lock().len(),
        1,
        "one entry per active peer, not per event"
    );

    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    engine.run_timers(due, &mut buf, &mut out);
    assert!(
        engine.next_deadline().is_some(),
        "still active: rescheduled"
    );
    engine.run_timers(
        start + IDLE_AFTER + Duration::from_secs(1),
        &mut buf,
        &mut out,
    );
    assert_eq!(
        engine.next_deadline(),
        None,
        "idle: no more ticks until the next packet"
    );
}

#[test]
fn new_session_invalidates_the_old_receiver_index() {
    let mut a = device(2, None);
    let engine = engine_with(&[&a]);
    connect(&engine, &mut a, Instant::now());
    let mut reset = a.session.clone();
    reset.session_id = "session-2".into();
    let mut out = Outbox::new();
    engine.apply(&Applied::NewSession(reset), Instant::now(), &mut out);
    // The server re-initiates to the known endpoint.
    let initiations = udp_payloads(&mut out, a.addr);
    assert_eq!(initiations.len(), 1);
    assert_eq!(initiations[0][0], 1, "a handshake initiation");
    // Data on the old session no longer decrypts.
    let before = engine.counters.unknown_peer.load(Ordering::Relaxed);
    send(
        &engine,
        &mut a,
        Ipv4Addr::new(100, 127, 0, 53),
        b"old",
        &mut out,
    );
    assert!(out.iter().all(|o| !matches!(o, Outgoing::Tun(_))));
    assert_eq!(
        engine.counters.unknown_peer.load(Ordering::Relaxed),
        before + 1
    );
    // Answering the server's initiation restores traffic.
    let (_, replies) = deliver(&mut a, initiations);
    let mut buf = vec![0u8; BUFFER_SIZE];
    for reply in replies {
        engine.handle_datagram(0, a.addr, &reply, Instant::now(), &mut buf, &mut out);
    }
    // The server (initiator now) confirms with a keepalive, which moves the device over.
    let confirmations = udp_payloads(&mut out, a.addr);
    assert!(!confirmations.is_empty());
    deliver(&mut a, confirmations);
    let mut out = Outbox::new();
    send(
        &engine,
        &mut a,
        Ipv4Addr::new(100, 127, 0, 53),
        b"new",
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Outgoing::Tun(p) if &p[20..] == b"new"));
}

#[test]
fn removed_peer_is_unknown_on_every_index() {
    let mut a = device(2, None);
    let engine = engine_with(&[&a]);
    connect(&engine, &mut a, Instant::now());
    let mut out = Outbox::new();
    engine.apply(
        &Applied::Removed(a.session.imsi.clone()),
        Instant::now(),
        &mut out,
    );
    assert_eq!(engine.peer_count(), 0);
    let mut buf = vec![0u8; BUFFER_SIZE];
    let init = match a.tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    engine.handle_datagram(0, a.addr, &init, Instant::now(), &mut buf, &mut out);
    assert!(out.is_empty(), "no handshake for a removed key");
    engine.handle_tun_packet(
        &packet(Ipv4Addr::new(100, 127, 0, 53), a.ip, b"x"),
        Instant::now(),
        &mut buf,
        &mut out,
    );
    assert!(out.is_empty());
    assert!(engine
        .snapshot(&a.session.imsi, std::time::SystemTime::now())
        .is_none());
}

#[test]
fn replayed_initiation_never_moves_the_endpoint() {
    let mut a = device(2, None);
    let engine = engine_with(&[&a]);
    let mut buf = vec![0u8; BUFFER_SIZE];
    let captured = match a.tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    let mut out = Outbox::new();
    engine.handle_datagram(0, a.addr, &captured, Instant::now(), &mut buf, &mut out);
    let responses = udp_payloads(&mut out, a.addr);
    let (_, replies) = deliver(&mut a, responses);
    for reply in replies {
        engine.handle_datagram(0, a.addr, &reply, Instant::now(), &mut buf, &mut out);
    }
    let attacker = SocketAddr::from(([203, 0, 113, 66], 4444));
    let endpoint = |engine: &Engine| endpoint_of(engine, &a.session.imsi);
    assert_eq!(endpoint(&engine), Some(a.addr));

    // Not under load: the replay fails the timestamp check.
    engine.handle_datagram(0, attacker, &captured, Instant::now(), &mut buf, &mut out);
    assert_eq!(endpoint(&engine), Some(a.addr));
    // Under load: screened with a cookie reply, never queued, still no move.
    for _ in 0..150 {
        let screened = engine.screen_handshake(0, attacker, &captured, true, &mut buf, &mut out);
        assert_eq!(screened, Screened::Answered);
    }
    assert_eq!(engine.counters.cookie_replies.load(Ordering::Relaxed), 150);
    assert_eq!(endpoint(&engine), Some(a.addr));
    assert!(
        udp_payloads(&mut out, attacker).iter().all(|p| p[0] == 3),
        "the attacker only ever gets cookie replies"
    );
}

#[test]
fn under_load_a_handshake_needs_the_cookie_of_its_source_address() {
    let mut a = device(5, None);
    let engine = engine_with(&[&a]);
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut out = Outbox::new();
    let mut initiation = |d: &mut Device| match d.tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    let first = initiation(&mut a);
    let mut scratch = vec![0u8; BUFFER_SIZE];
    // Not under load: let through as it is.
    assert_eq!(
        engine.screen_handshake(0, a.addr, &first, false, &mut scratch, &mut out),
        Screened::Queue
    );
    assert!(out.is_empty(), "screening alone answers nothing");
    // Under load: a cookie reply, which the device takes.
    assert_eq!(
        engine.screen_handshake(0, a.addr, &first, true, &mut scratch, &mut out),
        Screened::Answered
    );
    let replies = udp_payloads(&mut out, a.addr);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0][0], COOKIE_REPLY_TYPE);
    let (packets, answers) = deliver(&mut a, replies);
    assert!(packets.is_empty() && answers.is_empty());
    // Its next initiation carries the cookie (mac2): let through under load, and served.
    let with_cookie = initiation(&mut a);
    assert_eq!(
        engine.screen_handshake(0, a.addr, &with_cookie, true, &mut scratch, &mut out),
        Screened::Queue
    );
    engine.handle_datagram(
        0,
        a.addr,
        &with_cookie,
        Instant::now(),
        &mut scratch,
        &mut out,
    );
    let responses = udp_payloads(&mut out, a.addr);
    assert_eq!(responses.len(), 1, "one handshake response");
    assert_eq!(responses[0][0], 2, "a handshake response");
    // The cookie is bound to the source address: the same message from elsewhere is refused.
    let elsewhere = SocketAddr::from(([192, 0, 2, 200], 50_000));
    assert_eq!(
        engine.screen_handshake(0, elsewhere, &with_cookie, true, &mut scratch, &mut out),
        Screened::Answered
    );
    // A bad mac1 is dropped whatever the load, and counted as malformed.
    let mut bad_mac1 = initiation(&mut a);
    bad_mac1[116] ^= 1;
    for under_load in [false, true] {
        assert_eq!(
            engine.screen_handshake(0, a.addr, &bad_mac1, under_load, &mut scratch, &mut out),
            Screened::Dropped
        );
    }
    assert_eq!(engine.counters.malformed.load(Ordering::Relaxed), 2);
    let cookies = &engine.listeners[0].counters.handshakes.cookie_required;
    assert_eq!(cookies.load(Ordering::Relaxed), 2);
}

#[test]
fn only_changed_endpoints_are_saved_and_resume_initiates_toward_a_saved_one() {
    use crate::store::endpoints::SavedEndpoint;
    let mut a = device(3, None);
    let b = device(4, None);
    let engine = engine_with(&[&a, &b]);
    assert!(
        engine.unsaved_endpoints().is_empty(),
        "no endpoint known yet"
    );
    connect(&engine, &mut a, Instant::now());
    let (imsi, session_id) = (a.session.imsi.clone(), a.session.session_id.clone());
    let saved_a = |addr| SavedEndpoint {
        imsi: imsi.clone(),
        session_id: session_id.clone(),
        endpoint: addr,
    };
    let unsaved = engine.unsaved_endpoints();
    assert_eq!(unsaved, vec![saved_a(a.addr)]);
    engine.endpoints_saved(&unsaved);
    assert!(engine.unsaved_endpoints().is_empty(), "saved and unchanged");
    a.addr = SocketAddr::from(([198, 51, 100, 3], 40_000));
    send(
        &engine,
        &mut a,
        PLATFORM_NETWORK.0,
        b"moved",
        &mut Outbox::new(),
    );
    assert_eq!(engine.unsaved_endpoints(), vec![saved_a(a.addr)], "roamed");

    // After a restart: the engine starts the handshake toward b's saved endpoint, once.
    let restarted = engine_with(&[&b]);
    let saved_b = SavedEndpoint {
        imsi: b.session.imsi.clone(),
        session_id: b.session.session_id.clone(),
        endpoint: b.addr,
    };
    let mut out = Outbox::new();
    assert_eq!(
        restarted.resume(&saved_b, Instant::now(), &mut out),
        Resumed::Initiated
    );
    let initiations = udp_payloads(&mut out, b.addr);
    assert_eq!(initiations.len(), 1);
    assert_eq!(initiations[0][0], 1, "a handshake initiation");
    assert!(restarted.next_deadline().is_some(), "retried by the timers");
    assert!(
        restarted.unsaved_endpoints().is_empty(),
        "the endpoint came from the store"
    );
    assert_eq!(
        restarted.resume(&saved_b, Instant::now(), &mut out),
        Resumed::AlreadyBack
    );
    let replaced = SavedEndpoint {
        session_id: "replaced".into(),
        ..saved_b
    };
    assert_eq!(
        restarted.resume(&replaced, Instant::now(), &mut out),
        Resumed::NoSession
    );
}

/// A session of `device(n)` with another key, address or session id (a key is WireGuard base64).
fn session_with(n: u8, key_seed: u8, ip: [u8; 4], session_id: &str) -> ActiveSession {
    let mut session = device(n, None).session;
    let public = PublicKey::from(&StaticSecret::from([key_seed; 32]));
    session.client_public_key = crate::wgkey::encode(public.as_bytes());
    session.client_ip = Ipv4Addr::from(ip);
    session.session_id = session_id.into();
    session
}

fn change(engine: &Engine, change: PeerChange) -> Applied {
    let mut out = Outbox::new();
    let applied = engine.apply_change(change, Instant::now(), &mut out);
    assert!(out.is_empty(), "no endpoint known: nothing to send");
    applied
}

fn imsi_at(engine: &Engine, ip: [u8; 4]) -> Option<Imsi> {
    engine
        .session_by_client_ip(Ipv4Addr::from(ip))
        .map(|s| s.imsi)
}

#[test]
fn upsert_indexes_and_replaces() {
    let engine = engine_with(&[]);
    let first = session_with(2, 21, [10, 64, 0, 2], "s1");
    let key1 = first.client_public_key.clone();
    assert_eq!(
        change(&engine, PeerChange::Upsert(first.clone())),
        Applied::Added(first.clone())
    );
    assert_eq!(
        engine.session_by_public_key(&key1).map(|s| s.imsi),
        Some(first.imsi.clone())
    );
    assert_eq!(imsi_at(&engine, [10, 64, 0, 2]), Some(first.imsi.clone()));

    let renewed = session_with(2, 22, [10, 64, 0, 2], "s2");
    let key2 = renewed.client_public_key.clone();
    assert!(matches!(
        change(&engine, PeerChange::Upsert(renewed.clone())),
        Applied::NewSession(_)
    ));
    assert!(
        engine.session_by_public_key(&key1).is_none(),
        "old key must stop matching at once"
    );
    assert!(engine.session_by_public_key(&key2).is_some());

    let mut regrouped = renewed;
    regrouped.group_id = Some("g".into());
    assert!(matches!(
        change(&engine, PeerChange::Upsert(regrouped.clone())),
        Applied::Updated(_)
    ));
    assert_eq!(
        engine.session(&first.imsi),
        Some(regrouped),
        "attributes updated"
    );
    assert_eq!(engine.peer_count(), 1);
}

#[test]
fn remove_clears_every_index() {
    let engine = engine_with(&[]);
    let session = session_with(2, 21, [10, 64, 0, 2], "s1");
    change(&engine, PeerChange::Upsert(session.clone()));
    let remove = || PeerChange::Remove {
        imsi: session.imsi.clone(),
        rp_id: "ap-northeast-1".into(),
    };
    assert_eq!(
        change(&engine, remove()),
        Applied::Removed(session.imsi.clone())
    );
    assert_eq!(engine.peer_count(), 0);
    assert!(engine.session(&session.imsi).is_none());
    assert!(engine
        .session_by_public_key(&session.client_public_key)
        .is_none());
    assert!(imsi_at(&engine, [10, 64, 0, 2]).is_none());
    assert_eq!(
        change(&engine, remove()),
        Applied::Unknown(session.imsi.clone())
    );
}

#[test]
fn moved_address_keeps_new_owner() {
    let engine = engine_with(&[]);
    let one = session_with(2, 21, [10, 64, 0, 2], "s1");
    let two = session_with(3, 31, [10, 64, 0, 2], "s2");
    change(&engine, PeerChange::Upsert(one.clone()));
    // Peer 2 takes over the address (peer 1 was re-addressed in the same batch).
    change(&engine, PeerChange::Upsert(two.clone()));
    change(
        &engine,
        PeerChange::Upsert(session_with(2, 21, [10, 64, 0, 3], "s3")),
    );
    assert_eq!(imsi_at(&engine, [10, 64, 0, 2]), Some(two.imsi));
    assert_eq!(imsi_at(&engine, [10, 64, 0, 3]), Some(one.imsi));
}

#[path = "engine_model_tests.rs"]
mod model;

#[path = "engine_last_seen_tests.rs"]
mod last_seen;
