//! Validators: the checks that turn a shape into a finding. A regex finds candidates; these decide
//! whether a candidate is the real thing (Luhn and issuer ranges for cards, mod-97 for IBANs, the
//! SSA's rules for SSNs, a JSON header for JWTs…). Precision lives here: without them a redactor
//! rewrites every timestamp, id and version string (see `shared/notes/redaction.md`).
//!
//! Every function takes untrusted bytes and never panics on any input.

use serde::Deserialize;

/// The built-in validators a custom detector may name (`validator = "luhn"` in a profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// Luhn checksum over the digits (spaces and dashes ignored).
    Luhn,
    /// Luhn, and an issuer prefix whose card lengths include this one.
    Card,
    /// IBAN: known country, its length, mod-97 = 1 (spaces ignored).
    Iban,
    /// US SSN `AAA-GG-SSSS` or 9 digits: area not 000/666/9xx, group not 00, serial not 0000.
    Ssn,
    /// A dotted quad with every octet ≤ 255.
    Ipv4,
    /// An IPv6 address as `std` parses it.
    Ipv6,
    /// A JWT whose header is base64url JSON naming an `alg`.
    Jwt,
}

impl Validator {
    pub fn check(self, value: &[u8]) -> bool {
        match self {
            Validator::Luhn => {
                let digits = digits_of(value);
                digits.as_ref().is_some_and(|d| d.len() >= 2 && luhn(d))
            }
            Validator::Card => digits_of(value).is_some_and(|d| card_number(&d)),
            Validator::Iban => iban(value),
            Validator::Ssn => {
                let d: Vec<u8> = value.iter().copied().filter(|b| *b != b'-').collect();
                d.len() == 9
                    && d.iter().all(u8::is_ascii_digit)
                    && ssn_parts(&d[0..3], &d[3..5], &d[5..9])
            }
            Validator::Ipv4 => dotted_quad(value),
            Validator::Ipv6 => std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
                .is_some(),
            Validator::Jwt => jwt(value),
        }
    }
}

/// Whether `value` is an IPv4 address as `std` parses one (`Ipv4Addr::from_str`): four parts
/// joined by dots, each one to three digits of at most 255, with no leading zero (`01` is
/// refused: it reads as octal elsewhere), nothing before or after. By hand, not through
/// `from_utf8` and the parser: the IPv4 scan validates every quad it finds (7,900 on the
/// benchmark's 20 MB slice, about 300 instructions each through `std`).
/// `dotted_quad_equals_the_std_parser` compares it with `std` on every form.
fn dotted_quad(value: &[u8]) -> bool {
    // Dots seen, and the current part's value and digits.
    let (mut dots, mut octet, mut digits) = (0u32, 0u32, 0u32);
    for &b in value {
        match b {
            b'0'..=b'9' => {
                // A digit after a leading zero, a fourth digit, or above 255.
                if digits == 1 && octet == 0 {
                    return false;
                }
                octet = octet * 10 + u32::from(b - b'0');
                digits += 1;
                if digits > 3 || octet > 255 {
                    return false;
                }
            }
            b'.' if digits > 0 && dots < 3 => (dots, octet, digits) = (dots + 1, 0, 0),
            _ => return false,
        }
    }
    dots == 3 && digits > 0
}

/// The ASCII digits of `value`, if it holds only digits, spaces and dashes.
fn digits_of(value: &[u8]) -> Option<Vec<u8>> {
    let mut d = Vec::with_capacity(value.len());
    for b in value {
        match b {
            b'0'..=b'9' => d.push(*b),
            b' ' | b'-' => {}
            _ => return None,
        }
    }
    Some(d)
}

/// Luhn checksum over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut v = u32::from(b - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The number formed by the first `n` digits (0 when there are fewer).
fn prefix(digits: &[u8], n: usize) -> u32 {
    if digits.len() < n {
        return 0;
    }
    digits[..n]
        .iter()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b.wrapping_sub(b'0')))
}

/// Whether an issuer uses this prefix with this length. Luhn alone passes one random digit run
/// in ten (and one 13-digit epoch-ms timestamp in ten); no issuer starts a 13-digit card with 1.
pub fn plausible_issuer(digits: &[u8]) -> bool {
    // Every rule below starts with 2, 3, 4, 5 or 6: a run starting with another digit (most
    // of a log's 13-digit runs are epoch-ms timestamps, `17…`) is turned down before the
    // prefixes are parsed (`issuer_first_digit_test_changes_no_answer`).
    matches!(digits.first(), Some(b'2'..=b'6')) && issuer_rules(digits)
}

/// The issuers' prefix and length rules of [`plausible_issuer`].
fn issuer_rules(digits: &[u8]) -> bool {
    let len = digits.len();
    let (p1, p2, p3, p4) = (
        prefix(digits, 1),
        prefix(digits, 2),
        prefix(digits, 3),
        prefix(digits, 4),
    );
    let in_range = |lo: usize, hi: usize| (lo..=hi).contains(&len);
    (p1 == 4 && matches!(len, 13 | 16 | 19)) // Visa
        || ((51..=55).contains(&p2) && len == 16) // Mastercard
        || ((2221..=2720).contains(&p4) && len == 16) // Mastercard 2-series
        || ((2200..=2204).contains(&p4) && in_range(16, 19)) // Mir
        || (matches!(p2, 34 | 37) && len == 15) // American Express
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && in_range(16, 19)) // Discover
        || (p2 == 62 && in_range(16, 19)) // UnionPay
        || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && in_range(14, 19)) // Diners
        || ((3528..=3589).contains(&p4) && in_range(16, 19)) // JCB
        || ((matches!(p2, 50 | 56 | 57 | 58) || matches!(p4, 6304 | 6759 | 6761 | 6762 | 6763))
            && in_range(13, 19)) // Maestro
}

/// A payment card number: 13–19 digits, Luhn-valid, plausible issuer and length.
pub fn card_number(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && plausible_issuer(digits) && luhn(digits)
}

/// IBAN lengths by country (SWIFT IBAN registry). Unknown countries are not IBANs.
pub fn iban_length(country: &[u8]) -> Option<usize> {
    const TABLE: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NL", 18),
        (b"NO", 15),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"SA", 24),
        (b"SC", 31),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
    ];
    TABLE
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|(_, n)| *n)
}

/// IBAN check: known country and length, mod-97 = 1. Spaces are ignored.
pub fn iban(value: &[u8]) -> bool {
    let compact: Vec<u8> = value.iter().copied().filter(|b| *b != b' ').collect();
    if compact.len() < 4 || iban_length(&compact[..2]) != Some(compact.len()) {
        return false;
    }
    if !compact[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut rem: u32 = 0;
    for b in compact[4..].iter().chain(&compact[..4]) {
        match b {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return false,
        }
    }
    rem == 1
}

/// US SSN rules: area not 000, 666 or 900–999; group not 00; serial not 0000.
pub fn ssn_parts(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    let a = prefix(area, 3);
    area.len() == 3
        && group.len() == 2
        && serial.len() == 4
        && a != 0
        && a != 666
        && a < 900
        && group != b"00"
        && serial != b"0000"
}

/// Decodes base64 (standard or URL alphabet, padding optional). `None` if it is not base64.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let body = input
        .strip_suffix(b"==")
        .or_else(|| input.strip_suffix(b"="))
        .unwrap_or(input);
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in body {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A JWT/JWS/JWE: its first segment is base64url JSON naming an `alg`.
pub fn jwt(value: &[u8]) -> bool {
    let header = value.split(|b| *b == b'.').next().unwrap_or(value);
    base64_decode(header)
        .is_some_and(|h| h.first() == Some(&b'{') && memchr::memmem::find(&h, b"\"alg\"").is_some())
}

/// `Basic` credentials: base64 of printable `user:password`.
pub fn basic_credentials(value: &[u8]) -> bool {
    base64_decode(value).is_some_and(|d| {
        d.len() >= 3 && d.contains(&b':') && d.iter().all(|b| (0x20..0x7f).contains(b))
    })
}

/// Whether a word looks like a credential rather than an English word: a digit or a symbol in
/// it, or long and mixed-case. Keeps "bearer authentication" while catching `bearer 9f8e…`.
pub fn token_like(value: &[u8]) -> bool {
    let has_digit = value.iter().any(u8::is_ascii_digit);
    let has_symbol = value
        .iter()
        .any(|b| matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'-'));
    let mixed =
        value.iter().any(u8::is_ascii_uppercase) && value.iter().any(u8::is_ascii_lowercase);
    has_digit || has_symbol || (value.len() >= 20 && mixed)
}

/// CRC-32 (IEEE 802.3, the zlib one) of `data`; bitwise: it only runs on token candidates.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `n` in base62 (`0-9A-Za-z`), left-padded with `0` to six characters (a CRC-32 needs six).
fn base62_6(mut n: u32) -> [u8; 6] {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// GitHub's (and npm's) token checksum: the last six characters of `body` (the token after
/// its prefix) are the CRC-32 of the characters before them, in base62, left-padded with `0`
/// (GitHub blog, "Behind GitHub's new authentication token formats", 2021-04-05).
pub fn crc32_base62_tail(body: &[u8]) -> bool {
    let Some(split) = body.len().checked_sub(6) else {
        return false;
    };
    split > 0 && base62_6(crc32(&body[..split])) == body[split..]
}

/// A bech32 string (BIP-173) in upper case, `HRP1DATA`, whose checksum holds: what an age
/// secret key (`AGE-SECRET-KEY-1…`) is.
pub fn bech32_upper(s: &[u8]) -> bool {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let Some(sep) = s.iter().rposition(|b| *b == b'1') else {
        return false;
    };
    let (hrp, data) = (&s[..sep], &s[sep + 1..]);
    if hrp.is_empty() || data.len() < 6 || s.iter().any(u8::is_ascii_lowercase) {
        return false;
    }
    let mut chk = 1u32;
    let mut step = |v: u32| {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ v;
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    };
    for c in hrp {
        if !(33..=126).contains(c) {
            return false;
        }
        step(u32::from(c.to_ascii_lowercase() >> 5));
    }
    step(0);
    for c in hrp {
        step(u32::from(c.to_ascii_lowercase() & 31));
    }
    for c in data {
        let Some(v) = CHARSET.iter().position(|x| *x == c.to_ascii_lowercase()) else {
            return false;
        };
        step(v as u32);
    }
    chk == 1
}

/// `%XX` escapes decoded; `None` for a `%` not followed by two hex digits.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = hex(*s.get(i + 1)?)?;
            let lo = hex(*s.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A lowercase UUID `8-4-4-4-12`.
pub fn uuid_lower(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
}

/// A phone number the `phone` detector found: 8 to 15 digits (E.164's limits; a North
/// American number has 10), not one digit repeated (`+11111111` is a placeholder).
pub fn phone(value: &[u8]) -> bool {
    let digits: Vec<u8> = value.iter().copied().filter(u8::is_ascii_digit).collect();
    (8..=15).contains(&digits.len()) && digits.iter().any(|d| *d != digits[0])
}

/// A MAC address worth hiding: not all zeros and not the broadcast address (neither names a
/// device).
pub fn mac_address(value: &[u8]) -> bool {
    let hex: Vec<u8> = value
        .iter()
        .filter(|b| b.is_ascii_hexdigit())
        .map(u8::to_ascii_lowercase)
        .collect();
    hex.len() == 12 && hex.iter().any(|b| *b != b'0') && hex.iter().any(|b| *b != b'f')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_ipv4(value: &[u8]) -> bool {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
            .is_some()
    }

    /// The hand-written IPv4 check answers as `std`'s parser on every part from `0` to `9999`
    /// written with up to two leading zeros, in each of the four places (the others valid),
    /// and on two to five parts, empty parts, signs, spaces and bytes above ASCII.
    #[test]
    fn dotted_quad_equals_the_std_parser() {
        let mut parts: Vec<String> = Vec::new();
        for n in 0..10_000u32 {
            parts.push(n.to_string());
            parts.push(format!("0{n}"));
            parts.push(format!("00{n}"));
        }
        parts.extend(
            ["", "+1", "-1", " 1", "1 ", "a", "1a", "٣", "\u{ff}", "0x1"].map(String::from),
        );
        let mut valid = 0;
        for part in &parts {
            for place in 0..4 {
                let mut quad = ["10", "0", "255", "7"].map(String::from);
                quad[place] = part.clone();
                let v = quad.join(".");
                assert_eq!(dotted_quad(v.as_bytes()), std_ipv4(v.as_bytes()), "{v}");
                valid += usize::from(dotted_quad(v.as_bytes()));
            }
        }
        // 0..=255 without a leading zero, in each of the four places.
        assert_eq!(valid, 256 * 4);
        for v in [
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "",
            ".",
            "...",
            "1.2.3.4\n",
        ] {
            assert_eq!(dotted_quad(v.as_bytes()), std_ipv4(v.as_bytes()), "{v}");
        }
        assert!(!dotted_quad(&[b'1', b'.', 0xff, b'.', b'3', b'.', b'4']));
    }

    proptest::proptest! {
        /// On random strings of digits and dots (and a few other bytes), the hand-written
        /// IPv4 check answers as `std`'s parser.
        #[test]
        fn dotted_quad_equals_the_std_parser_on_random_text(
            v in proptest::collection::vec(proptest::sample::select(
                b"0123456789....0125 a+\xff".to_vec()), 0..20),
        ) {
            proptest::prop_assert_eq!(dotted_quad(&v), std_ipv4(&v));
        }
    }

    #[test]
    fn luhn_accepts_test_cards_and_rejects_a_changed_digit() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
    }

    /// The first-digit test before the rules turns down only what the rules turn down: every
    /// four-digit start, every length around a card's, and the digit runs shorter than four.
    #[test]
    fn issuer_first_digit_test_changes_no_answer() {
        let mut allowed = 0;
        for start in 0..10_000u32 {
            let head = format!("{start:04}");
            for len in 0..=21 {
                let digits: Vec<u8> = head
                    .bytes()
                    .chain(std::iter::repeat(b'0'))
                    .take(len)
                    .collect();
                assert_eq!(
                    plausible_issuer(&digits),
                    issuer_rules(&digits),
                    "{}",
                    String::from_utf8_lossy(&digits)
                );
                allowed += usize::from(issuer_rules(&digits));
            }
        }
        // The rules do allow something, so the comparison above is not of two constants.
        assert!(allowed > 10_000);
    }

    #[test]
    fn issuer_rules_reject_epoch_ms_timestamps_even_when_luhn_valid() {
        // 1732693762004 is Luhn-valid, 13 digits, and a timestamp (2024-11-27).
        assert!(luhn(b"1732693762004"));
        assert!(!card_number(b"1732693762004"));
        assert!(card_number(b"4222222222222"));
        assert!(card_number(b"5555555555554444"));
        assert!(card_number(b"2223003122003222"));
        assert!(card_number(b"6011111111111117"));
        assert!(card_number(b"3530111333300000"));
        assert!(card_number(b"30569309025904"));
    }

    #[test]
    fn iban_needs_known_country_length_and_mod97() {
        assert!(iban(b"DE89370400440532013000"));
        assert!(iban(b"GB82 WEST 1234 5698 7654 32"));
        assert!(!iban(b"DE89370400440532013001"));
        assert!(!iban(b"DE8937040044053201300"));
        assert!(!iban(b"ZZ89370400440532013000"));
    }

    #[test]
    fn ssn_rules_reject_reserved_areas_groups_and_serials() {
        assert!(ssn_parts(b"123", b"45", b"6789"));
        for (a, g, s) in [
            ("000", "45", "6789"),
            ("666", "45", "6789"),
            ("912", "45", "6789"),
            ("123", "00", "6789"),
            ("123", "45", "0000"),
        ] {
            assert!(
                !ssn_parts(a.as_bytes(), g.as_bytes(), s.as_bytes()),
                "{a}-{g}-{s}"
            );
        }
    }

    #[test]
    fn base64_decodes_padded_unpadded_and_url_alphabets() {
        assert_eq!(
            base64_decode(b"dXNlcjpwYXNz").as_deref(),
            Some(&b"user:pass"[..])
        );
        assert_eq!(base64_decode(b"YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode(b"YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode(b"a"), None);
        assert_eq!(base64_decode(b"a*bc"), None);
    }

    #[test]
    fn phone_needs_e164_length_and_more_than_one_digit() {
        assert!(phone(b"+4930123456"));
        assert!(phone(b"(415) 555-0132"));
        assert!(!phone(b"+1234567"));
        assert!(!phone(b"+1111111111"));
        assert!(!phone(b"+1234567890123456"));
    }

    #[test]
    fn mac_address_is_not_all_zeros_or_broadcast() {
        assert!(mac_address(b"3c:22:fb:12:ab:9e"));
        assert!(mac_address(b"3C-22-FB-12-AB-9E"));
        assert!(!mac_address(b"00:00:00:00:00:00"));
        assert!(!mac_address(b"ff:ff:ff:ff:ff:ff"));
    }

    #[test]
    fn basic_credentials_need_a_colon_and_printable_text() {
        assert!(basic_credentials(b"dXNlcjpwYXNz"));
        assert!(!basic_credentials(b"authentication"));
    }
}
