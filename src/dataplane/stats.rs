//! Live per-peer state the data plane publishes for the API and `wg show`, kept in memory only
//! (never written to SQLite per packet).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

/// One peer as seen by the data plane right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub imsi: String,
    pub rp_id: String,
    /// The device's WireGuard public key (32 raw bytes).
    pub public_key: [u8; 32],
    pub client_ip: Ipv4Addr,
    /// Where the device's latest authenticated packet came from.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    /// Bytes of decrypted payload received from / sent to the device.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A rendezvous point's listener as `wg show` describes an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSnapshot {
    pub rp_id: String,
    /// Interface-like name used for the control socket, e.g. `arc-apne1`.
    pub name: String,
    pub listen_port: u16,
    pub peers: Vec<PeerSnapshot>,
}
