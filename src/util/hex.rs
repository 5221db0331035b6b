//! Hex and ids: lower-case hex of bytes, random hex ids (approvals, console sessions), and the
//! per-request id. A leaf: imports nothing of the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// 32 hex digits, unique per request: a random per-process base and a counter.
pub fn new_request_id() -> String {
    // Unique, not secret: 8 random bytes drawn once per process, then a counter (the CSPRNG per
    // request cost about 1% of a proxied request's CPU).
    static BASE: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        let mut b = [0u8; 8];
        if boring::rand::rand_bytes(&mut b).is_err() {
            b = (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64)
                .to_be_bytes();
        }
        b
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(base);
    b[8..].copy_from_slice(&n.to_be_bytes());
    hex(&b)
}

/// `n` random bytes from BoringSSL's CSPRNG, as hex (ids of approvals, console sessions).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = boring::rand::rand_bytes(&mut b);
    hex(&b)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// `hex` appended to `out` (no allocation of its own).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        out.push(char::from_digit((byte >> 4) as u32, 16).unwrap_or('0'));
        out.push(char::from_digit((byte & 0xf) as u32, 16).unwrap_or('0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_hex_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn hex_of_bytes() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(random_hex(12).len(), 24);
    }
}
