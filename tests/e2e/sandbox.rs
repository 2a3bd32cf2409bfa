//! `hermit sandbox`: the profiles' environments as seen from inside, exit
//! codes and timeouts. Every case runs as root and as an unprivileged user
//! (`both_users!`). The escape attempts live in `sandbox_escape`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use crate::common::both;
use crate::fixtures::{
    assert_no_survivors, both_users, nonce, ok_stdout, output_within, stdout, As, FIXTURE_MARKER,
};

fn run(who: As, opts: &[&str], cmd: &[&str]) -> std::process::Output {
    output_within(&mut who.sandbox(opts, cmd), Duration::from_secs(60))
}

both_users!(
    memory_flag_bounds_or_frees_the_command,
    identity,
    hostname,
    etc_files_synthesised,
    env_exactly_each_profile,
    env_flag_adds_variables,
    stdio_passthrough,
    umask_022,
    cwd_flag,
    proc_is_fresh,
    dev_is_minimal,
    dev_nodes_work,
    root_read_only_tmp_writable,
    binds_ro_rw_tmpfs,
    binds_create_mount_points,
    complete_image_is_the_root,
    loopback_only_and_up,
    no_capabilities_nnp_seccomp,
    aslr_off_by_default,
    aslr_on_with_flag,
    only_std_fds,
    new_session_no_tty,
    exit_status_passthrough,
    timeout_exits_124,
    setup_failure_exits_125,
);

/// A root image that already has every mount point the plan needs (and
/// nothing to hide at its top) is bound as the root itself, as bubblewrap
/// does, instead of being rebuilt as a skeleton: the environment must be the
/// same.
fn complete_image_is_the_root(who: As) {
    let dir = who.scratch();
    let root = dir.path().join("root");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(crate::fixtures::busybox_root())
        .arg(&root)
        .status()
        .unwrap();
    assert!(cp.success());
    fs::remove_dir_all(root.join("homeless-shelter")).unwrap();
    let src = who.scratch();
    fs::write(src.path().join("f"), "bound\n").unwrap();
    let script = "
        set -u
        awk '$5 == \"/\" { print \"root-mount-root=\" $4 }' /proc/self/mountinfo
        touch /x 2>&1 || true
        mkdir /newdir 2>&1 || true
        grep -c builder /etc/passwd
        cat /etc/passwd /etc/group /etc/hosts
        test -e /etc/resolv.conf && echo resolv-visible
        test -e /homeless-shelter && echo home-visible
        echo hi > /tmp/a && cat /tmp/a
        cat /sources/src/f
        echo > /dev/null && echo devnull-ok
        cat /proc/self/status | grep -c '^Pid:'
    ";
    let mut cmd = who.hermit();
    cmd.arg("sandbox")
        .arg("--root")
        .arg(&root)
        .arg("--ro")
        .arg(format!("{}:/sources/src", src.path().display()))
        .args(["--", "/bin/sh", "-c", script]);
    let out = ok_stdout(&output_within(&mut cmd, Duration::from_secs(60)));
    // The mount at `/` shows a directory of the image's filesystem, not the
    // root of a skeleton tmpfs.
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with("root-mount-root=") && first != "root-mount-root=/",
        "{out}"
    );
    assert!(out.contains("touch: /x: Read-only file system"), "{out}");
    assert!(
        out.contains("mkdir: can't create directory '/newdir': Read-only file system"),
        "{out}"
    );
    assert!(
        !out.contains(FIXTURE_MARKER),
        "the image's /etc files show through:\n{out}"
    );
    assert!(
        !out.contains("resolv-visible") && !out.contains("home-visible"),
        "{out}"
    );
    for want in ["hi\n", "bound\n", "devnull-ok\n", "localhost"] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
}

fn identity(who: As) {
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "id -u; id -g; id -un; id -gn; id -G; whoami",
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(&lines[..4], ["1000", "1000", "builder", "builder"], "{out}");
    for g in lines[4].split_whitespace() {
        assert!(
            g == "1000" || g == "65534",
            "supplementary group {g} leaks a host group: {out}"
        );
    }
    assert_eq!(lines[5], "builder");
}

fn hostname(who: As) {
    let out = ok_stdout(&run(who, &[], &["/bin/sh", "-c", "hostname; uname -n"]));
    assert_eq!(out, "localhost\nlocalhost\n");
    let out = ok_stdout(&run(who, &["--hostname", "h1"], &["/bin/hostname"]));
    assert_eq!(out, "h1\n");
}

fn etc_files_synthesised(who: As) {
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /etc/passwd; echo ---; cat /etc/group; echo ---; cat /etc/hosts; echo ---; \
             test -e /etc/resolv.conf && echo resolv-present; \
             test -e /homeless-shelter && echo home-present; echo end",
        ],
    ));
    assert!(
        !out.contains(FIXTURE_MARKER),
        "the root's own /etc files show: {out}"
    );
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    assert!(
        parts[0]
            .lines()
            .any(|l| l.starts_with("builder:x:1000:1000:")),
        "/etc/passwd has no builder:x:1000:1000 entry: {out}"
    );
    assert!(
        parts[1].lines().any(|l| l.starts_with("builder:x:1000:")),
        "/etc/group has no builder:x:1000 entry: {out}"
    );
    assert!(
        parts[2].lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"127.0.0.1") && f.contains(&"localhost")
        }),
        "/etc/hosts does not map localhost to 127.0.0.1: {out}"
    );
    assert_eq!(parts[3], "end\n", "resolv.conf or HOME exists: {out}");
}

fn parse_env(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// What `hermit sandbox --profile NAME` gives the command: the profile's
/// environment (its fixed variables, its default PATH and
/// SOURCE_DATE_EPOCH), less what only a build has (`out`, HERMIT_JOBS, the
/// jobserver's MAKEFLAGS).
fn profile_env(name: &str) -> BTreeMap<String, String> {
    let p = hermit_profiles::Profile::get(name).unwrap();
    let mut want = p.env.fixed.clone();
    want.remove("MAKEFLAGS");
    want.insert("PATH".into(), p.env.default_path.clone());
    want.insert(
        "SOURCE_DATE_EPOCH".into(),
        p.source_date_epoch.default.to_string(),
    );
    want
}

/// The default profile's.
fn expected_env() -> BTreeMap<String, String> {
    profile_env(hermit_profiles::DEFAULT)
}

fn env_exactly_each_profile(who: As) {
    for name in hermit_profiles::names() {
        // `env` run directly (no shell, which would add PWD, SHLVL, ...).
        let out = ok_stdout(&run(who, &["--profile", name], &["/bin/env"]));
        assert_eq!(parse_env(&out), profile_env(name), "{name}:\n{out}");
        assert!(!out.contains("HERMIT_TEST_LEAK"), "host environment leaked");
    }
    let out = ok_stdout(&run(who, &[], &["/bin/env"]));
    assert_eq!(parse_env(&out), expected_env(), "default:\n{out}");
    let o = run(who, &["--profile", "v0"], &["/bin/true"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stdout(&o).is_empty() && both(&o).contains("v1, v2"),
        "{}",
        both(&o)
    );
}

fn env_flag_adds_variables(who: As) {
    let out = ok_stdout(&run(
        who,
        &[
            "--env",
            "FOO=bar baz",
            "--env",
            "EMPTY=",
            "--env",
            "WITH=equals=sign",
            "--env",
            "TERM=xterm",
        ],
        &["/bin/env"],
    ));
    let actual = parse_env(&out);
    let mut want = expected_env();
    want.insert("FOO".into(), "bar baz".into());
    want.insert("EMPTY".into(), String::new());
    want.insert("WITH".into(), "equals=sign".into());
    // A profile variable given again is replaced, not doubled.
    want.insert("TERM".into(), "xterm".into());
    assert_eq!(actual, want, "whole environment:\n{out}");
    assert_eq!(out.matches("TERM=").count(), 1, "{out}");
}

fn stdio_passthrough(who: As) {
    // Standard input only with --stdin (otherwise /dev/null: sandbox_holes).
    let mut c = who.sandbox(
        ["--stdin"],
        ["/bin/sh", "-c", "tr a-z A-Z; echo to-stderr >&2"],
    );
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello from the host\n").unwrap();
    }
    let o = crate::fixtures::wait_within(child, Duration::from_secs(60));
    assert_eq!(ok_stdout(&o), "HELLO FROM THE HOST\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("to-stderr\n"),
        "{}",
        both(&o)
    );
}

fn umask_022(who: As) {
    let out = ok_stdout(&run(
        who,
        &[],
        &["/bin/sh", "-c", "umask; touch /tmp/f; stat -c %a /tmp/f"],
    ));
    assert_eq!(out, "0022\n644\n");
}

fn cwd_flag(who: As) {
    // (Without --cwd the plumbing command starts in `/`; builds pass
    // `--cwd /build`.)
    for dir in ["/tmp", "/sources", "/"] {
        let out = ok_stdout(&run(who, &["--cwd", dir], &["/bin/pwd"]));
        assert_eq!(out, format!("{dir}\n"));
    }
    let o = run(who, &["--cwd", "/nonexistent"], &["/bin/pwd"]);
    assert_eq!(o.status.code(), Some(125), "{}", both(&o));
}

fn proc_is_fresh(who: As) {
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "ls /proc | grep -E '^[0-9]+$' | wc -l; grep -c ' /proc proc ' /proc/mounts; \
             echo $$; cat /proc/1/comm",
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    let npids: u32 = lines[0].trim().parse().unwrap();
    assert!(
        (2..=6).contains(&npids),
        "{npids} pids visible in /proc; host processes show through: {out}"
    );
    assert_ne!(lines[1], "0", "/proc is not a proc mount: {out}");
    let shell_pid: u32 = lines[2].parse().unwrap();
    assert!(
        shell_pid <= 3,
        "the command is pid {shell_pid}, not near pid 1: {out}"
    );
    // The test process itself (a large host pid) must not be visible.
    let me = std::process::id();
    let out = run(who, &[], &["/bin/test", "-e", &format!("/proc/{me}")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "host pid {me} is visible: {}",
        both(&out)
    );
}

fn dev_is_minimal(who: As) {
    let out = ok_stdout(&run(who, &[], &["/bin/ls", "-A", "/dev"]));
    let mut entries: Vec<&str> = out.lines().collect();
    entries.sort();
    let required = [
        "full", "null", "ptmx", "pts", "random", "shm", "tty", "urandom", "zero",
    ];
    // The /proc/self/fd links are customary (bubblewrap makes them) and harmless.
    let allowed_extra = ["fd", "stderr", "stdin", "stdout"];
    for r in required {
        assert!(entries.contains(&r), "/dev lacks {r}: {entries:?}");
    }
    for e in &entries {
        assert!(
            required.contains(e) || allowed_extra.contains(e),
            "/dev has {e}, which profile v1 does not list: {entries:?}"
        );
    }
    // Character devices with the right numbers (busybox stat prints hex).
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "for d in null zero full random urandom tty; do stat -c \"$d %F %t:%T\" /dev/$d; done; \
             ls -A /dev/pts; for e in fd stdin stdout stderr; do \
             test -e /dev/$e -a ! -L /dev/$e && echo \"$e not a symlink\"; done; true",
        ],
    ));
    let want = "null character special file 1:3\n\
                zero character special file 1:5\n\
                full character special file 1:7\n\
                random character special file 1:8\n\
                urandom character special file 1:9\n\
                tty character special file 5:0\n";
    assert!(out.starts_with(want), "device nodes:\n{out}");
    // Its own devpts instance: only ptmx, none of the host's terminals.
    assert_eq!(&out[want.len()..], "ptmx\n", "/dev/pts:\n{out}");
}

fn dev_nodes_work(who: As) {
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | od -An -tx1; \
             head -c 16 /dev/urandom | wc -c; \
             echo x > /dev/full || echo full-refused; \
             echo shm > /dev/shm/f && cat /dev/shm/f",
        ],
    ));
    assert_eq!(
        out, "null-ok\n 00 00 00 00\n16\nfull-refused\nshm\n",
        "{out}"
    );
}

fn root_read_only_tmp_writable(who: As) {
    let build = who.scratch();
    let out_dir = who.scratch();
    let b = format!("{}:/build", build.path().display());
    let o_ = format!("{}:/out", out_dir.path().display());
    let o = run(
        who,
        &["--rw", &b, "--rw", &o_, "--cwd", "/build"],
        &[
            "/bin/sh",
            "-c",
            "touch /bin/x; touch /x; mkdir /etc/x; touch /sources/x; \
             echo t > /tmp/t && cat /tmp/t; stat -f -c %T /tmp; stat -c %a /tmp; \
             echo b > b && cat /build/b; echo o > /out/o && cat /out/o",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("Read-only file system").count(),
        4,
        "writes to the root must fail with EROFS: {}",
        both(&o)
    );
    assert_eq!(stdout(&o), "t\ntmpfs\n1777\nb\no\n", "{}", both(&o));
    assert_eq!(fs::read_to_string(build.path().join("b")).unwrap(), "b\n");
    assert_eq!(fs::read_to_string(out_dir.path().join("o")).unwrap(), "o\n");
}

fn binds_ro_rw_tmpfs(who: As) {
    let ro = who.scratch();
    let rw = who.scratch();
    fs::write(ro.path().join("in"), "ro-content\n").unwrap();
    let ro_arg = format!("{}:/sources/src", ro.path().display());
    let rw_arg = format!("{}:/out", rw.path().display());
    let o = run(
        who,
        &["--ro", &ro_arg, "--rw", &rw_arg, "--tmpfs", "/mnt"],
        &[
            "/bin/sh",
            "-c",
            "cat /sources/src/in; touch /sources/src/x; echo w > /out/w; \
             echo t > /mnt/t && cat /mnt/t && stat -f -c %T /mnt",
        ],
    );
    assert_eq!(stdout(&o), "ro-content\nt\ntmpfs\n", "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "write to a --ro bind: {}",
        both(&o)
    );
    assert!(!ro.path().join("x").exists());
    assert_eq!(fs::read_to_string(rw.path().join("w")).unwrap(), "w\n");
}

fn binds_create_mount_points(who: As) {
    // Sources go to /sources/<name>, which no image has: the sandbox must
    // make the mount point itself, inside a root it may not write to.
    let ro = who.scratch();
    fs::write(ro.path().join("in"), "new-point\n").unwrap();
    let arg = format!("{}:/sources/not-in-the-image", ro.path().display());
    let o = run(
        who,
        &["--ro", &arg],
        &["/bin/cat", "/sources/not-in-the-image/in"],
    );
    assert_eq!(ok_stdout(&o), "new-point\n");
    assert!(
        !crate::fixtures::busybox_root()
            .join("sources/not-in-the-image")
            .exists(),
        "the mount point was made in the host's root directory"
    );
}

fn loopback_only_and_up(who: As) {
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo ---; \
             ip link show lo; ip -4 addr show lo",
        ],
    ));
    let (ifaces, lo) = out.split_once("---\n").unwrap();
    assert_eq!(ifaces, "lo\n", "interfaces other than lo: {out}");
    let flags = lo.lines().next().unwrap_or("");
    assert!(
        flags.contains(",UP") && flags.contains("LOWER_UP"),
        "lo is not up: {out}"
    );
    assert!(
        lo.contains("inet 127.0.0.1/8"),
        "lo has no 127.0.0.1: {out}"
    );
    // And loopback works: a listener inside accepts a connection from inside.
    let out = ok_stdout(&run(
        who,
        &[],
        &[
            "/bin/sh",
            "-c",
            "nc -l -p 7777 -e /bin/echo inside-hello & sleep 0.3; connect 127.0.0.1 7777",
        ],
    ));
    assert!(
        out.contains("connect: ok") && out.contains("inside-hello"),
        "{out}"
    );
}

fn no_capabilities_nnp_seccomp(who: As) {
    let out = ok_stdout(&run(who, &[], &["/bin/cat", "/proc/self/status"]));
    let status: BTreeMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status.get(cap), Some(&"0000000000000000"), "{cap}:\n{out}");
    }
    assert_eq!(status.get("NoNewPrivs"), Some(&"1"), "{out}");
    assert_eq!(status.get("Seccomp"), Some(&"2"), "{out}");
    // No supplementary groups (the caller's would show up as `nogroup`).
    assert_eq!(status.get("Groups"), Some(&""), "{out}");
}

fn aslr_off_by_default(who: As) {
    assert_eq!(
        ok_stdout(&run(who, &[], &["/bin/cat", "/proc/self/personality"])),
        "00040000\n",
        "ADDR_NO_RANDOMIZE not set"
    );
    let a = ok_stdout(&run(who, &[], &["/bin/stackaddr"]));
    let b = ok_stdout(&run(who, &[], &["/bin/stackaddr"]));
    assert_eq!(a, b, "addresses differ between two runs with ASLR off");
}

fn aslr_on_with_flag(who: As) {
    assert_eq!(
        ok_stdout(&run(
            who,
            &["--aslr"],
            &["/bin/cat", "/proc/self/personality"]
        )),
        "00000000\n"
    );
    let a = ok_stdout(&run(who, &["--aslr"], &["/bin/stackaddr"]));
    let b = ok_stdout(&run(who, &["--aslr"], &["/bin/stackaddr"]));
    assert_ne!(a, b, "identical addresses with --aslr");
}

fn only_std_fds(who: As) {
    // ls run directly (busybox sh keeps a descriptor 10 of its own); its own
    // directory descriptor is 3.
    let out = ok_stdout(&run(who, &[], &["/bin/ls", "/proc/self/fd"]));
    assert_eq!(out, "0\n1\n2\n3\n", "descriptors beyond 0-2 are open");
}

fn new_session_no_tty(who: As) {
    // /proc/self/stat fields: pid comm state ppid pgrp session tty_nr ...
    let out = ok_stdout(&run(who, &[], &["/bin/cat", "/proc/self/stat"]));
    let f: Vec<&str> = out.split_whitespace().collect();
    let (pid, sid, tty) = (f[0], f[5], f[6]);
    assert!(
        sid == pid || sid == "1",
        "session {sid} is not the command's ({pid}) nor the sandbox init's: {out}"
    );
    assert_eq!(tty, "0", "the command has a controlling terminal: {out}");
}

fn exit_status_passthrough(who: As) {
    for (script, code) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("false", 1),
        ("exit 200", 200),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let o = run(who, &[], &["/bin/sh", "-c", script]);
        assert_eq!(o.status.code(), Some(code), "{script}: {}", both(&o));
    }
}

fn timeout_exits_124(who: As) {
    let start = Instant::now();
    let o = run(who, &["--timeout", "2"], &["/bin/sleep", "1000"]);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(124), "{}", both(&o));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "timeout of 2 s took {took:?}"
    );
    // A command that ignores SIGTERM dies all the same, with its children.
    let tag = nonce("timeout");
    let start = Instant::now();
    let o = run(
        who,
        &["--timeout", "1"],
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM INT HUP; (trap '' TERM INT HUP; while :; do sleep 1; done) & \
             while :; do sleep 1; done",
            &tag,
        ],
    );
    assert_eq!(o.status.code(), Some(124), "{}", both(&o));
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_no_survivors(&tag);
}

fn setup_failure_exits_125(who: As) {
    let mut c = who.hermit();
    c.args([
        "sandbox",
        "--root",
        "/nonexistent/hermit-root",
        "--",
        "/bin/true",
    ]);
    let o = output_within(&mut c, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(125), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/hermit-root"),
        "the error does not name the missing root: {}",
        both(&o)
    );
}

/// `--memory-mib N` bounds the command's memory (a memory cgroup, or
/// RLIMIT_DATA where hermit cannot create one); `--memory-mib 0` lifts the
/// profile's limit.
fn memory_flag_bounds_or_frees_the_command(who: As) {
    // About 256 MiB of string in awk.
    let hog = "awk 'BEGIN { s = \"x\"; while (length(s) < 200000000) s = s s; print length(s) }'";
    let o = who.sh(["--memory-mib", "64"], hog);
    assert!(
        !o.status.success(),
        "256 MiB fitted in 64: {}",
        crate::common::both(&o)
    );
    let o = who.sh(["--memory-mib", "0"], hog);
    assert!(o.status.success(), "{}", crate::common::both(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "268435456");
}
