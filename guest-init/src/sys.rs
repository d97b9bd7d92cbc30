//! Every system call guest-init makes that Rust's standard library does not wrap.
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `mount(2)` with no data argument.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    mount_data(source, target, fstype, flags, "")
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

/// Flush file systems and restart: how a Nitro enclave ends. It has no ACPI, so a power-off
/// would only halt the kernel and leave the enclave running until the parent's
/// `nitro-cli terminate-enclave`. AWS's own enclave init ends with `reboot(RB_AUTOBOOT)`,
/// which ends an enclave on Nitro (AWS's behaviour, untested here); QEMU's nitro-enclave
/// machine ends on it under `-no-reboot` (reproducible/nitro-enclave.sh).
/// Returns only if the kernel refused.
pub fn restart() -> io::Error {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with RB_AUTOBOOT takes no pointers; as PID 1 we hold CAP_SYS_BOOT.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// Sleep forever without spinning (used only if the kernel refused to power off).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause(2) takes no arguments; it returns only after a signal handler ran.
        unsafe { libc::pause() };
    }
}

/// `mount(2)` with a data string (e.g. tmpfs options).
pub fn mount_data(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let source = CString::new(source)?;
    let target = CString::new(target)?;
    let fstype = CString::new(fstype)?;
    let data = CString::new(data)?;
    // SAFETY: all four pointers come from live CStrings, valid for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A NETLINK_ROUTE socket as a File (read/write talk to the kernel).
pub fn netlink_route_socket() -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own exclusively; File takes over closing it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Resource limits and identity of a workload process.
pub struct Confinement {
    pub uid: u32,
    pub gid: u32,
    pub memory_bytes: u64,
    pub cpu_secs: u64,
    /// RLIMIT_FSIZE: 0 (no file writes) for native workloads; an oci workload's private
    /// /tmp size.
    pub fsize_bytes: u64,
    /// An oci workload's root and working directory inside it: the child gets its own mount
    /// namespace, chroot(2)s into the root and chdir(2)s to the directory (before giving up
    /// root, so before setuid).
    pub root: Option<(CString, CString)>,
}

/// Spawn `cmd` confined: its own process group, a fresh network namespace (no interfaces
/// but a down loopback: no network), RLIMIT_AS / RLIMIT_CPU, RLIMIT_FSIZE 0 (no file writes;
/// output goes to the stdout pipe), RLIMIT_NOFILE 64, RLIMIT_NPROC 64, no supplementary
/// groups, the given gid/uid, PR_SET_NO_NEW_PRIVS, and the seccomp filter
/// of [`crate::seccomp`].
pub fn spawn_confined(
    cmd: &mut std::process::Command,
    c: &Confinement,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let (uid, gid, mem, cpu, fsize) = (c.uid, c.gid, c.memory_bytes, c.cpu_secs, c.fsize_bytes);
    let root = c.root.clone();
    let mut filter = crate::seccomp::filter();
    cmd.process_group(0);
    let confine = move || -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // setrlimit's resource type differs between musl (c_int) and glibc (u32): a macro.
        macro_rules! limit {
            ($res:expr, $v:expr) => {{
                let r = libc::rlimit {
                    rlim_cur: $v,
                    rlim_max: $v,
                };
                // SAFETY: `r` is a valid rlimit on the stack for the duration of the call.
                check(unsafe { libc::setrlimit($res, &r) })
            }};
        }
        let ns = if root.is_some() {
            libc::CLONE_NEWNET | libc::CLONE_NEWNS
        } else {
            libc::CLONE_NEWNET
        };
        // SAFETY: unshare(2) takes no pointers; async-signal-safe, in the child before exec.
        check(unsafe { libc::unshare(ns) })?;
        if let Some((dir, cwd)) = &root {
            // SAFETY: chroot(2) and chdir(2) read NUL-terminated paths from CStrings built
            // before fork and alive for the whole closure; no allocation here.
            check(unsafe { libc::chroot(dir.as_ptr()) })?;
            // SAFETY: as above.
            check(unsafe { libc::chdir(cwd.as_ptr()) })?;
        }
        limit!(libc::RLIMIT_AS, mem)?;
        limit!(libc::RLIMIT_CPU, cpu)?;
        limit!(libc::RLIMIT_FSIZE, fsize)?;
        limit!(libc::RLIMIT_NOFILE, 64)?;
        limit!(libc::RLIMIT_NPROC, 64)?;
        // SAFETY: setgroups(2) with size 0 never reads the (null) list.
        check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
        // SAFETY: setgid(2) takes no pointers.
        check(unsafe { libc::setgid(gid) })?;
        // SAFETY: setuid(2) takes no pointers.
        check(unsafe { libc::setuid(uid) })?;
        // SAFETY: prctl(2) PR_SET_NO_NEW_PRIVS takes integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        install_workload_filter(&mut filter)
    };
    // SAFETY: the closure only makes async-signal-safe system calls (no allocation, no locks)
    // between fork and exec, as pre_exec requires.
    unsafe { cmd.pre_exec(confine) };
    cmd.spawn()
}

/// `mknod(2)` of a character device.
pub fn mknod_char(path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    mknod(path, libc::S_IFCHR | perm, major, minor)
}

/// `mknod(2)` of a block device.
pub fn mknod_block(path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    mknod(path, libc::S_IFBLK | perm, major, minor)
}

fn mknod(path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = CString::new(path)?;
    // SAFETY: `p` is a live NUL-terminated path for the duration of the call; makedev only
    // combines integers.
    let rc = unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// Device-mapper (include/uapi/linux/dm-ioctl.h): every command is
// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)` on /dev/mapper/control; a table is loaded into an
// inactive slot and swapped in by a resume (DM_DEV_SUSPEND without DM_SUSPEND_FLAG).

/// `struct dm_ioctl` (312 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);

/// `struct dm_target_spec` (40 bytes); the target's parameter string follows it.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

/// An ioctl buffer: the header, one target spec and its parameters (8-byte aligned).
#[repr(C, align(8))]
struct DmBuffer {
    hdr: DmIoctl,
    spec: DmTargetSpec,
    params: [u8; 1024],
}

const DM_IOCTL: u32 = 0xfd;
const DM_DEV_CREATE_CMD: u32 = 3;
const DM_DEV_SUSPEND_CMD: u32 = 6;
const DM_TABLE_LOAD_CMD: u32 = 9;
const DM_DEV_REMOVE_CMD: u32 = 4;
const DM_READONLY_FLAG: u32 = 1;

const fn dm_cmd(nr: u32) -> u32 {
    (3 << 30) | ((std::mem::size_of::<DmIoctl>() as u32) << 16) | (DM_IOCTL << 8) | nr
}

fn dm_call(ctl: &File, nr: u32, buf: &mut DmBuffer) -> io::Result<()> {
    // SAFETY: `buf` is a live, writable, 8-aligned DmBuffer whose header says (data_size)
    // how many of its bytes the kernel may read and write; the fd is /dev/mapper/control,
    // open for the call.
    let rc = unsafe {
        libc::ioctl(
            ctl.as_raw_fd(),
            dm_cmd(nr) as libc::Ioctl,
            buf as *mut DmBuffer,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn dm_buffer(name: &str) -> io::Result<Box<DmBuffer>> {
    if name.is_empty() || name.len() >= 128 || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad device-mapper name",
        ));
    }
    let mut hdr = DmIoctl {
        // The interface version this code speaks (4.0.0; the kernel accepts any 4.x ≤ its own).
        version: [4, 0, 0],
        data_size: std::mem::size_of::<DmIoctl>() as u32,
        data_start: std::mem::size_of::<DmIoctl>() as u32,
        target_count: 0,
        open_count: 0,
        flags: 0,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    hdr.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(Box::new(DmBuffer {
        hdr,
        spec: DmTargetSpec {
            sector_start: 0,
            length: 0,
            status: 0,
            next: 0,
            target_type: [0; 16],
        },
        params: [0; 1024],
    }))
}

/// Create the device-mapper device `name` with one read-only target (`target` over
/// `sectors` 512-byte sectors, `params` its table parameters) and activate it; returns the
/// device's minor number (`/dev/dm-<minor>`). A device left half-made is removed.
pub fn dm_create(name: &str, target: &str, sectors: u64, params: &str) -> io::Result<u32> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    if target.len() >= 16 || params.len() >= 1024 || params.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device-mapper target too long",
        ));
    }
    let mut b = dm_buffer(name)?;
    dm_call(&ctl, DM_DEV_CREATE_CMD, &mut b)?;
    let dev = b.hdr.dev;
    let loaded = (|| {
        let mut b = dm_buffer(name)?;
        b.hdr.flags = DM_READONLY_FLAG;
        b.hdr.target_count = 1;
        let padded = (params.len() + 1).div_ceil(8) * 8;
        b.hdr.data_size =
            (std::mem::size_of::<DmIoctl>() + std::mem::size_of::<DmTargetSpec>() + padded) as u32;
        b.spec.sector_start = 0;
        b.spec.length = sectors;
        b.spec.next = (std::mem::size_of::<DmTargetSpec>() + padded) as u32;
        b.spec.target_type[..target.len()].copy_from_slice(target.as_bytes());
        b.params[..params.len()].copy_from_slice(params.as_bytes());
        dm_call(&ctl, DM_TABLE_LOAD_CMD, &mut b)?;
        let mut b = dm_buffer(name)?;
        dm_call(&ctl, DM_DEV_SUSPEND_CMD, &mut b)
    })();
    if let Err(e) = loaded {
        if let Ok(mut b) = dm_buffer(name) {
            let _ = dm_call(&ctl, DM_DEV_REMOVE_CMD, &mut b);
        }
        return Err(e);
    }
    // new_encode_dev (include/linux/kdev_t.h): minor = low 8 bits | bits 20.. shifted down.
    Ok(((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32)
}

const DM_TABLE_STATUS_CMD: u32 = 12;

/// The status line of device-mapper device `name`'s (one) target (DM_TABLE_STATUS): for
/// verity `V` (every block read so far verified) or `C` (a corrupt block was seen).
pub fn dm_status(name: &str) -> io::Result<String> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    let mut b = dm_buffer(name)?;
    b.hdr.data_size = std::mem::size_of::<DmBuffer>() as u32;
    dm_call(&ctl, DM_TABLE_STATUS_CMD, &mut b)?;
    if b.hdr.target_count != 1 {
        return Err(io::Error::other(format!("{} targets", b.hdr.target_count)));
    }
    // The kernel wrote one dm_target_spec at data_start, its status string after it.
    if b.hdr.data_start as usize != std::mem::size_of::<DmIoctl>() {
        return Err(io::Error::other("unexpected data_start"));
    }
    let end = b
        .params
        .iter()
        .position(|c| *c == 0)
        .unwrap_or(b.params.len());
    Ok(String::from_utf8_lossy(&b.params[..end]).into_owned())
}

/// SIGKILL a whole process group.
pub fn kill_group(pgid: u32) {
    // SAFETY: kill(2) takes no pointers; a negative pid names the process group.
    unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
}

/// SIGKILL every process running as `uid` — also those that left the workload's process
/// group with setsid(2)/setpgid(2): a forked helper takes that uid and kills all it may
/// signal (kill(-1)), then exits; the caller waits for it. Each workload has a uid of its own.
pub fn kill_uid(uid: u32) -> io::Result<()> {
    // SAFETY: fork(2) takes no pointers. The child only makes async-signal-safe system calls
    // (setgid, setuid, kill, _exit) and never returns into Rust code, as fork in a
    // multi-threaded process requires.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; integer arguments only.
        unsafe {
            if libc::setgid(uid) == 0 && libc::setuid(uid) == 0 {
                libc::kill(-1, libc::SIGKILL);
                libc::_exit(0);
            }
            libc::_exit(1);
        }
    }
    let mut status = 0;
    // SAFETY: waitpid(2) writes the status into `status`, a live local.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "the kill helper could not take the workload's uid",
        ))
    }
}

/// Reap every exited child (PID 1 inherits a killed workload's orphans).
pub fn reap_children() {
    let mut status = 0;
    // SAFETY: waitpid(-1, …, WNOHANG) writes into a live local and never blocks.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Set the console log level (the first field of /proc/sys/kernel/printk): 1 keeps all but
/// KERN_EMERG messages off the operator's console, where a workload could otherwise steer
/// text (an OOM kill's process name, a fault's address).
pub fn quiet_console() -> io::Result<()> {
    std::fs::write("/proc/sys/kernel/printk", b"1")
}

/// SO_BINDTODEVICE: send and receive only through `ifname` (DHCP before the interface has an
/// address or a route).
pub fn bind_to_device(sock: &std::net::UdpSocket, ifname: &str) -> io::Result<()> {
    let name = CString::new(ifname)?;
    let bytes = name.as_bytes_with_nul();
    // SAFETY: the fd is owned by `sock` and open for the call; the option value points at
    // `bytes` (a NUL-terminated interface name) with its exact length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `NSM_IOCTL_RAW` = `_IOWR(0x0A, 0, struct nsm_raw)` (include/uapi/linux/nsm.h).
pub const NSM_IOCTL_RAW: u32 =
    (3 << 30) | ((std::mem::size_of::<NsmRaw>() as u32) << 16) | (0x0a << 8);

/// `struct nsm_iovec` (include/uapi/linux/nsm.h).
#[repr(C)]
struct NsmIovec {
    addr: u64,
    len: u64,
}

/// `struct nsm_raw`: the request in, the response out (the driver sets `response.len`).
#[repr(C)]
struct NsmRaw {
    request: NsmIovec,
    response: NsmIovec,
}
const _: () = assert!(std::mem::size_of::<NsmRaw>() == 32);

/// One NSM request/response through `/dev/nsm`; returns the response length.
pub fn nsm_raw(dev: &File, request: &[u8], response: &mut [u8]) -> io::Result<usize> {
    let mut raw = NsmRaw {
        request: NsmIovec {
            addr: request.as_ptr() as u64,
            len: request.len() as u64,
        },
        response: NsmIovec {
            addr: response.as_mut_ptr() as u64,
            len: response.len() as u64,
        },
    };
    // SAFETY: `raw` is a valid nsm_raw on the stack for the whole call; its request iovec
    // points at `request` (readable, len bytes) and its response iovec at `response`
    // (writable, len bytes), both borrowed for the duration of the call; the driver writes
    // at most response.len bytes and updates only `raw.response.len`.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            NSM_IOCTL_RAW as libc::Ioctl,
            &mut raw as *mut NsmRaw,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((raw.response.len as usize).min(response.len()))
}

/// Install a seccomp filter ([`crate::seccomp::filter`]) on the calling thread (after
/// PR_SET_NO_NEW_PRIVS, which an unprivileged caller needs). Async-signal-safe: no
/// allocation (for `pre_exec`).
pub fn install_workload_filter(filter: &mut [libc::sock_filter]) -> io::Result<()> {
    if cfg!(not(target_arch = "x86_64")) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the workload seccomp filter is written for x86_64 only",
        ));
    }
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog): `prog` points at `filter`,
    // borrowed for the whole call; the kernel copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;

    /// Run python3 with the filter installed (and no_new_privs, as in a workload).
    fn filtered_python(code: &str) -> std::process::Output {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", code]);
        let mut filter = crate::seccomp::filter();
        // SAFETY: prctl with integer arguments and install_workload_filter are
        // async-signal-safe (no allocation, no locks) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                install_workload_filter(&mut filter)
            })
        };
        cmd.output().expect("python3 (Debian's python3 package)")
    }

    #[test]
    fn the_workload_filter_refuses_vsock_and_io_uring_and_allows_the_rest() {
        // The real kernel runs the filter: a vsock socket is EACCES (13); io_uring_setup
        // (425) is EACCES; clone3 (435) is ENOSYS (38); an IPv4 socket, a Unix socket pair,
        // files, threads and fork still work.
        let o = filtered_python(
            "import socket, ctypes, os, threading\n\
             try:\n    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); print('vsock open')\n\
             except OSError as e: print('vsock', e.errno)\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             r = libc.syscall(425, 1, ctypes.create_string_buffer(120)); print('io_uring', r, ctypes.get_errno())\n\
             r = libc.syscall(435, ctypes.create_string_buffer(88), 88); print('clone3', r, ctypes.get_errno())\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); print('inet ok'); s.close()\n\
             a, b = socket.socketpair(); print('pair ok')\n\
             print('file', len(open('/proc/self/status').read()) > 0)\n\
             t = threading.Thread(target=lambda: None); t.start(); t.join(); print('thread ok')\n\
             pid = os.fork()\n\
             if pid == 0: os._exit(7)\n\
             print('fork', os.waitpid(pid, 0)[1] >> 8)\n",
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("vsock 13\n"), "{out}");
        assert!(out.contains("io_uring -1 13\n"), "{out}");
        assert!(out.contains("clone3 -1 38\n"), "{out}");
        assert!(
            out.contains("inet ok\npair ok\nfile True\nthread ok\nfork 7\n"),
            "{out}"
        );
        // (Without the filter these fail differently, if at all: EAFNOSUPPORT 97 where the
        // host has no vsock, EPERM 1 where io_uring is disabled; 13 is the filter's.)
    }

    #[test]
    fn each_denied_call_kills_the_process() {
        // One filtered process per denied call (all zero arguments: the filter acts on the
        // number, before the kernel looks at arguments): each must die of SIGSYS (31) before
        // printing. clone with CLONE_NEWUSER too; a plain fork above survives.
        let mut calls: Vec<(i64, String, &str)> = crate::seccomp::DENIED
            .iter()
            .map(|&(nr, name)| (nr, format!("libc.syscall({nr}, 0, 0, 0, 0, 0, 0)"), name))
            .collect();
        calls.push((
            libc::SYS_clone,
            format!(
                "libc.syscall({}, {}, 0, 0, 0, 0)",
                libc::SYS_clone,
                libc::CLONE_NEWUSER | libc::SIGCHLD
            ),
            "clone(CLONE_NEWUSER)",
        ));
        for (_, call, name) in calls {
            let o = filtered_python(&format!(
                "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint('start', flush=True)\n{call}\nprint('survived', flush=True)\n"
            ));
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains("start"), "{name}: python did not start: {out}");
            assert_eq!(o.status.signal(), Some(libc::SIGSYS), "{name}: {out}");
            assert!(!out.contains("survived"), "{name}");
        }
    }
}
