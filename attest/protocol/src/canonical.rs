//! Canonical JSON, the one writer for every signed or hashed document (the contract, release
//! policies, evidence digests) and for `measurements.json`: objects with keys sorted by their
//! UTF-8 bytes at every level, serde_json's string escaping, integers only.
//!
//! [`compact`] has no whitespace (what is hashed); [`pretty`] is the same order with two-space
//! indentation and a trailing newline (what is written for people to read and diff).
//! Sorting is done here explicitly: whether serde_json's map sorts by itself depends on its
//! `preserve_order` feature, which any crate in the build can switch on.

use serde::Serialize;
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise as JSON: {0}")]
pub struct CanonicalError(#[source] pub serde_json::Error);

/// Compact canonical bytes of a JSON value.
pub fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k).expect("string").as_bytes());
                out.push(b':');
                write(&m[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(serde_json::to_string(other).expect("scalar").as_bytes()),
    }
}

/// Compact canonical bytes of any serialisable document.
pub fn compact<T: Serialize>(doc: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(doc).map_err(CanonicalError)?;
    let mut out = Vec::new();
    write(&v, &mut out);
    Ok(out)
}

/// Indented canonical bytes (sorted keys, two spaces, trailing newline).
pub fn pretty<T: Serialize>(doc: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = sorted(serde_json::to_value(doc).map_err(CanonicalError)?);
    let mut out = serde_json::to_vec_pretty(&v).map_err(CanonicalError)?;
    out.push(b'\n');
    Ok(out)
}

/// Rebuild every object with its keys inserted in sorted order.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sorted_at_every_level_in_both_forms() {
        let v = serde_json::json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": "\u{e9}"}});
        assert_eq!(
            String::from_utf8(compact(&v).unwrap()).unwrap(),
            r#"{"a":{"c":"é","d":[{"y":2,"z":1}]},"b":1}"#
        );
        let p = String::from_utf8(pretty(&v).unwrap()).unwrap();
        assert!(p.ends_with("}\n"), "{p}");
        assert!(p.find("\"a\"").unwrap() < p.find("\"b\"").unwrap());
        assert!(p.find("\"y\"").unwrap() < p.find("\"z\"").unwrap());
    }
}
