//! When a rendezvous point demands cookies: WireGuard's "under load" rule (the Linux module's and
//! wireguard-go's), judged by the backlog of a worker's handshake queue instead of a fixed number
//! of handshakes per second.
//!
//! A fixed rate (boringtun's default: 100 a second) answers almost a whole reconnecting fleet with
//! cookies, and a WireGuard device that got a cookie waits REKEY_TIMEOUT (5 s) before it tries
//! again: every storm then takes at least 5 s even when the cores could have served it at once.
//! The backlog says what the rate cannot: whether the handshakes already accepted will be answered
//! before their devices give up on them. Below the threshold a message is queued as it is; at or
//! above it (and for one second after, so a flood cannot slip through between two drains) a
//! message must carry a cookie for its source address, which a spoofed source cannot have.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a rendezvous point stays under load after its backlog was last over the threshold.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

/// Handshake messages a worker queues by default. A first handshake costs the server about
/// 300 µs (docs/BENCHMARKS.md), so a full queue is about 5 s of one core: what can still be
/// answered before the devices' REKEY_TIMEOUT on a core shared with other work. Messages without
/// a cookie are queued only while the queue is under half full; messages carrying one always are
/// (a full queue then drops its oldest, see `handshake_queue.rs`).
pub const DEFAULT_HANDSHAKE_QUEUE: usize = 16_384;

/// A queued handshake older than this is dropped unhandled: its device has given up on it
/// (WireGuard's REKEY_TIMEOUT) and sent a new one, so answering it would be wasted work.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// One worker's load state; shared by that worker's receive loops (one per rendezvous point).
#[derive(Debug)]
pub struct HandshakeLoad {
    /// Backlog at which cookies are demanded.
    threshold: usize,
    epoch: Instant,
    /// Milliseconds since `epoch` until which the worker counts as under load.
    until_ms: AtomicU64,
}

impl HandshakeLoad {
    /// The rule for a queue of `capacity` messages: under load from half of it.
    pub fn new(capacity: usize, epoch: Instant) -> HandshakeLoad {
        HandshakeLoad {
            threshold: (capacity / 2).max(1),
            epoch,
            until_ms: AtomicU64::new(0),
        }
    }

    /// Whether a handshake message arriving at `now`, with `backlog` messages already queued,
    /// must carry a cookie.
    pub fn under_load(&self, backlog: usize, now: Instant) -> bool {
        let now_ms = self.millis(now);
        if backlog >= self.threshold {
            let until = now_ms + UNDER_LOAD_HOLD.as_millis() as u64;
            self.until_ms.fetch_max(until, Ordering::Relaxed);
            return true;
        }
        now_ms < self.until_ms.load(Ordering::Relaxed)
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_from_half_the_queue_and_for_a_second_after() {
        let start = Instant::now();
        let load = HandshakeLoad::new(64, start);
        assert!(!load.under_load(0, start), "an empty queue is not load");
        assert!(!load.under_load(31, start), "below half the queue");
        let flooded = start + Duration::from_millis(10);
        assert!(load.under_load(32, flooded), "half the queue is load");
        let drained = flooded + Duration::from_millis(500);
        assert!(
            load.under_load(0, drained),
            "still under load within a second of the last backlog"
        );
        assert!(
            !load.under_load(0, flooded + UNDER_LOAD_HOLD),
            "the hold ends a second after the backlog"
        );
        assert!(
            load.under_load(40, flooded + Duration::from_secs(3)),
            "a new backlog engages it again"
        );
    }

    #[test]
    fn an_earlier_observation_does_not_shorten_the_hold() {
        let start = Instant::now();
        let load = HandshakeLoad::new(8, start);
        let late = start + Duration::from_secs(2);
        assert!(load.under_load(4, late));
        // Another receive loop of the worker, reading `now` a little earlier, sees the backlog too.
        assert!(load.under_load(4, start));
        assert!(load.under_load(0, late + Duration::from_millis(999)));
    }

    #[test]
    fn the_smallest_queue_still_has_a_threshold() {
        let start = Instant::now();
        let load = HandshakeLoad::new(1, start);
        assert!(!load.under_load(0, start));
        assert!(load.under_load(1, start));
    }
}
