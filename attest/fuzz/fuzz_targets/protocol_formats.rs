//! Everything the guest and the service read from each other or from storage: sealed streams
//! (header and chunks), sealed outputs (recipient table), contracts (TOML and canonical JSON),
//! SEV-SNP certificate tables, TDX quotes as collected, and the API's JSON messages.
#![no_main]
use std::io::Read;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use dcr_protocol::*;
    let dek = seal::Dek([7u8; 32]);
    let mut r = data;
    if let Ok(h) = seal::Header::read_from(&mut r) {
        let mut out = Vec::new();
        let _ = seal::Opener::new(r, &dek, h).take(1 << 20).read_to_end(&mut out);
    }
    let sk = keys::HpkeSecret([9u8; 32]);
    if let Ok(mut o) = recipients::open_as(data, &sk) {
        let mut out = Vec::new();
        let _ = (&mut o).take(1 << 20).read_to_end(&mut out);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = contract::Contract::from_toml(text);
        let _ = keys::HpkePublic::from_text(text);
        let _ = keys::SigningPublic::from_text(text);
    }
    let _ = contract::Contract::from_canonical_json(data);
    let _ = evidence::parse_cert_table(data);
    let _ = evidence::tdx_from_tsm(data);
    let _ = serde_json::from_slice::<wire::AttestRequest>(data);
    let _ = serde_json::from_slice::<wire::RegisterRequest>(data);
    let _ = serde_json::from_slice::<release::Signed>(data);
});
