//! Opening the data directory: SQLite file, rendezvous point keys and, on the first start, the
//! root operator with its auth key written to `root-credentials.json`. `arcd serve` also locks the
//! directory, checks the database and refuses to silently start over on a directory that has lived
//! before (an emptied or replaced database would otherwise get a new root operator and new keys).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, StoreEngine};
use crate::ids::OperatorId;
use crate::store::db::Backend;
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
    #[error("data directory {} is in use by another `arcd serve`{holder} (it holds the lock on {}); stop that one first or give this one another data_dir", .dir.display(), .lock.display())]
    AlreadyRunning {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("data directory {} holds {evidence} from an earlier start, but its database {} {state}: starting would create a new root operator, auth key and rendezvous point keys and overwrite {ROOT_CREDENTIALS_FILE}. Restore the database from a backup, or run `arcd serve --reinitialize` to start over on purpose", .dir.display(), .database.display())]
    WouldReinitialize {
        dir: PathBuf,
        database: PathBuf,
        evidence: String,
        state: &'static str,
    },
    #[error("database {} is damaged ({details}); arcd will not start on it. Restore it from a backup, or move it away and run `arcd serve --reinitialize` to start over", .database.display())]
    DamagedDatabase { database: PathBuf, details: String },
}

pub const DATABASE_FILE: &str = "arcd.sqlite";
pub const ROOT_CREDENTIALS_FILE: &str = "root-credentials.json";
/// Held (flock) by `arcd serve` for as long as it runs; holds its process id for the message
/// another start prints. Administrative commands do not take it (they run beside `serve`), except
/// `arcd restore`, which must not replace the database under a running server.
pub const LOCK_FILE: &str = "arcd.lock";
/// Written by arcd on the first start when no certificate is configured.
const GENERATED_TLS_KEY_FILE: &str = "tls-key.pem";

/// Whether a data directory that has lived before may get a new database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reinitialize {
    /// Refuse (the default): the database was lost or emptied by accident.
    #[default]
    Refuse,
    /// `arcd serve --reinitialize`: start over with a new root operator and keys.
    Allow,
}

/// The exclusive lock on a data directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data directory's lock (creating the directory, mode 0700), failing at once with the
/// holder's process id if another `arcd serve` has it. Two servers on one database would both
/// run rendezvous points and checkpoints on it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, BootstrapError> {
    create_data_dir(dir)?;
    let lock = dir.join(LOCK_FILE);
    let lock_error = |source| BootstrapError::DataDir {
        path: lock.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .map(|pid| format!(" (process {pid})"))
                .unwrap_or_default();
            return Err(BootstrapError::AlreadyRunning {
                dir: dir.to_path_buf(),
                lock,
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e)),
    }
    use std::io::Write;
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(lock_error)?;
    Ok(DataDirLock { _file: file })
}

fn create_data_dir(dir: &Path) -> Result<(), BootstrapError> {
    let dir_error = |source| BootstrapError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)
}

/// Files only an earlier start writes: if one is there, the directory has had a database.
fn earlier_identity(dir: &Path) -> Option<&'static str> {
    [ROOT_CREDENTIALS_FILE, GENERATED_TLS_KEY_FILE]
        .into_iter()
        .find(|name| dir.join(name).exists())
}

/// A database that holds nothing yet: no file, or an empty file with no (or an empty) WAL. A
/// database that was never checkpointed keeps everything in the WAL, so the main file alone says
/// nothing.
fn database_state(db_path: &Path) -> Option<&'static str> {
    let len = |path: &Path| std::fs::metadata(path).map(|m| m.len());
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    let wal_empty = len(Path::new(&wal)).map_or(true, |n| n == 0);
    match len(db_path) {
        Err(_) if wal_empty => Some("is missing"),
        Ok(0) if wal_empty => Some("is empty"),
        _ => None,
    }
}

/// Contents of `root-credentials.json` (docs/ARCHITECTURE.md, "Configuration contract").
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootCredentials {
    pub operator_id: OperatorId,
    pub auth_key_id: String,
    pub auth_key: String,
}

/// Creates the data directory (mode 0700) and opens the store, its file mode 0600 because it holds
/// server private keys (SQLite gives the -wal and -shm files the same mode). Rendezvous points are
/// brought in line with the configuration.
pub fn open_store(config: &Config) -> Result<Store, BootstrapError> {
    open_store_with(config, Reinitialize::Refuse, Integrity::Trust)
}

/// Whether opening reads the whole database once to check it (`serve`; the administrative
/// commands skip it to stay quick beside a running server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Check,
    Trust,
}

/// `open_store`, refusing (unless `reinitialize` allows it) to create a new database in a
/// directory that held one before (see `BootstrapError::WouldReinitialize`), and with `Check`
/// refusing a damaged database before writing to it.
pub fn open_store_with(
    config: &Config,
    reinitialize: Reinitialize,
    integrity: Integrity,
) -> Result<Store, BootstrapError> {
    let dir = &config.data_dir;
    let dir_error = |source| BootstrapError::DataDir {
        path: dir.clone(),
        source,
    };
    create_data_dir(dir)?;
    if config.store.engine == StoreEngine::Postgres {
        return open_postgres(config);
    }
    let db_path = dir.join(DATABASE_FILE);
    if reinitialize == Reinitialize::Refuse {
        if let (Some(state), Some(evidence)) = (database_state(&db_path), earlier_identity(dir)) {
            return Err(BootstrapError::WouldReinitialize {
                dir: dir.clone(),
                database: db_path,
                evidence: evidence.to_string(),
                state,
            });
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db_path)
        .map_err(dir_error)?;
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600))
        .map_err(dir_error)?;
    let store = Store::open(&db_path).map_err(|e| damaged(&db_path, e))?;
    if integrity == Integrity::Check {
        check_database(&store, &db_path)?;
    }
    let generated = store
        .write_db(|db| rendezvous::sync(db, &config.rendezvous_points))
        .map_err(|e| damaged(&db_path, e))?;
    log_generated_keys(generated);
    Ok(store)
}

fn log_generated_keys(generated: Vec<rendezvous::NewServerKey>) {
    for key in generated {
        tracing::info!(rendezvous_point = %key.rp_id, public_key = %key.public_key, "server key pair generated");
    }
}

/// The shared PostgreSQL store of `[store] url`: migrated if this node is the first of a newer
/// version (under an advisory lock, so nodes starting together migrate once), rendezvous points
/// brought in line with the configuration (a server key is made once, by whichever node gets
/// there first). The data directory still holds this node's TLS files.
fn open_postgres(config: &Config) -> Result<Store, BootstrapError> {
    let url = config.store.url.as_deref().unwrap_or_default();
    let store = Store::connect_postgres(url)?;
    log_generated_keys(store.write_db(|db| rendezvous::sync(db, &config.rendezvous_points))?);
    Ok(store)
}

/// `PRAGMA quick_check` on the whole database, before anything is written to it.
fn check_database(store: &Store, db_path: &Path) -> Result<(), BootstrapError> {
    match store.quick_check().map_err(|e| damaged(db_path, e))? {
        problems if problems.is_empty() => Ok(()),
        problems => Err(BootstrapError::DamagedDatabase {
            database: db_path.to_path_buf(),
            details: format!("PRAGMA quick_check: {}", problems.join("; ")),
        }),
    }
}

fn damaged(db_path: &Path, error: StoreError) -> BootstrapError {
    if error.is_corruption() {
        BootstrapError::DamagedDatabase {
            database: db_path.to_path_buf(),
            details: error.to_string(),
        }
    } else {
        BootstrapError::Store(error)
    }
}

/// On the very first start (no root operator yet) makes the root operator and auth key, writes them to
/// `root-credentials.json` and returns them so the caller can print them once.
/// Refuses (see `Reinitialize`) when `root-credentials.json` is there but the database has no
/// root operator: the file belongs to a database that was replaced. On later starts the file's
/// mode is set back to 0600 if it was loosened.
pub fn ensure_root_operator(
    store: &Store,
    data_dir: &Path,
    reinitialize: Reinitialize,
) -> Result<Option<RootCredentials>, BootstrapError> {
    let existing = store.read_db(operators::root_operator)?;
    let path = data_dir.join(ROOT_CREDENTIALS_FILE);
    if existing.is_some() {
        keep_private(&path)?;
        return Ok(None);
    }
    if reinitialize == Reinitialize::Refuse && path.exists() {
        return Err(BootstrapError::WouldReinitialize {
            dir: data_dir.to_path_buf(),
            database: data_dir.join(DATABASE_FILE),
            evidence: ROOT_CREDENTIALS_FILE.to_string(),
            state: "has no root operator",
        });
    }
    // The file is written inside the transaction: if it cannot be written, no operator exists
    // whose secret nobody knows. A run that is retried (PostgreSQL) writes the file again with
    // its own credentials, so the file holds those of the run that commits.
    let credentials = store.write_db(|db| {
        let operator_id = operators::create_operator(db)?;
        operators::set_root_operator(db, &operator_id)?;
        let key = operators::create_auth_key(db, &operator_id)?;
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

/// The credentials file holds the root operator's secret: owner-only, whatever happened to it.
fn keep_private(path: &Path) -> Result<(), BootstrapError> {
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(_) => return Ok(()),
    };
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        BootstrapError::Credentials {
            path: path.to_path_buf(),
            source,
        }
    })?;
    tracing::warn!(file = %path.display(), was = format!("{mode:o}"), "credentials file was readable by others; mode set back to 0600");
    Ok(())
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
            .write_db(operators::create_operator)
            .expect("cli operator");
        let root = ensure_root_operator(&store, &config.data_dir, Reinitialize::Refuse)
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
        let first = ensure_root_operator(&store, &config.data_dir, Reinitialize::Refuse)
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
        assert!(
            ensure_root_operator(&store, &config.data_dir, Reinitialize::Refuse)
                .expect("again")
                .is_none()
        );
        let after = read_root_credentials(&config.data_dir).expect("still there");
        assert_eq!(after.auth_key, first.auth_key);
    }
}
