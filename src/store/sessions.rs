//! Arc sessions, their events, client address leases, and the peer changes the data plane applies.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::vpgs::VpgRecord;
use super::{now_ms, rendezvous, vpgs, Entity, Result, Rule, StoreError};
use crate::config::Coverage;
use crate::ids::new_session_id as ids_next_session;

/// What the data plane needs to serve one device: everything is keyed by the virtual subscriber's
/// IMSI, while services attribute traffic to `primary_imsi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSession {
    pub imsi: String,
    pub primary_imsi: String,
    pub sim_id: String,
    pub operator_id: String,
    /// Changes whenever the session is (re-)created: the data plane then drops the peer's
    /// WireGuard state so the device must handshake again.
    pub session_id: String,
    pub rp_id: String,
    pub client_public_key: String,
    pub client_ip: Ipv4Addr,
    pub group_id: Option<String>,
    pub vpg_id: Option<String>,
}

/// Emitted only after the transaction that caused it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Install this peer, or replace the one with the same IMSI. A different `session_id` than the
    /// installed one means a new session; the same one means only attributes (group) changed.
    Upsert(ActiveSession),
    /// The subscriber has no session any more: forget its peer.
    Remove { imsi: String, rp_id: String },
}

/// Where new sessions go and how long a released address rests before reuse.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub jp_rendezvous_point: String,
    pub global_rendezvous_point: String,
    pub address_quarantine_ms: i64,
    /// Ids of the rendezvous points this process serves. A VPG placed in a region outside this
    /// list cannot host its global-coverage sessions there: they fall back to the global RP.
    pub rendezvous_points: Vec<String>,
}

impl SessionPolicy {
    pub fn rendezvous_point_for(&self, coverage: Coverage) -> &str {
        match coverage {
            Coverage::Jp => &self.jp_rendezvous_point,
            Coverage::G => &self.global_rendezvous_point,
        }
    }
}

/// The rendezvous point of a new session, as docs/ARCHITECTURE.md ("Sessions") states it: not in
/// a VPG, Japan coverage uses the Japan RP (Tokyo) and global coverage the global RP (Frankfurt);
/// in a VPG, Japan coverage still uses Tokyo while global coverage uses the VPG's placement
/// region. The VPG's region is returned as is, even when no such RP is configured: the caller
/// decides what to do then ([`open_session`] falls back to the coverage's RP with a warning).
pub fn select_rendezvous_point<'a>(
    coverage: Coverage,
    vpg: Option<&'a VpgRecord>,
    policy: &'a SessionPolicy,
) -> &'a str {
    match (coverage, vpg) {
        (Coverage::G, Some(vpg)) => &vpg.region,
        (coverage, _) => policy.rendezvous_point_for(coverage),
    }
}

/// The subscriber a session belongs to, as the session functions need it.
pub(crate) struct ArcSubscriber {
    pub sim_id: String,
    pub operator_id: String,
    pub imsi: String,
    pub primary_imsi: String,
    pub subscription: String,
    pub public_key: Option<String>,
    pub coverage: Coverage,
    pub group_id: Option<String>,
}

/// The active (not terminated) virtual subscriber of a SIM of `operator_id`.
pub(crate) fn arc_subscriber(
    conn: &Connection,
    operator_id: &str,
    sim_id: &str,
) -> Result<Option<ArcSubscriber>> {
    Ok(conn
        .prepare_cached(
            "SELECT s.sim_id, s.operator_id, v.imsi, v.subscription, v.arc_public_key, s.coverage, s.group_id,
                    (SELECT p.imsi FROM subscribers p WHERE p.sim_id = s.sim_id AND p.is_primary = 1)
             FROM sims s JOIN subscribers v ON v.sim_id = s.sim_id
             WHERE s.sim_id = ?1 AND s.operator_id = ?2 AND v.is_virtual = 1 AND v.status = 'active'",
        )?
        .query_row(params![sim_id, operator_id], |row| {
            Ok(ArcSubscriber {
                sim_id: row.get(0)?,
                operator_id: row.get(1)?,
                imsi: row.get(2)?,
                subscription: row.get(3)?,
                public_key: row.get(4)?,
                coverage: coverage_from_column(&row.get::<_, String>(5)?),
                group_id: row.get(6)?,
                primary_imsi: row.get(7)?,
            })
        })
        .optional()?)
}

pub(crate) fn coverage_from_column(text: &str) -> Coverage {
    if text == "g" {
        Coverage::G
    } else {
        Coverage::Jp
    }
}

/// The VPG the subscriber's group puts it in (`SoracomAir` → `vpgId`), if any. A JSON `null`
/// value means no VPG. A value that names no running VPG of the subscriber's operator (missing,
/// another operator's, terminated, or not a string) is refused: silently placing the device
/// outside the VPG its operator asked for would break the isolation and addressing they expect.
fn vpg_of_group(tx: &Transaction, sub: &ArcSubscriber) -> Result<Option<VpgRecord>> {
    let Some(group_id) = sub.group_id.as_deref() else {
        return Ok(None);
    };
    let value: Option<String> = tx
        .prepare_cached(
            "SELECT value FROM group_configuration
             WHERE group_id = ?1 AND namespace = 'SoracomAir' AND key = 'vpgId'",
        )?
        .query_row([group_id], |row| row.get(0))
        .optional()?;
    let Some(value) = value else {
        return Ok(None);
    };
    let unusable = |vpg_id: String| -> StoreError {
        Rule::GroupVpgUnusable {
            group_id: group_id.to_string(),
            vpg_id,
        }
        .into()
    };
    let vpg_id = match serde_json::from_str::<serde_json::Value>(&value) {
        Ok(serde_json::Value::Null) => return Ok(None),
        Ok(serde_json::Value::String(vpg_id)) => vpg_id,
        _ => return Err(unusable(value)),
    };
    match vpgs::get(tx, &sub.operator_id, &vpg_id) {
        Ok(vpg) => Ok(Some(vpg)),
        Err(StoreError::NotFound(Entity::Vpg)) => Err(unusable(vpg_id)),
        Err(other) => Err(other),
    }
}

/// The one lease scope of every VPG's addresses. The data plane finds a device by its client
/// address alone and the kernel routes by destination only, so an address must belong to at most
/// one device across all VPGs (of every operator), even though every VPG defaults to the same
/// subnet: each VPG hands out only addresses of its own subnet, but from this shared scope.
pub(crate) const VPG_LEASE_SCOPE: &str = "vpg";

/// Where a new session goes and which addresses it may have.
struct Placement {
    rp: rendezvous::RendezvousPoint,
    vpg_id: Option<String>,
    /// Lease scope: `rp:<id>` outside a VPG, [`VPG_LEASE_SCOPE`] inside any VPG.
    scope: String,
    pool: ipnet::Ipv4Net,
    /// Lowest and highest address that may be handed out.
    range: (u32, u32),
}

fn place(tx: &Transaction, sub: &ArcSubscriber, policy: &SessionPolicy) -> Result<Placement> {
    let vpg = vpg_of_group(tx, sub)?;
    let mut rp_id = select_rendezvous_point(sub.coverage, vpg.as_ref(), policy);
    if vpg.is_some() && !policy.rendezvous_points.iter().any(|id| id == rp_id) {
        let fallback = policy.rendezvous_point_for(sub.coverage);
        tracing::warn!(
            sim_id = %sub.sim_id,
            vpg_id = vpg.as_ref().map(|v| v.vpg_id.as_str()).unwrap_or(""),
            wanted = %rp_id,
            using = %fallback,
            "the VPG's placement region has no rendezvous point here; the session uses the coverage's rendezvous point"
        );
        rp_id = fallback;
    }
    let rp = rendezvous::get(tx, rp_id)?;
    Ok(match vpg {
        // The VPG's network and broadcast addresses are never handed out; every other one is,
        // unless another VPG's device holds it.
        Some(vpg) => Placement {
            scope: VPG_LEASE_SCOPE.to_string(),
            pool: vpg.device_subnet,
            range: (
                u32::from(vpg.device_subnet.network()) + 1,
                u32::from(vpg.device_subnet.broadcast()) - 1,
            ),
            vpg_id: Some(vpg.vpg_id),
            rp,
        },
        // The network address, the first host (kept for the server side) and the broadcast
        // address are never handed out.
        None => Placement {
            scope: format!("rp:{rp_id}"),
            pool: rp.pool,
            range: (
                u32::from(rp.pool.network()) + 2,
                u32::from(rp.pool.broadcast()) - 1,
            ),
            vpg_id: None,
            rp,
        },
    })
}

/// Creates the subscriber's session, or replaces the existing one with a new session id
/// (`Deleted` then `Created` events). This is the one place sessions are made: the rendezvous
/// point and the VPG (from the SIM's group, `SoracomAir` → `vpgId`) are chosen here, so a group
/// or VPG change applies at the next re-creation. The client address is kept unless it is no
/// longer in the session's rendezvous point pool or VPG subnet.
pub(crate) fn open_session(
    tx: &Transaction,
    sub: &ArcSubscriber,
    policy: &SessionPolicy,
) -> Result<ActiveSession> {
    let public_key = sub.public_key.clone().ok_or(Rule::NoArcCredentials)?;
    let now = now_ms();
    let placement = place(tx, sub, policy)?;
    let existing: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT session_id, vpg_id FROM arc_sessions WHERE imsi = ?1")?
        .query_row([&sub.imsi], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((old_session, old_vpg)) = existing {
        record_event(
            tx,
            sub,
            &old_session,
            "Deleted",
            None,
            old_vpg.as_deref(),
            now,
        )?;
        tx.prepare_cached("DELETE FROM arc_sessions WHERE imsi = ?1")?
            .execute([&sub.imsi])?;
    }
    let client_ip = lease_address(tx, &placement, &sub.imsi, now, policy)?;
    let session_id = ids_next_session();
    let rp_id = placement.rp.rp_id.clone();
    tx.prepare_cached("INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, vpg_id, created_at, last_updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)")?
        .execute(
        params![sub.imsi, sub.sim_id, session_id, rp_id, client_ip.to_string(), placement.vpg_id, now],
    )?;
    record_event(
        tx,
        sub,
        &session_id,
        "Created",
        Some(client_ip),
        placement.vpg_id.as_deref(),
        now,
    )?;
    Ok(ActiveSession {
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
    })
}

/// Ends the subscriber's session if it has one (`Deleted` event). The address lease stays unless
/// `release_address` (termination), which starts its quarantine.
pub(crate) fn close_session(
    tx: &Transaction,
    sub: &ArcSubscriber,
    release_address: bool,
) -> Result<Option<PeerChange>> {
    let now = now_ms();
    let existing: Option<(String, String, Option<String>)> = tx
        .prepare_cached("SELECT session_id, rp_id, vpg_id FROM arc_sessions WHERE imsi = ?1")?
        .query_row([&sub.imsi], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    if release_address {
        tx.prepare_cached(
            "UPDATE address_leases SET imsi = NULL, released_at = ?2 WHERE imsi = ?1",
        )?
        .execute(params![sub.imsi, now])?;
    }
    let Some((session_id, rp_id, vpg_id)) = existing else {
        return Ok(None);
    };
    record_event(
        tx,
        sub,
        &session_id,
        "Deleted",
        None,
        vpg_id.as_deref(),
        now,
    )?;
    tx.prepare_cached("DELETE FROM arc_sessions WHERE imsi = ?1")?
        .execute([&sub.imsi])?;
    Ok(Some(PeerChange::Remove {
        imsi: sub.imsi.clone(),
        rp_id,
    }))
}

fn record_event(
    tx: &Transaction,
    sub: &ArcSubscriber,
    session_id: &str,
    event: &str,
    ue_ip: Option<Ipv4Addr>,
    vpg_id: Option<&str>,
    now: i64,
) -> Result<()> {
    // Events are listed under the primary IMSI: a secondary subscriber's traffic is the IoT SIM's.
    tx.prepare_cached(
        "INSERT INTO session_events(sim_id, imsi, operator_id, session_id, event, subscription, ue_ip, vpg_id, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        sub.sim_id,
        sub.primary_imsi,
        sub.operator_id,
        session_id,
        event,
        sub.subscription,
        ue_ip.map(|ip| ip.to_string()),
        vpg_id,
        now
    ])?;
    Ok(())
}

/// Gives `imsi` an address of the placement's scope and range: its current lease if it has one
/// there, else the longest-released address past quarantine, else a never-used one (the one
/// after the highest leased in the range, or, when that is past the range, the lowest free one:
/// in the shared VPG scope other VPGs' leases may sit anywhere in an overlapping range).
fn lease_address(
    tx: &Transaction,
    placement: &Placement,
    imsi: &str,
    now: i64,
    policy: &SessionPolicy,
) -> Result<Ipv4Addr> {
    let scope = placement.scope.as_str();
    let (low, high) = placement.range;
    let current: Option<(String, u32)> = tx
        .prepare_cached("SELECT scope, ip FROM address_leases WHERE imsi = ?1")?
        .query_row([imsi], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((current_scope, ip)) = current {
        if current_scope == scope && (low..=high).contains(&ip) {
            return Ok(Ipv4Addr::from(ip));
        }
        tx.prepare_cached(
            "UPDATE address_leases SET imsi = NULL, released_at = ?2 WHERE imsi = ?1",
        )?
        .execute(params![imsi, now])?;
    }
    let reusable: Option<u32> = tx
        .prepare_cached(
            "SELECT ip FROM address_leases
             WHERE scope = ?1 AND imsi IS NULL AND released_at <= ?2 AND ip BETWEEN ?3 AND ?4
             ORDER BY released_at LIMIT 1",
        )?
        .query_row(
            params![scope, now - policy.address_quarantine_ms, low, high],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(ip) = reusable {
        tx.prepare_cached(
            "UPDATE address_leases SET imsi = ?3, released_at = NULL WHERE scope = ?1 AND ip = ?2",
        )?
        .execute(params![scope, ip, imsi])?;
        return Ok(Ipv4Addr::from(ip));
    }
    let highest: Option<u32> = tx
        .prepare_cached(
            "SELECT MAX(ip) FROM address_leases WHERE scope = ?1 AND ip BETWEEN ?2 AND ?3",
        )?
        .query_row(params![scope, low, high], |row| row.get(0))?;
    let next = match highest.map_or(Some(low), |ip| ip.checked_add(1)) {
        Some(ip) if ip <= high => Some(ip),
        _ if range_fully_leased(tx, scope, low, high)? => None,
        _ => lowest_free(tx, scope, low, high)?,
    };
    match next {
        Some(ip) if ip <= high => {
            tx.prepare_cached("INSERT INTO address_leases(scope, ip, imsi, released_at) VALUES (?1, ?2, ?3, NULL)")?
        .execute(
                params![scope, ip, imsi],
            )?;
            Ok(Ipv4Addr::from(ip))
        }
        _ => Err(match &placement.vpg_id {
            Some(vpg_id) => Rule::VpgSubnetExhausted(placement.pool.to_string(), vpg_id.clone()),
            None => Rule::PoolExhausted(placement.pool.to_string(), placement.rp.rp_id.clone()),
        }
        .into()),
    }
}

/// Whether every address in `low..=high` has a lease row of `scope` (held, quarantined or free:
/// free ones past quarantine were looked for first), so no address is left. This is what a full
/// pool costs on every create that fails: counting the rows of the range reads the primary-key
/// index once, where `lowest_free` probes it again for every row (tens of milliseconds on a full
/// /16, all of it holding the store's writer, see docs/BENCHMARKS.md).
fn range_fully_leased(tx: &Transaction, scope: &str, low: u32, high: u32) -> Result<bool> {
    let rows: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM address_leases WHERE scope = ?1 AND ip BETWEEN ?2 AND ?3",
        )?
        .query_row(params![scope, low, high], |row| row.get(0))?;
    Ok(rows > i64::from(high) - i64::from(low))
}

/// The lowest address in `low..=high` with no lease row of `scope` (held, quarantined or free
/// rows all count: free ones past quarantine are found by the reuse query first).
fn lowest_free(tx: &Transaction, scope: &str, low: u32, high: u32) -> Result<Option<u32>> {
    let candidate: Option<i64> = tx
        .prepare_cached(
            "SELECT CASE
                 WHEN NOT EXISTS (SELECT 1 FROM address_leases WHERE scope = ?1 AND ip = ?2) THEN ?2
                 ELSE (SELECT MIN(a.ip) + 1 FROM address_leases a
                       WHERE a.scope = ?1 AND a.ip BETWEEN ?2 AND ?3
                         AND NOT EXISTS (SELECT 1 FROM address_leases b
                                         WHERE b.scope = ?1 AND b.ip = a.ip + 1))
             END",
        )?
        .query_row(params![scope, low, high], |row| row.get(0))?;
    Ok(candidate
        .filter(|&ip| ip <= i64::from(high))
        .and_then(|ip| u32::try_from(ip).ok()))
}

/// Every session the data plane must serve, in one query (used at start).
/// IMSIs of the operator's sessions at rendezvous point `rp_id` (what an operator may count of
/// a rendezvous point that all operators share).
pub fn operator_imsis_at(conn: &Connection, operator_id: &str, rp_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.imsi FROM sims s JOIN arc_sessions a ON a.sim_id = s.sim_id
         WHERE s.operator_id = ?1 AND a.rp_id = ?2",
    )?;
    let imsis = stmt.query_map(params![operator_id, rp_id], |row| row.get(0))?;
    Ok(imsis.collect::<rusqlite::Result<Vec<String>>>()?)
}

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
        session.client_ip = ip
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("client address of {}", session.imsi)))?;
        Ok(session)
    })
    .collect()
}

/// The active session of a SIM, as the data plane sees it.
pub(crate) fn active_session_of(
    tx: &Connection,
    operator_id: &str,
    sim_id: &str,
) -> Result<Option<ActiveSession>> {
    // Few rows per SIM: reuse the full listing query shape through a filter.
    let Some(sub) = arc_subscriber(tx, operator_id, sim_id)? else {
        return Ok(None);
    };
    let row: Option<(String, String, String, Option<String>)> = tx
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
        client_ip: ip
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("client address of {}", sub.imsi)))?,
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

/// `createArcSession` / `delete_session`: a new session for the SIM's virtual subscriber.
/// With `require_existing`, a SIM without a session is an error (`delete_session` on an offline SIM).
pub fn recreate(
    tx: &Transaction,
    operator_id: &str,
    sim_id: &str,
    policy: &SessionPolicy,
    require_existing: bool,
) -> Result<ActiveSession> {
    super::sims::require_live_sim(tx, operator_id, sim_id)?;
    let Some(sub) = arc_subscriber(tx, operator_id, sim_id)? else {
        return Err(if require_existing {
            Rule::NoSession
        } else {
            Rule::NoArcCredentials
        }
        .into());
    };
    if require_existing {
        let has_session = tx
            .prepare_cached("SELECT 1 FROM arc_sessions WHERE imsi = ?1")?
            .exists([&sub.imsi])?;
        if !has_session {
            return Err(Rule::NoSession.into());
        }
    }
    open_session(tx, &sub, policy)
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
    tx: &Transaction,
    operator_id: &str,
    sim_id: &str,
    client_public_key: Option<String>,
    policy: &SessionPolicy,
) -> Result<RenewedCredentials> {
    super::sims::require_live_sim(tx, operator_id, sim_id)?;
    let mut sub = arc_subscriber(tx, operator_id, sim_id)?.ok_or(Rule::NoArcCredentials)?;
    let (public_key, private_key) = match client_public_key {
        Some(key) => (key, None),
        None => {
            let pair = crate::wgkey::generate();
            (pair.public_key.clone(), Some(pair.private_key.clone()))
        }
    };
    tx.prepare_cached(
        "UPDATE subscribers SET arc_public_key = ?2, last_modified_at = ?3 WHERE imsi = ?1",
    )?
    .execute(params![sub.imsi, public_key, now_ms()])?;
    super::sims::touch(tx, sim_id)?;
    sub.public_key = Some(public_key.clone());
    let session = open_session(tx, &sub, policy)?;
    Ok(RenewedCredentials {
        public_key,
        private_key,
        session,
    })
}

/// Deprecated `DELETE /credentials/arc`: the key is gone and so is the session.
pub fn remove_credentials(
    tx: &Transaction,
    operator_id: &str,
    sim_id: &str,
) -> Result<Option<PeerChange>> {
    super::sims::require_live_sim(tx, operator_id, sim_id)?;
    let sub = arc_subscriber(tx, operator_id, sim_id)?.ok_or(Rule::NoArcCredentials)?;
    tx.prepare_cached(
        "UPDATE subscribers SET arc_public_key = NULL, last_modified_at = ?2 WHERE imsi = ?1",
    )?
    .execute(params![sub.imsi, now_ms()])?;
    super::sims::touch(tx, sim_id)?;
    close_session(tx, &sub, false)
}

#[derive(Debug, Clone)]
pub struct SessionEventRecord {
    pub event_id: i64,
    pub sim_id: String,
    pub imsi: String,
    pub operator_id: String,
    pub session_id: String,
    pub event: String,
    pub subscription: String,
    pub ue_ip: Option<String>,
    pub vpg_id: Option<String>,
    pub time: i64,
}

/// Newest first; `before_event_id` continues a previous page.
pub fn list_events(
    conn: &Connection,
    operator_id: &str,
    sim_id: &str,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    before_event_id: Option<i64>,
    limit: u32,
) -> Result<Vec<SessionEventRecord>> {
    super::sims::require_sim(conn, operator_id, sim_id)?;
    let mut stmt = conn.prepare_cached(
        "SELECT event_id, sim_id, imsi, operator_id, session_id, event, subscription, ue_ip, vpg_id, time
         FROM session_events
         WHERE sim_id = ?1 AND operator_id = ?2 AND time >= ?3 AND time <= ?4 AND event_id < ?5
         ORDER BY event_id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            sim_id,
            operator_id,
            from_ms.unwrap_or(0),
            to_ms.unwrap_or(i64::MAX),
            before_event_id.unwrap_or(i64::MAX),
            limit
        ],
        |row| {
            Ok(SessionEventRecord {
                event_id: row.get(0)?,
                sim_id: row.get(1)?,
                imsi: row.get(2)?,
                operator_id: row.get(3)?,
                session_id: row.get(4)?,
                event: row.get(5)?,
                subscription: row.get(6)?,
                ue_ip: row.get(7)?,
                vpg_id: row.get(8)?,
                time: row.get(9)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod selection_tests {
    use super::*;
    use crate::store::vpgs::VpgRecord;

    fn vpg_in(region: &str) -> VpgRecord {
        VpgRecord {
            vpg_id: "00000000-0000-4000-8000-000000000000".into(),
            operator_id: "OP0000000001".into(),
            vpg_type: 14,
            region: region.into(),
            device_subnet: "10.128.0.0/9".parse().expect("net"),
            use_internet_gateway: true,
            device_to_device: false,
            status: "running".into(),
            tags: Default::default(),
            created_at: 0,
            last_modified_at: 0,
            online_sessions: 0,
        }
    }

    /// Every row of the placement table (docs/ARCHITECTURE.md, "Sessions"), with the default
    /// policy (Tokyo for jp, Frankfurt for g), and the VPG placed in every region.
    #[test]
    fn seed_selection_table() {
        let policy = SessionPolicy {
            jp_rendezvous_point: "ap-northeast-1".into(),
            global_rendezvous_point: "eu-central-1".into(),
            address_quarantine_ms: 0,
            rendezvous_points: Vec::new(),
        };
        assert_eq!(
            select_rendezvous_point(Coverage::Jp, None, &policy),
            "ap-northeast-1"
        );
        assert_eq!(
            select_rendezvous_point(Coverage::G, None, &policy),
            "eu-central-1"
        );
        for region in crate::config::KNOWN_REGIONS {
            let vpg = vpg_in(region);
            assert_eq!(
                select_rendezvous_point(Coverage::Jp, Some(&vpg), &policy),
                "ap-northeast-1",
                "jp in a VPG in {region}"
            );
            assert_eq!(
                select_rendezvous_point(Coverage::G, Some(&vpg), &policy),
                *region,
                "g in a VPG in {region}"
            );
        }
    }

    /// Outside a VPG (and for jp inside one) the configured RPs of the policy are used.
    #[test]
    fn policy_rps_are_configurable() {
        let policy = SessionPolicy {
            jp_rendezvous_point: "us-west-2".into(),
            global_rendezvous_point: "ap-southeast-2".into(),
            address_quarantine_ms: 0,
            rendezvous_points: Vec::new(),
        };
        let vpg = vpg_in("eu-central-1");
        assert_eq!(
            select_rendezvous_point(Coverage::Jp, None, &policy),
            "us-west-2"
        );
        assert_eq!(
            select_rendezvous_point(Coverage::G, None, &policy),
            "ap-southeast-2"
        );
        assert_eq!(
            select_rendezvous_point(Coverage::Jp, Some(&vpg), &policy),
            "us-west-2"
        );
        assert_eq!(
            select_rendezvous_point(Coverage::G, Some(&vpg), &policy),
            "eu-central-1"
        );
    }
}
