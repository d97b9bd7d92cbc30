//! Packing (pure, bytes in, bytes out): the initramfs (cpio newc), the UKI (systemd-stub +
//! sections) and the GPT disk image that carries the UKI. This is what the benchmark times.

use crate::disk::{self, Disk};
use crate::initrd::{InitrdError, Node, Tree};
use crate::kmod::PackedModule;
use crate::uki;

use super::plan::Prepared;
use super::{ImageError, CONTRACT_PATH, INIT_PATH, WORKLOAD_DIR};

/// Everything [`pack`] needs, already verified.
#[derive(Debug, Clone)]
pub struct PackInputs {
    pub name: String,
    pub version: String,
    pub mtime: u32,
    pub kernel: Vec<u8>,
    pub kernel_release: String,
    pub modules: Vec<PackedModule>,
    pub stub: Vec<u8>,
    pub cmdline: String,
    pub contract: Vec<u8>,
    pub guest_init: Vec<u8>,
    /// The WebAssembly runner (attest/wasm-runner), when a workload is `kind = "wasm"`.
    pub wasm_runner: Option<Vec<u8>>,
    pub workloads: Vec<(String, Vec<u8>)>,
    /// The Enclave Image File's settings, when one is built.
    pub nitro: Option<crate::recipe::NitroSpec>,
    /// Its signer, when the recipe names a signing certificate.
    pub nitro_signer: Option<crate::eif::Signer>,
    /// The EIF's own kernel and its release (`[nitro.kernel]`), when not `kernel`.
    pub nitro_kernel: Option<(Vec<u8>, String)>,
}

/// The boot artifacts.
#[derive(Debug, Clone)]
pub struct Packed {
    pub initrd: Vec<u8>,
    pub uki: Vec<u8>,
    /// The Enclave Image File and its predicted PCRs, when the recipe targets Nitro.
    pub eif: Option<(Vec<u8>, dcr_measure::nitro::NitroPcrs)>,
}

/// The `.osrel` section (os-release(5)).
pub fn osrel(name: &str, version: &str) -> String {
    format!(
        "NAME=\"dcr\"\nID=dcr\nPRETTY_NAME=\"dcr image {name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n"
    )
}

/// The initramfs file tree: the boot part and the application part in one archive.
pub fn initrd_tree(i: &PackInputs) -> Result<Tree, InitrdError> {
    let mut t = boot_tree(i, true)?;
    add_application(i, &mut t)?;
    Ok(t)
}

/// The application part: the contract and the workloads.
fn add_application(i: &PackInputs, t: &mut Tree) -> Result<(), InitrdError> {
    t.add_file(CONTRACT_PATH, i.contract.clone(), 0o644)?;
    for (name, bytes) in &i.workloads {
        t.add_file(&format!("{WORKLOAD_DIR}/{name}"), bytes.clone(), 0o755)?;
    }
    if let Some(runner) = &i.wasm_runner {
        let path = dcr_protocol::wasm::RUNNER_PATH.trim_start_matches('/');
        t.add_file(path, runner.clone(), 0o755)?;
    }
    Ok(())
}

/// The two ramdisks of an EIF: the boot ramdisk (PID 1, mount points, console node, kernel
/// modules), which PCR 1 covers with the kernel and command line, and the application
/// ramdisk (contract, workloads), which PCR 2 covers. The kernel unpacks both archives into
/// one root.
///
/// With `[nitro.kernel]` the boot ramdisk has no modules: they were built for the other
/// kernel's release, and the EIF's kernel has what it needs built in.
pub fn nitro_ramdisks(i: &PackInputs) -> Result<(Vec<u8>, Vec<u8>), InitrdError> {
    let boot = boot_tree(i, i.nitro_kernel.is_none())?.to_cpio(i.mtime);
    let mut app = Tree::new();
    add_application(i, &mut app)?;
    Ok((boot, app.to_cpio(i.mtime)))
}

/// The boot part of the initramfs (with the kernel modules or without).
fn boot_tree(i: &PackInputs, modules: bool) -> Result<Tree, InitrdError> {
    let mut t = Tree::new();
    t.add_file(INIT_PATH, i.guest_init.clone(), 0o755)?;
    // Mount points and the console node the kernel opens for PID 1's stdio.
    for d in ["dev", "proc", "sys", "tmp"] {
        t.add_dir(d)?;
    }
    t.add(
        "dev/console",
        Node::CharDev {
            perm: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    let moddir = format!("lib/modules/{}", i.kernel_release);
    if modules && !i.modules.is_empty() {
        for m in &i.modules {
            t.add_file(&format!("{moddir}/{}", m.path), m.bytes.clone(), 0o644)?;
        }
        t.add_file(
            &format!("{moddir}/modules.dep"),
            crate::kmod::modules_dep(&i.modules).into_bytes(),
            0o644,
        )?;
    }
    Ok(t)
}

/// The EIF of a build and its PCRs (computed from the same inputs, not read back).
pub fn nitro_image(
    i: &PackInputs,
    spec: &crate::recipe::NitroSpec,
) -> Result<(Vec<u8>, dcr_measure::nitro::NitroPcrs), ImageError> {
    let (boot, app) = nitro_ramdisks(i)?;
    let cmdline = spec.cmdline.as_deref().unwrap_or(&i.cmdline);
    let (kernel, kernel_release) = match &i.nitro_kernel {
        Some((k, release)) => (k, release),
        None => (&i.kernel, &i.kernel_release),
    };
    let metadata = crate::eif::Metadata {
        image_name: i.name.clone(),
        image_version: i.version.clone(),
        build: crate::eif::BuildInfo {
            build_time: dcr_protocol::time::format_rfc3339(u64::from(i.mtime)),
            build_tool: "dcr-build".into(),
            build_tool_version: env!("CARGO_PKG_VERSION").into(),
            operating_system: "Linux".into(),
            kernel_version: kernel_release.clone(),
        },
        docker_info: serde_json::json!({}),
        custom: serde_json::Value::Null,
    };
    let eif = crate::eif::write(&crate::eif::EifInputs {
        kernel,
        cmdline,
        metadata: &metadata,
        ramdisks: vec![&boot, &app],
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        arm64: false,
        signer: i.nitro_signer.as_ref(),
    })
    .map_err(|e| ImageError::Input {
        input: "image.eif".into(),
        reason: e.to_string(),
    })?;
    let pcrs = dcr_measure::nitro::pcrs(
        kernel,
        cmdline.as_bytes(),
        &[&boot, &app],
        i.nitro_signer
            .as_ref()
            .map(|s| s.certificate_der.as_slice()),
    );
    Ok((eif, pcrs))
}

/// Pack the initramfs and the UKI. Pure and deterministic.
pub fn pack(i: &PackInputs) -> Result<Packed, ImageError> {
    let initrd = initrd_tree(i)?.to_cpio(i.mtime);
    let osrel = osrel(&i.name, &i.version);
    let uname = i.kernel_release.clone();
    let sections: Vec<(&str, &[u8])> = vec![
        (".osrel", osrel.as_bytes()),
        (".cmdline", i.cmdline.as_bytes()),
        (".uname", uname.as_bytes()),
        (".initrd", &initrd),
        (".linux", &i.kernel),
    ];
    let uki = uki::assemble(&i.stub, &sections)?;
    let eif = match &i.nitro {
        Some(spec) => Some(nitro_image(i, spec)?),
        None => None,
    };
    Ok(Packed { initrd, uki, eif })
}

/// Build the disk image of a packed build (pure): the raw disk and its VHD footer.
pub fn disk_image(p: &Prepared, packed: &Packed) -> Result<Option<(Disk, [u8; 512])>, ImageError> {
    let Some(spec) = &p.disk else {
        return Ok(None);
    };
    let seed = disk::seed(&p.pack.name, &p.pack.version, &packed.uki);
    let disk = disk::build(&disk::DiskInput {
        uki: &packed.uki,
        seed,
        epoch: u64::from(p.pack.mtime),
        size_mib: spec.size_mib,
        roots: p
            .roots
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect(),
    })
    .map_err(|e| ImageError::Input {
        input: "disk".into(),
        reason: e.to_string(),
    })?;
    let footer = disk::vhd_footer(disk.raw.len() as u64, u64::from(p.pack.mtime), &seed);
    Ok(Some((disk, footer)))
}
