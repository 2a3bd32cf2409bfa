//! [`SandboxSpec`]: everything the sandbox needs to run one command, as plain
//! data. It knows nothing of build specs, stores or profiles and has no
//! defaults of its own: every value of the environment is given explicitly
//! (the builder derives them all from a profile, in
//! `builder/src/environment.rs`), and the spec travels to the sandbox's init
//! as JSON.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One command to run in the sandbox, and the environment around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// Host directory shown read-only as `/`.
    pub root: PathBuf,
    /// Mounts applied over the root, in order (a later one may sit inside an
    /// earlier one).
    pub mounts: Vec<Mount>,
    /// The exact environment of the command, in order.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// User inside the sandbox (mapped to the caller's uid outside).
    pub uid: u32,
    /// Group inside the sandbox (mapped to the caller's gid outside).
    pub gid: u32,
    /// Name of `uid` in the synthesised `/etc/passwd`.
    pub user: String,
    /// Name of `gid` in the synthesised `/etc/group`.
    pub group: String,
    /// Home directory written to `/etc/passwd`. When it does not exist in
    /// the image it is hidden (nothing can be created there either).
    pub home: PathBuf,
    pub hostname: String,
    /// The NIS domain name (`setdomainname(2)`; what `domainname` prints).
    pub domainname: String,
    /// Size of the `/dev/shm` tmpfs, in bytes.
    pub shm_size: u64,
    /// argv; `command[0]` is looked up in the spec's PATH when it has no `/`.
    pub command: Vec<String>,
    /// Wall-clock limit; when it passes every process in the sandbox is killed.
    pub timeout: Option<Duration>,
    pub limits: Limits,
    /// Address-space layout randomisation.
    pub aslr: bool,
    pub umask: u32,
    /// Run the command on at most this many of the CPUs it may run on
    /// (`sched_setaffinity`: what `nproc` and `sched_getaffinity` report);
    /// `None` keeps the affinity hermit runs with. `hermit check` varies it.
    pub cpus: Option<u32>,
    /// The `PER_LINUX32` personality: `uname -m` reports the 32-bit machine
    /// (`i686` on x86-64). `hermit check` varies it; builds run without.
    pub linux32: bool,
    /// What `uname(2)` reports as the kernel release and version instead of
    /// the host's: a seccomp user notification on `uname`, answered by the
    /// sandbox's init (statically linked programs too). `hermit check`
    /// varies it; builds run without (`None`: the call is not intercepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uname: Option<Uname>,
    /// Moves the wall clock (`CLOCK_REALTIME` and what reads it) this many
    /// seconds, for every program in the sandbox, statically linked ones
    /// included: the sandbox's init traces each program to hide its vDSO,
    /// and answers the clock's system calls through seccomp user
    /// notification (see `trace.rs`). `hermit check` varies it; builds run
    /// without (`None`: nothing is traced or intercepted). x86-64 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset: Option<i64>,
}

/// The kernel release and version a sandbox's `uname(2)` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uname {
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
}

/// A mount over the root image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Mount {
    /// Bind a host path (file or directory); `nosuid,nodev` always, read-only
    /// unless `writable`.
    Bind {
        src: PathBuf,
        dst: PathBuf,
        writable: bool,
    },
    /// A fresh, empty, writable tmpfs (`nosuid,nodev`, mode 1777).
    Tmpfs { dst: PathBuf, size: Option<u64> },
    /// A writable overlayfs (`nosuid,nodev`): the host directory `lower`,
    /// never changed, under the host directory `upper`, which receives every
    /// change. `work` is overlayfs's work directory: empty, on `upper`'s
    /// filesystem. The overlay takes a merged directory's owner, mode and
    /// times from `upper` when `upper` has that directory. Mounted inside the
    /// sandbox's user namespace (Linux ≥ 5.11) with `userxattr` and
    /// `volatile` (`upper` is scratch space: nothing is synced to disk).
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        dst: PathBuf,
    },
}

impl Mount {
    pub fn dst(&self) -> &Path {
        match self {
            Mount::Bind { dst, .. } | Mount::Tmpfs { dst, .. } | Mount::Overlay { dst, .. } => dst,
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most processes (and threads) the command may have at once: bounds a
    /// fork bomb. Enforced by RLIMIT_NPROC (counted per user namespace on
    /// Linux ≥ 5.14) and, where hermit may create one, a pids cgroup.
    pub max_processes: Option<u32>,
    /// RLIMIT_NOFILE, soft and hard (capped at the caller's hard limit).
    pub max_open_files: Option<u64>,
    /// RLIMIT_CORE, soft and hard (capped at the caller's hard limit): the
    /// largest core dump, in bytes; 0 means no core dumps.
    pub max_core_size: u64,
    /// RLIMIT_FSIZE: largest file the command may write, in bytes.
    pub max_file_size: Option<u64>,
    /// Also bound `max_processes` with a pids cgroup of its own, where hermit
    /// may create one. Off by default for non-root callers: RLIMIT_NPROC is
    /// exact on Linux ≥ 5.14. Always on for root callers (the kernel never
    /// applies RLIMIT_NPROC to host uid 0) and on older kernels, where
    /// RLIMIT_NPROC counts all of the caller's processes.
    #[serde(default)]
    pub pids_cgroup: bool,
    /// Memory of the whole sandbox, in bytes: a memory cgroup (v1
    /// `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes`, v2
    /// `memory.max` and `memory.swap.max`) where hermit can create one;
    /// otherwise RLIMIT_DATA of this size for every process (see
    /// [`crate::RunReport::memory`]).
    #[serde(default)]
    pub max_memory: Option<u64>,
    /// RLIMIT_DATA of every process. Set by the sandbox itself when
    /// `max_memory` cannot have a cgroup.
    #[serde(default)]
    pub max_data: Option<u64>,
}

/// A spec that cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the command is empty")]
    EmptyCommand,
    #[error("{what} {path:?} must be an absolute path without `.`, `..` or `//`")]
    BadPath { what: &'static str, path: PathBuf },
    #[error("mount destination {0:?} cannot be `/` (the root image is `/`)")]
    RootDestination(PathBuf),
    #[error("mount destination {0:?} is reserved for the sandbox's own /proc or /dev")]
    ReservedDestination(PathBuf),
    #[error("environment variable name {0:?} is empty or holds `=` or NUL")]
    BadEnvName(String),
    #[error("environment variable {0:?} has a NUL byte in its value")]
    BadEnvValue(String),
    #[error("argument {0:?} has a NUL byte")]
    BadArgument(String),
    #[error("command {0:?} has no `/` and the environment has no PATH to look it up in")]
    NoPath(String),
    #[error("hostname {0:?} is not 1–64 characters of [A-Za-z0-9.-]")]
    BadHostname(String),
    #[error("domain name {0:?} is not 1–64 printable ASCII characters")]
    BadDomainname(String),
    #[error("user or group name {0:?} is not a valid name")]
    BadName(String),
    #[error("umask {0:#o} has bits outside 0777")]
    BadUmask(u32),
    #[error("the command must be allowed at least one CPU")]
    NoCpus,
    #[error("uname {what} {value:?} is not 1–64 printable ASCII characters")]
    BadUname { what: &'static str, value: String },
    #[error("a moved clock (clock_offset {0}) needs x86-64 and an offset within ±1000 years")]
    BadClockOffset(i64),
    #[error("uid/gid 0 inside the sandbox is not supported (the build runs unprivileged)")]
    RootUid,
    #[error("{what} {path:?} holds `,`, `:` or `\\`, which overlayfs's mount options cannot carry; use a store path without them (HERMIT_HOME)")]
    OverlayPath { what: &'static str, path: PathBuf },
}

impl SandboxSpec {
    /// Sets `key` in the environment, replacing an earlier value in place.
    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }

    /// Checks everything that can be checked without touching the disk.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.command.is_empty() {
            return Err(SpecError::EmptyCommand);
        }
        if let Some(a) = self.command.iter().find(|a| a.contains('\0')) {
            return Err(SpecError::BadArgument(a.clone()));
        }
        if !self.command[0].contains('/') && !self.env.iter().any(|(k, _)| k == "PATH") {
            return Err(SpecError::NoPath(self.command[0].clone()));
        }
        check_abs("root", &self.root)?;
        check_abs("working directory", &self.cwd)?;
        check_abs("home", &self.home)?;
        for m in &self.mounts {
            if let Mount::Bind { src, .. } = m {
                check_abs("bind source", src)?;
            }
            if let Mount::Overlay {
                lower, upper, work, ..
            } = m
            {
                for (what, p) in [
                    ("overlay lower directory", lower),
                    ("overlay upper directory", upper),
                    ("overlay work directory", work),
                ] {
                    check_abs(what, p)?;
                    // They travel in overlayfs's comma- and colon-separated
                    // mount options.
                    if p.to_string_lossy().contains([',', ':', '\\']) {
                        return Err(SpecError::OverlayPath {
                            what,
                            path: p.clone(),
                        });
                    }
                }
            }
            let dst = m.dst();
            check_abs("mount destination", dst)?;
            if dst == Path::new("/") {
                return Err(SpecError::RootDestination(dst.to_path_buf()));
            }
            if dst.starts_with("/proc") || dst.starts_with("/dev") {
                return Err(SpecError::ReservedDestination(dst.to_path_buf()));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(SpecError::BadEnvName(k.clone()));
            }
            if v.contains('\0') {
                return Err(SpecError::BadEnvValue(k.clone()));
            }
        }
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(SpecError::BadHostname(h.clone()));
        }
        let d = &self.domainname;
        if d.is_empty() || d.len() > 64 || !d.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SpecError::BadDomainname(d.clone()));
        }
        for name in [&self.user, &self.group] {
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(SpecError::BadName(name.clone()));
            }
        }
        if self.umask & !0o777 != 0 {
            return Err(SpecError::BadUmask(self.umask));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(SpecError::RootUid);
        }
        if self.cpus == Some(0) {
            return Err(SpecError::NoCpus);
        }
        if let Some(u) = &self.uname {
            for (what, value) in [("release", &u.release), ("version", &u.version)] {
                // utsname's fields are 65 bytes with the NUL.
                if value.is_empty()
                    || value.len() > 64
                    || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
                {
                    return Err(SpecError::BadUname {
                        what,
                        value: value.clone(),
                    });
                }
            }
        }
        if let Some(o) = self.clock_offset {
            if !cfg!(target_arch = "x86_64") || o.unsigned_abs() > MAX_CLOCK_OFFSET {
                return Err(SpecError::BadClockOffset(o));
            }
        }
        Ok(())
    }
}

/// The largest clock offset, in seconds: about a thousand years.
const MAX_CLOCK_OFFSET: u64 = 1000 * 366 * 86_400;

/// Absolute, normalised (no `.`, `..`, empty components), no NUL.
fn check_abs(what: &'static str, p: &Path) -> Result<(), SpecError> {
    let bad = || SpecError::BadPath {
        what,
        path: p.to_path_buf(),
    };
    let s = p.to_str().ok_or_else(bad)?;
    if !s.starts_with('/') || s.contains('\0') || s.contains("//") {
        return Err(bad());
    }
    if (s.len() > 1 && s.ends_with('/'))
        || p.components()
            .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || s.split('/').any(|c| c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(())
}

/// A complete spec for the crate's unit tests (the values of hermit's
/// profiles, written out: the crate itself has no defaults).
#[cfg(test)]
pub(crate) fn test_spec(root: &str, command: &[&str]) -> SandboxSpec {
    let env = [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/homeless-shelter"),
        ("TERM", "dumb"),
    ];
    SandboxSpec {
        root: root.into(),
        mounts: vec![Mount::Tmpfs {
            dst: PathBuf::from("/tmp"),
            size: Some(1 << 30),
        }],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: PathBuf::from("/"),
        uid: 1000,
        gid: 1000,
        user: "builder".into(),
        group: "builder".into(),
        home: PathBuf::from("/homeless-shelter"),
        hostname: "localhost".into(),
        domainname: "(none)".into(),
        shm_size: 256 << 20,
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout: None,
        limits: Limits {
            max_processes: Some(1024),
            max_open_files: Some(4096),
            max_core_size: 0,
            max_file_size: None,
            pids_cgroup: false,
            max_memory: None,
            max_data: None,
        },
        aslr: false,
        umask: 0o022,
        cpus: None,
        linux32: false,
        uname: None,
        clock_offset: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        test_spec("/r", &["/bin/true"])
    }

    #[test]
    fn a_uname_release_must_fit_utsname() {
        let mut s = spec();
        s.uname = Some(Uname {
            release: "4.4.0-hermit-check".into(),
            version: "#1 SMP x".into(),
        });
        assert_eq!(s.validate(), Ok(()));
        for (release, version) in [("", "v"), ("r", &"v".repeat(65)[..]), ("a\nb", "v")] {
            s.uname = Some(Uname {
                release: release.into(),
                version: version.into(),
            });
            assert!(
                matches!(s.validate(), Err(SpecError::BadUname { .. })),
                "{release:?} {version:?}"
            );
        }
    }

    #[test]
    fn a_clock_offset_is_bounded_and_x86_64_only() {
        let mut s = spec();
        s.clock_offset = Some(3653 * 86_400);
        let want = if cfg!(target_arch = "x86_64") {
            Ok(())
        } else {
            Err(SpecError::BadClockOffset(3653 * 86_400))
        };
        assert_eq!(s.validate(), want);
        s.clock_offset = Some(i64::MIN);
        assert_eq!(s.validate(), Err(SpecError::BadClockOffset(i64::MIN)));
        // Absent from the JSON when not set, so older specs read the same.
        let json = serde_json::to_string(&spec()).unwrap();
        assert!(!json.contains("clock_offset"), "{json}");
    }

    #[test]
    fn a_complete_spec_is_valid_and_round_trips() {
        let s = spec();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SandboxSpec>(&json).unwrap(), s);
    }

    #[test]
    fn bad_paths_and_names_are_refused() {
        for p in ["rel", "/a/../b", "/a/./b", "/a//b", "/a/"] {
            let mut s = spec();
            s.cwd = p.into();
            assert!(
                matches!(s.validate(), Err(SpecError::BadPath { .. })),
                "{p}"
            );
        }
        let mut s = spec();
        s.mounts.push(Mount::Tmpfs {
            dst: "/proc/x".into(),
            size: None,
        });
        assert!(matches!(
            s.validate(),
            Err(SpecError::ReservedDestination(_))
        ));
        let mut s = spec();
        s.mounts.push(Mount::Overlay {
            lower: "/a,b".into(),
            upper: "/u".into(),
            work: "/w".into(),
            dst: "/build".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::OverlayPath { .. })));
        let mut s = spec();
        s.env.push(("A=B".into(), "x".into()));
        assert!(matches!(s.validate(), Err(SpecError::BadEnvName(_))));
        let mut s = spec();
        s.hostname = "a b".into();
        assert!(matches!(s.validate(), Err(SpecError::BadHostname(_))));
        let mut s = spec();
        s.domainname = "a\nb".into();
        assert!(matches!(s.validate(), Err(SpecError::BadDomainname(_))));
        let mut s = spec();
        s.command.clear();
        assert_eq!(s.validate(), Err(SpecError::EmptyCommand));
    }

    #[test]
    fn set_env_replaces_in_place() {
        let mut s = spec();
        s.set_env("TERM", "xterm");
        s.set_env("NEW", "1");
        assert_eq!(s.env[2], ("TERM".into(), "xterm".into()));
        assert_eq!(s.env.last().unwrap(), &("NEW".into(), "1".into()));
    }
}
