//! `dcr-build bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use dcr_build::image;

// The subcommand's help text is the doc comment of `Cmd::Bench` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    #[arg(long, default_value_t = 10)]
    iterations: u32,
    #[arg(long, default_value = dcr_build::cargo::DEFAULT_GUEST_TARGET, env = "DCR_GUEST_TARGET")]
    guest_target: String,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let opts = image::BuildOptions {
        out: PathBuf::new(),
        guest_target: a.guest_target,
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        contract: None,
        nitro_signing_key: None,
    };
    let prepared = image::prepare(&a.recipe, &opts, None)?;
    let r = dcr_build::bench::run(&prepared, a.iterations, &std::env::temp_dir())?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("recipe            {}", prepared.pack.name);
    println!("iterations        {}", r.iterations);
    println!(
        "input bytes       {} ({:.2} MiB)",
        r.input_bytes,
        mib(r.input_bytes)
    );
    println!(
        "initrd.cpio       {} bytes ({:.2} MiB, uncompressed)",
        r.initrd_bytes,
        mib(r.initrd_bytes)
    );
    println!(
        "image.efi         {} bytes ({:.2} MiB)",
        r.uki_bytes,
        mib(r.uki_bytes)
    );
    println!(
        "pack+measure      {:.2} ms (median)",
        r.pack_measure.as_secs_f64() * 1e3
    );
    println!(
        "sha256sum inputs  {:.2} ms (median, incl. process start)",
        r.sha256sum.as_secs_f64() * 1e3
    );
    if let Some(o) = r.openssl {
        println!(
            "openssl dgst      {:.2} ms (median, incl. process start)",
            o.as_secs_f64() * 1e3
        );
    }
    println!(
        "sha2 in-process   {:.2} ms (median)",
        r.in_process.as_secs_f64() * 1e3
    );
    println!(
        "ratio             {:.2}x pack+measure / sha256sum (target <= 3x)",
        r.ratio()
    );
    Ok(ExitCode::SUCCESS)
}
