//! The API listener against slow, idle and hostile clients: idle and body timeouts, the
//! connection cap, Host header rules, malformed chunked bodies, the failed-login limiter and
//! request targets with several leading slashes.
//! Raw TCP to 127.0.0.1 over plain HTTP (TLS off), so the bytes on the wire are exactly these.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![allow(unsafe_code)] // libc::kill: the test sends arcd the signal a service manager would

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Lets this process hold the test's sockets (client and server side of each connection).
fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "this test needs {wanted} open files; the hard limit is {}",
        limit.rlim_max
    );
}

async fn plain_server(adjust: impl FnOnce(&mut arcd::config::Config)) -> (TestServer, SocketAddr) {
    let server = TestServer::start_with(|config| {
        config.api.tls = false;
        adjust(config);
    })
    .await;
    let addr = server.running.api_addr.expect("API");
    (server, addr)
}

/// Reads until the server closes the connection (EOF or reset); None if it stays open `limit`.
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` on a new connection and returns everything the server sent before closing.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let received = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("server answers and closes within 10 s");
    String::from_utf8_lossy(&received).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// The JSON error body of a raw response: `{code, message}`.
fn error_body(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    assert!(
        value["code"].is_string() && value["message"].is_string(),
        "{value}"
    );
    value
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

type Closed = Vec<(Option<Vec<u8>>, Duration)>;

/// `count` idle connections (nothing sent) and `count` slow ones (a request head, then one body
/// byte every 300 ms); signals `opened` once all are connected, then returns, for each, what the
/// server sent before closing it (None: still open after the wait) and when it closed.
async fn hostile_clients(
    addr: SocketAddr,
    count: usize,
    idle_wait: Duration,
    slow_wait: Duration,
    opened: tokio::sync::oneshot::Sender<()>,
) -> (Closed, Closed) {
    let mut idle = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connect idle");
        let connected = Instant::now();
        idle.push(tokio::spawn(async move {
            let closed = read_until_closed(&mut stream, idle_wait).await;
            (closed, connected.elapsed())
        }));
    }
    let mut slow = Vec::new();
    for _ in 0..count {
        let stream = TcpStream::connect(addr).await.expect("connect slow");
        let (mut read, mut write) = stream.into_split();
        let head = "POST /v1/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{";
        write.write_all(head.as_bytes()).await.expect("send head");
        let sent = Instant::now();
        // The 200-byte body would take a minute.
        let dribble = tokio::spawn(async move {
            while write.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        slow.push(tokio::spawn(async move {
            let closed = read_until_closed(&mut read, slow_wait).await;
            dribble.abort();
            (closed, sent.elapsed())
        }));
    }
    let _ = opened.send(());
    let mut idle_closed = Vec::new();
    for task in idle {
        idle_closed.push(task.await.expect("idle client"));
    }
    let mut slow_closed = Vec::new();
    for task in slow {
        slow_closed.push(task.await.expect("slow client"));
    }
    (idle_closed, slow_closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_within_the_timeouts_while_others_are_served() {
    const CLIENTS: usize = 500;
    const IDLE: Duration = Duration::from_secs(2);
    const BODY: Duration = Duration::from_secs(2);
    // Accepting 1,000 connections on a busy machine delays some timers; closing well within
    // this slack still proves the timeouts (without them the connections stay open).
    const SLACK: Duration = Duration::from_secs(3);
    raise_fd_limit(4 * CLIENTS as u64 + 256);
    let (server, addr) = plain_server(|config| {
        config.api.max_connections = 2 * CLIENTS + 50;
        config.api.idle_timeout_seconds = IDLE.as_secs();
        config.api.body_timeout_seconds = BODY.as_secs();
    })
    .await;
    let api = server.login().await;

    // The hostile clients run on their own thread and runtime, as they would on other machines:
    // the server's runtime then carries only its own work and the normal client.
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let hostile = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(hostile_clients(
            addr,
            CLIENTS,
            IDLE + SLACK,
            BODY + SLACK,
            opened_tx,
        ))
    });
    opened_rx.await.expect("hostile clients connected");

    // A normal client keeps working meanwhile, on its own kept-alive connection.
    let mut latencies = Vec::new();
    let flood = Instant::now();
    let until = flood + IDLE + Duration::from_secs(1);
    while Instant::now() < until {
        let started = Instant::now();
        let (status, body) = api.call(Method::GET, "/v1/sims?limit=1", None).await;
        latencies.push(started.elapsed());
        if started.elapsed() > Duration::from_millis(20) {
            println!(
                "slow request {:?} into the flood: {:?}",
                started - flood,
                started.elapsed()
            );
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (idle, slow) = hostile.join().expect("hostile clients");
    for (what, closed) in [("idle", &idle), ("slow-body", &slow)] {
        let times: Vec<Duration> = closed.iter().map(|(_, after)| *after).collect();
        println!(
            "{what} clients closed after {:?} .. {:?}",
            times.iter().min().expect("clients"),
            times.iter().max().expect("clients")
        );
    }
    for (i, (closed, after)) in idle.into_iter().enumerate() {
        let received =
            closed.unwrap_or_else(|| panic!("idle connection {i} still open after {after:?}"));
        assert!(received.is_empty(), "idle connection got {received:?}");
        assert!(
            after >= IDLE - Duration::from_millis(100),
            "idle connection {i} closed early, after {after:?}"
        );
    }
    for (i, (closed, after)) in slow.into_iter().enumerate() {
        let received =
            closed.unwrap_or_else(|| panic!("slow connection {i} still open after {after:?}"));
        let response = String::from_utf8_lossy(&received);
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 408 Request Timeout",
            "{response}"
        );
        error_body(&response);
        assert!(
            after >= BODY - Duration::from_millis(100),
            "slow connection {i} closed early, after {after:?}"
        );
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "normal client: {} requests, p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() - 1]
    );
    assert!(latencies.len() >= 50, "only {} requests", latencies.len());
    // The goal is p99 < 50 ms, asserted for optimized builds; an unoptimized test build on a
    // shared 2-core machine (46-58 ms measured, see docs/BENCHMARKS.md) gets a looser bound
    // that still catches starvation.
    let bound = if cfg!(debug_assertions) {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(50)
    };
    assert!(p99 < bound, "p99 {p99:?} (bound {bound:?})");
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_clients_wait_and_are_served_when_slots_free() {
    const CAP: usize = 20;
    const IDLE: Duration = Duration::from_secs(3);
    let (server, addr) = plain_server(|config| {
        config.api.max_connections = CAP;
        config.api.idle_timeout_seconds = IDLE.as_secs();
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Lets the server accept the held connections before the extra client arrives (a connect
    // completes in the kernel's backlog first); arcd shows no count of open connections that
    // the test could wait on instead.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let extra = tokio::spawn(exchange(
        addr,
        b"GET /v1/sims HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ));
    // The behaviour under test: nothing is served for this long while the cap is reached.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !extra.is_finished(),
        "a client beyond max_connections was served while {CAP} connections were open"
    );
    // The held connections are idle: the server closes them, and the waiting client gets in.
    let response = extra.await.expect("extra client");
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 401 Unauthorized",
        "{response}"
    );
    assert!(
        started.elapsed() < IDLE + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for mut stream in held {
        let closed = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(
            closed,
            Some(Vec::new()),
            "held connection closed by the server"
        );
    }
    // Service is back to normal.
    let response = exchange(
        addr,
        b"GET /v1/sims HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 401 Unauthorized",
        "{response}"
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn host_header_must_appear_exactly_once_in_http_1_1() {
    let (server, addr) = plain_server(|_| {}).await;
    for (what, request, expected) in [
        (
            "two Host headers",
            "GET /v1/sims HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "HTTP/1.1 without Host",
            "GET /v1/sims HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "one Host header",
            "GET /v1/sims HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 401 Unauthorized",
        ),
        (
            "HTTP/1.0 needs no Host",
            "GET /v1/sims HTTP/1.0\r\n\r\n",
            "HTTP/1.0 401 Unauthorized",
        ),
    ] {
        let response = exchange(addr, request.as_bytes()).await;
        assert_eq!(status_line(&response), expected, "{what}: {response}");
        error_body(&response);
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn malformed_chunked_body_is_400_and_oversized_chunked_body_is_413() {
    let (server, addr) = plain_server(|_| {}).await;
    let api = server.login().await;
    let head = format!(
        "POST /v1/groups HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Soracom-API-Key: {}\r\nX-Soracom-Token: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        api.api_key, api.token
    );
    let bad_chunk_size = format!("{head}zz\r\n{{}}\r\n0\r\n\r\n");
    let response = exchange(addr, bad_chunk_size.as_bytes()).await;
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 400 Bad Request",
        "{response}"
    );
    assert_eq!(error_body(&response)["code"], "COM0001");

    let big = format!("{:x}\r\n{}\r\n", 70_000, " ".repeat(70_000));
    let oversized = format!("{head}{big}0\r\n\r\n");
    let response = exchange(addr, oversized.as_bytes()).await;
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 413 Payload Too Large",
        "{response}"
    );
    assert_eq!(error_body(&response)["code"], "COM0013");
    server.running.shutdown().await;
}

#[tokio::test]
async fn failed_logins_from_one_address_are_limited_until_the_window_ends() {
    const LIMIT: u32 = 3;
    const WINDOW: Duration = Duration::from_secs(2);
    let server = TestServer::start_with(|config| {
        config.api.auth_failure_limit = LIMIT;
        config.api.auth_failure_window_seconds = WINDOW.as_secs();
    })
    .await;
    let api = server.login().await;
    let client = server.client();
    let auth = |key: &str| {
        client
            .post(format!("{}/v1/auth", server.base))
            .json(&json!({"authKeyId": server.root.auth_key_id, "authKey": key}))
            .send()
    };
    let first_failure = Instant::now();
    for i in 0..LIMIT {
        let response = auth("secret-wrong").await.expect("send");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    for key in ["secret-wrong", server.root.auth_key.as_str()] {
        let response = auth(key).await.expect("send");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!(
            (1..=WINDOW.as_secs()).contains(&retry_after),
            "{retry_after}"
        );
        let body: Value = response.json().await.expect("json");
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    // Signed-in clients from the same address are not affected.
    let (status, body) = api.call(Method::GET, "/v1/sims", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // After the window, the right key signs in again.
    tokio::time::sleep_until((first_failure + WINDOW + Duration::from_millis(100)).into()).await;
    server.login().await;
    server.running.shutdown().await;
}

/// soratun with an endpoint ending in `/` sends `POST //v1/auth`: answered exactly like
/// `POST /v1/auth` (a token), as are other paths with a run of leading slashes.
#[tokio::test]
async fn leading_double_slash_is_the_same_path() {
    let (server, addr) = plain_server(|_| {}).await;
    let credentials = json!({
        "authKeyId": server.root.auth_key_id,
        "authKey": server.root.auth_key,
    })
    .to_string();
    for target in ["/v1/auth", "//v1/auth", "///v1/auth"] {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: api.soracom.io\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{credentials}",
            credentials.len()
        );
        let response = exchange(addr, request.as_bytes()).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 200 OK",
            "{target}: {response}"
        );
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
        assert!(
            body["token"].is_string() && body["apiKey"].is_string(),
            "{target}: {body}"
        );
    }
    let response = exchange(
        addr,
        b"GET //openapi.yaml HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
    server.running.shutdown().await;
}
