//! A GNU make jobserver shared by every build hermit runs at once: `-j N`
//! is the budget of the whole machine, not of each build.
//!
//! The protocol is make's own (make 4.3, Debian bookworm's, and later): a
//! pipe holds one byte — a token — per job slot beyond the first; a process
//! that wants to run one more job reads a token first and writes it back
//! when the job ends; every make owns one implicit slot besides the tokens
//! it holds. Profile v3 on hands each build the two ends of the pipe at
//! descriptors 3 and 4 and sets `MAKEFLAGS= -j --jobserver-auth=3,4`, so a
//! plain `make` in any build takes its jobs from the shared budget.
//!
//! hermit's side, for the scheduler: a build holds a [`Slot`] while its
//! sandbox runs ([`Jobserver::acquire`]); the build's top-level make runs on
//! that slot (its implicit one). The first slot is free (hermit's own implicit
//! slot); each further one is a token hermit reads from the pipe. So while
//! `r` builds run, hermit holds `r - 1` tokens and the builds' makes hold
//! the rest: never more than N jobs in all.
//!
//! Tokens held by a make that is killed (a timeout, a limit, a crash) are
//! lost with it: the pipe then holds fewer than it should, which lowers the
//! parallelism and never raises it. hermit counts the tokens back in
//! whenever no build runs (every process that could hold one is dead then:
//! each sandbox's processes die with its init) and refills the pipe to
//! exactly N - 1, dropping any a build wrote in excess. hermit's own waits
//! never block on the pipe: it reads and writes through private
//! non-blocking descriptions of it, so a build that empties or fills the
//! pipe cannot hang hermit.
//!
//! When hermit itself runs under make (a `Makefile` rule `+hermit build …`),
//! it joins that make's jobserver instead ([`Jobserver::from_makeflags`]):
//! hermit's first build runs on the implicit slot make gave hermit, and the
//! builds share make's budget with the rest of the make.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hermit_sandbox::PassFd;

/// The byte hermit writes as a token (make writes `+`).
const TOKEN: u8 = b'+';
/// How often a waiting [`Jobserver::acquire`] looks again (it also wakes
/// as soon as a token arrives).
const WAIT: Duration = Duration::from_millis(50);

/// Errors setting up or using the jobserver.
#[derive(Debug, thiserror::Error)]
pub enum JobserverError {
    #[error("creating the jobserver's pipe")]
    Pipe(#[source] nix::errno::Errno),
    #[error("opening the jobserver's pipe {}", .0.display())]
    Open(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a pipe, so it cannot be a jobserver")]
    NotAPipe(String),
    #[error("using the jobserver's pipe")]
    Io(#[source] std::io::Error),
}

/// How hermit came by its jobserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// hermit made it, with this many slots.
    Own(u32),
    /// A make that runs hermit passed it in MAKEFLAGS.
    Make,
}

/// A jobserver: the pipe of job tokens and hermit's count of running
/// builds. Share it between threads in an [`Arc`].
#[derive(Debug)]
pub struct Jobserver {
    /// The ends handed to builds (blocking, as make expects).
    read: OwnedFd,
    write: OwnedFd,
    /// hermit's own non-blocking descriptions of the same pipe.
    take: File,
    give: File,
    origin: Origin,
    running: Mutex<u32>,
}

/// One running build's share of the budget; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    js: Arc<Jobserver>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.js.release();
    }
}

/// A private non-blocking description of the pipe end `fd` refers to.
fn reopen(fd: &impl AsFd, write: bool) -> Result<File, JobserverError> {
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()));
    open_pipe(&path, write, true)
}

/// Opens a pipe (through `/proc/self/fd/N`) or a fifo for reading or for
/// writing: a description of its own, close-on-exec.
fn open_pipe(path: &Path, write: bool, nonblocking: bool) -> Result<File, JobserverError> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(if nonblocking { libc::O_NONBLOCK } else { 0 })
        .open(path)
        .map_err(|e| JobserverError::Open(path.to_path_buf(), e))?;
    let meta = f
        .metadata()
        .map_err(|e| JobserverError::Open(path.to_path_buf(), e))?;
    if !meta.file_type().is_fifo() {
        return Err(JobserverError::NotAPipe(path.display().to_string()));
    }
    Ok(f)
}

/// What a make that runs hermit says in MAKEFLAGS: the jobserver's
/// descriptors or fifo, and its `-jN`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MakeFlags {
    pub auth: Option<Auth>,
    pub jobs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `--jobserver-auth=R,W` (or make 4.1's `--jobserver-fds=R,W`).
    Fds(i32, i32),
    /// make 4.4's `--jobserver-auth=fifo:PATH`.
    Fifo(PathBuf),
}

/// Parses a MAKEFLAGS value (make's own form: single-letter flags first,
/// then long options, then `--` and variable assignments). The last
/// jobserver option wins, as in make.
pub fn parse_makeflags(flags: &str) -> MakeFlags {
    let mut out = MakeFlags::default();
    for word in flags.split_whitespace() {
        if word == "--" {
            break;
        }
        let auth = word
            .strip_prefix("--jobserver-auth=")
            .or_else(|| word.strip_prefix("--jobserver-fds="));
        if let Some(a) = auth {
            out.auth = if let Some(p) = a.strip_prefix("fifo:") {
                Some(Auth::Fifo(PathBuf::from(p)))
            } else {
                a.split_once(',')
                    .and_then(|(r, w)| Some(Auth::Fds(r.parse().ok()?, w.parse().ok()?)))
            };
        } else if let Some(n) = word.strip_prefix("-j") {
            out.jobs = n.parse().ok().filter(|n| *n > 0);
        }
    }
    out
}

impl Jobserver {
    /// A jobserver of `slots` slots in all (at least 1): a fresh pipe
    /// holding `slots - 1` tokens.
    pub fn new(slots: u32) -> Result<Arc<Jobserver>, JobserverError> {
        let slots = slots.max(1);
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(JobserverError::Pipe)?;
        let js = Jobserver {
            take: reopen(&read, false)?,
            give: reopen(&write, true)?,
            read,
            write,
            origin: Origin::Own(slots),
            running: Mutex::new(0),
        };
        js.refill()?;
        Ok(Arc::new(js))
    }

    /// The jobserver of the make that runs hermit, from MAKEFLAGS' value
    /// `flags`: `None` when it names none, or names descriptors that are
    /// not open pipes (make hands them only to rules marked `+` or that
    /// use `$(MAKE)`); the reason comes back with `None`.
    pub fn from_makeflags(flags: &str) -> (Option<Arc<Jobserver>>, Option<String>) {
        let parsed = parse_makeflags(flags);
        let path = match &parsed.auth {
            None => return (None, None),
            Some(Auth::Fds(r, w)) => [r, w].map(|fd| PathBuf::from(format!("/proc/self/fd/{fd}"))),
            Some(Auth::Fifo(p)) => [p.clone(), p.clone()],
        };
        // hermit's non-blocking ends first: a fifo's blocking read end then
        // has its writer and opens at once.
        let built = (|| {
            Ok::<_, JobserverError>(Jobserver {
                take: open_pipe(&path[0], false, true)?,
                give: open_pipe(&path[1], true, true)?,
                read: open_pipe(&path[0], false, false)?.into(),
                write: open_pipe(&path[1], true, false)?.into(),
                origin: Origin::Make,
                running: Mutex::new(0),
            })
        })();
        match built {
            Ok(js) => (Some(Arc::new(js)), None),
            Err(e) => (
                None,
                Some(format!(
                    "the jobserver in MAKEFLAGS cannot be used ({}); mark the make rule that runs \
                     hermit with `+` to share it",
                    error_chain(&e)
                )),
            ),
        }
    }

    /// What `hermit build` and `hermit rebuild` start with, given their
    /// `-j` flag and the MAKEFLAGS hermit was run with: the jobserver of a
    /// make that runs hermit (and that make's `-jN`, for HERMIT_JOBS), or
    /// none — then each build makes its own of HERMIT_JOBS slots. Like a
    /// sub-make given `-jN`, an explicit `-j` leaves make's jobserver
    /// alone. The string is a warning to print.
    pub fn for_command(
        jobs_flag: Option<u32>,
        makeflags: Option<&str>,
    ) -> (Option<Arc<Jobserver>>, Option<u32>, Option<String>) {
        let Some(flags) = makeflags else {
            return (None, jobs_flag, None);
        };
        let parsed = parse_makeflags(flags);
        if parsed.auth.is_none() {
            return (None, jobs_flag, None);
        }
        if let Some(n) = jobs_flag {
            let why = format!(
                "-j {n} given: running with a jobserver of {n} slots of hermit's own, not the one of the make that runs hermit"
            );
            return (None, jobs_flag, Some(why));
        }
        match Jobserver::from_makeflags(flags) {
            (Some(js), _) => (Some(js), parsed.jobs, None),
            (None, why) => (None, None, why),
        }
    }

    fn running(&self) -> MutexGuard<'_, u32> {
        // A panic while holding the count leaves a plain integer behind.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot for one more build: the first running build gets
    /// hermit's own (implicit) slot at once, every further one a token from
    /// the pipe. Never waits on a pipe a build could starve for good: when
    /// the last build ends the pipe is refilled.
    pub fn acquire(self: &Arc<Self>) -> Result<Slot, JobserverError> {
        loop {
            {
                let mut running = self.running();
                if *running == 0 {
                    *running = 1;
                    return Ok(Slot { js: self.clone() });
                }
                if self.take_token()? {
                    *running += 1;
                    return Ok(Slot { js: self.clone() });
                }
            }
            let mut fds = [nix::poll::PollFd::new(
                self.take.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let wait = nix::poll::PollTimeout::try_from(WAIT.as_millis() as i32)
                .unwrap_or(nix::poll::PollTimeout::MAX);
            match nix::poll::poll(&mut fds, wait) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(JobserverError::Io(e.into())),
            }
        }
    }

    /// Reads one token if one is there.
    fn take_token(&self) -> Result<bool, JobserverError> {
        let mut b = [0u8; 1];
        loop {
            match (&self.take).read(&mut b) {
                Ok(1) => return Ok(true),
                // No writer can be left while hermit holds `give`.
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(JobserverError::Io(e)),
            }
        }
    }

    /// Writes one token back; a full pipe (a build wrote tokens of its own)
    /// keeps its plenty.
    fn give_token(&self) {
        loop {
            match (&self.give).write(&[TOKEN]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => return,
            }
        }
    }

    /// Counts the tokens back in: empties the pipe and puts exactly
    /// `slots - 1` back. Only when no build runs. Returns how many were
    /// found.
    fn refill(&self) -> Result<u64, JobserverError> {
        let Origin::Own(slots) = self.origin else {
            return Ok(0);
        };
        let mut found = 0u64;
        let mut buf = [0u8; 512];
        loop {
            match (&self.take).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => found += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(JobserverError::Io(e)),
            }
        }
        let tokens = vec![TOKEN; slots as usize - 1];
        (&self.give)
            .write_all(&tokens)
            .map_err(JobserverError::Io)?;
        Ok(found)
    }

    fn release(&self) {
        let mut running = self.running();
        *running = running.saturating_sub(1);
        if *running == 0 {
            // Every sandbox has ended: no make holds a token. Tokens lost
            // with a killed make come back here.
            let _ = self.refill();
        } else {
            self.give_token();
        }
    }

    /// The pipe's two ends for one build, at the profile's descriptors
    /// (`[read, write]`).
    pub fn pass_fds(&self, numbers: [i32; 2]) -> Result<Vec<PassFd>, JobserverError> {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(JobserverError::Io);
        Ok(vec![
            PassFd {
                number: numbers[0],
                fd: dup(&self.read)?,
            },
            PassFd {
                number: numbers[1],
                fd: dup(&self.write)?,
            },
        ])
    }

    /// Counts the tokens in the pipe by taking them all and putting them
    /// back (tests only: racy while builds run).
    #[cfg(test)]
    fn count_tokens(&self) -> usize {
        let mut n = 0;
        while self.take_token().unwrap() {
            n += 1;
        }
        for _ in 0..n {
            self.give_token();
        }
        n
    }
}

/// `e` and its sources, one after the other.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn makeflags_are_read_as_make_writes_them() {
        let f = parse_makeflags(" -j3 --jobserver-auth=3,4 --no-print-directory");
        assert_eq!(f.auth, Some(Auth::Fds(3, 4)));
        assert_eq!(f.jobs, Some(3));
        let f = parse_makeflags("k -j --jobserver-fds=5,6 -- X=--jobserver-auth=7,8");
        assert_eq!(f.auth, Some(Auth::Fds(5, 6)));
        assert_eq!(f.jobs, None);
        let f = parse_makeflags("-j8 --jobserver-auth=fifo:/tmp/GMfifo1");
        assert_eq!(f.auth, Some(Auth::Fifo("/tmp/GMfifo1".into())));
        assert_eq!(parse_makeflags("s").auth, None);
        assert_eq!(parse_makeflags("--jobserver-auth=x,4").auth, None);
    }

    #[test]
    fn slots_never_exceed_the_budget_and_lost_tokens_come_back() {
        let js = Jobserver::new(3).unwrap();
        assert_eq!(js.count_tokens(), 2);
        let a = js.acquire().unwrap();
        assert_eq!(
            js.count_tokens(),
            2,
            "the first build runs on the implicit slot"
        );
        let b = js.acquire().unwrap();
        assert_eq!(js.count_tokens(), 1);
        // A build's make takes the last token and is killed: it is lost.
        let fds = js.pass_fds([3, 4]).unwrap();
        let mut make_end = File::from(fds.into_iter().next().unwrap().fd);
        let mut t = [0u8; 1];
        make_end.read_exact(&mut t).unwrap();
        drop(make_end);
        // A third build waits: no slot is free.
        let js2 = js.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let s = js2.acquire().unwrap();
            tx.send(()).unwrap();
            s
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(b);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let c = waiter.join().unwrap();
        assert_eq!(js.count_tokens(), 0);
        drop(a);
        // One build still runs: the lost token is not yet known to be lost.
        assert_eq!(js.count_tokens(), 1);
        drop(c);
        // None runs: counted back in, exactly N - 1.
        assert_eq!(js.count_tokens(), 2);
        // Tokens a build writes in excess are dropped the same way.
        let s = js.acquire().unwrap();
        (&js.give).write_all(b"+++++").unwrap();
        drop(s);
        assert_eq!(js.count_tokens(), 2);
    }

    #[test]
    fn a_makes_jobserver_is_joined_when_its_pipe_is_open() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"++").unwrap();
        let flags = format!(" -j3 --jobserver-auth={},{}", r.as_raw_fd(), w.as_raw_fd());
        let (js, why) = Jobserver::from_makeflags(&flags);
        let js = js.unwrap();
        assert_eq!(why, None);
        assert_eq!(js.origin, Origin::Make);
        let a = js.acquire().unwrap();
        let b = js.acquire().unwrap();
        assert_eq!(js.count_tokens(), 1);
        drop(b);
        drop(a);
        // Not hermit's to refill: make counts its own tokens.
        assert_eq!(js.count_tokens(), 2);
        // Closed descriptors (a rule without `+`) or ones that are not a
        // pipe: not joined, and why.
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        for flags in [
            " -j3 --jobserver-auth=100000,100001".to_string(),
            format!(" -j3 --jobserver-auth={fd},{fd}"),
        ] {
            let (js, why) = Jobserver::from_makeflags(&flags);
            assert!(js.is_none());
            assert!(why.unwrap().contains('+'));
        }
        assert_eq!(Jobserver::from_makeflags(" -k").0.map(|_| ()), None);
    }
}
