//! `dcr-build rootfs`: an OCI image flattened, packed as EROFS and protected by dm-verity,
//! checked by independent tools:
//!
//! - the layers are applied as umoci 0.4.7 applies them (`umoci unpack` of the same layout):
//!   the kernel's EROFS driver mounts our image (loop) and every path has the same type,
//!   content, symlink target, permission bits, owner and link count as umoci's tree, except
//!   what dcr normalises on purpose (set-uid/set-gid stripped, the FIFO left out);
//! - `fsck.erofs` finds the image consistent;
//! - the verity hash area equals what `veritysetup format` writes for the same data, salt and
//!   UUID, for trees of one to three levels; `veritysetup verify` accepts the device and
//!   refuses it after one flipped data byte;
//! - gzip, plain and zstd layers give the same tree; two builds are byte-identical; one byte
//!   changed in one layer file changes the root hash, and `dcr-build compare` names that file;
//! - a wrong pin, a blob whose bytes do not match its digest, a wrong diff_id and a
//!   directory without `oci-layout` are refused with one line naming the problem.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use dcr_tests::*;

const TOOLS: [&str; 6] = [
    "umoci",
    "fsck.erofs",
    "veritysetup",
    "zstd",
    "mount",
    "python3",
];

fn make_oci(dir: &Path, flags: &[&str]) -> String {
    let o = Command::new("python3")
        .arg(workspace().join("tests/data/make-oci.py"))
        .arg(dir)
        .args(flags)
        .output()
        .unwrap();
    assert!(o.status.success(), "make-oci.py: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// `dcr-build rootfs` of `oci` pinned by `pin` into `out` (`--json` when asked).
fn rootfs_run(oci: &Path, pin: &str, out: &Path, json: bool) -> std::process::Output {
    let (oci, out) = (oci.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["rootfs", "--oci", oci, "--digest", pin, "--out", out];
    if json {
        args.push("--json");
    }
    run_dcr_build(&args)
}

/// `dcr-build rootfs --json`: the summary.
fn rootfs(oci: &Path, pin: &str, out: &Path) -> serde_json::Value {
    let o = rootfs_run(oci, pin, out, true);
    assert!(o.status.success(), "dcr-build rootfs: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn refused(oci: &Path, pin: &str, out: &Path, want: &str) {
    let o = rootfs_run(oci, pin, out, false);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains(want), "wanted {want:?} in: {e}");
    assert!(!out.exists(), "a refused build left {}", out.display());
}

/// Every path under `root`: type, content digest or link target, permission bits, owner and
/// link count.
fn tree_of(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if m.is_file() {
                format!(
                    "file {} nlink {}",
                    sha256_hex(&std::fs::read(&p).unwrap()),
                    m.nlink()
                )
            } else {
                "special".to_string()
            };
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let perm = if m.file_type().is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} mode {perm:o} owner {}:{}", m.uid(), m.gid()),
            );
        }
    }
    out
}

/// A loop mount of the EROFS part of a device image, unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(device: &Path, data_bytes: u64, at: &Path) -> Self {
        let fs = device.with_extension("erofs");
        let bytes = std::fs::read(device).unwrap();
        std::fs::write(&fs, &bytes[..data_bytes as usize]).unwrap();
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(&fs)
            .arg(at)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount -t erofs: {}", stderr(&o));
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn can_run(test: &str) -> bool {
    if !require_tools(test, &TOOLS) {
        return false;
    }
    // SAFETY-free check: loop mounts and umoci's owner-preserving unpack need root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o).trim() == "0")
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root (loop mount) under CI"
        );
        eprintln!("SKIP {test}: needs root for the loop mount and umoci's owners");
    }
    root
}

#[test]
fn layers_apply_as_umoci_applies_them_and_the_kernel_reads_the_image() {
    if !can_run("oci_rootfs") {
        return;
    }
    let t = TempDir::new("oci-umoci");
    let oci = t.path().join("oci");
    let pin = make_oci(&oci, &["--gzip-only"]);
    let dev = t.path().join("root.img");
    let s = rootfs(&oci, &pin, &dev);
    assert_eq!(s["manifest"], pin.as_str());
    let notes = &s["notes"];
    assert_eq!(notes["setid_stripped"], serde_json::json!(["usr/bin/tool"]));
    assert_eq!(notes["specials_dropped"], serde_json::json!(["fifo"]));
    assert_eq!(
        notes["xattrs_dropped"],
        serde_json::json!(["cap: user.note"])
    );
    assert_eq!(s["run"]["Entrypoint"], serde_json::json!(["/usr/bin/tool"]));

    // fsck.erofs on the EROFS part.
    let data_bytes = s["data_bytes"].as_u64().unwrap();
    let m = Mounted::new(&dev, data_bytes, &t.path().join("mnt"));
    let o = Command::new("fsck.erofs")
        .arg(dev.with_extension("erofs"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fsck.erofs: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // umoci's unpack of the same layout.
    let bundle = t.path().join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", oci.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "umoci unpack: {}", stderr(&o));
    let mut ours = tree_of(&m.0);
    let mut theirs = tree_of(&bundle.join("rootfs"));
    // What dcr adds on purpose: the guest's mount points.
    for p in ["dcr", "dcr/input", "tmp", "dev", "proc"] {
        assert_eq!(
            ours.remove(Path::new(p)).as_deref(),
            Some("dir mode 755 owner 0:0"),
            "{p}"
        );
    }
    // What dcr normalises on purpose: set-uid bits (two names of one inode) and the FIFO.
    for p in ["usr/bin/tool", "usr/bin/tool2"] {
        let v = theirs.get_mut(Path::new(p)).unwrap();
        assert!(v.contains("mode 4755"), "{p}: {v}");
        *v = v.replace("mode 4755", "mode 755");
    }
    assert!(theirs
        .remove(Path::new("fifo"))
        .unwrap()
        .starts_with("special"));
    let diff: Vec<String> = ours
        .keys()
        .chain(theirs.keys())
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| {
            format!(
                "{}: ours {:?} umoci {:?}",
                k.display(),
                ours.get(k),
                theirs.get(k)
            )
        })
        .collect();
    assert!(diff.is_empty(), "trees differ:\n{}", diff.join("\n"));
    // The cases the layers exercise are really there (not vacuously equal).
    assert!(ours.len() > 320, "{}", ours.len());
    assert!(ours[Path::new("hl")].contains(&sha256_hex(b"first b\n")));
    assert!(ours[Path::new("usr/lib/b")].contains(&sha256_hex(b"second b\n")));
    assert!(ours[Path::new("usr/lib/c.so")].starts_with("file"));
    assert!(ours[Path::new("usr/bin/tool")].contains("nlink 2"));
    assert!(ours[Path::new("highuid")].contains("owner 70000:70001"));
    assert!(!ours.contains_key(Path::new("wh/gonedir")));
    assert!(!ours.contains_key(Path::new("opaque/x")));
    assert!(
        ours.contains_key(Path::new("wh/gone")),
        "same-layer file kept"
    );
    assert_eq!(ours[Path::new("replace-me")], "dir mode 750 owner 0:0");
    assert_eq!(ours[Path::new("etc")], "dir mode 700 owner 0:0");
    drop(m);

    // veritysetup accepts the device with our root hash, and refuses it after a byte flip.
    let root = s["root_hash"].as_str().unwrap();
    let verify = |dev: &Path| {
        Command::new("veritysetup")
            .arg("verify")
            .arg(format!("--hash-offset={data_bytes}"))
            .arg(dev)
            .arg(dev)
            .arg(root)
            .output()
            .unwrap()
    };
    let o = verify(&dev);
    assert!(o.status.success(), "veritysetup verify: {}", stderr(&o));
    let mut bytes = std::fs::read(&dev).unwrap();
    bytes[100_000] ^= 1;
    std::fs::write(&dev, &bytes).unwrap();
    let o = verify(&dev);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Verification failed"), "{}", stderr(&o));
}

#[test]
fn gzip_plain_and_zstd_layers_give_one_tree_and_builds_are_reproducible() {
    if !can_run("oci_rootfs") {
        return;
    }
    let t = TempDir::new("oci-repro");
    let (a, b) = (t.path().join("zstd"), t.path().join("gzip"));
    let (pa, pb) = (make_oci(&a, &[]), make_oci(&b, &["--gzip-only"]));
    assert_ne!(pa, pb);
    let (da, db) = (t.path().join("a.img"), t.path().join("b.img"));
    let sa = rootfs(&a, &pa, &da);
    let sb = rootfs(&b, &pb, &db);
    let ma = Mounted::new(
        &da,
        sa["data_bytes"].as_u64().unwrap(),
        &t.path().join("ma"),
    );
    let mb = Mounted::new(
        &db,
        sb["data_bytes"].as_u64().unwrap(),
        &t.path().join("mb"),
    );
    assert_eq!(tree_of(&ma.0), tree_of(&mb.0));
    drop((ma, mb));

    // A rebuild is byte-identical.
    let again = t.path().join("a2.img");
    let sa2 = rootfs(&a, &pa, &again);
    assert_eq!(sa, sa2);
    assert!(std::fs::read(&da).unwrap() == std::fs::read(&again).unwrap());

    // One byte of one file in one layer: another root hash.
    let c = t.path().join("flip");
    let pc = make_oci(&c, &["--flip-byte"]);
    let sc = rootfs(&c, &pc, &t.path().join("c.img"));
    assert_ne!(sc["root_hash"], sa["root_hash"]);

    // `dcr-build compare` names the one file that differs, and the hash tree.
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    std::fs::create_dir_all(&x).unwrap();
    std::fs::create_dir_all(&y).unwrap();
    std::fs::copy(&da, x.join("rootfs-app.img")).unwrap();
    std::fs::copy(t.path().join("c.img"), y.join("rootfs-app.img")).unwrap();
    let o = run_dcr_build(&["compare", x.to_str().unwrap(), y.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o)
        .lines()
        .filter(|l| l.contains("rootfs-app.img: file "))
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 1, "{}", stdout(&o));
    assert!(
        lines[0].contains("file /big.bin: mode 100600 owner 1000:1000 nlink 1 size 10000"),
        "{}",
        lines[0]
    );
    assert!(stdout(&o).contains("dm-verity superblock and hash tree differ"));
    std::fs::copy(&da, y.join("rootfs-app.img")).unwrap();
    let o = run_dcr_build(&["compare", x.to_str().unwrap(), y.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

/// Our hash area against `veritysetup format` for one-, two- and three-level trees.
#[test]
fn verity_trees_match_veritysetup() {
    if !require_tools("verity", &["veritysetup"]) {
        return;
    }
    let t = TempDir::new("verity");
    for blocks in [1usize, 128, 129, 128 * 128 + 1] {
        let data: Vec<u8> = (0..blocks * 4096)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
            .collect();
        let (salt, uuid) = dcr_build::verity::salt_and_uuid(&blocks.to_le_bytes());
        let v = dcr_build::verity::format(&data, salt, uuid).unwrap();
        let (d, h) = (t.path().join("data"), t.path().join("hash"));
        std::fs::write(&d, &data).unwrap();
        let _ = std::fs::remove_file(&h);
        let o = Command::new("veritysetup")
            .arg("format")
            .arg(format!("--salt={}", hex::encode(salt)))
            .arg(format!("--uuid={}", v.uuid_string()))
            .arg(&d)
            .arg(&h)
            .output()
            .unwrap();
        assert!(o.status.success(), "veritysetup format: {}", stderr(&o));
        let printed = stdout(&o);
        assert!(
            printed.contains(&format!("Root hash:      \t{}", hex::encode(v.root))),
            "{blocks} blocks: {printed}"
        );
        assert!(
            std::fs::read(&h).unwrap() == v.hash_area,
            "{blocks} blocks: hash areas differ"
        );
    }
}

#[test]
fn broken_images_are_refused_naming_the_problem() {
    if !require_tools("oci_refusals", &["python3", "zstd"]) {
        return;
    }
    let t = TempDir::new("oci-bad");
    let oci = t.path().join("oci");
    let pin = make_oci(&oci, &[]);
    let out = t.path().join("out.img");
    refused(
        &oci,
        &format!("sha256:{}", "1".repeat(64)),
        &out,
        "is not in the image",
    );
    refused(&oci, "sha256:abc", &out, "not a digest of the form");
    refused(t.path(), &pin, &out, "no oci-layout");

    // A layer blob whose bytes no longer match its digest.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(&pin[7..])).unwrap())
            .unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let lp = oci.join("blobs/sha256").join(&layer[7..]);
    let good = std::fs::read(&lp).unwrap();
    let mut bad = good.clone();
    bad[600] ^= 1;
    std::fs::write(&lp, &bad).unwrap();
    refused(
        &oci,
        &pin,
        &out,
        &format!("blob {layer}: its bytes hash to"),
    );
    std::fs::write(&lp, &good).unwrap();

    // A config whose diff_id does not match the layer.
    let t2 = t.path().join("tampered");
    let pin2 = make_oci(&t2, &["--tamper-diffid"]);
    refused(&t2, &pin2, &out, "the config's diff_id is sha256:0000");
}
