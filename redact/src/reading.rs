//! Reading: turns a byte stream cut into arbitrary chunks into whole lines, with a carry-over
//! bounded by the maximum line length.
//!
//! Detectors need whole lines: a value split by a chunk boundary must be seen whole, so a
//! line's head is carried over until its end arrives. A line longer than `max_line` bytes is
//! cut: its first `max_line` bytes are handed on (marked `cut`), the rest up to the next newline
//! is dropped, never passed on unscanned. Memory per stream is one line at most.

/// One line as handed to the redactor, without its newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub bytes: &'a [u8],
    /// Whether a newline ended it in the input (the last line of a file may lack one).
    pub terminated: bool,
    /// Whether it was longer than the limit and is only its first `max_line` bytes.
    pub cut: bool,
}

#[derive(Debug)]
pub struct LineSplitter {
    carry: Vec<u8>,
    max_line: usize,
    /// Inside the dropped rest of a cut line, until the next newline.
    dropping: bool,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            carry: Vec::new(),
            max_line: max_line.max(1),
            dropping: false,
        }
    }

    /// Forgets a partial line (the file was truncated and is read again from its start).
    pub fn reset(&mut self) {
        self.carry.clear();
        self.dropping = false;
    }

    /// Bytes held back waiting for the end of their line.
    #[cfg(test)]
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Splits `data` (the next bytes of the input) and calls `emit` for every line it completes.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(Line<'_>)) {
        let max = self.max_line;
        let mut rest = data;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if self.dropping {
                self.dropping = false;
                continue;
            }
            if self.carry.is_empty() {
                let cut = piece.len() > max;
                emit(Line {
                    bytes: &piece[..piece.len().min(max)],
                    terminated: true,
                    cut,
                });
            } else {
                let room = max - self.carry.len();
                let cut = piece.len() > room;
                self.carry
                    .extend_from_slice(&piece[..piece.len().min(room)]);
                emit(Line {
                    bytes: &self.carry,
                    terminated: true,
                    cut,
                });
                self.carry.clear();
            }
        }
        if self.dropping {
            return;
        }
        let room = max - self.carry.len();
        if rest.len() > room {
            self.carry.extend_from_slice(&rest[..room]);
            emit(Line {
                bytes: &self.carry,
                terminated: true,
                cut: true,
            });
            self.carry.clear();
            self.dropping = true;
        } else {
            self.carry.extend_from_slice(rest);
        }
    }

    /// End of input: hands on the last line if it had no newline.
    pub fn finish(&mut self, mut emit: impl FnMut(Line<'_>)) {
        if !self.carry.is_empty() && !self.dropping {
            emit(Line {
                bytes: &self.carry,
                terminated: false,
                cut: false,
            });
        }
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<(String, bool, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut f = |l: Line<'_>| {
            out.push((
                String::from_utf8_lossy(l.bytes).into_owned(),
                l.terminated,
                l.cut,
            ))
        };
        for c in chunks {
            s.push(c, &mut f);
        }
        s.finish(&mut f);
        out
    }

    #[test]
    fn lines_are_whole_wherever_chunks_split_them() {
        let text = b"alpha\nbravo charlie\n\ndelta";
        let whole = split(&[text], 100);
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(
                    split(&[&text[..a], &text[a..b], &text[b..]], 100),
                    whole,
                    "{a} {b}"
                );
            }
        }
        assert_eq!(whole.last(), Some(&("delta".to_string(), false, false)));
    }

    #[test]
    fn over_long_lines_are_cut_and_their_rest_dropped() {
        let text = b"0123456789abc\nok\n";
        for a in 0..=text.len() {
            let got = split(&[&text[..a], &text[a..]], 10);
            assert_eq!(
                got,
                vec![
                    ("0123456789".into(), true, true),
                    ("ok".into(), true, false)
                ],
                "split at {a}"
            );
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_not_cut() {
        assert_eq!(
            split(&[b"01234", b"56789\n"], 10),
            vec![("0123456789".into(), true, false)]
        );
    }

    #[test]
    fn carry_over_never_exceeds_the_limit() {
        let mut s = LineSplitter::new(16);
        for _ in 0..100 {
            s.push(&[b'x'; 7], |_| {});
            assert!(s.carried() <= 16);
        }
    }
}
