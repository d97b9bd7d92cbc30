//! Intel SGX enclave quotes (DCAP v3; v4/v5 with an SGX body) verified offline against a
//! collateral bundle (PCK chain to the Intel SGX Root CA, TCB info, QE identity, CRLs) at an
//! explicit time, with Phala's dcap-qvl; then our policy: TCB status, debug enclaves, MRENCLAVE,
//! MRSIGNER with ISVPRODID and a minimum ISVSVN, REPORT_DATA.
//!
//! Report body offsets (Intel SGX DCAP quote format, `sgx_report_body_t`): CPUSVN 0..16,
//! MISCSELECT 16..20, ATTRIBUTES 48..64 (flags bit 1 = DEBUG), MRENCLAVE 64..96, MRSIGNER
//! 128..160, ISVPRODID 256..258, ISVSVN 258..260, REPORTDATA 320..384 — dcap-qvl decodes them.

use dcap_qvl::quote::{EnclaveReport, Quote, Report};

use crate::verdict::Verdict;

/// What the verifier requires beyond a genuine quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgxPolicy {
    /// Accepted TCB statuses (default: only "UpToDate").
    pub allowed_status: Vec<String>,
    pub allow_debug: bool,
    pub mrenclave: Option<[u8; 32]>,
    pub mrsigner: Option<[u8; 32]>,
    pub isv_prod_id: Option<u16>,
    pub min_isv_svn: Option<u16>,
    pub report_data: Option<[u8; 64]>,
}

impl Default for SgxPolicy {
    fn default() -> Self {
        SgxPolicy {
            allowed_status: vec!["UpToDate".into()],
            allow_debug: false,
            mrenclave: None,
            mrsigner: None,
            isv_prod_id: None,
            min_isv_svn: None,
            report_data: None,
        }
    }
}

/// The enclave's identity, as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enclave {
    pub mrenclave: [u8; 32],
    pub mrsigner: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub report_data: [u8; 64],
    pub debug: bool,
}

fn enclave_of(r: &EnclaveReport) -> Enclave {
    Enclave {
        mrenclave: r.mr_enclave,
        mrsigner: r.mr_signer,
        isv_prod_id: r.isv_prod_id,
        isv_svn: r.isv_svn,
        report_data: r.report_data,
        debug: r.attributes[0] & 0x02 != 0,
    }
}

/// Verify `quote` with `collateral` (dcap-qvl's JSON bundle) at `now` (Unix seconds): the
/// verdict, and the enclave when the quote's signature and collateral verified (the verdict
/// says whether every other check passed).
pub fn verify(
    quote: &[u8],
    collateral_json: &[u8],
    now: u64,
    policy: &SgxPolicy,
) -> (Verdict, Option<Enclave>) {
    let mut v = Verdict::default();
    let q = match Quote::parse(quote) {
        Ok(q) => q,
        Err(e) => {
            v.push("quote.decode", false, format!("not a DCAP quote: {e}"));
            return (v, None);
        }
    };
    let Report::SgxEnclave(body) = &q.report else {
        v.push(
            "quote.decode",
            false,
            "a TD quote, not an SGX enclave quote",
        );
        return (v, None);
    };
    v.push(
        "quote.decode",
        true,
        format!("version {}, SGX enclave report", q.header.version),
    );
    // Judged on the decoded quote so that it is named even when the quote does not verify.
    let decoded = enclave_of(body);
    v.push(
        "enclave.debug",
        policy.allow_debug || !decoded.debug,
        format!(
            "ATTRIBUTES {} ({})",
            hex::encode(body.attributes),
            if decoded.debug {
                "DEBUG: refused"
            } else {
                "not debug"
            }
        ),
    );
    let Some(report) =
        crate::tdx::verify_dcap(&mut v, quote, collateral_json, now, &policy.allowed_status)
    else {
        return (v, None);
    };
    let Report::SgxEnclave(body) = &report.report else {
        v.push(
            "quote.decode",
            false,
            "the verified report is not an SGX one",
        );
        return (v, None);
    };
    let e = enclave_of(body);
    if let Some(m) = policy.mrenclave {
        v.push(
            "mrenclave",
            m == e.mrenclave,
            format!(
                "MRENCLAVE {} vs expected {}",
                hex::encode(e.mrenclave),
                hex::encode(m)
            ),
        );
    }
    if let Some(m) = policy.mrsigner {
        v.push(
            "mrsigner",
            m == e.mrsigner,
            format!(
                "MRSIGNER {} vs expected {}",
                hex::encode(e.mrsigner),
                hex::encode(m)
            ),
        );
    }
    if let Some(p) = policy.isv_prod_id {
        v.push(
            "isv_prod_id",
            p == e.isv_prod_id,
            format!("ISVPRODID {} vs expected {p}", e.isv_prod_id),
        );
    }
    if let Some(s) = policy.min_isv_svn {
        v.push(
            "isv_svn",
            e.isv_svn >= s,
            format!("ISVSVN {} vs minimum {s}", e.isv_svn),
        );
    }
    if let Some(rd) = policy.report_data {
        v.push(
            "report_data",
            rd == e.report_data,
            "REPORTDATA vs the expected binding",
        );
    }
    (v, Some(e))
}
