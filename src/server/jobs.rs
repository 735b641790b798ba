//! The background jobs of a running arcd that keep the store in shape: the WAL checkpoint and
//! the periodic save of the devices' endpoints (also run once more at shutdown), and the pruning
//! of the peer-change outbox.

use std::sync::Arc;
use std::time::Duration;

use crate::dataplane::engine::Engine;
use crate::store::db::Backend;
use crate::store::{endpoints, outbox, Store};

/// How often the background checkpoint copies committed pages into the database. Often enough
/// that, under a sustained write load, the writer's bounding checkpoint (`Store::write_then`) finds
/// most of the log already copied and holds the writer only briefly.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoints the WAL off the request path (commits no longer do it inline).
pub(super) async fn checkpoint_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint task failed"),
        }
    }
}

/// How often the devices' endpoints learned since the last save are written (one transaction).
/// A device that roamed since then is still found at its old endpoint only if it kept it; else it
/// comes back on its own, as without a saved endpoint.
const ENDPOINT_SAVE_INTERVAL: Duration = Duration::from_secs(30);

pub(super) async fn endpoint_save_loop(store: Arc<Store>, engine: Arc<Engine>) {
    let mut tick = tokio::time::interval(ENDPOINT_SAVE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        save_endpoints(&store, &engine).await;
    }
}

/// Saves the endpoints that changed since the last save; returns how many sessions took one.
pub(super) async fn save_endpoints(store: &Arc<Store>, engine: &Arc<Engine>) -> usize {
    let changed = engine.unsaved_endpoints();
    if changed.is_empty() {
        return 0;
    }
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = store.write_db(|db| endpoints::save(db, &changed));
        (changed, result)
    })
    .await;
    match written {
        Ok((changed, Ok(saved))) => {
            engine.endpoints_saved(&changed);
            tracing::debug!(saved, "device endpoints saved");
            saved
        }
        Ok((_, Err(e))) => {
            tracing::warn!(error = %e, "device endpoints not saved; retrying later");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "device endpoint save task failed");
            0
        }
    }
}

/// How often old outbox rows are pruned, and how many go per transaction (short transactions:
/// on PostgreSQL an open one holds every follower's watermark back).
const OUTBOX_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
const OUTBOX_PRUNE_BATCH: u32 = 1000;
/// The advisory lock that makes one node of those sharing a PostgreSQL store the pruner ("arcdoutb").
const OUTBOX_PRUNE_LOCK: i64 = 0x6172_6364_6f75_7462;

/// Deletes outbox rows older than `outbox::RETENTION`, every minute. A follower that could not
/// read for half that long reloads every session instead of reading rows (`follower`), so no
/// follower needs a pruned row.
pub(super) async fn outbox_prune_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(OUTBOX_PRUNE_INTERVAL);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || prune_outbox(&store)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => tracing::debug!(pruned, "old peer-change outbox rows pruned"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "peer-change outbox not pruned; retrying later")
            }
            Err(e) => tracing::warn!(error = %e, "peer-change outbox prune task failed"),
        }
    }
}

/// One pruning pass in batches; on PostgreSQL only by the node holding the advisory lock.
fn prune_outbox(store: &Store) -> crate::store::Result<u64> {
    let lock = match store {
        Store::Postgres(pg) => match pg.try_advisory_lock(OUTBOX_PRUNE_LOCK)? {
            Some(lock) => Some(lock),
            None => return Ok(0),
        },
        Store::Sqlite(_) => None,
    };
    let older_than = crate::store::now_ms() - outbox::RETENTION.as_millis() as i64;
    let mut pruned = 0;
    loop {
        if lock.as_ref().is_some_and(|lock| lock.is_lost()) {
            break;
        }
        let batch = store.write_db(|db| outbox::prune(db, older_than, OUTBOX_PRUNE_BATCH))?;
        pruned += batch;
        if batch < u64::from(OUTBOX_PRUNE_BATCH) {
            break;
        }
    }
    Ok(pruned)
}
