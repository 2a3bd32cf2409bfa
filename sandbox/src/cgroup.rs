//! A pids cgroup per sandbox, where hermit may create one and it is wanted
//! ([`crate::Limits::pids_cgroup`], or a kernel older than 5.14); and a
//! memory cgroup per sandbox with a memory limit
//! ([`crate::Limits::max_memory`]), where hermit may create one.
//!
//! RLIMIT_NPROC (set in every sandbox) bounds a fork bomb on its own when
//! the caller is not root: since Linux 5.14 it is counted per user namespace
//! and uid, so it counts exactly the sandbox's processes. The kernel never
//! applies it to host uid 0, though — the build's uid when hermit runs as
//! root — nor is it per namespace before 5.14. Then a pids cgroup bounds the
//! sandbox: a child of hermit's own cgroup (so limits on hermit still hold),
//! in cgroup v1's `pids` hierarchy, or in cgroup v2 where the `pids`
//! controller is enabled for the children of hermit's cgroup.
//!
//! Memory is bounded the same way: a slot in cgroup v1's `memory` hierarchy
//! (`memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` where swap
//! accounting is on, so the build cannot swap past it), or in cgroup v2
//! where `memory` is enabled for the children of hermit's cgroup
//! (`memory.max`, `memory.swap.max = 0`). Whether the kernel's OOM killer
//! ended a process is read from the slot's `oom_kill` counter. Where no
//! memory cgroup can be had (an unprivileged caller under cgroup v1, or a
//! v2 cgroup without `memory` delegated), the run falls back to RLIMIT_DATA
//! per process (see [`crate::MemoryLimit`]).

use std::fs;
use std::path::{Path, PathBuf};

/// A pids cgroup slot held for one sandbox. Slots (`hermit-slot-<n>`) are
/// created once and reused: creating and removing a cgroup costs
/// milliseconds, claiming an idle slot costs microseconds. A slot is held by
/// an exclusive `flock` on its directory, which the kernel drops when hermit
/// exits, however it exits.
#[derive(Debug)]
pub(crate) struct PidsCgroup {
    pub path: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Where the pids controller of this process lives, if anywhere.
pub fn pids_parent() -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, rel) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = rel.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == "pids") {
            let base = Path::new("/sys/fs/cgroup/pids");
            if base.join("pids.max").exists() || base.join("cgroup.procs").exists() {
                return Some(base.join(rel));
            }
        }
    }
    // cgroup v2: pids must be enabled for our cgroup's children.
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let sub = fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
    sub.split_whitespace().any(|c| c == "pids").then_some(dir)
}

/// Claims an idle pids cgroup slot limited to `max` tasks, or says why not.
pub(crate) fn create(max: u32) -> Result<PidsCgroup, String> {
    let parent = pids_parent().ok_or("no pids controller for this process")?;
    let (path, lock) = claim(&parent)?;
    // Under cgroup v2 a slot may carry an earlier sandbox's memory limit.
    if path.join("memory.max").exists() {
        let _ = fs::write(path.join("memory.max"), "max");
    }
    fs::write(path.join("pids.max"), max.to_string())
        .map_err(|e| format!("writing {}/pids.max: {e}", path.display()))?;
    Ok(PidsCgroup { path, _lock: lock })
}

/// Claims an idle slot (`hermit-slot-<n>`) under `parent`: created if
/// missing, held by an exclusive `flock`, with no processes left in it.
fn claim(parent: &Path) -> Result<(PathBuf, nix::fcntl::Flock<fs::File>), String> {
    use nix::fcntl::{Flock, FlockArg};
    for i in 0..256 {
        let path = parent.join(format!("hermit-slot-{i}"));
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {}: {e}", path.display())),
        }
        let dir = fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let Ok(lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) else {
            continue; // another hermit holds it
        };
        // Processes of a sandbox whose hermit was killed may still be dying.
        let busy = fs::read_to_string(path.join("cgroup.procs"))
            .map(|p| !p.trim().is_empty())
            .unwrap_or(true);
        if busy {
            continue;
        }
        return Ok((path, lock));
    }
    Err(format!(
        "all cgroup slots under {} are busy",
        parent.display()
    ))
}

/// A memory cgroup held for one sandbox (a slot, as for pids).
#[derive(Debug)]
pub(crate) struct MemoryCgroup {
    /// The cgroup to join; `None` when the sandbox's pids cgroup (cgroup v2,
    /// the same directory) carries the memory limit too.
    pub join: Option<PathBuf>,
    path: PathBuf,
    v2: bool,
    /// OOM kills counted in the slot when it was claimed.
    oom_kills_before: u64,
    _lock: Option<nix::fcntl::Flock<fs::File>>,
}

impl MemoryCgroup {
    /// 1 or 2.
    pub fn version(&self) -> u8 {
        if self.v2 {
            2
        } else {
            1
        }
    }

    /// OOM kills in the sandbox since the slot was claimed.
    pub fn oom_kills(&self) -> u64 {
        oom_kills(&self.path, self.v2).saturating_sub(self.oom_kills_before)
    }
}

/// The `oom_kill` counter of a memory cgroup (v1 `memory.oom_control`,
/// v2 `memory.events`); 0 when unreadable.
fn oom_kills(path: &Path, v2: bool) -> u64 {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    fs::read_to_string(path.join(file))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Where this process's memory controller lives and whether it is cgroup v2:
/// v1's `memory` hierarchy, or a v2 cgroup whose children get `memory`.
pub fn memory_parent() -> Option<(PathBuf, bool)> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, rel) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == "memory") {
            let base = Path::new("/sys/fs/cgroup/memory");
            if base.join("memory.limit_in_bytes").exists() {
                return Some((base.join(rel.trim_start_matches('/')), false));
            }
        }
    }
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let sub = fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
    sub.split_whitespace()
        .any(|c| c == "memory")
        .then_some((dir, true))
}

/// A memory cgroup limited to `bytes` (and no swap beyond it), or why not.
/// Under cgroup v2 a process is in one cgroup only, so when the sandbox
/// has a v2 pids slot under the same parent, that slot gets the limit.
pub(crate) fn create_memory(bytes: u64, pids: Option<&PidsCgroup>) -> Result<MemoryCgroup, String> {
    let (parent, v2) = memory_parent().ok_or("no memory controller for this process")?;
    let write = |dir: &Path, file: &str, v: &str| {
        fs::write(dir.join(file), v).map_err(|e| format!("writing {}/{file}: {e}", dir.display()))
    };
    if v2 {
        let (path, lock, join) = match pids.filter(|p| p.path.parent() == Some(parent.as_path())) {
            Some(p) => (p.path.clone(), None, None),
            None => {
                let (path, lock) = claim(&parent)?;
                // An earlier sandbox's pids limit does not apply to this one.
                if path.join("pids.max").exists() {
                    let _ = fs::write(path.join("pids.max"), "max");
                }
                (path.clone(), Some(lock), Some(path))
            }
        };
        write(&path, "memory.max", &bytes.to_string())?;
        if path.join("memory.swap.max").exists() {
            write(&path, "memory.swap.max", "0")?;
        }
        return Ok(MemoryCgroup {
            join,
            oom_kills_before: oom_kills(&path, true),
            path,
            v2,
            _lock: lock,
        });
    }
    let (path, lock) = claim(&parent)?;
    // memsw is lifted first so that the limit can move either way.
    let memsw = path.join("memory.memsw.limit_in_bytes").exists();
    let limit = || -> Result<(), String> {
        if memsw {
            write(&path, "memory.memsw.limit_in_bytes", "-1")?;
        }
        write(&path, "memory.limit_in_bytes", &bytes.to_string())?;
        if memsw {
            write(&path, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
        }
        Ok(())
    };
    // What an earlier sandbox left charged here (page cache) is reclaimed
    // by the kernel as this one needs room; it is emptied by force only
    // when it is over the new limit, which the kernel then refuses. (Forcing
    // it every time drains every CPU's page lists: 2 to 8 ms per sandbox on
    // a busy 2-core machine, even for an empty cgroup.)
    if limit().is_err() {
        let _ = write(&path, "memory.force_empty", "0");
        limit()?;
    }
    Ok(MemoryCgroup {
        join: Some(path.clone()),
        oom_kills_before: oom_kills(&path, false),
        path,
        v2,
        _lock: Some(lock),
    })
}
/// Whether RLIMIT_NPROC is counted per user namespace (Linux ≥ 5.14), so
/// that it bounds exactly the sandbox's processes.
pub fn nproc_is_per_userns() -> bool {
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (5, 14)
}
