//! Fixtures for the sandbox tests: a busybox root with static C helpers, an
//! unprivileged system user to run hermit as, and small process utilities.
//!
//! Everything is built once per test process under
//! `$TMPDIR/hermit-e2e-sandbox-<pid>/` (world-readable, so the unprivileged
//! user can use it); directories of earlier, dead test processes are removed
//! when a new one starts.
//!
//! ```text
//! hermit-e2e-sandbox-<pid>/
//!   root/            the busybox root (`--root`), owned by root, 0755
//!     bin/busybox    + one symlink per applet, + the helpers compiled from
//!                    tests/e2e/helpers/*.c with `gcc -static`
//!     etc/           passwd, group, hosts carrying FIXTURE_MARKER, so a test
//!                    can tell them from the synthesised ones; resolv.conf
//!     homeless-shelter/   (HOME's path) — both must be hidden in the sandbox
//!     tmp build out proc dev sources mnt sources/{src,ro,d}
//!                    empty mount points
//!   bin/hermit       a copy of the binary under test that any user can run
//!   home-<uid>/      HERMIT_HOME for the runner with that uid
//!   scratch/         per-test directories owned by the runner (`As::scratch`)
//! ```
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;

/// The name of the unprivileged system user the `As::User` tests run as.
pub const TEST_USER: &str = "hermit-test";

/// A line in the fixture root's /etc files that the synthesised ones lack.
pub const FIXTURE_MARKER: &str = "fixture-root-not-synthesised";

/// Names of the C helpers in tests/e2e/helpers (each `NAME.c` becomes `/bin/NAME`).
pub const HELPERS: &[&str] = &[
    "connect",
    "daemon",
    "fhandle",
    "keyctl",
    "ptrace_attach",
    "readfd",
    "setuid",
    "stackaddr",
    "tiocsti",
    "userns",
];

/// The fixture built once per test process.
pub struct Fixture {
    /// The base directory holding everything below.
    pub base: PathBuf,
    /// The busybox root to pass as `--root`.
    pub root: PathBuf,
    /// A copy of the hermit binary any user can execute.
    pub hermit: PathBuf,
    /// uid and gid of [`TEST_USER`].
    pub user: (u32, u32),
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(build_fixture)
}

/// The busybox root directory.
pub fn busybox_root() -> &'static Path {
    &fixture().root
}

/// The host path of a helper inside the fixture root (the helpers are static,
/// so they also run on the host, for the "would work without a sandbox" checks).
pub fn helper(name: &str) -> PathBuf {
    fixture().root.join("bin").join(name)
}

fn build_fixture() -> Fixture {
    let tmp = std::env::temp_dir();
    remove_stale(&tmp);
    let base = tmp.join(format!("hermit-e2e-sandbox-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    mkdir(&base, 0o755);
    mkdir(&base.join("scratch"), 0o755);

    let root = base.join("root");
    build_busybox_root(&root);

    let bin = base.join("bin");
    mkdir(&bin, 0o755);
    let hermit = bin.join("hermit");
    fs::copy(common::hermit_bin(), &hermit).expect("copy the hermit binary");
    fs::set_permissions(&hermit, fs::Permissions::from_mode(0o755)).unwrap();

    let user = ensure_test_user();
    Fixture {
        base,
        root,
        hermit,
        user,
    }
}

/// Removes the fixture directories of test processes that no longer run.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("hermit-e2e-sandbox-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn mkdir(p: &Path, mode: u32) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn build_busybox_root(root: &Path) {
    for d in [
        "bin",
        "etc",
        "tmp",
        "build",
        "out",
        "proc",
        "dev",
        "sources",
        "usr",
        "mnt",
        // Mount points for the binds the tests make (an image has none of
        // them; `binds_create_mount_points` checks the sandbox copes).
        "sources/src",
        "sources/ro",
        "sources/d",
    ] {
        mkdir(&root.join(d), 0o755);
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (Debian package busybox-static)");
    let list = common::run(Command::new("/bin/busybox").arg("--list"));
    assert!(
        list.status.success(),
        "busybox --list: {}",
        common::both(&list)
    );
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    symlink("bin", root.join("sbin")).unwrap();
    symlink("../bin", root.join("usr/bin")).unwrap();
    symlink("../bin", root.join("usr/sbin")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        format!("root:x:0:0:{FIXTURE_MARKER}:/root:/bin/sh\n"),
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        format!("root:x:0:{FIXTURE_MARKER}\n"),
    )
    .unwrap();
    fs::write(
        root.join("etc/hosts"),
        format!("10.11.12.13 {FIXTURE_MARKER}\n"),
    )
    .unwrap();
    // Things profile v1 hides: an image's resolver config and a home
    // directory at HOME's path.
    fs::write(
        root.join("etc/resolv.conf"),
        format!("nameserver 10.11.12.13 # {FIXTURE_MARKER}\n"),
    )
    .unwrap();
    mkdir(&root.join("homeless-shelter"), 0o755);
    fs::write(root.join("homeless-shelter/.profile"), FIXTURE_MARKER).unwrap();
    compile_helpers(&root.join("bin"));
}

/// Compiles every helper with `gcc -static`, in parallel.
fn compile_helpers(bin: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/helpers");
    let children: Vec<(&str, Child)> = HELPERS
        .iter()
        .map(|name| {
            let child = Command::new("gcc")
                .args(["-static", "-O1", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(bin.join(name))
                .arg(src.join(format!("{name}.c")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run gcc (Debian package gcc, libc6-dev)");
            (*name, child)
        })
        .collect();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "compiling helper {name}.c: {}",
            common::both(&out)
        );
    }
}

/// Creates the unprivileged system user (idempotently) and returns its uid/gid.
fn ensure_test_user() -> (u32, u32) {
    if lookup_user().is_none() {
        // A concurrent test process may win the race; useradd then fails with
        // "already exists", which is fine: the lookup below decides.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .output();
    }
    lookup_user().unwrap_or_else(|| panic!("could not create the user {TEST_USER} with useradd"))
}

fn lookup_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == TEST_USER {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Who runs hermit: the tests run every sandbox case both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As {
    /// The test process itself (root in CI).
    Root,
    /// [`TEST_USER`], an unprivileged system user with no capabilities.
    User,
}

impl As {
    /// The host uid hermit runs with.
    pub fn uid(self) -> u32 {
        match self {
            As::Root => nix::unistd::geteuid().as_raw(),
            As::User => fixture().user.0,
        }
    }

    /// The host gid hermit runs with.
    pub fn gid(self) -> u32 {
        match self {
            As::Root => nix::unistd::getegid().as_raw(),
            As::User => fixture().user.1,
        }
    }

    /// A `hermit` command run by this caller, with a clean environment
    /// (plus `HERMIT_TEST_LEAK`, which must never reach the sandbox) and a
    /// HERMIT_HOME the caller owns. For `User`, `setpriv` execs hermit, so the
    /// child's pid is hermit's own.
    pub fn hermit(self) -> Command {
        self.program(&fixture().hermit)
    }

    /// Like [`As::hermit`], for another hermit binary (one installed from a
    /// package, say).
    pub fn program(self, hermit: &Path) -> Command {
        let f = fixture();
        let home = f.base.join(format!("home-{}", self.uid()));
        if !home.exists() {
            mkdir(&home, 0o700);
            chown(&home, self.uid(), self.gid());
        }
        let mut c = match self {
            As::Root => Command::new(hermit),
            As::User => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", f.user.0))
                    .arg(format!("--regid={}", f.user.1))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(hermit);
                c
            }
        };
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HERMIT_HOME", &home)
            .env("NO_COLOR", "1")
            .env("HERMIT_TEST_LEAK", "1")
            .current_dir(&f.base);
        c
    }

    /// `hermit sandbox --root <busybox root> OPTS... -- CMD...`.
    pub fn sandbox<O, C>(self, opts: O, cmd: C) -> Command
    where
        O: IntoIterator,
        O::Item: AsRef<OsStr>,
        C: IntoIterator,
        C::Item: AsRef<OsStr>,
    {
        let mut c = self.hermit();
        c.arg("sandbox").arg("--root").arg(busybox_root());
        c.args(opts).arg("--").args(cmd);
        c
    }

    /// Runs `sh -c SCRIPT` in the sandbox with OPTS, with a 60 s guard.
    pub fn sh<O>(self, opts: O, script: &str) -> Output
    where
        O: IntoIterator,
        O::Item: AsRef<OsStr>,
    {
        output_within(
            &mut self.sandbox(opts, ["/bin/sh", "-c", script]),
            Duration::from_secs(60),
        )
    }

    /// A fresh directory owned by this caller (so it is writable from inside
    /// the sandbox through `--rw`), removed when the value is dropped.
    pub fn scratch(self) -> tempfile::TempDir {
        let d = tempfile::Builder::new()
            .prefix("s")
            .tempdir_in(fixture().base.join("scratch"))
            .unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        chown(d.path(), self.uid(), self.gid());
        d
    }
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// Runs `cmd` to completion with piped stdout/stderr; kills it and panics if
/// it takes longer than `limit` (a hung sandbox must fail the test, not hang it).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    wait_within(child, limit)
}

/// Waits for a spawned child (stdout/stderr piped), killing it after `limit`.
pub fn wait_within(mut child: Child, limit: Duration) -> Output {
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap();
            panic!(
                "still running after {limit:?}, killed; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Host pids whose command line contains `needle`, excluding this process.
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// No process carrying `tag` in its command line may remain (two seconds to die); survivors are killed and the test fails.
pub fn assert_no_survivors(tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = pids_with_cmdline(tag);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for p in &left {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
            panic!(
                "{} processes of the sandbox survived it: {left:?}",
                left.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Number of host processes owned by `uid` (real uid), from /proc.
pub fn processes_of_uid(uid: u32) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            fs::read_to_string(e.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
                })
                == Some(uid)
        })
        .count()
}

/// A unique token for marking the processes of one test.
pub fn nonce(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the sandboxed command exited 0 and returns its stdout.
pub fn ok_stdout(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", common::both(o));
    stdout(o)
}

/// Generates `mod NAME { #[test] fn as_root; #[test] fn as_user }` calling
/// `NAME(As::Root)` and `NAME(As::User)`, so every sandbox case runs both as
/// root and as an unprivileged user.
macro_rules! both_users {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn as_root() {
                super::$name($crate::fixtures::As::Root)
            }
            #[test]
            fn as_user() {
                super::$name($crate::fixtures::As::User)
            }
        }
    )*};
}
pub(crate) use both_users;

/// `cmd` run through `bash` with `path` opened on descriptor 7 WITHOUT
/// close-on-exec — the leak a careless caller makes. The environment set on
/// `cmd` is kept; like every command here, it starts from an empty one.
pub fn with_fd7(cmd: &Command, path: &Path) -> Command {
    wrap(cmd, "exec 7<\"$0\" && exec \"$@\"", path.as_os_str())
}

/// `cmd` run as `bash -c SCRIPT ARG0 PROGRAM ARGS...`, keeping its
/// environment and working directory; SCRIPT ends with `exec "$@"`.
pub fn wrap(cmd: &Command, script: &str, arg0: &OsStr) -> Command {
    let mut c = Command::new("/bin/bash");
    c.arg("-c")
        .arg(script)
        .arg(arg0)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

impl As {
    /// Both callers, root first: for loops over the two ways to run hermit.
    pub const BOTH: [As; 2] = [As::Root, As::User];

    /// Like [`As::hermit`] but with HERMIT_HOME at `home` (which this caller
    /// must be able to create or own).
    pub fn hermit_in(self, home: &Path) -> Command {
        let mut c = self.hermit();
        c.env("HERMIT_HOME", home);
        c
    }

    /// Hands `path` and everything below it to this caller (`chown -R`), so
    /// that files the test prepared as root are the caller's own.
    pub fn give(self, path: &Path) {
        let o = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid(), self.gid()))
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "chown -R {}: {o:?}", path.display());
    }

    /// A short name for messages and directory names.
    pub fn name(self) -> &'static str {
        match self {
            As::Root => "root",
            As::User => "user",
        }
    }
}

/// Gives [`TEST_USER`] a subordinate uid and gid range (mmdebstrap's
/// `--mode=unshare` maps its fake root and users there), once.
pub fn ensure_subids() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        fixture();
        let has = |file: &str| {
            fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(&format!("{TEST_USER}:")))
        };
        if !(has("/etc/subuid") && has("/etc/subgid")) {
            let o = Command::new("usermod")
                .args(["--add-subuids", "1300000-1365535"])
                .args(["--add-subgids", "1300000-1365535", TEST_USER])
                .output()
                .unwrap();
            assert!(o.status.success(), "usermod --add-subuids: {o:?}");
        }
    });
}
