//! The contract: what the parties agreed (docs/contract.md). Authored as TOML, packed into the
//! image as its canonical JSON (keys sorted at every level, no whitespace, UTF-8); the contract
//! digest is SHA-256 of that canonical form, so any two tools that parse the same contract
//! agree on its digest regardless of TOML formatting.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{HpkePublic, SigningPublic};

pub const VERSION: u32 = 1;

/// Upper bounds of the workload limits: the guest computes `MiB << 20` in u64 and arms
/// timers in seconds; these keep every value meaningful (1 TiB, one week).
pub const MAX_MIB: u64 = 1 << 20;
pub const MAX_SECS: u64 = 7 * 24 * 3600;

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
    /// Agreed SQL analyses (docs/analysis.md): what queries may run and who receives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analyses: Vec<crate::analysis::Analysis>,
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
    /// How the SQL engine reads it (docs/analysis.md); needed when an analysis reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<crate::analysis::Table>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    /// What the executable is (docs/contract.md): `native` (default; its stdout is the
    /// contract's output), `oci` (a container image whose entrypoint's stdout is the output;
    /// /workloads/<name> is then its run document, `dcr_protocol::oci::RunSpec`) or `sql`
    /// (the SQL engine: it answers the submitted queries of the contract's analyses, one
    /// confined run per query) or `wasm` (a WASI preview 1 module, run by the guest's wasmtime
    /// runner; its stdout is the output).
    #[serde(default, skip_serializing_if = "WorkloadKind::is_native")]
    pub kind: WorkloadKind,
    /// SHA-256 of what is packed at /workloads/<name> (the executable, the WebAssembly
    /// module, or an oci workload's run document, which names its root's dm-verity root
    /// hash).
    pub sha256: String,
    /// Dataset ids, in the order the workload receives them.
    pub inputs: Vec<String>,
    pub limits: Limits,
}

/// The kinds of workload a contract can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A program whose stdout is the contract's output (held to `[output]`).
    #[default]
    Native,
    /// The SQL engine (dcr-sql-engine): answers the pending queries of the analyses.
    Sql,
    /// A container image (read-only root under dm-verity) whose entrypoint's stdout is the
    /// contract's output (held to `[output]`), like a native workload's.
    Oci,
    /// A WebAssembly module (WASI preview 1) run by the guest's wasmtime runner
    /// ([`crate::wasm`]); its stdout is the contract's output, like a native workload's.
    Wasm,
}

impl WorkloadKind {
    pub fn is_native(&self) -> bool {
        *self == WorkloadKind::Native
    }

    /// Does its stdout become the contract's output (native and oci workloads)?
    pub fn gives_output(&self) -> bool {
        matches!(
            self,
            WorkloadKind::Native | WorkloadKind::Oci | WorkloadKind::Wasm
        )
    }
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
    /// No IP network: every call to the service goes over a vsock stream to `cid`:`port`,
    /// where the host's `dcr-attest vsock-proxy` forwards it (AWS Nitro Enclaves: the parent
    /// instance, CID 3; QEMU with a virtio-vsock device: the host, CID 2). `service.url` then
    /// gives only the HTTP Host header and path prefix; where the bytes go is the proxy's
    /// choice, which is no more trusted than any other man in the middle.
    Vsock {
        cid: u32,
        port: u32,
    },
}

/// The vsock CIDs a guest cannot reach a service at: 0 (the hypervisor), 1 (the local
/// loopback) and `VMADDR_CID_ANY` (u32::MAX); port `VMADDR_PORT_ANY` (u32::MAX) is no port.
pub fn vsock_target_ok(cid: u32, port: u32) -> Result<(), &'static str> {
    if cid <= 1 || cid == u32::MAX {
        return Err("network.cid: must be 2 (the host) or above, not 0, 1 or 4294967295");
    }
    if port == u32::MAX {
        return Err("network.port: 4294967295 is VMADDR_PORT_ANY, not a port");
    }
    Ok(())
}

pub fn id_ok(s: &str) -> bool {
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
        crate::canonical::write(&v, &mut out);
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

    /// The datasets' tables with their owners.
    pub fn catalog(&self) -> crate::analysis::Catalog<'_> {
        crate::analysis::Catalog {
            tables: self
                .datasets
                .iter()
                .filter_map(|d| d.table.as_ref().map(|t| (t, d.owner.as_str())))
                .collect(),
        }
    }

    /// The one workload whose stdout is the output (native or oci).
    pub fn output_workload(&self) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.kind.gives_output())
    }

    /// The SQL engine workload, when the contract has one.
    pub fn sql_workload(&self) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.kind == WorkloadKind::Sql)
    }

    /// Who receives the answer to `party`'s query under `analysis`: the analysis's recipients,
    /// or the submitter when it names none. `None` when one of them has no recipient key.
    pub fn answer_recipients(
        &self,
        analysis: &crate::analysis::Analysis,
        party: &str,
    ) -> Option<Vec<(String, HpkePublic)>> {
        let names: Vec<&str> = if analysis.recipients.is_empty() {
            vec![party]
        } else {
            analysis.recipients.iter().map(String::as_str).collect()
        };
        names
            .into_iter()
            .map(|n| {
                let r = self.recipients.iter().find(|r| r.party == n)?;
                Some((
                    n.to_string(),
                    HpkePublic::from_text(&r.hpke_public_key).ok()?,
                ))
            })
            .collect()
    }

    /// The analysis named `name`.
    pub fn analysis(&self, name: &str) -> Option<&crate::analysis::Analysis> {
        self.analyses.iter().find(|a| a.name == name)
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
            if d.key_id.starts_with("dcr.") {
                return Err(field(
                    format!("datasets[{i}].key_id"),
                    "key ids starting with \"dcr.\" are reserved for the service",
                ));
            }
            if !id_ok(&d.blob) || d.blob.starts_with("query-") {
                return Err(field(
                    format!("datasets[{i}].blob"),
                    "must be 1-64 of [A-Za-z0-9._-], not starting with query- (answers' names)",
                ));
            }
        }
        let mut tables = BTreeSet::new();
        for (i, d) in self.datasets.iter().enumerate() {
            if let Some(t) = &d.table {
                let at = format!("datasets[{i}].table");
                crate::analysis::validate_table(t, &at).map_err(|(f, why)| field(f, why))?;
                if !tables.insert(t.name.as_str()) {
                    return Err(field(
                        format!("{at}.name"),
                        format!("{:?}: another dataset's table has this name", t.name),
                    ));
                }
            }
        }
        let catalog = self.catalog();
        let mut analyses = BTreeSet::new();
        for (i, a) in self.analyses.iter().enumerate() {
            if !id_ok(&a.name) || !analyses.insert(a.name.as_str()) {
                return Err(field(
                    format!("analyses[{i}].name"),
                    "empty, malformed or duplicate",
                ));
            }
            crate::analysis::validate_analysis(a, &format!("analyses[{i}]"), &catalog, &parties)
                .map_err(|(f, why)| field(f, why))?;
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
            for (n, v, max) in [
                ("timeout_secs", l.timeout_secs, MAX_SECS),
                ("cpu_secs", l.cpu_secs, MAX_SECS),
                ("memory_mib", l.memory_mib, MAX_MIB),
                ("output_mib", l.output_mib, MAX_MIB),
            ] {
                if v == 0 || v > max {
                    return Err(field(
                        format!("workloads[{i}].limits.{n}"),
                        format!("{v}: must be 1 to {max}"),
                    ));
                }
            }
            let least = crate::wasm::min_memory_mib(l.output_mib);
            if w.kind == WorkloadKind::Wasm && l.memory_mib < least {
                return Err(field(
                    format!("workloads[{i}].limits.memory_mib"),
                    format!(
                        "{}: a wasm workload with output_mib = {} needs at least {least} (64 MiB for the runtime, twice output_mib for its output, 64 MiB for the module)",
                        l.memory_mib, l.output_mib
                    ),
                ));
            }
        }
        let natives: Vec<usize> = (0..self.workloads.len())
            .filter(|&i| self.workloads[i].kind.gives_output())
            .collect();
        if natives.len() > 1 {
            return Err(field(
                format!("workloads[{}].kind", natives[1]),
                "at most one native, oci or wasm workload (its stdout is the output)",
            ));
        }
        let sql: Vec<usize> = (0..self.workloads.len())
            .filter(|&i| self.workloads[i].kind == WorkloadKind::Sql)
            .collect();
        if sql.len() > 1 {
            return Err(field(
                format!("workloads[{}].kind", sql[1]),
                "at most one sql workload (it answers every analysis)",
            ));
        }
        if let Some(&i) = sql.first() {
            if self.analyses.is_empty() {
                return Err(field(
                    format!("workloads[{i}].kind"),
                    "a sql workload needs at least one [[analyses]]",
                ));
            }
            for (j, inp) in self.workloads[i].inputs.iter().enumerate() {
                if self
                    .datasets
                    .iter()
                    .any(|d| d.id == *inp && d.table.is_none())
                {
                    return Err(field(
                        format!("workloads[{i}].inputs[{j}]"),
                        format!("dataset {inp:?} declares no table for the SQL engine"),
                    ));
                }
            }
        }
        if self.output.min_group_size == 0 {
            return Err(field("output.min_group_size", "must be >= 1"));
        }
        crate::output::validate_columns(&self.output.columns)
            .map_err(|(f, why)| field(format!("output.columns{f}"), why))?;
        if !id_ok(&self.output.blob) || self.output.blob.starts_with("query-") {
            return Err(field(
                "output.blob",
                "must be 1-64 of [A-Za-z0-9._-], not starting with query- (answers' names)",
            ));
        }
        if let Some(i) = self
            .datasets
            .iter()
            .position(|d| d.blob == self.output.blob)
        {
            return Err(field(
                "output.blob",
                format!(
                    "{:?} is datasets[{i}].blob (the output must not overwrite an input)",
                    self.output.blob
                ),
            ));
        }
        if self.recipients.is_empty() {
            return Err(field("recipients", "at least one recipient"));
        }
        let mut recipient_parties = BTreeSet::new();
        let mut recipient_keys = BTreeSet::new();
        for (i, r) in self.recipients.iter().enumerate() {
            if !parties.contains(r.party.as_str()) {
                return Err(field(
                    format!("recipients[{i}].party"),
                    format!("{:?} is not a party", r.party),
                ));
            }
            if !recipient_parties.insert(r.party.as_str()) {
                return Err(field(
                    format!("recipients[{i}].party"),
                    format!("{:?} is a recipient twice", r.party),
                ));
            }
            let k = HpkePublic::from_text(&r.hpke_public_key)
                .map_err(|e| field(format!("recipients[{i}].hpke_public_key"), e.to_string()))?;
            if !recipient_keys.insert(k.to_text()) {
                return Err(field(
                    format!("recipients[{i}].hpke_public_key"),
                    "the same key as an earlier recipient",
                ));
            }
        }
        for (i, a) in self.analyses.iter().enumerate() {
            let (list, name) = if a.recipients.is_empty() {
                (&a.submitters, "submitters")
            } else {
                (&a.recipients, "recipients")
            };
            if let Some((j, p)) = list
                .iter()
                .enumerate()
                .find(|(_, p)| !recipient_parties.contains(p.as_str()))
            {
                return Err(field(
                    format!("analyses[{i}].{name}[{j}]"),
                    format!("{p:?} receives this analysis's answers but has no [[recipients]] key"),
                ));
            }
        }
        check_service_url(&self.service.url).map_err(|r| field("service.url", r))?;
        if self.service.deadline_secs == 0 || self.service.deadline_secs > MAX_SECS {
            return Err(field(
                "service.deadline_secs",
                format!("{}: must be 1 to {MAX_SECS}", self.service.deadline_secs),
            ));
        }
        SigningPublic::from_text(&self.service.signing_key)
            .map_err(|e| field("service.signing_key", e.to_string()))?;
        if self.platforms.is_empty() {
            return Err(field(
                "platforms",
                "at least one of tpm, snp, tdx, az-snp-vtpm, az-tdx-vtpm",
            ));
        }
        if let Network::Vsock { cid, port } = &self.network {
            vsock_target_ok(*cid, *port).map_err(|e| {
                let (name, reason) = e.split_once(": ").expect("field: reason");
                field(name, reason)
            })?;
            if self.service.url.starts_with("https://") {
                return Err(field(
                    "service.url",
                    "https with network mode vsock: the guest speaks plain HTTP over vsock (the release is sealed and signed end to end)",
                ));
            }
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

/// `http://host:port` or `https://host:port`, optionally followed by a path: a host name, an
/// IPv4 address or a bracketed IPv6 address, and a port 1-65535.
fn check_service_url(url: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected http://host:port or https://host:port";
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:.80}: {EXPECTED}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b'?' || b == b'#')
    {
        return Err(format!(
            "{url:.80}: the path must be plain (no query, fragment or spaces)"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:.80}: no port; {EXPECTED}"))?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if !host_ok {
        return Err(format!("{url:.80}: bad or missing host; {EXPECTED}"));
    }
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u32>(), Ok(1..=65535));
    if !port_ok {
        return Err(format!("{url:.80}: port must be 1-65535; {EXPECTED}"));
    }
    Ok(())
}

/// A valid contract (TOML) for unit tests, pinning the service key `sk` (`ed25519:<hex>`).
#[cfg(test)]
pub(crate) fn sample_toml(sk: &str) -> String {
    let k1 = format!("x25519:{}", "11".repeat(32));
    let k2 = format!("x25519:{}", "22".repeat(32));
    format!(
        r#"version = 1
name = "t"
expires = "2099-01-01T00:00:00Z"
platforms = ["tpm"]
parties = [{{ id = "a", name = "A" }}, {{ id = "b", name = "B" }}]
datasets = [{{ id = "users", owner = "a", key_id = "users-key", blob = "users.sealed" }}]
network = {{ mode = "static", address = "10.0.2.15/24", gateway = "10.0.2.2" }}
[[workloads]]
name = "w"
sha256 = "{w}"
inputs = ["users"]
limits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }}
[output]
min_group_size = 50
columns = [{{ name = "segment", kind = "label", max_len = 32 }}, {{ name = "count", kind = "count" }}]
blob = "result.sealed"
[[recipients]]
party = "a"
hpke_public_key = "{k1}"
[[recipients]]
party = "b"
hpke_public_key = "{k2}"
[service]
url = "http://10.0.2.2:8443"
signing_key = "{sk}"
deadline_secs = 60
"#,
        w = "ab".repeat(32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        let sk = crate::keys::SigningSecret::generate(&mut rand_core::OsRng)
            .public()
            .to_text();
        sample_toml(&sk)
    }

    /// The contract with `from` replaced by `to` must be refused naming `field_name`.
    fn refused(from: &str, to: &str, field_name: &str) {
        let g = good();
        assert!(g.contains(from), "{from}");
        let text = g.replacen(from, to, 1);
        match Contract::from_toml(&text) {
            Err(ContractError::Field { field: f, reason }) => {
                assert_eq!(f, field_name, "{to}: {reason}");
                assert!(!reason.contains('\n'));
            }
            other => panic!("{to}: {other:?}"),
        }
    }

    fn with_sql(rule: &str) -> String {
        good().replacen(
            r#"datasets = [{ id = "users", owner = "a", key_id = "users-key", blob = "users.sealed" }]"#,
            r#"datasets = [{ id = "users", owner = "a", key_id = "users-key", blob = "users.sealed", table = { name = "users", format = "csv", privacy_unit = "uid", columns = [{ name = "uid", type = "string" }, { name = "seg", type = "string" }, { name = "n", type = "int64" }] } }]"#,
            1,
        ) + &format!(
            "[[analyses]]\nname = \"q\"\nsubmitters = [\"b\"]\n[analyses.rule.aggregation]\n{rule}\n"
        )
    }

    #[test]
    fn analyses_are_checked_against_the_tables_and_parties() {
        let ok = "min_distinct_units = 50\njoin_columns = []\ndimensions = [\"users.seg\"]\naggregates = [{ function = \"count_distinct\", columns = [\"users.uid\"] }, { function = \"sum\", columns = [\"users.n\"] }]";
        let c = Contract::from_toml(&with_sql(ok)).expect("good SQL contract");
        assert_eq!(c.analyses.len(), 1);
        // A contract without tables or analyses canonicalizes as before (no new keys).
        let plain =
            String::from_utf8(Contract::from_toml(&good()).unwrap().canonical_json()).unwrap();
        assert!(
            !plain.contains("analyses") && !plain.contains("table"),
            "{plain}"
        );
        for (from, to, field_name) in [
            (
                "dimensions = [\"users.seg\"]",
                "dimensions = [\"users.uid\"]",
                "analyses[0].rule.dimensions[0]",
            ),
            (
                "dimensions = [\"users.seg\"]",
                "dimensions = [\"users.nope\"]",
                "analyses[0].rule.dimensions[0]",
            ),
            (
                "dimensions = [\"users.seg\"]",
                "dimensions = [\"other.seg\"]",
                "analyses[0].rule.dimensions[0]",
            ),
            (
                "dimensions = [\"users.seg\"]",
                "dimensions = [\"seg\"]",
                "analyses[0].rule.dimensions[0]",
            ),
            (
                "min_distinct_units = 50",
                "min_distinct_units = 1",
                "analyses[0].rule.min_distinct_units",
            ),
            (
                "columns = [\"users.n\"]",
                "columns = [\"users.uid\"]",
                "analyses[0].rule.aggregates[1].columns[0]",
            ),
        ] {
            let text = with_sql(&ok.replacen(from, to, 1));
            match Contract::from_toml(&text) {
                Err(ContractError::Field { field: f, reason }) => {
                    assert_eq!(f, field_name, "{to}: {reason}")
                }
                other => panic!("{to}: {other:?}"),
            }
        }
        for (from, to, field_name) in [
            (
                "submitters = [\"b\"]",
                "submitters = [\"z\"]",
                "analyses[0].submitters[0]",
            ),
            (
                "submitters = [\"b\"]",
                "submitters = []",
                "analyses[0].submitters",
            ),
            (
                "privacy_unit = \"uid\"",
                "privacy_unit = \"who\"",
                "datasets[0].table.privacy_unit",
            ),
            (
                "name = \"users\", format",
                "name = \"Users\", format",
                "datasets[0].table.name",
            ),
        ] {
            let text = with_sql(ok);
            assert!(text.contains(from), "{from}");
            match Contract::from_toml(&text.replacen(from, to, 1)) {
                Err(ContractError::Field { field: f, reason }) => {
                    assert_eq!(f, field_name, "{to}: {reason}")
                }
                other => panic!("{to}: {other:?}"),
            }
        }
        // Unknown fields anywhere in a rule are refused at parse time.
        let e = Contract::from_toml(&with_sql(&format!("{ok}\nmin_group = 2"))).unwrap_err();
        assert!(matches!(e, ContractError::Parse(_)), "{e}");
    }

    #[test]
    fn the_good_contract_passes() {
        Contract::from_toml(&good()).unwrap();
        for url in [
            "https://kms.example.com:443",
            "http://[::1]:8443",
            "http://10.0.2.2:8443/",
            "https://proxy.example:8443/dcr",
        ] {
            let t = good().replace("http://10.0.2.2:8443", url);
            Contract::from_toml(&t).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn vsock_network_names_a_reachable_cid_and_port() {
        let net =
            r#"network = { mode = "static", address = "10.0.2.15/24", gateway = "10.0.2.2" }"#;
        let vsock = r#"network = { mode = "vsock", cid = 3, port = 8000 }"#;
        let c = Contract::from_toml(&good().replacen(net, vsock, 1)).expect("vsock contract");
        assert_eq!(c.network, Network::Vsock { cid: 3, port: 8000 });
        let json = String::from_utf8(c.canonical_json()).unwrap();
        assert!(
            json.contains(r#""network":{"cid":3,"mode":"vsock","port":8000}"#),
            "{json}"
        );
        for (cid, port, name) in [
            (0u64, 8000u64, "network.cid"),
            (1, 8000, "network.cid"),
            (4294967295, 8000, "network.cid"),
            (2, 4294967295, "network.port"),
        ] {
            refused(
                net,
                &format!(r#"network = {{ mode = "vsock", cid = {cid}, port = {port} }}"#),
                name,
            );
        }
        // https cannot be spoken over the guest's vsock channel (no TLS in the guest).
        let https =
            good()
                .replacen(net, vsock, 1)
                .replacen("url = \"http://", "url = \"https://", 1);
        match Contract::from_toml(&https) {
            Err(ContractError::Field { field: f, .. }) => assert_eq!(f, "service.url"),
            other => panic!("{other:?}"),
        }
        // Out of u32, a missing port or an unknown key: a parse error, never a default.
        for bad in [
            r#"network = { mode = "vsock", cid = 4294967296, port = 1 }"#,
            r#"network = { mode = "vsock", cid = 3 }"#,
            r#"network = { mode = "vsock", cid = 3, port = 1, address = "10.0.2.15/24" }"#,
        ] {
            assert!(
                matches!(
                    Contract::from_toml(&good().replacen(net, bad, 1)),
                    Err(ContractError::Parse(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_wasm_workload_needs_room_for_the_runtime() {
        let wasm = |mib: u64| {
            good().replacen(
                "limits = { timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }",
                &format!("kind = \"wasm\"\nlimits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = {mib}, output_mib = 16 }}"),
                1,
            )
        };
        let c = Contract::from_toml(&wasm(160)).unwrap();
        assert_eq!(c.workloads[0].kind, WorkloadKind::Wasm);
        assert!(c.output_workload().is_some());
        match Contract::from_toml(&wasm(159)) {
            Err(ContractError::Field { field, .. }) => {
                assert_eq!(field, "workloads[0].limits.memory_mib")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_that_overflow_in_the_guest_are_refused() {
        let big = (u64::MAX >> 20) + 1;
        refused(
            "memory_mib = 256",
            &format!("memory_mib = {big}"),
            "workloads[0].limits.memory_mib",
        );
        refused(
            "memory_mib = 256",
            "memory_mib = 1048577",
            "workloads[0].limits.memory_mib",
        );
        refused(
            "output_mib = 16",
            &format!("output_mib = {big}"),
            "workloads[0].limits.output_mib",
        );
        refused(
            "timeout_secs = 60",
            "timeout_secs = 604801",
            "workloads[0].limits.timeout_secs",
        );
        refused(
            "cpu_secs = 60",
            &format!("cpu_secs = {}", i64::MAX),
            "workloads[0].limits.cpu_secs",
        );
        refused(
            "deadline_secs = 60",
            "deadline_secs = 604801",
            "service.deadline_secs",
        );
        let max = good().replace("memory_mib = 256", "memory_mib = 1048576");
        Contract::from_toml(&max).unwrap();
    }

    #[test]
    fn output_columns_are_a_strict_schema() {
        // An unknown field in a column, an unknown kind, a second count column, no count.
        let g = good();
        for (from, to) in [
            ("kind = \"count\" }", "kind = \"count\", pattern = \".*\" }"),
            ("kind = \"count\" }", "kind = \"text\" }"),
        ] {
            assert!(
                Contract::from_toml(&g.replacen(from, to, 1)).is_err(),
                "{to}"
            );
        }
        refused(
            "{ name = \"segment\", kind = \"label\", max_len = 32 }",
            "{ name = \"segment\", kind = \"count\" }",
            "output.columns",
        );
        refused(
            "{ name = \"count\", kind = \"count\" }",
            "{ name = \"count\", kind = \"integer\", min = 0, max = 9 }",
            "output.columns",
        );
        refused("max_len = 32", "max_len = 0", "output.columns[0].max_len");
    }

    /// `with_sql` plus a sql workload `e` after `w` (optionally instead of it).
    fn with_engine(keep_native: bool) -> String {
        let ok = "min_distinct_units = 50\ndimensions = [\"users.seg\"]\naggregates = [{ function = \"count_distinct\", columns = [\"users.uid\"] }]";
        let engine = format!(
            "[[workloads]]\nname = \"e\"\nkind = \"sql\"\nsha256 = \"{}\"\ninputs = [\"users\"]\nlimits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }}\n",
            "cd".repeat(32)
        );
        let t = with_sql(ok).replacen("[output]", &format!("{engine}[output]"), 1);
        if keep_native {
            t
        } else {
            let a = t.find("[[workloads]]\nname = \"w\"").unwrap();
            let b = a + t[a..].find("[[workloads]]\nname = \"e\"").unwrap();
            format!("{}{}", &t[..a], &t[b..])
        }
    }

    #[test]
    fn workload_kinds_are_checked() {
        let c = Contract::from_toml(&with_engine(true)).expect("native + sql");
        assert_eq!(c.output_workload().unwrap().name, "w");
        assert_eq!(c.sql_workload().unwrap().name, "e");
        // The native kind is the default and is not written out: old digests stay.
        let json = String::from_utf8(c.canonical_json()).unwrap();
        assert_eq!(json.matches("\"kind\":\"sql\"").count(), 1, "{json}");
        assert!(!json.contains("native"), "{json}");
        let c = Contract::from_toml(&with_engine(false)).expect("sql only");
        assert!(c.output_workload().is_none());
        let bad = |text: String, f: &str| match Contract::from_toml(&text) {
            Err(ContractError::Field { field, .. }) => assert_eq!(field, f, "{text}"),
            other => panic!("{f}: {other:?}"),
        };
        // Two native workloads, two engines, an engine without analyses, an unknown kind.
        let two = with_engine(true).replacen("name = \"e\"\nkind = \"sql\"", "name = \"e\"", 1);
        bad(two, "workloads[1].kind");
        let t = with_engine(false);
        let e = t.find("[[workloads]]").unwrap();
        let block = &t[e..t.find("[output]").unwrap()];
        bad(
            t.replacen(
                block,
                &format!("{block}{}", block.replace("\"e\"", "\"f\"")),
                1,
            ),
            "workloads[1].kind",
        );
        // (with_sql appends the analysis last)
        let no_analyses = t[..t.find("[[analyses]]").unwrap()].to_string();
        bad(no_analyses, "workloads[0].kind");
        assert!(matches!(
            Contract::from_toml(&with_engine(false).replacen(
                "kind = \"sql\"",
                "kind = \"docker\"",
                1
            )),
            Err(ContractError::Parse(_))
        ));
    }

    #[test]
    fn answer_recipients_are_the_analysis_recipients_or_the_submitter() {
        let c = Contract::from_toml(&with_engine(true)).unwrap();
        let a = c.analysis("q").unwrap();
        let r = c.answer_recipients(a, "b").unwrap();
        assert_eq!(r.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["b"]);
        let t = with_engine(true).replacen(
            "submitters = [\"b\"]",
            "submitters = [\"b\"]\nrecipients = [\"a\", \"b\"]",
            1,
        );
        let c = Contract::from_toml(&t).unwrap();
        let r = c.answer_recipients(c.analysis("q").unwrap(), "b").unwrap();
        assert_eq!(r.len(), 2);
        // A submitter that receives answers must have a recipient key.
        let k2 = format!(
            "[[recipients]]\nparty = \"b\"\nhpke_public_key = \"x25519:{}\"\n",
            "22".repeat(32)
        );
        let t = with_engine(true);
        assert!(t.contains(&k2));
        match Contract::from_toml(&t.replacen(&k2, "", 1)) {
            Err(ContractError::Field { field, .. }) => {
                assert_eq!(field, "analyses[0].submitters[0]")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blob_names_of_answers_are_reserved() {
        refused(
            "blob = \"result.sealed\"",
            "blob = \"query-00000000000000000000000000000000.result\"",
            "output.blob",
        );
        refused(
            "blob = \"users.sealed\"",
            "blob = \"query-x\"",
            "datasets[0].blob",
        );
    }

    #[test]
    fn an_output_blob_equal_to_a_dataset_blob_is_refused() {
        refused(
            "blob = \"result.sealed\"",
            "blob = \"users.sealed\"",
            "output.blob",
        );
    }

    #[test]
    fn a_reserved_dataset_key_id_is_refused() {
        refused(
            "key_id = \"users-key\"",
            "key_id = \"dcr.upload-token\"",
            "datasets[0].key_id",
        );
    }

    #[test]
    fn duplicate_recipients_are_refused() {
        refused("party = \"b\"", "party = \"a\"", "recipients[1].party");
        let k1 = format!("x25519:{}", "11".repeat(32));
        let k2 = format!("x25519:{}", "22".repeat(32));
        refused(&k2, &k1, "recipients[1].hpke_public_key");
    }

    #[test]
    fn impossible_dates_are_refused() {
        for bad in [
            "2030-02-31T00:00:00Z",
            "2099-01-01T00:00:00.x1Z",
            "2099-13-01T00:00:00Z",
        ] {
            refused("2099-01-01T00:00:00Z", bad, "expires");
        }
    }

    #[test]
    fn service_urls_without_host_and_port_are_refused() {
        for bad in [
            "http://",
            "https://",
            "http://:8443",
            "http://host",
            "http://host:",
            "http://host:0",
            "http://host:65536",
            "http://host:99999999999",
            "http://host:+80",
            "http://ho st:80",
            "http://host:80?x=1",
            "ftp://host:21",
            "http://[nothex]:80",
        ] {
            refused("http://10.0.2.2:8443", bad, "service.url");
        }
    }
}
