//! The reference image's `image.eif` against AWS's own library
//! (aws-nitro-enclaves-image-format 0.8.1, behind nitro-cli build-enclave and describe-eif),
//! run as the `eif-oracle` binary of tests/oracles/eif:
//! - the library reads our EIF (CRC, sections, metadata) and computes the PCR 0, 1 and 2
//!   that measurements.json predicts;
//! - its `EifBuilder`, given the same kernel, command line, metadata and ramdisks, writes the
//!   same bytes;
//! - the kernel section is the recipe's pinned kernel (its SHA-256 from image.toml);
//! - with one byte of the kernel, the command line or a ramdisk changed, our writer and PCRs
//!   still equal the library's, and the PCRs that cover that part move;
//! - `dcr-build compare` names the section and the PCRs a change moves.

use std::path::{Path, PathBuf};
use std::process::Command;

use dcr_tests::*;

/// The oracle binary: DCR_EIF_ORACLE_BIN, or tests/run.sh's build. Missing: panic under CI,
/// otherwise say why and skip.
fn oracle(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("DCR_EIF_ORACLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/eif-oracle/release/eif-oracle"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} missing under CI (tests/run.sh builds it)",
        p.display()
    );
    eprintln!("SKIP {test}: {} missing (cargo build --release --locked --manifest-path tests/oracles/eif/Cargo.toml with CARGO_TARGET_DIR=target/eif-oracle)", p.display());
    None
}

fn describe(oracle: &Path, eif: &Path) -> serde_json::Value {
    let o = Command::new(oracle)
        .arg("describe")
        .arg(eif)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The sections of an EIF, read with the layout written out here (big-endian header: magic,
/// version, flags, default_mem, default_cpus, reserved, num_sections at byte 26, offsets at
/// 28, sizes at 284; section header: type u16, flags u16, size u64).
fn sections(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let be16 = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let be64 = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(&b[..4], b".eif");
    let n = usize::from(be16(26));
    (0..n)
        .map(|i| {
            let off = be64(28 + 8 * i) as usize;
            let size = be64(284 + 8 * i) as usize;
            assert_eq!(be64(off + 4) as usize, size);
            (be16(off), b[off + 12..off + 12 + size].to_vec())
        })
        .collect()
}

/// The entry names of a cpio newc archive (header "070701", 13 eight-digit hex fields:
/// c_filesize at 54, c_namesize at 94; name and data each padded to 4 bytes).
fn newc_names(b: &[u8]) -> Vec<String> {
    let hex =
        |o: usize| usize::from_str_radix(std::str::from_utf8(&b[o..o + 8]).unwrap(), 16).unwrap();
    let pad = |n: usize| (n + 3) & !3;
    let mut out = Vec::new();
    let mut o = 0;
    loop {
        assert_eq!(&b[o..o + 6], b"070701", "newc magic at {o}");
        let (size, namesize) = (hex(o + 54), hex(o + 94));
        let name = String::from_utf8(b[o + 110..o + 110 + namesize - 1].to_vec()).unwrap();
        if name == "TRAILER!!!" {
            return out;
        }
        out.push(name);
        o = pad(o + 110 + namesize);
        o = pad(o + size);
    }
}

const KERNEL: u16 = 1;
const CMDLINE: u16 = 2;
const RAMDISK: u16 = 3;
const METADATA: u16 = 5;

fn pcr(m: &serde_json::Value, i: u32) -> String {
    m["measurements"]["nitro"]["pcrs"][i.to_string()]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_reference_eif_is_what_aws_reads_and_writes() {
    let Some(oracle) = oracle("the_reference_eif_is_what_aws_reads_and_writes") else {
        return;
    };
    let out = reference_build();
    let eif_path = out.join("image.eif");
    let eif = std::fs::read(&eif_path).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    let d = describe(&oracle, &eif_path);
    assert_eq!(d["crc_ok"], true, "{d}");
    assert_eq!(d["version"], 4);
    for i in 0..3 {
        assert_eq!(
            d["measurements"][format!("PCR{i}")].as_str().unwrap(),
            pcr(&m, i),
            "PCR{i}"
        );
    }
    assert!(d["measurements"].get("PCR8").is_none(), "{d}");
    assert_eq!(d["metadata"]["ImageName"], "clean-room");
    assert_eq!(
        d["metadata"]["BuildMetadata"]["BuildTime"], "2023-11-14T22:13:20Z",
        "the recipe's source_date_epoch 1700000000, not the wall clock"
    );
    assert_eq!(
        m["artifacts"]["image.eif"]["sha256"].as_str().unwrap(),
        sha256_hex(&eif)
    );
    // The sections, read here: kernel = the recipe's pinned vmlinuz; two ramdisks.
    let s = sections(&eif);
    let kinds: Vec<u16> = s.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [KERNEL, CMDLINE, METADATA, RAMDISK, RAMDISK]);
    let recipe = std::fs::read_to_string(reference_recipe().join("image.toml")).unwrap();
    assert!(
        recipe.contains(&format!("sha256 = \"{}\"", sha256_hex(&s[0].1))),
        "the kernel section is not the recipe's pinned kernel"
    );
    assert_eq!(
        String::from_utf8(s[1].1.clone()).unwrap(),
        m["cmdline"].as_str().unwrap()
    );
    // The same inputs through AWS's EifBuilder: the same bytes.
    let tmp = TempDir::new("eif-oracle-build");
    let f = |name: &str, b: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let kernel = f("kernel", &s[0].1);
    let metadata = f("metadata.json", &s[2].1);
    let r0 = f("r0.cpio", &s[3].1);
    let r1 = f("r1.cpio", &s[4].1);
    let theirs = tmp.path().join("aws.eif");
    let o = Command::new(&oracle)
        .arg("build")
        .arg(&theirs)
        .arg(&kernel)
        .arg(String::from_utf8(s[1].1.clone()).unwrap())
        .arg(&metadata)
        .arg(&r0)
        .arg(&r1)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let built: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(built["PCR0"].as_str().unwrap(), pcr(&m, 0));
    let aws = std::fs::read(&theirs).unwrap();
    assert!(
        aws == eif,
        "AWS's EifBuilder wrote {} bytes (sha256 {}), dcr {} (sha256 {})",
        aws.len(),
        sha256_hex(&aws),
        eif.len(),
        sha256_hex(&eif)
    );
    // The boot ramdisk holds PID 1, the application ramdisk the contract and workloads.
    let list = |b: &[u8]| newc_names(b).join("\n");
    let boot = list(&s[3].1);
    let app = list(&s[4].1);
    assert!(boot.lines().any(|l| l == "init"), "{boot}");
    assert!(
        !boot.contains("contract.json") && !boot.contains("workloads/"),
        "{boot}"
    );
    assert!(
        app.contains("etc/dcr/contract.json") && app.contains("workloads/sql"),
        "{app}"
    );
    assert!(!app.lines().any(|l| l == "init"), "{app}");
}

#[test]
fn one_changed_byte_moves_the_pcrs_as_aws_computes_them() {
    let Some(oracle) = oracle("one_changed_byte_moves_the_pcrs") else {
        return;
    };
    let out = reference_build();
    let eif = std::fs::read(out.join("image.eif")).unwrap();
    let s = sections(&eif);
    let meta: dcr_build::eif::Metadata = serde_json::from_slice(&s[2].1).unwrap();
    let cmdline = String::from_utf8(s[1].1.clone()).unwrap();
    let tmp = TempDir::new("eif-mutations");
    let base = describe(&oracle, &out.join("image.eif"));
    let pcrs = |d: &serde_json::Value| -> Vec<String> {
        (0..3)
            .map(|i| {
                d["measurements"][format!("PCR{i}")]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let base = pcrs(&base);
    let mut kernel = s[0].1.clone();
    let k_mid = kernel.len() / 2;
    kernel[k_mid] ^= 1;
    let mut r0 = s[3].1.clone();
    r0[200] ^= 1;
    let mut r1 = s[4].1.clone();
    let r_mid = r1.len() / 3;
    r1[r_mid] ^= 1;
    let cmd2 = cmdline.replacen("loglevel=4", "loglevel=5", 1);
    assert_ne!(cmd2, cmdline);
    // (what changed, kernel, cmdline, ramdisk 0, ramdisk 1, which PCRs move)
    type Case<'a> = (&'a str, &'a [u8], &'a str, &'a [u8], &'a [u8], [bool; 3]);
    let cases: [Case; 4] = [
        (
            "kernel",
            &kernel,
            &cmdline,
            &s[3].1,
            &s[4].1,
            [true, true, false],
        ),
        (
            "cmdline",
            &s[0].1,
            &cmd2,
            &s[3].1,
            &s[4].1,
            [true, true, false],
        ),
        (
            "boot ramdisk",
            &s[0].1,
            &cmdline,
            &r0,
            &s[4].1,
            [true, true, false],
        ),
        (
            "application ramdisk",
            &s[0].1,
            &cmdline,
            &s[3].1,
            &r1,
            [true, false, true],
        ),
    ];
    for (what, k, c, a, b, moves) in cases {
        let img = dcr_build::eif::write(&dcr_build::eif::EifInputs {
            kernel: k,
            cmdline: c,
            metadata: &meta,
            ramdisks: vec![a, b],
            memory_mib: 1024,
            cpus: 2,
            arm64: false,
            signer: None,
        })
        .unwrap();
        let p = tmp.path().join(format!("{}.eif", what.replace(' ', "-")));
        std::fs::write(&p, &img).unwrap();
        let d = describe(&oracle, &p);
        assert_eq!(d["crc_ok"], true, "{what}");
        let theirs = pcrs(&d);
        let ours = dcr_measure::nitro::pcrs(k, c.as_bytes(), &[a, b], None);
        assert_eq!(
            theirs,
            [ours.pcr0, ours.pcr1, ours.pcr2].map(hex::encode),
            "{what}"
        );
        for i in 0..3 {
            assert_eq!(theirs[i] != base[i], moves[i], "{what}: PCR{i}");
        }
        // compare names the section and the PCRs that moved.
        let lines = dcr_build::compare::compare_file("image.eif", &eif, &img);
        let text = lines.join("\n");
        let section = match what {
            "kernel" => "section 0 (kernel)",
            "cmdline" => "section 1 (cmdline)",
            "boot ramdisk" => "section 3 (ramdisk 0)",
            _ => "section 4 (ramdisk 1)",
        };
        assert!(text.contains(section), "{what}: {text}");
        for (i, moved) in moves.iter().enumerate() {
            assert_eq!(
                text.contains(&format!("PCR{i} ")),
                *moved,
                "{what}: PCR{i} in {text}"
            );
        }
    }
}

#[test]
fn a_signed_eif_has_pcr8_and_a_signature_aws_verifies() {
    let Some(oracle) = oracle("a_signed_eif_has_pcr8") else {
        return;
    };
    let tmp = TempDir::new("eif-signed");
    // A P-384 key and self-signed certificate made by OpenSSL (PKCS#8 PEM), and a second key.
    let keygen = |name: &str| {
        let key = tmp.path().join(format!("{name}.key"));
        let cert = tmp.path().join(format!("{name}.pem"));
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:secp384r1",
            ])
            .args([
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=dcr-eif-test",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (
            std::fs::read(&cert).unwrap(),
            std::fs::read_to_string(&key).unwrap(),
        )
    };
    let (cert, key) = keygen("a");
    let (_, other_key) = keygen("b");
    let err = dcr_build::eif::Signer::from_pem(&cert, &other_key).unwrap_err();
    assert!(err.to_string().contains("not the certificate's"), "{err}");
    let signer = dcr_build::eif::Signer::from_pem(&cert, &key).unwrap();
    let meta: dcr_build::eif::Metadata = serde_json::from_value(serde_json::json!({
        "ImageName": "signed", "ImageVersion": "1",
        "BuildMetadata": {"BuildTime": "2023-11-14T22:13:20Z", "BuildTool": "dcr-build",
            "BuildToolVersion": "0", "OperatingSystem": "Linux", "KernelVersion": "6"},
        "DockerInfo": {}, "CustomMetadata": null,
    }))
    .unwrap();
    let kernel = vec![0x4b; 4096];
    let (r0, r1) = (vec![0x30; 1000], vec![0x31; 3000]);
    let inputs = |signer| dcr_build::eif::EifInputs {
        kernel: &kernel,
        cmdline: "console=ttyS0",
        metadata: &meta,
        ramdisks: vec![&r0, &r1],
        memory_mib: 1024,
        cpus: 2,
        arm64: false,
        signer,
    };
    let signed = dcr_build::eif::write(&inputs(Some(&signer))).unwrap();
    assert_eq!(
        signed,
        dcr_build::eif::write(&inputs(Some(&signer))).unwrap()
    );
    let unsigned = dcr_build::eif::write(&inputs(None)).unwrap();
    let (ps, pu) = (
        tmp.path().join("signed.eif"),
        tmp.path().join("unsigned.eif"),
    );
    std::fs::write(&ps, &signed).unwrap();
    std::fs::write(&pu, &unsigned).unwrap();
    let (ds, du) = (describe(&oracle, &ps), describe(&oracle, &pu));
    assert_eq!(ds["crc_ok"], true);
    assert_eq!(ds["num_sections"], 6);
    // PCR 8 = the certificate (its DER read by OpenSSL); PCR 0-2 as without a signature.
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(tmp.path().join("a.pem"))
        .output()
        .unwrap()
        .stdout;
    let ours = dcr_measure::nitro::pcrs(&kernel, b"console=ttyS0", &[&r0, &r1], Some(&der));
    assert_eq!(
        ds["measurements"]["PCR8"].as_str().unwrap(),
        hex::encode(ours.pcr8.unwrap())
    );
    for i in 0..3 {
        assert_eq!(
            ds["measurements"][format!("PCR{i}")],
            du["measurements"][format!("PCR{i}")]
        );
    }
    let parsed = dcr_build::eif::Eif::parse(&signed).unwrap();
    assert_eq!(parsed.pcrs(&signed), ours);
    // AWS's checker verifies the PCR 0 signature with the certificate.
    let check = |p: &Path| {
        Command::new(&oracle)
            .arg("verify-signature")
            .arg(p)
            .output()
            .unwrap()
    };
    let o = check(&ps);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !check(&pu).status.success(),
        "an unsigned EIF has no signature"
    );
    // The last byte of the COSE signature changed (the section ends with it, as a CBOR
    // integer whose low bit flips to another valid integer): refused.
    let mut t = signed.clone();
    let last = t.len() - 1;
    t[last] ^= 1;
    let pt = tmp.path().join("tampered.eif");
    std::fs::write(&pt, &t).unwrap();
    let o = check(&pt);
    assert!(!o.status.success(), "a changed signature verified");
}

#[test]
fn an_eif_kernel_of_its_own_is_packed_and_measured() {
    // `[nitro.kernel]`: the EIF boots another kernel than the UKI (no Debian kernel reads
    // Nitro's command-line virtio-mmio devices). Stand-in kernel here: the reference kernel
    // with one byte of its payload changed (the bzImage header, whose release string the
    // builder reads, is untouched).
    let Some(oracle) = oracle("an_eif_kernel_of_its_own") else {
        return;
    };
    let reference = sections(&std::fs::read(reference_build().join("image.eif")).unwrap());
    let own = {
        let mut k = reference[0].1.clone();
        let at = k.len() * 2 / 3;
        k[at] ^= 0x20;
        k
    };
    let t = TempDir::new("nitro-kernel");
    let kpath = t.path().join("vmlinuz-nitro");
    std::fs::write(&kpath, &own).unwrap();
    let workload = t.path().join("overlap.bin");
    std::fs::write(&workload, b"a stand-in workload").unwrap();
    let base = portable_recipe(&workload, &sha256_hex(b"a stand-in workload"));
    let build = |pin: &str, out: &Path| {
        std::fs::write(
            t.path().join("image.toml"),
            format!(
                "{base}\n[nitro.kernel]\nvmlinuz = \"{}\"\nsha256 = \"{pin}\"\n",
                kpath.display()
            ),
        )
        .unwrap();
        run_dcr_build(&[
            "image",
            t.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // A wrong pin stops the build, naming the input.
    let o = build(&"00".repeat(32), &t.path().join("bad"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nitro.kernel") && stderr(&o).contains("sha256"),
        "{}",
        stderr(&o)
    );
    let out = t.path().join("out");
    let o = build(&sha256_hex(&own), &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let eif = std::fs::read(out.join("image.eif")).unwrap();
    let s = sections(&eif);
    assert!(
        s[0].1 == own,
        "the EIF's kernel section is not [nitro.kernel]"
    );
    // The UKI keeps the recipe's [kernel].
    let efi = std::fs::read(out.join("image.efi")).unwrap();
    assert!(dcr_build::uki::section(&efi, ".linux").unwrap().unwrap() == &reference[0].1[..]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    assert_eq!(
        m["inputs"]["nitro.kernel"]["sha256"].as_str().unwrap(),
        sha256_hex(&own)
    );
    // AWS's library computes the PCRs measurements.json predicts.
    let d = describe(&oracle, &out.join("image.eif"));
    assert_eq!(d["crc_ok"], true, "{d}");
    for i in 0..3 {
        assert_eq!(
            d["measurements"][format!("PCR{i}")].as_str().unwrap(),
            pcr(&m, i),
            "PCR{i}"
        );
    }
    // The boot ramdisk carries no modules (built for the UKI kernel); the UKI's initramfs does.
    let boot = newc_names(&s[3].1);
    assert!(boot.iter().any(|n| n == "init"), "{boot:?}");
    assert!(
        !boot.iter().any(|n| n.starts_with("lib/modules")),
        "{boot:?}"
    );
    let initrd = newc_names(&std::fs::read(out.join("initrd.cpio")).unwrap());
    assert!(
        initrd.iter().any(|n| n.ends_with("modules.dep")),
        "{initrd:?}"
    );
}
