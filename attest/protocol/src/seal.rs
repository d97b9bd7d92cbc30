//! Sealed data: a chunked AES-256-GCM stream (the STREAM construction of Hoang, Reyhanitabar,
//! Rogaway and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
//! CRYPTO 2015, §7), documented in docs/sealed-data.md.
//!
//! ```text
//! header  magic "DCRSEAL\0" (8) | version u16 = 1 | algorithm u16 = 1 (AES-256-GCM)
//!         | chunk_size u32 | nonce_prefix [7] | key_id_len u8 | key_id (1..=64 bytes)
//! chunk i AES-256-GCM(key = DEK, nonce = nonce_prefix ‖ u32 i ‖ last, aad = header bytes)
//!         = ciphertext ‖ tag (16)
//! ```
//! Integers are big-endian. Every chunk but the last carries exactly `chunk_size` plaintext
//! bytes; the last carries fewer (possibly zero) and has `last = 1` in its nonce. So a reader
//! that sees a full-size chunk knows it is not the last, and:
//! - truncation at a chunk boundary leaves no `last` chunk → error;
//! - truncation inside a chunk or appended bytes make a chunk fail authentication;
//! - reordering changes the counter in the nonce → authentication fails;
//! - any header change (version, chunk size, nonce prefix, key id) changes the AAD.
//!
//! Memory is bounded by one chunk on each side.

use std::io::{self, Read, Write};

use rand_core::CryptoRngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const MAGIC: [u8; 8] = *b"DCRSEAL\0";
pub const VERSION: u16 = 1;
pub const ALG_AES_256_GCM: u16 = 1;
pub const TAG_LEN: usize = 16;
pub const FIXED_HEADER_LEN: usize = 24;
pub const MAX_KEY_ID_LEN: usize = 64;
pub const MIN_CHUNK_SIZE: u32 = 16;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed header: {0}")]
    Header(String),
    #[error("key id {0:?}: must be 1-64 printable ASCII characters")]
    KeyId(String),
    #[error("chunk size {0}: must be {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error(
        "chunk {0} failed authentication (tampered, reordered or truncated stream, or wrong key)"
    )]
    Chunk(u32),
    #[error("truncated: the stream ends after chunk {0} without its final chunk")]
    Truncated(u32),
    #[error("stream too long: more than 2^32 chunks")]
    TooLong,
    #[error("data key: {0}")]
    Key(String),
}

impl From<SealError> for io::Error {
    fn from(e: SealError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A 256-bit data-encryption key; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Dek(pub [u8; 32]);

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek(..)")
    }
}

impl Dek {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Dek(k)
    }

    pub fn from_slice(b: &[u8]) -> Result<Self, SealError> {
        let a: [u8; 32] = b
            .try_into()
            .map_err(|_| SealError::Key(format!("{} bytes, expected 32", b.len())))?;
        Ok(Dek(a))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte AES-256 key"))
    }
}

pub fn check_key_id(id: &str) -> Result<(), SealError> {
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SealError::KeyId(id.to_string()));
    }
    Ok(())
}

/// The stream header (authenticated as the AAD of every chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub nonce_prefix: [u8; 7],
    pub key_id: String,
}

impl Header {
    pub fn new(
        key_id: &str,
        chunk_size: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, SealError> {
        check_key_id(key_id)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(SealError::ChunkSize(chunk_size));
        }
        let mut nonce_prefix = [0u8; 7];
        rng.fill_bytes(&mut nonce_prefix);
        Ok(Header {
            chunk_size,
            nonce_prefix,
            key_id: key_id.to_string(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED_HEADER_LEN + self.key_id.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&ALG_AES_256_GCM.to_be_bytes());
        b.extend_from_slice(&self.chunk_size.to_be_bytes());
        b.extend_from_slice(&self.nonce_prefix);
        b.push(self.key_id.len() as u8);
        b.extend_from_slice(self.key_id.as_bytes());
        b
    }

    /// Read and check a header; every field is validated before anything is decrypted.
    pub fn read_from(r: &mut impl Read) -> Result<Self, SealError> {
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        read_exact_or(r, &mut fixed, |n| {
            SealError::Header(format!(
                "truncated: {n} of the {FIXED_HEADER_LEN} fixed header bytes"
            ))
        })?;
        if fixed[..8] != MAGIC {
            return Err(SealError::Header(
                "magic: not a dcr sealed stream (expected \"DCRSEAL\\0\")".into(),
            ));
        }
        let version = u16::from_be_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(SealError::Header(format!(
                "version {version}: unknown (this build reads version {VERSION})"
            )));
        }
        let alg = u16::from_be_bytes([fixed[10], fixed[11]]);
        if alg != ALG_AES_256_GCM {
            return Err(SealError::Header(format!(
                "algorithm {alg}: unknown (1 = AES-256-GCM)"
            )));
        }
        let chunk_size = u32::from_be_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(SealError::ChunkSize(chunk_size));
        }
        let nonce_prefix: [u8; 7] = fixed[16..23].try_into().expect("7 bytes");
        let id_len = fixed[23] as usize;
        if id_len == 0 || id_len > MAX_KEY_ID_LEN {
            return Err(SealError::Header(format!(
                "key_id_len {id_len}: must be 1..={MAX_KEY_ID_LEN}"
            )));
        }
        let mut id = vec![0u8; id_len];
        read_exact_or(r, &mut id, |n| {
            SealError::Header(format!("truncated key id: {n} of {id_len} bytes"))
        })?;
        let key_id =
            String::from_utf8(id).map_err(|_| SealError::Header("key id is not ASCII".into()))?;
        check_key_id(&key_id)?;
        Ok(Header {
            chunk_size,
            nonce_prefix,
            key_id,
        })
    }

    fn nonce(&self, counter: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.nonce_prefix);
        n[7..11].copy_from_slice(&counter.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }
}

fn read_exact_or(
    r: &mut impl Read,
    buf: &mut [u8],
    err: impl Fn(usize) -> SealError,
) -> Result<(), SealError> {
    let n = read_full(r, buf).map_err(|e| SealError::Header(e.to_string()))?;
    if n < buf.len() {
        return Err(err(n));
    }
    Ok(())
}

/// Read until `buf` is full or EOF; returns the byte count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encrypts a stream: write plaintext, then call [`Sealer::finish`] (dropping without it
/// leaves a stream that readers reject as truncated).
pub struct Sealer<W: Write> {
    out: W,
    header: Header,
    aad: Vec<u8>,
    key: LessSafeKey,
    /// Plaintext of the chunk being filled; wiped after each chunk and on drop.
    buf: Zeroizing<Vec<u8>>,
    counter: u32,
    exhausted: bool,
}

impl<W: Write> Sealer<W> {
    /// Writes the header to `out` and returns the sealer.
    pub fn new(mut out: W, dek: &Dek, header: Header) -> io::Result<Self> {
        let aad = header.to_bytes();
        out.write_all(&aad)?;
        Ok(Sealer {
            out,
            key: dek.aead(),
            buf: Zeroizing::new(Vec::with_capacity(header.chunk_size as usize + TAG_LEN)),
            header,
            aad,
            counter: 0,
            exhausted: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        if self.exhausted {
            return Err(SealError::TooLong.into());
        }
        let nonce = self.header.nonce(self.counter, last);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&self.aad[..]), &mut self.buf)
            .map_err(|_| io::Error::other("AES-GCM seal failed"))?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(tag.as_ref())?;
        self.buf.zeroize();
        self.buf.clear();
        match self.counter.checked_add(1) {
            Some(c) => self.counter = c,
            None => self.exhausted = true,
        }
        Ok(())
    }

    /// Seal the final (short, possibly empty) chunk and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let cs = self.header.chunk_size as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let take = (cs - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == cs {
                self.emit(false)?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Decrypts a stream chunk by chunk. Each chunk is authenticated before any of its bytes are
/// returned; truncation is reported when the missing final chunk is noticed, so callers that
/// write plaintext somewhere must treat the output as invalid until `read` returned 0
/// (the CLI writes to a temporary file and renames it only then).
pub struct Opener<R: Read> {
    input: R,
    header: Header,
    aad: Vec<u8>,
    key: LessSafeKey,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    counter: u32,
    done: bool,
}

impl<R: Read> Opener<R> {
    /// `header` as returned by [`Header::read_from`] on the same reader.
    pub fn new(input: R, dek: &Dek, header: Header) -> Self {
        Opener {
            input,
            aad: header.to_bytes(),
            buf: vec![0u8; header.chunk_size as usize + TAG_LEN],
            header,
            key: dek.aead(),
            pos: 0,
            len: 0,
            counter: 0,
            done: false,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn next_chunk(&mut self) -> Result<(), SealError> {
        let full = self.header.chunk_size as usize + TAG_LEN;
        let n = read_full(&mut self.input, &mut self.buf[..full])
            .map_err(|e| SealError::Header(format!("reading chunk {}: {e}", self.counter)))?;
        if n == 0 {
            return Err(SealError::Truncated(self.counter.saturating_sub(1)));
        }
        let last = n < full;
        if n < TAG_LEN {
            return Err(SealError::Chunk(self.counter));
        }
        let nonce = self.header.nonce(self.counter, last);
        let pt = self
            .key
            .open_in_place(nonce, Aad::from(&self.aad[..]), &mut self.buf[..n])
            .map_err(|_| SealError::Chunk(self.counter))?;
        self.len = pt.len();
        self.pos = 0;
        if last {
            self.done = true;
        } else {
            self.counter = self.counter.checked_add(1).ok_or(SealError::TooLong)?;
        }
        Ok(())
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = (self.len - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Drop for Opener<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Seal a whole buffer (small data, tests).
pub fn seal_bytes(
    plaintext: &[u8],
    dek: &Dek,
    key_id: &str,
    chunk_size: u32,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, SealError> {
    let header = Header::new(key_id, chunk_size, rng)?;
    let mut s = Sealer::new(Vec::new(), dek, header).map_err(|e| SealError::Key(e.to_string()))?;
    s.write_all(plaintext)
        .map_err(|e| SealError::Key(e.to_string()))?;
    s.finish().map_err(|e| SealError::Key(e.to_string()))
}

/// Open a whole buffer; the key id in the header must be `key_id` when given.
pub fn open_bytes(sealed: &[u8], dek: &Dek) -> Result<(Header, Vec<u8>), SealError> {
    let mut r = sealed;
    let header = Header::read_from(&mut r)?;
    let mut o = Opener::new(r, dek, header.clone());
    let mut out = Vec::new();
    o.read_to_end(&mut out).map_err(|e| {
        e.into_inner()
            .and_then(|i| i.downcast::<SealError>().ok())
            .map(|b| *b)
            .unwrap_or_else(|| SealError::Header("read error".into()))
    })?;
    Ok((header, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn roundtrip(len: usize, cs: u32) {
        let dek = Dek::generate(&mut OsRng);
        let pt: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let sealed = seal_bytes(&pt, &dek, "k1", cs, &mut OsRng).unwrap();
        let chunks = len / cs as usize + 1;
        assert_eq!(
            sealed.len(),
            FIXED_HEADER_LEN + 2 + len + chunks * TAG_LEN,
            "len {len}"
        );
        let (h, out) = open_bytes(&sealed, &dek).unwrap();
        assert_eq!(h.key_id, "k1");
        assert_eq!(out, pt, "len {len}");
    }

    #[test]
    fn roundtrips_at_the_edges() {
        for cs in [16u32, 4096] {
            for len in [
                0,
                1,
                cs as usize - 1,
                cs as usize,
                cs as usize + 1,
                3 * cs as usize,
            ] {
                roundtrip(len, cs);
            }
        }
    }

    #[test]
    fn every_tamper_is_detected() {
        let dek = Dek::generate(&mut OsRng);
        let pt = vec![7u8; 100];
        let sealed = seal_bytes(&pt, &dek, "key", 32, &mut OsRng).unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(
                open_bytes(&t, &dek).is_err(),
                "flip at byte {i} not detected"
            );
        }
        // truncation at every length
        for n in 0..sealed.len() {
            assert!(open_bytes(&sealed[..n], &dek).is_err(), "truncation to {n}");
        }
        // reorder chunks 0 and 1 (each 32 + 16 bytes after the 27-byte header)
        let h = FIXED_HEADER_LEN + 3;
        let mut r = sealed.clone();
        r[h..h + 48].copy_from_slice(&sealed[h + 48..h + 96]);
        r[h + 48..h + 96].copy_from_slice(&sealed[h..h + 48]);
        assert_eq!(open_bytes(&r, &dek).unwrap_err(), SealError::Chunk(0));
        // appended bytes
        let mut a = sealed.clone();
        a.push(0);
        assert!(open_bytes(&a, &dek).is_err());
        // wrong key
        assert!(open_bytes(&sealed, &Dek::generate(&mut OsRng)).is_err());
        // truncation at a chunk boundary names the missing final chunk
        assert_eq!(
            open_bytes(&sealed[..h + 96], &dek).unwrap_err(),
            SealError::Truncated(1)
        );
    }
}
