//! The background jobs of a running arcd that keep the store in shape: the WAL checkpoint and
//! the periodic save of the devices' endpoints (also run once more at shutdown).

use std::sync::Arc;
use std::time::Duration;

use crate::dataplane::engine::Engine;
use crate::store::db::Backend;
use crate::store::{endpoints, Store};

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
