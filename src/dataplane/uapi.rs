//! Read-only WireGuard cross-platform control socket ("UAPI", <https://www.wireguard.com/xplatform/>)
//! so that the standard `wg show` works against arcd.
//!
//! One Unix stream socket per rendezvous point, at `/var/run/wireguard/<name>.sock` (where `wg` and
//! `wireguard-go` look for userspace interfaces). Layout and permissions follow wireguard-go's
//! `ipc.UAPIOpen`: the directory is created with mode 0755 when missing (an existing directory is
//! left alone), and the socket is `srwx------` (wireguard-go binds under `umask 077`), so only root
//! (the owner) can connect. We get the same mode without touching the process-wide umask: the
//! socket is bound inside a private 0700 scratch directory, chmod-ed, then renamed into place, so it
//! is never reachable with looser permissions and `wg` never sees a half-made socket.
//!
//! Protocol (what `wg` speaks; the server handles several requests per connection, like wireguard-go):
//! - `get=1\n\n` → `listen_port=N`, then per peer `public_key`, `endpoint` (when known),
//!   `allowed_ip=<client_ip>/32`, `last_handshake_time_sec`/`_nsec` (0/0 = never), `rx_bytes`,
//!   `tx_bytes`, `persistent_keepalive_interval=0`, `protocol_version=1`; then `errno=0\n\n`.
//!   The server's `private_key` is never served (so `wg show` prints no interface public key and
//!   `dump` shows `(none)` for both interface keys).
//! - `set=1\n…\n\n` → the body is read and discarded, the answer is `errno=1\n\n` (EPERM: the socket
//!   is read-only; peers change only through the API). wireguard-go has no permission error of its
//!   own (its UAPI errnos are EIO, EPROTO, EINVAL, EADDRINUSE and ENOANO); EPERM is the POSIX errno
//!   for "operation not permitted", which is what a write to this socket is.
//! - anything else → the connection is closed (as wireguard-go does for an unknown operation).
//!
//! A request line may be at most [`MAX_LINE`] bytes, and a client gets [`REQUEST_TIMEOUT`] to send a
//! whole request (and to read a reply), so a stuck or malicious client cannot hold a task forever.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::interface_name;
use super::stats::ListenerSnapshot;

/// Where `wg` looks for userspace interfaces' control sockets.
pub const DEFAULT_DIR: &str = "/var/run/wireguard";

/// Longest accepted request line, newline included.
pub const MAX_LINE: usize = 4096;

/// Time a client has to send one whole request, and to take one reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once per socket; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// errno answered to `set=1`: EPERM, the control socket is read-only.
pub const SET_ERRNO: i32 = 1;

/// Produces the current state of one rendezvous point's listener.
pub type SnapshotFn = Arc<dyn Fn() -> ListenerSnapshot + Send + Sync>;

#[derive(Clone, Copy, Debug)]
struct Limits {
    max_line: usize,
    request_timeout: Duration,
}

const LIMITS: Limits = Limits {
    max_line: MAX_LINE,
    request_timeout: REQUEST_TIMEOUT,
};

/// A listening control socket. Dropping it (or [`UapiServer::close`]) stops the listener and all
/// its connections and removes the socket file.
#[derive(Debug)]
pub struct UapiServer {
    path: PathBuf,
    /// Device and inode of the socket file we made, so we never remove another process's socket.
    file_id: (u64, u64),
    accept: Option<JoinHandle<()>>,
}

impl UapiServer {
    /// Binds `<dir>/<name>.sock` and serves it until dropped. `name` is the interface name `wg`
    /// shows ([`interface_name::for_rendezvous_point`]; refused unless [`interface_name::validate`]
    /// accepts it). A stale socket file left by a dead process is replaced; a socket some live process still answers on is an `AddrInUse`
    /// error, and a path that is not a socket is an `AlreadyExists` error.
    pub async fn bind(dir: &Path, name: &str, snapshot: SnapshotFn) -> io::Result<UapiServer> {
        Self::bind_with(dir, name, snapshot, LIMITS).await
    }

    async fn bind_with(
        dir: &Path,
        name: &str,
        snapshot: SnapshotFn,
        limits: Limits,
    ) -> io::Result<UapiServer> {
        interface_name::validate(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        let path = dir.join(format!("{name}.sock"));
        remove_stale(&path).await?;

        // Bind in a private scratch directory, fix the mode, then publish by rename.
        let scratch = dir.join(format!(".uapi-{:08x}", rand::random::<u32>()));
        std::fs::DirBuilder::new().mode(0o700).create(&scratch)?;
        let result = publish(&scratch, &path);
        let _ = std::fs::remove_dir_all(&scratch);
        let listener = result?;
        let meta = std::fs::symlink_metadata(&path)?;
        let file_id = (meta.dev(), meta.ino());

        tracing::info!(path = %path.display(), "WireGuard control socket (read-only) listening");
        let accept = tokio::spawn(accept_loop(listener, snapshot, limits));
        Ok(UapiServer {
            path,
            file_id,
            accept: Some(accept),
        })
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the listener and its connections, waits for them to end and removes the socket file.
    pub async fn close(mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        self.remove_file();
    }

    fn remove_file(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.file_id => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %err, "cannot remove control socket");
                }
            }
            // Gone already, or replaced by someone else's socket: leave it.
            _ => {}
        }
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            self.remove_file();
        }
    }
}

/// Removes a socket file nobody listens on any more; refuses to touch a live socket or a
/// non-socket file.
async fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await {
        // Someone answers (or at least keeps the connection pending): the socket is live.
        Ok(Ok(_)) | Err(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use by another process (another arcd or wireguard-go?)",
                path.display()
            ),
        )),
        Ok(Err(_)) => {
            tracing::info!(path = %path.display(), "removing stale control socket");
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            }
        }
    }
}

fn publish(scratch: &Path, path: &Path) -> io::Result<UnixListener> {
    let tmp = scratch.join("s");
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, snapshot: SnapshotFn, limits: Limits) {
    // Connections live in this set, so aborting this task ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::warn!("too many control socket connections; one refused");
                        continue;
                    }
                    let snapshot = snapshot.clone();
                    connections.spawn(async move {
                        if let Err(err) = serve(stream, snapshot, limits).await {
                            tracing::debug!(%err, "control socket connection ended");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined {
                    if err.is_panic() {
                        tracing::error!(%err, "control socket connection panicked");
                    }
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get,
    Set,
}

/// Why a connection stops without an answer.
fn closed(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

async fn serve(stream: UnixStream, snapshot: SnapshotFn, limits: Limits) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let deadline = Instant::now() + limits.request_timeout;
        let request = match tokio::time::timeout_at(deadline, read_request(&mut read, limits)).await
        {
            Ok(request) => request?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")),
        };
        let answer = match request {
            None => return Ok(()),
            Some(Request::Get) => render_get(&snapshot()),
            Some(Request::Set) => format!("errno={SET_ERRNO}\n\n"),
        };
        let deadline = Instant::now() + limits.request_timeout;
        let written = tokio::time::timeout_at(deadline, async {
            write.write_all(answer.as_bytes()).await?;
            write.flush().await
        })
        .await;
        match written {
            Ok(result) => result?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "reply timed out")),
        }
    }
}

/// Reads one whole request; `None` at a clean end of stream between requests.
async fn read_request<R: AsyncBufRead + Unpin>(
    read: &mut R,
    limits: Limits,
) -> io::Result<Option<Request>> {
    let mut line = Vec::new();
    if !read_line(read, &mut line, limits.max_line).await? {
        return Ok(None);
    }
    match line.as_slice() {
        b"get=1\n" => {
            if !read_line(read, &mut line, limits.max_line).await? {
                return Err(closed("end of stream inside a get request"));
            }
            if line != b"\n" {
                return Err(closed("get request not followed by a blank line"));
            }
            Ok(Some(Request::Get))
        }
        b"set=1\n" => loop {
            // Read-only: the body is consumed so the answer lines up, and ignored.
            if !read_line(read, &mut line, limits.max_line).await? {
                return Err(closed("end of stream inside a set request"));
            }
            if line == b"\n" {
                return Ok(Some(Request::Set));
            }
        },
        _ => Err(closed("unknown operation")),
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes into `line`. `Ok(false)` at end of
/// stream before any byte; a line cut by the end of stream or longer than `max` is an error.
async fn read_line<R: AsyncBufRead + Unpin>(
    read: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    line.clear();
    let n = (&mut *read)
        .take(max as u64)
        .read_until(b'\n', line)
        .await?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() != Some(&b'\n') {
        return Err(closed(if n >= max {
            "request line too long"
        } else {
            "end of stream inside a line"
        }));
    }
    Ok(true)
}

/// The full answer to `get=1`, `errno=0` and the closing blank line included. Never contains a
/// private key.
pub fn render_get(snapshot: &ListenerSnapshot) -> String {
    let mut out = String::with_capacity(32 + snapshot.peer_snapshots.len() * 320);
    // Writing to a String cannot fail.
    let _ = writeln!(out, "listen_port={}", snapshot.listen_port);
    for peer in &snapshot.peer_snapshots {
        let _ = writeln!(out, "public_key={}", hex::encode(peer.public_key));
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={}", unmapped(endpoint));
        }
        let _ = writeln!(out, "allowed_ip={}/32", peer.client_ip);
        let (sec, nsec) = unix_time(peer.last_handshake);
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        out.push_str("persistent_keepalive_interval=0\n");
        out.push_str("protocol_version=1\n");
    }
    out.push_str("errno=0\n\n");
    out
}

/// An IPv4 client seen through a dual-stack socket is shown as plain IPv4.
fn unmapped(endpoint: SocketAddr) -> SocketAddr {
    match endpoint {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => endpoint,
        },
        v4 => v4,
    }
}

/// Seconds and nanoseconds since the UNIX epoch; 0/0 (what `wg` reads as "never") when unknown.
fn unix_time(time: Option<SystemTime>) -> (u64, u32) {
    match time.map(|t| t.duration_since(UNIX_EPOCH)) {
        Some(Ok(since)) => (since.as_secs(), since.subsec_nanos()),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::stats::PeerSnapshot;
    use base64::Engine as _;
    use std::net::Ipv4Addr;
    use tokio::io::AsyncReadExt;

    const KEY: [u8; 32] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc,
        0xfe, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
        0x11, 0x00,
    ];
    const KEY_HEX: &str = "0123456789abcdef1032547698badcfeffeeddccbbaa99887766554433221100";

    fn peer_seen() -> PeerSnapshot {
        PeerSnapshot {
            imsi: "999990000000001".into(),
            rp_id: "ap-northeast-1".into(),
            public_key: KEY,
            client_ip: Ipv4Addr::new(10, 64, 0, 2),
            endpoint: Some("192.0.2.7:51820".parse().unwrap()),
            last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
            last_received: Some(UNIX_EPOCH + Duration::new(1_700_000_010, 0)),
            rx_bytes: 1000,
            tx_bytes: 2048,
        }
    }

    fn peer_never() -> PeerSnapshot {
        PeerSnapshot {
            imsi: "999990000000002".into(),
            rp_id: "ap-northeast-1".into(),
            public_key: [7; 32],
            client_ip: Ipv4Addr::new(10, 64, 0, 3),
            endpoint: None,
            last_handshake: None,
            last_received: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    fn listener(peer_snapshots: Vec<PeerSnapshot>) -> ListenerSnapshot {
        ListenerSnapshot {
            rp_id: "ap-northeast-1".into(),
            name: "arc-apne1".into(),
            listen_port: 11010,
            peer_snapshots,
        }
    }

    fn fixed(snapshot: ListenerSnapshot) -> SnapshotFn {
        Arc::new(move || snapshot.clone())
    }

    #[test]
    fn renders_get_without_private_key() {
        let text = render_get(&listener(vec![peer_seen(), peer_never()]));
        let expected = format!(
            "listen_port=11010\n\
             public_key={KEY_HEX}\n\
             endpoint=192.0.2.7:51820\n\
             allowed_ip=10.64.0.2/32\n\
             last_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=123456789\n\
             rx_bytes=1000\n\
             tx_bytes=2048\n\
             persistent_keepalive_interval=0\n\
             protocol_version=1\n\
             public_key={}\n\
             allowed_ip=10.64.0.3/32\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             rx_bytes=0\n\
             tx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             protocol_version=1\n\
             errno=0\n\n",
            "07".repeat(32)
        );
        assert_eq!(text, expected);
        assert!(!text.contains("private_key"));
    }

    #[test]
    fn renders_empty_listener() {
        assert_eq!(
            render_get(&listener(vec![])),
            "listen_port=11010\nerrno=0\n\n"
        );
    }

    #[test]
    fn renders_ipv6_and_mapped_endpoints() {
        let mut v6 = peer_seen();
        v6.endpoint = Some("[2001:db8::7]:51820".parse().unwrap());
        let mut mapped = peer_seen();
        mapped.endpoint = Some("[::ffff:192.0.2.9]:4500".parse().unwrap());
        let text = render_get(&listener(vec![v6, mapped]));
        assert!(text.contains("\nendpoint=[2001:db8::7]:51820\n"), "{text}");
        assert!(text.contains("\nendpoint=192.0.2.9:4500\n"), "{text}");
    }

    #[test]
    fn handshake_before_epoch_reads_as_never() {
        assert_eq!(unix_time(Some(UNIX_EPOCH - Duration::from_secs(5))), (0, 0));
        assert_eq!(unix_time(None), (0, 0));
        assert_eq!(unix_time(Some(UNIX_EPOCH + Duration::new(3, 4))), (3, 4));
    }

    /// Sends `request` and reads until the server's `\n\n`-terminated answer.
    async fn ask(stream: &mut UnixStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\n\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
                .await
                .expect("answer in time")
                .unwrap();
            assert_ne!(n, 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.push(byte[0]);
        }
        String::from_utf8(answer).unwrap()
    }

    /// Asserts the server closes the connection (end of stream, or reset).
    async fn assert_closed(stream: &mut UnixStream) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("server closes in time");
        if let Ok(n) = read {
            assert_eq!(
                n,
                0,
                "unexpected answer {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }

    #[tokio::test]
    async fn serves_get_set_and_closes_on_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run").join("wireguard");
        let snapshot = listener(vec![peer_seen(), peer_never()]);
        let expected = render_get(&snapshot);
        let server = UapiServer::bind(&dir, "arc-test", fixed(snapshot))
            .await
            .unwrap();
        let path = dir.join("arc-test.sock");
        assert_eq!(server.path(), path);

        // Directory made 0755, socket root-only like wireguard-go's, no scratch left behind.
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(dir_mode, 0o755);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["arc-test.sock"]);

        // Several requests on one connection, set in between, split writes.
        let mut stream = UnixStream::connect(&path).await.unwrap();
        assert_eq!(ask(&mut stream, "get=1\n\n").await, expected);
        assert_eq!(
            ask(
                &mut stream,
                "set=1\nprivate_key=00\nlisten_port=1\npublic_key=ab\nremove=true\n\n"
            )
            .await,
            "errno=1\n\n"
        );
        // Two requests in one write are answered in order.
        assert_eq!(
            ask(&mut stream, "get=1\n\nset=1\n\n").await,
            expected,
            "first answer"
        );
        assert_eq!(ask(&mut stream, "").await, "errno=1\n\n");
        drop(stream);

        // A probe that connects and hangs up (what `wg show` does to list interfaces).
        drop(UnixStream::connect(&path).await.unwrap());

        // Unknown operation → closed, no answer.
        let mut stream = UnixStream::connect(&path).await.unwrap();
        stream.write_all(b"hello=1\n\n").await.unwrap();
        assert_closed(&mut stream).await;

        // get=1 followed by something other than a blank line → closed.
        let mut stream = UnixStream::connect(&path).await.unwrap();
        stream.write_all(b"get=1\nfoo\n").await.unwrap();
        assert_closed(&mut stream).await;

        // Over-long line → closed without waiting for its end.
        let mut stream = UnixStream::connect(&path).await.unwrap();
        stream.write_all(&vec![b'a'; MAX_LINE + 10]).await.unwrap();
        assert_closed(&mut stream).await;

        // Over-long line inside a set body → closed too.
        let mut stream = UnixStream::connect(&path).await.unwrap();
        stream.write_all(b"set=1\n").await.unwrap();
        stream.write_all(&vec![b'b'; MAX_LINE + 10]).await.unwrap();
        assert_closed(&mut stream).await;

        // The server still serves after all that.
        let mut stream = UnixStream::connect(&path).await.unwrap();
        assert_eq!(ask(&mut stream, "get=1\n\n").await, expected);
        drop(stream);

        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }

    #[tokio::test]
    async fn split_request_is_answered() {
        let tmp = tempfile::tempdir().unwrap();
        let snapshot = listener(vec![peer_seen()]);
        let expected = render_get(&snapshot);
        let server = UapiServer::bind(tmp.path(), "arc-split", fixed(snapshot))
            .await
            .unwrap();
        let mut stream = UnixStream::connect(server.path()).await.unwrap();
        for piece in ["g", "et=", "1\n"] {
            stream.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ask(&mut stream, "\n").await, expected);
        server.close().await;
    }

    #[tokio::test]
    async fn snapshot_is_taken_per_request() {
        let tmp = tempfile::tempdir().unwrap();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = counter.clone();
        let snapshot: SnapshotFn = Arc::new(move || {
            let mut peer = peer_seen();
            peer.rx_bytes = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            listener(vec![peer])
        });
        let server = UapiServer::bind(tmp.path(), "arc-live", snapshot)
            .await
            .unwrap();
        let mut stream = UnixStream::connect(server.path()).await.unwrap();
        assert!(ask(&mut stream, "get=1\n\n")
            .await
            .contains("\nrx_bytes=0\n"));
        assert!(ask(&mut stream, "get=1\n\n")
            .await
            .contains("\nrx_bytes=1\n"));
        server.close().await;
    }

    #[tokio::test]
    async fn stuck_client_is_cut_off() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_line: MAX_LINE,
            request_timeout: Duration::from_millis(200),
        };
        let server = UapiServer::bind_with(tmp.path(), "arc-slow", fixed(listener(vec![])), limits)
            .await
            .unwrap();
        // Silent client.
        let mut idle = UnixStream::connect(server.path()).await.unwrap();
        // Client that starts a set and never finishes it.
        let mut half = UnixStream::connect(server.path()).await.unwrap();
        half.write_all(b"set=1\nlisten_port=1\n").await.unwrap();
        let started = std::time::Instant::now();
        assert_closed(&mut idle).await;
        assert_closed(&mut half).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        server.close().await;
    }

    #[tokio::test]
    async fn close_and_drop_end_connections_and_remove_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let server = UapiServer::bind(tmp.path(), "arc-close", fixed(listener(vec![])))
            .await
            .unwrap();
        let path = server.path().to_path_buf();
        let mut open = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            ask(&mut open, "get=1\n\n").await,
            "listen_port=11010\nerrno=0\n\n"
        );
        server.close().await;
        assert!(!path.exists());
        // The connection that was open is ended too.
        assert_closed(&mut open).await;
        assert!(UnixStream::connect(&path).await.is_err());
    }

    #[tokio::test]
    async fn stale_live_and_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("arc-stale.sock");

        // Stale: a socket file nobody listens on (std does not unlink on drop).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = UapiServer::bind(tmp.path(), "arc-stale", fixed(listener(vec![])))
            .await
            .unwrap();
        let mut stream = UnixStream::connect(&path).await.unwrap();
        assert!(ask(&mut stream, "get=1\n\n").await.ends_with("errno=0\n\n"));

        // Live: a second server on the same name is refused and the first keeps its socket.
        let err = UapiServer::bind(tmp.path(), "arc-stale", fixed(listener(vec![])))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        let mut stream = UnixStream::connect(&path).await.unwrap();
        assert!(ask(&mut stream, "get=1\n\n").await.ends_with("errno=0\n\n"));
        drop(server);
        assert!(!path.exists());

        // A socket replaced behind our back is not removed by our drop.
        let server = UapiServer::bind(tmp.path(), "arc-stale", fixed(listener(vec![])))
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(server);
        assert!(path.exists(), "someone else's socket left alone");
        drop(other);
        std::fs::remove_file(&path).unwrap();

        // Not a socket: refused, file untouched.
        std::fs::write(&path, b"keep me").unwrap();
        let err = UapiServer::bind(tmp.path(), "arc-stale", fixed(listener(vec![])))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");

        // Bad name.
        let err = UapiServer::bind(tmp.path(), "a/b", fixed(listener(vec![])))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    fn effective_uid() -> Option<u32> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    }

    async fn wg(args: &[&str]) -> std::process::Output {
        let run = tokio::process::Command::new("wg")
            .args(args)
            .env("WG_HIDE_KEYS", "never")
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("wg {args:?} timed out"))
            .unwrap_or_else(|err| panic!("wg {args:?}: {err}"))
    }

    #[tokio::test]
    #[ignore = "needs root: wg show reads /var/run/wireguard"]
    async fn real_wg_show() {
        assert_eq!(
            effective_uid(),
            Some(0),
            "the real `wg` test needs root (wg show reads /var/run/wireguard); scripts/test.sh as root runs it"
        );
        let have_wg = tokio::process::Command::new("wg")
            .arg("--version")
            .output()
            .await
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            have_wg,
            "the `wg` binary is missing (apt-get install -y --no-install-recommends wireguard-tools)"
        );

        let name = format!("arct{:05x}", rand::random::<u32>() & 0xf_ffff);
        let mut recent = peer_seen();
        recent.last_handshake = Some(SystemTime::now() - Duration::from_secs(5));
        let handshake_sec = unix_time(recent.last_handshake).0;
        let snapshot = listener(vec![recent, peer_never()]);
        let server = UapiServer::bind(Path::new(DEFAULT_DIR), &name, fixed(snapshot))
            .await
            .unwrap();
        let path = server.path().to_path_buf();
        assert_eq!(path, Path::new(DEFAULT_DIR).join(format!("{name}.sock")));

        let key = base64::engine::general_purpose::STANDARD.encode(KEY);
        let never_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);

        let out = wg(&["show", &name]).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "wg show failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            format!("interface: {name}"),
            "listening port: 11010".to_string(),
            format!("peer: {key}"),
            "endpoint: 192.0.2.7:51820".to_string(),
            "allowed ips: 10.64.0.2/32".to_string(),
            "latest handshake: ".to_string(),
            "transfer: 1000 B received, 2.00 KiB sent".to_string(),
            format!("peer: {never_key}"),
            "allowed ips: 10.64.0.3/32".to_string(),
        ] {
            assert!(text.contains(&expected), "{expected:?} missing in:\n{text}");
        }
        assert!(!text.contains("private key"), "{text}");

        let out = wg(&["show", &name, "dump"]).await;
        let dump = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "wg show dump failed: {dump}");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines[0], "(none)\t(none)\t11010\toff", "{dump}");
        assert!(
            lines.contains(
                &format!(
                "{key}\t(none)\t192.0.2.7:51820\t10.64.0.2/32\t{handshake_sec}\t1000\t2048\toff"
            )
                .as_str()
            ),
            "{dump}"
        );
        assert!(
            lines.contains(
                &format!("{never_key}\t(none)\t(none)\t10.64.0.3/32\t0\t0\t0\toff").as_str()
            ),
            "{dump}"
        );

        let out = wg(&["show", "interfaces"]).await;
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            listed.split_whitespace().any(|i| i == name),
            "{name} not in `wg show interfaces`: {listed}"
        );

        // Writes are refused.
        let out = wg(&["set", &name, "listen-port", "1"]).await;
        assert!(
            !out.status.success(),
            "wg set must fail on a read-only socket"
        );

        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }
}
