//! Stable ids derived from a message's content, for messages that reach a worker with no
//! `wr-message-id` from a broker that gives stored messages no identity of their own (MQTT, plain
//! lists): the same stored message gets the same id on every read, after restarts and in other
//! processes; messages that differ get different ids.

use sha2::{Digest, Sha256};

/// `{prefix}-` and 32 hex digits (128 bits) of a SHA-256 over `parts`, each length-prefixed so that
/// no two different sequences of parts hash the same bytes.
pub(crate) fn content_id<'a>(prefix: &str, parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    format!("{prefix}-{}", hex(&digest[..16]))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_kept_apart() {
        let id = content_id("x", [&b"ab"[..], b"c"]);
        assert!(id.starts_with("x-") && id.len() == 34, "{id}");
        assert_eq!(id, content_id("x", [&b"ab"[..], b"c"]));
        assert_ne!(id, content_id("x", [&b"a"[..], b"bc"]));
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }
}
