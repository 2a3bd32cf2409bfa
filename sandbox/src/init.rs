//! The sandbox's init: pid 1 of the new pid namespace, and the command's
//! process between `fork` and `execve`.
//!
//! init, in order:
//! 0. becomes non-dumpable, shows `hermit-sandbox` as its command line,
//!    takes the command's descriptors 0–2 from hermit and closes every other
//!    descriptor it inherited;
//! 1. arms PR_SET_PDEATHSIG (SIGKILL) and checks its parent, the helper, is
//!    still there — if the helper dies, init dies, and with init every process
//!    of the namespace;
//! 2. builds the filesystem ([`crate::setup`]) and pivots into it;
//! 3. sets the host and domain names, brings `lo` up;
//! 4. forks the command (pid 2), then reaps every zombie, forwards SIGTERM,
//!    SIGINT and SIGHUP to the command, and exits with the command's status
//!    as soon as the command exits — the kernel then kills whatever is left
//!    in the namespace, daemons included. With [`SandboxSpec::uname`] set,
//!    init also answers the command's `uname(2)` calls: the command's
//!    seccomp filter hands them to a listener whose descriptor the command
//!    sends init over a socket before it executes, and init writes the
//!    host's `utsname` with the spec's release and version into the
//!    caller's buffer (`process_vm_writev`; init is every sandbox process's
//!    ancestor and holds CAP_SYS_PTRACE in their user namespace). With
//!    [`SandboxSpec::clock_offset`] set, init forks (not vforks) the
//!    command, traces it and everything it starts, hides each executed
//!    image's vDSO, and answers the wall clock's calls the same way (see
//!    `trace.rs`).
//!
//! The command's process, before `execve`: new session (no controlling
//! terminal, so no TIOCSTI into the caller's — or, for `hermit shell`, the
//! sandbox's own pseudo-terminal as controlling terminal), limits, umask, personality,
//! working directory, every descriptor above 2 closed on exec, capabilities
//! dropped from every set, no_new_privs, and last the seccomp filter.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{chdir, execve, sethostname, setsid, Pid};

use crate::outcome::SetupFailure;
use crate::protocol::{send, HelperInput, Message};
use crate::spec::SandboxSpec;
use crate::{seccomp, setup, sys, trace};

/// Signals init waits for (blocked, then taken with `sigwait`).
pub(crate) fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

fn die(status: &OwnedFd, failure: SetupFailure, code: i32) -> ! {
    send(status, &Message::Failed(failure));
    sys::exit_now(code)
}

/// pid 1. Never returns.
pub(crate) fn init_main(
    mut input: HelperInput,
    status: &OwnedFd,
    lifeline: OwnedFd,
    cgroups: Vec<(&'static str, std::fs::File, std::path::PathBuf)>,
) -> ! {
    // Not dumpable: the build (same uid) must not read init's environment
    // (hermit's, from the host), memory, cwd or root through /proc/1. The
    // command becomes dumpable again when it executes.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        let f = SetupFailure::new("protect init", "prctl", None, Some(e));
        die(status, f, 125);
    }
    // /proc/1/cmdline is readable by anyone whatever the dumpable flag: when
    // init is a clone of `hermit sandbox`, it still shows hermit's command
    // line (host paths, `--env SECRET=…`).
    sys::set_cmdline("hermit-sandbox");
    // Everything init keeps moves above the numbers handed to the command
    // (3–9), so that they can be put in place without clobbering any.
    let lifted = lift(&input, status, lifeline, cgroups);
    let (status_hi, lifeline, cgroups, passed, console) = match lifted {
        Ok(x) => x,
        Err(e) => die(
            status,
            SetupFailure::new("keep init's descriptors", "fcntl", None, Some(e)),
            125,
        ),
    };
    let status = &status_hi;
    if let Err(f) = own_descriptors(
        &mut input,
        status,
        &lifeline,
        &cgroups,
        &passed,
        console.as_ref(),
    ) {
        die(status, f, 125);
    }
    let step = "watch init's parent";
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        die(status, SetupFailure::new(step, "prctl", None, Some(e)), 125);
    }
    // init's parent holds the write end while it waits: a hang-up means
    // it died before the death signal was armed.
    let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
    if let Ok(n) = poll(&mut fds, PollTimeout::ZERO) {
        let hup = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP) && !r.contains(PollFlags::POLLIN));
        if n > 0 && hup {
            sys::exit_now(125);
        }
    }
    // Checked once; from here on PR_SET_PDEATHSIG does the job.
    drop(lifeline);

    let in_cgroups = !cgroups.is_empty();
    // Each file is closed once init has joined its cgroup: the build never
    // sees it among init's descriptors.
    for (step, file, path) in cgroups {
        use std::io::Write;
        let mut file: &std::fs::File = &file;
        if let Err(e) = file.write_all(b"0") {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            let f = SetupFailure::new(step, "write", Some(path.clone()), Some(errno));
            die(status, f, 125);
        }
    }
    if in_cgroups {
        // A cgroup namespace rooted at the slot: the build sees `/`, not
        // which slot it got.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP) {
            let f = SetupFailure::new("root the cgroup namespace", "unshare", None, Some(e));
            die(status, f, 125);
        }
    }

    if let Err(f) = setup::setup(&input.ops) {
        die(status, f, 125);
    }
    let spec = &input.spec;
    if let Err(e) = sethostname(&spec.hostname) {
        let f = SetupFailure::new("set the hostname", "sethostname", None, Some(e));
        die(status, f, 125);
    }
    if let Err(e) = sys::set_domainname(&spec.domainname) {
        let f = SetupFailure::new("set the domain name", "setdomainname", None, Some(e));
        die(status, f, 125);
    }
    if let Err(e) = sys::loopback_up() {
        let f = SetupFailure::new("bring the loopback interface up", "ioctl", None, Some(e));
        die(status, f, 125);
    }

    // The command's own terminal, in the sandbox's devpts: its slave
    // becomes 0–2 (init's, and so the command's), its master goes to hermit.
    if let Some(console) = console {
        let step = "make the command's terminal";
        let slave = match crate::terminal::make_terminal(&console, input.window.as_ref()) {
            Ok(s) => s,
            Err(f) => die(status, f, 125),
        };
        drop(console);
        for r in [
            nix::unistd::dup2_stdin(&slave),
            nix::unistd::dup2_stdout(&slave),
            nix::unistd::dup2_stderr(&slave),
        ] {
            if let Err(e) = r {
                die(status, SetupFailure::new(step, "dup2", None, Some(e)), 125);
            }
        }
    }

    // Everything that allocates is prepared here; the command's process
    // shares init's memory until it executes (no copy of the address space).
    let exec = match Exec::new(spec, input.console.is_some()) {
        Ok(e) => e,
        Err(f) => die(status, f, 125),
    };
    // The socket the command sends its seccomp listener over (above the
    // numbers handed to the command, which must not clobber it).
    let notify = match notify_pair(spec) {
        Ok(n) => n,
        Err(e) => die(
            status,
            SetupFailure::new("prepare the seccomp listener", "socketpair", None, Some(e)),
            125,
        ),
    };
    let send_end = notify.as_ref().map(|n| n.1.as_fd());
    let traced = spec.clock_offset.is_some();
    let cmd = if traced {
        match spawn_traced(spec, &exec, status, &passed, send_end) {
            Ok(pid) => pid,
            Err(f) => die(status, f, 125),
        }
    } else {
        let mut stack = match sys::ChildStack::new(COMMAND_STACK) {
            Ok(s) => s,
            Err(e) => die(
                status,
                SetupFailure::new("start the command", "mmap", None, Some(e)),
                125,
            ),
        };
        let cmd = match sys::spawn_vfork(&mut stack, &mut || {
            command_main(spec, &exec, status, &passed, send_end, None)
        }) {
            Ok(pid) => pid,
            Err(e) => die(
                status,
                SetupFailure::new("start the command", "clone", None, Some(e)),
                125,
            ),
        };
        drop(stack);
        cmd
    };
    drop(exec);
    let answers = Answers {
        uname: notify.as_ref().and_then(|n| n.2.clone()),
        clock_offset: spec.clock_offset,
    };
    let listener = match notify {
        None => Listener::None,
        Some((recv, send, _)) => {
            drop(send);
            if traced {
                // Sent before the command executes: picked up at its
                // first exec stop.
                Listener::Pending(recv)
            } else {
                // The command has executed (or failed): its listener, if
                // it sent one, waits in the socket.
                receive_fd(&recv).map_or(Listener::None, Listener::Ready)
            }
        }
    };
    reap(cmd, status, listener, &answers, traced)
}

/// Starts the command traced by init (the moved clock, see `trace.rs`): a
/// plain `fork` (not `vfork`: init must seize the child before it
/// executes), and a handshake over a socket pair — the child makes itself
/// dumpable (init is not, and its child inherits that until it executes)
/// and says so, init seizes it, then lets it go on.
fn spawn_traced(
    spec: &SandboxSpec,
    exec: &Exec,
    status: &OwnedFd,
    passed: &[(i32, OwnedFd)],
    send_end: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Pid, SetupFailure> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use nix::unistd::{read, write, ForkResult};
    use std::os::fd::AsRawFd;
    let step = "start the command, traced (the moved clock)";
    let fail = |call: &str, e: Errno| SetupFailure::new(step, call, None, Some(e));
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| fail("socketpair", e))?;
    let above = crate::run::PASS_MAX + 1;
    let mine = sys::dup_above(a.as_raw_fd(), above).map_err(|e| fail("fcntl", e))?;
    let theirs = sys::dup_above(b.as_raw_fd(), above).map_err(|e| fail("fcntl", e))?;
    drop((a, b));
    match sys::fork_single_threaded().map_err(|e| fail("fork", e))? {
        ForkResult::Child => {
            drop(mine);
            command_main(spec, exec, status, passed, send_end, Some(theirs.as_fd()))
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            let mut byte = [0u8; 1];
            match read(&mine, &mut byte) {
                Ok(1) => {}
                // It ended before the handshake: its status tells why.
                _ => return Ok(child),
            }
            if let Err(e) = sys::ptrace_seize(child.as_raw(), trace::OPTIONS) {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(SetupFailure::new(
                    "trace the command (the moved clock hides each program's vDSO)",
                    "ptrace(PTRACE_SEIZE)",
                    None,
                    Some(e),
                ));
            }
            write(&mine, b"g").map_err(|e| fail("write", e))?;
            Ok(child)
        }
    }
}

/// The traced command's side of [`spawn_traced`]'s handshake.
fn await_tracer(sock: std::os::fd::BorrowedFd<'_>) -> Result<(), SetupFailure> {
    use nix::unistd::{read, write};
    let f = |call: &str, e: Errno| {
        SetupFailure::new("wait for init to trace the command", call, None, Some(e))
    };
    nix::sys::prctl::set_dumpable(true).map_err(|e| f("prctl", e))?;
    write(sock, b"r").map_err(|e| f("write", e))?;
    let mut byte = [0u8; 1];
    match read(sock, &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err(f("read", Errno::EPIPE)),
        Err(e) => Err(f("read", e)),
    }
}

/// What init answers the command's notified calls with.
struct Answers {
    /// `uname(2)`'s `utsname`.
    uname: Option<Vec<u8>>,
    /// How far the wall clock is moved, in seconds.
    clock_offset: Option<i64>,
}

/// The listener of the command's seccomp filter, as init holds it.
enum Listener {
    None,
    /// Sent by the traced command before it executes; taken from the
    /// socket at its first exec stop.
    Pending(OwnedFd),
    Ready(OwnedFd),
}

/// With `spec.uname` or `spec.clock_offset`: a socket pair (init's end, the
/// command's end), both above the numbers handed to the command, and the
/// `utsname` to answer `uname` with.
type NotifyPair = (OwnedFd, OwnedFd, Option<Vec<u8>>);

fn notify_pair(spec: &SandboxSpec) -> Result<Option<NotifyPair>, Errno> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    if !notify_of(spec).any() {
        return Ok(None);
    }
    let answer = match &spec.uname {
        Some(u) => Some(utsname_answer(u, spec.linux32)?),
        None => None,
    };
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let above = crate::run::PASS_MAX + 1;
    let a = sys::dup_above(a.as_raw_fd(), above)?;
    let b = sys::dup_above(b.as_raw_fd(), above)?;
    Ok(Some((a, b, answer)))
}

/// `struct utsname` (six fields of 65 bytes) as this sandbox's `uname(2)`
/// fills it, with `u`'s release and version; `linux32` gives the machine
/// name `PER_LINUX32` would.
fn utsname_answer(u: &crate::spec::Uname, linux32: bool) -> Result<Vec<u8>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    const FIELD: usize = 65;
    let real = nix::sys::utsname::uname()?;
    let machine: &[u8] = match (linux32, real.machine().as_bytes()) {
        (true, b"x86_64") => b"i686",
        (true, b"aarch64") => b"armv8l",
        (_, m) => m,
    };
    let fields: [&[u8]; 6] = [
        real.sysname().as_bytes(),
        real.nodename().as_bytes(),
        u.release.as_bytes(),
        u.version.as_bytes(),
        machine,
        real.domainname().as_bytes(),
    ];
    let mut out = vec![0u8; FIELD * fields.len()];
    for (i, f) in fields.iter().enumerate() {
        let n = f.len().min(FIELD - 1);
        out[i * FIELD..i * FIELD + n].copy_from_slice(&f[..n]);
    }
    Ok(out)
}

/// The listener the command sent, if it sent one (it has executed or
/// ended by now, so nothing more is coming).
fn receive_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(libc::c_int);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut got = None;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // The first is kept, any other closed.
                let owned = sys::own_received(fd);
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    got
}

/// The calls the command's seccomp filter hands to init.
fn notify_of(spec: &SandboxSpec) -> seccomp::Notify {
    seccomp::Notify {
        uname: spec.uname.is_some(),
        clock: spec.clock_offset.is_some(),
    }
}

/// Answers one pending notification: `uname`, or a read of the moved
/// wall clock.
fn answer(listener: &OwnedFd, answers: &Answers) {
    use nix::sys::uio::{process_vm_writev, RemoteIoVec};
    let Ok(n) = sys::notif_recv(listener.as_fd()) else {
        return; // the caller died meanwhile
    };
    let nr = i64::from(n.nr);
    let (uname, clock): (Option<&[u8]>, Option<Result<_, Errno>>) = match answers {
        Answers { uname: Some(a), .. } if nr == libc::SYS_uname => (Some(a.as_slice()), None),
        Answers {
            clock_offset: Some(off),
            ..
        } if nr != libc::SYS_uname => (None, Some(trace::clock_answer(nr, &n.args, *off))),
        _ => (None, None),
    };
    // The pid still names the caller only while it waits in the call.
    if !sys::notif_id_valid(listener.as_fd(), n.id) {
        return;
    }
    let write = |at: u64, bytes: &[u8]| {
        let remote = [RemoteIoVec {
            base: at as usize,
            len: bytes.len(),
        }];
        let w = process_vm_writev(
            Pid::from_raw(n.pid),
            &[std::io::IoSlice::new(bytes)],
            &remote,
        );
        matches!(w, Ok(w) if w == bytes.len())
    };
    let (val, errno) = match (uname, clock) {
        (Some(a), _) => (0, if write(n.arg0, a) { 0 } else { libc::EFAULT }),
        (None, Some(Ok((writes, val)))) => {
            if writes.iter().all(|(at, bytes)| write(*at, bytes)) {
                (val, 0)
            } else {
                (0, libc::EFAULT)
            }
        }
        (None, Some(Err(e))) => (0, e as i32),
        (None, None) => (0, libc::ENOSYS),
    };
    let _ = sys::notif_send(listener.as_fd(), n.id, val, errno);
}

/// Init's descriptors moved to 10 and above: the status pipe, the lifeline,
/// the cgroup files, and the descriptors handed to the command (with their
/// numbers there).
type Lifted = (
    OwnedFd,
    OwnedFd,
    Vec<(&'static str, std::fs::File, std::path::PathBuf)>,
    Vec<(i32, OwnedFd)>,
    Option<OwnedFd>,
);

fn lift(
    input: &HelperInput,
    status: &OwnedFd,
    lifeline: OwnedFd,
    cgroups: Vec<(&'static str, std::fs::File, std::path::PathBuf)>,
) -> Result<Lifted, Errno> {
    use std::os::fd::AsRawFd;
    let above = crate::run::PASS_MAX + 1;
    let status = sys::dup_above(status.as_raw_fd(), above)?;
    let lifeline = sys::dup_above(lifeline.as_raw_fd(), above)?;
    let mut files = Vec::new();
    for (step, file, path) in cgroups {
        let fd = sys::dup_above(file.as_raw_fd(), above)?;
        files.push((step, std::fs::File::from(fd), path));
    }
    let mut passed = Vec::new();
    for &(number, raw) in &input.pass {
        passed.push((number, sys::dup_above(raw, above)?));
    }
    let console = match input.console {
        Some(raw) => Some(sys::dup_above(raw, above)?),
        None => None,
    };
    Ok((status, lifeline, files, passed, console))
}

/// Gives init (and so the command) the descriptors 0–2 chosen by hermit,
/// and closes every other descriptor init inherited except the ones it uses:
/// a clone of hermit holds whatever hermit had open (pipes, the pids
/// cgroup's slot lock, …), and the build can list `/proc/1/fd`.
fn own_descriptors(
    input: &mut HelperInput,
    status: &OwnedFd,
    lifeline: &OwnedFd,
    cgroups: &[(&str, std::fs::File, std::path::PathBuf)],
    passed: &[(i32, OwnedFd)],
    console: Option<&OwnedFd>,
) -> Result<(), SetupFailure> {
    use std::os::fd::AsRawFd;
    let step = "set up the command's standard descriptors";
    if let Some([fd0, fd1, fd2]) = input.stdio.take() {
        nix::unistd::dup2_stdin(&fd0)
            .map_err(|e| SetupFailure::new(step, "dup2", None, Some(e)))?;
        nix::unistd::dup2_stdout(&fd1)
            .map_err(|e| SetupFailure::new(step, "dup2", None, Some(e)))?;
        nix::unistd::dup2_stderr(&fd2)
            .map_err(|e| SetupFailure::new(step, "dup2", None, Some(e)))?;
    }
    let mut keep = vec![0, 1, 2, status.as_raw_fd(), lifeline.as_raw_fd()];
    keep.extend(cgroups.iter().map(|(_, file, _)| file.as_raw_fd()));
    keep.extend(passed.iter().map(|(_, fd)| fd.as_raw_fd()));
    keep.extend(console.map(|fd| fd.as_raw_fd()));
    sys::close_all_except(&keep)
        .map_err(|e| SetupFailure::new("close inherited descriptors", "close_range", None, Some(e)))
}

/// init's loop: reap, forward, answer the seccomp listener, resume
/// tracees (the moved clock), and leave with the command.
fn reap(cmd: Pid, status: &OwnedFd, mut listener: Listener, answers: &Answers, traced: bool) -> ! {
    let set = waited_signals();
    // With a listener or tracees, the signals come through a signalfd
    // polled beside the listener.
    let sfd = (traced || !matches!(listener, Listener::None))
        .then(|| {
            use nix::sys::signalfd::{SfdFlags, SignalFd};
            SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok()
        })
        .flatten();
    if sfd.is_none() {
        listener = Listener::None;
    }
    // Tracees are reported as threads too.
    let wait_flags = if traced { libc::__WALL } else { 0 };
    loop {
        let sig = match &sfd {
            Some(sfd) => {
                let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
                if let Listener::Ready(l) = &listener {
                    fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                }
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue;
                }
                let ready = |i: usize, f: PollFlags| {
                    fds.get(i)
                        .and_then(|p| p.revents())
                        .is_some_and(|r| r.intersects(f))
                };
                let (sig_ready, notif, gone) = (
                    ready(0, PollFlags::POLLIN),
                    ready(1, PollFlags::POLLIN),
                    ready(1, PollFlags::POLLHUP | PollFlags::POLLERR),
                );
                drop(fds);
                if let Listener::Ready(l) = &listener {
                    if notif {
                        answer(l, answers);
                    } else if gone {
                        // No process uses the filter any more.
                        listener = Listener::None;
                    }
                }
                if !sig_ready {
                    continue;
                }
                match sfd.read_signal() {
                    Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                        Ok(s) => s,
                        Err(_) => continue,
                    },
                    _ => continue,
                }
            }
            None => match set.wait() {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(cmd, sig);
            continue;
        }
        while let Ok(Some((pid, st))) = sys::wait_any(wait_flags) {
            if libc::WIFEXITED(st) && pid == cmd.as_raw() {
                let code = libc::WEXITSTATUS(st);
                send(status, &Message::Exited(code));
                sys::exit_now(code);
            }
            if libc::WIFSIGNALED(st) && pid == cmd.as_raw() {
                let s = libc::WTERMSIG(st);
                send(status, &Message::Signaled(s));
                sys::exit_now(128 + s);
            }
            if traced && libc::WIFSTOPPED(st) && trace::resume(pid, st) == trace::Stop::Exec {
                if let Listener::Pending(sock) = &listener {
                    listener = receive_fd(sock).map_or(Listener::None, Listener::Ready);
                }
            }
        }
    }
}

/// The stack of the command's process until it executes.
const COMMAND_STACK: usize = 256 << 10;

/// The command's process from `clone` to `execve`. Never returns.
fn command_main(
    spec: &SandboxSpec,
    exec: &Exec,
    status: &OwnedFd,
    passed: &[(i32, OwnedFd)],
    notify: Option<std::os::fd::BorrowedFd<'_>>,
    tracer: Option<std::os::fd::BorrowedFd<'_>>,
) -> ! {
    if let Some(sock) = tracer {
        if let Err(f) = await_tracer(sock) {
            die(status, f, 125)
        }
    }
    match prepare_command(spec, exec, passed, notify) {
        Ok(()) => {
            send(status, &Message::Ready);
            let e = exec.run();
            let mut f = SetupFailure::new(
                "execute the command",
                "execve",
                Some(exec.shown.clone().into()),
                Some(e),
            );
            f.exec = true;
            let code = if e == Errno::ENOENT { 127 } else { 126 };
            die(status, f, code)
        }
        Err(f) => die(status, f, 125),
    }
}

/// Everything `execve` needs, and the seccomp filter, prepared by init.
struct Exec {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    shown: String,
    filter: Vec<libc::sock_filter>,
    /// Descriptor 0 is the command's own terminal: make it the controlling
    /// terminal of the command's session.
    ctty: bool,
}

impl Exec {
    fn new(spec: &SandboxSpec, ctty: bool) -> Result<Exec, SetupFailure> {
        let step = "prepare the command";
        let argv = spec
            .command
            .iter()
            .map(|a| cstring(step, a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = spec
            .env
            .iter()
            .map(|(k, v)| cstring(step, &format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let prog = &spec.command[0];
        let candidates = if prog.contains('/') {
            vec![cstring(step, prog)?]
        } else {
            let path = spec
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                // `validate` refuses a bare name without a PATH.
                .unwrap_or_default();
            path.split(':')
                .map(|d| {
                    let d = if d.is_empty() { "." } else { d };
                    cstring(step, &Path::new(d).join(prog).to_string_lossy())
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Exec {
            candidates,
            argv,
            envp,
            shown: prog.clone(),
            filter: seccomp::filter_with(notify_of(spec)),
            ctty,
        })
    }

    /// Tries each candidate like `execvp`; returns the errno to report.
    fn run(&self) -> Errno {
        let mut err = Errno::ENOENT;
        for c in &self.candidates {
            let e = match execve(c, &self.argv, &self.envp) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            if e == Errno::EACCES || err != Errno::EACCES {
                err = e;
            }
            if !matches!(e, Errno::ENOENT | Errno::EACCES | Errno::ENOTDIR) {
                return e;
            }
        }
        err
    }
}

fn cstring(step: &str, s: &str) -> Result<CString, SetupFailure> {
    CString::new(s).map_err(|_| SetupFailure::new(step, "argument", None, Some(Errno::EINVAL)))
}

/// The command's process settings, in order; the seccomp filter last.
fn prepare_command(
    spec: &SandboxSpec,
    exec: &Exec,
    passed: &[(i32, OwnedFd)],
    notify: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), SetupFailure> {
    let f = |step: &str, call: &str, e: Errno| SetupFailure::new(step, call, None, Some(e));

    sys::reset_signal_dispositions();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| f("reset the signal mask", "sigprocmask", e))?;
    setsid().map_err(|e| f("start a new session", "setsid", e))?;
    if exec.ctty {
        sys::set_controlling_terminal(0)
            .map_err(|e| f("take the terminal", "ioctl(TIOCSCTTY)", e))?;
    }

    let limits = &spec.limits;
    let set = |what: &str, r: Resource, v: u64| {
        let (_, hard) = getrlimit(r).map_err(|e| f(what, "getrlimit", e))?;
        let v = v.min(hard);
        setrlimit(r, v, v).map_err(|e| f(what, "setrlimit", e))
    };
    if let Some(n) = limits.max_processes {
        // The count is per user namespace and uid: the helper and init are
        // counted too.
        set(
            "limit the number of processes",
            Resource::RLIMIT_NPROC,
            u64::from(n) + 2,
        )?;
    }
    if let Some(n) = limits.max_open_files {
        set("limit open files", Resource::RLIMIT_NOFILE, n)?;
    }
    if let Some(n) = limits.max_file_size {
        set("limit file size", Resource::RLIMIT_FSIZE, n)?;
    }
    if let Some(n) = limits.max_data {
        set("limit memory (data segment)", Resource::RLIMIT_DATA, n)?;
    }
    set(
        "limit core dumps",
        Resource::RLIMIT_CORE,
        limits.max_core_size,
    )?;

    nix::sys::stat::umask(Mode::from_bits_truncate(spec.umask as libc::mode_t));
    if !spec.aslr || spec.linux32 {
        use nix::sys::personality::{self, Persona};
        let step = "set the personality (ASLR, machine name)";
        let mut p = personality::get().map_err(|e| f(step, "personality", e))?;
        if !spec.aslr {
            p |= Persona::ADDR_NO_RANDOMIZE;
        }
        if spec.linux32 {
            // The execution domain is the low byte: PER_LINUX (0) becomes
            // PER_LINUX32, which only changes what uname(2) reports.
            p = Persona::from_bits_retain((p.bits() & !0xff) | PER_LINUX32);
        }
        personality::set(p).map_err(|e| f(step, "personality", e))?;
    }
    if let Some(n) = spec.cpus {
        restrict_cpus(n).map_err(|e| f("restrict the CPUs", "sched_setaffinity", e))?;
    }
    chdir(&spec.cwd).map_err(|e| {
        SetupFailure::new(
            "enter the working directory",
            "chdir",
            Some(spec.cwd.clone()),
            Some(e),
        )
    })?;
    sys::cloexec_from(3).map_err(|e| f("close inherited descriptors", "close_range", e))?;
    // …except the ones hermit hands over, at their numbers (init keeps all
    // of its own above them).
    for (number, fd) in passed {
        sys::dup_to(fd, *number).map_err(|e| f("hand over a descriptor", "dup2", e))?;
    }

    drop_capabilities().map_err(|e| f("drop capabilities", "capset", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| f("set no_new_privs", "prctl", e))?;
    match notify {
        None => sys::install_seccomp(&exec.filter)
            .map_err(|e| f("install the seccomp filter", "prctl", e))?,
        Some(sock) => {
            // uname(2) goes to init: the listener travels to it now, and
            // closes here on exec.
            let listener = sys::install_seccomp_listener(&exec.filter)
                .map_err(|e| f("install the seccomp filter", "seccomp", e))?;
            sys::send_fd(sock, listener.as_fd())
                .map_err(|e| f("hand the seccomp listener to init", "sendmsg", e))?;
        }
    }
    Ok(())
}

/// `PER_LINUX32` of `<linux/personality.h>`.
const PER_LINUX32: libc::c_int = 0x0008;

/// Keeps the first `n` CPUs of the ones this process may run on.
fn restrict_cpus(n: u32) -> Result<(), Errno> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let now = sched_getaffinity(Pid::from_raw(0))?;
    let mut keep = CpuSet::new();
    let mut kept = 0;
    for cpu in 0..CpuSet::count() {
        if kept == n {
            break;
        }
        if now.is_set(cpu)? {
            keep.set(cpu)?;
            kept += 1;
        }
    }
    sched_setaffinity(Pid::from_raw(0), &keep)
}

/// Empties the bounding, ambient, inheritable, effective and permitted sets.
fn drop_capabilities() -> Result<(), Errno> {
    use caps::CapSet;
    let to_errno = |_| Errno::EPERM;
    caps::clear(None, CapSet::Bounding).map_err(to_errno)?;
    caps::clear(None, CapSet::Ambient).map_err(to_errno)?;
    caps::clear(None, CapSet::Inheritable).map_err(to_errno)?;
    caps::clear(None, CapSet::Effective).map_err(to_errno)?;
    caps::clear(None, CapSet::Permitted).map_err(to_errno)?;
    Ok(())
}
