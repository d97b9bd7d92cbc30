//! The reference image: what is in it, how it is laid out, and that `compare` explains a
//! one-byte change of a workload.

use std::collections::BTreeMap;
use std::process::Command;

use dcr_build::{initrd, uki};
use dcr_protocol::measurements::Measurements;
use dcr_tests::*;

#[test]
fn reference_image_contents_and_measurements_json() {
    let out = reference_build();
    let m = Measurements::from_json(&std::fs::read(out.join("measurements.json")).unwrap())
        .expect("measurements.json parses");
    assert_eq!(m.recipe, "clean-room");
    // Every artifact's recorded digest is the digest of the file next to it.
    for (name, a) in &m.artifacts {
        let bytes = std::fs::read(out.join(name)).unwrap();
        assert_eq!(sha256_hex(&bytes), a.sha256.to_hex(), "{name}");
        assert_eq!(bytes.len() as u64, a.size, "{name}");
    }
    // The packed contract is the canonical JSON of the TOML contract, computed here
    // independently by Python (tomllib + json.dumps with sorted keys and no whitespace), and
    // the contract digest is its SHA-256.
    let canonical = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,tomllib; sys.stdout.write(json.dumps(tomllib.load(open(sys.argv[1],'rb')), sort_keys=True, separators=(',',':')))",
        ])
        .arg(reference_recipe().join("contract.toml"))
        .output()
        .unwrap();
    assert!(canonical.status.success(), "{}", stderr(&canonical));
    assert_eq!(m.contract_digest.to_hex(), sha256_hex(&canonical.stdout));
    for key in [
        "kernel",
        "stub",
        "guest-init",
        "contract",
        "recipe",
        "workload:overlap",
        "workload:sql",
        "module:virtio_net",
    ] {
        assert!(
            m.inputs.contains_key(key),
            "input {key} missing: {:?}",
            m.inputs.keys()
        );
    }

    let cpio = std::fs::read(out.join("initrd.cpio")).unwrap();
    let entries = initrd::list(&cpio).unwrap();
    // The SQL engine (issue J: at most 40 MB stripped, static) and everything else (< 8 MiB).
    let engine = initrd::read_file(&cpio, "workloads/sql")
        .unwrap()
        .expect("the engine is packed");
    assert!(
        engine.len() <= 40_000_000,
        "the SQL engine is {} bytes, target <= 40 MB",
        engine.len()
    );
    assert!(
        cpio.len() - engine.len() < 8 << 20,
        "initrd without the engine is {} bytes, target < 8 MiB",
        cpio.len() - engine.len()
    );
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries are sorted");
    for e in &entries {
        assert_eq!(
            (e.uid, e.gid, u64::from(e.mtime)),
            (0, 0, m.source_date_epoch),
            "{}",
            e.path
        );
    }
    // Executables: exactly /init and the declared workloads. No shell, nothing else.
    let executables: Vec<&str> = entries
        .iter()
        .filter(|e| e.mode & 0o170000 == 0o100000 && e.mode & 0o111 != 0)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        executables,
        vec!["init", "workloads/overlap", "workloads/sql"]
    );
    let packed = entries
        .iter()
        .find(|e| e.path == "etc/dcr/contract.json")
        .expect("contract packed");
    assert_eq!(packed.sha256.to_hex(), m.contract_digest.to_hex());
    let moddir = format!("lib/modules/{}", m.kernel_release);
    assert!(paths.contains(&format!("{moddir}/modules.dep").as_str()));
    assert!(
        !paths.iter().any(|p| p.ends_with(".xz")),
        "modules are decompressed at build time"
    );
    // The init entry is the guest-init binary recorded in the inputs.
    let init = entries.iter().find(|e| e.path == "init").unwrap();
    assert_eq!(init.sha256, m.inputs["guest-init"].sha256);
}

#[test]
fn uki_layout_matches_objdump() {
    if !require_tools("uki_layout_matches_objdump", &["objdump"]) {
        return;
    }
    let out = reference_build();
    let image = std::fs::read(out.join("image.efi")).unwrap();
    let ours = uki::sections(&image).unwrap();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        &names[names.len() - 5..],
        &[".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    );
    // Independent parser: binutils' objdump reads the same sections, sizes and addresses.
    let o = Command::new("objdump")
        .arg("-h")
        .arg(out.join("image.efi"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let mut theirs = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6 && f[0].parse::<u32>().is_ok() {
            let size = u32::from_str_radix(f[2], 16).unwrap();
            let file_off = u32::from_str_radix(f[5], 16).unwrap();
            theirs.insert(f[1].to_string(), (size, file_off));
        }
    }
    for s in &ours {
        let (size, off) = theirs[&s.name];
        assert_eq!(size, s.virtual_size, "{} size", s.name);
        assert_eq!(off, s.raw_offset, "{} offset", s.name);
        assert_eq!(s.virtual_address % 4096, 0, "{} page-aligned", s.name);
    }
    // Section contents are the inputs.
    let cpio = std::fs::read(out.join("initrd.cpio")).unwrap();
    assert_eq!(uki::section(&image, ".initrd").unwrap().unwrap(), &cpio[..]);
    let m =
        Measurements::from_json(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    assert_eq!(
        sha256_hex(uki::section(&image, ".linux").unwrap().unwrap()),
        m.inputs["kernel"].sha256.to_hex()
    );
    assert_eq!(
        uki::section(&image, ".cmdline").unwrap().unwrap(),
        m.cmdline.as_bytes()
    );
    // SizeOfImage covers the last section; CheckSum is valid (objdump prints the stored one).
    let last = ours.last().unwrap();
    let soi = uki::size_of_image(&image).unwrap();
    assert!(soi >= last.virtual_address + last.virtual_size && soi.is_multiple_of(4096));
    let (stored, computed) = uki::checksum_status(&image).unwrap();
    assert_eq!(stored, computed);
    let p = Command::new("objdump")
        .arg("-p")
        .arg(out.join("image.efi"))
        .output()
        .unwrap();
    let ptext = String::from_utf8_lossy(&p.stdout);
    let cks = ptext
        .lines()
        .find_map(|l| l.strip_prefix("CheckSum"))
        .map(|v| u32::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(cks, stored);
    assert_ne!(stored, 0);
}

#[test]
fn one_byte_workload_change_is_explained_by_compare() {
    let t = TempDir::new("mutate");
    let w = std::fs::read(reference_build().join("initrd.cpio")).unwrap();
    // Any bytes serve as the workload here; use a slice of real data.
    let a_bytes = w[..4096].to_vec();
    let mut b_bytes = a_bytes.clone();
    b_bytes[100] ^= 0x01;
    let mut outs = Vec::new();
    for (tag, bytes) in [("a", &a_bytes), ("b", &b_bytes)] {
        let dir = t.path().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let wf = dir.join("overlap.bin");
        std::fs::write(&wf, bytes).unwrap();
        std::fs::write(
            dir.join("image.toml"),
            portable_recipe(&wf, &sha256_hex(bytes)),
        )
        .unwrap();
        let out = dir.join("out");
        let o = run_dcr_build(&[
            "image",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(out);
    }
    let o = run_dcr_build(&[
        "compare",
        outs[0].to_str().unwrap(),
        outs[1].to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "compare must report a difference");
    let text = stdout(&o);
    for needle in [
        "initrd.cpio: cpio entry workloads/overlap: sha256",
        "image.efi: PE section .initrd: sha256",
        "measurements.json: inputs.workload:overlap.sha256",
        "measurements.json: artifacts.image.efi.sha256",
        "measurements.json: artifacts.initrd.cpio.sha256",
        "disk.raw: ESP file EFI/BOOT/BOOTX64.EFI: sha256",
        "disk.vhd: ESP file EFI/BOOT/BOOTX64.EFI: sha256",
        "disk.raw: GPT disk GUID",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The contract names the workload by digest, so it changes with it; nothing else in the
    // initramfs or the UKI is blamed.
    assert!(
        text.contains("initrd.cpio: cpio entry etc/dcr/contract.json: sha256"),
        "{text}"
    );
    // Both carry the initramfs: the UKI's initrd.cpio and the EIF's second ramdisk.
    assert!(
        text.contains("image.eif: section 4 (ramdisk 1): cpio entry workloads/overlap: sha256"),
        "{text}"
    );
    assert!(
        text.contains("image.eif: section 4 (ramdisk 1): cpio entry etc/dcr/contract.json"),
        "{text}"
    );
    assert_eq!(text.matches("cpio entry").count(), 4, "{text}");
    // The EIF's kernel and first ramdisk (guest-init) did not move: PCR1 stays.
    assert!(!text.contains("image.eif: PCR1 "), "{text}");
    assert_eq!(text.matches("PE section").count(), 1, "{text}");

    // The same inputs twice: identical.
    let again = t.path().join("a/out2");
    let o = run_dcr_build(&[
        "image",
        t.path().join("a").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_dcr_build(&[
        "compare",
        outs[0].to_str().unwrap(),
        again.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with(
            "identical: 6 files (disk.raw, disk.vhd, image.efi, image.eif, initrd.cpio, measurements.json)"
        ),
        "{}",
        stdout(&o)
    );
}

#[test]
fn builder_never_reads_the_wall_clock() {
    // Reproducibility rests on the packer taking its only timestamp from the recipe or
    // SOURCE_DATE_EPOCH. (Instant, a monotonic timer, is used only to time QEMU runs.)
    // Every source file, in subdirectories too (src/disk/, src/image/, src/cli/).
    let mut files = Vec::new();
    let mut dirs = vec![workspace().join("builder/src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 20, "{files:?}");
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        for needle in ["SystemTime", "UNIX_EPOCH", "chrono", "Local::now"] {
            assert!(!text.contains(needle), "{} uses {needle}", p.display());
        }
    }
}

#[test]
fn predicted_launch_measurements_match_anchors() {
    // SNP: the launch digest in measurements.json equals what sev-snp-measure prints for the
    // same firmware, kernel, initrd, cmdline and VM shape. TDX: the MRTD equals the vector
    // for Debian's OVMF.fd (two independent implementations agreed on it).
    let Some(tool) = sev_snp_measure("predicted_launch_measurements_match_anchors") else {
        return;
    };
    let Some(fx) = fixtures("predicted_launch_measurements_match_anchors") else {
        return;
    };
    let out = reference_build();
    let m =
        Measurements::from_json(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    // The document as an outside verifier reads it (JSON).
    let predicted_json = serde_json::to_value(&m.measurements).unwrap();
    let snp = &predicted_json["snp"];
    let shape = &snp["shape"];
    let t = TempDir::new("anchors");
    let fw = snp_firmware(t.path());
    assert_eq!(
        sha256_hex(&std::fs::read(&fw).unwrap()),
        shape["firmware_sha256"].as_str().unwrap()
    );
    let image = std::fs::read(out.join("image.efi")).unwrap();
    let kernel = t.path().join("vmlinuz");
    std::fs::write(&kernel, uki::section(&image, ".linux").unwrap().unwrap()).unwrap();
    let o = Command::new(&tool)
        .arg("--mode=snp")
        .arg(format!("--vcpus={}", shape["vcpus"]))
        .arg(format!(
            "--vcpu-type={}",
            shape["vcpu_type"].as_str().unwrap()
        ))
        .arg(format!(
            "--guest-features={}",
            shape["guest_features"].as_str().unwrap()
        ))
        .arg(format!("--vmm-type={}", shape["vmm"].as_str().unwrap()))
        .arg(format!("--ovmf={}", fw.display()))
        .arg(format!("--kernel={}", kernel.display()))
        .arg(format!("--initrd={}", out.join("initrd.cpio").display()))
        .arg(format!("--append={}", m.cmdline))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        snp["launch_digest"].as_str().unwrap()
    );

    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("measure/vectors.json")).unwrap()).unwrap();
    assert_eq!(
        predicted_json["tdx"]["mrtd"],
        v["tdx_derived_debian_ovmf"]["mrtd_single_pass_qemu_ge_9"]
    );
}

/// The recipe's SEV-SNP firmware, fetched again by its pin (the builder's cache holds it).
fn snp_firmware(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(reference_recipe().join("image.toml")).unwrap();
    let recipe = dcr_build::recipe::parse(&text, std::path::Path::new("image.toml")).unwrap();
    let fw_spec = &recipe.measure.snp.as_ref().unwrap().firmware;
    let deb = fw_spec.deb.as_ref().unwrap();
    let pkg = dcr_build::fetch::deb_package("firmware:snp", &deb.pin()).unwrap();
    let files = dcr_build::fetch::extract("firmware:snp", &pkg, |p| p == deb.path).unwrap();
    let fw = dir.join("OVMF.amdsev.fd");
    std::fs::write(&fw, &files[&deb.path]).unwrap();
    fw
}

/// Split a printed command line (words separated by spaces, '…' quoting).
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn print_qemu_launches_what_was_measured() {
    // The SNP command line a host needs, parsed back: its vCPU type and count, kernel hashes,
    // kernel, initrd and cmdline are the measured shape, and sev-snp-measure given exactly
    // those (plus the pinned firmware) prints the launch digest in measurements.json.
    let Some(tool) = sev_snp_measure("print_qemu_launches_what_was_measured") else {
        return;
    };
    let out = reference_build();
    let m =
        Measurements::from_json(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    // The document as an outside verifier reads it (JSON).
    let predicted_json = serde_json::to_value(&m.measurements).unwrap();
    let snp = &predicted_json["snp"];
    let shape = &snp["shape"];
    let o = run_dcr_build(&[
        "run",
        out.to_str().unwrap(),
        "--platform",
        "snp",
        "--print-qemu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "sha256 {}",
            shape["firmware_sha256"].as_str().unwrap()
        )),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("qemu-system-x86_64"))
        .expect("a command line");
    let w = shell_words(line);
    let after = |flag: &str| {
        w[w.iter()
            .position(|x| x == flag)
            .unwrap_or_else(|| panic!("{flag} in {line}"))
            + 1]
        .clone()
    };
    assert_eq!(after("-cpu"), shape["vcpu_type"].as_str().unwrap());
    assert_eq!(after("-smp"), shape["vcpus"].to_string());
    assert_eq!(after("-append"), m.cmdline);
    assert!(after("-object").starts_with("memory-backend-memfd"));
    assert!(
        line.contains("sev-snp-guest,id=sev0,") && line.contains("kernel-hashes=on"),
        "{line}"
    );
    let kernel = after("-kernel");
    let initrd = after("-initrd");
    assert_eq!(std::path::Path::new(&initrd), out.join("initrd.cpio"));
    assert_eq!(
        sha256_hex(&std::fs::read(&kernel).unwrap()),
        snp["kernel_hashes"]["kernel"].as_str().unwrap()
    );
    let t = TempDir::new("print-qemu");
    let fw = snp_firmware(t.path());
    let o = Command::new(&tool)
        .arg("--mode=snp")
        .arg(format!("--vcpus={}", after("-smp")))
        .arg(format!("--vcpu-type={}", after("-cpu")))
        .arg(format!("--ovmf={}", fw.display()))
        .arg(format!("--kernel={kernel}"))
        .arg(format!("--initrd={initrd}"))
        .arg(format!("--append={}", after("-append")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        snp["launch_digest"].as_str().unwrap()
    );

    // TDX: a tdx-guest object, the measured firmware named by digest.
    let o = run_dcr_build(&[
        "run",
        out.to_str().unwrap(),
        "--platform",
        "tdx",
        "--print-qemu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let tdx = &predicted_json["tdx"];
    assert!(
        text.contains(&format!(
            "sha256 {}",
            tdx["shape"]["firmware_sha256"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("MRTD {}", tdx["mrtd"].as_str().unwrap())),
        "{text}"
    );
    assert!(
        text.contains("-object tdx-guest,id=tdx0")
            && text.contains("confidential-guest-support=tdx0"),
        "{text}"
    );
    // Without --print-qemu there is nothing this host can launch.
    let o = run_dcr_build(&["run", out.to_str().unwrap(), "--platform", "snp"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--print-qemu"), "{}", stderr(&o));
}
