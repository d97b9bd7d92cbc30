//! TPM 2.0 quotes: TPMS_ATTEST + TPMT_SIGNATURE + PCR values, in the files tpm2_quote writes
//! (`-m` message; `-s` in tss or plain format; `-o` in serialized, values or marshaled
//! format), checked the way tpm2_checkquote checks them: signature by the AK (RSASSA, RSAPSS,
//! ECDSA P-256/P-384), TPM_GENERATED magic, quote type, qualifying data, PCR selection and PCR
//! digest. Layouts: TPM 2.0 Library Part 2 §10.12.12 (TPMS_ATTEST), §11.3.4 (TPMT_SIGNATURE),
//! §10.6.2 (TPML_PCR_SELECTION); all big-endian, except tpm2-tools' "serialized" PCR file,
//! which is a little-endian dump of the tss2 C structs.

use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::verdict::Verdict;

const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;
const TPM_ALG_RSASSA: u16 = 0x0014;
const TPM_ALG_RSAPSS: u16 = 0x0016;
const TPM_ALG_ECDSA: u16 = 0x0018;

/// Errors decoding TPM structures and files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    #[error("{what}: truncated at byte {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

struct Be<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Be<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(TpmError::Truncated {
                what: self.what,
                at: self.at,
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TpmError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, TpmError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, TpmError> {
        let s = self.take(8)?;
        Ok(u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], TpmError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// A PCR selection: (hash algorithm, selected PCR indices in ascending order) per bank, in
/// the order given.
pub type Selection = Vec<(u16, Vec<u32>)>;

fn bits_to_pcrs(bits: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for (j, byte) in bits.iter().enumerate() {
        for i in 0..8 {
            if byte & (1 << i) != 0 {
                out.push((j * 8 + i) as u32);
            }
        }
    }
    out
}

/// A tpm2-tools PCR list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcrListError {
    #[error("expected <bank>:<pcr>,...")]
    Shape,
    #[error("unknown bank {0:?}")]
    Bank(String),
    #[error("PCR indices are 0-31")]
    Index,
}

/// Parse a tpm2-tools PCR list (`sha256:0,1,16+sha1:0`).
pub fn parse_pcr_list(s: &str) -> Result<Selection, PcrListError> {
    let mut out = Vec::new();
    for bank in s.split('+') {
        let (alg, pcrs) = bank.split_once(':').ok_or(PcrListError::Shape)?;
        let alg = match alg {
            "sha1" => TPM_ALG_SHA1,
            "sha256" => TPM_ALG_SHA256,
            "sha384" => TPM_ALG_SHA384,
            "sha512" => TPM_ALG_SHA512,
            other => return Err(PcrListError::Bank(other.to_string())),
        };
        let mut v: Vec<u32> = pcrs
            .split(',')
            .map(|p| p.trim().parse::<u32>().ok().filter(|&n| n < 32))
            .collect::<Option<_>>()
            .ok_or(PcrListError::Index)?;
        v.sort_unstable();
        v.dedup();
        out.push((alg, v));
    }
    Ok(out)
}

/// The parts of a TPMS_ATTEST a quote check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: u8,
    pub firmware_version: u64,
    pub selection: Selection,
    pub pcr_digest: Vec<u8>,
}

/// Decode a TPMS_ATTEST of type quote.
pub fn parse_attest(b: &[u8]) -> Result<Attest, TpmError> {
    let mut r = Be {
        b,
        at: 0,
        what: "TPMS_ATTEST",
    };
    let magic = r.u32()?;
    let attest_type = r.u16()?;
    let qualified_signer = r.tpm2b()?.to_vec();
    let extra_data = r.tpm2b()?.to_vec();
    let clock = r.u64()?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let safe = r.u8()?;
    let firmware_version = r.u64()?;
    if attest_type != TPM_ST_ATTEST_QUOTE {
        return Err(TpmError::Invalid {
            what: "TPMS_ATTEST",
            reason: format!("type {attest_type:#06x} is not TPM_ST_ATTEST_QUOTE"),
        });
    }
    let count = r.u32()?;
    if count > 16 {
        return Err(TpmError::Invalid {
            what: "TPMS_ATTEST",
            reason: format!("{count} PCR banks"),
        });
    }
    let mut selection = Vec::new();
    for _ in 0..count {
        let alg = r.u16()?;
        let n = r.u8()? as usize;
        selection.push((alg, bits_to_pcrs(r.take(n)?)));
    }
    let pcr_digest = r.tpm2b()?.to_vec();
    if r.at != b.len() {
        return Err(TpmError::Invalid {
            what: "TPMS_ATTEST",
            reason: format!("{} trailing bytes", b.len() - r.at),
        });
    }
    Ok(Attest {
        magic,
        attest_type,
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        selection,
        pcr_digest,
    })
}

/// A quote signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    RsaSsa {
        hash: u16,
        sig: Vec<u8>,
    },
    RsaPss {
        hash: u16,
        sig: Vec<u8>,
    },
    Ecdsa {
        hash: u16,
        r: Vec<u8>,
        s: Vec<u8>,
    },
    /// `-f plain`: bare RSA signature bytes or a DER ECDSA-Sig-Value; the hash comes from `-g`.
    Plain {
        hash: u16,
        bytes: Vec<u8>,
    },
}

/// Decode a TPMT_SIGNATURE (tpm2_quote `-f tss`); anything else is taken as `-f plain` with
/// `plain_hash`, as tpm2_checkquote does.
pub fn parse_signature(b: &[u8], plain_hash: u16) -> Signature {
    let tss = (|| -> Result<Signature, TpmError> {
        let mut r = Be {
            b,
            at: 0,
            what: "TPMT_SIGNATURE",
        };
        let alg = r.u16()?;
        let hash = r.u16()?;
        let sig = match alg {
            TPM_ALG_RSASSA => Signature::RsaSsa {
                hash,
                sig: r.tpm2b()?.to_vec(),
            },
            TPM_ALG_RSAPSS => Signature::RsaPss {
                hash,
                sig: r.tpm2b()?.to_vec(),
            },
            TPM_ALG_ECDSA => {
                let rr = r.tpm2b()?.to_vec();
                let ss = r.tpm2b()?.to_vec();
                Signature::Ecdsa { hash, r: rr, s: ss }
            }
            other => {
                return Err(TpmError::Invalid {
                    what: "TPMT_SIGNATURE",
                    reason: format!("algorithm {other:#06x}"),
                })
            }
        };
        if r.at != b.len() {
            return Err(TpmError::Invalid {
                what: "TPMT_SIGNATURE",
                reason: "trailing bytes".into(),
            });
        }
        Ok(sig)
    })();
    tss.unwrap_or(Signature::Plain {
        hash: plain_hash,
        bytes: b.to_vec(),
    })
}

fn digest_len(alg: u16) -> Option<usize> {
    match alg {
        TPM_ALG_SHA1 => Some(20),
        TPM_ALG_SHA256 => Some(32),
        TPM_ALG_SHA384 => Some(48),
        TPM_ALG_SHA512 => Some(64),
        _ => None,
    }
}

fn hash(alg: u16, data: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        TPM_ALG_SHA1 => {
            use sha1::Digest as _;
            sha1::Sha1::digest(data).to_vec()
        }
        TPM_ALG_SHA256 => Sha256::digest(data).to_vec(),
        TPM_ALG_SHA384 => Sha384::digest(data).to_vec(),
        TPM_ALG_SHA512 => Sha512::digest(data).to_vec(),
        _ => return None,
    })
}

/// PCR values per bank and index, in selection order.
pub type PcrValues = Vec<(u16, u32, Vec<u8>)>;

/// Decode a tpm2_quote `-o` file: serialized (the default), marshaled, or values (then
/// `selection` from the TPMS_ATTEST says what they are).
pub fn parse_pcrs(b: &[u8], selection: &Selection) -> Result<PcrValues, TpmError> {
    if let Ok(v) = parse_serialized(b) {
        return Ok(v);
    }
    // values: the digests concatenated in selection order.
    let mut out = Vec::new();
    let mut at = 0;
    for (alg, pcrs) in selection {
        let n = digest_len(*alg).ok_or(TpmError::Invalid {
            what: "PCR file",
            reason: format!("unknown hash {alg:#06x}"),
        })?;
        for p in pcrs {
            let v = b.get(at..at + n).ok_or(TpmError::Invalid {
                what: "PCR file",
                reason:
                    "neither tpm2-tools serialized format nor values matching the quote's selection"
                        .into(),
            })?;
            out.push((*alg, *p, v.to_vec()));
            at += n;
        }
    }
    if at != b.len() {
        return Err(TpmError::Invalid {
            what: "PCR file",
            reason:
                "neither tpm2-tools serialized format nor values matching the quote's selection"
                    .into(),
        });
    }
    Ok(out)
}

/// tpm2-tools "serialized": TPML_PCR_SELECTION (132 B, LE) ‖ u32 n (LE) ‖ n × TPML_DIGEST
/// (532 B: u32 count + 8 × {u16 size, 64 B}).
fn parse_serialized(b: &[u8]) -> Result<PcrValues, TpmError> {
    let bad = |reason: &str| TpmError::Invalid {
        what: "PCR file (serialized)",
        reason: reason.into(),
    };
    if b.len() < 136 || !(b.len() - 136).is_multiple_of(532) {
        return Err(bad("size is not 136 + 532 n"));
    }
    let le32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let count = le32(0) as usize;
    if count > 16 {
        return Err(bad("more than 16 banks"));
    }
    let mut selection = Vec::new();
    for i in 0..count {
        let at = 4 + i * 8;
        let alg = u16::from_le_bytes([b[at], b[at + 1]]);
        let n = (b[at + 2] as usize).min(4);
        selection.push((alg, bits_to_pcrs(&b[at + 3..at + 3 + n])));
    }
    let chunks = le32(132) as usize;
    if 136 + chunks * 532 != b.len() {
        return Err(bad("chunk count does not match the size"));
    }
    let mut digests = Vec::new();
    for c in 0..chunks {
        let base = 136 + c * 532;
        let n = le32(base) as usize;
        if n > 8 {
            return Err(bad("more than 8 digests in a chunk"));
        }
        for k in 0..n {
            let at = base + 4 + k * 66;
            let size = u16::from_le_bytes([b[at], b[at + 1]]) as usize;
            if size > 64 {
                return Err(bad("digest larger than 64 bytes"));
            }
            digests.push(b[at + 2..at + 2 + size].to_vec());
        }
    }
    let mut out = Vec::new();
    let mut it = digests.into_iter();
    for (alg, pcrs) in selection {
        for p in pcrs {
            let d = it
                .next()
                .ok_or_else(|| bad("fewer digests than selected PCRs"))?;
            if Some(d.len()) != digest_len(alg) {
                return Err(bad("digest size does not match its bank"));
            }
            out.push((alg, p, d));
        }
    }
    if it.next().is_some() {
        return Err(bad("more digests than selected PCRs"));
    }
    Ok(out)
}

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
fn rsa_ok(
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

fn verify_signature(ak: &AkPublic, msg: &[u8], sig: &Signature) -> Result<String, String> {
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

enum EcSig {
    Rs(Vec<u8>, Vec<u8>),
    Der(Vec<u8>),
}

fn ecdsa_parts(s: &Signature) -> Result<(u16, EcSig), String> {
    match s {
        Signature::Ecdsa { hash, r, s } => Ok((*hash, EcSig::Rs(r.clone(), s.clone()))),
        Signature::Plain { hash, bytes } => Ok((*hash, EcSig::Der(bytes.clone()))),
        _ => Err("not an ECDSA signature".into()),
    }
}

fn pad<const N: usize>(
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

/// Expected PCR values (e.g. from measurements.json): SHA-256 bank index → value.
pub type ExpectedPcrs = Vec<(u32, Vec<u8>)>;

/// Verify a quote as tpm2_checkquote does, plus expected PCR values. Every check is listed.
pub fn verify(
    ak: &[u8],
    message: &[u8],
    signature: &[u8],
    pcrs: &[u8],
    qualification: &[u8],
    plain_hash: u16,
    expected: &ExpectedPcrs,
) -> Verdict {
    verify_quote(
        ak,
        message,
        signature,
        pcrs,
        qualification,
        plain_hash,
        expected,
    )
    .0
}

/// [`verify`], also returning the quoted PCR values (decoded once, when they decoded and
/// matched the quote's digest; the verdict says whether every check passed).
pub fn verify_quote(
    ak: &[u8],
    message: &[u8],
    signature: &[u8],
    pcrs: &[u8],
    qualification: &[u8],
    plain_hash: u16,
    expected: &ExpectedPcrs,
) -> (Verdict, Option<PcrValues>) {
    let mut v = Verdict::default();
    let attest = match parse_attest(message) {
        Ok(a) => {
            v.push(
                "attest.decode",
                true,
                format!("TPM_ST_ATTEST_QUOTE, {} bank(s)", a.selection.len()),
            );
            a
        }
        Err(e) => {
            v.push("attest.decode", false, e.to_string());
            return (v, None);
        }
    };
    v.push(
        "attest.magic",
        attest.magic == TPM_GENERATED_VALUE,
        format!("{:#010x} (TPM_GENERATED_VALUE is 0xff544347)", attest.magic),
    );
    let ak = match parse_ak(ak) {
        Ok(k) => k,
        Err(e) => {
            v.push("ak.decode", false, e.to_string());
            return (v, None);
        }
    };
    let sig = parse_signature(signature, plain_hash);
    match verify_signature(&ak, message, &sig) {
        Ok(d) => v.push("signature", true, d),
        Err(e) => v.push("signature", false, e),
    };
    v.push(
        "qualifying_data",
        attest.extra_data == qualification,
        format!(
            "extraData {} vs expected {}",
            hex::encode(&attest.extra_data),
            hex::encode(qualification)
        ),
    );
    let values = match parse_pcrs(pcrs, &attest.selection) {
        Ok(p) => p,
        Err(e) => {
            v.push("pcrs.decode", false, e.to_string());
            return (v, None);
        }
    };
    let file_selection: Selection = {
        let mut s: Selection = Vec::new();
        for (alg, idx, _) in &values {
            match s.iter_mut().find(|(a, _)| a == alg) {
                Some((_, v)) => v.push(*idx),
                None => s.push((*alg, vec![*idx])),
            }
        }
        s
    };
    let quoted: Selection = attest
        .selection
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .cloned()
        .collect();
    v.push(
        "pcrs.selection",
        file_selection == quoted,
        format!("quoted {quoted:?}, file {file_selection:?}"),
    );
    let hash_alg = match &sig {
        Signature::RsaSsa { hash, .. }
        | Signature::RsaPss { hash, .. }
        | Signature::Ecdsa { hash, .. }
        | Signature::Plain { hash, .. } => *hash,
    };
    let concat: Vec<u8> = values.iter().flat_map(|(_, _, d)| d.clone()).collect();
    let digest = hash(hash_alg, &concat).unwrap_or_default();
    v.push(
        "pcrs.digest",
        digest == attest.pcr_digest,
        format!(
            "H(PCR values) {} vs quoted pcrDigest {}",
            hex::encode(&digest),
            hex::encode(&attest.pcr_digest)
        ),
    );
    for (idx, want) in expected {
        let got = values
            .iter()
            .find(|(a, i, _)| *a == TPM_ALG_SHA256 && i == idx)
            .map(|(_, _, d)| d.clone());
        v.push(
            &format!("pcr.{idx}"),
            got.as_deref() == Some(want.as_slice()),
            format!(
                "quoted {} vs reference {}",
                got.map(|g| hex::encode(&g))
                    .unwrap_or_else(|| "not quoted".into()),
                hex::encode(want)
            ),
        );
    }
    (v, Some(values))
}

/// An AK from its TPM2B_PUBLIC (tpm2_createak -u; TPM2 Part 2 §12.2.5 TPMT_PUBLIC): RSA with
/// any exponent, or ECC on NIST P-256/P-384. Returns the key and its TPM name
/// (nameAlg ‖ H(TPMT_PUBLIC)), which credential activation binds.
pub fn parse_ak_tpm2b(b: &[u8]) -> Result<(AkPublic, Vec<u8>), TpmError> {
    let bad = |r: &str| TpmError::Invalid {
        what: "AK TPM2B_PUBLIC",
        reason: r.to_string(),
    };
    let mut c = Cursor { b, pos: 0 };
    let size = c.u16().ok_or_else(|| bad("truncated size"))? as usize;
    if size + 2 != b.len() {
        return Err(bad("size field does not match the data"));
    }
    let body = &b[2..];
    let ty = c.u16().ok_or_else(|| bad("truncated type"))?;
    let name_alg = c.u16().ok_or_else(|| bad("truncated nameAlg"))?;
    c.take(4).ok_or_else(|| bad("truncated objectAttributes"))?;
    let pol = c.u16().ok_or_else(|| bad("truncated authPolicy"))? as usize;
    c.take(pol).ok_or_else(|| bad("truncated authPolicy"))?;
    // symmetric: TPM_ALG_NULL (0x0010) or alg + keyBits + mode
    if c.u16().ok_or_else(|| bad("truncated symmetric"))? != 0x0010 {
        c.take(4).ok_or_else(|| bad("truncated symmetric"))?;
    }
    // scheme: TPM_ALG_NULL or scheme + hashAlg
    if c.u16().ok_or_else(|| bad("truncated scheme"))? != 0x0010 {
        c.take(2).ok_or_else(|| bad("truncated scheme"))?;
    }
    let key = match ty {
        0x0001 => {
            c.u16().ok_or_else(|| bad("truncated keyBits"))?;
            let e = c.u32().ok_or_else(|| bad("truncated exponent"))?;
            let e = if e == 0 { 65537 } else { e };
            let n_len = c.u16().ok_or_else(|| bad("truncated modulus"))? as usize;
            let n = c.take(n_len).ok_or_else(|| bad("truncated modulus"))?;
            AkPublic::Rsa(
                rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(e))
                    .map_err(|e| bad(&e.to_string()))?,
            )
        }
        0x0023 => {
            let curve = c.u16().ok_or_else(|| bad("truncated curveID"))?;
            if c.u16().ok_or_else(|| bad("truncated kdf"))? != 0x0010 {
                c.take(2).ok_or_else(|| bad("truncated kdf"))?;
            }
            let xl = c.u16().ok_or_else(|| bad("truncated x"))? as usize;
            let x = c.take(xl).ok_or_else(|| bad("truncated x"))?.to_vec();
            let yl = c.u16().ok_or_else(|| bad("truncated y"))? as usize;
            let y = c.take(yl).ok_or_else(|| bad("truncated y"))?.to_vec();
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            match curve {
                0x0003 => AkPublic::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| bad("not a P-256 point"))?,
                ),
                0x0004 => AkPublic::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| bad("not a P-384 point"))?,
                ),
                other => return Err(bad(&format!("curve {other:#06x} (only P-256/P-384)"))),
            }
        }
        other => return Err(bad(&format!("type {other:#06x} (only RSA and ECC)"))),
    };
    if c.pos != b.len() {
        return Err(bad("trailing bytes"));
    }
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

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes(s.try_into().expect("4")))
    }
}
