//! HTTPS integration tests of Virtual Private Gateways: create/list/get/terminate through the
//! official operations, arcd's device-to-device switch, bad input (nothing written), operator
//! isolation and the in-use refusal of terminate. Every 2xx body is validated against the
//! official schema, strictly (only `arcd*` extension properties allowed).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use arcd::store::db::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::checked::{text, Checked};
use support::conformance::{assert_array_conforms_strict, assert_conforms_strict};
use support::paging::next_key;
use support::server::{assert_error, TestServer};

const VPGS: &str = "/v1/virtual_private_gateways";

fn is_uuid(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn vpg_rows(server: &TestServer) -> Vec<(String, String)> {
    let store = server.running.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read_db(|db| {
                db.query("SELECT vpg_id, status FROM vpgs ORDER BY vpg_id", &[])?
                    .iter()
                    .map(|row| Ok((row.text(0)?, row.text(1)?)))
                    .collect::<arcd::store::Result<Vec<_>>>()
            })
            .expect("vpg rows")
    })
    .await
    .expect("join")
}

async fn create(api: &Checked, body: Value) -> Value {
    let (status, vpg) = api.post(VPGS, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body} -> {vpg}");
    assert_conforms_strict("VirtualPrivateGateway", &vpg);
    vpg
}

async fn get_vpg(api: &Checked, vpg_id: &str) -> (StatusCode, Value) {
    let (status, body) = api.get(&format!("{VPGS}/{vpg_id}")).await;
    if status.is_success() {
        assert_conforms_strict("VirtualPrivateGateway", &body);
    }
    (status, body)
}

#[tokio::test]
async fn create_get_list_terminate() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);

    let minimal = create(&api, json!({"type": 14})).await;
    let id = text(&minimal, "/vpgId").to_string();
    assert!(is_uuid(&id), "{id}");
    assert_eq!(minimal["operatorId"], json!(api.operator_id));
    assert_eq!(minimal["type"], json!(14));
    assert_eq!(minimal["status"], json!("running"));
    assert_eq!(minimal["deviceSubnetCidrRange"], json!("10.128.0.0/9"));
    assert_eq!(minimal["useInternetGateway"], json!(true));
    assert_eq!(minimal["arcdDeviceToDevice"], json!(false));
    // The test server's requests have Japan coverage: Tokyo is the default placement.
    assert_eq!(
        minimal["placement"],
        json!({"infrastructureProvider": "aws", "region": "ap-northeast-1"})
    );
    assert_eq!(minimal["sessionStats"]["online"], json!(0));
    assert!(minimal["sessionStats"]["lastUpdatedAt"].as_i64().is_some());
    assert_eq!(minimal["tags"], json!({"name": ""}));

    let full = create(
        &api,
        json!({
            "type": 242,
            "placement": {"region": "us-west-2"},
            "deviceSubnetCidrRange": "192.168.0.0/16",
            "useInternetGateway": false,
            "tags": {"name": "lab", "site": "oregon"},
            "arcdDeviceToDevice": true
        }),
    )
    .await;
    assert_eq!(full["placement"]["region"], json!("us-west-2"));
    assert_eq!(full["deviceSubnetCidrRange"], json!("192.168.0.0/16"));
    assert_eq!(full["useInternetGateway"], json!(false));
    assert_eq!(full["arcdDeviceToDevice"], json!(true));
    assert_eq!(full["tags"], json!({"name": "lab", "site": "oregon"}));
    let full_id = text(&full, "/vpgId").to_string();

    let (status, got) = get_vpg(&api, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["vpgId"], minimal["vpgId"]);
    assert_eq!(got["createdTime"], minimal["createdTime"]);

    let (status, list) = api.get(VPGS).await;
    assert_eq!(status, StatusCode::OK);
    assert_array_conforms_strict("VirtualPrivateGateway", &list);
    let mut ids = vec![id.clone(), full_id.clone()];
    ids.sort();
    let listed: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|v| text(v, "/vpgId"))
        .collect();
    assert_eq!(listed, ids);

    // Paging: one per page, the header carries the key.
    let (status, headers, first) = api.get_with_headers(&format!("{VPGS}?limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.as_array().map(Vec::len), Some(1));
    let key = next_key(&headers).expect("another page");
    assert_eq!(key, ids[0]);
    let (_, headers, second) = api
        .get_with_headers(&format!("{VPGS}?limit=1&last_evaluated_key={key}"))
        .await;
    assert_eq!(second[0]["vpgId"], json!(ids[1]));
    assert_eq!(next_key(&headers), None);

    // Tag filter.
    let (_, tagged) = api
        .get(&format!(
            "{VPGS}?tag_name=site&tag_value=ore&tag_value_match_mode=prefix"
        ))
        .await;
    assert_eq!(tagged.as_array().map(Vec::len), Some(1));
    assert_eq!(tagged[0]["vpgId"], json!(full_id));
    let (_, exact) = api
        .get(&format!("{VPGS}?tag_name=site&tag_value=ore"))
        .await;
    assert_eq!(exact, json!([]));

    // Terminate: 200 without a body, then hidden; the row stays as `terminated`.
    let (status, body) = api.post_empty(&format!("{VPGS}/{id}/terminate")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, Value::Null);
    let (status, body) = get_vpg(&api, &id).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = api.post_empty(&format!("{VPGS}/{id}/terminate")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (_, list) = api.get(VPGS).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["vpgId"], json!(full_id));
    let rows = vpg_rows(&server).await;
    assert!(
        rows.contains(&(id.clone(), "terminated".to_string())),
        "{rows:?}"
    );
}

#[tokio::test]
async fn device_to_device_switch() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let vpg = create(
        &api,
        json!({"type": 15, "placement": {"region": "eu-central-1"}}),
    )
    .await;
    let id = text(&vpg, "/vpgId");
    let path = format!("/v1/arcd/virtual_private_gateways/{id}/device_to_device");

    let (status, on) = api.put(&path, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["arcdDeviceToDevice"], json!(true));
    assert!(on["lastModifiedTime"].as_i64() >= vpg["lastModifiedTime"].as_i64());
    let (_, got) = get_vpg(&api, id).await;
    assert_eq!(got["arcdDeviceToDevice"], json!(true));

    let (status, off) = api.put(&path, json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(off["arcdDeviceToDevice"], json!(false));

    for bad in [
        json!({"enabled": "yes"}),
        json!({}),
        json!({"enabled": true, "x": 1}),
    ] {
        let (status, body) = api.put(&path, bad.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let (status, body) = api.call(Method::PUT, &path, None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (_, got) = get_vpg(&api, id).await;
    assert_eq!(got["arcdDeviceToDevice"], json!(false));

    let (status, body) = api
        .put(
            "/v1/arcd/virtual_private_gateways/00000000-0000-4000-8000-000000000000/device_to_device",
            json!({"enabled": true}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_writes_nothing() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    create(&api, json!({"type": 14})).await;
    let before = vpg_rows(&server).await;

    let cases = [
        json!({}),
        json!({"type": 12}),
        json!({"type": 13}),
        json!({"type": "14"}),
        json!({"type": 14, "placement": {"region": "ap-southeast-3"}}),
        json!({"type": 14, "placement": {"region": ""}}),
        json!({"type": 14, "deviceSubnetCidrRange": "10.0.0.1/8"}),
        json!({"type": 14, "deviceSubnetCidrRange": "10.0.0.0/31"}),
        json!({"type": 14, "deviceSubnetCidrRange": "10.0.0.0"}),
        json!({"type": 14, "deviceSubnetCidrRange": "fd00::/64"}),
        json!({"type": 14, "deviceSubnetCidrRange": "not a range"}),
        json!({"type": 14, "useInternetGateway": "yes"}),
        json!({"type": 14, "tags": {"name": 1}}),
        json!([{"type": 14}]),
    ];
    for case in cases {
        let (status, body) = api.post(VPGS, case.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case} -> {body}");
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    // Not JSON at all, and no body.
    let response = api
        .request(Method::POST, VPGS)
        .header("content-type", "application/json")
        .body("{\"type\": 14")
        .send()
        .await
        .expect("request");
    let (status, _, body) = support::server::read(response).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api.call(Method::POST, VPGS, None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);

    for query in [
        "limit=x",
        "limit=",
        "tag_name=a&tag_value=b&tag_value_match_mode=",
        "tag_name=name",
        "tag_value=x",
        "tag_name=a&tag_value=b&tag_value_match_mode=regex",
    ] {
        let (status, body) = api.get(&format!("{VPGS}?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }

    assert_eq!(vpg_rows(&server).await, before);
}

#[tokio::test]
async fn another_operators_vpg_is_missing() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let other = Checked(server.other_operator().await);
    let vpg = create(&api, json!({"type": 14})).await;
    let id = text(&vpg, "/vpgId");
    let missing = "00000000-0000-4000-8000-000000000000";

    let (_, list) = other.get(VPGS).await;
    assert_eq!(list, json!([]));
    for target in [id, missing] {
        let (status, body) = get_vpg(&other, target).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
        let (status, terminate) = other
            .post_empty(&format!("{VPGS}/{target}/terminate"))
            .await;
        assert_error(status, &terminate, StatusCode::NOT_FOUND);
        assert_eq!(terminate, body, "a foreign VPG answers like a missing one");
        let (status, d2d) = other
            .put(
                &format!("/v1/arcd/virtual_private_gateways/{target}/device_to_device"),
                json!({"enabled": true}),
            )
            .await;
        assert_error(status, &d2d, StatusCode::NOT_FOUND);
        assert_eq!(d2d, body);
    }
    let (status, got) = get_vpg(&api, id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["arcdDeviceToDevice"], json!(false));
}

#[tokio::test]
async fn terminate_refused_while_a_group_names_the_vpg() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let vpg = create(&api, json!({"type": 14})).await;
    let id = text(&vpg, "/vpgId");

    let (status, group) = api
        .post(
            "/v1/groups",
            json!({"configuration": {"SoracomAir": {"useVpg": true, "vpgId": id}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let group_id = text(&group, "/groupId");

    let (status, body) = api.post_empty(&format!("{VPGS}/{id}/terminate")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    assert!(text(&body, "/message").contains("vpgId"), "{body}");
    let (status, _) = get_vpg(&api, id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(vpg_rows(&server).await[0].1, "running");

    let (status, body) = api
        .delete(&format!(
            "/v1/groups/{group_id}/configuration/SoracomAir/vpgId"
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = api.post_empty(&format!("{VPGS}/{id}/terminate")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get_vpg(&api, id).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
}
