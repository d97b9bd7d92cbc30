//! The output rules read a result exactly as the recipients' CSV readers do: every output the
//! guest's check accepts is read by Python's csv module (the reader the review compared with)
//! into the same rows; the outputs the review used to hide or smuggle rows are refused.
//! Seeded random outputs and byte-level mutations of them (seed printed).

use dcr_protocol::contract::OutputRules;
use dcr_protocol::output;
use dcr_tests::*;

/// The reference contract's output rules (images/clean-room/contract.toml).
fn rules() -> OutputRules {
    let text = std::fs::read_to_string(reference_recipe().join("contract.toml")).unwrap();
    dcr_protocol::contract::Contract::from_toml(&text)
        .unwrap()
        .output
}

/// Python's csv.reader over each input (newline='' as the csv docs require): rows as JSON.
fn python_rows(inputs: &[Vec<u8>]) -> Vec<Option<Vec<Vec<String>>>> {
    let dir = TempDir::new("output-rules");
    for (i, b) in inputs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.csv")), b).unwrap();
    }
    let script = r#"
import csv, json, sys
out = []
for i in range(int(sys.argv[2])):
    try:
        with open(f"{sys.argv[1]}/{i}.csv", newline="", encoding="utf-8") as f:
            out.append(list(csv.reader(f)))
    except Exception:
        out.append(None)
print(json.dumps(out))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.path())
        .arg(inputs.len().to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn accepted_outputs_read_the_same_in_python_and_attacks_are_refused() {
    if !require_tools("accepted_outputs_read_the_same_in_python", &["python3"]) {
        return;
    }
    let seed = std::env::var("DCR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001_u64);
    eprintln!("seed {seed} (DCR_SEED to repeat)");
    let mut rng = Rng(seed | 1);
    let r = rules();
    let labels = [
        "sports", "travel", "auto", "news", "b2b-tech", "x.y_z", "A1",
    ];
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for _ in 0..150 {
        let mut s = String::from("segment,overlap,conversions\n");
        for _ in 0..rng.below(6) {
            let o = 40 + rng.below(200);
            s.push_str(&format!(
                "{},{},{}\n",
                labels[rng.below(labels.len() as u64) as usize],
                o,
                rng.below(o + 1)
            ));
        }
        inputs.push(s.into_bytes());
    }
    // Byte-level mutations: the characters CSV readers treat specially, inserted anywhere.
    let specials: &[&[u8]] = &[
        b"\"",
        b"\r",
        b"\r\n",
        b"\n",
        b",",
        b"\0",
        b" ",
        b"\"\"",
        b"+",
        b"0",
        b"-",
        b"\xc3\xa9",
        b"\t",
        b"\\",
    ];
    let base = inputs.clone();
    for b in &base {
        for _ in 0..4 {
            let mut m = b.clone();
            let at = rng.below(m.len() as u64 + 1) as usize;
            let sp = specials[rng.below(specials.len() as u64) as usize];
            m.splice(at..at, sp.iter().copied());
            inputs.push(m);
        }
    }
    // The review's own outputs.
    for a in [
        &b"segment,overlap,conversions\nalice@example.com;ssn=123,50,1\n"[..],
        b"segment,overlap,overlap\nsports,50,9999\n",
        b"segment,overlap,conversions\nsports,50,1\rhidden,1,1\n",
        b"segment,overlap,conversions\n\"sports\nhidden,1\",50,1\n",
        b"segment,overlap,conversions\nsports,+50,1\n",
        b"segment,overlap,conversions\nsports,050,1\n",
        b"segment,overlap,conversions\nsports\0,50,1\n",
    ] {
        inputs.push(a.to_vec());
        assert!(
            output::check(&r, a).is_err(),
            "{}",
            String::from_utf8_lossy(a)
        );
    }
    let py = python_rows(&inputs);
    let (mut accepted, mut refused) = (0, 0);
    for (input, py) in inputs.iter().zip(py) {
        match output::read(&r, input) {
            Ok(rows) => {
                accepted += 1;
                assert_eq!(
                    Some(rows),
                    py,
                    "accepted but Python reads it differently: {:?}",
                    String::from_utf8_lossy(input)
                );
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!("{accepted} accepted (Python reads each identically), {refused} refused");
    assert!(
        accepted >= 100 && refused >= 100,
        "{accepted} accepted, {refused} refused"
    );
}
