//! Prefilter: which built-in detectors can possibly find something in a line segment. Each test
//! is a necessary condition of its detector, so a detector whose test fails is skipped without
//! losing anything; most lines of a log pass no test and are copied as they are.
//!
//! - Keyword detectors (`bearer`, `password=`, `AKIA…`, `eyJ…`, `://`…) need one of their
//!   literals ([`Builtin::literals`]). All literals are searched at once, ASCII-case-insensitively,
//!   over a lowercased copy of the segment: a case-sensitive set of lowercase literals keeps the
//!   SIMD literal search (Teddy) that a case-insensitive automaton would give up.
//! - Token families need one of their prefixes. Those that can only start a word (most of
//!   them) are looked up at word starts in a hashed table ([`WordGate`]) when the profile has
//!   more literals than one search holds; the others join the literal search.
//! - Shape detectors need a byte shape: `email` an `@`, `ssn` `ddd-dd-dddd`, `ipv6` a `::` or
//!   six colons joined by groups of hex digits.
//! - `card`, `iban` and `ipv4` always run: their scanners find their own candidates quickly
//!   (bit masks of digits, dots), so a separate test would only scan twice.

use super::bytemask::SegmentMasks;
use super::family::{Check, Shape};
use super::finding::Builtin;
use aho_corasick::{packed, AhoCorasick, Input, MatchKind};

/// The bit of a built-in detector in a candidate set.
pub fn bit(b: Builtin) -> u128 {
    1 << b.bit_index()
}

/// The most literals of the first search, which holds the hand-written detectors' literals
/// and the 3-byte ones (Teddy fingerprints min(4, shortest literal) bytes, so this one
/// fingerprints 3): `aho-corasick`'s own limit for Teddy, beyond which its 16 buckets fill
/// with false candidates to verify.
const FIRST_SEARCH_LITERALS: usize = 64;

/// The most literals of each further search (the default profile's token-family prefixes,
/// all 4 bytes or longer, fingerprinted on 4 bytes: fewer false candidates per bucket, so
/// Teddy's heuristic limit of 64 is lifted up to its hard limit of 128). Every search is one
/// more pass over each line. Since the word gate took the families' word-start prefixes, the
/// default profile's literals fit one search; a second one is built only for a profile with
/// more than 64 literals that cannot be gated.
const FURTHER_SEARCH_LITERALS: usize = 128;

#[derive(Debug)]
pub struct Prefilter {
    /// The searches over the trigger literals of the profile's keyword detectors, with the
    /// index of each one's first literal in `literals`.
    keywords: Vec<(Keywords, usize)>,
    /// The trigger literals, in the order of the searches' pattern ids (for the tests).
    #[cfg(test)]
    literals: Vec<String>,
    /// For trigger `i`, which detectors (bits) it stands for.
    owners: Vec<Owners>,
    /// The detectors the searches can find (all keyword detectors but the word-gated ones).
    searched: u128,
    /// The token-family prefixes that can only start a word, looked up at word starts.
    word_gate: WordGate,
    /// The token-family prefixes that hold a `~`, looked up at each `~` of a segment.
    tilde_gate: TildeGate,
    /// The profile's detectors tested here by shape.
    shape_kinds: u128,
    /// The profile's detectors that always run.
    always: u128,
}

/// The detectors behind one trigger literal: those whose literal is the trigger itself, and
/// those whose longer literal starts with it (verified at each hit, on the lowercased segment).
#[derive(Debug, Default)]
struct Owners {
    exact: u128,
    longer: Vec<(Vec<u8>, u128)>,
}

impl Owners {
    /// The detectors whose literal occurs at `start` of `lower` (where the trigger occurs).
    fn at(&self, lower: &[u8], start: usize) -> u128 {
        let mut owners = self.exact;
        for (literal, bits) in &self.longer {
            if lower[start..].starts_with(literal) {
                owners |= bits;
            }
        }
        owners
    }
}

fn gate(b: Builtin) -> Gate {
    match b {
        Builtin::Email | Builtin::Ssn | Builtin::Ipv6 => Gate::Shape,
        Builtin::Card | Builtin::Iban | Builtin::Ipv4 => Gate::Always,
        Builtin::Phone | Builtin::MacAddress => Gate::Always,
        // Private keys are the redactor's line state machine, not a per-segment detector.
        Builtin::PrivateKey => Gate::Never,
        // National identifiers have no bit: the redactor runs them by their digit count.
        b if b.as_national().is_some() => Gate::Never,
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
    /// `heuristic`: keep `aho-corasick`'s limit of 64 literals for Teddy (else up to 128).
    fn new(literals: &[String], heuristic: bool) -> Result<Keywords, String> {
        let packed = |fat: Option<bool>| {
            packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostFirst)
                .heuristic_pattern_limits(heuristic)
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
    pub fn new<B: std::borrow::Borrow<Builtin>>(
        kinds: impl IntoIterator<Item = B>,
    ) -> Result<Prefilter, String> {
        // (trigger, full literal, owner) of every literal searched by Teddy, lowercase.
        let mut entries: Vec<(String, String, u128)> = Vec::new();
        // Family prefixes whose word part can only start a word, with the bytes before that
        // part (0 or 1) and their detector.
        let mut word_starts: Vec<(String, usize, u128)> = Vec::new();
        let mut tilde_gate = TildeGate::default();
        let (mut shape_kinds, mut always) = (0, 0);
        for b in kinds {
            let b = *b.borrow();
            match gate(b) {
                Gate::Keyword => {}
                Gate::Shape => shape_kinds |= bit(b),
                Gate::Always => always |= bit(b),
                Gate::Never => continue,
            }
            if !matches!(gate(b), Gate::Keyword) {
                continue;
            }
            for l in b.literals() {
                let l = l.to_ascii_lowercase();
                entries.push((l.clone(), l, bit(b)));
            }
            let shapes = b.as_family().map_or(&[][..], |f| f.shapes);
            for s in shapes {
                for p in s.prefixes {
                    let full = p.to_ascii_lowercase();
                    if let Some(back) = word_part(s, p) {
                        word_starts.push((full, back, bit(b)));
                    } else if full.contains('~') {
                        tilde_gate.add(full.as_bytes(), bit(b));
                    } else {
                        entries.push((full.clone(), full, bit(b)));
                    }
                }
            }
        }
        // The word gate pays only when the literals would not fit one search: otherwise the
        // search runs anyway and the gate's lookup per word is extra (a profile with a few
        // families, like the benchmark's `bench8` with `aws_access_key`, keeps one search).
        let mut word_gate = WordGate::default();
        if entries.len() + word_starts.len() <= FIRST_SEARCH_LITERALS {
            entries.extend(word_starts.into_iter().map(|(l, _, b)| (l.clone(), l, b)));
        } else {
            for (l, back, b) in word_starts {
                word_gate.add(l.as_bytes(), back, b);
            }
            word_gate.finish()?;
        }
        // The triggers: no one a prefix of another, so at any position at most one matches,
        // and leftmost-first search resumed one byte after each match reports every
        // occurrence of every trigger (`triggers_are_prefix_free`). A trigger that starts
        // with a shorter one is dropped; its literals hang on the shorter one.
        // Hand-written detectors' literals first (bits below the families'), shortest first.
        let mut sorted: Vec<(bool, String)> = entries
            .iter()
            .map(|e| (e.2 >> 16 != 0, e.0.clone()))
            .collect();
        sorted.sort_by_key(|(family, l)| (l.len(), *family));
        let mut literals: Vec<String> = Vec::new();
        for (_, l) in sorted {
            if !literals.contains(&l) {
                literals.push(l);
            }
        }
        let mut kept: Vec<String> = Vec::new();
        for l in literals {
            if !kept.iter().any(|k| l.starts_with(k.as_str())) {
                kept.push(l);
            }
        }
        let searched = entries.iter().fold(0, |a, e| a | e.2);
        let mut owners: Vec<Owners> = kept.iter().map(|_| Owners::default()).collect();
        for (trigger, full, bits) in entries {
            let Some(i) = kept.iter().position(|k| trigger.starts_with(k.as_str())) else {
                return Err(format!("the prefilter lost the literal {full:?}"));
            };
            let o = &mut owners[i];
            if full == kept[i] {
                o.exact |= bits;
            } else {
                match o.longer.iter_mut().find(|(l, _)| *l == full.as_bytes()) {
                    Some((_, b)) => *b |= bits,
                    None => o.longer.push((full.into_bytes(), bits)),
                }
            }
        }
        // Hand-written detectors' triggers and 3-byte ones first, then the others.
        let mut order: Vec<usize> = (0..kept.len()).collect();
        order.sort_by_key(|i| {
            let o = &owners[*i];
            let bits = o.exact | o.longer.iter().fold(0, |a, (_, b)| a | b);
            bits & 0xffff == 0 && kept[*i].len() > 3
        });
        let literals: Vec<String> = order.iter().map(|i| kept[*i].clone()).collect();
        let owners_bits = |o: &Owners| o.exact | o.longer.iter().fold(0, |a, (_, b)| a | b);
        let first_len = order
            .iter()
            .take_while(|i| owners_bits(&owners[**i]) & 0xffff != 0 || kept[**i].len() <= 3)
            .count();
        let mut by_index: Vec<Option<Owners>> = owners.into_iter().map(Some).collect();
        let owners: Vec<Owners> = order
            .iter()
            .map(|i| by_index[*i].take().unwrap_or_default())
            .collect();
        let first = first_len.max(FIRST_SEARCH_LITERALS.min(literals.len()));
        let mut keywords = Vec::new();
        let mut at = 0;
        for chunk in literals[..first].chunks(FIRST_SEARCH_LITERALS) {
            keywords.push((Keywords::new(chunk, true)?, at));
            at += chunk.len();
        }
        let rest = literals.len() - first;
        let searches = rest.div_ceil(FURTHER_SEARCH_LITERALS);
        let per_search = rest.div_ceil(searches.max(1)).max(1);
        for chunk in literals[first..].chunks(per_search) {
            keywords.push((Keywords::new(chunk, false)?, at));
            at += chunk.len();
        }
        Ok(Prefilter {
            keywords,
            searched,
            word_gate,
            tilde_gate,
            #[cfg(test)]
            literals,
            owners,
            shape_kinds,
            always,
        })
    }

    /// Whether `b` is a candidate on every segment ([`Prefilter::candidates`] always returns
    /// its bit when the profile has it).
    pub fn always_runs(b: Builtin) -> bool {
        matches!(gate(b), Gate::Always)
    }

    /// Whether [`Prefilter::candidates`] reads the `tilde` class of the masks (the profile has a
    /// prefix that holds a `~`): the masks must then be computed with it.
    pub fn reads_tilde(&self) -> bool {
        self.tilde_gate.kinds != 0
    }

    /// The detectors (bits) that may find something in `seg`, whose byte masks (and lowercased
    /// copy) are `masks`, computed with the `tilde` class if [`Prefilter::reads_tilde`].
    pub fn candidates(&self, seg: &[u8], masks: &SegmentMasks) -> u128 {
        let mut hits = self.always;
        let lower = masks.lower();
        // Each gate reads the masks it needs on its own: no gate's early exit decides
        // whether another runs (`tilde_gate_runs_whatever_the_word_gate_found`).
        let mut found =
            self.word_gate.candidates(lower, masks) | self.tilde_gate.candidates(lower, masks);
        for (ac, first) in &self.keywords {
            let mut at = 0;
            while found & self.searched != self.searched && at < lower.len() {
                let Some((pattern, start, end)) = ac.find(lower, at) else {
                    break;
                };
                let mut owners = self.owners[first + pattern].at(lower, start);
                if owners & bit(Builtin::Secret) != 0 && !assignment_follows(lower, end) {
                    owners &= !bit(Builtin::Secret);
                }
                found |= owners;
                at = start + 1;
            }
        }
        hits |= found;
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

/// How many bytes of prefix `p` (of shape `s`) come before a part that starts a word wherever
/// a token of the shape can be found, so that the prefix needs to be looked up only at word
/// starts ([`WordGate`]), or `None` if no part of it must:
///
/// - `Some(0)`: every token found at `p` starts a word: the token is the prefix and what
///   follows (no `lead` bytes before it), the prefix's first byte is a letter or `_` (numbers
///   are not looked up: `1//0` stays in the literal search), and no `glued_if` checksum lifts
///   the `\b` before it ([`super::family::Shape::match_at`] rejects a token whose first byte
///   follows a word byte);
/// - `Some(1)`: the prefix opens with one byte that is not a word byte, then a letter or `_`
///   (`?sig=`, `&sig=`, `.atlasv1.`): whatever comes before it, the rest of the prefix starts
///   a word, so it is looked up there and the byte before verified;
/// - `None` for the others (`-us`, `0Q~`, `ghp_`, `npm_`): the literal search or the `~`
///   gate ([`TildeGate`]) finds them.
///
/// The part looked up is three bytes or longer (the gate's key).
fn word_part(s: &Shape, p: &str) -> Option<usize> {
    let b = p.as_bytes();
    let letter = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    if s.lead == 0 && s.glued_if == Check::None && b.len() >= 3 && letter(b[0]) {
        return Some(0);
    }
    let opener = b
        .first()
        .is_some_and(|c| !c.is_ascii_alphanumeric() && *c != b'_');
    if opener && b.len() >= 4 && letter(b[1]) {
        return Some(1);
    }
    None
}

/// The token-family prefixes that hold a `~` (Microsoft Entra's `8Q~`…: a word byte before
/// them, so the word gate cannot take them), looked up at each `~` of a segment (the `tilde`
/// class of the byte masks): a `~` is rare in logs, and ten more literals in the literal
/// search cost about 3 % of all the default profile's instructions (callgrind,
/// `docs/performance.md`).
///
/// The gate reads the `tilde` class of every block itself, so whether it runs never depends
/// on another gate's loop (an early exit there once decided it). A `~` is compared against
/// the prefixes only where the bytes just before it are ones some prefix has there (`q`, then
/// a digit, for the Entra prefixes): a line of `~`s (a separator, `~/` paths, a hostile
/// User-Agent) costs two table lookups per `~`, not one compare per prefix
/// (`tilde_runs_cost_no_prefix_compare`).
#[derive(Debug, Default)]
struct TildeGate {
    /// Each lowercase prefix, the offset of its (first) `~`, and its detectors.
    prefixes: Vec<(Vec<u8>, usize, u128)>,
    /// How many bytes before the `~` every prefix has (the least `~` offset, at most
    /// [`TILDE_LOOK_BACK`]): the bytes checked against `before`.
    depth: usize,
    /// For the byte `d + 1` places before a `~` (`d < depth`): the set (256 bits) of bytes
    /// some prefix has there.
    before: [[u64; 4]; TILDE_LOOK_BACK],
    /// Every detector of the gate.
    kinds: u128,
}

/// How many bytes before a `~` the [`TildeGate`] checks before comparing prefixes.
const TILDE_LOOK_BACK: usize = 2;

#[cfg(test)]
thread_local! {
    /// Prefix compares made by [`TildeGate::candidates`] on this thread (for the tests).
    static TILDE_COMPARES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl TildeGate {
    /// Adds a lowercase prefix that holds a `~`, of the detectors `bits`.
    fn add(&mut self, prefix: &[u8], bits: u128) {
        let Some(at) = prefix.iter().position(|b| *b == b'~') else {
            return;
        };
        self.prefixes.push((prefix.to_vec(), at, bits));
        self.kinds |= bits;
        self.depth = self
            .prefixes
            .iter()
            .map(|(_, at, _)| *at)
            .min()
            .unwrap_or(0)
            .min(TILDE_LOOK_BACK);
        self.before = [[0; 4]; TILDE_LOOK_BACK];
        for (p, at, _) in &self.prefixes {
            for (d, set) in self.before.iter_mut().enumerate().take(self.depth) {
                if let Some(b) = at.checked_sub(d + 1).and_then(|i| p.get(i)) {
                    set[usize::from(*b) / 64] |= 1u64 << (b % 64);
                }
            }
        }
    }

    /// Whether the bytes before the `~` at `t` of `lower` are ones a prefix has there: the
    /// cheap test before the prefix compares.
    #[inline]
    fn may_end_before(&self, lower: &[u8], t: usize) -> bool {
        self.before
            .iter()
            .take(self.depth)
            .enumerate()
            .all(|(d, set)| {
                t.checked_sub(d + 1)
                    .and_then(|i| lower.get(i))
                    .is_some_and(|b| set[usize::from(*b) / 64] & (1u64 << (b % 64)) != 0)
            })
    }

    /// The gate's detectors with a prefix anywhere in `lower`, whose masks are `masks`: the
    /// `~`s come from the masks' `tilde` class, so a line without one costs a test per block,
    /// not a search of its own.
    fn candidates(&self, lower: &[u8], masks: &SegmentMasks) -> u128 {
        if self.kinds == 0 {
            return 0;
        }
        let mut found = 0;
        for k in 0..masks.len() {
            let mut tildes = masks.get(k).tilde;
            while tildes != 0 {
                let t = k * 64 + tildes.trailing_zeros() as usize;
                tildes &= tildes - 1;
                if !self.may_end_before(lower, t) {
                    continue;
                }
                for (prefix, at, bits) in &self.prefixes {
                    #[cfg(test)]
                    TILDE_COMPARES.with(|c| c.set(c.get() + 1));
                    if t.checked_sub(*at)
                        .and_then(|start| lower.get(start..))
                        .is_some_and(|rest| rest.starts_with(prefix))
                    {
                        found |= bits;
                    }
                }
                // Only a match can complete the set: the test is here, not once per block.
                if found == self.kinds {
                    return found;
                }
            }
        }
        found
    }
}

/// Bits in the word gate's table: 64 Kibit (8 KiB, in L1) for about 150 keys, so a word start
/// whose first three bytes begin no prefix passes the table with a probability of about 0.2 %.
const GATE_BITS: usize = 1 << 16;

/// The token families whose prefixes start a word, found by looking up the first three
/// lowercase bytes at each word start (the `word` mask of [`SegmentMasks`]) in a hashed bit
/// table, then verifying the few hits against the prefixes themselves: one lookup per word
/// instead of a literal search over ~190 prefixes at every byte, whose false candidates cost
/// most of the engine's time (issue 16). On the benchmark's corpus about 1 % of word starts
/// pass the table (most of them `api…`, the key of `api-` and `api_org_`).
///
/// Every prefix is keyed on its first three bytes: a word that starts with a prefix has the
/// prefix's key at its start, so the table never misses one
/// (`word_gate_finds_every_family_prefix_at_a_word_start`).
///
/// A table hit is a word that starts like a key, not like a prefix: the vendors' key names
/// (`auth0_client_secret`, `pagerduty_token`, `datadog_api_key`) share their first three bytes
/// with a log's everyday words (`authorization`, `page=`, `database`), and comparing every
/// prefix of such a key at each of them cost the default profile about 6 % of its
/// instructions (`docs/performance.md`). So each key's group first compares its [`Stem`], the
/// bytes all its prefixes start with and the set of bytes that can follow them, and only a
/// word that passes is compared with the prefixes themselves
/// (`everyday_words_sharing_a_key_cost_no_prefix_compare`).
#[derive(Debug)]
struct WordGate {
    /// A fixed size, so that indexing it with a 16-bit hash needs no bounds check.
    table: Box<[u64; GATE_BITS / 64]>,
    /// Per key (sorted), the prefixes with that key and their detectors.
    keys: Vec<(u32, KeyGroup)>,
    /// An open-addressed index of `keys` by the key's hash (a power of two, at least twice as
    /// many slots as keys, [`EMPTY_SLOT`] where none): a table hit finds its group in a probe
    /// or two instead of a binary search, which was half the cost of a hit.
    slots: Vec<u16>,
    /// Every detector of the gate.
    kinds: u128,
}

/// A free slot of [`WordGate::slots`].
const EMPTY_SLOT: u16 = u16::MAX;

/// The most keys [`WordGate::slots`] can number: every `u16` but [`EMPTY_SLOT`].
const MAX_WORD_GATE_KEYS: usize = EMPTY_SLOT as usize;

/// The gated prefixes of one key, behind the [`Stem`] they share.
#[derive(Debug)]
struct KeyGroup {
    stem: Stem,
    prefixes: Vec<GatedPrefix>,
}

/// What every prefix of a key group has at the word start it is looked up at: the bytes all
/// their word parts start with (at least the three of the key, at most eight, compared as one
/// masked 64-bit word), and the set of bytes that come right after those in some prefix
/// (every byte, when one prefix ends there). A necessary condition only: a word that passes
/// is then compared with each prefix.
#[derive(Debug, Clone, Copy)]
struct Stem {
    word: u64,
    mask: u64,
    len: usize,
    /// 256 bits: the bytes some prefix has at `len`.
    next: [u64; 4],
}

impl Stem {
    /// The stem of prefixes whose word parts are `parts` (each three bytes or longer).
    fn of<'a>(parts: impl Iterator<Item = &'a [u8]> + Clone) -> Stem {
        let first = parts.clone().next().unwrap_or_default();
        let len = parts
            .clone()
            .map(|p| first.iter().zip(p).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(0)
            .min(8);
        let mut w = [0u8; 8];
        w[..len].copy_from_slice(&first[..len]);
        let mask = u32::try_from(8 * (8 - len))
            .ok()
            .and_then(|shift| u64::MAX.checked_shr(shift))
            .unwrap_or(0);
        let mut next = [0u64; 4];
        for p in parts {
            match p.get(len) {
                Some(b) => next[usize::from(*b) / 64] |= 1 << (b % 64),
                None => next = [u64::MAX; 4],
            }
        }
        Stem {
            word: u64::from_le_bytes(w),
            mask,
            len,
            next,
        }
    }

    /// Whether a prefix of the group can start at `p` of `lower`: false only where none can
    /// (every prefix is at least the stem long, so fewer bytes left than that is a no).
    #[inline]
    fn may_start(&self, lower: &[u8], p: usize) -> bool {
        let rest = lower.get(p..).unwrap_or_default();
        let head = match rest.first_chunk::<8>() {
            Some(eight) => u64::from_le_bytes(*eight),
            None if rest.len() < self.len => return false,
            None => {
                let mut w = [0u8; 8];
                w[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(w)
            }
        };
        head & self.mask == self.word
            && rest
                .get(self.len)
                .is_none_or(|b| self.next[usize::from(*b) / 64] & (1 << (b % 64)) != 0)
    }
}

#[cfg(test)]
thread_local! {
    /// Prefix compares made by [`WordGate::at`] on this thread (for the tests).
    static WORD_COMPARES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether [`WordGate::at`] skips the [`Stem`] pre-check on this thread and compares every
    /// prefix of a key's group at each table hit, as before the stems (for the tests that
    /// prove the stem changes no output).
    pub(crate) static STEM_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A lowercase prefix of the word gate, how many of its bytes come before the word start it
/// is looked up at (0 or 1, [`word_part`]), and the detectors it stands for.
#[derive(Debug)]
struct GatedPrefix {
    prefix: Vec<u8>,
    back: usize,
    bits: u128,
    /// A prefix of eight bytes or fewer as a little-endian word (zero-padded) and the mask of
    /// its bytes: verified with one masked 64-bit compare where eight bytes follow its start.
    /// Every table hit is verified (about 1 % of word starts, most of them `api…`), and a
    /// `memcmp` call per prefix there was a visible share of the default profile's time.
    word: Option<(u64, u64)>,
}

impl GatedPrefix {
    fn new(prefix: &[u8], back: usize, bits: u128) -> GatedPrefix {
        let word = (prefix.len() <= 8).then(|| {
            let mut w = [0u8; 8];
            w[..prefix.len()].copy_from_slice(prefix);
            let mask = u32::try_from(8 * (8 - prefix.len()))
                .ok()
                .and_then(|shift| u64::MAX.checked_shr(shift))
                .unwrap_or(0);
            (u64::from_le_bytes(w), mask)
        });
        GatedPrefix {
            prefix: prefix.to_vec(),
            back,
            bits,
            word,
        }
    }

    /// Whether the prefix occurs at `start` of `hay` (false where it would run past the end).
    #[inline]
    fn occurs_at(&self, hay: &[u8], start: usize) -> bool {
        let rest = hay.get(start..).unwrap_or_default();
        match (self.word, rest.first_chunk::<8>()) {
            (Some((word, mask)), Some(eight)) => u64::from_le_bytes(*eight) & mask == word,
            _ => rest.starts_with(&self.prefix),
        }
    }
}

impl Default for WordGate {
    fn default() -> Self {
        WordGate {
            table: Box::new([0; GATE_BITS / 64]),
            keys: Vec::new(),
            slots: Vec::new(),
            kinds: 0,
        }
    }
}

/// The key of a prefix or of a word's start: its first (up to) three bytes, zero-padded.
fn gate_key(bytes: &[u8]) -> u32 {
    let mut k = [0u8; 4];
    let n = bytes.len().min(3);
    k[..n].copy_from_slice(&bytes[..n]);
    u32::from_le_bytes(k)
}

/// The key's bit in the table (Fibonacci hashing: the multiplication's top 16 bits).
fn gate_bit(key: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B1) >> 16) as usize
}

impl WordGate {
    /// Adds a lowercase prefix of the detectors `bits`, looked up at word starts after its
    /// first `back` bytes (at least three bytes follow them). The gate answers for it only
    /// after [`WordGate::finish`], which builds the stems and the index once for all keys.
    fn add(&mut self, prefix: &[u8], back: usize, bits: u128) {
        let key = gate_key(prefix.get(back..).unwrap_or_default());
        let h = gate_bit(key);
        self.table[h / 64] |= 1 << (h % 64);
        self.kinds |= bits;
        let at = match self.keys.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(at) => at,
            Err(at) => {
                let group = KeyGroup {
                    stem: Stem::of(std::iter::empty()),
                    prefixes: Vec::new(),
                };
                self.keys.insert(at, (key, group));
                at
            }
        };
        let group = &mut self.keys[at].1;
        match group
            .prefixes
            .iter_mut()
            .find(|g| g.prefix == prefix && g.back == back)
        {
            Some(g) => g.bits |= bits,
            None => group.prefixes.push(GatedPrefix::new(prefix, back, bits)),
        }
    }

    /// Computes every key group's [`Stem`] and builds [`WordGate::slots`], once, after the
    /// last [`WordGate::add`]. Fails when there are more keys than the index can number
    /// ([`MAX_WORD_GATE_KEYS`]; the built-in families have about 160), and the gate is then
    /// not to be used.
    fn finish(&mut self) -> Result<(), String> {
        if self.keys.len() > MAX_WORD_GATE_KEYS {
            return Err(format!(
                "too many word-gate keys ({}, at most {MAX_WORD_GATE_KEYS}): use fewer token \
                 families in the profile",
                self.keys.len()
            ));
        }
        for (_, group) in &mut self.keys {
            group.stem = Stem::of(
                group
                    .prefixes
                    .iter()
                    .map(|g| g.prefix.get(g.back..).unwrap_or_default()),
            );
        }
        let n = (2 * self.keys.len()).next_power_of_two().max(2);
        self.slots = vec![EMPTY_SLOT; n];
        for (g, (key, _)) in self.keys.iter().enumerate() {
            // Below `EMPTY_SLOT` by the check above.
            let g = u16::try_from(g)
                .ok()
                .filter(|g| *g != EMPTY_SLOT)
                .ok_or("too many word-gate keys: use fewer token families in the profile")?;
            let mut i = gate_bit(*key) & (n - 1);
            while self.slots[i] != EMPTY_SLOT {
                i = (i + 1) & (n - 1);
            }
            self.slots[i] = g;
        }
        Ok(())
    }

    /// The group of `key`, whose hash is `h`, if the gate has one.
    #[inline]
    fn group(&self, key: u32, h: usize) -> Option<&KeyGroup> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = h & mask;
        // Ends at a free slot: there are at least twice as many slots as keys.
        loop {
            let (k, group) = self.keys.get(usize::from(*self.slots.get(i)?))?;
            if *k == key {
                return Some(group);
            }
            i = (i + 1) & mask;
        }
    }

    /// The detectors whose prefix starts at `p` of `lower`, which begins with `key` (whose
    /// hash is `h`).
    #[cold]
    fn at(&self, lower: &[u8], p: usize, key: u32, h: usize) -> u128 {
        let Some(group) = self.group(key, h) else {
            return 0;
        };
        #[cfg(test)]
        let stem_off = STEM_OFF.with(std::cell::Cell::get);
        #[cfg(not(test))]
        let stem_off = false;
        if !stem_off && !group.stem.may_start(lower, p) {
            return 0;
        }
        group
            .prefixes
            .iter()
            .filter(|g| {
                #[cfg(test)]
                WORD_COMPARES.with(|c| c.set(c.get() + 1));
                p.checked_sub(g.back)
                    .is_some_and(|start| g.occurs_at(lower, start))
            })
            .fold(0, |a, g| a | g.bits)
    }

    /// The gate's detectors with a prefix at a word start of `lower` (the segment lowercased,
    /// whose masks are `masks`).
    fn candidates(&self, lower: &[u8], masks: &SegmentMasks) -> u128 {
        if self.kinds == 0 {
            return 0;
        }
        let mut found = 0;
        // Whether the byte before the block is a word byte.
        let mut carry = 0;
        for k in 0..masks.len() {
            let m = masks.get(k);
            let word = m.word;
            // No gated prefix starts with a digit (`word_part`): numbers, a good part of
            // a log's words, are skipped.
            let mut starts = word & !((word << 1) | carry) & !m.digit;
            carry = word >> 63;
            while starts != 0 {
                let p = k * 64 + starts.trailing_zeros() as usize;
                starts &= starts - 1;
                let key = match lower.get(p..p + 3) {
                    Some(&[a, b, c]) => u32::from_le_bytes([a, b, c, 0]),
                    _ => gate_key(lower.get(p..).unwrap_or_default()),
                };
                let h = gate_bit(key);
                if self.table[h / 64] & (1 << (h % 64)) != 0 {
                    found |= self.at(lower, p, key, h);
                    // Only a hit can complete the set: the test is here, not once per block.
                    if found == self.kinds {
                        return found;
                    }
                }
            }
        }
        found
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
    masks.pairs().any(|(cur, next)| {
        // A shape starting in this block has its dashes at +3 and +6: in this block, or in
        // the next block's first six bytes. Most blocks of a log have none there.
        if cur.dash == 0 && next.dash & 0x3f == 0 {
            return false;
        }
        let w = |m: u64, n: u64| u128::from(m) | (u128::from(n) << 64);
        let (d, h) = (w(cur.digit, next.digit), w(cur.dash, next.dash));
        // Its two dashes, three bytes apart, first: a UUID's or a word's dashes end here.
        let dashes = (h >> 3) & (h >> 6);
        if dashes as u64 == 0 {
            return false;
        }
        let shape = d
            & (d >> 1)
            & (d >> 2)
            & dashes
            & (d >> 4)
            & (d >> 5)
            & (d >> 7)
            & (d >> 8)
            & (d >> 9)
            & (d >> 10);
        shape as u64 != 0
    })
}

/// `::`, or six colons each separated from the next by one to four hex digits: every text form
/// of an IPv6 address has one or the other (eight groups, or six and an IPv4 address).
///
/// Only colons followed by another colon two to five bytes on ("linked", from the masks, 64
/// at a time) can be one of the first five colons of such a chain, so only those are visited:
/// a JSON line's colons (`"key":"value"`) are seldom linked, a time's `07:49:12` links one.
/// A linked colon continues the chain of the linked colon before it when it is that colon's
/// next colon with hex digits between (no colon can be between then: a colon is not a hex
/// digit); after five in a row, the sixth is the next colon of the fifth. Same answer as
/// visiting every colon (`ipv6_shape_by_linked_colons_equals_every_colon`).
fn has_ipv6_shape(seg: &[u8], masks: &SegmentMasks) -> bool {
    let hex_between = |p: usize, i: usize| seg[p + 1..i].iter().all(u8::is_ascii_hexdigit);
    // Linked colons in a row, ending at `last`.
    let mut run = 0;
    let mut last: Option<usize> = None;
    for k in 0..masks.len() {
        let cur = masks.get(k);
        // A block without a colon neither holds a linked colon nor ends a `::`.
        if cur.colon == 0 {
            continue;
        }
        let next = masks.get(k + 1);
        if cur.colon & ((cur.colon >> 1) | (next.colon << 63)) != 0 {
            return true;
        }
        let w = u128::from(cur.colon) | (u128::from(next.colon) << 64);
        let mut linked = (w & ((w >> 2) | (w >> 3) | (w >> 4) | (w >> 5))) as u64;
        while linked != 0 {
            let i = k * 64 + linked.trailing_zeros() as usize;
            linked &= linked - 1;
            run = match last {
                Some(p) if (2..=5).contains(&(i - p)) && hex_between(p, i) => run + 1,
                _ => 1,
            };
            last = Some(i);
            if run >= 5 {
                // No `::` here (tested above for this block): the next colon is 2..=5 on.
                let sixth = (i + 2..=i + 5).find(|j| seg.get(*j) == Some(&b':'));
                if sixth.is_some_and(|j| hex_between(i, j)) {
                    return true;
                }
            }
        }
    }
    false
}

/// [`has_ipv6_shape`] by visiting every colon: the reference its tests compare with.
#[cfg(test)]
fn ipv6_shape_by_every_colon(seg: &[u8], masks: &SegmentMasks) -> bool {
    let mut chain = 0;
    let mut last: Option<usize> = None;
    for k in 0..masks.len() {
        let cur = masks.get(k);
        // A block without a colon neither holds nor ends a shape's colon, nor moves the chain.
        if cur.colon == 0 {
            continue;
        }
        let next = masks.get(k + 1);
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

    /// National identifiers have no prefilter bit (their numbers are 128 and up): the gate
    /// never hands one to `bit()`, whose `1 << 128` would panic or wrap to `private_key`.
    #[test]
    fn national_identifiers_have_no_prefilter_gate() {
        let nationals: Vec<Builtin> = Builtin::OPT_IN
            .into_iter()
            .filter(|b| b.as_national().is_some())
            .collect();
        assert_eq!(nationals.len(), 13);
        for b in &nationals {
            assert!(matches!(gate(*b), Gate::Never), "{}", b.name());
        }
        let p = Prefilter::new(&nationals).unwrap();
        assert!(p.literals.is_empty());
    }

    /// Asking a national identifier for its bit is a bug, caught in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "has no prefilter bit")]
    fn a_national_identifier_has_no_bit_index() {
        let _ = Builtin::OPT_IN[2].bit_index();
    }

    /// The compiled triggers of every built-in detector (default and opt-in) are prefix-free,
    /// few enough for Teddy, three bytes or longer, and every literal of every detector
    /// starts with one of them.
    #[test]
    fn triggers_are_prefix_free_and_cover_every_literal() {
        let p = Prefilter::new(Builtin::ALL.into_iter().chain(Builtin::OPT_IN)).unwrap();
        let all = &p.literals;
        for a in all {
            assert!(a.len() >= 3, "{a} is shorter than Teddy's fingerprint");
            for b in all {
                assert!(
                    a == b || !b.starts_with(a.as_str()),
                    "{a} is a prefix of {b}"
                );
            }
        }
        assert!(
            p.keywords
                .iter()
                .all(|(k, _)| matches!(k, Keywords::Packed(_)) || !packed_available()),
            "a search fell back to the automaton"
        );
        let keyword = Builtin::ALL
            .into_iter()
            .filter(|b| matches!(gate(*b), Gate::Keyword));
        let literals = keyword.flat_map(|b| {
            let family = b.as_family().map_or(&[][..], |f| f.shapes);
            b.literals()
                .iter()
                .copied()
                .chain(family.iter().flat_map(|s| s.prefixes.iter().copied()))
        });
        for l in literals {
            let l = l.to_ascii_lowercase();
            let gated = p.word_gate.keys.iter().any(|(_, g)| {
                g.prefixes
                    .iter()
                    .any(|g| g.prefix.as_slice() == l.as_bytes())
            }) || p
                .tilde_gate
                .prefixes
                .iter()
                .any(|(prefix, _, _)| prefix == l.as_bytes());
            assert!(
                gated || all.iter().any(|t| l.starts_with(t.as_str())),
                "{l}"
            );
        }
    }

    /// Every word-gated family prefix, at a word start (the segment's start, after a space or
    /// a `=`, at any offset across a block boundary), in any case, makes its detector a
    /// candidate; glued to a word byte it does not (`Shape::match_at` would reject it there).
    #[test]
    fn word_gate_finds_every_family_prefix_at_a_word_start() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let candidates = |text: &[u8]| {
            let mut m = SegmentMasks::default();
            m.compute(text);
            p.candidates(text, &m)
        };
        let mut gated = 0;
        for (_, group) in &p.word_gate.keys {
            for GatedPrefix {
                prefix, back, bits, ..
            } in &group.prefixes
            {
                gated += 1;
                let prefix = String::from_utf8(prefix.clone()).unwrap();
                for pad in [0, 1, 60, 61, 62, 63, 64, 127] {
                    for text in [
                        format!("{}{prefix}", " ".repeat(pad)),
                        format!("{}={}x", "a".repeat(pad), prefix.to_ascii_uppercase()),
                        // Eight bytes and more after the word start: the stem is compared.
                        format!("{}{prefix}tail_end", " ".repeat(pad)),
                    ] {
                        assert_eq!(candidates(text.as_bytes()) & bits, *bits, "{text:?}");
                    }
                    // A prefix that opens with a non-word byte (`?sig=`) is found glued too:
                    // its word part starts a word wherever it is.
                    let glued = format!("{}{prefix}", "a".repeat(pad + 1));
                    let want = if *back == 0 { 0 } else { *bits };
                    assert_eq!(candidates(glued.as_bytes()) & bits, want, "{glued:?}");
                }
            }
        }
        assert!(gated >= 150, "{gated} prefixes in the word gate");
    }

    /// The gate's prefix compares on `text`, and its candidates.
    fn word_gate_on(p: &Prefilter, text: &[u8]) -> (usize, u128) {
        let mut m = SegmentMasks::default();
        m.compute(text);
        WORD_COMPARES.with(|c| c.set(0));
        let found = p.word_gate.candidates(m.lower(), &m);
        (WORD_COMPARES.with(std::cell::Cell::get), found)
    }

    /// Everyday words that start like a vendor's key name (`authorization` like
    /// `auth0_client_secret`, `page=` like `pagerduty_token`, `database` like
    /// `datadog_api_key`) or like a short prefix's key (`api/` like `api-`, `line` like
    /// `lin_api_`) are passed by their key group's stem without comparing any prefix; the
    /// keys and prefixes themselves still are, in any case.
    #[test]
    fn everyday_words_sharing_a_key_cost_no_prefix_compare() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let line = "Authorization: Bearer x AuthController auth.example.com author authored \
                    GET /api/v1/orders?page=3&pages=9 pager paged database datagram dataset \
                    line link linux routes router sentence sentinel closed clock cohort \
                    twitter fastest oktober x-amz-date azure_region adopt";
        for w in line.split(' ') {
            assert_eq!(word_gate_on(&p, w.as_bytes()), (0, 0), "{w}");
        }
        assert_eq!(word_gate_on(&p, line.as_bytes()), (0, 0));
        let name = |n: &str| bit(Builtin::from_name(n).unwrap());
        for (text, want) in [
            ("DD_API_KEY=0123", name("datadog_api_key")),
            ("\"Auth0_Client_Secret\": \"x", name("auth0_client_secret")),
            ("x pagerduty-token: y", name("pagerduty_key")),
            ("routing_key=abc", name("pagerduty_key")),
            ("x API-0123456789", name("launchdarkly_key")),
            ("lin_api_0123456789", name("linear_key")),
            ("x api_org_0123", name("huggingface_token")),
        ] {
            let (compares, found) = word_gate_on(&p, text.as_bytes());
            assert!(compares > 0, "{text}");
            assert_eq!(found & want, want, "{text}");
        }
    }

    /// Every key of the word gate is found through its open-addressed index, at its own group;
    /// a key it does not hold is not, whatever slot its hash lands on.
    #[test]
    fn every_word_gate_key_is_found_through_the_index() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let gate = &p.word_gate;
        assert!(gate.slots.len() >= 2 * gate.keys.len());
        assert!(gate.slots.len().is_power_of_two());
        for (key, group) in &gate.keys {
            let found = gate.group(*key, gate_bit(*key)).unwrap();
            assert!(std::ptr::eq(found, group), "{key:x}");
        }
        for word in [&b"zzz"[..], b"the", b"qqq", b"a", b""] {
            let key = gate_key(word);
            if gate.keys.iter().all(|(k, _)| *k != key) {
                assert!(gate.group(key, gate_bit(key)).is_none(), "{word:?}");
            }
        }
        assert!(WordGate::default().group(gate_key(b"api"), 7).is_none());
    }

    /// The index numbers keys with a `u16` less its free-slot mark: 65,535 distinct keys are
    /// indexed (and each is found at its own group), one more is refused with an error
    /// naming the limit, not a wrong or truncated index.
    #[test]
    fn word_gate_refuses_more_keys_than_its_index_can_number() {
        let gate_of = |n: usize| {
            let mut gate = WordGate::default();
            for i in 0..n {
                let [a, b, ..] = i.to_le_bytes();
                gate.add(&[a, b, b'k', b'e', b'y'], 0, 1);
            }
            (gate.keys.len(), gate.finish().map(|()| gate))
        };
        let (keys, gate) = gate_of(MAX_WORD_GATE_KEYS);
        assert_eq!(keys, 65_535);
        let gate = gate.unwrap();
        for (key, group) in &gate.keys {
            let found = gate.group(*key, gate_bit(*key)).unwrap();
            assert!(std::ptr::eq(found, group), "{key:x}");
        }
        let (keys, gate) = gate_of(MAX_WORD_GATE_KEYS + 1);
        assert_eq!(keys, 65_536);
        let err = gate.unwrap_err();
        assert!(
            err.contains("too many word-gate keys (65536, at most 65535)"),
            "{err}"
        );
    }

    /// A key group's stem is what all its prefixes start with (at most eight bytes) and the
    /// bytes that follow it; a prefix that ends at the stem lets any byte follow.
    #[test]
    fn stems_are_the_common_start_and_the_bytes_after_it() {
        let stem = |parts: &[&str]| Stem::of(parts.iter().map(|p| p.as_bytes()));
        let s = stem(&[
            "auth0_client_secret",
            "auth0-client-secret",
            "auth0_api_token",
        ]);
        assert_eq!(s.len, 5);
        assert!(s.may_start(b"auth0_client_secret", 0));
        assert!(s.may_start(b"AUTH0-x".to_ascii_lowercase().as_slice(), 0));
        assert!(!s.may_start(b"authorization", 0));
        assert!(!s.may_start(b"auth0.example.com", 0));
        // Near the end: what is left must hold the stem.
        assert!(!s.may_start(b"auth", 0));
        assert!(!s.may_start(b"x auth", 2));
        assert!(!s.may_start(b"authx", 0));
        assert!(s.may_start(b"auth0", 0));
        assert!(s.may_start(b"auth0_", 0));
        assert!(!s.may_start(b"auth0.", 0));
        assert!(!s.may_start(b"auth0", 1));
        assert!(!s.may_start(b"auth0", 9));
        let s = stem(&["pagerduty_token", "pagerduty-token"]);
        assert_eq!(s.len, 8);
        assert!(s.may_start(b"pagerduty_token=", 0));
        assert!(!s.may_start(b"pagerdutx_token=", 0));
        let s = stem(&["key-", "key"]);
        assert_eq!((s.len, s.next), (3, [u64::MAX; 4]));
        assert!(s.may_start(b"key/value", 0));
        let s = stem(&["sig="]);
        assert_eq!(s.len, 4);
        assert!(s.may_start(b"x?sig=abcdef", 2));
        assert!(!s.may_start(b"x?sign=abcdef", 2));
    }

    /// The prefixes that open with a non-word byte (`?sig=`, `&sig=`, `.atlasv1.`) are in the
    /// word gate, and the Entra prefixes (`8Q~`) in the `~` gate: neither is in the literal
    /// search any more, and each is found at any offset, glued to word bytes, in any case.
    #[test]
    fn opener_and_tilde_prefixes_are_gated_out_of_the_literal_search() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let candidates = |text: &[u8]| {
            let mut m = SegmentMasks::default();
            m.compute(text);
            p.candidates(text, &m)
        };
        let sas = bit(Builtin::from_name("azure_sas_signature").unwrap());
        let atlas = Builtin::from_name("terraform_token").unwrap();
        let entra = bit(Builtin::from_name("azure_client_secret").unwrap());
        for gated in ["?sig=", "&sig=", ".atlasv1.", "0q~", "5q~", "9q~"] {
            assert!(
                !p.literals.iter().any(|l| gated.starts_with(l.as_str())),
                "{gated} is still a literal"
            );
        }
        assert_eq!(p.tilde_gate.prefixes.len(), 10);
        for pad in [0, 1, 62, 63, 64, 127] {
            let x = "x".repeat(pad);
            assert_ne!(
                candidates(format!("{x}a.b/c?sv=1&SIG=abc").as_bytes()) & sas,
                0
            );
            assert_ne!(candidates(format!("{x}c?sig=abc").as_bytes()) & sas, 0);
            assert_eq!(candidates(format!("{x} sig=abc").as_bytes()) & sas, 0);
            assert_ne!(
                candidates(format!("{x}abc.ATLASV1.x").as_bytes()) & bit(atlas),
                0
            );
            assert_eq!(
                candidates(format!("{x}atlasv1.x").as_bytes()) & bit(atlas),
                0
            );
            assert_ne!(candidates(format!("{x}abc8Q~def").as_bytes()) & entra, 0);
            assert_ne!(candidates(format!("{x}7q~").as_bytes()) & entra, 0);
            assert_eq!(candidates(format!("{x}~ aQ~ 8Q 8~").as_bytes()) & entra, 0);
        }
    }

    /// The `~` gate runs whatever the word gate found: a line holding a prefix of every
    /// word-gated family (so the word gate's loop stops early), then an Entra secret two
    /// blocks later, makes `azure_client_secret` a candidate.
    #[test]
    fn tilde_gate_runs_whatever_the_word_gate_found() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let entra = bit(Builtin::from_name("azure_client_secret").unwrap());
        let prefixes: Vec<String> = p
            .word_gate
            .keys
            .iter()
            .flat_map(|(_, g)| g.prefixes.iter())
            .map(|g| String::from_utf8_lossy(&g.prefix).into_owned())
            .collect();
        let line = format!(
            "{} {}abc8Q~{}",
            prefixes.join(" "),
            "x".repeat(128),
            "a1B2~c3.D4_e5-F6g7H8k9".repeat(2).get(..34).unwrap()
        );
        let mut m = SegmentMasks::default();
        m.compute(line.as_bytes());
        let lower = m.lower();
        // The word gate finds all its detectors before the secret's block.
        let head = &line.as_bytes()[..prefixes.join(" ").len()];
        let mut head_masks = SegmentMasks::default();
        head_masks.compute(head);
        assert_eq!(
            p.word_gate.candidates(head_masks.lower(), &head_masks),
            p.word_gate.kinds
        );
        assert_eq!(p.word_gate.candidates(lower, &m), p.word_gate.kinds);
        assert_ne!(p.candidates(line.as_bytes(), &m) & entra, 0);
    }

    /// The prefix compares made by the `~` gate on `text`, and its candidates.
    fn tilde_gate_on(p: &Prefilter, text: &[u8]) -> (usize, u128) {
        let mut m = SegmentMasks::default();
        m.compute(text);
        TILDE_COMPARES.with(|c| c.set(0));
        let found = p.tilde_gate.candidates(m.lower(), &m);
        (TILDE_COMPARES.with(std::cell::Cell::get), found)
    }

    /// A `~` not preceded by `q` and a digit (what every Entra prefix has before its `~`) is
    /// passed without comparing any prefix: a line of 4096 `~` (or of `q~`) makes none.
    #[test]
    fn tilde_runs_cost_no_prefix_compare() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let entra = bit(Builtin::from_name("azure_client_secret").unwrap());
        assert_eq!(p.tilde_gate.depth, 2);
        for text in [
            "~".repeat(4096),
            "q~".repeat(2048),
            "~q~".repeat(1365),
            "aq~".to_string(),
            "8~~".to_string(),
            "q8~".to_string(),
        ] {
            assert_eq!(tilde_gate_on(&p, text.as_bytes()), (0, 0), "{:.12}", text);
        }
        for text in ["8q~", "8Q~", "x~~5Q~", "~~~~0q~~~~"] {
            let (compares, found) = tilde_gate_on(&p, text.as_bytes());
            assert_eq!(found, entra, "{text}");
            assert_eq!(compares, p.tilde_gate.prefixes.len(), "{text}");
        }
        // Dense real prefixes: the gate stops after the first block that has one.
        let (compares, found) = tilde_gate_on(&p, "8q~".repeat(1400).as_bytes());
        assert_eq!(found, entra);
        assert!(compares <= 22 * p.tilde_gate.prefixes.len(), "{compares}");
    }

    /// The word gate's masked 64-bit compare says what `starts_with` says, for every gated
    /// prefix (short and long), at every start near the end of the haystack and past it.
    #[test]
    fn gated_prefix_compare_equals_starts_with() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        for (_, group) in &p.word_gate.keys {
            for g in &group.prefixes {
                let mut hay = b"xx".to_vec();
                hay.extend_from_slice(&g.prefix);
                hay.extend_from_slice(b"tail");
                // The prefix with its last byte changed, then eight bytes: a mask one byte
                // too short (the last byte not compared) says it occurs.
                let mut near = b"xx".to_vec();
                near.extend_from_slice(&g.prefix);
                if let Some(last) = near.last_mut() {
                    *last ^= 0x01;
                }
                near.extend_from_slice(b"tailtail");
                assert!(!g.occurs_at(&near, 2), "{:?} near miss", g.prefix);
                for hay in [hay, near] {
                    for end in 0..=hay.len() {
                        let hay = &hay[..end];
                        for start in 0..=end + 1 {
                            let want = hay.get(start..).is_some_and(|r| r.starts_with(&g.prefix));
                            assert_eq!(
                                g.occurs_at(hay, start),
                                want,
                                "{:?} {start} {end}",
                                g.prefix
                            );
                        }
                    }
                }
            }
        }
    }

    /// Whether this CPU can run Teddy at all (SSSE3 or AVX2).
    fn packed_available() -> bool {
        packed::Config::new()
            .builder()
            .extend(["abc", "def"])
            .build()
            .is_some()
    }

    /// A literal that shares a trigger with another (`key` and Mailgun's `key-`, `sk-` and
    /// `sk-ant-api03-`) makes its detector a candidate only where the whole literal occurs.
    #[test]
    fn longer_literals_behind_a_shared_trigger_are_verified() {
        let p = Prefilter::new(Builtin::ALL).unwrap();
        let mailgun = Builtin::from_name("mailgun_key").unwrap();
        let anthropic = Builtin::from_name("anthropic_key").unwrap();
        let candidates = |text: &[u8]| {
            let mut m = SegmentMasks::default();
            m.compute(text);
            p.candidates(text, &m)
        };
        assert_eq!(candidates(b"the key is here") & bit(mailgun), 0);
        assert_ne!(candidates(b"x KEY-abc") & bit(mailgun), 0);
        assert_eq!(candidates(b"sk-proj-x") & bit(anthropic), 0);
        assert_ne!(candidates(b"sk-ant-api03-x") & bit(anthropic), 0);
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
        let mut literals = Prefilter::new(Builtin::ALL).unwrap().literals;
        literals.sort();
        let automaton = Keywords::Automaton(
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .unwrap(),
        );
        let text = "x tokenpass://eyjakia ghp_ xoxb basic bearer authorization k_live_ aws \
                    secretkey credential pwd github_pat_ aizasia -----begin token sk_live_ xoxb- \
                    hooks.slack.com sk-ant-api03- glpat- key- npm_ dop_v1_ hvs.";
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
            let k = Keywords::new(&literals[..small], true).unwrap();
            let automaton = Keywords::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&literals[..small])
                    .unwrap(),
            );
            assert_eq!(all(&k), all(&automaton), "{small} literals");
        }
        assert_eq!(all(&Keywords::new(&literals, true).unwrap()), want);
        assert_eq!(all(&Keywords::new(&literals, false).unwrap()), want);
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
        for pad in 58..=66 {
            let text = format!("{}123-45-6789", "x".repeat(pad));
            assert!(has_ssn_shape(text.as_bytes()), "{text}");
        }
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        /// Visiting only linked colons answers as visiting every colon, on lines of colons
        /// followed by zero to five hex digits or something else, digits, dots and spaces
        /// (dense in chains of every length and near misses; a `::` in few of them) of up to
        /// four blocks, at every offset of a block.
        #[test]
        fn ipv6_shape_by_linked_colons_equals_every_colon(
            pad in 0usize..64,
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                ":1", ":ab", ":f00", ":dead", ":beef0", ":g", ":.", "1", "g", " ", ".", "1.2",
                "\"a\": ",
            ]), 0..60),
            double in 0usize..1200,
        ) {
            let mut pieces = pieces;
            if double < pieces.len() {
                pieces.insert(double, "::");
            }
            let text = format!("{}{}", " ".repeat(pad), pieces.concat());
            let mut m = SegmentMasks::default();
            m.compute(text.as_bytes());
            proptest::prop_assert_eq!(
                has_ipv6_shape(text.as_bytes(), &m),
                ipv6_shape_by_every_colon(text.as_bytes(), &m),
                "{:?}", text
            );
        }
    }
}
