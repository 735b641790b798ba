//! A worker's queue of handshake messages, served newest first.
//!
//! Under overload, first-in-first-out serves the messages whose devices have waited longest, and
//! a WireGuard device that waited REKEY_TIMEOUT (5 s) has already sent a new initiation and
//! ignores the answer to the old one: once the queue holds more than 5 s of work, every answer
//! comes too late and a reconnect storm makes no progress at all. Newest first answers devices
//! that are still listening; the oldest messages are the ones dropped, when the queue is full or
//! when they are stale. Without a backlog the order makes no difference.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A handshake message taken off a worker's data path.
pub struct QueuedHandshake {
    pub listener: usize,
    pub from: SocketAddr,
    pub datagram: Vec<u8>,
    pub received: Instant,
}

/// What became of a message offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest message (of that listener) dropped to make room.
    QueuedDroppingOldest {
        listener: usize,
    },
}

/// What a batch taken from the queue holds, newest first, and what was dropped on the way.
#[derive(Default)]
pub struct Taken {
    pub batch: Vec<QueuedHandshake>,
    /// Listener of each message dropped as stale.
    pub stale: Vec<usize>,
}

pub struct HandshakeQueue {
    capacity: usize,
    stale_after: Duration,
    messages: Mutex<VecDeque<QueuedHandshake>>,
    ready: Notify,
}

impl HandshakeQueue {
    pub fn new(capacity: usize, stale_after: Duration) -> HandshakeQueue {
        let capacity = capacity.max(1);
        HandshakeQueue {
            capacity,
            stale_after,
            messages: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    /// Messages waiting.
    pub fn backlog(&self) -> usize {
        self.messages.lock().len()
    }

    pub fn push(&self, message: QueuedHandshake) -> Pushed {
        let pushed = {
            let mut messages = self.messages.lock();
            let dropped = if messages.len() >= self.capacity {
                messages.pop_front()
            } else {
                None
            };
            messages.push_back(message);
            match dropped {
                Some(old) => Pushed::QueuedDroppingOldest {
                    listener: old.listener,
                },
                None => Pushed::Queued,
            }
        };
        self.ready.notify_one();
        pushed
    }

    /// Up to `max` messages, newest first, once there is at least one; messages that waited
    /// `stale_after` by `now()` are dropped instead (reported in `Taken::stale`).
    pub async fn take(&self, max: usize, now: impl Fn() -> Instant) -> Taken {
        loop {
            let taken = self.try_take(max, now());
            if !taken.batch.is_empty() || !taken.stale.is_empty() {
                return taken;
            }
            self.ready.notified().await;
        }
    }

    fn try_take(&self, max: usize, now: Instant) -> Taken {
        let mut taken = Taken::default();
        let mut messages = self.messages.lock();
        while let Some(oldest) = messages.front() {
            if now.saturating_duration_since(oldest.received) < self.stale_after {
                break;
            }
            taken.stale.push(oldest.listener);
            messages.pop_front();
        }
        while taken.batch.len() < max {
            match messages.pop_back() {
                Some(message) => taken.batch.push(message),
                None => break,
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(listener: usize, tag: u8, received: Instant) -> QueuedHandshake {
        QueuedHandshake {
            listener,
            from: SocketAddr::from(([192, 0, 2, tag], 51820)),
            datagram: vec![tag],
            received,
        }
    }

    fn tags(taken: &Taken) -> Vec<u8> {
        taken.batch.iter().map(|m| m.datagram[0]).collect()
    }

    #[tokio::test]
    async fn newest_first_in_batches() {
        let start = Instant::now();
        let queue = HandshakeQueue::new(8, Duration::from_secs(5));
        for tag in 1..=5 {
            assert_eq!(queue.push(message(0, tag, start)), Pushed::Queued);
        }
        assert_eq!(queue.backlog(), 5);
        let first = queue.take(3, || start).await;
        assert_eq!(tags(&first), [5, 4, 3]);
        let second = queue.take(3, || start).await;
        assert_eq!(tags(&second), [2, 1]);
        assert_eq!(queue.backlog(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest() {
        let start = Instant::now();
        let queue = HandshakeQueue::new(2, Duration::from_secs(5));
        queue.push(message(7, 1, start));
        queue.push(message(0, 2, start));
        assert_eq!(
            queue.push(message(0, 3, start)),
            Pushed::QueuedDroppingOldest { listener: 7 }
        );
        assert_eq!(tags(&queue.take(10, || start).await), [3, 2]);
    }

    #[tokio::test]
    async fn stale_messages_are_dropped_not_served() {
        let start = Instant::now();
        let queue = HandshakeQueue::new(8, Duration::from_secs(5));
        queue.push(message(1, 1, start));
        queue.push(message(2, 2, start + Duration::from_secs(1)));
        queue.push(message(0, 3, start + Duration::from_secs(4)));
        let later = start + Duration::from_millis(6_500);
        let taken = queue.take(10, || later).await;
        assert_eq!(taken.stale, [1, 2], "5 s or older, oldest first");
        assert_eq!(tags(&taken), [3]);
        // Only stale messages left: reported, and nothing to serve.
        queue.push(message(4, 4, start));
        let taken = queue.take(10, || later).await;
        assert_eq!((taken.stale.as_slice(), taken.batch.len()), (&[4][..], 0));
    }

    #[tokio::test]
    async fn a_waiting_taker_wakes_on_push() {
        let queue = std::sync::Arc::new(HandshakeQueue::new(4, Duration::from_secs(5)));
        let taker = {
            let queue = queue.clone();
            tokio::spawn(async move { tags(&queue.take(4, Instant::now).await) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.push(message(0, 9, Instant::now()));
        let taken = tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .expect("woken")
            .expect("taker");
        assert_eq!(taken, [9]);
    }
}
