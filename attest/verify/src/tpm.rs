//! TPM 2.0 quotes: TPMS_ATTEST + TPMT_SIGNATURE + PCR values, in the files tpm2_quote writes
//! (`-m` message; `-s` in tss or plain format; `-o` in serialized, marshaled or values
//! format), checked
//! the way tpm2_checkquote checks them: signature by the AK (RSASSA, RSAPSS, ECDSA
//! P-256/P-384), TPM_GENERATED magic, quote type, qualifying data, PCR selection and PCR
//! digest. Layouts: TPM 2.0 Library Part 2 §10.12.12 (TPMS_ATTEST), §11.3.4 (TPMT_SIGNATURE),
//! §10.6.2 (TPML_PCR_SELECTION), §12.2.4 (TPMT_PUBLIC). The TPM structures (all big-endian)
//! are unmarshalled by `tpm2-protocol`; only tpm2-tools' "serialized" PCR file, a
//! little-endian dump of the tss2 C structs and no TPM wire format, is read here by hand.

use sha2::{Digest, Sha256, Sha384, Sha512};
use tpm2_protocol::{
    basic::{Tpm2b, TpmUint16, TpmUint32, TpmUint64},
    constant::TPM_MAX_COMMAND_SIZE,
    data::{
        Tpm2bData, Tpm2bDigest, Tpm2bName, TpmAlgId, TpmEccCurve, TpmSt, TpmaObject, TpmlDigest,
        TpmlPcrSelection, TpmsClockInfo, TpmtPublic, TpmtSignature, TpmuPublicId, TpmuPublicParms,
        TpmuSignature,
    },
    TpmUnmarshal, TpmUnmarshalTagged,
};

use crate::verdict::Verdict;

const TPM_GENERATED_VALUE: u32 = tpm2_protocol::constant::TPM_GENERATED_VALUE;
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;

/// Errors decoding TPM structures and files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    /// The input ends inside `field` (which starts at byte `at`).
    #[error("{what}: {field} (at byte {at}) is truncated")]
    Truncated {
        what: &'static str,
        field: &'static str,
        at: usize,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// A tpm2-protocol unmarshalling error as a [`TpmError`] naming the structure, the field and
/// the field's byte offset (tpm2-protocol's own offsets are relative to the innermost value).
fn wire_error(
    what: &'static str,
    field: &'static str,
    at: usize,
    e: tpm2_protocol::TpmError,
) -> TpmError {
    use tpm2_protocol::TpmError as W;
    let reason = match e {
        W::UnexpectedEnd { .. } => return TpmError::Truncated { what, field, at },
        W::TooManyBytes { limit, actual, .. } => {
            format!("{actual} bytes, more than the {limit} TPM 2.0 allows")
        }
        W::TooManyItems { limit, actual, .. } => {
            format!("{actual} entries, more than the {limit} TPM 2.0 allows")
        }
        W::VariantNotAvailable { value, .. } => {
            format!("unknown or unsupported value {value:#06x}")
        }
        W::InvalidBoolean { value, .. } => format!("{value} is not a TPMI_YES_NO (0 or 1)"),
        W::TrailingData { actual, .. } => format!("{actual} trailing bytes"),
        W::IntegerTooLarge { value, .. } => format!("value {value} too large"),
        other => other.to_string(),
    };
    TpmError::Invalid {
        what,
        reason: format!("{field} at byte {at}: {reason}"),
    }
}

/// The fields of one TPM structure, in order, each unmarshalled by tpm2-protocol's type for it
/// (field by field rather than as the whole structure so that an error names its field).
struct Fields<'a> {
    what: &'static str,
    /// The whole input (offsets in errors count from its start).
    all: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(what: &'static str, all: &'a [u8], rest: &'a [u8]) -> Self {
        Fields { what, all, rest }
    }
    fn at(&self) -> usize {
        self.all.len() - self.rest.len()
    }
    fn read<T: TpmUnmarshal>(&mut self, field: &'static str) -> Result<T, TpmError> {
        let at = self.at();
        let (v, rest) = T::unmarshal(self.rest).map_err(|e| wire_error(self.what, field, at, e))?;
        self.rest = rest;
        Ok(v)
    }
    fn read_tagged<Tag, T: TpmUnmarshalTagged<Tag>>(
        &mut self,
        tag: Tag,
        field: &'static str,
    ) -> Result<T, TpmError> {
        let at = self.at();
        let (v, rest) =
            T::unmarshal_tagged(tag, self.rest).map_err(|e| wire_error(self.what, field, at, e))?;
        self.rest = rest;
        Ok(v)
    }
    /// Nothing may follow the structure.
    fn finish(self) -> Result<(), TpmError> {
        if self.rest.is_empty() {
            return Ok(());
        }
        Err(TpmError::Invalid {
            what: self.what,
            reason: format!("{} trailing bytes", self.rest.len()),
        })
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

/// Decode a TPMS_ATTEST of type quote. The magic is returned, not checked (the verdict lists
/// it as its own check), which is why the fields are read one by one rather than with
/// `TpmsAttest::unmarshal` (that refuses any other magic before decoding the rest).
pub fn parse_attest(b: &[u8]) -> Result<Attest, TpmError> {
    let mut r = Fields::new("TPMS_ATTEST", b, b);
    let magic = r.read::<TpmUint32>("magic")?.value();
    let attest_type = r.read::<TpmSt>("type")?;
    let qualified_signer = r.read::<Tpm2bName>("qualifiedSigner")?.to_vec();
    let extra_data = r.read::<Tpm2bData>("extraData")?.to_vec();
    let clock_info = r.read::<TpmsClockInfo>("clockInfo")?;
    let firmware_version = r.read::<TpmUint64>("firmwareVersion")?.value();
    if attest_type != TpmSt::AttestQuote {
        return Err(TpmError::Invalid {
            what: "TPMS_ATTEST",
            reason: format!(
                "type {:#06x} is not TPM_ST_ATTEST_QUOTE",
                attest_type.value()
            ),
        });
    }
    // attested: TPMS_QUOTE_INFO.
    let pcr_select = r.read::<TpmlPcrSelection>("attested.pcrSelect")?;
    let pcr_digest = r.read::<Tpm2bDigest>("attested.pcrDigest")?.to_vec();
    r.finish()?;
    Ok(Attest {
        magic,
        attest_type: attest_type.value(),
        qualified_signer,
        extra_data,
        clock: clock_info.clock.value(),
        reset_count: clock_info.reset_count.value(),
        restart_count: clock_info.restart_count.value(),
        safe: u8::from(clock_info.safe.0),
        firmware_version,
        selection: pcr_select
            .iter()
            .map(|s| (s.hash.value(), bits_to_pcrs(&s.pcr_select)))
            .collect(),
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
    let tss = match TpmtSignature::unmarshal(b) {
        Ok((t, [])) => match t.signature {
            TpmuSignature::Rsassa(s) => Some(Signature::RsaSsa {
                hash: s.hash.value(),
                sig: s.sig.to_vec(),
            }),
            TpmuSignature::Rsapss(s) => Some(Signature::RsaPss {
                hash: s.hash.value(),
                sig: s.sig.to_vec(),
            }),
            TpmuSignature::Ecdsa(s) => Some(Signature::Ecdsa {
                hash: s.hash.value(),
                r: s.signature_r.to_vec(),
                s: s.signature_s.to_vec(),
            }),
            // ECDAA, SM2, EC-Schnorr, HMAC, NULL: no quote signature this verifier checks.
            _ => None,
        },
        // Not exactly one TPMT_SIGNATURE.
        _ => None,
    };
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
/// `selection` from the TPMS_ATTEST says what they are). A file is taken as serialized or
/// marshaled only if it decodes exactly as one, with one digest of its bank's size per
/// selected PCR.
pub fn parse_pcrs(b: &[u8], selection: &Selection) -> Result<PcrValues, TpmError> {
    if let Ok(v) = parse_serialized(b) {
        return Ok(v);
    }
    if let Ok(v) = parse_marshaled(b) {
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
                    "neither tpm2-tools serialized or marshaled format nor values matching the quote's selection"
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
                "neither tpm2-tools serialized or marshaled format nor values matching the quote's selection"
                    .into(),
        });
    }
    Ok(out)
}

/// tpm2-tools "serialized": TPML_PCR_SELECTION (132 B, LE) ‖ u32 n (LE) ‖ n × TPML_DIGEST
/// (532 B: u32 count + 8 × {u16 size, 64 B}).
///
/// Read by hand, not with tpm2-protocol: the file is `fwrite` of tss2's C structs (little-endian,
/// fixed-size arrays with their padding), not the marshalled big-endian TPM structures of the
/// same names, so no TPM unmarshaler can read it.
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
    pair(selection, digests, "PCR file (serialized)")
}

/// tpm2-tools "marshaled" (`-F marshaled`, tpm2-tools after 5.4): TPML_PCR_SELECTION ‖
/// UINT32 n ‖ n × TPML_DIGEST, marshalled TPM structures (big-endian, as tpm2_checkquote reads
/// them with Tss2_MU_*_Unmarshal), read with tpm2-protocol.
fn parse_marshaled(b: &[u8]) -> Result<PcrValues, TpmError> {
    const WHAT: &str = "PCR file (marshaled)";
    // tpm2-tools' tpm2_pcrs holds at most TPM2_MAX_PCRS (32) digest lists.
    const MAX_LISTS: u32 = 32;
    let mut r = Fields::new(WHAT, b, b);
    let selection = r.read::<TpmlPcrSelection>("TPML_PCR_SELECTION")?;
    let lists = r.read::<TpmUint32>("digest list count")?.value();
    if lists > MAX_LISTS {
        return Err(TpmError::Invalid {
            what: WHAT,
            reason: format!("{lists} digest lists, more than {MAX_LISTS}"),
        });
    }
    let mut digests = Vec::new();
    for _ in 0..lists {
        let list = r.read::<TpmlDigest>("TPML_DIGEST")?;
        digests.extend(list.iter().map(|d| d.to_vec()));
    }
    r.finish()?;
    let selection = selection
        .iter()
        .map(|s| (s.hash.value(), bits_to_pcrs(&s.pcr_select)))
        .collect();
    pair(selection, digests, WHAT)
}

/// The digests of a serialized or marshaled PCR file, in order, to the PCRs its selection
/// lists: one digest of the bank's size each, none left over.
fn pair(
    selection: Selection,
    digests: Vec<Vec<u8>>,
    what: &'static str,
) -> Result<PcrValues, TpmError> {
    let bad = |reason: &str| TpmError::Invalid {
        what,
        reason: reason.into(),
    };
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

/// Decode a TPM2B_PUBLIC (TPM2 Part 2 §12.2.5): the size must cover exactly the input, and its
/// TPMT_PUBLIC exactly the size. Returns the structure and the TPMT_PUBLIC bytes as received
/// (what a TPM name is computed over; never re-marshalled). `what` names the key in errors.
pub(crate) fn parse_tpm2b_public<'a>(
    b: &'a [u8],
    what: &'static str,
) -> Result<(TpmtPublic, &'a [u8]), TpmError> {
    let body = Tpm2b::<TPM_MAX_COMMAND_SIZE>::cast(b)
        .map_err(|e| match (e, TpmUint16::unmarshal(b)) {
            (_, Err(e)) => wire_error(what, "size", 0, e),
            (tpm2_protocol::TpmError::TooManyBytes { limit, actual, .. }, _) => TpmError::Invalid {
                what,
                reason: format!("size {actual} is more than the {limit} bytes TPM 2.0 allows"),
            },
            (_, Ok((size, rest))) => TpmError::Invalid {
                what,
                reason: format!(
                    "size field does not match the data ({} bytes declared, {} present)",
                    size.value(),
                    rest.len()
                ),
            },
        })?
        .data();
    let mut r = Fields::new(what, b, body);
    let object_type = r.read::<TpmAlgId>("type")?;
    let name_alg = r.read::<TpmAlgId>("nameAlg")?;
    let object_attributes = r.read::<TpmaObject>("objectAttributes")?;
    let auth_policy = r.read::<Tpm2bDigest>("authPolicy")?;
    let parameters = r.read_tagged::<_, TpmuPublicParms>(object_type, "parameters")?;
    let unique = r.read_tagged::<_, TpmuPublicId>(object_type, "unique")?;
    r.finish()?;
    Ok((
        TpmtPublic {
            object_type,
            name_alg,
            object_attributes,
            auth_policy,
            parameters,
            unique,
        },
        body,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn be16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    fn tpm2b(v: &mut Vec<u8>, data: &[u8]) {
        be16(v, data.len() as u16);
        v.extend_from_slice(data);
    }

    /// A TPMS_ATTEST of a quote over sha256:0,16 (Part 2 §10.12.12), built field by field.
    fn quote_attest() -> Vec<u8> {
        let mut v = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
        be16(&mut v, 0x8018); // TPM_ST_ATTEST_QUOTE
        let mut signer = vec![0x00, 0x0b];
        signer.extend_from_slice(&[0x5a; 32]);
        tpm2b(&mut v, &signer); // qualifiedSigner
        tpm2b(&mut v, b"nonce"); // extraData
        v.extend_from_slice(&7u64.to_be_bytes()); // clock
        v.extend_from_slice(&2u32.to_be_bytes()); // resetCount
        v.extend_from_slice(&1u32.to_be_bytes()); // restartCount
        v.push(1); // safe
        v.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes()); // firmwareVersion
        v.extend_from_slice(&1u32.to_be_bytes()); // pcrSelect.count
        be16(&mut v, TPM_ALG_SHA256);
        v.extend_from_slice(&[3, 0x01, 0x00, 0x01]); // sizeofSelect, PCRs 0 and 16
        tpm2b(&mut v, &[0xd1; 32]); // pcrDigest
        v
    }

    #[test]
    fn attest_decodes_every_field() {
        let a = parse_attest(&quote_attest()).unwrap();
        assert_eq!(a.magic, TPM_GENERATED_VALUE);
        assert_eq!(a.attest_type, 0x8018);
        assert_eq!(a.qualified_signer.len(), 34);
        assert_eq!(a.extra_data, b"nonce");
        assert_eq!((a.clock, a.reset_count, a.restart_count), (7, 2, 1));
        assert_eq!(a.safe, 1);
        assert_eq!(a.firmware_version, 0x0102_0304_0506_0708);
        assert_eq!(a.selection, vec![(TPM_ALG_SHA256, vec![0, 16])]);
        assert_eq!(a.pcr_digest, [0xd1; 32]);
        // Another magic still decodes: the verdict reports it as its own check.
        let mut m = quote_attest();
        m[0] = 0;
        assert_eq!(parse_attest(&m).unwrap().magic, 0x0054_4347);
    }

    #[test]
    fn truncated_or_trailing_attest_is_refused_naming_the_structure() {
        let b = quote_attest();
        for n in 0..b.len() {
            let e = parse_attest(&b[..n]).unwrap_err();
            assert!(
                matches!(
                    e,
                    TpmError::Truncated {
                        what: "TPMS_ATTEST",
                        ..
                    }
                ),
                "{n}: {e}"
            );
            assert!(e.to_string().starts_with("TPMS_ATTEST: "), "{e}");
        }
        // Cut inside extraData (a TPM2B of 5 bytes at 42): the field and its offset are named.
        assert_eq!(
            parse_attest(&b[..45]).unwrap_err().to_string(),
            "TPMS_ATTEST: extraData (at byte 42) is truncated"
        );
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            parse_attest(&long).unwrap_err().to_string(),
            "TPMS_ATTEST: 1 trailing bytes"
        );
        // Other types and malformed fields are named too.
        let mut other = b.clone();
        other[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert_eq!(
            parse_attest(&other).unwrap_err().to_string(),
            "TPMS_ATTEST: type 0x8017 is not TPM_ST_ATTEST_QUOTE"
        );
        let mut unsafe_flag = b.clone();
        unsafe_flag[b.len() - 34 - 4 - 2 - 4 - 8 - 1] = 2;
        let e = parse_attest(&unsafe_flag).unwrap_err().to_string();
        assert!(e.starts_with("TPMS_ATTEST: clockInfo at byte "), "{e}");
    }

    /// A TPM2B_PUBLIC of an ECC P-256 signing key (Part 2 §12.2.5), from a fixed private key.
    fn p256_tpm2b_public() -> (Vec<u8>, p256::ecdsa::VerifyingKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let vk = *sk.verifying_key();
        let point = vk.to_encoded_point(false);
        let mut t = Vec::new();
        be16(&mut t, 0x0023); // type: TPM_ALG_ECC
        be16(&mut t, TPM_ALG_SHA256); // nameAlg
        t.extend_from_slice(&0x0005_0072u32.to_be_bytes()); // objectAttributes
        tpm2b(&mut t, &[]); // authPolicy
        be16(&mut t, 0x0010); // symmetric: TPM_ALG_NULL
        be16(&mut t, 0x0018); // scheme: TPM_ALG_ECDSA
        be16(&mut t, TPM_ALG_SHA256); // its hashAlg
        be16(&mut t, 0x0003); // curveID: NIST P-256
        be16(&mut t, 0x0010); // kdf: TPM_ALG_NULL
        tpm2b(&mut t, point.x().unwrap()); // unique.x
        tpm2b(&mut t, point.y().unwrap()); // unique.y
        let mut b = Vec::new();
        tpm2b(&mut b, &t);
        (b, vk)
    }

    #[test]
    fn ak_tpm2b_public_decodes_and_is_named_over_the_bytes_received() {
        let (b, vk) = p256_tpm2b_public();
        let (k, name) = parse_ak_tpm2b(&b).unwrap();
        assert!(matches!(k, AkPublic::P256(got) if got == vk));
        let mut want = TPM_ALG_SHA256.to_be_bytes().to_vec();
        want.extend_from_slice(&Sha256::digest(&b[2..]));
        assert_eq!(name, want);
    }

    #[test]
    fn truncated_or_trailing_tpm2b_public_is_refused_naming_the_structure() {
        let (b, _) = p256_tpm2b_public();
        for n in 0..b.len() {
            let e = parse_ak_tpm2b(&b[..n]).unwrap_err().to_string();
            assert!(e.starts_with("AK TPM2B_PUBLIC: "), "{n}: {e}");
        }
        // The size no longer covers the data.
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            parse_ak_tpm2b(&long).unwrap_err().to_string(),
            "AK TPM2B_PUBLIC: size field does not match the data (88 bytes declared, 89 present)"
        );
        // The size covers a byte after the TPMT_PUBLIC.
        let mut inner = long.clone();
        inner[..2].copy_from_slice(&((b.len() - 1) as u16).to_be_bytes());
        assert_eq!(
            parse_ak_tpm2b(&inner).unwrap_err().to_string(),
            "AK TPM2B_PUBLIC: 1 trailing bytes"
        );
        // A TPMT_PUBLIC cut short inside a consistent size: the field is named.
        let mut short = b[..b.len() - 1].to_vec();
        let size = (short.len() - 2) as u16;
        short[..2].copy_from_slice(&size.to_be_bytes());
        assert_eq!(
            parse_ak_tpm2b(&short).unwrap_err().to_string(),
            "AK TPM2B_PUBLIC: unique (at byte 22) is truncated"
        );
        // The EK parser shares the decoding (and then wants an RSA storage key).
        let e = crate::credential::parse_ek_public(&b[..b.len() - 3]).unwrap_err();
        assert!(
            e.to_string().starts_with("EK public: TPM2B_PUBLIC: "),
            "{e}"
        );
        assert_eq!(
            crate::credential::parse_ek_public(&b)
                .unwrap_err()
                .to_string(),
            "EK public: not an RSA key (only RSA EKs are supported)"
        );
    }

    #[test]
    fn marshaled_pcr_files_decode_and_malformed_ones_are_named() {
        // sha1:0 + sha256:3,9 and their values in two TPML_DIGEST lists.
        let mut b = 2u32.to_be_bytes().to_vec();
        be16(&mut b, TPM_ALG_SHA1);
        b.extend_from_slice(&[3, 0x01, 0x00, 0x00]);
        be16(&mut b, TPM_ALG_SHA256);
        b.extend_from_slice(&[3, 0x08, 0x02, 0x00]);
        b.extend_from_slice(&2u32.to_be_bytes()); // two TPML_DIGEST
        b.extend_from_slice(&2u32.to_be_bytes());
        tpm2b(&mut b, &[0x11; 20]);
        tpm2b(&mut b, &[0x33; 32]);
        b.extend_from_slice(&1u32.to_be_bytes());
        tpm2b(&mut b, &[0x99; 32]);
        let want = vec![
            (TPM_ALG_SHA1, 0, vec![0x11; 20]),
            (TPM_ALG_SHA256, 3, vec![0x33; 32]),
            (TPM_ALG_SHA256, 9, vec![0x99; 32]),
        ];
        assert_eq!(parse_pcrs(&b, &Vec::new()).unwrap(), want);
        assert_eq!(parse_marshaled(&b).unwrap(), want);
        let e = |b: &[u8]| parse_marshaled(b).unwrap_err().to_string();
        assert_eq!(
            e(&b[..b.len() - 1]),
            "PCR file (marshaled): TPML_DIGEST (at byte 80) is truncated"
        );
        assert_eq!(
            e(&[&b[..], &[0]].concat()),
            "PCR file (marshaled): 1 trailing bytes"
        );
        // A SHA-1 digest in the SHA-256 bank.
        let mut wrong = b.clone();
        wrong[46..48].copy_from_slice(&20u16.to_be_bytes());
        wrong.drain(48 + 20..48 + 32);
        assert_eq!(
            e(&wrong),
            "PCR file (marshaled): digest size does not match its bank"
        );
        // Neither format nor values of the quote's selection.
        let sel = vec![(TPM_ALG_SHA256, vec![0])];
        assert!(parse_pcrs(&b[..b.len() - 1], &sel)
            .unwrap_err()
            .to_string()
            .contains("neither tpm2-tools serialized or marshaled format nor values"));
    }

    #[test]
    fn tss_signatures_decode_and_anything_else_is_plain() {
        let mut ecdsa = Vec::new();
        be16(&mut ecdsa, 0x0018);
        be16(&mut ecdsa, TPM_ALG_SHA256);
        tpm2b(&mut ecdsa, &[1; 32]);
        tpm2b(&mut ecdsa, &[2; 32]);
        assert_eq!(
            parse_signature(&ecdsa, TPM_ALG_SHA384),
            Signature::Ecdsa {
                hash: TPM_ALG_SHA256,
                r: vec![1; 32],
                s: vec![2; 32]
            }
        );
        let mut rsapss = Vec::new();
        be16(&mut rsapss, 0x0016);
        be16(&mut rsapss, TPM_ALG_SHA384);
        tpm2b(&mut rsapss, &[3; 256]);
        assert_eq!(
            parse_signature(&rsapss, TPM_ALG_SHA256),
            Signature::RsaPss {
                hash: TPM_ALG_SHA384,
                sig: vec![3; 256]
            }
        );
        // Trailing bytes, truncation or an HMAC signature: the bytes are a plain signature.
        for b in [
            [ecdsa.as_slice(), &[0]].concat(),
            ecdsa[..ecdsa.len() - 1].to_vec(),
            [&[0x00, 0x05, 0x00, 0x0b][..], &[0xaa; 32]].concat(),
        ] {
            assert_eq!(
                parse_signature(&b, TPM_ALG_SHA256),
                Signature::Plain {
                    hash: TPM_ALG_SHA256,
                    bytes: b.clone()
                }
            );
        }
    }
}
