//! Identifier formats (docs/ARCHITECTURE.md, "Identities and formats") and the secrets that go
//! with them; the id types themselves (`SimId`, `Imsi`, …) are in `typed.rs`.

mod typed;

pub use typed::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `true` when the last digit of `digits` is the Luhn check digit of the rest.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (body, check) = digits.split_at(digits.len() - 1);
    luhn_check_digit(body) == check.as_bytes()[0] - b'0'
}

/// The digit that makes `body` + digit pass the Luhn check. `body` must be ASCII digits.
pub fn luhn_check_digit(body: &str) -> u8 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - (sum % 10)) % 10) as u8
}

/// 19-digit ICCID: `prefix`, the sequence number zero-padded, then the Luhn check digit.
pub fn iccid_from_sequence(prefix: &str, sequence: u64) -> String {
    let width = 18 - prefix.len();
    let body = format!("{prefix}{sequence:0width$}");
    let check = luhn_check_digit(&body);
    format!("{body}{check}")
}

/// Largest sequence number an ICCID with this prefix can hold.
pub fn iccid_capacity(prefix: &str) -> u64 {
    10u64.pow(18 - prefix.len() as u32) - 1
}

pub const VIRTUAL_IMSI_PREFIX: &str = "99999";
pub const VIRTUAL_IMSI_CAPACITY: u64 = 9_999_999_999;

/// 15-digit virtual IMSI: `99999` + 10 digits.
pub fn virtual_imsi_from_sequence(sequence: u64) -> Imsi {
    Imsi::new(format!("{VIRTUAL_IMSI_PREFIX}{sequence:010}"))
}

fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn new_operator_id() -> OperatorId {
    let n: u64 = rand::thread_rng().gen_range(0..10_000_000_000);
    OperatorId::new(format!("OP{n:010}"))
}

pub fn new_auth_key_id() -> String {
    format!("keyId-{}", random_alphanumeric(32))
}

pub fn new_auth_key_secret() -> String {
    format!("secret-{}", random_alphanumeric(64))
}

pub fn new_api_key() -> String {
    format!("api-{}", uuid::Uuid::new_v4())
}

pub fn new_group_id() -> GroupId {
    GroupId::new(uuid::Uuid::new_v4().to_string())
}

/// VPG ids are random UUIDs (the official spec gives no format or example).
pub fn new_vpg_id() -> VpgId {
    VpgId::new(uuid::Uuid::new_v4().to_string())
}

pub fn new_session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Hash of a high-entropy secret (an auth key secret). These are random 64-character strings, so
/// a fast hash is enough; a password hash would only slow every request.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two secret hashes in time independent of where they differ (`subtle`), so response
/// timing does not reveal how much of a guessed secret's hash matched. Only a length difference
/// returns early, and hashes of one kind all have the same length.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        // Check digits from the ISO/IEC 7812 examples.
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("79927398710"));
        assert_eq!(luhn_check_digit("7992739871"), 3);
        assert!(!luhn_valid("12a"));
    }

    #[test]
    fn iccids_are_19_luhn_valid_digits() {
        for seq in [0, 1, 42, 99_999, iccid_capacity("8942")] {
            let iccid = iccid_from_sequence("8942", seq);
            assert_eq!(iccid.len(), 19, "{iccid}");
            assert!(iccid.starts_with("8942"));
            assert!(luhn_valid(&iccid), "{iccid}");
        }
    }

    #[test]
    fn imsis_are_15_digits() {
        let imsi = virtual_imsi_from_sequence(7);
        assert_eq!(imsi, "999990000000007");
        assert_eq!(
            virtual_imsi_from_sequence(VIRTUAL_IMSI_CAPACITY)
                .as_str()
                .len(),
            15
        );
    }

    #[test]
    fn key_formats() {
        let id = new_auth_key_id();
        assert!(id.starts_with("keyId-") && id.len() == 6 + 32);
        let secret = new_auth_key_secret();
        assert!(secret.starts_with("secret-") && secret.len() == 7 + 64);
        let op = new_operator_id();
        assert!(op.as_str().starts_with("OP") && op.as_str().len() == 12);
        assert!(new_api_key().starts_with("api-"));
    }

    #[test]
    fn hashing() {
        assert_eq!(secret_hash("a"), secret_hash("a"));
        assert_ne!(secret_hash("a"), secret_hash("b"));
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
