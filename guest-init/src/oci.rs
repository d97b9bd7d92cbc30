//! Container-image workloads (`kind = "oci"`): the run document at /workloads/<name> (its
//! SHA-256 in the contract, so measured with it) names the image's read-only root by its
//! dm-verity root hash. Before any network or key: find the block device whose verity
//! superblock has the document's UUID, put dm-verity over it with the document's root hash
//! and salt (device-mapper ioctls, no veritysetup), read the whole device once through it
//! (any block that does not match fails the run here, naming the workload), mount the EROFS
//! inside read-only. At run time: a private /tmp and /dev, the decrypted inputs bound
//! read-only at /dcr/input/<dataset id>, and the image's entrypoint run confined like a
//! native workload, chrooted into the root in its own mount namespace; its stdout is the
//! output.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use dcr_protocol::contract::{Contract, Workload, WorkloadKind};
use dcr_protocol::oci::{RunSpec, INPUT_DIR};
use zeroize::Zeroizing;

use crate::console::say;
use crate::workload::{checked_exe, inputs_of, run_confined, workload_uid, Jail, RUN_DIR};
use crate::{fail, step, StepError};

/// Where roots are mounted (not under RUN_DIR, which is noexec).
const ROOTS: &str = "/run/dcr-root";
/// Size of a workload's /tmp (tmpfs) and so its RLIMIT_FSIZE.
const TMP_MIB: u64 = 64;
const BLOCK: u64 = 4096;
/// PATH when the image's Env sets none (the Docker default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A verified, mounted root.
pub struct Root {
    pub spec: RunSpec,
    pub mount: PathBuf,
    /// Its device-mapper device (status checked after the run).
    pub dm_name: String,
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    hex::decode(h).ok()?.try_into().ok()
}

/// The block device (name, "major:minor") holding the verity superblock with `uuid` right
/// after `data_blocks` blocks, and long enough for the whole tree.
fn find_device(spec: &RunSpec) -> Result<(String, String), String> {
    let want = uuid_bytes(&spec.verity.uuid)
        .ok_or_else(|| format!("verity.uuid {:?} is not a UUID", spec.verity.uuid))?;
    let need = (spec.verity.data_blocks + spec.verity.hash_blocks) * BLOCK;
    let mut found = Vec::new();
    // Whole disks (a virtio-blk drive holding rootfs-<name>.img) and their partitions (a disk
    // image carries each root as a partition after its ESP): /sys/block/<disk>/<partition>/
    // has a `partition` file.
    let mut candidates = Vec::new();
    let dir = std::fs::read_dir("/sys/block").map_err(|e| format!("/sys/block: {e}"))?;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("dm-") || name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        if let Ok(parts) = std::fs::read_dir(e.path()) {
            for p in parts.flatten() {
                if p.path().join("partition").is_file() {
                    candidates.push((p.file_name().to_string_lossy().into_owned(), p.path()));
                }
            }
        }
        candidates.push((name, e.path()));
    }
    for (name, sys) in candidates {
        let sectors: u64 = std::fs::read_to_string(sys.join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors * 512 < need {
            continue;
        }
        let Ok(mut f) = File::open(format!("/dev/{name}")) else {
            continue;
        };
        let mut sb = [0u8; 512];
        if f.seek(SeekFrom::Start(spec.verity.data_blocks * BLOCK))
            .is_err()
            || f.read_exact(&mut sb).is_err()
        {
            continue;
        }
        if &sb[..8] == b"verity\0\0" && sb[16..32] == want {
            let dev = std::fs::read_to_string(sys.join("dev"))
                .map_err(|e| format!("{}/dev: {e}", sys.display()))?;
            found.push((name, dev.trim().to_string()));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no block device holds the root with verity UUID {} (is rootfs-<name>.img attached?)",
            spec.verity.uuid
        )),
        n => Err(format!(
            "{n} block devices hold verity UUID {}: refusing to choose",
            spec.verity.uuid
        )),
    }
}

/// For a contract whose output workload is an oci image: verify and mount its root.
pub fn open_root(c: &Contract) -> Result<Option<Root>, StepError> {
    let Some(w) = c.output_workload().filter(|w| w.kind == WorkloadKind::Oci) else {
        return Ok(None);
    };
    let doc_path = checked_exe("rootfs", w)?;
    let doc = step(
        "rootfs",
        std::fs::read(&doc_path).map_err(|e| format!("{}: {e}", doc_path.display())),
    )?;
    let spec = step(
        "rootfs",
        RunSpec::from_json(&doc).map_err(|e| format!("{}: {e}", doc_path.display())),
    )?;
    let (disk, majmin) = step(
        "rootfs",
        find_device(&spec).map_err(|e| format!("workload {}: {e}", w.name)),
    )?;
    let v = &spec.verity;
    let params = format!(
        "1 {majmin} {majmin} {BLOCK} {BLOCK} {} {} sha256 {} {}",
        v.data_blocks,
        v.data_blocks + 1,
        v.root_hash,
        v.salt
    );
    let dm_name = format!("dcr-root-{}", w.name);
    let minor = step(
        "rootfs",
        crate::sys::dm_create(&dm_name, "verity", v.data_blocks * (BLOCK / 512), &params)
            .map_err(|e| format!("workload {}: dm-verity on /dev/{disk}: {e}", w.name)),
    )?;
    let dm = format!("/dev/dm-{minor}");
    if !Path::new(&dm).exists() {
        let dev = step(
            "rootfs",
            std::fs::read_to_string(format!("/sys/block/dm-{minor}/dev"))
                .map_err(|e| format!("/sys/block/dm-{minor}/dev: {e}")),
        )?;
        let (maj, min) = dev.trim().split_once(':').unwrap_or(("0", "0"));
        step(
            "rootfs",
            crate::sys::mknod_block(
                &dm,
                0o600,
                maj.parse().unwrap_or(0),
                min.parse().unwrap_or(0),
            )
            .map_err(|e| format!("{dm}: {e}")),
        )?;
    }
    // Read every block once through dm-verity: a root that does not match its hash fails the
    // run now, before any key is asked for, instead of as an I/O error mid-analysis.
    let start = Instant::now();
    let mut f = step("rootfs", File::open(&dm).map_err(|e| format!("{dm}: {e}")))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(e) => {
                return fail(
                    "rootfs",
                    format!(
                        "workload {}: dm-verity refused the root near byte {done} ({e}): /dev/{disk} does not match the root hash {} its run document names",
                        w.name, v.root_hash
                    ),
                )
            }
        }
    }
    if done != v.data_blocks * BLOCK {
        return fail(
            "rootfs",
            format!(
                "workload {}: {dm} gave {done} bytes, the root has {}",
                w.name,
                v.data_blocks * BLOCK
            ),
        );
    }
    let mount = Path::new(ROOTS).join(&w.name);
    step(
        "rootfs",
        std::fs::create_dir_all(&mount).map_err(|e| format!("{}: {e}", mount.display())),
    )?;
    step(
        "rootfs",
        crate::sys::mount(
            &dm,
            &mount.display().to_string(),
            "erofs",
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
        )
        .map_err(|e| format!("mount erofs {dm}: {e}")),
    )?;
    say(&format!(
        "rootfs {} image={} verity={} device=/dev/{disk} bytes={done} verified time={:.1}s",
        w.name,
        spec.image,
        v.root_hash,
        start.elapsed().as_secs_f64()
    ));
    Ok(Some(Root {
        spec,
        mount,
        dm_name,
    }))
}

/// A directory of the root to mount over: a real directory all the way (never a symlink,
/// which would move the mount outside the root).
fn mount_point(root: &Path, rel: &str) -> Result<String, String> {
    let mut p = root.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
        let m = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !m.is_dir() {
            return Err(format!("{} is not a directory", p.display()));
        }
    }
    Ok(p.display().to_string())
}

/// The mounts inside the root: /tmp and /dev (tmpfs), and at /dcr/input (a tmpfs of its
/// own) exactly the workload's inputs, each bound read-only: the other datasets decrypted
/// for the run stay out of its sight.
fn furnish(root: &Path, inputs: &[&str]) -> Result<(), String> {
    use crate::sys::{mknod_char, mount, mount_data};
    let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
    let tmp = mount_point(root, "tmp")?;
    mount_data(
        "tmpfs",
        &tmp,
        "tmpfs",
        nosuid | nodev,
        &format!("size={TMP_MIB}m,mode=1777"),
    )
    .map_err(|e| format!("tmpfs {tmp}: {e}"))?;
    let dev = mount_point(root, "dev")?;
    mount_data(
        "tmpfs",
        &dev,
        "tmpfs",
        nosuid | noexec,
        "size=64k,mode=0755",
    )
    .map_err(|e| format!("tmpfs {dev}: {e}"))?;
    for (name, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
        mknod_char(&format!("{dev}/{name}"), 0o666, 1, minor)
            .map_err(|e| format!("{dev}/{name}: {e}"))?;
    }
    let input = mount_point(root, INPUT_DIR.trim_start_matches('/'))?;
    mount_data(
        "tmpfs",
        &input,
        "tmpfs",
        nosuid | nodev | noexec,
        "size=64k,mode=0755",
    )
    .map_err(|e| format!("tmpfs {input}: {e}"))?;
    for id in inputs {
        let src = format!("{RUN_DIR}/in/{id}");
        let dst = format!("{input}/{id}");
        std::fs::write(&dst, b"").map_err(|e| format!("{dst}: {e}"))?;
        mount(&src, &dst, "", libc::MS_BIND).map_err(|e| format!("bind {dst}: {e}"))?;
        mount(
            &src,
            &dst,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | nosuid | nodev | noexec,
        )
        .map_err(|e| format!("read-only {dst}: {e}"))?;
    }
    mount(
        "none",
        &input,
        "",
        libc::MS_REMOUNT | libc::MS_RDONLY | nosuid | nodev | noexec,
    )
    .map_err(|e| format!("read-only {input}: {e}"))?;
    Ok(())
}

/// argv[0] as a path inside the root: as given if it has a '/', else the first PATH entry
/// where the root has that name.
fn program(root: &Path, spec: &RunSpec, path: &str) -> Result<PathBuf, String> {
    let arg0 = &spec.argv[0];
    if arg0.contains('/') {
        return Ok(if arg0.starts_with('/') {
            PathBuf::from(arg0)
        } else {
            Path::new(&spec.workdir).join(arg0)
        });
    }
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let inside = Path::new(dir).join(arg0);
        let outside = root.join(inside.strip_prefix("/").unwrap_or(&inside));
        if std::fs::symlink_metadata(&outside).is_ok() {
            return Ok(inside);
        }
    }
    Err(format!("{arg0:?} is not in the image's PATH ({path})"))
}

/// Run the oci workload `w` in its root; returns its stdout.
pub fn run(
    c: &Contract,
    w: &Workload,
    root: &Root,
    all_inputs: &[String],
) -> Result<Zeroizing<Vec<u8>>, StepError> {
    let ids: Vec<&str> = inputs_of(c, w, all_inputs)
        .into_iter()
        .map(|(_, i)| c.datasets[i].id.as_str())
        .collect();
    step("workload", furnish(&root.mount, &ids))?;
    let inputs: Vec<String> = ids.iter().map(|id| format!("{INPUT_DIR}/{id}")).collect();
    let mut env: Vec<String> = root
        .spec
        .env
        .iter()
        .filter(|kv| !kv.starts_with("DCR_INPUTS="))
        .cloned()
        .collect();
    let path = match env.iter().find_map(|kv| kv.strip_prefix("PATH=")) {
        Some(p) => p.to_string(),
        None => {
            env.push(format!("PATH={DEFAULT_PATH}"));
            DEFAULT_PATH.to_string()
        }
    };
    env.push(format!("DCR_INPUTS={}", inputs.join(":")));
    let exe = step(
        "workload",
        program(&root.mount, &root.spec, &path).map_err(|e| format!("{}: {e}", w.name)),
    )?;
    let jail = Jail {
        root: root.mount.clone(),
        workdir: root.spec.workdir.clone(),
        env,
        fsize_bytes: TMP_MIB << 20,
    };
    let ran = run_confined(
        "workload",
        w,
        &exe,
        &root.spec.argv[1..],
        workload_uid(c, w),
        w.limits.timeout_secs,
        Some(&jail),
    )?;
    // dm-verity answers a corrupt block with EIO, which a workload may catch and go on:
    // any corruption seen during the run fails it (status `C`; `V` = all verified).
    let status = step(
        "rootfs",
        crate::sys::dm_status(&root.dm_name).map_err(|e| format!("{}: status: {e}", root.dm_name)),
    )?;
    if status.trim() != "V" {
        return fail(
            "rootfs",
            format!(
                "workload {}: dm-verity saw a corrupt block of its root during the run (status {status:?}): the host changed the disk",
                w.name
            ),
        );
    }
    crate::workload::finish(w, &format!(" (oci {})", root.spec.image), ran)
}
