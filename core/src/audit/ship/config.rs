//! `[[audit.sinks]]`: what a sink is configured with, and its validation at start. Every file a
//! sink needs (CA, certificate, key, token) is read here, so a bad one stops the program before
//! it serves anything, with a message naming the sink and the field.

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The documentation PEN (RFC 5612); deployments should register their own.
pub const DEFAULT_SD_ID: &str = "loggate@32473";
const DEFAULT_BATCH: usize = 500;
const MAX_BATCH: usize = 10_000;

fn default_batch() -> usize {
    DEFAULT_BATCH
}

/// The `[audit]` table of the agent's and the controller's configuration: where the audit
/// stream is delivered besides the local file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// `[[audit.sinks]]`, one per receiver.
    #[serde(default)]
    pub sinks: Vec<SinkFile>,
}

/// One `[[audit.sinks]]` table as written, told apart by its `kind`. Each kind takes only its
/// own keys: a key of the other kind (`url` on a syslog sink, say) is refused by name when the
/// file is parsed, with the keys the kind does take.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SinkFile {
    /// RFC 5425 syslog over mutual TLS.
    SyslogTls(SyslogSinkFile),
    /// Splunk HTTP Event Collector.
    Hec(HecSinkFile),
}

/// `kind = "syslog-tls"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkFile {
    name: String,
    /// The receiver's `host:port` (required).
    #[serde(default)]
    address: Option<String>,
    /// The name the receiver's certificate must carry (default: the host of `address`).
    #[serde(default)]
    server_name: Option<String>,
    /// The structured-data id (default `loggate@32473`).
    #[serde(default)]
    sd_id: Option<String>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default = "default_batch")]
    batch_size: usize,
}

/// `kind = "hec"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecSinkFile {
    name: String,
    /// `https://host:port/services/collector/event` (required; http only for loopback).
    #[serde(default)]
    url: Option<String>,
    /// File holding the HEC token.
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default = "default_batch")]
    batch_size: usize,
}

/// A validated sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The sink's name (its cursor file, its status, its log lines).
    pub name: String,
    /// Most records sent in one batch.
    pub batch_size: usize,
    /// Where and how records are sent.
    pub target: Target,
}

/// Where a sink sends records.
#[derive(Debug, Clone)]
pub enum Target {
    /// Syslog over TLS (RFC 5425).
    Syslog(SyslogTarget),
    /// Splunk's HTTP Event Collector.
    Hec(HecTarget),
}

/// A syslog-over-TLS receiver.
#[derive(Debug, Clone)]
pub struct SyslogTarget {
    /// `host:port` to connect to.
    pub address: String,
    /// The name its certificate must carry.
    pub server_name: ServerName<'static>,
    /// The TLS client settings (the receiver's CA, our certificate if any).
    pub tls: Arc<ClientConfig>,
    /// The structured-data id records are sent under.
    pub sd_id: String,
}

/// A Splunk HTTP Event Collector.
#[derive(Debug, Clone)]
pub struct HecTarget {
    /// The collector's URL.
    pub url: http::Uri,
    /// `host:port` to connect to.
    pub address: String,
    /// `Some` for https.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// The collector's token.
    pub token: HecToken,
}

/// The HEC token; its `Debug` never shows it.
#[derive(Clone)]
pub struct HecToken(pub(crate) String);

impl std::fmt::Debug for HecToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HecToken(…)")
    }
}

/// Validates every sink; relative paths are resolved against `base`.
pub fn validate_sinks(files: &[SinkFile], base: &Path) -> anyhow::Result<Vec<SinkConfig>> {
    let mut out: Vec<SinkConfig> = Vec::new();
    for file in files {
        let sink = file
            .validate(base)
            .with_context(|| format!("audit.sinks {:?}", file.name()))?;
        if out.iter().any(|s| s.name == sink.name) {
            bail!("audit.sinks: the name {:?} is used twice", sink.name);
        }
        out.push(sink);
    }
    Ok(out)
}

impl SinkFile {
    fn name(&self) -> &str {
        match self {
            SinkFile::SyslogTls(f) => &f.name,
            SinkFile::Hec(f) => &f.name,
        }
    }

    fn validate(&self, base: &Path) -> anyhow::Result<SinkConfig> {
        let (name, batch_size) = match self {
            SinkFile::SyslogTls(f) => (&f.name, f.batch_size),
            SinkFile::Hec(f) => (&f.name, f.batch_size),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            bail!("name must be 1–64 lowercase letters, digits, '-' or '_' (it names the cursor file)");
        }
        if batch_size == 0 || batch_size > MAX_BATCH {
            bail!("batch_size must be between 1 and {MAX_BATCH}");
        }
        let target = match self {
            SinkFile::SyslogTls(f) => Target::Syslog(f.validate(base)?),
            SinkFile::Hec(f) => Target::Hec(f.validate(base)?),
        };
        Ok(SinkConfig {
            name: name.clone(),
            batch_size,
            target,
        })
    }
}

impl SyslogSinkFile {
    fn validate(&self, base: &Path) -> anyhow::Result<SyslogTarget> {
        let address = self
            .address
            .clone()
            .context("address (\"host:port\" of the syslog receiver) is required")?;
        let host = host_of(&address)?;
        let server_name = server_name(self.server_name.as_deref().unwrap_or(host))?;
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            bail!("ca, cert and key are required: syslog-tls is always mutual TLS");
        };
        let sd_id = self.sd_id.clone().unwrap_or_else(|| DEFAULT_SD_ID.into());
        check_sd_id(&sd_id)?;
        Ok(SyslogTarget {
            address,
            server_name,
            tls: client_tls(
                &base.join(ca),
                Some((&base.join(cert), &base.join(key))),
                b"",
            )?,
            sd_id,
        })
    }
}

impl HecSinkFile {
    fn validate(&self, base: &Path) -> anyhow::Result<HecTarget> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
        let text = self
            .url
            .as_deref()
            .context("url (https://host:port/services/collector/event) is required")?;
        let url: http::Uri = text
            .parse()
            .with_context(|| format!("url {text:?} is not a URL"))?;
        let host = url.host().context("url has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") if is_loopback(&host) => false,
            Some("http") => {
                bail!("url: plain http is only allowed to a loopback address (tests); use https")
            }
            _ => bail!("url must start with https://"),
        };
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let token_file = path(&self.token_file)
            .context("token_file (a file holding the HEC token) is required")?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("token_file: cannot read {}", token_file.display()))?
            .trim()
            .to_string();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "token_file {}: the token must be one line of printable characters",
                token_file.display()
            );
        }
        let client = match (path(&self.cert), path(&self.key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("cert and key go together (a client certificate for the collector)"),
        };
        let tls = if https {
            let ca = path(&self.ca).context("ca is required for an https url")?;
            let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            Some((client_tls(&ca, client, b"http/1.1")?, server_name(&host)?))
        } else {
            if self.ca.is_some() || client.is_some() {
                bail!("ca, cert and key only apply to an https url");
            }
            None
        };
        Ok(HecTarget {
            url,
            address,
            tls,
            token: HecToken(token),
        })
    }
}

fn host_of(address: &str) -> anyhow::Result<&str> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("address {address:?} must be \"host:port\""))?;
    if port.parse::<u16>().map_or(true, |p| p == 0) || host.is_empty() {
        bail!("address {address:?} must be \"host:port\"");
    }
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string())
        .map_err(|_| anyhow::anyhow!("{name:?} is not a DNS name or IP address"))
}

/// An RFC 5424 SD-ID: printable US-ASCII without `=`, space, `]`, `"`, at most 32 characters;
/// ours must be an enterprise id (`name@<PEN>`).
fn check_sd_id(id: &str) -> anyhow::Result<()> {
    let printable = id
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"'));
    let enterprise = id.split_once('@').is_some_and(|(n, pen)| {
        !n.is_empty() && !pen.is_empty() && pen.split('.').all(|p| p.parse::<u32>().is_ok())
    });
    if id.len() > 32 || !printable || !enterprise {
        bail!("sd_id {id:?} must look like \"name@<private enterprise number>\" (at most 32 characters)");
    }
    Ok(())
}

/// A rustls client configuration trusting only `ca`, presenting `client` (certificate chain and
/// key) when given, offering `alpn` when not empty.
fn client_tls(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("ca: cannot read certificates from {}: {e}", ca.display()))?;
    if certs.is_empty() {
        bail!("ca: {} holds no certificate", ca.display());
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("ca: {}: {e}", ca.display()))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("cert: cannot read {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("key: cannot read {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("cert and key do not form a usable client identity")?
        }
        None => builder.with_no_client_auth(),
    };
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<SinkConfig>> {
        #[derive(Deserialize)]
        struct Doc {
            sinks: Vec<SinkFile>,
        }
        let doc: Doc = toml::from_str(text)?;
        validate_sinks(&doc.sinks, Path::new("/nonexistent"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn syslog_sink_needs_mutual_tls_files() {
        let e = err("[[sinks]]\nname = \"siem\"\nkind = \"syslog-tls\"\naddress = \"siem:6514\"\n");
        assert!(e.contains("ca, cert and key are required"), "{e}");
    }

    #[test]
    fn bad_names_kinds_and_fields_are_refused_with_the_field_named() {
        let e = err("[[sinks]]\nname = \"Bad/Name\"\nkind = \"hec\"\n");
        assert!(e.contains("name must be"), "{e}");
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"kafka\"\n");
        assert!(e.contains("unknown variant"), "{e}");
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"http://splunk.example:8088/services/collector/event\"\ntoken_file = \"t\"\n");
        assert!(e.contains("only allowed to a loopback address"), "{e}");
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"syslog-tls\"\naddress = \"siem\"\n");
        assert!(e.contains("must be \"host:port\""), "{e}");
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nbatch_size = 0\n");
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn a_key_of_the_other_kind_is_refused_by_name() {
        let syslog = "[[sinks]]\nname = \"x\"\nkind = \"syslog-tls\"\naddress = \"siem:6514\"\n";
        for key in ["url = \"https://a\"", "token_file = \"t\""] {
            let e = err(&format!("{syslog}{key}\n"));
            let field = key.split(' ').next().unwrap_or_default();
            assert!(
                e.contains(&format!("unknown field `{field}`")),
                "{key}: {e}"
            );
        }
        let hec = "[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"http://127.0.0.1:8088/services/collector/event\"\n";
        for key in [
            "address = \"siem:6514\"",
            "server_name = \"siem\"",
            "sd_id = \"loggate@32473\"",
            "kafka_topic = \"t\"",
        ] {
            let e = err(&format!("{hec}{key}\n"));
            let field = key.split(' ').next().unwrap_or_default();
            assert!(
                e.contains(&format!("unknown field `{field}`")),
                "{key}: {e}"
            );
        }
        let e = err("[[sinks]]\nname = \"x\"\naddress = \"siem:6514\"\n");
        assert!(e.contains("missing field `kind`"), "{e}");
    }

    #[test]
    fn required_keys_of_each_kind_are_named_when_missing() {
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"syslog-tls\"\n");
        assert!(
            e.contains("address (\"host:port\" of the syslog receiver) is required"),
            "{e}"
        );
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"hec\"\n");
        assert!(
            e.contains("url (https://host:port/services/collector/event) is required"),
            "{e}"
        );
        let e = err("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"http://127.0.0.1:8088/services/collector/event\"\n");
        assert!(
            e.contains("token_file (a file holding the HEC token) is required"),
            "{e}"
        );
        let e = err("[[sinks]]\nkind = \"hec\"\nurl = \"http://127.0.0.1:8088/\"\n");
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn https_hec_needs_a_ca_and_plain_http_takes_no_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t\n").unwrap();
        let parse_in = |text: &str| {
            let doc: Doc = toml::from_str(text)?;
            validate_sinks(&doc.sinks, dir.path())
        };
        #[derive(Deserialize)]
        struct Doc {
            sinks: Vec<SinkFile>,
        }
        let e = format!("{:#}", parse_in("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"https://splunk.example:8088/services/collector/event\"\ntoken_file = \"token\"\n").unwrap_err());
        assert!(e.contains("ca is required for an https url"), "{e}");
        let e = format!("{:#}", parse_in("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"http://127.0.0.1:8088/services/collector/event\"\ntoken_file = \"token\"\nca = \"ca.crt\"\n").unwrap_err());
        assert!(
            e.contains("ca, cert and key only apply to an https url"),
            "{e}"
        );
        let e = format!("{:#}", parse_in("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"https://splunk.example:8088/services/collector/event\"\ntoken_file = \"token\"\ncert = \"c.crt\"\n").unwrap_err());
        assert!(e.contains("cert and key go together"), "{e}");
        let e = format!("{:#}", parse_in("[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"ftp://127.0.0.1/\"\ntoken_file = \"token\"\n").unwrap_err());
        assert!(e.contains("url must start with https://"), "{e}");
        let two = "[[sinks]]\nname = \"x\"\nkind = \"hec\"\nurl = \"http://127.0.0.1:8088/services/collector/event\"\ntoken_file = \"token\"\n";
        let e = format!("{:#}", parse_in(&format!("{two}{two}")).unwrap_err());
        assert!(e.contains("the name \"x\" is used twice"), "{e}");
    }

    #[test]
    fn the_documented_sink_examples_parse_as_their_kinds() {
        let doc = include_str!("../../../../docs/configuration.md");
        let section = doc
            .split("### Audit sinks")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("the toml example of docs/configuration.md's audit sinks");
        #[derive(Deserialize)]
        struct Doc {
            audit: AuditSection,
        }
        let parsed: Doc = toml::from_str(section).expect("the documented example parses");
        let kinds: Vec<&str> = parsed
            .audit
            .sinks
            .iter()
            .map(|s| match s {
                SinkFile::SyslogTls(f) => f.name.as_str(),
                SinkFile::Hec(f) => f.name.as_str(),
            })
            .collect();
        assert_eq!(kinds, ["siem", "splunk"]);
        assert!(matches!(parsed.audit.sinks[0], SinkFile::SyslogTls(_)));
        assert!(matches!(&parsed.audit.sinks[1], SinkFile::Hec(h) if h.batch_size == 200));
    }

    #[test]
    fn hec_token_is_read_from_its_file_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cr3t-token\n").unwrap();
        #[derive(Deserialize)]
        struct Doc {
            sinks: Vec<SinkFile>,
        }
        let doc: Doc = toml::from_str(
            "[[sinks]]\nname = \"splunk\"\nkind = \"hec\"\nurl = \"http://127.0.0.1:8088/services/collector/event\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let sinks = validate_sinks(&doc.sinks, dir.path()).unwrap();
        let Target::Hec(hec) = &sinks[0].target else {
            panic!("not a hec sink");
        };
        assert_eq!(hec.token.0, "s3cr3t-token");
        assert_eq!(hec.address, "127.0.0.1:8088");
        assert!(!format!("{sinks:?}").contains("s3cr3t"));
    }

    #[test]
    fn sd_ids_must_be_enterprise_ids() {
        assert!(check_sd_id("loggate@32473").is_ok());
        assert!(check_sd_id("loggate@1.2.3").is_ok());
        for bad in [
            "loggate",
            "log gate@1",
            "a@b",
            "x=y@1",
            "loggate@32473-and-far-too-long-for-it",
        ] {
            assert!(check_sd_id(bad).is_err(), "{bad}");
        }
    }
}
