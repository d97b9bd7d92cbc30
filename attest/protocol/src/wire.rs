//! JSON messages of the key-release service's HTTP API (docs/protocol.md). Binary fields are
//! standard base64, digests and nonces lowercase hex. Every message rejects unknown fields.

use serde::{Deserialize, Serialize};

/// The TEE platforms the service knows (closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tee {
    /// TPM 2.0 quote (QEMU + swtpm, or any TPM whose EK/AK the service trusts).
    Tpm,
    /// AMD SEV-SNP attestation report + VCEK.
    Snp,
    /// Intel TDX quote (collateral on the service side).
    Tdx,
    /// Azure SEV-SNP CVM: HCL report + VCEK + vTPM quote (Trustee az-snp-vtpm evidence).
    AzSnpVtpm,
    /// Azure TDX CVM: HCL report + TD quote (from IMDS) + vTPM quote (Trustee az-tdx-vtpm).
    AzTdxVtpm,
    /// AWS Nitro Enclave: an NSM attestation document (COSE_Sign1) with the binding in
    /// `user_data`.
    Nitro,
    /// Intel SGX enclave: a DCAP quote (collateral on the service side) with the binding in
    /// REPORTDATA; judged by the policy's `sgx` identity (dcr builds no SGX enclaves).
    Sgx,
}

impl Tee {
    pub fn as_str(&self) -> &'static str {
        match self {
            Tee::Tpm => "tpm",
            Tee::Snp => "snp",
            Tee::Tdx => "tdx",
            Tee::AzSnpVtpm => "az-snp-vtpm",
            Tee::AzTdxVtpm => "az-tdx-vtpm",
            Tee::Nitro => "nitro",
            Tee::Sgx => "sgx",
        }
    }
}

/// POST /v1/challenge
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    pub tee: Tee,
    /// TPM only, for an AK anchored by its EK: the service answers with a credential
    /// (TPM2_MakeCredential) that only this TPM can activate for this AK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmIdentity>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TpmIdentity {
    /// EK public area (TPM2B_PUBLIC, as tpm2_createek -u writes it), base64.
    pub ek_public: String,
    /// EK certificate (DER, NV index 0x01c00002), base64.
    pub ek_cert: String,
    /// AK public area (TPM2B_PUBLIC, tpm2_createak -u), base64.
    pub ak_public: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub session_id: String,
    /// 32 random bytes, hex; single use.
    pub nonce: String,
    /// Unix seconds after which the nonce is refused.
    pub expires_at: u64,
    /// tpm2-tools credential file (base64), when `tpm` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// POST /v1/attest
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    pub session_id: String,
    pub tee: Tee,
    /// The TEE's ephemeral HPKE key, `x25519:<hex>`.
    pub hpke_public_key: String,
    /// The TEE's ephemeral result-signing key, `ed25519:<hex>` (bound into the evidence; the
    /// signed release vouches for it, and results carry its signature).
    pub result_key: String,
    /// SHA-256 of the canonical contract, hex.
    pub contract_digest: String,
    /// Platform evidence; its shape follows `tee` ([`TpmEvidence`], [`SnpEvidence`], …):
    /// JSON at this edge, typed by [`Evidence::from_wire`] once the session is checked. The
    /// release's `evidence_digest` is SHA-256 of its canonical JSON.
    pub evidence: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TpmEvidence {
    /// TPMS_ATTEST (tpm2_quote -m), base64.
    pub message: String,
    /// TPMT_SIGNATURE (tpm2_quote -s, tss format), base64.
    pub signature: String,
    /// The quoted PCR values, concatenated in selection order (tpm2_quote -o -F values), base64.
    pub pcrs: String,
    /// AK: TPM2B_PUBLIC or PEM SubjectPublicKeyInfo, base64.
    pub ak_public: String,
    /// The secret recovered by TPM2_ActivateCredential from the challenge's credential, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnpEvidence {
    /// ATTESTATION_REPORT (1184 bytes), base64.
    pub report: String,
    /// VCEK or VLEK certificate (DER or PEM), base64.
    pub vcek: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TdxEvidence {
    /// Quote v4/v5, base64.
    pub quote: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NitroEvidence {
    /// The NSM's attestation document (COSE_Sign1, CBOR) as returned, base64.
    pub document: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SgxEvidence {
    /// DCAP quote (v3, or v4/v5 with an SGX body), base64.
    pub quote: String,
}

/// Trustee's vTPM quote section of Azure evidence (hex fields).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VtpmQuote {
    /// TPMT_SIGNATURE, hex.
    pub signature: String,
    /// TPMS_ATTEST, hex.
    pub message: String,
    /// SHA-256 PCRs 0..23, hex each.
    pub pcrs: Vec<String>,
}

/// Trustee writes the evidence version as a number or a string.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum EvidenceVersion {
    Number(u64),
    Text(String),
}

impl EvidenceVersion {
    /// The version as a string ("1", "2", …).
    pub fn text(&self) -> String {
        match self {
            EvidenceVersion::Number(n) => n.to_string(),
            EvidenceVersion::Text(s) => s.clone(),
        }
    }
}

/// Azure SEV-SNP CVM evidence in Trustee's az-snp-vtpm format (versions 1 and 2). Unknown
/// fields are ignored, as Trustee's own reader does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AzSnpVtpmEvidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<EvidenceVersion>,
    pub tpm_quote: VtpmQuote,
    /// The HCL report (vTPM NV index 0x01400001), base64url.
    pub hcl_report: String,
    /// VCEK (DER), base64url.
    pub vcek: String,
}

/// Azure TDX CVM evidence in Trustee's az-tdx-vtpm format (version 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AzTdxVtpmEvidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<EvidenceVersion>,
    pub tpm_quote: VtpmQuote,
    /// The HCL report (with a TDREPORT), base64url.
    pub hcl_report: String,
    /// The TD quote Azure's IMDS made of that TDREPORT, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub td_quote: Option<String>,
}

/// Platform evidence, typed by its `tee`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    Tpm(TpmEvidence),
    Snp(SnpEvidence),
    Tdx(TdxEvidence),
    AzSnpVtpm(AzSnpVtpmEvidence),
    AzTdxVtpm(AzTdxVtpmEvidence),
    Nitro(NitroEvidence),
    Sgx(SgxEvidence),
}

impl Evidence {
    /// The evidence of an [`AttestRequest`] as its `tee` says it is shaped. The request keeps
    /// the evidence as JSON until the service has checked the session (so a replayed or
    /// unknown session is refused as such whatever the evidence); this is where it becomes
    /// typed, once.
    pub fn from_wire(tee: Tee, v: &serde_json::Value) -> Result<Evidence, serde_json::Error> {
        use serde::de::Deserialize as _;
        Ok(match tee {
            Tee::Tpm => Evidence::Tpm(TpmEvidence::deserialize(v)?),
            Tee::Snp => Evidence::Snp(SnpEvidence::deserialize(v)?),
            Tee::Tdx => Evidence::Tdx(TdxEvidence::deserialize(v)?),
            Tee::AzSnpVtpm => Evidence::AzSnpVtpm(AzSnpVtpmEvidence::deserialize(v)?),
            Tee::AzTdxVtpm => Evidence::AzTdxVtpm(AzTdxVtpmEvidence::deserialize(v)?),
            Tee::Nitro => Evidence::Nitro(NitroEvidence::deserialize(v)?),
            Tee::Sgx => Evidence::Sgx(SgxEvidence::deserialize(v)?),
        })
    }

    /// The JSON of this evidence as an [`AttestRequest`] carries it.
    pub fn to_wire(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Evidence::Tpm(e) => serde_json::to_value(e),
            Evidence::Snp(e) => serde_json::to_value(e),
            Evidence::Tdx(e) => serde_json::to_value(e),
            Evidence::AzSnpVtpm(e) => serde_json::to_value(e),
            Evidence::AzTdxVtpm(e) => serde_json::to_value(e),
            Evidence::Nitro(e) => serde_json::to_value(e),
            Evidence::Sgx(e) => serde_json::to_value(e),
        }
    }

    pub fn tee(&self) -> Tee {
        match self {
            Evidence::Tpm(_) => Tee::Tpm,
            Evidence::Snp(_) => Tee::Snp,
            Evidence::Tdx(_) => Tee::Tdx,
            Evidence::AzSnpVtpm(_) => Tee::AzSnpVtpm,
            Evidence::AzTdxVtpm(_) => Tee::AzTdxVtpm,
            Evidence::Nitro(_) => Tee::Nitro,
            Evidence::Sgx(_) => Tee::Sgx,
        }
    }
}

/// The signed payload of a successful release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub session_id: String,
    /// SHA-256 of the canonical evidence JSON the decision was made on, hex.
    pub evidence_digest: String,
    pub contract_digest: String,
    pub hpke_public_key: String,
    /// The attested TEE's result-signing key (as in the request's evidence binding).
    pub result_key: String,
    pub issued_at: u64,
    pub keys: Vec<ReleasedKey>,
}

/// The `key_id` under which a [`Release`] carries the single-use output upload token (32
/// random bytes, HPKE-sealed like a DEK) instead of a dataset key: it authorizes exactly one
/// write of the contract's output blob (docs/protocol.md, "Release"). Key ids starting with
/// `dcr.` are reserved for the service, so no dataset key can take this name.
pub const UPLOAD_TOKEN_ID: &str = "dcr.upload-token";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleasedKey {
    pub key_id: String,
    /// HPKE encapsulated key, base64.
    pub enc: String,
    /// HPKE ciphertext of the 32-byte DEK, base64.
    pub ciphertext: String,
}

/// A DEK HPKE-wrapped to the service's registration key (info = register_info(key_id)).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Wrapped {
    pub enc: String,
    pub ciphertext: String,
}

/// Which evidence may receive a key (deny by default: every listed condition must hold).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// The contract digest the TEE must bind (hex).
    pub contract_digest: String,
    /// Platforms whose evidence may receive the key.
    pub platforms: Vec<Tee>,
    /// measurements.json of the image (dcr-build image): the per-platform predictions the
    /// evidence must match.
    pub reference: crate::measurements::Measurements,
    /// Release at most once (then the key is spent).
    pub single_use: bool,
    /// RFC 3339 UTC; no release after it.
    pub expires: String,
    /// The oldest SEV-SNP firmware a report may come from, per product (REPORTED_TCB, for
    /// `snp` and `az-snp-vtpm`); required when either is among the platforms. A report from
    /// a product the policy names no minimum for is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp_min_tcb: Option<SnpMinTcb>,
    /// The SGX enclave identity to release to; required when `sgx` is among the platforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgx: Option<SgxIdentity>,
}

/// An SGX enclave identity: MRENCLAVE (this exact enclave), or MRSIGNER with ISVPRODID and a
/// minimum ISVSVN (any enclave of this product its signer released at or after that SVN).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SgxIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrenclave: Option<crate::digest::Sha256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrsigner: Option<crate::digest::Sha256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isv_prod_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_isv_svn: Option<u16>,
}

impl SgxIdentity {
    /// Either MRENCLAVE alone, or MRSIGNER with ISVPRODID and a minimum ISVSVN.
    pub fn check(&self) -> Result<(), &'static str> {
        match (
            self.mrenclave.is_some(),
            self.mrsigner.is_some(),
            self.isv_prod_id.is_some(),
            self.min_isv_svn.is_some(),
        ) {
            (true, false, false, false) | (false, true, true, true) => Ok(()),
            _ => Err("name mrenclave, or mrsigner with isv_prod_id and min_isv_svn"),
        }
    }
}

/// Minimum REPORTED_TCB per AMD product (the TCB_VERSION layout differs between products).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnpMinTcb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milan: Option<TcbLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genoa: Option<TcbLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turin: Option<TcbLevel>,
}

/// SEV-SNP TCB_VERSION components (SEV-SNP ABI spec §2.2; `fmc` on Turin only).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcbLevel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

/// The minimum the parties' CLI registers for Milan unless told otherwise: SEV firmware
/// 1.55.29 with microcode SPL 219 (0xDB), the level Milan hosts patched in 2025 report
/// (bootloader 4, TEE 0, SNP 24, microcode 219; seen with snphost, virtee/snphost#125).
/// Genoa and Turin have no default: a party states theirs (`--snp-min-tcb genoa:…`), or
/// reports from them are refused.
pub const MILAN_MIN_TCB: TcbLevel = TcbLevel {
    fmc: None,
    bootloader: 4,
    tee: 0,
    snp: 24,
    microcode: 219,
};

/// A TCB level in the CLI's syntax that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TcbLevelError(String);

impl TcbLevel {
    /// `bl=N,tee=N,snp=N,ucode=N[,fmc=N]`.
    pub fn parse(s: &str) -> Result<TcbLevel, TcbLevelError> {
        Self::parse_text(s).map_err(TcbLevelError)
    }

    fn parse_text(s: &str) -> Result<TcbLevel, String> {
        let mut t = TcbLevel::default();
        let mut seen = [false; 4];
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let v: u8 = v.parse().map_err(|_| format!("{k}: {v:?} is not 0..255"))?;
            match k {
                "bl" => (t.bootloader, seen[0]) = (v, true),
                "tee" => (t.tee, seen[1]) = (v, true),
                "snp" => (t.snp, seen[2]) = (v, true),
                "ucode" => (t.microcode, seen[3]) = (v, true),
                "fmc" => t.fmc = Some(v),
                _ => return Err(format!("{k}: one of bl, tee, snp, ucode, fmc")),
            }
        }
        if seen.iter().any(|s| !s) {
            return Err("bl, tee, snp and ucode are all required".into());
        }
        Ok(t)
    }
}

/// POST /v1/keys (authenticated)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub key_id: String,
    /// The DEK, HPKE-wrapped to the registration key with `aad` = the policy binding
    /// (`release::policy_binding(key_id, owner, policy)`).
    pub wrapped_dek: Wrapped,
    pub policy: ReleasePolicy,
    /// The contract, as packed (canonical JSON text): its digest must be
    /// `policy.contract_digest`; the service checks the key id is a dataset key of it owned by
    /// the registering party, and keeps it to scope that contract's blobs.
    pub contract: String,
}

/// The payload of the service's answer to a registration, signed under
/// `release::RECEIPT_DOMAIN` with the service's signing key: the party checks every field
/// against what it sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistrationReceipt {
    pub key_id: String,
    /// The party the service registered the key for (the contract's owner of the dataset).
    pub owner: String,
    pub contract_digest: String,
    /// `release::policy_binding` of what was stored, hex.
    pub policy_binding: String,
    pub registered_at: u64,
}

/// What a released upload token may do (kept by the service beside the token's hash): write
/// exactly the contract's output blob, once, before `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UploadGrant {
    pub session_id: String,
    pub contract_digest: String,
    pub blob: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The attested TEE's result key (`ed25519:<hex>`, bound in its evidence): budget debits
    /// must be signed with it, so a stolen upload token cannot spend a budget. Absent in
    /// records written before debits existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
}

/// The service's public keys (service.pub.json, GET /v1/service).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    /// `ed25519:<hex>`: signs responses; pin it in the contract.
    pub signing_key: String,
    /// `x25519:<hex>`: parties wrap DEKs to it at registration.
    pub registration_key: String,
    /// The service's TLS certificate (DER, standard base64) when it has a TLS listener: the
    /// parties' client trusts exactly this certificate for `https://` service URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<String>,
}

/// Every error response: a stable code and a one-line message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// Answer to `POST /v1/contracts/{digest}/queries`: the stored query's id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueryReceipt {
    /// 32 lowercase hex digits; the result is the blob [`query_result_blob`]`(id)`.
    pub id: String,
    pub contract_digest: String,
    pub analysis: String,
    pub party: String,
}

/// One stored query, not yet answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    pub id: String,
    pub query: crate::analysis::Query,
}

/// `GET /v1/contracts/{digest}/queries`: the payload of the service's signed answer
/// (`release::Signed` under [`crate::release::QUERIES_DOMAIN`]), so that nobody between the
/// service and the TEE can add, alter or re-attribute a query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryList {
    pub contract_digest: String,
    pub queries: Vec<PendingQuery>,
}

/// The most queries a contract may have waiting.
pub const MAX_PENDING_QUERIES: usize = 64;

/// Whether `id` is a query id (32 lowercase hex digits).
pub fn query_id_ok(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The blob a query's sealed, signed result (or refusal) is written to.
pub fn query_result_blob(id: &str) -> String {
    format!("query-{id}.result")
}

/// The query id a result blob name is for, if it is one.
pub fn query_of_result_blob(name: &str) -> Option<&str> {
    name.strip_prefix("query-")
        .and_then(|r| r.strip_suffix(".result"))
        .filter(|id| query_id_ok(id))
}
