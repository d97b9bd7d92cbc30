//! SEV / SEV-ES / SEV-SNP launch digests: every vector in
//! ../shared/fixtures/measure/vectors.json, random cases run side by side with sev-snp-measure
//! 0.0.13 itself (no stored answers), bad input, and one-byte mutations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcr_tests::*;

fn ours(args: &[String]) -> Output {
    let mut a: Vec<&str> = vec!["measure", "snp"];
    a.extend(args.iter().map(String::as_str));
    run_dcr_build(&a)
}

fn digest_of(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", stderr(o));
    stdout(o).trim().to_string()
}

fn vectors(fx: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fx.join("measure/vectors.json")).unwrap()).unwrap()
}

fn s(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| match x {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Arguments for a vector case; `ovmf` is the firmware path to use.
fn case_args(c: &serde_json::Value, ovmf: &Path) -> Vec<String> {
    let mut a = vec![
        format!("--mode={}", s(c, "mode").unwrap_or_else(|| "snp".into())),
        format!("--ovmf={}", ovmf.display()),
    ];
    for (k, flag) in [
        ("vcpus", "--vcpus"),
        ("vcpu_type", "--vcpu-type"),
        ("guest_features", "--guest-features"),
        ("vmm", "--vmm-type"),
    ] {
        if let Some(v) = s(c, k) {
            a.push(format!("{flag}={v}"));
        }
    }
    // kernel/initrd "" = an empty file (the upstream tests pass /dev/null); null = absent.
    for (k, flag) in [("kernel", "--kernel"), ("initrd", "--initrd")] {
        if let Some(v) = s(c, k) {
            assert!(v.is_empty(), "vector with a real {k} file");
            a.push(format!("{flag}=/dev/null"));
        }
    }
    if let Some(v) = s(c, "append") {
        a.push(format!("--append={v}"));
    }
    a
}

#[test]
fn upstream_sev_snp_measure_vectors() {
    let Some(fx) = fixtures("upstream_sev_snp_measure_vectors") else {
        return;
    };
    let v = vectors(&fx);
    let mut checked = 0;
    for c in v["snp_upstream_sev_snp_measure"]["cases"]
        .as_array()
        .unwrap()
    {
        let mode = s(c, "mode").unwrap();
        let ovmf_name = s(c, "ovmf").unwrap();
        if mode == "snp:svsm" {
            // Its OVMF (svsm_ovmf.fd) is not in the fixtures; svsm mode is covered by the
            // side-by-side test below.
            eprintln!("note: vector {mode} needs {ovmf_name}, not available");
            continue;
        }
        let ovmf = fx.join("measure/sev-snp-measure").join(&ovmf_name);
        let expected = s(c, "ld")
            .or_else(|| s(c, "ovmf_hash"))
            .or_else(|| s(c, "ld_python_0_0_13_rdx_0x600"))
            .unwrap();
        let got = digest_of(&ours(&case_args(c, &ovmf)), &format!("{c}"));
        assert_eq!(got, expected, "vector {c}");
        checked += 1;
    }
    assert!(checked >= 17, "only {checked} vectors checked");
}

#[test]
fn debian_ovmf_vectors() {
    let Some(fx) = fixtures("debian_ovmf_vectors") else {
        return;
    };
    let v = vectors(&fx);
    let t = TempDir::new("debian-ovmf");
    let ovmf = t.path().join("OVMF.fd");
    std::fs::write(&ovmf, debian_ovmf(&fx)).unwrap();
    for c in v["snp_derived_debian_ovmf"]["cases"].as_array().unwrap() {
        let expected = s(c, "ld").or_else(|| s(c, "ovmf_hash")).unwrap();
        let got = digest_of(&ours(&case_args(c, &ovmf)), &format!("{c}"));
        assert_eq!(got, expected, "vector {c}");
    }
}

const CPU_TYPES: [&str; 16] = [
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-IBPB",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
    "EPYC-Turin",
];

#[test]
fn random_cases_match_sev_snp_measure() {
    let Some(fx) = fixtures("random_cases_match_sev_snp_measure") else {
        return;
    };
    let Some(tool) = sev_snp_measure("random_cases_match_sev_snp_measure") else {
        return;
    };
    let seed = std::env::var("DCR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("random_cases_match_sev_snp_measure: DCR_SEED={seed}");
    let mut rng = Rng(seed);
    let t = TempDir::new("snp-random");
    let amd = fx.join("measure/sev-snp-measure/ovmf_AmdSev_suffix.bin");
    let x64 = fx.join("measure/sev-snp-measure/ovmf_OvmfX64_suffix.bin");
    let svsm = fx.join("measure/sev-snp-measure/svsm.bin");
    let debian = t.path().join("OVMF.fd");
    std::fs::write(&debian, debian_ovmf(&fx)).unwrap();
    let cases = 40;
    for i in 0..cases {
        let mut a: Vec<String> = Vec::new();
        let mode = [
            "snp",
            "snp",
            "snp",
            "snp",
            "seves",
            "sev",
            "snp:svsm",
            "snp-seeded",
        ][rng.below(8) as usize];
        let with_kernel = mode != "snp:svsm" && rng.below(4) != 0;
        let ovmf: PathBuf = if mode == "snp:svsm" {
            debian.clone()
        } else if with_kernel {
            amd.clone()
        } else {
            [&amd, &x64, &debian][rng.below(3) as usize].clone()
        };
        a.push(format!(
            "--mode={}",
            if mode == "snp-seeded" { "snp" } else { mode }
        ));
        a.push(format!("--ovmf={}", ovmf.display()));
        if mode != "sev" {
            a.push(format!("--vcpus={}", 1 + rng.below(64)));
            match rng.below(5) {
                0 => a.push(format!("--vcpu-sig={:#x}", rng.next() as u32)),
                1 => {
                    a.push(format!("--vcpu-family={}", 15 + rng.below(20)));
                    a.push(format!("--vcpu-model={}", rng.below(256)));
                    a.push(format!("--vcpu-stepping={}", rng.below(16)));
                }
                _ => a.push(format!("--vcpu-type={}", CPU_TYPES[rng.below(16) as usize])),
            }
        }
        if mode.starts_with("snp") && mode != "snp:svsm" {
            a.push(format!("--guest-features={:#x}", rng.next() & 0xffff));
            a.push(format!(
                "--vmm-type={}",
                ["QEMU", "ec2", "gce"][rng.below(3) as usize]
            ));
        } else if mode == "seves" {
            a.push(format!(
                "--vmm-type={}",
                ["QEMU", "ec2", "gce"][rng.below(3) as usize]
            ));
        }
        if mode == "snp-seeded" {
            let h: String = (0..48)
                .map(|_| format!("{:02x}", rng.next() as u8))
                .collect();
            a.push(format!("--snp-ovmf-hash={h}"));
        }
        if mode == "snp:svsm" {
            a.push(format!("--svsm={}", svsm.display()));
            a.push(format!("--vars-size={}", 4096 * rng.below(256)));
        }
        if with_kernel {
            let k = t.path().join(format!("kernel{i}"));
            std::fs::write(&k, rng.bytes(200_000)).unwrap();
            a.push(format!("--kernel={}", k.display()));
            if rng.below(3) != 0 {
                let r = t.path().join(format!("initrd{i}"));
                std::fs::write(&r, rng.bytes(300_000)).unwrap();
                a.push(format!("--initrd={}", r.display()));
            }
            if rng.below(3) != 0 {
                let len = rng.below(200) as usize;
                let cmd: String = (0..len)
                    .map(|_| (b' ' + rng.below(95) as u8) as char)
                    .collect();
                a.push(format!("--append={cmd}"));
            }
        }
        if rng.below(4) == 0 {
            a.push("--output-format=base64".into());
        }
        let theirs = Command::new(&tool).args(&a).output().unwrap();
        let mine = ours(&a);
        assert_eq!(
            theirs.status.success(),
            mine.status.success(),
            "case {i} {a:?}: sev-snp-measure {:?} {}, dcr-build {}",
            theirs.status,
            String::from_utf8_lossy(&theirs.stderr),
            stderr(&mine)
        );
        assert_eq!(
            stdout(&mine),
            String::from_utf8_lossy(&theirs.stdout),
            "case {i} {a:?}"
        );
    }
}

#[test]
fn verbose_output_is_the_same_line() {
    let Some(fx) = fixtures("verbose_output_is_the_same_line") else {
        return;
    };
    let Some(tool) = sev_snp_measure("verbose_output_is_the_same_line") else {
        return;
    };
    let a: Vec<String> = vec![
        "-v".into(),
        "--mode=snp".into(),
        "--vcpus=2".into(),
        "--vcpu-type=EPYC-Milan".into(),
        format!(
            "--ovmf={}",
            fx.join("measure/sev-snp-measure/ovmf_AmdSev_suffix.bin")
                .display()
        ),
    ];
    let theirs = Command::new(&tool).args(&a).output().unwrap();
    assert_eq!(stdout(&ours(&a)), String::from_utf8_lossy(&theirs.stdout));
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let Some(fx) = fixtures("bad_inputs_fail_with_one_line") else {
        return;
    };
    let t = TempDir::new("snp-bad");
    let amd = fx.join("measure/sev-snp-measure/ovmf_AmdSev_suffix.bin");
    let x64 = fx.join("measure/sev-snp-measure/ovmf_OvmfX64_suffix.bin");
    let truncated = t.path().join("truncated.fd");
    std::fs::write(&truncated, &std::fs::read(&amd).unwrap()[..1000]).unwrap();
    let kernel = t.path().join("k");
    std::fs::write(&kernel, b"kernel").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--mode=snp".into(),
                "--vcpus=1".into(),
                "--vcpu-type=EPYC".into(),
                format!("--ovmf={}", truncated.display()),
            ],
            "not a whole number of 4 KiB pages",
        ),
        (
            vec![
                "--mode=snp".into(),
                "--vcpus=1".into(),
                "--vcpu-type=EPYC".into(),
                format!("--ovmf={}", x64.display()),
                format!("--kernel={}", kernel.display()),
            ],
            "SNP_KERNEL_HASHES",
        ),
        (
            vec![
                "--mode=snp".into(),
                "--vcpus=1".into(),
                "--vcpu-type=EPYC-Zen9".into(),
                format!("--ovmf={}", amd.display()),
            ],
            "EPYC-Zen9",
        ),
        (
            vec![
                "--mode=snp".into(),
                "--vcpu-type=EPYC".into(),
                format!("--ovmf={}", amd.display()),
            ],
            "--vcpus",
        ),
        (
            vec![
                "--mode=snp".into(),
                "--vcpus=1".into(),
                format!("--ovmf={}", amd.display()),
            ],
            "--vcpu-type",
        ),
        (
            vec![
                "--mode=snp".into(),
                "--vcpus=1".into(),
                "--vcpu-type=EPYC".into(),
                "--ovmf=/nonexistent.fd".into(),
            ],
            "/nonexistent.fd",
        ),
    ];
    for (args, needle) in cases {
        let o = ours(&args);
        assert!(!o.status.success(), "{args:?} must fail");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err:?}"
        );
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn one_byte_mutations_change_the_digest() {
    let Some(fx) = fixtures("one_byte_mutations_change_the_digest") else {
        return;
    };
    let t = TempDir::new("snp-mutate");
    let fw = std::fs::read(fx.join("measure/sev-snp-measure/ovmf_AmdSev_suffix.bin")).unwrap();
    let kernel = vec![0x11u8; 5000];
    let initrd = vec![0x22u8; 7000];
    let cmdline = "console=ttyS0 panic=-1".to_string();
    let run = |fw: &[u8], k: &[u8], i: &[u8], c: &str, tag: &str| {
        let d = t.path().join(tag);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("fw"), fw).unwrap();
        std::fs::write(d.join("k"), k).unwrap();
        std::fs::write(d.join("i"), i).unwrap();
        let args = vec![
            "--mode=snp".to_string(),
            "--vcpus=2".into(),
            "--vcpu-type=EPYC-Genoa".into(),
            format!("--ovmf={}", d.join("fw").display()),
            format!("--kernel={}", d.join("k").display()),
            format!("--initrd={}", d.join("i").display()),
            format!("--append={c}"),
        ];
        digest_of(&ours(&args), tag)
    };
    let base = run(&fw, &kernel, &initrd, &cmdline, "base");
    let flip = |b: &[u8], at: usize| {
        let mut v = b.to_vec();
        v[at] ^= 1;
        v
    };
    // A firmware byte that is not part of the footer tables (which would change the layout).
    assert_ne!(
        run(&flip(&fw, 17), &kernel, &initrd, &cmdline, "fw"),
        base,
        "firmware"
    );
    assert_ne!(
        run(&fw, &flip(&kernel, 4999), &initrd, &cmdline, "k"),
        base,
        "kernel"
    );
    assert_ne!(
        run(&fw, &kernel, &flip(&initrd, 0), &cmdline, "i"),
        base,
        "initrd"
    );
    assert_ne!(
        run(&fw, &kernel, &initrd, "console=ttyS0 panic=-2", "c"),
        base,
        "cmdline"
    );
}

#[test]
fn svsm_vars_size_zero_counts_as_missing_like_sev_snp_measure() {
    // Found by the random test (DCR_SEED=1795454449723354761, case 31): sev-snp-measure treats
    // --vars-size=0 as not given. Both tools must refuse it the same way.
    let Some(fx) = fixtures("svsm_vars_size_zero") else {
        return;
    };
    let Some(tool) = sev_snp_measure("svsm_vars_size_zero") else {
        return;
    };
    let a: Vec<String> = vec![
        "--mode=snp:svsm".into(),
        "--vcpus=1".into(),
        "--vcpu-type=EPYC-v4".into(),
        format!(
            "--ovmf={}",
            fx.join("measure/sev-snp-measure/ovmf_AmdSev_suffix.bin")
                .display()
        ),
        format!(
            "--svsm={}",
            fx.join("measure/sev-snp-measure/svsm.bin").display()
        ),
        "--vars-size=0".into(),
    ];
    let theirs = Command::new(&tool).args(&a).output().unwrap();
    let mine = ours(&a);
    assert!(!theirs.status.success());
    assert!(!mine.status.success());
    assert!(
        stderr(&mine).contains("--vars-size or --vars-file"),
        "{}",
        stderr(&mine)
    );
}
