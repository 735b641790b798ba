//! Reading SIMs: one row of `sims` completed with its tags, subscribers and session, alone or a
//! page at a time. Portable SQL over `Db` (both engines).

use std::collections::HashMap;

use super::{SessionRecord, SimRecord, SubscriberRecord};
use crate::ids::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};
use crate::store::db::{parameter_list, Db, Param, Row};
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

/// Largest number of SIMs whose tags, subscribers and sessions one statement reads. A shorter
/// list is padded to the next power of two by repeating its last SIM (harmless in `IN`), so each
/// query has at most 8 texts in the statement caches and a page of 101 SIMs is one statement.
const COMPLETE_CHUNK: usize = 128;

/// Fills tags, subscribers and session of SIM rows: three statements per chunk of SIMs rather
/// than three per SIM, since on PostgreSQL each statement is a round trip (a page of 100 SIMs
/// was 300 of them).
fn complete_all(db: &mut dyn Db, sims: &mut [SimRecord]) -> Result<()> {
    let ids: Vec<SimId> = sims.iter().map(|sim| sim.sim_id.clone()).collect();
    let mut tags: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut subscribers: HashMap<String, Vec<SubscriberRecord>> = HashMap::new();
    let mut sessions: HashMap<String, SessionRecord> = HashMap::new();
    for chunk in ids.chunks(COMPLETE_CHUNK) {
        let width = chunk.len().next_power_of_two();
        let list = parameter_list(width);
        let params: Vec<&dyn Param> = (0..width)
            .map(|i| &chunk[i.min(chunk.len() - 1)] as &dyn Param)
            .collect();
        for row in db.query(
            &format!(
                "SELECT sim_id, name, value FROM sim_tags WHERE sim_id IN ({list})
                 ORDER BY sim_id, name"
            ),
            &params,
        )? {
            tags.entry(row.text(0)?)
                .or_default()
                .push((row.text(1)?, row.text(2)?));
        }
        for row in db.query(
            &format!(
                "SELECT sim_id, imsi, iccid, msisdn, subscription, is_primary, is_virtual, status,
                        arc_public_key
                 FROM subscribers WHERE sim_id IN ({list})
                 ORDER BY sim_id, is_primary DESC, created_at, imsi"
            ),
            &params,
        )? {
            subscribers
                .entry(row.text(0)?)
                .or_default()
                .push(subscriber_from_row(&row)?);
        }
        for row in db.query(
            &format!(
                "SELECT a.sim_id, a.imsi, a.session_id, a.rp_id, a.client_ip, a.vpg_id, a.created_at,
                        a.last_updated_at, r.public_key, r.endpoint, r.allowed_ips
                 FROM arc_sessions a JOIN rendezvous_points r ON r.rp_id = a.rp_id
                 WHERE a.sim_id IN ({list}) ORDER BY a.sim_id"
            ),
            &params,
        )? {
            // One session a SIM (its first, as a single-SIM read takes it).
            if let std::collections::hash_map::Entry::Vacant(slot) = sessions.entry(row.text(0)?) {
                slot.insert(session_from_row(&row)?);
            }
        }
    }
    for sim in sims {
        let id = sim.sim_id.as_str();
        sim.tags = tags.remove(id).unwrap_or_default();
        sim.subscribers = subscribers.remove(id).unwrap_or_default();
        sim.session = sessions.remove(id);
    }
    Ok(())
}

/// A subscriber from columns 1.. of `complete_all`'s query (column 0 is its SIM).
fn subscriber_from_row(row: &Row) -> Result<SubscriberRecord> {
    Ok(SubscriberRecord {
        imsi: Imsi::new(row.text(1)?),
        iccid: row.text(2)?,
        msisdn: row.opt_text(3)?,
        subscription: row.text(4)?,
        is_primary: row.bool(5)?,
        is_virtual: row.bool(6)?,
        status: row.text(7)?,
        arc_public_key: row.opt_text(8)?,
    })
}

/// A session with what a device needs to reach its rendezvous point, from columns 1.. of
/// `complete_all`'s query (column 0 is its SIM).
fn session_from_row(row: &Row) -> Result<SessionRecord> {
    Ok(SessionRecord {
        imsi: Imsi::new(row.text(1)?),
        session_id: row.text(2)?,
        rp_id: RendezvousPointId::new(row.text(3)?),
        client_ip: row.text(4)?,
        vpg_id: row.opt_text(5)?.map(VpgId::new),
        created_at: row.int(6)?,
        last_updated_at: row.int(7)?,
        server_public_key: row.text(8)?,
        server_endpoint: row.text(9)?,
        allowed_ips: rendezvous::parse_allowed_ips(&row.text(10)?)?,
    })
}

/// The SIMs a query selecting `SIM_COLUMNS` returns, each completed: how every page of SIMs
/// (list, group members) is read.
fn sims_page(db: &mut dyn Db, sql: &str, params: &[&dyn Param]) -> Result<Vec<SimRecord>> {
    let rows = db.query(sql, params)?;
    completed(db, &rows)
}

/// Rows of `SIM_COLUMNS`, each completed.
pub(in crate::store) fn completed(db: &mut dyn Db, rows: &[Row]) -> Result<Vec<SimRecord>> {
    let mut sims = rows.iter().map(sim_from_row).collect::<Result<Vec<_>>>()?;
    complete_all(db, &mut sims)?;
    Ok(sims)
}

pub fn get(db: &mut dyn Db, operator_id: &OperatorId, sim_id: &SimId) -> Result<SimRecord> {
    let row = db.query_opt(
        &format!("SELECT {SIM_COLUMNS} FROM sims WHERE sim_id = $1 AND operator_id = $2"),
        &[sim_id, operator_id],
    )?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(Entity::Sim));
    };
    let mut sims = [sim_from_row(&row)?];
    complete_all(db, &mut sims)?;
    let [sim] = sims;
    Ok(sim)
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

/// How many SIMs an operator has: all of them, and those not terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimCounts {
    pub total: u64,
    pub not_terminated: u64,
}

/// One pass over the operator's rows (the `sims` index by operator); the management page shows
/// it next to the list, whose pages carry no total.
pub fn count(db: &mut dyn Db, operator_id: &OperatorId) -> Result<SimCounts> {
    let row = db.query_one(
        "SELECT CAST(COUNT(*) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN status <> 'terminated' THEN 1 ELSE 0 END), 0) AS BIGINT)
         FROM sims WHERE operator_id = $1",
        &[operator_id],
    )?;
    Ok(SimCounts {
        total: u64::try_from(row.int(0)?).unwrap_or(0),
        not_terminated: u64::try_from(row.int(1)?).unwrap_or(0),
    })
}
