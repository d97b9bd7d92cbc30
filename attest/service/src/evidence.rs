//! Evidence → claims: each platform's evidence typed once ([`Evidence::from_wire`]), verified
//! with dcr-verify against the session's binding, each report or quote decoded once (the
//! verifiers return what they decoded with their verdict).

use dcr_protocol::wire::{
    AzSnpVtpmEvidence, AzTdxVtpmEvidence, Evidence, SnpEvidence, TdxEvidence, Tee, TpmEvidence,
};
use dcr_verify::reference::Claims;
use dcr_verify::snp::{Product, Tcb};
use dcr_verify::verdict::Verdict;
use dcr_verify::{azure, snp, tdx, tpm};

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
    }
}

/// Verify SEV-SNP or TDX evidence in the wire format (as `dcr_protocol::evidence` builds it
/// from configfs-tsm) against the binding `rd` at `now`: the claims, or (code, message).
/// TPM evidence needs a session (challenge credential) and goes through `/v1/attest` only.
pub fn verify_evidence(
    tee: Tee,
    evidence: &serde_json::Value,
    rd: &[u8],
    now: u64,
    tdx_collateral: Option<&[u8]>,
) -> Result<Claims, (String, String)> {
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

fn azure_claims(pcrs: &[Vec<u8>]) -> Claims {
    Claims::Azure {
        pcrs: pcrs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.clone()))
            .collect(),
    }
}
