//! The API's TCP listener: accepts connections up to `api.max_connections`, backs off when accept
//! fails (EMFILE), and serves each connection with hyper under the idle and header timeouts. When
//! told to stop it drains: no new connections, requests already received finish (bounded by
//! `api.shutdown_grace_seconds`) with `Connection: close`, idle keep-alive connections close after
//! a one-second linger.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ApiConfig;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop enforces, from the `api` configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// No complete request head for this long (new connection or kept alive) closes it.
    pub idle_timeout: Duration,
    /// When stopping, the longest wait for requests in progress.
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn from_config(api: &ApiConfig) -> Limits {
        Limits {
            max_connections: api.max_connections,
            idle_timeout: Duration::from_secs(api.idle_timeout_seconds),
            shutdown_grace: Duration::from_secs(api.shutdown_grace_seconds),
        }
    }
}

/// Delay after failed accepts: doubles from 10 ms up to 1 s while they keep failing, so a full
/// file table neither spins a core nor floods the log; reset by the next success.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure; returns how long to wait and whether this failure should be logged
    /// (the first of a burst, then every 64th).
    pub fn failed(&mut self) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(7);
        let delay = (Self::FIRST * 2u32.pow(doublings)).min(Self::MAX);
        (delay, self.failures % 64 == 1)
    }

    /// Records a success; returns how many failures the burst it ends had (0: none).
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

/// Accepts and serves connections until `stopped` changes, then drains (see the module comment)
/// and returns once every connection is closed or the grace period is over.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let drain = Drain::new();
    let mut backoff = AcceptBackoff::default();
    let mut at_cap = false;
    loop {
        // Take a slot before accepting: at the cap, new clients wait in the listen backlog
        // instead of costing a file descriptor each.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                at_cap = false;
                permit
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "API connection cap reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = stopped.changed() => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    let failures = backoff.succeeded();
                    if failures > 0 {
                        tracing::info!(failures, "accepting API connections again");
                    }
                    pair
                }
                Err(e) => {
                    let (delay, log) = backoff.failed();
                    if log {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "accepting an API connection failed; backing off");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        spawn_connection(
            stream,
            remote,
            Some(permit),
            &tls,
            &app,
            limits,
            drain.watch(),
        );
    }
    stop(listener, tls, app, limits, drain).await;
}

/// The stopping half of `accept_loop`. Clients whose connection the kernel already completed
/// (in the listen backlog) were promised service: they are accepted and served like the others
/// (beyond the connection cap, for this last moment); then the listener closes, so later clients
/// are refused; connections finish the request in progress and close, idle ones after a short
/// linger (see `serve_connection`).
async fn stop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: Limits,
    drain: Drain,
) {
    let mut backlog = 0usize;
    // The backlog is bounded by the kernel (somaxconn).
    while let Some((stream, remote)) = accept_ready(&listener) {
        backlog += 1;
        spawn_connection(stream, remote, None, &tls, &app, limits, drain.watch());
    }
    drop(listener);
    let open = drain.open();
    tracing::info!(
        connections = open,
        from_backlog = backlog,
        grace_seconds = limits.shutdown_grace.as_secs(),
        "API stopped accepting; letting requests in progress finish"
    );
    if !drain.finish(limits.shutdown_grace).await {
        tracing::warn!(
            grace_seconds = limits.shutdown_grace.as_secs(),
            "API requests still running at the end of the shutdown grace period are cut off"
        );
    }
}

/// A connection already waiting in the listen backlog, without waiting for one.
fn accept_ready(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match listener.poll_accept(&mut cx) {
        std::task::Poll::Ready(Ok(pair)) => Some(pair),
        std::task::Poll::Ready(Err(_)) | std::task::Poll::Pending => None,
    }
}

fn spawn_connection(
    stream: TcpStream,
    remote: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    tls: &Option<TlsAcceptor>,
    app: &axum::Router,
    limits: Limits,
    stopping: Stopping,
) {
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(app.clone());
    let tls = tls.clone();
    tokio::spawn(async move {
        // Held until the connection ends.
        let _permit = permit;
        match tls {
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        serve_connection(
                            TokioIo::new(tls_stream),
                            service,
                            remote,
                            limits,
                            stopping,
                        )
                        .await
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            }
            None => serve_connection(TokioIo::new(stream), service, remote, limits, stopping).await,
        }
    });
}

async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<axum::Router>,
    remote: SocketAddr,
    limits: Limits,
    mut stopping: Stopping,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // The client address for handlers and middleware (the failed-login limiter); once arcd is
    // stopping, every response says `Connection: close`, so hyper closes after sending it and the
    // client does not send another request on this connection.
    let closing = stopping.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        // Before routing (axum's own layers run after it): `//v1/auth` must reach `/v1/auth`.
        crate::api::leading_slashes::fold(request.uri_mut());
        let response = hyper::service::Service::call(&service, request);
        let closing = closing.clone();
        async move {
            let mut response = response.await?;
            if *closing.borrow() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper (1.x) starts the header read timer whenever it waits for a request head: on a new
    // connection and after each response, so it is also the idle keep-alive timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping_signal(&mut stopping) => {
            // Closing an idle kept-alive connection at once would reset a request the client
            // sent just before the signal that arcd has not read yet. So for a moment requests
            // are still answered (with `Connection: close`); then an idle connection is closed and
            // a busy one closes after its response.
            match tokio::time::timeout(IDLE_LINGER.min(limits.shutdown_grace), connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

async fn stopping_signal(stopping: &mut Stopping) {
    // An error means the listener is gone without a stop: keep serving until the client leaves.
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long a stopping arcd still answers requests arriving on kept-alive connections: covers
/// requests sent just before the signal and still on their way.
const IDLE_LINGER: Duration = Duration::from_secs(1);

/// Whether arcd is stopping, as each connection sees it; held by the connection until it closes.
type Stopping = watch::Receiver<bool>;

/// Tells connections that arcd is stopping, and waits for them to close.
struct Drain {
    stopping: watch::Sender<bool>,
}

impl Drain {
    fn new() -> Drain {
        Drain {
            stopping: watch::Sender::new(false),
        }
    }

    fn watch(&self) -> Stopping {
        self.stopping.subscribe()
    }

    /// Connections still open.
    fn open(&self) -> usize {
        self.stopping.receiver_count()
    }

    /// Signals every connection and waits until all closed or `grace` passed; true if all did.
    async fn finish(self, grace: Duration) -> bool {
        self.stopping.send_replace(true);
        tokio::time::timeout(grace, self.stopping.closed())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_logs_sparingly_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let mut delays = Vec::new();
        let mut logged = 0;
        for _ in 0..200 {
            let (delay, log) = backoff.failed();
            delays.push(delay);
            logged += usize::from(log);
        }
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[1], Duration::from_millis(20));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().expect("delays"), Duration::from_secs(1));
        assert_eq!(logged, 4, "failures 1, 65, 129 and 193 are logged");
        assert_eq!(backoff.succeeded(), 200);
        assert_eq!(backoff.failed().0, Duration::from_millis(10));
    }
}
