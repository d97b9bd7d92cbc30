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
        let path = target_dir.join(target).join("guest").join(p);
        let bytes = std::fs::read(&path).map_err(|source| CargoError::Output {
            package: p.clone(),
            path: path.clone(),
            source,
        })?;
        out.insert(p.clone(), bytes);
    }
    Ok(out)
}
