//! AWS Nitro Enclaves attestation documents, verified offline at an explicit time.
//!
//! A document is what the Nitro Secure Module returns for an `Attestation` request: a
//! COSE_Sign1 (RFC 9052 §4.2; CBOR tag 18 optional, the NSM writes it untagged) whose
//! protected header names ES384 (`{1: -35}`), whose payload is the CBOR map below and whose
//! signature is the 96-byte r‖s of ECDSA P-384 / SHA-384 over
//! `Sig_structure = ["Signature1", protected, h'', payload]` by the leaf certificate's key.
//!
//! Payload (AWS, aws-nitro-enclaves-nsm-api `docs/attestation_process.md` §3.2, "syntactical
//! validation"): `module_id` (non-empty text), `digest` ("SHA384"), `timestamp` (Unix ms,
//! non-zero), `pcrs` (1–32 entries, index 0–31 → 32/48/64 bytes), `certificate` (DER, 1–1024
//! bytes), `cabundle` (DER certificates `[ROOT, INTERM_1, …]`, each 1–1024 bytes), and
//! `public_key` (1–1024 bytes), `user_data` and `nonce` (0–512 bytes each), each of the last
//! three either a byte string or `null`.
//!
//! The chain (§3.2.2): `cabundle[0]` is the AWS Nitro Enclaves Root G1 (pinned by the SHA-256
//! of its DER, or another root the caller pins), each next certificate is signed by the one
//! before it, the leaf by the last; every certificate valid at the verification time; CAs
//! carry basicConstraints CA with a path length that allows the certificates below them and
//! keyUsage keyCertSign; the leaf is not a CA and has keyUsage digitalSignature.
//!
//! Strict CBOR: the whole document must be exactly one item (no trailing bytes), with no
//! duplicate map keys, no indefinite-length byte or text strings (the NSM never writes them),
//! no floats, no tags other than the optional outer 18, and definite lengths in the COSE
//! structure itself. The payload map may be indefinite-length (`bf … ff`): current NSMs write
//! it that way and the signature covers those exact bytes, so the payload is never
//! re-encoded.

use std::collections::BTreeMap;

use ciborium::Value;
use coset::{CborSerializable, TaggedCborSerializable};
use sha2::{Digest, Sha256};

use crate::verdict::Verdict;

/// SHA-256 of the DER of the AWS Nitro Enclaves Root G1 ("aws.nitro-enclaves", P-384,
/// 2019-10-28 → 2049-10-28), as AWS publishes it.
pub const AWS_NITRO_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1a, 0x03, 0x21, 0xa3, 0xe2, 0x44, 0xef, 0xe4, 0x56, 0x46, 0x31, 0x95, 0xd6, 0x06, 0x31,
    0x7e, 0xd7, 0xcd, 0xcc, 0x3c, 0x17, 0x56, 0xe0, 0x98, 0x93, 0xf3, 0xc6, 0x8f, 0x79, 0xbb, 0x5b,
];

/// The largest document accepted (the NSM's response buffer is 0x3000 bytes).
pub const MAX_DOCUMENT: usize = 0x4000;
/// Deepest CBOR nesting accepted (a document nests three levels).
const MAX_DEPTH: usize = 8;

/// Why a document is not a well-formed attestation document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NitroError {
    #[error("document is {0} bytes, more than the {MAX_DOCUMENT} accepted")]
    TooLarge(usize),
    #[error("CBOR at byte {offset}: {reason}")]
    Cbor { offset: usize, reason: String },
    #[error("COSE_Sign1: {0}")]
    Cose(String),
    #[error("payload field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("payload: unknown field {0:?}")]
    UnknownField(String),
}

fn cbor_err(offset: usize, reason: impl Into<String>) -> NitroError {
    NitroError::Cbor {
        offset,
        reason: reason.into(),
    }
}

/// The payload of an attestation document, as decoded (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDoc {
    pub module_id: String,
    pub digest: String,
    /// Milliseconds since the Unix epoch (the NSM's clock).
    pub timestamp_ms: u64,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub certificate: Vec<u8>,
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

impl AttestationDoc {
    /// A debug-mode enclave: the NSM reports PCR 0, 1 and 2 as zero, and the parent can read
    /// the enclave's memory. Nothing it says is a measurement.
    pub fn debug(&self) -> bool {
        [0u8, 1, 2]
            .iter()
            .all(|i| self.pcrs.get(i).is_none_or(|v| v.iter().all(|b| *b == 0)))
    }

    /// The 48-byte PCR `i`, if the document has it with that length.
    pub fn pcr384(&self, i: u8) -> Option<[u8; 48]> {
        self.pcrs
            .get(&i)
            .and_then(|v| <[u8; 48]>::try_from(v.as_slice()).ok())
    }
}

/// A parsed document: the payload and what the signature covers.
#[derive(Debug, Clone)]
pub struct Document {
    pub doc: AttestationDoc,
    /// `Sig_structure` as RFC 9052 §4.4 builds it from the document's own bytes.
    pub to_be_signed: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Walk one CBOR data item with the strictness rules above; returns nothing, or why not.
/// `outer` marks the COSE structure, where indefinite lengths are refused too.
fn walk(
    d: &mut ciborium_ll::Decoder<&[u8]>,
    buf: &[u8],
    depth: usize,
    outer: bool,
) -> Result<(), NitroError> {
    use ciborium_ll::Header;
    if depth > MAX_DEPTH {
        return Err(cbor_err(d.offset(), "nested too deeply"));
    }
    let at = d.offset();
    let h = d
        .pull()
        .map_err(|e| cbor_err(at, format!("not well-formed ({e:?})")))?;
    let skip = |d: &mut ciborium_ll::Decoder<&[u8]>, n: usize| -> Result<(), NitroError> {
        let start = d.offset();
        if buf.len() - start < n {
            return Err(cbor_err(
                start,
                format!("string of {n} bytes runs past the end"),
            ));
        }
        let mut sink = vec![0u8; n];
        ciborium_io::Read::read_exact(d, &mut sink)
            .map_err(|_| cbor_err(start, "string runs past the end"))?;
        Ok(())
    };
    match h {
        Header::Positive(_) | Header::Negative(_) => Ok(()),
        Header::Simple(20..=22) => Ok(()),
        Header::Simple(s) => Err(cbor_err(at, format!("simple value {s} not allowed"))),
        Header::Float(_) => Err(cbor_err(at, "floats are not allowed")),
        Header::Tag(t) => Err(cbor_err(at, format!("tag {t} not allowed here"))),
        Header::Break => Err(cbor_err(at, "break outside an indefinite-length item")),
        Header::Bytes(None) | Header::Text(None) => {
            Err(cbor_err(at, "indefinite-length string not allowed"))
        }
        Header::Bytes(Some(n)) => skip(d, n),
        Header::Text(Some(n)) => {
            let start = d.offset();
            skip(d, n)?;
            std::str::from_utf8(&buf[start..start + n])
                .map(|_| ())
                .map_err(|_| cbor_err(start, "text string is not UTF-8"))
        }
        Header::Array(len) | Header::Map(len) => {
            let map = matches!(h, Header::Map(_));
            if len.is_none() && outer {
                return Err(cbor_err(at, "indefinite length in the COSE structure"));
            }
            let mut keys: Vec<&[u8]> = Vec::new();
            let mut i = 0usize;
            loop {
                match len {
                    Some(n) if i == n => break,
                    Some(_) => {}
                    None => {
                        let here = d.offset();
                        match d.pull() {
                            Ok(Header::Break) => break,
                            Ok(other) => d.push(other),
                            Err(e) => {
                                return Err(cbor_err(here, format!("not well-formed ({e:?})")))
                            }
                        }
                    }
                }
                if d.offset() >= buf.len() {
                    return Err(cbor_err(d.offset(), "item runs past the end"));
                }
                let k0 = d.offset();
                walk(d, buf, depth + 1, false)?;
                if map {
                    let key = &buf[k0..d.offset()];
                    if keys.contains(&key) {
                        return Err(cbor_err(k0, "duplicate map key"));
                    }
                    keys.push(key);
                    walk(d, buf, depth + 1, false)?;
                }
                i += 1;
            }
            Ok(())
        }
    }
}

/// Check `bytes` is exactly one strict CBOR item (see the module documentation).
fn strict(bytes: &[u8], outer: bool, allow_tag: Option<u64>) -> Result<(), NitroError> {
    let mut d = ciborium_ll::Decoder::from(bytes);
    if let Some(tag) = allow_tag {
        match d.pull() {
            Ok(ciborium_ll::Header::Tag(t)) if t == tag => {}
            Ok(other) => d.push(other),
            Err(e) => return Err(cbor_err(0, format!("not well-formed ({e:?})"))),
        }
    }
    walk(&mut d, bytes, 0, outer)?;
    if d.offset() != bytes.len() {
        return Err(cbor_err(
            d.offset(),
            format!("{} trailing bytes", bytes.len() - d.offset()),
        ));
    }
    Ok(())
}

fn bstr(field: &'static str, v: Value, min: usize, max: usize) -> Result<Vec<u8>, NitroError> {
    let b = v.into_bytes().map_err(|_| NitroError::Field {
        field,
        reason: "not a byte string".into(),
    })?;
    if b.len() < min || b.len() > max {
        return Err(NitroError::Field {
            field,
            reason: format!("{} bytes, expected {min}–{max}", b.len()),
        });
    }
    Ok(b)
}

fn opt_bstr(
    field: &'static str,
    v: Value,
    min: usize,
    max: usize,
) -> Result<Option<Vec<u8>>, NitroError> {
    if v.is_null() {
        return Ok(None);
    }
    bstr(field, v, min, max).map(Some)
}

/// Decode the payload map (already checked strict) into its typed fields.
fn decode_payload(payload: &[u8]) -> Result<AttestationDoc, NitroError> {
    strict(payload, false, None)?;
    let v: Value =
        ciborium::from_reader(payload).map_err(|e| cbor_err(0, format!("payload: {e}")))?;
    let Value::Map(entries) = v else {
        return Err(cbor_err(0, "payload is not a map"));
    };
    let mut f: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(cbor_err(0, "payload key is not text"));
        };
        f.insert(k, v);
    }
    let mut take = |field: &'static str| {
        f.remove(field).ok_or(NitroError::Field {
            field,
            reason: "missing".into(),
        })
    };
    let text = |field: &'static str, v: Value| {
        v.into_text().map_err(|_| NitroError::Field {
            field,
            reason: "not a text string".into(),
        })
    };
    let module_id = text("module_id", take("module_id")?)?;
    if module_id.is_empty() {
        return Err(NitroError::Field {
            field: "module_id",
            reason: "empty".into(),
        });
    }
    let digest = text("digest", take("digest")?)?;
    if digest != "SHA384" {
        return Err(NitroError::Field {
            field: "digest",
            reason: format!("{digest:?}, expected \"SHA384\""),
        });
    }
    let timestamp_ms = take("timestamp")?
        .as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .filter(|t| *t > 0)
        .ok_or(NitroError::Field {
            field: "timestamp",
            reason: "not a positive integer".into(),
        })?;
    let Value::Map(pcr_entries) = take("pcrs")? else {
        return Err(NitroError::Field {
            field: "pcrs",
            reason: "not a map".into(),
        });
    };
    if pcr_entries.is_empty() || pcr_entries.len() > 32 {
        return Err(NitroError::Field {
            field: "pcrs",
            reason: format!("{} entries, expected 1–32", pcr_entries.len()),
        });
    }
    let mut pcrs = BTreeMap::new();
    for (k, v) in pcr_entries {
        let idx = k
            .as_integer()
            .and_then(|i| u8::try_from(i).ok())
            .filter(|i| *i < 32)
            .ok_or(NitroError::Field {
                field: "pcrs",
                reason: "index not in 0–31".into(),
            })?;
        let b = bstr("pcrs", v, 32, 64)?;
        if ![32, 48, 64].contains(&b.len()) {
            return Err(NitroError::Field {
                field: "pcrs",
                reason: format!("PCR {idx} is {} bytes, expected 32, 48 or 64", b.len()),
            });
        }
        pcrs.insert(idx, b);
    }
    let certificate = bstr("certificate", take("certificate")?, 1, 1024)?;
    let Value::Array(bundle) = take("cabundle")? else {
        return Err(NitroError::Field {
            field: "cabundle",
            reason: "not an array".into(),
        });
    };
    if bundle.is_empty() {
        return Err(NitroError::Field {
            field: "cabundle",
            reason: "empty".into(),
        });
    }
    let cabundle = bundle
        .into_iter()
        .map(|c| bstr("cabundle", c, 1, 1024))
        .collect::<Result<Vec<_>, _>>()?;
    let public_key = opt_bstr("public_key", take("public_key")?, 1, 1024)?;
    let user_data = opt_bstr("user_data", take("user_data")?, 0, 512)?;
    let nonce = opt_bstr("nonce", take("nonce")?, 0, 512)?;
    if let Some(k) = f.keys().next() {
        return Err(NitroError::UnknownField(k.clone()));
    }
    Ok(AttestationDoc {
        module_id,
        digest,
        timestamp_ms,
        pcrs,
        certificate,
        cabundle,
        public_key,
        user_data,
        nonce,
    })
}

/// Parse a document (tagged or untagged COSE_Sign1) strictly; nothing is verified yet.
pub fn parse(bytes: &[u8]) -> Result<Document, NitroError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(NitroError::TooLarge(bytes.len()));
    }
    strict(bytes, true, Some(coset::CoseSign1::TAG))?;
    let sign1 = if bytes.first().is_some_and(|b| *b == 0xd2) {
        coset::CoseSign1::from_tagged_slice(bytes)
    } else {
        coset::CoseSign1::from_slice(bytes)
    }
    .map_err(|e| NitroError::Cose(e.to_string()))?;
    let prot = &sign1.protected;
    let Some(prot_bytes) = prot.original_data.as_deref() else {
        return Err(NitroError::Cose("no protected header".into()));
    };
    strict(prot_bytes, true, None)?;
    let h = &prot.header;
    let es384 = coset::RegisteredLabelWithPrivate::Assigned(coset::iana::Algorithm::ES384);
    if h.alg.as_ref() != Some(&es384) {
        return Err(NitroError::Cose(format!(
            "protected header alg is {:?}, expected ES384 (-35)",
            h.alg
        )));
    }
    if !h.crit.is_empty() || !h.rest.is_empty() || !h.key_id.is_empty() {
        return Err(NitroError::Cose(
            "protected header carries more than alg".into(),
        ));
    }
    if !sign1.unprotected.is_empty() {
        return Err(NitroError::Cose("unprotected header is not empty".into()));
    }
    let Some(payload) = sign1.payload.as_deref() else {
        return Err(NitroError::Cose("detached payload".into()));
    };
    if sign1.signature.len() != 96 {
        return Err(NitroError::Cose(format!(
            "signature is {} bytes, expected 96 (P-384 r‖s)",
            sign1.signature.len()
        )));
    }
    let doc = decode_payload(payload)?;
    Ok(Document {
        doc,
        to_be_signed: sign1.tbs_data(b""),
        signature: sign1.signature.clone(),
    })
}

/// What the verifier requires beyond a genuine document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NitroPolicy {
    /// SHA-256 of the pinned root's DER (default: AWS Nitro Enclaves Root G1).
    pub root_sha256: Option<[u8; 32]>,
    /// Accept a debug-mode enclave (PCR 0–2 zero).
    pub allow_debug: bool,
    /// Required PCR values (SHA-384), by index.
    pub pcrs: BTreeMap<u8, [u8; 48]>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
}

/// The document's time in Unix seconds (the chain is checked at it for an audit).
pub fn document_time(doc: &AttestationDoc) -> u64 {
    doc.timestamp_ms / 1000
}

/// Verify a document at `at` (Unix seconds: every certificate must be valid then): strict
/// decoding, the chain to the pinned root, the ES384 signature, then the policy. Returns the
/// verdict, and the payload when the signature and chain verified.
pub fn verify(bytes: &[u8], at: u64, policy: &NitroPolicy) -> (Verdict, Option<AttestationDoc>) {
    let mut v = Verdict::default();
    let d = match parse(bytes) {
        Ok(d) => d,
        Err(e) => {
            v.push("document.decode", false, e.to_string());
            return (v, None);
        }
    };
    let doc = &d.doc;
    v.push(
        "document.decode",
        true,
        format!(
            "module {}, timestamp {} ms, {} PCRs, {} CA certificates",
            doc.module_id,
            doc.timestamp_ms,
            doc.pcrs.len(),
            doc.cabundle.len()
        ),
    );
    let chain_ok = verify_chain(&mut v, doc, at, policy);
    let sig_ok = verify_signature(&mut v, &d);
    let authentic = chain_ok && sig_ok;
    v.push(
        "enclave.debug",
        policy.allow_debug || !doc.debug(),
        if doc.debug() {
            "PCR 0, 1 and 2 are zero: a debug-mode enclave (its memory is open to the parent)"
        } else {
            "production enclave (PCR 0–2 set)"
        },
    );
    for (i, want) in &policy.pcrs {
        let got = doc.pcrs.get(i);
        v.push(
            &format!("pcr.{i}"),
            got.is_some_and(|g| g.as_slice() == want),
            format!(
                "document {} vs expected {}",
                got.map(hex::encode).unwrap_or_else(|| "absent".into()),
                hex::encode(want)
            ),
        );
    }
    for (name, want, got) in [
        ("user_data", &policy.user_data, &doc.user_data),
        ("nonce", &policy.nonce, &doc.nonce),
        ("public_key", &policy.public_key, &doc.public_key),
    ] {
        if let Some(w) = want {
            v.push(
                name,
                got.as_ref() == Some(w),
                format!(
                    "document {} vs expected {}",
                    got.as_ref()
                        .map(hex::encode)
                        .unwrap_or_else(|| "null".into()),
                    hex::encode(w)
                ),
            );
        }
    }
    (v, authentic.then_some(d.doc))
}

fn verify_signature(v: &mut Verdict, d: &Document) -> bool {
    use p384::ecdsa::signature::Verifier;
    use p384::pkcs8::DecodePublicKey;
    use x509_cert::der::{Decode, Encode};
    let key = x509_cert::Certificate::from_der(&d.doc.certificate)
        .ok()
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der().ok())
        .and_then(|spki| p384::ecdsa::VerifyingKey::from_public_key_der(&spki).ok());
    let Some(key) = key else {
        return v.push(
            "signature",
            false,
            "the leaf certificate's key is not P-384",
        );
    };
    let ok = p384::ecdsa::Signature::from_slice(&d.signature)
        .map(|s| key.verify(&d.to_be_signed, &s).is_ok())
        .unwrap_or(false);
    v.push(
        "signature",
        ok,
        if ok {
            "ES384 over the COSE Sig_structure by the leaf certificate's key"
        } else {
            "ES384 signature does not verify with the leaf certificate's key"
        },
    )
}

/// basicConstraints (CA, path length) and keyUsage bits of a certificate.
fn constraints(c: &x509_cert::Certificate) -> (bool, Option<u8>, Option<(bool, bool)>) {
    use x509_cert::der::oid::AssociatedOid;
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
    let mut ca = (false, None);
    let mut ku = None;
    for e in c.tbs_certificate.extensions.iter().flatten() {
        if e.extn_id == BasicConstraints::OID {
            if let Ok(b) = BasicConstraints::from_der(e.extn_value.as_bytes()) {
                ca = (b.ca, b.path_len_constraint);
            }
        } else if e.extn_id == KeyUsage::OID {
            if let Ok(k) = KeyUsage::from_der(e.extn_value.as_bytes()) {
                ku = Some((
                    k.0.contains(KeyUsages::KeyCertSign),
                    k.0.contains(KeyUsages::DigitalSignature),
                ));
            }
        }
    }
    (ca.0, ca.1, ku)
}

fn verify_chain(v: &mut Verdict, doc: &AttestationDoc, at: u64, policy: &NitroPolicy) -> bool {
    use x509_cert::der::Decode;
    let pinned = policy.root_sha256.unwrap_or(AWS_NITRO_ROOT_G1_SHA256);
    let root_fp: [u8; 32] = Sha256::digest(&doc.cabundle[0]).into();
    let mut ok = v.push(
        "chain.root",
        root_fp == pinned,
        format!(
            "cabundle[0] SHA-256 {} vs pinned {}",
            hex::encode(root_fp),
            hex::encode(pinned)
        ),
    );
    let mut certs = Vec::new();
    for (i, der) in doc
        .cabundle
        .iter()
        .chain(std::iter::once(&doc.certificate))
        .enumerate()
    {
        let name = chain_name(i, doc.cabundle.len());
        match x509_cert::Certificate::from_der(der) {
            Ok(c) => certs.push((name, c)),
            Err(e) => {
                v.push(
                    &format!("{name}.decode"),
                    false,
                    format!("not DER X.509: {e}"),
                );
                return false;
            }
        }
    }
    let n = certs.len();
    for i in 0..n {
        let (name, cert) = &certs[i];
        // The root signs itself; everything else is signed by the certificate before it.
        let issuer = if i == 0 { cert } else { &certs[i - 1].1 };
        let names_ok = cert.tbs_certificate.issuer == issuer.tbs_certificate.subject;
        let sig = crate::credential::check_cert_signature(cert, issuer);
        ok &= v.push(
            &format!("{name}.signature"),
            names_ok && sig.is_ok(),
            match (&sig, names_ok) {
                (Ok(alg), true) => format!("signed by {} ({alg})", issuer.tbs_certificate.subject),
                (Ok(_), false) => format!(
                    "issuer {} is not {}",
                    cert.tbs_certificate.issuer, issuer.tbs_certificate.subject
                ),
                (Err(e), _) => e.clone(),
            },
        );
        let val = &cert.tbs_certificate.validity;
        let (nb, na) = (
            val.not_before.to_unix_duration().as_secs(),
            val.not_after.to_unix_duration().as_secs(),
        );
        ok &= v.push(
            &format!("{name}.validity"),
            nb <= at && at <= na,
            format!("valid {nb}..{na} (Unix s), verification time {at}"),
        );
        let (is_ca, path_len, usage) = constraints(cert);
        let leaf = i == n - 1;
        let below = n - 2 - i.min(n - 2); // CA certificates below this one
        let (c_ok, why) = if leaf {
            (
                !is_ca && usage.is_some_and(|u| u.1),
                "leaf: not a CA, keyUsage digitalSignature",
            )
        } else {
            (
                is_ca
                    && usage.is_some_and(|u| u.0)
                    && path_len.is_none_or(|p| usize::from(p) >= below),
                "CA: basicConstraints CA with room for the chain below, keyUsage keyCertSign",
            )
        };
        ok &= v.push(&format!("{name}.constraints"), c_ok, why);
    }
    ok
}

fn chain_name(i: usize, bundle: usize) -> String {
    match i {
        0 => "chain.root_cert".into(),
        i if i == bundle => "chain.leaf".into(),
        i => format!("chain.cabundle[{i}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_cbor_refuses_what_ciborium_would_accept() {
        // {"a": 1, "a": 2}
        let dup = [0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02];
        assert!(strict(&dup, false, None)
            .unwrap_err()
            .to_string()
            .contains("duplicate map key"));
        // h'' as an indefinite-length byte string of one chunk
        let chunked = [0x5f, 0x41, 0x00, 0xff];
        assert!(strict(&chunked, false, None)
            .unwrap_err()
            .to_string()
            .contains("indefinite-length string"));
        // an indefinite map is fine in the payload, not in the COSE structure
        let indef = [0xbf, 0x61, 0x61, 0x01, 0xff];
        assert!(strict(&indef, false, None).is_ok());
        assert!(strict(&indef, true, None).is_err());
        assert!(strict(&[0x01, 0x00], false, None)
            .unwrap_err()
            .to_string()
            .contains("1 trailing bytes"));
        assert!(strict(&[0xf9, 0x3c, 0x00], false, None).is_err()); // half float
        assert!(strict(&[0x5a, 0xff, 0xff, 0xff, 0xff], false, None).is_err()); // huge bstr
        assert!(strict(&[0x9f; 64], false, None).is_err()); // deep nesting
        assert!(strict(&[0xff], false, None).is_err()); // stray break
    }
}
