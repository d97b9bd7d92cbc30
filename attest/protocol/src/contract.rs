//! The contract: what the parties agreed (docs/contract.md). Authored as TOML, packed into the
//! image as its canonical JSON (keys sorted at every level, no whitespace, UTF-8); the contract
//! digest is SHA-256 of that canonical form, so any two tools that parse the same contract
//! agree on its digest regardless of TOML formatting.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{HpkePublic, SigningPublic};

pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    #[error("contract: {0}")]
    Parse(String),
    #[error("contract field {field}: {reason}")]
    Field { field: String, reason: String },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ContractError {
    ContractError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Format version; only 1 is known.
    pub version: u32,
    pub name: String,
    /// RFC 3339 UTC; the service refuses releases after it.
    pub expires: String,
    pub parties: Vec<Party>,
    pub datasets: Vec<Dataset>,
    pub workloads: Vec<Workload>,
    pub output: OutputRules,
    pub recipients: Vec<Recipient>,
    pub service: Service,
    pub network: Network,
    /// TEE platforms the guest may attest with, in order of preference. The guest uses the
    /// first one it detects and never one that is not listed (no silent fallback).
    pub platforms: Vec<crate::wire::Tee>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub id: String,
    /// A party id.
    pub owner: String,
    /// The DEK the owner registers with the service (the sealed stream's key id).
    pub key_id: String,
    /// The blob name under which the sealed dataset is stored.
    pub blob: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    /// SHA-256 of the workload executable packed at /workloads/<name>.
    pub sha256: String,
    /// Dataset ids, in the order the workload receives them.
    pub inputs: Vec<String>,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub timeout_secs: u64,
    pub cpu_secs: u64,
    pub memory_mib: u64,
    pub output_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRules {
    /// Groups with fewer members are suppressed (k-anonymity threshold).
    pub min_group_size: u64,
    /// The output's columns, in order: its CSV header is exactly these names
    /// (crate::output checks every row against them).
    pub columns: Vec<OutputColumn>,
    /// The blob name of the sealed output.
    pub blob: String,
}

/// One output column and what its values may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutputColumn {
    /// A group label: 1..=max_len of `[A-Za-z0-9_.-]`, starting with a letter or digit (no
    /// free text, no spreadsheet formulas), and one of `values` when given.
    Label {
        name: String,
        max_len: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        values: Option<Vec<String>>,
    },
    /// The group's member count (exactly one column): a canonical decimal ≥ min_group_size.
    Count { name: String },
    /// Another integer aggregate: a canonical decimal (no sign but `-`, no leading zeros) in
    /// `min..=max`.
    Integer { name: String, min: i64, max: i64 },
}

impl OutputColumn {
    pub fn name(&self) -> &str {
        match self {
            OutputColumn::Label { name, .. }
            | OutputColumn::Count { name }
            | OutputColumn::Integer { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// A party id.
    pub party: String,
    /// `x25519:<hex>`.
    pub hpke_public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `http://host:port` of the key-release service.
    pub url: String,
    /// `ed25519:<hex>`: responses must be signed by this key.
    pub signing_key: String,
    /// The guest gives up (and powers off) when the service has not answered within this
    /// many seconds in total, retries included.
    pub deadline_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "lowercase")]
pub enum Network {
    /// Static IPv4 (e.g. QEMU user networking: 10.0.2.15/24 via 10.0.2.2).
    Static {
        address: String,
        gateway: String,
    },
    Dhcp {},
}

fn id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with('.')
}

impl Contract {
    pub fn from_toml(text: &str) -> Result<Self, ContractError> {
        let c: Contract = toml::from_str(text).map_err(|e| {
            ContractError::Parse(e.to_string().lines().collect::<Vec<_>>().join(" "))
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Parse the canonical JSON form (as packed in the image); it must be canonical.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, ContractError> {
        let c: Contract =
            serde_json::from_slice(bytes).map_err(|e| ContractError::Parse(e.to_string()))?;
        c.validate()?;
        if c.canonical_json() != bytes {
            return Err(ContractError::Parse(
                "not in canonical form (sorted keys, no whitespace)".into(),
            ));
        }
        Ok(c)
    }

    pub fn canonical_json(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("contract serializes");
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        out
    }

    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_json()).into()
    }

    pub fn expires_at(&self) -> u64 {
        crate::time::parse_rfc3339(&self.expires).expect("validated")
    }

    pub fn signing_key(&self) -> SigningPublic {
        SigningPublic::from_text(&self.service.signing_key).expect("validated")
    }

    pub fn recipient_keys(&self) -> Vec<HpkePublic> {
        self.recipients
            .iter()
            .map(|r| HpkePublic::from_text(&r.hpke_public_key).expect("validated"))
            .collect()
    }

    pub fn validate(&self) -> Result<(), ContractError> {
        if self.version != VERSION {
            return Err(field(
                "version",
                format!("{}: unknown (this build knows {VERSION})", self.version),
            ));
        }
        if !id_ok(&self.name) {
            return Err(field("name", "must be 1-64 of [A-Za-z0-9._-]"));
        }
        if crate::time::parse_rfc3339(&self.expires).is_none() {
            return Err(field(
                "expires",
                "expected RFC 3339 UTC like 2027-01-01T00:00:00Z",
            ));
        }
        let mut parties = BTreeSet::new();
        for (i, p) in self.parties.iter().enumerate() {
            if !id_ok(&p.id) || !parties.insert(p.id.as_str()) {
                return Err(field(
                    format!("parties[{i}].id"),
                    "empty, malformed or duplicate",
                ));
            }
        }
        if parties.is_empty() {
            return Err(field("parties", "at least one party"));
        }
        let mut datasets = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, d) in self.datasets.iter().enumerate() {
            if !id_ok(&d.id) || !datasets.insert(d.id.as_str()) {
                return Err(field(
                    format!("datasets[{i}].id"),
                    "empty, malformed or duplicate",
                ));
            }
            if !parties.contains(d.owner.as_str()) {
                return Err(field(
                    format!("datasets[{i}].owner"),
                    format!("{:?} is not a party", d.owner),
                ));
            }
            if crate::seal::check_key_id(&d.key_id).is_err() || !keys.insert(d.key_id.as_str()) {
                return Err(field(
                    format!("datasets[{i}].key_id"),
                    "malformed or duplicate",
                ));
            }
            if !id_ok(&d.blob) {
                return Err(field(
                    format!("datasets[{i}].blob"),
                    "must be 1-64 of [A-Za-z0-9._-]",
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if !id_ok(&w.name) || !names.insert(w.name.as_str()) {
                return Err(field(
                    format!("workloads[{i}].name"),
                    "empty, malformed or duplicate",
                ));
            }
            if w.sha256.len() != 64
                || hex::decode(&w.sha256).is_err()
                || w.sha256 != w.sha256.to_lowercase()
            {
                return Err(field(
                    format!("workloads[{i}].sha256"),
                    "expected 64 lowercase hex digits",
                ));
            }
            for (j, inp) in w.inputs.iter().enumerate() {
                if !datasets.contains(inp.as_str()) {
                    return Err(field(
                        format!("workloads[{i}].inputs[{j}]"),
                        format!("{inp:?} is not a dataset"),
                    ));
                }
            }
            let l = &w.limits;
            for (n, v) in [
                ("timeout_secs", l.timeout_secs),
                ("cpu_secs", l.cpu_secs),
                ("memory_mib", l.memory_mib),
                ("output_mib", l.output_mib),
            ] {
                if v == 0 {
                    return Err(field(format!("workloads[{i}].limits.{n}"), "must be > 0"));
                }
            }
        }
        if names.is_empty() {
            return Err(field("workloads", "at least one workload"));
        }
        if self.output.min_group_size == 0 {
            return Err(field("output.min_group_size", "must be >= 1"));
        }
        crate::output::validate_columns(&self.output.columns)
            .map_err(|(f, why)| field(format!("output.columns{f}"), why))?;
        if !id_ok(&self.output.blob) {
            return Err(field("output.blob", "must be 1-64 of [A-Za-z0-9._-]"));
        }
        if self.recipients.is_empty() {
            return Err(field("recipients", "at least one recipient"));
        }
        for (i, r) in self.recipients.iter().enumerate() {
            if !parties.contains(r.party.as_str()) {
                return Err(field(
                    format!("recipients[{i}].party"),
                    format!("{:?} is not a party", r.party),
                ));
            }
            HpkePublic::from_text(&r.hpke_public_key)
                .map_err(|e| field(format!("recipients[{i}].hpke_public_key"), e.to_string()))?;
        }
        if !(self.service.url.starts_with("http://") || self.service.url.starts_with("https://")) {
            return Err(field(
                "service.url",
                "expected http://host:port or https://…",
            ));
        }
        if self.service.deadline_secs == 0 {
            return Err(field("service.deadline_secs", "must be > 0"));
        }
        SigningPublic::from_text(&self.service.signing_key)
            .map_err(|e| field("service.signing_key", e.to_string()))?;
        if self.platforms.is_empty() {
            return Err(field(
                "platforms",
                "at least one of tpm, snp, tdx, az-snp-vtpm, az-tdx-vtpm",
            ));
        }
        if let Network::Static { address, gateway } = &self.network {
            let (ip, prefix) = address
                .split_once('/')
                .ok_or_else(|| field("network.address", "expected a.b.c.d/prefix"))?;
            if ip.parse::<std::net::Ipv4Addr>().is_err()
                || !matches!(prefix.parse::<u8>(), Ok(0..=32))
            {
                return Err(field("network.address", "expected a.b.c.d/prefix"));
            }
            if gateway.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(field("network.gateway", "expected a.b.c.d"));
            }
        }
        Ok(())
    }
}

/// Canonical JSON: objects with keys sorted by their UTF-8 bytes, no whitespace, serde_json's
/// string escaping; integers only (the contract has no floats).
pub fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k).expect("string").as_bytes());
                out.push(b':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(serde_json::to_string(other).expect("scalar").as_bytes()),
    }
}
