//! The platform services' logic in-process: each service's router is called as a device behind a
//! given tunnel address would call it (arcd identifies callers by that address), against a real
//! arcd with its store and peer table. The real sockets on the TUN addresses are proven by
//! scripts/e2e/netns.sh.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arcd::services::{self, beam, harvest, metadata, unified};
use axum::body::{to_bytes, Body};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use support::devices::{join_group, secondary_virtual_subscriber, virtual_sim};
use support::server::{Api, TestServer};
use tower::ServiceExt;

async fn put_config(api: &Api, group_id: &str, namespace: &str, items: Value) {
    let (status, body) = api
        .put(
            &format!("/v1/groups/{group_id}/configuration/{namespace}"),
            items,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// Calls a service as the device at `from` would.
async fn call(router: Router, from: Ipv4Addr, request: Request<Body>) -> Answer {
    let response = router
        .layer(MockConnectInfo(SocketAddr::from((from, 40_000))))
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", content_type)
        .body(body.into())
        .expect("request")
}

fn count_entries(server: &TestServer, resource_id: &str) -> i64 {
    server.read_store(|db| {
        db.query_one(
            "SELECT count(*) FROM harvest_entries WHERE resource_id = $1",
            &[&resource_id],
        )?
        .int(0)
    })
}

fn entries(server: &TestServer, resource_id: &str) -> Vec<(i64, String, String, String)> {
    server.read_store(|db| {
        db.query(
            "SELECT time, content_type, content, sim_id FROM harvest_entries
             WHERE resource_id = $1 ORDER BY entry_id",
            &[&resource_id],
        )?
        .iter()
        .map(|row| Ok((row.int(0)?, row.text(1)?, row.text(2)?, row.text(3)?)))
        .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metadata_is_off_without_a_group_and_serves_the_callers_own_record_when_on() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    let other = virtual_sim(&server, &api).await;
    let router = || metadata::router(server.running.services.clone());

    let off = call(router(), device.ip, get("/v1/subscriber")).await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
    assert_eq!(off.text(), metadata::FORBIDDEN);

    let group_id = join_group(
        &api,
        &device.sim_id,
        json!({"SoracomAir": {"metadata": {"enabled": true}, "userdata": "{\"interval\":60}"}}),
    )
    .await;
    let (status, _) = api
        .put(
            &format!("/v1/sims/{}/tags", device.sim_id),
            json!([{"tagName": "location", "tagValue": "dock 3"}, {"tagName": "a.b", "tagValue": "dotted"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let record = call(router(), device.ip, get("/v1/subscriber")).await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.text());
    let record = record.json();
    assert_eq!(record["imsi"], device.imsi.as_str());
    assert_eq!(record["simId"], device.sim_id.as_str());
    assert_eq!(record["groupId"], group_id.as_str());
    assert_eq!(record["ipAddress"], device.ip.to_string());
    assert_eq!(record["tags"]["location"], "dock 3");
    assert_eq!(record["sessionStatus"]["online"], true);

    for (path, want) in [
        ("/v1/subscriber.imsi", device.imsi.clone()),
        ("/v1/subscriber.simId", device.sim_id.clone()),
        ("/v1/subscriber.tags.location", "dock 3".to_string()),
        ("/v1/subscriber.tags.a.b", "dotted".to_string()),
        ("/v1/subscriber.sessionStatus.online", "true".to_string()),
        ("/v1/userdata", "{\"interval\":60}".to_string()),
    ] {
        let answer = call(router(), device.ip, get(path)).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
        assert_eq!(answer.text(), want, "{path}");
        assert!(
            answer.headers["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/plain")),
            "{path}"
        );
    }
    for path in [
        "/v1/subscriber.nope",
        "/v1/subscriber.tags.missing",
        "/v1/subscriber.msisdn",
        "/v1/nothing",
        "/elsewhere",
    ] {
        let answer = call(router(), device.ip, get(path)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.text(), metadata::NO_SUCH_KEY, "{path}");
    }

    // Another device outside the group and an address with no session both get the 403.
    let answer = call(router(), other.ip, get("/v1/subscriber")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = call(
        router(),
        Ipv4Addr::new(10, 64, 250, 250),
        get("/v1/subscriber"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    // Switching metadata off applies to the next request.
    put_config(
        &api,
        &group_id,
        "SoracomAir",
        json!([{"key": "metadata", "value": {"enabled": false}}]),
    )
    .await;
    let answer = call(router(), device.ip, get("/v1/subscriber.imsi")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn metadata_tag_writes_need_a_writable_group() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    let router = || metadata::router(server.running.services.clone());
    let group_id = join_group(
        &api,
        &device.sim_id,
        json!({"SoracomAir": {"metadata": {"enabled": true}}}),
    )
    .await;
    let put_tags = |body: &str| {
        Request::put("/v1/subscriber/tags")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let body = r#"[{"tagName":"firmware","tagValue":"1.2.3"}]"#;

    let refused = call(router(), device.ip, put_tags(body)).await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "read-only is the default"
    );
    let (_, sim) = api.get(&format!("/v1/sims/{}", device.sim_id)).await;
    assert!(
        sim["tags"].get("firmware").is_none(),
        "nothing written: {sim}"
    );

    put_config(
        &api,
        &group_id,
        "SoracomAir",
        json!([{"key": "metadata", "value": {"enabled": true, "readonly": false}}]),
    )
    .await;
    let bad = call(router(), device.ip, put_tags("{not json")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let written = call(router(), device.ip, put_tags(body)).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    assert_eq!(written.json()["tags"]["firmware"], "1.2.3");
    let (_, sim) = api.get(&format!("/v1/sims/{}", device.sim_id)).await;
    assert_eq!(sim["tags"]["firmware"], "1.2.3", "visible through the API");
}

// ---------------------------------------------------------------------------------------------
// Harvest Data
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn harvest_stores_posts_under_the_primary_imsi_only_when_enabled() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    let ctx = server.running.services.clone();
    let router = || harvest::router(ctx.clone());

    let off = call(
        router(),
        device.ip,
        post("/", "application/json", r#"{"t":1}"#),
    )
    .await;
    assert_eq!(off.status, StatusCode::BAD_REQUEST);
    assert_eq!(off.text(), harvest::DISABLED);
    assert_eq!(count_entries(&server, &device.imsi), 0);

    join_group(
        &api,
        &device.sim_id,
        json!({"SoracomHarvest": {"enabled": true}}),
    )
    .await;
    let before = arcd::store::now_ms();
    let stored = call(
        router(),
        device.ip,
        post("/any/path", "application/json", r#"{"temperature":21.5}"#),
    )
    .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    assert!(stored.body.is_empty(), "201 has an empty body");
    let timed = Request::post("/")
        .header("content-type", "text/plain")
        .header("x-soracom-timestamp", "1700000000123")
        .body(Body::from("hello"))
        .expect("request");
    assert_eq!(
        call(router(), device.ip, timed).await.status,
        StatusCode::CREATED
    );
    let binary = call(
        router(),
        device.ip,
        post("/", "application/octet-stream", vec![0xffu8, 0x00, 0xfe]),
    )
    .await;
    assert_eq!(binary.status, StatusCode::CREATED);

    let rows = entries(&server, &device.imsi);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[0].0 >= before, "server time");
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2.as_str()),
        ("application/json", r#"{"temperature":21.5}"#)
    );
    assert_eq!(rows[0].3, device.sim_id);
    assert_eq!(
        (rows[1].0, rows[1].2.as_str()),
        (1_700_000_000_123, "hello")
    );
    assert_eq!(rows[2].1, "application/json");
    assert_eq!(rows[2].2, r#"{"payload":"/wD+"}"#, "binary kept as base64");

    // Refused posts store nothing.
    let too_big = vec![b'x'; harvest::MAX_ENTRY_BYTES + 1];
    let answer = call(router(), device.ip, post("/", "text/plain", too_big)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let bad_time = Request::post("/")
        .header("x-soracom-timestamp", "yesterday")
        .body(Body::from("x"))
        .expect("request");
    assert_eq!(
        call(router(), device.ip, bad_time).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(router(), device.ip, get("/")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let stranger = call(
        router(),
        Ipv4Addr::new(10, 64, 250, 250),
        post("/", "text/plain", "x"),
    )
    .await;
    assert_eq!(stranger.status, StatusCode::BAD_REQUEST);
    assert_eq!(count_entries(&server, &device.imsi), 3);
}

#[tokio::test]
async fn harvest_raw_messages_are_stored_like_posts() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    let ctx = server.running.services.clone();
    let from = SocketAddr::from((device.ip, 5555));

    assert_eq!(
        harvest::store_raw(&ctx, from, b"{\"a\":1}\n").await,
        b"400\n",
        "off"
    );
    join_group(
        &api,
        &device.sim_id,
        json!({"SoracomHarvest": {"enabled": true}}),
    )
    .await;
    assert_eq!(
        harvest::store_raw(&ctx, from, b"{\"a\":1}\n").await,
        b"201\n"
    );
    assert_eq!(
        harvest::store_raw(&ctx, from, b"plain words\r\n").await,
        b"201\n"
    );
    assert_eq!(
        harvest::store_raw(&ctx, from, &[0x01, 0x80, 0xff]).await,
        b"201\n"
    );
    assert_eq!(
        harvest::store_raw(&ctx, from, b"\n").await,
        b"400\n",
        "empty message"
    );
    let oversize = vec![b'y'; harvest::MAX_ENTRY_BYTES + 1];
    assert_eq!(harvest::store_raw(&ctx, from, &oversize).await, b"413\n");
    let stranger = SocketAddr::from((Ipv4Addr::new(10, 64, 250, 250), 1));
    assert_eq!(harvest::store_raw(&ctx, stranger, b"x").await, b"400\n");

    let rows = entries(&server, &device.imsi);
    let contents: Vec<(&str, &str)> = rows.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
    assert_eq!(
        contents,
        [
            ("application/json", "{\"a\":1}"),
            ("text/plain", "plain words"),
            ("application/json", "{\"payload\":\"AYD/\"}"),
        ]
    );
}

#[tokio::test]
async fn harvest_keeps_every_post_of_a_burst() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    join_group(
        &api,
        &device.sim_id,
        json!({"SoracomHarvest": {"enabled": true}}),
    )
    .await;
    let ctx = server.running.services.clone();
    let mut posts = Vec::new();
    for i in 0..400 {
        let router = harvest::router(ctx.clone());
        let ip = device.ip;
        posts.push(tokio::spawn(async move {
            call(
                router,
                ip,
                post("/", "application/json", format!("{{\"n\":{i}}}")),
            )
            .await
            .status
        }));
    }
    for post in posts {
        assert_eq!(post.await.expect("join"), StatusCode::CREATED);
    }
    assert_eq!(
        count_entries(&server, &device.imsi),
        400,
        "nothing lost, nothing doubled"
    );
}

// ---------------------------------------------------------------------------------------------
// Beam
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Received {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// An HTTP destination on 127.0.0.1 that records what arrives and answers 200 with a JSON body
/// (or waits `delay` first).
async fn sink(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
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
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            tokio::time::sleep(delay).await;
            (
                StatusCode::ACCEPTED,
                [("x-sink", "yes")],
                r#"{"sink":"ok"}"#,
            )
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

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing: {headers:?}"))
}

#[tokio::test]
async fn beam_forwards_with_identity_headers_and_a_verifiable_signature() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let standalone = virtual_sim(&server, &api).await;
    let (secondary, virtual_imsi) = secondary_virtual_subscriber(&server, &api).await;
    let (addr, seen) = sink(Duration::ZERO).await;
    let beam_config = json!({"SoracomBeam": {
        "http://beam.soracom.io:8888/": {"enabled": true, "destination": format!("http://{addr}/in"), "psk": "topsecret", "customHeaders": {"X-Api-Key": "k1"}},
        "http://beam.soracom.io:8888/raw": {"enabled": true, "destination": format!("http://{addr}/other")}
    }});
    let router = || beam::router(server.running.services.clone());

    let off = call(router(), standalone.ip, post("/x", "text/plain", "hi")).await;
    assert_eq!(off.status, StatusCode::BAD_REQUEST);
    assert_eq!(off.text(), beam::NOT_CONFIGURED);

    join_group(&api, &standalone.sim_id, beam_config.clone()).await;
    join_group(&api, &secondary.sim_id, beam_config).await;
    for (device, want_imsi) in [
        (&standalone, standalone.imsi.clone()),
        (&secondary, secondary.imsi.clone()),
    ] {
        let request = Request::put("/sensors/7?unit=c&x=1")
            .header("content-type", "application/json")
            .header("x-soracom-imsi", "001010000000000")
            .header("x-custom", "kept")
            .body(Body::from(r#"{"t":20}"#))
            .expect("request");
        let before = arcd::store::now_ms();
        let answer = call(router(), device.ip, request).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
        assert_eq!(answer.text(), r#"{"sink":"ok"}"#);
        assert_eq!(header(&answer.headers, "x-sink"), "yes");

        let got = seen
            .lock()
            .expect("log")
            .pop()
            .expect("the sink got the request");
        assert_eq!(got.method, "PUT");
        assert_eq!(got.uri, "/in/sensors/7?unit=c&x=1");
        assert_eq!(got.body, br#"{"t":20}"#);
        assert_eq!(header(&got.headers, "x-custom"), "kept");
        assert_eq!(header(&got.headers, "x-api-key"), "k1");
        assert_eq!(header(&got.headers, "content-type"), "application/json");
        assert_eq!(
            header(&got.headers, "x-soracom-imsi"),
            want_imsi,
            "primary IMSI, never the device's own claim"
        );
        assert_eq!(header(&got.headers, "x-soracom-sim-id"), device.sim_id);
        let timestamp = header(&got.headers, "x-soracom-timestamp");
        let ms: i64 = timestamp.parse().expect("ms");
        assert!(ms >= before && ms <= arcd::store::now_ms());
        assert_eq!(
            header(&got.headers, "x-soracom-signature-version"),
            "20151001"
        );
        let expected = sha256_hex(&format!(
            "topsecretx-soracom-imsi={want_imsi}x-soracom-timestamp={timestamp}"
        ));
        assert_eq!(
            header(&got.headers, "x-soracom-signature"),
            expected,
            "the sink can verify it"
        );
    }
    assert_ne!(secondary.imsi, virtual_imsi);

    // The longest entry point wins, and has no key: no signature.
    let answer = call(router(), standalone.ip, post("/raw/a", "text/plain", "b")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let got = seen.lock().expect("log").pop().expect("request");
    assert_eq!(got.uri, "/other/a");
    assert!(got.headers.get("x-soracom-signature").is_none());
    assert_eq!(header(&got.headers, "x-soracom-imsi"), standalone.imsi);
}

#[tokio::test]
async fn beam_destination_failures_answer_502_and_504_without_hanging() {
    let server = TestServer::start_with(|c| c.services.beam_timeout_seconds = 1).await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    let (slow, _) = sink(Duration::from_secs(5)).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    join_group(&api, &device.sim_id, json!({"SoracomBeam": {
        "http://beam.soracom.io:8888/slow": {"destination": format!("http://{slow}/")},
        "http://beam.soracom.io:8888/closed": {"destination": format!("http://{closed}/")},
        "http://beam.soracom.io:8888/off": {"enabled": false, "destination": format!("http://{slow}/")}
    }}))
    .await;
    let router = || beam::router(server.running.services.clone());
    let started = std::time::Instant::now();
    let answer = call(router(), device.ip, post("/slow", "text/plain", "x")).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "gave up after the timeout"
    );
    let answer = call(router(), device.ip, post("/closed", "text/plain", "x")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    let answer = call(router(), device.ip, post("/off", "text/plain", "x")).await;
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "disabled entry point"
    );
}

// ---------------------------------------------------------------------------------------------
// Unified endpoint and the primary IMSI everywhere
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unified_endpoint_fans_out_to_the_enabled_services() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let device = virtual_sim(&server, &api).await;
    let (addr, seen) = sink(Duration::ZERO).await;
    let router = || unified::router(server.running.services.clone());

    let none = call(router(), device.ip, post("/", "application/json", "{}")).await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    assert_eq!(none.text(), unified::NOTHING_ENABLED);

    let group_id = join_group(
        &api,
        &device.sim_id,
        json!({"SoracomHarvest": {"enabled": true}}),
    )
    .await;
    let only_harvest = call(
        router(),
        device.ip,
        post("/", "application/json", r#"{"n":1}"#),
    )
    .await;
    assert_eq!(
        only_harvest.status,
        StatusCode::CREATED,
        "Harvest's own answer"
    );
    assert_eq!(count_entries(&server, &device.imsi), 1);

    put_config(&api, &group_id, "SoracomBeam", json!([{"key": "http://beam.soracom.io:8888/", "value": {"destination": format!("http://{addr}/u")}}])).await;
    let both = call(
        router(),
        device.ip,
        post("/", "application/json", r#"{"n":2}"#),
    )
    .await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.text());
    let body = both.json();
    assert_eq!(body["statusCode"], 200);
    assert_eq!(body["body"]["result"], "ok");
    assert_eq!(body["body"]["detail"]["harvest"]["statusCode"], 201);
    assert_eq!(body["body"]["detail"]["beam"]["statusCode"], 202);
    assert_eq!(body["body"]["detail"]["beam"]["body"]["sink"], "ok");
    assert_eq!(count_entries(&server, &device.imsi), 2);
    let got = seen.lock().expect("log").pop().expect("beam got it");
    assert_eq!(got.body, br#"{"n":2}"#);
    assert_eq!(header(&got.headers, "x-soracom-imsi"), device.imsi);
}

#[tokio::test]
async fn a_secondary_virtual_subscriber_is_the_iot_sims_imsi_everywhere() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let (device, virtual_imsi) = secondary_virtual_subscriber(&server, &api).await;
    let standalone = virtual_sim(&server, &api).await;
    let everything = json!({
        "SoracomAir": {"metadata": {"enabled": true}},
        "SoracomHarvest": {"enabled": true}
    });
    join_group(&api, &device.sim_id, everything.clone()).await;
    join_group(&api, &standalone.sim_id, everything).await;
    let ctx = server.running.services.clone();

    for (caller, want) in [
        (&device, device.imsi.as_str()),
        (&standalone, standalone.imsi.as_str()),
    ] {
        let imsi = call(
            metadata::router(ctx.clone()),
            caller.ip,
            get("/v1/subscriber.imsi"),
        )
        .await;
        assert_eq!(imsi.text(), want);
        let stored = call(
            harvest::router(ctx.clone()),
            caller.ip,
            post("/", "text/plain", "x"),
        )
        .await;
        assert_eq!(stored.status, StatusCode::CREATED);
        assert_eq!(count_entries(&server, want), 1, "stored under {want}");
    }
    assert_eq!(
        count_entries(&server, &virtual_imsi),
        0,
        "never under the virtual IMSI"
    );
    // Read back through the official data API, keyed by the primary IMSI and by the SIM.
    for path in [
        format!("/v1/subscribers/{}/data", device.imsi),
        format!("/v1/data/Subscriber/{}", device.imsi),
        format!("/v1/sims/{}/data", device.sim_id),
    ] {
        let (status, entries) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {entries}");
        let entries = entries.as_array().expect("array");
        assert_eq!(entries.len(), 1, "{path}: {entries:?}");
        assert_eq!(entries[0]["resourceType"], "Subscriber");
        assert_eq!(entries[0]["resourceId"], device.imsi.as_str());
        assert_eq!(entries[0]["content"], "x");
    }
    let (_, none) = api
        .get(&format!("/v1/subscribers/{virtual_imsi}/data"))
        .await;
    assert_eq!(none, json!([]));
    // Off the test's runtime: the lookup reads the store (PostgreSQL's client must not block it).
    let lookup = ctx.clone();
    let ip = device.ip;
    let identified =
        tokio::task::spawn_blocking(move || services::caller::identify(&lookup, ip.into()))
            .await
            .expect("lookup task")
            .expect("caller");
    assert_eq!(identified.tunnel_imsi, virtual_imsi);
    assert_eq!(identified.primary_imsi, device.imsi);
}
