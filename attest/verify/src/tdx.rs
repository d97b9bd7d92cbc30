//! Intel TDX quotes (v4, v5; TD 1.0 and TD 1.5 bodies) verified offline against a collateral
//! bundle (PCK chain to the Intel SGX Root CA, TCB info, QE identity, CRLs) at an explicit time,
//! with Phala's dcap-qvl; then our policy: TCB status, debug TDs, MRTD / RTMRs, REPORT_DATA.

use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::VerifiedReport;
use dcap_qvl::QuoteCollateralV3;

use crate::verdict::Verdict;

/// What the verifier requires beyond a genuine quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPolicy {
    /// Accepted TCB statuses (default: only "UpToDate").
    pub allowed_status: Vec<String>,
    pub allow_debug: bool,
    /// Accepted MRTDs (empty: not checked here).
    pub mrtd: Vec<[u8; 48]>,
    /// The quote is to be matched to an image (`--expected`): that needs RTMR1/RTMR2, which are
    /// not predicted yet, so the check `rtmrs` fails with the reason ([`RTMRS_NOT_PREDICTED`]).
    pub match_image: bool,
    pub report_data: Option<[u8; 64]>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        TdxPolicy {
            allowed_status: vec!["UpToDate".into()],
            allow_debug: false,
            mrtd: Vec::new(),
            match_image: false,
            report_data: None,
        }
    }
}

/// Why a TDX quote is never matched to an image yet: MRTD is the TD firmware's measurement
/// only. The kernel, command line and initrd (and so guest-init, the contract and the
/// workloads) are measured into RTMR1/RTMR2 by TDVF, which dcr does not predict yet; a
/// reference of MRTD alone would accept any TD booted from the same firmware running anything.
pub const RTMRS_NOT_PREDICTED: &str = "RTMR1/RTMR2 (kernel, command line, initrd) are not predicted yet and MRTD covers only the TD firmware: a TDX quote cannot be matched to an image, so it is refused";

/// The TD report fields a policy looks at.
fn td_fields(r: &Report) -> Option<(&[u8; 8], &[u8; 48], &[u8; 64])> {
    let base = match r {
        Report::TD10(t) => t,
        Report::TD15(t) => &t.base,
        Report::TD15Ex(t) => &t.base.base,
        Report::SgxEnclave(_) => return None,
    };
    Some((&base.td_attributes, &base.mr_td, &base.report_data))
}

/// Verify `quote` with `collateral` (dcap-qvl's JSON bundle) at `now` (Unix seconds).
pub fn verify(quote: &[u8], collateral_json: &[u8], now: u64, policy: &TdxPolicy) -> Verdict {
    verify_quote(quote, collateral_json, now, policy).0
}

/// [`verify`], also returning the MRTD of the verified TD report (when the quote's signature
/// and collateral verified; the verdict says whether every other check passed).
pub fn verify_quote(
    quote: &[u8],
    collateral_json: &[u8],
    now: u64,
    policy: &TdxPolicy,
) -> (Verdict, Option<[u8; 48]>) {
    let mut v = Verdict::default();
    let q = match Quote::parse(quote) {
        Ok(q) => q,
        Err(e) => {
            v.push("quote.decode", false, format!("not a DCAP quote: {e}"));
            return (v, None);
        }
    };
    let version = q.header.version;
    if !matches!(version, 4 | 5) {
        v.push(
            "quote.decode",
            false,
            format!("field version is {version}; this verifier reads TDX quotes v4 and v5 only"),
        );
        return (v, None);
    }
    let Some((attributes, _, _)) = td_fields(&q.report) else {
        v.push(
            "quote.decode",
            false,
            "an SGX enclave quote, not a TD quote",
        );
        return (v, None);
    };
    let attributes = *attributes;
    v.push("quote.decode", true, format!("version {version}"));
    // Judged on the decoded quote so that it is named even when the quote does not verify.
    let debug = attributes[0] & 1 != 0;
    v.push(
        "td.debug",
        policy.allow_debug || !debug,
        format!(
            "TD_ATTRIBUTES {} ({})",
            hex::encode(attributes),
            if debug { "DEBUG: refused" } else { "not debug" }
        ),
    );

    let Some(report) = verify_dcap(&mut v, quote, collateral_json, now, &policy.allowed_status)
    else {
        return (v, None);
    };
    let mut verified_mrtd = None;
    if let Some((_, mrtd, report_data)) = td_fields(&report.report) {
        verified_mrtd = Some(*mrtd);
        if !policy.mrtd.is_empty() {
            v.push(
                "mrtd",
                policy.mrtd.contains(mrtd),
                format!("MRTD {}", hex::encode(mrtd)),
            );
        }
        if let Some(rd) = policy.report_data {
            v.push(
                "report_data",
                &rd == report_data,
                "REPORT_DATA vs the expected binding",
            );
        }
    }
    if policy.match_image {
        v.push("rtmrs", false, RTMRS_NOT_PREDICTED);
    }
    (v, verified_mrtd)
}

/// MRTD of a TDX quote's TD report (after verification, for reference-value comparison).
pub fn mrtd_of(quote: &[u8]) -> Option<[u8; 48]> {
    let q = Quote::parse(quote).ok()?;
    td_fields(&q.report).map(|(_, m, _)| *m)
}

/// A DCAP quote (TDX or SGX) against its collateral bundle at `now`, with dcap-qvl: the checks
/// `collateral.decode`, `quote.signature_and_collateral` and `tcb.status` (against `allowed`),
/// and the verified report when the signature and collateral verified.
pub(crate) fn verify_dcap(
    v: &mut Verdict,
    quote: &[u8],
    collateral_json: &[u8],
    now: u64,
    allowed: &[String],
) -> Option<VerifiedReport> {
    let collateral: QuoteCollateralV3 = match serde_json::from_slice(collateral_json) {
        Ok(c) => c,
        Err(e) => {
            v.push(
                "collateral.decode",
                false,
                format!("not a collateral bundle: {e}"),
            );
            return None;
        }
    };
    v.push(
        "collateral.decode",
        true,
        "PCK CRL, root CRL, TCB info, QE identity",
    );
    let report = match dcap_qvl::verify::verify(quote, &collateral, now) {
        Ok(r) => {
            v.push(
                "quote.signature_and_collateral",
                true,
                format!("PCK chain to the Intel SGX Root CA, QE report, TCB info at {now}"),
            );
            r
        }
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            v.push("quote.signature_and_collateral", false, chain.join(": "));
            return None;
        }
    };
    v.push(
        "tcb.status",
        allowed.contains(&report.status),
        format!(
            "{} (advisories: {}); allowed: {}",
            report.status,
            if report.advisory_ids.is_empty() {
                "none".to_string()
            } else {
                report.advisory_ids.join(", ")
            },
            allowed.join(", ")
        ),
    );
    Some(report)
}
