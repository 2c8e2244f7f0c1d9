//! Fuzz target of grant token decoding and verification (`GrantVerifier::verify_on_receipt`
//! and `verify_for_use`), with arbitrary text and with mutations of genuine tokens.
//!
//! Invariants: nothing panics; a token is accepted only when it is byte-identical to a token
//! the fixture key signed for the claims it carries (so no altered, re-encoded or truncated
//! token passes); a token accepted for use names the reader and is bound to the reader's key.
//!
//! Input: the first byte picks the mode. Even: the rest is the token text. Odd: the next byte
//! picks a genuine token, and each following 3 bytes (position, position, value) overwrite one
//! of its bytes — with a base64url character when bit 1 of the mode is set, so mutations reach
//! the signature check rather than stopping at the decoding.
//!
//! core's `grant.rs` and `identity.rs` are compiled from their source rather than through
//! `loggate-core`, whose tonic, tokio, rustls and hyper would make every build with the
//! fuzzer's instrumentation take minutes; these two modules need only the crates named in
//! `fuzz/Cargo.toml`.

#![no_main]

#[allow(dead_code)]
#[allow(unused_imports)] // the re-export of the redaction crate's profile-name rule
#[path = "../../core/src/grant.rs"]
mod grant;
#[allow(dead_code)]
#[path = "common/grant_fixture.rs"]
mod grant_fixture;
#[allow(dead_code)]
#[path = "../../core/src/identity.rs"]
mod identity;

use grant_fixture::{GrantFixture, NOW};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static FIXTURE: LazyLock<GrantFixture> =
    LazyLock::new(|| GrantFixture::new(&["/var/log/app/*.log", "/var/log/nginx/**"]));

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn check(f: &GrantFixture, token: &str) {
    if let Ok(g) = f.verifier.verify_on_receipt(token, &f.web1, NOW) {
        assert_eq!(g.token(), token);
        f.assert_genuine(token, g.claims());
    }
    if let Ok(g) = f.verifier.verify_for_use(token, &f.alice, &f.web1, NOW) {
        f.assert_genuine(token, g.claims());
        assert_eq!(g.claims().sub, f.alice.spiffe_id());
        assert_eq!(g.claims().key_sha256, f.alice.key_sha256_hex());
        assert!(g.claims().nbf - 60 <= NOW && NOW < g.claims().exp);
    }
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            check(f, text);
        }
        return;
    }
    let Some((&which, edits)) = rest.split_first() else {
        return;
    };
    let mut bytes = f.tokens[usize::from(which) % f.tokens.len()]
        .clone()
        .into_bytes();
    for e in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % bytes.len();
        bytes[at] = if mode & 2 != 0 {
            B64URL[usize::from(e[2]) % B64URL.len()]
        } else {
            e[2]
        };
    }
    if let Ok(text) = String::from_utf8(bytes) {
        check(f, &text);
    }
});
