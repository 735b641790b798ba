//! WireGuard (X25519) key pairs in the base64 form WireGuard tools use.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use x25519_dalek::{PublicKey, StaticSecret};

/// A key pair whose private half must never be logged. `Debug` shows only the public key.
#[derive(Clone)]
pub struct KeyPair {
    pub private_key: String,
    pub public_key: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

pub fn generate() -> KeyPair {
    let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = PublicKey::from(&secret);
    KeyPair {
        private_key: STANDARD.encode(secret.to_bytes()),
        public_key: STANDARD.encode(public.as_bytes()),
    }
}

/// Parses a base64 WireGuard key (32 bytes) and returns it in canonical form.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// Public key of a base64 private key.
pub fn public_from_private(private_key: &str) -> Option<String> {
    let bytes = parse_key(private_key)?;
    let public = PublicKey::from(&StaticSecret::from(bytes));
    Some(STANDARD.encode(public.as_bytes()))
}

pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_match() {
        let pair = generate();
        assert_eq!(pair.private_key.len(), 44);
        assert_eq!(
            public_from_private(&pair.private_key).as_deref(),
            Some(pair.public_key.as_str())
        );
        assert!(!format!("{pair:?}").contains(&pair.private_key));
    }

    #[test]
    fn parse_rejects_bad_keys() {
        assert!(parse_key("not base64!").is_none());
        assert!(parse_key("AAAA").is_none());
        assert!(parse_key(&generate().public_key).is_some());
    }
}
