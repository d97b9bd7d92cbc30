//! `dcr-attest verify tpm`: a TPM 2.0 quote from tpm2_quote's files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dcr_verify::reference::PcrSection;

use super::{expected_pcrs_of, report};
use crate::cmd::common::{hex_bytes, read};

#[derive(clap::Args)]
pub struct Args {
    /// The AK public key (PEM or DER SubjectPublicKeyInfo).
    #[arg(short = 'u', long, value_name = "PATH")]
    public: PathBuf,
    /// TPMS_ATTEST (tpm2_quote -m).
    #[arg(short = 'm', long, value_name = "PATH")]
    message: PathBuf,
    /// TPMT_SIGNATURE or plain signature (tpm2_quote -s).
    #[arg(short = 's', long, value_name = "PATH")]
    signature: PathBuf,
    /// PCR values (tpm2_quote -o; serialized, marshaled or values format).
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
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        public,
        message,
        signature,
        pcr,
        qualification,
        hash_algorithm,
        pcr_list,
        expected,
        json,
    } = a;
    use dcr_verify::tpm;
    let list = match &pcr_list {
        Some(l) => {
            Some(tpm::parse_pcr_list(l).map_err(|e| anyhow::anyhow!("--pcr-list {l:?}: {e}"))?)
        }
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
