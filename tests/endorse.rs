//! Endorse in-process: a device whose tunnel is up (an in-process boringtun client handshakes
//! and its packet to Endorse's address reaches the TUN side) asks Endorse's router, as the
//! service's socket on that address would see it, and the token verifies with the key set the
//! API publishes without authentication. The real socket on the TUN address, wireguard-go
//! devices and an outside verifier (PyJWT) are in scripts/e2e/endorse.sh.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use arcd::services::{endorse, ENDORSE};
use axum::body::{to_bytes, Body};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use support::devices::{join_group, secondary_virtual_subscriber};
use support::server::{Api, TestServer};
use support::wgclient::{destination_of, source_of, udp_packet, WgClient};
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(3);

struct Answer {
    status: StatusCode,
    location: Option<String>,
    allow_origin: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn token(&self) -> String {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["token"].as_str().expect("token").to_string()
    }
}

/// Calls Endorse as the device at `from` would through its tunnel.
async fn ask(server: &TestServer, from: Ipv4Addr, request: Request<Body>) -> Answer {
    let response = endorse::router(server.running.services.clone())
        .layer(MockConnectInfo(SocketAddr::from((from, 40_000))))
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|l| l.to_str().expect("ASCII").to_string())
    };
    let (location, allow_origin) = (header("location"), header("access-control-allow-origin"));
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        location,
        allow_origin,
        body,
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

/// The device's tunnel is up: its packet to Endorse's address comes out on the TUN side from its
/// own tunnel address, which is how the service identifies it.
async fn tunnel_up(server: &mut TestServer, sim: &Value) -> Ipv4Addr {
    let (mut device, ip) = WgClient::for_sim(sim, server.running.dataplane.udp_addrs[0].1).await;
    let hello = udp_packet(ip, ENDORSE, 40_000, 80, b"hello Endorse");
    assert!(device.connect(&hello, WAIT).await, "handshake");
    let tun = server.running.tun_peer.as_mut().expect("memory TUN");
    let inbound = tokio::time::timeout(WAIT, tun.from_dataplane.recv())
        .await
        .expect("the packet reaches the TUN")
        .expect("TUN open");
    assert_eq!(
        (source_of(&inbound), destination_of(&inbound)),
        (ip, ENDORSE)
    );
    ip
}

/// The published key set, fetched without an API key as a backend would.
async fn jwks(server: &TestServer, api: &Api) -> Value {
    let response = server
        .client()
        .get(format!("{}/v1/arcd/endorse/jwks", api.base))
        .send()
        .await
        .expect("JWKS request");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("JWKS JSON")
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// Verifies `token` with the key of `set` its header names; returns the claims.
fn verify(set: &Value, token: &str) -> Result<Value, String> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or("not a JWS")?;
    let (header, payload) = signing_input.split_once('.').ok_or("not a JWS")?;
    let header = decode_part(header);
    assert_eq!(header["alg"], "RS256");
    let key = set["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .ok_or("no key with the token's kid")?;
    let field = |name: &str| URL_SAFE_NO_PAD.decode(key[name].as_str().expect("field"));
    let public = RsaPublicKeyComponents {
        n: field("n").expect("n"),
        e: field("e").expect("e"),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    public
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            signing_input.as_bytes(),
            &signature,
        )
        .map_err(|_| "bad signature".to_string())?;
    Ok(decode_part(payload))
}

#[tokio::test]
async fn a_device_gets_a_token_that_verifies_with_the_published_key() {
    let mut server = TestServer::start().await;
    let api = server.login().await;
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let imsi = sim["profiles"][&sim_id]["primaryImsi"]
        .as_str()
        .expect("imsi")
        .to_string();
    let ip = tunnel_up(&mut server, &sim).await;

    // Without a group, Endorse is off.
    let off = ask(&server, ip, get("/")).await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
    assert_eq!(off.body, endorse::DISABLED.as_bytes());

    let group_id = join_group(
        &api,
        &sim_id,
        json!({"SoracomEndorse": {
            "enabled": true,
            "parametersToEndorse": {"imsi": true, "simId": true, "requestParameters": true},
            "tokenTimeoutSeconds": 120,
            "allowOrigin": "https://app.example.com",
        }}),
    )
    .await;
    let answer = ask(&server, ip, get("/?username=sora&sessionId=123")).await;
    let token = answer.token();
    let set = jwks(&server, &api).await;
    let claims = verify(&set, &token).expect("the token verifies");
    assert_eq!(claims["aud"], "soracom-endorse-audience");
    assert_eq!(claims["sub"], "soracom-endorse");
    assert_eq!(
        claims["soracom-endorse-claim"],
        json!({"imsi": imsi, "simId": sim_id,
               "requestParameters": {"username": "sora", "sessionId": "123"}})
    );
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    assert_eq!(exp.zip(iat).map(|(exp, iat)| exp - iat), Some(120));
    let now = arcd::store::now_ms() as u64 / 1000;
    assert!(iat.is_some_and(|iat| iat.abs_diff(now) <= 5));
    assert_eq!(claims["nbf"].as_u64(), iat.map(|iat| iat - 60));

    // allowOrigin: the answer and a browser's preflight carry it.
    let preflight = endorse::router(server.running.services.clone())
        .layer(MockConnectInfo(SocketAddr::from((ip, 40_000))))
        .oneshot(
            Request::options("/")
                .header("origin", "https://app.example.com")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        answer.allow_origin.as_deref(),
        Some("https://app.example.com")
    );

    // A POST body adds its fields the same way; every token has its own jti.
    let posted = ask(
        &server,
        ip,
        Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(r#"{"username": "posted"}"#))
            .expect("request"),
    )
    .await;
    let second = verify(&set, &posted.token()).expect("verifies");
    assert_eq!(
        second["soracom-endorse-claim"]["requestParameters"]["username"],
        "posted"
    );
    assert_ne!(second["jti"], claims["jti"]);

    // A changed claim or a signature from another token fails.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims.clone();
    forged["soracom-endorse-claim"]["imsi"] = json!("001010000000001");
    let forged_payload = URL_SAFE_NO_PAD.encode(forged.to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(verify(&set, &tampered), Err("bad signature".to_string()));

    // The key set is the same on every fetch (the key is made once and kept in the store).
    assert_eq!(jwks(&server, &api).await, set);

    // A bad value is refused at configuration time; switching off applies to the next request.
    let (status, body) = api
        .put(
            &format!("/v1/groups/{group_id}/configuration/SoracomEndorse"),
            json!([{"key": "tokenTimeoutSeconds", "value": 0}]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .put(
            &format!("/v1/groups/{group_id}/configuration/SoracomEndorse"),
            json!([{"key": "enabled", "value": false}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let off = ask(&server, ip, get("/")).await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_virtual_subscriber_is_endorsed_as_its_iot_sims_imsi_and_redirects_are_checked() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let (device, _) = secondary_virtual_subscriber(&server, &api).await;
    let (ip, iot_imsi) = (device.ip, device.imsi.as_str());
    join_group(
        &api,
        &device.sim_id,
        json!({"SoracomEndorse": {
            "enabled": true,
            "authorizedRedirectUrls": ["https://app.example.com/login"],
        }}),
    )
    .await;

    let token = ask(&server, ip, get("/")).await.token();
    let claims = verify(&jwks(&server, &api).await, &token).expect("verifies");
    assert_eq!(claims["soracom-endorse-claim"], json!({"imsi": iot_imsi}));

    let redirected = ask(
        &server,
        ip,
        get("/?redirect_url=https%3A%2F%2Fapp.example.com%2Flogin"),
    )
    .await;
    assert_eq!(redirected.status, StatusCode::FOUND);
    let location = redirected.location.expect("location");
    let token = location
        .strip_prefix("https://app.example.com/login?soracom_endorse_token=")
        .expect("the token in the redirect's query");
    verify(&jwks(&server, &api).await, token).expect("verifies");

    let refused = ask(
        &server,
        ip,
        get("/?redirect_url=https%3A%2F%2Fevil.example.com%2F"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.location, None);
}
