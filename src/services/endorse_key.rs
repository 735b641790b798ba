//! Endorse's signing key: RSA 2048, tokens signed RS256 as SORACOM's are, so a verifier written
//! for SORACOM's tokens needs only arcd's published key.
//!
//! The key is made on first use (a device asking for a token, or the API asked for the JWKS) and
//! kept in the store (`store::endorse`), not in one node's data directory: every node sharing
//! the store signs with the same key and every node's API publishes it. Only the public half ever
//! leaves the process; the private key is never logged.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::store::db::Backend;
use crate::store::{endorse, Store, StoreError};

const KEY_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum EndorseKeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot generate the Endorse signing key: {0}")]
    Generate(String),
    #[error("the stored Endorse signing key is unusable: {0}")]
    Unusable(String),
    #[error("signing an Endorse token failed")]
    Sign,
    #[error("the key task failed: {0}")]
    Task(String),
}

/// The private key ready to sign, with its public half as a JWK.
pub struct SigningKey {
    kid: String,
    key_pair: RsaKeyPair,
    jwk: Value,
}

/// Names only the key id: the private key must never reach a log line.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From the stored form, base64 of the PKCS#8 DER.
    pub fn from_stored(stored: &str) -> Result<SigningKey, EndorseKeyError> {
        let unusable = |e: String| EndorseKeyError::Unusable(e);
        let der = STANDARD
            .decode(stored.trim())
            .map_err(|e| unusable(e.to_string()))?;
        let key_pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| unusable(e.to_string()))?;
        let parts =
            rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| unusable(e.to_string()))?;
        let (n, e) = (parts.n().to_bytes_be(), parts.e().to_bytes_be());
        // The id names the public key, so a verifier holding several keys picks the right one.
        let digest = ring::digest::digest(&ring::digest::SHA256, &[n.as_slice(), &e].concat());
        let kid = format!("arcd-endorse-{}", hex::encode(&digest.as_ref()[..16]));
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
        });
        Ok(SigningKey { kid, key_pair, jwk })
    }

    /// A new key in its stored form.
    pub fn generate() -> Result<String, EndorseKeyError> {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS)
            .map_err(|e| EndorseKeyError::Generate(e.to_string()))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| EndorseKeyError::Generate(e.to_string()))?;
        Ok(STANDARD.encode(der.as_bytes()))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JSON Web Key (RFC 7517).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A compact JWS (RFC 7515) of `claims`, header `{"kid", "alg": "RS256"}` as SORACOM's.
    pub fn sign(&self, claims: &Value) -> Result<String, EndorseKeyError> {
        let header = json!({ "kid": self.kid, "alg": "RS256" });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| EndorseKeyError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(&signature)
        ))
    }
}

/// The stored key, or a new one kept unless another node stored one first (then that one).
pub fn load_or_create(store: &Store) -> Result<SigningKey, EndorseKeyError> {
    if let Some(stored) = store.read_db(endorse::signing_key)? {
        return SigningKey::from_stored(&stored);
    }
    let generated = SigningKey::generate()?;
    let kept = store.write_db(|db| endorse::keep_first_signing_key(db, &generated))?;
    let key = SigningKey::from_stored(&kept)?;
    tracing::info!(kid = %key.kid(), "Endorse signing key in use");
    Ok(key)
}

/// The key, loaded (or made) once per process on first use, off the async workers.
pub struct EndorseKeys {
    store: Arc<Store>,
    key: OnceCell<Arc<SigningKey>>,
}

impl EndorseKeys {
    pub fn new(store: Arc<Store>) -> EndorseKeys {
        EndorseKeys {
            store,
            key: OnceCell::new(),
        }
    }

    pub async fn current(&self) -> Result<Arc<SigningKey>, EndorseKeyError> {
        let key = self
            .key
            .get_or_try_init(|| async {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || load_or_create(&store).map(Arc::new))
                    .await
                    .map_err(|e| EndorseKeyError::Task(e.to_string()))?
            })
            .await?;
        Ok(key.clone())
    }

    /// `{"keys": [JWK]}`, what a verifier fetches (RFC 7517 section 5).
    pub async fn jwks(&self) -> Result<Value, EndorseKeyError> {
        let key = self.current().await?;
        Ok(json!({ "keys": [key.jwk()] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};

    fn public_of(jwk: &Value) -> RsaPublicKeyComponents<Vec<u8>> {
        let field = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().expect("field"))
                .expect("base64url")
        };
        RsaPublicKeyComponents {
            n: field("n"),
            e: field("e"),
        }
    }

    #[test]
    fn a_token_verifies_with_the_published_key_and_a_changed_one_does_not() {
        let key = SigningKey::from_stored(&SigningKey::generate().expect("key")).expect("load");
        let token = key.sign(&json!({"sub": "soracom-endorse"})).expect("sign");
        let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        let public = public_of(key.jwk());
        public
            .verify(
                &RSA_PKCS1_2048_8192_SHA256,
                signing_input.as_bytes(),
                &signature,
            )
            .expect("verifies");
        let mut tampered = signing_input.as_bytes().to_vec();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(public
            .verify(&RSA_PKCS1_2048_8192_SHA256, &tampered, &signature)
            .is_err());
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(signing_input.split('.').next().expect("header"))
                .expect("base64url"),
        )
        .expect("json");
        assert_eq!(header, json!({"kid": key.kid(), "alg": "RS256"}));
        assert_eq!(key.jwk()["kid"], key.kid());
    }

    #[test]
    fn the_key_is_made_once_and_reloaded_from_the_store() {
        let (_dir, store) = crate::store::testing::temp_store();
        let first = load_or_create(&store).expect("made");
        let again = load_or_create(&store).expect("loaded");
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.jwk(), again.jwk());
        assert!(!format!("{first:?}").contains("key_pair"));
    }

    /// Nodes sharing a store that all make a key at once end up signing with the one kept.
    fn racing_first_uses_agree_on_one_key(store: &Store) {
        let kids: Vec<String> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| load_or_create(store).expect("key").kid().to_string()))
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().expect("racer"))
                .collect()
        });
        assert!(kids.iter().all(|kid| *kid == kids[0]), "{kids:?}");
        assert_eq!(load_or_create(store).expect("key").kid(), kids[0]);
    }

    #[test]
    fn racing_first_uses_agree_on_one_key_sqlite() {
        let (_dir, store) = crate::store::testing::temp_store();
        racing_first_uses_agree_on_one_key(&store);
    }

    #[test]
    fn racing_first_uses_agree_on_one_key_postgres() {
        if let Some(pg) = crate::store::db::testing::temp_pg_store() {
            racing_first_uses_agree_on_one_key(&Store::Postgres(pg));
        }
    }

    #[test]
    fn a_corrupt_stored_key_is_an_error_not_a_new_key() {
        assert!(matches!(
            SigningKey::from_stored("bm90IGEga2V5"),
            Err(EndorseKeyError::Unusable(_))
        ));
    }
}
