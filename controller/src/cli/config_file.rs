//! Where the command-line client keeps its own configuration and the credentials `loggate
//! login` gives it (issue #14's "CLI configuration").
//!
//! The folder is `$LOGGATE_CONFIG_DIR`, else `~/.config/loggate/` (mode 0700). It holds
//! `config.toml` (the controller's address, the CA, the certificate and key paths: what every
//! command reads unless `--config`/`$LOGGATE_CONFIG` names another file) and, after a sign-in,
//! `user.key`, `user.crt` and `ca.crt` (mode 0600). `client.toml`, the name `loggate pki init`
//! used, is still read when there is no `config.toml`. `loggate logout` deletes the key and
//! certificate. A certificate from a sign-in that has expired makes every command say so
//! before it connects, instead of failing the TLS handshake.

use crate::cli::{Exit, Failure};
use crate::config::ClientConfig;
use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The private key of a sign-in, in the configuration folder.
pub const KEY_FILE: &str = "user.key";
/// The certificate of a sign-in.
pub const CERT_FILE: &str = "user.crt";
/// The CA that signed it (the controller's and agents' trust root).
pub const CA_FILE: &str = "ca.crt";

/// The client's configuration folder: `$LOGGATE_CONFIG_DIR`, else `~/.config/loggate`.
pub fn config_dir() -> PathBuf {
    ClientConfig::config_dir()
}

/// Makes the configuration folder (0700), tightening an existing one that others can read.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the configuration folder {}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
    }
    Ok(())
}

/// Writes `data` to `path` with mode 0600, replacing the file atomically (a temporary file
/// in the same folder, synced, then renamed): a half-written key never exists.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What a sign-in records in the configuration file.
pub struct SignedIn<'a> {
    /// The controller's gRPC address (commands).
    pub controller: &'a str,
    /// The controller's sign-in address (`loggate login`).
    pub sign_in: &'a str,
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Writes the configuration file for a sign-in, keeping nothing else of an older one (the
/// file has only these keys).
pub fn write_config(path: &Path, s: &SignedIn<'_>) -> anyhow::Result<()> {
    let mut tls = toml::Table::new();
    for (key, value) in [("ca", s.ca), ("cert", s.cert), ("key", s.key)] {
        let text = value
            .to_str()
            .with_context(|| format!("the path {} is not UTF-8", value.display()))?;
        tls.insert(key.into(), toml::Value::String(text.into()));
    }
    let mut table = toml::Table::new();
    table.insert(
        "controller".into(),
        toml::Value::String(s.controller.into()),
    );
    table.insert("sign_in".into(), toml::Value::String(s.sign_in.into()));
    table.insert("tls".into(), toml::Value::Table(tls));
    let text = format!(
        "# Written by `loggate login`: the controller, and the certificate of your last sign-in.\n{}",
        toml::to_string(&table).context("cannot write the configuration as TOML")?
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_private(path, text.as_bytes())
}

/// Refuses, before any connection, a configuration whose sign-in certificate has expired:
/// "your sign-in expired at …: run `loggate login`". Certificates not from a sign-in are left
/// to the TLS handshake's own error.
pub fn check_sign_in_current(config: &ClientConfig) -> Result<(), Failure> {
    if config.sign_in.is_none() {
        return Ok(());
    }
    let Ok(pem) = std::fs::read(&config.tls.cert) else {
        return Err(Failure::new(
            Exit::Error,
            format!(
                "you are not signed in (no certificate at {}): run `loggate login`",
                config.tls.cert.display()
            ),
        ));
    };
    let not_after = match certificate_not_after(&pem) {
        Ok(t) => t,
        Err(e) => {
            return Err(Failure::new(
                Exit::Error,
                format!(
                    "cannot read your certificate {}: {e:#}; run `loggate login`",
                    config.tls.cert.display()
                ),
            ))
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if not_after <= now {
        return Err(Failure::new(
            Exit::Error,
            format!(
                "your sign-in expired at {}: run `loggate login`",
                crate::cli::format_time(not_after)
            ),
        ));
    }
    Ok(())
}

/// The `notAfter` (Unix seconds) of the first certificate in a PEM file.
pub fn certificate_not_after(pem: &[u8]) -> anyhow::Result<i64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// `loggate logout`: deletes the sign-in's key and certificate (the configuration stays, so
/// `loggate login` knows where to sign in again).
pub fn logout(config_path: &Path) -> Result<(), Failure> {
    let (removed, kept) = remove_sign_in_files(&config_dir(), config_path)?;
    let mut err = std::io::stderr().lock();
    for path in &kept {
        let _ = writeln!(
            err,
            "left in place {}: the configuration names it, but `loggate login` did not write it",
            path.display()
        );
    }
    if removed.is_empty() {
        let _ = writeln!(err, "not signed in: no key or certificate to delete");
    } else {
        for path in &removed {
            let _ = writeln!(err, "deleted {}", path.display());
        }
        let _ = writeln!(err, "signed out");
    }
    Ok(())
}

/// Deletes `user.key` and `user.crt` in the configuration folder `dir` — the only files
/// `loggate login` writes — and nothing else: the paths a configuration file names are
/// reported, never deleted (a hostile or copied `config.toml` naming `~/.ssh/id_ed25519`
/// must not make `logout` delete it). Returns what was deleted and what was left.
fn remove_sign_in_files(
    dir: &Path,
    config_path: &Path,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), Failure> {
    let ours = [dir.join(KEY_FILE), dir.join(CERT_FILE)];
    let mut kept = Vec::new();
    if let Ok(config) = ClientConfig::load(config_path) {
        if config.sign_in.is_some() {
            for named in [&config.tls.key, &config.tls.cert] {
                if !ours.contains(named) && named.exists() {
                    kept.push(named.clone());
                }
            }
        }
    }
    let mut removed = Vec::new();
    for path in ours {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Failure::new(
                    Exit::Error,
                    format!("cannot delete {}: {e}", path.display()),
                ))
            }
        }
    }
    Ok((removed, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn cert_ending(dir: &Path, not_after: SystemTime) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.not_before = (not_after - Duration::from_secs(3600)).into();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).expect("cert");
        let path = dir.join("user.crt");
        std::fs::write(&path, cert.pem()).expect("write");
        path
    }

    fn signed_in_config(dir: &Path, sign_in: Option<&str>) -> ClientConfig {
        let path = dir.join("config.toml");
        write_config(
            &path,
            &SignedIn {
                controller: "127.0.0.1:7400",
                sign_in: sign_in.unwrap_or("127.0.0.1:7401"),
                ca: &dir.join("ca.crt"),
                cert: &dir.join("user.crt"),
                key: &dir.join("user.key"),
            },
        )
        .expect("write config");
        let mut config = ClientConfig::load(&path).expect("read back");
        if sign_in.is_none() {
            config.sign_in = None;
        }
        config
    }

    #[test]
    fn logout_deletes_only_what_login_wrote_in_its_folder() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join("loggate");
        std::fs::create_dir(&dir).expect("mkdir");
        let precious = home.path().join("id_ed25519");
        std::fs::write(&precious, "not loggate's").expect("write");
        std::fs::write(dir.join(KEY_FILE), "key").expect("write");
        std::fs::write(dir.join(CERT_FILE), "cert").expect("write");
        let path = dir.join("config.toml");
        write_config(
            &path,
            &SignedIn {
                controller: "127.0.0.1:7400",
                sign_in: "127.0.0.1:7401",
                ca: &dir.join("ca.crt"),
                cert: &dir.join(CERT_FILE),
                key: &precious,
            },
        )
        .expect("write config");
        let (removed, kept) = remove_sign_in_files(&dir, &path).expect("logout");
        assert!(
            precious.exists(),
            "logout deleted a file the configuration named"
        );
        assert_eq!(kept, std::slice::from_ref(&precious));
        assert_eq!(removed, [dir.join(KEY_FILE), dir.join(CERT_FILE)]);
    }

    #[test]
    fn an_expired_sign_in_is_reported_before_connecting() {
        let dir = tempfile::tempdir().expect("tempdir");
        cert_ending(dir.path(), SystemTime::now() - Duration::from_secs(60));
        let config = signed_in_config(dir.path(), Some("127.0.0.1:7401"));
        let failure = check_sign_in_current(&config).expect_err("expired");
        assert!(
            failure.message.starts_with("your sign-in expired at ")
                && failure.message.ends_with(": run `loggate login`"),
            "{}",
            failure.message
        );
        // A certificate not from a sign-in is left to the TLS handshake.
        let config = signed_in_config(dir.path(), None);
        assert!(check_sign_in_current(&config).is_ok());
        // A current one passes.
        cert_ending(dir.path(), SystemTime::now() + Duration::from_secs(600));
        let config = signed_in_config(dir.path(), Some("127.0.0.1:7401"));
        assert!(check_sign_in_current(&config).is_ok());
        // No certificate at all: sign in.
        std::fs::remove_file(dir.path().join("user.crt")).expect("rm");
        let failure = check_sign_in_current(&config).expect_err("missing");
        assert!(
            failure.message.contains("run `loggate login`"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn the_configuration_written_by_login_is_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = signed_in_config(dir.path(), Some("idp-side.example:7401"));
        assert_eq!(config.controller, "127.0.0.1:7400");
        assert_eq!(config.sign_in.as_deref(), Some("idp-side.example:7401"));
        assert_eq!(config.tls.key, dir.path().join("user.key"));
        let mode = std::fs::metadata(dir.path().join("config.toml"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let private = dir.path().join("folder");
        std::fs::create_dir(&private).expect("mkdir");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&private).expect("tightened");
        let mode = std::fs::metadata(&private)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
