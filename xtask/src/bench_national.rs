//! `cargo xtask bench redact --national`: the CPU cost of a profile naming all thirteen
//! national detectors (`xtask/bench-national.toml`, profile `national`) next to the `default`
//! profile, through `loggate-agent redact` (docs/performance.md, "National identifiers").
//!
//! Three seeded inputs, generated into `target/bench/` (the same bytes on every run):
//! - `national-digits.log`, 25 MB: an access log with 9- to 15-digit ids on every line, a fifth
//!   of lines with spaced, dotted or dashed groups, one line in fifty with a real national id;
//! - `national-nodigits.log`, 22 MB: the same kind of lines with every digit left out;
//! - `national-mrz.log`: one 6.4 MB line of `A<A<…` (zone characters, no digit).
//!
//! Each command runs pinned to CPU 0 with its output written to a file; the user + system CPU
//! time of each round is printed. With `--baseline AGENT` (an older build copied aside), its
//! `national` profile runs in the same rounds and its output is compared byte for byte with
//! this build's (`cmp`): the findings must be identical.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Real values of every national detector (their documented examples), planted one line in
/// fifty.
const REAL: [&str; 16] = [
    "123456782",
    "1234.56.782",
    "529.982.247-25",
    "52998224725",
    "11.222.333/0001-81",
    "2341 2341 2346",
    "130-692-544",
    "12345678Z",
    "X1234567L",
    "RSSMRA85T10A562S",
    "2 55 08 14 168 025 38",
    "401 023 2137",
    "86 095 742 719",
    "85.07.30-033.28",
    "L898902C36UTO7408122F1204159ZE184226B<<<<<10",
    "I<UTOD231458907<<<<<<<<<<<<<<<",
];

/// SplitMix64, seeded: the same bytes everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn digits(&mut self, n: u64) -> String {
        (0..n)
            .map(|_| char::from(b'0' + (self.next() % 10) as u8))
            .collect()
    }
}

/// One access-log line with long numbers (see the module doc).
fn line(r: &mut Rng, out: &mut String) {
    let ip: Vec<String> = (0..4).map(|_| (r.below(254) + 1).to_string()).collect();
    let kind = r.below(100);
    let extra = match kind {
        0..=19 => format!(" ref={} {} {}", r.digits(3), r.digits(3), r.digits(3)),
        20..=39 => format!(" acct={}.{}.{}", r.digits(4), r.digits(2), r.digits(3)),
        40..=59 => format!(" trace={}-{}-{}", r.digits(3), r.digits(3), r.digits(4)),
        60..=61 => format!(" id={}", REAL[r.below(REAL.len() as u64) as usize]),
        _ => {
            let n = r.below(7) + 9;
            format!(" n={}", r.digits(n))
        }
    };
    let status = ["200", "200", "304", "404"][r.below(4) as usize];
    out.push_str(&format!(
        "{} - - [05/Dec/2026:09:{}:{} +0000] \"GET /api/v1/orders/{}/items/{}?session={}&ts=17649{} \
         HTTP/1.1\" {status} {} \"-\" \"curl/8.5.0\" rt=0.{} uid={} req=2026120509{} cust={}{extra}\n",
        ip.join("."),
        r.below(50) + 10,
        r.below(50) + 10,
        r.digits(9),
        r.digits(9),
        r.digits(10),
        r.digits(8),
        r.below(99_900) + 100,
        r.digits(3),
        r.digits(9),
        r.digits(4),
        r.digits(11),
    ));
}

/// `size` bytes or a little more (whole lines) of the digit-heavy access log from `seed`.
pub(crate) fn digits_log(seed: u64, size: usize) -> String {
    let mut r = Rng(seed);
    let mut out = String::with_capacity(size + 512);
    while out.len() < size {
        line(&mut r, &mut out);
    }
    out
}

/// The same lines with every digit left out.
fn no_digits_log(seed: u64, size: usize) -> String {
    digits_log(seed, size * 3)
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take_while({
            let mut n = 0;
            move |c| {
                n += c.len_utf8();
                n <= size || *c != '\n'
            }
        })
        .chain(std::iter::once('\n'))
        .collect()
}

/// The inputs, written once into `dir` (a file of the right length is reused: the generator
/// is seeded, so its bytes are those).
fn inputs(dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let digits = digits_log(16, 25_000_000);
    let no_digits = no_digits_log(16, 22_000_000);
    let mrz = "A<".repeat(3_200_000) + "\n";
    let mut out = Vec::new();
    for (label, name, text) in [
        (
            "25 MB digit-heavy access log",
            "national-digits.log",
            digits,
        ),
        ("22 MB without a digit", "national-nodigits.log", no_digits),
        ("6.4 MB `A<A<…` line", "national-mrz.log", mrz),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        out.push((label, path));
    }
    Ok(out)
}

/// User + system CPU seconds of `agent redact [--config … --profile national] input`, pinned
/// to CPU 0, its output written to `out`.
fn cpu_of(agent: &Path, national: bool, input: &Path, out: &Path) -> anyhow::Result<f64> {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-national.toml");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]).arg(agent).arg("redact");
    if national {
        cmd.arg("--config")
            .arg(&config)
            .args(["--profile", "national"]);
    }
    cmd.arg(input);
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let child = cmd
        .stdout(Stdio::from(file))
        .stdin(Stdio::null())
        .spawn()
        .context("cannot run taskset (util-linux)")?;
    let (ok, _, cpu) = crate::bench_redact::wait_with_rusage(child.id())?;
    if !ok {
        bail!("{cmd:?} failed");
    }
    Ok(cpu)
}

/// Runs the comparison (see the module doc).
pub fn run(agent: &Path, baseline: Option<&Path>, rounds: usize) -> anyhow::Result<()> {
    let dir = crate::target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!("load average: {}", crate::bench_redact::load_average());
    for (label, input) in inputs(&dir)? {
        let mut runs: Vec<(&str, &Path, bool)> = vec![
            ("default", agent, false),
            ("all 13 (national)", agent, true),
        ];
        if let Some(b) = baseline {
            runs.push(("all 13, baseline", b, true));
        }
        println!("{label}: {}", input.display());
        for (name, bin, national) in runs {
            let out = dir.join(format!("national-out-{}.log", name.len()));
            let cpu: Vec<String> = (0..rounds)
                .map(|_| cpu_of(bin, national, &input, &out).map(|c| format!("{c:.3}")))
                .collect::<anyhow::Result<_>>()?;
            println!("  {name:<20} CPU s per round: {}", cpu.join(" "));
        }
        if baseline.is_some() {
            let (now, before) = (
                dir.join(format!("national-out-{}.log", "all 13 (national)".len())),
                dir.join(format!("national-out-{}.log", "all 13, baseline".len())),
            );
            let same = Command::new("cmp")
                .arg(&now)
                .arg(&before)
                .status()?
                .success();
            println!(
                "  cmp {} {}: {}",
                now.display(),
                before.display(),
                if same { "identical" } else { "DIFFERENT" }
            );
            if !same {
                bail!("the national profile's output differs from the baseline's on {label}");
            }
        }
    }
    println!("load average: {}", crate::bench_redact::load_average());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is seeded: the same seed gives the same bytes, another seed others; it
    /// is digit-heavy and plants the real ids.
    #[test]
    fn the_digit_heavy_log_is_deterministic_and_holds_real_ids() {
        let a = digits_log(16, 2_000_000);
        assert_eq!(a, digits_log(16, 2_000_000));
        assert_ne!(a, digits_log(17, 2_000_000));
        assert!(a.len() >= 2_000_000 && a.len() < 2_001_000, "{}", a.len());
        for real in REAL {
            assert!(a.contains(&format!(" id={real}\n")), "{real}");
        }
        let digits = a.bytes().filter(u8::is_ascii_digit).count();
        assert!(digits * 2 > a.len(), "{digits} of {}", a.len());
        let none = no_digits_log(16, 100_000);
        assert!(!none.bytes().any(|b| b.is_ascii_digit()));
        assert!(none.len() >= 100_000 && none.ends_with('\n'));
    }
}
