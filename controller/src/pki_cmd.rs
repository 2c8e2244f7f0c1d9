//! `loggate pki init|issue|pin|new-signing-key`: the development PKI (see [`crate::pki`]) plus
//! what loggate needs beside certificates: the controller's grant-signing key (made by `init`, and
//! alone by `new-signing-key` for a key rotation, docs/operations.md) and one client configuration
//! per user.

use crate::pki;
use anyhow::{bail, Context};
use clap::Args;
use loggate_core::grant::SigningKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct InitArgs {
    /// Folder to create (must not already hold a CA).
    dir: PathBuf,
    #[arg(long, default_value = "loggate.local")]
    trust_domain: String,
    /// Agent ids to issue certificates for (repeatable).
    #[arg(long = "agent", default_values = ["web-1", "web-2"])]
    agents: Vec<String>,
    /// User names to issue certificates for (repeatable); the first is meant as the admin.
    #[arg(long = "user", default_values = ["admin", "alice", "bob"])]
    users: Vec<String>,
    /// Controller address written into the client configurations.
    #[arg(long, default_value = "127.0.0.1:7400")]
    controller_addr: String,
}

/// `--agent` and `--user` are one choice (a clap group): exactly one is given, and giving both
/// or neither is a usage error (exit 2) before anything is read.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("holder").required(true).multiple(false).args(["agent", "user"])))]
pub struct IssueArgs {
    /// Folder holding the CA (from `loggate pki init`).
    dir: PathBuf,
    /// Default: the trust domain `pki init` recorded in DIR/pki.toml ("loggate.local" without
    /// it); another one than recorded is refused.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Issue an agent certificate with this id (or --user, not both).
    #[arg(long)]
    agent: Option<String>,
    /// Issue a user certificate with this name (or --agent, not both).
    #[arg(long)]
    user: Option<String>,
    /// With --user: the group written in the certificate's subject (its OU), which the access
    /// policy matches like a `[groups]` member (docs/policy.md).
    #[arg(long, requires = "user")]
    group: Option<String>,
    /// Start of validity (RFC 3339); default 5 minutes ago.
    #[arg(long, value_parser = loggate_core::timestamp::parse_absolute_time)]
    valid_from: Option<std::time::SystemTime>,
    /// End of validity (RFC 3339); default one year from now.
    #[arg(long, value_parser = loggate_core::timestamp::parse_absolute_time)]
    valid_until: Option<std::time::SystemTime>,
    /// Controller address written into a new user's client configuration. Default: the one
    /// `pki init` recorded in DIR/pki.toml ("127.0.0.1:7400" without it).
    #[arg(long)]
    controller_addr: Option<String>,
}

#[derive(Args)]
pub struct NewSigningKeyArgs {
    /// Where to write the new private key (0600, never overwritten); its public key is written
    /// beside it with the extension `.pub` (e.g. grant-signing-2.key and grant-signing-2.pub).
    #[arg(long)]
    out: PathBuf,
}

/// What `pki init` chose, recorded in DIR/pki.toml so that `pki issue` uses the same.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    trust_domain: String,
    controller_addr: String,
}

const RECORD: &str = "pki.toml";

impl Recorded {
    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let text = format!(
            "# Written by `loggate pki init`: the defaults of `loggate pki issue` for this CA.\n{}",
            toml::to_string(self)?
        );
        std::fs::write(dir.join(RECORD), text)
            .with_context(|| format!("cannot write {}", dir.join(RECORD).display()))
    }

    /// DIR/pki.toml, or `None` for a PKI made before it was written.
    fn read(dir: &Path) -> anyhow::Result<Option<Recorded>> {
        let path = dir.join(RECORD);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .with_context(|| format!("invalid {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// Writes a new file that only its owner can read; refuses to overwrite.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// A controller address as `host:port`: no spaces, quotes or control characters.
fn check_controller_addr(addr: &str) -> anyhow::Result<()> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--controller-addr {addr:?} is not host:port"))?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if !host_ok || port.parse::<u16>().is_err() {
        bail!("--controller-addr {addr:?} is not host:port (e.g. \"controller.example:7400\")");
    }
    Ok(())
}

fn write_client_config(dir: &Path, user: &str, controller: &str) -> anyhow::Result<PathBuf> {
    check_controller_addr(controller)?;
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    let path = clients.join(format!("{user}.toml"));
    // Written as a TOML string (escaped), whatever it holds.
    let controller = toml::Value::String(controller.to_string());
    let text = format!(
        "# loggate client configuration for {user} (use with --config or LOGGATE_CONFIG).\n\
         controller = {controller}\n\n\
         [tls]\n\
         ca = \"../ca.crt\"\n\
         cert = \"../users/{user}.crt\"\n\
         key = \"../users/{user}.key\"\n"
    );
    write_private(&path, &text)?;
    Ok(path)
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    check_controller_addr(&args.controller_addr)?;
    pki::init(&args.dir, &args.trust_domain, &args.agents, &args.users)?;
    let key = SigningKey::generate()?;
    write_private(
        &args.dir.join("grant-signing.key"),
        &format!("{}\n", key.to_paserk()),
    )?;
    std::fs::write(
        args.dir.join("grant-signing.pub"),
        format!("{}\n", key.verifying_key().to_paserk()),
    )?;
    Recorded {
        trust_domain: args.trust_domain.clone(),
        controller_addr: args.controller_addr.clone(),
    }
    .write(&args.dir)?;
    for user in &args.users {
        write_client_config(&args.dir, user, &args.controller_addr)?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "created development PKI in {}", args.dir.display())?;
    let ca_der = loggate_core::tls::read_certificate_der(&args.dir.join("ca.crt"))?;
    writeln!(
        stdout,
        "  CA                  ca.crt (key ca.key), pin {} (loggate-agent enrol --ca-pin)",
        loggate_core::tls::ca_pin(&ca_der)?
    )?;
    writeln!(stdout, "  controller          controller.crt")?;
    for a in &args.agents {
        writeln!(stdout, "  agent {a:<13} agents/{a}.crt")?;
    }
    for u in &args.users {
        writeln!(
            stdout,
            "  user {u:<14} users/{u}.crt   client config clients/{u}.toml"
        )?;
    }
    writeln!(
        stdout,
        "  grant-signing key   grant-signing.key (public: grant-signing.pub, key id {})",
        key.verifying_key().kid()
    )?;
    Ok(())
}

/// `loggate pki pin CA`: the pin `loggate-agent enrol --ca-pin` takes.
pub fn pin(ca: &Path) -> anyhow::Result<()> {
    let der = loggate_core::tls::read_certificate_der(ca)?;
    let pin = loggate_core::tls::ca_pin(&der).with_context(|| format!("{}", ca.display()))?;
    writeln!(std::io::stdout().lock(), "{pin}")?;
    Ok(())
}

/// The public key's file for the private key at `out`: the same name with the extension `.pub`.
/// A name ending in `.pub` is refused (the key and its public half would be one file), as is a
/// name without a file name.
fn public_key_path(out: &Path) -> anyhow::Result<PathBuf> {
    if out.file_name().is_none() {
        bail!(
            "--out {} names no file; give the new key's file, e.g. --out /etc/loggate/grant-signing-2.key",
            out.display()
        );
    }
    if out.extension().is_some_and(|e| e == "pub") {
        bail!(
            "--out {} ends in .pub, the name of the public key written beside it; name the \
             private key, e.g. grant-signing-2.key",
            out.display()
        );
    }
    Ok(out.with_extension("pub"))
}

/// `loggate pki new-signing-key --out FILE`: a new Ed25519 grant-signing key alone (no CA), for
/// a rotation. The key is written 0600 and never over an existing file (the key in use must not
/// be lost by a typo); its public key goes to FILE with the extension `.pub`, for the agents'
/// `grant_keys`. Nothing is left behind when either file cannot be written.
pub fn new_signing_key(args: NewSigningKeyArgs) -> anyhow::Result<()> {
    let public = public_key_path(&args.out)?;
    for path in [&args.out, &public] {
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; a new key never replaces a file (it may be the key in use): \
                 choose another --out",
                path.display()
            );
        }
    }
    let key = SigningKey::generate()?;
    write_private(&args.out, &format!("{}\n", key.to_paserk()))?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&public)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", key.verifying_key().to_paserk()).as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        // Best effort: a key without its public half is of no use and must not linger.
        let _ = std::fs::remove_file(&args.out);
        return Err(e).with_context(|| format!("cannot create {}", public.display()));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "grant-signing key {} (0600), public key {}, key id {}",
        args.out.display(),
        public.display(),
        key.verifying_key().kid()
    )?;
    writeln!(
        stdout,
        "next: add {} to every agent's grant_keys, then set the controller's signing_key \
         (docs/operations.md, Key rotation)",
        public.display()
    )?;
    Ok(())
}

pub fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let (kind, name) = match (&args.agent, &args.user) {
        (Some(a), None) => (pki::Kind::Agent, a.clone()),
        (None, Some(u)) => (pki::Kind::User, u.clone()),
        // The clap group makes this unreachable from the command line.
        _ => bail!("pass exactly one of --agent or --user"),
    };
    let validity = match (args.valid_from, args.valid_until) {
        (None, None) => None,
        (from, until) => {
            let now = std::time::SystemTime::now();
            Some(pki::Validity {
                not_before: from.unwrap_or(now - std::time::Duration::from_secs(300)),
                not_after: until.unwrap_or(now + std::time::Duration::from_secs(365 * 86400)),
            })
        }
    };
    let recorded = Recorded::read(&args.dir)?;
    let trust_domain = match (args.trust_domain, &recorded) {
        (Some(asked), Some(r)) if asked != r.trust_domain => bail!(
            "this PKI's trust domain is {:?} ({}); a certificate for {asked:?} would not be \
             accepted by its controller and agents",
            r.trust_domain,
            args.dir.join(RECORD).display()
        ),
        (Some(asked), _) => asked,
        (None, Some(r)) => r.trust_domain.clone(),
        (None, None) => "loggate.local".to_string(),
    };
    let controller_addr = match (args.controller_addr, &recorded) {
        (Some(asked), _) => asked,
        (None, Some(r)) => r.controller_addr.clone(),
        (None, None) => "127.0.0.1:7400".to_string(),
    };
    if args.user.is_some() {
        check_controller_addr(&controller_addr)?;
    }
    let cert = match args.group {
        None => pki::issue(&args.dir, &trust_domain, kind, &name, validity)?,
        Some(group) => {
            pki::issue_with_groups(&args.dir, &trust_domain, kind, &name, validity, &[group])?
        }
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "issued {}", cert.display())?;
    if args.user.is_some() {
        let config = write_client_config(&args.dir, &name, &controller_addr)?;
        writeln!(stdout, "client configuration {}", config.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggate_core::identity::Identity;
    use loggate_core::tls::read_certificate_der;

    fn issue_args(dir: &Path, user: &str, trust_domain: Option<&str>) -> IssueArgs {
        IssueArgs {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.map(str::to_string),
            agent: None,
            user: Some(user.to_string()),
            group: None,
            valid_from: None,
            valid_until: None,
            controller_addr: None,
        }
    }

    #[test]
    fn issue_uses_the_trust_domain_and_address_init_recorded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        init(InitArgs {
            dir: dir.clone(),
            trust_domain: "corp.example".into(),
            agents: vec!["web-1".into()],
            users: vec!["admin".into()],
            controller_addr: "10.0.0.5:7400".into(),
        })
        .expect("init");
        issue(issue_args(&dir, "dave", None)).expect("issue with the recorded defaults");
        let config = std::fs::read_to_string(dir.join("clients/dave.toml")).expect("config");
        assert!(
            config.contains("controller = \"10.0.0.5:7400\""),
            "{config}"
        );
        let der = read_certificate_der(&dir.join("users/dave.crt")).expect("cert");
        let who = Identity::from_certificate(&der, "corp.example").expect("corp.example identity");
        assert_eq!(who.spiffe_id(), "spiffe://corp.example/user/dave");

        let err = issue(issue_args(&dir, "erin", Some("loggate.local"))).expect_err("other td");
        assert!(
            format!("{err:#}").contains("this PKI's trust domain is \"corp.example\""),
            "{err:#}"
        );
        assert!(!dir.join("users/erin.crt").exists());

        // An address that would inject TOML is refused before anything is written.
        let mut bad = issue_args(&dir, "frank", None);
        bad.controller_addr = Some("x:1\"\n[tls]\nca = \"/etc/evil\"\n#:7400".into());
        let err = issue(bad).expect_err("injection");
        assert!(format!("{err:#}").contains("is not host:port"), "{err:#}");
        assert!(!dir.join("clients/frank.toml").exists());
        assert!(!dir.join("users/frank.crt").exists());
        for good in ["127.0.0.1:7400", "controller.example:7400", "[::1]:7400"] {
            check_controller_addr(good).expect(good);
        }
    }

    #[test]
    fn new_signing_key_writes_a_private_key_and_its_public_key_and_never_overwrites() {
        use loggate_core::grant::VerifyingKey;
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("grant-signing-2.key");
        new_signing_key(NewSigningKeyArgs { out: out.clone() }).expect("new key");
        let mode = std::fs::metadata(&out).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let private = std::fs::read_to_string(&out).expect("key");
        let key = SigningKey::from_paserk(private.trim()).expect("a signing key");
        let public = std::fs::read_to_string(tmp.path().join("grant-signing-2.pub")).expect("pub");
        let verifying = VerifyingKey::from_paserk(public.trim()).expect("a public key");
        assert_eq!(verifying.kid(), key.verifying_key().kid());

        // A second run over the same name is refused and changes nothing.
        let err = new_signing_key(NewSigningKeyArgs { out: out.clone() }).expect_err("exists");
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&out).expect("key"), private);

        // Only the public key's name taken: refused before the private key is written.
        let other = tmp.path().join("other.key");
        std::fs::write(tmp.path().join("other.pub"), "x").expect("pub");
        let err = new_signing_key(NewSigningKeyArgs { out: other.clone() }).expect_err("pub");
        assert!(
            format!("{err:#}").contains("other.pub already exists"),
            "{err:#}"
        );
        assert!(!other.exists());

        let err = new_signing_key(NewSigningKeyArgs {
            out: tmp.path().join("k.pub"),
        })
        .expect_err(".pub");
        assert!(format!("{err:#}").contains("ends in .pub"), "{err:#}");
        let err = new_signing_key(NewSigningKeyArgs {
            out: tmp.path().join("missing/k.key"),
        })
        .expect_err("no folder");
        assert!(format!("{err:#}").contains("cannot create"), "{err:#}");
        assert!(!tmp.path().join("missing").exists());
    }

    #[test]
    fn a_user_certificate_carries_its_group_which_the_identity_reads() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("pki");
        init(InitArgs {
            dir: dir.clone(),
            trust_domain: "loggate.local".into(),
            agents: vec!["web-1".into()],
            users: vec!["admin".into()],
            controller_addr: "127.0.0.1:7400".into(),
        })
        .expect("init");
        let mut args = issue_args(&dir, "gina", None);
        args.group = Some("sre".into());
        issue(args).expect("issue with a group");
        let der = read_certificate_der(&dir.join("users/gina.crt")).expect("cert");
        let who = Identity::from_certificate(&der, "loggate.local").expect("identity");
        assert_eq!(who.groups(), ["sre"]);
        let der = read_certificate_der(&dir.join("users/admin.crt")).expect("cert");
        let admin = Identity::from_certificate(&der, "loggate.local").expect("identity");
        assert!(admin.groups().is_empty());

        let mut bad = issue_args(&dir, "hank", None);
        bad.group = Some("SRE; admin".into());
        let err = issue(bad).expect_err("not a group name");
        assert!(
            format!("{err:#}").contains("is not a group name"),
            "{err:#}"
        );
        assert!(!dir.join("users/hank.crt").exists());
    }
}
