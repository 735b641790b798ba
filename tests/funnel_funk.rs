//! Funnel and Funk in-process (the credentials API is tests/credentials_api.rs): the services' routers and raw handlers are
//! called as a device behind a tunnel address would call them, against a real arcd (store, peer
//! table, delivery queue), with real destinations on loopback: an HTTP sink, a function, and a
//! Mosquitto broker when it is installed (required when ARCD_REQUIRE_E2E is set). The sockets on
//! the TUN addresses, reached through wireguard-go, are proven by scripts/e2e/funnel.sh.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arcd::services::{funk, funnel, unified};
use axum::body::{to_bytes, Body};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use support::devices::{join_group, secondary_virtual_subscriber};
use support::server::TestServer;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(router: Router, from: Ipv4Addr, request: Request<Body>) -> Answer {
    let response = router
        .layer(MockConnectInfo(SocketAddr::from((from, 40_000))))
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Answer { status, body }
}

fn post(host: &str, body: &str) -> Request<Body> {
    Request::post("/")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// An HTTP server on loopback that records requests and answers `status` with `answer` after
/// `delay`.
async fn sink(
    status: StatusCode,
    answer: &'static str,
    delay: Duration,
) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().fallback(move |request: Request<Body>| {
        let log = log.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default()
                .to_vec();
            log.lock().expect("log").push(Received {
                headers: parts.headers,
                body,
            });
            tokio::time::sleep(delay).await;
            (status, [("content-type", "application/json")], answer)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Funnel

#[tokio::test]
async fn funnel_wraps_messages_with_the_primary_imsi_and_delivers_them_to_a_webhook() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let (device, virtual_imsi) = secondary_virtual_subscriber(&server, &api).await;
    let (addr, seen) = sink(StatusCode::OK, "{}", Duration::ZERO).await;
    let (status, _) = api
        .post(
            "/v1/credentials/hook",
            json!({"type": "api-token-credentials", "credentials": {"token": "hook-token"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    join_group(
        &api,
        &device.sim_id,
        json!({"SoracomFunnel": {"enabled": true, "credentialsId": "hook",
        "contentType": "json",
        "destination": {"provider": "http", "resourceUrl": format!("http://{addr}/funnel")}}}),
    )
    .await;
    let ctx = server.running.services.clone();

    let answer = call(
        funnel::router(ctx.clone()),
        device.ip,
        post("funnel.soracom.io", r#"{"t":21.5}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text());
    let udp = funnel::raw_handler(ctx.clone(), funnel::Protocol::Udp);
    let from = SocketAddr::from((device.ip, 40_001));
    assert_eq!(udp(from, br#"{"t":22}"#.to_vec()).await, b"200\n");
    assert_eq!(
        udp(from, b"not json".to_vec()).await,
        format!("400 {}\n", funnel::INVALID_JSON).into_bytes()
    );
    let received = wait_for("two deliveries", || {
        let seen = seen.lock().expect("log");
        (seen.len() >= 2).then(|| seen.clone())
    })
    .await;
    let mut protocols = Vec::new();
    for got in &received {
        assert_eq!(got.headers["authorization"], "Bearer hook-token");
        let envelope: Value = serde_json::from_slice(&got.body).expect("JSON envelope");
        assert_eq!(envelope["imsi"], device.imsi.as_str(), "{envelope}");
        assert_ne!(envelope["imsi"], virtual_imsi.as_str());
        assert_eq!(envelope["simId"], device.sim_id.as_str());
        assert_eq!(envelope["credentialsId"], "hook");
        assert!(envelope["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000));
        protocols.push((
            envelope["sourceProtocol"].to_string(),
            envelope["payloads"].clone(),
        ));
    }
    protocols.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        protocols,
        [
            ("\"http\"".into(), json!({"t": 21.5})),
            ("\"udp\"".into(), json!({"t": 22}))
        ]
    );
    assert!(!received
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains("not json")));
}

#[tokio::test]
async fn funnel_is_refused_when_off_and_never_keeps_a_device_waiting_for_a_bad_destination() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let (device, _) = secondary_virtual_subscriber(&server, &api).await;
    let ctx = server.running.services.clone();
    let off = call(
        funnel::router(ctx.clone()),
        device.ip,
        post("funnel.soracom.io", "{}"),
    )
    .await;
    assert_eq!(
        (off.status, off.text().as_str()),
        (StatusCode::BAD_REQUEST, funnel::DISABLED)
    );

    let (refusing, _) = sink(StatusCode::INTERNAL_SERVER_ERROR, "{}", Duration::ZERO).await;
    let group_id = join_group(
        &api,
        &device.sim_id,
        json!({"SoracomFunnel": {"enabled": true,
        "destination": {"provider": "http", "resourceUrl": format!("http://{refusing}/")}}}),
    )
    .await;
    let stats = &ctx.funnel.stats;
    let started = Instant::now();
    let answer = call(
        funnel::router(ctx.clone()),
        device.ip,
        post("funnel.soracom.io", "{}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the device waited"
    );
    // Four tries with pauses of 0.5, 1 and 2 s, then counted as failed.
    wait_for("the webhook failure to be counted", || {
        (stats.failed.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert!(stats.retried.load(Ordering::Relaxed) >= 3);

    // An MQTT broker nobody runs: the device is answered at once, the connection failures count.
    let port = closed_port();
    let (status, body) = api
        .put(&format!("/v1/groups/{group_id}/configuration/SoracomFunnel"),
             json!([{"key": "destination", "value": {"provider": "mqtt", "resourceUrl": format!("mqtt://127.0.0.1:{port}/t")}}]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let failed_before = stats.failed.load(Ordering::Relaxed);
    let started = Instant::now();
    let tcp = funnel::raw_handler(ctx.clone(), funnel::Protocol::Tcp);
    assert_eq!(
        tcp(SocketAddr::from((device.ip, 40_002)), b"{}".to_vec()).await,
        b"200\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the device waited"
    );
    wait_for("the MQTT failure to be counted", || {
        (stats.failed.load(Ordering::Relaxed) > failed_before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn funnel_publishes_to_a_real_mosquitto_with_the_stored_login() {
    let Some(broker) = support::mosquitto::start() else {
        return;
    };
    let server = TestServer::start().await;
    let api = server.login().await;
    let (device, _) = secondary_virtual_subscriber(&server, &api).await;
    let (status, _) = api
        .post(
            "/v1/credentials/mosquitto",
            json!({"type": "username-password-credentials",
              "credentials": {"username": "funnel", "password": "broker-pw"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    join_group(&api, &device.sim_id, json!({"SoracomFunnel": {"enabled": true, "credentialsId": "mosquitto",
        "destination": {"provider": "mqtt", "resourceUrl": format!("mqtt://127.0.0.1:{}/devices/data", broker.port)}}}))
    .await;

    // A subscriber of our own, subscribed before anything is sent.
    let mut options = rumqttc::MqttOptions::new("test-subscriber", "127.0.0.1", broker.port);
    options.set_credentials("funnel", "broker-pw");
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe("devices/data", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => panic!("no SUBACK from mosquitto"),
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto never accepted the subscription"
        );
    }

    let ctx = server.running.services.clone();
    const SENT: usize = 50;
    let tcp = funnel::raw_handler(ctx.clone(), funnel::Protocol::Tcp);
    for n in 0..SENT {
        let reply = tcp(
            SocketAddr::from((device.ip, 40_003)),
            format!(r#"{{"n":{n}}}"#).into_bytes(),
        )
        .await;
        assert_eq!(reply, b"200\n");
    }
    let mut got = Vec::new();
    while got.len() < SENT {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)))) => {
                let envelope: Value = serde_json::from_slice(&publish.payload).expect("JSON");
                assert_eq!(envelope["imsi"], device.imsi.as_str());
                assert_eq!(envelope["sourceProtocol"], "tcp");
                got.push(envelope["payloads"]["n"].as_u64().expect("n"));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber lost mosquitto: {e}"),
            Err(_) => panic!("only {} of {SENT} messages arrived", got.len()),
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..SENT as u64).collect::<Vec<_>>());
    wait_for("every PUBACK", || {
        (ctx.funnel.stats.delivered.load(Ordering::Relaxed) >= SENT as u64).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Funk and the unified endpoint

#[tokio::test]
async fn funk_returns_the_functions_answer_and_refuses_when_off() {
    let server = TestServer::start_with(|c| c.services.funk_timeout_seconds = 1).await;
    let api = server.login().await;
    let (device, _) = secondary_virtual_subscriber(&server, &api).await;
    let ctx = server.running.services.clone();
    let router = || unified::router(ctx.clone());

    let off = call(router(), device.ip, post("funk.soracom.io", "{}")).await;
    assert_eq!(
        (off.status, off.text().as_str()),
        (StatusCode::BAD_REQUEST, funk::DISABLED)
    );

    let (function, seen) = sink(StatusCode::OK, r#"{"command":"reboot"}"#, Duration::ZERO).await;
    let group_id = join_group(&api, &device.sim_id, json!({"SoracomFunk": {"enabled": true,
        "destination": {"provider": "http", "resourceUrl": format!("http://{function}/function/f")}}}))
    .await;
    let answer = call(
        router(),
        device.ip,
        post("funk.soracom.io", r#"{"temp":30}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), r#"{"command":"reboot"}"#);
    let got = seen
        .lock()
        .expect("log")
        .pop()
        .expect("the function was called");
    assert_eq!(got.body, br#"{"temp":30}"#);
    assert_eq!(got.headers["x-soracom-imsi"], device.imsi.as_str());
    assert_eq!(got.headers["x-soracom-sim-id"], device.sim_id.as_str());

    // TCP/UDP 23080 on the unified address: Funk alone answers the function's body.
    let udp = unified::raw_handler(ctx.clone(), funnel::Protocol::Udp);
    let reply = udp(SocketAddr::from((device.ip, 40_004)), b"{}".to_vec()).await;
    assert_eq!(reply, br#"{"command":"reboot"}"#);

    // Funnel and Funk both on: the unified answer carries each.
    let (hook, delivered) = sink(StatusCode::OK, "{}", Duration::ZERO).await;
    let (status, body) = api
        .put(&format!("/v1/groups/{group_id}/configuration/SoracomFunnel"),
             json!([{"key": "enabled", "value": true},
                    {"key": "destination", "value": {"provider": "http", "resourceUrl": format!("http://{hook}/")}}]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let both = call(router(), device.ip, post("uni.soracom.io", r#"{"n":1}"#)).await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.text());
    let body: Value = serde_json::from_slice(&both.body).expect("JSON");
    assert_eq!(body["body"]["detail"]["funnel"]["statusCode"], 204);
    assert_eq!(body["body"]["detail"]["funk"]["body"]["command"], "reboot");
    // The same over UDP 23080: the unified JSON, as the device sent one message to both.
    let reply = udp(
        SocketAddr::from((device.ip, 40_005)),
        br#"{"n":2}"#.to_vec(),
    )
    .await;
    let reply: Value = serde_json::from_slice(&reply).expect("unified JSON over UDP");
    assert_eq!(reply["statusCode"], 200, "{reply}");
    assert_eq!(reply["body"]["detail"]["funnel"]["statusCode"], 204);
    assert_eq!(
        reply["body"]["detail"]["funk"]["body"]["function"],
        Value::Null
    );
    assert_eq!(reply["body"]["detail"]["funk"]["body"]["command"], "reboot");
    wait_for("Funnel's delivery", || {
        (!delivered.lock().expect("log").is_empty()).then_some(())
    })
    .await;

    // A function slower than funk_timeout_seconds: 504 after about a second.
    let (slow, _) = sink(StatusCode::OK, "{}", Duration::from_secs(5)).await;
    let (status, body) = api
        .put(&format!("/v1/groups/{group_id}/configuration/SoracomFunk"),
             json!([{"key": "destination", "value": {"provider": "http", "resourceUrl": format!("http://{slow}/")}}]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let started = Instant::now();
    let late = call(router(), device.ip, post("funk.soracom.io", "{}")).await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
}
