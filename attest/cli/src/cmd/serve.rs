//! `dcr-attest serve`: the key-release service (dcr-service), its `Config` made from the flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dcr_verify::snp;

use super::common::read;

#[derive(clap::Args)]
pub struct Args {
    /// Keys, store (store.redb), audit log (audit.log) and blobs; created if missing.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: std::net::SocketAddr,
    /// A second listener speaking TLS, for the parties (their bearer tokens and blobs never
    /// cross the network in clear). The certificate is made on first start and published in
    /// service.pub.json, which parties pin.
    #[arg(long, value_name = "ADDR:PORT")]
    tls_listen: Option<std::net::SocketAddr>,
    /// A DNS name or IP address the parties reach the TLS listener by (repeat) [default:
    /// localhost, 127.0.0.1 and the --tls-listen address].
    #[arg(long, value_name = "NAME", requires = "tls_listen")]
    tls_name: Vec<String>,
    /// Bearer tokens of the parties, `party:token` per line (writes need one).
    #[arg(long, value_name = "PATH")]
    tokens: Option<PathBuf>,
    /// Trusted EK root certificates (PEM) for TPM AKs activated against their EK.
    #[arg(long, value_name = "PEM")]
    tpm_ek_root: Vec<PathBuf>,
    /// EK intermediate certificates (PEM).
    #[arg(long, value_name = "PEM")]
    tpm_ek_intermediate: Vec<PathBuf>,
    /// Pinned TPM AKs (PEM/DER SubjectPublicKeyInfo or TPM2B_PUBLIC).
    #[arg(long, value_name = "PATH")]
    tpm_ak: Vec<PathBuf>,
    /// dcap-qvl collateral bundle (JSON) for TDX quotes.
    #[arg(long, value_name = "PATH")]
    tdx_collateral: Option<PathBuf>,
    /// dcap-qvl collateral bundle (JSON) for SGX quotes.
    #[arg(long, value_name = "PATH")]
    sgx_collateral: Option<PathBuf>,
    /// Lifetime of a challenge nonce.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    nonce_ttl: u64,
    /// Outstanding challenges in all (a full table evicts unused ones).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_challenges: usize,
    /// Outstanding challenges per client (IPv4 address or IPv6 /64); a client's next one
    /// evicts its oldest.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_challenges_per_ip: usize,
    /// Open connections in all (more are closed on accept).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Open connections per client (IPv4 address or IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_connections_per_ip: usize,
    /// Time for a request's headers to arrive (also the idle limit between requests).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    header_timeout: u64,
    /// Time for a JSON request's body to arrive; the longest pause in a blob upload.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    body_timeout: u64,
    /// The longest a response write may make no progress (client not reading).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    write_timeout: u64,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        data_dir,
        listen,
        tls_listen,
        tls_name,
        tokens,
        tpm_ek_root,
        tpm_ek_intermediate,
        tpm_ak,
        tdx_collateral,
        sgx_collateral,
        nonce_ttl,
        max_challenges,
        max_challenges_per_ip,
        max_connections,
        max_connections_per_ip,
        header_timeout,
        body_timeout,
        write_timeout,
    } = a;
    let certs = |flag: &str, ps: &[PathBuf]| -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for p in ps {
            let b = read(flag, p)?;
            out.extend(
                snp::pem_certs(&b).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))?,
            );
        }
        Ok(out)
    };
    let mut pinned = Vec::new();
    for p in &tpm_ak {
        let k = dcr_verify::tpm::parse_ak(&read("--tpm-ak", p)?)
            .with_context(|| format!("--tpm-ak {}", p.display()))?;
        pinned.push(dcr_verify::tpm::ak_spki_der(&k));
    }
    let cfg = dcr_service::Config {
        data_dir,
        listen,
        tokens: match &tokens {
            Some(p) => dcr_service::read_tokens(p)?,
            None => Vec::new(),
        },
        ek_roots: certs("--tpm-ek-root", &tpm_ek_root)?,
        ek_intermediates: certs("--tpm-ek-intermediate", &tpm_ek_intermediate)?,
        pinned_aks: pinned,
        tdx_collateral: match &tdx_collateral {
            Some(p) => Some(read("--tdx-collateral", p)?),
            None => None,
        },
        sgx_collateral: match &sgx_collateral {
            Some(p) => Some(read("--sgx-collateral", p)?),
            None => None,
        },
        nonce_ttl_secs: nonce_ttl,
        max_sessions: max_challenges,
        max_sessions_per_client: max_challenges_per_ip,
        limits: dcr_service::net::Limits {
            max_connections: max_connections.max(1),
            max_connections_per_ip: max_connections_per_ip.max(1),
            header_timeout: std::time::Duration::from_secs(header_timeout.max(1)),
            body_timeout: std::time::Duration::from_secs(body_timeout.max(1)),
            write_timeout: std::time::Duration::from_secs(write_timeout.max(1)),
        },
        tls_names: match tls_listen {
            Some(a) if tls_name.is_empty() => {
                let mut n = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                if !a.ip().is_unspecified() {
                    n.push(a.ip().to_string());
                }
                n
            }
            _ => tls_name,
        },
        tls_listen,
    };
    dcr_service::serve(cfg)?;
    Ok(ExitCode::SUCCESS)
}
