//! `hermit build` and `hermit rebuild` end to end, over a busybox OCI image
//! in real namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::image::busybox_layout;

/// A project directory: an OCI layout of busybox, a spec using it, a local
/// source directory. Returns the spec path.
pub(crate) fn project(dir: &Path, script: &str, extra: &str) -> PathBuf {
    let layout = dir.join("image");
    let manifest = busybox_layout(&layout);
    fs::create_dir_all(dir.join("src/sub")).unwrap();
    fs::write(dir.join("src/hello.txt"), "hello\n").unwrap();
    fs::write(dir.join("src/sub/data.txt"), "data\n").unwrap();
    let spec = dir.join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"[package]
name = "demo"
version = "1.0"

[toolchain]
oci = "image"
digest = "{manifest}"

[[source]]
name = "src"
path = "src"
{extra}
[build]
script = """
{script}
"""
"#
        ),
    )
    .unwrap();
    spec
}

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

fn build_stores_output_and_record_then_hits_the_cache(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "mkdir -p $out/bin\ncp /sources/src/hello.txt $out/greeting\necho built > $out/bin/note\nchmod 755 $out/bin/note",
        "",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &[]);
    assert_eq!(v["cached"], false);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert_eq!(fs::read_to_string(out.join("greeting")).unwrap(), "hello\n");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(record["output"]["digest"], v["output_digest"]);
    assert_eq!(record["build_key"], v["build_key"]);
    assert_eq!(record["profile"]["name"], hermit_profiles::DEFAULT);
    assert!(
        t.path().join("hermit.lock").is_file(),
        "the lock is written beside the spec"
    );
    // The log is kept in the store.
    let log = record["log"]["digest"].as_str().unwrap();
    assert!(home.join("v1/blobs/sha256").join(&log[7..]).is_file());
    // The output is read-only. (Root could write to it, and the next build
    // would find the stored output corrupt: root does not try.)
    assert!(unsafe_root() || fs::write(out.join("greeting"), "x").is_err());

    // Again: a cache hit, no sandbox run, with -o.
    let link = t.path().join("result");
    let start = Instant::now();
    let o = run(who
        .hermit_in(&home)
        .arg("build")
        .arg(&spec)
        .arg("-o")
        .arg(&link));
    let took = start.elapsed();
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cached"),
        "{}",
        both(&o)
    );
    assert_eq!(fs::read_link(&link).unwrap(), out);
    assert!(took.as_secs() < 5, "cache hit took {took:?}");
    let v2 = build_json(who, &home, &spec, &[]);
    assert_eq!(v2["cached"], true);
    assert_eq!(v2["output_digest"], v["output_digest"]);
}

/// Root may write to 0444 files; then the read-only check says nothing.
fn unsafe_root() -> bool {
    nix_is_root()
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

const NOISY: &str = r#"echo "$SOURCE_DATE_EPOCH" > $out/sde
hostname > $out/hostname
id -un > $out/user
pwd > $out/pwd
uname -n > $out/uname
umask > $out/umask
env | sort > $out/env
find /sources/src > $out/listing
mkdir $out/fresh && echo a > $out/fresh/a && echo b > $out/fresh/b
touch $out/now"#;

fn same_spec_in_two_stores_from_two_dirs_gives_identical_outputs(who: As) {
    let t = who.scratch();
    let a = t.path().join("first/place");
    let b = t.path().join("second");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let spec_a = project(&a, NOISY, "");
    let spec_b = project(&b, NOISY, "");
    // Create b's source files in the other order, with other mtimes.
    fs::remove_file(b.join("src/hello.txt")).unwrap();
    fs::write(b.join("src/hello.txt"), "hello\n").unwrap();
    let o = run(Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(b.join("src/sub/data.txt")));
    assert!(o.status.success());
    who.give(t.path());

    let ha = t.path().join("home-a");
    let va = build_json(who, &ha, &spec_a, &[]);
    let hb = t.path().join("home-b");
    let mut b_cmd = who.hermit_in(&hb);
    b_cmd.arg("build").arg(&spec_b).arg("--json");
    let o = run(
        crate::fixtures::wrap(&b_cmd, "umask 077; cd / && exec \"$@\"", "sh".as_ref())
            .env("TZ", "Asia/Tokyo")
            .env("LANG", "de_DE.UTF-8")
            .env("SOURCE_DATE_EPOCH", "12345")
            .env("SOME_HOST_VAR", "leak"),
    );
    assert!(o.status.success(), "{}", both(&o));
    let vb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    if va["output_digest"] != vb["output_digest"] {
        let d = run(Command::new("diff")
            .arg("-r")
            .arg(va["output"].as_str().unwrap())
            .arg(vb["output"].as_str().unwrap()));
        panic!("outputs differ:\n{}", both(&d));
    }
    assert_eq!(va["build_key"], vb["build_key"], "build keys differ");
    let out = PathBuf::from(va["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("hostname")).unwrap(),
        "localhost\n"
    );
    assert_eq!(fs::read_to_string(out.join("user")).unwrap(), "builder\n");
    assert_eq!(fs::read_to_string(out.join("pwd")).unwrap(), "/build\n");
    assert_eq!(fs::read_to_string(out.join("umask")).unwrap(), "0022\n");
    assert_eq!(fs::read_to_string(out.join("sde")).unwrap(), "315532800\n");
    let env = fs::read_to_string(out.join("env")).unwrap();
    assert!(
        !env.contains("SOME_HOST_VAR") && env.contains("TZ=UTC"),
        "{env}"
    );
    // Files created "now" carry SOURCE_DATE_EPOCH in the store.
    let m = fs::metadata(out.join("now")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 315532800);
}

fn failing_build_exits_non_zero_and_keeps_its_log_and_dir(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "echo about to fail\necho partial > partial.txt\nexit 3",
        "",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let o = run(who
        .hermit_in(&home)
        .arg("build")
        .arg(&spec)
        .arg("--keep-failed"));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("about to fail"),
        "the log streams to the terminal: {err}"
    );
    assert!(err.contains("exited with status 3"), "{err}");
    let log = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("log: "))
        .unwrap();
    assert!(fs::read_to_string(log).unwrap().contains("about to fail"));
    let dir = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("build directory: "))
        .and_then(|l| l.split(" (/build)").next())
        .unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(dir).join("partial.txt")).unwrap(),
        "partial\n"
    );
}

fn build_timeout_is_enforced(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "sleep 30", "");
    who.give(t.path());
    let text = fs::read_to_string(&spec)
        .unwrap()
        .replace("[build]\n", "[build]\ntimeout = 2\n");
    fs::write(&spec, text).unwrap();
    let start = Instant::now();
    let o = run(who
        .hermit_in(&t.path().join("home"))
        .arg("build")
        .arg(&spec));
    assert_eq!(o.status.code(), Some(124), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("timed out after 2 s"),
        "{}",
        both(&o)
    );
    assert!(start.elapsed().as_secs() < 20);
}

fn stale_lock_is_an_error_naming_the_change(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "true", "");
    who.give(t.path());
    let home = t.path().join("home");
    build_json(who, &home, &spec, &[]);
    // Point the spec at another image (an oci-archive of the same layout is
    // another path): the lock no longer matches.
    let text = fs::read_to_string(&spec)
        .unwrap()
        .replace("oci = \"image\"", "oci = \"image2\"");
    fs::write(&spec, text).unwrap();
    let o = run(who.hermit_in(&home).arg("build").arg(&spec));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no longer matches") && err.contains("image2") && err.contains("hermit lock"),
        "{err}"
    );
}

fn missing_remote_source_names_it_and_every_location(who: As) {
    let t = who.scratch();
    let digest = "0".repeat(64);
    let extra = format!(
        "\n[[source]]\nname = \"gone\"\nurls = [\"file://{}/nope.tar\"]\nsha256 = \"{digest}\"\n",
        t.path().display()
    );
    let spec = project(t.path(), "true", &extra);
    who.give(t.path());
    let o = run(who
        .hermit_in(&t.path().join("home"))
        .arg("build")
        .arg(&spec));
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("gone") && err.contains("nope.tar"), "{err}");
}

fn outputs_are_normalised_and_fifos_refused(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "echo x > $out/f; chmod 600 $out/f; echo y > $out/e; chmod 700 $out/e; ln -s f $out/link",
        "",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &[]);
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    let files = record["output"]["files"].as_array().unwrap();
    let mode = |p: &str| files.iter().find(|f| f["path"] == p).unwrap()["mode"].clone();
    assert_eq!(mode("f"), "0644");
    assert_eq!(mode("e"), "0755");
    assert_eq!(
        files.iter().find(|f| f["path"] == "link").unwrap()["target"],
        "f"
    );

    let t2 = who.scratch();
    let spec = project(t2.path(), "mkfifo $out/pipe", "");
    who.give(t2.path());
    let o = run(who
        .hermit_in(&t2.path().join("home"))
        .arg("build")
        .arg(&spec));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pipe"),
        "{}",
        both(&o)
    );
}

fn rebuild_from_the_record_alone_offline_from_a_mirror(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "cat /sources/src/hello.txt /sources/src/sub/data.txt > $out/both",
        "",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &[]);
    let record = t.path().join("kept-record.json");
    fs::copy(v["record"].as_str().unwrap(), &record).unwrap();
    let mirror = t.path().join("mirror");
    let o = run(who
        .hermit_in(&home)
        .arg("mirror")
        .arg(&record)
        .arg("--to")
        .arg(&mirror));
    assert!(o.status.success(), "{}", both(&o));

    // Nothing left but the mirror and the record: no store, no spec, no image.
    let o = run(Command::new("rm")
        .arg("-rf")
        .arg(&home)
        .arg(t.path().join("image"))
        .arg(t.path().join("src"))
        .arg(&spec));
    assert!(o.status.success());
    let o = run(who
        .hermit_in(&home)
        .arg("rebuild")
        .arg(&record)
        .arg("--offline")
        .arg("--mirror")
        .arg(&mirror));
    assert!(o.status.success(), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("identical:"), "{out}");
    assert!(out.contains(v["output_digest"].as_str().unwrap()), "{out}");

    // Offline without the mirror: fails first, naming what is missing.
    let o = run(who
        .hermit_in(&t.path().join("home2"))
        .arg("rebuild")
        .arg(&record)
        .arg("--offline"));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not in the store or any mirror"),
        "{}",
        both(&o)
    );
}

fn rebuild_reports_the_files_that_differ(who: As) {
    let t = who.scratch();
    let spec = project(
        t.path(),
        "echo same > $out/same; head -c 16 /dev/urandom > $out/random",
        "",
    );
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &[]);
    let o = run(who
        .hermit_in(&home)
        .arg("rebuild")
        .arg(v["record"].as_str().unwrap()));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("changed  random") && !out.contains("same"),
        "{out}"
    );
    assert!(out.contains("rebuilt output kept at"), "{out}");
}

fn provenance_of_a_real_build(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "echo hi > $out/hi", "");
    who.give(t.path());
    let home = t.path().join("home");
    let v = build_json(who, &home, &spec, &[]);
    let o = run(who
        .hermit_in(&home)
        .arg("provenance")
        .arg(v["record"].as_str().unwrap()));
    assert!(o.status.success(), "{}", both(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(p["predicateType"], "https://slsa.dev/provenance/v1");
    let want = v["output_digest"].as_str().unwrap();
    assert_eq!(p["subject"][0]["digest"]["sha256"], want[7..]);
    let deps = p["predicate"]["buildDefinition"]["resolvedDependencies"].to_string();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    let manifest = record["image"]["manifest"].as_str().unwrap();
    assert!(deps.contains(&manifest[7..]), "{deps}");
    let tree = record["sources"][0]["tree"].as_str().unwrap();
    assert!(deps.contains(&tree[7..]), "{deps}");
}

fn mirror_of_a_spec_lets_a_fresh_store_build_offline(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cp -R /sources/src $out/copy", "");
    who.give(t.path());
    let v = build_json(who, &t.path().join("home"), &spec, &[]);
    let mirror = t.path().join("mirror");
    let o = run(who
        .hermit_in(&t.path().join("home"))
        .arg("mirror")
        .arg(&spec)
        .arg("--to")
        .arg(&mirror));
    assert!(o.status.success(), "{}", both(&o));
    // The OCI layout is gone: the image must come from the mirror.
    fs::remove_dir_all(t.path().join("image")).unwrap();
    let v2 = build_json(
        who,
        &t.path().join("fresh"),
        &spec,
        &["--offline", "--mirror", mirror.to_str().unwrap()],
    );
    assert_eq!(v["output_digest"], v2["output_digest"]);
    assert_eq!(v2["cached"], false);
}

/// The README's example: a C program built with a bootstrapped Debian
/// toolchain by root, then from the same lock by an ordinary user in a store
/// of their own — whose bootstrap (mmdebstrap --mode=unshare) must give the
/// very image root's did (--mode=root), or the lock refuses it — to the same
/// bytes, and rebuilt by the user from the record.
#[test]
fn example_hello_is_reproducible_with_a_debian_toolchain() {
    crate::fixtures::ensure_subids();
    let t = As::User.scratch();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let dir = t.path().join("hello");
    fs::create_dir(&dir).unwrap();
    for f in ["spec.toml", "Makefile", "hello.c"] {
        fs::copy(example.join(f), dir.join(f)).unwrap();
    }
    let spec = dir.join("spec.toml");
    let a = build_json(
        As::Root,
        &t.path().join("a"),
        &spec,
        &["-o", dir.join("result").to_str().unwrap()],
    );
    assert!(dir.join("hermit.lock").is_file());
    let o = run(Command::new(dir.join("result/usr/bin/hello")).arg("tester"));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Hello, tester, from a hermetic build.\n"
    );

    // The quickstart as an ordinary user, in a store of their own.
    As::User.give(&dir);
    let user_result = dir.join("user-result");
    let b = build_json(
        As::User,
        &t.path().join("b"),
        &spec,
        &["-o", user_result.to_str().unwrap()],
    );
    assert_eq!(a["output_digest"], b["output_digest"]);
    assert_eq!(a["build_key"], b["build_key"]);
    let o = run(As::User
        .hermit_in(&t.path().join("b"))
        .arg("build")
        .arg(&spec));
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("cached"),
        "{}",
        both(&o)
    );

    let o = run(As::User
        .hermit_in(&t.path().join("b"))
        .arg("rebuild")
        .arg(b["record"].as_str().unwrap()));
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("identical:"),
        "{}",
        both(&o)
    );
}

fn build_over_an_image_pulled_by_digest_from_a_registry(who: As) {
    use crate::image::{push_busybox, start_registry};
    let t = who.scratch();
    let layout = t.path().join("layout");
    busybox_layout(&layout);
    let reg = start_registry();
    let (name, digest) = push_busybox(&reg, &layout);
    let write_spec = |d: &str| {
        let spec = t.path().join("spec.toml");
        fs::write(
            &spec,
            format!(
                "[package]\nname = \"pulled\"\nversion = \"1\"\n[toolchain]\nimage = \"{name}@{d}\"\n[build]\nscript = \"echo from-registry > $out/x\"\n"
            ),
        )
        .unwrap();
        let _ = fs::remove_file(t.path().join("hermit.lock"));
        spec
    };
    who.give(t.path());
    let spec = write_spec(&digest);
    let v = build_json(who, &t.path().join("home"), &spec, &[]);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("x")).unwrap(),
        "from-registry\n"
    );
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(record["image"]["manifest"], digest);

    // A digest the registry does not have: refused, nothing built.
    let wrong = format!("sha256:{}", "3".repeat(64));
    let spec = write_spec(&wrong);
    let o = run(who
        .hermit_in(&t.path().join("home2"))
        .arg("build")
        .arg(&spec));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&wrong) && err.contains("404"), "{err}");
    assert!(!t.path().join("home2/v1/outputs").exists());
}

both_users!(
    build_stores_output_and_record_then_hits_the_cache,
    same_spec_in_two_stores_from_two_dirs_gives_identical_outputs,
    failing_build_exits_non_zero_and_keeps_its_log_and_dir,
    build_timeout_is_enforced,
    stale_lock_is_an_error_naming_the_change,
    missing_remote_source_names_it_and_every_location,
    outputs_are_normalised_and_fifos_refused,
    rebuild_from_the_record_alone_offline_from_a_mirror,
    rebuild_reports_the_files_that_differ,
    provenance_of_a_real_build,
    mirror_of_a_spec_lets_a_fresh_store_build_offline,
    build_over_an_image_pulled_by_digest_from_a_registry,
);
