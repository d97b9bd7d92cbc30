//! Evidence → claims: each platform's evidence typed once ([`Evidence::from_wire`]), verified
//! with dcr-verify against the session's binding, each report or quote decoded once (the
//! verifiers return what they decoded with their verdict).

use dcr_protocol::wire::{
    AzSnpVtpmEvidence, AzTdxVtpmEvidence, Evidence, NitroEvidence, SgxEvidence, SnpEvidence,
    TdxEvidence, Tee, TpmEvidence,
};
use dcr_verify::reference::Claims;
use dcr_verify::snp::{Product, Tcb};
use dcr_verify::verdict::Verdict;
use dcr_verify::{azure, nitro, sgx, snp, tdx, tpm};

use crate::api::{b64, bad, ct_eq, forbidden, Refusal};
use crate::policy::failed;
use crate::{Session, State};

/// The product and REPORTED_TCB of verified SEV-SNP evidence (compared with each key's
/// minimum), if the evidence is SEV-SNP.
pub(crate) type SnpTcb = Option<(Product, Tcb)>;

/// Type the request's evidence by its `tee`.
pub(crate) fn typed(tee: Tee, v: &serde_json::Value) -> Result<Evidence, Refusal> {
    Evidence::from_wire(tee, v).map_err(|e| bad(format!("evidence: {e}")))
}

/// Verify evidence of any platform against the binding `rd` (what the session's nonce, the
/// TEE's keys and the contract digest make) at `now`.
pub(crate) fn verify(
    st: &State,
    session: &Session,
    evidence: &Evidence,
    rd: &[u8; 64],
    now: u64,
) -> Result<(Claims, SnpTcb), Refusal> {
    let collateral = st.cfg.tdx_collateral.as_deref();
    match evidence {
        Evidence::Tpm(e) => Ok((verify_tpm(st, session, e, rd)?, None)),
        Evidence::Snp(e) => verify_snp(e, rd, now),
        Evidence::Tdx(e) => Ok((verify_tdx(collateral, e, rd, now)?, None)),
        Evidence::AzSnpVtpm(e) => verify_az_snp(e, rd, now),
        Evidence::AzTdxVtpm(e) => Ok((verify_az_tdx(collateral, e, rd, now)?, None)),
        Evidence::Nitro(e) => Ok((verify_nitro(e, rd, now)?, None)),
        Evidence::Sgx(e) => Ok((
            verify_sgx(st.cfg.sgx_collateral.as_deref(), e, rd, now)?,
            None,
        )),
    }
}

/// Verify evidence in the wire format (SEV-SNP or TDX as `dcr_protocol::evidence` builds it
/// from configfs-tsm, Azure, Nitro, SGX) against the binding `rd` at `now`: the claims, or
/// (code, message). `dcap_collateral` is the dcap-qvl bundle of the quote's platform (TDX,
/// or SGX). TPM evidence needs a session (challenge credential) and goes through
/// `/v1/attest` only.
pub fn verify_evidence(
    tee: Tee,
    evidence: &serde_json::Value,
    rd: &[u8],
    now: u64,
    dcap_collateral: Option<&[u8]>,
) -> Result<Claims, (String, String)> {
    let tdx_collateral = dcap_collateral;
    let rd64 = || -> Result<[u8; 64], Refusal> {
        rd.try_into().map_err(|_| {
            forbidden(
                "binding_mismatch",
                format!("the binding is {} bytes, SNP/TDX bind 64", rd.len()),
            )
        })
    };
    let r = typed(tee, evidence).and_then(|ev| match &ev {
        Evidence::Snp(e) => rd64().and_then(|rd| verify_snp(e, &rd, now).map(|(c, _)| c)),
        Evidence::Tdx(e) => rd64().and_then(|rd| verify_tdx(tdx_collateral, e, &rd, now)),
        Evidence::AzSnpVtpm(e) => verify_az_snp(e, rd, now).map(|(c, _)| c),
        Evidence::AzTdxVtpm(e) => verify_az_tdx(tdx_collateral, e, rd, now),
        Evidence::Nitro(e) => rd64().and_then(|rd| verify_nitro(e, &rd, now)),
        Evidence::Sgx(e) => rd64().and_then(|rd| verify_sgx(tdx_collateral, e, &rd, now)),
        Evidence::Tpm(_) => Err(bad("tpm evidence needs a session (challenge credential)")),
    });
    r.map_err(|e| (e.code.to_string(), e.message))
}

/// Verify a run's evidence offline, as `dcr-attest verify receipt` does: [`verify_evidence`]
/// for SEV-SNP, TDX and Azure; a TPM quote by the AK the evidence carries. Offline, nothing
/// anchors that AK (the EK credential activation happened online, in the session): the
/// service's signed release over this evidence's digest is what vouches for it, and the
/// caller checks that release.
pub fn verify_run_evidence(
    tee: Tee,
    evidence: &serde_json::Value,
    rd: &[u8; 64],
    now: u64,
    tdx_collateral: Option<&[u8]>,
) -> Result<Claims, (String, String)> {
    if tee != Tee::Tpm {
        return verify_evidence(tee, evidence, rd, now, tdx_collateral);
    }
    let r = (|| {
        let Evidence::Tpm(e) = typed(tee, evidence)? else {
            return Err(bad("evidence: not TPM evidence"));
        };
        quote_claims(&e, rd)
    })();
    r.map_err(|e| (e.code.to_string(), e.message))
}

/// Classify a failed evidence verdict: a binding failure alone is `binding_mismatch`.
fn evidence_refusal(v: &Verdict, binding_check: &str) -> Refusal {
    let fails: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if fails == [binding_check] {
        forbidden(
            "binding_mismatch",
            format!(
                "the evidence does not bind this nonce, HPKE key and contract digest ({})",
                failed(v)
            ),
        )
    } else {
        forbidden("evidence_invalid", failed(v))
    }
}

/// A TPM quote by an AK this service trusts: activated against a trusted EK in this session,
/// or pinned. Claims: the quoted SHA-256 PCRs.
fn verify_tpm(st: &State, s: &Session, e: &TpmEvidence, rd: &[u8; 64]) -> Result<Claims, Refusal> {
    let ak = b64("evidence.ak_public", &e.ak_public)?;
    match &s.activation {
        Some((secret, name)) => {
            let got = e
                .activation
                .as_deref()
                .and_then(|a| hex::decode(a).ok())
                .ok_or_else(|| forbidden("ak_untrusted", "no credential activation secret"))?;
            if !ct_eq(&got, &secret[..]) {
                return Err(forbidden(
                    "ak_untrusted",
                    "credential activation secret does not match (AK not in the EK's TPM)",
                ));
            }
            let (_, ak_name) =
                tpm::parse_ak_tpm2b(&ak).map_err(|e| bad(format!("evidence.ak_public: {e}")))?;
            if ak_name != *name {
                return Err(forbidden(
                    "ak_untrusted",
                    "AK differs from the one in the challenge",
                ));
            }
        }
        None => {
            let k = tpm::parse_ak(&ak).map_err(|e| bad(format!("evidence.ak_public: {e}")))?;
            let spki = tpm::ak_spki_der(&k);
            if !st.cfg.pinned_aks.contains(&spki) {
                return Err(forbidden(
                    "ak_untrusted",
                    "AK is neither pinned (--tpm-ak) nor activated against a trusted EK",
                ));
            }
        }
    }
    quote_claims(e, rd)
}

/// The quote of TPM evidence over `rd`, by the AK the evidence carries (whose trust the
/// caller establishes): the quoted SHA-256 PCRs.
fn quote_claims(e: &TpmEvidence, rd: &[u8; 64]) -> Result<Claims, Refusal> {
    let message = b64("evidence.message", &e.message)?;
    let signature = b64("evidence.signature", &e.signature)?;
    let pcrs = b64("evidence.pcrs", &e.pcrs)?;
    let ak = b64("evidence.ak_public", &e.ak_public)?;
    let (v, values) = tpm::verify_quote(
        &ak,
        &message,
        &signature,
        &pcrs,
        rd,
        tpm::TPM_ALG_SHA256,
        &Vec::new(),
    );
    if !v.ok() {
        return Err(evidence_refusal(&v, "qualifying_data"));
    }
    let values = values.ok_or_else(|| bad("evidence.pcrs: not decoded"))?;
    Ok(Claims::Tpm {
        pcrs: values
            .into_iter()
            .filter(|(a, _, _)| *a == tpm::TPM_ALG_SHA256)
            .map(|(_, i, d)| (i, d))
            .collect(),
    })
}

/// SEV-SNP report + VCEK/VLEK. Claims: MEASUREMENT.
fn verify_snp(e: &SnpEvidence, rd: &[u8; 64], now: u64) -> Result<(Claims, SnpTcb), Refusal> {
    let report = b64("evidence.report", &e.report)?;
    let mut vcek = b64("evidence.vcek", &e.vcek)?;
    if vcek.starts_with(b"-----BEGIN") {
        vcek = snp::pem_certs(&vcek)
            .map_err(|e| bad(e.to_string()))?
            .remove(0);
    }
    let policy = snp::SnpPolicy {
        report_data: Some(*rd),
        ..Default::default()
    };
    let (v, facts) = snp::verify_report(&report, &vcek, None, now, &policy);
    if !v.ok() {
        return Err(evidence_refusal(&v, "report_data"));
    }
    let facts = facts.ok_or_else(|| bad("evidence: VCEK names no known product"))?;
    Ok((
        Claims::Snp {
            launch_digest: facts.report.measurement,
        },
        Some((facts.product, facts.tcb)),
    ))
}

/// TDX quote, verified with the service's collateral. Claims: MRTD.
fn verify_tdx(
    collateral: Option<&[u8]>,
    e: &TdxEvidence,
    rd: &[u8; 64],
    now: u64,
) -> Result<Claims, Refusal> {
    let quote = b64("evidence.quote", &e.quote)?;
    let coll = collateral.ok_or_else(|| {
        forbidden(
            "evidence_invalid",
            "this service has no TDX collateral (--tdx-collateral)",
        )
    })?;
    let policy = tdx::TdxPolicy {
        report_data: Some(*rd),
        ..Default::default()
    };
    let (v, mrtd) = tdx::verify_quote(&quote, coll, now, &policy);
    if !v.ok() {
        return Err(evidence_refusal(&v, "report_data"));
    }
    let mrtd = mrtd.ok_or_else(|| bad("quote has no TD report"))?;
    Ok(Claims::Tdx { mrtd })
}

/// Azure SNP CVM (Trustee az-snp-vtpm): SNP report + VCEK, HCL binding of the runtime claims
/// (and so of the AK), the vTPM quote by that AK over `rd`. Claims: the vTPM PCRs.
fn verify_az_snp(e: &AzSnpVtpmEvidence, rd: &[u8], now: u64) -> Result<(Claims, SnpTcb), Refusal> {
    let e = azure::decode_snp_evidence(e).map_err(|e| bad(format!("evidence: {e}")))?;
    let (v, facts) =
        azure::verify_snp_evidence(&e, rd, now, &snp::SnpPolicy::default(), &Vec::new());
    if !v.ok() {
        return Err(evidence_refusal(&v, "vtpm.qualifying_data"));
    }
    let facts = facts.ok_or_else(|| bad("evidence: SNP report or VCEK product unreadable"))?;
    Ok((azure_claims(&e.pcrs), Some((facts.product, facts.tcb))))
}

/// Azure TDX CVM (Trustee az-tdx-vtpm): the TD quote (DCAP, with the service's collateral)
/// carries the HCL TDREPORT's REPORTDATA, which binds the runtime claims and so the AK; that
/// AK's vTPM quote over `rd`. Claims: the vTPM PCRs.
fn verify_az_tdx(
    collateral: Option<&[u8]>,
    e: &AzTdxVtpmEvidence,
    rd: &[u8],
    now: u64,
) -> Result<Claims, Refusal> {
    let e = azure::decode_tdx_evidence(e).map_err(|e| bad(format!("evidence: {e}")))?;
    let v = azure::verify_tdx(
        &e,
        rd,
        now,
        collateral,
        &tdx::TdxPolicy::default(),
        &Vec::new(),
    );
    if !v.ok() {
        return Err(evidence_refusal(&v, "vtpm.qualifying_data"));
    }
    Ok(azure_claims(&e.pcrs))
}

/// AWS Nitro Enclaves attestation document, its chain at `now`, the binding in `user_data`.
/// Claims: the document's PCRs. A debug-mode enclave (PCR 0-2 zero) is refused.
fn verify_nitro(e: &NitroEvidence, rd: &[u8], now: u64) -> Result<Claims, Refusal> {
    let doc = b64("evidence.document", &e.document)?;
    let policy = nitro::NitroPolicy {
        user_data: Some(rd.to_vec()),
        ..Default::default()
    };
    let (v, doc) = nitro::verify(&doc, now, &policy);
    if !v.ok() {
        return Err(evidence_refusal(&v, "user_data"));
    }
    let doc = doc.ok_or_else(|| bad("evidence: document not verified"))?;
    Ok(Claims::Nitro {
        pcrs: doc
            .pcrs
            .into_iter()
            .map(|(i, p)| (u32::from(i), p))
            .collect(),
    })
}

/// SGX enclave quote, verified with the service's SGX collateral (UpToDate only, no debug
/// enclaves), the binding in REPORTDATA. Claims: the enclave's identity.
fn verify_sgx(
    collateral: Option<&[u8]>,
    e: &SgxEvidence,
    rd: &[u8; 64],
    now: u64,
) -> Result<Claims, Refusal> {
    verify_sgx_allowing(collateral, e, rd, now, &[])
}

/// [`verify_sgx`], also accepting the TCB statuses `allow` (tests of real quotes whose
/// platform was not up to date).
fn verify_sgx_allowing(
    collateral: Option<&[u8]>,
    e: &SgxEvidence,
    rd: &[u8; 64],
    now: u64,
    allow: &[&str],
) -> Result<Claims, Refusal> {
    let quote = b64("evidence.quote", &e.quote)?;
    let coll = collateral.ok_or_else(|| {
        forbidden(
            "evidence_invalid",
            "this service has no SGX collateral (--sgx-collateral)",
        )
    })?;
    let mut policy = sgx::SgxPolicy {
        report_data: Some(*rd),
        ..Default::default()
    };
    policy
        .allowed_status
        .extend(allow.iter().map(|s| s.to_string()));
    let (v, enclave) = sgx::verify(&quote, coll, now, &policy);
    if !v.ok() {
        return Err(evidence_refusal(&v, "report_data"));
    }
    let e = enclave.ok_or_else(|| bad("quote has no SGX report"))?;
    Ok(Claims::Sgx {
        mrenclave: e.mrenclave,
        mrsigner: e.mrsigner,
        isv_prod_id: e.isv_prod_id,
        isv_svn: e.isv_svn,
    })
}

fn azure_claims(pcrs: &[Vec<u8>]) -> Claims {
    Claims::Azure {
        pcrs: pcrs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    //! The service's Nitro and SGX paths on real evidence (../shared/fixtures, overridable
    //! with DCR_FIXTURES): evidence → claims → the release decision against registered
    //! policies. The session binding of a live request cannot be put into a recorded
    //! document, so these tests bind to what each document or quote already carries.
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use dcr_protocol::contract::Contract;
    use dcr_protocol::measurements::Measurements;
    use dcr_protocol::wire::{ReleasePolicy, SgxIdentity};

    use super::*;
    use crate::policy::{decide, Asked, KeyRecord};

    fn fixture(rel: &str) -> Option<Vec<u8>> {
        let dir = std::env::var_os("DCR_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
            });
        if !dir.is_dir() {
            assert!(
                std::env::var_os("CI").is_none(),
                "fixtures {} missing under CI",
                dir.display()
            );
            eprintln!("SKIP: fixtures {} missing", dir.display());
            return None;
        }
        Some(std::fs::read(dir.join(rel)).unwrap())
    }

    fn contract() -> Contract {
        crate::policy::decide_tests::contract("2099-01-01T00:00:00Z")
    }

    fn record(
        tee: Tee,
        measurements: serde_json::Value,
        sgx: Option<SgxIdentity>,
    ) -> Vec<KeyRecord> {
        let reference: Measurements = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "recipe": "r", "recipe_version": "1",
            "source_date_epoch": 0, "kernel_release": "k", "cmdline": "",
            "contract_digest": "00".repeat(32), "guest_target": "t",
            "inputs": {}, "artifacts": {}, "measurements": measurements,
        }))
        .unwrap();
        contract()
            .datasets
            .iter()
            .map(|d| KeyRecord {
                key_id: d.key_id.clone(),
                owner: d.owner.clone(),
                registered_at: 0,
                policy: ReleasePolicy {
                    contract_digest: "cd".repeat(32),
                    platforms: vec![tee],
                    reference: reference.clone(),
                    single_use: false,
                    expires: "2099-01-01T00:00:00Z".into(),
                    snp_min_tcb: None,
                    sgx: sgx.clone(),
                },
                dek_at_rest: String::new(),
            })
            .collect()
    }

    fn decision(
        tee: Tee,
        claims: &Claims,
        recs: Vec<KeyRecord>,
        now: u64,
    ) -> Result<usize, &'static str> {
        let asked = Asked {
            contract_digest: "cd",
            tee,
            claims,
            snp_tcb: None,
            now,
        };
        decide(recs, &contract(), &asked, &BTreeSet::new())
            .map(|r| r.len())
            .map_err(|e| e.code)
    }

    #[test]
    fn a_nitro_document_releases_to_its_own_pcrs_and_not_to_another_pcr0() {
        let Some(bytes) = fixture("attest/nitro/choracle-1.cbor") else {
            return;
        };
        let parsed = nitro::parse(&bytes).unwrap().doc;
        let at = nitro::document_time(&parsed);
        let ev = NitroEvidence {
            document: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes),
        };
        let user_data = parsed.user_data.clone().unwrap();
        let claims = verify_nitro(&ev, &user_data, at).unwrap();
        let pcr = |i: u8| hex::encode(&parsed.pcrs[&i]);
        let own = serde_json::json!({"nitro": {"pcrs": {"0": pcr(0), "1": pcr(1), "2": pcr(2)}}});
        let n = contract().datasets.len();
        assert_eq!(
            decision(Tee::Nitro, &claims, record(Tee::Nitro, own, None), at),
            Ok(n)
        );
        let mut p0 = parsed.pcrs[&0].clone();
        p0[0] ^= 1;
        let other = serde_json::json!({"nitro": {"pcrs": {"0": hex::encode(p0), "1": pcr(1), "2": pcr(2)}}});
        assert_eq!(
            decision(Tee::Nitro, &claims, record(Tee::Nitro, other, None), at),
            Err("measurement_mismatch")
        );
        // A policy for another platform, or without a nitro section, releases nothing.
        let tpm = serde_json::json!({"tpm": {"pcrs": {"4": "00".repeat(32)}}});
        assert_eq!(
            decision(
                Tee::Nitro,
                &claims,
                record(Tee::Nitro, tpm.clone(), None),
                at
            ),
            Err("measurement_mismatch")
        );
        assert_eq!(
            decision(Tee::Nitro, &claims, record(Tee::Tpm, tpm, None), at),
            Err("policy_refused")
        );
        // Another binding: binding_mismatch; today (the chain long expired): evidence_invalid.
        let e = verify_nitro(&ev, &[0; 64], at).unwrap_err();
        assert_eq!(e.code, "binding_mismatch", "{}", e.message);
        let e = verify_nitro(&ev, &user_data, 1_800_000_000).unwrap_err();
        assert_eq!(e.code, "evidence_invalid");
        assert!(e.message.contains("chain.leaf.validity"), "{}", e.message);
        // The wire shape: unknown fields refused; base64 checked.
        let (code, _) = verify_evidence(
            Tee::Nitro,
            &serde_json::json!({"document": "AA==", "x": 1}),
            &[0; 64],
            at,
            None,
        )
        .unwrap_err();
        assert_eq!(code, "bad_request");
    }

    #[test]
    fn a_debug_nitro_enclave_is_refused() {
        let Some(bytes) = fixture("attest/nitro/go-nitro-attestation-1.cbor") else {
            return;
        };
        let parsed = nitro::parse(&bytes).unwrap().doc;
        let ev = NitroEvidence {
            document: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes),
        };
        let e = verify_nitro(
            &ev,
            parsed.user_data.as_deref().unwrap(),
            nitro::document_time(&parsed),
        )
        .unwrap_err();
        assert_eq!(e.code, "evidence_invalid");
        assert!(e.message.contains("enclave.debug"), "{}", e.message);
    }

    #[test]
    fn an_sgx_quote_releases_to_its_enclave_identity_only() {
        let (Some(quote), Some(coll)) = (
            fixture("attest/tdx/dcap-qvl/sgx_quote"),
            fixture("attest/tdx/dcap-qvl/sgx_quote_collateral.json"),
        ) else {
            return;
        };
        // 2025-06-25, inside the collateral's validity.
        let at = 1_750_809_600;
        // The identity read from the quote's bytes (header 48 bytes, then sgx_report_body_t).
        let body = &quote[48..];
        let mrenclave: [u8; 32] = body[64..96].try_into().unwrap();
        let mrsigner: [u8; 32] = body[128..160].try_into().unwrap();
        let prod = u16::from_le_bytes([body[256], body[257]]);
        let svn = u16::from_le_bytes([body[258], body[259]]);
        let rd: [u8; 64] = body[320..384].try_into().unwrap();
        let ev = SgxEvidence {
            quote: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &quote),
        };
        // The sample platform is not UpToDate: refused by default, naming the status.
        let e = verify_sgx(Some(&coll), &ev, &rd, at).unwrap_err();
        assert_eq!(e.code, "evidence_invalid");
        assert!(
            e.message.contains("ConfigurationAndSWHardeningNeeded"),
            "{}",
            e.message
        );
        let e = verify_sgx(None, &ev, &rd, at).unwrap_err();
        assert!(e.message.contains("--sgx-collateral"), "{}", e.message);
        let claims = verify_sgx_allowing(
            Some(&coll),
            &ev,
            &rd,
            at,
            &["ConfigurationAndSWHardeningNeeded"],
        )
        .unwrap();
        let e = verify_sgx_allowing(
            Some(&coll),
            &ev,
            &[0; 64],
            at,
            &["ConfigurationAndSWHardeningNeeded"],
        )
        .unwrap_err();
        assert_eq!(e.code, "binding_mismatch");
        let n = contract().datasets.len();
        let sha = dcr_protocol::digest::Sha256;
        let none = serde_json::json!({});
        let by_enclave = |m: [u8; 32]| SgxIdentity {
            mrenclave: Some(sha(m)),
            ..Default::default()
        };
        let by_signer = |m: [u8; 32], p: u16, s: u16| SgxIdentity {
            mrsigner: Some(sha(m)),
            isv_prod_id: Some(p),
            min_isv_svn: Some(s),
            ..Default::default()
        };
        let d = |id: Option<SgxIdentity>| {
            decision(Tee::Sgx, &claims, record(Tee::Sgx, none.clone(), id), at)
        };
        assert_eq!(d(Some(by_enclave(mrenclave))), Ok(n));
        let mut other = mrenclave;
        other[31] ^= 1;
        assert_eq!(d(Some(by_enclave(other))), Err("measurement_mismatch"));
        assert_eq!(d(Some(by_signer(mrsigner, prod, svn))), Ok(n));
        let mut other = mrsigner;
        other[0] ^= 1;
        assert_eq!(
            d(Some(by_signer(other, prod, svn))),
            Err("measurement_mismatch")
        );
        assert_eq!(
            d(Some(by_signer(mrsigner, prod.wrapping_add(1), svn))),
            Err("measurement_mismatch")
        );
        assert_eq!(
            d(Some(by_signer(mrsigner, prod, svn + 1))),
            Err("measurement_mismatch")
        );
        // No identity, or MRSIGNER without a product: nothing.
        assert_eq!(d(None), Err("measurement_mismatch"));
        let half = SgxIdentity {
            mrsigner: Some(sha(mrsigner)),
            ..Default::default()
        };
        assert_eq!(d(Some(half)), Err("measurement_mismatch"));
    }
}
