//! The escape suite: every way out of `hermit sandbox` we could think of must
//! fail, and each test checks it failed for the right reason — and, where it
//! means something, that the same attempt works without the sandbox (so a
//! broken helper cannot pass for a tight sandbox). Every case runs as root and
//! as an unprivileged user.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::both;
use crate::fixtures::{
    assert_no_survivors, both_users, helper, nonce, ok_stdout, output_within, pids_with_cmdline,
    stdout, wait_within, with_fd7, wrap, As,
};

fn run(who: As, opts: &[&str], cmd: &[&str]) -> std::process::Output {
    output_within(&mut who.sandbox(opts, cmd), Duration::from_secs(60))
}

/// Runs a helper directly on the host (as root) and returns its output.
fn on_host(name: &str, args: &[&str]) -> std::process::Output {
    output_within(
        Command::new(helper(name)).args(args),
        Duration::from_secs(30),
    )
}

/// The errno a helper reported for `op` ("ok" if it worked).
fn outcome<'a>(out: &'a str, op: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(op)?.strip_prefix(": "))
}

both_users!(
    tcp_to_host_listener,
    name_resolution_and_remote_hosts,
    host_secrets_absent,
    write_root_and_ro_bind,
    setuid_bits_refused,
    mount_refused,
    host_process_untouchable,
    nested_user_namespace,
    proc_root_leads_nowhere,
    leaked_fd_closed,
    tiocsti_refused,
    fork_bomb_bounded,
    daemon_dies_with_sandbox,
    sigkill_of_hermit_kills_everything,
    filling_tmp_bounded,
    keyctl_refused,
    open_by_handle_refused,
    symlink_out_of_bind,
    dev_writes_refused,
    proc_sys_read_only,
    abstract_unix_socket_unreachable,
);

fn tcp_to_host_listener(who: As) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            acc.fetch_add(1, Ordering::SeqCst);
            let mut s = s;
            let _ = s.write_all(b"host-hello");
        }
    });
    // Without the sandbox the listener really answers.
    let host = on_host("connect", &["127.0.0.1", &port]);
    let host_out = stdout(&host);
    assert!(host_out.contains("received: host-hello"), "{}", both(&host));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let out = stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!(
                "connect 127.0.0.1 {port}; connect 192.0.2.1 80; nc -w 2 127.0.0.1 {port} </dev/null; \
                 echo nc=$?"
            ),
        ],
    ));
    // Its own loopback: nothing listens there.
    assert_eq!(outcome(&out, "connect"), Some("ECONNREFUSED"), "{out}");
    // No route anywhere else.
    let second = out.lines().filter(|l| l.starts_with("connect: ")).nth(1);
    assert_eq!(second, Some("connect: ENETUNREACH"), "{out}");
    assert!(out.contains("nc=1") && !out.contains("host-hello"), "{out}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the host listener was reached"
    );
}

fn name_resolution_and_remote_hosts(who: As) {
    let o = run(
        who,
        &["--timeout", "30"],
        &[
            "/bin/sh",
            "-c",
            "nslookup localhost.example.org; echo nslookup=$?; \
             nslookup localhost.example.org 8.8.8.8; echo nslookup2=$?; \
             ping -c 1 -W 1 192.0.2.1; echo ping=$?; \
             wget -q -T 2 -O- http://192.0.2.1/; echo wget=$?",
        ],
    );
    let out = stdout(&o);
    for tool in ["nslookup", "nslookup2", "ping", "wget"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{tool}=")) && !l.ends_with("=0")),
            "{tool} succeeded: {}",
            both(&o)
        );
    }
    assert!(!out.contains("Address: "), "a name resolved: {}", both(&o));
}

fn host_secrets_absent(who: As) {
    assert!(
        Path::new("/etc/shadow").exists(),
        "the host has no /etc/shadow to protect"
    );
    let base = crate::fixtures::fixture().base.display().to_string();
    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!(
                "for p in /etc/shadow /proc/1/root/etc/shadow /root /home /work {base} \
                 /sys/fs/cgroup /run /var; do test -e $p && echo visible $p; done; \
                 cat /etc/shadow; cat /proc/1/root/etc/shadow; echo end"
            ),
        ],
    );
    assert_eq!(stdout(&o), "end\n", "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("can't open '/etc/shadow': No such file or directory"),
        "{}",
        both(&o)
    );
    // pid 1 (the sandbox's init) may keep its /proc entries to itself.
    assert!(
        err.contains("can't open '/proc/1/root/etc/shadow': No such file or directory")
            || err.contains("can't open '/proc/1/root/etc/shadow': Permission denied"),
        "{}",
        both(&o)
    );
}

fn write_root_and_ro_bind(who: As) {
    let ro = who.scratch();
    fs::write(ro.path().join("f"), "original\n").unwrap();
    let arg = format!("{}:/sources/ro", ro.path().display());
    let o = run(
        who,
        &["--ro", &arg],
        &[
            "/bin/sh",
            "-c",
            "echo x > /sources/ro/f; echo x > /sources/ro/new; rm /sources/ro/f; \
             touch /bin/busybox; echo x > /evil; \
             mount -o remount,rw /sources/ro; mount -o remount,rw /; \
             echo x > /sources/ro/f; echo end",
        ],
    );
    assert_eq!(stdout(&o), "end\n", "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("Read-only file system").count(),
        6,
        "{}",
        both(&o)
    );
    assert_eq!(
        fs::read_to_string(ro.path().join("f")).unwrap(),
        "original\n"
    );
    assert!(!ro.path().join("new").exists());
    assert!(!crate::fixtures::busybox_root().join("evil").exists());
}

fn setuid_bits_refused(who: As) {
    // Without the sandbox, the owner of a file may set its setuid bit.
    let host_dir = tempfile::tempdir().unwrap();
    let host_file = host_dir.path().join("f");
    let host = on_host("setuid", &[host_file.to_str().unwrap()]);
    assert!(stdout(&host).contains("mode: 6755"), "{}", both(&host));

    let rw = who.scratch();
    let arg = format!("{}:/out", rw.path().display());
    let o = run(
        who,
        &["--rw", &arg],
        &[
            "/bin/sh",
            "-c",
            "setuid /tmp/f; setuid /out/f; touch /out/g; chmod 4755 /out/g; chmod g+s /out/g; \
             stat -c %a /out/g",
        ],
    );
    let out = stdout(&o);
    for op in ["chmod_4755", "fchmod_2755", "fchmodat_6755"] {
        let got: Vec<_> = out
            .lines()
            .filter_map(|l| l.strip_prefix(op)?.strip_prefix(": "))
            .collect();
        assert_eq!(got, ["EPERM", "EPERM"], "{op}: {}", both(&o));
    }
    assert_eq!(out.matches("mode: 755\n").count(), 2, "{}", both(&o));
    assert!(out.ends_with("\n644\n"), "chmod 4755 stuck: {}", both(&o));
    use std::os::unix::fs::PermissionsExt;
    for f in ["f", "g"] {
        let mode = fs::metadata(rw.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o6000, 0, "host sees a setuid/setgid {f}: {mode:o}");
    }
}

fn mount_refused(who: As) {
    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "mkdir /tmp/x; mount -t tmpfs none /tmp/x; echo m1=$?; \
             mount --bind / /tmp/x; echo m2=$?; mount -t proc proc /tmp/x; echo m3=$?; \
             umount /proc; echo u=$?; grep -c ' /tmp/x ' /proc/mounts",
        ],
    );
    let out = stdout(&o);
    for k in ["m1", "m2", "m3", "u"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{k}=")) && l != format!("{k}=0")),
            "{k} succeeded: {}",
            both(&o)
        );
    }
    assert!(out.ends_with("\n0\n"), "{}", both(&o));
    // busybox mount says "permission denied (are you root?)" for EPERM.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.matches("are you root?").count() + err.matches("Operation not permitted").count() >= 4,
        "mount not refused with EPERM: {}",
        both(&o)
    );
}

/// A `sleep` on the host, killed when dropped.
struct HostSleep(std::process::Child);
impl Drop for HostSleep {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host_process_untouchable(who: As) {
    let mut victim = HostSleep(Command::new("sleep").arg("1000").spawn().unwrap());
    let pid = victim.0.id().to_string();
    // Without the sandbox the helper can attach (and detaches at once).
    let mut probe = HostSleep(Command::new("sleep").arg("1000").spawn().unwrap());
    let host = on_host("ptrace_attach", &[&probe.0.id().to_string()]);
    assert_eq!(
        outcome(&stdout(&host), "attach"),
        Some("ok"),
        "{}",
        both(&host)
    );
    let _ = probe.0.kill();

    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!(
                "kill -9 {pid}; echo kill=$?; kill -9 -1; ptrace_attach {pid}; \
                 test -e /proc/{pid} && echo visible; ps -o pid | tr -d ' ' | grep -cx {pid}"
            ),
        ],
    );
    let out = stdout(&o);
    assert!(out.contains("kill=1"), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No such process"),
        "{}",
        both(&o)
    );
    // No such process in the sandbox's pid namespace — or ptrace refused
    // outright by the seccomp filter.
    for op in ["attach", "seize"] {
        assert!(
            matches!(outcome(&out, op), Some("ESRCH") | Some("EPERM")),
            "{op}: {}",
            both(&o)
        );
    }
    assert!(!out.contains("visible"), "{}", both(&o));
    assert!(
        out.ends_with("\n0\n"),
        "host sleep visible in ps: {}",
        both(&o)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        victim.0.try_wait().unwrap().is_none(),
        "the host process died"
    );
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0\n"), "{status}");
}

fn nested_user_namespace(who: As) {
    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "userns; unshare -U -r -m id; echo unshare=$?",
        ],
    );
    let out = stdout(&o);
    match outcome(&out, "unshare_user") {
        // Preferred: refused outright.
        Some("EPERM") | Some("ENOSYS") => {
            assert!(
                out.contains("unshare=1"),
                "busybox unshare worked: {}",
                both(&o)
            )
        }
        // Allowed: then the new "root" must reach nothing of the host or the
        // sandbox's own locked mounts.
        Some("ok") => {
            assert_eq!(
                outcome(&out, "remount_root_rw"),
                Some("EPERM"),
                "{}",
                both(&o)
            );
            assert_eq!(outcome(&out, "write_root"), Some("EROFS"), "{}", both(&o));
        }
        other => panic!("unexpected unshare outcome {other:?}: {}", both(&o)),
    }
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
}

fn proc_root_leads_nowhere(who: As) {
    // For every process the command can name (itself, its shell, its parent,
    // pid 1): /proc/PID/root is either refused or the sandbox's own root.
    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "exec 2>&1; top=$(ls -a / | md5sum); \
             for p in self $$ $PPID 1; do \
               for d in /proc/$p/root/ /proc/$p/root/../../.. /proc/$p/cwd/../../..; do \
                 if l=$(ls -a $d); then \
                   test \"$(echo \"$l\" | md5sum)\" = \"$top\" && echo \"$d same\" || echo \"$d OTHER\"; \
                 fi; \
               done; \
               (cd -P /proc/$p/root/../.. && test \"$(ls -a | md5sum)\" = \"$top\" && echo \"cd $p same\"); \
               if r=$(cat /proc/$p/root/etc/shadow); then echo \"shadow $p: $r\"; fi; \
               grep -q '^builder:' /proc/$p/root/etc/passwd && echo \"passwd $p synthesised\"; \
             done; true",
        ],
    );
    // The script's errors are on stdout too (exec 2>&1), in order.
    let out = stdout(&o);
    assert!(
        !out.contains("OTHER"),
        "/proc/*/root shows another tree: {}",
        both(&o)
    );
    assert!(!out.contains("shadow "), "{}", both(&o));
    // The command's own root is reachable and is the sandbox's.
    for l in [
        "/proc/self/root/ same",
        "cd self same",
        "passwd self synthesised",
    ] {
        assert!(out.contains(l), "{l}: {}", both(&o));
    }
    // Anything else that failed was refused, not something else.
    for l in out.lines() {
        assert!(
            l.ends_with(" same")
                || l.ends_with(" synthesised")
                || l.contains("Permission denied")
                || l.contains("No such file or directory"),
            "unexpected line {l:?}: {}",
            both(&o)
        );
    }
}

fn leaked_fd_closed(who: As) {
    let secret = Path::new("/etc/shadow");
    // Without the sandbox the inherited descriptor is readable.
    let mut c = Command::new(helper("readfd"));
    c.arg("7");
    let host = output_within(&mut with_fd7(&c, secret), Duration::from_secs(30));
    assert!(stdout(&host).contains("data: root:"), "{}", both(&host));

    let c = who.sandbox(Vec::<&str>::new(), ["/bin/readfd", "7"]);
    let o = output_within(&mut with_fd7(&c, secret), Duration::from_secs(60));
    assert_eq!(outcome(&stdout(&o), "read"), Some("EBADF"), "{}", both(&o));
    // ls's own directory descriptor is 3.
    let c = who.sandbox(Vec::<&str>::new(), ["/bin/ls", "/proc/self/fd"]);
    let o = output_within(&mut with_fd7(&c, secret), Duration::from_secs(60));
    assert_eq!(stdout(&o), "0\n1\n2\n3\n", "{}", both(&o));
}

fn tiocsti_refused(who: As) {
    let (master, slave) = openpty();
    // As root on the host, TIOCSTI injects into the terminal.
    let host = wait_within(
        Command::new(helper("tiocsti"))
            .arg("0")
            .stdin(slave.try_clone().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(
        outcome(&stdout(&host), "tiocsti_fd"),
        Some("ok"),
        "{}",
        both(&host)
    );
    drain(&master);
    drain(&slave);

    let mut c = who.sandbox(Vec::<&str>::new(), ["/bin/tiocsti", "0"]);
    c.stdin(slave.try_clone().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let o = wait_within(c.spawn().unwrap(), Duration::from_secs(60));
    let out = stdout(&o);
    assert!(
        matches!(outcome(&out, "tiocsti_fd"), Some("EPERM") | Some("EIO")),
        "{}",
        both(&o)
    );
    assert_eq!(outcome(&out, "open_dev_tty"), Some("ENXIO"), "{}", both(&o));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let injected = drain(&slave);
    assert!(
        injected.is_empty(),
        "characters reached the terminal: {injected:?}"
    );
}

/// A new pty pair (master, slave), both close-on-exec.
pub(crate) fn openpty() -> (fs::File, fs::File) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    }
    (fs::File::from(pty.master), fs::File::from(pty.slave))
}

/// Reads whatever is pending on a tty descriptor without blocking.
pub(crate) fn drain(f: &fs::File) -> Vec<u8> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL).unwrap());
    fcntl(f, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    let mut v = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = nix::unistd::read(f, &mut buf) {
        if n == 0 {
            break;
        }
        v.extend_from_slice(&buf[..n]);
    }
    fcntl(f, FcntlArg::F_SETFL(flags)).unwrap();
    v
}

/// A pids cgroup (v1) with a hard ceiling, as the test's own safety net
/// against an unbounded fork bomb on a shared machine; removed on drop.
struct SafetyCgroup(PathBuf);
impl SafetyCgroup {
    const MAX: usize = 2048;
    /// In cgroup v1's pids hierarchy, else directly under the cgroup v2
    /// root (the test runs as root in CI; the root's children may use pids).
    fn new(tag: &str) -> SafetyCgroup {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let dir = if v1.join("cgroup.procs").exists() {
            v1.join(tag)
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            let ctl = v2.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&ctl).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "pids") {
                fs::write(&ctl, "+pids").expect("enable the pids controller at the cgroup v2 root");
            }
            v2.join(tag)
        };
        fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "create the pids cgroup {} as the fork bomb's safety net: {e}",
                dir.display()
            )
        });
        fs::write(dir.join("pids.max"), Self::MAX.to_string()).unwrap();
        SafetyCgroup(dir)
    }
    /// Whether the sandbox's processes ever reached the safety net's
    /// ceiling: `pids.peak` where the kernel has it, else a fork refused by
    /// this cgroup's own limit (`max N` in pids.events).
    fn reached_ceiling(&self) -> bool {
        let read = |f: &str| fs::read_to_string(self.0.join(f)).ok();
        if let Some(peak) = read("pids.peak") {
            return peak.trim().parse::<usize>().unwrap() >= Self::MAX;
        }
        read("pids.events")
            .and_then(|e| e.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            > 0
    }
    /// `cmd`, started inside this cgroup.
    fn wrap(&self, cmd: &Command) -> Command {
        wrap(
            cmd,
            "echo $$ > \"$0\" && exec \"$@\"",
            self.0.join("cgroup.procs").as_os_str(),
        )
    }
}
impl Drop for SafetyCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            // hermit's reusable `hermit-slot-*` cgroups live below this one;
            // empty child cgroups go first, or the parent cannot be removed.
            if let Ok(children) = fs::read_dir(&self.0) {
                for c in children.flatten() {
                    if c.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(c.path());
                    }
                }
            }
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            if let Ok(procs) = fs::read_to_string(self.0.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn fork_bomb_bounded(who: As) {
    let tag = nonce("forkbomb");
    let net = SafetyCgroup::new(&tag);
    // A linear fork bomb: each subshell lives on (and carries the tag, its
    // $0, in its command line), so the number of processes grows until
    // something bounds it.
    let script = "while :; do (while :; do sleep 5; done) & done";
    // Below the safety net (the profile's own bound, 4096, is above it).
    let mut c = net.wrap(&who.sandbox(
        ["--timeout", "8", "--max-procs", "1024"],
        ["/bin/sh", "-c", script, &tag],
    ));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = c.spawn().unwrap();
    // Meanwhile the host must stay responsive.
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let watcher = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        while !d.load(Ordering::SeqCst) {
            let t = Instant::now();
            let ok = Command::new("/bin/true").status().map(|s| s.success());
            assert!(
                matches!(ok, Ok(true)),
                "the host cannot start /bin/true: {ok:?}"
            );
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(200));
        }
        worst
    });
    let o = wait_within(child, Duration::from_secs(60));
    let took = start.elapsed();
    done.store(true, Ordering::SeqCst);
    let worst = watcher.join().unwrap();
    assert!(
        matches!(o.status.code(), Some(c) if c != 0),
        "the fork bomb succeeded: {}",
        both(&o)
    );
    assert!(
        took < Duration::from_secs(20),
        "hermit took {took:?} to return"
    );
    assert!(
        worst < Duration::from_secs(2),
        "the host stalled for {worst:?}"
    );
    assert!(
        !net.reached_ceiling(),
        "processes were stopped only by the test's safety net of {} pids, \
         not by the sandbox",
        SafetyCgroup::MAX
    );
    assert_no_survivors(&tag);
}

/// The heartbeat's value now, and whether it changes within `wait`.
fn heartbeat_moves(file: &Path, wait: Duration) -> bool {
    let a = fs::read_to_string(file).unwrap_or_default();
    std::thread::sleep(wait);
    let b = fs::read_to_string(file).unwrap_or_default();
    a != b
}

fn daemon_dies_with_sandbox(who: As) {
    let tag = nonce("daemon");
    let rw = who.scratch();
    let arg = format!("{}:/out", rw.path().display());
    let hb = rw.path().join(&tag);
    let o = run(
        who,
        &["--rw", &arg],
        &[
            "/bin/sh",
            "-c",
            &format!("daemon /out/{tag} && sleep 0.5 && cat /out/{tag}"),
        ],
    );
    let out = ok_stdout(&o);
    assert!(out.starts_with("daemon: "), "{out}");
    // It was running inside...
    assert!(
        out.lines().count() == 2,
        "the heartbeat never started: {out}"
    );
    // ... and is gone once hermit has returned.
    assert_no_survivors(&tag);
    assert!(
        !heartbeat_moves(&hb, Duration::from_millis(300)),
        "the daemon outlived the sandbox"
    );
}

fn sigkill_of_hermit_kills_everything(who: As) {
    let tag = nonce("sigkill");
    let rw = who.scratch();
    let arg = format!("{}:/out", rw.path().display());
    let hb = rw.path().join(&tag);
    let mut c = who.sandbox(
        ["--rw", &arg],
        [
            "/bin/sh",
            "-c",
            &format!("daemon /out/{tag}; exec sleep 1000"),
            &tag,
        ],
    );
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !hb.exists() {
        assert!(Instant::now() < deadline, "the heartbeat never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(heartbeat_moves(&hb, Duration::from_millis(300)));
    assert!(!pids_with_cmdline(&tag).is_empty());
    // SIGKILL hermit itself (setpriv execs it, so this pid is hermit's).
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let moving = heartbeat_moves(&hb, Duration::from_millis(300));
    assert_no_survivors(&tag);
    assert!(!moving, "the sandbox outlived a SIGKILLed hermit");
}

fn filling_tmp_bounded(who: As) {
    // 256 MiB rather than the profile's 4 GiB: the bound is what is tested,
    // and filling it must not cost the machine gigabytes of memory.
    let small = ["--tmp-size", "268435456"];
    // The size first, so an unlimited tmpfs fails the test without filling RAM.
    let out = ok_stdout(&run(
        who,
        &small,
        &["/bin/stat", "-f", "-c", "%T %b %S", "/tmp"],
    ));
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], "tmpfs", "{out}");
    let size: u64 = f[1].parse::<u64>().unwrap() * f[2].parse::<u64>().unwrap();
    assert!(
        size <= 256 << 20,
        "/tmp may grow to {} MiB: not size-limited",
        size >> 20
    );
    let o = run(
        who,
        &["--timeout", "50", small[0], small[1]],
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/tmp/f bs=1M; echo dd=$?; ls -l /tmp/f",
        ],
    );
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("No space left on device"), "{}", both(&o));
    assert!(out.contains("dd=1"), "{}", both(&o));
    let written: u64 = out
        .lines()
        .find(|l| l.ends_with("/tmp/f"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .unwrap();
    assert!(
        written <= size && written + (1 << 20) >= size / 2,
        "{written} of {size}"
    );
}

fn keyctl_refused(who: As) {
    let host = on_host("keyctl", &[]);
    assert_eq!(
        outcome(&stdout(&host), "add_key"),
        Some("ok"),
        "{}",
        both(&host)
    );
    let o = run(who, &[], &["/bin/keyctl"]);
    let out = stdout(&o);
    for op in ["join_session_keyring", "add_key"] {
        assert!(
            matches!(outcome(&out, op), Some("EPERM") | Some("ENOSYS")),
            "{op}: {}",
            both(&o)
        );
    }
    assert_eq!(o.status.code(), Some(1));
}

fn open_by_handle_refused(who: As) {
    // The fixture root lives on the same filesystem as /etc/shadow when both
    // are on one disk: the classic "shocker" escape then reads it by handle.
    let host = on_host("fhandle", &["name", "/etc/shadow"]);
    let handle = stdout(&host);
    let handle: Vec<&str> = handle.split_whitespace().collect();
    assert_eq!(handle.len(), 2, "{}", both(&host));
    let again = on_host("fhandle", &["open", handle[0], handle[1]]);
    assert!(stdout(&again).contains("read: root:"), "{}", both(&again));

    let o = run(who, &[], &["/bin/fhandle", "open", handle[0], handle[1]]);
    let out = stdout(&o);
    assert!(
        matches!(
            outcome(&out, "open_by_handle_at"),
            Some("EPERM") | Some("ENOSYS")
        ),
        "{}",
        both(&o)
    );
    assert!(!out.contains("read: "), "{}", both(&o));
}

fn symlink_out_of_bind(who: As) {
    let d = who.scratch();
    std::os::unix::fs::symlink("/etc", d.path().join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d.path().join("shadow")).unwrap();
    // On the host the links lead to the secrets.
    assert!(fs::read_to_string(d.path().join("escape/shadow"))
        .unwrap()
        .starts_with("root:"));
    let arg = format!("{}:/sources/d", d.path().display());
    let o = run(
        who,
        &["--ro", &arg],
        &[
            "/bin/sh",
            "-c",
            "cat /sources/d/escape/shadow; cat /sources/d/shadow; \
             grep -c '^builder:' /sources/d/escape/passwd",
        ],
    );
    assert_eq!(stdout(&o), "1\n", "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("No such file or directory").count(),
        2,
        "{}",
        both(&o)
    );
}

fn dev_writes_refused(who: As) {
    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo x > /dev/sda; echo x > /dev/mem; echo x > /dev/kmsg; \
             mknod /dev/sdb b 8 16; echo mknod_b=$?; mknod /tmp/mem c 1 1; echo mknod_c=$?; \
             cat /proc/kcore > /dev/null; echo kcore=$?; dmesg; echo dmesg=$?; \
             find /dev -type b -o -type c | sort",
        ],
    );
    let out = stdout(&o);
    for k in ["mknod_b", "mknod_c", "kcore", "dmesg"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{k}=")) && l != format!("{k}=0")),
            "{k} succeeded: {}",
            both(&o)
        );
    }
    let err = String::from_utf8_lossy(&o.stderr);
    // In /dev a read-only mount may answer first; in /tmp only the missing
    // privilege can.
    assert!(
        err.contains("mknod: /dev/sdb: Operation not permitted")
            || err.contains("mknod: /dev/sdb: Read-only file system"),
        "{}",
        both(&o)
    );
    assert!(
        err.contains("mknod: /tmp/mem: Operation not permitted"),
        "mknod of a device not refused with EPERM: {}",
        both(&o)
    );
    // Writing to /dev/sda, /dev/mem or /dev/kmsg may at most have made
    // harmless regular files: the only devices are profile v1's.
    let allowed = [
        "/dev/full",
        "/dev/null",
        "/dev/ptmx",
        "/dev/pts/ptmx",
        "/dev/random",
        "/dev/tty",
        "/dev/urandom",
        "/dev/zero",
    ];
    let devices: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
    for d in &devices {
        assert!(
            allowed.contains(d),
            "device {d} in the sandbox: {}",
            both(&o)
        );
    }
    assert!(devices.len() >= 7, "{}", both(&o));
}

fn proc_sys_read_only(who: As) {
    // /proc/sys is global for most entries: a write from inside would change
    // the host (kernel.core_pattern even runs a program as host root). The
    // attempt below writes back the value already there, so it cannot harm
    // the host even when it succeeds; success is seen in the shell's status.
    // The others are only opened for writing, never written (busybox's
    // `test -w` looks at mode bits alone, not at read-only mounts).
    let ratio = "/proc/sys/vm/overcommit_ratio";
    let before = fs::read_to_string(ratio).unwrap();
    let value = before.trim();
    let o = run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!(
                "echo {value} > {ratio}; echo write=$?; \
                 for f in {ratio} /proc/sys/kernel/core_pattern /proc/sys/kernel/randomize_va_space \
                          /proc/sys/kernel/modprobe /proc/sysrq-trigger; do \
                   (: >> $f) 2>/dev/null && echo writable $f; done; true"
            ),
        ],
    );
    let out = stdout(&o);
    assert!(
        out.starts_with("write=") && !out.starts_with("write=0"),
        "a host sysctl was written from inside: {}",
        both(&o)
    );
    assert!(!out.contains("writable"), "{}", both(&o));
    assert_eq!(fs::read_to_string(ratio).unwrap(), before);
}

fn abstract_unix_socket_unreachable(who: As) {
    // Abstract unix sockets (D-Bus, X11, systemd use them) have no file to
    // hide: only a network namespace of its own keeps them out of reach.
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = nonce("hermit-abstract");
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            acc.fetch_add(1, Ordering::SeqCst);
            let mut s = s;
            let _ = s.write_all(b"host-hello");
        }
    });
    let at = format!("@{name}");
    let host = on_host("connect", &[&at, "unix"]);
    assert!(
        stdout(&host).contains("received: host-hello"),
        "{}",
        both(&host)
    );
    let o = run(who, &[], &["/bin/connect", &at, "unix"]);
    assert_eq!(
        outcome(&stdout(&o), "connect"),
        Some("ECONNREFUSED"),
        "{}",
        both(&o)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the host socket was reached"
    );
}
