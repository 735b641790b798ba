//! Reads of the active sessions, as the data plane and the rendezvous point views need them.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension};

use super::{arc_subscriber, ActiveSession};
use crate::ids::{Imsi, OperatorId, RendezvousPointId, SimId, VpgId};
use crate::store::{Result, StoreError};

/// IMSIs of the operator's sessions at rendezvous point `rp_id` (what an operator may count of
/// a rendezvous point that all operators share).
pub fn operator_imsis_at(
    conn: &Connection,
    operator_id: &OperatorId,
    rp_id: &RendezvousPointId,
) -> Result<Vec<Imsi>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.imsi FROM sims s JOIN arc_sessions a ON a.sim_id = s.sim_id
         WHERE s.operator_id = ?1 AND a.rp_id = ?2",
    )?;
    let imsis = stmt.query_map(params![operator_id, rp_id], |row| row.get(0))?;
    Ok(imsis.collect::<rusqlite::Result<Vec<Imsi>>>()?)
}

/// Every session the data plane must serve, in one query (used at start).
pub fn list_active_sessions(conn: &Connection) -> Result<Vec<ActiveSession>> {
    let mut stmt = conn.prepare(
        "SELECT a.imsi, a.sim_id, s.operator_id, a.session_id, a.rp_id, v.arc_public_key, a.client_ip,
                s.group_id, a.vpg_id,
                (SELECT p.imsi FROM subscribers p WHERE p.sim_id = a.sim_id AND p.is_primary = 1)
         FROM arc_sessions a
         JOIN subscribers v ON v.imsi = a.imsi
         JOIN sims s ON s.sim_id = a.sim_id
         ORDER BY a.imsi",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            ActiveSession {
                imsi: row.get(0)?,
                sim_id: row.get(1)?,
                operator_id: row.get(2)?,
                session_id: row.get(3)?,
                rp_id: row.get(4)?,
                client_public_key: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                client_ip: Ipv4Addr::UNSPECIFIED,
                group_id: row.get(7)?,
                vpg_id: row.get(8)?,
                primary_imsi: row.get(9)?,
            },
            row.get::<_, String>(6)?,
        ))
    })?;
    rows.map(|row| {
        let (mut session, ip) = row?;
        session.client_ip = parse_client_ip(&ip, &session.imsi)?;
        Ok(session)
    })
    .collect()
}

/// The active session of a SIM, as the data plane sees it.
pub(crate) fn active_session_of(
    conn: &Connection,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<Option<ActiveSession>> {
    let Some(sub) = arc_subscriber(conn, operator_id, sim_id)? else {
        return Ok(None);
    };
    let row: Option<(String, RendezvousPointId, String, Option<VpgId>)> = conn
        .prepare_cached(
            "SELECT session_id, rp_id, client_ip, vpg_id FROM arc_sessions WHERE imsi = ?1",
        )?
        .query_row([&sub.imsi], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    let Some((session_id, rp_id, ip, vpg_id)) = row else {
        return Ok(None);
    };
    Ok(Some(ActiveSession {
        client_ip: parse_client_ip(&ip, &sub.imsi)?,
        imsi: sub.imsi,
        primary_imsi: sub.primary_imsi,
        sim_id: sub.sim_id,
        operator_id: sub.operator_id,
        session_id,
        rp_id,
        client_public_key: sub.public_key.unwrap_or_default(),
        group_id: sub.group_id,
        vpg_id,
    }))
}

/// A stored client address; anything else in the column means the database was damaged.
fn parse_client_ip(text: &str, imsi: &Imsi) -> Result<Ipv4Addr> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("client address of {imsi}")))
}
