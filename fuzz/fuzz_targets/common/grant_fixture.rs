//! The grant fixture shared by the fuzz targets that verify tokens (`grant_token`,
//! `read_request`): one fuzz-only signing key, the reader `alice` (a real certificate,
//! `fuzz/fixtures/alice.der`), the agent `web-1`, a fixed clock and a few genuine grants.
//! Included by `#[path]` next to core's `grant.rs` and `identity.rs`, which it names as
//! `crate::grant` and `crate::identity`.

use crate::grant::{Audience, GrantClaims, GrantVerifier, SigningKey};
use crate::identity::Identity;
use std::time::Duration;

/// Signs nothing but fuzz fixtures; public in this repository on purpose.
const FUZZ_ONLY_KEY: &str = "k4.secret.X5k7_EY166sTF09bR748pONNHn6vQ_KkcY92jYFNKXZ2EWWD9KB89NJDuwLUyfd0rAebgc7JrSmOtKow68mAIw";

/// The fuzzers' clock (Unix seconds): every fixture grant but `expired` is active at it.
pub const NOW: i64 = 1_800_000_000;

/// A self-signed certificate for `spiffe://loggate.local/user/alice` (`openssl req -x509
/// -newkey ed25519 -addext subjectAltName=URI:spiffe://loggate.local/user/alice -outform DER`).
const ALICE_DER: &[u8] = include_bytes!("../../fixtures/alice.der");

pub struct GrantFixture {
    pub key: SigningKey,
    pub verifier: GrantVerifier,
    pub alice: Identity,
    pub web1: Audience,
    /// Genuine tokens: for alice on web-1 (by host and by label), one expired, one for bob.
    pub tokens: Vec<String>,
}

/// The claims of the fixture's genuine grants; `paths` as given.
pub fn claims(alice_key: &str, paths: &[&str]) -> Vec<GrantClaims> {
    let base = GrantClaims {
        jti: "g-00000000000000a1".into(),
        iss: "spiffe://loggate.local/controller".into(),
        sub: "spiffe://loggate.local/user/alice".into(),
        iat: NOW - 60,
        nbf: NOW - 60,
        exp: NOW + 3600,
        hosts: vec!["web-1".into()],
        labels: vec![],
        paths: paths.iter().map(|p| p.to_string()).collect(),
        units: vec![],
        redaction: "default".into(),
        reason: "INC-1".into(),
        approver: "spiffe://loggate.local/user/admin".into(),
        key_sha256: alice_key.into(),
    };
    let by_label = GrantClaims {
        jti: "g-00000000000000a2".into(),
        hosts: vec![],
        labels: vec!["env=prod".into()],
        ..base.clone()
    };
    let expired = GrantClaims {
        jti: "g-00000000000000a3".into(),
        nbf: NOW - 7200,
        exp: NOW - 3600,
        ..base.clone()
    };
    let bobs = GrantClaims {
        jti: "g-00000000000000b1".into(),
        sub: "spiffe://loggate.local/user/bob".into(),
        key_sha256: "11".repeat(32),
        ..base.clone()
    };
    vec![base, by_label, expired, bobs]
}

impl GrantFixture {
    pub fn new(paths: &[&str]) -> Self {
        let key = SigningKey::from_paserk(FUZZ_ONLY_KEY).expect("the fixture key is a k4.secret");
        let alice = Identity::from_certificate(ALICE_DER, "loggate.local")
            .expect("the fixture certificate names alice");
        let tokens = claims(&alice.key_sha256_hex(), paths)
            .iter()
            .map(|c| key.sign(c).expect("fixture claims sign"))
            .collect();
        GrantFixture {
            verifier: GrantVerifier::new(
                vec![key.verifying_key().clone()],
                Duration::from_secs(60),
            ),
            key,
            alice,
            web1: Audience {
                agent_id: crate::identity::AgentId::new("web-1").expect("a valid agent id"),
                labels: vec!["env=prod".into()],
            },
            tokens,
        }
    }

    /// Asserts that an accepted token is byte-identical to what the fixture key signs for the
    /// claims it carried: Ed25519 and the claims' encoding are deterministic, so any other
    /// accepted text is a forgery or a malleability bug.
    pub fn assert_genuine(&self, token: &str, claims: &GrantClaims) {
        let resigned = self.key.sign(claims).expect("accepted claims sign again");
        assert_eq!(
            resigned, token,
            "accepted a token that is not byte-identical to a validly signed one"
        );
    }
}
