//! The zygote: one single-threaded helper that starts every helper of a
//! graph build by `clone`, instead of hermit executing itself once per
//! build.
//!
//! A multi-threaded hermit may not fork and go on running Rust code in the
//! child, so each sandbox normally costs one `posix_spawn` + `execve` of
//! hermit as the helper (loading and relocating the binary, faulting in its
//! pages). When many builds run in one process (a graph), [`prefer`] asks
//! for a zygote instead: hermit re-executed once as `hermit
//! __sandbox-zygote 3 PPID`, entered at the top of `main` like the helper,
//! single-threaded for its whole life. For each sandbox hermit sends it one
//! message over a Unix socket, carrying the helper's descriptors
//! (SCM_RIGHTS, in the order of their numbers 0, 1, 2, …); the zygote
//! clones a child with `CLONE_PARENT` — so the helper is hermit's child,
//! exactly as one that hermit spawned, and hermit waits for it and signals
//! it the same way — answers with the child's pid, and the child puts the
//! descriptors at 0, 1, 2, … and runs the helper's code.
//!
//! Lifetimes: the zygote is spawned from a thread of its own that lives as
//! long as hermit (parked), because PR_SET_PDEATHSIG — which the zygote and
//! every helper arm as their first act — follows the parent *thread*, and a
//! `CLONE_PARENT` child's parent thread is the zygote's. The zygote exits
//! when hermit's end of the socket closes. If anything about the zygote
//! fails, hermit says nothing and spawns the helper directly.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::{ForkResult, Pid};

use crate::sys;

/// The most descriptors one helper is given (0–2, input, status, passed).
const MAX_FDS: usize = 32;

static WANTED: AtomicBool = AtomicBool::new(false);

/// Hermit's end of the zygote's socket; `None` before it is started or once
/// it failed (then helpers are spawned directly for the rest of the run).
static ZYGOTE: Mutex<Option<Started>> = Mutex::new(None);

enum Started {
    Running(UnixStream),
    Broken,
}

/// Asks that the helpers of this process's sandboxes be started by a
/// zygote (see the module's documentation). Worth it when several
/// sandboxes run in one process; the zygote is started with the first.
pub fn prefer() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Starts a helper through the zygote with `fds` (each at the number its
/// position says: 0, 1, 2, …). `None`: no zygote is wanted or it cannot
/// serve; the caller spawns the helper itself.
pub(crate) fn spawn(helper: &Path, fds: &[BorrowedFd<'_>]) -> Option<Pid> {
    if !WANTED.load(Ordering::Relaxed) || fds.len() > MAX_FDS {
        return None;
    }
    let mut guard = ZYGOTE.lock().ok()?;
    if guard.is_none() {
        *guard = Some(match start(helper.to_path_buf()) {
            Some(sock) => Started::Running(sock),
            None => Started::Broken,
        });
    }
    let Some(Started::Running(sock)) = guard.as_mut() else {
        return None;
    };
    match request(sock, fds) {
        Ok(pid) => Some(pid),
        Err(_) => {
            *guard = Some(Started::Broken);
            None
        }
    }
}

fn request(sock: &mut UnixStream, fds: &[BorrowedFd<'_>]) -> std::io::Result<Pid> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(&[1u8])];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    let mut answer = [0u8; 4];
    sock.read_exact(&mut answer)?;
    let n = i32::from_le_bytes(answer);
    if n <= 0 {
        return Err(std::io::Error::from_raw_os_error(-n));
    }
    Ok(Pid::from_raw(n))
}

/// Spawns the zygote from a thread that parks for the rest of the process.
fn start(helper: PathBuf) -> Option<UnixStream> {
    let (ours, theirs) = UnixStream::pair().ok()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("hermit-zygote".into())
        .spawn(move || {
            let parent = std::process::id().to_string();
            let fds = [
                (null.as_fd(), 0),
                (null.as_fd(), 1),
                (null.as_fd(), 2),
                (theirs.as_fd(), 3),
            ];
            let r = sys::spawn_helper(&helper, &["hermit", crate::ZYGOTE_ARG, "3", &parent], &fds);
            drop(theirs);
            drop(null);
            let _ = tx.send(r.is_ok());
            // The zygote's (and its helpers') parent thread: it must live
            // as long as the process.
            loop {
                std::thread::park();
            }
        })
        .ok()?;
    rx.recv().ok()?.then_some(ours)
}

/// The zygote process: `args` are SOCKET-FD and hermit's pid.
pub(crate) fn zygote_main(args: &[std::ffi::OsString]) -> u8 {
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str()?.parse::<i32>().ok());
    let (Some(sock), Some(parent)) = (arg(0).and_then(sys::inherited_fd), arg(1)) else {
        eprintln!("hermit: {} is internal to hermit", crate::ZYGOTE_ARG);
        return 70;
    };
    sys::set_cmdline("hermit-sandbox");
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
        || !sys::parent_is(Pid::from_raw(parent))
    {
        return 125;
    }
    let mut sock = UnixStream::from(sock);
    loop {
        let fds = match receive(&sock) {
            Ok(Some(fds)) => fds,
            // hermit closed its end (or it is gone): done.
            Ok(None) | Err(_) => return 0,
        };
        let answer = match sys::clone_single_threaded(CloneFlags::CLONE_PARENT) {
            Ok(ForkResult::Child) => {
                drop(sock);
                let code = helper_child(fds);
                std::process::exit(i32::from(code));
            }
            Ok(ForkResult::Parent { child }) => child.as_raw(),
            Err(e) => -(e as i32),
        };
        drop(fds);
        if sock.write_all(&answer.to_le_bytes()).is_err() {
            return 0;
        }
    }
}

/// One request: the descriptors, in order; `None` at end of file.
fn receive(sock: &UnixStream) -> Result<Option<Vec<OwnedFd>>, Errno> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // Just installed in this process for this message (0–2 are
            // the zygote's own, so every one is 3 or above).
            fds.extend(raw.into_iter().filter_map(sys::inherited_fd));
        }
    }
    Ok(Some(fds))
}

/// In the zygote's child: the descriptors at 0, 1, 2, …, then the helper.
fn helper_child(fds: Vec<OwnedFd>) -> u8 {
    // Copies above every target first, so that no dup2 overwrites a
    // descriptor a later one still needs.
    let high: Result<Vec<OwnedFd>, Errno> = fds
        .iter()
        .map(|f| sys::dup_above(f.as_raw_fd(), 64))
        .collect();
    drop(fds);
    let Ok(high) = high else { return 125 };
    for (n, fd) in high.iter().enumerate() {
        if sys::dup_to(fd, n as i32).is_err() {
            return 125;
        }
    }
    drop(high);
    crate::intermediate::helper_main(&["3".into(), "4".into()])
}
