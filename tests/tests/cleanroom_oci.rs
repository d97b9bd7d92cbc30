//! A clean room whose workload is a container image (`kind = "oci"`), end to end in QEMU:
//!
//! - the image (one layer holding the reference room's `overlap` program, its Cmd naming the
//!   inputs at their fixed paths /dcr/input/<dataset id>) is written by a Python script, not
//!   by dcr-build; `dcr-build image` flattens it into `rootfs-overlap.img` (EROFS +
//!   dm-verity) and packs the run document whose SHA-256 the contract names;
//! - a root with one byte changed makes guest-init power off before any key is asked for,
//!   naming dm-verity and the workload; nothing is uploaded;
//! - an image whose program calls ptrace(2) (a hand-assembled ELF) is killed by the seccomp
//!   filter and the run powers off naming the call; nothing is uploaded;
//! - a workload sees only the inputs its contract entry names, and a process it left behind
//!   in a session of its own (setsid) is killed, not waited for;
//! - the untouched root runs through, booted from the disk image (disk.raw: the UKI's ESP and
//!   the root as a second GPT partition, as on Azure): the result both recipients open equals
//!   the aggregates computed here from the plaintext, independently of the workload.

use std::path::Path;
use std::process::Command;

use dcr_tests::cleanroom::*;
use dcr_tests::*;

const TOOLS: [&str; 7] = [
    "sgdisk",
    "qemu-system-x86_64",
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "certtool",
    "python3",
];

/// The contract text with the overlap workload made an oci workload with digest `sha`.
fn as_oci(contract: &str, sha: &str) -> String {
    let at = contract
        .find("name = \"overlap\"\n")
        .expect("the overlap workload");
    let line = at + contract[at..].find("sha256 = \"").expect("its sha256");
    let end = line + contract[line..].find('\n').unwrap();
    format!(
        "{}kind = \"oci\"\nsha256 = \"{sha}\"{}",
        &contract[..line],
        &contract[end..]
    )
}

/// An image holding `program` as /usr/bin/<name> with `args` as its Cmd (written by a Python
/// script); returns (layout directory, pin, `dcr-build rootfs --json` summary).
fn app_image(
    room: &Room,
    tag: &str,
    program: &Path,
    args: &[&str],
) -> (std::path::PathBuf, String, serde_json::Value) {
    let app = room.dir.join(format!("app-{tag}"));
    let o = Command::new("python3")
        .arg(workspace().join("tests/data/make-app-oci.py"))
        .arg(&app)
        .arg(program)
        .arg("overlap")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "make-app-oci.py: {}", stderr(&o));
    let pin = stdout(&o).trim().to_string();
    let o = run_dcr_build(&[
        "rootfs",
        "--oci",
        app.to_str().unwrap(),
        "--digest",
        &pin,
        "--out",
        room.dir.join(format!("probe-{tag}.img")).to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (app, pin, serde_json::from_str(&stdout(&o)).unwrap())
}

/// Build the reference recipe with its overlap workload taken from the image `app` (`pin`)
/// and the room's contract `tag` naming the run document; data provided.
fn build_oci(
    room: &Room,
    tag: &str,
    app: &Path,
    pin: &str,
    run_sha: &str,
    data: &Path,
) -> std::path::PathBuf {
    build_oci_with(room, tag, app, pin, run_sha, data, |c| c)
}

/// [`build_oci`] with a further edit of the contract text.
fn build_oci_with(
    room: &Room,
    tag: &str,
    app: &Path,
    pin: &str,
    run_sha: &str,
    data: &Path,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let recipe_dir = room.dir.join(format!("recipe-{tag}"));
    std::fs::create_dir_all(&recipe_dir).unwrap();
    let text = without_sql_workload(
        &std::fs::read_to_string(reference_recipe().join("image.toml")).unwrap(),
    );
    let text = text.replace(
        "crate = \"workloads/overlap\"",
        &format!(
            "kind = \"oci\"\noci = \"{}\"\ndigest = \"{pin}\"",
            app.display()
        ),
    );
    assert!(
        text.contains("kind = \"oci\""),
        "reference recipe changed shape"
    );
    std::fs::write(recipe_dir.join("image.toml"), text).unwrap();
    let contract = room.contract(tag, |c| edit(as_oci(&without_sql_workload(&c), run_sha)));
    let image = room.build_recipe(&recipe_dir.join("image.toml"), &contract, tag);
    room.provide(tag, data, &image);
    image
}

#[test]
fn an_oci_image_runs_the_clean_room_and_a_changed_root_powers_off() {
    if !require_tools("cleanroom_oci", &TOOLS) {
        return;
    }
    // The overlap program as the reference image packs it (static, for the guest).
    let reference = reference_build();
    let cpio = std::fs::read(reference.join("initrd.cpio")).unwrap();
    let program = dcr_build::initrd::read_file(&cpio, "workloads/overlap")
        .unwrap()
        .expect("workloads/overlap in the reference initramfs");
    let room = Room::new("oci");
    let prog = room.dir.join("overlap");
    std::fs::write(&prog, &program).unwrap();
    let (app, pin, summary) = app_image(
        &room,
        "o",
        &prog,
        &[
            "/dcr/input/publisher-segments",
            "/dcr/input/advertiser-conversions",
        ],
    );
    let run_sha = summary["run_document_sha256"].as_str().unwrap().to_string();
    let root_hash = summary["root_hash"].as_str().unwrap().to_string();
    let data_bytes = summary["data_bytes"].as_u64().unwrap();
    let data = room.data("o", 2000, 5);
    let image = build_oci(&room, "o", &app, &pin, &run_sha, &data);
    let device = image.join("rootfs-overlap.img");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("measurements.json")).unwrap()).unwrap();
    assert_eq!(
        m["artifacts"]["rootfs-overlap.img"]["sha256"],
        sha256_hex(&std::fs::read(&device).unwrap()).as_str()
    );
    assert!(m["inputs"]["rootfs:overlap"]["source"]
        .as_str()
        .unwrap()
        .ends_with(&pin));
    assert_eq!(m["inputs"]["workload:overlap"]["sha256"], run_sha.as_str());

    // One byte of one file in the image: another root hash, another run document, so another
    // initramfs and predicted PCR 9, 11 and 23 (the good boot below checks the prediction against
    // the live swtpm: the service releases keys only when the quoted PCRs equal it).
    let mut flipped = program.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let prog_f = room.dir.join("overlap-flipped");
    std::fs::write(&prog_f, &flipped).unwrap();
    let (app_f, pin_f, summary_f) = app_image(
        &room,
        "f",
        &prog_f,
        &[
            "/dcr/input/publisher-segments",
            "/dcr/input/advertiser-conversions",
        ],
    );
    assert_ne!(summary_f["root_hash"], summary["root_hash"]);
    let image_f = build_oci(
        &room,
        "f",
        &app_f,
        &pin_f,
        summary_f["run_document_sha256"].as_str().unwrap(),
        &data,
    );
    let mf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image_f.join("measurements.json")).unwrap()).unwrap();
    let pcr = |m: &serde_json::Value, i: &str| m["measurements"]["tpm"]["pcrs"][i].clone();
    for i in ["9", "11", "23"] {
        assert_ne!(pcr(&m, i), pcr(&mf, i), "PCR {i}");
    }

    // One byte of the root changed: power off before the network, with the reason.
    let good = std::fs::read(&device).unwrap();
    let mut bad = good.clone();
    bad[(data_bytes / 2) as usize] ^= 0x40;
    std::fs::write(&device, &bad).unwrap();
    let (code, console) = room.boot(&image);
    assert_ne!(code, Some(0), "{console}");
    let reason = power_off_reason(&console).unwrap_or_default();
    assert!(
        reason.contains("rootfs: workload overlap: dm-verity refused the root")
            && reason.contains(&root_hash),
        "{reason}\n{console}"
    );
    assert!(!console.contains("dcr-init: network"), "{console}");
    assert!(room
        .result("overlap-result-o.sealed", "publisher")
        .is_none());

    // A program that calls ptrace(2): killed by the seccomp filter, the run powers off
    // naming the call, nothing is uploaded.
    let image_s = elf_image(&room, "s", &[&libc_ptrace().to_string()], &data, |c| c);
    refused(
        &room,
        &image_s,
        "s",
        "overlap was killed by the seccomp filter: ptrace (101) is denied",
    );

    // Only the inputs the contract gives the workload are in its /dcr/input, and a process
    // that left the workload's group (setsid) does not outlive it: a hand-assembled program
    // forks a child that calls setsid(2) and pauses holding stdout, then looks for the
    // advertiser's dataset, which this contract does not give it (exit 7: not there). With the
    // whole input directory visible it would exit 0; with the child alive the run would hang.
    let image_q = elf_image(
        &room,
        "q",
        &["--probe", "/dcr/input/advertiser-conversions"],
        &data,
        |c| {
            c.replacen(
                "inputs = [\"publisher-segments\", \"advertiser-conversions\"]",
                "inputs = [\"publisher-segments\"]",
                1,
            )
        },
    );
    refused(&room, &image_q, "q", "overlap failed (exit status: 7)");

    // The untouched root, from the disk image this time (Azure's path): disk.raw carries the
    // root as its second partition, the same bytes as rootfs-overlap.img (sgdisk reads the
    // table), and `run --mode raw` attaches no other drive; the clean room runs through.
    std::fs::write(&device, &good).unwrap();
    let raw = image.join("disk.raw");
    let o = Command::new("sgdisk")
        .args(["-i", "2"])
        .arg(&raw)
        .output()
        .unwrap();
    let info = stdout(&o);
    assert!(
        o.status.success()
            && info.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
            && info.contains("'rootfs-overlap'"),
        "{info}{}",
        stderr(&o)
    );
    let first: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{info}"));
    let disk = std::fs::read(&raw).unwrap();
    let at = (first * 512) as usize;
    assert!(
        disk[at..at + good.len()] == good[..],
        "partition 2 is not the root"
    );
    let (code, console) = room.boot_mode(&image, "raw");
    assert_eq!(code, Some(0), "{console}");
    assert!(
        console.contains(&format!(
            "dcr-init: rootfs overlap image={pin} verity={root_hash}"
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!("dcr-init: workload overlap (oci {pin}) exit=0")),
        "{console}"
    );
    let want = expected_result(&data, 50);
    for party in ["publisher", "advertiser"] {
        assert_eq!(
            String::from_utf8(room.result("overlap-result-o.sealed", party).unwrap()).unwrap(),
            want,
            "{party}"
        );
    }
}

/// An image whose program is written by make-syscall-elf.py `args`, built as the room's
/// contract `tag` (edited by `edit`) with its data provided.
fn elf_image(
    room: &Room,
    tag: &str,
    args: &[&str],
    data: &Path,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let program = room.dir.join(format!("elf-{tag}"));
    let o = Command::new("python3")
        .arg(workspace().join("tests/data/make-syscall-elf.py"))
        .args(args)
        .arg(&program)
        .output()
        .unwrap();
    assert!(o.status.success(), "make-syscall-elf.py: {}", stderr(&o));
    let (app, pin, summary) = app_image(room, tag, &program, &[]);
    build_oci_with(
        room,
        tag,
        &app,
        &pin,
        summary["run_document_sha256"].as_str().unwrap(),
        data,
        edit,
    )
}

/// Boot `image`: it must power off with `want` in its reason and upload no result.
fn refused(room: &Room, image: &Path, tag: &str, want: &str) {
    let (code, console) = room.boot(image);
    assert_ne!(code, Some(0), "{console}");
    let reason = power_off_reason(&console).unwrap_or_default();
    assert!(reason.contains(want), "{reason}\n{console}");
    assert!(room
        .result(&format!("overlap-result-{tag}.sealed"), "publisher")
        .is_none());
}

/// ptrace's x86_64 system call number (arch/x86/entry/syscalls/syscall_64.tbl).
fn libc_ptrace() -> u32 {
    101
}
