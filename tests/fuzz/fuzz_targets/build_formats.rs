//! What dcr-build reads from outside: recipes, .deb files, cpio archives, PE images, bzImage
//! headers, kernel modules and disk images.
#![no_main]
use std::path::Path;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dcr_build::recipe::parse(text, Path::new("fuzz.toml"));
        let _ = dcr_build::recipe::validate_cmdline(text);
    }
    let _ = dcr_build::deb::control(data);
    let _ = dcr_build::initrd::list(data);
    let _ = dcr_build::uki::sections(data);
    let _ = dcr_build::uki::sections_in_memory(data);
    let _ = dcr_build::bzimage::kernel_release(data);
    let _ = dcr_build::kmod::modinfo("fuzz.ko", data);
    let _ = dcr_build::measure::tpm_prediction(data);
    let _ = dcr_build::disk::inspect(data);
});
