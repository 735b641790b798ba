//! Store-level tests of the SIM lifecycle: identities, sessions, addresses, atomicity. Each runs on
//! SQLite and, when ARCD_TEST_POSTGRES_URL names a server (scripts/test-postgres.sh), on
//! PostgreSQL; given but unreachable, the `postgres` test fails. The migration test is SQLite's.

use super::db::Backend;
use super::sessions::{self, PeerChange, SessionPolicy};
use super::subscriptions::{self, IotSimImport};
use super::testing::temp_store;
use super::{operators, rendezvous, sims, Rule, Store, StoreError};
use crate::config::{Config, Coverage};
use crate::ids::OperatorId;

use crate::store::testing::on_both_engines;

on_both_engines!(
    created_sims_have_unique_valid_identities,
    recreate_keeps_address_and_records_events,
    terminated_address_waits_for_quarantine,
    exhausted_pool_is_a_clear_error_and_writes_nothing,
    terminated_identities_are_never_reissued,
    secondary_subscriber_reports_primary_imsi,
    import_is_all_or_nothing,
    active_sessions_listing_matches_changes,
    live_sim_counts_follow_creates_imports_and_terminations,
    a_listed_page_completes_each_sim_with_its_own_rows,
    created_sim_answer_is_what_a_read_returns,
);

fn policy(quarantine_ms: i64) -> SessionPolicy {
    SessionPolicy {
        jp_rendezvous_point: "ap-northeast-1".into(),
        global_rendezvous_point: "ap-northeast-1".into(),
        address_quarantine_ms: quarantine_ms,
        rendezvous_points: vec!["ap-northeast-1".into()],
    }
}

/// The configured rendezvous points with the first one's pool set to `pool`, and an operator.
fn setup_with_pool(store: &impl Backend, pool: &str) -> OperatorId {
    let mut rps = Config::default().rendezvous_points;
    rps[0].pool = pool.parse().expect("pool");
    store
        .write_db(|db| {
            rendezvous::sync(db, &rps)?;
            operators::create_operator(db)
        })
        .expect("setup")
}

fn setup(store: &impl Backend) -> OperatorId {
    setup_with_pool(store, "10.64.0.0/16")
}

fn create(
    store: &impl Backend,
    operator: &OperatorId,
    policy: &SessionPolicy,
) -> super::Result<sims::CreatedSim> {
    // createSim's isolation (api/sims.rs): READ COMMITTED on PostgreSQL.
    store.write_db_read_committed(|db| {
        sims::create_virtual(db, operator, Coverage::Jp, "8942", policy)
    })
}

fn count(store: &impl Backend, table: &str) -> i64 {
    store
        .read_db(|db| db.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[]))
        .expect("count")
        .int(0)
        .expect("int")
}

fn terminate(store: &impl Backend, op: &OperatorId, sim_id: &crate::ids::SimId) -> Vec<PeerChange> {
    let (_, changes) = store
        .write_db(|db| {
            sims::set_termination_enabled(db, op, sim_id, true)?;
            sims::terminate(db, op, sim_id)
        })
        .expect("terminate");
    changes
}

fn created_sims_have_unique_valid_identities(store: &impl Backend) {
    let op = setup(store);
    let p = policy(0);
    let mut iccids = std::collections::HashSet::new();
    let mut imsis = std::collections::HashSet::new();
    let mut ips = std::collections::HashSet::new();
    for _ in 0..50 {
        let created = create(store, &op, &p).expect("create");
        assert!(crate::ids::luhn_valid(created.sim.sim_id.as_str()));
        assert_eq!(created.sim.sim_id.as_str().len(), 19);
        let imsi = created.sim.primary_imsi().expect("imsi").to_string();
        assert!(imsi.starts_with("99999") && imsi.len() == 15);
        assert!(iccids.insert(created.sim.sim_id.clone()));
        assert!(imsis.insert(imsi));
        assert!(ips.insert(created.session.client_ip));
        assert_eq!(created.session.rp_id, "ap-northeast-1");
    }
}

fn recreate_keeps_address_and_records_events(store: &impl Backend) {
    let op = setup(store);
    let p = policy(0);
    let created = create(store, &op, &p).expect("create");
    let sim_id = created.sim.sim_id.clone();
    let again = store
        .write_db(|db| sessions::recreate(db, &op, &sim_id, &p, true))
        .expect("recreate");
    assert_ne!(again.session_id, created.session.session_id);
    assert_eq!(again.client_ip, created.session.client_ip);
    let events = store
        .read_db(|db| sessions::list_events(db, &op, &sim_id, None, None, None, 10))
        .expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["Created", "Deleted", "Created"]);
}

fn terminated_address_waits_for_quarantine(store: &impl Backend) {
    let op = setup_with_pool(store, "10.64.0.0/29"); // hosts .2 to .6
    let short = policy(0);
    let first = create(store, &op, &short).expect("create");
    let changes = terminate(store, &op, &first.sim.sim_id);
    assert!(matches!(changes.as_slice(), [PeerChange::Remove { .. }]));

    // With a long quarantine the released address is skipped.
    let long = policy(3_600_000);
    let second = create(store, &op, &long).expect("create");
    assert_ne!(second.session.client_ip, first.session.client_ip);
    // With no quarantine it is reused.
    let third = create(store, &op, &short).expect("create");
    assert_eq!(third.session.client_ip, first.session.client_ip);
}

fn exhausted_pool_is_a_clear_error_and_writes_nothing(store: &impl Backend) {
    let op = setup_with_pool(store, "10.64.0.0/29");
    let p = policy(0);
    for _ in 0..5 {
        create(store, &op, &p).expect("fits");
    }
    let before = (
        count(store, "sims"),
        count(store, "subscribers"),
        count(store, "session_events"),
    );
    let err = create(store, &op, &p).err().expect("pool is full");
    assert!(
        matches!(err, StoreError::Rule(Rule::PoolExhausted(..))),
        "{err:?}"
    );
    assert!(err.to_string().contains("10.64.0.0/29"));
    let after = (
        count(store, "sims"),
        count(store, "subscribers"),
        count(store, "session_events"),
    );
    assert_eq!(before, after);
}

fn terminated_identities_are_never_reissued(store: &impl Backend) {
    let op = setup(store);
    let p = policy(0);
    let first = create(store, &op, &p).expect("create");
    let sim_id = first.sim.sim_id.clone();
    terminate(store, &op, &sim_id);
    let next = create(store, &op, &p).expect("create");
    assert_ne!(next.sim.sim_id, first.sim.sim_id);
    assert_ne!(next.sim.primary_imsi(), first.sim.primary_imsi());
    let kept = store
        .read_db(|db| sims::get(db, &op, &sim_id))
        .expect("record stays");
    assert_eq!(kept.status, "terminated");
    assert!(kept.session.is_none());
}

fn secondary_subscriber_reports_primary_imsi(store: &impl Backend) {
    let op = setup(store);
    let p = policy(0);
    let item = IotSimImport {
        iccid: "8981100000000000001".into(),
        imsi: "440101234567890".into(),
        msisdn: Some("819012345678".into()),
        subscription: "plan-D".into(),
    };
    store
        .write_db(|db| {
            subscriptions::import_iot_sims(db, &op, Coverage::Jp, std::slice::from_ref(&item))
        })
        .expect("import");
    let added = store
        .write_db(|db| {
            subscriptions::add_virtual_subscriber(db, &op, &item.sim_id(), &item.iccid, &p)
        })
        .expect("add");
    assert_eq!(added.session.primary_imsi, item.imsi);
    assert!(added.session.imsi.as_str().starts_with("99999"));
    let all = store.read_db(sessions::list_active_sessions).expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], added.session);
    let twice = store.write_db(|db| {
        subscriptions::add_virtual_subscriber(db, &op, &item.sim_id(), &item.iccid, &p)
    });
    assert!(matches!(
        twice,
        Err(StoreError::Rule(Rule::AlreadyHasVirtualSubscriber(_)))
    ));
    let change = store
        .write_db(|db| {
            subscriptions::terminate_virtual_subscriber(
                db,
                &op,
                &item.sim_id(),
                &item.iccid,
                &added.imsi,
            )
        })
        .expect("terminate the secondary subscriber");
    assert!(matches!(change, Some(PeerChange::Remove { .. })));
    let sim = store
        .read_db(|db| sims::get(db, &op, &item.sim_id()))
        .expect("the IoT SIM stays");
    assert_eq!(sim.status, "active");
    assert!(sim.arc_subscriber().is_none());
}

fn import_is_all_or_nothing(store: &impl Backend) {
    let op = setup(store);
    let good = |n: u8| IotSimImport {
        iccid: format!("898110000000000000{n}"),
        imsi: format!("44010123456789{n}").into(),
        msisdn: None,
        subscription: "plan-D".into(),
    };
    let mut duplicate = good(3);
    duplicate.imsi = good(1).imsi;
    let err = store
        .write_db(|db| {
            subscriptions::import_iot_sims(
                db,
                &op,
                Coverage::Jp,
                &[good(1), good(2), duplicate.clone()],
            )
        })
        .expect_err("duplicate IMSI");
    assert!(
        matches!(err, StoreError::Rule(Rule::ImportItem { index: 2, .. })),
        "{err:?}"
    );
    assert_eq!(count(store, "sims"), 0);
    assert_eq!(count(store, "subscribers"), 0);
}

fn active_sessions_listing_matches_changes(store: &impl Backend) {
    let op = setup(store);
    let p = policy(0);
    let mut expected = Vec::new();
    for _ in 0..5 {
        expected.push(create(store, &op, &p).expect("create").session);
    }
    let removed = expected.remove(0);
    store
        .write_db(|db| sessions::remove_credentials(db, &op, &removed.sim_id))
        .expect("remove");
    let mut listed = store.read_db(sessions::list_active_sessions).expect("list");
    listed.sort_by(|a, b| a.imsi.cmp(&b.imsi));
    expected.sort_by(|a, b| a.imsi.cmp(&b.imsi));
    assert_eq!(listed, expected);
}

/// The quota reads `operator_sim_counts` (kept by triggers: SQLite's, PostgreSQL's PL/pgSQL); its
/// sum must equal a count of the rows after every kind of write to `sims` (create, import, IoT
/// status change, terminate), per operator.
fn live_sim_counts_follow_creates_imports_and_terminations(store: &impl Backend) {
    let op = setup(store);
    let other = store
        .write_db(operators::create_operator)
        .expect("second operator");
    let p = policy(0);
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(create(store, &op, &p).expect("create").sim.sim_id);
    }
    create(store, &other, &p).expect("create for the other operator");
    let iot = IotSimImport {
        iccid: "8981100000000000009".into(),
        imsi: "440101234567899".into(),
        msisdn: None,
        subscription: "plan-D".into(),
    };
    store
        .write_db(|db| {
            subscriptions::import_iot_sims(db, &op, Coverage::Jp, std::slice::from_ref(&iot))
        })
        .expect("import");
    store
        .write_db(|db| sims::change_status(db, &op, &iot.sim_id(), sims::StatusAction::Suspend))
        .expect("suspend keeps the SIM counted");
    for sim_id in &created[..2] {
        terminate(store, &op, sim_id);
    }
    let counted = |operator: &OperatorId| -> (i64, i64) {
        store
            .read_db(|db| {
                let kept = db
                    .query_one(
                        "SELECT CAST(SUM(live_sims) AS BIGINT) FROM operator_sim_counts
                         WHERE operator_id = $1",
                        &[operator],
                    )?
                    .int(0)?;
                let rows = db
                    .query_one(
                        "SELECT COUNT(*) FROM sims WHERE operator_id = $1 AND status <> 'terminated'",
                        &[operator],
                    )?
                    .int(0)?;
                Ok((kept, rows))
            })
            .expect("counts")
    };
    assert_eq!(
        counted(&op),
        (4, 4),
        "5 created + 1 imported - 2 terminated"
    );
    assert_eq!(counted(&other), (1, 1));
    let refused = store
        .write_db(|db| sims::check_sim_quota(db, &op, 1, 4))
        .expect("check");
    assert_eq!(
        refused,
        Err(sims::SimQuotaExceeded {
            limit: 4,
            held: 4,
            adding: 1
        })
    );
    assert_eq!(
        store
            .write_db(|db| sims::check_sim_quota(db, &other, 3, 4))
            .expect("check"),
        Ok(())
    );
    // createSim checks the quota in the SIM's insert: at the limit it is refused with the same
    // figures and writes nothing; below it, it creates.
    let create_within = |operator: &OperatorId, limit: u64| {
        store
            .write_db_read_committed(|db| {
                Ok(sims::create_virtual_within_quota(
                    db,
                    operator,
                    Coverage::Jp,
                    "8942",
                    &policy(0),
                    limit,
                )?
                .map(|created| created.sim.sim_id))
            })
            .expect("create within quota")
    };
    assert_eq!(create_within(&op, 4), Err(refused.expect_err("refused")));
    assert_eq!(counted(&op), (4, 4), "the refused create wrote nothing");
    assert!(create_within(&op, 5).is_ok());
    assert_eq!(counted(&op), (5, 5));
}

/// A database made before migration 7 gets its counts from the rows it already holds (SQLite's
/// migration list; PostgreSQL's starts at today's schema).
#[test]
fn migration_7_fills_live_sim_counts_from_existing_rows() {
    let (dir, store) = temp_store();
    let op = setup(&store);
    let p = policy(0);
    let first = create(&store, &op, &p).expect("create").sim.sim_id;
    for _ in 0..3 {
        create(&store, &op, &p).expect("create");
    }
    terminate(&store, &op, &first);
    drop(store);
    let path = dir.path().join("arcd.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "DROP TRIGGER sims_count_insert; DROP TRIGGER sims_count_delete;
             DROP TRIGGER sims_count_update; DROP TABLE operator_sim_counts;
             ALTER TABLE arc_sessions DROP COLUMN last_endpoint; -- migration 8
             CREATE INDEX sims_by_operator_status ON sims(operator_id, status); -- undo 9
             DROP TABLE peer_outbox; -- undo 10
             DROP TABLE session_live; DROP TABLE live_publishers; -- undo 11
             DROP TABLE credentials; -- undo 13
             PRAGMA user_version = 6;",
        )
        .expect("back to version 6");
    }
    let store = Store::open(&path).expect("reopen migrates");
    let kept: i64 = store
        .sqlite()
        .expect("a SQLite store")
        .read(|c| {
            Ok(c.query_row(
                "SELECT live_sims FROM operator_sim_counts WHERE operator_id = ?1",
                [&op],
                |r| r.get(0),
            )?)
        })
        .expect("count");
    assert_eq!(kept, 3);
}

/// A page is completed a chunk of SIMs at a time (sims/read.rs): each SIM must get its own tags,
/// subscribers and session, the same as reading it alone; pages shorter than a chunk are padded
/// with repeats, which must not duplicate anything.
fn a_listed_page_completes_each_sim_with_its_own_rows(store: &impl Backend) {
    let op = setup(store);
    let p = policy(0);
    let created: Vec<_> = (0..5)
        .map(|_| create(store, &op, &p).expect("create").sim.sim_id)
        .collect();
    for (n, sim_id) in created.iter().enumerate().step_by(2) {
        let tags = vec![
            ("name".to_string(), format!("sim{n}")),
            ("n".into(), n.to_string()),
        ];
        store
            .write_db(|db| sims::put_tags(db, &op, sim_id, &tags))
            .expect("tags");
    }
    terminate(store, &op, &created[1]);
    let shape = |sim: &crate::store::SimRecord| {
        let subscribers: Vec<_> = sim
            .subscribers
            .iter()
            .map(|s| (s.imsi.clone(), s.is_primary))
            .collect();
        let session = sim
            .session
            .as_ref()
            .map(|s| (s.imsi.clone(), s.client_ip.clone()));
        (sim.sim_id.clone(), sim.tags.clone(), subscribers, session)
    };
    for limit in [3, 5, 10] {
        let page = store
            .read_db(|db| sims::list(db, &op, None, limit))
            .expect("list");
        assert_eq!(page.len(), (limit as usize).min(5));
        for listed in &page {
            let alone = store
                .read_db(|db| sims::get(db, &op, &listed.sim_id))
                .expect("get");
            assert_eq!(shape(listed), shape(&alone));
            assert_eq!(listed.subscribers.len(), 1);
        }
    }
    let all = store
        .read_db(|db| sims::list(db, &op, None, 10))
        .expect("list");
    assert_eq!(all[0].tags.len(), 2);
    assert!(
        all[1].tags.is_empty() && all[1].session.is_none(),
        "terminated, untagged"
    );
    assert!(all[2].session.is_some());
}

/// createSim answers from what it wrote instead of reading it back: the answer must be exactly
/// what `get` reads afterwards, for either coverage.
fn created_sim_answer_is_what_a_read_returns(store: &impl Backend) {
    let op = setup(store);
    for coverage in [Coverage::Jp, Coverage::G] {
        let created = store
            .write_db_read_committed(|db| {
                sims::create_virtual(db, &op, coverage, "8942", &policy(0))
            })
            .expect("create");
        let read = store
            .read_db(|db| sims::get(db, &op, &created.sim.sim_id))
            .expect("get");
        assert_eq!(created.sim, read);
        let session = read.session.as_ref().expect("session");
        assert!(!session.server_public_key.is_empty());
        assert!(!session.allowed_ips.is_empty());
        assert_eq!(session.session_id, created.session.session_id);
    }
}
