//! A pids cgroup per sandbox, where hermit may create one.
//!
//! RLIMIT_NPROC (set in every sandbox) already bounds a fork bomb: since
//! Linux 5.14 it is counted per user namespace and uid, so it counts exactly
//! the sandbox's processes. A pids cgroup bounds it a second time, counting
//! threads too and independent of any uid. hermit creates one as a child of
//! its own cgroup when it can write there: cgroup v1's `pids` hierarchy as
//! root, or cgroup v2 where the `pids` controller is enabled for the
//! children of hermit's cgroup (a delegated subtree). Otherwise the sandbox
//! runs with RLIMIT_NPROC alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A cgroup hermit created; removed on drop (it is empty by then: the
/// sandbox's processes are all gone when `run` returns).
#[derive(Debug)]
pub(crate) struct PidsCgroup {
    pub path: PathBuf,
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
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

/// Creates a pids cgroup limited to `max` tasks, or says why not.
pub(crate) fn create(max: u32) -> Result<PidsCgroup, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let parent = pids_parent().ok_or("no pids controller for this process")?;
    let name = format!(
        "hermit-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    remove_stale(&parent);
    let path = parent.join(name);
    fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let cg = PidsCgroup { path };
    fs::write(cg.path.join("pids.max"), max.to_string())
        .map_err(|e| format!("writing {}/pids.max: {e}", cg.path.display()))?;
    Ok(cg)
}

/// Removes empty cgroups left by hermit processes that were killed before
/// they could remove their own (`hermit-<pid>-<n>` whose pid is gone).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hermit-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}
