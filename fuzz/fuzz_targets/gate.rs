//! Fuzz target of the agent's decision core, `gate::authorize` itself (`agent/src/gate.rs`,
//! compiled from source against the real `loggate-core`): arbitrary bytes choose which of the
//! fixture's genuine grants the agent holds and which of those are withdrawn (revoked or dropped
//! by a resync), the requested path (as sent, and re-rooted in the fixture tree) and an optional
//! presented token, and the gate decides over the fixture tree of `read_request` (a file, links
//! out of and within the root, a subdirectory, a directory named like a log, a file outside).
//!
//! Invariants: nothing panics; an allowed read is alice's own grant, genuine (byte-identical to
//! what the fixture key signs), active at the clock, not withdrawn, covering the path, and
//! exactly the presented token when one was presented; what opens is a regular file beneath the
//! root at exactly the normalised path (no link followed, never the file outside); a denial
//! names a grant only when it is one of the fixture's.
//!
//! Needs the `daemon-config` feature (the real `loggate-core`), like `config`.

#![no_main]

#[allow(dead_code)]
#[path = "../../agent/src/fs_access.rs"]
mod fs_access;
#[allow(dead_code)]
#[path = "../../agent/src/gate.rs"]
mod gate;
#[allow(dead_code)]
#[path = "common/grant_fixture.rs"]
mod grant_fixture;

// What `grant_fixture` names as `crate::grant` and `crate::identity`: here the real crate's.
use loggate_core::{grant, identity};

use fs_access::{normalise_request, LogRoot};
use gate::{authorize, GateContext, GrantLookup, Withdrawal};
use grant::ReceivedGrant;
use grant_fixture::{GrantFixture, NOW};
use libfuzzer_sys::fuzz_target;
use loggate_redact::Profiles;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::LazyLock;

struct Tree {
    roots: Vec<LogRoot>,
    root: PathBuf,
    outside: PathBuf,
    grants: GrantFixture,
    /// The fixture's tokens as the agent's store holds them (verified on receipt while valid).
    received: Vec<ReceivedGrant>,
    profiles: Profiles,
}

/// Builds the fixture tree once per process, beneath the temporary directory.
static TREE: LazyLock<Tree> = LazyLock::new(|| {
    let base = std::env::temp_dir().join(format!("loggate-fuzz-gate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("logs");
    let app = root.join("app");
    let outside = base.join("outside");
    for d in [&app.join("sub"), &app.join("dir.log"), &outside] {
        std::fs::create_dir_all(d).expect("fixture directories");
    }
    std::fs::write(app.join("api.log"), "GET /\n").expect("fixture file");
    std::fs::write(app.join("sub/deep.log"), "deep\n").expect("fixture file");
    std::fs::write(outside.join("secret.log"), "secret\n").expect("fixture file");
    std::os::unix::fs::symlink("../../outside/secret.log", app.join("out.log")).expect("link");
    std::os::unix::fs::symlink("api.log", app.join("inner.log")).expect("link");
    let roots = vec![LogRoot::new(&root).expect("fixture root")];
    let root = roots[0].path().to_path_buf();
    let glob = format!("{}/app/*.log", root.display());
    let grants = GrantFixture::new(&[&glob]);
    let received = grants
        .tokens
        .iter()
        .map(|t| {
            // The expired fixture grant ended an hour before NOW: received while it was valid.
            (grants.verifier.verify_on_receipt(t, &grants.web1, NOW))
                .or_else(|_| grants.verifier.verify_on_receipt(t, &grants.web1, NOW - 3700))
                .expect("fixture grants verify on receipt")
        })
        .collect();
    Tree {
        roots,
        outside: std::fs::canonicalize(outside.join("secret.log")).expect("fixture file"),
        grants,
        received,
        profiles: Profiles::builtin(),
        root,
    }
});

/// The grants the agent holds for this input, and the withdrawn ones.
struct Held<'a> {
    grants: Vec<&'a ReceivedGrant>,
    revoked: u8,
    dropped: u8,
    ids: Vec<&'a str>,
}

impl GrantLookup for Held<'_> {
    fn grants_for(&self, subject: &str) -> Vec<ReceivedGrant> {
        let mine = self.grants.iter().filter(|g| g.claims().sub == subject);
        mine.map(|g| (*g).clone()).collect()
    }
    fn withdrawal(&self, id: &str) -> Option<Withdrawal> {
        let i = self.ids.iter().position(|known| *known == id)?;
        let (by, reason) = ("spiffe://loggate.local/user/admin".into(), String::new());
        if self.revoked & (1 << i) != 0 {
            Some(Withdrawal::Revoked { by, reason })
        } else if self.dropped & (1 << i) != 0 {
            Some(Withdrawal::Dropped { by, reason })
        } else {
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let t = &*TREE;
    let [held, revoked, dropped, rest @ ..] = data else {
        return;
    };
    // The rest: the requested path, then (after a NUL, if any) the presented token.
    let (path, token) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (Ok(path), Ok(token)) = (
        std::str::from_utf8(path),
        token.map(std::str::from_utf8).transpose(),
    ) else {
        return;
    };
    let ids: Vec<&str> = t.received.iter().map(|g| g.claims().jti.as_str()).collect();
    let holding = Held {
        grants: (t.received.iter().enumerate())
            .filter(|(i, _)| held & (1 << i) != 0)
            .map(|(_, g)| g)
            .collect(),
        revoked: *revoked,
        dropped: *dropped,
        ids,
    };
    let rerooted = format!("{}/{}", t.root.display(), path.trim_start_matches('/'));
    for requested in [path, rerooted.as_str()] {
        check(t, &holding, requested, token);
    }
});

fn check(t: &Tree, held: &Held<'_>, requested: &str, presented: Option<&str>) {
    let g = &t.grants;
    let ctx = GateContext {
        agent: "web-1",
        verifier: &g.verifier,
        audience: &g.web1,
        grants: held,
        roots: &t.roots,
        profiles: &t.profiles,
        allow_raw: false,
    };
    match authorize(&ctx, &g.alice, requested, presented, NOW) {
        Ok(allowed) => {
            let claims = allowed.grant.claims();
            let path = normalise_request(requested).expect("an allowed path is normal");
            let path_text = path.to_str().expect("an allowed path is UTF-8");
            assert_eq!(claims.sub, g.alice.spiffe_id(), "someone else's grant");
            assert!(claims.nbf - 60 <= NOW && NOW < claims.exp, "inactive grant");
            assert!(held.withdrawal(&claims.jti).is_none(), "withdrawn grant");
            assert!(allowed.grant.covers_path(path_text), "{path_text} not covered");
            let token = match presented {
                Some(p) => p,
                None => {
                    let stored = held.grants.iter().find(|h| h.claims().jti == claims.jti);
                    stored.expect("a held grant").token()
                }
            };
            g.assert_genuine(token, claims);
            let o = &allowed.file;
            assert_eq!(o.path, path, "opened another path than requested");
            assert!(o.path.starts_with(&t.root), "opened {:?} outside", o.path);
            assert!(o.file.metadata().is_ok_and(|m| m.is_file()));
            let real = std::fs::read_link(format!("/proc/self/fd/{}", o.file.as_raw_fd()))
                .expect("the descriptor's path");
            assert_eq!(real, path, "followed a link from {path_text}");
            assert_ne!(real, t.outside);
        }
        Err(denial) => {
            if let Some(id) = &denial.grant_id {
                assert!(held.ids.contains(&id.as_str()), "denial names {id}");
            }
            assert!(!denial.message.is_empty(), "a denial says why");
        }
    }
}
