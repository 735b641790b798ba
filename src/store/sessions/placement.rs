//! Where a new session goes: the VPG its group names (if any), the rendezvous point, and the
//! address scope and range its client address comes from.

use super::rendezvous_selection::{select_rendezvous_point, SessionPolicy};
use super::ArcSubscriber;
use crate::ids::{RendezvousPointId, VpgId};
use crate::store::db::Db;
use crate::store::vpgs::{self, VpgRecord};
use crate::store::{rendezvous, Entity, Result, Rule, StoreError};

/// The one lease scope of every VPG's addresses. The data plane finds a device by its client
/// address alone and the kernel routes by destination only, so an address must belong to at most
/// one device across all VPGs (of every operator), even though every VPG defaults to the same
/// subnet: each VPG hands out only addresses of its own subnet, but from this shared scope.
const VPG_LEASE_SCOPE: &str = "vpg";

/// Where a new session goes and which addresses it may have.
pub(super) struct Placement {
    pub rp_id: RendezvousPointId,
    pub vpg_id: Option<VpgId>,
    /// Lease scope: `rp:<id>` outside a VPG, [`VPG_LEASE_SCOPE`] inside any VPG.
    pub scope: String,
    pub pool: ipnet::Ipv4Net,
    /// Lowest and highest address that may be handed out.
    pub range: (u32, u32),
    /// The rendezvous point's side of the session, as the API shows it with the session.
    pub server: ServerSide,
}

/// What a device is told of its rendezvous point (read with the pool: one statement).
pub(super) struct ServerSide {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
}

/// The VPG the subscriber's group puts it in (`SoracomAir` → `vpgId`), if any. A JSON `null`
/// value means no VPG. A value that names no running VPG of the subscriber's operator (missing,
/// another operator's, terminated, or not a string) is refused: silently placing the device
/// outside the VPG its operator asked for would break the isolation and addressing they expect.
fn vpg_of_group(db: &mut dyn Db, sub: &ArcSubscriber) -> Result<Option<VpgRecord>> {
    let Some(group_id) = sub.group_id.as_ref() else {
        return Ok(None);
    };
    let Some(row) = db.query_opt(
        "SELECT value FROM group_configuration
         WHERE group_id = $1 AND namespace = 'SoracomAir' AND key = 'vpgId'",
        &[group_id],
    )?
    else {
        return Ok(None);
    };
    let value = row.text(0)?;
    let unusable = |vpg_id: String| -> StoreError {
        Rule::GroupVpgUnusable {
            group_id: group_id.to_string(),
            vpg_id,
        }
        .into()
    };
    let vpg_id = match serde_json::from_str::<serde_json::Value>(&value) {
        Ok(serde_json::Value::Null) => return Ok(None),
        Ok(serde_json::Value::String(vpg_id)) => VpgId::new(vpg_id),
        _ => return Err(unusable(value)),
    };
    match vpgs::get(db, &sub.operator_id, &vpg_id) {
        Ok(vpg) => Ok(Some(vpg)),
        Err(StoreError::NotFound(Entity::Vpg)) => Err(unusable(vpg_id.into_string())),

        Err(other) => Err(other),
    }
}

/// The rendezvous point of the session: the selection table's choice, unless that is a VPG's
/// region this process does not serve (then the coverage's RP, with a warning).
fn rendezvous_point_id<'a>(
    sub: &ArcSubscriber,
    vpg: Option<&'a VpgRecord>,
    policy: &'a SessionPolicy,
) -> &'a RendezvousPointId {
    let wanted = select_rendezvous_point(sub.coverage, vpg, policy);
    let Some(vpg) = vpg else {
        return wanted;
    };
    if policy.serves(wanted) {
        return wanted;
    }
    let fallback = policy.rendezvous_point_for(sub.coverage);
    tracing::warn!(
        sim_id = %sub.sim_id,
        vpg_id = vpg.vpg_id.as_str(),
        wanted = %wanted,
        using = %fallback,
        "the VPG's placement region has no rendezvous point here; the session uses the coverage's rendezvous point"
    );
    fallback
}

/// The client address pool and the public side of rendezvous point `rp_id`, which must exist:
/// all a placement needs of the RP (read here rather than through `rendezvous::get`, which also
/// reads its private key).
fn rendezvous_point(
    db: &mut dyn Db,
    rp_id: &RendezvousPointId,
) -> Result<(ipnet::Ipv4Net, ServerSide)> {
    let row = db
        .query_opt(
            "SELECT pool, public_key, endpoint, allowed_ips FROM rendezvous_points WHERE rp_id = $1",
            &[rp_id],
        )?
        .ok_or_else(|| Rule::UnknownRendezvousPoint(rp_id.to_string()))?;
    let pool = row
        .text(0)?
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("pool of {rp_id}")))?;
    let server = ServerSide {
        public_key: row.text(1)?,
        endpoint: row.text(2)?,
        allowed_ips: rendezvous::parse_allowed_ips(&row.text(3)?)?,
    };
    Ok((pool, server))
}

pub(super) fn place(
    db: &mut dyn Db,
    sub: &ArcSubscriber,
    policy: &SessionPolicy,
) -> Result<Placement> {
    let vpg = vpg_of_group(db, sub)?;
    let rp_id = rendezvous_point_id(sub, vpg.as_ref(), policy).clone();
    let (rp_pool, server) = rendezvous_point(db, &rp_id)?;
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
            rp_id,
            server,
        },
        // The network address, the first host (kept for the server side) and the broadcast
        // address are never handed out.
        None => Placement {
            scope: format!("rp:{rp_id}"),
            pool: rp_pool,
            range: (
                u32::from(rp_pool.network()) + 2,
                u32::from(rp_pool.broadcast()) - 1,
            ),
            vpg_id: None,
            rp_id,
            server,
        },
    })
}
