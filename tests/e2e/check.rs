//! `hermit check`: a control build and one variant per variation, compared
//! file by file — a reproducible spec passes every default variation, and a
//! spec that observes one varied thing is caught by exactly that variation,
//! with the differing file named. Over a busybox OCI image in real
//! namespaces, as root and as an ordinary user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::graph::graph_project;

const DEFAULTS: [&str; 9] = [
    "repeat",
    "jobs",
    "cpus",
    "uname",
    "kernel",
    "randomness",
    "aslr",
    "clock",
    "dirorder",
];

fn hermit(who: As, home: &Path, args: &[&str]) -> Output {
    run(who.hermit_in(home).args(args))
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(o)))
}

/// `name → report` of `--json`'s variations.
fn variation<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["variations"]
        .as_array()
        .unwrap_or_else(|| panic!("no variations in {v}"))
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no variation {name} in {v}"))
}

/// `[{"how", "path"}]` of a variation's differing files (their causes
/// are checked apart).
fn files(x: &serde_json::Value) -> serde_json::Value {
    let list = x["differing_files"].as_array().cloned().unwrap_or_default();
    serde_json::Value::Array(
        list.iter()
            .map(|d| serde_json::json!({"how": d["how"], "path": d["path"]}))
            .collect(),
    )
}

/// Whether `who` may open /dev/fuse (disorderfs needs it; Debian makes it
/// 0666, a bare container may leave it 0600).
fn fuse_open_to(who: As) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = fs::metadata("/dev/fuse") else {
        return false;
    };
    matches!(who, As::Root) || m.permissions().mode() & 0o006 == 0o006
}

fn project(dir: &Path, nodes: &[(&str, &str)]) -> Vec<PathBuf> {
    let defs: Vec<crate::graph::NodeDef<'_>> =
        nodes.iter().map(|(n, s)| (*n, *s, &[][..])).collect();
    graph_project(dir, &defs)
}

/// A variation whose differing files are exactly `paths` (all changed)
/// and whose causes are `causes`.
fn assert_changed(x: &serde_json::Value, paths: &[&str], causes: &[&str]) {
    let want: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| serde_json::json!({"how": "changed", "path": p}))
        .collect();
    assert_eq!(files(x), serde_json::json!(want), "{x}");
    assert_eq!(x["causes"], serde_json::json!(causes), "{x}");
}

/// `dir/<name>/spec.toml`: a build running `script` over the image at
/// `dir/image` (pinned by `manifest`).
fn spec_over_image(dir: &Path, name: &str, manifest: &str, script: &str) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir_all(&d).unwrap();
    let spec = d.join("spec.toml");
    fs::write(
        &spec,
        format!(
            "[package]\nname = \"{name}\"\nversion = \"1\"\n\n[toolchain]\noci = \"../image\"\n\
             digest = \"{manifest}\"\n\n[build]\nscript = \"\"\"\n{script}\n\"\"\"\n"
        ),
    )
    .unwrap();
    spec
}

/// `hermit check SPEC --vary VARY --json` as `who`, which must exit with
/// `code`; its report.
fn check_json(who: As, home: &Path, spec: &Path, vary: &str, code: i32) -> serde_json::Value {
    let o = hermit(
        who,
        home,
        &["check", spec.to_str().unwrap(), "--vary", vary, "--json"],
    );
    assert_eq!(o.status.code(), Some(code), "{}", both(&o));
    json(&o)
}

fn check_passes_a_reproducible_build_under_every_default_variation(who: As) {
    let t = who.scratch();
    let specs = project(
        t.path(),
        &[(
            "clean",
            "mkdir $out/d\necho hello > $out/a\nprintf 'x\\n' > $out/d/b\nls / | sort > $out/d/root",
        )],
    );
    who.give(t.path());
    let home = t.path().join("home");
    let spec = specs[0].to_str().unwrap();
    let o = hermit(who, &home, &["check", spec, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let v = json(&o);
    assert_eq!(v["reproducible"], true, "{v}");
    assert!(v["control_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(v["control_output"], serde_json::Value::Null);
    let names: Vec<&str> = v["variations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, DEFAULTS);
    for n in DEFAULTS {
        let x = variation(&v, n);
        assert_eq!(files(x), serde_json::json!([]), "{n}: {x}");
        assert_eq!(x["error"], serde_json::Value::Null, "{n}: {x}");
        if n == "dirorder" && !fuse_open_to(who) {
            assert_eq!(x["varied"], false, "{x}");
            assert!(x["what"].as_str().unwrap().contains("/dev/fuse"), "{x}");
        } else {
            assert_eq!(x["varied"], true, "{n}: {x}");
            assert_eq!(x["identical"], true, "{n}: {x}");
        }
    }
    // Nothing was installed: a build afterwards is not a cache hit.
    let o = hermit(who, &home, &["build", spec, "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        json(&o)["cached"],
        false,
        "hermit check installed an output"
    );
    // The text report says it too.
    let o = hermit(
        who,
        &home,
        &["check", spec, "--no-vary", "clock,randomness"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("reproducible under every variation checked"),
        "{text}"
    );
    assert!(!text.contains("randomness"), "{text}");
    // A record checks like its spec.
    let rec = json(&hermit(who, &home, &["build", spec, "--json"]))["record"]
        .as_str()
        .map(PathBuf::from)
        .unwrap();
    let o = hermit(
        who,
        &home,
        &["check", rec.to_str().unwrap(), "--vary", "uname"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
}

/// `(spec name, script, --vary, the one variation that must catch it, the
/// file that must differ, the cause the differing bytes must name)`.
const UNREPRODUCIBLE: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("ncpu", "nproc > $out/n", "", "cpus", "n", "CPU count"),
    (
        "cpuinfo",
        "grep -c ^processor /proc/cpuinfo > $out/c",
        "",
        "cpus",
        "c",
        "CPU count",
    ),
    (
        "jobs",
        "echo $HERMIT_JOBS > $out/j",
        "",
        "jobs",
        "j",
        "parallelism (HERMIT_JOBS)",
    ),
    (
        "arch",
        "uname -m > $out/m",
        "",
        "uname",
        "m",
        "architecture information (uname)",
    ),
    (
        "kernel",
        "uname -r > $out/r",
        "",
        "kernel",
        "r",
        "kernel version (uname -r/-v)",
    ),
    (
        "osrel",
        "cat /proc/sys/kernel/osrelease > $out/r",
        "",
        "kernel",
        "r",
        "kernel version (uname -r/-v)",
    ),
    (
        "seed",
        "echo \"seed ${PYTHONHASHSEED:-none}\" > $out/s",
        "",
        "randomness",
        "s",
        "randomness / snippet encoding (random seeds)",
    ),
    (
        "aslr",
        "grep -F '[stack]' /proc/self/maps | cut -d' ' -f1 > $out/maps",
        "",
        "aslr",
        "maps",
        "references to memory addresses (ASLR)",
    ),
    (
        "order",
        "mkdir d1 d2 d3\nfind /build > $out/order",
        "",
        "dirorder",
        "order",
        "filesystem ordering",
    ),
    (
        "mask",
        "umask > $out/u",
        "all",
        "umask",
        "u",
        "file permissions (umask)",
    ),
    (
        "who",
        "id -un > $out/u",
        "all",
        "user",
        "u",
        "user information",
    ),
    (
        "home",
        "echo \"$HOME\" > $out/h",
        "all",
        "user",
        "h",
        "user information",
    ),
    (
        "host",
        "hostname > $out/h",
        "all",
        "hostname",
        "h",
        "system DNS name (host and domain name)",
    ),
    (
        "zone",
        "date -d @0 +%H%M > $out/z",
        "all",
        "timezone",
        "z",
        "time zone",
    ),
    (
        "path",
        "pwd > $out/p",
        "all",
        "buildpath",
        "p",
        "build path",
    ),
    (
        "extra",
        "ls /usr/bin 2>/dev/null > $out/l || true",
        "all",
        "packages",
        "l",
        "package dependencies (an extra package present)",
    ),
    (
        "unpacked",
        "stat -c '%Y %a' /sources/src/f > $out/meta",
        "all",
        "archive",
        "meta",
        "archive metadata (mtimes, owners, modes of the sources)",
    ),
];

/// Adds `[[source]] src` (a local tree with one file, `f`) to a spec.
fn with_source(spec: &Path) {
    let dir = spec.parent().unwrap();
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("src/f"), "data\n").unwrap();
    let mut text = fs::read_to_string(spec).unwrap();
    text.push_str("\n[[source]]\nname = \"src\"\npath = \"src\"\n");
    fs::write(spec, text).unwrap();
}

fn check_catches_each_unreproducible_build_by_its_variation(who: As) {
    let t = who.scratch();
    let nodes: Vec<(&str, &str)> = UNREPRODUCIBLE.iter().map(|c| (c.0, c.1)).collect();
    let specs = project(t.path(), &nodes);
    // The archive case reads a source.
    let unpacked = specs
        .iter()
        .find(|s| s.parent().unwrap().ends_with("unpacked"))
        .unwrap();
    with_source(unpacked);
    who.give(t.path());
    let home = t.path().join("home");
    for (case, spec) in UNREPRODUCIBLE.iter().zip(&specs) {
        let (name, _, vary, culprit, file, cause) = *case;
        let mut args = vec!["check", spec.to_str().unwrap(), "--json"];
        if !vary.is_empty() {
            args.extend(["--vary", vary]);
        }
        let o = hermit(who, &home, &args);
        if culprit == "dirorder" && !fuse_open_to(who) {
            // Said, not hidden: nothing else varies the order.
            assert_eq!(o.status.code(), Some(0), "{name}: {}", both(&o));
            let x = variation(&json(&o), "dirorder").clone();
            assert_eq!(x["varied"], false, "{x}");
            continue;
        }
        assert_eq!(o.status.code(), Some(1), "{name}: {}", both(&o));
        let v = json(&o);
        assert_eq!(v["reproducible"], false, "{name}: {v}");
        for x in v["variations"].as_array().unwrap() {
            let n = x["name"].as_str().unwrap();
            if n == culprit {
                assert_eq!(x["identical"], false, "{name}: {x}");
                assert_eq!(
                    files(x),
                    serde_json::json!([{"how": "changed", "path": file}]),
                    "{name}: {x}"
                );
                // Named from the differing bytes, not from the variation
                // alone.
                assert_eq!(x["causes"], serde_json::json!([cause]), "{name}: {x}");
                let d = &x["differing_files"][0];
                assert_eq!(d["cause"], cause, "{name}: {x}");
                assert!(
                    !d["evidence"].as_str().unwrap().contains("alone"),
                    "{name}: {x}"
                );
                // The variant is kept, and differs from the kept control.
                let out = PathBuf::from(x["output"].as_str().unwrap());
                let control = PathBuf::from(v["control_output"].as_str().unwrap());
                assert_ne!(
                    fs::read(out.join(file)).unwrap(),
                    fs::read(control.join(file)).unwrap(),
                    "{name}"
                );
                // diffoscope is installed here (scripts/install-deps.sh).
                let d = PathBuf::from(
                    x["diffoscope"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: no diffoscope report: {x}")),
                );
                let report = fs::read_to_string(&d).unwrap();
                assert!(
                    report.contains(&format!("control/{file}"))
                        && report.contains(&format!("variant/{file}")),
                    "{name}: {report}"
                );
                let html = PathBuf::from(x["diffoscope_html"].as_str().unwrap());
                assert!(
                    fs::read_to_string(&html).unwrap().contains("<html"),
                    "{name}"
                );
                // Only the reports stay beside the kept output.
                assert!(!d.parent().unwrap().join("diffoscope").exists(), "{name}");
                // The variant's record says what it varied; a build path
                // override shows in its environment.
                let rec: serde_json::Value = serde_json::from_slice(
                    &fs::read(out.parent().unwrap().join("record.json")).unwrap(),
                )
                .unwrap();
                assert!(
                    rec["informational"]["check_variation"]
                        .as_str()
                        .unwrap()
                        .starts_with(culprit),
                    "{name}: {rec}"
                );
                if culprit == "buildpath" {
                    assert_eq!(
                        rec["environment"]["build_path"],
                        "/build-hermitcheck/a-longer-build-path"
                    );
                }
            } else {
                assert_ne!(x["identical"], false, "{name}: {n} differs too: {x}");
                assert_eq!(files(x), serde_json::json!([]), "{name}: {x}");
            }
        }
    }
    // The text report names the variation, the file and the cause.
    let arch = specs
        .iter()
        .find(|s| s.parent().unwrap().ends_with("arch"))
        .unwrap();
    let o = hermit(who, &home, &["check", arch.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("uname       DIFFERS"), "{text}");
    assert!(text.contains("changed  m"), "{text}");
    assert!(text.contains("architecture information (uname)"), "{text}");
    assert!(text.contains("NOT reproducible: 1 of"), "{text}");
}

/// Output that differs with nothing varied: `repeat` catches it, and the
/// variations that differ in the same file point to plain nondeterminism,
/// not to themselves.
fn check_tells_plain_nondeterminism_from_a_variation(who: As) {
    let t = who.scratch();
    let specs = project(
        t.path(),
        &[(
            "noisy",
            "head -c 16 /dev/urandom | od -An -tx1 > $out/r\nuname -m > $out/m",
        )],
    );
    who.give(t.path());
    let home = t.path().join("home");
    let spec = specs[0].to_str().unwrap();
    let o = hermit(
        who,
        &home,
        &["check", spec, "--vary", "repeat,cpus,uname", "--json"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let v = json(&o);
    let plain = "plain nondeterminism (randomness, the clock, thread scheduling)";
    let repeat = variation(&v, "repeat");
    assert_eq!(
        files(repeat),
        serde_json::json!([{"how": "changed", "path": "r"}]),
        "{repeat}"
    );
    assert_eq!(repeat["causes"], serde_json::json!([plain]));
    assert_eq!(variation(&v, "cpus")["causes"], serde_json::json!([plain]));
    let uname = variation(&v, "uname");
    assert_eq!(
        files(uname),
        serde_json::json!([{"how": "changed", "path": "m"}, {"how": "changed", "path": "r"}]),
        "{uname}"
    );
    assert_eq!(
        uname["causes"],
        serde_json::json!(["architecture information (uname)", plain])
    );
}

fn check_refuses_bad_input_and_fails_with_its_build(who: As) {
    let t = who.scratch();
    let specs = project(t.path(), &[("ok", "true"), ("broken", "exit 3")]);
    who.give(t.path());
    let home = t.path().join("home");
    let ok = specs[0].to_str().unwrap();
    let o = hermit(who, &home, &["check", ok, "--vary", "colour"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown variation \"colour\""));
    let o = hermit(
        who,
        &home,
        &["check", ok, "--vary", "aslr", "--no-vary", "aslr"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let missing = t.path().join("nope.toml");
    let o = hermit(who, &home, &["check", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    // A build that fails without any variation is no check result.
    let o = hermit(who, &home, &["check", specs[1].to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let v = json(&o);
    assert!(
        v["error"].as_str().unwrap().contains("control build"),
        "{v}"
    );
}

/// Seconds since the epoch, now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// How far `hermit check`'s clock variation moves the clock: 3653 days.
const CLOCK_OFFSET: i64 = 3653 * 86_400;

/// A statically linked C program (glibc, `gcc -static`) that reads the wall
/// clock every way (clock_gettime of CLOCK_REALTIME, _COARSE and _TAI,
/// gettimeofday, time) into `$out/clocks`, says into `$out/vdso` whether it
/// was told of a vDSO, and from a second thread forks and executes the
/// static busybox's `date +%s` (into `$out/thread`).
const CLOCKS_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *from_a_thread(void *path) {
    pid_t p = fork();
    if (p == 0) {
        FILE *f = freopen((const char *)path, "w", stdout);
        if (!f) _exit(126);
        execl("/bin/busybox", "date", "+%s", (char *)0);
        _exit(127);
    }
    int st = 0;
    waitpid(p, &st, 0);
    return (void *)(long)st;
}

int main(int argc, char **argv) {
    (void)argc;
    struct timespec r, c, t, m;
    struct timeval tv;
    clock_gettime(CLOCK_REALTIME, &r);
    clock_gettime(CLOCK_REALTIME_COARSE, &c);
    clock_gettime(CLOCK_TAI, &t);
    gettimeofday(&tv, 0);
    time_t now = time(0);
    clock_gettime(CLOCK_MONOTONIC, &m);
    char path[4096];
    snprintf(path, sizeof path, "%s/clocks", argv[1]);
    FILE *o = fopen(path, "w");
    fprintf(o, "%ld\n%ld\n%ld\n%ld\n%ld\nmonotonic %ld\n", (long)r.tv_sec, (long)c.tv_sec,
            (long)t.tv_sec, (long)tv.tv_sec, (long)now, (long)m.tv_sec);
    fclose(o);
    snprintf(path, sizeof path, "%s/vdso", argv[1]);
    o = fopen(path, "w");
    fprintf(o, "%d\n", getauxval(AT_SYSINFO_EHDR) != 0);
    fclose(o);
    static char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s/thread", argv[1]);
    pthread_t th;
    void *st;
    pthread_create(&th, 0, from_a_thread, tpath);
    pthread_join(th, &st);
    return (long)st == 0 ? 0 : 1;
}
"#;

/// The clock variation moves the wall clock ten years ahead for every
/// program: the static busybox's `date`, a dynamically linked `date`, a
/// static C program reading it five ways and a program it executes from a
/// second thread — rootless, and with no libfaketime in the image. The
/// monotonic clock stays real.
fn check_moves_the_clock_for_every_program(who: As) {
    let t = who.scratch();
    let clocks = t.path().join("clocks");
    let src = t.path().join("clocks.c");
    fs::write(&src, CLOCKS_C).unwrap();
    let o = run(std::process::Command::new("gcc")
        .args(["-static", "-O1", "-pthread", "-o"])
        .arg(&clocks)
        .arg(&src));
    assert!(o.status.success(), "gcc -static: {}", both(&o));
    let lib = "usr/lib/x86_64-linux-gnu";
    let manifest = crate::image::busybox_layout_with(
        &t.path().join("image"),
        &[
            ("/usr/bin/date", "usr/bin/date"),
            ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
            (
                "/lib/x86_64-linux-gnu/libc.so.6",
                &format!("{lib}/libc.so.6"),
            ),
            (
                "/lib/x86_64-linux-gnu/libm.so.6",
                &format!("{lib}/libm.so.6"),
            ),
            (clocks.to_str().unwrap(), "usr/bin/clocks"),
        ],
    );
    let spec = spec_over_image(
        t.path(),
        "year",
        &manifest,
        "/usr/bin/date -u +%Y > $out/year\nbusybox date +%s > $out/stamp\n/usr/bin/clocks $out",
    );
    who.give(t.path());
    let before = now();
    let v = check_json(who, &t.path().join("home"), &spec, "clock", 1);
    let after = now();
    let clock = variation(&v, "clock");
    assert_eq!(clock["varied"], true, "{clock}");
    assert!(
        clock["what"]
            .as_str()
            .unwrap()
            .contains("statically linked"),
        "{clock}"
    );
    assert_changed(
        clock,
        &["clocks", "stamp", "thread", "vdso", "year"],
        &["build timestamp (the clock)"],
    );
    let stamp = clock["differing_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "stamp")
        .unwrap();
    assert!(
        stamp["evidence"].as_str().unwrap().contains("moved clock"),
        "{clock}"
    );
    let read = |p: &serde_json::Value, f: &str| -> String {
        let out = PathBuf::from(p.as_str().unwrap());
        fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    let secs = |s: String| -> Vec<i64> {
        s.lines()
            .map(|l| l.trim_start_matches("monotonic ").parse().unwrap())
            .collect()
    };
    let (control, variant) = (&v["control_output"], &clock["output"]);
    // Every reading is about ten years ahead in the variant, and the real
    // time in the control.
    for (out, off) in [(control, 0), (variant, CLOCK_OFFSET)] {
        let mut times = secs(read(out, "stamp"));
        times.extend(secs(read(out, "thread")));
        let c = secs(read(out, "clocks"));
        // CLOCK_TAI runs ahead of UTC by the leap seconds the host knows
        // (0 unless an NTP daemon set them).
        assert!((0..=60).contains(&(c[2] - c[0])), "TAI: {c:?}");
        times.extend([c[0], c[1], c[3], c[4]]);
        for t in &times {
            assert!(
                (before + off - 1..=after + off + 1).contains(t),
                "{t} is not {before}..{after} + {off}: {times:?}"
            );
        }
        let year: i64 = read(out, "year").trim().parse().unwrap();
        let want = 1970 + (before + off) / 31_556_952;
        assert!((want - 1..=want + 1).contains(&year), "{year}, {want}");
    }
    // The vDSO was hidden from the static program in the variant only.
    assert_eq!(read(control, "vdso"), "1\n");
    assert_eq!(read(variant, "vdso"), "0\n");
    // The monotonic clock is not moved.
    let mono = |out| secs(read(out, "clocks"))[5];
    assert!(
        (mono(variant) - mono(control)).abs() < 600,
        "{} {}",
        mono(control),
        mono(variant)
    );
}

/// Under the clock variation (every program traced by the sandbox's init)
/// signals, job control and exit statuses are what they are untraced, and
/// a build that fails only under the moved clock reports its own status.
fn check_keeps_signals_and_statuses_under_the_moved_clock(who: As) {
    let t = who.scratch();
    let specs = project(
        t.path(),
        &[
            (
                "signals",
                "sleep 100 & p=$!; kill -TERM $p; r=0; wait $p || r=$?; echo \"term $r\" > $out/signals\n\
                 sh -c 'kill -STOP $$; echo resumed > jc' & p=$!; sleep 0.5\n\
                 [ -e jc ] && echo early >> $out/signals\n\
                 kill -CONT $p; r=0; wait $p || r=$?; echo \"cont $r\" >> $out/signals; cat jc >> $out/signals\n\
                 r=0; sh -c 'trap \"echo usr1; exit 5\" USR1; kill -USR1 $$; sleep 5' >> $out/signals || r=$?; echo \"trap $r\" >> $out/signals\n\
                 r=0; sh -c 'kill -9 $$' || r=$?; echo \"kill $r\" >> $out/signals\n\
                 r=0; sh -c 'exit 3' || r=$?; echo \"exit $r\" >> $out/signals\n\
                 date +%s > $out/stamp",
            ),
            (
                "late",
                &format!(
                    "if [ $(date +%s) -gt {} ]; then echo moved >&2; exit 3; fi\necho ok > $out/ok",
                    now() + 5 * 365 * 86_400
                ),
            ),
        ],
    );
    who.give(t.path());
    let home = t.path().join("home");
    let v = check_json(who, &home, &specs[0], "clock", 1);
    let x = variation(&v, "clock");
    // Only the time stamp differs: the signals file is the same.
    assert_eq!(
        files(x),
        serde_json::json!([{"how": "changed", "path": "stamp"}]),
        "{x}"
    );
    let out = PathBuf::from(x["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("signals")).unwrap(),
        "term 143\ncont 0\nresumed\nusr1\ntrap 5\nkill 137\nexit 3\n"
    );
    // Fails only with the moved clock: the variant's failure is its own
    // status, as untraced.
    let v = check_json(who, &home, &specs[1], "clock", 1);
    let x = variation(&v, "clock");
    assert_eq!(x["identical"], serde_json::Value::Null, "{x}");
    assert!(
        x["error"]
            .as_str()
            .unwrap()
            .contains("the script exited with status 3"),
        "{x}"
    );
}

/// glibc's `sort` in an image that has a compiled fr_FR.ISO-8859-1 locale:
/// the locale variation changes the collation, and the cause is named from
/// the bytes (the same lines in another order) as the locale's.
fn check_names_the_locale_sort_order(who: As) {
    let t = who.scratch();
    // The locale, compiled from the host's sources (Debian package locales).
    let loc = t.path().join("fr_FR.ISO-8859-1");
    let o = run(std::process::Command::new("localedef")
        .args(["-i", "fr_FR", "-f", "ISO-8859-1"])
        .arg(&loc));
    assert!(
        loc.join("LC_COLLATE").is_file(),
        "localedef (Debian package locales) made no locale: {}",
        both(&o)
    );
    let lib = "usr/lib/x86_64-linux-gnu";
    let mut extra: Vec<(String, String)> = vec![
        ("/usr/bin/sort".into(), "usr/bin/sort".into()),
        (
            "/lib64/ld-linux-x86-64.so.2".into(),
            "lib64/ld-linux-x86-64.so.2".into(),
        ),
        (
            "/lib/x86_64-linux-gnu/libc.so.6".into(),
            format!("{lib}/libc.so.6"),
        ),
    ];
    let mut stack = vec![loc.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(t.path()).unwrap().display().to_string();
                extra.push((p.display().to_string(), format!("usr/lib/locale/{rel}")));
            }
        }
    }
    extra.sort();
    let pairs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let manifest = crate::image::busybox_layout_with(&t.path().join("image"), &pairs);
    let spec = spec_over_image(
        t.path(),
        "sorted",
        &manifest,
        "printf 'b\\nA\\na\\nB\\n' | /usr/bin/sort > $out/sorted",
    );
    who.give(t.path());
    let v = check_json(who, &t.path().join("home"), &spec, "locale,umask", 1);
    let x = variation(&v, "locale");
    assert_changed(x, &["sorted"], &["locale / file encoding"]);
    assert!(
        x["differing_files"][0]["evidence"]
            .as_str()
            .unwrap()
            .contains("another order"),
        "{x}"
    );
    let out = PathBuf::from(x["output"].as_str().unwrap());
    let control = PathBuf::from(v["control_output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(control.join("sorted")).unwrap(),
        "A\nB\na\nb\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("sorted")).unwrap(),
        "a\nA\nb\nB\n"
    );
    assert_eq!(variation(&v, "umask")["identical"], true, "{v}");
}

/// A real upstream project, GNU hello from its release tarball (served on
/// loopback) with the Debian toolchain, is reproducible under every default
/// variation, and `hermit check` leaves the cache as it was.
fn check_passes_gnu_hello_from_its_tarball(who: As) {
    use crate::http_server::{Behaviour, Server};
    crate::fixtures::ensure_subids();
    let tarball = crate::upstream::orig_tarball("hello");
    let bytes = fs::read(&tarball).unwrap();
    let sha = {
        let o = run(std::process::Command::new("sha256sum").arg(&tarball));
        String::from_utf8_lossy(&o.stdout)[..64].to_string()
    };
    let server = Server::start();
    server.route("/hello-2.10.tar.gz", Behaviour::File(bytes));
    let t = who.scratch();
    let d = t.path().join("hello");
    fs::create_dir_all(&d).unwrap();
    let spec = d.join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"[package]
name = "hello"
version = "2.10"

[toolchain]
debian = {{ suite = "bookworm", include = ["gcc", "libc6-dev", "make"] }}

[[source]]
name = "hello"
urls = ["{}"]
sha256 = "{sha}"
unpack = true

[build]
workdir = "hello/hello-2.10"
script = """
./configure --prefix=/usr
make
make install DESTDIR="$out"
"""
"#,
            server.url("/hello-2.10.tar.gz")
        ),
    )
    .unwrap();
    who.give(t.path());
    let home = t.path().join("home");
    let o = hermit(
        who,
        &home,
        &["check", spec.to_str().unwrap(), "--json", "-j", "2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let v = json(&o);
    assert_eq!(v["reproducible"], true, "{v}");
    for n in DEFAULTS {
        let x = variation(&v, n);
        assert_eq!(x["error"], serde_json::Value::Null, "{n}: {x}");
        assert_eq!(files(x), serde_json::json!([]), "{n}: {x}");
        // The clock moves too (no libfaketime needed).
        if n != "dirorder" {
            assert_eq!(x["varied"], true, "{n}: {x}");
        }
    }
    let o = hermit(
        who,
        &home,
        &["build", spec.to_str().unwrap(), "--json", "-j", "2"],
    );
    assert!(o.status.success(), "{}", both(&o));
    let b = json(&o);
    assert_eq!(b["cached"], false, "hermit check installed an output");
    assert_eq!(b["output_digest"], v["control_digest"]);
}

/// `kernel` and `cpus` show their values in /proc too: the release and
/// version in `/proc/sys/kernel/osrelease` and `/proc/version`; one CPU in
/// `/proc/cpuinfo` and `/proc/stat`, where glibc counts CPUs when there is
/// no sysfs (`getconf`, coreutils' `nproc --all`, dynamically linked from
/// the host into the image).
fn check_shows_the_varied_kernel_and_cpus_in_proc(who: As) {
    let t = who.scratch();
    let lib = "usr/lib/x86_64-linux-gnu";
    let manifest = crate::image::busybox_layout_with(
        &t.path().join("image"),
        &[
            ("/usr/bin/getconf", "usr/bin/getconf"),
            ("/usr/bin/nproc", "usr/bin/nproc"),
            ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
            (
                "/lib/x86_64-linux-gnu/libc.so.6",
                &format!("{lib}/libc.so.6"),
            ),
        ],
    );
    let script = "cat /proc/sys/kernel/osrelease > $out/osrelease\n\
                  cat /proc/version > $out/version\n\
                  grep -c ^processor /proc/cpuinfo > $out/cpuinfo\n\
                  grep -c '^cpu[0-9]' /proc/stat > $out/stat\n\
                  /usr/bin/getconf _NPROCESSORS_ONLN > $out/onln\n\
                  /usr/bin/nproc --all > $out/all";
    let spec = spec_over_image(t.path(), "proc", &manifest, script);
    who.give(t.path());
    let v = check_json(who, &t.path().join("home"), &spec, "kernel,cpus", 1);
    let control = PathBuf::from(v["control_output"].as_str().unwrap());
    let read = |dir: &Path, f: &str| fs::read_to_string(dir.join(f)).unwrap();
    let host_release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(read(&control, "osrelease"), host_release);
    let k = variation(&v, "kernel");
    assert_changed(
        k,
        &["osrelease", "version"],
        &["kernel version (uname -r/-v)"],
    );
    let out = PathBuf::from(k["output"].as_str().unwrap());
    assert_eq!(read(&out, "osrelease"), "4.4.0-hermit-check\n");
    let version = read(&out, "version");
    assert!(
        version.starts_with("Linux version 4.4.0-hermit-check ")
            && version.ends_with(" #1 SMP hermit-check-variant\n")
            && !version.contains(host_release.trim()),
        "{version}"
    );
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    let c = variation(&v, "cpus");
    if host_cpus < 2 {
        assert_eq!(c["varied"], false, "{c}");
        return;
    }
    for f in ["cpuinfo", "stat", "onln", "all"] {
        assert_eq!(read(&control, f), format!("{host_cpus}\n"), "{f}");
    }
    assert_eq!(
        files(c),
        serde_json::json!([
            {"how": "changed", "path": "all"},
            {"how": "changed", "path": "cpuinfo"},
            {"how": "changed", "path": "onln"},
            {"how": "changed", "path": "stat"},
        ]),
        "{c}"
    );
    assert_eq!(c["causes"], serde_json::json!(["CPU count"]), "{c}");
    let out = PathBuf::from(c["output"].as_str().unwrap());
    for f in ["cpuinfo", "stat", "onln", "all"] {
        assert_eq!(read(&out, f), "1\n", "{f}");
    }
}

/// `archive` varies the sources' owner for an ordinary user too, through
/// its subordinate ids (the build sees `nobody`, as it does when root
/// varies it), and the check leaves nothing behind that the caller cannot
/// remove: every file under HERMIT_HOME is the caller's afterwards.
fn check_varies_the_sources_owner_and_leaves_no_scratch(who: As) {
    crate::fixtures::ensure_subids();
    let t = who.scratch();
    let specs = project(
        t.path(),
        &[(
            "owner",
            "stat -c '%u %U' /sources/src/f > $out/f\nstat -c '%u %U' /sources/src > $out/d",
        )],
    );
    with_source(&specs[0]);
    who.give(t.path());
    let home = t.path().join("home");
    let spec = specs[0].to_str().unwrap();
    let o = hermit(who, &home, &["check", spec, "--vary", "archive", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let v = json(&o);
    let x = variation(&v, "archive");
    let what = x["what"].as_str().unwrap();
    assert!(
        what.contains("owners → uid/gid 12345") && !what.contains("not varied"),
        "{x}"
    );
    if who == As::User {
        assert!(what.contains("subordinate uid/gid 1300000/1300000"), "{x}");
    }
    assert_changed(
        x,
        &["d", "f"],
        &["archive metadata (mtimes, owners, modes of the sources)"],
    );
    let out = PathBuf::from(x["output"].as_str().unwrap());
    let control = PathBuf::from(v["control_output"].as_str().unwrap());
    assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "65534 nobody\n");
    assert_eq!(fs::read_to_string(out.join("d")).unwrap(), "65534 nobody\n");
    assert_ne!(
        fs::read_to_string(control.join("f")).unwrap(),
        "65534 nobody\n"
    );
    // The varied copy is gone, and nothing under HERMIT_HOME belongs to
    // anyone but the caller (a subordinate id's file would be one the
    // caller cannot remove without a namespace).
    fn walk(p: &Path, uid: u32, seen: &mut usize) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(p).unwrap();
        assert_eq!(m.uid(), uid, "{} is not the caller's", p.display());
        *seen += 1;
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), uid, seen);
            }
        }
    }
    let mut seen = 0;
    walk(&home, who.uid(), &mut seen);
    assert!(seen > 10, "{seen}");
    // …and the caller removes it all (the store's entries are read-only,
    // as always).
    let o = run(who
        .program(Path::new("/bin/sh"))
        .args(["-c", "chmod -R u+w \"$1\" && rm -rf \"$1\"", "sh"])
        .arg(&home));
    assert!(o.status.success(), "{}", both(&o));
    assert!(!home.exists());
}

/// `archive` under a `[build] workdir` view: `/build` shows the varied copy
/// too, and the build can still change a file of it (copy-up).
fn check_varies_the_sources_under_a_workdir_view(who: As) {
    let t = who.scratch();
    let specs = project(
        t.path(),
        &[(
            "view",
            "stat -c '%Y %a' f > $out/meta\nchmod u+w f\necho more >> f\ncat f > $out/f",
        )],
    );
    with_source(&specs[0]);
    let text = fs::read_to_string(&specs[0]).unwrap();
    fs::write(
        &specs[0],
        text.replace("[build]\n", "[build]\nworkdir = \"src\"\n"),
    )
    .unwrap();
    who.give(t.path());
    let home = t.path().join("home");
    let spec = specs[0].to_str().unwrap();
    let o = hermit(who, &home, &["check", spec, "--vary", "archive", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let v = json(&o);
    let x = variation(&v, "archive");
    assert_changed(
        x,
        &["meta"],
        &["archive metadata (mtimes, owners, modes of the sources)"],
    );
    let out = PathBuf::from(x["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("meta")).unwrap(),
        "2000000000 664\n"
    );
    assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "data\nmore\n");
}

both_users!(
    check_varies_the_sources_owner_and_leaves_no_scratch,
    check_shows_the_varied_kernel_and_cpus_in_proc,
    check_varies_the_sources_under_a_workdir_view,
    check_passes_gnu_hello_from_its_tarball,
    check_names_the_locale_sort_order,
    check_tells_plain_nondeterminism_from_a_variation,
    check_moves_the_clock_for_every_program,
    check_keeps_signals_and_statuses_under_the_moved_clock,
    check_passes_a_reproducible_build_under_every_default_variation,
    check_catches_each_unreproducible_build_by_its_variation,
    check_refuses_bad_input_and_fails_with_its_build,
);
