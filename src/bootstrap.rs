//! Opening the data directory: SQLite file, rendezvous point keys and, on the first start, the
//! root operator with its auth key written to `root-credentials.json`.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::store::{self, operators, rendezvous, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub const DATABASE_FILE: &str = "arcd.sqlite";
pub const ROOT_CREDENTIALS_FILE: &str = "root-credentials.json";

/// Contents of `root-credentials.json` (DESIGN.md section 7).
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootCredentials {
    pub operator_id: String,
    pub auth_key_id: String,
    pub auth_key: String,
}

/// Creates the data directory (mode 0700) and opens the store, its file mode 0600 because it holds
/// server private keys (SQLite gives the -wal and -shm files the same mode). Rendezvous points are
/// brought in line with the configuration.
pub fn open_store(config: &Config) -> Result<Store, BootstrapError> {
    let dir = &config.data_dir;
    let dir_error = |source| BootstrapError::DataDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
    let db_path = dir.join(DATABASE_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db_path)
        .map_err(dir_error)?;
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600))
        .map_err(dir_error)?;
    let store = Store::open(&db_path)?;
    store.write(|tx| rendezvous::sync(tx, &config.rendezvous_points))?;
    Ok(store)
}

/// On the very first start (no root operator yet) makes the root operator and auth key, writes them to
/// `root-credentials.json` and returns them so the caller can print them once.
pub fn ensure_root_operator(
    store: &Store,
    data_dir: &Path,
) -> Result<Option<RootCredentials>, BootstrapError> {
    let existing = store.read(operators::root_operator)?;
    if existing.is_some() {
        return Ok(None);
    }
    let path = data_dir.join(ROOT_CREDENTIALS_FILE);
    // The file is written inside the transaction: if it cannot be written, no operator exists
    // whose secret nobody knows.
    let credentials = store.write(|tx| {
        let operator_id = operators::create_operator(tx)?;
        operators::set_root_operator(tx, &operator_id)?;
        let key = operators::create_auth_key(tx, &operator_id)?;
        let credentials = RootCredentials {
            operator_id,
            auth_key_id: key.auth_key_id.clone(),
            auth_key: key.secret.clone(),
        };
        let json = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        crate::fsutil::write_private(&path, &json)
            .map_err(|e| StoreError::Corrupt(format!("cannot write {}: {e}", path.display())))?;
        Ok(credentials)
    })?;
    Ok(Some(credentials))
}

pub fn read_root_credentials(data_dir: &Path) -> Option<RootCredentials> {
    let text = std::fs::read(data_dir.join(ROOT_CREDENTIALS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Session placement from the configuration, warning when a named rendezvous point is missing.
pub fn session_policy(config: &Config) -> store::sessions::SessionPolicy {
    for (key, wanted) in [
        (
            "coverage.jp_rendezvous_point",
            &config.coverage.jp_rendezvous_point,
        ),
        (
            "coverage.global_rendezvous_point",
            &config.coverage.global_rendezvous_point,
        ),
    ] {
        if config.rendezvous_point(wanted).is_none() {
            tracing::warn!(
                key,
                wanted = %wanted,
                using = %config.rendezvous_points[0].id,
                "rendezvous point is not configured; falling back to the first one"
            );
        }
    }
    store::sessions::SessionPolicy {
        jp_rendezvous_point: config
            .rendezvous_point_for(crate::config::Coverage::Jp)
            .id
            .clone(),
        global_rendezvous_point: config
            .rendezvous_point_for(crate::config::Coverage::G)
            .id
            .clone(),
        address_quarantine_ms: (config.sims.address_quarantine_seconds as i64).saturating_mul(1000),
        rendezvous_points: config
            .rendezvous_points
            .iter()
            .map(|rp| rp.id.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_made_by_the_cli_before_first_start_is_not_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let store = open_store(&config).expect("open");
        let cli_operator = store
            .write(operators::create_operator)
            .expect("cli operator");
        let root = ensure_root_operator(&store, &config.data_dir)
            .expect("bootstrap")
            .expect("serve still makes the root operator");
        assert_ne!(root.operator_id, cli_operator);
        assert!(read_root_credentials(&config.data_dir).is_some());
    }

    #[test]
    fn first_start_writes_credentials_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let store = open_store(&config).expect("open");
        let first = ensure_root_operator(&store, &config.data_dir)
            .expect("bootstrap")
            .expect("first start creates");
        let path = config.data_dir.join(ROOT_CREDENTIALS_FILE);
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let db_mode = std::fs::metadata(config.data_dir.join(DATABASE_FILE))
            .expect("db")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(db_mode, 0o600);
        let read = read_root_credentials(&config.data_dir).expect("readable");
        assert_eq!(read.operator_id, first.operator_id);
        assert!(read.auth_key.starts_with("secret-"));
        assert!(ensure_root_operator(&store, &config.data_dir)
            .expect("again")
            .is_none());
        let after = read_root_credentials(&config.data_dir).expect("still there");
        assert_eq!(after.auth_key, first.auth_key);
    }
}
