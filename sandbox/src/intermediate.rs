//! Starting init, and the helper that does it for a multi-threaded hermit.
//!
//! [`start_init`] runs in init's parent: hermit itself when it is
//! single-threaded, else the helper — hermit re-executed as
//! `hermit __sandbox-init RFD WFD`, entered at the very top of `main` while
//! the process has one thread. It opens the pids cgroup and clones init into
//! new user, mount, pid, network, UTS, IPC and cgroup namespaces, all in one
//! `clone`; init (pid 1 there) maps one uid and one gid first thing.
//!
//! The helper reads the [`HelperInput`] from RFD, starts init and waits:
//! SIGTERM (hermit's timeout) kills the init with SIGKILL, SIGINT and SIGHUP
//! are passed on. It exits with the init's status once the init — and so
//! every process of the namespace — is gone.
//!
//! Why each namespace (the tone of Nix's comment on the same list):
//! - user: rootless — the build gets capabilities only over the namespaces it
//!   owns, and runs as the spec's uid mapped onto the caller's uid;
//! - mount: the build sees the root image, its binds and nothing else;
//! - pid: the build cannot see or signal host processes, and when its init
//!   exits every process it started dies, daemons included;
//! - network: only a loopback interface, so no network access and no
//!   dependence on the host's network configuration;
//! - UTS: the spec's hostname and domain name instead of the host's;
//! - IPC: no System V IPC or POSIX message queues shared with the host;
//! - cgroup: the build sees its own cgroup as the root, not the host's tree.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, sigprocmask, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::outcome::SetupFailure;
use crate::protocol::{read_input, send, HelperInput, Message};
use crate::{init, sys};

/// Namespaces every sandbox gets ([`crate::NAMESPACES`] names them).
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mount", CloneFlags::CLONE_NEWNS),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("network", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
];

fn fd_arg(a: Option<&std::ffi::OsString>) -> Option<OwnedFd> {
    let n: i32 = a?.to_str()?.parse().ok()?;
    sys::inherited_fd(n)
}

/// Runs the helper. `args` are the arguments after the hidden subcommand.
pub(crate) fn helper_main(args: &[std::ffi::OsString]) -> u8 {
    let (Some(input_fd), Some(status)) = (fd_arg(args.first()), fd_arg(args.get(1))) else {
        eprintln!("hermit: {} is internal to hermit", crate::HELPER_ARG);
        return 70;
    };
    let input = match read_input(input_fd) {
        Ok(i) => i,
        Err(msg) => {
            eprintln!("hermit: {msg}");
            return 70;
        }
    };
    helper_body(input, status)
}

/// The helper's work, once it has its input (in a re-executed hermit): tie
/// itself to hermit, start init, wait for it.
pub(crate) fn helper_body(input: HelperInput, status: OwnedFd) -> u8 {
    // Neither the helper nor init (pid 1, visible to the build) should show
    // hermit's command line: it holds host paths.
    sys::set_cmdline("hermit-sandbox");
    // Die with hermit. The check closes the race with hermit dying before
    // the signal was armed.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
        || !sys::parent_is(Pid::from_raw(input.parent))
    {
        return 125;
    }
    let signals = init::waited_signals();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        send(
            &status,
            &Message::Failed(SetupFailure::new(
                "block signals",
                "sigprocmask",
                None,
                Some(e),
            )),
        );
        return 125;
    }
    let started = start_init(input, &status);
    drop(status);
    match started {
        Ok(init) => {
            let code = wait_init(init.pid, &signals);
            drop(init.lifeline);
            code
        }
        Err(code) => code,
    }
}

/// A running init, as its parent sees it.
pub(crate) struct StartedInit {
    pub pid: Pid,
    /// Held by init's parent for as long as it waits for init: a hang-up
    /// tells init its parent died before PR_SET_PDEATHSIG was armed.
    pub lifeline: OwnedFd,
}

/// Starts init (pid 1 of the new namespaces) as a child of the calling
/// process, which must be single-threaded and must stay alive (and keep
/// [`StartedInit::lifeline`]) until init ends: init dies with it. The
/// signals of [`init::waited_signals`] must be blocked (init inherits the
/// mask and takes them with `sigwait`). On failure the reason has been sent
/// on `status` and the exit code to use comes back.
///
/// One `clone` creates the process and all seven namespaces at once, as
/// bubblewrap does: no intermediate process that unshares and forks again.
pub(crate) fn start_init(input: HelperInput, status: &OwnedFd) -> Result<StartedInit, u8> {
    let fail = |f: SetupFailure| {
        send(status, &Message::Failed(f));
        125
    };
    // The pids cgroup is joined by init itself, first thing: a process that
    // writes `0` to a cgroup v1 `tasks` file moves its one thread without
    // taking the global threadgroup lock, which would cost an RCU grace
    // period (milliseconds) — moving a whole process through `cgroup.procs`
    // does. The file is opened now, from the host's view of /sys.
    let mut cgroup_files = Vec::new();
    let cgroups = [
        ("join the pids cgroup", &input.cgroup),
        ("join the memory cgroup", &input.memory_cgroup),
    ];
    for (step, cg) in cgroups {
        let Some(cg) = cg else { continue };
        let tasks = cg.join("tasks");
        let file = if tasks.exists() {
            tasks
        } else {
            cg.join("cgroup.procs")
        };
        match std::fs::OpenOptions::new().write(true).open(&file) {
            Ok(f) => cgroup_files.push((step, f, file)),
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                return Err(fail(SetupFailure::new(
                    step,
                    "open",
                    Some(file),
                    Some(errno),
                )));
            }
        }
    }
    // Root's supplementary groups would show up inside as `nogroup`: init
    // starts without them. The caller gets its own back right after.
    let saved_groups = if nix::unistd::geteuid().is_root() {
        let saved = nix::unistd::getgroups().ok();
        let _ = nix::unistd::setgroups(&[]);
        saved
    } else {
        None
    };
    let (lifeline_r, lifeline_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            return Err(fail(SetupFailure::new(
                "start init",
                "pipe2",
                None,
                Some(e),
            )))
        }
    };
    let flags = NAMESPACES
        .iter()
        .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
    let cloned = sys::clone_single_threaded(flags);
    if let Some(groups) = saved_groups {
        if !matches!(cloned, Ok(ForkResult::Child)) {
            let _ = nix::unistd::setgroups(&groups);
        }
    }
    match cloned {
        Ok(ForkResult::Child) => {
            drop(lifeline_w);
            if let Err(f) = map_ids(&input) {
                send(status, &Message::Failed(f));
                sys::exit_now(125);
            }
            init::init_main(input, status, lifeline_r, cgroup_files)
        }
        Ok(ForkResult::Parent { child }) => Ok(StartedInit {
            pid: child,
            lifeline: lifeline_w,
        }),
        Err(e) => Err(fail(SetupFailure::new(
            "create the namespaces (user, mount, pid, network, uts, ipc, cgroup)",
            "clone",
            None,
            Some(e),
        ))),
    }
}

/// In init, first thing: maps the build's uid and gid onto the caller's
/// (one id each; `setgroups` denied, as an unprivileged caller must).
fn map_ids(input: &HelperInput) -> Result<(), SetupFailure> {
    let spec = &input.spec;
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_string()),
        (
            "/proc/self/uid_map",
            format!("{} {} 1\n", spec.uid, input.outer_uid),
        ),
        (
            "/proc/self/gid_map",
            format!("{} {} 1\n", spec.gid, input.outer_gid),
        ),
    ] {
        if let Err(e) = std::fs::write(file, text) {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            let call = match file {
                "/proc/self/setgroups" => "write /proc/self/setgroups",
                "/proc/self/uid_map" => "write /proc/self/uid_map",
                _ => "write /proc/self/gid_map",
            };
            return Err(SetupFailure::new(
                "map the build user onto the caller",
                call,
                Some(file.into()),
                Some(errno),
            ));
        }
    }
    Ok(())
}

fn wait_init(init: Pid, signals: &nix::sys::signal::SigSet) -> u8 {
    loop {
        match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as u8,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return 70,
        }
        match signals.wait() {
            Ok(Signal::SIGTERM) => {
                let _ = kill(init, Signal::SIGKILL);
            }
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(other) => {
                let _ = kill(init, other);
            }
        }
    }
}
