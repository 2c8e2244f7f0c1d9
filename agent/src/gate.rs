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

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: &'static str,
    pub message: String,
    pub grant_id: Option<String>,
}

impl Denial {
    fn new(code: &'static str, message: String) -> Self {
        Denial {
            code,
            message,
            grant_id: None,
        }
    }

    fn from_grant(e: GrantError, grant_id: Option<String>) -> Self {
        Denial {
            code: e.code(),
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
    if !matches_path {
        return if d.code == "path_not_covered" { 5 } else { 6 };
    }
    match d.code {
        "profile_unavailable" => 0,
        "grant_not_yet_valid" => 1,
        "grant_expired" | "grant_revoked" => 2,
        _ => 3,
    }
}

fn path_denial(e: PathDenied) -> Denial {
    let code = match e {
        PathDenied::NotAbsolute | PathDenied::InvalidPath(_) => "path_invalid",
        PathDenied::Traversal => "path_traversal",
        PathDenied::OutsideRoots(_) => "path_outside_roots",
        PathDenied::SymlinkRefused => "path_symlink",
        PathDenied::NotFound => "path_not_found",
        PathDenied::NotRegularFile { .. } => "path_not_regular_file",
        PathDenied::HardLinked(_) => "path_hard_linked",
        PathDenied::Io(_) => "path_io_error",
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
    let path_text = path
        .to_str()
        .ok_or_else(|| Denial::new("path_invalid", "the path is not valid UTF-8".to_string()))?;
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
            "no_grant",
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
        if let Some(r) = shared.grants.revocation(grant.id()) {
            let mut d = Denial::new(
                "grant_revoked",
                format!(
                    "grant {} was revoked by {}; request a new one",
                    grant.id(),
                    r.by
                ),
            );
            d.grant_id = id;
            consider(d, grant.covers_path(path_text), *presented);
            continue;
        }
        if !grant.covers_path(path_text) {
            let mut d = Denial::new(
                "path_not_covered",
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
                let mut d = Denial::new("profile_unavailable", message);
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
            "no_grant",
            format!("you hold no usable grant on agent {agent}"),
        )
    }))
}
