//! The SIM functions on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names
//! a server (scripts/test-postgres.sh); given but unreachable, the `postgres` test fails. SIMs
//! here are imported IoT SIMs or virtual SIMs without a session (`insert_virtual_sim`), so these
//! tests need nothing of the sessions module; the whole lifecycle is in `store::lifecycle_tests`.

use std::collections::BTreeMap;

use super::create::insert_virtual_sim_unlimited as insert_virtual_sim;
use super::*;
use crate::store::db::Backend;
use crate::store::subscriptions::{import_iot_sims, IotSimImport};
use crate::store::{groups, now_ms, Entity, Rule, StoreError};

use crate::store::testing::on_both_engines;

on_both_engines!(
    imported_sims_read_back_and_list_in_pages,
    import_is_all_or_nothing,
    virtual_numbers_are_valid_unique_and_skip_taken_iccids,
    quota_counts_live_sims_per_operator,
    tags_put_overwrite_and_delete,
    status_changes_only_for_live_iot_sims,
    termination_protection_flag_round_trips,
    search_ignores_case_and_matches_wildcards_literally,
    search_by_group_name_and_session_state,
    group_members_list_in_pages,
);

fn operator(store: &impl Backend, id: &str) -> OperatorId {
    let id = OperatorId::new(id);
    store
        .write_db(|db| {
            db.execute(
                "INSERT INTO operators(operator_id, created_at) VALUES ($1, $2)",
                &[&id, &now_ms()],
            )
        })
        .expect("operator");
    id
}

fn iot(n: u32) -> IotSimImport {
    IotSimImport {
        iccid: format!("89811000000000{n:05}"),
        imsi: format!("4401012345{n:05}").into(),
        msisdn: Some(format!("8190{n:08}")),
        subscription: "plan-D".into(),
    }
}

fn import(store: &impl Backend, op: &OperatorId, items: &[IotSimImport]) -> Vec<SimRecord> {
    store
        .write_db(|db| import_iot_sims(db, op, Coverage::Jp, items))
        .expect("import")
}

fn count(store: &impl Backend, table: &str) -> i64 {
    store
        .read_db(|db| db.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[]))
        .expect("count")
        .int(0)
        .expect("int")
}

fn imported_sims_read_back_and_list_in_pages(store: &impl Backend) {
    let op = operator(store, "OP0000000001");
    let other = operator(store, "OP0000000002");
    let imported = import(store, &op, &[iot(3), iot(1), iot(2)]);
    assert_eq!(imported.len(), 3);
    let sim = store
        .read_db(|db| get(db, &op, &iot(1).sim_id()))
        .expect("get");
    assert_eq!(sim.sim_type, "uicc");
    assert_eq!(sim.status, "active");
    assert_eq!(sim.module_type, None);
    assert_eq!(sim.group_id, None);
    assert!(!sim.termination_enabled);
    assert!(sim.session.is_none());
    assert_eq!(sim.created_at, sim.last_modified_at);
    let [subscriber] = sim.subscribers.as_slice() else {
        panic!("one subscriber: {:?}", sim.subscribers);
    };
    assert_eq!(subscriber.imsi, iot(1).imsi);
    assert_eq!(subscriber.iccid, iot(1).iccid);
    assert_eq!(subscriber.msisdn, iot(1).msisdn);
    assert!(subscriber.is_primary && !subscriber.is_virtual);
    assert_eq!(sim.primary_imsi(), Some(&iot(1).imsi));

    let first = store
        .read_db(|db| list(db, &op, None, 2))
        .expect("first page");
    let after = first.last().map(|s| s.sim_id.to_string());
    let second = store
        .read_db(|db| list(db, &op, after.as_deref(), 2))
        .expect("second page");
    let listed: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|s| s.sim_id.to_string())
        .collect();
    assert_eq!(listed, [iot(1).iccid, iot(2).iccid, iot(3).iccid]);
    assert!(matches!(
        store.read_db(|db| get(db, &other, &iot(1).sim_id())),
        Err(StoreError::NotFound(Entity::Sim))
    ));
    assert!(store
        .read_db(|db| list(db, &other, None, 10))
        .expect("list")
        .is_empty());
}

/// A registered ICCID (`ON CONFLICT DO NOTHING` inserts nothing) or IMSI fails the item with its
/// index, and the whole import is rolled back on both engines.
fn import_is_all_or_nothing(store: &impl Backend) {
    let op = operator(store, "OP0000000003");
    import(store, &op, &[iot(1)]);
    let mut same_imsi = iot(4);
    same_imsi.imsi = iot(1).imsi;
    for (bad, message) in [(iot(1), "iccid"), (same_imsi, "imsi")] {
        let result =
            store.write_db(|db| import_iot_sims(db, &op, Coverage::Jp, &[iot(2), bad.clone()]));
        match result {
            Err(StoreError::Rule(Rule::ImportItem {
                index: 1,
                message: m,
            })) => {
                assert!(m.starts_with(message), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(count(store, "sims"), 1);
    assert_eq!(count(store, "subscribers"), 1);
}

fn virtual_numbers_are_valid_unique_and_skip_taken_iccids(store: &impl Backend) {
    let op = operator(store, "OP0000000004");
    let first = store
        .write_db(|db| insert_virtual_sim(db, &op, Coverage::Jp, "8942"))
        .expect("virtual")
        .sim_id;
    assert!(crate::ids::luhn_valid(first.as_str()));
    assert_eq!(first.as_str().len(), 19);
    // An imported SIM holds the ICCID the counter gives next: creation skips it.
    let next = crate::ids::iccid_from_sequence("8942", 2);
    let taken = IotSimImport {
        iccid: next.clone(),
        ..iot(7)
    };
    import(store, &op, &[taken]);
    let second = store
        .write_db(|db| insert_virtual_sim(db, &op, Coverage::G, "8942"))
        .expect("virtual");
    let (second, private_key) = (second.sim_id, second.private_key);
    assert_eq!(second.as_str(), crate::ids::iccid_from_sequence("8942", 3));
    assert!(!private_key.is_empty());
    let sim = store.read_db(|db| get(db, &op, &second)).expect("get");
    assert_eq!(sim.sim_type, "virtual");
    assert_eq!(sim.coverage, Coverage::G);
    let first_imsi = store
        .read_db(|db| get(db, &op, &first))
        .expect("get")
        .primary_imsi()
        .cloned()
        .expect("imsi");
    let second_imsi = sim.primary_imsi().cloned().expect("imsi");
    for imsi in [&first_imsi, &second_imsi] {
        assert!(imsi.as_str().starts_with("99999") && imsi.as_str().len() == 15);
    }
    assert_ne!(first_imsi, second_imsi);
    let subscriber = sim.arc_subscriber().expect("virtual subscriber");
    assert_eq!(subscriber.subscription, "planArc01");
    assert!(subscriber.arc_public_key.is_some());
    // A subscriber row already holds the virtual IMSI the number gives next (a restored or
    // copied store; numbers are drawn in pairs: a third create draws the ICCID 4 and the IMSI
    // 3): creation skips that IMSI too.
    let holder = import(store, &op, &[iot(8)]).remove(0).sim_id;
    store
        .write_db(|db| {
            db.execute(
                "INSERT INTO subscribers(imsi, sim_id, iccid, msisdn, subscription, is_primary,
                                         is_virtual, status, arc_public_key, created_at,
                                         last_modified_at)
                 VALUES ($1, $2, $2, NULL, 'planArc01', FALSE, TRUE, 'active', 'key', 0, 0)",
                &[&crate::ids::virtual_imsi_from_sequence(3), &holder],
            )
        })
        .expect("holder of the next virtual IMSI");
    let third = store
        .write_db(|db| insert_virtual_sim(db, &op, Coverage::Jp, "8942"))
        .expect("virtual");
    assert_eq!(
        third.sim_id.as_str(),
        crate::ids::iccid_from_sequence("8942", 4)
    );
    assert_eq!(third.imsi, crate::ids::virtual_imsi_from_sequence(4));
}

/// The quota reads the count the schema's triggers keep (one row per operator on SQLite; summed,
/// so PostgreSQL may spread it); imports, status changes and termination move it.
fn quota_counts_live_sims_per_operator(store: &impl Backend) {
    let op = operator(store, "OP0000000005");
    let other = operator(store, "OP0000000006");
    let quota = |operator: &OperatorId, adding: u64, limit: u64| {
        store
            .write_db(|db| check_sim_quota(db, operator, adding, limit))
            .expect("quota")
    };
    assert_eq!(quota(&op, 3, 3), Ok(()), "no SIM yet");
    import(store, &op, &[iot(1), iot(2), iot(3)]);
    import(store, &other, &[iot(4)]);
    store
        .write_db(|db| insert_virtual_sim(db, &op, Coverage::Jp, "8942"))
        .expect("virtual");
    store
        .write_db(|db| change_status(db, &op, &iot(1).sim_id(), StatusAction::Suspend))
        .expect("a suspended SIM still counts");
    assert_eq!(
        quota(&op, 1, 4),
        Err(SimQuotaExceeded {
            limit: 4,
            held: 4,
            adding: 1
        })
    );
    assert_eq!(quota(&other, 3, 4), Ok(()));
    // What `terminate` does to the SIM row (the sessions part aside).
    store
        .write_db(|db| lifecycle::mark_terminated(db, &iot(2).sim_id()))
        .expect("terminated");
    assert_eq!(quota(&op, 1, 4), Ok(()));
    assert_eq!(
        quota(&op, 2, 4),
        Err(SimQuotaExceeded {
            limit: 4,
            held: 3,
            adding: 2
        })
    );
    // The page's total: every SIM of the operator, and those not terminated.
    let counts = |operator: &OperatorId| {
        store
            .read_db(|db| super::count(db, operator))
            .expect("count")
    };
    assert_eq!(
        counts(&op),
        SimCounts {
            total: 4,
            not_terminated: 3
        }
    );
    assert_eq!(
        counts(&other),
        SimCounts {
            total: 1,
            not_terminated: 1
        }
    );
}

fn tags_put_overwrite_and_delete(store: &impl Backend) {
    let op = operator(store, "OP0000000007");
    let stranger = operator(store, "OP0000000008");
    import(store, &op, &[iot(1)]);
    let sim_id = iot(1).sim_id();
    let tags = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    store
        .write_db(|db| put_tags(db, &op, &sim_id, &tags(&[("name", "pump"), ("site", "a")])))
        .expect("put");
    let sim = store
        .write_db(|db| put_tags(db, &op, &sim_id, &tags(&[("site", "b")])))
        .expect("overwrite");
    assert_eq!(sim.tags, tags(&[("name", "pump"), ("site", "b")]));
    store
        .write_db(|db| delete_tag(db, &op, &sim_id, "name"))
        .expect("delete");
    assert!(matches!(
        store.write_db(|db| delete_tag(db, &op, &sim_id, "name")),
        Err(StoreError::NotFound(Entity::Tag))
    ));
    assert!(matches!(
        store.write_db(|db| put_tags(db, &stranger, &sim_id, &tags(&[("x", "y")]))),
        Err(StoreError::NotFound(Entity::Sim))
    ));
    let sim = store.read_db(|db| get(db, &op, &sim_id)).expect("get");
    assert_eq!(sim.tags, tags(&[("site", "b")]));
}

fn status_changes_only_for_live_iot_sims(store: &impl Backend) {
    let op = operator(store, "OP0000000009");
    import(store, &op, &[iot(1)]);
    let sim_id = iot(1).sim_id();
    for (action, status) in [
        (StatusAction::Suspend, "suspended"),
        (StatusAction::Deactivate, "inactive"),
        (StatusAction::Activate, "active"),
    ] {
        let sim = store
            .write_db(|db| change_status(db, &op, &sim_id, action))
            .expect("change");
        assert_eq!(sim.status, status);
    }
    let virtual_sim = store
        .write_db(|db| insert_virtual_sim(db, &op, Coverage::Jp, "8942"))
        .expect("virtual")
        .sim_id;
    assert!(matches!(
        store.write_db(|db| change_status(db, &op, &virtual_sim, StatusAction::Suspend)),
        Err(StoreError::Rule(Rule::VirtualStatusChange("suspend")))
    ));
    store
        .write_db(|db| lifecycle::mark_terminated(db, &sim_id))
        .expect("terminated");
    assert!(matches!(
        store.write_db(|db| change_status(db, &op, &sim_id, StatusAction::Activate)),
        Err(StoreError::Rule(Rule::SimTerminated))
    ));
    assert!(matches!(
        store.read_db(|db| require_live_sim(db, &op, &sim_id)),
        Err(StoreError::Rule(Rule::SimTerminated))
    ));
}

fn termination_protection_flag_round_trips(store: &impl Backend) {
    let op = operator(store, "OP0000000010");
    import(store, &op, &[iot(1)]);
    let sim_id = iot(1).sim_id();
    for enabled in [true, false, true] {
        let sim = store
            .write_db(|db| set_termination_enabled(db, &op, &sim_id, enabled))
            .expect("set");
        assert_eq!(sim.termination_enabled, enabled);
    }
}

fn search_for(store: &impl Backend, op: &OperatorId, query: SimQuery) -> Vec<String> {
    store
        .read_db(|db| search(db, op, &query, None, 10))
        .expect("search")
        .iter()
        .map(|s| s.sim_id.to_string())
        .collect()
}

fn search_ignores_case_and_matches_wildcards_literally(store: &impl Backend) {
    let op = operator(store, "OP0000000011");
    import(store, &op, &[iot(1), iot(2), iot(3)]);
    for (n, name) in [(1, "Meter_10"), (2, "meterA10"), (3, "pump")] {
        let tags = vec![("name".to_string(), name.to_string())];
        store
            .write_db(|db| put_tags(db, &op, &iot(n).sim_id(), &tags))
            .expect("tag");
    }
    let by_name = |name: &str| SimQuery {
        name: vec![name.into()],
        match_all: true,
        ..SimQuery::default()
    };
    assert_eq!(
        search_for(store, &op, by_name("METER")),
        [iot(1).iccid, iot(2).iccid]
    );
    // `_` is a literal underscore, not any one character.
    assert_eq!(search_for(store, &op, by_name("r_1")), [iot(1).iccid]);
    assert_eq!(search_for(store, &op, by_name("PuMp")), [iot(3).iccid]);
    let by_imsi_and_status = SimQuery {
        imsi: vec![iot(2).imsi.to_string()[8..].to_string()],
        status: vec!["active".into()],
        match_all: true,
        ..SimQuery::default()
    };
    assert_eq!(search_for(store, &op, by_imsi_and_status), [iot(2).iccid]);
    let absent = SimQuery {
        absent_fields: true,
        match_all: true,
        ..SimQuery::default()
    };
    assert!(search_for(store, &op, absent).is_empty());
    let either = SimQuery {
        name: vec!["pump".into()],
        iccid: vec![iot(1).iccid[12..].to_string()],
        match_all: false,
        ..SimQuery::default()
    };
    assert_eq!(search_for(store, &op, either), [iot(1).iccid, iot(3).iccid]);
}

fn into_group(store: &impl Backend, sim_id: &SimId, group_id: &GroupId) {
    store
        .write_db(|db| {
            db.execute(
                "UPDATE sims SET group_id = $2 WHERE sim_id = $1",
                &[sim_id, group_id],
            )
        })
        .expect("into group");
}

fn search_by_group_name_and_session_state(store: &impl Backend) {
    let op = operator(store, "OP0000000012");
    import(store, &op, &[iot(1), iot(2)]);
    let tags = BTreeMap::from([("name".to_string(), "Fleet North".to_string())]);
    let group = store
        .write_db(|db| groups::create(db, &op, &tags, &groups::Configuration::new()))
        .expect("group");
    into_group(store, &iot(2).sim_id(), &group.group_id);
    let by_group = SimQuery {
        group: vec!["fleet n".into()],
        match_all: true,
        ..SimQuery::default()
    };
    assert_eq!(search_for(store, &op, by_group), [iot(2).iccid]);
    let offline = SimQuery {
        session_online: Some(false),
        match_all: true,
        ..SimQuery::default()
    };
    assert_eq!(
        search_for(store, &op, offline),
        [iot(1).iccid, iot(2).iccid]
    );
    let online = SimQuery {
        session_online: Some(true),
        match_all: true,
        ..SimQuery::default()
    };
    assert!(search_for(store, &op, online).is_empty());
}

fn group_members_list_in_pages(store: &impl Backend) {
    let op = operator(store, "OP0000000013");
    import(store, &op, &[iot(1), iot(2), iot(3)]);
    let group = store
        .write_db(|db| groups::create(db, &op, &BTreeMap::new(), &groups::Configuration::new()))
        .expect("group");
    for n in [1, 3] {
        into_group(store, &iot(n).sim_id(), &group.group_id);
    }
    let first = store
        .read_db(|db| list_in_group(db, &op, &group.group_id, None, 1))
        .expect("page");
    let after = first.last().map(|s| s.sim_id.to_string());
    let second = store
        .read_db(|db| list_in_group(db, &op, &group.group_id, after.as_deref(), 5))
        .expect("page");
    let listed: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|s| s.sim_id.to_string())
        .collect();
    assert_eq!(listed, [iot(1).iccid, iot(3).iccid]);
    assert!(matches!(
        store.read_db(|db| list_in_group(db, &op, &GroupId::new("missing"), None, 5)),
        Err(StoreError::NotFound(Entity::Group))
    ));
}
