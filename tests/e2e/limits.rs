//! Build limits (issue 8, section 4): memory, disk (/build + /out) and log
//! size, named by the profile (v2 on), lowered by a spec's `[build]`, stated in the
//! record, and reported plainly when a build hits one. Each case runs as
//! root and as the unprivileged test user, finishes quickly and leaves no
//! large file behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::bounds::{files_under, fresh_home};
use crate::fixtures::{both_users, output_within, As};
use crate::image::busybox_layout;

/// A project in a scratch directory of `who`: the busybox layout and a spec
/// with `script` and extra `[build]` lines.
fn project(dir: &Path, script: &str, build: &str) -> PathBuf {
    let manifest = busybox_layout(&dir.join("image"));
    let spec = dir.join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"[package]
name = "limits"
version = "1"

[toolchain]
oci = "image"
digest = "{manifest}"

[build]
timeout = 120
{build}
script = """
{script}
"""
"#
        ),
    )
    .unwrap();
    spec
}

/// Builds `spec` as `who` in a fresh store; returns the output, the time it
/// took and the store.
fn build(who: As, tag: &str, spec: &Path, extra: &[&str]) -> (Output, Duration, PathBuf) {
    let (mut cmd, home) = fresh_home(who, tag);
    cmd.arg("build").arg(spec).args(extra);
    let start = Instant::now();
    let o = output_within(&mut cmd, Duration::from_secs(120));
    (o, start.elapsed(), home)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the store holds no file over 4 MiB (the busybox image is
/// about 2 MiB).
fn no_big_files(home: &Path) {
    let big: Vec<_> = files_under(home)
        .into_iter()
        .filter(|(_, n)| *n > 4 << 20)
        .collect();
    assert!(big.is_empty(), "large files left behind: {big:?}");
}

fn memory_limit_stops_a_build_that_touches_more(who: As) {
    let scratch = who.scratch();
    // Doubles a string up to 256 MiB (touching every byte), under 64 MiB.
    let spec = project(
        scratch.path(),
        "busybox awk 'BEGIN { s = \"x\"; while (length(s) < 256 * 1024 * 1024) s = s s; print length(s) }'",
        "memory_mib = 64",
    );
    let (o, took, home) = build(who, "mem", &spec, &[]);
    let err = stderr(&o);
    eprintln!("{who:?}, {took:?}:\n{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the build exceeded the memory limit of 64 MiB ([build] memory_mib in the spec; profile {} allows 8192 MiB)",
            hermit_profiles::DEFAULT
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    no_big_files(&home);
}

fn disk_limit_stops_a_build_that_fills_build(who: As) {
    let scratch = who.scratch();
    // Many files, each under the limit: the watch sees the sum.
    let spec = project(
        scratch.path(),
        "i=0\nwhile [ $i -lt 64 ]; do busybox dd if=/dev/zero of=f$i bs=1M count=1 2>/dev/null; i=$((i+1)); done\nsleep 20",
        "disk_mib = 8",
    );
    let (o, took, home) = build(who, "disk", &spec, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the build exceeded the disk limit of 8 MiB ([build] disk_mib in the spec; profile {} allows 20480 MiB)",
            hermit_profiles::DEFAULT
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    no_big_files(&home);

    // One file past the limit: RLIMIT_FSIZE stops the write itself.
    let scratch = who.scratch();
    let spec = project(
        scratch.path(),
        "busybox dd if=/dev/zero of=\"$out/big\" bs=1M count=64",
        "disk_mib = 8",
    );
    let (o, took, home) = build(who, "disk1", &spec, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the build exceeded the disk limit of 8 MiB"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    no_big_files(&home);
}

fn log_limit_stops_a_build_and_keeps_one_copy(who: As) {
    let scratch = who.scratch();
    let spec = project(
        scratch.path(),
        "busybox yes hermit-log-line-0123456789abcdef | busybox head -c 67108864",
        "log_mib = 1",
    );
    let (o, took, home) = build(who, "log", &spec, &["--keep-failed"]);
    let err = stderr(&o);
    let tail = &err[err.len().saturating_sub(2000)..];
    assert_eq!(o.status.code(), Some(1), "{tail}");
    assert!(
        tail.contains(&format!(
            "the build printed more than the log limit of 1 MiB ([build] log_mib in the spec; profile {} allows 64 MiB)",
            hermit_profiles::DEFAULT
        )),
        "{tail}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // The terminal got no more than the log.
    assert!(err.len() < 2 << 20, "{} bytes echoed", err.len());
    let log = tail
        .lines()
        .find_map(|l| l.trim().strip_prefix("log: "))
        .unwrap();
    let text = fs::read_to_string(log).unwrap();
    assert!(text.len() <= (1 << 20) + 512, "log of {} bytes", text.len());
    assert!(
        text.ends_with("the rest of the output was dropped and the build stopped\n"),
        "{}",
        &text[text.len() - 300..]
    );
    // --keep-failed keeps /build and /out, not a second copy of the log.
    let kept = tail
        .lines()
        .find_map(|l| l.trim().strip_prefix("build directory: "))
        .and_then(|l| l.split(" (/build)").next())
        .unwrap();
    let kept = Path::new(kept).parent().unwrap();
    assert!(kept.join("build").is_dir());
    assert!(!kept.join("build.log").exists());
    let logs: Vec<_> = files_under(&home)
        .into_iter()
        .filter(|(p, _)| {
            let mut head = [0u8; 15];
            fs::File::open(p)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok_and(|()| &head == b"hermit-log-line")
        })
        .collect();
    assert_eq!(logs.len(), 1, "one copy of the log: {logs:?}");
    no_big_files(&home);
}

fn record_states_the_limits(who: As) {
    let scratch = who.scratch();
    let spec = project(scratch.path(), "echo hi > \"$out/hi\"", "memory_mib = 512");
    let (o, _, _) = build(who, "record", &spec, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(
        record["profile"]["name"],
        hermit_profiles::DEFAULT,
        "{record}"
    );
    let limits = &record["environment"]["limits"];
    assert_eq!(limits["memory_mib"], 512, "{limits}");
    assert_eq!(limits["disk_mib"], 20480, "{limits}");
    assert_eq!(limits["log_mib"], 64, "{limits}");

    // A spec may not raise a limit above the profile's.
    let scratch = who.scratch();
    let spec = project(scratch.path(), "true", "memory_mib = 100000");
    let (o, _, _) = build(who, "raise", &spec, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "[build] memory_mib = 100000 is above profile {}'s limit of 8192 MiB",
            hermit_profiles::DEFAULT
        )),
        "{err}"
    );
}

/// Image blobs fetched from a mirror stop at their descriptor's size: a
/// layer that grew in the mirror is refused before it is read, by size.
fn mirrored_layer_larger_than_its_descriptor(who: As) {
    let scratch = who.scratch();
    let spec = project(scratch.path(), "echo hi > \"$out/hi\"", "");
    let (o, _, home) = build(who, "mirror", &spec, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let record = PathBuf::from(v["record"].as_str().unwrap());
    let record_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
    let mirror = scratch.path().join("mirror");
    let mut c = who.hermit();
    c.env("HERMIT_HOME", &home)
        .arg("mirror")
        .arg(&record)
        .arg("--to")
        .arg(&mirror);
    let o = output_within(&mut c, Duration::from_secs(60));
    assert!(o.status.success(), "{}", stderr(&o));
    let layer = record_json["image"]["layers"][0]["digest"]
        .as_str()
        .or_else(|| record_json["image"]["layers"][0].as_str())
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    // The layer grows to 4 GiB (sparse: no disk used): read whole, it
    // would take many seconds and as much space in the store's temp files.
    let blob = mirror.join("sha256").join(&layer);
    let bytes = fs::read(&blob).unwrap();
    fs::remove_file(&blob).unwrap();
    fs::write(&blob, &bytes).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.set_len(4 << 30).unwrap();
    drop(f);
    let (mut c, home2) = fresh_home(who, "mirror2");
    c.arg("rebuild")
        .arg(&record)
        .arg("--offline")
        .arg("--mirror")
        .arg(&mirror);
    let start = Instant::now();
    let o = output_within(&mut c, Duration::from_secs(120));
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is not in the store or any mirror"), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(!home2.join("v1/blobs/sha256").join(&layer).exists());
    no_big_files(&home2);
}

both_users!(
    mirrored_layer_larger_than_its_descriptor,
    memory_limit_stops_a_build_that_touches_more,
    disk_limit_stops_a_build_that_fills_build,
    log_limit_stops_a_build_and_keeps_one_copy,
    record_states_the_limits,
);
