//! HTTPS integration tests of auth, operator auth keys, groups and their configuration, operator
//! isolation and the served OpenAPI document, against an in-process arcd. Every 2xx JSON body is
//! validated against the official SORACOM API schema.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::conformance::validate_schema;
use support::server::{assert_error, read, Api, TestServer};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

use support::checked::{conforms, expect_status, text, Checked};

fn alnum_after(value: &str, prefix: &str, len: usize) -> bool {
    value
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == len && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn is_uuid(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A client that sends no auth headers (for `POST /v1/auth`).
fn anonymous(server: &TestServer) -> Checked {
    Checked(Api {
        client: server.client(),
        base: server.base.clone(),
        api_key: String::new(),
        token: String::new(),
        operator_id: String::new(),
    })
}

async fn auth(server: &TestServer, body: Value) -> (StatusCode, Value) {
    anonymous(server).post("/v1/auth", body).await
}

fn signed_in(server: &TestServer, body: &Value) -> Checked {
    Checked(Api {
        api_key: text(body, "/apiKey").to_string(),
        token: text(body, "/token").to_string(),
        operator_id: text(body, "/operatorId").to_string(),
        ..anonymous(server).0
    })
}

async fn create_group(api: &Checked, body: Value) -> Value {
    let (status, group) = api.post("/v1/groups", body).await;
    expect_status(status, &group, StatusCode::CREATED);
    conforms("post", "/groups", status, &group);
    group
}

async fn get_group(api: &Checked, group_id: &str) -> Value {
    let (status, group) = api.get(&format!("/v1/groups/{group_id}")).await;
    expect_status(status, &group, StatusCode::OK);
    conforms("get", "/groups/{group_id}", status, &group);
    group
}

// ---------------------------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_issues_a_token_that_authorises_calls() {
    let server = TestServer::start().await;
    let (status, body) = auth(
        &server,
        json!({"authKeyId": server.root.auth_key_id, "authKey": server.root.auth_key}),
    )
    .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/auth", status, &body);
    let api_key = text(&body, "/apiKey");
    assert!(
        api_key.strip_prefix("api-").is_some_and(is_uuid),
        "apiKey is api- + uuid: {api_key}"
    );
    assert!(!text(&body, "/token").is_empty());
    let operator_id = text(&body, "/operatorId");
    assert_eq!(operator_id, server.root.operator_id);
    assert!(
        operator_id.len() == 12
            && operator_id.starts_with("OP")
            && operator_id[2..].bytes().all(|b| b.is_ascii_digit()),
        "{operator_id}"
    );
    assert!(body.get("userName").is_none());

    let api = signed_in(&server, &body);
    let (status, sims) = api.get("/v1/sims").await;
    expect_status(status, &sims, StatusCode::OK);
    assert_eq!(sims, json!([]));

    // Without headers, with a wrong token, with an unknown API key: 401.
    let (status, error) = anonymous(&server).get("/v1/sims").await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    let wrong_token = Checked(Api {
        token: "x".repeat(64),
        ..api.0.clone()
    });
    let (status, error) = wrong_token.get("/v1/sims").await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    let unknown_key = Checked(Api {
        api_key: "api-00000000-0000-0000-0000-000000000000".into(),
        ..api.0.clone()
    });
    let (status, error) = unknown_key.get("/v1/sims").await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    server.running.shutdown().await;
}

#[tokio::test]
async fn auth_with_a_wrong_secret_or_key_is_401() {
    let server = TestServer::start().await;
    let wrong_secret = format!("secret-{}", "A".repeat(64));
    for body in [
        json!({"authKeyId": server.root.auth_key_id, "authKey": wrong_secret}),
        json!({"authKeyId": format!("keyId-{}", "B".repeat(32)), "authKey": server.root.auth_key}),
        json!({"authKeyId": server.root.auth_key_id}),
        json!({"email": "root@example.com", "password": "secret"}),
    ] {
        let (status, error) = auth(&server, body.clone()).await;
        assert_error(status, &error, StatusCode::UNAUTHORIZED);
        assert!(error.get("token").is_none(), "{body} → {error}");
    }
    // The right key still works afterwards.
    let api = Checked(server.login().await);
    assert_eq!(api.operator_id, server.root.operator_id);
    server.running.shutdown().await;
}

#[tokio::test]
async fn auth_token_timeout_is_honoured() {
    let server = TestServer::start().await;
    let (status, body) = auth(
        &server,
        json!({
            "authKeyId": server.root.auth_key_id,
            "authKey": server.root.auth_key,
            "tokenTimeoutSeconds": 1
        }),
    )
    .await;
    expect_status(status, &body, StatusCode::OK);
    conforms("post", "/auth", status, &body);
    let short = signed_in(&server, &body);
    let long = Checked(server.login().await);
    let (status, sims) = short.get("/v1/sims").await;
    expect_status(status, &sims, StatusCode::OK);

    // The sleep is the behaviour under test: the token's one-second lifetime runs out.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, error) = short.get("/v1/sims").await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    assert_eq!(error["code"], "AUM0005", "expired, not invalid: {error}");
    assert!(text(&error, "/message").contains("expired"), "{error}");
    let (status, sims) = long.get("/v1/sims").await;
    expect_status(status, &sims, StatusCode::OK);
    server.running.shutdown().await;
}

#[tokio::test]
async fn auth_token_timeout_outside_limits_is_400() {
    let server = TestServer::start().await;
    for timeout in [json!(172_801), json!(0), json!(-5), json!("60")] {
        let (status, error) = auth(
            &server,
            json!({
                "authKeyId": server.root.auth_key_id,
                "authKey": server.root.auth_key,
                "tokenTimeoutSeconds": timeout
            }),
        )
        .await;
        assert_error(status, &error, StatusCode::BAD_REQUEST);
    }
    let (status, body) = auth(
        &server,
        json!({
            "authKeyId": server.root.auth_key_id,
            "authKey": server.root.auth_key,
            "tokenTimeoutSeconds": 172_800
        }),
    )
    .await;
    expect_status(status, &body, StatusCode::OK);
    let (status, sims) = signed_in(&server, &body).get("/v1/sims").await;
    expect_status(status, &sims, StatusCode::OK);
    server.running.shutdown().await;
}

#[tokio::test]
async fn auth_headers_are_matched_in_any_case() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    for (key_header, token_header) in [
        ("x-SORACOM-api-KEY", "X-SORACOM-TOKEN"),
        ("x-soracom-api-key", "x-soracom-token"),
        ("X-Soracom-Api-Key", "X-Soracom-Token"),
    ] {
        let response = api
            .client
            .request(Method::GET, format!("{}/v1/sims", api.base))
            .header(key_header, &api.api_key)
            .header(token_header, &api.token)
            .send()
            .await
            .expect("request");
        let (status, _, body) = read(response).await;
        expect_status(status, &body, StatusCode::OK);
        conforms("get", "/sims", status, &body);
    }
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Operator auth keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_keys_generate_list_sign_in_and_delete() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let keys_path = format!("/v1/operators/{}/auth_keys", api.operator_id);

    let (status, generated) = api.post_empty(&keys_path).await;
    expect_status(status, &generated, StatusCode::CREATED);
    conforms(
        "post",
        "/operators/{operator_id}/auth_keys",
        status,
        &generated,
    );
    let key_id = text(&generated, "/authKeyId").to_string();
    let secret = text(&generated, "/authKey").to_string();
    assert!(alnum_after(&key_id, "keyId-", 32), "{key_id}");
    assert!(
        alnum_after(&secret, "secret-", 64),
        "secret has the secret- + 64 form"
    );

    let (status, list) = api.get(&keys_path).await;
    expect_status(status, &list, StatusCode::OK);
    conforms("get", "/operators/{operator_id}/auth_keys", status, &list);
    let entries = list.as_array().expect("array");
    assert_eq!(entries.len(), 2, "root key and the new one: {list}");
    assert!(
        !list.to_string().contains(&secret),
        "secrets are never listed"
    );
    let find = |list: &Value, id: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|k| k["authKeyId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed in {list}"))
    };
    let fresh = find(&list, &key_id);
    let created = fresh["createDateTime"].as_i64().expect("createDateTime");
    assert!(
        (created - now_s()).abs() < 120,
        "createDateTime is UNIX seconds: {created}"
    );
    assert!(
        fresh.get("lastUsedDateTime").is_none(),
        "an unused key has no lastUsedDateTime: {fresh}"
    );
    let root = find(&list, &server.root.auth_key_id);
    let root_used = root["lastUsedDateTime"]
        .as_i64()
        .expect("root key was used");
    assert!((root_used - now_s()).abs() < 120, "seconds: {root_used}");

    let second = Checked(server.login_with(&key_id, &secret).await);
    assert_eq!(second.operator_id, api.operator_id, "same operator");
    let (status, sims) = second.get("/v1/sims").await;
    expect_status(status, &sims, StatusCode::OK);
    let (status, list) = api.get(&keys_path).await;
    expect_status(status, &list, StatusCode::OK);
    conforms("get", "/operators/{operator_id}/auth_keys", status, &list);
    let used = find(&list, &key_id)["lastUsedDateTime"]
        .as_i64()
        .expect("lastUsedDateTime after sign-in");
    assert!(used >= created && (used - now_s()).abs() < 120, "{used}");

    let (status, body) = api.delete(&format!("{keys_path}/{key_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null());
    let (status, list) = api.get(&keys_path).await;
    expect_status(status, &list, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|k| k["authKeyId"] != key_id.as_str()),
        "{list}"
    );
    let (status, error) = auth(&server, json!({"authKeyId": key_id, "authKey": secret})).await;
    assert_error(status, &error, StatusCode::UNAUTHORIZED);
    let (status, error) = api.delete(&format!("{keys_path}/{key_id}")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    server.running.shutdown().await;
}

#[tokio::test]
async fn auth_keys_of_another_operator_are_404() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let other = Checked(server.other_operator().await);
    assert_ne!(other.operator_id, api.operator_id);
    let theirs = format!("/v1/operators/{}/auth_keys", api.operator_id);

    let (status, error) = other.post_empty(&theirs).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = other.get(&theirs).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let root_key = &server.root.auth_key_id;
    let (status, error) = other.delete(&format!("{theirs}/{root_key}")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    // Naming the key under their own operator id does not reach it either.
    let (status, error) = other
        .delete(&format!(
            "/v1/operators/{}/auth_keys/{root_key}",
            other.operator_id
        ))
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);

    let (status, list) = api.get(&theirs).await;
    expect_status(status, &list, StatusCode::OK);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "nothing was added: {list}"
    );
    assert_eq!(list[0]["authKeyId"], root_key.as_str());
    server.login().await; // the root key still signs in
    let (status, own) = other
        .get(&format!("/v1/operators/{}/auth_keys", other.operator_id))
        .await;
    expect_status(status, &own, StatusCode::OK);
    assert!(own
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["authKeyId"] != root_key.as_str()));
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn groups_create_list_and_get() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let configuration = json!({
        "SoracomAir": {"metadata": {"enabled": true, "readonly": false, "allowOrigin": "*"}},
        "SoracomHarvest": {"enabled": true}
    });
    let group = create_group(
        &api,
        json!({"tags": {"name": "fleet-a", "site": "tokyo"}, "configuration": configuration}),
    )
    .await;
    let group_id = text(&group, "/groupId").to_string();
    assert!(is_uuid(&group_id), "{group_id}");
    assert_eq!(group["operatorId"], api.operator_id);
    assert_eq!(group["tags"], json!({"name": "fleet-a", "site": "tokyo"}));
    assert_eq!(group["configuration"], configuration);
    let created = group["createdTime"].as_i64().expect("createdTime");
    assert!((created / 1000 - now_s()).abs() < 120, "UNIX ms: {created}");
    assert!(group["lastModifiedTime"].as_i64().unwrap() >= created);

    let unnamed = create_group(&api, json!({})).await;
    assert_eq!(unnamed["tags"], json!({"name": ""}));
    assert_eq!(unnamed["configuration"], json!({}));
    // The official API requires the body: none at all is a 400 and creates nothing.
    let (status, bare) = api.post_empty("/v1/groups").await;
    assert_error(status, &bare, StatusCode::BAD_REQUEST);
    let (status, bare) = api.post("/v1/groups", json!(null)).await;
    assert_error(status, &bare, StatusCode::BAD_REQUEST);
    let bare = create_group(&api, json!({})).await;
    assert_eq!(bare["tags"], json!({"name": ""}));

    let (status, list) = api.get("/v1/groups").await;
    expect_status(status, &list, StatusCode::OK);
    conforms("get", "/groups", status, &list);
    let listed = list.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let found = listed
        .iter()
        .find(|g| g["groupId"] == group_id.as_str())
        .expect("listed");
    assert_eq!(found, &group);

    assert_eq!(get_group(&api, &group_id).await, group);

    // limit + x-soracom-next-key, and the `link` URL keeps the limit.
    let all_ids: Vec<String> = listed
        .iter()
        .map(|g| text(g, "/groupId").to_string())
        .collect();
    let (status, headers, page) = api.get_with_headers("/v1/groups?limit=2").await;
    expect_status(status, &page, StatusCode::OK);
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["groupId"], all_ids[0].as_str());
    assert_eq!(
        headers
            .get("x-soracom-next-key")
            .and_then(|v| v.to_str().ok()),
        Some(all_ids[1].as_str())
    );
    let link = headers["link"].to_str().unwrap();
    let url = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=next"))
        .unwrap_or_else(|| panic!("link: {link}"));
    assert!(url.contains("limit=2"), "{url}");
    let (status, headers, rest) = api.get_with_headers(url).await;
    expect_status(status, &rest, StatusCode::OK);
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["groupId"], all_ids[2].as_str());
    assert!(headers.get("x-soracom-next-key").is_none());
    assert!(headers.get("link").is_none());

    let (status, error) = api
        .post(
            "/v1/groups",
            json!({"configuration": {"SoracomNope": {"enabled": true}}}),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .get("/v1/groups/00000000-0000-0000-0000-000000000000")
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, list) = api.get("/v1/groups").await;
    expect_status(status, &list, StatusCode::OK);
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "a refused create adds nothing"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn group_configuration_takes_any_json_value_and_overwrites() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let group = create_group(
        &api,
        json!({"tags": {"name": "cfg"}, "configuration": {"SoracomHarvest": {"enabled": true}}}),
    )
    .await;
    let group_id = text(&group, "/groupId").to_string();
    let air = format!("/v1/groups/{group_id}/configuration/SoracomAir");

    let (status, body) = api
        .put(
            &air,
            json!([
                {"key": "useCustomDns", "value": true},
                {"key": "ipLinkMtu", "value": 1400},
                {"key": "ratio", "value": 0.25},
                {"key": "metadata", "value": {"enabled": true, "readonly": true}},
                {"key": "dnsServers", "value": ["8.8.8.8", "1.1.1.1"]},
                {"key": "userdata", "value": "hello"},
                {"key": "my key", "value": "spaced"}
            ]),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms(
        "put",
        "/groups/{group_id}/configuration/{namespace}",
        status,
        &body,
    );
    let expected_air = json!({
        "useCustomDns": true,
        "ipLinkMtu": 1400,
        "ratio": 0.25,
        "metadata": {"enabled": true, "readonly": true},
        "dnsServers": ["8.8.8.8", "1.1.1.1"],
        "userdata": "hello",
        "my key": "spaced"
    });
    assert_eq!(body["configuration"]["SoracomAir"], expected_air);
    assert_eq!(
        body["configuration"]["SoracomHarvest"],
        json!({"enabled": true})
    );
    assert!(
        body["configuration"]["SoracomAir"]["ipLinkMtu"].is_i64(),
        "an integer stays one"
    );

    let (status, body) = api
        .put(
            &air,
            json!([
                {"key": "ipLinkMtu", "value": 1280},
                {"key": "metadata", "value": {"enabled": false}}
            ]),
        )
        .await;
    expect_status(status, &body, StatusCode::OK);
    conforms(
        "put",
        "/groups/{group_id}/configuration/{namespace}",
        status,
        &body,
    );
    let air_now = &body["configuration"]["SoracomAir"];
    assert_eq!(air_now["ipLinkMtu"], 1280, "overwritten");
    assert_eq!(
        air_now["metadata"],
        json!({"enabled": false}),
        "replaced, not merged"
    );
    assert_eq!(air_now["userdata"], "hello", "other keys kept");
    assert_eq!(air_now.as_object().unwrap().len(), 7);
    assert_eq!(get_group(&api, &group_id).await, body);

    let (status, body) = api.delete(&format!("{air}/userdata")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null());
    let (status, body) = api.delete(&format!("{air}/my%20key")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let got = get_group(&api, &group_id).await;
    let air_now = got["configuration"]["SoracomAir"].as_object().unwrap();
    assert!(!air_now.contains_key("userdata") && !air_now.contains_key("my key"));
    assert_eq!(air_now.len(), 5);
    let (status, error) = api.delete(&format!("{air}/userdata")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    assert!(
        !text(&error, "/message").contains("group"),
        "the group exists; the parameter does not: {error}"
    );
    let (status, error) = api
        .delete(&format!(
            "/v1/groups/{group_id}/configuration/SoracomBeam/enabled"
        ))
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);

    let (status, error) = api
        .put(
            &format!("/v1/groups/{group_id}/configuration/SoracomNope"),
            json!([{"key": "enabled", "value": true}]),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api.put(&air, json!([{"value": 1}])).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api.put(&air, json!([{"key": "", "value": 1}])).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let (status, error) = api
        .put(
            "/v1/groups/00000000-0000-0000-0000-000000000000/configuration/SoracomAir",
            json!([{"key": "useCustomDns", "value": true}]),
        )
        .await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    assert_eq!(
        get_group(&api, &group_id).await,
        got,
        "refusals change nothing"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn group_subscribers_and_delete_only_when_empty() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let group = create_group(&api, json!({"tags": {"name": "members"}})).await;
    let group_id = text(&group, "/groupId").to_string();
    let empty = create_group(&api, json!({"tags": {"name": "empty"}})).await;
    let empty_id = text(&empty, "/groupId").to_string();
    let mut members = Vec::new();
    for _ in 0..2 {
        let sim = api.create_sim().await;
        let id = text(&sim, "/simId").to_string();
        let (status, body) = api
            .post(
                &format!("/v1/sims/{id}/set_group"),
                json!({"groupId": group_id}),
            )
            .await;
        expect_status(status, &body, StatusCode::OK);
        members.push(id);
    }
    let outsider = api.create_sim().await;
    members.sort();

    let (status, list) = api.get(&format!("/v1/groups/{group_id}/subscribers")).await;
    expect_status(status, &list, StatusCode::OK);
    conforms("get", "/groups/{group_id}/subscribers", status, &list);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| text(s, "/simId"))
        .collect();
    assert_eq!(ids, members, "the group's SIMs (as Sim objects), no others");
    assert!(!ids.contains(&text(&outsider, "/simId")));
    for sim in list.as_array().unwrap() {
        assert_eq!(sim["groupId"], group_id);
        assert_eq!(sim["type"], "virtual");
    }
    let (status, none) = api.get(&format!("/v1/groups/{empty_id}/subscribers")).await;
    expect_status(status, &none, StatusCode::OK);
    assert_eq!(none, json!([]));

    let (status, error) = api.delete(&format!("/v1/groups/{group_id}")).await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    get_group(&api, &group_id).await;

    for id in &members {
        let (status, body) = api.post_empty(&format!("/v1/sims/{id}/unset_group")).await;
        expect_status(status, &body, StatusCode::OK);
    }
    let (status, body) = api.delete(&format!("/v1/groups/{group_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null());
    let (status, error) = api.get(&format!("/v1/groups/{group_id}")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = api.delete(&format!("/v1/groups/{group_id}")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, error) = api.get(&format!("/v1/groups/{group_id}/subscribers")).await;
    assert_error(status, &error, StatusCode::NOT_FOUND);
    let (status, list) = api.get("/v1/groups").await;
    expect_status(status, &list, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["groupId"], empty_id);
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Operator isolation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn another_operator_can_neither_see_nor_touch_anything() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let other = Checked(server.other_operator().await);

    let group = create_group(
        &api,
        json!({"tags": {"name": "private"}, "configuration": {"SoracomAir": {"userdata": "mine"}}}),
    )
    .await;
    let group_id = text(&group, "/groupId").to_string();
    let sim = api.create_sim().await;
    let sim_id = text(&sim, "/simId").to_string();
    let imsi = text(&sim["profiles"][&sim_id], "/primaryImsi").to_string();
    for (path, body) in [
        (
            format!("/v1/sims/{sim_id}/set_group"),
            json!({"groupId": group_id}),
        ),
        (
            format!("/v1/sims/{sim_id}/tags"),
            json!([{"tagName": "name", "tagValue": "mine"}]),
        ),
    ] {
        let (status, response) = api
            .call(
                if path.ends_with("tags") {
                    Method::PUT
                } else {
                    Method::POST
                },
                &path,
                Some(body),
            )
            .await;
        expect_status(status, &response, StatusCode::OK);
    }
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    let iccid = "8981100000000000090";
    let (status, body) = api
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": iccid, "imsi": "440101234567895", "subscription": "plan-D"}]),
        )
        .await;
    expect_status(status, &body, StatusCode::CREATED);
    validate_schema("Sim", &body[0]).unwrap_or_else(|e| panic!("{e}"));

    let (_, before) = api.get(&format!("/v1/sims/{sim_id}")).await;
    let peer_before = server
        .running
        .dataplane
        .engine
        .session(&imsi.as_str().into());
    assert!(peer_before.is_some());
    let group_before = get_group(&api, &group_id).await;

    let own_group = create_group(&other, json!({"tags": {"name": "theirs"}})).await;
    let own_group_id = text(&own_group, "/groupId").to_string();
    let own_sim = other.create_sim().await;
    let own_sim_id = text(&own_sim, "/simId").to_string();

    let s = format!("/v1/sims/{sim_id}");
    let g = format!("/v1/groups/{group_id}");
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, s.clone(), None),
        (
            Method::PUT,
            format!("{s}/tags"),
            Some(json!([{"tagName": "name", "tagValue": "stolen"}])),
        ),
        (Method::DELETE, format!("{s}/tags/name"), None),
        (Method::POST, format!("{s}/terminate"), None),
        (Method::POST, format!("{s}/enable_termination"), None),
        (Method::POST, format!("{s}/disable_termination"), None),
        (Method::POST, format!("{s}/sessions/arc"), Some(json!({}))),
        (Method::POST, format!("{s}/delete_session"), None),
        (Method::PUT, format!("{s}/credentials/arc"), Some(json!({}))),
        (
            Method::POST,
            format!("{s}/credentials/arc"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("{s}/credentials/arc"), None),
        (Method::POST, format!("{s}/unset_group"), None),
        (
            Method::POST,
            format!("{s}/set_group"),
            Some(json!({"groupId": own_group_id})),
        ),
        (Method::GET, format!("{s}/events/sessions"), None),
        (
            Method::POST,
            format!("/v1/sims/{iccid}/profiles/{iccid}/add_subscription"),
            Some(json!({"subscription": "planArc01", "type": "virtual"})),
        ),
        (Method::POST, format!("/v1/sims/{iccid}/deactivate"), None),
        (Method::GET, g.clone(), None),
        (Method::DELETE, g.clone(), None),
        (Method::GET, format!("{g}/subscribers"), None),
        (
            Method::PUT,
            format!("{g}/configuration/SoracomAir"),
            Some(json!([{"key": "userdata", "value": "stolen"}])),
        ),
        (
            Method::DELETE,
            format!("{g}/configuration/SoracomAir/userdata"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/sims/{own_sim_id}/set_group"),
            Some(json!({"groupId": group_id})),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, error) = other.call(method.clone(), &path, body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {path} by another operator: {error}"
        );
        assert_error(status, &error, StatusCode::NOT_FOUND);
    }

    for path in [
        "/v1/sims",
        "/v1/query/sims?name=mine",
        "/v1/query/sims?module_type=virtual",
    ] {
        let (status, list) = other.get(path).await;
        expect_status(status, &list, StatusCode::OK);
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| text(s, "/simId"))
            .collect();
        assert!(
            ids.iter().all(|id| *id == own_sim_id),
            "{path} shows only their own SIM: {list}"
        );
    }
    let (status, groups) = other.get("/v1/groups").await;
    expect_status(status, &groups, StatusCode::OK);
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["groupId"], own_group_id);
    // Importing an ICCID another operator holds is refused (ICCIDs are unique), naming no owner.
    let (status, error) = other
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": iccid, "imsi": "440101234567896", "subscription": "plan-D"}]),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert!(!error.to_string().contains(&api.operator_id), "{error}");

    // Nothing changed for the owner.
    let (_, after) = api.get(&format!("/v1/sims/{sim_id}")).await;
    assert_eq!(after, before, "the SIM is untouched");
    assert_eq!(after["tags"]["name"], "mine");
    assert_eq!(after["status"], "active");
    assert_eq!(after["groupId"], group_id);
    assert_eq!(
        server
            .running
            .dataplane
            .engine
            .session(&imsi.as_str().into()),
        peer_before,
        "the data plane is untouched"
    );
    assert_eq!(get_group(&api, &group_id).await, group_before);
    let (_, iot) = api.get(&format!("/v1/sims/{iccid}")).await;
    assert_eq!(iot["status"], "active");
    assert!(iot.get("arcSessionStatus").is_none());
    let (_, own_after) = other.get(&format!("/v1/sims/{own_sim_id}")).await;
    assert!(own_after.get("groupId").is_none());
    server.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// OpenAPI document
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn openapi_yaml_is_served_without_auth() {
    let server = TestServer::start().await;
    let response = server
        .client()
        .get(format!("{}/openapi.yaml", server.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(content_type.contains("yaml"), "{content_type}");
    let text = response.text().await.expect("body");
    assert!(
        text.contains("importIotSims"),
        "documents the arcd extension"
    );
    let document: Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert!(document["openapi"].is_string());
    assert!(document["paths"]["/sims/{sim_id}/sessions/arc"].is_object());
    server.running.shutdown().await;
}
