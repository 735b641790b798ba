//! Operators, their auth keys (secrets stored hashed) and what API tokens need from the store:
//! the signing key and the API keys revoked by logout (tokens themselves are never stored).

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{now_ms, Entity, Result, StoreError};
use crate::ids;
use crate::ids::OperatorId;

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

pub fn create_operator(tx: &Transaction) -> Result<OperatorId> {
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

pub fn operator_exists(conn: &Connection, operator_id: &OperatorId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM operators WHERE operator_id = ?1")?
        .exists([operator_id])?)
}

/// The operator the first `arcd serve` made (whose key is in root-credentials.json), if any.
pub fn root_operator(conn: &Connection) -> Result<Option<OperatorId>> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'root_operator_id'",
            [],
            |row| row.get(0),
        )
        .optional()?)
}

pub fn set_root_operator(tx: &Transaction, operator_id: &OperatorId) -> Result<()> {
    tx.execute(
        "INSERT INTO settings(key, value) VALUES ('root_operator_id', ?1)",
        [operator_id],
    )?;
    Ok(())
}

pub fn create_auth_key(tx: &Transaction, operator_id: &OperatorId) -> Result<NewAuthKey> {
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

pub fn list_auth_keys(conn: &Connection, operator_id: &OperatorId) -> Result<Vec<AuthKeyInfo>> {
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

pub fn delete_auth_key(
    tx: &Transaction,
    operator_id: &OperatorId,
    auth_key_id: &str,
) -> Result<()> {
    let deleted = tx.execute(
        "DELETE FROM auth_keys WHERE operator_id = ?1 AND auth_key_id = ?2",
        params![operator_id, auth_key_id],
    )?;
    if deleted == 0 {
        return Err(StoreError::NotFound(Entity::AuthKey));
    }
    Ok(())
}

/// The auth key a correct secret names: what `POST /v1/auth` signs a token for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAuthKey {
    pub auth_key_id: String,
    pub operator_id: OperatorId,
    pub last_used_at_ms: Option<i64>,
}

/// Checks an auth key's secret with reads only (a failed login writes nothing); `None` when the
/// key does not exist or the secret is wrong.
pub fn verify_auth_key(
    conn: &Connection,
    auth_key_id: &str,
    secret: &str,
) -> Result<Option<VerifiedAuthKey>> {
    let found: Option<(OperatorId, String, Option<i64>)> = conn
        .prepare_cached(
            "SELECT operator_id, secret_hash, last_used_at FROM auth_keys WHERE auth_key_id = ?1",
        )?
        .query_row([auth_key_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((operator_id, stored_hash, last_used_at_ms)) = found else {
        return Ok(None);
    };
    if !ids::constant_time_eq(&stored_hash, &ids::secret_hash(secret)) {
        return Ok(None);
    }
    Ok(Some(VerifiedAuthKey {
        auth_key_id: auth_key_id.to_string(),
        operator_id,
        last_used_at_ms,
    }))
}

/// Records a sign-in with the key (shown as `lastUsedDateTime`).
pub fn touch_auth_key(tx: &Transaction, auth_key_id: &str, now_ms: i64) -> Result<()> {
    tx.prepare_cached("UPDATE auth_keys SET last_used_at = ?1 WHERE auth_key_id = ?2")?
        .execute(params![now_ms, auth_key_id])?;
    Ok(())
}

/// The operator of auth key `auth_key_id`, while the key exists: tokens live only as long as
/// the key they were issued from.
pub fn auth_key_operator(conn: &Connection, auth_key_id: &str) -> Result<Option<OperatorId>> {
    Ok(conn
        .prepare_cached("SELECT operator_id FROM auth_keys WHERE auth_key_id = ?1")?
        .query_row([auth_key_id], |row| row.get(0))
        .optional()?)
}

/// The server's secret for signing API tokens, made once by schema migration 5.
pub fn token_signing_key(conn: &Connection) -> Result<Vec<u8>> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'token_signing_key'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let key = stored
        .and_then(|hex_key| hex::decode(hex_key).ok())
        .filter(|key| key.len() >= 32)
        .ok_or_else(|| {
            StoreError::Corrupt("the token signing key is missing or malformed".into())
        })?;
    Ok(key)
}

/// API keys signed out with `POST /v1/auth/logout` whose tokens have not yet expired.
pub fn revoked_api_keys(conn: &Connection, now_ms: i64) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn
        .prepare_cached("SELECT api_key, expires_at FROM revoked_api_keys WHERE expires_at > ?1")?;
    let rows = stmt.query_map([now_ms], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Revokes an API key (and so its token) until the token's own expiry; entries past their
/// expiry are dropped here, since an expired token is refused anyway.
pub fn revoke_api_key(
    tx: &Transaction,
    api_key: &str,
    expires_at_ms: i64,
    now_ms: i64,
) -> Result<()> {
    tx.prepare_cached("DELETE FROM revoked_api_keys WHERE expires_at <= ?1")?
        .execute([now_ms])?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO revoked_api_keys(api_key, expires_at) VALUES (?1, ?2)",
    )?
    .execute(params![api_key, expires_at_ms])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    #[test]
    fn auth_keys_verify_with_reads_and_secrets_are_hashed() {
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
            .read(|c| verify_auth_key(c, &key.auth_key_id, "secret-wrong"))
            .expect("read");
        assert!(bad.is_none());
        let unknown = store
            .read(|c| verify_auth_key(c, "keyId-unknown", &key.secret))
            .expect("read");
        assert!(unknown.is_none());
        let verified = store
            .read(|c| verify_auth_key(c, &key.auth_key_id, &key.secret))
            .expect("read")
            .expect("valid key");
        assert_eq!(verified.operator_id, op);
        assert_eq!(verified.last_used_at_ms, None);
        store
            .write(|tx| touch_auth_key(tx, &key.auth_key_id, 1234))
            .expect("touch");
        assert_eq!(
            store.read(|c| list_auth_keys(c, &op)).expect("list")[0].last_used_at_ms,
            Some(1234)
        );
        assert_eq!(
            store
                .read(|c| auth_key_operator(c, &key.auth_key_id))
                .expect("read"),
            Some(op.clone())
        );
        let signing_key = store.read(token_signing_key).expect("signing key");
        assert_eq!(signing_key.len(), 32);
    }

    #[test]
    fn revoked_api_keys_are_listed_until_their_token_expires() {
        let (_dir, store) = temp_store();
        store
            .write(|tx| {
                revoke_api_key(tx, "api-old", 100, 50)?;
                revoke_api_key(tx, "api-new", 1_000, 50)
            })
            .expect("revoke");
        let listed = store.read(|c| revoked_api_keys(c, 200)).expect("read");
        assert_eq!(listed, vec![("api-new".to_string(), 1_000)]);
        store
            .write(|tx| revoke_api_key(tx, "api-third", 2_000, 500))
            .expect("revoke and prune");
        let rows: i64 = store
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM revoked_api_keys", [], |r| r.get(0))?))
            .expect("count");
        assert_eq!(rows, 2, "the entry expired at 100 was pruned");
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
            .write(|tx| create_auth_key(tx, &"OP0000000000".into()))
            .is_err());
    }
}
