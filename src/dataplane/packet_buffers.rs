//! Packet buffers recycled per thread. Every packet the engine hands to the I/O side travels in
//! its own `Vec` (`Outgoing`); a fresh allocation per packet, freed again once the flush has
//! copied it into a GSO train or a TUN write, showed up as 4–5 % of arcd's CPU in the data-plane
//! profiles (glibc's malloc and free, a batch of 64 frees overflowing its per-thread cache).
//! Buffers come back here after the flush and serve the next packets of the same thread.

use std::cell::RefCell;

/// Capacity of a new buffer: a full-size packet (MTU up to 1500 plus WireGuard's 32 bytes of
/// header and tag) fits without growing, so one buffer serves any packet of the usual MTUs.
const CAPACITY: usize = 2048;

/// Buffers kept per thread (512 KB at most): a flush of a full batch returns about this many.
const KEPT: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer holding a copy of `data`, recycled when one is spare.
pub(super) fn copy_of(data: &[u8]) -> Vec<u8> {
    let spare = SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten();
    let mut buffer = spare.unwrap_or_else(|| Vec::with_capacity(CAPACITY.max(data.len())));
    buffer.clear();
    buffer.extend_from_slice(data);
    buffer
}

/// Takes a buffer back once its packet is sent. Odd sizes (a 64 KB test packet) are freed, not
/// kept.
pub(super) fn recycle(buffer: Vec<u8>) {
    if !(CAPACITY..=4 * CAPACITY).contains(&buffer.capacity()) {
        return;
    }
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEPT {
            spare.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_serves_the_next_packet_of_the_thread() {
        let first = copy_of(b"first packet");
        assert_eq!(first, b"first packet");
        let address = first.as_ptr();
        recycle(first);
        let second = copy_of(b"second");
        assert_eq!(second, b"second", "no bytes of the previous packet left");
        assert_eq!(second.as_ptr(), address, "the same allocation again");
    }

    #[test]
    fn odd_sizes_are_not_kept() {
        let large = copy_of(&vec![7u8; 64 * 1024]);
        assert_eq!(large.len(), 64 * 1024);
        recycle(large);
        recycle(Vec::with_capacity(16));
        let next = copy_of(b"x");
        assert!(next.capacity() >= CAPACITY && next.capacity() <= 4 * CAPACITY);
    }
}
