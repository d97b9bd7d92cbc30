//! Azure HCL reports, runtime claims and Trustee evidence JSON.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dcr_attest::azure::parse_hcl(data);
    let _ = dcr_attest::azure::hcl_ak_pub(data);
    if let Ok(ev) = dcr_attest::azure::parse_snp_evidence(data) {
        let _ = dcr_attest::azure::verify_snp(&ev, b"n", 0, &Default::default(), &Vec::new());
    }
    if let Ok(ev) = dcr_attest::azure::parse_tdx_evidence(data) {
        let _ = dcr_attest::azure::verify_tdx(&ev, b"n", 0, None, &Default::default(), &Vec::new());
    }
    let _ = dcr_attest::reference::Measurements::from_json(data);
});
