//! AWS Nitro Enclaves PCRs of an Enclave Image File, as the Nitro hypervisor measures it at
//! launch and the NSM reports it (aws-nitro-enclaves-image-format 0.8.1, `EifBuilder::measure`
//! and `get_pcrs`; `EifHasher::tpm_extend_finalize_reset`).
//!
//! Each PCR starts at 48 zero bytes and is extended once with the SHA-384 of a concatenation
//! of section *contents* (headers, metadata and signature sections do not count):
//! `PCR = SHA-384(0^48 ‖ SHA-384(data))`.
//! - PCR 0 (the whole image): kernel ‖ cmdline ‖ every ramdisk, in order;
//! - PCR 1 (the boot part): kernel ‖ cmdline ‖ ramdisk 0;
//! - PCR 2 (the application): ramdisk 1 ‖ ramdisk 2 ‖ …;
//! - PCR 8 (signed images only): the DER of the signing certificate.
//!
//! The command line counts without a terminating NUL.

use sha2::{Digest, Sha384};

/// The predicted PCRs of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NitroPcrs {
    pub pcr0: [u8; 48],
    pub pcr1: [u8; 48],
    pub pcr2: [u8; 48],
    pub pcr8: Option<[u8; 48]>,
}

/// `SHA-384(0^48 ‖ SHA-384(parts…))`: one extend of a zeroed PCR with the digest of the
/// concatenation.
pub fn extend_once<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 48] {
    let mut h = Sha384::new();
    for p in parts {
        h.update(p);
    }
    let mut pcr = Sha384::new();
    pcr.update([0u8; 48]);
    pcr.update(h.finalize());
    pcr.finalize().into()
}

/// The PCRs of an image made of `kernel`, `cmdline` (no NUL) and `ramdisks`, signed with
/// `signing_cert_der` when given.
pub fn pcrs(
    kernel: &[u8],
    cmdline: &[u8],
    ramdisks: &[&[u8]],
    signing_cert_der: Option<&[u8]>,
) -> NitroPcrs {
    // PCR 1's data is a prefix of PCR 0's: hash it once and fork the state.
    let mut boot = Sha384::new();
    boot.update(kernel);
    boot.update(cmdline);
    if let Some(r0) = ramdisks.first() {
        boot.update(r0);
    }
    let mut image = boot.clone();
    let mut app = Sha384::new();
    for r in ramdisks.iter().skip(1) {
        image.update(r);
        app.update(r);
    }
    NitroPcrs {
        pcr0: extend(image),
        pcr1: extend(boot),
        pcr2: extend(app),
        pcr8: signing_cert_der.map(|c| extend_once([c])),
    }
}

/// `SHA-384(0^48 ‖ h.finalize())`.
fn extend(h: Sha384) -> [u8; 48] {
    let mut pcr = Sha384::new();
    pcr.update([0u8; 48]);
    pcr.update(h.finalize());
    pcr.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_follows_the_sections() {
        let p = pcrs(b"K", b"C", &[b"R0", b"R1", b"R2"], None);
        assert_eq!(p.pcr0, extend_once([&b"KCR0R1R2"[..]]));
        assert_eq!(p.pcr1, extend_once([&b"KCR0"[..]]));
        assert_eq!(p.pcr2, extend_once([&b"R1R2"[..]]));
        assert_eq!(p.pcr8, None);
        // No application ramdisk: PCR 2 is the extend of the empty string's digest, not zero.
        let q = pcrs(b"K", b"C", &[b"R0"], Some(b"cert"));
        assert_eq!(q.pcr2, extend_once([]));
        assert_ne!(q.pcr2, [0; 48]);
        assert_eq!(q.pcr8, Some(extend_once([&b"cert"[..]])));
    }
}
