//! The peer-change outbox (docs/design/store-engines.md, "The peer-change outbox"): every
//! transaction that changes a session or a VPG writes a row here, and every node's follower
//! (`server::follower`) reads the rows after its cursor and applies the *current* committed
//! state of what they name. A row only names a peer (or says "the VPGs changed"), so applying is
//! idempotent and independent of order.
//!
//! The cursor differs per engine, the reading shape does not: a row has a *position* and the
//! follower reads the rows with `cursor <= position < bound` in position order, then moves its
//! cursor to the bound.
//! - SQLite: the position is `seq` (AUTOINCREMENT; the single writer makes it commit order).
//! - PostgreSQL: the position is the writing transaction's id (`xid`, a column default), and the
//!   bound is the reading snapshot's xmin: every transaction below it has ended, so no row can
//!   still appear below the bound, while rows of transactions still open stay above it. A
//!   sequence would give allocation order, and a reader could move past a number whose
//!   transaction commits later.

use super::db::{Db, Dialect, Row};
use super::sessions::{self, ActiveSession};
use super::vpgs::{self, RunningVpg};
use super::{now_ms, Result, StoreError};
use crate::ids::{Imsi, RendezvousPointId};

/// How long rows are kept (by `committed_at`): a follower that could not read for half of it
/// reloads every session instead of reading the rows (`server::follower`).
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// PostgreSQL's NOTIFY channel is this followed by the MD5 of the schema's name (channels are per
/// database, schemas are not; the hash keeps it a valid identifier whatever the schema is
/// called): a wake-up only, the rows are the truth.
/// The channel's name as SQL: the prefix and an MD5 of the schema, so it is an identifier of
/// fixed length whatever the schema is called, and schemas sharing a database do not wake each
/// other. One expression for the writers' NOTIFY and the followers' LISTEN.
macro_rules! channel_expr {
    () => {
        "'arcd_peer_outbox_' || md5(current_schema())"
    };
}
/// Selects the name of this schema's outbox channel (what a follower LISTENs on).
pub const NOTIFY_CHANNEL_SQL: &str = concat!("SELECT ", channel_expr!());

const KIND_PEER: &str = "peer";
const KIND_VPGS: &str = "vpgs";

/// What one row says changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OutboxChange {
    /// The session of `imsi` changed (made, replaced, moved, attributes or removed); `rp_id` is
    /// the rendezvous point the change concerns (the new session's, or the removed one's).
    Peer {
        rp_id: RendezvousPointId,
        imsi: Imsi,
    },
    /// A VPG was made, terminated or switched: the running set is read again.
    Vpgs,
}

impl From<&sessions::PeerChange> for OutboxChange {
    fn from(change: &sessions::PeerChange) -> Self {
        match change {
            sessions::PeerChange::Upsert(session) => OutboxChange::Peer {
                rp_id: session.rp_id.clone(),
                imsi: session.imsi.clone(),
            },
            sessions::PeerChange::Remove { imsi, rp_id } => OutboxChange::Peer {
                rp_id: rp_id.clone(),
                imsi: imsi.clone(),
            },
        }
    }
}

/// Where a row stands in the followers' reading order (SQLite `seq`, PostgreSQL `xid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub i64);

/// A follower's cursor: every row whose position is below it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub i64);

impl Cursor {
    pub fn has_read(&self, position: Position) -> bool {
        position.0 < self.0
    }
}

/// One row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub position: Position,
    pub change: OutboxChange,
    /// UNIX ms when the row was written, just before its commit (propagation latency, pruning).
    pub committed_at: i64,
}

/// Writes one row per change in the caller's transaction (then call `notify_followers` once it
/// has committed). Returns the highest position written (`None` for no change): once a
/// follower's cursor is past it, that follower has read this transaction's rows.
///
/// Safe in a write closure that may run again: a retried transaction starts from scratch, so the
/// rows of a failed attempt are gone with it.
pub fn record(db: &mut dyn Db, changes: &[OutboxChange]) -> Result<Option<Position>> {
    let returning = position_expr(db.dialect());
    let insert = format!(
        "INSERT INTO peer_outbox(kind, rp_id, imsi, committed_at) VALUES ($1, $2, $3, $4)
         RETURNING {returning}"
    );
    let at = now_ms();
    let mut highest = None;
    for change in changes {
        let (kind, rp_id, imsi) = match change {
            OutboxChange::Peer { rp_id, imsi } => (KIND_PEER, Some(rp_id), Some(imsi)),
            OutboxChange::Vpgs => (KIND_VPGS, None, None),
        };
        let position = Position(
            db.query_one(&insert, &[&kind, &rp_id, &imsi, &at])?
                .int(0)?,
        );
        highest = highest.max(Some(position));
    }
    Ok(highest)
}

/// Wakes the other nodes' followers after a commit that recorded rows: PostgreSQL's NOTIFY
/// (nothing on SQLite, whose one follower the API wakes in-process). Not in the writing
/// transaction: PostgreSQL holds one database-wide lock from a notifying transaction's pre-commit
/// until its commit is flushed, so notifying writers would queue on each other's flushes
/// (measured: concurrent createSim-shaped writes fell from about 3,400/s to 700-1,800/s). Not a
/// transaction per write either: the store's after-commit thread sends it once per burst of
/// commits, in autocommit (`PgStore::send_after_commit`). A lost NOTIFY only delays the others
/// until their next poll.
pub fn notify_followers(store: &super::Store) {
    if let super::Store::Postgres(pg) = store {
        pg.send_after_commit(NOTIFY_SQL);
    }
}

/// The NOTIFY of `notify_followers`, on the channel of `NOTIFY_CHANNEL_SQL`.
const NOTIFY_SQL: &str = concat!("SELECT pg_notify(", channel_expr!(), ", '')");

/// The cursor a follower starts from when it loads the sessions in the same read snapshot:
/// every row it would read from there was committed after the snapshot or is harmlessly read
/// again (applying the current state twice changes nothing).
pub fn start_cursor(db: &mut dyn Db) -> Result<Cursor> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "SELECT COALESCE(MAX(seq), 0) + 1 FROM peer_outbox",
        Dialect::Postgres => {
            "SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)"
        }
    };
    Ok(Cursor(db.query_one(sql, &[])?.int(0)?))
}

/// The rows after `cursor`, in position order, at most about `limit` (all rows of one
/// PostgreSQL transaction come together, however many), and the cursor to read from next.
pub fn read_after(db: &mut dyn Db, cursor: Cursor, limit: u32) -> Result<(Vec<OutboxRow>, Cursor)> {
    let dialect = db.dialect();
    // SQLite: every committed row is final. PostgreSQL: rows below the snapshot's xmin are.
    let bound = match dialect {
        Dialect::Sqlite => None,
        Dialect::Postgres => Some(start_cursor(db)?),
    };
    let position = position_expr(dialect);
    let (from, to) = match dialect {
        Dialect::Sqlite => ("seq >= $1", "seq < $2"),
        Dialect::Postgres => (
            "xid >= CAST(CAST(CAST($1 AS BIGINT) AS TEXT) AS xid8)",
            "xid < CAST(CAST(CAST($2 AS BIGINT) AS TEXT) AS xid8)",
        ),
    };
    let upper = bound.map_or(i64::MAX, |b| b.0);
    let mut rows = read_rows(
        db,
        &format!(
            "SELECT seq, {position}, kind, rp_id, imsi, committed_at FROM peer_outbox
             WHERE {from} AND {to} ORDER BY {position}, seq LIMIT $3"
        ),
        &[&cursor.0, &upper, &(i64::from(limit) + 1)],
    )?;
    if rows.len() <= limit as usize {
        let next = match (bound, rows.last()) {
            (Some(bound), _) => bound.max(cursor),
            (None, Some(last)) => Cursor(last.position.0 + 1),
            (None, None) => cursor,
        };
        return Ok((rows, next));
    }
    // More than `limit`: stop before the position of the first row left out, so no position is
    // read in part (several rows of one PostgreSQL transaction share one).
    let cut = rows[limit as usize].position;
    rows.retain(|row| row.position < cut);
    if !rows.is_empty() {
        return Ok((rows, Cursor(cut.0)));
    }
    // One transaction wrote more than `limit` rows: all of them, then past it.
    let all = read_rows(
        db,
        &format!(
            "SELECT seq, {position}, kind, rp_id, imsi, committed_at FROM peer_outbox
             WHERE {from} AND {to} ORDER BY seq"
        ),
        &[&cut.0, &(cut.0 + 1)],
    )?;
    Ok((all, Cursor(cut.0 + 1)))
}

/// Whether committed rows already wait at or past `cursor` that a read could not return yet: on
/// PostgreSQL, rows above the watermark that some other transaction still open holds back (it may
/// write no outbox row, so nothing will wake the follower when it ends). Never on SQLite.
pub fn held_back(db: &mut dyn Db, cursor: Cursor) -> Result<bool> {
    match db.dialect() {
        Dialect::Sqlite => Ok(false),
        // The lowest such position, not `EXISTS`: the planner expects a third of the table to
        // match an open inequality and so scans it, which with no match (the usual answer) reads
        // every row the outbox keeps (an hour of changes); ordered by `xid` it is one index probe.
        Dialect::Postgres => Ok(db
            .query_opt(
                "SELECT 1 FROM peer_outbox
                 WHERE xid >= CAST(CAST(CAST($1 AS BIGINT) AS TEXT) AS xid8)
                 ORDER BY xid LIMIT 1",
                &[&cursor.0],
            )?
            .is_some()),
    }
}

/// Deletes up to `batch` rows written before `older_than` (UNIX ms); returns how many went.
pub fn prune(db: &mut dyn Db, older_than: i64, batch: u32) -> Result<u64> {
    db.execute(
        "DELETE FROM peer_outbox WHERE seq IN
             (SELECT seq FROM peer_outbox WHERE committed_at < $1 ORDER BY committed_at LIMIT $2)",
        &[&older_than, &i64::from(batch)],
    )
}

/// What a follower reads in one snapshot: the rows after its cursor, the current session of
/// every IMSI they name (`None`: it has none any more) and, when a row says the VPGs changed, the
/// running VPGs.
#[derive(Debug)]
pub struct Followed {
    pub rows: Vec<OutboxRow>,
    pub cursor: Cursor,
    pub sessions: Vec<(Imsi, Option<ActiveSession>)>,
    pub vpgs: Option<Vec<RunningVpg>>,
    /// Rows are committed past `cursor` but not readable yet (`held_back`): read again soon.
    pub held_back: bool,
}

/// One follower step (run it in a read snapshot: `read_db`).
pub fn follow(db: &mut dyn Db, cursor: Cursor, limit: u32) -> Result<Followed> {
    let (rows, next) = read_after(db, cursor, limit)?;
    let mut imsis: Vec<Imsi> = rows
        .iter()
        .filter_map(|row| match &row.change {
            OutboxChange::Peer { imsi, .. } => Some(imsi.clone()),
            OutboxChange::Vpgs => None,
        })
        .collect();
    imsis.sort();
    imsis.dedup();
    let mut current = sessions::active_sessions_by_imsis(db, &imsis)?;
    let sessions = imsis
        .into_iter()
        .map(|imsi| {
            let session = current.remove(&imsi);
            (imsi, session)
        })
        .collect();
    let vpgs = if rows.iter().any(|row| row.change == OutboxChange::Vpgs) {
        Some(vpgs::running(db)?)
    } else {
        None
    };
    let held_back = held_back(db, next)?;
    Ok(Followed {
        rows,
        cursor: next,
        sessions,
        vpgs,
        held_back,
    })
}

/// Everything a data plane is built from, with the cursor to follow from, in one snapshot: what
/// a node loads at start and after losing track (`server::follower`'s resync).
#[derive(Debug)]
pub struct Snapshot {
    pub sessions: Vec<ActiveSession>,
    pub vpgs: Vec<RunningVpg>,
    pub cursor: Cursor,
}

pub fn snapshot(db: &mut dyn Db) -> Result<Snapshot> {
    // The cursor first: on PostgreSQL the snapshot is fixed by the first statement either way,
    // and this order reads as the rule (rows from the cursor on may be read again, none lost).
    let cursor = start_cursor(db)?;
    Ok(Snapshot {
        sessions: sessions::list_active_sessions(db)?,
        vpgs: vpgs::running(db)?,
        cursor,
    })
}

/// SQL for a row's position, as a BIGINT.
fn position_expr(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "seq",
        Dialect::Postgres => "CAST(CAST(xid AS TEXT) AS BIGINT)",
    }
}

fn read_rows(
    db: &mut dyn Db,
    sql: &str,
    params: &[&dyn super::db::Param],
) -> Result<Vec<OutboxRow>> {
    db.query(sql, params)?.iter().map(row_of).collect()
}

fn row_of(row: &Row) -> Result<OutboxRow> {
    let change = match row.text(2)?.as_str() {
        KIND_PEER => OutboxChange::Peer {
            rp_id: RendezvousPointId::new(required(row.opt_text(3)?, "rp_id")?),
            imsi: Imsi::new(required(row.opt_text(4)?, "imsi")?),
        },
        KIND_VPGS => OutboxChange::Vpgs,
        other => {
            return Err(StoreError::Corrupt(format!(
                "peer_outbox row of unknown kind {other:?}"
            )))
        }
    };
    Ok(OutboxRow {
        seq: row.int(0)?,
        position: Position(row.int(1)?),
        change,
        committed_at: row.int(5)?,
    })
}

fn required(value: Option<String>, column: &str) -> Result<String> {
    value.ok_or_else(|| StoreError::Corrupt(format!("peer_outbox peer row without {column}")))
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
