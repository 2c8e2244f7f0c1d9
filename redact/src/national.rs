//! National identifiers that carry a checksum: the opt-in detectors `passport_mrz`, `nl_bsn`,
//! `br_cpf`, `br_cnpj`, `in_aadhaar`, `ca_sin`, `es_dni`, `es_nie`, `it_codice_fiscale`,
//! `fr_nir`, `uk_nhs`, `de_tax_id` and `be_national_number`.
//!
//! Why opt-in: most of these are runs of 9 to 15 digits, and a log is full of such runs (ids,
//! counters, sizes, timestamps). A check digit keeps only one run in 10 to 100, so on a log of
//! numbers a detector still rewrites some ids that are not national ids. A profile names the
//! ones its hosts' data can hold (`detectors = ["nl_bsn", …]`); the `default` profile never
//! runs them, so its speed does not change.
//!
//! The contract of each detector: a value is found only in one of its documented written forms
//! (the templates of [`NationalId::forms`]), standing alone (not glued to a letter, a digit,
//! `_` or `<`, not hyphenated to a word (a UUID's groups), nor part of a longer number joined
//! by `.`, `-`, `/`, `:` or `,`), and only when its check digits (and the structure its
//! issuer documents: date fields, issued ranges) hold. Values made of one repeated digit pass
//! several of these checksums and are never real: they are refused.
//!
//! The detectors hold no state and see one segment of one line; a TD1 passport zone spans three
//! lines, so its first two lines are each checked on their own (their own check digits).
//! National detectors have no bit in the prefilter's candidate set (it is full of token
//! families): the redactor runs the ones a profile names on every segment with enough digits,
//! all of them in one pass ([`Scan`]).

use super::family::is_word;
use super::validate;

mod scan;
pub(crate) use scan::Scan;

/// One national-identifier detector. Its place in [`ALL`] is its number after the other
/// built-in detectors (`Builtin::as_national`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NationalId {
    /// Passport and identity-card machine-readable zones: ICAO 9303 TD3 line 2, TD1 lines 1–2.
    PassportMrz,
    /// Dutch citizen service number (burgerservicenummer), 9 digits, 11-proof.
    NlBsn,
    /// Brazilian individual taxpayer number (CPF), 11 digits, two mod-11 check digits.
    BrCpf,
    /// Brazilian company number (CNPJ), 14 digits, two mod-11 check digits.
    BrCnpj,
    /// Indian Aadhaar number, 12 digits, Verhoeff, not starting with 0 or 1.
    InAadhaar,
    /// Canadian social insurance number, 9 digits, Luhn.
    CaSin,
    /// Spanish national identity document number, 8 digits and a check letter (mod 23).
    EsDni,
    /// Spanish foreigner identity number, X/Y/Z, 7 digits and a check letter (mod 23).
    EsNie,
    /// Italian fiscal code, 16 characters, check character.
    ItCodiceFiscale,
    /// French social security number (NIR), 15 digits, key 97 − (n mod 97).
    FrNir,
    /// UK NHS number (England, Wales, Isle of Man, Northern Ireland), 10 digits, mod 11.
    UkNhs,
    /// German tax identification number (Steuer-IdNr), 11 digits, ISO 7064 MOD 11,10.
    DeTaxId,
    /// Belgian national register number, 11 digits, mod 97.
    BeNationalNumber,
}

/// Every national detector, in the order `--list-detectors` prints them.
pub const ALL: [NationalId; 13] = [
    NationalId::PassportMrz,
    NationalId::NlBsn,
    NationalId::BrCpf,
    NationalId::BrCnpj,
    NationalId::InAadhaar,
    NationalId::CaSin,
    NationalId::EsDni,
    NationalId::EsNie,
    NationalId::ItCodiceFiscale,
    NationalId::FrNir,
    NationalId::UkNhs,
    NationalId::DeTaxId,
    NationalId::BeNationalNumber,
];

// Template bytes of a written form: a class of one byte, or else the literal byte itself
// (only `.`, `-`, `/` and ` ` occur as literals).
/// A digit.
const DIGIT: u8 = b'9';
/// A letter, either case (a typed check letter is often lower case; values are compared
/// upper-cased, see [`compact`]).
const LETTER: u8 = b'A';
/// A digit or the letter that replaces it in an Italian fiscal code (omocodia: L…V for 0…9).
const OMOCODE: u8 = b'O';
/// A machine-readable-zone character: `A`–`Z`, `0`–`9`, `<`.
const MRZ: u8 = b'M';
/// A machine-readable-zone letter or filler: `A`–`Z`, `<`.
const MRZ_ALPHA: u8 = b'C';
/// A digit or the filler `<`.
const DIGIT_OR_FILLER: u8 = b'#';
/// The sex field of a machine-readable zone: `M`, `F`, `X`, `<`.
const SEX: u8 = b'S';
/// The first letter of a TD1 document code: `A`, `C`, `I`.
const TD1_CODE: u8 = b'D';
/// A digit, or `A`/`B` (a French NIR's Corsican department 2A/2B).
const NIR_DEPT: u8 = b'K';
/// The first letter of a Spanish NIE: `X`, `Y`, `Z`.
const NIE_LEAD: u8 = b'N';

/// The omocodia letters of an Italian fiscal code, standing for 0…9.
const OMOCODIA: &[u8; 10] = b"LMNPQRSTUV";

fn class_has(class: u8, b: u8) -> bool {
    match class {
        DIGIT => b.is_ascii_digit(),
        LETTER => b.is_ascii_alphabetic(),
        OMOCODE => b.is_ascii_digit() || OMOCODIA.contains(&b.to_ascii_uppercase()),
        MRZ => b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'<',
        MRZ_ALPHA => b.is_ascii_uppercase() || b == b'<',
        DIGIT_OR_FILLER => b.is_ascii_digit() || b == b'<',
        SEX => matches!(b, b'M' | b'F' | b'X' | b'<'),
        TD1_CODE => matches!(b, b'A' | b'C' | b'I'),
        NIR_DEPT => b.is_ascii_digit() || b == b'A' || b == b'B',
        NIE_LEAD => matches!(b.to_ascii_uppercase(), b'X' | b'Y' | b'Z'),
        literal => b == literal,
    }
}

impl NationalId {
    /// The detector's name in configuration, in `[REDACTED:name]` and in audit counts.
    pub fn name(self) -> &'static str {
        match self {
            NationalId::PassportMrz => "passport_mrz",
            NationalId::NlBsn => "nl_bsn",
            NationalId::BrCpf => "br_cpf",
            NationalId::BrCnpj => "br_cnpj",
            NationalId::InAadhaar => "in_aadhaar",
            NationalId::CaSin => "ca_sin",
            NationalId::EsDni => "es_dni",
            NationalId::EsNie => "es_nie",
            NationalId::ItCodiceFiscale => "it_codice_fiscale",
            NationalId::FrNir => "fr_nir",
            NationalId::UkNhs => "uk_nhs",
            NationalId::DeTaxId => "de_tax_id",
            NationalId::BeNationalNumber => "be_national_number",
        }
    }

    /// What it finds, in which forms, and its check: the `finds` column of `--list-detectors`.
    pub fn what(self) -> &'static str {
        match self {
            NationalId::PassportMrz => "passport/ID machine-readable zones: TD3 line 2 (44 chars: document number, birth and expiry dates, 7-3-1 check digits and the composite check), TD1 lines 1 and 2 (30 chars, their check digits; line 1 holds a < filler)",
            NationalId::NlBsn => "Dutch BSN: 9 digits (123456782, 1234.56.782), 11-proof",
            NationalId::BrCpf => "Brazilian CPF: 123.456.789-09 or 11 digits, two mod-11 check digits",
            NationalId::BrCnpj => "Brazilian CNPJ: 11.222.333/0001-81 or 14 digits, two mod-11 check digits",
            NationalId::InAadhaar => "Indian Aadhaar: 1234 5678 9012, 1234-5678-9012 or 12 digits, first digit 2–9, Verhoeff (bare: not a yyyymmddhhmm timestamp)",
            NationalId::CaSin => "Canadian SIN: 123 456 789, 123-456-789 or 9 digits, Luhn, first digit 1–7 or 9",
            NationalId::EsDni => "Spanish DNI: 12345678Z or 12345678-Z, check letter mod 23",
            NationalId::EsNie => "Spanish NIE: X1234567L or X-1234567-L (X, Y, Z), check letter mod 23",
            NationalId::ItCodiceFiscale => "Italian codice fiscale: 16 characters (RSSMRA85T10A562S, omocodia letters too), month letter, day, check character",
            NationalId::FrNir => "French NIR: 15 digits or 2 55 08 14 168 025 38, sex 1–4/7/8, month, Corsica 2A/2B, key 97 − (n mod 97)",
            NationalId::UkNhs => "UK NHS number: 401 023 2137 or 10 digits, mod 11, issued ranges (first digit 3, 4, 6, 7)",
            NationalId::DeTaxId => "German Steuer-IdNr: 11 digits or 86 095 742 719, one digit repeated 2–3 times in the first 10, ISO 7064 MOD 11,10",
            NationalId::BeNationalNumber => "Belgian national number: 85.07.30-033.28 or 11 digits, date fields, 97 − (n mod 97) (births from 2000 too)",
        }
    }

    /// The issuing authority's specification the detector follows: the `source` column.
    pub fn source(self) -> &'static str {
        match self {
            NationalId::PassportMrz => "ICAO Doc 9303 'Machine Readable Travel Documents' (8th ed., 2021): Part 3 §4.9 check digits, Part 4 (TD3), Part 5 (TD1)",
            NationalId::NlBsn => "Rijksoverheid / Logius 'Burgerservicenummer (BSN)': 9 digits, elfproef (Wet algemene bepalingen burgerservicenummer)",
            NationalId::BrCpf => "Receita Federal do Brasil 'Cadastro de Pessoas Físicas (CPF)': 9 digits + 2 mod-11 check digits",
            NationalId::BrCnpj => "Receita Federal do Brasil 'Cadastro Nacional da Pessoa Jurídica (CNPJ)': 12 digits + 2 mod-11 check digits (numeric form)",
            NationalId::InAadhaar => "UIDAI (Unique Identification Authority of India) 'Aadhaar number': 12 digits, Verhoeff check digit",
            NationalId::CaSin => "Employment and Social Development Canada, Social Insurance Number: 9 digits, Luhn (mod 10) check, first digit by province (0 and 8 not issued to people)",
            NationalId::EsDni => "Ministerio del Interior, Real Decreto 1553/2005 (DNI): 8 digits + letter = 'TRWAGMYFPDXBNJZSQVHLCKE'[n mod 23]",
            NationalId::EsNie => "Ministerio del Interior, Orden INT/2058/2008 (NIE): X/Y/Z (0/1/2) + 7 digits + the DNI check letter",
            NationalId::ItCodiceFiscale => "Decreto del Ministero delle Finanze 23 dicembre 1976 (Agenzia delle Entrate 'Codice fiscale'): check character from odd/even position tables mod 26",
            NationalId::FrNir => "INSEE 'Numéro d'inscription au répertoire (NIR)': 13 digits + key 97 − (n mod 97), Corsica 2A → 19, 2B → 18",
            NationalId::UkNhs => "NHS Data Dictionary 'NHS Number': 10 digits, Modulus 11 check digit (weights 10…2)",
            NationalId::DeTaxId => "§ 139b Abgabenordnung and Steueridentifikationsnummerverordnung (BZSt): 11 digits, check digit ISO/IEC 7064 MOD 11,10",
            NationalId::BeNationalNumber => "Belgian National Register (Rijksregister / Registre national, law of 8 August 1983): yymmdd + 3 + 97 − (n mod 97), 2 prefixed from 2000",
        }
    }

    /// The documented written forms, as templates (see the class constants above): each
    /// template byte is a class or the literal separator itself.
    fn forms(self) -> &'static [&'static [u8]] {
        match self {
            NationalId::PassportMrz => &[
                // TD3 line 2: number, check, nationality, birth, check, sex, expiry, check,
                // personal number, check, composite check.
                b"MMMMMMMMM9CCC9999999S9999999MMMMMMMMMMMMMM#9",
                // TD1 line 1: document code, state, number, check, optional data.
                b"DCCCCMMMMMMMMM9MMMMMMMMMMMMMMM",
                // TD1 line 2: birth, check, sex, expiry, check, nationality, optional, composite.
                b"9999999S9999999CCCMMMMMMMMMMM9",
            ],
            NationalId::NlBsn => &[b"999999999", b"9999.99.999"],
            NationalId::BrCpf => &[b"999.999.999-99", b"99999999999"],
            NationalId::BrCnpj => &[b"99.999.999/9999-99", b"99999999999999"],
            NationalId::InAadhaar => &[b"9999 9999 9999", b"9999-9999-9999", b"999999999999"],
            NationalId::CaSin => &[b"999 999 999", b"999-999-999", b"999999999"],
            NationalId::EsDni => &[b"99999999A", b"99999999-A"],
            NationalId::EsNie => &[b"N9999999A", b"N-9999999-A"],
            NationalId::ItCodiceFiscale => &[b"AAAAAAOOAOOAOOOA"],
            NationalId::FrNir => &[b"99999KK99999999", b"9 99 99 KK 999 999 99"],
            NationalId::UkNhs => &[b"999 999 9999", b"9999999999"],
            NationalId::DeTaxId => &[b"99999999999", b"99 999 999 999"],
            NationalId::BeNationalNumber => &[b"99.99.99-999.99", b"99999999999"],
        }
    }

    /// Whether the bytes of one of its forms (`value`, separators included) are a real one.
    pub(crate) fn valid(self, value: &[u8]) -> bool {
        let mut buf = [0u8; 44];
        // A bare number (most candidates) is already compact: no copy.
        let c = if value.iter().all(u8::is_ascii_digit) {
            value
        } else {
            match compact(value, &mut buf) {
                Some(c) => c,
                None => return false,
            }
        };
        match self {
            NationalId::PassportMrz => mrz_line(c),
            NationalId::NlBsn => not_one_digit(c) && bsn(c),
            NationalId::BrCpf => not_one_digit(c) && cpf(c),
            NationalId::BrCnpj => {
                let bare = value.len() == 14;
                not_one_digit(c) && cnpj(c) && !(bare && timestamp_yyyymmddhhmmss(c))
            }
            NationalId::InAadhaar => {
                let bare = value.len() == 12;
                c.len() == 12
                    && not_one_digit(c)
                    && matches!(c[0], b'2'..=b'9')
                    && verhoeff(c)
                    && !(bare && timestamp_yyyymmddhhmm(c))
            }
            NationalId::CaSin => {
                c.len() == 9
                    && not_one_digit(c)
                    && matches!(c[0], b'1'..=b'7' | b'9')
                    && validate::luhn(c)
            }
            NationalId::EsDni => {
                c.len() == 9 && not_one_digit(&c[..8]) && dni_letter(&c[..8]) == Some(c[8])
            }
            NationalId::EsNie => {
                let lead = match c.first() {
                    Some(b'X') => b'0',
                    Some(b'Y') => b'1',
                    Some(b'Z') => b'2',
                    _ => return false,
                };
                if c.len() != 9 {
                    return false;
                }
                let mut n = [lead; 8];
                n[1..].copy_from_slice(&c[1..8]);
                not_one_digit(&c[1..8]) && dni_letter(&n) == Some(c[8])
            }
            NationalId::ItCodiceFiscale => codice_fiscale(c),
            NationalId::FrNir => nir(c),
            NationalId::UkNhs => {
                c.len() == 10
                    && not_one_digit(c)
                    && matches!(c[0], b'3' | b'4' | b'6' | b'7')
                    && nhs(c)
            }
            NationalId::DeTaxId => not_one_digit(c) && de_tax_id(c),
            NationalId::BeNationalNumber => not_one_digit(c) && be_national_number(c),
        }
    }

    /// Appends the spans of this detector's values in `seg` (whose byte classes are `masks`)
    /// to `out`: the one-detector case of [`Scan`], which the redactor runs for all the
    /// detectors a profile names at once. Why cached: a `Scan` costs a table of forms per run
    /// length and byte kind to build; this path (any per-detector caller of
    /// `Builtin::find_in`) builds the one of each detector once per process, not per segment.
    pub(crate) fn find(
        self,
        seg: &[u8],
        masks: &crate::bytemask::SegmentMasks,
        out: &mut Vec<(usize, usize)>,
    ) {
        static ALONE: [std::sync::OnceLock<Scan>; ALL.len()] =
            [const { std::sync::OnceLock::new() }; ALL.len()];
        let Some(cell) = ALL
            .iter()
            .position(|id| *id == self)
            .and_then(|i| ALONE.get(i))
        else {
            return;
        };
        let scan = cell.get_or_init(|| Scan::new(&[(0, self)]));
        let mut found = Vec::new();
        scan.find(seg, masks, usize::MAX, &mut found);
        out.extend(found.into_iter().map(|(s, e, _)| (s, e)));
    }

    /// The fewest digits a segment holding one of this detector's values has (the `9` places
    /// of its shortest form, and for a TD1 zone line 1 the digit [`mrz_line`] requires in its
    /// document number besides the check digit): the redactor skips the detector on a
    /// segment with fewer, so a profile naming national detectors costs little on lines
    /// without long numbers.
    pub(crate) fn min_digits(self) -> usize {
        self.forms()
            .iter()
            .map(|f| {
                let places = f.iter().filter(|c| **c == DIGIT).count();
                let td1_line1 = f.first() == Some(&TD1_CODE);
                places + usize::from(td1_line1)
            })
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
thread_local! {
    /// How many [`Scan`]s were built on this thread (a test hook: a per-detector `find`
    /// reuses its cached one).
    pub(crate) static SCAN_BUILDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };

    /// The detectors whose `find` ran on this thread (a test hook: the redactor's gate skips
    /// them on segments with too few digits).
    pub(crate) static FIND_CALLS: std::cell::RefCell<Vec<NationalId>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl NationalId {
    /// A value of this detector in its form `form` (modulo the number of forms), its class
    /// positions filled from `seed` and its last `check_len` characters searched until the
    /// value is valid: `None` when the seed gives none (a date out of range, an unissued
    /// first digit). For the fuzz target, which plants such values in random text.
    pub(crate) fn example_from(self, form: usize, seed: &[u8]) -> Option<Vec<u8>> {
        let forms = self.forms();
        let template = forms[form % forms.len()];
        let mut seed = seed.iter().copied().chain(std::iter::repeat(7u8));
        let mut v: Vec<u8> = template
            .iter()
            .map(|c| {
                let r = seed.next().unwrap_or(7);
                let pick = |set: &[u8]| set[usize::from(r) % set.len()];
                match *c {
                    DIGIT => pick(b"0123456789"),
                    LETTER => pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                    OMOCODE => pick(b"0123456789LMNPQRSTUV"),
                    MRZ => pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<"),
                    MRZ_ALPHA => pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ<"),
                    DIGIT_OR_FILLER => pick(b"0123456789<"),
                    SEX => pick(b"MFX<"),
                    TD1_CODE => pick(b"ACI"),
                    NIR_DEPT => pick(b"0123456789"),
                    NIE_LEAD => pick(b"XYZ"),
                    literal => literal,
                }
            })
            .collect();
        let filled = v.clone();
        let r = |i: usize| seed_byte(&filled, i);
        match (self, v.len()) {
            (NationalId::PassportMrz, 44) => {
                // A document number starts with its first character, never a filler.
                if v[0] == b'<' {
                    v[0] = b'P';
                }
                set_date(&mut v, 13, r(0));
                set_date(&mut v, 21, r(1));
                for (field, at) in [(0..9, 9), (13..19, 19), (21..27, 27), (28..42, 42)] {
                    v[at] = mrz_check_digit(&v[field])?;
                }
                v[43] = mrz_check_digit_of(&[&v[0..10], &v[13..20], &v[21..43]])?;
                return Some(v);
            }
            (NationalId::PassportMrz, _) if v[0].is_ascii_digit() => {
                set_date(&mut v, 0, r(0));
                set_date(&mut v, 8, r(1));
                v[6] = mrz_check_digit(&v[0..6])?;
                v[14] = mrz_check_digit(&v[8..14])?;
                return Some(v);
            }
            (NationalId::PassportMrz, _) => {
                v[13] = b'0' + r(2) % 10;
                v[29] = b'<';
                v[14] = mrz_check_digit(&v[5..14])?;
                return Some(v);
            }
            (NationalId::FrNir, _) if r(3) % 2 == 0 => {
                // Corsica: department 2A or 2B (the second place of the department field).
                let dept: Vec<usize> = (0..v.len()).filter(|i| template[*i] == NIR_DEPT).collect();
                if let [first, second] = dept[..] {
                    v[first] = b'2';
                    v[second] = if r(4) % 2 == 0 { b'A' } else { b'B' };
                }
            }
            (NationalId::DeTaxId, _) => {
                // Ten different digits in a seeded order, then one of them written twice.
                let at: Vec<usize> = (0..v.len()).filter(|i| v[*i].is_ascii_digit()).collect();
                let mut digits: Vec<u8> = (b'0'..=b'9').collect();
                for i in (1..10).rev() {
                    digits.swap(i, usize::from(r(i)) % (i + 1));
                }
                let j = usize::from(r(10)) % 9 + 1;
                digits[j] = digits[(j + 1) % 10];
                if digits[0] == b'0' {
                    digits.swap(0, 9);
                }
                for (k, p) in at.iter().take(10).enumerate() {
                    v[*p] = digits[k];
                }
            }
            _ => {}
        }
        // The trailing check characters (two for CPF, CNPJ, NIR, the Belgian number).
        let positions: Vec<usize> = (0..v.len())
            .rev()
            .filter(|i| matches!(template[*i], DIGIT | LETTER))
            .take(match self {
                NationalId::BrCpf | NationalId::BrCnpj | NationalId::FrNir => 2,
                NationalId::BeNationalNumber => 2,
                _ => 1,
            })
            .collect();
        let first = *positions.first()?;
        let alphabet: &[u8] = if template[first] == LETTER {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        } else {
            b"0123456789"
        };
        let tries = alphabet.len().pow(u32::try_from(positions.len()).ok()?);
        for t in 0..tries {
            let mut k = t;
            for p in &positions {
                v[*p] = alphabet[k % alphabet.len()];
                k /= alphabet.len();
            }
            if self.valid(&v) {
                return Some(v);
            }
        }
        None
    }
}

/// A byte derived from the value being built (for the seeded choices of `example_from`).
fn seed_byte(v: &[u8], i: usize) -> u8 {
    v.iter()
        .enumerate()
        .fold(u8::try_from(i % 256).unwrap_or(0), |a, (k, b)| {
            a.wrapping_mul(31)
                .wrapping_add(*b ^ u8::try_from(k % 256).unwrap_or(0))
        })
}

/// Writes a valid `yymmdd` at `at` (month and day from `r`).
fn set_date(v: &mut [u8], at: usize, r: u8) {
    let (m, d) = (r % 12 + 1, r % 28 + 1);
    v[at + 2] = b'0' + m / 10;
    v[at + 3] = b'0' + m % 10;
    v[at + 4] = b'0' + d / 10;
    v[at + 5] = b'0' + d % 10;
}

/// Whether `seg[s]` follows a JSON string escape `\n`, `\r` or `\t` (an odd number of
/// backslashes before the letter: `\\n` is an escaped backslash and a word `n`).
fn escaped_before(seg: &[u8], s: usize) -> bool {
    let Some(letter) = s.checked_sub(1) else {
        return false;
    };
    if !matches!(seg[letter], b'n' | b'r' | b't') {
        return false;
    }
    let slashes = seg[..letter]
        .iter()
        .rev()
        .take_while(|b| **b == b'\\')
        .count();
    slashes % 2 == 1
}

/// A run of machine-readable-zone characters (`A`–`Z`, `0`–`9`, `<`) holding a `<<` filler:
/// a zone line another one may be concatenated to.
fn mrz_run(bytes: Option<&[u8]>) -> bool {
    bytes.is_some_and(|r| r.iter().all(|b| class_has(MRZ, *b)) && r.windows(2).any(|w| w == b"<<"))
}

/// The shortest zone line (TD1): how far [`mrz_run`] looks for a neighbouring line.
const MRZ_LINE_MIN: usize = 30;

/// Whether the alphanumeric `run` next to a joiner is made of digits only and holds between
/// `min` and `max` of them.
fn digit_run(run: &[u8], min: usize, max: usize) -> bool {
    (min..=max).contains(&run.len()) && run.iter().all(u8::is_ascii_digit)
}

/// Whether the bytes `beyond` a decimal part end a number: not a joiner (`,2024-01-01` is a
/// date after a CSV comma), not a filler `<` or a space before a digit (the next id of a list
/// written in groups or a zone line, `,130 692 544`).
fn ends_number(beyond: &[u8]) -> bool {
    match beyond {
        [] => true,
        [b' ', d, ..] if d.is_ascii_digit() => false,
        [b, ..] => !joins_digits(*b) && *b != b'<',
    }
}

/// Bytes that join digits into one longer number (`1.234`, `12-34`, `12/34`, `12:34`, `1,5`).
fn joins_digits(b: u8) -> bool {
    matches!(b, b'.' | b'-' | b'/' | b':' | b',')
}

/// Whether the joiner `j` between the value and the alphanumeric run `run` on its other side
/// (with `beyond` the byte past that run) makes the value part of a longer number. Decided by
/// the run, not one byte: `.`, `:` and `/` join only a run of digits (`v1/` does not), `,` only
/// a decimal part of 1–3 digits after the value (`{v},5` joins, a CSV's next field
/// `{v},2024-01-01` or a list `[{v},{v}]` does not; before the value a `,` never joins, as the
/// run before it may be the end of the previous id), and a value between two `/` is a path
/// segment (`/users/{v}/42`).
fn joined(j: u8, run: &[u8], beyond: &[u8], path_segment: bool) -> bool {
    match j {
        b',' => digit_run(run, 1, 3) && ends_number(beyond),
        b'/' if path_segment => false,
        b'.' | b':' | b'/' => digit_run(run, 1, usize::MAX),
        _ => false,
    }
}

/// The alphanumeric run ending at `end` (exclusive).
fn run_before(seg: &[u8], end: usize) -> &[u8] {
    let start = seg[..end]
        .iter()
        .rposition(|b| !b.is_ascii_alphanumeric())
        .map_or(0, |i| i + 1);
    &seg[start..end]
}

/// The alphanumeric run starting at `start` and the bytes after it.
fn run_after(seg: &[u8], start: usize) -> (&[u8], &[u8]) {
    let start = start.min(seg.len());
    let end = seg[start..]
        .iter()
        .position(|b| !b.is_ascii_alphanumeric())
        .map_or(seg.len(), |i| start + i);
    (&seg[start..end], &seg[end..])
}

/// Nothing before the value `seg[s..e]` makes it part of a longer word or number: not a word
/// byte (but a JSON escape `\n` is a boundary), not `+` after a non-word byte (an E.164 phone
/// number; after a word it is a form-encoded space, `q=patient+…`), not a hyphen after a letter
/// or digit (a UUID's groups, `order-…`), not a joiner to a number (see [`joined`]). A `<` is a
/// delimiter (`<id>…`) except for a zone line (`mrz`), where it is a filler: then only a zone
/// line concatenated after another one is accepted. A space never joins: ids listed with
/// spaces are each found, at the cost of finding one inside a number written in spaced groups
/// (`12 345 678 908`).
fn free_before(seg: &[u8], s: usize, e: usize, mrz: bool) -> bool {
    let Some(&p) = s.checked_sub(1).and_then(|i| seg.get(i)) else {
        return true;
    };
    if escaped_before(seg, s) {
        return true;
    }
    let before = s.checked_sub(2).map(|i| seg[i]);
    match p {
        b'<' if mrz => mrz_run(s.checked_sub(MRZ_LINE_MIN).map(|from| &seg[from..s])),
        _ if is_word(p) => false,
        b'+' => before.is_some_and(is_word),
        b'-' => !before.is_some_and(|b| b.is_ascii_alphanumeric()),
        // A `,` before the value never joins (decided before looking back at the run).
        b',' => true,
        _ if joins_digits(p) => {
            let run = run_before(seg, s - 1);
            !joined(p, run, &[], p == b'/' && seg.get(e) == Some(&b'/'))
        }
        _ => true,
    }
}

/// Nothing after the value `seg[s..e]` makes it part of a longer word or number (see
/// [`free_before`]); for a zone line, a `<` that opens a tag (`</mrz>`, `<br>`: the byte after
/// it is no zone character) or a zone line concatenated after it (`…<<<7408122F…`) is a
/// boundary.
fn free_after(seg: &[u8], s: usize, e: usize, mrz: bool) -> bool {
    let Some(&n) = seg.get(e) else {
        return true;
    };
    if mrz && (is_word(n) || n == b'<') {
        let tag = n == b'<' && !seg.get(e + 1).is_some_and(|b| class_has(MRZ, *b));
        return tag || mrz_run(seg.get(e..e + MRZ_LINE_MIN));
    }
    if is_word(n) {
        return false;
    }
    let after = seg.get(e + 1).copied();
    match n {
        b'-' => !after.is_some_and(|b| b.is_ascii_alphanumeric()),
        _ if joins_digits(n) => {
            let (run, beyond) = run_after(seg, e + 1);
            let path_segment = n == b'/' && s > 0 && seg[s - 1] == b'/';
            !joined(n, run, beyond, path_segment)
        }
        _ => true,
    }
}

/// The value without its separators (`.`, `-`, `/`, ` `) and upper-cased, in `buf`; `None`
/// if longer: the form the checks read and `hash` mode hashes.
fn compact<'a>(value: &[u8], buf: &'a mut [u8; 44]) -> Option<&'a [u8]> {
    let mut n = 0;
    for b in value {
        if matches!(b, b'.' | b'-' | b'/' | b' ') {
            continue;
        }
        *buf.get_mut(n)? = b.to_ascii_uppercase();
        n += 1;
    }
    Some(&buf[..n])
}

/// The canonical form of a found value (separators removed, upper case), which `hash` mode
/// hashes so that `529.982.247-25` and `52998224725` get one pseudonym. A value too long to be
/// one of the forms is returned as it is.
pub(crate) fn canonical(value: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 44];
    compact(value, &mut buf).map_or_else(|| value.to_vec(), <[u8]>::to_vec)
}

/// Not one digit repeated (`000000000`, `111.111.111-11` pass several of these checksums).
fn not_one_digit(d: &[u8]) -> bool {
    d.first().is_some_and(|f| d.iter().any(|b| b != f))
}

fn digit(b: u8) -> u32 {
    u32::from(b.wrapping_sub(b'0'))
}

/// The ICAO 9303 check digit of `field`: values 0–9 for digits, 10–35 for `A`–`Z`, 0 for
/// `<`, weighted 7, 3, 1 repeating, sum mod 10. `None` for any other byte.
pub(crate) fn mrz_check_digit(field: &[u8]) -> Option<u8> {
    mrz_check_digit_of(&[field])
}

/// The check digit of the fields `parts` read as one (a TD3 composite: the weights run on
/// across the parts), without joining them in a new buffer: this runs on every 44-character
/// candidate of a zone line.
fn mrz_check_digit_of(parts: &[&[u8]]) -> Option<u8> {
    let mut sum = 0u32;
    for (i, b) in parts.iter().flat_map(|p| p.iter()).enumerate() {
        let v = match b {
            b'0'..=b'9' => digit(*b),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            b'<' => 0,
            _ => return None,
        };
        sum += v * [7, 3, 1][i % 3];
    }
    u8::try_from(sum % 10).ok().map(|d| b'0' + d)
}

fn mrz_check(field: &[u8], check: u8) -> bool {
    mrz_check_digit(field) == Some(check)
}

/// A `yymmdd` date: month 01–12, day 01–31.
fn yymmdd(d: &[u8]) -> bool {
    let two = |i: usize| digit(d[i]) * 10 + digit(d[i + 1]);
    d.len() == 6
        && d.iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&two(2))
        && (1..=31).contains(&two(4))
}

/// One line of a machine-readable zone (TD3 line 2, TD1 line 1 or TD1 line 2, told apart by
/// length and first byte) whose check digits hold.
pub(crate) fn mrz_line(l: &[u8]) -> bool {
    match l.len() {
        44 => {
            let personal_ok = if l[42] == b'<' {
                l[28..42].iter().all(|b| *b == b'<')
            } else {
                mrz_check(&l[28..42], l[42])
            };
            mrz_check(&l[0..9], l[9])
                && yymmdd(&l[13..19])
                && mrz_check(&l[13..19], l[19])
                && yymmdd(&l[21..27])
                && mrz_check(&l[21..27], l[27])
                && personal_ok
                && mrz_check_digit_of(&[&l[0..10], &l[13..20], &l[21..43]]) == Some(l[43])
        }
        30 if l[0].is_ascii_uppercase() => {
            // TD1 line 1: the document number holds a digit and the line a filler (a run of
            // 30 capitals and digits, like a base32 secret, is not a zone).
            l[5..14].iter().any(u8::is_ascii_digit)
                && l.contains(&b'<')
                && mrz_check(&l[5..14], l[14])
        }
        30 => {
            yymmdd(&l[0..6])
                && mrz_check(&l[0..6], l[6])
                && yymmdd(&l[8..14])
                && mrz_check(&l[8..14], l[14])
        }
        _ => false,
    }
}

/// The Dutch 11-proof over 9 digits: 9·d1 + 8·d2 + … + 2·d8 − d9 ≡ 0 (mod 11).
pub(crate) fn bsn(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let mut sum: i64 = 0;
    for (i, b) in d[..8].iter().enumerate() {
        sum += i64::from(digit(*b)) * (9 - i64::try_from(i).unwrap_or(0));
    }
    sum -= i64::from(digit(d[8]));
    sum.rem_euclid(11) == 0
}

/// A Brazilian mod-11 check digit over `d` with weights counting down from `top` (CPF).
fn cpf_digit(d: &[u8], top: u32) -> u8 {
    let sum: u32 = d
        .iter()
        .zip((2..=top).rev())
        .map(|(b, w)| digit(*b) * w)
        .sum();
    let r = sum * 10 % 11 % 10;
    b'0' + u8::try_from(r).unwrap_or(0)
}

/// CPF: 9 digits and two check digits, each mod 11 (a remainder of 10 gives 0).
pub(crate) fn cpf(d: &[u8]) -> bool {
    d.len() == 11 && cpf_digit(&d[..9], 10) == d[9] && cpf_digit(&d[..10], 11) == d[10]
}

/// A CNPJ check digit over `d` with `weights`: remainder mod 11 below 2 gives 0, else 11 − r.
fn cnpj_digit(d: &[u8], weights: &[u32]) -> u8 {
    let sum: u32 = d.iter().zip(weights).map(|(b, w)| digit(*b) * w).sum();
    let r = sum % 11;
    b'0' + u8::try_from(if r < 2 { 0 } else { 11 - r }).unwrap_or(0)
}

/// CNPJ: 12 digits and two check digits (weights 5…2, 9…2 then 6…2, 9…2).
pub(crate) fn cnpj(d: &[u8]) -> bool {
    const W1: [u32; 12] = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    const W2: [u32; 13] = [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    d.len() == 14 && cnpj_digit(&d[..12], &W1) == d[12] && cnpj_digit(&d[..13], &W2) == d[13]
}

/// The Verhoeff check over ASCII digits (the last one the check digit).
pub(crate) fn verhoeff(d: &[u8]) -> bool {
    const MUL: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const PERM: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 8, 7, 6, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let mut c = 0u8;
    for (i, b) in d.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        c = MUL[usize::from(c)][usize::from(PERM[i % 8][usize::from(b - b'0')])];
    }
    !d.is_empty() && c == 0
}

/// `yyyymmddhhmmss` from 1970 to 2099: a bare 14-digit timestamp, not a CNPJ (about 1 in 100
/// timestamps passes the CNPJ check; refusing them misses about 1 real bare CNPJ in 10⁴).
fn timestamp_yyyymmddhhmmss(d: &[u8]) -> bool {
    d.len() == 14 && timestamp_yyyymmddhhmm(&d[..12]) && digit(d[12]) * 10 + digit(d[13]) <= 59
}

/// `yyyymmddhhmm` from 1970 to 2099: a bare 12-digit timestamp, not an Aadhaar number.
fn timestamp_yyyymmddhhmm(d: &[u8]) -> bool {
    let n = |i: usize| digit(d[i]) * 10 + digit(d[i + 1]);
    d.len() == 12
        && (n(0) == 20 || (n(0) == 19 && n(2) >= 70))
        && (1..=12).contains(&n(4))
        && (1..=31).contains(&n(6))
        && n(8) <= 23
        && n(10) <= 59
}

/// The Spanish check letter of an 8-digit number: `TRWAGMYFPDXBNJZSQVHLCKE`[n mod 23].
pub(crate) fn dni_letter(d: &[u8]) -> Option<u8> {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    if d.len() != 8 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = d.iter().fold(0u32, |n, b| n * 10 + digit(*b));
    LETTERS.get(usize::try_from(n % 23).ok()?).copied()
}

/// The check character of the first 15 characters of an Italian fiscal code: odd positions
/// (1st, 3rd…) through the decree's table, even ones at their value, sum mod 26 as a letter.
pub(crate) fn codice_fiscale_check(c: &[u8]) -> Option<u8> {
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    let mut sum = 0u32;
    for (i, b) in c.iter().take(15).enumerate() {
        let v = match b {
            b'0'..=b'9' => usize::from(b - b'0'),
            b'A'..=b'Z' => usize::from(b - b'A'),
            _ => return None,
        };
        sum += if i % 2 == 0 {
            ODD[v]
        } else {
            u32::try_from(v).ok()?
        };
    }
    Some(b'A' + u8::try_from(sum % 26).ok()?)
}

/// An Italian fiscal code: month letter, day 01–31 or 41–71 (women), check character.
pub(crate) fn codice_fiscale(c: &[u8]) -> bool {
    if c.len() != 16 {
        return false;
    }
    let un_omocode = |b: u8| match OMOCODIA.iter().position(|o| *o == b) {
        Some(i) => u32::try_from(i).unwrap_or(0),
        None => digit(b),
    };
    let day = un_omocode(c[9]) * 10 + un_omocode(c[10]);
    b"ABCDEHLMPRST".contains(&c[8])
        && ((1..=31).contains(&day) || (41..=71).contains(&day))
        && codice_fiscale_check(c) == Some(c[15])
}

/// The French NIR: sex 1–4, 7 or 8, month 01–12, 20–42 or 50–99, department 2A/2B counted as
/// 19/18, key 97 − (13-digit number mod 97).
pub(crate) fn nir(c: &[u8]) -> bool {
    if c.len() != 15 || !matches!(c[0], b'1'..=b'4' | b'7' | b'8') {
        return false;
    }
    let month = digit(c[3]) * 10 + digit(c[4]);
    if !((1..=12).contains(&month) || (20..=42).contains(&month) || month >= 50) {
        return false;
    }
    let mut n: u64 = 0;
    for (i, b) in c[..13].iter().enumerate() {
        let v = match (i, b) {
            (6, b'A') if c[5] == b'2' => 9,
            (6, b'B') if c[5] == b'2' => 8,
            (5, b'2') if matches!(c[6], b'A' | b'B') => 1,
            (_, b'0'..=b'9') => u64::from(digit(*b)),
            _ => return false,
        };
        n = n * 10 + v;
    }
    if !c[13..].iter().all(u8::is_ascii_digit) || !not_one_digit(&c[..13]) {
        return false;
    }
    let key = u64::from(digit(c[13]) * 10 + digit(c[14]));
    key == 97 - n % 97
}

/// The NHS number check: weights 10…2 over 9 digits, 11 − (sum mod 11), 11 → 0, 10 invalid.
pub(crate) fn nhs(d: &[u8]) -> bool {
    if d.len() != 10 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = d[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(b, w)| digit(*b) * w)
        .sum();
    match 11 - sum % 11 {
        11 => d[9] == b'0',
        10 => false,
        c => digit(d[9]) == c,
    }
}

/// ISO/IEC 7064 MOD 11,10 over ASCII digits, the last one the check digit.
pub(crate) fn iso7064_mod11_10(d: &[u8]) -> bool {
    let Some((check, body)) = d.split_last() else {
        return false;
    };
    let mut product = 10u32;
    for b in body {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut sum = (digit(*b) + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = sum * 2 % 11;
    }
    let c = (11 - product) % 10;
    check.is_ascii_digit() && digit(*check) == c
}

/// The German tax id: first digit not 0; in the first 10 digits one digit occurs twice or
/// three times (not three in a row) and every other at most once; ISO 7064 MOD 11,10.
pub(crate) fn de_tax_id(d: &[u8]) -> bool {
    if d.len() != 11 || d[0] == b'0' || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut count = [0u8; 10];
    for b in &d[..10] {
        count[usize::from(b - b'0')] += 1;
    }
    // Exactly one digit repeats (no allocation: this runs on every 11-digit candidate).
    let mut repeated = (0..10).filter(|i| count[*i] > 1);
    let (Some(r), None) = (repeated.next(), repeated.next()) else {
        return false;
    };
    if count[r] > 3 {
        return false;
    }
    let r = b'0' + u8::try_from(r).unwrap_or(0);
    let three_in_a_row = d[..10].windows(3).any(|w| w.iter().all(|b| *b == r));
    !three_in_a_row && iso7064_mod11_10(d)
}

/// The Belgian national number: yymmdd (month 00–12, or +20/+40 for bis numbers; day 00–31),
/// a serial, and 97 − (9 digits mod 97), or of 2 followed by them for births from 2000.
pub(crate) fn be_national_number(d: &[u8]) -> bool {
    if d.len() != 11 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let month = digit(d[2]) * 10 + digit(d[3]);
    let day = digit(d[4]) * 10 + digit(d[5]);
    if month % 20 > 12 || month > 52 || day > 31 {
        return false;
    }
    let n = d[..9]
        .iter()
        .fold(0u64, |n, b| n * 10 + u64::from(digit(*b)));
    let key = u64::from(digit(d[9]) * 10 + digit(d[10]));
    key == 97 - n % 97 || key == 97 - (2_000_000_000 + n) % 97
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-detector scan the one pass replaced (each detector walking the whole segment
    /// on its own), kept as the reference the one pass must equal.
    fn find_reference(id: NationalId, seg: &[u8], out: &mut Vec<(usize, usize)>) {
        let mrz = id == NationalId::PassportMrz;
        let mut s = 0;
        while s < seg.len() {
            let start = s == 0 || !is_word(seg[s - 1]) || escaped_before(seg, s);
            if !(start && seg[s].is_ascii_alphanumeric()) {
                s += 1;
                continue;
            }
            let found = id.forms().iter().find_map(|form| {
                let e = s + form.len();
                let fits =
                    e <= seg.len() && form.iter().zip(&seg[s..e]).all(|(c, b)| class_has(*c, *b));
                (fits
                    && free_before(seg, s, e, mrz)
                    && free_after(seg, s, e, mrz)
                    && id.valid(&seg[s..e]))
                .then_some(e)
            });
            match found {
                Some(e) => {
                    out.push((s, e));
                    s = e;
                }
                None => s += 1,
            }
        }
    }

    /// Random text dense in what the detectors look at: valid values of every detector and
    /// form (from `example_from`), digit runs of every length, the separators and joiners,
    /// zone fillers, JSON escapes and letters of either case.
    fn dense_line(rng: &mut u64) -> Vec<u8> {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let mut line = Vec::new();
        let pieces = next() % 12 + 1;
        for _ in 0..pieces {
            let r = next();
            match r % 8 {
                0 | 1 => {
                    let id = ALL[usize::try_from(r >> 8).unwrap_or(0) % ALL.len()];
                    let seed = (r >> 16).to_le_bytes();
                    if let Some(v) = id.example_from(usize::try_from(r >> 40).unwrap_or(0), &seed) {
                        line.extend_from_slice(&v);
                    }
                }
                2 | 3 => {
                    for _ in 0..(r >> 8) % 17 {
                        line.push(b'0' + u8::try_from(next() % 10).unwrap_or(0));
                    }
                }
                4 => {
                    let text: &[u8] = match (r >> 8) % 6 {
                        0 => b"<<<<<<<<<<<<<<<",
                        1 => b"\\n",
                        2 => b"X",
                        3 => b"id=",
                        4 => b"UTO",
                        _ => b"Ab",
                    };
                    line.extend_from_slice(text);
                }
                _ => {
                    let seps = b" .-/:,<\\n_+\"Aa";
                    line.push(seps[usize::try_from(r >> 8).unwrap_or(0) % seps.len()]);
                }
            }
        }
        line
    }

    /// The one pass finds exactly what each detector on its own finds, on many random lines
    /// dense in values, look-alikes and separators, with all thirteen detectors at once.
    #[test]
    fn one_pass_finds_what_each_detector_alone_finds() {
        let ids: Vec<(usize, NationalId)> = ALL.iter().copied().enumerate().collect();
        let scan = Scan::new(&ids);
        let mut rng = 0x16_u64 << 32 | 0x2026_1205;
        let mut found_any = 0;
        for _ in 0..20_000 {
            let line = dense_line(&mut rng);
            let mut want = Vec::new();
            for (i, id) in &ids {
                let mut spans = Vec::new();
                find_reference(*id, &line, &mut spans);
                want.extend(spans.into_iter().map(|(s, e)| (s, e, *i)));
            }
            let mut masks = crate::bytemask::SegmentMasks::default();
            masks.compute_classes(&line, false);
            let mut got = Vec::new();
            scan.find(&line, &masks, usize::MAX, &mut got);
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&line));
            found_any += usize::from(!want.is_empty());
        }
        // The lines hold values: the comparison is not one of empty lists.
        assert!(found_any > 2_000, "{found_any}");
    }

    /// Word starts come 64 bytes at a time, with the last byte of each block carried into the
    /// next: a value at every offset 0..=140 (across the 64- and 128-byte block boundaries,
    /// and the shifted last block) behind word bytes is found exactly as the reference scan
    /// finds it (not at all), and behind spaces is found at its offset.
    #[test]
    fn values_at_block_boundaries_are_found_as_the_reference_finds_them() {
        let ids: Vec<(usize, NationalId)> = ALL.iter().copied().enumerate().collect();
        let scan = Scan::new(&ids);
        let mut checked = 0;
        for (i, id) in ALL.iter().copied().enumerate() {
            let Some(v) = (0u8..200).find_map(|seed| id.example_from(0, &spread_seed(seed))) else {
                panic!("{} has no example", id.name());
            };
            for off in 0..=140 {
                for fill in [b'x', b' '] {
                    let mut line = vec![fill; off];
                    line.extend_from_slice(&v);
                    line.push(b' ');
                    let mut want = Vec::new();
                    for (j, other) in &ids {
                        let mut spans = Vec::new();
                        find_reference(*other, &line, &mut spans);
                        want.extend(spans.into_iter().map(|(s, e)| (s, e, *j)));
                    }
                    let mut masks = crate::bytemask::SegmentMasks::default();
                    masks.compute_classes(&line, false);
                    let mut got = Vec::new();
                    scan.find(&line, &masks, usize::MAX, &mut got);
                    want.sort_unstable();
                    got.sort_unstable();
                    assert_eq!(got, want, "{} at {off} after {:?}", id.name(), fill as char);
                    if fill == b' ' {
                        assert!(
                            got.contains(&(off, off + v.len(), i)),
                            "{} at {off}",
                            id.name()
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, ALL.len() * 141 * 2);
    }

    /// A place is offered only the forms its digit run and the byte after it fit: that is
    /// what makes the one pass cheap on digit-heavy lines (a 9-digit id is not matched against
    /// the other detectors' eleven forms).
    #[test]
    fn a_start_is_offered_only_the_forms_its_digit_run_and_next_byte_fit() {
        let ids: Vec<(usize, NationalId)> = ALL.iter().copied().enumerate().collect();
        let scan = Scan::new(&ids);
        // A bare 9-digit run: the bare BSN and SIN forms.
        assert_eq!(
            scan.offered(b"123456782 x", 0),
            [("nl_bsn", 9), ("ca_sin", 9)]
        );
        // 8 digits and a letter: the DNI (and a zone line, whose document number may be
        // 8 digits and a capital); 8 digits and a dash: the DNI's dashed form.
        assert_eq!(
            scan.offered(b"12345678Z", 0),
            [("passport_mrz", 44), ("es_dni", 9)]
        );
        assert_eq!(scan.offered(b"12345678-Z", 0), [("es_dni", 10)]);
        // 3 digits and a dot: the dotted CPF only.
        assert_eq!(scan.offered(b"529.982.247-25", 0), [("br_cpf", 14)]);
        // A lower-case word: the fiscal code (either case) only; a capital: the zone lines
        // and the fiscal code; X, Y or Z: the NIE too.
        assert_eq!(scan.offered(b"curl", 0), [("it_codice_fiscale", 16)]);
        assert_eq!(
            scan.offered(b"GET", 0),
            [("passport_mrz", 44), ("it_codice_fiscale", 16)]
        );
        assert_eq!(
            scan.offered(b"X1234567L", 0),
            [
                ("passport_mrz", 44),
                ("es_nie", 9),
                ("es_nie", 11),
                ("it_codice_fiscale", 16)
            ]
        );
        // 13 digits (an epoch-ms timestamp): no form.
        assert_eq!(scan.offered(b"1764915305123 ", 0), []);
    }

    /// A detector named twice runs once, under its first index (the redactor would name an
    /// equal finding after the first anyway).
    #[test]
    fn a_detector_named_twice_is_scanned_once() {
        let scan = Scan::new(&[(3, NationalId::NlBsn), (7, NationalId::NlBsn)]);
        let mut got = Vec::new();
        let mut masks = crate::bytemask::SegmentMasks::default();
        masks.compute_classes(b"a 123456782 b", false);
        scan.find(b"a 123456782 b", &masks, usize::MAX, &mut got);
        assert_eq!(got, [(2, 11, 3)]);
    }

    /// A TD1 line 1 holds two digits at least (its check digit and one in the document
    /// number, which `mrz_line` requires), so the zone detector's digit gate is 2, not 1.
    #[test]
    fn min_digits_counts_the_digit_a_td1_document_number_holds() {
        assert_eq!(NationalId::PassportMrz.min_digits(), 2);
        let line = b"I<UTOD231458907<<<<<<<<<<<<<<<";
        assert!(mrz_line(line));
        // With one digit only (the check), the line is no zone line: the gate loses nothing.
        let one = b"I<UTODABCDEFGH7<<<<<<<<<<<<<<<";
        assert!(!mrz_line(one));
        for id in ALL {
            for form in 0..id.forms().len() {
                for seed in 0u8..40 {
                    if let Some(v) = id.example_from(form, &[seed, seed / 3, seed / 7]) {
                        let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
                        assert!(digits >= id.min_digits(), "{}: {:?}", id.name(), v);
                    }
                }
            }
        }
    }

    /// A per-detector `find` (the generic `Builtin::find_in` path) builds its detector's
    /// scan once, not once per segment: 50 calls build at most one `Scan` on this thread
    /// (none when another thread built it first), and still find the value.
    #[test]
    fn a_per_detector_find_reuses_its_cached_scan() {
        let before = SCAN_BUILDS.with(std::cell::Cell::get);
        for _ in 0..50 {
            assert_eq!(found(NationalId::NlBsn, "bsn 123456782 ok"), ["123456782"]);
        }
        let built = SCAN_BUILDS.with(std::cell::Cell::get) - before;
        assert!(built <= 1, "{built} scans built for 50 calls");
    }

    /// 44 seed bytes spread from one (every place of the longest form gets its own).
    pub(super) fn spread_seed(seed: u8) -> Vec<u8> {
        (0..44u8)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)))
            .collect()
    }

    /// A `,` before a value is a boundary whatever precedes it (a CSV's previous field).
    #[test]
    fn a_comma_before_a_value_never_joins() {
        assert_eq!(found(NationalId::NlBsn, "12,123456782"), ["123456782"]);
        assert_eq!(found(NationalId::NlBsn, "ab,123456782,x"), ["123456782"]);
    }

    fn found(id: NationalId, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut masks = crate::bytemask::SegmentMasks::default();
        masks.compute(text.as_bytes());
        id.find(text.as_bytes(), &masks, &mut out);
        out.iter().map(|(s, e)| text[*s..*e].to_string()).collect()
    }

    /// ICAO 9303 Part 3's worked example (the date `520727` has check digit 3); Part 4's
    /// specimen TD3 line 2 (Anna Maria Eriksson) holds its four checks and the composite one;
    /// Part 5's specimen TD1 lines 1 and 2 hold theirs (the composite of line 2, over both
    /// lines, is 6: computed, not checked by the one-line detector).
    #[test]
    fn mrz_check_digits_match_the_icao_examples() {
        assert_eq!(mrz_check_digit(b"520727"), Some(b'3'));
        assert_eq!(mrz_check_digit(b"L898902C3"), Some(b'6'));
        assert!(mrz_line(b"L898902C36UTO7408122F1204159ZE184226B<<<<<10"));
        assert!(mrz_line(b"I<UTOD231458907<<<<<<<<<<<<<<<"));
        assert!(mrz_line(b"7408122F1204159UTO<<<<<<<<<<<6"));
        // One check off by one: the document number's, the birth date's, the composite.
        assert!(!mrz_line(b"L898902C37UTO7408122F1204159ZE184226B<<<<<10"));
        assert!(!mrz_line(b"L898902C36UTO7408123F1204159ZE184226B<<<<<10"));
        assert!(!mrz_line(b"L898902C36UTO7408122F1204159ZE184226B<<<<<11"));
        assert!(!mrz_line(b"I<UTOD231458908<<<<<<<<<<<<<<<"));
        assert!(!mrz_line(b"7408122F1204158UTO<<<<<<<<<<<6"));
    }

    /// 123456782 is the worked 11-proof example of BSN guides (9·1 + 8·2 + … + 2·8 − 2 = 154 =
    /// 14·11); 111222333 passes too; one digit off fails.
    #[test]
    fn bsn_eleven_proof() {
        assert!(bsn(b"111222333"));
        assert!(bsn(b"123456782"));
        assert!(!bsn(b"123456783"));
        assert!(!bsn(b"111222334"));
    }

    #[test]
    fn cpf_and_cnpj_check_digits() {
        assert!(cpf(b"52998224725"));
        assert!(cpf(b"11144477735"));
        assert!(!cpf(b"52998224726"));
        assert!(!cpf(b"52998224715"));
        assert!(cnpj(b"11222333000181"));
        assert!(!cnpj(b"11222333000182"));
        assert!(!cnpj(b"11222333000171"));
    }

    /// Verhoeff's own example: 236 takes the check digit 3.
    #[test]
    fn verhoeff_check() {
        assert!(verhoeff(b"2363"));
        assert!(!verhoeff(b"2364"));
        assert!(verhoeff(b"234123412346"));
        assert!(!verhoeff(b"234123412347"));
    }

    /// The Ministerio del Interior's table: 12345678 mod 23 = 14, letter Z.
    #[test]
    fn dni_check_letter() {
        assert_eq!(dni_letter(b"12345678"), Some(b'Z'));
        assert_eq!(dni_letter(b"01234567"), Some(b'L'));
        assert_eq!(dni_letter(b"1234567"), None);
    }

    #[test]
    fn codice_fiscale_check_character() {
        assert_eq!(codice_fiscale_check(b"RSSMRA85T10A562"), Some(b'S'));
        assert!(codice_fiscale(b"RSSMRA85T10A562S"));
        assert!(!codice_fiscale(b"RSSMRA85T10A562T"));
        // Month letter F is not a month.
        assert!(!codice_fiscale(b"RSSMRA85F10A562S"));
    }

    /// INSEE's example 2 55 08 14 168 025 38: the key of 2550814168025 is 38; Corsica counts
    /// 2A as 19 (the key of 1850519006084 is 35).
    #[test]
    fn nir_key_and_corsica() {
        assert!(nir(b"255081416802538"));
        assert!(!nir(b"255081416802539"));
        assert!(nir(b"185052A00608435"));
        assert!(!nir(b"185052B00608435"));
        // Sex 5 and month 13 are not a NIR.
        assert!(!nir(b"555081416802538"));
        assert!(!nir(b"255131416802538"));
    }

    /// The NHS Data Dictionary's example 943 476 5919; a number whose check would be 10 is
    /// never issued.
    #[test]
    fn nhs_modulus_11() {
        assert!(nhs(b"9434765919"));
        assert!(!nhs(b"9434765918"));
        // 400000004: sum 40 + 8 = 48 ≡ 4, check 11 − 4 = 7.
        assert!(nhs(b"4000000047"));
        // 400000002: sum 40 + 4 = 44 ≡ 0, check 11, written 0.
        assert!(nhs(b"4000000020"));
        // 400000008: sum 40 + 16 = 56 ≡ 1, check 10: no last digit makes it valid.
        for c in b'0'..=b'9' {
            assert!(!nhs(&[
                b'4', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'8', c
            ]));
        }
    }

    /// ISO/IEC 7064 MOD 11,10 on the standard's style of example (794623 holds), and the
    /// German tax id's extra digit rules.
    #[test]
    fn iso7064_and_tax_id() {
        assert!(iso7064_mod11_10(b"794623"));
        assert!(!iso7064_mod11_10(b"794624"));
        assert!(de_tax_id(b"86095742719"));
        assert!(!de_tax_id(b"86095742718"));
        // Every digit different in the first 10 (1234567890, check 3): not a tax id.
        assert!(iso7064_mod11_10(b"12345678903"));
        assert!(!de_tax_id(b"12345678903"));
    }

    #[test]
    fn belgian_mod_97() {
        assert!(be_national_number(b"85073003328"));
        assert!(!be_national_number(b"85073003329"));
    }

    #[test]
    fn forms_are_found_standing_alone() {
        assert_eq!(
            found(NationalId::BrCpf, "cpf=529.982.247-25 ok"),
            ["529.982.247-25"]
        );
        assert!(found(NationalId::BrCpf, "id=1529.982.247-25").is_empty());
    }
}
