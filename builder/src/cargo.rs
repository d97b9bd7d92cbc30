//! Building the guest binaries (guest-init and crate workloads) from source, reproducibly:
//! `cargo build --locked --profile guest --target <guest target>`, with the checkout path and
//! cargo home remapped so neither leaks into the binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target guest binaries are built for: fully static, libc included in the toolchain.
pub const DEFAULT_GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Errors building guest binaries.
#[derive(Debug, thiserror::Error)]
pub enum CargoError {
    #[error("cannot run cargo: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`cargo locate-project` in {dir} failed: {stderr}")]
    Locate { dir: PathBuf, stderr: String },
    #[error("{path}: cannot read crate manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error(
        "cargo build of {packages} for {target} failed ({status}); see the cargo output above"
    )]
    Build {
        packages: String,
        target: String,
        status: String,
    },
    #[error("cargo built {package} but {path} is missing: {source}")]
    Output {
        package: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The workspace root containing `dir`.
pub fn workspace_root(dir: &Path) -> Result<PathBuf, CargoError> {
    let out = Command::new(cargo())
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .current_dir(dir)
        .output()
        .map_err(CargoError::Spawn)?;
    if !out.status.success() {
        return Err(CargoError::Locate {
            dir: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let manifest = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf()))
}

/// The package name in `<dir>/Cargo.toml`.
pub fn package_name(dir: &Path) -> Result<String, CargoError> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| CargoError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| CargoError::Manifest {
        path: path.clone(),
        reason: e.to_string().lines().next().unwrap_or("").to_string(),
    })?;
    value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or(CargoError::Manifest {
            path,
            reason: "no [package] name".into(),
        })
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cargo")
        })
}

/// The rustc flags of a guest build. Paths are remapped so that the checkout location and
/// cargo home do not reach the binary.
pub fn guest_rustflags(workspace: &Path) -> Vec<String> {
    vec![
        format!("--remap-path-prefix={}=/dcr", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home().display()),
        "-Ctarget-feature=+crt-static".to_string(),
    ]
}

/// Is `name` one of the variables cargo sets for the crates, tests and build scripts it runs
/// (The Cargo Book, "Environment variables Cargo sets")? Configuration (`CARGO_HOME`,
/// `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, `CARGO_NET_*`, …) is not.
fn crate_env_of_cargo(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "CARGO_PKG_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
        "CARGO_MANIFEST_",
    ];
    const NAMES: &[&str] = &[
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_MAKEFLAGS",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Build `packages` (each with a binary of the same name) and return their bytes.
pub fn build(
    workspace: &Path,
    packages: &[String],
    target: &str,
) -> Result<BTreeMap<String, Vec<u8>>, CargoError> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--profile",
            "guest",
            "--target",
            target,
        ])
        // CARGO_ENCODED_RUSTFLAGS wins over RUSTFLAGS and config files: the guest's flags are
        // exactly these, whatever the caller's environment says.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            guest_rustflags(workspace).join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTC_WRAPPER")
        .stdin(Stdio::null());
    // The variables cargo sets for a crate it runs (dcr-build started by `cargo test` or
    // `cargo run` inherits them): build scripts that read them through rerun-if-env-changed
    // (ring reads CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …) would otherwise be rerun, and the guest
    // relinked, whenever dcr-build is started from a shell instead (the bytes stay the same;
    // the time does not: ~5 minutes on 2 cores).
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(crate_env_of_cargo) {
            cmd.env_remove(&name);
        }
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    eprintln!(
        "+ cargo build --locked --profile guest --target {target} -p {}",
        packages.join(" -p ")
    );
    let status = cmd.status().map_err(CargoError::Spawn)?;
    if !status.success() {
        return Err(CargoError::Build {
            packages: packages.join(", "),
            target: target.to_string(),
            status: status.to_string(),
        });
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let mut out = BTreeMap::new();
    for p in packages {
        // A WebAssembly target's executables end in .wasm.
        let file = if target.starts_with("wasm32-") {
            format!("{p}.wasm")
        } else {
            p.clone()
        };
        let path = target_dir.join(target).join("guest").join(file);
        let bytes = std::fs::read(&path).map_err(|source| CargoError::Output {
            package: p.clone(),
            path: path.clone(),
            source,
        })?;
        out.insert(p.clone(), bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::crate_env_of_cargo;

    #[test]
    fn what_cargo_sets_for_a_crate_is_dropped_and_configuration_kept() {
        // What `cargo test` gives a test binary (and so a dcr-build it starts), and what ring's
        // build script tracks with rerun-if-env-changed.
        for n in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_EXE_dcr-build",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ] {
            assert!(crate_env_of_cargo(n), "{n} is set by cargo for a crate");
        }
        // Configuration the caller chose stays (and CARGO itself, the binary to run).
        for n in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_NET_OFFLINE",
            "CARGO_HTTP_CAINFO",
            "CARGO_REGISTRIES_CRATES_IO_PROTOCOL",
            "CARGO_ENCODED_RUSTFLAGS",
        ] {
            assert!(!crate_env_of_cargo(n), "{n} is configuration");
        }
    }
}
