//! SEV-SNP attestation reports: an explicit, length-checked decoder for report versions 2, 3
//! and 5 (AMD SEV-SNP ABI specification 56860, "ATTESTATION_REPORT Structure"), and offline
//! verification: AMD ARK (pinned in the binary) → ASK/ASVK → VCEK/VLEK (RSA-PSS SHA-384), the
//! report's ECDSA P-384 signature over bytes 0..0x2A0, VCEK TCB extensions equal REPORTED_TCB,
//! hwID equals CHIP_ID (8 bytes on Turin), validity at an explicit time, and guest policy.

use der::Decode;
use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use x509_cert::Certificate as X509;

/// Size of every report version.
pub const REPORT_SIZE: usize = 0x4A0;
/// Bytes covered by the signature.
pub const SIGNED_SIZE: usize = 0x2A0;

/// Errors decoding a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report: {0} bytes, expected {REPORT_SIZE}")]
    Length(usize),
    #[error("report: field version is {0}; this verifier reads versions 2, 3 and 5 only")]
    Version(u32),
    #[error("report: field signature_algo is {0}, expected 1 (ECDSA P-384 with SHA-384)")]
    SignatureAlgo(u32),
    #[error("report: reserved bytes {start:#x}..{end:#x} are not zero")]
    Reserved { start: usize, end: usize },
}

/// A decoded report. Integers are little-endian in the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub current_tcb: u64,
    pub platform_info: u64,
    /// Bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY (0 VCEK, 1 VLEK, 7 none).
    pub key_info: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: u64,
    /// (family, model, stepping): version 3 and later.
    pub cpuid: Option<(u8, u8, u8)>,
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    pub current_version: (u8, u8, u8),
    pub committed_version: (u8, u8, u8),
    pub launch_tcb: u64,
    /// Version 5 and later.
    pub launch_mit_vector: Option<u64>,
    pub current_mit_vector: Option<u64>,
    pub signature_r: [u8; 72],
    pub signature_s: [u8; 72],
    /// The signed bytes, as received.
    pub signed: Vec<u8>,
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(arr(b, at))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(arr(b, at))
}

fn zero(b: &[u8], start: usize, end: usize) -> Result<(), ReportError> {
    if b[start..end].iter().any(|&x| x != 0) {
        return Err(ReportError::Reserved { start, end });
    }
    Ok(())
}

impl Report {
    /// Decode a report, refusing any length but 1184, unknown versions, unknown signature
    /// algorithms, and non-zero reserved ranges.
    pub fn parse(b: &[u8]) -> Result<Report, ReportError> {
        if b.len() != REPORT_SIZE {
            return Err(ReportError::Length(b.len()));
        }
        let version = u32_at(b, 0);
        if !matches!(version, 2 | 3 | 5) {
            return Err(ReportError::Version(version));
        }
        let algo = u32_at(b, 0x34);
        if algo != 1 {
            return Err(ReportError::SignatureAlgo(algo));
        }
        zero(b, 0x4c, 0x50)?;
        if version == 2 {
            zero(b, 0x188, 0x1a0)?;
        } else {
            zero(b, 0x18b, 0x1a0)?;
        }
        if version >= 5 {
            zero(b, 0x208, 0x2a0)?;
        } else {
            zero(b, 0x1f8, 0x2a0)?;
        }
        zero(b, 0x330, 0x4a0)?;
        Ok(Report {
            version,
            guest_svn: u32_at(b, 0x4),
            policy: u64_at(b, 0x8),
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl: u32_at(b, 0x30),
            current_tcb: u64_at(b, 0x38),
            platform_info: u64_at(b, 0x40),
            key_info: u32_at(b, 0x48),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xc0),
            id_key_digest: arr(b, 0xe0),
            author_key_digest: arr(b, 0x110),
            report_id: arr(b, 0x140),
            report_id_ma: arr(b, 0x160),
            reported_tcb: u64_at(b, 0x180),
            cpuid: (version >= 3).then(|| (b[0x188], b[0x189], b[0x18a])),
            chip_id: arr(b, 0x1a0),
            committed_tcb: u64_at(b, 0x1e0),
            current_version: (b[0x1ea], b[0x1e9], b[0x1e8]),
            committed_version: (b[0x1ee], b[0x1ed], b[0x1ec]),
            launch_tcb: u64_at(b, 0x1f0),
            launch_mit_vector: (version >= 5).then(|| u64_at(b, 0x1f8)),
            current_mit_vector: (version >= 5).then(|| u64_at(b, 0x200)),
            signature_r: arr(b, 0x2a0),
            signature_s: arr(b, 0x2e8),
            signed: b[..SIGNED_SIZE].to_vec(),
        })
    }

    /// SIGNING_KEY: 0 VCEK, 1 VLEK, 7 none.
    pub fn signing_key(&self) -> u32 {
        (self.key_info >> 2) & 7
    }

    pub fn debug_allowed(&self) -> bool {
        self.policy & (1 << 19) != 0
    }

    pub fn migrate_ma_allowed(&self) -> bool {
        self.policy & (1 << 18) != 0
    }

    pub fn smt_allowed(&self) -> bool {
        self.policy & (1 << 16) != 0
    }
}

/// The VCEK cache file name for a report: `<hex CHIP_ID>-<REPORTED_TCB as 16 hex>.der`. A
/// VCEK is specific to one chip and one TCB, so this key finds it without AMD's KDS.
pub fn vcek_cache_name(r: &Report) -> String {
    format!("{}-{:016x}.der", hex::encode(r.chip_id), r.reported_tcb)
}

/// Where AMD's KDS serves the VCEK of this report, for the message when the cache misses.
pub fn kds_vcek_url(r: &Report) -> String {
    let (name, chip) = match r.cpuid {
        Some((0x1a, _, _)) => ("Turin", &r.chip_id[..8]),
        Some((0x19, m, _)) if (0x10..0x20).contains(&m) => ("Genoa", &r.chip_id[..]),
        Some((0x19, _, _)) => ("Milan", &r.chip_id[..]),
        _ => ("{Milan|Genoa|Turin}", &r.chip_id[..]),
    };
    let t = r.reported_tcb.to_le_bytes();
    format!(
        "https://kdsintf.amd.com/vcek/v1/{name}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={} (Milan/Genoa TCB layout)",
        hex::encode(chip),
        t[0],
        t[1],
        t[6],
        t[7]
    )
}

/// AMD product generation (decides the pinned roots and the TCB encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Milan,
    Genoa,
    Turin,
}

/// TCB_VERSION components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcb {
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl Tcb {
    /// Decode a TCB_VERSION for a product (Milan/Genoa: bl, tee, -, -, -, -, snp, ucode;
    /// Turin: fmc, bl, tee, snp, -, -, -, ucode).
    pub fn decode(v: u64, p: Product) -> Tcb {
        let b = v.to_le_bytes();
        match p {
            Product::Milan | Product::Genoa => Tcb {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
            Product::Turin => Tcb {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }

    /// Every component at least `min`'s.
    pub fn at_least(&self, min: &Tcb) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
            && self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
    }
}

/// What the verifier requires beyond a genuine report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpPolicy {
    pub allow_debug: bool,
    pub allow_migration_agent: bool,
    pub allow_smt: bool,
    /// Required VMPL of the requester (None: any).
    pub vmpl: Option<u32>,
    pub min_tcb: Tcb,
    /// Accepted launch measurements (empty: not checked here).
    pub measurements: Vec<[u8; 48]>,
    /// Expected REPORT_DATA, if bound.
    pub report_data: Option<[u8; 64]>,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        SnpPolicy {
            allow_debug: false,
            allow_migration_agent: false,
            allow_smt: true,
            vmpl: Some(0),
            min_tcb: Tcb::default(),
            measurements: Vec::new(),
            report_data: None,
        }
    }
}

pub use crate::verdict::{Check, Verdict};

const OID_PREFIX: &str = "1.3.6.1.4.1.3704.1.";

/// The VEK's AMD extensions: OID suffix (e.g. "3.1") → raw extnValue contents.
fn amd_extensions(cert: &X509) -> Vec<(String, Vec<u8>)> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter_map(|e| {
            let oid = e.extn_id.to_string();
            oid.strip_prefix(OID_PREFIX)
                .map(|s| (s.to_string(), e.extn_value.as_bytes().to_vec()))
        })
        .collect()
}

/// A DER INTEGER's value (small, non-negative).
fn der_small_int(b: &[u8]) -> Option<u64> {
    if b.len() < 3 || b[0] != 0x02 || b[1] as usize != b.len() - 2 || b.len() > 11 {
        return None;
    }
    Some(
        b[2..]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
    )
}

/// The product (from the VEK's issuer) and the decoded REPORTED_TCB of a report — what a
/// minimum-TCB policy compares; call it after [`verify`] accepted the pair.
pub fn reported_tcb(report: &[u8], vek_der: &[u8]) -> Option<(Product, Tcb)> {
    let r = Report::parse(report).ok()?;
    let cert = X509::from_der(vek_der).ok()?;
    let p = product_of(&cert)?;
    Some((p, Tcb::decode(r.reported_tcb, p)))
}

fn product_of(cert: &X509) -> Option<Product> {
    let issuer = cert.tbs_certificate.issuer.to_string();
    if issuer.contains("Milan") {
        Some(Product::Milan)
    } else if issuer.contains("Genoa") {
        Some(Product::Genoa)
    } else if issuer.contains("Turin") {
        Some(Product::Turin)
    } else {
        None
    }
}

fn pinned_ca(p: Product) -> Result<ca::Chain, std::io::Error> {
    Ok(match p {
        Product::Milan => ca::Chain {
            ark: builtin::milan::ark()?,
            ask: builtin::milan::ask()?,
        },
        Product::Genoa => ca::Chain {
            ark: builtin::genoa::ark()?,
            ask: builtin::genoa::ask()?,
        },
        Product::Turin => ca::Chain {
            ark: builtin::turin::ark()?,
            ask: builtin::turin::ask()?,
        },
    })
}

/// Why PEM text gave no certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("chain is not PEM text")]
    NotText,
    #[error("END without BEGIN")]
    Unbalanced,
    #[error("bad base64 in chain: {0}")]
    Base64(String),
    #[error("no certificate in chain")]
    Empty,
}

/// Certificates from PEM text (ASK/ASVK then ARK, as AMD's KDS cert_chain serves them).
pub fn pem_certs(text: &[u8]) -> Result<Vec<Vec<u8>>, PemError> {
    let text = std::str::from_utf8(text).map_err(|_| PemError::NotText)?;
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("-----BEGIN CERTIFICATE") {
            cur = Some(String::new());
        } else if l.starts_with("-----END CERTIFICATE") {
            let b64 = cur.take().ok_or(PemError::Unbalanced)?;
            use base64::Engine;
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| PemError::Base64(e.to_string()))?,
            );
        } else if let Some(c) = cur.as_mut() {
            c.push_str(l);
        }
    }
    if out.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(out)
}

/// Verify a report with its VEK (DER) and, optionally, a supplied ASK/ASVK+ARK chain, at
/// `now` (Unix seconds), against `policy`. Never fails early: every check is listed.
pub fn verify(
    report: &[u8],
    vek_der: &[u8],
    chain: Option<&[Vec<u8>]>,
    now: u64,
    policy: &SnpPolicy,
) -> Verdict {
    verify_report(report, vek_der, chain, now, policy).0
}

/// What a report says, decoded once by [`verify_report`]: the report, the product its VEK
/// names and the REPORTED_TCB decoded for that product (what a minimum-TCB policy compares).
#[derive(Debug, Clone)]
pub struct SnpFacts {
    pub report: Report,
    pub product: Product,
    pub tcb: Tcb,
}

/// [`verify`], also returning the decoded report when it and its VEK decoded (whether or not
/// every check passed: the verdict says that).
pub fn verify_report(
    report: &[u8],
    vek_der: &[u8],
    chain: Option<&[Vec<u8>]>,
    now: u64,
    policy: &SnpPolicy,
) -> (Verdict, Option<SnpFacts>) {
    let mut v = Verdict::default();
    let r = match Report::parse(report) {
        Ok(r) => {
            v.push("report.decode", true, format!("version {}", r.version));
            r
        }
        Err(e) => {
            v.push("report.decode", false, e.to_string());
            return (v, None);
        }
    };
    let x509 = match X509::from_der(vek_der) {
        Ok(c) => c,
        Err(e) => {
            v.push(
                "vek.decode",
                false,
                format!("not a DER X.509 certificate: {e}"),
            );
            return (v, None);
        }
    };
    let Some(product) = product_of(&x509) else {
        v.push(
            "vek.product",
            false,
            format!(
                "issuer {} names no known product (Milan, Genoa, Turin)",
                x509.tbs_certificate.issuer
            ),
        );
        return (v, None);
    };
    let is_vlek = x509.tbs_certificate.issuer.to_string().contains("VLEK");
    v.push(
        "vek.product",
        true,
        format!("{product:?}{}", if is_vlek { " (VLEK)" } else { "" }),
    );
    let key_kind = r.signing_key();
    v.push(
        "report.signing_key",
        (key_kind == 0 && !is_vlek) || (key_kind == 1 && is_vlek),
        format!(
            "report says {} and the certificate is a {}",
            match key_kind {
                0 => "VCEK",
                1 => "VLEK",
                7 => "no key",
                _ => "reserved",
            },
            if is_vlek { "VLEK" } else { "VCEK" }
        ),
    );

    // Chain: the pinned ARK always; a supplied ASK/ARK must be the pinned ones.
    let vek = Certificate::from(x509.clone());
    let chain_ok = (|| -> Result<String, String> {
        let mut pinned = pinned_ca(product).map_err(|e| e.to_string())?;
        if is_vlek {
            // The VLEK is signed by the ASVK, which must come with the evidence; the pinned
            // ARK must sign it.
            let supplied = chain.ok_or("a VLEK needs its ASVK: pass --chain")?;
            let asvk = supplied.first().ok_or("empty chain")?;
            pinned.ask = Certificate::from_der(asvk).map_err(|e| format!("ASVK: {e}"))?;
        } else if let Some(supplied) = chain {
            for der in supplied {
                let ok = [&pinned.ark, &pinned.ask]
                    .iter()
                    .any(|c| c.to_der().map(|d| &d == der).unwrap_or(false));
                if !ok {
                    return Err("a supplied chain certificate is not AMD's pinned ARK/ASK".into());
                }
            }
        }
        let c = Chain { ca: pinned, vek };
        (&c).verify().map_err(|e| e.to_string())?;
        Ok(format!(
            "pinned {product:?} ARK → {} → {}",
            if is_vlek { "ASVK" } else { "ASK" },
            if is_vlek { "VLEK" } else { "VCEK" }
        ))
    })();
    match chain_ok {
        Ok(d) => v.push("chain", true, d),
        Err(e) => v.push("chain", false, e),
    };

    // Validity at the verification time.
    let validity = &x509.tbs_certificate.validity;
    let nb = validity.not_before.to_unix_duration().as_secs();
    let na = validity.not_after.to_unix_duration().as_secs();
    v.push(
        "vek.validity",
        nb <= now && now <= na,
        format!("valid {nb}..{na} (Unix s), verification time {now}"),
    );

    // Report signature: ECDSA P-384 / SHA-384 over bytes 0..0x2A0; R and S little-endian.
    let sig_ok = (|| -> Result<(), String> {
        use p384::ecdsa::signature::Verifier;
        let spki = x509
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(spki)
            .map_err(|_| "VEK public key is not P-384".to_string())?;
        if r.signature_r[48..].iter().any(|&b| b != 0)
            || r.signature_s[48..].iter().any(|&b| b != 0)
        {
            return Err("signature R/S wider than 48 bytes".into());
        }
        let mut rs = [0u8; 96];
        for i in 0..48 {
            rs[i] = r.signature_r[47 - i];
            rs[48 + i] = r.signature_s[47 - i];
        }
        let sig =
            p384::ecdsa::Signature::from_slice(&rs).map_err(|e| format!("bad signature: {e}"))?;
        key.verify(&r.signed, &sig)
            .map_err(|_| "the VEK did not sign this report".to_string())
    })();
    match sig_ok {
        Ok(()) => v.push(
            "report.signature",
            true,
            "ECDSA P-384 SHA-384 over 0x000..0x2A0",
        ),
        Err(e) => v.push("report.signature", false, e),
    };

    // VEK extensions: SPLs equal REPORTED_TCB; hwID equals CHIP_ID (VCEK).
    let ext = amd_extensions(&x509);
    let reported = Tcb::decode(r.reported_tcb, product);
    let mut spl = |suffix: &str, want: u8, name: &str| {
        let got = ext
            .iter()
            .find(|(s, _)| s == suffix)
            .and_then(|(_, b)| der_small_int(b));
        v.push(
            &format!("vek.tcb.{name}"),
            got == Some(u64::from(want)),
            format!("certificate {name}SPL {got:?}, report REPORTED_TCB {want}"),
        );
    };
    spl("3.1", reported.bootloader, "bl");
    spl("3.2", reported.tee, "tee");
    spl("3.3", reported.snp, "snp");
    spl("3.8", reported.microcode, "ucode");
    if let Some(fmc) = reported.fmc {
        spl("3.9", fmc, "fmc");
    }
    if !is_vlek {
        let hwid = ext.iter().find(|(s, _)| s == "4").map(|(_, b)| b.clone());
        let chip: &[u8] = if product == Product::Turin {
            &r.chip_id[..8]
        } else {
            &r.chip_id[..]
        };
        v.push(
            "vek.hwid",
            hwid.as_deref() == Some(chip),
            "certificate hwID vs report CHIP_ID".to_string(),
        );
    }

    // Guest policy.
    v.push(
        "policy.debug",
        policy.allow_debug || !r.debug_allowed(),
        format!(
            "guest policy {:#x}: DEBUG {}",
            r.policy,
            if r.debug_allowed() {
                "allowed (refused)"
            } else {
                "off"
            }
        ),
    );
    v.push(
        "policy.migrate_ma",
        policy.allow_migration_agent || !r.migrate_ma_allowed(),
        format!(
            "MIGRATE_MA {}",
            if r.migrate_ma_allowed() {
                "allowed"
            } else {
                "off"
            }
        ),
    );
    v.push(
        "policy.smt",
        policy.allow_smt || !r.smt_allowed(),
        format!("SMT {}", if r.smt_allowed() { "allowed" } else { "off" }),
    );
    if let Some(vmpl) = policy.vmpl {
        v.push(
            "report.vmpl",
            r.vmpl == vmpl,
            format!("VMPL {} (required {vmpl})", r.vmpl),
        );
    }
    v.push(
        "tcb.minimum",
        reported.at_least(&policy.min_tcb),
        format!("REPORTED_TCB {reported:?}, minimum {:?}", policy.min_tcb),
    );
    if !policy.measurements.is_empty() {
        v.push(
            "measurement",
            policy.measurements.contains(&r.measurement),
            format!("MEASUREMENT {}", hex::encode(r.measurement)),
        );
    }
    if let Some(rd) = policy.report_data {
        v.push(
            "report_data",
            rd == r.report_data,
            "REPORT_DATA vs the expected binding",
        );
    }
    let facts = SnpFacts {
        tcb: reported,
        product,
        report: r,
    };
    (v, Some(facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_SIZE];
        b[..4].copy_from_slice(&version.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn versions_decode_their_own_fields() {
        let mut v2 = blank(2);
        v2[0x1f8] = 0; // reserved in v2
        let r = Report::parse(&v2).unwrap();
        assert_eq!((r.cpuid, r.launch_mit_vector), (None, None));

        let mut v3 = blank(3);
        v3[0x188..0x18b].copy_from_slice(&[0x19, 0x11, 0x01]);
        let r = Report::parse(&v3).unwrap();
        assert_eq!(r.cpuid, Some((0x19, 0x11, 0x01)));
        // CPUID bytes are reserved (must be zero) in v2.
        let mut bad = v3.clone();
        bad[..4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            Report::parse(&bad),
            Err(ReportError::Reserved { .. })
        ));

        let mut v5 = blank(5);
        v5[0x1f8] = 7;
        v5[0x200] = 9;
        let r = Report::parse(&v5).unwrap();
        assert_eq!(
            (r.launch_mit_vector, r.current_mit_vector),
            (Some(7), Some(9))
        );
        // Mitigation vectors are reserved before v5.
        let mut bad = v5.clone();
        bad[..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            Report::parse(&bad),
            Err(ReportError::Reserved { .. })
        ));
    }

    #[test]
    fn unknown_versions_and_algorithms_are_errors() {
        for v in [0u32, 1, 4, 6, 100] {
            assert_eq!(Report::parse(&blank(v)), Err(ReportError::Version(v)));
        }
        let mut b = blank(2);
        b[0x34] = 2;
        assert_eq!(Report::parse(&b), Err(ReportError::SignatureAlgo(2)));
        assert_eq!(Report::parse(&b[..100]), Err(ReportError::Length(100)));
    }

    #[test]
    fn tcb_layouts() {
        // Milan: bl=3, tee=0, snp=8, ucode=0x73 is 0x7308000000000003.
        let t = Tcb::decode(0x7308_0000_0000_0003, Product::Milan);
        assert_eq!(
            (t.bootloader, t.tee, t.snp, t.microcode, t.fmc),
            (3, 0, 8, 0x73, None)
        );
        let t = Tcb::decode(0x0900_0000_0403_0201, Product::Turin);
        assert_eq!(
            (t.fmc, t.bootloader, t.tee, t.snp, t.microcode),
            (Some(1), 2, 3, 4, 9)
        );
        assert!(t.at_least(&Tcb::default()));
        assert!(!Tcb::default().at_least(&t));
    }

    #[test]
    fn der_integers() {
        assert_eq!(der_small_int(&[0x02, 0x01, 0x73]), Some(0x73));
        assert_eq!(der_small_int(&[0x02, 0x02, 0x00, 0xa9]), Some(0xa9));
        assert_eq!(der_small_int(&[0x04, 0x01, 0x73]), None);
        assert_eq!(der_small_int(&[0x02, 0x05, 0x73]), None);
    }
}
