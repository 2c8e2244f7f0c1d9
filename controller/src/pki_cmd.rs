//! `loggate pki init|issue`: the development PKI (see [`crate::pki`]) plus what loggate needs
//! beside certificates: the controller's grant-signing key and one client configuration per user.

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

#[derive(Args)]
pub struct IssueArgs {
    /// Folder holding the CA (from `loggate pki init`).
    dir: PathBuf,
    #[arg(long, default_value = "loggate.local")]
    trust_domain: String,
    /// Issue an agent certificate with this id.
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    agent: Option<String>,
    /// Issue a user certificate with this name.
    #[arg(long)]
    user: Option<String>,
    /// Start of validity (RFC 3339); default 5 minutes ago.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    valid_from: Option<std::time::SystemTime>,
    /// End of validity (RFC 3339); default one year from now.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    valid_until: Option<std::time::SystemTime>,
    /// Controller address written into a new user's client configuration.
    #[arg(long, default_value = "127.0.0.1:7400")]
    controller_addr: String,
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

fn write_client_config(dir: &Path, user: &str, controller: &str) -> anyhow::Result<PathBuf> {
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    let path = clients.join(format!("{user}.toml"));
    let text = format!(
        "# loggate client configuration for {user} (use with --config or LOGGATE_CONFIG).\n\
         controller = \"{controller}\"\n\n\
         [tls]\n\
         ca = \"../ca.crt\"\n\
         cert = \"../users/{user}.crt\"\n\
         key = \"../users/{user}.key\"\n"
    );
    write_private(&path, &text)?;
    Ok(path)
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
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
    for user in &args.users {
        write_client_config(&args.dir, user, &args.controller_addr)?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "created development PKI in {}", args.dir.display())?;
    writeln!(stdout, "  CA                  ca.crt (key ca.key)")?;
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

pub fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let (kind, name) = match (&args.agent, &args.user) {
        (Some(a), None) => (pki::Kind::Agent, a.clone()),
        (None, Some(u)) => (pki::Kind::User, u.clone()),
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
    let cert = pki::issue(&args.dir, &args.trust_domain, kind, &name, validity)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "issued {}", cert.display())?;
    if args.user.is_some() {
        let config = write_client_config(&args.dir, &name, &args.controller_addr)?;
        writeln!(stdout, "client configuration {}", config.display())?;
    }
    Ok(())
}
