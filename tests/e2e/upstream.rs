//! What real upstream builds need: absolute symlinks inside `$out`
//! rewritten, `/build` as a writable view of a source (a real GNU autotools
//! build from its release tarball), `--json` on failure, `rebuild -j`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::build::project;
use crate::common::{both, run};
use crate::fixtures::{both_users, As};

fn build_json(who: As, home: &Path, spec: &Path, extra: &[&str]) -> serde_json::Value {
    let o = run(who
        .hermit_in(home)
        .arg("build")
        .arg(spec)
        .arg("--json")
        .args(extra));
    assert!(o.status.success(), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

/// `rebuild -j N` gives the build HERMIT_JOBS=N and records N.
fn rebuild_honours_jobs(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "echo \"$HERMIT_JOBS\" > $out/jobs", "");
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &["-j", "2"]);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert_eq!(fs::read_to_string(out.join("jobs")).unwrap(), "2\n");
    assert_eq!(
        read_json(Path::new(v["record"].as_str().unwrap()))["environment"]["jobs"],
        2
    );
    let o = run(who
        .hermit_in(&home)
        .arg("rebuild")
        .arg(v["record"].as_str().unwrap())
        .args(["-j", "3", "--json"]));
    // The output holds the job count, so it differs; the rebuild is kept.
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["differences"][0], "changed  jobs", "{r}");
    let kept = PathBuf::from(r["rebuilt_output"].as_str().unwrap());
    assert_eq!(fs::read_to_string(kept.join("jobs")).unwrap(), "3\n");
    let rec = read_json(&kept.parent().unwrap().join("record.json"));
    assert_eq!(rec["environment"]["jobs"], 3);
    assert_eq!(rec["environment"]["env"]["HERMIT_JOBS"], "3");
    assert_eq!(
        rec["build_key"], v["build_key"],
        "the job count is not keyed"
    );
}

/// bzip2's `make install` makes `bzcmp -> /out/usr/bin/bzdiff`: stored as
/// the relative `bzdiff`, recorded, noted in the log; the output is the one
/// a relative link gives. Links leaving the output are still refused.
fn absolute_links_into_out_are_made_relative(who: As) {
    let t = who.scratch();
    let script = "mkdir -p $out/usr/bin\necho '#!/bin/sh' > $out/usr/bin/bzdiff\n";
    let spec = project(
        &t.path().join("abs"),
        &format!("{script}ln -s $out/usr/bin/bzdiff $out/usr/bin/bzcmp\nln -s /out $out/usr/top"),
        "",
    );
    let plain = project(
        &t.path().join("rel"),
        &format!("{script}ln -s bzdiff $out/usr/bin/bzcmp\nln -s .. $out/usr/top"),
        "",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let o = run(who.hermit_in(&home).arg("build").arg(&spec).arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("usr/bin/bzcmp -> /out/usr/bin/bzdiff"),
        "the rewrite is shown: {err}"
    );
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert_eq!(
        fs::read_link(out.join("usr/bin/bzcmp")).unwrap(),
        Path::new("bzdiff")
    );
    assert_eq!(fs::read_link(out.join("usr/top")).unwrap(), Path::new(".."));
    let record = read_json(Path::new(v["record"].as_str().unwrap()));
    assert_eq!(
        record["output"]["rewritten_links"],
        serde_json::json!([
            {"path": "usr/bin/bzcmp", "target": "/out/usr/bin/bzdiff"},
            {"path": "usr/top", "target": "/out"},
        ])
    );
    let log = record["log"]["digest"].as_str().unwrap();
    let log = fs::read_to_string(home.join("v1/blobs/sha256").join(&log[7..])).unwrap();
    assert!(log.contains("hermit:   usr/top -> /out\n"), "{log}");
    // The same output as relative links give; that record lists nothing.
    let w = build_json(who, &home, &plain, &[]);
    assert_eq!(w["output_digest"], v["output_digest"]);
    let r = read_json(Path::new(w["record"].as_str().unwrap()));
    assert!(r["output"].get("rewritten_links").is_none(), "{r}");
    // The record is accepted as it is: it rebuilds identically.
    let o = run(who
        .hermit_in(&home)
        .arg("rebuild")
        .arg(v["record"].as_str().unwrap()));
    assert!(o.status.success(), "{}", both(&o));

    // Links that leave the output: refused, naming the link and the fix.
    for (i, (link, target)) in [("etc", "/etc/passwd"), ("up", "../../x")]
        .iter()
        .enumerate()
    {
        let dir = t.path().join(format!("bad{i}"));
        let spec = project(
            &dir,
            &format!("mkdir $out/d\nln -s {target} $out/d/{link}"),
            "",
        );
        who.give(&dir);
        let o = run(who.hermit_in(&home).arg("build").arg(&spec));
        assert_eq!(o.status.code(), Some(1), "{}", both(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("\"d/{link}\" points to \"{target}\""))
                && err.contains("outside the output")
                && err.contains("ln -sr"),
            "{err}"
        );
    }
}

/// A spec over the busybox image with a local source `src` and `[build]`
/// lines `build`.
fn workdir_project(dir: &Path, build: &str) -> PathBuf {
    let spec = project(dir, "true", "");
    let text = fs::read_to_string(&spec).unwrap();
    let at = text.find("[build]").unwrap();
    fs::write(&spec, format!("{}[build]\n{build}\n", &text[..at])).unwrap();
    spec
}

/// `workdir = "src"`: /build is the source, writable everywhere, with fixed
/// modes and owner; the source itself is untouched.
fn workdir_is_a_writable_view_of_the_source(who: As) {
    let t = who.scratch();
    let script = r#"script = """
pwd > $out/pwd
ls -ln . sub | sed 's/  */ /g' > $out/listing
./run.sh > $out/ran
echo made > sub/new
mv sub/data.txt sub/moved.txt
rm hello.txt
mkdir -p deep/er
touch deep/er/x
chmod u+w sub/moved.txt
echo more >> sub/moved.txt
cat sub/moved.txt > $out/moved
ls . sub > $out/after
cat /sources/src/hello.txt > $out/source-kept
ls /sources/src/sub > $out/source-listing
"""
workdir = "src""#;
    let spec = workdir_project(t.path(), script);
    fs::write(t.path().join("src/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(
        t.path().join("src/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &[]);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    let read = |f: &str| fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(read("pwd"), "/build\n");
    // Directories 0755, files read-only, all the build user's (uid 1000).
    let listing = read("listing");
    assert!(listing.contains("-r--r--r-- 1 1000 1000 6 "), "{listing}");
    assert!(listing.contains("drwxr-xr-x 1 1000 1000 "), "{listing}");
    // The source's times (SOURCE_DATE_EPOCH for a local tree), not now.
    assert!(listing.contains(" Jan 1 1980 sub\n"), "{listing}");
    assert!(!listing.contains("dr-x"), "{listing}");
    assert_eq!(read("ran"), "ran\n");
    assert_eq!(read("moved"), "data\nmore\n");
    assert_eq!(
        read("after"),
        ".:\ndeep\nrun.sh\nsub\n\nsub:\nmoved.txt\nnew\n"
    );
    assert_eq!(read("source-kept"), "hello\n");
    assert_eq!(read("source-listing"), "data.txt\n");
    // Nothing of the view is left beside the stored output.
    let mut stored: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    stored.sort();
    assert_eq!(stored, ["out", "record.json"]);

    // A workdir naming a missing directory: one clear error.
    let bad = workdir_project(
        &t.path().join("bad"),
        "script = \"true\"\nworkdir = \"src/nope\"",
    );
    who.give(t.path());
    let o = run(who.hermit_in(&home).arg("build").arg(&bad));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/sources/src/nope does not exist") && err.contains("directories there: sub"),
        "{err}"
    );
}

both_users!(
    rebuild_honours_jobs,
    absolute_links_into_out_are_made_relative,
    workdir_is_a_writable_view_of_the_source,
);

/// Where `scripts/install-deps.sh` keeps upstream release tarballs.
fn tarballs() -> PathBuf {
    std::env::var_os("HERMIT_TEST_TARBALLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hermit-tests/orig"))
}

/// The upstream tarball of Debian source package `pkg` (its `.orig.tar.*`).
/// Missing: the test fails, saying how to get it.
pub(crate) fn orig_tarball(pkg: &str) -> PathBuf {
    let dir = tarballs();
    let found = fs::read_dir(&dir).ok().and_then(|r| {
        r.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{pkg}_")) && n.contains(".orig.tar.") && !n.ends_with(".asc")
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "the upstream tarball of {pkg} is not in {}: run scripts/install-deps.sh (as root) to fetch it",
            dir.display()
        )
    })
}

/// A real GNU autotools project (GNU hello, from its release tarball served
/// on loopback) builds with `/build` as a writable view of the unpacked
/// source — configure writes `po/Makefile.in`, `config.h`, … into the
/// source's own read-only directories — by root and by an ordinary user in
/// stores of their own, to the same bytes; and the documented copy
/// (`cp -a` then `chmod -R u+w .`) gives the same output.
#[test]
fn gnu_hello_builds_from_its_tarball_in_a_writable_view() {
    use crate::http_server::{Behaviour, Server};
    crate::fixtures::ensure_subids();
    let tarball = orig_tarball("hello");
    let bytes = fs::read(&tarball).unwrap();
    let sha = {
        let o = run(std::process::Command::new("sha256sum").arg(&tarball));
        String::from_utf8_lossy(&o.stdout)[..64].to_string()
    };
    let server = Server::start();
    server.route("/hello-2.10.tar.gz", Behaviour::File(bytes));
    let t = As::User.scratch();
    let write = |dir: &Path, build: &str| -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let spec = dir.join("spec.toml");
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
{build}
"#,
                server.url("/hello-2.10.tar.gz")
            ),
        )
        .unwrap();
        spec
    };
    let view = write(
        &t.path().join("view"),
        r#"workdir = "hello/hello-2.10"
script = """
./configure --prefix=/usr
make
make install DESTDIR="$out"
"""
"#,
    );
    let a = build_json(As::Root, &t.path().join("a"), &view, &["-j", "2"]);
    let out = PathBuf::from(a["output"].as_str().unwrap());
    let o = run(&mut std::process::Command::new(out.join("usr/bin/hello")));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Hello, world!\n",
        "{}",
        both(&o)
    );

    // An ordinary user, with the lock root wrote, in a store of their own.
    As::User.give(t.path());
    let b = build_json(As::User, &t.path().join("b"), &view, &["-j", "2"]);
    assert_eq!(a["build_key"], b["build_key"]);
    assert_eq!(
        a["output_digest"], b["output_digest"],
        "root's and the user's builds differ"
    );

    // The documented copy works too, and gives the very same output.
    let copy = write(
        &t.path().join("copy"),
        r#"script = """
cp -a /sources/hello/hello-2.10/. .
chmod -R u+w .
./configure --prefix=/usr
make
make install DESTDIR="$out"
"""
"#,
    );
    fs::copy(
        view.with_file_name("hermit.lock"),
        copy.with_file_name("hermit.lock"),
    )
    .unwrap();
    As::User.give(t.path());
    let c = build_json(As::User, &t.path().join("b"), &copy, &["-j", "2"]);
    assert_eq!(
        a["output_digest"], c["output_digest"],
        "the view and the copy differ"
    );
}

/// `--json`: progress stays on stderr; a failure prints one JSON object with
/// the error, the exit code and the log.
fn json_reports_failures_and_keeps_progress(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "echo about to fail\nfalse", "");
    who.give(t.path());
    let home = t.path().join("home");
    let o = run(who
        .hermit_in(&home)
        .arg("build")
        .arg(&spec)
        .args(["--json", "--keep-failed"]));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)));
    assert_eq!(v["exit_code"], 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("the script exited with status 1"),
        "{v}"
    );
    let log = fs::read_to_string(v["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("about to fail"), "{log}");
    assert_eq!(v["graph"][0]["status"], "failed", "{v}");
    // hermit's own messages and the build's output stay on stderr.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hermit: wrote") && err.contains("about to fail"),
        "{err}"
    );
    assert!(err.contains("error: build of demo failed"), "{err}");
    assert!(err.contains("build directory: "), "{err}");

    // Bad input: the same, with exit code 2.
    let bad = t.path().join("bad.toml");
    fs::write(&bad, "[package]\nname = \"x\"\n").unwrap();
    who.give(&bad);
    let o = run(who.hermit_in(&home).arg("build").arg(&bad).arg("--json"));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"].as_str().unwrap().contains("bad.toml"), "{v}");

    // Every other command with --json does the same.
    for args in [
        vec!["rebuild", "/nonexistent/record.json", "--json"],
        vec!["output", "hash", "/nonexistent", "--json"],
    ] {
        let o = run(who.hermit_in(&home).args(&args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", both(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", both(&o)));
        assert_eq!(v["exit_code"], 2, "{args:?}");
        assert!(v["error"].as_str().unwrap().contains("/nonexistent"), "{v}");
    }
}

both_users!(json_reports_failures_and_keeps_progress);
