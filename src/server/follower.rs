//! The peer-change follower: the only path from a committed session or VPG change to this node's
//! data plane, on both engines. Writers record outbox rows in their transaction
//! (`store::outbox`); the follower reads the rows after its cursor together with the current
//! session of every IMSI they name (one read snapshot) and sends what this node must do through
//! the data plane's `PeerChanges` channel: `Upsert(current session)` when this node serves the
//! session's rendezvous point, else `Remove`. Applying the current state is idempotent (an upsert
//! with the same session id only refreshes attributes), so rows read again are harmless.
//!
//! Wake-ups: the local API after each commit (`FollowerHandle::wake`), PostgreSQL's NOTIFY from
//! other nodes (`listen`), and a poll every `POLL_INTERVAL` as the safety net. A failed read
//! keeps the cursor and is retried with backoff (logged once per outage); a follower that could
//! not read for half the outbox retention reloads every session instead (`resync`), since rows
//! it has not read may have been pruned.

mod listen;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::dataplane::engine::Engine;
use crate::dataplane::vpg_plane::VpgPlane;
use crate::dataplane::PeerChanges;
use crate::ids::Imsi;
use crate::store::db::Backend;
use crate::store::outbox::{self, Cursor, Followed, OutboxChange, OutboxRow, Position};
use crate::store::{now_ms, ActiveSession, PeerChange, Store, StoreError};

/// The safety net under the wake-ups: a lost NOTIFY delays a change by at most this.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rows read per step; a full step is followed by the next at once.
const BATCH: u32 = 1000;
/// How soon to read again when committed rows wait behind another open transaction on
/// PostgreSQL (doubling up to `MAX_CATCH_UP`): its end wakes nobody if it writes no row, and an
/// API answer may be waiting for those rows.
const FIRST_CATCH_UP: Duration = Duration::from_millis(2);
const MAX_CATCH_UP: Duration = Duration::from_millis(50);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The API's handle on its node's follower.
#[derive(Clone)]
pub struct FollowerHandle {
    wake: Arc<Notify>,
    followed: watch::Receiver<Cursor>,
    /// This node serves a rendezvous point, so its follower applies what it reads.
    applies: bool,
}

impl FollowerHandle {
    /// A commit just wrote outbox rows: read them now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until this node's follower has read (and so sent to its data plane) the rows at
    /// `position`, for at most `limit`: a device told its session exists can then handshake at
    /// once with this node. `true` when it has, or when this node has no data plane to wait for.
    pub async fn wait_applied(&self, position: Position, limit: Duration) -> bool {
        if !self.applies {
            return true;
        }
        self.wake();
        let mut followed = self.followed.clone();
        let waited = tokio::time::timeout(limit, followed.wait_for(|c| c.has_read(position))).await;
        matches!(waited, Ok(Ok(_)))
    }
}

/// What the follower acts on.
pub(super) struct Follower {
    pub store: Arc<Store>,
    pub node: NodeConfig,
    pub engine: Arc<Engine>,
    pub changes: PeerChanges,
    pub vpg_plane: Arc<VpgPlane>,
}

/// The running follower's tasks (the follow loop and, on PostgreSQL, its LISTEN connection).
pub(super) struct Following {
    tasks: Vec<JoinHandle<()>>,
}

impl Following {
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Starts following from `cursor` (taken in the snapshot the data plane was loaded from).
pub(super) fn start(follower: Follower, cursor: Cursor) -> (FollowerHandle, Following) {
    let wake = Arc::new(Notify::new());
    let (followed_tx, followed) = watch::channel(cursor);
    let applies = follower.serves_any();
    let mut tasks = Vec::new();
    if !applies {
        // Nothing here would apply a row: reading the outbox and listening for its NOTIFY would
        // only cost the database round trips on every burst of commits.
        tracing::info!(
            "this node serves no rendezvous point; it does not follow the peer-change outbox"
        );
        let handle = FollowerHandle {
            wake,
            followed,
            applies,
        };
        return (handle, Following { tasks });
    }
    if let Store::Postgres(pg) = &*follower.store {
        let (url, schema) = pg.target();
        tasks.push(tokio::spawn(listen::listen_loop(
            url.to_string(),
            schema.map(str::to_string),
            wake.clone(),
        )));
    }
    tasks.push(tokio::spawn(follower.run(
        cursor,
        wake.clone(),
        followed_tx,
    )));
    let handle = FollowerHandle {
        wake,
        followed,
        applies,
    };
    (handle, Following { tasks })
}

/// Reads that took one step: where the cursor goes next, whether more rows are waiting (a full
/// batch), and whether committed rows wait behind an open transaction.
struct Step {
    cursor: Cursor,
    more: bool,
    held_back: bool,
}

impl Follower {
    fn serves_any(&self) -> bool {
        self.engine.listeners().next().is_some()
    }

    async fn run(self, mut cursor: Cursor, wake: Arc<Notify>, followed: watch::Sender<Cursor>) {
        let mut last_read = Instant::now();
        let mut outage: Option<Instant> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut catch_up: Option<Duration> = None;
        loop {
            let pause = match (outage, catch_up) {
                (Some(_), _) => backoff,
                (None, Some(soon)) => soon,
                (None, None) => POLL_INTERVAL,
            };
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
            let step = if last_read.elapsed() > outbox::RETENTION / 2 {
                self.resync().await
            } else {
                self.step(cursor).await
            };
            match step {
                Ok(step) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            "peer-change outbox readable again; following from the kept cursor"
                        );
                    }
                    backoff = FIRST_BACKOFF;
                    last_read = Instant::now();
                    cursor = step.cursor;
                    followed.send_replace(cursor);
                    if step.more {
                        wake.notify_one();
                    }
                    catch_up = if step.held_back {
                        Some(catch_up.map_or(FIRST_CATCH_UP, |d| (d * 2).min(MAX_CATCH_UP)))
                    } else {
                        None
                    };
                }
                Err(e) => {
                    if outage.is_none() {
                        tracing::warn!(error = %e, "cannot read the peer-change outbox; retrying with backoff (changes wait, none is lost)");
                        outage = Some(Instant::now());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads the rows after `cursor` and applies the current state of what they name.
    async fn step(&self, cursor: Cursor) -> Result<Step, FollowError> {
        let store = self.store.clone();
        let followed =
            blocking(move || store.read_db(|db| outbox::follow(db, cursor, BATCH))).await?;
        let more = followed.rows.len() >= BATCH as usize;
        let (next, held_back) = (followed.cursor, followed.held_back);
        self.apply(followed).await;
        Ok(Step {
            cursor: next,
            more,
            held_back,
        })
    }

    async fn apply(&self, followed: Followed) {
        let Followed {
            rows,
            sessions,
            vpgs,
            ..
        } = followed;
        if !self.serves_any() {
            return;
        }
        let now = now_ms();
        for (imsi, session) in sessions {
            self.apply_peer(&rows, imsi, session, now);
        }
        if let Some(running) = vpgs {
            let plane = self.vpg_plane.clone();
            let count = running.len();
            if let Err(e) = tokio::task::spawn_blocking(move || plane.apply(&running)).await {
                tracing::error!(error = %e, "applying the running VPGs failed");
            }
            let committed_at = rows
                .iter()
                .filter(|row| row.change == OutboxChange::Vpgs)
                .map(|row| row.committed_at)
                .max()
                .unwrap_or(now);
            crate::metrics::peer_change_propagated(now - committed_at);
            tracing::info!(
                vpgs = count,
                propagation_ms = now - committed_at,
                "running VPGs followed"
            );
        }
    }

    /// The current session of `imsi` goes to this node's data plane, or its peer goes. A remove
    /// is sent whenever the session is not served here: the engine may not show yet a peer whose
    /// upsert is still in the channel, and removing an unknown peer does nothing.
    fn apply_peer(&self, rows: &[OutboxRow], imsi: Imsi, session: Option<ActiveSession>, now: i64) {
        let mut committed_at = None;
        let mut row_rp = None;
        for row in rows {
            if let OutboxChange::Peer { rp_id, imsi: of } = &row.change {
                if *of == imsi {
                    committed_at = committed_at.max(Some(row.committed_at));
                    row_rp = Some(rp_id.clone());
                }
            }
        }
        let Some(row_rp) = row_rp else {
            return;
        };
        let held = self.engine.session(&imsi).is_some();
        let (change, concerns_us) = match session {
            Some(session) if self.node.serves(&session.rp_id) => {
                (PeerChange::Upsert(session), true)
            }
            session => {
                let rp_id = session.map_or(row_rp.clone(), |s| s.rp_id);
                let concerns_us = held || self.node.serves(&row_rp);
                (PeerChange::Remove { imsi, rp_id }, concerns_us)
            }
        };
        if concerns_us {
            let propagation_ms = now - committed_at.unwrap_or(now);
            crate::metrics::peer_change_propagated(propagation_ms);
            let (kind, imsi, rp) = match &change {
                PeerChange::Upsert(s) => ("upsert", &s.imsi, &s.rp_id),
                PeerChange::Remove { imsi, rp_id } => ("remove", imsi, rp_id),
            };
            tracing::info!(%imsi, %rp, change = kind, propagation_ms, "peer change followed");
        }
        self.changes.send(change);
    }

    /// Reloads every session and VPG with a fresh cursor in one snapshot: upserts the served
    /// sessions and removes the engine's peers that are no longer among them.
    async fn resync(&self) -> Result<Step, FollowError> {
        let store = self.store.clone();
        let snapshot = blocking(move || store.read_db(outbox::snapshot)).await?;
        tracing::warn!(
            sessions = snapshot.sessions.len(),
            "the peer-change outbox was not read for half its retention; reloading every session"
        );
        if self.serves_any() {
            let mut kept = std::collections::HashSet::new();
            for session in snapshot.sessions {
                if self.node.serves(&session.rp_id) {
                    kept.insert(session.imsi.clone());
                    self.changes.send(PeerChange::Upsert(session));
                }
            }
            for listener in self.engine.listeners() {
                let held = self
                    .engine
                    .snapshots(&listener.rp_id, std::time::SystemTime::now());
                for peer in held {
                    if !kept.contains(&peer.imsi) {
                        self.changes.send(PeerChange::Remove {
                            imsi: peer.imsi,
                            rp_id: peer.rp_id,
                        });
                    }
                }
            }
            let plane = self.vpg_plane.clone();
            let running = snapshot.vpgs;
            if let Err(e) = tokio::task::spawn_blocking(move || plane.apply(&running)).await {
                tracing::error!(error = %e, "applying the running VPGs failed");
            }
        }
        Ok(Step {
            cursor: snapshot.cursor,
            more: false,
            held_back: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Store work on the blocking pool (PostgreSQL's client must never run on a runtime worker).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, FollowError> {
    Ok(tokio::task::spawn_blocking(work).await??)
}
