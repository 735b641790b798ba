//! The fleet's devices on disk, and the two ways of making them:
//! - `keys`: N key pairs and addresses for a server configured with `wg setconf` (wireguard-go,
//!   gotatun), plus that configuration;
//! - `provision`: N virtual SIMs created through arcd's API (`POST /v1/sims`), each answer giving
//!   the device's private key, the server's key and the device's address.
//!
//! The devices file holds one device a line, `PRIVATE_KEY SERVER_PUBLIC_KEY ADDRESS` (keys in
//! WireGuard's base64). It holds private keys: it is written with mode 0600.

use std::io::{BufRead, BufWriter, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use arcd::wgkey;
use ipnet::Ipv4Net;
use tokio::sync::Semaphore;

use crate::fleet::DeviceSpec;

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} line {line}: expected PRIVATE_KEY SERVER_PUBLIC_KEY ADDRESS")]
    BadLine { path: String, line: usize },
    #[error("{network} has room for fewer than {count} devices")]
    NetworkTooSmall { network: Ipv4Net, count: usize },
    #[error("the server key file holds no WireGuard private key")]
    BadServerKey,
    #[error("arcd API: {0}")]
    Api(String),
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> DevicesError + '_ {
    move |error| DevicesError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Creates `path` readable by its owner only (it will hold private keys).
fn create_private(path: &Path) -> Result<BufWriter<std::fs::File>, DevicesError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    Ok(BufWriter::new(file))
}

pub fn read(path: &Path) -> Result<Vec<DeviceSpec>, DevicesError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut devices = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = || DevicesError::BadLine {
            path: path.display().to_string(),
            line: n + 1,
        };
        let mut fields = line.split_whitespace();
        let private_key = fields.next().and_then(wgkey::parse_key).ok_or_else(bad)?;
        let server_public = fields.next().and_then(wgkey::parse_key).ok_or_else(bad)?;
        let address = fields
            .next()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(bad)?;
        devices.push(DeviceSpec {
            private_key,
            server_public,
            address,
        });
    }
    Ok(devices)
}

fn write_line(
    out: &mut impl Write,
    private_key: &str,
    server_public: &str,
    address: Ipv4Addr,
) -> std::io::Result<()> {
    writeln!(out, "{private_key} {server_public} {address}")
}

/// N devices for a `wg setconf` server: addresses from the network's third host on (the second
/// is the server's own), and the server's configuration with one peer per device.
pub fn make_keys(
    count: usize,
    network: Ipv4Net,
    server_key_file: &Path,
    listen_port: u16,
    devices_path: &Path,
    conf_path: &Path,
) -> Result<(), DevicesError> {
    let server_private =
        std::fs::read_to_string(server_key_file).map_err(io_error(server_key_file))?;
    let server_public =
        wgkey::public_from_private(server_private.trim()).ok_or(DevicesError::BadServerKey)?;
    let addresses: Vec<Ipv4Addr> = network.hosts().skip(1).take(count).collect();
    if addresses.len() < count {
        return Err(DevicesError::NetworkTooSmall { network, count });
    }
    let mut devices = create_private(devices_path)?;
    let mut conf = create_private(conf_path)?;
    let written: std::io::Result<()> = (|| {
        writeln!(
            conf,
            "[Interface]\nPrivateKey = {}\nListenPort = {listen_port}",
            server_private.trim()
        )?;
        for address in addresses {
            let pair = wgkey::generate();
            write_line(&mut devices, &pair.private_key, &server_public, address)?;
            writeln!(
                conf,
                "\n[Peer]\nPublicKey = {}\nAllowedIPs = {address}/32",
                pair.public_key
            )?;
        }
        devices.flush()?;
        conf.flush()
    })();
    written.map_err(io_error(devices_path))
}

/// Signs in with `root-credentials.json` and creates `count` virtual SIMs, `concurrency` requests
/// in flight; writes each SIM's device.
pub async fn provision(
    api: &str,
    credentials: &Path,
    count: usize,
    concurrency: usize,
    devices_path: &Path,
) -> Result<(), DevicesError> {
    let api_error = |e: reqwest::Error| DevicesError::Api(e.to_string());
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(credentials).map_err(io_error(credentials))?)
            .map_err(|e| DevicesError::Api(format!("{}: {e}", credentials.display())))?;
    // reqwest is built without a TLS provider of its own; rustls' ring provider is the crate's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().build().map_err(api_error)?;
    let auth: serde_json::Value = client
        .post(format!("{api}/v1/auth"))
        .json(&serde_json::json!({"authKeyId": root["authKeyId"], "authKey": root["authKey"]}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(api_error)?
        .json()
        .await
        .map_err(api_error)?;
    let (Some(api_key), Some(token)) = (auth["apiKey"].as_str(), auth["token"].as_str()) else {
        return Err(DevicesError::Api("POST /v1/auth: no apiKey/token".into()));
    };
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = permits.clone().acquire_owned().await;
        let request = client
            .post(format!("{api}/v1/sims"))
            .header("X-Soracom-API-Key", api_key)
            .header("X-Soracom-Token", token)
            .json(&serde_json::json!({"type": "virtual", "subscription": "planArc01"}));
        tasks.push(tokio::spawn(async move {
            let answer = create_sim(request).await;
            drop(permit);
            answer
        }));
    }
    let mut devices = create_private(devices_path)?;
    for task in tasks {
        let device = task.await.map_err(|e| DevicesError::Api(e.to_string()))??;
        write_line(
            &mut devices,
            &wgkey::encode(&device.private_key),
            &wgkey::encode(&device.server_public),
            device.address,
        )
        .map_err(io_error(devices_path))?;
    }
    devices.flush().map_err(io_error(devices_path))
}

async fn create_sim(request: reqwest::RequestBuilder) -> Result<DeviceSpec, DevicesError> {
    let response = request
        .send()
        .await
        .map_err(|e| DevicesError::Api(e.to_string()))?;
    let status = response.status();
    let sim: serde_json::Value = response
        .json()
        .await
        .map_err(|e| DevicesError::Api(e.to_string()))?;
    if !status.is_success() {
        return Err(DevicesError::Api(format!("POST /v1/sims: {status} {sim}")));
    }
    DeviceSpec::of_created_sim(&sim).ok_or_else(|| {
        DevicesError::Api(format!(
            "POST /v1/sims: the answer lacks a key or an address (SIM {})",
            sim["simId"].as_str().unwrap_or_default()
        ))
    })
}
