//! The few TPM 2.0 commands guest-init sends through the kernel's resource manager
//! (`/dev/tpmrm0`), marshalled and their responses unmarshalled by tpm2-protocol's command and
//! response types (the verifier decodes the same structures with the same crate). TPM 2.0
//! Library Part 3: PCR_Extend §22.2, CreatePrimary §24.1, NV_ReadPublic §31.6, NV_Read §31.13,
//! StartAuthSession §11.1, PolicySecret §23.4, ActivateCredential §12.5, Quote §18.4; every
//! authorization is the empty password session TPM_RS_PW (Part 1 §18.6) or, for the EK, a
//! policy session.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};

use tpm2_protocol::{
    basic::{TpmHandle, TpmUint16, TpmUint32},
    constant::TPM_MAX_COMMAND_SIZE,
    data::{
        Tpm2bData, Tpm2bDigest, Tpm2bEccParameter, Tpm2bEncryptedSecret, Tpm2bIdObject, Tpm2bNonce,
        Tpm2bPublic, Tpm2bPublicKeyRsa, TpmAlgId, TpmEccCurve, TpmSe, TpmSt, TpmaObject,
        TpmlDigestValues, TpmlPcrSelection, TpmsAuthCommand, TpmsEccParms, TpmsEccPoint,
        TpmsPcrSelect, TpmsPcrSelection, TpmsRsaParms, TpmsSchemeHash, TpmtEccScheme, TpmtHa,
        TpmtPublic, TpmtSigScheme, TpmtSymDefObject, TpmuAsymScheme, TpmuHa, TpmuPublicId,
        TpmuPublicParms, TpmuSymKeyBits, TpmuSymMode,
    },
    frame::{
        tpm_marshal_command, TpmActivateCredentialCommand, TpmActivateCredentialResponse,
        TpmCreatePrimaryCommand, TpmCreatePrimaryResponse, TpmFrame, TpmNvReadCommand,
        TpmNvReadPublicCommand, TpmNvReadPublicResponse, TpmNvReadResponse, TpmPcrExtendCommand,
        TpmPcrExtendResponse, TpmPolicySecretCommand, TpmPolicySecretResponse, TpmQuoteCommand,
        TpmQuoteResponse, TpmResponse, TpmStartAuthSessionCommand, TpmStartAuthSessionResponse,
        TpmUnmarshalBody,
    },
    TpmMarshal, TpmSized, TpmUnmarshal, TpmWriter,
};

const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
/// The EK certificate (RSA 2048) NV index (TCG EK Credential Profile §2.2.1.5).
pub const EK_CERT_NV_INDEX: u32 = 0x01c0_0002;

/// A tpm2-protocol (un)marshalling error as an `io::Error` naming the command.
fn wire(what: &str, e: tpm2_protocol::TpmError) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// `command` as a TPM command frame, with one empty password (or policy) session per handle
/// in `sessions` (TPM_ST_SESSIONS), or none (TPM_ST_NO_SESSIONS).
fn marshal<C: TpmFrame>(command: &C, sessions: &[u32]) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    let auths: Vec<TpmsAuthCommand> = sessions
        .iter()
        .map(|h| TpmsAuthCommand {
            session_handle: TpmHandle::new(*h),
            ..TpmsAuthCommand::default()
        })
        .collect();
    let tag = if auths.is_empty() {
        TpmSt::NoSessions
    } else {
        TpmSt::Sessions
    };
    let mut buf = vec![0u8; TPM_MAX_COMMAND_SIZE];
    let mut w = TpmWriter::new(&mut buf);
    tpm_marshal_command(command, tag, &auths, &mut w)?;
    let n = w.len();
    buf.truncate(n);
    Ok(buf)
}

/// The wire bytes of one TPM structure.
fn to_bytes<T: TpmMarshal + TpmSized>(v: &T) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    let mut buf = vec![0u8; v.len()];
    let mut w = TpmWriter::new(&mut buf);
    v.marshal(&mut w)?;
    let n = w.len();
    buf.truncate(n);
    Ok(buf)
}

/// The response code of a response frame (its header: tag, responseSize, responseCode), or
/// `None` when shorter than a header.
fn response_code(resp: &[u8]) -> Option<u32> {
    let (_tag, rest) = TpmUint16::unmarshal(resp).ok()?;
    let (_size, rest) = TpmUint32::unmarshal(rest).ok()?;
    let (rc, _) = TpmUint32::unmarshal(rest).ok()?;
    Some(rc.into())
}

/// Send `command` on `f`, read the response (at most `max` bytes), require TPM_RC_SUCCESS and
/// unmarshal it as `R`.
fn transact<R: TpmUnmarshalBody>(
    f: &mut std::fs::File,
    what: &str,
    command: &[u8],
    max: usize,
) -> io::Result<R> {
    f.write_all(command)?;
    let mut resp = vec![0u8; max];
    let n = f.read(&mut resp)?;
    resp.truncate(n);
    let rc = response_code(&resp)
        .ok_or_else(|| io::Error::other(format!("{what}: TPM response of {n} bytes")))?;
    if rc != 0 {
        return Err(io::Error::other(format!("{what} failed: rc {rc:#x}")));
    }
    TpmResponse::cast(&resp)
        .and_then(TpmResponse::unmarshal::<R>)
        .map_err(|e| wire(what, e))
}

/// TPM2_PCR_Extend of PCR `pcr` with one SHA-256 digest and the password session: 65 bytes.
fn pcr_extend_command(pcr: u32, digest: [u8; 32]) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    let mut digests = TpmlDigestValues::new();
    digests.try_push(TpmtHa {
        hash_alg: TpmAlgId::Sha256,
        digest: TpmuHa::Digest(digest.as_slice().try_into()?),
    })?;
    marshal(
        &TpmPcrExtendCommand {
            handles: [TpmHandle::new(pcr)],
            digests,
        },
        &[TPM_RS_PW],
    )
}

/// Extend SHA-256 PCR `pcr` with `digest`.
pub fn pcr_extend_sha256(device: &str, pcr: u32, digest: [u8; 32]) -> io::Result<()> {
    let what = format!("TPM2_PCR_Extend({pcr})");
    let cmd = pcr_extend_command(pcr, digest).map_err(|e| wire(&what, e))?;
    let mut f = OpenOptions::new().read(true).write(true).open(device)?;
    transact::<TpmPcrExtendResponse>(&mut f, &what, &cmd, 64)?;
    Ok(())
}

/// EK template L-1 (TCG EK Credential Profile 2.0, §B.3.3): RSA 2048, AES-128-CFB, policy
/// PolicySecret(TPM_RH_ENDORSEMENT) — the key `tpm2_createek -G rsa` makes and swtpm_setup
/// certifies. Attributes 0x000300b2: fixedTPM, fixedParent, sensitiveDataOrigin,
/// adminWithPolicy, restricted, decrypt; exponent 0 (65537); unique: 256 zero bytes.
fn ek_template() -> Result<TpmtPublic, tpm2_protocol::TpmError> {
    const EK_POLICY: [u8; 32] = [
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7,
        0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14,
        0x69, 0xaa,
    ];
    Ok(TpmtPublic {
        object_type: TpmAlgId::Rsa,
        name_alg: TpmAlgId::Sha256,
        object_attributes: TpmaObject::FIXED_TPM
            | TpmaObject::FIXED_PARENT
            | TpmaObject::SENSITIVE_DATA_ORIGIN
            | TpmaObject::ADMIN_WITH_POLICY
            | TpmaObject::RESTRICTED
            | TpmaObject::DECRYPT,
        auth_policy: Tpm2bDigest::try_from(EK_POLICY.as_slice())?,
        parameters: TpmuPublicParms::Rsa(TpmsRsaParms {
            symmetric: TpmtSymDefObject {
                algorithm: TpmAlgId::Aes,
                key_bits: TpmuSymKeyBits::Aes(TpmUint16::new(128)),
                mode: TpmuSymMode::Aes(TpmAlgId::Cfb),
            },
            scheme: Default::default(), // TPM_ALG_NULL
            key_bits: TpmUint16::new(2048),
            exponent: TpmUint32::new(0),
        }),
        unique: TpmuPublicId::Rsa(Tpm2bPublicKeyRsa::try_from([0u8; 256].as_slice())?),
    })
}

/// A restricted ECDSA P-256 / SHA-256 signing key (the AK), made a primary key of the
/// endorsement hierarchy: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth,
/// restricted, sign (0x00050072); no authPolicy, no symmetric, empty unique.
fn ak_template() -> TpmtPublic {
    TpmtPublic {
        object_type: TpmAlgId::Ecc,
        name_alg: TpmAlgId::Sha256,
        object_attributes: TpmaObject::FIXED_TPM
            | TpmaObject::FIXED_PARENT
            | TpmaObject::SENSITIVE_DATA_ORIGIN
            | TpmaObject::USER_WITH_AUTH
            | TpmaObject::RESTRICTED
            | TpmaObject::SIGN_ENCRYPT,
        auth_policy: Tpm2bDigest::default(),
        parameters: TpmuPublicParms::Ecc(TpmsEccParms {
            symmetric: TpmtSymDefObject::default(), // TPM_ALG_NULL
            scheme: TpmtEccScheme {
                scheme: TpmAlgId::Ecdsa,
                details: TpmuAsymScheme::Hash(TpmsSchemeHash {
                    hash_alg: TpmAlgId::Sha256,
                }),
            },
            curve_id: TpmEccCurve::NistP256,
            kdf: Default::default(), // TPM_ALG_NULL
        }),
        unique: TpmuPublicId::Ecc(TpmsEccPoint {
            x: Tpm2bEccParameter::default(),
            y: Tpm2bEccParameter::default(),
        }),
    }
}

/// TPM2_CreatePrimary in the endorsement hierarchy under the password session: empty
/// inSensitive, outsideInfo and creationPCR.
fn create_primary_command(template: TpmtPublic) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    marshal(
        &TpmCreatePrimaryCommand {
            handles: [TpmHandle::new(TPM_RH_ENDORSEMENT)],
            in_sensitive: Default::default(),
            in_public: Tpm2bPublic { inner: template },
            outside_info: Tpm2bData::default(),
            creation_pcr: TpmlPcrSelection::new(),
        },
        &[TPM_RS_PW],
    )
}

fn nv_read_public_command(index: u32) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    marshal(
        &TpmNvReadPublicCommand {
            handles: [TpmHandle::new(index)],
        },
        &[],
    )
}

/// TPM2_NV_Read of `size` bytes at `offset` with owner authorization.
fn nv_read_command(index: u32, size: u16, offset: u16) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    marshal(
        &TpmNvReadCommand {
            handles: [TpmHandle::new(TPM_RH_OWNER), TpmHandle::new(index)],
            size: TpmUint16::new(size),
            offset: TpmUint16::new(offset),
        },
        &[TPM_RS_PW],
    )
}

/// TPM2_StartAuthSession: an unbound, unsalted SHA-256 policy session, no parameter
/// encryption.
fn start_policy_session_command(nonce: &[u8]) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    marshal(
        &TpmStartAuthSessionCommand {
            handles: [TpmHandle::new(TPM_RH_NULL), TpmHandle::new(TPM_RH_NULL)],
            nonce_caller: Tpm2bNonce::try_from(nonce)?,
            encrypted_salt: Tpm2bEncryptedSecret::default(),
            session_type: TpmSe::Policy,
            symmetric: TpmtSymDefObject::default(), // TPM_ALG_NULL
            auth_hash: TpmAlgId::Sha256,
        },
        &[],
    )
}

/// TPM2_PolicySecret(TPM_RH_ENDORSEMENT) on `session`: no nonceTPM, cpHashA, policyRef,
/// expiration 0.
fn policy_secret_command(session: u32) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    marshal(
        &TpmPolicySecretCommand {
            handles: [TpmHandle::new(TPM_RH_ENDORSEMENT), TpmHandle::new(session)],
            ..TpmPolicySecretCommand::default()
        },
        &[TPM_RS_PW],
    )
}

/// TPM2_ActivateCredential of `credential_blob` and `secret` (the tpm2-tools file after its
/// header, each a TPM2B, nothing after) for `ak` (password) with `ek` (policy `session`).
fn activate_credential_command(
    ak: u32,
    ek: u32,
    session: u32,
    blob_and_secret: &[u8],
) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    let (credential_blob, rest) = Tpm2bIdObject::unmarshal(blob_and_secret)?;
    let (secret, rest) = Tpm2bEncryptedSecret::unmarshal(rest)?;
    if !rest.is_empty() {
        return Err(tpm2_protocol::TpmError::TrailingData {
            offset: blob_and_secret.len() - rest.len(),
            actual: rest.len(),
        });
    }
    marshal(
        &TpmActivateCredentialCommand {
            handles: [TpmHandle::new(ak), TpmHandle::new(ek)],
            credential_blob,
            secret,
        },
        &[TPM_RS_PW, session],
    )
}

/// The SHA-256 PCR selection bitmap (3 octets: PCRs 0–23) of `pcrs`.
fn pcr_bitmap(pcrs: &[u32]) -> [u8; 3] {
    let mut bitmap = [0u8; 3];
    for p in pcrs {
        bitmap[(*p / 8) as usize] |= 1 << (p % 8);
    }
    bitmap
}

/// TPM2_Quote by `ak` (password) of SHA-256 `pcrs` over `qualifying`, in the key's own scheme.
fn quote_command(
    ak: u32,
    qualifying: &[u8],
    pcrs: &[u32],
) -> Result<Vec<u8>, tpm2_protocol::TpmError> {
    let mut pcr_select = TpmlPcrSelection::new();
    pcr_select.try_push(TpmsPcrSelection {
        hash: TpmAlgId::Sha256,
        pcr_select: TpmsPcrSelect::try_from(pcr_bitmap(pcrs).as_slice())?,
    })?;
    marshal(
        &TpmQuoteCommand {
            handles: [TpmHandle::new(ak)],
            qualifying_data: Tpm2bData::try_from(qualifying)?,
            in_scheme: TpmtSigScheme::default(), // TPM_ALG_NULL
            pcr_select,
        },
        &[TPM_RS_PW],
    )
}

/// One open `/dev/tpmrm0`: transient handles live as long as it does.
pub struct Tpm {
    f: std::fs::File,
}

impl Tpm {
    pub fn open(device: &str) -> io::Result<Self> {
        Ok(Tpm {
            f: OpenOptions::new().read(true).write(true).open(device)?,
        })
    }

    /// Send a command built by `build` and unmarshal its successful response as `R`.
    fn exec<R: TpmUnmarshalBody>(
        &mut self,
        what: &str,
        build: Result<Vec<u8>, tpm2_protocol::TpmError>,
    ) -> io::Result<R> {
        let cmd = build.map_err(|e| wire(what, e))?;
        transact(&mut self.f, what, &cmd, 8192)
    }

    /// CreatePrimary in the endorsement hierarchy; returns (handle, TPM2B_PUBLIC bytes).
    fn create_primary(&mut self, what: &str, template: TpmtPublic) -> io::Result<(u32, Vec<u8>)> {
        let r: TpmCreatePrimaryResponse = self.exec(what, create_primary_command(template))?;
        let public = to_bytes(&r.out_public).map_err(|e| wire(what, e))?;
        Ok((r.handles[0].into(), public))
    }

    /// The EK (template L-1): (handle, TPM2B_PUBLIC).
    pub fn create_ek(&mut self) -> io::Result<(u32, Vec<u8>)> {
        const WHAT: &str = "TPM2_CreatePrimary(EK)";
        let template = ek_template().map_err(|e| wire(WHAT, e))?;
        self.create_primary(WHAT, template)
    }

    /// The AK: (handle, TPM2B_PUBLIC).
    pub fn create_ak(&mut self) -> io::Result<(u32, Vec<u8>)> {
        self.create_primary("TPM2_CreatePrimary(AK)", ak_template())
    }

    /// Read a whole NV index with owner authorization.
    pub fn nv_read(&mut self, index: u32) -> io::Result<Vec<u8>> {
        let public: TpmNvReadPublicResponse =
            self.exec("TPM2_NV_ReadPublic", nv_read_public_command(index))?;
        let size = usize::from(u16::from(public.nv_public.inner.data_size));
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            // Both fit in a u16: `size` is one.
            let n = (size - out.len()).min(512) as u16;
            let r: TpmNvReadResponse =
                self.exec("TPM2_NV_Read", nv_read_command(index, n, out.len() as u16))?;
            if r.data.is_empty() {
                return Err(io::Error::other("TPM2_NV_Read returned no data"));
            }
            out.extend_from_slice(&r.data);
        }
        Ok(out)
    }

    /// TPM2_ActivateCredential for `ak` with the EK (authorized by a policy session that
    /// satisfies PolicySecret(TPM_RH_ENDORSEMENT)). `credential` is the tpm2-tools file
    /// (0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET).
    pub fn activate_credential(
        &mut self,
        ak: u32,
        ek: u32,
        credential: &[u8],
    ) -> io::Result<Vec<u8>> {
        if credential.len() < 8 || credential[..8] != [0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1] {
            return Err(io::Error::other(
                "credential: not a version 1 tpm2-tools credential",
            ));
        }
        let mut nonce = [0u8; 16];
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut nonce)
            .map_err(|e| io::Error::other(format!("randomness: {e}")))?;
        let started: TpmStartAuthSessionResponse = self.exec(
            "TPM2_StartAuthSession",
            start_policy_session_command(&nonce),
        )?;
        let session: u32 = started.handles[0].into();
        let _: TpmPolicySecretResponse =
            self.exec("TPM2_PolicySecret", policy_secret_command(session))?;
        let r: TpmActivateCredentialResponse = self.exec(
            "TPM2_ActivateCredential",
            activate_credential_command(ak, ek, session, &credential[8..]),
        )?;
        Ok(r.cert_info.to_vec())
    }

    /// TPM2_Quote of SHA-256 `pcrs` with `qualifying` data: (TPMS_ATTEST, TPMT_SIGNATURE).
    pub fn quote(
        &mut self,
        ak: u32,
        qualifying: &[u8],
        pcrs: &[u32],
    ) -> io::Result<(Vec<u8>, Vec<u8>)> {
        const WHAT: &str = "TPM2_Quote";
        let r: TpmQuoteResponse = self.exec(WHAT, quote_command(ak, qualifying, pcrs))?;
        let attest = to_bytes(&r.quoted.inner).map_err(|e| wire(WHAT, e))?;
        let sig = to_bytes(&r.signature).map_err(|e| wire(WHAT, e))?;
        Ok((attest, sig))
    }

    /// Whether an NV index is defined (TPM2_NV_ReadPublic succeeds).
    pub fn nv_read_public_exists(&mut self, index: u32) -> io::Result<bool> {
        let cmd = nv_read_public_command(index).map_err(|e| wire("TPM2_NV_ReadPublic", e))?;
        self.f.write_all(&cmd)?;
        let mut resp = [0u8; 1024];
        let n = self.f.read(&mut resp)?;
        Ok(response_code(&resp[..n]) == Some(0))
    }
}

#[cfg(test)]
mod tests;
