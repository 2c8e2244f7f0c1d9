//! Byte classes as bit masks, 64 bytes at a time, computed once per line segment: the prefilter's
//! shape tests and the hand-written scanners of the digit-shaped detectors (card, IBAN) jump from
//! candidate to candidate with these instead of testing every byte. Bit `i` of a mask is byte
//! `64·k + i` of block `k`. On x86-64 the classes are computed
//! with SSE2 (part of the architecture's baseline), elsewhere byte by byte; both give the same
//! masks (`simd_and_scalar_masks_agree`).

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
}

/// The masks of every 64-byte block of a segment, and one empty block past the end so that a
/// block's successor always exists.
#[derive(Debug, Default)]
pub struct SegmentMasks {
    blocks: Vec<Masks>,
}

impl SegmentMasks {
    /// Computes the masks of `seg`, reusing this value's memory.
    pub fn compute(&mut self, seg: &[u8]) {
        self.blocks.clear();
        let n = seg.len().div_ceil(64);
        self.blocks.extend((0..n).map(|k| block(seg, k)));
        self.blocks.push(Masks::default());
    }

    /// Blocks of the segment (without the empty one past the end).
    pub fn len(&self) -> usize {
        self.blocks.len().saturating_sub(1)
    }

    /// Block `k`; the empty block for `k` past the end.
    pub fn get(&self, k: usize) -> Masks {
        self.blocks.get(k).copied().unwrap_or_default()
    }

    /// Whether any block has a bit of `class` set.
    pub fn any(&self, class: impl Fn(&Masks) -> u64) -> bool {
        self.blocks.iter().any(|m| class(m) != 0)
    }
}

/// The masks of block `k` of `seg` (bytes `64k .. 64k+64`).
#[inline]
fn block(seg: &[u8], k: usize) -> Masks {
    let start = k * 64;
    let bytes = seg.get(start..).unwrap_or_default();
    match bytes.get(..64) {
        Some(full) => full_block(full),
        None => {
            // The last, shorter block: padded with NUL, which is in no class.
            let mut padded = [0u8; 64];
            padded[..bytes.len()].copy_from_slice(bytes);
            full_block(&padded)
        }
    }
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn scalar(bytes: &[u8]) -> Masks {
    let mut m = Masks::default();
    for (i, b) in bytes.iter().take(64).enumerate() {
        let bit = 1u64 << i;
        let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
        set(&mut m.digit, b.is_ascii_digit());
        set(&mut m.upper, b.is_ascii_uppercase());
        set(&mut m.sep, matches!(b, b' ' | b'-'));
        set(&mut m.dash, *b == b'-');
        set(&mut m.at, *b == b'@');
        set(&mut m.colon, *b == b':');
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn full_block(bytes: &[u8]) -> Masks {
    // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this target runs on has it.
    unsafe { sse2::full_block(bytes) }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::Masks;
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
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

    #[target_feature(enable = "sse2")]
    fn bits(x: __m128i, j: usize) -> u64 {
        u64::from(_mm_movemask_epi8(x) as u16) << (16 * j)
    }

    #[target_feature(enable = "sse2")]
    pub fn full_block(bytes: &[u8]) -> Masks {
        debug_assert_eq!(bytes.len(), 64);
        let mut m = Masks::default();
        for (j, chunk) in bytes.chunks_exact(16).enumerate() {
            // SAFETY: `chunk` is 16 in-bounds bytes (chunks_exact) and `_mm_loadu_si128` has
            // no alignment requirement.
            let v: __m128i = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
            let dash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8));
            let sep = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)), dash);
            m.digit |= bits(in_range(v, b'0', b'9'), j);
            m.upper |= bits(in_range(v, b'A', b'Z'), j);
            m.sep |= bits(sep, j);
            m.dash |= bits(dash, j);
            m.at |= bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'@' as i8)), j);
            m.colon |= bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b':' as i8)), j);
        }
        m
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn full_block(bytes: &[u8]) -> Masks {
    scalar(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_scalar_masks_agree() {
        let text: Vec<u8> = (0..=255u8)
            .chain(b"4111 1111-AB12 z9".iter().copied())
            .collect();
        for start in 0..text.len().saturating_sub(64) {
            let window = &text[start..start + 64];
            assert_eq!(full_block(window), scalar(window), "at {start}");
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
}
