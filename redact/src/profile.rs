//! Redaction profiles from the agent's configuration (`[redaction]`, documented in
//! `docs/configuration.md` and `docs/redaction.md`), validated and compiled once at start.
//!
//! The built-in `default` profile exists without configuration; `raw` is not a profile here
//! (the gate decides about it with `allow_raw`) and cannot be defined.

use super::finding::Builtin;
use super::validate::Validator;
use super::{Detector, HashKey, Mode, Redactor};
use anyhow::{bail, Context};
use regex::bytes::RegexBuilder;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `[redaction]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionConfigFile {
    /// Key file of `hash` mode (≥ 32 bytes, readable by the agent only). Required when a
    /// profile uses `hash`.
    #[serde(default)]
    hash_key_file: Option<PathBuf>,
    #[serde(default)]
    profiles: BTreeMap<String, ProfileFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// Built-in detectors to run; absent means all of them.
    #[serde(default)]
    detectors: Option<Vec<String>>,
    /// Mode of every detector not named in `modes`.
    #[serde(default = "default_mode")]
    default_mode: Mode,
    /// Mode per detector name (built-in or custom).
    #[serde(default)]
    modes: BTreeMap<String, Mode>,
    #[serde(default)]
    custom: Vec<CustomFile>,
}

fn default_mode() -> Mode {
    Mode::Mask
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomFile {
    name: String,
    regex: String,
    #[serde(default)]
    validator: Option<Validator>,
}

/// Size limit of a custom detector's compiled regex (bytes).
const CUSTOM_REGEX_LIMIT: usize = 1 << 20;

/// The compiled profiles, by name.
#[derive(Debug, Clone)]
pub struct Profiles {
    by_name: HashMap<String, Arc<Redactor>>,
}

impl Profiles {
    /// Only the built-in `default` profile.
    pub fn builtin() -> Profiles {
        let mut by_name = HashMap::new();
        by_name.insert("default".to_string(), Arc::new(Redactor::default_profile()));
        Profiles { by_name }
    }

    /// The compiled profile of that name.
    pub fn get(&self, name: &str) -> Option<Arc<Redactor>> {
        self.by_name.get(name).cloned()
    }

    /// The profiles' names, sorted (for "available: …" in errors).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Validates and compiles `file`; relative paths are resolved against `base`. A profile
    /// named `default` replaces the built-in one.
    pub fn load(file: RedactionConfigFile, base: &Path) -> anyhow::Result<Profiles> {
        let uses_hash = file
            .profiles
            .values()
            .any(|p| p.default_mode == Mode::Hash || p.modes.values().any(|m| *m == Mode::Hash));
        let key = match &file.hash_key_file {
            Some(path) => Some(Arc::new(read_hash_key(&base.join(path))?)),
            None if uses_hash => bail!(
                "redaction: a profile uses mode \"hash\" but hash_key_file is not set (pseudonyms are always keyed)"
            ),
            None => None,
        };
        let mut profiles = Profiles::builtin();
        for (name, p) in file.profiles {
            let redactor = compile(&name, p, key.clone())
                .with_context(|| format!("redaction.profiles.{name}"))?;
            profiles.by_name.insert(name, Arc::new(redactor));
        }
        Ok(profiles)
    }
}

/// Whether `name` can name a redaction profile (a grant's `redaction` claim) or one of a
/// profile's custom detectors: lowercase letters, digits, `_` and `-`, 1 to 64 bytes.
///
/// The one home of the rule: the agent checks its profiles with it, the controller (through
/// `loggate_core::grant`) the profile names in its configuration, so that a grant can only
/// name a profile an agent can define.
pub fn is_valid_redaction_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn compile(name: &str, p: ProfileFile, key: Option<Arc<HashKey>>) -> anyhow::Result<Redactor> {
    if name == "raw" {
        bail!("\"raw\" is reserved for no redaction (allow_raw); choose another name");
    }
    if !is_valid_redaction_name(name) {
        bail!("profile names are lowercase letters, digits, '_' and '-'");
    }
    let builtins: Vec<Builtin> = match &p.detectors {
        None => Builtin::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| {
                Builtin::from_name(n).with_context(|| {
                    format!(
                        "detectors: unknown detector {n:?}; the built-in detectors are {} (`loggate-agent redact --list-detectors` describes them)",
                        Builtin::ALL
                            .into_iter()
                            .chain(Builtin::OPT_IN)
                            .map(Builtin::name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let mut seen: Vec<String> = builtins.iter().map(|b| b.name().to_string()).collect();
    for c in &p.custom {
        if !is_valid_redaction_name(&c.name)
            || Builtin::from_name(&c.name).is_some()
            || seen.contains(&c.name)
        {
            bail!(
                "custom detector name {:?} must be unique, not a built-in name, and lowercase letters, digits, '_' or '-'",
                c.name
            );
        }
        seen.push(c.name.clone());
    }
    for (detector, mode) in &p.modes {
        if !seen.contains(detector) {
            bail!("modes: {detector:?} is not a detector of this profile");
        }
        if detector == Builtin::PrivateKey.name() && *mode != Mode::Mask {
            bail!("modes: private_key blocks can only be masked");
        }
    }
    let mode_of = |n: &str| match p.modes.get(n) {
        Some(m) => *m,
        None if n == Builtin::PrivateKey.name() => Mode::Mask,
        None => p.default_mode,
    };
    let mut detectors: Vec<Detector> = builtins
        .iter()
        .map(|b| Detector::builtin(*b, mode_of(b.name())))
        .collect();
    for c in p.custom {
        let regex = RegexBuilder::new(&c.regex)
            .size_limit(CUSTOM_REGEX_LIMIT)
            .dfa_size_limit(CUSTOM_REGEX_LIMIT)
            .build()
            .with_context(|| format!("custom detector {:?}: invalid regex", c.name))?;
        if regex.is_match(b"") {
            bail!(
                "custom detector {:?}: the regex matches the empty string",
                c.name
            );
        }
        let mode = mode_of(&c.name);
        detectors.push(Detector::custom(c.name, mode, regex, c.validator));
    }
    Redactor::new(detectors, key).map_err(anyhow::Error::msg)
}

fn read_hash_key(path: &Path) -> anyhow::Result<HashKey> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("redaction.hash_key_file: cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "redaction.hash_key_file: {} is readable by others; chmod 600 it",
            path.display()
        );
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("redaction.hash_key_file: cannot read {}", path.display()))?;
    HashKey::new(bytes).map_err(|e| anyhow::anyhow!("redaction.hash_key_file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_names_are_1_to_64_lowercase_letters_digits_underscores_or_dashes() {
        let long = "a".repeat(65);
        for (name, valid) in [
            ("default", true),
            ("pci-2", true),
            ("eu_gdpr", true),
            (&long[..64], true),
            ("", false),
            ("Default", false),
            ("a b", false),
            ("x/y", false),
            ("é", false),
            (&long, false),
        ] {
            assert_eq!(is_valid_redaction_name(name), valid, "{name:?}");
        }
    }

    fn load(toml_text: &str, base: &Path) -> anyhow::Result<Profiles> {
        let file: RedactionConfigFile = toml::from_str(toml_text)?;
        Profiles::load(file, base)
    }

    #[test]
    fn default_profile_exists_without_configuration() {
        let p = load("", Path::new(".")).unwrap();
        assert_eq!(p.names(), ["default"]);
        let d = p.get("default").unwrap();
        assert_eq!(d.detector_names().count(), Builtin::ALL.len());
    }

    #[test]
    fn profiles_choose_detectors_modes_and_custom_detectors() {
        let p = load(
            r#"
            [profiles.support]
            detectors = ["email", "card"]
            modes = { card = "partial", employee = "mask" }
            [[profiles.support.custom]]
            name = "employee"
            regex = "EMP-[0-9]{6}"
            [[profiles.support.custom]]
            name = "account"
            regex = "acct=(?P<value>[0-9 ]+)"
            validator = "luhn"
            "#,
            Path::new("."),
        )
        .unwrap();
        let r = p.get("support").unwrap();
        assert_eq!(
            r.detector_names().collect::<Vec<_>>(),
            ["email", "card", "employee", "account"]
        );
        assert!(p.get("default").is_some());
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let cases = [
            ("[profiles.raw]", "reserved"),
            (
                "[profiles.x]\ndetectors = [\"fax\"]",
                "unknown detector \"fax\"",
            ),
            (
                "[profiles.x]\nmodes = { nope = \"mask\" }",
                "not a detector",
            ),
            (
                "[profiles.x]\nmodes = { email = \"hash\" }",
                "hash_key_file is not set",
            ),
            (
                "[profiles.x]\nmodes = { private_key = \"partial\" }",
                "only be masked",
            ),
            (
                "[[profiles.x.custom]]\nname = \"c\"\nregex = \"(\"",
                "invalid regex",
            ),
            (
                "[[profiles.x.custom]]\nname = \"c\"\nregex = \"a*\"",
                "empty string",
            ),
            (
                "[[profiles.x.custom]]\nname = \"email\"\nregex = \"a\"",
                "must be unique",
            ),
            ("[profiles.x]\nwhat = 1", "unknown field"),
            (
                "[[profiles.x.custom]]\nname = \"c\"\nregex = \"a\"\nvalidator = \"md5\"",
                "unknown variant",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", load(text, Path::new(".")).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn hash_key_must_be_long_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, [7u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = "hash_key_file = \"k\"\n[profiles.h]\ndefault_mode = \"hash\"";
        let err = format!("{:#}", load(text, dir.path()).unwrap_err());
        assert!(err.contains("readable by others"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(text, dir.path()).is_ok());
        std::fs::write(&key, [7u8; 16]).unwrap();
        let err = format!("{:#}", load(text, dir.path()).unwrap_err());
        assert!(err.contains("at least 32"), "{err}");
    }
}
