//! `arcd store copy`: moves a box's whole state from its SQLite file into an empty PostgreSQL
//! store, offline (the source's data directory is locked for the copy). Every row is copied as
//! it is, so devices keep their keys, addresses and sessions; numbering (ICCIDs, IMSIs, event
//! and Harvest ids) continues after the copied values.
//!
//! Engine-specific by nature: it reads SQLite's catalogue (`sqlite_master`, `pragma_*`) and
//! PostgreSQL's (`information_schema`, sequences), so it names both engines here and nowhere else.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::db::{values_rows, Backend, Db, Param, SqliteDb, Value};
use super::{Result, Store, StoreError};

/// Tables whose rows the destination's own triggers derive from other tables; copying them as
/// well would count twice. Checked equal after the copy instead.
const DERIVED_TABLES: &[&str] = &["operator_sim_counts"];

/// Rows per INSERT: well under PostgreSQL's 65,535 parameters for the widest table, and the
/// most rows held in memory at once (the source is streamed, never loaded whole).
const ROWS_PER_INSERT: usize = 500;

/// What was copied: rows per table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopySummary {
    pub rows: BTreeMap<String, u64>,
}

/// One table of the source, with its columns in order.
struct Table {
    name: String,
    columns: Vec<String>,
}

/// Copies every row of `from` (SQLite) into `to` (PostgreSQL, migrated and empty) in one
/// destination transaction: all or nothing. The source is read on one snapshot inside the
/// destination's transaction, so a retried transaction (PostgreSQL's serialization retry) reads
/// and writes the same rows again from the start.
pub fn copy(from: &Store, to: &Store) -> Result<CopySummary> {
    let (Some(source), Store::Postgres(_)) = (from.sqlite(), to) else {
        return Err(StoreError::Corrupt(
            "store copy goes from a SQLite store to a PostgreSQL store".into(),
        ));
    };
    let summary = source.read(|conn| {
        let tables = tables_in_dependency_order(&mut SqliteDb::new(conn))?;
        to.write_db(|db| copy_tables(conn, db, &tables))
    })?;
    Ok(summary)
}

/// The destination transaction's work; everything it does is undone with it (sequences are
/// set, not advanced, so a second run sets them to the same values).
fn copy_tables(source: &Connection, db: &mut dyn Db, tables: &[Table]) -> Result<CopySummary> {
    refuse_unless_empty(db, tables)?;
    let mut summary = CopySummary::default();
    for table in tables {
        let rows = copy_table(source, db, table)?;
        continue_identity(db, table, autoincrement_high_water(source, &table.name)?)?;
        summary.rows.insert(table.name.clone(), rows);
    }
    let mut counters = source.prepare("SELECT name, value FROM counters")?;
    let mut rows = counters.query([])?;
    while let Some(row) = rows.next()? {
        continue_number(db, &row.get::<_, String>(0)?, row.get(1)?)?;
    }
    check_derived_tables(&mut SqliteDb::new(source), db)?;
    Ok(summary)
}

/// The source's tables (not SQLite's own, not derived ones), each after the tables its foreign
/// keys name, so inserts never break a reference.
fn tables_in_dependency_order(db: &mut dyn Db) -> Result<Vec<Table>> {
    let names: Vec<String> = db
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
            &[],
        )?
        .iter()
        .map(|row| row.text(0))
        .collect::<Result<_>>()?;
    let mut parents: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for name in &names {
        let referenced = db
            .query("SELECT \"table\" FROM pragma_foreign_key_list($1)", &[name])?
            .iter()
            .map(|row| row.text(0))
            .collect::<Result<BTreeSet<String>>>()?;
        parents.insert(name, referenced);
    }
    let mut ordered: Vec<&str> = Vec::new();
    while ordered.len() < names.len() {
        let ready = parents.iter().find(|(name, referenced)| {
            !ordered.contains(name)
                && referenced
                    .iter()
                    .all(|parent| parent == *name || ordered.contains(&parent.as_str()))
        });
        match ready {
            Some((name, _)) => ordered.push(name),
            None => {
                return Err(StoreError::Corrupt(
                    "the source's foreign keys form a cycle".into(),
                ))
            }
        }
    }
    let mut tables = Vec::new();
    for name in ordered {
        if DERIVED_TABLES.contains(&name) {
            continue;
        }
        let columns = db
            .query(
                "SELECT name FROM pragma_table_info($1) ORDER BY cid",
                &[&name],
            )?
            .iter()
            .map(|row| row.text(0))
            .collect::<Result<Vec<String>>>()?;
        tables.push(Table {
            name: name.to_string(),
            columns,
        });
    }
    Ok(tables)
}

/// Tables the destination fills itself when it starts: rendezvous points (with server keys,
/// made by whichever node starts first, this command's own opening of the destination too) and
/// settings (the API token signing key, made by the schema). The source's rows replace them:
/// devices know its server keys, clients hold tokens signed with its key.
const MADE_AT_START: &[&str] = &["rendezvous_points", "settings"];

/// A copy goes into an empty store only: merging two boxes' state is not a copy.
fn refuse_unless_empty(db: &mut dyn Db, tables: &[Table]) -> Result<()> {
    for table in tables {
        if MADE_AT_START.contains(&table.name.as_str()) {
            continue;
        }
        let found = db
            .query_opt(&format!("SELECT 1 FROM {} LIMIT 1", table.name), &[])?
            .is_some();
        if found {
            return Err(StoreError::Corrupt(format!(
                "the destination already holds data (table {}): store copy only fills an empty store",
                table.name
            )));
        }
    }
    for table in MADE_AT_START {
        db.execute(&format!("DELETE FROM {table}"), &[])?;
    }
    Ok(())
}

/// Streams `table`'s rows from the source into multi-row INSERTs; returns how many.
fn copy_table(source: &Connection, db: &mut dyn Db, table: &Table) -> Result<u64> {
    let booleans = boolean_columns(db, table)?;
    let overriding = if identity_column(db, table)?.is_some() {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let width = table.columns.len();
    let columns = table.columns.join(", ");
    let insert = |db: &mut dyn Db, values: &[Value]| -> Result<()> {
        let sql = format!(
            "INSERT INTO {} ({columns}){overriding} VALUES {}",
            table.name,
            values_rows(values.len() / width, width)
        );
        let params: Vec<&dyn Param> = values.iter().map(|v| v as &dyn Param).collect();
        db.execute(&sql, &params).map(drop)
    };
    let mut select = source.prepare(&format!("SELECT {columns} FROM {}", table.name))?;
    let mut rows = select.query([])?;
    let mut batch: Vec<Value> = Vec::with_capacity(ROWS_PER_INSERT * width);
    let mut copied = 0;
    while let Some(row) = rows.next()? {
        for column in 0..width {
            let value = value_of(&table.name, row.get_ref(column)?)?;
            batch.push(match value {
                Value::Int(flag) if booleans.contains(&column) => Value::Bool(flag != 0),
                other => other,
            });
        }
        copied += 1;
        if batch.len() == ROWS_PER_INSERT * width {
            insert(db, &batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        insert(db, &batch)?;
    }
    Ok(copied)
}

fn value_of(table: &str, value: ValueRef<'_>) -> Result<Value> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Int(value),
        ValueRef::Text(bytes) => Value::Text(
            String::from_utf8(bytes.to_vec())
                .map_err(|e| StoreError::Corrupt(format!("table {table}: {e}")))?,
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
        ValueRef::Real(_) => {
            return Err(StoreError::Corrupt(format!(
                "table {table} holds a REAL value; the store has none"
            )))
        }
    })
}

/// Positions (in `table.columns`) of the destination's BOOLEAN columns: SQLite stores 0/1.
fn boolean_columns(db: &mut dyn Db, table: &Table) -> Result<BTreeSet<usize>> {
    let names: BTreeSet<String> = db
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 AND data_type = 'boolean'",
            &[&table.name],
        )?
        .iter()
        .map(|row| row.text(0))
        .collect::<Result<_>>()?;
    Ok(table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, name)| names.contains(*name))
        .map(|(index, _)| index)
        .collect())
}

/// The destination's `GENERATED ALWAYS AS IDENTITY` column of `table`, if it has one.
fn identity_column(db: &mut dyn Db, table: &Table) -> Result<Option<String>> {
    db.query_opt(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 AND is_identity = 'YES'",
        &[&table.name],
    )?
    .map(|row| row.text(0))
    .transpose()
}

/// The largest id an AUTOINCREMENT table of the source ever handed out (`sqlite_sequence`; rows
/// since deleted count too, SQLite never reuses them); 0 when it has none.
fn autoincrement_high_water(source: &Connection, table: &str) -> Result<i64> {
    let mut db = SqliteDb::new(source);
    if db
        .query_opt(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'",
            &[],
        )?
        .is_none()
    {
        return Ok(0);
    }
    db.query_opt("SELECT seq FROM sqlite_sequence WHERE name = $1", &[&table])?
        .map_or(Ok(0), |row| row.int(0))
}

/// Ids the destination assigns itself continue after the largest copied one, and after every id
/// the source ever handed out (`high_water`).
fn continue_identity(db: &mut dyn Db, table: &Table, high_water: i64) -> Result<()> {
    let Some(column) = identity_column(db, table)? else {
        return Ok(());
    };
    db.query_one(
        &format!(
            "SELECT setval(pg_get_serial_sequence($1, $2),
                           GREATEST(COALESCE((SELECT MAX({column}) FROM {}), 0), $3) + 1, false)",
            table.name
        ),
        &[&table.name, &column, &high_water],
    )?;
    Ok(())
}

/// PostgreSQL hands out numbers (ICCIDs, IMSIs) from a sequence `number_<name>` where SQLite
/// counts the last one handed out in a `counters` row (`Db::next_number`): the sequence
/// continues after it.
fn continue_number(db: &mut dyn Db, name: &str, last: i64) -> Result<()> {
    let sequence = format!("number_{name}");
    let exists = db
        .query_opt(
            "SELECT 1 FROM pg_class WHERE relkind = 'S' AND relname = $1
             AND relnamespace = current_schema()::regnamespace",
            &[&sequence],
        )?
        .is_some();
    if exists && last > 0 {
        db.query_one(
            "SELECT setval(CAST($1 AS TEXT)::regclass, $2)",
            &[&sequence, &last],
        )?;
    }
    Ok(())
}

/// The trigger-kept tables came out the same on both sides (else nothing is committed).
fn check_derived_tables(source: &mut dyn Db, destination: &mut dyn Db) -> Result<()> {
    let counts = |db: &mut dyn Db| -> Result<Vec<(String, i64)>> {
        db.query(
            "SELECT operator_id, CAST(SUM(live_sims) AS BIGINT) FROM operator_sim_counts
             GROUP BY operator_id HAVING SUM(live_sims) <> 0 ORDER BY operator_id",
            &[],
        )?
        .iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .collect()
    };
    let (source, destination) = (counts(source)?, counts(destination)?);
    if source != destination {
        return Err(StoreError::Corrupt(format!(
            "per-operator SIM counts differ after the copy: source {source:?}, destination {destination:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Config, Coverage};
    use crate::ids::{OperatorId, RendezvousPointId};
    use crate::store::db::testing::temp_pg_store;
    use crate::store::harvest::{self, NewEntry};
    use crate::store::operators::{self, NewAuthKey};
    use crate::store::sessions::{self, SessionPolicy};
    use crate::store::subscriptions::{self, IotSimImport};
    use crate::store::testing::temp_store;
    use crate::store::vpgs::{self, NewVpg};
    use crate::store::{groups, now_ms, rendezvous, sims};

    const JP: &str = "ap-northeast-1";

    fn policy() -> SessionPolicy {
        SessionPolicy {
            jp_rendezvous_point: JP.into(),
            global_rendezvous_point: JP.into(),
            address_quarantine_ms: 0,
            rendezvous_points: vec![JP.into()],
        }
    }

    /// What the filled source holds that the checks need.
    struct Filled {
        operator: OperatorId,
        auth_key: NewAuthKey,
    }

    /// A box's state made through the store functions, as the API makes it.
    fn fill(store: &Store) -> Filled {
        let rps = Config::default().rendezvous_points;
        let (operator, auth_key) = store
            .write_db(|db| {
                rendezvous::sync(db, &rps)?;
                let operator = operators::create_operator(db)?;
                operators::set_root_operator(db, &operator)?;
                let key = operators::create_auth_key(db, &operator)?;
                operators::revoke_api_key(db, "api-key-revoked", now_ms() + 3_600_000, now_ms())?;
                Ok((operator, key))
            })
            .expect("operator");
        let vpg = store
            .write_db(|db| {
                let new = NewVpg {
                    vpg_type: 14,
                    region: JP.into(),
                    device_subnet: Some("10.200.0.0/24".into()),
                    use_internet_gateway: Some(false),
                    device_to_device: true,
                    tags: BTreeMap::from([("name".into(), "edge".into())]),
                };
                vpgs::create(db, &operator, &new, &rps)
            })
            .expect("vpg");
        let mut configuration = groups::Configuration::new();
        configuration
            .entry("SoracomAir".into())
            .or_default()
            .insert("vpgId".into(), vpg.vpg_id.as_str().into());
        let group = store
            .write_db(|db| {
                groups::create(db, &operator, &BTreeMap::new(), &configuration)?;
                let group = groups::create(db, &operator, &BTreeMap::new(), &Default::default())?;
                groups::put_configuration(
                    db,
                    &operator,
                    &group.group_id,
                    "SoracomHarvest",
                    &[("enabled".into(), true.into())],
                )
            })
            .expect("groups");
        let policy = policy();
        let mut created = Vec::new();
        for _ in 0..3 {
            created.push(
                store
                    .write_db(|tx| {
                        sims::create_virtual(tx, &operator, Coverage::Jp, "8942", &policy)
                    })
                    .expect("create"),
            );
        }
        let first = created[0].sim.sim_id.clone();
        store
            .write_db(|tx| {
                sims::put_tags(tx, &operator, &first, &[("name".into(), "pump".into())])?;
                sims::set_group(tx, &operator, &first, Some(&group.group_id))?;
                sims::set_termination_enabled(tx, &operator, &created[2].sim.sim_id, true)?;
                sims::terminate(tx, &operator, &created[2].sim.sim_id)
            })
            .expect("tags, group, terminate");
        store
            .write_db(|db| sessions::recreate(db, &operator, &created[1].sim.sim_id, &policy, true))
            .expect("recreate");
        let iot = IotSimImport {
            iccid: "8981100000000000001".into(),
            imsi: "440101234567890".into(),
            msisdn: Some("819012345678".into()),
            subscription: "plan-D".into(),
        };
        store
            .write_db(|tx| {
                subscriptions::import_iot_sims(
                    tx,
                    &operator,
                    Coverage::Jp,
                    std::slice::from_ref(&iot),
                )?;
                subscriptions::add_virtual_subscriber(
                    tx,
                    &operator,
                    &iot.sim_id(),
                    &iot.iccid,
                    &policy,
                )
            })
            .expect("iot sim");
        let entries: Vec<NewEntry> = (0..3)
            .map(|n| NewEntry {
                operator_id: operator.clone(),
                imsi: created[0].sim.primary_imsi().expect("imsi").clone(),
                sim_id: first.clone(),
                time: 1_700_000_000_000 + n,
                content_type: "application/json".into(),
                content: format!("{{\"n\":{n}}}"),
            })
            .collect();
        store
            .write_db(|db| harvest::insert(db, &entries))
            .expect("harvest");
        Filled { operator, auth_key }
    }

    /// Every row of every source table, values as SQLite holds them (booleans as 0/1), in one
    /// order on both engines.
    fn dump(store: &Store, tables: &[String]) -> BTreeMap<String, Vec<Vec<Value>>> {
        store
            .read_db(|db| {
                let mut all = BTreeMap::new();
                for table in tables {
                    let columns = table_columns(table);
                    let order: Vec<String> = (1..=columns.len()).map(|n| n.to_string()).collect();
                    let rows = db.query(
                        &format!(
                            "SELECT {} FROM {table} ORDER BY {}",
                            columns.join(", "),
                            order.join(", ")
                        ),
                        &[],
                    )?;
                    let rows = rows
                        .into_iter()
                        .map(|row| {
                            row.0
                                .into_iter()
                                .map(|value| match value {
                                    Value::Bool(flag) => Value::Int(i64::from(flag)),
                                    other => other,
                                })
                                .collect()
                        })
                        .collect();
                    all.insert(table.clone(), rows);
                }
                Ok(all)
            })
            .expect("dump")
    }

    fn table_columns(table: &str) -> Vec<String> {
        let (_dir, store) = temp_store();
        store
            .read_db(|db| {
                db.query(
                    "SELECT name FROM pragma_table_info($1) ORDER BY cid",
                    &[&table],
                )?
                .iter()
                .map(|row| row.text(0))
                .collect()
            })
            .expect("columns")
    }

    fn source_tables(store: &Store) -> Vec<String> {
        store
            .read_db(|db| {
                db.query(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'",
                    &[],
                )?
                .iter()
                .map(|row| row.text(0))
                .collect()
            })
            .expect("tables")
    }

    fn max(store: &Store, sql: &str) -> i64 {
        store
            .read_db(|db| db.query_one(sql, &[])?.int(0))
            .expect("max")
    }

    #[test]
    fn a_filled_sqlite_store_copies_whole_into_an_empty_postgres_store() {
        let Some(pg) = temp_pg_store() else {
            return;
        };
        let destination = Store::Postgres(pg);
        let (_dir, source) = temp_store();
        let filled = fill(&source);
        // The newest event is gone (pruned): its id is still never handed out again.
        source
            .write_db(|db| {
                db.execute(
                    "DELETE FROM session_events WHERE event_id = (SELECT MAX(event_id) FROM session_events)",
                    &[],
                )
            })
            .expect("prune");
        // The destination's own start made rendezvous points with keys of its own.
        destination
            .write_db(|db| rendezvous::sync(db, &Config::default().rendezvous_points))
            .expect("destination start");

        let summary = copy(&source, &destination).expect("copy");
        assert_eq!(summary.rows["sims"], 4);
        assert_eq!(summary.rows["arc_sessions"], 3);

        // The live-SIM counts are per shard on PostgreSQL (migration 12): compared as sums
        // (by the copy itself, which refuses to commit otherwise, and here).
        let tables: Vec<String> = source_tables(&source)
            .into_iter()
            .filter(|table| !DERIVED_TABLES.contains(&table.as_str()))
            .collect();
        let before = dump(&source, &tables);
        assert_eq!(dump(&destination, &tables), before);
        let live_sims = |store: &Store| {
            max(
                store,
                "SELECT CAST(SUM(live_sims) AS BIGINT) FROM operator_sim_counts",
            )
        };
        assert_eq!(live_sims(&destination), live_sims(&source));
        assert_eq!(live_sims(&source), 3);
        assert!(before["session_events"].len() >= 4);
        assert_eq!(before["harvest_entries"].len(), 3);

        // Through the store functions on PostgreSQL: sessions (client keys and addresses),
        // server keys, the auth key's secret, revoked keys.
        let read_both = |f: &dyn Fn(&mut dyn Db) -> Result<String>| {
            (
                source.read_db(|db| f(db)).expect("source"),
                destination.read_db(|db| f(db)).expect("destination"),
            )
        };
        let (a, b) = read_both(&|db| Ok(format!("{:?}", sessions::list_active_sessions(db)?)));
        assert_eq!(a, b);
        assert!(a.contains("client_public_key"), "{a}");
        let rp = RendezvousPointId::new(JP);
        let (a, b) = read_both(&|db| rendezvous::private_key(db, &rp));
        assert_eq!(a, b);
        let (a, b) =
            read_both(&|db| Ok(format!("{:?}", operators::revoked_api_keys(db, now_ms())?)));
        assert_eq!(a, b);
        let (a, b) = read_both(&|db| Ok(format!("{:?}", operators::token_signing_key(db)?)));
        assert_eq!(a, b);
        let verified = destination
            .read_db(|db| {
                operators::verify_auth_key(
                    db,
                    &filled.auth_key.auth_key_id,
                    &filled.auth_key.secret,
                )
            })
            .expect("verify");
        assert!(verified.is_some());

        // Numbering continues after the copied values.
        let counters = |store: &Store, name: &str| {
            max(
                store,
                &format!("SELECT value FROM counters WHERE name = '{name}'"),
            )
        };
        for name in ["iccid", "virtual_imsi"] {
            let last = counters(&source, name);
            assert!(last >= 3, "{name} {last}");
            let next = destination
                .write_db(|db| db.next_number(name))
                .expect("next");
            assert_eq!(next, last + 1, "{name}");
        }
        let last_entry = max(&source, "SELECT MAX(entry_id) FROM harvest_entries");
        let entry = NewEntry {
            operator_id: filled.operator.clone(),
            imsi: "440101234567890".into(),
            sim_id: crate::ids::SimId::new("8981100000000000001"),
            time: 1,
            content_type: "text/plain".into(),
            content: "after".into(),
        };
        destination
            .write_db(|db| harvest::insert(db, std::slice::from_ref(&entry)))
            .expect("harvest after");
        assert_eq!(
            max(&destination, "SELECT MAX(entry_id) FROM harvest_entries"),
            last_entry + 1
        );
        let last_event = max(
            &source,
            "SELECT seq FROM sqlite_sequence WHERE name = 'session_events'",
        );
        let event = destination
            .write_db(|db| {
                db.query_one(
                    "INSERT INTO session_events(sim_id, imsi, operator_id, session_id, event,
                                                subscription, time)
                     SELECT sim_id, imsi, $1, session_id, 'Created', 'planArc01', 0
                     FROM arc_sessions LIMIT 1 RETURNING event_id",
                    &[&filled.operator],
                )?
                .int(0)
            })
            .expect("event after");
        assert_eq!(event, last_event + 1);

        // A second copy into the now non-empty store is refused and writes nothing.
        let after = dump(&destination, &tables);
        let refused = copy(&source, &destination).expect_err("second copy");
        assert!(
            refused.to_string().contains("already holds data"),
            "{refused}"
        );
        assert_eq!(dump(&destination, &tables), after);
    }

    #[test]
    fn only_sqlite_to_postgres_is_a_copy() {
        let (_dir, a) = temp_store();
        let (_dir2, b) = temp_store();
        assert!(copy(&a, &b).is_err());
    }
}
