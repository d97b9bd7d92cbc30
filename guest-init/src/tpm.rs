//! The few TPM 2.0 commands guest-init sends, marshalled by hand through the kernel's resource
//! manager (`/dev/tpmrm0`). TPM 2.0 Library, Part 3 §22.2 (TPM2_PCR_Extend), Part 1 §18.6
//! (password authorization session, TPM_RS_PW), Part 2 (big-endian wire format).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};

use zerocopy::big_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ALG_SHA256: u16 = 0x000b;

/// TPM2_PCR_Extend with one SHA-256 digest and an empty password session: 65 bytes.
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct PcrExtendSha256 {
    tag: U16,
    command_size: U32,
    command_code: U32,
    pcr_handle: U32,
    authorization_size: U32,
    session_handle: U32,
    nonce_size: U16,
    session_attributes: u8,
    hmac_size: U16,
    digest_count: U32,
    hash_alg: U16,
    digest: [u8; 32],
}
const _: () = assert!(core::mem::size_of::<PcrExtendSha256>() == 65);

/// Extend SHA-256 PCR `pcr` with `digest`.
pub fn pcr_extend_sha256(device: &str, pcr: u32, digest: [u8; 32]) -> io::Result<()> {
    let cmd = PcrExtendSha256 {
        tag: U16::new(TPM_ST_SESSIONS),
        command_size: U32::new(65),
        command_code: U32::new(TPM_CC_PCR_EXTEND),
        pcr_handle: U32::new(pcr),
        authorization_size: U32::new(9),
        session_handle: U32::new(TPM_RS_PW),
        nonce_size: U16::new(0),
        session_attributes: 0,
        hmac_size: U16::new(0),
        digest_count: U32::new(1),
        hash_alg: U16::new(TPM_ALG_SHA256),
        digest,
    };
    let mut f = OpenOptions::new().read(true).write(true).open(device)?;
    f.write_all(cmd.as_bytes())?;
    let mut resp = [0u8; 64];
    let n = f.read(&mut resp)?;
    if n < 10 {
        return Err(io::Error::other(format!("TPM response of {n} bytes")));
    }
    let rc = u32::from_be_bytes([resp[6], resp[7], resp[8], resp[9]]);
    if rc != 0 {
        return Err(io::Error::other(format!(
            "TPM2_PCR_Extend({pcr}) failed: rc {rc:#x}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Attestation commands (TPM 2.0 Library Part 3): CreatePrimary §24.1, NV_ReadPublic §31.6,
// NV_Read §31.13, StartAuthSession §11.1, PolicySecret §23.4, ActivateCredential §12.5,
// Quote §18.4. Variable-length, so marshalled with a small builder; every response field is
// length-checked.

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_CC_CREATE_PRIMARY: u32 = 0x131;
const TPM_CC_NV_READ_PUBLIC: u32 = 0x169;
const TPM_CC_NV_READ: u32 = 0x14e;
const TPM_CC_START_AUTH_SESSION: u32 = 0x176;
const TPM_CC_POLICY_SECRET: u32 = 0x151;
const TPM_CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
const TPM_CC_QUOTE: u32 = 0x158;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
const TPM_ALG_NULL: u16 = 0x0010;
/// The EK certificate (RSA 2048) NV index (TCG EK Credential Profile §2.2.1.5).
pub const EK_CERT_NV_INDEX: u32 = 0x01c0_0002;

/// EK template L-1 (TCG EK Credential Profile 2.0, §B.3.3): RSA 2048, AES-128-CFB, policy
/// PolicySecret(TPM_RH_ENDORSEMENT) — the key `tpm2_createek -G rsa` makes and swtpm_setup
/// certifies.
fn ek_template() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
    t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(&[
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7,
        0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14,
        0x69, 0xaa,
    ]);
    t.extend_from_slice(&0x0006u16.to_be_bytes()); // AES
    t.extend_from_slice(&128u16.to_be_bytes());
    t.extend_from_slice(&0x0043u16.to_be_bytes()); // CFB
    t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // scheme
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // exponent 65537
    t.extend_from_slice(&256u16.to_be_bytes());
    t.extend_from_slice(&[0u8; 256]);
    t
}

/// A restricted ECDSA P-256 / SHA-256 signing key (the AK), made a primary key of the
/// endorsement hierarchy: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth,
/// restricted, sign.
fn ak_template() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&0x0005_0072u32.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // no authPolicy
    t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // symmetric
    t.extend_from_slice(&0x0018u16.to_be_bytes()); // ECDSA
    t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&0x0003u16.to_be_bytes()); // NIST P-256
    t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
    t.extend_from_slice(&0u16.to_be_bytes()); // unique.x
    t.extend_from_slice(&0u16.to_be_bytes()); // unique.y
    t
}

struct Cmd {
    b: Vec<u8>,
}

impl Cmd {
    fn new(tag: u16, cc: u32) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&tag.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&cc.to_be_bytes());
        Cmd { b }
    }
    fn u8(mut self, v: u8) -> Self {
        self.b.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.b.extend_from_slice(v);
        self
    }
    fn tpm2b(self, v: &[u8]) -> Self {
        self.u16(v.len() as u16).raw(v)
    }
    /// Authorization area: each session as (handle); empty nonce, attributes 0, empty hmac.
    fn auth(self, sessions: &[u32]) -> Self {
        let mut s = self.u32(9 * sessions.len() as u32);
        for h in sessions {
            s = s.u32(*h).u16(0).u8(0).u16(0);
        }
        s
    }
    fn done(mut self) -> Vec<u8> {
        let n = self.b.len() as u32;
        self.b[2..6].copy_from_slice(&n.to_be_bytes());
        self.b
    }
}

/// A response parameter reader.
struct Resp<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Resp<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| io::Error::other("truncated TPM response"))?;
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self) -> io::Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn tpm2b(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
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

    fn exec(&mut self, what: &str, cmd: Vec<u8>) -> io::Result<Vec<u8>> {
        self.f.write_all(&cmd)?;
        let mut resp = vec![0u8; 8192];
        let n = self.f.read(&mut resp)?;
        resp.truncate(n);
        if n < 10 {
            return Err(io::Error::other(format!(
                "{what}: TPM response of {n} bytes"
            )));
        }
        let rc = u32::from_be_bytes([resp[6], resp[7], resp[8], resp[9]]);
        if rc != 0 {
            return Err(io::Error::other(format!("{what} failed: rc {rc:#x}")));
        }
        Ok(resp)
    }

    /// CreatePrimary in the endorsement hierarchy; returns (handle, TPM2B_PUBLIC bytes).
    fn create_primary(&mut self, what: &str, template: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        let cmd = Cmd::new(TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY)
            .u32(TPM_RH_ENDORSEMENT)
            .auth(&[TPM_RS_PW])
            .u16(4)
            .u16(0)
            .u16(0) // inSensitive: empty userAuth and data
            .tpm2b(template)
            .u16(0) // outsideInfo
            .u32(0) // creationPCR: none
            .done();
        let resp = self.exec(what, cmd)?;
        let mut r = Resp { b: &resp, pos: 10 };
        let handle = r.u32()?;
        r.u32()?; // parameterSize
        let start = r.pos;
        r.tpm2b()?;
        Ok((handle, resp[start..r.pos].to_vec()))
    }

    /// The EK (template L-1): (handle, TPM2B_PUBLIC).
    pub fn create_ek(&mut self) -> io::Result<(u32, Vec<u8>)> {
        self.create_primary("TPM2_CreatePrimary(EK)", &ek_template())
    }

    /// The AK: (handle, TPM2B_PUBLIC).
    pub fn create_ak(&mut self) -> io::Result<(u32, Vec<u8>)> {
        self.create_primary("TPM2_CreatePrimary(AK)", &ak_template())
    }

    /// Read a whole NV index with owner authorization.
    pub fn nv_read(&mut self, index: u32) -> io::Result<Vec<u8>> {
        let resp = self.exec(
            "TPM2_NV_ReadPublic",
            Cmd::new(TPM_ST_NO_SESSIONS, TPM_CC_NV_READ_PUBLIC)
                .u32(index)
                .done(),
        )?;
        let mut r = Resp { b: &resp, pos: 10 };
        let public = r.tpm2b()?;
        // TPMS_NV_PUBLIC: nvIndex u32, nameAlg u16, attributes u32, authPolicy TPM2B, dataSize u16
        let mut p = Resp { b: public, pos: 10 };
        p.tpm2b()?;
        let size = p.u16()? as usize;
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let n = (size - out.len()).min(512);
            let resp = self.exec(
                "TPM2_NV_Read",
                Cmd::new(TPM_ST_SESSIONS, TPM_CC_NV_READ)
                    .u32(TPM_RH_OWNER)
                    .u32(index)
                    .auth(&[TPM_RS_PW])
                    .u16(n as u16)
                    .u16(out.len() as u16)
                    .done(),
            )?;
            let mut r = Resp { b: &resp, pos: 10 };
            r.u32()?;
            let data = r.tpm2b()?;
            if data.is_empty() {
                return Err(io::Error::other("TPM2_NV_Read returned no data"));
            }
            out.extend_from_slice(data);
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
        let resp = self.exec(
            "TPM2_StartAuthSession",
            Cmd::new(TPM_ST_NO_SESSIONS, TPM_CC_START_AUTH_SESSION)
                .u32(TPM_RH_NULL)
                .u32(TPM_RH_NULL)
                .tpm2b(&nonce)
                .u16(0) // encryptedSalt
                .u8(0x01) // TPM_SE_POLICY
                .u16(TPM_ALG_NULL) // symmetric
                .u16(TPM_ALG_SHA256)
                .done(),
        )?;
        let session = Resp { b: &resp, pos: 10 }.u32()?;
        self.exec(
            "TPM2_PolicySecret",
            Cmd::new(TPM_ST_SESSIONS, TPM_CC_POLICY_SECRET)
                .u32(TPM_RH_ENDORSEMENT)
                .u32(session)
                .auth(&[TPM_RS_PW])
                .u16(0)
                .u16(0)
                .u16(0)
                .u32(0)
                .done(),
        )?;
        let resp = self.exec(
            "TPM2_ActivateCredential",
            Cmd::new(TPM_ST_SESSIONS, TPM_CC_ACTIVATE_CREDENTIAL)
                .u32(ak)
                .u32(ek)
                .auth(&[TPM_RS_PW, session])
                .raw(&credential[8..])
                .done(),
        )?;
        let mut r = Resp { b: &resp, pos: 10 };
        r.u32()?;
        Ok(r.tpm2b()?.to_vec())
    }

    /// TPM2_Quote of SHA-256 `pcrs` with `qualifying` data: (TPMS_ATTEST, TPMT_SIGNATURE).
    pub fn quote(
        &mut self,
        ak: u32,
        qualifying: &[u8],
        pcrs: &[u32],
    ) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut bitmap = [0u8; 3];
        for p in pcrs {
            bitmap[(*p / 8) as usize] |= 1 << (p % 8);
        }
        let resp = self.exec(
            "TPM2_Quote",
            Cmd::new(TPM_ST_SESSIONS, TPM_CC_QUOTE)
                .u32(ak)
                .auth(&[TPM_RS_PW])
                .tpm2b(qualifying)
                .u16(TPM_ALG_NULL) // the key's own scheme
                .u32(1)
                .u16(TPM_ALG_SHA256)
                .u8(3)
                .raw(&bitmap)
                .done(),
        )?;
        let mut r = Resp { b: &resp, pos: 10 };
        let psize = r.u32()? as usize;
        let end = r.pos + psize;
        let attest = r.tpm2b()?.to_vec();
        let sig = resp
            .get(r.pos..end)
            .ok_or_else(|| io::Error::other("truncated TPM2_Quote response"))?
            .to_vec();
        Ok((attest, sig))
    }
}

impl Tpm {
    /// Whether an NV index is defined (TPM2_NV_ReadPublic succeeds).
    pub fn nv_read_public_exists(&mut self, index: u32) -> io::Result<bool> {
        let cmd = Cmd::new(TPM_ST_NO_SESSIONS, TPM_CC_NV_READ_PUBLIC)
            .u32(index)
            .done();
        self.f.write_all(&cmd)?;
        let mut resp = [0u8; 1024];
        let n = self.f.read(&mut resp)?;
        Ok(n >= 10 && resp[6..10] == [0, 0, 0, 0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_the_documented_sizes() {
        // type, nameAlg, attributes, authPolicy(2+32), symmetric(6), scheme(2), keyBits,
        // exponent, unique(2+256)
        assert_eq!(ek_template().len(), 2 + 2 + 4 + 34 + 6 + 2 + 2 + 4 + 258);
        assert_eq!(ak_template().len(), 2 + 2 + 4 + 2 + 2 + 4 + 2 + 2 + 4);
        let c = Cmd::new(TPM_ST_SESSIONS, TPM_CC_QUOTE)
            .u32(1)
            .auth(&[TPM_RS_PW])
            .done();
        assert_eq!(c.len(), 10 + 4 + 4 + 9);
        assert_eq!(
            u32::from_be_bytes(c[2..6].try_into().unwrap()),
            c.len() as u32
        );
    }
}
