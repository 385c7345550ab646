//! Secrets: node tokens (random, shown once, stored only as SHA-256) and the constant-time
//! comparisons used for node and admin tokens.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A fresh token with 256 random bits, as 64 hex characters.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    hex(&bytes)
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored_hash`, compared in constant time.
pub fn matches_hash(token: &str, stored_hash: &str) -> bool {
    hash(token).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Compares two secrets in constant time (hashing first so lengths leak nothing either).
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_hex_and_unique() {
        let a = generate();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, generate());
    }

    #[test]
    fn token_matches_only_its_own_hash() {
        let t = generate();
        let h = hash(&t);
        assert_ne!(h, t);
        assert!(matches_hash(&t, &h));
        assert!(!matches_hash(&generate(), &h));
        assert!(!matches_hash("", &h));
    }

    #[test]
    fn secrets_equal_compares_contents() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
