//! The certificate request `loggate login` sends: proof of possession of a key strong enough
//! for a person's certificate. Only the public key is used; the request's subject and SANs
//! are ignored (the controller sets the identity from the ID token).

use super::{RefusalReason, SignInRefused};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The largest certificate request read (a P-256 one is ~250 bytes, RSA-4096 ~1.2 KiB).
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// A request whose self-signature verified, and whose key is acceptable.
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    /// The SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

/// Parses `der`, verifies its self-signature, and accepts ECDSA P-256, Ed25519 and RSA of at
/// least 2048 bits (the keys the runtime CA certifies).
pub fn check_request(der: &[u8]) -> Result<CheckedRequest, SignInRefused> {
    if der.is_empty() || der.len() > MAX_CSR_BYTES {
        return Err(SignInRefused::new(
            RefusalReason::BadRequest,
            format!(
                "the certificate request is {} bytes; send a PKCS#10 request (DER) of at most {MAX_CSR_BYTES}",
                der.len()
            ),
        ));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| {
        SignInRefused::new(
            RefusalReason::BadRequest,
            format!("the certificate request is not PKCS#10 DER: {e}"),
        )
    })?;
    if !rest.is_empty() {
        return Err(SignInRefused::new(
            RefusalReason::BadRequest,
            "the certificate request has bytes after its end",
        ));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key = spki.parsed().map_err(|e| {
        SignInRefused::new(
            RefusalReason::WeakKey,
            format!("the certificate request's public key cannot be read: {e}"),
        )
    })?;
    let oid = spki.algorithm.algorithm.to_id_string();
    let ok = match &key {
        PublicKey::RSA(rsa) => {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(SignInRefused::new(
                    RefusalReason::WeakKey,
                    format!("an RSA key of {bits} bits is too weak; use ECDSA P-256 (what loggate login makes) or RSA of 2048 bits or more"),
                ));
            }
            true
        }
        // ECDSA on P-256 (prime256v1) only: another 256-bit curve is not what the CA signs.
        PublicKey::EC(_) => {
            spki.algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|curve| curve.to_id_string())
                .as_deref()
                == Some("1.2.840.10045.3.1.7")
        }
        // Ed25519 (1.3.101.112): x509-parser reports its key as Unknown.
        PublicKey::Unknown(_) => oid == "1.3.101.112",
        _ => false,
    };
    if !ok {
        return Err(SignInRefused::new(
            RefusalReason::WeakKey,
            format!("the certificate request's key ({oid}) is not accepted; use ECDSA P-256, Ed25519 or RSA of 2048 bits or more"),
        ));
    }
    csr.verify_signature().map_err(|e| {
        SignInRefused::new(
            RefusalReason::BadRequest,
            format!("the certificate request's self-signature does not verify ({e}): it does not prove the key"),
        )
    })?;
    Ok(CheckedRequest {
        spki_der: spki.raw.to_vec(),
    })
}

/// SHA-256 (hex) of the public key in a certificate request, for the audit record of a
/// refused sign-in; `None` when the request cannot be read. Nothing is trusted from it.
pub fn spki_sha256(der: &[u8]) -> Option<String> {
    use sha2::{Digest, Sha256};
    if der.len() > MAX_CSR_BYTES {
        return None;
    }
    let (_, csr) = X509CertificationRequest::from_der(der).ok()?;
    Some(hex::encode(Sha256::digest(
        csr.certification_request_info.subject_pki.raw,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(key: &rcgen::KeyPair) -> Vec<u8> {
        rcgen::CertificateParams::default()
            .serialize_request(key)
            .expect("csr")
            .der()
            .to_vec()
    }

    #[test]
    fn a_p256_request_is_accepted_with_its_key() {
        let key = rcgen::KeyPair::generate().expect("key");
        let checked = check_request(&csr_for(&key)).expect("P-256");
        use rcgen::PublicKeyData;
        assert_eq!(checked.spki_der, key.subject_public_key_info());
    }

    #[test]
    fn a_tampered_or_malformed_request_is_refused() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut der = csr_for(&key);
        let last = der.len() - 1;
        der[last] ^= 1;
        let err = check_request(&der).expect_err("bad signature");
        assert_eq!(err.reason, RefusalReason::BadRequest, "{err}");
        let err = check_request(b"junk").expect_err("junk");
        assert_eq!(err.reason, RefusalReason::BadRequest, "{err}");
        let err = check_request(&vec![0u8; MAX_CSR_BYTES + 1]).expect_err("big");
        assert_eq!(err.reason, RefusalReason::BadRequest, "{err}");
    }
}
