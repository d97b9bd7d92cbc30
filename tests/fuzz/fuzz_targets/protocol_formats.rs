//! Everything the guest and the service read from each other or from storage: sealed streams
//! (header and chunks), sealed outputs (recipient table), contracts (TOML and canonical JSON),
//! SEV-SNP certificate tables, TDX quotes as collected, the API's JSON messages and typed
//! evidence, measurements.json, signed
//! results (DCRSIGN envelope) and the output rules' CSV checker.
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
    if let Ok(req) = serde_json::from_slice::<wire::AttestRequest>(data) {
        // The request's evidence, typed by its tee (where the service types it).
        if let Ok(ev) = wire::Evidence::from_wire(req.tee, &req.evidence) {
            let _ = ev.to_wire();
        }
    }
    let _ = measurements::Measurements::from_json(data);
    let _ = serde_json::from_slice::<wire::RegisterRequest>(data);
    let _ = serde_json::from_slice::<release::Signed>(data);
    let _ = serde_json::from_slice::<wire::RegistrationReceipt>(data);
    if let Ok((proof, _)) = result::split(data) {
        let key = keys::SigningPublic([3u8; 32]);
        let _ = result::verify_proof(&proof, &key, &[0u8; 32], "out.sealed");
    }
    let rules = contract::OutputRules {
        min_group_size: 50,
        columns: vec![
            contract::OutputColumn::Label { name: "segment".into(), max_len: 32, values: None },
            contract::OutputColumn::Count { name: "overlap".into() },
            contract::OutputColumn::Integer { name: "conversions".into(), min: 0, max: 1_000_000 },
        ],
        blob: "out.sealed".into(),
    };
    let _ = output::check(&rules, data);
});
