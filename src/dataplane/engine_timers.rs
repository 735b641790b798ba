//! WireGuard's timers (keepalive, rekey, expiry) for the peers with recent traffic: only they are
//! on the heap, each due every `TIMER_PERIOD` until it has been idle for `IDLE_AFTER`, so the cost
//! follows traffic, not the number of sessions.

use std::cmp::Reverse;
use std::time::Instant;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;

use super::{Engine, Outbox, Outgoing, Peer, PeerState, IDLE_AFTER, TIMER_PERIOD};

impl Engine {
    pub(super) fn schedule(&self, peer: &Peer, now: Instant) {
        let unscheduled = Self::claim_timer(&mut peer.state.lock());
        if unscheduled {
            self.push_timer(peer, now);
        }
    }

    /// Marks the peer's timer as scheduled; true when it was not, and the caller must then
    /// `push_timer` (after releasing the peer's lock). Per packet this is one flag read under the
    /// lock the packet already holds, not a second lock of the peer.
    pub(super) fn claim_timer(state: &mut PeerState) -> bool {
        !std::mem::replace(&mut state.timer_scheduled, true)
    }

    pub(super) fn push_timer(&self, peer: &Peer, now: Instant) {
        self.timers
            .lock()
            .push(Reverse((now + TIMER_PERIOD, peer.index)));
    }

    /// When the next timer is due, if any peer is active.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.lock().peek().map(|Reverse((at, _))| *at)
    }

    /// Runs WireGuard timers of the peers that are due. Only active peers are ever scheduled, so
    /// the cost follows traffic, not the number of sessions.
    pub fn run_timers(&self, now: Instant, buf: &mut [u8], out: &mut Outbox) {
        loop {
            let due = {
                let mut timers = self.timers.lock();
                match timers.peek() {
                    Some(Reverse((at, index))) if *at <= now => {
                        let index = *index;
                        timers.pop();
                        index
                    }
                    _ => break,
                }
            };
            let Some(peer) = self.peer_index.read().by_index.get(&due).cloned() else {
                continue;
            };
            let mut state = peer.state.lock();
            state.timer_scheduled = false;
            let endpoint = state.endpoint;
            let Some(tunn) = state.tunn.as_mut() else {
                continue;
            };
            match tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(packet) => match endpoint {
                    Some(to) => out.push(Outgoing::Udp {
                        listener: peer.listener,
                        to,
                        data: packet.to_vec(),
                    }),
                    None => self.dropped(peer.listener, |c| &c.no_endpoint),
                },
                // Routine: the device stopped handshaking (gone, or asleep). boringtun's own ERROR
                // line for this is filtered out (see crate::logging).
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    tracing::debug!(imsi = %peer.imsi, "session keys expired; waiting for the device to handshake again")
                }
                _ => {}
            }
            let active = now.duration_since(state.last_activity) < IDLE_AFTER;
            drop(state);
            if active {
                self.schedule(&peer, now);
            }
        }
    }
}
