//! Imported IoT SIMs and the virtual subscribers added to them as secondary subscriptions.
//! Portable SQL over `Db` (issue 14): the same functions on both engines.

use super::db::Db;
use super::sessions::{self, ActiveSession, PeerChange, SessionPolicy};
use super::sims::{self, insert_subscriber, next_virtual_imsi, NewSubscriber, SimRecord};
use super::{now_ms, Entity, Result, Rule, StoreError};
use crate::config::Coverage;
use crate::ids::{Imsi, OperatorId, SimId};
use crate::wgkey;

/// Primary subscriptions that accept a virtual subscriber (docs/ARCHITECTURE.md, "Sessions").
pub const ARC_CAPABLE_PRIMARY: &[&str] = &[
    "plan01s",
    "plan01s-LDV",
    "plan-D",
    "plan-K",
    "plan-KM1",
    "plan-DU",
];

/// One IoT SIM to register, as in the import CSV (`iccid,imsi,msisdn,subscription`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IotSimImport {
    pub iccid: String,
    pub imsi: Imsi,
    #[serde(default)]
    pub msisdn: Option<String>,
    pub subscription: String,
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

impl IotSimImport {
    /// An IoT SIM's id is its ICCID.
    pub fn sim_id(&self) -> SimId {
        SimId::new(self.iccid.clone())
    }

    /// Shape checks that need no database.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !all_digits(&self.iccid) || !(18..=22).contains(&self.iccid.len()) {
            return Err(format!("iccid `{}` must be 18 to 22 digits", self.iccid));
        }
        let imsi = self.imsi.as_str();
        if !all_digits(imsi) || !(14..=15).contains(&imsi.len()) {
            return Err(format!("imsi `{}` must be 14 or 15 digits", self.imsi));
        }
        if imsi.starts_with(crate::ids::VIRTUAL_IMSI_PREFIX) {
            return Err(format!(
                "imsi `{}` is in the virtual range 99999…, which arcd issues itself",
                self.imsi
            ));
        }
        if let Some(msisdn) = self.msisdn.as_deref().filter(|m| !m.is_empty()) {
            if !all_digits(msisdn) || msisdn.len() > 15 {
                return Err(format!("msisdn `{msisdn}` must be up to 15 digits"));
            }
        }
        let plan = &self.subscription;
        if plan.is_empty()
            || plan.len() > 32
            || !plan.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("subscription `{plan}` is not a subscription name"));
        }
        if plan == "planArc01" {
            return Err("subscription planArc01 is virtual; create it with POST /v1/sims".into());
        }
        Ok(())
    }
}

/// Registers all SIMs or none: the first bad item aborts the transaction with its index.
pub fn import_iot_sims(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    items: &[IotSimImport],
) -> Result<Vec<SimRecord>> {
    let now = now_ms();
    for (index, item) in items.iter().enumerate() {
        import_one(db, operator_id, coverage, item, now).map_err(|failure| match failure {
            ImportFailure::Item(message) => Rule::ImportItem { index, message }.into(),
            ImportFailure::Store(e) => e,
        })?;
    }
    items
        .iter()
        .map(|item| sims::get(db, operator_id, &item.sim_id()))
        .collect()
}

/// Why one import item failed: its own fault (reported with its index) or the database's.
enum ImportFailure {
    Item(String),
    Store(StoreError),
}

impl<E: Into<StoreError>> From<E> for ImportFailure {
    fn from(e: E) -> Self {
        ImportFailure::Store(e.into())
    }
}

fn import_one(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    coverage: Coverage,
    item: &IotSimImport,
    now: i64,
) -> std::result::Result<(), ImportFailure> {
    item.check().map_err(ImportFailure::Item)?;
    let inserted = db.execute(
        "INSERT INTO sims(sim_id, operator_id, sim_type, module_type, status, coverage, group_id,
                          termination_enabled, created_at, last_modified_at)
         VALUES ($1, $2, 'uicc', NULL, 'active', $3, NULL, FALSE, $4, $4)
         ON CONFLICT DO NOTHING",
        &[&item.iccid, operator_id, &coverage.as_str(), &now],
    )?;
    if inserted == 0 {
        let message = format!("iccid {} is already registered", item.iccid);
        return Err(ImportFailure::Item(message));
    }
    let imsi_taken = db
        .query_opt("SELECT 1 FROM subscribers WHERE imsi = $1", &[&item.imsi])?
        .is_some();
    if imsi_taken {
        let message = format!("imsi {} is already registered", item.imsi);
        return Err(ImportFailure::Item(message));
    }
    let subscriber = NewSubscriber {
        imsi: &item.imsi,
        sim_id: &item.sim_id(),
        iccid: &item.iccid,
        msisdn: item.msisdn.as_deref().filter(|m| !m.is_empty()),
        subscription: &item.subscription,
        is_primary: true,
        is_virtual: false,
        arc_public_key: None,
    };
    Ok(insert_subscriber(db, &subscriber, now)?)
}

pub struct AddedSubscriber {
    pub sim: SimRecord,
    pub iccid: String,
    pub imsi: Imsi,
    pub private_key: String,
    pub session: ActiveSession,
}

/// `addSubscription` with planArc01: a virtual subscriber whose traffic counts as the IoT SIM's.
pub fn add_virtual_subscriber(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    iccid: &str,
    policy: &SessionPolicy,
) -> Result<AddedSubscriber> {
    check_can_add_virtual(&sims::get(db, operator_id, sim_id)?, iccid)?;
    let imsi = next_virtual_imsi(db)?;
    let pair = wgkey::generate();
    insert_subscriber(
        db,
        &NewSubscriber {
            imsi: &imsi,
            sim_id,
            iccid,
            msisdn: None,
            subscription: "planArc01",
            is_primary: false,
            is_virtual: true,
            arc_public_key: Some(&pair.public_key),
        },
        now_ms(),
    )?;
    sims::touch(db, sim_id)?;
    let session = sessions::open_first_session(db, operator_id, sim_id, policy)?;
    Ok(AddedSubscriber {
        sim: sims::get(db, operator_id, sim_id)?,
        iccid: iccid.to_string(),
        imsi,
        private_key: pair.private_key.clone(),
        session,
    })
}

/// Whether `sim`, named by its profile `iccid`, may get a virtual subscriber: a live IoT SIM
/// without one, whose primary subscription can carry Arc.
fn check_can_add_virtual(sim: &SimRecord, iccid: &str) -> Result<()> {
    let primary = sim
        .subscribers
        .iter()
        .find(|s| s.is_primary)
        .ok_or_else(|| {
            StoreError::Corrupt(format!("SIM {} has no primary subscriber", sim.sim_id))
        })?;
    if primary.iccid != iccid {
        return Err(StoreError::NotFound(Entity::Profile));
    }
    if sim.status == "terminated" {
        return Err(Rule::SimTerminated.into());
    }
    if sim.sim_type == "virtual" {
        return Err(Rule::NotAnIotSim.into());
    }
    if let Some(existing) = sim.arc_subscriber() {
        return Err(Rule::AlreadyHasVirtualSubscriber(existing.imsi.to_string()).into());
    }
    if !ARC_CAPABLE_PRIMARY.contains(&primary.subscription.as_str()) {
        return Err(Rule::UnsupportedPrimarySubscription(primary.subscription.clone()).into());
    }
    Ok(())
}

/// `terminateSubscriptionContainer`: ends a secondary virtual subscriber; the IoT SIM stays.
pub fn terminate_virtual_subscriber(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    iccid: &str,
    imsi: &Imsi,
) -> Result<Option<PeerChange>> {
    let sim = sims::get(db, operator_id, sim_id)?;
    let sub = sim
        .subscribers
        .iter()
        .find(|s| &s.imsi == imsi && s.iccid == iccid)
        .ok_or(StoreError::NotFound(Entity::Subscriber))?;
    if sub.is_primary || !sub.is_virtual {
        return Err(Rule::NotSecondaryVirtual.into());
    }
    if sub.status == "terminated" {
        return Err(StoreError::NotFound(Entity::Subscriber));
    }
    let arc = sessions::arc_subscriber(db, operator_id, sim_id)?
        .ok_or(StoreError::NotFound(Entity::Subscriber))?;
    let change = sessions::close_session(db, &arc, true)?;
    db.execute(
        "UPDATE subscribers SET status = 'terminated', last_modified_at = $2 WHERE imsi = $1",
        &[imsi, &now_ms()],
    )?;
    sims::touch(db, sim_id)?;
    Ok(change)
}
