//! Store-level tests of Harvest Data: listings and their keys, get/delete, resources, purge, and
//! the query plans of the listings. They run on both engines: `sqlite` always, `postgres` when
//! ARCD_TEST_POSTGRES_URL names a server (scripts/test-postgres.sh); the plans are SQLite's.

use super::*;
use crate::ids::{Imsi, OperatorId, SimId};
use crate::store::db::Backend;
use crate::store::operators;
use crate::store::testing::temp_store;

use crate::store::testing::on_both_engines;

on_both_engines!(
    lists_in_both_orders_within_bounds,
    exact_keys_page_through_a_shared_millisecond,
    a_key_without_entry_skips_the_whole_millisecond,
    get_returns_the_first_entry_of_the_millisecond_and_delete_removes_all,
    resources_page_in_key_order,
    purge_deletes_old_entries_in_batches_and_drops_empty_resources,
    a_large_batch_keeps_its_order_and_each_resource_its_newest_time,
);

const IMSI: &str = "999990000000001";
const SIM: &str = "8942000000000000001";

fn operator(store: &impl Backend) -> OperatorId {
    store
        .write_db(operators::create_operator)
        .expect("operator")
}

fn entry(
    operator_id: &OperatorId,
    imsi: &Imsi,
    sim_id: &SimId,
    time: i64,
    content: &str,
) -> NewEntry {
    NewEntry {
        operator_id: operator_id.clone(),
        imsi: imsi.clone(),
        sim_id: sim_id.clone(),
        time,
        content_type: "application/json".to_string(),
        content: content.to_string(),
    }
}

fn seed(store: &impl Backend, entries: &[NewEntry]) {
    store.write_db(|db| insert(db, entries)).expect("insert");
}

fn subscriber(imsi: &Imsi) -> Scope {
    Scope::Resource {
        resource_type: SUBSCRIBER.to_string(),
        resource_id: imsi.to_string(),
    }
}

fn list(store: &impl Backend, op: &OperatorId, scope: &Scope, query: EntryQuery) -> Vec<Entry> {
    store
        .read_db(|db| list_entries(db, op, scope, &query))
        .expect("list")
}

fn contents(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.content.clone()).collect()
}

/// Times 100, 200 (three entries: a, b, c), 300 for one device.
fn three_times(store: &impl Backend) -> OperatorId {
    let op = operator(store);
    seed(
        store,
        &[
            entry(&op, &IMSI.into(), &SIM.into(), 100, "t100"),
            entry(&op, &IMSI.into(), &SIM.into(), 200, "a"),
            entry(&op, &IMSI.into(), &SIM.into(), 200, "b"),
            entry(&op, &IMSI.into(), &SIM.into(), 300, "t300"),
            entry(&op, &IMSI.into(), &SIM.into(), 200, "c"),
        ],
    );
    op
}

fn lists_in_both_orders_within_bounds(store: &impl Backend) {
    let op = three_times(store);
    let all = EntryQuery {
        limit: 10,
        ..EntryQuery::default()
    };
    let scope = subscriber(&IMSI.into());
    assert_eq!(
        contents(&list(store, &op, &scope, all)),
        ["t300", "c", "b", "a", "t100"]
    );
    let asc = EntryQuery {
        order: Order::Asc,
        ..all
    };
    assert_eq!(
        contents(&list(store, &op, &scope, asc)),
        ["t100", "a", "b", "c", "t300"]
    );
    let bounded = EntryQuery {
        from: Some(200),
        to: Some(200),
        ..asc
    };
    assert_eq!(
        contents(&list(store, &op, &scope, bounded)),
        ["a", "b", "c"]
    );
    // The SIM scope sees the same entries; other scopes and operators see none.
    assert_eq!(list(store, &op, &Scope::Sim(SIM.into()), all).len(), 5);
    assert!(list(store, &op, &subscriber(&"999990000000002".into()), all).is_empty());
    let other = operator(store);
    assert!(list(store, &other, &scope, all).is_empty());
    assert!(list(store, &other, &Scope::Sim(SIM.into()), all).is_empty());
}

fn exact_keys_page_through_a_shared_millisecond(store: &impl Backend) {
    let op = three_times(store);
    for scope in [subscriber(&IMSI.into()), Scope::Sim(SIM.into())] {
        for order in [Order::Desc, Order::Asc] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let query = EntryQuery {
                    order,
                    limit: 2,
                    after,
                    ..EntryQuery::default()
                };
                let page = list(store, &op, &scope, query);
                seen.extend(contents(&page));
                match page.last() {
                    Some(last) if page.len() == 2 => {
                        after = Some(Cursor::parse(&next_key(last)).expect("own key parses"))
                    }
                    _ => break,
                }
            }
            let mut expected = vec!["t100", "a", "b", "c", "t300"];
            if order == Order::Desc {
                expected.reverse();
            }
            assert_eq!(seen, expected, "{scope:?} {order:?}");
        }
    }
}

fn a_key_without_entry_skips_the_whole_millisecond(store: &impl Backend) {
    let op = three_times(store);
    let after = Cursor::parse(&format!("200_{IMSI}"));
    assert_eq!(
        after,
        Some(Cursor {
            time: 200,
            entry_id: None
        })
    );
    let desc = EntryQuery {
        limit: 10,
        after,
        ..EntryQuery::default()
    };
    assert_eq!(
        contents(&list(store, &op, &subscriber(&IMSI.into()), desc)),
        ["t100"]
    );
    let asc = EntryQuery {
        order: Order::Asc,
        ..desc
    };
    assert_eq!(
        contents(&list(store, &op, &subscriber(&IMSI.into()), asc)),
        ["t300"]
    );
}

#[test]
fn malformed_keys_are_refused() {
    for key in [
        "",
        "200",
        "200_",
        "x_1",
        "200_1_x",
        "200_1_0",
        "200_1_-3",
        "200_1_2_3",
        "_1",
    ] {
        assert_eq!(Cursor::parse(key), None, "{key:?}");
    }
    assert_eq!(
        Cursor::parse("-5_1_7"),
        Some(Cursor {
            time: -5,
            entry_id: Some(7)
        })
    );
    assert_eq!(ResourceCursor::parse("Subscriber"), None);
    assert_eq!(ResourceCursor::parse("_1"), None);
    assert_eq!(ResourceCursor::parse("Subscriber_"), None);
}

fn get_returns_the_first_entry_of_the_millisecond_and_delete_removes_all(store: &impl Backend) {
    let op = three_times(store);
    let scope = subscriber(&IMSI.into());
    let got = store
        .read_db(|db| get_entry(db, &op, &scope, 200))
        .expect("get");
    assert_eq!(got.content, "a");
    let by_sim = store
        .read_db(|db| get_entry(db, &op, &Scope::Sim(SIM.into()), 200))
        .expect("get by SIM");
    assert_eq!(by_sim, got);
    let other = operator(store);
    for (op, time) in [(&other, 200), (&op, 150)] {
        assert!(matches!(
            store.read_db(|db| get_entry(db, op, &scope, time)),
            Err(StoreError::NotFound(Entity::DataEntry))
        ));
        assert!(matches!(
            store.write_db(|db| delete_entries(db, op, &scope, time)),
            Err(StoreError::NotFound(Entity::DataEntry))
        ));
    }
    let deleted = store
        .write_db(|db| delete_entries(db, &op, &scope, 200))
        .expect("delete");
    assert_eq!(deleted, 3);
    assert!(matches!(
        store.read_db(|db| get_entry(db, &op, &scope, 200)),
        Err(StoreError::NotFound(Entity::DataEntry))
    ));
    let all = EntryQuery {
        limit: 10,
        ..EntryQuery::default()
    };
    assert_eq!(contents(&list(store, &op, &scope, all)), ["t300", "t100"]);
    // Deleting the last entries of a resource removes the resource too.
    for time in [100, 300] {
        store
            .write_db(|db| delete_entries(db, &op, &Scope::Sim(SIM.into()), time))
            .expect("delete by SIM");
    }
    assert!(resources(store, &op, None).is_empty());
}

fn resources(store: &impl Backend, op: &OperatorId, resource_type: Option<&str>) -> Vec<Resource> {
    store
        .read_db(|db| list_resources(db, op, resource_type, None, 100))
        .expect("resources")
}

fn resources_page_in_key_order(store: &impl Backend) {
    let op = operator(store);
    let imsis = ["999990000000003", "999990000000001", "999990000000002"];
    for (i, imsi) in imsis.iter().enumerate() {
        seed(
            store,
            &[entry(
                &op,
                &(*imsi).into(),
                &SIM.into(),
                10 * (i as i64 + 1),
                "x",
            )],
        );
    }
    seed(
        store,
        &[entry(&op, &imsis[0].into(), &SIM.into(), 5, "older")],
    );
    let all = resources(store, &op, None);
    let ids: Vec<&str> = all.iter().map(|r| r.resource_id.as_str()).collect();
    assert_eq!(ids, [imsis[1], imsis[2], imsis[0]]);
    assert_eq!(all[2].last_modified_time, 10, "the newest entry's time");
    assert_eq!(all[0].last_modified_time, 20);
    assert_eq!(resources(store, &op, Some(SUBSCRIBER)), all);
    assert!(resources(store, &op, Some("Sim")).is_empty());
    assert!(resources(store, &operator(store), None).is_empty());

    let after = ResourceCursor::parse(&resource_key(&all[0])).expect("own key parses");
    let rest = store
        .read_db(|db| list_resources(db, &op, Some(SUBSCRIBER), Some(&after), 1))
        .expect("page");
    assert_eq!(rest, [all[1].clone()]);
    let after = ResourceCursor::parse(&resource_key(&all[2])).expect("own key parses");
    let none = store
        .read_db(|db| list_resources(db, &op, None, Some(&after), 10))
        .expect("page");
    assert!(none.is_empty());
}

fn purge_deletes_old_entries_in_batches_and_drops_empty_resources(store: &impl Backend) {
    let op = operator(store);
    let old_only = "999990000000001";
    let mixed = "999990000000002";
    let mut entries: Vec<NewEntry> = (0..7)
        .map(|t| {
            entry(
                &op,
                &old_only.into(),
                &"8942000000000000001".into(),
                t,
                "old",
            )
        })
        .collect();
    entries.push(entry(
        &op,
        &mixed.into(),
        &"8942000000000000002".into(),
        50,
        "old",
    ));
    entries.push(entry(
        &op,
        &mixed.into(),
        &"8942000000000000002".into(),
        100,
        "kept",
    ));
    entries.push(entry(
        &op,
        &mixed.into(),
        &"8942000000000000002".into(),
        150,
        "kept",
    ));
    seed(store, &entries);

    let mut batches = Vec::new();
    loop {
        let deleted = store
            .write_db(|db| purge_older_than(db, 100, 3))
            .expect("purge");
        batches.push(deleted);
        if deleted < 3 {
            break;
        }
    }
    assert_eq!(batches, [3, 3, 2]);
    let all = EntryQuery {
        limit: 100,
        ..EntryQuery::default()
    };
    assert!(list(store, &op, &subscriber(&old_only.into()), all).is_empty());
    let kept = list(store, &op, &subscriber(&mixed.into()), all);
    assert_eq!(
        kept.iter().map(|e| e.time).collect::<Vec<_>>(),
        [150, 100],
        "the cutoff itself is kept"
    );
    let left = resources(store, &op, None);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].resource_id, mixed);
    assert_eq!(left[0].last_modified_time, 150);
    assert_eq!(
        store
            .write_db(|db| purge_older_than(db, 100, 3))
            .expect("purge"),
        0
    );
}

/// 150 entries in one call (several multi-row statements): entries of one millisecond list in
/// the order they came in, and each resource's time is its newest entry's, not its last one's;
/// an older batch later does not move it back.
fn a_large_batch_keeps_its_order_and_each_resource_its_newest_time(store: &impl Backend) {
    let op = operator(store);
    let imsis = ["999990000000001", "999990000000002", "999990000000003"];
    let batch: Vec<NewEntry> = (0..150)
        .map(|i| {
            let imsi = imsis[i % 3];
            // Device 1's newest entry (time 900) comes first, the rest of its entries at 500.
            let time = if i == 0 { 900 } else { 500 + (i % 3) as i64 };
            entry(&op, &imsi.into(), &SIM.into(), time, &format!("{i:03}"))
        })
        .collect();
    seed(store, &batch);
    let asc = EntryQuery {
        order: Order::Asc,
        from: Some(500),
        to: Some(500),
        limit: 100,
        ..EntryQuery::default()
    };
    let expected: Vec<String> = (3..150).step_by(3).map(|i| format!("{i:03}")).collect();
    assert_eq!(
        contents(&list(store, &op, &subscriber(&imsis[0].into()), asc)),
        expected
    );
    let times = |store| -> Vec<i64> {
        resources(store, &op, None)
            .iter()
            .map(|r| r.last_modified_time)
            .collect()
    };
    assert_eq!(times(store), [900, 501, 502]);
    seed(
        store,
        &[entry(&op, &imsis[1].into(), &SIM.into(), 10, "late")],
    );
    assert_eq!(times(store), [900, 501, 502]);
    seed(
        store,
        &[entry(&op, &imsis[2].into(), &SIM.into(), 1_000, "new")],
    );
    assert_eq!(times(store), [900, 501, 1_000]);
}

/// The plan of every listing uses its scope's index in the listing's order: no full scan and no
/// temporary b-tree for sorting, however many entries there are.
#[test]
fn listings_use_their_indexes() {
    let (_dir, store) = temp_store();
    let cases = [
        (subscriber(&IMSI.into()), "harvest_by_resource"),
        (Scope::Sim(SIM.into()), "harvest_by_sim"),
    ];
    let plan = |sql: &str| -> Vec<String> {
        store
            .sqlite()
            .expect("a SQLite store")
            .read(|conn| {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let values: [&dyn rusqlite::ToSql; 8] = [&"op", &"a", &"b", &0, &1, &2, &3, &4];
                let count = stmt.parameter_count();
                let rows = stmt.query_map(&values[..count], |row| row.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .expect("plan")
    };
    for (scope, index) in cases {
        for order in [Order::Asc, Order::Desc] {
            let steps = plan(&list_sql(&scope, order));
            assert_eq!(steps.len(), 1, "{steps:?}");
            assert!(
                steps[0].starts_with("SEARCH harvest_entries USING INDEX ")
                    && steps[0].contains(index)
                    && steps[0].contains("time>? AND time<?"),
                "{scope:?} {order:?}: {steps:?}"
            );
        }
    }
    let purge = plan("SELECT entry_id FROM harvest_entries WHERE time < ?1 ORDER BY time LIMIT ?2");
    assert!(purge[0].contains("harvest_by_time"), "{purge:?}");
    for filtered in [true, false] {
        let steps = plan(&resources_sql(filtered));
        assert!(
            steps.iter().all(|s| !s.contains("TEMP B-TREE"))
                && steps[0].starts_with("SEARCH harvest_resources USING INDEX"),
            "{steps:?}"
        );
    }
}
