//! Issue 8, section 1: an ordinary user builds, unpacks, adds and collects
//! in a store of their own exactly as root does; a store that belongs to
//! someone else is refused at open with one error naming the fix.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::http_server::{Behaviour, Server};
use crate::image::busybox_layout;

/// A gzipped tar holding `pkg/hello.txt` and `pkg/bin/run` (executable).
fn archive(dir: &Path) -> Vec<u8> {
    let src = dir.join("archive-src");
    fs::create_dir_all(src.join("pkg/bin")).unwrap();
    fs::write(src.join("pkg/hello.txt"), "unpacked hello\n").unwrap();
    fs::write(src.join("pkg/bin/run"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(src.join("pkg/bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    let tgz = dir.join("pkg.tar.gz");
    let o = run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&tgz)
        .arg("pkg"));
    assert!(o.status.success(), "{}", both(&o));
    fs::remove_dir_all(&src).unwrap();
    fs::read(&tgz).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// A build over an OCI image (so the image's rootfs is unpacked into the
/// store) with an `unpack = true` source fetched from a loopback server,
/// then the same build again (a cache hit), then gc.
fn user_builds_over_an_image_with_an_unpacked_source(who: As) {
    let t = who.scratch();
    let dir = t.path();
    let manifest = busybox_layout(&dir.join("image"));
    let tgz = archive(dir);
    let server = Server::start();
    server.route("/pkg.tar.gz", Behaviour::File(tgz.clone()));
    let spec = dir.join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"[package]
name = "unpacked"
version = "1"

[toolchain]
oci = "image"
digest = "{manifest}"

[[source]]
name = "pkg"
urls = ["{url}"]
sha256 = "{sha}"
unpack = true
strip_components = 1

[build]
script = "cat /sources/pkg/hello.txt > $out/hello; /sources/pkg/bin/run > $out/ran"
"#,
            url = server.url("/pkg.tar.gz"),
            sha = sha256_hex(&tgz),
        ),
    )
    .unwrap();
    who.give(dir);
    let home = dir.join("home");
    let o = run(who.hermit_in(&home).arg("build").arg(&spec).arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let out = Path::new(v["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("hello")).unwrap(),
        "unpacked hello\n"
    );
    assert_eq!(fs::read_to_string(out.join("ran")).unwrap(), "run\n");
    // Everything hermit made belongs to the caller, and the entries are sealed.
    for p in [home.join("v1"), out.to_path_buf()] {
        assert_eq!(
            fs::metadata(&p).unwrap().uid(),
            who.uid(),
            "{}",
            p.display()
        );
    }
    let rootfs = home.join("v1/rootfs").join(&manifest[7..]);
    assert_eq!(fs::metadata(&rootfs).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(fs::metadata(out).unwrap().mode() & 0o7777, 0o555);

    let o = run(who.hermit_in(&home).arg("build").arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cached"),
        "{}",
        both(&o)
    );
    let o = run(who.hermit_in(&home).args(["store", "verify"]));
    assert!(o.status.success(), "{}", both(&o));
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

/// `store add DIR`, `store unpack`, `store verify` and `store gc` as the
/// caller: the read-only trees go in, and gc takes them out again.
fn user_adds_unpacks_and_collects_read_only_trees(who: As) {
    let t = who.scratch();
    let dir = t.path();
    fs::create_dir_all(dir.join("tree/sub")).unwrap();
    fs::write(dir.join("tree/sub/f"), "f\n").unwrap();
    fs::write(dir.join("pkg.tar.gz"), archive(dir)).unwrap();
    who.give(dir);
    let home = dir.join("home");
    let hermit = || who.hermit_in(&home);
    let o = run(hermit().args(["store", "add"]).arg(dir.join("tree")));
    assert!(o.status.success(), "{}", both(&o));
    let tree = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let tree_dir = home.join("v1/trees").join(&tree[7..]);
    assert_eq!(fs::metadata(&tree_dir).unwrap().mode() & 0o7777, 0o555);
    let o = run(hermit().args(["store", "add"]).arg(dir.join("pkg.tar.gz")));
    assert!(o.status.success(), "{}", both(&o));
    let blob = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = run(hermit().args(["store", "unpack", &blob]));
    assert!(o.status.success(), "{}", both(&o));
    let unpacked = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(
        fs::read_to_string(Path::new(&unpacked).join("pkg/hello.txt")).unwrap(),
        "unpacked hello\n"
    );
    assert_eq!(fs::metadata(&unpacked).unwrap().mode() & 0o7777, 0o555);
    let o = run(hermit().args(["store", "verify"]));
    assert!(o.status.success(), "{}", both(&o));

    // Nothing is pinned: gc removes the tree, the unpacked tree and the blob.
    let o = run(hermit().args(["store", "gc"]));
    assert!(o.status.success(), "{}", both(&o));
    assert!(!tree_dir.exists(), "{}", both(&o));
    assert!(!Path::new(&unpacked).exists(), "{}", both(&o));
    assert_eq!(count(&home.join("v1/trees")), 0);
    assert_eq!(count(&home.join("v1/unpacked")), 0);
    assert_eq!(count(&home.join("v1/blobs/sha256")), 0);
}

/// A hermit killed between renaming a tree into place and sealing its top
/// leaves a complete entry: `verify` accepts it and seals it.
fn an_entry_whose_seal_was_interrupted_is_complete_and_resealed(who: As) {
    let t = who.scratch();
    let dir = t.path();
    fs::create_dir_all(dir.join("tree")).unwrap();
    fs::write(dir.join("tree/f"), "f\n").unwrap();
    who.give(dir);
    let home = dir.join("home");
    let o = run(who
        .hermit_in(&home)
        .args(["store", "add"])
        .arg(dir.join("tree")));
    assert!(o.status.success(), "{}", both(&o));
    let tree = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let tree_dir = home.join("v1/trees").join(&tree[7..]);
    // The state right after the rename: the top still writable.
    fs::set_permissions(&tree_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(who.hermit_in(&home).args(["store", "verify"]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(fs::metadata(&tree_dir).unwrap().mode() & 0o7777, 0o555);
}

both_users!(
    user_builds_over_an_image_with_an_unpacked_source,
    user_adds_unpacks_and_collects_read_only_trees,
    an_entry_whose_seal_was_interrupted_is_complete_and_resealed,
);

/// Runs `store add` as `who` on a store at `home`, returning the output.
fn add_as(who: As, home: &Path, file: &Path) -> std::process::Output {
    run(who.hermit_in(home).args(["store", "add"]).arg(file))
}

fn assert_refused_naming(o: &std::process::Output, path: &Path, words: &[&str]) {
    assert_eq!(o.status.code(), Some(2), "{}", both(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert_eq!(err.matches("error:").count(), 1, "one error: {err}");
}

/// A store root created is used by the test user: refused at open, naming
/// the path, its owner and the fix; nothing is written into it.
#[test]
fn a_store_of_root_is_refused_to_the_user_with_the_fix() {
    let t = As::User.scratch();
    let file = t.path().join("f");
    fs::write(&file, "f\n").unwrap();
    As::User.give(t.path());
    let home = t.path().join("roots-store");
    let o = add_as(As::Root, &home, &file);
    assert!(o.status.success(), "{}", both(&o));
    let before = count(&home.join("v1/blobs/sha256"));
    let o = add_as(As::User, &home, &file);
    assert_refused_naming(
        &o,
        &home,
        &["owned by uid 0 (root)", "HERMIT_HOME", "chown"],
    );
    assert_eq!(count(&home.join("v1/blobs/sha256")), before);
}

/// The reverse: root does not silently fill a user's store with files the
/// user could then neither lock nor remove.
#[test]
fn root_refuses_to_write_into_a_users_store() {
    let t = As::User.scratch();
    let file = t.path().join("f");
    fs::write(&file, "f\n").unwrap();
    As::User.give(t.path());
    let home = t.path().join("users-store");
    let o = add_as(As::User, &home, &file);
    assert!(o.status.success(), "{}", both(&o));
    let o = add_as(As::Root, &home, &file);
    assert_refused_naming(
        &o,
        &home,
        &[
            &format!("owned by uid {}", As::User.uid()),
            "HERMIT_HOME",
            "chown",
        ],
    );
    // The user's store is still entirely the user's.
    let o = run(Command::new("find")
        .arg(&home)
        .args(["!", "-uid", &As::User.uid().to_string()]));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "{}", both(&o));
}

/// A part of one's own store that is not writable (here `v1/blobs/sha256`)
/// is named at open, with the fix.
#[test]
fn a_read_only_part_of_the_store_is_named_at_open() {
    let who = As::User;
    let t = who.scratch();
    let file = t.path().join("f");
    fs::write(&file, "f\n").unwrap();
    who.give(t.path());
    let home = t.path().join("home");
    let o = add_as(who, &home, &file);
    assert!(o.status.success(), "{}", both(&o));
    let blobs = home.join("v1/blobs/sha256");
    fs::set_permissions(&blobs, fs::Permissions::from_mode(0o555)).unwrap();
    let o = run(who.hermit_in(&home).args(["store", "verify"]));
    assert_refused_naming(&o, &blobs, &["not writable", "chmod u+w"]);
}
