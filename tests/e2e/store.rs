#![allow(clippy::unwrap_used)] // tests may unwrap
//! The store through the real binary: adds, paths, verify, gc, roots, the
//! store's guarantees under SIGKILL, concurrency, full disks and missing
//! permissions, and unpacking (every format, and every hostile entry).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{both, run};
use crate::fixtures::{both_users, As};

/// A scratch directory on tmpfs when there is one (fast), else /tmp, owned
/// by `who`.
fn scratch(who: As) -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let d = tempfile::Builder::new()
        .prefix("hermit-e2e-")
        .tempdir_in(base)
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    who.give(d.path());
    d
}

/// Deterministic pseudo-random bytes (xorshift), fast to make.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_of(path: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(path));
    assert!(o.status.success(), "{}", both(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    format!("sha256:{}", s.split_whitespace().next().unwrap())
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `hermit store add PATH`, asserting success; returns the digest.
fn add(who: As, home: &Path, path: &Path) -> String {
    let o = run(who.hermit_in(home).args(["store", "add"]).arg(path));
    assert!(o.status.success(), "{}", both(&o));
    stdout(&o)
}

fn verify_ok(who: As, home: &Path) {
    let o = run(who.hermit_in(home).args(["store", "verify"]));
    assert!(o.status.success(), "verify failed: {}", both(&o));
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn add_file_prints_digest_and_second_add_writes_nothing(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let f = s.path().join("data.bin");
    fs::write(&f, noise(3 << 20, 1)).unwrap();
    let digest = add(who, &home, &f);
    assert_eq!(digest, sha256_of(&f));
    let o = run(who.hermit_in(&home).args(["store", "path", &digest]));
    assert!(o.status.success(), "{}", both(&o));
    let p = PathBuf::from(stdout(&o));
    assert_eq!(fs::read(&p).unwrap(), fs::read(&f).unwrap());
    let before = fs::metadata(&p).unwrap();
    assert_eq!(before.mode() & 0o7777, 0o444);
    // Again: the same digest, the same inode, untouched.
    assert_eq!(add(who, &home, &f), digest);
    let after = fs::metadata(&p).unwrap();
    assert_eq!(
        (
            before.ino(),
            before.mtime(),
            before.mtime_nsec(),
            before.ctime_nsec()
        ),
        (
            after.ino(),
            after.mtime(),
            after.mtime_nsec(),
            after.ctime_nsec()
        )
    );
    assert_eq!(count(&home.join("v1/blobs/sha256")), 1);
}

fn add_dir_makes_a_deterministic_read_only_tree(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let make = |root: &Path, reverse: bool| {
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {
                fs::create_dir_all(root.join("src/lib")).unwrap();
                fs::write(root.join("src/lib/a.c"), b"int a;\n").unwrap();
            }),
            Box::new(|| {
                fs::write(root.join("build.sh"), b"#!/bin/sh\nmake\n").unwrap();
                fs::set_permissions(root.join("build.sh"), fs::Permissions::from_mode(0o700))
                    .unwrap();
            }),
            Box::new(|| std::os::unix::fs::symlink("src/lib/a.c", root.join("a")).unwrap()),
        ];
        if reverse {
            steps.reverse();
        }
        for step in steps {
            step();
        }
    };
    let (d1, d2) = (s.path().join("one"), s.path().join("two"));
    fs::create_dir(&d1).unwrap();
    fs::create_dir(&d2).unwrap();
    make(&d1, false);
    make(&d2, true);
    who.give(s.path());
    let t1 = add(who, &home, &d1);
    let t2 = add(who, &home, &d2);
    assert_eq!(t1, t2, "same content, other order and mtimes: same tree");
    let o = run(who.hermit_in(&home).args(["store", "path", &t1]));
    assert!(o.status.success(), "{}", both(&o));
    let p = PathBuf::from(stdout(&o));
    assert!(p.starts_with(home.join("v1/trees")));
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(
        fs::metadata(p.join("build.sh")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(p.join("src/lib/a.c")).unwrap().mode() & 0o7777,
        0o444
    );
    assert_eq!(
        fs::read_link(p.join("a")).unwrap(),
        Path::new("src/lib/a.c")
    );
    // One byte different: another tree.
    fs::write(d2.join("src/lib/a.c"), b"int b;\n").unwrap();
    assert_ne!(add(who, &home, &d2), t1);
    verify_ok(who, &home);
}

fn path_of_malformed_or_absent_digest_is_a_clear_user_error(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let o = run(who.hermit_in(&home).args(["store", "path", "sha256:12345"]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stderr(&o).contains("sha256:12345"), "{}", both(&o));
    let absent = format!("sha256:{}", "ab".repeat(32));
    let o = run(who.hermit_in(&home).args(["store", "path", &absent]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stderr(&o).contains(&absent), "{}", both(&o));
    assert!(stderr(&o).contains("not in the store"), "{}", both(&o));
}

fn sigkill_during_add_leaves_a_consistent_store(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let f = s.path().join("big.bin");
    fs::write(&f, noise(48 << 20, 7)).unwrap();
    let mut killed_mid_add = 0;
    for delay_ms in [0u64, 5, 20, 60, 150, 400] {
        let mut child = who
            .hermit_in(&home)
            .args(["store", "add"])
            .arg(&f)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !finished {
            killed_mid_add += 1;
        }
        // Whatever the moment, the store verifies and the next open removes
        // the dead process's temp session.
        verify_ok(who, &home);
        assert_eq!(
            count(&home.join("v1/tmp")),
            0,
            "stale session left after delay {delay_ms}ms"
        );
        let blobs = count(&home.join("v1/blobs/sha256"));
        assert!(blobs <= 1);
        if blobs == 1 {
            // If it is there, it is complete: verify has re-hashed it.
            let o = run(who.hermit_in(&home).args(["store", "path", &sha256_of(&f)]));
            assert!(o.status.success(), "{}", both(&o));
        }
    }
    assert!(
        killed_mid_add >= 2,
        "the adds finished too fast to be interrupted"
    );
    assert_eq!(add(who, &home, &f), sha256_of(&f));
    verify_ok(who, &home);
}

fn concurrent_adds_of_the_same_content_make_one_entry(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let f = s.path().join("same.bin");
    fs::write(&f, noise(6 << 20, 3)).unwrap();
    // Create the store first so all eight race on the add, not on mkdir.
    verify_ok(who, &home);
    let children: Vec<_> = (0..8)
        .map(|_| {
            who.hermit_in(&home)
                .args(["store", "add"])
                .arg(&f)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let expected = sha256_of(&f);
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", both(&o));
        assert_eq!(stdout(&o), expected);
    }
    assert_eq!(count(&home.join("v1/blobs/sha256")), 1);
    assert_eq!(count(&home.join("v1/tmp")), 0);
    verify_ok(who, &home);
}

fn verify_names_a_corrupt_blob_and_fails(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let (good, bad) = (s.path().join("good"), s.path().join("bad"));
    fs::write(&good, b"good content\n").unwrap();
    fs::write(&bad, noise(100_000, 9)).unwrap();
    add(who, &home, &good);
    let d = add(who, &home, &bad);
    verify_ok(who, &home);
    let blob = home
        .join("v1/blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    bytes[5000] ^= 0x01;
    fs::write(&blob, bytes).unwrap();
    let o = run(who.hermit_in(&home).args(["store", "verify"]));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = stderr(&o);
    assert!(err.contains(&blob.display().to_string()), "{err}");
    assert!(
        !err.contains(sha256_of(&good).trim_start_matches("sha256:")),
        "{err}"
    );
}

fn verify_names_a_corrupt_tree(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let dir = s.path().join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("f"), b"one").unwrap();
    let t = add(who, &home, &dir);
    let p = home.join("v1/trees").join(t.trim_start_matches("sha256:"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(p.join("extra"), b"sneaked in").unwrap();
    let o = run(who.hermit_in(&home).args(["store", "verify"]));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert!(
        stderr(&o).contains(&p.display().to_string()),
        "{}",
        both(&o)
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn full_disk_gives_one_clear_message_and_keeps_the_store_clean(who: As) {
    let s = scratch(who);
    let mnt = s.path().join("tiny");
    fs::create_dir(&mnt).unwrap();
    let o = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!(
            "size=1m,mode=0755,uid={},gid={}",
            who.uid(),
            who.gid()
        ))
        .arg("tmpfs")
        .arg(&mnt));
    assert!(
        o.status.success(),
        "mounting a tmpfs (tests run as root): {}",
        both(&o)
    );
    let _m = Mount(mnt.clone());
    let f = s.path().join("big.bin");
    fs::write(&f, noise(4 << 20, 5)).unwrap();
    let o = run(who.hermit_in(&mnt).args(["store", "add"]).arg(&f));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains("no space left on device"), "{err}");
    assert!(err.contains(&mnt.join("v1").display().to_string()), "{err}");
    assert_eq!(count(&mnt.join("v1/blobs/sha256")), 0);
    verify_ok(who, &mnt);
    assert_eq!(count(&mnt.join("v1/tmp")), 0);
    // The store still works for what fits.
    let small = s.path().join("small");
    fs::write(&small, b"fits").unwrap();
    assert_eq!(add(who, &mnt, &small), sha256_of(&small));
}

/// A store root made, used by another user: refused at open, naming the
/// store, its owner and the fix (see also `rootless.rs`).
#[test]
fn unwritable_store_gives_one_clear_message() {
    let who = As::Root;
    let s = scratch(who);
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = s.path().join("home");
    verify_ok(who, &home); // created by root, not writable by others
    let f = s.path().join("file");
    fs::write(&f, b"some bytes").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&crate::fixtures::fixture().hermit)
        .args(["store", "add"])
        .arg(&f)
        .env("HERMIT_HOME", &home));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(
        err.contains("belongs to another user") && err.contains("owned by uid 0"),
        "{err}"
    );
    assert!(
        err.contains("HERMIT_HOME") && err.contains("chown"),
        "{err}"
    );
    assert!(
        err.contains(&home.join("v1").display().to_string()),
        "{err}"
    );
    assert_eq!(count(&home.join("v1/tmp")), 0, "nothing was written");
    verify_ok(who, &home);
}

fn gc_keeps_roots_and_records_and_reports_what_it_freed(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let mk = |name: &str, len: usize| {
        let p = s.path().join(name);
        fs::write(&p, noise(len, name.len() as u64)).unwrap();
        add(who, &home, &p)
    };
    let pinned = mk("pinned", 1000);
    let recorded = mk("recorded", 2000);
    let garbage = mk("garbage-x", 3000);
    let o = run(who
        .hermit_in(&home)
        .args(["store", "root", "add", &pinned, "--name", "my-pin"]));
    assert!(o.status.success(), "{}", both(&o));
    let out = home.join("v1/outputs").join("0".repeat(64));
    fs::create_dir_all(&out).unwrap();
    fs::write(
        out.join("record.json"),
        format!("{{\"sources\":[{{\"sha256\":\"{recorded}\"}}]}}"),
    )
    .unwrap();
    who.give(&home);
    let o = run(who.hermit_in(&home).args(["store", "gc"]));
    assert!(o.status.success(), "{}", both(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("removed blob {garbage}")), "{text}");
    assert!(text.contains("freed 3000 bytes in 1 entries"), "{text}");
    for (d, present) in [(&pinned, true), (&recorded, true), (&garbage, false)] {
        let o = run(who.hermit_in(&home).args(["store", "path", d]));
        assert_eq!(o.status.success(), present, "{d}: {}", both(&o));
    }
    assert!(
        out.join("record.json").exists(),
        "outputs are never collected"
    );
    let o = run(who.hermit_in(&home).args(["store", "root", "rm", "my-pin"]));
    assert!(o.status.success(), "{}", both(&o));
    let o = run(who.hermit_in(&home).args(["store", "gc"]));
    assert!(
        stdout(&o).contains("freed 1000 bytes in 1 entries"),
        "{}",
        both(&o)
    );
    // The output above is a stand-in that verify (which checks outputs
    // against their records) rightly calls corrupt.
    fs::remove_dir_all(&out).unwrap();
    verify_ok(who, &home);
}

fn gc_waits_for_a_process_holding_the_store_lock(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    verify_ok(who, &home);
    // flock(1) takes the same flock(2) lock an adding hermit holds shared.
    let mut holder = Command::new("flock")
        .args(["-s"])
        .arg(home.join("v1/store.lock"))
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    // Wait until the holder really holds it (an exclusive try fails).
    let lock = home.join("v1/store.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(Command::new("flock")
        .args(["-n", "-x"])
        .arg(&lock)
        .arg("true"))
    .status
    .success()
    {
        assert!(Instant::now() < deadline, "flock never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let o = run(who.hermit_in(&home).args(["store", "gc"]));
    let waited = start.elapsed();
    let _ = holder.wait();
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        waited >= Duration::from_millis(1000),
        "gc did not wait: {waited:?}"
    );
    assert!(stderr(&o).contains("waiting"), "{}", both(&o));
}

// ---------------------------------------------------------------- unpacking

/// Writes an archive with Python's tarfile, which (unlike GNU tar) writes
/// whatever names, links and types it is told to. `entries` is Python code
/// that calls `add(name, type, data=b"", link="", mode=0o644)`.
fn python_tar(path: &Path, entries: &str) {
    let script = format!(
        r#"
import io, sys, tarfile
t = tarfile.open(sys.argv[1], "w", format=tarfile.GNU_FORMAT)
def add(name, type=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    i = tarfile.TarInfo(name)
    i.type = type
    i.linkname = link
    i.mode = mode
    i.size = len(data) if type == tarfile.REGTYPE else 0
    t.addfile(i, io.BytesIO(data) if type == tarfile.REGTYPE else None)
{entries}
t.close()
"#
    );
    let o = run(Command::new("python3").arg("-c").arg(script).arg(path));
    assert!(o.status.success(), "{}", both(&o));
}

struct Hostile {
    _s: tempfile::TempDir,
    home: PathBuf,
    outside: PathBuf,
}

/// Adds a hostile archive and unpacks it; asserts it is refused naming
/// `entry`, that nothing landed outside the store or in `unpacked/`, and
/// that no temp files are left.
fn refuse(who: As, entries: &str, entry: &str) -> Hostile {
    let s = scratch(who);
    let home = s.path().join("home");
    let outside = s.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"do not touch").unwrap();
    // The caller could write there: only hermit's refusal keeps it clean.
    who.give(&outside);
    let archive = s.path().join("evil.tar");
    python_tar(
        &archive,
        &entries.replace("OUTSIDE", &outside.display().to_string()),
    );
    let entry = entry.replace("OUTSIDE", &outside.display().to_string());
    let d = add(who, &home, &archive);
    let o = run(who.hermit_in(&home).args(["store", "unpack", &d]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("refusing archive entry {entry:?}")),
        "{err}"
    );
    assert!(err.contains(&d), "the message names the archive: {err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert_eq!(count(&home.join("v1/unpacked")), 0, "nothing in unpacked/");
    assert_eq!(count(&home.join("v1/tmp")), 0, "no temp files left");
    let names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("secret")],
        "outside was written to"
    );
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"do not touch");
    assert!(!s.path().join("evil").exists());
    verify_ok(who, &home);
    Hostile {
        _s: s,
        home,
        outside,
    }
}

fn unpack_refuses_dotdot(who: As) {
    let h = refuse(
        who,
        r#"add("ok", data=b"fine"); add("../../../evil", data=b"x")"#,
        "../../../evil",
    );
    assert!(!h.home.join("v1/evil").exists() && !h.home.join("evil").exists());
}

fn unpack_refuses_absolute_path(who: As) {
    let h = refuse(who, r#"add("OUTSIDE/evil", data=b"x")"#, "OUTSIDE/evil");
    assert!(!h.outside.join("evil").exists());
}

fn unpack_refuses_escaping_symlink(who: As) {
    refuse(
        who,
        r#"add("link", tarfile.SYMTYPE, link="../../../../../../../../OUTSIDE"); add("link/evil", data=b"x")"#,
        "link",
    );
}

fn unpack_refuses_escaping_hardlink(who: As) {
    refuse(
        who,
        r#"add("h", tarfile.LNKTYPE, link="OUTSIDE/secret")"#,
        "h",
    );
    refuse(
        who,
        r#"add("h", tarfile.LNKTYPE, link="../../../secret")"#,
        "h",
    );
}

fn unpack_refuses_writing_through_a_symlink(who: As) {
    // The brief's case: the link itself already points outside.
    refuse(
        who,
        r#"add("a", tarfile.SYMTYPE, link="OUTSIDE"); add("a/evil", data=b"x")"#,
        "a",
    );
    // A link that stays inside is still never written through.
    refuse(
        who,
        r#"add("sub", tarfile.DIRTYPE, mode=0o755); add("a", tarfile.SYMTYPE, link="sub"); add("a/evil", data=b"x")"#,
        "a/evil",
    );
}

fn unpack_refuses_replacing_a_directory(who: As) {
    refuse(
        who,
        r#"add("d", tarfile.DIRTYPE, mode=0o755); add("d/x", data=b"1"); add("d", data=b"a file now")"#,
        "d",
    );
}

fn unpack_refuses_device_nodes(who: As) {
    refuse(who, r#"add("dev/null", tarfile.CHRTYPE)"#, "dev/null");
    refuse(who, r#"add("dev/sda", tarfile.BLKTYPE)"#, "dev/sda");
}

fn unpack_refuses_fifo(who: As) {
    refuse(who, r#"add("pipe", tarfile.FIFOTYPE)"#, "pipe");
}

fn unpack_drops_setuid_bits(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let archive = s.path().join("suid.tar");
    python_tar(
        &archive,
        r#"add("bin/su", data=b"echo su", mode=0o4755); add("bin/sg", data=b"x", mode=0o2644); add("tmp", tarfile.DIRTYPE, mode=0o1777)"#,
    );
    let d = add(who, &home, &archive);
    let o = run(who.hermit_in(&home).args(["store", "unpack", &d]));
    assert!(o.status.success(), "{}", both(&o));
    let p = PathBuf::from(stdout(&o));
    assert_eq!(
        fs::metadata(p.join("bin/su")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(p.join("bin/sg")).unwrap().mode() & 0o7777,
        0o444
    );
    assert_eq!(fs::metadata(p.join("tmp")).unwrap().mode() & 0o7777, 0o555);
}

/// Makes a source tree, packs it with the real tool for `format`, adds and
/// unpacks it, and compares.
fn unpack_format(who: As, format: &str) {
    let s = scratch(who);
    let home = s.path().join("home");
    let src = s.path().join("pkg-1.0");
    fs::create_dir_all(src.join("src/deep/er")).unwrap();
    fs::write(src.join("README"), b"hello\n").unwrap();
    fs::write(src.join("src/deep/er/big.bin"), noise(300_000, 11)).unwrap();
    fs::write(src.join("configure"), b"#!/bin/sh\necho ok\n").unwrap();
    fs::set_permissions(src.join("configure"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/deep/er/big.bin", src.join("link")).unwrap();
    let archive = s.path().join(format!("pkg.{format}"));
    let mut cmd = if format == "zip" {
        let mut c = Command::new("zip");
        c.current_dir(s.path())
            .args(["-q", "-r", "-y"])
            .arg(&archive)
            .arg("pkg-1.0");
        c
    } else {
        let compress = match format {
            "tar" => "--no-auto-compress",
            "tar.gz" => "--gzip",
            "tar.xz" => "--xz",
            "tar.bz2" => "--bzip2",
            "tar.zst" => "--zstd",
            other => panic!("no such format {other}"),
        };
        let mut c = Command::new("tar");
        c.arg("-C").arg(s.path()).arg(compress).arg("-cf");
        c.arg(&archive).arg("pkg-1.0");
        c
    };
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", both(&o));
    let d = add(who, &home, &archive);
    let o = run(who.hermit_in(&home).args(["store", "unpack", &d]));
    assert!(o.status.success(), "{format}: {}", both(&o));
    let p = PathBuf::from(stdout(&o));
    assert!(p.starts_with(home.join("v1/unpacked")));
    let root = p.join("pkg-1.0");
    assert_eq!(fs::read(root.join("README")).unwrap(), b"hello\n");
    assert_eq!(
        fs::read(root.join("src/deep/er/big.bin")).unwrap(),
        fs::read(src.join("src/deep/er/big.bin")).unwrap()
    );
    assert_eq!(
        fs::metadata(root.join("configure")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(root.join("README")).unwrap().mode() & 0o7777,
        0o444
    );
    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        Path::new("src/deep/er/big.bin")
    );
    assert_eq!(
        fs::metadata(root.join("README")).unwrap().mtime(),
        fs::metadata(src.join("README")).unwrap().mtime(),
        "mtimes are kept"
    );
    // Once only: the same path, and the tree is not rewritten.
    let ino = fs::metadata(root.join("README")).unwrap().ino();
    let o = run(who
        .hermit_in(&home)
        .args(["store", "unpack", &d, "--format", format]));
    assert_eq!(PathBuf::from(stdout(&o)), p, "{}", both(&o));
    assert_eq!(fs::metadata(root.join("README")).unwrap().ino(), ino);
    // Stripping the top directory gives another tree.
    let o = run(who
        .hermit_in(&home)
        .args(["store", "unpack", &d, "--strip-components", "1"]));
    assert!(o.status.success(), "{}", both(&o));
    let stripped = PathBuf::from(stdout(&o));
    assert_ne!(stripped, p);
    assert_eq!(fs::read(stripped.join("README")).unwrap(), b"hello\n");
    verify_ok(who, &home);
    assert_eq!(count(&home.join("v1/tmp")), 0);
}

fn unpack_tar(who: As) {
    unpack_format(who, "tar");
}

fn unpack_tar_gz(who: As) {
    unpack_format(who, "tar.gz");
}

fn unpack_tar_xz(who: As) {
    unpack_format(who, "tar.xz");
}

fn unpack_tar_bz2(who: As) {
    unpack_format(who, "tar.bz2");
}

fn unpack_tar_zst(who: As) {
    unpack_format(who, "tar.zst");
}

fn unpack_zip(who: As) {
    unpack_format(who, "zip");
}

fn unpack_of_a_non_archive_says_how_to_fix_it(who: As) {
    let s = scratch(who);
    let home = s.path().join("home");
    let f = s.path().join("notes.txt");
    fs::File::create(&f)
        .unwrap()
        .write_all(b"just text\n")
        .unwrap();
    let d = add(who, &home, &f);
    let o = run(who.hermit_in(&home).args(["store", "unpack", &d]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains("cannot tell the format"),
        "{}",
        both(&o)
    );
    assert!(stderr(&o).contains(&d), "{}", both(&o));
    let o = run(who
        .hermit_in(&home)
        .args(["store", "unpack", &d, "--format", "rar"]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stderr(&o).contains("\"rar\""), "{}", both(&o));
}

both_users!(
    add_file_prints_digest_and_second_add_writes_nothing,
    add_dir_makes_a_deterministic_read_only_tree,
    path_of_malformed_or_absent_digest_is_a_clear_user_error,
    sigkill_during_add_leaves_a_consistent_store,
    concurrent_adds_of_the_same_content_make_one_entry,
    verify_names_a_corrupt_blob_and_fails,
    verify_names_a_corrupt_tree,
    full_disk_gives_one_clear_message_and_keeps_the_store_clean,
    gc_keeps_roots_and_records_and_reports_what_it_freed,
    gc_waits_for_a_process_holding_the_store_lock,
    unpack_refuses_dotdot,
    unpack_refuses_absolute_path,
    unpack_refuses_escaping_symlink,
    unpack_refuses_escaping_hardlink,
    unpack_refuses_writing_through_a_symlink,
    unpack_refuses_replacing_a_directory,
    unpack_refuses_device_nodes,
    unpack_refuses_fifo,
    unpack_drops_setuid_bits,
    unpack_tar,
    unpack_tar_gz,
    unpack_tar_xz,
    unpack_tar_bz2,
    unpack_tar_zst,
    unpack_zip,
    unpack_of_a_non_archive_says_how_to_fix_it,
);
