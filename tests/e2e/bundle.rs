//! Bundles: `hermit export` writes one file (an oci-archive) that holds a
//! build; `hermit import`, `hermit verify` and `hermit rebuild BUNDLE`
//! check every digest before anything enters the store; a bundle pushed to
//! a registry with skopeo rebuilds by reference; a Debian-toolchain build
//! rebuilds from its bundle alone in a network namespace with nothing but
//! loopback; a bundle committed under tests/data rebuilds with every later
//! hermit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::hello::without_network;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A graph of two specs over the busybox image: `app` reads the output of
/// `lib` through `[inputs]`, and both have a local source. Returns app's spec.
fn graph(dir: &Path) -> PathBuf {
    let manifest = crate::image::busybox_layout(&dir.join("image"));
    for (name, script, inputs) in [
        ("lib", "cat /sources/src/msg.txt > $out/msg", ""),
        (
            "app",
            "cat /inputs/lib/msg /sources/src/msg.txt > $out/both",
            "\n[inputs]\nlib = { spec = \"../lib/spec.toml\" }\n",
        ),
    ] {
        let d = dir.join(name);
        fs::create_dir_all(d.join("src")).unwrap();
        fs::write(d.join("src/msg.txt"), format!("from {name}\n")).unwrap();
        fs::write(
            d.join("spec.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"1\"\n\n[toolchain]\noci = \"../image\"\ndigest = \"{manifest}\"\n\n[[source]]\nname = \"src\"\npath = \"src\"\n\n[build]\nscript = \"\"\"\n{script}\n\"\"\"\n{inputs}"
            ),
        )
        .unwrap();
    }
    dir.join("app/spec.toml")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", both(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build_record(who: As, home: &Path, spec: &Path) -> PathBuf {
    let o = run(who.hermit_in(home).arg("build").arg(spec).arg("--json"));
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    PathBuf::from(v["record"].as_str().unwrap())
}

/// Every file under the store's blobs, sorted (to prove nothing was stored).
fn stored_blobs(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(home.join("v1/blobs/sha256"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn manifest_line(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("manifest "))
        .unwrap_or_else(|| panic!("no manifest line in {stdout}"))
        .trim()
        .to_string()
}

fn bundle_roundtrip_is_deterministic_and_rebuilds_in_an_empty_store(who: As) {
    let t = who.scratch();
    let spec = graph(t.path());
    let home = t.path().join("home");
    who.give(t.path());
    let record = build_record(who, &home, &spec);

    // Exported from the record and from the spec: the same bytes.
    let a = t.path().join("a.tar");
    let b = t.path().join("b.tar");
    let o = run(who
        .hermit_in(&home)
        .arg("export")
        .arg(&record)
        .arg("-o")
        .arg(&a));
    let manifest = manifest_line(&ok(&o));
    let o = run(who
        .hermit_in(&home)
        .arg("export")
        .arg(&spec)
        .arg("-o")
        .arg(&b));
    assert_eq!(manifest_line(&ok(&o)), manifest);
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "two exports differ"
    );

    // Standard tools read it: GNU tar lists an OCI layout.
    let list = ok(&run(Command::new("tar").arg("tf").arg(&a)));
    assert!(list.lines().any(|l| l == "oci-layout"), "{list}");
    assert!(list.lines().any(|l| l == "index.json"), "{list}");
    assert!(
        list.lines()
            .any(|l| l == format!("blobs/sha256/{}", &manifest[7..])),
        "{list}"
    );
    let o = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", a.display())));
    let raw: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(raw["artifactType"], "application/vnd.hermit.bundle.v1");

    // verify: says what it holds, stores nothing.
    let fresh = t.path().join("fresh");
    let out = ok(&run(who.hermit_in(&fresh).arg("verify").arg(&a)));
    assert!(out.contains("top      app 1"), "{out}");
    assert!(out.contains("record   lib 1"), "{out}");
    assert!(out.contains("1 outputs of inputs"), "{out}");
    assert!(out.contains("2 local-source trees"), "{out}");
    assert!(stored_blobs(&fresh).is_empty());

    // import into an empty store, then rebuild from the imported record.
    let out = ok(&run(who.hermit_in(&fresh).arg("import").arg(&a)));
    let rec = out
        .lines()
        .find_map(|l| l.strip_prefix("top record file "))
        .unwrap()
        .trim()
        .to_string();
    assert!(!stored_blobs(&fresh).is_empty());
    let o = run(who
        .hermit_in(&fresh)
        .args(["rebuild", "--offline"])
        .arg(&rec));
    assert!(ok(&o).starts_with("identical:"), "{}", both(&o));

    // hermit shell BUNDLE: in the build's environment, from an empty store.
    let shell = t.path().join("shell");
    let o = run(who.hermit_in(&shell).arg("shell").arg(&a).args([
        "--",
        "sh",
        "-c",
        "cat /inputs/lib/msg /sources/src/msg.txt",
    ]));
    assert_eq!(ok(&o), "from lib\nfrom app\n");

    // rebuild BUNDLE straight into another empty store, offline.
    let other = t.path().join("other");
    let o = run(who.hermit_in(&other).args(["rebuild", "--offline"]).arg(&a));
    assert!(ok(&o).starts_with("identical:"), "{}", both(&o));
}

/// `hermit rebuild --deep BUNDLE` rebuilds every input from the record the
/// bundle holds for it; an import writes a gc root named after the bundle,
/// which keeps its blobs through `hermit store gc` (and the records of its
/// inputs findable by build key) until `hermit store root rm` releases
/// them; `hermit import --no-root` writes none.
fn imported_bundles_are_gc_roots_and_rebuild_deeply(who: As) {
    let t = who.scratch();
    let spec = graph(t.path());
    let home = t.path().join("home");
    who.give(t.path());
    let record = build_record(who, &home, &spec);
    let a = t.path().join("a.tar");
    let manifest = manifest_line(&ok(&run(who
        .hermit_in(&home)
        .arg("export")
        .arg(&record)
        .arg("-o")
        .arg(&a))));
    let manifest_hex = manifest[7..].to_string();
    let root = format!("bundle-{manifest_hex}");
    let deep_identical = |out: &str| {
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("identical:"))
            .collect();
        assert!(
            lines.len() == 2 && lines[0].contains(" lib 1 ") && lines[1].contains(" app 1 "),
            "{out}"
        );
        assert!(!out.contains("differs"), "{out}");
    };

    // Straight from the bundle, in an empty store, offline: both nodes.
    let deep = t.path().join("deep");
    let o = run(who
        .hermit_in(&deep)
        .args(["rebuild", "--deep", "--offline"])
        .arg(&a));
    deep_identical(&ok(&o));

    // Imported: a root named after the bundle keeps everything through gc.
    let kept = t.path().join("kept");
    let out = ok(&run(who.hermit_in(&kept).arg("import").arg(&a)));
    assert!(out.contains(&format!("root     {root} ")), "{out}");
    let rec = out
        .lines()
        .find_map(|l| l.strip_prefix("top record file "))
        .unwrap()
        .trim()
        .to_string();
    let imported = stored_blobs(&kept);
    assert!(imported.contains(&manifest_hex));
    ok(&run(who.hermit_in(&kept).args(["store", "gc"])));
    assert_eq!(stored_blobs(&kept), imported, "gc removed imported blobs");
    // The record the import printed, deeply, after gc: its input's record
    // is found by build key among the imported blobs.
    let o = run(who
        .hermit_in(&kept)
        .args(["rebuild", "--deep", "--offline"])
        .arg(&rec));
    deep_identical(&ok(&o));
    // Released: gc removes what no build uses, the bundle's manifest first.
    ok(&run(who
        .hermit_in(&kept)
        .args(["store", "root", "rm", &root])));
    ok(&run(who.hermit_in(&kept).args(["store", "gc"])));
    let left = stored_blobs(&kept);
    assert!(!left.contains(&manifest_hex), "{left:?}");
    assert!(
        !Path::new(&rec).exists(),
        "the top record outlived its root"
    );

    // --no-root: nothing keeps the import; gc removes it.
    let loose = t.path().join("loose");
    let out = ok(&run(who
        .hermit_in(&loose)
        .args(["import", "--no-root"])
        .arg(&a)));
    assert!(!out.contains("root     "), "{out}");
    assert!(stored_blobs(&loose).contains(&manifest_hex));
    assert!(!loose.join("v1/gcroots").join(&root).exists());
    ok(&run(who.hermit_in(&loose).args(["store", "gc"])));
    assert!(!stored_blobs(&loose).contains(&manifest_hex));
}

/// The offsets of each blob's data in a bundle: (digest hex, offset, size).
fn blob_entries(bundle: &Path) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(fs::File::open(bundle).unwrap());
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if let Some(hex) = p.strip_prefix("blobs/sha256/") {
            if !hex.is_empty() {
                out.push((hex.to_string(), e.raw_file_position(), e.size()));
            }
        }
    }
    out
}

/// Rewrites a bundle: `f` gets each entry's name and bytes and returns the
/// entries to write instead (none to drop it).
fn rewrite(from: &Path, to: &Path, mut f: impl FnMut(&str, Vec<u8>) -> Vec<(String, Vec<u8>)>) {
    let mut a = tar::Archive::new(fs::File::open(from).unwrap());
    let mut b = tar::Builder::new(fs::File::create(to).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if e.header().entry_type().is_dir() {
            continue;
        }
        for (name, bytes) in f(&p, data) {
            let mut h = tar::Header::new_ustar();
            h.as_mut_bytes()[..100].fill(0);
            h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &bytes[..]).unwrap();
        }
    }
    b.finish().unwrap();
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn tampered_bundles_are_refused_and_nothing_is_stored(who: As) {
    let t = who.scratch();
    let spec = graph(t.path());
    let home = t.path().join("home");
    who.give(t.path());
    let record = build_record(who, &home, &spec);
    let good = t.path().join("good.tar");
    ok(&run(who
        .hermit_in(&home)
        .arg("export")
        .arg(&record)
        .arg("-o")
        .arg(&good)));
    let fresh = t.path().join("fresh");
    let refused = |bundle: &Path, needle: &str| {
        for cmd in ["import", "verify", "rebuild"] {
            let o = run(who.hermit_in(&fresh).arg(cmd).arg(bundle));
            assert_eq!(o.status.code(), Some(2), "{cmd}: {}", both(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(needle), "{cmd}: {needle} not named: {err}");
            assert!(stored_blobs(&fresh).is_empty(), "{cmd} stored something");
        }
    };

    // One byte changed in each blob in turn.
    let entries = blob_entries(&good);
    assert!(entries.len() > 8, "{entries:?}");
    let bad = t.path().join("bad.tar");
    for (hex, off, size) in &entries {
        let mut bytes = fs::read(&good).unwrap();
        bytes[(*off + size / 2) as usize] ^= 0x20;
        fs::write(&bad, &bytes).unwrap();
        who.give(&bad);
        refused(&bad, &format!("sha256:{hex}"));
    }

    // The manifest names a blob the archive lacks.
    let raw = ok(&run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", good.display()))));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let gone = m["layers"][3]["digest"].as_str().unwrap().to_string();
    rewrite(&good, &bad, |name, data| {
        if name.ends_with(&gone[7..]) {
            vec![]
        } else {
            vec![(name.to_string(), data)]
        }
    });
    who.give(&bad);
    refused(&bad, &gone);

    // A path-like digest in the manifest (with index.json updated to match).
    let mut evil = m.clone();
    evil["layers"][0]["digest"] = serde_json::json!("sha256:../../../../etc/passwd");
    let evil_bytes = serde_json::to_vec(&evil).unwrap();
    let evil_hex = sha(&evil_bytes);
    let old_hex = sha(raw.trim_end().as_bytes());
    rewrite(&good, &bad, |name, data| {
        if name == "index.json" {
            let s = String::from_utf8(data)
                .unwrap()
                .replace(&old_hex, &evil_hex)
                .replace(
                    &format!("\"size\":{}", raw.trim_end().len()),
                    &format!("\"size\":{}", evil_bytes.len()),
                );
            vec![(name.to_string(), s.into_bytes())]
        } else if name.ends_with(&old_hex) {
            vec![(format!("blobs/sha256/{evil_hex}"), evil_bytes.clone())]
        } else {
            vec![(name.to_string(), data)]
        }
    });
    who.give(&bad);
    refused(&bad, "sha256:../../../../etc/passwd");

    // A path-like entry name in the archive.
    rewrite(&good, &bad, |name, data| {
        if name == "oci-layout" {
            vec![
                (name.to_string(), data),
                ("blobs/sha256/../../../x".to_string(), b"x".to_vec()),
            ]
        } else {
            vec![(name.to_string(), data)]
        }
    });
    who.give(&bad);
    refused(&bad, "blobs/sha256/../../../x");

    // The good one still imports.
    ok(&run(who.hermit_in(&fresh).arg("import").arg(&good)));
}

fn a_bundle_pushed_to_a_registry_rebuilds_by_reference(who: As) {
    let t = who.scratch();
    let spec = graph(t.path());
    let home = t.path().join("home");
    who.give(t.path());
    let record = build_record(who, &home, &spec);
    let bundle = t.path().join("app.tar");
    let o = run(who
        .hermit_in(&home)
        .arg("export")
        .arg(&record)
        .arg("-o")
        .arg(&bundle));
    let manifest = manifest_line(&ok(&o));

    let reg = crate::image::start_registry();
    let name = format!("127.0.0.1:{}/hermit/app", reg.port);
    ok(&run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", bundle.display()))
        .arg(format!("docker://{name}:v1"))));
    // The registry keeps the manifest's digest: skopeo changed nothing.
    let raw = ok(&run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{name}:v1"))));
    assert_eq!(format!("sha256:{}", sha(raw.as_bytes())), manifest);

    let fresh = t.path().join("fresh");
    let o = run(who
        .hermit_in(&fresh)
        .args(["rebuild", "--offline"])
        .arg(format!("{name}@{manifest}")));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--offline"),
        "{}",
        both(&o)
    );
    let o = run(who
        .hermit_in(&fresh)
        .arg("rebuild")
        .arg(format!("{name}@{manifest}")));
    assert!(ok(&o).starts_with("identical:"), "{}", both(&o));

    // A registry that serves one changed byte: refused, naming the blob,
    // nothing stored.
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let victim = m["layers"][2]["digest"].as_str().unwrap().to_string();
    let data = reg
        .dir()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&victim[7..9])
        .join(&victim[7..])
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    fs::write(&data, &bytes).unwrap();
    let tampered = t.path().join("tampered");
    let o = run(who
        .hermit_in(&tampered)
        .arg("rebuild")
        .arg(format!("{name}@{manifest}")));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&victim),
        "{}",
        both(&o)
    );
    assert!(stored_blobs(&tampered).is_empty());

    // A digest the registry does not hold: refused, nothing stored.
    let empty = t.path().join("empty");
    let wrong = format!("sha256:{}", "3".repeat(64));
    let o = run(who
        .hermit_in(&empty)
        .arg("rebuild")
        .arg(format!("{name}@{wrong}")));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stored_blobs(&empty).is_empty());
}

/// `examples/hello` built with the Debian toolchain (as root, the shared
/// fixture) and exported once: the bundle's path, readable by both users.
fn hello_bundle() -> &'static Path {
    static B: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &B.get_or_init(|| {
        let hello = crate::hello::built(As::Root);
        let t = As::User.scratch();
        let bundle = t.path().join("hello.tar");
        ok(&run(As::Root
            .hermit_in(&hello.home)
            .arg("export")
            .arg(&hello.record)
            .arg("-o")
            .arg(&bundle)));
        As::User.give(t.path());
        (t, bundle)
    })
    .1
}

fn years_later_a_debian_build_rebuilds_from_its_bundle_alone(who: As) {
    let bundle = hello_bundle();
    let t = who.scratch();
    let copy = t.path().join("hello.tar");
    fs::copy(bundle, &copy).unwrap();
    who.give(t.path());
    let out = ok(&run(who
        .hermit_in(&t.path().join("v"))
        .arg("verify")
        .arg(&copy)));
    assert!(out.contains("top      hello 1.0.0"), "{out}");
    // Nothing but the bundle, a new empty store and no network.
    let o = run(&mut without_network(
        who.hermit_in(&t.path().join("empty"))
            .arg("rebuild")
            .arg(&copy),
    ));
    assert!(ok(&o).starts_with("identical:"), "{}", both(&o));
}

/// The compatibility guard: a bundle made by hermit 0.1 (bundle format 1)
/// must verify and rebuild identically with every later hermit.
fn the_committed_v1_bundle_rebuilds_identically(who: As) {
    let t = who.scratch();
    let copy = t.path().join("minish-v1.tar");
    fs::copy(repo().join("tests/data/bundles/minish-v1.tar"), &copy).unwrap();
    who.give(t.path());
    let out = ok(&run(who
        .hermit_in(&t.path().join("v"))
        .arg("verify")
        .arg(&copy)));
    assert!(out.contains("(format 1, "), "{out}");
    let o = run(&mut without_network(
        who.hermit_in(&t.path().join("empty"))
            .args(["rebuild", "--offline"])
            .arg(&copy),
    ));
    assert!(ok(&o).starts_with("identical:"), "{}", both(&o));
}

both_users!(
    bundle_roundtrip_is_deterministic_and_rebuilds_in_an_empty_store,
    imported_bundles_are_gc_roots_and_rebuild_deeply,
    tampered_bundles_are_refused_and_nothing_is_stored,
    a_bundle_pushed_to_a_registry_rebuilds_by_reference,
    years_later_a_debian_build_rebuilds_from_its_bundle_alone,
    the_committed_v1_bundle_rebuilds_identically,
);
