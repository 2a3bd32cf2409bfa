//! The sandbox's smaller holes (issue 8, sections 3 and 5): the caller's
//! terminal and stdin, host-global /proc files, init's command line and
//! descriptors, set-id `mknod`, socket families, host device nodes, the
//! boot id. Every case runs as root and as an unprivileged user, and checks
//! the attempt would work (or the host differs) without the sandbox.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::both;
use crate::fixtures::{
    both_users, busybox_root, ok_stdout, output_within, stdout, wait_within, with_fd7, As,
};
use crate::sandbox_escape::{drain, openpty};

both_users!(
    stdin_is_dev_null,
    stdin_flag_passes_a_pipe_not_a_terminal,
    caller_terminal_untouched,
    init_shows_no_command_line_or_host_descriptors,
    host_proc_files_masked,
    boot_id_is_fixed,
    setid_mknod_refused,
    socket_families_allowlisted,
    host_device_nodes_unchangeable,
);

/// `/bin/holes` in the fixture root, compiled from helpers/holes.c once.
fn holes_helper() -> &'static Path {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/helpers/holes.c");
        let dst = busybox_root().join("bin/holes");
        let tmp = busybox_root().join(format!("bin/.holes-{}", std::process::id()));
        let o = output_within(
            Command::new("gcc")
                .args(["-static", "-O1", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(&tmp)
                .arg(&src),
            Duration::from_secs(120),
        );
        assert!(o.status.success(), "compiling holes.c: {}", both(&o));
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &dst).unwrap();
        dst
    })
}

fn sh(who: As, opts: &[&str], script: &str) -> std::process::Output {
    holes_helper();
    who.sh(opts, script)
}

/// The errno a helper reported for `op` ("ok" if it worked).
fn outcome<'a>(out: &'a str, op: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(op)?.strip_prefix(": "))
}

fn stdin_is_dev_null(who: As) {
    let mut c = who.sandbox(
        Vec::<&str>::new(),
        ["/bin/sh", "-c", "readlink /proc/self/fd/0; cat; echo end"],
    );
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // hermit may be done before this is written (it does not read it).
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed by the caller\n");
    let o = wait_within(child, Duration::from_secs(60));
    assert_eq!(ok_stdout(&o), "/dev/null\nend\n", "{}", both(&o));
}

fn stdin_flag_passes_a_pipe_not_a_terminal(who: As) {
    let mut c = who.sandbox(["--stdin"], ["/bin/sh", "-c", "tr a-z A-Z"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped on purpose\n")
        .unwrap();
    let o = wait_within(child, Duration::from_secs(60));
    assert_eq!(ok_stdout(&o), "PIPED ON PURPOSE\n");

    // A terminal is refused, with the fix.
    let (_master, slave) = openpty();
    let mut c = who.sandbox(["--stdin"], ["/bin/true"]);
    c.stdin(slave).stdout(Stdio::piped()).stderr(Stdio::piped());
    let o = wait_within(c.spawn().unwrap(), Duration::from_secs(60));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        err.contains("standard input is a terminal") && err.contains("pipe or redirect"),
        "{}",
        both(&o)
    );
}

/// What a build can change about a terminal: "MODE ECHO EXCL" (octal mode,
/// echo on, TIOCEXCL set), read by the helper on the host.
fn terminal_state(f: &fs::File) -> String {
    let o = wait_within(
        Command::new(holes_helper())
            .args(["ttystate", "0"])
            .stdin(f.try_clone().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(30),
    );
    let out = stdout(&o);
    out.strip_prefix("state: ")
        .unwrap_or_else(|| panic!("{}", both(&o)))
        .trim()
        .to_string()
}

fn caller_terminal_untouched(who: As) {
    holes_helper();
    let (master, slave) = openpty();
    let before = terminal_state(&slave);
    assert!(before.ends_with(" 1 0"), "a fresh pty: {before}");

    // Without the sandbox the helper changes all three.
    let (_m2, host_tty) = openpty();
    let host = wait_within(
        Command::new(holes_helper())
            .args(["tty", "0"])
            .stdin(host_tty.try_clone().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(30),
    );
    let changed = terminal_state(&host_tty);
    assert_eq!(changed, "666 0 1", "{}", both(&host));

    // hermit with the terminal as 0, 1 and 2, as from an interactive shell.
    let script = "echo relayed-output; \
                  for fd in 0 1 2; do /bin/holes tty $fd >> /tmp/log 2>&1; done; \
                  chmod 666 /proc/self/fd/0 /proc/self/fd/1 2>>/tmp/log; \
                  stty -echo 2>>/tmp/log; stty -echo < /dev/stdout 2>>/tmp/log; \
                  cat /tmp/log >&2";
    let mut c = who.sandbox(Vec::<&str>::new(), ["/bin/sh", "-c", script]);
    c.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    let o = wait_within(c.spawn().unwrap(), Duration::from_secs(60));
    let shown = String::from_utf8_lossy(&drain(&master)).into_owned();
    assert_eq!(o.status.code(), Some(0), "{shown}");
    assert_eq!(
        terminal_state(&slave),
        before,
        "the build changed the caller's terminal; it saw:\n{shown}"
    );
    // The output still reaches the terminal, through hermit's pipe, and the
    // build never had a terminal to work on.
    assert!(shown.contains("relayed-output"), "{shown}");
    assert!(!shown.contains("tiocexcl: ok"), "{shown}");
    assert!(!shown.contains("echo_off: ok"), "{shown}");
}

fn init_shows_no_command_line_or_host_descriptors(who: As) {
    let secret = "SECRET=hunter2-holes";
    let script = "tr '\\0' ' ' < /proc/1/cmdline; echo; \
                  echo fds: $(ls /proc/1/fd 2>&1 | wc -l) $(ls /proc/1/fd 2>&1); \
                  cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable; true";
    let c = who.sandbox(["--env", secret], ["/bin/sh", "-c", script]);
    // A descriptor leaked into hermit (fd 7, not close-on-exec) must not
    // reach init either.
    let o = output_within(
        &mut with_fd7(&c, Path::new("/etc/passwd")),
        Duration::from_secs(60),
    );
    let out = ok_stdout(&o);
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!out.contains("--root"), "{out}");
    assert_eq!(out.lines().next(), Some("hermit-sandbox "), "{out}");
    assert!(!out.contains("environ-readable"), "{out}");
    let fds = out.lines().find_map(|l| l.strip_prefix("fds: ")).unwrap();
    if who == As::Root {
        // init's fds are listable when the build's uid is host root: only
        // 0, 1, 2 and the status pipe to hermit may be there.
        let n: usize = fds.split_whitespace().next().unwrap().parse().unwrap();
        assert!(n <= 4, "init holds more than it needs: {fds}");
    } else {
        assert!(fds.contains("Permission denied"), "{fds}");
    }
}

/// Root-only or host-global /proc files that must read as empty.
const MASKED_FILES: &[&str] = &[
    "timer_list",
    "kpageflags",
    "kpagecount",
    "kpagecgroup",
    "slabinfo",
    "pagetypeinfo",
    "vmallocinfo",
    "keys",
    "key-users",
    "kmsg",
];

fn host_proc_files_masked(who: As) {
    let present: Vec<&str> = MASKED_FILES
        .iter()
        .copied()
        .filter(|f| Path::new("/proc").join(f).exists())
        .collect();
    // As root on the host they hold something.
    assert!(!fs::read("/proc/timer_list").unwrap().is_empty());
    let mut script = String::new();
    for f in &present {
        script.push_str(&format!(
            "if out=$(head -c 64 /proc/{f} 2>&1); then echo \"{f}: [$out]\"; else echo \"{f}: error $out\"; fi; "
        ));
    }
    script.push_str(
        "for d in tty/driver acpi scsi; do [ -d /proc/$d ] && echo \"$d: [$(ls -A /proc/$d)]\"; done; \
         touch /proc/acpi/x 2>/dev/null && echo acpi-writable; \
         echo x > /proc/fs/probe 2>/dev/null && echo fs-writable; true",
    );
    let out = ok_stdout(&sh(who, &[], &script));
    for f in &present {
        assert!(
            out.contains(&format!("{f}: []\n")),
            "{f} not masked:\n{out}"
        );
    }
    if Path::new("/proc/tty/driver").exists() {
        assert!(out.contains("tty/driver: []\n"), "{out}");
    }
    if Path::new("/proc/acpi").exists() {
        assert!(out.contains("acpi: []\n"), "{out}");
    }
    assert!(!out.contains("writable"), "{out}");
}

fn boot_id_is_fixed(who: As) {
    let host = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let out = ok_stdout(&sh(
        who,
        &[],
        "cat /proc/sys/kernel/random/boot_id; echo x > /proc/sys/kernel/random/boot_id 2>/dev/null && echo writable; true",
    ));
    assert_eq!(out, "00000000-0000-4000-8000-000000000000\n");
    assert_ne!(out, host);
}

fn setid_mknod_refused(who: As) {
    // Without the sandbox (root, /tmp) the call makes a set-id file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let host = output_within(
        Command::new(holes_helper()).arg("mknod").arg(&path),
        Duration::from_secs(30),
    );
    assert!(stdout(&host).contains("mode: 6755"), "{}", both(&host));

    let o = sh(who, &[], "/bin/holes mknod /tmp/f; ls -l /tmp");
    let out = stdout(&o);
    assert_eq!(outcome(&out, "mknod"), Some("EPERM"), "{}", both(&o));
    assert!(!out.contains(" f\n"), "{out}");
    // Set-id-free regular files and fifos still work.
    let out = ok_stdout(&sh(who, &[], "mknod /tmp/p p && mkfifo /tmp/q && ls /tmp"));
    assert_eq!(out, "p\nq\n");
}

fn socket_families_allowlisted(who: As) {
    // Numbers: AF_VSOCK 40, AF_PACKET 17, AF_ALG 38, AF_NETLINK 16,
    // SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_RAW 3, NETLINK_AUDIT 9.
    let host = output_within(
        Command::new(holes_helper()).args(["socket", "40", "1", "0"]),
        Duration::from_secs(30),
    );
    assert_eq!(
        outcome(&stdout(&host), "socket"),
        Some("ok"),
        "{}",
        both(&host)
    );
    let cases = [
        ("vsock", "40 1 0", "EAFNOSUPPORT"),
        ("packet", "17 3 0", "EAFNOSUPPORT"),
        ("alg", "38 5 0", "EAFNOSUPPORT"),
        ("netlink_audit", "16 3 9", "EPROTONOSUPPORT"),
        ("unix", "1 1 0", "ok"),
        ("inet", "2 2 0", "ok"),
        ("inet6", "10 1 0", "ok"),
        ("netlink_route", "16 3 0", "ok"),
    ];
    let mut script = String::new();
    for (name, args, _) in cases {
        script.push_str(&format!("echo {name}; /bin/holes socket {args}; "));
    }
    // What a build uses: route netlink through `ip`, the loopback interface.
    script.push_str("ip addr show lo | grep -q 127.0.0.1 && echo ip-works");
    let out = ok_stdout(&sh(who, &[], &script));
    let lines: Vec<&str> = out.lines().collect();
    for (name, _, want) in cases {
        let i = lines.iter().position(|l| *l == name).unwrap();
        assert_eq!(
            lines[i + 1],
            format!("socket: {want}"),
            "{name}; whole output:\n{out}"
        );
    }
    assert!(out.contains("ip-works"), "{out}");
}

/// Mode and modification time of the host's /dev/null, /dev/zero, /dev/tty.
fn device_nodes() -> Vec<(u32, std::time::SystemTime)> {
    ["null", "zero", "tty"]
        .iter()
        .map(|n| {
            let m = fs::metadata(Path::new("/dev").join(n)).unwrap();
            (m.permissions().mode(), m.modified().unwrap())
        })
        .collect()
}

fn host_device_nodes_unchangeable(who: As) {
    let before = device_nodes();
    let o = sh(
        who,
        &[],
        "chmod 600 /dev/null /dev/zero /dev/tty 2>&1; touch -d 2001-01-01 /dev/null 2>&1; \
         echo ok > /dev/null && head -c 3 /dev/zero | wc -c",
    );
    let after = device_nodes();
    if after != before {
        // Put the host right before failing.
        for n in ["null", "zero", "tty"] {
            let p = Path::new("/dev").join(n);
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
            if let Ok(f) = fs::OpenOptions::new().write(true).open(&p) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
    }
    assert_eq!(after, before, "{}", both(&o));
    // The devices still work.
    assert!(stdout(&o).ends_with("3\n"), "{}", both(&o));
}

/// `echo A | hermit build` and `echo B | hermit build` (in two stores):
/// the build reads /dev/null, so both give the same output.
#[test]
fn build_output_does_not_depend_on_stdin() {
    use crate::image::busybox_layout;
    let t = tempfile::tempdir().unwrap();
    let manifest = busybox_layout(&t.path().join("image"));
    let spec = t.path().join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"[package]
name = "stdin"
version = "1.0"

[toolchain]
oci = "image"
digest = "{manifest}"

[build]
script = '''
mkdir -p $out
cat > $out/x || true
readlink /proc/self/fd/0 > $out/fd0 || true
tr '\0' ' ' < /proc/1/cmdline > $out/init
cat /proc/1/environ > $out/environ 2>/dev/null || true
'''
"#
        ),
    )
    .unwrap();
    let build = |input: &[u8], home: &Path| -> serde_json::Value {
        let mut c = crate::common::hermit(home);
        c.arg("build").arg(&spec).arg("--json");
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(input);
        let o = wait_within(child, Duration::from_secs(300));
        assert!(o.status.success(), "{}", both(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
    };
    let a = build(b"A\n", &t.path().join("home-a"));
    let b = build(b"B\n", &t.path().join("home-b"));
    assert_eq!(a["build_key"], b["build_key"]);
    let out = PathBuf::from(a["output"].as_str().unwrap());
    assert_eq!(fs::read_to_string(out.join("x")).unwrap(), "");
    assert_eq!(fs::read_to_string(out.join("fd0")).unwrap(), "/dev/null\n");
    // The re-executed helper's init shows nothing of hermit's.
    assert_eq!(
        fs::read_to_string(out.join("init")).unwrap(),
        "hermit-sandbox "
    );
    assert_eq!(fs::read_to_string(out.join("environ")).unwrap(), "");
    assert_eq!(a["output_digest"], b["output_digest"]);
}
