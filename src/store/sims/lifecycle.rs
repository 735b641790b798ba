//! Changing SIMs: status, termination protection and termination, group, tags.

use super::{get, require_sim, SimRecord};
use crate::ids::{GroupId, OperatorId, SimId};
use crate::store::db::Db;
use crate::store::sessions::{self, PeerChange};
use crate::store::{now_ms, Entity, Result, Rule, StoreError};

/// Like `require_sim`, and the SIM must not be terminated.
pub(crate) fn require_live_sim(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<()> {
    if require_sim(db, operator_id, sim_id)? == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    Ok(())
}

pub(crate) fn touch(db: &mut dyn Db, sim_id: &SimId) -> Result<()> {
    db.execute(
        "UPDATE sims SET last_modified_at = $2 WHERE sim_id = $1",
        &[sim_id, &now_ms()],
    )?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    Activate,
    Deactivate,
    Suspend,
}

impl StatusAction {
    fn target(self) -> &'static str {
        match self {
            StatusAction::Activate => "active",
            StatusAction::Deactivate => "inactive",
            StatusAction::Suspend => "suspended",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            StatusAction::Activate => "activate",
            StatusAction::Deactivate => "deactivate",
            StatusAction::Suspend => "suspend",
        }
    }
}

/// activate / deactivate / suspend: only for IoT SIMs; a virtual SIM is active or terminated.
pub fn change_status(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    action: StatusAction,
) -> Result<SimRecord> {
    let sim = get(db, operator_id, sim_id)?;
    if sim.sim_type == "virtual" {
        return Err(Rule::VirtualStatusChange(action.verb()).into());
    }
    if sim.status == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    db.execute(
        "UPDATE sims SET status = $2, last_modified_at = $3 WHERE sim_id = $1",
        &[sim_id, &action.target(), &now_ms()],
    )?;
    get(db, operator_id, sim_id)
}

/// `enable_termination` (true: protection off) / `disable_termination` (false: protection on).
pub fn set_termination_enabled(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    enabled: bool,
) -> Result<SimRecord> {
    require_sim(db, operator_id, sim_id)?;
    db.execute(
        "UPDATE sims SET termination_enabled = $2, last_modified_at = $3 WHERE sim_id = $1",
        &[sim_id, &enabled, &now_ms()],
    )?;
    get(db, operator_id, sim_id)
}

/// Ends the SIM for good: every subscriber terminated, sessions deleted, addresses into quarantine.
/// The record stays; its ICCID and IMSIs are never issued again.
pub fn terminate(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<(SimRecord, Vec<PeerChange>)> {
    let sim = get(db, operator_id, sim_id)?;
    if sim.status == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    if !sim.termination_enabled {
        return Err(Rule::TerminationProtected.into());
    }
    let mut changes = Vec::new();
    if let Some(sub) = sessions::arc_subscriber(db, operator_id, sim_id)? {
        changes.extend(sessions::close_session(db, &sub, true)?);
    }
    mark_terminated(db, sim_id)?;
    Ok((get(db, operator_id, sim_id)?, changes))
}

/// The SIM and every subscriber of it terminated.
pub(super) fn mark_terminated(db: &mut dyn Db, sim_id: &SimId) -> Result<()> {
    let now = now_ms();
    db.execute(
        "UPDATE subscribers SET status = 'terminated', last_modified_at = $2 WHERE sim_id = $1",
        &[sim_id, &now],
    )?;
    db.execute(
        "UPDATE sims SET status = 'terminated', last_modified_at = $2 WHERE sim_id = $1",
        &[sim_id, &now],
    )?;
    Ok(())
}

/// Moves the SIM into a group (or out with `None`). The data plane learns the new group at once;
/// placement changes wait for the next session re-creation.
pub fn set_group(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    group_id: Option<&GroupId>,
) -> Result<(SimRecord, Option<PeerChange>)> {
    require_sim(db, operator_id, sim_id)?;
    if let Some(group_id) = group_id {
        crate::store::groups::require_group(db, operator_id, group_id)?;
    }
    db.execute(
        "UPDATE sims SET group_id = $2, last_modified_at = $3 WHERE sim_id = $1",
        &[sim_id, &group_id, &now_ms()],
    )?;
    let session = sessions::active_session_of(db, operator_id, sim_id)?;
    Ok((
        get(db, operator_id, sim_id)?,
        session.map(PeerChange::Upsert),
    ))
}

pub fn put_tags(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    tags: &[(String, String)],
) -> Result<SimRecord> {
    require_sim(db, operator_id, sim_id)?;
    for (name, value) in tags {
        db.execute(
            "INSERT INTO sim_tags(sim_id, name, value) VALUES ($1, $2, $3)
             ON CONFLICT(sim_id, name) DO UPDATE SET value = excluded.value",
            &[sim_id, name, value],
        )?;
    }
    touch(db, sim_id)?;
    get(db, operator_id, sim_id)
}

pub fn delete_tag(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    name: &str,
) -> Result<()> {
    require_sim(db, operator_id, sim_id)?;
    let deleted = db.execute(
        "DELETE FROM sim_tags WHERE sim_id = $1 AND name = $2",
        &[sim_id, &name],
    )?;
    if deleted == 0 {
        return Err(StoreError::NotFound(Entity::Tag));
    }
    touch(db, sim_id)
}
