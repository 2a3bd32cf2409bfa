//! Local `path` sources: the directory a spec names (inside its project),
//! the files its `include`/`exclude` select, and their canonical tar — the
//! same serialisation as outputs, by the same serialiser — named by digest.
//!
//! Two steps, so that a cache hit never copies or stores anything:
//!
//! - [`tree_digest`] (resolve): walks the directory through directory
//!   descriptors, never following a symlink, and streams the canonical tar
//!   of the selected entries into sha256 — no copy, no blob. A stat cache
//!   ([`statcache`]) lets an unchanged tree be answered from lstat/readdir
//!   alone, the way git answers `git status` from its index.
//! - [`store_tree_blob`] (materialise): streams the same bytes into a store
//!   blob, checked against the digest resolve found. Called only when the
//!   build really runs, and by `hermit mirror`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hermit_store::{Digest, Store};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use rustix::fs::{Dir, FileType};

use crate::exit::Exit;
use crate::output::{self, FileSource, Kind, Node, OutputError};
use crate::spec::{Source, SourceKind, Spec};

pub mod statcache;

/// The directory a local source is read from: the spec's directory joined
/// with its `path`, every symlink resolved. It must lie inside the project —
/// the spec's directory and below — so a `path` that is (or passes through)
/// a symlink leading elsewhere is refused, naming the spec's line.
pub fn local_source_root(spec: &Spec, source: &Source, spec_dir: &Path) -> anyhow::Result<PathBuf> {
    let SourceKind::Local { path, .. } = &source.kind else {
        bail!("internal error: source {:?} is not local", source.name);
    };
    let project = fs::canonicalize(spec_dir)
        .with_context(|| format!("resolving the spec's directory {}", spec_dir.display()))?;
    let given = spec_dir.join(path);
    let user_error = |message: String, help: &str| -> anyhow::Error {
        Exit::user(
            spec.error_at(source.at, message, Some(help.to_string()))
                .to_string(),
        )
        .into()
    };
    let real = fs::canonicalize(&given).map_err(|e| {
        user_error(
            format!(
                "local source {:?}: cannot read {}: {e}",
                source.name,
                given.display()
            ),
            "create the directory, or correct `path` (relative to the spec's directory)",
        )
    })?;
    if !real.starts_with(&project) {
        return Err(user_error(
            format!(
                "local source {:?}: path {path:?} leads to {}, outside the project {} (through a symlink)",
                source.name,
                real.display(),
                project.display()
            ),
            "hermit reads local sources only from the spec's directory and below; replace the symlink with the files themselves",
        ));
    }
    if !real.is_dir() {
        return Err(user_error(
            format!(
                "local source {:?}: {} is not a directory",
                source.name,
                given.display()
            ),
            "point `path` at a directory (e.g. \".\" for the spec's own)",
        ));
    }
    Ok(real)
}

/// Names always left out of a local source unless `include` names them.
const DEFAULT_EXCLUDES: &[&str] = &[".git", "result", "hermit.lock"];

/// What lstat said about one selected entry while the tree was walked: the
/// stat cache's unit of comparison (see [`statcache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// The raw `st_mode` (type and permission bits).
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
}

impl Stat {
    fn of(st: &FileStat) -> Stat {
        Stat {
            mode: st.st_mode,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
        }
    }
}

/// The selected entries of a local tree, in canonical order (bytewise by
/// path), each with its stat data.
pub struct Selection {
    pub(crate) nodes: Vec<Node>,
    pub stats: Vec<Stat>,
    /// Every directory listed (the root is ""), with its stat data and
    /// names, for the stat cache's directory memos.
    pub dirs: Vec<(String, DirMemo)>,
}

/// What a directory held when it was listed: its own stat data (taken
/// before the listing) and every name in it, with readdir's type (`Some(true)`
/// for a directory, `None` when the filesystem gave none). A directory whose
/// stat data are unchanged holds the same names: creating, removing or
/// renaming an entry moves its parent's mtime and ctime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirMemo {
    pub stat: Stat,
    /// Shared: a memo reused by the walk is not copied.
    pub names: std::sync::Arc<Vec<(Vec<u8>, Option<bool>)>>,
}

/// What [`select`] found: the entries with their stat data (in canonical
/// order) and every directory listed.
type Selected = (Vec<(Node, Stat)>, Vec<(String, DirMemo)>);

/// Directory memos by path (see [`statcache`]).
pub type DirMemos = std::collections::HashMap<String, DirMemo>;

/// A local tree opened for reading: its root's descriptor and what was
/// selected below it.
struct Opened {
    root: OwnedFd,
    shown: PathBuf,
    selection: Selection,
}

/// The digest of the canonical tar of the selected files of `root` (the
/// same bytes [`store_tree_blob`] stores), without copying or storing
/// anything. An unchanged tree is answered from the stat cache after a walk
/// of lstat/readdir calls alone; otherwise the tree's bytes are streamed
/// into the hasher and the cache is refreshed (best effort: a cache that
/// cannot be read or written only costs time).
pub fn tree_digest(
    store: &Store,
    root: &Path,
    include: &[String],
    exclude: &[String],
    sde: u64,
) -> anyhow::Result<Digest> {
    let key = statcache::Key::new(root, include, exclude, sde);
    let cache = statcache::StatCache::new(store);
    // Before anything is looked at: an entry that changed after this
    // instant cannot keep the stat data recorded below.
    let t0 = statcache::now();
    let loaded = cache.load(&key);
    let memos = loaded.as_ref().and_then(|l| l.memos());
    let first = open_tree(root, include, exclude, memos.as_ref());
    if let (Ok(opened), Some(l)) = (&first, &loaded) {
        if let Some(digest) = l.check(&opened.selection) {
            return Ok(digest);
        }
    }
    // The memos only ever lead to a remembered digest: a tree that is
    // hashed is walked afresh (so a damaged cache can cost time, never a
    // wrong digest or an error).
    let opened = match first {
        Ok(o) if memos.is_none() => o,
        Err(e) if memos.is_none() => return Err(e),
        _ => open_tree(root, include, exclude, None)?,
    };
    let digest = stream(&opened, sde, None)?;
    cache.store(&key, t0, &opened.selection, &digest);
    Ok(digest)
}

/// Makes sure the canonical tar of `root`'s selected files is in the store
/// as the blob `expected` (what [`tree_digest`] found). Streams it into the
/// store only when the blob is missing; a tree that no longer hashes to
/// `expected` (it changed since it was resolved) stores nothing and is a
/// user error: build again.
pub fn store_tree_blob(
    store: &Store,
    root: &Path,
    include: &[String],
    exclude: &[String],
    sde: u64,
    expected: &Digest,
) -> anyhow::Result<()> {
    if store.blob(expected).is_some() {
        return Ok(());
    }
    let opened = open_tree(root, include, exclude, None)?;
    let mut writer = store.blob_writer()?;
    stream(&opened, sde, Some(&mut writer))?;
    match writer.commit(&root.display().to_string(), Some(expected), None) {
        Ok(_) => Ok(()),
        Err(hermit_store::StoreError::Mismatch { actual, .. }) => Err(Exit::user(format!(
            "{} changed while hermit read it (it hashed to {expected}, now to {actual}); build again",
            root.display()
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// [`tree_digest`] and then [`store_tree_blob`]: the digest of a local
/// tree whose blob is now in the store (for `hermit mirror`).
pub fn local_tree_blob(
    store: &Store,
    root: &Path,
    include: &[String],
    exclude: &[String],
    sde: u64,
) -> anyhow::Result<Digest> {
    let digest = tree_digest(store, root, include, exclude, sde)?;
    store_tree_blob(store, root, include, exclude, sde, &digest)?;
    Ok(digest)
}

/// Opens `root` (no symlink in its place; it must still be the directory
/// that was resolved) and selects its entries.
fn open_tree(
    root: &Path,
    include: &[String],
    exclude: &[String],
    memos: Option<&DirMemos>,
) -> anyhow::Result<Opened> {
    // Opened once, without following a symlink in its place; everything
    // below is reached through this descriptor.
    let dir = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Exit::user(format!(
            "{} cannot be read as a directory: {}",
            root.display(),
            std::io::Error::from(e)
        ))
    })?;
    // `root` was resolved and checked to lie in the project; what was
    // opened must still be that directory.
    let opened =
        fs::read_link(fd_path(&dir)).with_context(|| format!("resolving {}", root.display()))?;
    if root.is_absolute() && opened != root {
        return Err(Exit::user(format!(
            "{} changed while hermit read it (it now leads to {}); build again",
            root.display(),
            opened.display()
        ))
        .into());
    }
    // rustix's `Dir` reads with getdents64 straight from the descriptor
    // (libc's fdopendir/rewinddir cost four more calls per directory).
    let listing = Dir::new(
        dir.try_clone()
            .with_context(|| format!("opening {}", root.display()))?,
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("opening {}", root.display()))?;
    let (found, dirs) = select(listing, root, include, exclude, memos)?;
    let (nodes, stats) = found.into_iter().unzip();
    Ok(Opened {
        root: dir,
        shown: root.to_path_buf(),
        selection: Selection { nodes, stats, dirs },
    })
}

/// Checks the selection's symlinks and streams its canonical tar into
/// sha256 and, if given, `sink`.
fn stream(
    opened: &Opened,
    sde: u64,
    sink: Option<&mut dyn std::io::Write>,
) -> anyhow::Result<Digest> {
    let nodes = &opened.selection.nodes;
    let serialised = output::check_symlinks(nodes).and_then(|()| {
        output::serialise(
            &Beneath {
                root: opened.root.as_fd(),
                shown: &opened.shown,
                stats: &opened.selection.stats,
            },
            nodes,
            sde,
            sink,
        )
    });
    let n = serialised.with_context(|| format!("serialising {}", opened.shown.display()))?;
    Ok(n.digest)
}

/// The `/proc/self/fd/N` path of an open directory.
fn fd_path(dir: &OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// One entry the walk selected. A `conditional` entry is a directory that
/// is not included itself: it is kept only when something below it is.
struct Found {
    node: Node,
    stat: Stat,
    conditional: bool,
}

/// One directory's part of the canonical order: its entries keyed by
/// name, and its subdirectories' contents keyed by name + `/` — sorted by
/// key, then expanded depth first, this is the bytewise order of the
/// entries' paths (`a`, `a-b`, `a.c`, `a/x`) without a global sort.
enum Item {
    Entry(Found),
    Below(String),
}

impl Item {
    /// Its place among its directory's items: an entry by its name, a
    /// subdirectory's contents by the name followed by `/`.
    fn key(&self) -> impl Iterator<Item = u8> + '_ {
        let (path, below) = match self {
            Item::Entry(f) => (f.node.path.as_str(), false),
            Item::Below(rel) => (rel.as_str(), true),
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        name.bytes().chain(below.then_some(b'/'))
    }
}

/// The sorted items of the directory at a path, and what it held.
type Listing = (String, Vec<Item>, DirMemo);

/// A directory still to be listed.
struct Job<'a> {
    dir: Dir,
    shown: PathBuf,
    rel: String,
    include: &'a [String],
}

/// Where an error was met, as the sequential walk (sorted names, depth
/// first) would meet it: the path's components, compared in order.
type Position = Vec<Vec<u8>>;

fn position(rel: &str, name: &[u8]) -> Position {
    let mut p: Position = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.as_bytes().to_vec())
        .collect();
    if !name.is_empty() {
        p.push(name.to_vec());
    }
    p
}

/// Directories queued beyond this are walked by the thread that found them
/// (every queued directory holds a descriptor).
const MAX_QUEUED: usize = 256;

/// The work queue of a walk shared by its threads.
struct Walk<'a> {
    exclude: &'a [String],
    memos: Option<&'a DirMemos>,
    state: std::sync::Mutex<(Vec<Job<'a>>, usize)>,
    wake: std::sync::Condvar,
}

/// Collects the selected entries below the open root directory `root`
/// with their stat data, on up to four threads (like git's preloaded
/// index: the walk is lstat-bound, and directories are independent).
///
/// The selection: an entry matched by `exclude` (or, without `include`, one
/// of [`DEFAULT_EXCLUDES`]) is left out with everything below it; with an
/// `include` list, files and symlinks must match it, everything below an
/// included directory is included, and a directory that is not included
/// itself is kept only when something below it is.
///
/// Directories are opened through their parent's descriptor without
/// following symlinks, so an entry swapped for a symlink while the tree is
/// read is refused, never followed out of the project. When entries are
/// refused in several places, the error reported is the one a sequential
/// walk in sorted order would meet first, whatever the threads' timing.
fn select(
    root: Dir,
    shown: &Path,
    include: &[String],
    exclude: &[String],
    memos: Option<&DirMemos>,
) -> anyhow::Result<Selected> {
    let walk = Walk {
        exclude,
        memos,
        state: std::sync::Mutex::new((
            vec![Job {
                dir: root,
                shown: shown.to_path_buf(),
                rel: String::new(),
                include,
            }],
            0,
        )),
        wake: std::sync::Condvar::new(),
    };
    // The CPUs this process may run on (one call; std's
    // available_parallelism also reads cgroup files).
    let threads = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(1)
        .clamp(1, 4);
    let results = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(|| walk.worker())).collect();
        let mut all = vec![walk.worker()];
        for h in helpers {
            all.push(h.join().unwrap_or_else(|_| {
                (
                    Vec::new(),
                    vec![(
                        Vec::new(),
                        anyhow::anyhow!("a thread walking the tree failed"),
                    )],
                )
            }));
        }
        all
    });
    let mut listings = std::collections::HashMap::new();
    let mut dirs = Vec::new();
    let mut errors = Vec::new();
    for (l, e) in results {
        for (rel, items, memo) in l {
            dirs.push((rel.clone(), memo));
            listings.insert(rel, items);
        }
        errors.extend(e);
    }
    if let Some((_, e)) = errors.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(e);
    }
    let mut found = Vec::new();
    let mut stack = vec![listings
        .remove("")
        .map(|items| items.into_iter())
        .ok_or_else(|| anyhow::anyhow!("internal error: the walk lost {}", shown.display()))?];
    while let Some(top) = stack.last_mut() {
        match top.next() {
            None => {
                stack.pop();
            }
            Some(Item::Entry(f)) => found.push(f),
            Some(Item::Below(rel)) => {
                if let Some(items) = listings.remove(&rel) {
                    stack.push(items.into_iter());
                }
            }
        }
    }
    // Directories that are not included themselves stay only above
    // something that is.
    if found.iter().any(|f| f.conditional) {
        let mut above = std::collections::HashSet::new();
        for f in found.iter().filter(|f| !f.conditional) {
            let mut p = f.node.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !above.insert(parent.to_string()) {
                    break;
                }
                p = parent;
            }
        }
        found.retain(|f| !f.conditional || above.contains(&f.node.path));
    }
    Ok((found.into_iter().map(|f| (f.node, f.stat)).collect(), dirs))
}

impl<'a> Walk<'a> {
    /// Lists queued directories until none is left and none is being
    /// listed (which could queue more).
    fn worker(&self) -> (Vec<Listing>, Vec<(Position, anyhow::Error)>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        loop {
            let job = {
                let Ok(mut st) = self.state.lock() else {
                    break;
                };
                loop {
                    if let Some(j) = st.0.pop() {
                        st.1 += 1;
                        break Some(j);
                    }
                    if st.1 == 0 {
                        break None;
                    }
                    st = match self.wake.wait(st) {
                        Ok(st) => st,
                        Err(_) => break None,
                    };
                }
            };
            let Some(job) = job else {
                self.wake.notify_all();
                break;
            };
            if let Err(e) = self.list(job, &mut found) {
                errors.push(e);
            }
            if let Ok(mut st) = self.state.lock() {
                st.1 -= 1;
                if st.0.is_empty() && st.1 == 0 {
                    self.wake.notify_all();
                }
            }
        }
        (found, errors)
    }

    /// Selects the entries of one directory; its subdirectories are queued
    /// (or, when the queue is full, listed right here).
    fn list(&self, job: Job<'a>, done: &mut Vec<Listing>) -> Result<(), (Position, anyhow::Error)> {
        let Job {
            mut dir,
            shown,
            rel,
            include,
        } = job;
        // The directory's own stat data, before it is listed: unchanged
        // since the stat cache's memo, it holds the same names.
        let dstat = dir
            .fd()
            .map_err(std::io::Error::from)
            .and_then(|fd| nix::sys::stat::fstat(fd).map_err(std::io::Error::from))
            .map(|st| Stat::of(&st))
            .with_context(|| format!("reading {}", shown.display()))
            .map_err(|e| (position(&rel, b""), e))?;
        let remembered = self
            .memos
            .and_then(|m| m.get(&rel))
            .filter(|m| m.stat == dstat);
        let names = match remembered {
            Some(m) => m.names.clone(),
            None => {
                let mut names = Vec::new();
                while let Some(e) = dir.read() {
                    let e = e
                        .map_err(std::io::Error::from)
                        .with_context(|| format!("listing {}", shown.display()))
                        .map_err(|e| (position(&rel, b""), e))?;
                    let name = e.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        // readdir's type, when the filesystem gives one.
                        let hint = match e.file_type() {
                            FileType::Unknown => None,
                            t => Some(t == FileType::Directory),
                        };
                        names.push((name.to_vec(), hint));
                    }
                }
                names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                std::sync::Arc::new(names)
            }
        };
        let dirfd = dir
            .fd()
            .map_err(std::io::Error::from)
            .with_context(|| format!("listing {}", shown.display()))
            .map_err(|e| (position(&rel, b""), e))?;
        let mut subdirs = Vec::new();
        let mut items = Vec::with_capacity(names.len());
        // The first refusal in this directory; the directories before it
        // are still walked (a sequential walk would have met theirs first).
        let mut refused = None;
        for (raw, hint) in names.iter() {
            if let Err(e) = self.entry(
                dirfd,
                &shown,
                &rel,
                include,
                raw,
                *hint,
                &mut items,
                &mut subdirs,
            ) {
                refused = Some(e);
                break;
            }
        }
        drop(dir);
        items.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        done.push((rel.clone(), items, DirMemo { stat: dstat, names }));
        let result = match refused {
            Some(e) => Err(e),
            None => Ok(()),
        };
        if subdirs.is_empty() {
            return result;
        }
        let inline = {
            let Ok(mut st) = self.state.lock() else {
                return Err((position(&rel, b""), anyhow::anyhow!("the tree walk failed")));
            };
            if st.0.len() + subdirs.len() <= MAX_QUEUED {
                st.0.append(&mut subdirs);
                None
            } else {
                Some(subdirs)
            }
        };
        match inline {
            None => self.wake.notify_all(),
            Some(subdirs) => {
                for j in subdirs {
                    self.list(j, done)?;
                }
            }
        }
        result
    }

    /// Selects one entry of a directory (see [`select`]).
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        dir: BorrowedFd<'_>,
        shown: &Path,
        rel: &str,
        include: &'a [String],
        raw: &[u8],
        hint: Option<bool>,
        items: &mut Vec<Item>,
        subdirs: &mut Vec<Job<'a>>,
    ) -> Result<(), (Position, anyhow::Error)> {
        let exclude = self.exclude;
        let at = |e: anyhow::Error| (position(rel, raw), e);
        let Ok(name) = std::str::from_utf8(raw) else {
            return Err(at(anyhow::anyhow!(
                "{}: file names must be UTF-8",
                shown.join(OsStr::from_bytes(raw)).display()
            )));
        };
        let mut path = String::with_capacity(rel.len() + 1 + name.len());
        if !rel.is_empty() {
            path.push_str(rel);
            path.push('/');
        }
        path.push_str(name);
        let included = include.is_empty() || include.iter().any(|g| glob_match(g, &path));
        let excluded = exclude.iter().any(|g| glob_match(g, &path))
            || (include.is_empty() && rel.is_empty() && DEFAULT_EXCLUDES.contains(&name));
        if excluded {
            return Ok(());
        }
        // A file that is not included is never looked at.
        if !included && hint == Some(false) {
            return Ok(());
        }
        let shown_e = || shown.join(name);
        // A directory's own stat data change nothing in the stream (and
        // the stat cache compares directories by name): readdir's type
        // suffices, and opening it without following symlinks checks it.
        let (stat, fmt) = if hint == Some(true) {
            (Stat::default(), libc::S_IFDIR)
        } else {
            let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(std::io::Error::from)
                .with_context(|| format!("reading {}", shown_e().display()))
                .map_err(at)?;
            (Stat::of(&st), st.st_mode & libc::S_IFMT)
        };
        if fmt == libc::S_IFDIR {
            let child = nix::fcntl::openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|fd| Dir::new(fd).map_err(std::io::Error::from))
            .with_context(|| format!("opening {}", shown_e().display()))
            .map_err(at)?;
            items.push(Item::Entry(Found {
                node: node(path.clone(), Kind::Directory, 0o755, 0, None),
                stat,
                conditional: !included,
            }));
            items.push(Item::Below(path.clone()));
            // Everything below an included directory is included.
            let sub: &'a [String] = if included && !include.is_empty() {
                &[]
            } else {
                include
            };
            subdirs.push(Job {
                dir: child,
                shown: shown_e(),
                rel: path,
                include: sub,
            });
        } else if included {
            if fmt == libc::S_IFLNK {
                let target = nix::fcntl::readlinkat(dir, name)
                    .map_err(std::io::Error::from)
                    .with_context(|| format!("reading link {}", shown_e().display()))
                    .map_err(at)?;
                check_local_symlink(&path, Path::new(&target)).map_err(at)?;
                let Some(target) = target.to_str() else {
                    return Err(at(Exit::user(format!(
                        "{} is a symlink whose target is not UTF-8; rename the target, or leave the link out with `exclude = [\"{path}\"]`",
                        shown_e().display()
                    ))
                    .into()));
                };
                items.push(Item::Entry(Found {
                    node: node(path, Kind::Symlink, 0o777, 0, Some(target.to_string())),
                    stat,
                    conditional: false,
                }));
            } else if fmt == libc::S_IFREG {
                let mode = Node::file_mode(stat.mode);
                items.push(Item::Entry(Found {
                    node: node(path, Kind::File, mode, stat.size, None),
                    stat,
                    conditional: false,
                }));
            } else {
                return Err(at(Exit::user(format!(
                    "{} is not a regular file; local sources hold files, directories and symlinks only",
                    shown_e().display()
                ))
                .into()));
            }
        }
        Ok(())
    }
}

fn node(path: String, kind: Kind, mode: u32, size: u64, target: Option<String>) -> Node {
    Node {
        path,
        kind,
        mode,
        size,
        target,
    }
}

/// A symlink in a local source is kept as a symlink, never followed; one
/// whose target is absolute or climbs above the source's root is refused
/// here by name (the build would see it point into its own root filesystem).
/// Chains through the tree's own symlinks are checked when it is serialised.
fn check_local_symlink(rel: &str, target: &Path) -> anyhow::Result<()> {
    let t = target.to_string_lossy();
    let mut depth = rel.matches('/').count() as i64;
    let mut outside = t.starts_with('/');
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            outside = true;
        }
    }
    if outside {
        return Err(Exit::user(format!(
            "{rel} is a symlink to {t}, which leads outside the source's directory; \
             hermit keeps symlinks as they are and never follows them, so the build could not see those files; \
             replace it with the files themselves, or leave it out with `exclude = [\"{rel}\"]`"
        ))
        .into());
    }
    Ok(())
}

/// The files of a selection, opened below the root's descriptor: no
/// symlink is followed and no `..` leaves the root (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and each file must still be
/// the one the walk saw — same inode before the read, same size and
/// timestamps after it — or the read is refused as a change in flight. So
/// the stat data the cache records always describes the bytes hashed.
struct Beneath<'a> {
    root: BorrowedFd<'a>,
    shown: &'a Path,
    stats: &'a [Stat],
}

impl Beneath<'_> {
    fn changed(&self, node: &Node) -> OutputError {
        OutputError::SourceChanged(self.shown(node))
    }

    fn fstat(&self, node: &Node, file: &File) -> Result<Stat, OutputError> {
        nix::sys::stat::fstat(file)
            .map(|st| Stat::of(&st))
            .map_err(|e| OutputError::Io {
                op: "reading",
                path: self.shown(node),
                source: e.into(),
            })
    }
}

impl FileSource for Beneath<'_> {
    fn shown(&self, node: &Node) -> PathBuf {
        self.shown.join(&node.path)
    }

    fn open(&self, index: usize, node: &Node) -> Result<File, OutputError> {
        let fd = open_beneath(self.root, &node.path).map_err(|e| OutputError::Io {
            op: "opening",
            path: self.shown(node),
            source: e,
        })?;
        let file = File::from(fd);
        let now = self.fstat(node, &file)?;
        let then = self.stats.get(index).ok_or(OutputError::Thread)?;
        if (now.ino, now.dev, now.mode & libc::S_IFMT) != (then.ino, then.dev, libc::S_IFREG) {
            return Err(self.changed(node));
        }
        Ok(file)
    }

    fn read_done(&self, index: usize, node: &Node, file: &File) -> Result<(), OutputError> {
        let now = self.fstat(node, file)?;
        let then = self.stats.get(index).ok_or(OutputError::Thread)?;
        if now != *then {
            return Err(self.changed(node));
        }
        Ok(())
    }
}

/// Opens the regular file at `rel` below `root` for reading without
/// following any symlink or leaving `root`. Falls back to opening one
/// component at a time (each `O_NOFOLLOW`) where `openat2` is missing.
fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{OpenHow, ResolveFlag};
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(root, rel, how) {
        Ok(fd) => return Ok(fd),
        Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
    }
    let mut parts = rel.split('/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        if part.is_empty() || part == "." || part == ".." {
            return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
        }
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        let last = parts.peek().is_none();
        let f = if last {
            flags
        } else {
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
        };
        let fd = nix::fcntl::openat(at, part, f, Mode::empty())?;
        if last {
            return Ok(fd);
        }
        dir = Some(fd);
    }
    Err(std::io::Error::from_raw_os_error(libc::ENOENT))
}

/// Glob match of a relative path: `*` and `?` within one component, `**`
/// across any number of components. A pattern without `/` matches the last
/// component at any depth (`*.o`, `Makefile`).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    if !pattern.contains('/') {
        let base = path.rsplit('/').next().unwrap_or(path);
        return component_match(pattern.as_bytes(), base.as_bytes());
    }
    let pat: Vec<&str> = pattern.trim_start_matches("./").split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    segments_match(&pat, &parts)
}

fn segments_match(pat: &[&str], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|i| segments_match(rest, &parts[i..])),
        Some((p, rest)) => match parts.split_first() {
            Some((first, others)) => {
                component_match(p.as_bytes(), first.as_bytes()) && segments_match(rest, others)
            }
            None => false,
        },
    }
}

fn component_match(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| component_match(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && component_match(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && component_match(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const SDE: u64 = 315532800;

    // The way local trees were hashed before the streaming serialiser: copy
    // the selected entries into a staging directory, then normalise the copy
    // like an output. Kept here as the reference the stream must equal.
    fn old_copy_then_normalise(
        root: &Path,
        include: &[String],
        exclude: &[String],
    ) -> anyhow::Result<(Digest, Vec<u8>)> {
        let staging = tempfile::tempdir()?;
        let copy = staging.path().join("tree");
        fs::create_dir(&copy)?;
        old_copy_selected(root, &copy, "", include, exclude)?;
        let mut bytes = Vec::new();
        let n = output::normalize(&copy, &output::Options::new(SDE), Some(&mut bytes))
            .with_context(|| format!("serialising {}", root.display()))?;
        Ok((n.digest, bytes))
    }

    fn old_copy_selected(
        src: &Path,
        dst: &Path,
        rel: &str,
        include: &[String],
        exclude: &[String],
    ) -> anyhow::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                bail!("{}: file names must be UTF-8", src.join(&name).display());
            };
            let path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let t = e.file_type()?;
            let included = include.is_empty() || include.iter().any(|g| glob_match(g, &path));
            let excluded = exclude.iter().any(|g| glob_match(g, &path))
                || (include.is_empty() && DEFAULT_EXCLUDES.contains(&path.as_str()));
            if excluded {
                continue;
            }
            let to = dst.join(name);
            if t.is_dir() {
                fs::create_dir(&to)?;
                let sub: &[String] = if included && !include.is_empty() {
                    &[]
                } else {
                    include
                };
                old_copy_selected(&src.join(name), &to, &path, sub, exclude)?;
                if fs::read_dir(&to)?.next().is_none() && !included {
                    fs::remove_dir(&to)?;
                }
            } else if included {
                if t.is_symlink() {
                    let target = fs::read_link(src.join(name))?;
                    check_local_symlink(&path, &target)?;
                    symlink(&target, &to)?;
                } else if t.is_file() {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mode = fs::metadata(src.join(name))?.permissions().mode() & 0o777;
                    let mut d = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&to)?;
                    std::io::copy(&mut File::open(src.join(name))?, &mut d)?;
                } else {
                    bail!("{} is not a regular file; local sources hold files, directories and symlinks only", src.join(name).display());
                }
            }
        }
        Ok(())
    }

    fn new_stream(
        root: &Path,
        include: &[String],
        exclude: &[String],
    ) -> anyhow::Result<(Digest, Vec<u8>)> {
        let opened = open_tree(root, include, exclude, None)?;
        let mut bytes = Vec::new();
        let d = stream(&opened, SDE, Some(&mut bytes))?;
        Ok((d, bytes))
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Modes, symlinks (inside, dangling, to directories), empty
    /// directories, hard links, default excludes, PAX-long names, a file
    /// larger than the serialiser's buffer, names that sort around `/`.
    fn tricky_tree(t: &Path) {
        let mode = |p: &str, m: u32| {
            fs::set_permissions(t.join(p), fs::Permissions::from_mode(m)).unwrap()
        };
        for d in ["src/sub", "empty", "e1/e2", ".git/objects", "docs/a/b", "a"] {
            fs::create_dir_all(t.join(d)).unwrap();
        }
        fs::write(t.join("src/main.c"), b"int main(void) { return 0; }\n").unwrap();
        fs::write(t.join("src/main.o"), b"\x7fELF").unwrap();
        fs::write(t.join("src/sub/x.c"), b"x").unwrap();
        fs::write(t.join("src/run.sh"), b"#!/bin/sh\n").unwrap();
        mode("src/run.sh", 0o700);
        fs::write(t.join("src/group-x"), b"g").unwrap();
        mode("src/group-x", 0o610);
        fs::write(t.join("src/setuid"), b"s").unwrap();
        mode("src/setuid", 0o4755);
        fs::write(t.join("src/private"), b"p").unwrap();
        mode("src/private", 0o600);
        fs::write(t.join("docs/a/b/c.md"), b"# c\n").unwrap();
        fs::write(t.join("docs/a/b/c.txt"), b"c").unwrap();
        fs::write(t.join(".git/HEAD"), b"ref").unwrap();
        fs::write(t.join("hermit.lock"), b"lock").unwrap();
        fs::write(t.join("result"), b"r").unwrap();
        fs::write(t.join("a-b"), b"").unwrap();
        fs::write(t.join("a.c"), b"a").unwrap();
        fs::write(t.join("a/b"), b"ab").unwrap();
        // Names that sort between a directory and what it holds.
        fs::write(t.join("src.txt"), b"t").unwrap();
        fs::write(t.join("src~"), b"t").unwrap();
        fs::write(t.join("src sp"), b"t").unwrap();
        fs::create_dir_all(t.join("src-old/src")).unwrap();
        fs::write(t.join("src-old/src/x.c"), b"old").unwrap();
        fs::write(t.join("hard1"), b"same bytes").unwrap();
        fs::hard_link(t.join("hard1"), t.join("src/hard2")).unwrap();
        let big: Vec<u8> = (0..(1 << 20) + 4099).map(|i| (i % 251) as u8).collect();
        fs::write(t.join("src/big.bin"), &big).unwrap();
        let long = "n".repeat(120);
        fs::write(t.join("docs").join(&long), b"long").unwrap();
        symlink("main.c", t.join("src/link")).unwrap();
        symlink("../docs/a", t.join("src/dirlink")).unwrap();
        symlink("nowhere/at/all", t.join("src/dangling")).unwrap();
        symlink(format!("./{}", "x".repeat(110)), t.join("longlink")).unwrap();
    }

    #[test]
    fn streaming_equals_copy_then_normalise() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        tricky_tree(&root);
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&[], &["*.o", "e1"]),
            (&["src", "*.md"], &[]),
            (&["src/*.c", "docs/**/*.md"], &["sub"]),
            (&["empty", "e1/e2"], &[]),
            (&["nothing-matches"], &[]),
            (&[".git", "hermit.lock"], &[]),
        ];
        for (inc, exc) in cases {
            let (inc, exc) = (strings(inc), strings(exc));
            let (old, old_bytes) = old_copy_then_normalise(&root, &inc, &exc).unwrap();
            let (new, new_bytes) = new_stream(&root, &inc, &exc).unwrap();
            assert_eq!(new, old, "include {inc:?} exclude {exc:?}");
            assert!(new_bytes == old_bytes, "include {inc:?} exclude {exc:?}");
            assert_eq!(Digest::of(&new_bytes), new);
        }
        // And through the store: the digest, then the blob with those bytes.
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let d = tree_digest(&store, &root, &[], &[], SDE).unwrap();
        assert!(store.blob(&d).is_none(), "resolve stores nothing");
        store_tree_blob(&store, &root, &[], &[], SDE, &d).unwrap();
        let blob = fs::read(store.blob(&d).unwrap()).unwrap();
        assert_eq!(blob, old_copy_then_normalise(&root, &[], &[]).unwrap().1);
    }

    #[test]
    fn refusals_match_the_copy() {
        let refused = |f: &dyn Fn(&Path), want: &str| {
            let t = tempfile::tempdir().unwrap();
            let root = fs::canonicalize(t.path()).unwrap();
            fs::create_dir_all(root.join("a/b")).unwrap();
            f(&root);
            let old = old_copy_then_normalise(&root, &[], &[])
                .map(|r| r.0)
                .unwrap_err();
            let new = new_stream(&root, &[], &[]).map(|r| r.0).unwrap_err();
            let (old, new) = (format!("{old:#}"), format!("{new:#}"));
            assert!(old.contains(want), "{old}");
            assert!(new.contains(want), "{new}");
        };
        refused(
            &|r| symlink("/etc/passwd", r.join("a/abs")).unwrap(),
            "leads outside the source's directory",
        );
        refused(
            &|r| symlink("../../..", r.join("a/b/up")).unwrap(),
            "leads outside the source's directory",
        );
        // Lexically inside; through the tree's own `up` it leaves the root.
        refused(
            &|r| {
                symlink("..", r.join("a/up")).unwrap();
                symlink("../up/..", r.join("a/b/esc")).unwrap();
            },
            "outside the output",
        );
        refused(
            &|r| nix::unistd::mkfifo(&r.join("a/pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap(),
            "is not a regular file",
        );
        refused(
            &|r| fs::write(r.join(OsStr::from_bytes(b"a/bad-\xff")), b"x").unwrap(),
            "file names must be UTF-8",
        );
        // Excluded, the same entries are no longer a problem.
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(root.join("a")).unwrap();
        symlink("/etc/passwd", root.join("a/abs")).unwrap();
        nix::unistd::mkfifo(&root.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let exc = strings(&["abs", "pipe"]);
        assert_eq!(
            new_stream(&root, &[], &exc).unwrap().0,
            old_copy_then_normalise(&root, &[], &exc).unwrap().0
        );
    }

    #[test]
    fn wide_trees_walked_in_parallel_equal_the_copy_and_refuse_like_it() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        // More directories in one place than the walk queues (the rest are
        // walked inline), nested, some empty, some only with excluded files.
        for i in 0..300 {
            let d = root.join(format!("w{i:03}/x{}", i % 7));
            fs::create_dir_all(&d).unwrap();
            if i % 5 != 0 {
                fs::write(d.join(format!("f{i}.c")), format!("{i}")).unwrap();
            }
            if i % 3 == 0 {
                fs::write(d.join("junk.o"), b"o").unwrap();
            }
        }
        for (inc, exc) in [
            (vec![], vec![]),
            (vec!["*.c".to_string()], vec!["w1*".to_string()]),
        ] {
            let (old, _) = old_copy_then_normalise(&root, &inc, &exc).unwrap();
            for _ in 0..5 {
                assert_eq!(new_stream(&root, &inc, &exc).unwrap().0, old);
            }
        }
        // Refusals in many directories: always the first in sorted order.
        for i in [17, 120, 250, 299] {
            let d = root.join(format!("w{i:03}/x{}", i % 7));
            nix::unistd::mkfifo(&d.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        let old = format!(
            "{:#}",
            old_copy_then_normalise(&root, &[], &[])
                .map(|r| r.0)
                .unwrap_err()
        );
        assert!(old.contains("w017/x3/pipe"), "{old}");
        for _ in 0..10 {
            let new = format!(
                "{:#}",
                new_stream(&root, &[], &[]).map(|r| r.0).unwrap_err()
            );
            assert!(new.contains("w017/x3/pipe is not a regular file"), "{new}");
        }
    }

    #[test]
    fn a_symlinked_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(root.join("real")).unwrap();
        symlink("real", root.join("link")).unwrap();
        let e = new_stream(&root.join("link"), &[], &[]).map(|r| r.0);
        let e = format!("{:#}", e.unwrap_err());
        assert!(e.contains("cannot be read as a directory"), "{e}");
    }

    #[test]
    fn a_tree_changed_since_resolve_stores_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::write(root.join("f"), b"one").unwrap();
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let d = tree_digest(&store, &root, &[], &[], SDE).unwrap();
        fs::write(root.join("f"), b"two").unwrap();
        let e = format!(
            "{:#}",
            store_tree_blob(&store, &root, &[], &[], SDE, &d).unwrap_err()
        );
        assert!(e.contains("changed while hermit read it"), "{e}");
        assert!(store.blob(&d).is_none());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.c", "src/hello.c"));
        assert!(glob_match("Makefile", "Makefile"));
        assert!(!glob_match("Makefile", "Makefile.am"));
        assert!(glob_match("src/*.c", "src/a.c"));
        assert!(!glob_match("src/*.c", "src/x/a.c"));
        assert!(glob_match("src/**/*.c", "src/x/y/a.c"));
        assert!(glob_match("src/**", "src/x/y/a.c"));
        assert!(glob_match("h?llo.c", "hello.c"));
    }
}
