//! PCR 11 of our UKIs against systemd-measure 254 (the version of the stub in the UKI),
//! fetched from the pinned Debian packages and run side by side; one-byte mutations of every
//! section; bad input. (The live comparison with a booted VM's swtpm is in boot.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use dcr_build::{fetch, recipe::DebPin, uki};
use dcr_measure::tpm;
use dcr_tests::*;
use hex::encode as hex;

const SYSTEMD_VERSION: &str = "254.26-1~bpo12+1";

/// systemd-measure 254 and its private library, from the Debian packages (unpacked by the
/// builder's own .deb code into `dir`).
fn systemd_measure(dir: &Path) -> (PathBuf, PathBuf) {
    for (pkg, want) in [
        ("systemd", "lib/systemd/systemd-measure"),
        (
            "libsystemd-shared",
            "usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-254.so",
        ),
    ] {
        let pin = DebPin {
            package: pkg.into(),
            version: SYSTEMD_VERSION.into(),
            sha256: None,
            suite: None,
        };
        let deb = fetch::deb_package(pkg, &pin).expect("fetch systemd 254 package");
        let files = fetch::extract(pkg, &deb, |p| p == want).unwrap();
        let out = dir.join(Path::new(want).file_name().unwrap());
        std::fs::write(&out, &files[want]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir.join("systemd-measure"), dir.to_path_buf())
}

fn anchor(tool: &(PathBuf, PathBuf), dir: &Path, sections: &[(String, Vec<u8>)]) -> String {
    let mut cmd = Command::new(&tool.0);
    cmd.env("LD_LIBRARY_PATH", &tool.1)
        .args(["calculate", "--phase=:", "--bank=sha256"]);
    for (name, data) in sections {
        // The switches systemd-measure 254 has for the sections a dcr UKI carries.
        let flag = match name.as_str() {
            ".linux" | ".osrel" | ".cmdline" | ".initrd" | ".uname" | ".sbat" => &name[1..],
            _ => continue,
        };
        let f = dir.join(format!("sec{name}"));
        std::fs::write(&f, data).unwrap();
        cmd.arg(format!("--{flag}={}", f.display()));
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "systemd-measure: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("11:sha256="))
        .unwrap_or_else(|| panic!("no PCR 11 line in {text}"))
        .to_string()
}

fn ours(sections: &[(String, Vec<u8>)]) -> String {
    let sdmagic = &sections.iter().find(|(n, _)| n == ".sdmagic").unwrap().1;
    let v = tpm::stub_version(sdmagic).unwrap();
    assert_eq!(v, 254);
    let refs: Vec<(&str, &[u8])> = sections
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    hex(tpm::pcr11(v, &refs).unwrap().value)
}

#[test]
fn pcr11_equals_systemd_measure_and_every_section_counts() {
    let t = TempDir::new("pcr11");
    let tool = systemd_measure(t.path());
    let out = reference_build();
    let image = std::fs::read(out.join("image.efi")).unwrap();
    let sections = uki::sections_in_memory(&image).unwrap();
    let base = ours(&sections);
    assert_eq!(base, anchor(&tool, t.path(), &sections), "reference UKI");
    // The value measurements.json records is the same.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    assert_eq!(m["measurements"]["tpm"]["pcrs"]["11"], base.as_str());
    // `dcr-build measure tpm` prints it too.
    let o = run_dcr_build(&[
        "measure",
        "tpm",
        "--uki",
        out.join("image.efi").to_str().unwrap(),
    ]);
    assert!(
        stdout(&o).contains(&format!("11:sha256={base}")),
        "{}",
        stdout(&o)
    );

    for name in [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"] {
        let mut mutated = sections.clone();
        let data = &mut mutated.iter_mut().find(|(n, _)| n == name).unwrap().1;
        let at = data.len() / 2;
        data[at] ^= 0x01;
        let mine = ours(&mutated);
        assert_ne!(mine, base, "{name}: flipping a byte must change PCR 11");
        assert_eq!(
            mine,
            anchor(&tool, t.path(), &mutated),
            "{name}: systemd-measure disagrees"
        );
    }
}

#[test]
fn pcr4_covers_the_stub_and_every_section() {
    // PCR 4 holds the Authenticode digest of the whole UKI (stub code included) and of its
    // kernel; the live value is checked in boot.rs. Here: one flipped byte anywhere changes it.
    let out = reference_build();
    let image = std::fs::read(out.join("image.efi")).unwrap();
    let secs = uki::sections(&image).unwrap();
    let linux = uki::section(&image, ".linux").unwrap().unwrap().to_vec();
    let base = tpm::pcr4(&image, &linux).unwrap().value;
    for s in &secs {
        let mut m = image.clone();
        m[s.raw_offset as usize + s.virtual_size as usize / 2] ^= 1;
        let l = uki::section(&m, ".linux").unwrap().unwrap().to_vec();
        assert_ne!(tpm::pcr4(&m, &l).unwrap().value, base, "section {}", s.name);
    }
}

#[test]
fn uki_without_linux_is_refused() {
    // The bare stub: a PE with .sdmagic but no .linux.
    let t = TempDir::new("no-linux");
    let pin = DebPin {
        package: "systemd-boot-efi".into(),
        version: SYSTEMD_VERSION.into(),
        sha256: None,
        suite: None,
    };
    let deb = fetch::deb_package("stub", &pin).unwrap();
    let path = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    let files = fetch::extract("stub", &deb, |p| p == path).unwrap();
    let stub = t.path().join("stub.efi");
    std::fs::write(&stub, &files[path]).unwrap();
    let o = run_dcr_build(&["measure", "tpm", "--uki", stub.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("no .linux section") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let junk = t.path().join("junk.efi");
    std::fs::write(&junk, b"MZ not really").unwrap();
    let o = run_dcr_build(&["measure", "tpm", "--uki", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
