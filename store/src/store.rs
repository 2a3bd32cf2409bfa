//! The store: where hermit keeps every byte a build uses or makes.
//!
//! # Layout (version 1)
//!
//! ```text
//! $HERMIT_HOME/                      (else $XDG_DATA_HOME/hermit, else ~/.local/share/hermit)
//! └── v1/                            one directory per layout version; never mixed
//!     ├── VERSION                    "1\n"
//!     ├── store.lock                 the store-wide lock: every add, unpack and digest lock
//!     │                              holds it shared; `gc` holds it exclusive
//!     ├── blobs/sha256/<hex>         every blob, named by the sha256 of its bytes, mode 0444
//!     ├── trees/<hex>/               a directory added with `store add DIR`, named by its
//!     │                              tree digest (see [`crate::tree`]); read-only (dirs 0555,
//!     │                              files 0444/0555); files are private copies, not links
//!     ├── unpacked/<key>/            an archive blob unpacked once, read-only like trees;
//!     │                              key = sha256 of the archive digest + canonical unpack
//!     │                              options (see [`crate::unpack`])
//!     ├── unpacked/<key>.json        what `<key>/` was unpacked from and its tree digest
//!     ├── gcroots/<name>             pins: every `sha256:<hex>` written in such a file is
//!     │                              kept by `gc` (see [`crate::gc`])
//!     ├── outputs/<key>/out          build outputs, read-only, by build key (the `hermit`
//!     ├── outputs/<key>/record.json  binary's `build` module); never collected, and every
//!     │                              `sha256:<hex>` in any `record.json` below is a gc root
//!     ├── images/<manifest>.json     a resolved toolchain image (see [`crate::oci`]); a gc root
//!     ├── rootfs/<manifest>/         that image's layers applied, read-only, shared by builds
//!     ├── rootfs/<manifest>.json     its tree digest and stat fingerprint, recorded when made,
//!     ├── rootfs/<manifest>.tree     and its tree manifest (see [`crate::integrity`])
//!     ├── failed/<key>/              a failed build's /build and /out (`--keep-failed`)
//!     ├── rebuilds/<key>/            a rebuild whose output differed from its record
//!     ├── images/<hex>.json          imported toolchain images (the OCI module); every digest
//!     │                              named in one is a gc root
//!     ├── locks/<hex>.lock           advisory flock per digest/key: held while it is being added
//!     ├── cache/localtree/<hex>      the `hermit` binary's stat cache of a local source tree
//!     │                              (its entries' stat data and tree digest; hex = sha256 of
//!     │                              root path, include/exclude, SOURCE_DATE_EPOCH). Only a
//!     │                              hint: a corrupt or foreign file is ignored; removing
//!     │                              any is safe (see `builder/src/localtree/statcache.rs`)
//!     ├── cache/outputs/<key>        the stat fingerprint of `outputs/<key>/out` when it last
//!     │                              passed a full check; a cache hit whose output still has it
//!     │                              is not re-hashed. Removing any is safe
//!     ├── seen/<hex>                 empty markers: a file with this identity (device, inode,
//!     │                              size, mtime, ctime; hex = their sha256) was added before.
//!     │                              Only a hint for [`Store::add_file`]; removing any is safe
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
//!
//! # Locks
//!
//! Two levels, both `flock(2)` so they die with their process:
//!
//! - `store.lock`, store-wide. [`Store::lock`], [`Store::blob_writer`] and
//!   everything built on them take it *shared*; `gc` takes it *exclusive*, so
//!   a collection never removes something while another process is adding
//!   or using it. A process that relies on unrooted entries for a while (a
//!   build reading its sources) holds [`Store::shared_lock`] for that time.
//! - `locks/<hex>.lock`, per digest, exclusive, taken after the shared
//!   store lock: one writer per digest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};

/// Layout version; bumped when the on-disk layout changes incompatibly.
pub const LAYOUT_VERSION: u32 = 1;

/// Size of the buffers used to read and hash files: large enough that the
/// per-call overhead vanishes next to sha256, small enough to stay in L2/L3.
pub const IO_BUF: usize = 1 << 18;

/// A file whose status last changed more than this many seconds ago is
/// "settled" (see [`Store::add_file`]).
pub const SETTLED_SECS: i64 = 2;

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
    #[error("no space left on device while {op} {path}; free some space (`hermit store gc`) or point HERMIT_HOME at a larger disk", path = path.display())]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("permission denied while {op} {path}; the store must be writable by this user (fix its ownership or point HERMIT_HOME elsewhere)", path = path.display())]
    PermissionDenied {
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
    #[error("{path} changed while it was being added (its bytes no longer hash to {expected}); nothing was stored", path = path.display())]
    Changed { path: PathBuf, expected: Digest },
    #[error("{path} is a {kind}; only regular files, directories and symlinks can be added to the store", path = path.display())]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("gc root name {0:?} is not usable: use letters, digits, '.', '_', '-', not starting with '.'")]
    BadRootName(String),
    #[error("the store at {root} belongs to another user: {path} is owned by uid {owner} ({owner_name}), but hermit runs as uid {me} ({me_name}), and a store is used by the one user who owns it; use a store of your own (set HERMIT_HOME to a directory you own), or, if this store should be yours, have root hand it over: `chown -R {me_name}: {root}`", root = root.display(), path = path.display())]
    NotOwner {
        root: PathBuf,
        path: PathBuf,
        owner: u32,
        owner_name: String,
        me: u32,
        me_name: String,
    },
    #[error("{path} is not writable (mode {mode:o}), so the store cannot be used; make it writable by its owner: `chmod u+w {path}`", path = path.display())]
    NotWritable { path: PathBuf, mode: u32 },
}

impl StoreError {
    /// Wraps an I/O error with the operation and path it concerns. A full
    /// disk and a permission problem get their own variants, so that the
    /// user reads one clear sentence with the fix.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| {
            // Wrapped errors (tempfile's) keep their kind but not the errno.
            let errno = source.raw_os_error();
            let kind = source.kind();
            if matches!(errno, Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || kind == io::ErrorKind::StorageFull
            {
                StoreError::DiskFull { op, path, source }
            } else if matches!(
                errno,
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
            ) || matches!(
                kind,
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) {
                StoreError::PermissionDenied { op, path, source }
            } else {
                StoreError::Io { op, path, source }
            }
        }
    }

    /// True when the underlying cause is a full disk or quota.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What kind of entry a digest names in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Blob,
    Tree,
    Unpacked,
    Output,
    /// An image's root filesystem, `rootfs/<manifest-hex>/`.
    Rootfs,
    /// An image record, `images/<manifest-hex>.json`.
    Image,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Blob => "blob",
            EntryKind::Tree => "tree",
            EntryKind::Unpacked => "unpacked tree",
            EntryKind::Output => "output",
            EntryKind::Rootfs => "rootfs",
            EntryKind::Image => "image record",
        }
    }
}

/// The result of adding a file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub digest: Digest,
    pub kind: EntryKind,
    /// Bytes of file content hashed.
    pub size: u64,
    /// False when the entry was already present (nothing was written).
    pub new: bool,
}

/// An open store. Holds this process's temp session (released on drop).
#[derive(Debug)]
pub struct Store {
    base: PathBuf,
    session: Session,
    /// This process's shared hold on the store-wide lock, while some
    /// [`StoreLock`] keeps it: every shared holder reuses one `flock`.
    shared: std::sync::Mutex<std::sync::Weak<nix::fcntl::Flock<File>>>,
}

#[derive(Debug)]
struct Session {
    dir: PathBuf,
    // Held (flocked) for as long as the store is open.
    _lock: nix::fcntl::Flock<File>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir);
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
        let root = root.as_ref();
        let base = root.join(format!("v{LAYOUT_VERSION}"));
        // Someone else's store is refused before anything is written to it.
        // (`root` itself may be anyone's: a mount point, a shared parent.)
        check_owned(root, &base, false)?;
        for d in [
            "blobs",
            "blobs/sha256",
            "trees",
            "unpacked",
            "gcroots",
            "locks",
            "seen",
            "tmp",
        ] {
            let p = base.join(d);
            // One lstat when it is there (every open but the first).
            if !check_owned_dir(root, &p)? {
                fs::create_dir_all(&p).map_err(StoreError::io("creating", &p))?;
                check_owned(root, &p, true)?;
            }
        }
        // The parts other modules create on first use, and the files every
        // process writes or locks.
        for d in [
            "outputs",
            "cache",
            "images",
            "rootfs",
            "failed",
            "rebuilds",
            "debian-reuse",
            "store.lock",
            "VERSION",
        ] {
            check_owned(root, &base.join(d), false)?;
        }
        let session = Session::create(&base.join("tmp"))?;
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
                // Written through the session, so that a hermit killed
                // meanwhile leaves nothing the next one does not clean.
                write_small_atomic(&session.dir, &version, b"1\n")?;
            }
            Err(e) => return Err(StoreError::io("reading", &version)(e)),
        }
        let store = Store {
            base,
            session,
            shared: std::sync::Mutex::new(std::sync::Weak::new()),
        };
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

    /// Where a tree with this digest lives (whether or not it is present).
    pub fn tree_path(&self, digest: &Digest) -> PathBuf {
        self.base.join("trees").join(digest.hex())
    }

    /// Where the unpacked tree with this key lives (whether or not present).
    pub fn unpacked_path(&self, key: &Digest) -> PathBuf {
        self.base.join("unpacked").join(key.hex())
    }

    /// Finds whatever the store holds under `digest`: a tree, an unpacked
    /// tree, an output or a blob (in that order).
    pub fn find(&self, digest: &Digest) -> Option<(EntryKind, PathBuf)> {
        let candidates = [
            (EntryKind::Tree, self.tree_path(digest)),
            (EntryKind::Unpacked, self.unpacked_path(digest)),
            (
                EntryKind::Output,
                self.base.join("outputs").join(digest.hex()),
            ),
        ];
        for (kind, p) in candidates {
            if p.is_dir() {
                return Some((kind, p));
            }
        }
        self.blob(digest).map(|p| (EntryKind::Blob, p))
    }

    /// This process's private temp directory, on the store's filesystem.
    pub fn tmp_dir(&self) -> &Path {
        &self.session.dir
    }

    /// Takes the store-wide lock shared, blocking while a `gc` runs. Hold it
    /// while relying on entries that no gc root protects.
    pub fn shared_lock(&self) -> Result<StoreLock> {
        self.shared_store_lock(true)
            .and_then(|l| l.ok_or_else(|| self.would_block()))
    }

    /// The shared store-wide lock: this process's current hold when it has
    /// one, else a new one (waiting for a `gc` to end when `wait`, else
    /// `None` at once).
    fn shared_store_lock(&self, wait: bool) -> Result<Option<StoreLock>> {
        let mut cached = match self.shared.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(lock) = cached.upgrade() {
            return Ok(Some(StoreLock { _lock: lock }));
        }
        let arg = if wait {
            nix::fcntl::FlockArg::LockShared
        } else {
            nix::fcntl::FlockArg::LockSharedNonblock
        };
        let lock = self.store_lock(arg)?;
        if let Some(l) = &lock {
            *cached = std::sync::Arc::downgrade(&l._lock);
        }
        Ok(lock)
    }

    fn would_block(&self) -> StoreError {
        StoreError::io("locking", self.base.join("store.lock"))(io::Error::from_raw_os_error(
            libc::EWOULDBLOCK,
        ))
    }

    /// Takes the store-wide lock exclusively (what `gc` does), blocking until
    /// no other process adds or holds a digest lock.
    pub fn exclusive_lock(&self) -> Result<StoreLock> {
        self.blocking_store_lock(nix::fcntl::FlockArg::LockExclusive)
    }

    /// Like [`Store::exclusive_lock`] but returns `None` at once when another
    /// process holds the lock.
    pub fn try_exclusive_lock(&self) -> Result<Option<StoreLock>> {
        self.store_lock(nix::fcntl::FlockArg::LockExclusiveNonblock)
    }

    fn blocking_store_lock(&self, arg: nix::fcntl::FlockArg) -> Result<StoreLock> {
        self.store_lock(arg)?.ok_or_else(|| self.would_block())
    }

    fn store_lock(&self, arg: nix::fcntl::FlockArg) -> Result<Option<StoreLock>> {
        Ok(
            flock_file(&self.base.join("store.lock"), arg)?.map(|lock| StoreLock {
                _lock: std::sync::Arc::new(lock),
            }),
        )
    }

    /// Takes the advisory lock for `digest`, blocking until it is free.
    /// Hold it while deciding whether to add the digest and while adding it.
    /// It includes a shared hold on the store-wide lock, so no `gc` runs
    /// meanwhile.
    pub fn lock(&self, digest: &Digest) -> Result<DigestLock> {
        self.digest_lock(digest, true)
            .and_then(|l| l.ok_or_else(|| self.would_block()))
    }

    /// Like [`Store::lock`] but returns `None` at once, instead of waiting,
    /// when another process holds the digest (or a `gc` holds the store).
    pub fn try_lock(&self, digest: &Digest) -> Result<Option<DigestLock>> {
        self.digest_lock(digest, false)
    }

    fn digest_lock(&self, digest: &Digest, wait: bool) -> Result<Option<DigestLock>> {
        let Some(store) = self.shared_store_lock(wait)? else {
            return Ok(None);
        };
        let path = self
            .base
            .join("locks")
            .join(format!("{}.lock", digest.hex()));
        let arg = if wait {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockExclusiveNonblock
        };
        Ok(flock_file(&path, arg)?.map(|lock| DigestLock {
            _lock: lock,
            _store: store,
        }))
    }

    /// Starts writing a new blob. Bytes written are hashed on the way;
    /// [`BlobWriter::commit`] verifies and moves them into place. The writer
    /// holds the store-wide lock shared until it is committed or dropped.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let store = self.shared_lock()?;
        let (file, path) = temp_file(&self.session.dir)?;
        Ok(BlobWriter {
            file: Some(file),
            path,
            hasher: Hasher::new(),
            size: 0,
            blobs: self.base.join("blobs/sha256"),
            _store: store,
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
        let mut buf = vec![0u8; IO_BUF];
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

    /// Adds a file (as a blob) or a directory (as a tree, see
    /// [`crate::tree`]). Symlinks given directly are followed.
    pub fn add_path(&self, path: &Path) -> Result<Added> {
        let meta = fs::metadata(path).map_err(StoreError::io("reading", path))?;
        if meta.is_dir() {
            crate::tree::add_dir(self, path)
        } else if meta.is_file() {
            self.add_file(path)
        } else {
            Err(StoreError::Unsupported {
                path: path.to_path_buf(),
                kind: crate::tree::kind_name(&meta),
            })
        }
    }

    /// Adds one regular file as a blob.
    ///
    /// The file is hashed first, reading only; if the blob is already present
    /// nothing is written. Otherwise it is copied into a temp file and
    /// installed under that digest, in one of two ways:
    ///
    /// - *settled* files (status last changed over [`SETTLED_SECS`] ago)
    ///   are copied by the kernel (`copy_file_range`), and the copy is
    ///   accepted only if the file's size, mtime and ctime are the same after
    ///   the copy as before the hash. Any write to a settled file moves its
    ///   ctime to a later clock tick, so a file changed meanwhile is caught;
    ///   this costs one hash plus one copy, like `openssl dgst && cp` — and
    ///   when the file is large and was never added to this store before,
    ///   the copy runs on a second thread *while* it is hashed (if the
    ///   bytes turn out to be present after all, the copy is thrown away);
    ///   a file added before is only hashed, so adding it again writes
    ///   nothing;
    /// - recently changed files are copied through user space while a second
    ///   thread re-hashes exactly the bytes written, and the copy is accepted
    ///   only if it hashes to the first digest.
    ///
    /// Either way a file that changed while being added is refused
    /// ([`StoreError::Changed`]), never stored under a wrong name.
    pub fn add_file(&self, path: &Path) -> Result<Added> {
        use std::os::unix::fs::MetadataExt;
        let mut file = File::open(path).map_err(StoreError::io("opening", path))?;
        let before = file.metadata().map_err(StoreError::io("reading", path))?;
        let settled = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| now.as_secs() as i64 - before.ctime() > SETTLED_SECS);
        advise_sequential(&file);
        let seen = self.seen_marker(&before);
        let speculative = if settled && before.len() >= SPECULATIVE_COPY_MIN && !seen.exists() {
            Some(self.hash_while_copying(&mut file, path)?)
        } else {
            None
        };
        let (digest, size) = match &speculative {
            Some(s) => (s.digest, s.size),
            None => hash_reader(&mut file).map_err(StoreError::io("reading", path))?,
        };
        let _lock = self.lock(&digest)?;
        // A hint only: failing to leave it changes nothing but speed.
        let mark_seen = || {
            let _ = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&seen);
        };
        if self.blob(&digest).is_some() {
            mark_seen();
            return Ok(Added {
                digest,
                kind: EntryKind::Blob,
                size,
                new: false,
            });
        }
        let changed = || StoreError::Changed {
            path: path.to_path_buf(),
            expected: digest,
        };
        // The copy: made already (speculative), by the kernel (settled), or
        // through user space while a second thread re-hashes it.
        let (tmp, mut guard) = match speculative {
            Some(s) => {
                let after = file.metadata().map_err(StoreError::io("reading", path))?;
                if s.copied != size || identity(&before) != identity(&after) {
                    return Err(changed());
                }
                (s.tmp, s.guard)
            }
            None => {
                file.rewind().map_err(StoreError::io("reading", path))?;
                let (mut tmp, tmp_path) = temp_file(&self.session.dir)?;
                let guard = TempGuard(Some(tmp_path.clone()));
                if settled {
                    // std's File-to-File copy is copy_file_range (or sendfile).
                    let copied = io::copy(&mut file, &mut tmp)
                        .map_err(StoreError::io("copying into", &tmp_path))?;
                    let after = file.metadata().map_err(StoreError::io("reading", path))?;
                    if copied != size || identity(&before) != identity(&after) {
                        return Err(changed());
                    }
                } else {
                    let (copied, copied_size) = copy_hashing(&mut file, &mut tmp, path, &tmp_path)?;
                    if copied != digest || copied_size != size {
                        return Err(changed());
                    }
                }
                (tmp, guard)
            }
        };
        let tmp_path = guard.0.clone().unwrap_or_default();
        install_blob(&self.base.join("blobs/sha256"), tmp, &tmp_path, &digest)?;
        guard.0 = None;
        mark_seen();
        Ok(Added {
            digest,
            kind: EntryKind::Blob,
            size,
            new: true,
        })
    }

    /// Where the marker for a file with `meta`'s identity lives.
    fn seen_marker(&self, meta: &fs::Metadata) -> PathBuf {
        let (len, mt, mtn, ct, ctn, ino, dev) = identity(meta);
        let key = format!("{dev}:{ino}:{len}:{mt}.{mtn}:{ct}.{ctn}");
        self.base
            .join("seen")
            .join(Digest::of(key.as_bytes()).hex())
    }

    /// Hashes `file` from its current offset while a second thread copies
    /// the same file (through its own descriptor) into a temp file with
    /// `copy_file_range`.
    fn hash_while_copying(&self, file: &mut File, path: &Path) -> Result<SpeculativeCopy> {
        let mut src = File::open(path).map_err(StoreError::io("opening", path))?;
        let (mut tmp, tmp_path) = temp_file(&self.session.dir)?;
        let guard = TempGuard(Some(tmp_path.clone()));
        let (hashed, copied) = std::thread::scope(|s| {
            let copier = s.spawn(|| io::copy(&mut src, &mut tmp));
            let hashed = hash_reader(file);
            let copied = copier
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the copying thread panicked")));
            (hashed, copied)
        });
        let (digest, size) = hashed.map_err(StoreError::io("reading", path))?;
        let copied = copied.map_err(StoreError::io("copying into", &tmp_path))?;
        Ok(SpeculativeCopy {
            digest,
            size,
            copied,
            tmp,
            guard,
        })
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
                // A session directory without its lock file is being created
                // right now, or its creator died mid-creation. A creator
                // holds `.lock-new` locked until it renames it to `.lock`:
                // one that can be locked belongs to nobody. Without either
                // file, only age tells.
                let dead = match File::open(path.join(".lock-new")) {
                    Ok(f) => {
                        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
                            .is_ok()
                    }
                    Err(_) => is_older_than(&path, 60),
                };
                if dead {
                    let _ = remove_tree(&path);
                }
                continue;
            };
            if let Ok(_held) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                let _ = remove_tree(&path);
            }
        }
        Ok(())
    }
}

/// [`check_owned`] of a directory that should exist: `Ok(true)` when it is
/// a directory that passes, `Ok(false)` when it is missing (for the caller
/// to create and check again).
fn check_owned_dir(root: &Path, path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("reading", path)(e)),
        // Not a directory: `create_dir_all` then fails on it, naming it.
        Ok(m) => check_meta(root, path, &m).map(|()| m.is_dir()),
    }
}

/// Refuses `path` (when it exists; always when `must_exist`) unless it is
/// owned by the user hermit runs as and, if a directory, writable by them.
/// A store belongs to one user: files another user (root included) made in
/// it could be neither locked nor removed by its owner.
fn check_owned(root: &Path, path: &Path, must_exist: bool) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(()),
        Err(e) => return Err(StoreError::io("reading", path)(e)),
    };
    check_meta(root, path, &meta)
}

/// [`check_owned`] of what `path`'s `lstat` gave.
fn check_meta(root: &Path, path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        let name = |uid: u32| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |u| u.name)
        };
        return Err(StoreError::NotOwner {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            owner: meta.uid(),
            owner_name: name(meta.uid()),
            me,
            me_name: name(me),
        });
    }
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() && mode & 0o300 != 0o300 {
        return Err(StoreError::NotWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The one way a directory enters the store (trees, unpacked trees, image
/// root filesystems, build outputs).
///
/// `tmp` must be complete, on the store's filesystem, and read-only below its
/// top (see [`crate::tree::make_read_only`]). Its top is opened for the
/// owner (moving a directory to a new parent rewrites its `..`, which needs
/// write permission on the directory itself, even for its owner), `tmp` is
/// fsynced and renamed to `dest`, and only then is the top sealed (0555) and
/// the parent fsynced. A crash before the rename leaves `tmp` in a session
/// the next `Store::open` removes; a crash after it leaves a complete entry
/// whose top is still writable, which `store verify` accepts and seals.
///
/// Returns `false`, removing `tmp`, when `dest` is already there (another
/// process installed the same entry first).
pub fn install_tree(tmp: &Path, dest: &Path) -> Result<bool> {
    let installed = (|| -> Result<bool> {
        if fs::symlink_metadata(dest).is_ok() {
            return Ok(false);
        }
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o755))
            .map_err(StoreError::io("opening for the rename", tmp))?;
        sync_dir(tmp)?;
        match fs::rename(tmp, dest) {
            Ok(()) => {}
            // A non-empty directory is there: someone else won the race.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                return Ok(false)
            }
            Err(e) => return Err(StoreError::io("renaming into", dest)(e)),
        }
        seal_top(dest).map_err(StoreError::io("making read-only", dest))?;
        sync_dir(dest)?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
        Ok(true)
    })();
    if !matches!(installed, Ok(true)) {
        let _ = remove_tree(tmp);
    }
    installed
}

/// Seals the top directory of an installed entry (0555) unless it already is.
pub fn seal_top(dir: &Path) -> io::Result<()> {
    let mode = fs::symlink_metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o555 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555))?;
    }
    Ok(())
}

/// Removes a temp file on drop unless disarmed.
struct TempGuard(Option<PathBuf>);

/// Files at least this large, never added before, are copied while they are
/// hashed (see [`Store::add_file`]); below it a second thread is not worth
/// starting.
pub const SPECULATIVE_COPY_MIN: u64 = 16 << 20;

/// A file hashed while it was copied into `tmp` (removed with `guard`).
struct SpeculativeCopy {
    digest: Digest,
    size: u64,
    copied: u64,
    tmp: File,
    guard: TempGuard,
}

/// What must not change while a file is added: size, mtime, ctime, inode
/// and device.
fn identity(m: &fs::Metadata) -> (u64, i64, i64, i64, i64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino(),
        m.dev(),
    )
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Tells the kernel a file will be read once, front to back.
pub(crate) fn advise_sequential(file: &File) {
    // Advisory only; failure changes nothing but speed.
    let _ = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
}

/// Hashes everything `reader` yields, with one large buffer.
pub fn hash_reader(reader: &mut dyn Read) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; IO_BUF];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

/// Copies `reader` into `writer` while a second thread hashes the same
/// buffers, so copying and hashing overlap on two cores.
pub(crate) fn copy_hashing(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    from: &Path,
    to: &Path,
) -> Result<(Digest, u64)> {
    use std::sync::mpsc;
    const BUFS: usize = 4;
    let (to_hash, hash_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFS);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFS);
    for _ in 0..BUFS {
        // The channel has room for all buffers; this cannot block.
        let _ = free_tx.send(vec![0u8; IO_BUF]);
    }
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut h = Hasher::new();
            let mut size = 0u64;
            for (buf, n) in hash_rx {
                h.update(&buf[..n]);
                size += n as u64;
                if free_tx.send(buf).is_err() {
                    break;
                }
            }
            (h.finish(), size)
        });
        let copy = (|| -> Result<()> {
            loop {
                let Ok(mut buf) = free_rx.recv() else {
                    return Ok(());
                };
                let n = loop {
                    match reader.read(&mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(StoreError::io("reading", from)(e)),
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                writer
                    .write_all(&buf[..n])
                    .map_err(StoreError::io("writing", to))?;
                if to_hash.send((buf, n)).is_err() {
                    return Ok(());
                }
            }
        })();
        drop(to_hash);
        let hashed = hasher
            .join()
            .map_err(|_| StoreError::io("hashing", from)(io::Error::other("hash thread died")))?;
        copy.map(|()| hashed)
    })
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
        // Another hermit cleaning stale sessions may remove a directory that
        // does not hold a locked lock file yet; then start again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Session::try_create(tmp) {
                Err(StoreError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempt < 8 => {}
                other => return other,
            }
        }
    }

    fn try_create(tmp: &Path) -> Result<Session> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("s{}-", std::process::id()))
            .tempdir_in(tmp)
            .map_err(StoreError::io("creating temp session in", tmp))?
            .keep();
        // The lock file appears under its name only once it is locked: a
        // concurrent hermit cleaning stale sessions must never find it free
        // (it would remove this live session's directory).
        let lock_path = dir.join(".lock");
        let new_path = dir.join(".lock-new");
        let f = File::create(&new_path).map_err(StoreError::io("creating", &new_path))?;
        let lock =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                StoreError::io("locking", &new_path)(io::Error::from_raw_os_error(e as i32))
            })?;
        fs::rename(&new_path, &lock_path).map_err(StoreError::io("renaming", &new_path))?;
        Ok(Session { dir, _lock: lock })
    }
}

/// A hold on the store-wide lock (shared or exclusive); released on drop
/// of the last clone.
#[derive(Debug, Clone)]
pub struct StoreLock {
    _lock: std::sync::Arc<nix::fcntl::Flock<File>>,
}

/// An exclusive hold on one digest (and a shared hold on the store);
/// released on drop.
pub struct DigestLock {
    // Declared first: released before the store-wide lock.
    _lock: nix::fcntl::Flock<File>,
    _store: StoreLock,
}

/// A blob being written. Dropping it without [`commit`](BlobWriter::commit)
/// deletes the temp file.
pub struct BlobWriter {
    file: Option<File>,
    path: PathBuf,
    hasher: Hasher,
    size: u64,
    blobs: PathBuf,
    _store: StoreLock,
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
        self,
        what: &str,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Digest> {
        self.stage(what, expected, size)?.install()
    }

    /// Verifies the bytes like [`BlobWriter::commit`] but leaves them
    /// outside `blobs/`: a [`StagedBlob`] enters the store only when
    /// [`StagedBlob::install`] is called, so that a caller can check many
    /// blobs (a bundle) and store all of them or none.
    pub fn stage(
        mut self,
        what: &str,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<StagedBlob> {
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
        Ok(StagedBlob {
            file: Some(file),
            path: self.path.clone(),
            blobs: self.blobs.clone(),
            digest: actual,
            size: self.size,
            _store: self._store.clone(),
        })
    }
}

/// A blob whose bytes hashed to [`StagedBlob::digest`], kept in this
/// process's temp directory until [`StagedBlob::install`] moves it into
/// the store. Dropped without installing, it is deleted.
pub struct StagedBlob {
    file: Option<File>,
    path: PathBuf,
    blobs: PathBuf,
    digest: Digest,
    size: u64,
    _store: StoreLock,
}

impl StagedBlob {
    /// What the bytes hash to.
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// How many bytes it holds.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The temp file (to read a small blob before deciding to keep it).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Moves the blob into the store (fsync, read-only, rename).
    pub fn install(mut self) -> Result<Digest> {
        let file = self.file.take().ok_or_else(|| {
            StoreError::io("installing", &self.path)(io::Error::other("already installed"))
        })?;
        let res = install_blob(&self.blobs, file, &self.path, &self.digest);
        if res.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        res.map(|()| self.digest)
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One blob inside an archive, for [`Store::stage_ranges`]: `len` bytes
/// from `offset`, which must hash to `expected`; `what` names it in errors.
#[derive(Debug, Clone)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub expected: Digest,
    pub what: String,
}

impl Store {
    /// Stages many blobs of one archive `src` as [`StagedBlob`]s, each
    /// checked against its expected digest, in one pass over the archive
    /// on two threads: this thread has the
    /// kernel copy every range into its temp file (`copy_file_range`, no
    /// bytes through user space) while a second thread hashes every range
    /// from `src`, so copying and hashing overlap over the whole archive,
    /// small blobs included. Returns the staged blobs in the order of
    /// `ranges`, or the first error or mismatch in that order (then every
    /// temp file is deleted). Nothing enters `blobs/`.
    pub fn stage_ranges(&self, src: &File, ranges: &[Range]) -> Result<Vec<StagedBlob>> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Mutex;
        let store = self.shared_lock()?;
        let blobs = self.base.join("blobs/sha256");
        let stop = AtomicBool::new(false);
        // The ranges not hashed yet: the hasher takes them from the front;
        // the copier, once every copy is made, from the back — so that the
        // two threads finish together when one large blob takes long to
        // hash.
        let left = Mutex::new((0usize, ranges.len()));
        let hashes: Mutex<Vec<Option<io::Result<Digest>>>> =
            Mutex::new((0..ranges.len()).map(|_| None).collect());
        let hash = |i: usize| {
            let r = &ranges[i];
            let h = hash_range(src, r.offset, r.len);
            if !matches!(&h, Ok(d) if *d == r.expected) {
                stop.store(true, Ordering::Relaxed);
            }
            if let Ok(mut v) = hashes.lock() {
                v[i] = Some(h);
            }
        };
        let take = |front: bool| -> Option<usize> {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let mut l = left.lock().ok()?;
            if l.0 >= l.1 {
                return None;
            }
            if front {
                l.0 += 1;
                Some(l.0 - 1)
            } else {
                l.1 -= 1;
                Some(l.1)
            }
        };
        std::thread::scope(|s| -> Result<Vec<StagedBlob>> {
            let hasher = s.spawn(|| {
                while let Some(i) = take(true) {
                    hash(i);
                }
            });
            let mut staged = Vec::with_capacity(ranges.len());
            let mut copy_err = None;
            for r in ranges {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match copy_range_to_temp(src, r, &self.session.dir) {
                    Ok((file, path)) => staged.push(StagedBlob {
                        file: Some(file),
                        path,
                        blobs: blobs.clone(),
                        digest: r.expected,
                        size: r.len,
                        _store: store.clone(),
                    }),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        copy_err = Some(e);
                        break;
                    }
                }
            }
            while let Some(i) = take(false) {
                hash(i);
            }
            hasher.join().map_err(|_| {
                StoreError::io("hashing", "an archive")(io::Error::other("hasher panicked"))
            })?;
            let hashes = std::mem::take(&mut *hashes.lock().unwrap_or_else(|p| p.into_inner()));
            // The first problem in archive order: a read error or a mismatch
            // a hasher found, else a copy error.
            for (r, h) in ranges.iter().zip(&hashes) {
                match h {
                    Some(Ok(d)) if *d == r.expected => {}
                    Some(Ok(d)) => {
                        return Err(StoreError::Mismatch {
                            what: r.what.clone(),
                            expected: r.expected,
                            actual: *d,
                        })
                    }
                    Some(Err(e)) => {
                        return Err(StoreError::io("reading", &r.what)(io::Error::new(
                            e.kind(),
                            e.to_string(),
                        )))
                    }
                    None => {}
                }
            }
            if let Some(e) = copy_err {
                return Err(e);
            }
            if hashes.iter().any(Option::is_none) || staged.len() != ranges.len() {
                return Err(StoreError::io("staging", "an archive")(io::Error::other(
                    "stopped early without a reason",
                )));
            }
            Ok(staged)
        })
    }
}

/// Copies one range of `src` into a new temp file in `dir`, by the kernel
/// where the filesystems allow it (`copy_file_range` at explicit offsets:
/// `src`'s file offset is not used), else through one buffer.
fn copy_range_to_temp(src: &File, r: &Range, dir: &Path) -> Result<(File, PathBuf)> {
    let (file, path) = temp_file(dir)?;
    let mut guard = TempGuard(Some(path.clone()));
    let mut off_in = r.offset;
    let mut done = 0u64;
    let mut kernel = true;
    while done < r.len {
        let want = (r.len - done).min(1 << 30) as usize;
        let n = if kernel {
            use rustix::io::Errno;
            match rustix::fs::copy_file_range(src, Some(&mut off_in), &file, None, want) {
                Ok(n) => n,
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if done == 0 => {
                    kernel = false;
                    continue;
                }
                Err(Errno::INTR) => continue,
                Err(e) => {
                    return Err(StoreError::io("copying", &r.what)(io::Error::from(e)));
                }
            }
        } else {
            let mut buf = vec![0u8; IO_BUF.min(want)];
            let n = src
                .read_at(&mut buf, r.offset + done)
                .map_err(StoreError::io("reading", &r.what))?;
            (&file)
                .write_all(&buf[..n])
                .map_err(StoreError::io("writing", &path))?;
            n
        };
        if n == 0 {
            return Err(StoreError::SizeMismatch {
                what: r.what.clone(),
                expected: r.len,
                actual: done,
            });
        }
        done += n as u64;
    }
    guard.0 = None;
    Ok((file, path))
}

impl StagedBlob {
    /// Moves many staged blobs into the store at once: each is made
    /// read-only, then one `syncfs` makes all their bytes durable (instead
    /// of one fsync per blob), then each is renamed into `blobs/` (unless
    /// an identical blob is there already) and `blobs/` is synced once.
    /// A blob is only ever renamed complete and durable; should a rename
    /// fail, the blobs not yet moved are deleted.
    pub fn install_all(staged: Vec<StagedBlob>) -> Result<Vec<Digest>> {
        let Some(first) = staged.first() else {
            return Ok(vec![]);
        };
        let blobs = first.blobs.clone();
        for b in &staged {
            if let Some(f) = &b.file {
                f.set_permissions(fs::Permissions::from_mode(0o444))
                    .map_err(StoreError::io("making read-only", &b.path))?;
            }
        }
        if let Some(f) = &first.file {
            nix::unistd::syncfs(f).map_err(|e| {
                StoreError::io("syncing the filesystem of", &first.path)(io::Error::from(e))
            })?;
        }
        let mut out = Vec::with_capacity(staged.len());
        for mut b in staged {
            let dest = b.blobs.join(b.digest.hex());
            // When an identical blob is there already (someone else stored
            // the same bytes first), ours is deleted on drop.
            if !dest.exists() {
                fs::rename(&b.path, &dest).map_err(StoreError::io("renaming into", &dest))?;
                b.file = None;
            }
            out.push(b.digest);
        }
        sync_dir(&blobs)?;
        Ok(out)
    }
}

/// The sha256 of each `(offset, len)` range of `src`, in order, hashed on
/// two threads (each takes the next range not yet taken).
pub fn hash_ranges(src: &File, ranges: &[(u64, u64)]) -> Vec<io::Result<Digest>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<io::Result<Digest>>>> =
        Mutex::new((0..ranges.len()).map(|_| None).collect());
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&(off, len)) = ranges.get(i) else {
            return;
        };
        let h = hash_range(src, off, len);
        if let Ok(mut r) = results.lock() {
            r[i] = Some(h);
        }
    };
    std::thread::scope(|s| {
        if ranges.len() > 1 {
            s.spawn(work);
        }
        work();
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("a hashing thread failed"))))
        .collect()
}

/// The sha256 of `len` bytes of `src` from `offset` (positional reads:
/// the file's offset is not used).
pub fn hash_range(src: &File, offset: u64, len: u64) -> io::Result<Digest> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; IO_BUF.min(len.max(1) as usize)];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = src.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends {} bytes early", len - done),
            ));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hasher.finish())
}

/// The one way a blob enters `blobs/`: chmod 0444, fsync, rename (unless an
/// identical blob won the race), fsync the directory.
fn install_blob(blobs: &Path, file: File, tmp: &Path, digest: &Digest) -> Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(StoreError::io("making read-only", tmp))?;
    file.sync_all().map_err(StoreError::io("syncing", tmp))?;
    drop(file);
    let dest = blobs.join(digest.hex());
    if dest.exists() {
        // Someone else stored the same bytes first; ours are identical.
        let _ = fs::remove_file(tmp);
    } else {
        fs::rename(tmp, &dest).map_err(StoreError::io("renaming into", &dest))?;
        sync_dir(blobs)?;
    }
    Ok(())
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Opens (creating) the lock file at `path` and `flock`s it; `None` when a
/// non-blocking `arg` finds it held.
fn flock_file(path: &Path, arg: nix::fcntl::FlockArg) -> Result<Option<nix::fcntl::Flock<File>>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)
        .map_err(StoreError::io("opening lock", path))?;
    match nix::fcntl::Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(StoreError::io("locking", path)(
            io::Error::from_raw_os_error(errno as i32),
        )),
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

/// Creates a fresh, empty temp directory in `dir`.
pub fn temp_dir(dir: &Path) -> Result<PathBuf> {
    Ok(tempfile::Builder::new()
        .prefix("d")
        .tempdir_in(dir)
        .map_err(StoreError::io("creating temp directory in", dir))?
        .keep())
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
    let mut guard = TempGuard(Some(p.clone()));
    f.write_all(data).map_err(StoreError::io("writing", &p))?;
    f.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(StoreError::io("setting permissions of", &p))?;
    f.sync_all().map_err(StoreError::io("syncing", &p))?;
    drop(f);
    fs::rename(&p, dest).map_err(StoreError::io("renaming into", dest))?;
    guard.0 = None;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Removes a directory tree that may be read-only (store trees are 0555):
/// makes every directory writable first, then removes everything. Symlinks
/// are never followed. A path that does not exist is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    fn unlock(dir: &Path) -> io::Result<()> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                unlock(&entry.path())?;
            }
        }
        Ok(())
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            unlock(path)?;
            fs::remove_dir_all(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_tree_renames_then_seals_and_keeps_the_first() -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir", "/tmp"))?;
        let store = Store::open(dir.path())?;
        let make = |content: &[u8]| -> Result<PathBuf> {
            let tmp = temp_dir(store.tmp_dir())?;
            fs::write(tmp.join("f"), content).map_err(StoreError::io("writing", &tmp))?;
            crate::tree::make_read_only(&tmp).map_err(StoreError::io("sealing", &tmp))?;
            Ok(tmp)
        };
        let dest = store.base().join("trees").join("x");
        let first = make(b"first")?;
        assert!(install_tree(&first, &dest)?);
        let mode = |p: &Path| fs::metadata(p).map(|m| m.mode() & 0o7777).unwrap_or(0);
        assert_eq!(mode(&dest), 0o555);
        assert_eq!(mode(&dest.join("f")), 0o444);
        assert!(!first.exists());
        // A second install of the same entry keeps the first, drops the new.
        let second = make(b"second")?;
        assert!(!install_tree(&second, &dest)?);
        assert!(!second.exists());
        assert_eq!(
            fs::read(dest.join("f")).map_err(StoreError::io("reading", &dest))?,
            b"first"
        );
        // An entry left unsealed is sealed again.
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
            .map_err(StoreError::io("chmod", &dest))?;
        seal_top(&dest).map_err(StoreError::io("sealing", &dest))?;
        assert_eq!(mode(&dest), 0o555);
        Ok(())
    }

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
    fn add_file_settled_and_fresh_paths() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir", "/tmp"))?;
        let store = Store::open(dir.path().join("home"))?;
        let fresh = dir.path().join("fresh");
        let settled = dir.path().join("settled");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&settled, &data[1..]).map_err(StoreError::io("writing", &settled))?;
        // Large and settled: copied while it is hashed. `twin` has the same
        // bytes under another identity: hashed and copied, then the copy is
        // thrown away.
        let big: Vec<u8> = (0..(SPECULATIVE_COPY_MIN as usize + 4096))
            .map(|i| (i % 253) as u8)
            .collect();
        let (large, twin) = (dir.path().join("large"), dir.path().join("twin"));
        fs::write(&large, &big).map_err(StoreError::io("writing", &large))?;
        fs::write(&twin, &big).map_err(StoreError::io("writing", &twin))?;
        std::thread::sleep(std::time::Duration::from_millis(
            SETTLED_SECS as u64 * 1000 + 1100,
        ));
        fs::write(&fresh, &data).map_err(StoreError::io("writing", &fresh))?;
        let seen = || fs::read_dir(store.base().join("seen")).map_or(0, |d| d.count());
        let only_lock_in_tmp = || {
            let n = fs::read_dir(store.tmp_dir()).map_or(0, |d| d.count());
            assert_eq!(n, 1, "only the session lock remains in tmp");
        };
        for (p, bytes) in [
            (&fresh, &data[..]),
            (&settled, &data[1..]),
            (&large, &big[..]),
        ] {
            let added = store.add_file(p)?;
            assert!(added.new);
            assert_eq!(added.digest, Digest::of(bytes));
            let blob = store.blob_path(&added.digest);
            assert_eq!(
                fs::read(&blob).map_err(StoreError::io("reading", &blob))?,
                bytes
            );
            let again = store.add_file(p)?;
            assert!(!again.new);
            only_lock_in_tmp();
        }
        // One marker per file identity added.
        assert_eq!(seen(), 3);
        let other = store.add_file(&twin)?;
        assert!(!other.new);
        assert_eq!(other.digest, Digest::of(&big));
        only_lock_in_tmp();
        assert_eq!(seen(), 4);
        Ok(())
    }

    /// A large settled file written to while it is hashed and copied: the
    /// add is refused as changed, or — if the write came too early or too
    /// late to matter — the blob holds exactly the bytes its name says.
    #[test]
    fn add_file_written_to_meanwhile_never_stores_a_wrong_blob() -> Result<()> {
        use std::io::Write as _;
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir", "/tmp"))?;
        let store = Store::open(dir.path().join("home"))?;
        let files: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("f{i}"))).collect();
        let big: Vec<u8> = (0..(SPECULATIVE_COPY_MIN as usize * 2))
            .map(|i| (i % 241) as u8)
            .collect();
        for f in &files {
            fs::write(f, &big).map_err(StoreError::io("writing", f))?;
        }
        std::thread::sleep(std::time::Duration::from_millis(
            SETTLED_SECS as u64 * 1000 + 1100,
        ));
        for (i, f) in files.iter().enumerate() {
            let writer = {
                let f = f.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(5 * i as u64));
                    let mut h = OpenOptions::new().append(true).open(&f).unwrap();
                    h.write_all(b"more").unwrap();
                })
            };
            let added = store.add_file(f);
            writer.join().unwrap();
            match added {
                Err(StoreError::Changed { .. }) => {}
                Err(e) => panic!("{e}"),
                Ok(a) => {
                    let blob = store.blob_path(&a.digest);
                    let bytes = fs::read(&blob).map_err(StoreError::io("reading", &blob))?;
                    assert_eq!(Digest::of(&bytes), a.digest);
                }
            }
            let n = fs::read_dir(store.tmp_dir()).map_or(0, |d| d.count());
            assert_eq!(n, 1, "nothing left behind in tmp");
        }
        Ok(())
    }

    #[test]
    fn staged_ranges_install_all_or_nothing() -> Result<()> {
        let dir = tempfile::tempdir().map_err(StoreError::io("tempdir", "/tmp"))?;
        let store = Store::open(dir.path().join("s"))?;
        // An "archive": three blobs, one big enough to take many copy calls.
        let parts: Vec<Vec<u8>> = vec![
            b"first".to_vec(),
            (0..(3 << 20)).map(|i| (i % 251) as u8).collect(),
            Vec::new(),
        ];
        let archive = dir.path().join("a");
        let mut bytes = b"header".to_vec();
        let mut ranges = Vec::new();
        for p in &parts {
            ranges.push(Range {
                offset: bytes.len() as u64,
                len: p.len() as u64,
                expected: Digest::of(p),
                what: "part".into(),
            });
            bytes.extend_from_slice(p);
        }
        fs::write(&archive, &bytes).map_err(StoreError::io("writing", &archive))?;
        let src = File::open(&archive).map_err(StoreError::io("opening", &archive))?;
        let tmp_files = |store: &Store| {
            fs::read_dir(&store.session.dir)
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let before = tmp_files(&store);

        // One wrong digest: an error naming it, no temp file left, nothing stored.
        let mut bad = ranges.clone();
        bad[1].expected = Digest::of(b"else");
        match store.stage_ranges(&src, &bad) {
            Err(StoreError::Mismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, bad[1].expected);
                assert_eq!(actual, ranges[1].expected);
            }
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        assert_eq!(tmp_files(&store), before);
        for r in &ranges {
            assert!(store.blob(&r.expected).is_none());
        }
        // A range past the end of the archive.
        let mut short = ranges.clone();
        short[1].len += 1;
        assert!(store.stage_ranges(&src, &short).is_err());
        assert_eq!(tmp_files(&store), before);

        // All good: staged, then installed at once, byte for byte.
        let staged = store.stage_ranges(&src, &ranges)?;
        assert_eq!(staged.len(), 3);
        let digests = StagedBlob::install_all(staged)?;
        assert_eq!(
            digests,
            ranges.iter().map(|r| r.expected).collect::<Vec<_>>()
        );
        for (r, p) in ranges.iter().zip(&parts) {
            let path = store.blob(&r.expected).expect("stored");
            assert_eq!(
                &fs::read(&path).map_err(StoreError::io("reading", &path))?,
                p
            );
        }
        assert_eq!(tmp_files(&store), before);
        // Again: already there, the staged copies are dropped.
        let staged = store.stage_ranges(&src, &ranges)?;
        StagedBlob::install_all(staged)?;
        assert_eq!(tmp_files(&store), before);
        // hash_ranges agrees, in order.
        let plain: Vec<(u64, u64)> = ranges.iter().map(|r| (r.offset, r.len)).collect();
        let hashed: Vec<Digest> = hash_ranges(&src, &plain)
            .into_iter()
            .collect::<io::Result<_>>()
            .map_err(StoreError::io("hashing", &archive))?;
        assert_eq!(hashed, digests);
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
