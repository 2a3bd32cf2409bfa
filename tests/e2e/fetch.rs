//! `hermit fetch` and `hermit mirror` against a real HTTP server on loopback.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::http_server::{Behaviour, Server};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Src<'a> {
    name: &'a str,
    urls: Vec<String>,
    data: &'a [u8],
}

/// One source served from a single URL.
fn src<'a>(name: &'a str, url: String, data: &'a [u8]) -> Src<'a> {
    Src {
        name,
        urls: vec![url],
        data,
    }
}

/// Writes a spec with these sources into `dir/<file>` and returns its path.
fn write_spec(dir: &Path, file: &str, sources: &[Src]) -> PathBuf {
    let mut s = String::from(
        "[package]\nname = \"t\"\nversion = \"1\"\n\n[toolchain]\nimage = \"registry.example.org/library/debian@sha256:0000000000000000000000000000000000000000000000000000000000000001\"\n\n[build]\nscript = \"true\"\n",
    );
    for src in sources {
        let urls: Vec<String> = src.urls.iter().map(|u| format!("{u:?}")).collect();
        write!(
            s,
            "\n[[source]]\nname = \"{}\"\nurls = [{}]\nsha256 = \"{}\"\nsize = {}\n",
            src.name,
            urls.join(", "),
            sha(src.data),
            src.data.len()
        )
        .unwrap();
    }
    let p = dir.join(file);
    std::fs::write(&p, s).unwrap();
    p
}

/// A hermit command isolated from the user's proxy and config.
fn hermit_cmd(who: As, home: &Path) -> Command {
    let mut c = who.hermit_in(home);
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "HERMIT_MIRRORS",
        "HERMIT_READ_TIMEOUT",
        "HERMIT_CONNECT_TIMEOUT",
        "HERMIT_RETRIES",
    ] {
        c.env_remove(v);
    }
    c.env("XDG_CONFIG_HOME", home.join("no-config"));
    c
}

fn blobs_dir(home: &Path) -> PathBuf {
    home.join("v1/blobs/sha256")
}

/// Every blob in the store, after checking that each hashes to its name.
fn checked_blobs(home: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(rd) = std::fs::read_dir(blobs_dir(home)) else {
        return names;
    };
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(sha(&data), name, "blob {name} does not hash to its name");
        names.push(name);
    }
    names.sort();
    names
}

fn mirror_dir_with(dir: &Path, blobs: &[&[u8]]) {
    std::fs::create_dir_all(dir.join("sha256")).unwrap();
    for b in blobs {
        std::fs::write(dir.join("sha256").join(sha(b)), b).unwrap();
    }
}

fn fetch_plain_then_present(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(1, 10_000);
    srv.route("/a.bin", Behaviour::File(data.clone()));
    let spec = write_spec(t.path(), "spec.toml", &[src("a", srv.url("/a.bin"), &data)]);
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("fetched 1 ("),
        "{}",
        both(&o)
    );
    assert_eq!(checked_blobs(&home), vec![sha(&data)]);
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("fetched 0 (0 B), already present 1"),
        "{}",
        both(&o)
    );
    assert_eq!(srv.count("/a.bin"), 1);
}

fn fetch_wrong_hash_is_refused(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let good = b"the real thing".to_vec();
    let evil = b"something else".to_vec(); // same length, other bytes
    srv.route("/x", Behaviour::File(evil.clone()));
    let spec = write_spec(t.path(), "spec.toml", &[src("x", srv.url("/x"), &good)]);
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&srv.url("/x")), "{err}");
    assert!(
        err.contains(&format!("expected sha256:{}", sha(&good))),
        "{err}"
    );
    assert!(err.contains(&format!("got sha256:{}", sha(&evil))), "{err}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert!(checked_blobs(&home).is_empty());
    // A digest mismatch is not retried.
    assert_eq!(srv.count("/x"), 1);
}

fn fetch_404_is_not_retried_and_lists_locations(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    srv.route("/gone", Behaviour::Status(404));
    srv.route("/forbidden", Behaviour::Status(403));
    let data = b"lost".to_vec();
    let spec = write_spec(
        t.path(),
        "spec.toml",
        &[Src {
            name: "lost",
            urls: vec![srv.url("/gone"), srv.url("/forbidden")],
            data: &data,
        }],
    );
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("could not fetch source \"lost\""), "{err}");
    assert!(
        err.contains(&format!("{}: HTTP 404", srv.url("/gone"))),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: HTTP 403", srv.url("/forbidden"))),
        "{err}"
    );
    assert_eq!((srv.count("/gone"), srv.count("/forbidden")), (1, 1));
}

fn fetch_dead_upstream_found_in_mirror_folder(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    srv.route("/dead", Behaviour::Status(404));
    let data = bytes(2, 5000);
    let mirror = t.path().join("mirror");
    mirror_dir_with(&mirror, &[&data]);
    let spec = write_spec(t.path(), "spec.toml", &[src("d", srv.url("/dead"), &data)]);
    // Through --mirror.
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home)
        .arg("fetch")
        .arg(&spec)
        .arg("--mirror")
        .arg(&mirror));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home), vec![sha(&data)]);
    // Through the config file.
    let home2 = t.path().join("home2");
    let cfg = home2.join("no-config/hermit");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!("mirrors = [{:?}]\n", mirror.display().to_string()),
    )
    .unwrap();
    who.give(&home2);
    let o = run(hermit_cmd(who, &home2).arg("fetch").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home2), vec![sha(&data)]);
    // Through $HERMIT_MIRRORS.
    let home3 = t.path().join("home3");
    let o = run(hermit_cmd(who, &home3).arg("fetch").arg(&spec).env(
        "HERMIT_MIRRORS",
        format!("/nonexistent {}", mirror.display()),
    ));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home3), vec![sha(&data)]);
    // The mirror comes first: upstream was never asked.
    assert_eq!(srv.count("/dead"), 0);
}

fn fetch_from_http_mirror(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(3, 7000);
    let mirror = t.path().join("mirror");
    mirror_dir_with(&mirror, &[&data]);
    srv.serve_dir("/m/", &mirror);
    srv.route("/dead", Behaviour::Status(404));
    let spec = write_spec(t.path(), "spec.toml", &[src("d", srv.url("/dead"), &data)]);
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home)
        .arg("fetch")
        .arg(&spec)
        .arg("--mirror")
        .arg(srv.url("/m")));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home), vec![sha(&data)]);
    assert_eq!(srv.count(&format!("/m/sha256/{}", sha(&data))), 1);
    assert_eq!(srv.count("/dead"), 0);
}

fn fetch_retries_after_500(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(4, 3000);
    srv.route(
        "/flaky",
        Behaviour::FailThen {
            failures: 1,
            status: 500,
            body: data.clone(),
        },
    );
    let spec = write_spec(t.path(), "spec.toml", &[src("f", srv.url("/flaky"), &data)]);
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("retrying"),
        "{}",
        both(&o)
    );
    assert_eq!(srv.count("/flaky"), 2);
    assert_eq!(checked_blobs(&home), vec![sha(&data)]);
}

fn fetch_retries_after_reset_mid_body(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(5, 200_000);
    srv.route(
        "/reset",
        Behaviour::ResetThen {
            resets: 2,
            body: data.clone(),
        },
    );
    let spec = write_spec(t.path(), "spec.toml", &[src("r", srv.url("/reset"), &data)]);
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(srv.count("/reset"), 3);
    assert_eq!(checked_blobs(&home), vec![sha(&data)]);
}

fn fetch_slow_body_times_out(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(6, 100_000);
    srv.route(
        "/slow",
        Behaviour::Slow {
            body: data.clone(),
            first: 1000,
            pause: Duration::from_secs(20),
        },
    );
    let spec = write_spec(t.path(), "spec.toml", &[src("s", srv.url("/slow"), &data)]);
    let home = t.path().join("home");
    let start = Instant::now();
    who.give(t.path());
    let o = run(hermit_cmd(who, &home)
        .arg("fetch")
        .arg(&spec)
        .env("HERMIT_READ_TIMEOUT", "0.5")
        .args(["--retries", "1"]));
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no data for 0.5s after 1000 bytes (read timeout) (after 1 retries)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(srv.count("/slow"), 2);
    assert!(checked_blobs(&home).is_empty());
}

fn offline_with_everything_mirrored_touches_no_server(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let a = bytes(7, 1000);
    let b = bytes(8, 2000);
    let local = bytes(9, 300);
    let local_file = t.path().join("local.bin");
    std::fs::write(&local_file, &local).unwrap();
    srv.route("/a", Behaviour::File(a.clone()));
    srv.route("/b", Behaviour::File(b.clone()));
    let mirror = t.path().join("mirror");
    mirror_dir_with(&mirror, &[&a, &b]);
    let spec = write_spec(
        t.path(),
        "spec.toml",
        &[
            src("a", srv.url("/a"), &a),
            src("b", srv.url("/b"), &b),
            src("local", format!("file://{}", local_file.display()), &local),
        ],
    );
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home)
        .arg("fetch")
        .arg("--offline")
        .arg(&spec)
        .arg("--mirror")
        .arg(format!("file://{}", mirror.display())));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(srv.total(), 0);
    let mut want = vec![sha(&a), sha(&b), sha(&local)];
    want.sort();
    assert_eq!(checked_blobs(&home), want);
}

fn offline_missing_fails_before_fetching(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let a = bytes(10, 1000);
    let b = bytes(11, 2000);
    srv.route("/a", Behaviour::File(a.clone()));
    srv.route("/b", Behaviour::File(b.clone()));
    let mirror = t.path().join("mirror");
    mirror_dir_with(&mirror, &[&a]);
    let spec = write_spec(
        t.path(),
        "spec.toml",
        &[src("a", srv.url("/a"), &a), src("bee", srv.url("/b"), &b)],
    );
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home)
        .arg("fetch")
        .arg("--offline")
        .arg(&spec)
        .arg("--mirror")
        .arg(&mirror));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--offline: 1 blob(s)"), "{err}");
    assert!(
        err.contains(&format!(
            "sha256:{} (source \"bee\" in {})",
            sha(&b),
            spec.display()
        )),
        "{err}"
    );
    assert!(!err.contains(&sha(&a)), "{err}");
    assert!(
        checked_blobs(&home).is_empty(),
        "nothing fetched, not even a"
    );
    assert_eq!(srv.total(), 0);
}

fn concurrent_fetches_fetch_each_digest_once(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let datas: Vec<Vec<u8>> = (0..6).map(|i| bytes(100 + i, 50_000)).collect();
    for (i, d) in datas.iter().enumerate() {
        srv.route(
            &format!("/f{i}"),
            Behaviour::Trickle {
                body: d.clone(),
                chunk: 5000,
                every: Duration::from_millis(20),
            },
        );
    }
    let specs: Vec<PathBuf> = (0..8)
        .map(|p| {
            let names: Vec<String> = (0..3).map(|k| format!("s{}", (p + k) % 6)).collect();
            let srcs: Vec<Src> = (0..3)
                .map(|k| {
                    let i = (p + k) % 6;
                    src(&names[k], srv.url(&format!("/f{i}")), &datas[i])
                })
                .collect();
            write_spec(t.path(), &format!("spec{p}.toml"), &srcs)
        })
        .collect();
    let home = t.path().join("home");
    who.give(t.path());
    let children: Vec<_> = specs
        .iter()
        .map(|s| {
            hermit_cmd(who, &home)
                .arg("fetch")
                .arg(s)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", both(&o));
    }
    for i in 0..6 {
        assert_eq!(
            srv.count(&format!("/f{i}")),
            1,
            "/f{i} fetched more than once"
        );
    }
    let mut want: Vec<String> = datas.iter().map(|d| sha(d)).collect();
    want.sort();
    assert_eq!(checked_blobs(&home), want);
    let leftovers: Vec<_> = std::fs::read_dir(home.join("v1/tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "temp sessions left: {leftovers:?}");
}

fn sigkill_mid_download_leaves_no_partial_blob(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(12, 2 << 20);
    srv.route(
        "/big",
        Behaviour::Trickle {
            body: data.clone(),
            chunk: 64 << 10,
            every: Duration::from_millis(40),
        },
    );
    let spec = write_spec(t.path(), "spec.toml", &[src("big", srv.url("/big"), &data)]);
    let home = t.path().join("home");
    who.give(t.path());
    for (n, ms) in [30u64, 150, 400, 800].into_iter().enumerate() {
        let mut child = hermit_cmd(who, &home)
            .arg("fetch")
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "run {n} finished before the kill");
        assert!(
            checked_blobs(&home).is_empty(),
            "a blob is visible after a kill at {ms} ms"
        );
    }
    assert!(
        srv.count("/big") >= 2,
        "the kills did not interrupt downloads"
    );
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home), vec![sha(&data)]);
    // The killed processes' temp sessions were cleaned up.
    let leftovers: Vec<_> = std::fs::read_dir(home.join("v1/tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "temp sessions left: {leftovers:?}");
}

fn mirror_twice_then_serve_it(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let a = bytes(13, 4000);
    let b = bytes(14, 6000);
    srv.route("/a", Behaviour::File(a.clone()));
    srv.route("/b", Behaviour::File(b.clone()));
    let spec = write_spec(
        t.path(),
        "spec.toml",
        &[src("a", srv.url("/a"), &a), src("b", srv.url("/b"), &b)],
    );
    let home = t.path().join("home");
    let dir = t.path().join("mirror");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home)
        .arg("mirror")
        .arg(&spec)
        .arg("--to")
        .arg(&dir));
    assert!(o.status.success(), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("added sha256:{}", sha(&a))), "{out}");
    assert!(out.contains("added 2 ("), "{out}");
    let index = std::fs::read_to_string(dir.join("index.json")).unwrap();
    assert!(
        index.contains(&format!("\"sha256:{}\"", sha(&b))),
        "{index}"
    );
    assert!(index.contains(&srv.url("/b")), "{index}");
    for d in [&a, &b] {
        assert_eq!(&std::fs::read(dir.join("sha256").join(sha(d))).unwrap(), d);
    }
    let o = run(hermit_cmd(who, &home)
        .arg("mirror")
        .arg(&spec)
        .arg("--to")
        .arg(&dir)
        .arg("--verify"));
    assert!(o.status.success(), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("added 0 (0 B), replaced 0, already present 2"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("index.json")).unwrap(),
        index
    );
    assert_eq!((srv.count("/a"), srv.count("/b")), (1, 1));

    // Upstream dies; another store finds everything in the mirror, by file://
    // and then by http.
    srv.route("/a", Behaviour::Status(404));
    srv.route("/b", Behaviour::Status(404));
    let home2 = t.path().join("home2");
    let o = run(hermit_cmd(who, &home2)
        .arg("fetch")
        .arg("--offline")
        .arg(&spec)
        .arg("--mirror")
        .arg(format!("file://{}", dir.display())));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home2).len(), 2);
    srv.serve_dir("/mirror/", &dir);
    let home3 = t.path().join("home3");
    let o = run(hermit_cmd(who, &home3)
        .arg("fetch")
        .arg(&spec)
        .arg("--mirror")
        .arg(srv.url("/mirror/")));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(checked_blobs(&home3).len(), 2);
    assert_eq!((srv.count("/a"), srv.count("/b")), (1, 1));
}

fn jobs_bound_concurrent_downloads(who: As) {
    let t = who.scratch();
    let datas: Vec<Vec<u8>> = (0..8).map(|i| bytes(200 + i, 20_000)).collect();
    let mut seen = Vec::new();
    for jobs in ["2", "8"] {
        let srv = Server::start();
        for (i, d) in datas.iter().enumerate() {
            srv.route(
                &format!("/f{i}"),
                Behaviour::Trickle {
                    body: d.clone(),
                    chunk: 4000,
                    every: Duration::from_millis(40),
                },
            );
        }
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let srcs: Vec<Src> = (0..8)
            .map(|i| src(&names[i], srv.url(&format!("/f{i}")), &datas[i]))
            .collect();
        let spec = write_spec(t.path(), &format!("spec-j{jobs}.toml"), &srcs);
        let home = t.path().join(format!("home-j{jobs}"));
        who.give(t.path());
        let o = run(hermit_cmd(who, &home)
            .arg("fetch")
            .arg(&spec)
            .args(["-j", jobs]));
        assert!(o.status.success(), "{}", both(&o));
        assert_eq!(checked_blobs(&home).len(), 8);
        seen.push(srv.max_in_flight());
    }
    assert_eq!(seen[0], 2, "-j 2 allowed {} at once", seen[0]);
    assert!(seen[1] > 2, "-j 8 never ran more than {} at once", seen[1]);
}

/// At first at most 6 requests to one server wait for their answer (small
/// servers drop connections beyond their listen queue); once the server has
/// shown it keeps connections open, up to `-j` do.
fn waiting_requests_limited_until_the_server_keeps_alive(who: As) {
    let t = who.scratch();
    let datas: Vec<Vec<u8>> = (0..24).map(|i| bytes(300 + i, 2_000)).collect();
    let mut seen = Vec::new();
    for (name, srv) in [
        ("keep-alive", Server::start()),
        ("http10", Server::start_http10()),
    ] {
        for (i, d) in datas.iter().enumerate() {
            srv.route(
                &format!("/f{i}"),
                Behaviour::LateHead {
                    body: d.clone(),
                    delay: Duration::from_millis(150),
                },
            );
        }
        let names: Vec<String> = (0..datas.len()).map(|i| format!("s{i}")).collect();
        let srcs: Vec<Src> = (0..datas.len())
            .map(|i| src(&names[i], srv.url(&format!("/f{i}")), &datas[i]))
            .collect();
        let spec = write_spec(t.path(), &format!("spec-{name}.toml"), &srcs);
        let home = t.path().join(format!("home-{name}"));
        who.give(t.path());
        let o = run(hermit_cmd(who, &home)
            .arg("fetch")
            .arg(&spec)
            .args(["-j", "8"]));
        assert!(o.status.success(), "{}", both(&o));
        assert_eq!(checked_blobs(&home).len(), datas.len());
        seen.push(srv.max_in_flight());
    }
    assert!(
        seen[0] > 6,
        "keep-alive server: never more than {} at once",
        seen[0]
    );
    assert!(
        seen[0] <= 8,
        "keep-alive server: {} at once with -j 8",
        seen[0]
    );
    assert_eq!(seen[1], 6, "HTTP/1.0 server: {} at once", seen[1]);
}

fn fetch_longer_than_size_is_refused_early(who: As) {
    let t = who.scratch();
    let srv = Server::start();
    let data = bytes(15, 1000);
    let mut longer = data.clone();
    longer.extend_from_slice(&bytes(16, 5000));
    srv.route("/long", Behaviour::File(longer));
    let spec = write_spec(
        t.path(),
        "spec.toml",
        &[src("long", srv.url("/long"), &data)],
    );
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(hermit_cmd(who, &home).arg("fetch").arg(&spec));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the server announces 6000 bytes but 1000 are expected; nothing was stored"),
        "{err}"
    );
    assert_eq!(srv.count("/long"), 1);
    assert!(checked_blobs(&home).is_empty());
}

both_users!(
    fetch_plain_then_present,
    fetch_wrong_hash_is_refused,
    fetch_404_is_not_retried_and_lists_locations,
    fetch_dead_upstream_found_in_mirror_folder,
    fetch_from_http_mirror,
    fetch_retries_after_500,
    fetch_retries_after_reset_mid_body,
    fetch_slow_body_times_out,
    offline_with_everything_mirrored_touches_no_server,
    offline_missing_fails_before_fetching,
    concurrent_fetches_fetch_each_digest_once,
    sigkill_mid_download_leaves_no_partial_blob,
    mirror_twice_then_serve_it,
    jobs_bound_concurrent_downloads,
    waiting_requests_limited_until_the_server_keeps_alive,
    fetch_longer_than_size_is_refused_early,
);
