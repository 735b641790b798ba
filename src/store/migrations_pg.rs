//! The PostgreSQL schema: numbered migrations like `migrations.rs`, one list per engine, kept
//! equal (same tables and columns, matching types) by `store::db` tests. Version in
//! `schema_version`; each run of the list takes an advisory lock, so nodes starting together
//! migrate once. PostgreSQL's DDL is transactional: a failed migration leaves nothing behind.
//!
//! Spike (issue 14): only the tables `groups` needs. Types: INTEGER → BIGINT, 0/1 flags →
//! BOOLEAN, id columns `COLLATE "C"` so keyset pages (`group_id > $1 ORDER BY group_id`) order
//! bytes like SQLite's BINARY whatever the database's locale.

use postgres::Client;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: the virtual SIM lifecycle (the part groups needs, for the spike).
    r#"
    CREATE TABLE operators (
        operator_id  TEXT COLLATE "C" PRIMARY KEY,
        created_at   BIGINT NOT NULL
    );
    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  BIGINT NOT NULL
    );
    CREATE TABLE groups (
        group_id          TEXT COLLATE "C" PRIMARY KEY,
        operator_id       TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        tags              TEXT NOT NULL,
        created_at        BIGINT NOT NULL,
        last_modified_at  BIGINT NOT NULL
    );
    CREATE INDEX groups_by_operator ON groups(operator_id, group_id);
    CREATE TABLE group_configuration (
        group_id   TEXT COLLATE "C" NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
        namespace  TEXT COLLATE "C" NOT NULL,
        key        TEXT COLLATE "C" NOT NULL,
        value      TEXT NOT NULL,
        PRIMARY KEY (group_id, namespace, key)
    );
    CREATE TABLE sims (
        sim_id               TEXT COLLATE "C" PRIMARY KEY,
        operator_id          TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        sim_type             TEXT NOT NULL,
        module_type          TEXT,
        status               TEXT NOT NULL,
        coverage             TEXT NOT NULL,
        group_id             TEXT COLLATE "C" REFERENCES groups(group_id),
        termination_enabled  BOOLEAN NOT NULL DEFAULT false,
        created_at           BIGINT NOT NULL,
        last_modified_at     BIGINT NOT NULL
    );
    CREATE INDEX sims_by_operator ON sims(operator_id, sim_id);
    CREATE INDEX sims_by_group ON sims(group_id, sim_id) WHERE group_id IS NOT NULL;
    "#,
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// An arbitrary constant: the advisory lock key of schema migration.
const MIGRATION_LOCK: i64 = 0x0061_7263_646d_6967; // "arcdmig"

/// Applies the migrations above the stored version in one transaction; refuses a newer schema.
pub fn migrate(client: &mut Client) -> Result<i64> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let current = match tx.query_opt("SELECT version FROM schema_version", &[])? {
        Some(row) => row.try_get::<_, i64>(0)?,
        None => {
            tx.execute("INSERT INTO schema_version(version) VALUES (0)", &[])?;
            0
        }
    };
    if current > LATEST {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: LATEST,
        });
    }
    for sql in MIGRATIONS.iter().skip(current.max(0) as usize) {
        tx.batch_execute(sql)?;
    }
    tx.execute("UPDATE schema_version SET version = $1", &[&LATEST])?;
    tx.commit()?;
    Ok(current)
}
