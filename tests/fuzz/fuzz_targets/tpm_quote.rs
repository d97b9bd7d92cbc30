//! TPMS_ATTEST, TPMT_SIGNATURE, PCR files and PCR lists.
#![no_main]
use dcr_verify::tpm;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(a) = tpm::parse_attest(data) {
        let _ = tpm::parse_pcrs(data, &a.selection);
    }
    let _ = tpm::parse_signature(data, tpm::TPM_ALG_SHA256);
    let _ = tpm::parse_pcrs(data, &vec![(tpm::TPM_ALG_SHA256, vec![0, 1, 2])]);
    let _ = tpm::parse_ak(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tpm::parse_pcr_list(s);
    }
});
