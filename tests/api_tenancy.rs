//! HTTPS integration tests of what keeps one tenant (or one hostile client) from hurting the
//! others: the cap on `searchSims` values and the per-operator SIM quota, against an in-process
//! arcd.

mod support;

use reqwest::StatusCode;
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
