//! A clean room whose workload is a WebAssembly module (`kind = "wasm"`, images/wasm-overlap),
//! end to end, and dcr's wasmtime runner (attest/wasm-runner) against hostile modules:
//!
//! - `dcr-build image` builds the reference `overlap` crate for wasm32-wasip1 and the runner
//!   for the guest; the module's SHA-256 is the contract's, the runner is an input of
//!   measurements.json;
//! - on this machine, the runner gives the same bytes as the native `overlap` binary on the
//!   same plaintext, and both equal the aggregates computed here independently;
//! - a hostile module (tests/data/wasm-probe.rs) run by the same runner binary: the inputs are
//!   readable and nothing can be written, created, removed or renamed; nothing outside the
//!   inputs is reachable; no sockets; the wall clock reads 0 and the environment holds only
//!   DCR_INPUTS; a module past its time (computing, or asleep in a host call), out of memory,
//!   over its output size, exiting non-zero or with a status WASI forbids, or trapping fails
//!   with the runner's status (dcr_protocol::wasm::RUNNER_EXITS) and passes no output on; a
//!   module importing anything but WASI preview 1 is refused;
//! - the clean room boots in QEMU (TCG, swtpm): keys are released only for the predicted PCRs,
//!   the module runs under the guest's confinement, and the result both recipients open equals
//!   the independent aggregates;
//! - `dcr-build compare` names the module that changed between two images, not the runner;
//! - a module that exhausts its memory in the guest (RLIMIT_AS = memory_mib, the runner's
//!   memory limit inside) makes the run power off naming the trap; nothing is uploaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcr_tests::cleanroom::*;
use dcr_tests::*;

const TOOLS: [&str; 7] = [
    "prlimit",
    "qemu-system-x86_64",
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "certtool",
    "rustc",
];

/// A module importing `env.foo`: not WASI preview 1 (hand-assembled, WebAssembly Core
/// Specification 2.0 §5.5: type, import, function, export and code sections).
const IMPORTS_ENV: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x02, 0x0b, 0x01, 0x03, b'e', b'n', b'v', 0x03, b'f', b'o', b'o', 0x00, 0x00, // import
    0x03, 0x02, 0x01, 0x00, // function 1: type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01, // export _start
    0x0a, 0x06, 0x01, 0x04, 0x00, 0x10, 0x00, 0x0b, // code: call 0
];

fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}

/// Run the runner under the rlimits guest-init gives every workload (docs/guest.md): no file
/// writes (RLIMIT_FSIZE 0), address space = memory_mib (limits[0]), 64 files.
fn runner(bin: &Path, inputs: &Path, limits: [&str; 3], module: &Path, argv: &[&str]) -> Output {
    let mib: u64 = limits[0].parse().unwrap();
    Command::new("prlimit")
        .args(["--fsize=0", "--nofile=64"])
        .arg(format!("--as={}", mib << 20))
        .arg(bin)
        .args(["--inputs"])
        .arg(inputs)
        .args(["--memory-mib", limits[0], "--output-mib", limits[1]])
        .args(["--timeout-secs", limits[2]])
        .arg(module)
        .arg("--")
        .args(argv)
        .output()
        .unwrap()
}

/// The runner's status `code` is the one dcr_protocol::wasm names `what`.
fn runner_failed(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    let meaning = dcr_protocol::wasm::runner_exit(code).expect("a runner status");
    assert!(meaning.contains(what), "{code}: {meaning}");
    assert!(o.stdout.is_empty(), "output passed on: {}", stdout(o));
}

fn host_checks(runner_bin: &Path, module: &Path, data: &Path, dir: &Path) {
    // Inputs as the guest lays them out: a directory of dataset ids.
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::copy(
        data.join("publisher.csv"),
        inputs.join("publisher-segments"),
    )
    .unwrap();
    std::fs::copy(
        data.join("advertiser.csv"),
        inputs.join("advertiser-conversions"),
    )
    .unwrap();
    let argv = [
        "overlap",
        "/dcr/input/publisher-segments",
        "/dcr/input/advertiser-conversions",
    ];
    let o = runner(runner_bin, &inputs, ["1024", "16", "600"], module, &argv);
    assert!(o.status.success(), "runner: {}", stderr(&o));
    let wasm_out = stdout(&o);

    // The native binary of the same crate on the same files.
    let ws = workspace();
    let profile = profile_dir();
    let profile_name = match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("profile directory {}", profile.display()),
    };
    let o = Command::new("cargo")
        .args(["build", "--locked", "--quiet", "-p", "dcr-workload-overlap"])
        .args(["--profile", &profile_name])
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo build overlap: {}", stderr(&o));
    let o = Command::new(profile.join("dcr-workload-overlap"))
        .arg(inputs.join("publisher-segments"))
        .arg(inputs.join("advertiser-conversions"))
        .output()
        .unwrap();
    assert!(o.status.success(), "native overlap: {}", stderr(&o));
    assert_eq!(wasm_out, stdout(&o), "wasm and native differ");
    assert_eq!(wasm_out, expected_result(data, 50));
    assert!(wasm_out.lines().count() > 2, "{wasm_out}");

    // The hostile module.
    let probe = dir.join("probe.wasm");
    let o = Command::new("rustc")
        .args(["--edition", "2021", "--target", "wasm32-wasip1", "-O"])
        .arg(ws.join("tests/data/wasm-probe.rs"))
        .arg("-o")
        .arg(&probe)
        .output()
        .unwrap();
    assert!(o.status.success(), "rustc probe: {}", stderr(&o));
    let small = ["130", "1", "30"];
    let probe_run = |limits: [&str; 3], args: &[&str]| {
        let mut argv = vec!["probe"];
        argv.extend_from_slice(args);
        runner(runner_bin, &inputs, limits, &probe, &argv)
    };
    let lines = |o: &Output| -> std::collections::BTreeMap<String, String> {
        assert!(o.status.success(), "probe: {}", stderr(o));
        stdout(o)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let before = std::fs::read(inputs.join("publisher-segments")).unwrap();
    let f = lines(&probe_run(
        small,
        &["files", "/dcr/input/publisher-segments"],
    ));
    assert_eq!(f["read-input"], "allowed", "{f:?}");
    for k in [
        "write-input",
        "create",
        "mkdir",
        "remove",
        "rename",
        "etc-passwd",
        "dotdot",
        "proc",
        "root-list",
    ] {
        assert_eq!(f[k], "denied", "{k}: {f:?}");
    }
    assert_eq!(
        std::fs::read(inputs.join("publisher-segments")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_dir(&inputs).unwrap().count(),
        2,
        "the inputs directory changed"
    );
    let n = lines(&probe_run(small, &["net"]));
    assert_eq!(n["tcp-connect"], "denied");
    assert_eq!(n["udp-bind"], "denied");
    let o = probe_run(small, &["clock", "/dcr/input/a", "/dcr/input/b"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("wall 0\n"), "{out}");
    assert!(out.contains("monotonic-moves true"), "{out}");
    let env: Vec<&str> = out.lines().filter(|l| l.starts_with("env ")).collect();
    assert_eq!(
        env,
        ["env DCR_INPUTS=clock:/dcr/input/a:/dcr/input/b"],
        "{out}"
    );
    assert!(out.contains("argc 4\n"), "{out}");

    let t = std::time::Instant::now();
    runner_failed(
        &probe_run(["130", "1", "2"], &["spin"]),
        203,
        "timeout_secs",
    );
    eprintln!("spin stopped after {:.1} s", t.elapsed().as_secs_f64());
    // Blocked in a host call (a 100 s sleep) past the deadline: the runner ends itself.
    let t = std::time::Instant::now();
    runner_failed(
        &probe_run(["130", "1", "2"], &["sleep"]),
        203,
        "timeout_secs",
    );
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    runner_failed(&probe_run(small, &["hog"]), 202, "trapped");
    runner_failed(&probe_run(small, &["flood"]), 204, "output_mib");
    runner_failed(&probe_run(small, &["trap"]), 202, "trapped");
    // A status WASI does not allow cannot pose as one of the runner's.
    runner_failed(&probe_run(small, &["exit200"]), 202, "trapped");
    let o = probe_run(small, &["exit7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "a failed module's output passed on");
    let bad = dir.join("imports-env.wasm");
    std::fs::write(&bad, IMPORTS_ENV).unwrap();
    let o = runner(runner_bin, &inputs, small, &bad, &["m"]);
    runner_failed(&o, 201, "WASI preview 1");
    assert!(
        stderr(&o).contains("env::foo") || stderr(&o).contains("foo"),
        "{}",
        stderr(&o)
    );
    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho hi\n").unwrap();
    runner_failed(
        &runner(runner_bin, &inputs, small, &not_wasm, &["m"]),
        201,
        "WASI preview 1",
    );
    runner_failed(
        &runner(runner_bin, &dir.join("absent"), small, module, &argv),
        200,
        "could not start",
    );
}

#[test]
fn wasm_clean_room_matches_native_and_the_runner_confines_hostile_modules() {
    if !require_tools("cleanroom_wasm", &TOOLS) {
        return;
    }
    let ws = workspace();
    let here = ws.join("images/wasm-overlap");
    let room = Room::new("wasm");
    let contract = room.contract_from(&here.join("contract.toml"), "w", |c| c);
    let image = room.build_recipe(&here.join("image.toml"), &contract, "w");

    // What the build packed: the module the contract names, and the runner it measured.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("measurements.json")).unwrap()).unwrap();
    let module = target_dir(&ws).join("wasm32-wasip1/guest/dcr-workload-overlap.wasm");
    let runner_bin = target_dir(&ws.join("attest/wasm-runner"))
        .join("x86_64-unknown-linux-musl/guest/dcr-wasm-runner");
    let module_sha = sha256_hex(&std::fs::read(&module).unwrap());
    assert_eq!(
        m["inputs"]["workload:overlap"]["sha256"].as_str(),
        Some(module_sha.as_str()),
        "{}",
        m["inputs"]
    );
    assert!(std::fs::read_to_string(&contract)
        .unwrap()
        .contains(&format!("sha256 = \"{module_sha}\"")));
    assert_eq!(
        m["inputs"]["wasm-runner"]["sha256"].as_str(),
        Some(sha256_hex(&std::fs::read(&runner_bin).unwrap()).as_str()),
        "{}",
        m["inputs"]
    );

    let data = room.data("w", 3000, 5);
    host_checks(&runner_bin, &module, &data, &room.dir);

    // The clean room in QEMU.
    room.provide("w", &data, &image);
    let (code, console) = room.boot(&image);
    assert_eq!(code, Some(0), "{console}");
    assert!(
        console.contains("dcr-init: workload overlap (wasm) exit=0"),
        "{console}"
    );
    let want = expected_result(&data, 50);
    for party in ["publisher", "advertiser"] {
        let got = room
            .result("overlap-wasm-result-w.sealed", party)
            .map(|b| String::from_utf8(b).unwrap());
        assert_eq!(got.as_deref(), Some(want.as_str()), "{party}");
    }

    // A module that takes all the memory it may: the run powers off naming the trap.
    let probe = room.dir.join("probe.wasm");
    let probe_sha = sha256_hex(&std::fs::read(&probe).unwrap());
    let recipe_dir = room.dir.join("hog-recipe");
    std::fs::create_dir_all(&recipe_dir).unwrap();
    std::fs::copy(&probe, recipe_dir.join("hog.wasm")).unwrap();
    let text = std::fs::read_to_string(here.join("image.toml")).unwrap();
    let at = text.find("[[workloads]]").unwrap();
    let end = at + text[at..].find("\n\n").unwrap();
    let text = format!(
        "{}[[workloads]]\nname = \"hog\"\nkind = \"wasm\"\nfile = \"hog.wasm\"\nsha256 = \"{probe_sha}\"{}",
        &text[..at],
        &text[end..]
    )
    .replace("contract = \"contract.toml\"", "contract = \"unused.toml\"");
    std::fs::write(recipe_dir.join("image.toml"), text).unwrap();
    let contract = room.contract_from(&here.join("contract.toml"), "h", |c| {
        c.replace("name = \"overlap\"", "name = \"hog\"")
            .replace(
                &format!("sha256 = \"{module_sha}\""),
                &format!("sha256 = \"{probe_sha}\""),
            )
            .replace("memory_mib = 1024", "memory_mib = 256")
    });
    let hog_image = room.build_recipe(&recipe_dir.join("image.toml"), &contract, "h");
    // compare names the module that changed (and keeps the runner: the same bytes).
    let o = run_dcr_build(&[
        "compare",
        image.to_str().unwrap(),
        hog_image.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let report = stdout(&o) + &stderr(&o);
    assert!(
        report.contains("initrd.cpio: cpio entry workloads/overlap: removed")
            && report.contains("initrd.cpio: cpio entry workloads/hog: added"),
        "{report}"
    );
    assert!(!report.contains("usr/libexec/dcr-wasm-runner"), "{report}");
    let image = hog_image;
    let data = room.data("h", 200, 6);
    room.provide("h", &data, &image);
    let (code, console) = room.boot(&image);
    assert_ne!(code, Some(0), "{console}");
    assert_eq!(
        power_off_reason(&console).as_deref(),
        Some("workload: hog: the module trapped"),
        "{console}"
    );
    assert!(
        console.contains("dcr-init: workload hog (wasm) exit=202"),
        "{console}"
    );
    assert!(!room.blob_path("overlap-wasm-result-h.sealed").exists());
}
