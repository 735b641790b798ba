//! Session events (`Created` / `Deleted`): written with every session change, listed by
//! `listSessionEvents`.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, Transaction};

use super::ArcSubscriber;
use crate::ids::{Imsi, OperatorId, SimId, VpgId};
use crate::store::Result;

#[derive(Debug, Clone)]
pub struct SessionEventRecord {
    pub event_id: i64,
    pub sim_id: SimId,
    pub imsi: Imsi,
    pub operator_id: OperatorId,
    pub session_id: String,
    pub event: String,
    pub subscription: String,
    pub ue_ip: Option<String>,
    pub vpg_id: Option<VpgId>,
    pub time: i64,
}

pub(super) fn record_event(
    tx: &Transaction,
    sub: &ArcSubscriber,
    session_id: &str,
    event: &str,
    ue_ip: Option<Ipv4Addr>,
    vpg_id: Option<&VpgId>,
    now: i64,
) -> Result<()> {
    // Events are listed under the primary IMSI: a secondary subscriber's traffic is the IoT SIM's.
    tx.prepare_cached(
        "INSERT INTO session_events(sim_id, imsi, operator_id, session_id, event, subscription, ue_ip, vpg_id, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        sub.sim_id,
        sub.primary_imsi,
        sub.operator_id,
        session_id,
        event,
        sub.subscription,
        ue_ip.map(|ip| ip.to_string()),
        vpg_id,
        now
    ])?;
    Ok(())
}

/// Newest first; `before_event_id` continues a previous page.
pub fn list_events(
    conn: &Connection,
    operator_id: &OperatorId,
    sim_id: &SimId,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    before_event_id: Option<i64>,
    limit: u32,
) -> Result<Vec<SessionEventRecord>> {
    crate::store::sims::require_sim(
        &mut crate::store::db::SqliteDb::new(conn),
        operator_id,
        sim_id,
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT event_id, sim_id, imsi, operator_id, session_id, event, subscription, ue_ip, vpg_id, time
         FROM session_events
         WHERE sim_id = ?1 AND operator_id = ?2 AND time >= ?3 AND time <= ?4 AND event_id < ?5
         ORDER BY event_id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            sim_id,
            operator_id,
            from_ms.unwrap_or(0),
            to_ms.unwrap_or(i64::MAX),
            before_event_id.unwrap_or(i64::MAX),
            limit
        ],
        |row| {
            Ok(SessionEventRecord {
                event_id: row.get(0)?,
                sim_id: row.get(1)?,
                imsi: row.get(2)?,
                operator_id: row.get(3)?,
                session_id: row.get(4)?,
                event: row.get(5)?,
                subscription: row.get(6)?,
                ue_ip: row.get(7)?,
                vpg_id: row.get(8)?,
                time: row.get(9)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
