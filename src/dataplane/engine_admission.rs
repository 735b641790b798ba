//! What a rendezvous point lets in before any peer's `Tunn` sees a datagram: handshake messages
//! screened (mac1, and under load a cookie for the source address) before they are queued, mac1
//! checked again when they are handled, and the peer a packet is for.

use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};

use super::{Counters, Engine, Listener, Outbox, Outgoing, Peer, Screened};

impl Engine {
    /// Decides, before it is queued, what becomes of a handshake message (initiation or
    /// response) that arrived on `listener` from `from`: a bad mac1 is dropped; under load
    /// (`under_load`, see `handshake_load.rs`) a message without a valid cookie MAC (mac2) for
    /// its source address is answered with a cookie reply, costing microseconds instead of a key
    /// agreement. Only `Screened::Queue` messages are worth `handle_datagram`'s work.
    pub fn screen_handshake(
        &self,
        listener: usize,
        from: SocketAddr,
        datagram: &[u8],
        under_load: bool,
        buf: &mut [u8],
        out: &mut Outbox,
    ) -> Screened {
        let Some(rp) = self.listeners.get(listener) else {
            return Screened::Dropped;
        };
        let gate = if under_load {
            &rp.cookie_gate
        } else {
            &rp.unlimited
        };
        match gate.verify_packet(Some(from.ip()), datagram, buf) {
            Ok(_) => Screened::Queue,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                Counters::bump(&self.counters.cookie_replies);
                Counters::bump(&rp.counters.handshakes.cookie_required);
                out.push(Outgoing::Udp {
                    listener,
                    to: from,
                    data: cookie.to_vec(),
                });
                Screened::Answered
            }
            Err(_) => {
                self.dropped(listener, |c| &c.malformed);
                Screened::Dropped
            }
        }
    }

    /// The mac1 check of a rendezvous point (handshake messages only; cookies were decided by
    /// `screen_handshake`), before any peer lookup: the parsed packet, or `None` when dropped.
    pub(super) fn admit<'d>(
        &self,
        listener: usize,
        from: SocketAddr,
        datagram: &'d [u8],
        buf: &mut [u8],
    ) -> Option<Packet<'d>> {
        let rp = self.listeners.get(listener)?;
        match rp.unlimited.verify_packet(Some(from.ip()), datagram, buf) {
            Ok(packet) => Some(packet),
            Err(_) => {
                self.dropped(listener, |c| &c.malformed);
                None
            }
        }
    }

    /// The peer a packet is for: an initiation names its sender's static key (found by a partial
    /// handshake with the listener's key); every other message names our receiver index.
    pub(super) fn peer_of_packet(&self, rp: &Listener, packet: Packet<'_>) -> Option<Arc<Peer>> {
        let receiver_idx = match packet {
            Packet::HandshakeInit(init) => {
                // The key agreement before the index is read: a writer (a peer change) must not
                // wait for it, nor every worker behind that writer.
                let half =
                    parse_handshake_anon(&rp.static_private, &rp.static_public, &init).ok()?;
                let peer_index = self.peer_index.read();
                return peer_index.by_key.get(&half.peer_static_public).cloned();
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        // boringtun keeps the session number in the low 8 bits of the index.
        self.peer_index
            .read()
            .by_index
            .get(&(receiver_idx >> 8))
            .cloned()
    }
}
