#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]
mod support;

use reqwest::StatusCode;
use support::server::TestServer;

#[tokio::test]
async fn create_and_get_over_verified_https() {
    let server = TestServer::start().await;
    assert!(server.base.starts_with("https://"));
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let (status, got) = api.get(&format!("/v1/sims/{sim_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["simId"], sim["simId"]);
    assert!(got["profiles"][sim_id]["arcClientPeerPrivateKey"].is_null());
    support::conformance::validate_response("post", "/sims", 201, &sim).expect("conforms");
    server.running.shutdown().await;
}
