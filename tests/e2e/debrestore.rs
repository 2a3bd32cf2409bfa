//! Debian toolchains made again from their lock: `examples/hello` is built
//! with its Debian toolchain; `hermit mirror` keeps the lock's .debs; with
//! the image's blobs gone from the mirror, a new empty store in a network
//! namespace with nothing but loopback rebuilds the record identically
//! (the image made again from the mirror's .debs, same manifest digest).
//! An archive of old packages served over HTTP on loopback, laid out by
//! pool path, gives `hermit build` the same image; with `hermit toolchain
//! restore`, a .deb whose bytes do not match the
//! lock's sha256 is refused, naming the digest and the URL, and is not
//! stored.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::hello::without_network;
use crate::http_server::Server;

/// The `[[toolchain.package]]` entries of a lock: (sha256, pool path).
fn lock_debs(lock: &Path) -> Vec<(String, String)> {
    let v: toml::Value = toml::from_str(&fs::read_to_string(lock).unwrap()).unwrap();
    assert_eq!(v["lock_version"].as_integer(), Some(2));
    v["toolchain"]["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["sha256"].as_str().unwrap().to_string(),
                p["pool"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no pool path: {p}"))
                    .to_string(),
            )
        })
        .collect()
}

fn blob(home: &Path, hex: &str) -> PathBuf {
    home.join("v1/blobs/sha256").join(hex)
}

fn restore(who: As, home: &Path, spec: &Path, archive: &str) -> Output {
    run(who
        .hermit_in(home)
        .args([
            "toolchain",
            "restore",
            "--json",
            "--debian-archive",
            archive,
        ])
        .arg(spec))
}

fn debian_toolchain_is_made_again_from_its_lock(who: As) {
    // The original build, bootstrapping the toolchain.
    let hello = crate::hello::built(who);
    let (spec, home_a, record_path) = (&hello.spec, &hello.home, &hello.record);
    let built = &hello.json;
    let t = who.scratch();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(record_path).unwrap()).unwrap();
    let manifest = record["image"]["manifest"].as_str().unwrap().to_string();
    let mut image_blobs = vec![
        manifest.clone(),
        record["image"]["config"].as_str().unwrap().to_string(),
    ];
    for l in record["image"]["layers"].as_array().unwrap() {
        image_blobs.push(l["digest"].as_str().unwrap().to_string());
    }

    // The lock says where each .deb lies in an archive; the store keeps
    // every one as the blob of its sha256, pinned by a gc root.
    let lock = spec.parent().unwrap().join("hermit.lock");
    let debs = lock_debs(&lock);
    assert!(debs.iter().any(|(_, p)| p.contains("/gcc-12_")), "{debs:?}");
    for (hex, pool) in &debs {
        assert!(
            pool.starts_with("pool/") && pool.ends_with(".deb"),
            "{pool}"
        );
        assert!(blob(home_a, hex).is_file(), "{pool} is not in the store");
    }
    let root = home_a
        .join("v1/gcroots")
        .join(format!("debian-{}", &manifest[7..]));
    assert!(root.is_file(), "no gc root {}", root.display());

    // A mirror made today holds the .debs; the image's blobs are lost.
    let mirror = t.path().join("mirror");
    let o = run(who
        .hermit_in(home_a)
        .arg("mirror")
        .arg(record_path)
        .arg("--to")
        .arg(&mirror));
    assert!(o.status.success(), "{}", both(&o));
    for (hex, pool) in &debs {
        assert!(
            mirror.join("sha256").join(hex).is_file(),
            "{pool} is not in the mirror"
        );
    }
    for d in &image_blobs {
        let p = mirror.join("sha256").join(&d[7..]);
        assert!(p.is_file(), "the mirror lacks image blob {d}");
        fs::remove_file(p).unwrap();
    }

    // A new empty store, no network but loopback, only the mirror: the
    // toolchain is made again, bit for bit, and the rebuild is identical.
    let home_b = t.path().join("b");
    let o = run(&mut without_network(
        who.hermit_in(&home_b)
            .arg("rebuild")
            .arg(record_path)
            .arg("--offline")
            .arg("--mirror")
            .arg(&mirror),
    ));
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("identical:"),
        "{}",
        both(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("again from its"), "{err}");
    for d in &image_blobs {
        assert!(
            blob(&home_b, &d[7..]).is_file(),
            "image blob {d} was not made again"
        );
    }
    let o = run(who.hermit_in(&home_b).args(["image", "ls", "--json"]));
    assert!(o.status.success(), "{}", both(&o));
    let images: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["manifest"] == manifest.as_str()),
        "{images}"
    );

    // An archive of old packages, laid out by pool path, over real HTTP on
    // loopback: `hermit build` in a new store with nothing else makes the
    // same image by itself (never bootstrapping afresh), and the same
    // output.
    let archive = t.path().join("archive");
    for (hex, pool) in &debs {
        let dest = archive.join(pool);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(blob(home_a, hex), dest).unwrap();
    }
    let server = Server::start();
    server.serve_dir("/debian/", &archive);
    let home_c = t.path().join("c");
    let o = run(who
        .hermit_in(&home_c)
        .arg("build")
        .arg(spec)
        .arg("--json")
        .arg("--debian-archive")
        .arg(server.url("/debian")));
    assert!(o.status.success(), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("again from its") && !err.contains("bootstrapping"),
        "{err}"
    );
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["output_digest"], built["output_digest"]);
    let (gcc_hex, gcc_pool) = debs.iter().find(|(_, p)| p.contains("/gcc-12_")).unwrap();
    assert_eq!(server.count(&format!("/debian/{gcc_pool}")), 1);
    assert!(blob(&home_c, gcc_hex).is_file());
    assert!(blob(&home_c, &manifest[7..]).is_file());
    // `hermit toolchain restore` of the record: the image is there.
    let o = run(who
        .hermit_in(&home_c)
        .args(["toolchain", "restore", "--json"])
        .arg(c["record"].as_str().unwrap()));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"], manifest.as_str());
    assert_eq!(v["restored"], false);

    // The same archive with one .deb's bytes changed: refused by its
    // digest, with the URL named; nothing of it stored, no image made.
    let bad = t.path().join("bad");
    let o = Command::new("cp")
        .arg("-a")
        .arg(&archive)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let bad_deb = bad.join(gcc_pool);
    let mut bytes = fs::read(&bad_deb).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&bad_deb, bytes).unwrap();
    server.serve_dir("/bad/", &bad);
    let home_d = t.path().join("d");
    let o = restore(who, &home_d, spec, &server.url("/bad"));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let url = server.url(&format!("/bad/{gcc_pool}"));
    assert!(
        err.contains(&format!("sha256:{gcc_hex}")) && err.contains(&url),
        "{err}"
    );
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!blob(&home_d, gcc_hex).exists());
    assert!(!blob(&home_d, &manifest[7..]).exists());
}

both_users!(debian_toolchain_is_made_again_from_its_lock);
