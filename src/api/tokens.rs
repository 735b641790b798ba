//! Token checks without a database round trip on every request: valid tokens are remembered in
//! memory after their first use. Tokens cannot be changed once issued, so the cache can only be
//! stale about expiry, which it checks itself.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::ids;
use crate::store::operators::{self, TokenCheck};
use crate::store::{now_ms, Store};

#[derive(Clone)]
struct CachedToken {
    token_hash: String,
    operator_id: String,
    expires_at_ms: i64,
}

#[derive(Default)]
pub struct TokenCache {
    tokens: RwLock<HashMap<String, CachedToken>>,
}

/// Above this many cached tokens, expired ones are swept on insert.
const SWEEP_THRESHOLD: usize = 10_000;

impl TokenCache {
    /// Answers from memory when it can; `None` means "ask the store".
    pub fn check(&self, api_key: &str, token: &str) -> Option<TokenCheck> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let cached = tokens.get(api_key)?;
        if !ids::constant_time_eq(&cached.token_hash, &ids::secret_hash(token)) {
            return Some(TokenCheck::Invalid);
        }
        if cached.expires_at_ms <= now_ms() {
            return Some(TokenCheck::Expired);
        }
        Some(TokenCheck::Valid {
            operator_id: cached.operator_id.clone(),
        })
    }

    /// Store lookup for a token not yet in memory; valid ones are remembered.
    pub fn check_in_store(
        &self,
        store: &Store,
        api_key: &str,
        token: &str,
    ) -> crate::store::Result<TokenCheck> {
        let found = store.read(|conn| operators::token_record(conn, api_key))?;
        let Some(record) = found else {
            return Ok(TokenCheck::Invalid);
        };
        let cached = CachedToken {
            token_hash: record.token_hash,
            operator_id: record.operator_id,
            expires_at_ms: record.expires_at_ms,
        };
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= SWEEP_THRESHOLD {
            let now = now_ms();
            tokens.retain(|_, t| t.expires_at_ms > now);
        }
        tokens.insert(api_key.to_string(), cached);
        drop(tokens);
        Ok(self.check(api_key, token).unwrap_or(TokenCheck::Invalid))
    }
}
