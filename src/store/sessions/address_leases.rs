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
/// Both engines run this as one read-then-insert: SQLite's single writer serialises it; on
/// PostgreSQL, SERIALIZABLE aborts one of two concurrent creates in the same scope (they read the
/// same highest address) and `write_db` runs it again, so no address is handed out twice.
pub(super) fn lease_address(
    db: &mut dyn Db,
    placement: &Placement,
    imsi: &Imsi,
    now: i64,
    policy: &SessionPolicy,
) -> Result<Ipv4Addr> {
    if let Some(ip) = keep_current_lease(db, placement, imsi, now)? {
        return Ok(Ipv4Addr::from(ip));
    }
    if let Some(ip) = reuse_released(db, placement, imsi, now - policy.address_quarantine_ms)? {
        return Ok(Ipv4Addr::from(ip));
    }
    let Some(ip) = never_used(db, placement)? else {
        return Err(match &placement.vpg_id {
            Some(vpg_id) => {
                Rule::VpgSubnetExhausted(placement.pool.to_string(), vpg_id.to_string())
            }
            None => Rule::PoolExhausted(placement.pool.to_string(), placement.rp_id.to_string()),
        }
        .into());
    };
    db.execute(
        "INSERT INTO address_leases(scope, ip, imsi, released_at) VALUES ($1, $2, $3, NULL)",
        &[&placement.scope, &ip, imsi],
    )?;
    Ok(Ipv4Addr::from(ip))
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
/// `released_by` (the end of its quarantine).
fn reuse_released(
    db: &mut dyn Db,
    placement: &Placement,
    imsi: &Imsi,
    released_by: i64,
) -> Result<Option<u32>> {
    let scope = placement.scope.as_str();
    let (low, high) = placement.range;
    let Some(row) = db.query_opt(
        "SELECT ip FROM address_leases
         WHERE scope = $1 AND imsi IS NULL AND released_at <= $2 AND ip BETWEEN $3 AND $4
         ORDER BY released_at LIMIT 1",
        &[&scope, &released_by, &low, &high],
    )?
    else {
        return Ok(None);
    };
    let reusable = address(&row, 0)?;
    if let Some(ip) = reusable {
        db.execute(
            "UPDATE address_leases SET imsi = $3, released_at = NULL WHERE scope = $1 AND ip = $2",
            &[&scope, &ip, imsi],
        )?;
    }
    Ok(reusable)
}

/// An address of the range that has never been leased in the scope, if any is left.
fn never_used(db: &mut dyn Db, placement: &Placement) -> Result<Option<u32>> {
    let scope = placement.scope.as_str();
    let (low, high) = placement.range;
    let row = db.query_one(
        "SELECT MAX(ip) FROM address_leases WHERE scope = $1 AND ip BETWEEN $2 AND $3",
        &[&scope, &low, &high],
    )?;
    let highest = address(&row, 0)?;
    let next = match highest.map_or(Some(low), |ip| ip.checked_add(1)) {
        Some(ip) if ip <= high => Some(ip),
        _ if range_fully_leased(db, scope, low, high)? => None,
        _ => lowest_free(db, scope, low, high)?,
    };
    Ok(next.filter(|&ip| ip <= high))
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
