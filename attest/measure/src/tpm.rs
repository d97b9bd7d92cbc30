//! TPM PCR prediction for an OVMF + systemd-stub boot of a UKI.
//!
//! PCR 11 (systemd `src/boot/stub.c` measure_sections, `src/fundamental/uki.h`): for each
//! present, non-empty section in the stub's enum order — not file order — extend
//! SHA-256(name ‖ NUL), then SHA-256(section content, VirtualSize bytes). `.pcrsig` is never
//! measured. The order and the set of known sections depend on the stub's version, which the
//! UKI carries in `.sdmagic` ("#### LoaderInfo: systemd-stub 254.26-1~bpo12+1 ####").
//! Nothing after the stub extends PCR 11 in a dcr guest (no systemd-pcrphase).

use sha2::{Digest, Sha256};

/// Errors predicting PCRs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    #[error("UKI has no .sdmagic section naming the systemd-stub version")]
    NoStubVersion,
    #[error("UKI .sdmagic {0:?} does not name a systemd-stub version")]
    BadStubVersion(String),
    #[error("systemd-stub {0}: section order not known to this build (known: 252-256)")]
    UnknownStub(u32),
    #[error("UKI has no .linux section")]
    NoLinux,
    #[error("{0}: not a PE32+ image the firmware could load: {1}")]
    Pe(&'static str, String),
}

/// The systemd-stub major version from `.sdmagic`.
pub fn stub_version(sdmagic: &[u8]) -> Result<u32, TpmError> {
    let text = String::from_utf8_lossy(sdmagic);
    let text = text.trim_end_matches('\0');
    let rest = text
        .split("systemd-stub ")
        .nth(1)
        .ok_or_else(|| TpmError::BadStubVersion(text.to_string()))?;
    let major: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    major
        .parse()
        .map_err(|_| TpmError::BadStubVersion(text.to_string()))
}

/// The sections systemd-stub `version` measures into PCR 11, in its order.
pub fn pcr11_sections(version: u32) -> Result<&'static [&'static str], TpmError> {
    Ok(match version {
        252 | 253 => &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
        ],
        254 => &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat",
            ".pcrpkey",
        ],
        255 | 256 => &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname",
            ".sbat", ".pcrpkey",
        ],
        other => return Err(TpmError::UnknownStub(other)),
    })
}

use dcr_protocol::digest::Sha256 as Digest256;
/// One PCR extend (a record of measurements.json).
pub use dcr_protocol::measurements::PcrEvent;

/// A running SHA-256 PCR.
#[derive(Debug, Clone)]
pub struct Pcr {
    pub index: u32,
    pub value: [u8; 32],
    pub events: Vec<PcrEvent>,
}

impl Pcr {
    pub fn new(index: u32) -> Self {
        Pcr {
            index,
            value: [0; 32],
            events: Vec::new(),
        }
    }

    /// Extend with a digest.
    pub fn extend_digest(&mut self, description: &str, digest: [u8; 32]) {
        self.value = Sha256::new()
            .chain_update(self.value)
            .chain_update(digest)
            .finalize()
            .into();
        self.events.push(PcrEvent {
            pcr: self.index,
            description: description.to_string(),
            digest: Digest256(digest),
            value_after: Digest256(self.value),
        });
    }

    /// Extend with SHA-256 of data.
    pub fn measure(&mut self, description: &str, data: &[u8]) {
        self.extend_digest(description, Sha256::digest(data).into());
    }
}

/// PCR 11 for UKI sections `(name, in-memory content)` and a stub version.
pub fn pcr11(version: u32, sections: &[(&str, &[u8])]) -> Result<Pcr, TpmError> {
    if !sections
        .iter()
        .any(|(n, d)| *n == ".linux" && !d.is_empty())
    {
        return Err(TpmError::NoLinux);
    }
    let mut pcr = Pcr::new(11);
    for name in pcr11_sections(version)? {
        if let Some((_, data)) = sections.iter().find(|(n, _)| n == name) {
            if data.is_empty() {
                continue;
            }
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            pcr.measure(&format!("{name} (name)"), &n);
            pcr.measure(name, data);
        }
    }
    Ok(pcr)
}

/// PCR 12 / PCR 9 helper: a kernel command line as the stub and kernel measure it
/// (UTF-16LE with a terminating NUL).
pub fn utf16_cmdline(cmdline: &str) -> Vec<u8> {
    let mut out: Vec<u8> = cmdline
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    out.extend_from_slice(&[0, 0]);
    out
}

/// PCR 9 as the Linux EFI stub measures what systemd-stub hands it (seen in a real
/// OVMF + stub 254 + Linux 6.12 TCG2 log): the load options (the UKI `.cmdline`, UTF-16LE with
/// NUL), then the initrd (the UKI `.initrd`; no `.ucode`, credentials or sysexts in a dcr UKI).
pub fn pcr9(cmdline: &str, initrd: &[u8]) -> Pcr {
    let mut pcr = Pcr::new(9);
    pcr.measure("LOADED_IMAGE::LoadOptions", &utf16_cmdline(cmdline));
    pcr.measure("Linux initrd", initrd);
    pcr
}

/// Authenticode SHA-256 of a PE32+ image (what EDK2's DxeTpm2MeasureBootLib measures for a
/// boot application: headers without CheckSum and the certificate-table entry, sections in
/// file order, trailing data without the certificate table).
pub fn authenticode_sha256(what: &'static str, pe: &[u8]) -> Result<[u8; 32], TpmError> {
    let file =
        object::read::pe::PeFile64::parse(pe).map_err(|e| TpmError::Pe(what, e.to_string()))?;
    let mut h = Sha256::new();
    authenticode::authenticode_digest(&file, &mut h)
        .map_err(|_| TpmError::Pe(what, "offsets out of range".into()))?;
    Ok(h.finalize().into())
}

/// PCR 4 of an OVMF boot of a UKI from the ESP (TCG PC Client PFP §3.3.4.5): the boot-manager
/// action "Calling EFI Application from Boot Option", the separator, then one
/// EV_EFI_BOOT_SERVICES_APPLICATION per PE image loaded: the UKI, then the kernel systemd-stub
/// loads from `.linux`.
pub fn pcr4(uki: &[u8], linux: &[u8]) -> Result<Pcr, TpmError> {
    let mut pcr = Pcr::new(4);
    pcr.measure(
        "EV_EFI_ACTION Calling EFI Application from Boot Option",
        b"Calling EFI Application from Boot Option",
    );
    pcr.measure("EV_SEPARATOR", &[0, 0, 0, 0]);
    pcr.extend_digest(
        "EV_EFI_BOOT_SERVICES_APPLICATION UKI",
        authenticode_sha256("UKI", uki)?,
    );
    pcr.extend_digest(
        "EV_EFI_BOOT_SERVICES_APPLICATION .linux",
        authenticode_sha256(".linux", linux)?,
    );
    Ok(pcr)
}

/// The PCR guest-init extends with the contract and workload digests.
pub const CONTRACT_PCR: u32 = 23;

/// The PCR 23 rule, written once: what guest-init extends into [`CONTRACT_PCR`], in order, as
/// (event description, SHA-256 digest): the contract digest (SHA-256 of the canonical
/// contract), then the SHA-256 of each workload in name order (byte order of the names). Each
/// digest is extended as it is (TPM2_PCR_Extend of the SHA-256 bank, as the manual workflow's
/// `tpm2_pcrextend 23:sha256=…` does). guest-init extends exactly these; [`pcr23`] predicts
/// the resulting value.
pub fn pcr23_extends(
    contract_digest: [u8; 32],
    workloads: &[(&str, &[u8])],
) -> Vec<(String, [u8; 32])> {
    let mut sorted: Vec<&(&str, &[u8])> = workloads.iter().collect();
    sorted.sort_by_key(|(n, _)| *n);
    let mut out = Vec::with_capacity(1 + sorted.len());
    out.push(("contract".to_string(), contract_digest));
    for (name, bytes) in sorted {
        out.push((format!("workload {name}"), Sha256::digest(bytes).into()));
    }
    out
}

/// PCR 23 as guest-init extends it ([`pcr23_extends`]), from a PCR of zeros.
pub fn pcr23(contract_digest: [u8; 32], workloads: &[(&str, &[u8])]) -> Pcr {
    let mut pcr = Pcr::new(CONTRACT_PCR);
    for (description, digest) in pcr23_extends(contract_digest, workloads) {
        pcr.extend_digest(&description, digest);
    }
    pcr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_version_from_sdmagic() {
        assert_eq!(
            stub_version(b"#### LoaderInfo: systemd-stub 254.26-1~bpo12+1 ####\0").unwrap(),
            254
        );
        assert!(stub_version(b"hello").is_err());
    }

    #[test]
    fn unknown_stub_is_refused() {
        assert_eq!(
            pcr11(300, &[(".linux", b"k")]).unwrap_err(),
            TpmError::UnknownStub(300)
        );
    }

    #[test]
    fn pcr23_extends_the_contract_then_workloads_in_name_order() {
        let contract = [7u8; 32];
        let extends = pcr23_extends(contract, &[("zeta", b"z"), ("alpha", b"a")]);
        let digest = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        assert_eq!(
            extends,
            vec![
                ("contract".to_string(), contract),
                ("workload alpha".to_string(), digest(b"a")),
                ("workload zeta".to_string(), digest(b"z")),
            ]
        );
        // The predicted value is the fold of exactly those extends.
        let mut value = [0u8; 32];
        for (_, d) in &extends {
            value = Sha256::new()
                .chain_update(value)
                .chain_update(d)
                .finalize()
                .into();
        }
        let pcr = pcr23(contract, &[("zeta", b"z"), ("alpha", b"a")]);
        assert_eq!(pcr.index, 23);
        assert_eq!(pcr.value, value);
        assert_eq!(pcr.events.len(), 3);
        assert_eq!(pcr.events[1].description, "workload alpha");
    }

    #[test]
    fn no_linux_is_refused() {
        assert_eq!(
            pcr11(254, &[(".osrel", b"x")]).unwrap_err(),
            TpmError::NoLinux
        );
    }
}
