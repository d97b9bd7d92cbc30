//! `dcr-attest verify nitro` and `dcr_verify::nitro` on the four genuine AWS Nitro Enclaves
//! attestation documents in ../shared/fixtures/attest/nitro (PROVENANCE.md): each verifies at
//! its own timestamp; a flipped byte in the signed part, a truncated chain, a forged chain
//! under another root, a time outside the leaf's validity, non-strict CBOR (duplicate keys,
//! indefinite strings, unknown fields, trailing bytes) and an unsigned (QEMU-style) document
//! are refused with the failing check named. The expected values (PCR 0 prefixes, chain
//! lengths) come from PROVENANCE.md, which an independent Python/OpenSSL check produced.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ciborium::Value;
use dcr_tests::*;
use dcr_verify::nitro;

/// (file, PCR 0's first 16 hex digits from PROVENANCE.md, debug-mode enclave)
const DOCS: [(&str, &str, bool); 4] = [
    ("choracle-1.cbor", "d41c32ee61300488", false),
    ("nitro-validator-1.cbor", "ec74bfbe7f7445a6", false),
    ("go-nitro-attestation-1.cbor", "0000000000000000", true),
    (
        "sparsity-aws-nitro-enclave-attestation-1.cbor",
        "ca78fbe0b97bbfe1",
        false,
    ),
];

fn dir(test: &str) -> Option<PathBuf> {
    Some(fixtures(test)?.join("attest/nitro"))
}

fn verify_cli(doc: &Path, extra: &[&str]) -> Output {
    Command::new(dcr_attest())
        .args(["verify", "nitro"])
        .arg(format!("--doc={}", doc.display()))
        .args(extra)
        .output()
        .unwrap()
}

/// The four items of the untagged COSE_Sign1: protected (bytes), unprotected, payload (bytes),
/// signature.
fn split(doc: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let v: Value = ciborium::from_reader(doc).unwrap();
    let Value::Array(items) = v else { panic!() };
    let b = |i: usize| items[i].as_bytes().unwrap().clone();
    (b(0), b(2), b(3))
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn assemble(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    cbor(&Value::Array(vec![
        Value::Bytes(protected.to_vec()),
        Value::Map(vec![]),
        Value::Bytes(payload.to_vec()),
        Value::Bytes(signature.to_vec()),
    ]))
}

/// The payload map's entries, for editing.
fn payload_map(payload: &[u8]) -> Vec<(Value, Value)> {
    let v: Value = ciborium::from_reader(payload).unwrap();
    let Value::Map(m) = v else { panic!() };
    m
}

fn set(m: &mut [(Value, Value)], key: &str, v: Value) {
    let e = m
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap();
    e.1 = v;
}

fn get<'a>(m: &'a [(Value, Value)], key: &str) -> &'a Value {
    &m.iter().find(|(k, _)| k.as_text() == Some(key)).unwrap().1
}

fn failing(v: &dcr_verify::verdict::Verdict) -> Vec<String> {
    v.checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.clone())
        .collect()
}

fn at_doc_time(doc: &[u8]) -> u64 {
    nitro::document_time(&nitro::parse(doc).unwrap().doc)
}

#[test]
fn every_real_document_verifies_at_its_own_time() {
    let Some(d) = dir("every_real_document_verifies") else {
        return;
    };
    for (file, pcr0, debug) in DOCS {
        let p = d.join(file);
        let o = verify_cli(&p, &["--allow-debug"]);
        accepted(&o);
        let err = stderr(&o);
        assert!(err.contains(&format!("debug={debug}")), "{file}: {err}");
        if !debug {
            assert!(err.contains(&format!("pcr0={pcr0}")), "{file}: {err}");
        }
        // Five certificates: root, regional, zonal, instance, leaf (PROVENANCE.md).
        let out = stdout(&o);
        assert_eq!(out.matches(".signature: signed by").count(), 5, "{out}");
        // A debug-mode enclave (PCR 0-2 zero) is refused unless allowed.
        let o = verify_cli(&p, &[]);
        if debug {
            refused_for(&o, &["enclave.debug"]);
        } else {
            accepted(&o);
        }
        // Today every chain has long expired: a live check refuses it.
        let o = verify_cli(&p, &["--allow-debug", "--at=2026-12-01T00:00:00Z"]);
        refused_for(&o, &["chain.leaf.validity"]);
        // The same bytes behind CBOR tag 18 (COSE_Sign1_Tagged) verify too.
        let mut tagged = vec![0xd2];
        tagged.extend_from_slice(&std::fs::read(&p).unwrap());
        let (v, got) = nitro::verify(
            &tagged,
            at_doc_time(&tagged[1..]),
            &nitro::NitroPolicy {
                allow_debug: true,
                ..Default::default()
            },
        );
        assert!(v.ok() && got.is_some(), "{file}: {:?}", failing(&v));
    }
}

#[test]
fn a_flipped_byte_in_the_signed_part_is_refused() {
    let Some(d) = dir("a_flipped_byte_in_the_signed_part_is_refused") else {
        return;
    };
    let policy = nitro::NitroPolicy {
        allow_debug: true,
        ..Default::default()
    };
    for file in ["choracle-1.cbor", "nitro-validator-1.cbor"] {
        let doc = std::fs::read(d.join(file)).unwrap();
        let at = at_doc_time(&doc);
        let (protected, payload, signature) = split(&doc);
        let p0 = find(&doc, &payload);
        let h0 = find(&doc, &protected);
        let s0 = find(&doc, &signature);
        // Every byte of the protected header and of the payload outside the certificates;
        // every 5th inside them (each certificate's own signature covers the rest); every
        // byte of the signature.
        let certs: Vec<(usize, usize)> = {
            let m = payload_map(&payload);
            let mut c = vec![get(&m, "certificate").as_bytes().unwrap().clone()];
            for x in get(&m, "cabundle").as_array().unwrap() {
                c.push(x.as_bytes().unwrap().clone());
            }
            c.iter()
                .map(|c| {
                    let s = p0 + find(&payload, c);
                    (s, s + c.len())
                })
                .collect()
        };
        let in_cert = |i: usize| certs.iter().any(|(s, e)| (*s..*e).contains(&i));
        let mut offsets: Vec<usize> = (h0..h0 + protected.len()).collect();
        offsets.extend((p0..p0 + payload.len()).filter(|i| !in_cert(*i) || i % 5 == 0));
        offsets.extend(s0..s0 + signature.len());
        let mut n = 0;
        for i in offsets {
            let mut t = doc.clone();
            t[i] ^= 0x01;
            let (v, got) = nitro::verify(&t, at, &policy);
            assert!(
                !v.ok() && got.is_none(),
                "{file}: byte {i} flipped accepted"
            );
            n += 1;
        }
        assert!(n > 1800, "{file}: only {n} flips tried");
        // Truncated anywhere: refused at decoding.
        for cut in [1, 97, doc.len() / 2, doc.len() - 1] {
            let (v, _) = nitro::verify(&doc[..cut], at, &policy);
            assert_eq!(failing(&v), ["document.decode"], "{file}: cut at {cut}");
        }
    }
}

/// Find `needle` in `hay` (the offset of a field's bytes in the document).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("field bytes in the document")
}

/// A chain of our own under a root of our own (ECDSA P-384, like AWS's): root → CA → leaf,
/// and the leaf's signing key.
fn forged_chain() -> (Vec<u8>, Vec<Vec<u8>>, p384::ecdsa::SigningKey) {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
    };
    let ca_params = |cn: &str, path: u8| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2049, 1, 1);
        p
    };
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let root_params = ca_params("aws.nitro-enclaves", 2);
    let root = root_params.self_signed(&root_key).unwrap();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ca_params = ca_params("forged.aws.nitro-enclaves", 1);
    let ca_cert = ca_params
        .signed_by(
            &ca_key,
            &rcgen::Issuer::from_params(&root_params, &root_key),
        )
        .unwrap();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name
        .push(rcgen::DnType::CommonName, "i-forged.aws.nitro-enclaves");
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    lp.not_before = rcgen::date_time_ymd(2019, 1, 1);
    lp.not_after = rcgen::date_time_ymd(2049, 1, 1);
    let leaf = lp
        .signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let sk = {
        use p384::pkcs8::DecodePrivateKey;
        p384::ecdsa::SigningKey::from_pkcs8_der(&leaf_key.serialize_der()).unwrap()
    };
    (
        leaf.der().to_vec(),
        vec![root.der().to_vec(), ca_cert.der().to_vec()],
        sk,
    )
}

/// Sign `payload` as the NSM does (ES384 over the Sig_structure) with `sk`.
fn sign(protected: &[u8], payload: &[u8], sk: &p384::ecdsa::SigningKey) -> Vec<u8> {
    use p384::ecdsa::signature::Signer;
    let tbs = cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(vec![]),
        Value::Bytes(payload.to_vec()),
    ]));
    let s: p384::ecdsa::Signature = sk.sign(&tbs);
    assemble(protected, payload, &s.to_bytes())
}

#[test]
fn truncated_or_foreign_chains_and_times_outside_the_leaf_are_refused() {
    let Some(d) = dir("truncated_or_foreign_chains") else {
        return;
    };
    let path = d.join("nitro-validator-1.cbor");
    let doc = std::fs::read(&path).unwrap();
    let at = at_doc_time(&doc);
    let policy = nitro::NitroPolicy::default();
    let (protected, payload, signature) = split(&doc);

    // A chain missing its regional CA: the zonal CA's issuer is then not the certificate
    // before it (and the edited payload no longer matches the signature).
    let mut m = payload_map(&payload);
    let mut bundle = get(&m, "cabundle").as_array().unwrap().clone();
    bundle.remove(1);
    set(&mut m, "cabundle", Value::Array(bundle));
    let t = assemble(&protected, &cbor(&Value::Map(m)), &signature);
    let (v, got) = nitro::verify(&t, at, &policy);
    let f = failing(&v);
    assert!(got.is_none());
    assert!(
        f.contains(&"chain.cabundle[1].signature".to_string()),
        "{f:?}"
    );
    assert!(f.contains(&"signature".to_string()), "{f:?}");
    // Only the root: the leaf is not signed by it.
    let mut m = payload_map(&payload);
    let root = get(&m, "cabundle").as_array().unwrap()[0].clone();
    set(&mut m, "cabundle", Value::Array(vec![root]));
    let t = assemble(&protected, &cbor(&Value::Map(m)), &signature);
    let f = failing(&nitro::verify(&t, at, &policy).0);
    assert!(f.contains(&"chain.leaf.signature".to_string()), "{f:?}");

    // A chain of our own, a document signed by its leaf: everything verifies except the root
    // pin. Pinning that root instead (the --root flag) accepts it: the pin is what decides.
    let (leaf, bundle, sk) = forged_chain();
    let mut m = payload_map(&payload);
    set(&mut m, "certificate", Value::Bytes(leaf));
    set(
        &mut m,
        "cabundle",
        Value::Array(bundle.iter().cloned().map(Value::Bytes).collect()),
    );
    let forged = sign(&protected, &cbor(&Value::Map(m.clone())), &sk);
    let (v, _) = nitro::verify(&forged, at, &policy);
    assert_eq!(failing(&v), ["chain.root"]);
    let tmp = TempDir::new("nitro-forged");
    let fp = tmp.path().join("forged.cbor");
    std::fs::write(&fp, &forged).unwrap();
    let rp = tmp.path().join("root.der");
    std::fs::write(&rp, &bundle[0]).unwrap();
    refused_for(&verify_cli(&fp, &[]), &["chain.root"]);
    accepted(&verify_cli(&fp, &[&format!("--root={}", rp.display())]));
    // The real document under the forged root pin is refused.
    refused_for(
        &verify_cli(&path, &[&format!("--root={}", rp.display())]),
        &["chain.root"],
    );

    // Just outside the leaf's validity (read from the certificate with OpenSSL, not us).
    let leaf_der = tmp.path().join("leaf.der");
    let pm = payload_map(&payload);
    std::fs::write(&leaf_der, get(&pm, "certificate").as_bytes().unwrap()).unwrap();
    let dates = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-dates", "-in"])
        .arg(&leaf_der)
        .output()
        .unwrap();
    let dates = stdout(&dates);
    let not_after = openssl_date(&dates, "notAfter=");
    let not_before = openssl_date(&dates, "notBefore=");
    for (t, ok) in [
        (not_before - 1, false),
        (not_before, true),
        (not_after, true),
        (not_after + 1, false),
    ] {
        let o = verify_cli(&path, &[&format!("--at={}", rfc3339(t))]);
        if ok {
            accepted(&o);
        } else {
            refused_for(&o, &["chain.leaf.validity"]);
        }
    }
}

/// `Nov 30 19:22:48 2024 GMT` after `key` in `openssl x509 -dates` output → Unix seconds.
fn openssl_date(text: &str, key: &str) -> u64 {
    let line = text.lines().find_map(|l| l.strip_prefix(key)).unwrap();
    let o = Command::new("date")
        .args(["-u", "-d", line, "+%s"])
        .output()
        .unwrap();
    stdout(&o).trim().parse().unwrap()
}

fn rfc3339(t: u64) -> String {
    let o = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    stdout(&o).trim().to_string()
}

#[test]
fn non_strict_cbor_and_unsigned_documents_are_refused() {
    let Some(d) = dir("non_strict_cbor") else {
        return;
    };
    let doc = std::fs::read(d.join("choracle-1.cbor")).unwrap();
    let at = at_doc_time(&doc);
    let (protected, payload, _) = split(&doc);
    // Signed by a chain pinned here, so that the signature is valid and only the CBOR is
    // at fault.
    let (leaf, bundle, sk) = forged_chain();
    let root_fp: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&bundle[0]).into()
    };
    let policy = nitro::NitroPolicy {
        root_sha256: Some(root_fp),
        ..Default::default()
    };
    let mut m = payload_map(&payload);
    set(&mut m, "certificate", Value::Bytes(leaf));
    set(
        &mut m,
        "cabundle",
        Value::Array(bundle.into_iter().map(Value::Bytes).collect()),
    );
    let good = cbor(&Value::Map(m.clone()));
    let (v, _) = nitro::verify(&sign(&protected, &good, &sk), at, &policy);
    assert!(v.ok(), "{:?}", failing(&v));

    let refused = |payload: &[u8], why: &str| {
        let (v, got) = nitro::verify(&sign(&protected, payload, &sk), at, &policy);
        assert_eq!(failing(&v), ["document.decode"], "{why}");
        assert!(got.is_none());
        let detail = &v.checks[0].detail;
        assert!(detail.contains(why), "{why}: {detail}");
    };
    // A second "nonce" (a verifier reading the first would see another value than one
    // reading the last).
    let mut dup = m.clone();
    dup.push((Value::Text("nonce".into()), Value::Bytes(vec![1; 32])));
    refused(&cbor(&Value::Map(dup)), "duplicate map key");
    // An unknown field.
    let mut extra = m.clone();
    extra.push((Value::Text("debug".into()), Value::Bool(false)));
    refused(&cbor(&Value::Map(extra)), "unknown field \"debug\"");
    // A missing field.
    let missing: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.as_text() != Some("digest"))
        .cloned()
        .collect();
    refused(&cbor(&Value::Map(missing)), "digest: missing");
    // Another digest.
    let mut sha = m.clone();
    set(&mut sha, "digest", Value::Text("SHA256".into()));
    refused(&cbor(&Value::Map(sha)), "expected \"SHA384\"");
    // user_data over 512 bytes.
    let mut big = m.clone();
    set(&mut big, "user_data", Value::Bytes(vec![0; 513]));
    refused(&cbor(&Value::Map(big)), "user_data: 513 bytes");
    // The nonce as an indefinite-length (chunked) byte string: splice its encoding.
    let mut n = m.clone();
    set(&mut n, "nonce", Value::Bytes(vec![0xab; 4]));
    let enc = cbor(&Value::Map(n));
    let at_nonce = find(&enc, &[0x44, 0xab, 0xab, 0xab, 0xab]);
    let mut chunked = enc[..at_nonce].to_vec();
    chunked.extend_from_slice(&[0x5f, 0x42, 0xab, 0xab, 0x42, 0xab, 0xab, 0xff]);
    chunked.extend_from_slice(&enc[at_nonce + 5..]);
    refused(&chunked, "indefinite-length string");
    // A byte after the document.
    let mut trailing = sign(&protected, &good, &sk);
    trailing.push(0);
    let (v, _) = nitro::verify(&trailing, at, &policy);
    assert!(v.checks[0].detail.contains("1 trailing bytes"), "{v:?}");
    // QEMU's virtio-nsm: alg -1 (unassigned), a zero signature.
    let unsigned = assemble(&[0xa1, 0x01, 0x20], &good, &[0; 96]);
    let (v, _) = nitro::verify(&unsigned, at, &policy);
    assert_eq!(failing(&v), ["document.decode"], "{v:?}");
    // ES256 (-7) named in the header: refused by name.
    let es256 = assemble(&[0xa1, 0x01, 0x26], &good, &[0; 96]);
    let (v, _) = nitro::verify(&es256, at, &policy);
    assert!(v.checks[0].detail.contains("expected ES384"), "{v:?}");
    // The real document's signature over a payload with another nonce.
    let (p, _, s) = split(&doc);
    let mut other = payload_map(&payload);
    set(&mut other, "nonce", Value::Bytes(vec![0; 32]));
    let (v, _) = nitro::verify(
        &assemble(&p, &cbor(&Value::Map(other)), &s),
        at,
        &nitro::NitroPolicy::default(),
    );
    assert!(failing(&v).contains(&"signature".to_string()), "{v:?}");
}

#[test]
fn pcrs_and_binding_are_compared_when_asked() {
    let Some(d) = dir("pcrs_and_binding_are_compared") else {
        return;
    };
    let path = d.join("choracle-1.cbor");
    let doc = std::fs::read(&path).unwrap();
    let (_, payload, _) = split(&doc);
    let m = payload_map(&payload);
    let pcrs = get(&m, "pcrs").as_map().unwrap();
    let pcr = |i: i64| {
        let v = pcrs
            .iter()
            .find(|(k, _)| k.as_integer() == Some(i.into()))
            .unwrap();
        hex::encode(v.1.as_bytes().unwrap())
    };
    assert!(pcr(0).starts_with("d41c32ee61300488"));
    let tmp = TempDir::new("nitro-expected");
    let write = |name: &str, p0: String| {
        let mut r = tpm_reference(&[]);
        r["measurements"] = serde_json::json!({
            "nitro": {"pcrs": {"0": p0, "1": pcr(1), "2": pcr(2)}}
        });
        let p = tmp.path().join(name);
        std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
        p
    };
    let good = write("good.json", pcr(0));
    let mut flipped = pcr(0);
    flipped.replace_range(0..1, "e");
    let bad = write("bad.json", flipped);
    accepted(&verify_cli(
        &path,
        &[&format!("--expected={}", good.display())],
    ));
    refused_for(
        &verify_cli(&path, &[&format!("--expected={}", bad.display())]),
        &["pcr.0", "reference.nitro.pcr.0"],
    );
    // A reference without a nitro section is an error naming it, not a pass.
    let tpm_only = tmp.path().join("tpm.json");
    std::fs::write(
        &tpm_only,
        serde_json::to_vec(&tpm_reference(&[(4, "00".repeat(32))])).unwrap(),
    )
    .unwrap();
    let o = verify_cli(&path, &[&format!("--expected={}", tpm_only.display())]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("nitro.pcrs"), "{}", stderr(&o));
    // The binding fields.
    let user_data = hex::encode(get(&m, "user_data").as_bytes().unwrap());
    let nonce = hex::encode(get(&m, "nonce").as_bytes().unwrap());
    accepted(&verify_cli(
        &path,
        &[
            &format!("--user-data={user_data}"),
            &format!("--nonce={nonce}"),
        ],
    ));
    refused_for(
        &verify_cli(&path, &[&format!("--nonce={}", "00".repeat(32))]),
        &["nonce"],
    );
    refused_for(
        &verify_cli(&path, &[&format!("--user-data={}", "00".repeat(48))]),
        &["user_data"],
    );
}
