//! Issue 8, section 5: local sources stay inside the project, `store verify`
//! covers every bucket, and neither a cache hit nor a build serves a
//! tampered output or toolchain root filesystem silently. Every case runs as
//! root and as the unprivileged test user, each in a store of its own.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::both;
use crate::fixtures::{both_users, chown, output_within, As};
use crate::image::busybox_layout;

/// `hermit ARGS…` as `who`, with the store at `home`.
fn hermit(who: As, home: &Path, args: &[&str]) -> Output {
    let mut c: Command = who.hermit();
    c.env("HERMIT_HOME", home).args(args);
    output_within(&mut c, Duration::from_secs(120))
}

fn chown_tree(p: &Path, who: As) {
    chown(p, who.uid(), who.gid());
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), who);
        }
    }
}

/// A project owned by `who`: `dir/image` (busybox OCI layout), `dir/src`,
/// `dir/spec.toml` with the local source `src` at `path` and `script`.
/// Returns the spec's path.
fn project(who: As, dir: &Path, path: &str, script: &str) -> PathBuf {
    let manifest = busybox_layout(&dir.join("image"));
    fs::create_dir_all(dir.join("src/sub")).unwrap();
    fs::write(dir.join("src/hello.txt"), "hello\n").unwrap();
    fs::write(dir.join("src/sub/data.txt"), "data\n").unwrap();
    let spec = dir.join("spec.toml");
    fs::write(
        &spec,
        format!(
            "[package]\nname = \"demo\"\nversion = \"1.0\"\n\n[toolchain]\noci = \"image\"\ndigest = \"{manifest}\"\n\n[[source]]\nname = \"src\"\npath = \"{path}\"\n\n[build]\nscript = \"\"\"\n{script}\n\"\"\"\n"
        ),
    )
    .unwrap();
    chown_tree(dir, who);
    spec
}

fn build(who: As, home: &Path, spec: &Path) -> serde_json::Value {
    let o = hermit(who, home, &["build", spec.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Makes a read-only store directory writable again (as its owner would).
fn unseal(p: &Path) {
    let m = fs::symlink_metadata(p).unwrap();
    let mode = m.permissions().mode() | 0o200;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

const COPY: &str = "mkdir -p $out/bin\ncp /sources/src/hello.txt $out/greeting\necho note > $out/bin/note\nchmod 755 $out/bin/note";

both_users!(
    local_source_outside_the_project_is_refused,
    rebuild_reads_local_sources_from_the_store_only,
    cache_hit_rebuilds_a_tampered_output,
    verify_names_tampered_outputs_and_rootfs_and_repairs_them,
    tampered_rootfs_is_not_used_by_a_build,
    repair_of_a_layer_blob_drops_its_image,
);

fn local_source_outside_the_project_is_refused(who: As) {
    let s = who.scratch();
    let home = s.path().join("home");
    let decoy = s.path().join("decoy-ssh");
    fs::create_dir(&decoy).unwrap();
    fs::write(decoy.join("id_ed25519"), "SECRET-KEY\n").unwrap();
    chown_tree(&decoy, who);
    let dir = s.path().join("p");
    let steal = "cat /sources/src/id_ed25519 > $out/stolen";

    // An absolute path and a path with `..`: refused with file:line:col.
    for (path, what) in [
        (decoy.to_str().unwrap(), "absolute"),
        ("../decoy-ssh", ".."),
    ] {
        let spec = project(who, &dir, path, steal);
        let o = hermit(who, &home, &["build", spec.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{path}: {}", both(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{}:11:8:", spec.display())) && err.contains(what),
            "{path}: {err}"
        );
        assert!(err.contains("help:"), "{err}");
    }
    // A path inside the project that is a symlink leading out of it.
    symlink(&decoy, dir.join("keys")).unwrap();
    let spec = project(who, &dir, "keys", steal);
    let o = hermit(who, &home, &["build", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:11:8:", spec.display()))
            && err.contains("outside the project")
            && err.contains(decoy.to_str().unwrap()),
        "{err}"
    );
    // Also through a symlinked parent directory: `ssh/keys` where `ssh` leads out.
    fs::create_dir(decoy.join("keys")).unwrap();
    chown_tree(&decoy, who);
    symlink(&decoy, dir.join("ssh")).unwrap();
    let spec = project(who, &dir, "ssh/keys", steal);
    let o = hermit(who, &home, &["build", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stderr(&o).contains("outside the project"), "{}", both(&o));

    // A symlinked directory inside the tree is stored as a symlink, never
    // followed, and one leading outside the source is refused by name.
    symlink(&decoy, dir.join("src/leak")).unwrap();
    let spec = project(
        who,
        &dir,
        "src",
        "cat /sources/src/leak/id_ed25519 > $out/stolen",
    );
    let o = hermit(who, &home, &["build", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains("leak") && err.contains("leads outside") && err.contains("exclude"),
        "{err}"
    );
    // Nothing of the decoy reached the store.
    let found = Command::new("grep")
        .args(["-rl", "SECRET-KEY"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(found.stdout.is_empty(), "{}", both(&found));

    // A symlink inside the project to elsewhere inside it is fine.
    fs::remove_file(dir.join("src/leak")).unwrap();
    symlink("src", dir.join("alias")).unwrap();
    let spec = project(who, &dir, "alias", COPY);
    build(who, &home, &spec);
}

fn rebuild_reads_local_sources_from_the_store_only(who: As) {
    let s = who.scratch();
    let home = s.path().join("home");
    let dir = s.path().join("p");
    let spec = project(
        who,
        &dir,
        "src",
        "cat /sources/src/hello.txt > $out/greeting; ls /sources/src > $out/listing",
    );
    let v = build(who, &home, &spec);
    // The project's source directory now leads to a decoy.
    let decoy = s.path().join("decoy");
    fs::create_dir(&decoy).unwrap();
    fs::write(decoy.join("hello.txt"), "DECOY\n").unwrap();
    chown_tree(&decoy, who);
    fs::remove_dir_all(dir.join("src")).unwrap();
    symlink(&decoy, dir.join("src")).unwrap();
    let o = hermit(who, &home, &["rebuild", v["record"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("identical:"),
        "{}",
        both(&o)
    );
    // A record whose local source path leads out of its project (the path
    // is not part of the build key) is refused, not rebuilt.
    let text = fs::read_to_string(v["record"].as_str().unwrap()).unwrap();
    assert!(text.contains("\"path\": \"src\""), "{text}");
    let edited = s.path().join("edited.json");
    fs::write(
        &edited,
        text.replace(
            "\"path\": \"src\"",
            &format!("\"path\": {:?}", decoy.display().to_string()),
        ),
    )
    .unwrap();
    chown(&edited, who.uid(), who.gid());
    let o = hermit(who, &home, &["rebuild", edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains("local source \"src\" has the path")
            && stderr(&o).contains("leaves the spec's project"),
        "{}",
        both(&o)
    );
}

fn cache_hit_rebuilds_a_tampered_output(who: As) {
    let s = who.scratch();
    let home = s.path().join("home");
    let spec = project(who, &s.path().join("p"), "src", COPY);
    let v = build(who, &home, &spec);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    let key = v["build_key"].as_str().unwrap().to_string();

    type Tamper = fn(&Path);
    let tampers: [(&str, Tamper); 4] = [
        ("a byte changed", |out| {
            let f = out.join("greeting");
            unseal(&f);
            fs::write(&f, "hellO\n").unwrap();
        }),
        ("a file added", |out| {
            unseal(&out.join("bin"));
            fs::write(out.join("bin/extra"), "x").unwrap();
        }),
        ("a mode changed", |out| {
            fs::set_permissions(out.join("greeting"), fs::Permissions::from_mode(0o555)).unwrap();
        }),
        ("a file removed", |out| {
            unseal(out);
            fs::remove_file(out.join("greeting")).unwrap();
        }),
    ];
    for (what, tamper) in tampers {
        tamper(&out);
        let o = hermit(who, &home, &["build", spec.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{what}: {}", both(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("the stored output of build key {key} is corrupt"))
                && err.contains("rebuilding"),
            "{what}: {err}"
        );
        let v2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v2["cached"], false, "{what}");
        assert_eq!(v2["output_digest"], v["output_digest"], "{what}");
        assert_eq!(
            fs::read_to_string(out.join("greeting")).unwrap(),
            "hello\n",
            "{what}"
        );
        assert!(!out.join("bin/extra").exists(), "{what}");
        // The replacement is intact: the next build is a plain cache hit.
        let o = hermit(who, &home, &["build", spec.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{what}: {}", both(&o));
        assert!(!stderr(&o).contains("corrupt"), "{what}: {}", both(&o));
        let v3: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v3["cached"], true, "{what}");
    }

    // Another build's record moved under this build key is not served either.
    let spec2 = project(who, &s.path().join("q"), "src", "echo other > $out/other");
    let v2 = build(who, &home, &spec2);
    let rec = PathBuf::from(v["record"].as_str().unwrap());
    let text = fs::read_to_string(&rec).unwrap();
    unseal(rec.parent().unwrap());
    let _ = fs::set_permissions(&rec, fs::Permissions::from_mode(0o644));
    fs::remove_file(&rec).unwrap();
    fs::copy(v2["record"].as_str().unwrap(), &rec).unwrap();
    let o = hermit(who, &home, &["build", spec.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        stderr(&o).contains(&format!(
            "is corrupt: its record is the record of build key {}",
            v2["build_key"].as_str().unwrap()
        )),
        "{}",
        both(&o)
    );
    let now: serde_json::Value = serde_json::from_str(&fs::read_to_string(&rec).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(now["build_key"], before["build_key"]);
    assert_eq!(now["output"], before["output"]);

    // `hermit rebuild` that comes out identical puts its output in place of
    // a corrupt stored one, rather than keeping the corrupt one.
    let kept = s.path().join("kept-record.json");
    fs::copy(&rec, &kept).unwrap();
    chown(&kept, who.uid(), who.gid());
    let f = out.join("greeting");
    unseal(&f);
    fs::write(&f, "hellO\n").unwrap();
    let o = hermit(who, &home, &["rebuild", kept.to_str().unwrap()]);
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        stderr(&o).contains("is corrupt")
            && stderr(&o).contains("replacing it with the rebuilt one"),
        "{}",
        both(&o)
    );
    assert_eq!(fs::read_to_string(out.join("greeting")).unwrap(), "hello\n");
    let o = hermit(who, &home, &["store", "verify"]);
    assert!(o.status.success(), "{}", both(&o));
}

fn verify_names_tampered_outputs_and_rootfs_and_repairs_them(who: As) {
    let s = who.scratch();
    let home = s.path().join("home");
    let spec = project(who, &s.path().join("p"), "src", COPY);
    let v = build(who, &home, &spec);
    let o = hermit(who, &home, &["store", "verify"]);
    assert!(o.status.success(), "{}", both(&o));
    let ok = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(ok.contains("none corrupt"), "{ok}");

    // Tamper with the output and with the toolchain's root filesystem.
    let out = PathBuf::from(v["output"].as_str().unwrap());
    let f = out.join("bin/note");
    unseal(&f);
    fs::write(&f, "changed\n").unwrap();
    let rootfs = fs::read_dir(home.join("v1/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    unseal(&rootfs.join("bin"));
    fs::write(rootfs.join("bin/evil"), "#!/bin/sh\n").unwrap();
    // And with the image record: its layer replaced by its config.
    let image = rootfs.with_extension("json");
    let image = home.join("v1/images").join(image.file_name().unwrap());
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&image).unwrap()).unwrap();
    let layer = rec["layers"][0]["digest"].as_str().unwrap();
    let config = rec["config"].as_str().unwrap();
    let text = fs::read_to_string(&image).unwrap().replace(layer, config);
    fs::write(&image, text).unwrap();

    let o = hermit(who, &home, &["store", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "corrupt output: {}",
            out.parent().unwrap().display()
        )) && err.contains("bin/note"),
        "{err}"
    );
    assert!(
        err.contains(&format!("corrupt rootfs: {}", rootfs.display())) && err.contains("bin/evil"),
        "{err}"
    );
    assert!(
        err.contains(&format!("corrupt image record: {}", image.display()))
            && err.contains("not the ones its manifest"),
        "{err}"
    );
    assert!(err.contains("hermit store verify --repair"), "{err}");

    let o = hermit(who, &home, &["store", "verify", "--repair"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "removed output {}",
            out.parent().unwrap().display()
        )) && text.contains(&format!("removed rootfs {}", rootfs.display())),
        "{}",
        both(&o)
    );
    assert!(!out.exists() && !rootfs.exists() && !image.exists());
    let o = hermit(who, &home, &["store", "verify"]);
    assert!(o.status.success(), "{}", both(&o));

    // The next build makes both again, the same bytes.
    let v2 = build(who, &home, &spec);
    assert_eq!(v2["cached"], false);
    assert_eq!(v2["output_digest"], v["output_digest"]);
    assert!(!rootfs.join("bin/evil").exists() && rootfs.is_dir());
    let o = hermit(who, &home, &["store", "verify"]);
    assert!(o.status.success(), "{}", both(&o));
}

fn tampered_rootfs_is_not_used_by_a_build(who: As) {
    let s = who.scratch();
    let home = s.path().join("home");
    let spec = project(who, &s.path().join("p"), "src", COPY);
    build(who, &home, &spec);
    let rootfs = fs::read_dir(home.join("v1/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    unseal(&rootfs.join("bin"));
    fs::write(rootfs.join("bin/evil"), "planted\n").unwrap();

    // Another build over the same image.
    let spec2 = project(
        who,
        &s.path().join("q"),
        "src",
        "ls /bin > $out/bin-listing",
    );
    let o = hermit(who, &home, &["build", spec2.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains("toolchain root filesystem")
            && err.contains("is corrupt")
            && err.contains("bin/evil")
            && err.contains("unpacking it again"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listing =
        fs::read_to_string(Path::new(v["output"].as_str().unwrap()).join("bin-listing")).unwrap();
    assert!(!listing.contains("evil"), "{listing}");
    assert!(!rootfs.join("bin/evil").exists());

    // A rootfs with nothing recorded (as an older hermit made them) cannot
    // be checked: it is extracted again before use.
    fs::remove_file(rootfs.with_extension("json")).unwrap();
    unseal(&rootfs.join("bin"));
    fs::write(rootfs.join("bin/evil"), "planted\n").unwrap();
    let spec3 = project(who, &s.path().join("r"), "src", "ls /bin > $out/again");
    let o = hermit(who, &home, &["build", spec3.to_str().unwrap()]);
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        stderr(&o)
            .contains("was made by an older hermit and cannot be checked; unpacking it again"),
        "{}",
        both(&o)
    );
    assert!(!rootfs.join("bin/evil").exists() && rootfs.with_extension("json").is_file());
}

fn repair_of_a_layer_blob_drops_its_image(who: As) {
    let s = who.scratch();
    let home = s.path().join("home");
    let spec = project(who, &s.path().join("p"), "src", COPY);
    let v = build(who, &home, &spec);
    let images = home.join("v1/images");
    let image = fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&image).unwrap()).unwrap();
    let layer = rec["layers"][0]["digest"].as_str().unwrap();
    let blob = home.join("v1/blobs/sha256").join(&layer[7..]);
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    fs::write(&blob, bytes).unwrap();

    let o = hermit(who, &home, &["store", "verify", "--repair"]);
    assert!(o.status.success(), "{}", both(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains(&format!("removed blob {}", blob.display()))
            && text.contains(&format!("removed image record {}", image.display())),
        "{}",
        both(&o)
    );
    let o = hermit(who, &home, &["store", "verify"]);
    assert!(o.status.success(), "{}", both(&o));
    // The image comes back from the project's layout; the output is intact.
    let v2 = build(who, &home, &spec);
    assert_eq!(v2["cached"], true);
    assert_eq!(v2["output_digest"], v["output_digest"]);
    let spec2 = project(who, &s.path().join("q"), "src", "echo again > $out/x");
    build(who, &home, &spec2);
    assert!(image.is_file() && blob.is_file());
}
