//! A pids cgroup per sandbox, where hermit may create one and it is wanted
//! ([`crate::Limits::pids_cgroup`], or a kernel older than 5.14).
//!
//! RLIMIT_NPROC (set in every sandbox) bounds a fork bomb on its own when
//! the caller is not root: since Linux 5.14 it is counted per user namespace
//! and uid, so it counts exactly the sandbox's processes. The kernel never
//! applies it to host uid 0, though — the build's uid when hermit runs as
//! root — nor is it per namespace before 5.14. Then a pids cgroup bounds the
//! sandbox: a child of hermit's own cgroup (so limits on hermit still hold),
//! in cgroup v1's `pids` hierarchy, or in cgroup v2 where the `pids`
//! controller is enabled for the children of hermit's cgroup.

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
    use nix::fcntl::{Flock, FlockArg};
    let parent = pids_parent().ok_or("no pids controller for this process")?;
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
        fs::write(path.join("pids.max"), max.to_string())
            .map_err(|e| format!("writing {}/pids.max: {e}", path.display()))?;
        return Ok(PidsCgroup { path, _lock: lock });
    }
    Err(format!(
        "all pids cgroup slots under {} are busy",
        parent.display()
    ))
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
