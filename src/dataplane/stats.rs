//! Live per-peer state the data plane publishes for the API and `wg show`, kept in memory only
//! (never written to SQLite per packet).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::ids::{Imsi, RendezvousPointId};

/// Why packets were dropped, for operators (the metrics scrape) and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub malformed: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub cookie_replies: AtomicU64,
    pub wireguard_errors: AtomicU64,
    pub spoofed_source: AtomicU64,
    pub peer_to_peer_denied: AtomicU64,
    /// Packets from a device in a VPG whose internet gateway is off to a non-platform address.
    pub internet_denied: AtomicU64,
    pub no_route: AtomicU64,
    pub no_endpoint: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every drop reason with its counter, named as the metrics label (cookie replies are not
    /// drops: they answer handshakes under load and are counted as a handshake result).
    pub fn drop_reasons(&self) -> [(&'static str, &AtomicU64); 8] {
        [
            ("malformed", &self.malformed),
            ("unknown_peer", &self.unknown_peer),
            ("wireguard_error", &self.wireguard_errors),
            ("spoofed_source", &self.spoofed_source),
            ("peer_to_peer_denied", &self.peer_to_peer_denied),
            ("internet_denied", &self.internet_denied),
            ("no_route", &self.no_route),
            ("no_endpoint", &self.no_endpoint),
        ]
    }
}

/// Handshake messages (initiations from devices, responses to arcd's own initiations) by result.
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    pub completed: AtomicU64,
    /// From a key that has no session on this rendezvous point.
    pub unknown_peer: AtomicU64,
    /// A known peer whose message failed the noise checks (stale, replayed, wrong key).
    pub rejected: AtomicU64,
    /// Answered with a cookie: the worker was under load (its handshake queue at least half full
    /// within the last second) and the message carried no valid cookie for its source address.
    pub cookie_required: AtomicU64,
    /// Dropped unread because a worker's handshake queue was full (the device tries again).
    pub queue_full: AtomicU64,
    /// Dropped unread because it waited in the queue until its device had given up on it.
    pub stale: AtomicU64,
}

/// One rendezvous point's traffic: plain atomics so the packet path pays one relaxed add per
/// count, on a struct it already holds (no map lookup, no lock).
#[derive(Debug, Default)]
pub struct RpCounters {
    pub handshakes: HandshakeCounters,
    /// Decrypted packets from devices, and their IP bytes.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets encrypted to devices, and their IP bytes (before encryption).
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub drops: Counters,
}

impl RpCounters {
    pub fn received(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// One peer as seen by the data plane right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub imsi: Imsi,
    pub rp_id: RendezvousPointId,
    /// The device's WireGuard public key (32 raw bytes).
    pub public_key: [u8; 32],
    pub client_ip: Ipv4Addr,
    /// Where the device's latest authenticated packet came from.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    /// When the device's latest authenticated packet (data, keepalive or handshake) arrived.
    pub last_received: Option<SystemTime>,
    /// Bytes of decrypted payload received from / sent to the device.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A rendezvous point's listener as `wg show` describes an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSnapshot {
    pub rp_id: RendezvousPointId,
    /// Interface-like name used for the control socket, e.g. `arc-apne1`.
    pub name: String,
    pub listen_port: u16,
    /// What `wg show` lists as this interface's peers: one snapshot per session served.
    pub peer_snapshots: Vec<PeerSnapshot>,
}
