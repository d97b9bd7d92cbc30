//! `dcr-build run`: boot a build output in QEMU and report whether the guest succeeded.
//!
//! Two modes: `direct` (QEMU loads the UKI's `.linux` with `initrd.cpio` and the UKI's
//! `.cmdline`) and `uefi` (OVMF boots the UKI from a FAT ESP, with an swtpm vTPM attached).
//! The console is streamed to stdout; the run succeeds only if guest-init printed
//! `dcr-init: power-off status=ok` and QEMU then exited by itself (power off) before the
//! timeout.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dcr_protocol::console::{Line, LineError};

use crate::image::{CONTRACT_PATH, INITRD, UKI};
use crate::uki;

mod print_qemu;

pub use print_qemu::{print_qemu, Platform};

/// How to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// QEMU direct kernel boot (-kernel/-initrd/-append).
    Direct,
    /// OVMF + UKI from an ESP, with an swtpm TPM 2.0.
    Uefi,
    /// OVMF + swtpm booting the built disk image disk.vhd (fixed VHD, QEMU format vpc): what
    /// an Azure confidential VM boots.
    Vhd,
    /// The same with disk.raw.
    Raw,
}

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    pub accel: Accel,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub qemu: String,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    pub swtpm: String,
    /// Extra text appended to the kernel command line (direct boot only; it changes what the
    /// guest runs, so it is for experiments, never for attested runs).
    pub append: Option<String>,
    /// Print the console as it arrives.
    pub echo: bool,
    /// Attach a virtio-net NIC on QEMU user networking: the guest is 10.0.2.15/24 and reaches
    /// the host's loopback services at 10.0.2.2 (the contract's static network).
    pub net: bool,
    /// Start swtpm from a copy of this state directory (e.g. one manufactured by swtpm_setup
    /// with an EK certificate) instead of a blank TPM.
    pub tpm_state: Option<PathBuf>,
    /// Tests only: an Azure instance-metadata stand-in. The user network becomes
    /// 169.254.169.0/24 (guest 169.254.169.15 by DHCP, host loopback at 169.254.169.2) and
    /// guest connections to 169.254.169.254:80 are forwarded to this host address (`ip:port`).
    /// It serves what IMDS serves; the evidence is still verified by the service.
    pub fake_imds: Option<String>,
    /// Attach a virtio-vsock device (the channel of a contract whose network is vsock).
    pub vsock: Option<VsockOptions>,
    /// Boot without the network the image's contract needs: the guest reports, measures and
    /// stops at its network step (for checking a boot and its measurements, not a run).
    pub offline: bool,
}

/// The firmware event log guest-init printed (`dcr-init: eventlog … base64=…`), decoded and
/// checked against the SHA-256 on the same line.
/// The guest's virtio-vsock device. With `/dev/vhost-vsock` on the host and no `uds`, QEMU's
/// `vhost-vsock-pci` (host programs listen with AF_VSOCK, e.g. `dcr-attest vsock-proxy
/// --port P`); with `uds`, `vhost-user-vsock-pci` backed by rust-vmm's userspace
/// `vhost-device-vsock`, which turns a guest connection to the host (CID 2) on port P into a
/// Unix-socket connection to `<uds>_<P>` (`dcr-attest vsock-proxy --unix <uds>_<P>`).
#[derive(Debug, Clone)]
pub struct VsockOptions {
    /// The guest's CID (3 or above).
    pub guest_cid: u32,
    /// vhost-device-vsock's host-side socket prefix.
    pub uds: Option<PathBuf>,
    /// The vhost-device-vsock program.
    pub vhost_device_vsock: String,
}

/// Where the host kernel's vhost-vsock device lives.
pub const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";

pub fn event_log_from_console(console: &[String]) -> Option<Result<Vec<u8>, LineError>> {
    console.iter().find_map(|l| match Line::try_parse(l)? {
        Ok(Line::EventLog { log }) => Some(Ok(log)),
        Err(e) => Some(Err(e)),
        Ok(_) => None,
    })
}

/// Errors starting or supervising QEMU.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--print-qemu: {0}")]
    Print(String),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: UKI section {1} missing")]
    Section(PathBuf, &'static str),
    #[error("{0}")]
    Uki(#[from] uki::UkiError),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("temporary directory: {0}")]
    Temp(#[source] std::io::Error),
    #[error("swtpm did not create its socket {0} within 10 s")]
    Swtpm(PathBuf),
    #[error("{0}: {CONTRACT_PATH}: {1}")]
    Contract(PathBuf, String),
    #[error("the image's contract needs a network: its guest calls the key-release service at {url}; add --net (QEMU user networking: guest 10.0.2.15, host loopback at 10.0.2.2), or --offline to boot only as far as the guest's network step")]
    NeedsNet { url: String },
    #[error("the image's contract reaches its key-release service over vsock (CID {cid}, port {port}), not an IP network; add --vsock (with --vsock-uds PATH where {VHOST_VSOCK_DEV} is absent), or --offline")]
    NeedsVsock { cid: u32, port: u32 },
    #[error("the image's contract reaches its service at vsock CID {cid}; under QEMU the host is CID 2 (CID 3 is a Nitro enclave's parent instance: run this image on Nitro, or build it with network.cid = 2)")]
    VsockCid { cid: u32 },
    #[error("--vsock-cid {0}: a guest's CID must be 3 or above (0-2 are the hypervisor, loopback and host) and under 4294967295")]
    GuestCid(u32),
    #[error("--vsock without --vsock-uds needs the host kernel's {VHOST_VSOCK_DEV}, which this host lacks; give --vsock-uds PATH to use vhost-device-vsock instead")]
    NoVhostVsock,
    #[error("nothing answers at {path}, where vhost-device-vsock hands the guest's vsock connections to port {port} ({reason}); start dcr-attest vsock-proxy --unix {path} --to <service URL> first, or boot with --offline")]
    VsockProxyDown {
        path: PathBuf,
        port: u32,
        reason: String,
    },
    #[error("--vsock-uds {0}: vhost-device-vsock cannot take a path with ',' or '=' in it")]
    VsockPath(PathBuf),
    #[error("{program} did not create its socket {path} within 10 s")]
    VhostUser { program: String, path: PathBuf },
    #[error("the image's contract names the key-release service {url}, which has no host:port")]
    ServiceUrl { url: String },
    #[error("nothing answers at {addr}, where the guest's key-release service {url} leads ({reason}); start it first (dcr-attest serve --listen {addr} …), or boot with --offline")]
    ServiceDown {
        url: String,
        addr: String,
        reason: String,
    },
}

/// What the image's contract asks of a run, checked before booting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// The image has no contract (or the run is --offline): nothing to check.
    NoService,
    /// The guest will call `url`, which from this host is `addr`, and something answers there.
    Service { url: String, addr: String },
    /// The guest will call `url` over the host kernel's vsock, on `port`: a host AF_VSOCK
    /// listener cannot be probed from the host, so nothing was checked.
    VsockUnchecked { url: String, port: u32 },
}

/// `http://host:port[/…]` → (host, port); `None` when there is no explicit host and port.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some((host.to_string(), port))
}

/// Read the contract packed in `out_dir/initrd.cpio` and check what the run needs before the
/// boot: a network when the contract names a service (refused without `--net` unless
/// `--offline`), and that something answers where the guest's service URL leads from this host
/// (QEMU user networking maps the guest's 10.0.2.2 — 169.254.169.2 with `fake_imds` — to the
/// host's loopback; other addresses are reached through the host's own network).
pub fn preflight(out_dir: &Path, o: &RunOptions) -> Result<Preflight, RunError> {
    let path = out_dir.join(INITRD);
    let archive = std::fs::read(&path).map_err(|source| RunError::Read {
        path: path.clone(),
        source,
    })?;
    let contract = match crate::initrd::read_file(&archive, CONTRACT_PATH)
        .map_err(|e| RunError::Contract(path.clone(), e.to_string()))?
    {
        None => return Ok(Preflight::NoService),
        Some(bytes) => dcr_protocol::contract::Contract::from_canonical_json(&bytes)
            .map_err(|e| RunError::Contract(path.clone(), e.to_string()))?,
    };
    let url = contract.service.url.clone();
    if o.offline {
        return Ok(Preflight::NoService);
    }
    if let dcr_protocol::contract::Network::Vsock { cid, port } = contract.network {
        let v = o.vsock.as_ref().ok_or(RunError::NeedsVsock { cid, port })?;
        if cid != 2 {
            return Err(RunError::VsockCid { cid });
        }
        return match &v.uds {
            Some(uds) => {
                let path = PathBuf::from(format!("{}_{port}", uds.display()));
                match std::os::unix::net::UnixStream::connect(&path) {
                    Ok(_) => Ok(Preflight::Service {
                        url,
                        addr: path.display().to_string(),
                    }),
                    Err(e) => Err(RunError::VsockProxyDown {
                        path,
                        port,
                        reason: e.to_string(),
                    }),
                }
            }
            // The host's AF_VSOCK listeners cannot be probed without connecting from a
            // guest CID: nothing to check before the boot.
            None => Ok(Preflight::VsockUnchecked { url, port }),
        };
    }
    if !o.net {
        return Err(RunError::NeedsNet { url });
    }
    let (host, port) =
        url_host_port(&url).ok_or_else(|| RunError::ServiceUrl { url: url.clone() })?;
    let host_alias = if o.fake_imds.is_some() {
        "169.254.169.2"
    } else {
        "10.0.2.2"
    };
    let target = if host == host_alias {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let addr = if target.contains(':') {
        format!("[{target}]:{port}")
    } else {
        format!("{target}:{port}")
    };
    let down = |reason: String| RunError::ServiceDown {
        url: url.clone(),
        addr: addr.clone(),
        reason,
    };
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| down(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(_) => return Ok(Preflight::Service { url, addr }),
            Err(e) => last = e.to_string(),
        }
    }
    Err(down(last))
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// guest-init reported success and the VM powered off.
    Success,
    /// guest-init reported an error (its reason).
    GuestError(String),
    /// QEMU exited without a status line from guest-init (exit status, last console line).
    NoStatus { status: String, last_line: String },
    /// The VM was still running at the deadline and was killed.
    Timeout,
}

/// The outcome plus what was seen.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: Outcome,
    pub console: Vec<String>,
    pub elapsed: Duration,
    pub qemu_stderr: String,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, RunError> {
        let base = std::env::temp_dir();
        for n in 0..1000u32 {
            let p = base.join(format!("dcr-run-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RunError::Temp(e)),
            }
        }
        Err(RunError::Temp(std::io::Error::other("no free name")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child when dropped (swtpm, or QEMU on an early return).
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|source| RunError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    std::fs::write(path, bytes).map_err(RunError::Temp)
}

/// Build the QEMU argument list for `out_dir` (files are staged in `tmp`).
fn qemu_args(out_dir: &Path, tmp: &Path, o: &RunOptions) -> Result<Vec<String>, RunError> {
    let uki_path = out_dir.join(UKI);
    let image = read(&uki_path)?;
    // -nodefaults: no default CD-ROM, NIC, VGA or parallel port. Besides being the smaller
    // attack surface, this makes PCR 4 predictable: with q35's default empty DVD-ROM, OVMF
    // tries that boot option first and logs an extra "Calling"/"Returning from EFI
    // Application from Boot Option" pair into PCR 4.
    // vhost-user devices reach guest memory through a shared memory file.
    let vhost_user = o.vsock.as_ref().is_some_and(|v| v.uds.is_some());
    let mut args: Vec<String> = vec![
        "-nodefaults".into(),
        "-machine".into(),
        if vhost_user {
            "q35,memory-backend=mem0".into()
        } else {
            "q35".into()
        },
        "-accel".into(),
        match o.accel {
            Accel::Tcg => "tcg".into(),
            Accel::Kvm => "kvm".into(),
        },
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        format!("{}M", o.memory_mib),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
    ];
    // The root devices of oci workloads (`rootfs-<name>.img`), read-only virtio-blk drives in
    // name order; the guest finds each by its verity superblock's UUID, not by position.
    let mut roots: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .map_err(|source| RunError::Read {
            path: out_dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rootfs-") && n.ends_with(".img"))
        })
        .collect();
    roots.sort();
    if matches!(o.mode, Mode::Vhd | Mode::Raw) {
        // The disk image carries each root as a partition after its ESP (a second copy would
        // leave the guest two devices with one verity UUID, which it refuses).
        roots.clear();
    }
    match o.mode {
        Mode::Direct => {
            let kernel = uki::section(&image, ".linux")?
                .ok_or_else(|| RunError::Section(uki_path.clone(), ".linux"))?;
            let cmdline = uki::section(&image, ".cmdline")?
                .ok_or_else(|| RunError::Section(uki_path.clone(), ".cmdline"))?;
            let kpath = tmp.join("vmlinuz");
            write(&kpath, kernel)?;
            let mut cmdline = String::from_utf8_lossy(cmdline).into_owned();
            if let Some(extra) = &o.append {
                cmdline.push(' ');
                cmdline.push_str(extra);
            }
            args.extend([
                "-kernel".into(),
                kpath.display().to_string(),
                "-initrd".into(),
                out_dir.join(INITRD).display().to_string(),
                "-append".into(),
                cmdline,
            ]);
        }
        Mode::Uefi | Mode::Vhd | Mode::Raw => {
            let vars = tmp.join("OVMF_VARS.fd");
            write(&vars, &read(&o.ovmf_vars)?)?;
            // Fail early and clearly if the firmware is missing.
            read(&o.ovmf_code)?;
            let esp = match o.mode {
                Mode::Vhd | Mode::Raw => {
                    let (name, format) = if o.mode == Mode::Vhd {
                        (crate::image::DISK_VHD, "vpc")
                    } else {
                        (crate::image::DISK_RAW, "raw")
                    };
                    let disk = out_dir.join(name);
                    if !disk.is_file() {
                        return Err(RunError::Read {
                            path: disk,
                            source: std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "no disk image: build a recipe with [disk] or platform azure",
                            ),
                        });
                    }
                    format!("format={format},readonly=on,file={}", disk.display())
                }
                _ => {
                    let boot = tmp.join("esp/EFI/BOOT");
                    std::fs::create_dir_all(&boot).map_err(RunError::Temp)?;
                    write(&boot.join("BOOTX64.EFI"), &image)?;
                    format!(
                        "format=raw,readonly=on,file=fat:{}",
                        tmp.join("esp").display()
                    )
                }
            };
            if o.net || !roots.is_empty() {
                // With a NIC, OVMF also offers network boot (and other disks are boot options
                // too): pin the ESP as the first boot option so the boot path (and PCR 4)
                // stays the UKI's.
                args.extend([
                    "-drive".into(),
                    format!("if=none,id=esp,{esp}"),
                    "-device".into(),
                    "virtio-blk-pci,drive=esp,bootindex=0".into(),
                ]);
            } else {
                args.extend(["-drive".into(), format!("if=virtio,{esp}")]);
            }
            args.extend([
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    o.ovmf_code.display()
                ),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
    }
    for r in &roots {
        let shown = r.display().to_string();
        if shown.contains(',') {
            return Err(RunError::Read {
                path: r.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "QEMU's -drive cannot take a path with ','",
                ),
            });
        }
        args.extend([
            "-drive".into(),
            format!("if=virtio,format=raw,readonly=on,file={shown}"),
        ]);
    }
    if has_tpm(o) {
        args.extend([
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", tmp.join("swtpm.sock").display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-crb,tpmdev=tpm0".into(),
        ]);
    }
    if let Some(v) = &o.vsock {
        if v.uds.is_some() {
            args.extend([
                "-object".into(),
                format!(
                    "memory-backend-memfd,id=mem0,size={}M,share=on",
                    o.memory_mib
                ),
                "-chardev".into(),
                format!(
                    "socket,id=vsock0,path={}",
                    tmp.join("vhu-vsock.sock").display()
                ),
                "-device".into(),
                "vhost-user-vsock-pci,chardev=vsock0".into(),
            ]);
        } else {
            args.extend([
                "-device".into(),
                format!("vhost-vsock-pci,guest-cid={}", v.guest_cid),
            ]);
        }
    }
    if o.net {
        let netdev = match &o.fake_imds {
            Some(hostfwd) => format!(
                "user,id=net0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,guestfwd=tcp:169.254.169.254:80-tcp:{hostfwd}"
            ),
            None => "user,id=net0".into(),
        };
        // romfile= (empty): no iPXE option ROM, so the NIC adds no boot path of its own.
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=net0,romfile=".into(),
        ]);
    }
    Ok(args)
}

/// A vTPM is attached under UEFI, and in direct boot when a TPM state is given.
fn has_tpm(o: &RunOptions) -> bool {
    o.mode != Mode::Direct || o.tpm_state.is_some()
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), RunError> {
    for e in std::fs::read_dir(from).map_err(RunError::Temp)? {
        let e = e.map_err(RunError::Temp)?;
        if e.file_type().map_err(RunError::Temp)?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).map_err(RunError::Temp)?;
        }
    }
    Ok(())
}

fn start_swtpm(tmp: &Path, o: &RunOptions) -> Result<Reaper, RunError> {
    let state = tmp.join("tpm");
    std::fs::create_dir_all(&state).map_err(RunError::Temp)?;
    if let Some(from) = &o.tpm_state {
        copy_dir(from, &state)?;
    }
    let sock = tmp.join("swtpm.sock");
    let child = Command::new(&o.swtpm)
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--terminate")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: o.swtpm.clone(),
            source,
        })?;
    let reaper = Reaper(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            return Err(RunError::Swtpm(sock));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reaper)
}

/// Start vhost-device-vsock for the guest (its vhost-user socket in `tmp`) and wait for the
/// socket. `None` when the run uses the kernel's vhost-vsock or no vsock at all.
fn start_vhost_device_vsock(tmp: &Path, o: &RunOptions) -> Result<Option<Reaper>, RunError> {
    let Some(v) = &o.vsock else { return Ok(None) };
    if v.guest_cid < 3 || v.guest_cid == u32::MAX {
        return Err(RunError::GuestCid(v.guest_cid));
    }
    let Some(uds) = &v.uds else {
        if !Path::new(VHOST_VSOCK_DEV).exists() {
            return Err(RunError::NoVhostVsock);
        }
        return Ok(None);
    };
    let sock = tmp.join("vhu-vsock.sock");
    for p in [uds, &sock] {
        if p.to_string_lossy().contains([',', '=']) {
            return Err(RunError::VsockPath(p.clone()));
        }
    }
    let child = Command::new(&v.vhost_device_vsock)
        .arg("--vm")
        .arg(format!(
            "guest-cid={},socket={},uds-path={}",
            v.guest_cid,
            sock.display(),
            uds.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: v.vhost_device_vsock.clone(),
            source,
        })?;
    let mut reaper = Reaper(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        let exited = reaper
            .0
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .is_some();
        if exited || Instant::now() > deadline {
            return Err(RunError::VhostUser {
                program: v.vhost_device_vsock.clone(),
                path: sock,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(reaper))
}

/// Boot the build in `out_dir`.
pub fn run(out_dir: &Path, o: &RunOptions) -> Result<RunResult, RunError> {
    match preflight(out_dir, o)? {
        Preflight::Service { url, addr } => eprintln!(
            "run: the guest will call the key-release service at {url} (from this host {addr}: answering)"
        ),
        Preflight::VsockUnchecked { url, port } => eprintln!(
            "run: the guest will call the key-release service at {url} over vsock port {port} (through the host's vhost-vsock: a listener there cannot be checked before the boot)"
        ),
        Preflight::NoService if o.offline => eprintln!(
            "run: --offline: no network; the guest stops at its network step"
        ),
        Preflight::NoService => {}
    }
    let tmp = TempDir::new()?;
    let args = qemu_args(out_dir, &tmp.0, o)?;
    let _swtpm = if has_tpm(o) {
        Some(start_swtpm(&tmp.0, o)?)
    } else {
        None
    };
    let _vhost_vsock = start_vhost_device_vsock(&tmp.0, o)?;
    eprintln!("+ {} {}", o.qemu, args.join(" "));
    let start = Instant::now();
    let child = Command::new(&o.qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: o.qemu.clone(),
            source,
        })?;
    let mut qemu = Reaper(Some(child));
    let child = qemu.0.as_mut().expect("just set");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    let echo = o.echo;
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if echo {
                        println!("{line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = start + o.timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    qemu.0 = None;
    let console: Vec<String> = rx.try_iter().collect();
    // The status line guest-init prints before powering off (ANSI escapes from the firmware
    // can precede a line: Line::parse looks for the prefix anywhere in it).
    let ok = console
        .iter()
        .any(|l| Line::parse(l) == Some(Line::PowerOffOk));
    let err = console.iter().find_map(|l| match Line::parse(l)? {
        Line::PowerOffError { reason } => Some(reason),
        _ => None,
    });
    let outcome = if timed_out {
        Outcome::Timeout
    } else if let Some(reason) = err {
        Outcome::GuestError(reason)
    } else if ok && status.is_some_and(|s| s.success()) {
        Outcome::Success
    } else {
        Outcome::NoStatus {
            status: status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            last_line: console.last().cloned().unwrap_or_default(),
        }
    };
    Ok(RunResult {
        outcome,
        console,
        elapsed,
        qemu_stderr,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_log_from_the_console() {
        use super::{event_log_from_console as f, Line};
        let line = Line::EventLog {
            log: b"log".to_vec(),
        }
        .to_string();
        let console = |l: &str| vec!["dcr-init: banner".to_string(), format!("\x1b[0m{l}")];
        assert_eq!(f(&console(&line)), Some(Ok(b"log".to_vec())));
        assert_eq!(f(&console("dcr-init: eventlog none")), None);
        let err = |l: &str| f(&console(l)).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(
            err(&line.replace("base64=", "b64=")),
            Some(Err("malformed eventlog line".to_string()))
        );
        assert_eq!(
            err(&line.replace("size=3", "size=3 sha256=00")),
            Some(Err(
                "eventlog does not match its SHA-256 (console corrupted?)".to_string()
            ))
        );
    }

    /// `run`'s options for a direct boot of `out`, with `vsock`.
    fn opts(vsock: Option<super::VsockOptions>, net: bool) -> super::RunOptions {
        super::RunOptions {
            mode: super::Mode::Direct,
            accel: super::Accel::Tcg,
            timeout: std::time::Duration::from_secs(1),
            memory_mib: 512,
            qemu: "qemu-system-x86_64".into(),
            ovmf_code: "/nonexistent".into(),
            ovmf_vars: "/nonexistent".into(),
            swtpm: "swtpm".into(),
            append: None,
            echo: false,
            net,
            tpm_state: None,
            fake_imds: None,
            vsock,
            offline: false,
        }
    }

    #[test]
    fn preflight_of_a_vsock_contract() {
        use super::{preflight, Preflight, RunError};
        let text = include_str!("../../../images/clean-room/contract.toml");
        let net =
            "[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n";
        assert!(text.contains(net));
        let out = super::TempDir::new().unwrap();
        let image = |cid: u32| {
            let c = dcr_protocol::contract::Contract::from_toml(&text.replace(
                net,
                &format!("[network]\nmode = \"vsock\"\ncid = {cid}\nport = 8000\n"),
            ))
            .unwrap();
            let mut t = crate::initrd::Tree::new();
            t.add_file(crate::image::CONTRACT_PATH, c.canonical_json(), 0o644)
                .unwrap();
            std::fs::write(out.0.join(super::INITRD), t.to_cpio(0)).unwrap();
        };
        let uds = out.0.join("vsock");
        let v = || {
            Some(super::VsockOptions {
                guest_cid: 4,
                uds: Some(uds.clone()),
                vhost_device_vsock: "vhost-device-vsock".into(),
            })
        };
        image(2);
        // No vsock device: refused, naming the flag, even with a NIC.
        let e = preflight(&out.0, &opts(None, true)).unwrap_err();
        assert!(
            matches!(e, RunError::NeedsVsock { cid: 2, port: 8000 }),
            "{e}"
        );
        assert!(e.to_string().contains("--vsock"), "{e}");
        // Nothing listens at <uds>_8000 yet.
        let e = preflight(&out.0, &opts(v(), false)).unwrap_err();
        assert!(
            matches!(e, RunError::VsockProxyDown { port: 8000, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("vsock_8000"), "{e}");
        let _l = std::os::unix::net::UnixListener::bind(out.0.join("vsock_8000")).unwrap();
        assert_eq!(
            preflight(&out.0, &opts(v(), false)).unwrap(),
            Preflight::Service {
                url: "http://10.0.2.2:8443".into(),
                addr: out.0.join("vsock_8000").display().to_string()
            }
        );
        // The host kernel's vhost-vsock: nothing can be probed, and run says so.
        let kernel = Some(super::VsockOptions {
            guest_cid: 4,
            uds: None,
            vhost_device_vsock: "vhost-device-vsock".into(),
        });
        assert_eq!(
            preflight(&out.0, &opts(kernel, false)).unwrap(),
            Preflight::VsockUnchecked {
                url: "http://10.0.2.2:8443".into(),
                port: 8000
            }
        );
        // A Nitro parent's CID cannot be reached under QEMU.
        image(3);
        let e = preflight(&out.0, &opts(v(), false)).unwrap_err();
        assert!(matches!(e, RunError::VsockCid { cid: 3 }), "{e}");
    }

    #[test]
    fn service_url_host_and_port() {
        use super::url_host_port as f;
        assert_eq!(f("http://10.0.2.2:8443"), Some(("10.0.2.2".into(), 8443)));
        assert_eq!(
            f("http://10.0.2.2:8443/v1?x"),
            Some(("10.0.2.2".into(), 8443))
        );
        assert_eq!(f("https://[::1]:9/"), Some(("::1".into(), 9)));
        for bad in [
            "http://",
            "http://host",
            "http://:80",
            "http://h:0",
            "http://h:99999",
            "ftp://h:1",
            "http://u@h:1",
        ] {
            assert_eq!(f(bad), None, "{bad}");
        }
    }
}
