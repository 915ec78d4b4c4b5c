//! A small multiplicative hasher for the broker's own map keys.
//!
//! The maps on the hot path are keyed by sequence numbers the broker assigns, by key digests that
//! already come out of SipHash, and by topic names from configuration. None of them is chosen by an
//! adversary, so SipHash's flood resistance buys nothing there and would cost a good share of the
//! per-message budget.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hashed with [`FastHasher`].
pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// 2^64 divided by the golden ratio: odd, with well-spread bits, so that multiplying by it sends
/// consecutive sequence numbers to well-spread high bits (which the map's control bytes use).
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// Folds each 64-bit word into the state by rotate, xor and multiply.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(SPREAD);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn consecutive_numbers_hash_apart_and_strings_by_content() {
        let build = BuildHasherDefault::<FastHasher>::default();
        let a = build.hash_one(1u64);
        let b = build.hash_one(2u64);
        assert_ne!(a, b);
        assert_ne!(a >> 57, b >> 57, "high bits differ for neighbours");
        assert_eq!(build.hash_one("q1/t/ns/a"), build.hash_one("q1/t/ns/a"));
        assert_ne!(build.hash_one("q1/t/ns/a"), build.hash_one("q1/t/ns/b"));
        assert_ne!(
            build.hash_one("exactly8"),
            build.hash_one("exactly8x"),
            "the remainder counts"
        );
    }
}
