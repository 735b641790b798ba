-- createsim-nohot.sql plus the peer-change outbox row arcd writes in the same transaction.
BEGIN;
SELECT nextval('sim_numbers') AS n \gset
INSERT INTO sims(sim_id, operator_id, sim_type, status, coverage, created_at, last_modified_at)
    VALUES ('89425' || :n, 'OP0000000001', 'virtual', 'active', 'jp', 1, 1);
INSERT INTO subscribers(imsi, sim_id, iccid, subscription, is_primary, is_virtual, status,
                        arc_public_key, created_at, last_modified_at)
    VALUES ('99997' || :n, '89425' || :n, '89425' || :n, 'planArc01', true, true, 'active',
            'b64key-of-44-characters-xxxxxxxxxxxxxxxxxx=', 1, 1);
INSERT INTO address_leases(scope, ip, imsi) VALUES ('ap-northeast-1', 2000000000 + :n, '99997' || :n);
INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, created_at, last_updated_at)
    VALUES ('99997' || :n, '89425' || :n, md5(:n::text), 'ap-northeast-1', '10.64.0.2', 1, 1);
INSERT INTO peer_outbox(kind, rp_id, imsi, committed_at) VALUES ('peer', 'ap-northeast-1', '99997' || :n, 1);
END;
