//! `arcd backup` and `arcd restore`. Everything a device or API client depends on lives in the
//! database: operators and auth key hashes, SIMs with their client addresses and public keys, the
//! rendezvous points' server key pairs and the token signing key. So a backup is one SQLite file.
//! The other files of the data directory do not change while arcd runs and are copied once by the
//! operator: `root-credentials.json` (the root auth key's secret, also only a hash in the
//! database) and the TLS certificate and key (generated ones are made again if missing, which
//! clients that pinned the old certificate notice).
//!
//! The copy uses SQLite's online backup API in a single step from a read-only connection: one
//! read transaction, so the copy is the database as of one commit, while `arcd serve` keeps
//! writing (WAL readers never block the writer). `VACUUM INTO` gives the same consistency but
//! rebuilds every table and index, far more work per byte than copying pages.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::bootstrap::{self, BootstrapError, DATABASE_FILE, LOCK_FILE, ROOT_CREDENTIALS_FILE};
use crate::config::Config;
use crate::store::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("{}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not exist: there is nothing to back up (is data_dir right?)", .0.display())]
    NoDatabase(PathBuf),
    #[error("{} is one of arcd's own files in the data directory; write the backup elsewhere", .0.display())]
    OutputIsDataFile(PathBuf),
    #[error("{} is not a usable arcd backup: {reason}; nothing was changed", .path.display())]
    Unusable { path: PathBuf, reason: String },
    #[error("the database stayed busy for {0:?}; try again")]
    Busy(Duration),
}

/// What `arcd backup` wrote.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    pub output: PathBuf,
    pub schema_version: i64,
    pub bytes: u64,
}

/// What `arcd restore` did.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSummary {
    pub database: PathBuf,
    pub schema_version: i64,
    /// The database that was replaced (with its `-wal`, if it had one), kept beside it.
    pub replaced_database_kept_as: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// How long a backup step may keep finding the database busy (e.g. while arcd starts and
/// recovers its WAL) before giving up.
const BUSY_LIMIT: Duration = Duration::from_secs(30);

fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a consistent copy of the data directory's database to `output` (mode 0600: it holds
/// the server private keys), safe while `arcd serve` runs: no data-directory lock is taken and
/// the database is only read. The file appears under its name only once complete and checked.
pub fn backup(config: &Config, output: &Path) -> Result<BackupSummary, BackupError> {
    let db_path = config.data_dir.join(DATABASE_FILE);
    if !db_path.is_file() {
        return Err(BackupError::NoDatabase(db_path));
    }
    refuse_data_dir_file(&config.data_dir, output)?;
    let source = Connection::open_with_flags(
        &db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_error(&db_path))?;
    let partial = sibling(output, ".partial");
    let result = copy_checked(&source, &db_path, &partial).and_then(|schema_version| {
        std::fs::rename(&partial, output).map_err(io_error(output))?;
        sync_parent(output)?;
        let bytes = std::fs::metadata(output).map_err(io_error(output))?.len();
        Ok(BackupSummary {
            output: output.to_path_buf(),
            schema_version,
            bytes,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Replaces the data directory's database with the backup at `input`. Refuses while `arcd serve`
/// runs on the directory (it holds the lock, which this takes for the duration) and refuses a
/// file that is damaged, not an arcd database or newer than this binary. The new database is
/// written beside the old one, synced and renamed over it; the old one is kept.
pub fn restore(config: &Config, input: &Path) -> Result<RestoreSummary, BackupError> {
    let dir = &config.data_dir;
    let _lock = bootstrap::lock_data_dir(dir)?;
    let source = Connection::open_with_flags(
        input,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unusable(input, e))?;
    check_restorable(&source, input)?;
    let db_path = dir.join(DATABASE_FILE);
    let incoming = sibling(&db_path, ".restoring");
    let schema_version = match copy_checked(&source, input, &incoming) {
        Ok(version) => version,
        Err(e) => {
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }
    };
    drop(source);
    let kept = keep_replaced(&db_path)?;
    std::fs::rename(&incoming, &db_path).map_err(io_error(&db_path))?;
    sync_parent(&db_path)?;
    let warnings = stale_credentials_warning(dir, &db_path)
        .into_iter()
        .collect();
    tracing::info!(database = %db_path.display(), from = %input.display(), schema_version, "database restored");
    Ok(RestoreSummary {
        database: db_path,
        schema_version,
        replaced_database_kept_as: kept,
        warnings,
    })
}

/// `arcd.sqlite` -> `arcd.sqlite.partial` style names, in the same directory (same file system,
/// so the final rename is atomic).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writing the backup over the live database (or its WAL, lock or credentials) would destroy it.
fn refuse_data_dir_file(data_dir: &Path, output: &Path) -> Result<(), BackupError> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(parent), Ok(data_dir)) = (parent.canonicalize(), data_dir.canonicalize()) else {
        return Ok(());
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let own = name.starts_with(DATABASE_FILE)
        || name == LOCK_FILE
        || name == ROOT_CREDENTIALS_FILE
        || name.starts_with("tls-");
    if parent == data_dir && own {
        return Err(BackupError::OutputIsDataFile(output.to_path_buf()));
    }
    Ok(())
}

/// Copies `source` into a new file at `target` (mode 0600) in one backup step, makes it a
/// self-contained rollback-journal database, checks it and syncs it. Returns its schema version.
fn copy_checked(
    source: &Connection,
    source_path: &Path,
    target: &Path,
) -> Result<i64, BackupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(target)
        .map_err(io_error(target))?;
    let mut dest = Connection::open(target).map_err(sqlite_error(target))?;
    {
        let backup = Backup::new(source, &mut dest).map_err(sqlite_error(source_path))?;
        let started = Instant::now();
        loop {
            // -1: every page in one step, under one read transaction on the source.
            match backup.step(-1).map_err(sqlite_error(source_path))? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if started.elapsed() > BUSY_LIMIT => return Err(BackupError::Busy(BUSY_LIMIT)),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    // The copy carries the source's WAL flag; a backup file should need no -wal beside it.
    dest.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sqlite_error(target))?;
    let problems = integrity_problems(&dest).map_err(sqlite_error(target))?;
    if !problems.is_empty() {
        return Err(BackupError::Unusable {
            path: source_path.to_path_buf(),
            reason: format!(
                "PRAGMA integrity_check of the copy: {}",
                problems.join("; ")
            ),
        });
    }
    let version: i64 = dest
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite_error(target))?;
    drop(dest);
    std::fs::File::open(target)
        .and_then(|file| file.sync_all())
        .map_err(io_error(target))?;
    Ok(version)
}

fn integrity_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare("PRAGMA integrity_check(20)")?;
    let lines = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(lines.into_iter().filter(|line| line != "ok").collect())
}

fn unusable(path: &Path, error: impl std::fmt::Display) -> BackupError {
    BackupError::Unusable {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// A restorable file is a sound SQLite database made by an arcd no newer than this one.
fn check_restorable(source: &Connection, path: &Path) -> Result<(), BackupError> {
    let problems = integrity_problems(source).map_err(|e| unusable(path, e))?;
    if !problems.is_empty() {
        return Err(unusable(
            path,
            format!("PRAGMA integrity_check: {}", problems.join("; ")),
        ));
    }
    let version: i64 = source
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| unusable(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(unusable(
            path,
            format!("its schema version {version} is newer than this arcd ({SCHEMA_VERSION}); restore it with the arcd that made it"),
        ));
    }
    let has_operators: bool = source
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'operators')",
            [],
            |row| row.get(0),
        )
        .map_err(|e| unusable(path, e))?;
    if version < 1 || !has_operators {
        return Err(unusable(path, "it holds no arcd schema"));
    }
    Ok(())
}

/// Keeps the database being replaced as `arcd.sqlite.replaced-<unix ms>`, its WAL (committed
/// transactions not yet checkpointed) moved along under the matching `-wal` name so the kept copy
/// opens complete; the shared-memory index is rebuilt by SQLite and goes. The main file is kept
/// through a hard link, so the live name never disappears before the new file replaces it.
fn keep_replaced(db_path: &Path) -> Result<Option<PathBuf>, BackupError> {
    let wal = sibling(db_path, "-wal");
    let shm = sibling(db_path, "-shm");
    let kept = sibling(db_path, &format!(".replaced-{}", crate::store::now_ms()));
    let mut kept_any = false;
    if db_path.exists() {
        std::fs::hard_link(db_path, &kept).map_err(io_error(&kept))?;
        kept_any = true;
    }
    if wal.exists() {
        let kept_wal = sibling(&kept, "-wal");
        std::fs::rename(&wal, &kept_wal).map_err(io_error(&kept_wal))?;
        kept_any = true;
    }
    match std::fs::remove_file(&shm) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&shm)(e)),
    }
    Ok(kept_any.then_some(kept))
}

/// root-credentials.json belongs to one database's root operator; after restoring a database
/// from another installation the file names an operator the database does not treat as root.
fn stale_credentials_warning(dir: &Path, db_path: &Path) -> Option<String> {
    let file = bootstrap::read_root_credentials(dir)?;
    let conn = Connection::open_with_flags(db_path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let root: crate::ids::OperatorId = conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'root_operator_id'",
            [],
            |row| row.get(0),
        )
        .ok()?;
    (root != file.operator_id).then(|| {
        format!(
            "{ROOT_CREDENTIALS_FILE} names operator {} but the restored database's root operator is {root}; put back the {ROOT_CREDENTIALS_FILE} saved with this backup",
            file.operator_id
        )
    })
}

fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::Backend;
    use crate::store::{operators, Store};

    fn config(dir: &Path) -> Config {
        Config {
            data_dir: dir.join("data"),
            ..Config::default()
        }
    }

    /// A database with one operator at `path`; returns the operator's id.
    fn database_with_operator(path: &Path) -> crate::ids::OperatorId {
        let store = Store::open(path).expect("open");
        store
            .write_db(operators::create_operator)
            .expect("operator")
    }

    fn operator_ids(path: &Path) -> Vec<String> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
        let mut statement = conn
            .prepare("SELECT operator_id FROM operators")
            .expect("prepare");
        let ids = statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("rows");
        ids
    }

    #[test]
    fn restore_refuses_newer_foreign_and_damaged_files_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let live = config.data_dir.join(DATABASE_FILE);
        let live_operator = database_with_operator(&live);

        let newer = dir.path().join("newer.sqlite");
        database_with_operator(&newer);
        Connection::open(&newer)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("bump version");
        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign)
            .and_then(|c| c.execute_batch("CREATE TABLE t(x); PRAGMA user_version = 1;"))
            .expect("foreign database");
        let garbage = dir.path().join("garbage.sqlite");
        std::fs::write(&garbage, vec![b'x'; 8192]).expect("garbage");

        for (file, says) in [
            (&newer, "newer than this arcd"),
            (&foreign, "no arcd schema"),
            (&garbage, "not a database"),
        ] {
            let error = restore(&config, file).expect_err("refused");
            assert!(
                matches!(error, BackupError::Unusable { .. }) && error.to_string().contains(says),
                "{}: {error}",
                file.display()
            );
        }
        assert_eq!(operator_ids(&live), vec![live_operator]);
        assert!(!sibling(&live, ".restoring").exists());
    }

    #[test]
    fn restore_replaces_the_database_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let live = config.data_dir.join(DATABASE_FILE);
        let backed_up = database_with_operator(&live);
        let file = dir.path().join("backup.sqlite");
        let summary = backup(&config, &file).expect("backup");
        assert_eq!(summary.schema_version, SCHEMA_VERSION);
        let later = database_with_operator(&live);

        let restored = restore(&config, &file).expect("restore");
        assert_eq!(operator_ids(&live), vec![backed_up.clone()]);
        let kept = restored.replaced_database_kept_as.expect("kept");
        let mut old = operator_ids(&kept);
        old.sort();
        let mut want = vec![backed_up, later];
        want.sort();
        assert_eq!(old, want);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&live).expect("live").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn backup_refuses_to_write_over_the_data_directory_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let live = config.data_dir.join(DATABASE_FILE);
        let operator = database_with_operator(&live);
        for name in [DATABASE_FILE, "arcd.sqlite-wal", ROOT_CREDENTIALS_FILE] {
            let error = backup(&config, &config.data_dir.join(name)).expect_err("refused");
            assert!(matches!(error, BackupError::OutputIsDataFile(_)), "{error}");
        }
        assert_eq!(operator_ids(&live), vec![operator]);
        let missing = Config {
            data_dir: dir.path().join("nothing-here"),
            ..Config::default()
        };
        assert!(matches!(
            backup(&missing, &dir.path().join("b.sqlite")),
            Err(BackupError::NoDatabase(_))
        ));
    }
}
