//! Store-level tests of Harvest Data: listings and their keys, get/delete, resources, purge, and
//! the query plans of the listings.

use super::*;
use crate::ids::{Imsi, OperatorId, SimId};
use crate::store::testing::temp_store;
use crate::store::{operators, Store};

const IMSI: &str = "999990000000001";
const SIM: &str = "8942000000000000001";

fn operator(store: &Store) -> OperatorId {
    store.write(operators::create_operator).expect("operator")
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

fn seed(store: &Store, entries: &[NewEntry]) {
    store.write(|tx| insert(tx, entries)).expect("insert");
}

fn subscriber(imsi: &Imsi) -> Scope {
    Scope::Resource {
        resource_type: SUBSCRIBER.to_string(),
        resource_id: imsi.to_string(),
    }
}

fn list(store: &Store, op: &OperatorId, scope: &Scope, query: EntryQuery) -> Vec<Entry> {
    store
        .read(|conn| list_entries(conn, op, scope, &query))
        .expect("list")
}

fn contents(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.content.clone()).collect()
}

/// Times 100, 200 (three entries: a, b, c), 300 for one device.
fn three_times() -> (tempfile::TempDir, Store, OperatorId) {
    let (dir, store) = temp_store();
    let op = operator(&store);
    seed(
        &store,
        &[
            entry(&op, &IMSI.into(), &SIM.into(), 100, "t100"),
            entry(&op, &IMSI.into(), &SIM.into(), 200, "a"),
            entry(&op, &IMSI.into(), &SIM.into(), 200, "b"),
            entry(&op, &IMSI.into(), &SIM.into(), 300, "t300"),
            entry(&op, &IMSI.into(), &SIM.into(), 200, "c"),
        ],
    );
    (dir, store, op)
}

#[test]
fn lists_in_both_orders_within_bounds() {
    let (_dir, store, op) = three_times();
    let all = EntryQuery {
        limit: 10,
        ..EntryQuery::default()
    };
    let scope = subscriber(&IMSI.into());
    assert_eq!(
        contents(&list(&store, &op, &scope, all)),
        ["t300", "c", "b", "a", "t100"]
    );
    let asc = EntryQuery {
        order: Order::Asc,
        ..all
    };
    assert_eq!(
        contents(&list(&store, &op, &scope, asc)),
        ["t100", "a", "b", "c", "t300"]
    );
    let bounded = EntryQuery {
        from: Some(200),
        to: Some(200),
        ..asc
    };
    assert_eq!(
        contents(&list(&store, &op, &scope, bounded)),
        ["a", "b", "c"]
    );
    // The SIM scope sees the same entries; other scopes and operators see none.
    assert_eq!(list(&store, &op, &Scope::Sim(SIM.into()), all).len(), 5);
    assert!(list(&store, &op, &subscriber(&"999990000000002".into()), all).is_empty());
    let other = operator(&store);
    assert!(list(&store, &other, &scope, all).is_empty());
    assert!(list(&store, &other, &Scope::Sim(SIM.into()), all).is_empty());
}

#[test]
fn exact_keys_page_through_a_shared_millisecond() {
    let (_dir, store, op) = three_times();
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
                let page = list(&store, &op, &scope, query);
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

#[test]
fn a_key_without_entry_skips_the_whole_millisecond() {
    let (_dir, store, op) = three_times();
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
        contents(&list(&store, &op, &subscriber(&IMSI.into()), desc)),
        ["t100"]
    );
    let asc = EntryQuery {
        order: Order::Asc,
        ..desc
    };
    assert_eq!(
        contents(&list(&store, &op, &subscriber(&IMSI.into()), asc)),
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

#[test]
fn get_returns_the_first_entry_of_the_millisecond_and_delete_removes_all() {
    let (_dir, store, op) = three_times();
    let scope = subscriber(&IMSI.into());
    let got = store
        .read(|conn| get_entry(conn, &op, &scope, 200))
        .expect("get");
    assert_eq!(got.content, "a");
    let by_sim = store
        .read(|conn| get_entry(conn, &op, &Scope::Sim(SIM.into()), 200))
        .expect("get by SIM");
    assert_eq!(by_sim, got);
    let other = operator(&store);
    for (op, time) in [(&other, 200), (&op, 150)] {
        assert!(matches!(
            store.read(|conn| get_entry(conn, op, &scope, time)),
            Err(StoreError::NotFound(Entity::DataEntry))
        ));
        assert!(matches!(
            store.write(|tx| delete_entries(tx, op, &scope, time)),
            Err(StoreError::NotFound(Entity::DataEntry))
        ));
    }
    let deleted = store
        .write(|tx| delete_entries(tx, &op, &scope, 200))
        .expect("delete");
    assert_eq!(deleted, 3);
    assert!(matches!(
        store.read(|conn| get_entry(conn, &op, &scope, 200)),
        Err(StoreError::NotFound(Entity::DataEntry))
    ));
    let all = EntryQuery {
        limit: 10,
        ..EntryQuery::default()
    };
    assert_eq!(contents(&list(&store, &op, &scope, all)), ["t300", "t100"]);
    // Deleting the last entries of a resource removes the resource too.
    for time in [100, 300] {
        store
            .write(|tx| delete_entries(tx, &op, &Scope::Sim(SIM.into()), time))
            .expect("delete by SIM");
    }
    assert!(resources(&store, &op, None).is_empty());
}

fn resources(store: &Store, op: &OperatorId, resource_type: Option<&str>) -> Vec<Resource> {
    store
        .read(|conn| list_resources(conn, op, resource_type, None, 100))
        .expect("resources")
}

#[test]
fn resources_page_in_key_order() {
    let (_dir, store) = temp_store();
    let op = operator(&store);
    let imsis = ["999990000000003", "999990000000001", "999990000000002"];
    for (i, imsi) in imsis.iter().enumerate() {
        seed(
            &store,
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
        &store,
        &[entry(&op, &imsis[0].into(), &SIM.into(), 5, "older")],
    );
    let all = resources(&store, &op, None);
    let ids: Vec<&str> = all.iter().map(|r| r.resource_id.as_str()).collect();
    assert_eq!(ids, [imsis[1], imsis[2], imsis[0]]);
    assert_eq!(all[2].last_modified_time, 10, "the newest entry's time");
    assert_eq!(all[0].last_modified_time, 20);
    assert_eq!(resources(&store, &op, Some(SUBSCRIBER)), all);
    assert!(resources(&store, &op, Some("Sim")).is_empty());
    assert!(resources(&store, &operator(&store), None).is_empty());

    let after = ResourceCursor::parse(&resource_key(&all[0])).expect("own key parses");
    let rest = store
        .read(|conn| list_resources(conn, &op, Some(SUBSCRIBER), Some(&after), 1))
        .expect("page");
    assert_eq!(rest, [all[1].clone()]);
    let after = ResourceCursor::parse(&resource_key(&all[2])).expect("own key parses");
    let none = store
        .read(|conn| list_resources(conn, &op, None, Some(&after), 10))
        .expect("page");
    assert!(none.is_empty());
}

#[test]
fn purge_deletes_old_entries_in_batches_and_drops_empty_resources() {
    let (_dir, store) = temp_store();
    let op = operator(&store);
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
    seed(&store, &entries);

    let mut batches = Vec::new();
    loop {
        let deleted = store
            .write(|tx| purge_older_than(tx, 100, 3))
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
    assert!(list(&store, &op, &subscriber(&old_only.into()), all).is_empty());
    let kept = list(&store, &op, &subscriber(&mixed.into()), all);
    assert_eq!(
        kept.iter().map(|e| e.time).collect::<Vec<_>>(),
        [150, 100],
        "the cutoff itself is kept"
    );
    let left = resources(&store, &op, None);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].resource_id, mixed);
    assert_eq!(left[0].last_modified_time, 150);
    assert_eq!(
        store
            .write(|tx| purge_older_than(tx, 100, 3))
            .expect("purge"),
        0
    );
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
