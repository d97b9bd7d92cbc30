//! Where an image's blobs are read from: an OCI image layout directory, or a tar archive
//! holding one (`docker save` since Engine 25, `skopeo copy … oci-archive:`, `podman save
//! --format oci-archive`). Reads files; no network.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{check_digest, Blobs, OciError};

/// Blobs of an image layout directory or archive.
pub enum Source {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        file: File,
        /// Member name (without a leading `./`) → (offset of its data, size).
        members: HashMap<String, (u64, u64)>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let what = what.into();
    move |source| OciError::Io { what, source }
}

impl Source {
    /// Open `path`: a directory with `oci-layout`, or an archive with one.
    pub fn open(path: &Path) -> Result<Source, OciError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(io(&shown))?;
        let legacy = || {
            OciError::Unsupported(format!(
                "{shown}: no oci-layout (an image layout is needed: `docker save` from Docker 25 \
                 or later, or `skopeo copy docker-archive:… oci:…`)"
            ))
        };
        if meta.is_dir() {
            if !path.join("oci-layout").is_file() {
                return Err(legacy());
            }
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(io(&shown))?;
        let mut members = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries().map_err(io(&shown))? {
                let entry = entry.map_err(io(&shown))?;
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let name = name.trim_start_matches("./").to_string();
                members.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        if !members.contains_key("oci-layout") {
            return Err(legacy());
        }
        Ok(Source::Archive {
            path: path.to_path_buf(),
            file,
            members,
        })
    }
}

impl Blobs for Source {
    fn blob(&mut self, digest: &str) -> Result<Vec<u8>, OciError> {
        check_digest(digest)?;
        let rel = format!("blobs/sha256/{}", &digest[7..]);
        match self {
            Source::Dir(dir) => {
                let p = dir.join(&rel);
                let shown = p.display().to_string();
                // A regular file of bounded size only (not a FIFO, not /dev/zero behind a
                // symlink), read through a limit.
                let meta = match std::fs::metadata(&p) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(OciError::Missing(digest.to_string()))
                    }
                    Err(e) => return Err(io(shown)(e)),
                };
                if !meta.is_file() || meta.len() > super::MAX_UNCOMPRESSED {
                    return Err(OciError::Unsupported(format!(
                        "{shown}: not a regular file of at most {} bytes",
                        super::MAX_UNCOMPRESSED
                    )));
                }
                let mut b = Vec::with_capacity(meta.len() as usize);
                File::open(&p)
                    .and_then(|f| f.take(super::MAX_UNCOMPRESSED + 1).read_to_end(&mut b))
                    .map_err(io(&shown))?;
                if b.len() as u64 > super::MAX_UNCOMPRESSED {
                    return Err(OciError::TooLarge);
                }
                Ok(b)
            }
            Source::Archive {
                path,
                file,
                members,
            } => {
                let Some(&(off, size)) = members.get(&rel) else {
                    return Err(OciError::Missing(digest.to_string()));
                };
                if size > super::MAX_UNCOMPRESSED {
                    return Err(OciError::TooLarge);
                }
                let what = format!("{}: {rel}", path.display());
                file.seek(SeekFrom::Start(off)).map_err(io(&what))?;
                let mut b = Vec::with_capacity(size as usize);
                file.take(size).read_to_end(&mut b).map_err(io(&what))?;
                Ok(b)
            }
        }
    }
}
