//! Making SIMs: the per-operator quota, standalone virtual SIMs, subscriber rows and the ICCID and
//! virtual IMSI numbers they get.

use super::{get, SimRecord};
use crate::config::Coverage;
use crate::ids;
use crate::ids::{Imsi, OperatorId, SimId};
use crate::store::db::Db;
use crate::store::sessions::{self, ActiveSession, SessionPolicy};
use crate::store::{now_ms, Result, Rule};
use crate::wgkey;

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
/// The count is summed: PostgreSQL may spread one operator's count over several rows so that
/// concurrent creates do not all update one row (docs/design/store-engines.md, sims).
pub fn check_sim_quota(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    adding: u64,
    limit: u64,
) -> Result<std::result::Result<(), SimQuotaExceeded>> {
    let held = db
        .query_one(
            "SELECT CAST(COALESCE(SUM(live_sims), 0) AS BIGINT) FROM operator_sim_counts
             WHERE operator_id = $1",
            &[operator_id],
        )?
        .int(0)?;
    let held = held.max(0) as u64;
    if held.saturating_add(adding) > limit {
        return Ok(Err(SimQuotaExceeded {
            limit,
            held,
            adding,
        }));
    }
    Ok(Ok(()))
}

/// A standalone virtual SIM with a server-made key pair; the private key is returned once.
pub struct CreatedSim {
    pub sim: SimRecord,
    pub private_key: String,
    pub session: ActiveSession,
}

pub fn create_virtual(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
    policy: &SessionPolicy,
) -> Result<CreatedSim> {
    let (sim_id, private_key) = insert_virtual_sim(db, operator_id, coverage, iccid_prefix)?;
    let session = sessions::open_first_session(db, operator_id, &sim_id, policy)?;
    Ok(CreatedSim {
        sim: get(db, operator_id, &sim_id)?,
        private_key,
        session,
    })
}

/// The SIM and its primary virtual subscriber, without a session yet; returns the SIM's id and
/// the subscriber's private key.
pub(super) fn insert_virtual_sim(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
) -> Result<(SimId, String)> {
    // A virtual SIM's id is its ICCID.
    let sim_id = SimId::new(next_iccid(db, iccid_prefix)?);
    let imsi = next_virtual_imsi(db)?;
    let pair = wgkey::generate();
    let now = now_ms();
    db.execute(
        "INSERT INTO sims(sim_id, operator_id, sim_type, module_type, status, coverage, group_id,
                          termination_enabled, created_at, last_modified_at)
         VALUES ($1, $2, 'virtual', 'virtual', 'active', $3, NULL, FALSE, $4, $4)",
        &[&sim_id, operator_id, &coverage.as_str(), &now],
    )?;
    insert_subscriber(
        db,
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
    Ok((sim_id, pair.private_key.clone()))
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

pub(crate) fn insert_subscriber(db: &mut dyn Db, s: &NewSubscriber, now: i64) -> Result<()> {
    db.execute(
        "INSERT INTO subscribers(imsi, sim_id, iccid, msisdn, subscription, is_primary, is_virtual,
                                 status, arc_public_key, created_at, last_modified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $9)",
        &[
            s.imsi,
            s.sim_id,
            &s.iccid,
            &s.msisdn,
            &s.subscription,
            &s.is_primary,
            &s.is_virtual,
            &s.arc_public_key,
            &now,
        ],
    )?;
    Ok(())
}

/// Next ICCID from the never-decreasing counter, skipping any an imported SIM already holds.
fn next_iccid(db: &mut dyn Db, prefix: &str) -> Result<String> {
    loop {
        let sequence = number(db, "iccid")?;
        if sequence > ids::iccid_capacity(prefix) {
            return Err(Rule::IdentifiersExhausted("ICCID").into());
        }
        let iccid = ids::iccid_from_sequence(prefix, sequence);
        if db
            .query_opt("SELECT 1 FROM sims WHERE sim_id = $1", &[&iccid])?
            .is_none()
        {
            return Ok(iccid);
        }
    }
}

pub(crate) fn next_virtual_imsi(db: &mut dyn Db) -> Result<Imsi> {
    loop {
        let sequence = number(db, "virtual_imsi")?;
        if sequence > ids::VIRTUAL_IMSI_CAPACITY {
            return Err(Rule::IdentifiersExhausted("virtual IMSI").into());
        }
        let imsi = ids::virtual_imsi_from_sequence(sequence);
        if db
            .query_opt("SELECT 1 FROM subscribers WHERE imsi = $1", &[&imsi])?
            .is_none()
        {
            return Ok(imsi);
        }
    }
}

/// The next value of a never-decreasing number (`Db::next_number`: a counters row on SQLite, a
/// sequence on PostgreSQL, where a rolled-back or retried create leaves a harmless gap).
fn number(db: &mut dyn Db, name: &str) -> Result<u64> {
    Ok(db.next_number(name)?.max(0) as u64)
}
