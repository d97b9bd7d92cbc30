//! `dcr-build run --print-qemu`: the QEMU command line a SEV-SNP or TDX host needs to launch
//! exactly what measurements.json predicted.

use std::path::Path;

use dcr_protocol::measurements::{Measurements, SnpPrediction, TdxPrediction};

use super::{read, write, RunError};
use crate::image::{INITRD, UKI};
use crate::uki;

/// Confidential platforms `dcr-build run --platform … --print-qemu` prints a launch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    Snp,
    Tdx,
}

/// The QEMU command line a host with SEV-SNP or TDX needs to launch this build exactly as its
/// measurements.json assumes (vCPU type and count, kernel hashes, firmware). Writes the kernel
/// (`.linux` of the UKI) to `<out>/vmlinuz` for it. Returns the text to print.
pub fn print_qemu(out_dir: &Path, platform: Platform, memory_mib: u32) -> Result<String, RunError> {
    let mpath = out_dir.join(crate::image::MEASUREMENTS);
    let m = Measurements::from_json(&read(&mpath)?)
        .map_err(|e| RunError::Print(format!("{}: {e}", mpath.display())))?;
    let key = match platform {
        Platform::Snp => "snp",
        Platform::Tdx => "tdx",
    };
    enum Predicted<'a> {
        Snp(&'a SnpPrediction),
        Tdx(&'a TdxPrediction),
    }
    let predicted = match platform {
        Platform::Snp => m.measurements.snp.as_ref().map(Predicted::Snp),
        Platform::Tdx => m.measurements.tdx.as_ref().map(Predicted::Tdx),
    };
    let Some(predicted) = predicted else {
        return Err(RunError::Print(format!(
            "{}: no {key} prediction (the recipe's platforms lack {key})",
            mpath.display()
        )));
    };
    let uki_path = out_dir.join(UKI);
    let image = read(&uki_path)?;
    let kernel = uki::section(&image, ".linux")?
        .ok_or_else(|| RunError::Section(uki_path.clone(), ".linux"))?;
    let kpath = out_dir.join("vmlinuz");
    write(&kpath, kernel)?;
    let fw_input = m.inputs.get(&format!("firmware:{key}"));
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let common = format!(
        "-kernel {} -initrd {} -append {} -m {memory_mib}M -display none -serial stdio -no-reboot -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile=",
        quote(&kpath.display().to_string()),
        quote(&out_dir.join(INITRD).display().to_string()),
        quote(&m.cmdline)
    );
    let mut text = String::new();
    let fw_name = match platform {
        Platform::Snp => "OVMF.amdsev.fd",
        Platform::Tdx => "OVMF.fd",
    };
    text.push_str(&format!(
        "# firmware {fw_name}: {} (sha256 {}); give its path to -bios\n",
        fw_input.map_or("?", |i| i.source.as_str()),
        fw_input.map_or_else(|| "?".to_string(), |i| i.sha256.to_hex())
    ));
    // A hand-written measurements.json may pin the values without the shape they assume.
    let unknown = || "?".to_string();
    match predicted {
        Predicted::Snp(snp) => {
            let shape = snp.shape.as_ref();
            text.push_str(&format!(
                "# SEV-SNP launch digest {} (vmm {}, guest features {})\n",
                snp.launch_digest.to_hex(),
                shape.map_or_else(unknown, |s| s.vmm.clone()),
                shape.map_or_else(unknown, |s| s.guest_features.clone())
            ));
            text.push_str(&format!(
                "qemu-system-x86_64 -accel kvm -nodefaults -machine q35,confidential-guest-support=sev0,memory-backend=ram1 -cpu {} -smp {} -object memory-backend-memfd,id=ram1,size={memory_mib}M,share=true,prealloc=false -object sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on -bios {fw_name} {common}\n",
                shape.map_or_else(unknown, |s| s.vcpu_type.clone()),
                shape.map_or_else(unknown, |s| s.vcpus.to_string()),
            ));
        }
        Predicted::Tdx(tdx) => {
            let shape = tdx.shape.as_ref();
            text.push_str(&format!(
                "# TDX MRTD {} ({} page order; RTMRs: {})\n",
                tdx.mrtd.to_hex(),
                shape.map_or_else(unknown, |s| s.page_order.clone()),
                shape.map_or_else(unknown, |s| s.rtmrs.clone())
            ));
            text.push_str(&format!(
                "qemu-system-x86_64 -accel kvm -nodefaults -machine q35,kernel-irqchip=split,confidential-guest-support=tdx0 -object tdx-guest,id=tdx0 -cpu host -smp 2 -bios {fw_name} {common}\n"
            ));
        }
    }
    Ok(text)
}
