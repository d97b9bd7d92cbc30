//! Key files, sealing and opening files (docs/sealed-data.md).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dcr_protocol::keys::{HpkePublic, HpkeSecret};
use dcr_protocol::seal::{Dek, Header, Opener, Sealer};
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{ferr, PartyError};

/// Write a new file with mode 0600; never overwrites.
pub fn write_secret_file(path: &Path, text: &str) -> Result<(), PartyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ferr(path, format!("{e} (refusing to overwrite)")))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| ferr(path, e))
}

fn read_text(path: &Path) -> Result<Zeroizing<String>, PartyError> {
    Ok(Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| ferr(path, e))?
            .trim()
            .to_string(),
    ))
}

/// Make a recipient key pair: `<dir>/<name>.key` and `<dir>/<name>.pub`.
pub fn keygen(dir: &Path, name: &str) -> Result<HpkePublic, PartyError> {
    let sk = HpkeSecret::generate(&mut OsRng);
    let pk = sk.public();
    let pub_path = dir.join(format!("{name}.pub"));
    write_secret_file(&dir.join(format!("{name}.key")), &sk.to_text())?;
    std::fs::write(&pub_path, format!("{}\n", pk.to_text())).map_err(|e| ferr(&pub_path, e))?;
    Ok(pk)
}

pub fn read_secret_key(path: &Path) -> Result<HpkeSecret, PartyError> {
    HpkeSecret::from_text(&read_text(path)?).map_err(|e| ferr(path, e))
}

pub fn read_public_key(path: &Path) -> Result<HpkePublic, PartyError> {
    HpkePublic::from_text(&read_text(path)?).map_err(|e| ferr(path, e))
}

pub fn read_dek(path: &Path) -> Result<(String, Dek), PartyError> {
    let t = read_text(path)?;
    let bad = || ferr(path, "expected dek:<key id>:<64 hex digits>");
    let rest = t.strip_prefix("dek:").ok_or_else(bad)?;
    let (id, hex) = rest.rsplit_once(':').ok_or_else(bad)?;
    let bytes = Zeroizing::new(hex::decode(hex).map_err(|_| bad())?);
    Ok((id.to_string(), Dek::from_slice(&bytes).map_err(|_| bad())?))
}

/// Write to `<out>.partial`, fsync, rename to `out` only when `f` succeeded; never overwrites.
pub fn write_atomically(
    out: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), PartyError>,
) -> Result<(), PartyError> {
    write_atomically_mode(out, None, f)
}

/// [`write_atomically`] for plaintext: the file is mode 0600 from its creation, whatever the
/// umask.
pub fn write_private_atomically(
    out: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), PartyError>,
) -> Result<(), PartyError> {
    write_atomically_mode(out, Some(0o600), f)
}

fn write_atomically_mode(
    out: &Path,
    mode: Option<u32>,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), PartyError>,
) -> Result<(), PartyError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // symlink_metadata: a dangling symlink at `out` exists too.
    if out.symlink_metadata().is_ok() {
        return Err(ferr(out, "exists (refusing to overwrite)"));
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    if let Some(m) = mode {
        o.mode(m);
    }
    let file = o.open(&tmp).map_err(|e| ferr(&tmp, e))?;
    if let Some(m) = mode {
        // The umask can only take bits away; set exactly `m` (before any byte is written).
        if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(m)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ferr(&tmp, e));
        }
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let r = f(&mut w).and_then(|_| {
        let file = w.into_inner().map_err(|e| ferr(&tmp, e.error()))?;
        file.sync_all().map_err(|e| ferr(&tmp, e))
    });
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // link(2) fails if `out` appeared meanwhile (a file or a symlink): never replaced.
    let linked = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ferr(out, "exists (refusing to overwrite)")
        } else {
            ferr(out, e)
        }
    })
}

pub(super) fn copy(
    r: &mut impl Read,
    w: &mut impl Write,
    rp: &Path,
    wp: &Path,
) -> Result<u64, PartyError> {
    let mut buf = Zeroizing::new(vec![0u8; 1 << 20]);
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ferr(rp, e)),
        };
        w.write_all(&buf[..k]).map_err(|e| ferr(wp, e))?;
        n += k as u64;
    }
}

/// Seal `input` under a fresh DEK; writes the sealed file and the DEK file.
pub fn seal_file(
    input: &Path,
    out: &Path,
    key_id: &str,
    dek_out: &Path,
    chunk_size: u32,
) -> Result<u64, PartyError> {
    let dek = Dek::generate(&mut OsRng);
    let header = Header::new(key_id, chunk_size, &mut OsRng)
        .map_err(|e| PartyError::Format(e.to_string()))?;
    let mut src = std::fs::File::open(input).map_err(|e| ferr(input, e))?;
    let mut n = 0;
    write_atomically(out, |w| {
        let mut s = Sealer::new(w, &dek, header).map_err(|e| ferr(out, e))?;
        n = copy(&mut src, &mut s, input, out)?;
        s.finish().map_err(|e| ferr(out, e))?;
        Ok(())
    })?;
    let text = Zeroizing::new(format!("dek:{key_id}:{}", hex::encode(dek.0)));
    if let Err(e) = write_secret_file(dek_out, &text) {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(n)
}

/// Open a sealed stream with its DEK file.
pub fn open_with_dek(input: &Path, out: &Path, dek_file: &Path) -> Result<u64, PartyError> {
    let (id, dek) = read_dek(dek_file)?;
    let mut r = std::io::BufReader::new(std::fs::File::open(input).map_err(|e| ferr(input, e))?);
    let header = Header::read_from(&mut r).map_err(|e| ferr(input, e))?;
    if header.key_id != id {
        return Err(ferr(
            input,
            format!(
                "sealed under key {:?}, the DEK file is for {id:?}",
                header.key_id
            ),
        ));
    }
    let mut o = Opener::new(r, &dek, header);
    let mut n = 0;
    write_private_atomically(out, |w| {
        n = copy(&mut o, w, input, out)?;
        Ok(())
    })?;
    Ok(n)
}

/// Reads through to `inner` while hashing every byte read.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Open a run's result as a recipient: a signed result (docs/sealed-data.md) whose proof must
/// verify — the service's release signed by the key the contract pins, for this contract's
/// digest and output blob, and the TEE's signature (by the result key bound into the evidence
/// the service verified) over the sealed output's SHA-256 — then the sealed output with the
/// recipient secret key. Nothing is left at `out` unless everything verified.
pub fn open_result(
    input: &Path,
    out: &Path,
    key: &Path,
    contract: &dcr_protocol::contract::Contract,
) -> Result<u64, PartyError> {
    let plain = open_signed(input, key, contract, &contract.output.blob)?;
    dcr_protocol::output::check(&contract.output, &plain).map_err(|e| {
        ferr(
            input,
            format!("signed result: breaks the contract's output rules: {e}"),
        )
    })?;
    let n = plain.len() as u64;
    write_private_atomically(out, |w| w.write_all(&plain).map_err(|e| ferr(out, e)))?;
    Ok(n)
}

/// Open the signed, sealed blob `blob` of a run (a run's output or a query's answer) as a
/// recipient, after its proof verified (see [`open_result`]); the plaintext, in memory.
pub fn open_signed(
    input: &Path,
    key: &Path,
    contract: &dcr_protocol::contract::Contract,
    blob: &str,
) -> Result<Zeroizing<Vec<u8>>, PartyError> {
    use dcr_protocol::result;
    let sk = read_secret_key(key)?;
    let mut r = std::io::BufReader::new(std::fs::File::open(input).map_err(|e| ferr(input, e))?);
    let mut prefix = [0u8; result::PREFIX_LEN];
    r.read_exact(&mut prefix)
        .map_err(|_| ferr(input, result::ResultError::NotSigned))?;
    let n = result::proof_len(&prefix).map_err(|e| ferr(input, e))?;
    let mut proof = vec![0u8; n];
    r.read_exact(&mut proof)
        .map_err(|_| ferr(input, "signed result: truncated proof"))?;
    let proof = result::parse_proof(&proof).map_err(|e| ferr(input, e))?;
    let (release, signed_digest) =
        result::verify_proof(&proof, &contract.signing_key(), &contract.digest(), blob)
            .map_err(|e| ferr(input, e))?;
    // Every dataset's key was released to that TEE: every owner's policy accepted it (a
    // release of one party's key alone could come from a TEE only that party vouched for).
    for d in &contract.datasets {
        if !release.keys.iter().any(|k| k.key_id == d.key_id) {
            return Err(ferr(
                input,
                format!(
                    "signed result: the release did not include dataset {}'s key {} (not every owner's policy accepted that TEE)",
                    d.id, d.key_id
                ),
            ));
        }
    }
    let mut hr = HashingReader {
        inner: r,
        hash: Sha256::new(),
    };
    // The result is small (a workload's output is capped by output_mib): read it whole, check
    // the proof's digest and the contract's output rules, then write it.
    // A workload's output is capped by output_mib; a query's answer adds its header line and
    // the query document (at most MAX_QUERY_JSON).
    let cap = contract
        .workloads
        .iter()
        .map(|w| w.limits.output_mib << 20)
        .max()
        .unwrap_or(0)
        + 64 * 1024;
    let mut o = dcr_protocol::recipients::open_as(&mut hr, &sk).map_err(|e| ferr(input, e))?;
    let mut plain = Zeroizing::new(Vec::new());
    (&mut o)
        .take(cap + 1)
        .read_to_end(&mut plain)
        .map_err(|e| ferr(input, e))?;
    if plain.len() as u64 > cap {
        return Err(ferr(
            input,
            format!("signed result: larger than output_mib ({cap} bytes)"),
        ));
    }
    drop(o);
    std::io::copy(&mut hr, &mut std::io::sink()).map_err(|e| ferr(input, e))?;
    let actual: [u8; 32] = std::mem::replace(&mut hr.hash, Sha256::new())
        .finalize()
        .into();
    result::check_digest(&signed_digest, &actual).map_err(|e| ferr(input, e))?;
    Ok(plain)
}

/// SHA-256 of a file, hex (for progress lines).
pub fn file_sha256(path: &Path) -> Result<String, PartyError> {
    let mut f = std::fs::File::open(path).map_err(|e| ferr(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf).map_err(|e| ferr(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn opened_plaintext_is_created_0600() {
        let d = std::env::temp_dir().join(format!("dcr-parties-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("plain"), b"the rows").unwrap();
        seal_file(
            &d.join("plain"),
            &d.join("plain.sealed"),
            "k1",
            &d.join("k1.dek"),
            4096,
        )
        .unwrap();
        // Whatever the umask (the test process's is usually 022: 0644 before the fix).
        open_with_dek(&d.join("plain.sealed"), &d.join("out"), &d.join("k1.dek")).unwrap();
        let mode = std::fs::metadata(d.join("out"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert_eq!(std::fs::read(d.join("out")).unwrap(), b"the rows");
        let _ = std::fs::remove_dir_all(&d);
    }
}
