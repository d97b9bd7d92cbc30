//! Pure pieces of the release decision (records + claims → allowed or the reason), unit-tested
//! without a running service.

use std::collections::BTreeSet;

use dcr_protocol::contract::Contract;
use dcr_protocol::wire::{ReleasePolicy, SnpMinTcb, TcbLevel, Tee};
use dcr_verify::reference::{self, Claims};
use dcr_verify::snp::{Product, Tcb};
use dcr_verify::verdict::Verdict;

/// A key record in the store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRecord {
    pub(crate) key_id: String,
    pub(crate) owner: String,
    pub(crate) registered_at: u64,
    pub(crate) policy: ReleasePolicy,
    /// nonce ‖ AES-256-GCM(master key, DEK), hex.
    pub(crate) dek_at_rest: String,
}

/// What verified evidence asks for: the keys of `contract_digest` for `claims` at `now`.
pub(crate) struct Asked<'a> {
    pub(crate) contract_digest: &'a str,
    pub(crate) tee: Tee,
    pub(crate) claims: &'a Claims,
    /// The product and REPORTED_TCB of SEV-SNP evidence.
    pub(crate) snp_tcb: Option<&'a (Product, Tcb)>,
    pub(crate) now: u64,
}

/// Why nothing is released: a stable code and every reason, one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// The failing checks of a verdict, one line.
pub(crate) fn failed(v: &Verdict) -> String {
    let f: Vec<String> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if f.is_empty() {
        "no checks".into()
    } else {
        f.join("; ")
    }
}

/// The release decision, deny by default: the keys of `records` (every key registered for the
/// contract) that `asked` may receive, or why none. `spent` holds the ids of single-use keys
/// already released. All or nothing: the TEE gets keys (and the upload token that lets it
/// publish the contract's result) only when every dataset's key is registered and its owner's
/// policy accepts this evidence. Otherwise one party's lax policy (its own image, its own
/// PCRs) would give a TEE of its choosing a result key the service vouches for.
pub(crate) fn decide(
    records: Vec<KeyRecord>,
    contract: &Contract,
    asked: &Asked<'_>,
    spent: &BTreeSet<String>,
) -> Result<Vec<KeyRecord>, Refused> {
    let now = asked.now;
    // The contract's own expiry binds every key registered for it.
    if contract.expires_at() <= now {
        return Err(Refused {
            code: "policy_refused",
            message: format!(
                "contract {} expired at {}",
                asked.contract_digest, contract.expires
            ),
        });
    }
    let mut reasons = Vec::new();
    let mut allowed = Vec::new();
    for r in records {
        if !r.policy.platforms.contains(&asked.tee) {
            reasons.push((
                "policy_refused",
                format!("{}: platform {} not allowed", r.key_id, asked.tee.as_str()),
            ));
            continue;
        }
        match dcr_protocol::time::parse_rfc3339(&r.policy.expires) {
            Some(t) if t > now => {}
            _ => {
                reasons.push((
                    "policy_refused",
                    format!("{}: policy expired at {}", r.key_id, r.policy.expires),
                ));
                continue;
            }
        }
        if r.policy.reference.validate().is_err() {
            reasons.push((
                "policy_refused",
                format!("{}: reference values do not parse", r.key_id),
            ));
            continue;
        }
        if let Some((product, tcb)) = asked.snp_tcb {
            if let Err(e) = snp_tcb_allowed(r.policy.snp_min_tcb.as_ref(), *product, tcb) {
                reasons.push(("tcb_too_old", format!("{}: {e}", r.key_id)));
                continue;
            }
        }
        let v = match asked.claims {
            Claims::Sgx { .. } => reference::sgx_identity(r.policy.sgx.as_ref(), asked.claims),
            _ => reference::evaluate(&r.policy.reference, asked.claims),
        };
        if !v.ok() {
            reasons.push((
                "measurement_mismatch",
                format!("{}: {}", r.key_id, failed(&v)),
            ));
            continue;
        }
        if r.policy.single_use && spent.contains(&r.key_id) {
            reasons.push((
                "key_spent",
                format!("{}: single-use key already released", r.key_id),
            ));
            continue;
        }
        allowed.push(r);
    }
    for d in &contract.datasets {
        if !allowed.iter().any(|r| r.key_id == d.key_id)
            && !reasons
                .iter()
                .any(|(_, m)| m.starts_with(&format!("{}: ", d.key_id)))
        {
            reasons.push((
                "key_missing",
                format!("{}: dataset {}'s key is not registered", d.key_id, d.id),
            ));
        }
    }
    if !reasons.is_empty() {
        let code = reasons
            .iter()
            .find(|(c, _)| *c == "measurement_mismatch")
            .map_or(reasons[0].0, |(c, _)| *c);
        let msg: Vec<String> = reasons.into_iter().map(|(_, m)| m).collect();
        return Err(Refused {
            code,
            message: msg.join("; "),
        });
    }
    Ok(allowed)
}

/// Whether a report's REPORTED_TCB meets the policy's minimum for its product. No policy
/// minimum, or none for this product, is a refusal: the oldest acceptable firmware is a
/// decision the data owner makes at registration, never a silent default here.
pub fn snp_tcb_allowed(min: Option<&SnpMinTcb>, product: Product, tcb: &Tcb) -> Result<(), String> {
    let name = format!("{product:?}");
    let level: Option<&TcbLevel> = min.and_then(|m| match product {
        Product::Milan => m.milan.as_ref(),
        Product::Genoa => m.genoa.as_ref(),
        Product::Turin => m.turin.as_ref(),
    });
    let Some(level) = level else {
        return Err(format!(
            "the policy names no minimum SEV-SNP TCB for {name} (register with --snp-min-tcb {}:…)",
            name.to_lowercase()
        ));
    };
    let want = Tcb {
        fmc: level.fmc,
        bootloader: level.bootloader,
        tee: level.tee,
        snp: level.snp,
        microcode: level.microcode,
    };
    if tcb.at_least(&want) {
        Ok(())
    } else {
        Err(format!(
            "{name} REPORTED_TCB {} is below the policy's minimum {}",
            show(tcb),
            show(&want)
        ))
    }
}

fn show(t: &Tcb) -> String {
    let fmc = t.fmc.map(|f| format!("fmc={f},")).unwrap_or_default();
    format!(
        "{fmc}bl={},tee={},snp={},ucode={}",
        t.bootloader, t.tee, t.snp, t.microcode
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcr_protocol::wire::MILAN_MIN_TCB;

    #[test]
    fn minimum_tcb_per_product() {
        // virtee's Milan report (firmware 1.52.4): REPORTED_TCB bytes 03 00 00 00 00 00 08 73.
        let old = Tcb::decode(0x7308_0000_0000_0003, Product::Milan);
        assert_eq!(
            (old.bootloader, old.tee, old.snp, old.microcode),
            (3, 0, 8, 115)
        );
        let default = SnpMinTcb {
            milan: Some(MILAN_MIN_TCB),
            ..Default::default()
        };
        let e = snp_tcb_allowed(Some(&default), Product::Milan, &old).unwrap_err();
        assert!(
            e.contains("below the policy's minimum bl=4,tee=0,snp=24,ucode=219"),
            "{e}"
        );
        // A 2025 Milan host (bl 4, tee 0, snp 24, ucode 219) passes; one component lower fails.
        let new = Tcb::decode(0xdb18_0000_0000_0004, Product::Milan);
        assert!(snp_tcb_allowed(Some(&default), Product::Milan, &new).is_ok());
        let lower = Tcb::decode(0xda18_0000_0000_0004, Product::Milan);
        assert!(snp_tcb_allowed(Some(&default), Product::Milan, &lower).is_err());
        // An owner who accepts the old firmware says so explicitly.
        let lenient = SnpMinTcb {
            milan: Some(TcbLevel::parse("bl=3,tee=0,snp=8,ucode=115").unwrap()),
            ..Default::default()
        };
        assert!(snp_tcb_allowed(Some(&lenient), Product::Milan, &old).is_ok());
        // No minimum for the product, or no minimum at all: refused.
        let genoa = Tcb::decode(0x5417_0000_0000_000a, Product::Genoa);
        assert!(snp_tcb_allowed(Some(&default), Product::Genoa, &genoa)
            .unwrap_err()
            .contains("--snp-min-tcb genoa"));
        assert!(snp_tcb_allowed(None, Product::Milan, &new).is_err());
        // Turin's FMC component counts.
        let turin_min = SnpMinTcb {
            turin: Some(TcbLevel::parse("fmc=2,bl=1,tee=1,snp=1,ucode=1").unwrap()),
            ..Default::default()
        };
        let t = Tcb::decode(0x0100_0000_0101_0101, Product::Turin);
        assert!(snp_tcb_allowed(Some(&turin_min), Product::Turin, &t).is_err());
        // The CLI's level syntax.
        assert!(TcbLevel::parse("bl=1,tee=0,snp=2").is_err());
        assert!(TcbLevel::parse("bl=1,tee=0,snp=2,ucode=256").is_err());
        assert!(TcbLevel::parse("bl=1,tee=0,snp=2,ucode=3,x=1").is_err());
    }
}

#[cfg(test)]
pub(crate) mod decide_tests {
    use super::*;
    use dcr_protocol::measurements::Measurements;
    use dcr_protocol::wire::MILAN_MIN_TCB;

    const NOW: u64 = 1_900_000_000;

    pub(crate) fn contract(expires: &str) -> Contract {
        let signing = dcr_protocol::keys::SigningSecret::generate(&mut rand_core::OsRng)
            .public()
            .to_text();
        let text = format!(
            r#"version = 1
name = "policy"
expires = "{expires}"
platforms = ["tpm", "snp", "az-snp-vtpm"]
parties = [{{ id = "publisher", name = "P" }}, {{ id = "advertiser", name = "A" }}]
datasets = [
  {{ id = "users", owner = "publisher", key_id = "pub-1", blob = "users.sealed" }},
  {{ id = "buys", owner = "advertiser", key_id = "adv-1", blob = "buys.sealed" }},
]
network = {{ mode = "static", address = "10.0.2.15/24", gateway = "10.0.2.2" }}
[[workloads]]
name = "overlap"
sha256 = "{w}"
inputs = ["users", "buys"]
limits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }}
[output]
min_group_size = 50
columns = [{{ name = "segment", kind = "label", max_len = 32 }}, {{ name = "count", kind = "count" }}]
blob = "result.sealed"
[[recipients]]
party = "publisher"
hpke_public_key = "x25519:{r}"
[service]
url = "http://127.0.0.1:1"
signing_key = "{signing}"
deadline_secs = 60
"#,
            w = "ab".repeat(32),
            r = "11".repeat(32),
        );
        Contract::from_toml(&text).unwrap()
    }

    /// measurements.json predicting `pcr23` for a TPM and `digest` for SEV-SNP.
    fn reference(pcr23: u8, digest: u8) -> Measurements {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "recipe": "r", "recipe_version": "1",
            "source_date_epoch": 0, "kernel_release": "k", "cmdline": "",
            "contract_digest": "00".repeat(32), "guest_target": "t",
            "inputs": {}, "artifacts": {},
            "measurements": {
                "tpm": {"pcrs": {"23": hex::encode([pcr23; 32])}},
                "snp": {"launch_digest": hex::encode([digest; 48])},
            },
        }))
        .unwrap()
    }

    fn record(key_id: &str, platforms: &[Tee], reference: Measurements) -> KeyRecord {
        KeyRecord {
            key_id: key_id.into(),
            owner: "o".into(),
            registered_at: 0,
            policy: ReleasePolicy {
                contract_digest: "cd".repeat(32),
                platforms: platforms.to_vec(),
                reference,
                single_use: false,
                expires: "2099-01-01T00:00:00Z".into(),
                snp_min_tcb: Some(SnpMinTcb {
                    milan: Some(MILAN_MIN_TCB),
                    ..Default::default()
                }),
                sgx: None,
            },
            dek_at_rest: String::new(),
        }
    }

    fn tpm_claims(pcr23: u8) -> Claims {
        Claims::Tpm {
            pcrs: vec![(23, vec![pcr23; 32])],
        }
    }

    fn ask<'a>(tee: Tee, claims: &'a Claims, tcb: Option<&'a (Product, Tcb)>) -> Asked<'a> {
        Asked {
            contract_digest: "cd",
            tee,
            claims,
            snp_tcb: tcb,
            now: NOW,
        }
    }

    fn ids(r: &[KeyRecord]) -> Vec<&str> {
        r.iter().map(|k| k.key_id.as_str()).collect()
    }

    #[test]
    fn every_key_matches_then_all_are_released() {
        let c = contract("2099-01-01T00:00:00Z");
        let recs = vec![
            record("pub-1", &[Tee::Tpm], reference(7, 1)),
            record("adv-1", &[Tee::Tpm], reference(7, 1)),
        ];
        let claims = tpm_claims(7);
        let got = decide(recs, &c, &ask(Tee::Tpm, &claims, None), &BTreeSet::new()).unwrap();
        assert_eq!(ids(&got), ["pub-1", "adv-1"]);
    }

    #[test]
    fn one_mismatch_releases_nothing() {
        // The advertiser's policy accepts this image, the publisher's does not: no key at
        // all (a lax policy must not get a TEE the other party's key or the result key).
        let c = contract("2099-01-01T00:00:00Z");
        let recs = vec![
            record("pub-1", &[Tee::Tpm], reference(8, 1)),
            record("adv-1", &[Tee::Tpm], reference(7, 1)),
        ];
        let claims = tpm_claims(7);
        let e = decide(recs, &c, &ask(Tee::Tpm, &claims, None), &BTreeSet::new()).unwrap_err();
        assert_eq!(e.code, "measurement_mismatch");
        assert!(
            e.message.starts_with("pub-1: reference.pcr.23"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("adv-1"), "{}", e.message);
    }

    #[test]
    fn a_dataset_without_a_key_releases_nothing() {
        let c = contract("2099-01-01T00:00:00Z");
        let recs = vec![record("pub-1", &[Tee::Tpm], reference(7, 1))];
        let claims = tpm_claims(7);
        let e = decide(recs, &c, &ask(Tee::Tpm, &claims, None), &BTreeSet::new()).unwrap_err();
        assert_eq!(e.code, "key_missing");
        assert!(e
            .message
            .contains("adv-1: dataset buys's key is not registered"));
    }

    #[test]
    fn platform_expiry_single_use_and_contract_expiry() {
        let c = contract("2099-01-01T00:00:00Z");
        let claims = tpm_claims(7);
        let both = |a: KeyRecord| vec![record("pub-1", &[Tee::Tpm], reference(7, 1)), a];
        // Platform not in the policy.
        let e = decide(
            both(record("adv-1", &[Tee::Snp], reference(7, 1))),
            &c,
            &ask(Tee::Tpm, &claims, None),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("policy_refused", "adv-1: platform tpm not allowed")
        );
        // Policy expired (one second before now).
        let mut old = record("adv-1", &[Tee::Tpm], reference(7, 1));
        old.policy.expires = dcr_protocol::time::format_rfc3339(NOW - 1);
        let e = decide(
            both(old),
            &c,
            &ask(Tee::Tpm, &claims, None),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, "policy_refused");
        assert!(e.message.contains("adv-1: policy expired"), "{}", e.message);
        // A single-use key already released.
        let mut once = record("adv-1", &[Tee::Tpm], reference(7, 1));
        once.policy.single_use = true;
        let spent: BTreeSet<String> = ["adv-1".to_string()].into();
        let e = decide(
            both(once.clone()),
            &c,
            &ask(Tee::Tpm, &claims, None),
            &spent,
        )
        .unwrap_err();
        assert_eq!(e.code, "key_spent");
        // Not spent: released.
        let got = decide(
            both(once),
            &c,
            &ask(Tee::Tpm, &claims, None),
            &BTreeSet::new(),
        );
        assert_eq!(ids(&got.unwrap()), ["pub-1", "adv-1"]);
        // The contract's own expiry binds every key.
        let expired = contract(&dcr_protocol::time::format_rfc3339(NOW));
        let e = decide(
            both(record("adv-1", &[Tee::Tpm], reference(7, 1))),
            &expired,
            &ask(Tee::Tpm, &claims, None),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, "policy_refused");
        assert!(e.message.contains("expired"), "{}", e.message);
    }

    #[test]
    fn snp_needs_the_digest_and_the_minimum_tcb() {
        let c = contract("2099-01-01T00:00:00Z");
        let recs = || {
            vec![
                record("pub-1", &[Tee::Snp], reference(0, 5)),
                record("adv-1", &[Tee::Snp], reference(0, 5)),
            ]
        };
        let claims = Claims::Snp {
            launch_digest: [5; 48],
        };
        let new = (
            Product::Milan,
            Tcb::decode(0xdb18_0000_0000_0004, Product::Milan),
        );
        let old = (
            Product::Milan,
            Tcb::decode(0x7308_0000_0000_0003, Product::Milan),
        );
        let got = decide(
            recs(),
            &c,
            &ask(Tee::Snp, &claims, Some(&new)),
            &BTreeSet::new(),
        );
        assert_eq!(ids(&got.unwrap()), ["pub-1", "adv-1"]);
        let e = decide(
            recs(),
            &c,
            &ask(Tee::Snp, &claims, Some(&old)),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, "tcb_too_old");
        // Another launch digest: measurement_mismatch wins over the other reasons.
        let other = Claims::Snp {
            launch_digest: [6; 48],
        };
        let mut mixed = recs();
        mixed[0].policy.platforms = vec![Tee::Tpm];
        let e = decide(
            mixed,
            &c,
            &ask(Tee::Snp, &other, Some(&new)),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, "measurement_mismatch");
        assert!(
            e.message.contains("pub-1: platform snp not allowed"),
            "{}",
            e.message
        );
    }
}
