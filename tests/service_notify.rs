//! `arcd serve` speaks systemd's readiness protocol (packaging/arcd.service has `Type=notify`):
//! a child arcd whose NOTIFY_SOCKET names a datagram socket of this test sends `READY=1` only
//! once its API answers, and `STOPPING=1` as soon as SIGTERM arrives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![allow(unsafe_code)] // libc::kill: the test sends arcd the signal a service manager would

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `arcd serve`; killed and reaped when dropped, even if the test panics.
struct Arcd(Child);

impl Drop for Arcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn spawn(dir: &Path, port: u16, notify_socket: &Path) -> Arcd {
    let child = Command::new(env!("CARGO_BIN_EXE_arcd"))
        .arg("serve")
        .current_dir(dir)
        .env_remove("ARCD_CONFIG")
        .env("ARCD_DATA_DIR", dir.join("data"))
        .env("ARCD_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("ARCD_API__TLS", "false")
        // No TUN device and an ephemeral WireGuard port: this server may run beside others.
        .env("ARCD_TUN__ENABLED", "false")
        .env(
            "ARCD_RENDEZVOUS_POINTS",
            r#"[{id="ap-northeast-1",listen="127.0.0.1:0",endpoint="127.0.0.1:11010",pool="10.64.0.0/16",allowed_ips=["100.127.0.0/16"]}]"#,
        )
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", notify_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn arcd");
    Arcd(child)
}

/// The next notification datagram, or None when none comes within the socket's read timeout.
fn next_message(socket: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv on the notify socket: {e}"),
    }
}

/// Status line of `GET /openapi.yaml` on the plain-HTTP API, or the connection error.
fn api_status(port: u16) -> Result<String, std::io::Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream
        .write_all(b"GET /openapi.yaml HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn ready_once_the_api_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let port = free_port();
    let mut arcd = spawn(dir.path(), port, &notify_path);

    let first = next_message(&notify).expect("no notification from arcd within 60 s");
    assert_eq!(first, "READY=1\n", "the first notification must be READY=1");
    // Nothing was waited for: at the moment READY=1 arrives, the API must already answer.
    let status = api_status(port).expect("API not reachable when READY=1 arrived");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET /openapi.yaml right after READY=1: {status}"
    );
    assert!(
        arcd.0.try_wait().expect("try_wait").is_none(),
        "arcd exited after READY=1"
    );

    // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
    let pid = i32::try_from(arcd.0.id()).expect("pid fits in pid_t");
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "kill -TERM arcd"
    );
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let second = next_message(&notify).expect("no STOPPING=1 within 20 s of SIGTERM");
    assert_eq!(second, "STOPPING=1\n");
    let status = arcd.0.wait().expect("wait for arcd");
    assert!(status.success(), "arcd exited with {status} after SIGTERM");
}
