//! `arcd serve`: wires store, API listener (TLS or plain HTTP) and the data plane's peer table.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, AppState};
use crate::bootstrap::{self, BootstrapError, RootCredentials};
use crate::config::Config;
use crate::dataplane::{self, PeerChanges, PeerTable};
use crate::store::{sessions, Store, StoreError};
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started arcd. Dropping it does not stop it; call `shutdown`.
pub struct Running {
    pub api_addr: SocketAddr,
    pub tls: bool,
    pub store: Arc<Store>,
    pub peers: Arc<Mutex<PeerTable>>,
    /// Set only on the first start of a data directory.
    pub new_root_credentials: Option<RootCredentials>,
    stop: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
    }

    /// Waits until the accept loop ends (it runs until `shutdown`).
    pub async fn wait(self) {
        let _ = self.accept_task.await;
    }
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn start(config: Config) -> Result<Running, ServeError> {
    let store = Arc::new(bootstrap::open_store(&config)?);
    let new_root_credentials = bootstrap::ensure_root_operator(&store, &config.data_dir)?;
    let policy = bootstrap::session_policy(&config);

    let sessions = store.read(sessions::list_active_sessions)?;
    tracing::info!(sessions = sessions.len(), "active sessions loaded");
    let peers = Arc::new(Mutex::new(PeerTable::from_sessions(sessions)));
    let (changes, rx) = PeerChanges::channel();
    tokio::spawn(dataplane::apply_changes(peers.clone(), rx));

    let tls = if config.api.tls {
        Some(TlsAcceptor::from(tls::server_config(
            &config.api,
            &config.data_dir,
        )?))
    } else {
        None
    };
    let listener = TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.api.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.api.listen,
        source,
    })?;
    tracing::info!(addr = %api_addr, tls = tls.is_some(), "API listening");

    let config = Arc::new(config);
    let state = Arc::new(AppState {
        store: store.clone(),
        config: config.clone(),
        policy,
        peers: changes,
        tokens: Default::default(),
    });
    let app = api::router(state);
    let (stop, stopped) = watch::channel(false);
    let tls_on = tls.is_some();
    let accept_task = tokio::spawn(accept_loop(listener, tls, app, stopped));
    Ok(Running {
        api_addr,
        tls: tls_on,
        store,
        peers,
        new_root_credentials,
        stop,
        accept_task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(TokioIo::new(tls_stream), service).await
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(TokioIo::new(stream), service).await,
            }
        });
    }
}

async fn serve_connection<I>(io: I, service: TowerToHyperService<axum::Router>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
