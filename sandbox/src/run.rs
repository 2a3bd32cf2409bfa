//! The parent side: plan, spawn the helper, feed it, watch the clock.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};

use crate::outcome::{Outcome, SetupFailure};
use crate::plan::{plan, Op};
use crate::protocol::{take_messages, HelperInput, Message};
use crate::spec::{Mount, SandboxSpec, SpecError};
use crate::{cgroup, sys, HELPER_ARG};

/// Failures of hermit's own side of a run (not of the sandbox's setup,
/// which come back as [`Outcome::SetupFailed`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid sandbox spec")]
    Spec(#[from] SpecError),
    #[error("creating a pipe to the sandbox helper")]
    Pipe(#[source] Errno),
    #[error("starting the sandbox helper {}", exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the sandbox helper")]
    Io(#[source] std::io::Error),
    #[error("the sandbox sent a message hermit does not understand: {0}")]
    Protocol(String),
    #[error("the sandbox helper ended ({0}) without saying how the command ended")]
    NoReport(String),
    #[error(
        "standard input is a terminal; hermit never hands a terminal to the sandbox \
         (pipe or redirect the input instead, e.g. `cat | hermit …` or `< FILE`)"
    )]
    StdinIsTerminal,
    #[error("preparing the command's standard input and output")]
    Stdio(#[source] std::io::Error),
    #[error("descriptor {0} cannot be handed to the command: numbers 3 to 9, each once")]
    PassNumber(i32),
    #[error("preparing a descriptor handed to the command")]
    Pass(#[source] Errno),
}

/// A descriptor handed to the command at a fixed number, e.g. the two ends
/// of a GNU make jobserver's pipe at 3 and 4. Nothing but 0–2 and these
/// reaches the command; they are open in every process of the sandbox
/// that does not close them (so in the build's whole process tree).
#[derive(Debug)]
pub struct PassFd {
    /// The number the command sees: 3 to 9.
    pub number: i32,
    pub fd: OwnedFd,
}

/// The highest number a [`PassFd`] may take; init keeps its own
/// descriptors above it.
pub(crate) const PASS_MAX: i32 = 9;

/// What the command reads on descriptor 0.
#[derive(Debug, Default)]
pub enum Stdin {
    /// `/dev/null` (what `hermit build` gives every build).
    #[default]
    Null,
    /// This pipe or file. A terminal is refused ([`RunError::StdinIsTerminal`]).
    From(OwnedFd),
    /// A pseudo-terminal init makes in the sandbox's own devpts, of `size`:
    /// the command's descriptors 0–2 and its controlling terminal. Its
    /// master is sent over `console` (the second end of
    /// [`crate::terminal::console`]); see [`crate::terminal::relay`].
    Terminal {
        console: OwnedFd,
        size: Option<crate::terminal::WindowSize>,
    },
}

/// Runs `spec.command` in the sandbox and waits for it. Blocks the calling
/// thread, which must stay alive until this returns (the sandbox is tied to
/// it by PR_SET_PDEATHSIG). The current executable must call
/// [`crate::enter_if_requested`] first thing in `main`.
///
/// The command's standard input is `/dev/null`; its standard output and
/// error are hermit's own, except that a terminal is never handed over: when
/// hermit's descriptor 1 or 2 is a terminal, the command writes into a pipe
/// hermit owns and hermit copies it to the terminal. So a build can neither
/// read the caller's keystrokes nor change the caller's terminal (its mode,
/// echo, `TIOCEXCL`), and its outputs cannot depend on what stdin held.
pub fn run(spec: &SandboxSpec) -> Result<Outcome, RunError> {
    run_with_stdin(spec, Stdin::Null)
}

/// [`run`] with the command's standard input given.
pub fn run_with_stdin(spec: &SandboxSpec, stdin: Stdin) -> Result<Outcome, RunError> {
    run_inner(
        spec,
        Path::new("/proc/self/exe"),
        stdin,
        None,
        None,
        Vec::new(),
    )
    .map(|r| r.outcome)
}

/// [`run`] with another executable as the helper (one whose `main` calls
/// [`crate::enter_if_requested`]).
pub fn run_with_helper(spec: &SandboxSpec, helper: &Path) -> Result<Outcome, RunError> {
    run_inner(spec, helper, Stdin::Null, None, None, Vec::new()).map(|r| r.outcome)
}

/// One of hermit's terminals the command writes to through a pipe.
struct Relay {
    from: std::fs::File,
    /// hermit's descriptor (1 or 2) it is copied to.
    to: i32,
}

/// The command's descriptors 0–2 (all at 3 or above, close-on-exec), and
/// the relays hermit runs for those that stand in for a terminal.
fn command_stdio(
    stdin: Stdin,
    output: Option<OwnedFd>,
) -> Result<([OwnedFd; 3], Vec<Relay>), RunError> {
    let io = RunError::Stdio;
    let null = |write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    // `try_clone` duplicates to a descriptor >= 3 (F_DUPFD_CLOEXEC, 3).
    let above_2 = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
        if fd.as_raw_fd() < 3 {
            fd.try_clone()
        } else {
            Ok(fd)
        }
    };
    let fd0 = match stdin {
        Stdin::Null => above_2(null(false).map_err(io)?).map_err(io)?,
        Stdin::Terminal { .. } => {
            // Init replaces all three with the terminal's slave.
            let fd0 = above_2(null(false).map_err(io)?).map_err(io)?;
            let fd1 = above_2(null(true).map_err(io)?).map_err(io)?;
            let fd2 = fd1.try_clone().map_err(io)?;
            return Ok(([fd0, fd1, fd2], Vec::new()));
        }
        Stdin::From(fd) => {
            if nix::unistd::isatty(&fd).unwrap_or(false) {
                return Err(RunError::StdinIsTerminal);
            }
            above_2(fd).map_err(io)?
        }
    };
    if let Some(fd) = output {
        // The caller's pipe or file takes both stdout and stderr.
        let fd1 = above_2(fd).map_err(io)?;
        let fd2 = fd1.try_clone().map_err(io)?;
        return Ok(([fd0, fd1, fd2], Vec::new()));
    }
    let out = std::io::stdout();
    let err = std::io::stderr();
    let tty1 = nix::unistd::isatty(out.as_fd()).unwrap_or(false);
    let tty2 = nix::unistd::isatty(err.as_fd()).unwrap_or(false);
    let mut relays = Vec::new();
    let mut pipe_to = |to: i32| -> Result<OwnedFd, RunError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RunError::Pipe)?;
        relays.push(Relay {
            from: std::fs::File::from(r),
            to,
        });
        above_2(w).map_err(io)
    };
    // hermit's own descriptor, or /dev/null if it has none open.
    let own = |fd: std::os::fd::BorrowedFd<'_>| match fd.try_clone_to_owned() {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => null(true).and_then(above_2),
        Err(e) => Err(e),
    };
    let same_terminal = tty1 && tty2 && {
        let id = |fd| nix::sys::stat::fstat(fd).map(|s| (s.st_dev, s.st_ino, s.st_rdev));
        matches!((id(out.as_fd()), id(err.as_fd())), (Ok(a), Ok(b)) if a == b)
    };
    let fd1 = if tty1 {
        pipe_to(1)?
    } else {
        own(out.as_fd()).map_err(io)?
    };
    let fd2 = if same_terminal {
        // One pipe for both keeps their order on the terminal.
        fd1.try_clone().map_err(io)?
    } else if tty2 {
        pipe_to(2)?
    } else {
        own(err.as_fd()).map_err(io)?
    };
    Ok(([fd0, fd1, fd2], relays))
}

/// Copies what is waiting in `relay` to its terminal; false at end of file.
fn relay_once(relay: &mut Relay, chunk: &mut [u8]) -> bool {
    let n = match relay.from.read(chunk) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
        Err(_) => return false,
    };
    let out = std::io::stdout();
    let err = std::io::stderr();
    let to = if relay.to == 1 {
        out.as_fd()
    } else {
        err.as_fd()
    };
    let mut rest = &chunk[..n];
    while !rest.is_empty() {
        match nix::unistd::write(to, rest) {
            Ok(0) => break,
            Ok(k) => rest = &rest[k..],
            Err(Errno::EINTR) => continue,
            // The terminal is gone: keep draining the pipe, drop the text.
            Err(_) => break,
        }
    }
    true
}

/// How [`crate::Limits::max_memory`] was enforced in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// No memory limit was asked for.
    None,
    /// A memory cgroup of this version bounded the whole sandbox;
    /// `oom_kills` processes were killed by the kernel for exceeding it.
    Cgroup { version: u8, oom_kills: u64 },
    /// No memory cgroup could be had: every process had RLIMIT_DATA of the
    /// limit instead (a process over it sees allocations fail).
    PerProcess,
}

/// A run's outcome, with what the limits did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: Outcome,
    pub memory: MemoryLimit,
    /// The caller's watch asked for the sandbox to be stopped; every
    /// process in it was killed.
    pub stopped: bool,
}

/// Something the caller checks while the sandbox runs: called every
/// `every`; when `check` returns true, every process in the sandbox is
/// killed and [`RunReport::stopped`] is set.
pub struct Watch<'a> {
    pub every: Duration,
    pub check: &'a mut dyn FnMut() -> bool,
}

/// The earlier of two instants, either of which may be missing.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// [`run_with_helper`], with the caller's [`Watch`] and a full report; the
/// command reads `/dev/null`.
pub fn run_watched(
    spec: &SandboxSpec,
    helper: &Path,
    watch: Option<Watch<'_>>,
) -> Result<RunReport, RunError> {
    run_inner(spec, helper, Stdin::Null, None, watch, Vec::new())
}

/// [`run_watched`], handing the command the descriptors `pass` at their
/// numbers (see [`PassFd`]).
pub fn run_watched_passing(
    spec: &SandboxSpec,
    helper: &Path,
    watch: Option<Watch<'_>>,
    pass: Vec<PassFd>,
) -> Result<RunReport, RunError> {
    run_inner(spec, helper, Stdin::Null, None, watch, pass)
}

/// [`run_watched_passing`], with the command's stdout and stderr both going
/// to `output` (a pipe or file of the caller's) instead of hermit's own, so
/// that several sandboxes can run at once from one process.
pub fn run_watched_to(
    spec: &SandboxSpec,
    helper: &Path,
    output: OwnedFd,
    watch: Option<Watch<'_>>,
    pass: Vec<PassFd>,
) -> Result<RunReport, RunError> {
    run_inner(spec, helper, Stdin::Null, Some(output), watch, pass)
}

/// The most general run: the command's standard input as `stdin` says
/// (with [`Stdin::Terminal`], a terminal of its own on 0–2), its stdout
/// and stderr hermit's own (a terminal through a pipe, see [`run`]), the
/// caller's [`Watch`], and `pass` handed over at their numbers.
pub fn run_full(
    spec: &SandboxSpec,
    helper: &Path,
    stdin: Stdin,
    watch: Option<Watch<'_>>,
    pass: Vec<PassFd>,
) -> Result<RunReport, RunError> {
    run_inner(spec, helper, stdin, None, watch, pass)
}

/// Checks the numbers of `pass` and moves each descriptor to 10 or above
/// (close-on-exec), clear of the command's 0–9.
fn lift_passed(pass: Vec<PassFd>) -> Result<Vec<(i32, OwnedFd)>, RunError> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for p in pass {
        if !(3..=PASS_MAX).contains(&p.number) || seen.contains(&p.number) {
            return Err(RunError::PassNumber(p.number));
        }
        seen.push(p.number);
        let fd = sys::dup_above(p.fd.as_raw_fd(), PASS_MAX + 1).map_err(RunError::Pass)?;
        out.push((p.number, fd));
    }
    Ok(out)
}

fn run_inner(
    spec: &SandboxSpec,
    helper: &Path,
    stdin: Stdin,
    output: Option<OwnedFd>,
    mut watch: Option<Watch<'_>>,
    pass: Vec<PassFd>,
) -> Result<RunReport, RunError> {
    let ops = plan(spec)?;
    let passed = lift_passed(pass)?;
    let (mut spec, ops) = match resolve_sources(spec, ops) {
        Ok(x) => x,
        Err(f) => {
            return Ok(RunReport {
                outcome: Outcome::SetupFailed(f),
                memory: MemoryLimit::None,
                stopped: false,
            })
        }
    };
    // RLIMIT_NPROC never binds host root (the kernel exempts uid 0 whatever
    // the namespace), nor is it per user namespace before Linux 5.14.
    let want_cgroup = spec.limits.pids_cgroup
        || nix::unistd::geteuid().is_root()
        || !cgroup::nproc_is_per_userns();
    let cgroup = spec
        .limits
        .max_processes
        .filter(|_| want_cgroup)
        .and_then(|n| cgroup::create(n.saturating_add(2)).ok());
    // Memory: a cgroup for the whole sandbox where one can be had, else
    // RLIMIT_DATA for every process.
    let memory_cgroup = spec
        .limits
        .max_memory
        .and_then(|m| cgroup::create_memory(m, cgroup.as_ref()).ok());
    let max_memory = spec.limits.max_memory;
    if memory_cgroup.is_none() {
        spec.limits.max_data = max_memory.or(spec.limits.max_data);
    }

    let (console, window) = match &stdin {
        Stdin::Terminal { console, size } => (
            Some(sys::dup_above(console.as_raw_fd(), PASS_MAX + 1).map_err(RunError::Pass)?),
            *size,
        ),
        _ => (None, None),
    };
    let (stdio, mut relays) = command_stdio(stdin, output)?;
    let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RunError::Pipe)?;
    let (st_r, st_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RunError::Pipe)?;
    let input = HelperInput {
        spec,
        ops,
        parent: std::process::id() as i32,
        cgroup: cgroup.as_ref().map(|c| c.path.clone()),
        memory_cgroup: memory_cgroup.as_ref().and_then(|m| m.join.clone()),
        outer_uid: nix::unistd::geteuid().as_raw(),
        outer_gid: nix::unistd::getegid().as_raw(),
        stdio: None,
        pass: passed.iter().map(|(n, fd)| (*n, fd.as_raw_fd())).collect(),
        console: console.as_ref().map(|fd| fd.as_raw_fd()),
        window,
    };
    let timeout = input.spec.timeout;
    let start = Instant::now();
    // Who hermit waits for: init itself when hermit is its parent, else the
    // helper. `_lifeline` is held until the run ends (init dies with it).
    let (child, direct, _lifeline) = if sys::is_single_threaded() {
        // A single-threaded caller (the `hermit sandbox` CLI) starts init
        // itself, with one clone into the new namespaces: no helper process,
        // no second execution of hermit.
        drop(in_r);
        drop(in_w);
        let mut input = input;
        input.stdio = Some(stdio);
        let signals = crate::init::waited_signals();
        let mut old = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), Some(&mut old))
            .map_err(|e| RunError::Io(e.into()))?;
        let started = crate::intermediate::start_init(input, &st_w);
        // Cannot fail with a mask sigprocmask itself returned; and init is
        // running by now, so there is no going back anyway.
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        match started {
            Ok(init) => (Some(init.pid), true, Some(init.lifeline)),
            // The reason is already in the status pipe.
            Err(_) => (None, true, None),
        }
    } else {
        // The helper's (and so init's) 0–2 are the command's, its input
        // and status pipes are 3 and 4, passed descriptors follow; and it
        // needs none of hermit's environment (which init, pid 1 inside,
        // would otherwise carry).
        let mut input = input;
        const FIRST_PASSED: i32 = 5;
        input.pass = passed
            .iter()
            .zip(FIRST_PASSED..)
            .map(|((n, _), at)| (*n, at))
            .collect();
        // The terminal's socket (hermit shell) after the passed ones.
        let console_at = FIRST_PASSED + passed.len() as i32;
        input.console = console.as_ref().map(|_| console_at);
        let payload = serde_json::to_vec(&input).map_err(|e| RunError::Protocol(e.to_string()))?;
        let mut fds: Vec<(std::os::fd::BorrowedFd<'_>, i32)> = vec![
            (stdio[0].as_fd(), 0),
            (stdio[1].as_fd(), 1),
            (stdio[2].as_fd(), 2),
            (in_r.as_fd(), 3),
            (st_w.as_fd(), 4),
        ];
        fds.extend(
            passed
                .iter()
                .zip(FIRST_PASSED..)
                .map(|((_, fd), at)| (fd.as_fd(), at)),
        );
        if let Some(c) = console.as_ref() {
            fds.push((c.as_fd(), console_at));
        }
        let in_order: Vec<_> = fds.iter().map(|(fd, _)| *fd).collect();
        let child =
            match crate::zygote::spawn(helper, &in_order) {
                Some(pid) => pid,
                None => sys::spawn_helper(helper, &["hermit", HELPER_ARG, "3", "4"], &fds)
                    .map_err(|e| RunError::Spawn {
                        exe: helper.to_path_buf(),
                        source: e.into(),
                    })?,
            };
        drop(in_order);
        drop(fds);
        drop(stdio);
        drop(in_r);
        // A write error means the helper died early; its status tells why.
        let _ = std::fs::File::from(in_w).write_all(&payload);
        (Some(child), false, None)
    };
    drop(st_w);
    // init has its own copies now (or never will).
    drop(passed);
    drop(console);
    let mut status_open = true;

    let deadline = timeout.map(|t| (start + t, t));
    let mut status_pipe = std::fs::File::from(st_r);
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    let mut timed_out = None;
    let mut stopped = false;
    let mut killed_at: Option<Instant> = None;
    let mut next_watch = watch.as_ref().map(|w| start + w.every);
    let mut chunk = [0u8; 4096];
    loop {
        // After SIGTERM the helper kills init at once; give it 5 s before
        // killing the helper itself. Before that: the deadline, the watch.
        let wake = match killed_at {
            Some(k) => Some(k + Duration::from_secs(5)),
            None if timed_out.is_none() && !stopped => {
                earliest(deadline.map(|(d, _)| d), next_watch)
            }
            None => None,
        };
        let timeout = match wake {
            None => PollTimeout::NONE,
            Some(w) => {
                let w = w.saturating_duration_since(Instant::now());
                PollTimeout::try_from(w.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        if !status_open && relays.is_empty() {
            break;
        }
        let mut fds: Vec<PollFd> = relays
            .iter()
            .map(|r| PollFd::new(r.from.as_fd(), PollFlags::POLLIN))
            .collect();
        if status_open {
            fds.push(PollFd::new(status_pipe.as_fd(), PollFlags::POLLIN));
        }
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(RunError::Io(e.into())),
        };
        let has_input = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let relay_ready: Vec<bool> = fds[..relays.len()].iter().map(has_input).collect();
        let status_ready = status_open && fds.last().is_some_and(has_input);
        drop(fds);
        if ready > 0 {
            let mut ready_iter = relay_ready.into_iter();
            relays.retain_mut(|r| !ready_iter.next().unwrap_or(false) || relay_once(r, &mut chunk));
            if !status_ready {
                continue;
            }
        }
        if ready == 0 {
            let now = Instant::now();
            if let Some(k) = killed_at {
                if now >= k + Duration::from_secs(5) {
                    if let Some(pid) = child {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    killed_at = None;
                }
                continue;
            }
            if timed_out.is_some() || stopped {
                continue;
            }
            let timed = deadline.filter(|(d, _)| now >= *d).map(|(_, t)| t);
            let watched = match (next_watch, watch.as_mut()) {
                (Some(n), Some(w)) if timed.is_none() && now >= n => {
                    next_watch = Some(now + w.every);
                    (w.check)()
                }
                _ => false,
            };
            if timed.is_none() && !watched {
                continue;
            }
            timed_out = timed;
            stopped = watched;
            if let Some(pid) = child {
                if direct {
                    // init's death takes every process of its namespace
                    // with it.
                    let _ = kill(pid, Signal::SIGKILL);
                } else {
                    // The helper kills init and then leaves.
                    killed_at = Some(now);
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
            continue;
        }
        let n = match status_pipe.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RunError::Io(e)),
        };
        if n == 0 {
            status_open = false;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        messages.extend(take_messages(&mut buf).map_err(RunError::Protocol)?);
    }
    let status = match child {
        None => None,
        Some(pid) => loop {
            match nix::sys::wait::waitpid(pid, None) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(RunError::Io(e.into())),
                Ok(s) => break Some(s),
            }
        },
    };
    let memory = match (&memory_cgroup, max_memory) {
        (Some(m), _) => MemoryLimit::Cgroup {
            version: m.version(),
            oom_kills: m.oom_kills(),
        },
        (None, Some(_)) => MemoryLimit::PerProcess,
        (None, None) => MemoryLimit::None,
    };
    drop(memory_cgroup);
    drop(cgroup);
    let report = |outcome| RunReport {
        outcome,
        memory,
        stopped,
    };

    if let Some(t) = timed_out {
        return Ok(report(Outcome::TimedOut(t)));
    }
    let mut end = None;
    for m in messages {
        match m {
            Message::Failed(f) => return Ok(report(Outcome::SetupFailed(f))),
            Message::Exited(c) => end = Some(Outcome::Exited(c)),
            Message::Signaled(s) => end = Some(Outcome::Signaled(s)),
            Message::Ready => {}
        }
    }
    if stopped {
        // The helper killed init without a word: the command was killed.
        return Ok(report(end.unwrap_or(Outcome::Signaled(libc::SIGKILL))));
    }
    end.map(report)
        .ok_or_else(|| RunError::NoReport(format!("{status:?}")))
}

/// Makes every host path absolute and free of symlinks (the sandbox reaches
/// them from a different root), and turns a missing one into a setup failure
/// that names it.
fn resolve_sources(
    spec: &SandboxSpec,
    ops: Vec<Op>,
) -> Result<(SandboxSpec, Vec<Op>), SetupFailure> {
    let canon = |step: String, p: &Path| {
        std::fs::canonicalize(p).map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            SetupFailure::new(step, "stat", Some(p.to_path_buf()), Some(errno))
        })
    };
    let mut spec = spec.clone();
    let mut ops = ops;
    for op in &mut ops {
        let step = op.to_string();
        match op {
            Op::RootImage { src } | Op::Bind { src, .. } => *src = canon(step, src)?,
            Op::Overlay {
                lower, upper, work, ..
            } => {
                *lower = canon(step.clone(), lower)?;
                *upper = canon(step.clone(), upper)?;
                *work = canon(step, work)?;
            }
            _ => {}
        }
    }
    spec.root = canon("root image".into(), &spec.root)?;
    for m in &mut spec.mounts {
        match m {
            Mount::Bind { src, .. } => *src = canon("bind".into(), src)?,
            Mount::Overlay {
                lower, upper, work, ..
            } => {
                *lower = canon("overlay".into(), lower)?;
                *upper = canon("overlay".into(), upper)?;
                *work = canon("overlay".into(), work)?;
            }
            Mount::Tmpfs { .. } => {}
        }
    }
    Ok((spec, ops))
}
