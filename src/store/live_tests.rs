//! The same tests on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names a
//! server (scripts/test-postgres.sh).

use super::*;
use crate::ids::OperatorId;
use crate::store::db::Backend;
use crate::store::operators;

use crate::store::testing::on_both_engines;

on_both_engines!(
    published_figures_read_back_with_their_heartbeat,
    a_later_publication_replaces_the_row,
    removal_leaves_a_newer_session_row_alone,
    clearing_a_rendezvous_point_leaves_the_others,
    a_batch_longer_than_one_statement_is_published_whole,
    totals_count_the_operators_current_sessions_only,
);

fn live(imsi: &str, session_id: &str, rp: &str, rx: u64) -> SessionLive {
    SessionLive {
        imsi: imsi.into(),
        session_id: session_id.into(),
        rp_id: rp.into(),
        last_handshake_at: Some(1_700_000_000_000 + rx as i64),
        last_seen_at: Some(1_700_000_030_000 + rx as i64),
        device_endpoint: Some(format!("192.0.2.1:{}", 1000 + rx)),
        rx_bytes: rx,
        tx_bytes: rx * 2,
    }
}

fn read(store: &impl Backend, imsis: &[&str]) -> HashMap<Imsi, PublishedLive> {
    let imsis: Vec<Imsi> = imsis.iter().map(|i| Imsi::new(*i)).collect();
    store
        .read_db(|db| published(db, &imsis))
        .expect("read published")
}

fn published_figures_read_back_with_their_heartbeat(store: &impl Backend) {
    let a = live("a", "s-a", "rp-1", 10);
    let never = SessionLive {
        last_handshake_at: None,
        last_seen_at: None,
        device_endpoint: None,
        rx_bytes: 0,
        tx_bytes: 0,
        ..live("b", "s-b", "rp-2", 0)
    };
    let huge = SessionLive {
        rx_bytes: u64::MAX,
        ..live("c", "s-c", "rp-1", 1)
    };
    store
        .write_db(|db| {
            publish(db, &[a.clone(), never.clone(), huge.clone()], 5_000)?;
            heartbeat(db, &["rp-1".into()], 6_000)
        })
        .expect("publish");
    let found = read(store, &["a", "b", "c", "unknown"]);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        found[&Imsi::new("a")],
        PublishedLive {
            live: a,
            published_at: 5_000,
            heartbeat_at: Some(6_000),
        }
    );
    assert_eq!(found[&Imsi::new("b")].live, never);
    assert_eq!(found[&Imsi::new("b")].heartbeat_at, None, "rp-2 never beat");
    assert_eq!(
        found[&Imsi::new("c")].live.rx_bytes,
        i64::MAX as u64,
        "saturates, never wraps"
    );
    assert!(read(store, &[]).is_empty());
}

fn a_later_publication_replaces_the_row(store: &impl Backend) {
    store
        .write_db(|db| publish(db, &[live("a", "s-1", "rp-1", 10)], 1_000))
        .expect("first");
    let recreated = SessionLive {
        device_endpoint: None,
        last_handshake_at: None,
        last_seen_at: None,
        ..live("a", "s-2", "rp-2", 3)
    };
    store
        .write_db(|db| {
            publish(db, std::slice::from_ref(&recreated), 2_000)?;
            heartbeat(db, &["rp-2".into()], 2_000)?;
            heartbeat(db, &["rp-2".into()], 3_000)
        })
        .expect("second");
    let found = &read(store, &["a"])[&Imsi::new("a")];
    assert_eq!(found.live, recreated);
    assert_eq!(found.published_at, 2_000);
    assert_eq!(found.heartbeat_at, Some(3_000));
}

fn removal_leaves_a_newer_session_row_alone(store: &impl Backend) {
    store
        .write_db(|db| {
            publish(
                db,
                &[live("a", "s-new", "rp-1", 1), live("b", "s-b", "rp-1", 2)],
                1_000,
            )
        })
        .expect("publish");
    store
        .write_db(|db| {
            remove(
                db,
                &[
                    ("a".into(), "s-old".to_string()),
                    ("b".into(), "s-b".to_string()),
                ],
            )
        })
        .expect("remove");
    let found = read(store, &["a", "b"]);
    assert_eq!(found.keys().collect::<Vec<_>>(), [&Imsi::new("a")]);
}

fn clearing_a_rendezvous_point_leaves_the_others(store: &impl Backend) {
    store
        .write_db(|db| {
            publish(
                db,
                &[
                    live("a", "s-a", "rp-1", 1),
                    live("b", "s-b", "rp-2", 2),
                    live("c", "s-c", "rp-1", 3),
                ],
                1_000,
            )
        })
        .expect("publish");
    let cleared = store
        .write_db(|db| clear_rendezvous_point(db, &"rp-1".into()))
        .expect("clear");
    assert_eq!(cleared, 2);
    let found = read(store, &["a", "b", "c"]);
    assert_eq!(found.keys().collect::<Vec<_>>(), [&Imsi::new("b")]);
}

/// 150 sessions: chunks of 64, 64, 16, 4 and 2 rows, every one published, removed and read.
fn a_batch_longer_than_one_statement_is_published_whole(store: &impl Backend) {
    let rows: Vec<SessionLive> = (0..150)
        .map(|i| live(&format!("{i:03}"), &format!("s-{i}"), "rp-1", i))
        .collect();
    store
        .write_db(|db| publish(db, &rows, 1_000))
        .expect("publish");
    let names: Vec<String> = rows.iter().map(|r| r.imsi.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let found = read(store, &names);
    assert_eq!(found.len(), 150);
    for row in &rows {
        assert_eq!(&found[&row.imsi].live, row);
    }
    let gone: Vec<(Imsi, String)> = rows[..100]
        .iter()
        .map(|r| (r.imsi.clone(), r.session_id.clone()))
        .collect();
    store.write_db(|db| remove(db, &gone)).expect("remove");
    assert_eq!(read(store, &names).len(), 50);
}

/// Sessions of a new operator at rendezvous point `rp` with the least of their neighbours the
/// foreign keys ask for; each IMSI is also its SIM ID and ICCID. Returns the operator.
fn insert_sessions(store: &impl Backend, rp: &str, sessions: &[(&str, &str)]) -> OperatorId {
    store
        .write_db(|db| {
            let operator_id = operators::create_operator(db)?;
            db.execute(
                "INSERT INTO rendezvous_points(rp_id, private_key, public_key, endpoint, pool, allowed_ips, created_at)
                 VALUES ($1, 'private', 'public', 'rp.example:11010', '10.0.0.0/16', '[]', 0)
                 ON CONFLICT (rp_id) DO NOTHING",
                &[&rp],
            )?;
            for (imsi, session_id) in sessions {
                db.execute(
                    "INSERT INTO sims(sim_id, operator_id, sim_type, status, coverage, created_at, last_modified_at)
                     VALUES ($1, $2, 'virtual', 'active', 'jp', 0, 0)",
                    &[imsi, &operator_id],
                )?;
                db.execute(
                    "INSERT INTO subscribers(imsi, sim_id, iccid, subscription, is_primary, is_virtual, status, created_at, last_modified_at)
                     VALUES ($1, $1, $1, 'planArc01', $2, $2, 'active', 0, 0)",
                    &[imsi, &true],
                )?;
                db.execute(
                    "INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, created_at, last_updated_at)
                     VALUES ($1, $1, $2, $3, '10.0.0.2', 0, 0)",
                    &[imsi, session_id, &rp],
                )?;
            }
            Ok(operator_id)
        })
        .expect("insert sessions")
}

fn totals_count_the_operators_current_sessions_only(store: &impl Backend) {
    let mine = insert_sessions(store, "rp-1", &[("a", "s-a"), ("b", "s-b"), ("c", "s-c")]);
    insert_sessions(store, "rp-1", &[("other", "s-o")]);
    let at = |imsi: &str, session: &str, handshake: i64, rx: u64| SessionLive {
        last_handshake_at: Some(handshake),
        last_seen_at: None,
        rx_bytes: rx,
        tx_bytes: rx + 1,
        ..live(imsi, session, "rp-1", rx)
    };
    store
        .write_db(|db| {
            publish(
                db,
                &[
                    at("a", "s-a", 9_000, 10),
                    at("b", "s-old", 9_000, 100),
                    at("c", "s-c", 1_000, 20),
                    at("other", "s-o", 9_000, 1_000),
                ],
                9_500,
            )?;
            heartbeat(db, &["rp-1".into()], 9_800)
        })
        .expect("publish");
    let totals = |online_since, heard_since| {
        store
            .read_db(|db| operator_totals_at(db, &mine, &"rp-1".into(), online_since, heard_since))
            .expect("totals")
    };
    assert_eq!(
        totals(5_000, 9_000),
        LiveTotals {
            online_devices: 1,
            rx_bytes: 30,
            tx_bytes: 32,
        },
        "a online, c's handshake too old, b's row of an older session and the other operator's left out"
    );
    assert_eq!(totals(5_000, 9_900).online_devices, 0, "publisher silent");
    let none = store
        .read_db(|db| operator_totals_at(db, &mine, &"rp-2".into(), 0, 0))
        .expect("totals");
    assert_eq!(none, LiveTotals::default());
}
