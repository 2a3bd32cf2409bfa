//! Bounded reads (issue 8, section 4): registry answers and image layouts
//! that lie about their size, or never end, give one clear error quickly,
//! hold hermit's memory small and leave nothing in the store. Both as root
//! and as the unprivileged test user.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::fixtures::{both_users, output_within, As};
use crate::image::busybox_layout;

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Every file under `dir` with its size.
pub(crate) fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push((e.path(), m.len()));
        }
    }
    out
}

/// The store of `who`, emptied, so a test sees only what it adds.
pub(crate) fn fresh_home(who: As, tag: &str) -> (Command, std::path::PathBuf) {
    let mut cmd = who.hermit();
    let home = crate::fixtures::fixture()
        .base
        .join(format!("bounds-{tag}-{}", who.uid()));
    let _ = fs::remove_dir_all(&home);
    fs::create_dir_all(&home).unwrap();
    crate::fixtures::chown(&home, who.uid(), who.gid());
    cmd.env("HERMIT_HOME", &home);
    (cmd, home)
}

/// The layer blob of a busybox layout (its largest blob).
fn layer_of(layout: &Path) -> std::path::PathBuf {
    fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
}

/// Imports `layout` as `who` into a fresh store, expecting one clear error
/// containing `want` within a few seconds and no trace of the layer.
fn import_fails(who: As, tag: &str, layout: &Path, layer_hex: &str, want: &[&str]) {
    let (mut cmd, home) = fresh_home(who, tag);
    cmd.args(["image", "import"]).arg(layout);
    let start = Instant::now();
    let o = output_within(&mut cmd, Duration::from_secs(15));
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for w in want {
        assert!(err.contains(w), "missing {w:?} in: {err}");
    }
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(!home.join("v1/blobs/sha256").join(layer_hex).exists());
    let big: Vec<_> = files_under(&home)
        .into_iter()
        .filter(|(_, n)| *n > 1 << 20)
        .collect();
    assert!(big.is_empty(), "large files left in the store: {big:?}");
}

fn layout_blob_symlink_to_dev_zero(who: As) {
    let scratch = who.scratch();
    let layout = scratch.path().join("layout");
    busybox_layout(&layout);
    let layer = layer_of(&layout);
    fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &layer).unwrap();
    let hex = layer.file_name().unwrap().to_str().unwrap().to_string();
    import_fails(
        who,
        "zero",
        &layout,
        &hex,
        &[&layer.display().to_string(), "is a symbolic link"],
    );
}

fn layout_blob_larger_than_its_descriptor(who: As) {
    let scratch = who.scratch();
    let layout = scratch.path().join("layout");
    busybox_layout(&layout);
    let layer = layer_of(&layout);
    let len = fs::metadata(&layer).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(&layer).unwrap();
    f.write_all(&vec![0u8; 4 << 20]).unwrap();
    drop(f);
    let hex = layer.file_name().unwrap().to_str().unwrap().to_string();
    import_fails(
        who,
        "large",
        &layout,
        &hex,
        &[
            &layer.display().to_string(),
            &format!("its descriptor says {len} bytes"),
            "nothing was stored",
        ],
    );
}

fn layout_blob_that_is_a_fifo(who: As) {
    let scratch = who.scratch();
    let layout = scratch.path().join("layout");
    busybox_layout(&layout);
    let layer = layer_of(&layout);
    fs::remove_file(&layer).unwrap();
    nix::unistd::mkfifo(&layer, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let hex = layer.file_name().unwrap().to_str().unwrap().to_string();
    import_fails(
        who,
        "fifo",
        &layout,
        &hex,
        &[&layer.display().to_string(), "is a fifo"],
    );
}

/// What the lying registry does for the one request it lies to.
#[derive(Clone, Copy)]
enum Lie {
    /// The manifest's Content-Length says 1.5 GB.
    AnnouncedManifest,
    /// The manifest comes chunked and goes on for 1.5 GB.
    EndlessManifest,
    /// The config blob (the manifest says 64 bytes) comes chunked and goes
    /// on for 1.5 GB.
    EndlessBlob,
}

const HUGE: u64 = 1_500_000_000;

/// A registry on loopback that answers the manifest (a real one, whose
/// digest is returned) and lies as told. Each answer body is streamed from
/// a small buffer: nothing of 1.5 GB is ever held by the test.
fn lying_registry(lie: Lie) -> (u16, String) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let digest = sha(&manifest);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let manifest = manifest.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let json = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";
                let endless = |stream: &mut std::net::TcpStream, head: &str| {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\n{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    );
                    let chunk = vec![b' '; 64 << 10];
                    let mut sent = 0u64;
                    while sent < HUGE {
                        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
                            || stream.write_all(&chunk).is_err()
                            || stream.write_all(b"\r\n").is_err()
                        {
                            return;
                        }
                        sent += chunk.len() as u64;
                    }
                    let _ = stream.write_all(b"0\r\n\r\n");
                };
                if path.contains("/manifests/") {
                    match lie {
                        Lie::AnnouncedManifest => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\n{json}Content-Length: {HUGE}\r\nConnection: close\r\n\r\n"
                            );
                            let chunk = vec![b' '; 64 << 10];
                            for _ in 0..(HUGE / chunk.len() as u64) {
                                if stream.write_all(&chunk).is_err() {
                                    return;
                                }
                            }
                        }
                        Lie::EndlessManifest => endless(&mut stream, json),
                        Lie::EndlessBlob => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\n{json}Content-Length: {}\r\nConnection: close\r\n\r\n",
                                manifest.len()
                            );
                            let _ = stream.write_all(&manifest);
                        }
                    }
                } else if path.contains("/blobs/") {
                    endless(&mut stream, "");
                } else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, digest)
}

/// Runs `cmd` to its end (within `limit`) and returns its stderr, exit code
/// and peak resident memory in KiB: the process's VmHWM (a high-water mark,
/// so the last reading before it exits is its peak so far), read every 2 ms.
/// `As::User` runs hermit through `setpriv`, which execs it: same process.
fn run_measured(cmd: &mut Command, limit: Duration) -> (String, Option<i32>, u64) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status_path = format!("/proc/{}/status", child.id());
    let start = Instant::now();
    let mut peak = 0u64;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_path) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            if let Some(h) = hwm {
                peak = peak.max(h);
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("hermit took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (reader.join().unwrap(), status.code(), peak)
}

fn pull_refused(who: As, lie: Lie, tag: &str, want: &[&str]) {
    let (port, digest) = lying_registry(lie);
    let (mut cmd, home) = fresh_home(who, tag);
    cmd.args([
        "image",
        "pull",
        &format!("127.0.0.1:{port}/lie/img@{digest}"),
    ]);
    let start = Instant::now();
    let (err, code, rss_kib) = run_measured(&mut cmd, Duration::from_secs(60));
    let took = start.elapsed();
    assert_eq!(code, Some(2), "{err}");
    for w in want {
        assert!(err.contains(w), "missing {w:?} in: {err}");
    }
    eprintln!("{tag}: hermit peak RSS {rss_kib} KiB, {took:?}");
    assert!(
        rss_kib < 64 << 10,
        "hermit's peak RSS was {rss_kib} KiB for a 1.5 GB answer"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let big: Vec<_> = files_under(&home)
        .into_iter()
        .filter(|(_, n)| *n > 1 << 20)
        .collect();
    assert!(big.is_empty(), "large files left in the store: {big:?}");
}

fn registry_announcing_a_huge_manifest(who: As) {
    pull_refused(
        who,
        Lie::AnnouncedManifest,
        "announced",
        &["announces 1500000000 bytes", "16777216"],
    );
}

fn registry_streaming_an_endless_manifest(who: As) {
    pull_refused(
        who,
        Lie::EndlessManifest,
        "endless",
        &["is larger than 16777216 bytes; refusing to read it"],
    );
}

fn registry_streaming_a_blob_past_its_size(who: As) {
    pull_refused(
        who,
        Lie::EndlessBlob,
        "blob",
        &["the manifest says 78 bytes; the registry sent more, cut off"],
    );
}

/// `file://` sources and mirrors are read only when they are regular files,
/// and never past their size: a fifo (which would block) and a symlink to
/// /dev/zero (which never ends) are refused at once.
fn file_source_that_never_ends(who: As) {
    let scratch = who.scratch();
    let fifo = scratch.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let zero = scratch.path().join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for (tag, path) in [("fifo", &fifo), ("zero", &zero)] {
        let spec = scratch.path().join(format!("{tag}.toml"));
        fs::write(
            &spec,
            format!(
                "[package]\nname = \"t\"\nversion = \"1\"\n\n[toolchain]\nimage = \"registry.example.org/x@sha256:{}\"\n\n[build]\nscript = \"true\"\n\n[[source]]\nname = \"s\"\nurls = [\"file://{}\"]\nsha256 = \"{}\"\n",
                "1".repeat(64),
                path.display(),
                "2".repeat(64)
            ),
        )
        .unwrap();
        let (mut cmd, home) = fresh_home(who, &format!("file-{tag}"));
        cmd.arg("fetch").arg(&spec);
        let start = Instant::now();
        let o = output_within(&mut cmd, Duration::from_secs(15));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{tag}: {err}");
        assert!(err.contains("not a regular file"), "{tag}: {err}");
        assert!(start.elapsed() < Duration::from_secs(10), "{tag}: {err}");
        let big: Vec<_> = files_under(&home)
            .into_iter()
            .filter(|(_, n)| *n > 1 << 20)
            .collect();
        assert!(big.is_empty(), "large files left in the store: {big:?}");
    }
}

/// A spec, lock or record that is a fifo or a link to /dev/zero is refused
/// at once, instead of hanging hermit or filling its memory. (The fifos
/// come first: without the bound they hang and the guard ends the test
/// before /dev/zero is read.)
fn spec_and_record_that_never_end(who: As) {
    let scratch = who.scratch();
    let fifo = scratch.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let zero = scratch.path().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let cases: [(&str, &Path); 4] = [
        ("build", &fifo),
        ("provenance", &fifo),
        ("rebuild", &zero),
        ("provenance", &zero),
    ];
    for (command, path) in cases {
        let (mut cmd, _home) = fresh_home(who, &format!("text-{command}"));
        cmd.arg(command).arg(path);
        let start = Instant::now();
        let o = output_within(&mut cmd, Duration::from_secs(15));
        let err = String::from_utf8_lossy(&o.stderr);
        let what = format!("hermit {command} {}", path.display());
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("not a regular file"), "{what}: {err}");
        assert!(err.contains(&path.display().to_string()), "{what}: {err}");
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {err}");
    }
}

both_users!(
    spec_and_record_that_never_end,
    file_source_that_never_ends,
    layout_blob_symlink_to_dev_zero,
    layout_blob_larger_than_its_descriptor,
    layout_blob_that_is_a_fifo,
    registry_announcing_a_huge_manifest,
    registry_streaming_an_endless_manifest,
    registry_streaming_a_blob_past_its_size,
);
