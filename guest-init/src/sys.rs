//! Every system call guest-init makes that Rust's standard library does not wrap.
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `mount(2)` with no data argument.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let source = CString::new(source)?;
    let target = CString::new(target)?;
    let fstype = CString::new(fstype)?;
    // SAFETY: all three pointers come from live CStrings (NUL-terminated, valid for the call);
    // a NULL data pointer is allowed by mount(2).
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `finit_module(2)` with empty parameters and no flags.
pub fn finit_module(file: &File) -> io::Result<()> {
    let params = c"";
    // SAFETY: the fd is owned by `file`, open for the whole call; `params` is a static
    // NUL-terminated string; flags 0 asks for no special behaviour.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname for the duration of the call.
    let rc = unsafe { libc::uname(&mut uts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).map_err(|_| io::Error::other("kernel release is not UTF-8"))
}

/// Flush file systems and power the machine off. Returns only if the kernel refused.
pub fn power_off() -> io::Error {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with RB_POWER_OFF takes no pointers; as PID 1 we hold CAP_SYS_BOOT.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// Sleep forever without spinning (used only if the kernel refused to power off).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause(2) takes no arguments; it returns only after a signal handler ran.
        unsafe { libc::pause() };
    }
}
