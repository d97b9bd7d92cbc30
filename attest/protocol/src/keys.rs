//! Key types and their text forms: HPKE recipient keys (RFC 9180 base mode,
//! DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM) and Ed25519 service signing keys.
//!
//! Text forms (in contracts, policies and key files): `x25519:<64 hex>` for HPKE public keys,
//! `ed25519:<64 hex>` for signing public keys.

use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{what}: expected {prefix}:<64 hex digits>")]
    Text {
        what: &'static str,
        prefix: &'static str,
    },
    #[error("{0}: not a valid key")]
    Invalid(&'static str),
    #[error("HPKE open failed (wrong key, wrong binding or tampered ciphertext)")]
    Open,
    #[error("HPKE seal failed: {0}")]
    Seal(String),
    #[error("signature does not verify with the pinned key {0}")]
    Signature(String),
}

fn parse_text<const N: usize>(
    s: &str,
    prefix: &'static str,
    what: &'static str,
) -> Result<[u8; N], KeyError> {
    let err = || KeyError::Text { what, prefix };
    let hex = s
        .trim()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(err)?;
    let v = hex::decode(hex).map_err(|_| err())?;
    v.try_into().map_err(|_| err())
}

/// An HPKE (X25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HpkePublic(pub [u8; 32]);

impl std::fmt::Debug for HpkePublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl HpkePublic {
    pub fn from_text(s: &str) -> Result<Self, KeyError> {
        Ok(HpkePublic(parse_text(s, "x25519", "HPKE public key")?))
    }
    pub fn to_text(&self) -> String {
        format!("x25519:{}", hex::encode(self.0))
    }
    /// SHA-256 of the raw key: how sealed outputs name their recipients.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
    fn kem(&self) -> Result<<Kem as hpke::Kem>::PublicKey, KeyError> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(&self.0)
            .map_err(|_| KeyError::Invalid("HPKE public key"))
    }
}

/// An HPKE (X25519) private key; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HpkeSecret(pub [u8; 32]);

impl std::fmt::Debug for HpkeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HpkeSecret(..)")
    }
}

impl HpkeSecret {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let (sk, _) = Kem::gen_keypair(&mut RngAdapter(rng));
        let mut b = [0u8; 32];
        b.copy_from_slice(&sk.to_bytes());
        HpkeSecret(b)
    }
    pub fn from_text(s: &str) -> Result<Self, KeyError> {
        Ok(HpkeSecret(parse_text(
            s,
            "x25519-secret",
            "HPKE secret key",
        )?))
    }
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("x25519-secret:{}", hex::encode(self.0)))
    }
    fn kem(&self) -> Result<<Kem as hpke::Kem>::PrivateKey, KeyError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&self.0)
            .map_err(|_| KeyError::Invalid("HPKE secret key"))
    }
    pub fn public(&self) -> HpkePublic {
        let pk = Kem::sk_to_pk(&self.kem().expect("32-byte X25519 scalar"));
        let mut b = [0u8; 32];
        b.copy_from_slice(&pk.to_bytes());
        HpkePublic(b)
    }
}

/// hpke 0.13 takes a `rand_core` 0.9 RNG; the rest of the tree (RustCrypto's old generation)
/// uses `rand_core` 0.6. This forwards one to the other.
struct RngAdapter<'a, R: CryptoRngCore>(&'a mut R);
impl<R: CryptoRngCore> rand_core_09::RngCore for RngAdapter<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        self.0.fill_bytes(d)
    }
}
impl<R: CryptoRngCore> rand_core_09::CryptoRng for RngAdapter<'_, R> {}

/// HPKE base-mode single-shot seal: returns (enc, ciphertext).
pub fn hpke_seal(
    to: &HpkePublic,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<([u8; 32], Vec<u8>), KeyError> {
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &to.kem()?,
        info,
        plaintext,
        aad,
        &mut RngAdapter(rng),
    )
    .map_err(|e| KeyError::Seal(e.to_string()))?;
    let mut e = [0u8; 32];
    e.copy_from_slice(&enc.to_bytes());
    Ok((e, ct))
}

/// HPKE base-mode single-shot open.
pub fn hpke_open(
    sk: &HpkeSecret,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| KeyError::Open)?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk.kem()?,
        &enc,
        info,
        ciphertext,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| KeyError::Open)
}

/// An Ed25519 public key (the service's response-signing key pinned in the contract).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SigningPublic(pub [u8; 32]);

impl std::fmt::Debug for SigningPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl SigningPublic {
    pub fn from_text(s: &str) -> Result<Self, KeyError> {
        let b = parse_text(s, "ed25519", "signing public key")?;
        ed25519_dalek::VerifyingKey::from_bytes(&b)
            .map_err(|_| KeyError::Invalid("Ed25519 public key"))?;
        Ok(SigningPublic(b))
    }
    pub fn to_text(&self) -> String {
        format!("ed25519:{}", hex::encode(self.0))
    }
    /// Verify `signature` over `domain ‖ message` (strict Ed25519: no malleable signatures).
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let err = || KeyError::Signature(self.to_text());
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| err())?;
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| err())?;
        let mut m = domain.to_vec();
        m.extend_from_slice(message);
        vk.verify_strict(&m, &sig).map_err(|_| err())
    }
}

/// An Ed25519 signing key; zeroized on drop (ed25519-dalek's `zeroize` feature).
pub struct SigningSecret(ed25519_dalek::SigningKey);

impl SigningSecret {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        SigningSecret(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
    pub fn from_text(s: &str) -> Result<Self, KeyError> {
        let seed = Zeroizing::new(parse_text::<32>(s, "ed25519-secret", "signing secret key")?);
        Ok(SigningSecret(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("ed25519-secret:{}", hex::encode(self.0.to_bytes())))
    }
    pub fn public(&self) -> SigningPublic {
        SigningPublic(self.0.verifying_key().to_bytes())
    }
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        let mut m = domain.to_vec();
        m.extend_from_slice(message);
        self.0.sign(&m).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn hpke_binds_info_and_aad() {
        let sk = HpkeSecret::generate(&mut OsRng);
        let pk = sk.public();
        assert_eq!(HpkePublic::from_text(&pk.to_text()).unwrap(), pk);
        let (enc, ct) = hpke_seal(&pk, b"info", b"aad", b"secret", &mut OsRng).unwrap();
        assert_eq!(
            &hpke_open(&sk, &enc, b"info", b"aad", &ct).unwrap()[..],
            b"secret"
        );
        assert_eq!(
            hpke_open(&sk, &enc, b"infx", b"aad", &ct).unwrap_err(),
            KeyError::Open
        );
        assert_eq!(
            hpke_open(&sk, &enc, b"info", b"aax", &ct).unwrap_err(),
            KeyError::Open
        );
        let other = HpkeSecret::generate(&mut OsRng);
        assert_eq!(
            hpke_open(&other, &enc, b"info", b"aad", &ct).unwrap_err(),
            KeyError::Open
        );
    }

    #[test]
    fn signatures_bind_domain_and_message() {
        let sk = SigningSecret::generate(&mut OsRng);
        let pk = sk.public();
        let s = sk.sign(b"d", b"m");
        pk.verify(b"d", b"m", &s).unwrap();
        assert!(pk.verify(b"d", b"n", &s).is_err());
        assert!(pk.verify(b"e", b"m", &s).is_err());
        let sk2 = SigningSecret::from_text(&sk.to_text()).unwrap();
        assert_eq!(sk2.public(), pk);
        assert!(HpkePublic::from_text("x25519:00").is_err());
        assert!(SigningPublic::from_text(&pk.to_text().replace("ed25519", "x25519")).is_err());
    }
}
