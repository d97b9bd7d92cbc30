//! dcr-build: reproducible, measured confidential-VM images.
//!
//! Pure libraries (bytes in, bytes out): [`recipe`] parsing, [`deb`] reading, [`kmod`]
//! resolution, [`initrd`] (cpio newc), [`uki`] (PE assembly), [`bzimage`], [`compare`], [`fstree`], [`erofs`], [`verity`], [`oci`] (layers
//! flattened), [`rootfs`].
//! The shell around them: [`fetch`] (apt-get, files), [`cargo`] (guest builds), [`image`]
//! (orchestration), [`run`] (QEMU). [`sys`] is the one module with `unsafe` (a file mapping).
#![deny(unsafe_code)]

pub mod bench;
pub mod bzimage;
pub mod cargo;
pub mod compare;
pub mod deb;
pub mod diagnose;
pub mod disk;
pub mod eif;
pub mod erofs;
pub mod export;
pub mod fetch;
pub mod fstree;
pub mod image;
pub mod initrd;
pub mod kmod;
pub mod measure;
pub mod oci;
pub mod recipe;
pub mod rootfs;
pub mod run;
pub mod sys;
pub mod uki;
pub mod verity;

/// Format an error with its cause chain on one line, skipping causes whose text the message
/// already contains.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = e.source();
    }
    msg.replace('\n', " ")
}
