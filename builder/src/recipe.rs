//! The image recipe, `images/<name>/image.toml` (documented in docs/recipe.md).
//!
//! Parsing is strict: unknown fields are errors, every pinned input carries a SHA-256, and the
//! kernel command line is validated here, before any work is done.

use std::path::{Path, PathBuf};

use dcr_protocol::measurements::Sha256;
use serde::Deserialize;

/// Errors in a recipe file. Each names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: cannot read recipe: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field {field}: {reason}")]
    Field {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// Longest kernel command line we accept (x86 COMMAND_LINE_SIZE is 2048 including the NUL).
pub const MAX_CMDLINE: usize = 2047;

/// A Debian package pinned by name and exact version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPin {
    /// Binary package name, e.g. `linux-image-6.12.95+deb12-cloud-amd64`.
    pub package: String,
    /// Exact Debian version, e.g. `6.12.95-1~bpo12+1`.
    pub version: String,
    /// Optional SHA-256 of the .deb file itself.
    pub sha256: Option<HexSha256>,
    /// A Debian suite the host's apt sources lack (e.g. `sid`): fetched through a private
    /// apt configuration in the dcr cache, never by changing the system's sources.
    pub suite: Option<String>,
}

/// A SHA-256 as written in TOML (64 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexSha256(pub Sha256);

impl<'de> Deserialize<'de> for HexSha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256::from_hex(&s).map(HexSha256).ok_or_else(|| {
            serde::de::Error::custom(format!("not a SHA-256 (64 hex digits): {s:?}"))
        })
    }
}

/// The kernel: a Debian package or local files, and the modules to pack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// The kernel from a Debian package: `vmlinuz` is the path inside it; modules come from
    /// `lib/modules/<release>/` of the same package.
    pub deb: Option<KernelDeb>,
    /// The kernel from local files (relative to the recipe directory).
    pub local: Option<KernelLocal>,
    /// SHA-256 of the vmlinuz (bzImage).
    pub sha256: HexSha256,
    /// Modules to pack, by name (`virtio_net`, `sev-guest`); dependencies are added.
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDeb {
    pub package: String,
    pub version: String,
    /// Optional SHA-256 of the .deb file itself.
    pub sha256: Option<HexSha256>,
    /// Debian suite outside the host's apt sources (see [`DebPin::suite`]).
    pub suite: Option<String>,
    /// Path of the bzImage inside the package, e.g. `boot/vmlinuz-…`.
    pub vmlinuz: String,
}

impl KernelDeb {
    pub fn pin(&self) -> DebPin {
        DebPin {
            package: self.package.clone(),
            version: self.version.clone(),
            sha256: self.sha256,
            suite: self.suite.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelLocal {
    /// Path of the bzImage, relative to the recipe directory.
    pub vmlinuz: PathBuf,
    /// Directory holding `modules.builtin` and `kernel/…`, i.e. a `lib/modules/<release>`.
    pub modules_dir: Option<PathBuf>,
}

/// A pinned single file: from a Debian package or local.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub deb: Option<FileDeb>,
    pub local: Option<PathBuf>,
    pub sha256: HexSha256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeb {
    pub package: String,
    pub version: String,
    /// Optional SHA-256 of the .deb file itself.
    pub sha256: Option<HexSha256>,
    /// Debian suite outside the host's apt sources (see [`DebPin::suite`]).
    pub suite: Option<String>,
    /// Path inside the package.
    pub path: String,
}

impl FileDeb {
    pub fn pin(&self) -> DebPin {
        DebPin {
            package: self.package.clone(),
            version: self.version.clone(),
            sha256: self.sha256,
            suite: self.suite.clone(),
        }
    }
}

/// A workload: a crate built from source, or a pinned static binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Name inside the image: `/workloads/<name>`.
    pub name: String,
    /// Cargo package directory inside the recipe directory (a workspace member); built for
    /// the guest (`native`) or for `wasm32-wasip1` (`wasm`).
    #[serde(rename = "crate")]
    pub krate: Option<PathBuf>,
    /// A prebuilt static binary (`native`) or WebAssembly module (`wasm`), relative to the
    /// recipe directory.
    pub file: Option<PathBuf>,
    /// Required with `file`.
    pub sha256: Option<HexSha256>,
    /// `native` (default: `crate`, or `file` + `sha256`), `wasm` (the same two ways to give a
    /// WASI preview 1 module) or `oci` (`oci` + `digest`).
    #[serde(default)]
    pub kind: WorkloadKind,
    /// kind = "oci": an OCI image layout directory, or an archive holding one (`docker
    /// save` from Docker 25 on), relative to the recipe directory.
    pub oci: Option<PathBuf>,
    /// kind = "oci": the image manifest (or index) digest it is pinned by, `sha256:<hex>`.
    pub digest: Option<String>,
}

/// What a recipe workload is built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A static binary: a crate built for the guest, or a pinned file.
    #[default]
    Native,
    /// A container image, flattened into a dm-verity-protected EROFS root.
    Oci,
    /// A WebAssembly module (WASI preview 1) run by the guest's wasmtime runner
    /// (attest/wasm-runner): a crate built for `wasm32-wasip1`, or a pinned `.wasm` file.
    Wasm,
}

/// The target `kind = "wasm"` crate workloads are built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The guest's WebAssembly runner crate, relative to the workspace guest-init is built from;
/// packed at [`WASM_RUNNER_PATH`] when a recipe has a wasm workload.
pub const WASM_RUNNER_CRATE: &str = "attest/wasm-runner";

/// Platforms whose launch measurements the build predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// QEMU/OVMF with a (software) TPM: PCR 4, 9, 11, 12, 23.
    Tpm,
    /// AMD SEV-SNP, QEMU direct boot with kernel hashes.
    Snp,
    /// Intel TDX: MRTD, RTMR0..2.
    Tdx,
    /// Azure confidential VM (SNP or TDX with paravisor): vTPM PCRs.
    Azure,
    /// AWS Nitro Enclave: `image.eif` and its PCR 0, 1 and 2.
    Nitro,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Tpm => "tpm",
            Platform::Snp => "snp",
            Platform::Tdx => "tdx",
            Platform::Azure => "azure",
            Platform::Nitro => "nitro",
        }
    }
}

/// SEV-SNP prediction: the firmware the host boots and the VM shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpSpec {
    /// An AmdSev OVMF build (has the SNP_KERNEL_HASHES section), pinned.
    pub firmware: FileSpec,
    pub vcpus: u32,
    /// QEMU vCPU model (`EPYC-Milan`, …): its CPUID signature goes into the VMSAs.
    pub vcpu_type: String,
    /// VMSA SEV_FEATURES (sev-snp-measure `--guest-features`), e.g. 1 (SNPActive).
    pub guest_features: u64,
    /// `QEMU`, `ec2` or `gce`.
    pub vmm: String,
}

/// TDX prediction: the TDVF firmware and QEMU's page order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxSpec {
    /// A TDVF-capable OVMF, pinned.
    pub firmware: FileSpec,
    /// `single-pass` (QEMU >= 9) or `two-pass` (QEMU 8.x).
    pub page_order: String,
}

/// Per-platform prediction settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    pub snp: Option<SnpSpec>,
    pub tdx: Option<TdxSpec>,
}

/// The recipe file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Image name (`[a-z0-9-]+`).
    pub name: String,
    /// Image version, written to `.osrel` as IMAGE_VERSION.
    pub version: String,
    /// Timestamp for every archive entry, unless SOURCE_DATE_EPOCH is set.
    pub source_date_epoch: u64,
    pub kernel: KernelSpec,
    /// The systemd-stub (`linuxx64.efi.stub`).
    pub stub: FileSpec,
    /// Kernel command line (also the UKI `.cmdline`).
    pub cmdline: String,
    /// The contract, relative to the recipe directory.
    pub contract: PathBuf,
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    pub platforms: Vec<Platform>,
    /// What the SNP and TDX predictions assume; required for those platforms.
    #[serde(default)]
    pub measure: MeasureSpec,
    /// A bootable disk image (GPT + FAT32 ESP, raw and fixed VHD). Always built when
    /// `platforms` names `azure`.
    pub disk: Option<DiskSpec>,
    /// The Enclave Image File's settings (`platforms` names `nitro`); defaults otherwise.
    pub nitro: Option<NitroSpec>,
}

/// `[nitro]`: the EIF's command line and default enclave size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NitroSpec {
    /// The EIF's command line (default: the recipe's `cmdline`). The Nitro hypervisor
    /// appends the `virtio_mmio.device=` entries at boot; they must not be in it.
    pub cmdline: Option<String>,
    /// Default enclave memory (MiB); it must hold the unpacked ramdisks.
    #[serde(default = "NitroSpec::default_memory")]
    pub memory_mib: u64,
    #[serde(default = "NitroSpec::default_cpus")]
    pub cpus: u64,
    /// Sign the EIF with this certificate (PEM, relative to the recipe directory): a
    /// signature section over PCR 0 and PCR 8 = the certificate. The P-384 key comes with
    /// `dcr-build image --nitro-signing-key`, never from the recipe.
    pub signing_certificate: Option<PathBuf>,
    /// The EIF's own kernel (default: the recipe's `[kernel]`).
    pub kernel: Option<NitroKernel>,
}

/// `[nitro.kernel]`: a kernel for the EIF alone. The Nitro hypervisor describes the enclave's
/// vsock device only as `virtio_mmio.device=` on the command line, which a kernel reads only
/// with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; no Debian kernel sets it
/// (reproducible/nitro-kernel.sh builds one, docs/nitro.md). Everything the enclave needs is
/// built into it: the EIF's boot ramdisk carries no modules when it is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NitroKernel {
    /// Path of the bzImage, relative to the recipe directory.
    pub vmlinuz: PathBuf,
    /// Its SHA-256.
    pub sha256: HexSha256,
}

impl NitroSpec {
    fn default_memory() -> u64 {
        1024
    }
    fn default_cpus() -> u64 {
        2
    }
}

impl Default for NitroSpec {
    fn default() -> Self {
        NitroSpec {
            cmdline: None,
            memory_mib: Self::default_memory(),
            cpus: Self::default_cpus(),
            signing_certificate: None,
            kernel: None,
        }
    }
}

/// `[disk]`: the disk image's size.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Size in MiB; absent: the smallest size that holds the UKI and has an exact VHD
    /// geometry (see docs/azure.md).
    pub size_mib: Option<u64>,
}

/// Modules packed (with their dependencies) whenever the recipe targets Azure: the VMBus and
/// its storage and network drivers. On other machines hv_vmbus refuses to load (ENODEV) and
/// guest-init counts it and its dependants as absent.
/// Modules an image with an oci workload loads: the block device, device-mapper's verity
/// target and EROFS (their dependencies are resolved from modules.dep).
pub const OCI_MODULES: [&str; 3] = ["virtio_blk", "dm-verity", "erofs"];

pub const AZURE_MODULES: [&str; 3] = ["hv_vmbus", "hv_storvsc", "hv_netvsc"];

/// A recipe plus the directory its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl LoadedRecipe {
    /// Resolve a recipe-relative path.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.dir.join(p)
    }
}

/// Read a recipe from a directory (holding `image.toml`) or a file.
pub fn load(path: &Path) -> Result<LoadedRecipe, RecipeError> {
    let file = if path.is_dir() {
        path.join("image.toml")
    } else {
        path.to_path_buf()
    };
    let text = read_recipe_text(&file).map_err(|source| RecipeError::Read {
        path: file.clone(),
        source,
    })?;
    let recipe = parse(&text, &file)?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(LoadedRecipe {
        recipe,
        path: file,
        dir,
    })
}

/// The recipe file: a regular file of at most 1 MiB (a device or FIFO would never end).
fn read_recipe_text(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    // Checked before opening (opening a FIFO blocks) and again on what was opened.
    if !std::fs::metadata(file)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let f = std::fs::File::open(file)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(text)
}

/// Parse and validate recipe text; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Recipe, RecipeError> {
    let recipe: Recipe = toml::from_str(text).map_err(|e| RecipeError::Parse {
        path: path.to_path_buf(),
        message: one_line(&e.to_string()),
    })?;
    validate(&recipe, path)?;
    Ok(recipe)
}

/// toml's message spans several lines with a source excerpt (`4 | text`, `  | ^^^`): keep
/// the location and the message, drop the excerpt.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| {
            let excerpt = l
                .split_once('|')
                .is_some_and(|(pre, _)| pre.trim().chars().all(|c| c.is_ascii_digit()));
            !l.is_empty() && !excerpt
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn field(path: &Path, field: &str, reason: impl Into<String>) -> RecipeError {
    RecipeError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !s.starts_with('-')
}

/// Why a kernel command line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("contains a NUL byte at offset {0}")]
    Nul(usize),
    #[error("contains a non-printable or non-ASCII character {ch:?} at offset {at}")]
    NotPrintable { ch: char, at: usize },
    #[error("is {0} bytes, longer than {MAX_CMDLINE}")]
    TooLong(usize),
    #[error("is empty")]
    Empty,
}

/// Check a kernel command line: printable ASCII, no NUL, within the size limit.
pub fn validate_cmdline(cmdline: &str) -> Result<(), CmdlineError> {
    if let Some(pos) = cmdline.bytes().position(|b| b == 0) {
        return Err(CmdlineError::Nul(pos));
    }
    if let Some((at, ch)) = cmdline
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_graphic() || *c == ' '))
    {
        return Err(CmdlineError::NotPrintable { ch, at });
    }
    if cmdline.len() > MAX_CMDLINE {
        return Err(CmdlineError::TooLong(cmdline.len()));
    }
    if cmdline.trim().is_empty() {
        return Err(CmdlineError::Empty);
    }
    Ok(())
}

fn validate(r: &Recipe, path: &Path) -> Result<(), RecipeError> {
    if !valid_name(&r.name) {
        return Err(field(path, "name", "must be 1-64 of [a-z0-9-_]"));
    }
    if r.version.is_empty() || r.version.contains(['\n', '"', '\\']) {
        return Err(field(
            path,
            "version",
            "must be a non-empty single line without quotes",
        ));
    }
    if r.source_date_epoch > u64::from(u32::MAX) {
        return Err(field(
            path,
            "source_date_epoch",
            "does not fit a cpio mtime (u32)",
        ));
    }
    match (&r.kernel.deb, &r.kernel.local) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => {
            return Err(field(
                path,
                "kernel",
                "give exactly one of kernel.deb or kernel.local",
            ))
        }
    }
    if let Some(d) = &r.kernel.deb {
        check_pin(&d.pin(), path, "kernel.deb")?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &r.kernel.modules {
        if !valid_name(&m.replace('-', "_")) {
            return Err(field(
                path,
                "kernel.modules",
                format!("bad module name {m:?}"),
            ));
        }
        if !seen.insert(m.replace('-', "_")) {
            return Err(field(
                path,
                "kernel.modules",
                format!("module {m:?} listed twice"),
            ));
        }
    }
    match (&r.stub.deb, &r.stub.local) {
        (Some(d), None) => check_pin(&d.pin(), path, "stub.deb")?,
        (None, Some(_)) => {}
        _ => {
            return Err(field(
                path,
                "stub",
                "give exactly one of stub.deb or stub.local",
            ))
        }
    }
    validate_cmdline(&r.cmdline).map_err(|e| field(path, "cmdline", e.to_string()))?;
    let mut names = std::collections::BTreeSet::new();
    for (i, w) in r.workloads.iter().enumerate() {
        let f = format!("workloads[{i}]");
        if !valid_name(&w.name) {
            return Err(field(
                path,
                &format!("{f}.name"),
                "must be 1-64 of [a-z0-9-_]",
            ));
        }
        if !names.insert(w.name.clone()) {
            return Err(field(
                path,
                &format!("{f}.name"),
                format!("duplicate workload {:?}", w.name),
            ));
        }
        if w.kind == WorkloadKind::Oci {
            if w.krate.is_some() || w.file.is_some() || w.sha256.is_some() {
                return Err(field(
                    path,
                    &f,
                    "kind = \"oci\" takes oci + digest, not crate, file or sha256",
                ));
            }
            let (Some(_), Some(d)) = (&w.oci, &w.digest) else {
                return Err(field(path, &f, "kind = \"oci\" needs oci and digest"));
            };
            if crate::oci::check_digest(d).is_err() {
                return Err(field(
                    path,
                    &format!("{f}.digest"),
                    format!("{d:?}: expected sha256:<64 lowercase hex digits>"),
                ));
            }
            continue;
        }
        if w.oci.is_some() || w.digest.is_some() {
            return Err(field(path, &f, "oci and digest need kind = \"oci\""));
        }
        if w.kind == WorkloadKind::Wasm
            && w.file
                .as_ref()
                .is_some_and(|p| p.extension().and_then(|e| e.to_str()) != Some("wasm"))
        {
            return Err(field(
                path,
                &format!("{f}.file"),
                "kind = \"wasm\" takes a WebAssembly module named *.wasm",
            ));
        }
        match (&w.krate, &w.file, &w.sha256) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (None, Some(_), None) => {
                return Err(field(path, &format!("{f}.sha256"), "required with file"))
            }
            _ => {
                return Err(field(
                    path,
                    &f,
                    "give exactly one of crate, or file + sha256",
                ))
            }
        }
    }
    if r.platforms.is_empty() {
        return Err(field(path, "platforms", "name at least one platform"));
    }
    if let Some(n) = &r.nitro {
        if !r.platforms.contains(&Platform::Nitro) {
            return Err(field(
                path,
                "nitro",
                "[nitro] without \"nitro\" in platforms",
            ));
        }
        if n.cmdline
            .as_deref()
            .is_some_and(|c| c.contains("virtio_mmio.device="))
        {
            return Err(field(
                path,
                "nitro.cmdline",
                "carries virtio_mmio.device= entries: the Nitro hypervisor adds them at boot, and the PCRs cover only the EIF's own command line",
            ));
        }
        if n.memory_mib < 64 || n.cpus == 0 {
            return Err(field(
                path,
                "nitro",
                "memory_mib at least 64, cpus at least 1",
            ));
        }
    }
    if r.platforms.contains(&Platform::Snp) && r.measure.snp.is_none() {
        return Err(field(
            path,
            "measure.snp",
            "platforms lists snp but [measure.snp] is missing",
        ));
    }
    if r.platforms.contains(&Platform::Tdx) && r.measure.tdx.is_none() {
        return Err(field(
            path,
            "measure.tdx",
            "platforms lists tdx but [measure.tdx] is missing",
        ));
    }
    if let Some(snp) = &r.measure.snp {
        check_file(&snp.firmware, path, "measure.snp.firmware")?;
        if snp.vcpus == 0 || snp.vcpus > 512 {
            return Err(field(path, "measure.snp.vcpus", "must be 1-512"));
        }
        if dcr_measure::snp::CpuType::from_name(&snp.vcpu_type).is_none() {
            return Err(field(
                path,
                "measure.snp.vcpu_type",
                format!("unknown vCPU type {:?}", snp.vcpu_type),
            ));
        }
        if !["QEMU", "ec2", "gce"].contains(&snp.vmm.as_str()) {
            return Err(field(path, "measure.snp.vmm", "must be QEMU, ec2 or gce"));
        }
    }
    if let Some(tdx) = &r.measure.tdx {
        check_file(&tdx.firmware, path, "measure.tdx.firmware")?;
        if !["single-pass", "two-pass"].contains(&tdx.page_order.as_str()) {
            return Err(field(
                path,
                "measure.tdx.page_order",
                "must be single-pass or two-pass",
            ));
        }
    }
    Ok(())
}

fn check_file(f: &FileSpec, path: &Path, at: &str) -> Result<(), RecipeError> {
    match (&f.deb, &f.local) {
        (Some(d), None) => check_pin(&d.pin(), path, &format!("{at}.deb")),
        (None, Some(_)) => Ok(()),
        _ => Err(field(path, at, "give exactly one of deb or local")),
    }
}

fn check_pin(pin: &DebPin, path: &Path, at: &str) -> Result<(), RecipeError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.~:_".contains(&b))
    };
    if !ok(&pin.package) {
        return Err(field(
            path,
            &format!("{at}.package"),
            "not a Debian package name",
        ));
    }
    if !ok(&pin.version) {
        return Err(field(
            path,
            &format!("{at}.version"),
            "not a Debian version",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
version = "1"
source_date_epoch = 1
cmdline = "console=ttyS0"
contract = "contract.toml"
platforms = ["tpm"]
[kernel]
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
modules = ["virtio_net"]
[kernel.local]
vmlinuz = "vmlinuz"
[stub]
local = "stub.efi"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[[workloads]]
name = "w"
crate = "workloads/w"
"#;

    fn p(text: &str) -> Result<Recipe, RecipeError> {
        parse(text, Path::new("image.toml"))
    }

    #[test]
    fn good_recipe_parses() {
        let r = p(GOOD).unwrap();
        assert_eq!(r.name, "t");
        assert_eq!(r.platforms, vec![Platform::Tpm]);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = p(&GOOD.replace("version = \"1\"", "version = \"1\"\ncolour = 1")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("colour") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn nul_in_cmdline_is_refused() {
        let e = p(&GOOD.replace("console=ttyS0", "console=ttyS0\\u0000x")).unwrap_err();
        assert!(
            e.to_string().contains("cmdline") && e.to_string().contains("NUL"),
            "{e}"
        );
    }

    #[test]
    fn bad_sha_is_refused() {
        let e = p(&GOOD.replacen(
            "0000000000000000000000000000000000000000000000000000000000000000",
            "00",
            1,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
    }

    #[test]
    fn two_kernel_sources_refused() {
        let text = GOOD.replace(
            "[kernel.local]",
            "[kernel.deb]\npackage = \"a\"\nversion = \"1\"\nvmlinuz = \"v\"\n[kernel.local]",
        );
        let e = p(&text).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
    }

    #[test]
    fn nitro_section_rules() {
        let nitro = GOOD.replace("[\"tpm\"]", "[\"tpm\", \"nitro\"]");
        let with = |t: &str, extra: &str| p(&format!("{t}\n{extra}"));
        let r = with(&nitro, "[nitro]\nmemory_mib = 2048").unwrap();
        let n = r.nitro.unwrap();
        assert_eq!((n.memory_mib, n.cpus, n.cmdline), (2048, 2, None));
        let e = with(GOOD, "[nitro]\ncpus = 4").unwrap_err().to_string();
        assert!(e.contains("without \"nitro\" in platforms"), "{e}");
        let e = with(
            &nitro,
            "[nitro]\ncmdline = \"console=ttyS0 virtio_mmio.device=4K@0xd0000000:5\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nitro.cmdline") && e.contains("hypervisor adds them"),
            "{e}"
        );
        let e = with(&nitro, "[nitro]\ncpus = 0").unwrap_err().to_string();
        assert!(e.contains("cpus at least 1"), "{e}");
        let e = with(&nitro, "[nitro]\nsigning_key = \"k.pem\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("signing_key"),
            "the key never comes from the recipe: {e}"
        );
        let pin = "ab".repeat(32);
        let r = with(
            &nitro,
            &format!("[nitro.kernel]\nvmlinuz = \"nitro/bzImage\"\nsha256 = \"{pin}\""),
        )
        .unwrap();
        let k = r.nitro.unwrap().kernel.unwrap();
        assert_eq!(k.vmlinuz, std::path::Path::new("nitro/bzImage"));
        assert_eq!(k.sha256.0 .0, [0xab; 32]);
        // Modules are never packed for it, so it cannot name any; the pin is required.
        let e = with(
            &nitro,
            &format!("[nitro.kernel]\nvmlinuz = \"k\"\nsha256 = \"{pin}\"\nmodules = [\"nsm\"]"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("modules"), "{e}");
        let e = with(&nitro, "[nitro.kernel]\nvmlinuz = \"k\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256"), "{e}");
    }

    #[test]
    fn unknown_platform_refused() {
        let e = p(&GOOD.replace("[\"tpm\"]", "[\"sgx\"]")).unwrap_err();
        assert!(e.to_string().contains("sgx"), "{e}");
    }

    #[test]
    fn snp_platform_needs_its_shape() {
        let e = p(&GOOD.replace("[\"tpm\"]", "[\"tpm\", \"snp\"]")).unwrap_err();
        assert!(e.to_string().contains("measure.snp"), "{e}");
    }

    #[test]
    fn file_workload_needs_sha() {
        let e = p(&GOOD.replace("crate = \"workloads/w\"", "file = \"w.bin\"")).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
    }
}
