//! Cache hits end to end: a local `path` source is hashed (or answered from
//! the stat cache) at resolve, an edit changes the build key, an unchanged
//! tree is a cache hit; a stored output is checked by its stat fingerprint
//! once settled, and tampering that keeps sizes and mtimes is still caught.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::build::project;
use crate::common::{both, run};
use crate::fixtures::{both_users, As};

fn build(who: As, home: &Path, spec: &Path) -> serde_json::Value {
    let o = run(who.hermit_in(home).arg("build").arg(spec).arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

fn tree_of(v: &serde_json::Value) -> String {
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    record["sources"][0]["tree"].as_str().unwrap().to_string()
}

fn editing_a_local_source_changes_the_key_and_an_unchanged_one_hits(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "cat /sources/src/hello.txt > $out/greeting", "");
    who.give(t.path());
    let home = t.path().join("home");
    let first = build(who, &home, &spec);
    assert_eq!(first["cached"], false);
    let tree = tree_of(&first);
    // Materialised for the build: the canonical tar is in the store.
    assert!(home.join("v1/blobs/sha256").join(&tree[7..]).is_file());
    // The stat cache remembers the tree.
    let cache = home.join("v1/cache/localtree");
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);

    // Let the files settle, so that the next resolve can trust their stat
    // data (racily clean entries are hashed again).
    std::thread::sleep(Duration::from_millis(2100));
    let again = build(who, &home, &spec);
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(again["build_key"], first["build_key"]);
    std::thread::sleep(Duration::from_millis(2100));
    let settled = build(who, &home, &spec);
    assert_eq!(settled["cached"], true);
    assert_eq!(settled["build_key"], first["build_key"]);

    // One file edited: same size, its mtime put back with `touch -d`. Only
    // its ctime tells — and that is enough.
    let file = t.path().join("src/hello.txt");
    let old = fs::symlink_metadata(&file).unwrap();
    fs::write(&file, "HELLO\n").unwrap();
    restore_mtime(&file, &old);
    assert_eq!(fs::symlink_metadata(&file).unwrap().mtime(), old.mtime());
    let edited = build(who, &home, &spec);
    assert_eq!(edited["cached"], false);
    assert_ne!(edited["build_key"], first["build_key"]);
    assert_ne!(tree_of(&edited), tree);
    let out = Path::new(edited["output"].as_str().unwrap());
    assert_eq!(fs::read_to_string(out.join("greeting")).unwrap(), "HELLO\n");

    // Unchanged since: a cache hit with the new key.
    let hit = build(who, &home, &spec);
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["build_key"], edited["build_key"]);

    // A corrupt stat cache is ignored, never fatal.
    for e in fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        let mut data = fs::read(&p).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xff;
        fs::write(&p, data).unwrap();
    }
    let hit = build(who, &home, &spec);
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["build_key"], edited["build_key"]);

    // The edit undone: the first build's key and output again.
    fs::write(&file, "hello\n").unwrap();
    let back = build(who, &home, &spec);
    assert_eq!(back["cached"], true);
    assert_eq!(back["build_key"], first["build_key"]);
}

/// Puts back `file`'s mtime as `old` had it (`touch -d`).
fn restore_mtime(file: &Path, old: &fs::Metadata) {
    let status = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{}.{:09}", old.mtime(), old.mtime_nsec()))
        .arg(file)
        .status()
        .unwrap();
    assert!(status.success());
}

fn a_settled_output_is_checked_by_fingerprint_and_tampering_is_caught(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), "echo hello > $out/greeting", "");
    who.give(t.path());
    let home = t.path().join("home");
    let first = build(who, &home, &spec);
    let key = first["build_key"].as_str().unwrap().to_string();
    let saved = home.join("v1/cache/outputs").join(&key[7..]);
    // Fresh: hashed in full on a hit, no fingerprint kept yet.
    let hit = build(who, &home, &spec);
    assert_eq!(hit["cached"], true);
    std::thread::sleep(Duration::from_millis(2100));
    let hit = build(who, &home, &spec);
    assert_eq!(hit["cached"], true);
    assert!(saved.is_file(), "a settled output's fingerprint is kept");
    let hit = build(who, &home, &spec);
    assert_eq!(hit["cached"], true);

    // Same size, mtime put back: only the ctime moved.
    let out = Path::new(first["output"].as_str().unwrap());
    let f = out.join("greeting");
    let old = fs::symlink_metadata(&f).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&f, "hellO\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(old.mode() & 0o7777)).unwrap();
    restore_mtime(&f, &old);
    let o = run(who.hermit_in(&home).arg("build").arg(&spec).arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("the stored output of build key {key} is corrupt")),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cached"], false);
    assert_eq!(fs::read_to_string(&f).unwrap(), "hello\n");

    // A forged fingerprint file matching nothing is only a full check.
    fs::write(&saved, "sha256:0000\n").unwrap();
    let hit = build(who, &home, &spec);
    assert_eq!(hit["cached"], true);
}

both_users!(
    editing_a_local_source_changes_the_key_and_an_unchanged_one_hits,
    a_settled_output_is_checked_by_fingerprint_and_tampering_is_caught,
);
