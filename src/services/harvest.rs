//! Harvest Data (`harvest.soracom.io` = 100.127.111.111): HTTP POST on port 80, raw TCP and UDP on
//! 8514. Entries are stored under the caller's primary IMSI; the device gets its answer only once
//! the entry is committed. Switched on per group by `SoracomHarvest.enabled`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use super::http::{identify, text};
use super::{Caller, SharedContext};
use crate::metrics;
use crate::store::db::Backend;
use crate::store::harvest::{self, NewEntry};
use crate::store::{now_ms, Store, StoreError};

/// Largest entry a device may send (HTTP body, TCP message or UDP datagram).
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
pub const DISABLED: &str = "Harvest Data is not enabled for this SIM's group.";
/// Posts arriving while a batch commits wait for the next one: one transaction per batch.
const MAX_BATCH: usize = 512;
const QUEUE: usize = 8192;
/// A TCP message ends at a newline, or when the device pauses this long with data sent.
const TCP_MESSAGE_PAUSE: Duration = Duration::from_millis(200);
const TCP_IDLE: Duration = Duration::from_secs(60);

/// The commit result: one store error answers a whole batch.
type Ack = oneshot::Sender<Result<(), StoreEntryError>>;

/// What the writer thread is asked to do, in queue order.
enum Job {
    Store(NewEntry, Ack),
    /// Answered once everything queued before it is committed (or failed).
    Flush(oneshot::Sender<()>),
}

/// Commits entries in batches on one thread: many devices posting at once cost one transaction
/// per batch instead of one each, and API writes wait behind at most one batch.
#[derive(Clone)]
pub struct HarvestSink {
    queue: mpsc::Sender<Job>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreEntryError {
    #[error("the Harvest writer has stopped")]
    WriterGone,
    #[error("the disk is full")]
    DiskFull,
    #[error("store: {0}")]
    Store(String),
}

impl HarvestSink {
    pub fn start(store: Arc<Store>) -> HarvestSink {
        let (queue, pending) = mpsc::channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("harvest-writer".into())
            .spawn(move || write_batches(&store, pending));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the Harvest writer thread");
        }
        HarvestSink { queue }
    }

    /// Returns once `entry` is committed.
    pub async fn store(&self, entry: NewEntry) -> Result<(), StoreEntryError> {
        let (ack, committed) = oneshot::channel();
        self.queue
            .send(Job::Store(entry, ack))
            .await
            .map_err(|_| StoreEntryError::WriterGone)?;
        committed.await.map_err(|_| StoreEntryError::WriterGone)??;
        Ok(())
    }

    /// Returns once every entry queued before the call is committed (or failed): at shutdown,
    /// after the services stopped taking posts, nothing is left in memory.
    pub async fn flush(&self) -> Result<(), StoreEntryError> {
        let (done, flushed) = oneshot::channel();
        self.queue
            .send(Job::Flush(done))
            .await
            .map_err(|_| StoreEntryError::WriterGone)?;
        flushed.await.map_err(|_| StoreEntryError::WriterGone)
    }
}

fn write_batches(store: &Store, mut pending: mpsc::Receiver<Job>) {
    while let Some(first) = pending.blocking_recv() {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Store(entry, ack) => batch.push((entry, ack)),
                Job::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = pending.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit_batch(store, batch);
        }
        // Everything queued before each flush was in this batch or an earlier one.
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn commit_batch(store: &Store, batch: Vec<(NewEntry, Ack)>) {
    let (entries, acks): (Vec<NewEntry>, Vec<Ack>) = batch.into_iter().unzip();
    let result = store
        .write_db(|db| harvest::insert(db, &entries))
        .map_err(|e: StoreError| {
            if e.is_disk_full() {
                StoreEntryError::DiskFull
            } else {
                StoreEntryError::Store(e.to_string())
            }
        });
    if let Err(e) = &result {
        tracing::error!(error = %e, entries = entries.len(), "Harvest batch not stored");
    }
    for ack in acks {
        let _ = ack.send(result.clone());
    }
}

/// How a payload is kept: text as it came; anything else (not UTF-8) as `{"payload": base64}`,
/// the wrapping Beam uses for binary data, so `content` is always a string.
pub fn content_of(body: &[u8], content_type: Option<&str>) -> (String, String) {
    match std::str::from_utf8(body) {
        Ok(text) => {
            let content_type = content_type
                .map(str::to_string)
                .unwrap_or_else(|| guess_text_type(text).to_string());
            (content_type, text.to_string())
        }
        Err(_) => {
            let payload = base64::engine::general_purpose::STANDARD.encode(body);
            (
                "application/json".to_string(),
                serde_json::json!({ "payload": payload }).to_string(),
            )
        }
    }
}

fn guess_text_type(text: &str) -> &'static str {
    if serde_json::from_str::<serde_json::Value>(text).is_ok() {
        "application/json"
    } else {
        "text/plain"
    }
}

pub fn entry_for(caller: &Caller, time: i64, body: &[u8], content_type: Option<&str>) -> NewEntry {
    let (content_type, content) = content_of(body, content_type);
    NewEntry {
        operator_id: caller.sim.operator_id.clone(),
        imsi: caller.primary_imsi.clone(),
        sim_id: caller.sim.sim_id.clone(),
        time,
        content_type,
        content,
    }
}

pub fn router(ctx: SharedContext) -> Router {
    Router::new()
        .fallback(any(post_entry))
        .layer(DefaultBodyLimit::max(MAX_ENTRY_BYTES))
        .with_state(ctx)
}

/// The entry time: the device's `X-Soracom-Timestamp` (UNIX ms) when it sends one, else now;
/// `None` when the header is not a time.
pub fn entry_time(headers: &HeaderMap, honour_header: bool) -> Option<i64> {
    match headers.get("x-soracom-timestamp") {
        Some(value) if honour_header => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|ms| *ms >= 0),
        _ => Some(now_ms()),
    }
}

/// Stores one HTTP post for `caller`, as the Harvest service and the unified endpoint do.
pub async fn accept_post(
    ctx: &SharedContext,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
    honour_timestamp: bool,
) -> Response {
    let response = store_post(ctx, caller, headers, body, honour_timestamp).await;
    metrics::harvest_entry(response.status() == StatusCode::CREATED);
    response
}

async fn store_post(
    ctx: &SharedContext,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
    honour_timestamp: bool,
) -> Response {
    if !caller.enabled("SoracomHarvest", "enabled") {
        return text(StatusCode::BAD_REQUEST, DISABLED);
    }
    let Some(time) = entry_time(headers, honour_timestamp) else {
        return text(
            StatusCode::BAD_REQUEST,
            "X-Soracom-Timestamp must be UNIX time in milliseconds",
        );
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match ctx
        .harvest
        .store(entry_for(caller, time, body, content_type))
        .await
    {
        Ok(()) => {
            let mut response = Response::default();
            *response.status_mut() = StatusCode::CREATED;
            response
        }
        Err(StoreEntryError::DiskFull) => text(
            StatusCode::INSUFFICIENT_STORAGE,
            crate::store::DISK_FULL_MESSAGE,
        ),
        Err(e) => {
            tracing::error!(error = %e, "Harvest entry not stored");
            super::http::internal_error()
        }
    }
}

async fn post_entry(
    State(ctx): State<SharedContext>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != axum::http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Harvest Data takes POST");
    }
    let caller = match identify(&ctx, remote, || text(StatusCode::BAD_REQUEST, DISABLED)).await {
        Ok(caller) => caller,
        Err(response) => {
            metrics::harvest_entry(false);
            return response;
        }
    };
    accept_post(&ctx, &caller, &headers, &body, true).await
}

/// The reply to a raw TCP or UDP message.
pub async fn store_raw(ctx: &SharedContext, remote: SocketAddr, message: &[u8]) -> &'static [u8] {
    let ack = |status: StatusCode| -> &'static [u8] {
        match status {
            StatusCode::CREATED => b"201\n",
            StatusCode::BAD_REQUEST => b"400\n",
            StatusCode::PAYLOAD_TOO_LARGE => b"413\n",
            StatusCode::INSUFFICIENT_STORAGE => b"507\n",
            _ => b"500\n",
        }
    };
    let message = message
        .strip_suffix(b"\n")
        .map(|m| m.strip_suffix(b"\r").unwrap_or(m))
        .unwrap_or(message);
    let refused = |status: StatusCode| {
        metrics::harvest_entry(false);
        ack(status)
    };
    if message.len() > MAX_ENTRY_BYTES {
        return refused(StatusCode::PAYLOAD_TOO_LARGE);
    }
    if message.is_empty() {
        return refused(StatusCode::BAD_REQUEST);
    }
    let caller = match identify(ctx, remote, || text(StatusCode::BAD_REQUEST, DISABLED)).await {
        Ok(caller) => caller,
        Err(response) => return refused(response.status()),
    };
    let response = accept_post(ctx, &caller, &HeaderMap::new(), message, false).await;
    tracing::info!(service = "harvest", caller = %remote.ip(), bytes = message.len(), status = response.status().as_u16(), "raw message");
    ack(response.status())
}

pub async fn serve_udp(ctx: SharedContext, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, remote) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "Harvest UDP receive failed");
                continue;
            }
        };
        let message = buf[..len].to_vec();
        let (ctx, socket) = (ctx.clone(), socket.clone());
        tokio::spawn(async move {
            let reply = store_raw(&ctx, remote, &message).await;
            let _ = socket.send_to(reply, remote).await;
        });
    }
}

pub async fn serve_tcp(ctx: SharedContext, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                tokio::spawn(serve_tcp_connection(ctx.clone(), stream, remote));
            }
            Err(e) => {
                tracing::warn!(error = %e, "Harvest TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Messages end at a newline, at a pause, or at the end of the connection; each gets a reply.
async fn serve_tcp_connection(ctx: SharedContext, mut stream: TcpStream, remote: SocketAddr) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let wait = if pending.is_empty() {
            TCP_IDLE
        } else {
            TCP_MESSAGE_PAUSE
        };
        let read = tokio::time::timeout(wait, stream.read(&mut chunk)).await;
        let ended = match read {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) if pending.is_empty() => return,
            Err(_) => {
                let message = std::mem::take(&mut pending);
                if !reply(&ctx, &mut stream, remote, &message).await {
                    return;
                }
                continue;
            }
        };
        while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(newline + 1);
            let message = std::mem::replace(&mut pending, rest);
            if !reply(&ctx, &mut stream, remote, &message).await {
                return;
            }
        }
        if pending.len() > MAX_ENTRY_BYTES {
            let _ = stream.write_all(b"413\n").await;
            return;
        }
        if ended {
            if !pending.is_empty() {
                let message = std::mem::take(&mut pending);
                reply(&ctx, &mut stream, remote, &message).await;
            }
            return;
        }
    }
}

/// Stores one message and answers it; blank lines are not entries.
async fn reply(
    ctx: &SharedContext,
    stream: &mut TcpStream,
    remote: SocketAddr,
    message: &[u8],
) -> bool {
    if message.iter().all(|b| *b == b'\n' || *b == b'\r') {
        return true;
    }
    let answer = store_raw(ctx, remote, message).await;
    stream.write_all(answer).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::operators;
    use crate::store::testing::temp_store;

    /// Entries queued before a flush are committed when it returns, also when no poster waits for
    /// its answer any more (a service task stopped at shutdown).
    #[tokio::test]
    async fn flush_returns_once_everything_queued_before_it_is_committed() {
        let (_dir, store) = temp_store();
        let operator_id = store
            .write_db(operators::create_operator)
            .expect("operator");
        let (queue, pending) = mpsc::channel(QUEUE);
        let sink = HarvestSink { queue };
        const QUEUED: usize = MAX_BATCH + 10;
        for n in 0..QUEUED {
            let (ack, _dropped) = oneshot::channel();
            let entry = NewEntry {
                operator_id: operator_id.clone(),
                imsi: "999990000000001".into(),
                sim_id: "8942000000000000001".into(),
                time: n as i64,
                content_type: "text/plain".into(),
                content: format!("entry {n}"),
            };
            sink.queue
                .send(Job::Store(entry, ack))
                .await
                .expect("queued");
        }
        let store = Arc::new(store);
        let writer_store = store.clone();
        // The writer starts only now, with the whole queue (more than one batch) waiting.
        let flushing = tokio::spawn(async move { sink.flush().await });
        tokio::task::yield_now().await;
        std::thread::spawn(move || write_batches(&writer_store, pending));
        flushing.await.expect("task").expect("flushed");
        let stored: i64 = store
            .sqlite()
            .expect("a SQLite store")
            .read(|conn| {
                Ok(conn.query_row("SELECT count(*) FROM harvest_entries", [], |r| r.get(0))?)
            })
            .expect("count");
        assert_eq!(stored, QUEUED as i64);
    }
}
