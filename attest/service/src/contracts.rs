//! The contracts the service has been given at registration, kept as packed (canonical JSON)
//! in `DATA/contracts/<digest>.json`, written once. A contract scopes its blobs
//! (`DATA/blobs/<digest>/<name>`): its dataset blobs are written only by their owners, its
//! output blob only with the upload token released to a TEE attested for it.

use std::path::{Path, PathBuf};

use dcr_protocol::contract::Contract;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ContractStoreError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}: stored contract does not match its digest or does not parse: {1}")]
    Corrupt(PathBuf, String),
}

fn ferr(path: &Path, e: impl std::fmt::Display) -> ContractStoreError {
    ContractStoreError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

pub fn path(data_dir: &Path, digest_hex: &str) -> PathBuf {
    data_dir
        .join("contracts")
        .join(format!("{digest_hex}.json"))
}

/// Keep `c` (already validated and parsed from `canonical`, whose digest is `digest`); a
/// contract already kept is left as it is (same digest, same bytes).
pub fn store(
    data_dir: &Path,
    digest: &[u8; 32],
    canonical: &[u8],
) -> Result<(), ContractStoreError> {
    use std::io::Write;
    let dir = data_dir.join("contracts");
    std::fs::create_dir_all(&dir).map_err(|e| ferr(&dir, e))?;
    let fin = path(data_dir, &hex::encode(digest));
    if fin.exists() {
        return Ok(());
    }
    let mut rnd = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
    let tmp = dir.join(format!(".tmp-{}", hex::encode(rnd)));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(canonical)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &fin)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(ferr(&fin, e));
    }
    Ok(())
}

/// The kept contract with this digest (64 hex digits, checked by the caller), if any.
pub fn load(data_dir: &Path, digest_hex: &str) -> Result<Option<Contract>, ContractStoreError> {
    let p = path(data_dir, digest_hex);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ferr(&p, e)),
    };
    if hex::encode(Sha256::digest(&bytes)) != digest_hex {
        return Err(ContractStoreError::Corrupt(p, "digest".into()));
    }
    Contract::from_canonical_json(&bytes)
        .map(Some)
        .map_err(|e| ContractStoreError::Corrupt(p, e.to_string()))
}

/// The blob directory of a contract.
pub fn blob_dir(data_dir: &Path, digest_hex: &str) -> PathBuf {
    data_dir.join("blobs").join(digest_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load_check_the_digest() {
        let d = std::env::temp_dir().join(format!("dcr-contracts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let text = include_str!("../../../images/clean-room/contract.toml");
        let c = Contract::from_toml(text).unwrap();
        let canon = c.canonical_json();
        let digest = c.digest();
        store(&d, &digest, &canon).unwrap();
        store(&d, &digest, &canon).unwrap(); // idempotent
        let got = load(&d, &hex::encode(digest)).unwrap().unwrap();
        assert_eq!(got, c);
        assert!(load(&d, &"00".repeat(32)).unwrap().is_none());
        // A stored file that was altered is refused, not used.
        let p = path(&d, &hex::encode(digest));
        let mut b = std::fs::read(&p).unwrap();
        b[10] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(matches!(
            load(&d, &hex::encode(digest)),
            Err(ContractStoreError::Corrupt(..))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
