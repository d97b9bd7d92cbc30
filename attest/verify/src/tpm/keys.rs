//! Attestation keys: the AK's public area (TPM2B_PUBLIC or PEM), its TPM name and DER form, and
//! signature checks by it (RSASSA, RSAPSS, ECDSA P-256/P-384).

use sha2::{Sha256, Sha384, Sha512};
use tpm2_protocol::data::{TpmEccCurve, TpmuPublicId, TpmuPublicParms};

use super::*;

/// The attestation key.
#[derive(Debug, Clone)]
pub enum AkPublic {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// Read an AK from PEM or DER SubjectPublicKeyInfo (tpm2_createak `-f pem`).
pub fn parse_ak(b: &[u8]) -> Result<AkPublic, TpmError> {
    use rsa::pkcs8::DecodePublicKey;
    let bad = |r: String| TpmError::Invalid {
        what: "AK public key",
        reason: r,
    };
    let text = std::str::from_utf8(b)
        .ok()
        .filter(|t| t.contains("-----BEGIN"));
    if let Some(t) = text {
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(t) {
            return Ok(AkPublic::Rsa(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(t) {
            return Ok(AkPublic::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(t) {
            return Ok(AkPublic::P384(k));
        }
        return Err(bad("PEM is not an RSA, P-256 or P-384 public key".into()));
    }
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(b) {
        return Ok(AkPublic::Rsa(k));
    }
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(b) {
        return Ok(AkPublic::P256(k));
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(b) {
        return Ok(AkPublic::P384(k));
    }
    if let Ok((k, _)) = parse_ak_tpm2b(b) {
        return Ok(k);
    }
    Err(bad(
        "neither a PEM/DER SubjectPublicKeyInfo nor a TPM2B_PUBLIC".into(),
    ))
}

/// RSA signature check with PKCS#1 v1.5 or PSS padding over H(msg).
pub(super) fn rsa_ok(
    k: &rsa::RsaPublicKey,
    hash_alg: u16,
    pss: bool,
    msg: &[u8],
    sig: &[u8],
) -> Result<bool, String> {
    use rsa::{Pkcs1v15Sign, Pss};
    let d = hash(hash_alg, msg).ok_or("unsupported hash")?;
    Ok(match (hash_alg, pss) {
        (TPM_ALG_SHA256, false) => k.verify(Pkcs1v15Sign::new::<Sha256>(), &d, sig).is_ok(),
        (TPM_ALG_SHA384, false) => k.verify(Pkcs1v15Sign::new::<Sha384>(), &d, sig).is_ok(),
        (TPM_ALG_SHA512, false) => k.verify(Pkcs1v15Sign::new::<Sha512>(), &d, sig).is_ok(),
        (TPM_ALG_SHA256, true) => k.verify(Pss::new::<Sha256>(), &d, sig).is_ok(),
        (TPM_ALG_SHA384, true) => k.verify(Pss::new::<Sha384>(), &d, sig).is_ok(),
        (TPM_ALG_SHA512, true) => k.verify(Pss::new::<Sha512>(), &d, sig).is_ok(),
        _ => return Err(format!("hash {hash_alg:#06x} not accepted for RSA")),
    })
}

pub(super) fn verify_signature(
    ak: &AkPublic,
    msg: &[u8],
    sig: &Signature,
) -> Result<String, String> {
    match (ak, sig) {
        (AkPublic::Rsa(k), Signature::RsaSsa { hash, sig }) => rsa_ok(k, *hash, false, msg, sig)?
            .then(|| "RSASSA-PKCS1-v1_5".to_string())
            .ok_or_else(|| "RSASSA signature does not verify with the AK".into()),
        (AkPublic::Rsa(k), Signature::RsaPss { hash, sig }) => rsa_ok(k, *hash, true, msg, sig)?
            .then(|| "RSASSA-PSS".to_string())
            .ok_or_else(|| "RSAPSS signature does not verify with the AK".into()),
        (AkPublic::Rsa(k), Signature::Plain { hash, bytes }) => {
            // tpm2_checkquote tries both paddings.
            for pss in [false, true] {
                if rsa_ok(k, *hash, pss, msg, bytes)? {
                    let pad = if pss { "PSS" } else { "PKCS1-v1_5" };
                    return Ok(format!("plain RSA ({pad})"));
                }
            }
            Err("plain RSA signature does not verify with the AK".into())
        }
        (AkPublic::P256(k), s @ (Signature::Ecdsa { .. } | Signature::Plain { .. })) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            let (h, sig) = ecdsa_parts(s)?;
            let d = hash(h, msg).ok_or("unsupported hash")?;
            let sig = match sig {
                EcSig::Rs(r, s) => {
                    p256::ecdsa::Signature::from_scalars(pad::<32>(&r)?, pad::<32>(&s)?)
                        .map_err(|e| e.to_string())?
                }
                EcSig::Der(der) => {
                    p256::ecdsa::Signature::from_der(&der).map_err(|e| e.to_string())?
                }
            };
            k.verify_prehash(&d, &sig)
                .map(|_| "ECDSA P-256".to_string())
                .map_err(|_| "ECDSA signature does not verify with the AK".into())
        }
        (AkPublic::P384(k), s @ (Signature::Ecdsa { .. } | Signature::Plain { .. })) => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            let (h, sig) = ecdsa_parts(s)?;
            let d = hash(h, msg).ok_or("unsupported hash")?;
            let sig = match sig {
                EcSig::Rs(r, s) => {
                    p384::ecdsa::Signature::from_scalars(pad::<48>(&r)?, pad::<48>(&s)?)
                        .map_err(|e| e.to_string())?
                }
                EcSig::Der(der) => {
                    p384::ecdsa::Signature::from_der(&der).map_err(|e| e.to_string())?
                }
            };
            k.verify_prehash(&d, &sig)
                .map(|_| "ECDSA P-384".to_string())
                .map_err(|_| "ECDSA signature does not verify with the AK".into())
        }
        _ => Err("the signature algorithm does not match the AK's key type".into()),
    }
}

pub(super) enum EcSig {
    Rs(Vec<u8>, Vec<u8>),
    Der(Vec<u8>),
}

pub(super) fn ecdsa_parts(s: &Signature) -> Result<(u16, EcSig), String> {
    match s {
        Signature::Ecdsa { hash, r, s } => Ok((*hash, EcSig::Rs(r.clone(), s.clone()))),
        Signature::Plain { hash, bytes } => Ok((*hash, EcSig::Der(bytes.clone()))),
        _ => Err("not an ECDSA signature".into()),
    }
}

pub(super) fn pad<const N: usize>(
    v: &[u8],
) -> Result<p256::elliptic_curve::generic_array::GenericArray<u8, <[u8; N] as ArrayLen>::Len>, String>
where
    [u8; N]: ArrayLen,
{
    let v: Vec<u8> = v.iter().skip_while(|&&b| b == 0).copied().collect();
    if v.len() > N {
        return Err("ECDSA scalar too long".into());
    }
    let mut out = vec![0u8; N - v.len()];
    out.extend_from_slice(&v);
    Ok(p256::elliptic_curve::generic_array::GenericArray::clone_from_slice(&out))
}

/// Maps a byte-array length to a typenum length (P-256: 32, P-384: 48).
pub trait ArrayLen {
    type Len: p256::elliptic_curve::generic_array::ArrayLength<u8>;
}
impl ArrayLen for [u8; 32] {
    type Len = p256::elliptic_curve::consts::U32;
}
impl ArrayLen for [u8; 48] {
    type Len = p256::elliptic_curve::consts::U48;
}

/// An AK from its TPM2B_PUBLIC (tpm2_createak -u; TPM2 Part 2 §12.2.5 TPMT_PUBLIC): RSA with
/// any exponent, or ECC on NIST P-256/P-384. Returns the key and its TPM name
/// (nameAlg ‖ H(TPMT_PUBLIC)), which credential activation binds.
pub fn parse_ak_tpm2b(b: &[u8]) -> Result<(AkPublic, Vec<u8>), TpmError> {
    const WHAT: &str = "AK TPM2B_PUBLIC";
    let bad = |r: &str| TpmError::Invalid {
        what: WHAT,
        reason: r.to_string(),
    };
    let (public, body) = parse_tpm2b_public(b, WHAT)?;
    let key = match (&public.parameters, &public.unique) {
        (TpmuPublicParms::Rsa(p), TpmuPublicId::Rsa(n)) => {
            let e = match p.exponent.value() {
                0 => 65537,
                e => e,
            };
            AkPublic::Rsa(
                rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(e))
                    .map_err(|e| bad(&e.to_string()))?,
            )
        }
        (TpmuPublicParms::Ecc(p), TpmuPublicId::Ecc(point)) => {
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&point.x);
            sec1.extend_from_slice(&point.y);
            match p.curve_id {
                TpmEccCurve::NistP256 => AkPublic::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| bad("not a P-256 point"))?,
                ),
                TpmEccCurve::NistP384 => AkPublic::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| bad("not a P-384 point"))?,
                ),
                other => {
                    return Err(bad(&format!(
                        "curve {:#06x} (only P-256/P-384)",
                        other.value()
                    )))
                }
            }
        }
        _ => {
            return Err(bad(&format!(
                "type {:#06x} (only RSA and ECC)",
                public.object_type.value()
            )))
        }
    };
    let name_alg = public.name_alg.value();
    let digest = hash(name_alg, body).ok_or_else(|| bad("nameAlg is not SHA-1/256/384/512"))?;
    let mut name = name_alg.to_be_bytes().to_vec();
    name.extend_from_slice(&digest);
    Ok((key, name))
}

/// The DER SubjectPublicKeyInfo of an AK (how pinned AKs are compared).
pub fn ak_spki_der(k: &AkPublic) -> Vec<u8> {
    use rsa::pkcs8::EncodePublicKey;
    match k {
        AkPublic::Rsa(k) => k
            .to_public_key_der()
            .map(|d| d.to_vec())
            .unwrap_or_default(),
        AkPublic::P256(k) => k
            .to_public_key_der()
            .map(|d| d.to_vec())
            .unwrap_or_default(),
        AkPublic::P384(k) => k
            .to_public_key_der()
            .map(|d| d.to_vec())
            .unwrap_or_default(),
    }
}
