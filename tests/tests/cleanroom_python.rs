//! The python-analytics clean room end to end (issue L's reference image): an OCI image built
//! from Debian packages (python3, pandas, scikit-learn) by images/python-analytics/build-oci.sh
//! (mmdebstrap, no registry), flattened by dcr-build into a dm-verity root, booted in QEMU
//! (TCG, swtpm) under the contract's rules. The result both recipients open is checked twice:
//!
//! - segments and training counts against the aggregates computed here from the plaintext
//!   (`expected_result`, independent of Python);
//! - the coefficients and synthetic rates against scikit-learn on the host (Debian's
//!   python3-sklearn, the same analyze.py on the plaintext): equal to within 1 (the values are
//!   rounded ×1000 integers).

use std::collections::BTreeMap;
use std::process::Command;

use dcr_tests::cleanroom::*;
use dcr_tests::*;

const TOOLS: [&str; 7] = [
    "qemu-system-x86_64",
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "certtool",
    "mmdebstrap",
    "python3",
];

fn rows(csv: &str) -> BTreeMap<String, Vec<i64>> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let seg = f.next().unwrap().to_string();
            (seg, f.map(|v| v.parse().unwrap()).collect())
        })
        .collect()
}

#[test]
fn python_analytics_trains_in_the_clean_room_and_matches_scikit_learn_on_the_host() {
    if !require_tools("cleanroom_python", &TOOLS) {
        return;
    }
    let room = Room::new("python");
    let here = workspace().join("images/python-analytics");
    let oci = room.dir.join("oci");
    let o = Command::new("bash")
        .arg(here.join("build-oci.sh"))
        .arg(&oci)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build-oci.sh: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let pin = stdout(&o).trim().lines().last().unwrap().to_string();
    let o = run_dcr_build(&[
        "rootfs",
        "--oci",
        oci.to_str().unwrap(),
        "--digest",
        &pin,
        "--out",
        room.dir.join("probe.img").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run_sha = s["run_document_sha256"].as_str().unwrap().to_string();
    std::fs::remove_file(room.dir.join("probe.img")).unwrap();

    let recipe_dir = room.dir.join("recipe");
    std::fs::create_dir_all(&recipe_dir).unwrap();
    let text = std::fs::read_to_string(here.join("image.toml")).unwrap();
    let at = text.find("oci = \"").unwrap();
    let end = at + text[at..].find("\"\ndigest = \"").unwrap() + 12;
    let end = end + text[end..].find('"').unwrap() + 1;
    let text = format!(
        "{}oci = \"{}\"\ndigest = \"{pin}\"{}",
        &text[..at],
        oci.display(),
        &text[end..]
    );
    std::fs::write(recipe_dir.join("image.toml"), text).unwrap();
    let contract = room.contract_from(&here.join("contract.toml"), "p", |c| {
        let at = c.find("name = \"analytics\"").unwrap();
        let line = at + c[at..].find("sha256 = \"").unwrap();
        let end = line + c[line..].find('\n').unwrap();
        format!("{}sha256 = \"{run_sha}\"{}", &c[..line], &c[end..])
    });
    let image = room.build_recipe(&recipe_dir.join("image.toml"), &contract, "p");
    let data = room.data("p", 3000, 11);
    room.provide("p", &data, &image);
    let (code, console) = room.boot(&image);
    assert_eq!(code, Some(0), "{console}");
    assert!(
        console.contains(&format!("dcr-init: workload analytics (oci {pin}) exit=0")),
        "{console}"
    );
    let got = String::from_utf8(
        room.result("analytics-result-p.sealed", "publisher")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        Some(&got),
        room.result("analytics-result-p.sealed", "advertiser")
            .map(|b| String::from_utf8(b).unwrap())
            .as_ref()
    );
    assert!(
        got.starts_with("segment,users,coef_milli,rate_permille\n"),
        "{got}"
    );

    // Segments and counts: the independent aggregates.
    let want = rows(&expected_result(&data, 50));
    let got_rows = rows(&got);
    assert_eq!(
        got_rows.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{got}"
    );
    for (seg, v) in &got_rows {
        assert_eq!(v[0], want[seg][0], "{seg}: training count");
    }
    // The model: scikit-learn on the host, same script, the plaintext.
    let o = Command::new("/usr/bin/python3")
        .arg(here.join("analyze.py"))
        .env(
            "DCR_INPUTS",
            format!(
                "{}:{}",
                data.join("publisher.csv").display(),
                data.join("advertiser.csv").display()
            ),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "host analyze.py: {}", stderr(&o));
    let host = rows(&stdout(&o));
    assert_eq!(
        host.keys().collect::<Vec<_>>(),
        got_rows.keys().collect::<Vec<_>>()
    );
    for (seg, v) in &got_rows {
        for (i, name) in [(1, "coef_milli"), (2, "rate_permille")] {
            assert!(
                (v[i] - host[seg][i]).abs() <= 1,
                "{seg} {name}: guest {} host {}\n{got}",
                v[i],
                host[seg][i]
            );
        }
    }
    // Not a constant model: the segments' rates differ.
    let rates: std::collections::BTreeSet<i64> = got_rows.values().map(|v| v[2]).collect();
    assert!(rates.len() > 1, "{got}");
}
