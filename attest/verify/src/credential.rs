//! AK trust by credential activation, verifier side: TPM2_MakeCredential computed without a
//! TPM (TPM 2.0 Library Part 1 §24 "Credential Protection", §11.4.10.2 KDFa; Part 2 §12.2.3
//! TPMT_PUBLIC). Only a TPM that holds the EK's private key *and* an object with exactly the
//! AK's name recovers the secret with TPM2_ActivateCredential. Output is the file
//! `tpm2_makecredential -o` writes (`0xBADCC0DE`, version 1, TPM2B_ID_OBJECT, TPM2B secret).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Errors making a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("EK public: {0}")]
    EkPublic(String),
    #[error("AK name: {0}")]
    Name(String),
    #[error("secret: {0}")]
    Secret(String),
    #[error("RSA-OAEP: {0}")]
    Encrypt(String),
}

const TPM_ALG_SHA256: u16 = 0x000b;

/// The parts of an RSA EK's TPMT_PUBLIC that MakeCredential uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkRsa {
    pub name_alg: u16,
    pub sym_key_bits: u16,
    pub modulus: Vec<u8>,
    pub exponent: u32,
}

/// Parse a TPM2B_PUBLIC (tpm2_createek `-u`, tss format) holding an RSA storage key (decoded by
/// tpm2-protocol, see [`crate::tpm`]).
pub fn parse_ek_public(b: &[u8]) -> Result<EkRsa, CredentialError> {
    use tpm2_protocol::data::{
        TpmAlgId, TpmuPublicId, TpmuPublicParms, TpmuSymKeyBits, TpmuSymMode,
    };
    let bad = |s: &str| CredentialError::EkPublic(s.to_string());
    let (public, _) = crate::tpm::parse_tpm2b_public(b, "TPM2B_PUBLIC")
        .map_err(|e| CredentialError::EkPublic(e.to_string()))?;
    let (TpmuPublicParms::Rsa(parms), TpmuPublicId::Rsa(modulus)) =
        (&public.parameters, &public.unique)
    else {
        return Err(bad("not an RSA key (only RSA EKs are supported)"));
    };
    if public.name_alg != TpmAlgId::Sha256 {
        return Err(bad("nameAlg is not SHA-256"));
    }
    let sym = &parms.symmetric;
    let (TpmAlgId::Aes, TpmuSymKeyBits::Aes(bits), TpmuSymMode::Aes(mode)) =
        (sym.algorithm, sym.key_bits, sym.mode)
    else {
        return Err(bad("EK symmetric algorithm is not AES (not a storage key)"));
    };
    if mode != TpmAlgId::Cfb {
        return Err(bad("symmetric mode is not CFB"));
    }
    let sym_key_bits = bits.value();
    if sym_key_bits != 128 {
        return Err(bad("only AES-128 EKs are supported"));
    }
    let exponent = match parms.exponent.value() {
        0 => 65537,
        e => e,
    };
    if modulus.len() * 8 != usize::from(parms.key_bits.value()) {
        return Err(bad("modulus size does not match keyBits"));
    }
    Ok(EkRsa {
        name_alg: public.name_alg.value(),
        sym_key_bits,
        modulus: modulus.to_vec(),
        exponent,
    })
}

/// KDFa (Part 1 §11.4.10.2), SHA-256: HMAC counter mode over `i ‖ label ‖ 0 ‖ u ‖ v ‖ bits`.
pub fn kdfa_sha256(key: &[u8], label: &str, u: &[u8], v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut i: u32 = 1;
    while out.len() < bytes {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
        m.update(&i.to_be_bytes());
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(u);
        m.update(v);
        m.update(&bits.to_be_bytes());
        out.extend_from_slice(&m.finalize().into_bytes());
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// MakeCredential with a given `seed` (32 bytes); `rng` pads the RSA-OAEP encryption.
/// Returns the tpm2-tools credential file.
pub fn make_credential(
    ek: &EkRsa,
    ak_name: &[u8],
    secret: &[u8],
    seed: &[u8; 32],
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<Vec<u8>, CredentialError> {
    use aes::cipher::{AsyncStreamCipher, KeyIvInit};
    if ak_name.len() != 34 || ak_name[..2] != TPM_ALG_SHA256.to_be_bytes() {
        return Err(CredentialError::Name(
            "expected a 34-byte SHA-256 name (000b ‖ digest)".into(),
        ));
    }
    if secret.is_empty() || secret.len() > 32 {
        return Err(CredentialError::Secret(
            "must be 1-32 bytes (a TPM2B_DIGEST)".into(),
        ));
    }
    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&ek.modulus),
        rsa::BigUint::from(ek.exponent),
    )
    .map_err(|e| CredentialError::EkPublic(e.to_string()))?;
    let padding = rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0");
    let enc_secret = key
        .encrypt(rng, padding, seed)
        .map_err(|e| CredentialError::Encrypt(e.to_string()))?;
    let sym_key = kdfa_sha256(seed, "STORAGE", ak_name, &[], u32::from(ek.sym_key_bits));
    let mut identity = (secret.len() as u16).to_be_bytes().to_vec();
    identity.extend_from_slice(secret);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0u8; 16])
        .map_err(|e| CredentialError::Encrypt(e.to_string()))?
        .encrypt(&mut identity);
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).expect("HMAC takes any key");
    m.update(&identity);
    m.update(ak_name);
    let outer = m.finalize().into_bytes();
    let mut id_object = (outer.len() as u16).to_be_bytes().to_vec();
    id_object.extend_from_slice(&outer);
    id_object.extend_from_slice(&identity);
    let mut out = Vec::new();
    out.extend_from_slice(&0xBADC_C0DEu32.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&(id_object.len() as u16).to_be_bytes());
    out.extend_from_slice(&id_object);
    out.extend_from_slice(&(enc_secret.len() as u16).to_be_bytes());
    out.extend_from_slice(&enc_secret);
    Ok(out)
}

/// The TPM name of a TPMT_PUBLIC: nameAlg ‖ SHA-256(TPMT_PUBLIC) (for names given as a
/// TPM2B_PUBLIC instead of tpm2-tools' `-n` file).
pub fn name_of_public(tpm2b_public: &[u8]) -> Option<Vec<u8>> {
    let body = tpm2b_public.get(2..)?;
    let mut n = TPM_ALG_SHA256.to_be_bytes().to_vec();
    n.extend_from_slice(&Sha256::digest(body));
    Some(n)
}

/// Verify an EK certificate chain (EK cert → intermediates → a trusted root, each signed by
/// the next with RSA PKCS#1 v1.5 or ECDSA over SHA-256/384/512), each certificate valid at
/// `now`, and that the certificate certifies exactly this EK's public key. Together with
/// credential activation this anchors an AK in a TPM whose manufacturer (or swtpm-localca)
/// the verifier trusts.
pub fn verify_ek_cert(
    ek_cert_der: &[u8],
    intermediates_der: &[Vec<u8>],
    trusted_roots_der: &[Vec<u8>],
    ek: &EkRsa,
    now: u64,
) -> crate::verdict::Verdict {
    use der::{Decode, Encode};
    use x509_cert::Certificate;
    let mut v = crate::verdict::Verdict::default();
    let mut chain: Vec<(Vec<u8>, Certificate)> = Vec::new();
    for (i, der_bytes) in std::iter::once(ek_cert_der)
        .chain(intermediates_der.iter().map(Vec::as_slice))
        .enumerate()
    {
        match Certificate::from_der(der_bytes) {
            Ok(c) => chain.push((der_bytes.to_vec(), c)),
            Err(e) => {
                v.push(
                    &format!("cert[{i}].decode"),
                    false,
                    format!("not DER X.509: {e}"),
                );
                return v;
            }
        }
    }
    let roots: Vec<Certificate> = trusted_roots_der
        .iter()
        .filter_map(|d| Certificate::from_der(d).ok())
        .collect();
    if roots.is_empty() {
        v.push("roots", false, "no trusted root certificate given");
        return v;
    }
    // The EK certificate certifies this EK.
    let spki = &chain[0].1.tbs_certificate.subject_public_key_info;
    let key_ok = spki
        .to_der()
        .ok()
        .and_then(|d| {
            use rsa::pkcs8::DecodePublicKey;
            rsa::RsaPublicKey::from_public_key_der(&d).ok()
        })
        .map(|k| {
            use rsa::traits::PublicKeyParts;
            k.n().to_bytes_be() == ek.modulus
        })
        .unwrap_or(false);
    v.push(
        "ek_cert.key",
        key_ok,
        "the certificate's public key is the EK's",
    );
    // Each link, then the last one against a trusted root.
    for i in 0..chain.len() {
        let (_, cert) = &chain[i];
        let issuer: Option<&Certificate> = chain.get(i + 1).map(|(_, c)| c).or_else(|| {
            roots
                .iter()
                .find(|r| r.tbs_certificate.subject == cert.tbs_certificate.issuer)
        });
        let name = if i == 0 {
            "ek_cert".to_string()
        } else {
            format!("intermediate[{}]", i - 1)
        };
        let Some(issuer) = issuer else {
            v.push(
                &format!("{name}.issuer"),
                false,
                format!("no trusted root named {}", cert.tbs_certificate.issuer),
            );
            continue;
        };
        let sig_ok = check_cert_signature(cert, issuer);
        v.push(
            &format!("{name}.signature"),
            sig_ok.is_ok(),
            match sig_ok {
                Ok(alg) => format!("signed by {} ({alg})", issuer.tbs_certificate.subject),
                Err(e) => e,
            },
        );
        let val = &cert.tbs_certificate.validity;
        let (nb, na) = (
            val.not_before.to_unix_duration().as_secs(),
            val.not_after.to_unix_duration().as_secs(),
        );
        v.push(
            &format!("{name}.validity"),
            nb <= now && now <= na,
            format!("valid {nb}..{na} (Unix s), verification time {now}"),
        );
    }
    v
}

pub(crate) fn check_cert_signature(
    cert: &x509_cert::Certificate,
    issuer: &x509_cert::Certificate,
) -> Result<String, String> {
    use der::Encode;
    let tbs = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let sig = cert.signature.raw_bytes();
    let oid = cert.signature_algorithm.oid.to_string();
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    match oid.as_str() {
        // sha{256,384,512}WithRSAEncryption (RFC 4055)
        "1.2.840.113549.1.1.11" | "1.2.840.113549.1.1.12" | "1.2.840.113549.1.1.13" => {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::Pkcs1v15Sign;
            let key = rsa::RsaPublicKey::from_public_key_der(&spki)
                .map_err(|_| "issuer key is not RSA".to_string())?;
            let ok = match oid.as_str() {
                "1.2.840.113549.1.1.11" => {
                    key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&tbs), sig)
                }
                "1.2.840.113549.1.1.12" => key.verify(
                    Pkcs1v15Sign::new::<sha2::Sha384>(),
                    &sha2::Sha384::digest(&tbs),
                    sig,
                ),
                _ => key.verify(
                    Pkcs1v15Sign::new::<sha2::Sha512>(),
                    &sha2::Sha512::digest(&tbs),
                    sig,
                ),
            };
            ok.map(|_| "RSA PKCS#1 v1.5".to_string())
                .map_err(|_| "signature does not verify with the issuer's key".into())
        }
        // ecdsa-with-SHA256 / SHA384 (RFC 5758)
        "1.2.840.10045.4.3.2" | "1.2.840.10045.4.3.3" => {
            use p256::ecdsa::signature::Verifier;
            use rsa::pkcs8::DecodePublicKey;
            if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) {
                let s = p256::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
                return k
                    .verify(&tbs, &s)
                    .map(|_| "ECDSA P-256".to_string())
                    .map_err(|_| "signature does not verify".into());
            }
            if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki) {
                let s = p384::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
                return k
                    .verify(&tbs, &s)
                    .map(|_| "ECDSA P-384".to_string())
                    .map_err(|_| "signature does not verify".into());
            }
            Err("issuer key is not P-256/P-384".into())
        }
        other => Err(format!("signature algorithm {other} not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_determinism() {
        let a = kdfa_sha256(b"seed", "STORAGE", b"name", b"", 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa_sha256(b"seed", "STORAGE", b"name", b"", 128));
        assert_ne!(a, kdfa_sha256(b"seed", "INTEGRITY", b"name", b"", 128));
        assert_eq!(kdfa_sha256(b"k", "L", b"", b"", 512).len(), 64);
    }

    /// TPM2B_PUBLIC of an RSA-2048 EK template (TCG EK profile, template L-1) with `extra`
    /// bytes inside the size after its TPMT_PUBLIC.
    fn ek_public(sym_bits: u16, extra: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for x in [0x0001u16, 0x000b] {
            t.extend_from_slice(&x.to_be_bytes()); // type RSA, nameAlg SHA-256
        }
        t.extend_from_slice(&0x0003_00b2u32.to_be_bytes()); // objectAttributes
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&[0x83; 32]); // authPolicy
        for x in [0x0006u16, sym_bits, 0x0043, 0x0010, 2048] {
            t.extend_from_slice(&x.to_be_bytes()); // AES, keyBits, CFB, scheme NULL, keyBits
        }
        t.extend_from_slice(&0u32.to_be_bytes()); // exponent (0: 65537)
        t.extend_from_slice(&256u16.to_be_bytes());
        t.extend_from_slice(&[0xc5; 256]); // modulus
        t.extend_from_slice(extra);
        let mut b = (t.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&t);
        b
    }

    #[test]
    fn ek_public_decodes_and_malformed_ones_are_named() {
        let ek = parse_ek_public(&ek_public(128, &[])).unwrap();
        assert_eq!(
            (ek.name_alg, ek.sym_key_bits, ek.exponent, ek.modulus),
            (TPM_ALG_SHA256, 128, 65537, vec![0xc5; 256])
        );
        let e = |b: &[u8]| parse_ek_public(b).unwrap_err().to_string();
        assert_eq!(
            e(&ek_public(256, &[])),
            "EK public: only AES-128 EKs are supported"
        );
        assert_eq!(
            e(&ek_public(128, &[0])),
            "EK public: TPM2B_PUBLIC: 1 trailing bytes"
        );
        let b = ek_public(128, &[]);
        assert_eq!(
            e(&b[..b.len() - 1]),
            "EK public: TPM2B_PUBLIC: size field does not match the data (314 bytes declared, 313 present)"
        );
    }
}
