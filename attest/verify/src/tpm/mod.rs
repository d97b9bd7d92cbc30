//! TPM 2.0 quotes: TPMS_ATTEST + TPMT_SIGNATURE + PCR values, in the files tpm2_quote writes
//! (`-m` message; `-s` in tss or plain format; `-o` in serialized, marshaled or values
//! format), checked
//! the way tpm2_checkquote checks them: signature by the AK (RSASSA, RSAPSS, ECDSA
//! P-256/P-384), TPM_GENERATED magic, quote type, qualifying data, PCR selection and PCR
//! digest. Layouts: TPM 2.0 Library Part 2 §10.12.12 (TPMS_ATTEST), §11.3.4 (TPMT_SIGNATURE),
//! §10.6.2 (TPML_PCR_SELECTION), §12.2.4 (TPMT_PUBLIC). The TPM structures (all big-endian)
//! are unmarshalled by `tpm2-protocol`; only tpm2-tools' "serialized" PCR file, a
//! little-endian dump of the tss2 C structs and no TPM wire format, is read here by hand.

use crate::verdict::Verdict;

mod decode;
mod keys;

pub use decode::*;
pub use keys::*;

const TPM_GENERATED_VALUE: u32 = tpm2_protocol::constant::TPM_GENERATED_VALUE;
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;

/// Expected PCR values (e.g. from measurements.json): SHA-256 bank index → value.
pub type ExpectedPcrs = Vec<(u32, Vec<u8>)>;

/// Verify a quote as tpm2_checkquote does, plus expected PCR values. Every check is listed.
pub fn verify(
    ak: &[u8],
    message: &[u8],
    signature: &[u8],
    pcrs: &[u8],
    qualification: &[u8],
    plain_hash: u16,
    expected: &ExpectedPcrs,
) -> Verdict {
    verify_quote(
        ak,
        message,
        signature,
        pcrs,
        qualification,
        plain_hash,
        expected,
    )
    .0
}

/// [`verify`], also returning the quoted PCR values (decoded once, when they decoded and
/// matched the quote's digest; the verdict says whether every check passed).
pub fn verify_quote(
    ak: &[u8],
    message: &[u8],
    signature: &[u8],
    pcrs: &[u8],
    qualification: &[u8],
    plain_hash: u16,
    expected: &ExpectedPcrs,
) -> (Verdict, Option<PcrValues>) {
    let mut v = Verdict::default();
    let attest = match parse_attest(message) {
        Ok(a) => {
            v.push(
                "attest.decode",
                true,
                format!("TPM_ST_ATTEST_QUOTE, {} bank(s)", a.selection.len()),
            );
            a
        }
        Err(e) => {
            v.push("attest.decode", false, e.to_string());
            return (v, None);
        }
    };
    v.push(
        "attest.magic",
        attest.magic == TPM_GENERATED_VALUE,
        format!("{:#010x} (TPM_GENERATED_VALUE is 0xff544347)", attest.magic),
    );
    let ak = match parse_ak(ak) {
        Ok(k) => k,
        Err(e) => {
            v.push("ak.decode", false, e.to_string());
            return (v, None);
        }
    };
    let sig = parse_signature(signature, plain_hash);
    match verify_signature(&ak, message, &sig) {
        Ok(d) => v.push("signature", true, d),
        Err(e) => v.push("signature", false, e),
    };
    v.push(
        "qualifying_data",
        attest.extra_data == qualification,
        format!(
            "extraData {} vs expected {}",
            hex::encode(&attest.extra_data),
            hex::encode(qualification)
        ),
    );
    let values = match parse_pcrs(pcrs, &attest.selection) {
        Ok(p) => p,
        Err(e) => {
            v.push("pcrs.decode", false, e.to_string());
            return (v, None);
        }
    };
    let file_selection: Selection = {
        let mut s: Selection = Vec::new();
        for (alg, idx, _) in &values {
            match s.iter_mut().find(|(a, _)| a == alg) {
                Some((_, v)) => v.push(*idx),
                None => s.push((*alg, vec![*idx])),
            }
        }
        s
    };
    let quoted: Selection = attest
        .selection
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .cloned()
        .collect();
    v.push(
        "pcrs.selection",
        file_selection == quoted,
        format!("quoted {quoted:?}, file {file_selection:?}"),
    );
    let hash_alg = match &sig {
        Signature::RsaSsa { hash, .. }
        | Signature::RsaPss { hash, .. }
        | Signature::Ecdsa { hash, .. }
        | Signature::Plain { hash, .. } => *hash,
    };
    let concat: Vec<u8> = values.iter().flat_map(|(_, _, d)| d.clone()).collect();
    let digest = hash(hash_alg, &concat).unwrap_or_default();
    v.push(
        "pcrs.digest",
        digest == attest.pcr_digest,
        format!(
            "H(PCR values) {} vs quoted pcrDigest {}",
            hex::encode(&digest),
            hex::encode(&attest.pcr_digest)
        ),
    );
    for (idx, want) in expected {
        let got = values
            .iter()
            .find(|(a, i, _)| *a == TPM_ALG_SHA256 && i == idx)
            .map(|(_, _, d)| d.clone());
        v.push(
            &format!("pcr.{idx}"),
            got.as_deref() == Some(want.as_slice()),
            format!(
                "quoted {} vs reference {}",
                got.map(|g| hex::encode(&g))
                    .unwrap_or_else(|| "not quoted".into()),
                hex::encode(want)
            ),
        );
    }
    (v, Some(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn be16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    fn tpm2b(v: &mut Vec<u8>, data: &[u8]) {
        be16(v, data.len() as u16);
        v.extend_from_slice(data);
    }

    /// A TPMS_ATTEST of a quote over sha256:0,16 (Part 2 §10.12.12), built field by field.
    fn quote_attest() -> Vec<u8> {
        let mut v = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
        be16(&mut v, 0x8018); // TPM_ST_ATTEST_QUOTE
        let mut signer = vec![0x00, 0x0b];
        signer.extend_from_slice(&[0x5a; 32]);
        tpm2b(&mut v, &signer); // qualifiedSigner
        tpm2b(&mut v, b"nonce"); // extraData
        v.extend_from_slice(&7u64.to_be_bytes()); // clock
        v.extend_from_slice(&2u32.to_be_bytes()); // resetCount
        v.extend_from_slice(&1u32.to_be_bytes()); // restartCount
        v.push(1); // safe
        v.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes()); // firmwareVersion
        v.extend_from_slice(&1u32.to_be_bytes()); // pcrSelect.count
        be16(&mut v, TPM_ALG_SHA256);
        v.extend_from_slice(&[3, 0x01, 0x00, 0x01]); // sizeofSelect, PCRs 0 and 16
        tpm2b(&mut v, &[0xd1; 32]); // pcrDigest
        v
    }

    #[test]
    fn attest_decodes_every_field() {
        let a = parse_attest(&quote_attest()).unwrap();
        assert_eq!(a.magic, TPM_GENERATED_VALUE);
        assert_eq!(a.attest_type, 0x8018);
        assert_eq!(a.qualified_signer.len(), 34);
        assert_eq!(a.extra_data, b"nonce");
        assert_eq!((a.clock, a.reset_count, a.restart_count), (7, 2, 1));
        assert_eq!(a.safe, 1);
        assert_eq!(a.firmware_version, 0x0102_0304_0506_0708);
        assert_eq!(a.selection, vec![(TPM_ALG_SHA256, vec![0, 16])]);
        assert_eq!(a.pcr_digest, [0xd1; 32]);
        // Another magic still decodes: the verdict reports it as its own check.
        let mut m = quote_attest();
        m[0] = 0;
        assert_eq!(parse_attest(&m).unwrap().magic, 0x0054_4347);
    }

    #[test]
    fn truncated_or_trailing_attest_is_refused_naming_the_structure() {
        let b = quote_attest();
        for n in 0..b.len() {
            let e = parse_attest(&b[..n]).unwrap_err();
            assert!(
                matches!(
                    e,
                    TpmError::Truncated {
                        what: "TPMS_ATTEST",
                        ..
                    }
                ),
                "{n}: {e}"
            );
            assert!(e.to_string().starts_with("TPMS_ATTEST: "), "{e}");
        }
        // Cut inside extraData (a TPM2B of 5 bytes at 42): the field and its offset are named.
        assert_eq!(
            parse_attest(&b[..45]).unwrap_err().to_string(),
            "TPMS_ATTEST: extraData (at byte 42) is truncated"
        );
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            parse_attest(&long).unwrap_err().to_string(),
            "TPMS_ATTEST: 1 trailing bytes"
        );
        // Other types and malformed fields are named too.
        let mut other = b.clone();
        other[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert_eq!(
            parse_attest(&other).unwrap_err().to_string(),
            "TPMS_ATTEST: type 0x8017 is not TPM_ST_ATTEST_QUOTE"
        );
        let mut unsafe_flag = b.clone();
        unsafe_flag[b.len() - 34 - 4 - 2 - 4 - 8 - 1] = 2;
        let e = parse_attest(&unsafe_flag).unwrap_err().to_string();
        assert!(e.starts_with("TPMS_ATTEST: clockInfo at byte "), "{e}");
    }

    /// A TPM2B_PUBLIC of an ECC P-256 signing key (Part 2 §12.2.5), from a fixed private key.
    fn p256_tpm2b_public() -> (Vec<u8>, p256::ecdsa::VerifyingKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let vk = *sk.verifying_key();
        let point = vk.to_encoded_point(false);
        let mut t = Vec::new();
        be16(&mut t, 0x0023); // type: TPM_ALG_ECC
        be16(&mut t, TPM_ALG_SHA256); // nameAlg
        t.extend_from_slice(&0x0005_0072u32.to_be_bytes()); // objectAttributes
        tpm2b(&mut t, &[]); // authPolicy
        be16(&mut t, 0x0010); // symmetric: TPM_ALG_NULL
        be16(&mut t, 0x0018); // scheme: TPM_ALG_ECDSA
        be16(&mut t, TPM_ALG_SHA256); // its hashAlg
        be16(&mut t, 0x0003); // curveID: NIST P-256
        be16(&mut t, 0x0010); // kdf: TPM_ALG_NULL
        tpm2b(&mut t, point.x().unwrap()); // unique.x
        tpm2b(&mut t, point.y().unwrap()); // unique.y
        let mut b = Vec::new();
        tpm2b(&mut b, &t);
        (b, vk)
    }

    #[test]
    fn ak_tpm2b_public_decodes_and_is_named_over_the_bytes_received() {
        let (b, vk) = p256_tpm2b_public();
        let (k, name) = parse_ak_tpm2b(&b).unwrap();
        assert!(matches!(k, AkPublic::P256(got) if got == vk));
        let mut want = TPM_ALG_SHA256.to_be_bytes().to_vec();
        want.extend_from_slice(&Sha256::digest(&b[2..]));
        assert_eq!(name, want);
    }

    #[test]
    fn truncated_or_trailing_tpm2b_public_is_refused_naming_the_structure() {
        let (b, _) = p256_tpm2b_public();
        for n in 0..b.len() {
            let e = parse_ak_tpm2b(&b[..n]).unwrap_err().to_string();
            assert!(e.starts_with("AK TPM2B_PUBLIC: "), "{n}: {e}");
        }
        // The size no longer covers the data.
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            parse_ak_tpm2b(&long).unwrap_err().to_string(),
            "AK TPM2B_PUBLIC: size field does not match the data (88 bytes declared, 89 present)"
        );
        // The size covers a byte after the TPMT_PUBLIC.
        let mut inner = long.clone();
        inner[..2].copy_from_slice(&((b.len() - 1) as u16).to_be_bytes());
        assert_eq!(
            parse_ak_tpm2b(&inner).unwrap_err().to_string(),
            "AK TPM2B_PUBLIC: 1 trailing bytes"
        );
        // A TPMT_PUBLIC cut short inside a consistent size: the field is named.
        let mut short = b[..b.len() - 1].to_vec();
        let size = (short.len() - 2) as u16;
        short[..2].copy_from_slice(&size.to_be_bytes());
        assert_eq!(
            parse_ak_tpm2b(&short).unwrap_err().to_string(),
            "AK TPM2B_PUBLIC: unique (at byte 22) is truncated"
        );
        // The EK parser shares the decoding (and then wants an RSA storage key).
        let e = crate::credential::parse_ek_public(&b[..b.len() - 3]).unwrap_err();
        assert!(
            e.to_string().starts_with("EK public: TPM2B_PUBLIC: "),
            "{e}"
        );
        assert_eq!(
            crate::credential::parse_ek_public(&b)
                .unwrap_err()
                .to_string(),
            "EK public: not an RSA key (only RSA EKs are supported)"
        );
    }

    #[test]
    fn marshaled_pcr_files_decode_and_malformed_ones_are_named() {
        // sha1:0 + sha256:3,9 and their values in two TPML_DIGEST lists.
        let mut b = 2u32.to_be_bytes().to_vec();
        be16(&mut b, TPM_ALG_SHA1);
        b.extend_from_slice(&[3, 0x01, 0x00, 0x00]);
        be16(&mut b, TPM_ALG_SHA256);
        b.extend_from_slice(&[3, 0x08, 0x02, 0x00]);
        b.extend_from_slice(&2u32.to_be_bytes()); // two TPML_DIGEST
        b.extend_from_slice(&2u32.to_be_bytes());
        tpm2b(&mut b, &[0x11; 20]);
        tpm2b(&mut b, &[0x33; 32]);
        b.extend_from_slice(&1u32.to_be_bytes());
        tpm2b(&mut b, &[0x99; 32]);
        let want = vec![
            (TPM_ALG_SHA1, 0, vec![0x11; 20]),
            (TPM_ALG_SHA256, 3, vec![0x33; 32]),
            (TPM_ALG_SHA256, 9, vec![0x99; 32]),
        ];
        assert_eq!(parse_pcrs(&b, &Vec::new()).unwrap(), want);
        assert_eq!(parse_marshaled(&b).unwrap(), want);
        let e = |b: &[u8]| parse_marshaled(b).unwrap_err().to_string();
        assert_eq!(
            e(&b[..b.len() - 1]),
            "PCR file (marshaled): TPML_DIGEST (at byte 80) is truncated"
        );
        assert_eq!(
            e(&[&b[..], &[0]].concat()),
            "PCR file (marshaled): 1 trailing bytes"
        );
        // A SHA-1 digest in the SHA-256 bank.
        let mut wrong = b.clone();
        wrong[46..48].copy_from_slice(&20u16.to_be_bytes());
        wrong.drain(48 + 20..48 + 32);
        assert_eq!(
            e(&wrong),
            "PCR file (marshaled): digest size does not match its bank"
        );
        // Neither format nor values of the quote's selection.
        let sel = vec![(TPM_ALG_SHA256, vec![0])];
        assert!(parse_pcrs(&b[..b.len() - 1], &sel)
            .unwrap_err()
            .to_string()
            .contains("neither tpm2-tools serialized or marshaled format nor values"));
    }

    #[test]
    fn tss_signatures_decode_and_anything_else_is_plain() {
        let mut ecdsa = Vec::new();
        be16(&mut ecdsa, 0x0018);
        be16(&mut ecdsa, TPM_ALG_SHA256);
        tpm2b(&mut ecdsa, &[1; 32]);
        tpm2b(&mut ecdsa, &[2; 32]);
        assert_eq!(
            parse_signature(&ecdsa, TPM_ALG_SHA384),
            Signature::Ecdsa {
                hash: TPM_ALG_SHA256,
                r: vec![1; 32],
                s: vec![2; 32]
            }
        );
        let mut rsapss = Vec::new();
        be16(&mut rsapss, 0x0016);
        be16(&mut rsapss, TPM_ALG_SHA384);
        tpm2b(&mut rsapss, &[3; 256]);
        assert_eq!(
            parse_signature(&rsapss, TPM_ALG_SHA256),
            Signature::RsaPss {
                hash: TPM_ALG_SHA384,
                sig: vec![3; 256]
            }
        );
        // Trailing bytes, truncation or an HMAC signature: the bytes are a plain signature.
        for b in [
            [ecdsa.as_slice(), &[0]].concat(),
            ecdsa[..ecdsa.len() - 1].to_vec(),
            [&[0x00, 0x05, 0x00, 0x0b][..], &[0xaa; 32]].concat(),
        ] {
            assert_eq!(
                parse_signature(&b, TPM_ALG_SHA256),
                Signature::Plain {
                    hash: TPM_ALG_SHA256,
                    bytes: b.clone()
                }
            );
        }
    }
}
