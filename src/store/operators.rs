//! Operators, their auth keys (secrets stored hashed) and API tokens.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{now_ms, Entity, Result, StoreError};
use crate::ids;

/// An auth key's secret exists in clear only in this value, returned once at creation.
pub struct NewAuthKey {
    pub auth_key_id: String,
    pub secret: String,
}

impl std::fmt::Debug for NewAuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAuthKey")
            .field("auth_key_id", &self.auth_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct AuthKeyInfo {
    pub auth_key_id: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

pub struct IssuedToken {
    pub api_key: String,
    pub token: String,
    pub operator_id: String,
}

pub fn create_operator(tx: &Transaction) -> Result<String> {
    loop {
        let operator_id = ids::new_operator_id();
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO operators(operator_id, created_at) VALUES (?1, ?2)",
            params![operator_id, now_ms()],
        )?;
        if inserted == 1 {
            return Ok(operator_id);
        }
    }
}

pub fn operator_exists(conn: &Connection, operator_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM operators WHERE operator_id = ?1")?
        .exists([operator_id])?)
}

/// The operator the first `arcd serve` made (whose key is in root-credentials.json), if any.
pub fn root_operator(conn: &Connection) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'root_operator_id'",
            [],
            |row| row.get(0),
        )
        .optional()?)
}

pub fn set_root_operator(tx: &Transaction, operator_id: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO settings(key, value) VALUES ('root_operator_id', ?1)",
        [operator_id],
    )?;
    Ok(())
}

pub fn create_auth_key(tx: &Transaction, operator_id: &str) -> Result<NewAuthKey> {
    if !operator_exists(tx, operator_id)? {
        return Err(StoreError::NotFound(Entity::Operator));
    }
    let key = NewAuthKey {
        auth_key_id: ids::new_auth_key_id(),
        secret: ids::new_auth_key_secret(),
    };
    tx.execute(
        "INSERT INTO auth_keys(auth_key_id, operator_id, secret_hash, created_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            key.auth_key_id,
            operator_id,
            ids::secret_hash(&key.secret),
            now_ms()
        ],
    )?;
    Ok(key)
}

pub fn list_auth_keys(conn: &Connection, operator_id: &str) -> Result<Vec<AuthKeyInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT auth_key_id, created_at, last_used_at FROM auth_keys
         WHERE operator_id = ?1 ORDER BY created_at, auth_key_id",
    )?;
    let rows = stmt.query_map([operator_id], |row| {
        Ok(AuthKeyInfo {
            auth_key_id: row.get(0)?,
            created_at_ms: row.get(1)?,
            last_used_at_ms: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn delete_auth_key(tx: &Transaction, operator_id: &str, auth_key_id: &str) -> Result<()> {
    let deleted = tx.execute(
        "DELETE FROM auth_keys WHERE operator_id = ?1 AND auth_key_id = ?2",
        params![operator_id, auth_key_id],
    )?;
    if deleted == 0 {
        return Err(StoreError::NotFound(Entity::AuthKey));
    }
    Ok(())
}

/// Exchanges an auth key for a token valid `timeout_seconds`; `None` when the key is wrong.
pub fn issue_token(
    tx: &Transaction,
    auth_key_id: &str,
    secret: &str,
    timeout_seconds: u64,
) -> Result<Option<IssuedToken>> {
    let found: Option<(String, String)> = tx
        .query_row(
            "SELECT operator_id, secret_hash FROM auth_keys WHERE auth_key_id = ?1",
            [auth_key_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((operator_id, stored_hash)) = found else {
        return Ok(None);
    };
    if !ids::constant_time_eq(&stored_hash, &ids::secret_hash(secret)) {
        return Ok(None);
    }
    let now = now_ms();
    tx.execute(
        "UPDATE auth_keys SET last_used_at = ?1 WHERE auth_key_id = ?2",
        params![now, auth_key_id],
    )?;
    // Expired tokens are dropped here rather than by a timer: issuing is rare and already writing.
    tx.execute("DELETE FROM api_tokens WHERE expires_at < ?1", [now])?;
    let issued = IssuedToken {
        api_key: ids::new_api_key(),
        token: ids::new_token(),
        operator_id,
    };
    tx.execute(
        "INSERT INTO api_tokens(api_key, token_hash, operator_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            issued.api_key,
            ids::secret_hash(&issued.token),
            issued.operator_id,
            now + (timeout_seconds as i64) * 1000
        ],
    )?;
    Ok(Some(issued))
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid { operator_id: String },
    Expired,
    Invalid,
}

/// A stored token: only its hash is kept.
pub struct TokenRecord {
    pub token_hash: String,
    pub operator_id: String,
    pub expires_at_ms: i64,
}

pub fn token_record(conn: &Connection, api_key: &str) -> Result<Option<TokenRecord>> {
    Ok(conn
        .prepare_cached(
            "SELECT token_hash, operator_id, expires_at FROM api_tokens WHERE api_key = ?1",
        )?
        .query_row([api_key], |row| {
            Ok(TokenRecord {
                token_hash: row.get(0)?,
                operator_id: row.get(1)?,
                expires_at_ms: row.get(2)?,
            })
        })
        .optional()?)
}

pub fn check_token(conn: &Connection, api_key: &str, token: &str) -> Result<TokenCheck> {
    let Some(record) = token_record(conn, api_key)? else {
        return Ok(TokenCheck::Invalid);
    };
    if !ids::constant_time_eq(&record.token_hash, &ids::secret_hash(token)) {
        return Ok(TokenCheck::Invalid);
    }
    if record.expires_at_ms <= now_ms() {
        return Ok(TokenCheck::Expired);
    }
    Ok(TokenCheck::Valid {
        operator_id: record.operator_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    #[test]
    fn key_to_token_round_trip() {
        let (_dir, store) = temp_store();
        let (op, key) = store
            .write(|tx| {
                let op = create_operator(tx)?;
                let key = create_auth_key(tx, &op)?;
                Ok((op, key))
            })
            .expect("create");
        let stored: String = store
            .read(|c| Ok(c.query_row("SELECT secret_hash FROM auth_keys", [], |r| r.get(0))?))
            .expect("read");
        assert!(
            !stored.contains(&key.secret),
            "secret must be stored hashed"
        );

        let bad = store
            .write(|tx| issue_token(tx, &key.auth_key_id, "secret-wrong", 60))
            .expect("write");
        assert!(bad.is_none());
        let issued = store
            .write(|tx| issue_token(tx, &key.auth_key_id, &key.secret, 60))
            .expect("write")
            .expect("valid key");
        assert_eq!(issued.operator_id, op);
        let check = store
            .read(|c| check_token(c, &issued.api_key, &issued.token))
            .expect("read");
        assert_eq!(
            check,
            TokenCheck::Valid {
                operator_id: op.clone()
            }
        );
        let wrong = store
            .read(|c| check_token(c, &issued.api_key, "nope"))
            .expect("read");
        assert_eq!(wrong, TokenCheck::Invalid);
        store
            .write(|tx| {
                tx.execute("UPDATE api_tokens SET expires_at = 0", [])?;
                Ok(())
            })
            .expect("expire");
        let expired = store
            .read(|c| check_token(c, &issued.api_key, &issued.token))
            .expect("read");
        assert_eq!(expired, TokenCheck::Expired);
        assert!(
            list_auth_keys(&store.writer.lock().expect("lock"), &op).expect("list")[0]
                .last_used_at_ms
                .is_some()
        );
    }

    #[test]
    fn keys_belong_to_their_operator() {
        let (_dir, store) = temp_store();
        let (a, b, key) = store
            .write(|tx| {
                let a = create_operator(tx)?;
                let b = create_operator(tx)?;
                let key = create_auth_key(tx, &a)?;
                Ok((a, b, key))
            })
            .expect("create");
        let err = store
            .write(|tx| delete_auth_key(tx, &b, &key.auth_key_id))
            .expect_err("other operator");
        assert!(matches!(err, StoreError::NotFound(Entity::AuthKey)));
        store
            .write(|tx| delete_auth_key(tx, &a, &key.auth_key_id))
            .expect("own key");
        assert!(store
            .write(|tx| create_auth_key(tx, "OP0000000000"))
            .is_err());
    }
}
