//! The requests the official Arc client (soratun) sends in `soratun bootstrap authkey`, replayed
//! the way it sends them (docs/SORACOM-CLIENTS.md): its headers, `Host: api.soracom.io` or
//! `g.api.soracom.io` (those names resolved to arcd), and an endpoint with a trailing slash
//! (`//v1/...`). What soratun reads from the answers must parse as its Go code parses it: keys
//! are base64 of 32 bytes, the endpoint is host:port, every allowed IP is a CIDR, the client
//! address a plain IP. soratun itself is not run here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::Ipv4Addr;

use arcd::config::RendezvousPointConfig;
use base64::Engine;
use ipnet::Ipv4Net;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::server::TestServer;

const TOKYO_ENDPOINT: &str = "tokyo.example.net:11010";
const FRANKFURT_ENDPOINT: &str = "frankfurt.example.net:11011";

/// One request as soratun's API client builds it: `<endpoint>/v1<path>`, JSON, its headers.
async fn soratun_call(
    server: &TestServer,
    host: &str,
    endpoint_slash: &str,
    path: &str,
    body: Value,
    auth: Option<&(String, String)>,
) -> (StatusCode, Value) {
    let mut request = server
        .client()
        .post(format!("{}{endpoint_slash}/v1{path}", server.base))
        .header("Host", host)
        .header("Content-Type", "application/json")
        .header("X-Soracom-Lang", "en")
        .header("User-Agent", "soratun/1.2.7 (linux amd64 go1.23.4)")
        .body(body.to_string());
    if let Some((api_key, token)) = auth {
        // Go canonicalises header names: X-Soracom-Api-Key.
        request = request
            .header("X-Soracom-Api-Key", api_key)
            .header("X-Soracom-Token", token);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    (status, response.json().await.expect("JSON answer"))
}

#[track_caller]
fn assert_wireguard_key(value: &Value, what: &str) {
    let text = value.as_str().unwrap_or_else(|| panic!("{what}: {value}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("{what} is not base64 ({e}): {text}"));
    assert_eq!(bytes.len(), 32, "{what}: {text}");
}

/// The session fields soratun parses (`arcSessionStatus`, or a createArcSession answer).
#[track_caller]
fn assert_session_soratun_parses(session: &Value, endpoint: &str) {
    assert_wireguard_key(&session["arcServerPeerPublicKey"], "arcServerPeerPublicKey");
    assert_eq!(session["arcServerEndpoint"], endpoint, "{session}");
    let allowed = session["arcAllowedIPs"].as_array().expect("arcAllowedIPs");
    assert!(!allowed.is_empty(), "{session}");
    for cidr in allowed {
        cidr.as_str()
            .and_then(|c| c.parse::<Ipv4Net>().ok())
            .unwrap_or_else(|| panic!("arcAllowedIPs item is not a CIDR: {cidr}"));
    }
    session["arcClientPeerIpAddress"]
        .as_str()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .unwrap_or_else(|| panic!("arcClientPeerIpAddress is not a plain IP: {session}"));
}

#[tokio::test]
async fn bootstrap_authkey_as_soratun_sends_it() {
    let server = TestServer::start_with(|config| {
        config.rendezvous_points[0].endpoint = TOKYO_ENDPOINT.into();
        config.rendezvous_points.push(RendezvousPointConfig {
            id: "eu-central-1".into(),
            name: None,
            listen: "127.0.0.1:0".parse().expect("literal"),
            endpoint: FRANKFURT_ENDPOINT.into(),
            pool: "10.65.0.0/16".parse().expect("literal"),
            allowed_ips: vec!["100.127.0.0/16".parse().expect("literal")],
        });
    })
    .await;
    // --coverage-type jp / g; "/" = a profile endpoint written with a trailing slash.
    for (host, slash, endpoint) in [
        ("api.soracom.io", "", TOKYO_ENDPOINT),
        ("g.api.soracom.io", "", FRANKFURT_ENDPOINT),
        ("api.soracom.io", "/", TOKYO_ENDPOINT),
    ] {
        let what = format!("Host {host}, endpoint slash {slash:?}");
        let credentials = json!({
            "authKeyId": server.root.auth_key_id,
            "authKey": server.root.auth_key,
            "tokenTimeoutSeconds": 300,
        });
        let (status, auth) = soratun_call(&server, host, slash, "/auth", credentials, None).await;
        assert_eq!(status, StatusCode::OK, "{what}: {auth}");
        let auth = (
            auth["apiKey"].as_str().expect("apiKey").to_string(),
            auth["token"].as_str().expect("token").to_string(),
        );

        // First bootstrap (no arc.json yet): createSim, key pair from profiles[simId].
        let new_sim = json!({"type": "virtual", "subscription": "planArc01"});
        let (status, sim) = soratun_call(&server, host, slash, "/sims", new_sim, Some(&auth)).await;
        assert!(status.is_success(), "{what}: {status} {sim}");
        let sim_id = sim["simId"].as_str().expect("simId").to_string();
        let profile = &sim["profiles"][&sim_id];
        assert_wireguard_key(
            &profile["arcClientPeerPrivateKey"],
            "arcClientPeerPrivateKey",
        );
        assert_wireguard_key(&profile["arcClientPeerPublicKey"], "arcClientPeerPublicKey");
        assert!(profile["primaryImsi"].is_string(), "{what}: {profile}");
        assert!(sim["operatorId"].is_string() && sim["status"].is_string());
        assert_session_soratun_parses(&sim["arcSessionStatus"], endpoint);

        // Later bootstraps (arc.json exists): createArcSession with `{}`.
        let path = format!("/sims/{sim_id}/sessions/arc");
        let (status, session) =
            soratun_call(&server, host, slash, &path, json!({}), Some(&auth)).await;
        assert!(status.is_success(), "{what}: {status} {session}");
        assert_session_soratun_parses(&session, endpoint);
    }
    server.running.shutdown().await;
}
