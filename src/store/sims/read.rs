//! Reading SIMs: one row of `sims` completed with its tags, subscribers and session, alone or a
//! page at a time. Portable SQL over `Db` (both engines).

use super::{SessionRecord, SimRecord, SubscriberRecord};
use crate::ids::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};
use crate::store::db::{Db, Param, Row};
use crate::store::{rendezvous, sessions, Entity, Result, StoreError};

/// The columns `sim_from_row` reads, in its order.
pub(in crate::store) const SIM_COLUMNS: &str =
    "sim_id, operator_id, sim_type, module_type, status, coverage, group_id,
     termination_enabled, created_at, last_modified_at";

fn sim_from_row(row: &Row) -> Result<SimRecord> {
    Ok(SimRecord {
        sim_id: SimId::new(row.text(0)?),
        operator_id: OperatorId::new(row.text(1)?),
        sim_type: row.text(2)?,
        module_type: row.opt_text(3)?,
        status: row.text(4)?,
        coverage: sessions::coverage_from_column(&row.text(5)?),
        group_id: row.opt_text(6)?.map(GroupId::new),
        termination_enabled: row.bool(7)?,
        created_at: row.int(8)?,
        last_modified_at: row.int(9)?,
        tags: Vec::new(),
        subscribers: Vec::new(),
        session: None,
    })
}

/// Fills tags, subscribers and session of a SIM row.
fn complete(db: &mut dyn Db, mut sim: SimRecord) -> Result<SimRecord> {
    sim.tags = db
        .query(
            "SELECT name, value FROM sim_tags WHERE sim_id = $1 ORDER BY name",
            &[&sim.sim_id],
        )?
        .iter()
        .map(|row| Ok((row.text(0)?, row.text(1)?)))
        .collect::<Result<_>>()?;
    sim.subscribers = subscribers_of(db, &sim.sim_id)?;
    sim.session = session_of(db, &sim.sim_id)?;
    Ok(sim)
}

/// The SIM's subscribers, primary first.
fn subscribers_of(db: &mut dyn Db, sim_id: &SimId) -> Result<Vec<SubscriberRecord>> {
    db.query(
        "SELECT imsi, iccid, msisdn, subscription, is_primary, is_virtual, status, arc_public_key
         FROM subscribers WHERE sim_id = $1 ORDER BY is_primary DESC, created_at, imsi",
        &[sim_id],
    )?
    .iter()
    .map(|row| {
        Ok(SubscriberRecord {
            imsi: Imsi::new(row.text(0)?),
            iccid: row.text(1)?,
            msisdn: row.opt_text(2)?,
            subscription: row.text(3)?,
            is_primary: row.bool(4)?,
            is_virtual: row.bool(5)?,
            status: row.text(6)?,
            arc_public_key: row.opt_text(7)?,
        })
    })
    .collect()
}

/// The SIM's Arc session with what a device needs to reach its rendezvous point, if it has one.
fn session_of(db: &mut dyn Db, sim_id: &SimId) -> Result<Option<SessionRecord>> {
    let Some(row) = db.query_opt(
        "SELECT a.imsi, a.session_id, a.rp_id, a.client_ip, a.vpg_id, a.created_at, a.last_updated_at,
                r.public_key, r.endpoint, r.allowed_ips
         FROM arc_sessions a JOIN rendezvous_points r ON r.rp_id = a.rp_id
         WHERE a.sim_id = $1",
        &[sim_id],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(SessionRecord {
        imsi: Imsi::new(row.text(0)?),
        session_id: row.text(1)?,
        rp_id: RendezvousPointId::new(row.text(2)?),
        client_ip: row.text(3)?,
        vpg_id: row.opt_text(4)?.map(VpgId::new),
        created_at: row.int(5)?,
        last_updated_at: row.int(6)?,
        server_public_key: row.text(7)?,
        server_endpoint: row.text(8)?,
        allowed_ips: rendezvous::parse_allowed_ips(&row.text(9)?)?,
    }))
}

/// The SIMs a query selecting `SIM_COLUMNS` returns, each completed: how every page of SIMs
/// (list, group members) is read.
fn sims_page(db: &mut dyn Db, sql: &str, params: &[&dyn Param]) -> Result<Vec<SimRecord>> {
    let rows = db.query(sql, params)?;
    completed(db, &rows)
}

/// Rows of `SIM_COLUMNS`, each completed.
pub(in crate::store) fn completed(db: &mut dyn Db, rows: &[Row]) -> Result<Vec<SimRecord>> {
    rows.iter()
        .map(|row| complete(db, sim_from_row(row)?))
        .collect()
}

pub fn get(db: &mut dyn Db, operator_id: &OperatorId, sim_id: &SimId) -> Result<SimRecord> {
    let row = db.query_opt(
        &format!("SELECT {SIM_COLUMNS} FROM sims WHERE sim_id = $1 AND operator_id = $2"),
        &[sim_id, operator_id],
    )?;
    match row {
        Some(row) => complete(db, sim_from_row(&row)?),
        None => Err(StoreError::NotFound(Entity::Sim)),
    }
}

/// One page of the operator's SIMs in SIM ID order, after `after_sim_id`.
pub fn list(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    after_sim_id: Option<&str>,
    limit: u32,
) -> Result<Vec<SimRecord>> {
    sims_page(
        db,
        &format!(
            "SELECT {SIM_COLUMNS} FROM sims WHERE operator_id = $1 AND sim_id > $2
             ORDER BY sim_id LIMIT $3"
        ),
        &[operator_id, &after_sim_id.unwrap_or(""), &limit],
    )
}

/// SIMs of a group, one page in SIM ID order.
pub fn list_in_group(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    group_id: &GroupId,
    after_sim_id: Option<&str>,
    limit: u32,
) -> Result<Vec<SimRecord>> {
    crate::store::groups::require_group(db, operator_id, group_id)?;
    sims_page(
        db,
        &format!(
            "SELECT {SIM_COLUMNS} FROM sims WHERE group_id = $1 AND operator_id = $2 AND sim_id > $3
             ORDER BY sim_id LIMIT $4"
        ),
        &[group_id, operator_id, &after_sim_id.unwrap_or(""), &limit],
    )
}

/// 404 unless the operator owns the SIM; its status otherwise.
pub(crate) fn require_sim(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<String> {
    db.query_opt(
        "SELECT status FROM sims WHERE sim_id = $1 AND operator_id = $2",
        &[sim_id, operator_id],
    )?
    .ok_or(StoreError::NotFound(Entity::Sim))?
    .text(0)
}
