//! Making SIMs: the per-operator quota, standalone virtual SIMs, subscriber rows and the ICCID and
//! virtual IMSI numbers they get.

use super::{SimRecord, SubscriberRecord};
use crate::config::Coverage;
use crate::ids;
use crate::ids::{Imsi, OperatorId, SimId};
use crate::store::db::Db;
use crate::store::sessions::{self, ActiveSession, ArcSubscriber, SessionPolicy};
use crate::store::{now_ms, Result, Rule, StoreError};
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

/// createSim: a standalone virtual SIM with its first session, unless one more SIM would take the
/// operator past `limit` SIMs that are not terminated (then nothing is written). The quota is
/// checked by the SIM's insert itself: one statement less on the hot write (see
/// `insert_virtual_sim`); on PostgreSQL it is as soft as `check_sim_quota`'s under READ COMMITTED.
pub fn create_virtual_within_quota(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
    policy: &SessionPolicy,
    limit: u64,
) -> Result<std::result::Result<CreatedSim, SimQuotaExceeded>> {
    let inserted = match insert_virtual_sim(db, operator_id, coverage, iccid_prefix, Some(limit))? {
        Ok(inserted) => inserted,
        Err(exceeded) => return Ok(Err(exceeded)),
    };
    complete_virtual(db, operator_id, coverage, policy, inserted).map(Ok)
}

/// A standalone virtual SIM with its first session, with no quota.
pub fn create_virtual(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
    policy: &SessionPolicy,
) -> Result<CreatedSim> {
    let inserted = insert_virtual_sim_unlimited(db, operator_id, coverage, iccid_prefix)?;
    complete_virtual(db, operator_id, coverage, policy, inserted)
}

/// The first session of a just-inserted virtual SIM, and the SIM as the API answers it.
fn complete_virtual(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    policy: &SessionPolicy,
    inserted: InsertedVirtualSim,
) -> Result<CreatedSim> {
    let subscriber = ArcSubscriber {
        sim_id: inserted.sim_id.clone(),
        operator_id: operator_id.clone(),
        imsi: inserted.imsi.clone(),
        primary_imsi: inserted.imsi.clone(),
        subscription: VIRTUAL_SUBSCRIPTION.to_string(),
        public_key: Some(inserted.public_key.clone()),
        coverage,
        group_id: None,
    };
    let opened = sessions::open_inserted_subscriber_session(db, &subscriber, policy)?;
    // The answer is built from what this transaction wrote rather than read back: createSim is
    // the hot write, and on PostgreSQL every read is a round trip (a test compares it with `get`).
    let sim = SimRecord {
        sim_id: inserted.sim_id.clone(),
        operator_id: operator_id.clone(),
        sim_type: "virtual".to_string(),
        module_type: Some("virtual".to_string()),
        status: "active".to_string(),
        coverage,
        group_id: None,
        termination_enabled: false,
        created_at: inserted.created_at,
        last_modified_at: inserted.created_at,
        tags: Vec::new(),
        subscribers: vec![SubscriberRecord {
            imsi: inserted.imsi,
            iccid: inserted.sim_id.into_string(),
            msisdn: None,
            subscription: VIRTUAL_SUBSCRIPTION.to_string(),
            is_primary: true,
            is_virtual: true,
            status: "active".to_string(),
            arc_public_key: Some(inserted.public_key),
        }],
        session: Some(opened.record),
    };
    Ok(CreatedSim {
        sim,
        private_key: inserted.private_key,
        session: opened.active,
    })
}

/// The subscription of a standalone virtual SIM's subscriber.
const VIRTUAL_SUBSCRIPTION: &str = "planArc01";

/// A standalone virtual SIM and its primary virtual subscriber as `insert_virtual_sim` wrote
/// them.
pub(super) struct InsertedVirtualSim {
    pub sim_id: SimId,
    pub imsi: Imsi,
    pub public_key: String,
    /// Returned once to the caller, never stored.
    pub private_key: String,
    pub created_at: i64,
}

/// `insert_virtual_sim` with no quota.
pub(super) fn insert_virtual_sim_unlimited(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
) -> Result<InsertedVirtualSim> {
    match insert_virtual_sim(db, operator_id, coverage, iccid_prefix, None)? {
        Ok(inserted) => Ok(inserted),
        // Without a limit the insert never refuses for the quota.
        Err(exceeded) => Err(StoreError::Corrupt(format!("no quota, yet {exceeded}"))),
    }
}

/// The SIM and its primary virtual subscriber, without a session yet; with `limit`, only while
/// the operator holds fewer than `limit` SIMs that are not terminated.
pub(super) fn insert_virtual_sim(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    iccid_prefix: &str,
    limit: Option<u64>,
) -> Result<std::result::Result<InsertedVirtualSim, SimQuotaExceeded>> {
    // A virtual SIM's id is its ICCID. A number an imported SIM already holds is skipped: the
    // insert that finds it taken writes nothing and the next number is tried (no lookup first:
    // this is createSim's hot path). The insert also writes nothing when the quota is reached;
    // only then is the quota read on its own, to tell the two apart.
    let held_below = limit.map_or(i64::MAX, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
    let now = now_ms();
    // Both numbers in one draw (one round trip on PostgreSQL); a number found taken below is
    // replaced by the next one alone.
    let (first_iccid, first_imsi) = db.next_number_pair("iccid", "virtual_imsi")?;
    let (mut iccid_drawn, mut imsi_drawn) = (Some(first_iccid), Some(first_imsi));
    let sim_id = loop {
        let drawn = match iccid_drawn.take() {
            Some(drawn) => drawn,
            None => db.next_number("iccid")?,
        };
        let sim_id = SimId::new(ids::iccid_from_sequence(
            iccid_prefix,
            within_capacity(drawn, ids::iccid_capacity(iccid_prefix), "ICCID")?,
        ));
        let inserted = db.execute(
            "INSERT INTO sims(sim_id, operator_id, sim_type, module_type, status, coverage, group_id,
                              termination_enabled, created_at, last_modified_at)
             SELECT $1, $2, 'virtual', 'virtual', 'active', $3, NULL, FALSE,
                    CAST($4 AS BIGINT), CAST($4 AS BIGINT)
             WHERE (SELECT COALESCE(SUM(live_sims), 0) FROM operator_sim_counts
                    WHERE operator_id = $2) < CAST($5 AS BIGINT)
             ON CONFLICT (sim_id) DO NOTHING",
            &[&sim_id, operator_id, &coverage.as_str(), &now, &held_below],
        )?;
        if inserted == 1 {
            break sim_id;
        }
        if let Some(limit) = limit {
            if let Err(exceeded) = check_sim_quota(db, operator_id, 1, limit)? {
                return Ok(Err(exceeded));
            }
        }
    };
    let pair = wgkey::generate();
    let imsi = loop {
        let drawn = match imsi_drawn.take() {
            Some(drawn) => drawn,
            None => db.next_number("virtual_imsi")?,
        };
        let imsi = ids::virtual_imsi_from_sequence(within_capacity(
            drawn,
            ids::VIRTUAL_IMSI_CAPACITY,
            "virtual IMSI",
        )?);
        let subscriber = NewSubscriber {
            imsi: &imsi,
            sim_id: &sim_id,
            iccid: sim_id.as_str(),
            msisdn: None,
            subscription: VIRTUAL_SUBSCRIPTION,
            is_primary: true,
            is_virtual: true,
            arc_public_key: Some(&pair.public_key),
        };
        if insert_subscriber_unless_taken(db, &subscriber, now)? {
            break imsi;
        }
    };
    Ok(Ok(InsertedVirtualSim {
        sim_id,
        imsi,
        public_key: pair.public_key.clone(),
        private_key: pair.private_key.clone(),
        created_at: now,
    }))
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

macro_rules! insert_subscriber_sql {
    ($tail:literal) => {
        concat!(
            "INSERT INTO subscribers(imsi, sim_id, iccid, msisdn, subscription, is_primary,
                                     is_virtual, status, arc_public_key, created_at,
                                     last_modified_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $9)",
            $tail
        )
    };
}
const INSERT_SUBSCRIBER: &str = insert_subscriber_sql!("");
const INSERT_SUBSCRIBER_UNLESS_TAKEN: &str =
    insert_subscriber_sql!(" ON CONFLICT (imsi) DO NOTHING");

pub(crate) fn insert_subscriber(db: &mut dyn Db, s: &NewSubscriber, now: i64) -> Result<()> {
    insert_subscriber_with(db, INSERT_SUBSCRIBER, s, now).map(drop)
}

/// Inserts the subscriber unless its IMSI is taken (then nothing is written: `false`).
fn insert_subscriber_unless_taken(db: &mut dyn Db, s: &NewSubscriber, now: i64) -> Result<bool> {
    Ok(insert_subscriber_with(db, INSERT_SUBSCRIBER_UNLESS_TAKEN, s, now)? == 1)
}

fn insert_subscriber_with(db: &mut dyn Db, sql: &str, s: &NewSubscriber, now: i64) -> Result<u64> {
    db.execute(
        sql,
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
    )
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

/// A drawn number (`Db::next_number`), refused past `capacity`.
fn within_capacity(drawn: i64, capacity: u64, what: &'static str) -> Result<u64> {
    let sequence = drawn.max(0) as u64;
    if sequence > capacity {
        return Err(Rule::IdentifiersExhausted(what).into());
    }
    Ok(sequence)
}
