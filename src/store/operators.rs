//! Operators, their auth keys (secrets stored hashed) and what API tokens need from the store:
//! the signing key and the API keys revoked by logout (tokens themselves are never stored).
//!
//! Written once for both store engines: every function takes a `&mut dyn Db` (see `store::db`).

use super::db::Db;
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

pub fn create_operator(db: &mut dyn Db) -> Result<OperatorId> {
    loop {
        let operator_id = ids::new_operator_id();
        let inserted = db.execute(
            "INSERT INTO operators(operator_id, created_at) VALUES ($1, $2)
             ON CONFLICT (operator_id) DO NOTHING",
            &[&operator_id, &now_ms()],
        )?;
        if inserted == 1 {
            return Ok(operator_id);
        }
    }
}

pub fn operator_exists(db: &mut dyn Db, operator_id: &OperatorId) -> Result<bool> {
    Ok(db
        .query_opt(
            "SELECT 1 FROM operators WHERE operator_id = $1",
            &[operator_id],
        )?
        .is_some())
}

/// The operator the first `arcd serve` made (whose key is in root-credentials.json), if any.
pub fn root_operator(db: &mut dyn Db) -> Result<Option<OperatorId>> {
    db.query_opt(
        "SELECT value FROM settings WHERE key = 'root_operator_id'",
        &[],
    )?
    .map(|row| row.text(0).map(OperatorId::new))
    .transpose()
}

pub fn set_root_operator(db: &mut dyn Db, operator_id: &OperatorId) -> Result<()> {
    db.execute(
        "INSERT INTO settings(key, value) VALUES ('root_operator_id', $1)",
        &[operator_id],
    )?;
    Ok(())
}

pub fn create_auth_key(db: &mut dyn Db, operator_id: &OperatorId) -> Result<NewAuthKey> {
    if !operator_exists(db, operator_id)? {
        return Err(StoreError::NotFound(Entity::Operator));
    }
    let key = NewAuthKey {
        auth_key_id: ids::new_auth_key_id(),
        secret: ids::new_auth_key_secret(),
    };
    db.execute(
        "INSERT INTO auth_keys(auth_key_id, operator_id, secret_hash, created_at)
         VALUES ($1, $2, $3, $4)",
        &[
            &key.auth_key_id,
            operator_id,
            &ids::secret_hash(&key.secret),
            &now_ms(),
        ],
    )?;
    Ok(key)
}

pub fn list_auth_keys(db: &mut dyn Db, operator_id: &OperatorId) -> Result<Vec<AuthKeyInfo>> {
    db.query(
        "SELECT auth_key_id, created_at, last_used_at FROM auth_keys
         WHERE operator_id = $1 ORDER BY created_at, auth_key_id",
        &[operator_id],
    )?
    .iter()
    .map(|row| {
        Ok(AuthKeyInfo {
            auth_key_id: row.text(0)?,
            created_at_ms: row.int(1)?,
            last_used_at_ms: row.opt_int(2)?,
        })
    })
    .collect()
}

pub fn delete_auth_key(db: &mut dyn Db, operator_id: &OperatorId, auth_key_id: &str) -> Result<()> {
    let deleted = db.execute(
        "DELETE FROM auth_keys WHERE operator_id = $1 AND auth_key_id = $2",
        &[operator_id, &auth_key_id],
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
    db: &mut dyn Db,
    auth_key_id: &str,
    secret: &str,
) -> Result<Option<VerifiedAuthKey>> {
    let Some(row) = db.query_opt(
        "SELECT operator_id, secret_hash, last_used_at FROM auth_keys WHERE auth_key_id = $1",
        &[&auth_key_id],
    )?
    else {
        return Ok(None);
    };
    if !ids::constant_time_eq(&row.text(1)?, &ids::secret_hash(secret)) {
        return Ok(None);
    }
    Ok(Some(VerifiedAuthKey {
        auth_key_id: auth_key_id.to_string(),
        operator_id: OperatorId::new(row.text(0)?),
        last_used_at_ms: row.opt_int(2)?,
    }))
}

/// Records a sign-in with the key (shown as `lastUsedDateTime`).
pub fn touch_auth_key(db: &mut dyn Db, auth_key_id: &str, now_ms: i64) -> Result<()> {
    db.execute(
        "UPDATE auth_keys SET last_used_at = $1 WHERE auth_key_id = $2",
        &[&now_ms, &auth_key_id],
    )?;
    Ok(())
}

/// The operator of auth key `auth_key_id`, while the key exists: tokens live only as long as
/// the key they were issued from.
pub fn auth_key_operator(db: &mut dyn Db, auth_key_id: &str) -> Result<Option<OperatorId>> {
    db.query_opt(
        "SELECT operator_id FROM auth_keys WHERE auth_key_id = $1",
        &[&auth_key_id],
    )?
    .map(|row| row.text(0).map(OperatorId::new))
    .transpose()
}

/// The server's secret for signing API tokens, made once by schema migration 5.
pub fn token_signing_key(db: &mut dyn Db) -> Result<Vec<u8>> {
    let stored = db
        .query_opt(
            "SELECT value FROM settings WHERE key = 'token_signing_key'",
            &[],
        )?
        .map(|row| row.text(0))
        .transpose()?;
    let key = stored
        .and_then(|hex_key| hex::decode(hex_key).ok())
        .filter(|key| key.len() >= 32)
        .ok_or_else(|| {
            StoreError::Corrupt("the token signing key is missing or malformed".into())
        })?;
    Ok(key)
}

/// API keys signed out with `POST /v1/auth/logout` whose tokens have not yet expired.
pub fn revoked_api_keys(db: &mut dyn Db, now_ms: i64) -> Result<Vec<(String, i64)>> {
    db.query(
        "SELECT api_key, expires_at FROM revoked_api_keys WHERE expires_at > $1",
        &[&now_ms],
    )?
    .iter()
    .map(|row| Ok((row.text(0)?, row.int(1)?)))
    .collect()
}

/// Revokes an API key (and so its token) until the token's own expiry; entries past their
/// expiry are dropped here, since an expired token is refused anyway.
pub fn revoke_api_key(
    db: &mut dyn Db,
    api_key: &str,
    expires_at_ms: i64,
    now_ms: i64,
) -> Result<()> {
    db.execute(
        "DELETE FROM revoked_api_keys WHERE expires_at <= $1",
        &[&now_ms],
    )?;
    db.execute(
        "INSERT INTO revoked_api_keys(api_key, expires_at) VALUES ($1, $2)
         ON CONFLICT (api_key) DO UPDATE SET expires_at = excluded.expires_at",
        &[&api_key, &expires_at_ms],
    )?;
    Ok(())
}

/// The same tests on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names a
/// server (scripts/test-postgres.sh).
#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::Backend;

    use crate::store::testing::on_both_engines;

    on_both_engines!(
        auth_keys_verify_with_reads_and_secrets_are_hashed,
        revoked_api_keys_are_listed_until_their_token_expires,
        revoking_again_moves_the_expiry,
        keys_belong_to_their_operator,
        the_root_operator_is_remembered_once,
    );

    fn auth_keys_verify_with_reads_and_secrets_are_hashed(store: &impl Backend) {
        let (op, key) = store
            .write_db(|db| {
                let op = create_operator(db)?;
                let key = create_auth_key(db, &op)?;
                Ok((op, key))
            })
            .expect("create");
        let stored = store
            .read_db(|db| {
                db.query_one("SELECT secret_hash FROM auth_keys", &[])?
                    .text(0)
            })
            .expect("read");
        assert!(
            !stored.contains(&key.secret),
            "secret must be stored hashed"
        );
        let bad = store
            .read_db(|db| verify_auth_key(db, &key.auth_key_id, "secret-wrong"))
            .expect("read");
        assert!(bad.is_none());
        let unknown = store
            .read_db(|db| verify_auth_key(db, "keyId-unknown", &key.secret))
            .expect("read");
        assert!(unknown.is_none());
        let verified = store
            .read_db(|db| verify_auth_key(db, &key.auth_key_id, &key.secret))
            .expect("read")
            .expect("valid key");
        assert_eq!(verified.operator_id, op);
        assert_eq!(verified.last_used_at_ms, None);
        store
            .write_db(|db| touch_auth_key(db, &key.auth_key_id, 1234))
            .expect("touch");
        let listed = store.read_db(|db| list_auth_keys(db, &op)).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].auth_key_id, key.auth_key_id);
        assert_eq!(listed[0].last_used_at_ms, Some(1234));
        assert_eq!(
            store
                .read_db(|db| auth_key_operator(db, &key.auth_key_id))
                .expect("read"),
            Some(op.clone())
        );
        assert_eq!(
            store
                .read_db(|db| auth_key_operator(db, "keyId-unknown"))
                .expect("read"),
            None
        );
        let signing_key = store.read_db(token_signing_key).expect("signing key");
        assert_eq!(signing_key.len(), 32);
    }

    fn revoked_api_keys_are_listed_until_their_token_expires(store: &impl Backend) {
        store
            .write_db(|db| {
                revoke_api_key(db, "api-old", 100, 50)?;
                revoke_api_key(db, "api-new", 1_000, 50)
            })
            .expect("revoke");
        let listed = store.read_db(|db| revoked_api_keys(db, 200)).expect("read");
        assert_eq!(listed, vec![("api-new".to_string(), 1_000)]);
        store
            .write_db(|db| revoke_api_key(db, "api-third", 2_000, 500))
            .expect("revoke and prune");
        assert_eq!(
            revoked_rows(store),
            2,
            "the entry expired at 100 was pruned"
        );
    }

    /// Revoking a key that is already revoked replaces its expiry (what `INSERT OR REPLACE` did).
    fn revoking_again_moves_the_expiry(store: &impl Backend) {
        store
            .write_db(|db| revoke_api_key(db, "api-twice", 1_000, 0))
            .expect("revoke");
        store
            .write_db(|db| revoke_api_key(db, "api-twice", 3_000, 0))
            .expect("revoke again");
        let listed = store
            .read_db(|db| revoked_api_keys(db, 2_000))
            .expect("read");
        assert_eq!(listed, vec![("api-twice".to_string(), 3_000)]);
        assert_eq!(revoked_rows(store), 1);
    }

    fn revoked_rows(store: &impl Backend) -> i64 {
        store
            .read_db(|db| {
                db.query_one("SELECT COUNT(*) FROM revoked_api_keys", &[])?
                    .int(0)
            })
            .expect("count")
    }

    fn keys_belong_to_their_operator(store: &impl Backend) {
        let (a, b, key) = store
            .write_db(|db| {
                let a = create_operator(db)?;
                let b = create_operator(db)?;
                let key = create_auth_key(db, &a)?;
                Ok((a, b, key))
            })
            .expect("create");
        assert!(store.read_db(|db| operator_exists(db, &a)).expect("exists"));
        let err = store
            .write_db(|db| delete_auth_key(db, &b, &key.auth_key_id))
            .expect_err("other operator");
        assert!(matches!(err, StoreError::NotFound(Entity::AuthKey)));
        store
            .write_db(|db| delete_auth_key(db, &a, &key.auth_key_id))
            .expect("own key");
        let unknown = OperatorId::new("OP0000000000");
        assert!(!store
            .read_db(|db| operator_exists(db, &unknown))
            .expect("exists"));
        assert!(matches!(
            store.write_db(|db| create_auth_key(db, &unknown)),
            Err(StoreError::NotFound(Entity::Operator))
        ));
    }

    fn the_root_operator_is_remembered_once(store: &impl Backend) {
        assert_eq!(store.read_db(root_operator).expect("read"), None);
        let root = store
            .write_db(|db| {
                let op = create_operator(db)?;
                set_root_operator(db, &op)?;
                Ok(op)
            })
            .expect("root");
        assert_eq!(store.read_db(root_operator).expect("read"), Some(root));
        let again = store.write_db(|db| {
            let op = create_operator(db)?;
            set_root_operator(db, &op)
        });
        match again {
            Err(e) => assert!(e.is_unique_violation(), "{e}"),
            Ok(()) => panic!("a second root operator was recorded"),
        }
    }
}
