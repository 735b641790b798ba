//! The management page served by arcd (static files embedded from web/) and the rendezvous point
//! listing it shows (arcd extension `GET /v1/arcd/rendezvous_points`), over real HTTPS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::server::{assert_error, read, TestServer};
use support::wgclient::{udp_packet, WgClient};

/// The budget of the issue: every asset of the page together stays under 300 KB.
const PAGE_WEIGHT_BUDGET: usize = 300 * 1000;

/// The asset paths index.html and the modules refer to, with the content type each must have.
const EXPECTED_ASSETS: &[(&str, &str)] = &[
    ("/", "text/html"),
    ("/style.css", "text/css"),
    ("/app.js", "text/javascript"),
    ("/api.js", "text/javascript"),
    ("/ui.js", "text/javascript"),
    ("/sims.js", "text/javascript"),
    ("/sim-detail.js", "text/javascript"),
    ("/device-config.js", "text/javascript"),
    ("/chart.js", "text/javascript"),
    ("/groups.js", "text/javascript"),
    ("/network.js", "text/javascript"),
    ("/vendor/qrcode.js", "text/javascript"),
    ("/favicon.svg", "image/svg+xml"),
];

async fn fetch(server: &TestServer, path: &str) -> reqwest::Response {
    server
        .client()
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn page_and_assets_are_served_with_types_csp_and_caching() {
    let server = TestServer::start().await;
    let mut total = 0usize;
    for (path, content_type) in EXPECTED_ASSETS {
        let response = fetch(&server, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            header("content-type").starts_with(content_type),
            "{path}: content-type {}",
            header("content-type")
        );
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{path}: CSP {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: CSP {csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{path}: CSP allows inline code: {csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{path}: CSP {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let etag = header("etag");
        assert!(
            etag.starts_with('"') && etag.len() > 2,
            "{path}: etag {etag}"
        );
        let body = response.bytes().await.expect("body");
        assert!(!body.is_empty(), "{path} is empty");
        total += body.len();

        // Revalidation with the ETag costs no body.
        let again = server
            .client()
            .get(format!("{}{path}", server.base))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("request");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.bytes().await.expect("body").is_empty());
    }
    assert_eq!(total, arcd::api::web::total_asset_bytes());
    assert_eq!(EXPECTED_ASSETS.len(), arcd::api::web::ASSETS.len());
    assert!(
        total < PAGE_WEIGHT_BUDGET,
        "page weight {total} bytes is over the {PAGE_WEIGHT_BUDGET}-byte budget"
    );
    eprintln!(
        "page weight: {total} bytes in {} files",
        EXPECTED_ASSETS.len()
    );
}

#[tokio::test]
async fn page_has_no_inline_script_and_no_external_reference() {
    let server = TestServer::start().await;
    let index = fetch(&server, "/").await.text().await.expect("index.html");
    assert!(index.contains(r#"<script type="module" src="/app.js"></script>"#));
    // Every <script> has a src (the CSP would block an inline one anyway).
    assert_eq!(
        index.matches("<script").count(),
        index.matches("<script type=\"module\" src=").count()
    );
    for asset in arcd::api::web::ASSETS {
        let text = String::from_utf8_lossy(asset.body);
        for external in ["http://", "https://", "//cdn", "fonts.googleapis"] {
            let allowed = |line: &str| {
                // Text the page shows or links to documentation and XML namespaces, never loads.
                line.contains("http://www.w3.org/2000/svg")
                    || line.contains("beam.soracom.io")
                    || line.contains("harvest.soracom.io")
                    || line.contains("example.com")
                    || line.trim_start().starts_with("//")
                    || line.contains("http://' +")
                    || line.contains("https://' +")
            };
            for line in text.lines().filter(|l| l.contains(external)) {
                assert!(
                    allowed(line),
                    "{} refers to something outside arcd: {line}",
                    asset.path
                );
            }
        }
    }
}

#[tokio::test]
async fn unknown_paths_still_answer_json_errors() {
    let server = TestServer::start().await;
    for path in ["/v1/no/such/path", "/nope.js", "/web/app.js"] {
        let (status, _, body) = read(fetch(&server, path).await).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
    }
    // The page's paths are GET only.
    let response = server
        .client()
        .post(format!("{}/app.js", server.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn rendezvous_points_need_a_token() {
    let server = TestServer::start().await;
    let (status, _, body) = read(fetch(&server, "/v1/arcd/rendezvous_points").await).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
}

/// The list's total (arcd extension `GET /v1/arcd/sim_counts`): the caller's SIMs only, a
/// terminated one in `total` but not in `notTerminated`, and only with a token.
#[tokio::test]
async fn sim_counts_count_the_callers_sims() {
    let server = TestServer::start().await;
    let (status, _, body) = read(fetch(&server, "/v1/arcd/sim_counts").await).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
    let api = server.login().await;
    let counts = |body: Value| (body["total"].as_u64(), body["notTerminated"].as_u64());
    let (status, body) = api.get("/v1/arcd/sim_counts").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(counts(body), (Some(0), Some(0)));
    let first = api.create_sim().await;
    api.create_sim().await;
    server.other_operator().await.create_sim().await;
    let sim_id = first["simId"].as_str().expect("simId");
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.get("/v1/arcd/sim_counts").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(counts(body), (Some(2), Some(1)));
}

/// The official subset (tests/support/conformance.rs) has no arcd extensions: the listing is
/// checked against arcd's own openapi.yaml, where the extension is documented and marked.
fn assert_matches_arcd_schema(body: &Value) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    let spec: Value = serde_yaml::from_str(&text).expect("openapi.yaml parses");
    let operation = &spec["paths"]["/arcd/rendezvous_points"]["get"];
    assert_eq!(
        operation["x-arcd-extension"], true,
        "marked as an extension"
    );
    assert_eq!(
        operation["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"],
        "#/components/schemas/ArcdRendezvousPoint"
    );
    let item = spec["components"]["schemas"]["ArcdRendezvousPoint"].clone();
    assert_eq!(item["additionalProperties"], false, "strict schema");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&item)
        .expect("schema compiles");
    for rp in body.as_array().expect("an array") {
        let errors: Vec<String> = validator.iter_errors(rp).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{rp} does not match: {errors:?}");
    }
}

/// Read off the test's runtime (`read_store`): PostgreSQL's client must not block it.
fn stored_private_key(server: &TestServer, rp_id: &str) -> String {
    server.read_store(|db| arcd::store::rendezvous::private_key(db, &rp_id.into()))
}

#[tokio::test]
async fn rendezvous_points_show_identity_and_live_counts_never_the_private_key() {
    let server = TestServer::start().await;
    let api = server.login().await;
    let list = || async {
        let (status, body) = api
            .call(Method::GET, "/v1/arcd/rendezvous_points", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_matches_arcd_schema(&body);
        body
    };
    let before = list().await;
    let rps = before.as_array().expect("array");
    assert_eq!(rps.len(), 1);
    let rp = &rps[0];
    assert_eq!(rp["rendezvousPointId"], "ap-northeast-1");
    assert_eq!(rp["displayName"], "Tokyo");
    assert_eq!(rp["endpoint"], "127.0.0.1:11010");
    assert_eq!(rp["pool"], "10.64.0.0/16");
    assert_eq!(rp["allowedIPs"], serde_json::json!(["100.127.0.0/16"]));
    assert_eq!(rp["sessions"], 0);
    assert_eq!(rp["onlineDevices"], 0);
    let private = stored_private_key(&server, "ap-northeast-1");
    assert!(
        !before.to_string().contains(&private),
        "the private key leaked"
    );
    assert!(!before.to_string().to_lowercase().contains("private"));

    // A session loads a peer; a handshake makes it online and moves bytes.
    let sim = api.create_sim().await;
    let sim_id = sim["simId"].as_str().expect("simId");
    let status = &sim["arcSessionStatus"];
    assert_eq!(status["arcServerPeerPublicKey"], rp["publicKey"]);
    let after_create = list().await;
    assert_eq!(after_create[0]["sessions"], 1);
    assert_eq!(after_create[0]["onlineDevices"], 0);

    let ip: Ipv4Addr = status["arcClientPeerIpAddress"]
        .as_str()
        .expect("ip")
        .parse()
        .expect("ipv4");
    let mut client = WgClient::new(
        sim["profiles"][sim_id]["arcClientPeerPrivateKey"]
            .as_str()
            .expect("private key"),
        rp["publicKey"].as_str().expect("public key"),
        server.running.dataplane.udp_addrs[0].1,
    )
    .await;
    let packet = udp_packet(ip, Ipv4Addr::new(100, 127, 100, 127), 40000, 80, b"hi");
    assert!(
        client.connect(&packet, Duration::from_secs(3)).await,
        "handshake"
    );
    let online = list().await;
    assert_eq!(online[0]["sessions"], 1);
    assert_eq!(online[0]["onlineDevices"], 1);
    assert!(
        online[0]["rxBytes"].as_u64().is_some_and(|b| b > 0),
        "{online}"
    );
    // Another operator shares the rendezvous point but sees none of it.
    let other = server.other_operator().await;
    let (status, theirs) = other
        .call(Method::GET, "/v1/arcd/rendezvous_points", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    assert_eq!(theirs[0]["publicKey"], online[0]["publicKey"]);
    for field in ["sessions", "onlineDevices", "rxBytes", "txBytes"] {
        assert_eq!(theirs[0][field], 0, "{field} of another operator: {theirs}");
    }

    // Terminating the SIM removes its peer from the counts.
    api.post_empty(&format!("/v1/sims/{sim_id}/enable_termination"))
        .await;
    let (code, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/terminate"))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let mut gone = Value::Null;
    for _ in 0..50 {
        gone = list().await;
        if gone[0]["sessions"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gone[0]["sessions"], 0, "{gone}");
    assert_eq!(gone[0]["onlineDevices"], 0, "{gone}");
}
