//! Signed checkpoints: every so often the writer appends a chained `audit.checkpoint` record
//! whose Ed25519 signature covers the origin, the sequence number and the chain head it seals.
//!
//! A checkpoint proves that the holder of the writer's key wrote the chain up to that point. It
//! does not stop someone holding that key (root on the host) from rewriting everything and
//! re-signing; that needs checkpoints held off the host (the controller, the SIEM).

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// When to write a checkpoint: after `every` records or `interval`, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// Records written since the last checkpoint that call for the next one.
    pub every: u64,
    /// Time since the last checkpoint that calls for the next one (if records were written).
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// The bytes a checkpoint signature covers.
pub(crate) fn signed_text(origin: &str, seq: u64, head: &str, ts_ms: i64) -> String {
    format!("loggate-audit-checkpoint\n{origin}\n{seq}\n{head}\n{ts_ms}\n")
}

fn key_id_of(public: &[u8]) -> String {
    format!("ed25519:{}", &hex::encode(Sha256::digest(public))[..16])
}

/// The writer's signing key (PKCS#8 in a 0600 file).
pub struct CheckpointKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl CheckpointKey {
    /// Loads the key at `path`, creating it (and `path` + `.pub`) on first use.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("cannot generate an audit signing key"))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            file.write_all(pkcs8.as_ref())?;
            file.sync_all()?;
        }
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("cannot read audit signing key {}: {e}", path.display())
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key: {e}", path.display()))?;
        let key = CheckpointKey {
            key_id: key_id_of(pair.public_key().as_ref()),
            pair,
        };
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        std::fs::write(&public, format!("{}\n", key.verify_key().to_text()))?;
        Ok(key)
    }

    /// The key's id, `ed25519:<16 hex digits of the public key's SHA-256>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, to verify this key's checkpoints with.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey {
            key_id: self.key_id.clone(),
            public: self.pair.public_key().as_ref().to_vec(),
        }
    }

    pub(crate) fn sign(&self, text: &str) -> String {
        hex::encode(self.pair.sign(text.as_bytes()).as_ref())
    }
}

/// A public key that checkpoints may be signed with: `ed25519:<id> <hex public key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    key_id: String,
    public: Vec<u8>,
}

impl VerifyKey {
    /// Reads `ed25519:<id> <hex public key>`; an error when it is not that, or the id is not
    /// the key's.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut parts = text.split_whitespace();
        let (Some(key_id), Some(hex_key), None) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("an audit public key is one line: `ed25519:<id> <hex key>`");
        };
        let public = hex::decode(hex_key)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| anyhow::anyhow!("the audit public key is not 64 hex digits"))?;
        if key_id != key_id_of(&public) {
            anyhow::bail!("the audit public key's id {key_id} does not match the key");
        }
        Ok(VerifyKey {
            key_id: key_id.to_string(),
            public,
        })
    }

    /// The key as [`VerifyKey::parse`] reads it.
    pub fn to_text(&self) -> String {
        format!("{} {}", self.key_id, hex::encode(&self.public))
    }

    /// The key's id, `ed25519:<16 hex digits>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(crate) fn verifies(&self, text: &str, sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(text.as_bytes(), &sig)
            .is_ok()
    }
}
