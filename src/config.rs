//! Configuration: built-in defaults < `--config FILE` (TOML) < `ARCD_*` environment variables.
//!
//! The keys are a contract with outside scripts (docs/ARCHITECTURE.md, "Configuration contract"):
//! add keys, never rename.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::ids::RendezvousPointId;

mod rendezvous_points;
mod store;
pub use rendezvous_points::{RendezvousPointConfig, FIRST_LISTEN_PORT};
pub use store::{NodeConfig, StoreConfig, StoreEngine, ALL_RENDEZVOUS_POINTS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {}", describe_figment(.0))]
    Figment(Box<figment::Error>),
    #[error("invalid configuration: key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SQLite file, TLS certificate and key, root-credentials.json.
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub tun: TunConfig,
    pub dataplane: DataplaneConfig,
    pub egress: EgressConfig,
    /// Entries need only `id`; see `rendezvous_points` for the defaults of the other fields.
    #[serde(deserialize_with = "rendezvous_points::deserialize")]
    pub rendezvous_points: Vec<RendezvousPointConfig>,
    pub coverage: CoverageConfig,
    pub sims: SimsConfig,
    pub services: ServicesConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub node: NodeConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub tls: bool,
    /// Subject alternative names of the generated certificate (`localhost` and 127.0.0.1 are always added).
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Default lifetime of tokens from POST /v1/auth when the request names none.
    pub token_timeout_seconds: u64,
    /// Most API connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// A connection is closed when no complete request head arrives within this time: since it
    /// opened, or since the previous response (idle keep-alive).
    pub idle_timeout_seconds: u64,
    /// Longest time to receive a request body, from the end of its head; slower gets 408.
    pub body_timeout_seconds: u64,
    /// Failed `POST /v1/auth` (401) answers per client address within the window before that
    /// address gets 429 until the window ends.
    pub auth_failure_limit: u32,
    pub auth_failure_window_seconds: u64,
    /// On SIGTERM: how long requests already received may take to finish before arcd closes their
    /// connections and stops anyway.
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunConfig {
    /// false: no TUN device (no root needed); devices then reach only each other, not the
    /// platform addresses or other networks.
    pub enabled: bool,
    pub name: String,
    pub mtu: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Packet workers: each has its own UDP socket per rendezvous point (SO_REUSEPORT, so the
    /// kernel spreads devices over them), its own queue of the TUN device and its own handshake
    /// task. Absent: one per core (`DataplaneConfig::worker_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Handshake messages each worker queues at most; from half of it the rendezvous point is
    /// under load and demands cookies. Absent: `DEFAULT_HANDSHAKE_QUEUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_queue: Option<usize>,
}

/// Bounds of `dataplane.handshake_queue`: a queue of 2 has a threshold of 1; a million queued
/// initiations would be minutes of key agreements, answered long after their devices gave up.
pub const HANDSHAKE_QUEUE_RANGE: std::ops::RangeInclusive<usize> = 2..=1_048_576;

/// Most packet workers accepted: far above any core count arcd is run on, low enough that a typo
/// does not open thousands of sockets and TUN queues.
pub const MAX_DATAPLANE_WORKERS: usize = 256;

impl DataplaneConfig {
    /// The configured workers, or one per core the process may run on (1 when unknown).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_DATAPLANE_WORKERS)
        })
    }

    /// Workers and handshake queue as the data plane takes them.
    pub fn worker_options(&self) -> crate::dataplane::WorkerOptions {
        crate::dataplane::WorkerOptions {
            workers: self.worker_count(),
            handshake_queue: self
                .handshake_queue
                .unwrap_or(crate::dataplane::handshake_load::DEFAULT_HANDSHAKE_QUEUE),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Masquerade device traffic leaving for other networks (nftables table `ip arcd`).
    pub masquerade: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageConfig {
    /// Coverage of a request whose Host header matches no glob in `global_hosts` or `jp_hosts`.
    pub default: Coverage,
    pub global_hosts: Vec<String>,
    /// Checked after `global_hosts` (so `g.api.*` wins over `*api.*`).
    #[serde(default)]
    pub jp_hosts: Vec<String>,
    pub jp_rendezvous_point: RendezvousPointId,
    pub global_rendezvous_point: RendezvousPointId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coverage {
    Jp,
    G,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Jp => "jp",
            Coverage::G => "g",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimsConfig {
    /// Leading digits of every ICCID arcd issues (issuer identification number).
    pub iccid_prefix: String,
    /// How long a terminated SIM's client address stays out of the pool.
    pub address_quarantine_seconds: u64,
    /// Most SIMs (not terminated) one operator may hold; keeps one operator from taking the
    /// client address pools every operator shares.
    pub max_per_operator: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// Run metadata, Harvest, Beam, DNS and the unified endpoint on the platform addresses of the
    /// TUN device (nothing to listen on when `tun.enabled` is false).
    pub enabled: bool,
    /// DNS answers the platform names under `soracom.io` and under this domain too.
    pub local_domain: String,
    /// Resolvers (`ip:port`) that get every other DNS question; empty = answer REFUSED.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Harvest data entries older than this are purged.
    pub harvest_retention_days: u32,
    /// Longest wait for a Beam destination before the device gets 504.
    pub beam_timeout_seconds: u64,
    /// Longest wait for a Funk function before the device gets 504.
    pub funk_timeout_seconds: u64,
}

/// Prometheus metrics on a listener of their own (plain HTTP `GET /metrics`), off by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Loopback by default: the metrics carry no secrets but describe the service, so exposing
    /// them on other addresses is a choice the operator makes by setting this.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing-subscriber filter, e.g. `info` or `arcd=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` (one human-readable line per event) or `json` (one JSON object per line, for log
    /// collectors).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./arcd-data"),
            api: ApiConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
                tls: true,
                hostnames: vec!["localhost".into()],
                cert_file: None,
                key_file: None,
                token_timeout_seconds: 86_400,
                max_connections: 512,
                idle_timeout_seconds: 30,
                body_timeout_seconds: 30,
                auth_failure_limit: 10,
                auth_failure_window_seconds: 60,
                shutdown_grace_seconds: 10,
            },
            tun: TunConfig {
                enabled: true,
                name: "arc0".into(),
                mtu: 1420,
            },
            dataplane: DataplaneConfig::default(),
            egress: EgressConfig { masquerade: false },
            rendezvous_points: vec![RendezvousPointConfig {
                id: RendezvousPointId::new("ap-northeast-1"),

                name: None,
                listen: SocketAddr::from(([0, 0, 0, 0], 11010)),
                endpoint: "127.0.0.1:11010".into(),
                pool: DEFAULT_POOL,
                allowed_ips: vec![PLATFORM_NETWORK],
            }],
            coverage: CoverageConfig {
                default: Coverage::Jp,
                global_hosts: vec!["g.api.*".into()],
                jp_hosts: vec!["api.*".into()],
                jp_rendezvous_point: "ap-northeast-1".into(),
                global_rendezvous_point: "eu-central-1".into(),
            },
            sims: SimsConfig {
                iccid_prefix: "8942".into(),
                address_quarantine_seconds: 7 * 86_400,
                max_per_operator: 10_000,
            },
            services: ServicesConfig {
                enabled: true,
                local_domain: "arc.internal".into(),
                dns_upstreams: Vec::new(),
                harvest_retention_days: 40,
                beam_timeout_seconds: 10,
                funk_timeout_seconds: 10,
            },
            metrics: MetricsConfig {
                enabled: false,
                listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            store: StoreConfig::default(),
            node: NodeConfig::default(),
        }
    }
}

/// Top-level sections and keys; `ARCD_<KEY>` variables outside these are ignored.
const TOP_LEVEL_KEYS: &[&str] = &[
    "data_dir",
    "api",
    "tun",
    "dataplane",
    "egress",
    "rendezvous_points",
    "coverage",
    "sims",
    "services",
    "metrics",
    "log",
    "store",
    "node",
];

/// Port of the metrics listener when on (next to node_exporter's 9100 family of ports; not one
/// of the well-known exporters' registered defaults).
/// The default rendezvous point's client address pool. Built in a constant so an invalid prefix
/// would fail the build, not a start.
const DEFAULT_POOL: ipnet::Ipv4Net =
    ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 64, 0, 0), 16);

/// SORACOM's platform network (the in-tunnel services), a device's default AllowedIPs.
const PLATFORM_NETWORK: ipnet::Ipv4Net =
    ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(100, 127, 0, 0), 16);

pub const DEFAULT_METRICS_PORT: u16 = 9469;

/// Largest token lifetime the official API allows.
pub const MAX_TOKEN_TIMEOUT_SECONDS: u64 = 172_800;

/// Placement regions the official API knows (`Placement.region`).
pub const KNOWN_REGIONS: &[&str] = &[
    "ap-northeast-1",
    "eu-central-1",
    "us-west-2",
    "ap-southeast-2",
];

impl Config {
    /// Loads defaults, then `file` (if given), then `ARCD_*` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        // `ARCD_CONFIG` names the file itself (a CLI flag), not a key.
        // Other ARCD_* variables (test switches, wrappers' own settings) are not configuration.
        let env = Env::prefixed("ARCD_")
            .filter(|key| {
                let top = key.as_str().split("__").next().unwrap_or("");
                TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            })
            .split("__");
        Self::load_with_env(file, env)
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The checks `load` runs; `server::start` runs them again for configurations built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        if self.rendezvous_points.is_empty() {
            return Err(invalid(
                "rendezvous_points",
                "at least one rendezvous point is required".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, rp) in self.rendezvous_points.iter().enumerate() {
            let key = |field: &str| format!("rendezvous_points[{i}].{field}");
            if !KNOWN_REGIONS.contains(&rp.id.as_str()) {
                return Err(invalid(
                    &key("id"),
                    format!(
                        "`{}` is not a placement region; use one of {KNOWN_REGIONS:?}",
                        rp.id
                    ),
                ));
            }
            if !seen.insert(rp.id.clone()) {
                return Err(invalid(&key("id"), format!("`{}` appears twice", rp.id)));
            }
            if !endpoint_is_host_port(&rp.endpoint) {
                return Err(invalid(
                    &key("endpoint"),
                    format!("`{}` is not host:port", rp.endpoint),
                ));
            }
            if rp.pool.prefix_len() > 30 {
                return Err(invalid(
                    &key("pool"),
                    format!("{} holds no usable client address", rp.pool),
                ));
            }
        }
        if self.api.token_timeout_seconds == 0
            || self.api.token_timeout_seconds > MAX_TOKEN_TIMEOUT_SECONDS
        {
            return Err(invalid(
                "api.token_timeout_seconds",
                format!("must be between 1 and {MAX_TOKEN_TIMEOUT_SECONDS}"),
            ));
        }
        if self.api.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1".into()));
        }
        for (key, value) in [
            ("api.idle_timeout_seconds", self.api.idle_timeout_seconds),
            ("api.body_timeout_seconds", self.api.body_timeout_seconds),
            (
                "api.auth_failure_window_seconds",
                self.api.auth_failure_window_seconds,
            ),
            (
                "api.shutdown_grace_seconds",
                self.api.shutdown_grace_seconds,
            ),
        ] {
            if !(1..=3600).contains(&value) {
                return Err(invalid(key, "must be between 1 and 3600".into()));
            }
        }
        if self.api.auth_failure_limit == 0 {
            return Err(invalid(
                "api.auth_failure_limit",
                "must be at least 1".into(),
            ));
        }
        if self.api.cert_file.is_some() != self.api.key_file.is_some() {
            return Err(invalid(
                "api.cert_file",
                "cert_file and key_file must be given together".into(),
            ));
        }
        let prefix = &self.sims.iccid_prefix;
        if prefix.is_empty() || prefix.len() > 8 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("sims.iccid_prefix", "must be 1 to 8 digits".into()));
        }
        if let Err(e) = crate::dataplane::interface_name::validate(&self.tun.name) {
            return Err(invalid("tun.name", e.to_string()));
        }
        if let Some(workers) = self.dataplane.workers {
            if !(1..=MAX_DATAPLANE_WORKERS).contains(&workers) {
                return Err(invalid(
                    "dataplane.workers",
                    format!("must be between 1 and {MAX_DATAPLANE_WORKERS}"),
                ));
            }
        }
        if let Some(queue) = self.dataplane.handshake_queue {
            if !HANDSHAKE_QUEUE_RANGE.contains(&queue) {
                return Err(invalid(
                    "dataplane.handshake_queue",
                    format!(
                        "must be between {} and {}",
                        HANDSHAKE_QUEUE_RANGE.start(),
                        HANDSHAKE_QUEUE_RANGE.end()
                    ),
                ));
            }
        }
        if self.services.harvest_retention_days == 0 {
            return Err(invalid(
                "services.harvest_retention_days",
                "must be at least 1".into(),
            ));
        }
        if !(1..=300).contains(&self.services.beam_timeout_seconds) {
            return Err(invalid(
                "services.beam_timeout_seconds",
                "must be between 1 and 300".into(),
            ));
        }
        if !(1..=300).contains(&self.services.funk_timeout_seconds) {
            return Err(invalid(
                "services.funk_timeout_seconds",
                "must be between 1 and 300".into(),
            ));
        }
        let domain = self.services.local_domain.trim_matches('.');
        if domain.is_empty()
            || domain.len() > 200
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(invalid(
                "services.local_domain",
                "must be a DNS name such as arc.internal".into(),
            ));
        }
        // Port 0 asks the system for a free port each time, so two such listeners never clash.
        if self.metrics.enabled
            && self.metrics.listen == self.api.listen
            && self.api.listen.port() != 0
        {
            return Err(invalid(
                "metrics.listen",
                "must differ from api.listen".into(),
            ));
        }
        if self.tun.mtu < 1280 {
            return Err(invalid("tun.mtu", "must be at least 1280".into()));
        }
        let configured: Vec<&RendezvousPointId> =
            self.rendezvous_points.iter().map(|rp| &rp.id).collect();
        store::validate(&self.store, &self.node, &configured)
    }

    pub fn rendezvous_point(&self, id: &RendezvousPointId) -> Option<&RendezvousPointConfig> {
        self.rendezvous_points.iter().find(|rp| rp.id == *id)
    }

    /// The rendezvous point that serves new sessions of `coverage` outside a VPG. A configured id
    /// that names no rendezvous point falls back to the first one (warned about at start).
    pub fn rendezvous_point_for(&self, coverage: Coverage) -> &RendezvousPointConfig {
        let wanted = match coverage {
            Coverage::Jp => &self.coverage.jp_rendezvous_point,
            Coverage::G => &self.coverage.global_rendezvous_point,
        };
        self.rendezvous_point(wanted)
            .unwrap_or(&self.rendezvous_points[0])
    }

    /// Coverage of an API request, chosen by its Host header (port ignored).
    pub fn coverage_for_host(&self, host: Option<&str>) -> Coverage {
        let Some(host) = host else {
            return self.coverage.default;
        };
        let name = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        let name = name.to_ascii_lowercase();
        let matches = |globs: &[String]| {
            globs
                .iter()
                .any(|glob| glob_matches(&glob.to_ascii_lowercase(), &name))
        };
        if matches(&self.coverage.global_hosts) {
            Coverage::G
        } else if matches(&self.coverage.jp_hosts) {
            Coverage::Jp
        } else {
            self.coverage.default
        }
    }
}

/// One line per failing key, named as in the TOML file (`api.listen`), with where the value came from.
fn describe_figment(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".").to_ascii_lowercase();
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("key `{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn endpoint_is_host_port(endpoint: &str) -> bool {
    match endpoint.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob_matches(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_from(pairs: &[(&str, &str)]) -> Env {
        // figment's Env reads the real environment; a unique prefix per test keeps tests apart.
        let prefix = format!("ARCDTEST{}_", rand::random::<u32>());
        for (k, v) in pairs {
            std::env::set_var(format!("{prefix}{k}"), v);
        }
        Env::prefixed(&prefix).split("__")
    }

    #[test]
    fn defaults_validate() {
        let c = Config::load_with_env(None, env_from(&[])).expect("defaults are valid");
        assert_eq!(c.api.listen.port(), 8443);
        assert_eq!(c.rendezvous_points[0].id, "ap-northeast-1");
        assert!(c.api.tls);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("arcd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/x\"\n[api]\nlisten = \"127.0.0.1:9000\"\ntls = false\n",
        )
        .expect("write");
        let c = Config::load_with_env(Some(&file), env_from(&[("API__LISTEN", "127.0.0.1:9001")]))
            .expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert!(!c.api.tls);
        assert_eq!(c.api.listen.port(), 9001);
    }

    /// The TUN device refuses such names at start; config validation must refuse them first.
    #[test]
    fn tun_name_follows_the_interface_name_rule() {
        for bad in ["a b", "arc/0", "sixteen-chars-xx", ".."] {
            let err = Config::load_with_env(None, env_from(&[("TUN__NAME", bad)])).expect_err(bad);
            let text = err.to_string();
            assert!(text.contains("tun.name"), "{text}");
            assert!(text.contains("1 to 15 characters"), "{text}");
        }
        let ok =
            Config::load_with_env(None, env_from(&[("TUN__NAME", "arct_1.x")])).expect("valid");
        assert_eq!(ok.tun.name, "arct_1.x");
    }

    #[test]
    fn dataplane_workers_default_to_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = Config::load_with_env(None, env_from(&[])).expect("valid");
        assert_eq!(default.dataplane.workers, None);
        assert_eq!(default.dataplane.worker_count(), cores);
        let one =
            Config::load_with_env(None, env_from(&[("DATAPLANE__WORKERS", "1")])).expect("valid");
        assert_eq!(one.dataplane.worker_count(), 1);
        for bad in ["0", "257"] {
            let err = Config::load_with_env(None, env_from(&[("DATAPLANE__WORKERS", bad)]))
                .expect_err(bad);
            assert!(err.to_string().contains("dataplane.workers"), "{err}");
        }
    }

    #[test]
    fn handshake_queue_has_a_default_and_bounds() {
        use crate::dataplane::handshake_load::DEFAULT_HANDSHAKE_QUEUE;
        let default = Config::load_with_env(None, env_from(&[])).expect("valid");
        assert_eq!(
            default.dataplane.worker_options().handshake_queue,
            DEFAULT_HANDSHAKE_QUEUE
        );
        let small = Config::load_with_env(None, env_from(&[("DATAPLANE__HANDSHAKE_QUEUE", "64")]))
            .expect("valid");
        assert_eq!(small.dataplane.worker_options().handshake_queue, 64);
        for bad in ["0", "1", "1048577"] {
            let err = Config::load_with_env(None, env_from(&[("DATAPLANE__HANDSHAKE_QUEUE", bad)]))
                .expect_err(bad);
            assert!(
                err.to_string().contains("dataplane.handshake_queue"),
                "{err}"
            );
        }
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::load_with_env(None, env_from(&[("API__LISTEN", "not-an-address")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("api.listen"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("arcd.toml");
        std::fs::write(
            &file,
            "[[rendezvous_points]]\nid = \"mars-1\"\nlisten = \"0.0.0.0:1\"\nendpoint = \"h:1\"\npool = \"10.0.0.0/24\"\nallowed_ips = []\n",
        )
        .expect("write");
        let err = Config::load_with_env(Some(&file), env_from(&[])).expect_err("must fail");
        assert!(err.to_string().contains("rendezvous_points[0].id"), "{err}");
    }

    #[test]
    fn unrelated_arcd_variables_are_not_configuration() {
        std::env::set_var("ARCD_REQUIRE_E2E", "1");
        std::env::set_var("ARCD_TUN__MTU", "1400");
        let loaded = Config::load(None);
        std::env::remove_var("ARCD_REQUIRE_E2E");
        std::env::remove_var("ARCD_TUN__MTU");
        let config = loaded.expect("an unrelated ARCD_ variable is ignored");
        assert_eq!(config.tun.mtu, 1400, "real keys still apply");
    }

    #[test]
    fn rendezvous_points_need_only_an_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("arcd.toml");
        std::fs::write(
            &file,
            "[[rendezvous_points]]\nid = \"ap-northeast-1\"\n\n\
             [[rendezvous_points]]\nid = \"eu-central-1\"\nendpoint = \"rp.example.net:11011\"\n",
        )
        .expect("write");
        let c = Config::load_with_env(Some(&file), env_from(&[])).expect("an id is enough");
        let [tokyo, frankfurt] = &c.rendezvous_points[..] else {
            panic!("two rendezvous points: {:?}", c.rendezvous_points);
        };
        assert_eq!(tokyo.listen.to_string(), "0.0.0.0:11010");
        assert_eq!(tokyo.endpoint, "127.0.0.1:11010");
        assert_eq!(tokyo.pool.to_string(), "10.64.0.0/16");
        assert_eq!(tokyo.allowed_ips.len(), 1);
        assert_eq!(tokyo.allowed_ips[0].to_string(), "100.127.0.0/16");
        assert_eq!(frankfurt.listen.to_string(), "0.0.0.0:11011");
        assert_eq!(frankfurt.endpoint, "rp.example.net:11011");
        assert_eq!(frankfurt.pool.to_string(), "10.65.0.0/16");

        let c = Config::load_with_env(
            None,
            env_from(&[("RENDEZVOUS_POINTS", r#"[{id="us-west-2"}]"#)]),
        )
        .expect("the environment form too");
        assert_eq!(c.rendezvous_points[0].listen.port(), 11010);
        assert_eq!(c.rendezvous_points[0].pool.to_string(), "10.64.0.0/16");

        std::fs::write(
            &file,
            "[[rendezvous_points]]\nid = \"ap-northeast-1\"\nport = 1\n",
        )
        .expect("write");
        let err = Config::load_with_env(Some(&file), env_from(&[])).expect_err("unknown field");
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("arcd.toml");
        std::fs::write(&file, "[api]\nlsiten = \"127.0.0.1:1\"\n").expect("write");
        let err = Config::load_with_env(Some(&file), env_from(&[])).expect_err("must fail");
        assert!(err.to_string().contains("lsiten"), "{err}");
    }

    #[test]
    fn coverage_by_host() {
        let c = Config::default();
        assert_eq!(
            c.coverage_for_host(Some("g.api.example.net:8443")),
            Coverage::G
        );
        assert_eq!(c.coverage_for_host(Some("api.example.net")), Coverage::Jp);
        assert_eq!(c.coverage_for_host(None), Coverage::Jp);
        // A box whose default is global still maps the jp API host to jp.
        let mut g = Config::default();
        g.coverage.default = Coverage::G;
        assert_eq!(g.coverage_for_host(Some("api.example.net")), Coverage::Jp);
        assert_eq!(g.coverage_for_host(Some("G.API.example.net")), Coverage::G);
        assert_eq!(g.coverage_for_host(Some("arcd.lab:8443")), Coverage::G);
        assert_eq!(g.coverage_for_host(None), Coverage::G);
        // Global RP `eu-central-1` is not configured by default: falls back to the first one.
        assert_eq!(c.rendezvous_point_for(Coverage::G).id, "ap-northeast-1");
    }

    #[test]
    fn metrics_are_off_and_loopback_by_default() {
        let c = Config::load_with_env(None, env_from(&[])).expect("defaults are valid");
        assert!(!c.metrics.enabled);
        assert!(c.metrics.listen.ip().is_loopback());
        let c = Config::load_with_env(
            None,
            env_from(&[
                ("METRICS__ENABLED", "true"),
                ("METRICS__LISTEN", "0.0.0.0:9000"),
            ]),
        )
        .expect("an explicit address is allowed");
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen.port(), 9000);
    }

    #[test]
    fn globs() {
        assert!(glob_matches("g.api.*", "g.api.soracom.io"));
        assert!(!glob_matches("g.api.*", "api.soracom.io"));
        assert!(glob_matches("*.global.*", "x.global.y"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("a*b*c", "acb"));
    }
}
