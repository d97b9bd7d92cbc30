//! Kernel modules: find them by name, decompress them, read their `.modinfo`, and order them so
//! that every dependency is loaded before its users (what depmod + modprobe would do).
//! Pure: the module tree is given as bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use object::{Object, ObjectSection};

/// Errors resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("unknown kernel module {0:?}: not in the kernel's module tree nor built in")]
    Unknown(String),
    #[error("module {path}: cannot decompress: {source}")]
    Decompress {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("module {path}: unsupported compression (supported: .ko, .ko.xz)")]
    Compression { path: String },
    #[error("module {path}: not an ELF object with a .modinfo section: {reason}")]
    Modinfo { path: String, reason: String },
    #[error("module {path}: vermagic {vermagic:?} does not match kernel release {release:?}")]
    Vermagic {
        path: String,
        vermagic: String,
        release: String,
    },
    #[error("module {name}: two files provide it: {a} and {b}")]
    Duplicate { name: String, a: String, b: String },
    #[error("module dependency cycle through {0}")]
    Cycle(String),
}

/// Module names use `_`; file names may use `-`.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// A kernel's module tree: paths relative to `lib/modules/<release>/` and their bytes.
#[derive(Debug, Clone, Default)]
pub struct ModuleTree {
    pub release: String,
    /// `kernel/…/x.ko[.xz]` → file bytes as shipped.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Contents of `modules.builtin` (paths of built-in modules).
    pub builtin: String,
}

/// One module as packed into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedModule {
    /// Normalised module name.
    pub name: String,
    /// Path relative to `lib/modules/<release>/`, ending in `.ko` (decompressed).
    pub path: String,
    /// Path as shipped (e.g. `.ko.xz`).
    pub source_path: String,
    /// Decompressed object.
    pub bytes: Vec<u8>,
    /// Names of modules it depends on.
    pub deps: Vec<String>,
}

/// The resolution: modules in load order, and requested names that are built in.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    pub modules: Vec<PackedModule>,
    pub builtin: Vec<String>,
}

fn strip_ko(path: &str) -> Option<(&str, &str)> {
    for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
        if let Some(stem) = path.strip_suffix(ext) {
            return Some((stem, ext));
        }
    }
    None
}

fn decompress(path: &str, bytes: &[u8]) -> Result<Vec<u8>, KmodError> {
    match strip_ko(path).map(|(_, ext)| ext) {
        Some(".ko") => Ok(bytes.to_vec()),
        Some(".ko.xz") => {
            let mut out = Vec::new();
            liblzma::read::XzDecoder::new(bytes)
                .read_to_end(&mut out)
                .map_err(|source| KmodError::Decompress {
                    path: path.to_string(),
                    source,
                })?;
            Ok(out)
        }
        _ => Err(KmodError::Compression {
            path: path.to_string(),
        }),
    }
}

/// `key=value` pairs of an ELF module's `.modinfo` section.
pub fn modinfo(path: &str, object: &[u8]) -> Result<Vec<(String, String)>, KmodError> {
    let err = |reason: String| KmodError::Modinfo {
        path: path.to_string(),
        reason,
    };
    let file = object::File::parse(object).map_err(|e| err(e.to_string()))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| err("no .modinfo".into()))?;
    let data = section.data().map_err(|e| err(e.to_string()))?;
    Ok(data
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

impl ModuleTree {
    fn index(&self) -> Result<BTreeMap<String, String>, KmodError> {
        let mut index: BTreeMap<String, String> = BTreeMap::new();
        for path in self.files.keys() {
            let Some((stem, _)) = strip_ko(path) else {
                continue;
            };
            let name = normalise(stem.rsplit('/').next().unwrap_or(stem));
            if let Some(prev) = index.insert(name.clone(), path.clone()) {
                return Err(KmodError::Duplicate {
                    name,
                    a: prev,
                    b: path.clone(),
                });
            }
        }
        Ok(index)
    }

    fn builtin_names(&self) -> BTreeSet<String> {
        self.builtin
            .lines()
            .filter_map(|l| strip_ko(l.trim()))
            .map(|(stem, _)| normalise(stem.rsplit('/').next().unwrap_or(stem)))
            .collect()
    }

    /// Resolve `requested` names (and their dependencies) into load order.
    pub fn resolve(&self, requested: &[String]) -> Result<Resolution, KmodError> {
        let index = self.index()?;
        let builtin = self.builtin_names();
        let mut res = Resolution::default();
        let mut done: BTreeMap<String, ()> = BTreeMap::new();
        for name in requested {
            let name = normalise(name);
            if builtin.contains(&name) && !index.contains_key(&name) {
                res.builtin.push(name);
                continue;
            }
            self.visit(&name, &index, &mut done, &mut Vec::new(), &mut res.modules)?;
        }
        Ok(res)
    }

    fn visit(
        &self,
        name: &str,
        index: &BTreeMap<String, String>,
        done: &mut BTreeMap<String, ()>,
        stack: &mut Vec<String>,
        out: &mut Vec<PackedModule>,
    ) -> Result<(), KmodError> {
        if done.contains_key(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(KmodError::Cycle(name.to_string()));
        }
        let source_path = index
            .get(name)
            .ok_or_else(|| KmodError::Unknown(name.to_string()))?;
        let bytes = decompress(source_path, &self.files[source_path])?;
        let info = modinfo(source_path, &bytes)?;
        if let Some((_, vermagic)) = info.iter().find(|(k, _)| k == "vermagic") {
            if vermagic.split_whitespace().next() != Some(self.release.as_str()) {
                return Err(KmodError::Vermagic {
                    path: source_path.clone(),
                    vermagic: vermagic.clone(),
                    release: self.release.clone(),
                });
            }
        }
        let deps: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|d| !d.is_empty()))
            .map(normalise)
            .collect();
        stack.push(name.to_string());
        for dep in &deps {
            self.visit(dep, index, done, stack, out)?;
        }
        stack.pop();
        let (stem, _) = strip_ko(source_path).expect("indexed paths end in .ko*");
        out.push(PackedModule {
            name: name.to_string(),
            path: format!("{stem}.ko"),
            source_path: source_path.clone(),
            bytes,
            deps,
        });
        done.insert(name.to_string(), ());
        Ok(())
    }
}

/// `modules.dep` for the packed set, one line per module in load order; every dependency is
/// listed by path and appears on an earlier line.
pub fn modules_dep(modules: &[PackedModule]) -> String {
    let path_of: BTreeMap<&str, &str> = modules
        .iter()
        .map(|m| (m.name.as_str(), m.path.as_str()))
        .collect();
    let mut out = String::new();
    for m in modules {
        out.push_str(&m.path);
        out.push(':');
        for d in &m.deps {
            out.push(' ');
            out.push_str(path_of.get(d.as_str()).copied().unwrap_or(d));
        }
        out.push('\n');
    }
    out
}
