//! Session events (`Created` / `Deleted`): written with every session change, listed by
//! `listSessionEvents`.

use std::net::Ipv4Addr;

use crate::store::db::Db;

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
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    session_id: &str,
    event: &str,
    ue_ip: Option<Ipv4Addr>,
    vpg_id: Option<&VpgId>,
    now: i64,
) -> Result<()> {
    // Events are listed under the primary IMSI: a secondary subscriber's traffic is the IoT SIM's.
    db.execute(
        "INSERT INTO session_events(sim_id, imsi, operator_id, session_id, event, subscription, ue_ip, vpg_id, time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &sub.sim_id,
            &sub.primary_imsi,
            &sub.operator_id,
            &session_id,
            &event,
            &sub.subscription,
            &ue_ip.map(|ip| ip.to_string()),
            &vpg_id,
            &now,
        ],
    )?;
    Ok(())
}

/// Newest first; `before_event_id` continues a previous page. "Newest" is the order of
/// `event_id`: on SQLite (one writer) that is commit order; on PostgreSQL an identity column gives
/// allocation order, so two sessions' events committed at once may list in either order (each
/// SIM's own events are written by transactions that conflict, so they keep their order).
pub fn list_events(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    before_event_id: Option<i64>,
    limit: u32,
) -> Result<Vec<SessionEventRecord>> {
    crate::store::sims::require_sim(db, operator_id, sim_id)?;
    let rows = db.query(
        "SELECT event_id, sim_id, imsi, operator_id, session_id, event, subscription, ue_ip, vpg_id, time
         FROM session_events
         WHERE sim_id = $1 AND operator_id = $2 AND time >= $3 AND time <= $4 AND event_id < $5
         ORDER BY event_id DESC LIMIT $6",
        &[
            sim_id,
            operator_id,
            &from_ms.unwrap_or(0),
            &to_ms.unwrap_or(i64::MAX),
            &before_event_id.unwrap_or(i64::MAX),
            &limit,
        ],
    )?;
    rows.iter()
        .map(|row| {
            Ok(SessionEventRecord {
                event_id: row.int(0)?,
                sim_id: SimId::new(row.text(1)?),
                imsi: Imsi::new(row.text(2)?),
                operator_id: OperatorId::new(row.text(3)?),
                session_id: row.text(4)?,
                event: row.text(5)?,
                subscription: row.text(6)?,
                ue_ip: row.opt_text(7)?,
                vpg_id: row.opt_text(8)?.map(VpgId::new),
                time: row.int(9)?,
            })
        })
        .collect()
}
