//! Bad recipes: each gives one line naming the problem and a non-zero exit, and writes nothing.

use std::path::Path;

use dcr_tests::*;

struct Case {
    name: &'static str,
    edit: fn(String) -> String,
    expect: &'static [&'static str],
}

fn check(case: &Case, out_override: Option<&str>) {
    let t = TempDir::new(case.name);
    let wf = t.path().join("overlap.bin");
    std::fs::write(&wf, b"workload").unwrap();
    let text = (case.edit)(portable_recipe(&wf, &sha256_hex(b"workload")));
    std::fs::write(t.path().join("image.toml"), text).unwrap();
    let out = t.path().join("out");
    let out_s = out_override
        .map(str::to_string)
        .unwrap_or(out.display().to_string());
    let o = run_dcr_build(&["image", t.path().to_str().unwrap(), "--out", &out_s]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{}: must fail", case.name);
    assert_ne!(
        o.status.code(),
        None,
        "{}: must exit, not be killed",
        case.name
    );
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{}: {err}", case.name);
    assert!(!err.contains("panicked"), "{}: {err}", case.name);
    for needle in case.expect {
        assert!(
            last.contains(needle),
            "{}: {needle:?} not in {last:?}",
            case.name
        );
    }
    assert!(!out.join("image.efi").exists() && !out.join("initrd.cpio").exists());
}

#[test]
fn unknown_field() {
    check(
        &Case {
            name: "unknown-field",
            edit: |t| {
                t.replace(
                    "version = \"0.1.0\"",
                    "version = \"0.1.0\"\ncolour = \"blue\"",
                )
            },
            expect: &["image.toml", "colour"],
        },
        None,
    );
}

#[test]
fn missing_input() {
    check(
        &Case {
            name: "missing-input",
            edit: |t| {
                let start = t.find("contract = ").unwrap();
                let end = start + t[start..].find('\n').unwrap();
                format!(
                    "{}contract = \"no-such-contract.toml\"{}",
                    &t[..start],
                    &t[end..]
                )
            },
            expect: &["input contract", "no-such-contract.toml", "No such file"],
        },
        None,
    );
}

#[test]
fn wrong_sha256_of_kernel() {
    check(
        &Case {
            name: "wrong-sha-kernel",
            edit: |t| {
                t.replace(
                    "sha256 = \"fadf27c4528461030ddff1d20e6622f76e1e007f7c64796f5ad9b71e37267a6f\"",
                    "sha256 = \"fadf27c4528461030ddff1d20e6622f76e1e007f7c64796f5ad9b71e37267a6e\"",
                )
            },
            expect: &[
                "input kernel",
                "sha256 mismatch",
                "fadf27c4528461030ddff1d20e6622f76e1e007f7c64796f5ad9b71e37267a6e",
            ],
        },
        None,
    );
}

#[test]
fn wrong_sha256_of_stub() {
    check(
        &Case {
            name: "wrong-sha-stub",
            edit: |t| {
                t.replace(
                    "sha256 = \"14b3d3502bdc645d14022de17fa18698bedb641e3dc9fc0d64e762c670d15e80\"",
                    "sha256 = \"04b3d3502bdc645d14022de17fa18698bedb641e3dc9fc0d64e762c670d15e80\"",
                )
            },
            expect: &["input stub", "sha256 mismatch"],
        },
        None,
    );
}

#[test]
fn wrong_sha256_of_workload_file() {
    check(
        &Case {
            name: "wrong-sha-workload",
            edit: |t| t.replace(&sha256_hex(b"workload"), &sha256_hex(b"other")),
            expect: &["input workload:overlap", "sha256 mismatch"],
        },
        None,
    );
}

#[test]
fn unknown_module() {
    check(
        &Case {
            name: "unknown-module",
            edit: |t| {
                let start = t.find("modules = [").unwrap();
                let end = start + t[start..].find('\n').unwrap();
                format!(
                    "{}modules = [\"virtio_net\", \"no_such_module\"]{}",
                    &t[..start],
                    &t[end..]
                )
            },
            expect: &["unknown kernel module", "no_such_module"],
        },
        None,
    );
}

#[test]
fn cmdline_with_nul() {
    check(
        &Case {
            name: "cmdline-nul",
            edit: |t| {
                t.replace(
                    "cmdline = \"console=ttyS0",
                    "cmdline = \"console=ttyS0\\u0000",
                )
            },
            expect: &["image.toml", "cmdline", "NUL"],
        },
        None,
    );
}

#[test]
fn unwritable_output_directory() {
    // A path below a regular file cannot be created, even by root.
    let t = TempDir::new("unwritable");
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("out");
    check(
        &Case {
            name: "unwritable-out",
            edit: |t| t,
            expect: &["output directory", "a-file/out"],
        },
        Some(out.to_str().unwrap()),
    );
}

#[test]
fn not_a_recipe_at_all() {
    let t = TempDir::new("garbage");
    std::fs::write(t.path().join("image.toml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let o = run_dcr_build(&[
        "image",
        t.path().to_str().unwrap(),
        "--out",
        t.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("image.toml"), "{err}");
}

/// Run dcr-build; kill it if it has not finished in `secs` (the old behaviour on a device or
/// FIFO input was to hang, reading without end).
fn run_dcr_build_within(args: &[&str], secs: u64) -> std::process::Output {
    let mut child = std::process::Command::new(dcr_build())
        .args(args)
        .current_dir(workspace())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dcr-build");
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > secs {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dcr-build {args:?} still running after {secs} s (reading a device or FIFO?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A recipe whose `contract` or workload `file` is `special`: one error line naming the
/// input (the recipe field) and the path, quickly, and nothing written.
fn special_input(tag: &str, which: &str, special: &Path, expect: &[&str]) {
    let t = TempDir::new(tag);
    let wf = t.path().join("overlap.bin");
    std::fs::write(&wf, b"workload").unwrap();
    let mut text = portable_recipe(&wf, &sha256_hex(b"workload"));
    if which == "contract" {
        let start = text.find("contract = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        text = format!(
            "{}contract = \"{}\"{}",
            &text[..start],
            special.display(),
            &text[end..]
        );
    } else {
        text = text.replace(wf.to_str().unwrap(), special.to_str().unwrap());
    }
    std::fs::write(t.path().join("image.toml"), text).unwrap();
    let out = t.path().join("out");
    let o = run_dcr_build_within(
        &[
            "image",
            t.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        60,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    for needle in expect {
        assert!(last.contains(needle), "{needle:?} not in {last:?}");
    }
    assert!(!out.join("image.efi").exists());
}

#[test]
fn contract_is_a_device() {
    special_input(
        "contract-dev-zero",
        "contract",
        Path::new("/dev/zero"),
        &["input contract", "/dev/zero", "character device"],
    );
}

#[test]
fn contract_over_1_mib() {
    let t = TempDir::new("contract-big");
    let big = t.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; (1 << 20) + 1]).unwrap();
    special_input(
        "contract-big",
        "contract",
        &big,
        &[
            "input contract",
            "big.toml",
            "over the limit of 1048576 bytes",
        ],
    );
}

#[test]
fn workload_file_is_a_fifo_or_device() {
    let t = TempDir::new("workload-fifo");
    let fifo = t.path().join("workload.fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    special_input(
        "workload-fifo",
        "workload",
        &fifo,
        &["workload:", "workloads.file", "workload.fifo", "FIFO"],
    );
    special_input(
        "workload-dev",
        "workload",
        Path::new("/dev/zero"),
        &["workloads.file", "/dev/zero", "character device"],
    );
}

#[test]
fn recipe_is_a_device() {
    let o = run_dcr_build_within(&["image", "/dev/zero"], 60);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn wasm_file_must_be_named_wasm() {
    check(
        &Case {
            name: "wasm-not-named-wasm",
            edit: |t| t.replacen("file = \"", "kind = \"wasm\"\nfile = \"", 1),
            expect: &["image.toml", "workloads[0].file", "*.wasm"],
        },
        None,
    );
}

/// A wasm workload whose contract entry is native, then one whose bytes are no WebAssembly
/// module: each refused with one line naming it, nothing written.
#[test]
fn wasm_workload_kind_and_bytes_are_checked() {
    let t = TempDir::new("wasm-kind");
    let wf = t.path().join("overlap.wasm");
    std::fs::write(&wf, b"workload").unwrap();
    let text = portable_recipe(&wf, &sha256_hex(b"workload")).replacen(
        "file = \"",
        "kind = \"wasm\"\nfile = \"",
        1,
    );
    std::fs::write(t.path().join("image.toml"), text).unwrap();
    let out = t.path().join("out");
    let build = || {
        let o = run_dcr_build(&[
            "image",
            t.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(!out.join("initrd.cpio").exists());
        stderr(&o).lines().last().unwrap_or("").to_string()
    };
    let last = build();
    assert!(
        last.contains("contract.toml")
            && last.contains("is kind = \"native\" but the recipe builds it as kind = \"wasm\""),
        "{last}"
    );
    let contract = t.path().join("contract.toml");
    let c = std::fs::read_to_string(&contract).unwrap();
    let c = c.replacen("\nsha256 = \"", "\nkind = \"wasm\"\nsha256 = \"", 1);
    std::fs::write(&contract, c).unwrap();
    let last = build();
    assert!(
        last.contains("workload overlap: not a WebAssembly core module"),
        "{last}"
    );
}
