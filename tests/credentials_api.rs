//! SORACOM's credentials API (`/v1/credentials`) against a real arcd: secrets stored and never
//! returned, and the group configurations that use them checked when either is written.

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
use support::server::TestServer;

#[tokio::test]
async fn credentials_are_stored_never_returned_and_checked_against_groups() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let login = json!({"type": "username-password-credentials", "description": "broker",
                       "credentials": {"username": "funnel", "password": "s3cret-pw"}});
    let (status, created) = api.post("/v1/credentials/broker", login.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["credentialsId"], "broker");
    assert_eq!(created["type"], "username-password-credentials");
    let (status, again) = api.post("/v1/credentials/broker", login.clone()).await;
    assert_eq!(
        (status, again["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("CRD0001"))
    );
    let (status, listed) = api.get("/v1/credentials").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(!listed.to_string().contains("s3cret-pw"), "{listed}");
    for (path, body) in [
        (
            "/v1/credentials/x",
            json!({"type": "aws-credentials", "credentials": {"accessKeyId": "a"}}),
        ),
        (
            "/v1/credentials/x",
            json!({"type": "api-token-credentials", "credentials": {}}),
        ),
        (
            "/v1/credentials/a%20b",
            json!({"type": "api-token-credentials", "credentials": {"token": "t"}}),
        ),
    ] {
        let (status, answer) = api.post(path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    let (status, updated) = api
        .put(
            "/v1/credentials/broker",
            json!({"type": "username-password-credentials",
              "credentials": {"username": "funnel", "password": "rotated-pw"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert!(!updated.to_string().contains("rotated-pw"));
    let (status, _) = api.put("/v1/credentials/nobody", login.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A group naming unknown credentials, or a destination arcd cannot deliver to, is refused.
    let mqtt = |credentials_id: &str| {
        json!({"SoracomFunnel": {"enabled": true, "credentialsId": credentials_id,
        "destination": {"provider": "mqtt", "resourceUrl": "mqtt://127.0.0.1:1883/t"}}})
    };
    let (status, refused) = api
        .post("/v1/groups", json!({"configuration": mqtt("missing")}))
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("GRM0020")),
        "{refused}"
    );
    let (status, refused) = api
        .post("/v1/groups", json!({"configuration": {"SoracomFunnel": {"enabled": true,
            "destination": {"provider": "aws", "service": "kinesis", "resourceUrl": "https://kinesis.example/s"}}}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, group) = api
        .post("/v1/groups", json!({"configuration": mqtt("broker")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    // The group's MQTT destination cannot take a token, and cannot lose its credentials.
    let (status, refused) = api
        .put(
            "/v1/credentials/broker",
            json!({"type": "api-token-credentials", "credentials": {"token": "t"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, refused) = api.delete("/v1/credentials/broker").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let group_id = group["groupId"].as_str().expect("groupId");
    let (status, _) = api
        .delete(&format!(
            "/v1/groups/{group_id}/configuration/SoracomFunnel/enabled"
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.delete("/v1/credentials/broker").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.delete("/v1/credentials/broker").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
