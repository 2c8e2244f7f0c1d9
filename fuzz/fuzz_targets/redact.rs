//! Fuzz target of the redaction engine: random input cut into random chunks.
//!
//! Asserts that no detector ever fails (a failure withholds a line: `lines_withheld` must stay
//! 0), that the output and the counts do not depend on where chunks are cut (the same input in
//! one piece gives the same bytes and counts), that text which cannot hold a secret comes
//! out unchanged, and that a token of any family (one of [`loggate_redact::token_shapes`],
//! its body made of input bytes mapped into the family's alphabet) planted between spaces in
//! the text does not survive, whatever surrounds it and wherever the chunks are cut. The same
//! holds for a profile with every detector, the opt-in ones too, and a valid national
//! identifier ([`loggate_redact::national_id_example`]) planted in one of several wrappers
//! (markup, CSV, a JSON array, a REST path, escaped line breaks).
//!
//! The engine is the `loggate-redact` crate, which needs only a few crates and no other part of
//! loggate: a build with the fuzzer's instrumentation stays short.

#![no_main]

use libfuzzer_sys::fuzz_target;
use loggate_redact::{Builtin, Detector, Mode, Pipeline, Redactor, TokenShape};
use std::sync::{Arc, LazyLock};

static DEFAULT: LazyLock<Arc<Redactor>> = LazyLock::new(|| Arc::new(Redactor::default_profile()));
/// Every built-in detector, the opt-in ones (phone, MAC, national identifiers) too.
static EVERYTHING: LazyLock<Arc<Redactor>> = LazyLock::new(|| {
    let detectors = Builtin::ALL
        .into_iter()
        .chain(Builtin::OPT_IN)
        .map(|b| Detector::builtin(b, Mode::Mask))
        .collect();
    match Redactor::new(detectors, None) {
        Ok(r) => Arc::new(r),
        Err(e) => panic!("the profile of every detector does not build: {e}"),
    }
});
/// The token families' plain forms (no check, nothing before the prefix), the values bound to
/// a vendor's key or scheme included (their prefix is `dd_api_key=`, `ssws `…).
static SHAPES: LazyLock<Vec<TokenShape>> = LazyLock::new(|| {
    loggate_redact::token_shapes()
        .into_iter()
        .filter(|s| s.plain)
        .collect()
});

/// `text` cut into pieces whose sizes cycle through `sizes` (each 1..=64).
fn cut<'a>(text: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = text;
    for s in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (usize::from(*s % 64) + 1).min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }
    chunks
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the chunk sizes and the line limit; the rest is the log text.
    let (control, text) = data.split_at(data.len().min(8));
    let sizes = if control.is_empty() {
        &[63u8][..]
    } else {
        control
    };
    let max_line = match control.first() {
        Some(b) if b & 1 == 1 => 256 + usize::from(*b) * 4,
        _ => 64 * 1024,
    };
    let r = &*DEFAULT;
    plant_a_token(control, text, sizes);
    let (whole, whole_counts) = Pipeline::redact_chunks(r, &[text], max_line);
    let (pieces, pieces_counts) = Pipeline::redact_chunks(r, &cut(text, sizes), max_line);
    assert_eq!(whole_counts.lines_withheld, 0, "a detector failed");
    assert_eq!(pieces, whole, "output depends on chunk boundaries");
    assert_eq!(
        pieces_counts, whole_counts,
        "counts depend on chunk boundaries"
    );
    let (whole, whole_counts) = Pipeline::redact_chunks(&EVERYTHING, &[text], max_line);
    let (pieces, pieces_counts) = Pipeline::redact_chunks(&EVERYTHING, &cut(text, sizes), max_line);
    assert_eq!(whole_counts.lines_withheld, 0, "an opt-in detector failed");
    assert_eq!(pieces, whole, "opt-in output depends on chunk boundaries");
    assert_eq!(
        pieces_counts, whole_counts,
        "opt-in counts depend on chunk boundaries"
    );
    plant_a_national_id(control, text, sizes);

    // Lowercase words without `basic` hold no secret of any kind: no digit, capital, `@`, `=`,
    // `:`, `-`, `_`, `.` or `/` for a value or a key, and a `bearer` token needs a digit, a
    // symbol or mixed case. Such text must come out unchanged.
    let plain: Vec<u8> = text
        .iter()
        .map(|b| match b % 28 {
            26 => b' ',
            27 => b'\n',
            x => b'a' + x,
        })
        .collect();
    if memchr::memmem::find(&plain, b"basic").is_none() {
        let (out, counts) = Pipeline::redact_chunks(r, &cut(&plain, sizes), 64 * 1024);
        assert_eq!(out, plain, "text without secrets was changed");
        assert_eq!(counts.total(), 0);
    }
});

/// Plants a token of the family form chosen by the control bytes, its body made of the text's
/// bytes mapped into the form's alphabet, between spaces at a place in the text the control
/// bytes choose; the body must not survive, in one piece or in chunks.
fn plant_a_token(control: &[u8], text: &[u8], sizes: &[u8]) {
    let (Some(&pick), Some(&len), Some(&at), Some(&pick_high)) =
        (control.get(1), control.get(2), control.get(3), control.get(4))
    else {
        return;
    };
    // Two bytes choose the form: there are over 200 plain forms and new rows are appended at
    // the end, so one byte modulo their number would plant the last ones rarely or never.
    assert!(SHAPES.len() <= usize::from(u16::MAX), "two control bytes no longer reach every form");
    let shape = &SHAPES[usize::from(u16::from_le_bytes([pick, pick_high])) % SHAPES.len()];
    let n = (shape.min + usize::from(len)).min(shape.max);
    let body: Vec<u8> = text
        .iter()
        .chain(std::iter::repeat(&7u8))
        .take(n)
        .map(|b| shape.alphabet[usize::from(*b) % shape.alphabet.len()])
        .collect();
    // A body the text already holds elsewhere could survive there, rightly.
    if memchr::memmem::find(text, &body).is_some() {
        return;
    }
    let at = usize::from(at) * text.len() / 256;
    let mut planted = text[..at].to_vec();
    planted.push(b' ');
    planted.extend_from_slice(shape.prefix.as_bytes());
    planted.extend_from_slice(&body);
    planted.push(b' ');
    planted.extend_from_slice(&text[at..]);
    for chunks in [vec![&planted[..]], cut(&planted, sizes)] {
        let (out, counts) = Pipeline::redact_chunks(&DEFAULT, &chunks, 64 * 1024);
        assert_eq!(counts.lines_withheld, 0, "a detector failed");
        assert!(
            memchr::memmem::find(&out, &body).is_none(),
            "a {} token survived",
            shape.detector
        );
    }
}

/// How a planted national id is written (`@` is the value): between spaces, in markup, a CSV
/// row, a JSON array, a REST path, a quoted string, between escaped line breaks. Each wrapper
/// stands between spaces in the text.
const WRAPPERS: [&[u8]; 7] = [
    b" @ ",
    b"<x>@</x>",
    b",@,",
    b"[@,@]",
    b"/v1/@/",
    b"\"@\"",
    b"\\n@\\n",
];

/// Plants a valid national identifier (detector, form, wrapper and body chosen by the control
/// bytes and the text) in one of the [`WRAPPERS`]; with every detector enabled it must not
/// survive.
fn plant_a_national_id(control: &[u8], text: &[u8], sizes: &[u8]) {
    let (Some(&pick), Some(&form), Some(&at), Some(&wrapper)) = (
        control.get(4),
        control.get(5),
        control.get(6),
        control.get(7),
    ) else {
        return;
    };
    let Some((detector, value)) =
        loggate_redact::national_id_example(usize::from(pick), usize::from(form), text)
    else {
        return;
    };
    if memchr::memmem::find(text, &value).is_some() {
        return;
    }
    let at = usize::from(at) * text.len() / 256;
    let mut planted = text[..at].to_vec();
    planted.push(b' ');
    for b in WRAPPERS[usize::from(wrapper) % WRAPPERS.len()] {
        if *b == b'@' {
            planted.extend_from_slice(&value);
        } else {
            planted.push(*b);
        }
    }
    planted.push(b' ');
    planted.extend_from_slice(&text[at..]);
    for chunks in [vec![&planted[..]], cut(&planted, sizes)] {
        let (out, counts) = Pipeline::redact_chunks(&EVERYTHING, &chunks, 64 * 1024);
        assert_eq!(counts.lines_withheld, 0, "a detector failed");
        assert!(
            memchr::memmem::find(&out, &value).is_none(),
            "a {detector} value survived"
        );
    }
}
