//! The WireGuard packet path, free of I/O: datagrams, TUN packets and timer ticks go in, packets to
//! send come out (`Outbox`). One `Tunn` (boringtun's noise state machine) per peer; peers are found
//! in O(1) by receiver index, by static public key, by client address and by IMSI in the one
//! `PeerIndex` (peer_index.rs), which also answers the services' "who has this address".

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::{Mutex, RwLock};

use super::packet_buffers;
pub use super::peer_index::Applied;
use super::peer_index::{Peer, PeerIndex, PeerState};
use super::stats::PeerSnapshot;
pub use super::stats::{Counters, HandshakeCounters, RpCounters};
use crate::ids::{Imsi, RendezvousPointId, VpgId};
use crate::store::vpgs::RunningVpg;
use crate::store::{ActiveSession, PeerChange};

/// Largest datagram or packet handled, plus WireGuard's overhead.
pub const BUFFER_SIZE: usize = 65_536 + 64;

/// How often an active peer's WireGuard timers run (keepalive, rekey, expiry). boringtun rounds
/// its timers to whole seconds, so ticking faster only costs CPU per connected device.
pub const TIMER_PERIOD: Duration = Duration::from_secs(1);

/// WireGuard message type of a cookie reply.
const COOKIE_REPLY_TYPE: u8 = 3;

/// A peer with no traffic for this long stops being ticked until its next packet.
pub const IDLE_AFTER: Duration = Duration::from_secs(600);

/// The platform services' addresses (100.127.0.0/16, inside RFC 6598 shared space): always
/// reachable from a device, even in a VPG whose internet gateway is off.
pub const PLATFORM_NETWORK: (Ipv4Addr, u32) = (Ipv4Addr::new(100, 127, 0, 0), 16);

fn is_platform_address(ip: Ipv4Addr) -> bool {
    let (network, prefix) = PLATFORM_NETWORK;
    u32::from(ip) >> (32 - prefix) == u32::from(network) >> (32 - prefix)
}

/// Least time between two warnings about one peer's spoofed packets.
const SPOOF_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// A device counts as online while its last handshake is younger than this (WireGuard's
/// REJECT_AFTER_TIME: no session outlives it without a new handshake).
pub const ONLINE_WINDOW: Duration = Duration::from_secs(180);

/// One rendezvous point's WireGuard identity.
pub struct Listener {
    pub rp_id: RendezvousPointId,
    static_private: StaticSecret,
    static_public: PublicKey,
    /// Checks mac1 and demands a valid mac2 (a cookie) of every handshake message: used only
    /// while the rendezvous point is under load (`Engine::screen_handshake`). A limit of 0 makes
    /// boringtun's limiter consider every message over it.
    cookie_gate: Arc<RateLimiter>,
    /// Checks mac1 only, never demanding a cookie: the check when not under load, and the limiter
    /// given to each peer's `Tunn` (which checks mac1 again on its own), so cookies are decided in
    /// one place.
    unlimited: Arc<RateLimiter>,
    /// This rendezvous point's traffic, handshakes and drops (read by the metrics scrape).
    pub counters: RpCounters,
}

impl Listener {
    pub fn new(rp_id: &RendezvousPointId, private_key: [u8; 32]) -> Listener {
        let static_private = StaticSecret::from(private_key);
        let static_public = PublicKey::from(&static_private);
        Listener {
            rp_id: rp_id.clone(),
            cookie_gate: Arc::new(RateLimiter::new(&static_public, 0)),
            unlimited: Arc::new(RateLimiter::new(&static_public, u64::MAX)),
            counters: RpCounters::default(),
            static_private,
            static_public,
        }
    }
}

/// What a VPG lets its devices do.
#[derive(Debug, Clone, Copy)]
struct VpgRules {
    device_to_device: bool,
    internet_gateway: bool,
}

/// What `Engine::screen_handshake` made of a handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    /// Worth a handshake: queue it for `Engine::handle_datagram`.
    Queue,
    /// Answered with a cookie reply (in the outbox): the rendezvous point is under load.
    Answered,
    /// Malformed or a bad mac1: dropped and counted.
    Dropped,
}

/// What a datagram turned out to be once its peer's `Tunn` had it.
enum Decapsulated {
    /// A packet from the device, source checked, for `route_from_device`.
    ForDevice(Vec<u8>),
    /// Passed the noise checks (a handshake, a keepalive, a dropped inner packet): the endpoint
    /// follows it.
    Authenticated,
    /// Failed them, or was answered only with a cookie reply.
    NotAuthenticated,
}

/// Where a packet goes: out of a rendezvous point's UDP socket, or into the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Udp {
        listener: usize,
        to: SocketAddr,
        data: Vec<u8>,
    },
    Tun(Vec<u8>),
}

pub type Outbox = Vec<Outgoing>;

pub struct Engine {
    listeners: Vec<Listener>,
    peer_index: RwLock<PeerIndex>,
    /// Peers due for a timer tick, by receiver index; entries of replaced peers are skipped.
    timers: Mutex<BinaryHeap<Reverse<(Instant, u32)>>>,
    /// What each running VPG allows its devices; a device outside any VPG reaches the TUN side
    /// and no other device.
    vpgs: RwLock<HashMap<VpgId, VpgRules>>,
    /// Drops of every rendezvous point together, plus those of TUN packets (which belong to none).
    pub counters: Counters,
    /// Drops of packets read from the TUN device that reach no rendezvous point.
    pub tun_drops: Counters,
}

impl Engine {
    pub fn new(listeners: Vec<Listener>) -> Engine {
        Engine {
            listeners,
            peer_index: RwLock::new(PeerIndex::default()),
            timers: Mutex::new(BinaryHeap::new()),
            vpgs: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            tun_drops: Counters::default(),
        }
    }

    /// Counts a dropped packet of rendezvous point `listener` (and in the engine's totals).
    fn dropped(&self, listener: usize, reason: fn(&Counters) -> &AtomicU64) {
        Counters::bump(reason(&self.counters));
        if let Some(rp) = self.listeners.get(listener) {
            Counters::bump(reason(&rp.counters.drops));
        }
    }

    /// Counts a dropped packet read from the TUN device (it belongs to no rendezvous point).
    fn dropped_from_tun(&self, reason: fn(&Counters) -> &AtomicU64) {
        Counters::bump(reason(&self.counters));
        Counters::bump(reason(&self.tun_drops));
    }

    pub fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter()
    }

    /// Turns device-to-device traffic inside one VPG on or off.
    /// Replaces the rules of every VPG with those of the running VPGs given (the whole set, read
    /// in the transaction that changed one, so a terminated VPG simply disappears).
    pub fn set_vpgs(&self, running: &[RunningVpg]) {
        let rules = running
            .iter()
            .map(|vpg| {
                (
                    vpg.vpg_id.clone(),
                    VpgRules {
                        device_to_device: vpg.device_to_device,
                        internet_gateway: vpg.use_internet_gateway,
                    },
                )
            })
            .collect();
        *self.vpgs.write() = rules;
    }

    pub fn allows_device_to_device(&self, vpg_id: &VpgId) -> bool {
        self.vpgs
            .read()
            .get(vpg_id)
            .is_some_and(|rules| rules.device_to_device)
    }

    /// Devices reach each other only inside one VPG whose device-to-device switch is on.
    fn peer_to_peer_allowed(&self, from: &Peer, to: &Peer) -> bool {
        // Copies, not two guards at once: `from` and `to` may be the same peer, and a second
        // read of a lock this thread holds can deadlock behind a waiting writer.
        let from_vpg = from.session.read().vpg_id.clone();
        let to_vpg = to.session.read().vpg_id.clone();
        match (from_vpg.as_ref(), to_vpg.as_ref()) {
            (Some(a), Some(b)) => a == b && self.allows_device_to_device(a),
            _ => false,
        }
    }

    /// Whether a device's packet for `destination` (not another device) may enter the TUN side:
    /// always outside a VPG and for platform addresses; otherwise as the VPG's internet gateway.
    fn egress_allowed(&self, from: &Peer, destination: Ipv4Addr) -> bool {
        if is_platform_address(destination) {
            return true;
        }
        let session = from.session.read();
        match session.vpg_id.as_ref() {
            None => true,
            // A VPG unknown here was terminated after the session was made: no rules, no limits
            // beyond what the session had (it cannot outlive the next re-creation).
            Some(id) => self
                .vpgs
                .read()
                .get(id)
                .is_none_or(|rules| rules.internet_gateway),
        }
    }

    fn listener_of(&self, rp_id: &RendezvousPointId) -> Option<usize> {
        self.listeners.iter().position(|l| l.rp_id == *rp_id)
    }

    /// Applies a change the store committed: classified against the peer the index holds for the
    /// IMSI, then applied (see [`Engine::apply`]). Changes come from one task, in commit order,
    /// so nothing else changes the index between the two steps.
    pub fn apply_change(&self, change: PeerChange, now: Instant, out: &mut Outbox) -> Applied {
        let applied = self.classify(change);
        self.apply(&applied, now, out);
        applied
    }

    fn classify(&self, change: PeerChange) -> Applied {
        let peer_index = self.peer_index.read();
        match change {
            PeerChange::Upsert(session) => match peer_index.by_imsi.get(&session.imsi) {
                None => Applied::Added(session),
                Some(peer) if peer.session_id != session.session_id => Applied::NewSession(session),
                Some(_) => Applied::Updated(session),
            },
            PeerChange::Remove { imsi, .. } if peer_index.by_imsi.contains_key(&imsi) => {
                Applied::Removed(imsi)
            }
            PeerChange::Remove { imsi, .. } => Applied::Unknown(imsi),
        }
    }

    /// The store's session (as last applied) of the peer with this IMSI.
    pub fn session(&self, imsi: &Imsi) -> Option<ActiveSession> {
        let peer = self.peer_index.read().by_imsi.get(imsi).cloned()?;
        let session = peer.session.read().clone();
        Some(session)
    }

    /// The session whose device has this tunnel address: who is calling a platform service.
    pub fn session_by_client_ip(&self, ip: Ipv4Addr) -> Option<ActiveSession> {
        let peer = self.peer_index.read().by_ip.get(&ip).cloned()?;
        let session = peer.session.read().clone();
        Some(session)
    }

    /// The session whose device has this public key (WireGuard base64).
    pub fn session_by_public_key(&self, key: &str) -> Option<ActiveSession> {
        let key = crate::wgkey::parse_key(key)?;
        let peer = self.peer_index.read().by_key.get(&key).cloned()?;
        let session = peer.session.read().clone();
        Some(session)
    }

    /// Applies a committed change. A new session replaces the peer's WireGuard state; when the
    /// device's key is unchanged and its endpoint known, the server starts the new handshake
    /// itself so traffic resumes without waiting for the device's rekey timeout.
    pub fn apply(&self, applied: &Applied, now: Instant, out: &mut Outbox) {
        match applied {
            Applied::Added(session) | Applied::NewSession(session) => {
                let previous = self.remove(&session.imsi);
                let Some(peer) = self.insert(session, previous.as_deref(), now) else {
                    return;
                };
                let carried_endpoint = previous
                    .as_ref()
                    .filter(|old| old.public_key == peer.public_key)
                    .and_then(|old| old.state.lock().endpoint);
                if let Some(endpoint) = carried_endpoint {
                    self.initiate(&peer, endpoint, now, out);
                }
            }
            Applied::Updated(session) => {
                // Attributes only: the WireGuard state stays.
                if let Some(peer) = self.peer_index.read().by_imsi.get(&session.imsi) {
                    *peer.session.write() = session.clone();
                }
            }
            Applied::Removed(imsi) => {
                self.remove(imsi);
            }
            Applied::Unknown(_) => {}
        }
    }

    /// Sends a handshake initiation to `endpoint` as the peer's endpoint and schedules the peer's
    /// timers, which retry it (WireGuard's REKEY_TIMEOUT) until the device answers or the attempt
    /// times out. Either side may initiate: arcd holds its own private key and the device's public
    /// key, and the device knows arcd's endpoint, so the device answers as it would a rekey.
    fn initiate(&self, peer: &Peer, endpoint: SocketAddr, now: Instant, out: &mut Outbox) {
        let mut state = peer.state.lock();
        state.endpoint = Some(endpoint);
        let mut buf = vec![0u8; 256];
        if let TunnResult::WriteToNetwork(packet) = self
            .tunn(peer, &mut state)
            .format_handshake_initiation(&mut buf, false)
        {
            out.push(Outgoing::Udp {
                listener: peer.listener,
                to: endpoint,
                data: packet.to_vec(),
            });
        }
        drop(state);
        self.schedule(peer, now);
    }

    fn insert(
        &self,
        session: &ActiveSession,
        previous: Option<&Peer>,
        now: Instant,
    ) -> Option<Arc<Peer>> {
        let Some(listener_index) = self.listener_of(&session.rp_id) else {
            tracing::warn!(imsi = %session.imsi, rp = %session.rp_id, "session on an unknown rendezvous point; not served");
            return None;
        };
        let Some(public_key) = crate::wgkey::parse_key(&session.client_public_key) else {
            tracing::warn!(imsi = %session.imsi, "session has no valid client key; not served");
            return None;
        };
        let mut peer_index = self.peer_index.write();
        let index = loop {
            // 24-bit indexes; a fresh one per session so packets of the old session find nothing.
            let candidate = rand::random::<u32>() & 0x00ff_ffff;
            if !peer_index.by_index.contains_key(&candidate)
                && previous.is_none_or(|p| p.index != candidate)
            {
                break candidate;
            }
        };
        let peer = Arc::new(Peer {
            imsi: session.imsi.clone(),
            session_id: session.session_id.clone(),
            client_ip: session.client_ip,
            public_key,
            listener: listener_index,
            index,
            session: RwLock::new(session.clone()),
            state: Mutex::new(PeerState::new(now)),
        });
        peer_index.insert(&peer);
        Some(peer)
    }

    fn tunn<'s>(&self, peer: &Peer, state: &'s mut PeerState) -> &'s mut Tunn {
        state.tunn.get_or_insert_with(|| {
            let listener = &self.listeners[peer.listener];
            Box::new(Tunn::new(
                listener.static_private.clone(),
                PublicKey::from(peer.public_key),
                None,
                None,
                peer.index,
                Some(listener.unlimited.clone()),
            ))
        })
    }

    fn remove(&self, imsi: &Imsi) -> Option<Arc<Peer>> {
        self.peer_index.write().remove(imsi)
    }

    pub fn peer_count(&self) -> usize {
        self.peer_index.read().by_imsi.len()
    }

    /// A datagram that arrived on `listener` from `from` (a handshake message only after
    /// `screen_handshake` let it through): mac1 checked, matched to its peer, decrypted by the
    /// peer's `Tunn`; what it carried goes on to another device or the TUN (`route_from_device`).
    pub fn handle_datagram(
        &self,
        listener: usize,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        buf: &mut [u8],
        out: &mut Outbox,
    ) {
        let Some(rp) = self.listeners.get(listener) else {
            return;
        };
        let Some(packet) = self.admit(listener, from, datagram, buf) else {
            return;
        };
        let handshake = matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        );
        let Some(peer) = self
            .peer_of_packet(rp, packet)
            .filter(|p| p.listener == listener)
        else {
            self.dropped(listener, |c| &c.unknown_peer);
            if handshake {
                Counters::bump(&rp.counters.handshakes.unknown_peer);
            }
            return;
        };
        let mut state = peer.state.lock();
        let decrypted = self.decapsulate(&peer, &mut state, from, datagram, now, buf, out);
        let authenticated = match decrypted {
            Decapsulated::ForDevice(packet) => {
                state.endpoint = Some(from);
                state.last_activity = now;
                state.last_received = Some(now);
                let unscheduled = Self::claim_timer(&mut state);
                drop(state);
                self.route_from_device(&peer, packet, now, buf, out);
                if unscheduled {
                    self.push_timer(&peer, now);
                }
                return;
            }
            Decapsulated::Authenticated => true,
            Decapsulated::NotAuthenticated => false,
        };
        if handshake {
            let handshakes = &rp.counters.handshakes;
            Counters::bump(if authenticated {
                &handshakes.completed
            } else {
                &handshakes.rejected
            });
        }
        let unscheduled = authenticated && {
            // Roaming: the endpoint follows the latest authenticated packet.
            state.endpoint = Some(from);
            state.last_activity = now;
            state.last_received = Some(now);
            Self::claim_timer(&mut state)
        };
        drop(state);
        if unscheduled {
            self.push_timer(&peer, now);
        }
    }

    /// Runs the datagram through the peer's `Tunn`, sending what it answers (handshake responses,
    /// queued packets) back to `from`.
    #[allow(clippy::too_many_arguments)]
    fn decapsulate(
        &self,
        peer: &Peer,
        state: &mut PeerState,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        buf: &mut [u8],
        out: &mut Outbox,
    ) -> Decapsulated {
        let listener = peer.listener;
        let mut result = self
            .tunn(peer, state)
            .decapsulate(Some(from.ip()), datagram, buf);
        let mut authenticated = false;
        loop {
            match result {
                TunnResult::Done => return Decapsulated::Authenticated,
                TunnResult::Err(e) => {
                    if !matches!(e, WireGuardError::DuplicateCounter) {
                        self.dropped(listener, |c| &c.wireguard_errors);
                    }
                    break;
                }
                TunnResult::WriteToNetwork(packet) => {
                    // A cookie reply proves nothing about the sender; anything else answers a
                    // packet that passed the noise checks.
                    authenticated |= packet.first() != Some(&COOKIE_REPLY_TYPE);
                    out.push(Outgoing::Udp {
                        listener,
                        to: from,
                        data: packet.to_vec(),
                    });
                    // Queued packets (sent before the session existed) go out next.
                    result = self.tunn(peer, state).decapsulate(None, &[], buf);
                }
                TunnResult::WriteToTunnelV4(packet, source) => {
                    if source == peer.client_ip {
                        if let Some(rp) = self.listeners.get(listener) {
                            rp.counters.received(packet.len());
                        }
                        return Decapsulated::ForDevice(packet_buffers::copy_of(packet));
                    }
                    self.dropped(listener, |c| &c.spoofed_source);
                    warn_spoofed(peer, state, source, now);
                    return Decapsulated::Authenticated;
                }
                TunnResult::WriteToTunnelV6(..) => {
                    self.dropped(listener, |c| &c.no_route);
                    return Decapsulated::Authenticated;
                }
            }
        }
        if authenticated {
            Decapsulated::Authenticated
        } else {
            Decapsulated::NotAuthenticated
        }
    }

    /// A decrypted packet from a device: to another device when policy allows, else to the TUN.
    fn route_from_device(
        &self,
        from: &Peer,
        packet: Vec<u8>,
        now: Instant,
        buf: &mut [u8],
        out: &mut Outbox,
    ) {
        let Some(destination) = ipv4_destination(&packet) else {
            self.dropped(from.listener, |c| &c.malformed);
            return;
        };
        let target = self.peer_index.read().by_ip.get(&destination).cloned();
        match target {
            Some(target) if self.peer_to_peer_allowed(from, &target) => {
                self.send_to_peer(&target, &packet, now, buf, out);
                packet_buffers::recycle(packet);
            }
            Some(_) => self.dropped(from.listener, |c| &c.peer_to_peer_denied),
            None if self.egress_allowed(from, destination) => out.push(Outgoing::Tun(packet)),
            None => self.dropped(from.listener, |c| &c.internet_denied),
        }
    }

    /// A packet read from the TUN device: encrypted to the peer owning its destination.
    pub fn handle_tun_packet(&self, packet: &[u8], now: Instant, buf: &mut [u8], out: &mut Outbox) {
        let Some(destination) = ipv4_destination(packet) else {
            self.dropped_from_tun(|c| &c.malformed);
            return;
        };
        let target = self.peer_index.read().by_ip.get(&destination).cloned();
        match target {
            Some(target) => self.send_to_peer(&target, packet, now, buf, out),
            None => self.dropped_from_tun(|c| &c.no_route),
        }
    }

    fn send_to_peer(
        &self,
        peer: &Arc<Peer>,
        packet: &[u8],
        now: Instant,
        buf: &mut [u8],
        out: &mut Outbox,
    ) {
        let mut state = peer.state.lock();
        let Some(endpoint) = state.endpoint else {
            self.dropped(peer.listener, |c| &c.no_endpoint);
            return;
        };
        match self.tunn(peer, &mut state).encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(data) => {
                if let Some(rp) = self.listeners.get(peer.listener) {
                    rp.counters.sent(packet.len());
                }
                out.push(Outgoing::Udp {
                    listener: peer.listener,
                    to: endpoint,
                    data: packet_buffers::copy_of(data),
                });
                state.last_activity = now;
            }
            TunnResult::Err(_) => self.dropped(peer.listener, |c| &c.wireguard_errors),
            _ => {}
        }
        let unscheduled = Self::claim_timer(&mut state);
        drop(state);
        if unscheduled {
            self.push_timer(peer, now);
        }
    }
}

/// Logs a device packet whose inner source is not the device's address, at most once per
/// `SPOOF_WARNING_INTERVAL` per peer, so a misbehaving device cannot flood the log.
fn warn_spoofed(peer: &Peer, state: &mut PeerState, claimed_source: Ipv4Addr, now: Instant) {
    let quiet = state
        .last_spoof_warning
        .is_some_and(|at| now.duration_since(at) < SPOOF_WARNING_INTERVAL);
    if !quiet {
        state.last_spoof_warning = Some(now);
        tracing::warn!(
            imsi = %peer.imsi,
            client_ip = %peer.client_ip,
            %claimed_source,
            "dropped a device packet whose source is not its own address"
        );
    }
}

fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    match Tunn::dst_address(packet)? {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

#[path = "engine_resume.rs"]
mod resume;
pub use resume::Resumed;

#[path = "engine_live.rs"]
mod live;

#[path = "engine_admission.rs"]
mod admission;

#[path = "engine_timers.rs"]
mod timers;

#[path = "engine_snapshots.rs"]
mod snapshots;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
