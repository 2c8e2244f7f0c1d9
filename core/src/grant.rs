//! Grants: signed, time-limited permissions to read log files on some agents.
//!
//! A grant travels as a PASETO `v4.public` token (Ed25519). Its claims are [`GrantClaims`]; its
//! footer names the signing key (`{"kid":"k4.pid…"}`, authenticated but not secret). The SHA-256 of
//! the subject's certificate public key is the token's *implicit assertion*: it is signed but not
//! sent, so the signature only verifies when the reader presents the certificate key the grant was
//! issued for. The same hash is also a claim (`key_sha256`) so a denial can say precisely that the
//! grant is bound to another key rather than merely "bad signature" — said only once the token
//! is shown to verify for the key it names.
//!
//! Claims are parsed only from a payload whose signature verified: an altered token is a bad
//! signature, never a parse error of what the attacker wrote. The one field read before that is
//! the claimed binding of a pushed grant (the key hash to verify with), and a payload it cannot
//! be read from counts as a bad signature.
//!
//! [`GrantVerifier`] is the one place where tokens are checked, for the controller and the agent
//! alike. Its results, [`ReceivedGrant`] and [`VerifiedGrant`], can only be built here: code that
//! serves files takes a `VerifiedGrant`, never a token.

use crate::identity::{string_id, AgentId, Identity};
use globset::{GlobBuilder, GlobMatcher};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use pasetors::Public;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A grant's id: `g-` and 1 to 64 lowercase letters, digits or `-` (the controller issues `g-`
/// and 16 hex digits, [`new_grant_id`]). Claims carry it as `jti`; a signed grant whose `jti`
/// is not one is malformed, so no id with control characters or of any size reaches the
/// stores, the audit stream or a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(String);

/// A text that is not a [`GrantId`]; the message quotes (at most 80 characters of) it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a grant id (g- and up to 64 lowercase letters, digits or '-', e.g. g-0123456789abcdef)")]
pub struct GrantIdError(String);

impl GrantId {
    /// Checks the shape (`g-` and 1 to 64 lowercase letters, digits or `-`) and refuses anything
    /// else with a [`GrantIdError`] quoting at most 80 characters of it.
    pub fn new(text: impl Into<String>) -> Result<GrantId, GrantIdError> {
        let text = text.into();
        let ok = text.strip_prefix("g-").is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 64
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if ok {
            Ok(GrantId(text))
        } else {
            let cut: String = text.chars().take(80).collect();
            Err(GrantIdError(format!("{cut:?}")))
        }
    }
}

string_id!(GrantId);

/// The claims inside a grant token. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// Grant id (`g-` + 16 hex digits).
    pub jti: String,
    /// The controller's SPIFFE ID.
    pub iss: String,
    /// The reader's SPIFFE ID.
    pub sub: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not valid before (Unix seconds); the verifier tolerates its configured clock skew here only.
    pub nbf: i64,
    /// Expiry (Unix seconds): not valid at or after it, with no skew tolerated.
    pub exp: i64,
    /// Agent ids this grant covers.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Agent labels (`key=value`); an agent carrying any of them is covered.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Absolute path globs (`*` stays within one path component, `**` crosses them). Empty in
    /// a grant for journal units only: such a grant covers no file. Always serialised, so an
    /// agent from before `units` refuses a units-only grant on receipt ("grant names no
    /// paths") rather than reading it as something else: it fails closed.
    pub paths: Vec<String>,
    /// systemd journal units this grant covers ([`UnitName`]s, exact: no globs). A unit grant
    /// never covers a file and a path grant never covers the journal. Absent from tokens that
    /// name no unit, so a file grant's token is exactly what it was before units existed, and
    /// older tokens (without the claim) still verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<String>,
    /// Name of the redaction profile the agent applies.
    pub redaction: String,
    /// Why the reader asked for access, as they wrote it; recorded in audit records.
    pub reason: String,
    /// Who issued or approved it (SPIFFE ID).
    pub approver: String,
    /// Lowercase hex SHA-256 of the subject's certificate SubjectPublicKeyInfo.
    pub key_sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    kid: String,
}

/// Why a grant token was refused. Each variant is one precise reason, shown to the user and
/// written to the audit stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The token or its claims cannot be decoded or are out of shape (the detail says what).
    #[error("the grant token is malformed ({0})")]
    Malformed(String),
    /// Signed by a key (by its PASERK id) that is not among this verifier's trusted keys.
    #[error("the grant is signed by key {0}, which this agent does not trust")]
    UnknownKey(String),
    /// The signature does not verify with the key the footer names.
    #[error("the grant's signature is invalid")]
    BadSignature,
    #[error("grant {grant_id} is bound to another certificate key; present the certificate it was issued for")]
    /// The token is bound to a certificate key other than the presenter's (`key_sha256`).
    BoundToAnotherKey {
        /// The grant's id.
        grant_id: String,
    },
    #[error("grant {grant_id} was issued to {subject}, not to you")]
    /// The grant's `sub` is not the presenter's SPIFFE ID.
    WrongSubject {
        /// The grant's id.
        grant_id: String,
        /// The SPIFFE ID the grant was issued to.
        subject: String,
    },
    #[error("grant {grant_id} does not cover host {host}")]
    /// Neither the grant's `hosts` nor its `labels` cover this agent.
    WrongHost {
        /// The grant's id.
        grant_id: String,
        /// This agent's id.
        host: String,
    },
    #[error("grant {grant_id} is not valid yet; it starts in {starts_in}")]
    /// The grant's `nbf`, less the tolerated clock skew, is still in the future.
    NotYetValid {
        /// The grant's id.
        grant_id: String,
        /// How long until it starts, rounded for people ([`rough_duration`]).
        starts_in: String,
    },
    #[error("grant {grant_id} expired {ago} ago; request a new one")]
    /// The time is at or after the grant's `exp`.
    Expired {
        /// The grant's id.
        grant_id: String,
        /// How long ago it expired, rounded for people ([`rough_duration`]).
        ago: String,
    },
}

impl GrantError {
    /// A short stable code for audit records and tests.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Malformed(_) => "grant_malformed",
            GrantError::UnknownKey(_) => "grant_unknown_key",
            GrantError::BadSignature => "grant_bad_signature",
            GrantError::BoundToAnotherKey { .. } => "grant_bound_to_another_key",
            GrantError::WrongSubject { .. } => "grant_wrong_subject",
            GrantError::WrongHost { .. } => "grant_wrong_host",
            GrantError::NotYetValid { .. } => "grant_not_yet_valid",
            GrantError::Expired { .. } => "grant_expired",
        }
    }
}

/// Human-friendly rounding of a duration for messages ("3m", "2h5m", "40s").
pub fn rough_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The current time in Unix seconds (see [`unix_seconds`]).
pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// A time in Unix seconds; times before the epoch are negative, and times beyond `i64` saturate.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The controller's Ed25519 grant-signing key.
pub struct SigningKey {
    secret: AsymmetricSecretKey<V4>,
    public: VerifyingKey,
}

impl SigningKey {
    /// Generates a fresh random Ed25519 key (when the controller's signing key is created, and in tests).
    pub fn generate() -> Result<Self, GrantError> {
        let pair = AsymmetricKeyPair::<V4>::generate()
            .map_err(|_| GrantError::Malformed("key generation failed".into()))?;
        Ok(Self {
            public: VerifyingKey::new(pair.public),
            secret: pair.secret,
        })
    }

    /// Reads a PASERK `k4.secret.…` string.
    pub fn from_paserk(text: &str) -> Result<Self, GrantError> {
        let secret = AsymmetricSecretKey::<V4>::try_from(text.trim())
            .map_err(|_| GrantError::Malformed("not a k4.secret PASERK".into()))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|_| GrantError::Malformed("bad secret key".into()))?;
        Ok(Self {
            public: VerifyingKey::new(public),
            secret,
        })
    }

    /// The key as a PASERK `k4.secret.…` string, for storing in the controller's key file: secret,
    /// never log it.
    pub fn to_paserk(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.secret.fmt(&mut out);
        out
    }

    /// The public half, which agents are configured to trust.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `claims`, binding the token to `claims.key_sha256` as the implicit assertion.
    pub fn sign(&self, claims: &GrantClaims) -> Result<String, GrantError> {
        let binding = decode_key_hash(&claims.key_sha256)?;
        let message =
            serde_json::to_vec(claims).map_err(|e| GrantError::Malformed(e.to_string()))?;
        let footer = serde_json::to_vec(&Footer {
            kid: self.public.kid.clone(),
        })
        .map_err(|e| GrantError::Malformed(e.to_string()))?;
        PublicToken::sign(&self.secret, &message, Some(&footer), Some(&binding))
            .map_err(|e| GrantError::Malformed(format!("signing failed: {e:?}")))
    }
}

/// A public key that grants may be signed with, and its PASERK id (`k4.pid.…`).
#[derive(Clone)]
pub struct VerifyingKey {
    public: AsymmetricPublicKey<V4>,
    kid: String,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kid)
    }
}

impl VerifyingKey {
    fn new(public: AsymmetricPublicKey<V4>) -> Self {
        let mut kid = String::new();
        let _ = Id::from(&public).fmt(&mut kid);
        Self { public, kid }
    }

    /// Reads a PASERK `k4.public.…` string.
    pub fn from_paserk(text: &str) -> Result<Self, GrantError> {
        AsymmetricPublicKey::<V4>::try_from(text.trim())
            .map(Self::new)
            .map_err(|_| GrantError::Malformed("not a k4.public PASERK".into()))
    }

    /// The key as a PASERK `k4.public.…` string, for the agents' configuration.
    pub fn to_paserk(&self) -> String {
        let mut out = String::new();
        let _ = self.public.fmt(&mut out);
        out
    }

    /// The key's PASERK id (`k4.pid.…`), carried in each token's footer to pick the verifying key.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

fn decode_key_hash(hex_text: &str) -> Result<[u8; 32], GrantError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| GrantError::Malformed("key_sha256 is not 64 hex digits".into()))?;
    Ok(out)
}

/// Where a grant is being checked: the agent's id and labels.
#[derive(Debug, Clone)]
pub struct Audience {
    /// This agent's id, matched against a grant's `hosts`.
    pub agent_id: AgentId,
    /// This agent's labels (`key=value`), matched against a grant's `labels`.
    pub labels: Vec<String>,
}

/// A grant whose signature is valid for its own binding and that covers this agent; what an
/// agent stores when the controller pushes a grant. Not yet usable for reading: see
/// [`GrantVerifier::verify_for_use`].
#[derive(Debug, Clone)]
pub struct ReceivedGrant {
    token: String,
    id: GrantId,
    claims: GrantClaims,
    globs: Vec<GlobMatcher>,
}

impl ReceivedGrant {
    /// The grant's claims as signed; checked for this agent but not yet for a reader or a time.
    pub fn claims(&self) -> &GrantClaims {
        &self.claims
    }
    /// `claims().jti`, checked.
    pub fn id(&self) -> &GrantId {
        &self.id
    }
    /// The signed token as received, so it can be verified again at each use.
    pub fn token(&self) -> &str {
        &self.token
    }
    /// Whether a normalised absolute path is matched by one of the grant's globs (compiled
    /// once, on receipt).
    pub fn covers_path(&self, path: &str) -> bool {
        self.globs.iter().any(|g| g.is_match(path))
    }
    /// Whether the grant names this journal unit (exactly).
    pub fn covers_unit(&self, unit: &UnitName) -> bool {
        self.claims.units.iter().any(|u| u == unit.as_str())
    }
}

/// A grant that passed every check for one reader on this agent at one moment. Only
/// [`GrantVerifier::verify_for_use`] builds it.
#[derive(Debug, Clone)]
pub struct VerifiedGrant {
    id: GrantId,
    claims: GrantClaims,
    globs: Vec<GlobMatcher>,
}

impl VerifiedGrant {
    /// The claims as signed and verified.
    pub fn claims(&self) -> &GrantClaims {
        &self.claims
    }
    /// `claims().jti`, checked.
    pub fn id(&self) -> &GrantId {
        &self.id
    }
    /// The grant's expiry (Unix seconds); a stream reading under it is cut at this moment.
    pub fn not_after(&self) -> i64 {
        self.claims.exp
    }
    /// Whether a normalised absolute path is matched by one of the grant's globs.
    pub fn covers_path(&self, path: &str) -> bool {
        self.globs.iter().any(|g| g.is_match(path))
    }
    /// Whether the grant names this journal unit (exactly: a grant's units hold no globs).
    pub fn covers_unit(&self, unit: &UnitName) -> bool {
        self.claims.units.iter().any(|u| u == unit.as_str())
    }
}

/// What a grant (or a request) allows, as the audit stream names it: its path globs, then
/// `journal:<unit>` for each journal unit (the resource name of a journal read).
pub fn resource_names(paths: &[String], units: &[String]) -> Vec<String> {
    paths
        .iter()
        .cloned()
        .chain(units.iter().map(|u| format!("journal:{u}")))
        .collect()
}

/// The unit types systemd knows, by suffix: a unit name must end in one of them.
pub const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// The longest unit name systemd accepts (`UNIT_NAME_MAX` less its NUL).
pub const MAX_UNIT_NAME_LEN: usize = 255;

/// A systemd unit name checked against systemd's own rules (`unit_name_is_valid`): 1 to 255
/// bytes of ASCII letters, digits and `:-_.\`, a non-empty name, at most one `@` followed by a
/// non-empty instance, and a known type suffix ([`UNIT_SUFFIXES`]).
///
/// Why this strict: unit names come from readers (a read request), requesters and grants, and
/// the agent passes one to `journalctl --unit=`, which takes a glob when the text holds `*`, `?`
/// or `[`. None of those characters (nor `/`, a space, a control character or a leading `-`)
/// can be in a `UnitName`, so a reader can never widen a read to other units.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName(String);

/// A text that is not a [`UnitName`]; the message quotes (at most 80 characters of) it and
/// says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a systemd unit name: {why}")]
pub struct UnitNameError {
    shown: String,
    why: &'static str,
}

impl UnitName {
    /// Checks `text` against systemd's unit-name rules (see [`UnitName`]).
    pub fn new(text: &str) -> Result<UnitName, UnitNameError> {
        let refuse = |why| {
            let cut: String = text.chars().take(80).collect();
            Err(UnitNameError {
                shown: format!("{cut:?}"),
                why,
            })
        };
        if text.is_empty() || text.len() > MAX_UNIT_NAME_LEN {
            return refuse("it must be 1 to 255 characters long");
        }
        if text.contains(['*', '?', '[', ']']) {
            return refuse(
                "it holds a glob character (*, ?, [ or ]); name one unit exactly, e.g. nginx.service",
            );
        }
        if !text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\' | b'@')
        }) {
            return refuse("only ASCII letters, digits and :-_.\\@ are allowed");
        }
        let Some((stem, suffix)) = text.rsplit_once('.') else {
            return refuse("it needs a type suffix such as .service");
        };
        if !UNIT_SUFFIXES.contains(&suffix) {
            return refuse("its type suffix is not one systemd knows (.service, .socket, .timer, .scope, .slice, .mount, …)");
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) => (p, Some(i)),
            None => (stem, None),
        };
        // A leading '-' is systemd's own (`-.mount`, `-.slice`); it reaches journalctl only
        // inside `--unit=…`, never as an option of its own.
        if prefix.is_empty() || prefix.starts_with('.') {
            return refuse("its name part is empty or starts with '.'");
        }
        if let Some(instance) = instance {
            if instance.is_empty() || instance.contains('@') {
                return refuse("a template needs exactly one '@' and a non-empty instance");
            }
        }
        Ok(UnitName(text.to_string()))
    }

    /// The name as checked.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rule for a grant's `redaction` claim, owned by the redaction engine that defines the
/// profiles (one rule, no copy).
pub use loggate_redact::is_valid_redaction_name;

/// Compiles a grant path glob.
///
/// Contract: no element of a compiled glob matches `/` except `**` — `*`, `?` and character
/// classes stay within one path component, so a glob covers exactly as many components as it
/// spells out, plus what a `**` stands for. A glob that breaks this is refused (never quietly
/// rewritten), here, which is where the controller issues grants and where every verifier
/// compiles them:
///
/// - a `/` inside an alternation (`{…}`) would let one element span several components
///   (`/logs{/,x}app` covers `/logs/app`); it is refused, with a message naming the glob;
/// - a character class never matches `/`, whatever it lists: `[!x]` means "one character other
///   than `x` and `/`", as in POSIX `fnmatch` with `FNM_PATHNAME`. globset confines classes
///   this way under `literal_separator` (0.4.22); [`check_classes_exclude_separator`] proves it
///   on every compiled glob, so a globset that did not (the review saw `[!x]` cross `/`) makes
///   the glob refused rather than wider.
pub fn compile_path_glob(pattern: &str) -> Result<GlobMatcher, GrantError> {
    if !pattern.starts_with('/') {
        return Err(GrantError::Malformed(format!(
            "path glob {pattern:?} must be an absolute path (start with '/')"
        )));
    }
    if pattern.split('/').any(|c| c == "..") {
        return Err(GrantError::Malformed(format!(
            "path glob {pattern:?} must not contain '..'"
        )));
    }
    if separator_inside_alternation(pattern) {
        return Err(GrantError::Malformed(format!(
            "path glob {pattern:?} has a '/' inside {{…}}, which would let one element span \
             several path components; write one glob per alternative instead"
        )));
    }
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| GrantError::Malformed(format!("path glob {pattern:?}: {e}")))?;
    check_classes_exclude_separator(pattern, &glob)?;
    Ok(glob.compile_matcher())
}

/// Whether a `/`, escaped or not, occurs inside `{…}` in a glob, as globset parses it: `\`
/// escapes the next character outside classes, and a class (`[…]`, whose first member may be `]`)
/// holds `{`, `}` and `/` literally. A class is taken to end at its first closing `]`, never
/// later than globset ends it, so this scan sees at least every brace globset sees (a POSIX
/// `[[:name:]]` may make it see more, refusing a glob that was harmless: fail closed).
fn separator_inside_alternation(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            // An escaped '/' is still a '/'.
            '\\' => {
                let escaped = chars.next();
                if escaped == Some('/') && depth > 0 {
                    return true;
                }
            }
            '[' => {
                let mut first = true;
                for m in chars.by_ref() {
                    if first && (m == '!' || m == '^') {
                        continue;
                    }
                    if m == ']' && !first {
                        break;
                    }
                    first = false;
                }
            }
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth > 0 => return true,
            _ => {}
        }
    }
    false
}

/// Refuses a compiled glob whose matcher would let a character class match `/`.
///
/// The matcher's own regular expression decides every match, so that is what is checked: a
/// single-character element (`?`, a class) becomes a bracketed class there, and each must
/// exclude `/`; `**` compiles to `.` (any character), which is the one element allowed to
/// cross, and literal `/`s are the glob's own separators. Anything this cannot read is refused.
fn check_classes_exclude_separator(pattern: &str, glob: &globset::Glob) -> Result<(), GrantError> {
    use regex_syntax::ast::{parse::Parser, Ast};
    use regex_syntax::hir::{translate::TranslatorBuilder, Class, HirKind};

    fn class_matches_separator(regex: &str, class: &Ast) -> bool {
        let hir = TranslatorBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .translate(regex, class);
        match hir.as_ref().map(|h| h.kind()) {
            Ok(HirKind::Class(Class::Bytes(c))) => c
                .ranges()
                .iter()
                .any(|r| r.start() <= b'/' && b'/' <= r.end()),
            Ok(HirKind::Class(Class::Unicode(c))) => c
                .ranges()
                .iter()
                .any(|r| r.start() <= '/' && '/' <= r.end()),
            // A one-member class comes back as the literal it matches.
            Ok(HirKind::Literal(lit)) => lit.0.contains(&b'/'),
            // Anything else, or not translatable alone: cannot be shown to exclude '/'.
            _ => true,
        }
    }

    fn any_class_matches_separator(regex: &str, ast: &Ast) -> bool {
        match ast {
            Ast::ClassBracketed(_) | Ast::ClassPerl(_) | Ast::ClassUnicode(_) => {
                class_matches_separator(regex, ast)
            }
            Ast::Repetition(r) => any_class_matches_separator(regex, &r.ast),
            Ast::Group(g) => any_class_matches_separator(regex, &g.ast),
            Ast::Alternation(a) => a.asts.iter().any(|x| any_class_matches_separator(regex, x)),
            Ast::Concat(c) => c.asts.iter().any(|x| any_class_matches_separator(regex, x)),
            Ast::Empty(_) | Ast::Flags(_) | Ast::Literal(_) | Ast::Dot(_) | Ast::Assertion(_) => {
                false
            }
        }
    }

    let regex = glob.regex();
    let crosses = match Parser::new().parse(regex) {
        Ok(ast) => any_class_matches_separator(regex, &ast),
        Err(_) => true,
    };
    if crosses {
        return Err(GrantError::Malformed(format!(
            "path glob {pattern:?} has a character class that can match '/'; a class must stay \
             within one path component (list the characters it may match, or use ** to cross \
             components)"
        )));
    }
    Ok(())
}

/// Checks grant tokens against the trusted keys. The one verifier of the product.
#[derive(Debug, Clone)]
pub struct GrantVerifier {
    keys: Vec<VerifyingKey>,
    /// Tolerated clock skew, applied to the start of a grant only (an agent whose clock runs
    /// behind the controller's must not refuse a fresh grant; expiry is never extended).
    skew: i64,
}

/// Largest token accepted (bytes): grants are small; anything bigger is hostile.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

impl GrantVerifier {
    /// A verifier that trusts grants signed by any of `keys` and tolerates `skew` (whole seconds)
    /// of clock difference at a grant's start only.
    pub fn new(keys: Vec<VerifyingKey>, skew: Duration) -> Self {
        Self {
            keys,
            skew: i64::try_from(skew.as_secs()).unwrap_or(60),
        }
    }

    /// Decodes the token's structure and finds the trusted key its footer names. Reads nothing
    /// of the claims: they are parsed only from a verified payload ([`Self::verified_claims`]).
    fn open(&self, token: &str) -> Result<(UntrustedToken<Public, V4>, &VerifyingKey), GrantError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(GrantError::Malformed("token too large".into()));
        }
        let untrusted = UntrustedToken::<Public, V4>::try_from(token)
            .map_err(|_| GrantError::Malformed("not a v4.public PASETO".into()))?;
        let footer: Footer = serde_json::from_slice(untrusted.untrusted_footer())
            .map_err(|_| GrantError::Malformed("footer does not name a key".into()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == footer.kid)
            .ok_or_else(|| GrantError::UnknownKey(footer.kid.clone()))?;
        Ok((untrusted, key))
    }

    /// Verifies the signature for `binding` and only then parses the claims, from the payload
    /// the signature covers. A token whose payload was changed in any byte fails here as
    /// [`GrantError::BadSignature`], never as a parse error of the altered claims.
    fn verified_claims(
        untrusted: &UntrustedToken<Public, V4>,
        key: &VerifyingKey,
        binding: &[u8; 32],
    ) -> Result<GrantClaims, GrantError> {
        let trusted = PublicToken::verify(&key.public, untrusted, None, Some(binding))
            .map_err(|_| GrantError::BadSignature)?;
        // Signed by a trusted key yet not our claims: a controller bug, not an attacker.
        let claims: GrantClaims = serde_json::from_str(trusted.payload())
            .map_err(|e| GrantError::Malformed(format!("signed claims: {e}")))?;
        if decode_key_hash(&claims.key_sha256)? != *binding {
            return Err(GrantError::Malformed(
                "signed claims name another key than the token is bound to".into(),
            ));
        }
        Ok(claims)
    }

    /// The key hash a token says it is bound to, read from its *unverified* payload because
    /// the binding is the implicit assertion the signature is checked with (a pushed grant
    /// names no reader). Only this one field is looked at, and a payload it cannot be read from
    /// is reported as a bad signature: a genuine token always carries it, so that payload was
    /// altered.
    fn claimed_binding(untrusted: &UntrustedToken<Public, V4>) -> Result<[u8; 32], GrantError> {
        #[derive(Deserialize)]
        struct Binding {
            key_sha256: String,
        }
        let claimed: Binding = serde_json::from_slice(untrusted.untrusted_payload())
            .map_err(|_| GrantError::BadSignature)?;
        decode_key_hash(&claimed.key_sha256).map_err(|_| GrantError::BadSignature)
    }

    fn check_shape(claims: &GrantClaims) -> Result<(GrantId, Vec<GlobMatcher>), GrantError> {
        let id =
            GrantId::new(claims.jti.as_str()).map_err(|e| GrantError::Malformed(e.to_string()))?;
        if claims.paths.is_empty() && claims.units.is_empty() {
            return Err(GrantError::Malformed(
                "grant names no paths and no journal units".into(),
            ));
        }
        if let Some(bad) = claims.units.iter().find_map(|u| UnitName::new(u).err()) {
            return Err(GrantError::Malformed(bad.to_string()));
        }
        if claims.exp <= claims.nbf {
            return Err(GrantError::Malformed("grant ends before it starts".into()));
        }
        let globs = claims
            .paths
            .iter()
            .map(|p| compile_path_glob(p))
            .collect::<Result<_, _>>()?;
        Ok((id, globs))
    }

    fn check_audience(claims: &GrantClaims, audience: &Audience) -> Result<(), GrantError> {
        let by_host = claims.hosts.iter().any(|h| *h == audience.agent_id);
        let by_label = claims.labels.iter().any(|l| audience.labels.contains(l));
        if by_host || by_label {
            Ok(())
        } else {
            Err(GrantError::WrongHost {
                grant_id: claims.jti.clone(),
                host: audience.agent_id.to_string(),
            })
        }
    }

    /// Checks a pushed grant on receipt: signed by a trusted key for the binding it claims, well
    /// formed, covering this agent, and not already expired.
    pub fn verify_on_receipt(
        &self,
        token: &str,
        audience: &Audience,
        now: i64,
    ) -> Result<ReceivedGrant, GrantError> {
        let (untrusted, key) = self.open(token)?;
        let binding = Self::claimed_binding(&untrusted)?;
        let claims = Self::verified_claims(&untrusted, key, &binding)?;
        let (id, globs) = Self::check_shape(&claims)?;
        Self::check_audience(&claims, audience)?;
        if now >= claims.exp {
            return Err(GrantError::Expired {
                grant_id: claims.jti.clone(),
                ago: rough_duration(now - claims.exp),
            });
        }
        Ok(ReceivedGrant {
            token: token.to_string(),
            id,
            claims,
            globs,
        })
    }

    /// Checks a grant for one read, by one reader, now. Every check must pass: signature by a
    /// trusted key over the reader's own certificate key, subject, host, time window.
    /// Revocation and the path are checked by the caller against its own state.
    pub fn verify_for_use(
        &self,
        token: &str,
        reader: &Identity,
        audience: &Audience,
        now: i64,
    ) -> Result<VerifiedGrant, GrantError> {
        let (untrusted, key) = self.open(token)?;
        let claims = match Self::verified_claims(&untrusted, key, reader.key_sha256()) {
            Ok(claims) => claims,
            // Say *why* only when it is proven: the token verifies for the binding it names,
            // which is not the reader's key. Anything else is a bad signature.
            Err(GrantError::BadSignature) => {
                let bound_elsewhere = Self::claimed_binding(&untrusted)
                    .and_then(|b| Self::verified_claims(&untrusted, key, &b));
                return Err(match bound_elsewhere {
                    Ok(claims) => GrantError::BoundToAnotherKey {
                        grant_id: claims.jti,
                    },
                    Err(_) => GrantError::BadSignature,
                });
            }
            Err(e) => return Err(e),
        };
        let (id, globs) = Self::check_shape(&claims)?;
        if claims.sub != reader.spiffe_id() {
            return Err(GrantError::WrongSubject {
                grant_id: claims.jti.clone(),
                subject: claims.sub.clone(),
            });
        }
        Self::check_audience(&claims, audience)?;
        if now < claims.nbf.saturating_sub(self.skew) {
            return Err(GrantError::NotYetValid {
                grant_id: claims.jti.clone(),
                starts_in: rough_duration(claims.nbf - now),
            });
        }
        if now >= claims.exp {
            return Err(GrantError::Expired {
                grant_id: claims.jti.clone(),
                ago: rough_duration(now - claims.exp),
            });
        }
        Ok(VerifiedGrant { id, claims, globs })
    }
}

/// A fresh grant id: `g-` and 16 random hex digits.
pub fn new_grant_id() -> GrantId {
    GrantId(format!("g-{}", hex::encode(rand::random::<[u8; 8]>())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_within_one_path_component_and_double_star_crosses() {
        let g = compile_path_glob("/var/log/app/*.log").unwrap();
        assert!(g.is_match("/var/log/app/api.log"));
        assert!(!g.is_match("/var/log/app/sub/secret.log"));
        assert!(!g.is_match("/var/log/app/api.log.1"));
        let g = compile_path_glob("/var/log/app/**/*.log").unwrap();
        assert!(g.is_match("/var/log/app/sub/deep/x.log"));
        assert!(g.is_match("/var/log/app/x.log"));
        let g = compile_path_glob("/var/log/app/api-?.log").unwrap();
        assert!(!g.is_match("/var/log/app/api-/.log"));
    }

    #[test]
    fn classes_never_match_a_separator() {
        // The review's example (issue 10, finding 9): `[!x]` must not stand for the '/' of
        // `logs/app`.
        let g = compile_path_glob("/d/logs[!x]app/api.log").unwrap();
        assert!(!g.is_match("/d/logs/app/api.log"));
        assert!(g.is_match("/d/logsyapp/api.log"));
        assert!(!g.is_match("/d/logsxapp/api.log"));
        // `^` negates too; a range spanning '/', a class listing it, a POSIX class holding it.
        for glob in [
            "/d/logs[^x]app/api.log",
            "/d/logs[+-0]app/api.log",
            "/d/logs[/]app/api.log",
            "/d/logs[a/]app/api.log",
            "/d/logs[[:punct:]]app/api.log",
            "/d/logs{[!x],y}app/api.log",
        ] {
            // Either refused, or confined to one component: never covering `logs/app`.
            if let Ok(g) = compile_path_glob(glob) {
                assert!(!g.is_match("/d/logs/app/api.log"), "{glob} crosses '/'");
            }
        }
    }

    #[test]
    fn separator_inside_alternation_is_refused_with_the_glob_named() {
        for glob in [
            "/d/logs{/,x}app/api.log",
            "/d/{app,app/secret}/*.log",
            "/d/{a,{b,c/d}}/x.log",
            r"/d/logs{\/,x}app/api.log",
        ] {
            let e = compile_path_glob(glob).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{glob:?}")) && e.to_string().contains("{…}"),
                "{e}"
            );
        }
        // Separators outside braces, escaped braces and braces inside a class are fine.
        let g = compile_path_glob("/d/{app,web}/*.log").unwrap();
        assert!(g.is_match("/d/web/x.log"));
        let g = compile_path_glob(r"/d/\{app/x\}.log").unwrap();
        assert!(g.is_match("/d/{app/x}.log"));
        let g = compile_path_glob("/d/a[{]/b[}].log").unwrap();
        assert!(g.is_match("/d/a{/b}.log"));
    }

    #[test]
    fn verifier_refuses_a_signed_grant_whose_glob_crosses_a_separator() {
        // Even when a controller signed it (an older one, or one with a bug).
        let key = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: AgentId::new("web-1").unwrap(),
            labels: vec![],
        };
        let alice_key = [0xab; 32];
        let alice = crate::identity::Identity::for_tests("spiffe://t/user/alice", "t", alice_key);
        let mut c = claims(&hex::encode(alice_key));
        c.paths = vec!["/d/logs{/,x}app/api.log".into()];
        let token = key.sign(&c).unwrap();
        for e in [
            verifier.verify_on_receipt(&token, &web1, 150).unwrap_err(),
            verifier
                .verify_for_use(&token, &alice, &web1, 150)
                .unwrap_err(),
        ] {
            assert!(
                matches!(&e, GrantError::Malformed(m) if m.contains("/d/logs{/,x}app/api.log")),
                "{e}"
            );
        }
    }

    #[test]
    fn class_check_refuses_any_compiled_class_that_admits_a_separator() {
        // What a globset that did not confine classes would hand over: `[!x]` as `[^x]`.
        let loose = |p: &str| GlobBuilder::new(p).build().unwrap();
        for glob in ["/d/logs[!x]app", "/d/logs[+-0]app", "/d/logs[/]app"] {
            let e = check_classes_exclude_separator(glob, &loose(glob)).unwrap_err();
            assert!(e.to_string().contains("character class"), "{e}");
        }
        assert!(check_classes_exclude_separator("/d/[ax]", &loose("/d/[ax]")).is_ok());
        assert!(check_classes_exclude_separator("/d/**/x", &loose("/d/**/x")).is_ok());
    }

    /// Property test of finding 9: generated globs (literals, `*`, `?`, classes of every kind,
    /// alternations, `**` components) and paths built to tempt each element into matching `/`.
    /// Whenever the compiled glob matches, a matcher that knows no element but `**` may cross
    /// components must agree.
    mod no_element_but_double_star_crosses {
        use super::super::compile_path_glob;
        use proptest::prelude::*;

        /// Path characters: what the elements below list, and the separator.
        const ALPHABET: [char; 5] = ['a', 'x', '.', '-', '/'];

        #[derive(Debug, Clone)]
        enum Elem {
            Lit(char),
            Star,
            Any,
            /// Glob text, whether negated, and its members among `ALPHABET`.
            Class(&'static str, bool, &'static str),
            Alt(Vec<Vec<Elem>>),
            /// A backslash-escaped character (only `\/`, inside alternations).
            Esc(char),
        }

        const CLASSES: [(&str, bool, &str); 9] = [
            ("[ax]", false, "ax"),
            ("[!x]", true, "x"),
            ("[^a]", true, "a"),
            ("[+-0]", false, ".-/"),
            ("[/]", false, "/"),
            ("[!/]", true, "/"),
            ("[a/]", false, "a/"),
            ("[[:punct:]]", false, ".-/"),
            ("[!]x]", true, "x"),
        ];

        impl Elem {
            fn text(&self) -> String {
                match self {
                    Elem::Lit(c) => c.to_string(),
                    Elem::Star => "*".into(),
                    Elem::Any => "?".into(),
                    Elem::Class(t, _, _) => t.to_string(),
                    Elem::Esc(c) => format!("\\{c}"),
                    Elem::Alt(alts) => {
                        let alts: Vec<String> = alts
                            .iter()
                            .map(|a| a.iter().map(Elem::text).collect())
                            .collect();
                        format!("{{{}}}", alts.join(","))
                    }
                }
            }
        }

        fn leaf() -> impl Strategy<Value = Elem> {
            prop_oneof![
                prop::sample::select(vec!['a', 'x', '.', '-']).prop_map(Elem::Lit),
                Just(Elem::Star),
                Just(Elem::Any),
                prop::sample::select(CLASSES.to_vec()).prop_map(|(t, n, m)| Elem::Class(t, n, m)),
            ]
        }

        fn elem() -> impl Strategy<Value = Elem> {
            let alt_member = prop_oneof![
                6 => leaf(),
                1 => Just(Elem::Lit('/')),
                1 => Just(Elem::Esc('/')),
            ];
            prop_oneof![
                4 => leaf(),
                1 => prop::collection::vec(prop::collection::vec(alt_member, 1..3), 2..3)
                    .prop_map(Elem::Alt),
            ]
        }

        /// A component: `None` is `**`.
        fn glob() -> impl Strategy<Value = Vec<Option<Vec<Elem>>>> {
            let component = prop_oneof![
                1 => Just(None),
                // Adjacent `*`s would spell `**` (a component of its own, generated above).
                4 => prop::collection::vec(elem(), 1..4).prop_map(|mut es| {
                    es.dedup_by(|a, b| matches!((a, b), (Elem::Star, Elem::Star)));
                    Some(es)
                }),
            ];
            prop::collection::vec(component, 1..4)
        }

        fn glob_text(components: &[Option<Vec<Elem>>]) -> String {
            components
                .iter()
                .map(|c| match c {
                    None => "/**".to_string(),
                    Some(es) => format!("/{}", es.iter().map(Elem::text).collect::<String>()),
                })
                .collect()
        }

        /// A string `e` might match, chosen by `pick` — including ones holding '/'.
        fn tempt(e: &Elem, pick: &mut impl FnMut() -> usize) -> String {
            let any = |n: usize| ALPHABET[n % ALPHABET.len()].to_string();
            match e {
                Elem::Lit(c) | Elem::Esc(c) => c.to_string(),
                Elem::Star => (0..pick() % 4).map(|_| any(pick())).collect(),
                Elem::Any | Elem::Class(..) => any(pick()),
                Elem::Alt(alts) => {
                    let a = &alts[pick() % alts.len()];
                    a.iter().map(|e| tempt(e, pick)).collect()
                }
            }
        }

        fn path_for(components: &[Option<Vec<Elem>>], choices: &[u8]) -> String {
            let mut i = 0;
            let mut pick = || {
                i += 1;
                usize::from(choices[i % choices.len()])
            };
            let mut out = String::new();
            for c in components {
                match c {
                    None => {
                        for _ in 0..pick() % 3 {
                            out.push_str("/a");
                        }
                    }
                    Some(es) => {
                        out.push('/');
                        for e in es {
                            out.push_str(&tempt(e, &mut pick));
                        }
                    }
                }
            }
            out
        }

        /// Whether `elems` match all of `s` (one path component, no '/') when no element can
        /// match '/'.
        fn elems_match(elems: &[Elem], s: &[char]) -> bool {
            let Some((first, rest)) = elems.split_first() else {
                return s.is_empty();
            };
            let one = |ok: &dyn Fn(char) -> bool| {
                s.first().is_some_and(|&c| c != '/' && ok(c)) && elems_match(rest, &s[1..])
            };
            match first {
                Elem::Lit(l) | Elem::Esc(l) => one(&|c| c == *l),
                Elem::Any => one(&|_| true),
                Elem::Class(_, negated, members) => one(&|c| members.contains(c) != *negated),
                Elem::Star => (0..=s.len())
                    .take_while(|&n| n == 0 || s[n - 1] != '/')
                    .any(|n| elems_match(rest, &s[n..])),
                Elem::Alt(alts) => alts.iter().any(|a| {
                    let mut joined = a.clone();
                    joined.extend_from_slice(rest);
                    elems_match(&joined, s)
                }),
            }
        }

        /// Component-wise reference: each glob component matches exactly one path component,
        /// `**` any number of them.
        fn components_match(glob: &[Option<Vec<Elem>>], path: &[Vec<char>]) -> bool {
            match glob.split_first() {
                None => path.is_empty(),
                Some((None, rest)) => (0..=path.len()).any(|n| components_match(rest, &path[n..])),
                Some((Some(es), rest)) => path
                    .split_first()
                    .is_some_and(|(p, prest)| elems_match(es, p) && components_match(rest, prest)),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]
            #[test]
            fn compiled_glob_never_matches_extra_components_not_covered_by_double_star(
                components in glob(),
                choices in prop::collection::vec(any::<u8>(), 1..16),
            ) {
                let text = glob_text(&components);
                let path = path_for(&components, &choices);
                if let Ok(matcher) = compile_path_glob(&text) {
                    if matcher.is_match(&path) {
                        let path_components: Vec<Vec<char>> =
                            path[1..].split('/').map(|c| c.chars().collect()).collect();
                        prop_assert!(
                            components_match(&components, &path_components),
                            "glob {text} matches {path}, crossing '/' outside **"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn grant_ids_are_checked_and_a_signed_grant_with_a_bad_jti_is_malformed() {
        let fresh = new_grant_id();
        assert_eq!(GrantId::new(fresh.as_str()), Ok(fresh.clone()));
        assert_eq!(fresh.len(), 18);
        for good in ["g-0000000000000001", "g-a", "g-lost-1"] {
            assert!(GrantId::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "g-",
            "x-1",
            "g-A",
            "g-a b",
            "g-a\n",
            &format!("g-{}", "a".repeat(65)),
        ] {
            let e = GrantId::new(bad).unwrap_err();
            assert!(e.to_string().contains("is not a grant id"), "{bad:?}: {e}");
        }
        let key = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: AgentId::new("web-1").unwrap(),
            labels: vec![],
        };
        let mut bad = claims(&"ab".repeat(32));
        bad.jti = "g-\u{1b}[31mred".into();
        let token = key.sign(&bad).unwrap();
        assert!(matches!(
            verifier.verify_on_receipt(&token, &web1, 150),
            Err(GrantError::Malformed(m)) if m.contains("is not a grant id")
        ));
        let good = key.sign(&claims(&"ab".repeat(32))).unwrap();
        let received = verifier.verify_on_receipt(&good, &web1, 150).unwrap();
        assert_eq!(received.id(), "g-0000000000000001");
    }

    #[test]
    fn unit_names_follow_systemds_rules_and_never_hold_a_glob() {
        for good in [
            "nginx.service",
            "app-web.service",
            "getty@tty1.service",
            "systemd-fsck@dev-disk-by\\x2duuid-1.service",
            "-.mount",
            "user-1000.slice",
            "session-2.scope",
            "logrotate.timer",
            "a:b_c.socket",
            &format!("{}.service", "a".repeat(MAX_UNIT_NAME_LEN - 8)),
        ] {
            assert_eq!(
                UnitName::new(good).map(|u| u.to_string()),
                Ok(good.to_string())
            );
        }
        for bad in [
            "",
            "nginx",
            "nginx.",
            ".service",
            "nginx.exe",
            "*.service",
            "nginx*",
            "ngin?.service",
            "[n]ginx.service",
            "nginx.service ",
            "--directory=/tmp.service",
            "a/b.service",
            "a b.service",
            "nginx\n.service",
            "n\u{1b}[31m.service",
            "getty@.service",
            "a@b@c.service",
            "@x.service",
            "ng\u{e9}.service",
            &format!("{}.service", "a".repeat(MAX_UNIT_NAME_LEN - 7)),
        ] {
            let e = UnitName::new(bad).unwrap_err();
            assert!(
                e.to_string().contains("is not a systemd unit name"),
                "{bad:?}: {e}"
            );
        }
        assert!(UnitName::new("nginx*")
            .unwrap_err()
            .to_string()
            .contains("glob character"));
    }

    /// A unit grant and a file grant are resources of their own: a units-only grant covers
    /// no path, a paths-only grant no unit. A file grant's token carries no `units` claim (an
    /// older agent reads it exactly as before), and a units-only token carries `"paths":[]`,
    /// which an older agent refuses on receipt: it never serves a file for it.
    #[test]
    fn unit_grants_and_file_grants_cover_only_their_own_resources() {
        let key = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: AgentId::new("web-1").unwrap(),
            labels: vec![],
        };
        let nginx = UnitName::new("nginx.service").unwrap();
        let file_grant = claims(&"ab".repeat(32));
        let payload = serde_json::to_string(&file_grant).unwrap();
        assert!(!payload.contains("units"), "{payload}");
        let received = verifier
            .verify_on_receipt(&key.sign(&file_grant).unwrap(), &web1, 150)
            .unwrap();
        assert!(received.covers_path("/var/log/a.log"));
        assert!(!received.covers_unit(&nginx));

        let mut unit_grant = claims(&"ab".repeat(32));
        unit_grant.paths = vec![];
        unit_grant.units = vec!["nginx.service".into()];
        let payload = serde_json::to_string(&unit_grant).unwrap();
        assert!(payload.contains(r#""paths":[]"#), "{payload}");
        let received = verifier
            .verify_on_receipt(&key.sign(&unit_grant).unwrap(), &web1, 150)
            .unwrap();
        assert!(received.covers_unit(&nginx));
        assert!(!received.covers_unit(&UnitName::new("sshd.service").unwrap()));
        for path in ["/", "/var/log/a.log", "/run/log/journal/x.journal"] {
            assert!(!received.covers_path(path), "{path}");
        }
        // Older claims (no `units` at all) still decode.
        let old = payload.replace(r#","units":["nginx.service"]"#, "");
        let decoded: GrantClaims = serde_json::from_str(&old).unwrap();
        assert!(decoded.units.is_empty());

        // A grant naming neither, or a unit that is not one (a glob), is malformed.
        let mut neither = claims(&"ab".repeat(32));
        neither.paths = vec![];
        assert!(matches!(
            verifier.verify_on_receipt(&key.sign(&neither).unwrap(), &web1, 150),
            Err(GrantError::Malformed(m)) if m.contains("no paths and no journal units")
        ));
        let mut globbed = claims(&"ab".repeat(32));
        globbed.units = vec!["*.service".into()];
        assert!(matches!(
            verifier.verify_on_receipt(&key.sign(&globbed).unwrap(), &web1, 150),
            Err(GrantError::Malformed(m)) if m.contains("glob character")
        ));
    }

    #[test]
    fn relative_and_dotdot_globs_are_refused() {
        assert!(compile_path_glob("var/log/*.log").is_err());
        assert!(compile_path_glob("/var/log/../etc/*").is_err());
    }

    fn claims(key: &str) -> GrantClaims {
        GrantClaims {
            jti: "g-0000000000000001".into(),
            iss: "spiffe://t/controller".into(),
            sub: "spiffe://t/user/alice".into(),
            iat: 100,
            nbf: 100,
            exp: 200,
            hosts: vec!["web-1".into()],
            labels: vec!["env=prod".into()],
            paths: vec!["/var/log/*.log".into()],
            units: vec![],
            redaction: "default".into(),
            reason: "r".into(),
            approver: "spiffe://t/user/admin".into(),
            key_sha256: key.into(),
        }
    }

    #[test]
    fn signature_is_checked_against_the_readers_own_key_hash() {
        let key = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: AgentId::new("web-1").unwrap(),
            labels: vec![],
        };
        let alice_key = [0xab; 32];
        let alice = crate::identity::Identity::for_tests("spiffe://t/user/alice", "t", alice_key);
        let genuine = key.sign(&claims(&hex::encode(alice_key))).unwrap();
        assert!(verifier
            .verify_for_use(&genuine, &alice, &web1, 150)
            .is_ok());
        // Claims naming alice's key, but signed over another key hash (the implicit assertion):
        // the claim alone must not be trusted.
        let message = serde_json::to_vec(&claims(&hex::encode(alice_key))).unwrap();
        let footer = serde_json::to_vec(&Footer {
            kid: key.verifying_key().kid().to_string(),
        })
        .unwrap();
        let other_binding = [0xcd; 32];
        let crossed =
            PublicToken::sign(&key.secret, &message, Some(&footer), Some(&other_binding)).unwrap();
        assert_eq!(
            verifier
                .verify_for_use(&crossed, &alice, &web1, 150)
                .unwrap_err(),
            GrantError::BadSignature
        );
        assert!(matches!(
            verifier.verify_on_receipt(&crossed, &web1, 150),
            Err(GrantError::BadSignature)
        ));
        // Someone else presenting alice's genuine grant.
        let mallory =
            crate::identity::Identity::for_tests("spiffe://t/user/alice", "t", [0x11; 32]);
        assert!(matches!(
            verifier.verify_for_use(&genuine, &mallory, &web1, 150),
            Err(GrantError::BoundToAnotherKey { .. })
        ));
        // Time window: not before nbf − skew, not at or after exp.
        assert!(verifier
            .verify_for_use(&genuine, &alice, &web1, 100 - 60)
            .is_ok());
        assert!(matches!(
            verifier.verify_for_use(&genuine, &alice, &web1, 100 - 61),
            Err(GrantError::NotYetValid { .. })
        ));
        assert!(matches!(
            verifier.verify_for_use(&genuine, &alice, &web1, 200),
            Err(GrantError::Expired { .. })
        ));
    }

    /// Issue 10, finding 11: a flipped byte in a token's claims returned a JSON parse error —
    /// the altered claims were parsed before the signature was checked.
    #[test]
    fn any_altered_byte_of_a_tokens_payload_is_a_bad_signature() {
        const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let key = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: AgentId::new("web-1").unwrap(),
            labels: vec![],
        };
        let alice_key = [0xab; 32];
        let alice = crate::identity::Identity::for_tests("spiffe://t/user/alice", "t", alice_key);
        let token = key.sign(&claims(&hex::encode(alice_key))).unwrap();
        assert!(verifier.verify_on_receipt(&token, &web1, 150).is_ok());
        assert!(verifier.verify_for_use(&token, &alice, &web1, 150).is_ok());
        let start = "v4.public.".len();
        let end = start + token[start..].find('.').unwrap();
        for i in start..end {
            let mut bytes = token.clone().into_bytes();
            // Every position, to another base64url character: the payload still decodes, so
            // only the signature can tell.
            let at = B64URL.iter().position(|&c| c == bytes[i]).unwrap();
            bytes[i] = B64URL[(at + 1) % B64URL.len()];
            let altered = String::from_utf8(bytes).unwrap();
            let on_receipt = verifier.verify_on_receipt(&altered, &web1, 150).map(|_| ());
            let for_use = verifier
                .verify_for_use(&altered, &alice, &web1, 150)
                .map(|_| ());
            for result in [on_receipt, for_use] {
                match result {
                    Err(GrantError::BadSignature) => {}
                    other => panic!("byte {i} altered: {other:?}"),
                }
            }
        }
        // Any byte of the whole token, any low bit: refused, never a panic.
        for i in 0..token.len() {
            for mask in [0x01u8, 0x20] {
                let mut bytes = token.clone().into_bytes();
                bytes[i] ^= mask;
                let Ok(altered) = String::from_utf8(bytes) else {
                    continue;
                };
                assert!(verifier.verify_on_receipt(&altered, &web1, 150).is_err());
                assert!(verifier
                    .verify_for_use(&altered, &alice, &web1, 150)
                    .is_err());
            }
        }
    }

    #[test]
    fn receipt_checks_key_signature_audience_and_expiry() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: AgentId::new("web-1").unwrap(),
            labels: vec![],
        };
        let by_label = Audience {
            agent_id: AgentId::new("db-1").unwrap(),
            labels: vec!["env=prod".into()],
        };
        let web2 = Audience {
            agent_id: AgentId::new("web-2").unwrap(),
            labels: vec![],
        };
        let token = key.sign(&claims(&"ab".repeat(32))).unwrap();
        assert!(verifier.verify_on_receipt(&token, &web1, 150).is_ok());
        assert!(verifier.verify_on_receipt(&token, &by_label, 150).is_ok());
        assert!(matches!(
            verifier.verify_on_receipt(&token, &web2, 150),
            Err(GrantError::WrongHost { .. })
        ));
        assert!(matches!(
            verifier.verify_on_receipt(&token, &web1, 200),
            Err(GrantError::Expired { .. })
        ));
        let foreign = other.sign(&claims(&"ab".repeat(32))).unwrap();
        assert!(matches!(
            verifier.verify_on_receipt(&foreign, &web1, 150),
            Err(GrantError::UnknownKey(_))
        ));
        // Claims rewritten under the same signature: the binding check fails the signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_footer = foreign.split('.').nth(3).unwrap();
        parts[3] = forged_footer;
        let mixed = parts.join(".");
        assert!(matches!(
            verifier.verify_on_receipt(&mixed, &web1, 150),
            Err(GrantError::UnknownKey(_))
        ));
        assert!(matches!(
            verifier.verify_on_receipt("v4.public.garbage", &web1, 150),
            Err(GrantError::Malformed(_))
        ));
        let huge = "v4.public.".to_string() + &"A".repeat(MAX_TOKEN_LEN);
        assert!(matches!(
            verifier.verify_on_receipt(&huge, &web1, 150),
            Err(GrantError::Malformed(_))
        ));
    }
}
