//! Prefilter: which built-in detectors can possibly find something in a line segment. Each test
//! is a necessary condition of its detector, so a detector whose test fails is skipped without
//! losing anything; most lines of a log pass no test and are copied as they are.
//!
//! - Keyword detectors (`bearer`, `password=`, `AKIA…`, `eyJ…`, `://`…) need one of their
//!   literals ([`Builtin::literals`]). All literals are searched at once, ASCII-case-insensitively,
//!   over a lowercased copy of the segment: a case-sensitive set of lowercase literals keeps the
//!   SIMD literal search (Teddy) that a case-insensitive automaton would give up.
//! - Shape detectors need a byte shape: `email` an `@`, `ssn` `ddd-dd-dddd`, `ipv6` a `::` or
//!   six colons joined by groups of hex digits.
//! - `card`, `iban` and `ipv4` always run: their scanners find their own candidates quickly
//!   (bit masks of digits, dots), so a separate test would only scan twice.

use super::bytemask::SegmentMasks;
use super::finding::Builtin;
use aho_corasick::{packed, AhoCorasick, Input, MatchKind};

/// The bit of a built-in detector in a candidate set.
pub fn bit(b: Builtin) -> u32 {
    1 << (b as u32)
}

#[derive(Debug)]
pub struct Prefilter {
    /// Every keyword literal of the profile's keyword detectors, lowercase, deduplicated.
    keywords: Option<Keywords>,
    /// For literal `i`, the detectors (bits) that need it.
    owners: Vec<u32>,
    /// The profile's keyword detectors.
    keyword_kinds: u32,
    /// The profile's detectors tested here by shape.
    shape_kinds: u32,
    /// The profile's detectors that always run.
    always: u32,
}

fn gate(b: Builtin) -> Gate {
    match b {
        Builtin::Email | Builtin::Ssn | Builtin::Ipv6 => Gate::Shape,
        Builtin::Card | Builtin::Iban | Builtin::Ipv4 => Gate::Always,
        // Private keys are the redactor's line state machine, not a per-segment detector.
        Builtin::PrivateKey => Gate::Never,
        _ => Gate::Keyword,
    }
}

enum Gate {
    Keyword,
    Shape,
    Always,
    Never,
}

/// The literal search: Teddy (SIMD) straight from `aho_corasick::packed` where the CPU has
/// it, which spares the automaton's wrapper on every line, else an Aho-Corasick automaton.
/// Both report the leftmost-first match.
#[derive(Debug)]
enum Keywords {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Keywords {
    fn new(literals: &[String]) -> Result<Keywords, String> {
        let packed = |fat: Option<bool>| {
            packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostFirst)
                .only_teddy_fat(fat)
                .builder()
                .extend(literals)
                .build()
        };
        // Fat Teddy (16 buckets, needs AVX2) for the default profile's ~25 literals: fewer
        // false candidates to verify (callgrind: -5% of all instructions); Slim (8 buckets,
        // twice the bytes per step) for small sets like the benchmark's 11 (+4% if fat).
        let packed = packed(Some(literals.len() > 16)).or_else(|| packed(None));
        if let Some(searcher) = packed {
            return Ok(Keywords::Packed(searcher));
        }
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(literals)
            .map(Keywords::Automaton)
            .map_err(|e| format!("cannot build the keyword prefilter: {e}"))
    }

    /// The first literal found at or after `at`: (literal index, start, end).
    fn find(&self, hay: &[u8], at: usize) -> Option<(usize, usize, usize)> {
        let m = match self {
            Keywords::Packed(s) => s.find_in(hay, aho_corasick::Span::from(at..hay.len())),
            Keywords::Automaton(a) => a.find(Input::new(hay).span(at..hay.len())),
        }?;
        Some((m.pattern().as_usize(), m.start(), m.end()))
    }
}

impl Prefilter {
    pub fn new(kinds: impl IntoIterator<Item = Builtin>) -> Result<Prefilter, String> {
        let mut literals: Vec<String> = Vec::new();
        let mut owners: Vec<u32> = Vec::new();
        let (mut keyword_kinds, mut shape_kinds, mut always) = (0, 0, 0);
        for b in kinds {
            match gate(b) {
                Gate::Keyword => keyword_kinds |= bit(b),
                Gate::Shape => shape_kinds |= bit(b),
                Gate::Always => always |= bit(b),
                Gate::Never => continue,
            }
            if !matches!(gate(b), Gate::Keyword) {
                continue;
            }
            for l in b.literals() {
                let l = l.to_ascii_lowercase();
                match literals.iter().position(|x| *x == l) {
                    Some(i) => owners[i] |= bit(b),
                    None => {
                        literals.push(l);
                        owners.push(bit(b));
                    }
                }
            }
        }
        // No literal is a prefix of another (`literals_are_prefix_free`), so at any position
        // at most one matches, and leftmost-first search resumed one byte after each match
        // reports every occurrence of every literal.
        let keywords = if literals.is_empty() {
            None
        } else {
            Some(Keywords::new(&literals)?)
        };
        Ok(Prefilter {
            keywords,
            owners,
            keyword_kinds,
            shape_kinds,
            always,
        })
    }

    /// The detectors (bits) that may find something in `seg`, whose byte masks (and lowercased
    /// copy) are `masks`.
    pub fn candidates(&self, seg: &[u8], masks: &SegmentMasks) -> u32 {
        let mut hits = self.always;
        if let Some(ac) = &self.keywords {
            let lower = masks.lower();
            let mut found = 0;
            let mut at = 0;
            while found != self.keyword_kinds && at < lower.len() {
                let Some((pattern, start, end)) = ac.find(lower, at) else {
                    break;
                };
                let mut owners = self.owners[pattern];
                if owners & bit(Builtin::Secret) != 0 && !assignment_follows(lower, end) {
                    owners &= !bit(Builtin::Secret);
                }
                found |= owners;
                at = start + 1;
            }
            hits |= found;
        }
        let shape = |b: Builtin, test: fn(&[u8], &SegmentMasks) -> bool| {
            if self.shape_kinds & bit(b) != 0 && test(seg, masks) {
                bit(b)
            } else {
                0
            }
        };
        hits | shape(Builtin::Email, has_at_sign)
            | shape(Builtin::Ssn, has_ssn_shape)
            | shape(Builtin::Ipv6, has_ipv6_shape)
    }
}

/// Whether a `key=value` / `key: value` secret can have its key end in the word whose literal
/// ends at `end` (`pass` of `password`, `credential` of `credentials`, `key` of `api_key`):
/// after the rest of the word's letters, what the key-value pattern allows between a key and
/// its value must follow: an optional backslash, an optional quote, spaces, then `=` or `:`.
/// Every key word of that pattern ends with one of the `secret` literals followed only by
/// letters, so a line where no literal passes this cannot hold a key-value secret ("the token
/// expired").
fn assignment_follows(lower: &[u8], end: usize) -> bool {
    let rest = lower.get(end..).unwrap_or_default();
    let mut i = rest
        .iter()
        .position(|b| !b.is_ascii_lowercase())
        .unwrap_or(rest.len());
    if rest.get(i) == Some(&b'\\') {
        i += 1;
    }
    if matches!(rest.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    // `\s` of the pattern (ASCII): space, `\t`, `\n`, `\v`, `\f`, `\r`.
    while matches!(
        rest.get(i),
        Some(b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r')
    ) {
        i += 1;
    }
    matches!(rest.get(i), Some(b'=' | b':'))
}

fn has_at_sign(_: &[u8], masks: &SegmentMasks) -> bool {
    masks.any(|m| m.at)
}

/// `ddd-dd-dddd` somewhere (what the SSN pattern needs, boundaries aside): bit `i` of the
/// block's result is set when the shape starts at byte `i`.
fn has_ssn_shape(_: &[u8], masks: &SegmentMasks) -> bool {
    (0..masks.len()).any(|k| {
        let (cur, next) = (masks.get(k), masks.get(k + 1));
        let w = |m: u64, n: u64| u128::from(m) | (u128::from(n) << 64);
        let (d, h) = (w(cur.digit, next.digit), w(cur.dash, next.dash));
        let shape = d
            & (d >> 1)
            & (d >> 2)
            & (h >> 3)
            & (d >> 4)
            & (d >> 5)
            & (h >> 6)
            & (d >> 7)
            & (d >> 8)
            & (d >> 9)
            & (d >> 10);
        shape as u64 != 0
    })
}

/// `::`, or six colons each separated from the next by one to four hex digits: every text form
/// of an IPv6 address has one or the other (eight groups, or six and an IPv4 address).
fn has_ipv6_shape(seg: &[u8], masks: &SegmentMasks) -> bool {
    let mut chain = 0;
    let mut last: Option<usize> = None;
    for k in 0..masks.len() {
        let (cur, next) = (masks.get(k), masks.get(k + 1));
        let mut colons = cur.colon;
        if colons & ((cur.colon >> 1) | (next.colon << 63)) != 0 {
            return true;
        }
        while colons != 0 {
            let i = k * 64 + colons.trailing_zeros() as usize;
            colons &= colons - 1;
            chain = match last {
                Some(p)
                    if (2..=5).contains(&(i - p))
                        && seg[p + 1..i].iter().all(u8::is_ascii_hexdigit) =>
                {
                    chain + 1
                }
                _ => 1,
            };
            if chain >= 6 {
                return true;
            }
            last = Some(i);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_prefix_free() {
        let all: Vec<String> = Builtin::ALL
            .iter()
            .filter(|b| matches!(gate(**b), Gate::Keyword))
            .flat_map(|b| b.literals().iter().map(|l| l.to_ascii_lowercase()))
            .collect();
        for a in &all {
            for b in &all {
                assert!(
                    a == b || !b.starts_with(a.as_str()),
                    "{a} is a prefix of {b}"
                );
            }
        }
    }

    #[test]
    fn keyword_hits_overlapping_literals_and_any_case() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let candidates = |text: &[u8]| {
            let mut m = SegmentMasks::default();
            m.compute(text);
            p.candidates(text, &m)
        };
        // `aws` and `secret` overlap in `AWSECRET`; both detectors must be candidates.
        let hits = candidates(b"x AWSECRET=1");
        assert_ne!(hits & bit(Builtin::Secret), 0);
        assert_ne!(hits & bit(Builtin::AwsSecretKey), 0);
        let hits = candidates(b"BeArEr abc");
        assert_ne!(hits & bit(Builtin::Bearer), 0);
        let hits = candidates(b"plain words, 12:30:01 2026-11-27");
        assert_eq!(hits, p.always);
    }

    /// `secret` runs only where a key word is followed by `=` or `:`, in every form the
    /// key-value pattern takes; the literal alone ("the token expired") is not enough.
    #[test]
    fn secret_needs_an_assignment_after_its_key_word() {
        let p = Prefilter::new([Builtin::Secret]).unwrap();
        let secret = |text: &str| {
            let mut m = SegmentMasks::default();
            m.compute(text.as_bytes());
            p.candidates(text.as_bytes(), &m) & bit(Builtin::Secret) != 0
        };
        for text in [
            "password=hunter2",
            "DB_PASSWORD = 's3cr et'",
            r#"{"client_secret": "abc"}"#,
            r#"msg="{\"refresh_token\":\"rt-1\"}""#,
            "x-api-key: k-123",
            "ApiKey:zzz",
            "credentials=a",
            "token\t\x0b\x0c\r\n=x",
            "the token expired; Passwd'=p",
        ] {
            assert!(secret(text), "{text:?}");
        }
        for text in [
            "the token expired, refreshing the session",
            "tokens are rotated, keys too",
            "password reset by admin: ok",
            "secret_-=x",
        ] {
            assert!(!secret(text), "{text:?}");
        }
    }

    /// Teddy (slim or fat) and the Aho-Corasick automaton report the same literal occurrences.
    #[test]
    fn every_keyword_searcher_finds_the_same_occurrences() {
        let literals: Vec<String> = Builtin::ALL
            .iter()
            .filter(|b| matches!(gate(**b), Gate::Keyword))
            .flat_map(|b| b.literals().iter().map(|l| l.to_ascii_lowercase()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let automaton = Keywords::Automaton(
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .unwrap(),
        );
        let text = "x tokenpass://eyjakia ghp_ xoxb basic bearer authorization k_live_ aws \
                    secretkey credential pwd github_pat_ aizasia -----begin token";
        let all = |k: &Keywords| {
            let mut found = Vec::new();
            let mut at = 0;
            while let Some(m) = k.find(text.as_bytes(), at) {
                found.push(m);
                at = m.1 + 1;
            }
            found
        };
        let want = all(&automaton);
        assert!(want.len() >= 18, "{want:?}");
        for small in [literals.len(), 8] {
            let k = Keywords::new(&literals[..small]).unwrap();
            let automaton = Keywords::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&literals[..small])
                    .unwrap(),
            );
            assert_eq!(all(&k), all(&automaton), "{small} literals");
        }
        assert_eq!(all(&Keywords::new(&literals).unwrap()), want);
    }

    fn shape(test: fn(&[u8], &SegmentMasks) -> bool, text: &[u8]) -> bool {
        let mut m = SegmentMasks::default();
        m.compute(text);
        test(text, &m)
    }

    #[test]
    fn shapes_are_found_and_near_misses_are_not() {
        let has_ssn_shape = |t: &[u8]| shape(has_ssn_shape, t);
        let has_ipv6_shape = |t: &[u8]| shape(has_ipv6_shape, t);
        // Across a block boundary too.
        assert!(has_ssn_shape(
            format!("{}123-45-6789", "x".repeat(60)).as_bytes()
        ));
        assert!(has_ipv6_shape(
            format!("{}1:2:3:4:5:6:7:8", "x".repeat(60)).as_bytes()
        ));
        assert!(has_ipv6_shape(format!("{}::1", "x".repeat(63)).as_bytes()));
        assert!(has_ssn_shape(b"ssn 123-45-6789"));
        assert!(!has_ssn_shape(b"2026-11-27 12-34-567"));
        assert!(has_ipv6_shape(b"peer fe80::1"));
        assert!(has_ipv6_shape(b"2001:db8:0:0:1:0:0:1"));
        assert!(has_ipv6_shape(b"0:0:0:0:0:ffff:1.2.3.4"));
        assert!(!has_ipv6_shape(
            b"07:49:22 aa:bb:cc:dd:ee:ff {\"a\":1,\"b\":2}"
        ));
    }
}
