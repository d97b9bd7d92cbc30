//! Getting pinned inputs: Debian packages from the local cache or `apt-get download`, local
//! files, each checked against its SHA-256 before use. This is the only module that runs
//! apt-get; it never reads /boot or the host's installed packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use dcr_protocol::measurements::Sha256;
use sha2::Digest;

use crate::deb;
use crate::recipe::DebPin;

/// Errors getting an input.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("input {input}: sha256 mismatch: recipe pins {expected}, got {actual}")]
    Mismatch {
        input: String,
        expected: Sha256,
        actual: Sha256,
    },
    #[error("input {input}: {path}: {source}")]
    Read {
        input: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input {input}: {path}: {reason}")]
    Refused {
        input: String,
        path: PathBuf,
        reason: String,
    },
    #[error("input {input}: `apt-get download {spec}` failed ({status}): {stderr}")]
    Apt {
        input: String,
        spec: String,
        status: String,
        stderr: String,
    },
    #[error("input {input}: after apt-get download, no .deb for {spec} in {dir}")]
    NotDownloaded {
        input: String,
        spec: String,
        dir: PathBuf,
    },
    #[error("input {input}: {path}: {source}")]
    Deb {
        input: String,
        path: PathBuf,
        #[source]
        source: deb::DebError,
    },
    #[error("input {input}: package {spec} has no file {path}")]
    MissingInDeb {
        input: String,
        spec: String,
        path: String,
    },
    #[error("cache directory {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(bytes).into())
}

/// Fail unless `bytes` hash to `expected`.
pub fn check(input: &str, bytes: &[u8], expected: Sha256) -> Result<(), FetchError> {
    let actual = sha256(bytes);
    if actual != expected {
        return Err(FetchError::Mismatch {
            input: input.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// The largest local input (kernel, firmware, stub, module, workload file).
pub const MAX_LOCAL_INPUT: u64 = 4 << 30;
/// The largest contract (TOML) and recipe.
pub const MAX_CONTRACT: u64 = 1 << 20;

/// Read a local input file (a regular file of at most [`MAX_LOCAL_INPUT`] bytes).
pub fn read_local(input: &str, path: &Path) -> Result<Vec<u8>, FetchError> {
    read_local_max(input, path, MAX_LOCAL_INPUT)
}

fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Read a local input that must be a regular file of at most `max` bytes. Devices, FIFOs and
/// the like are refused before they are opened (`/dev/zero` never ends, a FIFO blocks).
pub fn read_local_max(input: &str, path: &Path, max: u64) -> Result<Vec<u8>, FetchError> {
    use std::io::Read;
    let read_err = |source| FetchError::Read {
        input: input.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let refused = |reason: String| FetchError::Refused {
        input: input.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(refused(format!(
            "{} (expected a regular file)",
            file_kind(meta.file_type())
        )));
    }
    let too_big = |n: u64| refused(format!("{n} bytes or more, over the limit of {max} bytes"));
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    let f = std::fs::File::open(path).map_err(read_err)?;
    // The file may have changed between the stat and the open: check what was opened.
    let meta = f.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(refused(format!(
            "{} (expected a regular file)",
            file_kind(meta.file_type())
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    f.take(max + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The package cache: `$DCR_CACHE`, else `$XDG_CACHE_HOME/dcr`, else `~/.cache/dcr`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DCR_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dcr");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("dcr")
}

/// A verified .deb in memory.
pub struct DebPackage {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: Sha256,
}

fn spec(pin: &DebPin) -> String {
    format!("{}={}", pin.package, pin.version)
}

/// Does this .deb file hold exactly the pinned package?
fn matches(path: &Path, pin: &DebPin) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let c = deb::control(&bytes).ok()?;
    (c.package == pin.package && c.version == pin.version).then_some(bytes)
}

fn find_in(dir: &Path, pin: &DebPin) -> Option<(PathBuf, Vec<u8>)> {
    let prefix = format!("{}_", pin.package);
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .find_map(|p| matches(&p, pin).map(|b| (p, b)))
}

/// The machine's Debian mirror: the first `…/debian` URI in its apt sources (one-line and
/// deb822 formats), so that no mirror host is baked into dcr.
fn debian_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for word in text.split_whitespace() {
            let w = word.trim_end_matches('/');
            if (w.starts_with("http://") || w.starts_with("https://")) && w.ends_with("/debian") {
                return Some(w.to_string());
            }
        }
    }
    None
}

/// apt-get options for a private configuration that reads only `suite` (lists and package
/// cache under the dcr cache; the system's sources and caches are untouched).
fn private_apt(input: &str, pin: &DebPin, suite: &str) -> Result<Vec<String>, FetchError> {
    let dir = cache_dir().join(format!("apt-{suite}"));
    let io = |source| FetchError::Cache {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir.join("lists/partial")).map_err(io)?;
    std::fs::create_dir_all(dir.join("cache/archives/partial")).map_err(io)?;
    let mirror = debian_mirror().ok_or_else(|| FetchError::Apt {
        input: input.to_string(),
        spec: spec(pin),
        status: "not started".into(),
        stderr: "no Debian mirror in /etc/apt/sources* to fetch the suite from".into(),
    })?;
    let sources = dir.join("sources.list");
    std::fs::write(&sources, format!("deb {mirror} {suite} main\n")).map_err(io)?;
    Ok(vec![
        "-o".into(),
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "-o".into(),
        "Dir::Etc::sourceparts=-".into(),
        "-o".into(),
        format!("Dir::State::lists={}", dir.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "-o".into(),
        "APT::Get::List-Cleanup=0".into(),
    ])
}

fn apt_get(input: &str, pin: &DebPin, args: &[String], cwd: &Path) -> Result<(), FetchError> {
    eprintln!("+ apt-get {}", args.join(" "));
    let out = Command::new("apt-get")
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| FetchError::Apt {
            input: input.to_string(),
            spec: spec(pin),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rfind(|l| {
                !l.trim().is_empty() && !l.starts_with("W: Download is performed unsandboxed")
            })
            .unwrap_or("")
            .to_string();
        return Err(FetchError::Apt {
            input: input.to_string(),
            spec: spec(pin),
            status: out.status.to_string(),
            stderr: last,
        });
    }
    Ok(())
}

/// Find the pinned package in the dcr cache or apt's archive cache, or download it with
/// `apt-get download` into the dcr cache (for a `suite` outside the host's sources, through a
/// private apt configuration, updated first). The package's control fields must equal the pin,
/// and its SHA-256 too where the recipe pins it.
pub fn deb_package(input: &str, pin: &DebPin) -> Result<DebPackage, FetchError> {
    let cache = cache_dir().join("debs");
    let found = find_in(&cache, pin).or_else(|| find_in(Path::new("/var/cache/apt/archives"), pin));
    let (path, bytes) = match found {
        Some(f) => f,
        None => {
            std::fs::create_dir_all(&cache).map_err(|source| FetchError::Cache {
                path: cache.clone(),
                source,
            })?;
            let mut opts = Vec::new();
            if let Some(suite) = &pin.suite {
                opts = private_apt(input, pin, suite)?;
                let mut update = opts.clone();
                update.push("update".into());
                apt_get(input, pin, &update, &cache)?;
            }
            let mut download = opts;
            download.extend(["download".to_string(), spec(pin)]);
            apt_get(input, pin, &download, &cache)?;
            find_in(&cache, pin).ok_or_else(|| FetchError::NotDownloaded {
                input: input.to_string(),
                spec: spec(pin),
                dir: cache.clone(),
            })?
        }
    };
    let digest = sha256(&bytes);
    if let Some(expected) = pin.sha256 {
        check(
            &format!("{input} (.deb {})", path.display()),
            &bytes,
            expected.0,
        )?;
    }
    Ok(DebPackage {
        path,
        bytes,
        sha256: digest,
    })
}

/// Extract files from a verified package.
pub fn extract(
    input: &str,
    pkg: &DebPackage,
    want: impl FnMut(&str) -> bool,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, FetchError> {
    deb::extract(&pkg.bytes, want).map_err(|source| FetchError::Deb {
        input: input.to_string(),
        path: pkg.path.clone(),
        source,
    })
}

/// The `package=version` spec of a pin (for messages and `source` fields).
pub fn pin_spec(pin: &DebPin) -> String {
    spec(pin)
}
