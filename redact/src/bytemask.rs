//! Byte classes as bit masks, 64 bytes at a time, computed once per line segment in one pass,
//! together with the segment's ASCII-lowercased copy: the prefilter's literal search and shape
//! tests and the hand-written scanners of the digit-shaped detectors (card, IBAN, IPv4) jump
//! from candidate to candidate with these instead of testing every byte. Bit `i` of a mask is
//! byte `64·k + i` of block `k`.
//!
//! On x86-64 the pass uses AVX2 when the CPU has it (detected at run time) and SSE2 (part of
//! the architecture's baseline) otherwise; elsewhere it goes byte by byte. All three give the
//! same masks and the same lowercased copy (`every_isa_gives_the_scalar_result`), and the
//! engine's output does not depend on which one ran (`tests`).
//!
//! The crate's only `unsafe`: unaligned SIMD loads and stores within 64-byte arrays, and calls
//! of `#[target_feature]` functions after the CPU was checked. Each has its `SAFETY:` line.

#![allow(unsafe_code)]

/// The classes of one 64-byte block (the last block of a segment is shorter; its missing bytes
/// are in no class).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    /// `0`–`9`.
    pub digit: u64,
    /// `A`–`Z`.
    pub upper: u64,
    /// A space or a dash: what may separate the groups of a card number.
    pub sep: u64,
    /// `-`.
    pub dash: u64,
    /// `@`.
    pub at: u64,
    /// `:`.
    pub colon: u64,
    /// `.`.
    pub dot: u64,
    /// A word byte `[A-Za-z0-9_]`: where a word starts (`\b`), the token families' prefixes
    /// are looked up (`super::prefilter`).
    pub word: u64,
    /// `~`: where the prefixes that hold one (Microsoft Entra's `8Q~`) are compared; a line
    /// without one (nearly every line) skips them without a search of its own. Computed only
    /// when asked ([`SegmentMasks::compute_classes`]): 0 in every block otherwise.
    pub tilde: u64,
}

/// The instructions that compute the masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 32 bytes at a time; only when the CPU reports AVX2.
    Avx2,
    /// 16 bytes at a time; every x86-64 CPU.
    Sse2,
    /// Byte by byte; every target (the reference the others are tested against).
    #[cfg_attr(
        all(target_arch = "x86_64", not(test)),
        allow(dead_code, reason = "chosen on other targets and by the tests")
    )]
    Scalar,
}

impl Isa {
    /// The fastest this CPU runs.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                Isa::Avx2
            } else {
                Isa::Sse2
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The masks of every 64-byte block of a segment, and one empty block past the end so that a
/// block's successor always exists; the segment lowercased.
#[derive(Debug)]
pub struct SegmentMasks {
    blocks: Vec<Masks>,
    /// The segment lowercased in its first `lower_len` bytes; the rest is scratch.
    lower: Vec<u8>,
    lower_len: usize,
    isa: Isa,
}

impl Default for SegmentMasks {
    fn default() -> Self {
        SegmentMasks::with_isa(Isa::best())
    }
}

impl SegmentMasks {
    /// Masks computed with `isa`; [`Isa::best`] instead if this CPU cannot run it.
    pub fn with_isa(isa: Isa) -> SegmentMasks {
        SegmentMasks {
            blocks: Vec::new(),
            lower: Vec::new(),
            lower_len: 0,
            isa: if isa.available() { isa } else { Isa::best() },
        }
    }

    /// Computes the masks (every class) and the lowercased copy of `seg`, reusing this
    /// value's memory (the tests' entry; the engine asks for the classes its profile reads).
    #[cfg(test)]
    pub fn compute(&mut self, seg: &[u8]) {
        self.compute_classes(seg, true);
    }

    /// [`SegmentMasks::compute`], with the `tilde` class only if `tilde` (else 0 in every
    /// block): a profile without a prefix that holds a `~` does not pay for the class (two
    /// compares and two mask moves per block).
    pub fn compute_classes(&mut self, seg: &[u8], tilde: bool) {
        self.blocks.clear();
        let n = seg.len().div_ceil(64);
        // Whole blocks, written in place; only grown, never cleared (no fill per segment).
        if self.lower.len() < n * 64 {
            self.lower.resize(n * 64, 0);
        }
        self.lower_len = seg.len();
        let (whole, rest) = seg.as_chunks::<64>();
        let (lower_blocks, _) = self.lower[..n * 64].as_chunks_mut::<64>();
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only chosen when the CPU reports AVX2 (`Isa::available`).
            Isa::Avx2 if tilde => unsafe {
                avx2::blocks::<true>(whole, lower_blocks, &mut self.blocks)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::blocks::<false>(whole, lower_blocks, &mut self.blocks) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this target runs on has it.
            Isa::Sse2 if tilde => unsafe {
                sse2::blocks::<true>(whole, lower_blocks, &mut self.blocks)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Sse2 => unsafe { sse2::blocks::<false>(whole, lower_blocks, &mut self.blocks) },
            _ => {
                for (b, l) in whole.iter().zip(lower_blocks.iter_mut()) {
                    self.blocks.push(scalar(b, l, tilde));
                }
            }
        }
        if !rest.is_empty() {
            let len = seg.len();
            let tail = match (
                seg.last_chunk::<64>(),
                self.lower[..len].last_chunk_mut::<64>(),
            ) {
                // The last, shorter block of a longer segment: the 64 bytes that end the
                // segment, their masks shifted down so that bit 0 is the block's first byte
                // (the bits shifted in are zeros: past the end, in no class). Their lowercase
                // overwrites the previous block's with the same bytes.
                (Some(window), Some(lower)) => {
                    let m = one_block(self.isa, window, lower, tilde);
                    let shift = 64 - rest.len() as u32;
                    Masks {
                        digit: m.digit >> shift,
                        upper: m.upper >> shift,
                        sep: m.sep >> shift,
                        dash: m.dash >> shift,
                        at: m.at >> shift,
                        colon: m.colon >> shift,
                        dot: m.dot >> shift,
                        word: m.word >> shift,
                        tilde: m.tilde >> shift,
                    }
                }
                // A segment shorter than a block: padded with NUL, which is in no class.
                _ => {
                    let mut padded = [0u8; 64];
                    padded[..len].copy_from_slice(seg);
                    let mut lower = [0u8; 64];
                    let m = one_block(self.isa, &padded, &mut lower, tilde);
                    self.lower[..len].copy_from_slice(&lower[..len]);
                    m
                }
            };
            self.blocks.push(tail);
        }
        self.blocks.push(Masks::default());
    }

    /// Blocks of the segment (without the empty one past the end).
    pub fn len(&self) -> usize {
        self.blocks.len().saturating_sub(1)
    }

    /// Block `k`; the empty block for `k` past the end.
    #[inline]
    pub fn get(&self, k: usize) -> Masks {
        self.blocks.get(k).copied().unwrap_or_default()
    }

    /// Each block of the segment with its successor (the empty block after the last one), in
    /// order: what a test across a block's end reads, without a bounds check per block.
    #[inline]
    pub fn pairs(&self) -> impl Iterator<Item = (&Masks, &Masks)> {
        self.blocks.windows(2).filter_map(|w| match w {
            [cur, next] => Some((cur, next)),
            _ => None,
        })
    }

    /// Whether any block has a bit of `class` set.
    pub fn any(&self, class: impl Fn(&Masks) -> u64) -> bool {
        self.blocks.iter().any(|m| class(m) != 0)
    }

    /// The segment, ASCII-lowercased.
    pub fn lower(&self) -> &[u8] {
        &self.lower[..self.lower_len]
    }

    /// Whether five dashes follow each other somewhere (what `-----BEGIN` starts with).
    pub fn has_five_dashes(&self) -> bool {
        self.pairs().any(|(cur, next)| {
            let (cur, next) = (cur.dash, next.dash);
            // A run starting in this block starts with two dashes in a row: most blocks
            // (a date's single dashes, none at all) end here.
            if cur & ((cur >> 1) | (next << 63)) == 0 {
                return false;
            }
            let d = u128::from(cur) | (u128::from(next) << 64);
            (d & (d >> 1) & (d >> 2) & (d >> 3) & (d >> 4)) as u64 != 0
        })
    }

    /// The end of the run of `class` bytes that holds byte `at` (`at` itself if it is not in
    /// the class): the first byte at or after `at` not in the class, or the segment's end.
    pub fn run_end(&self, class: impl Fn(&Masks) -> u64, at: usize) -> usize {
        let mut k = at / 64;
        // Bits below `at` count as outside, then are skipped by the shift.
        let mut outside = !class(&self.get(k)) >> (at % 64);
        let mut base = at;
        loop {
            if outside != 0 {
                return base + outside.trailing_zeros() as usize;
            }
            k += 1;
            base = k * 64;
            // The empty block past the end stops every run.
            outside = !class(&self.get(k));
        }
    }

    /// The start of the run of `class` bytes that ends just before byte `at`: the byte after
    /// the last byte before `at` not in the class, or 0.
    pub fn run_start(&self, class: impl Fn(&Masks) -> u64, at: usize) -> usize {
        let mut k = at / 64;
        let below = (1u64 << (at % 64)) - 1;
        let mut outside = !class(&self.get(k)) & below;
        loop {
            if outside != 0 {
                return k * 64 + 63 - outside.leading_zeros() as usize + 1;
            }
            if k == 0 {
                return 0;
            }
            k -= 1;
            outside = !class(&self.get(k));
        }
    }

    /// How many bytes of `from..to` are in `class`.
    pub fn count(&self, class: impl Fn(&Masks) -> u64, from: usize, to: usize) -> usize {
        if from >= to {
            return 0;
        }
        let (first, last) = (from / 64, (to - 1) / 64);
        let mut n = 0;
        for k in first..=last {
            let mut bits = class(&self.get(k));
            if k == first {
                bits &= u64::MAX << (from % 64);
            }
            if k == last {
                bits &= u64::MAX >> (63 - (to - 1) % 64);
            }
            n += bits.count_ones() as usize;
        }
        n
    }
}

/// One block with `isa` (the last, padded block of a segment), the `tilde` class if `tilde`.
fn one_block(isa: Isa, bytes: &[u8; 64], lower: &mut [u8; 64], tilde: bool) -> Masks {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only chosen when the CPU reports AVX2 (`Isa::available`).
        Isa::Avx2 if tilde => unsafe { avx2::block::<true>(bytes, lower) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::block::<false>(bytes, lower) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of the x86-64 baseline.
        Isa::Sse2 if tilde => unsafe { sse2::block::<true>(bytes, lower) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of the x86-64 baseline.
        Isa::Sse2 => unsafe { sse2::block::<false>(bytes, lower) },
        _ => scalar(bytes, lower, tilde),
    }
}

/// The reference: one block byte by byte.
fn scalar(bytes: &[u8; 64], lower: &mut [u8; 64], tilde: bool) -> Masks {
    let mut m = Masks::default();
    for (i, b) in bytes.iter().enumerate() {
        let bit = 1u64 << i;
        let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
        set(&mut m.digit, b.is_ascii_digit());
        set(&mut m.upper, b.is_ascii_uppercase());
        set(&mut m.sep, matches!(b, b' ' | b'-'));
        set(&mut m.dash, *b == b'-');
        set(&mut m.at, *b == b'@');
        set(&mut m.colon, *b == b':');
        set(&mut m.dot, *b == b'.');
        set(&mut m.word, b.is_ascii_alphanumeric() || *b == b'_');
        set(&mut m.tilde, tilde && *b == b'~');
        lower[i] = b.to_ascii_lowercase();
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::Masks;
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_storeu_si128,
    };

    /// Bytes in `lo..=hi` (both below 0x80). Signed compares: bytes ≥ 0x80 are negative and so
    /// below every bound.
    #[target_feature(enable = "sse2")]
    fn in_range(v: __m128i, lo: u8, hi: u8) -> __m128i {
        _mm_and_si128(
            _mm_cmpgt_epi8(v, _mm_set1_epi8((lo - 1) as i8)),
            _mm_cmplt_epi8(v, _mm_set1_epi8((hi + 1) as i8)),
        )
    }

    /// The bits of four 16-byte compare results, in byte order.
    #[target_feature(enable = "sse2")]
    fn join(x: [__m128i; 4]) -> u64 {
        let m = |i: usize| u64::from(_mm_movemask_epi8(x[i]) as u16);
        m(0) | (m(1) << 16) | (m(2) << 32) | (m(3) << 48)
    }

    #[target_feature(enable = "sse2")]
    pub fn blocks<const TILDE: bool>(
        whole: &[[u8; 64]],
        lower: &mut [[u8; 64]],
        out: &mut Vec<super::Masks>,
    ) {
        for (b, l) in whole.iter().zip(lower.iter_mut()) {
            out.push(block::<TILDE>(b, l));
        }
    }

    // Not inlined, as `avx2::block`.
    #[target_feature(enable = "sse2")]
    #[inline(never)]
    pub fn block<const TILDE: bool>(bytes: &[u8; 64], lower: &mut [u8; 64]) -> Masks {
        // SAFETY: bytes `16j .. 16j+16` of a 64-byte array are in bounds for j < 4, and
        // `_mm_loadu_si128` has no alignment requirement.
        let v: [__m128i; 4] =
            std::array::from_fn(|j| unsafe { _mm_loadu_si128(bytes.as_ptr().add(16 * j).cast()) });
        let each = |f: &dyn Fn(__m128i) -> __m128i| join([f(v[0]), f(v[1]), f(v[2]), f(v[3])]);
        let eq = |c: u8| move |x: __m128i| _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8));
        let upper = |x: __m128i| in_range(x, b'A', b'Z');
        for (j, x) in v.iter().enumerate() {
            let low = _mm_or_si128(*x, _mm_and_si128(upper(*x), _mm_set1_epi8(0x20)));
            // SAFETY: as above, for `lower`; `_mm_storeu_si128` has no alignment requirement.
            unsafe { _mm_storeu_si128(lower.as_mut_ptr().add(16 * j).cast(), low) };
        }
        Masks {
            digit: each(&|x| in_range(x, b'0', b'9')),
            upper: each(&upper),
            sep: each(&|x| _mm_or_si128(eq(b' ')(x), eq(b'-')(x))),
            dash: each(&eq(b'-')),
            at: each(&eq(b'@')),
            colon: each(&eq(b':')),
            dot: each(&eq(b'.')),
            tilde: if TILDE { each(&eq(b'~')) } else { 0 },
            word: each(&|x| {
                let letter = _mm_or_si128(upper(x), in_range(x, b'a', b'z'));
                _mm_or_si128(_mm_or_si128(letter, in_range(x, b'0', b'9')), eq(b'_')(x))
            }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Masks;
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8, _mm256_loadu_si256,
        _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8, _mm256_storeu_si256,
    };

    /// Bytes in `lo..=hi` (both below 0x80); signed compares, as in `sse2::in_range`.
    #[target_feature(enable = "avx2")]
    fn in_range(v: __m256i, lo: u8, hi: u8) -> __m256i {
        _mm256_and_si256(
            _mm256_cmpgt_epi8(v, _mm256_set1_epi8((lo - 1) as i8)),
            _mm256_cmpgt_epi8(_mm256_set1_epi8((hi + 1) as i8), v),
        )
    }

    /// The bits of two 32-byte compare results, in byte order.
    #[target_feature(enable = "avx2")]
    fn join(lo: __m256i, hi: __m256i) -> u64 {
        u64::from(_mm256_movemask_epi8(lo) as u32)
            | (u64::from(_mm256_movemask_epi8(hi) as u32) << 32)
    }

    #[target_feature(enable = "avx2")]
    pub fn blocks<const TILDE: bool>(
        whole: &[[u8; 64]],
        lower: &mut [[u8; 64]],
        out: &mut Vec<super::Masks>,
    ) {
        for (b, l) in whole.iter().zip(lower.iter_mut()) {
            out.push(block::<TILDE>(b, l));
        }
    }

    // Not inlined: inlined into the loop of `blocks`, LLVM vectorizes across blocks and
    // shuffles the compare results byte by byte (three times the instructions, measured).
    #[target_feature(enable = "avx2")]
    #[inline(never)]
    pub fn block<const TILDE: bool>(bytes: &[u8; 64], lower: &mut [u8; 64]) -> Masks {
        // SAFETY: bytes `0..32` and `32..64` of a 64-byte array are in bounds, and
        // `_mm256_loadu_si256` has no alignment requirement.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(bytes.as_ptr().cast()),
                _mm256_loadu_si256(bytes.as_ptr().add(32).cast()),
            )
        };
        let eq = |x: __m256i, c: u8| _mm256_cmpeq_epi8(x, _mm256_set1_epi8(c as i8));
        let (upper_a, upper_b) = (in_range(a, b'A', b'Z'), in_range(b, b'A', b'Z'));
        let case = _mm256_set1_epi8(0x20);
        let (dash_a, dash_b) = (eq(a, b'-'), eq(b, b'-'));
        let (digit_a, digit_b) = (in_range(a, b'0', b'9'), in_range(b, b'0', b'9'));
        let word = |x: __m256i, upper: __m256i, digit: __m256i| {
            let letter = _mm256_or_si256(upper, in_range(x, b'a', b'z'));
            _mm256_or_si256(_mm256_or_si256(letter, digit), eq(x, b'_'))
        };
        // SAFETY: as above, for `lower`; `_mm256_storeu_si256` has no alignment requirement.
        unsafe {
            let out = lower.as_mut_ptr();
            _mm256_storeu_si256(
                out.cast(),
                _mm256_or_si256(a, _mm256_and_si256(upper_a, case)),
            );
            _mm256_storeu_si256(
                out.add(32).cast(),
                _mm256_or_si256(b, _mm256_and_si256(upper_b, case)),
            );
        }
        Masks {
            digit: join(digit_a, digit_b),
            upper: join(upper_a, upper_b),
            sep: join(
                _mm256_or_si256(eq(a, b' '), dash_a),
                _mm256_or_si256(eq(b, b' '), dash_b),
            ),
            dash: join(dash_a, dash_b),
            at: join(eq(a, b'@'), eq(b, b'@')),
            colon: join(eq(a, b':'), eq(b, b':')),
            dot: join(eq(a, b'.'), eq(b, b'.')),
            word: join(word(a, upper_a, digit_a), word(b, upper_b, digit_b)),
            tilde: if TILDE {
                join(eq(a, b'~'), eq(b, b'~'))
            } else {
                0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISAS: [Isa; 3] = [Isa::Avx2, Isa::Sse2, Isa::Scalar];

    /// Every byte value, at every offset of a block, in segments of every length around the
    /// block size: masks and lowercased copy equal the byte-by-byte reference.
    #[test]
    fn every_isa_gives_the_scalar_result() {
        let text: Vec<u8> = (0..=255u8)
            .chain(b"4111 1111-AB12 z9.x@y:Z".iter().copied())
            .chain((0..=255u8).rev())
            .collect();
        for isa in ISAS.into_iter().filter(|i| i.available()) {
            let mut got = SegmentMasks::with_isa(isa);
            let mut want = SegmentMasks::with_isa(Isa::Scalar);
            let mut without = SegmentMasks::with_isa(isa);
            for start in 0..64 {
                for len in (0..=200).filter(|l| start + l <= text.len()) {
                    let seg = &text[start..start + len];
                    got.compute(seg);
                    want.compute(seg);
                    assert_eq!(got.blocks, want.blocks, "{isa:?} at {start}+{len}");
                    assert_eq!(got.lower(), want.lower(), "{isa:?} at {start}+{len}");
                    assert_eq!(got.lower(), seg.to_ascii_lowercase());
                    // Without the `tilde` class: the same but for `tilde`, 0 everywhere.
                    without.compute_classes(seg, false);
                    let no_tilde = |m: &Masks| Masks { tilde: 0, ..*m };
                    let want: Vec<Masks> = want.blocks.iter().map(no_tilde).collect();
                    assert_eq!(without.blocks, want, "{isa:?} at {start}+{len}");
                    assert_eq!(without.lower(), seg.to_ascii_lowercase());
                }
            }
        }
    }

    /// The `tilde` class is computed when asked, and only then, on every path (whole blocks,
    /// the shifted last block, a short segment).
    #[test]
    fn tilde_class_only_when_asked() {
        for isa in ISAS.into_iter().filter(|i| i.available()) {
            let mut m = SegmentMasks::with_isa(isa);
            for len in [3, 64, 100, 128] {
                let seg = vec![b'~'; len];
                m.compute_classes(&seg, true);
                assert_eq!(m.count(|m| m.tilde, 0, len), len, "{isa:?} {len}");
                m.compute_classes(&seg, false);
                assert!(!m.any(|m| m.tilde), "{isa:?} {len}");
            }
        }
    }

    #[test]
    fn blocks_cover_a_segment_and_the_last_is_partial() {
        let mut m = SegmentMasks::default();
        m.compute(&[b'7'; 70]);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(0).digit, u64::MAX);
        assert_eq!(m.get(1).digit, 0b11_1111);
        assert_eq!(m.get(2), Masks::default());
        assert_eq!(m.get(9), Masks::default());
    }

    /// `pairs` gives each block of the segment with its successor (the empty block after the
    /// last), as `get(k)` and `get(k + 1)` do, for segments of every length around the block
    /// size (none for an empty segment).
    #[test]
    fn pairs_are_each_block_and_the_next() {
        let mut m = SegmentMasks::default();
        for len in 0..=200 {
            let seg: Vec<u8> = (0..len).map(|i| b"a1-:. @~Z"[i % 9]).collect();
            m.compute(&seg);
            let pairs: Vec<(Masks, Masks)> = m.pairs().map(|(a, b)| (*a, *b)).collect();
            let want: Vec<(Masks, Masks)> =
                (0..m.len()).map(|k| (m.get(k), m.get(k + 1))).collect();
            assert_eq!(pairs, want, "{len}");
            assert_eq!(pairs.len(), len.div_ceil(64), "{len}");
        }
    }

    #[test]
    fn five_dashes_are_found_across_blocks_and_four_are_not() {
        let mut m = SegmentMasks::default();
        for at in 0..130 {
            let mut seg = vec![b'x'; 140];
            seg[at..at + 5].copy_from_slice(b"-----");
            m.compute(&seg);
            assert!(m.has_five_dashes(), "at {at}");
            seg[at + 2] = b' ';
            m.compute(&seg);
            assert!(!m.has_five_dashes(), "at {at}");
        }
    }

    /// Run boundaries and counts from the masks equal a byte-by-byte walk, across blocks.
    #[test]
    fn runs_and_counts_match_a_byte_walk() {
        let seg: Vec<u8> = (0..300)
            .map(|i: usize| {
                if (i * 7 + i / 13).is_multiple_of(5) {
                    b'x'
                } else {
                    b'4'
                }
            })
            .chain(std::iter::repeat_n(b'9', 140))
            .collect();
        let mut m = SegmentMasks::default();
        m.compute(&seg);
        let digit = |m: &Masks| m.digit;
        for at in 0..=seg.len() {
            let end = seg[at..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(seg.len(), |i| at + i);
            let start = seg[..at]
                .iter()
                .rposition(|b| !b.is_ascii_digit())
                .map_or(0, |i| i + 1);
            assert_eq!(m.run_end(digit, at), end, "end from {at}");
            assert_eq!(m.run_start(digit, at), start, "start before {at}");
            for to in (at..=seg.len()).step_by(17) {
                let n = seg[at..to].iter().filter(|b| b.is_ascii_digit()).count();
                assert_eq!(m.count(digit, at, to), n, "{at}..{to}");
            }
        }
    }
}
