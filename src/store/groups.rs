//! Groups and their configuration: free-form JSON values per namespace and key.
//!
//! Written once for both store engines (issue 14 spike): every function takes a `&mut dyn Db`
//! (see `store::db`) and uses the portable SQL dialect.

use std::collections::BTreeMap;

use serde_json::Value;

use super::db::Db;
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
    db: &mut dyn Db,
    operator_id: &OperatorId,
    group_id: &GroupId,
) -> Result<()> {
    let found = db.query_opt(
        "SELECT 1 FROM groups WHERE group_id = $1 AND operator_id = $2",
        &[group_id, operator_id],
    )?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(Entity::Group)),
    }
}

pub fn create(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    tags: &BTreeMap<String, String>,
    configuration: &Configuration,
) -> Result<GroupRecord> {
    let group_id = ids::new_group_id();
    let now = now_ms();
    db.execute(
        "INSERT INTO groups(group_id, operator_id, tags, created_at, last_modified_at) VALUES ($1, $2, $3, $4, $4)",
        &[&group_id, operator_id, &to_json(tags)?, &now],
    )?;
    for (namespace, values) in configuration {
        for (key, value) in values {
            put_value(db, &group_id, namespace, key, value)?;
        }
    }
    get(db, operator_id, &group_id)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn put_value(
    db: &mut dyn Db,
    group_id: &GroupId,
    namespace: &str,
    key: &str,
    value: &Value,
) -> Result<()> {
    db.execute(
        "INSERT INTO group_configuration(group_id, namespace, key, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT(group_id, namespace, key) DO UPDATE SET value = excluded.value",
        &[group_id, &namespace, &key, &to_json(value)?],
    )?;
    Ok(())
}

pub fn get(db: &mut dyn Db, operator_id: &OperatorId, group_id: &GroupId) -> Result<GroupRecord> {
    let row = db
        .query_opt(
            "SELECT tags, created_at, last_modified_at FROM groups WHERE group_id = $1 AND operator_id = $2",
            &[group_id, operator_id],
        )?
        .ok_or(StoreError::NotFound(Entity::Group))?;
    let mut configuration = Configuration::new();
    let rows = db.query(
        "SELECT namespace, key, value FROM group_configuration WHERE group_id = $1 ORDER BY namespace, key",
        &[group_id],
    )?;
    for entry in rows {
        let value: Value = from_json(&entry.text(2)?)?;
        configuration
            .entry(entry.text(0)?)
            .or_default()
            .insert(entry.text(1)?, value);
    }
    Ok(GroupRecord {
        group_id: group_id.clone(),
        operator_id: operator_id.clone(),
        tags: from_json(&row.text(0)?)?,
        configuration,
        created_at: row.int(1)?,
        last_modified_at: row.int(2)?,
    })
}

pub fn list(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    after_group_id: Option<&str>,
    limit: u32,
) -> Result<Vec<GroupRecord>> {
    let ids = db
        .query(
            "SELECT group_id FROM groups WHERE operator_id = $1 AND group_id > $2 ORDER BY group_id LIMIT $3",
            &[operator_id, &after_group_id.unwrap_or(""), &limit],
        )?
        .iter()
        .map(|row| row.text(0).map(GroupId::new))
        .collect::<Result<Vec<GroupId>>>()?;
    ids.iter().map(|id| get(db, operator_id, id)).collect()
}

/// Refused while SIMs are in the group, so no SIM points at a group that is gone.
pub fn delete(db: &mut dyn Db, operator_id: &OperatorId, group_id: &GroupId) -> Result<()> {
    require_group(db, operator_id, group_id)?;
    let members = db
        .query_one("SELECT COUNT(*) FROM sims WHERE group_id = $1", &[group_id])?
        .int(0)?;
    if members > 0 {
        return Err(Rule::GroupInUse(members as u64).into());
    }
    db.execute("DELETE FROM groups WHERE group_id = $1", &[group_id])?;
    Ok(())
}

/// Sets (adds or overwrites) keys in one namespace.
pub fn put_configuration(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    group_id: &GroupId,
    namespace: &str,
    values: &[(String, Value)],
) -> Result<GroupRecord> {
    require_group(db, operator_id, group_id)?;
    for (key, value) in values {
        put_value(db, group_id, namespace, key, value)?;
    }
    touch(db, group_id)?;
    get(db, operator_id, group_id)
}

pub fn delete_configuration(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    group_id: &GroupId,
    namespace: &str,
    key: &str,
) -> Result<()> {
    require_group(db, operator_id, group_id)?;
    let deleted = db.execute(
        "DELETE FROM group_configuration WHERE group_id = $1 AND namespace = $2 AND key = $3",
        &[group_id, &namespace, &key],
    )?;
    if deleted == 0 {
        return Err(StoreError::NotFound(Entity::ConfigurationParameter));
    }
    touch(db, group_id)
}

fn touch(db: &mut dyn Db, group_id: &GroupId) -> Result<()> {
    db.execute(
        "UPDATE groups SET last_modified_at = $2 WHERE group_id = $1",
        &[group_id, &now_ms()],
    )?;
    Ok(())
}

/// The same tests on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names a
/// server (scripts/test-postgres.sh); given but unreachable, the `postgres` test fails.
#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::Backend;

    use crate::store::testing::on_both_engines;

    on_both_engines!(
        create_get_and_list_in_pages,
        configuration_put_overwrites_and_delete_reports_missing,
        delete_refused_while_sims_are_in_the_group,
        other_operators_groups_are_not_found,
        a_failed_write_leaves_nothing,
    );

    fn operator(store: &impl Backend, id: &str) -> OperatorId {
        let id = OperatorId::new(id);
        store
            .write_db(|db| {
                db.execute(
                    "INSERT INTO operators(operator_id, created_at) VALUES ($1, $2)",
                    &[&id, &now_ms()],
                )
            })
            .expect("operator");
        id
    }

    fn config(namespace: &str, key: &str, value: Value) -> Configuration {
        let mut configuration = Configuration::new();
        configuration
            .entry(namespace.into())
            .or_default()
            .insert(key.into(), value);
        configuration
    }

    fn create_get_and_list_in_pages(store: &impl Backend) {
        let op = operator(store, "OP0000000001");
        let tags = BTreeMap::from([("name".to_string(), "fleet".to_string())]);
        let configuration = config(
            "SoracomAir",
            "metadata",
            serde_json::json!({"enabled": true}),
        );
        let created = store
            .write_db(|db| create(db, &op, &tags, &configuration))
            .expect("create");
        assert_eq!(created.tags, tags);
        assert_eq!(created.configuration, configuration);
        assert_eq!(created.created_at, created.last_modified_at);
        let read = store
            .read_db(|db| get(db, &op, &created.group_id))
            .expect("get");
        assert_eq!(read.configuration, configuration);
        for _ in 0..4 {
            store
                .write_db(|db| create(db, &op, &BTreeMap::new(), &Configuration::new()))
                .expect("create");
        }
        let first = store.read_db(|db| list(db, &op, None, 3)).expect("list");
        assert_eq!(first.len(), 3);
        let after = first.last().map(|g| g.group_id.as_str().to_string());
        let second = store
            .read_db(|db| list(db, &op, after.as_deref(), 3))
            .expect("list");
        assert_eq!(second.len(), 2);
        let mut all: Vec<String> = first
            .iter()
            .chain(&second)
            .map(|g| g.group_id.to_string())
            .collect();
        let listed = all.clone();
        all.sort();
        assert_eq!(listed, all, "pages come in group id order");
        all.dedup();
        assert_eq!(all.len(), 5);
    }

    fn configuration_put_overwrites_and_delete_reports_missing(store: &impl Backend) {
        let op = operator(store, "OP0000000002");
        let group = store
            .write_db(|db| create(db, &op, &BTreeMap::new(), &config("A", "k", Value::from(1))))
            .expect("create");
        let values = vec![
            ("k".to_string(), Value::from("two")),
            ("other".to_string(), Value::Bool(false)),
        ];
        let updated = store
            .write_db(|db| put_configuration(db, &op, &group.group_id, "A", &values))
            .expect("put");
        assert_eq!(updated.configuration["A"]["k"], Value::from("two"));
        assert_eq!(updated.configuration["A"]["other"], Value::Bool(false));
        assert!(updated.last_modified_at >= group.last_modified_at);
        store
            .write_db(|db| delete_configuration(db, &op, &group.group_id, "A", "k"))
            .expect("delete");
        assert!(matches!(
            store.write_db(|db| delete_configuration(db, &op, &group.group_id, "A", "k")),
            Err(StoreError::NotFound(Entity::ConfigurationParameter))
        ));
        let read = store
            .read_db(|db| get(db, &op, &group.group_id))
            .expect("get");
        assert_eq!(read.configuration["A"].len(), 1);
    }

    fn delete_refused_while_sims_are_in_the_group(store: &impl Backend) {
        let op = operator(store, "OP0000000003");
        let group = store
            .write_db(|db| create(db, &op, &BTreeMap::new(), &Configuration::new()))
            .expect("create");
        store
            .write_db(|db| {
                db.execute(
                    "INSERT INTO sims(sim_id, operator_id, sim_type, status, coverage, group_id,
                                      created_at, last_modified_at)
                     VALUES ($1, $2, 'virtual', 'active', 'jp', $3, $4, $4)",
                    &[&"8942310000000000018", &op, &group.group_id, &now_ms()],
                )
            })
            .expect("sim");
        assert!(matches!(
            store.write_db(|db| delete(db, &op, &group.group_id)),
            Err(StoreError::Rule(Rule::GroupInUse(1)))
        ));
        store
            .write_db(|db| {
                db.execute(
                    "UPDATE sims SET group_id = NULL WHERE group_id = $1",
                    &[&group.group_id],
                )
            })
            .expect("move out");
        store
            .write_db(|db| delete(db, &op, &group.group_id))
            .expect("delete");
        assert!(matches!(
            store.read_db(|db| get(db, &op, &group.group_id)),
            Err(StoreError::NotFound(Entity::Group))
        ));
    }

    fn other_operators_groups_are_not_found(store: &impl Backend) {
        let owner = operator(store, "OP0000000004");
        let stranger = operator(store, "OP0000000005");
        let group = store
            .write_db(|db| create(db, &owner, &BTreeMap::new(), &Configuration::new()))
            .expect("create");
        assert!(matches!(
            store.read_db(|db| get(db, &stranger, &group.group_id)),
            Err(StoreError::NotFound(Entity::Group))
        ));
        assert!(matches!(
            store.write_db(|db| delete(db, &stranger, &group.group_id)),
            Err(StoreError::NotFound(Entity::Group))
        ));
        assert!(store
            .read_db(|db| list(db, &stranger, None, 10))
            .expect("list")
            .is_empty());
    }

    /// An error inside the closure rolls the whole transaction back on both engines, and a
    /// duplicate key is reported the same way by both.
    fn a_failed_write_leaves_nothing(store: &impl Backend) {
        let op = operator(store, "OP0000000006");
        let result: Result<()> = store.write_db(|db| {
            create(db, &op, &BTreeMap::new(), &Configuration::new())?;
            Err(StoreError::NotFound(Entity::Sim))
        });
        assert!(result.is_err());
        assert!(store
            .read_db(|db| list(db, &op, None, 10))
            .expect("list")
            .is_empty());
        let duplicate = store.write_db(|db| {
            db.execute(
                "INSERT INTO operators(operator_id, created_at) VALUES ($1, 0)",
                &[&op],
            )
        });
        match duplicate {
            Err(e) => assert!(e.is_unique_violation(), "{e}"),
            Ok(_) => panic!("a duplicate operator was inserted"),
        }
    }
}
