//! The only module of dcr-build allowed to use `unsafe`: a read-only, pre-faulted file
//! mapping for the measurement inputs (firmware, kernel, initrd). Reading a file into fresh
//! heap memory costs one page fault per 4 KiB page (≈1.3 ms for a 2 MiB OVMF on this kind of
//! VM, more than hashing it on two cores); `MAP_POPULATE` maps the page cache in one call.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A file's bytes: mapped, or read (empty files and what cannot be mapped, e.g. pipes).
pub enum FileBytes {
    Mapped { ptr: *mut libc::c_void, len: usize },
    Read(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            // SAFETY: `ptr` is a live PROT_READ mapping of exactly `len` bytes, unmapped only
            // in Drop, so the slice cannot outlive it. The mapping is MAP_PRIVATE; if another
            // process truncated the file meanwhile, a read past the new end raises SIGBUS
            // (the process dies; no wrong value is returned).
            FileBytes::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts(*ptr as *const u8, *len)
            },
            FileBytes::Read(v) => v,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileBytes::Mapped { ptr, len } = *self {
            // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped once, here.
            unsafe {
                libc::munmap(ptr, len);
            }
        }
    }
}

/// Map `path` read-only with its pages pre-faulted; read it instead if it cannot be mapped.
pub fn read_file(path: &Path) -> io::Result<FileBytes> {
    let f = File::open(path)?;
    let meta = f.metadata()?;
    let len = usize::try_from(meta.len()).map_err(|_| io::Error::other("file too large"))?;
    if !meta.is_file() || len == 0 {
        return std::fs::read(path).map(FileBytes::Read);
    }
    // SAFETY: a fresh mapping (addr NULL) of `len` bytes of an fd open for reading, PROT_READ
    // and MAP_PRIVATE: no memory of this process is aliased or writable through it. The fd
    // may be closed after mmap returns (the mapping keeps its own reference).
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            f.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return std::fs::read(path).map(FileBytes::Read);
    }
    Ok(FileBytes::Mapped { ptr, len })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mapped_bytes_equal_read_bytes() {
        let dir = std::env::temp_dir().join(format!("dcr-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, len) in [("empty", 0usize), ("small", 3), ("pages", 3 * 4096 + 5)] {
            let p = dir.join(name);
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            std::fs::write(&p, &data).unwrap();
            assert_eq!(&*super::read_file(&p).unwrap(), &data[..], "{name}");
        }
        assert!(super::read_file(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
