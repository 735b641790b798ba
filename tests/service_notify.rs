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
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

mod support;
use support::child_arcd::{free_port, ChildArcd};

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
    let notify_env = notify_path.to_str().expect("UTF-8 temp path");
    let mut arcd = ChildArcd::spawn(
        &dir.path().join("data"),
        port,
        dir.path(),
        "serve",
        &[("NOTIFY_SOCKET", notify_env)],
    );

    let first = next_message(&notify).expect("no notification from arcd within 60 s");
    assert_eq!(first, "READY=1\n", "the first notification must be READY=1");
    // Nothing was waited for: at the moment READY=1 arrives, the API must already answer.
    let status = api_status(port).expect("API not reachable when READY=1 arrived");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET /openapi.yaml right after READY=1: {status}"
    );
    assert!(
        arcd.child.try_wait().expect("try_wait").is_none(),
        "arcd exited after READY=1"
    );

    arcd.sigterm();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let second = next_message(&notify).expect("no STOPPING=1 within 20 s of SIGTERM");
    assert_eq!(second, "STOPPING=1\n");
    let status = arcd.child.wait().expect("wait for arcd");
    assert!(status.success(), "arcd exited with {status} after SIGTERM");
}
