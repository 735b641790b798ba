//! Nothing acknowledged is lost: the real binary is SIGKILLed in the middle of a createSim burst,
//! restarted on the same data directory, and every SIM whose 201 reached the client is still there.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

mod support;
use support::child_arcd::{free_port, ChildArcd};

const WORKERS: usize = 16;
const SUCCESSES_BEFORE_KILL: usize = 300;

#[derive(Clone)]
struct Session {
    base: String,
    api_key: String,
    token: String,
}

async fn sign_in(client: &reqwest::Client, base: &str, credentials: &Value) -> (Session, Value) {
    let response = client
        .post(format!("{base}/v1/auth"))
        .json(&json!({
            "authKeyId": credentials["authKeyId"],
            "authKey": credentials["authKey"],
        }))
        .send()
        .await
        .expect("auth request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("auth body");
    let session = Session {
        base: base.to_string(),
        api_key: body["apiKey"].as_str().expect("apiKey").to_string(),
        token: body["token"].as_str().expect("token").to_string(),
    };
    (session, body)
}

impl Session {
    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, format!("{}{path}", self.base))
            .header("X-Soracom-API-Key", &self.api_key)
            .header("X-Soracom-Token", &self.token)
    }
}

/// What a 201 promised about a SIM.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promised {
    imsi: String,
    public_key: String,
    client_ip: String,
}

fn promised(sim: &Value) -> (String, Promised) {
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let profile = &sim["profiles"][&sim_id];
    (
        sim_id.clone(),
        Promised {
            imsi: profile["primaryImsi"]
                .as_str()
                .expect("primaryImsi")
                .to_string(),
            public_key: profile["arcClientPeerPublicKey"]
                .as_str()
                .expect("arcClientPeerPublicKey")
                .to_string(),
            client_ip: sim["arcSessionStatus"]["arcClientPeerIpAddress"]
                .as_str()
                .expect("arcClientPeerIpAddress")
                .to_string(),
        },
    )
}

#[derive(Default)]
struct Tally {
    /// simId -> what its 201 said (only bodies received in full).
    acknowledged: Mutex<BTreeMap<String, Promised>>,
    successes: AtomicUsize,
    /// Requests that failed at the transport level and were started before the kill.
    in_flight_failures: AtomicUsize,
    /// Any transport failure (before or after the kill).
    connection_errors: AtomicUsize,
    /// Answers other than 201 (must stay 0: the server was healthy until it was killed).
    unexpected_status: Mutex<Vec<String>>,
}

async fn worker(
    client: reqwest::Client,
    session: Session,
    tally: Arc<Tally>,
    killed: Arc<AtomicBool>,
) {
    loop {
        let started_before_kill = !killed.load(Ordering::SeqCst);
        let result = session
            .request(&client, reqwest::Method::POST, "/v1/sims")
            .json(&json!({"type": "virtual", "subscription": "planArc01"}))
            .send()
            .await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(bytes) if status == StatusCode::CREATED => {
                        let body: Value =
                            serde_json::from_slice(&bytes).expect("a complete 201 body is JSON");
                        let (sim_id, promise) = promised(&body);
                        tally.acknowledged.lock().unwrap().insert(sim_id, promise);
                        tally.successes.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                    Ok(bytes) => {
                        tally
                            .unexpected_status
                            .lock()
                            .unwrap()
                            .push(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            tally.connection_errors.fetch_add(1, Ordering::SeqCst);
            if started_before_kill {
                tally.in_flight_failures.fetch_add(1, Ordering::SeqCst);
            }
            if killed.load(Ordering::SeqCst) {
                return;
            }
        }
        // Past the kill with no error yet: keep going until the dead server shows.
    }
}

/// Every SIM of the operator, following `x-soracom-next-key`.
async fn list_all(client: &reqwest::Client, session: &Session) -> Vec<Value> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = session.request(client, reqwest::Method::GET, "/v1/sims");
        request = request.query(&[("limit", "100")]);
        if let Some(key) = &next {
            request = request.query(&[("last_evaluated_key", key.as_str())]);
        }
        let response = request.send().await.expect("listSims");
        assert_eq!(response.status(), StatusCode::OK);
        next = response
            .headers()
            .get("x-soracom-next-key")
            .map(|v| v.to_str().expect("ascii").to_string());
        let page: Vec<Value> = response.json().await.expect("page");
        assert!(page.len() <= 100);
        all.extend(page);
        pages += 1;
        assert!(pages < 1000, "pagination does not end");
        if next.is_none() {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_sims_survive_sigkill() {
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

    // First life.
    let t0 = Instant::now();
    let mut first = ChildArcd::spawn(&data_dir, port, dir.path(), "1", &[]);
    first.wait_ready(&data_dir, port, &client).await;
    let startup = t0.elapsed();
    let credentials_text =
        std::fs::read(data_dir.join("root-credentials.json")).expect("root credentials");
    let credentials: Value = serde_json::from_slice(&credentials_text).expect("JSON");
    let (session, auth) = sign_in(&client, &base, &credentials).await;
    assert_eq!(auth["operatorId"], credentials["operatorId"]);

    let tally = Arc::new(Tally::default());
    let killed = Arc::new(AtomicBool::new(false));
    let burst_started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                session.clone(),
                tally.clone(),
                killed.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.successes.load(Ordering::SeqCst) < SUCCESSES_BEFORE_KILL {
        assert!(Instant::now() < deadline, "the burst is too slow");
        assert!(
            tally.unexpected_status.lock().unwrap().is_empty(),
            "{:?}",
            tally.unexpected_status.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let time_to_kill = burst_started.elapsed();
    killed.store(true, Ordering::SeqCst);
    let exit = first.kill();
    assert!(!exit.success(), "arcd was killed, not stopped: {exit}");
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("workers notice the dead server")
            .expect("worker panicked");
    }
    let first_stdout = first.stdout();
    drop(first);
    let acknowledged = tally.acknowledged.lock().unwrap().clone();
    let successes = tally.successes.load(Ordering::SeqCst);
    let in_flight = tally.in_flight_failures.load(Ordering::SeqCst);
    assert!(tally.unexpected_status.lock().unwrap().is_empty());
    assert_eq!(acknowledged.len(), successes, "simIds are unique");
    assert!(successes >= SUCCESSES_BEFORE_KILL);
    assert!(
        in_flight > 0,
        "the kill should cut requests in flight ({} connection errors)",
        tally.connection_errors.load(Ordering::SeqCst)
    );
    assert!(
        first_stdout.contains(credentials["authKey"].as_str().unwrap()),
        "first start prints the credentials"
    );

    // Second life on the same data directory and port.
    let t1 = Instant::now();
    let mut second = ChildArcd::spawn(&data_dir, port, dir.path(), "2", &[]);
    second.wait_ready(&data_dir, port, &client).await;
    let restart = t1.elapsed();
    assert_eq!(
        std::fs::read(data_dir.join("root-credentials.json")).expect("root credentials"),
        credentials_text,
        "root credentials unchanged"
    );
    let (session, auth) = sign_in(&client, &base, &credentials).await;
    assert_eq!(auth["operatorId"], credentials["operatorId"]);

    let t2 = Instant::now();
    for (sim_id, promise) in &acknowledged {
        let response = session
            .request(&client, reqwest::Method::GET, &format!("/v1/sims/{sim_id}"))
            .send()
            .await
            .expect("getSim");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged SIM {sim_id} lost"
        );
        let sim: Value = response.json().await.expect("JSON");
        let (got_id, got) = promised(&sim);
        assert_eq!(&got_id, sim_id);
        assert_eq!(&got, promise, "SIM {sim_id} changed across the crash");
        assert!(sim["profiles"][sim_id]["arcClientPeerPrivateKey"].is_null());
    }
    let listed = list_all(&client, &session).await;
    let verify = t2.elapsed();
    let listed_ids: BTreeSet<String> = listed
        .iter()
        .map(|s| s["simId"].as_str().expect("simId").to_string())
        .collect();
    assert_eq!(listed_ids.len(), listed.len(), "listSims repeats a SIM");
    let missing: Vec<&String> = acknowledged
        .keys()
        .filter(|id| !listed_ids.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "listSims misses acknowledged SIMs {missing:?}"
    );
    // Whatever committed is whole: every listed SIM has its subscriber and its session.
    for sim in &listed {
        let (_, p) = promised(sim);
        assert!(p.imsi.starts_with("99999") && p.imsi.len() == 15, "{sim}");
        assert_eq!(sim["sessionStatus"]["online"], true, "{sim}");
    }
    let second_stdout = second.stdout();
    assert!(
        !second_stdout.contains("first start"),
        "a second root operator was announced: {second_stdout}"
    );
    second.kill();
    drop(second);

    // Exactly one operator, the root one.
    let store = arcd::store::Store::open(&data_dir.join("arcd.sqlite")).expect("open store");
    let operators: Vec<String> = store
        .sqlite()
        .expect("a SQLite store")
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT operator_id FROM operators")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("operators");
    assert_eq!(
        operators,
        vec![credentials["operatorId"].as_str().unwrap().to_string()]
    );

    println!(
        "crash test: startup {startup:?}; {successes} acknowledged in {time_to_kill:?} with {WORKERS} workers \
         ({:.0}/s), {in_flight} requests cut by SIGKILL, {} SIMs committed in all ({} committed but \
         unacknowledged); restart {restart:?}; verification {verify:?}",
        successes as f64 / time_to_kill.as_secs_f64(),
        listed.len(),
        listed.len() - acknowledged.len(),
    );
}
