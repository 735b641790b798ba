//! Harvest Data retention: entries older than `services.harvest_retention_days` are purged once at
//! start and then hourly, in small transactions so API writes never wait long behind a purge. On
//! PostgreSQL every node runs the job, and a round runs on the node that takes the advisory lock
//! `PURGE_LOCK`; the others skip that round (one purger, no duplicate deletes racing each other).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::db::Backend;
use crate::store::{self, harvest, Store};

/// Entries deleted per write transaction.
pub const BATCH: usize = 5_000;
/// Time between two purges.
pub const PERIOD: Duration = Duration::from_secs(3600);
const DAY_MS: i64 = 86_400_000;
/// The PostgreSQL advisory lock key of the purge: an arbitrary constant ("arcdhvst").
pub const PURGE_LOCK: i64 = 0x6172_6364_6876_7374;

/// The oldest time kept at `now_ms` (entries strictly older go).
pub fn cutoff_ms(now_ms: i64, retention_days: u32) -> i64 {
    now_ms.saturating_sub(i64::from(retention_days).saturating_mul(DAY_MS))
}

/// Deletes every entry older than `cutoff_ms`, `batch` entries per transaction; returns how many
/// went. Blocking: call it off the async threads.
pub fn purge(store: &impl Backend, cutoff_ms: i64, batch: usize) -> store::Result<usize> {
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let deleted = store.write_db(|db| harvest::purge_older_than(db, cutoff_ms, batch))?;
        total += deleted;
        if deleted < batch {
            return Ok(total);
        }
    }
}

/// One round of the job: `purge`, on PostgreSQL only while holding `PURGE_LOCK` (`None`: another
/// node holds it and purges). Checks between batches that the lock's connection is still there,
/// so a node that lost it stops rather than purging beside the next holder. Blocking.
pub fn purge_round(store: &Store, cutoff_ms: i64, batch: usize) -> store::Result<Option<usize>> {
    let Store::Postgres(pg) = store else {
        return purge(store, cutoff_ms, batch).map(Some);
    };
    let Some(lock) = pg.try_advisory_lock(PURGE_LOCK)? else {
        return Ok(None);
    };
    let batch = batch.max(1);
    let mut total = 0;
    while !lock.is_lost() {
        let deleted = store.write_db(|db| harvest::purge_older_than(db, cutoff_ms, batch))?;
        total += deleted;
        if deleted < batch {
            break;
        }
    }
    Ok(Some(total))
}

/// Runs `purge_round` now and then every `PERIOD` until the task is aborted (or the runtime stops).
/// Failures are logged and retried at the next period.
pub fn spawn_purge_job(store: Arc<Store>, retention_days: u32) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let cutoff = cutoff_ms(store::now_ms(), retention_days);
            let store = store.clone();
            match tokio::task::spawn_blocking(move || purge_round(&store, cutoff, BATCH)).await {
                Ok(Ok(None)) => {
                    tracing::debug!("Harvest Data purge skipped: another node holds its lock")
                }
                Ok(Ok(Some(0))) => {}
                Ok(Ok(Some(deleted))) => {
                    tracing::info!(deleted, retention_days, "expired Harvest Data purged")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "Harvest Data purge failed"),
                Err(e) => tracing::warn!(error = %e, "Harvest Data purge task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OperatorId;
    use crate::store::harvest::{EntryQuery, NewEntry, Scope};
    use crate::store::operators;

    use crate::store::testing::temp_store;

    fn seed(store: &Store, operator_id: &OperatorId, times: &[i64]) {
        let entries: Vec<NewEntry> = times
            .iter()
            .map(|&time| NewEntry {
                operator_id: operator_id.clone(),
                imsi: "999990000000001".into(),
                sim_id: "8942000000000000001".into(),
                time,
                content_type: "text/plain".into(),
                content: time.to_string(),
            })
            .collect();
        store
            .write_db(|db| harvest::insert(db, &entries))
            .expect("insert");
    }

    fn times(store: &Store, operator_id: &OperatorId) -> Vec<i64> {
        let scope = Scope::Sim("8942000000000000001".into());
        let query = EntryQuery {
            limit: 1000,
            ..EntryQuery::default()
        };
        store
            .read_db(|db| harvest::list_entries(db, operator_id, &scope, &query))
            .expect("list")
            .iter()
            .map(|e| e.time)
            .collect()
    }

    #[test]
    fn cutoff_is_retention_days_back() {
        assert_eq!(cutoff_ms(10 * DAY_MS, 3), 7 * DAY_MS);
        assert_eq!(cutoff_ms(i64::MIN + 1, u32::MAX), i64::MIN);
    }

    #[test]
    fn purge_loops_over_batches_until_only_recent_entries_remain() {
        let (_dir, store) = temp_store();
        let op = store
            .write_db(operators::create_operator)
            .expect("operator");
        let now = 100 * DAY_MS;
        let cutoff = cutoff_ms(now, 40);
        let old: Vec<i64> = (0..23).map(|i| cutoff - 1 - i).collect();
        seed(&store, &op, &old);
        seed(&store, &op, &[cutoff, now]);
        assert_eq!(purge(&store, cutoff, 5).expect("purge"), 23);
        assert_eq!(times(&store, &op), [now, cutoff]);
        assert_eq!(purge(&store, cutoff, 5).expect("purge"), 0);
    }

    /// Two nodes' stores on one schema: while one holds the purge lock the other's round is
    /// skipped and deletes nothing; once it is free, the other's round purges.
    #[test]
    fn on_postgres_one_node_purges_at_a_time() {
        let Some((url, schema)) = crate::store::db::testing::temp_pg_target() else {
            return;
        };
        let connect = || {
            crate::store::db::PgStore::connect_in_schema(&url, &schema)
                .map(Store::Postgres)
                .expect("connect")
        };
        let (node_a, node_b) = (connect(), connect());
        let op = node_a
            .write_db(operators::create_operator)
            .expect("operator");
        let now = 100 * DAY_MS;
        let cutoff = cutoff_ms(now, 1);
        seed(&node_a, &op, &[cutoff - 2, cutoff - 1, now]);
        let Store::Postgres(pg_a) = &node_a else {
            unreachable!("connected to PostgreSQL")
        };
        let held = pg_a
            .try_advisory_lock(PURGE_LOCK)
            .expect("lock")
            .expect("free");
        assert!(
            pg_a.try_advisory_lock(PURGE_LOCK).expect("try").is_none(),
            "only one holder, even on the same node"
        );
        assert_eq!(purge_round(&node_b, cutoff, 1).expect("round"), None);
        assert_eq!(
            times(&node_b, &op).len(),
            3,
            "nothing purged beside the holder"
        );
        drop(held);
        assert_eq!(purge_round(&node_b, cutoff, 1).expect("round"), Some(2));
        assert_eq!(times(&node_a, &op), [now]);
    }

    #[tokio::test]
    async fn the_job_purges_at_start() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let op = store
            .write_db(operators::create_operator)
            .expect("operator");
        let now = store::now_ms();
        seed(&store, &op, &[now - 2 * DAY_MS, now]);
        let job = spawn_purge_job(store.clone(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while times(&store, &op).len() != 1 {
            assert!(std::time::Instant::now() < deadline, "purge did not run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        job.abort();
        assert_eq!(times(&store, &op), [now]);
    }
}
