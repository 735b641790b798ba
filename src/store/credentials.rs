//! Credentials of the destinations Funnel and Funk deliver to (SORACOM's `/v1/credentials`): a
//! type, a description and the secret fields, per operator and credentials id. The secret is kept
//! as a JSON object because arcd has to present it to the destination; readers that answer the
//! API use `CredentialsRecord` without looking at `secret`.
//!
//! Written once for both store engines over `&mut dyn Db`.

use serde_json::{Map, Value};

use super::db::Db;
use super::{now_ms, Entity, Result, Rule, StoreError};
use crate::ids::OperatorId;

#[derive(Clone)]
pub struct CredentialsRecord {
    pub credentials_id: String,
    pub kind: String,
    pub description: String,
    /// The secret fields; never logged, never returned by the API.
    pub secret: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Without the secret, so a record can be logged or printed by a test safely.
impl std::fmt::Debug for CredentialsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsRecord")
            .field("credentials_id", &self.credentials_id)
            .field("kind", &self.kind)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// What a create or an update writes.
pub struct NewCredentials<'a> {
    pub kind: &'a str,
    pub description: &'a str,
    pub secret: &'a Map<String, Value>,
}

fn secret_json(secret: &Map<String, Value>) -> Result<String> {
    serde_json::to_string(secret).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn create(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    credentials_id: &str,
    new: &NewCredentials,
) -> Result<CredentialsRecord> {
    let exists = db.query_opt(
        "SELECT 1 FROM credentials WHERE operator_id = $1 AND credentials_id = $2",
        &[operator_id, &credentials_id],
    )?;
    if exists.is_some() {
        return Err(Rule::CredentialsExist(credentials_id.to_string()).into());
    }
    let now = now_ms();
    db.execute(
        "INSERT INTO credentials(operator_id, credentials_id, type, description, secret, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[
            operator_id,
            &credentials_id,
            &new.kind,
            &new.description,
            &secret_json(new.secret)?,
            &now,
        ],
    )?;
    get(db, operator_id, credentials_id)
}

pub fn update(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    credentials_id: &str,
    new: &NewCredentials,
) -> Result<CredentialsRecord> {
    let changed = db.execute(
        "UPDATE credentials SET type = $3, description = $4, secret = $5, updated_at = $6
         WHERE operator_id = $1 AND credentials_id = $2",
        &[
            operator_id,
            &credentials_id,
            &new.kind,
            &new.description,
            &secret_json(new.secret)?,
            &now_ms(),
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound(Entity::Credentials));
    }
    get(db, operator_id, credentials_id)
}

pub fn get(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    credentials_id: &str,
) -> Result<CredentialsRecord> {
    let row = db
        .query_opt(
            "SELECT credentials_id, type, description, secret, created_at, updated_at
             FROM credentials WHERE operator_id = $1 AND credentials_id = $2",
            &[operator_id, &credentials_id],
        )?
        .ok_or(StoreError::NotFound(Entity::Credentials))?;
    record(&row)
}

fn record(row: &super::db::Row) -> Result<CredentialsRecord> {
    let secret: Map<String, Value> =
        serde_json::from_str(&row.text(3)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(CredentialsRecord {
        credentials_id: row.text(0)?,
        kind: row.text(1)?,
        description: row.text(2)?,
        secret,
        created_at: row.int(4)?,
        updated_at: row.int(5)?,
    })
}

/// Every credentials record of the operator, by id.
pub fn list(db: &mut dyn Db, operator_id: &OperatorId) -> Result<Vec<CredentialsRecord>> {
    db.query(
        "SELECT credentials_id, type, description, secret, created_at, updated_at
         FROM credentials WHERE operator_id = $1 ORDER BY credentials_id",
        &[operator_id],
    )?
    .iter()
    .map(record)
    .collect()
}

pub fn delete(db: &mut dyn Db, operator_id: &OperatorId, credentials_id: &str) -> Result<()> {
    let removed = db.execute(
        "DELETE FROM credentials WHERE operator_id = $1 AND credentials_id = $2",
        &[operator_id, &credentials_id],
    )?;
    if removed == 0 {
        return Err(StoreError::NotFound(Entity::Credentials));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::Backend;
    use crate::store::operators;

    use crate::store::testing::on_both_engines;

    on_both_engines!(
        credentials_are_created_updated_listed_and_deleted,
        credentials_belong_to_their_operator,
    );

    fn secret(password: &str) -> Map<String, Value> {
        let mut secret = Map::new();
        secret.insert("username".into(), "device".into());
        secret.insert("password".into(), password.into());
        secret
    }

    fn credentials_are_created_updated_listed_and_deleted(store: &impl Backend) {
        let op = store
            .write_db(operators::create_operator)
            .expect("operator");
        let first = secret("first");
        let new = NewCredentials {
            kind: "username-password-credentials",
            description: "broker",
            secret: &first,
        };
        let created = store
            .write_db(|db| create(db, &op, "broker", &new))
            .expect("create");
        assert_eq!(created.secret, first);
        let again = store.write_db(|db| create(db, &op, "broker", &new));
        assert!(
            matches!(again, Err(StoreError::Rule(Rule::CredentialsExist(_)))),
            "{again:?}"
        );
        let second = secret("second");
        let updated = store
            .write_db(|db| {
                update(
                    db,
                    &op,
                    "broker",
                    &NewCredentials {
                        kind: "username-password-credentials",
                        description: "rotated",
                        secret: &second,
                    },
                )
            })
            .expect("update");
        assert_eq!(
            (updated.description.as_str(), &updated.secret),
            ("rotated", &second)
        );
        assert!(updated.updated_at >= created.updated_at);
        let missing = store.write_db(|db| update(db, &op, "nobody", &new));
        assert!(matches!(
            missing,
            Err(StoreError::NotFound(Entity::Credentials))
        ));
        store
            .write_db(|db| create(db, &op, "another", &new))
            .expect("create another");
        let ids: Vec<String> = store
            .read_db(|db| list(db, &op))
            .expect("list")
            .into_iter()
            .map(|c| c.credentials_id)
            .collect();
        assert_eq!(ids, ["another", "broker"]);
        store
            .write_db(|db| delete(db, &op, "broker"))
            .expect("delete");
        assert!(matches!(
            store.read_db(|db| get(db, &op, "broker")),
            Err(StoreError::NotFound(Entity::Credentials))
        ));
        assert!(matches!(
            store.write_db(|db| delete(db, &op, "broker")),
            Err(StoreError::NotFound(Entity::Credentials))
        ));
    }

    fn credentials_belong_to_their_operator(store: &impl Backend) {
        let owner = store
            .write_db(operators::create_operator)
            .expect("operator");
        let other = store
            .write_db(operators::create_operator)
            .expect("operator");
        let s = secret("pw");
        let new = NewCredentials {
            kind: "username-password-credentials",
            description: "",
            secret: &s,
        };
        store
            .write_db(|db| create(db, &owner, "shared-name", &new))
            .expect("create");
        assert!(store.read_db(|db| get(db, &other, "shared-name")).is_err());
        assert!(store
            .read_db(|db| list(db, &other))
            .expect("list")
            .is_empty());
        // The same id is free for another operator.
        store
            .write_db(|db| create(db, &other, "shared-name", &new))
            .expect("create for the other operator");
    }
}
