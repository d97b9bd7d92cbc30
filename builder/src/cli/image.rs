//! `dcr-build image`.

use std::path::PathBuf;
use std::process::ExitCode;

use dcr_build::image;

// The subcommand's help text is the doc comment of `Cmd::Image` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    /// Output directory [default: out/<recipe name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rust target for guest-init and crate workloads.
    #[arg(long, default_value = dcr_build::cargo::DEFAULT_GUEST_TARGET, env = "DCR_GUEST_TARGET")]
    guest_target: String,
    /// Pack this contract (TOML) instead of the recipe's; its workloads must match the
    /// built ones by name and SHA-256.
    #[arg(long, value_name = "PATH")]
    contract: Option<PathBuf>,
    /// The P-384 private key (PKCS#8 PEM) of the recipe's `[nitro] signing_certificate`.
    #[arg(long, value_name = "PATH", env = "DCR_NITRO_SIGNING_KEY")]
    nitro_signing_key: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let out = match a.out {
        Some(o) => o,
        None => {
            let r = dcr_build::recipe::load(&a.recipe)?;
            PathBuf::from("out").join(&r.recipe.name)
        }
    };
    let opts = image::BuildOptions {
        out: out.clone(),
        guest_target: a.guest_target,
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        contract: a.contract,
        nitro_signing_key: a.nitro_signing_key,
    };
    let m = image::build(&a.recipe, &opts)?;
    println!(
        "built {} {} into {}",
        m.recipe,
        m.recipe_version,
        out.display()
    );
    println!("  kernel     {}", m.kernel_release);
    println!("  cmdline    {}", m.cmdline);
    println!("  contract   sha256:{}", m.contract_digest);
    for (name, a) in &m.artifacts {
        println!("  {name:<12} sha256:{} ({} bytes)", a.sha256, a.size);
    }
    println!(
        "  reference values: {}",
        out.join(image::MEASUREMENTS).display()
    );
    Ok(ExitCode::SUCCESS)
}
