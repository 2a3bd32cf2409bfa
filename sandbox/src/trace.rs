//! The moved clock of [`crate::SandboxSpec::clock_offset`] (a `hermit
//! check` variation), for every program of the sandbox, statically linked
//! ones included.
//!
//! Two parts, both run by the sandbox's init:
//!
//! 1. **No vDSO.** The vDSO answers `clock_gettime`, `gettimeofday` and
//!    `time` without a system call a seccomp filter could see. init traces
//!    the command and every process and thread it starts (`PTRACE_SEIZE`
//!    with `PTRACE_O_TRACEEXEC|TRACEFORK|TRACEVFORK|TRACECLONE|EXITKILL`),
//!    and at each `PTRACE_EVENT_EXEC` stop — the new image's first
//!    instruction not yet run — rewrites its auxiliary vector on the
//!    initial stack: the `AT_SYSINFO_EHDR` entry becomes `AT_IGNORE`. The C
//!    library (glibc, static or dynamic, musl) and Go's runtime then find
//!    no vDSO and make the real system calls. The vDSO stays mapped (only
//!    its announcement is gone); `/proc/PID/auxv` still shows the kernel's
//!    copy.
//! 2. **The answers.** The command's seccomp filter hands `clock_gettime`
//!    of `CLOCK_REALTIME`, `CLOCK_REALTIME_COARSE`, `CLOCK_REALTIME_ALARM`
//!    and `CLOCK_TAI`, `gettimeofday` and `time` to init
//!    (`SECCOMP_RET_USER_NOTIF`, the listener the `kernel` variation uses
//!    too), which answers with its own reading of that clock plus the
//!    offset. Monotonic clocks never leave the kernel.
//!
//! Every other stop is passed through so that signals, job control and
//! exit statuses are what they are untraced: a signal-delivery stop
//! re-injects its signal, a group-stop is left stopped with `PTRACE_LISTEN`
//! (SIGCONT ends it as usual), event stops and a new tracee's first stop
//! resume at once.
//!
//! x86-64 only (the stack pointer is read with `PTRACE_GETREGS`); on other
//! machines [`crate::SandboxSpec::validate`] refuses the offset.

use nix::errno::Errno;

use crate::sys;

/// `<elf.h>`: the auxiliary vector's end, an entry to skip, the vDSO.
const AT_NULL: u64 = 0;
const AT_IGNORE: u64 = 1;
const AT_SYSINFO_EHDR: u64 = 33;

/// Most words walked from the stack pointer to the auxiliary vector's end
/// (argv and envp are at most a few MiB of pointers).
const MAX_WORDS: u64 = 1 << 22;

/// The options every tracee gets (new tracees inherit them).
pub(crate) const OPTIONS: libc::c_int = libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_EXITKILL;

/// The address of the auxiliary vector's `AT_SYSINFO_EHDR` type word on an
/// initial process stack that starts at `sp` (`argc`, `argv[]`, NULL,
/// `envp[]`, NULL, then `(type, value)` pairs up to `AT_NULL`), reading one
/// word at a time with `read`. `None`: there is none (a kernel booted with
/// `vdso=0`), or the stack could not be read.
pub(crate) fn sysinfo_entry(sp: u64, mut read: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
    let word = |i: u64| sp.checked_add(i.checked_mul(8)?);
    let argc = read(sp)?;
    if argc > MAX_WORDS {
        return None;
    }
    // argv's pointers and its NULL, then envp's up to its NULL.
    let mut i = 1 + argc + 1;
    loop {
        if i > MAX_WORDS {
            return None;
        }
        let p = read(word(i)?)?;
        i += 1;
        if p == 0 {
            break;
        }
    }
    loop {
        if i > MAX_WORDS {
            return None;
        }
        let at = word(i)?;
        match read(at)? {
            AT_NULL => return None,
            AT_SYSINFO_EHDR => return Some(at),
            _ => i += 2,
        }
    }
}

/// Hides the vDSO from the image `pid` has just executed (it is in its
/// `PTRACE_EVENT_EXEC` stop). `Ok(false)`: the kernel announced none.
#[cfg(target_arch = "x86_64")]
pub(crate) fn hide_vdso(pid: i32) -> Result<bool, Errno> {
    let sp = sys::ptrace_stack_pointer(pid)?;
    let mut reader = PageReader::new(pid);
    let mut failed = None;
    let found = sysinfo_entry(sp, |a| match reader.word(a) {
        Ok(w) => Some(w),
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    match (found, failed) {
        (Some(at), _) => sys::ptrace_poke(pid, at, AT_IGNORE).map(|_| true),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(false),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn hide_vdso(_pid: i32) -> Result<bool, Errno> {
    Err(Errno::ENOSYS)
}

/// Reads a tracee's words a page at a time (`process_vm_readv`), one
/// `PTRACE_PEEKDATA` each when that is refused.
#[cfg(target_arch = "x86_64")]
struct PageReader {
    pid: i32,
    page: u64,
    buf: Vec<u8>,
}

#[cfg(target_arch = "x86_64")]
impl PageReader {
    const PAGE: u64 = 4096;

    fn new(pid: i32) -> PageReader {
        PageReader {
            pid,
            page: u64::MAX,
            buf: Vec::new(),
        }
    }

    fn word(&mut self, addr: u64) -> Result<u64, Errno> {
        let page = addr & !(Self::PAGE - 1);
        let off = (addr - page) as usize;
        if page != self.page {
            self.page = u64::MAX;
            self.buf.resize(Self::PAGE as usize, 0);
            let remote = [nix::sys::uio::RemoteIoVec {
                base: page as usize,
                len: Self::PAGE as usize,
            }];
            let n = nix::sys::uio::process_vm_readv(
                nix::unistd::Pid::from_raw(self.pid),
                &mut [std::io::IoSliceMut::new(&mut self.buf)],
                &remote,
            );
            match n {
                Ok(n) if n == Self::PAGE as usize => self.page = page,
                _ => return sys::ptrace_peek(self.pid, addr),
            }
        }
        if off + 8 > self.buf.len() {
            return sys::ptrace_peek(self.pid, addr);
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.buf[off..off + 8]);
        Ok(u64::from_ne_bytes(w))
    }
}

/// What a tracee's stop was.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// It executed a new image (its vDSO is hidden now).
    Exec,
    /// Anything else, passed through.
    Other,
}

/// Handles one ptrace stop of `pid` (raw wait `status`, `WIFSTOPPED`) and
/// resumes the tracee as it would run untraced.
pub(crate) fn resume(pid: i32, status: libc::c_int) -> Stop {
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    let cont = |sig| {
        // ESRCH: it was killed meanwhile; nothing to resume.
        let _ = sys::ptrace_cont(pid, sig);
    };
    match event {
        0 => {
            // A signal-delivery stop: deliver it.
            cont(sig);
            Stop::Other
        }
        libc::PTRACE_EVENT_EXEC => {
            if let Err(e) = hide_vdso(pid) {
                // The program would read the real clock unnoticed: it is
                // stopped instead, and says why on the build's stderr.
                let msg = format!(
                    "hermit: the clock variation could not hide the vDSO of process {pid} ({e}); killed\n"
                );
                let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            cont(0);
            Stop::Exec
        }
        libc::PTRACE_EVENT_STOP => {
            if matches!(
                sig,
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
            ) {
                // A group-stop: it stays stopped until SIGCONT.
                if sys::ptrace_listen(pid).is_err() {
                    cont(0);
                }
            } else {
                // A new tracee's first stop, or the end of a group-stop.
                cont(0);
            }
            Stop::Other
        }
        // Fork, vfork, clone: the new tracee reports on its own.
        _ => {
            cont(0);
            Stop::Other
        }
    }
}

/// What a notified call returns: the bytes to write into the caller
/// (`(address, bytes)` pairs), and the call's return value.
pub(crate) type Answer = (Vec<(u64, Vec<u8>)>, i64);

/// The answer to one clock call of the command, for `offset` seconds
/// ahead; `Err`: the call fails with that errno.
pub(crate) fn clock_answer(nr: i64, args: &[u64; 6], offset: i64) -> Result<Answer, Errno> {
    let mut writes = Vec::new();
    match nr {
        libc::SYS_clock_gettime => {
            let clock = args[0] as u32 as libc::clockid_t;
            let now = sys::clock_now(clock)?;
            let sec = now.tv_sec.saturating_add(offset);
            writes.push((args[1], timepair(sec, now.tv_nsec)));
            Ok((writes, 0))
        }
        libc::SYS_gettimeofday => {
            let (tv, tz) = sys::time_of_day()?;
            if args[0] != 0 {
                let sec = tv.tv_sec.saturating_add(offset);
                writes.push((args[0], timepair(sec, tv.tv_usec)));
            }
            if args[1] != 0 {
                let mut b = tz[0].to_ne_bytes().to_vec();
                b.extend_from_slice(&tz[1].to_ne_bytes());
                writes.push((args[1], b));
            }
            Ok((writes, 0))
        }
        #[cfg(target_arch = "x86_64")]
        libc::SYS_time => {
            let now = sys::clock_now(libc::CLOCK_REALTIME)?;
            let sec = now.tv_sec.saturating_add(offset);
            if args[0] != 0 {
                writes.push((args[0], sec.to_ne_bytes().to_vec()));
            }
            Ok((writes, sec))
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// A `timespec` or `timeval` (two 64-bit words on a 64-bit machine).
fn timepair(sec: i64, frac: i64) -> Vec<u8> {
    let mut b = sec.to_ne_bytes().to_vec();
    b.extend_from_slice(&frac.to_ne_bytes());
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A synthetic initial stack at address `base`: argc, argv, NULL,
    /// envp, NULL, the auxiliary vector.
    fn stack(argc: u64, envc: u64, auxv: &[(u64, u64)]) -> Vec<u64> {
        let mut s = vec![argc];
        s.extend((0..argc).map(|i| 0x7fff_0000 + i));
        s.push(0);
        s.extend((0..envc).map(|i| 0x7fff_1000 + i));
        s.push(0);
        for (t, v) in auxv {
            s.extend([*t, *v]);
        }
        s
    }

    fn reader(base: u64, s: &[u64]) -> impl FnMut(u64) -> Option<u64> + '_ {
        move |a| {
            assert_eq!(a % 8, 0, "unaligned read {a:#x}");
            s.get(usize::try_from((a.checked_sub(base)?) / 8).ok()?)
                .copied()
        }
    }

    const BASE: u64 = 0x7ffd_0000_0000;

    #[test]
    fn the_vdso_entry_is_found_after_argv_and_envp() {
        let auxv = [
            (3, 0x40),
            (6, 4096),
            (33, 0x7fff_f000),
            (25, 0x1234),
            (0, 0),
        ];
        for (argc, envc) in [(0, 0), (1, 0), (3, 40), (0, 7)] {
            let s = stack(argc, envc, &auxv);
            let at = sysinfo_entry(BASE, reader(BASE, &s)).unwrap();
            let i = ((at - BASE) / 8) as usize;
            assert_eq!(s[i], AT_SYSINFO_EHDR, "argc {argc} envc {envc}");
            assert_eq!(s[i + 1], 0x7fff_f000);
            assert_eq!(i as u64, 1 + argc + 1 + envc + 1 + 4);
        }
    }

    #[test]
    fn a_vector_without_the_vdso_or_a_short_stack_gives_nothing() {
        let s = stack(2, 3, &[(6, 4096), (25, 1), (0, 0)]);
        assert_eq!(sysinfo_entry(BASE, reader(BASE, &s)), None);
        // The stack ends before the vector does.
        let s = stack(2, 3, &[(6, 4096)]);
        assert_eq!(sysinfo_entry(BASE, reader(BASE, &s)), None);
        // A value 33 is not a type 33.
        let s = stack(1, 1, &[(6, 33), (0, 0)]);
        assert_eq!(sysinfo_entry(BASE, reader(BASE, &s)), None);
        // An absurd argc is refused before anything else is read.
        let mut n = 0;
        assert_eq!(
            sysinfo_entry(BASE, |_| {
                n += 1;
                Some(u64::MAX)
            }),
            None
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn rewriting_the_entry_hides_it_from_a_second_walk() {
        let mut s = stack(1, 2, &[(33, 0x7fff_f000), (0, 0)]);
        let at = sysinfo_entry(BASE, reader(BASE, &s)).unwrap();
        s[((at - BASE) / 8) as usize] = AT_IGNORE;
        assert_eq!(sysinfo_entry(BASE, reader(BASE, &s)), None);
    }

    #[test]
    fn the_clock_calls_are_answered_ahead() {
        let off = 3653 * 86_400;
        let before = sys::clock_now(libc::CLOCK_REALTIME).unwrap().tv_sec;
        let (w, r) = clock_answer(libc::SYS_clock_gettime, &[0, 0x1000, 0, 0, 0, 0], off).unwrap();
        assert_eq!(r, 0);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, 0x1000);
        let sec = i64::from_ne_bytes(w[0].1[..8].try_into().unwrap());
        assert!((sec - before - off).abs() <= 2, "{sec}");
        let nsec = i64::from_ne_bytes(w[0].1[8..].try_into().unwrap());
        assert!((0..1_000_000_000).contains(&nsec));
        // gettimeofday: the time zone too, when asked.
        let (w, r) =
            clock_answer(libc::SYS_gettimeofday, &[0x2000, 0x3000, 0, 0, 0, 0], off).unwrap();
        assert_eq!((r, w.len()), (0, 2));
        assert_eq!(
            (w[0].0, w[0].1.len(), w[1].0, w[1].1.len()),
            (0x2000, 16, 0x3000, 8)
        );
        let (w, _) = clock_answer(libc::SYS_gettimeofday, &[0, 0, 0, 0, 0, 0], off).unwrap();
        assert!(w.is_empty());
        #[cfg(target_arch = "x86_64")]
        {
            let (w, r) = clock_answer(libc::SYS_time, &[0x4000, 0, 0, 0, 0, 0], off).unwrap();
            assert!((r - before - off).abs() <= 2, "{r}");
            assert_eq!(w, vec![(0x4000, r.to_ne_bytes().to_vec())]);
            let (w, _) = clock_answer(libc::SYS_time, &[0; 6], off).unwrap();
            assert!(w.is_empty());
        }
        // A bad clock fails as the kernel's would.
        assert_eq!(
            clock_answer(libc::SYS_clock_gettime, &[4242, 0x1000, 0, 0, 0, 0], off),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            clock_answer(libc::SYS_read, &[0; 6], off),
            Err(Errno::ENOSYS)
        );
    }
}
