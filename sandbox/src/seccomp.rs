//! The seccomp filter, written as classic BPF by hand.
//!
//! It is the last thing installed before `execve` (after every capability is
//! dropped and `no_new_privs` is set) and never kills: a refused call fails
//! with an errno, so a build that probes for a feature degrades the way it
//! would on a kernel without it.
//!
//! | refused | errno | why |
//! |---|---|---|
//! | `chmod`, `fchmod`, `fchmodat`, `fchmodat2` with S_ISUID or S_ISGID | EPERM | outputs must never carry setuid/setgid bits (Nix does the same) |
//! | `open`, `openat`, `creat` creating a file with S_ISUID or S_ISGID | EPERM | the same bits, set at creation |
//! | `mknod`, `mknodat` with S_ISUID or S_ISGID | EPERM | the same bits, on a regular file made by `mknod` |
//! | `socket`, `socketpair` of a family other than AF_UNIX, AF_INET, AF_INET6, AF_NETLINK | EAFNOSUPPORT | an allowlist: vsock, packet, Bluetooth, AF_ALG… reach host or kernel parts a build never needs; the errno is the one a kernel without the family gives |
//! | `socket` AF_NETLINK other than NETLINK_ROUTE | EPROTONOSUPPORT | route is what `getaddrinfo` and `ip` use; audit, uevents, sock_diag, netfilter… are host business |
//! | `setxattr`, `lsetxattr`, `fsetxattr` | ENOTSUP | extended attributes, ACLs and file capabilities are not part of an output; tools fall back as on a filesystem without xattrs |
//! | `mount`, `umount2`, `pivot_root`, `chroot`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`, `mount_setattr` | EPERM | the filesystem view is fixed by the sandbox |
//! | `unshare`, `clone` with CLONE_NEWUSER; `setns` | EPERM | a nested user namespace would hand the build a fresh set of capabilities |
//! | `clone3` | ENOSYS | its flags sit behind a pointer seccomp cannot read; libc falls back to `clone` |
//! | `openat2` | ENOSYS | its mode sits behind a pointer; libc falls back to `openat` |
//! | `ptrace`, `process_vm_readv`, `process_vm_writev`, `pidfd_getfd`, `process_madvise` | EPERM | no process may inspect or alter another |
//! | `keyctl`, `add_key`, `request_key` | EPERM | the kernel keyring is not namespaced |
//! | `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_setup`, `io_uring_enter`, `io_uring_register` | EPERM | large kernel attack surface a build never needs |
//! | `kexec_load`, `kexec_file_load`, `init_module`, `finit_module`, `delete_module`, `reboot`, `swapon`, `swapoff`, `acct`, `quotactl`, `quotactl_fd`, `syslog`, `vhangup`, `settimeofday`, `clock_settime`, `open_by_handle_at`, `fanotify_init` (and `iopl`, `ioperm`, `uselib`, `_sysctl` on x86-64) | EPERM | host administration |
//! | `ioctl` TIOCSTI, TIOCLINUX | EPERM | typing into, or driving, a terminal |
//! | `personality` other than query, `PER_LINUX`, `ADDR_NO_RANDOMIZE` | EPERM | execution domains change syscall behaviour; only ASLR may be switched |
//! | any call of another ABI (i386 `int 0x80`, x32) | EPERM | the table is written for the native ABI only |
//!
//! With [`crate::SandboxSpec::uname`] set (a `hermit check` variation), one
//! call is not refused but handed to the sandbox's init: `uname` returns
//! `SECCOMP_RET_USER_NOTIF`, and init answers with the host's `utsname`
//! whose release and version are the spec's (see `init.rs`).
//!
//! With [`crate::SandboxSpec::clock_offset`] set (another `hermit check`
//! variation), the calls that read the wall clock go to init the same way:
//! `clock_gettime` of `CLOCK_REALTIME`, `CLOCK_REALTIME_COARSE`,
//! `CLOCK_REALTIME_ALARM` and `CLOCK_TAI` (the clock id is checked here, so
//! the monotonic clocks never leave the kernel), `gettimeofday` and `time`
//! (see `trace.rs`).

use libc::{
    sock_filter, BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W,
};

/// `seccomp_data` offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i // low 32 bits on a little-endian machine
}

#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("hermit-sandbox's seccomp filter knows x86-64 and aarch64 only");

pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;
const CREATE_BITS: u32 = (libc::O_CREAT | 0o20000000) as u32; // O_CREAT | __O_TMPFILE
const PERSONA_NO_ASLR: u32 = 0x0040000;
const PERSONALITY_QUERY: u32 = 0xffff_ffff;

/// One rule of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Always refuse.
    Deny { nr: i64, errno: i32 },
    /// Refuse when `args[arg] & mask != 0`.
    DenyMask { nr: i64, arg: u32, mask: u32 },
    /// Refuse when the call creates (`args[flags] & O_CREAT|O_TMPFILE`) with
    /// a mode (`args[mode]`) holding setuid/setgid bits.
    DenyCreateMode { nr: i64, flags: u32, mode: u32 },
    /// Refuse when `args[arg]` is one of `values`.
    DenyValues {
        nr: i64,
        arg: u32,
        values: &'static [u32],
    },
    /// Refuse unless `args[arg]` is one of `values`.
    AllowValues {
        nr: i64,
        arg: u32,
        values: &'static [u32],
    },
    /// `socket`/`socketpair`: the address family (`args[0]`) must be one of
    /// [`SOCKET_FAMILIES`] (else EAFNOSUPPORT), and an AF_NETLINK socket
    /// must be NETLINK_ROUTE (`args[2]`, else EPROTONOSUPPORT).
    SocketFamilies { nr: i64 },
}

/// Address families a build may open sockets of.
pub const SOCKET_FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];

fn rules() -> Vec<Rule> {
    use libc::*;
    let eperm = |nr| Rule::Deny { nr, errno: EPERM };
    let mut r = vec![
        Rule::DenyMask {
            nr: SYS_fchmod,
            arg: 1,
            mask: SUID_SGID,
        },
        Rule::DenyMask {
            nr: SYS_fchmodat,
            arg: 2,
            mask: SUID_SGID,
        },
        Rule::DenyMask {
            nr: SYS_fchmodat2,
            arg: 2,
            mask: SUID_SGID,
        },
        Rule::DenyCreateMode {
            nr: SYS_openat,
            flags: 2,
            mode: 3,
        },
        Rule::DenyMask {
            nr: SYS_mknodat,
            arg: 2,
            mask: SUID_SGID,
        },
        Rule::SocketFamilies { nr: SYS_socket },
        Rule::SocketFamilies { nr: SYS_socketpair },
        Rule::DenyMask {
            nr: SYS_unshare,
            arg: 0,
            mask: CLONE_NEWUSER as u32,
        },
        Rule::DenyMask {
            nr: SYS_clone,
            arg: 0,
            mask: CLONE_NEWUSER as u32,
        },
        Rule::DenyValues {
            nr: SYS_ioctl,
            arg: 1,
            values: &[TIOCSTI as u32, TIOCLINUX as u32],
        },
        Rule::AllowValues {
            nr: SYS_personality,
            arg: 0,
            values: &[0, PERSONA_NO_ASLR, PERSONALITY_QUERY],
        },
        Rule::Deny {
            nr: SYS_clone3,
            errno: ENOSYS,
        },
        Rule::Deny {
            nr: SYS_openat2,
            errno: ENOSYS,
        },
        Rule::Deny {
            nr: SYS_setxattr,
            errno: ENOTSUP,
        },
        Rule::Deny {
            nr: SYS_lsetxattr,
            errno: ENOTSUP,
        },
        Rule::Deny {
            nr: SYS_fsetxattr,
            errno: ENOTSUP,
        },
    ];
    #[cfg(target_arch = "x86_64")]
    r.extend([
        Rule::DenyMask {
            nr: SYS_chmod,
            arg: 1,
            mask: SUID_SGID,
        },
        Rule::DenyMask {
            nr: SYS_creat,
            arg: 1,
            mask: SUID_SGID,
        },
        Rule::DenyCreateMode {
            nr: SYS_open,
            flags: 1,
            mode: 2,
        },
        Rule::DenyMask {
            nr: SYS_mknod,
            arg: 1,
            mask: SUID_SGID,
        },
        eperm(SYS_iopl),
        eperm(SYS_ioperm),
        eperm(SYS_uselib),
        eperm(SYS__sysctl),
    ]);
    r.extend(
        [
            SYS_mount,
            SYS_umount2,
            SYS_pivot_root,
            SYS_chroot,
            SYS_fsopen,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fspick,
            SYS_move_mount,
            SYS_open_tree,
            SYS_mount_setattr,
            SYS_setns,
            SYS_ptrace,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
            SYS_pidfd_getfd,
            SYS_process_madvise,
            SYS_keyctl,
            SYS_add_key,
            SYS_request_key,
            SYS_bpf,
            SYS_perf_event_open,
            SYS_userfaultfd,
            SYS_io_uring_setup,
            SYS_io_uring_enter,
            SYS_io_uring_register,
            SYS_kexec_load,
            SYS_kexec_file_load,
            SYS_init_module,
            SYS_finit_module,
            SYS_delete_module,
            SYS_reboot,
            SYS_swapon,
            SYS_swapoff,
            SYS_acct,
            SYS_quotactl,
            SYS_quotactl_fd,
            SYS_syslog,
            SYS_vhangup,
            SYS_settimeofday,
            SYS_clock_settime,
            SYS_open_by_handle_at,
            SYS_fanotify_init,
        ]
        .into_iter()
        .map(eperm),
    );
    r
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (BPF_JMP | op | BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn load(off: u32) -> sock_filter {
    stmt(BPF_LD | BPF_W | BPF_ABS, off)
}

fn ret(k: u32) -> sock_filter {
    stmt(BPF_RET | BPF_K, k)
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

/// The filter program. Every rule is a self-contained block that starts with
/// the syscall number in the accumulator and either returns or falls through
/// to the next block with the accumulator unchanged.
pub fn filter() -> Vec<sock_filter> {
    filter_with(Notify::default())
}

/// The calls a filter hands to the listener instead of the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    /// `uname`.
    pub uname: bool,
    /// The wall clock: `clock_gettime` of [`WALL_CLOCKS`], `gettimeofday`,
    /// `time`.
    pub clock: bool,
}

impl Notify {
    pub fn any(self) -> bool {
        self.uname || self.clock
    }
}

/// The clocks `clock_gettime` reads the wall clock from: CLOCK_REALTIME,
/// CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI.
pub const WALL_CLOCKS: [u32; 4] = [0, 5, 8, 11];

/// [`filter`], with the calls `notify` names handed to the listener
/// (`SECCOMP_RET_USER_NOTIF`; install it with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`).
pub fn filter_with(notify: Notify) -> Vec<sock_filter> {
    let eperm = errno(libc::EPERM);
    let mut f = vec![
        load(OFF_ARCH),
        jump(BPF_JEQ, AUDIT_ARCH, 1, 0),
        ret(eperm),
        load(OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    f.extend([jump(BPF_JGE, 0x4000_0000, 0, 1), ret(eperm)]); // x32 ABI
    if notify.uname {
        f.extend([
            jump(BPF_JEQ, libc::SYS_uname as u32, 0, 1),
            ret(RET_USER_NOTIF),
        ]);
    }
    if notify.clock {
        let n = WALL_CLOCKS.len() as u8;
        // clock_gettime: the listener for a wall clock, the kernel for
        // any other (nothing else restricts the call).
        f.push(jump(BPF_JEQ, libc::SYS_clock_gettime as u32, 0, n + 3));
        f.push(load(off_arg(0)));
        for (i, c) in WALL_CLOCKS.iter().enumerate() {
            let last = i as u8 + 1 == n;
            f.push(jump(BPF_JEQ, *c, n - 1 - i as u8, u8::from(last)));
        }
        f.extend([ret(RET_USER_NOTIF), ret(RET_ALLOW)]);
        f.extend([
            jump(BPF_JEQ, libc::SYS_gettimeofday as u32, 0, 1),
            ret(RET_USER_NOTIF),
        ]);
        #[cfg(target_arch = "x86_64")]
        f.extend([
            jump(BPF_JEQ, libc::SYS_time as u32, 0, 1),
            ret(RET_USER_NOTIF),
        ]);
    }
    for rule in rules() {
        match rule {
            Rule::Deny { nr, errno: e } => {
                f.extend([jump(BPF_JEQ, nr as u32, 0, 1), ret(errno(e))]);
            }
            Rule::DenyMask { nr, arg, mask } => f.extend([
                jump(BPF_JEQ, nr as u32, 0, 4),
                load(off_arg(arg)),
                jump(BPF_JSET, mask, 0, 1),
                ret(eperm),
                ret(RET_ALLOW),
            ]),
            Rule::DenyCreateMode { nr, flags, mode } => f.extend([
                jump(BPF_JEQ, nr as u32, 0, 6),
                load(off_arg(flags)),
                jump(BPF_JSET, CREATE_BITS, 0, 3),
                load(off_arg(mode)),
                jump(BPF_JSET, SUID_SGID, 0, 1),
                ret(eperm),
                ret(RET_ALLOW),
            ]),
            Rule::DenyValues { nr, arg, values } => {
                let n = values.len() as u8;
                f.push(jump(BPF_JEQ, nr as u32, 0, n + 3));
                f.push(load(off_arg(arg)));
                for (i, v) in values.iter().enumerate() {
                    f.push(jump(BPF_JEQ, *v, n - i as u8, 0));
                }
                f.extend([ret(RET_ALLOW), ret(eperm)]);
            }
            Rule::AllowValues { nr, arg, values } => {
                let n = values.len() as u8;
                f.push(jump(BPF_JEQ, nr as u32, 0, n + 3));
                f.push(load(off_arg(arg)));
                for (i, v) in values.iter().enumerate() {
                    f.push(jump(BPF_JEQ, *v, n - i as u8, 0));
                }
                f.extend([ret(eperm), ret(RET_ALLOW)]);
            }
            Rule::SocketFamilies { nr } => {
                let n = SOCKET_FAMILIES.len() as u8;
                // Not this call: skip the block (n + 8 instructions).
                f.push(jump(BPF_JEQ, nr as u32, 0, n + 7));
                f.push(load(off_arg(0)));
                // AF_NETLINK goes to the protocol check, the other allowed
                // families straight to ALLOW; anything else is refused.
                f.push(jump(BPF_JEQ, libc::AF_NETLINK as u32, n + 1, 0));
                for (i, v) in SOCKET_FAMILIES.iter().enumerate() {
                    f.push(jump(BPF_JEQ, *v, n - i as u8 + 3, 0));
                }
                f.push(ret(errno(libc::EAFNOSUPPORT)));
                f.push(load(off_arg(2)));
                f.push(jump(BPF_JEQ, libc::NETLINK_ROUTE as u32, 1, 0));
                f.push(ret(errno(libc::EPROTONOSUPPORT)));
                f.push(ret(RET_ALLOW));
            }
        }
    }
    f.push(ret(RET_ALLOW));
    f
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the subset the filter uses, run over a
    /// synthetic `seccomp_data`.
    fn eval(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let word = |off: u32| {
            let o = off as usize;
            u32::from_le_bytes(data[o..o + 4].try_into().unwrap())
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            let code = ins.code as u32;
            pc += 1;
            match code {
                c if c == BPF_LD | BPF_W | BPF_ABS => acc = word(ins.k),
                c if c == BPF_RET | BPF_K => return ins.k,
                c if c & 0x07 == BPF_JMP => {
                    let taken = match c & 0xf0 {
                        x if x == BPF_JEQ => acc == ins.k,
                        x if x == BPF_JGE => acc >= ins.k,
                        x if x == BPF_JSET => acc & ins.k != 0,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += if taken { ins.jt } else { ins.jf } as usize;
                }
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    fn run(nr: i64, args: [u64; 6]) -> u32 {
        eval(&filter(), AUDIT_ARCH, nr, args)
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn setuid_and_setgid_modes_are_refused() {
        let f = |nr, a: [u64; 6]| run(nr, a);
        assert_eq!(f(libc::SYS_fchmod, [3, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(f(libc::SYS_fchmod, [3, 0o2755, 0, 0, 0, 0]), EPERM);
        assert_eq!(f(libc::SYS_fchmod, [3, 0o1777, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(f(libc::SYS_fchmodat, [3, 0, 0o6755, 0, 0, 0]), EPERM);
        assert_eq!(f(libc::SYS_fchmodat, [3, 0, 0o755, 0, 0, 0]), RET_ALLOW);
        assert_eq!(f(libc::SYS_fchmodat2, [3, 0, 0o4700, 0, 0, 0]), EPERM);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(f(libc::SYS_chmod, [0, 0o4755, 0, 0, 0, 0]), EPERM);
            assert_eq!(f(libc::SYS_chmod, [0, 0o755, 0, 0, 0, 0]), RET_ALLOW);
            assert_eq!(f(libc::SYS_creat, [0, 0o4755, 0, 0, 0, 0]), EPERM);
            let creat = libc::O_CREAT as u64 | libc::O_WRONLY as u64;
            assert_eq!(f(libc::SYS_open, [0, creat, 0o4755, 0, 0, 0]), EPERM);
            assert_eq!(f(libc::SYS_open, [0, 0, 0o4755, 0, 0, 0]), RET_ALLOW);
        }
        let creat = libc::O_CREAT as u64;
        assert_eq!(f(libc::SYS_openat, [3, 0, creat, 0o2644, 0, 0]), EPERM);
        assert_eq!(f(libc::SYS_openat, [3, 0, creat, 0o644, 0, 0]), RET_ALLOW);
        assert_eq!(f(libc::SYS_openat, [3, 0, 0, 0o6644, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn nested_user_namespaces_are_refused() {
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(run(libc::SYS_unshare, [newuser, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            run(libc::SYS_unshare, [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(
                libc::SYS_clone,
                [newuser | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(
            run(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run(libc::SYS_setns, [3, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            run(libc::SYS_clone3, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn unneeded_calls_are_refused_and_ordinary_ones_pass() {
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_ptrace,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_reboot,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_acct,
            libc::SYS_open_by_handle_at,
        ] {
            assert_eq!(run(nr, [0; 6]), EPERM, "syscall {nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_mkdirat,
            libc::SYS_fchown,
        ] {
            assert_eq!(run(nr, [0; 6]), RET_ALLOW, "syscall {nr}");
        }
        assert_eq!(
            run(libc::SYS_setxattr, [0; 6]),
            RET_ERRNO | libc::ENOTSUP as u32
        );
    }

    #[test]
    #[allow(clippy::unnecessary_cast)] // the ioctl type differs between libcs
    fn terminal_injection_and_personality_changes_are_refused() {
        let sti = libc::TIOCSTI as u64;
        assert_eq!(run(libc::SYS_ioctl, [0, sti, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            run(libc::SYS_ioctl, [0, libc::TIOCLINUX as u64, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(libc::SYS_ioctl, [0, libc::TCGETS as u64, 0, 0, 0, 0]),
            RET_ALLOW
        );
        let p = |v: u64| run(libc::SYS_personality, [v, 0, 0, 0, 0, 0]);
        assert_eq!(p(0xffff_ffff), RET_ALLOW);
        assert_eq!(p(0), RET_ALLOW);
        assert_eq!(p(0x0040000), RET_ALLOW);
        assert_eq!(p(0x0008), EPERM); // PER_LINUX32
        assert_eq!(p(0x0400000), EPERM); // READ_IMPLIES_EXEC
    }

    #[test]
    fn setid_mknod_is_refused() {
        let reg = libc::S_IFREG as u64;
        assert_eq!(run(libc::SYS_mknodat, [3, 0, reg | 0o6755, 0, 0, 0]), EPERM);
        assert_eq!(run(libc::SYS_mknodat, [3, 0, reg | 0o2644, 0, 0, 0]), EPERM);
        assert_eq!(
            run(libc::SYS_mknodat, [3, 0, reg | 0o755, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(
                libc::SYS_mknodat,
                [3, 0, libc::S_IFIFO as u64 | 0o644, 0, 0, 0]
            ),
            RET_ALLOW
        );
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(run(libc::SYS_mknod, [0, reg | 0o4755, 0, 0, 0, 0]), EPERM);
            assert_eq!(
                run(libc::SYS_mknod, [0, reg | 0o644, 0, 0, 0, 0]),
                RET_ALLOW
            );
        }
    }

    #[test]
    fn only_allowed_socket_families_open() {
        let eaf = RET_ERRNO | libc::EAFNOSUPPORT as u32;
        let eproto = RET_ERRNO | libc::EPROTONOSUPPORT as u32;
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            let s = |family: i32, proto: i32| {
                let ty = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
                run(nr, [family as u64, ty, proto as u64, 0, 0, 0])
            };
            for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
                assert_eq!(s(family, 0), RET_ALLOW, "{nr} family {family}");
            }
            assert_eq!(s(libc::AF_NETLINK, libc::NETLINK_ROUTE), RET_ALLOW);
            assert_eq!(s(libc::AF_NETLINK, libc::NETLINK_AUDIT), eproto);
            assert_eq!(s(libc::AF_NETLINK, libc::NETLINK_KOBJECT_UEVENT), eproto);
            for family in [
                libc::AF_VSOCK,
                libc::AF_PACKET,
                libc::AF_ALG,
                libc::AF_BLUETOOTH,
                libc::AF_KEY,
                libc::AF_XDP,
                libc::AF_UNSPEC,
                4242,
            ] {
                assert_eq!(s(family, 0), eaf, "{nr} family {family}");
            }
        }
        // Other calls are not affected by the block.
        assert_eq!(run(libc::SYS_connect, [3, 0, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn other_abis_are_refused() {
        let prog = filter();
        assert_eq!(eval(&prog, 0x4000_0003, libc::SYS_read, [0; 6]), EPERM); // i386
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            eval(&prog, AUDIT_ARCH, 0x4000_0000 | libc::SYS_read, [0; 6]),
            EPERM
        );
    }

    #[test]
    fn uname_goes_to_the_listener_only_when_asked() {
        assert_eq!(run(libc::SYS_uname, [0; 6]), RET_ALLOW);
        let notify = filter_with(Notify {
            uname: true,
            clock: false,
        });
        assert_eq!(
            eval(&notify, AUDIT_ARCH, libc::SYS_uname, [0; 6]),
            RET_USER_NOTIF
        );
        // Everything else as before.
        assert_eq!(eval(&notify, AUDIT_ARCH, libc::SYS_read, [0; 6]), RET_ALLOW);
        assert_eq!(eval(&notify, AUDIT_ARCH, libc::SYS_mount, [0; 6]), EPERM);
        assert_eq!(eval(&notify, 0x4000_0003, libc::SYS_uname, [0; 6]), EPERM);
    }

    #[test]
    fn the_wall_clock_goes_to_the_listener_only_when_asked() {
        let gettime = |prog: &[sock_filter], clock: u64| {
            eval(
                prog,
                AUDIT_ARCH,
                libc::SYS_clock_gettime,
                [clock, 0x1000, 0, 0, 0, 0],
            )
        };
        let plain = filter();
        for c in 0..16 {
            assert_eq!(gettime(&plain, c), RET_ALLOW, "clock {c}");
        }
        assert_eq!(run(libc::SYS_gettimeofday, [0; 6]), RET_ALLOW);
        let prog = filter_with(Notify {
            uname: false,
            clock: true,
        });
        for c in 0..16u64 {
            let want = if WALL_CLOCKS.contains(&(c as u32)) {
                RET_USER_NOTIF
            } else {
                RET_ALLOW
            };
            assert_eq!(gettime(&prog, c), want, "clock {c}");
        }
        // The kernel reads a clockid_t (an int): the high half is not
        // looked at, by it or by the filter.
        assert_eq!(gettime(&prog, 1 << 32), RET_USER_NOTIF);
        // CPU-time clocks (negative ids) stay in the kernel.
        assert_eq!(gettime(&prog, (-6i64) as u64), RET_ALLOW);
        let at = |nr| eval(&prog, AUDIT_ARCH, nr, [0; 6]);
        assert_eq!(at(libc::SYS_gettimeofday), RET_USER_NOTIF);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(at(libc::SYS_time), RET_USER_NOTIF);
        assert_eq!(at(libc::SYS_uname), RET_ALLOW);
        assert_eq!(at(libc::SYS_clock_getres), RET_ALLOW);
        assert_eq!(at(libc::SYS_clock_nanosleep), RET_ALLOW);
        assert_eq!(at(libc::SYS_read), RET_ALLOW);
        assert_eq!(at(libc::SYS_mount), EPERM);
        assert_eq!(at(libc::SYS_clock_settime), EPERM);
        let both = filter_with(Notify {
            uname: true,
            clock: true,
        });
        assert_eq!(
            eval(&both, AUDIT_ARCH, libc::SYS_uname, [0; 6]),
            RET_USER_NOTIF
        );
        assert_eq!(gettime(&both, 0), RET_USER_NOTIF);
        assert_eq!(gettime(&both, 1), RET_ALLOW);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        for (uname, clock) in [(false, false), (true, false), (false, true), (true, true)] {
            let prog = filter_with(Notify { uname, clock });
            assert!(prog.len() < 4096);
            for (i, ins) in prog.iter().enumerate() {
                if ins.code as u32 & 0x07 == BPF_JMP {
                    assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < prog.len(), "{i}");
                }
            }
        }
        let prog = filter();
        assert!(prog.len() < 4096);
        for (i, ins) in prog.iter().enumerate() {
            if ins.code as u32 & 0x07 == BPF_JMP {
                assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < prog.len(), "{i}");
            }
        }
        assert_eq!(prog.last().unwrap().k, RET_ALLOW);
    }
}
