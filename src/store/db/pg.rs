//! `Db` on PostgreSQL through the blocking `postgres` client (every store call already runs on
//! tokio's blocking pool, as SQLite's do). A pool of connections (`pg_pool.rs`), each with its prepared
//! statements; a lost connection is dropped and the next call opens a new one. Writes run
//! SERIALIZABLE and are retried on a serialization failure; reads run in a READ ONLY REPEATABLE
//! READ snapshot, so the several statements of one read see one state.

use std::collections::HashMap;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, IsolationLevel, NoTls, Statement, Transaction};

use super::pg_pool::{PgConn, Pool};
use super::{Backend, Db, Param, Row, Value};
use crate::store::migrations_pg;
use crate::store::{Result, StoreError};

/// How long a write that keeps losing serialization conflicts is run again: SQLite's writer
/// waits as long for its lock (`BUSY_TIMEOUT`). A count of runs is not enough: against writers
/// that run back to back on one row, the one that pauses loses again and again until they stop.
const WRITE_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// How a `PgStore` connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections kept open. A call waits for a free one when all are busy.
    pub pool_size: usize,
    /// Tests: a schema of their own on a shared server (letters, digits and `_`; made if missing,
    /// then the only one on `search_path`).
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: default_pool_size(),
            schema: None,
        }
    }
}

/// Two connections per core, at least 4: a store call holds its connection while it waits on
/// the network or the server's disk, so more calls than cores keep the CPU busy.
pub fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (2 * cores).max(4)
}

pub struct PgStore {
    url: String,
    schema: Option<String>,
    pool: Pool,
    after_commit: super::pg_notify::AfterCommitSender,
}

/// A session-level advisory lock held on a connection of its own (not one of the pool's): the
/// holder of a singleton job (Harvest retention, outbox pruning). Released on drop, or by the
/// server when the connection is lost, so a job checks `is_lost` between batches.
pub struct AdvisoryLock {
    client: Client,
    key: i64,
}

impl AdvisoryLock {
    /// The connection that holds the lock has gone: the lock may now be someone else's.
    pub fn is_lost(&self) -> bool {
        self.client.is_closed()
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        // Unlock explicitly: closing the connection would release it too, but only once the
        // server has noticed, so a next holder could be refused for a moment.
        if let Err(e) = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
        {
            tracing::debug!(error = %e, key = self.key, "advisory unlock failed; the lock goes with the connection");
        }
    }
}

impl PgStore {
    /// Connects (a libpq URL or `key=value` string, several hosts allowed) and brings the schema
    /// up to date.
    pub fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_with(url, &PgOptions::default())
    }

    /// Like `connect`, in the schema `schema`, made if missing.
    pub fn connect_in_schema(url: &str, schema: &str) -> Result<PgStore> {
        PgStore::connect_with(
            url,
            &PgOptions {
                schema: Some(schema.to_string()),
                ..PgOptions::default()
            },
        )
    }

    pub fn connect_with(url: &str, options: &PgOptions) -> Result<PgStore> {
        let schema = options.schema.as_deref();
        if let Some(schema) = schema {
            if schema.is_empty()
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::Corrupt(format!("bad schema name {schema:?}")));
            }
        }
        let mut first = PgConn::open(url, schema)?;
        if let Some(schema) = schema {
            migrations_pg::create_schema(&mut first.client, schema)?;
        }
        migrations_pg::migrate(&mut first.client)?;
        Ok(PgStore {
            url: url.to_string(),
            schema: options.schema.clone(),
            pool: Pool::new(options.pool_size, first),
            after_commit: super::pg_notify::AfterCommitSender::new(url, schema),
        })
    }

    /// Sends `statement` (autocommit) once after now, on a thread of the store's own, never on
    /// the caller's path: requests made while one is pending share its send (see `pg_notify`).
    pub fn send_after_commit(&self, statement: &'static str) {
        self.after_commit.request(statement);
    }

    /// The URL and the schema (tests) this store connects with, for a connection of another
    /// client to the same place (the outbox follower's LISTEN).
    pub fn target(&self) -> (&str, Option<&str>) {
        (&self.url, self.schema.as_deref())
    }

    /// Takes the session-level advisory lock `key` if nobody holds it (`None` if someone does),
    /// on a connection of its own that lives as long as the returned guard.
    pub fn try_advisory_lock(&self, key: i64) -> Result<Option<AdvisoryLock>> {
        let mut client = Client::connect(&self.url, NoTls)?;
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
            .try_get(0)?;
        Ok(taken.then_some(AdvisoryLock { client, key }))
    }

    fn run<T>(
        &self,
        isolation: IsolationLevel,
        read_only: bool,
        mut f: impl FnMut(&mut dyn Db) -> Result<T>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        // Idle connections found dead at BEGIN (server restarted, connection killed): each is
        // replaced and the call goes on, at most once per pooled connection plus one.
        let mut stale = 0;
        loop {
            let mut lent = self.pool.lend(&self.url, self.schema.as_deref())?;
            let outcome = match in_transaction(lent.conn()?, isolation, read_only, &mut f) {
                Run::NotBegun(e) => {
                    lent.lost = e.is_unavailable();
                    // Nothing ran yet: another connection may run it.
                    if lent.lost && lent.reused && stale <= self.pool.size {
                        stale += 1;
                        continue;
                    }
                    return Err(e);
                }
                Run::Ran(outcome) => outcome,
            };
            attempt += 1;
            match outcome {
                Err(e)
                    if e.is_serialization_failure() && started.elapsed() < WRITE_RETRY_BUDGET =>
                {
                    drop(lent);
                    pause_before_retry(attempt);
                }
                Err(e) => {
                    lent.lost = e.is_unavailable();
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }
}

/// What one run of a closure in a transaction came to.
enum Run<T> {
    /// BEGIN failed: nothing of the closure ran.
    NotBegun(StoreError),
    /// Committed (`Ok`) or rolled back (`Err`).
    Ran(Result<T>),
}

fn in_transaction<T>(
    conn: &mut PgConn,
    isolation: IsolationLevel,
    read_only: bool,
    f: &mut impl FnMut(&mut dyn Db) -> Result<T>,
) -> Run<T> {
    let PgConn { client, statements } = conn;
    let mut tx = match client
        .build_transaction()
        .isolation_level(isolation)
        .read_only(read_only)
        .start()
    {
        Ok(tx) => tx,
        Err(e) => return Run::NotBegun(e.into()),
    };
    // An error drops `tx`, which rolls back.
    Run::Ran(
        match f(&mut PgDb {
            tx: &mut tx,
            statements,
        }) {
            Ok(value) => tx.commit().map(|()| value).map_err(StoreError::from),
            Err(e) => Err(e),
        },
    )
}

/// Full jitter: a random pause below 2^attempt ms (at most 64 ms), so writers that keep
/// colliding drift apart.
fn pause_before_retry(attempt: u32) {
    let ceiling_us = 1000_u64 << attempt.min(6);
    let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=ceiling_us);
    std::thread::sleep(std::time::Duration::from_micros(pause));
}

impl Backend for PgStore {
    fn write_db<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let result = self.run(IsolationLevel::Serializable, false, f);
        crate::metrics::store_write(started.elapsed());
        result
    }

    fn read_db<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        self.run(IsolationLevel::RepeatableRead, true, f)
    }

    fn write_db_read_committed<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let result = self.run(IsolationLevel::ReadCommitted, false, f);
        crate::metrics::store_write(started.elapsed());
        result
    }
}

/// The sequence of a `take_ticket` key: `ticket_` and 32 hex digits of the key's SHA-256, so any
/// key makes a valid identifier (at most 63 bytes) and distinct keys distinct names.
fn ticket_sequence(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("ticket_{}", hex::encode(&digest[..16]))
}

/// One open PostgreSQL transaction as a `Db`.
pub struct PgDb<'a, 'c> {
    tx: &'a mut Transaction<'c>,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgDb<'_, '_> {
    fn prepared(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

fn values(params: &[&dyn Param]) -> Vec<Value> {
    params.iter().map(|param| param.to_value()).collect()
}

fn refs(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|value| value as &(dyn ToSql + Sync))
        .collect()
}

impl Db for PgDb<'_, '_> {
    fn dialect(&self) -> super::Dialect {
        super::Dialect::Postgres
    }

    fn json_object_entries(&self, column: &str) -> String {
        format!("jsonb_each_text({column}::jsonb)")
    }

    fn next_number(&mut self, name: &str) -> Result<i64> {
        let sequence = number_sequence(name)?;
        self.query_one("SELECT nextval(CAST($1 AS TEXT)::regclass)", &[&sequence])?
            .int(0)
    }

    fn next_number_pair(&mut self, first: &str, second: &str) -> Result<(i64, i64)> {
        let (first, second) = (number_sequence(first)?, number_sequence(second)?);
        let row = self.query_one(
            "SELECT nextval(CAST($1 AS TEXT)::regclass), nextval(CAST($2 AS TEXT)::regclass)",
            &[&first, &second],
        )?;
        Ok((row.int(0)?, row.int(1)?))
    }

    fn json_text(&self, column: &str, key: &str) -> String {
        format!("(CAST({column} AS jsonb) ->> '{key}')")
    }

    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }

    fn take_ticket(
        &mut self,
        key: &str,
        start: &mut dyn FnMut(&mut dyn Db) -> Result<i64>,
    ) -> Result<Option<i64>> {
        let sequence = ticket_sequence(key);
        // nextval(NULL) is NULL: one round trip while the sequence exists, which is always
        // but the first time.
        let take = "SELECT nextval(to_regclass(CAST($1 AS TEXT)))";
        if let Some(ticket) = self.query_one(take, &[&sequence])?.opt_int(0)? {
            return Ok(Some(ticket));
        }
        // Writers that find it missing together make it one after the other: the second waits
        // here until the first commits, then its IF NOT EXISTS finds the sequence. (A look-up
        // by name would not do after the wait: the backend's catalog cache may still hold "no
        // such relation"; CREATE checks the catalog afresh.) A first transaction that rolls
        // back takes its sequence with it, and the next one makes it again.
        self.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(CAST($1 AS TEXT), 0))",
            &[&sequence],
        )?;
        let first = start(self)?;
        // The name is made above from hex digits; the start is an integer.
        self.tx.batch_execute(&format!(
            "CREATE SEQUENCE IF NOT EXISTS {sequence} AS BIGINT MINVALUE {first} START WITH {first}"
        ))?;
        self.query_one(take, &[&sequence])?
            .opt_int(0)?
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("sequence {sequence} missing after CREATE")))
    }

    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        let statement = self.prepared(sql)?;
        let values = values(params);
        let changed = self.tx.execute(&statement, &refs(&values))?;
        Ok(changed)
    }

    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>> {
        let statement = self.prepared(sql)?;
        let values = values(params);
        let rows = self.tx.query(&statement, &refs(&values))?;
        rows.iter().map(row_of).collect()
    }

    fn query_once(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>> {
        let values = values(params);
        // Text, not a `Statement`: an unnamed statement that PostgreSQL forgets after the query.
        let rows = self.tx.query(sql, &refs(&values))?;
        rows.iter().map(row_of).collect()
    }
}

fn row_of(row: &postgres::Row) -> Result<Row> {
    let mut found = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(index)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(index)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(index)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(index)?.map(Value::Bool)
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob)
        } else {
            return Err(StoreError::Corrupt(format!(
                "column {} has type {ty}, which the store does not read",
                column.name()
            )));
        };
        found.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(found))
}

/// A `Value` fits the parameter's type as PostgreSQL inferred it: integers narrow to INT4/INT2
/// when the column is one (out of range is an error, never a wrap); anything else that does not
/// fit is postgres' WrongType error.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(value) if *ty == Type::INT4 => {
                i32::try_from(*value)?.to_sql_checked(ty, out)
            }
            Value::Int(value) if *ty == Type::INT2 => {
                i16::try_from(*value)?.to_sql_checked(ty, out)
            }
            Value::Int(value) => value.to_sql_checked(ty, out),
            Value::Bool(value) => value.to_sql_checked(ty, out),
            Value::Text(value) => value.to_sql_checked(ty, out),
            Value::Blob(value) => value.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// The sequence behind the named number (`Db::next_number`); the name is checked because it is
/// turned into a relation name.
fn number_sequence(name: &str) -> Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(StoreError::Corrupt(format!("bad number name {name:?}")));
    }
    Ok(format!("number_{name}"))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::testing::{temp_pg_store, temp_pg_target};
    use super::*;

    fn store_with_pool(size: usize) -> Option<PgStore> {
        let (url, schema) = temp_pg_target()?;
        let options = PgOptions {
            pool_size: size,
            schema: Some(schema),
        };
        Some(PgStore::connect_with(&url, &options).expect("connect"))
    }

    fn backend_pid(store: &PgStore) -> i64 {
        store
            .read_db(|db| db.query_one("SELECT pg_backend_pid()", &[])?.int(0))
            .expect("pid")
    }

    #[test]
    fn the_default_pool_has_two_connections_per_core_and_at_least_four() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_pool_size(), (2 * cores).max(4));
    }

    /// 8 threads write and read at once through a pool of 4: every write lands, every read sees
    /// at least the thread's own rows.
    #[test]
    fn concurrent_writes_and_reads_share_the_pool() {
        let Some(store) = store_with_pool(4) else {
            return;
        };
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let store = &store;
                scope.spawn(move || {
                    for n in 0..25_i64 {
                        let name = format!("t{thread}-{n}");
                        store
                            .write_db(|db| {
                                db.execute(
                                    "INSERT INTO counters(name, value) VALUES ($1, $2)",
                                    &[&name, &n],
                                )
                            })
                            .expect("write");
                        let mine = store
                            .read_db(|db| {
                                db.query_one(
                                    "SELECT COUNT(*) FROM counters WHERE name LIKE $1",
                                    &[&format!("t{thread}-%")],
                                )?
                                .int(0)
                            })
                            .expect("read");
                        assert_eq!(mine, n + 1);
                    }
                });
            }
        });
        let all = store
            .read_db(|db| db.query_one("SELECT COUNT(*) FROM counters", &[])?.int(0))
            .expect("count");
        assert_eq!(all, 200);
    }

    /// Two reads, each waiting inside its transaction for the other to start: only possible when
    /// they run on two connections at once (one connection behind a lock times out here).
    #[test]
    fn calls_run_side_by_side_on_several_connections() {
        let Some(store) = store_with_pool(2) else {
            return;
        };
        let (first_in, first_seen) = mpsc::channel::<()>();
        let (second_in, second_seen) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            for (arrived, other) in [(first_in, second_seen), (second_in, first_seen)] {
                let store = &store;
                scope.spawn(move || {
                    store
                        .read_db(|db| {
                            db.query_one("SELECT 1", &[])?;
                            let _ = arrived.send(());
                            other.recv_timeout(Duration::from_secs(20)).map_err(|_| {
                                StoreError::Corrupt("the other call never ran".into())
                            })?;
                            Ok(())
                        })
                        .expect("both calls inside a transaction at once");
                });
            }
        });
    }

    /// The server ends the pool's only connection (as a restart or failover would): the next
    /// call opens a new one and succeeds, reads and writes alike.
    #[test]
    fn a_connection_killed_by_the_server_is_replaced() {
        let (Some(store), Some(killer)) = (store_with_pool(1), temp_pg_store()) else {
            return;
        };
        let before = backend_pid(&store);
        let killed = killer
            .read_db(|db| {
                db.query_one("SELECT pg_terminate_backend($1, 10000)", &[&before])?
                    .bool(0)
            })
            .expect("terminate");
        assert!(killed);
        let after = backend_pid(&store);
        assert_ne!(after, before);
        store
            .write_db(|db| db.next_number("iccid"))
            .expect("write after the kill");
    }

    /// The server named by the test URL as (host, port, user, dbname).
    fn test_server() -> Option<(String, u16, String, String)> {
        let (url, _) = temp_pg_target()?;
        let config: postgres::Config = url.parse().expect("test URL");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("the test URL names no TCP host: {other:?}"),
        };
        let port = *config.get_ports().first().expect("port");
        let user = config.get_user().expect("user").to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        Some((host, port, user, dbname))
    }

    /// Both spellings of several hosts: the first is dead (nothing listens on port 1), the
    /// client goes on to the second, which accepts writes (`target_session_attrs=read-write`).
    #[test]
    fn a_multi_host_url_skips_a_dead_first_host() {
        let Some((host, port, user, dbname)) = test_server() else {
            return;
        };
        let urls = [
            format!(
                "host=127.0.0.1,{host} port=1,{port} user={user} dbname={dbname} \
                 target_session_attrs=read-write connect_timeout=10"
            ),
            format!(
                "postgres://{user}@127.0.0.1:1,{host}:{port}/{dbname}\
                 ?target_session_attrs=read-write&connect_timeout=10"
            ),
        ];
        for url in urls {
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let store = PgStore::connect_in_schema(&url, &schema).expect(&url);
            let served_by = store
                .write_db(|db| db.query_one("SELECT inet_server_port()", &[])?.int(0))
                .expect("write through the second host");
            assert_eq!(served_by, i64::from(port), "{url}");
        }
    }

    #[test]
    fn an_advisory_lock_has_one_holder_until_it_is_dropped() {
        let Some(store) = temp_pg_store() else {
            return;
        };
        const KEY: i64 = 0x7465_7374_6c6f_636b; // random per run below, so parallel runs differ
        let key = KEY ^ i64::from(rand::random::<u32>());
        let first = store.try_advisory_lock(key).expect("lock").expect("free");
        assert!(!first.is_lost());
        assert!(store.try_advisory_lock(key).expect("second try").is_none());
        drop(first);
        let second = store.try_advisory_lock(key).expect("lock again");
        assert!(
            second.is_some(),
            "free again once the first holder dropped it"
        );
    }
}
