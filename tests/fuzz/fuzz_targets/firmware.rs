//! OVMF footer tables, SEV metadata and TDVF metadata; the predictions that use them.
#![no_main]
use dcr_measure::{ovmf::Ovmf, snp, tdx};
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut page = data.to_vec();
    page.resize(page.len().div_ceil(4096).max(1) * 4096, 0);
    if let Ok(fw) = Ovmf::parse(&page) {
        let _ = tdx::tdvf_sections(&fw);
        let _ = tdx::mrtd(&fw, tdx::PageOrder::SinglePass);
        let shape = snp::SnpShape { vcpus: 2, vcpu_sig: 0, guest_features: 1, vmm: snp::VmmType::Qemu };
        let h = snp::SevHashes::new(b"k", None, None);
        let _ = snp::snp_launch_digest(&fw, None, Some(&h), &shape);
        let _ = snp::seves_launch_digest(&fw, None, &shape);
    }
});
