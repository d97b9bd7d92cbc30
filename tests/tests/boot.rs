//! Boot the reference image in QEMU (TCG): the initramfs by direct kernel boot, the UKI under
//! OVMF with an swtpm vTPM. Both must print guest-init's banner with the contract digest that
//! measurements.json records (and under UEFI the predicted PCRs), then — with no NIC attached
//! — stop at the network step and power off with that reason (the whole clean-room run is
//! tests/cleanroom.rs).

use dcr_protocol::measurements::Measurements;
use dcr_tests::*;

fn boot(mode: &str) {
    let test = format!("boot_{mode}");
    let mut tools = vec!["qemu-system-x86_64"];
    if mode == "uefi" {
        tools.push("swtpm");
    }
    if !require_tools(&test, &tools) {
        return;
    }
    let out = reference_build();
    let m =
        Measurements::from_json(&std::fs::read(out.join("measurements.json")).unwrap()).unwrap();
    // The document as an outside verifier reads it (JSON).
    let predicted_json = serde_json::to_value(&m.measurements).unwrap();
    let o = run_dcr_build(&[
        "run",
        out.to_str().unwrap(),
        "--mode",
        mode,
        "--timeout",
        "300",
        "--offline",
    ]);
    let console = stdout(&o);
    // No NIC is attached here: guest-init measures and reports, then stops at the clean
    // room's first step (network) and powers off cleanly with that reason; `run` says so.
    assert_eq!(
        o.status.code(),
        Some(1),
        "{mode} boot:\n{console}\n{}",
        stderr(&o)
    );
    assert!(
        console.contains("dcr-init: power-off status=error reason=\"network: interface eth0:"),
        "{console}"
    );
    let banner = format!(
        "dcr-init: banner version=0.1.0 contract=sha256:{} kernel={}",
        m.contract_digest, m.kernel_release
    );
    assert!(
        console.contains(&banner),
        "no banner {banner:?} in:\n{console}"
    );
    assert!(console.contains("dcr-init: modules loaded="), "{console}");
    assert!(console.contains("run: guest failed"), "{console}");
    if mode == "uefi" {
        // systemd-stub ran (it measures the initrd it hands over) — this was a UKI boot.
        assert!(console.contains("EFI stub"), "{console}");
        // The predicted PCRs equal what the booted VM's swtpm holds (read by guest-init from
        // /sys/class/tpm/tpm0/pcr-sha256).
        let line = console
            .lines()
            .find_map(|l| l.split("dcr-init: pcrs sha256 ").nth(1))
            .unwrap_or_else(|| panic!("no PCR line in:\n{console}"));
        let live: std::collections::BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let predicted = predicted_json["tpm"]["pcrs"]
            .as_object()
            .expect("tpm prediction");
        assert!(
            console.contains("dcr-init: pcr23 extended=3 (contract + 2 workloads)"),
            "{console}"
        );
        for pcr in ["4", "9", "11", "23"] {
            assert_eq!(
                Some(&predicted[pcr].as_str().unwrap()),
                live.get(pcr),
                "PCR {pcr}: predicted vs swtpm"
            );
        }
    } else {
        assert!(
            console.contains("dcr-init: pcrs none (no TPM)"),
            "{console}"
        );
    }
}

#[test]
fn direct_kernel_boot_prints_banner_and_stops_without_network() {
    boot("direct");
}

#[test]
fn uefi_uki_boot_with_swtpm_prints_banner_and_predicted_pcrs() {
    boot("uefi");
}

#[test]
fn guest_error_is_reported_as_failure() {
    if !require_tools(
        "guest_error_is_reported_as_failure",
        &["qemu-system-x86_64"],
    ) {
        return;
    }
    // Point init at a path that does not exist: the kernel cannot start PID 1 and panics;
    // panic=-1 + -no-reboot ends the VM. The run must not be called a success.
    let out = reference_build();
    let o = run_dcr_build(&[
        "run",
        out.to_str().unwrap(),
        "--mode",
        "direct",
        "--timeout",
        "120",
        "--append",
        "rdinit=/nonexistent init=/nonexistent",
        "--quiet",
        "--offline",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("without a guest status line"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn run_refuses_before_booting_when_the_contract_needs_a_network() {
    // The reference contract's guest calls the key-release service: without --net the guest
    // could only fail at its network step, so `run` says so at once, naming --net and the URL,
    // and boots nothing (no qemu started: no console line).
    let out = reference_build();
    let o = run_dcr_build(&["run", out.to_str().unwrap(), "--mode", "direct"]);
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: ") && err.contains("--net"), "{err}");
    assert!(
        err.contains("http://10.0.2.2:8443"),
        "names the service URL: {err}"
    );
    assert!(
        !stdout(&o).contains("dcr-init"),
        "booted anyway: {}",
        stdout(&o)
    );
    assert!(!err.contains("qemu-system"), "started qemu: {err}");

    // With --net but nothing listening where 10.0.2.2:8443 leads (the host's 127.0.0.1:8443):
    // refused before the boot, naming the address.
    match std::net::TcpListener::bind("127.0.0.1:8443") {
        Err(e) => eprintln!("SKIP service-down half: 127.0.0.1:8443 is in use here ({e})"),
        Ok(l) => {
            drop(l);
            let o = run_dcr_build(&["run", out.to_str().unwrap(), "--mode", "direct", "--net"]);
            assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
            let err = stderr(&o);
            assert!(err.contains("nothing answers at 127.0.0.1:8443"), "{err}");
            assert!(
                !stdout(&o).contains("dcr-init"),
                "booted anyway: {}",
                stdout(&o)
            );
        }
    }
}
