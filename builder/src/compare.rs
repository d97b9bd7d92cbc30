//! `dcr-build compare`: are two build outputs identical, and if not, what exactly differs —
//! the cpio entry, the PE section, the measurement.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::fetch::sha256;
use crate::{initrd, uki};

/// Errors reading the directories.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The comparison: one line per difference.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<String>,
    pub differences: Vec<String>,
}

impl Report {
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }
}

fn files_of(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, CompareError> {
    let err = |source| CompareError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(err)? {
            let p = e.map_err(err)?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let bytes = std::fs::read(&p).map_err(|source| CompareError::Read {
                    path: p.clone(),
                    source,
                })?;
                out.insert(rel, bytes);
            }
        }
    }
    Ok(out)
}

/// Compare two output directories file by file.
pub fn compare_dirs(a: &Path, b: &Path) -> Result<Report, CompareError> {
    let fa = files_of(a)?;
    let fb = files_of(b)?;
    let mut report = Report::default();
    let names: BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    for name in names {
        report.files.push(name.clone());
        match (fa.get(name), fb.get(name)) {
            (Some(x), Some(y)) => report.differences.extend(compare_file(name, x, y)),
            (Some(_), None) => report
                .differences
                .push(format!("{name}: only in {}", a.display())),
            (None, Some(_)) => report
                .differences
                .push(format!("{name}: only in {}", b.display())),
            (None, None) => {}
        }
    }
    Ok(report)
}

fn short(h: &dcr_protocol::measurements::Sha256) -> String {
    h.to_hex()[..16].to_string()
}

/// Both versions parsed, or the one line saying why not.
fn both<T, E: std::fmt::Display>(
    name: &str,
    what: &str,
    a: Result<T, E>,
    b: Result<T, E>,
) -> Result<(T, T), Vec<String>> {
    match (a, b) {
        (Ok(x), Ok(y)) => Ok((x, y)),
        (ra, rb) => Err(vec![format!(
            "{name}: {what} ({})",
            ra.err()
                .or(rb.err())
                .map(|e| e.to_string())
                .unwrap_or_default()
        )]),
    }
}

/// Compare one file's two versions; explain by format where known.
pub fn compare_file(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    if a == b {
        return Vec::new();
    }
    let mut out = vec![format!(
        "{name}: sha256 {} → {} (size {} → {})",
        sha256(a),
        sha256(b),
        a.len(),
        b.len()
    )];
    if name.ends_with(".cpio") {
        out.extend(compare_cpio(name, a, b));
    } else if name.ends_with(".efi") {
        out.extend(compare_pe(name, a, b));
    } else if name.ends_with(".json") {
        out.extend(compare_json(name, a, b));
    } else if name.ends_with(".raw") || name.ends_with(".vhd") {
        out.extend(compare_disk(name, a, b));
    } else if name.ends_with(".eif") {
        out.extend(compare_eif(name, a, b));
    } else if name.starts_with("rootfs-") && name.ends_with(".img") {
        out.extend(compare_rootfs(name, a, b));
    }
    out
}

/// An oci workload's root device: the EROFS files that differ (path, mode, owner, size,
/// content), then whether the verity tree does (it always does when a file does).
fn compare_rootfs(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    let ((la, ba), (lb, bb)) = match both(
        name,
        "cannot read the EROFS root",
        crate::erofs::list(a),
        crate::erofs::list(b),
    ) {
        Ok(pair) => pair,
        Err(line) => return line,
    };
    let key = |e: &crate::erofs::Entry| {
        format!(
            "mode {:o} owner {}:{} nlink {} size {} sha256 {}",
            e.mode,
            e.uid,
            e.gid,
            e.nlink,
            e.size,
            &hex::encode(e.sha256)[..16]
        )
    };
    let ma: BTreeMap<&str, String> = la.iter().map(|e| (e.path.as_str(), key(e))).collect();
    let mb: BTreeMap<&str, String> = lb.iter().map(|e| (e.path.as_str(), key(e))).collect();
    let mut out = Vec::new();
    let paths: BTreeSet<&str> = ma.keys().chain(mb.keys()).copied().collect();
    for p in paths {
        match (ma.get(p), mb.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                // Directories change with their entries; name files and links only.
                let dir = x.starts_with("mode 40") && y.starts_with("mode 40");
                if !dir {
                    out.push(format!("{name}: file /{p}: {x} → {y}"));
                }
            }
            (Some(x), None) => out.push(format!("{name}: file /{p}: removed ({x})")),
            (None, Some(y)) => out.push(format!("{name}: file /{p}: added ({y})")),
            (None, None) => {}
        }
    }
    let (ea, eb) = (ba as usize * 4096, bb as usize * 4096);
    if a.get(ea..) != b.get(eb..) {
        out.push(format!(
            "{name}: the dm-verity superblock and hash tree differ (the root hash follows the data)"
        ));
    }
    if out.is_empty() {
        out.push(format!("{name}: same files, the EROFS layout differs"));
    }
    out
}

/// An Enclave Image File: the header fields, then section by section (a ramdisk's cpio
/// entries, the metadata's JSON fields), then the PCRs each difference moves.
fn compare_eif(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    use crate::eif::{Eif, SectionType};
    let (ea, eb) = match both(name, "cannot read", Eif::parse(a), Eif::parse(b)) {
        Ok(pair) => pair,
        Err(line) => return line,
    };
    let mut out = Vec::new();
    let (ha, hb) = (&ea.header, &eb.header);
    for (what, x, y) in [
        (
            "flags",
            u64::from(ha.flags.get()),
            u64::from(hb.flags.get()),
        ),
        ("default memory", ha.default_mem.get(), hb.default_mem.get()),
        (
            "default vCPUs",
            ha.default_cpus.get(),
            hb.default_cpus.get(),
        ),
        (
            "sections",
            u64::from(ha.num_sections.get()),
            u64::from(hb.num_sections.get()),
        ),
    ] {
        if x != y {
            out.push(format!("{name}: header {what} {x} → {y}"));
        }
    }
    let mut ramdisk = 0;
    for (i, (sa, sb)) in ea.sections.iter().zip(&eb.sections).enumerate() {
        let label = if sa.kind == SectionType::Ramdisk {
            ramdisk += 1;
            format!("section {i} (ramdisk {})", ramdisk - 1)
        } else {
            format!("section {i} ({})", sa.kind.as_str())
        };
        if sa.kind != sb.kind {
            out.push(format!(
                "{name}: {label}: type {} → {}",
                sa.kind.as_str(),
                sb.kind.as_str()
            ));
            continue;
        }
        let (da, db) = (&a[sa.data.clone()], &b[sb.data.clone()]);
        if da == db {
            continue;
        }
        out.push(format!(
            "{name}: {label}: sha256 {} → {} (size {} → {})",
            sha256(da),
            sha256(db),
            da.len(),
            db.len()
        ));
        match sa.kind {
            SectionType::Ramdisk => out.extend(compare_cpio(&format!("{name}: {label}"), da, db)),
            SectionType::Metadata => out.extend(compare_json(&format!("{name}: {label}"), da, db)),
            SectionType::Cmdline => out.push(format!(
                "{name}: {label}: {:?} → {:?}",
                String::from_utf8_lossy(da),
                String::from_utf8_lossy(db)
            )),
            _ => {}
        }
    }
    let (pa, pb) = (ea.pcrs(a), eb.pcrs(b));
    for (i, x, y) in [
        (0, pa.pcr0, pb.pcr0),
        (1, pa.pcr1, pb.pcr1),
        (2, pa.pcr2, pb.pcr2),
    ] {
        if x != y {
            out.push(format!(
                "{name}: PCR{i} {} → {}",
                hex::encode(x),
                hex::encode(y)
            ));
        }
    }
    if out.is_empty() {
        out.push(format!(
            "{name}: sections and PCRs equal; the bytes differ in the header (CRC)"
        ));
    }
    out
}

/// A disk image: its identifiers, the VHD footer, then each ESP file (a changed UKI is
/// explained by the image.efi lines).
fn compare_disk(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    let (da, db) = match both(
        name,
        "cannot read",
        crate::disk::inspect(a),
        crate::disk::inspect(b),
    ) {
        Ok(pair) => pair,
        Err(line) => return line,
    };
    let mut out = Vec::new();
    let mut diff = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name}: {what} {x} → {y}"));
        }
    };
    diff(
        "GPT disk GUID",
        da.disk_guid.to_text(),
        db.disk_guid.to_text(),
    );
    diff(
        "ESP partition GUID",
        da.esp_guid.to_text(),
        db.esp_guid.to_text(),
    );
    diff(
        "ESP LBAs",
        format!("{}..={}", da.esp_first_lba, da.esp_last_lba),
        format!("{}..={}", db.esp_first_lba, db.esp_last_lba),
    );
    diff(
        "FAT serial",
        format!("{:08X}", da.fat_serial),
        format!("{:08X}", db.fat_serial),
    );
    // The oci roots' partitions (their contents are rootfs-<name>.img, compared file by file
    // under that name).
    let parts = |f: &crate::disk::DiskFacts| -> BTreeMap<String, String> {
        f.partitions
            .iter()
            .map(|(n, first, last, h)| {
                (
                    n.clone(),
                    format!("LBAs {first}..={last} sha256 {}", hex::encode(h)),
                )
            })
            .collect()
    };
    let (pa, pb) = (parts(&da), parts(&db));
    for n in pa
        .keys()
        .chain(pb.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        diff(
            &format!("partition {n}"),
            pa.get(n).cloned().unwrap_or_else(|| "absent".into()),
            pb.get(n).cloned().unwrap_or_else(|| "absent".into()),
        );
    }
    diff(
        "VHD footer (creator, unique id, timestamp)",
        format!("{:?}", da.vhd),
        format!("{:?}", db.vhd),
    );
    let fa: BTreeMap<&str, &[u8]> = da
        .files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let fb: BTreeMap<&str, &[u8]> = db
        .files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    for p in fa
        .keys()
        .chain(fb.keys())
        .copied()
        .collect::<BTreeSet<&str>>()
    {
        match (fa.get(p), fb.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => out.push(format!(
                "{name}: ESP file {p}: sha256 {} → {}",
                sha256(x),
                sha256(y)
            )),
            (Some(_), None) => out.push(format!("{name}: ESP file {p} only in the first")),
            (None, _) => out.push(format!("{name}: ESP file {p} only in the second")),
        }
    }
    out
}

fn compare_cpio(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    let (la, lb) = match both(
        name,
        "cannot list entries",
        initrd::list(a),
        initrd::list(b),
    ) {
        Ok(pair) => pair,
        Err(line) => return line,
    };
    let ma: BTreeMap<&str, &initrd::EntryInfo> = la.iter().map(|e| (e.path.as_str(), e)).collect();
    let mb: BTreeMap<&str, &initrd::EntryInfo> = lb.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = Vec::new();
    let paths: BTreeSet<&str> = ma.keys().chain(mb.keys()).copied().collect();
    for p in paths {
        match (ma.get(p), mb.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let mut what = Vec::new();
                if x.mode != y.mode {
                    what.push(format!("mode {:o} → {:o}", x.mode, y.mode));
                }
                if x.size != y.size {
                    what.push(format!("size {} → {}", x.size, y.size));
                }
                if x.sha256 != y.sha256 {
                    what.push(format!(
                        "sha256 {} → {}",
                        short(&x.sha256),
                        short(&y.sha256)
                    ));
                }
                for (field, va, vb) in [
                    ("uid", x.uid, y.uid),
                    ("gid", x.gid, y.gid),
                    ("mtime", x.mtime, y.mtime),
                    ("ino", x.ino, y.ino),
                    ("nlink", x.nlink, y.nlink),
                ] {
                    if va != vb {
                        what.push(format!("{field} {va} → {vb}"));
                    }
                }
                if x.rdev != y.rdev {
                    what.push(format!("rdev {:?} → {:?}", x.rdev, y.rdev));
                }
                out.push(format!("{name}: cpio entry {p}: {}", what.join(", ")));
            }
            (Some(x), None) => out.push(format!(
                "{name}: cpio entry {p}: removed (mode {:o}, size {}, sha256 {})",
                x.mode,
                x.size,
                short(&x.sha256)
            )),
            (None, Some(y)) => out.push(format!(
                "{name}: cpio entry {p}: added (mode {:o}, size {}, sha256 {})",
                y.mode,
                y.size,
                short(&y.sha256)
            )),
            (None, None) => {}
        }
    }
    if out.is_empty() {
        out.push(format!("{name}: same entries, archive framing differs"));
    }
    out
}

fn compare_pe(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    let (sa, sb) = match both(
        name,
        "cannot read PE sections",
        uki::sections(a),
        uki::sections(b),
    ) {
        Ok(pair) => pair,
        Err(line) => return line,
    };
    let mut out = Vec::new();
    let names: BTreeSet<&str> = sa
        .iter()
        .chain(sb.iter())
        .map(|s| s.name.as_str())
        .collect();
    for n in names {
        let x = sa.iter().find(|s| s.name == n);
        let y = sb.iter().find(|s| s.name == n);
        match (x, y) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let mut what = Vec::new();
                if x.virtual_size != y.virtual_size {
                    what.push(format!("size {} → {}", x.virtual_size, y.virtual_size));
                }
                if x.sha256 != y.sha256 {
                    what.push(format!(
                        "sha256 {} → {}",
                        short(&x.sha256),
                        short(&y.sha256)
                    ));
                }
                if x.virtual_address != y.virtual_address {
                    what.push(format!(
                        "address {:#x} → {:#x}",
                        x.virtual_address, y.virtual_address
                    ));
                }
                if x.raw_offset != y.raw_offset {
                    what.push(format!(
                        "file offset {:#x} → {:#x}",
                        x.raw_offset, y.raw_offset
                    ));
                }
                if x.characteristics != y.characteristics {
                    what.push(format!(
                        "characteristics {:#x} → {:#x}",
                        x.characteristics, y.characteristics
                    ));
                }
                out.push(format!("{name}: PE section {n}: {}", what.join(", ")));
            }
            (Some(_), None) => out.push(format!("{name}: PE section {n}: removed")),
            (None, Some(_)) => out.push(format!("{name}: PE section {n}: added")),
            (None, None) => {}
        }
    }
    if let (Ok((ca, _)), Ok((cb, _))) = (uki::checksum_status(a), uki::checksum_status(b)) {
        if ca != cb {
            out.push(format!("{name}: PE header CheckSum {ca:#x} → {cb:#x}"));
        }
    }
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn compare_json(name: &str, a: &[u8], b: &[u8]) -> Vec<String> {
    let (Ok(va), Ok(vb)) = (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) else {
        return vec![format!("{name}: not JSON in one of the directories")];
    };
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &va, &mut fa);
    flatten("", &vb, &mut fb);
    let keys: BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        match (fa.get(k), fb.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => out.push(format!(
                "{name}: {k}: {} → {}",
                x.map(String::as_str).unwrap_or("(absent)"),
                y.map(String::as_str).unwrap_or("(absent)")
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_leaf_differences_are_named() {
        let a = br#"{"inputs":{"w":{"sha256":"aa"}},"recipe":"r"}"#;
        let b = br#"{"inputs":{"w":{"sha256":"bb"}},"recipe":"r"}"#;
        let d = compare_file("measurements.json", a, b);
        assert!(
            d.iter()
                .any(|l| l.contains("inputs.w.sha256: \"aa\" → \"bb\"")),
            "{d:?}"
        );
    }

    #[test]
    fn cpio_entry_differences_are_named() {
        let mut t = initrd::Tree::new();
        t.add_file("workloads/w", vec![1, 2], 0o755).unwrap();
        let a = t.to_cpio(0);
        let mut t = initrd::Tree::new();
        t.add_file("workloads/w", vec![1, 3], 0o755).unwrap();
        let b = t.to_cpio(0);
        let d = compare_file("initrd.cpio", &a, &b);
        assert!(
            d.iter()
                .any(|l| l.starts_with("initrd.cpio: cpio entry workloads/w: sha256")),
            "{d:?}"
        );
        assert!(compare_file("initrd.cpio", &a, &a).is_empty());
    }
}
