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

#[cfg(test)]
mod tests {
    /// Entry N is the same change on both engines, so both lists have the same length.
    #[test]
    fn both_migration_lists_have_the_same_length() {
        assert_eq!(super::LATEST, crate::store::migrations::LATEST);
    }
}
