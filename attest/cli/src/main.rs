//! dcr-attest: verify confidential-VM evidence offline (exit 0 only when every check passes;
//! 1 when evidence is refused, each failing check named; 2 on bad usage or unreadable input),
//! run the key-release service, and the parties' commands (keygen, seal, open, register,
//! put, get, contract).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dcr_protocol::measurements::Measurements;
use dcr_verify::reference::{self, PcrSection};
use dcr_verify::snp;
use dcr_verify::verdict::Verdict;

#[derive(Parser)]
#[command(name = "dcr-attest", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the key-release service (HTTP API; see docs/protocol.md).
    Serve {
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
    },
    /// Make a recipient key pair (HPKE X25519): <DIR>/<NAME>.key (0600) and <DIR>/<NAME>.pub.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Seal a file under a fresh DEK (chunked AES-256-GCM); writes the DEK file (0600).
    Seal {
        #[arg(long = "in", value_name = "PATH")]
        input: PathBuf,
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Key id recorded in the header (the contract's datasets[].key_id).
        #[arg(long)]
        key_id: String,
        #[arg(long, value_name = "PATH")]
        dek_out: PathBuf,
        #[arg(long, default_value_t = dcr_protocol::seal::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
    },
    /// Open a run's signed result as a recipient (--key, with the --contract it ran: the proof
    /// must show an attested TEE produced it), or a sealed stream with its DEK (--dek).
    Open {
        #[arg(long = "in", value_name = "PATH")]
        input: PathBuf,
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with = "dek",
            required_unless_present = "dek",
            requires = "contract"
        )]
        key: Option<PathBuf>,
        #[arg(long, value_name = "PATH")]
        dek: Option<PathBuf>,
        /// The contract (TOML) of the run: pins the service key and names the output blob.
        #[arg(long, value_name = "PATH")]
        contract: Option<PathBuf>,
    },
    /// Register a DEK with the service, with its release policy.
    Register {
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
        /// Send the party token over plain HTTP to a host that is not this machine.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Upload a blob (sealed data) of a contract to the service (only its dataset's owner may).
    Put {
        #[arg(long, value_name = "URL")]
        service: String,
        #[arg(long, value_name = "PATH")]
        token_file: PathBuf,
        /// The contract (TOML) whose blob this is.
        #[arg(long, value_name = "PATH")]
        contract: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long = "in", value_name = "PATH")]
        input: PathBuf,
        /// The service's public keys (service.pub.json): needed for an https:// service,
        /// whose certificate it pins.
        #[arg(long, value_name = "PATH")]
        service_pub: Option<PathBuf>,
        /// Send the party token over plain HTTP to a host that is not this machine.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Download a blob of a contract from the service.
    Get {
        #[arg(long, value_name = "URL")]
        service: String,
        /// The contract (TOML) whose blob this is.
        #[arg(long, value_name = "PATH")]
        contract: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// The service's public keys (service.pub.json): needed for an https:// service.
        #[arg(long, value_name = "PATH")]
        service_pub: Option<PathBuf>,
    },
    /// Check a contract (TOML) and print its digest; --canonical-out writes the packed form.
    Contract {
        #[arg(long = "in", value_name = "PATH")]
        input: PathBuf,
        #[arg(long, value_name = "PATH")]
        canonical_out: Option<PathBuf>,
    },
    /// Verify evidence.
    Verify {
        #[command(subcommand)]
        what: Verify,
    },
    /// TPM2_MakeCredential without a TPM (like tpm2_makecredential): encrypt a secret to an EK
    /// for an AK name; only the TPM holding both recovers it with tpm2_activatecredential.
    MakeCredential {
        /// The EK public (TPM2B_PUBLIC, tpm2_createek -u).
        #[arg(short = 'e', long, value_name = "PATH")]
        ek_public: PathBuf,
        /// The AK name (tpm2_createak -n file, or hex).
        #[arg(short = 'n', long, value_name = "PATH|HEX")]
        ak_name: String,
        /// The secret (1-64 bytes).
        #[arg(short = 's', long, value_name = "PATH")]
        secret: PathBuf,
        /// Where to write the credential (tpm2-tools format); refuses to overwrite.
        #[arg(short = 'o', long, value_name = "PATH")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Verify {
    /// An SEV-SNP attestation report with its VCEK or VLEK.
    Snp {
        #[arg(long, value_name = "PATH")]
        report: PathBuf,
        /// The VCEK/VLEK certificate (DER or PEM). Without it, the VCEK comes from --vcek-cache.
        #[arg(long, value_name = "PATH")]
        vcek: Option<PathBuf>,
        /// VCEK cache directory, keyed by (CHIP_ID, REPORTED_TCB): looked up when --vcek is
        /// absent; a --vcek whose chain, TCB and hwID checks pass is stored in it.
        #[arg(long, value_name = "DIR")]
        vcek_cache: Option<PathBuf>,
        /// ASK/ASVK then ARK (PEM); a supplied ARK/ASK must be AMD's pinned one.
        #[arg(long, value_name = "PATH")]
        chain: Option<PathBuf>,
        /// Verification time (RFC 3339, UTC), e.g. 2026-01-01T00:00:00Z [default: now].
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Also require MEASUREMENT to equal the snp launch digest of this measurements.json.
        #[arg(long, value_name = "PATH")]
        expected: Option<PathBuf>,
        #[arg(long)]
        allow_debug: bool,
        #[arg(long)]
        allow_migration_agent: bool,
        /// Required VMPL, or "any".
        #[arg(long, default_value = "0")]
        vmpl: String,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// An Intel TDX quote (v4/v5) with its collateral bundle (dcap-qvl JSON).
    Tdx {
        #[arg(long, value_name = "PATH")]
        quote: PathBuf,
        #[arg(long, value_name = "PATH")]
        collateral: PathBuf,
        /// Verification time (RFC 3339, UTC) [default: now].
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Accept this TCB status too (repeatable); UpToDate is always accepted.
        #[arg(long, value_name = "STATUS")]
        allow_status: Vec<String>,
        #[arg(long)]
        allow_debug: bool,
        /// Also require MRTD to equal the tdx mrtd of this measurements.json.
        #[arg(long, value_name = "PATH")]
        expected: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A TPM 2.0 quote from tpm2_quote's files (tpm2_checkquote's flags).
    Tpm {
        /// The AK public key (PEM or DER SubjectPublicKeyInfo).
        #[arg(short = 'u', long, value_name = "PATH")]
        public: PathBuf,
        /// TPMS_ATTEST (tpm2_quote -m).
        #[arg(short = 'm', long, value_name = "PATH")]
        message: PathBuf,
        /// TPMT_SIGNATURE or plain signature (tpm2_quote -s).
        #[arg(short = 's', long, value_name = "PATH")]
        signature: PathBuf,
        /// PCR values (tpm2_quote -o; serialized or values format).
        #[arg(short = 'f', long, value_name = "PATH")]
        pcr: PathBuf,
        /// Qualifying data (nonce): hex, or a file holding the raw bytes.
        #[arg(short = 'q', long, value_name = "HEX|PATH")]
        qualification: String,
        /// Hash of a plain signature.
        #[arg(short = 'g', long, default_value = "sha256")]
        hash_algorithm: String,
        /// PCR selection, e.g. sha256:0,1,16+sha1:0; must equal the quote's.
        #[arg(short = 'l', long, value_name = "LIST")]
        pcr_list: Option<String>,
        /// Also require the SHA-256 PCRs predicted in this measurements.json (tpm.pcrs).
        #[arg(long, value_name = "PATH")]
        expected: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Azure CVM evidence (Trustee az-snp-vtpm or az-tdx-vtpm JSON): HCL report, VCEK or TD
    /// quote, vTPM quote.
    Azure {
        #[arg(long, value_name = "PATH")]
        evidence: PathBuf,
        /// The nonce the vTPM quote must carry (hex, or a file with the raw bytes).
        #[arg(short = 'q', long, value_name = "HEX|PATH")]
        qualification: String,
        /// A VCEK to use instead of the one in the evidence (DER or PEM).
        #[arg(long, value_name = "PATH")]
        vcek: Option<PathBuf>,
        /// az-tdx-vtpm evidence: dcap-qvl collateral for its TD quote.
        #[arg(long, value_name = "PATH")]
        collateral: Option<PathBuf>,
        /// Verification time (RFC 3339, UTC) [default: now].
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Also require the Azure PCRs predicted in this measurements.json (azure.pcrs).
        #[arg(long, value_name = "PATH")]
        expected: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// An EK certificate chain (tpm2_nvread 0x1c00002) to a trusted root, certifying the EK.
    Ek {
        /// The EK certificate (DER or PEM).
        #[arg(long, value_name = "PATH")]
        cert: PathBuf,
        /// Intermediate CA certificates, issuer first (PEM).
        #[arg(long, value_name = "PATH")]
        chain: Option<PathBuf>,
        /// Trusted root certificates (PEM; the TPM manufacturer's, or swtpm-localca's in tests).
        #[arg(long, value_name = "PATH")]
        trusted: PathBuf,
        /// The EK public (TPM2B_PUBLIC, tpm2_createek -u).
        #[arg(short = 'e', long, value_name = "PATH")]
        ek_public: PathBuf,
        /// Verification time (RFC 3339, UTC) [default: now].
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with a `+00:00` offset) → Unix seconds.
fn parse_rfc3339(s: &str) -> anyhow::Result<u64> {
    dcr_protocol::time::parse_rfc3339(s).ok_or_else(|| {
        anyhow::anyhow!("--at {s:?}: expected RFC 3339 UTC like 2026-01-01T00:00:00Z")
    })
}

fn der_or_pem(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") {
        let mut certs = snp::pem_certs(&bytes).map_err(|e| anyhow::anyhow!(e))?;
        return Ok(certs.remove(0));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let s = c.to_string();
                if !msg.contains(&s) {
                    msg.push_str(": ");
                    msg.push_str(&s);
                }
            }
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// Print a verdict (lines or JSON) and map it to the exit code.
fn report(verdict: &Verdict, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let v = serde_json::json!({"ok": verdict.ok(), "checks": verdict.checks});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &verdict.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            println!("{mark} {}: {}", c.name, c.detail);
        }
        let last = if verdict.ok() {
            "verdict: accepted"
        } else {
            "verdict: refused"
        };
        println!("{last}");
    }
    Ok(if verdict.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Unix seconds of `--at`, or now.
fn verification_time(at: &Option<String>) -> anyhow::Result<u64> {
    Ok(match at {
        Some(s) => parse_rfc3339(s)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// A 48-byte hex value at `measurements.<platform>.<field>` of a measurements.json.
/// The service client: an https:// service needs its pinned service.pub.json.
fn client_for(
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
fn read_contract(path: &Path) -> anyhow::Result<dcr_protocol::contract::Contract> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--contract {}", path.display()))?;
    dcr_protocol::contract::Contract::from_toml(&text)
        .with_context(|| format!("--contract {}", path.display()))
}

/// The reference values of `--expected`.
fn read_expected(path: &Path) -> anyhow::Result<Measurements> {
    let bytes = read("--expected", path)?;
    Measurements::from_json(&bytes).with_context(|| path.display().to_string())
}

fn expected_err(path: &Path) -> impl Fn(reference::Missing) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("--expected {}: {e}", path.display())
}

/// `tpm.pcrs` (or `azure.pcrs`) of a measurements.json, sorted by index.
fn expected_pcrs_of(p: &Path, section: PcrSection) -> anyhow::Result<Vec<(u32, Vec<u8>)>> {
    reference::pcrs(&read_expected(p)?, section).map_err(expected_err(p))
}

/// Even-length hex (optionally 0x-prefixed) to bytes.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x");
    if s.is_empty() {
        return None;
    }
    hex::decode(s).ok()
}

fn read(flag: &str, p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli: Cli = match dcr_protocol::cli::parse_or_exit() {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let what = match cli.command {
        Cmd::Verify { what } => what,
        Cmd::Serve {
            data_dir,
            listen,
            tls_listen,
            tls_name,
            tokens,
            tpm_ek_root,
            tpm_ek_intermediate,
            tpm_ak,
            tdx_collateral,
            nonce_ttl,
            max_challenges,
            max_challenges_per_ip,
            max_connections,
            max_connections_per_ip,
            header_timeout,
            body_timeout,
            write_timeout,
        } => {
            let certs = |flag: &str, ps: &[PathBuf]| -> anyhow::Result<Vec<Vec<u8>>> {
                let mut out = Vec::new();
                for p in ps {
                    let b = read(flag, p)?;
                    out.extend(
                        snp::pem_certs(&b)
                            .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))?,
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
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Keygen { out_dir, name } => {
            let pk = dcr_attest::parties::keygen(&out_dir, &name)?;
            println!("{}", pk.to_text());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Seal {
            input,
            out,
            key_id,
            dek_out,
            chunk_size,
        } => {
            let n = dcr_attest::parties::seal_file(&input, &out, &key_id, &dek_out, chunk_size)?;
            println!(
                "sealed {n} bytes under key {key_id} to {} (sha256 {})",
                out.display(),
                dcr_attest::parties::file_sha256(&out)?
            );
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Open {
            input,
            out,
            key,
            dek,
            contract,
        } => {
            let n = match (key, dek) {
                (Some(k), _) => {
                    let path = contract.context("--key needs --contract")?;
                    let c = read_contract(&path)?;
                    dcr_attest::parties::open_result(&input, &out, &k, &c)?
                }
                (None, Some(d)) => dcr_attest::parties::open_with_dek(&input, &out, &d)?,
                (None, None) => anyhow::bail!("--key or --dek is required"),
            };
            println!("opened {n} bytes to {}", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Register {
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
            insecure_http,
        } => {
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
                    serde_json::from_value::<Tee>(serde_json::Value::String(p.clone())).map_err(
                        |_| {
                            anyhow::anyhow!(
                                "--platform {p:?}: one of tpm, snp, tdx, az-snp-vtpm, az-tdx-vtpm"
                            )
                        },
                    )
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
                        anyhow::anyhow!(
                            "--snp-min-tcb {spec:?}: expected PRODUCT:bl=N,tee=N,snp=N,ucode=N"
                        )
                    })?;
                    let level = TcbLevel::parse(level)
                        .map_err(|e| anyhow::anyhow!("--snp-min-tcb {spec:?}: {e}"))?;
                    match product {
                        "milan" => m.milan = Some(level),
                        "genoa" => m.genoa = Some(level),
                        "turin" => m.turin = Some(level),
                        _ => anyhow::bail!(
                            "--snp-min-tcb {spec:?}: product one of milan, genoa, turin"
                        ),
                    }
                }
                Some(m)
            } else {
                if !snp_min_tcb.is_empty() {
                    anyhow::bail!("--snp-min-tcb: no snp or az-snp-vtpm platform to apply it to");
                }
                None
            };
            let policy = ReleasePolicy {
                contract_digest: hex::encode(c.digest()),
                platforms,
                reference: refv,
                single_use,
                expires: expires.unwrap_or_else(|| c.expires.clone()),
                snp_min_tcb: min_tcb,
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
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Put {
            service,
            token_file,
            contract,
            name,
            input,
            service_pub,
            insecure_http,
        } => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("--token-file {}", token_file.display()))?;
            let c = read_contract(&contract)?;
            let mut client = client_for(&service, service_pub.as_deref())?;
            client.insecure_http = insecure_http;
            let n = client.put_blob(
                &format!("Bearer {}", token.trim()),
                &hex::encode(c.digest()),
                &name,
                &input,
            )?;
            println!("stored blob {name} ({n} bytes)");
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Get {
            service,
            contract,
            name,
            out,
            service_pub,
        } => {
            let c = read_contract(&contract)?;
            let n = client_for(&service, service_pub.as_deref())?.get_blob(
                &hex::encode(c.digest()),
                &name,
                &out,
            )?;
            println!("fetched blob {name} ({n} bytes) to {}", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Contract {
            input,
            canonical_out,
        } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("--in {}", input.display()))?;
            let c = dcr_protocol::contract::Contract::from_toml(&text)
                .with_context(|| format!("--in {}", input.display()))?;
            if let Some(o) = canonical_out {
                std::fs::write(&o, c.canonical_json())
                    .with_context(|| format!("--canonical-out {}", o.display()))?;
            }
            println!("sha256:{}", hex::encode(c.digest()));
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::MakeCredential {
            ek_public,
            ak_name,
            secret,
            out,
        } => {
            use dcr_verify::credential;
            let ek = credential::parse_ek_public(&read("--ek-public", &ek_public)?)
                .with_context(|| ek_public.display().to_string())?;
            let name = match hex_bytes(&ak_name) {
                Some(b) => b,
                None => read("--ak-name", Path::new(&ak_name))?,
            };
            let secret = read("--secret", &secret)?;
            let mut seed = [0u8; 32];
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut seed)
                .map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
            let cred =
                credential::make_credential(&ek, &name, &secret, &seed, &mut rand_core::OsRng)?;
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .with_context(|| format!("--out {} (refusing to overwrite)", out.display()))?;
            f.write_all(&cred)
                .with_context(|| format!("--out {}", out.display()))?;
            println!("credential: {} bytes to {}", cred.len(), out.display());
            return Ok(ExitCode::SUCCESS);
        }
    };
    match what {
        Verify::Snp {
            report: report_path,
            vcek,
            vcek_cache,
            chain,
            at,
            expected,
            allow_debug,
            allow_migration_agent,
            vmpl,
            json,
        } => {
            let report_bytes = read("--report", &report_path)?;
            let parsed = snp::Report::parse(&report_bytes).ok();
            let vek = match (&vcek, &vcek_cache, &parsed) {
                (Some(p), _, _) => der_or_pem(read("--vcek", p)?)?,
                (None, Some(dir), Some(r)) => {
                    let path = dir.join(snp::vcek_cache_name(r));
                    std::fs::read(&path).map_err(|_| {
                        anyhow::anyhow!(
                            "--vcek-cache {}: no VCEK for this chip and TCB ({}); fetch it from {} and pass it with --vcek",
                            dir.display(),
                            path.display(),
                            snp::kds_vcek_url(r)
                        )
                    })?
                }
                (None, Some(_), None) | (None, None, _) => {
                    anyhow::bail!("give --vcek, or --vcek-cache with a decodable --report")
                }
            };
            let chain = match &chain {
                Some(p) => Some(
                    snp::pem_certs(&read("--chain", p)?)
                        .map_err(|e| anyhow::anyhow!("--chain {}: {e}", p.display()))?,
                ),
                None => None,
            };
            let now = verification_time(&at)?;
            let vmpl = if vmpl == "any" {
                None
            } else {
                Some(
                    vmpl.parse()
                        .map_err(|_| anyhow::anyhow!("--vmpl {vmpl:?}: a number 0-3 or \"any\""))?,
                )
            };
            let mut policy = snp::SnpPolicy {
                allow_debug,
                allow_migration_agent,
                vmpl,
                ..Default::default()
            };
            if let Some(p) = &expected {
                policy.measurements.push(
                    reference::snp_launch_digest(&read_expected(p)?).map_err(expected_err(p))?,
                );
            }
            let verdict = snp::verify(&report_bytes, &vek, chain.as_deref(), now, &policy);
            if let (Some(dir), Some(_), Some(r)) = (&vcek_cache, &vcek, &parsed) {
                let genuine = verdict.checks.iter().all(|c| {
                    c.ok || !(c.name == "chain"
                        || c.name.starts_with("vek.")
                        || c.name == "report.signature")
                });
                if genuine {
                    std::fs::create_dir_all(dir)
                        .and_then(|_| {
                            let tmp = dir.join(format!(".{}.tmp", snp::vcek_cache_name(r)));
                            std::fs::write(&tmp, &vek)?;
                            std::fs::rename(&tmp, dir.join(snp::vcek_cache_name(r)))
                        })
                        .with_context(|| format!("--vcek-cache {}", dir.display()))?;
                }
            }
            report(&verdict, json)
        }
        Verify::Tdx {
            quote,
            collateral,
            at,
            allow_status,
            allow_debug,
            expected,
            json,
        } => {
            let q = read("--quote", &quote)?;
            let c = read("--collateral", &collateral)?;
            let now = verification_time(&at)?;
            let mut policy = dcr_verify::tdx::TdxPolicy {
                allow_debug,
                ..Default::default()
            };
            policy.allowed_status.extend(allow_status);
            if let Some(p) = &expected {
                policy
                    .mrtd
                    .push(reference::tdx_mrtd(&read_expected(p)?).map_err(expected_err(p))?);
                policy.match_image = true;
            }
            report(&dcr_verify::tdx::verify(&q, &c, now, &policy), json)
        }
        Verify::Tpm {
            public,
            message,
            signature,
            pcr,
            qualification,
            hash_algorithm,
            pcr_list,
            expected,
            json,
        } => {
            use dcr_verify::tpm;
            let list = match &pcr_list {
                Some(l) => Some(
                    tpm::parse_pcr_list(l).map_err(|e| anyhow::anyhow!("--pcr-list {l:?}: {e}"))?,
                ),
                None => None,
            };
            let qual = match hex_bytes(&qualification) {
                Some(b) => b,
                None => read("--qualification", Path::new(&qualification))?,
            };
            let plain_hash = match hash_algorithm.as_str() {
                "sha1" => tpm::TPM_ALG_SHA1,
                "sha256" => tpm::TPM_ALG_SHA256,
                "sha384" => tpm::TPM_ALG_SHA384,
                "sha512" => tpm::TPM_ALG_SHA512,
                other => {
                    anyhow::bail!("--hash-algorithm {other:?}: sha1, sha256, sha384 or sha512")
                }
            };
            let want = match &expected {
                Some(p) => expected_pcrs_of(p, PcrSection::Tpm)?,
                None => Vec::new(),
            };
            let mut verdict = tpm::verify(
                &read("--public", &public)?,
                &read("--message", &message)?,
                &read("--signature", &signature)?,
                &read("--pcr", &pcr)?,
                &qual,
                plain_hash,
                &want,
            );
            if let Some(list) = list {
                if let Ok(a) = tpm::parse_attest(&read("--message", &message)?) {
                    let quoted: tpm::Selection = a
                        .selection
                        .into_iter()
                        .filter(|(_, p)| !p.is_empty())
                        .collect();
                    verdict.checks.push(dcr_verify::verdict::Check {
                        name: "pcrs.list".into(),
                        ok: quoted == list,
                        detail: format!("--pcr-list {list:?} vs quoted {quoted:?}"),
                    });
                }
            }
            report(&verdict, json)
        }
        Verify::Azure {
            evidence,
            qualification,
            vcek,
            collateral,
            at,
            expected,
            json,
        } => {
            let bytes = read("--evidence", &evidence)?;
            let is_tdx = serde_json::from_slice::<serde_json::Value>(&bytes)
                .map(|v| v.get("td_quote").is_some())
                .unwrap_or(false);
            if is_tdx {
                let ev = dcr_verify::azure::parse_tdx_evidence(&bytes)
                    .with_context(|| evidence.display().to_string())?;
                let nonce = match hex_bytes(&qualification) {
                    Some(b) => b,
                    None => read("--qualification", Path::new(&qualification))?,
                };
                let coll = match &collateral {
                    Some(p) => Some(read("--collateral", p)?),
                    None => None,
                };
                let want = match &expected {
                    Some(p) => expected_pcrs_of(p, PcrSection::Azure)?,
                    None => Vec::new(),
                };
                let verdict = dcr_verify::azure::verify_tdx(
                    &ev,
                    &nonce,
                    verification_time(&at)?,
                    coll.as_deref(),
                    &dcr_verify::tdx::TdxPolicy::default(),
                    &want,
                );
                return report(&verdict, json);
            }
            let mut ev = dcr_verify::azure::parse_snp_evidence(&bytes)
                .with_context(|| evidence.display().to_string())?;
            if let Some(p) = &vcek {
                ev.vcek_der = der_or_pem(read("--vcek", p)?)?;
            }
            let nonce = match hex_bytes(&qualification) {
                Some(b) => b,
                None => read("--qualification", Path::new(&qualification))?,
            };
            let now = verification_time(&at)?;
            let want = match &expected {
                Some(p) => expected_pcrs_of(p, PcrSection::Azure)?,
                None => Vec::new(),
            };
            let verdict =
                dcr_verify::azure::verify_snp(&ev, &nonce, now, &snp::SnpPolicy::default(), &want);
            report(&verdict, json)
        }
        Verify::Ek {
            cert,
            chain,
            trusted,
            ek_public,
            at,
            json,
        } => {
            let pem_list = |flag: &str, p: &Path| -> anyhow::Result<Vec<Vec<u8>>> {
                snp::pem_certs(&read(flag, p)?)
                    .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
            };
            let cert_der = der_or_pem(read("--cert", &cert)?)?;
            let intermediates = match &chain {
                Some(p) => pem_list("--chain", p)?,
                None => Vec::new(),
            };
            let roots = pem_list("--trusted", &trusted)?;
            let ek = dcr_verify::credential::parse_ek_public(&read("--ek-public", &ek_public)?)
                .with_context(|| ek_public.display().to_string())?;
            let now = verification_time(&at)?;
            let verdict =
                dcr_verify::credential::verify_ek_cert(&cert_der, &intermediates, &roots, &ek, now);
            report(&verdict, json)
        }
    }
}
