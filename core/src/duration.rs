//! One grammar for every duration loggate reads: command-line flags (`--ttl`, `--start-in`, the
//! relative form of `--since`/`--until`) and configuration values (`max_ttl`, `max_clock_skew`,
//! `checkpoints.interval`, `limits.grep_time_budget`, …).
//!
//! The grammar is jiff's "friendly" duration format (and ISO 8601 `PT1H30M`): a number and a
//! unit, repeated, with or without spaces — `90s`, `10m`, `2h`, `1d`, `1h30m`, `1h 30m`,
//! `1 hour 30 minutes`, `250ms`. A day is 24 hours and a week 7 days; years and months are
//! refused (they have no fixed length). Negative durations (`-5s`, `5s ago`) are refused with a
//! message that says so. Every caller states its own range on top (a grant's 366-day horizon,
//! `max_ttl`, …); this module only reads the text.
//!
//! Why one module: the same mistake (`--ttl 1h30x`, `--since 1h30x`, `max_ttl = "1h30x"`) gets
//! the same error, and a form accepted in one place is accepted everywhere.

use std::time::Duration;

/// The examples every duration error ends with.
pub const EXAMPLES: &str = "90s, 10m, 2h, 1d, 1h30m or \"1h 30m\"";

/// Why a text is not a duration; the message quotes (at most 40 characters of) the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} {reason}; write a duration such as {EXAMPLES}")]
pub struct DurationError {
    shown: String,
    reason: DurationProblem,
}

impl DurationError {
    /// What was wrong with the text.
    pub fn problem(&self) -> DurationProblem {
        self.reason
    }
}

/// The kinds of mistake, each with one fixed sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationProblem {
    /// Not in the grammar at all (empty, unknown unit, stray text).
    #[error("is not a duration")]
    NotADuration,
    /// A negative amount (`-5m`, `5m ago`): a duration here is always a length of time forward.
    #[error("is negative; a duration is written without a sign (drop the '-' or \"ago\")")]
    Negative,
    /// Years or months, refused because their length in seconds depends on the calendar.
    #[error("uses years or months, which have no fixed length (give days, e.g. 30d)")]
    CalendarUnit,
    /// Too large to hold in whole seconds as a signed 64-bit number or as a `std::time::Duration`.
    #[error("is out of range")]
    OutOfRange,
}

/// The text as an error message shows it: quoted, cut after 40 characters.
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(40) {
        _ if text.trim().is_empty() => "an empty value".to_string(),
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Parses a duration in the one grammar (see the module's comment). Surrounding whitespace is
/// ignored. Never panics, whatever the text.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError {
        shown: shown(text),
        reason,
    };
    let trimmed = text.trim();
    // jiff's parser reads the whole text; a hostile value longer than any real duration is
    // refused before it is looked at.
    if trimmed.is_empty() || trimmed.len() > 256 {
        return Err(error(DurationProblem::NotADuration));
    }
    let span: jiff::Span = trimmed
        .parse()
        .map_err(|_| error(classify_unparsable(trimmed)))?;
    if span.is_negative() {
        return Err(error(DurationProblem::Negative));
    }
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(error(DurationProblem::CalendarUnit));
    }
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| error(DurationProblem::OutOfRange))?;
    Duration::try_from(signed).map_err(|_| error(DurationProblem::OutOfRange))
}

/// Why jiff refused `text`: negative when it parses without its leading `-`, out of range when
/// it parses with every number replaced by 1 (the units were right, a number too large), and
/// otherwise not a duration. Decided by parsing again, never by reading jiff's message.
fn classify_unparsable(text: &str) -> DurationProblem {
    if let Some(unsigned) = text.strip_prefix('-') {
        if parse(unsigned).is_ok() {
            return DurationProblem::Negative;
        }
    }
    let mut small = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                small.push('1');
            }
            in_number = true;
        } else {
            small.push(c);
            in_number = false;
        }
    }
    if small != text && small.parse::<jiff::Span>().is_ok() {
        DurationProblem::OutOfRange
    } else {
        DurationProblem::NotADuration
    }
}

/// A duration as the grammar writes it, in whole units, largest first ("1h 30m", "250ms",
/// "0s"), so that a printed limit can be pasted back.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let mut parts = Vec::new();
    for (n, unit) in [
        (secs / 86_400, "d"),
        ((secs / 3_600) % 24, "h"),
        ((secs / 60) % 60, "m"),
        (secs % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
    ] {
        if n > 0 {
            parts.push(format!("{n}{unit}"));
        }
    }
    if parts.is_empty() {
        return "0s".to_string();
    }
    parts.join(" ")
}

/// A [`Duration`] read from configuration text in the one grammar, at parse time:
/// `#[serde(with = "loggate_core::duration::text")]` on a `std::time::Duration` field. It
/// serialises back as [`format`] writes it.
pub mod text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Reads a configuration string in the one duration grammar ([`super::parse`]); a refused text
    /// is a deserialisation error that names the problem.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }

    /// Writes the duration as [`super::format`] does, so a saved value reads back unchanged.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*value))
    }
}

/// A duration given on the command line (`--ttl 1h30m`): a clap value parser in the one grammar.
/// Its error is the [`DurationError`], so clap prints "invalid value '…' for '--ttl <TTL>':
/// \"…\" is not a duration; write a duration such as …".
pub fn value_parser(text: &str) -> Result<Duration, DurationError> {
    parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn every_spelling_of_the_grammar_reads_the_same_duration() {
        for (text, expect) in [
            ("90s", secs(90)),
            ("10m", secs(600)),
            ("2h", secs(7200)),
            ("1d", secs(86_400)),
            ("1w", secs(7 * 86_400)),
            ("1h30m", secs(5400)),
            ("1h 30m", secs(5400)),
            (" 1 hour 30 minutes ", secs(5400)),
            ("PT1H30M", secs(5400)),
            ("1d2h3m4s", secs(93_784)),
            ("366d", secs(366 * 86_400)),
            ("250ms", Duration::from_millis(250)),
            ("0s", secs(0)),
        ] {
            assert_eq!(parse(text), Ok(expect), "{text}");
        }
    }

    #[test]
    fn each_mistake_has_its_own_sentence() {
        for (text, problem) in [
            ("10x", DurationProblem::NotADuration),
            ("12345678901x", DurationProblem::NotADuration),
            ("1h30x", DurationProblem::NotADuration),
            ("yesterday", DurationProblem::NotADuration),
            ("10", DurationProblem::NotADuration),
            ("", DurationProblem::NotADuration),
            ("-5s", DurationProblem::Negative),
            ("5s ago", DurationProblem::Negative),
            ("1y", DurationProblem::CalendarUnit),
            ("2 months", DurationProblem::CalendarUnit),
            ("99999999999999999999d", DurationProblem::OutOfRange),
            ("9223372036854775807s", DurationProblem::OutOfRange),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.problem(), problem, "{text}: {err}");
            assert!(err.to_string().ends_with(EXAMPLES), "{err}");
        }
        let err = parse("-5s").unwrap_err().to_string();
        assert!(err.starts_with("\"-5s\" is negative"), "{err}");
        let long = "9".repeat(10_000);
        assert!(parse(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn formatted_durations_parse_back() {
        for d in [
            secs(0),
            secs(59),
            secs(5400),
            secs(366 * 86_400),
            Duration::from_millis(1250),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(secs(5400)), "1h 30m");
        assert_eq!(format(secs(8 * 3600)), "8h");
    }

    #[test]
    fn configuration_durations_are_read_at_parse_time() {
        #[derive(serde::Deserialize, serde::Serialize, Debug)]
        struct File {
            #[serde(with = "text")]
            every: Duration,
        }
        let f: File = toml::from_str("every = \"1h 30m\"").unwrap();
        assert_eq!(f.every, secs(5400));
        let err = toml::from_str::<File>("every = \"1h30x\"").unwrap_err();
        assert!(
            err.to_string().contains("\"1h30x\" is not a duration"),
            "{err}"
        );
        assert_eq!(toml::to_string(&f).unwrap().trim(), "every = \"1h 30m\"");
    }
}
