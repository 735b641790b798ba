//! createSim from several threads at once, the way the API runs it (quota check and create in
//! one `write_db_read_committed` transaction): one operator, one address pool. On PostgreSQL
//! this is READ COMMITTED over a pool of connections, so these tests are what shows the
//! createSim path keeps its rules without SERIALIZABLE: distinct addresses and numbers, released
//! addresses reused by one device each, the quota passed by at most the number of concurrent
//! creates, and no create failing. On SQLite (one writer) the same bodies must hold exactly.

use std::collections::HashSet;

use super::db::testing::temp_pg_target;
use super::db::{Backend, Db, PgOptions, PgStore};
use super::sessions::SessionPolicy;
use super::testing::temp_store;
use super::{operators, rendezvous, sims, Result};
use crate::config::{Config, Coverage};
use crate::ids::{OperatorId, SimId};

const THREADS: usize = 8;

/// Each test on a SQLite store and, with ARCD_TEST_POSTGRES_URL, on a PostgreSQL store whose
/// pool has a connection per thread (the server's shape: one store, many API requests).
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                let (_dir, store) = super::temp_store();
                super::$name(&store, false);
            }

            #[test]
            fn postgres() {
                let Some((url, schema)) = super::temp_pg_target() else {
                    return;
                };
                let options = super::PgOptions {
                    pool_size: super::THREADS,
                    schema: Some(schema),
                };
                let store = super::PgStore::connect_with(&url, &options).expect("PostgreSQL");
                super::$name(&store, true);
            }
        }
    )*};
}

on_both_engines!(
    concurrent_creates_in_one_pool_all_succeed_with_distinct_addresses,
    concurrent_creates_reuse_each_released_address_once,
    concurrent_creates_pass_the_quota_by_at_most_their_number,
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
fn setup(store: &impl Backend, pool: &str) -> OperatorId {
    let mut rps = Config::default().rendezvous_points;
    rps[0].pool = pool.parse().expect("pool");
    store
        .write_db(|db| {
            rendezvous::sync(db, &rps)?;
            operators::create_operator(db)
        })
        .expect("setup")
}

/// What the API's createSim does in its transaction; `Ok(None)`: the quota refused it.
fn create_sim(
    store: &impl Backend,
    op: &OperatorId,
    limit: u64,
    policy: &SessionPolicy,
) -> Result<Option<sims::CreatedSim>> {
    store.write_db_read_committed(|db| {
        Ok(sims::create_virtual_within_quota(db, op, Coverage::Jp, "8942", policy, limit)?.ok())
    })
}

/// `per_thread` creates on each of THREADS threads at once; every outcome.
fn create_concurrently<S: Backend + Sync>(
    store: &S,
    op: &OperatorId,
    limit: u64,
    per_thread: usize,
    policy: &SessionPolicy,
) -> Vec<Result<Option<sims::CreatedSim>>> {
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    (0..per_thread)
                        .map(|_| create_sim(store, op, limit, policy))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("worker"))
            .collect()
    })
}

fn all_created(outcomes: Vec<Result<Option<sims::CreatedSim>>>) -> Vec<sims::CreatedSim> {
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome
                .expect("a create failed")
                .expect("the quota refused")
        })
        .collect()
}

/// Distinct addresses, all in the pool; distinct SIM ids and IMSIs; the stored count of live
/// SIMs equals the rows.
fn assert_distinct(store: &impl Backend, op: &OperatorId, created: &[sims::CreatedSim]) {
    let pool: ipnet::Ipv4Net = "10.64.0.0/16".parse().expect("net");
    let addresses: HashSet<_> = created.iter().map(|c| c.session.client_ip).collect();
    assert_eq!(
        addresses.len(),
        created.len(),
        "an address was handed out twice"
    );
    assert!(addresses.iter().all(|ip| pool.contains(ip)));
    let sim_ids: HashSet<_> = created.iter().map(|c| c.sim.sim_id.clone()).collect();
    let imsis: HashSet<_> = created.iter().map(|c| c.session.imsi.clone()).collect();
    assert_eq!((sim_ids.len(), imsis.len()), (created.len(), created.len()));
    let (kept, rows) = live_counts(store, op);
    assert_eq!(kept, rows, "the live-SIM count follows the rows");
}

/// (sum of the live-SIM count shards, SIMs not terminated) of `op`.
fn live_counts(store: &impl Backend, op: &OperatorId) -> (i64, i64) {
    store
        .read_db(|db: &mut dyn Db| {
            let kept = db
                .query_one(
                    "SELECT CAST(COALESCE(SUM(live_sims), 0) AS BIGINT) FROM operator_sim_counts
                     WHERE operator_id = $1",
                    &[op],
                )?
                .int(0)?;
            let rows = db
                .query_one(
                    "SELECT COUNT(*) FROM sims WHERE operator_id = $1 AND status <> 'terminated'",
                    &[op],
                )?
                .int(0)?;
            Ok((kept, rows))
        })
        .expect("counts")
}

fn concurrent_creates_in_one_pool_all_succeed_with_distinct_addresses<S: Backend + Sync>(
    store: &S,
    _read_committed: bool,
) {
    let op = setup(store, "10.64.0.0/16");
    let created = all_created(create_concurrently(store, &op, 100_000, 25, &policy(0)));
    assert_eq!(created.len(), THREADS * 25);
    assert_distinct(store, &op, &created);
}

/// Terminated SIMs' addresses past quarantine (0 here) are taken again by concurrent creates:
/// each by one device only, and before any never-used address.
fn concurrent_creates_reuse_each_released_address_once<S: Backend + Sync>(
    store: &S,
    _read_committed: bool,
) {
    let op = setup(store, "10.64.0.0/16");
    let p = policy(0);
    let first = all_created(create_concurrently(store, &op, 100_000, 4, &p));
    let released: HashSet<_> = first.iter().map(|c| c.session.client_ip).collect();
    for c in &first {
        terminate(store, &op, &c.sim.sim_id);
    }
    let second = all_created(create_concurrently(store, &op, 100_000, 4, &p));
    assert_distinct(store, &op, &second);
    let reused: HashSet<_> = second.iter().map(|c| c.session.client_ip).collect();
    assert_eq!(reused, released, "every released address, each once");
}

/// Quota 20, 8 threads × 6 creates. SQLite: exactly 20 created. PostgreSQL under READ
/// COMMITTED: a create sees only committed SIMs, so the creates running at once may each pass
/// the check: at most THREADS beyond the limit (docs/design/store-engines.md, createSim).
fn concurrent_creates_pass_the_quota_by_at_most_their_number<S: Backend + Sync>(
    store: &S,
    read_committed: bool,
) {
    const LIMIT: u64 = 20;
    let op = setup(store, "10.64.0.0/16");
    let outcomes = create_concurrently(store, &op, LIMIT, 6, &policy(0));
    let mut created = Vec::new();
    for outcome in outcomes {
        if let Some(sim) = outcome.expect("a create failed") {
            created.push(sim);
        }
    }
    assert_distinct(store, &op, &created);
    let held = live_counts(store, &op).1 as usize;
    assert_eq!(held, created.len());
    if read_committed {
        assert!(
            (LIMIT as usize..=LIMIT as usize + THREADS).contains(&held),
            "{held} live SIMs with a limit of {LIMIT}"
        );
    } else {
        assert_eq!(held, LIMIT as usize);
    }
    // Once the creates have committed, the quota is exact again.
    assert!(create_sim(store, &op, LIMIT, &policy(0))
        .expect("create")
        .is_none());
}

fn terminate(store: &impl Backend, op: &OperatorId, sim_id: &SimId) {
    store
        .write_db(|db| {
            sims::set_termination_enabled(db, op, sim_id, true)?;
            sims::terminate(db, op, sim_id)
        })
        .expect("terminate");
}
