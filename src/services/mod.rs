//! Platform services inside the tunnel (metadata, Harvest, Beam, Endorse, Funnel, Funk, DNS, the
//! unified endpoint; pong is the kernel answering ICMP on the TUN address). They listen on SORACOM's fixed addresses,
//! which the TUN device carries, and identify a caller by its tunnel source address, always as
//! the primary IMSI.

pub mod beam;
pub mod caller;
pub mod destination;
pub mod dns;
pub mod endorse;
pub mod endorse_key;
pub mod funk;
pub mod funnel;
pub mod funnel_delivery;
pub mod harvest;
pub mod harvest_retention;
mod http;
pub mod metadata;
mod raw;
pub mod unified;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::config::ServicesConfig;
use crate::dataplane::engine::Engine;
use crate::store::Store;

pub use caller::{Caller, CallerError};

pub const PONG_AND_METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
pub const DNS: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 53);
pub const HARVEST: Ipv4Addr = Ipv4Addr::new(100, 127, 111, 111);
pub const BEAM: Ipv4Addr = Ipv4Addr::new(100, 127, 127, 100);
pub const UNIFIED: Ipv4Addr = Ipv4Addr::new(100, 127, 69, 42);
/// SORACOM publishes no in-network address for `endorse.soracom.io` (its devices reach it over
/// HTTPS); arcd serves it here, and its DNS answers the name with this address.
pub const ENDORSE: Ipv4Addr = Ipv4Addr::new(100, 127, 120, 120);
pub const FUNNEL: Ipv4Addr = Ipv4Addr::new(100, 127, 65, 43);

/// Carried by the TUN device as local addresses so the kernel (and arcd's services) answer.
pub const PLATFORM_ADDRESSES: [Ipv4Addr; 7] = [
    PONG_AND_METADATA,
    DNS,
    HARVEST,
    BEAM,
    UNIFIED,
    ENDORSE,
    FUNNEL,
];

pub const HTTP_PORT: u16 = 80;
pub const HARVEST_RAW_PORT: u16 = 8514;
pub const BEAM_HTTP_PORT: u16 = 8888;
pub const DNS_PORT: u16 = 53;
/// Funnel's and the unified endpoint's raw TCP/UDP port.
pub const RAW_PORT: u16 = 23080;

/// What every service needs: who is behind a tunnel address, and the store.
pub struct ServiceContext {
    pub store: Arc<Store>,
    /// The data plane's engine, whose peer index tells who is behind a tunnel address.
    pub engine: Arc<Engine>,
    pub config: ServicesConfig,
    pub harvest: harvest::HarvestSink,
    pub beam: beam::BeamClient,
    pub endorse_keys: endorse_key::EndorseKeys,
    /// Funnel's background delivery (queues, MQTT clients, counts).
    pub funnel: funnel_delivery::Delivery,
    /// The HTTP client Funk calls functions with (its own timeout).
    pub funk: beam::BeamClient,
}

pub type SharedContext = Arc<ServiceContext>;

impl ServiceContext {
    pub fn new(store: Arc<Store>, engine: Arc<Engine>, config: ServicesConfig) -> ServiceContext {
        let harvest = harvest::HarvestSink::start(store.clone());
        let beam =
            beam::BeamClient::new(std::time::Duration::from_secs(config.beam_timeout_seconds));
        let endorse_keys = endorse_key::EndorseKeys::new(store.clone());
        // Webhooks get Beam's timeout: a destination slower than that is retried.
        let funnel = funnel_delivery::Delivery::start(beam.clone());
        let funk =
            beam::BeamClient::new(std::time::Duration::from_secs(config.funk_timeout_seconds));
        ServiceContext {
            store,
            engine,
            config,
            harvest,
            beam,
            endorse_keys,
            funnel,
            funk,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("service {service} cannot listen on {addr}: {source}")]
pub struct ServiceBindError {
    pub service: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Running services; dropping this stops them.
pub struct Services {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Makes a raw TCP/UDP entry point's handler for one protocol.
type RawHandlerFor = fn(SharedContext, funnel::Protocol) -> raw::Handler;

/// Binds every service on its platform address (the TUN device must already carry them).
pub async fn start(ctx: SharedContext) -> Result<Services, ServiceBindError> {
    let mut tasks = Vec::new();
    let http_services = [
        (
            "metadata",
            PONG_AND_METADATA,
            HTTP_PORT,
            metadata::router(ctx.clone()),
        ),
        ("harvest", HARVEST, HTTP_PORT, harvest::router(ctx.clone())),
        ("beam", BEAM, BEAM_HTTP_PORT, beam::router(ctx.clone())),
        ("unified", UNIFIED, HTTP_PORT, unified::router(ctx.clone())),
        ("endorse", ENDORSE, HTTP_PORT, endorse::router(ctx.clone())),
        ("funnel", FUNNEL, HTTP_PORT, funnel::router(ctx.clone())),
    ];
    for (service, ip, port, router) in http_services {
        let listener = bind_tcp(service, ip, port).await?;
        tasks.push(tokio::spawn(http::serve(service, listener, router)));
    }
    let harvest_tcp = bind_tcp("harvest", HARVEST, HARVEST_RAW_PORT).await?;
    tasks.push(tokio::spawn(harvest::serve_tcp(ctx.clone(), harvest_tcp)));
    let harvest_udp = bind_udp("harvest", HARVEST, HARVEST_RAW_PORT).await?;
    tasks.push(tokio::spawn(harvest::serve_udp(ctx.clone(), harvest_udp)));
    let raw_entries: [(&'static str, Ipv4Addr, RawHandlerFor); 2] = [
        ("funnel", FUNNEL, funnel::raw_handler),
        ("unified", UNIFIED, unified::raw_handler),
    ];
    for (service, ip, handler) in raw_entries {
        let tcp = bind_tcp(service, ip, RAW_PORT).await?;
        let on_tcp = handler(ctx.clone(), funnel::Protocol::Tcp);
        tasks.push(tokio::spawn(raw::serve_tcp(service, tcp, on_tcp)));
        let udp = bind_udp(service, ip, RAW_PORT).await?;
        let on_udp = handler(ctx.clone(), funnel::Protocol::Udp);
        tasks.push(tokio::spawn(raw::serve_udp(service, udp, on_udp)));
    }
    let dns = Arc::new(dns::DnsService::new(
        &ctx.config.local_domain,
        ctx.config.dns_upstreams.clone(),
    ));
    let dns_udp = bind_udp("dns", DNS, DNS_PORT).await?;
    tasks.push(tokio::spawn(dns::serve_udp(dns.clone(), dns_udp)));
    let dns_tcp = bind_tcp("dns", DNS, DNS_PORT).await?;
    tasks.push(tokio::spawn(dns::serve_tcp(dns, dns_tcp)));
    tracing::info!("platform services listening");
    Ok(Services { tasks })
}

async fn bind_tcp(
    service: &'static str,
    ip: Ipv4Addr,
    port: u16,
) -> Result<TcpListener, ServiceBindError> {
    let addr = SocketAddr::from((ip, port));
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceBindError {
            service,
            addr,
            source,
        })
}

async fn bind_udp(
    service: &'static str,
    ip: Ipv4Addr,
    port: u16,
) -> Result<UdpSocket, ServiceBindError> {
    let addr = SocketAddr::from((ip, port));
    UdpSocket::bind(addr)
        .await
        .map_err(|source| ServiceBindError {
            service,
            addr,
            source,
        })
}
