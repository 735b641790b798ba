//! The publisher against a real engine (peers loaded, no traffic) and a store on each engine.

use std::net::Ipv4Addr;
use std::time::Instant;

use super::*;
use crate::dataplane::engine::Listener;
use crate::store::{ActiveSession, PeerChange};

const RP: &str = "ap-northeast-1";

fn session(n: u8, session_id: &str) -> ActiveSession {
    ActiveSession {
        imsi: format!("99999000000000{n}").into(),
        primary_imsi: format!("99999000000000{n}").into(),
        sim_id: format!("sim{n}").into(),
        operator_id: "OP0000000001".into(),
        session_id: session_id.into(),
        rp_id: RP.into(),
        client_public_key: crate::wgkey::encode(&[n; 32]),
        client_ip: Ipv4Addr::new(10, 64, 0, n),
        group_id: None,
        vpg_id: None,
    }
}

fn change(engine: &Engine, change: PeerChange) {
    let mut out = Vec::new();
    engine.apply_change(change, Instant::now(), &mut out);
}

fn published(store: &Store, imsis: &[&str]) -> HashMap<Imsi, live::PublishedLive> {
    let imsis: Vec<Imsi> = imsis.iter().map(|i| Imsi::new(*i)).collect();
    store
        .read_db(|db| live::published(db, &imsis))
        .expect("read")
}

/// The first round clears what an earlier run left for the served rendezvous point and publishes
/// every peer; an unchanged round writes only the heartbeat; a peer that left loses its row; a
/// re-created session is published again.
fn rounds_publish_changes_only(store: Store) {
    let store = Arc::new(store);
    let leftover = SessionLive {
        imsi: "leftover".into(),
        session_id: "old".into(),
        rp_id: RP.into(),
        last_handshake_at: Some(1),
        last_seen_at: None,
        device_endpoint: None,
        rx_bytes: 5,
        tx_bytes: 5,
    };
    let elsewhere = SessionLive {
        imsi: "elsewhere".into(),
        rp_id: "eu-central-1".into(),
        ..leftover.clone()
    };
    store
        .write_db(|db| live::publish(db, &[leftover.clone(), elsewhere.clone()], 1))
        .expect("rows of an earlier run");
    let engine = Arc::new(Engine::new(vec![Listener::new(&RP.into(), [7; 32])]));
    for n in 1..=3 {
        change(&engine, PeerChange::Upsert(session(n, "s")));
    }
    let mut publisher = LivePublisher::new(store.clone(), engine.clone());

    let first = publisher.round().expect("first round");
    assert_eq!(
        first,
        Round {
            upserted: 3,
            removed: 0
        }
    );
    let all = [
        "999990000000001",
        "999990000000002",
        "999990000000003",
        "leftover",
        "elsewhere",
    ];
    let found = published(&store, &all);
    assert_eq!(
        found.len(),
        4,
        "leftover cleared, the other RP's row kept: {found:?}"
    );
    let one = &found[&Imsi::new("999990000000001")];
    assert_eq!((one.live.rx_bytes, one.live.last_handshake_at), (0, None));
    let first_beat = one.heartbeat_at.expect("heartbeat");

    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(publisher.round().expect("unchanged"), Round::default());
    let beat = published(&store, &all)[&Imsi::new("999990000000001")].heartbeat_at;
    assert!(
        beat.is_some_and(|at| at > first_beat),
        "heartbeat every round"
    );

    change(
        &engine,
        PeerChange::Remove {
            imsi: "999990000000002".into(),
            rp_id: RP.into(),
        },
    );
    change(&engine, PeerChange::Upsert(session(3, "s-new")));
    assert_eq!(
        publisher.round().expect("changes"),
        Round {
            upserted: 1,
            removed: 1
        }
    );
    let found = published(&store, &all);
    assert!(!found.contains_key(&Imsi::new("999990000000002")));
    assert_eq!(
        found[&Imsi::new("999990000000003")].live.session_id,
        "s-new"
    );
}

#[test]
fn rounds_publish_changes_only_sqlite() {
    let (_dir, store) = crate::store::testing::temp_store();
    rounds_publish_changes_only(store);
}

#[test]
fn rounds_publish_changes_only_postgres() {
    if let Some(store) = crate::store::db::testing::temp_pg_store() {
        rounds_publish_changes_only(Store::Postgres(store));
    }
}

/// A round the store refused (here: its table is away) changes nothing the publisher remembers,
/// so the next round sends what is still different: nothing lost, nothing sent twice.
fn a_failed_round_is_made_up_by_the_next(store: Store) {
    let store = Arc::new(store);
    let engine = Arc::new(Engine::new(vec![Listener::new(&RP.into(), [7; 32])]));
    for n in 1..=2 {
        change(&engine, PeerChange::Upsert(session(n, "s")));
    }
    let mut publisher = LivePublisher::new(store.clone(), engine.clone());
    assert_eq!(publisher.round().expect("first").upserted, 2);
    let rename = |from: &str, to: &str| {
        let sql = format!("ALTER TABLE {from} RENAME TO {to}");
        store.write_db(|db| db.execute(&sql, &[])).expect("rename");
    };
    rename("session_live", "session_live_away");
    change(&engine, PeerChange::Upsert(session(1, "s-new")));
    change(
        &engine,
        PeerChange::Remove {
            imsi: "999990000000002".into(),
            rp_id: RP.into(),
        },
    );
    assert!(publisher.round().is_err(), "the store refused the round");
    rename("session_live_away", "session_live");
    assert_eq!(
        publisher.round().expect("store back"),
        Round {
            upserted: 1,
            removed: 1
        }
    );
    let found = published(&store, &["999990000000001", "999990000000002"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[&Imsi::new("999990000000001")].live.session_id,
        "s-new"
    );
    assert_eq!(publisher.round().expect("then quiet"), Round::default());
}

#[test]
fn a_failed_round_is_made_up_by_the_next_sqlite() {
    let (_dir, store) = crate::store::testing::temp_store();
    a_failed_round_is_made_up_by_the_next(store);
}

#[test]
fn a_failed_round_is_made_up_by_the_next_postgres() {
    if let Some(store) = crate::store::db::testing::temp_pg_store() {
        a_failed_round_is_made_up_by_the_next(Store::Postgres(store));
    }
}

#[test]
fn a_handshake_time_moving_by_jitter_is_no_change() {
    let base = SessionLive {
        imsi: "a".into(),
        session_id: "s".into(),
        rp_id: RP.into(),
        last_handshake_at: Some(10_000),
        last_seen_at: None,
        device_endpoint: Some("192.0.2.1:1".into()),
        rx_bytes: 1,
        tx_bytes: 1,
    };
    let jitter = SessionLive {
        last_handshake_at: Some(10_000 + HANDSHAKE_JITTER_MS),
        last_seen_at: None,
        ..base.clone()
    };
    let rekeyed = SessionLive {
        last_handshake_at: Some(10_000 + HANDSHAKE_JITTER_MS + 1),
        last_seen_at: None,
        ..base.clone()
    };
    let more_traffic = SessionLive {
        rx_bytes: 2,
        ..base.clone()
    };
    assert!(changed(None, &base));
    assert!(!changed(Some(&base), &jitter));
    assert!(changed(Some(&base), &rekeyed));
    assert!(changed(Some(&base), &more_traffic));
    // "Last seen" moves with every keepalive: a move past the jitter is a change, jitter is not.
    let seen = |at| SessionLive {
        last_seen_at: Some(at),
        ..base.clone()
    };
    assert!(changed(Some(&base), &seen(20_000)));
    assert!(!changed(
        Some(&seen(20_000)),
        &seen(20_000 + HANDSHAKE_JITTER_MS)
    ));
    assert!(changed(Some(&seen(20_000)), &seen(45_000)));
}

/// The cost of one round with 10,000 changed sessions on PostgreSQL: first as new rows (a node's
/// cold start), then as updates (every session re-created). A measurement, not a check: run it
/// with `scripts/test-postgres.sh --lib -- --ignored --nocapture publish_cost`.
#[test]
#[ignore = "measurement; needs ARCD_TEST_POSTGRES_URL"]
#[allow(clippy::print_stderr)] // a measurement reports its figures
fn publish_cost_of_ten_thousand_changed_sessions() {
    const SESSIONS: u32 = 10_000;
    let Some(store) = crate::store::db::testing::temp_pg_store() else {
        return;
    };
    let store = Arc::new(Store::Postgres(store));
    let engine = Arc::new(Engine::new(vec![Listener::new(&RP.into(), [7; 32])]));
    let sessions: Vec<ActiveSession> = (0..SESSIONS)
        .map(|n| {
            let [_, b, c, d] = n.to_be_bytes();
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            ActiveSession {
                imsi: format!("99999{n:010}").into(),
                primary_imsi: format!("99999{n:010}").into(),
                sim_id: format!("sim{n}").into(),
                client_public_key: crate::wgkey::encode(&key),
                client_ip: Ipv4Addr::new(10, b, c, d),
                ..session(1, "first")
            }
        })
        .collect();
    for s in &sessions {
        change(&engine, PeerChange::Upsert(s.clone()));
    }
    let mut publisher = LivePublisher::new(store.clone(), engine.clone());
    let started = Instant::now();
    let figures = engine.live_figures(SystemTime::now());
    let read_took = started.elapsed();
    assert_eq!(figures.len(), SESSIONS as usize);
    let started = Instant::now();
    let inserted = publisher.round().expect("first round");
    let insert_took = started.elapsed();
    for s in &sessions {
        let mut renewed = s.clone();
        renewed.session_id = "second".into();
        change(&engine, PeerChange::Upsert(renewed));
    }
    let started = Instant::now();
    let updated = publisher.round().expect("second round");
    let update_took = started.elapsed();
    let started = Instant::now();
    let idle = publisher.round().expect("idle round");
    let idle_took = started.elapsed();
    assert_eq!(inserted.upserted, SESSIONS as usize);
    assert_eq!(updated.upserted, SESSIONS as usize);
    assert_eq!(idle, Round::default());
    eprintln!(
        "{SESSIONS} sessions: engine figures read {read_took:?}; round inserting all {insert_took:?}; \
         round updating all {update_took:?}; unchanged round {idle_took:?}"
    );
}
