//! Checking the entries that are not named by their own digest: toolchain
//! root filesystems (`v1/rootfs/`) and image records (`v1/images/`), and
//! removing corrupt entries (`hermit store verify --repair`).
//!
//! # Root filesystems
//!
//! A rootfs is an image's layers applied in order (see [`crate::oci::rootfs`]);
//! its name is the image's manifest digest, not a digest of what it holds,
//! and extracting the layers again to compare would cost as much as making
//! it. So when a rootfs is made, hermit records what it holds, beside it:
//!
//! ```text
//! v1/rootfs/<manifest-hex>.json   {"version":1,"manifest":…,"tree":…,"fingerprint":…}
//! v1/rootfs/<manifest-hex>.tree   the tree manifest (crate::tree), whose sha256 is "tree"
//! ```
//!
//! - `tree` is the tree digest of the rootfs (names, types, execute bits,
//!   symlink targets, file contents). `store verify` re-hashes every rootfs
//!   and compares; the `.tree` file (itself checked against `tree`) lets it
//!   name the entries that differ.
//! - `fingerprint` is the sha256 of every entry's path, type, mode, size,
//!   inode, mtime and ctime. A build checks it before using the rootfs: a
//!   stat walk, cheap next to hashing. Any change made through the
//!   filesystem moves a ctime (which no caller can set back), so a tampered
//!   rootfs is re-hashed and, when the hash differs, replaced by a fresh
//!   extraction before the build runs. A fingerprint that moved with the
//!   content intact (a copy, a restore) is simply recorded again. Silent
//!   disk corruption does not move ctimes: `store verify` finds that.
//!
//! A rootfs without these files (made by an older hermit) cannot be
//! checked: a build extracts it again; `store verify` reports it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::oci::{self, Image, OciError};
use crate::store::{self, EntryKind, Result, Store, StoreError};
use crate::tree::{self, Manifest, Node, MANIFEST_HEADER};

/// What is recorded beside a rootfs when it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsMeta {
    pub version: u32,
    pub manifest: Digest,
    pub tree: Digest,
    pub fingerprint: Digest,
}

fn rootfs_root(store: &Store) -> PathBuf {
    store.base().join("rootfs")
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.with_extension("json")
}

fn tree_path(dir: &Path) -> PathBuf {
    dir.with_extension("tree")
}

/// Reads `rootfs/<hex>.json`; `None` when there is none.
fn read_meta(dir: &Path) -> std::result::Result<Option<RootfsMeta>, String> {
    let p = meta_path(dir);
    match fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("its record {} is damaged: {e}", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("its record {} cannot be read: {e}", p.display())),
    }
}

/// The stat fingerprint of everything below `root` (not `root` itself,
/// whose mode a store may change when it seals an entry).
pub fn fingerprint(root: &Path) -> io::Result<Digest> {
    fn walk(dir: &Path, rel: &[u8], h: &mut Hasher) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(e.file_name().as_bytes());
            let m = fs::symlink_metadata(e.path())?;
            h.update(&path);
            h.update(
                format!(
                    "\0{:o} {} {} {}.{} {}.{}\n",
                    m.mode(),
                    m.size(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                )
                .as_bytes(),
            );
            if m.is_dir() {
                walk(&e.path(), &path, h)?;
            }
        }
        Ok(())
    }
    let mut h = Hasher::new();
    walk(root, b"", &mut h)?;
    Ok(h.finish())
}

/// Records the tree digest, the tree manifest and the fingerprint of the
/// rootfs `dir` of image `manifest`, just made.
pub fn record_rootfs(store: &Store, manifest: &Digest, dir: &Path) -> Result<RootfsMeta> {
    let scanned = tree::scan(dir)?;
    let meta = RootfsMeta {
        version: 1,
        manifest: *manifest,
        tree: scanned.digest(),
        fingerprint: fingerprint(dir).map_err(StoreError::io("reading", dir))?,
    };
    write_meta(store, dir, &meta, Some(&scanned))?;
    Ok(meta)
}

fn write_meta(
    store: &Store,
    dir: &Path,
    meta: &RootfsMeta,
    scanned: Option<&Manifest>,
) -> Result<()> {
    if let Some(m) = scanned {
        store::write_small_atomic(store.tmp_dir(), &tree_path(dir), &m.serialise())?;
    }
    let mut json = serde_json::to_vec_pretty(meta).unwrap_or_default();
    json.push(b'\n');
    store::write_small_atomic(store.tmp_dir(), &meta_path(dir), &json)
}

/// How a rootfs was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsState {
    Intact,
    /// It holds something else than when it was made; the reason names
    /// the entries that differ.
    Corrupt(String),
    /// Nothing was recorded when it was made (an older hermit).
    Unrecorded,
}

/// Checks the rootfs `dir`. `quick`: trust an unchanged fingerprint (and
/// record a new one when only the fingerprint moved); otherwise always
/// re-hash.
pub fn check_rootfs(store: &Store, dir: &Path, quick: bool) -> Result<RootfsState> {
    let meta = match read_meta(dir) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(RootfsState::Unrecorded),
        Err(why) => return Ok(RootfsState::Corrupt(why)),
    };
    if quick && fingerprint(dir).ok() == Some(meta.fingerprint) {
        return Ok(RootfsState::Intact);
    }
    let found = match tree::scan(dir) {
        Ok(m) => m,
        Err(e) => return Ok(RootfsState::Corrupt(format!("it cannot be read: {e}"))),
    };
    if found.digest() == meta.tree {
        if quick {
            let fp = fingerprint(dir).map_err(StoreError::io("reading", dir))?;
            write_meta(
                store,
                dir,
                &RootfsMeta {
                    fingerprint: fp,
                    ..meta
                },
                None,
            )?;
        }
        return Ok(RootfsState::Intact);
    }
    Ok(RootfsState::Corrupt(format!(
        "it hashes to tree {}, but it was made as {} ({})",
        found.digest(),
        meta.tree,
        differences(dir, &meta.tree, &found)
    )))
}

/// The first few entries that differ from the recorded tree manifest.
fn differences(dir: &Path, tree_digest: &Digest, found: &Manifest) -> String {
    let recorded = fs::read(tree_path(dir))
        .ok()
        .filter(|b| Digest::of(b) == *tree_digest)
        .and_then(|b| parse_manifest(&b));
    let Some(recorded) = recorded else {
        return "its recorded tree manifest is missing or damaged, so the entries that differ cannot be named".into();
    };
    let mut out = Vec::new();
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for (p, want) in &recorded.entries {
        match found.entries.get(p) {
            None => out.push(format!("{}: missing", show(p))),
            Some(have) if have == want => {}
            Some(_) => out.push(format!("{}: changed", show(p))),
        }
    }
    for p in found.entries.keys() {
        if !recorded.entries.contains_key(p) {
            out.push(format!("{}: not in the image", show(p)));
        }
    }
    let more = out.len().saturating_sub(5);
    out.truncate(5);
    let mut s = out.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// Parses [`Manifest::serialise`]'s output back (`None` if malformed).
fn parse_manifest(bytes: &[u8]) -> Option<Manifest> {
    let mut rest = bytes.strip_prefix(MANIFEST_HEADER)?;
    let mut entries = BTreeMap::new();
    let field = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let end = rest.iter().position(|b| *b == 0)?;
        let f = rest[..end].to_vec();
        *rest = &rest[end + 1..];
        Some(f)
    };
    while !rest.is_empty() {
        let head = field(&mut rest)?;
        let (kind, tail) = head.split_at_checked(2)?;
        match kind {
            b"d " => {
                entries.insert(tail.to_vec(), Node::Dir);
            }
            b"l " => {
                let target = field(&mut rest)?;
                entries.insert(tail.to_vec(), Node::Symlink { target });
            }
            b"f " => {
                let mut parts = tail.splitn(4, |b| *b == b' ');
                let exec = parts.next()? == b"x";
                let size = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
                let digest = Digest::from_hex(std::str::from_utf8(parts.next()?).ok()?).ok()?;
                entries.insert(parts.next()?.to_vec(), Node::File { exec, size, digest });
            }
            _ => return None,
        }
    }
    Some(Manifest { entries })
}

/// What [`checked_rootfs`] had to do before handing the rootfs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// It was corrupt (the reason) and was extracted again.
    Corrupt(String),
    /// It had nothing recorded (an older hermit) and was extracted again.
    Unrecorded,
}

/// The image's rootfs, checked before use ([`check_rootfs`], quick): an
/// intact one is returned as it is; a corrupt or unrecorded one is moved
/// out of the way and extracted again, and the returned [`Replaced`] says
/// so; a fresh one gets its record.
pub fn checked_rootfs(
    store: &Store,
    image: &Image,
) -> std::result::Result<(PathBuf, Option<Replaced>), OciError> {
    let dest = rootfs_root(store).join(image.manifest.hex());
    // Not the manifest's own lock: `oci::rootfs` takes that one.
    let _lock = store.lock(&Digest::of(
        format!("hermit-rootfs-check-v1\n{}", image.manifest).as_bytes(),
    ))?;
    let mut replaced = None;
    if dest.is_dir() {
        match check_rootfs(store, &dest, true)? {
            RootfsState::Intact => return Ok((dest, None)),
            RootfsState::Corrupt(why) => replaced = Some(Replaced::Corrupt(why)),
            RootfsState::Unrecorded => replaced = Some(Replaced::Unrecorded),
        }
        remove_entry(store, EntryKind::Rootfs, &dest)?;
    }
    let dir = oci::rootfs(store, image)?;
    record_rootfs(store, &image.manifest, &dir)?;
    Ok((dir, replaced))
}

/// Checks an image record `images/<hex>.json`: it parses, it is named by
/// its manifest, every blob it names is in the store, and its manifest
/// blob names exactly its config and layers.
pub fn check_image(store: &Store, path: &Path) -> Option<String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    let image: Image = match serde_json::from_slice(&bytes) {
        Ok(i) => i,
        Err(e) => return Some(format!("is not an image record: {e}")),
    };
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if name.as_deref() != Some(&image.manifest.hex()) {
        return Some(format!("records the image {}", image.manifest));
    }
    if let Some(missing) = image.digests().iter().find(|d| store.blob(d).is_none()) {
        return Some(format!(
            "names the blob {missing}, which is not in the store"
        ));
    }
    let mut want = vec![image.config];
    want.extend(image.layers.iter().map(|l| l.digest));
    match oci::manifest_blobs(store, &image.manifest) {
        Ok(found) if found.iter().map(|(d, _)| *d).eq(want.iter().copied()) => None,
        Ok(_) => Some(format!(
            "its config and layers are not the ones its manifest {} names",
            image.manifest
        )),
        Err(e) => Some(format!("its manifest cannot be read: {e}")),
    }
}

/// The rootfs directories and image records to verify.
pub(crate) fn jobs(store: &Store) -> Result<Vec<(EntryKind, PathBuf)>> {
    let mut out = Vec::new();
    for (kind, dir) in [
        (EntryKind::Rootfs, rootfs_root(store)),
        (EntryKind::Image, store.base().join("images")),
    ] {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("listing", &dir)(e)),
        };
        for e in entries {
            let p = e.map_err(StoreError::io("listing", &dir))?.path();
            let wanted = match kind {
                EntryKind::Rootfs => fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()),
                _ => p.extension().is_some_and(|x| x == "json"),
            };
            if wanted {
                out.push((kind, p));
            }
        }
    }
    Ok(out)
}

/// Removes a corrupt entry and what belongs to it (an unpacked tree's or a
/// rootfs's record). A directory is first moved into this process's temp
/// session, so it disappears from its place at once.
pub fn remove_entry(store: &Store, kind: EntryKind, path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("reading", path)(e)),
    };
    if meta.is_dir() {
        // A directory moving to another parent must itself be writable.
        let mode = meta.permissions().mode() | 0o700;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(StoreError::io("making writable", path))?;
        let aside = store::temp_dir(store.tmp_dir())?.join("removed");
        fs::rename(path, &aside).map_err(StoreError::io("moving aside", path))?;
        store::remove_tree(&aside).map_err(StoreError::io("removing", &aside))?;
    } else {
        fs::remove_file(path).map_err(StoreError::io("removing", path))?;
    }
    let extra: Vec<PathBuf> = match kind {
        EntryKind::Rootfs => vec![meta_path(path), tree_path(path)],
        EntryKind::Unpacked => vec![path.with_extension("json")],
        _ => vec![],
    };
    for p in extra {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("removing", &p)(e)),
        }
    }
    if let Some(parent) = path.parent() {
        store::sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/a b"), "x").unwrap();
        fs::set_permissions(d.path().join("bin/a b"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../x y", d.path().join("bin/l")).unwrap();
        let m = tree::scan(d.path()).unwrap();
        assert_eq!(parse_manifest(&m.serialise()).unwrap(), m);
        assert!(parse_manifest(b"nope").is_none());
    }

    #[test]
    fn rootfs_check_sees_changes_and_forgives_a_moved_fingerprint() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let dir = rootfs_root(&store).join(Digest::of(b"m").hex());
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/sh"), "shell").unwrap();
        assert_eq!(
            check_rootfs(&store, &dir, true).unwrap(),
            RootfsState::Unrecorded
        );
        record_rootfs(&store, &Digest::of(b"m"), &dir).unwrap();
        assert_eq!(
            check_rootfs(&store, &dir, true).unwrap(),
            RootfsState::Intact
        );
        // Same content, new inode: the fingerprint moves, the tree does not.
        fs::remove_file(dir.join("bin/sh")).unwrap();
        fs::write(dir.join("bin/sh"), "shell").unwrap();
        assert_eq!(
            check_rootfs(&store, &dir, true).unwrap(),
            RootfsState::Intact
        );
        let fp = read_meta(&dir).unwrap().unwrap().fingerprint;
        assert_eq!(fp, fingerprint(&dir).unwrap());
        fs::write(dir.join("bin/evil"), "x").unwrap();
        fs::write(dir.join("bin/sh"), "shelL").unwrap();
        match check_rootfs(&store, &dir, false).unwrap() {
            RootfsState::Corrupt(why) => {
                assert!(
                    why.contains("bin/evil: not in the image") && why.contains("bin/sh: changed"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        remove_entry(&store, EntryKind::Rootfs, &dir).unwrap();
        assert!(!dir.exists() && !meta_path(&dir).exists() && !tree_path(&dir).exists());
    }
}
