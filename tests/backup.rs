//! `arcd backup` while the real binary serves a createSim burst and Harvest writes, then `arcd
//! restore` and a device handshake on the restored server.
//!
//! Harvest entries reach the store from the in-tunnel Harvest service, which needs a TUN device;
//! here a second writer process (this test, through `arcd::store::harvest::insert`, the code the
//! service commits with) writes them into the served database, as the administrative commands do
//! beside `serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![allow(unsafe_code)] // libc::kill: the test sends arcd the signal a service manager would

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};
use tokio::sync::Notify;

use arcd::store::db::Backend;
use arcd::store::harvest::{self, NewEntry};
use arcd::store::Store;
use support::child_arcd::{free_port, ChildArcd};
use support::wgclient::{udp_packet, WgClient};

const WORKERS: usize = 8;
/// Acknowledged SIMs and Harvest entries wanted before the backup starts.
const BEFORE_BACKUP: usize = 100;
const METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);

fn arcd_command(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcd"));
    command
        .env_remove("ARCD_CONFIG")
        .env("ARCD_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// `arcd serve` with WireGuard on a loopback port known in advance (the device of the SIM made
/// before the backup must reach the restored server at the same endpoint).
fn spawn_arcd(
    data_dir: &Path,
    api_port: u16,
    wg_port: u16,
    log_dir: &Path,
    run: &str,
) -> ChildArcd {
    let rendezvous_points = format!(
        r#"[{{id="ap-northeast-1",listen="127.0.0.1:{wg_port}",endpoint="127.0.0.1:{wg_port}",pool="10.64.0.0/16",allowed_ips=["100.127.0.0/16"]}}]"#
    );
    ChildArcd::spawn(
        data_dir,
        api_port,
        log_dir,
        run,
        &[("ARCD_RENDEZVOUS_POINTS", &rendezvous_points)],
    )
}

/// SIGTERM, as a service manager stops it, then reap.
fn terminate(arcd: &mut ChildArcd) {
    let pid = libc::pid_t::try_from(arcd.child.id()).expect("pid");
    // SAFETY: signalling our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = arcd.child.wait().expect("wait");
    assert!(
        status.success(),
        "arcd stopped with {status}: {}",
        arcd.stderr()
    );
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    socket.local_addr().expect("local addr").port()
}

#[derive(Clone)]
struct Session {
    base: String,
    api_key: String,
    token: String,
    operator_id: String,
}

impl Session {
    async fn sign_in(client: &reqwest::Client, base: &str, credentials: &Value) -> Session {
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
        Session {
            base: base.to_string(),
            api_key: body["apiKey"].as_str().expect("apiKey").to_string(),
            token: body["token"].as_str().expect("token").to_string(),
            operator_id: body["operatorId"].as_str().expect("operatorId").to_string(),
        }
    }

    async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = client
            .request(method, format!("{}{path}", self.base))
            .header("X-Soracom-API-Key", &self.api_key)
            .header("X-Soracom-Token", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn create_sim(&self, client: &reqwest::Client) -> Value {
        let (status, body) = self
            .call(
                client,
                reqwest::Method::POST,
                "/v1/sims",
                Some(json!({"type": "virtual", "subscription": "planArc01"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "createSim: {body}");
        body
    }
}

/// Writes acknowledged (committed) by the burst, in order.
#[derive(Default)]
struct Acked {
    sims: Mutex<Vec<String>>,
    harvest: Mutex<Vec<String>>,
    progress: Notify,
}

impl Acked {
    fn counts(&self) -> (usize, usize) {
        (
            self.sims.lock().expect("lock").len(),
            self.harvest.lock().expect("lock").len(),
        )
    }

    async fn wait_for(&self, sims: usize, harvest: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let notified = self.progress.notified();
            let (s, h) = self.counts();
            if s >= sims && h >= harvest {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the burst is too slow: {s} SIMs, {h} entries"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }
}

/// A writer of the burst: createSim through the API, then one Harvest entry (with content of its
/// own) through the second store writer, so both kinds of write interleave at the API's pace.
async fn write_burst(
    client: reqwest::Client,
    session: Session,
    harvest_store: Arc<Store>,
    device: NewEntry,
    acked: Arc<Acked>,
    stop: Arc<AtomicBool>,
) {
    static ENTRY: AtomicU64 = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        let sim = session.create_sim(&client).await;
        let sim_id = sim["simId"].as_str().expect("simId").to_string();
        acked.sims.lock().expect("lock").push(sim_id);
        let entry = NewEntry {
            time: arcd::store::now_ms(),
            content: format!("{{\"n\":{}}}", ENTRY.fetch_add(1, Ordering::SeqCst)),
            ..device.clone()
        };
        let content = entry.content.clone();
        let store = harvest_store.clone();
        tokio::task::spawn_blocking(move || {
            store.write_db(|db| harvest::insert(db, std::slice::from_ref(&entry)))
        })
        .await
        .expect("join")
        .expect("harvest write");
        acked.harvest.lock().expect("lock").push(content);
        acked.progress.notify_waiters();
    }
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run arcd")
}

fn strings(conn: &Connection, sql: &str) -> BTreeSet<String> {
    let mut statement = conn.prepare(sql).expect("prepare");
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0)).expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_backup_is_consistent_and_restores_a_working_server() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let backup_file = dir.path().join("backups").join("arcd-backup.sqlite");
    std::fs::create_dir_all(backup_file.parent().expect("parent")).expect("backup dir");
    let (api_port, wg_port) = (free_port(), free_udp_port());
    let base = format!("http://127.0.0.1:{api_port}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    let mut first = spawn_arcd(&data_dir, api_port, wg_port, dir.path(), "1");
    first.wait_ready(&data_dir, api_port, &client).await;
    let credentials: Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("root-credentials.json")).expect("root credentials"),
    )
    .expect("JSON");
    let session = Session::sign_in(&client, &base, &credentials).await;

    // The device that must still connect after the restore: created before the backup.
    let device_sim = session.create_sim(&client).await;
    let device_sim_id = device_sim["simId"].as_str().expect("simId").to_string();
    let device_key = device_sim["profiles"][&device_sim_id]["arcClientPeerPrivateKey"]
        .as_str()
        .expect("private key")
        .to_string();
    let device_imsi = device_sim["profiles"][&device_sim_id]["primaryImsi"]
        .as_str()
        .expect("imsi")
        .to_string();
    let device_ip: Ipv4Addr = device_sim["arcSessionStatus"]["arcClientPeerIpAddress"]
        .as_str()
        .expect("client ip")
        .parse()
        .expect("ipv4");
    let server_key = device_sim["arcSessionStatus"]["arcServerPeerPublicKey"]
        .as_str()
        .expect("server key")
        .to_string();

    // A reader that stays on an old snapshot (a long report, a slow listing) keeps checkpoints
    // from moving newer commits into the database file until it ends: the backup must take them
    // from the WAL. (Without it a copy of the file alone still misses whatever the last
    // checkpoint, at most 100 ms old, has not moved; with it the copy misses the whole burst.)
    let old_reader = Connection::open_with_flags(
        data_dir.join("arcd.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("reader");
    old_reader.execute_batch("BEGIN").expect("begin");
    assert!(count(&old_reader, "SELECT count(*) FROM sims") >= 1);

    // The burst: createSim through the API, Harvest entries through a second store writer.
    let acked = Arc::new(Acked::default());
    let stop = Arc::new(AtomicBool::new(false));
    let harvest_store =
        Arc::new(Store::open(&data_dir.join("arcd.sqlite")).expect("second writer"));
    let device = NewEntry {
        operator_id: session.operator_id.as_str().into(),
        imsi: device_imsi.as_str().into(),
        sim_id: device_sim_id.as_str().into(),
        time: 0,
        content_type: "application/json".into(),
        content: String::new(),
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(write_burst(
                client.clone(),
                session.clone(),
                harvest_store.clone(),
                device.clone(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    acked.wait_for(BEFORE_BACKUP, BEFORE_BACKUP).await;

    // Everything acknowledged up to here must be in the backup.
    let sims_before: Vec<String> = acked.sims.lock().expect("lock").clone();
    let harvest_before: Vec<String> = acked.harvest.lock().expect("lock").clone();
    let backup = tokio::task::spawn_blocking({
        let (data_dir, backup_file) = (data_dir.clone(), backup_file.clone());
        move || {
            run(arcd_command(&data_dir)
                .arg("backup")
                .arg("--output")
                .arg(&backup_file))
        }
    })
    .await
    .expect("join");
    assert!(
        backup.status.success(),
        "arcd backup failed: {}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let summary: Value = serde_json::from_slice(&backup.stdout).expect("backup prints JSON");
    assert_eq!(summary["schemaVersion"], arcd::store::SCHEMA_VERSION);
    let (sims_after_backup, harvest_after_backup) = acked.counts();
    old_reader
        .execute_batch("COMMIT")
        .expect("end the old read");
    drop(old_reader);
    // Writes go on after the backup: these must not come back with the restore.
    acked
        .wait_for(sims_after_backup + WORKERS, harvest_after_backup + WORKERS)
        .await;

    // Restore refuses while the server runs (it holds the data directory's lock).
    let refused = run(arcd_command(&data_dir)
        .arg("restore")
        .arg("--input")
        .arg(&backup_file));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use by another `arcd serve`"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("burst writer");
    }
    drop(harvest_store);
    let sim_after = acked
        .sims
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("SIMs");
    assert!(!sims_before.contains(&sim_after));
    terminate(&mut first);

    // The backup: sound, one self-contained file, owner-only, every acknowledged write in it.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&backup_file)
            .expect("backup")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let copy = Connection::open_with_flags(&backup_file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open backup");
    let integrity: String = copy
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let sims_in_copy = strings(&copy, "SELECT sim_id FROM sims");
    let missing: Vec<&String> = sims_before
        .iter()
        .filter(|id| !sims_in_copy.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} SIMs acknowledged before the backup are not in it: {missing:?}",
        missing.len(),
        sims_before.len()
    );
    assert!(sims_in_copy.contains(&device_sim_id));
    let entries_in_copy = strings(&copy, "SELECT content FROM harvest_entries");
    let missing: Vec<&String> = harvest_before
        .iter()
        .filter(|content| !entries_in_copy.contains(*content))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} Harvest entries acknowledged before the backup are not in it",
        missing.len(),
        harvest_before.len()
    );
    // One commit's state: every SIM has its subscriber and session, and the trigger-kept
    // per-operator count matches the rows (a copy torn between commits breaks these).
    assert_eq!(
        count(
            &copy,
            "SELECT count(*) FROM sims WHERE sim_id NOT IN (SELECT sim_id FROM arc_sessions)
                                        OR sim_id NOT IN (SELECT sim_id FROM subscribers)"
        ),
        0
    );
    assert_eq!(
        count(&copy, "SELECT sum(live_sims) FROM operator_sim_counts"),
        count(
            &copy,
            "SELECT count(*) FROM sims WHERE status <> 'terminated'"
        )
    );
    let journal: String = copy
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal_mode");
    assert_eq!(journal, "delete", "a backup must not need a -wal file");
    drop(copy);

    // Restore, then the same device handshakes with the restored server.
    let restored = run(arcd_command(&data_dir)
        .arg("restore")
        .arg("--input")
        .arg(&backup_file));
    assert!(
        restored.status.success(),
        "arcd restore failed: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let restore_summary: Value =
        serde_json::from_slice(&restored.stdout).expect("restore prints JSON");
    let kept = restore_summary["replacedDatabaseKeptAs"]
        .as_str()
        .expect("the replaced database is kept");
    assert!(Path::new(kept).is_file());
    assert!(!data_dir.join("arcd.sqlite-wal").exists());

    let wg_port = free_udp_port();
    let mut second = spawn_arcd(&data_dir, api_port, wg_port, dir.path(), "2");
    second.wait_ready(&data_dir, api_port, &client).await;
    let session = Session::sign_in(&client, &base, &credentials).await;
    let (status, sim) = session
        .call(
            &client,
            reqwest::Method::GET,
            &format!("/v1/sims/{device_sim_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sim}");
    assert_eq!(
        sim["arcSessionStatus"]["arcClientPeerIpAddress"],
        device_ip.to_string()
    );
    let (status, _) = session
        .call(
            &client,
            reqwest::Method::GET,
            &format!("/v1/sims/{sim_after}"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a SIM created after the backup survived the restore"
    );
    let mut device = WgClient::new(
        &device_key,
        &server_key,
        SocketAddr::from(([127, 0, 0, 1], wg_port)),
    )
    .await;
    assert!(
        device
            .connect(
                &udp_packet(device_ip, METADATA, 40000, 80, b"after restore"),
                Duration::from_secs(5)
            )
            .await,
        "the device of a SIM created before the backup cannot handshake after the restore"
    );
    terminate(&mut second);
}
