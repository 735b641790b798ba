//! The PostgreSQL schema: numbered migrations like `migrations.rs`, one list per engine, the same
//! length (entry N is the same change in each dialect) and kept equal (tables, columns, types,
//! indexes) by `store::db` tests. Version in `schema_version`; each run of the list takes an
//! advisory lock, so nodes starting together migrate once. PostgreSQL's DDL is transactional: a
//! failed migration leaves nothing behind.
//!
//! Translation (docs/design/store-engines.md, "Migration lists"): INTEGER → BIGINT, 0/1 flags →
//! BOOLEAN, BLOB → BYTEA, ids the engine assigns → identity columns, TEXT → TEXT COLLATE "C",
//! no WITHOUT ROWID, triggers → PL/pgSQL functions + triggers, SQLite's named counters → one
//! sequence per name.

use postgres::Client;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: SQLite's schema at its version 9, in one step (PostgreSQL databases start here).
    // Every TEXT column is `COLLATE "C"`: SQLite compares and orders all text bytewise (BINARY)
    // and its lower()/LIKE fold ASCII only; "C" does the same whatever the database's locale, so
    // keyset pages, sorts and `lower(x) LIKE lower($n)` answer alike on both engines.
    r#"
    CREATE TABLE operators (
        operator_id  TEXT COLLATE "C" PRIMARY KEY,
        created_at   BIGINT NOT NULL
    );
    CREATE TABLE auth_keys (
        auth_key_id   TEXT COLLATE "C" PRIMARY KEY,
        operator_id   TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        secret_hash   TEXT COLLATE "C" NOT NULL,
        created_at    BIGINT NOT NULL,
        last_used_at  BIGINT
    );
    CREATE INDEX auth_keys_by_operator ON auth_keys(operator_id, created_at);
    CREATE TABLE rendezvous_points (
        rp_id        TEXT COLLATE "C" PRIMARY KEY,
        private_key  TEXT COLLATE "C" NOT NULL,
        public_key   TEXT COLLATE "C" NOT NULL,
        endpoint     TEXT COLLATE "C" NOT NULL,
        pool         TEXT COLLATE "C" NOT NULL,
        allowed_ips  TEXT COLLATE "C" NOT NULL,
        created_at   BIGINT NOT NULL
    );
    -- SQLite's named counters; PostgreSQL numbers come from the sequences below
    -- (`Db::next_number`), the table stays so both schemas hold the same tables.
    CREATE TABLE counters (
        name   TEXT COLLATE "C" PRIMARY KEY,
        value  BIGINT NOT NULL
    );
    -- One per `Db::next_number` name, starting where SQLite's counter row starts (1).
    CREATE SEQUENCE number_iccid AS BIGINT START WITH 1 MINVALUE 1;
    CREATE SEQUENCE number_virtual_imsi AS BIGINT START WITH 1 MINVALUE 1;
    CREATE TABLE groups (
        group_id          TEXT COLLATE "C" PRIMARY KEY,
        operator_id       TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        tags              TEXT COLLATE "C" NOT NULL,
        created_at        BIGINT NOT NULL,
        last_modified_at  BIGINT NOT NULL
    );
    CREATE INDEX groups_by_operator ON groups(operator_id, group_id);
    CREATE TABLE group_configuration (
        group_id   TEXT COLLATE "C" NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
        namespace  TEXT COLLATE "C" NOT NULL,
        key        TEXT COLLATE "C" NOT NULL,
        value      TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (group_id, namespace, key)
    );
    CREATE TABLE sims (
        sim_id               TEXT COLLATE "C" PRIMARY KEY,
        operator_id          TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        sim_type             TEXT COLLATE "C" NOT NULL,
        module_type          TEXT COLLATE "C",
        status               TEXT COLLATE "C" NOT NULL,
        coverage             TEXT COLLATE "C" NOT NULL,
        group_id             TEXT COLLATE "C" REFERENCES groups(group_id),
        termination_enabled  BOOLEAN NOT NULL DEFAULT false,
        created_at           BIGINT NOT NULL,
        last_modified_at     BIGINT NOT NULL
    );
    CREATE INDEX sims_by_operator ON sims(operator_id, sim_id);
    CREATE INDEX sims_by_group ON sims(group_id, sim_id) WHERE group_id IS NOT NULL;
    CREATE TABLE sim_tags (
        sim_id  TEXT COLLATE "C" NOT NULL REFERENCES sims(sim_id),
        name    TEXT COLLATE "C" NOT NULL,
        value   TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (sim_id, name)
    );
    CREATE TABLE subscribers (
        imsi              TEXT COLLATE "C" PRIMARY KEY,
        sim_id            TEXT COLLATE "C" NOT NULL REFERENCES sims(sim_id),
        iccid             TEXT COLLATE "C" NOT NULL,
        msisdn            TEXT COLLATE "C",
        subscription      TEXT COLLATE "C" NOT NULL,
        is_primary        BOOLEAN NOT NULL,
        is_virtual        BOOLEAN NOT NULL,
        status            TEXT COLLATE "C" NOT NULL,
        arc_public_key    TEXT COLLATE "C",
        created_at        BIGINT NOT NULL,
        last_modified_at  BIGINT NOT NULL
    );
    CREATE INDEX subscribers_by_sim ON subscribers(sim_id);
    CREATE TABLE arc_sessions (
        imsi             TEXT COLLATE "C" PRIMARY KEY REFERENCES subscribers(imsi),
        sim_id           TEXT COLLATE "C" NOT NULL REFERENCES sims(sim_id),
        session_id       TEXT COLLATE "C" NOT NULL,
        rp_id            TEXT COLLATE "C" NOT NULL REFERENCES rendezvous_points(rp_id),
        client_ip        TEXT COLLATE "C" NOT NULL,
        vpg_id           TEXT COLLATE "C",
        created_at       BIGINT NOT NULL,
        last_updated_at  BIGINT NOT NULL,
        last_endpoint    TEXT COLLATE "C"
    );
    CREATE UNIQUE INDEX arc_sessions_by_sim ON arc_sessions(sim_id);
    CREATE INDEX arc_sessions_by_vpg ON arc_sessions(vpg_id) WHERE vpg_id IS NOT NULL;
    -- SQLite's AUTOINCREMENT: ids handed out by the engine, never reused.
    CREATE TABLE session_events (
        event_id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sim_id       TEXT COLLATE "C" NOT NULL REFERENCES sims(sim_id),
        imsi         TEXT COLLATE "C" NOT NULL,
        operator_id  TEXT COLLATE "C" NOT NULL,
        session_id   TEXT COLLATE "C" NOT NULL,
        event        TEXT COLLATE "C" NOT NULL,
        subscription TEXT COLLATE "C" NOT NULL,
        ue_ip        TEXT COLLATE "C",
        vpg_id       TEXT COLLATE "C",
        time         BIGINT NOT NULL
    );
    CREATE INDEX session_events_by_sim ON session_events(sim_id, event_id);
    -- A client address belongs to one subscriber from allocation until its SIM is terminated and
    -- the quarantine after `released_at` has passed; the row stays so the address can be reused.
    CREATE TABLE address_leases (
        scope        TEXT COLLATE "C" NOT NULL,
        ip           BIGINT NOT NULL,
        imsi         TEXT COLLATE "C",
        released_at  BIGINT,
        PRIMARY KEY (scope, ip)
    );
    CREATE UNIQUE INDEX address_leases_by_imsi ON address_leases(imsi) WHERE imsi IS NOT NULL;
    CREATE INDEX address_leases_free ON address_leases(scope, released_at) WHERE imsi IS NULL;
    CREATE TABLE settings (
        key    TEXT COLLATE "C" PRIMARY KEY,
        value  TEXT COLLATE "C" NOT NULL
    );
    -- The API token signing secret, 32 random bytes as lowercase hex like SQLite's
    -- `lower(hex(randomblob(32)))`: two gen_random_uuid() (core since PostgreSQL 13, from the
    -- server's strong random source; pgcrypto's gen_random_bytes would need CREATE EXTENSION,
    -- a database-wide privilege) give 64 hex digits, 244 of the 256 bits random (each UUID
    -- fixes 6 bits for its version and variant).
    INSERT INTO settings(key, value) VALUES ('token_signing_key',
        replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
    -- Harvest Data: `entry_id` orders entries sharing a resource and a millisecond.
    CREATE TABLE harvest_entries (
        entry_id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        operator_id    TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        resource_type  TEXT COLLATE "C" NOT NULL,
        resource_id    TEXT COLLATE "C" NOT NULL,
        sim_id         TEXT COLLATE "C" NOT NULL,
        time           BIGINT NOT NULL,
        content_type   TEXT COLLATE "C" NOT NULL,
        content        TEXT COLLATE "C" NOT NULL,
        category       TEXT COLLATE "C"
    );
    CREATE INDEX harvest_by_resource
        ON harvest_entries(operator_id, resource_type, resource_id, time, entry_id);
    CREATE INDEX harvest_by_sim ON harvest_entries(operator_id, sim_id, time, entry_id);
    CREATE INDEX harvest_by_time ON harvest_entries(time);
    CREATE TABLE harvest_resources (
        operator_id         TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        resource_type       TEXT COLLATE "C" NOT NULL,
        resource_id         TEXT COLLATE "C" NOT NULL,
        last_modified_time  BIGINT NOT NULL,
        PRIMARY KEY (operator_id, resource_type, resource_id)
    );
    CREATE TABLE vpgs (
        vpg_id                TEXT COLLATE "C" PRIMARY KEY,
        operator_id           TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        type                  BIGINT NOT NULL,
        region                TEXT COLLATE "C" NOT NULL,
        device_subnet         TEXT COLLATE "C" NOT NULL,
        use_internet_gateway  BOOLEAN NOT NULL,
        device_to_device      BOOLEAN NOT NULL DEFAULT false,
        status                TEXT COLLATE "C" NOT NULL,
        tags                  TEXT COLLATE "C" NOT NULL,
        created_at            BIGINT NOT NULL,
        last_modified_at      BIGINT NOT NULL
    );
    CREATE INDEX vpgs_by_operator ON vpgs(operator_id, status, vpg_id);
    CREATE TABLE revoked_api_keys (
        api_key     TEXT COLLATE "C" PRIMARY KEY,
        expires_at  BIGINT NOT NULL
    );
    -- Each operator's SIMs that are not terminated, kept by triggers (SQLite's migration 7) so
    -- no path that writes `sims` can forget it.
    CREATE TABLE operator_sim_counts (
        operator_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES operators(operator_id),
        live_sims    BIGINT NOT NULL
    );
    CREATE FUNCTION operator_sim_count_add(owner TEXT, delta BIGINT) RETURNS void
    LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO operator_sim_counts AS c (operator_id, live_sims) VALUES (owner, delta)
            ON CONFLICT (operator_id) DO UPDATE SET live_sims = c.live_sims + delta;
    END
    $fn$;
    CREATE FUNCTION sims_count_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        PERFORM operator_sim_count_add(NEW.operator_id, 1);
        RETURN NULL;
    END
    $fn$;
    CREATE FUNCTION sims_count_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        UPDATE operator_sim_counts SET live_sims = live_sims - 1
            WHERE operator_id = OLD.operator_id;
        RETURN NULL;
    END
    $fn$;
    CREATE FUNCTION sims_count_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF OLD.status <> 'terminated' THEN
            UPDATE operator_sim_counts SET live_sims = live_sims - 1
                WHERE operator_id = OLD.operator_id;
        END IF;
        IF NEW.status <> 'terminated' THEN
            PERFORM operator_sim_count_add(NEW.operator_id, 1);
        END IF;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER sims_count_insert AFTER INSERT ON sims FOR EACH ROW
        WHEN (NEW.status <> 'terminated') EXECUTE FUNCTION sims_count_insert();
    CREATE TRIGGER sims_count_delete AFTER DELETE ON sims FOR EACH ROW
        WHEN (OLD.status <> 'terminated') EXECUTE FUNCTION sims_count_delete();
    CREATE TRIGGER sims_count_update AFTER UPDATE OF status, operator_id ON sims FOR EACH ROW
        WHEN ((OLD.status <> 'terminated') <> (NEW.status <> 'terminated')
              OR OLD.operator_id <> NEW.operator_id)
        EXECUTE FUNCTION sims_count_update();
    "#,
    // 2-9: SQLite's migrations 2-9 are all part of entry 1 above.
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    // 10: the peer-change outbox. `seq` is allocation order only; `xid` is what the followers'
    // cursor (an xid watermark, see store::outbox) reads by, so no row is shared by writers.
    r#"
    CREATE TABLE peer_outbox (
        seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
        kind          TEXT COLLATE "C" NOT NULL,
        rp_id         TEXT COLLATE "C",
        imsi          TEXT COLLATE "C",
        committed_at  BIGINT NOT NULL
    );
    CREATE INDEX peer_outbox_by_xid ON peer_outbox(xid, seq);
    CREATE INDEX peer_outbox_by_age ON peer_outbox(committed_at);
    "#,
    // 11: live state across nodes (see migrations.rs).
    r#"
    CREATE TABLE session_live (
        imsi               TEXT COLLATE "C" PRIMARY KEY,
        session_id         TEXT COLLATE "C" NOT NULL,
        rp_id              TEXT COLLATE "C" NOT NULL,
        last_handshake_at  BIGINT,
        device_endpoint    TEXT COLLATE "C",
        rx_bytes           BIGINT NOT NULL,
        tx_bytes           BIGINT NOT NULL,
        published_at       BIGINT NOT NULL
    );
    CREATE INDEX session_live_by_rp ON session_live(rp_id);
    CREATE TABLE live_publishers (
        rp_id         TEXT COLLATE "C" PRIMARY KEY,
        published_at  BIGINT NOT NULL
    );
    "#,
    // 12: one operator's live-SIM count spread over up to 16 shard rows: each change adds +1 or
    // -1 to a random shard, so concurrent creates of one operator rarely wait on each other's
    // row lock (held until commit, which is the WAL flush: one row would cap createSim at about
    // one commit flush each, see docs/design/store-engines.md). The quota sums the shards; a
    // shard may go negative, the sum is the count. The trigger functions keep their names.
    r#"
    ALTER TABLE operator_sim_counts ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE operator_sim_counts ALTER COLUMN shard DROP DEFAULT;
    ALTER TABLE operator_sim_counts DROP CONSTRAINT operator_sim_counts_pkey;
    ALTER TABLE operator_sim_counts ADD PRIMARY KEY (operator_id, shard);
    CREATE OR REPLACE FUNCTION operator_sim_count_add(owner TEXT, delta BIGINT) RETURNS void
    LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO operator_sim_counts AS c (operator_id, shard, live_sims)
            VALUES (owner, floor(random() * 16)::bigint, delta)
            ON CONFLICT (operator_id, shard) DO UPDATE SET live_sims = c.live_sims + delta;
    END
    $fn$;
    CREATE OR REPLACE FUNCTION sims_count_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        PERFORM operator_sim_count_add(OLD.operator_id, -1);
        RETURN NULL;
    END
    $fn$;
    CREATE OR REPLACE FUNCTION sims_count_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF OLD.status <> 'terminated' THEN
            PERFORM operator_sim_count_add(OLD.operator_id, -1);
        END IF;
        IF NEW.status <> 'terminated' THEN
            PERFORM operator_sim_count_add(NEW.operator_id, 1);
        END IF;
        RETURN NULL;
    END
    $fn$;
    "#,
    // 13: "last seen" across nodes: the device's latest authenticated packet (keepalives too), which
    // the management page shows finer than the last handshake (repeated only every 2 minutes).
    r#"
    ALTER TABLE session_live ADD COLUMN last_seen_at BIGINT;
    "#,
    // 14: destination credentials of Funnel and Funk (see migrations.rs).
    r#"
    CREATE TABLE credentials (
        operator_id     TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
        credentials_id  TEXT COLLATE "C" NOT NULL,
        type            TEXT COLLATE "C" NOT NULL,
        description     TEXT COLLATE "C" NOT NULL,
        secret          TEXT COLLATE "C" NOT NULL,
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        PRIMARY KEY (operator_id, credentials_id)
    );
    "#,
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// An arbitrary constant: the advisory lock key of schema migration.
const MIGRATION_LOCK: i64 = 0x0061_7263_646d_6967; // "arcdmig"

/// Makes the schema `schema` (a checked name) if missing, under the migration lock: two
/// sessions running `CREATE SCHEMA IF NOT EXISTS` at once can both find it missing, and one
/// then fails on the catalog's unique index.
pub fn create_schema(client: &mut Client, schema: &str) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
    tx.commit()?;
    Ok(())
}

/// Applies the migrations above the stored version in one transaction; refuses a newer schema.
/// The transaction-level advisory lock makes nodes that start together migrate one after the
/// other: the first migrates, the others find the schema current.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::store::db::testing::{temp_pg_store, temp_pg_target};
    use crate::store::db::{Backend, Db, PgStore};
    use crate::store::testing::temp_store;

    /// Entry N is the same change on both engines, so both lists have the same length.
    #[test]
    fn both_migration_lists_have_the_same_length() {
        assert_eq!(LATEST, crate::store::migrations::LATEST);
    }

    /// Columns that only one engine has, as (table, column): each must exist on its engine and
    /// is left out of the comparison. None yet (the PostgreSQL outbox's `xid` will be one).
    const SQLITE_ONLY_COLUMNS: &[(&str, &str)] = &[];
    const POSTGRES_ONLY_COLUMNS: &[(&str, &str)] = &[("peer_outbox", "xid")];

    /// A schema as sentences such as `column sims.status text not null`,
    /// `index sims_by_group on sims(group_id,sim_id) partial`, so two schemas compare as sets
    /// and a failure names what differs.
    type Facts = BTreeSet<String>;

    fn column_fact(table: &str, column: &str, kind: &str, not_null: bool) -> String {
        let null = if not_null { " not null" } else { "" };
        format!("column {table}.{column} {kind}{null}")
    }

    fn index_fact(name: &str, table: &str, columns: &str, unique: bool, partial: bool) -> String {
        let unique = if unique { " unique" } else { "" };
        let partial = if partial { " partial" } else { "" };
        format!("index {name} on {table}({columns}){unique}{partial}")
    }

    fn texts(db: &mut dyn Db, sql: &str, param: &str) -> crate::store::Result<Vec<String>> {
        db.query(sql, &[&param])?
            .iter()
            .map(|row| row.text(0))
            .collect()
    }

    fn sqlite_facts(db: &mut dyn Db) -> crate::store::Result<Facts> {
        let mut facts = Facts::new();
        let tables = texts(
            db,
            "SELECT name FROM sqlite_master WHERE type = $1 AND name NOT LIKE 'sqlite%'",
            "table",
        )?;
        for table in &tables {
            facts.insert(format!("table {table}"));
            let mut primary_key = Vec::new();
            let columns = db.query(
                r#"SELECT name, type, "notnull", pk FROM pragma_table_info($1)"#,
                &[table],
            )?;
            for row in columns {
                let (name, position) = (row.text(0)?, row.int(3)?);
                let kind = match row.text(1)?.as_str() {
                    "INTEGER" => "integer".to_string(),
                    "TEXT" => "text".to_string(),
                    "BLOB" => "blob".to_string(),
                    other => format!("other:{other}"),
                };
                // SQLite lets a non-INTEGER primary key hold NULL; PostgreSQL's never does, and
                // arcd never stores one: both count as NOT NULL.
                let not_null = row.bool(2)? || position > 0;
                facts.insert(column_fact(table, &name, &kind, not_null));
                if position > 0 {
                    primary_key.push((position, name));
                }
            }
            primary_key.sort();
            let primary_key: Vec<_> = primary_key.into_iter().map(|(_, name)| name).collect();
            facts.insert(format!("primary key {table}({})", primary_key.join(",")));
            let indexes = db.query(
                r#"SELECT name, "unique", origin, partial FROM pragma_index_list($1)"#,
                &[table],
            )?;
            for index in indexes {
                let (name, origin) = (index.text(0)?, index.text(2)?);
                let columns = texts(
                    db,
                    "SELECT name FROM pragma_index_info($1) ORDER BY seqno",
                    &name,
                )?
                .join(",");
                match origin.as_str() {
                    "pk" => {}
                    "u" => {
                        facts.insert(format!("unique {table}({columns})"));
                    }
                    _ => {
                        facts.insert(index_fact(
                            &name,
                            table,
                            &columns,
                            index.bool(1)?,
                            index.bool(3)?,
                        ));
                    }
                }
            }
            let keys = db.query(
                r#"SELECT id, "table", "from", "to", on_delete FROM pragma_foreign_key_list($1)
                   ORDER BY id, seq"#,
                &[table],
            )?;
            let mut by_id: std::collections::BTreeMap<
                i64,
                (String, Vec<String>, Vec<String>, String),
            > = Default::default();
            for key in keys {
                let entry = by_id
                    .entry(key.int(0)?)
                    .or_insert_with(|| (String::new(), Vec::new(), Vec::new(), String::new()));
                entry.0 = key.text(1)?;
                entry.1.push(key.text(2)?);
                entry.2.push(key.opt_text(3)?.unwrap_or_default());
                entry.3 = key.text(4)?;
            }
            for (target, from, to, on_delete) in by_id.into_values() {
                facts.insert(format!(
                    "foreign key {table}({}) -> {target}({}) on delete {on_delete}",
                    from.join(","),
                    to.join(",")
                ));
            }
        }
        for row in db.query(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'",
            &[],
        )? {
            facts.insert(format!("trigger {} on {}", row.text(0)?, row.text(1)?));
        }
        Ok(facts)
    }

    /// The columns of the index or constraint key `keys` (an int2 array) of relation `rel`.
    const KEY_COLUMNS: &str = "(SELECT string_agg(a.attname::text, ',' ORDER BY k.n)
        FROM unnest(KEYS) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = REL AND a.attnum = k.attnum)";

    fn key_columns(keys: &str, rel: &str) -> String {
        KEY_COLUMNS.replace("KEYS", keys).replace("REL", rel)
    }

    fn postgres_facts(db: &mut dyn Db) -> crate::store::Result<Facts> {
        let mut facts = Facts::new();
        // The relation `t` is one of the test's tables (`schema_version` is PostgreSQL's
        // `user_version`).
        let in_schema = "t.relnamespace = current_schema()::text::regnamespace
                         AND t.relname <> 'schema_version'";
        let tables = db.query(
            &format!(
                "SELECT t.relname::text FROM pg_class t WHERE t.relkind = 'r' AND {in_schema}"
            ),
            &[],
        )?;
        for table in tables {
            facts.insert(format!("table {}", table.text(0)?));
        }
        let columns = db.query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
             FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name <> 'schema_version'",
            &[],
        )?;
        for row in columns {
            let kind = match row.text(2)?.as_str() {
                "bigint" | "boolean" => "integer".to_string(),
                "text" => "text".to_string(),
                "bytea" => "blob".to_string(),
                other => format!("other:{other}"),
            };
            let not_null = row.text(3)? == "NO";
            facts.insert(column_fact(&row.text(0)?, &row.text(1)?, &kind, not_null));
        }
        let indexes = db.query(
            &format!(
                "SELECT i.relname::text, t.relname::text, x.indisunique, x.indisprimary,
                        x.indpred IS NOT NULL,
                        EXISTS (SELECT 1 FROM pg_constraint c
                                WHERE c.conindid = x.indexrelid AND c.contype = 'u'),
                        {}
                 FROM pg_index x
                 JOIN pg_class i ON i.oid = x.indexrelid
                 JOIN pg_class t ON t.oid = x.indrelid
                 WHERE {in_schema}",
                key_columns("x.indkey::int2[]", "x.indrelid")
            ),
            &[],
        )?;
        for index in indexes {
            let (name, table, columns) = (index.text(0)?, index.text(1)?, index.text(6)?);
            if index.bool(3)? {
                facts.insert(format!("primary key {table}({columns})"));
            } else if index.bool(5)? {
                facts.insert(format!("unique {table}({columns})"));
            } else {
                facts.insert(index_fact(
                    &name,
                    &table,
                    &columns,
                    index.bool(2)?,
                    index.bool(4)?,
                ));
            }
        }
        let keys = db.query(
            &format!(
                "SELECT t.relname::text, r.relname::text, c.confdeltype::text, {}, {}
                 FROM pg_constraint c
                 JOIN pg_class t ON t.oid = c.conrelid
                 JOIN pg_class r ON r.oid = c.confrelid
                 WHERE c.contype = 'f' AND {in_schema}",
                key_columns("c.conkey", "c.conrelid"),
                key_columns("c.confkey", "c.confrelid")
            ),
            &[],
        )?;
        for key in keys {
            let on_delete = match key.text(2)?.as_str() {
                "a" => "NO ACTION",
                "r" => "RESTRICT",
                "c" => "CASCADE",
                "n" => "SET NULL",
                "d" => "SET DEFAULT",
                other => panic!("confdeltype {other}"),
            };
            facts.insert(format!(
                "foreign key {}({}) -> {}({}) on delete {on_delete}",
                key.text(0)?,
                key.text(3)?,
                key.text(1)?,
                key.text(4)?
            ));
        }
        let triggers = db.query(
            &format!(
                "SELECT g.tgname::text, t.relname::text FROM pg_trigger g
                 JOIN pg_class t ON t.oid = g.tgrelid
                 WHERE NOT g.tgisinternal AND {in_schema}"
            ),
            &[],
        )?;
        for row in triggers {
            facts.insert(format!("trigger {} on {}", row.text(0)?, row.text(1)?));
        }
        Ok(facts)
    }

    /// Takes the listed engine-only columns out of `facts`, with the indexes over them (an
    /// index on a column the other engine lacks cannot exist there), failing for a column that
    /// is not there.
    fn without_engine_only(mut facts: Facts, only: &[(&str, &str)], engine: &str) -> Facts {
        for (table, column) in only {
            let prefix = format!("column {table}.{column} ");
            let found: Vec<String> = facts
                .iter()
                .filter(|fact| fact.starts_with(&prefix))
                .cloned()
                .collect();
            assert_eq!(found.len(), 1, "{engine}-only column {table}.{column}");
            let indexes: Vec<String> = facts
                .iter()
                .filter(|fact| indexes_column(fact, table, column))
                .cloned()
                .collect();
            for fact in found.into_iter().chain(indexes) {
                facts.remove(&fact);
            }
        }
        facts
    }

    /// Whether `fact` is an index of `table` with `column` among its columns.
    fn indexes_column(fact: &str, table: &str, column: &str) -> bool {
        let Some(rest) = fact.strip_prefix("index ") else {
            return false;
        };
        let Some((_, on)) = rest.split_once(&format!(" on {table}(")) else {
            return false;
        };
        on.split(')')
            .next()
            .is_some_and(|columns| columns.split(',').any(|c| c == column))
    }

    /// Both migration lists build the same schema: every table of each engine exists in the
    /// other with the same columns (matching types: BIGINT/BOOLEAN ↔ INTEGER, TEXT ↔ TEXT,
    /// BYTEA ↔ BLOB; the same NOT NULLs), primary keys, indexes (name, columns, uniqueness,
    /// partial or not), unique constraints, foreign keys with their ON DELETE, and trigger names.
    /// What the triggers do is checked by behaviour: the store tests run on both engines.
    #[test]
    fn both_engines_build_the_same_schema() {
        let Some(pg) = temp_pg_store() else {
            return;
        };
        let (_dir, sqlite) = temp_store();
        let sqlite_facts = sqlite
            .read_db(|db| sqlite_facts(db))
            .expect("SQLite schema");
        let postgres_facts = pg
            .read_db(|db| postgres_facts(db))
            .expect("PostgreSQL schema");
        assert!(
            sqlite_facts
                .iter()
                .filter(|f| f.starts_with("table "))
                .count()
                >= 17,
            "{sqlite_facts:#?}"
        );
        let sqlite_facts = without_engine_only(sqlite_facts, SQLITE_ONLY_COLUMNS, "SQLite");
        let postgres_facts =
            without_engine_only(postgres_facts, POSTGRES_ONLY_COLUMNS, "PostgreSQL");
        let only_sqlite: Vec<_> = sqlite_facts.difference(&postgres_facts).collect();
        let only_postgres: Vec<_> = postgres_facts.difference(&sqlite_facts).collect();
        assert!(
            only_sqlite.is_empty() && only_postgres.is_empty(),
            "only in SQLite: {only_sqlite:#?}\nonly in PostgreSQL: {only_postgres:#?}"
        );
    }

    fn schema_version(store: &PgStore) -> (i64, i64) {
        let row = store
            .read_db(|db| db.query_one("SELECT MAX(version), COUNT(*) FROM schema_version", &[]))
            .expect("schema_version");
        (row.int(0).expect("version"), row.int(1).expect("rows"))
    }

    /// Nodes starting together on a fresh database: all connect, the schema is made once (a
    /// second run of entry 1 would fail on its first CREATE TABLE).
    #[test]
    fn nodes_starting_together_migrate_once() {
        let Some((url, schema)) = temp_pg_target() else {
            return;
        };
        let start = std::sync::Barrier::new(6);
        let stores: Vec<PgStore> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        PgStore::connect_in_schema(&url, &schema)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("thread").expect("connect"))
                .collect()
        });
        for store in &stores {
            assert_eq!(schema_version(store), (LATEST, 1));
        }
        let keys = stores[0]
            .read_db(|db| {
                db.query_one(
                    "SELECT COUNT(*) FROM settings WHERE key = 'token_signing_key'",
                    &[],
                )
            })
            .expect("settings");
        assert_eq!(keys.int(0).expect("count"), 1);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let Some((url, schema)) = temp_pg_target() else {
            return;
        };
        let store = PgStore::connect_in_schema(&url, &schema).expect("first start");
        store
            .write_db(|db| db.execute("UPDATE schema_version SET version = $1", &[&(LATEST + 1)]))
            .expect("bump");
        match PgStore::connect_in_schema(&url, &schema) {
            Err(StoreError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (LATEST + 1, LATEST));
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer schema was accepted"),
        }
    }

    /// The signing key is 32 bytes of hex, like SQLite's, and differs between databases.
    #[test]
    fn each_database_gets_its_own_token_signing_key() {
        let (Some(first), Some(second)) = (temp_pg_store(), temp_pg_store()) else {
            return;
        };
        let key = |store: &PgStore| {
            store
                .read_db(|db| {
                    db.query_one(
                        "SELECT value FROM settings WHERE key = 'token_signing_key'",
                        &[],
                    )?
                    .text(0)
                })
                .expect("key")
        };
        let (a, b) = (key(&first), key(&second));
        assert_eq!(hex::decode(&a).expect("hex").len(), 32);
        assert_ne!(a, b);
    }
}
