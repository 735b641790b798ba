-- One createSim-shaped transaction: the SIM and subscriber numbers (a sequence: a counter row
-- would be a second hot row), 4 inserts (SIM, subscriber, address lease, Arc session) and the
-- operator's live-SIM count (1 update of one hot row per operator, what the SQLite triggers do).
BEGIN;
SELECT nextval('sim_numbers') AS n \gset
INSERT INTO sims(sim_id, operator_id, sim_type, status, coverage, created_at, last_modified_at)
    VALUES ('89423' || :n, 'OP0000000001', 'virtual', 'active', 'jp', 1, 1);
INSERT INTO subscribers(imsi, sim_id, iccid, subscription, is_primary, is_virtual, status,
                        arc_public_key, created_at, last_modified_at)
    VALUES ('99999' || :n, '89423' || :n, '89423' || :n, 'planArc01', true, true, 'active',
            'b64key-of-44-characters-xxxxxxxxxxxxxxxxxx=', 1, 1);
INSERT INTO address_leases(scope, ip, imsi) VALUES ('ap-northeast-1', :n, '99999' || :n);
INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, created_at, last_updated_at)
    VALUES ('99999' || :n, '89423' || :n, md5(:n::text), 'ap-northeast-1', '10.64.0.2', 1, 1);
UPDATE operator_sim_counts SET live_sims = live_sims + 1 WHERE operator_id = 'OP0000000001';
END;
