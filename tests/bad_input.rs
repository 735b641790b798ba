//! Bad input never changes anything: every case checks the documented status, the
//! `{"code","message"}` error body and that no row of the store (and no SIM as seen through
//! getSim) changed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use arcd::store::db::Backend;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::server::{assert_error, read, Api, TestServer};

/// Tables a request could write to.
const TABLES: [&str; 8] = [
    "sims",
    "subscribers",
    "arc_sessions",
    "session_events",
    "groups",
    "sim_tags",
    "group_configuration",
    "auth_keys",
];

/// Body limit of the API (64 KiB).
const LIMIT: usize = 64 * 1024;
/// The body limit of `POST /v1/arcd/iot_sims`.
const IMPORT_LIMIT: usize = 2 * 1024 * 1024;

async fn counts(server: &TestServer) -> Vec<(&'static str, i64)> {
    let store = server.running.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read_db(|db| {
                let mut out = Vec::new();
                for table in TABLES {
                    let n = db
                        .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                        .int(0)?;
                    out.push((table, n));
                }
                Ok(out)
            })
            .expect("count rows")
    })
    .await
    .expect("join")
}

/// Row counts plus the getSim bodies of the SIMs a case touches.
struct Snapshot {
    counts: Vec<(&'static str, i64)>,
    sims: Vec<(String, Value)>,
}

async fn snapshot(server: &TestServer, api: &Api, sim_ids: &[&str]) -> Snapshot {
    let mut sims = Vec::new();
    for id in sim_ids {
        let (status, body) = api.get(&format!("/v1/sims/{id}")).await;
        assert_eq!(status, StatusCode::OK, "getSim {id}: {body}");
        sims.push((id.to_string(), body));
    }
    Snapshot {
        counts: counts(server).await,
        sims,
    }
}

#[track_caller]
fn check_error(what: &str, status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{what}: unexpected status, body: {body}");
    assert_error(status, body, expected);
}

async fn assert_unchanged(server: &TestServer, api: &Api, before: &Snapshot, what: &str) {
    let after = counts(server).await;
    assert_eq!(before.counts, after, "{what}: the store changed");
    for (id, body) in &before.sims {
        let (status, now) = api.get(&format!("/v1/sims/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{what}: getSim {id}: {now}");
        assert_eq!(body, &now, "{what}: SIM {id} changed");
    }
}

/// Sends raw bytes with a Content-Type (or none).
async fn send_raw(
    api: &Api,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut builder = api.request(method, path).body(body);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    let response = builder.send().await.expect("request");
    let (status, headers, body) = read(response).await;
    if !body.is_null() {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "{path}: content-type {ct:?}"
        );
    }
    (status, body)
}

async fn send_json_bytes(
    api: &Api,
    method: Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    send_raw(api, method, path, Some("application/json"), body.to_vec()).await
}

/// An IoT SIM import item (19-digit ICCID, 15-digit IMSI outside the virtual range).
fn iot_item(n: u32, plan: &str) -> Value {
    json!({
        "iccid": format!("8981100000000{n:06}"),
        "imsi": format!("440100000{n:06}"),
        "msisdn": format!("8190000{n:05}"),
        "subscription": plan,
    })
}

async fn import(api: &Api, items: Value) -> (StatusCode, Value) {
    api.post("/v1/arcd/iot_sims", items).await
}

/// A server, a signed-in client and one SIM with a tag, in a group.
async fn setup() -> (TestServer, Api, String, String) {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let (status, group) = api.post("/v1/groups", json!({"tags": {"name": "g"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let group_id = group["groupId"].as_str().expect("groupId").to_string();
    let (status, body) = api
        .put(
            &format!("/v1/sims/{sim_id}/tags"),
            json!([{"tagName": "name", "tagValue": "one"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (server, api, sim_id, group_id)
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (server, api, sim_id, group_id) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let cases: Vec<(Method, String, &[u8])> = vec![
        (Method::POST, "/v1/sims".into(), br#"{"type": "virtual","#),
        (
            Method::POST,
            "/v1/sims".into(),
            br#"{"type": "virtual", "subscription": "planArc01"} x"#,
        ),
        (Method::POST, "/v1/sims".into(), b"\xff\xfe{}"),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/tags"),
            br#"[{"tagName":"#,
        ),
        (Method::POST, "/v1/groups".into(), b"{"),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/sessions/arc"),
            b"{,}",
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/set_group"),
            b"{'groupId': 'x'}",
        ),
        (
            Method::PUT,
            format!("/v1/groups/{group_id}/configuration/SoracomAir"),
            b"[{\"key\": \"a\", \"value\": }]",
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            b"nul",
        ),
        (Method::POST, "/v1/arcd/iot_sims".into(), b"[{]"),
        (Method::POST, "/v1/auth".into(), b"{\"authKeyId\""),
    ];
    for (method, path, body) in cases {
        let what = format!("{method} {path} {:?}", String::from_utf8_lossy(body));
        let (status, response) = send_json_bytes(&api, method, &path, body).await;
        check_error(&what, status, &response, StatusCode::BAD_REQUEST);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn wrong_types_are_400() {
    let (server, api, sim_id, group_id) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let cases: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/v1/sims".into(),
            json!({"type": 5, "subscription": "planArc01"}),
        ),
        (
            Method::POST,
            "/v1/sims".into(),
            json!({"type": "virtual", "subscription": null}),
        ),
        (
            Method::POST,
            "/v1/sims".into(),
            json!({"type": "virtual", "subscription": ["planArc01"]}),
        ),
        (
            Method::POST,
            "/v1/sims".into(),
            json!([{"type": "virtual", "subscription": "planArc01"}]),
        ),
        (Method::POST, "/v1/sims".into(), json!("virtual")),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/tags"),
            json!([{"tagName": "name", "tagValue": 5}]),
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/tags"),
            json!({"tagName": "name", "tagValue": "x"}),
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/tags"),
            json!([{"tagName": "", "tagValue": "x"}]),
        ),
        (Method::POST, "/v1/groups".into(), json!({"tags": ["a"]})),
        (
            Method::POST,
            "/v1/groups".into(),
            json!({"configuration": {"SoracomAir": 1}}),
        ),
        (
            Method::POST,
            "/v1/groups".into(),
            json!({"configuration": {"NoSuchNamespace": {}}}),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/set_group"),
            json!({"groupId": 5}),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/set_group"),
            json!({}),
        ),
        (
            Method::PUT,
            format!("/v1/groups/{group_id}/configuration/SoracomAir"),
            json!({"key": "a", "value": 1}),
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": 5}),
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": "not a key"}),
        ),
        (
            Method::POST,
            "/v1/arcd/iot_sims".into(),
            json!([{"iccid": 8981100000000000001u64, "imsi": "440100000000001", "subscription": "plan-D"}]),
        ),
        (Method::POST, "/v1/arcd/iot_sims".into(), json!([])),
        (
            Method::POST,
            "/v1/auth".into(),
            json!({"authKeyId": server.root.auth_key_id, "authKey": server.root.auth_key,
                   "tokenTimeoutSeconds": "60"}),
        ),
        (
            Method::POST,
            "/v1/auth".into(),
            json!({"authKeyId": server.root.auth_key_id, "authKey": server.root.auth_key,
                   "tokenTimeoutSeconds": 0}),
        ),
        (
            Method::POST,
            "/v1/auth".into(),
            json!({"authKeyId": server.root.auth_key_id, "authKey": server.root.auth_key,
                   "tokenTimeoutSeconds": 172_801}),
        ),
    ];
    for (method, path, body) in cases {
        let what = format!("{method} {path} {body}");
        let (status, response) = api.call(method, &path, Some(body)).await;
        check_error(&what, status, &response, StatusCode::BAD_REQUEST);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    // Control: the same calls with the right types do work.
    let (status, body) = api
        .put(
            &format!("/v1/sims/{sim_id}/tags"),
            json!([{"tagName": "name", "tagValue": "5"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tags"]["name"], "5");
    server.running.shutdown().await;
}

#[tokio::test]
async fn create_sim_only_virtual_plan_arc01() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    for body in [
        json!({"type": "virtual", "subscription": "plan-D"}),
        json!({"type": "euicc", "subscription": "planArc01"}),
        json!({"type": "uicc", "subscription": "plan01s"}),
        json!({"type": "virtual"}),
        json!({"subscription": "planArc01"}),
        json!({}),
    ] {
        let what = format!("createSim {body}");
        let (status, response) = api.post("/v1/sims", body).await;
        check_error(&what, status, &response, StatusCode::BAD_REQUEST);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    let (status, response) = api.post_empty("/v1/sims").await;
    check_error(
        "createSim without body",
        status,
        &response,
        StatusCode::BAD_REQUEST,
    );
    assert_unchanged(&server, &api, &before, "createSim without body").await;
    server.running.shutdown().await;
}

#[tokio::test]
async fn unknown_fields_only_refused_where_the_spec_says() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let path = format!("/v1/sims/{sim_id}/sessions/arc");
    let (status, body) = api.post(&path, json!({"x": 1})).await;
    check_error(
        "createArcSession {x:1}",
        status,
        &body,
        StatusCode::BAD_REQUEST,
    );
    assert_unchanged(&server, &api, &before, "createArcSession {x:1}").await;

    // `{}` is fine and does re-create the session.
    let (status, body) = api.post(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = counts(&server).await;
    let events = |c: &[(&str, i64)]| c.iter().find(|(t, _)| *t == "session_events").unwrap().1;
    assert!(
        events(&after) > events(&before.counts),
        "sessions were re-created"
    );

    // createSim has no additionalProperties:false: an extra field is accepted.
    let sims_before = counts(&server).await[0].1;
    let (status, body) = api
        .post(
            "/v1/sims",
            json!({"type": "virtual", "subscription": "planArc01", "x": 1, "speedClass": "s1.fast"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(counts(&server).await[0].1, sims_before + 1);
    server.running.shutdown().await;
}

/// `{"type":"virtual","subscription":"planArc01","pad":"xxx…"}` of exactly `len` bytes.
fn padded_create_sim(len: usize) -> Vec<u8> {
    let head = br#"{"type":"virtual","subscription":"planArc01","pad":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), len);
    serde_json::from_slice::<Value>(&body).expect("valid JSON");
    body
}

/// A JSON array of `len` bytes: `[` + items + whitespace + `]`.
fn padded_array(item: &Value, len: usize) -> Vec<u8> {
    let item = item.to_string();
    let mut body = b"[".to_vec();
    while body.len() + item.len() + 2 < len {
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.resize(len - 1, b' ');
    body.push(b']');
    assert_eq!(body.len(), len);
    serde_json::from_slice::<Value>(&body).expect("valid JSON");
    body
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let tags = format!("/v1/sims/{sim_id}/tags");
    let group = json!({"tags": {"k": "x".repeat(LIMIT)}})
        .to_string()
        .into_bytes();
    for len in [LIMIT + 1, 4 * LIMIT] {
        let cases: Vec<(Method, &str, Vec<u8>)> = vec![
            (Method::POST, "/v1/sims", padded_create_sim(len)),
            (
                Method::PUT,
                &tags,
                padded_array(&json!({"tagName": "name", "tagValue": "big"}), len),
            ),
            (Method::POST, "/v1/groups", group.clone()),
            // The import's own limit (room for 10,000 rows) is 32 times larger.
            (
                Method::POST,
                "/v1/arcd/iot_sims",
                padded_array(&iot_item(1, "plan-D"), len * IMPORT_LIMIT / LIMIT),
            ),
        ];
        for (method, path, body) in cases {
            let what = format!("{method} {path} with {} bytes", body.len());
            let (status, response) = send_json_bytes(&api, method, path, &body).await;
            check_error(&what, status, &response, StatusCode::PAYLOAD_TOO_LARGE);
            assert_unchanged(&server, &api, &before, &what).await;
        }
    }
    // Exactly 64 KiB is still accepted.
    let (status, body) =
        send_json_bytes(&api, Method::POST, "/v1/sims", &padded_create_sim(LIMIT)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send_json_bytes(
        &api,
        Method::PUT,
        &tags,
        &padded_array(&json!({"tagName": "name", "tagValue": "big"}), LIMIT),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.running.shutdown().await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let create = json!({"type": "virtual", "subscription": "planArc01"}).to_string();
    let tags = json!([{"tagName": "name", "tagValue": "two"}]).to_string();
    let tag_path = format!("/v1/sims/{sim_id}/tags");
    let cases: Vec<(Method, &str, Option<&str>, String)> = vec![
        (Method::POST, "/v1/sims", Some("text/plain"), create.clone()),
        (
            Method::POST,
            "/v1/sims",
            Some("application/x-www-form-urlencoded"),
            create.clone(),
        ),
        (Method::POST, "/v1/sims", None, create.clone()),
        (
            Method::PUT,
            &tag_path,
            Some("text/plain; charset=utf-8"),
            tags.clone(),
        ),
        (Method::POST, "/v1/groups", Some("text/plain"), "{}".into()),
        (
            Method::POST,
            "/v1/arcd/iot_sims",
            Some("text/csv"),
            json!([iot_item(1, "plan-D")]).to_string(),
        ),
    ];
    for (method, path, ct, body) in cases {
        let what = format!("{method} {path} as {ct:?}");
        let (status, response) = send_raw(&api, method, path, ct, body).await;
        check_error(&what, status, &response, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    // Control: the same body as application/json (any case, with parameters) works.
    let (status, body) = send_raw(
        &api,
        Method::POST,
        "/v1/sims",
        Some("Application/JSON; charset=utf-8"),
        create,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.running.shutdown().await;
}

#[tokio::test]
async fn unknown_resources_are_404() {
    let (server, api, sim_id, group_id) = setup().await;
    let (status, body) = import(&api, json!([iot_item(1, "plan-D")])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let iot_id = body[0]["simId"].as_str().expect("simId").to_string();
    let before = snapshot(&server, &api, &[&sim_id, &iot_id]).await;
    let missing_sim = "8942310000000000019";
    let missing_group = "00000000-0000-0000-0000-000000000000";
    let op = api.operator_id.clone();
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/sims/{missing_sim}"), None),
        (
            Method::PUT,
            format!("/v1/sims/{missing_sim}/tags"),
            Some(json!([{"tagName": "a", "tagValue": "b"}])),
        ),
        (
            Method::POST,
            format!("/v1/sims/{missing_sim}/sessions/arc"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/sims/{missing_sim}/delete_session"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/sims/{missing_sim}/enable_termination"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/sims/{missing_sim}/terminate"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/sims/{missing_sim}/events/sessions"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/sims/{missing_sim}/set_group"),
            Some(json!({"groupId": group_id})),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/set_group"),
            Some(json!({"groupId": missing_group})),
        ),
        (
            Method::DELETE,
            format!("/v1/sims/{sim_id}/tags/nosuchtag"),
            None,
        ),
        (Method::GET, format!("/v1/groups/{missing_group}"), None),
        (Method::DELETE, format!("/v1/groups/{missing_group}"), None),
        (
            Method::PUT,
            format!("/v1/groups/{missing_group}/configuration/SoracomAir"),
            Some(json!([{"key": "metadata", "value": {"enabled": true}}])),
        ),
        (
            Method::GET,
            format!("/v1/groups/{missing_group}/subscribers"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/sims/{iot_id}/profiles/{iot_id}/subscribers/999990000009999/terminate"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/sims/{iot_id}/profiles/8981100000000999999/add_subscription"),
            Some(json!({"subscription": "planArc01", "type": "virtual"})),
        ),
        (
            Method::POST,
            format!("/v1/sims/{missing_sim}/profiles/{missing_sim}/add_subscription"),
            Some(json!({"subscription": "planArc01", "type": "virtual"})),
        ),
        (
            Method::DELETE,
            format!("/v1/operators/{op}/auth_keys/keyId-00000000000000000000000000000000"),
            None,
        ),
        (
            Method::GET,
            "/v1/operators/OP0000000000/auth_keys".into(),
            None,
        ),
    ];
    for (method, path, body) in cases {
        let what = format!("{method} {path}");
        let (status, response) = api.call(method, &path, body).await;
        check_error(&what, status, &response, StatusCode::NOT_FOUND);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn other_operators_data_looks_like_missing_data() {
    let (server, mine, my_sim, _) = setup().await;
    let theirs = server.other_operator().await;
    let their_sim = theirs.create_sim().await["simId"]
        .as_str()
        .expect("simId")
        .to_string();
    let (status, group) = theirs.post("/v1/groups", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let their_group = group["groupId"].as_str().expect("groupId").to_string();
    let (status, key) = theirs
        .post_empty(&format!("/v1/operators/{}/auth_keys", theirs.operator_id))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let their_key = key["authKeyId"].as_str().expect("authKeyId").to_string();
    let (status, _) = theirs
        .put(
            &format!("/v1/sims/{their_sim}/tags"),
            json!([{"tagName": "owner", "tagValue": "them"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let missing_sim = "8942310000000000019";
    let missing_group = "00000000-0000-0000-0000-000000000000";
    let missing_key = "keyId-00000000000000000000000000000000";
    let my_op = mine.operator_id.clone();
    let their_op = theirs.operator_id.clone();
    let before = snapshot(&server, &mine, &[&my_sim]).await;
    let their_before = snapshot(&server, &theirs, &[&their_sim]).await;

    // (method, path with `{}` for the id, body, their id, an id that never existed)
    type Case<'a> = (Method, &'a str, Option<Value>, &'a str, &'a str);
    let set_my_group = format!("/v1/sims/{my_sim}/set_group");
    let cases: Vec<Case> = vec![
        (Method::GET, "/v1/sims/{}", None, &their_sim, missing_sim),
        (
            Method::PUT,
            "/v1/sims/{}/tags",
            Some(json!([{"tagName": "owner", "tagValue": "me"}])),
            &their_sim,
            missing_sim,
        ),
        (
            Method::DELETE,
            "/v1/sims/{}/tags/owner",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/sessions/arc",
            Some(json!({})),
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/delete_session",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::PUT,
            "/v1/sims/{}/credentials/arc",
            Some(json!({})),
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/enable_termination",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/terminate",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/unset_group",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::GET,
            "/v1/sims/{}/events/sessions",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/profiles/{}/add_subscription",
            Some(json!({"subscription": "planArc01", "type": "virtual"})),
            &their_sim,
            missing_sim,
        ),
        (
            Method::POST,
            "/v1/sims/{}/activate",
            None,
            &their_sim,
            missing_sim,
        ),
        (
            Method::GET,
            "/v1/groups/{}",
            None,
            &their_group,
            missing_group,
        ),
        (
            Method::DELETE,
            "/v1/groups/{}",
            None,
            &their_group,
            missing_group,
        ),
        (
            Method::GET,
            "/v1/groups/{}/subscribers",
            None,
            &their_group,
            missing_group,
        ),
        (
            Method::PUT,
            "/v1/groups/{}/configuration/SoracomAir",
            Some(json!([{"key": "metadata", "value": {"enabled": true}}])),
            &their_group,
            missing_group,
        ),
        (
            Method::GET,
            "/v1/operators/{}/auth_keys",
            None,
            &their_op,
            "OP0000000000",
        ),
        (
            Method::POST,
            "/v1/operators/{}/auth_keys",
            None,
            &their_op,
            "OP0000000000",
        ),
    ];
    for (method, template, body, theirs_id, missing_id) in cases {
        let their_path = template.replace("{}", theirs_id);
        let missing_path = template.replace("{}", missing_id);
        let (s1, b1) = mine.call(method.clone(), &their_path, body.clone()).await;
        check_error(&their_path, s1, &b1, StatusCode::NOT_FOUND);
        let (s2, b2) = mine.call(method.clone(), &missing_path, body).await;
        check_error(&missing_path, s2, &b2, StatusCode::NOT_FOUND);
        assert_eq!(
            b1, b2,
            "{method} {template}: another operator's differs from a missing one"
        );
        assert_unchanged(&server, &mine, &before, &their_path).await;
        assert_unchanged(&server, &theirs, &their_before, &their_path).await;
    }

    // Their group as the target of my SIM, and their auth key under my operator.
    let (s1, b1) = mine
        .post(&set_my_group, json!({"groupId": their_group}))
        .await;
    let (s2, b2) = mine
        .post(&set_my_group, json!({"groupId": missing_group}))
        .await;
    check_error("setGroup to their group", s1, &b1, StatusCode::NOT_FOUND);
    check_error(
        "setGroup to a missing group",
        s2,
        &b2,
        StatusCode::NOT_FOUND,
    );
    assert_eq!(b1, b2);
    let (s1, b1) = mine
        .delete(&format!("/v1/operators/{my_op}/auth_keys/{their_key}"))
        .await;
    let (s2, b2) = mine
        .delete(&format!("/v1/operators/{my_op}/auth_keys/{missing_key}"))
        .await;
    check_error("delete their auth key", s1, &b1, StatusCode::NOT_FOUND);
    check_error("delete a missing auth key", s2, &b2, StatusCode::NOT_FOUND);
    assert_eq!(b1, b2);
    let (s1, b1) = mine
        .delete(&format!("/v1/operators/{their_op}/auth_keys/{their_key}"))
        .await;
    let (s2, b2) = mine
        .delete(&format!(
            "/v1/operators/OP0000000000/auth_keys/{missing_key}"
        ))
        .await;
    check_error(
        "delete their auth key under their operator",
        s1,
        &b1,
        StatusCode::NOT_FOUND,
    );
    check_error(
        "delete under a missing operator",
        s2,
        &b2,
        StatusCode::NOT_FOUND,
    );
    assert_eq!(b1, b2);
    assert_unchanged(&server, &mine, &before, "auth keys").await;
    assert_unchanged(&server, &theirs, &their_before, "auth keys").await;

    // Listings never show the other operator's rows.
    let (status, list) = mine.get("/v1/sims").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["simId"].as_str())
        .collect();
    assert_eq!(ids, vec![my_sim.as_str()]);
    // Their key still works.
    server
        .login_with(&their_key, key["authKey"].as_str().unwrap())
        .await;
    server.running.shutdown().await;
}

#[tokio::test]
async fn missing_wrong_and_expired_tokens_are_401() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let client = server.client();
    let url = |p: &str| format!("{}{p}", server.base);
    let create = json!({"type": "virtual", "subscription": "planArc01"});

    let requests: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no headers", client.post(url("/v1/sims")).json(&create)),
        (
            "api key only",
            client
                .post(url("/v1/sims"))
                .header("X-Soracom-API-Key", &api.api_key)
                .json(&create),
        ),
        (
            "token only",
            client
                .post(url("/v1/sims"))
                .header("X-Soracom-Token", &api.token)
                .json(&create),
        ),
        (
            "wrong token",
            client
                .post(url("/v1/sims"))
                .header("X-Soracom-API-Key", &api.api_key)
                .header("X-Soracom-Token", "not-the-token")
                .json(&create),
        ),
        (
            "wrong api key",
            client
                .post(url("/v1/sims"))
                .header(
                    "X-Soracom-API-Key",
                    "api-00000000-0000-0000-0000-000000000000",
                )
                .header("X-Soracom-Token", &api.token)
                .json(&create),
        ),
        (
            "no headers, getSim",
            client.get(url(&format!("/v1/sims/{sim_id}"))),
        ),
        (
            "no headers, bad body",
            client
                .post(url("/v1/sims"))
                .header("content-type", "text/plain")
                .body("{"),
        ),
    ];
    for (what, request) in requests {
        let (status, _, body) = read(request.send().await.expect("request")).await;
        check_error(what, status, &body, StatusCode::UNAUTHORIZED);
        assert_unchanged(&server, &api, &before, what).await;
    }

    // Wrong auth key.
    let (status, body) = api
        .post(
            "/v1/auth",
            json!({"authKeyId": server.root.auth_key_id, "authKey": "secret-wrong"}),
        )
        .await;
    check_error("wrong auth key", status, &body, StatusCode::UNAUTHORIZED);

    // Expired: one token used while valid (cached in memory), one never used (looked up in the store).
    let short = json!({"authKeyId": server.root.auth_key_id, "authKey": server.root.auth_key,
                       "tokenTimeoutSeconds": 1});
    let mut expiring = Vec::new();
    for _ in 0..2 {
        let (status, body) = api.post("/v1/auth", short.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        expiring.push(Api {
            api_key: body["apiKey"].as_str().unwrap().to_string(),
            token: body["token"].as_str().unwrap().to_string(),
            ..api.clone()
        });
    }
    let (status, body) = expiring[0].get(&format!("/v1/sims/{sim_id}")).await;
    assert_eq!(status, StatusCode::OK, "fresh short token works: {body}");
    let before = snapshot(&server, &api, &[&sim_id]).await;
    // The sleep is the behaviour under test: the tokens' one-second lifetime runs out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (i, expired) in expiring.iter().enumerate() {
        let what = format!("expired token {i}");
        let (status, body) = expired.post("/v1/sims", create.clone()).await;
        check_error(&what, status, &body, StatusCode::UNAUTHORIZED);
        let (status, body) = expired.get(&format!("/v1/sims/{sim_id}")).await;
        check_error(&what, status, &body, StatusCode::UNAUTHORIZED);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    // The long-lived token still works.
    let (status, _) = api.get("/v1/sims").await;
    assert_eq!(status, StatusCode::OK);
    server.running.shutdown().await;
}

#[tokio::test]
async fn terminate_needs_protection_lifted() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    check_error(
        "terminate while protected",
        status,
        &body,
        StatusCode::BAD_REQUEST,
    );
    assert_unchanged(&server, &api, &before, "terminate while protected").await;

    // Lifting and re-applying protection leaves the SIM protected again.
    for path in ["enable_termination", "disable_termination"] {
        let (status, body) = api.post_empty(&format!("/v1/sims/{sim_id}/{path}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    check_error(
        "terminate after disable_termination",
        status,
        &body,
        StatusCode::BAD_REQUEST,
    );
    assert_unchanged(
        &server,
        &api,
        &before,
        "terminate after disable_termination",
    )
    .await;

    // Status changes of a virtual SIM are refused too.
    for action in ["activate", "deactivate", "suspend"] {
        let (status, body) = api.post_empty(&format!("/v1/sims/{sim_id}/{action}")).await;
        check_error(action, status, &body, StatusCode::BAD_REQUEST);
        assert_unchanged(&server, &api, &before, action).await;
    }

    let (status, _) = api
        .post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "terminated");
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    check_error("terminate twice", status, &body, StatusCode::BAD_REQUEST);
    assert_unchanged(&server, &api, &before, "terminate twice").await;
    server.running.shutdown().await;
}

#[tokio::test]
async fn add_subscription_rules() {
    let (server, api, virtual_sim, _) = setup().await;
    let (status, body) = import(
        &api,
        json!([
            iot_item(1, "planX1"),
            iot_item(2, "plan-D"),
            iot_item(3, "planP1")
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let x1 = body[0]["simId"].as_str().unwrap().to_string();
    let plan_d = body[1]["simId"].as_str().unwrap().to_string();
    let p1 = body[2]["simId"].as_str().unwrap().to_string();
    let add = |sim: &str| format!("/v1/sims/{sim}/profiles/{sim}/add_subscription");
    let arc = json!({"subscription": "planArc01", "type": "virtual"});

    let before = snapshot(&server, &api, &[&x1, &plan_d, &p1, &virtual_sim]).await;
    let cases: Vec<(&str, String, Value)> = vec![
        ("primary planX1", add(&x1), arc.clone()),
        ("primary planP1", add(&p1), arc.clone()),
        (
            "subscription planX1",
            add(&plan_d),
            json!({"subscription": "planX1"}),
        ),
        (
            "subscription planX2",
            add(&plan_d),
            json!({"subscription": "planX2", "type": "virtual"}),
        ),
        (
            "type not virtual",
            add(&plan_d),
            json!({"subscription": "planArc01", "type": "uicc"}),
        ),
        ("on a virtual SIM", add(&virtual_sim), arc.clone()),
    ];
    for (what, path, body) in cases {
        let (status, response) = api.post(&path, body).await;
        check_error(what, status, &response, StatusCode::BAD_REQUEST);
        assert_unchanged(&server, &api, &before, what).await;
    }

    let (status, body) = api.post(&add(&plan_d), arc.clone()).await;
    assert_eq!(status, StatusCode::OK, "first addSubscription: {body}");
    let before = snapshot(&server, &api, &[&x1, &plan_d, &p1, &virtual_sim]).await;
    let (status, body) = api.post(&add(&plan_d), arc).await;
    check_error(
        "second addSubscription",
        status,
        &body,
        StatusCode::BAD_REQUEST,
    );
    assert_unchanged(&server, &api, &before, "second addSubscription").await;
    server.running.shutdown().await;
}

#[tokio::test]
async fn iot_sim_import_is_all_or_nothing() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let mut short_imsi = iot_item(2, "plan-D");
    short_imsi["imsi"] = json!("4401000002");
    let bad_batches = vec![
        (
            "10-digit IMSI",
            json!([iot_item(1, "plan-D"), short_imsi, iot_item(3, "plan-D")]),
        ),
        (
            "IMSI twice in the batch",
            json!([iot_item(1, "plan-D"), {"iccid": "8981100000000000099", "imsi": iot_item(1, "plan-D")["imsi"], "subscription": "plan-D"}, iot_item(3, "plan-D")]),
        ),
        (
            "virtual IMSI range",
            json!([iot_item(1, "plan-D"), {"iccid": "8981100000000000099", "imsi": "999990000000001", "subscription": "plan-D"}, iot_item(3, "plan-D")]),
        ),
        (
            "planArc01 as IoT SIM",
            json!([
                iot_item(1, "plan-D"),
                iot_item(2, "planArc01"),
                iot_item(3, "plan-D")
            ]),
        ),
        (
            "unknown field",
            json!([iot_item(1, "plan-D"), {"iccid": "8981100000000000099", "imsi": "440100000000099", "subscription": "plan-D", "x": 1}, iot_item(3, "plan-D")]),
        ),
    ];
    for (what, items) in bad_batches {
        let (status, body) = import(&api, items.clone()).await;
        check_error(what, status, &body, StatusCode::BAD_REQUEST);
        if what != "unknown field" {
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("item 1"), "{what}: {message}");
        }
        assert_unchanged(&server, &api, &before, what).await;
        for item in items.as_array().unwrap() {
            let (status, _) = api
                .get(&format!("/v1/sims/{}", item["iccid"].as_str().unwrap()))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{what}: nothing imported");
        }
    }

    // An ICCID already registered (by an earlier import, or a virtual SIM's own) at index 1.
    let (status, body) = import(&api, json!([iot_item(7, "plan-D")])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let existing = iot_item(7, "plan-D")["iccid"].as_str().unwrap().to_string();
    let before = snapshot(&server, &api, &[&sim_id, &existing]).await;
    for (what, dup_iccid) in [
        ("existing IoT ICCID", existing.as_str()),
        ("virtual SIM's ICCID", sim_id.as_str()),
    ] {
        let items = json!([
            iot_item(1, "plan-D"),
            {"iccid": dup_iccid, "imsi": "440100000000042", "subscription": "plan-D"},
            iot_item(3, "plan-D"),
        ]);
        let (status, body) = import(&api, items).await;
        check_error(what, status, &body, StatusCode::BAD_REQUEST);
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("item 1"), "{what}: {message}");
        assert_unchanged(&server, &api, &before, what).await;
        for n in [1, 3] {
            let (status, _) = api
                .get(&format!(
                    "/v1/sims/{}",
                    iot_item(n, "plan-D")["iccid"].as_str().unwrap()
                ))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{what}: nothing imported");
        }
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let (server, api, sim_id, _) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    for path in [
        "/v1/nope",
        "/nope",
        "/v1/sims/x/nope",
        "/v2/sims",
        "/v1/sims/",
    ] {
        let (status, body) = send_raw(&api, Method::GET, path, None, Vec::new()).await;
        check_error(path, status, &body, StatusCode::NOT_FOUND);
        // Also without a token.
        let response = server
            .client()
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("request");
        let (status, _, body) = read(response).await;
        check_error(path, status, &body, StatusCode::NOT_FOUND);
    }
    // A path segment that is not UTF-8 once decoded: a 400 in the API's shape, not axum's text.
    for (method, path) in [
        (Method::GET, "/v1/sims/%FF".to_string()),
        (Method::GET, "/v1/groups/%C3%28".to_string()),
        (Method::DELETE, format!("/v1/sims/{sim_id}/tags/%C3%28")),
    ] {
        let what = format!("{method} {path}");
        let (status, body) = send_raw(&api, method, &path, None, Vec::new()).await;
        check_error(&what, status, &body, StatusCode::BAD_REQUEST);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    let cases: Vec<(Method, String)> = vec![
        (Method::DELETE, "/v1/sims".into()),
        (Method::PATCH, format!("/v1/sims/{sim_id}")),
        (Method::GET, format!("/v1/sims/{sim_id}/terminate")),
        (Method::PUT, "/v1/auth".into()),
        (Method::GET, "/v1/auth".into()),
        (Method::POST, format!("/v1/sims/{sim_id}/tags")),
        (Method::DELETE, "/v1/arcd/iot_sims".into()),
    ];
    for (method, path) in cases {
        let what = format!("{method} {path}");
        let (status, body) = send_raw(&api, method, &path, None, Vec::new()).await;
        check_error(&what, status, &body, StatusCode::METHOD_NOT_ALLOWED);
        assert_unchanged(&server, &api, &before, &what).await;
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn bad_limits_are_400() {
    let (server, api, sim_id, group_id) = setup().await;
    let before = snapshot(&server, &api, &[&sim_id]).await;
    let lists = [
        "/v1/sims".to_string(),
        "/v1/query/sims".to_string(),
        "/v1/groups".to_string(),
        format!("/v1/groups/{group_id}/subscribers"),
        format!("/v1/sims/{sim_id}/events/sessions"),
    ];
    // Out-of-range integers are clamped where the official schema allows any integer
    // (tests/api_spec_rules.rs); what is not an integer at all is refused everywhere.
    for list in &lists {
        for limit in ["abc", "1.5", "", "1e3", "0x10"] {
            let path = format!("{list}?limit={limit}");
            let (status, body) = api.get(&path).await;
            check_error(&path, status, &body, StatusCode::BAD_REQUEST);
            assert_unchanged(&server, &api, &before, &path).await;
        }
        // Control: limit=1 is fine.
        let (status, body) = api.get(&format!("{list}?limit=1")).await;
        assert_eq!(status, StatusCode::OK, "{list}: {body}");
    }
    let path = format!("/v1/sims/{sim_id}/events/sessions?from=yesterday");
    let (status, body) = api.get(&path).await;
    check_error(&path, status, &body, StatusCode::BAD_REQUEST);
    server.running.shutdown().await;
}

/// xorshift64*: deterministic, so a failure can be reproduced from the printed case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random bytes, and mutations of a valid body (so some cases are near misses or valid).
fn random_body(rng: &mut Rng) -> Vec<u8> {
    let valid = br#"{"type":"virtual","subscription":"planArc01"}"#.to_vec();
    let alphabet = b"{}[]\":,0123456789 \t\nabcdefghijklmnopqrstuvwxyzAV\\-.etrufalsn";
    match rng.below(7) {
        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        1 => (0..rng.below(64))
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect(),
        2 => {
            let mut body = valid;
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(body.len());
                body[at] = alphabet[rng.below(alphabet.len())];
            }
            body
        }
        3 => {
            let mut body = valid;
            body.truncate(rng.below(body.len() + 1));
            body
        }
        4 => {
            let mut body = valid;
            let at = rng.below(body.len() + 1);
            let insert: Vec<u8> = (0..1 + rng.below(4)).map(|_| rng.next() as u8).collect();
            body.splice(at..at, insert);
            body
        }
        5 => {
            // The valid body re-spelt: member order, whitespace, extra members.
            let ws = |rng: &mut Rng| [" ", "", "\n", "\t ", "\r\n"][rng.below(5)].to_string();
            let mut members = vec![
                format!("\"type\"{}:{}\"virtual\"", ws(rng), ws(rng)),
                format!("\"subscription\":{}\"planArc01\"", ws(rng)),
            ];
            if rng.below(2) == 0 {
                members.swap(0, 1);
            }
            if rng.below(2) == 0 {
                members.insert(
                    rng.below(3),
                    format!("\"extra{}\": [1, {{}}]", rng.below(9)),
                );
            }
            format!("{}{{{}{}}}{}", ws(rng), members.join(","), ws(rng), ws(rng)).into_bytes()
        }
        _ => {
            // Valid JSON objects with random extra members, sometimes with the right fields.
            let mut object = serde_json::Map::new();
            if rng.below(2) == 0 {
                object.insert(
                    "type".into(),
                    json!(["virtual", "euicc", "", "Virtual"][rng.below(4)]),
                );
            }
            if rng.below(2) == 0 {
                object.insert(
                    "subscription".into(),
                    json!(["planArc01", "plan-D", "planarc01"][rng.below(3)]),
                );
            }
            if rng.below(2) == 0 {
                object.insert(format!("k{}", rng.below(100)), json!(rng.next() % 1000));
            }
            Value::Object(object).to_string().into_bytes()
        }
    }
}

/// What the API should accept: an object whose type and subscription are exactly right.
fn is_valid_create(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => {
            o.get("type") == Some(&json!("virtual"))
                && o.get("subscription") == Some(&json!("planArc01"))
        }
        _ => false,
    }
}

#[tokio::test]
async fn random_create_sim_bodies_never_5xx() {
    let (server, api, _, _) = setup().await;
    let mut rng = Rng(SEED);
    let mut created = 0;
    let mut rejected = 0;
    for case in 0..200 {
        let body = random_body(&mut rng);
        let sims_before = counts(&server).await[0].1;
        let (status, response) = send_json_bytes(&api, Method::POST, "/v1/sims", &body).await;
        let what = format!(
            "case {case}: {:?} -> {status} {response}",
            String::from_utf8_lossy(&body)
        );
        assert!(!status.is_server_error(), "{what}");
        let sims_after = counts(&server).await[0].1;
        if is_valid_create(&body) {
            assert_eq!(status, StatusCode::CREATED, "{what}");
            assert_eq!(sims_after, sims_before + 1, "{what}");
            created += 1;
        } else {
            check_error(&what, status, &response, StatusCode::BAD_REQUEST);
            assert_eq!(sims_after, sims_before, "{what}");
            rejected += 1;
        }
    }
    println!("random createSim bodies: {created} created, {rejected} rejected");
    assert!(
        created > 0 && rejected > 100,
        "created {created}, rejected {rejected}"
    );
    server.running.shutdown().await;
}

const SEED: u64 = 0x5eed_a4cd_0000_0001;
