//! `measurements.json`: the reference values of one image build.
//!
//! The document is versioned ([`SCHEMA_VERSION`]); a reader refuses any other version instead
//! of guessing. It is written with sorted keys and two-space indentation, so two builds of the
//! same recipe give byte-identical files. The schema is documented in `docs/measurements.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only schema version this code reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors reading or writing a reference-value document.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("measurements.json is not valid JSON for schema version {SCHEMA_VERSION}: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("measurements.json: field schema_version is {found}, this build reads only {SCHEMA_VERSION}")]
    UnknownVersion { found: u64 },
    #[error("measurements.json: field schema_version is missing or not a number")]
    MissingVersion,
    #[error("measurements.json: field {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("cannot serialise measurements.json: {0}")]
    Serialise(#[source] serde_json::Error),
}

pub use crate::digest::{Sha256, Sha384};

/// One pinned or produced input of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Where the bytes came from, e.g. `deb:linux-image-…=6.12.95-1~bpo12+1:boot/vmlinuz-…`,
    /// `file:workloads/bin/x`, `crate:guest-init`.
    pub source: String,
    /// SHA-256 of the bytes that went into the image.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

/// One output file of the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub sha256: Sha256,
    pub size: u64,
}

/// The reference values of one build (schema version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    pub schema_version: u32,
    /// Recipe name (`name` in image.toml).
    pub recipe: String,
    /// Recipe version (`version` in image.toml).
    pub recipe_version: String,
    /// The timestamp written into every archive entry (SOURCE_DATE_EPOCH or the recipe's).
    pub source_date_epoch: u64,
    /// Kernel release string read from the bzImage header.
    pub kernel_release: String,
    /// The kernel command line inside the UKI `.cmdline` and used for direct boot.
    pub cmdline: String,
    /// SHA-256 of the contract as packed at /etc/dcr/contract.json (its canonical JSON).
    pub contract_digest: Sha256,
    /// The Rust target the guest binaries were built for.
    pub guest_target: String,
    /// Every input, keyed by a stable name (`kernel`, `stub`, `contract`, `guest-init`,
    /// `module:<name>`, `workload:<name>`).
    pub inputs: BTreeMap<String, Input>,
    /// Every artifact in the output directory except measurements.json itself.
    pub artifacts: BTreeMap<String, Artifact>,
    /// Predicted launch measurements per platform (filled by the measurement library).
    pub measurements: Predictions,
}

impl Measurements {
    /// Parse and check a document; unknown versions and unknown fields are errors.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReferenceError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(ReferenceError::Parse)?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            None => return Err(ReferenceError::MissingVersion),
            Some(v) if v != u64::from(SCHEMA_VERSION) => {
                return Err(ReferenceError::UnknownVersion { found: v })
            }
            Some(_) => {}
        }
        let m: Measurements = serde_json::from_value(value).map_err(ReferenceError::Parse)?;
        m.validate()?;
        Ok(m)
    }

    /// The checks [`Measurements::from_json`] makes beyond the schema's types (for a document
    /// that arrived inside another message).
    pub fn validate(&self) -> Result<(), ReferenceError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ReferenceError::UnknownVersion {
                found: u64::from(self.schema_version),
            });
        }
        if self.recipe.is_empty() {
            return Err(invalid("recipe", "empty"));
        }
        self.measurements.check()
    }

    /// Canonical bytes: sorted keys at every level, two-space indent, trailing newline.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ReferenceError> {
        crate::canonical::pretty(self).map_err(|e| ReferenceError::Serialise(e.0))
    }
}

fn invalid(field: &str, reason: &str) -> ReferenceError {
    ReferenceError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The predicted launch measurements, one optional section per platform (a recipe predicts
/// the platforms it lists). Only the values a verifier compares are required in a section;
/// `shape` (what the prediction assumes) and the event lists (how it was computed) explain it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predictions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmPrediction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpPrediction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxPrediction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzurePrediction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nitro: Option<NitroPrediction>,
}

impl Predictions {
    fn check(&self) -> Result<(), ReferenceError> {
        if self.tpm.as_ref().is_some_and(|t| t.pcrs.is_empty()) {
            return Err(invalid("measurements.tpm.pcrs", "empty"));
        }
        if self.azure.as_ref().is_some_and(|t| t.pcrs.is_empty()) {
            return Err(invalid("measurements.azure.pcrs", "empty"));
        }
        if let Some(n) = &self.nitro {
            for i in [0, 1, 2] {
                if !n.pcrs.contains_key(&PcrIndex(i)) {
                    return Err(invalid(
                        "measurements.nitro.pcrs",
                        "PCRs 0, 1 and 2 are required",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A TPM PCR index (0–23), written as a decimal map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PcrIndex(u32);

impl PcrIndex {
    /// `Some` for 0–23.
    pub fn new(i: u32) -> Option<Self> {
        (i < 24).then_some(PcrIndex(i))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for PcrIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let i = u32::deserialize(d)?;
        PcrIndex::new(i)
            .ok_or_else(|| serde::de::Error::custom(format!("{i} is not a PCR index (0-23)")))
    }
}

/// SHA-256 bank PCR values by index.
pub type Pcrs = BTreeMap<PcrIndex, Sha256>;

/// One PCR extend of a prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrEvent {
    pub pcr: u32,
    /// What was measured, e.g. `.linux (name)`, `.linux`, `workload overlap`.
    pub description: String,
    /// SHA-256 extended.
    pub digest: Sha256,
    /// PCR value after it.
    pub value_after: Sha256,
}

/// `tpm`: a TPM 2.0 (swtpm, a physical or vTPM) behind OVMF booting the UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmPrediction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<TpmShape>,
    pub pcrs: Pcrs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<PcrEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmShape {
    pub boot: String,
    pub bank: String,
}

/// `azure`: an Azure confidential VM's vTPM; only the firmware-independent PCRs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzurePrediction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<AzureShape>,
    pub pcrs: Pcrs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureShape {
    pub boot: String,
    pub bank: String,
    pub hardware: String,
    pub pcr4: String,
}

/// One step of an SEV-SNP launch digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpEvent {
    /// What was measured: `firmware`, `SNP_SEC_MEM`, `kernel-hashes`, `vmsa[3]`, …
    pub component: String,
    pub page_type: String,
    pub gpa: u64,
    pub pages: u64,
    /// SHA-256 (SEV/SEV-ES, 32 bytes) or launch digest (SNP, 48 bytes) after this step, hex.
    pub digest_after: String,
}

/// `snp`: QEMU direct boot under SEV-SNP with kernel hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPrediction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<SnpShape>,
    /// The report's MEASUREMENT.
    pub launch_digest: Sha384,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_hashes: Option<KernelHashes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SnpEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpShape {
    pub boot: String,
    pub vcpus: u32,
    pub vcpu_type: String,
    /// CPUID signature, `0x…`.
    pub vcpu_sig: String,
    /// `0x…`.
    pub guest_features: String,
    pub vmm: String,
    pub firmware_sha256: Sha256,
}

/// The SEV kernel-hashes table entries (OVMF's measured direct boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelHashes {
    pub kernel: Sha256,
    pub initrd: Sha256,
    pub cmdline: Sha256,
}

/// One TDVF section as MRTD measures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MrtdEvent {
    pub section: usize,
    pub kind: String,
    pub gpa: u64,
    pub pages: u64,
    /// Whether the section's contents are MR.EXTENDed (not only added).
    pub extended: bool,
}

/// `tdx`: the TD firmware's MRTD (RTMRs are not predicted yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPrediction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<TdxShape>,
    pub mrtd: Sha384,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<MrtdEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxShape {
    pub page_order: String,
    pub firmware_sha256: Sha256,
    pub rtmrs: String,
}

/// `nitro`: an AWS Nitro Enclave booted from the build's `image.eif`. PCR 0 (kernel, command
/// line, every ramdisk), 1 (kernel, command line, first ramdisk), 2 (the other ramdisks) and,
/// for a signed EIF, 8 (the signing certificate): SHA-384 as the NSM reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NitroPrediction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<NitroShape>,
    pub pcrs: BTreeMap<PcrIndex, Sha384>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NitroShape {
    /// `eif-v4`: the Enclave Image File version the PCRs are computed from.
    pub image: String,
    /// SHA-256 of the EIF.
    pub eif_sha256: Sha256,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Measurements {
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "kernel".to_string(),
            Input {
                source: "file:vmlinuz".into(),
                sha256: Sha256([7; 32]),
                size: 3,
            },
        );
        Measurements {
            schema_version: SCHEMA_VERSION,
            recipe: "r".into(),
            recipe_version: "1".into(),
            source_date_epoch: 1,
            kernel_release: "6.12".into(),
            cmdline: "console=ttyS0".into(),
            contract_digest: Sha256([1; 32]),
            guest_target: "x86_64-unknown-linux-musl".into(),
            inputs,
            artifacts: BTreeMap::new(),
            measurements: Predictions::default(),
        }
    }

    #[test]
    fn canonical_round_trip_with_sorted_keys() {
        let m = sample();
        let bytes = m.to_canonical_json().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        // keys appear in sorted order
        let a = text.find("\"artifacts\"").unwrap();
        let c = text.find("\"cmdline\"").unwrap();
        let s = text.find("\"schema_version\"").unwrap();
        assert!(a < c && c < s, "{text}");
        assert_eq!(Measurements::from_json(&bytes).unwrap(), m);
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["schema_version"] = 2.into();
        let err = Measurements::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(
            matches!(err, ReferenceError::UnknownVersion { found: 2 }),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["extra"] = 1.into();
        let err = Measurements::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn bad_digest_is_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["contract_digest"] = "abcd".into();
        assert!(Measurements::from_json(v.to_string().as_bytes()).is_err());
    }
}
