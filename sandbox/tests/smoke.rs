//! Real-namespace smoke tests of `hermit-sandbox`, over a busybox root
//! (Debian package busybox-static, installed by scripts/install-deps.sh).
//! The escape and environment suite is in tests/e2e; these check the
//! library's own contract: outcomes, setup failures, mount points the image
//! lacks, hidden files.
//!
//! This binary is its own sandbox helper, hence `harness = false` and a
//! `main` that calls `enter_if_requested` first.

#![allow(clippy::unwrap_used)] // tests

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hermit_sandbox::{run, Limits, Mount, Outcome, SandboxSpec};

fn busybox_root(dir: &Path, with_etc: bool) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("/bin/busybox (Debian package busybox-static) is needed");
    for applet in [
        "sh", "cat", "id", "hostname", "touch", "ls", "sleep", "echo", "grep", "kill", "df", "awk",
        "head", "uname",
    ] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    if with_etc {
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/passwd"), "root:x:0:0:IMAGE:/:/bin/sh\n").unwrap();
        fs::write(dir.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
        fs::write(dir.join("etc/os-release"), "ID=image\n").unwrap();
    }
}

struct Run {
    outcome: Outcome,
    out: String,
}

/// A complete spec: the crate has no defaults, so the tests write every
/// value out (these are hermit's profile values; the builder derives its own
/// from the profile).
fn explicit_spec(root: &Path, command: Vec<String>) -> SandboxSpec {
    let env = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/homeless-shelter"),
        ("USER", "builder"),
        ("TZ", "UTC"),
    ];
    SandboxSpec {
        root: root.to_path_buf(),
        mounts: vec![Mount::Tmpfs {
            dst: "/tmp".into(),
            size: Some(64 << 20),
        }],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: "/".into(),
        uid: 1000,
        gid: 1000,
        user: "builder".into(),
        group: "builder".into(),
        home: "/homeless-shelter".into(),
        hostname: "localhost".into(),
        domainname: "(none)".into(),
        shm_size: 16 << 20,
        command,
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

/// Runs `script` with `sh -c`; what it writes to `$R` comes back as `out`.
fn sh(root: &Path, script: &str, tweak: impl FnOnce(&mut SandboxSpec)) -> Run {
    sh_passing(root, script, tweak, vec![])
}

/// [`sh`], handing the command `pass`.
fn sh_passing(
    root: &Path,
    script: &str,
    tweak: impl FnOnce(&mut SandboxSpec),
    pass: Vec<hermit_sandbox::PassFd>,
) -> Run {
    let out = tempfile::tempdir().unwrap();
    let mut spec = explicit_spec(root, vec!["/bin/sh".into(), "-c".into(), script.into()]);
    spec.mounts.push(Mount::Bind {
        src: out.path().to_path_buf(),
        dst: "/result".into(),
        writable: true,
    });
    spec.set_env("R", "/result/out");
    spec.timeout = Some(Duration::from_secs(60));
    tweak(&mut spec);
    let outcome = if pass.is_empty() {
        run(&spec).unwrap()
    } else {
        hermit_sandbox::run_watched_passing(&spec, Path::new("/proc/self/exe"), None, pass)
            .unwrap()
            .outcome
    };
    let out = fs::read_to_string(out.path().join("out")).unwrap_or_default();
    Run { outcome, out }
}

fn statuses_and_signals() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    assert_eq!(sh(t.path(), "exit 7", |_| {}).outcome, Outcome::Exited(7));
    assert_eq!(
        sh(t.path(), "kill -9 $$", |_| {}).outcome,
        Outcome::Signaled(9)
    );
    // A real-time signal (which nix's `Signal` cannot name) ends it too.
    let r = sh(t.path(), "kill -40 $$", |s| {
        s.timeout = Some(Duration::from_secs(10));
    });
    assert_eq!(r.outcome, Outcome::Signaled(40));
}

fn timeout_kills_everything() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let start = Instant::now();
    let r = sh(t.path(), "trap '' TERM; sleep 1000 & sleep 1000", |s| {
        s.timeout = Some(Duration::from_millis(500));
    });
    assert_eq!(r.outcome, Outcome::TimedOut(Duration::from_millis(500)));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// Every value of the environment is the spec's, whatever it is: two specs
/// with different values each get exactly theirs (nothing is defaulted).
fn explicit_values_reach_the_command() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let script = "{ cat /proc/sys/kernel/domainname; hostname; \
         df -k /tmp /dev/shm | awk 'NR>1 {print $2}'; ulimit -n; ulimit -c; umask; } >$R 2>&1";
    for (domain, host, tmp_kib, shm_kib, nofile, core, umask) in [
        (
            "(none)",
            "localhost",
            65536u64,
            16384u64,
            4096u64,
            0u64,
            0o022u32,
        ),
        ("build.example", "h1", 8192, 1024, 100, 1 << 20, 0o027),
    ] {
        let r = sh(t.path(), script, |s| {
            s.domainname = domain.into();
            s.hostname = host.into();
            s.mounts[0] = Mount::Tmpfs {
                dst: "/tmp".into(),
                size: Some(tmp_kib << 10),
            };
            s.shm_size = shm_kib << 10;
            s.limits.max_open_files = Some(nofile);
            s.limits.max_core_size = core;
            s.umask = umask;
        });
        assert_eq!(r.outcome, Outcome::Exited(0), "{}", r.out);
        // ulimit -c prints 512-byte blocks in busybox sh.
        let want = format!(
            "{domain}\n{host}\n{tmp_kib}\n{shm_kib}\n{nofile}\n{}\n{umask:04o}\n",
            core / 512
        );
        assert_eq!(r.out, want);
    }
}

/// Descriptors handed over appear at their numbers, and nothing else above 2.
fn passed_descriptors_appear_at_their_numbers() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    // Once started directly, once through the re-executed helper (a second
    // thread is alive).
    for threaded in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = threaded.then(|| std::thread::spawn(move || rx.recv()));
        let (r, w) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"tok").unwrap();
        let pass = vec![
            hermit_sandbox::PassFd { number: 3, fd: r },
            hermit_sandbox::PassFd { number: 4, fd: w2 },
        ];
        let run = sh_passing(
            t.path(),
            "{ ls /proc/self/fd; head -c 3 <&3; echo; echo back >&4; } >$R 2>&1",
            |_| {},
            pass,
        );
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.out);
        // ls's own directory descriptor is the only other one.
        let lines: Vec<&str> = run.out.lines().collect();
        assert!(lines.starts_with(&["0", "1", "2", "3", "4"]), "{lines:?}");
        assert_eq!(lines.last(), Some(&"tok"), "{lines:?}");
        assert!(lines.len() <= 7, "{lines:?}");
        drop(w);
        let mut back = [0u8; 5];
        assert_eq!(nix::unistd::read(&r2, &mut back).unwrap(), 5);
        assert_eq!(&back, b"back\n");
        if let Some(o) = other {
            tx.send(()).unwrap();
            o.join().unwrap().unwrap();
        }
    }
    // A number outside 3–9 is refused.
    let (r, _w) = nix::unistd::pipe().unwrap();
    let spec = explicit_spec(t.path(), vec!["/bin/true".into()]);
    let e = hermit_sandbox::run_watched_passing(
        &spec,
        Path::new("/proc/self/exe"),
        None,
        vec![hermit_sandbox::PassFd { number: 12, fd: r }],
    )
    .unwrap_err();
    assert!(e.to_string().contains("3 to 9"), "{e}");
}

fn environment_is_hermetic() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let r = sh(
        t.path(),
        "{ id; hostname; echo \"$HOME $USER $TZ\"; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
         cat /etc/passwd; cat /etc/os-release; ls /etc/resolv.conf; echo $$; touch /x; } >$R 2>&1",
        |_| {},
    );
    // The last command (touch /x) fails.
    assert_eq!(r.outcome, Outcome::Exited(1), "{}", r.out);
    let want = [
        "uid=1000(builder) gid=1000(builder)",
        "localhost",
        "/homeless-shelter builder UTC",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "builder:x:1000:1000:builder:/homeless-shelter:/bin/sh",
        "ID=image",
        "No such file or directory",
        "\n2\n",
        "Read-only file system",
    ];
    for w in want {
        assert!(r.out.contains(w), "missing {w:?} in:\n{}", r.out);
    }
    assert!(
        !r.out.contains("IMAGE"),
        "the image's passwd shows:\n{}",
        r.out
    );
    assert!(
        !r.out.contains("192.0.2.1"),
        "resolv.conf shows:\n{}",
        r.out
    );
}

fn missing_mount_points_are_created() {
    // No /etc, /proc, /dev, /tmp, /build in the image.
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), false);
    let build = tempfile::tempdir().unwrap();
    let r = sh(
        t.path(),
        "{ ls /; cat /etc/hosts; echo b > /build/f; } >$R 2>&1",
        |s| {
            s.mounts.push(Mount::Bind {
                src: build.path().to_path_buf(),
                dst: "/build".into(),
                writable: true,
            });
        },
    );
    assert_eq!(r.outcome, Outcome::Exited(0), "{}", r.out);
    for w in [
        "bin\nbuild\ndev\netc\nproc\nresult\ntmp\n",
        "127.0.0.1 localhost",
    ] {
        assert!(r.out.contains(w), "missing {w:?} in:\n{}", r.out);
    }
    assert_eq!(fs::read_to_string(build.path().join("f")).unwrap(), "b\n");
    // The image itself was not touched.
    let mut entries: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["bin"]);
}

fn setup_failures_name_step_and_path() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let r = sh(t.path(), "true", |s| {
        s.mounts.push(Mount::Bind {
            src: "/nonexistent/hermit-src".into(),
            dst: "/src".into(),
            writable: false,
        });
    });
    match r.outcome {
        Outcome::SetupFailed(f) => {
            assert_eq!(
                f.path.as_deref(),
                Some(Path::new("/nonexistent/hermit-src"))
            );
            assert_eq!(f.errno, Some(libc::ENOENT));
            assert!(
                f.step.contains("bind /nonexistent/hermit-src on /src"),
                "{f}"
            );
        }
        other => panic!("{other:?}"),
    }
    let r = sh(t.path(), "true", |s| {
        s.command = vec!["/bin/nonexistent".into()]
    });
    match r.outcome {
        Outcome::SetupFailed(f) => assert!(f.exec && f.errno == Some(libc::ENOENT), "{f}"),
        other => panic!("{other:?}"),
    }
}

/// With a second thread alive, `run` cannot fork the caller and re-executes
/// the binary as the helper instead: the same sandbox must come out.
fn multithreaded_caller_re_executes() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    let r = sh(
        t.path(),
        "{ id; cat /proc/1/cmdline; echo; } >$R; exit 4",
        |_| {},
    );
    assert_eq!(r.outcome, Outcome::Exited(4), "{}", r.out);
    assert_eq!(
        r.out,
        "uid=1000(builder) gid=1000(builder)\nhermit-sandbox\0\n"
    );
    let r = sh(t.path(), "sleep 1000", |s| {
        s.timeout = Some(Duration::from_millis(300))
    });
    assert_eq!(r.outcome, Outcome::TimedOut(Duration::from_millis(300)));
    tx.send(()).unwrap();
    other.join().unwrap().unwrap();
}

/// A hostile image's symlinks point at the host (as seen during setup, when
/// the host root was once reachable as `/oldroot`, and as seen from the
/// host): whatever the spec asks to hide or mount through them, no host file
/// is touched. Before setup detached the host root first and refused
/// symlinks on the way, hiding HOME through such a link deleted the file.
fn image_symlinks_never_reach_the_host() {
    let victim = tempfile::tempdir().unwrap();
    let v = victim.path();
    for f in ["decoy.txt", "resolv.conf", "passwd"] {
        fs::write(v.join(f), "host file\n").unwrap();
    }
    let via_oldroot = Path::new("/oldroot").join(v.strip_prefix("/").unwrap());
    for (link, target) in [("x", via_oldroot.as_path()), ("y", v)] {
        let t = tempfile::tempdir().unwrap();
        // No /build: `/` becomes a skeleton holding copies of the links.
        busybox_root(t.path(), false);
        symlink(target, t.path().join(link)).unwrap();
        let home = Path::new("/").join(link).join("decoy.txt");
        let r = sh(t.path(), "true", |s| {
            s.home = home.clone();
            s.mounts.push(Mount::Tmpfs {
                dst: Path::new("/").join(link).join("sub"),
                size: None,
            });
        });
        assert!(
            matches!(r.outcome, Outcome::SetupFailed(_) | Outcome::Exited(0)),
            "{:?}",
            r.outcome
        );
        let r = sh(t.path(), "true", |s| s.home = home.clone());
        assert!(
            matches!(r.outcome, Outcome::SetupFailed(_) | Outcome::Exited(0)),
            "{:?}",
            r.outcome
        );
        for f in ["decoy.txt", "resolv.conf", "passwd"] {
            assert_eq!(
                fs::read_to_string(v.join(f)).ok().as_deref(),
                Some("host file\n"),
                "{f} of the host was touched through the image's {link} -> {}",
                target.display()
            );
        }
        assert!(!v.join("sub").exists());
    }
}

/// `uname(2)` answered by init through seccomp user notification: the
/// spec's release and version, the rest as the kernel says (the host name
/// the sandbox set, the machine), for the command and its children alike;
/// without the field the real release comes back.
fn uname_reports_the_spec_release() {
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let real = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let script = "uname -r > $R; uname -v >> $R; uname -n >> $R; (uname -r) >> $R; \
                  sh -c 'uname -m' >> $R";
    let r = sh(t.path(), script, |s| {
        s.uname = Some(hermit_sandbox::Uname {
            release: "2.6.32-varied".into(),
            version: "#1 SMP hermit check".into(),
        });
    });
    assert_eq!(r.outcome, Outcome::Exited(0), "{}", r.out);
    let machine = std::env::consts::ARCH;
    assert_eq!(
        r.out,
        format!("2.6.32-varied\n#1 SMP hermit check\nlocalhost\n2.6.32-varied\n{machine}\n")
    );
    let r = sh(t.path(), "uname -r > $R", |_| {});
    assert_eq!(r.out, real);
    // Both at once: the 32-bit machine name stays.
    let r = sh(t.path(), "uname -m > $R; uname -r >> $R", |s| {
        s.linux32 = true;
        s.uname = Some(hermit_sandbox::Uname {
            release: "9.9.9".into(),
            version: "v".into(),
        });
    });
    if machine == "x86_64" {
        assert_eq!(r.out, "i686\n9.9.9\n");
    }
}

/// A moved clock reaches statically linked programs (busybox), in the
/// command and in everything it starts; statuses, signals and job control
/// are what they are without the tracer; `uname` is answered beside it.
fn clock_moves_for_static_programs() {
    if !cfg!(target_arch = "x86_64") {
        return; // the spec refuses a moved clock elsewhere
    }
    let t = tempfile::tempdir().unwrap();
    busybox_root(t.path(), true);
    let offset: i64 = 3653 * 86_400;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let script = "date +%s > $R; (date +%s) >> $R; sh -c 'date +%s' >> $R; \
                  sh -c 'exit 3'; echo $? >> $R; sh -c 'kill -40 $$'; echo $? >> $R; \
                  sleep 100 & p=$!; kill -TERM $p; wait $p; echo $? >> $R; \
                  sh -c 'kill -STOP $$; echo resumed > /tmp/jc' & p=$!; sleep 0.5; \
                  [ -e /tmp/jc ] && echo early >> $R; kill -CONT $p; wait $p; cat /tmp/jc >> $R; \
                  uname -r >> $R; exit 7";
    let before = now();
    let r = sh(t.path(), script, |s| {
        s.clock_offset = Some(offset);
        s.uname = Some(hermit_sandbox::Uname {
            release: "2.6.32-varied".into(),
            version: "v".into(),
        });
    });
    let after = now();
    assert_eq!(r.outcome, Outcome::Exited(7), "{}", r.out);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 8, "{}", r.out);
    for l in &lines[..3] {
        let t: i64 = l.parse().unwrap();
        assert!(
            (before + offset..=after + offset).contains(&t),
            "{t} is not {before}..{after} + {offset}: {}",
            r.out
        );
    }
    assert_eq!(
        lines[3..],
        ["3", "168", "143", "resumed", "2.6.32-varied"],
        "{}",
        r.out
    );
    // Killed by a signal, the command's status says so.
    let r = sh(t.path(), "kill -9 $$", |s| s.clock_offset = Some(offset));
    assert_eq!(r.outcome, Outcome::Signaled(9));
    // Without the offset the clock is the real one.
    let r = sh(t.path(), "date +%s > $R", |_| {});
    let t: i64 = r.out.trim().parse().unwrap();
    assert!((before..=now()).contains(&t), "{t}");
}

fn main() -> ExitCode {
    if let Some(code) = hermit_sandbox::enter_if_requested() {
        return ExitCode::from(code);
    }
    let tests: [(&str, fn()); 11] = [
        (
            "clock_moves_for_static_programs",
            clock_moves_for_static_programs,
        ),
        (
            "uname_reports_the_spec_release",
            uname_reports_the_spec_release,
        ),
        (
            "explicit_values_reach_the_command",
            explicit_values_reach_the_command,
        ),
        (
            "passed_descriptors_appear_at_their_numbers",
            passed_descriptors_appear_at_their_numbers,
        ),
        (
            "image_symlinks_never_reach_the_host",
            image_symlinks_never_reach_the_host,
        ),
        (
            "multithreaded_caller_re_executes",
            multithreaded_caller_re_executes,
        ),
        ("statuses_and_signals", statuses_and_signals),
        ("timeout_kills_everything", timeout_kills_everything),
        ("environment_is_hermetic", environment_is_hermetic),
        (
            "missing_mount_points_are_created",
            missing_mount_points_are_created,
        ),
        (
            "setup_failures_name_step_and_path",
            setup_failures_name_step_and_path,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
