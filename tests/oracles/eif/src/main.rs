//! `eif-oracle describe EIF`: what aws-nitro-enclaves-image-format reads from an image (CRC
//! check, header, metadata, PCRs), as JSON.
//! `eif-oracle verify-signature EIF`: its PCR 0 signature checked with its certificate.
//! `eif-oracle build OUT KERNEL CMDLINE METADATA_JSON RAMDISK...`: the image its `EifBuilder`
//! writes from the same inputs (unsigned, SHA-384), and its PCRs, as JSON.

use std::path::Path;

use aws_nitro_enclaves_image_format::defs::EifIdentityInfo;
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::EifBuilder;
use sha2::{Digest, Sha384};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("describe") if args.len() == 3 => describe(&args[2]),
        Some("build") if args.len() >= 7 => build(&args[2..]),
        Some("verify-signature") if args.len() == 3 => verify_signature(&args[2]),
        _ => {
            eprintln!("usage: eif-oracle describe EIF | build OUT KERNEL CMDLINE METADATA_JSON RAMDISK...");
            std::process::exit(2);
        }
    }
}

fn describe(path: &str) {
    let mut r = match EifReader::from_eif(path.to_string()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("eif-oracle: {path}: {e}");
            std::process::exit(1);
        }
    };
    let h = r.get_header();
    let pcrs = r.get_measurements().unwrap_or_else(|e| {
        eprintln!("eif-oracle: {path}: measurements: {e}");
        std::process::exit(1);
    });
    let out = serde_json::json!({
        "crc_ok": r.check_crc(),
        "version": h.version,
        "flags": h.flags,
        "default_mem": h.default_mem,
        "default_cpus": h.default_cpus,
        "num_sections": h.num_sections,
        "measurements": pcrs,
        "metadata": r.get_metadata().map(|m| serde_json::to_value(m).unwrap()),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// The signature section's COSE_Sign1 verified with its certificate's key (and the
/// certificate valid now), as `nitro-cli describe-eif` does.
fn verify_signature(path: &str) {
    let mut c = aws_nitro_enclaves_image_format::utils::PcrSignatureChecker::from_eif(path)
        .unwrap_or_else(|e| {
            eprintln!("eif-oracle: {path}: {e}");
            std::process::exit(1);
        });
    if c.is_empty() {
        eprintln!("eif-oracle: {path}: not signed");
        std::process::exit(1);
    }
    match c.verify() {
        Ok(()) => println!("signature ok"),
        Err(e) => {
            eprintln!("eif-oracle: {path}: {e}");
            std::process::exit(1);
        }
    }
}

fn build(a: &[String]) {
    let (out, kernel, cmdline, metadata, ramdisks) = (&a[0], &a[1], &a[2], &a[3], &a[4..]);
    let info: EifIdentityInfo =
        serde_json::from_slice(&std::fs::read(metadata).expect("metadata")).expect("metadata JSON");
    let mut b = EifBuilder::new(
        Path::new(kernel),
        cmdline.clone(),
        None,
        Sha384::new(),
        0,
        info,
    );
    for r in ramdisks {
        b.add_ramdisk(Path::new(r));
    }
    let mut f = std::fs::File::create(out).expect("output");
    let pcrs = b.write_to(&mut f);
    println!("{}", serde_json::to_string_pretty(&pcrs).unwrap());
}
