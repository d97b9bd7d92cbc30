//! The output directory: created and probed before any work, files replaced atomically
//! (temporary name, then rename), disk images written sparse.

use std::path::Path;

use super::ImageError;

pub(super) fn out_err(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Make sure the output directory exists and is writable, before any work is done.
pub(super) fn prepare_out(out: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(out).map_err(out_err(out))?;
    let probe = out.join(".dcr-write-test");
    std::fs::write(&probe, b"").map_err(out_err(out))?;
    std::fs::remove_file(&probe).map_err(out_err(out))?;
    Ok(())
}

/// Write a file atomically (temporary name, then rename).
pub(super) fn atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(out_err(dir))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(out_err(dir))?;
    Ok(())
}

/// Write `bytes ‖ tail` atomically, leaving holes for all-zero 64 KiB blocks (a disk image
/// is mostly empty FAT clusters).
pub(super) fn sparse(dir: &Path, name: &str, bytes: &[u8], tail: &[u8]) -> Result<(), ImageError> {
    use std::io::{Seek, SeekFrom, Write};
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |r: std::io::Result<()>| r.map_err(out_err(dir));
    let mut f = std::fs::File::create(&tmp).map_err(out_err(dir))?;
    for block in bytes.chunks(64 << 10) {
        if block.iter().all(|b| *b == 0) {
            io(f.seek(SeekFrom::Current(block.len() as i64)).map(|_| ()))?;
        } else {
            io(f.write_all(block))?;
        }
    }
    io(f.write_all(tail))?;
    io(f.set_len((bytes.len() + tail.len()) as u64))?;
    io(f.sync_all())?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).map_err(out_err(dir))?;
    Ok(())
}
