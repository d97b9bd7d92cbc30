//! Sealed outputs: a fresh DEK HPKE-wrapped to each recipient, followed by a sealed stream
//! (docs/sealed-data.md).
//!
//! ```text
//! magic "DCRRCPT\0" (8) | version u16 = 1 | count u16 (1..=64)
//! count × { fingerprint [32] = SHA-256(recipient x25519 key) | enc [32] | wrapped [48] }
//! sealed stream (header + chunks, see seal.rs)
//! ```
//! `wrapped` = HPKE(recipient, info = "dcr/v1/recipient\0" ‖ SHA-256(stream header), aad =
//! fingerprint, DEK); binding the stream header (key id, nonce prefix, chunk size) means a
//! wrapped key cannot be moved onto another stream.

use std::io::{Read, Write};

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::keys::{hpke_open, hpke_seal, HpkePublic, HpkeSecret};
use crate::seal::{Dek, Header, Opener, SealError, Sealer};

pub const MAGIC: [u8; 8] = *b"DCRRCPT\0";
pub const VERSION: u16 = 1;
pub const MAX_RECIPIENTS: usize = 64;
const ENTRY: usize = 32 + 32 + 48;
const DOMAIN: &[u8] = b"dcr/v1/recipient\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipientError {
    #[error("sealed output: {0}")]
    Format(String),
    #[error("sealed output is not addressed to this key ({0})")]
    NotARecipient(String),
    #[error("recipient key {0}: HPKE open failed (tampered output)")]
    Unwrap(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{0}")]
    Io(String),
}

fn info(header: &Header) -> Vec<u8> {
    let mut v = DOMAIN.to_vec();
    v.extend_from_slice(&Sha256::digest(header.to_bytes()));
    v
}

/// Write the recipient table and the stream header; returns the sealer for the plaintext.
pub fn seal_to<W: Write>(
    mut out: W,
    recipients: &[HpkePublic],
    key_id: &str,
    chunk_size: u32,
    rng: &mut impl CryptoRngCore,
) -> Result<Sealer<W>, RecipientError> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(RecipientError::Format(format!(
            "{} recipients: must be 1..={MAX_RECIPIENTS}",
            recipients.len()
        )));
    }
    let dek = Dek::generate(rng);
    let header = Header::new(key_id, chunk_size, rng)?;
    let inf = info(&header);
    let mut table = Vec::with_capacity(12 + recipients.len() * ENTRY);
    table.extend_from_slice(&MAGIC);
    table.extend_from_slice(&VERSION.to_be_bytes());
    table.extend_from_slice(&(recipients.len() as u16).to_be_bytes());
    for r in recipients {
        let fp = r.fingerprint();
        let (enc, ct) =
            hpke_seal(r, &inf, &fp, &dek.0, rng).map_err(|e| RecipientError::Io(e.to_string()))?;
        table.extend_from_slice(&fp);
        table.extend_from_slice(&enc);
        table.extend_from_slice(&ct);
    }
    out.write_all(&table)
        .map_err(|e| RecipientError::Io(e.to_string()))?;
    Sealer::new(out, &dek, header).map_err(|e| RecipientError::Io(e.to_string()))
}

/// Read the recipient table and stream header, unwrap the DEK for `sk`, return the opener.
pub fn open_as<R: Read>(mut input: R, sk: &HpkeSecret) -> Result<Opener<R>, RecipientError> {
    let mut fixed = [0u8; 12];
    input
        .read_exact(&mut fixed)
        .map_err(|_| RecipientError::Format("truncated recipient table".into()))?;
    if fixed[..8] != MAGIC {
        return Err(RecipientError::Format(
            "magic: not a dcr sealed output (expected \"DCRRCPT\\0\")".into(),
        ));
    }
    let version = u16::from_be_bytes([fixed[8], fixed[9]]);
    if version != VERSION {
        return Err(RecipientError::Format(format!(
            "version {version}: unknown (this build reads version {VERSION})"
        )));
    }
    let count = u16::from_be_bytes([fixed[10], fixed[11]]) as usize;
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(RecipientError::Format(format!(
            "count {count}: must be 1..={MAX_RECIPIENTS}"
        )));
    }
    let mut table = vec![0u8; count * ENTRY];
    input
        .read_exact(&mut table)
        .map_err(|_| RecipientError::Format("truncated recipient table".into()))?;
    let header = Header::read_from(&mut input)?;
    let pk = sk.public();
    let fp = pk.fingerprint();
    let entry = table
        .chunks(ENTRY)
        .find(|e| e[..32] == fp)
        .ok_or_else(|| RecipientError::NotARecipient(pk.to_text()))?;
    let dek = hpke_open(sk, &entry[32..64], &info(&header), &fp, &entry[64..])
        .map_err(|_| RecipientError::Unwrap(pk.to_text()))?;
    let dek = Dek::from_slice(&dek)?;
    Ok(Opener::new(input, &dek, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn each_recipient_opens_and_nobody_else() {
        let a = HpkeSecret::generate(&mut OsRng);
        let b = HpkeSecret::generate(&mut OsRng);
        let c = HpkeSecret::generate(&mut OsRng);
        let mut s = seal_to(Vec::new(), &[a.public(), b.public()], "out", 64, &mut OsRng).unwrap();
        s.write_all(&[5u8; 200]).unwrap();
        let sealed = s.finish().unwrap();
        for k in [&a, &b] {
            let mut out = Vec::new();
            open_as(&sealed[..], k)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, vec![5u8; 200]);
        }
        assert!(matches!(
            open_as(&sealed[..], &c),
            Err(RecipientError::NotARecipient(_))
        ));
        // a flipped byte in a wrapped key or the stream header
        for i in [12 + 70, 12 + 2 * ENTRY + 17] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open_as(&t[..], &a).is_err(), "flip at {i}");
        }
    }
}
