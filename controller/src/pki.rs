//! Development PKI for loggate: one CA that signs every identity, laid out on disk.
//!
//! Identities are SPIFFE-style URIs carried as URI SANs; the trust domain `<td>`
//! defaults to `loggate.local` (the caller's default) and must match `^[a-z0-9.-]{1,253}$`.
//!
//! | who            | URI SAN                         | DNS SANs                         | IP SANs          | EKU                      |
//! |----------------|---------------------------------|----------------------------------|------------------|--------------------------|
//! | controller     | `spiffe://<td>/controller`      | `loggate-controller`, `localhost`| 127.0.0.1, ::1   | serverAuth + clientAuth  |
//! | agent `<id>`   | `spiffe://<td>/agent/<id>`      | `<id>`, `localhost`              | 127.0.0.1, ::1   | serverAuth + clientAuth  |
//! | user `<name>`  | `spiffe://<td>/user/<name>`     | none                             | none             | clientAuth               |
//!
//! Agent ids and user names must match `^[a-z0-9][a-z0-9-]{0,62}$`. Every leaf has
//! CN = its name (`loggate-controller` for the controller), key usage digitalSignature,
//! and is valid from now − 5 minutes (clock skew) for 1 year unless told otherwise.
//! The CA is CN "loggate development CA", `CA:TRUE, pathlen:0`, key usages
//! keyCertSign + cRLSign, valid 10 years. All keys are ECDSA P-256 (SHA-256).
//!
//! Layout of a PKI directory (0700; private keys 0600, certificates 0644):
//! `ca.crt ca.key controller.crt controller.key agents/<id>.crt agents/<id>.key
//! users/<name>.crt users/<name>.key`. Unix only (file modes).

use anyhow::{anyhow, ensure, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::pem::parse_x509_pem;

const CA_CN: &str = "loggate development CA";
const CONTROLLER_CN: &str = "loggate-controller";
const SKEW: Duration = Duration::from_secs(5 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What a leaf certificate identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Controller,
    Agent,
    User,
}

/// Validity window of a certificate (stored with one-second precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    fn from_now(days: u32) -> Self {
        let now = SystemTime::now();
        let (not_before, not_after) = (now - SKEW, now + DAY * days);
        Validity {
            not_before,
            not_after,
        }
    }
}

/// The SPIFFE ID of an identity; `name` is ignored for [`Kind::Controller`].
pub fn spiffe_id(trust_domain: &str, kind: &Kind, name: &str) -> String {
    match kind {
        Kind::Controller => format!("spiffe://{trust_domain}/controller"),
        Kind::Agent => format!("spiffe://{trust_domain}/agent/{name}"),
        Kind::User => format!("spiffe://{trust_domain}/user/{name}"),
    }
}

fn validate_name(name: &str) -> Result<()> {
    ensure!(
        loggate_core::identity::is_valid_name(name),
        "invalid name {name:?}: must be 1-63 characters of a-z, 0-9 and '-', \
         starting with a letter or digit, and not one of {:?}",
        loggate_core::identity::RESERVED_NAMES
    );
    Ok(())
}

fn validate_trust_domain(td: &str) -> Result<()> {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-';
    ensure!(
        (1..=253).contains(&td.len()) && td.bytes().all(ok),
        "invalid trust domain {td:?}: must be 1-253 characters of a-z, 0-9, '.' and '-'"
    );
    Ok(())
}

/// Creates DIR (0700) with ca.crt, ca.key, controller.crt/.key, agents/<id>.crt/.key,
/// users/<name>.crt/.key. Refuses to overwrite an existing ca.key.
/// Private keys are created 0600 from the start (never world-readable, even briefly).
pub fn init(dir: &Path, trust_domain: &str, agents: &[String], users: &[String]) -> Result<()> {
    validate_trust_domain(trust_domain)?;
    for (list, what) in [(agents, "agent id"), (users, "user name")] {
        for (i, name) in list.iter().enumerate() {
            validate_name(name).context(what)?;
            ensure!(!list[..i].contains(name), "{what} {name:?} given twice");
        }
    }
    let d = dir.display();
    ensure!(
        !dir.join("ca.key").exists(),
        "{d} already holds a CA; use another directory"
    );
    make_dir(dir)?;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = base_params(CA_CN, &Validity::from_now(3650))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = params.self_signed(&ca_key)?;
    write_new(&dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
    write_new(&dir.join("ca.crt"), &ca_cert.pem(), 0o644)?;

    let issuer = Issuer::new(params, ca_key);
    let leaves = [(Kind::Controller, "")].into_iter();
    let leaves = leaves.chain(agents.iter().map(|n| (Kind::Agent, n.as_str())));
    for (kind, name) in leaves.chain(users.iter().map(|n| (Kind::User, n.as_str()))) {
        issue_with(&issuer, dir, trust_domain, kind, name, None, &[])?;
    }
    Ok(())
}

/// Loads the CA from DIR (ca.crt + ca.key) and issues one more leaf into agents/,
/// users/ or controller.*; `validity` defaults to now − 5 min .. now + 1 year.
/// `name` is ignored for [`Kind::Controller`]. Refuses to overwrite an existing leaf.
/// Returns the certificate's path.
pub fn issue(
    dir: &Path,
    trust_domain: &str,
    kind: Kind,
    name: &str,
    validity: Option<Validity>,
) -> Result<PathBuf> {
    issue_with_groups(dir, trust_domain, kind, name, validity, &[])
}

/// [`issue`], with `groups` written as the OU attribute of a user certificate's subject: the
/// access policy matches it like `[groups]` members (docs/policy.md, "Groups"). At most one
/// (rcgen writes one value per attribute type), a valid name; only a user certificate may
/// carry a group.
pub fn issue_with_groups(
    dir: &Path,
    trust_domain: &str,
    kind: Kind,
    name: &str,
    validity: Option<Validity>,
    groups: &[String],
) -> Result<PathBuf> {
    validate_trust_domain(trust_domain)?;
    ensure!(
        groups.is_empty() || kind == Kind::User,
        "only a user certificate carries a group (--group)"
    );
    ensure!(groups.len() <= 1, "give at most one --group");
    for g in groups {
        ensure!(
            loggate_core::identity::is_valid_name(g),
            "--group {g:?} is not a group name (lowercase letters, digits and '-', at most 63)"
        );
    }
    if kind != Kind::Controller {
        validate_name(name)?;
    }
    let key_pem = std::fs::read_to_string(dir.join("ca.key"))
        .with_context(|| format!("reading {}/ca.key", dir.display()))?;
    let key = KeyPair::from_pem(&key_pem).context("parsing ca.key")?;
    let ca_der = read_der(&dir.join("ca.crt"))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).context("parsing ca.crt")?;
    ensure!(ca.is_ca(), "{}/ca.crt is not a CA", dir.display());
    let matches = ca.public_key().raw == key.subject_public_key_info();
    ensure!(matches, "{}: ca.key does not match ca.crt", dir.display());
    let issuer = Issuer::from_ca_cert_der(&ca_der.into(), key).context("loading ca.crt")?;
    issue_with(&issuer, dir, trust_domain, kind, name, validity, groups)
}

fn issue_with(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    trust_domain: &str,
    kind: Kind,
    name: &str,
    validity: Option<Validity>,
    groups: &[String],
) -> Result<PathBuf> {
    let (base, cn) = match kind {
        Kind::Controller => (dir.join("controller"), CONTROLLER_CN),
        Kind::Agent => (dir.join("agents").join(name), name),
        Kind::User => (dir.join("users").join(name), name),
    };
    let (crt_path, key_path) = (base.with_extension("crt"), base.with_extension("key"));
    for p in [&key_path, &crt_path] {
        ensure!(
            !p.exists(),
            "{} already exists; refusing to overwrite",
            p.display()
        );
    }
    make_dir(base.parent().unwrap_or(dir))?;

    let validity = validity.unwrap_or_else(|| Validity::from_now(365));
    let mut params = base_params(cn, &validity)?;
    for g in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, g.as_str());
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let uri = spiffe_id(trust_domain, &kind, name);
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if kind != Kind::User {
        let server_auth = ExtendedKeyUsagePurpose::ServerAuth;
        params.extended_key_usages.push(server_auth);
        params.subject_alt_names.extend([
            SanType::DnsName(cn.try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(Ipv6Addr::LOCALHOST.into()),
        ]);
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, issuer)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&crt_path, &cert.pem(), 0o644)?;
    Ok(crt_path)
}

/// Parameters with subject CN = `cn` and the given validity (whole seconds, 1970..=9999).
fn base_params(cn: &str, v: &Validity) -> Result<CertificateParams> {
    let secs = |t: SystemTime| -> Result<Duration> {
        let s = t.duration_since(UNIX_EPOCH);
        let s = s.map_err(|_| anyhow!("validity before 1970"))?;
        ensure!(s.as_secs() < 253_402_300_800, "validity after year 9999");
        Ok(Duration::from_secs(s.as_secs()))
    };
    let (from, to) = (secs(v.not_before)?, secs(v.not_after)?);
    ensure!(from < to, "validity: not_after must be after not_before");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    // rcgen takes `time::OffsetDateTime`; build it from the epoch to avoid a `time` dependency.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    (params.not_before, params.not_after) = (epoch + from, epoch + to);
    Ok(params)
}

fn read_der(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, pem) = parse_x509_pem(&pem).with_context(|| format!("parsing {}", path.display()))?;
    Ok(pem.contents)
}

fn make_dir(path: &Path) -> Result<()> {
    let mut b = DirBuilder::new();
    let r = b.recursive(true).mode(0o700).create(path);
    r.with_context(|| format!("creating {}", path.display()))
}

/// Creates `path` with `mode` (never an existing file, never briefly wider) and writes `data`.
fn write_new(path: &Path, data: &str, mode: u32) -> Result<()> {
    let mut opts = OpenOptions::new();
    let f = opts.write(true).create_new(true).mode(mode).open(path);
    let mut f =
        f.with_context(|| format!("creating {} (refusing to overwrite)", path.display()))?;
    let r = f.write_all(data.as_bytes()).and_then(|_| f.sync_all());
    r.with_context(|| format!("writing {}", path.display()))
}

/// The CA the controller signs with at run time (enrolment, renewal): `ca_cert`/`ca_key` of
/// its configuration, the files `loggate pki init` writes, or an organisation's own
/// (intermediate) CA. The key file must be private (0600), like the grant-signing key.
pub struct RuntimeCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for RuntimeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeCa").finish_non_exhaustive()
    }
}

/// Why a CSR was refused: the `reason_code` of the refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRefused {
    /// Not a DER PKCS#10 request.
    #[error("the certificate signing request is not a DER PKCS#10 request")]
    Unparsable,
    /// Its signature does not verify with its own key: the sender does not hold the key.
    #[error("the certificate signing request's signature does not verify with its key")]
    BadSignature,
    /// A key type other than ECDSA P-256, Ed25519 or RSA.
    #[error("the key type is not accepted ({0}); use ECDSA P-256 or Ed25519")]
    KeyType(String),
    /// An RSA key under 2048 bits.
    #[error(
        "an RSA key of {0} bits is too weak; use ECDSA P-256, Ed25519 or RSA of 2048 bits or more"
    )]
    RsaTooSmall(usize),
}

impl CsrRefused {
    pub fn as_str(&self) -> &'static str {
        match self {
            CsrRefused::Unparsable => "csr_unparsable",
            CsrRefused::BadSignature => "csr_bad_signature",
            CsrRefused::KeyType(_) => "csr_key_type",
            CsrRefused::RsaTooSmall(_) => "csr_key_too_small",
        }
    }
}

/// A certificate the runtime CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub pem: String,
    pub der: Vec<u8>,
    /// Its serial number, lowercase hex.
    pub serial: String,
    pub not_after_unix: i64,
}

impl RuntimeCa {
    /// Loads `ca_cert` and `ca_key`, refusing a key file that others can read, a certificate
    /// that is not a CA, and a key that is not the certificate's.
    pub fn load(ca_cert: &Path, ca_key: &Path) -> Result<RuntimeCa> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(ca_key)
            .with_context(|| format!("cannot read CA key {}", ca_key.display()))?;
        ensure!(
            meta.permissions().mode() & 0o077 == 0,
            "CA key {} is readable by others (mode {:o}); run chmod 600 on it",
            ca_key.display(),
            meta.permissions().mode() & 0o777
        );
        let key_pem = std::fs::read_to_string(ca_key)
            .with_context(|| format!("cannot read CA key {}", ca_key.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("CA key {}: not a PEM private key", ca_key.display()))?;
        let ca_der = read_der(ca_cert)?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .with_context(|| format!("CA certificate {}", ca_cert.display()))?;
        ensure!(ca.is_ca(), "{} is not a CA certificate", ca_cert.display());
        ensure!(
            ca.public_key().raw == key.subject_public_key_info(),
            "CA key {} does not match CA certificate {}",
            ca_key.display(),
            ca_cert.display()
        );
        let ca_pem = std::fs::read_to_string(ca_cert)
            .with_context(|| format!("cannot read CA certificate {}", ca_cert.display()))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der.into(), key)
            .with_context(|| format!("CA certificate {}", ca_cert.display()))?;
        Ok(RuntimeCa { issuer, ca_pem })
    }

    /// The CA certificate (PEM), as handed to enrolling agents.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a leaf for `spiffe://<trust_domain>/<kind>/<name>` valid over `validity`, for the
    /// public key of `csr_der`. The CSR's signature is checked (its sender holds the key); its
    /// subject, SANs and requested extensions are ignored: the identity, key usages and names
    /// are the controller's, exactly as [`init`] makes them for that kind (an agent's DNS name
    /// is its id: clients dial it by that name). Keys: ECDSA P-256, Ed25519, RSA ≥ 2048 bits;
    /// anything else is refused ([`CsrRefused`]).
    pub fn issue_for_csr(
        &self,
        csr_der: &[u8],
        trust_domain: &str,
        kind: Kind,
        name: &str,
        validity: Validity,
    ) -> Result<std::result::Result<Issued, CsrRefused>> {
        validate_trust_domain(trust_domain)?;
        if kind != Kind::Controller {
            validate_name(name)?;
        }
        let spki = match csr_public_key(csr_der) {
            Ok(spki) => spki,
            Err(refused) => return Ok(Err(refused)),
        };
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|_| CsrRefused::KeyType("not supported by the signer".into()));
        let public_key = match public_key {
            Ok(key) => key,
            Err(refused) => return Ok(Err(refused)),
        };
        let cn = match kind {
            Kind::Controller => CONTROLLER_CN,
            Kind::Agent | Kind::User => name,
        };
        let mut params = base_params(cn, &validity)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id(trust_domain, &kind, name).try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if kind != Kind::User {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            params
                .subject_alt_names
                .push(SanType::DnsName(cn.try_into()?));
        }
        // A random positive 127-bit serial (RFC 5280: unique per CA, at most 20 octets).
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&public_key, &self.issuer)?;
        let not_after_unix = validity
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(Ok(Issued {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            serial: hex::encode(serial),
            not_after_unix,
        }))
    }
}

impl Validity {
    /// From 5 minutes ago (clock skew) for `lifetime`.
    pub fn for_lifetime(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - SKEW,
            not_after: now + lifetime,
        }
    }
}

/// The DER SubjectPublicKeyInfo of the key in `csr_der`, once its signature verifies and its
/// type is accepted.
fn csr_public_key(csr_der: &[u8]) -> std::result::Result<Vec<u8>, CsrRefused> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|_| CsrRefused::Unparsable)?;
    if !rest.is_empty() {
        return Err(CsrRefused::Unparsable);
    }
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_SIG_ED25519 {
        // accepted
    } else if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(CsrRefused::KeyType(match curve {
                Some(oid) => format!("ECDSA on curve {}", shown_oid(&oid)),
                None => "ECDSA without a named curve".into(),
            }));
        }
    } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrRefused::Unparsable),
        };
        if bits < 2048 {
            return Err(CsrRefused::RsaTooSmall(bits));
        }
    } else {
        return Err(CsrRefused::KeyType(format!(
            "algorithm {}",
            shown_oid(algorithm)
        )));
    }
    csr.verify_signature()
        .map_err(|_| CsrRefused::BadSignature)?;
    Ok(spki.raw.to_vec())
}

/// An object identifier from a CSR as a refusal shows it (in the gRPC status and the audit
/// record): the CSR's sender chose it, so at most [`SHOWN_OID_CHARS`] of its characters.
fn shown_oid(oid: &impl std::fmt::Display) -> String {
    let text = oid.to_string();
    match text.char_indices().nth(SHOWN_OID_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// How much of a CSR's object identifier a refusal shows ([`shown_oid`]).
const SHOWN_OID_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    /// Review of issue #12, L3: a CSR's object identifier of any length is shown to
    /// `SHOWN_OID_CHARS` characters in a refusal (its status and audit record).
    #[test]
    fn a_refusal_shows_a_long_object_identifier_cut() {
        let long = format!("1.2.{}", "840.".repeat(2000));
        let shown = super::shown_oid(&long);
        assert_eq!(shown.chars().count(), super::SHOWN_OID_CHARS + 1);
        assert!(shown.ends_with('…') && long.starts_with(shown.trim_end_matches('…')));
        assert_eq!(
            super::shown_oid(&"1.2.840.10045.3.1.7"),
            "1.2.840.10045.3.1.7"
        );
    }

    use super::*;
    use rustls::pki_types::CertificateDer;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::certificate::X509Certificate;

    const TD: &str = "loggate.local";

    /// A fresh PKI in `<tmp>/pki` with agents web-1 and db and user alice.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let agents = ["web-1".into(), "db".into()];
        init(&dir, TD, &agents, &["alice".into()]).unwrap();
        (tmp, dir)
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn now_secs() -> i64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH);
        i64::try_from(now.unwrap().as_secs()).unwrap()
    }

    /// A validity window from `from` to `to` days relative to now.
    fn days(from: i64, to: i64) -> Option<Validity> {
        let at = |d: i64| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(now_secs() + d * 86400).unwrap())
        };
        let (not_before, not_after) = (at(from), at(to));
        Some(Validity {
            not_before,
            not_after,
        })
    }

    fn cert(p: &Path) -> CertificateDer<'static> {
        read_der(p).unwrap().into()
    }

    fn parse<'a>(der: &'a CertificateDer) -> X509Certificate<'a> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    /// Checks `leaf` is signed by ca.crt; returns its SANs as text and (serverAuth, clientAuth).
    fn inspect(dir: &Path, leaf: &str) -> (Vec<String>, bool, bool) {
        let (ca_der, der) = (cert(&dir.join("ca.crt")), cert(&dir.join(leaf)));
        let (ca, c) = (parse(&ca_der), parse(&der));
        c.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(c.issuer(), ca.subject());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(!c.is_ca() && ku.digital_signature());
        let sans = c.subject_alternative_name().unwrap().unwrap();
        let sans = sans.value.general_names.iter().map(|g| g.to_string());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        (sans.collect(), eku.server_auth, eku.client_auth)
    }

    #[test]
    fn init_writes_all_files_with_0600_keys_and_a_constrained_ca() {
        let (_tmp, dir) = setup();
        assert_eq!(mode(&dir), 0o700);
        for stem in ["ca", "controller", "agents/web-1", "agents/db"] {
            assert_eq!(mode(&dir.join(format!("{stem}.key"))), 0o600);
            assert!(dir.join(format!("{stem}.crt")).is_file());
        }
        assert_eq!(mode(&dir.join("users/alice.key")), 0o600);
        let n = |d: &str| std::fs::read_dir(dir.join(d)).unwrap().count();
        assert_eq!((n("."), n("agents"), n("users")), (6, 4, 2));
        let der = cert(&dir.join("ca.crt"));
        let ca = parse(&der);
        ca.verify_signature(None).unwrap();
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(ca.subject().to_string(), format!("CN={CA_CN}"));
        let v = ca.validity();
        let years = (v.not_after.timestamp() - v.not_before.timestamp()) / 86400 / 365;
        assert_eq!(years, 10);
    }

    #[test]
    fn leaves_verify_and_carry_the_right_sans() {
        let (_tmp, dir) = setup();
        let v6 = format!("IPAddress({}01)", "00:".repeat(15));
        let tail = ["DNSName(localhost)", "IPAddress(7f:00:00:01)", &v6];
        let (sans, srv, cli) = inspect(&dir, "controller.crt");
        let head = [
            "URI(spiffe://loggate.local/controller)",
            "DNSName(loggate-controller)",
        ];
        assert!(srv && cli);
        assert_eq!(sans, [&head[..], &tail].concat());
        let (sans, srv, cli) = inspect(&dir, "agents/web-1.crt");
        let head = ["URI(spiffe://loggate.local/agent/web-1)", "DNSName(web-1)"];
        assert!(srv && cli);
        assert_eq!(sans, [&head[..], &tail].concat());
        let (sans, srv, cli) = inspect(&dir, "users/alice.crt");
        assert_eq!(sans, ["URI(spiffe://loggate.local/user/alice)"]);
        assert!(!srv && cli);
        let der = cert(&dir.join("users/alice.crt"));
        let c = parse(&der);
        assert_eq!(c.subject().to_string(), "CN=alice");
        let skew = now_secs() - c.validity().not_before.timestamp();
        assert!((290..=310).contains(&skew), "not_before ≈ now − 5 min");
    }

    #[test]
    fn init_refuses_an_existing_ca_dir() {
        let (_tmp, dir) = setup();
        let before = std::fs::read(dir.join("ca.key")).unwrap();
        let err = init(&dir, TD, &[], &[]).unwrap_err().to_string();
        assert!(err.contains("already holds a CA; use another directory"));
        assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), before);
    }

    #[test]
    fn bad_names_and_trust_domains_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let (long, longer) = ("a".repeat(64), "a".repeat(254));
        for bad in ["Alice", "../x", "", &long, "-x", "a_b", "a.b", "é"] {
            let err = init(&dir, TD, &[bad.into()], &[]).unwrap_err();
            assert!(format!("{err:#}").contains("invalid name"), "{bad}");
            assert!(init(&dir, TD, &[], &[bad.into()]).is_err(), "{bad}");
        }
        for bad in ["", "Loggate.local", "a/b", "x:1", &longer] {
            let err = init(&dir, bad, &[], &[]).unwrap_err().to_string();
            assert!(err.contains("invalid trust domain"), "{bad}");
        }
        assert!(init(&dir, TD, &["a".into(), "a".into()], &[]).is_err());
        assert!(!dir.exists(), "nothing written for invalid input");
        validate_name(&long[1..]).unwrap();
        validate_name("0-9").unwrap();
    }

    #[test]
    fn issue_with_a_past_validity_mints_an_expired_cert() {
        let (_tmp, dir) = setup();
        let path = issue(&dir, TD, Kind::Agent, "old", days(-2, -1)).unwrap();
        assert_eq!(path, dir.join("agents/old.crt"));
        assert_eq!(mode(&dir.join("agents/old.key")), 0o600);
        let uri = &inspect(&dir, "agents/old.crt").0[0];
        assert_eq!(uri, "URI(spiffe://loggate.local/agent/old)");
        let der = cert(&path);
        let validity = parse(&der).validity().clone();
        assert!(validity.not_after.timestamp() < now_secs());
        assert!(!validity.is_valid());
        assert!(issue(&dir, TD, Kind::Agent, "neg", days(-1, -2)).is_err());
    }

    #[test]
    fn issue_adds_leaves_and_refuses_to_overwrite() {
        let (tmp, dir) = setup();
        let p = issue(&dir, TD, Kind::User, "bob", None).unwrap();
        assert_eq!(p, dir.join("users/bob.crt"));
        let sans = inspect(&dir, "users/bob.crt").0;
        assert_eq!(sans, ["URI(spiffe://loggate.local/user/bob)"]);
        let key = std::fs::read(dir.join("users/bob.key")).unwrap();
        let taken = [(Kind::User, "bob"), (Kind::Agent, "web-1")];
        for (kind, name) in [taken[0], taken[1], (Kind::Controller, "")] {
            let err = issue(&dir, TD, kind, name, None).unwrap_err();
            assert!(err.to_string().contains("refusing to overwrite"));
        }
        assert_eq!(std::fs::read(dir.join("users/bob.key")).unwrap(), key);
        let err = issue(&dir, TD, Kind::Agent, "../x", None).unwrap_err();
        assert!(err.to_string().contains("invalid name"));
        let none = tmp.path().join("none");
        assert!(issue(&none, TD, Kind::User, "carol", None).is_err());
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.join("ca.key"), other.serialize_pem()).unwrap();
        let err = issue(&dir, TD, Kind::User, "eve", None).unwrap_err();
        assert!(err.to_string().contains("does not match"));
    }

    #[test]
    fn rustls_webpki_verifiers_accept_generated_certs() {
        use rustls::client::{danger::ServerCertVerifier, WebPkiServerVerifier};
        use rustls::pki_types::{ServerName, UnixTime};
        use rustls::server::WebPkiClientVerifier;
        use std::sync::Arc;

        let (_tmp, dir) = setup();
        let old = issue(&dir, TD, Kind::Agent, "old", days(-2, -1)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&dir.join("ca.crt"))).unwrap();
        let roots = Arc::new(roots);
        let ring = Arc::new(rustls::crypto::ring::default_provider());
        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), ring.clone());
        let server = server.build().unwrap();
        let client = WebPkiClientVerifier::builder_with_provider(roots, ring);
        let client = client.build().unwrap();
        let now = UnixTime::now();
        let check_server = |p: &Path, name: &str| {
            let name = ServerName::try_from(name.to_string()).unwrap();
            server.verify_server_cert(&cert(p), &[], &name, &[], now)
        };
        let agent = dir.join("agents/web-1.crt");
        for name in ["web-1", "localhost", "127.0.0.1", "::1"] {
            assert!(check_server(&agent, name).is_ok(), "agent as {name}");
        }
        let controller = dir.join("controller.crt");
        check_server(&controller, "loggate-controller").unwrap();
        assert!(check_server(&agent, "db").is_err(), "wrong name");
        assert!(check_server(&old, "old").is_err(), "expired");
        let user = dir.join("users/alice.crt");
        assert!(check_server(&user, "localhost").is_err(), "no serverAuth");
        for leaf in [agent, user, controller] {
            assert!(client.verify_client_cert(&cert(&leaf), &[], now).is_ok());
        }
        assert!(client.verify_client_cert(&cert(&old), &[], now).is_err());
    }

    /// A runtime CA over the development PKI of `setup`.
    fn runtime_ca(dir: &Path) -> RuntimeCa {
        RuntimeCa::load(&dir.join("ca.crt"), &dir.join("ca.key")).unwrap()
    }

    /// A CSR for `key` asking for `spiffe_id` in its SANs.
    fn csr_asking_for(key: &KeyPair, spiffe_id: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["evil".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn a_csr_gets_the_identity_the_controller_sets_not_the_one_it_asks_for() {
        let (_tmp, dir) = setup();
        let ca = runtime_ca(&dir);
        for alg in [&PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let csr = csr_asking_for(&key, "spiffe://loggate.local/user/admin");
            let validity = Validity::for_lifetime(Duration::from_secs(3600));
            let issued = ca
                .issue_for_csr(&csr, TD, Kind::Agent, "web-9", validity)
                .unwrap()
                .expect("accepted");
            let der = CertificateDer::from(issued.der.clone());
            let c = parse(&der);
            let ca_der = cert(&dir.join("ca.crt"));
            c.verify_signature(Some(parse(&ca_der).public_key()))
                .unwrap();
            assert_eq!(c.public_key().raw, key.subject_public_key_info());
            let sans: Vec<String> = c
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|g| g.to_string())
                .collect();
            assert_eq!(
                sans,
                ["URI(spiffe://loggate.local/agent/web-9)", "DNSName(web-9)"]
            );
            assert_eq!(c.subject().to_string(), "CN=web-9");
            assert_eq!(hex::encode(c.raw_serial()), issued.serial);
            let lifetime = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
            assert_eq!(lifetime, 3600 + 300);
            let loggate = loggate_core::identity::Identity::from_certificate(&issued.der, TD)
                .expect("a loggate identity");
            assert_eq!(loggate.spiffe_id(), "spiffe://loggate.local/agent/web-9");
        }
    }

    #[test]
    fn a_csr_with_a_bad_signature_or_a_refused_key_type_is_refused() {
        let (_tmp, dir) = setup();
        let ca = runtime_ca(&dir);
        let validity = || Validity::for_lifetime(Duration::from_secs(3600));
        let issue = |csr: &[u8]| {
            ca.issue_for_csr(csr, TD, Kind::Agent, "web-9", validity())
                .unwrap()
                .map(|_| ())
        };
        assert_eq!(issue(b"not a csr"), Err(CsrRefused::Unparsable));
        // One bit of the signed part changed: the signature no longer verifies.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut csr = csr_asking_for(&key, "spiffe://loggate.local/agent/web-9");
        let at = csr
            .windows(5)
            .position(|w| w == b"admin")
            .expect("the CN is in the CSR");
        csr[at] = b'b';
        assert_eq!(issue(&csr), Err(CsrRefused::BadSignature));
        // P-384 is not accepted.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = csr_asking_for(&key, "spiffe://loggate.local/agent/web-9");
        assert!(matches!(issue(&csr), Err(CsrRefused::KeyType(_))));
        // RSA (ring cannot make RSA keys: fixtures made by `openssl req -newkey rsa:N`).
        let der = |pem: &str| parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        assert_eq!(
            issue(&der(include_str!("pki_testdata/rsa1024.csr"))),
            Err(CsrRefused::RsaTooSmall(1024))
        );
        assert_eq!(
            issue(&der(include_str!("pki_testdata/rsa2048.csr"))),
            Ok(())
        );
    }

    #[test]
    fn the_runtime_ca_key_must_be_private_and_match_the_certificate() {
        let (_tmp, dir) = setup();
        let key = dir.join("ca.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = RuntimeCa::load(&dir.join("ca.crt"), &key).unwrap_err();
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = RuntimeCa::load(&dir.join("controller.crt"), &key).unwrap_err();
        assert!(format!("{err:#}").contains("not a CA"), "{err:#}");
    }
}
