//! Reference values of a build in the formats of other key brokers, so their users can
//! release keys to a dcr image without the dcr service. Pure: measurements.json in, JSON out.
//!
//! - Azure Key Vault / Managed HSM **Secure Key Release policy** (grammar 1.0.0, Microsoft
//!   Learn "key-vault/keys/policy-grammar"): `{"version":"1.0.0","anyOf":[{"authority":
//!   <MAA URL>,"allOf":[{"claim":…,"equals":…},…]}]}`.
//! - **Trustee** (confidential-containers) Reference Value Provider Service message
//!   (`rvps/src/lib.rs` `Message`, "sample" extractor): `{"version":"0.1.0","type":"sample",
//!   "payload":base64(JSON {name: [values]})}`, plus a Rego fragment for the attestation
//!   service's policy that compares Trustee's vTPM claims (`tpm.pcrNN`) with them.

use dcr_protocol::measurements::{Measurements, Pcrs};

/// The PCR predictions of `tpm` or `azure`, sorted by index.
fn pcrs(m: &Measurements, azure: bool) -> Result<Vec<(u32, [u8; 32])>, ExportError> {
    let (section, name): (Option<&Pcrs>, &str) = if azure {
        (m.measurements.azure.as_ref().map(|a| &a.pcrs), "azure")
    } else {
        (m.measurements.tpm.as_ref().map(|t| &t.pcrs), "tpm")
    };
    let pcrs = section.ok_or_else(|| {
        ExportError::Reference(format!(
            "no {name}.pcrs (the recipe's platforms lack {name})"
        ))
    })?;
    Ok(pcrs.iter().map(|(i, v)| (i.get(), v.0)).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("measurements.json: {0}")]
    Reference(String),
    #[error("--maa {0:?}: an https:// URL of a Microsoft Azure Attestation provider is required")]
    Authority(String),
}

/// Which Azure confidential VM hardware a policy accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AzureTee {
    Snp,
    Tdx,
    /// Either (one authority entry per hardware type).
    Any,
}

/// The claim an MAA attestation policy must issue for PCR `i` (see docs/azure.md): MAA's
/// default `azurevm` policy issues no PCR values, so a Secure Key Release policy can only
/// bind an image through claims of the provider's own attestation policy.
pub fn skr_pcr_claim(i: u32) -> String {
    format!("dcr-pcr{i:02}")
}

/// The Secure Key Release policy releasing a key to this image on Azure: the hardware type,
/// MAA's compliance verdict, and each required vTPM PCR of `azure.pcrs`.
pub fn skr_policy(
    m: &Measurements,
    maa: &str,
    tee: AzureTee,
) -> Result<serde_json::Value, ExportError> {
    let url = maa.trim_end_matches('/');
    if !url.starts_with("https://")
        || url.len() <= "https://".len()
        || url.contains(char::is_whitespace)
    {
        return Err(ExportError::Authority(maa.to_string()));
    }
    let pcrs = pcrs(m, true)?;
    let types: &[&str] = match tee {
        AzureTee::Snp => &["sevsnpvm"],
        AzureTee::Tdx => &["tdxvm"],
        AzureTee::Any => &["sevsnpvm", "tdxvm"],
    };
    let any_of: Vec<serde_json::Value> = types
        .iter()
        .map(|t| {
            let mut all = vec![
                serde_json::json!({"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": t}),
                serde_json::json!({"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"}),
            ];
            for (i, v) in &pcrs {
                all.push(serde_json::json!({"claim": skr_pcr_claim(*i), "equals": hex::encode(v)}));
            }
            serde_json::json!({"authority": url, "allOf": all})
        })
        .collect();
    Ok(serde_json::json!({"version": "1.0.0", "anyOf": any_of}))
}

/// The RVPS reference-value name of PCR `i`.
pub fn trustee_name(i: u32) -> String {
    format!("dcr_pcr{i}")
}

/// The Trustee RVPS message registering `azure.pcrs` (for az-snp-vtpm / az-tdx-vtpm
/// evidence) and, when the build predicts it, `tpm.pcrs` as `dcr_tpm_pcrN` (plain TPM).
pub fn trustee_rvps(m: &Measurements) -> Result<serde_json::Value, ExportError> {
    use base64::Engine;
    let mut values = serde_json::Map::new();
    for (i, v) in pcrs(m, true)? {
        values.insert(trustee_name(i), serde_json::json!([hex::encode(v)]));
    }
    if let Ok(tpm) = pcrs(m, false) {
        for (i, v) in tpm {
            values.insert(
                format!("dcr_tpm_pcr{i}"),
                serde_json::json!([hex::encode(v)]),
            );
        }
    }
    let payload = serde_json::to_vec(&serde_json::Value::Object(values)).expect("json");
    Ok(serde_json::json!({
        "version": "0.1.0",
        "type": "sample",
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
    }))
}

/// A Rego fragment for Trustee's attestation-service policy: `executables` affirming (3)
/// when every required PCR of the vTPM quote is a registered reference value.
pub fn trustee_rego(m: &Measurements) -> Result<String, ExportError> {
    let pcrs = pcrs(m, true)?;
    let mut out = String::from(
        "# dcr image identity for Trustee's attestation service (generated by dcr-build export\n\
         # trustee from measurements.json; merge into your policy). Reference values come from\n\
         # the RVPS message exported alongside.\n\
         package policy\n\nimport rego.v1\n\ndefault executables := 33\n",
    );
    for tee in ["az-snp-vtpm", "az-tdx-vtpm"] {
        out.push_str("\nexecutables := 3 if {\n");
        for (i, _) in &pcrs {
            out.push_str(&format!(
                "\tinput[\"{tee}\"].tpm.pcr{i:02} in query_reference_value(\"{}\")\n",
                trustee_name(*i)
            ));
        }
        out.push_str("}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurements(azure: bool) -> Measurements {
        let mut v = serde_json::json!({
            "schema_version": dcr_protocol::measurements::SCHEMA_VERSION,
            "recipe": "r", "recipe_version": "1", "source_date_epoch": 1,
            "kernel_release": "6.12", "cmdline": "console=ttyS0",
            "contract_digest": "11".repeat(32), "guest_target": "x86_64-unknown-linux-musl",
            "inputs": {}, "artifacts": {},
            "measurements": {"tpm": {"pcrs": {"4": "04".repeat(32), "11": "0b".repeat(32)}}},
        });
        if azure {
            v["measurements"]["azure"] = serde_json::json!({"pcrs": {"9": "09".repeat(32), "11": "0b".repeat(32), "23": "17".repeat(32)}});
        }
        Measurements::from_json(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn skr_policy_has_the_grammar_and_the_pcrs() {
        let p = skr_policy(
            &measurements(true),
            "https://shared.eus.attest.azure.net/",
            AzureTee::Any,
        )
        .unwrap();
        assert_eq!(p["version"], "1.0.0");
        let any = p["anyOf"].as_array().unwrap();
        assert_eq!(any.len(), 2);
        for (a, t) in any.iter().zip(["sevsnpvm", "tdxvm"]) {
            assert_eq!(a["authority"], "https://shared.eus.attest.azure.net");
            let all = a["allOf"].as_array().unwrap();
            assert_eq!(all[0]["equals"], t);
            assert_eq!(all[1]["equals"], "azure-compliant-cvm");
            assert_eq!(
                all[3],
                serde_json::json!({"claim": "dcr-pcr11", "equals": "0b".repeat(32)})
            );
            assert_eq!(all.len(), 5);
            for c in all {
                assert_eq!(c.as_object().unwrap().len(), 2, "claim + one operator: {c}");
            }
        }
        assert!(skr_policy(&measurements(true), "http://x", AzureTee::Snp).is_err());
        assert!(skr_policy(&measurements(false), "https://x", AzureTee::Snp)
            .unwrap_err()
            .to_string()
            .contains("azure.pcrs"));
    }

    #[test]
    fn trustee_message_decodes_to_the_values() {
        use base64::Engine;
        let msg = trustee_rvps(&measurements(true)).unwrap();
        assert_eq!(msg["version"], "0.1.0");
        assert_eq!(msg["type"], "sample");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(msg["payload"].as_str().unwrap())
            .unwrap();
        let map: std::collections::BTreeMap<String, Vec<String>> =
            serde_json::from_slice(&payload).unwrap();
        assert_eq!(map["dcr_pcr23"], vec!["17".repeat(32)]);
        assert_eq!(map["dcr_tpm_pcr4"], vec!["04".repeat(32)]);
        assert_eq!(map.len(), 5);
        let rego = trustee_rego(&measurements(true)).unwrap();
        assert!(rego
            .contains("input[\"az-tdx-vtpm\"].tpm.pcr09 in query_reference_value(\"dcr_pcr9\")"));
        assert!(trustee_rvps(&measurements(false)).is_err());
    }
}
