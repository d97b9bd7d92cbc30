//! `dcr-build rootfs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sha2::Digest;

// The subcommand's help text is the doc comment of `Cmd::Rootfs` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// An OCI image layout directory, or an archive holding one (`docker save`, Docker ≥ 25).
    #[arg(long, value_name = "PATH")]
    oci: PathBuf,
    /// The image manifest (or index) digest the image is pinned by: sha256:<hex>.
    #[arg(long, value_name = "DIGEST")]
    digest: String,
    /// Where to write the device image (EROFS, verity superblock, hash tree).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Print the summary as JSON instead of lines.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut src = dcr_build::oci::source::Source::open(&a.oci)
        .with_context(|| format!("--oci {}", a.oci.display()))?;
    let packed = dcr_build::rootfs::build(&mut src, &a.digest)
        .with_context(|| format!("--oci {} --digest {}", a.oci.display(), a.digest))?;
    let tmp = a.out.with_extension("partial");
    std::fs::write(&tmp, &packed.device)
        .and_then(|()| std::fs::rename(&tmp, &a.out))
        .with_context(|| format!("writing {}", a.out.display()))?;
    let s = &packed.summary;
    // What a contract names for this image as an oci workload: the SHA-256 of its run
    // document (none when the image has nothing to run).
    let run_sha256 = packed
        .run_spec()
        .ok()
        .map(|r| hex::encode(sha2::Sha256::digest(r.canonical_json())));
    if a.json {
        let mut v = serde_json::to_value(s)?;
        v["run_document_sha256"] = serde_json::json!(run_sha256);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "rootfs {}: manifest {} config {} layers {} ({} bytes uncompressed)",
        a.out.display(),
        s.manifest,
        s.config,
        s.layers.len(),
        s.layer_bytes
    );
    println!(
        "erofs {} bytes, {} inodes; verity hash area {} bytes",
        s.data_bytes, s.inodes, s.hash_bytes
    );
    println!(
        "verity root hash {} salt {} uuid {}",
        s.root_hash, s.salt, s.uuid
    );
    println!("table {}", s.table);
    match &run_sha256 {
        Some(h) => println!("contract: kind = \"oci\", sha256 = \"{h}\" (the run document's)"),
        None => {
            println!("note: the image has no Entrypoint and no Cmd: it cannot be an oci workload")
        }
    }
    let n = &s.notes;
    for (what, list) in [
        ("set-uid/set-gid bits stripped", &n.setid_stripped),
        ("device nodes, FIFOs, sockets left out", &n.specials_dropped),
        ("extended attributes left out", &n.xattrs_dropped),
    ] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(8).map(String::as_str).collect();
            let more = if list.len() > 8 { ", …" } else { "" };
            println!("note: {what} ({}): {}{more}", list.len(), shown.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
