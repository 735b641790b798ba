//! The data plane's one index of peers: every active session the engine serves, reachable in O(1)
//! by what a packet or a change carries: receiver index (data, responses, cookie replies), the
//! device's static public key (handshake initiations), its client address (packets from the TUN,
//! and the services' caller lookup) and its IMSI (changes from the API, snapshots).
//!
//! It holds the engine's per-peer WireGuard state and the store's session as last applied, so
//! there is no second table to keep in step: the services read the session from here
//! (`Engine::session_by_client_ip`), the engine its `Tunn` and endpoint.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::Tunn;
use parking_lot::{Mutex, RwLock};

use crate::ids::Imsi;
use crate::store::ActiveSession;

/// What applying one change did, for logging and for the engine to react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Added(ActiveSession),
    /// The session id changed: the engine must drop the peer's WireGuard state.
    NewSession(ActiveSession),
    /// The same session with new attributes (group, VPG): the WireGuard state stays.
    Updated(ActiveSession),
    Removed(Imsi),
    Unknown(Imsi),
}

pub(super) struct Peer {
    pub(super) imsi: Imsi,
    /// The store's session this peer serves: saved endpoints are tied to it.
    pub(super) session_id: String,
    pub(super) client_ip: Ipv4Addr,
    pub(super) public_key: [u8; 32],
    pub(super) listener: usize,
    /// Local receiver index (24 bits; boringtun puts the session number in the low 8).
    pub(super) index: u32,
    /// The store's session as last applied. Only its attributes change without a new session
    /// (a group change can move the SIM into or out of a VPG's policy); the VPG id is read from
    /// here per forwarded packet. The identity above (IMSI, session, key, address) never changes:
    /// the store gives a new session id to a new key or address.
    pub(super) session: RwLock<ActiveSession>,
    pub(super) state: Mutex<PeerState>,
}

pub(super) struct PeerState {
    /// Made on first use, and boxed: a `Tunn` is about 11 KB, which 100,000 loaded sessions that
    /// never handshake must not pay.
    pub(super) tunn: Option<Box<Tunn>>,
    pub(super) endpoint: Option<SocketAddr>,
    /// The endpoint as last written to the store (see `unsaved_endpoints`).
    pub(super) saved_endpoint: Option<SocketAddr>,
    pub(super) last_activity: Instant,
    /// When the device's latest authenticated packet arrived (keepalives included): "last seen",
    /// finer than the last handshake, which a device repeats only every 2 minutes.
    pub(super) last_received: Option<Instant>,
    pub(super) timer_scheduled: bool,
    /// When a spoofed source was last logged for this peer: one warning a minute at most, so a
    /// misbehaving device cannot flood the log.
    pub(super) last_spoof_warning: Option<Instant>,
}

impl PeerState {
    pub(super) fn new(now: Instant) -> PeerState {
        PeerState {
            tunn: None,
            endpoint: None,
            saved_endpoint: None,
            last_activity: now,
            last_received: None,
            timer_scheduled: false,
            last_spoof_warning: None,
        }
    }
}

/// Every peer under each of its four keys.
#[derive(Default)]
pub(super) struct PeerIndex {
    pub(super) by_index: HashMap<u32, Arc<Peer>>,
    pub(super) by_key: HashMap<[u8; 32], Arc<Peer>>,
    pub(super) by_ip: HashMap<Ipv4Addr, Arc<Peer>>,
    pub(super) by_imsi: HashMap<Imsi, Arc<Peer>>,
}

impl PeerIndex {
    pub(super) fn insert(&mut self, peer: &Arc<Peer>) {
        self.by_index.insert(peer.index, peer.clone());
        self.by_key.insert(peer.public_key, peer.clone());
        self.by_ip.insert(peer.client_ip, peer.clone());
        self.by_imsi.insert(peer.imsi.clone(), peer.clone());
    }

    /// Takes the IMSI's peer out of every index. A key or address entry that already belongs to
    /// another peer (after a move) stays with that peer.
    pub(super) fn remove(&mut self, imsi: &Imsi) -> Option<Arc<Peer>> {
        let old = self.by_imsi.remove(imsi)?;
        self.by_index.remove(&old.index);
        if self
            .by_key
            .get(&old.public_key)
            .is_some_and(|p| p.index == old.index)
        {
            self.by_key.remove(&old.public_key);
        }
        if self
            .by_ip
            .get(&old.client_ip)
            .is_some_and(|p| p.index == old.index)
        {
            self.by_ip.remove(&old.client_ip);
        }
        Some(old)
    }
}
