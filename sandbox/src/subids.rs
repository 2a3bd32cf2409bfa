//! Subordinate ids (`/etc/subuid`, `/etc/subgid`): how an ordinary user
//! gives files an owner other than itself, rootless. A user namespace whose
//! maps `newuidmap`/`newgidmap` (Debian's `uidmap` package) write maps the
//! caller's first subordinate uid and gid at an id of the caller's choice;
//! inside it, the caller (mapped as root) may `chown` its own files to that
//! id. `hermit check --vary archive` varies the owner of the sources' copy
//! this way.
//!
//! The namespace is made by util-linux's `unshare` (2.38 on:
//! `--map-users`/`--map-groups`), which runs `newuidmap`/`newgidmap` on
//! itself; the work inside is `find` and `chown -h` (never following a
//! symlink). Directories keep the caller's group, and hermit gives them
//! group write: the caller can always remove the tree afterwards, without a
//! namespace — even after a crash, the store is never left with files its
//! owner cannot delete.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The caller's first subordinate uid and gid, and the tools to use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubIds {
    pub uid: u32,
    pub gid: u32,
    unshare: PathBuf,
}

/// The first subordinate id of `name` (or `uid`) in the text of
/// `/etc/subuid` or `/etc/subgid` (`owner:start:count` lines).
pub fn first_range(text: &str, name: &str, uid: u32) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
        let count: u32 = count.trim().parse().ok()?;
        if (owner == name || owner == uid.to_string()) && count > 0 {
            start.trim().parse().ok()
        } else {
            None
        }
    })
}

fn which(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.is_file())
}

impl SubIds {
    /// The caller's subordinate ids, or why there are none and the fix.
    pub fn of_caller() -> Result<SubIds, String> {
        let uid = nix::unistd::getuid().as_raw();
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
        SubIds::from_host(
            &name,
            uid,
            &read("/etc/subuid"),
            &read("/etc/subgid"),
            which(&["/usr/bin/newuidmap", "/bin/newuidmap"]).is_some()
                && which(&["/usr/bin/newgidmap", "/bin/newgidmap"]).is_some(),
            which(&["/usr/bin/unshare", "/bin/unshare"]),
        )
    }

    /// [`SubIds::of_caller`] from what the host has.
    pub fn from_host(
        name: &str,
        uid: u32,
        subuid: &str,
        subgid: &str,
        idmap_tools: bool,
        unshare: Option<PathBuf>,
    ) -> Result<SubIds, String> {
        if !idmap_tools {
            return Err(
                "newuidmap and newgidmap are missing; install them with: apt-get install uidmap"
                    .into(),
            );
        }
        let (Some(sub_uid), Some(sub_gid)) = (
            first_range(subuid, name, uid),
            first_range(subgid, name, uid),
        ) else {
            return Err(format!(
                "{name} has no subordinate id range in /etc/subuid and /etc/subgid; an \
                 administrator adds one with: usermod --add-subuids 100000-165535 \
                 --add-subgids 100000-165535 {name} (pick a range no other user has)"
            ));
        };
        let Some(unshare) = unshare else {
            return Err("util-linux's unshare is missing".into());
        };
        Ok(SubIds {
            uid: sub_uid,
            gid: sub_gid,
            unshare,
        })
    }

    /// Gives every entry of `dir` (and `dir`) the owner `inner` as a user
    /// namespace that maps `inner` to the first subordinate uid and gid
    /// sees it: files and symlinks `inner:inner`, directories `inner` and
    /// the caller's group (so the caller can always remove the tree).
    pub fn chown_tree(&self, dir: &Path, inner: u32) -> io::Result<()> {
        let arg = |s: String| OsString::from(s);
        let o = Command::new(&self.unshare)
            .arg("--map-root-user")
            .arg(arg(format!("--map-users={},{inner},1", self.uid)))
            .arg(arg(format!("--map-groups={},{inner},1", self.gid)))
            .args(["--", "/bin/sh", "-c"])
            .arg(format!(
                "find \"$1\" -type d -exec chown -h {inner}:0 {{}} + && \
                 find \"$1\" ! -type d -exec chown -h {inner}:0 {{}} +"
            ))
            .arg("sh")
            .arg(dir)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| io::Error::other(format!("running {}: {e}", self.unshare.display())))?;
        if o.status.success() {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "{} --map-users={},{inner},1 … chown ({}): {}",
            self.unshare.display(),
            self.uid,
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_range_of_the_caller_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:65536\nbob:300000:0\n";
        assert_eq!(first_range(text, "alice", 1000), Some(100000));
        assert_eq!(first_range(text, "carol", 1001), Some(200000));
        assert_eq!(first_range(text, "bob", 1002), None);
        assert_eq!(first_range("garbage\n:x:\n", "alice", 1000), None);
    }

    #[test]
    fn missing_tools_or_ranges_name_the_fix() {
        let u = Some(PathBuf::from("/usr/bin/unshare"));
        let e = SubIds::from_host("alice", 1000, "", "", false, u.clone()).unwrap_err();
        assert!(e.contains("apt-get install uidmap"), "{e}");
        let e = SubIds::from_host("alice", 1000, "alice:1:5\n", "", true, u.clone()).unwrap_err();
        assert!(
            e.contains("usermod --add-subuids") && e.contains("alice"),
            "{e}"
        );
        let ok = SubIds::from_host("alice", 1000, "alice:7:5\n", "alice:9:5\n", true, u);
        assert_eq!(ok.map(|s| (s.uid, s.gid)), Ok((7, 9)));
    }
}
