//! Client address leases: one IPv4 address per virtual subscriber, kept across sessions while it
//! stays in the session's scope and range, released into quarantine before anyone else gets it
//! (docs/ARCHITECTURE.md, "Addresses and quarantine").

use std::net::Ipv4Addr;

use super::placement::Placement;
use super::rendezvous_selection::SessionPolicy;
use crate::ids::Imsi;
use crate::store::db::{Db, Row};
use crate::store::{Result, Rule, StoreError};

/// Gives `imsi` an address of the placement's scope and range: its current lease if it has one
/// there, else the longest-released address past quarantine, else a never-used one (the one
/// after the highest leased in the range, or, when that is past the range, the lowest free one:
/// in the shared VPG scope other VPGs' leases may sit anywhere in an overlapping range).
///
/// Safe under any isolation, so createSim can run READ COMMITTED on PostgreSQL: a released
/// address is taken with `Db::skip_locked` and only while it is still free, a never-used one
/// comes from a ticket of the scope's range (`Db::take_ticket`: no two writers get the same, and
/// none waits for another) and is inserted only if no row holds it, and the primary key
/// (scope, ip) stands behind all of it. SQLite's single writer needs none of this, so there the
/// highest leased address is read as before.
pub(super) fn lease_address(
    db: &mut dyn Db,
    placement: &Placement,
    imsi: &Imsi,
    now: i64,
    policy: &SessionPolicy,
    may_hold_lease: bool,
) -> Result<Ipv4Addr> {
    if may_hold_lease {
        if let Some(ip) = keep_current_lease(db, placement, imsi, now)? {
            return Ok(Ipv4Addr::from(ip));
        }
    }
    if let Some(ip) = reuse_released(db, placement, imsi, now - policy.address_quarantine_ms)? {
        return Ok(Ipv4Addr::from(ip));
    }
    loop {
        let Some(ip) = never_used(db, placement)? else {
            return Err(match &placement.vpg_id {
                Some(vpg_id) => {
                    Rule::VpgSubnetExhausted(placement.pool.to_string(), vpg_id.to_string())
                }
                None => {
                    Rule::PoolExhausted(placement.pool.to_string(), placement.rp_id.to_string())
                }
            }
            .into());
        };
        // No row: the address is ours. A row: another range of the shared VPG scope, or a
        // concurrent writer's gap search, got it first; look again (each turn, someone else
        // took an address, so this ends).
        let inserted = db.execute(
            "INSERT INTO address_leases(scope, ip, imsi, released_at) VALUES ($1, $2, $3, NULL)
             ON CONFLICT (scope, ip) DO NOTHING",
            &[&placement.scope, &ip, imsi],
        )?;
        if inserted == 1 {
            return Ok(Ipv4Addr::from(ip));
        }
    }
}

/// Releases `imsi`'s lease, if it has one: the address starts its quarantine at `now`.
pub(super) fn release_lease(db: &mut dyn Db, imsi: &Imsi, now: i64) -> Result<()> {
    db.execute(
        "UPDATE address_leases SET imsi = NULL, released_at = $2 WHERE imsi = $1",
        &[imsi, &now],
    )?;
    Ok(())
}

/// An address column (an IPv4 address as an integer); out of range means a damaged database.
fn address(row: &Row, index: usize) -> Result<Option<u32>> {
    row.opt_int(index)?
        .map(|ip| {
            u32::try_from(ip)
                .map_err(|_| StoreError::Corrupt(format!("address {ip} in address_leases")))
        })
        .transpose()
}

/// `imsi`'s current address when it lies in the placement's scope and range; a lease elsewhere
/// is released (the session moved to another pool or subnet).
fn keep_current_lease(
    db: &mut dyn Db,
    placement: &Placement,
    imsi: &Imsi,
    now: i64,
) -> Result<Option<u32>> {
    let (low, high) = placement.range;
    let Some(current) = db.query_opt(
        "SELECT scope, ip FROM address_leases WHERE imsi = $1",
        &[imsi],
    )?
    else {
        return Ok(None);
    };
    let current_scope = current.text(0)?;
    let ip = address(&current, 1)?;
    if let Some(ip) = ip.filter(|ip| current_scope == placement.scope && (low..=high).contains(ip))
    {
        return Ok(Some(ip));
    }
    release_lease(db, imsi, now)?;
    Ok(None)
}

/// Takes for `imsi` the address of the range released longest ago, if that was at or before
/// `released_by` (the end of its quarantine). One statement: on PostgreSQL the candidate row is
/// locked (`Db::skip_locked`) so no other writer takes it meanwhile; a candidate changed by a
/// writer that committed first is re-checked and dropped, and then a never-used address is taken
/// instead, which is never wrong.
fn reuse_released(
    db: &mut dyn Db,
    placement: &Placement,
    imsi: &Imsi,
    released_by: i64,
) -> Result<Option<u32>> {
    let (low, high) = placement.range;
    let Some(row) = db.query_opt(
        &format!(
            "UPDATE address_leases SET imsi = $5, released_at = NULL
             WHERE scope = $1 AND imsi IS NULL AND ip = (
                 SELECT ip FROM address_leases
                 WHERE scope = $1 AND imsi IS NULL AND released_at <= $2 AND ip BETWEEN $3 AND $4
                 ORDER BY released_at LIMIT 1{})
             RETURNING ip",
            db.skip_locked()
        ),
        &[&placement.scope, &released_by, &low, &high, imsi],
    )?
    else {
        return Ok(None);
    };
    address(&row, 0)
}

/// An address of the range that has never been leased in the scope, if any is left: the next
/// ticket of the scope's range where the engine has tickets (it starts after the highest
/// address leased when it is made), else the one after the highest leased; past the range, the
/// lowest free one.
fn never_used(db: &mut dyn Db, placement: &Placement) -> Result<Option<u32>> {
    let scope = placement.scope.as_str();
    let (low, high) = placement.range;
    let key = format!("address {scope} {low}-{high}");
    let ticket = db.take_ticket(&key, &mut |db| {
        Ok(highest_leased(db, scope, low, high)?.map_or(i64::from(low), |ip| i64::from(ip) + 1))
    })?;
    let next = match ticket {
        Some(ticket) => u32::try_from(ticket).ok().filter(|ip| *ip >= low),
        None => highest_leased(db, scope, low, high)?.map_or(Some(low), |ip| ip.checked_add(1)),
    };
    let next = match next {
        Some(ip) if ip <= high => Some(ip),
        _ if range_fully_leased(db, scope, low, high)? => None,
        _ => lowest_free(db, scope, low, high)?,
    };
    Ok(next.filter(|&ip| ip <= high))
}

/// The highest address of `low..=high` with a lease row of `scope`.
fn highest_leased(db: &mut dyn Db, scope: &str, low: u32, high: u32) -> Result<Option<u32>> {
    let row = db.query_one(
        "SELECT MAX(ip) FROM address_leases WHERE scope = $1 AND ip BETWEEN $2 AND $3",
        &[&scope, &low, &high],
    )?;
    address(&row, 0)
}

/// Whether every address in `low..=high` has a lease row of `scope` (held, quarantined or free:
/// free ones past quarantine were looked for first), so no address is left. This is what a full
/// pool costs on every create that fails: counting the rows of the range reads the primary-key
/// index once, where `lowest_free` probes it again for every row (tens of milliseconds on a full
/// /16, all of it holding the store's writer, see docs/BENCHMARKS.md).
fn range_fully_leased(db: &mut dyn Db, scope: &str, low: u32, high: u32) -> Result<bool> {
    let rows = db
        .query_one(
            "SELECT COUNT(*) FROM address_leases WHERE scope = $1 AND ip BETWEEN $2 AND $3",
            &[&scope, &low, &high],
        )?
        .int(0)?;
    Ok(rows > i64::from(high) - i64::from(low))
}

/// The lowest address in `low..=high` with no lease row of `scope` (held, quarantined or free
/// rows all count: free ones past quarantine are found by the reuse query first).
fn lowest_free(db: &mut dyn Db, scope: &str, low: u32, high: u32) -> Result<Option<u32>> {
    let candidate = db
        .query_one(
            "SELECT CASE
                 WHEN NOT EXISTS (SELECT 1 FROM address_leases WHERE scope = $1 AND ip = $2) THEN $2
                 ELSE (SELECT MIN(a.ip) + 1 FROM address_leases a
                       WHERE a.scope = $1 AND a.ip BETWEEN $2 AND $3
                         AND NOT EXISTS (SELECT 1 FROM address_leases b
                                         WHERE b.scope = $1 AND b.ip = a.ip + 1))
             END",
            &[&scope, &low, &high],
        )?
        .opt_int(0)?;
    Ok(candidate
        .filter(|&ip| ip <= i64::from(high))
        .and_then(|ip| u32::try_from(ip).ok()))
}
