//! loggate's redaction engine: every byte a redacting profile serves passes through here.
//!
//! The contract. [`Pipeline`] takes any bytes (hostile log text, cut into chunks anywhere) and
//! gives whole lines back, each with every finding of the profile's detectors replaced
//! (`[REDACTED:name]`, a partial mask or a keyed pseudonym, see [`Mode`]) and PEM private-key
//! blocks removed, counting what it did in [`Counts`] (names and numbers, never values). The
//! output and the counts do not depend on where the input was cut into chunks; memory is
//! bounded by the line limit given to [`Pipeline::new`] (a longer line is cut, and the cut
//! tail that may be half a secret is dropped). The agent's stream loop and `loggate-agent
//! redact` both use [`Pipeline`], so the command shows byte for byte what the agent serves.
//! [`Profiles`] compiles the agent's `[redaction]` configuration into [`Redactor`]s, once at
//! start; [`is_valid_redaction_name`] is the one rule for profile and detector names, which the
//! controller checks too.
//!
//! Fail closed: a line on which a detector fails (a panic in our code is the only way one can)
//! is withheld, replaced by [`WITHHELD_MARKER`] and counted, never passed on unscanned.
//!
//! Cut as ripgrep cuts its searcher (STYLE.md): `reading` splits a stream into whole lines
//! with a bounded carry-over, `finding` holds the detectors and `validate` their validators,
//! `prefilter` decides per segment which detectors can find anything (with the byte masks of
//! `bytemask`), `writing` replaces findings and counts them, `profile` builds redactors from
//! the agent's configuration. [`Redactor`] ties finding and writing together for one line, with the one
//! piece of state that spans lines: "inside a PEM private-key block". [`Pipeline`] ties reading
//! to it.
//!
//! `unsafe` lives in `bytemask` only (SIMD loads and stores, each with its `SAFETY:` line);
//! everywhere else it does not compile.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod bytemask;
mod family;
mod finding;
mod national;
mod prefilter;
mod profile;
mod reading;
mod validate;
mod writing;

use bytemask::SegmentMasks;
use family::Family;
pub use finding::Builtin;
use prefilter::Prefilter;
pub use profile::{is_valid_redaction_name, Profiles, RedactionConfigFile};
use reading::{Line, LineSplitter};
use regex::bytes::Regex;
use std::sync::{Arc, LazyLock};
use validate::Validator;
pub use writing::{Counts, HashKey, Mode};

/// The built-in detectors as `loggate-agent redact --list-detectors` prints them: a header,
/// then one tab-separated line per detector (name, `default` or `opt-in`, what it finds and
/// its shapes, the specification or vendor documentation followed), default profile first, in
/// priority order.
pub fn detector_table() -> String {
    let mut out = String::from("name\tprofile\tfinds\tsource\n");
    for b in Builtin::ALL.into_iter().chain(Builtin::OPT_IN) {
        let (finds, source) = b.describe();
        let profile = if b.is_default() { "default" } else { "opt-in" };
        out.push_str(&format!("{}\t{profile}\t{finds}\t{source}\n", b.name()));
    }
    out
}

/// One written form of a token family, for tools that make or check tokens (the fuzz target
/// plants them in random text): the detector, one literal prefix, the bytes that may follow it
/// and how many. `plain` is false for forms with a checksum or structure check, or with bytes
/// before the prefix (`lead`): a run of the alphabet is not a token of those.
#[derive(Debug, Clone)]
pub struct TokenShape {
    /// The detector's name (`[REDACTED:name]`).
    pub detector: &'static str,
    /// What is written before the body: a literal prefix (case-sensitive), or a vendor's key
    /// and `=` (`dd_api_key=`) or scheme and a space (`ssws `) for a value bound to its context.
    pub prefix: String,
    /// The bytes that may follow the prefix.
    pub alphabet: Vec<u8>,
    /// Shortest and longest run after the prefix.
    pub min: usize,
    /// See `min`.
    pub max: usize,
    /// Any run of `alphabet` of `min..=max` bytes after `prefix`, between spaces, is a token.
    pub plain: bool,
}

/// Every prefix of every token family of the `default` profile, as [`TokenShape`]s.
pub fn token_shapes() -> Vec<TokenShape> {
    let mut out = Vec::new();
    for f in family::FAMILIES {
        for s in f.shapes {
            let alphabet: Vec<u8> = (0..=255u8).filter(|b| s.alphabet.has(*b)).collect();
            for prefix in s.prefixes {
                let (prefix, written) = match s.context {
                    family::Context::Prefix => (prefix.to_string(), true),
                    family::Context::Key => (format!("{prefix}="), true),
                    family::Context::Scheme => (format!("{prefix} "), true),
                    // The value comes before its literal (`://<key>@…sentry.io`).
                    family::Context::UserinfoAtHost => (prefix.to_string(), false),
                };
                out.push(TokenShape {
                    detector: f.name,
                    prefix,
                    alphabet: alphabet.clone(),
                    min: usize::from(s.min),
                    max: usize::from(s.max),
                    plain: written && s.lead == 0 && s.check == family::Check::None,
                });
            }
        }
    }
    out
}

/// A valid national identifier for tools that test the engine (the fuzz target plants them):
/// detector `pick` (modulo the number of national detectors) in its written form `form`
/// (modulo its forms), built from `seed`'s bytes with its check characters completed. `None`
/// when `seed` gives no valid one (a date out of range, an unissued first digit); the name
/// is the detector's.
pub fn national_id_example(
    pick: usize,
    form: usize,
    seed: &[u8],
) -> Option<(&'static str, Vec<u8>)> {
    let id = national::ALL[pick % national::ALL.len()];
    id.example_from(form, seed).map(|v| (id.name(), v))
}

/// What replaces a line withheld because redaction failed on it.
pub const WITHHELD_MARKER: &[u8] = b"[WITHHELD:redaction_failed]";

/// One detector of a profile.
#[derive(Debug)]
pub struct Detector {
    name: String,
    mode: Mode,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Builtin(Builtin),
    /// A profile's own regex; the value is capture group `value` if the regex has one, else
    /// the whole match.
    Custom {
        regex: Regex,
        validator: Option<Validator>,
    },
    /// Always fails: proves the fail-closed path in tests.
    #[cfg(test)]
    Broken,
}

impl Detector {
    /// A built-in detector whose findings are replaced as `mode` says.
    pub fn builtin(b: Builtin, mode: Mode) -> Detector {
        Detector {
            name: b.name().to_string(),
            mode,
            kind: Kind::Builtin(b),
        }
    }

    pub(crate) fn custom(
        name: String,
        mode: Mode,
        regex: Regex,
        validator: Option<Validator>,
    ) -> Self {
        Detector {
            name,
            mode,
            kind: Kind::Custom { regex, validator },
        }
    }

    fn find(
        &self,
        seg: &[u8],
        masks: &SegmentMasks,
        userinfo_rows: &[&Family],
        out: &mut Vec<(usize, usize)>,
    ) {
        match &self.kind {
            Kind::Builtin(b) => b.find_in(seg, masks, userinfo_rows, out),
            Kind::Custom { regex, validator } => {
                for c in regex.captures_iter(seg) {
                    let Some(m) = c.name("value").or_else(|| c.get(0)) else {
                        continue;
                    };
                    let ok = !m.is_empty()
                        && !finding::own_output(m.as_bytes())
                        && validator.is_none_or(|v| v.check(m.as_bytes()));
                    if ok {
                        out.push((m.start(), m.end()));
                    }
                }
            }
            #[cfg(test)]
            Kind::Broken => {
                if memchr::memmem::find(seg, b"boom").is_some() {
                    panic!("test detector failed");
                }
            }
        }
    }
}

/// A compiled profile: detectors, their literal prefilter, the hash key. Built once at start
/// and shared by every stream that uses the profile.
#[derive(Debug)]
pub struct Redactor {
    detectors: Vec<Detector>,
    /// Whether PEM private-key blocks are removed (the `private_key` detector is enabled).
    private_keys: bool,
    /// Which built-in detectors can find something in a segment.
    prefilter: Prefilter,
    /// For each prefilter bit, the detectors (indices) it stands for: a line runs only the
    /// detectors of its candidate bits, not a test per detector (the default profile has
    /// 121).
    by_bit: Vec<Vec<usize>>,
    /// Detectors that run on every segment (custom ones).
    unconditional: Vec<usize>,
    /// The built-in detectors that run on every segment and find their own candidates in the
    /// masks (`card`, `iban`, `ipv4`), with their scanners: called directly on each segment,
    /// not through [`Redactor::run_detector`] (see [`Builtin::mask_scanner`]). Their bits are
    /// in `scanned_bits`, not in `by_bit`.
    scanners: Vec<(usize, finding::MaskScanner)>,
    /// The prefilter bits of `scanners`' detectors.
    scanned_bits: u128,
    /// The profile's families that name a URL's user part (`sentry_dsn`): only when one runs
    /// does `email` leave that value to it, else `email` redacts it.
    userinfo_rows: Vec<&'static Family>,
    /// National identifiers, run in one pass per segment, each only on a segment with at
    /// least as many digits as its values hold (one count per segment), so a profile naming
    /// them costs little on lines without long numbers.
    national: national::Scan,
    key: Option<Arc<HashKey>>,
}

/// Per-stream state of a [`Redactor`]: inside a private-key block or not, and scratch space.
#[derive(Debug, Default)]
pub struct LineState {
    in_private_key: bool,
    /// The segment's byte masks and lowercased copy, for the prefilter and the digit-shaped
    /// detectors.
    masks: SegmentMasks,
    spans: Vec<(usize, usize)>,
    findings: Vec<(usize, usize, usize)>,
}

static PEM_BEGIN: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"));
/// The literal start of [`PEM_BEGIN`], searched first: the regex runs only where it occurs.
static PEM_BEGIN_LITERAL: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"-----BEGIN"));
static PEM_END: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"));
/// The five dashes every private-key marker starts with: the prefilter of [`PEM_MARKER`].
static FIVE_DASHES: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"-----"));
/// Either of [`PEM_BEGIN`] and [`PEM_END`]: the lines that decide the key state.
static PEM_MARKER: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"-----(?:BEGIN|END)[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"));

/// Where the last private-key `BEGIN` or `END` marker in `haystack` starts. Only a line holding
/// one can change whether a reader is inside a private-key block, so a `tail` start is decided
/// by the last such line before it (see [`Pipeline::prime`]).
pub fn last_private_key_marker(haystack: &[u8]) -> Option<usize> {
    PEM_MARKER.find_iter(haystack).last().map(|m| m.start())
}

fn pattern(p: &str) -> Regex {
    match regex::bytes::RegexBuilder::new(p).unicode(false).build() {
        Ok(r) => r,
        Err(e) => panic!("built-in redaction pattern does not compile: {e}"),
    }
}

/// How [`Redactor::redact_line`] dealt with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineOutcome {
    /// The (possibly redacted) line was written.
    Written,
    /// The whole line belonged to a private-key block and is gone.
    Removed,
}

impl Redactor {
    /// A redactor running `detectors` (on findings that start at the same byte, the one listed
    /// first names the replacement); `key` is required by detectors in `hash` mode (without it
    /// they mask). Fails only if the literal prefilter cannot be built.
    pub fn new(detectors: Vec<Detector>, key: Option<Arc<HashKey>>) -> Result<Redactor, String> {
        let private_keys = detectors
            .iter()
            .any(|d| matches!(d.kind, Kind::Builtin(Builtin::PrivateKey)));
        // National identifiers have no prefilter bit: they run on every segment, like custom
        // detectors (opt-in only, so the default profile is not slowed).
        let prefilter = Prefilter::new(detectors.iter().filter_map(|d| match d.kind {
            Kind::Builtin(b) if b.as_national().is_none() => Some(b),
            _ => None,
        }))?;
        let mut by_bit: Vec<Vec<usize>> = vec![Vec::new(); 128];
        let mut unconditional = Vec::new();
        let mut national = Vec::new();
        let mut scanners = Vec::new();
        let mut scanned_bits = 0;
        for (i, d) in detectors.iter().enumerate() {
            match d.kind {
                Kind::Builtin(b) => match (b.as_national(), b.mask_scanner()) {
                    (Some(n), _) => national.push((i, n)),
                    (None, Some(scan)) if prefilter::Prefilter::always_runs(b) => {
                        scanners.push((i, scan));
                        scanned_bits |= prefilter::bit(b);
                    }
                    (None, _) => by_bit[b.bit_index() as usize].push(i),
                },
                _ => unconditional.push(i),
            }
        }
        let userinfo_rows = detectors
            .iter()
            .filter_map(|d| match d.kind {
                Kind::Builtin(b) => b.as_family().filter(|f| f.claims_userinfo()),
                _ => None,
            })
            .collect();
        Ok(Redactor {
            detectors,
            private_keys,
            prefilter,
            by_bit,
            unconditional,
            scanners,
            scanned_bits,
            userinfo_rows,
            national: national::Scan::new(&national),
            key,
        })
    }

    /// The built-in `default` profile: every built-in detector, `mask` mode.
    pub fn default_profile() -> Redactor {
        let detectors = Builtin::ALL
            .into_iter()
            .map(|b| Detector::builtin(b, Mode::Mask))
            .collect();
        match Redactor::new(detectors, None) {
            Ok(r) => r,
            // The built-in literals are constants; `default_profile_builds` proves this.
            Err(e) => panic!("{e}"),
        }
    }

    /// The detectors' names, in order: what `[REDACTED:name]` and the counts use.
    pub fn detector_names(&self) -> impl Iterator<Item = &str> {
        self.detectors.iter().map(|d| d.name.as_str())
    }

    /// Redacts one line (without its newline) into `out`, updating `state` and `counts`.
    pub(crate) fn redact_line(
        &self,
        line: &[u8],
        state: &mut LineState,
        counts: &mut Counts,
        out: &mut Vec<u8>,
    ) -> LineOutcome {
        let mut pos = 0;
        if state.in_private_key {
            match PEM_END.find(line) {
                None => return LineOutcome::Removed,
                Some(m) => {
                    state.in_private_key = false;
                    pos = m.end();
                    if line[pos..].iter().all(u8::is_ascii_whitespace) {
                        return LineOutcome::Removed;
                    }
                }
            }
        }
        if pos == 0 {
            // The common case, a line outside a private-key block: its masks are computed
            // once, and without five dashes in a row it cannot start a block.
            state
                .masks
                .compute_classes(line, self.prefilter.reads_tilde());
            if !(self.private_keys && state.masks.has_five_dashes()) {
                self.redact_masked(line, state, counts, out);
                return LineOutcome::Written;
            }
        }
        loop {
            let begin = if self.private_keys && PEM_BEGIN_LITERAL.find(&line[pos..]).is_some() {
                PEM_BEGIN.find_at(line, pos)
            } else {
                None
            };
            let Some(b) = begin else {
                self.redact_segment(&line[pos..], state, counts, out);
                return LineOutcome::Written;
            };
            self.redact_segment(&line[pos..b.start()], state, counts, out);
            out.extend_from_slice(b"[REDACTED:private_key]");
            counts.add(Builtin::PrivateKey.name());
            let after = b.end();
            let rest = &line[after..];
            if let Some(e) = PEM_END.find_at(line, after) {
                pos = e.end();
                continue;
            }
            if rest.starts_with(b"\\n") || rest.starts_with(b"\\r\\n") {
                // A key escaped inside a JSON string on this one line, its END cut off: the
                // block ends with the string (the next unescaped quote) or the line.
                pos = closing_quote(line, after).unwrap_or(line.len());
                continue;
            }
            // The block goes on in the next lines, up to an END line or the end of input.
            state.in_private_key = true;
            return LineOutcome::Written;
        }
    }

    /// Runs the detectors over one segment (a line, or the part of one outside a private-key
    /// block) and writes it with its findings replaced.
    fn redact_segment(
        &self,
        seg: &[u8],
        state: &mut LineState,
        counts: &mut Counts,
        out: &mut Vec<u8>,
    ) {
        if seg.is_empty() {
            return;
        }
        state
            .masks
            .compute_classes(seg, self.prefilter.reads_tilde());
        self.redact_masked(seg, state, counts, out);
    }

    /// [`Redactor::redact_segment`] with the segment's masks already in `state.masks`.
    fn redact_masked(
        &self,
        seg: &[u8],
        state: &mut LineState,
        counts: &mut Counts,
        out: &mut Vec<u8>,
    ) {
        let candidates = self.prefilter.candidates(seg, &state.masks);
        state.findings.clear();
        // The order findings are collected in does not matter: they are sorted below, and
        // at equal spans the detector listed first wins by its index.
        for &(i, scan) in &self.scanners {
            state.spans.clear();
            scan(seg, &state.masks, &mut state.spans);
            state
                .findings
                .extend(state.spans.iter().map(|(s, e)| (*s, *e, i)));
        }
        // The scanners' bits are always candidates (`Prefilter::always_runs`): they ran above.
        let mut bits = candidates & !self.scanned_bits;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for &i in &self.by_bit[b] {
                self.run_detector(i, seg, state);
            }
        }
        for &i in &self.unconditional {
            self.run_detector(i, seg, state);
        }
        if !self.national.is_empty() {
            let digits = state.masks.count(|m| m.digit, 0, seg.len());
            self.national
                .find(seg, &state.masks, digits, &mut state.findings);
        }
        if state.findings.is_empty() {
            out.extend_from_slice(seg);
            return;
        }
        // Earliest first; at equal starts the longest, then the detector listed first.
        state
            .findings
            .sort_unstable_by_key(|(s, e, d)| (*s, std::cmp::Reverse(*e), *d));
        let mut cursor = 0;
        let mut current: Option<(usize, usize, usize)> = None;
        for &(s, e, d) in &state.findings {
            match current {
                // Overlapping findings are merged: the union is replaced, nothing of either shows.
                Some((cs, ce, cd)) if s < ce => current = Some((cs, ce.max(e), cd)),
                Some(done) => {
                    cursor = self.replace(seg, cursor, done, counts, out);
                    current = Some((s, e, d));
                }
                None => current = Some((s, e, d)),
            }
        }
        if let Some(done) = current {
            cursor = self.replace(seg, cursor, done, counts, out);
        }
        out.extend_from_slice(&seg[cursor..]);
    }

    fn run_detector(&self, i: usize, seg: &[u8], state: &mut LineState) {
        state.spans.clear();
        self.detectors[i].find(seg, &state.masks, &self.userinfo_rows, &mut state.spans);
        state
            .findings
            .extend(state.spans.iter().map(|(s, e)| (*s, *e, i)));
    }

    fn replace(
        &self,
        seg: &[u8],
        cursor: usize,
        (s, e, d): (usize, usize, usize),
        counts: &mut Counts,
        out: &mut Vec<u8>,
    ) -> usize {
        out.extend_from_slice(&seg[cursor..s]);
        let det = &self.detectors[d];
        let value = &seg[s..e];
        // A national id is hashed canonical (no separators, upper case): one pseudonym for
        // every written form of it.
        let national = matches!(det.kind, Kind::Builtin(b) if b.as_national().is_some());
        if national && det.mode == Mode::Hash {
            let canonical = national::canonical(value);
            writing::write_replacement(out, &det.name, det.mode, &canonical, self.key.as_deref());
        } else {
            writing::write_replacement(out, &det.name, det.mode, value, self.key.as_deref());
        }
        counts.add(&det.name);
        e
    }
}

/// The first `"` at or after `from` not escaped by a backslash.
fn closing_quote(line: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Removes the tail of a cut line that may be the head of a value cut in half: the last token
/// (after the last delimiter), then any trailing digits, spaces and dashes (a card's groups).
fn trim_cut_tail(bytes: &[u8]) -> &[u8] {
    let delimiter = |b: &u8| {
        b.is_ascii_whitespace()
            || matches!(
                b,
                b',' | b';'
                    | b'"'
                    | b'\''
                    | b'&'
                    | b'<'
                    | b'>'
                    | b'('
                    | b')'
                    | b'['
                    | b']'
                    | b'{'
                    | b'}'
                    | b'|'
            )
    };
    let mut end = bytes.iter().rposition(delimiter).map_or(0, |i| i + 1);
    while end > 0 && matches!(bytes[end - 1], b'0'..=b'9' | b' ' | b'-') {
        end -= 1;
    }
    &bytes[..end]
}

/// Lines in, redacted lines out: `reading` then `Redactor::redact_line`, for one stream; the
/// crate's entry point (the fail-closed withholding and the trimming of cut lines live here).
/// `redactor = None` is the `raw` profile (lines pass unchanged; cut lines are not trimmed).
pub struct Pipeline {
    lines: LineSplitter,
    /// Splits input given to [`Pipeline::prime`], cut at the same `max_line` as `lines`.
    priming: LineSplitter,
    redactor: Option<(Arc<Redactor>, LineState)>,
    counts: Counts,
}

impl Pipeline {
    /// One stream's pipeline; `redactor = None` serves lines unchanged (`raw`). Lines longer
    /// than `max_line` bytes are cut there, the rest up to the newline dropped.
    pub fn new(redactor: Option<Arc<Redactor>>, max_line: usize) -> Pipeline {
        Pipeline {
            lines: LineSplitter::new(max_line),
            priming: LineSplitter::new(max_line),
            redactor: redactor.map(|r| (r, LineState::default())),
            counts: Counts::default(),
        }
    }

    /// Feeds the next bytes of the input; appends to `out` every finished output line that
    /// `keep` accepts (`keep` sees the redacted line, without its newline).
    pub fn push(&mut self, data: &[u8], keep: &mut dyn FnMut(&[u8]) -> bool, out: &mut Vec<u8>) {
        let Pipeline {
            lines,
            redactor,
            counts,
            ..
        } = self;
        lines.push(data, |line| handle_line(line, redactor, counts, keep, out));
    }

    /// End of input: the last line, if it had no newline, is handled (and written without one).
    pub fn finish(&mut self, keep: &mut dyn FnMut(&[u8]) -> bool, out: &mut Vec<u8>) {
        let Pipeline {
            lines,
            redactor,
            counts,
            ..
        } = self;
        lines.finish(|line| handle_line(line, redactor, counts, keep, out));
    }

    /// The input was truncated under us: the carried head of a line whose end was never seen is
    /// dropped, not served (its last bytes could be half a secret no detector recognises).
    pub fn abandon_partial_line(&mut self) {
        self.lines.reset();
    }

    /// The input was truncated and is read again from its start: forget the partial line and
    /// any open private-key block (counts are kept).
    pub fn reset(&mut self) {
        self.lines.reset();
        if let Some((_, state)) = &mut self.redactor {
            state.in_private_key = false;
        }
    }

    /// Whether this pipeline removes private-key blocks (so a `tail` start must be primed).
    pub fn removes_private_keys(&self) -> bool {
        self.redactor.as_ref().is_some_and(|(r, _)| r.private_keys)
    }

    /// Runs `data` (input that precedes where serving starts, from a line start) through the
    /// redactor for its private-key state only: a `tail` that starts inside a private-key block
    /// must not serve the block's body. Nothing is written or counted. `data` may be cut
    /// anywhere: an unfinished last line is carried to the next call (see [`Pipeline::prime_end`]).
    ///
    /// Lines are cut exactly as [`Pipeline::push`] cuts what it serves (at `max_line`, the rest
    /// dropped, the cut line trimmed), so a marker that serving would never see (past
    /// `max_line`) never changes the state here either. Only a line holding a `BEGIN`/`END`
    /// marker can change the state (outside a block a line needs a `BEGIN` to enter one; inside,
    /// an `END` to leave), so only those lines reach the redactor, in order: the cost of priming
    /// is a substring search, not the detectors. Returns how many lines reached the redactor.
    pub fn prime(&mut self, data: &[u8]) -> usize {
        let Pipeline {
            priming, redactor, ..
        } = self;
        let Some((r, state)) = redactor else {
            return 0;
        };
        let mut primed = 0;
        let mut follow = |line: Line<'_>| {
            if prime_line(r, state, line) {
                primed += 1;
            }
        };
        priming.push(data, &mut follow);
        primed
    }

    /// Ends input given to [`Pipeline::prime`]: a carried unfinished last line is primed as the
    /// last line of the input. Returns how many lines reached the redactor (0 or 1).
    pub fn prime_end(&mut self) -> usize {
        let Pipeline {
            priming, redactor, ..
        } = self;
        let Some((r, state)) = redactor else {
            priming.reset();
            return 0;
        };
        let mut primed = 0;
        priming.finish(|line| {
            if prime_line(r, state, line) {
                primed += 1;
            }
        });
        primed
    }

    /// What redaction did so far (cut lines are counted with every profile, `raw` too).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The whole of an input given as `chunks`, every line kept: the output and the counts.
    /// What the tests and the fuzz target compare across chunk cuts.
    pub fn redact_chunks(
        redactor: &Arc<Redactor>,
        chunks: &[&[u8]],
        max_line: usize,
    ) -> (Vec<u8>, Counts) {
        let mut p = Pipeline::new(Some(redactor.clone()), max_line);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut |_| true, &mut out);
        }
        p.finish(&mut |_| true, &mut out);
        (out, p.counts)
    }
}

/// The bytes of `line` that [`handle_line`] hands the redactor: a cut line loses its last,
/// possibly halved, token.
fn served_bytes<'a>(line: &Line<'a>) -> &'a [u8] {
    if line.cut {
        trim_cut_tail(line.bytes)
    } else {
        line.bytes
    }
}

/// Runs one primed line through the redactor if it holds a private-key marker as served; true
/// when it did.
fn prime_line(r: &Redactor, state: &mut LineState, line: Line<'_>) -> bool {
    if !r.private_keys {
        return false;
    }
    let bytes = served_bytes(&line);
    if FIVE_DASHES.find(bytes).is_none() || !PEM_MARKER.is_match(bytes) {
        return false;
    }
    let mut sink = Vec::new();
    let mut counts = Counts::default();
    // A detector that panics withholds the line when serving; priming only needs the state.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.redact_line(bytes, state, &mut counts, &mut sink)
    }));
    true
}

/// Writes one line's output (redacted, or the withheld marker) at the end of `out`, then takes
/// it back if `keep` refuses it: each line is written once, in place.
fn handle_line(
    line: Line<'_>,
    redactor: &mut Option<(Arc<Redactor>, LineState)>,
    counts: &mut Counts,
    keep: &mut dyn FnMut(&[u8]) -> bool,
    out: &mut Vec<u8>,
) {
    if line.cut {
        counts.lines_cut += 1;
    }
    let start = out.len();
    match redactor {
        None => out.extend_from_slice(line.bytes),
        Some((r, state)) => {
            let bytes = served_bytes(&line);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                r.redact_line(bytes, state, counts, out)
            }));
            match result {
                Ok(LineOutcome::Written) => {}
                Ok(LineOutcome::Removed) => {
                    out.truncate(start);
                    return;
                }
                Err(_) => {
                    // Whatever was written for this line may be half-redacted: discard it.
                    out.truncate(start);
                    out.extend_from_slice(WITHHELD_MARKER);
                    counts.lines_withheld += 1;
                    tracing::error!("a redaction detector failed; the line was withheld");
                }
            }
        }
    }
    if keep(&out[start..]) {
        if line.terminated {
            out.push(b'\n');
        }
    } else {
        out.truncate(start);
    }
}

#[cfg(test)]
mod tests;
