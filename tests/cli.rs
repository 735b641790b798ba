//! The real `arcd` binary: version and help, administrative commands (also while `arcd serve` runs
//! on the same data directory), CSV import, configuration errors (exit code 2) and the first start
//! with no configuration at all.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

const CSV_HEADER: &str = "iccid,imsi,msisdn,subscription";

/// `arcd` with a clean environment: no configuration from the machine running the tests.
/// The default rendezvous point, on an ephemeral UDP port.
const EPHEMERAL_RENDEZVOUS_POINT: &str = r#"[{id="ap-northeast-1",listen="127.0.0.1:0",endpoint="127.0.0.1:11010",pool="10.64.0.0/16",allowed_ips=["100.127.0.0/16"]}]"#;

fn arcd(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcd"));
    command.current_dir(cwd).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ARCD_") {
            command.env_remove(&key);
        }
    }
    command
}

/// A finished command.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    #[track_caller]
    fn assert_success(&self) -> &Ran {
        assert!(
            self.status.success(),
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Ran {
        assert_eq!(
            self.status.code(),
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn assert_failure(&self) -> &Ran {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a failing exit, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn stderr_has(&self, needle: &str) -> &Ran {
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// A spawned child that is killed and reaped when dropped, even if the test panics.
struct Guard {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Guard {
    fn spawn(mut command: Command, logs: &Path, name: &str) -> Guard {
        let out = logs.join(format!("{name}.stdout"));
        let err = logs.join(format!("{name}.stderr"));
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("log file"))
            .stderr(File::create(&err).expect("log file"))
            .spawn()
            .expect("spawn arcd");
        Guard { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the exit; a command that hangs is killed and fails the test.
    fn finish(mut self, limit: Duration) -> Ran {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Ran {
                    status,
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "arcd did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (a clean shutdown) by process id; `None` if no `kill` program is available.
    fn terminate(self) -> Option<Ran> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            return None;
        }
        Some(self.finish(Duration::from_secs(20)))
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "arcd exited with {status}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to its end (at most 60 s), output captured.
fn run(command: Command, logs: &Path) -> Ran {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Guard::spawn(command, logs, &format!("run-{n}")).finish(Duration::from_secs(60))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn alnum_after<'a>(text: &'a str, prefix: &str, len: usize) -> Option<&'a str> {
    let rest = text.strip_prefix(prefix)?;
    (rest.len() == len && rest.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(rest)
}

#[track_caller]
fn assert_credentials_format(credentials: &Value) {
    let op = credentials["operatorId"].as_str().expect("operatorId");
    assert!(
        op.len() == 12 && op.starts_with("OP") && op[2..].bytes().all(|b| b.is_ascii_digit()),
        "operatorId {op}"
    );
    let key_id = credentials["authKeyId"].as_str().expect("authKeyId");
    assert!(
        alnum_after(key_id, "keyId-", 32).is_some(),
        "authKeyId {key_id}"
    );
    let key = credentials["authKey"].as_str().expect("authKey");
    assert!(alnum_after(key, "secret-", 64).is_some(), "authKey {key}");
}

fn client(accept_invalid_certs: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_danger_accept_invalid_certs(accept_invalid_certs)
        .build()
        .expect("client")
}

/// Polls `GET {base}/openapi.yaml` until it answers 200.
async fn wait_ready(server: &mut Guard, client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.assert_running();
        let answered = client
            .get(format!("{base}/openapi.yaml"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if answered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "arcd did not answer; stderr:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs in; returns (api key, token).
async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    key_id: &str,
    key: &str,
) -> (String, String) {
    let response = client
        .post(format!("{base}/v1/auth"))
        .json(&json!({"authKeyId": key_id, "authKey": key}))
        .send()
        .await
        .expect("auth");
    let status = response.status();
    let body: Value = response.json().await.expect("auth body");
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["apiKey"].as_str().expect("apiKey").to_string(),
        body["token"].as_str().expect("token").to_string(),
    )
}

async fn get(
    client: &reqwest::Client,
    base: &str,
    auth: &(String, String),
    path: &str,
) -> (StatusCode, Value) {
    let response = client
        .get(format!("{base}{path}"))
        .header("X-Soracom-API-Key", &auth.0)
        .header("X-Soracom-Token", &auth.1)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

#[test]
fn version_prints_the_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let mut command = arcd(dir.path());
    command.arg("version");
    let ran = run(command, logs.path());
    ran.assert_success();
    assert_eq!(
        ran.stdout.trim(),
        format!("arcd {}", env!("CARGO_PKG_VERSION"))
    );
    let mut command = arcd(dir.path());
    command.arg("--version");
    let ran = run(command, logs.path());
    ran.assert_success();
    assert!(
        ran.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        ran.stdout
    );
    // `version` needs no configuration, even a broken one, and writes nothing.
    let mut command = arcd(dir.path());
    command.arg("version").env("ARCD_API__LISTEN", "bad");
    run(command, logs.path()).assert_success();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn help_describes_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = arcd(dir.path());
    command.arg("--help");
    let ran = run(command, dir.path());
    ran.assert_success();
    for needle in [
        "SORACOM-compatible",
        "virtual SIM",
        "serve",
        "operator",
        "authkey",
        "iotsim",
        "version",
        "--config",
        "ARCD_API__LISTEN",
    ] {
        assert!(
            ran.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            ran.stdout
        );
    }
    let mut command = arcd(dir.path());
    command.args(["iotsim", "import", "--help"]);
    let ran = run(command, dir.path());
    ran.assert_success();
    for needle in ["Import IoT SIMs", "CSV", CSV_HEADER, "--operator", "<FILE>"] {
        assert!(
            ran.stdout.contains(needle),
            "iotsim import --help lacks {needle:?}:\n{}",
            ran.stdout
        );
    }
    // An unknown command is a usage error, not a server start.
    let mut command = arcd(dir.path());
    command.arg("frobnicate");
    run(command, dir.path())
        .assert_failure()
        .stderr_has("frobnicate");
    assert!(!dir.path().join("arcd-data").exists());
}

#[test]
fn operator_and_authkey_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let with_data = |args: &[&str]| {
        let mut command = arcd(dir.path());
        command.args(args).env("ARCD_DATA_DIR", &data);
        run(command, dir.path())
    };
    let created = with_data(&["operator", "create"]);
    let operator = created.assert_success().json();
    assert_credentials_format(&operator);
    let op = operator["operatorId"].as_str().unwrap();

    let second = with_data(&["operator", "create"]).assert_success().json();
    assert_credentials_format(&second);
    assert_ne!(second["operatorId"], operator["operatorId"]);

    let key = with_data(&["authkey", "create", "--operator", op])
        .assert_success()
        .json();
    assert_credentials_format(&key);
    assert_eq!(key["operatorId"], operator["operatorId"]);
    assert_ne!(key["authKeyId"], operator["authKeyId"]);
    assert_ne!(key["authKey"], operator["authKey"]);

    let unknown = with_data(&["authkey", "create", "--operator", "OP0000000000"]);
    unknown.assert_failure().stderr_has("operator not found");
    assert!(unknown.stdout.trim().is_empty(), "{}", unknown.stdout);
    let missing_arg = with_data(&["authkey", "create"]);
    missing_arg.assert_failure().stderr_has("--operator");
}

fn csv(rows: &[&str]) -> String {
    let mut text = format!("{CSV_HEADER}\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    text
}

/// Row `n` of test CSVs: ICCID, IMSI, MSISDN, plan.
fn row(n: u32) -> (String, String, String) {
    (
        format!("8981200000000{n:06}"),
        format!("440200000{n:06}"),
        format!("8180000{n:05}"),
    )
}

fn row_text(n: u32) -> String {
    let (iccid, imsi, msisdn) = row(n);
    format!("{iccid},{imsi},{msisdn},plan-D")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iotsim_import_and_commands_next_to_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let command = |args: &[&str]| {
        let mut command = arcd(dir.path());
        command.args(args).env("ARCD_DATA_DIR", &data);
        command
    };
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write csv");
        path.to_str().unwrap().to_string()
    };

    let operator = run(command(&["operator", "create"]), dir.path())
        .assert_success()
        .json();
    let op = operator["operatorId"].as_str().unwrap().to_string();
    let good = write(
        "good.csv",
        &csv(&[&row_text(1), &row_text(2), &row_text(3)]),
    );
    let ran = run(
        command(&["iotsim", "import", &good, "--operator", &op]),
        dir.path(),
    );
    ran.assert_success();
    assert!(ran.stdout.contains("imported 3"), "{}", ran.stdout);

    // Start the server on the same data directory (plain HTTP).
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = command(&["serve"]);
    serve
        .env("ARCD_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("ARCD_API__TLS", "false")
        // No TUN device and an ephemeral WireGuard port: this server may run beside others.
        .env("ARCD_TUN__ENABLED", "false")
        .env("ARCD_RENDEZVOUS_POINTS", EPHEMERAL_RENDEZVOUS_POINT);
    let mut server = Guard::spawn(serve, dir.path(), "serve");
    let http = client(false);
    wait_ready(&mut server, &http, &base).await;
    let auth = sign_in(
        &http,
        &base,
        operator["authKeyId"].as_str().unwrap(),
        operator["authKey"].as_str().unwrap(),
    )
    .await;
    let (status, sims) = get(&http, &base, &auth, "/v1/sims").await;
    assert_eq!(status, StatusCode::OK, "{sims}");
    let sims = sims.as_array().expect("array").clone();
    assert_eq!(sims.len(), 3, "{sims:?}");
    for (sim, n) in sims.iter().zip(1..) {
        let (iccid, imsi, msisdn) = row(n);
        assert_eq!(sim["simId"], iccid.as_str());
        assert_eq!(sim["operatorId"], op.as_str());
        let profile = &sim["profiles"][&iccid];
        assert_eq!(profile["primaryImsi"], imsi.as_str());
        assert_eq!(profile["subscribers"][&imsi]["msisdn"], msisdn.as_str());
        assert_eq!(profile["subscribers"][&imsi]["subscription"], "plan-D");
    }

    // Commands work while serve runs: a new auth key signs in at once.
    let key = run(
        command(&["authkey", "create", "--operator", &op]),
        dir.path(),
    )
    .assert_success()
    .json();
    let auth2 = sign_in(
        &http,
        &base,
        key["authKeyId"].as_str().unwrap(),
        key["authKey"].as_str().unwrap(),
    )
    .await;
    // ...and SIMs imported now show through the running API.
    let more = write("more.csv", &csv(&[&row_text(4), &row_text(5)]));
    run(
        command(&["iotsim", "import", &more, "--operator", &op]),
        dir.path(),
    )
    .assert_success();
    let (status, sim) = get(&http, &base, &auth2, &format!("/v1/sims/{}", row(5).0)).await;
    assert_eq!(status, StatusCode::OK, "{sim}");
    let count = |sims: &Value| sims.as_array().map(Vec::len).unwrap_or(0);
    let (_, all) = get(&http, &base, &auth2, "/v1/sims").await;
    assert_eq!(count(&all), 5);

    // Bad files: an error naming the line, a failing exit, and nothing imported.
    let (iccid1, _, _) = row(1);
    let bad_files = [
        (
            "10-digit IMSI on line 3",
            csv(&[
                &row_text(6),
                "8981200000000000007,4402000000,,plan-D",
                &row_text(8),
            ]),
            "line 3",
        ),
        (
            "ICCID already registered on line 3",
            csv(&[
                &row_text(6),
                &format!("{iccid1},440200000000077,,plan-D"),
                &row_text(8),
            ]),
            "line 3",
        ),
        (
            "IMSI already registered on line 3",
            csv(&[
                &row_text(6),
                &format!("8981200000000000007,{},,plan-D", row(2).1),
                &row_text(8),
            ]),
            "line 3",
        ),
        (
            "three fields on line 3",
            csv(&[
                &row_text(6),
                "8981200000000000007,440200000000007,plan-D",
                &row_text(8),
            ]),
            "line 3",
        ),
        (
            "wrong header",
            format!("iccid,imsi,subscription\n{}\n", row_text(6)),
            "line 1",
        ),
        ("header only", format!("{CSV_HEADER}\n"), "no rows"),
    ];
    for (what, text, needle) in bad_files {
        let file = write("bad.csv", &text);
        let ran = run(
            command(&["iotsim", "import", &file, "--operator", &op]),
            dir.path(),
        );
        ran.assert_failure();
        assert!(
            ran.stderr.contains(needle),
            "{what}: stderr lacks {needle:?}:\n{}",
            ran.stderr
        );
        assert!(
            ran.stderr.contains("bad.csv"),
            "{what}: names the file:\n{}",
            ran.stderr
        );
        let (_, all) = get(&http, &base, &auth, "/v1/sims").await;
        assert_eq!(count(&all), 5, "{what}: nothing imported");
        for n in [6, 7, 8] {
            let (status, _) = get(&http, &base, &auth, &format!("/v1/sims/{}", row(n).0)).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{what}: row {n} must not exist"
            );
        }
    }
    let ran = run(
        command(&[
            "iotsim",
            "import",
            &dir.path().join("nope.csv").to_string_lossy(),
            "--operator",
            &op,
        ]),
        dir.path(),
    );
    ran.assert_failure().stderr_has("nope.csv");
    let good_again = write("again.csv", &csv(&[&row_text(9)]));
    let ran = run(
        command(&[
            "iotsim",
            "import",
            &good_again,
            "--operator",
            "OP0000000000",
        ]),
        dir.path(),
    );
    ran.assert_failure().stderr_has("operator not found");
    let (_, all) = get(&http, &base, &auth, "/v1/sims").await;
    assert_eq!(count(&all), 5);

    server.assert_running();
    if let Some(stopped) = server.terminate() {
        stopped.assert_success();
    }
}

fn config_error(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = arcd(dir);
    command.args(args).env("ARCD_DATA_DIR", dir.join("data"));
    for (k, v) in env {
        command.env(k, v);
    }
    let ran = run(command, dir);
    ran.assert_code(2);
    assert!(
        !dir.join("data").exists(),
        "a config error must not touch the data dir"
    );
    ran
}

#[test]
fn configuration_errors_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path.to_str().unwrap().to_string()
    };
    let bad_listen = file("bad-listen.toml", "[api]\nlisten = \"nope\"\n");
    let unknown_key = file("unknown.toml", "[api]\nlsiten = \"127.0.0.1:1\"\n");
    let unknown_top = file("unknown-top.toml", "colour = \"blue\"\n");
    let bad_type = file("bad-type.toml", "[api]\ntls = \"maybe\"\n");
    let not_toml = file("not-toml.toml", "[api\n");
    let missing = dir
        .path()
        .join("missing.toml")
        .to_str()
        .unwrap()
        .to_string();

    for command in [&["serve"][..], &["operator", "create"][..], &[][..]] {
        let with = |config: &str| -> Vec<String> {
            let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
            args.extend(["--config".to_string(), config.to_string()]);
            args
        };
        for (config, needle) in [
            (&bad_listen, Some("api.listen")),
            (&unknown_key, Some("lsiten")),
            (&unknown_top, Some("colour")),
            (&bad_type, Some("api.tls")),
            (&not_toml, None),
            (&missing, Some("missing.toml")),
        ] {
            let args = with(config);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ran = config_error(dir.path(), &args, &[]);
            if let Some(needle) = needle {
                ran.stderr_has(needle);
            }
        }
        config_error(dir.path(), command, &[("ARCD_API__LISTEN", "bad")]).stderr_has("api.listen");
        config_error(dir.path(), command, &[("ARCD_CONFIG", &missing)]).stderr_has("missing.toml");
    }
    // The environment wins over the file, so a bad environment value is reported even with a
    // good file; and a good environment value repairs a bad file.
    let good = file("good.toml", "[api]\nlisten = \"127.0.0.1:1\"\n");
    config_error(
        dir.path(),
        &["operator", "create", "--config", &good],
        &[("ARCD_API__TOKEN_TIMEOUT_SECONDS", "0")],
    )
    .stderr_has("api.token_timeout_seconds");
    let mut command = arcd(dir.path());
    command
        .args(["operator", "create", "--config", &bad_listen])
        .env("ARCD_DATA_DIR", dir.path().join("repaired"))
        .env("ARCD_API__LISTEN", "127.0.0.1:1");
    let ran = run(command, dir.path());
    ran.assert_success();
    assert_credentials_format(&ran.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_configuration() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let https = client(true);
    // Defaults except what would clash with an `arcd serve` already running on this machine
    // with its defaults (the README's first command): the API port, the TUN device `arc0` (and
    // its control sockets in /var/run/wireguard) and UDP 11010. The rendezvous point names only
    // its id and listen address; the rest are the defaults an entry gets.
    let serve = || {
        let mut command = arcd(cwd.path());
        command
            .arg("serve")
            .env("ARCD_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("ARCD_TUN__ENABLED", "false")
            .env(
                "ARCD_RENDEZVOUS_POINTS",
                r#"[{id="ap-northeast-1",listen="127.0.0.1:0"}]"#,
            );
        command
    };

    let mut first = Guard::spawn(serve(), logs.path(), "first");
    wait_ready(&mut first, &https, &base).await;
    let data = cwd.path().join("arcd-data");
    let credentials_path = data.join("root-credentials.json");
    let text = std::fs::read(&credentials_path).expect("root-credentials.json");
    let credentials: Value = serde_json::from_slice(&text).expect("JSON");
    assert_credentials_format(&credentials);
    let mode = std::fs::metadata(&credentials_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "root-credentials.json mode {mode:o}");
    let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode & 0o077, 0, "data dir mode {dir_mode:o}");
    assert!(data.join("tls-cert.pem").is_file(), "generated certificate");

    // HTTPS by default; the credentials sign in.
    let auth = sign_in(
        &https,
        &base,
        credentials["authKeyId"].as_str().unwrap(),
        credentials["authKey"].as_str().unwrap(),
    )
    .await;
    let (status, _) = get(&https, &base, &auth, "/v1/sims").await;
    assert_eq!(status, StatusCode::OK);
    let plain = client(false)
        .get(format!("http://127.0.0.1:{port}/openapi.yaml"))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| r.status() != StatusCode::OK),
        "plain HTTP must not be served when TLS is on"
    );

    // The secret is printed once, on stdout.
    let key = credentials["authKey"].as_str().unwrap();
    let stdout = first.stdout();
    assert_eq!(stdout.matches(key).count(), 1, "stdout:\n{stdout}");
    assert!(stdout.contains(credentials["authKeyId"].as_str().unwrap()));
    assert!(!first.stderr().contains(key), "the secret is not logged");
    // SIGTERM is a clean stop (without a `kill` program the guard's SIGKILL ends it instead).
    if let Some(stopped) = first.terminate() {
        stopped.assert_success();
    }

    // Second start: same file, nothing printed again.
    let mut second = Guard::spawn(serve(), logs.path(), "second");
    wait_ready(&mut second, &https, &base).await;
    assert_eq!(
        std::fs::read(&credentials_path).unwrap(),
        text,
        "file reused unchanged"
    );
    sign_in(
        &https,
        &base,
        credentials["authKeyId"].as_str().unwrap(),
        credentials["authKey"].as_str().unwrap(),
    )
    .await;
    let stdout = second.stdout();
    assert!(!stdout.contains(key), "printed again:\n{stdout}");
    assert!(!stdout.contains("first start"), "{stdout}");
    drop(second);
    let entries: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        vec!["arcd-data".to_string()],
        "serve writes only ./arcd-data"
    );
}

/// `arcd serve` on `data`: plain HTTP on `port`, no TUN, an ephemeral WireGuard port.
fn serve_on(cwd: &Path, data: &Path, port: u16, extra: &[&str]) -> Command {
    let mut command = arcd(cwd);
    command
        .arg("serve")
        .args(extra)
        .env("ARCD_DATA_DIR", data)
        .env("ARCD_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("ARCD_API__TLS", "false")
        .env("ARCD_TUN__ENABLED", "false")
        .env("ARCD_RENDEZVOUS_POINTS", EPHEMERAL_RENDEZVOUS_POINT);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_serve_on_one_data_dir_exits_naming_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut first = Guard::spawn(serve_on(dir.path(), &data, port, &[]), dir.path(), "first");
    wait_ready(
        &mut first,
        &client(false),
        &format!("http://127.0.0.1:{port}"),
    )
    .await;

    let second = Guard::spawn(
        serve_on(dir.path(), &data, free_port(), &[]),
        dir.path(),
        "second",
    )
    .finish(Duration::from_secs(30));
    second
        .assert_failure()
        .stderr_has("in use by another `arcd serve`")
        .stderr_has(&format!("process {}", first.child.id()))
        .stderr_has("arcd.lock");
    // Administrative commands still run beside the server, and it keeps running.
    let mut create = arcd(dir.path());
    create
        .args(["operator", "create"])
        .env("ARCD_DATA_DIR", &data);
    run(create, dir.path()).assert_success();
    first.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_is_not_silently_reinitialized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let credentials_path = data.join("root-credentials.json");
    let old_credentials =
        br#"{"operatorId":"OP0000000001","authKeyId":"keyId-old","authKey":"secret-old"}"#;
    std::fs::write(&credentials_path, old_credentials).expect("credentials");
    std::fs::set_permissions(&credentials_path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let database = data.join("arcd.sqlite");
    File::create(&database).expect("zero-length database");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    let refused = Guard::spawn(
        serve_on(dir.path(), &data, port, &[]),
        dir.path(),
        "refused",
    )
    .finish(Duration::from_secs(30));
    refused
        .assert_failure()
        .stderr_has("root-credentials.json")
        .stderr_has("is empty")
        .stderr_has("--reinitialize");
    let mut create = arcd(dir.path());
    create
        .args(["operator", "create"])
        .env("ARCD_DATA_DIR", &data);
    run(create, dir.path())
        .assert_failure()
        .stderr_has("--reinitialize");
    assert_eq!(std::fs::read(&credentials_path).unwrap(), old_credentials);
    assert_eq!(
        std::fs::metadata(&database).unwrap().len(),
        0,
        "database untouched"
    );
    assert!(!data.join("arcd.sqlite-wal").exists(), "no WAL written");

    // The explicit switch starts over: new root operator, new credentials that sign in.
    let mut server = Guard::spawn(
        serve_on(dir.path(), &data, port, &["--reinitialize"]),
        dir.path(),
        "reinitialized",
    );
    let http = client(false);
    wait_ready(&mut server, &http, &base).await;
    let text = std::fs::read(&credentials_path).expect("credentials");
    assert_ne!(text, old_credentials, "credentials replaced");
    let credentials: Value = serde_json::from_slice(&text).expect("JSON");
    assert_credentials_format(&credentials);
    let key_id = credentials["authKeyId"].as_str().unwrap().to_string();
    let key = credentials["authKey"].as_str().unwrap().to_string();
    sign_in(&http, &base, &key_id, &key).await;
    drop(server);

    // A later start (no switch needed: the database has its root operator) puts a loosened
    // credentials file back to 0600.
    std::fs::set_permissions(&credentials_path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let mut again = Guard::spawn(serve_on(dir.path(), &data, port, &[]), dir.path(), "again");
    wait_ready(&mut again, &http, &base).await;
    let mode = std::fs::metadata(&credentials_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "root-credentials.json mode {mode:o}");
    sign_in(&http, &base, &key_id, &key).await;
}

#[test]
fn damaged_database_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut create = arcd(dir.path());
    create
        .args(["operator", "create"])
        .env("ARCD_DATA_DIR", &data);
    run(create, dir.path()).assert_success();
    let database = data.join("arcd.sqlite");
    let mut bytes = std::fs::read(&database).expect("database");
    assert!(bytes.len() > 3 * 4096, "database has pages past the schema");
    // Every page after the first two: the schema still reads, the tables do not.
    for byte in &mut bytes[2 * 4096..] {
        *byte = 0xA5;
    }
    std::fs::write(&database, &bytes).expect("damage");

    let ran = Guard::spawn(
        serve_on(dir.path(), &data, free_port(), &[]),
        dir.path(),
        "damaged",
    )
    .finish(Duration::from_secs(30));
    ran.assert_failure()
        .stderr_has("is damaged")
        .stderr_has("Restore it from a backup");
}

/// `log.format = "json"`: every line arcd writes on stderr is one JSON object, and the request
/// log line carries its fields (method, route, status, operator, elapsed_us) at the top level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line_with_the_request_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut command = serve_on(dir.path(), &data, port, &[]);
    command
        .env("ARCD_LOG__FORMAT", "json")
        .env("RUST_LOG", "info");
    let mut server = Guard::spawn(command, dir.path(), "json");
    let base = format!("http://127.0.0.1:{port}");
    let http = client(false);
    wait_ready(&mut server, &http, &base).await;
    let text = std::fs::read(data.join("root-credentials.json")).expect("root-credentials.json");
    let credentials: Value = serde_json::from_slice(&text).expect("JSON");
    let key = credentials["authKey"].as_str().expect("authKey");
    let auth = sign_in(
        &http,
        &base,
        credentials["authKeyId"].as_str().expect("authKeyId"),
        key,
    )
    .await;
    let (status, _) = get(&http, &base, &auth, "/v1/sims").await;
    assert_eq!(status, StatusCode::OK);
    if let Some(stopped) = server.terminate() {
        stopped.assert_success();
    }

    let stderr = std::fs::read_to_string(dir.path().join("json.stderr")).expect("stderr log");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string()),
        "{stderr}"
    );
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["route"] == "/v1/sims")
        .unwrap_or_else(|| panic!("no request line for /v1/sims in:\n{stderr}"));
    assert_eq!(request["method"], "GET", "{request}");
    assert_eq!(request["status"], 200, "{request}");
    assert_eq!(request["operator"], credentials["operatorId"], "{request}");
    assert!(request["elapsed_us"].is_u64(), "{request}");
    assert!(!stderr.contains(key), "the secret is not logged");
}
