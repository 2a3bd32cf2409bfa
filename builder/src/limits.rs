//! The build's log and disk limits, watched by hermit while the sandbox
//! runs, and the words for a build that hit any of its limits.
//!
//! - log (`limits.log_mib`): the tee that copies the build's output into its
//!   log stops writing at the limit, adds one line saying so, drops the rest
//!   and stops the build;
//! - disk (`limits.disk_mib`): every [`WATCH_EVERY`] hermit adds up the
//!   blocks allocated under `/build` and `/out` (hard links counted once)
//!   and stops the build over the limit; a single file is also bounded by
//!   RLIMIT_FSIZE at the limit, so no one write can run far past it;
//! - memory (`limits.memory_mib`) is the sandbox's (a memory cgroup, else
//!   RLIMIT_DATA per process); here only the message.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermit_sandbox::{MemoryLimit, Outcome, RunReport};

use crate::record::Limits;

/// How often the watch runs.
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Where each limit came from, for messages: `profile v2, limits.memory_mib`
/// or `[build] memory_mib in the spec`.
fn origin(profile: &str, field: &str, from_profile: Option<u64>, used: u64) -> String {
    if from_profile == Some(used) {
        format!("profile {profile}, limits.{field}")
    } else {
        format!(
            "[build] {field} in the spec; profile {profile} allows {}",
            { from_profile.map_or("any".to_string(), |p| format!("{p} MiB")) }
        )
    }
}

/// The limits one build runs under, and what its watch saw.
pub struct Guard {
    limits: Limits,
    profile: String,
    profile_limits: hermit_profiles::Limits,
    dirs: Vec<PathBuf>,
    log_over: Arc<AtomicBool>,
    disk_over: Option<u64>,
    /// After a walk that took t, the next waits 9t: a huge tree is measured
    /// less often and the watch never takes more than a tenth of a core.
    next_walk: Instant,
}

impl Guard {
    pub fn new(limits: &Limits, profile: &hermit_profiles::Profile, dirs: Vec<PathBuf>) -> Guard {
        Guard {
            limits: limits.clone(),
            profile: profile.name.clone(),
            profile_limits: profile.limits.clone(),
            dirs,
            log_over: Arc::new(AtomicBool::new(false)),
            disk_over: None,
            next_walk: Instant::now(),
        }
    }

    /// The log writer's side of the log limit.
    pub fn log_cap(&self) -> LogCap {
        LogCap {
            limit: self.limits.log_mib.map(|m| m << 20),
            written: 0,
            over: Arc::clone(&self.log_over),
            note: self.limits.log_mib.map(|m| {
                format!(
                    "\nhermit: the build log reached its limit of {m} MiB ({}); the rest of the output was dropped and the build stopped\n",
                    origin(&self.profile, "log_mib", self.profile_limits.log_mib, m)
                )
            }),
        }
    }

    /// The sandbox's watch: true when the build must be stopped.
    pub fn check(&mut self) -> bool {
        if self.log_over.load(Ordering::Relaxed) {
            return true;
        }
        let Some(limit) = self.limits.disk_mib.map(|m| m << 20) else {
            return false;
        };
        let now = Instant::now();
        if now < self.next_walk {
            return false;
        }
        let used = disk_usage(&self.dirs).allocated;
        let took = now.elapsed();
        self.next_walk = Instant::now() + took * 9;
        if used > limit {
            self.disk_over = Some(used);
            return true;
        }
        false
    }

    /// Why the build failed, when a limit is the reason: one sentence
    /// naming the limit, where it came from and what the build did.
    pub fn hit(&self, report: &RunReport, log_path: &Path) -> Option<String> {
        let l = &self.limits;
        if self.log_over.load(Ordering::Relaxed) {
            let m = l.log_mib.unwrap_or(0);
            return Some(format!(
                "the build printed more than the log limit of {m} MiB ({}); it was stopped and its log cut there",
                origin(&self.profile, "log_mib", self.profile_limits.log_mib, m)
            ));
        }
        if let Some(disk) = l.disk_mib {
            let usage = disk_usage(&self.dirs);
            let over = self.disk_over.or_else(|| {
                let limit = disk << 20;
                // RLIMIT_FSIZE stops a single file exactly at the limit.
                let failed = !matches!(report.outcome, Outcome::Exited(0));
                (failed && (usage.allocated >= limit || usage.largest >= limit))
                    .then_some(usage.allocated.max(usage.largest))
            });
            if let Some(used) = over {
                return Some(format!(
                    "the build exceeded the disk limit of {disk} MiB ({}): /build and /out held {} MiB; it was stopped",
                    origin(&self.profile, "disk_mib", self.profile_limits.disk_mib, disk),
                    used >> 20
                ));
            }
        }
        let m = l.memory_mib?;
        let limit = format!(
            "the memory limit of {m} MiB ({})",
            origin(
                &self.profile,
                "memory_mib",
                self.profile_limits.memory_mib,
                m
            )
        );
        match report.memory {
            MemoryLimit::Cgroup { oom_kills, version } if oom_kills > 0 => Some(format!(
                "the build exceeded {limit}: the kernel killed {oom_kills} of its processes (memory cgroup v{version})"
            )),
            MemoryLimit::PerProcess if log_says_out_of_memory(log_path) => Some(format!(
                "the build exceeded {limit}: an allocation failed (the limit is per process here, RLIMIT_DATA, as hermit could not create a memory cgroup; see docs/sandbox.md)"
            )),
            _ => None,
        }
    }

    /// A note for a failed build under the per-process memory fallback,
    /// whose log does not say why.
    pub fn memory_note(&self, report: &RunReport) -> Option<String> {
        let m = self.limits.memory_mib?;
        (report.memory == MemoryLimit::PerProcess).then(|| {
            format!("note: memory is limited to {m} MiB per process here (RLIMIT_DATA; hermit could not create a memory cgroup); an allocation failure in the log means the build needs more")
        })
    }
}

/// What allocators and shells print when an allocation fails, looked for in
/// the end of the log.
fn log_says_out_of_memory(log_path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(log_path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(16 << 10)))
        .is_err()
        || f.take(16 << 10).read_to_end(&mut tail).is_err()
    {
        return false;
    }
    let tail = String::from_utf8_lossy(&tail).to_lowercase();
    [
        "out of memory",
        "cannot allocate memory",
        "memory exhausted",
        "bad_alloc",
        "memory allocation of",
        "allocation failed",
    ]
    .iter()
    .any(|s| tail.contains(s))
}

/// The log writer's side: writes up to the limit, then one line saying so.
pub struct LogCap {
    limit: Option<u64>,
    written: u64,
    over: Arc<AtomicBool>,
    note: Option<String>,
}

impl LogCap {
    /// Writes `buf` to the log as far as the limit allows; false once the
    /// limit is reached (the caller stops echoing too).
    pub fn write(&mut self, log: &mut fs::File, buf: &[u8]) -> std::io::Result<bool> {
        let Some(limit) = self.limit else {
            log.write_all(buf)?;
            return Ok(true);
        };
        if self.over.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let room = limit.saturating_sub(self.written);
        if (buf.len() as u64) <= room {
            log.write_all(buf)?;
            self.written += buf.len() as u64;
            return Ok(true);
        }
        log.write_all(&buf[..room as usize])?;
        self.written = limit;
        if let Some(note) = &self.note {
            log.write_all(note.as_bytes())?;
        }
        self.over.store(true, Ordering::Relaxed);
        Ok(false)
    }

    /// The line written at the limit, for the terminal.
    pub fn note(&self) -> &str {
        self.note.as_deref().unwrap_or_default()
    }
}

/// Largest spec or lock hermit reads.
pub const MAX_SPEC: u64 = 16 << 20;
/// Largest record hermit reads (a record lists every output file).
pub const MAX_RECORD: u64 = 256 << 20;

/// Reads a text file the user names (a spec, a lock, a record) with a
/// bound: it must be a regular file after following symlinks (a fifo would
/// block, `/dev/zero` never ends; both are refused at once) and at most
/// `limit` bytes, which is checked while reading too.
pub fn read_text(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    // Sized from the file's length (re-checked while reading: it may grow).
    let mut text = String::with_capacity(meta.len().min(limit) as usize + 1);
    f.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes; refusing to read it"),
        ));
    }
    Ok(text)
}

/// What a set of directories holds on disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Bytes allocated (st_blocks × 512), hard links counted once.
    pub allocated: u64,
    /// The largest file's length (a sparse file's may exceed its blocks).
    pub largest: u64,
}

/// Adds up what `dirs` hold, without following symlinks. Entries that vanish
/// or cannot be read while the build runs are skipped.
pub fn disk_usage(dirs: &[PathBuf]) -> Usage {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.allocated += meta.blocks() * 512;
            if meta.is_file() {
                usage.largest = usage.largest.max(meta.len());
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_cut_at_its_limit_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = fs::File::create(&path).unwrap();
        let over = Arc::new(AtomicBool::new(false));
        let mut cap = LogCap {
            limit: Some(10),
            written: 0,
            over: Arc::clone(&over),
            note: Some("\nlimit\n".into()),
        };
        assert!(cap.write(&mut log, b"123456").unwrap());
        assert!(!over.load(Ordering::Relaxed));
        assert!(!cap.write(&mut log, b"7890abc").unwrap());
        assert!(over.load(Ordering::Relaxed));
        assert!(!cap.write(&mut log, b"more").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"1234567890\nlimit\n");
    }

    #[test]
    fn disk_usage_counts_hard_links_once_and_finds_the_largest_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir(&a).unwrap();
        fs::write(a.join("f"), vec![1u8; 64 << 10]).unwrap();
        fs::hard_link(a.join("f"), a.join("g")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", a.join("z")).unwrap();
        let u = disk_usage(&[dir.path().to_path_buf()]);
        assert_eq!(u.largest, 64 << 10);
        assert!(u.allocated >= 64 << 10 && u.allocated < 128 << 10, "{u:?}");
    }

    #[test]
    fn text_files_are_bounded_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        fs::write(&p, "0123456789").unwrap();
        assert_eq!(read_text(&p, 10).unwrap(), "0123456789");
        let e = read_text(&p, 9).unwrap_err().to_string();
        assert!(e.contains("larger than 9 bytes"), "{e}");
        let e = read_text(Path::new("/dev/zero"), 9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read_text(&fifo, 9).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
