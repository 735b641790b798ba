//! Arc sessions: at most one per virtual subscriber, opened and closed here and nowhere else, and
//! the peer changes the data plane applies after the transaction commits. The jobs around a
//! session live in the submodules: where it goes (`rendezvous_selection`, `placement`), its
//! client address (`address_leases`), its history (`events`), the API calls that replace it
//! (`credentials`) and the reads of the sessions in force (`active`).

mod active;
mod address_leases;
mod credentials;
mod events;
mod placement;
mod rendezvous_selection;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use crate::ids::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};

pub(crate) use active::active_session_of;
pub use active::{active_sessions_by_imsis, list_active_sessions, operator_imsis_at};
pub use credentials::{recreate, remove_credentials, renew_credentials, RenewedCredentials};
pub use events::{list_events, SessionEventRecord};
pub use rendezvous_selection::{select_rendezvous_point, SessionPolicy};

use super::db::{Db, Row};
use super::sims::SessionRecord;
use super::{now_ms, Result, Rule, StoreError};
use crate::config::Coverage;
use crate::ids;

/// What the data plane needs to serve one device: everything is keyed by the virtual subscriber's
/// IMSI, while services attribute traffic to `primary_imsi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSession {
    pub imsi: Imsi,
    pub primary_imsi: Imsi,
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    /// Changes whenever the session is (re-)created: the data plane then drops the peer's
    /// WireGuard state so the device must handshake again.
    pub session_id: String,
    pub rp_id: RendezvousPointId,
    pub client_public_key: String,
    pub client_ip: Ipv4Addr,
    pub group_id: Option<GroupId>,
    pub vpg_id: Option<VpgId>,
}

/// Emitted only after the transaction that caused it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Install this peer, or replace the one with the same IMSI. A different `session_id` than the
    /// installed one means a new session; the same one means only attributes (group) changed.
    Upsert(ActiveSession),
    /// The subscriber has no session any more: forget its peer.
    Remove {
        imsi: Imsi,
        rp_id: RendezvousPointId,
    },
}

/// The subscriber a session belongs to, as the session functions need it.
pub(crate) struct ArcSubscriber {
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    pub imsi: Imsi,
    pub primary_imsi: Imsi,
    pub subscription: String,
    pub public_key: Option<String>,
    pub coverage: Coverage,
    pub group_id: Option<GroupId>,
}

/// The active (not terminated) virtual subscriber of a SIM of `operator_id`.
pub(crate) fn arc_subscriber(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<Option<ArcSubscriber>> {
    db.query_opt(
        "SELECT s.sim_id, s.operator_id, v.imsi, v.subscription, v.arc_public_key, s.coverage, s.group_id,
                (SELECT p.imsi FROM subscribers p WHERE p.sim_id = s.sim_id AND p.is_primary)
         FROM sims s JOIN subscribers v ON v.sim_id = s.sim_id
         WHERE s.sim_id = $1 AND s.operator_id = $2 AND v.is_virtual AND v.status = 'active'",
        &[sim_id, operator_id],
    )?
    .as_ref()
    .map(arc_subscriber_of)
    .transpose()
}

fn arc_subscriber_of(row: &Row) -> Result<ArcSubscriber> {
    Ok(ArcSubscriber {
        sim_id: SimId::new(row.text(0)?),
        operator_id: OperatorId::new(row.text(1)?),
        imsi: Imsi::new(row.text(2)?),
        subscription: row.text(3)?,
        public_key: row.opt_text(4)?,
        coverage: coverage_from_column(&row.text(5)?),
        group_id: row.opt_text(6)?.map(GroupId::new),
        primary_imsi: Imsi::new(row.text(7)?),
    })
}

pub(crate) fn coverage_from_column(text: &str) -> Coverage {
    if text == "g" {
        Coverage::G
    } else {
        Coverage::Jp
    }
}

/// Creates the subscriber's session, or replaces the existing one with a new session id
/// (`Deleted` then `Created` events). This is the one place sessions are made: the rendezvous
/// point and the VPG (from the SIM's group, `SoracomAir` → `vpgId`) are chosen here, so a group
/// or VPG change applies at the next re-creation. The client address is kept unless it is no
/// longer in the session's rendezvous point pool or VPG subnet.
pub(crate) fn open_session(
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    policy: &SessionPolicy,
) -> Result<ActiveSession> {
    Ok(open_session_of(db, sub, policy, Subscriber::MayHaveSession)?.active)
}

/// A session just opened: as the data plane serves it, and as the API shows it with its SIM.
pub(crate) struct OpenedSession {
    pub active: ActiveSession,
    pub record: SessionRecord,
}

/// Whether the subscriber may already hold a session and an address lease.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Subscriber {
    MayHaveSession,
    /// Inserted by this transaction with an IMSI never handed out before (numbers never go
    /// back), so it has neither: createSim skips the two lookups (it is the hot write).
    JustInserted,
}

fn open_session_of(
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    policy: &SessionPolicy,
    subscriber: Subscriber,
) -> Result<OpenedSession> {
    let public_key = sub.public_key.clone().ok_or(Rule::NoArcCredentials)?;
    let now = now_ms();
    let placement = placement::place(db, sub, policy)?;
    let may_hold_lease = subscriber == Subscriber::MayHaveSession;
    if may_hold_lease {
        delete_session(db, sub, now)?;
    }
    let client_ip =
        address_leases::lease_address(db, &placement, &sub.imsi, now, policy, may_hold_lease)?;
    let session_id = ids::new_session_id();
    let rp_id = placement.rp_id.clone();
    db.execute(
        "INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, vpg_id, created_at, last_updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        &[&sub.imsi, &sub.sim_id, &session_id, &rp_id, &client_ip.to_string(), &placement.vpg_id, &now],
    )?;
    let vpg_id = placement.vpg_id.as_ref();
    events::record_event(
        db,
        sub,
        &session_id,
        "Created",
        Some(client_ip),
        vpg_id,
        now,
    )?;
    let record = SessionRecord {
        imsi: sub.imsi.clone(),
        session_id: session_id.clone(),
        rp_id: rp_id.clone(),
        client_ip: client_ip.to_string(),
        vpg_id: placement.vpg_id.clone(),
        created_at: now,
        last_updated_at: now,
        server_public_key: placement.server.public_key,
        server_endpoint: placement.server.endpoint,
        allowed_ips: placement.server.allowed_ips,
    };
    let active = ActiveSession {
        imsi: sub.imsi.clone(),
        primary_imsi: sub.primary_imsi.clone(),
        sim_id: sub.sim_id.clone(),
        operator_id: sub.operator_id.clone(),
        session_id,
        rp_id,
        client_public_key: public_key,
        client_ip,
        group_id: sub.group_id.clone(),
        vpg_id: placement.vpg_id,
    };
    Ok(OpenedSession { active, record })
}

/// The first session of a virtual subscriber this transaction has just inserted.
pub(crate) fn open_first_session(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    policy: &SessionPolicy,
) -> Result<ActiveSession> {
    let sub = arc_subscriber(db, operator_id, sim_id)?
        .ok_or_else(|| StoreError::Corrupt("new subscriber vanished".into()))?;
    Ok(open_session_of(db, &sub, policy, Subscriber::JustInserted)?.active)
}

/// The first session of `sub`, a virtual subscriber this transaction has just inserted and
/// describes in full (createSim: no read of what it wrote).
pub(crate) fn open_inserted_subscriber_session(
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    policy: &SessionPolicy,
) -> Result<OpenedSession> {
    open_session_of(db, sub, policy, Subscriber::JustInserted)
}

/// Ends the subscriber's session if it has one (`Deleted` event). The address lease stays unless
/// `release_address` (termination), which starts its quarantine.
pub(crate) fn close_session(
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    release_address: bool,
) -> Result<Option<PeerChange>> {
    let now = now_ms();
    if release_address {
        address_leases::release_lease(db, &sub.imsi, now)?;
    }
    Ok(
        delete_session(db, sub, now)?.map(|rp_id| PeerChange::Remove {
            imsi: sub.imsi.clone(),
            rp_id,
        }),
    )
}

/// Deletes the subscriber's session row, if there is one, with its `Deleted` event; returns the
/// rendezvous point it was at.
fn delete_session(
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    now: i64,
) -> Result<Option<RendezvousPointId>> {
    let Some(existing) = db.query_opt(
        "SELECT session_id, rp_id, vpg_id FROM arc_sessions WHERE imsi = $1",
        &[&sub.imsi],
    )?
    else {
        return Ok(None);
    };
    let session_id = existing.text(0)?;
    let rp_id = RendezvousPointId::new(existing.text(1)?);
    let vpg_id = existing.opt_text(2)?.map(VpgId::new);
    events::record_event(db, sub, &session_id, "Deleted", None, vpg_id.as_ref(), now)?;
    db.execute("DELETE FROM arc_sessions WHERE imsi = $1", &[&sub.imsi])?;
    Ok(Some(rp_id))
}
