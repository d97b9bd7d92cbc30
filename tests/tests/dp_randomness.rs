//! Where OpenDP's noise comes from (issue K). Without OpenSSL, OpenDP 0.16 falls back to rand
//! 0.7's `thread_rng`, a user-space generator it labels non-secure; with its `use-openssl`
//! feature it calls `openssl::rand::rand_priv_bytes`, which this workspace patches to the
//! kernel's getrandom(2) (attest/kernel-random). These tests hold that arrangement in place:
//! - Cargo.lock has one `openssl`, the path crate, and no `openssl-sys` (no C OpenSSL), and
//!   the engine binary carries no OpenSSL;
//! - in the guest build (the packages dcr-build builds, musl target, no dev-dependencies)
//!   OpenDP has `use-openssl` (so its fallback is not compiled) and the kernel crate does not
//!   have the test-only seeded stream;
//! - the release engine is not built with that stream (it refuses to run if it is).

use std::process::Command;

use dcr_tests::*;

fn cargo_tree(args: &[&str]) -> String {
    let o = Command::new("cargo")
        .args(["tree", "--locked", "--offline", "--color", "never"])
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo tree {args:?}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn the_lock_file_has_only_the_kernel_openssl() {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let packages: Vec<&str> = lock.split("[[package]]").collect();
    let openssl: Vec<&&str> = packages
        .iter()
        .filter(|p| p.contains("\nname = \"openssl\"\n"))
        .collect();
    assert_eq!(openssl.len(), 1, "{openssl:?}");
    assert!(
        !openssl[0].contains("source ="),
        "openssl must be the path crate attest/kernel-random: {}",
        openssl[0]
    );
    assert!(
        !lock.contains("name = \"openssl-sys\""),
        "a C OpenSSL is in the lock file"
    );
    // OpenDP's `use-openssl` also names `openssl-src` (OpenSSL's sources) as a build
    // dependency; its build script never builds them, and nothing else may depend on it.
    let users: Vec<&&str> = packages
        .iter()
        .filter(|p| p.contains(" \"openssl-src\",\n"))
        .collect();
    assert!(
        users.len() <= 1 && users.iter().all(|p| p.contains("\nname = \"opendp\"\n")),
        "{users:?}"
    );
}

#[test]
fn no_c_openssl_is_linked_into_the_engine() {
    // A linked libcrypto carries its version string ("OpenSSL 3.x.y <date>").
    let bin = std::fs::read(dcr_sql_engine()).unwrap();
    let has = |needle: &[u8]| bin.windows(needle.len()).any(|w| w == needle);
    assert!(!has(b"OpenSSL 3."), "the engine links OpenSSL");
    assert!(!has(b"RAND_priv_bytes"), "the engine links OpenSSL's RAND");
}

#[test]
fn the_guest_build_has_opendp_on_the_kernel_and_no_seeded_stream() {
    let guest = [
        "-p",
        "guest-init",
        "-p",
        "dcr-sql-engine",
        "--target",
        "x86_64-unknown-linux-musl",
        "-e",
        "features,normal",
    ];
    let mut a = guest.to_vec();
    a.extend(["-i", "opendp"]);
    let t = cargo_tree(&a);
    assert!(t.contains("opendp feature \"use-openssl\""), "{t}");
    let mut a = guest.to_vec();
    a.extend(["-i", "openssl"]);
    let t = cargo_tree(&a);
    assert!(t.contains("openssl v0.10.999 ("), "{t}");
    assert!(t.contains("attest/kernel-random"), "{t}");
    assert!(
        !t.contains("test-seed"),
        "the seeded stream is in the guest build: {t}"
    );
}

#[test]
fn the_release_engine_runs_without_the_seeded_stream() {
    // The engine refuses to run when the seeded stream is compiled in (`openssl::seedable()`);
    // the release build the tests use must get past that check to its usage error.
    let o = Command::new(dcr_sql_engine()).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("usage: dcr-sql-engine"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("seeded"), "{}", stderr(&o));
}
