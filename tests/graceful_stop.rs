//! SIGTERM in the middle of a createSim burst: every request sent before the signal gets its
//! answer (no reset), later clients are refused, arcd exits 0 with an empty WAL, and every SIM
//! whose 201 reached a client is in the database. The SIGKILL counterpart is crash_durability.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

mod support;
use support::child_arcd::{free_port, ChildArcd};

const WORKERS: usize = 16;
const SUCCESSES_BEFORE_SIGNAL: usize = 200;
const GRACE_SECONDS: u64 = 10;

#[derive(Default)]
struct Tally {
    acknowledged: Mutex<Vec<String>>,
    successes: AtomicUsize,
    /// Requests sent before the signal that got no complete answer: must stay empty.
    cut_before_signal: Mutex<Vec<String>>,
    /// Requests sent after the signal that failed (refused, or closed by the draining server).
    failed_after_signal: AtomicUsize,
    unexpected_status: Mutex<Vec<String>>,
}

async fn worker(
    client: reqwest::Client,
    base: String,
    headers: reqwest::header::HeaderMap,
    tally: Arc<Tally>,
    signalled: Arc<AtomicBool>,
) {
    loop {
        let sent_before_signal = !signalled.load(Ordering::SeqCst);
        let result = client
            .post(format!("{base}/v1/sims"))
            .headers(headers.clone())
            .json(&json!({"type": "virtual", "subscription": "planArc01"}))
            .send()
            .await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|bytes| (status, bytes))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((StatusCode::CREATED, bytes)) => {
                let body: Value = serde_json::from_slice(&bytes).expect("a 201 body is JSON");
                let sim_id = body["simId"].as_str().expect("simId").to_string();
                tally.acknowledged.lock().unwrap().push(sim_id);
                tally.successes.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, bytes)) => tally
                .unexpected_status
                .lock()
                .unwrap()
                .push(format!("{status}: {}", String::from_utf8_lossy(&bytes))),
            Err(e) if sent_before_signal => {
                tally
                    .cut_before_signal
                    .lock()
                    .unwrap()
                    .push(format!("{e:?}"));
                return;
            }
            Err(_) => {
                tally.failed_after_signal.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_requests_in_flight_and_keeps_every_acknowledged_write() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut arcd = ChildArcd::spawn(
        &data_dir,
        port,
        dir.path(),
        "1",
        &[
            (
                "ARCD_API__SHUTDOWN_GRACE_SECONDS",
                &GRACE_SECONDS.to_string(),
            ),
            ("RUST_LOG", "info"),
        ],
    );
    arcd.wait_ready(&data_dir, port, &client).await;
    let credentials: Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("root-credentials.json")).expect("root credentials"),
    )
    .expect("JSON");
    let auth: Value = client
        .post(format!("{base}/v1/auth"))
        .json(&json!({"authKeyId": credentials["authKeyId"], "authKey": credentials["authKey"]}))
        .send()
        .await
        .expect("auth")
        .json()
        .await
        .expect("auth body");
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, field) in [
        ("x-soracom-api-key", "apiKey"),
        ("x-soracom-token", "token"),
    ] {
        headers.insert(
            name,
            auth[field].as_str().expect(field).parse().expect("header"),
        );
    }

    let tally = Arc::new(Tally::default());
    let signalled = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                base.clone(),
                headers.clone(),
                tally.clone(),
                signalled.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.successes.load(Ordering::SeqCst) < SUCCESSES_BEFORE_SIGNAL {
        assert!(Instant::now() < deadline, "the burst is too slow");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    signalled.store(true, Ordering::SeqCst);
    arcd.sigterm();
    let signalled_at = Instant::now();
    let status = loop {
        if let Some(status) = arcd.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            signalled_at.elapsed() < Duration::from_secs(GRACE_SECONDS + 20),
            "arcd did not stop after SIGTERM:\n{}",
            arcd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop_took = signalled_at.elapsed();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("workers end once arcd is gone")
            .expect("worker panicked");
    }
    let log = arcd.stderr();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        tally.unexpected_status.lock().unwrap().is_empty(),
        "{:?}",
        tally.unexpected_status.lock().unwrap()
    );
    assert!(
        tally.cut_before_signal.lock().unwrap().is_empty(),
        "requests sent before SIGTERM got no answer: {:?}",
        tally.cut_before_signal.lock().unwrap()
    );
    assert!(log.contains("arcd stopped"), "{log}");
    // After the stop nobody listens: a new client is refused, not left hanging.
    assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err());

    // The final checkpoint emptied the WAL into the database.
    let wal = data_dir.join("arcd.sqlite-wal");
    let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_bytes, 0, "WAL left with {wal_bytes} bytes");

    // What the next start reads: every acknowledged SIM.
    let acknowledged = tally.acknowledged.lock().unwrap().clone();
    let store = arcd::store::Store::open(&data_dir.join("arcd.sqlite")).expect("open store");
    let stored: std::collections::BTreeSet<String> = store
        .sqlite()
        .expect("a SQLite store")
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT sim_id FROM sims")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("sims");
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged SIMs lost: {lost:?}");
    println!(
        "graceful stop: {} acknowledged, {} stored, {} failed after the signal, stopped in {stop_took:?}",
        acknowledged.len(),
        stored.len(),
        tally.failed_after_signal.load(Ordering::SeqCst),
    );
}
