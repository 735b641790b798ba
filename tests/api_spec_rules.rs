//! Where the official schemas and arcd's rules meet (the mismatches a schemathesis run found):
//! arcd follows the official schema (a `limit` of any integer, required bodies, no `null`
//! fields, typed query parameters) or, where it is stricter on purpose, says so in the document
//! it serves (`request_rules` in scripts/openapi-arcd-overlay.yaml).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::server::{assert_error, read, Api, TestServer};

/// GET `path`: status, `x-soracom-next-key` header, body.
async fn get_page(api: &Api, path: &str) -> (StatusCode, Option<String>, Value) {
    let response = api
        .request(Method::GET, path)
        .send()
        .await
        .expect("request");
    let (status, headers, body) = read(response).await;
    let next = headers
        .get("x-soracom-next-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, next, body)
}

fn len(body: &Value) -> usize {
    body.as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .len()
}

async fn created(api: &Api, path: &str, body: Value) -> Value {
    let (status, answer) = api.post(path, body).await;
    assert_eq!(status, StatusCode::CREATED, "POST {path}: {answer}");
    answer
}

async fn count(api: &Api, path: &str) -> usize {
    let (status, body) = api.get(&format!("{path}?limit=1000")).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    len(&body)
}

#[tokio::test]
async fn limit_outside_an_unbounded_official_range_is_clamped() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let mut sim_ids = Vec::new();
    for _ in 0..3 {
        let sim = api.create_sim().await;
        sim_ids.push(sim["simId"].as_str().expect("simId").to_string());
    }
    let group = created(&api, "/v1/groups", json!({})).await;
    created(&api, "/v1/groups", json!({})).await;
    let group_id = group["groupId"].as_str().expect("groupId");
    for sim_id in &sim_ids {
        let (status, body) = api
            .post(
                &format!("/v1/sims/{sim_id}/set_group"),
                json!({"groupId": group_id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    created(&api, "/v1/virtual_private_gateways", json!({"type": 14})).await;
    created(&api, "/v1/virtual_private_gateways", json!({"type": 15})).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{}/delete_session", sim_ids[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Listings whose official `limit` is any integer, with how many items they hold here.
    let listings = [
        ("/v1/sims".to_string(), 3),
        ("/v1/groups".to_string(), 2),
        (format!("/v1/groups/{group_id}/subscribers"), 3),
        ("/v1/virtual_private_gateways".to_string(), 2),
        (format!("/v1/sims/{}/events/sessions", sim_ids[0]), 3),
    ];
    for (path, total) in &listings {
        for small in ["0", "-5", "-99999999999999999999"] {
            let url = format!("{path}?limit={small}");
            let (status, next, body) = get_page(&api, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            assert_eq!(len(&body), 1, "{url} reads as limit=1: {body}");
            assert!(next.is_some(), "{url}: more pages follow");
        }
        for large in ["1001", "5000", "99999999999999999999"] {
            let url = format!("{path}?limit={large}");
            let (status, next, body) = get_page(&api, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            assert_eq!(len(&body), *total, "{url} reads as limit=1000");
            assert_eq!(next, None, "{url}: one page");
        }
    }
    let (status, _, body) = get_page(&api, "/v1/data/resources?limit=0").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // searchSims: the official schema sets a maximum of 100 but no minimum.
    let (status, next, body) = get_page(&api, "/v1/query/sims?limit=0").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(len(&body), 1, "{body}");
    assert!(next.is_some());
    for outside in ["101", "-2147483649"] {
        let (status, body) = api.get(&format!("/v1/query/sims?limit={outside}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let (status, body) = api.get("/v1/query/sims?limit=100").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(len(&body), 3);
    server.running.shutdown().await;
}

#[tokio::test]
async fn typed_query_parameters_refuse_empty_and_unknown_values() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    // Any IMSI will do: the parameters are checked before anything is looked up.
    let imsi = "999990000000001";
    let refused = [
        "/v1/sims?limit=".to_string(),
        "/v1/groups?limit=".to_string(),
        "/v1/groups?tag_value_match_mode=".to_string(),
        "/v1/groups?tag_value_match_mode=regex".to_string(),
        "/v1/virtual_private_gateways?tag_name=a&tag_value=b&tag_value_match_mode=".to_string(),
        "/v1/query/sims?session_status=".to_string(),
        "/v1/query/sims?search_type=".to_string(),
        "/v1/query/sims?limit=".to_string(),
        format!("/v1/sims/{sim_id}/events/sessions?from="),
        format!("/v1/sims/{sim_id}/events/sessions?to="),
        "/v1/data/resources?resource_type=".to_string(),
        "/v1/data/resources?limit=".to_string(),
        format!("/v1/sims/{sim_id}/data?sort="),
        format!("/v1/sims/{sim_id}/data?to="),
        format!("/v1/subscribers/{imsi}/data?from="),
        format!("/v1/data/Subscriber/{imsi}?sort="),
    ];
    for path in &refused {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    // Control: an empty free-text parameter counts as absent.
    for path in [
        "/v1/sims?last_evaluated_key=",
        "/v1/groups?tag_name=",
        "/v1/query/sims?name=",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    server.running.shutdown().await;
}

/// SIM (as getSim shows it), groups and VPGs, to prove a refused request changed nothing.
async fn state_of(api: &Api, sim_id: &str) -> (Value, usize, usize) {
    let (status, sim) = api.get(&format!("/v1/sims/{sim_id}")).await;
    assert_eq!(status, StatusCode::OK, "{sim}");
    (
        sim,
        count(api, "/v1/groups").await,
        count(api, "/v1/virtual_private_gateways").await,
    )
}

#[tokio::test]
async fn required_bodies_may_be_neither_missing_nor_null() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let group = created(&api, "/v1/groups", json!({})).await;
    let group_id = group["groupId"].as_str().expect("groupId");
    let vpg = created(&api, "/v1/virtual_private_gateways", json!({"type": 14})).await;
    let vpg_id = vpg["vpgId"].as_str().expect("vpgId");
    // Every operation whose official (or arcd) request body is required.
    let operations = [
        (Method::POST, "/v1/sims".to_string()),
        (Method::POST, "/v1/groups".to_string()),
        (Method::POST, format!("/v1/sims/{sim_id}/sessions/arc")),
        (Method::PUT, format!("/v1/sims/{sim_id}/credentials/arc")),
        (Method::POST, format!("/v1/sims/{sim_id}/credentials/arc")),
        (Method::POST, format!("/v1/sims/{sim_id}/set_group")),
        (Method::PUT, format!("/v1/sims/{sim_id}/tags")),
        (
            Method::PUT,
            format!("/v1/groups/{group_id}/configuration/SoracomAir"),
        ),
        (Method::POST, "/v1/virtual_private_gateways".to_string()),
        (
            Method::PUT,
            format!("/v1/arcd/virtual_private_gateways/{vpg_id}/device_to_device"),
        ),
        (Method::POST, "/v1/arcd/iot_sims".to_string()),
    ];
    let before = state_of(&api, sim_id).await;
    for (method, path) in &operations {
        for body in [None, Some(Value::Null)] {
            let what = format!("{method} {path} with body {body:?}");
            let (status, answer) = api.call(method.clone(), path, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
            assert_error(status, &answer, StatusCode::BAD_REQUEST);
            assert_eq!(state_of(&api, sim_id).await, before, "{what} changed state");
        }
    }
    // Control: `{}` is the body of the operations whose fields are all optional.
    for (method, path) in [
        (Method::POST, "/v1/groups".to_string()),
        (Method::POST, format!("/v1/sims/{sim_id}/sessions/arc")),
        (Method::PUT, format!("/v1/sims/{sim_id}/credentials/arc")),
    ] {
        let (status, answer) = api.call(method.clone(), &path, Some(json!({}))).await;
        assert!(status.is_success(), "{method} {path} {{}}: {answer}");
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn request_fields_are_never_null() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let (status, body) = api
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": "8981100000000000017", "imsi": "440101234567890",
                    "subscription": "plan-D"}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let add = "/v1/sims/8981100000000000017/profiles/8981100000000000017/add_subscription";
    let vpgs = "/v1/virtual_private_gateways";
    let cases = [
        (
            Method::POST,
            vpgs.to_string(),
            json!({"type": 14, "deviceSubnetCidrRange": null}),
        ),
        (
            Method::POST,
            vpgs.to_string(),
            json!({"type": 14, "placement": null}),
        ),
        (
            Method::POST,
            vpgs.to_string(),
            json!({"type": 14, "placement": {"region": null}}),
        ),
        (
            Method::POST,
            vpgs.to_string(),
            json!({"type": 14, "useInternetGateway": null}),
        ),
        (
            Method::POST,
            vpgs.to_string(),
            json!({"type": 14, "soracomTransitGateway": {"asn": "x"}}),
        ),
        (
            Method::POST,
            vpgs.to_string(),
            json!({"type": 14, "soracomTransitGateway": null}),
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": null}),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            json!({"arcClientPeerPublicKey": null}),
        ),
        (
            Method::POST,
            add.to_string(),
            json!({"subscription": "planArc01", "type": null}),
        ),
        (
            Method::POST,
            add.to_string(),
            json!({"subscription": "planArc01", "type": "virtual", "enable": null}),
        ),
        (
            Method::POST,
            add.to_string(),
            json!({"subscription": "planArc01", "type": "virtual", "tag": "not a tag!"}),
        ),
    ];
    let before = state_of(&api, sim_id).await;
    let iot_before = api.get("/v1/sims/8981100000000000017").await;
    for (method, path, body) in cases {
        let what = format!("{method} {path} {body}");
        let (status, answer) = api.call(method, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_error(status, &answer, StatusCode::BAD_REQUEST);
        assert_eq!(state_of(&api, sim_id).await, before, "{what} changed state");
        assert_eq!(
            api.get("/v1/sims/8981100000000000017").await,
            iot_before,
            "{what}"
        );
    }
    // Control: the same fields with values of their type are accepted.
    let (status, body) = api
        .post(
            vpgs,
            json!({"type": 14, "placement": {"region": "ap-northeast-1"},
                   "useInternetGateway": false, "soracomTransitGateway": {"asn": 64512}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api
        .post(
            add,
            json!({"subscription": "planArc01", "type": "virtual", "enable": true,
                   "tag": "OP0012345678:addSubscription"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.running.shutdown().await;
}

#[tokio::test]
async fn arrays_are_refused_where_the_schema_wants_an_object() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let group = created(&api, "/v1/groups", json!({})).await;
    let group_id = group["groupId"].as_str().expect("groupId");
    let cases = [
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            json!([]),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/credentials/arc"),
            json!([]),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/sessions/arc"),
            json!([]),
        ),
        (Method::POST, "/v1/groups".to_string(), json!([])),
        (
            Method::POST,
            "/v1/sims".to_string(),
            json!(["virtual", "planArc01"]),
        ),
        (
            Method::PUT,
            format!("/v1/sims/{sim_id}/tags"),
            json!([["name", "x"]]),
        ),
        (
            Method::PUT,
            format!("/v1/groups/{group_id}/configuration/SoracomAir"),
            json!([["metadata", {}]]),
        ),
        (
            Method::POST,
            format!("/v1/sims/{sim_id}/set_group"),
            json!([group_id]),
        ),
        (
            Method::POST,
            "/v1/virtual_private_gateways".to_string(),
            json!({"type": 14, "placement": []}),
        ),
    ];
    let before = state_of(&api, sim_id).await;
    for (method, path, body) in cases {
        let what = format!("{method} {path} {body}");
        let (status, answer) = api.call(method, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_error(status, &answer, StatusCode::BAD_REQUEST);
        assert_eq!(state_of(&api, sim_id).await, before, "{what} changed state");
    }
    server.running.shutdown().await;
}

/// The served document's component schema `name`, as a JSON Schema validator.
fn served_schema(document: &Value, name: &str) -> jsonschema::Validator {
    let schema = &document["components"]["schemas"][name];
    assert!(schema.is_object(), "{name} is in the served document");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(schema)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test]
async fn stricter_rules_are_refused_and_written_in_the_served_document() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let group = created(&api, "/v1/groups", json!({})).await;
    let group_id = group["groupId"].as_str().expect("groupId");
    let text = server
        .client()
        .get(format!("{}/openapi.yaml", server.base))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let document: Value = serde_yaml::from_str(&text).expect("YAML");

    // (schema, operation, a body arcd refuses, a body it accepts)
    let rules = [
        (
            "TagUpdateRequest",
            (Method::PUT, format!("/v1/sims/{sim_id}/tags")),
            json!({"tagName": "", "tagValue": "x"}),
            json!({"tagName": "t", "tagValue": "x"}),
        ),
        (
            "GroupConfigurationUpdateRequest",
            (
                Method::PUT,
                format!("/v1/groups/{group_id}/configuration/SoracomAir"),
            ),
            json!({"key": "", "value": 1}),
            json!({"key": "k", "value": 1}),
        ),
        (
            "SetGroupRequest",
            (Method::POST, format!("/v1/sims/{sim_id}/set_group")),
            json!({}),
            json!({"groupId": group_id}),
        ),
    ];
    for (schema_name, (method, path), refused, accepted) in rules {
        let schema = served_schema(&document, schema_name);
        // The two array bodies take the item; set_group takes the object itself.
        let wrap = |item: &Value| {
            if schema_name == "SetGroupRequest" {
                item.clone()
            } else {
                json!([item])
            }
        };
        let (status, answer) = api.call(method.clone(), &path, Some(wrap(&refused))).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST);
        assert!(
            !schema.is_valid(&refused),
            "{schema_name}: arcd refuses {refused}, so the served document must too"
        );
        let description = document["components"]["schemas"][schema_name]["description"]
            .as_str()
            .unwrap_or("");
        assert!(
            description.contains("**arcd:**"),
            "{schema_name} explains the rule: {description:?}"
        );
        let (status, answer) = api.call(method, &path, Some(wrap(&accepted))).await;
        assert_eq!(status, StatusCode::OK, "{schema_name} {accepted}: {answer}");
        assert!(schema.is_valid(&accepted), "{schema_name}: {accepted}");
    }
    server.running.shutdown().await;
}
