//! dcr-attest: verify confidential-VM evidence offline (exit 0 only when every check passes;
//! 1 when evidence is refused, each failing check named; 2 on bad usage or unreadable input),
//! run the key-release service, and the parties' commands (keygen, seal, open, register,
//! put, get, contract).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "dcr-attest", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the key-release service (HTTP API; see docs/protocol.md).
    Serve(cmd::serve::Args),
    /// Make a recipient key pair (HPKE X25519): <DIR>/<NAME>.key (0600) and <DIR>/<NAME>.pub.
    Keygen(cmd::keygen::Args),
    /// Seal a file under a fresh DEK (chunked AES-256-GCM); writes the DEK file (0600).
    Seal(cmd::seal::Args),
    /// Open a run's signed result as a recipient (--key, with the --contract it ran: the proof
    /// must show an attested TEE produced it), or a sealed stream with its DEK (--dek).
    Open(cmd::open::Args),
    /// Register a DEK with the service, with its release policy.
    Register(cmd::register::Args),
    /// Upload a blob (sealed data) of a contract to the service (only its dataset's owner may).
    Put(cmd::put::Args),
    /// Download a blob of a contract from the service.
    Get(cmd::get::Args),
    /// Check a contract (TOML) and print its digest; --canonical-out writes the packed form.
    Contract(cmd::contract::Args),
    /// SQL analyses: check a query against its rule, or run it on local files.
    Query(cmd::query::Args),
    /// Download a contract's run receipts (a party's token): <run>.receipt.json and
    /// <run>.evidence.json each, for `verify receipt`.
    Receipts(cmd::receipts::Args),
    /// Verify evidence, or a run's receipt.
    Verify(cmd::verify::Args),
    /// TPM2_MakeCredential without a TPM (like tpm2_makecredential): encrypt a secret to an EK
    /// for an AK name; only the TPM holding both recovers it with tpm2_activatecredential.
    MakeCredential(cmd::make_credential::Args),
    /// On a Nitro parent (or beside vhost-device-vsock): forward an enclave's vsock
    /// connections to the key-release service, and nowhere else.
    VsockProxy(cmd::vsock_proxy::Args),
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

fn real_main() -> anyhow::Result<ExitCode> {
    let cli: Cli = match dcr_protocol::cli::parse_or_exit() {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cli.command {
        Cmd::Serve(a) => cmd::serve::run(a),
        Cmd::Keygen(a) => cmd::keygen::run(a),
        Cmd::Seal(a) => cmd::seal::run(a),
        Cmd::Open(a) => cmd::open::run(a),
        Cmd::Register(a) => cmd::register::run(a),
        Cmd::Put(a) => cmd::put::run(a),
        Cmd::Get(a) => cmd::get::run(a),
        Cmd::Contract(a) => cmd::contract::run(a),
        Cmd::Query(a) => cmd::query::run(a),
        Cmd::Receipts(a) => cmd::receipts::run(a),
        Cmd::Verify(a) => cmd::verify::run(a),
        Cmd::MakeCredential(a) => cmd::make_credential::run(a),
        Cmd::VsockProxy(a) => cmd::vsock_proxy::run(a),
    }
}
