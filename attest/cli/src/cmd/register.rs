//! `dcr-attest register`: register a DEK with the service, with its release policy.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dcr_protocol::measurements::Measurements;

use super::common::{read, read_contract};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "URL")]
    service: String,
    /// The service's public keys (service.pub.json), pinned.
    #[arg(long, value_name = "PATH")]
    service_pub: PathBuf,
    /// File holding this party's bearer token.
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
    #[arg(long, value_name = "PATH")]
    dek: PathBuf,
    /// The contract (TOML) whose digest the TEE must bind.
    #[arg(long, value_name = "PATH")]
    contract: PathBuf,
    /// measurements.json of the image allowed to receive the key.
    #[arg(long, value_name = "PATH")]
    reference: PathBuf,
    /// Platforms whose evidence may receive the key.
    #[arg(long, value_name = "TEE", required = true, value_delimiter = ',')]
    platform: Vec<String>,
    /// Release the key at most once.
    #[arg(long)]
    single_use: bool,
    /// No release after this time (RFC 3339 UTC) [default: the contract's expiry].
    #[arg(long, value_name = "RFC3339")]
    expires: Option<String>,
    /// Oldest SEV-SNP firmware accepted, per product (for snp / az-snp-vtpm), e.g.
    /// `genoa:bl=10,tee=0,snp=23,ucode=84`; repeat per product. Default: Milan
    /// bl=4,tee=0,snp=24,ucode=219 (docs/protocol.md); products not named are refused.
    #[arg(long, value_name = "PRODUCT:LEVEL")]
    snp_min_tcb: Vec<String>,
    /// For sgx: release to the enclave with this MRENCLAVE (64 hex digits).
    #[arg(long, value_name = "HEX")]
    sgx_mrenclave: Option<String>,
    /// For sgx: release to enclaves by this MRSIGNER (with --sgx-isv-prod-id and
    /// --sgx-min-isv-svn).
    #[arg(long, value_name = "HEX")]
    sgx_mrsigner: Option<String>,
    #[arg(long, value_name = "N")]
    sgx_isv_prod_id: Option<u16>,
    #[arg(long, value_name = "N")]
    sgx_min_isv_svn: Option<u16>,
    /// Send the party token over plain HTTP to a host that is not this machine.
    #[arg(long)]
    insecure_http: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        service,
        service_pub,
        token_file,
        dek,
        contract,
        reference,
        platform,
        single_use,
        expires,
        snp_min_tcb,
        sgx_mrenclave,
        sgx_mrsigner,
        sgx_isv_prod_id,
        sgx_min_isv_svn,
        insecure_http,
    } = a;
    use dcr_protocol::wire::{ReleasePolicy, ServiceInfo, SnpMinTcb, TcbLevel, Tee};
    let pinned: ServiceInfo = serde_json::from_slice(&read("--service-pub", &service_pub)?)
        .with_context(|| format!("--service-pub {}", service_pub.display()))?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("--token-file {}", token_file.display()))?;
    let (key_id, dek) = dcr_attest::parties::read_dek(&dek)?;
    let c = read_contract(&contract)?;
    let Some(dataset) = c.datasets.iter().find(|d| d.key_id == key_id) else {
        anyhow::bail!(
            "--contract {}: no dataset uses key {key_id:?}",
            contract.display()
        );
    };
    let refv = Measurements::from_json(&read("--reference", &reference)?)
        .with_context(|| format!("--reference {}", reference.display()))?;
    let platforms = platform
        .iter()
        .map(|p| {
            serde_json::from_value::<Tee>(serde_json::Value::String(p.clone())).map_err(|_| {
                anyhow::anyhow!(
                    "--platform {p:?}: one of tpm, snp, tdx, az-snp-vtpm, az-tdx-vtpm, nitro, sgx"
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let min_tcb = if platforms
        .iter()
        .any(|t| matches!(t, Tee::Snp | Tee::AzSnpVtpm))
    {
        let mut m = SnpMinTcb {
            milan: Some(dcr_protocol::wire::MILAN_MIN_TCB),
            ..Default::default()
        };
        for spec in &snp_min_tcb {
            let (product, level) = spec.split_once(':').ok_or_else(|| {
                anyhow::anyhow!("--snp-min-tcb {spec:?}: expected PRODUCT:bl=N,tee=N,snp=N,ucode=N")
            })?;
            let level = TcbLevel::parse(level)
                .map_err(|e| anyhow::anyhow!("--snp-min-tcb {spec:?}: {e}"))?;
            match product {
                "milan" => m.milan = Some(level),
                "genoa" => m.genoa = Some(level),
                "turin" => m.turin = Some(level),
                _ => anyhow::bail!("--snp-min-tcb {spec:?}: product one of milan, genoa, turin"),
            }
        }
        Some(m)
    } else {
        if !snp_min_tcb.is_empty() {
            anyhow::bail!("--snp-min-tcb: no snp or az-snp-vtpm platform to apply it to");
        }
        None
    };
    let hex32 =
        |flag: &str, v: &Option<String>| -> anyhow::Result<Option<dcr_protocol::digest::Sha256>> {
            v.as_deref()
                .map(|s| {
                    dcr_protocol::digest::Sha256::from_hex(s)
                        .ok_or_else(|| anyhow::anyhow!("{flag} {s:?}: expected 64 hex digits"))
                })
                .transpose()
        };
    let sgx = dcr_protocol::wire::SgxIdentity {
        mrenclave: hex32("--sgx-mrenclave", &sgx_mrenclave)?,
        mrsigner: hex32("--sgx-mrsigner", &sgx_mrsigner)?,
        isv_prod_id: sgx_isv_prod_id,
        min_isv_svn: sgx_min_isv_svn,
    };
    let any_sgx_flag = sgx != dcr_protocol::wire::SgxIdentity::default();
    let sgx = if platforms.contains(&Tee::Sgx) {
        sgx.check()
            .map_err(|e| anyhow::anyhow!("--platform sgx: {e} (--sgx-mrenclave, or --sgx-mrsigner with --sgx-isv-prod-id and --sgx-min-isv-svn)"))?;
        Some(sgx)
    } else if any_sgx_flag {
        anyhow::bail!("--sgx-*: no sgx platform to apply them to");
    } else {
        None
    };
    let policy = ReleasePolicy {
        contract_digest: hex::encode(c.digest()),
        platforms,
        reference: refv,
        single_use,
        expires: expires.unwrap_or_else(|| c.expires.clone()),
        snp_min_tcb: min_tcb,
        sgx,
    };
    let mut client = dcr_attest::parties::Client::pinned(&service, &pinned)?;
    client.insecure_http = insecure_http;
    let canonical = c.canonical_json();
    let receipt = client.register(
        token.trim(),
        &pinned,
        dcr_attest::parties::Registration {
            key_id: &key_id,
            owner: &dataset.owner,
            dek: &dek,
            policy,
            contract_canonical: &canonical,
        },
    )?;
    println!(
        "registered key {key_id} of {} for contract {} (receipt signed by the pinned service key; policy {})",
        receipt.owner,
        hex::encode(c.digest()),
        receipt.policy_binding
    );
    Ok(ExitCode::SUCCESS)
}
