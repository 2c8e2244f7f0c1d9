//! Finding: the built-in detectors of one line segment. Each detector turns bytes into spans
//! `(start, end)` of *values* to replace (for `password=…` the value, not the key; for
//! `Authorization: Bearer …` the token, not the scheme). A regex or a hand-written scanner finds
//! candidates; a validator from [`super::validate`] keeps only the real ones.
//!
//! Detectors see one segment of one line at a time and hold no state; multi-line private keys
//! are the redactor's line state machine (`super::Redactor`), not a detector.
//!
//! All patterns are byte regexes with Unicode off: logs are mostly ASCII, invalid UTF-8 is
//! ordinary input, and ASCII classes keep the automata small and fast.

use super::bytemask::{Masks, SegmentMasks};
use super::family::{self, is_word, Family, FAMILIES};
use super::national::{self, NationalId};
use super::validate;
use regex::bytes::{Regex, RegexBuilder};
use std::sync::LazyLock;

/// A built-in detector: a hand-written one (the constants below) or a token family of
/// [`FAMILIES`] (data, see `super::family`). Its priority is its place in [`Builtin::ALL`]: when
/// two findings start at the same byte, the earlier detector names the replacement.
///
/// The number is the detector's bit in the prefilter's candidate set (`u128`): hand-written
/// detectors take bits 0–15, families 16 and up; the families past bit 126 share bit 127 (a
/// segment with the literal of one of them runs them all, each finding only its own tokens),
/// so the table may grow past 112 families (`families_fit_the_candidate_set` proves it).
/// The opt-in national identifiers are numbered after the last family: they have no bit (the
/// redactor runs them on every segment of a profile that names them, see `super::national`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Builtin(u8);

/// The first bit of the token families.
const FAMILY_BASE: u8 = 16;
/// The number of the first national-identifier detector: after the last token family (the
/// `const` assertion below proves every number fits a `u8`).
const NATIONAL_BASE: u8 = FAMILY_BASE + FAMILIES.len() as u8;
const _: () = assert!(FAMILY_BASE as usize + FAMILIES.len() + national::ALL.len() <= 255);
/// The last bit of the candidate set, shared by every family from it on.
const SHARED_BIT: u32 = 127;
#[cfg(test)]
pub(crate) const FAMILY_BASE_FOR_TESTS: u8 = FAMILY_BASE;

#[allow(non_upper_case_globals)]
impl Builtin {
    /// PEM private-key blocks, removed whole across lines (`mask` only).
    pub const PrivateKey: Builtin = Builtin(0);
    /// JWTs (`eyJ….….…`) whose header is base64url JSON with an `alg`.
    pub const Jwt: Builtin = Builtin(1);
    /// 40-character AWS secret access keys, on a line that mentions AWS, a secret or a key id.
    pub const AwsSecretKey: Builtin = Builtin(2);
    /// The credentials of an `Authorization:` or `Proxy-Authorization:` header.
    pub const Authorization: Builtin = Builtin(3);
    /// `bearer <token>` anywhere.
    pub const Bearer: Builtin = Builtin(4);
    /// `Basic <base64>` that decodes to a printable `user:password`.
    pub const BasicAuth: Builtin = Builtin(5);
    /// The password of `scheme://user:password@host`.
    pub const UrlCredentials: Builtin = Builtin(6);
    /// The value of a password, secret, token or key in `k=v`, `k: v` or JSON.
    pub const Secret: Builtin = Builtin(7);
    /// Email addresses.
    pub const Email: Builtin = Builtin(8);
    /// Payment card numbers: Luhn and an issuer prefix of that length.
    pub const Card: Builtin = Builtin(9);
    /// IBANs: known country, its length, mod-97.
    pub const Iban: Builtin = Builtin(10);
    /// US social security numbers.
    pub const Ssn: Builtin = Builtin(11);
    /// IPv4 addresses (version strings stay).
    pub const Ipv4: Builtin = Builtin(12);
    /// IPv6 addresses.
    pub const Ipv6: Builtin = Builtin(13);
    /// Phone numbers in E.164 (`+4930123456`) and North American forms (opt-in: noisy).
    pub const Phone: Builtin = Builtin(14);
    /// MAC addresses (opt-in: device ids, not secrets, in most logs).
    pub const MacAddress: Builtin = Builtin(15);
    /// AWS access key ids (`AKIA…`, `ASIA…`), a token family.
    pub const AwsAccessKey: Builtin = Builtin::family(family::AWS_ACCESS_KEY);
    /// GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`), a token family.
    pub const GithubToken: Builtin = Builtin::family(family::GITHUB_TOKEN);
    /// Slack tokens (`xoxa-`, `xoxb-`, `xoxp-`, `xoxr-`, `xoxs-`), a token family.
    pub const SlackToken: Builtin = Builtin::family(family::SLACK_TOKEN);
    /// Google API keys (`AIza` + 35), a token family.
    pub const GoogleApiKey: Builtin = Builtin::family(family::GOOGLE_API_KEY);
    /// Stripe secret and restricted keys, a token family.
    pub const StripeKey: Builtin = Builtin::family(family::STRIPE_KEY);

    /// The detector of token family `i` of [`FAMILIES`].
    const fn family(i: usize) -> Builtin {
        Builtin(FAMILY_BASE + i as u8)
    }

    /// Every built-in detector of the `default` profile, in priority order: the first
    /// prefixed detectors keep their places, the other families follow them.
    pub const ALL: [Builtin; DEFAULT_LEN] = default_order();

    /// Built-in detectors a profile must name to run (`detectors = ["phone"]`): too noisy, or
    /// rarely sensitive, for every log.
    pub const OPT_IN: [Builtin; 2 + national::ALL.len()] = opt_in_order();

    /// The detector's bit in the prefilter's candidate set: its number, or the shared
    /// [`SHARED_BIT`] past it. A national identifier has none (callers keep them out: the
    /// redactor runs them on every segment with enough digits), and this asserts it.
    pub(crate) fn bit_index(self) -> u32 {
        debug_assert!(
            self.0 < NATIONAL_BASE,
            "{} has no prefilter bit",
            self.name()
        );
        u32::from(self.0).min(SHARED_BIT)
    }

    /// The token family behind this detector, if it is one.
    pub(crate) fn as_family(self) -> Option<&'static Family> {
        if self.0 >= NATIONAL_BASE {
            return None;
        }
        FAMILIES.get(usize::from(self.0.checked_sub(FAMILY_BASE)?))
    }

    /// The national identifier behind this detector, if it is one (it has no prefilter bit).
    pub(crate) fn as_national(self) -> Option<NationalId> {
        national::ALL
            .get(usize::from(self.0.checked_sub(NATIONAL_BASE)?))
            .copied()
    }

    /// The detector's name in configuration, in `[REDACTED:name]` and in audit counts.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::PrivateKey => "private_key",
            Builtin::Jwt => "jwt",
            Builtin::AwsSecretKey => "aws_secret_key",
            Builtin::Authorization => "authorization",
            Builtin::Bearer => "bearer",
            Builtin::BasicAuth => "basic_auth",
            Builtin::UrlCredentials => "url_credentials",
            Builtin::Secret => "secret",
            Builtin::Email => "email",
            Builtin::Card => "card",
            Builtin::Iban => "iban",
            Builtin::Ssn => "ssn",
            Builtin::Ipv4 => "ipv4",
            Builtin::Ipv6 => "ipv6",
            Builtin::Phone => "phone",
            Builtin::MacAddress => "mac_address",
            _ => match self.as_national() {
                Some(n) => n.name(),
                None => self.as_family().map_or("unknown", |f| f.name),
            },
        }
    }

    /// The detector of that configuration name (default or opt-in).
    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL
            .into_iter()
            .chain(Builtin::OPT_IN)
            .find(|b| b.name() == name)
    }

    /// Whether the `default` profile runs it.
    pub fn is_default(self) -> bool {
        !Builtin::OPT_IN.contains(&self)
    }

    /// Literals (matched ASCII-case-insensitively) of which at least one must occur in a segment
    /// for a hand-written keyword detector to run (`super::prefilter`). Token families are
    /// gated by their prefixes ([`Family`]); the other detectors by the shape of their values,
    /// or they find their own candidates.
    pub(crate) fn literals(self) -> &'static [&'static str] {
        match self {
            Builtin::PrivateKey => &["-----begin"],
            Builtin::Jwt => &["eyj"],
            Builtin::AwsSecretKey => &["aws", "secret", "akia", "asia"],
            Builtin::Authorization => &["authorization"],
            Builtin::Bearer => &["bearer"],
            Builtin::BasicAuth => &["basic"],
            Builtin::UrlCredentials => &["://"],
            Builtin::Secret => &["pass", "pwd", "secret", "token", "key", "credential"],
            _ => &[],
        }
    }

    /// Appends the spans of this detector's values in `seg` to `out` (the tests' entry: the
    /// detector alone, no other family claims a URL's user part).
    #[cfg(test)]
    pub(crate) fn find(self, seg: &[u8], out: &mut Vec<(usize, usize)>) {
        let mut masks = SegmentMasks::default();
        masks.compute(seg);
        self.find_in(seg, &masks, &[], out);
    }

    /// [`Builtin::find`] with the segment's byte masks already computed; `userinfo_rows` are
    /// the running profile's families that name a URL's user part ([`Family::claims_userinfo`]):
    /// `email` leaves the values they find to them.
    pub(crate) fn find_in(
        self,
        seg: &[u8],
        masks: &SegmentMasks,
        userinfo_rows: &[&Family],
        out: &mut Vec<(usize, usize)>,
    ) {
        // The mask scanners are one table (`mask_scanner`), also called directly by the redactor.
        if let Some(scan) = self.mask_scanner() {
            return scan(seg, masks, out);
        }
        match self {
            // Private keys span lines: the redactor's state machine handles them.
            Builtin::PrivateKey => {}
            Builtin::Jwt => regex_spans(&JWT, seg, 0, out, |v, _, _| validate::jwt(v)),
            Builtin::AwsSecretKey => {
                split_spans(&AWS_SECRET_KEY, seg, aws_secret_value, out, mixed_case)
            }
            Builtin::Authorization => find_authorization(seg, masks.lower(), out),
            Builtin::Bearer => split_spans(&BEARER, seg, bearer_value, out, |v| {
                validate::token_like(v) && !own_output(v)
            }),
            Builtin::BasicAuth => {
                split_spans(&BASIC, seg, basic_value, out, validate::basic_credentials)
            }
            Builtin::UrlCredentials => {
                split_spans(&URL_CREDENTIALS, seg, url_password, out, |v| !own_output(v))
            }
            Builtin::Secret => find_key_value(seg, masks.lower(), true, out),
            Builtin::Email => regex_spans(&EMAIL, seg, 0, out, |v, s, line| {
                !after_url_userinfo(line, s) && !family::claimed_userinfo(userinfo_rows, line, s, v)
            }),
            Builtin::Card | Builtin::Iban | Builtin::Ipv4 => {}
            Builtin::Ssn => regex_spans(&SSN, seg, 0, out, |v, s, line| {
                let e = s + v.len();
                let glued_before = s > 0 && matches!(line[s - 1], b'-' | b'.' | b'/');
                let glued_after = matches!(line.get(e), Some(b'-' | b'.'))
                    && line.get(e + 1).is_some_and(u8::is_ascii_digit);
                !glued_before && !glued_after && validate::Validator::Ssn.check(v)
            }),
            Builtin::Ipv6 => find_ipv6(seg, out),
            Builtin::Phone => regex_spans(&PHONE, seg, 1, out, |v, _, _| validate::phone(v)),
            Builtin::MacAddress => regex_spans(&MAC_ADDRESS, seg, 1, out, |v, _, _| {
                validate::mac_address(v)
            }),
            _ => {
                if let Some(n) = self.as_national() {
                    n.find(seg, masks, out);
                } else if let Some(f) = self.as_family() {
                    f.find(seg, masks.lower(), out);
                }
            }
        }
    }
}

/// A detector that finds its own candidates in the byte masks, run on every segment.
pub(crate) type MaskScanner = fn(&[u8], &SegmentMasks, &mut Vec<(usize, usize)>);

impl Builtin {
    /// The scanner of a detector that runs on every segment and finds its candidates in the
    /// masks (`card`, `iban`, `ipv4`): what [`Builtin::find_in`] runs for it, called directly
    /// by the redactor, not through the match over every detector (whose entry and exit cost
    /// more than these scanners on most lines).
    pub(crate) fn mask_scanner(self) -> Option<MaskScanner> {
        match self {
            Builtin::Card => Some(find_cards),
            Builtin::Iban => Some(find_ibans),
            Builtin::Ipv4 => Some(find_ipv4),
            _ => None,
        }
    }

    /// What the detector finds, its validator, and the specification or vendor documentation it
    /// follows: one row of `loggate-agent redact --list-detectors`.
    pub fn describe(self) -> (String, &'static str) {
        let hand = |finds: &str, source: &'static str| (finds.to_string(), source);
        match self {
            Builtin::PrivateKey => hand("PEM private-key blocks, whole, across lines", "RFC 7468 (PEM); OpenSSH, PGP and PKCS#8 armour"),
            Builtin::Jwt => hand("JWS/JWE eyJ….….…, header base64url JSON with alg", "RFC 7519, RFC 7515"),
            Builtin::AwsSecretKey => hand("40-character secret access keys on a line naming aws, a secret or a key id; mixed case", "AWS IAM User Guide 'Managing access keys'"),
            Builtin::Authorization => hand("credentials of Authorization / Proxy-Authorization headers", "RFC 9110 §11.6"),
            Builtin::Bearer => hand("bearer <token>, token-like", "RFC 6750"),
            Builtin::BasicAuth => hand("Basic <base64 of user:password>", "RFC 7617"),
            Builtin::UrlCredentials => hand("the password of scheme://user:password@host (database URLs: postgres, mongodb+srv, redis, amqp…)", "RFC 3986 §3.2.1"),
            Builtin::Secret => hand("the value after password / secret / token / api_key / private_key / credentials keys (also JDBC password=)", "(context rule)"),
            Builtin::Email => hand("local@domain.tld", "RFC 5322 addr-spec (simplified)"),
            Builtin::Card => hand("13–19 digit card numbers, Luhn and an issuer range of that length", "ISO/IEC 7812; issuer ranges of the card networks"),
            Builtin::Iban => hand("IBANs, known country and length, mod-97", "ISO 13616; SWIFT IBAN registry"),
            Builtin::Ssn => hand("US SSNs AAA-GG-SSSS, SSA area/group/serial rules", "SSA 'Social Security Number randomization'"),
            Builtin::Ipv4 => hand("dotted quads, octets ≤ 255, not version strings", "RFC 791"),
            Builtin::Ipv6 => hand("IPv6 addresses that parse", "RFC 4291, RFC 5952"),
            Builtin::Phone => hand("E.164 +<8–15 digits> and North American (NPA) NXX-XXXX", "ITU-T E.164; NANP numbering plan"),
            Builtin::MacAddress => hand("six hex pairs joined by : or -, not all-zero or broadcast", "IEEE 802 (EUI-48)"),
            _ => match (self.as_national(), self.as_family()) {
                (Some(n), _) => (n.what().to_string(), n.source()),
                (None, Some(f)) => {
                    let forms: Vec<String> = f
                        .shapes
                        .iter()
                        .map(|s| {
                            let len = if s.max == u16::MAX {
                                format!("{}+", s.min)
                            } else if s.min == s.max {
                                s.min.to_string()
                            } else {
                                format!("{}–{}", s.min, s.max)
                            };
                            let literals = s.prefixes.join(" ");
                            let alphabet = s.alphabet.describe();
                            match s.context {
                                family::Context::Prefix => {
                                    format!("{literals} + {alphabet}{{{len}}}")
                                }
                                c => format!("{alphabet}{{{len}}} {} {literals}", c.describe()),
                            }
                        })
                        .collect();
                    (format!("{}: {}", f.what, forms.join("; ")), f.source)
                }
                (None, None) => (String::new(), ""),
            },
        }
    }
}

impl std::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The number of detectors of the `default` profile: the hand-written ones that are not
/// opt-in, and every token family.
const DEFAULT_LEN: usize = 14 + FAMILIES.len();

/// [`Builtin::ALL`]: private keys, JWTs, AWS access key ids and secret keys, the other token
/// families, then the context and shape detectors, in the order the engine has always had.
const fn default_order() -> [Builtin; DEFAULT_LEN] {
    let mut all = [Builtin::PrivateKey; DEFAULT_LEN];
    all[1] = Builtin::Jwt;
    all[2] = Builtin::AwsAccessKey;
    all[3] = Builtin::AwsSecretKey;
    let mut n = 4;
    let mut i = 0;
    while i < FAMILIES.len() {
        if i != family::AWS_ACCESS_KEY {
            all[n] = Builtin::family(i);
            n += 1;
        }
        i += 1;
    }
    let mut h = Builtin::Authorization.0;
    while h <= Builtin::Ipv6.0 {
        all[n] = Builtin(h);
        n += 1;
        h += 1;
    }
    all
}

/// [`Builtin::OPT_IN`]: phone numbers, MAC addresses, then the national identifiers.
const fn opt_in_order() -> [Builtin; 2 + national::ALL.len()] {
    let mut all = [Builtin::Phone; 2 + national::ALL.len()];
    all[1] = Builtin::MacAddress;
    let mut i = 0;
    while i < national::ALL.len() {
        // The `const` assertion on NATIONAL_BASE proves NATIONAL_BASE + i fits a u8.
        all[2 + i] = Builtin(NATIONAL_BASE + i as u8);
        i += 1;
    }
    all
}

fn build(pattern: &str) -> Regex {
    match RegexBuilder::new(pattern).unicode(false).build() {
        Ok(r) => r,
        // The patterns are constants of this file; `every_builtin_pattern_compiles` proves it.
        Err(e) => panic!("built-in redaction pattern does not compile: {e}"),
    }
}

static JWT: LazyLock<Regex> =
    LazyLock::new(|| build(r"\beyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){2,4}"));
/// The engine's first pattern of this token family, kept as the reference the family table
/// is proven against (`ported_families_find_what_their_first_patterns_found`).
#[cfg(test)]
static AWS_ACCESS_KEY: LazyLock<Regex> = LazyLock::new(|| build(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"));
/// A 40-character secret access key; the literal prefilter (`aws`, `secret`, a key id) is its
/// context, the mixed-case check keeps 40-hex git SHAs out.
static AWS_SECRET_KEY: LazyLock<Regex> =
    LazyLock::new(|| build(r"(?:^|[^A-Za-z0-9/+=])([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"));
/// The engine's first pattern of this token family, kept as the reference the family table
/// is proven against (`ported_families_find_what_their_first_patterns_found`).
#[cfg(test)]
static GITHUB: LazyLock<Regex> = LazyLock::new(|| {
    build(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{20,255})\b")
});
/// The engine's first pattern of this token family, kept as the reference the family table
/// is proven against (`ported_families_find_what_their_first_patterns_found`).
#[cfg(test)]
static SLACK: LazyLock<Regex> = LazyLock::new(|| build(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"));
/// The engine's first pattern of this token family, kept as the reference the family table
/// is proven against (`ported_families_find_what_their_first_patterns_found`).
#[cfg(test)]
static GOOGLE: LazyLock<Regex> = LazyLock::new(|| build(r"\bAIza[0-9A-Za-z_-]{35,}"));
/// The engine's first pattern of this token family, kept as the reference the family table
/// is proven against (`ported_families_find_what_their_first_patterns_found`).
#[cfg(test)]
static STRIPE: LazyLock<Regex> = LazyLock::new(|| build(r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{10,}"));
static AUTHORIZATION: LazyLock<Regex> = LazyLock::new(|| {
    build(
        r#"(?i)\b(?:proxy-)?authorization\\?["']?\s*[:=]\s*\\?["']?(?:(bearer|basic|digest|negotiate|ntlm|token|apikey|aws4-hmac-sha256)\s+)?([^\s"'\\,;]+)"#,
    )
});
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| build(r"(?i)\bbearer\s+([A-Za-z0-9._~+/=-]{6,})"));
static BASIC: LazyLock<Regex> =
    LazyLock::new(|| build(r"(?i)\bbasic\s+([A-Za-z0-9+/]{4,}={0,2})(?:[^A-Za-z0-9+/=]|$)"));
static URL_CREDENTIALS: LazyLock<Regex> =
    LazyLock::new(|| build(r"(?i)\b[a-z][a-z0-9+.-]{1,30}://[^\s/?#@:]*:([^\s/?#@]+)@"));
/// `key=value`, `key: value`, `"key": "value"` (also JSON escaped inside a string),
/// `key => "value"` and a header map's `"key":["value"]` for keys that end with a secret-ish
/// name. Group 1 is the key; 2–5 the value in its quoting. A quote
/// that never closes (a truncated record) takes the value to the end of the line.
const KEY_VALUE_PATTERN: &str = r#"(?i)([a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|credentials?))\\?["']?\s*[:=]>?\s*(?:(?:\[\s*)?(?:\\"((?:[^"\\]|\\[^"])*)(?:\\")?|"((?:[^"\\]|\\.)*)"?|'([^']*)'?)|([^\s"'&,;}\])\\]+))"#;
/// [`KEY_VALUE_PATTERN`], anchored: [`find_key_value`] runs it only where a key can start.
static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| build(&format!("^(?:{KEY_VALUE_PATTERN})")));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    build(
        r"(?i)[a-z0-9._%+-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.[a-z]{2,24}\b",
    )
});
static SSN: LazyLock<Regex> = LazyLock::new(|| build(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"));
/// E.164 (`+` and 8 to 15 digits, the first not 0) or a North American number
/// (`(415) 555-0132`, `415-555-0132`, `415.555.0132`); group 1 is the number.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    build(
        r"(?:^|[^0-9A-Za-z_+.\-])(\+[1-9][0-9]{7,14}|\([2-9][0-9]{2}\) ?[2-9][0-9]{2}-[0-9]{4}|[2-9][0-9]{2}([-.])[2-9][0-9]{2}[-.][0-9]{4})(?:[^0-9A-Za-z_.\-]|\.(?:[^0-9A-Za-z]|$)|$)",
    )
});
/// Six hex pairs joined by `:` or by `-` (one separator throughout); group 1 is the address.
static MAC_ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    build(
        r"(?:^|[^0-9A-Za-z_:.\-])((?i:[0-9a-f]{2}(?::[0-9a-f]{2}){5}|[0-9a-f]{2}(?:-[0-9a-f]{2}){5}))(?:[^0-9A-Za-z_:.\-]|\.(?:[^0-9A-Za-z]|$)|$)",
    )
});
static IPV6: LazyLock<Regex> = LazyLock::new(|| build(r"(?i)[0-9a-f.]*:[0-9a-f.]*:[0-9a-f:.]*"));

/// Runs `re` over `seg`, takes capture `group` (0: the whole match) as the value and keeps it
/// when `valid(value, value_start, seg)` holds.
fn regex_spans(
    re: &Regex,
    seg: &[u8],
    group: usize,
    out: &mut Vec<(usize, usize)>,
    valid: impl Fn(&[u8], usize, &[u8]) -> bool,
) {
    if group == 0 {
        for m in re.find_iter(seg) {
            if valid(m.as_bytes(), m.start(), seg) {
                out.push((m.start(), m.end()));
            }
        }
        return;
    }
    for c in re.captures_iter(seg) {
        if let Some(m) = c.get(group) {
            if valid(m.as_bytes(), m.start(), seg) {
                out.push((m.start(), m.end()));
            }
        }
    }
}

/// Where a pattern's group 1 is in its match: `split(seg, match start, match end)`.
type Split = fn(&[u8], usize, usize) -> (usize, usize);

/// Runs `re` over `seg` without captures (its lazy DFA only) and takes the value of each
/// match as `split(seg, match start, match end)` gives it, keeping it when `valid(value)`
/// holds. For the patterns whose capture group is a fixed part of the match, read off by
/// hand: the captures (a second, one-pass search over every match) cost about as much as the
/// search (issue 16). Each `split` is proven equal to the pattern's group 1 by
/// `split_values_equal_the_capture_groups`.
fn split_spans(
    re: &Regex,
    seg: &[u8],
    split: Split,
    out: &mut Vec<(usize, usize)>,
    valid: impl Fn(&[u8]) -> bool,
) {
    for m in re.find_iter(seg) {
        let (vs, ve) = split(seg, m.start(), m.end());
        // Every group 1 is one byte or more; an empty span (no such match) finds nothing.
        if vs < ve && valid(&seg[vs..ve]) {
            out.push((vs, ve));
        }
    }
}

/// Group 1 of [`AWS_SECRET_KEY`] in its match `s..e`: the 40 key bytes, after the delimiter
/// the match starts with unless it starts at a key byte (the `^` branch).
fn aws_secret_value(seg: &[u8], s: usize, e: usize) -> (usize, usize) {
    let key_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+');
    let vs = if seg.get(s).copied().is_some_and(key_byte) {
        s
    } else {
        s + 1
    };
    (vs, (vs + 40).min(e))
}

/// Group 1 of [`BEARER`] in its match `s..e`: after `bearer` and its blanks, to the end.
fn bearer_value(seg: &[u8], s: usize, e: usize) -> (usize, usize) {
    (skip_pattern_spaces(seg, s + 6).min(e), e)
}

/// Group 1 of [`BASIC`] in its match `s..e`: after `basic` and its blanks, to the end, less
/// the delimiter the match ends with when it does not end at the end of the segment.
fn basic_value(seg: &[u8], s: usize, e: usize) -> (usize, usize) {
    let vs = skip_pattern_spaces(seg, s + 5).min(e);
    let in_value = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let ve = if e > vs && !in_value(seg[e - 1]) {
        e - 1
    } else {
        e
    };
    (vs, ve)
}

/// Group 1 of [`URL_CREDENTIALS`] in its match `s..e`: after the first `:` that follows the
/// `://` (the scheme holds no `:`, the user part stops at one), to the `@` the match ends
/// with.
fn url_password(seg: &[u8], s: usize, e: usize) -> (usize, usize) {
    let m = &seg[s..e];
    let password = memchr::memchr(b':', m)
        .and_then(|scheme_end| {
            let user = scheme_end + 3;
            Some(user + memchr::memchr(b':', m.get(user..)?)? + 1)
        })
        .unwrap_or(m.len());
    (s + password, e.saturating_sub(1).max(s + password))
}

/// Text this engine (or a similar one) wrote: `[REDACTED…`, `<name:hex>`, `***`. Never re-detected,
/// so redacting twice changes nothing.
pub fn own_output(v: &[u8]) -> bool {
    v.starts_with(b"[REDACTED")
        || v.starts_with(b"[WITHHELD")
        || (v.first() == Some(&b'<') && v.contains(&b':'))
        || (!v.is_empty() && v.iter().all(|b| *b == b'*'))
}

fn mixed_case(v: &[u8]) -> bool {
    v.iter().any(u8::is_ascii_uppercase) && v.iter().any(u8::is_ascii_lowercase)
}

/// Whether the match at `start` is the host part after `scheme://user:pass@` (the password is
/// the URL-credentials finding; the host stays readable).
fn after_url_userinfo(seg: &[u8], start: usize) -> bool {
    if start == 0 || seg[start - 1] != b':' {
        return false;
    }
    let before = &seg[..start - 1];
    match memchr::memmem::rfind(before, b"://") {
        Some(i) => !before[i + 3..]
            .iter()
            .any(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'@'),
        None => false,
    }
}

/// The credentials of `Authorization` headers in `seg` (`lower` is `seg` lowercased). The
/// pattern is searched without captures; [`authorization_value`] reads its groups off each
/// match (the captures ran the bounded backtracker over every match, about 18,000
/// instructions a header, issue 16).
fn find_authorization(seg: &[u8], lower: &[u8], out: &mut Vec<(usize, usize)>) {
    for m in AUTHORIZATION.find_iter(seg) {
        let (scheme, (vs, ve)) = authorization_value(seg, lower, m.start(), m.end());
        if vs >= ve {
            continue;
        }
        let value = &seg[vs..ve];
        // Without a scheme the header name is weaker context: the value must look like one.
        let plausible = scheme || validate::token_like(value);
        if plausible && !own_output(value) {
            out.push((vs, ve));
        }
        // RFC 9110 §11.4: `credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`. A
        // scheme the pattern does not list (`SSWS`, `Splunk`, `GenieKey`) is the first word,
        // and the credential is the next one.
        if !scheme && auth_scheme_word(value) {
            if let Some(span) = credential_after_scheme(seg, ve) {
                out.push(span);
            }
        }
    }
}

/// The schemes of [`AUTHORIZATION`]'s group 1 spelled out, lowercase (module level so that
/// the tests build their inputs from this very list).
const SCHEMES: [&[u8]; 8] = [
    b"bearer",
    b"basic",
    b"digest",
    b"negotiate",
    b"ntlm",
    b"token",
    b"apikey",
    b"aws4-hmac-sha256",
];

/// The groups of [`AUTHORIZATION`] in its match `s..e`: whether the scheme group (1)
/// matched, and the credential (group 2, to the end of the match). After the header name,
/// each optional byte (`\\`, a quote) and blank is taken when there, since the credential
/// can start with none of them; a listed scheme followed by blanks is group 1 exactly when
/// the match goes on past those blanks (otherwise the scheme word itself was the
/// credential). Proven equal to the captures by `authorization_groups_equal_the_captures`.
fn authorization_value(seg: &[u8], lower: &[u8], s: usize, e: usize) -> (bool, (usize, usize)) {
    let mut p = s;
    if lower.get(p..).is_some_and(|r| r.starts_with(b"proxy-")) {
        p += 6;
    }
    p += b"authorization".len();
    if seg.get(p) == Some(&b'\\') {
        p += 1;
    }
    if matches!(seg.get(p), Some(b'"' | b'\'')) {
        p += 1;
    }
    p = skip_pattern_spaces(seg, p);
    if matches!(seg.get(p), Some(b':' | b'=')) {
        p += 1;
    }
    p = skip_pattern_spaces(seg, p);
    if seg.get(p) == Some(&b'\\') {
        p += 1;
    }
    if matches!(seg.get(p), Some(b'"' | b'\'')) {
        p += 1;
    }
    let q = p.min(e);
    let rest = lower.get(q..e).unwrap_or_default();
    for w in SCHEMES {
        if rest.len() > w.len() && rest.starts_with(w) && pattern_space(rest[w.len()]) {
            let r = skip_pattern_spaces(seg, q + w.len());
            if r < e {
                return (true, (r, e));
            }
        }
    }
    (false, (q, e))
}

/// Whether `word` can be an authorization scheme: a letter, then letters, digits, `-`, `_`
/// or `.` (RFC 9110's `token`, narrowed to what schemes are written with).
fn auth_scheme_word(word: &[u8]) -> bool {
    word.first().is_some_and(u8::is_ascii_alphabetic)
        && word
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The credential after an authorization scheme that ends at `end`: blanks, then a run up to
/// the next blank, quote, backslash, `,` or `;`. Kept when it looks like a credential
/// (token-like, or 16 bytes or more) and is not a placeholder, so that prose after
/// `authorization:` (`authorization: denied for bob`) stays.
fn credential_after_scheme(seg: &[u8], end: usize) -> Option<(usize, usize)> {
    let rest = seg.get(end..)?;
    let blanks = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    if blanks == 0 {
        return None;
    }
    let start = end + blanks;
    let run = seg[start..]
        .iter()
        .take_while(|b| {
            !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\'' | b'\\' | b',' | b';')
        })
        .count();
    let v = &seg[start..start + run];
    let credential = validate::token_like(v) || v.len() >= 16;
    (credential && !placeholder(v)).then_some((start, start + run))
}

/// Values that configuration dumps print instead of a secret.
fn placeholder(v: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[
        b"true",
        b"false",
        b"null",
        b"none",
        b"nil",
        b"undefined",
        b"yes",
        b"no",
    ];
    v.is_empty() || own_output(v) || WORDS.iter().any(|w| v.eq_ignore_ascii_case(w))
}

/// Words that say what state a credential is in (`token: expired`, `password=missing`): prose or
/// a status field, not a value. Only unquoted values are compared: a quoted value is a value
/// whatever it says.
fn status_word(v: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[
        b"expired",
        b"invalid",
        b"missing",
        b"revoked",
        b"required",
        b"refreshed",
        b"rotated",
        b"valid",
        b"ok",
        b"empty",
        b"unset",
        b"changed",
        b"updated",
        b"reset",
        b"denied",
        b"accepted",
        b"rejected",
        b"present",
        b"absent",
        b"provided",
        b"redacted",
    ];
    WORDS.iter().any(|w| v.eq_ignore_ascii_case(w))
}

/// What every key word of [`KEY_VALUE_PATTERN`] ends with, lowercase.
const KEY_WORD_ENDINGS: [&[u8]; 8] = [
    b"password",
    b"passwd",
    b"pwd",
    b"secret",
    b"token",
    b"key",
    b"credential",
    b"credentials",
];

/// The key words of [`KEY_VALUE_PATTERN`] spelled out, lowercase: a key matches when it ends
/// with one of them (the pattern's `[a-z0-9_.-]*` takes everything before).
const KEY_WORDS: [&[u8]; 19] = [
    b"password",
    b"passwd",
    b"pwd",
    b"secret",
    b"token",
    b"api_key",
    b"api-key",
    b"apikey",
    b"access_key",
    b"access-key",
    b"accesskey",
    b"secret_key",
    b"secret-key",
    b"secretkey",
    b"private_key",
    b"private-key",
    b"privatekey",
    b"credential",
    b"credentials",
];

/// How a key-value match's value is written: the capture group of [`KEY_VALUE_PATTERN`] it
/// is in (2–5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quoting {
    /// `\"…\"`, a JSON string inside a JSON string (group 2).
    EscapedDouble,
    /// `"…"` (group 3).
    Double,
    /// `'…'` (group 4).
    Single,
    /// Unquoted, up to a blank, a quote or `&,;}])\\` (group 5).
    Bare,
}

/// One match of the anchored [`KEY_VALUE`] pattern: the key ends at `key_end`, the value is
/// `value` written as `quoting`, and the match ends at `end` (after a closing quote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyValueMatch {
    key_end: usize,
    value: (usize, usize),
    quoting: Quoting,
    end: usize,
}

/// Whether `b` is `\s` of the byte patterns (Unicode off): ASCII whitespace and `\x0B`.
fn pattern_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r')
}

/// What `KEY_VALUE.captures_read(&seg[start..])` finds, by hand: the pattern's backtracking
/// (its bounded backtracker for the captures was most of the detector's cost, issue 16) is
/// decided by single bytes here. `seg[start..key_end]` must be a run of key bytes
/// (`[A-Za-z0-9_.-]`) that `seg[key_end]` ends (the caller's walk back from a `=` or `:`
/// gives it; `lower` is `seg` lowercased). Why it is the pattern's match, in its priority
/// order: the key class takes the whole run, since what follows a key word (`\\`, a quote,
/// a blank, `:` or `=`) is not a key byte, so the run must end with a key word. The optional
/// backslash and quote before the separator are each one byte or none. After the separator,
/// a `>` is taken first; blanks are taken greedily (giving one back never helps: no value
/// starts with a blank); then a `[` and blanks before a quoted value, then a quoted value
/// (its opening bytes `\\"`, `"`, `'` decide which), then a bare value. When nothing
/// matches after a `>`, the `>` itself starts the bare value. Proven equal to the pattern at
/// every start by `key_value_by_hand_equals_the_anchored_pattern`.
fn key_value_at(seg: &[u8], lower: &[u8], start: usize, key_end: usize) -> Option<KeyValueMatch> {
    let in_key = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    // The precondition the equality with the pattern rests on: a caller that passed a
    // shorter key would get silent mismatches, not a failure, so debug builds check it.
    debug_assert!(
        seg.get(start..key_end)
            .is_some_and(|k| k.iter().all(in_key))
            && seg.get(key_end).is_none_or(|b| !in_key(b)),
        "key_value_at: seg[start..key_end] must be a whole run of key bytes"
    );
    let key = lower.get(start..key_end)?;
    if !KEY_WORDS.iter().any(|w| key.ends_with(w)) {
        return None;
    }
    let mut p = key_end;
    if seg.get(p) == Some(&b'\\') {
        p += 1;
    }
    if matches!(seg.get(p), Some(b'"' | b'\'')) {
        p += 1;
    }
    p = skip_pattern_spaces(seg, p);
    if !matches!(seg.get(p), Some(b':' | b'=')) {
        return None;
    }
    p += 1;
    let (value, quoting, end) = if seg.get(p) == Some(&b'>') {
        value_at(seg, skip_pattern_spaces(seg, p + 1)).or_else(|| bare_value_at(seg, p))?
    } else {
        value_at(seg, skip_pattern_spaces(seg, p))?
    };
    Some(KeyValueMatch {
        key_end,
        value,
        quoting,
        end,
    })
}

/// The first position at or after `p` that is not `\s`.
fn skip_pattern_spaces(seg: &[u8], mut p: usize) -> usize {
    while seg.get(p).copied().is_some_and(pattern_space) {
        p += 1;
    }
    p
}

/// The value part of [`KEY_VALUE_PATTERN`] at `q`: `(?:\[\s*)?` and a quoted value, else a
/// quoted value, else a bare one. `(value span, quoting, match end)`.
fn value_at(seg: &[u8], q: usize) -> Option<((usize, usize), Quoting, usize)> {
    if seg.get(q) == Some(&b'[') {
        if let Some(m) = quoted_value_at(seg, skip_pattern_spaces(seg, q + 1)) {
            return Some(m);
        }
    }
    quoted_value_at(seg, q).or_else(|| bare_value_at(seg, q))
}

/// A quoted value at `r` (groups 2–4): the body runs to its closing quote, which is taken
/// when there, or to the end of the segment (a truncated record).
fn quoted_value_at(seg: &[u8], r: usize) -> Option<((usize, usize), Quoting, usize)> {
    let n = seg.len();
    match seg.get(r)? {
        // `\\"((?:[^"\\]|\\[^"])*)(?:\\")?`
        b'\\' if seg.get(r + 1) == Some(&b'"') => {
            let vs = r + 2;
            let mut i = vs;
            while i < n {
                match seg[i] {
                    b'"' => break,
                    b'\\' if i + 1 < n && seg[i + 1] != b'"' => i += 2,
                    b'\\' => break,
                    _ => i += 1,
                }
            }
            let end = if seg.get(i..i + 2) == Some(&b"\\\""[..]) {
                i + 2
            } else {
                i
            };
            Some(((vs, i), Quoting::EscapedDouble, end))
        }
        // `"((?:[^"\\]|\\.)*)"?`: `.` is any byte but `\n`.
        b'"' => {
            let vs = r + 1;
            let mut i = vs;
            while i < n {
                match seg[i] {
                    b'"' => break,
                    b'\\' if i + 1 < n && seg[i + 1] != b'\n' => i += 2,
                    b'\\' => break,
                    _ => i += 1,
                }
            }
            let end = if seg.get(i) == Some(&b'"') { i + 1 } else { i };
            Some(((vs, i), Quoting::Double, end))
        }
        // `'([^']*)'?`
        b'\'' => {
            let vs = r + 1;
            let ve = seg[vs..]
                .iter()
                .position(|b| *b == b'\'')
                .map_or(n, |i| vs + i);
            let end = if ve < n { ve + 1 } else { ve };
            Some(((vs, ve), Quoting::Single, end))
        }
        _ => None,
    }
}

/// A bare value at `q` (group 5): one byte or more, none of them `\s` or `"'&,;}])\\`.
fn bare_value_at(seg: &[u8], q: usize) -> Option<((usize, usize), Quoting, usize)> {
    let bare = |b: &u8| {
        !pattern_space(*b)
            && !matches!(
                b,
                b'"' | b'\'' | b'&' | b',' | b';' | b'}' | b']' | b')' | b'\\'
            )
    };
    let run = seg.get(q..)?.iter().take_while(|b| bare(b)).count();
    (run > 0).then_some(((q, q + run), Quoting::Bare, q + run))
}

/// The key-value secrets of `seg` (`lower` is `seg` lowercased): what
/// `KEY_VALUE_PATTERN.captures_iter(seg)` finds, with the anchored match tried only where a
/// match can start instead of the whole line searched, and decided by [`key_value_at`]
/// instead of the regex. A match's key ends with a key word
/// followed by an optional backslash, an optional quote, spaces and `=` or `:`; going back
/// from each `=` and `:` finds the keys that can be there. The key's prefix class
/// (`[a-z0-9_.-]`, any case) absorbs every byte of its run, so the leftmost match at or after
/// `resume` (the end of the last match) starts where that run starts, or at `resume` if the
/// run began before: the anchored match is tried exactly there, in order.
///
/// With `bound_run_on`, a double-quoted value that ran into the next key is cut before it
/// ([`run_on_value`]), and the search goes on at that key.
fn find_key_value(seg: &[u8], lower: &[u8], bound_run_on: bool, out: &mut Vec<(usize, usize)>) {
    let in_key = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    let mut resume = 0;
    for assign in memchr::memchr2_iter(b'=', b':', seg) {
        let mut end = assign;
        while end > 0 && pattern_space(seg[end - 1]) {
            end -= 1;
        }
        if end > 0 && matches!(seg[end - 1], b'"' | b'\'') {
            end -= 1;
        }
        if end > 0 && seg[end - 1] == b'\\' {
            end -= 1;
        }
        let before = &lower[..end];
        if end <= resume || !KEY_WORD_ENDINGS.iter().any(|w| before.ends_with(w)) {
            continue;
        }
        let run = seg[..end]
            .iter()
            .rposition(|b| !in_key(*b))
            .map_or(0, |i| i + 1);
        let start = run.max(resume);
        let Some(m) = key_value_at(seg, lower, start, end) else {
            continue;
        };
        resume = m.end;
        let (vs, mut ve) = m.value;
        if bound_run_on && m.quoting == Quoting::Double {
            if let Some((value_end, next_key)) = run_on_value(seg, vs, ve, resume) {
                ve = value_end;
                resume = next_key;
            }
        }
        let key = &seg[start..m.key_end];
        let v = &seg[vs..ve];
        let bare = m.quoting == Quoting::Bare;
        // `PWD=/home/x` in an environment dump is the working directory, not a password. A
        // value of only `[`, `{` or `>` (a list or object that is not one value, `=>` with
        // nothing after it) removes nothing: counting it would say a secret was redacted.
        if placeholder(v)
            || v.iter().all(|b| matches!(b, b'[' | b'{' | b'>'))
            || (bare && status_word(v))
            || (key.eq_ignore_ascii_case(b"pwd") && v.first() == Some(&b'/'))
        {
            continue;
        }
        out.push((vs, ve));
    }
}

/// A double-quoted value `vs..ve` whose match ended at `end` (after its closing quote) that
/// ran into the next key: `db_password":"v1 AWS_SECRET_ACCESS_KEY":"v2` (a quote missing after
/// `v1`) reads as the value `v1 AWS_SECRET_ACCESS_KEY`, and `v2` would be left. The signs, all
/// required: the closing quote is followed by spaces and `:` or `=` (it closes a key, not a
/// value), the value's last word follows a space or comma, and the key-value pattern matches a
/// secret there. Then `Some((value end, next key start))`: the value ends before that word,
/// whose own value the search finds next. Otherwise the long value stays: it redacts more.
fn run_on_value(seg: &[u8], vs: usize, ve: usize, end: usize) -> Option<(usize, usize)> {
    if end <= ve || seg[ve] != b'"' {
        return None;
    }
    let after = seg[end..]
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .map(|i| seg[end + i]);
    if !matches!(after, Some(b':' | b'=')) {
        return None;
    }
    let in_key = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    let word = seg[vs..ve]
        .iter()
        .rposition(|b| !in_key(b))
        .map(|i| vs + i + 1)?;
    if word == ve || !matches!(seg[word - 1], b' ' | b'\t' | b',') {
        return None;
    }
    KEY_VALUE.find(&seg[word..])?;
    let mut value_end = word - 1;
    while value_end > vs && matches!(seg[value_end - 1], b' ' | b'\t' | b',') {
        value_end -= 1;
    }
    Some((value_end, word))
}

/// Payment cards: runs of 13–19 digits, optionally grouped by single spaces or dashes, that pass
/// Luhn and an issuer's prefix and length. A hand-written scanner rather than a regex: a regex
/// match that fails validation would hide a card starting inside it, and this is the
/// literal-less detector that costs the most when written as a regex. It only walks the runs
/// of digits and single separators long enough to hold a card ([`card_runs`]).
fn find_cards(seg: &[u8], masks: &SegmentMasks, out: &mut Vec<(usize, usize)>) {
    /// The scanner's digit groups and digits.
    type Scratch = (Vec<(usize, usize)>, Vec<u8>);
    thread_local! {
        /// Kept between calls: no allocation per line.
        static SCRATCH: std::cell::RefCell<Scratch> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    card_runs(masks, |from, to, digits| {
        // The run without the separators it starts or ends with (`id=4111… in`: the blank
        // after the number): `scan_cards` skips them.
        let (mut a, mut b) = (from, to);
        while a < b && !seg[a].is_ascii_digit() {
            a += 1;
        }
        while b > a && !seg[b - 1].is_ascii_digit() {
            b -= 1;
        }
        if digits == b - a {
            // One undivided group of digits (the usual look-alike: an id, a timestamp):
            // `scan_cards` would take it whole or not at all, so test it in place.
            if !glued_before(seg, a) && !glued_after(seg, b) && validate::card_number(&seg[a..b]) {
                out.push((a, b));
            }
            return;
        }
        SCRATCH.with_borrow_mut(|(groups, digits)| scan_cards(seg, from, to, groups, digits, out))
    });
}

/// Whether digits starting at `start` are glued to what precedes them: part of a word, or
/// the decimals of a number.
fn glued_before(seg: &[u8], start: usize) -> bool {
    start > 0
        && (is_word(seg[start - 1])
            || (seg[start - 1] == b'.' && start > 1 && seg[start - 2].is_ascii_digit()))
}

/// Whether digits ending at `end` are glued to what follows them: part of a word, or a number
/// with decimals.
fn glued_after(seg: &[u8], end: usize) -> bool {
    end < seg.len()
        && (is_word(seg[end])
            || (seg[end] == b'.' && seg.get(end + 1).is_some_and(u8::is_ascii_digit)))
}

/// Calls `f(start, end, digits)` for every maximal run of digits, spaces and dashes of at
/// least 13 bytes, and 13 digits or more,: a card number (13 digits or more, joined by single separators) can be nowhere else,
/// and the scanner's state is fresh at the start of such a run, so scanning only these runs
/// finds exactly what scanning the whole segment finds. Runs are found 64 bytes at a time
/// with bit masks: bit `i` of `long` is set when bytes `i..i+13` are all digits or separators.
fn card_runs(masks: &SegmentMasks, mut f: impl FnMut(usize, usize, usize)) {
    let in_run = |m: &Masks| m.digit | m.sep;
    let class = |k: usize| in_run(&masks.get(k));
    let mut cur = class(0);
    let mut done = 0;
    for k in 0..masks.len() {
        let next = class(k + 1);
        let w = u128::from(cur) | (u128::from(next) << 64);
        let r2 = w & (w >> 1);
        let r4 = r2 & (r2 >> 2);
        let r8 = r4 & (r4 >> 4);
        let mut long = (r8 & (r8 >> 5)) as u64;
        while long != 0 {
            let p = k * 64 + long.trailing_zeros() as usize;
            long &= long - 1;
            if p < done {
                continue;
            }
            // The run's bounds and its digits, from the masks.
            let start = masks.run_start(in_run, p);
            let end = masks.run_end(in_run, p);
            // A card has 13 digits or more; `2026-11-27 07:49` does not.
            let digits = masks.count(|m| m.digit, start, end);
            if digits >= 13 {
                f(start, end, digits);
            }
            done = end;
        }
        cur = next;
    }
}

/// The card scanner over one run `from..to` of [`card_runs`].
fn scan_cards(
    seg: &[u8],
    from: usize,
    to: usize,
    groups: &mut Vec<(usize, usize)>,
    digits: &mut Vec<u8>,
    out: &mut Vec<(usize, usize)>,
) {
    let n = seg.len();
    let mut i = from;
    while i < to {
        if !seg[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        groups.clear();
        let mut sep: Option<u8> = None;
        // A change of separator ends the run; its last group then belongs to something else
        // (`… 2026-11-27`) and cannot end a card.
        let mut continues_otherwise = false;
        loop {
            let gs = i;
            while i < n && seg[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((gs, i));
            if i + 1 < n && matches!(seg[i], b' ' | b'-') && seg[i + 1].is_ascii_digit() {
                if sep.is_some_and(|s| s != seg[i]) {
                    continues_otherwise = true;
                    break;
                }
                sep = Some(seg[i]);
                i += 1;
                continue;
            }
            break;
        }
        let end = i;
        // Part of a word, a decimal number or a version string: not a card.
        let glued_before = glued_before(seg, start);
        let glued_after = continues_otherwise || glued_after(seg, end);
        if (glued_before || glued_after) && sep != Some(b' ') {
            continue;
        }
        // Dashed runs are taken whole (UUID-like ids are dashed too). Spaced runs may hold other
        // numbers before or after the card, so every run of whole groups is tried, earliest and
        // longest first; a group glued to a word or decimal point cannot be part of it.
        let dashed = sep == Some(b'-');
        let first = usize::from(glued_before);
        let last = groups.len() - 1 - usize::from(glued_after && groups.len() > 1);
        let glued_only = glued_after && groups.len() == 1;
        let mut a = first;
        while a <= last && !glued_only && (!dashed || a == 0) {
            let mut found = None;
            digits.clear();
            for (b, (gs, ge)) in groups.iter().enumerate().take(last + 1).skip(a) {
                digits.extend_from_slice(&seg[*gs..*ge]);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13
                    && (!dashed || b == groups.len() - 1)
                    && card_grouping(&groups[a..=b])
                    && validate::card_number(digits)
                {
                    found = Some(b);
                }
            }
            match found {
                Some(b) => {
                    out.push((groups[a].0, groups[b].1));
                    a = b + 1;
                }
                None => a += 1,
            }
        }
    }
}

/// How card numbers are printed: undivided, in fours (the last group shorter), or 4-6-5 / 4-6-4
/// (American Express, Diners). Other groupings of digits are other numbers.
fn card_grouping(groups: &[(usize, usize)]) -> bool {
    let len = |g: &(usize, usize)| g.1 - g.0;
    match groups {
        [_] => true,
        [a, b, c] if len(a) == 4 && len(b) == 6 && matches!(len(c), 4 | 5) => true,
        [init @ .., last] => init.iter().all(|g| len(g) == 4) && (1..=4).contains(&len(last)),
        [] => false,
    }
}

/// IBANs: a country code and check digits, then exactly the country's length of letters and
/// digits (in groups of four or not), mod-97 valid.
fn find_ibans(seg: &[u8], masks: &SegmentMasks, out: &mut Vec<(usize, usize)>) {
    let mut pos = 0;
    iban_starts(seg, masks, |start| {
        if start < pos {
            return;
        }
        let Some(len) = validate::iban_length(&seg[start..start + 2]) else {
            return;
        };
        let mut i = start;
        let mut taken = 0;
        let mut compact = [0u8; 34];
        while i < seg.len() && taken < len.min(compact.len()) {
            let b = seg[i];
            if b.is_ascii_uppercase() || b.is_ascii_digit() {
                compact[taken] = b;
                taken += 1;
                i += 1;
            } else if b == b' '
                && taken % 4 == 0
                && seg.get(i + 1).is_some_and(u8::is_ascii_alphanumeric)
            {
                i += 1;
            } else {
                break;
            }
        }
        let bounded = seg.get(i).is_none_or(|b| !is_word(*b));
        if taken == len && bounded && validate::iban(&compact[..taken]) {
            out.push((start, i));
            pos = i;
        }
    });
}

/// Calls `f` with every position, in order, where two capital letters and two digits start
/// after a word boundary (what `\b[A-Z]{2}[0-9]{2}` matches): where an IBAN can start.
fn iban_starts(seg: &[u8], masks: &SegmentMasks, mut f: impl FnMut(usize)) {
    for (k, (cur, next)) in masks.pairs().enumerate() {
        // A start is a capital letter of this block: a block without one (most of a JSON or
        // an access log's) has none.
        if cur.upper == 0 {
            continue;
        }
        let upper_at = |shift: u32| (cur.upper >> shift) | (next.upper << (64 - shift));
        let digit_at = |shift: u32| (cur.digit >> shift) | (next.digit << (64 - shift));
        let mut c = cur.upper & upper_at(1) & digit_at(2) & digit_at(3);
        while c != 0 {
            let i = k * 64 + c.trailing_zeros() as usize;
            c &= c - 1;
            if i == 0 || !is_word(seg[i - 1]) {
                f(i);
            }
        }
    }
}

/// Dotted quads: what `\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b` finds, scanned
/// from the dots (a quad's first part is the run of one to three digits before a dot), each
/// then validated by [`ipv4`]; like the regex, the search goes on after the end of a quad.
fn find_ipv4(seg: &[u8], masks: &SegmentMasks, out: &mut Vec<(usize, usize)>) {
    let mut quads = Quads {
        seg,
        resume: 0,
        out,
    };
    ipv4_first_dots(masks, |dot| quads.visit(dot));
}

/// [`find_ipv4`]'s state: where the search resumes after a quad, and the findings.
struct Quads<'a> {
    seg: &'a [u8],
    resume: usize,
    out: &'a mut Vec<(usize, usize)>,
}

impl Quads<'_> {
    /// Tries a quad whose first dot is at `dot`. Dots are visited in order; a dot that starts
    /// no quad ([`quad_end`] is `None`) changes nothing, so skipping it changes nothing.
    #[inline]
    fn visit(&mut self, dot: usize) {
        let seg = self.seg;
        let mut start = dot;
        while start > 0 && dot - start < 4 && seg[start - 1].is_ascii_digit() {
            start -= 1;
        }
        let first = dot - start;
        if start < self.resume
            || !(1..=3).contains(&first)
            || (start > 0 && is_word(seg[start - 1]))
        {
            return;
        }
        let Some(end) = quad_end(seg, dot) else {
            return;
        };
        self.resume = end;
        if ipv4(&seg[start..end], start, seg) {
            self.out.push((start, end));
        }
    }
}

/// Dots of block `cur` with a digit right before and right after (`prev_digit`, `next_digit`:
/// the digit masks of the blocks around it).
#[inline]
fn dots_between_digits(prev_digit: u64, cur: &Masks, next_digit: u64) -> u64 {
    let digit_before = (cur.digit << 1) | (prev_digit >> 63);
    let digit_after = (cur.digit >> 1) | (next_digit << 63);
    cur.dot & digit_before & digit_after
}

/// Calls `f` with every dot, in order, that can be the first dot of a quad: a dot with a digit
/// right before and right after it, followed two to four bytes later by another such dot,
/// itself followed two to four bytes later by a third one. A quad's first dot has its second
/// dot after one to three digits and its third after one to three more, each between digits,
/// so every dot where [`quad_end`] finds a quad is visited; the others change nothing in
/// [`find_ipv4`]'s state (`ipv4_first_dots_find_what_every_dot_finds`). Most dots between
/// digits in a log are a time's fraction or a version's (`07:49:12.345`, `1.22`), which
/// this turns down from the masks, 64 at a time, without looking at their bytes.
fn ipv4_first_dots(masks: &SegmentMasks, mut f: impl FnMut(usize)) {
    let mut cur = masks.get(0);
    let mut next = masks.get(1);
    let mut between = dots_between_digits(0, &cur, next.digit);
    for k in 0..masks.len() {
        let after = masks.get(k + 2);
        let between_next = dots_between_digits(cur.digit, &next, after.digit);
        // Most blocks have no dot between digits: the window's shifts only where one has.
        if between != 0 {
            // Bits 0..64 this block's, 64..128 the next one's: a first dot in this block has
            // its third dot at most eight bytes later, within the window.
            let w = u128::from(between) | (u128::from(between_next) << 64);
            let second = w & ((w >> 2) | (w >> 3) | (w >> 4));
            let mut firsts = (w & ((second >> 2) | (second >> 3) | (second >> 4))) as u64;
            while firsts != 0 {
                f(k * 64 + firsts.trailing_zeros() as usize);
                firsts &= firsts - 1;
            }
        }
        cur = next;
        next = after;
        between = between_next;
    }
}

/// Calls `f` with every dot, in order, that has a digit right before and right after it: the
/// dots the IPv4 scan visited before [`ipv4_first_dots`], kept as its reference.
#[cfg(test)]
fn ipv4_dots(masks: &SegmentMasks, mut f: impl FnMut(usize)) {
    let mut prev_digit = 0u64;
    let mut cur = masks.get(0);
    for k in 0..masks.len() {
        let next = masks.get(k + 1);
        let mut dots = dots_between_digits(prev_digit, &cur, next.digit);
        while dots != 0 {
            f(k * 64 + dots.trailing_zeros() as usize);
            dots &= dots - 1;
        }
        prev_digit = cur.digit;
        cur = next;
    }
}

/// The end of a dotted quad whose first dot is at `dot`: three more runs of one to three
/// digits, separated by dots, the last one followed by a non-word byte or the end.
fn quad_end(seg: &[u8], dot: usize) -> Option<usize> {
    let mut i = dot;
    for part in 0..3 {
        i += 1; // the dot
        let from = i;
        while i < seg.len() && i - from < 4 && seg[i].is_ascii_digit() {
            i += 1;
        }
        if !(1..=3).contains(&(i - from)) {
            return None;
        }
        let last = part == 2;
        match seg.get(i) {
            Some(b'.') if !last => {}
            None if last => {}
            Some(b) if last && !is_word(*b) => {}
            _ => return None,
        }
    }
    Some(i)
}

/// Whether the quad `v` at `start` is an address: not part of a version string, and it
/// parses. The version tests come first: they are a few byte compares, and they turn down
/// most quads of a log (`Chrome/124.0.0.0`, `1.22.0.4.el8`) before the parse (about 300
/// instructions) runs.
fn ipv4(v: &[u8], start: usize, seg: &[u8]) -> bool {
    let end = start + v.len();
    // Version strings: `Chrome/124.0.0.0`, `v1.2.3.4`, `4.18.0.553.el8` (a fifth part).
    let product_version = start >= 2 && seg[start - 1] == b'/' && is_word(seg[start - 2]);
    let v_prefix = start >= 1 && matches!(seg[start - 1], b'v' | b'V');
    let more_parts_before = start >= 2 && seg[start - 1] == b'.' && seg[start - 2].is_ascii_digit();
    let more_parts_after =
        seg.get(end) == Some(&b'.') && seg.get(end + 1).is_some_and(u8::is_ascii_digit);
    !(product_version || v_prefix || more_parts_before || more_parts_after)
        && validate::Validator::Ipv4.check(v)
}

fn find_ipv6(seg: &[u8], out: &mut Vec<(usize, usize)>) {
    for m in IPV6.find_iter(seg) {
        let (mut s, mut e) = (m.start(), m.end());
        while e > s && seg[e - 1] == b'.' {
            e -= 1;
        }
        if e - s >= 2 && seg[e - 1] == b':' && seg[e - 2] != b':' {
            e -= 1;
        }
        if e - s >= 2 && seg[s] == b':' && seg[s + 1] != b':' {
            s += 1;
        }
        let v = &seg[s..e];
        let bounded = (s == 0 || !is_word(seg[s - 1])) && seg.get(e).is_none_or(|b| !is_word(*b));
        // `cafe::bad` and `std::io` are not addresses worth hiding; a real one has a digit.
        if bounded && v.iter().any(u8::is_ascii_digit) && validate::Validator::Ipv6.check(v) {
            out.push((s, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(b: Builtin, text: &str) -> Vec<String> {
        let mut spans = Vec::new();
        b.find(text.as_bytes(), &mut spans);
        spans
            .into_iter()
            .map(|(s, e)| text[s..e].to_string())
            .collect()
    }

    #[test]
    fn every_builtin_pattern_compiles() {
        for re in [
            &JWT,
            &AWS_ACCESS_KEY,
            &AWS_SECRET_KEY,
            &GITHUB,
            &SLACK,
            &GOOGLE,
            &STRIPE,
            &AUTHORIZATION,
            &BEARER,
            &BASIC,
            &URL_CREDENTIALS,
            &KEY_VALUE,
            &EMAIL,
            &SSN,
            &IPV6,
        ] {
            let _ = re.is_match(b"");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// The first five token detectors, now rows of the family table, find exactly what
        /// their first patterns found, on text built from their prefixes, alphabets and
        /// boundaries.
        #[test]
        fn ported_families_find_what_their_first_patterns_found(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "AKIA", "ASIA", "ghp_", "gho_", "ghs_", "github_pat_", "xoxb-", "xoxs-", "xoxz-",
                "AIza", "sk_live_", "rk_test_", "pk_live_", "A1B2C3D4", "a1b2c3d4e5", "ZZZZ",
                "0123456789", "-", "_", " ", ".", "x", "=", "/", "%3D", "Q",
            ]), 0..30),
        ) {
            let seg = pieces.concat().into_bytes();
            for (b, re) in [
                (Builtin::AwsAccessKey, &AWS_ACCESS_KEY),
                (Builtin::GithubToken, &GITHUB),
                (Builtin::SlackToken, &SLACK),
                (Builtin::GoogleApiKey, &GOOGLE),
                (Builtin::StripeKey, &STRIPE),
            ] {
                let mut got = Vec::new();
                b.find(&seg, &mut got);
                got.sort_unstable();
                // Overlapping findings are merged by the redactor: compare their unions.
                let merge = |spans: Vec<(usize, usize)>| {
                    let mut out: Vec<(usize, usize)> = Vec::new();
                    for (s, e) in spans {
                        match out.last_mut() {
                            Some(last) if s < last.1 => last.1 = last.1.max(e),
                            _ => out.push((s, e)),
                        }
                    }
                    out
                };
                let want: Vec<(usize, usize)> =
                    re.find_iter(&seg).map(|m| (m.start(), m.end())).collect();
                proptest::prop_assert_eq!(
                    merge(got), merge(want), "{:?} {:?}", b, String::from_utf8_lossy(&seg)
                );
            }
        }
    }

    #[test]
    fn opt_in_pii_phone_and_mac_address() {
        assert_eq!(
            found(
                Builtin::Phone,
                "call +4930123456 or (415) 555-0132, 415-555-0132."
            ),
            ["+4930123456", "(415) 555-0132", "415-555-0132"]
        );
        assert!(found(
            Builtin::Phone,
            "v1.415.555.0132 id=415-555-01329 +1111111111 2026-11-27 +123"
        )
        .is_empty());
        assert_eq!(
            found(
                Builtin::MacAddress,
                "hw 3c:22:fb:12:ab:9e and 3C-22-FB-12-AB-9E."
            ),
            ["3c:22:fb:12:ab:9e", "3C-22-FB-12-AB-9E"]
        );
        assert!(found(
            Builtin::MacAddress,
            "00:00:00:00:00:00 ff:ff:ff:ff:ff:ff 3c:22:fb:12:ab 07:49:22 3c:22-fb:12:ab:9e"
        )
        .is_empty());
        assert!(
            !Builtin::ALL.contains(&Builtin::Phone) && !Builtin::ALL.contains(&Builtin::MacAddress)
        );
    }

    #[test]
    fn email_positives_and_look_alikes() {
        assert_eq!(
            found(Builtin::Email, "to=jane.doe+x@mail.example.co.uk,"),
            ["jane.doe+x@mail.example.co.uk"]
        );
        assert!(found(Builtin::Email, "user@localhost obj=Foo@1a2b3c pkg@1.2.3").is_empty());
        assert!(found(Builtin::Email, "postgres://app:pw@db.example.com/x").is_empty());
    }

    #[test]
    fn ip_positives_in_every_range_and_version_look_alikes() {
        assert_eq!(
            found(Builtin::Ipv4, "from 10.0.0.1 and 8.8.8.8:53"),
            ["10.0.0.1", "8.8.8.8"]
        );
        assert!(found(
            Builtin::Ipv4,
            "Chrome/124.0.0.0 v1.2.3.4 kernel 4.18.0.553.el8 999.1.1.1"
        )
        .is_empty());
        assert_eq!(
            found(
                Builtin::Ipv6,
                "peer [2001:db8::1]:443 lo ::1 ll fe80::1%eth0"
            ),
            ["2001:db8::1", "::1", "fe80::1"]
        );
        assert!(found(
            Builtin::Ipv6,
            "at 07:49:22 mac aa:bb:cc:dd:ee:ff std::io cafe::bad"
        )
        .is_empty());
    }

    #[test]
    fn card_positives_need_luhn_and_issuer() {
        assert_eq!(
            found(
                Builtin::Card,
                "card=4111111111111111 amex 3782 822463 10005"
            ),
            ["4111111111111111", "3782 822463 10005"]
        );
        assert_eq!(
            found(Builtin::Card, "qty 12 4111 1111 1111 1111 ok"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found(Builtin::Card, "mc 5555-5555-5555-4444."),
            ["5555-5555-5555-4444"]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The in-place test of undivided digit runs finds what the full scanner finds.
        #[test]
        fn undivided_runs_are_tested_as_the_scanner_would(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "4111111111111111", "5555555555554444", "1732693762004", "378282246310005",
                "4111 1111 1111 1111", "0505327160729399", "7", "12", " ", "-", ".", "x", "=",
                "_", "4111-1111-1111-1111", " in", "id=", "- ", " -",
            ]), 0..10),
        ) {
            let seg = pieces.concat().into_bytes();
            let mut masks = SegmentMasks::default();
            masks.compute(&seg);
            let mut got = Vec::new();
            find_cards(&seg, &masks, &mut got);
            let mut want = Vec::new();
            let (mut groups, mut digits) = (Vec::new(), Vec::new());
            card_runs(&masks, |from, to, _| {
                scan_cards(&seg, from, to, &mut groups, &mut digits, &mut want)
            });
            proptest::prop_assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&seg));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Visiting only the dots that can start a quad finds what visiting every dot between
        /// digits finds: pieces of quads, versions, times and decimals, across block ends.
        #[test]
        fn ipv4_first_dots_find_what_every_dot_finds(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "10.0.0.1", "192.168.1.254", "256.1.1.1", "1.2.3.4.5", "Chrome/124.0.0.0",
                "v1.2.3.4", "07:49:12.345", "0.5", "1.22", "1234", "123", "12", "1", "0",
                ".", "..", " ", "a", "/", "-", ":", "=", "x", ".el8", "\n",
            ]), 0..60),
        ) {
            let seg = pieces.concat().into_bytes();
            let mut masks = SegmentMasks::default();
            masks.compute(&seg);
            let mut got = Vec::new();
            find_ipv4(&seg, &masks, &mut got);
            let mut want = Vec::new();
            let mut quads = Quads { seg: &seg, resume: 0, out: &mut want };
            ipv4_dots(&masks, |dot| quads.visit(dot));
            proptest::prop_assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&seg));
        }
    }

    #[test]
    fn card_look_alikes_survive() {
        for text in [
            "n=4111111111111112",                      // Luhn-invalid
            "ts=1732693762004",                        // epoch ms, Luhn-valid
            "id=123e4567-e89b-12d3-a456-426614174000", // UUID
            "id=41111111-1111-1111-1111-111111111111", // all-digit-ish UUID groups
            "trace=4bf92f3577b34da6a3ce929d0e0e4736",  // trace id
            "v=4111111111111111.5 x4111111111111111",  // decimals and words
            "sha=4111111111111111abcdef",
        ] {
            assert!(found(Builtin::Card, text).is_empty(), "{text}");
        }
    }

    #[test]
    fn iban_and_ssn_positives_and_look_alikes() {
        assert_eq!(
            found(Builtin::Iban, "iban DE89 3704 0044 0532 0130 00 ok"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            found(Builtin::Iban, "GB82WEST12345698765432"),
            ["GB82WEST12345698765432"]
        );
        assert!(found(Builtin::Iban, "DE89370400440532013001 AB12CDEF").is_empty());
        assert_eq!(found(Builtin::Ssn, "ssn 123-45-6789."), ["123-45-6789"]);
        assert!(found(
            Builtin::Ssn,
            "666-45-6789 000-12-3456 123-00-4567 4.18.0-553-12-1234 2026-11-27"
        )
        .is_empty());
    }

    #[test]
    fn token_detectors_find_prefixed_tokens() {
        let gh = format!("ghp_{}", "a1B2".repeat(9));
        assert_eq!(found(Builtin::GithubToken, &format!("t {gh} x")), [gh]);
        let pat = format!("github_pat_{}", "11ABCDEFG_xyz".repeat(3));
        assert_eq!(found(Builtin::GithubToken, &pat), [pat]);
        assert_eq!(
            found(Builtin::SlackToken, "xoxb-1234-5678-abcdEFGH"),
            ["xoxb-1234-5678-abcdEFGH"]
        );
        let g = format!("AIza{}", "Sy_9-abcdefghij".repeat(3));
        assert_eq!(found(Builtin::GoogleApiKey, &g).len(), 1);
        assert_eq!(
            found(
                Builtin::StripeKey,
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc rk_test_abcdefghij12"
            ),
            ["sk_live_4eC39HqLyjWDarjtT1zdp7dc", "rk_test_abcdefghij12"]
        );
        assert_eq!(
            found(Builtin::AwsAccessKey, "id=AKIAIOSFODNN7EXAMPLE"),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert_eq!(
            found(
                Builtin::AwsSecretKey,
                "aws secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            ),
            ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
        );
        assert!(found(
            Builtin::AwsSecretKey,
            "aws commit 3f786850e387550fdab836ed7e6dc881de23001b"
        )
        .is_empty());
    }

    #[test]
    fn token_look_alikes_survive() {
        for (b, text) in [
            (
                Builtin::GithubToken,
                "ghp_short gh_pages ghx_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
            (Builtin::SlackToken, "xoxz-1234567890ab xoxb-short"),
            (Builtin::GoogleApiKey, "AIzaShort and AIza"),
            (Builtin::StripeKey, "sk_live_short pk_live_abcdefghijklmnop"),
            (Builtin::AwsAccessKey, "AKIA1234 XAKIAIOSFODNN7EXAMPLE"),
        ] {
            assert!(found(b, text).is_empty(), "{text}");
        }
    }

    #[test]
    fn jwt_needs_a_json_header_with_alg() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(found(Builtin::Jwt, &format!("jwt={jwt} x")), [jwt]);
        assert!(found(Builtin::Jwt, "eyJub3RoaW5nIjoiaGVyZSJ9.eyJhIjoxfQ.sig").is_empty());
    }

    #[test]
    fn authorization_bearer_and_basic_redact_the_credential_only() {
        assert_eq!(
            found(Builtin::Authorization, "Authorization: Bearer abc.def-123"),
            ["abc.def-123"]
        );
        assert_eq!(
            found(
                Builtin::Authorization,
                r#""authorization":"Basic dXNlcjpwYXNz""#
            ),
            ["dXNlcjpwYXNz"]
        );
        assert!(found(Builtin::Authorization, "authorization: denied").is_empty());
        assert_eq!(
            found(Builtin::Bearer, "using bearer 9f8e7d6c5b4a"),
            ["9f8e7d6c5b4a"]
        );
        assert!(found(Builtin::Bearer, "the bearer authentication scheme").is_empty());
        assert_eq!(
            found(Builtin::BasicAuth, "creds Basic dXNlcjpwYXNz end"),
            ["dXNlcjpwYXNz"]
        );
        assert!(found(Builtin::BasicAuth, "Basic authentication failed").is_empty());
    }

    #[test]
    fn key_value_secrets_in_every_form() {
        for (text, value) in [
            ("password=hunter2", "hunter2"),
            ("DB_PASSWORD = 's3cr et'", "s3cr et"),
            (r#"{"client_secret": "abc\"def"}"#, r#"abc\"def"#),
            (r#"msg="{\"refresh_token\":\"rt-1\"}""#, "rt-1"),
            ("x-api-key: k-123", "k-123"),
            ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", "wJalrXUtnFEMI"),
            ("?access_token=tok123&x=1", "tok123"),
            ("ApiKey:zzz", "zzz"),
            ("pwd=p4ss", "p4ss"),
        ] {
            assert_eq!(found(Builtin::Secret, text), [value], "{text}");
        }
    }

    /// A quoted value that does not close before the next key stops before that key, and the
    /// next key's value is found too; well-formed values, and quotes that close a value, keep
    /// their whole value.
    #[test]
    fn a_quoted_value_running_into_the_next_key_stops_before_it() {
        for (text, values) in [
            (
                r#"db_password":"v1 AWS_SECRET_ACCESS_KEY":"v2"#,
                &["v1", "v2"][..],
            ),
            (r#"x token":"a b,password" = "c d""#, &["a b", "c d"]),
            (r#"{"password":"a b c","token":"t"}"#, &["a b c", "t"]),
            (r#"password":"hello world":x"#, &["hello world"]),
            (r#"password":"v1 monkey":"v2"#, &["v1 monkey"]),
            (r#"password":"v1token":"v2"#, &["v1token"]),
            (r#"password":" token":"v2"#, &["v2"]),
        ] {
            assert_eq!(found(Builtin::Secret, text), values, "{text}");
        }
    }

    /// An authorization scheme the pattern does not list is the first word (RFC 9110): the
    /// credential after it is redacted whatever its length or vendor, and prose stays.
    #[test]
    fn authorization_with_an_unknown_scheme_loses_its_credential() {
        for (text, credential) in [
            ("Authorization: SSWS 00abc", "00abc"),
            (
                "Authorization: SSWS 00QCjAl4MlV-WPXM0HmjFx-vbGuaQ7dbSvPwWRrzx4AB",
                "00QCjAl4MlV-WPXM0HmjFx-vbGuaQ7dbSvPwWRrzx4AB",
            ),
            (
                "Authorization: SSWS 01QCjAl4MlV-WPXM0HmjFx-vbGuaQ7dbSvPwWRrzx4",
                "01QCjAl4MlV-WPXM0HmjFx-vbGuaQ7dbSvPwWRrzx4",
            ),
            (
                "Authorization: Splunk 1f2e3d4c-5b6a-4789-8abc-def012345678",
                "1f2e3d4c-5b6a-4789-8abc-def012345678",
            ),
            (
                "\"authorization\": \"GenieKey eb243592-faa2-4ba2-a551q-1afdf565c889\"",
                "eb243592-faa2-4ba2-a551q-1afdf565c889",
            ),
            (
                "Authorization: Key abcdefghijklmnop1234",
                "abcdefghijklmnop1234",
            ),
            (
                "proxy-authorization: Custom abcdefghijklmnopqrst",
                "abcdefghijklmnopqrst",
            ),
        ] {
            assert_eq!(found(Builtin::Authorization, text), [credential], "{text}");
        }
        for text in [
            "authorization: denied for bob",
            "authorization: failed, retry later",
            "Authorization: Custom [REDACTED:authorization]",
        ] {
            assert!(found(Builtin::Authorization, text).is_empty(), "{text}");
        }
    }

    #[test]
    fn key_value_leaves_prose_placeholders_and_other_keys() {
        for text in [
            "the token expired; refresh the token please",
            "password=true token=null secret=[REDACTED:secret]",
            "max_tokens=100 password_hash=abc tokenizer=bpe",
            "PWD=/home/app",
            "refresh failed: token: expired",
            "Token: EXPIRED, password=missing api_key: unset",
        ] {
            assert!(found(Builtin::Secret, text).is_empty(), "{text}");
        }
    }

    #[test]
    fn status_words_stay_only_as_bare_values() {
        assert_eq!(found(Builtin::Secret, "token: expired9"), ["expired9"]);
        assert_eq!(found(Builtin::Secret, "password: hunter"), ["hunter"]);
        assert_eq!(found(Builtin::Secret, r#""token": "expired""#), ["expired"]);
    }

    /// The old search: the unanchored pattern over the whole segment.
    fn key_values_unanchored(seg: &[u8]) -> Vec<(usize, usize)> {
        let re = build(KEY_VALUE_PATTERN);
        let mut out = Vec::new();
        for c in re.captures_iter(seg) {
            let Some(value) = (2..=5).find_map(|g| c.get(g)) else {
                continue;
            };
            let key = c.get(1).map(|k| k.as_bytes()).unwrap_or_default();
            let v = value.as_bytes();
            let bare = c.get(5).is_some();
            if placeholder(v)
                || v.iter().all(|b| matches!(b, b'[' | b'{' | b'>'))
                || (bare && status_word(v))
                || (key.eq_ignore_ascii_case(b"pwd") && v.first() == Some(&b'/'))
            {
                continue;
            }
            out.push((value.start(), value.end()));
        }
        out
    }

    /// Every byte `\s` of the byte patterns matches (see [`pattern_space`]).
    const BLANKS: [&str; 6] = [" ", "\t", "\n", "\r", "\x0B", "\x0C"];

    /// Each word in lower case, upper case and alternating case, so that inputs built from a
    /// list of the code cover the patterns' `(?i)` with the list's own spelling.
    fn cased(words: &[&[u8]]) -> Vec<String> {
        words
            .iter()
            .flat_map(|w| {
                let lower = String::from_utf8_lossy(w).into_owned();
                let alternating: String = lower
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 2 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect();
                [lower.to_ascii_uppercase(), alternating, lower]
            })
            .collect()
    }

    /// `words` cased (see [`cased`]), each followed by each blank.
    fn cased_then_blank(words: &[&[u8]]) -> Vec<String> {
        cased(words)
            .iter()
            .flat_map(|w| BLANKS.iter().map(move |b| format!("{w}{b}")))
            .collect()
    }

    /// The schemes of the Authorization tests: those [`AUTHORIZATION`]'s scheme group spells
    /// (read from its text) and those of [`SCHEMES`], so that a scheme missing from or
    /// mistyped in [`SCHEMES`] meets the pattern's spelling in the proptest.
    fn scheme_words() -> Vec<Vec<u8>> {
        let pattern = AUTHORIZATION.as_str();
        let start = pattern.find("(?:(").expect("the scheme group") + "(?:(".len();
        let len = pattern[start..]
            .find(')')
            .expect("the end of the scheme group");
        let mut words: Vec<Vec<u8>> = pattern[start..start + len]
            .split('|')
            .map(|w| w.as_bytes().to_vec())
            .chain(SCHEMES.iter().map(|w| w.to_vec()))
            .collect();
        words.sort();
        words.dedup();
        words
    }

    /// The key words of the key-value tests: [`KEY_WORDS`] itself, cased, so that a word
    /// mistyped there meets the pattern's spelling in the proptests.
    fn key_word_pieces() -> Vec<String> {
        cased(&KEY_WORDS)
    }

    /// The key words [`KEY_VALUE_PATTERN`]'s key alternation spells, expanded from the
    /// pattern's text (not from [`KEY_WORDS`]): `[_-]?` is none, `_` or `-`; a trailing `s?`
    /// is with and without the `s`. Any other syntax there panics, so that a change of the
    /// pattern is met here.
    fn key_words_of_the_pattern() -> Vec<String> {
        let start = KEY_VALUE_PATTERN
            .find("[a-z0-9_.-]*(?:")
            .expect("the key class and alternation")
            + "[a-z0-9_.-]*(?:".len();
        let len = KEY_VALUE_PATTERN[start..]
            .find("))")
            .expect("the end of the alternation");
        let mut words = Vec::new();
        for alt in KEY_VALUE_PATTERN[start..start + len].split('|') {
            if let Some((a, b)) = alt.split_once("[_-]?") {
                words.extend([format!("{a}{b}"), format!("{a}_{b}"), format!("{a}-{b}")]);
            } else if let Some(base) = alt.strip_suffix("s?") {
                words.extend([base.to_owned(), format!("{base}s")]);
            } else {
                assert!(
                    alt.bytes().all(|b| b.is_ascii_lowercase()),
                    "unexpected syntax in the key alternation: {alt}"
                );
                words.push(alt.to_owned());
            }
        }
        words.sort();
        words.dedup();
        words
    }

    /// `key_value_at` refuses, in debug builds, a `key_end` inside a run of key bytes: there
    /// its answer would differ from the pattern's silently.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "must be a whole run of key bytes")]
    fn key_value_at_refuses_a_key_end_inside_a_key_run() {
        let seg = b"passwordx=v";
        let _ = key_value_at(seg, seg, 0, "password".len());
    }

    /// [`KEY_WORDS`] is exactly the pattern's key alternation spelled out, and the hand
    /// matcher finds what the pattern finds on every word, upper case, after a key prefix:
    /// a word dropped from or mistyped in [`KEY_WORDS`] would let its values through.
    #[test]
    fn every_key_word_of_the_pattern_is_matched_by_hand() {
        let mut listed: Vec<String> = KEY_WORDS
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        listed.sort();
        let spelled = key_words_of_the_pattern();
        assert_eq!(
            listed, spelled,
            "KEY_WORDS against the pattern's alternation"
        );
        for word in &spelled {
            for seg in [
                format!("{word}=v"),
                format!("x.{}=v", word.to_ascii_uppercase()),
            ] {
                let seg = seg.into_bytes();
                let key_end = seg.len() - 2;
                let by_pattern = key_value_by_pattern(&seg, 0);
                assert!(by_pattern.is_some(), "the pattern matches {word}");
                assert_eq!(
                    key_value_at(&seg, &seg.to_ascii_lowercase(), 0, key_end),
                    by_pattern,
                    "{:?}",
                    String::from_utf8_lossy(&seg)
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Trying the anchored pattern only where a key can start finds exactly what searching
        /// the whole segment with the unanchored pattern finds.
        #[test]
        fn anchored_key_value_search_equals_the_unanchored_one(
            pieces in proptest::collection::vec(proptest::sample::select(
                key_word_pieces().into_iter().chain([
                    "key", "x", "db_", ".", "-", "=", ":", " ", "\t", "\n", "\r", "\x0B", "\x0C",
                    "\"", "'", "\\", "&", "}", ",", "/home", "true", "expired", "s3cr3t", "\\\"",
                ].map(String::from)).collect::<Vec<_>>()
            ), 0..24),
        ) {
            let seg = pieces.concat().into_bytes();
            let mut got = Vec::new();
            find_key_value(&seg, &seg.to_ascii_lowercase(), false, &mut got);
            proptest::prop_assert_eq!(got, key_values_unanchored(&seg), "{:?}", String::from_utf8_lossy(&seg));
        }
    }

    /// The anchored pattern's match at `start`, in [`key_value_at`]'s terms.
    fn key_value_by_pattern(seg: &[u8], start: usize) -> Option<KeyValueMatch> {
        let mut locations = KEY_VALUE.capture_locations();
        let m = KEY_VALUE.captures_read(&mut locations, &seg[start..])?;
        let (_, key_end) = locations.get(1)?;
        let (group, (vs, ve)) = (2..=5).find_map(|g| Some((g, locations.get(g)?)))?;
        let quoting = match group {
            2 => Quoting::EscapedDouble,
            3 => Quoting::Double,
            4 => Quoting::Single,
            _ => Quoting::Bare,
        };
        Some(KeyValueMatch {
            key_end: start + key_end,
            value: (start + vs, start + ve),
            quoting,
            end: start + m.end(),
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// The hand-written key-value matcher finds, at every start, what the anchored
        /// pattern finds there: the key, the value, its quoting and the match's end (or no
        /// match), on text built from key words, separators, quotes, escapes, `=>`, `[` and
        /// every byte that ends a bare value.
        #[test]
        fn key_value_by_hand_equals_the_anchored_pattern(
            pieces in proptest::collection::vec(proptest::sample::select(
                key_word_pieces().into_iter().chain([
                "key", "monkey", "private", "access", "_", "x", "db_", ".", "-",
                "=", ":", "=>", ">", "[", "]", " ", "\t", "\n", "\r", "\x0B", "\x0C", "\"", "'", "\\",
                "\\\"", "\\\\", "&", "}", ")", ",", ";", "/home", "s3cr3t", "\u{e9}", "\\\n", "pwd=\"", "token: \\\"", "api_key=> [\x27",
            ].map(String::from)).collect::<Vec<_>>()
            ), 0..20),
        ) {
            let seg = pieces.concat().into_bytes();
            let lower = seg.to_ascii_lowercase();
            let in_key = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
            for start in 0..=seg.len() {
                let key_end = start + seg[start..].iter().take_while(|b| in_key(b)).count();
                proptest::prop_assert_eq!(
                    key_value_at(&seg, &lower, start, key_end),
                    key_value_by_pattern(&seg, start),
                    "{:?} at {}", String::from_utf8_lossy(&seg), start
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Reading a value off a match by hand gives the pattern's capture group 1, for every
        /// detector that reads it that way, on text built from their keywords, schemes,
        /// separators, key bytes and delimiters.
        #[test]
        fn split_values_equal_the_capture_groups(
            pieces in proptest::collection::vec(proptest::sample::select(
                cased(&[b"bearer", b"basic"])
                    .into_iter()
                    .chain(cased_then_blank(&[b"bearer", b"basic"]))
                    .chain([
                "postgres://", "redis+tls://",
                "a", "user", ":", "@", "/", "?", "#", " ", "\t", "\n", "\r", "\x0B", "\x0C", "=", "==", "+", ".", "-",
                "_", ",", "abcd", "AbCdEfGhIjKlMnOpQrSt", "0123456789", "xY/+", "\u{e9}", "://",
            ].map(String::from)).collect::<Vec<_>>()
            ), 0..24),
        ) {
            let seg = pieces.concat().into_bytes();
            let cases: [(&Regex, Split); 4] = [
                (&AWS_SECRET_KEY, aws_secret_value),
                (&BEARER, bearer_value),
                (&BASIC, basic_value),
                (&URL_CREDENTIALS, url_password),
            ];
            for (re, split) in cases {
                let by_captures: Vec<(usize, usize)> = re
                    .captures_iter(&seg)
                    .filter_map(|c| c.get(1).map(|m| (m.start(), m.end())))
                    .collect();
                let mut by_split = Vec::new();
                split_spans(re, &seg, split, &mut by_split, |_| true);
                proptest::prop_assert_eq!(by_split, by_captures, "{} on {:?}", re.as_str(), String::from_utf8_lossy(&seg));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// The scheme and credential read off an `Authorization` match are the pattern's
        /// groups 1 (whether it matched) and 2.
        #[test]
        fn authorization_groups_equal_the_captures(
            pieces in proptest::collection::vec(proptest::prop_oneof![
                // The schemes of the pattern and of SCHEMES, cased, bare or followed by each blank.
                2 => proptest::sample::select(
                    {
                        let words = scheme_words();
                        let words: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
                        cased(&words).into_iter().chain(cased_then_blank(&words)).collect::<Vec<_>>()
                    }
                ),
                3 => proptest::sample::select([
                "authorization", "Proxy-Authorization", "xproxy-", "AUTHORIZATION", ":", "=",
                "Authorization: ", "proxy-authorization=\"", "authorization\\\":\t",
                " ", "\t", "\n", "\r", "\x0B", "\x0C", "\\", "\"", "'",
                "abc", "x.y", ",", ";", "\u{e9}", "==",
            ].map(String::from).to_vec()),
            ], 0..16),
        ) {
            let seg = pieces.concat().into_bytes();
            let lower = seg.to_ascii_lowercase();
            let by_captures: Vec<(bool, (usize, usize))> = AUTHORIZATION
                .captures_iter(&seg)
                .filter_map(|c| c.get(2).map(|v| (c.get(1).is_some(), (v.start(), v.end()))))
                .collect();
            let by_hand: Vec<(bool, (usize, usize))> = AUTHORIZATION
                .find_iter(&seg)
                .map(|m| authorization_value(&seg, &lower, m.start(), m.end()))
                .collect();
            proptest::prop_assert_eq!(by_hand, by_captures, "{:?}", String::from_utf8_lossy(&seg));
        }
    }

    #[test]
    fn url_credentials_hide_the_password_and_keep_the_host() {
        assert_eq!(
            found(Builtin::UrlCredentials, "postgres://app:s3cret@db:5432/x"),
            ["s3cret"]
        );
        assert!(found(
            Builtin::UrlCredentials,
            "http://host:8080/path@x https://a@b"
        )
        .is_empty());
    }
}
