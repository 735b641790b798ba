//! HTTPS integration tests of what keeps one tenant (or one hostile client) from hurting the
//! others: the cap on `searchSims` values and the per-operator SIM quota (`sims.max_per_operator`),
//! against an in-process arcd.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::checked::{expect_status, Checked};
use support::server::{assert_error, TestServer};

/// `count` distinct search values `vNNNN` joined with commas.
fn values(count: usize) -> String {
    (0..count)
        .map(|i| format!("v{i:04}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn search_sims_caps_the_number_of_values_with_a_400_naming_the_limit() {
    let server = TestServer::start().await;
    let api = Checked(server.login().await);
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();

    // A thousand values used to reach SQLite's expression depth limit and answer 500.
    let (status, error) = api
        .get(&format!("/v1/query/sims?sim_id={}", values(1000)))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sim_id") && message.contains("100"),
        "the message names the parameter and the limit: {error}"
    );

    // The per-parameter limit itself is served, and still finds the SIM.
    let mut at_limit: Vec<String> = (0..99).map(|i| format!("v{i:04}")).collect();
    at_limit.push(sim_id.clone());
    let (status, found) = api
        .get(&format!("/v1/query/sims?sim_id={}", at_limit.join(",")))
        .await;
    expect_status(status, &found, StatusCode::OK);
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    let (status, error) = api
        .get(&format!("/v1/query/sims?sim_id={}", values(101)))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);

    // Repeating a parameter counts every value; all parameters together have their own limit.
    let (status, found) = api
        .get(&format!(
            "/v1/query/sims?search_type=or&sim_id={}&imsi={}",
            values(100),
            values(100)
        ))
        .await;
    expect_status(status, &found, StatusCode::OK);
    let (status, error) = api
        .get(&format!(
            "/v1/query/sims?search_type=or&sim_id={}&imsi={}&name=ab",
            values(100),
            values(100)
        ))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("200"),
        "the message names the total limit: {error}"
    );
    let (status, error) = api
        .get(&format!(
            "/v1/query/sims?sim_id={}&sim_id={}",
            values(60),
            values(60)
        ))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    server.running.shutdown().await;
}

#[tokio::test]
async fn sim_quota_refuses_one_operator_and_leaves_the_others_alone() {
    let server = TestServer::start_with(|config| config.sims.max_per_operator = 3).await;
    let greedy = Checked(server.login().await);
    let other = Checked(server.other_operator().await);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(greedy.create_sim().await);
    }
    let (status, error) = greedy
        .post(
            "/v1/sims",
            json!({"type": "virtual", "subscription": "planArc01"}),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "SEM0070", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("limit of 3") && message.contains("sims.max_per_operator"),
        "the message names the limit: {error}"
    );
    let (status, listed) = greedy.get("/v1/sims").await;
    expect_status(status, &listed, StatusCode::OK);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(3),
        "nothing was created"
    );
    let (status, error) = greedy
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": "8981100000000000001", "imsi": "440100000000001", "subscription": "plan-D"}]),
        )
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "SEM0070", "imports count too: {error}");

    // Another operator still creates SIMs.
    other.create_sim().await;

    // A terminated SIM no longer counts.
    let sim_id = held[0]["simId"].as_str().expect("simId").to_string();
    let (status, body) = greedy
        .post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    let (status, body) = greedy
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    expect_status(status, &body, StatusCode::OK);
    greedy.create_sim().await;
    server.running.shutdown().await;
}
