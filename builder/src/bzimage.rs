//! The x86 Linux boot protocol header of a bzImage (Documentation/arch/x86/boot.rst).

/// Errors reading a bzImage.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    #[error("not a bzImage: {0}")]
    NotBzImage(&'static str),
    #[error("kernel version string: {0}")]
    Version(&'static str),
}

/// Offset of the setup header's `header` magic ("HdrS"), boot.rst "The real-mode kernel header".
const HDRS_OFFSET: usize = 0x202;
/// Offset of `kernel_version` (u16, pointer to the version string minus 0x200), protocol ≥ 2.00.
const KERNEL_VERSION_OFFSET: usize = 0x20e;

/// The kernel release (`uname -r`), the first word of the embedded version string.
pub fn kernel_release(image: &[u8]) -> Result<String, BzImageError> {
    let magic = image
        .get(HDRS_OFFSET..HDRS_OFFSET + 4)
        .ok_or(BzImageError::NotBzImage("shorter than the setup header"))?;
    if magic != b"HdrS" {
        return Err(BzImageError::NotBzImage("no HdrS magic at 0x202"));
    }
    let ptr = image
        .get(KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BzImageError::NotBzImage("truncated setup header"))?;
    if ptr == 0 {
        return Err(BzImageError::Version("kernel_version pointer is 0"));
    }
    let start = usize::from(ptr) + 0x200;
    let tail = image
        .get(start..)
        .ok_or(BzImageError::Version("pointer beyond the file"))?;
    let end = tail
        .iter()
        .take(256)
        .position(|&b| b == 0)
        .ok_or(BzImageError::Version("not NUL-terminated"))?;
    let text = std::str::from_utf8(&tail[..end]).map_err(|_| BzImageError::Version("not UTF-8"))?;
    let release = text
        .split_whitespace()
        .next()
        .ok_or(BzImageError::Version("empty"))?;
    Ok(release.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_release() {
        let mut img = vec![0u8; 0x400];
        img[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        img[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2]
            .copy_from_slice(&0x100u16.to_le_bytes());
        let s = b"6.12.95+deb12-cloud-amd64 (debian) #1 SMP\0";
        img[0x300..0x300 + s.len()].copy_from_slice(s);
        assert_eq!(kernel_release(&img).unwrap(), "6.12.95+deb12-cloud-amd64");
    }

    #[test]
    fn rejects_non_kernel() {
        assert!(kernel_release(b"hello").is_err());
        assert!(kernel_release(&[0u8; 0x300]).is_err());
    }
}
