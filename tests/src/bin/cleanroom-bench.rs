//! Benchmarks of the clean room (BENCHMARKS.md), printed as tables:
//!
//! `cleanroom-bench boot` — boot to power off of the full clean-room run (10 K rows) against
//! the same kernel with a trivial static init (prints the status line, powers off), for direct
//! kernel boot and OVMF + UKI; both with the same QEMU devices (NIC, swtpm).
//!
//! `cleanroom-bench phases ROWS…` — end-to-end wall time and each phase's share (build,
//! data/seal/upload, boot, attest, decrypt, workload, seal/upload, power off) at the given
//! sizes, and the in-VM join's rows/s against the same workload run natively on the host.
//!
//! Needs what the tests need (QEMU, OVMF, swtpm, musl-gcc for the trivial init).
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dcr_tests::cleanroom::*;
use dcr_tests::*;

/// Boot with `dcr-build run`, timestamping each console line as it arrives.
fn timed_boot(
    room: &Room,
    image: &Path,
    mode: &str,
    memory: u32,
) -> (bool, Duration, Vec<(Duration, String)>) {
    let start = Instant::now();
    let mut child = Command::new(dcr_build())
        .arg("run")
        .arg(image)
        .args([
            "--mode",
            mode,
            "--net",
            "--timeout",
            "3600",
            "--memory",
            &memory.to_string(),
            "--tpm-state",
        ])
        .arg(&room.tpm_state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for l in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let l = l.unwrap();
        if l.contains("dcr-init:") || l.starts_with("run:") {
            lines.push((start.elapsed(), l));
        }
    }
    let ok = child.wait().unwrap().success();
    (ok, start.elapsed(), lines)
}

fn at(lines: &[(Duration, String)], needle: &str) -> Duration {
    lines
        .iter()
        .find(|(_, l)| l.contains(needle))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| {
            panic!(
                "no {needle:?} in {:?}",
                lines.iter().map(|(_, l)| l).collect::<Vec<_>>()
            )
        })
}

fn last(lines: &[(Duration, String)], needle: &str) -> Duration {
    lines
        .iter()
        .rev()
        .find(|(_, l)| l.contains(needle))
        .map(|(t, _)| *t)
        .unwrap()
}

/// A copy of `image` whose initrd (and UKI .initrd) hold only a trivial static /init.
fn trivial_image(room: &Room, image: &Path) -> PathBuf {
    let dir = room.dir.join("image-trivial");
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("init.c");
    std::fs::write(&c, "#include <unistd.h>\n#include <sys/reboot.h>\nint main(void){static const char m[]=\"dcr-init: power-off status=ok\\n\";write(1,m,sizeof m-1);sync();reboot(RB_POWER_OFF);return 0;}\n").unwrap();
    let o = Command::new("musl-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(dir.join("init"))
        .arg(&c)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "musl-gcc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut t = dcr_build::initrd::Tree::new();
    t.add_file("init", std::fs::read(dir.join("init")).unwrap(), 0o755)
        .unwrap();
    t.add_dir("dev").unwrap();
    t.add(
        "dev/console",
        dcr_build::initrd::Node::CharDev {
            perm: 0o600,
            major: 5,
            minor: 1,
        },
    )
    .unwrap();
    let cpio = t.to_cpio(0);
    std::fs::write(dir.join("initrd.cpio"), &cpio).unwrap();
    // The same stub (fetched by the recipe's pin), kernel, cmdline and metadata; the new initrd.
    let text = std::fs::read_to_string(reference_recipe().join("image.toml")).unwrap();
    let recipe = dcr_build::recipe::parse(&text, Path::new("image.toml")).unwrap();
    let deb = recipe.stub.deb.as_ref().unwrap();
    let pkg = dcr_build::fetch::deb_package("stub", &deb.pin()).unwrap();
    let stub = dcr_build::fetch::extract("stub", &pkg, |p| p == deb.path)
        .unwrap()
        .remove(&deb.path)
        .unwrap();
    let uki = std::fs::read(image.join("image.efi")).unwrap();
    let sec = |n: &str| dcr_build::uki::section(&uki, n).unwrap().unwrap().to_vec();
    let (osrel, cmdline, uname, linux) =
        (sec(".osrel"), sec(".cmdline"), sec(".uname"), sec(".linux"));
    let new = dcr_build::uki::assemble(
        &stub,
        &[
            (".osrel", &osrel),
            (".cmdline", &cmdline),
            (".uname", &uname),
            (".initrd", &cpio),
            (".linux", &linux),
        ],
    )
    .unwrap();
    std::fs::write(dir.join("image.efi"), new).unwrap();
    std::fs::copy(
        image.join("measurements.json"),
        dir.join("measurements.json"),
    )
    .unwrap();
    dir
}

fn boot_bench() {
    let room = Room::new("boot-bench");
    let data = room.data("b", 10_000, 1);
    let mut rows = Vec::new();
    for (mode, runs) in [("uefi", 3), ("direct", 3)] {
        let mut full = Vec::new();
        for i in 0..runs {
            let tag = format!("{mode}{i}");
            let contract = room.contract(&tag, |c| c);
            let image = room.build(&contract, &tag);
            let reference = if mode == "direct" {
                // Direct boot has no firmware measurements: the reference PCRs are the ones
                // this kernel + initrd + contract produce in it (read from a first boot).
                let (_, _, lines) = timed_boot(&room, &image, "direct", 1024);
                let pcrs = lines
                    .iter()
                    .find_map(|(_, l)| l.split("dcr-init: pcrs sha256 ").nth(1).map(str::to_string))
                    .expect("pcrs line");
                let dir = room.dir.join(format!("reference-{tag}"));
                std::fs::create_dir_all(&dir).unwrap();
                let mut m: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(image.join("measurements.json")).unwrap(),
                )
                .unwrap();
                let map: serde_json::Map<String, serde_json::Value> = pcrs
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                m["measurements"]["tpm"]["pcrs"] = map.into();
                std::fs::write(dir.join("measurements.json"), m.to_string()).unwrap();
                dir
            } else {
                image.clone()
            };
            room.provide(&tag, &data, &reference);
            let (ok, took, lines) = timed_boot(&room, &image, mode, 1024);
            assert!(ok, "{mode} full run failed: {lines:?}");
            full.push(took.as_secs_f64());
        }
        let trivial = trivial_image(&room, &room.dir.join(format!("image-{mode}0")));
        let mut base = Vec::new();
        for _ in 0..runs {
            let (ok, took, lines) = timed_boot(&room, &trivial, mode, 1024);
            assert!(ok, "{mode} trivial boot failed: {lines:?}");
            base.push(took.as_secs_f64());
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (f, b) = (med(&mut full), med(&mut base));
        rows.push(format!(
            "| {mode} | {b:.1} s | {f:.1} s | {:.2}× | {full:?} / {base:?} |",
            f / b
        ));
    }
    println!("| boot | trivial static init | full clean-room run (10 K rows) | ratio | runs (full / trivial) |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

fn phases_bench(sizes: &[u64]) {
    let room = Room::new("phases-bench");
    println!("| rows/party | total | build | data+seal+upload | boot→banner | attest | decrypt | workload | seal+upload | power off | in-VM rows/s | native rows/s | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, rows) in sizes.iter().enumerate() {
        let tag = format!("p{i}");
        let t0 = Instant::now();
        let contract = room.contract(&tag, |c| {
            c.replace("timeout_secs = 600", "timeout_secs = 3000")
                .replace("cpu_secs = 600", "cpu_secs = 3000")
                .replace("memory_mib = 1024", "memory_mib = 4096")
        });
        let image = room.build(&contract, &tag);
        let t_build = t0.elapsed();
        let t1 = Instant::now();
        let data = room.data(&tag, *rows, 1);
        room.provide(&tag, &data, &image);
        let t_data = t1.elapsed();
        let memory = if *rows > 2_000_000 { 6144 } else { 2048 };
        let (ok, took, lines) = timed_boot(&room, &image, "uefi", memory);
        assert!(
            ok,
            "run failed: {:?}",
            lines.iter().map(|(_, l)| l).collect::<Vec<_>>()
        );
        let total = t0.elapsed();
        let banner = at(&lines, "banner");
        let net = at(&lines, "dcr-init: network");
        let rel = at(&lines, "release ok");
        let inputs = last(&lines, "dcr-init: input ");
        let work = at(&lines, "dcr-init: workload");
        let out = at(&lines, "dcr-init: output");
        let s = |d: Duration| d.as_secs_f64();
        let pct = |d: Duration| format!("{:.1} s ({:.0} %)", s(d), 100.0 * s(d) / s(total));
        // The native join of the same files, same workload binary, on the host.
        let wl = workspace().join("target/x86_64-unknown-linux-musl/guest/dcr-workload-overlap");
        let n0 = Instant::now();
        let o = Command::new(&wl)
            .arg(data.join("publisher.csv"))
            .arg(data.join("advertiser.csv"))
            .output()
            .unwrap();
        assert!(o.status.success());
        let native = n0.elapsed();
        let vm_workload = lines
            .iter()
            .find_map(|(_, l)| {
                l.split(" time=")
                    .nth(1)
                    .filter(|_| l.contains("dcr-init: workload"))
                    .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
            })
            .unwrap();
        let total_rows = 2.0 * *rows as f64;
        println!(
            "| {rows} | {:.1} s | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} % |",
            s(total), pct(t_build), pct(t_data), pct(banner), pct(rel - net), pct(inputs - rel), pct(work - inputs), pct(out - work), pct(took - out),
            total_rows / vm_workload, total_rows / s(native), 100.0 * s(native) / vm_workload
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("boot") => boot_bench(),
        Some("phases") => {
            let sizes: Vec<u64> = args[1..].iter().map(|a| a.parse().expect("rows")).collect();
            phases_bench(if sizes.is_empty() { &[10_000] } else { &sizes });
        }
        _ => {
            eprintln!("usage: cleanroom-bench boot | phases ROWS...");
            std::process::exit(2);
        }
    }
}
