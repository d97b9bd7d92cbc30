//! The workloads' seccomp filter: classic BPF over `struct seccomp_data` (linux/seccomp.h:
//! `int nr` at offset 0, `__u32 arch` at 4, `__u64 args[6]` from 16; little-endian, so the
//! low 32 bits of args[0] are at 16). Built here (pure), installed by `sys`.
//!
//! - Default allow, with a deny list of what a batch job never needs (after Docker's default
//!   profile, moby/profiles `seccomp/default.json`, but killing instead of failing): tracing
//!   and other processes' memory, mounts and namespaces, modules and kexec, BPF and perf,
//!   the kernel keyring, clocks, swap, reboot, quotas, raw I/O ports, the kernel log,
//!   userfaultfd, file handles, host and domain names (not personality(2), whose query forms
//!   runtimes use). A call on the list kills the whole
//!   process (`SECCOMP_RET_KILL_PROCESS`): guest-init sees SIGSYS and powers off naming the
//!   call (the kernel's audit line in /dev/kmsg carries its number).
//! - clone(2) with any namespace flag is killed like unshare(2); clone3(2), whose flags are
//!   in memory the filter cannot read, gets ENOSYS (C libraries then fall back to clone).
//! - A network namespace keeps a workload off the guest's IP network, but AF_VSOCK is not
//!   namespaced: socket(AF_VSOCK) gets EACCES, and so does io_uring as a whole (its
//!   IORING_OP_SOCKET would create sockets the socket(2) check never sees).
//! - Another architecture, or x32-ABI numbers (bit 30), kill the process.

/// AUDIT_ARCH_X86_64 (linux/audit.h): EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// __X32_SYSCALL_BIT (asm/unistd.h).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0: u32 = 16;

/// Namespace flags of clone(2) (linux/sched.h): NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET.
pub const CLONE_NAMESPACES: u32 = 0x80
    | 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000;

/// The system calls that kill a workload, with their x86_64 names.
pub const DENIED: [(i64, &str); 48] = [
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_sethostname, "sethostname"),
    (libc::SYS_setdomainname, "setdomainname"),
    (libc::SYS_uselib, "uselib"),
];

/// io_uring's calls (EACCES).
const IO_URING: [i64; 3] = [
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Why the workload process `pid` (running as `uid`) died of SIGSYS, from the kernel log's
/// audit lines. Only a kill of that very process counts: a SIGSYS it sent itself after a child
/// was killed names nothing.
pub fn reason(kernel_log: &str, uid: u32, pid: u32) -> String {
    match killed_syscall(kernel_log.lines(), uid, pid) {
        Some(nr) => format!(
            "{} ({nr}) is denied to workloads",
            denied_name(nr).unwrap_or("a system call")
        ),
        None => "a denied system call (the kernel log does not name it)".to_string(),
    }
}

/// The name of a denied system call (or of clone with namespace flags).
pub fn denied_name(nr: i64) -> Option<&'static str> {
    if nr == libc::SYS_clone {
        return Some("clone (with namespace flags)");
    }
    DENIED.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s)
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Where a jump goes: the next instruction or one of the labelled instructions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    Next,
    Allow,
    Errno,
    Enosys,
    Kill,
    Socket,
    Clone,
}

/// The filter. Every jump is forward (as BPF requires) and fits a u8; the program ends
/// with the socket check, the clone check and the four returns.
pub fn filter() -> Vec<libc::sock_filter> {
    // (code, k, jt, jf) with symbolic targets, resolved below.
    let mut p: Vec<(u16, u32, To, To)> = vec![
        (LD_W_ABS, DATA_ARCH, To::Next, To::Next),
        (JEQ_K, AUDIT_ARCH_X86_64, To::Next, To::Kill),
        (LD_W_ABS, DATA_NR, To::Next, To::Next),
        (JGE_K, X32_SYSCALL_BIT, To::Kill, To::Next),
    ];
    for (nr, _) in DENIED {
        p.push((JEQ_K, nr as u32, To::Kill, To::Next));
    }
    for nr in IO_URING {
        p.push((JEQ_K, nr as u32, To::Errno, To::Next));
    }
    p.push((JEQ_K, libc::SYS_clone3 as u32, To::Enosys, To::Next));
    p.push((JEQ_K, libc::SYS_clone as u32, To::Clone, To::Next));
    p.push((JEQ_K, libc::SYS_socket as u32, To::Socket, To::Allow));
    let socket = p.len();
    p.push((LD_W_ABS, DATA_ARG0, To::Next, To::Next));
    p.push((JEQ_K, libc::AF_VSOCK as u32, To::Errno, To::Allow));
    let clone = p.len();
    p.push((LD_W_ABS, DATA_ARG0, To::Next, To::Next));
    p.push((JSET_K, CLONE_NAMESPACES, To::Kill, To::Allow));
    let allow = p.len();
    let errno = allow + 1;
    let enosys = allow + 2;
    let kill = allow + 3;
    let at = |t: To, i: usize| -> u8 {
        let target = match t {
            To::Next => i + 1,
            To::Allow => allow,
            To::Errno => errno,
            To::Enosys => enosys,
            To::Kill => kill,
            To::Socket => socket,
            To::Clone => clone,
        };
        u8::try_from(target - (i + 1)).expect("a forward jump under 256")
    };
    let mut out: Vec<libc::sock_filter> = p
        .iter()
        .enumerate()
        .map(|(i, &(code, k, jt, jf))| libc::sock_filter {
            code,
            jt: at(jt, i),
            jf: at(jf, i),
            k,
        })
        .collect();
    for k in [
        libc::SECCOMP_RET_ALLOW,
        libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        libc::SECCOMP_RET_KILL_PROCESS,
    ] {
        out.push(libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k,
        });
    }
    out
}

/// The system call number of the newest seccomp kill of process `pid` running as `uid` in
/// the kernel log lines (`audit: type=1326 … uid=<uid> … pid=<pid> … syscall=<nr> …`).
pub fn killed_syscall<'a>(lines: impl Iterator<Item = &'a str>, uid: u32, pid: u32) -> Option<i64> {
    let (want_uid, want_pid) = (format!(" uid={uid} "), format!(" pid={pid} "));
    let mut found = None;
    for l in lines {
        if l.contains("type=1326") && l.contains(&want_uid) && l.contains(&want_pid) {
            found = l
                .split(' ')
                .find_map(|w| w.strip_prefix("syscall="))
                .and_then(|n| n.parse().ok());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_stay_inside_and_end_on_returns() {
        let f = filter();
        let n = f.len();
        for (i, ins) in f.iter().enumerate() {
            if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
                for off in [ins.jt, ins.jf] {
                    assert!(i + 1 + (off as usize) < n, "instruction {i}");
                }
            }
        }
        assert!(f[n - 4..].iter().all(|i| i.code == RET_K));
        assert_eq!(f[n - 1].k, libc::SECCOMP_RET_KILL_PROCESS);
        // Every denied call jumps to the kill return.
        for (nr, name) in DENIED {
            let i = f
                .iter()
                .position(|x| x.code == JEQ_K && x.k == nr as u32)
                .unwrap_or_else(|| panic!("{name} not in the filter"));
            assert_eq!(i + 1 + f[i].jt as usize, n - 1, "{name}");
        }
    }

    #[test]
    fn the_audit_line_names_the_call() {
        let log = "6,1,2,-;audit: type=1326 audit(1.2:3): auid=4294967295 uid=61000 gid=61000 ses=4294967295 pid=77 comm=\"x\" exe=\"/x\" sig=31 arch=c000003e syscall=101 compat=0 ip=0x1 code=0x80000000";
        assert_eq!(killed_syscall(log.lines(), 61000, 77), Some(101));
        assert_eq!(killed_syscall(log.lines(), 61001, 77), None);
        assert_eq!(killed_syscall(log.lines(), 61000, 78), None);
        assert_eq!(denied_name(101), Some("ptrace"));
    }
}
