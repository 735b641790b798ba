-- createsim.sql as a literal port of today's SQLite code: the ICCID and IMSI numbers come from
-- the `counters` rows (next_counter), so every create updates 3 hot rows (2 counters + the
-- operator's live-SIM count) that concurrent creates queue on.
BEGIN;
UPDATE counters SET value = value + 1 WHERE name = 'iccid' RETURNING value AS n \gset
UPDATE counters SET value = value + 1 WHERE name = 'virtual_imsi' RETURNING value AS m \gset
INSERT INTO sims(sim_id, operator_id, sim_type, status, coverage, created_at, last_modified_at)
    VALUES ('89424' || :n, 'OP0000000001', 'virtual', 'active', 'jp', 1, 1);
INSERT INTO subscribers(imsi, sim_id, iccid, subscription, is_primary, is_virtual, status,
                        arc_public_key, created_at, last_modified_at)
    VALUES ('99998' || :m, '89424' || :n, '89424' || :n, 'planArc01', true, true, 'active',
            'b64key-of-44-characters-xxxxxxxxxxxxxxxxxx=', 1, 1);
INSERT INTO address_leases(scope, ip, imsi) VALUES ('ap-northeast-1', 1000000000 + :m, '99998' || :m);
INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, created_at, last_updated_at)
    VALUES ('99998' || :m, '89424' || :n, md5(:n::text), 'ap-northeast-1', '10.64.0.2', 1, 1);
UPDATE operator_sim_counts SET live_sims = live_sims + 1 WHERE operator_id = 'OP0000000001';
END;
