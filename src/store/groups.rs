//! Groups and their configuration: free-form JSON values per namespace and key.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use super::{now_ms, Entity, Result, Rule, StoreError};
use crate::ids;
use crate::ids::{GroupId, OperatorId};

pub type Configuration = BTreeMap<String, serde_json::Map<String, Value>>;

#[derive(Debug, Clone)]
pub struct GroupRecord {
    pub group_id: GroupId,
    pub operator_id: OperatorId,
    pub tags: BTreeMap<String, String>,
    pub configuration: Configuration,
    pub created_at: i64,
    pub last_modified_at: i64,
}

pub(crate) fn require_group(
    conn: &Connection,
    operator_id: &OperatorId,
    group_id: &GroupId,
) -> Result<()> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM groups WHERE group_id = ?1 AND operator_id = ?2")?
        .exists(params![group_id, operator_id])?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::NotFound(Entity::Group))
    }
}

pub fn create(
    tx: &Transaction,
    operator_id: &OperatorId,
    tags: &BTreeMap<String, String>,
    configuration: &Configuration,
) -> Result<GroupRecord> {
    let group_id = ids::new_group_id();
    let now = now_ms();
    tx.execute(
        "INSERT INTO groups(group_id, operator_id, tags, created_at, last_modified_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![group_id, operator_id, to_json(tags)?, now],
    )?;
    for (namespace, values) in configuration {
        for (key, value) in values {
            put_value(tx, &group_id, namespace, key, value)?;
        }
    }
    get(tx, operator_id, &group_id)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn put_value(
    tx: &Transaction,
    group_id: &GroupId,
    namespace: &str,
    key: &str,
    value: &Value,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO group_configuration(group_id, namespace, key, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(group_id, namespace, key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![group_id, namespace, key, to_json(value)?])?;
    Ok(())
}

pub fn get(conn: &Connection, operator_id: &OperatorId, group_id: &GroupId) -> Result<GroupRecord> {
    let row: Option<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT tags, created_at, last_modified_at FROM groups WHERE group_id = ?1 AND operator_id = ?2",
        )?
        .query_row(params![group_id, operator_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let (tags, created_at, last_modified_at) = row.ok_or(StoreError::NotFound(Entity::Group))?;
    let mut configuration = Configuration::new();
    let mut stmt = conn.prepare_cached(
        "SELECT namespace, key, value FROM group_configuration WHERE group_id = ?1 ORDER BY namespace, key",
    )?;
    let rows = stmt.query_map([group_id], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (namespace, key, value) = row?;
        let value: Value =
            serde_json::from_str(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        configuration
            .entry(namespace)
            .or_default()
            .insert(key, value);
    }
    Ok(GroupRecord {
        group_id: group_id.clone(),
        operator_id: operator_id.clone(),
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        configuration,
        created_at,
        last_modified_at,
    })
}

pub fn list(
    conn: &Connection,
    operator_id: &OperatorId,
    after_group_id: Option<&str>,
    limit: u32,
) -> Result<Vec<GroupRecord>> {
    let ids: Vec<GroupId> = conn

        .prepare_cached(
            "SELECT group_id FROM groups WHERE operator_id = ?1 AND group_id > ?2 ORDER BY group_id LIMIT ?3",
        )?
        .query_map(params![operator_id, after_group_id.unwrap_or(""), limit], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.iter().map(|id| get(conn, operator_id, id)).collect()
}

/// Refused while SIMs are in the group, so no SIM points at a group that is gone.
pub fn delete(tx: &Transaction, operator_id: &OperatorId, group_id: &GroupId) -> Result<()> {
    require_group(tx, operator_id, group_id)?;
    let members: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sims WHERE group_id = ?1",
        [group_id],
        |row| row.get(0),
    )?;
    if members > 0 {
        return Err(Rule::GroupInUse(members as u64).into());
    }
    tx.execute("DELETE FROM groups WHERE group_id = ?1", [group_id])?;
    Ok(())
}

/// Sets (adds or overwrites) keys in one namespace.
pub fn put_configuration(
    tx: &Transaction,
    operator_id: &OperatorId,
    group_id: &GroupId,
    namespace: &str,
    values: &[(String, Value)],
) -> Result<GroupRecord> {
    require_group(tx, operator_id, group_id)?;
    for (key, value) in values {
        put_value(tx, group_id, namespace, key, value)?;
    }
    touch(tx, group_id)?;
    get(tx, operator_id, group_id)
}

pub fn delete_configuration(
    tx: &Transaction,
    operator_id: &OperatorId,
    group_id: &GroupId,
    namespace: &str,
    key: &str,
) -> Result<()> {
    require_group(tx, operator_id, group_id)?;
    let deleted = tx.execute(
        "DELETE FROM group_configuration WHERE group_id = ?1 AND namespace = ?2 AND key = ?3",
        params![group_id, namespace, key],
    )?;
    if deleted == 0 {
        return Err(StoreError::NotFound(Entity::ConfigurationParameter));
    }
    touch(tx, group_id)
}

fn touch(tx: &Transaction, group_id: &GroupId) -> Result<()> {
    tx.execute(
        "UPDATE groups SET last_modified_at = ?2 WHERE group_id = ?1",
        params![group_id, now_ms()],
    )?;
    Ok(())
}
