//! Harvest Data entries: what devices post to the Harvest service, read back through the
//! official data API. Stored under the primary IMSI (resource type `Subscriber`) and the SIM ID.

use std::collections::BTreeSet;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Entity, Result, StoreError};
use crate::ids::{Imsi, OperatorId, SimId};

/// The only resource type devices write through the tunnel.
pub const SUBSCRIBER: &str = "Subscriber";

/// One entry to store, as the Harvest service received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub operator_id: OperatorId,
    /// The primary IMSI of the device that sent it.
    pub imsi: Imsi,
    pub sim_id: SimId,
    /// UNIX milliseconds: server time, or the device's `X-Soracom-Timestamp`.
    pub time: i64,
    pub content_type: String,
    pub content: String,
}

/// Stores `entries` in the caller's transaction (the Harvest service commits many posts at once).
pub fn insert(tx: &Transaction, entries: &[NewEntry]) -> Result<()> {
    let mut insert_entry = tx.prepare_cached(
        "INSERT INTO harvest_entries(operator_id, resource_type, resource_id, sim_id, time, content_type, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut touch_resource = tx.prepare_cached(
        "INSERT INTO harvest_resources(operator_id, resource_type, resource_id, last_modified_time)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(operator_id, resource_type, resource_id)
         DO UPDATE SET last_modified_time = max(last_modified_time, excluded.last_modified_time)",
    )?;
    for entry in entries {
        insert_entry.execute(params![
            entry.operator_id,
            SUBSCRIBER,
            entry.imsi,
            entry.sim_id,
            entry.time,
            entry.content_type,
            entry.content
        ])?;
        touch_resource.execute(params![
            entry.operator_id,
            SUBSCRIBER,
            entry.imsi,
            entry.time
        ])?;
    }
    Ok(())
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub entry_id: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub sim_id: SimId,
    pub time: i64,
    pub content_type: String,
    pub content: String,
    pub category: Option<String>,
}

/// Whose entries a query reads (always within one operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The entries stored under one resource (uses index `harvest_by_resource`).
    Resource {
        resource_type: String,
        resource_id: String,
    },
    /// Every entry sent by one SIM, whatever resource it is stored under (`harvest_by_sim`).
    Sim(SimId),
}

impl Scope {
    /// The `WHERE` terms of the scope: `?1` is the operator, `?2` and `?3` the scope's keys (the
    /// SIM scope leaves `?3` unused), so every statement numbers its own parameters from `?4`.
    fn filter(&self) -> &'static str {
        match self {
            Scope::Resource { .. } => {
                "operator_id = ?1 AND resource_type = ?2 AND resource_id = ?3"
            }
            Scope::Sim(_) => "operator_id = ?1 AND sim_id = ?2",
        }
    }

    fn keys(&self) -> (&str, &str) {
        match self {
            Scope::Resource {
                resource_type,
                resource_id,
            } => (resource_type, resource_id),
            Scope::Sim(sim_id) => (sim_id.as_str(), ""),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    Asc,
    /// Newest first, the API's default.
    #[default]
    Desc,
}

/// Where the next page of entries starts: after the entry `(time, entry_id)` in the listing's
/// order, or after every entry at `time` when `entry_id` is `None`.
///
/// Key format. The official API documents the key of subscriber data as `${time}_${IMSI}`; a
/// millisecond is not unique here (a device may post several entries in one), so a page ending
/// inside a millisecond needs the entry too. arcd emits `{time}_{resourceId}_{entryId}` (see
/// `next_key`), which is exact: no entry is skipped or repeated across pages. It also accepts the
/// documented `{time}_{resourceId}`, meaning "after every entry at that time" (in the listing's
/// order), which is what a client building the key from the last entry it saw wants when the page
/// ended at a millisecond boundary. The resource ID part is not interpreted (the listing's scope
/// comes from the path); it must be non-empty and free of `_`, which holds for every ID stored
/// here (IMSIs and SIM IDs are digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time: i64,
    pub entry_id: Option<i64>,
}

impl Cursor {
    /// `None` for a key that is neither `{time}_{id}` nor `{time}_{id}_{entryId}`.
    pub fn parse(key: &str) -> Option<Cursor> {
        let mut parts = key.split('_');
        let time = parts.next()?.parse::<i64>().ok()?;
        let id = parts.next()?;
        if id.is_empty() {
            return None;
        }
        let entry_id = match parts.next() {
            None => None,
            Some(raw) => Some(raw.parse::<i64>().ok().filter(|e| *e > 0)?),
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Cursor { time, entry_id })
    }
}

/// The `x-soracom-next-key` of a page that ends with `entry` (parsed back by `Cursor::parse`).
pub fn next_key(entry: &Entry) -> String {
    format!("{}_{}_{}", entry.time, entry.resource_id, entry.entry_id)
}

/// A listing: `from`..=`to` (UNIX ms, both inclusive), in `order`, at most `limit` rows, after
/// `after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryQuery {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub order: Order,
    pub limit: u32,
    pub after: Option<Cursor>,
}

const ENTRY_COLUMNS: &str =
    "entry_id, resource_type, resource_id, sim_id, time, content_type, content, category";

fn entry_from_row(row: &rusqlite::Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        entry_id: row.get(0)?,
        resource_type: row.get(1)?,
        resource_id: row.get(2)?,
        sim_id: row.get(3)?,
        time: row.get(4)?,
        content_type: row.get(5)?,
        content: row.get(6)?,
        category: row.get(7)?,
    })
}

/// The SQL of a listing: the scope's equality terms, then a time range and a `(time, entry_id)`
/// row-value bound, walking the scope's index in its own order (no temporary sort).
fn list_sql(scope: &Scope, order: Order) -> String {
    let (cmp, dir) = match order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    format!(
        "SELECT {ENTRY_COLUMNS} FROM harvest_entries
         WHERE {} AND time >= ?4 AND time <= ?5 AND (time, entry_id) {cmp} (?6, ?7)
         ORDER BY time {dir}, entry_id {dir} LIMIT ?8",
        scope.filter()
    )
}

/// `(lowest time, highest time, cursor time, cursor entry)` of a listing. The cursor also narrows
/// the time range so the index range itself starts at the cursor.
fn bounds(query: &EntryQuery) -> (i64, i64, i64, i64) {
    let mut low = query.from.unwrap_or(i64::MIN);
    let mut high = query.to.unwrap_or(i64::MAX);
    // Entry IDs are positive rowids, so the extreme values below never equal a real entry's.
    let cursor = match (query.order, query.after) {
        (Order::Desc, None) => (i64::MAX, i64::MAX),
        (Order::Asc, None) => (i64::MIN, i64::MIN),
        (
            _,
            Some(Cursor {
                time,
                entry_id: Some(e),
            }),
        ) => (time, e),
        (
            Order::Desc,
            Some(Cursor {
                time,
                entry_id: None,
            }),
        ) => (time, i64::MIN),
        (
            Order::Asc,
            Some(Cursor {
                time,
                entry_id: None,
            }),
        ) => (time, i64::MAX),
    };
    match query.order {
        Order::Desc => high = high.min(cursor.0),
        Order::Asc => low = low.max(cursor.0),
    }
    (low, high, cursor.0, cursor.1)
}

/// Entries of `scope` for the operator; another operator's entries are never seen.
pub fn list_entries(
    conn: &Connection,
    operator_id: &OperatorId,
    scope: &Scope,
    query: &EntryQuery,
) -> Result<Vec<Entry>> {
    let (key1, key2) = scope.keys();
    let (low, high, cursor_time, cursor_entry) = bounds(query);
    let mut stmt = conn.prepare_cached(&list_sql(scope, query.order))?;
    let rows = stmt.query_map(
        params![
            operator_id,
            key1,
            key2,
            low,
            high,
            cursor_time,
            cursor_entry,
            query.limit
        ],
        entry_from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The first entry (by entry ID) of `scope` at `time`.
pub fn get_entry(
    conn: &Connection,
    operator_id: &OperatorId,
    scope: &Scope,
    time: i64,
) -> Result<Entry> {
    let (key1, key2) = scope.keys();
    conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM harvest_entries WHERE {} AND time = ?4
         ORDER BY entry_id LIMIT 1",
        scope.filter()
    ))?
    .query_row(params![operator_id, key1, key2, time], entry_from_row)
    .optional()?
    .ok_or(StoreError::NotFound(Entity::DataEntry))
}

type ResourceId = (String, String, String);

/// Deletes every entry of `scope` at `time` (and the resource row of a resource left without
/// entries); returns how many entries went.
pub fn delete_entries(
    tx: &Transaction,
    operator_id: &OperatorId,
    scope: &Scope,
    time: i64,
) -> Result<usize> {
    let (key1, key2) = scope.keys();
    let touched: Vec<ResourceId> = tx
        .prepare_cached(&format!(
            "DELETE FROM harvest_entries WHERE {} AND time = ?4
             RETURNING operator_id, resource_type, resource_id",
            scope.filter()
        ))?
        .query_map(params![operator_id, key1, key2, time], resource_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    if touched.is_empty() {
        return Err(StoreError::NotFound(Entity::DataEntry));
    }
    drop_empty_resources(tx, touched.iter().cloned().collect())?;
    Ok(touched.len())
}

fn resource_from_row(row: &rusqlite::Row) -> rusqlite::Result<ResourceId> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn drop_empty_resources(tx: &Transaction, resources: BTreeSet<ResourceId>) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM harvest_resources
         WHERE operator_id = ?1 AND resource_type = ?2 AND resource_id = ?3
           AND NOT EXISTS (SELECT 1 FROM harvest_entries
                           WHERE operator_id = ?1 AND resource_type = ?2 AND resource_id = ?3)",
    )?;
    for (operator_id, resource_type, resource_id) in resources {
        stmt.execute(params![operator_id, resource_type, resource_id])?;
    }
    Ok(())
}

/// Deletes at most `batch` entries older than `cutoff_ms` (oldest first) and the resource rows
/// left without entries. Returns how many entries went: the caller repeats, one transaction per
/// batch, until fewer than `batch` go, so API writes never wait long behind a purge.
pub fn purge_older_than(tx: &Transaction, cutoff_ms: i64, batch: usize) -> Result<usize> {
    let batch = i64::try_from(batch).unwrap_or(i64::MAX);
    let touched: Vec<ResourceId> = tx
        .prepare_cached(
            "DELETE FROM harvest_entries WHERE entry_id IN
                 (SELECT entry_id FROM harvest_entries WHERE time < ?1 ORDER BY time LIMIT ?2)
             RETURNING operator_id, resource_type, resource_id",
        )?
        .query_map(params![cutoff_ms, batch], resource_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let deleted = touched.len();
    drop_empty_resources(tx, touched.into_iter().collect())?;
    Ok(deleted)
}

/// A resource that has sent data (`harvest_resources`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub resource_type: String,
    pub resource_id: String,
    /// UNIX ms of its newest entry ever stored.
    pub last_modified_time: i64,
}

/// The `x-soracom-next-key` of a resource page ending with `resource`: `{resourceType}_{resourceId}`
/// (resource types never contain `_`, so `ResourceCursor::parse` splits at the first one).
pub fn resource_key(resource: &Resource) -> String {
    format!("{}_{}", resource.resource_type, resource.resource_id)
}

/// Where a page of resources continues: after `(resource_type, resource_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceCursor {
    pub resource_type: String,
    pub resource_id: String,
}

impl ResourceCursor {
    pub fn parse(key: &str) -> Option<ResourceCursor> {
        let (resource_type, resource_id) = key.split_once('_')?;
        if resource_type.is_empty() || resource_id.is_empty() {
            return None;
        }
        Some(ResourceCursor {
            resource_type: resource_type.to_string(),
            resource_id: resource_id.to_string(),
        })
    }
}

/// `?1` operator, `?2`/`?3` the cursor, `?4` the limit, `?5` the resource type (or NULL).
fn resources_sql(filtered: bool) -> String {
    let type_filter = if filtered {
        "AND resource_type = ?5"
    } else {
        "AND ?5 IS NULL"
    };
    format!(
        "SELECT resource_type, resource_id, last_modified_time FROM harvest_resources
         WHERE operator_id = ?1 {type_filter} AND (resource_type, resource_id) > (?2, ?3)
         ORDER BY resource_type, resource_id LIMIT ?4"
    )
}

/// The operator's resources ordered by `(resource_type, resource_id)`, optionally of one type.
pub fn list_resources(
    conn: &Connection,
    operator_id: &OperatorId,
    resource_type: Option<&str>,
    after: Option<&ResourceCursor>,
    limit: u32,
) -> Result<Vec<Resource>> {
    let (after_type, after_id) = after
        .map(|c| (c.resource_type.as_str(), c.resource_id.as_str()))
        .unwrap_or(("", ""));
    let mut stmt = conn.prepare_cached(&resources_sql(resource_type.is_some()))?;
    let rows = stmt.query_map(
        params![operator_id, after_type, after_id, limit, resource_type],
        |row| {
            Ok(Resource {
                resource_type: row.get(0)?,
                resource_id: row.get(1)?,
                last_modified_time: row.get(2)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
#[path = "harvest_tests.rs"]
mod tests;
