//! Request ids for requests that arrive without one.
//!
//! A UUID v4 per request costs a `getrandom` system call; an id only has to
//! be unique, not unpredictable. So each gateway process draws one random
//! 64-bit prefix at start and appends a counter: `3f9a0c5e1b7d2a64-1c`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;

#[derive(Clone, Debug)]
pub struct RequestIds {
    prefix: u64,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    pub fn new() -> Self {
        Self {
            prefix: random_u64(),
            next: Arc::default(),
        }
    }

    /// A new id, unique within this process and (by its prefix) across
    /// gateways. Written into a stack buffer: one per request, so no
    /// formatting machinery.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 16 + 1 + 16];
        hex(self.prefix, &mut buf[..16]);
        buf[16] = b'-';
        // The counter without leading zeros (at least one digit).
        let digits = (16 - (n.leading_zeros() / 4) as usize).max(1);
        hex(n, &mut buf[17..17 + digits]);
        // Hex digits and a dash: always a valid header value.
        HeaderValue::from_bytes(&buf[..17 + digits]).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// Writes the low `out.len()` hex digits of `n`, most significant first.
fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// 64 random bits from std's randomly keyed hasher (no extra dependency).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_share_the_process_prefix() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.split('-').next(), b.split('-').next());
    }

    #[test]
    fn ids_are_the_prefix_and_the_counter_in_hex() {
        let ids = RequestIds {
            prefix: 0x3f9a_0c5e_1b7d_2a64,
            next: Arc::new(AtomicU64::new(0)),
        };
        assert_eq!(ids.next(), "3f9a0c5e1b7d2a64-0");
        assert_eq!(ids.next(), "3f9a0c5e1b7d2a64-1");
        ids.next.store(0x1c, Ordering::Relaxed);
        assert_eq!(ids.next(), "3f9a0c5e1b7d2a64-1c");
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(ids.next(), "3f9a0c5e1b7d2a64-ffffffffffffffff");
        let small = RequestIds {
            prefix: 1,
            next: Arc::new(AtomicU64::new(0x10)),
        };
        assert_eq!(small.next(), "0000000000000001-10");
    }
}
