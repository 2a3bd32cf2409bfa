//! `hermit shell`: a shell or one command in exactly a build's environment —
//! a record's, a spec's, a kept failed build's — over a busybox OCI image
//! in real namespaces, as root and as an ordinary user; and a terminal of
//! its own, driven through a real pseudo-terminal.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::both;
use crate::fixtures::{both_users, output_within, wait_within, As};
use crate::graph::graph_project;

const LIMIT: Duration = Duration::from_secs(120);

/// `lib` (an output) and `app` (using it as input `lib`, with a local
/// source `src`): returns app's spec.
fn project(dir: &Path, app_script: &str) -> PathBuf {
    let specs = graph_project(
        dir,
        &[
            ("lib", "echo from-lib > $out/lib.txt", &[]),
            ("app", app_script, &[("lib", "lib")]),
        ],
    );
    let app = specs[1].clone();
    let src = dir.join("app/src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello.txt"), "hello\n").unwrap();
    let text = fs::read_to_string(&app).unwrap();
    let text = text.replacen(
        "[build]",
        "[[source]]\nname = \"src\"\npath = \"src\"\n\n[build]",
        1,
    );
    fs::write(&app, text).unwrap();
    app
}

fn hermit(who: As, home: &Path) -> Command {
    who.hermit_in(home)
}

fn run(cmd: &mut Command) -> Output {
    output_within(cmd, LIMIT)
}

/// Runs `cmd` with `input` on its standard input (a pipe).
fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    wait_within(child, LIMIT)
}

/// Builds `spec` and returns (record path, record JSON).
fn build(who: As, home: &Path, spec: &Path) -> (PathBuf, serde_json::Value) {
    let o = run(hermit(who, home).arg("build").arg(spec).arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let path = PathBuf::from(v["record"].as_str().unwrap());
    let rec = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    (path, rec)
}

/// What the probe script prints, by section.
const PROBE: &str =
    "env; echo '--- id'; busybox id -u; busybox id -g; busybox id -un; busybox id -gn; \
     echo '--- umask'; umask; echo '--- hostname'; busybox hostname; echo '--- pwd'; pwd";

fn sections(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    let mut cur = "env".to_string();
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("--- ") {
            cur = name.to_string();
            continue;
        }
        m.entry(cur.clone())
            .or_insert_with(Vec::new)
            .push(line.to_string());
    }
    m
}

/// Checks the probe's output against the record's environment.
fn agrees_with_record(out: &str, rec: &serde_json::Value) {
    let s = sections(out);
    let env = &rec["environment"];
    // Every variable the record names, and nothing else but what `sh`
    // itself sets (PWD, SHLVL), in the build as in the shell.
    let mut got: BTreeMap<String, String> = s["env"]
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(got.remove("PWD").as_deref(), env["build_path"].as_str());
    got.remove("SHLVL");
    let want: BTreeMap<String, String> = env["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        got, want,
        "the shell's environment differs from the record's"
    );
    assert_eq!(
        s["id"],
        [
            env["uid"].to_string(),
            env["gid"].to_string(),
            env["user"].as_str().unwrap().to_string(),
            env["group"].as_str().unwrap().to_string(),
        ]
    );
    assert_eq!(s["umask"], [env["umask"].as_str().unwrap()]);
    assert_eq!(s["hostname"], [env["hostname"].as_str().unwrap()]);
    assert_eq!(s["pwd"], [env["build_path"].as_str().unwrap()]);
}

fn shell_agrees_with_the_record(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cp /inputs/lib/lib.txt $out/");
    who.give(t.path());
    let home = t.path().join("home");
    let (record, rec) = build(who, &home, &spec);
    let o = run(hermit(who, &home)
        .arg("shell")
        .arg(&record)
        .args(["--", "sh", "-c", PROBE]));
    assert!(o.status.success(), "{}", both(&o));
    agrees_with_record(&String::from_utf8_lossy(&o.stdout), &rec);

    // The command's own environment, exactly: `env` run directly.
    let o = run(hermit(who, &home)
        .arg("shell")
        .arg(&record)
        .args(["--", "env"]));
    assert!(o.status.success(), "{}", both(&o));
    let got: BTreeMap<String, String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let want: BTreeMap<String, String> = rec["environment"]["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, want);

    // The spec gives the same environment as the record it built.
    let o = run(hermit(who, &home)
        .arg("shell")
        .arg(&spec)
        .args(["--", "sh", "-c", PROBE]));
    assert!(o.status.success(), "{}", both(&o));
    agrees_with_record(&String::from_utf8_lossy(&o.stdout), &rec);
}

fn shell_of_a_spec_builds_its_inputs_first(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cp /inputs/lib/lib.txt $out/");
    who.give(t.path());
    // A store that has built nothing yet.
    let home = t.path().join("home");
    let o = run(hermit(who, &home).arg("shell").arg(&spec).args([
        "--",
        "sh",
        "-c",
        "cat /inputs/lib/lib.txt /sources/src/hello.txt",
    ]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from-lib\nhello\n");
}

fn shell_mounts_what_the_build_had(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cp /inputs/lib/lib.txt $out/");
    who.give(t.path());
    let home = t.path().join("home");
    let (record, rec) = build(who, &home, &spec);
    let mut script = String::from("set -e\n");
    for s in rec["sources"].as_array().unwrap() {
        let p = format!("/sources/{}", s["name"].as_str().unwrap());
        script.push_str(&format!(
            "test -d {p}; cat {p}/hello.txt; ! busybox touch {p}/x 2>/dev/null; echo ro {p}\n"
        ));
    }
    for i in rec["inputs"].as_array().unwrap() {
        let p = format!("/inputs/{}", i["name"].as_str().unwrap());
        script.push_str(&format!(
            "cat {p}/lib.txt; ! busybox touch {p}/x 2>/dev/null; echo ro {p}\n"
        ));
    }
    script.push_str(
        "busybox touch /build/w $out/w; echo rw\n\
         busybox awk -F: 'NR > 2 { gsub(/ /, \"\", $1); print \"if\", $1 }' /proc/net/dev\n",
    );
    let o = run(hermit(who, &home)
        .arg("shell")
        .arg(&record)
        .args(["--", "sh", "-c", &script]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello\nro /sources/src\nfrom-lib\nro /inputs/lib\nrw\nif lo\n",
        "{}",
        both(&o)
    );
    // /build and /out were the shell's scratch: nothing is left of them.
    let tmp = home.join("v1/tmp");
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn shell_passes_the_exit_status_and_stdin(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cp /inputs/lib/lib.txt $out/");
    who.give(t.path());
    let home = t.path().join("home");
    let (record, _) = build(who, &home, &spec);
    let shell = |args: &[&str]| {
        let mut c = hermit(who, &home);
        c.arg("shell").arg(&record).args(args);
        c
    };
    let o = run(&mut shell(&["--", "sh", "-c", "exit 42"]));
    assert_eq!(o.status.code(), Some(42), "{}", both(&o));
    let o = run(&mut shell(&["--", "sh", "-c", "kill -TERM $$"]));
    assert_eq!(o.status.code(), Some(128 + 15), "{}", both(&o));
    let o = run(&mut shell(&["--", "no-such-command"]));
    assert_eq!(o.status.code(), Some(127), "{}", both(&o));
    // Standard input is passed through (a pipe, not a terminal).
    let o = run_with_input(&mut shell(&["--", "cat"]), b"piped\n");
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped\n");
    // Without a command and a terminal: the shell reads its commands there.
    let o = run_with_input(&mut shell(&[]), b"echo from-stdin $HOME\nexit 5\n");
    assert_eq!(o.status.code(), Some(5), "{}", both(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from-stdin /homeless-shelter\n"
    );
}

fn shell_enters_a_kept_failed_build(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "echo partial > half.o\necho part > $out/part\nexit 3",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let o = run(hermit(who, &home)
        .arg("build")
        .arg(&spec)
        .arg("--keep-failed"));
    assert!(!o.status.success(), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let dir = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("debug it in the build's environment: hermit shell --failed ")
        })
        .unwrap_or_else(|| panic!("the failure does not say how to enter it: {err}"))
        .to_string();
    assert!(Path::new(&dir).join("build/half.o").is_file(), "{err}");

    // The last kept build, and the directory the message names: the same.
    let script = "pwd; cat half.o $out/part; busybox id -un; echo debug > more.o";
    for args in [vec!["--failed"], vec!["--failed", dir.as_str()]] {
        let o = run(hermit(who, &home)
            .arg("shell")
            .args(&args)
            .args(["--", "sh", "-c", script]));
        assert!(o.status.success(), "{args:?}: {}", both(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "/build\npartial\npart\nbuilder\n"
        );
    }
    // What the shell wrote stays in the kept build.
    assert_eq!(
        fs::read_to_string(Path::new(&dir).join("build/more.o")).unwrap(),
        "debug\n"
    );
    // Its build directory (what the message shows as /build) works too.
    let o = run(hermit(who, &home)
        .arg("shell")
        .arg("--failed")
        .arg(Path::new(&dir).join("build"))
        .args(["--", "sh", "-c", "exit 4"]));
    assert_eq!(o.status.code(), Some(4), "{}", both(&o));

    // The kept description is untrusted: an edited one is refused, naming it.
    let kept = Path::new(&dir).join("failed.json");
    let text = fs::read_to_string(&kept).unwrap();
    let edited = text.replacen("\"hostname\": \"", "\"hostname\": \"x", 1);
    assert_ne!(text, edited);
    fs::write(&kept, edited).unwrap();
    let o = run(hermit(who, &home)
        .arg("shell")
        .arg("--failed")
        .arg(&dir)
        .args(["--", "true"]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("failed.json") && err.contains("build_key"),
        "{err}"
    );
}

/// With `[build] workdir`, `/build` is the same writable view of the
/// source in the shell as in the build — over the kept upper layer for a
/// failed build.
fn shell_keeps_the_workdir_view(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "cat hello.txt > $out/copy\necho partial > half.o\nrm hello.txt\nexit 3",
    );
    let text = fs::read_to_string(&spec).unwrap();
    fs::write(
        &spec,
        text.replacen("[build]\n", "[build]\nworkdir = \"src\"\n", 1),
    )
    .unwrap();
    who.give(t.path());
    let home = t.path().join("home");
    // A spec's shell: the source's files in /build, writable, and gone
    // when the shell exits.
    let o = run(hermit(who, &home).arg("shell").arg(&spec).args([
        "--",
        "sh",
        "-c",
        "cat hello.txt; echo x > new; busybox ls",
    ]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello
hello.txt
new
"
    );
    assert!(!t.path().join("app/src/new").exists());

    let o = run(hermit(who, &home)
        .arg("build")
        .arg(&spec)
        .arg("--keep-failed"));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    // The kept build: what it made and deleted, over the source.
    let script = "busybox ls; cat half.o; test ! -e hello.txt && echo deleted; echo more > more.o";
    for round in ["first", "again"] {
        let o = run(hermit(who, &home)
            .arg("shell")
            .arg("--failed")
            .args(["--", "sh", "-c", script]));
        assert!(o.status.success(), "{round}: {}", both(&o));
        let want = if round == "first" {
            "half.o\npartial\ndeleted\n"
        } else {
            "half.o\nmore.o\npartial\ndeleted\n"
        };
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{round}");
    }
}

/// The master side of a pseudo-terminal the test drives hermit through.
struct Pty {
    master: OwnedFd,
    seen: Vec<u8>,
}

impl Pty {
    fn send(&self, bytes: &[u8]) {
        nix::unistd::write(&self.master, bytes).unwrap();
    }

    /// Reads until `want` appears after `from` (an offset into what was
    /// seen), or panics after `limit` with everything seen.
    fn expect(&mut self, from: usize, want: &str, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            let seen =
                String::from_utf8_lossy(&self.seen[from.min(self.seen.len())..]).into_owned();
            if let Some(i) = seen.find(want) {
                return from + i + want.len();
            }
            let left = limit.saturating_sub(start.elapsed());
            assert!(
                !left.is_zero(),
                "no {want:?} within {limit:?}; the terminal showed:\n{}",
                String::from_utf8_lossy(&self.seen)
            );
            let mut fds = [nix::poll::PollFd::new(
                self.master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis().min(500)).unwrap();
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            let mut buf = [0u8; 4096];
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn shell_gives_a_terminal_of_its_own(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cp /inputs/lib/lib.txt $out/");
    who.give(t.path());
    let home = t.path().join("home");
    let (record, _) = build(who, &home, &spec);

    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 111,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave_name = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    // hermit in a session of its own whose controlling terminal is the
    // pty (`setsid --ctty`), as under a terminal emulator: a change of the
    // window size is a SIGWINCH for it.
    let mut inner = hermit(who, &home);
    inner.env("TERM", "xterm").arg("shell").arg(&record);
    let mut cmd = Command::new("setsid");
    cmd.arg("--ctty")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    if let Some(d) = inner.get_current_dir() {
        cmd.current_dir(d);
    }
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    let child = cmd.spawn().unwrap();
    let mut p = Pty {
        master: pty.master,
        seen: Vec::new(),
    };
    let wait = Duration::from_secs(30);
    let mut at = p.expect(0, "$ ", wait);

    // The command's terminal is the sandbox's own, and hermit's pty slave
    // is not: `tty` names a /dev/pts of the sandbox.
    p.send(b"busybox tty; echo tty-$((6*7))\n");
    let tty_at = at;
    at = p.expect(at, "tty-42", wait);
    let shown = String::from_utf8_lossy(&p.seen[tty_at..at]).into_owned();
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert!(!shown.contains("not a tty"), "{shown}");
    assert!(Path::new(&slave_name).starts_with("/dev/pts"));

    // The window size the test set, then a change passed on (SIGWINCH).
    p.send(b"busybox stty size\n");
    at = p.expect(at, "33 111", wait);
    let ws = nix::pty::Winsize {
        ws_row: 44,
        ws_col: 55,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    set_window_size(&pty.slave, &ws);
    std::thread::sleep(Duration::from_millis(300));
    p.send(b"busybox stty size\n");
    at = p.expect(at, "44 55", wait);

    // Ctrl-C interrupts the foreground job, not the shell, nor hermit.
    p.send(b"busybox sleep 100\n");
    std::thread::sleep(Duration::from_millis(500));
    let before = Instant::now();
    p.send(b"\x03");
    p.send(b"echo alive-$((40+2))\n");
    at = p.expect(at, "alive-42", wait);
    assert!(before.elapsed() < Duration::from_secs(20));

    // Job control: a background job, listed.
    p.send(b"busybox sleep 60 &\n");
    p.send(b"jobs; echo jobs-$((6*7))\n");
    let jobs_at = at;
    at = p.expect(at, "jobs-42", wait);
    let shown = String::from_utf8_lossy(&p.seen[jobs_at..at]).into_owned();
    assert!(shown.contains("Running"), "{shown}");

    p.send(b"exit 7\n");
    drop(pty.slave);
    let o = wait_within(child, LIMIT);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&p.seen)
    );
}

/// Sets the window size of the terminal `fd` as the terminal emulator
/// would, with `stty` (the test has no `unsafe` for the ioctl).
fn set_window_size(fd: &OwnedFd, ws: &nix::pty::Winsize) {
    let o = Command::new("stty")
        .args([
            "rows",
            &ws.ws_row.to_string(),
            "cols",
            &ws.ws_col.to_string(),
        ])
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", both(&o));
}

both_users!(
    shell_agrees_with_the_record,
    shell_of_a_spec_builds_its_inputs_first,
    shell_mounts_what_the_build_had,
    shell_passes_the_exit_status_and_stdin,
    shell_enters_a_kept_failed_build,
    shell_keeps_the_workdir_view,
    shell_gives_a_terminal_of_its_own,
);
