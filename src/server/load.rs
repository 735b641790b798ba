//! What `start_with` reads from the store before anything else starts: the store itself
//! (opened, migrated, root operator made on a first start), the sessions and VPGs the data plane
//! starts with and the outbox cursor of the same snapshot, the saved endpoints and the
//! rendezvous points' keys.

use std::sync::Arc;

use super::{served_rendezvous_points, ServeError};
use crate::bootstrap::{self, Reinitialize, RootCredentials};
use crate::config::Config;
use crate::dataplane::ListenerConfig;
use crate::store::db::Backend;
use crate::store::{endpoints, outbox, rendezvous, sessions, vpgs, Store, StoreError};
use crate::wgkey;

/// What starting needs from the store.
pub(super) struct StoreAtStart {
    pub(super) store: Arc<Store>,
    pub(super) new_root_credentials: Option<RootCredentials>,
    pub(super) sessions: Vec<sessions::ActiveSession>,
    pub(super) resume: Vec<endpoints::SavedEndpoint>,
    pub(super) listeners: Vec<ListenerConfig>,
    pub(super) running_vpgs: Vec<vpgs::RunningVpg>,
    /// Where the follower starts: taken in the snapshot the sessions and VPGs were read in.
    pub(super) cursor: outbox::Cursor,
}

/// Opens the store and reads what starting needs, on tokio's blocking pool: store calls block
/// (and PostgreSQL's client must never run on an async worker thread).
pub(super) async fn load_from_store(
    config: &Config,
    reinitialize: Reinitialize,
) -> Result<StoreAtStart, ServeError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let store = open_store(&config, reinitialize)?;
        let new_root_credentials =
            bootstrap::ensure_root_operator(&store, &config.data_dir, reinitialize)?;
        let (loaded, resume) = load_sessions(&store, &config)?;
        let listeners = listener_configs(&config, &store)?;
        Ok(StoreAtStart {
            store,
            new_root_credentials,
            sessions: loaded.sessions,
            resume,
            listeners,
            running_vpgs: loaded.vpgs,
            cursor: loaded.cursor,
        })
    })
    .await
    .map_err(|e| ServeError::StoreTask(e.to_string()))?
}

/// The data directory's store, checked, migrated, with SQLite's own checkpoints off (the
/// `checkpoint_loop` takes over).
fn open_store(config: &Config, reinitialize: Reinitialize) -> Result<Arc<Store>, ServeError> {
    let store = bootstrap::open_store_with(config, reinitialize, bootstrap::Integrity::Check)?;
    store.disable_auto_checkpoint()?;
    Ok(Arc::new(store))
}

/// The active sessions this node serves and the running VPGs the data plane starts with, with
/// the outbox cursor of the same snapshot (so no change between loading and following is lost),
/// and the devices' endpoints saved by the last run (so they are reachable before their next
/// handshake).
fn load_sessions(
    store: &Store,
    config: &Config,
) -> Result<(outbox::Snapshot, Vec<endpoints::SavedEndpoint>), ServeError> {
    let mut loaded = store.read_db(outbox::snapshot)?;
    loaded
        .sessions
        .retain(|session| config.node.serves(&session.rp_id));
    let resume = store.read_db(endpoints::saved)?;
    tracing::info!(
        sessions = loaded.sessions.len(),
        saved_endpoints = resume.len(),
        "active sessions loaded"
    );
    Ok((loaded, resume))
}

/// One data-plane listener per rendezvous point this node serves, with its key pair from the
/// store.
fn listener_configs(config: &Config, store: &Store) -> Result<Vec<ListenerConfig>, ServeError> {
    let mut listeners = Vec::new();
    for rp in served_rendezvous_points(config) {
        tracing::info!(
            rendezvous_point = %rp.id,
            name = rp.display_name(),
            endpoint = %rp.endpoint,
            pool = %rp.pool,
            "rendezvous point configured"
        );
        let private_key = store.read_db(|db| rendezvous::private_key(db, &rp.id))?;
        let private_key = wgkey::parse_key(&private_key)
            .ok_or_else(|| StoreError::Corrupt(format!("server key of {}", rp.id)))?;
        listeners.push(ListenerConfig {
            rp_id: rp.id.clone(),
            bind: rp.listen,
            private_key,
        });
    }
    Ok(listeners)
}
