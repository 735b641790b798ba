//! The store's engine seam (spike for issue 14): domain functions take a `&mut dyn Db` (one
//! transaction, or one read snapshot) and write portable SQL; each engine implements `Db`.
//!
//! The portable dialect: parameters are `$1`, `$2`, … (PostgreSQL's own syntax; SQLite reads
//! `$1` as a *named* parameter, so the SQLite side binds each one by its name, never by
//! position); `INSERT … ON CONFLICT (…) DO UPDATE SET … = excluded.…` and `RETURNING` (both
//! engines); integers are 64-bit (`BIGINT` in PostgreSQL); no engine-specific functions in domain
//! SQL. Values cross the seam as `Value`; rows come back as `Row`, so no domain module names
//! rusqlite or postgres types.

mod batch;
mod pg;
mod pg_notify;
mod pg_pool;
mod sqlite;

pub use self::batch::{chunks, parameter_list, values_rows};
pub use self::pg::{default_pool_size, AdvisoryLock, PgDb, PgOptions, PgStore};
pub use self::sqlite::SqliteDb;

use super::{Result, StoreError};

/// One value bound to a parameter or read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Blob(Vec<u8>),
}

/// Something that can be bound to a `$N` parameter.
pub trait Param {
    fn to_value(&self) -> Value;
}

impl Param for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl Param for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl Param for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl Param for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl Param for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl Param for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}

impl Param for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl<T: Param> Param for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(value) => value.to_value(),
            None => Value::Null,
        }
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// One result row, already copied out of the engine.
#[derive(Debug, Clone)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    fn at(&self, index: usize) -> Result<&Value> {
        self.0
            .get(index)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {index} in the row")))
    }

    pub fn int(&self, index: usize) -> Result<i64> {
        match self.at(index)? {
            Value::Int(value) => Ok(*value),
            other => Err(wrong_type(index, "an integer", other)),
        }
    }

    /// A boolean column: BOOLEAN in PostgreSQL, INTEGER 0/1 in SQLite.
    pub fn bool(&self, index: usize) -> Result<bool> {
        match self.at(index)? {
            Value::Bool(value) => Ok(*value),
            Value::Int(value) => Ok(*value != 0),
            other => Err(wrong_type(index, "a boolean", other)),
        }
    }

    pub fn text(&self, index: usize) -> Result<String> {
        match self.at(index)? {
            Value::Text(value) => Ok(value.clone()),
            other => Err(wrong_type(index, "text", other)),
        }
    }

    pub fn opt_text(&self, index: usize) -> Result<Option<String>> {
        match self.at(index)? {
            Value::Null => Ok(None),
            _ => self.text(index).map(Some),
        }
    }

    pub fn opt_int(&self, index: usize) -> Result<Option<i64>> {
        match self.at(index)? {
            Value::Null => Ok(None),
            _ => self.int(index).map(Some),
        }
    }
}

fn wrong_type(index: usize, wanted: &str, found: &Value) -> StoreError {
    StoreError::Corrupt(format!(
        "column {index}: expected {wanted}, found {found:?}"
    ))
}

/// Which engine a `Db` runs on, for the few statements that cannot be the same text on both
/// (the peer-change outbox's cursor: a sequence on SQLite, transaction ids on PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One open transaction (writes) or read snapshot (reads) on either engine.
pub trait Db {
    fn dialect(&self) -> Dialect;

    /// Runs one statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64>;
    /// Runs one query and collects its rows.
    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>>;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The next value of the named number (`iccid`, `virtual_imsi`): 1 first, then growing, never
    /// handed out twice. SQLite: a `counters` row (its single writer makes that free).
    /// PostgreSQL: the sequence `number_<name>` made by the schema (a counter row would be a hot
    /// row every create queues on); a rolled-back transaction leaves a gap there, which is fine
    /// because numbers are only ever required to be unused.
    fn next_number(&mut self, name: &str) -> Result<i64>;

    /// The next values of two named numbers (see `next_number`), in one round trip where the
    /// engine has them as sequences: createSim draws an ICCID and a virtual IMSI together.
    fn next_number_pair(&mut self, first: &str, second: &str) -> Result<(i64, i64)> {
        Ok((self.next_number(first)?, self.next_number(second)?))
    }

    /// Dialect: a table expression listing the entries of the JSON object held (as text) in
    /// `column`, one row per key with text columns `key` and `value` (string values unquoted).
    /// SQLite: `json_each(column)`; PostgreSQL: `jsonb_each_text(column::jsonb)`.
    fn json_object_entries(&self, column: &str) -> String;

    /// Exactly the first row (a query that always answers one, such as `COUNT(*)`).
    fn query_one(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Corrupt("a query that answers one row answered none".into()))
    }

    /// Like `query`, for a statement built per call (one per combination of a search's filters):
    /// prepared for this call only, so such statements neither crowd the engine's cache of hot
    /// ones nor pile up on a long-lived connection.
    fn query_once(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>>;

    /// Dialect: an SQL expression for the text at `key` of the JSON object stored as text in
    /// `column` (NULL when absent). Both are written into the SQL: constants of the caller's,
    /// never input.
    fn json_text(&self, column: &str, key: &str) -> String;

    /// Dialect: what ends a `SELECT … LIMIT n` that picks rows to update, so that concurrent
    /// writers each get a different row instead of the same one: PostgreSQL's
    /// ` FOR UPDATE SKIP LOCKED` (rows another transaction locked are passed over, and under
    /// READ COMMITTED a row changed meanwhile is checked again against the WHERE). Empty on
    /// SQLite, whose single writer already excludes concurrent writers.
    fn skip_locked(&self) -> &'static str;

    /// The next ticket of the never-decreasing sequence named by `key` (any text), which
    /// `start` gives its first value when the first ticket is asked for; `None` on an engine
    /// without such sequences (SQLite, whose single writer makes "highest taken + 1" a safe
    /// read). PostgreSQL: a sequence per key (its tickets are taken without a row lock and a
    /// rolled-back ticket is a gap, never handed out twice), made under an advisory lock on the
    /// key, so writers that find it missing together make it once.
    fn take_ticket(
        &mut self,
        key: &str,
        start: &mut dyn FnMut(&mut dyn Db) -> Result<i64>,
    ) -> Result<Option<i64>>;
}

/// A store on one engine: runs a closure in a write transaction or on a read snapshot. The
/// write closure may run more than once (PostgreSQL retries a transaction that lost a
/// serialization conflict), so it must do nothing outside the database.
pub trait Backend {
    fn write_db<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T>;
    fn read_db<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T>;

    /// A write whose closure guards its own reads (unique keys, `Db::skip_locked`,
    /// `Db::take_ticket`) instead of relying on the engine to serialise it: READ COMMITTED on
    /// PostgreSQL, where SERIALIZABLE would make concurrent writers of one hot path abort each
    /// other; the same single-writer transaction as `write_db` on SQLite. Retried like
    /// `write_db` on a deadlock or serialization failure.
    fn write_db_read_committed<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        self.write_db(f)
    }
}

/// How a write transaction is isolated (see `Backend::write_db_read_committed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteIsolation {
    Serializable,
    ReadCommitted,
}

impl Backend for super::SqliteStore {
    fn write_db<T>(&self, mut f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        self.write(|tx| f(&mut SqliteDb::new(tx)))
    }

    fn read_db<T>(&self, mut f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        self.read(|conn| f(&mut SqliteDb::new(conn)))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::PgStore;

    /// The variable that asks the tests to run against PostgreSQL as well (set by
    /// scripts/test-postgres.sh through scripts/lib/postgres.sh).
    pub const POSTGRES_URL_VAR: &str = "ARCD_TEST_POSTGRES_URL";

    /// The server named by `ARCD_TEST_POSTGRES_URL` and a fresh schema name on it, for tests that
    /// connect with options of their own; `None` when the variable is unset.
    pub fn temp_pg_target() -> Option<(String, String)> {
        let url = std::env::var(POSTGRES_URL_VAR).ok()?;
        Some((url, format!("t_{}", uuid::Uuid::new_v4().simple())))
    }

    /// A PostgreSQL store in a fresh schema of the server named by `ARCD_TEST_POSTGRES_URL`;
    /// `None` when the variable is unset. Set but unreachable is a failure, never a skip.
    pub fn temp_pg_store() -> Option<PgStore> {
        let (url, schema) = temp_pg_target()?;
        match PgStore::connect_in_schema(&url, &schema) {
            Ok(store) => Some(store),
            Err(e) => panic!("{POSTGRES_URL_VAR}={url} was given but PostgreSQL failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::temp_pg_store;
    use super::*;

    use crate::store::testing::on_both_engines;

    on_both_engines!(
        numbers_start_at_one_and_grow_per_name,
        a_rolled_back_number_is_never_handed_out_after_a_later_one,
    );

    fn next(store: &impl Backend, name: &str) -> i64 {
        store
            .write_db(|db| db.next_number(name))
            .expect("next number")
    }

    /// The names sims.rs numbers with (ICCID, virtual IMSI), each from 1 like SQLite's counters.
    fn numbers_start_at_one_and_grow_per_name(store: &impl Backend) {
        assert_eq!(next(store, "iccid"), 1);
        assert_eq!(next(store, "iccid"), 2);
        assert_eq!(next(store, "virtual_imsi"), 1);
        assert_eq!(next(store, "iccid"), 3);
        assert_eq!(next(store, "virtual_imsi"), 2);
    }

    /// SQLite takes the rolled-back number back, PostgreSQL leaves a gap: either way no number
    /// is handed out twice to committed work.
    fn a_rolled_back_number_is_never_handed_out_after_a_later_one(store: &impl Backend) {
        let first = next(store, "iccid");
        let failed: Result<i64> = store.write_db(|db| {
            db.next_number("iccid")?;
            Err(StoreError::Corrupt("roll back".into()))
        });
        assert!(failed.is_err());
        let after = next(store, "iccid");
        assert!(after > first, "{after} after {first}");
        assert_eq!(next(store, "iccid"), after + 1);
    }

    #[test]
    fn a_number_without_a_sequence_is_an_error_on_postgres() {
        let Some(pg) = temp_pg_store() else {
            return;
        };
        assert!(pg.write_db(|db| db.next_number("no_such_name")).is_err());
        assert!(pg.write_db(|db| db.next_number("iccid; DROP")).is_err());
    }

    #[test]
    fn values_round_trip_on_postgres() {
        let Some(pg) = temp_pg_store() else {
            return;
        };
        let row = pg
            .read_db(|db| {
                db.query_one(
                    "SELECT $1::bigint, $2::int, $3::text, $4::boolean, $5::bytea, $6::text, $2",
                    &[
                        &i64::MAX,
                        &7_u32,
                        &"text",
                        &true,
                        &Value::Blob(vec![0, 1, 2]),
                        &Option::<String>::None,
                    ],
                )
            })
            .expect("query");
        assert_eq!(row.int(0).expect("int8"), i64::MAX);
        assert_eq!(row.int(1).expect("int4"), 7);
        assert_eq!(row.text(2).expect("text"), "text");
        assert!(row.bool(3).expect("bool"));
        assert_eq!(row.0[4], Value::Blob(vec![0, 1, 2]));
        assert_eq!(row.opt_text(5).expect("null"), None);
        assert_eq!(row.int(6).expect("int4 again"), 7);
        // Out of range for an INT4 parameter: an error, never a wrapped value.
        assert!(pg
            .read_db(|db| db.query_one("SELECT $1::int", &[&i64::MAX]))
            .is_err());
    }

    /// Two writers increment one row concurrently: SERIALIZABLE aborts one of them, `write_db`
    /// runs it again, and no increment is lost.
    #[test]
    fn serialization_failures_are_retried_on_postgres() {
        let Some(first) = temp_pg_store() else {
            return;
        };
        first
            .write_db(|db| db.execute("INSERT INTO counters(name, value) VALUES ('n', 0)", &[]))
            .expect("counter");
        let schema = first
            .read_db(|db| db.query_one("SELECT current_schema()::text", &[]))
            .expect("schema")
            .text(0)
            .expect("schema");
        let url = std::env::var(testing::POSTGRES_URL_VAR).expect("url");
        let second = PgStore::connect_in_schema(&url, &schema).expect("second connection");
        std::thread::scope(|scope| {
            for store in [&first, &second] {
                scope.spawn(move || {
                    for _ in 0..50 {
                        store
                            .write_db(|db| {
                                let value = db
                                    .query_one("SELECT value FROM counters WHERE name = 'n'", &[])?
                                    .int(0)?;
                                db.execute(
                                    "UPDATE counters SET value = $1 WHERE name = 'n'",
                                    &[&(value + 1)],
                                )
                            })
                            .expect("increment");
                    }
                });
            }
        });
        let value = first
            .read_db(|db| db.query_one("SELECT value FROM counters WHERE name = 'n'", &[]))
            .expect("read")
            .int(0)
            .expect("int");
        assert_eq!(value, 100);
    }

    #[test]
    fn an_unreachable_server_is_unavailable() {
        // Port 1 on loopback: nothing listens there.
        let Err(e) = PgStore::connect("postgres://arcd@127.0.0.1:1/arcd?connect_timeout=2") else {
            panic!("connected to port 1");
        };
        assert!(e.is_unavailable(), "{e}");
    }
}
