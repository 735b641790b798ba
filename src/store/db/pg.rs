//! `Db` on PostgreSQL through the blocking `postgres` client (every store call already runs on
//! tokio's blocking pool, as SQLite's do). Spike: one connection behind a mutex, reopened after a
//! lost connection; a pool comes with the real work. Writes run SERIALIZABLE and are retried on a
//! serialization failure; reads run in a READ ONLY REPEATABLE READ snapshot, so the several
//! statements of one read see one state.

use std::collections::HashMap;

use bytes::BytesMut;
use parking_lot::Mutex;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, IsolationLevel, NoTls, Statement, Transaction};

use super::{Backend, Db, Param, Row, Value};
use crate::store::migrations_pg;
use crate::store::{Result, StoreError};

/// How many times a write that lost a serialization conflict is run in all; between runs a
/// random pause of up to `attempt` ms, so two writers that keep colliding drift apart.
const WRITE_ATTEMPTS: u32 = 10;

pub struct PgStore {
    url: String,
    /// Tests: a schema of their own on a shared server (created, then first on search_path).
    schema: Option<String>,
    conn: Mutex<Option<PgConn>>,
}

struct PgConn {
    client: Client,
    /// Statements prepared on this connection, by their text (PostgreSQL has no cache of its own
    /// for the extended protocol: without this every statement costs one more round trip).
    statements: HashMap<String, Statement>,
}

impl PgConn {
    fn open(url: &str, schema: Option<&str>) -> Result<PgConn> {
        let mut client = Client::connect(url, NoTls)?;
        if let Some(schema) = schema {
            client.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\""
            ))?;
        }
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }
}

impl PgStore {
    /// Connects (a libpq URL or `key=value` string) and brings the schema up to date.
    pub fn connect(url: &str) -> Result<PgStore> {
        PgStore::open(url, None)
    }

    /// Like `connect`, in the schema `schema` (letters, digits and `_` only), made if missing.
    pub fn connect_in_schema(url: &str, schema: &str) -> Result<PgStore> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Corrupt(format!("bad schema name {schema:?}")));
        }
        PgStore::open(url, Some(schema))
    }

    fn open(url: &str, schema: Option<&str>) -> Result<PgStore> {
        let mut conn = PgConn::open(url, schema)?;
        migrations_pg::migrate(&mut conn.client)?;
        Ok(PgStore {
            url: url.to_string(),
            schema: schema.map(str::to_string),
            conn: Mutex::new(Some(conn)),
        })
    }

    /// The open connection, reopened if the last one was lost (statements prepared on it go).
    fn connected<'s>(&self, slot: &'s mut Option<PgConn>) -> Result<&'s mut PgConn> {
        if slot.as_ref().is_some_and(|conn| conn.client.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(PgConn::open(&self.url, self.schema.as_deref())?);
        }
        slot.as_mut()
            .ok_or_else(|| StoreError::Corrupt("PostgreSQL connection missing".into()))
    }

    fn run<T>(
        &self,
        isolation: IsolationLevel,
        read_only: bool,
        mut f: impl FnMut(&mut dyn Db) -> Result<T>,
    ) -> Result<T> {
        let mut slot = self.conn.lock();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.connected(&mut slot)?;
            let PgConn { client, statements } = conn;
            let mut tx = client
                .build_transaction()
                .isolation_level(isolation)
                .read_only(read_only)
                .start()?;
            let result = f(&mut PgDb {
                tx: &mut tx,
                statements,
            });
            // An error drops `tx`, which rolls back.
            let outcome = match result {
                Ok(value) => tx.commit().map(|()| value).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if e.is_serialization_failure() && attempt < WRITE_ATTEMPTS => {
                    let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=attempt * 1000);
                    std::thread::sleep(std::time::Duration::from_micros(u64::from(pause)));
                }
                other => return other,
            }
        }
    }
}

impl Backend for PgStore {
    fn write_db<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        self.run(IsolationLevel::Serializable, false, f)
    }

    fn read_db<T>(&self, f: impl FnMut(&mut dyn Db) -> Result<T>) -> Result<T> {
        self.run(IsolationLevel::RepeatableRead, true, f)
    }
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
    fn json_object_entries(&self, column: &str) -> String {
        format!("jsonb_each_text({column}::jsonb)")
    }

    fn next_number(&mut self, name: &str) -> Result<i64> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(StoreError::Corrupt(format!("bad number name {name:?}")));
        }
        let sequence = format!("number_{name}");
        self.query_one("SELECT nextval(CAST($1 AS TEXT)::regclass)", &[&sequence])?
            .int(0)
    }

    fn json_text(&self, column: &str, key: &str) -> String {
        format!("(CAST({column} AS jsonb) ->> '{key}')")
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
