//! A terminal for the command that hermit owns: never the caller's.
//!
//! When the command should get a terminal (`hermit shell` from one), init
//! makes a pseudo-terminal in the sandbox's own devpts instance (so the
//! command's `tty` is `/dev/pts/0` inside), gives its slave to the command
//! as descriptors 0–2 and controlling terminal (the command's process is a
//! session leader: `setsid`, then `TIOCSCTTY`), and sends the master to
//! hermit over a Unix socket ([`console`], SCM_RIGHTS). hermit then
//! [`relay`]s: the caller's terminal in raw mode, keystrokes to the master,
//! the master's output to the caller's terminal, window size changes
//! (SIGWINCH) passed on. The pty's line discipline does the rest: Ctrl-C is
//! a SIGINT for the command's foreground job, not for hermit; job control
//! works because the shell owns its terminal.
//!
//! The caller's terminal descriptor never enters the sandbox, so the
//! command can neither push input into it (TIOCSTI) nor leave it in a
//! strange mode: hermit restores it when the relay ends, on an error, and
//! on SIGTERM, SIGHUP, SIGINT or SIGQUIT (which hang the pty up: the
//! command's session gets SIGHUP).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::termios::{self, SetArg, Termios};
use serde::{Deserialize, Serialize};

use crate::outcome::SetupFailure;
use crate::sys;

/// A terminal's window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

impl WindowSize {
    fn raw(&self) -> libc::winsize {
        libc::winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: self.xpixel,
            ws_ypixel: self.ypixel,
        }
    }
}

/// The window size of the terminal on `fd`; `None` when it is not one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    sys::window_size(fd).ok().map(|w| WindowSize {
        rows: w.ws_row,
        cols: w.ws_col,
        xpixel: w.ws_xpixel,
        ypixel: w.ws_ypixel,
    })
}

/// Sets the window size of the terminal on `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, size: &WindowSize) -> Result<(), Errno> {
    sys::set_window_size(fd, &size.raw())
}

/// The socket over which init sends the pseudo-terminal's master: hermit's
/// end first, then the end for [`crate::Stdin::Terminal`].
pub fn console() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Waits for the master init sends on hermit's end of [`console`]; `None`
/// when the sandbox ended (or failed to set up) without sending one.
pub fn receive_master(console: &OwnedFd) -> Result<Option<OwnedFd>, Errno> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(
            console.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut got = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    let owned = sys::received_fd(fd);
                    if got.is_none() {
                        got = Some(owned);
                    }
                }
            }
        }
        if got.is_some() || msg.bytes == 0 {
            return Ok(got);
        }
    }
}

/// In init, after the root is built: a pseudo-terminal of the sandbox's
/// devpts, of `size`; its master sent over `console`, its slave returned
/// (for the command's 0–2).
pub(crate) fn make_terminal(
    console: &OwnedFd,
    size: Option<&WindowSize>,
) -> Result<OwnedFd, SetupFailure> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let step = "make the command's terminal";
    let f = |call: &str, e: Errno| SetupFailure::new(step, call, None, Some(e));
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| SetupFailure::new(step, "open", Some("/dev/ptmx".into()), Some(e)))?;
    grantpt(&master).map_err(|e| f("grantpt", e))?;
    unlockpt(&master).map_err(|e| f("unlockpt", e))?;
    let name = ptsname_r(&master).map_err(|e| f("ptsname", e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SetupFailure::new(step, "open", Some(name.clone().into()), Some(e)))?;
    if let Some(s) = size {
        sys::set_window_size(slave.as_fd(), &s.raw()).map_err(|e| f("ioctl(TIOCSWINSZ)", e))?;
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"t")];
    loop {
        match sendmsg::<()>(console.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(f("sendmsg", e)),
        }
    }
    Ok(slave)
}

/// The caller's terminal in raw mode until dropped.
pub struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    /// Raw mode on the terminal `fd` (no echo, no line editing, no signals
    /// from keys, no output processing): every byte goes to the command's
    /// terminal, whose line discipline does all of that.
    pub fn enter(fd: BorrowedFd<'a>) -> Result<RawMode<'a>, Errno> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Signals caught while relaying: their bytes arrive on a pipe.
struct Caught {
    read: OwnedFd,
    _write: OwnedFd,
    old: Vec<(i32, libc::sigaction)>,
}

impl Caught {
    fn new(signals: &[i32]) -> Result<Caught, Errno> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let old = sys::catch_signals(write.as_fd(), signals)?;
        Ok(Caught {
            read,
            _write: write,
            old,
        })
    }
}

impl Drop for Caught {
    fn drop(&mut self) {
        sys::restore_signals(&self.old);
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The sandbox ended (every copy of the slave was closed), or it never
    /// sent a terminal.
    Ended,
    /// hermit got this signal and hung the terminal up.
    HungUp(i32),
    /// The caller's terminal went away; the command's was hung up.
    Lost,
}

/// Relays between the caller's terminal (`input`, `output`) and the
/// command's, once init has sent its master on `console` (hermit's end of
/// [`console`]). Blocks until the sandbox ends (or hangs it up, see
/// [`RelayEnd`]); the caller's terminal is in raw mode meanwhile and is
/// restored before this returns, whatever happens.
pub fn relay(
    console: OwnedFd,
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
) -> Result<RelayEnd, Errno> {
    let Some(master) = receive_master(&console)? else {
        return Ok(RelayEnd::Ended);
    };
    drop(console);
    // Signal handlers first, then raw mode: a SIGTERM from now on restores
    // the terminal (by ending the relay) instead of killing hermit.
    let caught = Caught::new(&[
        libc::SIGWINCH,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
    ])?;
    let raw = RawMode::enter(input).ok();
    // A change of size before the handler was there would be lost.
    if let Some(s) = window_size(input) {
        let _ = set_window_size(master.as_fd(), &s);
    }
    let end = pump(&master, input, output, &caught);
    drop(master);
    drop(raw);
    drop(caught);
    end
}

/// The relay's loop.
fn pump(
    master: &OwnedFd,
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    caught: &Caught,
) -> Result<RelayEnd, Errno> {
    let flags = nix::fcntl::fcntl(master, nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        master,
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    let mut pending: Vec<u8> = Vec::new();
    let mut input_open = true;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let want_input = input_open && pending.len() < (64 << 10);
        let mut master_events = PollFlags::POLLIN;
        if !pending.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        let mut fds = vec![
            PollFd::new(caught.read.as_fd(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), master_events),
        ];
        if want_input {
            fds.push(PollFd::new(input, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let ev = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .unwrap_or(PollFlags::empty())
        };
        let (sig_ev, master_ev, input_ev) = (ev(0), ev(1), ev(2));
        drop(fds);

        if !sig_ev.is_empty() {
            let mut sigs = [0u8; 64];
            let n = match nix::unistd::read(&caught.read, &mut sigs) {
                Ok(n) => n,
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => 0,
                Err(e) => return Err(e),
            };
            for &s in &sigs[..n] {
                let s = i32::from(s);
                if s == libc::SIGWINCH {
                    if let Some(size) = window_size(input) {
                        let _ = set_window_size(master.as_fd(), &size);
                    }
                } else {
                    return Ok(RelayEnd::HungUp(s));
                }
            }
        }
        if master_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master, &mut buf) {
                // The last copy of the slave was closed: init has ended.
                Ok(0) | Err(Errno::EIO) => return Ok(RelayEnd::Ended),
                Ok(n) => {
                    if write_all(output, &buf[..n]).is_err() {
                        return Ok(RelayEnd::Lost);
                    }
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        if master_ev.contains(PollFlags::POLLOUT) && !pending.is_empty() {
            match nix::unistd::write(master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(Errno::EIO) => return Ok(RelayEnd::Ended),
                Err(e) => return Err(e),
            }
        }
        if !input_ev.is_empty() {
            match nix::unistd::read(input, &mut buf) {
                Ok(0) => {
                    // End of input (not a terminal's way, but a pipe's):
                    // the terminal's end-of-file character, once.
                    input_open = false;
                    pending.push(4);
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => return Ok(RelayEnd::Lost),
            }
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
