//! `dcr-build image`: recipe → initramfs + UKI + measurements.json.
//!
//! [`pack`] is pure (bytes in, bytes out) and is what the benchmark times; [`build`] gathers
//! and verifies the inputs, builds the guest binaries, calls [`pack`] and writes the output
//! directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dcr_protocol::measurements::{
    self, Artifact, AzurePrediction, Input, KernelHashes, Measurements, PcrIndex, Predictions,
    Sha256, Sha384, SnpPrediction, TdxPrediction, TpmPrediction, SCHEMA_VERSION,
};

use crate::bzimage::{self, BzImageError};
use crate::cargo::{self, CargoError};
use crate::fetch::{self, sha256, FetchError};
use crate::initrd::{InitrdError, Node, Tree};
use crate::kmod::{KmodError, ModuleTree, PackedModule};
use crate::recipe::{self, FileSpec, LoadedRecipe, Platform, RecipeError, SnpSpec, TdxSpec};
use crate::uki::{self, UkiError};

/// File names in the output directory.
pub const INITRD: &str = "initrd.cpio";
pub const UKI: &str = "image.efi";
pub const MEASUREMENTS: &str = "measurements.json";
/// The GPT disk image (ESP with the UKI), raw and as a fixed VHD.
pub const DISK_RAW: &str = "disk.raw";
pub const DISK_VHD: &str = "disk.vhd";

/// Paths inside the initramfs.
/// The contract in its canonical JSON form (docs/contract.md); its SHA-256 is the contract
/// digest.
pub const CONTRACT_PATH: &str = "etc/dcr/contract.json";
pub const INIT_PATH: &str = "init";
pub const WORKLOAD_DIR: &str = "workloads";

/// Errors of an image build.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Cargo(#[from] CargoError),
    #[error("kernel modules: {0}")]
    Kmod(#[from] KmodError),
    #[error("initramfs: {0}")]
    Initrd(#[from] InitrdError),
    #[error("UKI: {0}")]
    Uki(#[from] UkiError),
    #[error("input kernel: {0}")]
    Kernel(#[from] BzImageError),
    #[error("output directory {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SOURCE_DATE_EPOCH={0:?} is not a timestamp that fits a cpio mtime")]
    Epoch(String),
    #[error("measurements.json: {0}")]
    Reference(#[from] dcr_protocol::measurements::ReferenceError),
    #[error("input {input}: {reason}")]
    Input { input: String, reason: String },
    #[error("contract {path}: {source}")]
    Contract {
        path: PathBuf,
        #[source]
        source: dcr_protocol::contract::ContractError,
    },
    #[error("contract {path}: {reason}")]
    ContractWorkloads { path: PathBuf, reason: String },
}

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
    pub workloads: Vec<(String, Vec<u8>)>,
}

/// The two boot artifacts.
#[derive(Debug, Clone)]
pub struct Packed {
    pub initrd: Vec<u8>,
    pub uki: Vec<u8>,
}

/// The `.osrel` section (os-release(5)).
pub fn osrel(name: &str, version: &str) -> String {
    format!(
        "NAME=\"dcr\"\nID=dcr\nPRETTY_NAME=\"dcr image {name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n"
    )
}

/// The initramfs file tree.
pub fn initrd_tree(i: &PackInputs) -> Result<Tree, InitrdError> {
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
    t.add_file(CONTRACT_PATH, i.contract.clone(), 0o644)?;
    let moddir = format!("lib/modules/{}", i.kernel_release);
    if !i.modules.is_empty() {
        for m in &i.modules {
            t.add_file(&format!("{moddir}/{}", m.path), m.bytes.clone(), 0o644)?;
        }
        t.add_file(
            &format!("{moddir}/modules.dep"),
            crate::kmod::modules_dep(&i.modules).into_bytes(),
            0o644,
        )?;
    }
    for (name, bytes) in &i.workloads {
        t.add_file(&format!("{WORKLOAD_DIR}/{name}"), bytes.clone(), 0o755)?;
    }
    Ok(t)
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
    Ok(Packed { initrd, uki })
}

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub guest_target: String,
    /// `SOURCE_DATE_EPOCH` from the environment, if set.
    pub source_date_epoch: Option<String>,
    /// A contract to pack instead of the recipe's (`dcr-build image --contract`).
    pub contract: Option<PathBuf>,
}

fn input(source: String, bytes: &[u8]) -> Input {
    Input {
        source,
        sha256: sha256(bytes),
        size: bytes.len() as u64,
    }
}

fn out_err(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Make sure the output directory exists and is writable, before any work is done.
fn prepare_out(out: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(out).map_err(out_err(out))?;
    let probe = out.join(".dcr-write-test");
    std::fs::write(&probe, b"").map_err(out_err(out))?;
    std::fs::remove_file(&probe).map_err(out_err(out))?;
    Ok(())
}

/// Write a file atomically (temporary name, then rename).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(out_err(dir))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(out_err(dir))?;
    Ok(())
}

/// Write `bytes ‖ tail` atomically, leaving holes for all-zero 64 KiB blocks (a disk image
/// is mostly empty FAT clusters).
fn write_sparse(dir: &Path, name: &str, bytes: &[u8], tail: &[u8]) -> Result<(), ImageError> {
    use std::io::{Seek, SeekFrom, Write};
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |r: std::io::Result<()>| r.map_err(out_err(dir));
    let mut f = std::fs::File::create(&tmp).map_err(out_err(dir))?;
    for block in bytes.chunks(64 << 10) {
        if block.iter().all(|b| *b == 0) {
            io(f.seek(SeekFrom::Current(block.len() as i64)).map(|_| ()))?;
        } else {
            io(f.write_all(block))?;
        }
    }
    io(f.write_all(tail))?;
    io(f.set_len((bytes.len() + tail.len()) as u64))?;
    io(f.sync_all())?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).map_err(out_err(dir))?;
    Ok(())
}

/// Record a fetched package among the inputs (`deb:<package>`).
fn record_deb(inputs: &mut BTreeMap<String, Input>, pin: &recipe::DebPin, pkg: &fetch::DebPackage) {
    inputs.insert(
        format!("deb:{}", pin.package),
        Input {
            source: format!("deb:{}", fetch::pin_spec(pin)),
            sha256: pkg.sha256,
            size: pkg.bytes.len() as u64,
        },
    );
}

/// Gather the kernel, its module tree and the stub.
fn kernel_inputs(
    r: &LoadedRecipe,
    inputs: &mut BTreeMap<String, Input>,
) -> Result<(Vec<u8>, ModuleTree), ImageError> {
    let k = &r.recipe.kernel;
    if let Some(d) = &k.deb {
        let pin = d.pin();
        let pkg = fetch::deb_package("kernel", &pin)?;
        record_deb(inputs, &pin, &pkg);
        eprintln!(
            "+ extract {} and lib/modules from {}",
            d.vmlinuz,
            pkg.path.display()
        );
        let mut files = fetch::extract("kernel", &pkg, |p| {
            p == d.vmlinuz || (p.starts_with("lib/modules/") || p.starts_with("usr/lib/modules/"))
        })?;
        let kernel = files
            .remove(&d.vmlinuz)
            .ok_or_else(|| FetchError::MissingInDeb {
                input: "kernel".into(),
                spec: fetch::pin_spec(&pin),
                path: d.vmlinuz.clone(),
            })?;
        fetch::check("kernel", &kernel, k.sha256.0)?;
        let release = bzimage::kernel_release(&kernel)?;
        inputs.insert(
            "kernel".into(),
            input(
                format!("deb:{}:{}", fetch::pin_spec(&pin), d.vmlinuz),
                &kernel,
            ),
        );
        let mut tree = ModuleTree {
            release: release.clone(),
            ..Default::default()
        };
        for prefix in [
            format!("lib/modules/{release}/"),
            format!("usr/lib/modules/{release}/"),
        ] {
            for (p, b) in files.iter().filter(|(p, _)| p.starts_with(&prefix)) {
                let rel = &p[prefix.len()..];
                if rel == "modules.builtin" {
                    tree.builtin = String::from_utf8_lossy(b).into_owned();
                } else if rel.starts_with("kernel/") {
                    tree.files.insert(rel.to_string(), b.clone());
                }
            }
        }
        Ok((kernel, tree))
    } else if let Some(l) = &k.local {
        let path = r.resolve(&l.vmlinuz);
        let kernel = fetch::read_local("kernel", &path)?;
        fetch::check("kernel", &kernel, k.sha256.0)?;
        let release = bzimage::kernel_release(&kernel)?;
        inputs.insert(
            "kernel".into(),
            input(format!("file:{}", l.vmlinuz.display()), &kernel),
        );
        let mut tree = ModuleTree {
            release,
            ..Default::default()
        };
        if let Some(md) = &l.modules_dir {
            let dir = r.resolve(md);
            tree.builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
            let mut stack = vec![dir.join("kernel")];
            while let Some(d) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if let Ok(rel) = p.strip_prefix(&dir) {
                        let bytes = fetch::read_local("kernel modules", &p)?;
                        tree.files.insert(rel.to_string_lossy().into_owned(), bytes);
                    }
                }
            }
        } else if !k.modules.is_empty() {
            return Err(ImageError::Input {
                input: "kernel.modules".into(),
                reason: "modules requested but kernel.local.modules_dir is not set".into(),
            });
        }
        Ok((kernel, tree))
    } else {
        unreachable!("recipe validation requires kernel.deb or kernel.local")
    }
}

/// Get a pinned single file (from a package or local) and check its SHA-256; records it (and
/// its package) in `inputs` under `name`.
fn file_input(
    r: &LoadedRecipe,
    spec: &FileSpec,
    name: &str,
    inputs: &mut BTreeMap<String, Input>,
) -> Result<Vec<u8>, ImageError> {
    let (bytes, source) = if let Some(d) = &spec.deb {
        let pin = d.pin();
        let pkg = fetch::deb_package(name, &pin)?;
        record_deb(inputs, &pin, &pkg);
        let mut files = fetch::extract(name, &pkg, |p| p == d.path)?;
        let bytes = files
            .remove(&d.path)
            .ok_or_else(|| FetchError::MissingInDeb {
                input: name.into(),
                spec: fetch::pin_spec(&pin),
                path: d.path.clone(),
            })?;
        (bytes, format!("deb:{}:{}", fetch::pin_spec(&pin), d.path))
    } else if let Some(p) = &spec.local {
        (
            fetch::read_local(name, &r.resolve(p))?,
            format!("file:{}", p.display()),
        )
    } else {
        unreachable!("recipe validation requires deb or local")
    };
    fetch::check(name, &bytes, spec.sha256.0)?;
    inputs.insert(name.into(), input(source, &bytes));
    Ok(bytes)
}

/// Verified inputs of one build, ready for [`pack`].
#[derive(Debug, Clone)]
pub struct Prepared {
    pub pack: PackInputs,
    /// Every input by stable name (see [`Measurements::inputs`]).
    pub inputs: BTreeMap<String, Input>,
    pub guest_target: String,
    /// Platforms to predict measurements for.
    pub platforms: Vec<Platform>,
    /// SEV-SNP shape and firmware bytes, when predicted.
    pub snp: Option<(SnpSpec, Vec<u8>)>,
    /// TDX shape and firmware bytes, when predicted.
    pub tdx: Option<(TdxSpec, Vec<u8>)>,
    /// The disk image's settings, when one is built (`[disk]`, or `azure` in platforms).
    pub disk: Option<recipe::DiskSpec>,
}

/// Load the recipe, get and verify every input, build the guest binaries. `out`, if given,
/// is created and checked for writability before any expensive step.
pub fn prepare(
    recipe_path: &Path,
    opts: &BuildOptions,
    out: Option<&Path>,
) -> Result<Prepared, ImageError> {
    let r = recipe::load(recipe_path)?;
    let rec = &r.recipe;
    let mtime = match &opts.source_date_epoch {
        Some(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| ImageError::Epoch(s.clone()))?,
        None => rec.source_date_epoch as u32,
    };
    // Cheap checks first: local files and the output directory.
    let contract_path = match &opts.contract {
        Some(p) => p.clone(),
        None => r.resolve(&rec.contract),
    };
    let contract_text = fetch::read_local_max("contract", &contract_path, fetch::MAX_CONTRACT)?;
    let parsed = std::str::from_utf8(&contract_text)
        .map_err(|_| dcr_protocol::contract::ContractError::Parse("not UTF-8".into()))
        .and_then(dcr_protocol::contract::Contract::from_toml)
        .map_err(|source| ImageError::Contract {
            path: contract_path.clone(),
            source,
        })?;
    let contract = parsed.canonical_json();
    let mut local_workloads = Vec::new();
    for w in &rec.workloads {
        if let (Some(file), Some(sha)) = (&w.file, &w.sha256) {
            let input_name = format!("workload:{}", w.name);
            let bytes =
                fetch::read_local(&format!("{input_name} (workloads.file)"), &r.resolve(file))?;
            fetch::check(&input_name, &bytes, sha.0)?;
            local_workloads.push((w.name.clone(), bytes, format!("file:{}", file.display())));
        }
    }
    if let Some(out) = out {
        prepare_out(out)?;
    }

    let mut inputs: BTreeMap<String, Input> = BTreeMap::new();
    let recipe_bytes = fetch::read_local_max("recipe", &r.path, fetch::MAX_CONTRACT)?;
    inputs.insert(
        "recipe".into(),
        input("file:image.toml".into(), &recipe_bytes),
    );
    let contract_source = match &opts.contract {
        Some(p) => format!("file:{} (canonical JSON)", p.display()),
        None => format!("file:{} (canonical JSON)", rec.contract.display()),
    };
    inputs.insert("contract".into(), input(contract_source, &contract));

    let (kernel, tree) = kernel_inputs(&r, &mut inputs)?;
    let mut wanted = rec.kernel.modules.clone();
    if rec.platforms.contains(&Platform::Azure) {
        for m in recipe::AZURE_MODULES {
            if !wanted.iter().any(|w| w.replace('-', "_") == m) {
                wanted.push(m.to_string());
            }
        }
    }
    let resolution = tree.resolve(&wanted)?;
    for b in &resolution.builtin {
        eprintln!(
            "note: module {b} is built into {}; nothing to pack",
            tree.release
        );
    }
    for m in &resolution.modules {
        inputs.insert(
            format!("module:{}", m.name),
            Input {
                source: format!("kernel:lib/modules/{}/{}", tree.release, m.source_path),
                sha256: sha256(&m.bytes),
                size: m.bytes.len() as u64,
            },
        );
    }
    let stub = file_input(&r, &rec.stub, "stub", &mut inputs)?;
    let snp = match &rec.measure.snp {
        Some(spec) if rec.platforms.contains(&Platform::Snp) => Some((
            spec.clone(),
            file_input(&r, &spec.firmware, "firmware:snp", &mut inputs)?,
        )),
        _ => None,
    };
    let tdx = match &rec.measure.tdx {
        Some(spec) if rec.platforms.contains(&Platform::Tdx) => Some((
            spec.clone(),
            file_input(&r, &spec.firmware, "firmware:tdx", &mut inputs)?,
        )),
        _ => None,
    };

    // Guest binaries from source. The recipe's own workspace; a recipe outside any workspace
    // (e.g. a test's temporary copy with only file workloads) builds guest-init from the
    // current directory's.
    let workspace = match cargo::workspace_root(&r.dir) {
        Ok(w) => w,
        Err(e) => {
            let cwd = std::env::current_dir().map_err(out_err(&r.dir))?;
            cargo::workspace_root(&cwd).map_err(|_| e)?
        }
    };
    let mut packages = vec!["guest-init".to_string()];
    let mut crate_workloads = Vec::new();
    for w in &rec.workloads {
        if let Some(dir) = &w.krate {
            let pkg = cargo::package_name(&r.resolve(dir))?;
            crate_workloads.push((w.name.clone(), pkg.clone(), dir.clone()));
            packages.push(pkg);
        }
    }
    let mut built = cargo::build(&workspace, &packages, &opts.guest_target)?;
    let guest_init = built.remove("guest-init").unwrap_or_default();
    inputs.insert(
        "guest-init".into(),
        input("crate:guest-init".into(), &guest_init),
    );
    let mut workloads = Vec::new();
    for w in &rec.workloads {
        if let Some((_, pkg, dir)) = crate_workloads.iter().find(|(n, _, _)| *n == w.name) {
            let bytes = built.get(pkg).cloned().unwrap_or_default();
            inputs.insert(
                format!("workload:{}", w.name),
                input(format!("crate:{}", dir.display()), &bytes),
            );
            workloads.push((w.name.clone(), bytes));
        } else if let Some((name, bytes, source)) =
            local_workloads.iter().find(|(n, _, _)| *n == w.name)
        {
            inputs.insert(format!("workload:{name}"), input(source.clone(), bytes));
            workloads.push((name.clone(), bytes.clone()));
        }
    }

    check_contract_workloads(&parsed, &workloads).map_err(|reason| {
        ImageError::ContractWorkloads {
            path: contract_path.clone(),
            reason,
        }
    })?;
    if rec.platforms.contains(&Platform::Azure)
        && matches!(
            parsed.network,
            dcr_protocol::contract::Network::Static { .. }
        )
    {
        eprintln!(
            "note: {}: network is static; on Azure the address comes from DHCP ([network] mode = \"dhcp\", docs/azure.md)",
            contract_path.display()
        );
    }

    Ok(Prepared {
        pack: PackInputs {
            name: rec.name.clone(),
            version: rec.version.clone(),
            mtime,
            kernel,
            kernel_release: tree.release.clone(),
            modules: resolution.modules,
            stub,
            cmdline: rec.cmdline.clone(),
            contract,
            guest_init,
            workloads,
        },
        inputs,
        guest_target: opts.guest_target.clone(),
        platforms: rec.platforms.clone(),
        snp,
        tdx,
        disk: match &rec.disk {
            Some(d) => Some(d.clone()),
            None if rec.platforms.contains(&Platform::Azure) => Some(recipe::DiskSpec::default()),
            None => None,
        },
    })
}

/// The contract names exactly the recipe's workloads, each with the SHA-256 of the built bytes.
fn check_contract_workloads(
    c: &dcr_protocol::contract::Contract,
    built: &[(String, Vec<u8>)],
) -> Result<(), String> {
    for (i, w) in c.workloads.iter().enumerate() {
        let Some((_, bytes)) = built.iter().find(|(n, _)| *n == w.name) else {
            return Err(format!(
                "workloads[{i}] {:?} is not a workload of the recipe",
                w.name
            ));
        };
        let got = sha256(bytes).to_hex();
        if got != w.sha256 {
            return Err(format!(
                "workloads[{i}].sha256 is {} but the built workload {} is {got}",
                w.sha256, w.name
            ));
        }
    }
    for (n, _) in built {
        if !c.workloads.iter().any(|w| w.name == *n) {
            return Err(format!("the recipe's workload {n} is not in the contract"));
        }
    }
    Ok(())
}

fn measure_err(input: &str) -> impl Fn(String) -> ImageError + '_ {
    move |reason| ImageError::Input {
        input: input.to_string(),
        reason,
    }
}

/// SEV-SNP launch digest of QEMU direct boot of this build with kernel hashes.
fn snp_prediction(
    p: &Prepared,
    initrd: &[u8],
    spec: &SnpSpec,
    fw: &[u8],
) -> Result<SnpPrediction, ImageError> {
    use dcr_measure::ovmf::Ovmf;
    use dcr_measure::snp::{self, CpuType, SevHashes, SnpShape, VmmType};
    let err = measure_err("firmware:snp");
    let ovmf = Ovmf::parse(fw).map_err(|e| err(e.to_string()))?;
    let cpu = CpuType::from_name(&spec.vcpu_type).ok_or_else(|| err("unknown vCPU type".into()))?;
    let vmm = match spec.vmm.as_str() {
        "ec2" => VmmType::Ec2,
        "gce" => VmmType::Gce,
        _ => VmmType::Qemu,
    };
    let shape = SnpShape {
        vcpus: spec.vcpus,
        vcpu_sig: cpu.sig(),
        guest_features: spec.guest_features,
        vmm,
    };
    let hashes = SevHashes::new(&p.pack.kernel, Some(initrd), Some(&p.pack.cmdline));
    let launch = snp::snp_launch_digest(&ovmf, None, Some(&hashes), &shape)
        .map_err(|e| err(e.to_string()))?;
    Ok(SnpPrediction {
        shape: Some(measurements::SnpShape {
            boot: "QEMU direct boot: -kernel (.linux of image.efi) -initrd initrd.cpio -append cmdline, sev-snp-guest kernel-hashes=on".into(),
            vcpus: spec.vcpus,
            vcpu_type: spec.vcpu_type.clone(),
            vcpu_sig: format!("{:#x}", cpu.sig()),
            guest_features: format!("{:#x}", spec.guest_features),
            vmm: spec.vmm.clone(),
            firmware_sha256: sha256(fw),
        }),
        launch_digest: Sha384(
            launch
                .digest
                .as_slice()
                .try_into()
                .map_err(|_| err("an SNP launch digest is 48 bytes".into()))?,
        ),
        kernel_hashes: Some(KernelHashes {
            kernel: Sha256(hashes.kernel),
            initrd: Sha256(hashes.initrd),
            cmdline: Sha256(hashes.cmdline),
        }),
        events: launch.events,
    })
}

/// TDX MRTD of the pinned TDVF firmware (RTMRs are not predicted yet).
fn tdx_prediction(spec: &TdxSpec, fw: &[u8]) -> Result<TdxPrediction, ImageError> {
    use dcr_measure::ovmf::Ovmf;
    use dcr_measure::tdx::{self, PageOrder};
    let err = measure_err("firmware:tdx");
    let ovmf = Ovmf::parse(fw).map_err(|e| err(e.to_string()))?;
    let order = if spec.page_order == "two-pass" {
        PageOrder::TwoPass
    } else {
        PageOrder::SinglePass
    };
    let (mrtd, sections) = tdx::mrtd(&ovmf, order).map_err(|e| err(e.to_string()))?;
    Ok(TdxPrediction {
        shape: Some(measurements::TdxShape {
            page_order: spec.page_order.clone(),
            firmware_sha256: sha256(fw),
            rtmrs: "not predicted yet (they depend on the VMM's ACPI tables and the TD HOB)".into(),
        }),
        mrtd: Sha384(mrtd),
        sections,
    })
}

/// The vTPM PCRs required of an Azure confidential VM: PCR 4 (the firmware's measurement of
/// the boot application, the UKI, and of the kernel systemd-stub loads: the root of the chain;
/// without it an OS the attacker controls could replay the others), PCR 9 (command line and
/// initrd, by the kernel's EFI stub), PCR 11 (the UKI sections, by systemd-stub) and PCR 23
/// (contract and workloads, by guest-init). PCR 4 is predicted with OVMF's boot-path events;
/// that Hyper-V UEFI logs the same ones is not confirmed on a real Azure VM (docs/azure.md):
/// if it does not, release fails closed.
pub const AZURE_PCRS: [u32; 4] = [4, 9, 11, 23];

fn azure_prediction(pcrs: &[dcr_measure::tpm::Pcr]) -> AzurePrediction {
    AzurePrediction {
        shape: Some(measurements::AzureShape {
            boot: "Azure confidential VM (SEV-SNP DCasv5/ECasv5 or TDX DCesv5/ECesv5, paravisor vTPM) booting disk.vhd: \\EFI\\BOOT\\BOOTX64.EFI = image.efi".into(),
            bank: "sha256".into(),
            hardware: "the SNP MEASUREMENT / TDX MRTD cover Microsoft's paravisor and firmware, not this image: checked for genuineness (VCEK / DCAP, VMPL 0, HCL binding of the vTPM key), not pinned".into(),
            pcr4: "predicted with OVMF's boot-path events (EV_EFI_ACTION 'Calling EFI Application from Boot Option', separator, the Authenticode digests of the UKI and of the kernel it loads); not yet confirmed on Hyper-V UEFI: a different event there fails closed".into(),
        }),
        pcrs: pcr_map(pcrs.iter().filter(|x| AZURE_PCRS.contains(&x.index))),
    }
}

/// PCR values by index.
fn pcr_map<'a>(pcrs: impl Iterator<Item = &'a dcr_measure::tpm::Pcr>) -> measurements::Pcrs {
    pcrs.map(|x| {
        (
            PcrIndex::new(x.index).expect("the predicted PCRs are 4, 9, 11, 23"),
            Sha256(x.value),
        )
    })
    .collect()
}

/// The SHA-256 PCRs of an OVMF + systemd-stub boot of the UKI, plus PCR 23.
fn tpm_pcrs(p: &Prepared, packed: &Packed) -> Result<Vec<dcr_measure::tpm::Pcr>, ImageError> {
    let mut pcrs =
        crate::measure::tpm_prediction(&packed.uki).map_err(|reason| ImageError::Input {
            input: UKI.into(),
            reason,
        })?;
    let workloads: Vec<(&str, &[u8])> = p
        .pack
        .workloads
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    pcrs.push(dcr_measure::tpm::pcr23(
        sha256(&p.pack.contract).0,
        &workloads,
    ));
    Ok(pcrs)
}

/// Build the disk image of a packed build (pure): the raw disk and its VHD footer.
pub fn disk_image(
    p: &Prepared,
    packed: &Packed,
) -> Result<Option<(crate::disk::Disk, [u8; 512])>, ImageError> {
    let Some(spec) = &p.disk else {
        return Ok(None);
    };
    let seed = crate::disk::seed(&p.pack.name, &p.pack.version, &packed.uki);
    let disk = crate::disk::build(&crate::disk::DiskInput {
        uki: &packed.uki,
        seed,
        epoch: u64::from(p.pack.mtime),
        size_mib: spec.size_mib,
    })
    .map_err(|e| ImageError::Input {
        input: "disk".into(),
        reason: e.to_string(),
    })?;
    let footer = crate::disk::vhd_footer(disk.raw.len() as u64, u64::from(p.pack.mtime), &seed);
    Ok(Some((disk, footer)))
}

/// The reference values of a packed build: digests of everything, and the launch
/// measurements predicted for the recipe's platforms. Pure.
pub fn reference_values(p: &Prepared, packed: &Packed) -> Result<Measurements, ImageError> {
    let mut artifacts = BTreeMap::new();
    for (name, bytes) in [(INITRD, &packed.initrd), (UKI, &packed.uki)] {
        artifacts.insert(
            name.to_string(),
            Artifact {
                sha256: sha256(bytes),
                size: bytes.len() as u64,
            },
        );
    }
    // The PCR prediction serves both the tpm and the azure reference values: computed once.
    let pcrs = if p.platforms.contains(&Platform::Tpm) || p.platforms.contains(&Platform::Azure) {
        tpm_pcrs(p, packed)?
    } else {
        Vec::new()
    };
    let mut measurements = Predictions::default();
    for platform in &p.platforms {
        match platform {
            Platform::Tpm => {
                measurements.tpm = Some(TpmPrediction {
                    shape: Some(measurements::TpmShape {
                        boot: "OVMF + systemd-stub UKI (image.efi) from an ESP that is the first boot option (QEMU -nodefaults); no PCR 11 phase markers".into(),
                        bank: "sha256".into(),
                    }),
                    pcrs: pcr_map(pcrs.iter()),
                    events: pcrs.iter().flat_map(|p| p.events.clone()).collect(),
                });
            }
            Platform::Snp => {
                if let Some((spec, fw)) = &p.snp {
                    measurements.snp = Some(snp_prediction(p, &packed.initrd, spec, fw)?);
                }
            }
            Platform::Tdx => {
                if let Some((spec, fw)) = &p.tdx {
                    measurements.tdx = Some(tdx_prediction(spec, fw)?);
                }
            }
            Platform::Azure => {
                measurements.azure = Some(azure_prediction(&pcrs));
            }
        }
    }
    Ok(Measurements {
        schema_version: SCHEMA_VERSION,
        recipe: p.pack.name.clone(),
        recipe_version: p.pack.version.clone(),
        source_date_epoch: u64::from(p.pack.mtime),
        kernel_release: p.pack.kernel_release.clone(),
        cmdline: p.pack.cmdline.clone(),
        contract_digest: sha256(&p.pack.contract),
        guest_target: p.guest_target.clone(),
        inputs: p.inputs.clone(),
        artifacts,
        measurements,
    })
}

/// Build the image of a recipe into `opts.out`; returns the reference values written.
pub fn build(recipe_path: &Path, opts: &BuildOptions) -> Result<Measurements, ImageError> {
    let prepared = prepare(recipe_path, opts, Some(&opts.out))?;
    let packed = pack(&prepared.pack)?;
    let mut m = reference_values(&prepared, &packed)?;
    let disk = disk_image(&prepared, &packed)?;
    if let Some((d, footer)) = &disk {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&d.raw);
        let raw_sha = dcr_protocol::measurements::Sha256(h.clone().finalize().into());
        h.update(footer);
        let vhd_sha = dcr_protocol::measurements::Sha256(h.finalize().into());
        let size = d.raw.len() as u64;
        m.artifacts.insert(
            DISK_RAW.into(),
            Artifact {
                sha256: raw_sha,
                size,
            },
        );
        m.artifacts.insert(
            DISK_VHD.into(),
            Artifact {
                sha256: vhd_sha,
                size: size + 512,
            },
        );
    }
    for p in &prepared.platforms {
        let predicted = match p {
            Platform::Tpm => m.measurements.tpm.is_some(),
            Platform::Snp => m.measurements.snp.is_some(),
            Platform::Tdx => m.measurements.tdx.is_some(),
            Platform::Azure => m.measurements.azure.is_some(),
        };
        if !predicted {
            eprintln!(
                "note: no launch measurement predicted yet for platform {}",
                p.as_str()
            );
        }
    }
    write_atomic(&opts.out, INITRD, &packed.initrd)?;
    write_atomic(&opts.out, UKI, &packed.uki)?;
    if let Some((d, footer)) = &disk {
        write_sparse(&opts.out, DISK_RAW, &d.raw, &[])?;
        write_sparse(&opts.out, DISK_VHD, &d.raw, footer)?;
        eprintln!(
            "disk: {} MiB GPT, disk GUID {}, ESP {} (LBA {}..={}, FAT32, {}-byte clusters, serial {:08X})",
            d.size_mib,
            d.disk_guid.to_text(),
            d.esp_guid.to_text(),
            d.esp_first_lba,
            d.esp_last_lba,
            d.cluster_size,
            d.fat_serial
        );
    }
    write_atomic(&opts.out, MEASUREMENTS, &m.to_canonical_json()?)?;
    Ok(m)
}
