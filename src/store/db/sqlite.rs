//! `Db` on rusqlite: portable `$N` parameters are bound by name (SQLite numbers named parameters
//! in order of first appearance, so `$2 … $1` would swap them if bound by position).

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Statement};

use super::{Db, Param, Row, Value};
use crate::store::{Result, StoreError};

/// A connection, or a transaction (through `Deref<Target = Connection>`), seen as a `Db`.
pub struct SqliteDb<'c> {
    conn: &'c Connection,
}

impl<'c> SqliteDb<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        SqliteDb { conn }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(value) => ValueRef::Integer(*value),
            Value::Bool(value) => ValueRef::Integer(i64::from(*value)),
            Value::Text(value) => ValueRef::Text(value.as_bytes()),
            Value::Blob(value) => ValueRef::Blob(value),
        }))
    }
}

fn bind(statement: &mut Statement<'_>, params: &[&dyn Param]) -> Result<()> {
    if statement.parameter_count() != params.len() {
        return Err(StoreError::Corrupt(format!(
            "the statement takes {} parameters, {} given",
            statement.parameter_count(),
            params.len()
        )));
    }
    for (position, param) in params.iter().enumerate() {
        let name = format!("${}", position + 1);
        let index = statement
            .parameter_index(&name)?
            .ok_or_else(|| StoreError::Corrupt(format!("the statement has no parameter {name}")))?;
        statement.raw_bind_parameter(index, param.to_value())?;
    }
    Ok(())
}

fn value_of(value: ValueRef<'_>) -> Result<Value> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Int(value),
        ValueRef::Text(bytes) => Value::Text(
            String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
        ValueRef::Real(_) => {
            return Err(StoreError::Corrupt(
                "a REAL column; the store reads integers, text and blobs".into(),
            ))
        }
    })
}

impl Db for SqliteDb<'_> {
    fn dialect(&self) -> super::Dialect {
        super::Dialect::Sqlite
    }

    fn json_object_entries(&self, column: &str) -> String {
        format!("json_each({column})")
    }

    fn skip_locked(&self) -> &'static str {
        ""
    }

    fn take_ticket(
        &mut self,
        _key: &str,
        _start: &mut dyn FnMut(&mut dyn Db) -> Result<i64>,
    ) -> Result<Option<i64>> {
        Ok(None)
    }

    fn next_number(&mut self, name: &str) -> Result<i64> {
        self.query_one(
            "INSERT INTO counters(name, value) VALUES ($1, 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1
             RETURNING value",
            &[&name],
        )?
        .int(0)
    }

    fn json_text(&self, column: &str, key: &str) -> String {
        format!("json_extract({column}, '$.{key}')")
    }

    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        let mut statement = self.conn.prepare_cached(sql)?;
        bind(&mut statement, params)?;
        Ok(statement.raw_execute()? as u64)
    }

    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>> {
        let mut statement = self.conn.prepare_cached(sql)?;
        rows_of(&mut statement, params)
    }

    fn query_once(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>> {
        let mut statement = self.conn.prepare(sql)?;
        rows_of(&mut statement, params)
    }
}

fn rows_of(statement: &mut Statement<'_>, params: &[&dyn Param]) -> Result<Vec<Row>> {
    bind(statement, params)?;
    let columns = statement.column_count();
    let mut rows = statement.raw_query();
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns)
            .map(|index| value_of(row.get_ref(index)?))
            .collect::<Result<Vec<Value>>>()?;
        found.push(Row(values));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason for binding by name: SQLite numbers `$N` by first appearance.
    #[test]
    fn dollar_parameters_bind_by_number_not_by_appearance() {
        let conn = Connection::open_in_memory().expect("open");
        let mut db = SqliteDb::new(&conn);
        let row = db
            .query_one("SELECT $2, $1, $2", &[&"one", &2_i64])
            .expect("query");
        assert_eq!(row.int(0).expect("int"), 2);
        assert_eq!(row.text(1).expect("text"), "one");
        assert_eq!(row.int(2).expect("int"), 2);
        // The trap this avoids: positional binding gives $2 the first value.
        let positional: String = conn
            .query_row("SELECT $2, $1", rusqlite::params!["one", 2], |r| r.get(0))
            .expect("positional");
        assert_eq!(positional, "one");
    }

    #[test]
    fn a_missing_or_extra_parameter_is_an_error() {
        let conn = Connection::open_in_memory().expect("open");
        let mut db = SqliteDb::new(&conn);
        assert!(db.query("SELECT $1, $3", &[&1_i64, &2_i64]).is_err());
        assert!(db.query("SELECT $1", &[&1_i64, &2_i64]).is_err());
    }
}
