//! OCI image layouts, oci-archives and docker-archives under fire.
//!
//! A case is a valid-ish image (config, manifest, index, a layer full of
//! hostile tar entries) whose JSON documents are tweaked structurally
//! (fields removed, retyped, added) and mutated byte by byte at every
//! level; digests are then recomputed bottom-up, so each level's parser is
//! reached with a document the level above really points to (or, on
//! request, one it does not). The image is imported from a directory or an
//! archive, with or without a pin, and then its root filesystem is built.
//!
//! Properties: no panic; an accepted image matches its pin and has every
//! blob it names in the store; a refused one gives an error that names the
//! layout; the store holds only complete blobs whose names are their
//! digests, no image record for a refused import, and no temp files; the
//! root filesystem never reaches outside the store.

use std::fs;
use std::path::Path;

use hermit_store::oci;
use hermit_store::{Digest, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::common::{mutate, mutations, run, Mutation};

/// A change to a JSON document that keeps it JSON.
#[derive(Debug, Clone)]
enum Tweak {
    /// Remove a key of the (n mod count)-th object.
    Remove(usize, usize),
    /// Set a key of the n-th object (an existing one, or a new one) to a value.
    Set(usize, usize, Value),
    /// Replace the n-th array's element, or push onto it.
    Push(usize, Value),
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1.5e300)),
        Just(json!(format!("sha256:{}", "0".repeat(64)))),
        Just(json!(format!("sha512:{}", "0".repeat(128)))),
        Just(json!("sha256:../../etc/passwd")),
        Just(json!("application/vnd.oci.image.index.v1+json")),
        Just(json!("application/vnd.oci.image.manifest.v1+json")),
        Just(json!("application/vnd.oci.image.layer.v1.tar+gzip")),
        Just(json!("linux")),
        Just(json!("amd64")),
        Just(json!("../../etc/passwd")),
        Just(json!("/etc/passwd")),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn tweak() -> impl Strategy<Value = Tweak> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Tweak::Remove(a, b)),
        (any::<usize>(), any::<usize>(), value()).prop_map(|(a, b, v)| Tweak::Set(a, b, v)),
        (any::<usize>(), value()).prop_map(|(a, v)| Tweak::Push(a, v)),
    ]
}

/// JSON pointers of every object (or array) in `v`.
fn containers(v: &Value, at: String, objects: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if objects {
                out.push(at.clone());
            }
            for (k, c) in m {
                containers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    objects,
                    out,
                );
            }
        }
        Value::Array(a) => {
            if !objects {
                out.push(at.clone());
            }
            for (i, c) in a.iter().enumerate() {
                containers(c, format!("{at}/{i}"), objects, out);
            }
        }
        _ => {}
    }
}

fn apply(mut v: Value, tweaks: &[Tweak]) -> Value {
    for t in tweaks {
        let mut ptrs = Vec::new();
        let objects = !matches!(t, Tweak::Push(..));
        containers(&v, String::new(), objects, &mut ptrs);
        if ptrs.is_empty() {
            continue;
        }
        let (n, rest) = match t {
            Tweak::Remove(n, _) | Tweak::Set(n, _, _) | Tweak::Push(n, _) => (*n, t),
        };
        let Some(target) = v.pointer_mut(&ptrs[n % ptrs.len()]) else {
            continue;
        };
        match (rest, target) {
            (Tweak::Remove(_, k), Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(k % m.len()).cloned().unwrap_or_default();
                m.remove(&key);
            }
            (Tweak::Set(_, k, val), Value::Object(m)) => {
                let key = match m.keys().nth(k % (m.len() + 1)) {
                    Some(key) => key.clone(),
                    None => format!("extra{k}"),
                };
                m.insert(key, val.clone());
            }
            (Tweak::Push(_, val), Value::Array(a)) => {
                if a.is_empty() || val.is_null() {
                    a.push(val.clone());
                } else {
                    let i = n % a.len();
                    a[i] = val.clone();
                }
            }
            _ => {}
        }
    }
    v
}

/// How one JSON document of the image is damaged.
#[derive(Debug, Clone, Default)]
struct Damage {
    tweaks: Vec<Tweak>,
    bytes: Vec<Mutation>,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => Just(Damage::default()),
        2 => prop::collection::vec(tweak(), 1..3).prop_map(|tweaks| Damage { tweaks, bytes: vec![] }),
        1 => mutations().prop_map(|bytes| Damage { tweaks: vec![], bytes }),
    ]
}

fn render(v: Value, d: &Damage) -> Vec<u8> {
    mutate(serde_json::to_vec(&apply(v, &d.tweaks)).unwrap(), &d.bytes)
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// An OCI layout directory.
    Dir,
    /// The same layout as a tar (oci-archive).
    OciArchive,
    /// A `docker save` archive.
    Docker,
}

#[derive(Debug, Clone)]
struct Case {
    layer: Vec<crate::archives::Entry>,
    gzip: bool,
    config: Damage,
    manifest: Damage,
    index: Damage,
    /// Put a nested index between index.json and the manifest.
    nested: bool,
    shape: Shape,
    /// 0: no pin, 1: the right pin, 2: a wrong pin.
    pin: u8,
    /// Leave out the blob with this index (mod count), if any.
    drop_blob: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(crate::archives::entry(), 0..6),
        any::<bool>(),
        damage(),
        damage(),
        damage(),
        any::<bool>(),
        prop_oneof![2 => Just(Shape::Dir), 1 => Just(Shape::OciArchive), 1 => Just(Shape::Docker)],
        0u8..3,
        prop_oneof![6 => Just(None), 1 => any::<usize>().prop_map(Some)],
    )
        .prop_map(
            |(layer, gzip, config, manifest, index, nested, shape, pin, drop_blob)| Case {
                layer,
                gzip,
                config,
                manifest,
                index,
                nested,
                shape,
                pin,
                drop_blob,
            },
        )
}

fn sha(b: &[u8]) -> Digest {
    Digest::of(b)
}

/// Writes the image; returns its path and the digest that pins it.
fn write_image(c: &Case, dir: &Path, out_dir: &Path) -> (std::path::PathBuf, Digest) {
    let tar = crate::archives::tar_bytes(&c.layer, out_dir);
    let (layer, media) = if c.gzip && !matches!(c.shape, Shape::Docker) {
        (
            crate::archives::compress(&tar, hermit_store::unpack::Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    } else {
        (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
    };
    let config = render(
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(&tar).to_string()]},
        }),
        &c.config,
    );
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let root = dir.join("image");
    if let Shape::Docker = c.shape {
        let manifest = render(
            json!([{"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["layer/layer.tar"]}]),
            &c.manifest,
        );
        let pin = sha(&config);
        blobs.push(("config.json".into(), config));
        blobs.push(("layer/layer.tar".into(), layer));
        blobs.push(("manifest.json".into(), manifest));
        return (write_out(c, &root, blobs), pin);
    }
    let manifest = render(
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": media, "digest": sha(&layer).to_string(), "size": layer.len()}],
        }),
        &c.manifest,
    );
    let desc = |bytes: &[u8], media: &str| {
        json!({"mediaType": media, "digest": sha(bytes).to_string(), "size": bytes.len(),
               "platform": {"os": "linux", "architecture": "amd64"}})
    };
    let mut top = desc(&manifest, "application/vnd.oci.image.manifest.v1+json");
    let pin = sha(&manifest);
    for b in [&config, &layer, &manifest] {
        blobs.push((format!("blobs/sha256/{}", sha(b).hex()), b.to_vec()));
    }
    if c.nested {
        let nested = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).unwrap();
        blobs.push((
            format!("blobs/sha256/{}", sha(&nested).hex()),
            nested.clone(),
        ));
        top = desc(&nested, "application/vnd.oci.image.index.v1+json");
    }
    let index = render(json!({"schemaVersion": 2, "manifests": [top]}), &c.index);
    blobs.push(("index.json".into(), index));
    blobs.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    (write_out(c, &root, blobs), pin)
}

fn write_out(c: &Case, root: &Path, mut blobs: Vec<(String, Vec<u8>)>) -> std::path::PathBuf {
    if let Some(i) = c.drop_blob {
        let i = i % blobs.len();
        blobs.remove(i);
    }
    match c.shape {
        Shape::Dir => {
            for (p, b) in &blobs {
                let p = root.join(p);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, b).unwrap();
            }
            root.to_path_buf()
        }
        Shape::OciArchive | Shape::Docker => {
            let mut t = tar::Builder::new(Vec::new());
            for (p, b) in &blobs {
                let mut h = tar::Header::new_ustar();
                h.set_size(b.len() as u64);
                h.set_mode(0o644);
                t.append_data(&mut h, p, &b[..]).unwrap();
            }
            let path = root.with_extension("tar");
            fs::write(&path, t.into_inner().unwrap()).unwrap();
            path
        }
    }
}

/// Every blob in the store is complete: its name is its digest.
fn store_is_sound(store: &Store) -> Result<(), TestCaseError> {
    for e in fs::read_dir(store.base().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let data = fs::read(e.path()).unwrap();
        prop_assert_eq!(sha(&data).hex(), name, "a blob is not what its name says");
    }
    let left: Vec<_> = fs::read_dir(store.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    prop_assert!(left.is_empty(), "temp files left: {:?}", left);
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn check(c: Case) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    fs::write(out_dir.join("canary"), b"canary").unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (path, right) = write_image(&c, tmp.path(), &out_dir);
    let wrong = sha(b"not the image");
    let pin = match c.pin {
        0 => None,
        1 => Some(&right),
        _ => Some(&wrong),
    };
    let r = oci::import(&store, &path, pin);
    store_is_sound(&store)?;
    let pristine = |d: &Damage| d.tweaks.is_empty() && d.bytes.is_empty();
    if pristine(&c.config)
        && pristine(&c.manifest)
        && pristine(&c.index)
        && c.drop_blob.is_none()
        && c.pin < 2
    {
        prop_assert!(
            r.is_ok(),
            "a valid image was refused: {:?}",
            r.as_ref().err().map(|e| chain(e))
        );
    }
    let images = store.base().join("images");
    match r {
        Ok(image) => {
            if c.pin == 2 {
                prop_assert!(false, "a wrong pin was accepted: {:?}", image);
            }
            if let Some(pin) = pin {
                prop_assert!(
                    image.manifest == *pin || image.index == Some(*pin) || image.config == *pin,
                    "pin {} not matched by {:?}",
                    pin,
                    image
                );
            }
            for d in image.digests() {
                prop_assert!(store.blob(&d).is_some(), "{} missing", d);
            }
            let record = images.join(format!("{}.json", image.manifest.hex()));
            prop_assert!(record.is_file(), "no image record");
            prop_assert_eq!(
                oci::find(&store, &image.manifest).unwrap(),
                Some(image.clone())
            );
            // The root filesystem: whatever the layer holds, nothing outside
            // the store changes.
            let before = fs::read_dir(tmp.path()).unwrap().count();
            let rootfs = oci::rootfs(&store, &image);
            store_is_sound(&store)?;
            prop_assert_eq!(
                fs::read(out_dir.join("canary")).unwrap(),
                b"canary".to_vec()
            );
            prop_assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 1);
            prop_assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), before);
            match rootfs {
                Ok(dir) => prop_assert!(dir.starts_with(store.base())),
                Err(e) => {
                    let msg = chain(&e);
                    prop_assert!(msg.contains(&image.source), "{}", msg);
                    let left: Vec<_> = fs::read_dir(store.base().join("rootfs"))
                        .map(|d| d.collect())
                        .unwrap_or_default();
                    prop_assert!(left.is_empty(), "rootfs left behind: {:?}", left);
                }
            }
        }
        Err(e) => {
            let msg = chain(&e);
            prop_assert!(!msg.is_empty());
            prop_assert!(
                msg.contains(&path.display().to_string()) || msg.contains("image record"),
                "the error does not name the image: {}",
                msg
            );
            let saved = fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
            prop_assert_eq!(saved, 0, "an image record was saved for a refused import");
        }
    }
    Ok(())
}

#[test]
fn fuzz_oci_import() {
    run("oci_import", file!(), 96, case(), check);
}

/// Raw bytes as index.json / manifest.json, with and without a layout
/// around them.
#[test]
fn fuzz_oci_raw_json() {
    let strategy = (
        value(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    run(
        "oci_raw_json",
        file!(),
        128,
        strategy,
        |(v, docker, junk)| {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(tmp.path().join("store")).unwrap();
            let dir = tmp.path().join("image");
            fs::create_dir(&dir).unwrap();
            let name = if docker {
                "manifest.json"
            } else {
                "index.json"
            };
            let mut bytes = serde_json::to_vec(&v).unwrap();
            if v.is_null() {
                bytes = junk;
            }
            fs::write(dir.join(name), &bytes).unwrap();
            let r = oci::import(&store, &dir, None);
            store_is_sound(&store)?;
            if let Err(e) = r {
                let msg = chain(&e);
                prop_assert!(msg.contains(&dir.display().to_string()), "{}", msg);
            }
            Ok(())
        },
    );
}

/// Runs an import on another thread; `None` if it did not finish in time.
fn import_within(
    store: Store,
    path: std::path::PathBuf,
    secs: u64,
) -> Option<Result<oci::Image, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = oci::import(&store, &path, None).map_err(|e| chain(&e));
        let _ = tx.send(r);
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs)).ok()
}

/// Found while fuzzing layouts: a fifo (or a device) where a layout has a
/// file made the import block forever, or stream without end into the
/// store. Only regular files are read; anything else is refused naming it.
#[test]
fn oci_layout_special_files_are_refused() {
    let c = Case {
        layer: vec![],
        gzip: false,
        config: Damage::default(),
        manifest: Damage::default(),
        index: Damage::default(),
        nested: false,
        shape: Shape::Dir,
        pin: 0,
        drop_blob: None,
    };
    for victim in ["index.json", "layer", "zero"] {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        let (path, _) = write_image(&c, tmp.path(), &out);
        let file = if victim == "index.json" {
            path.join("index.json")
        } else {
            let tar = crate::archives::tar_bytes(&[], &out);
            path.join("blobs/sha256").join(sha(&tar).hex())
        };
        fs::remove_file(&file).unwrap();
        if victim == "zero" {
            std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
        } else {
            nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        }
        let r = import_within(store, path.clone(), 20);
        let Some(r) = r else {
            panic!("importing a layout with a special file as {victim} hung");
        };
        let e = r.expect_err("a special file was imported");
        assert!(
            e.contains("regular file") && e.contains(&file.display().to_string()),
            "{e}"
        );
    }
}
