//! HTTPS integration tests of every SIM operation (create, read, list/search, Arc sessions and
//! credentials, lifecycle, groups, tags, session events, secondary virtual subscribers) against an
//! in-process arcd. Every 2xx JSON body is validated against the official SORACOM API schema; the
//! data plane's peer index is checked after each change that must reach it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use arcd::store::ActiveSession;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::conformance::{validate_schema, validate_schema_strict};
use support::paging::{link_next, next_key};
use support::server::{assert_error, read, TestServer};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

use support::checked::{conforms, expect_status, text, Checked};

/// `Sim` with undeclared properties rejected (catches misspelled field names).
#[track_caller]
fn strict_sim(body: &Value) {
    if let Err(e) = validate_schema_strict("Sim", body) {
        panic!("{e}");
    }
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Decoded length of a base64 key (0 when it is not base64).
fn key_len(key: &str) -> usize {
    STANDARD.decode(key).map(|b| b.len()).unwrap_or(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Waits until the wall clock (UNIX ms, arcd's clock too) is past `ms`, so that what arcd writes
/// next carries a later time than one the test recorded.
async fn wait_for_clock_past(ms: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while now_ms() <= ms {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock does not pass {ms}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn sim_id(sim: &Value) -> String {
    text(sim, "/simId").to_string()
}

/// The IMSI of a standalone virtual SIM (its profile's primary IMSI).
fn virtual_imsi(sim: &Value) -> String {
    let id = sim_id(sim);
    sim["profiles"][&id]["primaryImsi"]
        .as_str()
        .expect("primaryImsi")
        .to_string()
}

fn session_id(sim: &Value) -> String {
    text(sim, "/sessionStatus/sessionId").to_string()
}

fn client_ip(sim: &Value) -> Ipv4Addr {
    text(sim, "/arcSessionStatus/arcClientPeerIpAddress")
        .parse()
        .expect("client IP is IPv4")
}

fn peer(server: &TestServer, imsi: &str) -> Option<ActiveSession> {
    server.running.dataplane.engine.session(&imsi.into())
}

fn peer_by_key(server: &TestServer, key: &str) -> Option<ActiveSession> {
    server.running.dataplane.engine.session_by_public_key(key)
}

fn peer_by_ip(server: &TestServer, ip: Ipv4Addr) -> Option<ActiveSession> {
    server.running.dataplane.engine.session_by_client_ip(ip)
}

async fn get_sim(api: &Checked, id: &str) -> Value {
    let (status, body) = api.get(&format!("/v1/sims/{id}")).await;
    expect_status(status, &body, StatusCode::OK);
    conforms("get", "/sims/{sim_id}", status, &body);
    strict_sim(&body);
    body
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected an array: {list}"))
        .iter()
        .map(sim_id)
        .collect()
}

async fn session_events(api: &Checked, id: &str, query: &str) -> (HeaderMap, Vec<Value>) {
    let (status, headers, body) = api
        .get_with_headers(&format!("/v1/sims/{id}/events/sessions{query}"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("get", "/sims/{sim_id}/events/sessions", status, &body);
    (headers, body.as_array().expect("array").clone())
}

/// Registers one IoT SIM through the arcd extension and returns it (validated as a `Sim`).
async fn import_iot_sim(api: &Checked, iccid: &str, imsi: &str, plan: &str) -> Value {
    let msisdn = format!("8190{}", &imsi[imsi.len() - 7..]);
    let (status, body) = api
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": iccid, "imsi": imsi, "msisdn": msisdn, "subscription": plan}]),
        )
        .await;
    expect_status(status, &body, StatusCode::CREATED);
    let items = body.as_array().expect("array of Sim");
    assert_eq!(items.len(), 1, "{body}");
    let sim = items[0].clone();
    validate_schema("Sim", &sim).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sim["simId"], iccid);
    assert_eq!(sim["profiles"][iccid]["primaryImsi"], imsi);
    assert_eq!(
        sim["profiles"][iccid]["subscribers"][imsi]["subscription"],
        plan
    );
    assert_eq!(sim["status"], "active");
    sim
}

const ADD_ARC: &str = r#"{"subscription":"planArc01","type":"virtual"}"#;

fn add_arc_body() -> Value {
    serde_json::from_str(ADD_ARC).expect("literal")
}

// ---------------------------------------------------------------------------------------------
// createSim / getSim
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_sim_returns_luhn_iccid_key_pair_and_online_arc_session() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let before = now_ms();
    let (status, sim) = api
        .post(
            "/v1/sims",
            json!({"type": "virtual", "subscription": "planArc01"}),
        )
        .await;
    expect_status(status, &sim, StatusCode::CREATED);
    conforms("post", "/sims", status, &sim);
    strict_sim(&sim);

    let id = sim_id(&sim);
    assert_eq!(id.len(), 19, "{id}");
    assert!(all_digits(&id), "{id}");
    assert!(luhn_valid(&id), "ICCID {id} fails the Luhn check");
    assert_eq!(sim["operatorId"], api.operator_id);
    assert_eq!(sim["type"], "virtual");
    assert_eq!(sim["moduleType"], "virtual");
    assert_eq!(sim["status"], "active");
    assert_eq!(sim["speedClass"], "arc.standard");
    assert_eq!(sim["activeProfileId"], id);
    assert_eq!(sim["tags"], json!({"name": ""}));
    assert_eq!(sim["terminationEnabled"], false);
    let created = sim["createdTime"].as_i64().expect("createdTime");
    assert!(
        created >= before - 1000 && created <= now_ms() + 1000,
        "createdTime must be UNIX ms: {created}"
    );

    let profiles = sim["profiles"].as_object().expect("profiles");
    assert_eq!(profiles.len(), 1);
    let profile = &sim["profiles"][&id];
    assert_eq!(profile["iccid"], id);
    let private = text(profile, "/arcClientPeerPrivateKey");
    let public = text(profile, "/arcClientPeerPublicKey");
    assert_eq!(
        key_len(private),
        32,
        "private key must be base64 of 32 bytes"
    );
    assert_eq!(key_len(public), 32, "public key must be base64 of 32 bytes");
    assert_eq!(
        arcd::wgkey::public_from_private(private).as_deref(),
        Some(public),
        "the private key must belong to the public key"
    );
    let imsi = text(profile, "/primaryImsi");
    assert_eq!(imsi.len(), 15, "{imsi}");
    assert!(all_digits(imsi) && imsi.starts_with("99999"), "{imsi}");
    let subscriber = &profile["subscribers"][imsi];
    assert_eq!(subscriber["imsi"], imsi);
    assert_eq!(subscriber["subscription"], "planArc01");
    assert_eq!(subscriber["status"], "active");

    let arc = &sim["arcSessionStatus"];
    assert_eq!(arc["arcServerEndpoint"], "127.0.0.1:11010");
    assert_eq!(key_len(text(arc, "/arcServerPeerPublicKey")), 32);
    assert_eq!(arc["arcClientPeerPublicKey"], public);
    let ip = client_ip(&sim);
    assert!(
        "10.64.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .expect("net")
            .contains(&ip),
        "client IP {ip} must come from the rendezvous point's pool"
    );
    assert_eq!(arc["arcAllowedIPs"], json!(["100.127.0.0/16"]));
    assert_eq!(
        arc["placement"],
        json!({"infrastructureProvider": "aws", "region": "ap-northeast-1"})
    );
    assert!(arc["lastUpdatedAt"].as_i64().expect("lastUpdatedAt") >= created);
    assert!(arc.get("vpgId").is_none());

    let session = &sim["sessionStatus"];
    assert_eq!(session["online"], true);
    assert_eq!(session["imsi"], imsi);
    assert_eq!(session["ueIpAddress"], ip.to_string());
    let sid = session_id(&sim);
    assert!(!sid.is_empty());

    // The data plane knows the peer as soon as the 201 is out, by every index.
    let by_imsi = peer(&server, imsi).expect("peer by IMSI right after createSim");
    assert_eq!(by_imsi.sim_id, id);
    assert_eq!(by_imsi.primary_imsi, imsi);
    assert_eq!(by_imsi.operator_id, api.operator_id);
    assert_eq!(by_imsi.client_public_key, public);
    assert_eq!(by_imsi.client_ip, ip);
    assert_eq!(by_imsi.session_id, sid);
    assert_eq!(by_imsi.rp_id, "ap-northeast-1");
    assert_eq!(
        peer_by_key(&server, public).map(|p| p.imsi),
        Some(imsi.into())
    );
    assert_eq!(peer_by_ip(&server, ip).map(|p| p.imsi), Some(imsi.into()));
    server.running.shutdown().await;
}

#[tokio::test]
async fn create_sim_identifiers_are_unique_across_many_sims() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let mut iccids = HashSet::new();
    let mut imsis = HashSet::new();
    let mut ips = HashSet::new();
    let mut keys = HashSet::new();
    for _ in 0..30 {
        let sim = api.create_sim().await;
        let id = sim_id(&sim);
        assert!(id.len() == 19 && luhn_valid(&id), "{id}");
        let imsi = virtual_imsi(&sim);
        assert!(imsi.len() == 15 && imsi.starts_with("99999"), "{imsi}");
        assert!(iccids.insert(id.clone()), "ICCID {id} issued twice");
        assert!(imsis.insert(imsi.clone()), "IMSI {imsi} issued twice");
        assert!(ips.insert(client_ip(&sim)), "client IP issued twice");
        let key = text(&sim["profiles"][&id], "/arcClientPeerPublicKey").to_string();
        assert!(keys.insert(key), "key pair issued twice");
        assert!(peer(&server, &imsi).is_some());
    }
    assert_eq!(server.running.dataplane.engine.peer_count(), 30);
    server.running.shutdown().await;
}

#[tokio::test]
async fn create_sim_rejects_anything_but_virtual_plan_arc01() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    for body in [
        json!({"type": "uicc", "subscription": "planArc01"}),
        json!({"type": "virtual", "subscription": "plan-D"}),
        json!({"type": "virtual"}),
        json!([]),
    ] {
        let (status, error) = api.post("/v1/sims", body.clone()).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }
    let (status, error) = api.post_empty("/v1/sims").await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, list) = api.get("/v1/sims").await;
    expect_status(status, &list, StatusCode::OK);
    assert_eq!(
        list,
        json!([]),
        "a refused createSim must not create anything"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn get_sim_shows_the_same_sim_without_the_private_key() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let created = api.create_sim().await;
    let id = sim_id(&created);
    let got = get_sim(&api, &id).await;
    let profile = &got["profiles"][&id];
    assert!(
        profile.get("arcClientPeerPrivateKey").is_none(),
        "the private key is shown only once: {got}"
    );
    assert_eq!(
        profile["arcClientPeerPublicKey"],
        created["profiles"][&id]["arcClientPeerPublicKey"]
    );
    assert_eq!(got["arcSessionStatus"], created["arcSessionStatus"]);
    assert_eq!(got["sessionStatus"], created["sessionStatus"]);
    for field in [
        "simId",
        "operatorId",
        "status",
        "type",
        "tags",
        "createdTime",
    ] {
        assert_eq!(got[field], created[field], "{field}");
    }

    let (status, error) = api.get("/v1/sims/8942000000000999999").await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// listSims / searchSims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_sims_pages_with_next_key_visit_every_sim_once() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(sim_id(&api.create_sim().await));
    }
    created.sort();

    let (status, headers, all) = api.get_with_headers("/v1/sims").await;
    expect_status(status, &all, StatusCode::OK);
    conforms("get", "/sims", status, &all);
    assert_eq!(ids_of(&all), created, "listSims is in SIM ID order");
    assert!(
        next_key(&headers).is_none(),
        "one full listing has no next key"
    );
    for sim in all.as_array().unwrap() {
        assert!(
            sim["profiles"][text(sim, "/simId")]
                .get("arcClientPeerPrivateKey")
                .is_none(),
            "listSims must never show a private key"
        );
    }

    let mut seen = Vec::new();
    let mut key: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &key {
            None => "/v1/sims?limit=3".to_string(),
            Some(k) => format!("/v1/sims?limit=3&last_evaluated_key={k}"),
        };
        let (status, headers, page) = api.get_with_headers(&path).await;
        expect_status(status, &page, StatusCode::OK);
        conforms("get", "/sims", status, &page);
        let ids = ids_of(&page);
        assert!(!ids.is_empty() && ids.len() <= 3, "{page}");
        pages += 1;
        seen.extend(ids.iter().cloned());
        match next_key(&headers) {
            Some(next) => {
                assert_eq!(&next, ids.last().unwrap(), "next key is the last SIM ID");
                assert_eq!(ids.len(), 3, "only a full page has a next key");
                key = Some(next);
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "paging walks every SIM exactly once");

    // The `link` header's URL leads to the same pages.
    let mut by_link = Vec::new();
    let mut url = Some("/v1/sims?limit=3".to_string());
    while let Some(current) = url {
        let (status, headers, page) = api.get_with_headers(&current).await;
        expect_status(status, &page, StatusCode::OK);
        by_link.push(ids_of(&page));
        url = link_next(&headers);
        assert_eq!(url.is_some(), next_key(&headers).is_some());
        assert!(by_link.len() < 10, "paging does not end");
    }
    assert_eq!(
        by_link,
        vec![
            created[..3].to_vec(),
            created[3..6].to_vec(),
            created[6..].to_vec()
        ],
        "following `link` keeps the page size"
    );

    let (status, error) = api.get("/v1/sims?limit=x").await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);

    let other = Checked(server.other_operator().await);
    let (status, theirs) = other.get("/v1/sims").await;
    expect_status(status, &theirs, StatusCode::OK);
    assert_eq!(
        theirs,
        json!([]),
        "another operator sees none of these SIMs"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn search_sims_filters_by_every_supported_field() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let (status, group) = api
        .post("/v1/groups", json!({"tags": {"name": "search-group"}}))
        .await;
    expect_status(status, &group, StatusCode::CREATED);
    let group_id = text(&group, "/groupId").to_string();

    let mut sims = Vec::new();
    for (name, site) in [
        ("Alpha-Meter", "tokyo"),
        ("beta-meter", "osaka"),
        ("gamma-gauge", "nagoya"),
        ("epsilon-gauge", "sapporo"),
    ] {
        let sim = api.create_sim().await;
        let id = sim_id(&sim);
        let (status, body) = api
            .put(
                &format!("/v1/sims/{id}/tags"),
                json!([{"tagName": "name", "tagValue": name}, {"tagName": "site", "tagValue": site}]),
            )
            .await;
        expect_status(status, &body, StatusCode::OK);
        sims.push(sim);
    }
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| sim_id(&sims[i]));
    let c_imsi = virtual_imsi(&sims[2]);
    let (status, body) = api
        .post(
            &format!("/v1/sims/{a}/set_group"),
            json!({"groupId": group_id}),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    for path in [
        format!("/v1/sims/{d}/enable_termination"),
        format!("/v1/sims/{d}/terminate"),
    ] {
        let (status, body) = api.post_empty(&path).await;
        expect_status(status, &body, StatusCode::OK);
    }
    let iot = import_iot_sim(&api, "8981100000000000017", "440101234567890", "plan-D").await;
    let e = sim_id(&iot);
    let (status, body) = api
        .put(
            &format!("/v1/sims/{e}/tags"),
            json!([{"tagName": "name", "tagValue": "delta-meter"}]),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let cases: Vec<(String, Vec<String>)> = vec![
        ("name=meter".into(), vec![a.clone(), b.clone(), e.clone()]),
        ("name=METER".into(), vec![a.clone(), b.clone(), e.clone()]),
        ("name=alpha".into(), vec![a.clone()]),
        (format!("sim_id={}", &c[c.len() - 4..]), vec![c.clone()]),
        (
            format!("sim_id={}", &c[..6]),
            vec![a.clone(), b.clone(), c.clone(), d.clone()],
        ),
        (format!("imsi={c_imsi}"), vec![c.clone()]),
        ("imsi=44010123".into(), vec![e.clone()]),
        ("status=terminated".into(), vec![d.clone()]),
        (
            "status=active".into(),
            vec![a.clone(), b.clone(), c.clone(), e.clone()],
        ),
        ("tag=tokyo".into(), vec![a.clone()]),
        ("tag=saka".into(), vec![b.clone()]),
        (format!("group_id={group_id}"), vec![a.clone()]),
        (
            "subscription=planArc01".into(),
            vec![a.clone(), b.clone(), c.clone(), d.clone()],
        ),
        ("subscription=plan-D".into(), vec![e.clone()]),
        (
            "module_type=virtual".into(),
            vec![a.clone(), b.clone(), c.clone(), d.clone()],
        ),
        (
            "session_status=ONLINE".into(),
            vec![a.clone(), b.clone(), c.clone()],
        ),
        ("session_status=OFFLINE".into(), vec![d.clone(), e.clone()]),
        ("name=gauge&status=active".into(), vec![c.clone()]),
        ("name=alpha&tag=osaka".into(), vec![]),
        (
            "name=alpha&tag=osaka&search_type=or".into(),
            vec![a.clone(), b.clone()],
        ),
        ("name=alpha,beta".into(), vec![a.clone(), b.clone()]),
        ("name=alpha&name=gamma".into(), vec![a.clone(), c.clone()]),
        ("name=nothing-like-this".into(), vec![]),
        (format!("iccid={}", &e[e.len() - 5..]), vec![e.clone()]),
        ("group=SEARCH-gr".into(), vec![a.clone()]),
        ("serial_number=12".into(), vec![]),
        ("bundles=X3".into(), vec![]),
    ];
    for (query, expected) in cases {
        let (status, found) = api.get(&format!("/v1/query/sims?{query}")).await;
        expect_status(status, &found, StatusCode::OK);
        conforms("get", "/query/sims", status, &found);
        assert_eq!(ids_of(&found), sorted(expected), "searchSims ?{query}");
    }

    // limit + x-soracom-next-key
    let (status, headers, page) = api
        .get_with_headers("/v1/query/sims?module_type=virtual&limit=3")
        .await;
    expect_status(status, &page, StatusCode::OK);
    conforms("get", "/query/sims", status, &page);
    assert_eq!(ids_of(&page), vec![a.clone(), b.clone(), c.clone()]);
    let key = next_key(&headers).expect("a full page has a next key");
    assert_eq!(key, c);
    let (status, headers, page) = api
        .get_with_headers(&format!(
            "/v1/query/sims?module_type=virtual&limit=3&last_evaluated_key={key}"
        ))
        .await;
    expect_status(status, &page, StatusCode::OK);
    assert_eq!(ids_of(&page), vec![d.clone()]);
    assert!(next_key(&headers).is_none());
    let (_, headers, _) = api
        .get_with_headers("/v1/query/sims?module_type=virtual&limit=3")
        .await;
    let url = link_next(&headers).expect("link to the next page");
    let (status, _, page) = api.get_with_headers(&url).await;
    expect_status(status, &page, StatusCode::OK);
    assert_eq!(
        ids_of(&page),
        vec![d.clone()],
        "the `link` URL keeps the search filters ({url})"
    );

    for bad in [
        "name=a",
        "search_type=xor",
        "session_status=MAYBE",
        "limit=101",
    ] {
        let (status, error) = api.get(&format!("/v1/query/sims?{bad}")).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }

    let other = Checked(server.other_operator().await);
    let (status, theirs) = other.get("/v1/query/sims?name=meter").await;
    expect_status(status, &theirs, StatusCode::OK);
    assert_eq!(theirs, json!([]));
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// createArcSession / delete_session
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_arc_session_recreates_the_session_each_time() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let path = format!("/v1/sims/{id}/sessions/arc");
    let mut previous_session = session_id(&sim);
    let mut previous_updated = sim["arcSessionStatus"]["lastUpdatedAt"].as_i64().unwrap();

    for _ in 0..2 {
        wait_for_clock_past(previous_updated).await;
        let (status, body) = api.post(&path, json!({})).await;
        expect_status(status, &body, StatusCode::OK);
        conforms("post", "/sims/{sim_id}/sessions/arc", status, &body);
        validate_schema_strict("ArcSessionCreateResponse", &body).unwrap_or_else(|e| panic!("{e}"));
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "arcAllowedIPs",
                "arcClientPeerIpAddress",
                "arcClientPeerPublicKey",
                "arcServerEndpoint",
                "arcServerPeerPublicKey"
            ],
            "exactly the five arc* fields, never a private key"
        );
        let arc = &sim["arcSessionStatus"];
        for field in [
            "arcServerEndpoint",
            "arcServerPeerPublicKey",
            "arcClientPeerPublicKey",
            "arcClientPeerIpAddress",
            "arcAllowedIPs",
        ] {
            assert_eq!(body[field], arc[field], "{field}");
        }

        let got = get_sim(&api, &id).await;
        let new_session = session_id(&got);
        assert_ne!(new_session, previous_session, "a new session id");
        let updated = got["arcSessionStatus"]["lastUpdatedAt"].as_i64().unwrap();
        assert!(updated > previous_updated, "lastUpdatedAt changes");
        assert_eq!(got["sessionStatus"]["online"], true);
        let p = peer(&server, &imsi).expect("peer");
        assert_eq!(
            p.session_id, new_session,
            "the data plane has the new session"
        );

        let (_, events) = session_events(&api, &id, "").await;
        assert_eq!(events[0]["event"], "Created");
        assert_eq!(events[0]["sessionId"], new_session);
        assert_eq!(events[1]["event"], "Deleted");
        assert_eq!(events[1]["sessionId"], previous_session);
        previous_session = new_session;
        previous_updated = updated;
    }

    // The official API requires the body (`{}`): none at all, or `null`, is a 400.
    let (status, error) = api.post_empty(&path).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api.post(&path, json!(null)).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api.post(&path, json!({"force": true})).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert_eq!(
        session_id(&get_sim(&api, &id).await),
        previous_session,
        "a refused request changes nothing"
    );
    let (status, error) = api
        .post("/v1/sims/8942000000000999999/sessions/arc", json!({}))
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    server.running.shutdown().await;
}

#[tokio::test]
async fn delete_session_replaces_the_session_and_records_events() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let old_session = session_id(&sim);
    let old_updated = sim["sessionStatus"]["lastUpdatedAt"].as_i64().unwrap();
    wait_for_clock_past(old_updated).await;

    let (status, body) = api
        .post_empty(&format!("/v1/sims/{id}/delete_session"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/delete_session", status, &body);
    strict_sim(&body);
    assert_eq!(body["simId"], id);
    let new_session = session_id(&body);
    assert_ne!(new_session, old_session);
    assert_eq!(body["sessionStatus"]["online"], true);
    assert!(body["sessionStatus"]["lastUpdatedAt"].as_i64().unwrap() > old_updated);
    assert_eq!(
        body["arcSessionStatus"]["arcClientPeerIpAddress"],
        sim["arcSessionStatus"]["arcClientPeerIpAddress"],
        "the client keeps its address"
    );
    assert!(body["profiles"][&id]
        .get("arcClientPeerPrivateKey")
        .is_none());
    assert_eq!(peer(&server, &imsi).unwrap().session_id, new_session);

    let (_, events) = session_events(&api, &id, "").await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| (text(e, "/event").into(), text(e, "/sessionId").into()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Created".to_string(), new_session.clone()),
            ("Deleted".to_string(), old_session.clone()),
            ("Created".to_string(), old_session.clone()),
        ]
    );

    for path in ["enable_termination", "terminate"] {
        let (status, body) = api.post_empty(&format!("/v1/sims/{id}/{path}")).await;
        expect_status(status, &body, StatusCode::OK);
    }
    let (status, error) = api
        .post_empty(&format!("/v1/sims/{id}/delete_session"))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Credentials (renew / attach / remove)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn renew_credentials_with_client_key_swaps_the_peer_key() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let old_key = text(&sim["profiles"][&id], "/arcClientPeerPublicKey").to_string();
    let old_session = session_id(&sim);
    let device = arcd::wgkey::generate();

    let (status, body) = api
        .put(
            &format!("/v1/sims/{id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": device.public_key}),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("put", "/sims/{sim_id}/credentials/arc", status, &body);
    assert_eq!(
        body,
        json!({"arcClientPeerPublicKey": device.public_key}),
        "the device's own key and no private key"
    );

    let p = peer(&server, &imsi).expect("peer");
    assert_eq!(p.client_public_key, device.public_key);
    assert_ne!(p.session_id, old_session, "the session is re-initialised");
    assert!(
        peer_by_key(&server, &old_key).is_none(),
        "the old key must stop working at once"
    );
    assert_eq!(peer_by_key(&server, &device.public_key).unwrap().imsi, imsi);

    let got = get_sim(&api, &id).await;
    assert_eq!(
        got["profiles"][&id]["arcClientPeerPublicKey"],
        device.public_key
    );
    assert_eq!(
        got["arcSessionStatus"]["arcClientPeerPublicKey"],
        device.public_key
    );
    assert!(got["profiles"][&id]
        .get("arcClientPeerPrivateKey")
        .is_none());
    assert_eq!(session_id(&got), p.session_id);
    server.running.shutdown().await;
}

#[tokio::test]
async fn renew_credentials_without_key_returns_a_server_made_pair() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let path = format!("/v1/sims/{id}/credentials/arc");
    let mut old_key = text(&sim["profiles"][&id], "/arcClientPeerPublicKey").to_string();

    // The official API requires the body: without one arcd answers 400 and keeps the key.
    let response = api.request(Method::PUT, &path).send().await.unwrap();
    let (status, _, body) = read(response).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    assert_eq!(peer(&server, &imsi).unwrap().client_public_key, old_key);

    for _ in 0..2 {
        let (status, body) = api.put(&path, json!({})).await;
        expect_status(status, &body, StatusCode::OK);
        conforms("put", "/sims/{sim_id}/credentials/arc", status, &body);
        let private = text(&body, "/arcClientPeerPrivateKey");
        let public = text(&body, "/arcClientPeerPublicKey");
        assert_eq!(key_len(private), 32);
        assert_eq!(
            arcd::wgkey::public_from_private(private).as_deref(),
            Some(public),
            "the private key derives the public key"
        );
        assert_ne!(public, old_key, "a fresh pair");
        assert_eq!(peer(&server, &imsi).unwrap().client_public_key, public);
        assert!(peer_by_key(&server, &old_key).is_none());
        let got = get_sim(&api, &id).await;
        assert_eq!(got["arcSessionStatus"]["arcClientPeerPublicKey"], public);
        assert!(got["profiles"][&id]
            .get("arcClientPeerPrivateKey")
            .is_none());
        old_key = public.to_string();
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn renew_credentials_rejects_invalid_keys_and_changes_nothing() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let key = text(&sim["profiles"][&id], "/arcClientPeerPublicKey").to_string();
    let before = peer(&server, &imsi).expect("peer");
    for bad in [
        "not a key!",
        "AAAA",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let (status, error) = api
            .put(
                &format!("/v1/sims/{id}/credentials/arc"),
                json!({"arcClientPeerPublicKey": bad}),
            )
            .await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }
    let (status, error) = api
        .put(
            &format!("/v1/sims/{id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": 42}),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert_eq!(peer(&server, &imsi), Some(before));
    let got = get_sim(&api, &id).await;
    assert_eq!(got["arcSessionStatus"]["arcClientPeerPublicKey"], key);
    assert_eq!(session_id(&got), session_id(&sim));
    server.running.shutdown().await;
}

#[tokio::test]
async fn attach_credentials_deprecated_post_behaves_like_renew() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let device = arcd::wgkey::generate();
    let (status, body) = api
        .post(
            &format!("/v1/sims/{id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": device.public_key}),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/credentials/arc", status, &body);
    assert_eq!(body, json!({"arcClientPeerPublicKey": device.public_key}));
    assert_eq!(
        peer(&server, &imsi).unwrap().client_public_key,
        device.public_key
    );
    let got = get_sim(&api, &id).await;
    assert_eq!(
        got["arcSessionStatus"]["arcClientPeerPublicKey"],
        device.public_key
    );

    let (status, body) = api
        .post(&format!("/v1/sims/{id}/credentials/arc"), json!({}))
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/credentials/arc", status, &body);
    let public = text(&body, "/arcClientPeerPublicKey");
    assert_eq!(
        arcd::wgkey::public_from_private(text(&body, "/arcClientPeerPrivateKey")).as_deref(),
        Some(public)
    );
    assert_eq!(peer(&server, &imsi).unwrap().client_public_key, public);
    server.running.shutdown().await;
}

#[tokio::test]
async fn remove_credentials_drops_the_peer_until_credentials_are_renewed() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let ip = client_ip(&sim);
    let old_key = text(&sim["profiles"][&id], "/arcClientPeerPublicKey").to_string();
    let path = format!("/v1/sims/{id}/credentials/arc");

    let (status, body) = api.delete(&path).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null(), "204 has no body: {body}");
    assert!(
        peer(&server, &imsi).is_none(),
        "peer removed from the data plane"
    );
    assert!(peer_by_key(&server, &old_key).is_none());
    assert!(peer_by_ip(&server, ip).is_none());

    let got = get_sim(&api, &id).await;
    assert!(got.get("arcSessionStatus").is_none(), "{got}");
    assert_eq!(got["sessionStatus"]["online"], false);
    assert!(got["profiles"][&id].get("arcClientPeerPublicKey").is_none());
    assert_eq!(got["status"], "active");

    let (status, error) = api
        .post(&format!("/v1/sims/{id}/sessions/arc"), json!({}))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert!(
        text(&error, "/message").contains("credentials"),
        "400 says Arc credentials are missing: {error}"
    );
    let (status, error) = api
        .post_empty(&format!("/v1/sims/{id}/delete_session"))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert!(peer(&server, &imsi).is_none());

    let device = arcd::wgkey::generate();
    let (status, body) = api
        .put(&path, json!({"arcClientPeerPublicKey": device.public_key}))
        .await;
    expect_status(status, &body, StatusCode::OK);
    let p = peer(&server, &imsi).expect("PUT restores the peer");
    assert_eq!(p.client_public_key, device.public_key);
    assert_eq!(p.client_ip, ip, "the client address was kept");
    let got = get_sim(&api, &id).await;
    assert_eq!(got["sessionStatus"]["online"], true);
    assert_eq!(
        got["arcSessionStatus"]["arcClientPeerPublicKey"],
        device.public_key
    );
    assert_eq!(session_id(&got), p.session_id);
    let (status, body) = api
        .post(&format!("/v1/sims/{id}/sessions/arc"), json!({}))
        .await;
    expect_status(status, &body, StatusCode::OK);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Termination and status changes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn terminate_needs_protection_lifted_and_removes_the_peer() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let ip = client_ip(&sim);
    let key = text(&sim["profiles"][&id], "/arcClientPeerPublicKey").to_string();

    let (status, error) = api.post_empty(&format!("/v1/sims/{id}/terminate")).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let got = get_sim(&api, &id).await;
    assert_eq!(
        got["status"], "active",
        "a refused terminate changes nothing"
    );
    assert_eq!(got["sessionStatus"]["online"], true);
    assert_eq!(session_id(&got), session_id(&sim));
    assert!(peer(&server, &imsi).is_some());

    let (status, body) = api
        .post_empty(&format!("/v1/sims/{id}/enable_termination"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/enable_termination", status, &body);
    strict_sim(&body);
    assert_eq!(body["terminationEnabled"], true);
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{id}/disable_termination"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/disable_termination", status, &body);
    assert_eq!(body["terminationEnabled"], false);
    assert_eq!(get_sim(&api, &id).await["terminationEnabled"], false);
    let (status, error) = api.post_empty(&format!("/v1/sims/{id}/terminate")).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{id}/enable_termination"))
        .await;
    expect_status(status, &body, StatusCode::OK);

    let (status, body) = api.post_empty(&format!("/v1/sims/{id}/terminate")).await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/terminate", status, &body);
    strict_sim(&body);
    assert_eq!(body["status"], "terminated");
    assert!(body.get("arcSessionStatus").is_none(), "{body}");
    assert_eq!(body["sessionStatus"]["online"], false);
    assert_eq!(
        body["profiles"][&id]["subscribers"][&imsi]["status"],
        "terminated"
    );
    assert!(peer(&server, &imsi).is_none(), "peer removed");
    assert!(peer_by_key(&server, &key).is_none());
    assert!(peer_by_ip(&server, ip).is_none());
    let (_, events) = session_events(&api, &id, "").await;
    assert_eq!(events[0]["event"], "Deleted");
    assert_eq!(events[0]["sessionId"], session_id(&sim));

    let got = get_sim(&api, &id).await;
    assert_eq!(got["status"], "terminated", "the record is kept");
    let (status, error) = api.post_empty(&format!("/v1/sims/{id}/terminate")).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .post(&format!("/v1/sims/{id}/sessions/arc"), json!({}))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .put(&format!("/v1/sims/{id}/credentials/arc"), json!({}))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert!(peer(&server, &imsi).is_none());

    // Identifiers and the quarantined address are never handed out again.
    let next = api.create_sim().await;
    assert_ne!(sim_id(&next), id);
    assert_ne!(virtual_imsi(&next), imsi);
    assert_ne!(client_ip(&next), ip);
    server.running.shutdown().await;
}

#[tokio::test]
async fn status_changes_are_refused_on_virtual_sims() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    for action in ["activate", "deactivate", "suspend"] {
        let (status, error) = api.post_empty(&format!("/v1/sims/{id}/{action}")).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }
    let got = get_sim(&api, &id).await;
    assert_eq!(got["status"], "active");
    assert_eq!(got["sessionStatus"]["online"], true);
    server.running.shutdown().await;
}

#[tokio::test]
async fn status_changes_apply_to_imported_iot_sims() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let iot = import_iot_sim(&api, "8981100000000000025", "440101234567891", "plan-D").await;
    let id = sim_id(&iot);
    assert!(iot.get("arcSessionStatus").is_none());
    assert_eq!(iot["sessionStatus"]["online"], false);
    assert_ne!(iot["type"], "virtual");

    for (action, expected) in [
        ("deactivate", "inactive"),
        ("suspend", "suspended"),
        ("activate", "active"),
    ] {
        let (status, body) = api.post_empty(&format!("/v1/sims/{id}/{action}")).await;
        expect_status(status, &body, StatusCode::OK);
        conforms("post", &format!("/sims/{{sim_id}}/{action}"), status, &body);
        strict_sim(&body);
        assert_eq!(body["status"], expected, "{action}");
        assert_eq!(get_sim(&api, &id).await["status"], expected);
    }
    let (status, error) = api
        .post_empty("/v1/sims/8981100000000999999/activate")
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);

    // Import refuses duplicates and virtual-range IMSIs, all or nothing.
    for items in [
        json!([{"iccid": id, "imsi": "440101234567999", "subscription": "plan-D"}]),
        json!([{"iccid": "8981100000000000033", "imsi": "999990000000123", "subscription": "plan-D"}]),
        json!([
            {"iccid": "8981100000000000041", "imsi": "440101234567001", "subscription": "plan-D"},
            {"iccid": "8981100000000000041", "imsi": "440101234567002", "subscription": "plan-D"}
        ]),
    ] {
        let (status, error) = api.post("/v1/arcd/iot_sims", items).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }
    let (status, list) = api.get("/v1/sims").await;
    expect_status(status, &list, StatusCode::OK);
    assert_eq!(ids_of(&list), vec![id]);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Groups and tags on SIMs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn set_and_unset_group_move_the_sim() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    assert!(sim.get("groupId").is_none());
    let (status, group) = api
        .post("/v1/groups", json!({"tags": {"name": "fleet"}}))
        .await;
    expect_status(status, &group, StatusCode::CREATED);
    let group_id = text(&group, "/groupId").to_string();

    let (status, body) = api
        .post(
            &format!("/v1/sims/{id}/set_group"),
            json!({"groupId": group_id}),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/set_group", status, &body);
    strict_sim(&body);
    assert_eq!(body["groupId"], group_id);
    assert_eq!(get_sim(&api, &id).await["groupId"], group_id);
    assert_eq!(
        peer(&server, &imsi)
            .unwrap()
            .group_id
            .as_ref()
            .map(|g| g.as_str()),
        Some(group_id.as_str()),
        "the data plane learns the group at once"
    );

    let (status, error) = api
        .post(
            &format!("/v1/sims/{id}/set_group"),
            json!({"groupId": "00000000-0000-0000-0000-000000000000"}),
        )
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = api.post_empty(&format!("/v1/sims/{id}/set_group")).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert_eq!(get_sim(&api, &id).await["groupId"], group_id);

    let (status, body) = api.post_empty(&format!("/v1/sims/{id}/unset_group")).await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/sims/{sim_id}/unset_group", status, &body);
    strict_sim(&body);
    assert!(body.get("groupId").is_none(), "{body}");
    assert!(get_sim(&api, &id).await.get("groupId").is_none());
    assert_eq!(peer(&server, &imsi).unwrap().group_id, None);
    server.running.shutdown().await;
}

#[tokio::test]
async fn put_and_delete_sim_tags() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let tags_path = format!("/v1/sims/{id}/tags");

    let (status, body) = api
        .put(
            &tags_path,
            json!([
                {"tagName": "name", "tagValue": "Kitchen sensor"},
                {"tagName": "site", "tagValue": "tokyo"},
                {"tagName": "room number", "tagValue": "101"}
            ]),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("put", "/sims/{sim_id}/tags", status, &body);
    strict_sim(&body);
    assert_eq!(
        body["tags"],
        json!({"name": "Kitchen sensor", "site": "tokyo", "room number": "101"})
    );

    let (status, body) = api
        .put(
            &tags_path,
            json!([{"tagName": "site", "tagValue": "osaka"}]),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(
        body["tags"],
        json!({"name": "Kitchen sensor", "site": "osaka", "room number": "101"}),
        "put overwrites one tag and keeps the others"
    );

    let (status, body) = api.delete(&format!("{tags_path}/room%20number")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null());
    let (status, body) = api.delete(&format!("{tags_path}/name")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let got = get_sim(&api, &id).await;
    assert_eq!(
        got["tags"],
        json!({"name": "", "site": "osaka"}),
        "name is always present, empty when unset"
    );

    let (status, error) = api.delete(&format!("{tags_path}/room%20number")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = api.delete(&format!("{tags_path}/no-such-tag")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = api
        .put(&tags_path, json!([{"tagName": "", "tagValue": "x"}]))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .put(&tags_path, json!({"tagName": "site", "tagValue": "x"}))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .put(
            "/v1/sims/8942000000000999999/tags",
            json!([{"tagName": "site", "tagValue": "x"}]),
        )
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    assert_eq!(
        get_sim(&api, &id).await["tags"],
        json!({"name": "", "site": "osaka"})
    );
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// listSimSessionEvents
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_events_are_newest_first_paged_and_filtered_by_time() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let imsi = virtual_imsi(&sim);
    let first_session = session_id(&sim);

    let (headers, events) = session_events(&api, &id, "").await;
    assert!(next_key(&headers).is_none());
    assert_eq!(events.len(), 1, "{events:?}");
    let created = &events[0];
    assert_eq!(created["event"], "Created");
    assert_eq!(created["simId"], id);
    assert_eq!(created["imsi"], imsi);
    assert_eq!(created["operatorId"], api.operator_id);
    assert_eq!(created["sessionId"], first_session);
    assert_eq!(created["subscription"], "planArc01");
    assert_eq!(created["ueIpAddress"], client_ip(&sim).to_string());
    assert!(created["createdTime"].is_string());
    let created_at = created["time"].as_i64().expect("time");
    assert!((created_at - now_ms()).abs() < 60_000, "time is UNIX ms");

    wait_for_clock_past(created_at).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{id}/delete_session"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    let second_session = session_id(&body);

    let (_, events) = session_events(&api, &id, "").await;
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (text(e, "/event"), text(e, "/sessionId")))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Created", second_session.as_str()),
            ("Deleted", first_session.as_str()),
            ("Created", first_session.as_str()),
        ]
    );
    let times: Vec<i64> = events.iter().map(|e| e["time"].as_i64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let reset_at = times[0];
    assert!(reset_at > created_at);

    let (headers, page) = session_events(&api, &id, "?limit=2").await;
    assert_eq!(page, events[..2].to_vec());
    let key = next_key(&headers).expect("a full page has a next key");
    let (headers, rest) =
        session_events(&api, &id, &format!("?limit=2&last_evaluated_key={key}")).await;
    assert_eq!(rest, events[2..].to_vec());
    assert!(next_key(&headers).is_none());
    let (headers, first) = session_events(&api, &id, &format!("?from={created_at}&limit=1")).await;
    assert_eq!(first, events[..1].to_vec());
    let url = link_next(&headers).expect("link to the next page");
    let (status, _, second) = api.get_with_headers(&url).await;
    expect_status(status, &second, StatusCode::OK);
    assert_eq!(
        second.as_array().unwrap().to_vec(),
        events[1..2].to_vec(),
        "the `link` URL keeps limit and from ({url})"
    );

    let (_, recent) = session_events(&api, &id, &format!("?from={reset_at}")).await;
    assert_eq!(
        recent,
        events[..2].to_vec(),
        "from filters older events out"
    );
    let (_, early) = session_events(&api, &id, &format!("?to={created_at}")).await;
    assert_eq!(early, events[2..].to_vec(), "to filters newer events out");
    let (_, window) = session_events(
        &api,
        &id,
        &format!("?from={created_at}&to={}", reset_at - 1),
    )
    .await;
    assert_eq!(window, events[2..].to_vec());

    let (status, error) = api
        .get(&format!(
            "/v1/sims/{id}/events/sessions?last_evaluated_key=zz"
        ))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .get("/v1/sims/8942000000000999999/events/sessions")
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// addSubscription / terminateSubscriptionContainer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn add_subscription_gives_an_iot_sim_a_secondary_virtual_subscriber() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let iccid = "8981100000000000058";
    let iot_imsi = "440101234567892";
    import_iot_sim(&api, iccid, iot_imsi, "plan-D").await;

    let (status, profile) = api
        .post(
            &format!("/v1/sims/{iccid}/profiles/{iccid}/add_subscription"),
            add_arc_body(),
        )
        .await;
    expect_status(status, &profile, StatusCode::OK);
    conforms(
        "post",
        "/sims/{sim_id}/profiles/{iccid}/add_subscription",
        status,
        &profile,
    );
    validate_schema_strict("SimProfile", &profile).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(profile["iccid"], iccid);
    assert_eq!(
        profile["primaryImsi"], iot_imsi,
        "the IoT SIM's IMSI stays primary"
    );
    let subscribers = profile["subscribers"].as_object().expect("subscribers");
    assert_eq!(subscribers.len(), 2, "{profile}");
    assert_eq!(subscribers[iot_imsi]["subscription"], "plan-D");
    let (virtual_imsi, added) = subscribers
        .iter()
        .find(|(imsi, _)| imsi.as_str() != iot_imsi)
        .expect("the new subscriber");
    assert!(
        virtual_imsi.len() == 15 && virtual_imsi.starts_with("99999"),
        "{virtual_imsi}"
    );
    assert_eq!(added["subscription"], "planArc01");
    assert_eq!(added["status"], "active");
    let private = text(&profile, "/arcClientPeerPrivateKey");
    let public = text(&profile, "/arcClientPeerPublicKey");
    assert_eq!(
        arcd::wgkey::public_from_private(private).as_deref(),
        Some(public)
    );

    let got = get_sim(&api, iccid).await;
    assert!(
        got["profiles"][iccid]
            .get("arcClientPeerPrivateKey")
            .is_none(),
        "the private key is shown once"
    );
    assert_eq!(got["profiles"][iccid]["arcClientPeerPublicKey"], public);
    assert_eq!(got["arcSessionStatus"]["arcClientPeerPublicKey"], public);
    assert_eq!(got["sessionStatus"]["online"], true);
    assert_eq!(
        got["sessionStatus"]["imsi"], iot_imsi,
        "traffic is attributed to the primary IMSI"
    );
    assert_eq!(got["status"], "active");

    let p = peer(&server, virtual_imsi).expect("peer by the virtual IMSI");
    assert_eq!(p.primary_imsi, iot_imsi);
    assert_eq!(p.sim_id, iccid);
    assert_eq!(p.client_public_key, public);
    assert_eq!(p.client_ip, client_ip(&got));
    assert_eq!(p.session_id, session_id(&got));

    let (_, events) = session_events(&api, iccid, "").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "Created");
    assert_eq!(events[0]["imsi"], iot_imsi);

    // The secondary subscriber's session can be re-created like a standalone one.
    let (status, body) = api
        .post(&format!("/v1/sims/{iccid}/sessions/arc"), json!({}))
        .await;
    expect_status(status, &body, StatusCode::OK);
    assert_eq!(body["arcClientPeerPublicKey"], public);
    server.running.shutdown().await;
}

#[tokio::test]
async fn add_subscription_refusals_name_the_reason() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    for (n, plan) in ["planP1", "planX1", "planX2"].into_iter().enumerate() {
        let iccid = format!("898110000000000100{n}");
        import_iot_sim(&api, &iccid, &format!("44010123450000{n}"), plan).await;
        let (status, error) = api
            .post(
                &format!("/v1/sims/{iccid}/profiles/{iccid}/add_subscription"),
                add_arc_body(),
            )
            .await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
        assert!(
            text(&error, "/message").contains(plan),
            "the error names the plan {plan}: {error}"
        );
        let got = get_sim(&api, &iccid).await;
        assert_eq!(
            got["profiles"][&iccid]["subscribers"]
                .as_object()
                .unwrap()
                .len(),
            1
        );
        assert!(got.get("arcSessionStatus").is_none());
    }

    let iccid = "8981100000000000066";
    import_iot_sim(&api, iccid, "440101234567893", "plan01s").await;
    let path = format!("/v1/sims/{iccid}/profiles/{iccid}/add_subscription");
    for body in [
        json!({"subscription": "planX3", "type": "cellular"}),
        json!({"subscription": "planArc01", "type": "cellular"}),
        json!({"type": "virtual"}),
    ] {
        let (status, error) = api.post(&path, body).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }
    let (status, profile) = api.post(&path, add_arc_body()).await;
    expect_status(status, &profile, StatusCode::OK);
    let (status, error) = api.post(&path, add_arc_body()).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let got = get_sim(&api, iccid).await;
    assert_eq!(
        got["profiles"][iccid]["subscribers"]
            .as_object()
            .unwrap()
            .len(),
        2,
        "a second add creates nothing"
    );

    let (status, error) = api
        .post(
            &format!("/v1/sims/{iccid}/profiles/8981100000000000074/add_subscription"),
            add_arc_body(),
        )
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = api
        .post(
            "/v1/sims/8981100000000999999/profiles/8981100000000999999/add_subscription",
            add_arc_body(),
        )
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);

    let sim = api.create_sim().await;
    let id = sim_id(&sim);
    let (status, error) = api
        .post(
            &format!("/v1/sims/{id}/profiles/{id}/add_subscription"),
            add_arc_body(),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert_eq!(
        get_sim(&api, &id).await["profiles"][&id]["subscribers"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn terminate_subscription_container_ends_the_virtual_subscriber_only() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let iccid = "8981100000000000082";
    let iot_imsi = "440101234567894";
    import_iot_sim(&api, iccid, iot_imsi, "plan-K").await;
    let add_path = format!("/v1/sims/{iccid}/profiles/{iccid}/add_subscription");
    let (status, profile) = api.post(&add_path, add_arc_body()).await;
    expect_status(status, &profile, StatusCode::OK);
    let first_imsi = profile["subscribers"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.as_str() != iot_imsi)
        .unwrap()
        .clone();
    let ip = client_ip(&get_sim(&api, iccid).await);
    assert!(peer(&server, &first_imsi).is_some());

    let terminate =
        |imsi: &str| format!("/v1/sims/{iccid}/profiles/{iccid}/subscribers/{imsi}/terminate");
    let (status, error) = api.post_empty(&terminate(iot_imsi)).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api.post_empty(&terminate("999999999999999")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);

    let (status, body) = api.post_empty(&terminate(&first_imsi)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null());
    assert!(peer(&server, &first_imsi).is_none(), "peer removed");
    assert!(peer_by_ip(&server, ip).is_none());

    let got = get_sim(&api, iccid).await;
    assert_eq!(got["status"], "active", "the IoT SIM itself stays");
    assert_eq!(
        got["profiles"][iccid]["subscribers"][&first_imsi]["status"],
        "terminated"
    );
    assert_eq!(
        got["profiles"][iccid]["subscribers"][iot_imsi]["status"],
        "active"
    );
    assert!(got.get("arcSessionStatus").is_none(), "{got}");
    assert_eq!(got["sessionStatus"]["online"], false);
    let (_, events) = session_events(&api, iccid, "").await;
    assert_eq!(events[0]["event"], "Deleted");

    let (status, error) = api.post_empty(&terminate(&first_imsi)).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);

    let (status, profile) = api.post(&add_path, add_arc_body()).await;
    expect_status(status, &profile, StatusCode::OK);
    conforms(
        "post",
        "/sims/{sim_id}/profiles/{iccid}/add_subscription",
        status,
        &profile,
    );
    let second_imsi = profile["subscribers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, v)| k.as_str() != iot_imsi && v["status"] == "active")
        .map(|(k, _)| k.clone())
        .expect("a new active virtual subscriber");
    assert_ne!(second_imsi, first_imsi, "IMSIs are never reused");
    assert!(second_imsi.starts_with("99999"));
    let p = peer(&server, &second_imsi).expect("new peer");
    assert_eq!(p.primary_imsi, iot_imsi);
    assert_eq!(
        get_sim(&api, iccid).await["sessionStatus"]["imsi"],
        iot_imsi
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn one_import_call_takes_ten_thousand_iot_sims_and_no_more() {
    let server = TestServer::start().await;
    // Unchecked client: validating 10,000 answers against the schema only slows this test down;
    // the answer's shape is checked by the import tests above.
    let api = server.login().await;
    let items = |n: usize, first: usize| -> Value {
        Value::Array(
            (first..first + n)
                .map(|i| {
                    json!({
                        "iccid": format!("89811{i:014}"),
                        "imsi": format!("44010{i:010}"),
                        "msisdn": format!("8180{i:08}"),
                        "subscription": "plan-D"
                    })
                })
                .collect(),
        )
    };
    let too_many = items(10_001, 0);
    assert!(serde_json::to_vec(&too_many).expect("json").len() > 64 * 1024);
    let (status, error) = api.post("/v1/arcd/iot_sims", too_many).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);

    let (status, imported) = api.post("/v1/arcd/iot_sims", items(10_000, 0)).await;
    expect_status(status, &imported, StatusCode::CREATED);
    assert_eq!(imported.as_array().map(Vec::len), Some(10_000));
    let (status, page) = api.get("/v1/sims?limit=1").await;
    expect_status(status, &page, StatusCode::OK);
    server.running.shutdown().await;
}
