//! Numbered schema migrations kept in SQLite's `user_version`: migration N brings the schema from
//! version N-1 to N. Never edit a migration that has shipped; append a new one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the virtual SIM lifecycle.
    r#"
    CREATE TABLE operators (
        operator_id  TEXT PRIMARY KEY,
        created_at   INTEGER NOT NULL
    );
    CREATE TABLE auth_keys (
        auth_key_id   TEXT PRIMARY KEY,
        operator_id   TEXT NOT NULL REFERENCES operators(operator_id),
        secret_hash   TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        last_used_at  INTEGER
    );
    CREATE INDEX auth_keys_by_operator ON auth_keys(operator_id, created_at);
    CREATE TABLE api_tokens (
        api_key      TEXT PRIMARY KEY,
        token_hash   TEXT NOT NULL,
        operator_id  TEXT NOT NULL REFERENCES operators(operator_id),
        expires_at   INTEGER NOT NULL
    );
    CREATE INDEX api_tokens_by_expiry ON api_tokens(expires_at);
    CREATE TABLE rendezvous_points (
        rp_id        TEXT PRIMARY KEY,
        private_key  TEXT NOT NULL,
        public_key   TEXT NOT NULL,
        endpoint     TEXT NOT NULL,
        pool         TEXT NOT NULL,
        allowed_ips  TEXT NOT NULL,
        created_at   INTEGER NOT NULL
    );
    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    );
    CREATE TABLE groups (
        group_id          TEXT PRIMARY KEY,
        operator_id       TEXT NOT NULL REFERENCES operators(operator_id),
        tags              TEXT NOT NULL,
        created_at        INTEGER NOT NULL,
        last_modified_at  INTEGER NOT NULL
    );
    CREATE INDEX groups_by_operator ON groups(operator_id, group_id);
    CREATE TABLE group_configuration (
        group_id   TEXT NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        PRIMARY KEY (group_id, namespace, key)
    );
    CREATE TABLE sims (
        sim_id               TEXT PRIMARY KEY,
        operator_id          TEXT NOT NULL REFERENCES operators(operator_id),
        sim_type             TEXT NOT NULL,
        module_type          TEXT,
        status               TEXT NOT NULL,
        coverage             TEXT NOT NULL,
        group_id             TEXT REFERENCES groups(group_id),
        termination_enabled  INTEGER NOT NULL DEFAULT 0,
        created_at           INTEGER NOT NULL,
        last_modified_at     INTEGER NOT NULL
    );
    CREATE INDEX sims_by_operator ON sims(operator_id, sim_id);
    CREATE INDEX sims_by_group ON sims(group_id, sim_id) WHERE group_id IS NOT NULL;
    CREATE TABLE sim_tags (
        sim_id  TEXT NOT NULL REFERENCES sims(sim_id),
        name    TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (sim_id, name)
    );
    CREATE TABLE subscribers (
        imsi              TEXT PRIMARY KEY,
        sim_id            TEXT NOT NULL REFERENCES sims(sim_id),
        iccid             TEXT NOT NULL,
        msisdn            TEXT,
        subscription      TEXT NOT NULL,
        is_primary        INTEGER NOT NULL,
        is_virtual        INTEGER NOT NULL,
        status            TEXT NOT NULL,
        arc_public_key    TEXT,
        created_at        INTEGER NOT NULL,
        last_modified_at  INTEGER NOT NULL
    );
    CREATE INDEX subscribers_by_sim ON subscribers(sim_id);
    CREATE TABLE arc_sessions (
        imsi             TEXT PRIMARY KEY REFERENCES subscribers(imsi),
        sim_id           TEXT NOT NULL REFERENCES sims(sim_id),
        session_id       TEXT NOT NULL,
        rp_id            TEXT NOT NULL REFERENCES rendezvous_points(rp_id),
        client_ip        TEXT NOT NULL,
        vpg_id           TEXT,
        created_at       INTEGER NOT NULL,
        last_updated_at  INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX arc_sessions_by_sim ON arc_sessions(sim_id);
    CREATE TABLE session_events (
        event_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        sim_id       TEXT NOT NULL REFERENCES sims(sim_id),
        imsi         TEXT NOT NULL,
        operator_id  TEXT NOT NULL,
        session_id   TEXT NOT NULL,
        event        TEXT NOT NULL,
        subscription TEXT NOT NULL,
        ue_ip        TEXT,
        vpg_id       TEXT,
        time         INTEGER NOT NULL
    );
    CREATE INDEX session_events_by_sim ON session_events(sim_id, event_id);
    -- A client address belongs to one subscriber from allocation until its SIM is terminated and
    -- the quarantine after `released_at` has passed; the row stays so the address can be reused.
    CREATE TABLE address_leases (
        scope        TEXT NOT NULL,
        ip           INTEGER NOT NULL,
        imsi         TEXT,
        released_at  INTEGER,
        PRIMARY KEY (scope, ip)
    );
    CREATE UNIQUE INDEX address_leases_by_imsi ON address_leases(imsi) WHERE imsi IS NOT NULL;
    CREATE INDEX address_leases_free ON address_leases(scope, released_at) WHERE imsi IS NULL;
    "#,
    // 2: remember which operator the first start made, so `arcd operator create` before the first
    // `arcd serve` cannot make serve skip writing root-credentials.json.
    r#"
    CREATE TABLE settings (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    INSERT INTO settings(key, value)
        SELECT 'root_operator_id', operator_id FROM operators ORDER BY created_at, operator_id LIMIT 1;
    "#,
    // 3: Harvest Data. Entries sharing a resource and a millisecond are all kept (`entry_id` orders
    // them); `harvest_resources` answers GET /data/resources without scanning entries.
    r#"
    CREATE TABLE harvest_entries (
        entry_id       INTEGER PRIMARY KEY,
        operator_id    TEXT NOT NULL REFERENCES operators(operator_id),
        resource_type  TEXT NOT NULL,
        resource_id    TEXT NOT NULL,
        sim_id         TEXT NOT NULL,
        time           INTEGER NOT NULL,
        content_type   TEXT NOT NULL,
        content        TEXT NOT NULL,
        category       TEXT
    );
    CREATE INDEX harvest_by_resource
        ON harvest_entries(operator_id, resource_type, resource_id, time, entry_id);
    CREATE INDEX harvest_by_sim ON harvest_entries(operator_id, sim_id, time, entry_id);
    CREATE INDEX harvest_by_time ON harvest_entries(time);
    CREATE TABLE harvest_resources (
        operator_id         TEXT NOT NULL REFERENCES operators(operator_id),
        resource_type       TEXT NOT NULL,
        resource_id         TEXT NOT NULL,
        last_modified_time  INTEGER NOT NULL,
        PRIMARY KEY (operator_id, resource_type, resource_id)
    );
    "#,
    // 4: Virtual Private Gateways. A terminated VPG keeps its row (status `terminated`) so its id
    // is never reused; the API no longer shows it.
    r#"
    CREATE TABLE vpgs (
        vpg_id                TEXT PRIMARY KEY,
        operator_id           TEXT NOT NULL REFERENCES operators(operator_id),
        type                  INTEGER NOT NULL,
        region                TEXT NOT NULL,
        device_subnet         TEXT NOT NULL,
        use_internet_gateway  INTEGER NOT NULL,
        device_to_device      INTEGER NOT NULL DEFAULT 0,
        status                TEXT NOT NULL,
        tags                  TEXT NOT NULL,
        created_at            INTEGER NOT NULL,
        last_modified_at      INTEGER NOT NULL
    );
    CREATE INDEX vpgs_by_operator ON vpgs(operator_id, status, vpg_id);
    CREATE INDEX arc_sessions_by_vpg ON arc_sessions(vpg_id) WHERE vpg_id IS NOT NULL;
    "#,
    // 5: self-contained API tokens. A token carries its operator, auth key and expiry, signed
    // with HMAC-SHA256 under `token_signing_key` (32 random bytes made here, once), so signing in
    // needs no write; a token is honoured while its auth key exists and its API key is not in
    // `revoked_api_keys` (logout). Stored tokens of earlier versions were not tied to their auth
    // key and go: their holders sign in again once after the upgrade.
    r#"
    DROP TABLE api_tokens;
    CREATE TABLE revoked_api_keys (
        api_key     TEXT PRIMARY KEY,
        expires_at  INTEGER NOT NULL
    );
    INSERT INTO settings(key, value) VALUES ('token_signing_key', lower(hex(randomblob(32))));
    "#,
    // 6: the per-operator SIM quota counts an operator's SIMs that are not terminated on every
    // create; this index answers that count without reading the SIM rows.
    r#"
    CREATE INDEX sims_by_operator_status ON sims(operator_id, status);
    "#,
    // 7: counting on every create made createSim slower as an operator grew (a quarter of the
    // rate at 100k SIMs), so each operator's SIMs that are not terminated are counted here, kept
    // by triggers so no path that writes `sims` can forget it, and filled from the rows once.
    r#"
    CREATE TABLE operator_sim_counts (
        operator_id  TEXT PRIMARY KEY REFERENCES operators(operator_id),
        live_sims    INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO operator_sim_counts(operator_id, live_sims)
        SELECT operator_id, COUNT(*) FROM sims WHERE status <> 'terminated' GROUP BY operator_id;
    CREATE TRIGGER sims_count_insert AFTER INSERT ON sims WHEN NEW.status <> 'terminated'
    BEGIN
        INSERT INTO operator_sim_counts(operator_id, live_sims) VALUES (NEW.operator_id, 1)
            ON CONFLICT(operator_id) DO UPDATE SET live_sims = live_sims + 1;
    END;
    CREATE TRIGGER sims_count_delete AFTER DELETE ON sims WHEN OLD.status <> 'terminated'
    BEGIN
        UPDATE operator_sim_counts SET live_sims = live_sims - 1
            WHERE operator_id = OLD.operator_id;
    END;
    CREATE TRIGGER sims_count_update AFTER UPDATE OF status, operator_id ON sims
        WHEN (OLD.status <> 'terminated') <> (NEW.status <> 'terminated')
          OR OLD.operator_id <> NEW.operator_id
    BEGIN
        UPDATE operator_sim_counts SET live_sims = live_sims - 1
            WHERE operator_id = OLD.operator_id AND OLD.status <> 'terminated';
        INSERT INTO operator_sim_counts(operator_id, live_sims)
            SELECT NEW.operator_id, 1 WHERE NEW.status <> 'terminated'
            ON CONFLICT(operator_id) DO UPDATE SET live_sims = live_sims + 1;
    END;
    "#,
    // 8: the UDP endpoint (`ip:port`) a session's device was last seen at, saved in batches while
    // arcd runs and once more when it stops. A restarted arcd starts the handshake toward it, so
    // devices pass traffic again at once instead of after their own rekey timeout (15-180 s).
    // NULL until the device has sent an authenticated packet; the value goes with the session row
    // (a re-created session starts without one).
    r#"
    ALTER TABLE arc_sessions ADD COLUMN last_endpoint TEXT;
    "#,
    // 9: migration 6's index served only the per-create count that migration 7 replaced; every
    // SIM insert and status change still paid for it.
    r#"
    DROP INDEX sims_by_operator_status;
    "#,
    // 10: the peer-change outbox (docs/design/store-engines.md): one row per peer (or VPG)
    // change, written in the transaction that made it; every node's follower reads the rows
    // after its cursor and applies the current state of what they name. AUTOINCREMENT: a number
    // is never handed out again after pruning, so a cursor never skips a new row.
    r#"
    CREATE TABLE peer_outbox (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        kind          TEXT NOT NULL,
        rp_id         TEXT,
        imsi          TEXT,
        committed_at  INTEGER NOT NULL
    );
    CREATE INDEX peer_outbox_by_age ON peer_outbox(committed_at);
    "#,
    // 11: live state across nodes (PostgreSQL, several nodes): what the node serving a session's
    // rendezvous point sees of its device, published in batches so API-only nodes can answer
    // getSim/listSims with it. One row per IMSI, tied to the session it was seen in (a row of
    // another session_id is ignored); times in ms. `live_publishers` is each rendezvous point's
    // heartbeat: the rows of a rendezvous point whose publisher went silent show offline. A single
    // SQLite box reads its own data plane and leaves both tables empty.
    r#"
    CREATE TABLE session_live (
        imsi               TEXT PRIMARY KEY,
        session_id         TEXT NOT NULL,
        rp_id              TEXT NOT NULL,
        last_handshake_at  INTEGER,
        device_endpoint    TEXT,
        rx_bytes           INTEGER NOT NULL,
        tx_bytes           INTEGER NOT NULL,
        published_at       INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX session_live_by_rp ON session_live(rp_id);
    CREATE TABLE live_publishers (
        rp_id         TEXT PRIMARY KEY,
        published_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 12: the live-SIM count gets a shard number, so PostgreSQL can spread one operator's count
    // over several rows (concurrent creates would all queue on one row's lock); the quota sums
    // the shards. SQLite's single writer has nothing to spread: its triggers keep shard 0. The
    // table is rebuilt because SQLite cannot change a primary key; the triggers go first so
    // none refers to the table while it is renamed.
    r#"
    DROP TRIGGER sims_count_insert;
    DROP TRIGGER sims_count_delete;
    DROP TRIGGER sims_count_update;
    ALTER TABLE operator_sim_counts RENAME TO operator_sim_counts_unsharded;
    CREATE TABLE operator_sim_counts (
        operator_id  TEXT NOT NULL REFERENCES operators(operator_id),
        shard        INTEGER NOT NULL,
        live_sims    INTEGER NOT NULL,
        PRIMARY KEY (operator_id, shard)
    ) WITHOUT ROWID;
    INSERT INTO operator_sim_counts(operator_id, shard, live_sims)
        SELECT operator_id, 0, live_sims FROM operator_sim_counts_unsharded;
    DROP TABLE operator_sim_counts_unsharded;
    CREATE TRIGGER sims_count_insert AFTER INSERT ON sims WHEN NEW.status <> 'terminated'
    BEGIN
        INSERT INTO operator_sim_counts(operator_id, shard, live_sims) VALUES (NEW.operator_id, 0, 1)
            ON CONFLICT(operator_id, shard) DO UPDATE SET live_sims = live_sims + 1;
    END;
    CREATE TRIGGER sims_count_delete AFTER DELETE ON sims WHEN OLD.status <> 'terminated'
    BEGIN
        UPDATE operator_sim_counts SET live_sims = live_sims - 1
            WHERE operator_id = OLD.operator_id AND shard = 0;
    END;
    CREATE TRIGGER sims_count_update AFTER UPDATE OF status, operator_id ON sims
        WHEN (OLD.status <> 'terminated') <> (NEW.status <> 'terminated')
          OR OLD.operator_id <> NEW.operator_id
    BEGIN
        UPDATE operator_sim_counts SET live_sims = live_sims - 1
            WHERE operator_id = OLD.operator_id AND shard = 0 AND OLD.status <> 'terminated';
        INSERT INTO operator_sim_counts(operator_id, shard, live_sims)
            SELECT NEW.operator_id, 0, 1 WHERE NEW.status <> 'terminated'
            ON CONFLICT(operator_id, shard) DO UPDATE SET live_sims = live_sims + 1;
    END;
    "#,
    // 13: "last seen" across nodes: the device's latest authenticated packet (keepalives too), which
    // the management page shows finer than the last handshake (repeated only every 2 minutes).
    r#"
    ALTER TABLE session_live ADD COLUMN last_seen_at INTEGER;
    "#,
    // 14: credentials of the destinations Funnel and Funk deliver to (SORACOM's
    // `/v1/credentials`), one row per operator and credentials id. `secret` is the JSON object of
    // the secret fields (arcd must send them, so it cannot keep a hash); the API never returns
    // it. The database file is 0600 in the data directory.
    r#"
    CREATE TABLE credentials (
        operator_id     TEXT NOT NULL REFERENCES operators(operator_id),
        credentials_id  TEXT NOT NULL,
        type            TEXT NOT NULL,
        description     TEXT NOT NULL,
        secret          TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        PRIMARY KEY (operator_id, credentials_id)
    ) WITHOUT ROWID;
    "#,
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Applies every migration above the file's `user_version`, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(current)
}
