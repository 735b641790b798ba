//! A real `arcd serve` as a child process, for tests that signal or kill it: plain HTTP on a
//! loopback port of the test's choosing, no TUN device and an ephemeral WireGuard port (so it may
//! run beside other servers), stdout and stderr in files of the test's directory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

/// SIGKILLed and reaped when dropped, so a failing test leaves no process behind.
pub struct ChildArcd {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ChildArcd {
    /// `name` tells apart the log files of several runs in one directory; `env` adds to or
    /// overrides the defaults (`RUST_LOG=warn` among them).
    pub fn spawn(
        data_dir: &Path,
        port: u16,
        log_dir: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> ChildArcd {
        let stdout = log_dir.join(format!("stdout-{name}"));
        let stderr = log_dir.join(format!("stderr-{name}"));
        let child = Command::new(env!("CARGO_BIN_EXE_arcd"))
            .arg("serve")
            .current_dir(log_dir)
            .env_remove("ARCD_CONFIG")
            .env("ARCD_DATA_DIR", data_dir)
            .env("ARCD_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("ARCD_API__TLS", "false")
            .env("ARCD_TUN__ENABLED", "false")
            .env(
                "ARCD_RENDEZVOUS_POINTS",
                r#"[{id="ap-northeast-1",listen="127.0.0.1:0",endpoint="127.0.0.1:11010",pool="10.64.0.0/16",allowed_ips=["100.127.0.0/16"]}]"#,
            )
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("log file"))
            .stderr(File::create(&stderr).expect("log file"))
            .spawn()
            .expect("spawn arcd");
        ChildArcd {
            child,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, what a service manager sends to stop arcd; the caller waits for the exit.
    #[allow(unsafe_code)]
    pub fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) on our own child, which is not reaped yet (so the pid is still ours).
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "kill -TERM arcd"
        );
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait")
    }

    /// Waits until the data dir has root credentials and the API answers.
    pub async fn wait_ready(&mut self, data_dir: &Path, port: u16, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "arcd exited early with {status}; stderr:\n{}",
                    self.stderr()
                );
            }
            let ready = data_dir.join("root-credentials.json").is_file()
                && TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_ok()
                && client
                    .get(format!("http://127.0.0.1:{port}/openapi.yaml"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "arcd did not become ready; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildArcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}
