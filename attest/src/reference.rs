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

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parse 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Sha256(out))
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not a SHA-256 hex digest: {s:?}")))
    }
}

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
    pub measurements: BTreeMap<String, serde_json::Value>,
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
        if m.recipe.is_empty() {
            return Err(ReferenceError::Invalid {
                field: "recipe".into(),
                reason: "empty".into(),
            });
        }
        Ok(m)
    }

    /// Canonical bytes: sorted keys at every level, two-space indent, trailing newline.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ReferenceError> {
        let value = sorted(serde_json::to_value(self).map_err(ReferenceError::Serialise)?);
        let mut out = serde_json::to_vec_pretty(&value).map_err(ReferenceError::Serialise)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// Rebuild every object with its keys inserted in sorted order. (Whether serde_json's map
/// sorts by itself depends on the `preserve_order` feature, which any crate in the build can
/// switch on; a dependency did, so sorting is done here explicitly.)
pub fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<(String, serde_json::Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sorted).collect())
        }
        other => other,
    }
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
            measurements: BTreeMap::new(),
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
    fn azure_claims_use_azure_pcrs_only() {
        let mut m = sample();
        let pcr = |b: u8| vec![b; 32];
        m.measurements.insert(
            "tpm".into(),
            serde_json::json!({"pcrs": {"4": hex::encode(pcr(4)), "11": hex::encode(pcr(11))}}),
        );
        let quoted: Vec<(u32, Vec<u8>)> = (0..24).map(|i| (i, pcr(i as u8))).collect();
        // No azure section: an Azure quote is refused even though tpm.pcrs would match.
        let v = m.evaluate(&Claims::Azure {
            pcrs: quoted.clone(),
        });
        assert!(!v.ok());
        m.measurements.insert(
            "azure".into(),
            serde_json::json!({"pcrs": {"4": hex::encode(pcr(4)), "9": hex::encode(pcr(9)), "11": hex::encode(pcr(11)), "23": hex::encode(pcr(23))}}),
        );
        assert!(m
            .evaluate(&Claims::Azure {
                pcrs: quoted.clone()
            })
            .ok());
        assert!(m
            .evaluate(&Claims::Tpm {
                pcrs: quoted.clone()
            })
            .ok());
        // PCR 4 (the firmware's measurement of the UKI: the root of the chain) is required too:
        // an OS that replays 9, 11 and 23 but booted something else is refused.
        for idx in [4usize, 9, 11, 23] {
            let mut q = quoted.clone();
            q[idx].1[0] ^= 1;
            let v = m.evaluate(&Claims::Azure { pcrs: q });
            assert!(!v.ok(), "PCR {idx}");
            assert!(
                format!("{v:?}").contains(&format!("reference.pcr.{idx}")),
                "{v:?}"
            );
        }
        m.measurements.insert(
            "azure".into(),
            serde_json::json!({"pcrs": {"24": hex::encode(pcr(1))}}),
        );
        assert!(m.pcrs_of("azure").unwrap_err().contains("not a PCR index"));
    }

    #[test]
    fn tdx_claims_are_refused_even_with_the_reference_mrtd() {
        // MRTD is the TD firmware only: a TD running another kernel/initrd/command line from
        // the same firmware has the same MRTD, so MRTD alone never releases.
        let mut m = sample();
        let mrtd = [0xabu8; 48];
        m.measurements
            .insert("tdx".into(), serde_json::json!({"mrtd": hex::encode(mrtd)}));
        let v = m.evaluate(&Claims::Tdx { mrtd });
        assert!(!v.ok());
        let text = format!("{v:?}");
        assert!(
            text.contains("reference.tdx.rtmrs") && text.contains("RTMR1/RTMR2"),
            "{text}"
        );
        assert!(v
            .checks
            .iter()
            .any(|c| c.name == "reference.tdx.mrtd" && c.ok));
    }

    #[test]
    fn bad_digest_is_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["contract_digest"] = "abcd".into();
        assert!(Measurements::from_json(v.to_string().as_bytes()).is_err());
    }
}

/// What verified evidence says about the launched image, per platform: the values a
/// measurements.json predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claims {
    /// SHA-256 bank PCR values from a verified quote.
    Tpm { pcrs: Vec<(u32, Vec<u8>)> },
    /// MEASUREMENT of a verified SEV-SNP report.
    Snp { launch_digest: [u8; 48] },
    /// MRTD of a verified TDX quote.
    Tdx { mrtd: [u8; 48] },
    /// SHA-256 PCRs of an Azure CVM's vTPM, from a quote by the AK the hardware report binds
    /// (az-snp-vtpm, az-tdx-vtpm). Compared with `azure.pcrs`, not `tpm.pcrs`: on Azure the
    /// firmware is Microsoft's, so only the firmware-independent PCRs are reference values.
    Azure { pcrs: Vec<(u32, Vec<u8>)> },
}

impl Measurements {
    /// The SHA-256 PCRs predicted in `tpm.pcrs`, sorted by index.
    pub fn expected_pcrs(&self) -> Result<Vec<(u32, Vec<u8>)>, String> {
        self.pcrs_of("tpm")
    }

    /// The SHA-256 PCRs `<platform>.pcrs` (`tpm` or `azure`), sorted by index.
    pub fn pcrs_of(&self, platform: &str) -> Result<Vec<(u32, Vec<u8>)>, String> {
        let pcrs = self
            .measurements
            .get(platform)
            .and_then(|t| t["pcrs"].as_object())
            .ok_or_else(|| {
                format!("no {platform}.pcrs (the recipe's platforms lack {platform})")
            })?;
        let mut want = Vec::new();
        for (k, v) in pcrs {
            let idx: u32 = k
                .parse()
                .ok()
                .filter(|i| *i < 24)
                .ok_or_else(|| format!("{platform}.pcrs key {k:?} is not a PCR index"))?;
            let val = v
                .as_str()
                .and_then(|s| hex::decode(s).ok())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("{platform}.pcrs.{k} is not 32 bytes of hex"))?;
            want.push((idx, val));
        }
        if want.is_empty() {
            return Err(format!("{platform}.pcrs is empty"));
        }
        want.sort();
        Ok(want)
    }

    /// A 48-byte hex value at `<platform>.<field>` (snp.launch_digest, tdx.mrtd).
    pub fn expected_48(&self, platform: &str, field: &str) -> Result<[u8; 48], String> {
        let text = self
            .measurements
            .get(platform)
            .and_then(|s| s[field].as_str())
            .ok_or_else(|| {
                format!("no {platform}.{field} (the recipe's platforms lack {platform})")
            })?;
        hex::decode(text)
            .ok()
            .and_then(|b| <[u8; 48]>::try_from(b).ok())
            .ok_or_else(|| format!("{platform}.{field} is not 48 bytes of hex"))
    }

    /// Compare verified claims with these reference values. Every reference field of the
    /// claims' platform must match; a platform without reference values is refused.
    pub fn evaluate(&self, claims: &Claims) -> crate::verdict::Verdict {
        let mut v = crate::verdict::Verdict::default();
        let h = crate::measure::hex;
        match claims {
            Claims::Tpm { pcrs } | Claims::Azure { pcrs } => {
                match self.pcrs_of(if matches!(claims, Claims::Tpm { .. }) {
                    "tpm"
                } else {
                    "azure"
                }) {
                    Err(e) => {
                        v.push("reference.pcrs", false, e);
                    }
                    Ok(want) => {
                        for (idx, w) in want {
                            let got = pcrs.iter().find(|(i, _)| *i == idx).map(|(_, d)| d);
                            v.push(
                                &format!("reference.pcr.{idx}"),
                                got == Some(&w),
                                format!(
                                    "quoted {} vs reference {}",
                                    got.map(|g| h(g)).unwrap_or_else(|| "not quoted".into()),
                                    h(&w)
                                ),
                            );
                        }
                    }
                }
            }
            Claims::Snp { launch_digest } => match self.expected_48("snp", "launch_digest") {
                Err(e) => {
                    v.push("reference.snp", false, e);
                }
                Ok(w) => {
                    v.push(
                        "reference.snp.launch_digest",
                        *launch_digest == w,
                        format!("reported {} vs reference {}", h(launch_digest), h(&w)),
                    );
                }
            },
            Claims::Tdx { mrtd } => match self.expected_48("tdx", "mrtd") {
                Err(e) => {
                    v.push("reference.tdx", false, e);
                }
                Ok(w) => {
                    v.push(
                        "reference.tdx.mrtd",
                        *mrtd == w,
                        format!("quoted {} vs reference {}", h(mrtd), h(&w)),
                    );
                    // MRTD is the firmware only: refuse until the RTMRs are predicted.
                    v.push(
                        "reference.tdx.rtmrs",
                        false,
                        crate::tdx::RTMRS_NOT_PREDICTED,
                    );
                }
            },
        }
        v
    }
}
