//! The remote cache against a real BuildGrid (`bgd server start`) on
//! loopback: CAS, ByteStream and ActionCache on disk storage, no database.
//!
//! "Machines" are separate stores (HERMIT_HOME) run by different users: A
//! builds and uploads; B, with a fresh store, gets a remote cache hit
//! without running the build. Forged and tampered results are refused and
//! B builds locally; a dead or silent remote costs one warning.
//!
//! BuildGrid comes from the virtualenv `scripts/install-deps.sh` makes at
//! `${HERMIT_TEST_BUILDGRID:-/var/cache/hermit-tests/buildgrid}`; a missing
//! one fails the test with the fix named.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hermit_remote::{reapi, Digest, Endpoint, Options, Remote};

use crate::build::project;
use crate::common::{both, run};
use crate::fixtures::{both_users, nonce, As};

/// The BuildGrid virtualenv's `bgd`.
pub fn bgd_path() -> PathBuf {
    let venv = std::env::var_os("HERMIT_TEST_BUILDGRID")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hermit-tests/buildgrid"));
    let bgd = venv.join("bin/bgd");
    assert!(
        bgd.exists(),
        "BuildGrid is not installed at {} (no bin/bgd): run scripts/install-deps.sh as root, \
         or set HERMIT_TEST_BUILDGRID to a virtualenv with `buildgrid`",
        venv.display()
    );
    bgd
}

/// A free TCP port on 127.0.0.1 (closed again; taken by the caller soon after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cache-only BuildGrid: CAS + ByteStream + ActionCache (writable by
/// every client) over disk storage in `dir/cas`; killed when dropped.
pub struct BuildGrid {
    pub port: u16,
    pub dir: PathBuf,
    /// Serving TLS ([`BuildGrid::start_tls`]): its URL is `grpcs://`.
    pub tls: bool,
    child: Child,
}

impl BuildGrid {
    pub fn start(dir: &Path) -> BuildGrid {
        BuildGrid::start_with(dir, "")
    }

    /// A server requiring a JWT signed with HS256 and `secret` from every client.
    pub fn start_with_jwt(dir: &Path, secret: &str) -> BuildGrid {
        fs::create_dir_all(dir).unwrap();
        let path = dir.join("jwt.secret");
        fs::write(&path, secret).unwrap();
        BuildGrid::start_with(
            dir,
            &format!(
                "authorization:\n  method: jwt\n  secret: {}\n  algorithm: hs256\n",
                path.display()
            ),
        )
    }

    /// A token for [`BuildGrid::start_with_jwt`]'s server, made with the
    /// virtualenv's PyJWT.
    pub fn jwt(secret: &str) -> String {
        let python = bgd_path().with_file_name("python");
        let o = run(Command::new(python).arg("-c").arg(format!(
            "import jwt, time; print(jwt.encode({{'exp': int(time.time()) + 3600, 'sub': 'ci'}}, {secret:?}, algorithm='HS256'))"
        )));
        assert!(o.status.success(), "{}", both(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// A server speaking TLS with `cert` (PEM, chain to the CA) and `key`.
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> BuildGrid {
        BuildGrid::start_config(dir, "", |port, cas| {
            cache_config(port, cas).replace(
                "    insecure-mode: true\n",
                &format!(
                    "    insecure-mode: false\n    credentials:\n      tls-server-key: {}\n      tls-server-cert: {}\n",
                    key.display(),
                    cert.display()
                ),
            )
        })
    }

    /// A server speaking TLS like [`BuildGrid::start_tls`] that requires
    /// every client to present a certificate signed by `client_ca`
    /// (BuildGrid's `tls-client-certs`).
    pub fn start_mtls(dir: &Path, cert: &Path, key: &Path, client_ca: &Path) -> BuildGrid {
        BuildGrid::start_config(dir, "", |port, cas| {
            cache_config(port, cas).replace(
                "    insecure-mode: true\n",
                &mtls_channel(cert, key, client_ca),
            )
        })
    }

    fn start_with(dir: &Path, extra_config: &str) -> BuildGrid {
        BuildGrid::start_config(dir, extra_config, cache_config)
    }

    fn start_config(
        dir: &Path,
        extra_config: &str,
        config_for: impl Fn(u16, &Path) -> String,
    ) -> BuildGrid {
        let bgd = bgd_path();
        fs::create_dir_all(dir).unwrap();
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join("buildgrid.yml");
            let text = config_for(port, &dir.join("cas"));
            assert!(text.contains(&format!("address: \"127.0.0.1:{port}\"")));
            fs::write(&config, text + extra_config).unwrap();
            let log = fs::File::create(dir.join("buildgrid.log")).unwrap();
            let child = Command::new(&bgd)
                .args(["server", "start"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut bg = BuildGrid {
                port,
                dir: dir.to_path_buf(),
                tls: config_for(port, Path::new("/")).contains("insecure-mode: false"),
                child,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return bg;
                }
                if bg.child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = bg.child.kill();
        }
        panic!(
            "BuildGrid did not start; its log:\n{}",
            fs::read_to_string(dir.join("buildgrid.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `bgd cas …` against this server.
    pub fn cas(&self) -> Command {
        let mut c = Command::new(bgd_path());
        c.arg("cas")
            .arg("--remote")
            .arg(format!("http://127.0.0.1:{}", self.port));
        c
    }

    /// Where BuildGrid's disk storage keeps a blob.
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        self.dir
            .join("cas/cas/objects")
            .join(&hash[..2])
            .join(&hash[2..])
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server config docs/remote.md shows for a cache-only remote (with
/// failed results kept, so that a forged failed result reaches hermit;
/// hermit never uploads one).
pub fn cache_config(port: u16, cas: &Path) -> String {
    format!(
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
storages:
  - !disk-storage &cas
    path: {cas}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 10000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"#,
        cas = cas.display()
    )
}

/// The TLS part of a BuildGrid `!channel` that requires client
/// certificates signed by `client_ca` (docs/remote.md shows it).
pub fn mtls_channel(cert: &Path, key: &Path, client_ca: &Path) -> String {
    format!(
        "    insecure-mode: false\n    credentials:\n      tls-server-key: {}\n      tls-server-cert: {}\n      tls-client-certs: {}\n",
        key.display(),
        cert.display(),
        client_ca.display()
    )
}

/// The other user: machine B is another person's.
fn other(who: As) -> As {
    match who {
        As::Root => As::User,
        As::User => As::Root,
    }
}

/// A directory owned by `who` for its HERMIT_HOME.
fn home_of(who: As, base: &Path, name: &str) -> PathBuf {
    let h = base.join(name);
    fs::create_dir_all(&h).unwrap();
    who.give(&h);
    h
}

fn build(who: As, home: &Path, spec: &Path, extra: &[&str]) -> (serde_json::Value, Output) {
    let o = run(who
        .hermit_in(home)
        .arg("build")
        .arg(spec)
        .arg("--json")
        .args(extra));
    assert!(o.status.success(), "{}", both(&o));
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)));
    (v, o)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A spec whose build prints `marker` (so its running shows on stderr)
/// and writes a few files, one executable, and a symlink.
fn remote_project(dir: &Path, marker: &str) -> PathBuf {
    project(
        dir,
        &format!(
            "echo {marker}\nmkdir -p $out/bin $out/share\ncp /sources/src/hello.txt $out/share/greeting\n\
             echo '#!/bin/sh' > $out/bin/hi\necho 'echo hi' >> $out/bin/hi\nchmod 755 $out/bin/hi\n\
             ln -s ../share/greeting $out/bin/link\nyes x | head -c 300000 > $out/share/big"
        ),
        "",
    )
}

/// Whether a store holds an unpacked toolchain root or any build's
/// materialised inputs: what running a build leaves behind.
fn ran_builds(home: &Path) -> Vec<String> {
    ["unpacked", "trees", "rootfs", "roots"]
        .iter()
        .filter(|d| {
            fs::read_dir(home.join("v1").join(d))
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
        })
        .map(|d| d.to_string())
        .collect()
}

fn client(url: &str) -> (tokio::runtime::Runtime, Remote) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let remote = rt
        .block_on(Remote::connect(
            Endpoint::parse(url).unwrap(),
            Options::default(),
        ))
        .unwrap();
    (rt, remote)
}

fn action_of(v: &serde_json::Value) -> Digest {
    let a = v["remote"]["action"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    let (hash, size) = a.strip_prefix("sha256:").unwrap().split_once('/').unwrap();
    Digest::new(hash, size.parse().unwrap()).unwrap()
}

/// B's build `o` was a remote cache hit of A's output `va` and did not
/// run (its `marker` is absent); B's report.
fn assert_remote_hit(o: &Output, va: &serde_json::Value, marker: &str) -> serde_json::Value {
    assert!(o.status.success(), "{}", both(o));
    let vb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vb["remote"]["hit"], true, "{vb} {}", both(o));
    assert_eq!(vb["cached"], true, "{vb}");
    assert_eq!(vb["output_digest"], va["output_digest"]);
    assert!(!stderr(o).contains(marker), "B ran the build: {}", both(o));
    vb
}

fn remote_cache_hit_on_another_machine(who: As) {
    let t = who.scratch();
    let bg = BuildGrid::start(&t.path().join("bg"));
    let marker = nonce("remote-build-ran");
    let spec = remote_project(&t.path().join("p"), &marker);
    who.give(t.path());
    let b = other(who);
    let home_a = home_of(who, t.path(), "home-a");
    let home_b = home_of(b, t.path(), "home-b");

    // `--remote` alone reads and never writes: a local build, nothing uploaded.
    let home_a0 = home_of(who, t.path(), "home-a0");
    let (v0, _) = build(who, &home_a0, &spec, &["--remote", &bg.url()]);
    assert_eq!(v0["remote"]["hit"], false, "{v0}");
    let (rt, remote) = client(&bg.url());
    assert!(rt
        .block_on(remote.get_action_result(&action_of(&v0)))
        .unwrap()
        .is_none());

    // A: a local build, uploaded (--remote-upload).
    let (va, oa) = build(
        who,
        &home_a,
        &spec,
        &["--remote", &bg.url(), "--remote-upload", "-j", "3"],
    );
    assert_eq!(va["cached"], false);
    assert_eq!(va["remote"]["hit"], false, "{va}");
    assert!(
        stderr(&oa).contains(&marker),
        "A ran the build: {}",
        both(&oa)
    );
    let action = action_of(&va);

    assert_eq!(action, action_of(&v0), "one action for one build key");
    // The ActionResult in BuildGrid names the three files.
    let ar = rt
        .block_on(remote.get_action_result(&action))
        .unwrap()
        .expect("A's result");
    let names: Vec<&str> = ar.output_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["build.log", "output.tar", "record.json"]);
    let tar = ar
        .output_files
        .iter()
        .find(|f| f.path == "output.tar")
        .unwrap();
    assert_eq!(
        format!("sha256:{}", tar.digest.as_ref().unwrap().hash),
        va["output_digest"].as_str().unwrap()
    );

    // B, another user with a fresh store and its own checkout of the
    // project (with A's hermit.lock, as committed) and another job count
    // (not in the build key): a remote cache hit, and nothing ran.
    let checkout = t.path().join("p-b");
    let o = run(Command::new("cp")
        .arg("-a")
        .arg(t.path().join("p"))
        .arg(&checkout));
    assert!(o.status.success(), "{}", both(&o));
    b.give(&checkout);
    let spec_b = checkout.join("spec.toml");
    let start = Instant::now();
    let (vb, ob) = build(b, &home_b, &spec_b, &["--remote", &bg.url(), "-j", "1"]);
    let took = start.elapsed();
    assert_eq!(vb["cached"], true, "{vb} {}", both(&ob));
    assert_eq!(vb["remote"]["hit"], true, "{vb}");
    assert_eq!(vb["output_digest"], va["output_digest"]);
    assert_eq!(vb["build_key"], va["build_key"]);
    assert_eq!(action_of(&vb), action);
    assert!(
        !stderr(&ob).contains(&marker),
        "B ran the build: {}",
        both(&ob)
    );
    assert!(stderr(&ob).contains("remote cache hit"), "{}", both(&ob));
    assert!(
        ran_builds(&home_b).is_empty(),
        "B's store holds {:?}: something was materialised",
        ran_builds(&home_b)
    );
    assert!(!ran_builds(&home_a).is_empty(), "the probe sees A's build");
    eprintln!("remote cache hit on a fresh store took {took:?}");

    // B's output is the same tree, executable bits and symlink included.
    let out_a = Path::new(va["output"].as_str().unwrap());
    let out_b = Path::new(vb["output"].as_str().unwrap());
    let o = run(Command::new("diff").arg("-r").arg(out_a).arg(out_b));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        fs::read_link(out_b.join("bin/link")).unwrap(),
        Path::new("../share/greeting")
    );
    // The record and the log are stored as a local build's are.
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(vb["record"].as_str().unwrap()).unwrap()).unwrap();
    let log = rec["log"]["digest"].as_str().unwrap();
    let log_b = fs::read_to_string(home_b.join("v1/blobs/sha256").join(&log[7..])).unwrap();
    assert!(log_b.contains(&marker), "the log is A's");
    // `hermit store verify` on B finds everything intact.
    let o = run(b.hermit_in(&home_b).args(["store", "verify"]));
    assert!(o.status.success(), "{}", both(&o));

    // B again: a local cache hit now, no remote needed.
    let (vb2, _) = build(b, &home_b, &spec_b, &["--remote", "grpc://127.0.0.1:1"]);
    assert_eq!(vb2["cached"], true);
    assert!(vb2["remote"].is_null(), "{vb2}");
}

/// B's build when the remote's answer is bad: refused with `needle` and
/// the digest named, then built locally with the same output.
/// What every forged-result case shares.
struct Forged<'a> {
    who: As,
    base: &'a Path,
    spec: &'a Path,
    url: &'a str,
    marker: &'a str,
    expect: &'a serde_json::Value,
}

fn refused_then_local(f: &Forged<'_>, name: &str, needles: &[&str]) {
    let (who, marker, expect) = (f.who, f.marker, f.expect);
    let home = home_of(who, f.base, name);
    let (v, o) = build(who, &home, f.spec, &["--remote", f.url]);
    let err = stderr(&o);
    assert_eq!(v["cached"], false, "{name}: {v} {err}");
    assert_eq!(v["remote"]["hit"], false);
    assert!(err.contains("refused"), "{name}: {err}");
    for n in needles {
        assert!(err.contains(n), "{name}: no {n:?} in: {err}");
    }
    assert!(err.contains(marker), "{name}: the local build ran: {err}");
    assert_eq!(v["output_digest"], expect["output_digest"], "{name}");
}

fn tampered_blobs_and_forged_results_are_refused(who: As) {
    let t = who.scratch();
    let bg = BuildGrid::start(&t.path().join("bg"));
    let marker = nonce("remote-forged");
    let spec = remote_project(&t.path().join("p"), &marker);
    let other_spec = project(&t.path().join("q"), "echo other > $out/other", "");
    who.give(t.path());
    let home_a = home_of(who, t.path(), "home-a");
    let (va, _) = build(
        who,
        &home_a,
        &spec,
        &["--remote", &bg.url(), "--remote-upload"],
    );
    let (vo, _) = build(
        who,
        &home_a,
        &other_spec,
        &["--remote", &bg.url(), "--remote-upload"],
    );
    let action = action_of(&va);
    let (rt, remote) = client(&bg.url());
    let good = rt
        .block_on(remote.get_action_result(&action))
        .unwrap()
        .unwrap();
    let other_result = rt
        .block_on(remote.get_action_result(&action_of(&vo)))
        .unwrap()
        .unwrap();
    let file = |r: &reapi::ActionResult, name: &str| -> reapi::Digest {
        r.output_files
            .iter()
            .find(|f| f.path == name)
            .unwrap()
            .digest
            .clone()
            .unwrap()
    };
    let with = |name: &str, d: reapi::Digest| -> reapi::ActionResult {
        let mut r = good.clone();
        for f in &mut r.output_files {
            if f.path == name {
                f.digest = Some(d.clone());
            }
        }
        r
    };
    let forge = |r: reapi::ActionResult| {
        rt.block_on(remote.update_action_result(&action, r))
            .unwrap();
    };

    let url = bg.url();
    let f = Forged {
        who,
        base: t.path(),
        spec: &spec,
        url: &url,
        marker: &marker,
        expect: &va,
    };
    // 1. Another build's record (a real record, of the wrong key).
    forge(with("record.json", file(&other_result, "record.json")));
    refused_then_local(
        &f,
        "h1",
        &[
            "is the record of build key",
            vo["build_key"].as_str().unwrap(),
        ],
    );

    // 2. Another build's output tar under the right record.
    let other_tar = file(&other_result, "output.tar");
    forge(with("output.tar", other_tar.clone()));
    refused_then_local(&f, "h2", &[&other_tar.hash]);

    // 3. A result naming a blob the CAS does not have. BuildGrid's own
    //    ActionCache already hides such a result (it checks the blobs a
    //    result names on every read): a miss, a local build. hermit's check
    //    behind it names the digest when a server does not.
    let ghost = Digest::of(nonce("no-such-blob").as_bytes());
    forge(with("record.json", ghost.to_proto()));
    let home = home_of(who, t.path(), "h3");
    let (v, o) = build(who, &home, &spec, &["--remote", &bg.url()]);
    let err = stderr(&o);
    assert_eq!(v["cached"], false, "{err}");
    assert!(err.contains(&marker), "{err}");
    assert!(!err.contains("remote cache hit"), "{err}");
    assert!(
        !err.contains("refused") || err.contains(&ghost.hash),
        "{err}"
    );
    assert_eq!(v["output_digest"], va["output_digest"]);
    let e = rt.block_on(remote.read_blob(&ghost)).unwrap_err();
    assert!(e.is_integrity(), "{e}");
    assert!(e.to_string().contains(&ghost.hash), "{e}");
    let big = Digest::new(&ghost.hash, 10 << 20).unwrap();
    let e = rt.block_on(remote.read_blob(&big)).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");

    // 4. A failed build's result.
    let mut failed = good.clone();
    failed.exit_code = 2;
    forge(failed);
    refused_then_local(&f, "h4", &["exited with code 2"]);

    // 5. The genuine result, but the output tar's bytes changed in the
    //    server's storage (same size): wrong bytes, refused by digest.
    forge(good.clone());
    let tar = file(&good, "output.tar");
    let path = bg.blob_path(&tar.hash);
    let mut bytes = fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    refused_then_local(&f, "h5", &["wrong content", &tar.hash]);
}

fn dead_or_silent_remote_warns_once_and_builds_locally(who: As) {
    let t = who.scratch();
    let marker = nonce("remote-dead");
    let spec = remote_project(&t.path().join("p"), &marker);
    who.give(t.path());
    // Nothing listens there.
    let dead = format!("grpc://127.0.0.1:{}", free_port());
    let home = home_of(who, t.path(), "h-dead");
    let (v, o) = build(who, &home, &spec, &["--remote", &dead, "--remote-upload"]);
    let err = stderr(&o);
    assert_eq!(v["cached"], false);
    assert!(err.contains(&marker), "{err}");
    assert_eq!(
        err.matches("warning: the remote").count(),
        1,
        "one warning: {err}"
    );
    assert!(err.contains(&dead), "{err}");

    // A server that accepts connections and never answers: the timeout
    // ends the wait, the build runs locally.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(4) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let home = home_of(who, t.path(), "h-silent");
    let start = Instant::now();
    let o = run(who
        .hermit_in(&home)
        .env("HERMIT_REMOTE_TIMEOUT", "1")
        .arg("build")
        .arg(&spec)
        .arg("--json")
        .args(["--remote", &format!("grpc://127.0.0.1:{port}")]));
    let took = start.elapsed();
    assert!(o.status.success(), "{}", both(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("warning: the remote").count(), 1, "{err}");
    assert!(err.contains(&marker), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(held);
}

fn buildgrid_and_hermit_read_each_others_blobs(who: As) {
    let t = who.scratch();
    let bg = BuildGrid::start(&t.path().join("bg"));
    // A blob uploaded with BuildGrid's own client is a source for hermit.
    let payload = t.path().join("payload.txt");
    // Over 4 MiB: both clients go through ByteStream, not the batch calls.
    fs::write(
        &payload,
        format!("{:<40}\n", nonce("from-bgd")).repeat(150_000),
    )
    .unwrap();
    let bytes = fs::read(&payload).unwrap();
    let d = Digest::of(&bytes);
    assert!(bytes.len() > 4 << 20);
    let o = run(bg.cas().arg("upload-file").arg(&payload));
    assert!(o.status.success(), "{}", both(&o));
    assert!(stdout_of(&o).contains(&d.hash), "{}", both(&o));
    let dir = t.path().join("p");
    // The URL is dead: only the remote CAS can supply the bytes.
    let spec = project(
        &dir,
        "cp /sources/payload $out/payload",
        &format!(
            "[[source]]\nname = \"payload\"\nurls = [\"http://127.0.0.1:1/payload.txt\"]\nsha256 = \"{}\"\nsize = {}\n",
            d.hash, d.size
        ),
    );
    who.give(t.path());
    let home = home_of(who, t.path(), "home");
    let o = run(who
        .hermit_in(&home)
        .arg("fetch")
        .arg(&spec)
        .args(["--remote", &bg.url()]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(stderr(&o).contains("from the remote"), "{}", both(&o));
    assert_eq!(
        fs::read(home.join("v1/blobs/sha256").join(&d.hash)).unwrap(),
        bytes
    );
    // And the build uses it (the fetch made it a local blob already; a
    // fresh store fetches it during the build).
    let home2 = home_of(who, t.path(), "home2");
    let (v, _) = build(
        who,
        &home2,
        &spec,
        &["--remote", &bg.url(), "--remote-upload"],
    );
    let out = Path::new(v["output"].as_str().unwrap());
    assert_eq!(fs::read(out.join("payload")).unwrap(), bytes);

    // hermit's uploads are readable by `bgd cas download-file`: the output tar.
    let (rt, remote) = client(&bg.url());
    let ar = rt
        .block_on(remote.get_action_result(&action_of(&v)))
        .unwrap()
        .unwrap();
    let tar = ar
        .output_files
        .iter()
        .find(|f| f.path == "output.tar")
        .unwrap();
    let td = tar.digest.as_ref().unwrap();
    let got = t.path().join("got.tar");
    let o = run(bg
        .cas()
        .arg("download-file")
        .arg(format!("{}/{}", td.hash, td.size_bytes))
        .arg(&got));
    assert!(o.status.success(), "{}", both(&o));
    let tar_bytes = fs::read(&got).unwrap();
    assert_eq!(Digest::of(&tar_bytes).hash, td.hash);
    assert_eq!(
        format!("sha256:{}", td.hash),
        v["output_digest"].as_str().unwrap()
    );
    // It is the canonical tar of the output: tar lists the file.
    let o = run(Command::new("tar").arg("tf").arg(&got));
    assert!(stdout_of(&o).contains("payload"), "{}", both(&o));
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mirror_to_grpc_fills_the_remote_cas(who: As) {
    let t = who.scratch();
    let bg = BuildGrid::start(&t.path().join("bg"));
    let payload = nonce("mirror-payload").repeat(3000);
    let d = Digest::of(payload.as_bytes());
    let server = crate::http_server::Server::start();
    server.route(
        "/payload.txt",
        crate::http_server::Behaviour::File(payload.clone().into_bytes()),
    );
    let spec = project(
        &t.path().join("p"),
        "cp /sources/payload $out/payload",
        &format!(
            "[[source]]\nname = \"payload\"\nurls = [\"{}\"]\nsha256 = \"{}\"\nsize = {}\n",
            server.url("/payload.txt"),
            d.hash,
            d.size
        ),
    );
    who.give(t.path());
    let home = home_of(who, t.path(), "home");
    let o = run(who
        .hermit_in(&home)
        .arg("mirror")
        .arg(&spec)
        .args(["--to", &bg.url()]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(stdout_of(&o).contains(&d.hash), "{}", both(&o));
    // BuildGrid holds it: `bgd cas download-file` reads it back.
    let got = t.path().join("got");
    let o = run(bg
        .cas()
        .arg("download-file")
        .arg(format!("{}/{}", d.hash, d.size))
        .arg(&got));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(fs::read_to_string(&got).unwrap(), payload);
    // Again: nothing new to add.
    let o = run(who
        .hermit_in(&home)
        .arg("mirror")
        .arg(&spec)
        .args(["--to", &bg.url()]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(stdout_of(&o).contains("added 0"), "{}", both(&o));
}

fn a_token_opens_an_authenticated_remote(who: As) {
    let t = who.scratch();
    let secret = nonce("jwt-secret-that-is-long-enough-for-hs256");
    let bg = BuildGrid::start_with_jwt(&t.path().join("bg"), &secret);
    let token = BuildGrid::jwt(&secret);
    let marker = nonce("remote-auth");
    let spec = remote_project(&t.path().join("p"), &marker);
    who.give(t.path());

    // Without a token: refused by the server, one warning, a local build.
    let home = home_of(who, t.path(), "h-none");
    let (v, o) = build(
        who,
        &home,
        &spec,
        &["--remote", &bg.url(), "--remote-upload"],
    );
    let err = stderr(&o);
    assert_eq!(v["cached"], false);
    assert_eq!(err.matches("warning: the remote").count(), 1, "{err}");
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(err.contains(&marker), "{err}");

    // With $HERMIT_REMOTE_TOKEN: uploaded.
    let home = home_of(who, t.path(), "h-env");
    let o = run(who
        .hermit_in(&home)
        .env("HERMIT_REMOTE_TOKEN", &token)
        .arg("build")
        .arg(&spec)
        .args(["--json", "--remote", &bg.url(), "--remote-upload"]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));

    // From config.toml: [remote] with a token file, a fresh store: a hit.
    let cfg = config_dir(
        who,
        t.path(),
        &format!("[remote]\nurl = \"{}\"\ntoken_file = \"token\"\n", bg.url()),
        &[("token", format!("{token}\n").as_bytes())],
    );
    let (v, o) = build_with_config(who, &home_of(who, t.path(), "h-config"), &cfg, &spec);
    assert_eq!(v["remote"]["hit"], true, "{v} {}", both(&o));
    assert!(!stderr(&o).contains(&marker), "{}", both(&o));
    // The token is never printed.
    assert!(!both(&o).contains(&token));
    // --no-remote ignores the configured remote.
    let home = home_of(who, t.path(), "h-no-remote");
    let o = run(who
        .hermit_in(&home)
        .env("XDG_CONFIG_HOME", &cfg)
        .arg("build")
        .arg(&spec)
        .args(["--json", "--no-remote"]));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["remote"].is_null(), "{v}");
    assert!(stderr(&o).contains(&marker));
}

/// `$XDG_CONFIG_HOME` for a test: `hermit/config.toml` holding `config`,
/// and `files` beside it, given to `who`.
fn config_dir(who: As, base: &Path, config: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let cfg = base.join("xdg");
    fs::create_dir_all(cfg.join("hermit")).unwrap();
    for (name, bytes) in files {
        fs::write(cfg.join("hermit").join(name), bytes).unwrap();
    }
    fs::write(cfg.join("hermit/config.toml"), config).unwrap();
    who.give(&cfg);
    cfg
}

/// `hermit build SPEC --json` under the config directory `cfg`; it must
/// succeed.
fn build_with_config(who: As, home: &Path, cfg: &Path, spec: &Path) -> (serde_json::Value, Output) {
    let o = run(who
        .hermit_in(home)
        .env("XDG_CONFIG_HOME", cfg)
        .arg("build")
        .arg(spec)
        .arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    let v = serde_json::from_slice(&o.stdout).unwrap();
    (v, o)
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost,
/// made with `openssl` in `dir`: (ca.pem, server.pem, server.key).
pub fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let o = run(Command::new("openssl").current_dir(dir).args(args));
        assert!(o.status.success(), "openssl {args:?}: {}", both(&o));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=hermit test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&csr);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A client certificate `name.pem` (for TLS client authentication) and
/// its key `name.key`, signed by the CA [`test_ca`] made in `dir`.
pub fn client_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let o = run(Command::new("openssl").current_dir(dir).args(args));
        assert!(o.status.success(), "openssl {args:?}: {}", both(&o));
    };
    let (pem, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={name}"),
    ]);
    fs::write(
        dir.join(&ext),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "3",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &pem,
    ]);
    (dir.join(pem), dir.join(key))
}

fn a_grpcs_remote_behind_its_own_ca(who: As) {
    let t = who.scratch();
    let (ca, cert, key) = test_ca(&t.path().join("pki"));
    let bg = BuildGrid::start_tls(&t.path().join("bg"), &cert, &key);
    let url = bg.url();
    assert!(url.starts_with("grpcs://127.0.0.1:"), "{url}");
    let marker = nonce("remote-tls");
    let spec = remote_project(&t.path().join("p"), &marker);
    who.give(t.path());
    let b = other(who);

    // Without the CA: the server's certificate is not trusted, one warning
    // naming the certificate problem and the fix, a local build, no upload.
    let home = home_of(who, t.path(), "h-untrusted");
    let (v, o) = build(who, &home, &spec, &["--remote", &url, "--remote-upload"]);
    let err = stderr(&o);
    assert_eq!(v["cached"], false);
    assert_eq!(err.matches("warning: the remote").count(), 1, "{err}");
    assert!(err.contains("is unavailable"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("HERMIT_REMOTE_CA"), "{err}");
    assert!(err.contains(&marker), "{err}");
    eprintln!(
        "without the CA: {}",
        err.lines().find(|l| l.contains("warning")).unwrap()
    );

    // With $HERMIT_REMOTE_CA: uploaded over TLS.
    let home_a = home_of(who, t.path(), "h-a");
    let o = run(who
        .hermit_in(&home_a)
        .env("HERMIT_REMOTE_CA", &ca)
        .arg("build")
        .arg(&spec)
        .args(["--json", "--remote", &url, "--remote-upload"]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));
    assert!(stderr(&o).contains(&marker), "{}", both(&o));
    let va: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(va["remote"]["hit"], false, "{va}");
    assert!(bg.dir.join("cas/cas/objects").exists());

    // B, another user with a fresh store, its own checkout (with A's
    // hermit.lock) and the CA: a remote cache hit.
    let checkout = t.path().join("p-b");
    let o = run(Command::new("cp")
        .arg("-a")
        .arg(t.path().join("p"))
        .arg(&checkout));
    assert!(o.status.success(), "{}", both(&o));
    b.give(&checkout);
    let home_b = home_of(b, t.path(), "h-b");
    let o = run(b
        .hermit_in(&home_b)
        .env("HERMIT_REMOTE_CA", &ca)
        .arg("build")
        .arg(checkout.join("spec.toml"))
        .args(["--json", "--remote", &url]));
    assert_remote_hit(&o, &va, &marker);
    assert!(ran_builds(&home_b).is_empty(), "{:?}", ran_builds(&home_b));

    // The same from config.toml: [remote] with ca_file (relative to it).
    let cfg = config_dir(
        who,
        t.path(),
        &format!("[remote]\nurl = \"{url}\"\nca_file = \"team-ca.pem\"\n"),
        &[("team-ca.pem", &fs::read(&ca).unwrap())],
    );
    let (v, o) = build_with_config(who, &home_of(who, t.path(), "h-config"), &cfg, &spec);
    assert_eq!(v["remote"]["hit"], true, "{v} {}", both(&o));
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));

    // A file that is no CA bundle (the server's private key; a missing
    // file): one clear error naming it, nothing built.
    let home = home_of(who, t.path(), "h-bad");
    let missing = t.path().join("no-such-ca.pem");
    for (bad, needle) in [(&key, "never a private key"), (&missing, "cannot read it")] {
        let o = run(who
            .hermit_in(&home)
            .env("HERMIT_REMOTE_CA", bad)
            .arg("build")
            .arg(&spec)
            .args(["--remote", &url]));
        assert!(!o.status.success(), "{}", both(&o));
        let err = stderr(&o);
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains(&marker), "{err}");
    }
}

fn a_grpcs_remote_requiring_client_certificates(who: As) {
    let t = who.scratch();
    let pki = t.path().join("pki");
    let (ca, cert, key) = test_ca(&pki);
    let (client, client_key) = client_cert(&pki, "client");
    // A certificate of the same name from a CA the server does not trust.
    let elsewhere = t.path().join("pki-other");
    test_ca(&elsewhere);
    let (stranger, stranger_key) = client_cert(&elsewhere, "client");
    let bg = BuildGrid::start_mtls(&t.path().join("bg"), &cert, &key, &ca);
    let url = bg.url();
    let marker = nonce("remote-mtls");
    let spec = remote_project(&t.path().join("p"), &marker);
    who.give(t.path());
    let b = other(who);
    let key_text = fs::read_to_string(&client_key).unwrap();
    let key_line = key_text.lines().nth(1).unwrap().to_string();

    // `hermit build … --remote URL` as `who` in a fresh store, with `env`.
    let build_env = |home: &str, env: &[(&str, &Path)]| {
        let mut c = who.hermit_in(&home_of(who, t.path(), home));
        c.env("HERMIT_REMOTE_CA", &ca);
        for (k, v) in env {
            c.env(k, v);
        }
        run(c
            .arg("build")
            .arg(&spec)
            .args(["--json", "--remote", &url, "--remote-upload"]))
    };

    // No client certificate, or one from a CA the server does not trust:
    // refused by the server, one warning naming the problem and the fix,
    // a local build.
    for (home, env, needles) in [
        (
            "h-none",
            vec![],
            vec![
                "requires a client certificate",
                "HERMIT_REMOTE_CERT",
                "cert_file",
            ],
        ),
        (
            "h-stranger",
            vec![
                ("HERMIT_REMOTE_CERT", stranger.as_path()),
                ("HERMIT_REMOTE_KEY", stranger_key.as_path()),
            ],
            vec![
                "refused the client certificate",
                stranger.to_str().unwrap(),
                "tls-client-certs",
            ],
        ),
    ] {
        let o = build_env(home, &env);
        assert!(o.status.success(), "{}", both(&o));
        let err = stderr(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["cached"], false, "{v}");
        assert_eq!(err.matches("warning").count(), 1, "{err}");
        assert!(err.contains("warning: the remote"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} in {err}");
        }
        assert!(err.contains(&marker), "{err}");
        eprintln!(
            "{home}: {}",
            err.lines().find(|l| l.contains("warning")).unwrap()
        );
    }
    let blobs = |dir: &Path| {
        let mut n = 0;
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).into_iter().flatten() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    n += 1;
                }
            }
        }
        n
    };
    assert_eq!(blobs(&bg.dir.join("cas")), 0, "a refused client uploaded");

    // The right certificate from the environment: uploaded.
    let o = build_env(
        "h-a",
        &[
            ("HERMIT_REMOTE_CERT", &client),
            ("HERMIT_REMOTE_KEY", &client_key),
        ],
    );
    assert!(o.status.success(), "{}", both(&o));
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));
    assert!(stderr(&o).contains(&marker), "{}", both(&o));
    let va: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(va["remote"]["hit"], false, "{va}");
    assert!(blobs(&bg.dir.join("cas")) > 0);

    // B, another user with a fresh store, its own checkout and its own
    // copy of the certificate and key: a remote cache hit.
    let mine = t.path().join("b");
    fs::create_dir_all(&mine).unwrap();
    for f in [&ca, &client, &client_key] {
        fs::copy(f, mine.join(f.file_name().unwrap())).unwrap();
    }
    let o = run(Command::new("cp")
        .arg("-a")
        .arg(t.path().join("p"))
        .arg(mine.join("p")));
    assert!(o.status.success(), "{}", both(&o));
    b.give(&mine);
    let o = run(b
        .hermit_in(&home_of(b, t.path(), "h-b"))
        .env("HERMIT_REMOTE_CA", mine.join("ca.pem"))
        .env("HERMIT_REMOTE_CERT", mine.join("client.pem"))
        .env("HERMIT_REMOTE_KEY", mine.join("client.key"))
        .arg("build")
        .arg(mine.join("p/spec.toml"))
        .args(["--json", "--remote", &url]));
    assert_remote_hit(&o, &va, &marker);
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));

    // From config.toml: cert_file and key_file (relative to it) beside
    // ca_file; a fresh store gets a hit.
    let config = format!(
        "[remote]\nurl = \"{url}\"\nca_file = \"team-ca.pem\"\ncert_file = \"me.pem\"\nkey_file = \"me.key\"\n"
    );
    let cfg = config_dir(
        who,
        t.path(),
        &config,
        &[
            ("team-ca.pem", &fs::read(&ca).unwrap()),
            ("me.pem", &fs::read(&client).unwrap()),
            ("me.key", key_text.as_bytes()),
        ],
    );
    let (v, o) = build_with_config(who, &home_of(who, t.path(), "h-config"), &cfg, &spec);
    assert_eq!(v["remote"]["hit"], true, "{v} {}", both(&o));
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));
    // `hermit mirror --to` presents it too (from A's store, which holds
    // the sources and the toolchain).
    let o = run(who
        .hermit_in(&home_of(who, t.path(), "h-a"))
        .env("XDG_CONFIG_HOME", &cfg)
        .arg("mirror")
        .arg(&spec)
        .args(["--to", &url]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(stdout_of(&o).contains("added"), "{}", both(&o));
    assert!(!stderr(&o).contains("warning"), "{}", both(&o));

    // Bad certificate or key files: one error naming the file and the
    // fix, nothing built, the key never printed.
    let missing = t.path().join("no-such-cert.pem");
    let not_pem = pki.join("client.ext");
    type Env<'a> = Vec<(&'a str, &'a Path)>;
    let cases: [(Env, &Path, &str); 6] = [
        (
            vec![
                ("HERMIT_REMOTE_CERT", &missing),
                ("HERMIT_REMOTE_KEY", &client_key),
            ],
            &missing,
            "cannot read it",
        ),
        (
            vec![
                ("HERMIT_REMOTE_CERT", &not_pem),
                ("HERMIT_REMOTE_KEY", &client_key),
            ],
            &not_pem,
            "holds no PEM certificate",
        ),
        (
            vec![
                ("HERMIT_REMOTE_CERT", &client_key),
                ("HERMIT_REMOTE_KEY", &client_key),
            ],
            &client_key,
            "holds a private key, not a certificate",
        ),
        (
            vec![
                ("HERMIT_REMOTE_CERT", &client),
                ("HERMIT_REMOTE_KEY", &stranger_key),
            ],
            &stranger_key,
            "does not belong to the certificate",
        ),
        (
            vec![("HERMIT_REMOTE_CERT", &client)],
            &client,
            "HERMIT_REMOTE_KEY is not",
        ),
        (
            vec![("HERMIT_REMOTE_KEY", &client_key)],
            &client_key,
            "HERMIT_REMOTE_CERT is not",
        ),
    ];
    for (env, named, needle) in cases {
        let o = build_env("h-bad", &env);
        assert!(!o.status.success(), "{}", both(&o));
        let err = stderr(&o);
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{err}"
        );
        assert!(err.contains(&named.display().to_string()), "{err}");
        assert!(err.contains(needle), "{needle:?} in {err}");
        assert!(!err.contains(&marker), "{err}");
        assert!(!both(&o).contains(&key_line), "{err}");
    }
    // In config.toml, a certificate without its key.
    let cfg = config_dir(
        who,
        t.path(),
        &format!("[remote]\nurl = \"{url}\"\ncert_file = \"me.pem\"\n"),
        &[("me.pem", &fs::read(&client).unwrap())],
    );
    let o = run(who
        .hermit_in(&home_of(who, t.path(), "h-bad-config"))
        .env("XDG_CONFIG_HOME", &cfg)
        .arg("build")
        .arg(&spec));
    assert!(!o.status.success(), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains("config.toml") && err.contains("cert_file but no key_file"),
        "{err}"
    );
}

/// `hermit rebuild RECORD --remote` on a fresh store: the record names its
/// input's output by sha256 alone, and REAPI needs a size; the blob index
/// A's upload wrote gives it, so B restores the input from the remote CAS
/// (hashed as it arrives) and rebuilds identically. Without the remote,
/// B's rebuild names the missing input.
fn rebuild_restores_inputs_from_the_remote(who: As) {
    let t = who.scratch();
    let bg = BuildGrid::start(&t.path().join("bg"));
    let marker = nonce("remote-lib-ran");
    let lib_script = format!("echo {marker}\necho one > $out/one");
    let specs = crate::graph::graph_project(
        &t.path().join("p"),
        &[
            ("lib", lib_script.as_str(), &[]),
            ("app", "cat /inputs/l/one > $out/app", &[("l", "lib")]),
        ],
    );
    who.give(t.path());
    let b = other(who);
    let home_a = home_of(who, t.path(), "home-a");
    let (va, _) = build(
        who,
        &home_a,
        &specs[1],
        &["--remote", &bg.url(), "--remote-upload"],
    );
    // The toolchain image into the remote too (B's store has none).
    let o = run(who
        .hermit_in(&home_a)
        .arg("mirror")
        .arg(&specs[0])
        .args(["--to", &bg.url()]));
    assert!(o.status.success(), "{}", both(&o));
    let record = t.path().join("app-record.json");
    fs::copy(va["record"].as_str().unwrap(), &record).unwrap();
    b.give(&record);
    b.give(&t.path().join("p"));

    // Without the remote: the input is named, with the fix.
    let home_b0 = home_of(b, t.path(), "home-b0");
    let o = run(b.hermit_in(&home_b0).arg("rebuild").arg(&record));
    assert!(!o.status.success(), "{}", both(&o));
    assert!(stderr(&o).contains("input \"l\""), "{}", both(&o));

    // With it: the input's output comes from the remote's CAS.
    let home_b = home_of(b, t.path(), "home-b");
    let o = run(b.hermit_in(&home_b).arg("rebuild").arg(&record).args([
        "--remote",
        &bg.url(),
        "--json",
    ]));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["identical"], true, "{v}");
    assert!(
        stderr(&o).contains("the output of input \"l\"") && stderr(&o).contains("from the remote"),
        "{}",
        both(&o)
    );
    assert!(
        !stderr(&o).contains(&marker),
        "lib was not rebuilt: {}",
        both(&o)
    );
    let o = run(b.hermit_in(&home_b).args(["store", "verify"]));
    assert!(o.status.success(), "{}", both(&o));

    // --deep on a fresh store: lib's record comes from the remote's record
    // index, lib is rebuilt from it (its marker shows), both identical.
    let home_b1 = home_of(b, t.path(), "home-b1");
    let o = run(b
        .hermit_in(&home_b1)
        .args(["rebuild", "--deep"])
        .arg(&record)
        .args(["--remote", &bg.url(), "--json"]));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ns = v["nodes"].as_array().unwrap();
    assert_eq!(ns.len(), 2, "{v}");
    assert!(ns.iter().all(|n| n["identical"] == true), "{v}");
    assert!(
        stderr(&o).contains(&marker),
        "lib was rebuilt: {}",
        both(&o)
    );
    assert!(stderr(&o).contains("in the remote"), "{}", both(&o));

    // A forged index entry (naming another blob) is no answer: a fresh
    // store's rebuild fails as without the remote, naming the input.
    let (rt, remote) = client(&bg.url());
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
    let lib_out = rec["inputs"][0]["output"].as_str().unwrap().to_string();
    let lib_out: hermit_store::Digest = lib_out.parse().unwrap();
    let index = index_action(&lib_out);
    let log = rec["log"]["digest"].as_str().unwrap();
    let forged = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "blob".into(),
            digest: Some(
                Digest::new(&log[7..], rec["log"]["size"].as_u64().unwrap())
                    .unwrap()
                    .to_proto(),
            ),
            ..Default::default()
        }],
        ..Default::default()
    };
    rt.block_on(remote.update_action_result(&index, forged))
        .unwrap();
    let home_b2 = home_of(b, t.path(), "home-b2");
    let o = run(b
        .hermit_in(&home_b2)
        .arg("rebuild")
        .arg(&record)
        .args(["--remote", &bg.url()]));
    assert!(!o.status.success(), "{}", both(&o));
    assert!(stderr(&o).contains("input \"l\""), "{}", both(&o));
}

/// The blob index's action for `sha256` (docs/design.md, "Remote actions"),
/// computed here independently of hermit's code.
fn index_action(sha256: &hermit_store::Digest) -> Digest {
    use prost::Message as _;
    #[allow(deprecated)]
    let command = reapi::Command {
        arguments: vec!["hermit-blob-index/1".into(), sha256.to_string()],
        output_files: vec!["blob".into()],
        output_paths: vec!["blob".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let root = reapi::Directory::default().encode_to_vec();
    let action = reapi::Action {
        command_digest: Some(Digest::of(&command).to_proto()),
        input_root_digest: Some(Digest::of(&root).to_proto()),
        ..Default::default()
    }
    .encode_to_vec();
    Digest::of(&action)
}

both_users!(
    a_grpcs_remote_requiring_client_certificates,
    a_grpcs_remote_behind_its_own_ca,
    a_token_opens_an_authenticated_remote,
    remote_cache_hit_on_another_machine,
    tampered_blobs_and_forged_results_are_refused,
    dead_or_silent_remote_warns_once_and_builds_locally,
    buildgrid_and_hermit_read_each_others_blobs,
    mirror_to_grpc_fills_the_remote_cas,
    rebuild_restores_inputs_from_the_remote,
);
