//! One pass over a segment for every national detector a profile names.
//!
//! Why: each detector scanning the whole segment on its own made 13 scans of every
//! digit-heavy line (1.1 s of CPU on a 25 MB access log against 0.04 s for the default
//! profile). Here the segment is walked once, from word start to word start (the byte-class
//! masks give them 64 bytes at a time); at each place a value can start, the length of the
//! digit run there and the byte after it pick, from a table built with the profile, the few
//! written forms that can begin so: `999999999` only where exactly 9 digits start,
//! `99999999A` only where 8 digits and a letter do, `999.999.999-99` where 3 digits and a
//! `.` do, a form opening with a capital or a zone character only at a capital. Only those
//! are matched against the rest of their template, then the same boundary and check-digit
//! tests as before.
//!
//! The contract is the one of each detector on its own (the reference scan the tests keep),
//! exactly: the places a value can start are the same for every detector, each detector
//! tries its forms there in its own order and the first that holds is its finding, and a
//! detector does not look for another value of its own inside one it found (another
//! detector may). Only forms that cannot fit are skipped, so the findings are the same
//! (`one_pass_finds_what_each_detector_alone_finds` compares them on random lines dense in
//! values of every form, look-alikes and separators).

use super::{class_has, escaped_before, free_after, free_before, NationalId, ALL};
use crate::bytemask::SegmentMasks;
use crate::family::is_word;

/// Digit runs this long or longer share one row of the table: no form is longer than 44
/// characters, so a longer run covers a whole form.
const RUN_CAP: usize = 45;

/// One written form of a detector the profile names.
#[derive(Debug, Clone)]
struct Form {
    /// The detector's entry in [`Scan::ids`].
    entry: usize,
    /// Per template place, the bit of its class in [`Scan::classes`].
    places: Vec<u32>,
    /// How many leading places accept only word bytes: the word starting at a value holds
    /// at least that many bytes.
    word_min: usize,
    /// Every place accepts only word bytes and the form is no zone line: its value is a
    /// whole word (a word byte after it fails [`free_after`]), so the word is exactly as
    /// long as the form.
    whole_word: bool,
}

/// The national detectors of one profile, compiled for one pass over a segment.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// Per detector named: the redactor's index of it, the detector, and the fewest digits a
    /// segment holding one of its values has (see [`NationalId::min_digits`]). A detector
    /// named twice is kept once, under its first index: the redactor merges equal findings
    /// and names them after the first, so the second could never show.
    ids: Vec<(usize, NationalId, usize)>,
    /// Every form of those detectors, in detector then form order.
    forms: Vec<Form>,
    /// Per byte, the bits of the template classes (and literal separators) that accept it.
    classes: [u32; 256],
    /// Per byte that is not a digit, its kind: bytes accepted by the same classes share one.
    /// The end of the segment is kind 0.
    kind: [u8; 256],
    /// Indexed by the length of the digit run where a value would start (capped at
    /// [`RUN_CAP`]) and the kind of the byte after it: the forms (indices into `forms`) whose
    /// places accept that many digits and then that byte (or that end there), in detector
    /// then form order. A 9-digit run is offered only to `999999999` forms; a run of 8
    /// followed by a letter to `99999999A`; a capital to the forms that open with a letter or
    /// a zone character; a lower-case letter to those that open with a letter of either case.
    table: Vec<Vec<Vec<u8>>>,
}

/// The table's form indices, one byte each. Why a hard limit and not a skip: a form left out
/// of the table would never be offered, so its values would be served in clear with no error;
/// the 13 detectors have 30 forms, so this holds unless the templates grow past 256 (and then
/// the first profile built says so).
fn form_indices(indices: impl Iterator<Item = usize>) -> Vec<u8> {
    indices
        .map(|i| u8::try_from(i).unwrap_or_else(|_| panic!("national form index {i} fits a u8")))
        .collect()
}

impl Scan {
    /// The scan of `ids` (the redactor's index of each, and the detector), in profile order.
    pub(crate) fn new(ids: &[(usize, NationalId)]) -> Scan {
        #[cfg(test)]
        super::SCAN_BUILDS.with(|n| n.set(n.get() + 1));
        let mut kept: Vec<(usize, NationalId, usize)> = Vec::new();
        for &(i, id) in ids {
            if !kept.iter().any(|(_, k, _)| *k == id) {
                kept.push((i, id, id.min_digits()));
            }
        }
        // Every class or literal byte of the templates, one bit each (14 today).
        let mut kinds_of_place: Vec<u8> = Vec::new();
        for t in ALL.iter().flat_map(|id| id.forms().iter()) {
            for c in t.iter() {
                if !kinds_of_place.contains(c) {
                    kinds_of_place.push(*c);
                }
            }
        }
        assert!(
            kinds_of_place.len() <= 32,
            "national form classes fit a u32"
        );
        let bit = |c: u8| {
            kinds_of_place
                .iter()
                .position(|k| *k == c)
                .map_or(0, |i| 1u32 << i)
        };
        let mut classes = [0u32; 256];
        for (b, bits) in (0u8..=255).zip(classes.iter_mut()) {
            *bits = kinds_of_place
                .iter()
                .filter(|c| class_has(**c, b))
                .fold(0, |acc, c| acc | bit(*c));
        }
        // Kind 0 is the end of the segment; a non-digit byte's kind is the set of classes
        // that accept it (digits never follow a run: they are part of it).
        let mut kind_classes: Vec<u32> = vec![0];
        let mut kind = [0u8; 256];
        for (b, k) in (0u8..=255).zip(kind.iter_mut()) {
            if b.is_ascii_digit() {
                continue;
            }
            let c = classes[usize::from(b)];
            let at = kind_classes[1..].iter().position(|x| *x == c).map_or_else(
                || {
                    kind_classes.push(c);
                    kind_classes.len() - 1
                },
                |i| i + 1,
            );
            *k = u8::try_from(at).unwrap_or(u8::MAX);
        }
        assert!(kind_classes.len() < 256, "byte kinds fit a u8");
        let digit_bits = classes[usize::from(b'0')..=usize::from(b'9')]
            .iter()
            .fold(u32::MAX, |acc, c| acc & c);
        let mut forms = Vec::new();
        let word_only = |c: &u8| (0u8..=255).all(|b| !class_has(*c, b) || is_word(b));
        for (entry, (_, id, _)) in kept.iter().enumerate() {
            for template in id.forms() {
                let word_min = template.iter().take_while(|c| word_only(c)).count();
                forms.push(Form {
                    entry,
                    places: template.iter().map(|c| bit(*c)).collect(),
                    word_min,
                    whole_word: word_min == template.len() && *id != NationalId::PassportMrz,
                });
            }
        }
        let table = (0..=RUN_CAP)
            .map(|run| {
                kind_classes
                    .iter()
                    .enumerate()
                    .map(|(k, after)| {
                        let offered = |f: &Form| {
                            let covered = run.min(f.places.len());
                            // Every place the run covers accepts every digit (a class that
                            // takes only some digits takes none today; this keeps it exact).
                            let digits_fit =
                                f.places[..covered].iter().all(|p| digit_bits & p != 0);
                            let then_fits = match f.places.get(run) {
                                None => true,
                                Some(p) => k != 0 && after & p != 0,
                            };
                            // A run longer than the form puts a digit right after the value,
                            // which only a zone line may have (see `free_after`).
                            let longer_run =
                                run > f.places.len() && kept[f.entry].1 != NationalId::PassportMrz;
                            digits_fit && then_fits && !longer_run
                        };
                        form_indices((0..forms.len()).filter(|i| offered(&forms[*i])))
                    })
                    .collect()
            })
            .collect();
        Scan {
            ids: kept,
            forms,
            classes,
            kind,
            table,
        }
    }

    /// Whether the profile names no national detector.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends `(start, end, redactor index)` for every value in `seg` (whose byte classes
    /// are `masks`) of the detectors whose fewest digits the segment's `digits` reach (a
    /// segment with fewer cannot hold one).
    pub(crate) fn find(
        &self,
        seg: &[u8],
        masks: &SegmentMasks,
        digits: usize,
        out: &mut Vec<(usize, usize, usize)>,
    ) {
        // At most one entry per detector: `ALL.len()` bounds them.
        let mut active = [false; ALL.len()];
        let mut any = false;
        for (entry, (_, _id, min)) in self.ids.iter().enumerate() {
            if digits >= *min {
                active[entry] = true;
                any = true;
                #[cfg(test)]
                super::FIND_CALLS.with(|c| c.borrow_mut().push(*_id));
            }
        }
        if !any {
            return;
        }
        // Per detector, where it may find its next value (past the end of its last one).
        let mut next = [0usize; ALL.len()];
        // A value starts where a word starts (the masks give them 64 bytes at a time), and
        // inside a word only right after a JSON escape's letter (`\n123…`), which itself
        // starts a word (a backslash is before it). A detector resumes after its value's
        // end; inside a word that is no start either (a zone line's end glued to the next).
        let mut word_before = 0u64;
        for k in 0..masks.len() {
            let word = masks.get(k).word;
            let mut starts = word & !((word << 1) | word_before);
            word_before = word >> 63;
            while starts != 0 {
                let s = k * 64 + starts.trailing_zeros() as usize;
                starts &= starts - 1;
                let Some(&b) = seg.get(s) else {
                    break;
                };
                if b.is_ascii_alphanumeric() {
                    self.try_at(seg, masks, s, &active, &mut next, out);
                }
                if matches!(b, b'n' | b'r' | b't')
                    && seg.get(s + 1).is_some_and(u8::is_ascii_alphanumeric)
                    && escaped_before(seg, s + 1)
                {
                    self.try_at(seg, masks, s + 1, &active, &mut next, out);
                }
            }
        }
    }

    /// The forms (detector name and form length) the table offers a start at `s` of `seg`,
    /// before the word-length filter and the match: what the tests read.
    #[cfg(test)]
    pub(crate) fn offered(&self, seg: &[u8], s: usize) -> Vec<(&'static str, usize)> {
        let run = seg[s..].iter().take_while(|b| b.is_ascii_digit()).count();
        let after = seg
            .get(s + run)
            .map_or(0, |b| usize::from(self.kind[usize::from(*b)]));
        self.table[run.min(RUN_CAP)][after]
            .iter()
            .map(|f| {
                let form = &self.forms[usize::from(*f)];
                (self.ids[form.entry].1.name(), form.places.len())
            })
            .collect()
    }

    /// Offers the place `s` to every active detector that may find a value there, through
    /// the forms the digit run at `s` allows.
    fn try_at(
        &self,
        seg: &[u8],
        masks: &SegmentMasks,
        s: usize,
        active: &[bool; ALL.len()],
        next: &mut [usize; ALL.len()],
        out: &mut Vec<(usize, usize, usize)>,
    ) {
        let run = masks.run_end(|m| m.digit, s) - s;
        let after = seg
            .get(s + run)
            .map_or(0, |b| usize::from(self.kind[usize::from(*b)]));
        let Some(offered) = self.table.get(run.min(RUN_CAP)).and_then(|r| r.get(after)) else {
            return;
        };
        // The length of the word starting at `s`, counted when a form first asks.
        let mut word = None;
        for &f in offered {
            let form = &self.forms[usize::from(f)];
            let (index, id, _) = self.ids[form.entry];
            if !active[form.entry] || next[form.entry] > s {
                continue;
            }
            let word = *word.get_or_insert_with(|| masks.run_end(|m| m.word, s) - s);
            if word < form.word_min || (form.whole_word && word != form.places.len()) {
                continue;
            }
            let e = s + form.places.len();
            let Some(value) = seg.get(s..e) else {
                continue;
            };
            // The places up to the byte after the digit run fit: the table says so.
            let from = (run + 1).min(value.len());
            let fits = form.places[from..]
                .iter()
                .zip(&value[from..])
                .all(|(place, b)| self.classes[usize::from(*b)] & place != 0);
            let mrz = id == NationalId::PassportMrz;
            if fits && free_before(seg, s, e, mrz) && free_after(seg, s, e, mrz) && id.valid(value)
            {
                out.push((s, e, index));
                next[form.entry] = e;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A form index past a byte stops the build instead of leaving the form out of the table
    /// (where its values would never be offered, so served in clear).
    #[test]
    #[should_panic(expected = "fits a u8")]
    fn a_form_index_past_a_byte_is_refused_not_dropped() {
        let _ = form_indices(0..300);
    }

    /// Every form of every detector is offered at some start (some row of the table names
    /// it), and each detector's values in every form are found when they stand alone, by a
    /// scan of that detector only and by one of all thirteen.
    #[test]
    fn every_form_is_offered_and_each_example_is_found_alone() {
        let all: Vec<(usize, NationalId)> = ALL.iter().copied().enumerate().collect();
        let scan = Scan::new(&all);
        let mut offered = vec![false; scan.forms.len()];
        for row in scan.table.iter().flatten() {
            for f in row {
                offered[usize::from(*f)] = true;
            }
        }
        let total: usize = ALL.iter().map(|id| id.forms().len()).sum();
        assert_eq!(scan.forms.len(), total);
        assert!(offered.iter().all(|o| *o), "{offered:?}");
        let mut checked = 0;
        for (i, id) in ALL.iter().copied().enumerate() {
            let alone = Scan::new(&[(0, id)]);
            for form in 0..id.forms().len() {
                let mut made = 0;
                for seed in 0u8..40 {
                    let seed = crate::national::tests::spread_seed(seed);
                    let Some(v) = id.example_from(form, &seed) else {
                        continue;
                    };
                    made += 1;
                    let mut line = b"x ".to_vec();
                    line.extend_from_slice(&v);
                    line.extend_from_slice(b" y");
                    let mut masks = SegmentMasks::default();
                    masks.compute_classes(&line, false);
                    let mut got = Vec::new();
                    alone.find(&line, &masks, usize::MAX, &mut got);
                    assert_eq!(
                        got,
                        [(2, 2 + v.len(), 0)],
                        "{}",
                        String::from_utf8_lossy(&v)
                    );
                    got.clear();
                    scan.find(&line, &masks, usize::MAX, &mut got);
                    assert!(got.contains(&(2, 2 + v.len(), i)), "{}", id.name());
                    checked += 1;
                }
                assert!(made > 0, "{} form {form}: no example", id.name());
            }
        }
        assert!(checked > 500, "{checked}");
    }
}
