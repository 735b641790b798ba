//! Live state across nodes (migration 11): the node serving a session's rendezvous point
//! publishes what its data plane sees of the device (last handshake, endpoint, traffic) in
//! batches, with a heartbeat per rendezvous point, so an API node whose own data plane does not
//! hold the peer can still show it. Written once for both store engines (see `store::db`); only
//! PostgreSQL deployments write it (a single SQLite box reads its own data plane).

use std::collections::HashMap;
use std::time::Duration;

use super::db::{chunks, parameter_list, values_rows, Db, Param};
use super::Result;
use crate::ids::{Imsi, OperatorId, RendezvousPointId};

/// How often a node serving rendezvous points publishes: a published state is at most two
/// periods old when read (one until the next round, plus the round's own time).
pub const PUBLISH_PERIOD: Duration = Duration::from_secs(1);

/// A rendezvous point whose heartbeat is older than this has a silent publisher (its node
/// stopped, crashed or lost the store): readers show its devices offline, keeping the last
/// figures. Three missed rounds plus a margin for a slow commit and clock skew between nodes.
pub const SILENT_AFTER: Duration = Duration::from_secs(3 * PUBLISH_PERIOD.as_secs() + 2);

/// What a rendezvous point's data plane sees of one session's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLive {
    pub imsi: Imsi,
    /// The store's session the figures belong to: a re-created session starts from nothing.
    pub session_id: String,
    pub rp_id: RendezvousPointId,
    /// UNIX ms of the latest completed handshake.
    pub last_handshake_at: Option<i64>,
    /// UNIX ms of the device's latest authenticated packet (migration 13).
    pub last_seen_at: Option<i64>,
    /// `ip:port` of the device's latest authenticated packet.
    pub device_endpoint: Option<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A published row as an API node reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedLive {
    pub live: SessionLive,
    /// When the publisher took these figures (its clock, UNIX ms).
    pub published_at: i64,
    /// The latest heartbeat of the row's rendezvous point (`None`: it never published or its
    /// node cleared it). Rows whose heartbeat is old come from a node that went silent.
    pub heartbeat_at: Option<i64>,
}

/// Rows per multi-row statement: 64 × 9 parameters.
const ROWS_PER_STATEMENT: usize = 64;

/// Byte counters are u64 in the data plane, BIGINT in the store; 2^63 bytes is never reached,
/// but a wrap would show a negative count, so the value saturates instead.
fn stored_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Upserts the figures of these sessions, taken at `published_at`, in the caller's transaction.
/// One multi-row `INSERT … ON CONFLICT (imsi) DO UPDATE` per chunk of at most 64 rows. Each IMSI
/// at most once per call (a PostgreSQL upsert may not touch a row twice in one statement).
pub fn publish(db: &mut dyn Db, rows: &[SessionLive], published_at: i64) -> Result<()> {
    for chunk in chunks(rows, ROWS_PER_STATEMENT) {
        let bytes: Vec<(i64, i64)> = chunk
            .iter()
            .map(|r| (stored_bytes(r.rx_bytes), stored_bytes(r.tx_bytes)))
            .collect();
        let mut params: Vec<&dyn Param> = Vec::with_capacity(chunk.len() * 9);
        for (row, (rx, tx)) in chunk.iter().zip(&bytes) {
            params.extend([
                &row.imsi as &dyn Param,
                &row.session_id,
                &row.rp_id,
                &row.last_handshake_at,
                &row.last_seen_at,
                &row.device_endpoint,
                rx,
                tx,
                &published_at,
            ]);
        }
        db.execute(&publish_sql(chunk.len()), &params)?;
    }
    Ok(())
}

fn publish_sql(rows: usize) -> String {
    format!(
        "INSERT INTO session_live(imsi, session_id, rp_id, last_handshake_at, last_seen_at,
                                  device_endpoint, rx_bytes, tx_bytes, published_at)
         VALUES {}
         ON CONFLICT (imsi) DO UPDATE SET session_id = excluded.session_id,
             rp_id = excluded.rp_id, last_handshake_at = excluded.last_handshake_at,
             last_seen_at = excluded.last_seen_at,
             device_endpoint = excluded.device_endpoint, rx_bytes = excluded.rx_bytes,
             tx_bytes = excluded.tx_bytes, published_at = excluded.published_at",
        values_rows(rows, 9)
    )
}

/// Deletes the rows of sessions whose peer left the data plane, each only if it still holds that
/// session (a newer session's row, published by another node, stays).
pub fn remove(db: &mut dyn Db, gone: &[(Imsi, String)]) -> Result<()> {
    for chunk in chunks(gone, ROWS_PER_STATEMENT) {
        let mut params: Vec<&dyn Param> = Vec::with_capacity(chunk.len() * 2);
        for (imsi, session_id) in chunk {
            params.extend([imsi as &dyn Param, session_id]);
        }
        let pairs: Vec<String> = (0..chunk.len())
            .map(|i| format!("(imsi = ${} AND session_id = ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        db.execute(
            &format!("DELETE FROM session_live WHERE {}", pairs.join(" OR ")),
            &params,
        )?;
    }
    Ok(())
}

/// Deletes every row of a rendezvous point: a publisher starting over (its data plane's counters
/// start from zero) replaces what its previous run left, including sessions deleted meanwhile.
pub fn clear_rendezvous_point(db: &mut dyn Db, rp_id: &RendezvousPointId) -> Result<u64> {
    db.execute("DELETE FROM session_live WHERE rp_id = $1", &[rp_id])
}

/// Records that the publisher of these rendezvous points is alive at `at` (UNIX ms).
pub fn heartbeat(db: &mut dyn Db, rp_ids: &[RendezvousPointId], at: i64) -> Result<()> {
    for rp_id in rp_ids {
        db.execute(
            "INSERT INTO live_publishers(rp_id, published_at) VALUES ($1, $2)
             ON CONFLICT (rp_id) DO UPDATE SET published_at = excluded.published_at",
            &[rp_id, &at],
        )?;
    }
    Ok(())
}

/// The published rows of these IMSIs with their rendezvous point's heartbeat: one statement per
/// chunk of at most 64 IMSIs (a page of 1,000 SIMs is 16 statements in the caller's snapshot).
/// Rows of any session are returned; the caller compares `session_id`.
pub fn published(db: &mut dyn Db, imsis: &[Imsi]) -> Result<HashMap<Imsi, PublishedLive>> {
    let mut found = HashMap::with_capacity(imsis.len());
    for chunk in chunks(imsis, ROWS_PER_STATEMENT) {
        let params: Vec<&dyn Param> = chunk.iter().map(|imsi| imsi as &dyn Param).collect();
        let rows = db.query(
            &format!(
                "SELECT l.imsi, l.session_id, l.rp_id, l.last_handshake_at, l.device_endpoint,
                        l.rx_bytes, l.tx_bytes, l.published_at, h.published_at, l.last_seen_at
                 FROM session_live l LEFT JOIN live_publishers h ON h.rp_id = l.rp_id
                 WHERE l.imsi IN ({})",
                parameter_list(chunk.len())
            ),
            &params,
        )?;
        for row in rows {
            let imsi = Imsi::new(row.text(0)?);
            let live = SessionLive {
                imsi: imsi.clone(),
                session_id: row.text(1)?,
                rp_id: RendezvousPointId::new(row.text(2)?),
                last_handshake_at: row.opt_int(3)?,
                last_seen_at: row.opt_int(9)?,
                device_endpoint: row.opt_text(4)?,
                rx_bytes: u64::try_from(row.int(5)?).unwrap_or(0),
                tx_bytes: u64::try_from(row.int(6)?).unwrap_or(0),
            };
            found.insert(
                imsi,
                PublishedLive {
                    live,
                    published_at: row.int(7)?,
                    heartbeat_at: row.opt_int(8)?,
                },
            );
        }
    }
    Ok(found)
}

/// One operator's published figures at one rendezvous point, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LiveTotals {
    /// Devices with a handshake at or after `online_since` whose publisher beat at or after
    /// `heard_since`.
    pub online_devices: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Sums the published figures of the operator's current sessions at `rp_id` (rows of an older
/// session of the same IMSI do not count), for a rendezvous point another node serves. One
/// statement, whatever the number of sessions.
pub fn operator_totals_at(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    rp_id: &RendezvousPointId,
    online_since: i64,
    heard_since: i64,
) -> Result<LiveTotals> {
    let row = db.query_one(
        "SELECT CAST(COALESCE(SUM(CASE WHEN l.last_handshake_at >= $3 AND h.published_at >= $4
                                      THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(SUM(l.rx_bytes), 0) AS BIGINT),
                CAST(COALESCE(SUM(l.tx_bytes), 0) AS BIGINT)
         FROM sims s
         JOIN arc_sessions a ON a.sim_id = s.sim_id
         JOIN session_live l ON l.imsi = a.imsi AND l.session_id = a.session_id
         LEFT JOIN live_publishers h ON h.rp_id = l.rp_id
         WHERE s.operator_id = $1 AND a.rp_id = $2 AND l.rp_id = $2",
        &[operator_id, rp_id, &online_since, &heard_since],
    )?;
    let count = |index| row.int(index).map(|n| u64::try_from(n).unwrap_or(0));
    Ok(LiveTotals {
        online_devices: count(0)?,
        rx_bytes: count(1)?,
        tx_bytes: count(2)?,
    })
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
