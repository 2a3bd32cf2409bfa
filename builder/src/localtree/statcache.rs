//! The stat cache of local trees: git's index, for `hermit build`.
//!
//! Hashing a local tree means reading every byte of it. For a tree that has
//! not changed since the last build, the stat cache answers instead: it
//! remembers, per local source, the stat data of every selected entry and
//! the tree digest they produced. When a walk of the tree (readdir and
//! lstat only, through directory descriptors — the same walk that selects
//! the entries) finds exactly the same entries with the same stat data,
//! the remembered digest is reused and no file is opened.
//!
//! # Where and what
//!
//! `v1/cache/localtree/<hex>`, one file per local source, where `<hex>` is
//! the sha256 of its [`Key`]: the source's canonical root path, its
//! `include` and `exclude` lists, its SOURCE_DATE_EPOCH and the versions of
//! the serialisation and of this cache. The file (little-endian binary):
//!
//! ```text
//! "hermit stat cache 2\n"   magic and version
//! sha256 of the rest         a torn or corrupt file is ignored
//! key                        u32 length + bytes; must equal the source's key
//! t0                         i64 s + i64 ns: the clock when the walk that
//!                            produced this file began
//! digest                     32 bytes: the tree digest
//! count                      u32, then per selected entry (canonical order):
//!   path                     u32 length + bytes
//!   kind                     u8: 0 file, 1 directory, 2 symlink
//!   stat                     u32 st_mode, u64 st_size, mtime and ctime
//!                            (i64 s + i64 ns each), u64 ino, u64 dev
//!   target                   u32 length + bytes (symlinks; empty otherwise)
//! dirs                       u32, then per directory listed (a memo):
//!   path                     u32 length + bytes ("" for the root)
//!   stat                     as above, taken just before it was listed
//!   names                    u32, then u32 length + bytes and a u8 type
//!                            (0 unknown, 1 directory, 2 other) per name
//! ```
//!
//! # Directory memos: no listing either
//!
//! Creating, removing or renaming an entry moves its directory's mtime and
//! ctime. So a directory whose stat data are those of its memo (and
//! settled, as below) holds the memo's names, and the walk takes them from
//! the memo instead of reading the directory (git's "untracked cache", on
//! by default here): an unchanged tree costs one `fstat` per directory and
//! one `fstatat` per entry. Memos only ever lead to a remembered digest:
//! when the walk's entries do not match the cache (or it fails), the tree
//! is walked again without them before anything is hashed, so a damaged
//! memo can cost time, never a wrong digest or an error.

//! # When a remembered digest is reused
//!
//! Only when the walk's selection has the same entries in the same order,
//! with the same kinds and symlink targets, every file and symlink with the
//! same mode, size, mtime, ctime, inode and device, and no entry is *racily
//! clean*. Directories are compared by name and kind only (their own stat
//! data changes nothing in the serialisation; added or removed entries are
//! seen by the walk itself).
//!
//! Racily clean (git's term): a file changed within the same timestamp tick
//! as it was hashed keeps stat data that match the cache, with other bytes.
//! The kernel sets an entry's ctime to the current time on every change to
//! its content, mode, links or times (`touch -d` restores an mtime, never a
//! ctime), so an entry is trusted only when its recorded ctime is older than
//! `t0 - SETTLED_SECS` (2 s, covering filesystems with 1–2 s timestamps and
//! the kernel's coarse clock; `t0` is read before the walk): any change
//! after the walk began gives it a ctime after that point, which differs
//! from the recorded one. The same holds for directories and their memos.
//! (Like git, this assumes the filesystem's timestamps come from this
//! machine's clock and that it does not step backwards.) A younger entry makes the whole tree
//! hash again (and the next cache file, with a later `t0`, trusts it).
//! Besides, every file read for a digest must still have the stat data the
//! walk saw (same inode before the read, same size and times after), so the
//! recorded stat data always describe the bytes that were hashed.
//!
//! # Why the digest is reused whole
//!
//! The tree digest is the sha256 of one stream in which every file's bytes
//! appear; sha256 cannot skip over a part of its input, so a tree with one
//! changed file must stream every file again. Per-file content hashes would
//! save nothing here (they would be read but the bytes still needed), so
//! the cache keeps none: an unchanged tree costs a walk, a changed one a
//! full streaming read (no copy, no store write).
//!
//! # Trust
//!
//! The cache only ever shortens the path to a digest it would have
//! computed: a file that is missing, foreign (another key), of another
//! version, larger than [`MAX_FILE`], truncated or failing its checksum is
//! ignored, and one that parses is used only when every entry's stat data
//! match. Reading or writing it is never fatal. Files are written to the
//! process's store session directory and renamed into place, so a reader
//! sees a whole file or none; at most [`MAX_FILES`] are kept (the least
//! recently written go first). What the checksum cannot stop is a writer of
//! the store forging a consistent file (entries, memos and digest): the
//! store is trusted to hold what its owner put there, as blobs are.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hermit_store::store::SETTLED_SECS;
use hermit_store::{Digest, Store};

use super::{DirMemo, DirMemos, Selection, Stat};
use crate::output::{self, Kind};

const MAGIC: &[u8] = b"hermit stat cache 2\n";
/// Bumped whenever the selection rules or this format change.
const CACHE_VERSION: u32 = 2;
/// A cache file larger than this is neither written nor read.
pub const MAX_FILE: u64 = 64 << 20;
/// At most this many cache files are kept.
pub const MAX_FILES: usize = 256;

/// The clock, as (seconds, nanoseconds) since the epoch: taken before a
/// tree is walked, it is the `t0` of the cache file that walk writes.
pub fn now() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

/// What a local source's cache file is named by and must hold.
pub struct Key {
    bytes: Vec<u8>,
}

impl Key {
    pub fn new(root: &Path, include: &[String], exclude: &[String], sde: u64) -> Key {
        use std::os::unix::ffi::OsStrExt;
        let mut b = Vec::new();
        put_u32(&mut b, CACHE_VERSION);
        put_u32(&mut b, output::FORMAT);
        put_u64(&mut b, sde);
        put_bytes(&mut b, root.as_os_str().as_bytes());
        for list in [include, exclude] {
            put_u32(&mut b, list.len() as u32);
            for s in list {
                put_bytes(&mut b, s.as_bytes());
            }
        }
        Key { bytes: b }
    }

    fn file_name(&self) -> String {
        Digest::of(&self.bytes).hex()
    }
}

/// The stat cache of one store.
pub struct StatCache<'a> {
    store: &'a Store,
    dir: PathBuf,
}

impl StatCache<'_> {
    pub fn new(store: &Store) -> StatCache<'_> {
        StatCache {
            store,
            dir: store.base().join("cache").join("localtree"),
        }
    }

    /// The cache file of `key`, if there is one that is whole (its
    /// checksum agrees) and is `key`'s.
    pub fn load(&self, key: &Key) -> Option<Loaded> {
        let data = read_bounded(&self.dir.join(key.file_name()))?;
        let rest = data.strip_prefix(MAGIC)?;
        let (sum, body) = (rest.get(..32)?, rest.get(32..)?);
        if Digest::of(body).as_bytes() != sum {
            return None;
        }
        let mut r = Reader(body);
        if r.bytes()? != key.bytes.as_slice() {
            return None;
        }
        let t0 = (r.i64()?, r.i64()?);
        let digest = Digest::from_bytes(r.take(32)?.try_into().ok()?);
        let entries = body.len() - r.0.len();
        Some(Loaded {
            data,
            t0,
            digest,
            entries: MAGIC.len() + 32 + entries,
        })
    }

    /// Writes what a walk that began at `t0` found and the digest it
    /// hashed to. Best effort: failing to write the cache only means the
    /// next build hashes again.
    pub fn store(&self, key: &Key, t0: (i64, i64), selection: &Selection, digest: &Digest) {
        let Some(data) = encode(key, t0, digest, selection) else {
            return;
        };
        let Ok((mut file, tmp)) = hermit_store::store::temp_file(self.store.tmp_dir()) else {
            return;
        };
        let written = file.write_all(&data).is_ok();
        drop(file);
        let dest = self.dir.join(key.file_name());
        if written && fs::create_dir_all(&self.dir).is_ok() && fs::rename(&tmp, &dest).is_ok() {
            prune(&self.dir);
        } else {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// A whole cache file of the right key, not yet compared with the tree.
pub struct Loaded {
    data: Vec<u8>,
    t0: (i64, i64),
    digest: Digest,
    /// Where the entries begin in `data`.
    entries: usize,
}

impl Loaded {
    /// Entries that changed at or after this instant may be racily clean.
    fn settled(&self) -> Option<(i64, i64)> {
        Some((self.t0.0.checked_sub(SETTLED_SECS)?, self.t0.1))
    }

    /// The memos of the directories that were settled when the cache was
    /// written (the walk lists only the others).
    pub fn memos(&self) -> Option<DirMemos> {
        let settled = self.settled()?;
        let mut r = Reader(self.data.get(self.entries..)?);
        let count = r.u32()? as usize;
        for _ in 0..count {
            r.bytes()?;
            r.take(1 + 4 + 8 + 8 * 6)?;
            r.bytes()?;
        }
        let dirs = r.u32()? as usize;
        let mut memos = DirMemos::with_capacity(dirs.min(1 << 16));
        for _ in 0..dirs {
            let rel = std::str::from_utf8(r.bytes()?).ok()?.to_string();
            let stat = read_stat(&mut r)?;
            let n = r.u32()? as usize;
            let mut names = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let name = r.bytes()?.to_vec();
                let hint = match r.u8()? {
                    0 => None,
                    1 => Some(true),
                    _ => Some(false),
                };
                names.push((name, hint));
            }
            if stat.ctime < settled {
                memos.insert(
                    rel,
                    DirMemo {
                        stat,
                        names: std::sync::Arc::new(names),
                    },
                );
            }
        }
        Some(memos)
    }

    /// The remembered digest, if `sel` (a fresh walk) has the same entries
    /// with the same stat data and none of them is racily clean.
    pub fn check(&self, sel: &Selection) -> Option<Digest> {
        let settled = self.settled()?;
        let mut r = Reader(self.data.get(self.entries..)?);
        let count = r.u32()? as usize;
        if count != sel.nodes.len() {
            return None;
        }
        for (n, s) in sel.nodes.iter().zip(&sel.stats) {
            if r.bytes()? != n.path.as_bytes() || r.u8()? != kind_byte(n.kind) {
                return None;
            }
            let recorded = read_stat(&mut r)?;
            let target = r.bytes()?;
            if n.kind == Kind::Directory {
                continue;
            }
            if recorded != *s
                || recorded.ctime >= settled
                || target != n.target.as_deref().unwrap_or("").as_bytes()
            {
                return None;
            }
        }
        Some(self.digest)
    }
}

fn read_stat(r: &mut Reader<'_>) -> Option<Stat> {
    Some(Stat {
        mode: r.u32()?,
        size: r.u64()?,
        mtime: (r.i64()?, r.i64()?),
        ctime: (r.i64()?, r.i64()?),
        ino: r.u64()?,
        dev: r.u64()?,
    })
}

fn put_stat(b: &mut Vec<u8>, s: &Stat) {
    put_u32(b, s.mode);
    put_u64(b, s.size);
    put_i64(b, s.mtime.0);
    put_i64(b, s.mtime.1);
    put_i64(b, s.ctime.0);
    put_i64(b, s.ctime.1);
    put_u64(b, s.ino);
    put_u64(b, s.dev);
}

/// Keeps at most [`MAX_FILES`] cache files, removing the oldest.
fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let t = e.metadata().ok()?.modified().ok()?;
            Some((t, e.path()))
        })
        .collect();
    if files.len() <= MAX_FILES {
        return;
    }
    files.sort();
    let extra = files.len() - MAX_FILES;
    for (_, p) in files.into_iter().take(extra) {
        let _ = fs::remove_file(p);
    }
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len > MAX_FILE {
        return None;
    }
    let mut data = Vec::with_capacity(len as usize);
    f.take(MAX_FILE).read_to_end(&mut data).ok()?;
    Some(data)
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Directory => 1,
        Kind::Symlink => 2,
    }
}

fn encode(key: &Key, t0: (i64, i64), digest: &Digest, sel: &Selection) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(64 + sel.nodes.len() * 120);
    put_bytes(&mut body, &key.bytes);
    put_i64(&mut body, t0.0);
    put_i64(&mut body, t0.1);
    body.extend_from_slice(digest.as_bytes());
    put_u32(&mut body, u32::try_from(sel.nodes.len()).ok()?);
    for (n, s) in sel.nodes.iter().zip(&sel.stats) {
        put_bytes(&mut body, n.path.as_bytes());
        body.push(kind_byte(n.kind));
        put_stat(&mut body, s);
        put_bytes(&mut body, n.target.as_deref().unwrap_or("").as_bytes());
    }
    put_u32(&mut body, u32::try_from(sel.dirs.len()).ok()?);
    for (rel, memo) in &sel.dirs {
        put_bytes(&mut body, rel.as_bytes());
        put_stat(&mut body, &memo.stat);
        put_u32(&mut body, u32::try_from(memo.names.len()).ok()?);
        for (name, hint) in memo.names.iter() {
            put_bytes(&mut body, name);
            body.push(match hint {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            });
        }
        if body.len() as u64 > MAX_FILE {
            return None;
        }
    }
    if body.len() as u64 > MAX_FILE {
        return None;
    }
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(Digest::of(&body).as_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_i64(b: &mut Vec<u8>, v: i64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localtree::tree_digest;

    const SDE: u64 = 315532800;

    struct Fixture {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        root: PathBuf,
        store: Store,
    }

    fn fixture() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let s = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::write(root.join("src/a.c"), b"int a;\n").unwrap();
        fs::write(root.join("src/deep/b.c"), b"int b;\n").unwrap();
        std::os::unix::fs::symlink("a.c", root.join("src/link")).unwrap();
        let store = Store::open(s.path()).unwrap();
        Fixture {
            _dirs: (t, s),
            root,
            store,
        }
    }

    impl Fixture {
        fn digest(&self) -> Digest {
            tree_digest(&self.store, &self.root, &[], &[], SDE).unwrap()
        }
        fn cache_file(&self) -> PathBuf {
            let key = Key::new(&self.root, &[], &[], SDE);
            StatCache::new(&self.store).dir.join(key.file_name())
        }
        /// Rewrites the cache file as if written `age` seconds later than it
        /// was (so its entries look settled), optionally with another
        /// digest, with a valid checksum.
        fn rewrite(&self, age: i64, digest: Option<&Digest>) {
            let path = self.cache_file();
            let data = fs::read(&path).unwrap();
            let mut body = data[MAGIC.len() + 32..].to_vec();
            let key_len = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
            let at = 4 + key_len;
            let t0 = i64::from_le_bytes(body[at..at + 8].try_into().unwrap());
            body[at..at + 8].copy_from_slice(&(t0 + age).to_le_bytes());
            if let Some(d) = digest {
                body[at + 16..at + 48].copy_from_slice(d.as_bytes());
            }
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(Digest::of(&body).as_bytes());
            out.extend_from_slice(&body);
            fs::write(&path, out).unwrap();
        }
    }

    fn fake() -> Digest {
        Digest::of(b"not the tree")
    }

    #[test]
    fn an_unchanged_settled_tree_is_answered_from_the_cache() {
        let f = fixture();
        let real = f.digest();
        assert_ne!(real, fake());
        assert!(f.cache_file().is_file());
        // A digest no hashing could give: served only if no file is read.
        f.rewrite(10, Some(&fake()));
        assert_eq!(f.digest(), fake());
    }

    #[test]
    fn a_racily_clean_tree_is_hashed_again() {
        let f = fixture();
        let real = f.digest();
        // Written right after the files changed: they are not settled.
        f.rewrite(0, Some(&fake()));
        assert_eq!(f.digest(), real);
        // That rehash wrote a fresh cache with the real digest.
        f.rewrite(10, None);
        assert_eq!(f.digest(), real);
    }

    #[test]
    fn same_size_and_restored_mtime_is_still_seen_by_ctime() {
        let f = fixture();
        let before = f.digest();
        let file = f.root.join("src/deep/b.c");
        let old = fs::symlink_metadata(&file).unwrap();
        f.rewrite(10, None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, b"int c;\n").unwrap();
        // `touch -d` the old mtime back.
        let status = std::process::Command::new("touch")
            .arg("-d")
            .arg(format!(
                "@{}.{:09}",
                std::os::unix::fs::MetadataExt::mtime(&old),
                std::os::unix::fs::MetadataExt::mtime_nsec(&old)
            ))
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        let now = fs::symlink_metadata(&file).unwrap();
        assert_eq!(now.len(), old.len());
        assert_eq!(now.modified().unwrap(), old.modified().unwrap());
        let after = f.digest();
        assert_ne!(after, before);
        // The new digest is the tree's real one.
        fs::remove_dir_all(StatCache::new(&f.store).dir).unwrap();
        assert_eq!(f.digest(), after);
    }

    #[test]
    fn added_removed_and_changed_entries_miss() {
        let f = fixture();
        f.digest();
        let miss = |f: &Fixture, change: &dyn Fn(&Path)| {
            f.rewrite(10, Some(&fake()));
            change(&f.root);
            let d = f.digest();
            assert_ne!(d, fake());
        };
        miss(&f, &|r| fs::write(r.join("new"), b"").unwrap());
        miss(&f, &|r| fs::remove_file(r.join("new")).unwrap());
        miss(&f, &|r| fs::create_dir(r.join("empty")).unwrap());
        miss(&f, &|r| {
            fs::remove_file(r.join("src/link")).unwrap();
            std::os::unix::fs::symlink("deep/b.c", r.join("src/link")).unwrap();
        });
        miss(&f, &|r| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(r.join("src/a.c"), fs::Permissions::from_mode(0o755)).unwrap()
        });
    }

    #[test]
    fn corrupt_truncated_and_foreign_caches_are_ignored() {
        let f = fixture();
        let real = f.digest();
        f.rewrite(10, Some(&fake()));
        let good = fs::read(f.cache_file()).unwrap();
        // One flipped byte in the digest: the checksum no longer agrees.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        let at = MAGIC.len() + 32 + 4 + Key::new(&f.root, &[], &[], SDE).bytes.len() + 16;
        bad[at] ^= 1;
        fs::write(f.cache_file(), &bad).unwrap();
        assert_eq!(f.digest(), real);
        // Truncated.
        fs::write(f.cache_file(), &good[..good.len() / 2]).unwrap();
        assert_eq!(f.digest(), real);
        // Garbage.
        fs::write(f.cache_file(), b"hermit stat cache 1\ngarbage").unwrap();
        assert_eq!(f.digest(), real);
        // Another source's file (another SOURCE_DATE_EPOCH) in this one's place.
        tree_digest(&f.store, &f.root, &[], &[], SDE + 1).unwrap();
        let other = StatCache::new(&f.store)
            .dir
            .join(Key::new(&f.root, &[], &[], SDE + 1).file_name());
        fs::copy(other, f.cache_file()).unwrap();
        assert_eq!(f.digest(), real);
        // And the untouched good file is still used (the test can fail).
        fs::write(f.cache_file(), &good).unwrap();
        assert_eq!(f.digest(), fake());
    }

    /// Writes a cache for the fixture's tree as `edit` changes what the
    /// walk found, as if written ten seconds from now (everything in it
    /// settled), claiming `digest`.
    fn forge(f: &Fixture, digest: &Digest, edit: &dyn Fn(&mut Selection)) {
        let key = Key::new(&f.root, &[], &[], SDE);
        let mut sel = crate::localtree::open_tree(&f.root, &[], &[], None)
            .unwrap()
            .selection;
        edit(&mut sel);
        let t0 = now();
        StatCache::new(&f.store).store(&key, (t0.0 + 10, t0.1), &sel, digest);
    }

    #[test]
    fn directory_memos_spare_the_listing_and_never_mislead_a_hash() {
        let f = fixture();
        let real = f.digest();
        // A consistent cache is believed: its memo of src/deep leaves out
        // b.c, and so do its entries — the walk, listing src/deep from the
        // memo, never sees b.c (only stat data that match are trusted;
        // a store writer could forge digests anyway).
        forge(&f, &fake(), &|sel| {
            let i = sel
                .nodes
                .iter()
                .position(|n| n.path == "src/deep/b.c")
                .unwrap();
            sel.nodes.remove(i);
            sel.stats.remove(i);
            for (rel, memo) in sel.dirs.iter_mut() {
                if rel == "src/deep" {
                    std::sync::Arc::make_mut(&mut memo.names).retain(|(n, _)| n != b"b.c");
                }
            }
        });
        assert_eq!(f.digest(), fake());
        // A memo naming a file that is not there: the walk cannot stat it,
        // and the tree is walked afresh and hashed — no error.
        forge(&f, &fake(), &|sel| {
            for (rel, memo) in sel.dirs.iter_mut() {
                if rel.is_empty() {
                    std::sync::Arc::make_mut(&mut memo.names)
                        .push((b"ghost".to_vec(), Some(false)));
                }
            }
        });
        assert_eq!(f.digest(), real);
        // A memo that leaves out a file its entries still have: no hit, and
        // the hash is of the real tree.
        forge(&f, &fake(), &|sel| {
            for (rel, memo) in sel.dirs.iter_mut() {
                if rel == "src/deep" {
                    std::sync::Arc::make_mut(&mut memo.names).clear();
                }
            }
        });
        assert_eq!(f.digest(), real);
        // A directory changed since its memo is listed again.
        forge(&f, &fake(), &|_| {});
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(f.root.join("src/deep/new.c"), b"new").unwrap();
        let changed = f.digest();
        assert_ne!(changed, fake());
        assert_ne!(changed, real);
    }

    #[test]
    fn the_cache_is_bounded() {
        let f = fixture();
        for sde in 0..(MAX_FILES as u64 + 5) {
            tree_digest(&f.store, &f.root, &[], &[], sde).unwrap();
        }
        let n = fs::read_dir(StatCache::new(&f.store).dir).unwrap().count();
        assert_eq!(n, MAX_FILES);
    }
}
