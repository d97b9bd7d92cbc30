//! Bringing the system up: the API filesystems (/proc, /sys, /dev) and the kernel modules
//! packed into the initramfs, loaded in dependency order.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::{step, sys, StepError};

pub fn mount_api_filesystems() -> Result<(), StepError> {
    let nosuid_noexec = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    for (src, target, fstype, flags) in [
        ("proc", "/proc", "proc", nosuid_noexec),
        ("sysfs", "/sys", "sysfs", nosuid_noexec),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
        ),
    ] {
        step(
            "mkdir",
            fs::create_dir_all(target).map_err(|e| format!("{target}: {e}")),
        )?;
        match sys::mount(src, target, fstype, flags) {
            Ok(()) => {}
            // The kernel may already have mounted devtmpfs (CONFIG_DEVTMPFS_MOUNT).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                return Err(StepError {
                    step: "mount",
                    detail: format!("{fstype} on {target}: {e}"),
                })
            }
        }
    }
    Ok(())
}

/// One line of modules.dep: a module path and the paths it depends on.
#[derive(Debug, PartialEq)]
struct DepLine {
    module: String,
    deps: Vec<String>,
}

/// Parse modules.dep (`path: dep dep …`). The builder writes it in load order.
fn parse_modules_dep(text: &str) -> Result<Vec<DepLine>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (module, deps) = line
            .split_once(':')
            .ok_or_else(|| format!("modules.dep line {}: no ':'", n + 1))?;
        if module.is_empty() || module.contains("..") {
            return Err(format!(
                "modules.dep line {}: bad module path {module:?}",
                n + 1
            ));
        }
        out.push(DepLine {
            module: module.to_string(),
            deps: deps.split_whitespace().map(str::to_string).collect(),
        });
    }
    Ok(out)
}

/// What happened to the packed modules.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Loaded (or already present).
    pub loaded: Vec<String>,
    /// Refused with ENODEV: a driver for hardware this machine does not have (sev-guest off
    /// SNP, tdx-guest off TDX, hv_vmbus off Hyper-V), and the modules depending on one. Platform detection decides later, explicitly, what is needed.
    pub absent: Vec<String>,
}

/// Load every module of modules.dep in file order, checking that dependencies came first.
pub fn load_modules(dir: &Path) -> Result<Loaded, StepError> {
    let dep_path = dir.join("modules.dep");
    let text = match fs::read_to_string(&dep_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return step("modules", Err(format!("{}: {e}", dep_path.display()))),
    };
    let lines = step("modules", parse_modules_dep(&text))?;
    let mut out = Loaded::default();
    for line in &lines {
        // A driver on top of an absent bus (hv_netvsc without Hyper-V's hv_vmbus) is absent
        // too: the hardware it drives cannot be here.
        if line.deps.iter().any(|d| out.absent.contains(d)) {
            out.absent.push(line.module.clone());
            continue;
        }
        if let Some(missing) = line.deps.iter().find(|d| !out.loaded.contains(d)) {
            return step(
                "modules",
                Err(format!(
                    "{} needs {missing}, which is not loaded before it",
                    line.module
                )),
            );
        }
        let path: PathBuf = dir.join(&line.module);
        let file = step(
            "modules",
            File::open(&path).map_err(|e| format!("{}: {e}", path.display())),
        )?;
        match sys::finit_module(&file) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                out.absent.push(line.module.clone());
                continue;
            }
            Err(e) => return step("modules", Err(format!("{}: {e}", line.module))),
        }
        out.loaded.push(line.module.clone());
    }
    Ok(out)
}

pub fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_parses_in_order() {
        let text = "kernel/a.ko:\nkernel/b.ko: kernel/a.ko\n\n";
        let lines = parse_modules_dep(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].deps, vec!["kernel/a.ko".to_string()]);
    }

    #[test]
    fn modules_dep_rejects_garbage() {
        assert!(parse_modules_dep("no colon here\n").is_err());
        assert!(parse_modules_dep("../x.ko:\n").is_err());
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/vsock.ko"), "vsock");
    }
}
