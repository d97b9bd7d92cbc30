//! Azure HCL reports, runtime claims and Trustee evidence JSON.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dcr_verify::azure::parse_hcl(data);
    let _ = dcr_verify::azure::hcl_ak_pub(data);
    if let Ok(ev) = dcr_verify::azure::parse_snp_evidence(data) {
        let _ = dcr_verify::azure::verify_snp(&ev, b"n", 0, &Default::default(), &Vec::new());
    }
    if let Ok(ev) = dcr_verify::azure::parse_tdx_evidence(data) {
        let _ = dcr_verify::azure::verify_tdx(&ev, b"n", 0, None, &Default::default(), &Vec::new());
    }
    let _ = dcr_protocol::measurements::Measurements::from_json(data);
});
