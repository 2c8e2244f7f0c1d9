//! Writing: what replaces a finding, and the counts the audit trail gets.
//!
//! `mask` writes `[REDACTED:name]`; `partial` keeps the last four characters of values long
//! enough that four characters do not give them away; `hash` writes a keyed pseudonym
//! `<name:8 hex>` (HMAC-SHA-256 with the agent's key over the detector name and the value), so
//! the same value gives the same token across files and reads while the key stays the same.
//! There is no unkeyed hash: 2³² IPv4 addresses are reversed from an unkeyed hash in seconds.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;

/// How a detector's findings are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `[REDACTED:name]`.
    Mask,
    /// `[REDACTED:name:...last4]` for values of at least 8 bytes, else `mask`.
    Partial,
    /// `<name:8 hex>`, a keyed pseudonym (HMAC-SHA-256 with the profile's [`HashKey`]).
    Hash,
}

/// Values shorter than this are masked whole in `partial` mode.
pub const PARTIAL_MIN_LEN: usize = 8;

/// The secret key of `hash` mode, held as the HMAC state after the key is absorbed: each
/// pseudonym clones that state (a copy, no allocation, no key schedule per value). Neither the
/// key nor the state appears in `Debug` output or logs.
pub struct HashKey(Hmac<Sha256>);

/// Shortest key accepted (bytes): the HMAC's security is the key's.
pub const HASH_KEY_MIN_LEN: usize = 32;

impl HashKey {
    /// The key from its bytes; refused when shorter than 32 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<HashKey, String> {
        if bytes.len() < HASH_KEY_MIN_LEN {
            return Err(format!(
                "the hash key has {} bytes; at least {HASH_KEY_MIN_LEN} are needed",
                bytes.len()
            ));
        }
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&bytes)
            .map(HashKey)
            .map_err(|e| format!("the hash key cannot key HMAC-SHA-256: {e}"))
    }

    /// Appends the first 4 bytes of HMAC-SHA-256(key, name ‖ 0 ‖ value), as 8 lowercase hex
    /// digits, to `out`; allocates nothing beyond `out`'s own growth.
    fn write_pseudonym(&self, name: &str, value: &[u8], out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.0.clone();
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        for b in &tag[..4] {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(…)")
    }
}

/// Appends the replacement of `value` (found by detector `name`) to `out`. `hash` mode without
/// a key cannot happen (profiles are refused at load); it falls back to `mask`, never to clear text.
pub fn write_replacement(
    out: &mut Vec<u8>,
    name: &str,
    mode: Mode,
    value: &[u8],
    key: Option<&HashKey>,
) {
    match (mode, key) {
        (Mode::Hash, Some(key)) => {
            out.push(b'<');
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            key.write_pseudonym(name, value, out);
            out.push(b'>');
        }
        (Mode::Partial, _)
            if value.len() >= PARTIAL_MIN_LEN && value[value.len() - 4..].is_ascii() =>
        {
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b":...");
            out.extend_from_slice(&value[value.len() - 4..]);
            out.push(b']');
        }
        _ => {
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(name.as_bytes());
            out.push(b']');
        }
    }
}

/// What a stream's redaction did: findings per detector, lines withheld because a detector
/// failed on them, over-long lines cut. Never values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Findings per detector name.
    pub redactions: BTreeMap<String, u64>,
    /// Lines replaced by [`crate::WITHHELD_MARKER`] because a detector failed on them.
    pub lines_withheld: u64,
    /// Lines cut at the line limit.
    pub lines_cut: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, name: &str) {
        match self.redactions.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.redactions.insert(name.to_string(), 1);
            }
        }
    }

    /// Findings of every detector together.
    pub fn total(&self) -> u64 {
        self.redactions.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replaced(mode: Mode, value: &str, key: Option<&HashKey>) -> String {
        let mut out = Vec::new();
        write_replacement(&mut out, "card", mode, value.as_bytes(), key);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn mask_names_the_detector() {
        assert_eq!(
            replaced(Mode::Mask, "4111111111111111", None),
            "[REDACTED:card]"
        );
    }

    #[test]
    fn partial_keeps_last_four_only_of_long_values() {
        assert_eq!(
            replaced(Mode::Partial, "4111111111111111", None),
            "[REDACTED:card:...1111]"
        );
        assert_eq!(replaced(Mode::Partial, "pw12345", None), "[REDACTED:card]");
    }

    #[test]
    fn hash_is_keyed_and_stable_per_key() {
        let k1 = HashKey::new(vec![1; 32]).unwrap();
        let k2 = HashKey::new(vec![2; 32]).unwrap();
        let a = replaced(Mode::Hash, "4111111111111111", Some(&k1));
        assert_eq!(a, replaced(Mode::Hash, "4111111111111111", Some(&k1)));
        assert_ne!(a, replaced(Mode::Hash, "4111111111111111", Some(&k2)));
        assert_ne!(a, replaced(Mode::Hash, "5555555555554444", Some(&k1)));
        assert!(
            a.starts_with("<card:") && a.len() == "<card:3f9a1c2b>".len(),
            "{a}"
        );
    }

    /// The pseudonym is the first 4 bytes of HMAC-SHA-256 over name, NUL and value, in hex,
    /// computed here from scratch the straightforward way (a fresh keyed MAC and `format!`):
    /// the reused keyed state gives the same tokens as before.
    #[test]
    fn hash_equals_a_fresh_hmac_of_name_and_value() {
        let key_bytes: Vec<u8> = (0..40).collect();
        let key = HashKey::new(key_bytes.clone()).unwrap();
        for value in ["4111111111111111", "", "jane@example.com", "x"] {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes).unwrap();
            mac.update(b"card\0");
            mac.update(value.as_bytes());
            let tag = mac.finalize().into_bytes();
            let hex: String = tag[..4].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                replaced(Mode::Hash, value, Some(&key)),
                format!("<card:{hex}>")
            );
        }
    }

    #[test]
    fn hash_without_a_key_masks_instead_of_leaking() {
        assert_eq!(
            replaced(Mode::Hash, "4111111111111111", None),
            "[REDACTED:card]"
        );
    }

    #[test]
    fn short_hash_keys_are_refused() {
        assert!(HashKey::new(vec![0; 31]).is_err());
    }
}
