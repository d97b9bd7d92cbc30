//! Helpers several subcommands share: reading a flag's file, a contract, the service client,
//! and hex-or-file values.

use std::path::Path;

use anyhow::Context;

/// The service client: an https:// service needs its pinned service.pub.json.
pub fn client_for(
    service: &str,
    service_pub: Option<&Path>,
) -> anyhow::Result<dcr_attest::parties::Client> {
    match service_pub {
        Some(p) => {
            let pinned: dcr_protocol::wire::ServiceInfo =
                serde_json::from_slice(&read("--service-pub", p)?)
                    .with_context(|| format!("--service-pub {}", p.display()))?;
            Ok(dcr_attest::parties::Client::pinned(service, &pinned)?)
        }
        None if service.starts_with("https://") => {
            anyhow::bail!("--service {service}: https needs --service-pub (the pinned service.pub.json with its certificate)")
        }
        None => Ok(dcr_attest::parties::Client::new(service)),
    }
}

/// A contract (TOML), checked.
pub fn read_contract(path: &Path) -> anyhow::Result<dcr_protocol::contract::Contract> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--contract {}", path.display()))?;
    dcr_protocol::contract::Contract::from_toml(&text)
        .with_context(|| format!("--contract {}", path.display()))
}

/// Even-length hex (optionally 0x-prefixed) to bytes.
pub fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x");
    if s.is_empty() {
        return None;
    }
    hex::decode(s).ok()
}

/// The bytes of the file a flag names; errors name the flag and the path.
pub fn read(flag: &str, p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
}
