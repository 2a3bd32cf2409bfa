//! Writing content-addressed mirrors: plain folders any static HTTP server or
//! `file://` can serve, and that [`crate::fetch::Mirror`] reads.
//!
//! # Layout (version 1)
//!
//! ```text
//! DIR/
//! ├── sha256/<hex>      one file per blob, named by the sha256 of its bytes, mode 0644
//! └── index.json        {"version": 1, "blobs": {"sha256:<hex>": {"names": [..], "size": N, "urls": [..]}}}
//! ```
//!
//! Files are written to a hidden temp file inside `DIR/sha256/`, hashed on
//! the way and checked, fsynced and renamed into place, so a reader never
//! sees a partial blob. `index.json` lists what the mirror holds and where
//! each blob came from; it is merged with the existing index (keys sorted,
//! lists sorted and deduplicated) and replaced atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::store::Store;

/// Index format version.
pub const INDEX_VERSION: u32 = 1;

/// Errors from writing a mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{digest} is not in the store; fetch it first")]
    NotInStore { digest: Digest },
    #[error("store blob {path} does not hash to its name (got {actual}); run `hermit store verify`", path = path.display())]
    CorruptStore { path: PathBuf, actual: Digest },
    #[error("{path} is not a hermit mirror index: {source}", path = path.display())]
    BadIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MirrorError {
    let path = path.to_path_buf();
    move |source| MirrorError::Io { op, path, source }
}

/// One blob to put in the mirror, with what the index should say about it.
#[derive(Debug, Clone)]
pub struct MirrorItem {
    pub digest: Digest,
    pub names: Vec<String>,
    pub urls: Vec<String>,
}

/// `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub version: u32,
    pub blobs: BTreeMap<Digest, IndexEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub names: BTreeSet<String>,
    pub size: u64,
    pub urls: BTreeSet<String>,
}

/// What [`write_mirror`] did.
#[derive(Debug, Clone, Default)]
pub struct MirrorReport {
    /// Copied now.
    pub added: Vec<(Digest, u64)>,
    /// Already there and checked (by size, or by hash with `verify`).
    pub present: Vec<Digest>,
    /// Was there but wrong (size or hash), replaced.
    pub replaced: Vec<Digest>,
}

/// Copies every item's blob from the store into the mirror at `dir` and
/// merges the index. With `verify`, blobs already in the mirror are re-hashed
/// instead of only size-checked.
pub fn write_mirror(
    store: &Store,
    dir: &Path,
    items: &[MirrorItem],
    verify: bool,
) -> Result<MirrorReport, MirrorError> {
    let blobs = dir.join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
    let index_path = dir.join("index.json");
    let mut index = read_index(&index_path)?;
    let mut report = MirrorReport::default();
    for item in items {
        let src = store.blob(&item.digest).ok_or(MirrorError::NotInStore {
            digest: item.digest,
        })?;
        let size = fs::metadata(&src).map_err(io_err("reading", &src))?.len();
        let dest = blobs.join(item.digest.hex());
        let mut was_wrong = false;
        if let Ok(m) = fs::metadata(&dest) {
            let ok =
                m.is_file() && m.len() == size && (!verify || hash_file(&dest)? == item.digest);
            if ok {
                report.present.push(item.digest);
            } else {
                was_wrong = true;
            }
        }
        if !report.present.contains(&item.digest) {
            copy_in(&src, &blobs, &dest, &item.digest)?;
            if was_wrong {
                report.replaced.push(item.digest);
            } else {
                report.added.push((item.digest, size));
            }
        }
        let entry = index.blobs.entry(item.digest).or_default();
        entry.size = size;
        entry.names.extend(item.names.iter().cloned());
        entry.urls.extend(item.urls.iter().cloned());
    }
    File::open(&blobs)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", &blobs))?;
    index.version = INDEX_VERSION;
    let mut json =
        serde_json::to_string_pretty(&index).map_err(|source| MirrorError::BadIndex {
            path: index_path.clone(),
            source,
        })?;
    json.push('\n');
    let old = fs::read_to_string(&index_path).unwrap_or_default();
    if old != json {
        write_atomic(dir, &index_path, json.as_bytes())?;
    }
    Ok(report)
}

/// Reads `index.json`, or an empty index if there is none.
pub fn read_index(path: &Path) -> Result<Index, MirrorError> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| MirrorError::BadIndex {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
            version: INDEX_VERSION,
            blobs: BTreeMap::new(),
        }),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

fn hash_file(path: &Path) -> Result<Digest, MirrorError> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// Copies `src` to a hidden temp file in `blobs`, checking its hash on the
/// way, then renames it to `dest`.
fn copy_in(src: &Path, blobs: &Path, dest: &Path, digest: &Digest) -> Result<(), MirrorError> {
    let mut input = File::open(src).map_err(io_err("opening", src))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(blobs)
        .map_err(io_err("creating temp file in", blobs))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    {
        let mut out = tmp.as_file();
        loop {
            let n = input.read(&mut buf).map_err(io_err("reading", src))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io_err("writing", tmp.path()))?;
        }
    }
    let actual = h.finish();
    if actual != *digest {
        return Err(MirrorError::CorruptStore {
            path: src.to_path_buf(),
            actual,
        });
    }
    persist(tmp, dest)?;
    Ok(())
}

/// Makes a finished temp file world-readable, syncs it and renames it into place.
fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), MirrorError> {
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_err("setting permissions on", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("syncing", tmp.path()))?;
    tmp.persist(dest)
        .map_err(|e| io_err("renaming into", dest)(e.error))?;
    Ok(())
}

fn write_atomic(dir: &Path, dest: &Path, data: &[u8]) -> Result<(), MirrorError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("creating temp file in", dir))?;
    tmp.write_all(data).map_err(io_err("writing", tmp.path()))?;
    persist(tmp, dest)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))?;
    Ok(())
}

/// A small file a mirror keeps by name rather than by digest (e.g. a
/// record under `records/<build-key>.json`), read whole: from a folder, or
/// fetched from an HTTP mirror. `Ok(None)` when the mirror does not have
/// it; an error when it is larger than `limit` bytes or the mirror fails.
/// What it says is not checked here: the caller verifies it by its own
/// means (a record by its build key).
pub async fn read_named(
    mirror: &crate::fetch::Mirror,
    rel: &str,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<Option<Vec<u8>>, String> {
    use crate::fetch::Mirror;
    match mirror {
        Mirror::Dir(dir) => {
            let path = dir.join(rel);
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            let mut buf = Vec::new();
            f.take(limit + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if buf.len() as u64 > limit {
                return Err(format!("{} is larger than {limit} bytes", path.display()));
            }
            Ok(Some(buf))
        }
        Mirror::Http(base) => {
            let url = format!("{}/{rel}", base.as_str().trim_end_matches('/'));
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("hermit/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("{url}: {e}"))?;
            let mut resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(format!("{url}: HTTP {}", resp.status()));
            }
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
                buf.extend_from_slice(&chunk);
                if buf.len() as u64 > limit {
                    return Err(format!("{url} is larger than {limit} bytes"));
                }
            }
            Ok(Some(buf))
        }
    }
}

/// Writes a small named file into the mirror at `dir` (temp file, fsync,
/// rename), creating its directory.
pub fn write_named(dir: &Path, rel: &str, data: &[u8]) -> Result<(), MirrorError> {
    let dest = dir.join(rel);
    let parent = dest.parent().unwrap_or(dir).to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    if fs::read(&dest).is_ok_and(|old| old == data) {
        return Ok(());
    }
    write_atomic(&parent, &dest, data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn write_twice_then_repair() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let d = store
            .add_reader(&mut &b"hello"[..], "t", None, None)
            .unwrap();
        let m = dir.path().join("m");
        let items = vec![MirrorItem {
            digest: d,
            names: vec!["hello".into()],
            urls: vec!["https://x/hello".into()],
        }];
        let r = write_mirror(&store, &m, &items, false).unwrap();
        assert_eq!(r.added.len(), 1);
        assert_eq!(fs::read(m.join("sha256").join(d.hex())).unwrap(), b"hello");
        let r = write_mirror(&store, &m, &items, false).unwrap();
        assert_eq!((r.added.len(), r.present.len()), (0, 1));
        // Same size, wrong bytes: only --verify notices.
        fs::write(m.join("sha256").join(d.hex()), b"HELLO").unwrap();
        let r = write_mirror(&store, &m, &items, false).unwrap();
        assert_eq!(r.present.len(), 1);
        let r = write_mirror(&store, &m, &items, true).unwrap();
        assert_eq!(r.replaced, vec![d]);
        assert_eq!(fs::read(m.join("sha256").join(d.hex())).unwrap(), b"hello");
        let idx = read_index(&m.join("index.json")).unwrap();
        assert_eq!(idx.blobs[&d].size, 5);
        assert!(idx.blobs[&d].names.contains("hello"));
    }
}
