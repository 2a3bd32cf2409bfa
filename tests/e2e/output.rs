//! `hermit output` and `hermit provenance` on real trees, checked against
//! GNU tar.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Creates the same logical tree under `dir` with a shell, in an order, a
/// umask and with mtimes and owners of the caller's choosing.
fn make_tree(dir: &Path, umask: &str, reverse: bool, mtime: &str, owner: &str) {
    let mut steps = [
        "printf '#!/bin/sh\\necho hi\\n' > bin/tool && chmod u+x bin/tool",
        "printf 'lib' > lib/libx.so.1 && ln -s libx.so.1 lib/libx.so",
        "head -c 70000 /dev/zero | tr '\\0' 'z' > lib/deep/er/big",
        "printf 'doc' > share/doc/README && : > share/doc/empty && mkdir share/empty-dir",
        "printf 'dash' > lib-x && printf 'dot' > lib.x",
    ];
    let mkdir = if reverse {
        steps.reverse();
        "mkdir -p share/doc lib/deep/er bin"
    } else {
        "mkdir -p bin lib/deep/er share/doc"
    };
    let script = format!(
        "set -e; umask {umask}; cd '{}'; {mkdir}; {}; find . -exec touch -h -d '{mtime}' {{}} +; chown -hR {owner} .",
        dir.display(),
        steps.join("; ")
    );
    let o = run(Command::new("sh").arg("-c").arg(&script));
    assert!(o.status.success(), "{}", both(&o));
}

fn hash(who: As, home: &Path, dir: &Path) -> String {
    let o = run(who.hermit_in(home).args(["output", "hash"]).arg(dir));
    assert!(o.status.success(), "{}", both(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn output_digest_ignores_umask_order_mtime_and_owner(who: As) {
    let t = who.scratch();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    make_tree(&a, "022", false, "2001-02-03 04:05:06", "0:0");
    // Another owner: a stranger for root; the caller itself for a user (who
    // could not read a stranger's 077 tree).
    let owner = match who {
        As::Root => "1234:5678".to_string(),
        As::User => format!("{}:{}", who.uid(), who.gid()),
    };
    make_tree(&b, "077", true, "2024-12-31 23:59:59", &owner);
    let (da, db) = (hash(who, t.path(), &a), hash(who, t.path(), &b));
    assert!(da.starts_with("sha256:") && da.len() == 71, "{da}");
    assert_eq!(da, db);
    // A content change, an x bit, or a rename each change the digest.
    fs::write(b.join("share/doc/README"), "Doc").unwrap();
    assert_ne!(hash(who, t.path(), &b), da);
    fs::write(b.join("share/doc/README"), "doc").unwrap();
    assert_eq!(hash(who, t.path(), &b), da);
    fs::set_permissions(b.join("lib-x"), fs::Permissions::from_mode(0o744)).unwrap();
    assert_ne!(hash(who, t.path(), &b), da);
}

fn output_tar_is_gnu_tar_readable_sorted_and_normalised(who: As) {
    let t = who.scratch();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    make_tree(&src, "002", false, "2010-01-01 00:00:00", "42:43");
    let tar = t.path().join("out.tar");
    let o = run(who
        .hermit_in(t.path())
        .args(["output", "tar", "--source-date-epoch", "1000000000"])
        .arg(&src)
        .arg("-o")
        .arg(&tar));
    assert!(o.status.success(), "{}", both(&o));
    let digest = String::from_utf8_lossy(&o.stderr).trim().to_string();
    let bytes = fs::read(&tar).unwrap();
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(digest, format!("sha256:{want}"));

    let o = run(Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf"])
        .arg(&tar)
        .env("TZ", "UTC"));
    assert!(o.status.success(), "{}", both(&o));
    let listing = String::from_utf8(o.stdout).unwrap();
    let mut names = Vec::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "0/0", "{line}");
        assert_eq!(
            format!("{} {}", f[3], f[4]),
            "2001-09-09 01:46:40",
            "{line}"
        );
        let mode = f[0];
        assert!(
            ["-rw-r--r--", "-rwxr-xr-x", "drwxr-xr-x", "lrwxrwxrwx"].contains(&mode),
            "{line}"
        );
        names.push(f[5].trim_end_matches('/').to_string());
    }
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(names, sorted);
    assert!(names.iter().position(|n| n == "lib-x") < names.iter().position(|n| n == "lib/deep"));
    assert!(listing.contains("lib/libx.so -> libx.so.1"), "{listing}");
    assert!(
        listing.contains("-rwxr-xr-x 0/0              18 2001-09-09 01:46:40 bin/tool"),
        "{listing}"
    );

    // GNU tar sees the same set of names in the tree itself.
    let o2 = run(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name -cf - -C '{}' . | tar -tf -",
        src.display()
    )));
    assert!(o2.status.success(), "{}", both(&o2));
    let mut gnu: Vec<String> = String::from_utf8(o2.stdout)
        .unwrap()
        .lines()
        .filter(|l| *l != "./")
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    gnu.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(names, gnu);

    // Extracting with GNU tar and hashing again gives the same digest.
    let back = t.path().join("back");
    fs::create_dir_all(&back).unwrap();
    let o = run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&back));
    assert!(o.status.success(), "{}", both(&o));
    let o = run(who
        .hermit_in(t.path())
        .args(["output", "hash", "--source-date-epoch", "1000000000"])
        .arg(&back));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        digest,
        "{}",
        both(&o)
    );

    // `-o -` streams the same bytes.
    let o = run(who
        .hermit_in(t.path())
        .args([
            "output",
            "tar",
            "--source-date-epoch",
            "1000000000",
            "-o",
            "-",
        ])
        .arg(&src));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(o.stdout, bytes);
}

fn output_hash_json_lists_every_entry(who: As) {
    let t = who.scratch();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    make_tree(&src, "022", false, "2010-01-01 00:00:00", "0:0");
    let o = run(who
        .hermit_in(t.path())
        .args(["output", "hash", "--json"])
        .arg(&src));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    let get = |p: &str| files.iter().find(|f| f["path"] == p).unwrap().clone();
    assert_eq!(get("bin/tool")["mode"], "0755");
    assert_eq!(get("bin/tool")["type"], "file");
    assert_eq!(get("lib/libx.so")["target"], "libx.so.1");
    assert_eq!(get("lib/libx.so")["type"], "symlink");
    assert_eq!(get("share/empty-dir")["type"], "directory");
    let big = get("lib/deep/er/big");
    assert_eq!(big["size"], 70000);
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(vec![b'z'; 70000]));
    assert_eq!(big["sha256"], format!("sha256:{want}"));
    assert_eq!(v["digest"], hash(who, t.path(), &src));
    assert_eq!(v["source_date_epoch"], 315532800);
}

fn output_golden_digest_of_a_small_tree(who: As) {
    // The same tree as the unit test `golden_digest_of_a_small_tree`.
    let t = who.scratch();
    let dir = t.path().join("o");
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("share/doc")).unwrap();
    fs::write(dir.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    fs::set_permissions(dir.join("bin/hello"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.join("share/doc/README"), b"hello docs\n").unwrap();
    fs::write(dir.join("a-b"), b"").unwrap();
    symlink("hello", dir.join("bin/hi")).unwrap();
    who.give(&dir);
    let want = fs::read_to_string(repo().join("tests/data/outputs/small-tree.digest")).unwrap();
    assert_eq!(hash(who, t.path(), &dir), want.trim());
}

fn output_refuses_fifo_socket_and_device_naming_them(who: As) {
    let t = who.scratch();
    let dir = t.path().join("o");
    fs::create_dir_all(dir.join("run")).unwrap();
    nix::unistd::mkfifo(&dir.join("run/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let o = run(who.hermit_in(t.path()).args(["output", "hash"]).arg(&dir));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"run/fifo\" is a fifo"),
        "{}",
        both(&o)
    );
    fs::remove_file(dir.join("run/fifo")).unwrap();

    let _sock = std::os::unix::net::UnixListener::bind(dir.join("run/sock")).unwrap();
    let o = run(who.hermit_in(t.path()).args(["output", "hash"]).arg(&dir));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"run/sock\" is a socket"),
        "{}",
        both(&o)
    );
    assert_eq!(o.status.code(), Some(2));
    fs::remove_file(dir.join("run/sock")).unwrap();

    // A character device, made visible in a private mount namespace by
    // bind-mounting /dev/null over a file (works rootless as well).
    fs::write(dir.join("run/null"), b"").unwrap();
    let script = format!(
        "mount --bind /dev/null '{d}/run/null' && exec '{bin}' output hash '{d}'",
        d = dir.display(),
        // the fixture's copy: any user can run it, wherever the checkout is
        bin = crate::fixtures::fixture().hermit.display()
    );
    let mut unshare = match who {
        As::Root => Command::new("unshare"),
        As::User => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", who.uid()))
                .arg(format!("--regid={}", who.gid()))
                .args(["--clear-groups", "--", "unshare"]);
            c
        }
    };
    let o = run(unshare
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(&script));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"run/null\" is a character device"),
        "{}",
        both(&o)
    );
}

fn output_refuses_escaping_symlinks_unless_allowed(who: As) {
    let t = who.scratch();
    let dir = t.path().join("o");
    fs::create_dir_all(dir.join("lib")).unwrap();
    symlink("../../etc/passwd", dir.join("lib/pw")).unwrap();
    let o = run(who.hermit_in(t.path()).args(["output", "hash"]).arg(&dir));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("\"lib/pw\"") && err.contains("outside the output"),
        "{err}"
    );
    let o = run(who
        .hermit_in(t.path())
        .args(["output", "hash", "--allow-external-symlinks"])
        .arg(&dir));
    assert!(o.status.success(), "{}", both(&o));
}

fn output_provenance_of_the_golden_record(who: As) {
    let t = who.scratch();
    // A copy the caller can read, wherever the checkout is.
    let rec = t.path().join("record-v1.json");
    fs::copy(repo().join("tests/data/records/record-v1.json"), &rec).unwrap();
    let o = run(who.hermit_in(t.path()).arg("provenance").arg(&rec));
    assert!(o.status.success(), "{}", both(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r: serde_json::Value = serde_json::from_str(&fs::read_to_string(&rec).unwrap()).unwrap();
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(s["predicateType"], "https://slsa.dev/provenance/v1");
    let out = r["output"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert_eq!(s["subject"][0]["digest"]["sha256"], out);
    let deps = s["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let has = |d: &serde_json::Value| {
        let hex = d.as_str().unwrap().trim_start_matches("sha256:");
        deps.iter().any(|x| x["digest"]["sha256"] == hex)
    };
    assert!(has(&r["image"]["manifest"]));
    assert!(has(&r["image"]["config"]));
    for l in r["image"]["layers"].as_array().unwrap() {
        assert!(has(&l["digest"]));
    }
    for src in r["sources"].as_array().unwrap() {
        assert!(
            has(if src["kind"] == "remote" {
                &src["sha256"]
            } else {
                &src["tree"]
            }),
            "{src}"
        );
    }

    // A record from a future hermit gets one clear error and exit code 2.
    let future = t.path().join("future.json");
    let text = fs::read_to_string(&rec)
        .unwrap()
        .replace("\"record_version\": 1", "\"record_version\": 9");
    fs::write(&future, text).unwrap();
    let o = run(who.hermit_in(t.path()).arg("provenance").arg(&future));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("future.json has record_version 9"), "{err}");
}

both_users!(
    output_digest_ignores_umask_order_mtime_and_owner,
    output_tar_is_gnu_tar_readable_sorted_and_normalised,
    output_hash_json_lists_every_entry,
    output_golden_digest_of_a_small_tree,
    output_refuses_fifo_socket_and_device_naming_them,
    output_refuses_escaping_symlinks_unless_allowed,
    output_provenance_of_the_golden_record,
);
