//! Planning a build: recipe → verified inputs. Loads the recipe and the contract, fetches
//! and checks every pinned input (kernel and modules, stub, firmware, workloads), builds the
//! guest binaries and records every input's source and digest for measurements.json.

use std::collections::BTreeMap;
use std::path::Path;

use dcr_protocol::measurements::Input;

use crate::bzimage;
use crate::cargo;
use crate::fetch::{self, sha256, FetchError};
use crate::kmod::ModuleTree;
use crate::recipe::{self, FileSpec, LoadedRecipe, Platform, SnpSpec, TdxSpec};

use super::pack::PackInputs;
use super::write::{out_err, prepare_out};
use super::{BuildOptions, ImageError};

fn input(source: String, bytes: &[u8]) -> Input {
    Input {
        source,
        sha256: sha256(bytes),
        size: bytes.len() as u64,
    }
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
        let (kernel, release) = local_kernel(r, "kernel", &l.vmlinuz, k.sha256, inputs)?;
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

/// Verified inputs of one build, ready for [`pack`](super::pack()).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub pack: PackInputs,
    /// Every input by stable name (see `Measurements::inputs`).
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
    /// The root device of each oci workload (EROFS + dm-verity), by workload name.
    pub roots: Vec<(String, Vec<u8>)>,
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
    // Container-image workloads: flattened, packed and hashed; what is packed at
    // /workloads/<name> is the run document naming the root's verity root hash.
    let mut roots = Vec::new();
    let mut oci_inputs = Vec::new();
    for w in &rec.workloads {
        if let (recipe::WorkloadKind::Oci, Some(oci), Some(digest)) = (w.kind, &w.oci, &w.digest) {
            let err = |source| ImageError::Rootfs {
                workload: w.name.clone(),
                source,
            };
            let mut src =
                crate::oci::source::Source::open(&r.resolve(oci)).map_err(|e| err(e.into()))?;
            let packed = crate::rootfs::build(&mut src, digest).map_err(err)?;
            let doc = packed.run_spec().map_err(err)?.canonical_json();
            let s = &packed.summary;
            eprintln!(
                "workload {}: oci image {} ({} layers, {} bytes) -> {} ({} inodes, {} bytes), verity root {}",
                w.name,
                s.manifest,
                s.layers.len(),
                s.layer_bytes,
                super::rootfs_file(&w.name),
                s.inodes,
                packed.device.len(),
                s.root_hash
            );
            for (what, list) in [
                ("set-uid/set-gid bits stripped", &s.notes.setid_stripped),
                (
                    "device nodes, FIFOs, sockets left out",
                    &s.notes.specials_dropped,
                ),
                ("extended attributes left out", &s.notes.xattrs_dropped),
            ] {
                if !list.is_empty() {
                    eprintln!("note: workload {}: {what}: {}", w.name, list.len());
                }
            }
            let source = format!("oci:{}@{}", oci.display(), s.manifest);
            oci_inputs.push((
                format!("rootfs:{}", w.name),
                Input {
                    source: source.clone(),
                    sha256: sha256(&packed.device),
                    size: packed.device.len() as u64,
                },
            ));
            local_workloads.push((w.name.clone(), doc, source));
            roots.push((w.name.clone(), packed.device));
        }
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
    inputs.extend(oci_inputs);
    let nitro_signer = nitro_signer(&r, opts, &mut inputs)?;
    let nitro_kernel = nitro_kernel(&r, &mut inputs)?;

    let (kernel, tree) = kernel_inputs(&r, &mut inputs)?;
    let mut wanted = rec.kernel.modules.clone();
    if !roots.is_empty() {
        // An oci workload's root: a virtio-blk device under dm-verity, EROFS inside.
        for m in recipe::OCI_MODULES {
            if !wanted
                .iter()
                .any(|w| w.replace('-', "_") == m.replace('-', "_"))
            {
                wanted.push(m.to_string());
            }
        }
    }
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
    let mut wasm_packages = Vec::new();
    let mut crate_workloads = Vec::new();
    for w in &rec.workloads {
        if let Some(dir) = &w.krate {
            let pkg = cargo::package_name(&r.resolve(dir))?;
            crate_workloads.push((w.name.clone(), pkg.clone(), dir.clone()));
            if w.kind == recipe::WorkloadKind::Wasm {
                wasm_packages.push(pkg);
            } else {
                packages.push(pkg);
            }
        }
    }
    let mut built = cargo::build(&workspace, &packages, &opts.guest_target)?;
    if !wasm_packages.is_empty() {
        built.extend(cargo::build(
            &workspace,
            &wasm_packages,
            recipe::WASM_TARGET,
        )?);
    }
    let guest_init = built.remove("guest-init").unwrap_or_default();
    inputs.insert(
        "guest-init".into(),
        input("crate:guest-init".into(), &guest_init),
    );
    // The WebAssembly runner (wasmtime), from its own workspace beside guest-init's.
    let wasm_runner = if rec
        .workloads
        .iter()
        .any(|w| w.kind == recipe::WorkloadKind::Wasm)
    {
        let dir = workspace.join(recipe::WASM_RUNNER_CRATE);
        let pkg = cargo::package_name(&dir)?;
        let runner_ws = cargo::workspace_root(&dir)?;
        let bytes = cargo::build(&runner_ws, std::slice::from_ref(&pkg), &opts.guest_target)?
            .remove(&pkg)
            .unwrap_or_default();
        inputs.insert(
            "wasm-runner".into(),
            input(format!("crate:{}", recipe::WASM_RUNNER_CRATE), &bytes),
        );
        Some(bytes)
    } else {
        None
    };
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

    check_kinds(rec, &parsed, &workloads).map_err(|reason| ImageError::ContractWorkloads {
        path: contract_path.clone(),
        reason,
    })?;
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

    if rec.platforms.contains(&Platform::Nitro) && !roots.is_empty() {
        eprintln!(
            "note: image.eif does not carry the oci workloads' roots (a Nitro enclave has no block device): in an enclave guest-init powers off at the rootfs step"
        );
    }
    if rec.platforms.contains(&Platform::Nitro) {
        let vsock_parent = matches!(
            parsed.network,
            dcr_protocol::contract::Network::Vsock { cid: 3, .. }
        );
        if !vsock_parent || !parsed.platforms.contains(&dcr_protocol::wire::Tee::Nitro) {
            eprintln!(
                "note: {}: image.eif is built, but an enclave runs this contract only with network = {{ mode = \"vsock\", cid = 3, port = P }} and \"nitro\" in platforms (docs/nitro.md)",
                contract_path.display()
            );
        }
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
            wasm_runner,
            workloads,
            nitro: rec
                .platforms
                .contains(&Platform::Nitro)
                .then(|| rec.nitro.clone().unwrap_or_default()),
            nitro_signer,
            nitro_kernel,
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
        roots,
    })
}

/// The first bytes of a WebAssembly core module, version 1 (WebAssembly Core Specification
/// 2.0, 5.5.16 "Modules": magic `\0asm`, version 1); a component has another version/layer.
const WASM_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

/// Each recipe workload has the kind its contract entry says (a native recipe workload may be
/// the contract's `sql` engine), and a wasm workload is a WebAssembly core module.
fn check_kinds(
    rec: &recipe::Recipe,
    c: &dcr_protocol::contract::Contract,
    built: &[(String, Vec<u8>)],
) -> Result<(), String> {
    use dcr_protocol::contract::WorkloadKind as C;
    for w in &rec.workloads {
        let Some((i, cw)) = c
            .workloads
            .iter()
            .enumerate()
            .find(|(_, x)| x.name == w.name)
        else {
            continue; // check_contract_workloads names it
        };
        let ok = match w.kind {
            recipe::WorkloadKind::Native => matches!(cw.kind, C::Native | C::Sql),
            recipe::WorkloadKind::Oci => cw.kind == C::Oci,
            recipe::WorkloadKind::Wasm => cw.kind == C::Wasm,
        };
        if !ok {
            let contract_kind = match cw.kind {
                C::Native => "native",
                C::Sql => "sql",
                C::Oci => "oci",
                C::Wasm => "wasm",
            };
            let recipe_kind = match w.kind {
                recipe::WorkloadKind::Native => "native",
                recipe::WorkloadKind::Oci => "oci",
                recipe::WorkloadKind::Wasm => "wasm",
            };
            return Err(format!(
                "workloads[{i}] {:?} is kind = \"{contract_kind}\" but the recipe builds it as kind = \"{recipe_kind}\"",
                w.name
            ));
        }
        if w.kind == recipe::WorkloadKind::Wasm {
            let bytes = built
                .iter()
                .find(|(n, _)| *n == w.name)
                .map_or(&[][..], |(_, b)| &b[..]);
            if !bytes.starts_with(&WASM_MODULE_HEADER) {
                return Err(format!(
                    "workload {}: not a WebAssembly core module (version 1); a component or another format cannot run under WASI preview 1",
                    w.name
                ));
            }
        }
    }
    Ok(())
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

/// The EIF's own kernel (`[nitro.kernel]`), checked against its pin, and its release.
fn nitro_kernel(
    r: &LoadedRecipe,
    inputs: &mut BTreeMap<String, Input>,
) -> Result<Option<(Vec<u8>, String)>, ImageError> {
    let Some(k) = r.recipe.nitro.as_ref().and_then(|n| n.kernel.as_ref()) else {
        return Ok(None);
    };
    local_kernel(r, "nitro.kernel", &k.vmlinuz, k.sha256, inputs).map(Some)
}

/// A bzImage from a local file (relative to the recipe), checked against its pin and
/// recorded as input `name`; with its release read from the header.
fn local_kernel(
    r: &LoadedRecipe,
    name: &str,
    vmlinuz: &Path,
    sha256: recipe::HexSha256,
    inputs: &mut BTreeMap<String, Input>,
) -> Result<(Vec<u8>, String), ImageError> {
    let kernel = fetch::read_local(name, &r.resolve(vmlinuz))?;
    fetch::check(name, &kernel, sha256.0)?;
    let release = bzimage::kernel_release(&kernel)?;
    inputs.insert(
        name.into(),
        input(format!("file:{}", vmlinuz.display()), &kernel),
    );
    Ok((kernel, release))
}

/// The EIF signer: the recipe's `[nitro] signing_certificate` with the key given on the
/// command line. A certificate without a key, or a key without a certificate, is an error.
fn nitro_signer(
    r: &recipe::LoadedRecipe,
    opts: &BuildOptions,
    inputs: &mut BTreeMap<String, Input>,
) -> Result<Option<crate::eif::Signer>, ImageError> {
    let cert = r
        .recipe
        .nitro
        .as_ref()
        .and_then(|n| n.signing_certificate.as_ref());
    let err = |reason: String| ImageError::Input {
        input: "nitro.signing_certificate".into(),
        reason,
    };
    match (cert, &opts.nitro_signing_key) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(err(
            "--nitro-signing-key given, but the recipe names no [nitro] signing_certificate".into(),
        )),
        (Some(c), None) => Err(err(format!(
            "{}: give its P-384 key with --nitro-signing-key (PKCS#8 PEM)",
            c.display()
        ))),
        (Some(c), Some(k)) => {
            let cert_bytes = fetch::read_local_max(
                "nitro.signing_certificate",
                &r.resolve(c),
                fetch::MAX_CONTRACT,
            )?;
            let key = std::fs::read_to_string(k)
                .map_err(|e| err(format!("--nitro-signing-key {}: {e}", k.display())))?;
            let s = crate::eif::Signer::from_pem(&cert_bytes, &key)
                .map_err(|e| err(format!("{}: {e}", c.display())))?;
            inputs.insert(
                "nitro-signing-certificate".into(),
                input(format!("file:{}", c.display()), &cert_bytes),
            );
            Ok(Some(s))
        }
    }
}
