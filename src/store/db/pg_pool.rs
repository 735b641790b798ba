//! PostgreSQL's connection pool: at most `size` blocking connections, each with the statements
//! it has prepared; a lost connection is closed instead of returned, and a caller waits for a
//! free one when all are lent out.

use std::collections::HashMap;

use parking_lot::{Condvar, Mutex};
use postgres::{Client, NoTls, Statement};

use crate::store::{Result, StoreError};

pub(super) struct PgConn {
    pub(super) client: Client,
    /// Statements prepared on this connection, by their text (PostgreSQL has no cache of its own
    /// for the extended protocol: without this every statement costs one more round trip).
    pub(super) statements: HashMap<String, Statement>,
}

impl PgConn {
    pub(super) fn open(url: &str, schema: Option<&str>) -> Result<PgConn> {
        let mut client = Client::connect(url, NoTls)?;
        if let Some(schema) = schema {
            client.batch_execute(&format!("SET search_path TO \"{schema}\""))?;
        }
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }
}

/// At most `size` open connections; idle ones wait in `idle` (last returned, first reused).
pub(super) struct Pool {
    pub(super) size: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<PgConn>,
    /// Idle plus lent out.
    open: usize,
}

impl Drop for PoolState {
    /// Each blocking client owns a small tokio runtime, and a runtime must not be dropped on an
    /// async thread (tokio panics), which is where the last `Arc<Store>` of a stopping server
    /// may go: the idle connections close on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.idle);
        if idle.is_empty() {
            return;
        }
        let closing = std::thread::Builder::new()
            .name("arcd-pg-close".into())
            .spawn(move || drop(idle));
        if let Err(e) = closing {
            tracing::warn!(error = %e, "no thread to close PostgreSQL connections on");
        }
    }
}

/// A connection lent out of the pool; it goes back on drop, unless it was lost.
pub(super) struct Lent<'p> {
    pool: &'p Pool,
    conn: Option<PgConn>,
    /// Taken from the idle list (it may have died while it waited there) rather than just opened.
    pub(super) reused: bool,
    /// The connection failed as unavailable: close it instead of returning it.
    pub(super) lost: bool,
}

impl Pool {
    pub(super) fn new(size: usize, first: PgConn) -> Pool {
        Pool {
            size: size.max(1),
            state: Mutex::new(PoolState {
                idle: vec![first],
                open: 1,
            }),
            returned: Condvar::new(),
        }
    }

    pub(super) fn lend(&self, url: &str, schema: Option<&str>) -> Result<Lent<'_>> {
        let mut state = self.state.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(self.lent(conn, true));
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match PgConn::open(url, schema) {
                    Ok(conn) => Ok(self.lent(conn, false)),
                    Err(e) => {
                        self.forget_one();
                        Err(e)
                    }
                };
            }
            self.returned.wait(&mut state);
        }
    }

    fn lent(&self, conn: PgConn, reused: bool) -> Lent<'_> {
        Lent {
            pool: self,
            conn: Some(conn),
            reused,
            lost: false,
        }
    }

    /// One connection fewer is open (lost, or never opened): a waiting caller may open one.
    fn forget_one(&self) {
        self.state.lock().open -= 1;
        self.returned.notify_one();
    }
}

impl Lent<'_> {
    pub(super) fn conn(&mut self) -> Result<&mut PgConn> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("PostgreSQL connection missing".into()))
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.lost || conn.client.is_closed() {
            drop(conn);
            self.pool.forget_one();
        } else {
            self.pool.state.lock().idle.push(conn);
            self.pool.returned.notify_one();
        }
    }
}
