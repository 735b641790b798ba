//! The outbox on both engines (PostgreSQL with `ARCD_TEST_POSTGRES_URL`), and on PostgreSQL the
//! case its watermark exists for: a transaction that commits after a later one.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::config::{Config, Coverage};
use crate::store::db::testing::temp_pg_target;
use crate::store::db::{Backend, PgStore};
use crate::store::sessions::{PeerChange, SessionPolicy};
use crate::store::{operators, rendezvous, sims};

use crate::store::testing::on_both_engines;

on_both_engines!(
    rows_are_read_once_in_order_after_the_cursor,
    the_start_cursor_skips_what_its_snapshot_holds,
    a_limit_splits_the_rows_without_losing_any,
    follow_reads_the_current_session_of_each_named_imsi,
    follow_reads_many_imsis_in_one_step,
    prune_deletes_only_old_rows_in_batches,
);

fn peer(n: u32) -> OutboxChange {
    OutboxChange::Peer {
        rp_id: "ap-northeast-1".into(),
        imsi: Imsi::new(format!("29505000000{n:04}")),
    }
}

fn write(store: &impl Backend, changes: &[OutboxChange]) -> Option<Position> {
    store
        .write_db(|db| record(db, changes))
        .expect("record outbox rows")
}

fn read(store: &impl Backend, cursor: Cursor, limit: u32) -> (Vec<OutboxRow>, Cursor) {
    store
        .read_db(|db| read_after(db, cursor, limit))
        .expect("read outbox rows")
}

/// Reads from `cursor` until `count` rows came: on PostgreSQL any write transaction still open
/// on the server (other tests run beside this one) holds the watermark back for a moment.
fn read_until(store: &impl Backend, mut cursor: Cursor, count: usize) -> (Vec<OutboxRow>, Cursor) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < count && std::time::Instant::now() < deadline {
        let (rows, next) = read(store, cursor, 100);
        assert!(next >= cursor, "the cursor went back");
        seen.extend(rows);
        cursor = next;
        if seen.len() < count {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (seen, cursor)
}

fn start(store: &impl Backend) -> Cursor {
    store.read_db(start_cursor).expect("start cursor")
}

fn changes(rows: &[OutboxRow]) -> Vec<OutboxChange> {
    rows.iter().map(|row| row.change.clone()).collect()
}

fn rows_are_read_once_in_order_after_the_cursor(store: &impl Backend) {
    let cursor = start(store);
    let first = write(store, &[peer(1), OutboxChange::Vpgs]).expect("position");
    let second = write(store, &[peer(2)]).expect("position");
    assert_eq!(write(store, &[]), None, "no change, no row");
    let (rows, next) = read_until(store, cursor, 3);
    assert_eq!(changes(&rows), [peer(1), OutboxChange::Vpgs, peer(2)]);
    assert!(next.has_read(first) && next.has_read(second));
    assert!(!cursor.has_read(first));
    assert!(rows.iter().all(|row| row.committed_at > 0));
    let (again, same) = read(store, next, 100);
    assert!(again.is_empty(), "read twice: {again:?}");
    // PostgreSQL's cursor is the server-wide xmin: other tests' transactions move it on even
    // when no row of this schema came; it never goes back.
    assert!(same >= next, "the cursor went back: {same:?} < {next:?}");
    write(store, &[peer(3)]);
    let (rows, _) = read_until(store, next, 1);
    assert_eq!(changes(&rows), [peer(3)]);
}

/// What a start snapshot holds is behind its cursor; what commits later is after it.
fn the_start_cursor_skips_what_its_snapshot_holds(store: &impl Backend) {
    write(store, &[peer(1)]);
    let loaded = store.read_db(snapshot).expect("snapshot");
    write(store, &[peer(2)]);
    let mut cursor = loaded.cursor;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(&peer(2)) && std::time::Instant::now() < deadline {
        let (rows, next) = read(store, cursor, 100);
        seen.extend(changes(&rows));
        cursor = next;
        std::thread::sleep(Duration::from_millis(10));
    }
    let exact = store
        .read_db(|db| Ok(db.dialect() == Dialect::Sqlite))
        .expect("dialect");
    if exact {
        assert_eq!(seen, [peer(2)]);
    } else {
        // PostgreSQL: a row the snapshot already held comes again when a transaction elsewhere on
        // the server (other tests) held the watermark back at the snapshot; applying the current
        // state twice changes nothing. Never anything else, and the later change always comes.
        assert!(seen.contains(&peer(2)), "{seen:?}");
        assert!(
            seen.iter().all(|c| *c == peer(1) || *c == peer(2)),
            "{seen:?}"
        );
    }
}

fn a_limit_splits_the_rows_without_losing_any(store: &impl Backend) {
    let mut cursor = start(store);
    let big: Vec<OutboxChange> = (0..5).map(peer).collect();
    write(store, &big);
    for n in 5..8 {
        write(store, &[peer(n)]);
    }
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 8 && std::time::Instant::now() < deadline {
        let (rows, next) = read(store, cursor, 2);
        assert!(next >= cursor);
        assert!(
            rows.len() <= 5,
            "one transaction's 5 rows at most: {rows:?}"
        );
        seen.extend(rows);
        cursor = next;
    }
    let (more, _) = read(store, cursor, 2);
    seen.extend(more);
    let seqs: BTreeSet<i64> = seen.iter().map(|row| row.seq).collect();
    assert_eq!(seqs.len(), seen.len(), "a row read twice: {seen:?}");
    let mut got = changes(&seen);
    got.sort_by_key(|c| format!("{c:?}"));
    let mut wanted: Vec<OutboxChange> = (0..8).map(peer).collect();
    wanted.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(got, wanted);
}

fn policy() -> SessionPolicy {
    SessionPolicy {
        jp_rendezvous_point: "ap-northeast-1".into(),
        global_rendezvous_point: "ap-northeast-1".into(),
        address_quarantine_ms: 0,
        rendezvous_points: vec!["ap-northeast-1".into()],
    }
}

fn follow_reads_the_current_session_of_each_named_imsi(store: &impl Backend) {
    let cursor = start(store);
    let rps = Config::default().rendezvous_points;
    let created = store
        .write_db(|db| {
            rendezvous::sync(db, &rps)?;
            let op = operators::create_operator(db)?;
            let created = sims::create_virtual(db, &op, Coverage::Jp, "8942", &policy())?;
            record(db, &[(&PeerChange::Upsert(created.session.clone())).into()])?;
            Ok((op, created))
        })
        .expect("create");
    let (op, created) = created;
    let followed = follow_until(store, cursor);
    assert_eq!(
        followed.sessions,
        [(created.session.imsi.clone(), Some(created.session.clone()))]
    );
    assert!(followed.vpgs.is_none());
    store
        .write_db(|db| {
            sims::set_termination_enabled(db, &op, &created.sim.sim_id, true)?;
            let (_, changes) = sims::terminate(db, &op, &created.sim.sim_id)?;
            let rows: Vec<OutboxChange> = changes.iter().map(OutboxChange::from).collect();
            record(db, &rows)?;
            record(db, &[OutboxChange::Vpgs])
        })
        .expect("terminate");
    let after = follow_until(store, followed.cursor);
    assert_eq!(after.sessions, [(created.session.imsi.clone(), None)]);
    assert_eq!(after.vpgs, Some(Vec::new()));
}

/// More IMSIs than one statement reads (they are read in chunks), one of them without a session:
/// every named IMSI comes back once, in IMSI order, with its own session or none.
fn follow_reads_many_imsis_in_one_step(store: &impl Backend) {
    let cursor = start(store);
    let rps = Config::default().rendezvous_points;
    let created = store
        .write_db(|db| {
            rendezvous::sync(db, &rps)?;
            let op = operators::create_operator(db)?;
            let mut sessions = Vec::new();
            for _ in 0..70 {
                sessions
                    .push(sims::create_virtual(db, &op, Coverage::Jp, "8942", &policy())?.session);
            }
            let mut rows: Vec<OutboxChange> = sessions
                .iter()
                .map(|session| (&PeerChange::Upsert(session.clone())).into())
                .collect();
            // A repeated IMSI and one that has no session.
            rows.push((&PeerChange::Upsert(sessions[0].clone())).into());
            rows.push(OutboxChange::Peer {
                rp_id: sessions[0].rp_id.clone(),
                imsi: Imsi::new("295050999999999"),
            });
            record(db, &rows)?;
            Ok(sessions)
        })
        .expect("create");
    let followed = follow_until(store, cursor);
    let mut expected: Vec<(Imsi, Option<ActiveSession>)> = created
        .into_iter()
        .map(|session| (session.imsi.clone(), Some(session)))
        .collect();
    expected.push((Imsi::new("295050999999999"), None));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(followed.sessions, expected);
}

/// `follow` from `cursor` until it returns rows (see `read_until`).
fn follow_until(store: &impl Backend, cursor: Cursor) -> Followed {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let followed = store.read_db(|db| follow(db, cursor, 100)).expect("follow");
        if !followed.rows.is_empty() || std::time::Instant::now() > deadline {
            return followed;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn prune_deletes_only_old_rows_in_batches(store: &impl Backend) {
    let cursor = start(store);
    write(store, &[peer(1), peer(2), peer(3)]);
    store
        .write_db(|db| db.execute("UPDATE peer_outbox SET committed_at = 1000", &[]))
        .expect("age the rows");
    write(store, &[peer(4)]);
    let pruned = |batch| store.write_db(|db| prune(db, 5000, batch)).expect("prune");
    assert_eq!(pruned(2), 2);
    assert_eq!(pruned(2), 1);
    assert_eq!(pruned(2), 0);
    let (rows, _) = read_until(store, cursor, 1);
    assert_eq!(changes(&rows), [peer(4)]);
}

/// T1 writes a row and stays open; T2 writes later and commits. A poll then must not move past
/// T1 (a sequence-number cursor would: T2's number is higher and committed), so once T1 commits
/// the next poll returns T1's row, and no row comes twice.
#[test]
fn an_open_transaction_holds_the_watermark_back_on_postgres() {
    let Some((url, schema)) = temp_pg_target() else {
        return;
    };
    let first = PgStore::connect_in_schema(&url, &schema).expect("connect");
    let second = PgStore::connect_in_schema(&url, &schema).expect("connect");
    let mut cursor = start(&first);
    let (written, wait_written) = mpsc::channel();
    let (go, wait_go) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let first = &first;
        let t1 = scope.spawn(move || {
            first
                .write_db(|db| {
                    let position = record(db, &[peer(1)])?;
                    let _ = written.send(());
                    wait_go
                        .recv_timeout(Duration::from_secs(30))
                        .map_err(|_| StoreError::Corrupt("never told to commit".into()))?;
                    Ok(position)
                })
                .expect("T1")
        });
        wait_written
            .recv_timeout(Duration::from_secs(30))
            .expect("T1 wrote its row");
        let t2 = write(&second, &[peer(2)]).expect("T2's position");
        let (rows, next) = read(&second, cursor, 100);
        assert!(rows.is_empty(), "read past the open T1: {rows:?}");
        assert!(
            !next.has_read(t2),
            "the cursor moved past T2 while T1 was open"
        );
        assert!(
            second.read_db(|db| held_back(db, next)).expect("held back"),
            "T2's row waits behind T1: the follower must read again soon"
        );
        cursor = next;
        go.send(()).expect("T1 waits");
        let t1 = t1.join().expect("T1 thread").expect("T1's position");
        assert!(t1 < t2, "T1 began first, so its xid is lower");
        let (rows, next) = read_until(&second, cursor, 2);
        assert_eq!(changes(&rows), [peer(1), peer(2)]);
        assert!(next.has_read(t1) && next.has_read(t2));
        let (again, _) = read(&second, next, 100);
        assert!(again.is_empty(), "read twice: {again:?}");
        assert!(!second.read_db(|db| held_back(db, next)).expect("held back"));
    });
}

/// A burst of commits is announced by NOTIFY on the schema's channel, at least once and after
/// the last request of the burst, off the writers' path (`PgStore::send_after_commit`).
#[test]
fn commits_are_announced_on_the_schemas_channel_on_postgres() {
    let Some((url, schema)) = temp_pg_target() else {
        return;
    };
    let store =
        super::super::Store::Postgres(PgStore::connect_in_schema(&url, &schema).expect("connect"));
    let mut listener = postgres::Client::connect(&url, postgres::NoTls).expect("listener");
    listener
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .expect("search_path");
    let channel: String = listener
        .query_one(NOTIFY_CHANNEL_SQL, &[])
        .expect("channel")
        .get(0);
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .expect("listen");
    let count_within = |listener: &mut postgres::Client, wait: Duration| {
        use postgres::fallible_iterator::FallibleIterator;
        let mut count = 0;
        let mut notifications = listener.notifications();
        let mut arrived = notifications.timeout_iter(wait);
        while let Ok(Some(n)) = arrived.next() {
            assert_eq!(n.channel(), channel);
            count += 1;
        }
        count
    };
    for _ in 0..50 {
        notify_followers(&store);
    }
    let burst = count_within(&mut listener, Duration::from_secs(2));
    assert!(
        (1..=50).contains(&burst),
        "a burst of 50 requests announced {burst} times"
    );
    assert_eq!(count_within(&mut listener, Duration::from_millis(300)), 0);
    notify_followers(&store);
    assert_eq!(
        count_within(&mut listener, Duration::from_secs(2)),
        1,
        "a later commit is announced again"
    );
}
