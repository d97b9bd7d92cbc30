//! Bad recipes: each gives one line naming the problem and a non-zero exit, and writes nothing.

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
