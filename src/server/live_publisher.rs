//! Publishes this node's live per-session figures (last handshake, endpoint, traffic) to a shared
//! PostgreSQL store every `PUBLISH_PERIOD`, so API nodes whose data plane does not hold a peer can
//! show it (`api::live`). Only sessions whose figures changed since the last committed batch are
//! written, in multi-row upserts; every round also beats each served rendezvous point's heartbeat,
//! which tells readers the figures are current. The data plane never waits on this: the figures
//! are read like `wg show` reads them, and the writes run on the blocking pool; when the store is
//! down the round fails, is logged once, and the next round writes the then-latest figures.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dataplane::engine::Engine;
use crate::ids::{Imsi, RendezvousPointId};
use crate::store::db::Backend;
pub use crate::store::live::PUBLISH_PERIOD;
use crate::store::live::{self, SessionLive};
use crate::store::{Result, Store};

/// Rows per write transaction: a cold start publishing 100,000 sessions commits in pieces, so a
/// retry (serialization failure) repeats little and no transaction runs long.
const ROWS_PER_TRANSACTION: usize = 4096;

/// The handshake time is derived from "time since handshake" and the wall clock at each read, so
/// it moves by a millisecond or so between reads of one handshake. A new handshake is at least
/// seconds after the previous one (WireGuard's rekey timing), so smaller moves are not changes.
const HANDSHAKE_JITTER_MS: i64 = 1_000;

/// The longest a stopping node waits for its final publish.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What was last committed per session, to publish only changes.
pub struct LivePublisher {
    store: Arc<Store>,
    engine: Arc<Engine>,
    rp_ids: Vec<RendezvousPointId>,
    published: HashMap<Imsi, SessionLive>,
    /// Whether the rows a previous run of this node left for its rendezvous points were cleared
    /// (done once, in the first committed transaction: its counters start from zero).
    cleared: bool,
    failing: bool,
}

/// What one round wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub upserted: usize,
    pub removed: usize,
}

fn changed(old: Option<&SessionLive>, new: &SessionLive) -> bool {
    let Some(old) = old else {
        return true;
    };
    // Both times are dated from the wall clock at each round: the same instant may read a few
    // ms apart, which is not a change.
    let moved = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > HANDSHAKE_JITTER_MS,
        (a, b) => a != b,
    };
    moved(old.last_handshake_at, new.last_handshake_at)
        || moved(old.last_seen_at, new.last_seen_at)
        || old.session_id != new.session_id
        || old.rp_id != new.rp_id
        || old.device_endpoint != new.device_endpoint
        || old.rx_bytes != new.rx_bytes
        || old.tx_bytes != new.tx_bytes
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

impl LivePublisher {
    pub fn new(store: Arc<Store>, engine: Arc<Engine>) -> LivePublisher {
        let rp_ids = engine.listeners().map(|l| l.rp_id.clone()).collect();
        LivePublisher {
            store,
            engine,
            rp_ids,
            published: HashMap::new(),
            cleared: false,
            failing: false,
        }
    }

    /// One round, blocking (run it on the blocking pool): the figures that changed since the last
    /// committed round, the rows of peers that left, and the heartbeat.
    pub fn round(&mut self) -> Result<Round> {
        let now = SystemTime::now();
        let at = unix_ms(now);
        let figures = self.engine.live_figures(now);
        let present: HashSet<&Imsi> = figures.iter().map(|f| &f.imsi).collect();
        let gone: Vec<(Imsi, String)> = self
            .published
            .values()
            .filter(|p| !present.contains(&p.imsi))
            .map(|p| (p.imsi.clone(), p.session_id.clone()))
            .collect();
        let fresh: Vec<SessionLive> = figures
            .iter()
            .filter(|f| changed(self.published.get(&f.imsi), f))
            .cloned()
            .collect();
        let mut batches: Vec<&[SessionLive]> = fresh.chunks(ROWS_PER_TRANSACTION).collect();
        if batches.is_empty() {
            batches.push(&[]);
        }
        let last = batches.len() - 1;
        let mut round = Round::default();
        for (index, batch) in batches.into_iter().enumerate() {
            let clear = !self.cleared;
            let rp_ids = &self.rp_ids;
            let tail = (index == last).then_some(&gone);
            self.store.write_db(|db| {
                if clear {
                    for rp_id in rp_ids {
                        live::clear_rendezvous_point(db, rp_id)?;
                    }
                }
                live::publish(db, batch, at)?;
                if let Some(gone) = tail {
                    live::remove(db, gone)?;
                    live::heartbeat(db, rp_ids, at)?;
                }
                Ok(())
            })?;
            self.cleared = true;
            for row in batch {
                self.published.insert(row.imsi.clone(), row.clone());
            }
            round.upserted += batch.len();
            if let Some(gone) = tail {
                for (imsi, _) in gone {
                    self.published.remove(imsi);
                }
                round.removed = gone.len();
            }
        }
        Ok(round)
    }

    /// Runs `round` on the blocking pool and logs a failure once until a round succeeds again.
    /// `None` when the task itself failed (a panic): the caller starts a new publisher, which
    /// clears and republishes this node's rows.
    async fn round_logged(mut self) -> Option<LivePublisher> {
        let outcome = tokio::task::spawn_blocking(move || {
            let result = self.round();
            (self, result)
        })
        .await;
        let (mut publisher, result) = match outcome {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "live state publish task failed");
                return None;
            }
        };
        match result {
            Ok(round) => {
                if publisher.failing {
                    tracing::info!("live state published again");
                }
                publisher.failing = false;
                if round.upserted + round.removed > 0 {
                    tracing::debug!(
                        upserted = round.upserted,
                        removed = round.removed,
                        "live state published"
                    );
                }
            }
            Err(e) => {
                if !publisher.failing {
                    tracing::warn!(error = %e, "live state not published; retrying every period with the latest figures");
                }
                publisher.failing = true;
            }
        }
        Some(publisher)
    }
}

/// The running publisher; `stop` publishes once more and waits for it.
pub struct LivePublisherTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LivePublisherTask {
    /// Live figures go to the store only where other nodes read them: on PostgreSQL, from a
    /// node that holds peers. A single SQLite box answers from its own data plane.
    pub fn start_if_shared(store: &Arc<Store>, engine: &Arc<Engine>) -> Option<LivePublisherTask> {
        let shared = matches!(**store, Store::Postgres(_));
        let holds_peers = engine.listeners().next().is_some();
        (shared && holds_peers)
            .then(|| LivePublisherTask::spawn(store.clone(), engine.clone(), PUBLISH_PERIOD))
    }

    /// Starts publishing every `period` (the first round at once).
    pub fn spawn(store: Arc<Store>, engine: Arc<Engine>, period: Duration) -> LivePublisherTask {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut publisher = LivePublisher::new(store.clone(), engine.clone());
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopped.changed() => true,
                };
                publisher = match publisher.round_logged().await {
                    Some(publisher) => publisher,
                    None => LivePublisher::new(store.clone(), engine.clone()),
                };
                if stopping {
                    return;
                }
            }
        });
        LivePublisherTask { stop, task }
    }

    /// Publishes the final figures (after the data plane stopped: nothing changes any more) and
    /// ends the task. A store that does not answer does not hold the stop up for more than
    /// `STOP_WAIT`: the API nodes then show the devices offline once the heartbeat is old.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(STOP_WAIT, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "live state publisher ended abnormally"),
            Err(_) => {
                self.task.abort();
                tracing::warn!("final live state not published: the store did not answer in time");
            }
        }
    }
}

#[cfg(test)]
#[path = "live_publisher_tests.rs"]
mod tests;
