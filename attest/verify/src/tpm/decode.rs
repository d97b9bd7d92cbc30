//! TPM structures and tpm2-tools files decoded: TPMS_ATTEST, TPMT_SIGNATURE, PCR selections
//! and values, TPM2B_PUBLIC.

use sha2::{Digest, Sha256, Sha384, Sha512};
use tpm2_protocol::{
    basic::{Tpm2b, TpmUint16, TpmUint32, TpmUint64},
    constant::TPM_MAX_COMMAND_SIZE,
    data::{
        Tpm2bData, Tpm2bDigest, Tpm2bName, TpmAlgId, TpmSt, TpmaObject, TpmlDigest,
        TpmlPcrSelection, TpmsClockInfo, TpmtPublic, TpmtSignature, TpmuPublicId, TpmuPublicParms,
        TpmuSignature,
    },
    TpmUnmarshal, TpmUnmarshalTagged,
};

use super::*;

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
pub(super) fn wire_error(
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
pub(super) struct Fields<'a> {
    what: &'static str,
    /// The whole input (offsets in errors count from its start).
    all: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(super) fn new(what: &'static str, all: &'a [u8], rest: &'a [u8]) -> Self {
        Fields { what, all, rest }
    }
    pub(super) fn at(&self) -> usize {
        self.all.len() - self.rest.len()
    }
    pub(super) fn read<T: TpmUnmarshal>(&mut self, field: &'static str) -> Result<T, TpmError> {
        let at = self.at();
        let (v, rest) = T::unmarshal(self.rest).map_err(|e| wire_error(self.what, field, at, e))?;
        self.rest = rest;
        Ok(v)
    }
    pub(super) fn read_tagged<Tag, T: TpmUnmarshalTagged<Tag>>(
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
    pub(super) fn finish(self) -> Result<(), TpmError> {
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

pub(super) fn bits_to_pcrs(bits: &[u8]) -> Vec<u32> {
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

pub(super) fn digest_len(alg: u16) -> Option<usize> {
    match alg {
        TPM_ALG_SHA1 => Some(20),
        TPM_ALG_SHA256 => Some(32),
        TPM_ALG_SHA384 => Some(48),
        TPM_ALG_SHA512 => Some(64),
        _ => None,
    }
}

pub(super) fn hash(alg: u16, data: &[u8]) -> Option<Vec<u8>> {
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
pub(super) fn parse_serialized(b: &[u8]) -> Result<PcrValues, TpmError> {
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
pub(super) fn parse_marshaled(b: &[u8]) -> Result<PcrValues, TpmError> {
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
pub(super) fn pair(
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
