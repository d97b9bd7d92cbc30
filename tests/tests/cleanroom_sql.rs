//! SQL clean room end to end in QEMU + OVMF + swtpm (TCG), Parquet inputs, an image whose only
//! workload is the SQL engine (the main job covers CSV beside the native workload), and **no
//! IP network**: the contract's network is vsock, the VM has a vhost-user-vsock-pci device
//! backed by rust-vmm's vhost-device-vsock and no NIC, and `dcr-attest vsock-proxy` forwards
//! the guest's connections to the service (the Nitro Enclaves channel, issue M):
//! - queries go through the service (`dcr-attest query submit`); a token cannot submit as
//!   another party;
//! - the guest answers each pending query: allowed ones with the rows (equal to a plain join of
//!   the plaintext with groups under k = 50 dropped), a raw projection with a sealed refusal
//!   naming the rule and no rows;
//! - an answer reaches only the analysis's recipients (an analysis with no `recipients`: the
//!   submitter alone);
//! - `query result` refuses an answer for another query document; after the run nothing is
//!   pending;
//! - differential privacy: a DP query the engine refuses still costs its ε (the debit comes
//!   before the engine runs); the next is answered with noise of the stated scale around the
//!   plaintext's values and the service's signed debit; the third would pass the budget (ε 2
//!   in all) and is refused with no rows;
//! - the run's receipt verifies offline (`dcr-attest verify receipt`) and names each answer
//!   the service holds by digest; any field changed, other evidence or another contract's
//!   image measurements are refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use dcr_tests::cleanroom::*;
use dcr_tests::receipts;
use dcr_tests::*;

/// What these tests need on the machine.
const TOOLS: [&str; 5] = ROOM_TOOLS;

/// The reference recipe with only the SQL engine as workload (built from the workspace).
fn sql_only_recipe(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(reference_recipe().join("image.toml")).unwrap();
    let start = text
        .find("[[workloads]]\nname = \"overlap\"")
        .expect("the native workload in the recipe");
    let end = start + text[start..].find("\n\n").unwrap() + 2;
    let text = format!("{}{}", &text[..start], &text[end..]);
    assert!(text.contains("crate = \"../../attest/sql-engine\""));
    let text = text
        .replace(
            "crate = \"../../attest/sql-engine\"",
            &format!(
                "crate = \"{}\"",
                workspace().join("attest/sql-engine").display()
            ),
        )
        .replace(
            "contract = \"contract.toml\"",
            &format!(
                "contract = \"{}\"",
                reference_recipe().join("contract.toml").display()
            ),
        );
    let r = dir.join("recipe-sql");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("image.toml"), text).unwrap();
    r
}

/// The vsock port the guest calls the service on (vhost-device-vsock hands it to
/// `<room>/vsock_<port>`).
const VSOCK_PORT: u32 = 8000;

/// The room's contract: vsock instead of an IP network, Parquet tables, no native workload, and a second analysis `mine`
/// under the same rule whose answers go to the submitter only.
fn sql_contract(room: &Room) -> PathBuf {
    room.contract("pq", |t| {
        let start = t
            .find("[[workloads]]\nname = \"overlap\"")
            .expect("native workload");
        let end = start + t[start..].find("\n\n").unwrap() + 2;
        let t = format!("{}{}", &t[..start], &t[end..]);
        let a = t.find("[[analyses]]").expect("analysis");
        let w = t
            .find("[[analyses]]\nname = \"overlap_dp\"")
            .expect("the DP analysis");
        let mine = t[a..w]
            .replace("name = \"overlap\"", "name = \"mine\"")
            .replace("recipients = [\"publisher\", \"advertiser\"]\n", "");
        assert!(mine.contains("name = \"mine\"") && !mine.contains("recipients"));
        let t = format!("{}{mine}{}", &t[..w], &t[w..]);
        assert_eq!(t.matches("format = \"csv\"").count(), 2);
        // A budget of two queries for the DP analysis.
        assert_eq!(t.matches("epsilon_total = \"4\"\n").count(), 1);
        // No IP network: the guest reaches the service over vsock only (host CID 2 under
        // QEMU; a Nitro enclave's parent is CID 3).
        let net =
            "[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n";
        assert_eq!(t.matches(net).count(), 1);
        t.replace("format = \"csv\"", "format = \"parquet\"")
            .replace("epsilon_total = \"4\"\n", "epsilon_total = \"2\"\n")
            .replace(
                net,
                &format!("[network]\nmode = \"vsock\"\ncid = 2\nport = {VSOCK_PORT}\n"),
            )
    })
}

fn service_args(room: &Room, contract: &Path) -> Vec<String> {
    vec![
        "--service".into(),
        room.svc.url.clone(),
        "--contract".into(),
        contract.display().to_string(),
    ]
}

fn attest(room: &Room, args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    room.attest(&a)
}

/// Submit `sql` under `analysis` as `party` with `token`'s file; the query id.
fn submit(
    room: &Room,
    contract: &Path,
    token: &str,
    party: &str,
    analysis: &str,
    sql: &str,
    doc: &str,
) -> Result<String, String> {
    let mut a: Vec<String> = ["query", "submit"].map(String::from).to_vec();
    a.extend(service_args(room, contract));
    a.extend(
        [
            "--token-file",
            &format!("{token}.token"),
            "--party",
            party,
            "--analysis",
            analysis,
            "--sql",
            sql,
            "--query-out",
            doc,
        ]
        .map(String::from),
    );
    let o = attest(room, &a);
    if !o.status.success() {
        return Err(stderr(&o));
    }
    let out = stdout(&o);
    let id = out
        .strip_prefix("submitted query ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no id in {out:?}"));
    Ok(id.to_string())
}

/// `query result` as `party` (its key), checked against the document `doc`.
fn result(room: &Room, contract: &Path, id: &str, party: &str, doc: &str) -> std::process::Output {
    let mut a: Vec<String> = ["query", "result"].map(String::from).to_vec();
    a.extend(service_args(room, contract));
    a.extend(["--id", id, "--key", &format!("{party}.key"), "--query", doc].map(String::from));
    attest(room, &a)
}

#[test]
fn sql_clean_room_answers_parquet_queries_to_their_recipients_only() {
    if !require_tools("sql_clean_room_answers_parquet_queries", &TOOLS) {
        return;
    }
    let Some(vhost) = vhost_device_vsock("sql_clean_room_answers_parquet_queries") else {
        return;
    };
    let room = Room::new("sql-room");
    let contract = sql_contract(&room);
    let recipe = sql_only_recipe(&room.dir);
    let image = room.dir.join("image-pq");
    let o = Command::new(dcr_build())
        .arg("image")
        .arg(&recipe)
        .arg("--contract")
        .arg(&contract)
        .arg("--out")
        .arg(&image)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(o.status.success(), "dcr-build image: {}", stderr(&o));
    let data = room.data_with("pq", 10000, 5, &["--parquet"]);
    room.provide_ext("pq", &data, &image, "parquet");

    let overlap =
        std::fs::read_to_string(reference_recipe().join("../clean-room/overlap.sql")).unwrap();
    let ok = submit(
        &room,
        &contract,
        "advertiser",
        "advertiser",
        "overlap",
        &overlap,
        "q-ok.json",
    )
    .unwrap();
    let raw = submit(
        &room,
        &contract,
        "advertiser",
        "advertiser",
        "overlap",
        "SELECT s.user, s.segment FROM segments s",
        "q-raw.json",
    )
    .unwrap();
    let mine = submit(
        &room,
        &contract,
        "advertiser",
        "advertiser",
        "mine",
        &overlap,
        "q-mine.json",
    )
    .unwrap();
    let dp_sql =
        std::fs::read_to_string(reference_recipe().join("../clean-room/overlap-dp.sql")).unwrap();
    // A DP query the engine refuses (HAVING acts on exact values): the budget is debited
    // before the engine runs, so the refusal costs its ε like an answer.
    let dp0 = submit(
        &room,
        &contract,
        "advertiser",
        "advertiser",
        "overlap_dp",
        &dp_sql.replace(
            "GROUP BY s.segment",
            "GROUP BY s.segment HAVING COUNT(DISTINCT s.user) > 5",
        ),
        "q-dp0.json",
    )
    .unwrap();
    let dp1 = submit(
        &room,
        &contract,
        "advertiser",
        "advertiser",
        "overlap_dp",
        &dp_sql,
        "q-dp1.json",
    )
    .unwrap();
    let dp2 = submit(
        &room,
        &contract,
        "advertiser",
        "advertiser",
        "overlap_dp",
        &format!("{dp_sql}-- the same again"),
        "q-dp2.json",
    )
    .unwrap();
    // The publisher's token cannot submit as the advertiser (the service checks the token's
    // party), and the publisher is not a submitter.
    let e = submit(
        &room,
        &contract,
        "publisher",
        "advertiser",
        "overlap",
        &overlap,
        "q-x.json",
    )
    .unwrap_err();
    assert!(e.contains("not_submitter"), "{e}");

    let mut pending: Vec<String> = ["query", "pending"].map(String::from).to_vec();
    pending.extend(service_args(&room, &contract));
    pending.extend(["--token-file", "publisher.token"].map(String::from));
    let o = attest(&room, &pending);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("6 queries pending"),
        "{}",
        stdout(&o)
    );

    // A vsock image does not boot without its channel: `run` says what to add.
    let o = Command::new(dcr_build())
        .arg("run")
        .arg(&image)
        .args(["--mode", "uefi", "--net"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("over vsock (CID 2, port 8000)") && stderr(&o).contains("--vsock"),
        "{}",
        stderr(&o)
    );

    let (code, console, proxy_log) = room.boot_vsock(&image, VSOCK_PORT, &vhost);
    assert_eq!(code, Some(0), "{console}");
    // The run went over vsock and nothing else: no NIC was attached, the guest configured
    // no network, and the proxy forwarded its connections to the service.
    assert!(
        console.contains("dcr-init: network vsock service=2:8000"),
        "{console}"
    );
    assert!(!console.contains("dcr-init: network static"), "{console}");
    assert!(
        proxy_log.contains(&format!(
            "vsock-proxy: unix {}",
            room.dir.join("vsock_8000").display()
        )),
        "{proxy_log}"
    );
    assert!(console.contains("dcr-init: queries pending=6"), "{console}");
    assert!(
        console.contains(&format!(
            "dcr-init: query {dp0} analysis=overlap_dp party=advertiser outcome=refused epsilon=1 budget_spent=1 "
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "dcr-init: query {dp1} analysis=overlap_dp party=advertiser outcome=ok rows="
        )) && console.contains("epsilon=1 budget_spent=2 "),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "dcr-init: query {dp2} analysis=overlap_dp party=advertiser outcome=budget_refused"
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "dcr-init: query {ok} analysis=overlap party=advertiser outcome=ok rows="
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "dcr-init: query {raw} analysis=overlap party=advertiser outcome=refused"
        )),
        "{console}"
    );
    assert!(console.contains("dcr-init: output none"), "{console}");
    assert!(
        console.contains("dcr-init: power-off status=ok"),
        "{console}"
    );
    // Neither SQL nor rows reach the operator's console.
    assert!(!console.contains("SELECT"), "{console}");

    let want = expected_result(&data, 50);
    assert!(want.lines().count() > 3, "{want}");
    for party in ["advertiser", "publisher"] {
        let o = result(&room, &contract, &ok, party, "q-ok.json");
        assert!(o.status.success(), "{party}: {}", stderr(&o));
        assert_eq!(stdout(&o), want, "{party}");
        // Every recipient sees the query that ran, not only its submitter.
        assert!(
            stderr(&o).contains("query sql: SELECT s.segment, COUNT(DISTINCT s.user)"),
            "{party}: {}",
            stderr(&o)
        );
    }
    // The raw projection: refused before anything ran, the rule named, no rows.
    let o = result(&room, &contract, &raw, "advertiser", "q-raw.json");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    let reason = stderr(&o);
    assert!(
        reason.contains("refused: ") && reason.contains("aggregation"),
        "{reason}"
    );
    // `mine` names no recipients: the submitter alone opens its answer.
    let o = result(&room, &contract, &mine, "advertiser", "q-mine.json");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), want);
    let o = result(&room, &contract, &mine, "publisher", "q-mine.json");
    assert!(
        !o.status.success(),
        "the publisher opened an answer sealed to the advertiser"
    );
    assert!(stdout(&o).is_empty());
    // An answer is for one query document: another one's is refused.
    let o = result(&room, &contract, &ok, "advertiser", "q-mine.json");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("other than --query"), "{}", stderr(&o));
    // The DP answer: noise around the plaintext's values (the released segments all exist,
    // each count within 20 noise scales), its account and the service's debit.
    let truth = expected_result(&data, 1);
    let o = result(&room, &contract, &dp1, "publisher", "q-dp1.json");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("differential privacy: spent ε="), "{err}");
    assert!(
        err.contains("budget: debited by the key-release service at ")
            && err.contains(": 2 of 2 spent (analysis)"),
        "{err}"
    );
    let scale = |col: &str| -> f64 {
        let at = err
            .find(&format!(" {col}="))
            .unwrap_or_else(|| panic!("no scale for {col}: {err}"));
        err[at + col.len() + 2..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(';')
            .parse()
            .unwrap()
    };
    let (b_overlap, b_conv) = (scale("overlap"), scale("conversions"));
    let noisy = stdout(&o);
    assert!(
        noisy.starts_with("segment,overlap,conversions\n"),
        "{noisy}"
    );
    let released: Vec<&str> = noisy.lines().skip(1).collect();
    assert!(!released.is_empty(), "{noisy}");
    for row in &released {
        let f: Vec<&str> = row.split(',').collect();
        let t = truth
            .lines()
            .find(|l| l.starts_with(&format!("{},", f[0])))
            .unwrap_or_else(|| panic!("segment {} released but not in the data", f[0]));
        let tf: Vec<f64> = t.split(',').skip(1).map(|x| x.parse().unwrap()).collect();
        let (o, c): (f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert!(
            (o - tf[0]).abs() <= 20.0 * b_overlap && (c - tf[1]).abs() <= 20.0 * b_conv,
            "{row} vs {t} (scales {b_overlap}, {b_conv})"
        );
        assert!(tf[0] >= 20.0, "a segment of {} people was released", tf[0]);
    }
    // The engine's refusal: no rows, the reason named (its ε was spent).
    let o = result(&room, &contract, &dp0, "advertiser", "q-dp0.json");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("HAVING"), "{}", stderr(&o));
    // The third DP query would pass the budget: refused, no rows, the budget named.
    let o = result(&room, &contract, &dp2, "advertiser", "q-dp2.json");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("budget"), "{}", stderr(&o));
    // Nothing is pending any more.
    let o = attest(&room, &pending);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("0 queries pending"),
        "{}",
        stdout(&o)
    );

    // The run's receipt: a party fetches it and verifies it offline against the image's
    // measurements and the service key; it names every answer the service holds (by digest)
    // and the DP answer's debit.
    let mut a: Vec<String> = vec!["receipts".into()];
    a.extend(service_args(&room, &contract));
    a.extend(["--token-file", "publisher.token", "--out", "receipts"].map(String::from));
    let o = attest(&room, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 receipt(s)"), "{}", stdout(&o));
    let rdir = room.dir.join("receipts");
    let find = |suffix: &str| {
        std::fs::read_dir(&rdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {}", rdir.display()))
    };
    let (rp, ep) = (find(".receipt.json"), find(".evidence.json"));
    let mp = image.join("measurements.json");
    let pubp = room.svc.data_dir.join("service.pub.json");
    let o = receipts::verify_receipt(&rp, &ep, &mp, &pubp);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.contains("verdict: accepted") && out.contains("ok   reference.pcr.23"),
        "{out}"
    );
    assert!(console.contains("dcr-init: receipt run="), "{console}");
    let digest =
        dcr_protocol::contract::Contract::from_toml(&std::fs::read_to_string(&contract).unwrap())
            .unwrap()
            .digest();
    let blobs = room.svc.data_dir.join("blobs").join(hex::encode(digest));
    for (id, outcome) in [
        (&ok, "ok"),
        (&mine, "ok"),
        (&raw, "refused (refused)"),
        (&dp0, "refused (refused) epsilon=1"),
        (&dp1, "dp epsilon=1"),
        (&dp2, "refused (budget_refused)"),
    ] {
        let blob = std::fs::read(blobs.join(format!("query-{id}.result"))).unwrap();
        let line = format!(
            "outcome={outcome} result_sha256={}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob))
        );
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("query {id} ")) && l.ends_with(&line)),
            "{line} for {id} not in:\n{err}"
        );
    }
    assert!(out.contains("ok   debits: 2 signed"), "{out}");
    // Tampering: any field of the real receipt changed (its signature kept).
    let signed: dcr_protocol::release::Signed =
        serde_json::from_slice(&std::fs::read(&rp).unwrap()).unwrap();
    let flips = receipts::every_field_changed(&signed);
    assert!(flips.len() >= 40, "{} fields", flips.len());
    let tampered = room.dir.join("tampered.json");
    for (path, s) in flips {
        std::fs::write(&tampered, serde_json::to_vec(&s).unwrap()).unwrap();
        let o = receipts::verify_receipt(&tampered, &ep, &mp, &pubp);
        assert_eq!(o.status.code(), Some(1), "{path}: {}", stdout(&o));
    }
    // Evidence changed (one quoted PCR value): not the evidence the release was made on.
    let mut e: serde_json::Value = serde_json::from_slice(&std::fs::read(&ep).unwrap()).unwrap();
    let pcrs = e["evidence"]["pcrs"].as_str().unwrap().to_string();
    let pcrs = match pcrs.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &pcrs[1..]),
    };
    e["evidence"]["pcrs"] = pcrs.into();
    std::fs::write(&tampered, serde_json::to_vec(&e).unwrap()).unwrap();
    let o = receipts::verify_receipt(&rp, &tampered, &mp, &pubp);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("FAIL evidence"), "{}", stdout(&o));
    // Another contract's image (the same recipe and contract but for its name): refused.
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(text.contains("\nname = \"publisher-advertiser-overlap\"\n"));
    let other = room.dir.join("contract-other.toml");
    std::fs::write(
        &other,
        text.replacen(
            "\nname = \"publisher-advertiser-overlap\"\n",
            "\nname = \"another-overlap\"\n",
            1,
        ),
    )
    .unwrap();
    let other_image = room.dir.join("image-other");
    let o = Command::new(dcr_build())
        .arg("image")
        .arg(&recipe)
        .arg("--contract")
        .arg(&other)
        .arg("--out")
        .arg(&other_image)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(o.status.success(), "dcr-build image: {}", stderr(&o));
    let o = receipts::verify_receipt(&rp, &ep, &other_image.join("measurements.json"), &pubp);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("FAIL contract") && stdout(&o).contains("FAIL reference.pcr."),
        "{}",
        stdout(&o)
    );
}
