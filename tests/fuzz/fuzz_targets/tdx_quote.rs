//! TDX quote + collateral: split the input into a quote and a collateral document.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cut = data.first().map(|&b| b as usize).unwrap_or(0).min(data.len());
    let (q, c) = data.split_at(cut);
    let _ = dcr_verify::tdx::verify(q, c, 0, &Default::default());
});
