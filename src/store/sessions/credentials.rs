//! The API calls that replace a SIM's session on purpose: re-creation, attaching new Arc
//! credentials (which starts a new session so the old key stops working), and removing them.

use super::rendezvous_selection::SessionPolicy;
use super::{arc_subscriber, close_session, open_session, ActiveSession, PeerChange};
use crate::ids::{Imsi, OperatorId, SimId};
use crate::store::db::Db;
use crate::store::{now_ms, sims, Result, Rule};

/// `createArcSession` / `delete_session`: a new session for the SIM's virtual subscriber.
/// With `require_existing`, a SIM without a session is an error (`delete_session` on an offline SIM).
pub fn recreate(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    policy: &SessionPolicy,
    require_existing: bool,
) -> Result<ActiveSession> {
    require_live_sim(db, operator_id, sim_id)?;
    let Some(sub) = arc_subscriber(db, operator_id, sim_id)? else {
        return Err(if require_existing {
            Rule::NoSession
        } else {
            Rule::NoArcCredentials
        }
        .into());
    };
    if require_existing {
        let session = db.query_opt("SELECT 1 FROM arc_sessions WHERE imsi = $1", &[&sub.imsi])?;
        if session.is_none() {
            return Err(Rule::NoSession.into());
        }
    }
    open_session(db, &sub, policy)
}

/// Result of attaching a client key: the private key only when the server made the pair.
pub struct RenewedCredentials {
    pub public_key: String,
    pub private_key: Option<String>,
    pub session: ActiveSession,
}

/// `PUT /credentials/arc`: attach `client_public_key` (or a server-made pair) and start a new session
/// at once, so the old key stops working.
pub fn renew_credentials(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
    client_public_key: Option<String>,
    policy: &SessionPolicy,
) -> Result<RenewedCredentials> {
    require_live_sim(db, operator_id, sim_id)?;
    let mut sub = arc_subscriber(db, operator_id, sim_id)?.ok_or(Rule::NoArcCredentials)?;
    let (public_key, private_key) = match client_public_key {
        Some(key) => (key, None),
        None => {
            let pair = crate::wgkey::generate();
            (pair.public_key.clone(), Some(pair.private_key.clone()))
        }
    };
    set_public_key(db, &sub.imsi, sim_id, Some(&public_key))?;
    sub.public_key = Some(public_key.clone());
    let session = open_session(db, &sub, policy)?;
    Ok(RenewedCredentials {
        public_key,
        private_key,
        session,
    })
}

/// Deprecated `DELETE /credentials/arc`: the key is gone and so is the session.
pub fn remove_credentials(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    sim_id: &SimId,
) -> Result<Option<PeerChange>> {
    require_live_sim(db, operator_id, sim_id)?;
    let sub = arc_subscriber(db, operator_id, sim_id)?.ok_or(Rule::NoArcCredentials)?;
    set_public_key(db, &sub.imsi, sim_id, None)?;
    close_session(db, &sub, false)
}

fn require_live_sim(db: &mut dyn Db, operator_id: &OperatorId, sim_id: &SimId) -> Result<()> {
    sims::require_live_sim(db, operator_id, sim_id)
}

/// Stores the subscriber's Arc public key (or none) and marks the subscriber and its SIM modified.
fn set_public_key(
    db: &mut dyn Db,
    imsi: &Imsi,
    sim_id: &SimId,
    public_key: Option<&str>,
) -> Result<()> {
    let now = now_ms();
    db.execute(
        "UPDATE subscribers SET arc_public_key = $2, last_modified_at = $3 WHERE imsi = $1",
        &[imsi, &public_key, &now],
    )?;
    sims::touch(db, sim_id)
}
