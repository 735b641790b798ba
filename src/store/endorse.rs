//! Endorse's token signing key, kept in the store's `settings` (no schema change) so that every
//! arcd node sharing the store signs with the same key and any node's API publishes it.
//! The value is the PKCS#8 DER of the RSA private key in base64; it never leaves arcd except in
//! the store's own backups.

use super::db::Db;
use super::Result;

const SETTING: &str = "endorse_signing_key";

/// The stored key (base64 PKCS#8 DER), if one was made.
pub fn signing_key(db: &mut dyn Db) -> Result<Option<String>> {
    db.query_opt("SELECT value FROM settings WHERE key = $1", &[&SETTING])?
        .map(|row| row.text(0))
        .transpose()
}

/// Keeps `key` unless another node (or request) stored one first; either way returns the key that
/// is now stored, so concurrent first uses all end up signing with one key.
pub fn keep_first_signing_key(db: &mut dyn Db, key: &str) -> Result<String> {
    db.execute(
        "INSERT INTO settings(key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        &[&SETTING, &key],
    )?;
    db.query_one("SELECT value FROM settings WHERE key = $1", &[&SETTING])?
        .text(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::Backend;

    use crate::store::testing::on_both_engines;

    on_both_engines!(the_first_stored_key_wins);

    fn the_first_stored_key_wins(store: &impl Backend) {
        assert_eq!(store.read_db(signing_key).expect("read"), None);
        let kept = store
            .write_db(|db| keep_first_signing_key(db, "first"))
            .expect("keep");
        assert_eq!(kept, "first");
        let kept = store
            .write_db(|db| keep_first_signing_key(db, "second"))
            .expect("keep again");
        assert_eq!(kept, "first");
        assert_eq!(
            store.read_db(signing_key).expect("read"),
            Some("first".to_string())
        );
    }
}
