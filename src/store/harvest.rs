//! Harvest Data entries: what devices post to the Harvest service, read back through the
//! official data API. Stored under the primary IMSI (resource type `Subscriber`) and the SIM ID.
//!
//! Written once for both store engines (see `store::db`). `entry_id` is SQLite's rowid and a
//! PostgreSQL identity column: both hand ids out in insertion order, but PostgreSQL's in
//! allocation order, not commit order, so a reader paging while another node commits may see a
//! lower id appear behind its cursor. Acceptable for Harvest: entries arrive by device time
//! anyway, and listings page by `(time, entry_id)`.

use std::collections::{BTreeMap, BTreeSet};

use super::db::{chunks, values_rows, Db, Param, Row};
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

/// Entries (or resources) written by one multi-row statement: 64 × 7 parameters, well inside
/// both engines' limits, and few statement texts to cache (see `db::chunks`).
const ROWS_PER_STATEMENT: usize = 64;

/// Stores `entries` in the caller's transaction (the Harvest service commits many posts at once):
/// one multi-row INSERT per 64 entries, then one upsert per 64 resources touched.
pub fn insert(db: &mut dyn Db, entries: &[NewEntry]) -> Result<()> {
    for chunk in chunks(entries, ROWS_PER_STATEMENT) {
        let mut params: Vec<&dyn Param> = Vec::with_capacity(chunk.len() * 7);
        for entry in chunk {
            params.extend([
                &entry.operator_id as &dyn Param,
                &SUBSCRIBER,
                &entry.imsi,
                &entry.sim_id,
                &entry.time,
                &entry.content_type,
                &entry.content,
            ]);
        }
        db.execute(&insert_sql(chunk.len()), &params)?;
    }
    touch_resources(db, entries)
}

/// Entry rows in the order given, so entries of one millisecond keep the order they came in.
fn insert_sql(rows: usize) -> String {
    format!(
        "INSERT INTO harvest_entries(operator_id, resource_type, resource_id, sim_id, time, content_type, content)
         VALUES {}",
        values_rows(rows, 7)
    )
}

/// Raises each resource's `last_modified_time` to its newest entry. One row per resource: a
/// PostgreSQL upsert may not touch one row twice in a statement.
fn touch_resources(db: &mut dyn Db, entries: &[NewEntry]) -> Result<()> {
    let mut newest: BTreeMap<(&OperatorId, &Imsi), i64> = BTreeMap::new();
    for entry in entries {
        let time = newest
            .entry((&entry.operator_id, &entry.imsi))
            .or_insert(entry.time);
        *time = (*time).max(entry.time);
    }
    let newest: Vec<((&OperatorId, &Imsi), i64)> = newest.into_iter().collect();
    for chunk in chunks(&newest, ROWS_PER_STATEMENT) {
        let mut params: Vec<&dyn Param> = Vec::with_capacity(chunk.len() * 4);
        for ((operator_id, imsi), time) in chunk {
            params.extend([operator_id as &dyn Param, &SUBSCRIBER, imsi, time]);
        }
        db.execute(&touch_resources_sql(chunk.len()), &params)?;
    }
    Ok(())
}

fn touch_resources_sql(rows: usize) -> String {
    format!(
        "INSERT INTO harvest_resources(operator_id, resource_type, resource_id, last_modified_time)
         VALUES {}
         ON CONFLICT (operator_id, resource_type, resource_id)
         DO UPDATE SET last_modified_time = excluded.last_modified_time
         WHERE excluded.last_modified_time > harvest_resources.last_modified_time",
        values_rows(rows, 4)
    )
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
    /// The `WHERE` terms of the scope: `$1` is the operator, `$2` and `$3` the scope's keys, so
    /// every statement numbers its own parameters from `$4`. The SIM scope has one key; its `$3`
    /// is bound to '' and named in a term that always holds, because both engines want every
    /// parameter used (PostgreSQL must also infer its type: hence the cast).
    fn filter(&self) -> &'static str {
        match self {
            Scope::Resource { .. } => {
                "operator_id = $1 AND resource_type = $2 AND resource_id = $3"
            }
            Scope::Sim(_) => "operator_id = $1 AND sim_id = $2 AND CAST($3 AS TEXT) = ''",
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

fn entry_from_row(row: &Row) -> Result<Entry> {
    Ok(Entry {
        entry_id: row.int(0)?,
        resource_type: row.text(1)?,
        resource_id: row.text(2)?,
        sim_id: SimId::new(row.text(3)?),
        time: row.int(4)?,
        content_type: row.text(5)?,
        content: row.text(6)?,
        category: row.opt_text(7)?,
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
         WHERE {} AND time >= $4 AND time <= $5 AND (time, entry_id) {cmp} ($6, $7)
         ORDER BY time {dir}, entry_id {dir} LIMIT $8",
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
    db: &mut dyn Db,
    operator_id: &OperatorId,
    scope: &Scope,
    query: &EntryQuery,
) -> Result<Vec<Entry>> {
    let (key1, key2) = scope.keys();
    let (low, high, cursor_time, cursor_entry) = bounds(query);
    db.query(
        &list_sql(scope, query.order),
        &[
            operator_id,
            &key1,
            &key2,
            &low,
            &high,
            &cursor_time,
            &cursor_entry,
            &query.limit,
        ],
    )?
    .iter()
    .map(entry_from_row)
    .collect()
}

/// The first entry (by entry ID) of `scope` at `time`.
pub fn get_entry(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    scope: &Scope,
    time: i64,
) -> Result<Entry> {
    let (key1, key2) = scope.keys();
    let row = db
        .query_opt(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM harvest_entries WHERE {} AND time = $4
                 ORDER BY entry_id LIMIT 1",
                scope.filter()
            ),
            &[operator_id, &key1, &key2, &time],
        )?
        .ok_or(StoreError::NotFound(Entity::DataEntry))?;
    entry_from_row(&row)
}

type ResourceId = (String, String, String);

/// Deletes every entry of `scope` at `time` (and the resource row of a resource left without
/// entries); returns how many entries went.
pub fn delete_entries(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    scope: &Scope,
    time: i64,
) -> Result<usize> {
    let (key1, key2) = scope.keys();
    let touched = db
        .query(
            &format!(
                "DELETE FROM harvest_entries WHERE {} AND time = $4
                 RETURNING operator_id, resource_type, resource_id",
                scope.filter()
            ),
            &[operator_id, &key1, &key2, &time],
        )?
        .iter()
        .map(resource_from_row)
        .collect::<Result<Vec<ResourceId>>>()?;
    if touched.is_empty() {
        return Err(StoreError::NotFound(Entity::DataEntry));
    }
    drop_empty_resources(db, touched.iter().cloned().collect())?;
    Ok(touched.len())
}

fn resource_from_row(row: &Row) -> Result<ResourceId> {
    Ok((row.text(0)?, row.text(1)?, row.text(2)?))
}

fn drop_empty_resources(db: &mut dyn Db, resources: BTreeSet<ResourceId>) -> Result<()> {
    for (operator_id, resource_type, resource_id) in resources {
        db.execute(
            "DELETE FROM harvest_resources
             WHERE operator_id = $1 AND resource_type = $2 AND resource_id = $3
               AND NOT EXISTS (SELECT 1 FROM harvest_entries
                               WHERE operator_id = $1 AND resource_type = $2 AND resource_id = $3)",
            &[&operator_id, &resource_type, &resource_id],
        )?;
    }
    Ok(())
}

/// Deletes at most `batch` entries older than `cutoff_ms` (oldest first) and the resource rows
/// left without entries. Returns how many entries went: the caller repeats, one transaction per
/// batch, until fewer than `batch` go, so API writes never wait long behind a purge (and, on
/// PostgreSQL, no long transaction holds back the peer-change outbox's watermark).
pub fn purge_older_than(db: &mut dyn Db, cutoff_ms: i64, batch: usize) -> Result<usize> {
    let batch = i64::try_from(batch).unwrap_or(i64::MAX);
    let touched = db
        .query(
            "DELETE FROM harvest_entries WHERE entry_id IN
                 (SELECT entry_id FROM harvest_entries WHERE time < $1 ORDER BY time LIMIT $2)
             RETURNING operator_id, resource_type, resource_id",
            &[&cutoff_ms, &batch],
        )?
        .iter()
        .map(resource_from_row)
        .collect::<Result<Vec<ResourceId>>>()?;
    let deleted = touched.len();
    drop_empty_resources(db, touched.into_iter().collect())?;
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

/// `$1` operator, `$2`/`$3` the cursor, `$4` the limit, `$5` the resource type (or NULL).
fn resources_sql(filtered: bool) -> String {
    let type_filter = if filtered {
        "AND resource_type = $5"
    } else {
        "AND CAST($5 AS TEXT) IS NULL"
    };
    format!(
        "SELECT resource_type, resource_id, last_modified_time FROM harvest_resources
         WHERE operator_id = $1 {type_filter} AND (resource_type, resource_id) > ($2, $3)
         ORDER BY resource_type, resource_id LIMIT $4"
    )
}

/// The operator's resources ordered by `(resource_type, resource_id)`, optionally of one type.
pub fn list_resources(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    resource_type: Option<&str>,
    after: Option<&ResourceCursor>,
    limit: u32,
) -> Result<Vec<Resource>> {
    let (after_type, after_id) = after
        .map(|c| (c.resource_type.as_str(), c.resource_id.as_str()))
        .unwrap_or(("", ""));
    db.query(
        &resources_sql(resource_type.is_some()),
        &[operator_id, &after_type, &after_id, &limit, &resource_type],
    )?
    .iter()
    .map(|row| {
        Ok(Resource {
            resource_type: row.text(0)?,
            resource_id: row.text(1)?,
            last_modified_time: row.int(2)?,
        })
    })
    .collect()
}

#[cfg(test)]
#[path = "harvest_tests.rs"]
mod tests;
