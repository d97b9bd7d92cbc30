//! The Azure disk image (`disk.raw`, `disk.vhd`) of the reference recipe, checked by
//! independent tools and booted:
//!
//! - two builds are byte-identical (disk.raw, disk.vhd, image.efi);
//! - `qemu-img info -f vpc` reads the VHD as vpc with exactly the raw size, and
//!   `qemu-img compare` finds the VHD's contents equal to disk.raw; a flipped footer byte
//!   makes QEMU refuse the footer ("Incorrect header checksum");
//! - `sgdisk -v` finds no GPT problem; `sgdisk -i 1` shows the EFI System Partition type and
//!   the GUIDs printed at build time; `fsck.fat -n` finds the ESP clean; mtools reads
//!   `\EFI\BOOT\BOOTX64.EFI` back equal to image.efi;
//! - the exported Secure Key Release policy and Trustee reference values hold the Azure
//!   PCRs of measurements.json; the service registers a key for az-snp-vtpm/az-tdx-vtpm only
//!   with those Azure reference values present;
//! - QEMU + OVMF + swtpm boots disk.vhd to the same successful clean-room run as the UKI
//!   (the service releases the keys only if the quoted PCRs equal measurements.json);
//! - guest-init's Azure SNP path runs in that boot against a vTPM holding a real HCL report and
//!   a stand-in IMDS, and the service refuses it for the one thing only Azure can provide
//!   (a quote by the HCL-bound AK).

use std::path::Path;
use std::process::Command;

use dcr_tests::cleanroom::*;
use dcr_tests::*;

const TOOLS: [&str; 10] = [
    "qemu-system-x86_64",
    "qemu-img",
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "certtool",
    "sgdisk",
    "fsck.fat",
    "mtype",
    "mdir",
];

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

fn tool_checks(image: &Path, m: &serde_json::Value) {
    let raw = image.join("disk.raw");
    let vhd = image.join("disk.vhd");
    let raw_len = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(raw_len % (1 << 20), 0, "whole MiB");
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), raw_len + 512);
    for (name, path) in [("disk.raw", &raw), ("disk.vhd", &vhd)] {
        let a = &m["artifacts"][name];
        assert_eq!(
            a["size"].as_u64(),
            Some(std::fs::metadata(path).unwrap().len())
        );
        assert_eq!(
            a["sha256"].as_str().unwrap(),
            sha256_hex(&std::fs::read(path).unwrap())
        );
    }

    // QEMU's vpc driver: format, size from the footer (and CHS geometry), contents.
    let (ok, out) = run(Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output", "json"])
        .arg(&vhd));
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["format"], "vpc");
    assert_eq!(info["virtual-size"].as_u64(), Some(raw_len));
    let (ok, out) = run(Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(&vhd)
        .arg(&raw));
    assert!(ok && out.contains("identical"), "{out}");
    // `qemu-img check` has no checker for vpc (any VHD, including qemu-img's own): it must
    // say so rather than pass or fail on our footer.
    let (ok, out) = run(Command::new("qemu-img")
        .args(["check", "-f", "vpc"])
        .arg(&vhd));
    assert!(ok || out.contains("does not support checks"), "{out}");
    // A flipped footer byte: the checksum no longer matches and QEMU refuses the file.
    let bad = image.join("bad.vhd");
    let mut bytes = std::fs::read(&vhd).unwrap();
    let at = bytes.len() - 512 + 20; // timestamp
    bytes[at] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, out) = run(Command::new("qemu-img")
        .args(["info", "-f", "vpc"])
        .arg(&bad));
    assert!(!ok && out.contains("checksum"), "{out}");
    std::fs::remove_file(&bad).unwrap();

    // GPT: sgdisk's verifier, then the partition as sgdisk reads it.
    let (ok, out) = run(Command::new("sgdisk").arg("-v").arg(&raw));
    assert!(ok && out.contains("No problems found"), "{out}");
    let (ok, out) = run(Command::new("sgdisk").args(["-i", "1"]).arg(&raw));
    assert!(ok, "{out}");
    assert!(
        out.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B (EFI system partition)"),
        "{out}"
    );
    assert!(out.contains("First sector: 2048 (at 1024.0 KiB)"), "{out}");
    let (ok, out) = run(Command::new("sgdisk").arg("-p").arg(&raw));
    assert!(ok, "{out}");

    // FAT32: fsck.fat on the ESP bytes, then mtools through the partition offset.
    let last: u64 = out
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no partition 1 in: {out}"));
    let disk = std::fs::read(&raw).unwrap();
    let esp = image.join("esp.img");
    std::fs::write(&esp, &disk[2048 * 512..(last as usize + 1) * 512]).unwrap();
    let (ok, out) = run(Command::new("fsck.fat").args(["-n", "-v"]).arg(&esp));
    assert!(ok, "{out}");
    assert!(out.contains("32 bit entries"), "FAT32: {out}");
    for bad in [
        "Expected",
        "Bad",
        "Renamed",
        "share clusters",
        "uninitialized",
        "Deleting",
        "Free cluster summary wrong",
    ] {
        assert!(!out.contains(bad), "fsck.fat: {bad}: {out}");
    }
    std::fs::remove_file(&esp).unwrap();
    let spec = format!("{}@@1M", raw.display());
    let o = Command::new("mtype")
        .args(["-i", &spec, "::/EFI/BOOT/BOOTX64.EFI"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout == std::fs::read(image.join("image.efi")).unwrap(),
        "BOOTX64.EFI differs from image.efi"
    );
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn disk_image_is_reproducible_valid_and_boots_the_clean_room() {
    if !require_tools(
        "disk_image_is_reproducible_valid_and_boots_the_clean_room",
        &TOOLS,
    ) {
        return;
    }
    let room = Room::new("disk");
    let contract = room.contract("v", |c| c);
    let image = room.build(&contract, "v");
    let again = room.build(&contract, "v2");
    for name in ["disk.raw", "disk.vhd", "image.efi", "initrd.cpio"] {
        let a = std::fs::read(image.join(name)).unwrap();
        let b = std::fs::read(again.join(name)).unwrap();
        assert!(a == b, "{name}: two builds differ");
    }
    std::fs::remove_dir_all(&again).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("measurements.json")).unwrap()).unwrap();
    tool_checks(&image, &m);

    exports_carry_the_azure_values(&room, &image, &m);

    // Boot the VHD: the same clean room as from the UKI.
    let data = room.data("v", 2000, 5);
    room.provide("v", &data, &image);
    let (code, console) = room.boot_mode(&image, "vhd");
    assert_eq!(code, Some(0), "{console}");
    // Hyper-V drivers are packed (azure is a platform) and absent here, not fatal.
    assert!(
        console.contains("hv_vmbus") && console.contains("absent="),
        "{console}"
    );
    assert!(
        console.contains("dcr-init: power-off status=ok"),
        "{console}"
    );
    // The booted PCRs are the predicted ones (the service checked them before releasing).
    let pcrs = console
        .lines()
        .find(|l| l.contains("dcr-init: pcrs sha256"))
        .unwrap_or_else(|| panic!("no PCR line: {console}"))
        .to_string();
    for (idx, want) in m["measurements"]["tpm"]["pcrs"].as_object().unwrap() {
        assert!(
            pcrs.contains(&format!("{idx}={}", want.as_str().unwrap())),
            "PCR {idx}: {pcrs}"
        );
    }
    let want = expected_result(&data, 50);
    assert_eq!(
        String::from_utf8(room.result("overlap-result-v.sealed", "publisher").unwrap()).unwrap(),
        want
    );

    azure_guest_path_reaches_the_vtpm_check(&room);
}

/// A one-request-per-connection HTTP stand-in for Azure's instance metadata service: answers
/// the THIM VCEK request with `vcek_pem`, anything else 404. Returns its loopback address.
fn fake_imds(vcek_pem: String) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) = if req.starts_with("GET /metadata/THIM/amd/certification ")
                && req.to_ascii_lowercase().contains("metadata: true")
            {
                (
                    "200 OK",
                    serde_json::json!({ "vcekCert": vcek_pem }).to_string(),
                )
            } else {
                ("404 Not Found", "{}".to_string())
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// guest-init's Azure SNP path in a real boot, as far as this machine allows: the vTPM holds a
/// real Azure HCL report (kinvolk's SNP fixture, 2,048 bytes: swtpm's NV index limit) at NV
/// 0x01400001 and an RSA AK persisted at 0x81000003, IMDS is a stand-in serving the fixture's
/// VCEK, the contract uses DHCP like Azure. The guest must detect `azure-hcl=snp`, choose
/// az-snp-vtpm, read the report, fetch the VCEK, quote with the AK and send Trustee-format
/// evidence; the service must refuse it because the quote is not signed by the HCLAkPub the
/// report binds (this swtpm is not Azure's vTPM) — and for nothing the guest got wrong: the
/// HCL binding, the quote's qualifying data and its PCR digest all pass. (The service also
/// says snp.report.signature / snp.vek.hwid: the VCEK in kinvolk's certs.pem belongs to
/// another chip than its SNP HCL report; Trustee's matching pair has a 2,600-byte report.)
fn azure_guest_path_reaches_the_vtpm_check(room: &Room) {
    let Some(fx) = fixtures("azure_guest_path") else {
        return;
    };
    let az = fx.join("attest/azure/kinvolk");
    let hcl = az.join("hcl-report-snp.bin");
    let size = std::fs::metadata(&hcl).unwrap().len().to_string();
    {
        let (_sw, tcti) = start_swtpm(&room.tpm_state, "not-need-init,startup-clear");
        let d = room.dir.as_path();
        tool(
            d,
            &tcti,
            &[
                "tpm2_nvdefine",
                "0x01400001",
                "-C",
                "o",
                "-s",
                &size,
                "-a",
                "ownerread|ownerwrite",
            ],
        );
        tool(
            d,
            &tcti,
            &[
                "tpm2_nvwrite",
                "0x01400001",
                "-C",
                "o",
                "-i",
                hcl.to_str().unwrap(),
            ],
        );
        tool(
            d,
            &tcti,
            &[
                "tpm2_createprimary",
                "-C",
                "o",
                "-G",
                "rsa2048:rsassa-sha256:null",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda",
                "-c",
                "azure-ak.ctx",
            ],
        );
        tool(
            d,
            &tcti,
            &[
                "tpm2_evictcontrol",
                "-C",
                "o",
                "-c",
                "azure-ak.ctx",
                "0x81000003",
            ],
        );
        tool(d, &tcti, &["tpm2_shutdown"]);
    }
    let pem = std::fs::read_to_string(az.join("certs.pem")).unwrap();
    let end = "-----END CERTIFICATE-----";
    let vcek = pem[..pem.find(end).unwrap() + end.len()].to_string();
    let imds = fake_imds(vcek);
    let contract = room.contract("az", |c| {
        c.replace(
            "mode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"",
            "mode = \"dhcp\"",
        )
        .replace("http://10.0.2.2:", "http://169.254.169.2:")
    });
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(
        text.contains("mode = \"dhcp\"") && text.contains("169.254.169.2"),
        "{text}"
    );
    let image = room.build(&contract, "az");
    let (code, console) = room.boot_with(&image, "vhd", &["--fake-imds", &imds]);
    assert_ne!(code, Some(0), "{console}");
    for line in [
        "dcr-init: network dhcp address=169.254.169.15/24 gateway=169.254.169.2",
        "azure-hcl=snp",
        "using=az-snp-vtpm",
        "dcr-init: evidence tee=az-snp-vtpm hcl-report=2048 ",
    ] {
        assert!(console.contains(line), "{line} missing:\n{console}");
    }
    let reason =
        power_off_reason(&console).unwrap_or_else(|| panic!("no power-off line:\n{console}"));
    assert!(
        reason.contains("refused by the service: evidence_invalid"),
        "{reason}"
    );
    // What the service refused, from its audit log: the AK, and only the AK-dependent checks.
    let refusal = audit_records(&room.svc.data_dir)
        .into_iter()
        .rev()
        .find(|r| {
            r.to_string().contains("az-snp-vtpm") && r.to_string().contains("evidence_invalid")
        })
        .unwrap_or_else(|| panic!("no az-snp-vtpm refusal in the audit log"))
        .to_string();
    assert!(refusal.contains("vtpm.signature"), "{refusal}");
    for fine in [
        "hcl.binding",
        "vtpm.qualifying_data",
        "vtpm.pcrs.digest",
        "hcl.decode",
    ] {
        assert!(
            !refusal.contains(&format!("{fine}:")),
            "{fine} failed: {refusal}"
        );
    }
}

fn exports_carry_the_azure_values(room: &Room, image: &Path, m: &serde_json::Value) {
    let azure = m["measurements"]["azure"]["pcrs"]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(
        azure.keys().map(String::as_str).collect::<Vec<_>>(),
        ["11", "23", "4", "9"]
    );
    // The Azure PCRs are the booted ones of the same image (checked at boot below via tpm).
    for (k, v) in &azure {
        assert_eq!(&m["measurements"]["tpm"]["pcrs"][k], v, "azure.pcrs.{k}");
    }
    let mpath = image.join("measurements.json");
    let o = Command::new(dcr_build())
        .args([
            "export",
            "skr",
            "--maa",
            "https://sharedeus.eus.attest.azure.net",
            "--tee",
            "snp",
            "--measurements",
        ])
        .arg(&mpath)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["version"], "1.0.0");
    let auth = &p["anyOf"][0];
    assert_eq!(auth["authority"], "https://sharedeus.eus.attest.azure.net");
    let all = auth["allOf"].as_array().unwrap();
    assert!(all.contains(&serde_json::json!({"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"})));
    assert!(all.contains(&serde_json::json!({"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"})));
    for (k, v) in &azure {
        let claim = format!("dcr-pcr{:02}", k.parse::<u32>().unwrap());
        assert!(
            all.contains(&serde_json::json!({"claim": claim, "equals": v})),
            "{claim} in {p}"
        );
    }
    let o = Command::new(dcr_build())
        .args([
            "export",
            "skr",
            "--maa",
            "http://insecure",
            "--measurements",
        ])
        .arg(&mpath)
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("--maa"),
        "{}",
        stderr(&o)
    );

    let rego = image.join("dcr.rego");
    let o = Command::new(dcr_build())
        .args(["export", "trustee", "--measurements"])
        .arg(&mpath)
        .arg("--rego")
        .arg(&rego)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let msg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (msg["version"].as_str(), msg["type"].as_str()),
        (Some("0.1.0"), Some("sample"))
    );
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            msg["payload"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    for (k, v) in &azure {
        assert_eq!(payload[format!("dcr_pcr{k}")], serde_json::json!([v]));
    }
    let rego = std::fs::read_to_string(&rego).unwrap();
    assert!(
        rego.contains("package policy") && rego.contains("input[\"az-snp-vtpm\"].tpm.pcr11"),
        "{rego}"
    );

    // The service: a key for the Azure platforms registers against these reference values,
    // and is refused against reference values without an azure section.
    let register = |reference: &Path, key: &str| {
        let dir = &room.dir;
        let o = Command::new(dcr_attest())
            .current_dir(dir)
            .args([
                "seal",
                "--in",
                "tokens",
                "--out",
                &format!("{key}.sealed"),
                "--key-id",
                key,
                "--dek-out",
                &format!("{key}.dek"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        // A contract whose dataset uses this key id.
        let text = std::fs::read_to_string(dir.join("contract-v.toml")).unwrap();
        let text = text.replacen(
            "key_id = \"publisher-segments-v\"",
            &format!("key_id = \"{key}\""),
            1,
        );
        assert!(text.contains(key));
        std::fs::write(dir.join(format!("azure-{key}.contract.toml")), text).unwrap();
        Command::new(dcr_attest())
            .current_dir(dir)
            .args(["register", "--service", &room.svc.url, "--service-pub"])
            .arg(room.svc.data_dir.join("service.pub.json"))
            .args([
                "--token-file",
                "publisher.token",
                "--dek",
                &format!("{key}.dek"),
                "--contract",
                &format!("azure-{key}.contract.toml"),
            ])
            .arg("--reference")
            .arg(reference)
            .args(["--platform", "az-snp-vtpm", "--platform", "az-tdx-vtpm"])
            .output()
            .unwrap()
    };
    let o = register(&mpath, "azure-key-1");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let mut without = m.clone();
    without["measurements"]
        .as_object_mut()
        .unwrap()
        .remove("azure");
    let wpath = image.join("no-azure.json");
    std::fs::write(&wpath, without.to_string()).unwrap();
    let o = register(&wpath, "azure-key-2");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("azure.pcrs"), "{}", stderr(&o));
}
