//! The SQLite engine of the store: one file in WAL mode, a single writer connection (`BEGIN
//! IMMEDIATE`, so writers are serialised and read-then-write sequences cannot race), a small pool
//! of read connections, and the WAL's upkeep (checkpoints, a bound on its size).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use super::{migrations, Result, StoreError};

pub struct SqliteStore {
    writer: Mutex<Connection>,
    /// Frames in the WAL after the last commit, as SQLite reports them to the WAL hook that
    /// `disable_auto_checkpoint` installs (see `bound_wal`); 0 without it.
    wal_frames: Arc<AtomicI64>,
    readers: Mutex<Vec<Connection>>,
    /// A separate read-write connection for WAL checkpoints, opened on first use.
    checkpointer: Mutex<Option<Connection>>,
    path: std::path::PathBuf,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL size (in frames of one page each) past which the writer makes the log start over: under
/// the writer lock it copies the few frames the background checkpoint has not yet copied, so the
/// next transaction begins the log anew (SQLite does so once every frame is in the database and
/// no reader still reads an older one). The background PASSIVE checkpoint alone never gets there
/// while writes keep coming (new frames land while it copies), so without this bound the log grows
/// by the full write rate (tens of MB/s under load) for as long as the load lasts.
const WAL_RESTART_FRAMES: i64 = 4_000;

/// Past this many frames (restarts kept failing because readers held old frames) the writer
/// waits for those readers and truncates the log: the hard bound, about 48 MiB of 4 KiB pages.
pub const WAL_HARD_LIMIT_FRAMES: i64 = 12_000;

/// What SQLite leaves of the WAL file when the log starts over (journal_size_limit): overwriting
/// this much is cheaper than growing the file again, and an idle server keeps no more than this.
const WAL_KEPT_BYTES: i64 = 16 * 1024 * 1024;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut writer = open_connection(path, true)?;
        let found: i64 = writer.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > migrations::LATEST {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: migrations::LATEST,
            });
        }
        migrations::migrate(&mut writer)?;
        writer.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            wal_frames: Arc::new(AtomicI64::new(0)),
            readers: Mutex::new(Vec::new()),
            checkpointer: Mutex::new(None),
            path: path.to_path_buf(),
        })
    }

    /// Moves committed pages from the WAL into the database file on the caller's thread, so the
    /// writer does not: a long-running server calls this from a background task after
    /// `disable_auto_checkpoint`, keeping fsync stalls out of request latency. PASSIVE never
    /// blocks readers or the writer.
    pub fn checkpoint(&self) -> Result<()> {
        self.read_write_side(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
    }

    /// Copies the whole WAL into the database and empties it, waiting for readers (busy timeout):
    /// the last step of a clean stop, so the next start opens a database with no log to replay.
    /// Returns whether the log could be emptied (false: a reader still held it).
    pub fn checkpoint_truncate(&self) -> Result<bool> {
        self.read_write_side(|conn| {
            let busy: i64 =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
            Ok(busy == 0)
        })
    }

    /// `PRAGMA quick_check`: the problems it finds (at most 20), none when the database is sound.
    pub fn quick_check(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut statement = conn.prepare("PRAGMA quick_check(20)")?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            let problems = rows.collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(problems.into_iter().filter(|line| line != "ok").collect())
        })
    }

    /// Stops commits from checkpointing inline (see `checkpoint`).
    pub fn disable_auto_checkpoint(&self) -> Result<()> {
        let mut conn = self.writer.lock();
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // The hook replaces SQLite's automatic checkpoint (both use the same slot) and only
        // records the log's length for `bound_wal`.
        let frames = self.wal_frames.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                frames.store(i64::from(pages), Ordering::Relaxed);
                Ok(())
            },
        ))?;
        Ok(())
    }

    fn read_write_side<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut slot = self.checkpointer.lock();
        if slot.is_none() {
            *slot = Some(open_connection(&self.path, true)?);
        }
        match slot.as_ref() {
            Some(conn) => f(conn),
            None => Err(StoreError::Corrupt("checkpoint connection missing".into())),
        }
    }

    /// Runs `f` in one IMMEDIATE transaction and commits it; any error rolls everything back.
    pub fn write<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        self.write_then(f, |_| {})
    }

    /// Like `write`, then runs `after_commit` while still holding the writer lock, so whatever it
    /// publishes (peer changes) is seen in commit order.
    pub fn write_then<T>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T>,
        after_commit: impl FnOnce(&T),
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let result = self.write_then_untimed(f, after_commit);
        crate::metrics::store_write(started.elapsed());
        result
    }

    /// The SQLite write-ahead log beside the database (its size is a metric).
    pub fn wal_path(&self) -> std::path::PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push("-wal");
        name.into()
    }

    fn write_then_untimed<T>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T>,
        after_commit: impl FnOnce(&T),
    ) -> Result<T> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        after_commit(&value);
        self.bound_wal(&conn);
        Ok(value)
    }

    /// Back-pressure on the WAL, after each commit while the writer lock is still held. Past
    /// `WAL_RESTART_FRAMES` a PASSIVE checkpoint copies what the background one has not (little:
    /// it runs every 100 ms and keeps up), so the log starts over at the next transaction and
    /// journal_size_limit trims the file. Past `WAL_HARD_LIMIT_FRAMES` (readers kept the log from
    /// starting over) TRUNCATE waits for them (busy timeout; they are single statements) and
    /// empties it. A failure here loses nothing and is retried by the next commit.
    fn bound_wal(&self, writer: &Connection) {
        let frames = self.wal_frames.load(Ordering::Relaxed);
        if frames < WAL_RESTART_FRAMES {
            return;
        }
        let mode = if frames < WAL_HARD_LIMIT_FRAMES {
            "PASSIVE"
        } else {
            "TRUNCATE"
        };
        let result = writer.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(2)?))
        });
        match result {
            Ok((0, copied)) => tracing::debug!(mode, frames, copied, "WAL checkpointed"),
            Ok((_, copied)) => tracing::debug!(
                mode,
                frames,
                copied,
                "WAL checkpoint busy; retrying on the next commit"
            ),
            Err(e) => tracing::warn!(error = %e, mode, frames, "WAL checkpoint failed"),
        }
    }

    /// Runs `f` on a read connection (a consistent snapshot for the duration of a statement).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, false)?,
        };
        let value = f(&conn);
        self.readers.lock().push(conn);
        value
    }
}

fn open_connection(path: &Path, writable: bool) -> Result<Connection> {
    let flags = if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if writable {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    // NORMAL in WAL mode: a commit survives a crash of this process (kill -9); only a power loss
    // can take back the last transactions, which is the usual trade for an appliance.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Without the query planner stability guarantee, SQLite re-prepares a cached statement
    // after its bindings are cleared (as rusqlite's cache does) whenever a `column = ?` term could
    // change the plan: that re-parse was most of the cost of listing SIMs.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}
