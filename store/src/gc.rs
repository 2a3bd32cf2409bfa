//! Keeping the store honest and small: gc roots, `gc` and `verify`.
//!
//! # Roots
//!
//! Live entries are found from roots; everything else is garbage.
//!
//! - `v1/gcroots/<name>`: a small text file; every `sha256:<64 hex>` in it
//!   pins the blob, tree, unpacked tree or output of that digest/key.
//!   `hermit store root add DIGEST [--name NAME]` writes one (the default
//!   name is the digest's hex), `hermit store root rm NAME|DIGEST` removes it.
//! - `v1/outputs/**/record.json`: every `sha256:<64 hex>` string found in a
//!   build record is a root (its sources, image blobs, dependency outputs).
//!   Outputs themselves (`v1/outputs/`) are never removed by `gc`.
//! - `v1/images/*.json`: an imported or pulled toolchain image keeps every
//!   blob it names (index, manifest, config, layers).
//! - An unpacked tree (`v1/unpacked/<key>/`) is live when its key is a root
//!   or when the archive it was unpacked from is; a live unpacked tree keeps
//!   its archive blob alive too.
//!
//! `gc` holds the store-wide lock exclusively, so it waits for every running
//! add, unpack or digest lock holder and none can start while it runs.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::store::{self, EntryKind, Result, Store, StoreError};
use crate::tree;

/// Finds every `sha256:<64 lowercase hex>` in `text`.
pub fn digests_in(text: &[u8]) -> Vec<Digest> {
    const PREFIX: &[u8] = b"sha256:";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&text[i..], PREFIX) {
        let start = i + pos + PREFIX.len();
        if let Some(hex) = text.get(start..start + 64) {
            if let Ok(hex) = std::str::from_utf8(hex) {
                if let Ok(d) = Digest::from_hex(hex) {
                    // Reject a longer hex run (not a digest boundary).
                    if !text.get(start + 64).is_some_and(|b| b.is_ascii_hexdigit()) {
                        out.push(d);
                    }
                }
            }
        }
        i = start;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One gc root file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub name: String,
    pub digests: Vec<Digest>,
}

fn check_root_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadRootName(name.to_string()))
    }
}

impl Store {
    /// Pins `digest` under `gcroots/<name>` (default: the digest's hex).
    /// Returns the root file's path.
    pub fn add_root(&self, digest: &Digest, name: Option<&str>) -> Result<PathBuf> {
        let name = name.map(str::to_string).unwrap_or_else(|| digest.hex());
        check_root_name(&name)?;
        let dest = self.base().join("gcroots").join(&name);
        store::write_small_atomic(self.tmp_dir(), &dest, format!("{digest}\n").as_bytes())?;
        Ok(dest)
    }

    /// Removes the root called `name_or_digest`, or, given a digest, every
    /// root file that names only that digest. Returns the removed files.
    pub fn remove_root(&self, name_or_digest: &str) -> Result<Vec<PathBuf>> {
        let dir = self.base().join("gcroots");
        let mut removed = Vec::new();
        if let Ok(d) = name_or_digest.parse::<Digest>() {
            for root in self.roots()? {
                if root.digests == [d] {
                    removed.push(dir.join(&root.name));
                }
            }
        } else {
            check_root_name(name_or_digest)?;
            let p = dir.join(name_or_digest);
            if p.exists() {
                removed.push(p);
            }
        }
        for p in &removed {
            fs::remove_file(p).map_err(StoreError::io("removing", p))?;
        }
        if !removed.is_empty() {
            store::sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// Every root file under `gcroots/`, sorted by name.
    pub fn roots(&self) -> Result<Vec<Root>> {
        let dir = self.base().join("gcroots");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let p = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let text = fs::read(&p).map_err(StoreError::io("reading", &p))?;
            out.push(Root {
                name: entry.file_name().to_string_lossy().into_owned(),
                digests: digests_in(&text),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every digest/key that a root keeps alive (before following unpacked
    /// trees to their archives).
    pub fn root_digests(&self) -> Result<HashSet<Digest>> {
        let mut live: HashSet<Digest> = self.roots()?.into_iter().flat_map(|r| r.digests).collect();
        let outputs = self.base().join("outputs");
        if outputs.is_dir() {
            collect_records(&outputs, &mut live)?;
        }
        // Imported toolchain images (`v1/images/<manifest>.json`, written by
        // the OCI module) keep their manifests, configs and layers.
        let images = self.base().join("images");
        if let Ok(entries) = fs::read_dir(&images) {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "json") {
                    let text = fs::read(&p).map_err(StoreError::io("reading", &p))?;
                    live.extend(digests_in(&text));
                }
            }
        }
        Ok(live)
    }

    /// Removes every blob, tree and unpacked tree no root keeps alive.
    /// Holds the store-wide lock exclusively while it runs.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.exclusive_lock()?;
        let mut live = self.root_digests()?;
        let unpacked = list_unpacked(self)?;
        for u in &unpacked {
            let keep =
                live.contains(&u.key) || u.meta.as_ref().is_some_and(|m| live.contains(&m.archive));
            if keep {
                live.insert(u.key);
                if let Some(m) = &u.meta {
                    live.insert(m.archive);
                }
            }
        }
        let mut report = GcReport::default();
        for u in unpacked {
            if live.contains(&u.key) && u.meta.is_some() && u.dir.is_dir() {
                continue;
            }
            if u.dir.exists() {
                report.freed_bytes += tree::disk_size(&u.dir);
                store::remove_tree(&u.dir).map_err(StoreError::io("removing", &u.dir))?;
                report.removed.push((EntryKind::Unpacked, u.key));
            }
            if u.meta_path.exists() {
                report.freed_bytes += tree::disk_size(&u.meta_path);
                fs::remove_file(&u.meta_path).map_err(StoreError::io("removing", &u.meta_path))?;
            }
        }
        for (kind, dir) in [
            (EntryKind::Tree, self.base().join("trees")),
            (EntryKind::Blob, self.base().join("blobs/sha256")),
        ] {
            for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
                let entry = entry.map_err(StoreError::io("listing", &dir))?;
                let p = entry.path();
                let name = entry.file_name();
                match Digest::from_hex(&name.to_string_lossy()) {
                    Ok(d) if live.contains(&d) => continue,
                    Ok(d) => report.removed.push((kind, d)),
                    // Not a store entry (a stray file): remove it as well.
                    Err(_) => report.stray.push(p.clone()),
                }
                report.freed_bytes += tree::disk_size(&p);
                store::remove_tree(&p).map_err(StoreError::io("removing", &p))?;
            }
            store::sync_dir(&dir)?;
        }
        // No process holds a digest lock while we hold the store lock
        // exclusively, so every lock file can go.
        let locks = self.base().join("locks");
        if let Ok(entries) = fs::read_dir(&locks) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(report)
    }

    /// Re-hashes every blob, tree and unpacked tree and reports each one
    /// whose content no longer matches its name. Uses up to two threads.
    /// Outputs are not checked (see [`Store::verify_with`]).
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with(&|_| None)
    }

    /// [`Store::verify`], plus every rootfs and image record (see
    /// [`crate::integrity`]) and every output directory, which `outputs`
    /// checks (the store does not know how outputs are hashed): it returns
    /// why one is corrupt, or `None`.
    pub fn verify_with(&self, outputs: &OutputCheck) -> Result<VerifyReport> {
        let _lock = self.shared_lock()?;
        self.verify_unlocked(outputs)
    }

    /// Verifies with the store-wide lock held exclusively (nothing is in
    /// use), then removes every corrupt entry with
    /// [`crate::integrity::remove_entry`]: what was fetched, unpacked or
    /// built is made again when next needed.
    pub fn repair(&self, outputs: &OutputCheck) -> Result<VerifyReport> {
        let _lock = self.exclusive_lock()?;
        let mut report = self.verify_unlocked(outputs)?;
        for c in &report.corrupt {
            crate::integrity::remove_entry(self, c.kind, &c.path)?;
        }
        // An image record that named a blob just removed is broken now.
        if report.corrupt.iter().any(|c| c.kind == EntryKind::Blob) {
            for (kind, path) in crate::integrity::jobs(self)? {
                if kind != EntryKind::Image {
                    continue;
                }
                if let Some(reason) = crate::integrity::check_image(self, &path) {
                    crate::integrity::remove_entry(self, kind, &path)?;
                    report.corrupt.push(Corrupt { kind, path, reason });
                }
            }
        }
        Ok(report)
    }

    fn verify_unlocked(&self, outputs: &OutputCheck) -> Result<VerifyReport> {
        let mut jobs: Vec<(EntryKind, PathBuf)> = Vec::new();
        for (kind, dir) in [
            (EntryKind::Blob, self.base().join("blobs/sha256")),
            (EntryKind::Tree, self.base().join("trees")),
        ] {
            for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
                let entry = entry.map_err(StoreError::io("listing", &dir))?;
                jobs.push((kind, entry.path()));
            }
        }
        for u in list_unpacked(self)? {
            if u.dir.exists() {
                jobs.push((EntryKind::Unpacked, u.dir));
            }
        }
        jobs.extend(crate::integrity::jobs(self)?);
        let out_dir = self.base().join("outputs");
        if let Ok(entries) = fs::read_dir(&out_dir) {
            for e in entries {
                jobs.push((
                    EntryKind::Output,
                    e.map_err(StoreError::io("listing", &out_dir))?.path(),
                ));
            }
        }
        // Big blobs first, so the two threads finish together.
        jobs.sort_by_key(|(_, p)| {
            std::cmp::Reverse(fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0))
        });
        let next = AtomicUsize::new(0);
        let corrupt = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 2);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((kind, path)) = jobs.get(i) else {
                        break;
                    };
                    if let Some(problem) = check_entry(self, *kind, path, outputs) {
                        if let Ok(mut c) = corrupt.lock() {
                            c.push(problem);
                        }
                    }
                });
            }
        });
        let mut corrupt = corrupt.into_inner().unwrap_or_default();
        corrupt.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(VerifyReport {
            checked: jobs.len(),
            corrupt,
        })
    }
}

/// Checks one output directory: `Some(reason)` when it is corrupt.
pub type OutputCheck = dyn Fn(&Path) -> Option<String> + Sync;

fn check_entry(
    store: &Store,
    kind: EntryKind,
    path: &Path,
    outputs: &OutputCheck,
) -> Option<Corrupt> {
    let bad = |reason: String| {
        Some(Corrupt {
            kind,
            path: path.to_path_buf(),
            reason,
        })
    };
    match kind {
        EntryKind::Output => return outputs(path).and_then(bad),
        EntryKind::Image => return crate::integrity::check_image(store, path).and_then(bad),
        EntryKind::Rootfs => {
            use crate::integrity::{check_rootfs, RootfsState};
            return match check_rootfs(store, path, false) {
                Ok(RootfsState::Intact) => None,
                Ok(RootfsState::Corrupt(why)) => bad(why),
                Ok(RootfsState::Unrecorded) => bad(
                    "nothing was recorded when it was made (an older hermit), so it cannot be checked"
                        .into(),
                ),
                Err(e) => bad(format!("cannot be read: {e}")),
            };
        }
        _ => {}
    }
    let name = path.file_name()?.to_string_lossy().into_owned();
    let Ok(expected) = Digest::from_hex(&name) else {
        return bad("its name is not a sha256 digest".into());
    };
    match kind {
        EntryKind::Blob => {
            let mut f = match fs::File::open(path) {
                Ok(f) => f,
                Err(e) => return bad(format!("cannot be read: {e}")),
            };
            store::advise_sequential(&f);
            match store::hash_reader(&mut f) {
                Ok((d, _)) if d == expected => None,
                Ok((d, _)) => bad(format!("content hashes to {d}")),
                Err(e) => bad(format!("cannot be read: {e}")),
            }
        }
        EntryKind::Tree => match tree::hash_tree(path) {
            Ok(d) if d == expected => {
                // A hermit stopped between installing and sealing it.
                let _ = store::seal_top(path);
                None
            }
            Ok(d) => bad(format!("content hashes to tree {d}")),
            Err(e) => bad(format!("cannot be read: {e}")),
        },
        EntryKind::Unpacked => {
            let meta = match crate::unpack::read_meta(store, &expected) {
                Ok(m) => m,
                Err(e) => return bad(format!("its metadata cannot be read: {e}")),
            };
            match tree::hash_tree(path) {
                Ok(d) if d == meta.tree => {
                    let _ = store::seal_top(path);
                    None
                }
                Ok(d) => bad(format!(
                    "content hashes to tree {d}, but {} was unpacked as {}",
                    meta.archive, meta.tree
                )),
                Err(e) => bad(format!("cannot be read: {e}")),
            }
        }
        EntryKind::Output | EntryKind::Rootfs | EntryKind::Image => None,
    }
}

fn collect_records(dir: &Path, live: &mut HashSet<Digest>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(StoreError::io("listing", dir))? {
        let entry = entry.map_err(StoreError::io("listing", dir))?;
        let t = entry
            .file_type()
            .map_err(StoreError::io("reading", entry.path()))?;
        let p = entry.path();
        if t.is_dir() {
            collect_records(&p, live)?;
        } else if t.is_file() && entry.file_name() == "record.json" {
            let text = fs::read(&p).map_err(StoreError::io("reading", &p))?;
            live.extend(digests_in(&text));
        }
    }
    Ok(())
}

struct UnpackedEntry {
    key: Digest,
    dir: PathBuf,
    meta_path: PathBuf,
    meta: Option<crate::unpack::UnpackedMeta>,
}

fn list_unpacked(store: &Store) -> Result<Vec<UnpackedEntry>> {
    let dir = store.base().join("unpacked");
    let mut keys = BTreeSet::new();
    for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
        let entry = entry.map_err(StoreError::io("listing", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let hex = name.strip_suffix(".json").unwrap_or(&name);
        // A name that is not a digest is not ours: leave it alone.
        if let Ok(d) = Digest::from_hex(hex) {
            keys.insert(d);
        }
    }
    Ok(keys
        .into_iter()
        .map(|key| UnpackedEntry {
            key,
            dir: store.unpacked_path(&key),
            meta_path: crate::unpack::meta_path(store, &key),
            meta: crate::unpack::read_meta(store, &key).ok(),
        })
        .collect())
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Entries removed, by kind and digest/key.
    pub removed: Vec<(EntryKind, Digest)>,
    /// Files that were not store entries at all and were removed.
    pub stray: Vec<PathBuf>,
    /// Bytes of file content freed.
    pub freed_bytes: u64,
}

/// One entry whose bytes no longer match its name.
#[derive(Debug, Clone)]
pub struct Corrupt {
    pub kind: EntryKind,
    pub path: PathBuf,
    pub reason: String,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub corrupt: Vec<Corrupt>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finds_digests_in_text() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let text =
            format!("{{\"x\":\"{a}\",\"y\":[\"{b}\"],\"z\":\"sha256:abc\",\"w\":\"{a}ff\"}}");
        assert_eq!(digests_in(text.as_bytes()), vec![a, b]);
    }

    #[test]
    fn gc_keeps_roots_and_records() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let add = |s: &[u8]| store.add_reader(&mut &s[..], "t", None, None).unwrap();
        let pinned = add(b"pinned");
        let recorded = add(b"recorded");
        let garbage = add(b"garbage");
        store.add_root(&pinned, Some("keep-me")).unwrap();
        let out = store.base().join("outputs").join(Digest::of(b"k").hex());
        fs::create_dir_all(&out).unwrap();
        fs::write(
            out.join("record.json"),
            format!("{{\"src\":\"{recorded}\"}}"),
        )
        .unwrap();
        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![(EntryKind::Blob, garbage)]);
        assert_eq!(report.freed_bytes, 7);
        assert!(store.blob(&pinned).is_some());
        assert!(store.blob(&recorded).is_some());
        assert!(store.blob(&garbage).is_none());
        assert!(out.join("record.json").exists());
        store.remove_root("keep-me").unwrap();
        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![(EntryKind::Blob, pinned)]);
    }

    #[test]
    fn gc_keeps_imported_images_and_collects_trees() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let layer = store
            .add_reader(&mut &b"layer"[..], "t", None, None)
            .unwrap();
        let images = store.base().join("images");
        fs::create_dir_all(&images).unwrap();
        fs::write(
            images.join("x.json"),
            format!("{{\"layers\":[{{\"digest\":\"{layer}\"}}]}}"),
        )
        .unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"tree file").unwrap();
        let tree = store.add_path(src.path()).unwrap().digest;
        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![(EntryKind::Tree, tree)]);
        assert_eq!(report.freed_bytes, 9);
        assert!(store.blob(&layer).is_some());
        assert!(!store.tree_path(&tree).exists());
    }

    #[test]
    fn verify_names_corrupt_blob() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let good = store
            .add_reader(&mut &b"good"[..], "t", None, None)
            .unwrap();
        let bad = store.add_reader(&mut &b"bad"[..], "t", None, None).unwrap();
        let p = store.blob_path(&bad);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"bAd").unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.checked, 2);
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(report.corrupt[0].path, p);
        assert!(store.blob(&good).is_some());
    }

    #[test]
    fn root_names_are_checked() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let d = Digest::of(b"x");
        for bad in ["../x", ".hidden", "a/b", ""] {
            assert!(matches!(
                store.add_root(&d, Some(bad)),
                Err(StoreError::BadRootName(_))
            ));
        }
        store.add_root(&d, None).unwrap();
        assert_eq!(store.roots().unwrap()[0].name, d.hex());
        assert_eq!(store.remove_root(&d.to_string()).unwrap().len(), 1);
        assert!(store.roots().unwrap().is_empty());
    }
}
