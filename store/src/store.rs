//! The store: where hermit keeps every byte a build uses or makes.
//!
//! # Layout (version 1)
//!
//! ```text
//! $HERMIT_HOME/                      (else $XDG_DATA_HOME/hermit, else ~/.local/share/hermit)
//! └── v1/                            one directory per layout version; never mixed
//!     ├── VERSION                    "1\n"
//!     ├── blobs/sha256/<hex>         every blob, named by the sha256 of its bytes, mode 0444
//!     ├── locks/<hex>.lock           advisory flock per digest: held while a digest is being added
//!     └── tmp/<session>/             one per running hermit process, holding `.lock` (flocked
//!                                    for the life of the process) and that process's
//!                                    half-written files; a session whose lock is free is stale
//!                                    and removed by the next `Store::open`
//! ```
//!
//! Other modules add their own directories under `v1/` and document them
//! where they are defined.
//!
//! # Guarantees
//!
//! Every write goes through one path: bytes are written into the process's
//! session directory under `tmp/` (same filesystem as the destination),
//! hashed while written, checked against the digest the caller expected,
//! fsynced, made read-only and renamed into place; then the parent directory
//! is fsynced. A process killed at any instant therefore leaves either
//! nothing or a complete, correct entry. Concurrent processes serialise on
//! the per-digest lock, so each digest is written once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};

/// Layout version; bumped when the on-disk layout changes incompatibly.
pub const LAYOUT_VERSION: u32 = 1;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no store location: set HERMIT_HOME, XDG_DATA_HOME or HOME")]
    NoHome,
    #[error("store at {path} has layout version {found}, this hermit understands {LAYOUT_VERSION}", path = path.display())]
    Version { path: PathBuf, found: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; nothing was stored")]
    Mismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "size mismatch for {what}: expected {expected} bytes, got {actual}; nothing was stored"
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
}

impl StoreError {
    /// Wraps an I/O error with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    /// True when the underlying cause is a full disk or quota.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An open store. Holds this process's temp session (released on drop).
#[derive(Debug)]
pub struct Store {
    base: PathBuf,
    session: Session,
}

#[derive(Debug)]
struct Session {
    dir: PathBuf,
    // Held (flocked) for as long as the store is open.
    _lock: nix::fcntl::Flock<File>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The store root chosen by the environment: `$HERMIT_HOME`, else
/// `$XDG_DATA_HOME/hermit`, else `~/.local/share/hermit`.
pub fn default_root() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("HERMIT_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("hermit"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/share/hermit"));
    }
    Err(StoreError::NoHome)
}

impl Store {
    /// Opens (creating if needed) the store at the default root.
    pub fn open_default() -> Result<Store> {
        Store::open(default_root()?)
    }

    /// Opens (creating if needed) the store rooted at `root`, and removes
    /// temp sessions left behind by processes that died.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let base = root.as_ref().join(format!("v{LAYOUT_VERSION}"));
        for d in ["blobs/sha256", "locks", "tmp"] {
            let p = base.join(d);
            fs::create_dir_all(&p).map_err(StoreError::io("creating", &p))?;
        }
        let version = base.join("VERSION");
        match fs::read_to_string(&version) {
            Ok(v) if v.trim() == LAYOUT_VERSION.to_string() => {}
            Ok(v) => {
                return Err(StoreError::Version {
                    path: base,
                    found: v.trim().to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_small_atomic(&base.join("tmp"), &version, b"1\n")?;
            }
            Err(e) => return Err(StoreError::io("reading", &version)(e)),
        }
        let session = Session::create(&base.join("tmp"))?;
        let store = Store { base, session };
        store.clean_stale_sessions()?;
        Ok(store)
    }

    /// The versioned base directory (`<root>/v1`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Where a blob with this digest lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.base.join("blobs/sha256").join(digest.hex())
    }

    /// The blob's path if it is in the store.
    pub fn blob(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.blob_path(digest);
        p.is_file().then_some(p)
    }

    /// This process's private temp directory, on the store's filesystem.
    pub fn tmp_dir(&self) -> &Path {
        &self.session.dir
    }

    /// Takes the advisory lock for `digest`, blocking until it is free.
    /// Hold it while deciding whether to add the digest and while adding it.
    pub fn lock(&self, digest: &Digest) -> Result<DigestLock> {
        let path = self
            .base
            .join("locks")
            .join(format!("{}.lock", digest.hex()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&path)
            .map_err(StoreError::io("opening lock", &path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, errno)| {
                StoreError::io("locking", &path)(io::Error::from_raw_os_error(errno as i32))
            },
        )?;
        Ok(DigestLock { _lock: lock })
    }

    /// Starts writing a new blob. Bytes written are hashed on the way;
    /// [`BlobWriter::commit`] verifies and moves them into place.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let (file, path) = temp_file(&self.session.dir)?;
        Ok(BlobWriter {
            file: Some(file),
            path,
            hasher: Hasher::new(),
            size: 0,
            blobs: self.base.join("blobs/sha256"),
        })
    }

    /// Copies everything from `reader` into the store as one blob, checking
    /// it against `expected` (and `size`) before it becomes visible.
    pub fn add_reader(
        &self,
        reader: &mut dyn Read,
        what: &str,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Digest> {
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("reading", what)(e)),
            };
            w.write_all(&buf[..n])
                .map_err(StoreError::io("writing", w.path.clone()))?;
        }
        w.commit(what, expected, size)
    }

    fn clean_stale_sessions(&self) -> Result<()> {
        let tmp = self.base.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(StoreError::io("listing", &tmp))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.session.dir {
                continue;
            }
            let lock_path = path.join(".lock");
            let Ok(f) = File::open(&lock_path) else {
                // A session directory without its lock file is either being
                // created right now or was left mid-creation; only remove it
                // once it is old enough that no live process can own it.
                if is_older_than(&path, 60) {
                    let _ = fs::remove_dir_all(&path);
                }
                continue;
            };
            if let Ok(_held) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                let _ = fs::remove_dir_all(&path);
            }
        }
        Ok(())
    }
}

fn is_older_than(path: &Path, secs: u64) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > secs)
}

impl Session {
    fn create(tmp: &Path) -> Result<Session> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("s{}-", std::process::id()))
            .tempdir_in(tmp)
            .map_err(StoreError::io("creating temp session in", tmp))?
            .keep();
        let lock_path = dir.join(".lock");
        let f = File::create(&lock_path).map_err(StoreError::io("creating", &lock_path))?;
        let lock =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                StoreError::io("locking", &lock_path)(io::Error::from_raw_os_error(e as i32))
            })?;
        Ok(Session { dir, _lock: lock })
    }
}

/// An exclusive hold on one digest; released on drop.
pub struct DigestLock {
    _lock: nix::fcntl::Flock<File>,
}

/// A blob being written. Dropping it without [`commit`](BlobWriter::commit)
/// deletes the temp file.
pub struct BlobWriter {
    file: Option<File>,
    path: PathBuf,
    hasher: Hasher,
    size: u64,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies the bytes against `expected` and `size` (if given), then
    /// fsyncs, makes read-only and renames into the store. On a mismatch
    /// nothing is stored. Returns the digest of what was written.
    pub fn commit(
        mut self,
        what: &str,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Digest> {
        let actual = std::mem::take(&mut self.hasher).finish();
        if let Some(exp) = size {
            if exp != self.size {
                return Err(StoreError::SizeMismatch {
                    what: what.to_string(),
                    expected: exp,
                    actual: self.size,
                });
            }
        }
        if let Some(exp) = expected {
            if *exp != actual {
                return Err(StoreError::Mismatch {
                    what: what.to_string(),
                    expected: *exp,
                    actual,
                });
            }
        }
        let file = self.file.take().ok_or_else(|| {
            StoreError::io("committing", &self.path)(io::Error::other("already committed"))
        })?;
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io("making read-only", &self.path))?;
        file.sync_all()
            .map_err(StoreError::io("syncing", &self.path))?;
        drop(file);
        let dest = self.blobs.join(actual.hex());
        if dest.exists() {
            // Someone else stored the same bytes first; ours are identical.
            let _ = fs::remove_file(&self.path);
        } else {
            fs::rename(&self.path, &dest).map_err(StoreError::io("renaming into", &dest))?;
            sync_dir(&self.blobs)?;
        }
        Ok(actual)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a fresh temp file in `dir`.
pub fn temp_file(dir: &Path) -> Result<(File, PathBuf)> {
    let tf = tempfile::Builder::new()
        .prefix("w")
        .tempfile_in(dir)
        .map_err(StoreError::io("creating temp file in", dir))?;
    let (file, path) = tf
        .keep()
        .map_err(|e| StoreError::io("creating temp file in", dir)(e.error))?;
    Ok((file, path))
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing directory", dir))
}

/// Writes a small file atomically (temp in `tmp` → fsync → rename).
pub fn write_small_atomic(tmp: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    let (mut f, p) = temp_file(tmp)?;
    f.write_all(data).map_err(StoreError::io("writing", &p))?;
    f.sync_all().map_err(StoreError::io("syncing", &p))?;
    drop(f);
    fs::rename(&p, dest).map_err(StoreError::io("renaming into", dest))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_find() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir", "/tmp"))?;
        let store = Store::open(dir.path())?;
        let d = store.add_reader(
            &mut &b"hello"[..],
            "test",
            Some(&Digest::of(b"hello")),
            Some(5),
        )?;
        let p = store.blob(&d).ok_or(StoreError::NoHome)?;
        assert_eq!(
            fs::read(&p).map_err(StoreError::io("reading", &p))?,
            b"hello"
        );
        Ok(())
    }

    #[test]
    fn mismatch_stores_nothing() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir", "/tmp"))?;
        let store = Store::open(dir.path())?;
        let wrong = Digest::of(b"other");
        let err = store.add_reader(&mut &b"hello"[..], "x", Some(&wrong), None);
        assert!(matches!(err, Err(StoreError::Mismatch { .. })));
        assert!(store.blob(&Digest::of(b"hello")).is_none());
        let leftovers = fs::read_dir(store.tmp_dir())
            .map_err(StoreError::io("listing", store.tmp_dir()))?
            .count();
        assert_eq!(leftovers, 1, "only the session lock remains");
        Ok(())
    }
}
