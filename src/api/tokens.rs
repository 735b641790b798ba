//! API tokens that need no database write: a token is its operator, auth key and expiry, signed
//! with HMAC-SHA256 under the store's signing key, and bound to the API key it was issued with.
//! A signed token is honoured while it has not expired, its auth key still exists (deleting the
//! key revokes every token issued from it) and its API key was not signed out with
//! `POST /v1/auth/logout`. Both facts are kept in memory after their first read, and this
//! process's deletions and logouts update that memory at once; tokens survive a restart because
//! the signing key and the logout list are in the store.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use parking_lot::RwLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

use crate::ids::OperatorId;
use crate::store::db::Backend;
use crate::store::operators::{self, VerifiedAuthKey};
use crate::store::{now_ms, Store};

#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(TokenClaims),
    Expired,
    Invalid,
}

/// What a correctly signed token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub api_key: String,
    pub operator_id: OperatorId,
    pub auth_key_id: String,
    pub expires_at_ms: i64,
}

/// Label mixed into every signature, so a signature of anything else never passes as a token.
const TOKEN_CONTEXT: &str = "arcd-api-token-v1";

/// The signing key and the logout list, read from the store once.
struct Loaded {
    key: hmac::Key,
    /// Signed-out API key -> its token's expiry (after which the entry is useless).
    revoked: RwLock<HashMap<String, i64>>,
}

#[derive(Default)]
struct AuthKeys {
    /// Auth keys known to exist -> their operator.
    existing: HashMap<String, OperatorId>,
    /// Auth keys this process deleted. Ids are random and never reused, so a deleted id stays
    /// dead; remembering it stops a check that read the key just before its deletion from
    /// caching it again afterwards.
    deleted: HashSet<String>,
}

#[derive(Default)]
pub struct Tokens {
    loaded: OnceLock<Loaded>,
    auth_keys: RwLock<AuthKeys>,
    /// When this process last recorded a sign-in of each auth key (see `should_touch`).
    touched: RwLock<HashMap<String, i64>>,
}

/// A key's `lastUsedDateTime` is refreshed at most this often, so a client signing in over and
/// over costs no write per sign-in.
const TOUCH_INTERVAL_MS: i64 = 60_000;
/// Above this many remembered sign-in times, old ones are swept.
const TOUCH_SWEEP_THRESHOLD: usize = 10_000;

impl Tokens {
    /// Reads the signing key and logout list on first use (reads only).
    pub fn load(&self, store: &Store) -> crate::store::Result<()> {
        if self.loaded.get().is_some() {
            return Ok(());
        }
        let now = now_ms();
        let (key, revoked) = store.read_db(|db| {
            Ok((
                operators::token_signing_key(db)?,
                operators::revoked_api_keys(db, now)?,
            ))
        })?;
        let _ = self.loaded.set(Loaded {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            revoked: RwLock::new(revoked.into_iter().collect()),
        });
        Ok(())
    }

    /// A new token for `api_key` from a verified auth key; `None` before `load`.
    pub fn issue(
        &self,
        api_key: &str,
        key: &VerifiedAuthKey,
        expires_at_ms: i64,
    ) -> Option<String> {
        let loaded = self.loaded.get()?;
        let payload = format!("{}:{}:{}", key.operator_id, key.auth_key_id, expires_at_ms);
        let signature = hmac::sign(&loaded.key, &signed_bytes(api_key, &payload));
        self.remember_existing_key(&key.auth_key_id, &key.operator_id);
        Some(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Answers from memory when it can; `None` means "load, or look the auth key up in the
    /// store" (`check_in_store`).
    pub fn check(&self, api_key: &str, token: &str) -> Option<TokenCheck> {
        let loaded = self.loaded.get()?;
        let claims = match self.verify(loaded, api_key, token) {
            Ok(claims) => claims,
            Err(answer) => return Some(answer),
        };
        let auth_keys = self.auth_keys.read();
        if auth_keys.deleted.contains(&claims.auth_key_id) {
            return Some(TokenCheck::Invalid);
        }
        match auth_keys.existing.get(&claims.auth_key_id) {
            Some(operator_id) if *operator_id == claims.operator_id => {
                Some(TokenCheck::Valid(claims))
            }
            Some(_) => Some(TokenCheck::Invalid),
            None => None,
        }
    }

    /// The full check, reading what memory does not hold yet (reads only).
    pub fn check_in_store(
        &self,
        store: &Store,
        api_key: &str,
        token: &str,
    ) -> crate::store::Result<TokenCheck> {
        self.load(store)?;
        if let Some(answer) = self.check(api_key, token) {
            return Ok(answer);
        }
        let Some(loaded) = self.loaded.get() else {
            return Ok(TokenCheck::Invalid);
        };
        let claims = match self.verify(loaded, api_key, token) {
            Ok(claims) => claims,
            Err(answer) => return Ok(answer),
        };
        let owner = store.read_db(|db| operators::auth_key_operator(db, &claims.auth_key_id))?;
        match owner {
            Some(operator_id) if operator_id == claims.operator_id => {
                if self.remember_existing_key(&claims.auth_key_id, &operator_id) {
                    Ok(TokenCheck::Valid(claims))
                } else {
                    Ok(TokenCheck::Invalid)
                }
            }
            _ => Ok(TokenCheck::Invalid),
        }
    }

    /// Forgets a deleted auth key: its tokens are refused from the next request on. Call after
    /// the deletion committed.
    pub fn auth_key_deleted(&self, auth_key_id: &str) {
        let mut auth_keys = self.auth_keys.write();
        auth_keys.existing.remove(auth_key_id);
        auth_keys.deleted.insert(auth_key_id.to_string());
    }

    /// Refuses `api_key` from now on. Call after the revocation committed.
    pub fn api_key_revoked(&self, api_key: &str, expires_at_ms: i64) {
        let Some(loaded) = self.loaded.get() else {
            return;
        };
        let now = now_ms();
        let mut revoked = loaded.revoked.write();
        revoked.retain(|_, expiry| *expiry > now);
        revoked.insert(api_key.to_string(), expires_at_ms);
    }

    /// Whether a sign-in with `auth_key_id` should be recorded now (at most once a minute per
    /// key, whatever the store says, so a stalled writer does not collect one write per login).
    pub fn should_touch(&self, auth_key_id: &str, last_used_at_ms: Option<i64>, now: i64) -> bool {
        if last_used_at_ms.is_some_and(|at| now - at < TOUCH_INTERVAL_MS) {
            return false;
        }
        let mut touched = self.touched.write();
        if touched
            .get(auth_key_id)
            .is_some_and(|at| now - at < TOUCH_INTERVAL_MS)
        {
            return false;
        }
        if touched.len() >= TOUCH_SWEEP_THRESHOLD {
            touched.retain(|_, at| now - *at < TOUCH_INTERVAL_MS);
        }
        touched.insert(auth_key_id.to_string(), now);
        true
    }

    /// `false` when the key was deleted meanwhile (then it is not remembered).
    fn remember_existing_key(&self, auth_key_id: &str, operator_id: &OperatorId) -> bool {
        let mut auth_keys = self.auth_keys.write();
        if auth_keys.deleted.contains(auth_key_id) {
            return false;
        }
        auth_keys
            .existing
            .insert(auth_key_id.to_string(), operator_id.clone());
        true
    }

    /// Signature, expiry and logout; the auth key is the caller's part.
    fn verify(
        &self,
        loaded: &Loaded,
        api_key: &str,
        token: &str,
    ) -> Result<TokenClaims, TokenCheck> {
        let (payload_text, signature_text) = token.split_once('.').ok_or(TokenCheck::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_text)
            .map_err(|_| TokenCheck::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_text)
            .map_err(|_| TokenCheck::Invalid)?;
        let payload = String::from_utf8(payload).map_err(|_| TokenCheck::Invalid)?;
        // Constant-time comparison of the signature (ring's verify).
        hmac::verify(&loaded.key, &signed_bytes(api_key, &payload), &signature)
            .map_err(|_| TokenCheck::Invalid)?;
        let mut fields = payload.split(':');
        let (Some(operator_id), Some(auth_key_id), Some(expiry), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenCheck::Invalid);
        };
        let expires_at_ms: i64 = expiry.parse().map_err(|_| TokenCheck::Invalid)?;
        let revoked = loaded.revoked.read();
        if revoked.contains_key(api_key) {
            return Err(TokenCheck::Invalid);
        }
        drop(revoked);
        if expires_at_ms <= now_ms() {
            return Err(TokenCheck::Expired);
        }
        Ok(TokenClaims {
            api_key: api_key.to_string(),
            operator_id: OperatorId::new(operator_id),
            auth_key_id: auth_key_id.to_string(),
            expires_at_ms,
        })
    }
}

/// What is signed: the context label, the API key the token is bound to, and the payload.
fn signed_bytes(api_key: &str, payload: &str) -> Vec<u8> {
    format!("{TOKEN_CONTEXT}\n{api_key}\n{payload}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    fn signed_in(tokens: &Tokens, store: &Store) -> (VerifiedAuthKey, String, String) {
        let key = store
            .write_db(|db| {
                let op = operators::create_operator(db)?;
                operators::create_auth_key(db, &op)
            })
            .expect("create");
        let verified = store
            .read_db(|db| operators::verify_auth_key(db, &key.auth_key_id, &key.secret))
            .expect("read")
            .expect("valid");
        tokens.load(store).expect("load");
        let api_key = crate::ids::new_api_key();
        let token = tokens
            .issue(&api_key, &verified, now_ms() + 60_000)
            .expect("loaded");
        (verified, api_key, token)
    }

    #[test]
    fn tokens_are_bound_to_their_api_key_signature_and_auth_key() {
        let (_dir, store) = temp_store();
        let tokens = Tokens::default();
        let (key, api_key, token) = signed_in(&tokens, &store);
        let valid = tokens.check(&api_key, &token).expect("known key");
        assert!(
            matches!(&valid, TokenCheck::Valid(c) if c.operator_id == key.operator_id),
            "{valid:?}"
        );
        let other_api_key = crate::ids::new_api_key();
        assert_eq!(
            tokens.check(&other_api_key, &token),
            Some(TokenCheck::Invalid)
        );
        let mut tampered = token.clone();
        tampered.push('A');
        assert_eq!(tokens.check(&api_key, &tampered), Some(TokenCheck::Invalid));
        assert_eq!(tokens.check(&api_key, "x"), Some(TokenCheck::Invalid));

        // A fresh process (same store) accepts the token after reading the auth key.
        let restarted = Tokens::default();
        assert_eq!(restarted.check(&api_key, &token), None, "not loaded yet");
        let check = restarted
            .check_in_store(&store, &api_key, &token)
            .expect("read");
        assert!(matches!(check, TokenCheck::Valid(_)), "{check:?}");

        tokens.auth_key_deleted(&key.auth_key_id);
        assert_eq!(tokens.check(&api_key, &token), Some(TokenCheck::Invalid));
        assert_eq!(
            tokens
                .check_in_store(&store, &api_key, &token)
                .expect("read"),
            TokenCheck::Invalid,
            "a deleted key is never cached again"
        );
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused() {
        let (_dir, store) = temp_store();
        let tokens = Tokens::default();
        let (key, api_key, _) = signed_in(&tokens, &store);
        let expired = tokens.issue(&api_key, &key, now_ms() - 1).expect("loaded");
        assert_eq!(tokens.check(&api_key, &expired), Some(TokenCheck::Expired));

        let api_key = crate::ids::new_api_key();
        let token = tokens
            .issue(&api_key, &key, now_ms() + 60_000)
            .expect("loaded");
        tokens.api_key_revoked(&api_key, now_ms() + 60_000);
        assert_eq!(tokens.check(&api_key, &token), Some(TokenCheck::Invalid));
    }

    #[test]
    fn sign_ins_are_recorded_at_most_once_a_minute() {
        let tokens = Tokens::default();
        assert!(tokens.should_touch("k", None, 1_000_000));
        assert!(!tokens.should_touch("k", None, 1_000_001));
        assert!(!tokens.should_touch("j", Some(999_999), 1_000_000));
        assert!(tokens.should_touch("k", Some(0), 1_000_000 + TOUCH_INTERVAL_MS));
    }
}
