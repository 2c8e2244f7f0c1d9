//! Text one person writes and others read: request paths and reasons, review comments, an
//! admin's grant reasons, shown on approvers' terminals, in webhook messages and in the access
//! review. A character that is not what it looks like can rewrite what the reader sees: C0/C1
//! controls (escape sequences, carriage returns, line breaks), the line and paragraph
//! separators U+2028/U+2029 (Zl, Zp), and format characters (Cf: bidi overrides and isolates
//! such as U+202E, U+2066–U+2069, zero-width U+200B–U+200F, U+FEFF, tags). The controller
//! refuses them; the CLI prints any it receives escaped.

/// Format characters (general category Cf, Unicode 15.1), as inclusive ranges.
const FORMAT: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` may not be shown to others as it is: a control (Cc), a format character (Cf),
/// or a line or paragraph separator (Zl, Zp).
pub fn is_hidden_or_control(c: char) -> bool {
    let u = c as u32;
    c.is_control()
        || u == 0x2028
        || u == 0x2029
        || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// `text` with every character of [`is_hidden_or_control`] written as `\u{…}`: what a
/// terminal shows is what was sent.
pub fn escaped(text: &str) -> String {
    if !text.chars().any(is_hidden_or_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if is_hidden_or_control(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_zero_width_separators_and_controls_are_caught_and_escaped() {
        for c in [
            '\u{1b}',
            '\r',
            '\u{9b}',
            '\u{2028}',
            '\u{2029}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert!(is_hidden_or_control(c), "{c:?}");
        }
        for c in ['a', '§', 'é', ' ', '\u{4e2d}'] {
            assert!(!is_hidden_or_control(c), "{c:?}");
        }
        assert_eq!(escaped("a\u{202e}b\x1b"), "a\\u{202e}b\\u{1b}");
        assert_eq!(escaped("plain"), "plain");
    }
}
