//! The nonce that binds an ID token to the key of the certificate it buys.
//!
//! The CLI makes its key pair first and sends the IdP the nonce
//! `base64url(SHA-256(SubjectPublicKeyInfo DER) || 16 random bytes)` (64 characters). The IdP
//! signs it into the ID token; the controller issues a certificate only for a request whose
//! public key hashes to the nonce's first 32 bytes. A token that leaks (a log, a proxy, a
//! malicious controller in the middle) cannot be replayed with another key: its nonce commits
//! to the key of the person who signed in. The random part keeps two sign-ins with the same key
//! from sharing a nonce.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Random bytes after the key hash.
const RANDOM_BYTES: usize = 16;

/// The nonce for a sign-in with the key whose SubjectPublicKeyInfo is `spki_der`.
pub fn make_nonce(spki_der: &[u8]) -> String {
    let mut bytes = Sha256::digest(spki_der).to_vec();
    let random: [u8; RANDOM_BYTES] = rand::random();
    bytes.extend_from_slice(&random);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `nonce` commits to the key `spki_der` (made by [`make_nonce`] for that key).
pub fn nonce_commits_to_key(nonce: &str, spki_der: &[u8]) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce.as_bytes()) else {
        return false;
    };
    if bytes.len() != 32 + RANDOM_BYTES {
        return false;
    }
    let want = Sha256::digest(spki_der);
    // Not secret (a hash of a public key), but compare without an early exit anyway.
    bytes[..32]
        .iter()
        .zip(want.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_commits_to_its_key_and_no_other() {
        let nonce = make_nonce(b"key one");
        assert_eq!(nonce.len(), 64);
        assert!(nonce_commits_to_key(&nonce, b"key one"));
        assert!(!nonce_commits_to_key(&nonce, b"key two"));
        assert_ne!(nonce, make_nonce(b"key one"), "a random part");
        for bad in ["", "not base64 !", "AAAA", &nonce[..60]] {
            assert!(!nonce_commits_to_key(bad, b"key one"), "{bad:?}");
        }
    }
}
