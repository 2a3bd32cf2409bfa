//! The only module with `unsafe`: thin wrappers over system calls that `nix`
//! does not cover (or covers only as `unsafe`). Each block says why it is sound.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

/// `fork(2)`. Sound to call only while the process has a single thread (the
/// sandbox helper and init never start threads); the child may then allocate.
pub fn fork_single_threaded() -> Result<ForkResult, Errno> {
    // SAFETY: callers are the helper and init processes, which are
    // single-threaded (they are entered at the top of `main`, before any
    // runtime starts), so the child inherits no lock held by another thread.
    unsafe { nix::unistd::fork() }
}

/// `clone(2)` with namespace flags and no new stack: like `fork`, but the
/// child starts in new namespaces (with CLONE_NEWPID it is pid 1 there).
/// Sound to call only while the process has a single thread.
pub fn clone_single_threaded(flags: nix::sched::CloneFlags) -> Result<ForkResult, Errno> {
    // SAFETY: as for `fork`: the caller is single-threaded, so the child
    // inherits no lock held by another thread. A null stack gives the child
    // a copy-on-write view of the caller's stack, exactly as `fork` does. The
    // one difference from glibc's `fork` is that no atfork handler runs and
    // glibc's cached thread id in the child stays the parent's: it is read
    // only by `raise`/`pthread_kill`, which the sandbox processes never call
    // (they signal with `kill(2)`), and `abort` still ends the process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    match Errno::result(r)? {
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

/// A stack for a child started by [`spawn_vfork`]: anonymous memory with an
/// inaccessible guard page at its low end, so an overflow faults instead of
/// running into other memory.
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    pub fn new(len: usize) -> Result<ChildStack, Errno> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched. The result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page lies inside the mapping made above.
        Errno::result(unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) })?;
        Ok(stack)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping made in `new`, which
        // nothing references once the stack's child has executed or exited.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Runs `child` in a new process that shares this one's memory until it
/// calls `execve` or exits, while the calling thread waits
/// (CLONE_VM | CLONE_VFORK, as glibc's `posix_spawn` does): no copy of the
/// address space and no copy-on-write faults. `child` must end in `execve`
/// or [`exit_now`] and never return. Sound to call only while the process
/// has a single thread: the child may then allocate, since the one thread
/// that could hold an allocator lock is suspended, and what the child
/// allocates is simply left behind in the parent's heap.
pub fn spawn_vfork(
    stack: &mut ChildStack,
    child: &mut dyn FnMut() -> std::convert::Infallible,
) -> Result<Pid, Errno> {
    let cb: Box<dyn FnMut() -> isize + '_> = Box::new(move || match child() {});
    // SAFETY: the stack is our own mapping of `len` bytes (the guard page
    // at its low end included, which only makes an overflow fault); nothing
    // else uses it while the child runs, and the parent is suspended until
    // the child executes or exits, so the two never run on shared memory at
    // once. The caller is single-threaded (see above).
    let slice = unsafe { std::slice::from_raw_parts_mut(stack.base as *mut u8, stack.len) };
    // SAFETY: see above.
    unsafe {
        nix::sched::clone(
            cb,
            slice,
            nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    }
}

/// `_exit(2)`: leaves at once, without running destructors or atexit hooks
/// (which belong to the parent's copy of the process).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Installs a classic-BPF seccomp filter on the calling thread.
/// Requires `no_new_privs` (or CAP_SYS_ADMIN).
pub fn install_seccomp(filter: &[libc::sock_filter]) -> Result<(), Errno> {
    let len = u16::try_from(filter.len()).map_err(|_| Errno::E2BIG)?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel
    // copies the program and does not keep the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    Errno::result(r).map(drop)
}

/// Installs a classic-BPF seccomp filter on the calling thread with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`: the calls it answers with
/// `SECCOMP_RET_USER_NOTIF` wait for whoever holds the returned listener
/// (close-on-exec). Requires `no_new_privs` (or CAP_SYS_ADMIN). Allocates
/// nothing.
pub fn install_seccomp_listener(filter: &[libc::sock_filter]) -> Result<OwnedFd, Errno> {
    let len = u16::try_from(filter.len()).map_err(|_| Errno::E2BIG)?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel
    // copies the program and does not keep the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog as libc::c_ulong,
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: on success the call returns a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends descriptor `fd` over the Unix socket `sock` (SCM_RIGHTS, one byte
/// of data). Allocates nothing: the command's process calls it while it
/// still shares init's memory.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);
    let mut buf = Cmsg([0; 64]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: `msghdr` is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.0.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    if space > buf.0.len() {
        return Err(Errno::EOVERFLOW);
    }
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `buf`, aligned and large enough for one
    // header with one `c_int` (checked above); CMSG_FIRSTHDR and CMSG_DATA
    // stay inside it. `msg`, `iov`, `byte` and `buf` outlive `sendmsg`.
    let r = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, fd.as_raw_fd());
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    Errno::result(r).map(drop)
}

/// Owns a descriptor the kernel has just installed in this process
/// (received with SCM_RIGHTS).
pub fn own_received(fd: i32) -> OwnedFd {
    // SAFETY: the kernel created `fd` for this process alone when it
    // delivered the message; nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One `SECCOMP_RET_USER_NOTIF` notification: its id, the calling
/// process (in the listener's pid namespace), the call's number and
/// arguments.
pub struct Notification {
    pub id: u64,
    pub pid: i32,
    pub nr: i32,
    pub arg0: u64,
    pub args: [u64; 6],
}

/// `SECCOMP_IOCTL_NOTIF_RECV`: waits for the next notification.
pub fn notif_recv(listener: BorrowedFd<'_>) -> Result<Notification, Errno> {
    // SAFETY: `seccomp_notif` is plain old data; the kernel requires it
    // zeroed.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes one `seccomp_notif` into `n`, which lives
    // across the call.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut n as *mut libc::seccomp_notif,
        )
    };
    Errno::result(r)?;
    Ok(Notification {
        id: n.id,
        pid: n.pid as i32,
        nr: n.data.nr,
        arg0: n.data.args[0],
        args: n.data.args,
    })
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: the notification's caller is still
/// waiting in that call (so its pid still names it).
pub fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: the ioctl reads one `u64` from `id`, which lives across the call.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &id as *const u64,
        )
    };
    r == 0
}

/// `SECCOMP_IOCTL_NOTIF_SEND`: the call returns `val`, or fails with
/// `errno` when it is not 0.
pub fn notif_send(listener: BorrowedFd<'_>, id: u64, val: i64, errno: i32) -> Result<(), Errno> {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error: -errno,
        flags: 0,
    };
    // SAFETY: the ioctl reads one `seccomp_notif_resp` from `resp`, which
    // lives across the call.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    Errno::result(r).map(drop)
}

/// Brings the network interface `lo` up in the current network namespace.
pub fn loopback_up() -> Result<(), Errno> {
    // SAFETY: plain system call; the returned descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let raw = Errno::result(raw)?;
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid, NUL-terminated `ifreq` that lives across both
    // calls; SIOCGIFFLAGS/SIOCSIFFLAGS read and write only `ifr_flags`.
    unsafe {
        Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` (Linux ≥ 5.12) on `path`, for the whole tree of mounts
/// below it when `recursive`. Only the given attributes change.
pub fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 } | libc::AT_NO_AUTOMOUNT;
    // SAFETY: `path` is NUL-terminated; `attr` is a valid `struct mount_attr`
    // whose size is passed along and which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Marks every descriptor from `first` up close-on-exec (`close_range(2)`,
/// Linux ≥ 5.11), so nothing but 0–2 reaches the command.
pub fn cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: plain system call on integers; it only sets descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(r).map(drop)
}

/// Resets every signal's disposition to the default (ignored signals survive
/// `execve`, so SIGPIPE ignored by the Rust runtime would otherwise leak into
/// the command).
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal;
        // invalid numbers make `signal` fail with EINVAL, which is ignored.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// `getppid()` compared to `expected`: false once the parent is gone.
pub fn parent_is(expected: Pid) -> bool {
    nix::unistd::getppid() == expected
}

/// `setdomainname(2)`: the NIS domain name of the UTS namespace, which a new
/// namespace copies from the host.
pub fn set_domainname(name: &str) -> Result<(), Errno> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive
    // the call; the kernel copies them.
    let r = unsafe { libc::setdomainname(name.as_ptr() as *const libc::c_char, name.len()) };
    Errno::result(r).map(drop)
}

/// Starts the helper with `posix_spawn` (a `vfork`-style clone: hermit's
/// address space is not copied, which a `fork` of a multi-threaded hermit
/// with a large heap would do for every build). `fds` are `(descriptor,
/// number in the helper)`; the helper gets exactly those, each without
/// close-on-exec, an empty environment, an empty signal mask and default
/// SIGPIPE. The helper ties itself to hermit (PR_SET_PDEATHSIG, then a
/// check of its parent) as its first act.
pub fn spawn_helper(
    exe: &std::path::Path,
    args: &[&str],
    fds: &[(BorrowedFd<'_>, i32)],
) -> Result<Pid, Errno> {
    use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| Errno::EINVAL);
    let path = cstr(exe.as_os_str().as_bytes())?;
    let argv = args
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    // Copies above every target number, so that no dup2 below overwrites a
    // descriptor a later one still reads; close-on-exec, so they vanish in
    // the helper (and in any other process started meanwhile).
    let top = fds.iter().map(|&(_, n)| n).max().unwrap_or(2).max(2) + 1;
    let sources = fds
        .iter()
        .map(|(fd, _)| dup_above(fd.as_raw_fd(), top.max(64)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut actions = PosixSpawnFileActions::init()?;
    for (src, &(_, n)) in sources.iter().zip(fds) {
        actions.add_dup2(src.as_raw_fd(), n)?;
    }
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&nix::sys::signal::SigSet::empty())?;
    let mut default = nix::sys::signal::SigSet::empty();
    default.add(nix::sys::signal::Signal::SIGPIPE);
    attr.set_sigdefault(&default)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let env: [CString; 0] = [];
    posix_spawn(path.as_c_str(), &actions, &attr, &argv, &env)
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a close-on-exec copy of descriptor `raw` at
/// the lowest free number `min` or above. Any integer is accepted: one that
/// is not an open descriptor gives `EBADF`.
pub fn dup_above(raw: i32, min: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain system call on integers; it creates a new descriptor
    // and changes no existing one.
    let r = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, min) };
    let fd = Errno::result(r)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dup2(2)`: makes descriptor `target` a copy of `fd`, without
/// close-on-exec. Called only in the command's process just before
/// `execve`, where nothing owns `target` (init keeps its own descriptors at
/// 10 and above, and the command's process has a descriptor table of its
/// own).
pub fn dup_to(fd: &OwnedFd, target: i32) -> Result<(), Errno> {
    // SAFETY: plain system call on integers. `target` is below every
    // descriptor a Rust value in this process still uses (see above).
    let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    Errno::result(r).map(drop)
}

/// Whether the calling process has exactly one thread (`/proc/self/stat`).
pub fn is_single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    // Fields after the command name start at field 3; num_threads is 20.
    rest.split_whitespace().nth(17) == Some("1")
}

/// Replaces this process's command line (what `/proc/<pid>/cmdline` and
/// `ps` show, inside the sandbox too) with `title`, so the helper and init
/// do not show hermit's arguments — host paths — to the build. Writes over
/// the argv strings in place, like `setproctitle`; `std::env::args` must not
/// be used in this process afterwards.
pub fn set_cmdline(title: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // arg_start and arg_end are fields 48 and 49; index 0 is field 3.
    let (Some(Ok(start)), Some(Ok(end))) = (
        fields.get(45).map(|f| f.parse::<usize>()),
        fields.get(46).map(|f| f.parse::<usize>()),
    ) else {
        return;
    };
    if start == 0 || end <= start || end - start > 1 << 20 {
        return;
    }
    let len = end - start;
    // SAFETY: [arg_start, arg_end) is this process's own argv area on its
    // initial stack: mapped, writable, and not referenced by any Rust value
    // (std keeps only raw pointers to it, read by `env::args`, which callers
    // promise not to use again). The kernel reads it for /proc/pid/cmdline.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, len);
        area.fill(0);
        let n = title.len().min(len - 1);
        area[..n].copy_from_slice(&title.as_bytes()[..n]);
        // A non-NUL last byte tells the kernel the title was rewritten: it
        // then shows only up to the first NUL, not the whole (host-sized) area.
        if n + 1 < len {
            area[len - 1] = b' ';
        }
    }
}

/// Takes ownership of descriptor `n`, one of the two pipe ends hermit left
/// open for a re-executed helper (their numbers come on the command line).
pub fn inherited_fd(n: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is fine.
    if n < 3 || unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `n` is open (checked above) and was left open by hermit for
    // this freshly executed process, where nothing else owns it; the helper
    // takes each number once.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

/// `open_tree(2)` with `OPEN_TREE_CLONE` (Linux ≥ 5.2): a detached copy of
/// the mount at `path` (and every mount below it when `recursive`), held
/// only by the returned descriptor until [`move_mount`] attaches it. Lets
/// setup take every host path it needs first and then cut the host root off
/// before anything from the root image is looked at.
pub fn open_tree_clone(path: &CStr, recursive: bool) -> Result<OwnedFd, Errno> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `path` is NUL-terminated and outlives the call; the result is
    // checked before it becomes an owned descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `move_mount(2)`: attaches the detached mount `from` (from
/// [`open_tree_clone`]) at `target`. The target's last component is not
/// followed if it is a symlink (callers check the whole path first).
pub fn move_mount(from: &OwnedFd, target: &CStr) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: both strings are NUL-terminated and outlive the call; `from`
    // is an open descriptor owned by the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
        )
    };
    Errno::result(r).map(drop)
}

/// Checks that `path` resolves without following any symlink, in any
/// component (`openat2(2)` with `RESOLVE_NO_SYMLINKS`, Linux ≥ 5.6): fails
/// with `ELOOP` if one is on the way, so setup never acts on a path an
/// image redirected.
pub fn check_no_symlinks(path: &CStr) -> Result<(), Errno> {
    // SAFETY: `open_how` is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated; `how` is a valid `struct open_how`
    // whose size is passed along; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = Errno::result(r)?;
    // SAFETY: a fresh descriptor that nothing else owns; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

/// Closes every descriptor of the calling process except those in `keep`
/// (`close_range(2)` over the gaps, Linux >= 5.9). Nothing in this process
/// may use (or drop) a descriptor it closes: callers are init and the
/// helper, which own only the ones they keep.
pub fn close_all_except(keep: &[i32]) -> Result<(), Errno> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0u32;
    for k in keep.into_iter().chain([u32::MAX]) {
        if k > first {
            let last = if k == u32::MAX { u32::MAX } else { k - 1 };
            // SAFETY: plain system call on integers. The descriptors it
            // closes are owned by nothing this process still uses (see above).
            let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
            Errno::result(r)?;
        }
        first = k.saturating_add(1);
    }
    Ok(())
}

/// `ioctl(TIOCSCTTY)`: makes the terminal on `fd` the controlling terminal
/// of the calling process, which must be a session leader without one.
/// Called in the command's process just before `execve`.
pub fn set_controlling_terminal(fd: i32) -> Result<(), Errno> {
    // SAFETY: plain system call on integers; the argument 0 means "do not
    // steal the terminal from another session".
    let r = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop)
}

/// `ioctl(TIOCGWINSZ)`: the window size of the terminal on `fd`.
pub fn window_size(fd: std::os::fd::BorrowedFd<'_>) -> Result<libc::winsize, Errno> {
    // SAFETY: `winsize` is plain old data; all-zero is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` to the pointer, which
    // points at `ws` for the whole call; `fd` is open (borrowed).
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ,
            &mut ws as *mut libc::winsize,
        )
    };
    Errno::result(r).map(|_| ws)
}

/// `ioctl(TIOCSWINSZ)`: sets the window size of the terminal on `fd` (the
/// kernel sends SIGWINCH to its foreground process group when it changes).
pub fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, ws: &libc::winsize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which
    // points at `ws` for the whole call; `fd` is open (borrowed).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) };
    Errno::result(r).map(drop)
}

/// Takes ownership of a descriptor the kernel just installed in this
/// process (one received with SCM_RIGHTS).
pub fn received_fd(raw: i32) -> OwnedFd {
    // SAFETY: the kernel installed `raw` for this process in the `recvmsg`
    // the caller just made; nothing else knows the number, so nothing else
    // owns it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Where [`on_signal`] writes: the write end of a non-blocking pipe, or -1.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The handler of [`catch_signals`]: writes the signal's number as one byte
/// into the signal pipe. Only async-signal-safe calls (an atomic load and
/// `write`), and errno is saved and restored.
extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let byte = sig as u8;
    // SAFETY: `__errno_location` returns this thread's errno; `write` is
    // async-signal-safe and reads one byte from a local.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
        *libc::__errno_location() = errno;
    }
}

/// Catches `signals` in this process: each one delivered writes its number
/// as one byte into `pipe` (the write end of a non-blocking pipe, which
/// must stay open until [`restore_signals`]). Returns the old dispositions.
pub fn catch_signals(
    pipe: std::os::fd::BorrowedFd<'_>,
    signals: &[i32],
) -> Result<Vec<(i32, libc::sigaction)>, Errno> {
    SIGNAL_PIPE.store(pipe.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    let mut old = Vec::new();
    for &sig in signals {
        // SAFETY: `sigaction` is plain old data; all-zero is a valid value
        // (no flags, an empty mask) that the fields below complete.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        new.sa_flags = libc::SA_RESTART;
        // SAFETY: as above.
        let mut prev: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers point at live `sigaction`s for the call;
        // the handler only makes async-signal-safe calls.
        let r = unsafe { libc::sigaction(sig, &new, &mut prev) };
        if let Err(e) = Errno::result(r) {
            restore_signals(&old);
            return Err(e);
        }
        old.push((sig, prev));
    }
    Ok(old)
}

/// Puts back the dispositions [`catch_signals`] replaced; the signal pipe
/// is no longer written to.
pub fn restore_signals(old: &[(i32, libc::sigaction)]) {
    // First: a handler running from now on writes nothing (the pipe may be
    // closed, and its number reused, once this returns).
    SIGNAL_PIPE.store(-1, std::sync::atomic::Ordering::SeqCst);
    for (sig, prev) in old.iter().rev() {
        // SAFETY: `prev` is a disposition `sigaction` returned for `sig`.
        unsafe {
            libc::sigaction(*sig, prev, std::ptr::null_mut());
        }
    }
}

/// `waitpid(-1, &status, WNOHANG | flags)`: the next child (or tracee)
/// with news, as its pid and raw status, or `None` when none has any.
/// Unlike nix's `waitpid`, any signal number is taken (real-time ones
/// included), so no status is ever lost.
pub fn wait_any(flags: libc::c_int) -> Result<Option<(i32, libc::c_int)>, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: the call writes one `c_int` into `status`, which lives
    // across it.
    let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | flags) };
    match Errno::result(r)? {
        0 => Ok(None),
        pid => Ok(Some((pid, status))),
    }
}

/// `ptrace(request, pid, addr, data)` for the requests that pass plain
/// numbers (no pointer the kernel writes through).
fn ptrace_plain(
    request: libc::c_uint,
    pid: i32,
    addr: u64,
    data: u64,
) -> Result<libc::c_long, Errno> {
    // SAFETY: the requests used here (SEIZE, CONT, LISTEN, POKEDATA) read
    // only their integer arguments; PEEKDATA returns the word read. No
    // memory of this process is touched.
    let r = unsafe {
        *libc::__errno_location() = 0;
        libc::ptrace(
            request,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    // PEEKDATA may return -1 as data: only errno tells.
    if r == -1 {
        let e = Errno::last();
        if e != Errno::UnknownErrno {
            return Err(e);
        }
    }
    Ok(r)
}

/// `PTRACE_SEIZE`: this process becomes `pid`'s tracer, with `options`.
pub fn ptrace_seize(pid: i32, options: libc::c_int) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_SEIZE, pid, 0, options as u64).map(drop)
}

/// `PTRACE_CONT`: resumes a stopped tracee, delivering signal `sig`
/// (0: none) — any number, real-time signals included.
pub fn ptrace_cont(pid: i32, sig: libc::c_int) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_CONT, pid, 0, sig as u64).map(drop)
}

/// `PTRACE_LISTEN`: leaves a seized tracee in its group-stop, and lets
/// the tracer hear when SIGCONT ends it.
pub fn ptrace_listen(pid: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_LISTEN, pid, 0, 0).map(drop)
}

/// `PTRACE_PEEKDATA`: one word of a stopped tracee's memory.
pub fn ptrace_peek(pid: i32, addr: u64) -> Result<u64, Errno> {
    ptrace_plain(libc::PTRACE_PEEKDATA, pid, addr, 0).map(|w| w as u64)
}

/// `PTRACE_POKEDATA`: writes one word of a stopped tracee's memory.
pub fn ptrace_poke(pid: i32, addr: u64, word: u64) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_POKEDATA, pid, addr, word).map(drop)
}

/// The stack pointer of a stopped tracee (`PTRACE_GETREGS`).
#[cfg(target_arch = "x86_64")]
pub fn ptrace_stack_pointer(pid: i32) -> Result<u64, Errno> {
    // SAFETY: `user_regs_struct` is plain old data; all-zero is valid.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one `user_regs_struct` into `regs`,
    // which lives across the call.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            &mut regs as *mut libc::user_regs_struct as *mut libc::c_void,
        )
    };
    Errno::result(r)?;
    Ok(regs.rsp)
}

/// `clock_gettime(2)` of this process (through its own vDSO).
pub fn clock_now(clock: libc::clockid_t) -> Result<libc::timespec, Errno> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the call writes one `timespec` into `ts`, which lives across
    // it.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    Errno::result(r).map(|_| ts)
}

/// `gettimeofday(2)` as the kernel answers it, the time zone included
/// (glibc's wrapper only zeroes the latter).
pub fn time_of_day() -> Result<(libc::timeval, [i32; 2]), Errno> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut tz = [0i32; 2];
    // SAFETY: the call writes one `timeval` into `tv` and one `struct
    // timezone` (two `int`s) into `tz`; both live across it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_gettimeofday,
            &mut tv as *mut libc::timeval,
            tz.as_mut_ptr(),
        )
    };
    Errno::result(r).map(|_| (tv, tz))
}
