//! `arcd serve`: wires store, API listener (TLS or plain HTTP) and the data plane
//! (`start_with`), and stops them in order (`Running::shutdown`).

pub mod follower;
mod jobs;
mod live_publisher;
mod load;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, AppState};
use crate::bootstrap::{self, BootstrapError, Reinitialize, RootCredentials};
use crate::config::{Config, RendezvousPointConfig};
use crate::dataplane::egress::{self, EgressError};
use crate::dataplane::stats::ListenerSnapshot;
use crate::dataplane::tun_device::{self, TunDevice, TunError};
use crate::dataplane::uapi::{self, UapiServer};
use crate::dataplane::vpg_plane::{HostSide, VpgPlane};
use crate::dataplane::{Dataplane, MemoryTun, MemoryTunPeer, PeerChanges, RecvBatch, TunIo};
use crate::listener;
use crate::metrics;
use crate::services;
use crate::store::{vpgs, Store, StoreError};
use crate::tls::{self, TlsError};

use follower::{Follower, Following};
use ipnet::Ipv4Net;
use jobs::{checkpoint_loop, endpoint_save_loop, outbox_prune_loop, save_endpoints};
use live_publisher::LivePublisherTask;
use load::{load_from_store, StoreAtStart};
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
    Config(#[from] crate::config::ConfigError),
    #[error("the store's start task failed: {0}")]
    StoreTask(String),
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
    /// Where the API listens; `None` on a node with `[node] api = false`.
    pub api_addr: Option<SocketAddr>,
    /// Where `GET /metrics` is served, when `metrics.enabled`.
    pub metrics_addr: Option<SocketAddr>,
    _metrics: Option<metrics::MetricsServer>,
    pub tls: bool,
    pub store: Arc<Store>,
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
    /// The peer-change follower: the only path from committed changes to this data plane.
    following: Option<Following>,
    /// Wakes this node's follower and tells when it has read a change (what the API waits on).
    pub follower: follower::FollowerHandle,
    outbox_prune: JoinHandle<()>,
    /// Publishes this node's live session figures for API nodes (PostgreSQL, serving an RP).
    live_publisher: Option<LivePublisherTask>,
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
    /// stops (its sockets and the TUN device close), its last live figures are published (shared
    /// store), arcd's routes and NAT leave the host, each device's last endpoint is saved for the
    /// next start, and the WAL is emptied into the database.
    pub async fn shutdown(mut self) {
        // `commands::serve` has already told systemd STOPPING=1, so `systemctl stop` shows
        // "deactivating" while arcd drains.
        tracing::info!("stopping: draining API requests");
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        if let Some(following) = self.following.take() {
            following.stop();
        }
        self.outbox_prune.abort();
        drop(self.listening_services.take());
        self.harvest_purge.abort();
        if let Err(e) = self.services.harvest.flush().await {
            tracing::warn!(error = %e, "Harvest writer not flushed");
        }
        self.dataplane.stop().await;
        if let Some(publisher) = self.live_publisher.take() {
            publisher.stop().await;
        }
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

/// `start`, optionally allowed to start over on a data directory whose database was lost. The
/// steps run in this order: each one needs what the ones before it made, and the API listens
/// last, so nothing it acknowledges can reach a data plane that is not there yet.
pub async fn start_with(config: Config, reinitialize: Reinitialize) -> Result<Running, ServeError> {
    config.validate()?;
    let StoreAtStart {
        store,
        new_root_credentials,
        sessions,
        resume,
        listeners,
        running_vpgs,
        cursor,
    } = load_from_store(&config, reinitialize).await?;
    let checkpoints = tokio::spawn(checkpoint_loop(store.clone()));
    let policy = bootstrap::session_policy(&config);
    let (changes, rx) = PeerChanges::channel();
    let (tun, tun_peer) = open_tun(&config)?;
    let tun_index = tun_index(&tun)?;
    let dataplane = Dataplane::start(
        listeners,
        tun,
        sessions,
        rx,
        resume,
        config.dataplane.worker_options(),
    )
    .map_err(ServeError::Dataplane)?;
    let endpoint_saves = tokio::spawn(endpoint_save_loop(store.clone(), dataplane.engine.clone()));
    let live_publisher = LivePublisherTask::start_if_shared(&store, &dataplane.engine);
    let vpg_plane = start_vpg_plane(&config, &running_vpgs, &dataplane, tun_index)?;
    let (follower, following) = follower::start(
        Follower {
            store: store.clone(),
            node: config.node.clone(),
            engine: dataplane.engine.clone(),
            changes,
            vpg_plane: vpg_plane.clone(),
        },
        cursor,
    );
    let outbox_prune = tokio::spawn(outbox_prune_loop(store.clone()));
    let control_sockets = if config.tun.enabled {
        open_control_sockets(&dataplane).await
    } else {
        Vec::new()
    };
    let (services, listening_services) = start_services(&config, &store, &dataplane).await?;
    let harvest_purge = services::harvest_retention::spawn_purge_job(
        store.clone(),
        config.services.harvest_retention_days,
    );
    let api = if config.node.api {
        Some(bind_api(&config).await?)
    } else {
        tracing::info!("API not served on this node ([node] api = false)");
        None
    };
    let metrics_server = start_metrics(&config, &dataplane, &store).await?;
    let api_addr = api.as_ref().map(|api| api.addr);
    let tls = api.as_ref().is_some_and(|api| api.tls.is_some());
    let state = Arc::new(AppState {
        store: store.clone(),
        policy,
        follower: follower.clone(),
        engine: dataplane.engine.clone(),
        tokens: Default::default(),
        endorse_keys: crate::services::endorse_key::EndorseKeys::new(store.clone()),
        config: Arc::new(config),
    });
    let (stop, accept_task) = serve_api(api, state);
    Ok(Running {
        api_addr,
        metrics_addr: metrics_server.as_ref().map(|m| m.addr),
        _metrics: metrics_server,
        tls,
        store,
        dataplane,
        tun_peer,
        services,
        listening_services,
        harvest_purge,
        checkpoints,
        endpoint_saves,
        following: Some(following),
        follower,
        outbox_prune,
        live_publisher,
        vpg_plane,
        control_sockets,
        new_root_credentials,
        stop,
        accept_task,
    })
}

/// The interface index of a real TUN device (for routes); `None` for the in-memory one.
fn tun_index(tun: &AnyTun) -> Result<Option<u32>, ServeError> {
    match tun {
        AnyTun::Device(device) => Ok(Some(
            device.device().if_index().map_err(ServeError::Dataplane)?,
        )),
        AnyTun::Memory(_) => Ok(None),
    }
}

/// Egress NAT (when configured) and the VPG plane, with every running VPG already applied.
fn start_vpg_plane(
    config: &Config,
    running_vpgs: &[vpgs::RunningVpg],
    dataplane: &Dataplane,
    tun_index: Option<u32>,
) -> Result<Arc<VpgPlane>, ServeError> {
    let pools: Vec<Ipv4Net> = served_rendezvous_points(config).map(|rp| rp.pool).collect();
    let egress = if config.egress.masquerade && config.tun.enabled {
        Some(egress::enable(&pools, &config.tun.name)?)
    } else {
        None
    };
    let host = tun_index.map(|ifindex| HostSide::new(ifindex, pools, egress));
    let vpg_plane = Arc::new(VpgPlane::new(dataplane.engine.clone(), host));
    vpg_plane.apply(running_vpgs);
    tracing::info!(
        vpgs = running_vpgs.len(),
        "running VPGs applied to the data plane"
    );
    Ok(vpg_plane)
}

/// The platform services' context, and the services themselves when they can listen (they
/// need the TUN device's addresses).
async fn start_services(
    config: &Config,
    store: &Arc<Store>,
    dataplane: &Dataplane,
) -> Result<(services::SharedContext, Option<services::Services>), ServeError> {
    let context = Arc::new(services::ServiceContext::new(
        store.clone(),
        dataplane.engine.clone(),
        config.services.clone(),
    ));
    let has_tun = config.tun.enabled && served_rendezvous_points(config).next().is_some();
    let listening = match (config.services.enabled, has_tun) {
        (true, true) => Some(services::start(context.clone()).await?),
        (true, false) => {
            tracing::info!("platform services not started: they listen on the TUN device's addresses (tun.enabled = false, or this node serves no rendezvous point)");
            None
        }
        (false, _) => None,
    };
    Ok((context, listening))
}

/// The API's bound socket and, with `api.tls`, its TLS acceptor; not accepting yet.
struct ApiSocket {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: listener::Limits,
}

async fn bind_api(config: &Config) -> Result<ApiSocket, ServeError> {
    let tls = if config.api.tls {
        Some(TlsAcceptor::from(tls::server_config(
            &config.api,
            &config.data_dir,
        )?))
    } else {
        None
    };
    let listen_error = |source| ServeError::Listen {
        addr: config.api.listen,
        source,
    };
    let listener = TcpListener::bind(config.api.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    tracing::info!(addr = %addr, tls = tls.is_some(), "API listening");
    Ok(ApiSocket {
        listener,
        addr,
        tls,
        limits: listener::Limits::from_config(&config.api),
    })
}

/// `GET /metrics` on its own listener, when `metrics.enabled`.
async fn start_metrics(
    config: &Config,
    dataplane: &Dataplane,
    store: &Store,
) -> Result<Option<metrics::MetricsServer>, ServeError> {
    if !config.metrics.enabled {
        return Ok(None);
    }
    let collector = metrics::ArcdCollector::new(dataplane.engine.clone(), store.wal_path());
    let addr = config.metrics.listen;
    let server = metrics::serve(addr, metrics::registry(collector))
        .await
        .map_err(|source| ServeError::MetricsListen { addr, source })?;
    Ok(Some(server))
}

/// Starts accepting API connections (`listener::accept_loop`); the sender stops it. Without an
/// API (`[node] api = false`) the task only waits for that stop, so `Running::wait` still
/// means "until shutdown".
fn serve_api(
    api: Option<ApiSocket>,
    state: Arc<AppState>,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let Some(api) = api else {
        let idle = tokio::spawn(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        return (stop, idle);
    };
    let app = api::router(state);
    let accept_task = tokio::spawn(listener::accept_loop(
        api.listener,
        api.tls,
        app,
        api.limits,
        stopped,
    ));
    (stop, accept_task)
}

/// The `[[rendezvous_points]]` this node serves (`[node] rendezvous_points`).
fn served_rendezvous_points(config: &Config) -> impl Iterator<Item = &RendezvousPointConfig> {
    config
        .rendezvous_points
        .iter()
        .filter(|rp| config.node.serves(&rp.id))
}

/// The real TUN device with the platform addresses and a gateway address in each client pool
/// (which routes the pool to the device), or an in-memory stand-in when disabled.
fn open_tun(config: &Config) -> Result<(AnyTun, Option<MemoryTunPeer>), ServeError> {
    if !config.tun.enabled || served_rendezvous_points(config).next().is_none() {
        let (tun, peer) = MemoryTun::pair();
        return Ok((AnyTun::Memory(tun), Some(peer)));
    }
    let mut addresses: Vec<Ipv4Net> = services::PLATFORM_ADDRESSES
        .iter()
        .map(|ip| Ipv4Net::from(*ip))
        .collect();
    for rp in served_rendezvous_points(config) {
        let gateway = Ipv4Addr::from(u32::from(rp.pool.network()) + 1);
        let net = Ipv4Net::new(gateway, rp.pool.prefix_len())
            .map_err(|_| StoreError::Corrupt(format!("pool of {}", rp.id)))?;
        if !addresses.contains(&net) {
            addresses.push(net);
        }
    }
    let device = tun_device::open(
        &config.tun.name,
        config.tun.mtu,
        &addresses,
        config.dataplane.worker_count(),
    )?;
    Ok((AnyTun::Device(device), None))
}

/// One read-only WireGuard control socket per rendezvous point, so `wg show` works.
async fn open_control_sockets(dataplane: &Dataplane) -> Vec<UapiServer> {
    let mut sockets = Vec::new();
    for (rp_id, addr) in &dataplane.udp_addrs {
        let engine = dataplane.engine.clone();
        let (rp_id, port) = (rp_id.clone(), addr.port());
        let name = crate::dataplane::interface_name::for_rendezvous_point(&rp_id);
        let snapshot_name = name.clone();
        let snapshot: uapi::SnapshotFn = Arc::new(move || ListenerSnapshot {
            rp_id: rp_id.clone(),
            name: snapshot_name.clone(),
            listen_port: port,
            peer_snapshots: engine.snapshots(&rp_id, std::time::SystemTime::now()),
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

    fn queues(&self) -> usize {
        match self {
            AnyTun::Device(d) => d.queues(),
            AnyTun::Memory(m) => m.queues(),
        }
    }

    async fn recv_batch(&self, queue: usize, batch: &mut RecvBatch) -> std::io::Result<()> {
        match self {
            AnyTun::Device(d) => d.recv_batch(queue, batch).await,
            AnyTun::Memory(m) => m.recv_batch(queue, batch).await,
        }
    }

    fn try_recv_batch(&self, queue: usize, batch: &mut RecvBatch) -> std::io::Result<()> {
        match self {
            AnyTun::Device(d) => d.try_recv_batch(queue, batch),
            AnyTun::Memory(m) => m.try_recv_batch(queue, batch),
        }
    }

    async fn send_batch(&self, queue: usize, packets: &mut [Vec<u8>]) -> std::io::Result<()> {
        match self {
            AnyTun::Device(d) => d.send_batch(queue, packets).await,
            AnyTun::Memory(m) => m.send_batch(queue, packets).await,
        }
    }
}
