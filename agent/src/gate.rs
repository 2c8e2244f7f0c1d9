//! The gate: the one place that decides whether a request may read a file.
//!
//! A request passes, in order: TLS identity (a user certificate from our CA) → request limits →
//! path normalisation → grant selection and verification (signature over the reader's own key,
//! subject, host, time window, revocation, path glob, redaction profile) → safe open beneath the
//! roots. The result is an [`Authorized`] read, or a [`Denial`] with a stable code and one
//! sentence for the user; both go to the audit stream before anything else happens.

use crate::fs_access::{normalise_request, open_beneath, LogRoot, OpenedLog, PathDenied};
use loggate_core::grant::{Audience, GrantError, GrantVerifier, ReceivedGrant, VerifiedGrant};
use loggate_core::identity::Identity;
use loggate_redact::Profiles;
use loggate_redact::Redactor;
use std::sync::Arc;

/// Which check refused a request: the `reason_code` of its `read.denied` record and the
/// `loggate-denial` metadata of its status. A new check gets a new variant (and a row in
/// docs/audit-events.md's catalogue), so a misspelt code does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialCode {
    /// The certificate is from our CA but not a user's.
    IdentityRefused,
    /// The request's mode is none of cat, tail, grep.
    InvalidMode,
    /// `tail -n` over `limits.max_tail_lines`.
    TailLinesOverLimit,
    /// grep without a pattern.
    PatternEmpty,
    /// A grep pattern over `limits.max_pattern_bytes`.
    PatternTooLong,
    /// A grep pattern that is not a valid regular expression.
    PatternInvalid,
    /// A grep pattern whose compiled form exceeds `limits.max_regex_bytes`, or whose
    /// worst-case matching time on a `max_line_bytes` line is too long (`PATTERN_WORK_PER_LINE`).
    PatternTooComplex,
    NoGrant,
    GrantMalformed,
    GrantUnknownKey,
    GrantBadSignature,
    GrantBoundToAnotherKey,
    GrantWrongSubject,
    GrantWrongHost,
    GrantNotYetValid,
    GrantExpired,
    GrantRevoked,
    PathNotCovered,
    ProfileUnavailable,
    PathInvalid,
    PathTraversal,
    PathOutsideRoots,
    PathSymlink,
    /// The path crosses onto another mount (a bind mount, say) beneath the root.
    PathCrossesMount,
    PathNotFound,
    PathNotRegularFile,
    PathHardLinked,
    PathIoError,
    /// The reader already holds `limits.max_streams_per_subject` streams.
    TooManyStreams,
    /// The reader's grep time across streams (`limits.grep_seconds_per_subject_per_minute`)
    /// is spent for now.
    GrepBudgetSpent,
    /// The agent already runs `limits.max_grep_streams` grep streams.
    GrepStreamsBusy,
    /// The agent already serves `limits.max_streams` streams (retryable).
    AgentBusy,
    /// A file named as compressed (`.gz`, `.zst`) whose content is not (its magic bytes).
    CompressionMismatch,
    /// A file compressed in a format the agent does not decode (xz, bzip2, lz4, zip, `.Z`, …),
    /// under a redacting profile: served raw it would bypass redaction.
    CompressionUnsupported,
    /// A plain file whose first block holds NUL bytes, under a redacting profile: binary
    /// content redaction cannot see into.
    ContentBinary,
    /// `tail --follow` of a compressed file: a rotated file is no longer written.
    CompressedNotTailable,
    /// A journal read naming something that is not a systemd unit name (a glob among them).
    UnitInvalid,
    /// A journal read whose `since_unix_ms` no journal can hold (negative, or in the future).
    SinceInvalid,
    /// No grant of the reader's names the journal unit asked for (a file grant never does).
    UnitNotCovered,
    /// Not a check: the summary of denial records left out by the audit budget.
    Suppressed,
}

impl DenialCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialCode::IdentityRefused => "identity_refused",
            DenialCode::InvalidMode => "invalid_mode",
            DenialCode::TailLinesOverLimit => "tail_lines_over_limit",
            DenialCode::PatternEmpty => "pattern_empty",
            DenialCode::PatternTooLong => "pattern_too_long",
            DenialCode::PatternInvalid => "pattern_invalid",
            DenialCode::PatternTooComplex => "pattern_too_complex",
            DenialCode::GrepBudgetSpent => "grep_budget_spent",
            DenialCode::GrepStreamsBusy => "grep_streams_busy",
            DenialCode::AgentBusy => "agent_busy",
            DenialCode::NoGrant => "no_grant",
            DenialCode::GrantMalformed => "grant_malformed",
            DenialCode::GrantUnknownKey => "grant_unknown_key",
            DenialCode::GrantBadSignature => "grant_bad_signature",
            DenialCode::GrantBoundToAnotherKey => "grant_bound_to_another_key",
            DenialCode::GrantWrongSubject => "grant_wrong_subject",
            DenialCode::GrantWrongHost => "grant_wrong_host",
            DenialCode::GrantNotYetValid => "grant_not_yet_valid",
            DenialCode::GrantExpired => "grant_expired",
            DenialCode::GrantRevoked => "grant_revoked",
            DenialCode::PathNotCovered => "path_not_covered",
            DenialCode::ProfileUnavailable => "profile_unavailable",
            DenialCode::PathInvalid => "path_invalid",
            DenialCode::PathTraversal => "path_traversal",
            DenialCode::PathOutsideRoots => "path_outside_roots",
            DenialCode::PathSymlink => "path_symlink",
            DenialCode::PathCrossesMount => "path_crosses_mount",
            DenialCode::PathNotFound => "path_not_found",
            DenialCode::PathNotRegularFile => "path_not_regular_file",
            DenialCode::PathHardLinked => "path_hard_linked",
            DenialCode::PathIoError => "path_io_error",
            DenialCode::TooManyStreams => "too_many_streams",
            DenialCode::CompressionMismatch => "compression_mismatch",
            DenialCode::CompressionUnsupported => "compression_unsupported",
            DenialCode::ContentBinary => "content_binary",
            DenialCode::CompressedNotTailable => "compressed_not_tailable",
            DenialCode::UnitInvalid => "unit_invalid",
            DenialCode::SinceInvalid => "since_invalid",
            DenialCode::UnitNotCovered => "unit_not_covered",
            DenialCode::Suppressed => "suppressed",
        }
    }

    /// The code of a token the verifier refused (exhaustive: a new refusal needs a code).
    fn of_grant_error(e: &GrantError) -> DenialCode {
        match e {
            GrantError::Malformed(_) => DenialCode::GrantMalformed,
            GrantError::UnknownKey(_) => DenialCode::GrantUnknownKey,
            GrantError::BadSignature => DenialCode::GrantBadSignature,
            GrantError::BoundToAnotherKey { .. } => DenialCode::GrantBoundToAnotherKey,
            GrantError::WrongSubject { .. } => DenialCode::GrantWrongSubject,
            GrantError::WrongHost { .. } => DenialCode::GrantWrongHost,
            GrantError::NotYetValid { .. } => DenialCode::GrantNotYetValid,
            GrantError::Expired { .. } => DenialCode::GrantExpired,
        }
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenialCode,
    pub message: String,
    pub grant_id: Option<String>,
}

impl Denial {
    pub fn new(code: DenialCode, message: String) -> Self {
        Denial {
            code,
            message,
            grant_id: None,
        }
    }

    pub(crate) fn from_grant(e: GrantError, grant_id: Option<String>) -> Self {
        Denial {
            code: DenialCode::of_grant_error(&e),
            message: e.to_string(),
            grant_id,
        }
    }
}

/// The redaction applied to a stream: a compiled profile from the agent's configuration (the
/// built-in `default` among them), or `raw` (none), which exists only when the configuration
/// allows it. A grant naming a profile the agent does not have is refused (fail closed),
/// never served with less redaction.
#[derive(Debug, Clone)]
pub enum Profile {
    Raw,
    Redact(Arc<Redactor>),
}

impl Profile {
    /// The redactor, or `None` for `raw`.
    pub fn redactor(&self) -> Option<Arc<Redactor>> {
        match self {
            Profile::Raw => None,
            Profile::Redact(r) => Some(r.clone()),
        }
    }
}

pub fn resolve_profile(
    name: &str,
    profiles: &Profiles,
    allow_raw: bool,
    agent: &str,
) -> Result<Profile, String> {
    match name {
        "raw" if allow_raw => Ok(Profile::Raw),
        "raw" => Err(format!(
            "the grant asks for redaction profile \"raw\" (no redaction), which agent {agent} does not allow"
        )),
        other => profiles.get(other).map(Profile::Redact).ok_or_else(|| {
            format!(
                "the grant asks for redaction profile {other:?}, which agent {agent} does not provide (it has {})",
                profiles.names().join(", ")
            )
        }),
    }
}

pub struct Authorized {
    pub grant: VerifiedGrant,
    pub file: OpenedLog,
    pub profile: Profile,
}

/// Why a grant whose token still verifies must be refused: revoked by someone, or dropped by a
/// resync (the controller no longer holds it, so nobody could revoke it any more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    Revoked { by: String, reason: String },
    Dropped { by: String, reason: String },
}

/// The agent's grants as the gate sees them: the pushed grants of a reader and whether one was
/// withdrawn. [`crate::grants::GrantStore`] is the agent's; tests and the fuzz target bring
/// their own.
pub trait GrantLookup {
    /// The stored grants issued to `subject` (verified on receipt).
    fn grants_for(&self, subject: &str) -> Vec<ReceivedGrant>;
    /// `Some` when grant `id` must be refused although its token verifies.
    fn withdrawal(&self, id: &str) -> Option<Withdrawal>;
}

/// Everything the gate decides on, and nothing else: the agent's id and audience, the one
/// verifier, the grants it holds, its roots and its redaction profiles.
pub struct GateContext<'a> {
    pub agent: &'a str,
    pub verifier: &'a GrantVerifier,
    pub audience: &'a Audience,
    pub grants: &'a dyn GrantLookup,
    pub roots: &'a [LogRoot],
    pub profiles: &'a Profiles,
    pub allow_raw: bool,
}

/// One grant the gate judges for a request.
pub struct Candidate {
    pub token: String,
    /// Presented by the reader with the request (judged alone; its denial is the answer).
    pub presented: bool,
    /// The stored grant with this token, when pushed: its verified-on-receipt claims rank the
    /// explanation of a refusal.
    pub stored: Option<ReceivedGrant>,
}

/// The gate's verdict on one candidate.
pub enum Judgement {
    /// Usable: the file is opened next.
    Usable {
        grant: Box<VerifiedGrant>,
        profile: Profile,
    },
    /// Refused; `about_this_path` when the grant's globs cover the requested path.
    Refused {
        denial: Denial,
        about_this_path: bool,
    },
}

/// Rank of a denial when several grants fail (lower wins): a presented token's own refusal
/// first; then the most useful explanation is about a grant for this path, and among those the
/// one closest to working — an active grant the agent cannot serve (its profile), then one that
/// starts later, then one that ended.
pub fn rank(code: DenialCode, about_this_path: bool, presented: bool) -> u8 {
    if presented {
        return 0;
    }
    match (about_this_path, code) {
        (false, DenialCode::PathNotCovered) => 5,
        (false, _) => 6,
        (true, DenialCode::ProfileUnavailable) => 0,
        (true, DenialCode::GrantNotYetValid) => 1,
        (true, DenialCode::GrantExpired | DenialCode::GrantRevoked) => 2,
        (true, _) => 3,
    }
}

fn path_denial(e: PathDenied) -> Denial {
    let code = match e {
        PathDenied::NotAbsolute | PathDenied::InvalidPath(_) => DenialCode::PathInvalid,
        PathDenied::Traversal => DenialCode::PathTraversal,
        PathDenied::OutsideRoots(_) => DenialCode::PathOutsideRoots,
        PathDenied::SymlinkRefused => DenialCode::PathSymlink,
        PathDenied::CrossesMount => DenialCode::PathCrossesMount,
        PathDenied::NotFound => DenialCode::PathNotFound,
        PathDenied::NotRegularFile { .. } => DenialCode::PathNotRegularFile,
        PathDenied::HardLinked(_) => DenialCode::PathHardLinked,
        PathDenied::Io(_) => DenialCode::PathIoError,
    };
    Denial::new(code, e.to_string())
}

/// The grants to judge: a presented token alone (the reader chose it: it is judged on its own,
/// never quietly replaced by another grant), else the pushed grants issued to this reader.
pub fn candidates(
    ctx: &GateContext<'_>,
    reader: &Identity,
    presented_token: Option<&str>,
) -> Result<Vec<Candidate>, Denial> {
    let stored = ctx.grants.grants_for(reader.spiffe_id());
    let candidates: Vec<Candidate> = match presented_token {
        Some(t) => vec![Candidate {
            token: t.to_string(),
            presented: true,
            stored: stored.into_iter().find(|g| g.token() == t),
        }],
        None => stored
            .into_iter()
            .map(|g| Candidate {
                token: g.token().to_string(),
                presented: false,
                stored: Some(g),
            })
            .collect(),
    };
    if candidates.is_empty() {
        return Err(Denial::new(
            DenialCode::NoGrant,
            format!(
                "you ({reader}) hold no grant on agent {}; ask an admin to issue you one",
                ctx.agent
            ),
        ));
    }
    Ok(candidates)
}

/// Judges one candidate for `reader` reading `path` at `now`: every check of the verifier, then
/// withdrawal, the path glob and the redaction profile. Opens nothing.
pub fn judge(
    ctx: &GateContext<'_>,
    reader: &Identity,
    path: &str,
    candidate: &Candidate,
    now: i64,
) -> Judgement {
    let refused = |denial: Denial, about_this_path: bool| Judgement::Refused {
        denial,
        about_this_path,
    };
    let grant = match ctx
        .verifier
        .verify_for_use(&candidate.token, reader, ctx.audience, now)
    {
        Ok(g) => g,
        Err(e) => {
            // Stored grants were verified on receipt, so their claims are trustworthy enough
            // to rank the explanation.
            let stored = candidate.stored.as_ref();
            let about_this_path = stored.is_some_and(|g| g.covers_path(path));
            let id = stored.map(|g| g.claims().jti.clone());
            return refused(Denial::from_grant(e, id), about_this_path);
        }
    };
    let id = Some(grant.id().to_string());
    if let Some(w) = ctx.grants.withdrawal(grant.id()) {
        let message = match w {
            Withdrawal::Dropped { reason, .. } => {
                format!(
                    "grant {} was revoked: {reason}; request a new one",
                    grant.id()
                )
            }
            Withdrawal::Revoked { by, .. } => {
                format!(
                    "grant {} was revoked by {by}; request a new one",
                    grant.id()
                )
            }
        };
        let mut d = Denial::new(DenialCode::GrantRevoked, message);
        d.grant_id = id;
        return refused(d, grant.covers_path(path));
    }
    if !grant.covers_path(path) {
        let mut d = Denial::new(
            DenialCode::PathNotCovered,
            format!(
                "grant {} covers {}, not {path}",
                grant.id(),
                grant.claims().paths.join(", ")
            ),
        );
        d.grant_id = id;
        return refused(d, false);
    }
    match resolve_profile(
        &grant.claims().redaction,
        ctx.profiles,
        ctx.allow_raw,
        ctx.agent,
    ) {
        Ok(profile) => Judgement::Usable {
            grant: Box::new(grant),
            profile,
        },
        Err(message) => {
            let mut d = Denial::new(DenialCode::ProfileUnavailable, message);
            d.grant_id = id;
            refused(d, true)
        }
    }
}

/// The grants `reader` may use now on this agent, whatever the path (for a listing, which then
/// shows only the files they cover): every check of the verifier and withdrawal, and the
/// profile (a grant whose profile the agent refuses serves no read, so it lists nothing: a
/// listing reveals nothing a read would not). None usable: the best-ranked denial ([`rank`],
/// as for a path no grant covers), so the reader learns why, as for a read.
pub fn usable_grants(
    ctx: &GateContext<'_>,
    reader: &Identity,
    presented_token: Option<&str>,
    now: i64,
) -> Result<Vec<VerifiedGrant>, Denial> {
    let mut usable = Vec::new();
    let mut best: Option<(u8, Denial)> = None;
    for candidate in candidates(ctx, reader, presented_token)? {
        let id = candidate.stored.as_ref().map(|g| g.claims().jti.clone());
        let denial = match ctx
            .verifier
            .verify_for_use(&candidate.token, reader, ctx.audience, now)
        {
            Ok(grant) => match ctx.grants.withdrawal(grant.id()) {
                // A grant whose profile the agent refuses serves no read, so it lists nothing
                // either (a listing reveals nothing a read would not).
                None => match resolve_profile(
                    &grant.claims().redaction,
                    ctx.profiles,
                    ctx.allow_raw,
                    ctx.agent,
                ) {
                    Ok(_) => {
                        usable.push(grant);
                        continue;
                    }
                    Err(message) => {
                        let mut d = Denial::new(DenialCode::ProfileUnavailable, message);
                        d.grant_id = Some(grant.id().to_string());
                        d
                    }
                },
                Some(_) => {
                    let mut d = Denial::new(
                        DenialCode::GrantRevoked,
                        format!("grant {} was revoked; request a new one", grant.id()),
                    );
                    d.grant_id = Some(grant.id().to_string());
                    d
                }
            },
            Err(e) => Denial::from_grant(e, id),
        };
        let r = rank(denial.code, true, candidate.presented);
        if best.as_ref().is_none_or(|(b, _)| r < *b) {
            best = Some((r, denial));
        }
    }
    if !usable.is_empty() {
        return Ok(usable);
    }
    Err(best.map(|(_, d)| d).unwrap_or_else(|| {
        Denial::new(
            DenialCode::NoGrant,
            format!("you hold no usable grant on agent {}", ctx.agent),
        )
    }))
}

/// Decides one read request by `reader` for `requested_path` at `now`, optionally presenting a
/// token: the first usable candidate's file is opened beneath the roots (a refused open is the
/// answer); with none usable, the best-ranked denial ([`rank`]) is.
pub fn authorize(
    ctx: &GateContext<'_>,
    reader: &Identity,
    requested_path: &str,
    presented_token: Option<&str>,
    now: i64,
) -> Result<Authorized, Denial> {
    let path = normalise_request(requested_path).map_err(path_denial)?;
    let path_text = path.to_str().ok_or_else(|| {
        Denial::new(
            DenialCode::PathInvalid,
            "the path is not valid UTF-8".to_string(),
        )
    })?;
    let mut best: Option<(u8, Denial)> = None;
    for candidate in candidates(ctx, reader, presented_token)? {
        match judge(ctx, reader, path_text, &candidate, now) {
            Judgement::Usable { grant, profile } => {
                let file = open_beneath(ctx.roots, path_text).map_err(|e| {
                    let mut d = path_denial(e);
                    d.grant_id = Some(grant.id().to_string());
                    d
                })?;
                return Ok(Authorized {
                    grant: *grant,
                    file,
                    profile,
                });
            }
            Judgement::Refused {
                denial,
                about_this_path,
            } => {
                let r = rank(denial.code, about_this_path, candidate.presented);
                if best.as_ref().is_none_or(|(b, _)| r < *b) {
                    best = Some((r, denial));
                }
            }
        }
    }
    Err(best.map(|(_, d)| d).unwrap_or_else(|| {
        Denial::new(
            DenialCode::NoGrant,
            format!("you hold no usable grant on agent {}", ctx.agent),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_refusals_keep_the_verifiers_codes() {
        let id = || "g-1".to_string();
        let refusals = [
            GrantError::Malformed("x".into()),
            GrantError::UnknownKey("k".into()),
            GrantError::BadSignature,
            GrantError::BoundToAnotherKey { grant_id: id() },
            GrantError::WrongSubject {
                grant_id: id(),
                subject: "s".into(),
            },
            GrantError::WrongHost {
                grant_id: id(),
                host: "h".into(),
            },
            GrantError::NotYetValid {
                grant_id: id(),
                starts_in: "1m".into(),
            },
            GrantError::Expired {
                grant_id: id(),
                ago: "1m".into(),
            },
        ];
        for e in refusals {
            assert_eq!(DenialCode::of_grant_error(&e).as_str(), e.code(), "{e:?}");
        }
    }

    #[test]
    fn the_explanation_about_this_path_closest_to_working_ranks_first() {
        use DenialCode::*;
        // (code, about this path, presented) in the order they must rank.
        let order = [
            (ProfileUnavailable, true, false),
            (GrantNotYetValid, true, false),
            (GrantExpired, true, false),
            (GrantBadSignature, true, false),
            (PathNotCovered, false, false),
            (GrantExpired, false, false),
        ];
        let ranks: Vec<u8> = order.iter().map(|&(c, p, t)| rank(c, p, t)).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert_eq!(
            rank(GrantRevoked, true, false),
            rank(GrantExpired, true, false)
        );
        // A presented token is judged alone: its refusal ranks first whatever it is.
        assert_eq!(rank(GrantBadSignature, false, true), 0);
    }

    use loggate_core::grant::{GrantClaims, SigningKey};
    use std::collections::HashMap;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000;
    /// `spiffe://loggate.local/user/alice`, the fuzz targets' reader.
    const ALICE_DER: &[u8] = include_bytes!("../../fuzz/fixtures/alice.der");

    /// The grants an agent holds, without its database.
    #[derive(Default)]
    struct Held {
        grants: Vec<ReceivedGrant>,
        withdrawn: HashMap<String, Withdrawal>,
    }

    impl GrantLookup for Held {
        fn grants_for(&self, subject: &str) -> Vec<ReceivedGrant> {
            let mine = self.grants.iter().filter(|g| g.claims().sub == subject);
            mine.cloned().collect()
        }
        fn withdrawal(&self, id: &str) -> Option<Withdrawal> {
            self.withdrawn.get(id).cloned()
        }
    }

    /// An agent `web-1` with one root holding `app/api.log`, and alice.
    struct Agent {
        _dir: tempfile::TempDir,
        root: String,
        roots: Vec<LogRoot>,
        key: SigningKey,
        verifier: GrantVerifier,
        audience: Audience,
        profiles: Profiles,
        alice: Identity,
    }

    /// A grant for the table: `id`, its globs (`{root}` is replaced), its window relative to
    /// NOW and its profile.
    #[derive(Clone, Copy)]
    struct Spec {
        id: &'static str,
        glob: &'static str,
        from: i64,
        to: i64,
        profile: &'static str,
    }

    const fn spec(id: &'static str, glob: &'static str, from: i64, to: i64) -> Spec {
        Spec {
            id,
            glob,
            from,
            to,
            profile: "default",
        }
    }

    impl Agent {
        fn new() -> Agent {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("app")).expect("mkdir");
            std::fs::write(dir.path().join("app/api.log"), "GET /\n").expect("write");
            let roots = vec![LogRoot::new(dir.path()).expect("root")];
            let key = SigningKey::generate().expect("key");
            Agent {
                root: roots[0].path().display().to_string(),
                roots,
                verifier: GrantVerifier::new(
                    vec![key.verifying_key().clone()],
                    Duration::from_secs(60),
                ),
                key,
                audience: Audience {
                    agent_id: loggate_core::identity::AgentId::new("web-1").expect("agent id"),
                    labels: vec![],
                },
                profiles: Profiles::builtin(),
                alice: Identity::from_certificate(ALICE_DER, "loggate.local").expect("alice"),
                _dir: dir,
            }
        }

        fn token(&self, s: Spec) -> String {
            self.key
                .sign(&GrantClaims {
                    jti: s.id.into(),
                    iss: "spiffe://loggate.local/controller".into(),
                    sub: self.alice.spiffe_id().into(),
                    iat: NOW + s.from,
                    nbf: NOW + s.from,
                    exp: NOW + s.to,
                    hosts: vec!["web-1".into()],
                    labels: vec![],
                    paths: vec![s.glob.replace("{root}", &self.root)],
                    units: vec![],
                    redaction: s.profile.into(),
                    reason: "T-1".into(),
                    approver: "spiffe://loggate.local/user/admin".into(),
                    key_sha256: self.alice.key_sha256_hex(),
                })
                .expect("sign")
        }

        /// Received (verified on receipt) while it was still valid, as the store holds it.
        fn received(&self, s: Spec) -> ReceivedGrant {
            self.verifier
                .verify_on_receipt(&self.token(s), &self.audience, NOW + s.from.min(0))
                .expect("receipt")
        }

        fn decide(&self, held: &Held, path: &str, presented: Option<&str>) -> Decision {
            let ctx = GateContext {
                agent: "web-1",
                verifier: &self.verifier,
                audience: &self.audience,
                grants: held,
                roots: &self.roots,
                profiles: &self.profiles,
                allow_raw: false,
            };
            let path = path.replace("{root}", &self.root);
            authorize(&ctx, &self.alice, &path, presented, NOW)
                .map(|a| a.grant.id().to_string())
                .map_err(|d| (d.code, d.grant_id))
        }
    }

    /// The granted grant's id, or the denial's code and the grant it is about.
    type Decision = Result<String, (DenialCode, Option<String>)>;

    const API: &str = "{root}/app/api.log";
    const GOOD: Spec = spec("g-good", "{root}/app/*.log", -60, 3600);
    const OTHER_PATH: Spec = spec("g-other", "{root}/db/*.log", -60, 3600);
    const ENDED: Spec = spec("g-ended", "{root}/app/*.log", -7200, -60);
    const LATER: Spec = spec("g-later", "{root}/app/*.log", 600, 3600);
    const STRICT: Spec = Spec {
        profile: "strict",
        ..spec("g-strict", "{root}/app/*.log", -60, 3600)
    };
    const RAW: Spec = Spec {
        profile: "raw",
        ..spec("g-raw", "{root}/app/*.log", -60, 3600)
    };
    const REVOKED: Spec = spec("g-revoked", "{root}/app/*.log", -60, 3600);
    const DROPPED: Spec = spec("g-dropped", "{root}/app/*.log", -60, 3600);
    const OUTSIDE: Spec = spec("g-outside", "/elsewhere/*.log", -60, 3600);

    /// The gate's decision over the grants held, in either order: the usable grant, else the
    /// explanation closest to working for this path, with the grant it is about.
    #[test]
    fn the_gate_serves_a_usable_grant_else_explains_the_closest_one() {
        use DenialCode::*;
        type Expected = Result<&'static str, (DenialCode, Option<&'static str>)>;
        let cases: &[(&str, &[Spec], &str, Expected)] = &[
            ("one grant for the path", &[GOOD], API, Ok("g-good")),
            ("no grant at all", &[], API, Err((NoGrant, None))),
            (
                "a grant for another path",
                &[OTHER_PATH],
                API,
                Err((PathNotCovered, Some("g-other"))),
            ),
            (
                "an ended grant for the path beats one for another path",
                &[OTHER_PATH, ENDED],
                API,
                Err((GrantExpired, Some("g-ended"))),
            ),
            (
                "a grant starting later beats an ended one",
                &[ENDED, LATER],
                API,
                Err((GrantNotYetValid, Some("g-later"))),
            ),
            (
                "an active grant with a profile the agent lacks beats one starting later",
                &[LATER, STRICT, ENDED],
                API,
                Err((ProfileUnavailable, Some("g-strict"))),
            ),
            (
                "raw is refused where the agent does not allow it",
                &[RAW],
                API,
                Err((ProfileUnavailable, Some("g-raw"))),
            ),
            (
                "a revoked grant is refused, about this path",
                &[OTHER_PATH, REVOKED],
                API,
                Err((GrantRevoked, Some("g-revoked"))),
            ),
            (
                "a grant dropped by a resync is refused as revoked",
                &[DROPPED],
                API,
                Err((GrantRevoked, Some("g-dropped"))),
            ),
            (
                "a usable grant wins over every refused one",
                &[REVOKED, ENDED, GOOD, STRICT, OTHER_PATH],
                API,
                Ok("g-good"),
            ),
            (
                "a covered path outside the roots",
                &[OUTSIDE],
                "/elsewhere/x.log",
                Err((PathOutsideRoots, Some("g-outside"))),
            ),
            (
                "a covered path that does not exist",
                &[GOOD],
                "{root}/app/gone.log",
                Err((PathNotFound, Some("g-good"))),
            ),
            (
                "traversal is refused before any grant is looked at",
                &[GOOD],
                "{root}/app/../app/api.log",
                Err((PathTraversal, None)),
            ),
        ];
        let agent = Agent::new();
        for (name, specs, path, expected) in cases {
            let mut grants: Vec<ReceivedGrant> = specs.iter().map(|s| agent.received(*s)).collect();
            let withdrawn = HashMap::from([
                (
                    REVOKED.id.to_string(),
                    Withdrawal::Revoked {
                        by: "spiffe://loggate.local/user/admin".into(),
                        reason: String::new(),
                    },
                ),
                (
                    DROPPED.id.to_string(),
                    Withdrawal::Dropped {
                        by: "the agent's resync".into(),
                        reason: "dropped".into(),
                    },
                ),
            ]);
            let expected = expected
                .map(str::to_string)
                .map_err(|(c, id)| (c, id.map(str::to_string)));
            for order in ["as listed", "reversed"] {
                let held = Held {
                    grants: grants.clone(),
                    withdrawn: withdrawn.clone(),
                };
                assert_eq!(
                    agent.decide(&held, path, None),
                    expected,
                    "{name} ({order})"
                );
                grants.reverse();
            }
        }
    }

    /// A listing uses only the grants a read could use: one whose profile the agent refuses
    /// (raw where it is not allowed, a profile it lacks) lists nothing, and says why.
    #[test]
    fn a_listing_uses_no_grant_whose_profile_the_agent_refuses() {
        let agent = Agent::new();
        let ctx_for = |held: &Held| -> Result<Vec<String>, (DenialCode, Option<String>)> {
            let ctx = GateContext {
                agent: "web-1",
                verifier: &agent.verifier,
                audience: &agent.audience,
                grants: held,
                roots: &agent.roots,
                profiles: &agent.profiles,
                allow_raw: false,
            };
            usable_grants(&ctx, &agent.alice, None, NOW)
                .map(|g| g.iter().map(|g| g.id().to_string()).collect())
                .map_err(|d| (d.code, d.grant_id))
        };
        let held = |specs: &[Spec]| Held {
            grants: specs.iter().map(|s| agent.received(*s)).collect(),
            ..Held::default()
        };
        assert_eq!(
            ctx_for(&held(&[RAW])),
            Err((DenialCode::ProfileUnavailable, Some("g-raw".into())))
        );
        assert_eq!(
            ctx_for(&held(&[STRICT])),
            Err((DenialCode::ProfileUnavailable, Some("g-strict".into())))
        );
        assert_eq!(ctx_for(&held(&[RAW, GOOD])), Ok(vec!["g-good".into()]));
    }

    /// A presented token is judged alone: its own refusal is the answer, even when the reader
    /// holds a usable grant.
    #[test]
    fn a_presented_token_is_judged_alone() {
        use DenialCode::*;
        let agent = Agent::new();
        let held = Held {
            grants: vec![agent.received(GOOD)],
            ..Held::default()
        };
        let ended = agent.token(ENDED);
        let later = agent.token(LATER);
        let good = agent.token(GOOD);
        let cases: &[(&str, Decision)] = &[
            (&good, Ok("g-good".into())),
            (&ended, Err((GrantExpired, None))),
            (&later, Err((GrantNotYetValid, None))),
            ("not a token", Err((GrantMalformed, None))),
        ];
        for (token, expected) in cases {
            assert_eq!(&agent.decide(&held, API, Some(token)), expected, "{token}");
        }
        // A presented token for a grant the agent holds names it when refused.
        let held = Held {
            grants: vec![agent.received(ENDED)],
            ..Held::default()
        };
        assert_eq!(
            agent.decide(&held, API, Some(&ended)),
            Err((GrantExpired, Some("g-ended".into())))
        );
    }
}
