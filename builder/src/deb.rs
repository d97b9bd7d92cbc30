//! Reading Debian binary packages (`.deb`, deb(5)): an `ar` archive holding `debian-binary`,
//! `control.tar.*` and `data.tar.*`. Pure: bytes in, files out.

use std::collections::BTreeMap;
use std::io::Read;

/// Errors reading a .deb.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("not a Debian package (ar archive): {0}")]
    Ar(#[source] std::io::Error),
    #[error("member {member}: {source}")]
    Member {
        member: String,
        #[source]
        source: std::io::Error,
    },
    #[error("member {0}: unsupported compression (supported: .tar, .tar.xz)")]
    Compression(String),
    #[error("missing member {0}")]
    Missing(&'static str),
    #[error("debian-binary is {0:?}, expected \"2.0\"")]
    Format(String),
    #[error("control file: field {0} missing")]
    ControlField(&'static str),
}

/// The fields of `control` that identify a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

struct Members {
    control: (String, Vec<u8>),
    data: (String, Vec<u8>),
}

fn members(deb: &[u8]) -> Result<Members, DebError> {
    let mut archive = ar::Archive::new(deb);
    let mut binary = None;
    let mut control = None;
    let mut data = None;
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(DebError::Ar)?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|source| DebError::Member {
                member: name.clone(),
                source,
            })?;
        if name == "debian-binary" {
            binary = Some(bytes);
        } else if name.starts_with("control.tar") {
            control = Some((name, bytes));
        } else if name.starts_with("data.tar") {
            data = Some((name, bytes));
        }
    }
    let binary = binary.ok_or(DebError::Missing("debian-binary"))?;
    let version = String::from_utf8_lossy(&binary).trim().to_string();
    if version != "2.0" {
        return Err(DebError::Format(version));
    }
    Ok(Members {
        control: control.ok_or(DebError::Missing("control.tar.*"))?,
        data: data.ok_or(DebError::Missing("data.tar.*"))?,
    })
}

fn decompressed<'a>(name: &str, bytes: &'a [u8]) -> Result<Box<dyn Read + 'a>, DebError> {
    if name.ends_with(".tar.xz") {
        Ok(Box::new(liblzma::read::XzDecoder::new(bytes)))
    } else if name.ends_with(".tar") {
        Ok(Box::new(bytes))
    } else {
        Err(DebError::Compression(name.to_string()))
    }
}

/// Normalise a tar path: strip a leading `./` or `/`.
fn norm(path: &str) -> &str {
    path.trim_start_matches("./").trim_start_matches('/')
}

/// Every regular file of `tar_name` whose normalised path `want` accepts.
fn extract_tar(
    tar_name: &str,
    bytes: &[u8],
    mut want: impl FnMut(&str) -> bool,
) -> Result<BTreeMap<String, Vec<u8>>, DebError> {
    let io = |source| DebError::Member {
        member: tar_name.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(decompressed(tar_name, bytes)?);
    let mut out = BTreeMap::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let path = norm(&path).to_string();
        if want(&path) {
            let mut content = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut content).map_err(io)?;
            out.insert(path, content);
        }
    }
    Ok(out)
}

/// Parse the package's identity from its `control` file.
pub fn control(deb: &[u8]) -> Result<Control, DebError> {
    let m = members(deb)?;
    let files = extract_tar(&m.control.0, &m.control.1, |p| p == "control")?;
    let text = files
        .get("control")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or(DebError::Missing("control.tar.*/control"))?;
    let get = |key: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .ok_or(DebError::ControlField(key))
    };
    Ok(Control {
        package: get("Package")?,
        version: get("Version")?,
        architecture: get("Architecture")?,
    })
}

/// Extract regular files from `data.tar.*` whose path (without leading `./`) `want` accepts.
pub fn extract(
    deb: &[u8],
    want: impl FnMut(&str) -> bool,
) -> Result<BTreeMap<String, Vec<u8>>, DebError> {
    let m = members(deb)?;
    extract_tar(&m.data.0, &m.data.1, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn deb_of(control: &[u8], data: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut a = ar::Builder::new(&mut out);
            let members: Vec<(&str, Vec<u8>)> = vec![
                ("debian-binary", b"2.0\n".to_vec()),
                ("control.tar", tar_of(&[("./control", control)])),
                ("data.tar", tar_of(data)),
            ];
            for (name, bytes) in members {
                let h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
                a.append(&h, bytes.as_slice()).unwrap();
            }
        }
        out
    }

    #[test]
    fn reads_control_and_files() {
        let deb = deb_of(
            b"Package: p\nVersion: 1.0-1\nArchitecture: amd64\n",
            &[("./boot/vmlinuz", b"kernel"), ("./usr/x", b"x")],
        );
        let c = control(&deb).unwrap();
        assert_eq!(c.package, "p");
        assert_eq!(c.version, "1.0-1");
        let files = extract(&deb, |p| p.starts_with("boot/")).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files["boot/vmlinuz"], b"kernel");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(control(b"not a deb").is_err());
        let mut deb = deb_of(b"Package: p\n", &[]);
        assert!(matches!(
            control(&deb),
            Err(DebError::ControlField("Version"))
        ));
        deb.truncate(deb.len() / 2);
        assert!(control(&deb).is_err());
    }
}
