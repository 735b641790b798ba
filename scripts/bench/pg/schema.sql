-- The tables a createSim writes, as the PostgreSQL migration list will have them (issue 14 spike).
CREATE TABLE operators (operator_id TEXT COLLATE "C" PRIMARY KEY, created_at BIGINT NOT NULL);
CREATE TABLE rendezvous_points (rp_id TEXT COLLATE "C" PRIMARY KEY);
CREATE TABLE operator_sim_counts (
    operator_id TEXT COLLATE "C" PRIMARY KEY REFERENCES operators(operator_id),
    live_sims   BIGINT NOT NULL
);
CREATE TABLE sims (
    sim_id TEXT COLLATE "C" PRIMARY KEY,
    operator_id TEXT COLLATE "C" NOT NULL REFERENCES operators(operator_id),
    sim_type TEXT NOT NULL, module_type TEXT, status TEXT NOT NULL, coverage TEXT NOT NULL,
    group_id TEXT COLLATE "C",
    termination_enabled BOOLEAN NOT NULL DEFAULT false,
    created_at BIGINT NOT NULL, last_modified_at BIGINT NOT NULL
);
CREATE INDEX sims_by_operator ON sims(operator_id, sim_id);
CREATE INDEX sims_by_group ON sims(group_id, sim_id) WHERE group_id IS NOT NULL;
CREATE TABLE subscribers (
    imsi TEXT COLLATE "C" PRIMARY KEY, sim_id TEXT COLLATE "C" NOT NULL REFERENCES sims(sim_id),
    iccid TEXT NOT NULL, msisdn TEXT, subscription TEXT NOT NULL,
    is_primary BOOLEAN NOT NULL, is_virtual BOOLEAN NOT NULL, status TEXT NOT NULL,
    arc_public_key TEXT, created_at BIGINT NOT NULL, last_modified_at BIGINT NOT NULL
);
CREATE INDEX subscribers_by_sim ON subscribers(sim_id);
CREATE TABLE arc_sessions (
    imsi TEXT COLLATE "C" PRIMARY KEY REFERENCES subscribers(imsi),
    sim_id TEXT COLLATE "C" NOT NULL REFERENCES sims(sim_id),
    session_id TEXT NOT NULL,
    rp_id TEXT COLLATE "C" NOT NULL REFERENCES rendezvous_points(rp_id),
    client_ip TEXT NOT NULL, vpg_id TEXT, created_at BIGINT NOT NULL,
    last_updated_at BIGINT NOT NULL, last_endpoint TEXT
);
CREATE UNIQUE INDEX arc_sessions_by_sim ON arc_sessions(sim_id);
CREATE TABLE address_leases (
    scope TEXT NOT NULL, ip BIGINT NOT NULL, imsi TEXT COLLATE "C", released_at BIGINT,
    PRIMARY KEY (scope, ip)
);
CREATE UNIQUE INDEX address_leases_by_imsi ON address_leases(imsi) WHERE imsi IS NOT NULL;
CREATE SEQUENCE sim_numbers;
INSERT INTO operators VALUES ('OP0000000001', 0);
INSERT INTO operator_sim_counts VALUES ('OP0000000001', 0);
INSERT INTO rendezvous_points VALUES ('ap-northeast-1');
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters VALUES ('iccid', 0), ('virtual_imsi', 0);
-- The peer-change outbox as migrations_pg.rs entry 10 makes it.
CREATE TABLE peer_outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind TEXT COLLATE "C" NOT NULL, rp_id TEXT COLLATE "C", imsi TEXT COLLATE "C",
    committed_at BIGINT NOT NULL
);
CREATE INDEX peer_outbox_by_xid ON peer_outbox(xid, seq);
CREATE INDEX peer_outbox_by_age ON peer_outbox(committed_at);
