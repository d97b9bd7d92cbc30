//! Run receipts in tests: `dcr-attest verify receipt` on files, and every one-field change of a
//! signed receipt (its signature kept), for the tampering tests.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use dcr_protocol::release::Signed;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `dcr-attest verify receipt` on these files.
pub fn verify_receipt(
    receipt: &Path,
    evidence: &Path,
    measurements: &Path,
    service_pub: &Path,
) -> Output {
    Command::new(crate::dcr_attest())
        .args(["verify", "receipt", "--receipt"])
        .arg(receipt)
        .arg("--evidence")
        .arg(evidence)
        .arg("--measurements")
        .arg(measurements)
        .arg("--service-pub")
        .arg(service_pub)
        .output()
        .unwrap()
}

/// Another value of the same JSON type: a string gets its last character changed (a hex digit
/// stays a hex digit), a number +1, a bool flipped.
fn other(v: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    Some(match v {
        Value::String(s) => {
            let mut c: Vec<char> = s.chars().collect();
            match c.last_mut() {
                Some(l) => {
                    *l = if *l == '0' {
                        '1'
                    } else if l.is_ascii_hexdigit() {
                        '0'
                    } else {
                        'x'
                    }
                }
                None => c.push('x'),
            }
            Value::String(c.into_iter().collect())
        }
        Value::Number(n) => Value::from(n.as_u64()? + 1),
        Value::Bool(b) => Value::Bool(!b),
        _ => return None,
    })
}

fn leaves(v: &serde_json::Value, path: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                leaves(x, format!("{path}/{k}"), out)
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{path}/{i}"), out)
            }
        }
        _ => out.push(path),
    }
}

/// Every leaf of the receipt's payload changed in turn, the signature kept: (JSON pointer,
/// tampered receipt). Covers nested fields (each query, each input, the debits' and the
/// release's envelopes).
pub fn every_field_changed(signed: &Signed) -> Vec<(String, Signed)> {
    let payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(&signed.payload).unwrap()).unwrap();
    let mut paths = Vec::new();
    leaves(&payload, String::new(), &mut paths);
    let mut out = Vec::new();
    for p in paths {
        let mut v = payload.clone();
        let leaf = v.pointer_mut(&p).unwrap();
        let Some(n) = other(leaf) else { continue };
        *leaf = n;
        let mut canon = Vec::new();
        dcr_protocol::canonical::write(&v, &mut canon);
        out.push((
            p,
            Signed {
                payload: B64.encode(canon),
                signature: signed.signature.clone(),
            },
        ));
    }
    out
}

/// A receipt of the run `rel` released (signed with its result key) for the contract whose
/// canonical JSON is `contract_json`, naming `output` (blob, signed file) and `queries`, with
/// the evidence that run posted.
pub fn upload_for(
    rel: &crate::load::Released,
    contract_json: &[u8],
    run: &str,
    output: Option<(&str, &[u8])>,
    queries: Vec<dcr_protocol::receipt::ReceiptQuery>,
) -> dcr_protocol::receipt::ReceiptUpload {
    use dcr_protocol::receipt::*;
    use sha2::{Digest, Sha256};
    let payload = B64.decode(&rel.signed.payload).unwrap();
    let r = Receipt {
        version: RECEIPT_VERSION,
        contract_digest: hex::encode(Sha256::digest(contract_json)),
        contract: B64.encode(contract_json),
        platform: dcr_protocol::wire::Tee::Tpm,
        session_id: rel.release.session_id.clone(),
        nonce: hex::encode(&rel.nonce),
        evidence_sha256: canonical_sha256(&rel.request["evidence"]),
        release_sha256: hex::encode(Sha256::digest(&payload)),
        release: rel.signed.clone(),
        run: run.to_string(),
        inputs: vec![],
        queries,
        output: output.map(|(blob, file)| ReceiptOutput {
            blob: blob.to_string(),
            sha256: hex::encode(Sha256::digest(file)),
        }),
        started_at: 1_800_000_000,
        finished_at: 1_800_000_010,
    };
    ReceiptUpload {
        receipt: sign(&rel.result_key, &r),
        evidence: serde_json::from_value(rel.request.clone()).unwrap(),
    }
}
