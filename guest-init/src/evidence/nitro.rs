//! AWS Nitro Enclaves evidence: an attestation document from the Nitro Secure Module
//! (`/dev/nsm`, Linux `drivers/misc/nsm.c`) with the binding in `user_data` and the service's
//! nonce in `nonce`.
//!
//! The NSM speaks CBOR in one `NSM_IOCTL_RAW` (request ≤ 0x1000 bytes, response ≤ 0x3000;
//! `include/uapi/linux/nsm.h`). Messages are serde's externally tagged enums as
//! aws-nitro-enclaves-nsm-api writes them with serde_cbor: a unit request is a bare text
//! string (`"DescribeNSM"`), the others a one-entry map from the variant name to a map of
//! fields in declaration order; byte fields are byte strings, absent optionals `null`. Built
//! and read here with ciborium values (no serde_cbor, which is unmaintained, in the guest).

use base64::Engine;
use ciborium::Value;
use dcr_protocol::contract::Contract;
use dcr_protocol::wire::{ChallengeRequest, Evidence, NitroEvidence, Tee};

use crate::client::{challenge, Client};
use crate::console::say;
use crate::release::{release, Keys, TeeKeys};
use crate::{step, StepError};

/// The NSM device.
pub const NSM_DEV: &str = "/dev/nsm";
/// Largest request and response the driver moves (`NSM_REQUEST_MAX_SIZE`,
/// `NSM_RESPONSE_MAX_SIZE`).
pub const REQUEST_MAX: usize = 0x1000;
pub const RESPONSE_MAX: usize = 0x3000;
/// `user_data`, `nonce` and `public_key` each at most 512 bytes (the NSM's limit; larger
/// is `InputTooLarge`).
pub const FIELD_MAX: usize = 512;

/// The requests dcr makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Attestation {
        user_data: Option<Vec<u8>>,
        nonce: Option<Vec<u8>>,
        public_key: Option<Vec<u8>>,
    },
    DescribeNsm,
}

/// What the NSM answers to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Attestation {
        document: Vec<u8>,
    },
    GetRandom {
        random: Vec<u8>,
    },
    /// `DescribeNSM`: only what dcr prints.
    DescribeNsm {
        module_id: String,
        version: (u64, u64, u64),
    },
    /// `{"Error": "InvalidArgument" | …}`.
    Error(String),
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn opt_bytes(b: &Option<Vec<u8>>) -> Value {
    b.as_ref().map_or(Value::Null, |b| Value::Bytes(b.clone()))
}

/// CBOR of a request.
pub fn encode(r: &Request) -> Result<Vec<u8>, String> {
    let v = match r {
        Request::Attestation {
            user_data,
            nonce,
            public_key,
        } => {
            for (name, f) in [
                ("user_data", user_data),
                ("nonce", nonce),
                ("public_key", public_key),
            ] {
                if f.as_ref().is_some_and(|b| b.len() > FIELD_MAX) {
                    return Err(format!("{name} over {FIELD_MAX} bytes"));
                }
            }
            Value::Map(vec![(
                text("Attestation"),
                Value::Map(vec![
                    (text("user_data"), opt_bytes(user_data)),
                    (text("nonce"), opt_bytes(nonce)),
                    (text("public_key"), opt_bytes(public_key)),
                ]),
            )])
        }
        Request::DescribeNsm => text("DescribeNSM"),
    };
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).map_err(|e| e.to_string())?;
    if out.len() > REQUEST_MAX {
        return Err(format!("request of {} bytes over {REQUEST_MAX}", out.len()));
    }
    Ok(out)
}

fn field<'a>(m: &'a [(Value, Value)], name: &str) -> Result<&'a Value, String> {
    m.iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
        .ok_or_else(|| format!("no {name}"))
}

fn bytes_of(m: &[(Value, Value)], name: &str) -> Result<Vec<u8>, String> {
    field(m, name)?
        .as_bytes()
        .cloned()
        .ok_or_else(|| format!("{name} is not a byte string"))
}

/// A response, strictly: one item, no trailing bytes, a known variant.
pub fn decode(b: &[u8]) -> Result<Response, String> {
    let mut r = b;
    let v: Value = ciborium::from_reader(&mut r).map_err(|e| format!("not CBOR: {e}"))?;
    if !r.is_empty() {
        return Err(format!("{} trailing bytes", r.len()));
    }
    let Value::Map(mut top) = v else {
        return Err("not a one-entry map".into());
    };
    if top.len() != 1 {
        return Err(format!("{} entries, expected one", top.len()));
    }
    let (k, body) = top.remove(0);
    let name = k.as_text().ok_or("variant name is not text")?.to_string();
    if name == "Error" {
        return Ok(Response::Error(
            body.as_text().ok_or("Error is not text")?.to_string(),
        ));
    }
    let Value::Map(m) = body else {
        return Err(format!("{name}: not a map"));
    };
    let num = |n: &str| -> Result<u64, String> {
        field(&m, n)?
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| format!("{n} is not an unsigned integer"))
    };
    Ok(match name.as_str() {
        "Attestation" => Response::Attestation {
            document: bytes_of(&m, "document")?,
        },
        "GetRandom" => Response::GetRandom {
            random: bytes_of(&m, "random")?,
        },
        "DescribeNSM" => Response::DescribeNsm {
            module_id: field(&m, "module_id")?
                .as_text()
                .ok_or("module_id is not text")?
                .to_string(),
            version: (
                num("version_major")?,
                num("version_minor")?,
                num("version_patch")?,
            ),
        },
        other => return Err(format!("unexpected response {other:?}")),
    })
}

/// One request to the NSM.
pub fn call(r: &Request) -> Result<Response, String> {
    let req = encode(r)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(NSM_DEV)
        .map_err(|e| format!("{NSM_DEV}: {e}"))?;
    let mut resp = vec![0u8; RESPONSE_MAX];
    let n = crate::sys::nsm_raw(&f, &req, &mut resp).map_err(|e| format!("{NSM_DEV}: {e}"))?;
    decode(&resp[..n.min(resp.len())]).map_err(|e| format!("NSM response: {e}"))
}

/// The `pcrs` of an attestation document (COSE_Sign1, tagged 18 or not, whose payload is the
/// AWS attestation map), index order. Only for display: nothing here is verified.
pub fn document_pcrs(document: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut r = document;
    let v: Value = ciborium::from_reader(&mut r).map_err(|e| format!("not CBOR: {e}"))?;
    let v = match v {
        Value::Tag(18, inner) => *inner,
        v => v,
    };
    let Value::Array(parts) = v else {
        return Err("not a COSE_Sign1 array".into());
    };
    let payload = match parts.get(2) {
        Some(Value::Bytes(b)) if parts.len() == 4 => b,
        _ => return Err("not a COSE_Sign1 array of four with a payload".into()),
    };
    let mut r = payload.as_slice();
    let Value::Map(m) =
        ciborium::from_reader::<Value, _>(&mut r).map_err(|e| format!("payload: {e}"))?
    else {
        return Err("payload is not a map".into());
    };
    let Value::Map(pcrs) = field(&m, "pcrs")? else {
        return Err("pcrs is not a map".into());
    };
    let mut out = Vec::with_capacity(pcrs.len());
    for (k, v) in pcrs {
        let i = k
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or("a pcr index is not an unsigned integer")?;
        let b = v.as_bytes().ok_or("a pcr value is not a byte string")?;
        out.push((i, b.clone()));
    }
    out.sort();
    Ok(out)
}

/// Nitro evidence: a document binding the TEE's keys, the contract digest and the nonce.
pub fn attest_nitro(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    if let Ok(Response::DescribeNsm { module_id, version }) = call(&Request::DescribeNsm) {
        say(&format!(
            "nsm module={module_id} version={}.{}.{}",
            version.0, version.1, version.2
        ));
    }
    let (ch, nonce) = challenge(
        client,
        &ChallengeRequest {
            tee: Tee::Nitro,
            tpm: None,
        },
    )?;
    let rd = tk.report_data(&nonce, digest);
    let document = match step(
        "evidence",
        call(&Request::Attestation {
            user_data: Some(rd.to_vec()),
            nonce: Some(nonce.clone()),
            public_key: None,
        }),
    )? {
        Response::Attestation { document } => document,
        Response::Error(e) => return crate::fail("evidence", format!("NSM refused: {e}")),
        other => return crate::fail("evidence", format!("NSM answered {other:?}")),
    };
    // The PCRs as the NSM measured them, for an operator comparing with measurements.json
    // `nitro.pcrs` (the service decides on the signed document, not on this line).
    let shown = match document_pcrs(&document) {
        Ok(p) => p
            .iter()
            .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 8))
            .map(|(i, v)| format!(" pcr{i}={}", hex::encode(v)))
            .collect::<String>(),
        Err(e) => format!(" (its payload did not decode: {e})"),
    };
    say(&format!(
        "evidence tee=nitro document={} bytes{shown}",
        document.len()
    ));
    let evidence = Evidence::Nitro(NitroEvidence {
        document: base64::engine::general_purpose::STANDARD.encode(&document),
    });
    release(c, digest, client, &ch.session_id, &nonce, tk, evidence)
}

#[cfg(test)]
mod tests {
    //! Our bytes against aws-nitro-enclaves-nsm-api's types as its driver encodes them
    //! (serde_cbor), both ways.
    use super::*;
    use aws_nitro_enclaves_nsm_api::api as aws;
    use serde_bytes::ByteBuf;

    #[test]
    fn requests_are_byte_identical_to_the_aws_crate() {
        let cases = [
            (
                Request::Attestation {
                    user_data: Some(vec![7; 64]),
                    nonce: Some(vec![9; 32]),
                    public_key: None,
                },
                aws::Request::Attestation {
                    user_data: Some(ByteBuf::from(vec![7; 64])),
                    nonce: Some(ByteBuf::from(vec![9; 32])),
                    public_key: None,
                },
            ),
            (
                Request::Attestation {
                    user_data: None,
                    nonce: None,
                    public_key: Some(vec![1; 512]),
                },
                aws::Request::Attestation {
                    user_data: None,
                    nonce: None,
                    public_key: Some(ByteBuf::from(vec![1; 512])),
                },
            ),
            (Request::DescribeNsm, aws::Request::DescribeNSM),
        ];
        for (ours, theirs) in cases {
            assert_eq!(
                encode(&ours).unwrap(),
                serde_cbor::to_vec(&theirs).unwrap(),
                "{ours:?}"
            );
        }
        let big = Request::Attestation {
            user_data: Some(vec![0; 513]),
            nonce: None,
            public_key: None,
        };
        assert!(encode(&big).unwrap_err().contains("user_data over 512"));
    }

    #[test]
    fn responses_from_the_aws_crate_decode() {
        let doc = vec![0x84, 0x44, 0xa1, 0x01, 0x38, 0x22];
        let b = serde_cbor::to_vec(&aws::Response::Attestation {
            document: doc.clone(),
        })
        .unwrap();
        assert_eq!(decode(&b).unwrap(), Response::Attestation { document: doc });
        let b = serde_cbor::to_vec(&aws::Response::GetRandom {
            random: vec![5; 256],
        })
        .unwrap();
        assert_eq!(
            decode(&b).unwrap(),
            Response::GetRandom {
                random: vec![5; 256]
            }
        );
        let b = serde_cbor::to_vec(&aws::Response::Error(aws::ErrorCode::InputTooLarge)).unwrap();
        assert_eq!(decode(&b).unwrap(), Response::Error("InputTooLarge".into()));
        let b = serde_cbor::to_vec(&aws::Response::DescribeNSM {
            version_major: 1,
            version_minor: 0,
            version_patch: 2,
            module_id: "i-0123-enc0456".into(),
            max_pcrs: 32,
            locked_pcrs: [0u16, 1, 2].into_iter().collect(),
            digest: aws::Digest::SHA384,
        })
        .unwrap();
        assert_eq!(
            decode(&b).unwrap(),
            Response::DescribeNsm {
                module_id: "i-0123-enc0456".into(),
                version: (1, 0, 2)
            }
        );
        // Malformed answers are named, never a panic.
        let mut t = serde_cbor::to_vec(&aws::Response::LockPCR).unwrap();
        assert_eq!(decode(&t).unwrap_err(), "not a one-entry map");
        t.push(0);
        assert_eq!(decode(&t).unwrap_err(), "1 trailing bytes");
        let two = [0xa2, 0x61, 0x61, 0x01, 0x61, 0x62, 0x02];
        assert_eq!(decode(&two).unwrap_err(), "2 entries, expected one");
        assert!(decode(&[]).unwrap_err().starts_with("not CBOR"));
        let b = serde_cbor::to_vec(&aws::Response::ExtendPCR { data: vec![0; 48] }).unwrap();
        assert_eq!(decode(&b).unwrap_err(), "unexpected response \"ExtendPCR\"");
    }

    #[test]
    fn pcrs_of_the_real_documents_equal_the_aws_crates_reading() {
        // The genuine documents of ../shared/fixtures/attest/nitro (DCR_FIXTURES overrides);
        // AWS's AttestationDoc::from_binary reads each payload independently.
        let dir = std::env::var_os("DCR_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
            })
            .join("attest/nitro");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().and_then(|x| x.to_str()) != Some("cbor") {
                continue;
            }
            let doc = std::fs::read(&path).unwrap();
            let ours = document_pcrs(&doc).unwrap();
            let v: Value = ciborium::from_reader(doc.as_slice()).unwrap();
            let v = match v {
                Value::Tag(_, inner) => *inner,
                v => v,
            };
            let payload = v.as_array().unwrap()[2].as_bytes().unwrap().clone();
            let theirs = aws::AttestationDoc::from_binary(&payload).unwrap();
            let theirs: Vec<(u64, Vec<u8>)> = theirs
                .pcrs
                .iter()
                .map(|(i, b)| (*i as u64, b.to_vec()))
                .collect();
            assert_eq!(ours, theirs, "{}", path.display());
            assert!(ours.iter().any(|(i, v)| *i == 0 && v.len() == 48));
            seen += 1;
        }
        assert!(seen >= 4, "{seen} documents in {}", dir.display());
        // Not a document: named, never a panic.
        assert!(document_pcrs(&[0x80]).unwrap_err().contains("four"));
        assert!(document_pcrs(&[]).unwrap_err().starts_with("not CBOR"));
    }

    #[test]
    fn the_ioctl_number_is_iowr_0x0a_0_of_two_iovecs() {
        // _IOWR(type, nr, size) = 3 << 30 | size << 16 | type << 8 | nr (asm-generic/ioctl.h);
        // struct nsm_raw is two struct nsm_iovec {__u64 addr; __u64 len;}: 32 bytes.
        assert_eq!(
            crate::sys::NSM_IOCTL_RAW,
            (3 << 30) | (32 << 16) | (0x0a << 8)
        );
    }
}
