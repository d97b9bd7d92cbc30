//! dcr-verify on real third-party evidence from `../shared/fixtures` (read in place; the
//! directory is overridable with DCR_FIXTURES). Each verifier returns what it decoded with its
//! verdict; these check both against the bytes of the evidence itself.

use std::path::PathBuf;

use dcr_verify::{azure, snp, tdx, tpm};

const JAN_2026: u64 = 1_767_225_600; // `date -u -d 2026-01-01 +%s`
const JUN_2025: u64 = 1_750_809_600; // `date -u -d 2025-06-25 +%s`

fn fixtures(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DCR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: fixtures directory {} missing under CI",
        dir.display()
    );
    eprintln!(
        "SKIP {test}: fixtures directory {} missing (set DCR_FIXTURES)",
        dir.display()
    );
    None
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn snp_report_verifies_and_its_facts_are_the_reports() {
    let Some(fx) = fixtures("snp_report") else {
        return;
    };
    let d = fx.join("attest/snp/virtee-sev");
    let report = read(d.join("report_milan.bin"));
    let vcek = read(d.join("vcek_milan.der"));
    let (v, facts) = snp::verify_report(&report, &vcek, None, JAN_2026, &Default::default());
    assert!(v.ok(), "{v:?}");
    let f = facts.expect("decoded");
    // SEV-SNP ABI Table 22: MEASUREMENT at 0x90, REPORTED_TCB at 0x180 (little-endian).
    assert_eq!(f.report.measurement[..], report[0x90..0xC0]);
    assert_eq!(f.product, snp::Product::Milan);
    let raw = u64::from_le_bytes(report[0x180..0x188].try_into().unwrap());
    assert_eq!(f.tcb, snp::Tcb::decode(raw, snp::Product::Milan));
    // One bit of the signed part flipped: refused, naming the signature.
    let mut bad = report.clone();
    bad[0x90] ^= 1;
    let (v, _) = snp::verify_report(&bad, &vcek, None, JAN_2026, &Default::default());
    assert!(!v.ok());
    assert!(
        v.checks
            .iter()
            .any(|c| c.name == "report.signature" && !c.ok),
        "{v:?}"
    );
    // Truncated: nothing decoded.
    let (v, facts) = snp::verify_report(&report[..100], &vcek, None, JAN_2026, &Default::default());
    assert!(!v.ok() && facts.is_none());
}

#[test]
fn tdx_quote_verifies_and_returns_its_mrtd() {
    let Some(fx) = fixtures("tdx_quote") else {
        return;
    };
    let d = fx.join("attest/tdx/dcap-qvl");
    let quote = read(d.join("tdx_quote"));
    let coll = read(d.join("tdx_quote_collateral.json"));
    let (v, mrtd) = tdx::verify_quote(&quote, &coll, JUN_2025, &Default::default());
    assert!(v.ok(), "{v:?}");
    // Quote v4: 48-byte header, then the TD report with MRTD at +136.
    assert_eq!(mrtd.unwrap()[..], quote[48 + 136..48 + 184]);
    // The collateral of another quote type does not verify it.
    let (v, _) = tdx::verify_quote(&quote, b"{}", JUN_2025, &Default::default());
    assert!(!v.ok());
}

#[test]
fn tpm_quote_verifies_and_returns_the_quoted_pcrs() {
    let Some(fx) = fixtures("tpm_quote") else {
        return;
    };
    let d = fx.join("attest/tpm/swtpm-tpm2-tools-5.4");
    let nonce = hex::decode(String::from_utf8(read(d.join("nonce.hex"))).unwrap().trim()).unwrap();
    let (v, values) = tpm::verify_quote(
        &read(d.join("ak.pem")),
        &read(d.join("quote.msg")),
        &read(d.join("quote.sig")),
        &read(d.join("quote.pcrs")),
        &nonce,
        tpm::TPM_ALG_SHA256,
        &Vec::new(),
    );
    assert!(v.ok(), "{v:?}");
    let values = values.expect("decoded");
    // tpm2_quote's own YAML lists the same values.
    let yaml = String::from_utf8(read(d.join("quote.tpm2_quote-stdout.yaml"))).unwrap();
    assert!(!values.is_empty());
    for (_, idx, digest) in &values {
        let line = format!("{idx:<2}: 0x{}", hex::encode_upper(digest));
        assert!(yaml.contains(&line), "{line} not in {yaml}");
    }
    // Another nonce: only the qualifying data fails.
    let (v, _) = tpm::verify_quote(
        &read(d.join("ak.pem")),
        &read(d.join("quote.msg")),
        &read(d.join("quote.sig")),
        &read(d.join("quote.pcrs")),
        b"another nonce",
        tpm::TPM_ALG_SHA256,
        &Vec::new(),
    );
    let failed: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["qualifying_data"]);
}

#[test]
fn azure_snp_evidence_decodes_once_and_verifies() {
    let Some(fx) = fixtures("azure_snp") else {
        return;
    };
    let json = read(fx.join("attest/azure/trustee-az-snp-vtpm/evidence-v2.json"));
    let ev = azure::parse_snp_evidence(&json).unwrap();
    assert_eq!(ev.pcrs.len(), 24);
    let nonce = tpm::parse_attest(&ev.quote_message).unwrap().extra_data;
    let (v, facts) =
        azure::verify_snp_evidence(&ev, &nonce, JAN_2026, &Default::default(), &Vec::new());
    assert!(v.ok(), "{v:?}");
    // The SNP report is the HCL report's hardware report (after its 32-byte header).
    let f = facts.expect("decoded");
    assert_eq!(
        f.report.measurement[..],
        ev.hcl_report[32 + 0x90..32 + 0xC0]
    );
    // The typed document and the bytes give the same decode.
    let typed: dcr_protocol::wire::AzSnpVtpmEvidence = serde_json::from_slice(&json).unwrap();
    assert_eq!(azure::decode_snp_evidence(&typed).unwrap().pcrs, ev.pcrs);
    // Version 3 is not Trustee's: refused by name.
    let mut v3: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v3["version"] = "3".into();
    let e = azure::parse_snp_evidence(v3.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("version"), "{e}");
}

#[test]
fn tpm_structures_of_real_tpms_decode_as_tpm2_protocol_decodes_them() {
    use base64::Engine;
    use tpm2_protocol::{
        data::{Tpm2bPublic, TpmsAttest, TpmtSignature, TpmuAttest},
        TpmUnmarshal,
    };
    let Some(fx) = fixtures("tpm_structures") else {
        return;
    };
    let d = fx.join("attest/tpm/swtpm-tpm2-tools-5.4");
    // AK: the name credential activation binds is tpm2_createak's `-n` file.
    let ak = read(d.join("ak.tpm2b_public"));
    let (key, name) = tpm::parse_ak_tpm2b(&ak).unwrap();
    assert_eq!(name, read(d.join("ak.name")));
    let pem = tpm::parse_ak(&read(d.join("ak.pem"))).unwrap();
    assert_eq!(tpm::ak_spki_der(&key), tpm::ak_spki_der(&pem));
    // EK: an RSA-2048 storage key with AES-128-CFB.
    let ek_pub = read(d.join("ek.pub"));
    let ek = dcr_verify::credential::parse_ek_public(&ek_pub).unwrap();
    assert_eq!(
        (ek.modulus.len(), ek.exponent, ek.sym_key_bits),
        (256, 65537, 128)
    );
    // tpm2-protocol's whole-structure unmarshalers accept the same bytes, exactly.
    for public in [&ak, &ek_pub] {
        let (_, rest) = Tpm2bPublic::unmarshal(public).unwrap();
        assert!(rest.is_empty());
    }
    // Quotes: swtpm's (tss signatures) and Trustee's (SHA-384 ‖ zeros as extraData).
    let trustee: serde_json::Value =
        serde_json::from_slice(&read(fx.join("attest/tpm/trustee/tpm_evidence.json"))).unwrap();
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let quotes = [
        (read(d.join("quote.msg")), read(d.join("quote.sig"))),
        (read(d.join("quote2.msg")), read(d.join("quote2.sig"))),
        (
            b64(&trustee["tpm_quote"]["message"]),
            b64(&trustee["tpm_quote"]["signature"]),
        ),
    ];
    for (msg, sig) in &quotes {
        let a = tpm::parse_attest(msg).unwrap();
        let (whole, rest) = TpmsAttest::unmarshal(msg).unwrap();
        assert!(rest.is_empty());
        assert_eq!(a.extra_data, &whole.extra_data[..]);
        assert_eq!(a.firmware_version, whole.firmware_version.value());
        let TpmuAttest::Quote(q) = whole.attested else {
            panic!("not a quote");
        };
        assert_eq!(a.pcr_digest, &q.pcr_digest[..]);
        let banks: Vec<u16> = q.pcr_select.iter().map(|s| s.hash.value()).collect();
        assert_eq!(a.selection.iter().map(|s| s.0).collect::<Vec<_>>(), banks);
        assert!(matches!(
            tpm::parse_signature(sig, tpm::TPM_ALG_SHA256),
            tpm::Signature::RsaSsa { .. }
        ));
        let (_, rest) = TpmtSignature::unmarshal(sig).unwrap();
        assert!(rest.is_empty());
    }
    assert_eq!(
        tpm::parse_attest(&quotes[2].0).unwrap().extra_data.len(),
        64
    );
}

/// tpm2-tools' `-F marshaled` PCR file (TPML_PCR_SELECTION ‖ UINT32 n ‖ n × TPML_DIGEST) for
/// `values`, marshalled by tpm2-protocol as tss2's Tss2_MU_* would.
fn marshaled_pcrs(values: &tpm::PcrValues) -> Vec<u8> {
    use tpm2_protocol::{
        basic::TpmUint32,
        data::{
            Tpm2bDigest, TpmAlgId, TpmlDigest, TpmlPcrSelection, TpmsPcrSelect, TpmsPcrSelection,
        },
        TpmMarshal, TpmWriter,
    };
    let mut selection = TpmlPcrSelection::new();
    let mut banks: Vec<(u16, [u8; 3])> = Vec::new();
    for (alg, idx, _) in values {
        if banks.last().map(|b| b.0) != Some(*alg) {
            banks.push((*alg, [0; 3]));
        }
        banks.last_mut().unwrap().1[*idx as usize / 8] |= 1 << (idx % 8);
    }
    for (alg, bits) in &banks {
        selection
            .try_push(TpmsPcrSelection {
                hash: TpmAlgId::try_from(*alg).unwrap(),
                pcr_select: TpmsPcrSelect::try_from(&bits[..]).unwrap(),
            })
            .unwrap();
    }
    let mut buf = vec![0u8; 8192];
    let mut w = TpmWriter::new(&mut buf);
    selection.marshal(&mut w).unwrap();
    let lists: Vec<_> = values.chunks(8).collect();
    TpmUint32::from(lists.len() as u32).marshal(&mut w).unwrap();
    for chunk in lists {
        let mut list = TpmlDigest::new();
        for (_, _, d) in chunk {
            list.try_push(Tpm2bDigest::try_from(&d[..]).unwrap())
                .unwrap();
        }
        list.marshal(&mut w).unwrap();
    }
    w.as_bytes().to_vec()
}

#[test]
fn tpm_quote_with_a_marshaled_pcr_file_verifies() {
    let Some(fx) = fixtures("tpm_quote_marshaled") else {
        return;
    };
    let d = fx.join("attest/tpm/swtpm-tpm2-tools-5.4");
    let nonce = hex::decode(String::from_utf8(read(d.join("nonce.hex"))).unwrap().trim()).unwrap();
    for q in ["quote", "quote2"] {
        let msg = read(d.join(format!("{q}.msg")));
        let serialized = read(d.join(format!("{q}.pcrs")));
        let selection = tpm::parse_attest(&msg).unwrap().selection;
        let values = tpm::parse_pcrs(&serialized, &selection).unwrap();
        let marshaled = marshaled_pcrs(&values);
        assert_eq!(tpm::parse_pcrs(&marshaled, &selection).unwrap(), values);
        let (v, got) = tpm::verify_quote(
            &read(d.join("ak.pem")),
            &msg,
            &read(d.join(format!("{q}.sig"))),
            &marshaled,
            &nonce,
            tpm::TPM_ALG_SHA256,
            &Vec::new(),
        );
        assert!(v.ok(), "{q}: {v:?}");
        assert_eq!(got.unwrap(), values);
    }
}
