//! SEV-SNP report decoder and the whole verification path with arbitrary report bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dcr_verify::snp::Report::parse(data);
    let _ = dcr_verify::snp::verify(data, data, None, 0, &Default::default());
    let _ = dcr_verify::snp::pem_certs(data);
});
