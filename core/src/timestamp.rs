//! Timestamps for selecting time ranges of log lines (`loggate logs cat --since/--until`):
//! finding the time a log line was written, and parsing the user's `--since`/`--until` values.
//!
//! Log lines are hostile input: any bytes, any length. `line_timestamp_ms` looks only at the
//! first 128 bytes, never allocates and never panics. It takes the first timestamp-looking
//! thing in that window:
//! - ISO 8601 / RFC 3339 date-times with seconds (`2026-11-27T06:59:15Z`, `...15.123456+02:00`,
//!   `2026-11-27 06:59:15,123`, offsets `+02:00`/`+0200`, also after one space); no zone = UTC.
//!   This covers JSON lines such as `{"ts":"2026-11-27T06:59:15.1Z"}`.
//! - The bracketed nginx/apache common log format time `[27/Nov/2026:06:59:15 +0000]`.
//!
//! Syslog RFC 3164 stamps (`Nov 27 06:59:15`) are deliberately *not* recognised: they carry no
//! year, and guessing one goes wrong around New Year and for old or rotated files, so lines would
//! be silently let into or kept out of a range. If such a stamp comes first, the line has no
//! time (`None`) even if its message later mentions a date; the caller then inherits the
//! previous line's time. In a line longer than 128 bytes, an ISO timestamp ending within 7
//! bytes of the cut is ignored too, since its fraction or zone may be cut off. A leap second
//! (`:60`) counts as the first second of the next minute.

use crate::duration::{DurationError, EXAMPLES};

/// How many bytes at the start of a line are searched for a timestamp.
const WINDOW: usize = 128;
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];
const DAY_MS: i64 = 86_400_000;

/// Milliseconds since the Unix epoch (UTC) of the first timestamp recognised near the start of a log line, if any.
pub fn line_timestamp_ms(line: &[u8]) -> Option<i64> {
    let truncated = line.len() > WINDOW;
    let s = &line[..line.len().min(WINDOW)];
    for i in 0..s.len() {
        let rest = &s[i..];
        let prev = if i == 0 { b' ' } else { s[i - 1] };
        // `margin`: bytes that must follow a match in a cut line, so that a fraction or a
        // zone such as ` +02:00` cannot have been cut off (the CLF form ends with `]`).
        let (found, margin) = match rest[0] {
            b'0'..=b'9' if !prev.is_ascii_digit() => (parse_iso(rest, false), 7),
            b'[' => (parse_clf(rest), 0),
            b'A'..=b'Z' if !prev.is_ascii_alphanumeric() && is_rfc3164(rest) => return None,
            _ => continue,
        };
        if let Some((ms, len)) = found {
            return Some(ms).filter(|_| !truncated || len + margin <= rest.len());
        }
    }
    None
}

/// Days from 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's days_from_civil); pub because others need it.
///
/// Expects `m` in 1..=12 and `d` in 1..=31. It never panics: other inputs, or years beyond
/// about ±10^13, give a meaningless result rather than an overflow.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y.wrapping_sub(1) } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era.wrapping_mul(146_097).wrapping_add(doe - 719_468)
}

/// A point in time in milliseconds since the Unix epoch (UTC): what `--since/--until` become
/// and what a read request carries (`since_unix_ms`). A type of its own because grants count
/// Unix *seconds* (`nbf`, `exp`): one cannot be passed for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The current time (the epoch for a clock before it; `i64::MAX` past year 292 million).
    pub fn now() -> UnixMillis {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        UnixMillis(ms)
    }
}

/// A `--since`/`--until` value that is not a time. A value shaped like a duration (it starts
/// with a digit but not with a year) gets the duration grammar's own error, the same one
/// `--ttl` gives for the same mistake, followed by the time forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeArgError {
    /// Not a duration in the one grammar ([`crate::duration`]).
    #[error("{0}, or a time: {TIME_FORMS}")]
    Duration(#[from] DurationError),
    /// A duration back from now that reaches before the year -9999 or so.
    #[error("{0} reaches too far back; use a shorter duration or {TIME_FORMS}")]
    TooFarBack(String),
    /// Neither a duration nor one of the time forms.
    #[error(
        "{0} is not a recognised time; use a duration back from now ({EXAMPLES}) or {TIME_FORMS}"
    )]
    NotATime(String),
}

/// The absolute forms `--since`/`--until` accept, for messages.
const TIME_FORMS: &str = "an RFC 3339 time (2026-11-27T07:00:00Z, 2026-11-27T07:00:00.5+01:00), \
     a date-time taken as UTC (2026-11-27 07:00:00) or a date (2026-11-27)";

/// Parses a user's --since/--until argument, through jiff: either a duration back from `now_ms`
/// in the one duration grammar ([`crate::duration`]: "90s", "10m", "2h", "1d", "1h30m",
/// "1h 30m"), or an absolute RFC 3339 time ("2026-11-27T07:00:00Z",
/// "2026-11-27T07:00:00.5+01:00"), or a date-time without zone taken as UTC
/// ("2026-11-27 07:00:00", "2026-11-27T07:00"), or a date ("2026-11-27" = midnight UTC).
/// Surrounding whitespace is ignored.
pub fn parse_time_arg(arg: &str, now: UnixMillis) -> Result<UnixMillis, TimeArgError> {
    let text = arg.trim();
    let b = text.as_bytes();
    let looks_like_a_date = b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
    if !looks_like_a_date
        && !b.is_empty()
        && (b[0].is_ascii_digit() || b[0] == b'-' || b[0] == b'P')
    {
        let back = crate::duration::parse(text)?;
        let back_ms = i64::try_from(back.as_millis()).ok();
        return back_ms
            .and_then(|ms| now.0.checked_sub(ms))
            .map(UnixMillis)
            .ok_or_else(|| TimeArgError::TooFarBack(crate::duration::shown(arg)));
    }
    absolute_ms(text)
        .map(UnixMillis)
        .ok_or_else(|| TimeArgError::NotATime(crate::duration::shown(arg)))
}

/// An absolute time given on the command line (`pki issue --valid-from`): the absolute forms of
/// [`parse_time_arg`] only, no duration.
pub fn parse_absolute_time(arg: &str) -> Result<std::time::SystemTime, TimeArgError> {
    let not_a_time = || TimeArgError::NotATime(crate::duration::shown(arg));
    let ms = absolute_ms(arg.trim()).ok_or_else(not_a_time)?;
    let epoch = std::time::UNIX_EPOCH;
    let offset = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        epoch.checked_add(offset)
    } else {
        epoch.checked_sub(offset)
    }
    .ok_or_else(not_a_time)
}

/// An absolute time in one of the `--since/--until` forms, in ms since the epoch.
fn absolute_ms(text: &str) -> Option<i64> {
    // jiff reads more than these forms (week dates, basic format, bracketed zones): only the
    // documented shapes are handed to it, so what is accepted stays what the help says.
    let b = text.as_bytes();
    if !shape(b, b"9999-99-99") || text.len() > 64 || text.contains('[') {
        return None;
    }
    let ms = |t: jiff::Timestamp| Some(t.as_millisecond());
    if b.len() == 10 {
        let date: jiff::civil::Date = text.parse().ok()?;
        return ms(jiff::tz::Offset::UTC.to_timestamp(date.into()).ok()?);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || !shape(&b[11..], b"99:99") {
        return None;
    }
    let has_zone = text[11..].contains(['Z', 'z', '+', '-']);
    if has_zone {
        return ms(text.parse::<jiff::Timestamp>().ok()?);
    }
    let civil: jiff::civil::DateTime = text.parse().ok()?;
    ms(jiff::tz::Offset::UTC.to_timestamp(civil).ok()?)
}

/// The number in `n` (at most 4) bytes at `b[at..]`; callers check with `shape` for digits.
fn num(b: &[u8], at: usize, n: usize) -> u32 {
    let mut value = 0u32;
    for c in b.iter().skip(at).take(n) {
        value = value * 10 + u32::from(c.wrapping_sub(b'0')); // n <= 4: cannot overflow
    }
    value
}

/// Whether `b` starts with `pat`: `9` is a digit, `_` a digit or space, `?` any byte.
fn shape(b: &[u8], pat: &[u8]) -> bool {
    b.len() >= pat.len()
        && b.iter().zip(pat).all(|(&c, &p)| match p {
            b'9' => c.is_ascii_digit(),
            b'_' => c.is_ascii_digit() || c == b' ',
            _ => p == b'?' || c == p,
        })
}

/// The `YYYY-MM-DD` at the start of `b`, whose shape has been checked.
fn ymd(b: &[u8]) -> (i64, u32, u32) {
    (i64::from(num(b, 0, 4)), num(b, 5, 2), num(b, 8, 2))
}

/// Epoch milliseconds of a civil date and time at a UTC offset, if every field is in range.
fn epoch_ms(ymd: (i64, u32, u32), hms: (u32, u32, u32), frac: i64, off_min: i64) -> Option<i64> {
    let ((y, m, d), (h, mi, s)) = (ymd, hms);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        2 => 28 + u32::from(leap),
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&m) || !(1..=month_days).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let time_ms = i64::from((h * 60 + mi) * 60 + s) * 1000 + frac - off_min * 60_000;
    Some(days_from_civil(y, m, d) * DAY_MS + time_ms)
}

/// A UTC offset `+hh:mm` or `+hhmm` (or `-`) at the start of `b`: (minutes, bytes used).
fn parse_offset(b: &[u8]) -> Option<(i64, usize)> {
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (m_at, len) = match () {
        _ if shape(b, b"?99:99") => (4, 6),
        _ if shape(b, b"?9999") => (3, 5),
        _ => return None,
    };
    let (h, m) = (num(b, 1, 2), num(b, m_at, 2));
    let ok = h < 24 && m < 60 && !b.get(len).is_some_and(u8::is_ascii_digit);
    ok.then(|| (sign * i64::from(h * 60 + m), len))
}

/// An ISO 8601 date-time at the start of `b`: (epoch ms, bytes used). Seconds are required
/// unless `seconds_optional`; no zone means UTC.
fn parse_iso(b: &[u8], seconds_optional: bool) -> Option<(i64, usize)> {
    if !shape(b, b"9999-99-99?99:99") || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (mut pos, mut s, mut frac_ms) = (16, 0, 0i64);
    if shape(&b[16..], b":99") {
        (pos, s) = (19, num(b, 17, 2));
        let frac_digit = |i: usize| b.get(i).filter(|c| c.is_ascii_digit()).copied();
        if matches!(b.get(pos), Some(b'.' | b',')) && frac_digit(pos + 1).is_some() {
            pos += 1;
            let mut scale = 100;
            while let Some(c) = frac_digit(pos) {
                frac_ms += i64::from(c - b'0') * scale;
                scale /= 10;
                pos += 1;
            }
        }
    } else if !seconds_optional {
        return None;
    }
    let mut off_min = 0;
    match b.get(pos) {
        Some(b'Z' | b'z') => pos += 1,
        Some(&c @ (b'+' | b'-' | b' ')) => {
            let at = pos + usize::from(c == b' ');
            if let Some((off, len)) = b.get(at..).and_then(parse_offset) {
                (off_min, pos) = (off, at + len);
            }
        }
        _ => {}
    }
    let hms = (num(b, 11, 2), num(b, 14, 2), s);
    Some((epoch_ms(ymd(b), hms, frac_ms, off_min)?, pos))
}

/// `[27/Nov/2026:06:59:15 +0000]` at the start of `b`: (epoch ms, bytes used).
fn parse_clf(b: &[u8]) -> Option<(i64, usize)> {
    if !shape(b, b"[99/???/9999:99:99:99 ") {
        return None;
    }
    let name = &b[4..7];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    let ymd = (
        i64::from(num(b, 8, 4)),
        u32::try_from(month + 1).ok()?,
        num(b, 1, 2),
    );
    let hms = (num(b, 13, 2), num(b, 16, 2), num(b, 19, 2));
    let (off_min, len) = parse_offset(&b[22..])?;
    if b.get(22 + len) != Some(&b']') {
        return None;
    }
    Some((epoch_ms(ymd, hms, 0, off_min)?, 23 + len))
}

/// Whether `b` starts with a yearless RFC 3164 stamp such as `Nov 27 06:59:15` or `Nov  7 ...`.
fn is_rfc3164(b: &[u8]) -> bool {
    MONTHS.iter().any(|m| b.starts_with(*m)) && shape(&b[3..], b" _9 99:99:99")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected epoch values computed independently with `date -u -d <time> +%s%3N`.
    const T0: i64 = 1_795_762_755_000; // 2026-11-27T06:59:15Z
    const T0_123: i64 = 1_795_762_755_123; // 2026-11-27T06:59:15.123Z
    const T0_AT_MINUS_7: i64 = 1_795_787_955_000; // 2026-11-27T13:59:15Z

    /// `parse_time_arg` in plain milliseconds, for tables of expected values.
    fn arg_ms(arg: &str, now_ms: i64) -> Result<i64, TimeArgError> {
        parse_time_arg(arg, UnixMillis(now_ms)).map(|t| t.0)
    }

    fn ts(line: &str) -> Option<i64> {
        line_timestamp_ms(line.as_bytes())
    }

    #[test]
    fn rfc3339_with_z_and_long_fraction_keeps_milliseconds() {
        assert_eq!(ts("2026-11-27T06:59:15Z INFO started"), Some(T0));
        assert_eq!(ts("2026-11-27t06:59:15.123999z"), Some(T0_123));
    }

    #[test]
    fn offsets_are_applied_in_both_directions() {
        let plus_two = ts("2026-11-27T06:59:15.123456+02:00 x");
        assert_eq!(plus_two, Some(1_795_755_555_123));
        assert_eq!(ts("2026-11-27T06:59:15-0530 x"), Some(1_795_782_555_000));
        assert_eq!(ts("2026-11-27 06:59:15 -0700 MST"), Some(T0_AT_MINUS_7));
        assert_eq!(ts("2026-01-01T00:30:00+01:00"), Some(1_767_223_800_000));
    }

    #[test]
    fn logback_space_and_comma_fraction_without_zone_is_utc() {
        assert_eq!(ts("2026-11-27 06:59:15,123 [main] INFO"), Some(T0_123));
    }

    #[test]
    fn json_line_rfc3339_value_is_found() {
        let line = r#"{"ts":"2026-11-27T06:59:15.1Z","level":"info"}"#;
        assert_eq!(ts(line), Some(1_795_762_755_100));
    }

    #[test]
    fn nginx_common_log_format_applies_offset() {
        let utc = r#"1.2.3.4 - - [27/Nov/2026:06:59:15 +0000] "GET /" 200"#;
        assert_eq!(ts(utc), Some(T0));
        let west = r#"1.2.3.4 - - [27/Nov/2026:06:59:15 -0700] "GET /" 200"#;
        assert_eq!(ts(west), Some(T0_AT_MINUS_7));
        assert_eq!(ts("[27/Nov/2026:08:59:15 +0200]"), Some(T0));
        assert_eq!(ts("[27/Nov/2026:06:59:15]"), None);
    }

    #[test]
    fn first_timestamp_in_line_wins() {
        assert_eq!(
            ts("a 2026-11-27T06:59:15Z b 2020-01-01T00:00:00Z"),
            Some(T0)
        );
    }

    #[test]
    fn syslog_rfc3164_is_not_recognised_even_with_a_later_date() {
        assert_eq!(ts("Nov 27 06:59:15 host sshd[1]: Accepted"), None);
        assert_eq!(ts("<34>Nov  7 06:59:15 h a: 2026-11-27T06:59:15Z"), None);
    }

    #[test]
    fn leap_day_accepted_only_in_leap_year() {
        assert_eq!(ts("2024-02-29T12:00:00Z"), Some(1_709_208_000_000));
        assert_eq!(ts("2026-02-29T12:00:00Z"), None);
        assert_eq!(ts("[29/Feb/2026:12:00:00 +0000]"), None);
    }

    #[test]
    fn invalid_month_day_hour_minute_second_are_rejected() {
        let bad = "13-27T06:59:15 00-27T06:59:15 11-31T06:59:15 11-27T24:00:00 11-27T06:60:15";
        for b in bad.split(' ').chain(["11-27T06:59:61", "11-27T06:59"]) {
            assert_eq!(ts(&format!("2026-{b}Z")), None, "{b}");
        }
        assert_eq!(ts("[27/Foo/2026:06:59:15 +0000]"), None);
        assert_eq!(ts("[27/Nov/2026:06:59:15 +2400]"), None);
    }

    #[test]
    fn leap_second_counts_as_next_second() {
        assert_eq!(ts("2016-12-31T23:59:60Z"), Some(1_483_228_800_000));
    }

    #[test]
    fn timestamp_past_or_across_byte_128_is_ignored() {
        let pad = |n: usize, rest: &str| format!("{}{rest}", "x".repeat(n));
        assert_eq!(ts(&pad(128, "2026-11-27T06:59:15Z")), None);
        for n in [106, 109, 110] {
            assert_eq!(ts(&pad(n, "2026-11-27T06:59:15+02:00 tail")), None, "{n}");
        }
        assert_eq!(ts(&pad(100, "[27/Nov/2026:06:59:15 +0000]tail")), Some(T0));
        assert_eq!(ts(&pad(99, "2026-11-27T06:59:15Z tail of it")), Some(T0));
    }

    #[test]
    fn plain_lines_have_no_timestamp() {
        assert_eq!(ts(""), None);
        assert_eq!(ts("    at Main.run(Main.java:42)"), None);
        assert_eq!(ts("12026-11-27T06:59:15Z"), None);
        assert_eq!(ts("2026-11-27 no time"), None);
    }

    #[test]
    fn invalid_utf8_and_random_bytes_never_panic() {
        let mut line = b"\xff\xfe2026-11-27T06:59:15Z\xc3".to_vec();
        assert_eq!(line_timestamp_ms(&line), Some(T0));
        let alphabet = b"0123456789-:T Z+.,/[]NovJanFeb\xff";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.clear();
            for k in 0..(x % 200) {
                let r = x.rotate_left(u32::try_from(k * 7 % 64).unwrap()) ^ k;
                let pick = alphabet[usize::try_from(r >> 1).unwrap() % alphabet.len()];
                line.push(if r & 1 == 0 { pick } else { r.to_le_bytes()[1] });
            }
            let _ = line_timestamp_ms(&line);
            let _ = arg_ms(&String::from_utf8_lossy(&line), x.cast_signed());
        }
    }

    #[test]
    fn days_from_civil_known_values_and_no_panic_on_extremes() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
        let _ = days_from_civil(i64::MIN, 1, u32::MAX);
        let _ = days_from_civil(i64::MAX, u32::MAX, 0);
    }

    #[test]
    fn simple_and_compound_durations_count_back_from_now() {
        assert_eq!(arg_ms("90s", T0), Ok(T0 - 90_000));
        assert_eq!(arg_ms("10m", T0), Ok(T0 - 600_000));
        assert_eq!(arg_ms("2h", T0), Ok(T0 - 7_200_000));
        assert_eq!(arg_ms(" 1d ", T0), Ok(T0 - 86_400_000));
        assert_eq!(arg_ms("1h30m", T0), Ok(T0 - 5_400_000));
        assert_eq!(arg_ms("1d2h3m4s", T0), Ok(T0 - 93_784_000));
    }

    /// Issue 17 item 6: `--ttl` accepted "1h 30m" and `--since` refused it.
    #[test]
    fn since_reads_durations_in_the_same_grammar_as_ttl() {
        assert_eq!(arg_ms("1h 30m", T0), Ok(T0 - 5_400_000));
        assert_eq!(arg_ms("1 hour 30 minutes", T0), Ok(T0 - 5_400_000));
        assert_eq!(arg_ms("250ms", T0), Ok(T0 - 250));
        // The same mistake, the same sentence as the duration grammar's.
        for mistake in ["1h30x", "-5m", "99999999999999999999d", "1y"] {
            let as_time = arg_ms(mistake, T0).expect_err(mistake).to_string();
            let as_duration = crate::duration::parse(mistake)
                .expect_err(mistake)
                .to_string();
            assert!(
                as_time.starts_with(&as_duration),
                "{as_time} / {as_duration}"
            );
        }
    }

    #[test]
    fn absolute_forms_parse_to_known_epochs() {
        let at = |arg: &str| arg_ms(arg, 0);
        assert_eq!(at("2026-11-27T07:00:00Z"), Ok(1_795_762_800_000));
        assert_eq!(at("2026-11-27T07:00:00.5+01:00"), Ok(1_795_759_200_500));
        assert_eq!(at("2026-11-27 07:00:00"), Ok(1_795_762_800_000));
        assert_eq!(at("2026-11-27T07:00"), Ok(1_795_762_800_000));
        assert_eq!(at("2026-11-27"), Ok(1_795_737_600_000));
        assert_eq!(at("1969-12-31T23:59:59.5Z"), Ok(-500));
    }

    #[test]
    fn absolute_times_alone_are_read_for_certificate_validity() {
        let t = parse_absolute_time("2026-11-27T07:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
            1_795_762_800_000
        );
        assert!(parse_absolute_time("2026-11-27 07:00").is_ok());
        for bad in ["10m", "yesterday", "2026-02-30", ""] {
            assert!(parse_absolute_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_arguments_give_helpful_errors() {
        let not_times = "yesterday|m|2026-02-29|2026-11-27T25:00|2026-11-27T07:00+1";
        for arg in not_times.split('|').chain(["2026-11-27T07:00:00Z junk"]) {
            let msg = arg_ms(arg, T0).expect_err(arg).to_string();
            let start = format!("{arg:?} is not a recognised time; use a duration");
            assert!(msg.starts_with(&start) && msg.contains("1h30m"), "{msg}");
        }
        for arg in ["10x", "10", "30m1h", "1m1m"] {
            let msg = arg_ms(arg, T0).expect_err(arg).to_string();
            let start = format!("{arg:?} is not a duration; write a duration such as");
            assert!(msg.starts_with(&start) && msg.contains("RFC 3339"), "{msg}");
        }
        let msg = arg_ms("-5m", T0).expect_err("-5m").to_string();
        assert!(msg.starts_with("\"-5m\" is negative"), "{msg}");
        for empty in ["", "  "] {
            let msg = arg_ms(empty, T0).expect_err(empty).to_string();
            assert!(msg.starts_with("an empty value is not a recognised time; use a"));
        }
    }

    #[test]
    fn overflowing_numbers_are_errors_not_panics() {
        for arg in ["99999999999999999999d", "9223372036854775807s"] {
            let msg = arg_ms(arg, T0).expect_err(arg).to_string();
            assert!(msg.contains("is out of range; write a duration"), "{msg}");
        }
        let msg = arg_ms("1s", i64::MIN).unwrap_err().to_string();
        assert!(msg.contains("reaches too far back"), "{msg}");
        let long = "9".repeat(10_000);
        assert!(arg_ms(&long, T0).expect_err("long").to_string().len() < 500);
    }
}
