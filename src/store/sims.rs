//! SIMs: the rows behind the API's `Sim` object, standalone virtual SIM creation, status changes,
//! termination, groups and tags.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::db::SqliteDb;
use super::sessions::{self, ActiveSession, PeerChange, SessionPolicy};
pub use super::sim_search::{search, SimQuery};
use super::{next_counter, now_ms, rendezvous, Entity, Result, Rule, StoreError};
use crate::config::Coverage;
use crate::ids;
use crate::ids::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};
use crate::wgkey;

#[derive(Debug, Clone)]
pub struct SimRecord {
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    /// `virtual` for arcd-made SIMs, `uicc` for imported IoT SIMs.
    pub sim_type: String,
    pub module_type: Option<String>,
    pub status: String,
    pub coverage: Coverage,
    pub group_id: Option<GroupId>,
    pub termination_enabled: bool,
    pub created_at: i64,
    pub last_modified_at: i64,
    pub tags: Vec<(String, String)>,
    /// Primary first.
    pub subscribers: Vec<SubscriberRecord>,
    pub session: Option<SessionRecord>,
}

#[derive(Debug, Clone)]
pub struct SubscriberRecord {
    pub imsi: Imsi,
    pub iccid: String,
    pub msisdn: Option<String>,
    pub subscription: String,
    pub is_primary: bool,
    pub is_virtual: bool,
    pub status: String,
    pub arc_public_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub imsi: Imsi,
    pub session_id: String,
    pub rp_id: RendezvousPointId,
    pub client_ip: String,
    pub vpg_id: Option<VpgId>,
    pub created_at: i64,
    pub last_updated_at: i64,
    pub server_public_key: String,
    pub server_endpoint: String,
    pub allowed_ips: Vec<String>,
}

impl SimRecord {
    pub fn primary_imsi(&self) -> Option<&Imsi> {
        self.subscribers
            .iter()
            .find(|s| s.is_primary)
            .map(|s| &s.imsi)
    }

    /// The virtual subscriber carrying the Arc credentials, if the SIM has a live one.
    pub fn arc_subscriber(&self) -> Option<&SubscriberRecord> {
        self.subscribers
            .iter()
            .find(|s| s.is_virtual && s.status == "active")
    }
}

pub(super) const SIM_COLUMNS: &str =
    "sim_id, operator_id, sim_type, module_type, status, coverage, group_id,
     termination_enabled, created_at, last_modified_at";

fn sim_from_row(row: &rusqlite::Row) -> rusqlite::Result<SimRecord> {
    Ok(SimRecord {
        sim_id: row.get(0)?,
        operator_id: row.get(1)?,
        sim_type: row.get(2)?,
        module_type: row.get(3)?,
        status: row.get(4)?,
        coverage: sessions::coverage_from_column(&row.get::<_, String>(5)?),
        group_id: row.get(6)?,
        termination_enabled: row.get(7)?,
        created_at: row.get(8)?,
        last_modified_at: row.get(9)?,
        tags: Vec::new(),
        subscribers: Vec::new(),
        session: None,
    })
}

/// Fills tags, subscribers and session of a SIM row.
fn complete(conn: &Connection, mut sim: SimRecord) -> Result<SimRecord> {
    sim.tags = conn
        .prepare_cached("SELECT name, value FROM sim_tags WHERE sim_id = ?1 ORDER BY name")?
        .query_map([&sim.sim_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    sim.subscribers = subscribers_of(conn, &sim.sim_id)?;
    sim.session = session_of(conn, &sim.sim_id)?;
    Ok(sim)
}

/// The SIM's subscribers, primary first.
fn subscribers_of(conn: &Connection, sim_id: &SimId) -> Result<Vec<SubscriberRecord>> {
    Ok(conn
        .prepare_cached(
            "SELECT imsi, iccid, msisdn, subscription, is_primary, is_virtual, status, arc_public_key
             FROM subscribers WHERE sim_id = ?1 ORDER BY is_primary DESC, created_at, imsi",
        )?
        .query_map([sim_id], |row| {
            Ok(SubscriberRecord {
                imsi: row.get(0)?,
                iccid: row.get(1)?,
                msisdn: row.get(2)?,
                subscription: row.get(3)?,
                is_primary: row.get(4)?,
                is_virtual: row.get(5)?,
                status: row.get(6)?,
                arc_public_key: row.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// The SIM's Arc session with what a device needs to reach its rendezvous point, if it has one.
fn session_of(conn: &Connection, sim_id: &SimId) -> Result<Option<SessionRecord>> {
    let session = conn
        .prepare_cached(
            "SELECT a.imsi, a.session_id, a.rp_id, a.client_ip, a.vpg_id, a.created_at, a.last_updated_at,
                    r.public_key, r.endpoint, r.allowed_ips
             FROM arc_sessions a JOIN rendezvous_points r ON r.rp_id = a.rp_id
             WHERE a.sim_id = ?1",
        )?
        .query_row([sim_id], |row| {
            Ok((
                SessionRecord {
                    imsi: row.get(0)?,
                    session_id: row.get(1)?,
                    rp_id: row.get(2)?,
                    client_ip: row.get(3)?,
                    vpg_id: row.get(4)?,
                    created_at: row.get(5)?,
                    last_updated_at: row.get(6)?,
                    server_public_key: row.get(7)?,
                    server_endpoint: row.get(8)?,
                    allowed_ips: Vec::new(),
                },
                row.get::<_, String>(9)?,
            ))
        })
        .optional()?;
    let Some((mut record, allowed)) = session else {
        return Ok(None);
    };
    record.allowed_ips = rendezvous::parse_allowed_ips(&allowed)?;
    Ok(Some(record))
}

/// The SIMs a statement selecting `SIM_COLUMNS` returns, each completed: how every page of SIMs
/// (list, group members, search) is read.
pub(super) fn sims_page(
    conn: &Connection,
    statement: &mut rusqlite::Statement,
    params: impl rusqlite::Params,
) -> Result<Vec<SimRecord>> {
    let rows: Vec<SimRecord> = statement
        .query_map(params, sim_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(|sim| complete(conn, sim)).collect()
}

pub fn get(conn: &Connection, operator_id: &OperatorId, sim_id: &SimId) -> Result<SimRecord> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {SIM_COLUMNS} FROM sims WHERE sim_id = ?1 AND operator_id = ?2"
        ))?
        .query_row(params![sim_id, operator_id], sim_from_row)
        .optional()?;
    match row {
        Some(sim) => complete(conn, sim),
        None => Err(StoreError::NotFound(Entity::Sim)),
    }
}

/// 404 unless the operator owns the SIM.
pub(crate) fn require_sim(
    conn: &Connection,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<String> {
    conn.prepare_cached("SELECT status FROM sims WHERE sim_id = ?1 AND operator_id = ?2")?
        .query_row(params![sim_id, operator_id], |row| row.get(0))
        .optional()?
        .ok_or(StoreError::NotFound(Entity::Sim))
}

/// Like `require_sim`, and the SIM must not be terminated.
pub(crate) fn require_live_sim(
    conn: &Connection,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<()> {
    if require_sim(conn, operator_id, sim_id)? == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    Ok(())
}

pub(crate) fn touch(tx: &Transaction, sim_id: &SimId) -> Result<()> {
    tx.prepare_cached("UPDATE sims SET last_modified_at = ?2 WHERE sim_id = ?1")?
        .execute(params![sim_id, now_ms()])?;
    Ok(())
}

/// A standalone virtual SIM with a server-made key pair; the private key is returned once.
/// Creating SIMs would take an operator past `sims.max_per_operator`; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operator holds {held} SIM(s) that are not terminated; adding {adding} would exceed the limit of {limit} SIMs per operator (sims.max_per_operator); terminate SIMs first")]
pub struct SimQuotaExceeded {
    pub limit: u64,
    pub held: u64,
    pub adding: u64,
}

/// Checks, inside the creating transaction, that `adding` more SIMs keep the operator within
/// `limit` SIMs that are not terminated (the count the `operator_sim_counts` triggers keep).
pub fn check_sim_quota(
    conn: &Connection,
    operator_id: &OperatorId,
    adding: u64,
    limit: u64,
) -> Result<std::result::Result<(), SimQuotaExceeded>> {
    let held: Option<i64> = conn
        .prepare_cached("SELECT live_sims FROM operator_sim_counts WHERE operator_id = ?1")?
        .query_row([operator_id], |row| row.get(0))
        .optional()?;
    let held = held.unwrap_or(0).max(0) as u64;
    if held.saturating_add(adding) > limit {
        return Ok(Err(SimQuotaExceeded {
            limit,
            held,
            adding,
        }));
    }
    Ok(Ok(()))
}

pub struct CreatedSim {
    pub sim: SimRecord,
    pub private_key: String,
    pub session: ActiveSession,
}

pub fn create_virtual(
    tx: &Transaction,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
    policy: &SessionPolicy,
) -> Result<CreatedSim> {
    // A virtual SIM's id is its ICCID.
    let sim_id = SimId::new(next_iccid(tx, iccid_prefix)?);
    let imsi = next_virtual_imsi(tx)?;
    let pair = wgkey::generate();
    let now = now_ms();
    tx.prepare_cached(
        "INSERT INTO sims(sim_id, operator_id, sim_type, module_type, status, coverage, group_id,
                          termination_enabled, created_at, last_modified_at)
         VALUES (?1, ?2, 'virtual', 'virtual', 'active', ?3, NULL, 0, ?4, ?4)",
    )?
    .execute(params![sim_id, operator_id, coverage.as_str(), now])?;
    insert_subscriber(
        tx,
        &NewSubscriber {
            imsi: &imsi,
            sim_id: &sim_id,
            iccid: sim_id.as_str(),

            msisdn: None,
            subscription: "planArc01",
            is_primary: true,
            is_virtual: true,
            arc_public_key: Some(&pair.public_key),
        },
        now,
    )?;
    let session =
        sessions::open_first_session(&mut SqliteDb::new(tx), operator_id, &sim_id, policy)?;
    Ok(CreatedSim {
        sim: get(tx, operator_id, &sim_id)?,
        private_key: pair.private_key.clone(),
        session,
    })
}

pub(crate) struct NewSubscriber<'a> {
    pub imsi: &'a Imsi,
    pub sim_id: &'a SimId,
    pub iccid: &'a str,
    pub msisdn: Option<&'a str>,
    pub subscription: &'a str,
    pub is_primary: bool,
    pub is_virtual: bool,
    pub arc_public_key: Option<&'a str>,
}

pub(crate) fn insert_subscriber(tx: &Transaction, s: &NewSubscriber, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO subscribers(imsi, sim_id, iccid, msisdn, subscription, is_primary, is_virtual,
                                 status, arc_public_key, created_at, last_modified_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'active', ?8, ?9, ?9)",
    )?
    .execute(params![
        s.imsi,
        s.sim_id,
        s.iccid,
        s.msisdn,
        s.subscription,
        s.is_primary,
        s.is_virtual,
        s.arc_public_key,
        now
    ])?;
    Ok(())
}

/// Next ICCID from the never-decreasing counter, skipping any an imported SIM already holds.
fn next_iccid(tx: &Transaction, prefix: &str) -> Result<String> {
    loop {
        let sequence = next_counter(tx, "iccid")?;
        if sequence > ids::iccid_capacity(prefix) {
            return Err(Rule::IdentifiersExhausted("ICCID").into());
        }
        let iccid = ids::iccid_from_sequence(prefix, sequence);
        if !tx
            .prepare_cached("SELECT 1 FROM sims WHERE sim_id = ?1")?
            .exists([&iccid])?
        {
            return Ok(iccid);
        }
    }
}

pub(crate) fn next_virtual_imsi(tx: &Transaction) -> Result<Imsi> {
    loop {
        let sequence = next_counter(tx, "virtual_imsi")?;
        if sequence > ids::VIRTUAL_IMSI_CAPACITY {
            return Err(Rule::IdentifiersExhausted("virtual IMSI").into());
        }
        let imsi = ids::virtual_imsi_from_sequence(sequence);
        if !tx
            .prepare_cached("SELECT 1 FROM subscribers WHERE imsi = ?1")?
            .exists([&imsi])?
        {
            return Ok(imsi);
        }
    }
}

/// One page of the operator's SIMs in SIM ID order, after `after_sim_id`.
pub fn list(
    conn: &Connection,
    operator_id: &OperatorId,
    after_sim_id: Option<&str>,
    limit: u32,
) -> Result<Vec<SimRecord>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SIM_COLUMNS} FROM sims WHERE operator_id = ?1 AND sim_id > ?2
         ORDER BY sim_id LIMIT ?3"
    ))?;
    sims_page(
        conn,
        &mut statement,
        params![operator_id, after_sim_id.unwrap_or(""), limit],
    )
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
    tx: &Transaction,
    operator_id: &OperatorId,
    sim_id: &SimId,
    action: StatusAction,
) -> Result<SimRecord> {
    let sim = get(tx, operator_id, sim_id)?;
    if sim.sim_type == "virtual" {
        return Err(Rule::VirtualStatusChange(action.verb()).into());
    }
    if sim.status == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    tx.prepare_cached("UPDATE sims SET status = ?2, last_modified_at = ?3 WHERE sim_id = ?1")?
        .execute(params![sim_id, action.target(), now_ms()])?;
    get(tx, operator_id, sim_id)
}

/// `enable_termination` (true: protection off) / `disable_termination` (false: protection on).
pub fn set_termination_enabled(
    tx: &Transaction,
    operator_id: &OperatorId,
    sim_id: &SimId,
    enabled: bool,
) -> Result<SimRecord> {
    require_sim(tx, operator_id, sim_id)?;
    tx.prepare_cached(
        "UPDATE sims SET termination_enabled = ?2, last_modified_at = ?3 WHERE sim_id = ?1",
    )?
    .execute(params![sim_id, enabled, now_ms()])?;
    get(tx, operator_id, sim_id)
}

/// Ends the SIM for good: every subscriber terminated, sessions deleted, addresses into quarantine.
/// The record stays; its ICCID and IMSIs are never issued again.
pub fn terminate(
    tx: &Transaction,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<(SimRecord, Vec<PeerChange>)> {
    let sim = get(tx, operator_id, sim_id)?;
    if sim.status == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    if !sim.termination_enabled {
        return Err(Rule::TerminationProtected.into());
    }
    let mut changes = Vec::new();
    if let Some(sub) = sessions::arc_subscriber(&mut SqliteDb::new(tx), operator_id, sim_id)? {
        changes.extend(sessions::close_session(&mut SqliteDb::new(tx), &sub, true)?);
    }
    let now = now_ms();
    tx.prepare_cached(
        "UPDATE subscribers SET status = 'terminated', last_modified_at = ?2 WHERE sim_id = ?1",
    )?
    .execute(params![sim_id, now])?;
    tx.prepare_cached(
        "UPDATE sims SET status = 'terminated', last_modified_at = ?2 WHERE sim_id = ?1",
    )?
    .execute(params![sim_id, now])?;
    Ok((get(tx, operator_id, sim_id)?, changes))
}

/// Moves the SIM into a group (or out with `None`). The data plane learns the new group at once;
/// placement changes wait for the next session re-creation.
pub fn set_group(
    tx: &Transaction,
    operator_id: &OperatorId,
    sim_id: &SimId,
    group_id: Option<&GroupId>,
) -> Result<(SimRecord, Option<PeerChange>)> {
    require_sim(tx, operator_id, sim_id)?;
    if let Some(group_id) = group_id {
        super::groups::require_group(&mut SqliteDb::new(tx), operator_id, group_id)?;
    }
    tx.prepare_cached("UPDATE sims SET group_id = ?2, last_modified_at = ?3 WHERE sim_id = ?1")?
        .execute(params![sim_id, group_id, now_ms()])?;
    let change = sessions::active_session_of(&mut SqliteDb::new(tx), operator_id, sim_id)?
        .map(PeerChange::Upsert);
    Ok((get(tx, operator_id, sim_id)?, change))
}

pub fn put_tags(
    tx: &Transaction,
    operator_id: &OperatorId,
    sim_id: &SimId,
    tags: &[(String, String)],
) -> Result<SimRecord> {
    require_sim(tx, operator_id, sim_id)?;
    for (name, value) in tags {
        tx.prepare_cached(
            "INSERT INTO sim_tags(sim_id, name, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(sim_id, name) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![sim_id, name, value])?;
    }
    touch(tx, sim_id)?;
    get(tx, operator_id, sim_id)
}

pub fn delete_tag(
    tx: &Transaction,
    operator_id: &OperatorId,
    sim_id: &SimId,
    name: &str,
) -> Result<()> {
    require_sim(tx, operator_id, sim_id)?;
    let deleted = tx
        .prepare_cached("DELETE FROM sim_tags WHERE sim_id = ?1 AND name = ?2")?
        .execute(params![sim_id, name])?;
    if deleted == 0 {
        return Err(StoreError::NotFound(Entity::Tag));
    }
    touch(tx, sim_id)
}

/// SIMs of a group, one page in SIM ID order.
pub fn list_in_group(
    conn: &Connection,
    operator_id: &OperatorId,
    group_id: &GroupId,
    after_sim_id: Option<&str>,
    limit: u32,
) -> Result<Vec<SimRecord>> {
    super::groups::require_group(&mut SqliteDb::new(conn), operator_id, group_id)?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SIM_COLUMNS} FROM sims WHERE group_id = ?1 AND operator_id = ?2 AND sim_id > ?3
         ORDER BY sim_id LIMIT ?4"
    ))?;
    sims_page(
        conn,
        &mut statement,
        params![group_id, operator_id, after_sim_id.unwrap_or(""), limit],
    )
}
