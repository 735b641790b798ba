//! HTTPS integration tests of the Harvest Data read API (getDataEntries, getDataEntry,
//! deleteDataEntry, listDataSourceResources, getDataFromSim, getDataFromSubscriber) against an
//! in-process arcd. Entries are seeded through the store, as the Harvest service writes them, for
//! a SIM created through the API. Every 2xx JSON body is validated against the official schema.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use arcd::store::db::Backend;
use arcd::store::harvest::{self, NewEntry};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use support::checked::{expect_status, text, Checked};
use support::conformance::validate_array_of_strict;
use support::paging::{link_next, next_key};
use support::server::{assert_error, TestServer};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A SIM of the root operator, as the Harvest service identifies its device.
struct Device {
    operator_id: String,
    sim_id: String,
    imsi: String,
}

async fn device(api: &Checked) -> Device {
    let sim = api.create_sim().await;
    let sim_id = text(&sim, "/simId").to_string();
    let imsi = sim["profiles"][&sim_id]["primaryImsi"]
        .as_str()
        .expect("primaryImsi")
        .to_string();
    Device {
        operator_id: text(&sim, "/operatorId").to_string(),
        sim_id,
        imsi,
    }
}

/// A time an hour ago, so a retention purge never touches the test's entries.
fn base_time() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    now - 3_600_000
}

/// Stores one entry per `(time, content)` for `device`, in that order, in one transaction.
async fn seed(server: &TestServer, device: &Device, entries: &[(i64, &str)]) {
    let entries: Vec<NewEntry> = entries
        .iter()
        .map(|(time, content)| NewEntry {
            operator_id: device.operator_id.as_str().into(),
            imsi: device.imsi.as_str().into(),
            sim_id: device.sim_id.as_str().into(),
            time: *time,
            content_type: "application/json".to_string(),
            content: format!(r#"{{"v":"{content}"}}"#),
        })
        .collect();
    let store = server.running.store.clone();
    tokio::task::spawn_blocking(move || store.write_db(|db| harvest::insert(db, &entries)))
        .await
        .expect("join")
        .expect("seed entries");
}

/// The `v` of each entry's JSON content.
fn values(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| {
            let content: Value = serde_json::from_str(text(e, "/content")).expect("JSON content");
            content["v"].as_str().expect("v").to_string()
        })
        .collect()
}

/// GETs a listing of `DataEntry` (200, strictly conforming) with its headers.
async fn entries(api: &Checked, url: &str) -> (HeaderMap, Vec<Value>) {
    let (status, headers, body) = api.get_with_headers(url).await;
    expect_status(status, &body, StatusCode::OK);
    if let Err(e) = validate_array_of_strict("DataEntry", &body) {
        panic!("{url}: {e}");
    }
    (headers, body.as_array().expect("array").clone())
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Every page of `url` (which has a query), once following `x-soracom-next-key` and once the
/// `link` header; both must give the same pages.
async fn all_pages(api: &Checked, url: &str) -> Vec<Vec<String>> {
    let mut by_key = Vec::new();
    let mut key: Option<String> = None;
    loop {
        let page_url = match &key {
            None => url.to_string(),
            Some(k) => format!("{url}&last_evaluated_key={}", encode(k)),
        };
        let (headers, page) = entries(api, &page_url).await;
        by_key.push(values(&page));
        assert_eq!(next_key(&headers).is_some(), link_next(&headers).is_some());
        key = next_key(&headers);
        if key.is_none() {
            break;
        }
        assert!(by_key.len() < 100, "paging does not end");
    }
    let mut by_link = Vec::new();
    let mut next = Some(url.to_string());
    while let Some(page_url) = next {
        let (headers, page) = entries(api, &page_url).await;
        by_link.push(values(&page));
        next = link_next(&headers);
        assert!(by_link.len() < 100, "paging does not end");
    }
    assert_eq!(by_key, by_link, "the link header leads to the same pages");
    by_key
}

async fn started() -> (TestServer, Checked, Device) {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let device = device(&api).await;
    (server, api, device)
}

// ---------------------------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lists_entries_newest_first_or_oldest_first_within_inclusive_bounds() {
    let (server, api, dev) = started().await;
    let t = base_time();
    seed(
        &server,
        &dev,
        &[
            (t, "a"),
            (t + 1, "b1"),
            (t + 1, "b2"),
            (t + 2, "c"),
            (t + 1, "b3"),
        ],
    )
    .await;
    let url = format!("/v1/data/Subscriber/{}", dev.imsi);

    let (headers, list) = entries(&api, &url).await;
    assert_eq!(values(&list), ["c", "b3", "b2", "b1", "a"]);
    assert!(next_key(&headers).is_none() && headers.get("link").is_none());
    let first = &list[0];
    assert_eq!(first["time"], t + 2);
    assert_eq!(first["resourceType"], "Subscriber");
    assert_eq!(first["resourceId"], dev.imsi.as_str());
    assert_eq!(first["contentType"], "application/json");
    assert!(first.get("category").is_none(), "category only when set");

    let (_, list) = entries(&api, &format!("{url}?sort=asc")).await;
    assert_eq!(values(&list), ["a", "b1", "b2", "b3", "c"]);
    let (_, list) = entries(&api, &format!("{url}?sort=desc&from={t}&to={}", t + 1)).await;
    assert_eq!(values(&list), ["b3", "b2", "b1", "a"]);
    let (_, list) = entries(&api, &format!("{url}?sort=asc&from={}", t + 1)).await;
    assert_eq!(values(&list), ["b1", "b2", "b3", "c"]);
    let (_, list) = entries(&api, &format!("{url}?to={}", t - 1)).await;
    assert!(list.is_empty());

    // The default page holds 10 entries.
    let more: Vec<(i64, String)> = (0..12).map(|i| (t + 10 + i, format!("m{i}"))).collect();
    let more: Vec<(i64, &str)> = more.iter().map(|(t, v)| (*t, v.as_str())).collect();
    seed(&server, &dev, &more).await;
    let (headers, list) = entries(&api, &url).await;
    assert_eq!(list.len(), 10);
    assert!(next_key(&headers).is_some());
    server.running.shutdown().await;
}

#[tokio::test]
async fn pages_through_shared_milliseconds_without_loss_or_duplicates() {
    let (server, api, dev) = started().await;
    let t = base_time();
    // 26 entries over 7 milliseconds, 4 per ms (2 in the last), stored out of order.
    let named: Vec<(i64, String)> = (0..26)
        .rev()
        .map(|i| (t + i / 4, format!("e{i:02}")))
        .collect();
    let named: Vec<(i64, &str)> = named.iter().map(|(t, v)| (*t, v.as_str())).collect();
    seed(&server, &dev, &named).await;
    // Within a millisecond entries come in the order they were stored.
    let mut asc: Vec<(i64, usize, String)> = named
        .iter()
        .enumerate()
        .map(|(stored, (time, v))| (*time, stored, v.to_string()))
        .collect();
    asc.sort();
    let asc: Vec<String> = asc.into_iter().map(|(_, _, v)| v).collect();
    let desc: Vec<String> = asc.iter().rev().cloned().collect();

    let urls = [
        format!("/v1/data/Subscriber/{}", dev.imsi),
        format!("/v1/subscribers/{}/data", dev.imsi),
        format!("/v1/sims/{}/data", dev.sim_id),
        format!("/v1/data/Sim/{}", dev.sim_id),
    ];
    for url in &urls {
        for (sort, expected) in [("desc", &desc), ("asc", &asc)] {
            for limit in [1, 3, 4, 5] {
                let pages = all_pages(&api, &format!("{url}?sort={sort}&limit={limit}")).await;
                assert!(pages.iter().all(|p| p.len() <= limit));
                let seen: Vec<String> = pages.concat();
                assert_eq!(&seen, expected, "{url} sort={sort} limit={limit}");
            }
        }
    }
    // The link keeps the filters: paging within bounds stays within them.
    let pages = all_pages(
        &api,
        &format!("{}?limit=3&from={}&to={}", urls[0], t + 1, t + 2),
    )
    .await;
    assert_eq!(pages.concat(), desc[14..22].to_vec());
    server.running.shutdown().await;
}

#[tokio::test]
async fn a_client_built_key_continues_after_the_whole_millisecond() {
    let (server, api, dev) = started().await;
    let t = base_time();
    seed(
        &server,
        &dev,
        &[(t, "a"), (t + 1, "b1"), (t + 1, "b2"), (t + 2, "c")],
    )
    .await;
    let key = encode(&format!("{}_{}", t + 1, dev.imsi));
    for url in [
        format!("/v1/subscribers/{}/data", dev.imsi),
        format!("/v1/data/Subscriber/{}", dev.imsi),
    ] {
        let (_, list) = entries(&api, &format!("{url}?last_evaluated_key={key}")).await;
        assert_eq!(values(&list), ["a"]);
        let (_, list) = entries(&api, &format!("{url}?sort=asc&last_evaluated_key={key}")).await;
        assert_eq!(values(&list), ["c"]);
    }
    // arcd's own key for a page ending inside the millisecond continues inside it.
    let url = format!("/v1/subscribers/{}/data?limit=2", dev.imsi);
    let (headers, list) = entries(&api, &url).await;
    assert_eq!(values(&list), ["c", "b2"]);
    let key = next_key(&headers).expect("next key");
    assert!(
        key.starts_with(&format!("{}_{}_", t + 1, dev.imsi)),
        "{key}"
    );
    let (_, list) = entries(&api, &format!("{url}&last_evaluated_key={}", encode(&key))).await;
    assert_eq!(values(&list), ["b1", "a"]);
    server.running.shutdown().await;
}

#[tokio::test]
async fn sim_and_subscriber_listings_and_unknown_ids() {
    let (server, api, dev) = started().await;
    let other_sim = device(&api).await;
    let t = base_time();
    seed(&server, &dev, &[(t, "a"), (t + 1, "b")]).await;
    seed(&server, &other_sim, &[(t, "x")]).await;

    for url in [
        format!("/v1/sims/{}/data", dev.sim_id),
        format!("/v1/data/Sim/{}", dev.sim_id),
        format!("/v1/subscribers/{}/data", dev.imsi),
    ] {
        let (_, list) = entries(&api, &url).await;
        assert_eq!(values(&list), ["b", "a"], "{url}");
        // Entries are returned as stored, under the primary IMSI.
        assert!(list
            .iter()
            .all(|e| e["resourceType"] == "Subscriber" && e["resourceId"] == dev.imsi.as_str()));
    }
    // Unknown resources, and the valid types that never have data here, are empty.
    for url in [
        "/v1/subscribers/999999999999999/data".to_string(),
        "/v1/data/Subscriber/999999999999999".to_string(),
        "/v1/data/Sim/8900000000000000000".to_string(),
        format!("/v1/data/LoraDevice/{}", dev.imsi),
        format!("/v1/data/Device/{}", dev.sim_id),
        format!("/v1/data/SoraCam/{}", dev.imsi),
        format!("/v1/data/SigfoxDevice/{}", dev.imsi),
    ] {
        let (_, list) = entries(&api, &url).await;
        assert!(list.is_empty(), "{url}");
    }
    // getDataFromSim answers like getSim for an unknown SIM.
    let (status, body) = api.get("/v1/sims/8900000000000000000/data").await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// One entry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gets_and_deletes_one_entry() {
    let (server, api, dev) = started().await;
    let t = base_time();
    seed(&server, &dev, &[(t, "a"), (t + 1, "b1"), (t + 1, "b2")]).await;
    let one = format!("/v1/data/Subscriber/{}/{}", dev.imsi, t + 1);

    let (status, body) = api.get(&one).await;
    expect_status(status, &body, StatusCode::OK);
    support::conformance::assert_conforms_strict("DataEntry", &body);
    assert_eq!(
        values(std::slice::from_ref(&body)),
        ["b1"],
        "the first at that ms"
    );
    assert_eq!(body["time"], t + 1);
    let (status, by_sim) = api
        .get(&format!("/v1/data/Sim/{}/{}", dev.sim_id, t + 1))
        .await;
    expect_status(status, &by_sim, StatusCode::OK);
    assert_eq!(by_sim, body);

    let (status, body) = api.delete(&one).await;
    expect_status(status, &body, StatusCode::NO_CONTENT);
    let (status, body) = api.get(&one).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = api.delete(&one).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (_, list) = entries(&api, &format!("/v1/data/Subscriber/{}", dev.imsi)).await;
    assert_eq!(
        values(&list),
        ["a"],
        "both entries of that ms went, the other stays"
    );

    // Deleting by SIM ID; afterwards the resource is no longer listed.
    let (status, body) = api
        .delete(&format!("/v1/data/Sim/{}/{t}", dev.sim_id))
        .await;
    expect_status(status, &body, StatusCode::NO_CONTENT);
    let (status, body) = api.get("/v1/data/resources").await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
    for url in [
        format!("/v1/data/Subscriber/{}/{t}", dev.imsi),
        format!("/v1/data/LoraDevice/{}/{t}", dev.imsi),
    ] {
        let (status, body) = api.get(&url).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
    }
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lists_data_source_resources() {
    let (server, api, dev) = started().await;
    let second = device(&api).await;
    let _silent = device(&api).await;
    let t = base_time();
    seed(&server, &dev, &[(t + 5, "new"), (t, "old")]).await;
    seed(&server, &second, &[(t + 1, "x")]).await;

    let resources = |body: &Value| -> Vec<(String, String, i64)> {
        if let Err(e) = validate_array_of_strict("DataResourceMetadata", body) {
            panic!("{e}");
        }
        body.as_array()
            .expect("array")
            .iter()
            .map(|r| {
                (
                    text(r, "/resourceType").to_string(),
                    text(r, "/resourceId").to_string(),
                    r["lastModifiedTime"].as_i64().expect("lastModifiedTime"),
                )
            })
            .collect()
    };
    let mut expected = vec![
        ("Subscriber".to_string(), dev.imsi.clone(), t + 5),
        ("Subscriber".to_string(), second.imsi.clone(), t + 1),
    ];
    expected.sort();
    let (status, body) = api.get("/v1/data/resources").await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(resources(&body), expected);
    let (_, _, body) = api
        .get_with_headers("/v1/data/resources?resource_type=Subscriber")
        .await;
    assert_eq!(resources(&body), expected);
    let (_, _, body) = api
        .get_with_headers("/v1/data/resources?resource_type=Sim")
        .await;
    assert!(resources(&body).is_empty());

    // Paging one at a time, by key and by link.
    let (status, headers, body) = api.get_with_headers("/v1/data/resources?limit=1").await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(resources(&body), expected[..1]);
    let key = next_key(&headers).expect("next key");
    let link = link_next(&headers).expect("link");
    assert_eq!(
        link,
        format!(
            "/v1/data/resources?limit=1&last_evaluated_key={}",
            encode(&key)
        )
    );
    let (_, headers, body) = api.get_with_headers(&link).await;
    assert_eq!(resources(&body), expected[1..]);
    assert!(next_key(&headers).is_none());
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Isolation and bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn another_operator_sees_nothing() {
    let (server, api, dev) = started().await;
    let t = base_time();
    seed(&server, &dev, &[(t, "a")]).await;
    let other = Checked(server.other_operator().await);

    for url in [
        format!("/v1/data/Subscriber/{}", dev.imsi),
        format!("/v1/data/Sim/{}", dev.sim_id),
        format!("/v1/subscribers/{}/data", dev.imsi),
    ] {
        let (_, list) = entries(&other, &url).await;
        assert!(list.is_empty(), "{url}");
    }
    let (status, body) = other.get("/v1/data/resources").await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
    let (status, body) = other.get(&format!("/v1/sims/{}/data", dev.sim_id)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    for url in [
        format!("/v1/data/Subscriber/{}/{t}", dev.imsi),
        format!("/v1/data/Sim/{}/{t}", dev.sim_id),
    ] {
        let (status, body) = other.get(&url).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
        let (status, body) = other.delete(&url).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
    }
    let (_, list) = entries(&api, &format!("/v1/data/Subscriber/{}", dev.imsi)).await;
    assert_eq!(values(&list), ["a"], "the owner's entry is untouched");
    server.running.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let (server, api, dev) = started().await;
    let t = base_time();
    seed(&server, &dev, &[(t, "a"), (t + 1, "b")]).await;
    let listings = [
        format!("/v1/data/Subscriber/{}", dev.imsi),
        format!("/v1/data/Sim/{}", dev.sim_id),
        format!("/v1/sims/{}/data", dev.sim_id),
        format!("/v1/subscribers/{}/data", dev.imsi),
    ];
    let bad_queries = [
        "limit=0",
        "limit=1001",
        "limit=x",
        "limit=-1",
        "limit=",
        "sort=sideways",
        "sort=ASC",
        "sort=",
        "from=x",
        "from=",
        "to=1.5",
        "last_evaluated_key=nonsense",
        "last_evaluated_key=123",
        "last_evaluated_key=x_999",
        "last_evaluated_key=1_2_3_4",
        "last_evaluated_key=1_2_zero",
    ];
    for url in &listings {
        for query in bad_queries {
            let (status, body) = api.get(&format!("{url}?{query}")).await;
            assert_error(status, &body, StatusCode::BAD_REQUEST);
        }
    }
    // The official `limit` of listDataSourceResources is any integer: 0 and 1001 are clamped
    // (tests/api_spec_rules.rs); only a non-integer is refused.
    for query in [
        "limit=x",
        "limit=",
        "resource_type=",
        "resource_type=Bogus",
        "last_evaluated_key=nonsense",
        "last_evaluated_key=Bogus_1",
    ] {
        let (status, body) = api.get(&format!("/v1/data/resources?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    for url in [
        format!("/v1/data/Bogus/{}", dev.imsi),
        format!("/v1/data/subscriber/{}", dev.imsi),
        format!("/v1/data/Bogus/{}/{t}", dev.imsi),
        format!("/v1/data/Subscriber/{}/yesterday", dev.imsi),
        format!("/v1/data/Subscriber/{}/1.5", dev.imsi),
    ] {
        let (status, body) = api.get(&url).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    for url in [
        format!("/v1/data/Bogus/{}/{t}", dev.imsi),
        format!("/v1/data/Subscriber/{}/yesterday", dev.imsi),
    ] {
        let (status, body) = api.delete(&url).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    for url in &listings {
        let (_, list) = entries(&api, url).await;
        assert_eq!(values(&list), ["b", "a"], "{url}: nothing changed");
    }
    let (status, body) = api.get("/v1/data/resources").await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    server.running.shutdown().await;
}
