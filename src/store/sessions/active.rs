//! Reads of the active sessions, as the data plane and the rendezvous point views need them.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{arc_subscriber, ActiveSession};
use crate::ids::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};
use crate::store::db::{parameter_list, Db, Param, Row};
use crate::store::{Result, StoreError};

/// IMSIs of the operator's sessions at rendezvous point `rp_id` (what an operator may count of
/// a rendezvous point that all operators share).
pub fn operator_imsis_at(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    rp_id: &RendezvousPointId,
) -> Result<Vec<Imsi>> {
    db.query(
        "SELECT a.imsi FROM sims s JOIN arc_sessions a ON a.sim_id = s.sim_id
         WHERE s.operator_id = $1 AND a.rp_id = $2",
        &[operator_id, rp_id],
    )?
    .iter()
    .map(|row| row.text(0).map(Imsi::new))
    .collect()
}

/// The columns `listed_session` reads, over the sessions and what they join.
const LISTED_SESSIONS: &str =
    "SELECT a.imsi, a.sim_id, s.operator_id, a.session_id, a.rp_id, v.arc_public_key, a.client_ip,
            s.group_id, a.vpg_id,
            (SELECT p.imsi FROM subscribers p WHERE p.sim_id = a.sim_id AND p.is_primary)
     FROM arc_sessions a
     JOIN subscribers v ON v.imsi = a.imsi
     JOIN sims s ON s.sim_id = a.sim_id";

/// Every session the data plane must serve, in one query (used at start).
pub fn list_active_sessions(db: &mut dyn Db) -> Result<Vec<ActiveSession>> {
    db.query(&format!("{LISTED_SESSIONS} ORDER BY a.imsi"), &[])?
        .iter()
        .map(listed_session)
        .collect()
}

/// Largest number of IMSIs one statement of `active_sessions_by_imsis` reads.
const IMSIS_PER_STATEMENT: usize = 64;

/// The sessions of these virtual subscribers, by IMSI; an IMSI without a session is absent. What
/// the outbox follower applies for the rows it read: one statement per chunk of IMSIs (a round
/// trip each on PostgreSQL) rather than one per IMSI.
pub fn active_sessions_by_imsis(
    db: &mut dyn Db,
    imsis: &[Imsi],
) -> Result<HashMap<Imsi, ActiveSession>> {
    let mut found = HashMap::with_capacity(imsis.len());
    for chunk in imsis.chunks(IMSIS_PER_STATEMENT) {
        let params: Vec<&dyn Param> = chunk.iter().map(|imsi| imsi as &dyn Param).collect();
        let sql = format!(
            "{LISTED_SESSIONS} WHERE a.imsi IN ({})",
            parameter_list(chunk.len())
        );
        // Planned with each call's IMSIs (`query_once`), never from a cached generic plan: a plan
        // cached while the tables were small (a fresh install, a node's first minutes) joins by
        // scanning them whole, and nothing replans it as they grow until the next ANALYZE
        // (measured: 3-4 ms a read at ~10,000 sessions instead of well under 1 ms).
        for row in db.query_once(&sql, &params)? {
            let session = listed_session(&row)?;
            found.insert(session.imsi.clone(), session);
        }
    }
    Ok(found)
}

/// One row of `list_active_sessions`' query.
fn listed_session(row: &Row) -> Result<ActiveSession> {
    let imsi = Imsi::new(row.text(0)?);
    Ok(ActiveSession {
        client_ip: parse_client_ip(&row.text(6)?, &imsi)?,
        imsi,
        sim_id: SimId::new(row.text(1)?),
        operator_id: OperatorId::new(row.text(2)?),
        session_id: row.text(3)?,
        rp_id: RendezvousPointId::new(row.text(4)?),
        client_public_key: row.opt_text(5)?.unwrap_or_default(),
        group_id: row.opt_text(7)?.map(GroupId::new),
        vpg_id: row.opt_text(8)?.map(VpgId::new),
        primary_imsi: Imsi::new(row.text(9)?),
    })
}

/// The active session of a SIM, as the data plane sees it.
pub(crate) fn active_session_of(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<Option<ActiveSession>> {
    let Some(sub) = arc_subscriber(db, operator_id, sim_id)? else {
        return Ok(None);
    };
    let Some(row) = db.query_opt(
        "SELECT session_id, rp_id, client_ip, vpg_id FROM arc_sessions WHERE imsi = $1",
        &[&sub.imsi],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(ActiveSession {
        client_ip: parse_client_ip(&row.text(2)?, &sub.imsi)?,
        imsi: sub.imsi,
        primary_imsi: sub.primary_imsi,
        sim_id: sub.sim_id,
        operator_id: sub.operator_id,
        session_id: row.text(0)?,
        rp_id: RendezvousPointId::new(row.text(1)?),
        client_public_key: sub.public_key.unwrap_or_default(),
        group_id: sub.group_id,
        vpg_id: row.opt_text(3)?.map(VpgId::new),
    }))
}

/// A stored client address; anything else in the column means the database was damaged.
fn parse_client_ip(text: &str, imsi: &Imsi) -> Result<Ipv4Addr> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("client address of {imsi}")))
}
