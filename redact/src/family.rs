//! Token families as data: one row per kind of vendor token (a literal prefix, the alphabet and
//! length of what follows, an optional checksum or structure check), compiled into the
//! prefilter's literal search (`super::prefilter`) and found by one run-scanner
//! ([`Shape::match_at`]). Adding a family is one row in [`FAMILIES`] and a line in the tests'
//! example table; no new enum arm, no new code path, no new regex.
//!
//! The contract of a shape, for a prefix found at byte `p` (case-sensitive):
//! - `lead` bytes of the alphabet before the prefix belong to the token (`<14>.atlasv1.<…>`);
//! - the token's first byte, if it is a word byte, must not follow a word byte (a `\b`), unless
//!   the shape's `glued_if` checksum holds (a checksum-valid GitHub token glued to `%3D` is
//!   still a token);
//! - the run of alphabet bytes after the prefix must be within `min..=max` bytes, whole: a
//!   longer run is something else, never a token cut short;
//! - with [`End::Word`] no word byte may follow the run;
//! - the `check` must hold on the whole token (prefix included).
//!
//! The span replaced is the whole token, or only what follows the prefix when `keep_prefix`
//! (a webhook URL keeps its host readable, `AccountKey=` its key name).
//!
//! Tokens without a distinctive prefix (a Datadog API key is 32 hex digits, like any MD5) are
//! rows too, bound to their context ([`Context`]): the literal is a vendor's key name
//! (`DD_API_KEY`, `Fastly-Key`), an authorization scheme (`SSWS`) or a host (a Sentry DSN's
//! `sentry.io`), matched in any case where it starts a word; the value after the key's `=` or
//! `:` (or the scheme's spaces, or before the host's `@`) must be a whole run of the alphabet
//! of the row's length. Only the value is replaced: the key stays readable. The literal search
//! finds the key like any prefix, so a line without one costs nothing more.
//!
//! Every function here takes hostile bytes and never panics on any input.

use super::validate;

/// The bytes that may follow a family's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// `[A-Za-z0-9]`.
    Alnum,
    /// `[A-Za-z0-9_]`.
    AlnumUnderscore,
    /// `[A-Za-z0-9-]`.
    AlnumDash,
    /// `[A-Za-z0-9_-]`: base64url.
    Base64Url,
    /// `[A-Za-z0-9_.-]`.
    Base64UrlDot,
    /// `[A-Za-z0-9+/=]`: base64 with padding.
    Base64,
    /// `[A-Za-z0-9%+/=]`: base64, possibly percent-encoded (a URL's query).
    Base64Percent,
    /// `[0-9a-f]`.
    HexLower,
    /// `[0-9A-Fa-f]`.
    Hex,
    /// `[A-Z0-9]`.
    UpperAlnum,
    /// `[a-z0-9]`.
    LowerAlnum,
    /// The bech32 data characters, upper case: `[02-9AC-HJ-NP-Z]`.
    Bech32Upper,
    /// `[A-Za-z0-9_/-]`: the path of a webhook URL.
    UrlPath,
    /// `[a-z0-9$]`: Braintree's `access_token$env$id$secret`.
    LowerAlnumDollar,
    /// `[A-Za-z0-9_~.-]`: Microsoft Entra client secrets.
    AzureSecret,
    /// `[A-Za-z0-9_+-]`: PagerDuty REST API keys.
    Base64UrlPlus,
    /// `[a-z2-7]`: lowercase base32 (RFC 4648), Azure DevOps' first PAT format.
    Base32Lower,
}

impl Alphabet {
    /// Whether `b` belongs to the alphabet.
    pub fn has(self, b: u8) -> bool {
        match self {
            Alphabet::Alnum => b.is_ascii_alphanumeric(),
            Alphabet::AlnumUnderscore => b.is_ascii_alphanumeric() || b == b'_',
            Alphabet::AlnumDash => b.is_ascii_alphanumeric() || b == b'-',
            Alphabet::Base64Url => b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'),
            Alphabet::Base64UrlDot => b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'),
            Alphabet::Base64 => b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='),
            Alphabet::Base64Percent => {
                b.is_ascii_alphanumeric() || matches!(b, b'%' | b'+' | b'/' | b'=')
            }
            Alphabet::HexLower => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            Alphabet::Hex => b.is_ascii_hexdigit(),
            Alphabet::UpperAlnum => b.is_ascii_uppercase() || b.is_ascii_digit(),
            Alphabet::LowerAlnum => b.is_ascii_lowercase() || b.is_ascii_digit(),
            Alphabet::Bech32Upper => BECH32_UPPER.contains(&b),
            Alphabet::UrlPath => b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'-'),
            Alphabet::LowerAlnumDollar => b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'$',
            Alphabet::AzureSecret => {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'.' | b'-')
            }
            Alphabet::Base64UrlPlus => b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-'),
            Alphabet::Base32Lower => b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b),
        }
    }

    /// A short description for `--list-detectors` and the docs.
    pub fn describe(self) -> &'static str {
        match self {
            Alphabet::Alnum => "[A-Za-z0-9]",
            Alphabet::AlnumUnderscore => "[A-Za-z0-9_]",
            Alphabet::AlnumDash => "[A-Za-z0-9-]",
            Alphabet::Base64Url => "[A-Za-z0-9_-]",
            Alphabet::Base64UrlDot => "[A-Za-z0-9_.-]",
            Alphabet::Base64 => "[A-Za-z0-9+/=]",
            Alphabet::Base64Percent => "[A-Za-z0-9%+/=]",
            Alphabet::HexLower => "[0-9a-f]",
            Alphabet::Hex => "[0-9A-Fa-f]",
            Alphabet::UpperAlnum => "[A-Z0-9]",
            Alphabet::LowerAlnum => "[a-z0-9]",
            Alphabet::Bech32Upper => "bech32",
            Alphabet::UrlPath => "[A-Za-z0-9_/-]",
            Alphabet::LowerAlnumDollar => "[a-z0-9$]",
            Alphabet::AzureSecret => "[A-Za-z0-9_~.-]",
            Alphabet::Base64UrlPlus => "[A-Za-z0-9_+-]",
            Alphabet::Base32Lower => "[a-z2-7]",
        }
    }
}

/// The bech32 data characters (BIP-173), upper case, in value order.
const BECH32_UPPER: &[u8; 32] = b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L";

/// What may follow a token's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Anything (the run ends where the alphabet ends).
    Any,
    /// Not a word byte `[A-Za-z0-9_]` (a `\b` after the token).
    Word,
}

/// Where a shape's literal stands relative to its token: before it as its prefix, or as the
/// context that says what an otherwise unremarkable value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The literal is the token's own prefix (case-sensitive): `ghp_…`.
    Prefix,
    /// The literal is a key name, in any case, starting a word; then an optional backslash and
    /// quote (a JSON key's closing quote, also escaped), spaces, `=` or `:`, spaces, an optional
    /// backslash and quote, and the value: `DD_API_KEY=…`, `dd_api_key: …`, `"dd_api_key":
    /// "…"`, `DD-API-KEY: …` (a header). Only the value is replaced.
    Key,
    /// The literal is an authorization scheme, in any case, starting a word; then spaces and the
    /// value: `SSWS 00…` of `Authorization: SSWS 00…`. Only the value is replaced.
    Scheme,
    /// The literal ends a URL's host, in any case, after a `.` or the `@`; the value is the
    /// whole user part between `://` and that `@`: the key of a Sentry DSN
    /// `https://<key>@o1.ingest.sentry.io/2`. Only the value is replaced; the host stays.
    UserinfoAtHost,
}

impl Context {
    /// A short description for `--list-detectors` and the docs.
    pub fn describe(self) -> &'static str {
        match self {
            Context::Prefix => "prefix",
            Context::Key => "after the key (any case) and `=`/`:`",
            Context::Scheme => "after the scheme (any case) and spaces",
            Context::UserinfoAtHost => "the user part of `://<value>@…` whose host ends with",
        }
    }
}

/// A check on the whole token (prefix included), beyond its alphabet and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No check.
    None,
    /// GitHub's classic format: the last 6 characters are the CRC32 of the 30 before them (after
    /// the prefix), in base62, left-padded with `0` (npm uses the same format).
    Crc32Base62,
    /// A bech32 string (BIP-173) whose checksum holds: age secret keys.
    Bech32,
    /// The part after the prefix is base64 of exactly this many bytes (Azure keys and SAS
    /// signatures are HMAC keys and tags of fixed size).
    Base64Bytes(u8),
    /// The same, after percent-decoding (`%2B`, `%2F`, `%3D` in a URL's query).
    PercentBase64Bytes(u8),
    /// The part after the prefix holds this literal at this offset (OpenAI's legacy keys hold
    /// `T3BlbkFJ`, "OpenAI" in base64, at 20).
    LiteralAt(u8, &'static str),
    /// The part after the prefix is a lowercase UUID.
    Uuid,
    /// A dot at exactly this offset of the part after the prefix, and no other dot.
    DotAt(u8),
    /// The part after the prefix is base64url whose decoded bytes hold this literal (a PyPI
    /// token is a macaroon naming `pypi.org`).
    DecodedContains(&'static str),
}

impl Check {
    /// Whether `token` (with `lead` bytes before the prefix, then the prefix of `prefix_len`
    /// bytes, then the body) passes.
    pub fn holds(self, token: &[u8], lead: usize, prefix_len: usize) -> bool {
        let body = token.get(lead + prefix_len..).unwrap_or_default();
        match self {
            Check::None => true,
            Check::Crc32Base62 => validate::crc32_base62_tail(body),
            Check::Bech32 => validate::bech32_upper(token),
            Check::Base64Bytes(n) => {
                validate::base64_decode(body).is_some_and(|d| d.len() == usize::from(n))
            }
            Check::PercentBase64Bytes(n) => validate::percent_decode(body)
                .and_then(|b| validate::base64_decode(&b))
                .is_some_and(|d| d.len() == usize::from(n)),
            Check::LiteralAt(at, lit) => body
                .get(usize::from(at)..)
                .is_some_and(|rest| rest.starts_with(lit.as_bytes())),
            Check::Uuid => validate::uuid_lower(body),
            Check::DotAt(at) => {
                body.get(usize::from(at)) == Some(&b'.')
                    && body.iter().filter(|b| **b == b'.').count() == 1
            }
            Check::DecodedContains(lit) => validate::base64_decode(body)
                .is_some_and(|d| memchr::memmem::find(&d, lit.as_bytes()).is_some()),
        }
    }
}

/// One written form of a family's tokens.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Literal prefixes, case-sensitive.
    pub prefixes: &'static [&'static str],
    /// Bytes of `alphabet` before the prefix that belong to the token.
    pub lead: u8,
    /// The bytes after the prefix.
    pub alphabet: Alphabet,
    /// Shortest and longest run of `alphabet` after the prefix.
    pub min: u16,
    pub max: u16,
    pub end: End,
    pub check: Check,
    /// A checksum that, when it holds, accepts the token even glued to a word byte before it.
    pub glued_if: Check,
    /// Replace only what follows the prefix.
    pub keep_prefix: bool,
    /// What the literals are: the token's prefix, or its context (a key, a scheme, a host).
    pub context: Context,
}

/// A shape with the usual defaults: no lead, a `\b` after, no check, the prefix replaced too.
const fn shape(prefixes: &'static [&'static str], alphabet: Alphabet, min: u16, max: u16) -> Shape {
    Shape {
        prefixes,
        lead: 0,
        alphabet,
        min,
        max,
        end: End::Word,
        check: Check::None,
        glued_if: Check::None,
        keep_prefix: false,
        context: Context::Prefix,
    }
}

/// A value bound to a vendor's key names (lowercase here, matched in any case): `min..=max`
/// bytes of `alphabet` after `KEY=` / `key: ` / `"key": "` ([`Context::Key`]).
const fn keyed(keys: &'static [&'static str], alphabet: Alphabet, min: u16, max: u16) -> Shape {
    Shape {
        keep_prefix: true,
        context: Context::Key,
        ..shape(keys, alphabet, min, max)
    }
}

/// A value after an authorization scheme (lowercase here, matched in any case)
/// ([`Context::Scheme`]).
const fn scheme(schemes: &'static [&'static str], alphabet: Alphabet, min: u16, max: u16) -> Shape {
    Shape {
        keep_prefix: true,
        context: Context::Scheme,
        ..shape(schemes, alphabet, min, max)
    }
}

/// A URL's user part before the `@` of a host ending with one of `hosts` (lowercase)
/// ([`Context::UserinfoAtHost`]).
const fn userinfo_at(
    hosts: &'static [&'static str],
    alphabet: Alphabet,
    min: u16,
    max: u16,
) -> Shape {
    Shape {
        keep_prefix: true,
        context: Context::UserinfoAtHost,
        ..shape(hosts, alphabet, min, max)
    }
}

impl Shape {
    const fn end_any(self) -> Shape {
        Shape {
            end: End::Any,
            ..self
        }
    }
    const fn check(self, check: Check) -> Shape {
        Shape { check, ..self }
    }
    const fn glued_if(self, glued_if: Check) -> Shape {
        Shape { glued_if, ..self }
    }
    const fn keep_prefix(self) -> Shape {
        Shape {
            keep_prefix: true,
            ..self
        }
    }
    const fn lead(self, lead: u8) -> Shape {
        Shape { lead, ..self }
    }

    /// The span to replace if `prefix` (one of [`Shape::prefixes`]), found at `p` in `seg`,
    /// starts a token of this shape.
    pub fn match_at(&self, seg: &[u8], p: usize, prefix: &[u8]) -> Option<(usize, usize)> {
        match self.context {
            Context::Prefix => self.prefixed_at(seg, p, prefix),
            Context::Key | Context::Scheme => self.after_key_at(seg, p, prefix.len()),
            Context::UserinfoAtHost => self.userinfo_before(seg, p, prefix.len()),
        }
    }

    /// [`Shape::match_at`] for [`Context::Prefix`].
    fn prefixed_at(&self, seg: &[u8], p: usize, prefix: &[u8]) -> Option<(usize, usize)> {
        let lead = usize::from(self.lead);
        let start = p.checked_sub(lead)?;
        if !seg[start..p].iter().all(|b| self.alphabet.has(*b)) {
            return None;
        }
        let body = p + prefix.len();
        let limit = seg.len().min(body + usize::from(self.max) + 1);
        let run = seg
            .get(body..limit)?
            .iter()
            .position(|b| !self.alphabet.has(*b))
            .unwrap_or(limit - body);
        if run < usize::from(self.min) || run > usize::from(self.max) {
            return None;
        }
        let end = body + run;
        if self.end == End::Word && seg.get(end).is_some_and(|b| is_word(*b)) {
            return None;
        }
        let token = &seg[start..end];
        if !self.check.holds(token, lead, prefix.len()) {
            return None;
        }
        let glued = start > 0 && is_word(seg[start - 1]) && is_word(seg[start]);
        if glued
            && (self.glued_if == Check::None || !self.glued_if.holds(token, lead, prefix.len()))
        {
            return None;
        }
        Some(if self.keep_prefix {
            (body, end)
        } else {
            (start, end)
        })
    }
}

impl Shape {
    /// [`Shape::match_at`] for [`Context::Key`] and [`Context::Scheme`]: the key of `key_len`
    /// bytes at `p` starts a word, the separator (`=`, `:`, `=>`, then an optional `[` of a
    /// list of values) follows it, then the value. A quoted key may also be the name of a
    /// name/value pair whose `"value"` follows ([`name_value_pair`]).
    fn after_key_at(&self, seg: &[u8], p: usize, key_len: usize) -> Option<(usize, usize)> {
        if p > 0 && is_word(seg[p - 1]) {
            return None;
        }
        let at = |i: usize| seg.get(i).copied();
        let mut i = p + key_len;
        if self.context == Context::Scheme {
            let v = skip_blanks(seg, i);
            return if v == i { None } else { self.value_at(seg, v) };
        }
        if at(i) == Some(b'\\') {
            i += 1;
        }
        let quoted = matches!(at(i), Some(b'"' | b'\''));
        if quoted {
            i += 1;
        }
        i = skip_blanks(seg, i);
        if quoted && at(i) == Some(b',') {
            i = name_value_pair(seg, i)?;
        }
        if !matches!(at(i), Some(b'=' | b':')) {
            return None;
        }
        // Ruby's and Perl's `key => "v"`.
        if at(i) == Some(b'=') && at(i + 1) == Some(b'>') {
            i += 1;
        }
        i = skip_blanks(seg, i + 1);
        // A header map's list of values (Go's `http.Header`: `"Dd-Api-Key":["v"]`).
        if at(i) == Some(b'[') {
            i = skip_blanks(seg, i + 1);
        }
        if at(i) == Some(b'\\') {
            i += 1;
        }
        if matches!(at(i), Some(b'"' | b'\'')) {
            i += 1;
        }
        self.value_at(seg, i)
    }

    /// [`Shape::match_at`] for [`Context::UserinfoAtHost`]: the host literal of `host_len`
    /// bytes at `p` ends the host (after a `.` or the `@`), and the user part between `://`
    /// and the `@` is the value.
    fn userinfo_before(&self, seg: &[u8], p: usize, host_len: usize) -> Option<(usize, usize)> {
        let in_host = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-');
        if p == 0 || !matches!(seg[p - 1], b'.' | b'@') {
            return None;
        }
        if seg.get(p + host_len).is_some_and(|b| in_host(*b)) {
            return None;
        }
        // The `@`: the host's labels before the literal are at most 253 bytes (RFC 1035).
        let from = p.saturating_sub(254);
        let at = p - 1 - seg[from..p].iter().rev().position(|b| !in_host(*b))?;
        if seg[at] != b'@' {
            return None;
        }
        let from = at.saturating_sub(usize::from(self.max) + 1);
        let run = seg[from..at]
            .iter()
            .rev()
            .position(|b| !self.alphabet.has(*b))
            .unwrap_or(at - from);
        let start = at - run;
        if run < usize::from(self.min)
            || run > usize::from(self.max)
            || !seg[..start].ends_with(b"://")
            || !self.check.holds(&seg[start..at], 0, 0)
        {
            return None;
        }
        Some((start, at))
    }

    /// The value at `v`: a whole run of the alphabet, `min..=max` bytes, a word boundary after
    /// it with [`End::Word`], and the check holding on it.
    fn value_at(&self, seg: &[u8], v: usize) -> Option<(usize, usize)> {
        let limit = seg.len().min(v + usize::from(self.max) + 1);
        let run = seg
            .get(v..limit)?
            .iter()
            .position(|b| !self.alphabet.has(*b))
            .unwrap_or(limit - v);
        if run < usize::from(self.min) || run > usize::from(self.max) {
            return None;
        }
        let end = v + run;
        if self.end == End::Word && seg.get(end).is_some_and(|b| is_word(*b)) {
            return None;
        }
        if !self.check.holds(&seg[v..end], 0, 0) {
            return None;
        }
        Some((v, end))
    }
}

/// Whether the e-mail-shaped `user@host` at `start` of `seg` (`value`) is a value that one of
/// `rows` (the running profile's families with a [`Context::UserinfoAtHost`] shape, the key of
/// a Sentry DSN) finds there: that row names the finding and keeps the host readable, so the
/// `email` detector leaves it. Only the profile's own rows count: a profile without
/// `sentry_dsn` has no one else to redact the key, so `email` keeps it (fail closed). Any
/// other user part of a URL stays the `email` detector's, as before.
pub fn claimed_userinfo(rows: &[&Family], seg: &[u8], start: usize, value: &[u8]) -> bool {
    rows.iter().flat_map(|f| f.shapes).any(|s| {
        s.context == Context::UserinfoAtHost
            && s.prefixes.iter().any(|h| {
                let Some(p) = (start + value.len()).checked_sub(h.len()) else {
                    return false;
                };
                seg.get(p..p + h.len())
                    .is_some_and(|host| host.eq_ignore_ascii_case(h.as_bytes()))
                    && s.userinfo_before(seg, p, h.len())
                        .is_some_and(|(from, _)| from == start)
            })
    })
}

/// Where the `:` of a name/value pair's value key is, when the quoted name just read ends at
/// the `,` at `comma`: `{"name":"DD_API_KEY","value":"<key>"}` (Kubernetes and ECS
/// environments), also escaped inside a JSON string. The look-ahead is bounded: blanks, then
/// exactly `"value"`; anything else is not this form (`None`).
fn name_value_pair(seg: &[u8], comma: usize) -> Option<usize> {
    let at = |i: usize| seg.get(i).copied();
    let mut i = skip_blanks(seg, comma + 1);
    let escaped = at(i) == Some(b'\\');
    if escaped {
        i += 1;
    }
    if at(i) != Some(b'"') {
        return None;
    }
    i += 1;
    let closing: &[u8] = if escaped { b"value\\\"" } else { b"value\"" };
    if !seg.get(i..)?.starts_with(closing) {
        return None;
    }
    Some(skip_blanks(seg, i + closing.len()))
}

/// The first index at or after `i` that is not a space or a tab in `seg` (`seg.len()` or
/// beyond when the blanks run to its end): what a key's separator and a name/value pair allow
/// around them.
fn skip_blanks(seg: &[u8], mut i: usize) -> usize {
    while matches!(seg.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// A word byte (`[A-Za-z0-9_]`): what a token must not be glued to.
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A kind of token, one detector: its name (in `[REDACTED:name]`, counts and configuration),
/// its written forms, what it is, and the vendor documentation the forms follow.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub what: &'static str,
    pub source: &'static str,
    pub shapes: &'static [Shape],
}

impl Family {
    /// Whether one of its shapes is a URL's user part ([`Context::UserinfoAtHost`]): a profile
    /// running it lets this family, not `email`, name that value ([`claimed_userinfo`]).
    pub fn claims_userinfo(&self) -> bool {
        self.shapes
            .iter()
            .any(|s| s.context == Context::UserinfoAtHost)
    }

    /// Appends the spans of this family's tokens in `seg`; `lower` is `seg` in lowercase (the
    /// context literals are matched in any case).
    pub fn find(&self, seg: &[u8], lower: &[u8], out: &mut Vec<(usize, usize)>) {
        for s in self.shapes {
            let hay = if s.context == Context::Prefix {
                seg
            } else {
                lower
            };
            for prefix in s.prefixes {
                let prefix = prefix.as_bytes();
                for p in memchr::memmem::find_iter(hay, prefix) {
                    if let Some(span) = s.match_at(seg, p, prefix) {
                        out.push(span);
                    }
                }
            }
        }
    }
}

const fn fam(
    name: &'static str,
    what: &'static str,
    source: &'static str,
    shapes: &'static [Shape],
) -> Family {
    Family {
        name,
        what,
        source,
        shapes,
    }
}

use Alphabet::*;

/// Index of the families ported from the first hand-written detectors (their `Builtin`
/// constants point here).
pub const AWS_ACCESS_KEY: usize = 0;
pub const GITHUB_TOKEN: usize = 1;
pub const SLACK_TOKEN: usize = 2;
pub const GOOGLE_API_KEY: usize = 3;
pub const STRIPE_KEY: usize = 4;

/// Every token family, in priority order (at equal starts the earlier names the replacement).
/// The first five are the engine's first prefixed detectors, ported with their exact
/// behaviour (their tests are unchanged); the others follow the vendor documentation named in
/// `source` (docs/redaction.md lists them all).
pub const FAMILIES: &[Family] = &[
    fam(
        "aws_access_key",
        "AWS access key ids AKIA…/ASIA…",
        "AWS IAM User Guide, 'Understanding unique ID prefixes' (AKIA long-term, ASIA temporary)",
        &[shape(&["AKIA", "ASIA"], UpperAlnum, 16, 16)],
    ),
    fam(
        "github_token",
        "GitHub ghp_ gho_ ghu_ ghs_ ghr_ tokens and fine-grained github_pat_",
        "GitHub blog 2021-04-05 'Behind GitHub's new authentication token formats'; GitHub Docs 'About authentication to GitHub' (token prefixes)",
        &[
            shape(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_"], Alnum, 30, 255)
                .glued_if(Check::Crc32Base62),
            shape(&["github_pat_"], AlnumUnderscore, 20, 255),
        ],
    ),
    fam(
        "slack_token",
        "Slack xoxa- xoxb- xoxp- xoxr- xoxs- tokens",
        "Slack API docs 'Token types' (bot xoxb-, user xoxp-, legacy workspace xoxa-/xoxr-/xoxs-)",
        &[shape(&["xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"], AlnumDash, 10, u16::MAX).end_any()],
    ),
    fam(
        "google_api_key",
        "Google API keys AIza…",
        "Google Cloud docs 'Manage API keys' (keys start with AIza)",
        &[shape(&["AIza"], Base64Url, 35, u16::MAX).end_any()],
    ),
    fam(
        "stripe_key",
        "Stripe secret and restricted keys sk_live_ rk_live_ sk_test_ rk_test_",
        "Stripe docs 'API keys' (secret sk_, restricted rk_; live/test)",
        &[shape(&["sk_live_", "rk_live_", "sk_test_", "rk_test_"], Alnum, 10, u16::MAX).end_any()],
    ),
    // ---- Slack ----
    fam(
        "slack_app_token",
        "Slack app-level tokens xapp-",
        "Slack API docs 'Token types' (app-level tokens xapp-)",
        &[shape(&["xapp-"], AlnumDash, 20, 255)],
    ),
    fam(
        "slack_config_token",
        "Slack configuration and refresh tokens xoxe.xoxp-/xoxe.xoxb-/xoxe-",
        "Slack API docs 'Configuration tokens' and 'Token rotation' (xoxe.)",
        &[
            shape(&["xoxe.xoxp-", "xoxe.xoxb-"], AlnumDash, 20, 300),
            shape(&["xoxe-"], AlnumDash, 20, 300),
        ],
    ),
    fam(
        "slack_webhook",
        "Slack incoming-webhook and workflow URLs (the path after the host)",
        "Slack API docs 'Sending messages using incoming webhooks' (hooks.slack.com/services/T…/B…/…)",
        &[shape(
            &[
                "hooks.slack.com/services/",
                "hooks.slack.com/workflows/",
                "hooks.slack.com/triggers/",
            ],
            UrlPath,
            20,
            200,
        )
        .end_any()
        .keep_prefix()],
    ),
    // ---- GitLab ----
    fam(
        "gitlab_pat",
        "GitLab personal, project, group and impersonation tokens glpat-",
        "GitLab Docs 'Token overview', token prefixes table (glpat-)",
        &[shape(&["glpat-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_oauth_secret",
        "GitLab OAuth application secrets gloas-",
        "GitLab Docs 'Token overview', token prefixes table (gloas-)",
        &[shape(&["gloas-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_deploy_token",
        "GitLab deploy tokens gldt-",
        "GitLab Docs 'Token overview', token prefixes table (gldt-)",
        &[shape(&["gldt-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_runner_token",
        "GitLab runner authentication tokens glrt- and registration tokens GR1348941",
        "GitLab Docs 'Token overview', token prefixes table (glrt-, GR1348941)",
        &[
            shape(&["glrt-"], Base64UrlDot, 20, 100),
            shape(&["GR1348941"], Base64Url, 20, 100),
        ],
    ),
    fam(
        "gitlab_ci_job_token",
        "GitLab CI/CD job tokens glcbt-",
        "GitLab Docs 'Token overview', token prefixes table (glcbt-)",
        &[shape(&["glcbt-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_trigger_token",
        "GitLab pipeline trigger tokens glptt-",
        "GitLab Docs 'Token overview', token prefixes table (glptt-)",
        &[shape(&["glptt-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_feed_token",
        "GitLab feed tokens glft-",
        "GitLab Docs 'Token overview', token prefixes table (glft-)",
        &[shape(&["glft-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_incoming_mail_token",
        "GitLab incoming mail tokens glimt-",
        "GitLab Docs 'Token overview', token prefixes table (glimt-)",
        &[shape(&["glimt-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_agent_token",
        "GitLab agent for Kubernetes tokens glagent-",
        "GitLab Docs 'Token overview', token prefixes table (glagent-)",
        &[shape(&["glagent-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_scim_token",
        "GitLab SCIM tokens glsoat-",
        "GitLab Docs 'Token overview', token prefixes table (glsoat-)",
        &[shape(&["glsoat-"], Base64UrlDot, 20, 100)],
    ),
    fam(
        "gitlab_feature_flag_token",
        "GitLab feature flags client tokens glffct-",
        "GitLab Docs 'Token overview', token prefixes table (glffct-)",
        &[shape(&["glffct-"], Base64UrlDot, 20, 100)],
    ),
    // ---- payments ----
    fam(
        "stripe_webhook_secret",
        "Stripe webhook signing secrets whsec_",
        "Stripe docs 'Check the webhook signatures' (endpoint secret whsec_)",
        &[shape(&["whsec_"], Base64, 24, 100)],
    ),
    fam(
        "square_token",
        "Square access tokens sq0atp- and application secrets sq0csp-",
        "Square Developer docs 'Access tokens and other credentials' (sq0atp-, sq0csp-)",
        &[
            shape(&["sq0atp-"], Base64Url, 22, 60),
            shape(&["sq0csp-"], Base64Url, 40, 60),
        ],
    ),
    fam(
        "braintree_token",
        "PayPal Braintree access tokens access_token$production$…",
        "Braintree developer docs 'Access tokens' (access_token$environment$merchant$secret)",
        &[shape(
            &["access_token$production$", "access_token$sandbox$"],
            LowerAlnumDollar,
            40,
            60,
        )],
    ),
    fam(
        "shopify_token",
        "Shopify access tokens shpat_ shpca_ shppa_ and shared secrets shpss_",
        "Shopify dev docs 'About authentication' / app credentials (shpat_, shpca_, shppa_, shpss_)",
        &[shape(&["shpat_", "shpca_", "shppa_", "shpss_"], Hex, 32, 32)],
    ),
    fam(
        "flutterwave_key",
        "Flutterwave secret keys FLWSECK-/FLWSECK_TEST-",
        "Flutterwave docs 'API keys' (FLWSECK-…-X, FLWSECK_TEST-…-X)",
        &[shape(&["FLWSECK-", "FLWSECK_TEST-"], AlnumDash, 32, 40)],
    ),
    fam(
        "duffel_token",
        "Duffel access tokens duffel_live_/duffel_test_",
        "Duffel docs 'Authentication' (duffel_test_, duffel_live_)",
        &[shape(&["duffel_live_", "duffel_test_"], Base64UrlDot, 40, 60)],
    ),
    fam(
        "easypost_key",
        "EasyPost API keys EZAK/EZTK",
        "EasyPost docs 'Authentication' (production EZAK…, test EZTK…)",
        &[shape(&["EZAK", "EZTK"], Alnum, 54, 60)],
    ),
    fam(
        "shippo_token",
        "Shippo API tokens shippo_live_/shippo_test_",
        "Shippo docs 'Authentication' (shippo_live_, shippo_test_ + 40 hex)",
        &[shape(&["shippo_live_", "shippo_test_"], HexLower, 40, 40)],
    ),
    // ---- messaging and email ----
    fam(
        "sendgrid_key",
        "SendGrid API keys SG.<22>.<43>",
        "Twilio SendGrid docs 'API keys' (SG.id.secret)",
        &[shape(&["SG."], Base64UrlDot, 66, 66).check(Check::DotAt(22))],
    ),
    fam(
        "mailgun_key",
        "Mailgun API keys key-<32 hex>",
        "Mailgun docs 'API keys' (private API key key-…)",
        &[shape(&["key-"], HexLower, 32, 32)],
    ),
    fam(
        "mailchimp_key",
        "Mailchimp API keys <32 hex>-us<dc>",
        "Mailchimp Marketing API docs 'Quick start' (key ends with -usN, the data centre)",
        &[shape(&["-us"], HexLower, 1, 2).lead(32)],
    ),
    fam(
        "brevo_key",
        "Brevo (Sendinblue) API keys xkeysib- and SMTP keys xsmtpsib-",
        "Brevo developers docs 'Authentication' (xkeysib-, xsmtpsib-)",
        &[shape(&["xkeysib-", "xsmtpsib-"], AlnumDash, 70, 90)],
    ),
    fam(
        "discord_webhook",
        "Discord webhook URLs (id and token after the host)",
        "Discord developer docs 'Webhook resource' (discord.com/api/webhooks/{id}/{token})",
        &[shape(
            &["discord.com/api/webhooks/", "discordapp.com/api/webhooks/"],
            UrlPath,
            60,
            120,
        )
        .end_any()
        .keep_prefix()],
    ),
    fam(
        "teams_webhook",
        "Microsoft Teams incoming-webhook URLs (the path after webhookb2/)",
        "Microsoft Learn 'Create an Incoming Webhook' (….webhook.office.com/webhookb2/…)",
        &[shape(&["webhook.office.com/webhookb2/"], Base64UrlDot, 60, 300)
            .end_any()
            .keep_prefix()],
    ),
    // ---- AI ----
    fam(
        "openai_key",
        "OpenAI API keys sk-proj- sk-svcacct- sk-admin- and legacy sk-…T3BlbkFJ…",
        "OpenAI platform docs 'API keys' (project, service-account and admin keys); legacy keys hold T3BlbkFJ",
        &[
            shape(&["sk-proj-", "sk-svcacct-", "sk-admin-"], Base64Url, 40, 250),
            shape(&["sk-"], Alnum, 48, 48).check(Check::LiteralAt(20, "T3BlbkFJ")),
        ],
    ),
    fam(
        "anthropic_key",
        "Anthropic API keys sk-ant-api03- and admin keys sk-ant-admin01-",
        "Anthropic docs 'API keys' / Admin API (sk-ant-api…, sk-ant-admin…)",
        &[shape(&["sk-ant-api03-", "sk-ant-admin01-"], Base64Url, 80, 120)],
    ),
    fam(
        "huggingface_token",
        "Hugging Face user access tokens hf_ and organisation tokens api_org_",
        "Hugging Face Hub docs 'User access tokens' (hf_)",
        &[
            shape(&["hf_"], Alnum, 30, 40),
            shape(&["api_org_"], Alnum, 30, 40),
        ],
    ),
    fam(
        "replicate_token",
        "Replicate API tokens r8_",
        "Replicate docs 'Authentication' (r8_ tokens)",
        &[shape(&["r8_"], Alnum, 37, 40)],
    ),
    // ---- package registries ----
    fam(
        "npm_token",
        "npm access tokens npm_",
        "GitHub blog 2021-09-23 'Announcing npm's new access token format' (npm_, CRC32 checksum)",
        &[shape(&["npm_"], Alnum, 36, 36).glued_if(Check::Crc32Base62)],
    ),
    fam(
        "pypi_token",
        "PyPI API tokens pypi-AgE… (macaroons for pypi.org)",
        "PyPI help 'API tokens' (pypi- prefix, a macaroon)",
        &[shape(&["pypi-"], Base64Url, 50, 400).check(Check::DecodedContains("pypi.org"))],
    ),
    fam(
        "rubygems_key",
        "RubyGems API keys rubygems_",
        "RubyGems guides 'API key scopes' (rubygems_ + 48 hex)",
        &[shape(&["rubygems_"], HexLower, 48, 48)],
    ),
    fam(
        "nuget_key",
        "NuGet API keys oy2…",
        "Microsoft Learn 'Scoped API keys' for nuget.org (46-character keys starting oy2)",
        &[shape(&["oy2"], LowerAlnum, 43, 43)],
    ),
    fam(
        "dockerhub_token",
        "Docker Hub personal and organisation access tokens dckr_pat_/dckr_oat_",
        "Docker Docs 'Personal access tokens', 'Organization access tokens' (dckr_pat_, dckr_oat_)",
        &[shape(&["dckr_pat_", "dckr_oat_"], Base64Url, 27, 40)],
    ),
    fam(
        "clojars_token",
        "Clojars deploy tokens CLOJARS_",
        "Clojars wiki 'Deploy tokens' (CLOJARS_ + 60 hex)",
        &[shape(&["CLOJARS_"], HexLower, 60, 60)],
    ),
    // ---- cloud and infrastructure ----
    fam(
        "aws_session_token",
        "AWS STS session tokens (FwoGZXIvYXdz…, IQoJb3JpZ2luX2Vj…, AQoDYXdz…)",
        "AWS STS API reference, GetSessionToken/AssumeRole 'Credentials.SessionToken' (base64; these prefixes are the encodings of its header)",
        &[shape(&["FwoGZXIvYXdz", "IQoJb3JpZ2luX2Vj", "AQoDYXdz"], Base64, 80, 2000)],
    ),
    fam(
        "aws_mws_key",
        "Amazon MWS auth tokens amzn.mws.<uuid>",
        "Amazon MWS developer guide 'MWSAuthToken' (amzn.mws. + UUID)",
        &[shape(&["amzn.mws."], AlnumDash, 36, 36).check(Check::Uuid)],
    ),
    fam(
        "alibaba_access_key",
        "Alibaba Cloud AccessKey ids LTAI…",
        "Alibaba Cloud docs 'Create an AccessKey pair' (AccessKey IDs start with LTAI)",
        &[shape(&["LTAI"], Alnum, 12, 28)],
    ),
    fam(
        "tencent_secret_id",
        "Tencent Cloud SecretIds AKID…",
        "Tencent Cloud docs 'Access key' (SecretId starts with AKID)",
        &[shape(&["AKID"], Alnum, 32, 34)],
    ),
    fam(
        "yandex_key",
        "Yandex Cloud API keys AQVN… and OAuth tokens y0_",
        "Yandex Cloud docs 'API key' (AQVN…), Yandex OAuth docs (y0_ tokens)",
        &[
            shape(&["AQVN"], Base64Url, 35, 38),
            shape(&["y0_"], Base64Url, 55, 60),
        ],
    ),
    fam(
        "google_oauth_secret",
        "Google OAuth client secrets GOCSPX-",
        "Google Cloud docs 'Client secret' rotation announcement (secrets start with GOCSPX-)",
        &[shape(&["GOCSPX-"], Base64Url, 28, 28)],
    ),
    fam(
        "google_oauth_token",
        "Google OAuth access tokens ya29. and refresh tokens 1//0",
        "Google Identity docs 'Using OAuth 2.0' (access tokens ya29., refresh tokens 1//)",
        &[
            shape(&["ya29."], Base64Url, 20, 2048),
            shape(&["1//0"], Base64Url, 30, 512),
        ],
    ),
    fam(
        "azure_storage_key",
        "Azure storage account keys in connection strings (AccountKey=<base64 of 64 bytes>)",
        "Microsoft Learn 'Configure Azure Storage connection strings' (AccountKey)",
        &[shape(&["AccountKey="], Base64, 86, 88)
            .end_any()
            .keep_prefix()
            .check(Check::Base64Bytes(64))],
    ),
    fam(
        "azure_shared_access_key",
        "Azure Service Bus / Event Hubs SharedAccessKey=",
        "Microsoft Learn 'Service Bus access control with Shared Access Signatures' (SharedAccessKey)",
        &[shape(&["SharedAccessKey="], Base64, 43, 44)
            .end_any()
            .keep_prefix()
            .check(Check::Base64Bytes(32))],
    ),
    fam(
        "azure_sas_signature",
        "Azure shared access signatures: the sig= of a SAS URL",
        "Microsoft Learn 'Create a service SAS' (sig: HMAC-SHA256, base64, URL-encoded)",
        &[shape(&["?sig=", "&sig="], Base64Percent, 43, 60)
            .end_any()
            .keep_prefix()
            .check(Check::PercentBase64Bytes(32))],
    ),
    fam(
        "azure_client_secret",
        "Microsoft Entra (Azure AD) client secrets xxxNQ~…",
        "Microsoft Learn 'Add a client secret' (40-character secret values; current ones hold Q~ after 4 characters)",
        &[shape(
            &["0Q~", "1Q~", "2Q~", "3Q~", "4Q~", "5Q~", "6Q~", "7Q~", "8Q~", "9Q~"],
            AzureSecret,
            34,
            34,
        )
        .lead(3)
        .end_any()],
    ),
    fam(
        "digitalocean_token",
        "DigitalOcean personal, OAuth and refresh tokens dop_v1_ doo_v1_ dor_v1_",
        "DigitalOcean docs 'How to create a personal access token' (dop_v1_, doo_v1_, dor_v1_ + 64 hex)",
        &[shape(&["dop_v1_", "doo_v1_", "dor_v1_"], HexLower, 64, 64)],
    ),
    fam(
        "heroku_key",
        "Heroku API keys HRKU-",
        "Heroku Dev Center 'Heroku CLI authentication' (HRKU- prefixed keys)",
        &[shape(&["HRKU-"], Base64Url, 36, 64)],
    ),
    fam(
        "cloudflare_origin_ca_key",
        "Cloudflare Origin CA keys v1.0-",
        "Cloudflare docs 'Origin CA keys' (v1.0- prefix)",
        &[shape(&["v1.0-"], HexLower, 24, 24).end_any()],
    ),
    fam(
        "vercel_token",
        "Vercel tokens vcp_ vci_ vca_ vcr_ vck_",
        "Vercel changelog 'New token formats' (vcp_, vci_, vca_, vcr_, vck_)",
        &[shape(&["vcp_", "vci_", "vca_", "vcr_", "vck_"], Alnum, 24, 64)],
    ),
    fam(
        "netlify_token",
        "Netlify personal access tokens nfp_",
        "Netlify docs 'Personal access tokens' (nfp_)",
        &[shape(&["nfp_"], Alnum, 36, 40)],
    ),
    fam(
        "supabase_token",
        "Supabase personal access tokens sbp_ and secret API keys sb_secret_",
        "Supabase docs 'Management API' (sbp_) and 'API keys' (sb_secret_)",
        &[
            shape(&["sbp_"], HexLower, 40, 40),
            shape(&["sb_secret_"], Base64Url, 20, 60),
        ],
    ),
    fam(
        "fly_token",
        "Fly.io tokens fo1_ and macaroons FlyV1 fm2_",
        "Fly.io docs 'Access tokens' (fo1_, FlyV1 fm2_…)",
        &[
            shape(&["fo1_"], Base64Url, 40, 50),
            shape(&["fm2_"], Base64, 40, 4096).end_any(),
        ],
    ),
    fam(
        "databricks_token",
        "Databricks personal access tokens dapi",
        "Databricks docs 'Personal access token authentication' (dapi + 32 hex)",
        &[shape(&["dapi"], HexLower, 32, 34)],
    ),
    fam(
        "dynatrace_token",
        "Dynatrace API tokens dt0c01.",
        "Dynatrace docs 'Access tokens', token format (dt0c01.<public 24>.<secret 64>)",
        &[shape(&["dt0c01."], Base64UrlDot, 89, 89).check(Check::DotAt(24))],
    ),
    fam(
        "openshift_token",
        "OpenShift OAuth access tokens sha256~",
        "Red Hat OpenShift docs 'Token storage' (sha256~ prefixed tokens)",
        &[shape(&["sha256~"], Base64Url, 43, 43)],
    ),
    fam(
        "tailscale_key",
        "Tailscale API, auth and OAuth client keys tskey-",
        "Tailscale docs 'API access tokens', 'Auth keys' (tskey-api-, tskey-auth-, tskey-client-)",
        &[shape(&["tskey-"], AlnumDash, 30, 100)],
    ),
    fam(
        "pulumi_token",
        "Pulumi access tokens pul-",
        "Pulumi docs 'Access tokens' (pul- + 40 hex)",
        &[shape(&["pul-"], HexLower, 40, 40)],
    ),
    fam(
        "doppler_token",
        "Doppler tokens dp.pt. dp.st. dp.sa. dp.ct. dp.scim. dp.audit.",
        "Doppler docs 'Token formats' (dp.pt., dp.st., dp.sa., dp.ct., dp.scim., dp.audit.)",
        &[shape(
            &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."],
            Alnum,
            40,
            44,
        )],
    ),
    fam(
        "infracost_key",
        "Infracost API keys ico-",
        "Infracost docs 'API key' (ico- + 32)",
        &[shape(&["ico-"], Alnum, 32, 32)],
    ),
    fam(
        "scalingo_token",
        "Scalingo API tokens tk-us-",
        "Scalingo docs 'API tokens' (tk-us- prefix)",
        &[shape(&["tk-us-"], Base64Url, 48, 48)],
    ),
    fam(
        "prefect_key",
        "Prefect Cloud API keys pnu_",
        "Prefect docs 'Manage API keys' (pnu_)",
        &[shape(&["pnu_"], Alnum, 36, 36)],
    ),
    // ---- secrets managers, identity, security ----
    fam(
        "vault_token",
        "HashiCorp Vault service, batch and recovery tokens hvs. hvb. hvr.",
        "HashiCorp Vault docs 'Tokens', token prefixes (hvs., hvb., hvr.)",
        &[shape(&["hvs.", "hvb.", "hvr."], Base64Url, 24, 400)],
    ),
    fam(
        "terraform_token",
        "HashiCorp Terraform Cloud / Enterprise API tokens <14>.atlasv1.<…>",
        "HashiCorp Terraform docs 'API tokens' (token id, .atlasv1., secret)",
        &[shape(&[".atlasv1."], Base64Url, 60, 70).lead(14)],
    ),
    fam(
        "onepassword_token",
        "1Password service account tokens ops_",
        "1Password developer docs 'Service accounts' (ops_ tokens)",
        &[shape(&["ops_"], Base64Url, 100, 2000)],
    ),
    fam(
        "age_secret_key",
        "age secret keys AGE-SECRET-KEY-1… (bech32, checksum validated)",
        "age specification (C2SP age.md): X25519 identities, bech32 with HRP AGE-SECRET-KEY-",
        &[shape(&["AGE-SECRET-KEY-1"], Bech32Upper, 58, 58).check(Check::Bech32)],
    ),
    fam(
        "sentry_token",
        "Sentry organisation and user auth tokens sntrys_/sntryu_",
        "Sentry docs 'Auth tokens' (organization sntrys_, user sntryu_)",
        &[
            shape(&["sntrys_"], Base64, 60, 400).end_any(),
            shape(&["sntryu_"], HexLower, 64, 64),
        ],
    ),
    fam(
        "grafana_token",
        "Grafana service account tokens glsa_, Grafana Cloud tokens glc_, legacy API keys eyJrIjoi…",
        "Grafana docs 'Service accounts' (glsa_), Grafana Cloud 'Access policies' tokens (glc_)",
        &[
            shape(&["glsa_"], AlnumUnderscore, 41, 41),
            shape(&["glc_"], Base64, 32, 400).end_any(),
            shape(&["eyJrIjoi"], Base64, 40, 120).end_any(),
        ],
    ),
    fam(
        "newrelic_key",
        "New Relic user API keys NRAK- and insert keys NRII-",
        "New Relic docs 'API keys' (user key NRAK-, insert key NRII-)",
        &[
            shape(&["NRAK-"], UpperAlnum, 27, 27),
            shape(&["NRII-"], Base64Url, 32, 32),
        ],
    ),
    fam(
        "postman_key",
        "Postman API keys PMAK-",
        "Postman docs 'Generate a Postman API key' (PMAK-)",
        &[shape(&["PMAK-"], AlnumDash, 59, 59)],
    ),
    // ---- collaboration and SaaS ----
    fam(
        "atlassian_token",
        "Atlassian API tokens ATATT and Bitbucket app passwords ATBB",
        "Atlassian support 'Manage API tokens for your Atlassian account' (ATATT…); Bitbucket 'App passwords' (ATBB…)",
        &[
            shape(&["ATATT"], Base64UrlDot, 150, 300).end_any(),
            shape(&["ATBB"], Alnum, 28, 40),
        ],
    ),
    fam(
        "linear_key",
        "Linear API keys lin_api_ and OAuth tokens lin_oauth_",
        "Linear developers docs 'API and webhooks' (lin_api_, lin_oauth_)",
        &[shape(&["lin_api_", "lin_oauth_"], Alnum, 40, 64)],
    ),
    fam(
        "notion_token",
        "Notion integration tokens ntn_ and legacy secret_",
        "Notion developers 'Authorization' (internal integration tokens ntn_, formerly secret_)",
        &[
            shape(&["ntn_"], Alnum, 46, 46),
            shape(&["secret_"], Alnum, 43, 43),
        ],
    ),
    fam(
        "figma_token",
        "Figma personal access tokens figd_",
        "Figma developers 'Access tokens' (figd_)",
        &[shape(&["figd_"], Base64Url, 40, 44)],
    ),
    fam(
        "sourcegraph_token",
        "Sourcegraph access tokens sgp_",
        "Sourcegraph docs 'Access tokens' (sgp_ prefix)",
        &[shape(&["sgp_"], AlnumUnderscore, 40, 64)],
    ),
    fam(
        "typeform_token",
        "Typeform personal access tokens tfp_",
        "Typeform developers 'Personal access token' (tfp_)",
        &[shape(&["tfp_"], Base64UrlDot, 44, 64)],
    ),
    fam(
        "contentful_token",
        "Contentful personal access tokens CFPAT-",
        "Contentful docs 'Personal access tokens' (CFPAT-)",
        &[shape(&["CFPAT-"], Base64Url, 43, 43)],
    ),
    fam(
        "readme_key",
        "ReadMe API keys rdme_",
        "ReadMe docs 'API keys' (rdme_ + 70)",
        &[shape(&["rdme_"], Alnum, 70, 70)],
    ),
    fam(
        "planetscale_token",
        "PlanetScale service tokens pscale_tkn_, OAuth tokens pscale_oauth_, passwords pscale_pw_",
        "PlanetScale docs 'Service tokens', 'Connection strings' (pscale_tkn_, pscale_oauth_, pscale_pw_)",
        &[shape(&["pscale_tkn_", "pscale_oauth_", "pscale_pw_"], Base64UrlDot, 32, 64)],
    ),
    fam(
        "mapbox_token",
        "Mapbox secret access tokens sk.eyJ…",
        "Mapbox docs 'Access tokens' (secret tokens sk., public pk.)",
        &[shape(&["sk.eyJ"], Base64UrlDot, 60, 300)],
    ),
    fam(
        "defined_networking_key",
        "Defined Networking API keys dnkey-",
        "Defined Networking docs 'API keys' (dnkey-)",
        &[shape(&["dnkey-"], Base64Url, 50, 90)],
    ),
    fam(
        "frameio_token",
        "Frame.io developer tokens fio-u-",
        "Frame.io developer docs 'Authentication' (fio-u-)",
        &[shape(&["fio-u-"], Base64Url, 64, 64)],
    ),
    // ---- more AI, developer and SaaS platforms ----
    fam(
        "openrouter_key",
        "OpenRouter API keys sk-or-v1-",
        "OpenRouter docs 'API keys' (sk-or-v1- + 64 hex)",
        &[shape(&["sk-or-v1-"], HexLower, 64, 64)],
    ),
    fam(
        "groq_key",
        "Groq API keys gsk_",
        "GroqCloud docs 'API keys' (gsk_)",
        &[shape(&["gsk_"], Alnum, 52, 52)],
    ),
    fam(
        "perplexity_key",
        "Perplexity API keys pplx-",
        "Perplexity API docs 'Getting started' (pplx- keys)",
        &[shape(&["pplx-"], Alnum, 48, 56)],
    ),
    fam(
        "xai_key",
        "xAI API keys xai-",
        "xAI docs 'API keys' (xai- keys)",
        &[shape(&["xai-"], Alnum, 70, 90)],
    ),
    fam(
        "langsmith_key",
        "LangSmith personal and service keys lsv2_pt_/lsv2_sk_",
        "LangSmith docs 'Create an API key' (lsv2_pt_, lsv2_sk_)",
        &[shape(&["lsv2_pt_", "lsv2_sk_"], AlnumUnderscore, 40, 50)],
    ),
    fam(
        "pinecone_key",
        "Pinecone API keys pcsk_",
        "Pinecone docs 'Manage API keys' (pcsk_)",
        &[shape(&["pcsk_"], AlnumUnderscore, 60, 90)],
    ),
    fam(
        "adobe_client_secret",
        "Adobe developer client secrets p8e-",
        "Adobe Developer Console docs 'OAuth Server-to-Server credentials' (client secrets p8e-)",
        &[shape(&["p8e-"], Base64Url, 32, 32)],
    ),
    fam(
        "artifactory_token",
        "JFrog Artifactory API keys AKCp and reference tokens cmVmdGtu",
        "JFrog docs 'Access tokens' / 'API keys' (AKCp…, reference tokens cmVmdGtu…)",
        &[
            shape(&["AKCp"], Alnum, 69, 69),
            shape(&["cmVmdGtu"], Alnum, 56, 56),
        ],
    ),
    fam(
        "buildkite_token",
        "Buildkite API access tokens bkua_",
        "Buildkite docs 'Managing API access tokens' (bkua_ + 40 hex)",
        &[shape(&["bkua_"], HexLower, 40, 40)],
    ),
    fam(
        "circleci_token",
        "CircleCI personal API tokens CCIPAT_",
        "CircleCI docs 'Managing API tokens' (CCIPAT_)",
        &[shape(&["CCIPAT_"], AlnumUnderscore, 40, 80)],
    ),
    fam(
        "harness_token",
        "Harness personal access and service account tokens pat./sat.",
        "Harness docs 'Manage API keys' (pat.<account>.<id>.<secret>, sat.…)",
        &[shape(&["pat.", "sat."], Base64UrlDot, 60, 80)],
    ),
    fam(
        "hubspot_token",
        "HubSpot private app access tokens pat-na1-/pat-eu1-",
        "HubSpot developers 'Private apps' (pat-na1-, pat-eu1- + UUID)",
        &[shape(&["pat-na1-", "pat-eu1-"], AlnumDash, 36, 36).check(Check::Uuid)],
    ),
    fam(
        "launchdarkly_key",
        "LaunchDarkly API access tokens api- and server-side SDK keys sdk- (UUID)",
        "LaunchDarkly docs 'API access tokens', 'Keys' (api-<uuid>, sdk-<uuid>)",
        &[shape(&["api-", "sdk-"], AlnumDash, 36, 36).check(Check::Uuid)],
    ),
    fam(
        "octopus_key",
        "Octopus Deploy API keys API-",
        "Octopus docs 'How to create an API key' (API- + upper-case letters and digits)",
        &[shape(&["API-"], UpperAlnum, 26, 32)],
    ),
    fam(
        "packagist_token",
        "Private Packagist tokens packagist_ (uut, ort, out, urt…)",
        "Private Packagist docs 'Authentication tokens' (packagist_xxx_ prefixes)",
        &[shape(&["packagist_"], AlnumUnderscore, 60, 80)],
    ),
    fam(
        "render_key",
        "Render API keys rnd_",
        "Render docs 'Render API', API keys (rnd_)",
        &[shape(&["rnd_"], Alnum, 32, 32)],
    ),
    fam(
        "sonarqube_token",
        "SonarQube user, project and analysis tokens squ_ sqp_ sqa_",
        "SonarQube docs 'Managing your tokens' (squ_, sqp_, sqa_ + 40 hex)",
        &[shape(&["squ_", "sqp_", "sqa_"], HexLower, 40, 40)],
    ),
    // ---- values without a prefix, bound to their context (keys lowercase: any case) ----
    fam(
        "datadog_api_key",
        "Datadog API keys (32 hex) after DD_API_KEY / DATADOG_API_KEY or the DD-API-KEY header",
        "Datadog docs 'API and Application Keys', API reference 'Authentication' (DD-API-KEY header, DD_API_KEY)",
        &[keyed(
            &["dd_api_key", "dd-api-key", "datadog_api_key", "datadog-api-key", "dd_apikey"],
            Hex,
            32,
            32,
        )],
    ),
    fam(
        "datadog_app_key",
        "Datadog application keys (40 hex) after DD_APP_KEY / DD_APPLICATION_KEY or the DD-APPLICATION-KEY header",
        "Datadog docs 'API and Application Keys', API reference 'Authentication' (DD-APPLICATION-KEY header, DD_APP_KEY)",
        &[keyed(
            &[
                "dd_app_key",
                "dd-app-key",
                "dd_application_key",
                "dd-application-key",
                "datadog_app_key",
                "datadog_application_key",
                "dd_appkey",
            ],
            Hex,
            40,
            40,
        )],
    ),
    fam(
        "twilio_auth_token",
        "Twilio account auth tokens (32 hex) after TWILIO_AUTH_TOKEN",
        "Twilio docs 'Auth Tokens and how to change them' (32 hex; the AC… account SID is an id)",
        &[keyed(
            &["twilio_auth_token", "twilio-auth-token", "twilio_authtoken", "twilio_token"],
            Hex,
            32,
            32,
        )],
    ),
    fam(
        "twilio_api_secret",
        "Twilio API key secrets (32 alphanumerics) after TWILIO_API_SECRET",
        "Twilio docs 'API keys overview' (the SK… key SID is an id, its secret is shown once)",
        &[keyed(
            &["twilio_api_secret", "twilio_api_key_secret", "twilio-api-secret", "twilio_secret"],
            Alnum,
            32,
            32,
        )],
    ),
    fam(
        "cohere_key",
        "Cohere API keys (40 alphanumerics) after CO_API_KEY / COHERE_API_KEY",
        "Cohere docs 'Rate limits and API keys', SDK readme (CO_API_KEY environment variable)",
        &[keyed(&["co_api_key", "cohere_api_key", "cohere-api-key", "cohere_key"], Alnum, 40, 40)],
    ),
    fam(
        "fastly_token",
        "Fastly API tokens (32) after FASTLY_API_TOKEN or the Fastly-Key header",
        "Fastly docs 'Fastly-Key' HTTP header, 'Authenticate with the Fastly CLI' (FASTLY_API_TOKEN)",
        &[keyed(
            &["fastly-key", "fastly_key", "fastly_api_token", "fastly_api_key", "fastly_token"],
            Base64Url,
            32,
            32,
        )],
    ),
    fam(
        "pagerduty_key",
        "PagerDuty REST API keys (20) after PAGERDUTY_TOKEN, Events integration (routing) keys (32 hex)",
        "PagerDuty developer docs 'API access keys' (REST API keys), Events API v2 'routing_key' (integration key)",
        &[
            keyed(
                &["pagerduty_token", "pagerduty_api_token", "pagerduty_api_key", "pagerduty-token"],
                Base64UrlPlus,
                20,
                20,
            ),
            keyed(
                &[
                    "pagerduty_integration_key",
                    "pagerduty_routing_key",
                    "pagerduty_service_key",
                    "routing_key",
                ],
                Hex,
                32,
                32,
            ),
        ],
    ),
    fam(
        "okta_token",
        "Okta API tokens 00… after the SSWS authorization scheme or OKTA_API_TOKEN",
        "Okta developer docs 'Create an API token' (Authorization: SSWS 00QCjAl4MlV-…, 42 characters)",
        &[
            scheme(&["ssws"], Base64Url, 42, 42).check(Check::LiteralAt(0, "00")),
            keyed(&["okta_api_token", "okta-api-token", "okta_token"], Base64Url, 42, 42)
                .check(Check::LiteralAt(0, "00")),
        ],
    ),
    fam(
        "auth0_client_secret",
        "Auth0 application client secrets after AUTH0_CLIENT_SECRET",
        "Auth0 docs 'Application credentials' (client secret); Auth0 SDK quickstarts (AUTH0_CLIENT_SECRET)",
        &[keyed(
            &["auth0_client_secret", "auth0-client-secret", "auth0_clientsecret"],
            Base64Url,
            32,
            128,
        )],
    ),
    fam(
        "auth0_token",
        "Auth0 Management API tokens after AUTH0_API_TOKEN / AUTH0_MANAGEMENT_TOKEN",
        "Auth0 docs 'Management API access tokens' (a JWT; the jwt detector names it when it is one)",
        &[keyed(
            &["auth0_api_token", "auth0_management_token", "auth0_management_api_token", "auth0_token"],
            Base64UrlDot,
            32,
            8192,
        )],
    ),
    fam(
        "cloudflare_api_token",
        "Cloudflare API tokens: 40 characters after CF_API_TOKEN / CLOUDFLARE_API_TOKEN; cfut_/cfat_",
        "Cloudflare docs 'Create API token' (CLOUDFLARE_API_TOKEN), 'Token formats' (cfut_, cfat_ + 40 + checksum)",
        &[
            keyed(
                &["cf_api_token", "cloudflare_api_token", "cloudflare-api-token", "cf_token", "cloudflare_token"],
                Base64Url,
                40,
                40,
            ),
            shape(&["cfut_", "cfat_"], Alnum, 48, 48),
        ],
    ),
    fam(
        "cloudflare_global_api_key",
        "Cloudflare Global API keys: 37 hex after X-Auth-Key / CF_API_KEY / CLOUDFLARE_API_KEY; cfk_",
        "Cloudflare docs 'Get Global API key (legacy)' (X-Auth-Key header), 'Token formats' (cfk_ + 40 + checksum)",
        &[
            keyed(
                &[
                    "x-auth-key",
                    "cf_api_key",
                    "cloudflare_api_key",
                    "cloudflare-api-key",
                    "cf_global_api_key",
                    "cloudflare_global_api_key",
                ],
                Hex,
                37,
                37,
            ),
            shape(&["cfk_"], Alnum, 48, 48),
        ],
    ),
    fam(
        "azure_devops_pat",
        "Azure DevOps personal access tokens (52 base32, or 84 with AZDO) after AZURE_DEVOPS_PAT",
        "Microsoft Learn 'Use personal access tokens' (Azure DevOps), AZURE_DEVOPS_EXT_PAT of the az devops CLI",
        &[
            keyed(
                &["azure_devops_pat", "azure_devops_ext_pat", "azure_devops_token", "ado_pat"],
                Base32Lower,
                52,
                52,
            ),
            keyed(
                &["azure_devops_pat", "azure_devops_ext_pat", "azure_devops_token", "ado_pat"],
                Alnum,
                84,
                84,
            )
            .check(Check::LiteralAt(76, "AZDO")),
        ],
    ),
    fam(
        "sentry_dsn",
        "Sentry DSN keys: the 32-hex key of https://<key>@o<n>.ingest.sentry.io/<project>, and the same key as sentry_key= (envelope URLs, X-Sentry-Auth)",
        "Sentry docs 'Data Source Name (DSN)' (https://{PUBLIC_KEY}@o{ORG_ID}.ingest.sentry.io/{PROJECT_ID}); Sentry SDK developer docs 'Overview, Authentication' (develop.sentry.dev/sdk/overview/#authentication: X-Sentry-Auth: Sentry sentry_key=…, or sentry_key and sentry_version=7 in the query)",
        &[
            userinfo_at(&["sentry.io"], Hex, 32, 32),
            keyed(&["sentry_key"], Hex, 32, 32),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Builtin, Pipeline, Redactor};
    use std::sync::{Arc, LazyLock};

    static DEFAULT: LazyLock<Arc<Redactor>> =
        LazyLock::new(|| Arc::new(Redactor::default_profile()));

    fn redact(text: &str) -> String {
        let (out, counts) = Pipeline::redact_chunks(&DEFAULT, &[text.as_bytes()], 64 * 1024);
        assert_eq!(counts.lines_withheld, 0);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Bytes of each alphabet, mixed case and digits, in an order no other detector reads as
    /// anything (no dots, no `=`).
    fn sample(a: Alphabet) -> &'static str {
        match a {
            Alnum => "a1B2c3D4e5F6g7H8k9",
            AlnumUnderscore => "a1B2_c3D4e5F6g7H8k9",
            AlnumDash => "a1B2-c3D4e5F6g7H8k9",
            Base64Url => "a1B2-c3_D4e5F6g7H8k9",
            Base64UrlDot => "a1B2-c3_D4e5F6g7H8k9",
            Base64 => "a1B2+c3/D4e5F6g7H8k9",
            Base64Percent => "a1B2%2Bc3D4e5F6g7H8k9",
            HexLower => "0a1b2c3d4e5f6789",
            Hex => "0A1b2C3d4E5f6789",
            UpperAlnum => "A1B2C3D4E5F6G7H8K9",
            LowerAlnum => "a1b2c3d4e5f6g7h8k9",
            Bech32Upper => "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L",
            UrlPath => "T0123ABC/B0456DEF/a1B2c3D4e5F6g7H8k9",
            LowerAlnumDollar => "a1b2c3d4e5$f6g7h8k9",
            AzureSecret => "a1B2~c3.D4_e5-F6g7H8k9",
            Base64UrlPlus => "a1B2+c3_D4-e5F6g7H8k9",
            Base32Lower => "a2b3c4d5e6f7gh",
        }
    }

    /// A token of shape `s` written with `prefix` (its literal) and `body` the way logs write
    /// it: the prefix and body, a key's assignment (`KEY=body`), a scheme's header, a DSN. With
    /// `glued`, the literal is glued to a word byte before it (a look-alike).
    fn written(s: &Shape, prefix: &str, body: &str, glued: bool) -> String {
        let x = if glued { "x" } else { "" };
        let lead = fill(s.alphabet, usize::from(s.lead));
        match s.context {
            Context::Prefix => format!("{x}{lead}{prefix}{body}"),
            Context::Key => format!("{x}{}={body}", prefix.to_ascii_uppercase()),
            Context::Scheme => format!("Authorization: {x}{} {body}", prefix.to_ascii_uppercase()),
            Context::UserinfoAtHost => format!("https://{body}@o12.ingest.{x}{prefix}/34"),
        }
    }

    /// Every written form of a token (text, and the text with its secret part replaced): the
    /// forms of [`written`], and for a key the other ways configuration and logs assign it
    /// (YAML, JSON, JSON inside a JSON string, quoted, spaced, the key in any case).
    fn forms(s: &Shape, prefix: &str, body: &str, name: &str) -> Vec<(String, String)> {
        let r = format!("[REDACTED:{name}]");
        let lead = fill(s.alphabet, usize::from(s.lead));
        if s.context == Context::Prefix && !s.keep_prefix {
            return vec![(written(s, prefix, body, false), r)];
        }
        if s.context == Context::Prefix {
            return vec![(
                written(s, prefix, body, false),
                format!("{lead}{prefix}{r}"),
            )];
        }
        let up = prefix.to_ascii_uppercase();
        let mut templates = vec![written(s, prefix, "\u{1}", false)];
        if s.context == Context::Key {
            templates.extend([
                format!("{prefix}: \u{1}"),
                format!("\"{prefix}\": \"\u{1}\""),
                format!("{{\"msg\":\"{{\\\"{up}\\\":\\\"\u{1}\\\"}}\"}}"),
                format!("{up} = '\u{1}'"),
                format!("--{prefix}=\u{1}"),
                format!("{{\"{up}\":[\"\u{1}\"]}}"),
                format!("{prefix} => \"\u{1}\""),
                format!("{{\"name\":\"{up}\",\"value\":\"\u{1}\"}}"),
                format!("- {{ \"name\": \"{prefix}\", \"value\": \"\u{1}\" }}"),
                format!(
                    "{{\"msg\":\"{{\\\"name\\\":\\\"{up}\\\",\\\"value\\\":\\\"\u{1}\\\"}}\"}}"
                ),
            ]);
        }
        templates
            .into_iter()
            .map(|t| (t.replace('\u{1}', body), t.replace('\u{1}', &r)))
            .collect()
    }

    fn fill(a: Alphabet, n: usize) -> String {
        sample(a).chars().cycle().take(n).collect()
    }

    fn b64(data: &[u8], url: bool) -> String {
        let alphabet: &[u8; 64] = if url {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        } else {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        };
        let mut s = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    s.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else if !url {
                    s.push('=');
                }
            }
        }
        s
    }

    /// bech32 (BIP-173) encoding of `data` (5-bit values) under `hrp`, upper case.
    fn bech32_encode(hrp: &str, data: &[u8]) -> String {
        const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
        const GEN: [u32; 5] = [
            0x3b6a_57b2,
            0x2650_8e6d,
            0x1ea1_19fa,
            0x3d42_33dd,
            0x2a14_62b3,
        ];
        let lower = hrp.to_ascii_lowercase();
        let mut values: Vec<u8> = lower.bytes().map(|c| c >> 5).collect();
        values.push(0);
        values.extend(lower.bytes().map(|c| c & 31));
        values.extend_from_slice(data);
        values.extend_from_slice(&[0; 6]);
        let mut chk = 1u32;
        for v in values {
            let top = chk >> 25;
            chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(v);
            for (i, g) in GEN.iter().enumerate() {
                if (top >> i) & 1 == 1 {
                    chk ^= g;
                }
            }
        }
        chk ^= 1;
        let mut s = format!("{hrp}1");
        for v in data {
            s.push(CHARSET[usize::from(*v)].to_ascii_uppercase() as char);
        }
        for i in 0..6 {
            s.push(CHARSET[((chk >> (5 * (5 - i))) & 31) as usize].to_ascii_uppercase() as char);
        }
        s
    }

    /// A GitHub-format body: 30 characters and their CRC-32 in base62.
    fn with_crc(random: &str) -> String {
        const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut n = validate::crc32(random.as_bytes());
        let mut tail = [b'0'; 6];
        for slot in tail.iter_mut().rev() {
            *slot = DIGITS[(n % 62) as usize];
            n /= 62;
        }
        format!("{random}{}", String::from_utf8_lossy(&tail))
    }

    /// Bodies (what follows the prefix) of a valid token of this shape: its shortest and, when
    /// bounded, longest length, or what its check needs.
    fn bodies(s: &Shape, prefix: &str) -> Vec<String> {
        let (min, max) = (usize::from(s.min), usize::from(s.max));
        match s.check {
            Check::None => {
                let mut v = vec![fill(s.alphabet, min)];
                if max != min && max < 2048 {
                    v.push(fill(s.alphabet, max));
                }
                v
            }
            Check::Crc32Base62 => vec![with_crc(&fill(s.alphabet, min - 6))],
            Check::Bech32 => {
                let data: Vec<u8> = (0..52u32).map(|i| ((i * 7 + 3) % 32) as u8).collect();
                let key = bech32_encode(prefix.trim_end_matches('1'), &data);
                vec![key[prefix.len()..].to_string()]
            }
            Check::Base64Bytes(n) => {
                let bytes: Vec<u8> = (0..n)
                    .map(|i| i.wrapping_mul(37).wrapping_add(11))
                    .collect();
                vec![b64(&bytes, false)]
            }
            Check::PercentBase64Bytes(n) => {
                let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(53).wrapping_add(7)).collect();
                vec![b64(&bytes, false)
                    .replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D")]
            }
            Check::LiteralAt(at, lit) => {
                let at = usize::from(at);
                let body = fill(s.alphabet, min);
                vec![format!("{}{lit}{}", &body[..at], &body[at + lit.len()..])]
            }
            Check::Uuid => vec!["3f2b8c1e-9d4a-4e6b-a1c2-7d8e9f0a1b2c".to_string()],
            Check::DotAt(at) => {
                let at = usize::from(at);
                vec![format!(
                    "{}.{}",
                    fill(s.alphabet, at),
                    fill(s.alphabet, min - at - 1)
                )]
            }
            Check::DecodedContains(lit) => {
                let mut bytes = b"\x02\x01\x08".to_vec();
                bytes.extend_from_slice(lit.as_bytes());
                bytes.extend_from_slice(b"\x02\x06identifier-of-the-token-0123456789");
                vec![b64(&bytes, true)]
            }
        }
    }

    /// Every documented form of every family (each shape, each prefix, shortest and longest,
    /// each way of writing a key) is redacted under its own name by the default profile, and
    /// nothing of its secret part survives.
    #[test]
    fn every_family_redacts_each_documented_form() {
        for f in FAMILIES {
            for s in f.shapes {
                for prefix in s.prefixes {
                    for body in bodies(s, prefix) {
                        for (text, want) in forms(s, prefix, &body, f.name) {
                            let out = redact(&format!("sent {text} ok"));
                            assert_eq!(out, format!("sent {want} ok"), "{}: {text}", f.name);
                        }
                    }
                }
            }
        }
    }

    /// A context literal (key, scheme or host) in lowercase, upper case and with each part
    /// capitalised (`Dd_Api_Key`, `X-Auth-Key`): they are matched in any case.
    fn cases(literal: &str) -> [String; 3] {
        let mut title = String::new();
        let mut up = true;
        for c in literal.chars() {
            title.push(if up { c.to_ascii_uppercase() } else { c });
            up = !c.is_ascii_alphanumeric();
        }
        [literal.to_string(), literal.to_ascii_uppercase(), title]
    }

    /// Redacts `text` with the default profile, with the word gate's stem pre-check on or
    /// off (off: every prefix of a key's group compared at each table hit).
    fn redact_stem(text: &str, stem_off: bool) -> String {
        crate::prefilter::STEM_OFF.with(|c| c.set(stem_off));
        let out = redact(text);
        crate::prefilter::STEM_OFF.with(|c| c.set(false));
        out
    }

    /// A corpus generated from the family table, not a hand list: every context row's key,
    /// scheme and host (every shape of every built-in family whose literal is context) in
    /// three cases, each way of writing it (`KEY=`, `key: `, JSON, escaped JSON, YAML, `=>`,
    /// a name/value pair, a header, a DSN), each value of its shape (shortest, longest, what
    /// its check needs), on a line of everyday words that share the keys' first bytes
    /// (`authorization`, `page=`, `database`, `/api/`, `line`). Each planted value is
    /// redacted under its row's name, and the word gate's stem pre-check changes nothing: the
    /// whole corpus, near misses included (the literal with its last byte changed, `_` and `-`
    /// swapped), redacts to the same bytes with the stem off, where the gate compares every
    /// prefix of a key's group at each hit.
    #[test]
    fn every_context_row_is_found_and_the_word_gate_stem_changes_nothing() {
        let words = "GET /api/v1/orders?page=3 authorization database datadog line auth0 pager";
        let (mut planted, mut near) = (0, 0);
        for f in Builtin::ALL.iter().filter_map(|b| b.as_family()) {
            for s in f.shapes.iter().filter(|s| s.context != Context::Prefix) {
                for literal in s.prefixes {
                    for case in cases(literal) {
                        for body in bodies(s, literal) {
                            for (text, want) in forms(s, &case, &body, f.name) {
                                let line = format!("{words} sent {text} ok");
                                let out = redact_stem(&line, false);
                                assert_eq!(out, format!("{words} sent {want} ok"), "{line}");
                                assert_eq!(redact_stem(&line, true), out, "{line}");
                                planted += 1;
                            }
                            let mut misses = vec![case.replace('_', "-"), case.replace('-', "_")];
                            if let Some(last) = case.chars().last() {
                                let other = if last == 'x' { 'y' } else { 'x' };
                                misses.push(format!("{}{other}", &case[..case.len() - 1]));
                            }
                            for miss in misses.into_iter().filter(|m| *m != case) {
                                for (text, _) in forms(s, &miss, &body, f.name) {
                                    let line = format!("{words} sent {text} ok");
                                    let out = redact_stem(&line, false);
                                    assert_eq!(redact_stem(&line, true), out, "{line}");
                                    near += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(planted >= 1000, "{planted} planted values");
        assert!(near >= 1000, "{near} near misses");
    }

    /// Look-alikes of every form are not this family's: a body one byte too short or too long,
    /// and the token (or its key, scheme or host) glued to a word before it. They stay whole
    /// unless another family's token is inside them (`xoxe.xoxp-…` one byte short is still a
    /// Slack `xoxp-` token) or another detector finds them (`secret` after `MY_DD_API_KEY=`).
    #[test]
    fn every_family_leaves_its_look_alikes() {
        for f in FAMILIES {
            for s in f.shapes {
                for prefix in s.prefixes {
                    let body = bodies(s, prefix).remove(0);
                    let short = fill(s.alphabet, usize::from(s.min) - 1);
                    let mut look_alikes = vec![written(s, prefix, &short, false)];
                    if s.check == Check::None && s.max < 2048 {
                        let long = fill(s.alphabet, usize::from(s.max) + 1);
                        look_alikes.push(written(s, prefix, &long, false));
                    }
                    let token = written(s, prefix, &body, false);
                    if s.context != Context::Prefix || token.as_bytes()[0].is_ascii_alphanumeric() {
                        look_alikes.push(written(s, prefix, &body, true));
                    }
                    for text in look_alikes {
                        let line = format!("sent {text} ok");
                        let out = redact(&line);
                        let inner = FAMILIES.iter().any(|g| {
                            g.name != f.name
                                && g.shapes
                                    .iter()
                                    .flat_map(|s| s.prefixes)
                                    .any(|p| text.contains(p) && !prefix.starts_with(p))
                        });
                        // Unchanged, or only another detector's finding inside (a Slack
                        // `xoxp-` token inside `xoxe.xoxp-…`, the `secret` value after
                        // `SharedAccessKey=`); never this family's.
                        let other = inner || (out.contains("[REDACTED:") && s.keep_prefix);
                        assert!(
                            out == line || (other && !out.contains(&format!(":{}]", f.name))),
                            "{}: {line} -> {out}",
                            f.name
                        );
                    }
                }
            }
        }
    }

    /// One token of every family form, several to a line between benign words, cut into two
    /// chunks at every offset: the output and the counts are those of the whole, and no
    /// token's secret part survives.
    #[test]
    fn every_family_token_straddling_any_chunk_boundary_is_redacted() {
        let mut text = String::new();
        let mut secrets = Vec::new();
        for (i, f) in FAMILIES.iter().enumerate() {
            for s in f.shapes {
                let prefix = s.prefixes[i % s.prefixes.len()];
                let body = bodies(s, prefix).remove(0);
                let token = written(s, prefix, &body, false);
                text.push_str(&format!("t={i} {token} ok"));
                text.push(if i % 3 == 2 { '\n' } else { ' ' });
                secrets.push(if s.keep_prefix { body } else { token });
            }
        }
        let bytes = text.as_bytes();
        let whole = Pipeline::redact_chunks(&DEFAULT, &[bytes], 64 * 1024);
        let out = String::from_utf8_lossy(&whole.0).into_owned();
        for body in &secrets {
            assert!(!out.contains(body.as_str()), "{body} survived");
        }
        assert_eq!(whole.1.total(), secrets.len() as u64);
        for a in 0..=bytes.len() {
            let split = Pipeline::redact_chunks(&DEFAULT, &[&bytes[..a], &bytes[a..]], 64 * 1024);
            assert!(split == whole, "split at {a}");
        }
    }

    /// Look-alikes written by hand: near misses a log really holds.
    #[test]
    fn hand_written_look_alikes_stay() {
        for text in [
            "pk_live_abcdefghijklmnop publishable keys are public",
            "sk-short and sk-ant-api03-short",
            "the key-value store, key-2f5e",
            "hooks.slack.com/services/ (no path)",
            "ghp_ in docs, npm_install, gsk_x, hf_hub_download, r8_x",
            "AccountKey=not-base64!; a SharedAccessKey rotation",
            "https://x.blob.core.windows.net/c?sv=2022&sig=abc",
            "v1.0-beta release, dp.pt.x, api-gateway, sdk-version",
            "AGE-SECRET-KEY-1QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7LQPZRY9X8GF2TVDW0S3JN54KHCE6MUA7LQQ",
            "amzn.mws.not-a-uuid-at-all-0000000000000",
            "pat.example, sat.x, API-VERSION-2, SG.x.y",
        ] {
            let line = format!("{text}\n");
            assert_eq!(redact(&line), line, "{text}");
        }
    }

    /// A checksum-valid GitHub token is found even glued to a word before it (`%3D` of a
    /// URL-encoded `=`); without a valid checksum a glued one stays, as before.
    #[test]
    fn a_checksum_valid_github_token_is_found_glued() {
        let token = format!("ghp_{}", with_crc("a1B2c3D4e5F6g7H8k9a1B2c3D4e5F6"));
        assert_eq!(
            redact(&format!("u=/x?t%3D{token}&y")),
            "u=/x?t%3D[REDACTED:github_token]&y"
        );
        let bad = format!("ghp_{}", with_crc("a1B2c3D4e5F6g7H8k9a1B2c3D4e5F7")).replace("F7", "F6");
        let line = format!("u=/x?t%3D{bad}&y");
        assert_eq!(redact(&line), line);
    }

    /// The vendor values without a prefix, as real configuration dumps, requests and
    /// environments write them: each under its vendor's name, the key, header, scheme or host
    /// kept readable, the ids next to them (Twilio `AC…`, the DSN's org and project) kept.
    #[test]
    fn context_bound_vendor_values_in_realistic_lines() {
        let hex32 = "9f86d081884c7d659a2feaa0c55ad015";
        let hex40 = "3f786850e387550fdab836ed7e6dc881de23001b";
        let hex37 = "c2547eb745079dac9320b638f5e225cf483cc";
        let okta = "00QCjAl4MlV-WPXM0HmjFx-vbGuaQ7dbSvPwWRrzx4";
        let pat = "a".repeat(26) + &"b2".repeat(13);
        for (text, want) in [
            (
                format!("export DD_API_KEY={hex32}"),
                "export DD_API_KEY=[REDACTED:datadog_api_key]".to_string(),
            ),
            (
                format!("curl -H 'DD-API-KEY: {hex32}' -H 'DD-APPLICATION-KEY: {hex40}'"),
                "curl -H 'DD-API-KEY: [REDACTED:datadog_api_key]' -H 'DD-APPLICATION-KEY: [REDACTED:datadog_app_key]'".to_string(),
            ),
            (
                format!(r#"{{"account_sid":"AC{hex32}","twilio_auth_token":"{hex32}"}}"#),
                format!(r#"{{"account_sid":"AC{hex32}","twilio_auth_token":"[REDACTED:twilio_auth_token]"}}"#),
            ),
            (
                format!("GET /api/v1/users Authorization: SSWS {okta}"),
                "GET /api/v1/users Authorization: SSWS [REDACTED:okta_token]".to_string(),
            ),
            (
                "Fastly-Key: Ab3dEf6hIj9lMn2pQr5tUv8xYz1b4D7f".to_string(),
                "Fastly-Key: [REDACTED:fastly_token]".to_string(),
            ),
            (
                format!("X-Auth-Email: ops@example.com X-Auth-Key: {hex37}"),
                "X-Auth-Email: [REDACTED:email] X-Auth-Key: [REDACTED:cloudflare_global_api_key]"
                    .to_string(),
            ),
            (
                format!("SENTRY_DSN=https://{hex32}@o4504.ingest.us.sentry.io/4508"),
                "SENTRY_DSN=https://[REDACTED:sentry_dsn]@o4504.ingest.us.sentry.io/4508"
                    .to_string(),
            ),
            (
                format!("dsn: 'https://{hex32}@sentry.io/12'"),
                "dsn: 'https://[REDACTED:sentry_dsn]@sentry.io/12'".to_string(),
            ),
            (
                format!("POST /api/2/envelope/?sentry_key={hex32}&sentry_version=7 HTTP/1.1"),
                "POST /api/2/envelope/?sentry_key=[REDACTED:sentry_dsn]&sentry_version=7 HTTP/1.1"
                    .to_string(),
            ),
            (
                format!("X-Sentry-Auth: Sentry sentry_key={hex32}, sentry_version=7"),
                "X-Sentry-Auth: Sentry sentry_key=[REDACTED:sentry_dsn], sentry_version=7"
                    .to_string(),
            ),
            (
                "Authorization: Splunk 1f2e3d4c-5b6a-4789-8abc-def012345678".to_string(),
                "Authorization: Splunk [REDACTED:authorization]".to_string(),
            ),
            (
                format!("AZURE_DEVOPS_EXT_PAT={pat}"),
                "AZURE_DEVOPS_EXT_PAT=[REDACTED:azure_devops_pat]".to_string(),
            ),
            (
                format!(
                    r#"{{"env":[{{"name":"DD_SITE","value":"datadoghq.eu"}},{{"name":"DD_API_KEY","value":"{hex32}"}}]}}"#
                ),
                r#"{"env":[{"name":"DD_SITE","value":"datadoghq.eu"},{"name":"DD_API_KEY","value":"[REDACTED:datadog_api_key]"}]}"#
                    .to_string(),
            ),
            (
                format!(r#"{{"routing_key":"{hex32}","event_action":"trigger"}}"#),
                r#"{"routing_key":"[REDACTED:pagerduty_key]","event_action":"trigger"}"#
                    .to_string(),
            ),
        ] {
            assert_eq!(redact(&format!("{text}\n")), format!("{want}\n"), "{text}");
        }
    }

    /// Blanks are spaces and tabs only, skipped up to the end of the segment and past an
    /// index beyond it without reading out of bounds.
    #[test]
    fn skip_blanks_stops_at_the_first_other_byte() {
        let seg = b"k= \t \tv \n";
        assert_eq!(skip_blanks(seg, 0), 0);
        assert_eq!(skip_blanks(seg, 2), 6);
        assert_eq!(skip_blanks(seg, 7), 8);
        assert_eq!(skip_blanks(b"  ", 0), 2);
        assert_eq!(skip_blanks(seg, 40), 40);
    }

    /// Values of a vendor's alphabet and length without its context stay: a 32-hex trace id or
    /// MD5, a git SHA, a UUID, a DSN-like URL on another host; a key name that continues
    /// (`DD_API_KEY_ID`) or is prose; a value of the wrong length after the right key. A value
    /// after a key that ends in a secret word is still the `secret` detector's, as before.
    #[test]
    fn context_bound_look_alikes_stay() {
        for text in [
            "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 md5 9e107d9d372bb6826bd81d3542a419d6",
            "commit 3f786850e387550fdab836ed7e6dc881de23001b id=123e4567-e89b-12d3-a456-426614174000",
            "DD_API_KEY_ID=4bf92f3577b34da6a3ce929d0e0e4736",
            "X-Auth-Key: 3f786850e387550fdab836ed7e6dc881de23001b",
            "routing_key=orders.created, the dd_api_key is rotated",
            "Authorization scheme SSWS 00short; ssws: 00",
            "see https://sentry.io/organizations/acme/issues/ and https://docs.sentry.io/",
            "Fastly-Key: 4bf92f3577b34da6a3ce929d0e0e473",
            r#"{"name":"DD_API_KEY","valueFrom":{"secretKeyRef":{"name":"dd","key":"k"}}}"#,
            r#"["DD_API_KEY", "9f86d081884c7d659a2feaa0c55ad015"]"#,
        ] {
            let line = format!("{text}\n");
            assert_eq!(redact(&line), line, "{text}");
        }
        // The `secret` detector's, not a vendor's: wrong shape, or a key that only ends like one.
        assert_eq!(
            redact("DD_API_KEY=123e4567-e89b-12d3-a456-426614174000\n"),
            "DD_API_KEY=[REDACTED:secret]\n"
        );
        assert_eq!(
            redact("MY_DD_API_KEY=4bf92f3577b34da6a3ce929d0e0e4736\n"),
            "MY_DD_API_KEY=[REDACTED:secret]\n"
        );
        // Not a DSN: the user part of a URL on another host is an e-mail-shaped finding, as
        // before.
        assert_eq!(
            redact("https://4bf92f3577b34da6a3ce929d0e0e4736@example.com/1\n"),
            "https://[REDACTED:email]/1\n"
        );
    }

    /// `text` redacted by a profile running only the detectors `names`, in that order.
    fn redact_with(names: &[&str], text: &str) -> String {
        let detectors = names
            .iter()
            .map(|n| match Builtin::from_name(n) {
                Some(b) => crate::Detector::builtin(b, crate::Mode::Mask),
                None => panic!("no detector {n}"),
            })
            .collect();
        let r = match Redactor::new(detectors, None) {
            Ok(r) => Arc::new(r),
            Err(e) => panic!("{e}"),
        };
        let (out, _) = Pipeline::redact_chunks(&r, &[text.as_bytes()], 64 * 1024);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A Sentry DSN's key is redacted by every profile that runs `email`: `email` leaves it
    /// only to a `sentry_dsn` row the profile itself runs (a profile listing its detectors
    /// without `sentry_dsn` still removes it).
    #[test]
    fn sentry_dsn_key_is_redacted_by_email_when_the_profile_lacks_sentry_dsn() {
        let line =
            "SENTRY_DSN=https://9f86d081884c7d659a2feaa0c55ad015@o4504.ingest.us.sentry.io/4508\n";
        let by_email = "SENTRY_DSN=https://[REDACTED:email]/4508\n";
        let by_sentry = "SENTRY_DSN=https://[REDACTED:sentry_dsn]@o4504.ingest.us.sentry.io/4508\n";
        assert_eq!(redact_with(&["email"], line), by_email);
        assert_eq!(
            redact_with(&["email", "url_credentials", "secret"], line),
            by_email
        );
        assert_eq!(redact_with(&["email", "sentry_dsn"], line), by_sentry);
        assert_eq!(redact_with(&["sentry_dsn", "email"], line), by_sentry);
        assert_eq!(redact(line), by_sentry);
    }

    #[test]
    fn crc32_and_github_checksum() {
        assert_eq!(validate::crc32(b"123456789"), 0xCBF4_3926);
        let body = with_crc("a1B2c3D4e5F6g7H8k9a1B2c3D4e5F6");
        assert!(validate::crc32_base62_tail(body.as_bytes()));
        let mut wrong = body.into_bytes();
        wrong[0] = b'z';
        assert!(!validate::crc32_base62_tail(&wrong));
        assert!(!validate::crc32_base62_tail(b"abcdef"));
    }

    #[test]
    fn bech32_checksum_of_age_keys() {
        // BIP-173's valid test vectors, upper case.
        assert!(validate::bech32_upper(b"A12UEL5L"));
        assert!(validate::bech32_upper(
            b"ABCDEF1QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7LMQQQXW"
        ));
        assert!(!validate::bech32_upper(b"A12UEL5M"));
        assert!(!validate::bech32_upper(b"a12uel5l"));
        let data: Vec<u8> = (0..52u32).map(|i| ((i * 7 + 3) % 32) as u8).collect();
        let key = bech32_encode("AGE-SECRET-KEY-", &data);
        assert!(validate::bech32_upper(key.as_bytes()));
        let mut broken = key.into_bytes();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == b'Q' { b'P' } else { b'Q' };
        assert!(!validate::bech32_upper(&broken));
    }

    #[test]
    fn structure_checks() {
        let key64 = b64(&[7u8; 64], false);
        assert!(Check::Base64Bytes(64).holds(format!("AccountKey={key64}").as_bytes(), 0, 11));
        assert!(!Check::Base64Bytes(64).holds(format!("AccountKey={key64}A").as_bytes(), 0, 11));
        let sig = b64(&[9u8; 32], false)
            .replace('=', "%3D")
            .replace('/', "%2F");
        assert!(Check::PercentBase64Bytes(32).holds(format!("&sig={sig}").as_bytes(), 0, 5));
        assert!(!Check::PercentBase64Bytes(32).holds(b"&sig=abc%ZZ", 0, 5));
        assert!(validate::uuid_lower(
            b"3f2b8c1e-9d4a-4e6b-a1c2-7d8e9f0a1b2c"
        ));
        assert!(!validate::uuid_lower(
            b"3f2b8c1e-9d4a-4e6b-a1c2-7d8e9f0a1b2"
        ));
        assert!(!validate::uuid_lower(
            b"3F2B8C1E-9D4A-4E6B-A1C2-7D8E9F0A1B2C"
        ));
        assert!(Check::DotAt(2).holds(b"SG.ab.cd", 0, 3));
        assert!(!Check::DotAt(2).holds(b"SG.ab.c.d", 0, 3));
        assert!(Check::LiteralAt(1, "T3").holds(b"sk-xT3y", 0, 3));
        assert!(!Check::LiteralAt(1, "T3").holds(b"sk-xyT3", 0, 3));
        let pypi = b64(b"\x02\x01\x08pypi.org\x02\x06abc", true);
        assert!(Check::DecodedContains("pypi.org").holds(format!("pypi-{pypi}").as_bytes(), 0, 5));
        let other = b64(b"\x02\x01\x08example.org\x02\x06abc", true);
        assert!(!Check::DecodedContains("pypi.org").holds(
            format!("pypi-{other}").as_bytes(),
            0,
            5
        ));
        assert_eq!(
            validate::percent_decode(b"a%3Db").as_deref(),
            Some(&b"a=b"[..])
        );
        assert_eq!(validate::percent_decode(b"a%3"), None);
    }

    /// Names are unique, valid configuration names, not a hand-written detector's; the
    /// families' numbers fit a `u8` (those past bit 126 share the candidate set's bit 127);
    /// every context literal is lowercase (it is matched in the lowercased segment); the
    /// default profile has at least 120 detectors.
    #[test]
    fn families_fit_the_candidate_set() {
        let mut names: Vec<&str> = Builtin::ALL
            .iter()
            .chain(Builtin::OPT_IN.iter())
            .map(|b| b.name())
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a detector name is used twice");
        for name in &names {
            assert!(crate::is_valid_redaction_name(name), "{name}");
        }
        assert!(usize::from(super::super::finding::FAMILY_BASE_FOR_TESTS) + FAMILIES.len() <= 256);
        assert!(Builtin::ALL.len() >= 120, "{}", Builtin::ALL.len());
        for f in FAMILIES {
            for s in f.shapes {
                assert!(s.min >= 1 && s.min <= s.max, "{}", f.name);
                assert!(!s.prefixes.is_empty(), "{}", f.name);
                if s.context != Context::Prefix {
                    for p in s.prefixes {
                        assert_eq!(*p, p.to_ascii_lowercase(), "{}", f.name);
                    }
                }
            }
        }
    }

    /// The families past bit 126 share the candidate set's bit 127: each of them, as the only
    /// detector of a profile, still runs when its literal is on the line and redacts every
    /// documented form (the prefilter's bit and the redactor's table agree on the shared bit).
    #[test]
    fn each_family_sharing_the_last_bit_is_found_alone() {
        let shared: Vec<Builtin> = Builtin::ALL
            .into_iter()
            .filter(|b| b.as_family().is_some() && b.bit_index() == 127)
            .collect();
        assert!(shared.len() >= 2, "{shared:?}");
        for b in shared {
            let Some(f) = b.as_family() else { continue };
            for s in f.shapes {
                for prefix in s.prefixes {
                    for body in bodies(s, prefix) {
                        for (text, want) in forms(s, prefix, &body, f.name) {
                            let out = redact_with(&[f.name], &format!("sent {text} ok\n"));
                            assert_eq!(out, format!("sent {want} ok\n"), "{}: {text}", f.name);
                        }
                    }
                }
            }
        }
    }

    /// Every detector has its row in docs/redaction.md's table, and the docs give the number
    /// of detectors the `default` profile runs (what `--list-detectors` prints as `default`).
    #[test]
    fn every_detector_is_documented() {
        let doc = include_str!("../../docs/redaction.md");
        let runs = format!("profile runs {} detectors", Builtin::ALL.len());
        assert!(
            doc.replace('\n', " ").contains(&runs),
            "docs/redaction.md does not say `{runs}`"
        );
        for b in Builtin::ALL.iter().chain(Builtin::OPT_IN.iter()) {
            assert!(
                doc.contains(&format!("| `{}` |", b.name())),
                "docs/redaction.md has no row for {}",
                b.name()
            );
        }
    }
}
