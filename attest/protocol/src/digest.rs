//! Digests as they appear in dcr's JSON documents: fixed-size byte arrays written as lowercase
//! hex (either case is read).

use serde::{Deserialize, Serialize};

macro_rules! hex_digest {
    ($(#[$doc:meta])* $name:ident, $n:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            /// Lowercase hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parse exactly
            #[doc = stringify!($n)]
            /// bytes of hex (either case).
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; $n];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some($name(out))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::from_hex(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        concat!("not ", $n, " bytes of hex: {:.100?}"),
                        s
                    ))
                })
            }
        }
    };
}

hex_digest!(
    /// A SHA-256 digest (PCR values, file digests), 64 hex digits.
    Sha256,
    32
);
hex_digest!(
    /// A SHA-384 / 48-byte digest (SEV-SNP MEASUREMENT, TDX MRTD), 96 hex digits.
    Sha384,
    48
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_length_checks() {
        let d = Sha256([0xab; 32]);
        assert_eq!(Sha256::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Sha256::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert_eq!(Sha256::from_hex("abcd"), None);
        assert_eq!(Sha384::from_hex(&d.to_hex()), None);
        assert!(serde_json::from_str::<Sha384>("\"zz\"").is_err());
    }
}
