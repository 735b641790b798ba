//! Where a SIM's live figures (`arcdSessionStats`) come from: this node's data plane when it holds
//! the session's peer, else, on a shared PostgreSQL store, the figures the node serving the
//! session's rendezvous point published (`store::live`), read in one batch per response. A
//! published row counts only for the session it was taken in; a row whose rendezvous point's
//! heartbeat is older than `SILENT_AFTER` shows the device offline (last figures kept).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::views::ArcdSessionStats;
use super::{ApiError, AppState};
use crate::dataplane::engine::{Engine, ONLINE_WINDOW};
use crate::dataplane::stats::PeerSnapshot;
use crate::ids::Imsi;
use crate::store::live::{self, PublishedLive, SILENT_AFTER};
use crate::store::{SessionRecord, SimRecord, Store};

/// The live figures one response shows.
pub struct Live<'a> {
    engine: &'a Engine,
    published: HashMap<Imsi, PublishedLive>,
    now: SystemTime,
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

fn millis(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

impl<'a> Live<'a> {
    /// Only this node's data plane (a SIM just created, or a single SQLite box).
    pub fn local(engine: &'a Engine) -> Live<'a> {
        Live {
            engine,
            published: HashMap::new(),
            now: SystemTime::now(),
        }
    }

    /// The figures of a SIM's session, if a data plane holds its peer.
    pub fn stats(&self, record: &SimRecord) -> Option<ArcdSessionStats> {
        let session = record.session.as_ref()?;
        if let Some(snapshot) = self.engine.snapshot(&session.imsi, self.now) {
            return Some(local_stats(&snapshot, self.now));
        }
        let row = self
            .published
            .get(&session.imsi)
            .filter(|row| row.live.session_id == session.session_id)?;
        Some(published_stats(row, unix_ms(self.now)))
    }
}

fn local_stats(snapshot: &PeerSnapshot, now: SystemTime) -> ArcdSessionStats {
    let since = snapshot
        .last_handshake
        .and_then(|at| now.duration_since(at).ok());
    ArcdSessionStats {
        device_online: since.is_some_and(|d| d < ONLINE_WINDOW),
        last_handshake_at: snapshot.last_handshake.map(unix_ms),
        last_seen_at: snapshot.last_received.map(unix_ms),
        device_endpoint: snapshot.endpoint.map(|e| e.to_string()),
        rx_bytes: snapshot.rx_bytes,
        tx_bytes: snapshot.tx_bytes,
    }
}

/// Online as the data plane would say (a handshake within `ONLINE_WINDOW`), and only while the
/// publisher is heard from.
fn published_stats(row: &PublishedLive, now_ms: i64) -> ArcdSessionStats {
    let heard = row
        .heartbeat_at
        .is_some_and(|at| now_ms.saturating_sub(at) <= millis(SILENT_AFTER));
    let recent_handshake = row
        .live
        .last_handshake_at
        .is_some_and(|at| now_ms.saturating_sub(at) < millis(ONLINE_WINDOW));
    ArcdSessionStats {
        device_online: heard && recent_handshake,
        last_handshake_at: row.live.last_handshake_at,
        last_seen_at: row.live.last_seen_at,
        device_endpoint: row.live.device_endpoint.clone(),
        rx_bytes: row.live.rx_bytes,
        tx_bytes: row.live.tx_bytes,
    }
}

impl AppState {
    /// The live figures of these SIMs: this node's data plane, plus (PostgreSQL only) one batched
    /// read of the published figures of the sessions it does not hold.
    pub async fn live_for(&self, records: &[SimRecord]) -> Result<Live<'_>, ApiError> {
        let mut live = Live::local(&self.engine);
        if !matches!(*self.store, Store::Postgres(_)) {
            return Ok(live);
        }
        let elsewhere: Vec<Imsi> = records
            .iter()
            .filter_map(|r| r.session.as_ref())
            .filter(|s: &&SessionRecord| self.engine.snapshot(&s.imsi, live.now).is_none())
            .map(|s| s.imsi.clone())
            .collect();
        if elsewhere.is_empty() {
            return Ok(live);
        }
        live.published = self
            .db(move |store| {
                use crate::store::db::Backend;
                store.read_db(|db| live::published(db, &elsewhere))
            })
            .await?;
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::live::SessionLive;

    fn row(handshake_at: Option<i64>, heartbeat_at: Option<i64>) -> PublishedLive {
        PublishedLive {
            live: SessionLive {
                imsi: "001".into(),
                session_id: "s".into(),
                rp_id: "rp".into(),
                last_handshake_at: handshake_at,
                last_seen_at: Some(NOW - 500),
                device_endpoint: Some("192.0.2.1:4500".into()),
                rx_bytes: 7,
                tx_bytes: 9,
            },
            published_at: 0,
            heartbeat_at,
        }
    }

    const NOW: i64 = 1_000_000_000;

    fn sim_with_session(session_id: &str) -> SimRecord {
        SimRecord {
            sim_id: "sim".into(),
            operator_id: "OP0000000001".into(),
            sim_type: "virtual".into(),
            module_type: None,
            status: "active".into(),
            coverage: crate::config::Coverage::Jp,
            group_id: None,
            termination_enabled: false,
            created_at: 0,
            last_modified_at: 0,
            tags: Vec::new(),
            subscribers: Vec::new(),
            session: Some(SessionRecord {
                imsi: "001".into(),
                session_id: session_id.into(),
                rp_id: "rp".into(),
                client_ip: "10.64.0.2".into(),
                vpg_id: None,
                created_at: 0,
                last_updated_at: 0,
                server_public_key: String::new(),
                server_endpoint: String::new(),
                allowed_ips: Vec::new(),
            }),
        }
    }

    /// The published row counts only for the session it was taken in; a SIM without a session
    /// or whose peer nobody holds has no figures.
    #[test]
    fn a_row_of_another_session_is_not_shown() {
        let engine = Engine::new(Vec::new());
        let mut live = Live::local(&engine);
        live.published.insert(
            "001".into(),
            row(Some(unix_ms(live.now)), Some(unix_ms(live.now))),
        );
        let current = live.stats(&sim_with_session("s")).expect("same session");
        assert!(current.device_online);
        assert!(live.stats(&sim_with_session("s-recreated")).is_none());
        let no_session = SimRecord {
            session: None,
            ..sim_with_session("s")
        };
        assert!(live.stats(&no_session).is_none());
        assert!(Live::local(&engine).stats(&sim_with_session("s")).is_none());
    }

    #[test]
    fn a_recent_handshake_from_a_live_publisher_is_online() {
        let stats = published_stats(&row(Some(NOW - 1_000), Some(NOW - 1_000)), NOW);
        assert!(stats.device_online);
        assert_eq!(stats.last_handshake_at, Some(NOW - 1_000));
        assert_eq!(
            stats.last_seen_at,
            Some(NOW - 500),
            "last seen passed through"
        );
        assert_eq!(stats.device_endpoint.as_deref(), Some("192.0.2.1:4500"));
        assert_eq!((stats.rx_bytes, stats.tx_bytes), (7, 9));
    }

    #[test]
    fn a_silent_publisher_shows_offline_with_its_last_figures() {
        let silent = NOW - millis(SILENT_AFTER) - 1;
        let stats = published_stats(&row(Some(NOW - 1_000), Some(silent)), NOW);
        assert!(!stats.device_online);
        assert_eq!(stats.last_handshake_at, Some(NOW - 1_000));
        assert_eq!(stats.rx_bytes, 7);
        let never = published_stats(&row(Some(NOW - 1_000), None), NOW);
        assert!(!never.device_online);
        let edge = published_stats(&row(Some(NOW), Some(NOW - millis(SILENT_AFTER))), NOW);
        assert!(edge.device_online, "at the threshold still heard");
    }

    #[test]
    fn an_old_or_missing_handshake_is_offline() {
        let old = NOW - millis(ONLINE_WINDOW);
        assert!(!published_stats(&row(Some(old), Some(NOW)), NOW).device_online);
        assert!(!published_stats(&row(None, Some(NOW)), NOW).device_online);
    }
}
