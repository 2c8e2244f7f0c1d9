//! The gate: the one place that decides whether a request may read a file.
//!
//! A request passes, in order: TLS identity (a user certificate from our CA) → request limits →
//! path normalisation → grant selection and verification (signature over the reader's own key,
//! subject, host, time window, revocation, path glob, redaction profile) → safe open beneath the
//! roots. The result is an [`Authorized`] read, or a [`Denial`] with a stable code and one
//! sentence for the user; both go to the audit stream before anything else happens.

use crate::fs_access::{normalise_request, open_beneath, OpenedLog, PathDenied};
use crate::Shared;
use loggate_core::grant::{unix_now, GrantError, VerifiedGrant};
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

    fn from_grant(e: GrantError, grant_id: Option<String>) -> Self {
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

/// Rank of a denial when several grants fail (lower wins): the most useful explanation is
/// about a grant for this path, and among those the one closest to working — an active grant
/// the agent cannot serve (its profile), then one that starts later, then one that ended.
fn rank(d: &Denial, matches_path: bool) -> u8 {
    match (matches_path, d.code) {
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

/// Decides one read request by `reader` for `requested_path`, optionally presenting a token.
pub fn authorize(
    shared: &Shared,
    reader: &Identity,
    requested_path: &str,
    presented_token: Option<&str>,
) -> Result<Authorized, Denial> {
    let path = normalise_request(requested_path).map_err(path_denial)?;
    let path_text = path.to_str().ok_or_else(|| {
        Denial::new(
            DenialCode::PathInvalid,
            "the path is not valid UTF-8".to_string(),
        )
    })?;
    let now = unix_now();
    let agent = &shared.config.id;

    // Candidates: a presented token alone (the reader chose it: it is judged on its own, never
    // quietly replaced by another grant), else the pushed grants issued to this reader.
    let stored = shared.grants.grants_for(reader.spiffe_id());
    let candidates: Vec<(String, bool)> = match presented_token {
        Some(t) => vec![(t.to_string(), true)],
        None => stored
            .iter()
            .map(|g| (g.token().to_string(), false))
            .collect(),
    };
    if candidates.is_empty() {
        return Err(Denial::new(
            DenialCode::NoGrant,
            format!("you ({reader}) hold no grant on agent {agent}; ask an admin to issue you one"),
        ));
    }

    let mut best: Option<(u8, Denial)> = None;
    let mut consider = |denial: Denial, matches_path: bool, presented: bool| {
        let r = if presented {
            0
        } else {
            rank(&denial, matches_path)
        };
        if best.as_ref().is_none_or(|(b, _)| r < *b) {
            best = Some((r, denial));
        }
    };
    for (token, presented) in &candidates {
        let grant = match shared
            .verifier
            .verify_for_use(token, reader, &shared.audience, now)
        {
            Ok(g) => g,
            Err(e) => {
                // Stored grants were verified on receipt, so their claims are trustworthy
                // enough to rank the explanation.
                let stored_grant = stored.iter().find(|g| g.token() == token);
                let matches_path = stored_grant.is_some_and(|g| g.covers_path(path_text));
                let id = stored_grant.map(|g| g.claims().jti.clone());
                consider(Denial::from_grant(e, id), matches_path, *presented);
                continue;
            }
        };
        let id = Some(grant.id().to_string());
        // A grant a resync dropped (the controller no longer holds it) is refused as revoked:
        // its token still verifies, and nobody could revoke it any more.
        if let Some(r) = shared.grants.revocation(grant.id()) {
            let message = if shared.grants.dropped(grant.id()).is_some() {
                format!(
                    "grant {} was revoked: {}; request a new one",
                    grant.id(),
                    r.reason
                )
            } else {
                format!(
                    "grant {} was revoked by {}; request a new one",
                    grant.id(),
                    r.by
                )
            };
            let mut d = Denial::new(DenialCode::GrantRevoked, message);
            d.grant_id = id;
            consider(d, grant.covers_path(path_text), *presented);
            continue;
        }
        if !grant.covers_path(path_text) {
            let mut d = Denial::new(
                DenialCode::PathNotCovered,
                format!(
                    "grant {} covers {}, not {path_text}",
                    grant.id(),
                    grant.claims().paths.join(", ")
                ),
            );
            d.grant_id = id;
            consider(d, false, *presented);
            continue;
        }
        let profile = match resolve_profile(
            &grant.claims().redaction,
            &shared.config.profiles,
            shared.config.allow_raw,
            agent,
        ) {
            Ok(p) => p,
            Err(message) => {
                let mut d = Denial::new(DenialCode::ProfileUnavailable, message);
                d.grant_id = id;
                consider(d, true, *presented);
                continue;
            }
        };
        let file = open_beneath(&shared.config.roots, path_text).map_err(|e| {
            let mut d = path_denial(e);
            d.grant_id = id.clone();
            d
        })?;
        return Ok(Authorized {
            grant,
            file,
            profile,
        });
    }
    Err(best.map(|(_, d)| d).unwrap_or_else(|| {
        Denial::new(
            DenialCode::NoGrant,
            format!("you hold no usable grant on agent {agent}"),
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
        let d = |code| Denial::new(code, String::new());
        let order = [
            rank(&d(DenialCode::ProfileUnavailable), true),
            rank(&d(DenialCode::GrantNotYetValid), true),
            rank(&d(DenialCode::GrantExpired), true),
            rank(&d(DenialCode::GrantBadSignature), true),
            rank(&d(DenialCode::PathNotCovered), false),
            rank(&d(DenialCode::GrantExpired), false),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(
            rank(&d(DenialCode::GrantRevoked), true),
            rank(&d(DenialCode::GrantExpired), true)
        );
    }
}
