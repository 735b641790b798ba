//! `arcd serve`: wires store, API listener (TLS or plain HTTP) and the data plane's peer table.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, AppState};
use crate::bootstrap::{self, BootstrapError, Reinitialize, RootCredentials};
use crate::config::Config;
use crate::dataplane::egress::{self, EgressError};
use crate::dataplane::engine::Engine;
use crate::dataplane::stats::ListenerSnapshot;
use crate::dataplane::tun_device::{self, TunDevice, TunError};
use crate::dataplane::uapi::{self, UapiServer};
use crate::dataplane::vpg_plane::{HostSide, VpgPlane};
use crate::dataplane::{
    Dataplane, ListenerConfig, MemoryTun, MemoryTunPeer, PeerChanges, PeerTable, RecvBatch, TunIo,
};
use crate::listener;
use crate::metrics;
use crate::services;
use crate::store::{endpoints, rendezvous, sessions, vpgs, Store, StoreError};
use crate::tls::{self, TlsError};
use crate::wgkey;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("data plane: {0}")]
    Dataplane(std::io::Error),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Services(#[from] services::ServiceBindError),
    #[error("metrics: cannot listen on {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started arcd. Dropping it does not stop it; call `shutdown`.
pub struct Running {
    pub api_addr: SocketAddr,
    /// Where `GET /metrics` is served, when `metrics.enabled`.
    pub metrics_addr: Option<SocketAddr>,
    _metrics: Option<metrics::MetricsServer>,
    pub tls: bool,
    pub store: Arc<Store>,
    pub peers: Arc<Mutex<PeerTable>>,
    pub dataplane: Dataplane,
    /// The test side of the in-memory TUN when `tun.enabled` is false.
    pub tun_peer: Option<MemoryTunPeer>,
    /// What the platform services see; made even when they do not listen (no TUN), so their
    /// handlers can be exercised in-process.
    pub services: services::SharedContext,
    listening_services: Option<services::Services>,
    harvest_purge: JoinHandle<()>,
    checkpoints: JoinHandle<()>,
    endpoint_saves: JoinHandle<()>,
    /// Owns the VPG routes and the egress NAT (removed when arcd stops).
    pub vpg_plane: Arc<VpgPlane>,
    control_sockets: Vec<UapiServer>,
    /// Set only on the first start of a data directory.
    pub new_root_credentials: Option<RootCredentials>,
    stop: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl Running {
    /// Stops arcd cleanly, in the order that loses nothing: the API drains (requests already
    /// received finish, bounded by `api.shutdown_grace_seconds`; new connections are refused),
    /// the device services stop and the Harvest writer commits what is queued, the data plane
    /// stops (its sockets and the TUN device close), arcd's routes and NAT leave the host, each
    /// device's last endpoint is saved for the next start, and the WAL is emptied into the
    /// database.
    pub async fn shutdown(mut self) {
        // `commands::serve` has already told systemd STOPPING=1, so `systemctl stop` shows
        // "deactivating" while arcd drains.
        tracing::info!("stopping: draining API requests");
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        drop(self.listening_services.take());
        self.harvest_purge.abort();
        if let Err(e) = self.services.harvest.flush().await {
            tracing::warn!(error = %e, "Harvest writer not flushed");
        }
        self.dataplane.stop().await;
        self.control_sockets.clear();
        self.vpg_plane.remove_host_side();
        self.endpoint_saves.abort();
        let saved = save_endpoints(&self.store, &self.dataplane.engine).await;
        self.checkpoints.abort();
        let _ = self.checkpoints.await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint_truncate()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!("final WAL checkpoint could not empty the log (a reader held it); the next start replays it"),
            Ok(Err(e)) => tracing::warn!(error = %e, "final WAL checkpoint failed; the next start replays the log"),
            Err(e) => tracing::warn!(error = %e, "final WAL checkpoint task failed"),
        }
        tracing::info!(endpoints_saved = saved, "arcd stopped");
    }

    /// Waits until the accept loop ends (it runs until `shutdown`).
    pub async fn wait(self) {
        let _ = self.accept_task.await;
    }
}

pub async fn start(config: Config) -> Result<Running, ServeError> {
    start_with(config, Reinitialize::Refuse).await
}

/// `start`, optionally allowed to start over on a data directory whose database was lost.
pub async fn start_with(config: Config, reinitialize: Reinitialize) -> Result<Running, ServeError> {
    let store = Arc::new(bootstrap::open_store_with(
        &config,
        reinitialize,
        bootstrap::Integrity::Check,
    )?);
    store.disable_auto_checkpoint()?;
    let checkpoints = tokio::spawn(checkpoint_loop(store.clone()));
    let new_root_credentials =
        bootstrap::ensure_root_operator(&store, &config.data_dir, reinitialize)?;
    let policy = bootstrap::session_policy(&config);

    let sessions = store.read(sessions::list_active_sessions)?;
    let resume = store.read(endpoints::saved)?;
    tracing::info!(
        sessions = sessions.len(),
        saved_endpoints = resume.len(),
        "active sessions loaded"
    );
    let peers = Arc::new(Mutex::new(PeerTable::from_sessions(sessions)));
    let (changes, rx) = PeerChanges::channel();
    let mut listeners = Vec::new();
    for rp in &config.rendezvous_points {
        tracing::info!(
            rendezvous_point = %rp.id,
            name = rp.display_name(),
            endpoint = %rp.endpoint,
            pool = %rp.pool,
            "rendezvous point configured"
        );
        let private_key = store.read(|conn| rendezvous::private_key(conn, &rp.id))?;
        let private_key = wgkey::parse_key(&private_key)
            .ok_or_else(|| StoreError::Corrupt(format!("server key of {}", rp.id)))?;
        listeners.push(ListenerConfig {
            rp_id: rp.id.clone(),
            bind: rp.listen,
            private_key,
        });
    }
    let (tun, tun_peer) = open_tun(&config)?;
    let tun_index = match &tun {
        AnyTun::Device(device) => Some(device.device().if_index().map_err(ServeError::Dataplane)?),
        AnyTun::Memory(_) => None,
    };
    let dataplane = Dataplane::start(listeners, tun, peers.clone(), rx, resume)
        .map_err(ServeError::Dataplane)?;
    let endpoint_saves = tokio::spawn(endpoint_save_loop(store.clone(), dataplane.engine.clone()));
    let pools: Vec<Ipv4Net> = config.rendezvous_points.iter().map(|rp| rp.pool).collect();
    let egress = if config.egress.masquerade && config.tun.enabled {
        Some(egress::enable(&pools, &config.tun.name)?)
    } else {
        None
    };
    let host = tun_index.map(|ifindex| HostSide::new(ifindex, pools, egress));
    let vpg_plane = Arc::new(VpgPlane::new(dataplane.engine.clone(), host));
    let running_vpgs = load_vpgs(&store, &vpg_plane)?;
    tracing::info!(
        vpgs = running_vpgs,
        "running VPGs applied to the data plane"
    );
    let control_sockets = if config.tun.enabled {
        open_control_sockets(&dataplane).await
    } else {
        Vec::new()
    };
    let service_context = Arc::new(services::ServiceContext::new(
        store.clone(),
        peers.clone(),
        config.services.clone(),
    ));
    let listening_services = match (config.services.enabled, config.tun.enabled) {
        (true, true) => Some(services::start(service_context.clone()).await?),
        (true, false) => {
            tracing::info!("platform services not started: they listen on the TUN device's addresses (tun.enabled = false)");
            None
        }
        (false, _) => None,
    };
    let harvest_purge = services::harvest_retention::spawn_purge_job(
        store.clone(),
        config.services.harvest_retention_days,
    );
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
    let metrics_server = if config.metrics.enabled {
        let collector = metrics::ArcdCollector::new(dataplane.engine.clone(), store.wal_path());
        let addr = config.metrics.listen;
        let server = metrics::serve(addr, metrics::registry(collector))
            .await
            .map_err(|source| ServeError::MetricsListen { addr, source })?;
        Some(server)
    } else {
        None
    };

    let limits = listener::Limits::from_config(&config.api);
    let config = Arc::new(config);
    let state = Arc::new(AppState {
        store: store.clone(),
        config: config.clone(),
        policy,
        peer_changes: changes,
        engine: dataplane.engine.clone(),
        vpg_plane: vpg_plane.clone(),
        tokens: Default::default(),
    });
    let app = api::router(state);
    let (stop, stopped) = watch::channel(false);
    let tls_on = tls.is_some();
    let accept_task = tokio::spawn(listener::accept_loop(listener, tls, app, limits, stopped));
    Ok(Running {
        api_addr,
        metrics_addr: metrics_server.as_ref().map(|m| m.addr),
        _metrics: metrics_server,
        tls: tls_on,
        store,
        peers,
        dataplane,
        tun_peer,
        services: service_context,
        listening_services,
        harvest_purge,
        checkpoints,
        endpoint_saves,
        vpg_plane,
        control_sockets,
        new_root_credentials,
        stop,
        accept_task,
    })
}

/// Applies every running VPG (rules, routes, NAT) before the API serves, so later changes are
/// applied after their commits, in order; returns how many there are.
pub fn load_vpgs(store: &Store, plane: &VpgPlane) -> Result<usize, ServeError> {
    let running = store.read(vpgs::running)?;
    plane.apply(&running);
    Ok(running.len())
}

/// How often the background checkpoint copies committed pages into the database. Often enough
/// that, under a sustained write load, the writer's bounding checkpoint (`Store::write_then`) finds
/// most of the log already copied and holds the writer only briefly.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoints the WAL off the request path (commits no longer do it inline).
async fn checkpoint_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint task failed"),
        }
    }
}

/// How often the devices' endpoints learned since the last save are written (one transaction).
/// A device that roamed since then is still found at its old endpoint only if it kept it; else it
/// comes back on its own, as without a saved endpoint.
const ENDPOINT_SAVE_INTERVAL: Duration = Duration::from_secs(30);

async fn endpoint_save_loop(store: Arc<Store>, engine: Arc<Engine>) {
    let mut tick = tokio::time::interval(ENDPOINT_SAVE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        save_endpoints(&store, &engine).await;
    }
}

/// Saves the endpoints that changed since the last save; returns how many sessions took one.
async fn save_endpoints(store: &Arc<Store>, engine: &Arc<Engine>) -> usize {
    let changed = engine.unsaved_endpoints();
    if changed.is_empty() {
        return 0;
    }
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = store.write(|tx| endpoints::save(tx, &changed));
        (changed, result)
    })
    .await;
    match written {
        Ok((changed, Ok(saved))) => {
            engine.endpoints_saved(&changed);
            tracing::debug!(saved, "device endpoints saved");
            saved
        }
        Ok((_, Err(e))) => {
            tracing::warn!(error = %e, "device endpoints not saved; retrying later");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "device endpoint save task failed");
            0
        }
    }
}

/// The real TUN device with the platform addresses and a gateway address in each client pool
/// (which routes the pool to the device), or an in-memory stand-in when disabled.
fn open_tun(config: &Config) -> Result<(AnyTun, Option<MemoryTunPeer>), ServeError> {
    if !config.tun.enabled {
        let (tun, peer) = MemoryTun::pair();
        return Ok((AnyTun::Memory(tun), Some(peer)));
    }
    let mut addresses: Vec<Ipv4Net> = services::PLATFORM_ADDRESSES
        .iter()
        .map(|ip| Ipv4Net::from(*ip))
        .collect();
    for rp in &config.rendezvous_points {
        let gateway = Ipv4Addr::from(u32::from(rp.pool.network()) + 1);
        let net = Ipv4Net::new(gateway, rp.pool.prefix_len())
            .map_err(|_| StoreError::Corrupt(format!("pool of {}", rp.id)))?;
        if !addresses.contains(&net) {
            addresses.push(net);
        }
    }
    let device = tun_device::open(&config.tun.name, config.tun.mtu, &addresses)?;
    Ok((AnyTun::Device(device), None))
}

/// One read-only WireGuard control socket per rendezvous point, so `wg show` works.
async fn open_control_sockets(dataplane: &Dataplane) -> Vec<UapiServer> {
    let mut sockets = Vec::new();
    for (rp_id, addr) in &dataplane.udp_addrs {
        let engine = dataplane.engine.clone();
        let (rp_id, port) = (rp_id.clone(), addr.port());
        let name = uapi::socket_name(&rp_id);
        let snapshot_name = name.clone();
        let snapshot: uapi::SnapshotFn = Arc::new(move || ListenerSnapshot {
            rp_id: rp_id.clone(),
            name: snapshot_name.clone(),
            listen_port: port,
            peers: engine.snapshots(&rp_id),
        });
        // `wg show` is a convenience: a socket taken by another arcd (same rendezvous point id in
        // another network namespace) must not stop this one from serving devices.
        match UapiServer::bind(Path::new(uapi::DEFAULT_DIR), &name, snapshot).await {
            Ok(socket) => sockets.push(socket),
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "no WireGuard control socket; `wg show` will not list this rendezvous point")
            }
        }
    }
    sockets
}

enum AnyTun {
    Device(TunDevice),
    Memory(MemoryTun),
}

impl TunIo for AnyTun {
    fn mtu(&self) -> usize {
        match self {
            AnyTun::Device(d) => TunIo::mtu(d),
            AnyTun::Memory(m) => m.mtu(),
        }
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<()> {
        match self {
            AnyTun::Device(d) => d.recv_batch(batch).await,
            AnyTun::Memory(m) => m.recv_batch(batch).await,
        }
    }

    fn try_recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<()> {
        match self {
            AnyTun::Device(d) => d.try_recv_batch(batch),
            AnyTun::Memory(m) => m.try_recv_batch(batch),
        }
    }

    async fn send_batch(&self, packets: &mut [Vec<u8>]) -> std::io::Result<()> {
        match self {
            AnyTun::Device(d) => d.send_batch(packets).await,
            AnyTun::Memory(m) => m.send_batch(packets).await,
        }
    }
}
