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
