//! Output normalisation and the canonical serialisation of an output tree.
//!
//! A finished build leaves a directory (`$out`). This module turns it into
//! one byte stream that depends on nothing but the tree's names, file
//! contents, executable bits and symlink targets, and hashes it: the output
//! digest is the sha256 of that stream. The rules (also in `docs/outputs.md`):
//!
//! - Entries are the tree's files, directories and symlinks below the root
//!   (the root itself is not an entry), named by their path relative to the
//!   root, sorted bytewise by that path (`a-b` before `a/b`; a directory
//!   always comes before what it holds). Names must be UTF-8.
//! - Device nodes, sockets and fifos are refused, naming the path.
//! - Regular files: mode 0755 if any execute bit is set, else 0644. Hard links
//!   are not preserved: every name of a multiply-linked file is serialised as
//!   a regular file with the full content.
//! - Directories: 0755. Symlinks: 0777, target verbatim, never followed.
//! - setuid/setgid/sticky bits, owners, timestamps other than the fixed
//!   mtime, and extended attributes are dropped.
//! - Symlink rule ([`SymlinkPolicy::Contained`], the default): a target must
//!   be relative and, resolved inside the tree (following the tree's own
//!   symlinks), never climb above the root. Absolute targets and targets
//!   that leave the tree are refused, because a dependent build would see
//!   them resolve into its own root filesystem. Dangling targets inside the
//!   tree are allowed. [`SymlinkPolicy::Verbatim`] accepts any target.
//!
//! The stream is a POSIX ustar archive: one 512-byte header per entry with
//! the name in the `name` field (directories end in `/`), mode as above,
//! uid/gid 0, empty uname/gname, mtime SOURCE_DATE_EPOCH, device fields 0,
//! followed by the file content padded to 512 bytes, and two zero blocks at
//! the end (no padding to a 10 KiB record). When a name or a link target does
//! not fit its 100-byte field, or a size does not fit 11 octal digits, the
//! entry is preceded by a PAX extended header named `././@PaxHeader` holding
//! only `path`, `linkpath` and/or `size` records. Nothing else varies.
//!
//! Speed: one thread reads files in order, hashes each file's content for
//! the per-file list and assembles the stream into 1 MiB buffers; the calling
//! thread hashes the stream and writes it to the optional sink. On two cores
//! the two sha256 passes run side by side.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use hermit_store::{Digest, Hasher};
use serde::{Deserialize, Serialize};

/// The version of the canonical serialisation described above. Part of the
/// build key: a new serialisation means new digests.
pub const FORMAT: u32 = 1;

const BLOCK: usize = 512;
const BUF: usize = 1 << 20;
const BUFFERS: usize = 8;

/// Why an output tree could not be normalised.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {op} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("output {0} is not a directory; a build must leave a directory at $out")]
    NotADirectory(PathBuf),
    #[error("output entry {path:?} is a {kind}; outputs may hold only files, directories and symlinks (remove it before the build ends)")]
    Special { path: String, kind: &'static str },
    #[error("output entry {0} has a name that is not UTF-8; rename it")]
    NotUtf8(PathBuf),
    #[error("output symlink {path:?} points to {target:?}, {why}; make it point inside the output, relative (e.g. `ln -sr`) or absolute into $out (a build's absolute links into $out are made relative), or allow external symlinks (`hermit output --allow-external-symlinks`)")]
    Symlink {
        path: String,
        target: String,
        why: &'static str,
    },
    #[error("output file {path:?} shrank from {expected} to {actual} bytes while it was read; nothing may write to the output after the build")]
    Changed {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0} changed while hermit read it; build again")]
    SourceChanged(PathBuf),
    #[error("SOURCE_DATE_EPOCH {0} does not fit a tar header (at most 8589934591)")]
    Epoch(u64),
    #[error("writing the canonical tar failed")]
    Sink(#[source] io::Error),
    #[error("the output serialiser thread stopped unexpectedly")]
    Thread,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What symlink targets an output may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    /// Relative targets that stay inside the tree (the default).
    #[default]
    Contained,
    /// Any target, recorded verbatim.
    Verbatim,
}

/// How to normalise.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mtime every entry gets.
    pub source_date_epoch: u64,
    pub symlinks: SymlinkPolicy,
    /// Also change the tree itself (chmod to the normalised modes, set every
    /// mtime and atime to `source_date_epoch`) so it matches the stream.
    /// Owners and xattrs are left as they are (the stream never holds them).
    pub apply: bool,
}

impl Options {
    pub fn new(source_date_epoch: u64) -> Options {
        Options {
            source_date_epoch,
            symlinks: SymlinkPolicy::default(),
            apply: false,
        }
    }
}

/// The kind of an output entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Directory,
    Symlink,
}

/// One entry of the per-file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the output root, no leading `./`, no trailing `/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Normalised mode, four octal digits: "0644", "0755" or "0777".
    pub mode: String,
    /// Content size for files, 0 otherwise.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A normalised, hashed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// sha256 of the canonical tar.
    pub digest: Digest,
    /// Length of the canonical tar in bytes.
    pub tar_size: u64,
    /// Every entry, sorted bytewise by path.
    pub files: Vec<FileEntry>,
}

/// One entry to serialise: what the canonical stream says about it.
pub(crate) struct Node {
    /// Relative to the root, no leading `./`, no trailing `/`.
    pub(crate) path: String,
    pub(crate) kind: Kind,
    /// Normalised: 0644/0755 for files, 0755 for directories, 0777 for symlinks.
    pub(crate) mode: u32,
    /// Content size for files, 0 otherwise.
    pub(crate) size: u64,
    pub(crate) target: Option<String>,
}

impl Node {
    /// The normalised mode of a regular file whose raw mode is `raw`.
    pub(crate) fn file_mode(raw: u32) -> u32 {
        if raw & 0o111 != 0 {
            0o755
        } else {
            0o644
        }
    }
}

/// Where the serialiser reads file contents from. Outputs are read by path
/// ([`ByPath`]); local sources through their root's descriptor (see
/// `crate::localtree`). One serialiser serves both, so their streams can
/// never drift apart.
pub(crate) trait FileSource: Sync {
    /// Opens the file of `nodes[index]` for reading.
    fn open(&self, index: usize, node: &Node) -> Result<File, OutputError>;
    /// The file's path as messages show it.
    fn shown(&self, node: &Node) -> PathBuf;
    /// Called once `node.size` bytes were read from `file`: a chance to
    /// check that the file did not change while it was read.
    fn read_done(&self, _index: usize, _node: &Node, _file: &File) -> Result<(), OutputError> {
        Ok(())
    }
}

/// Files named by their path below `root`, opened without following a
/// symlink in the last component.
pub(crate) struct ByPath<'a>(pub(crate) &'a Path);

impl FileSource for ByPath<'_> {
    fn shown(&self, node: &Node) -> PathBuf {
        self.0.join(&node.path)
    }
    fn open(&self, _index: usize, node: &Node) -> Result<File, OutputError> {
        let path = self.0.join(&node.path);
        File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("opening", &path))
    }
}

/// Normalises the tree at `root`, serialises it canonically, hashes it and,
/// if `sink` is given, writes the canonical tar to it.
pub fn normalize(
    root: &Path,
    opts: &Options,
    sink: Option<&mut dyn Write>,
) -> Result<Normalized, OutputError> {
    if opts.source_date_epoch > 0o77777777777 {
        return Err(OutputError::Epoch(opts.source_date_epoch));
    }
    let meta = fs::symlink_metadata(root).map_err(io_err("lstat", root))?;
    if !meta.is_dir() {
        return Err(OutputError::NotADirectory(root.to_path_buf()));
    }
    let mut nodes = Vec::new();
    walk(root, "", &mut nodes)?;
    nodes.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    if opts.symlinks == SymlinkPolicy::Contained {
        check_symlinks(&nodes)?;
    }
    if opts.apply {
        apply(root, &nodes, opts.source_date_epoch)?;
    }
    serialise(&ByPath(root), &nodes, opts.source_date_epoch, sink)
}

fn walk(root: &Path, rel: &str, out: &mut Vec<Node>) -> Result<(), OutputError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let entries = fs::read_dir(&dir).map_err(io_err("reading directory", &dir))?;
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("reading directory", &dir))?;
        let full = entry.path();
        let name = entry
            .file_name()
            .to_str()
            .ok_or_else(|| OutputError::NotUtf8(full.clone()))?
            .to_string();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        // fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW): an lstat without
        // resolving the whole path again.
        let meta = entry.metadata().map_err(io_err("lstat", &full))?;
        let ft = meta.file_type();
        let (kind, mode, size, target) = if ft.is_dir() {
            subdirs.push(path.clone());
            (Kind::Directory, 0o755, 0, None)
        } else if ft.is_file() {
            (Kind::File, Node::file_mode(meta.mode()), meta.len(), None)
        } else if ft.is_symlink() {
            let t = fs::read_link(&full).map_err(io_err("readlink", &full))?;
            let t = t
                .to_str()
                .ok_or_else(|| OutputError::NotUtf8(full.clone()))?
                .to_string();
            (Kind::Symlink, 0o777, 0, Some(t))
        } else {
            let kind = if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else {
                "file of unknown type"
            };
            return Err(OutputError::Special { path, kind });
        };
        out.push(Node {
            path,
            kind,
            mode,
            size,
            target,
        });
    }
    for sub in subdirs {
        walk(root, &sub, out)?;
    }
    Ok(())
}

/// An absolute symlink inside the output that [`relativise_links`] made
/// relative: where it is and the target the build gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrittenLink {
    /// Relative to the output root, like [`FileEntry::path`].
    pub path: String,
    /// The absolute target the build wrote.
    pub target: String,
}

/// Rewrites every symlink below `root` whose target is an absolute path
/// inside `out_path` (the output's path in the sandbox, e.g. `/out`) into
/// the relative target that resolves to the same entry from the link's own
/// directory (`usr/bin/bzcmp -> /out/usr/bin/bzdiff` becomes `bzdiff`), and
/// returns what it rewrote, sorted by path. The rewrite depends only on the
/// link's path and target. Other targets are left alone ([`normalize`]
/// judges them); so are entries [`normalize`] refuses.
pub fn relativise_links(root: &Path, out_path: &str) -> Result<Vec<RewrittenLink>, OutputError> {
    let prefix: Vec<&str> = components(out_path).collect();
    let mut done = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let dir = root.join(&rel);
        let entries = fs::read_dir(&dir).map_err(io_err("reading directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("reading directory", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let full = entry.path();
            let ft = entry.file_type().map_err(io_err("lstat", &full))?;
            if ft.is_dir() {
                dirs.push(path);
                continue;
            }
            if !ft.is_symlink() {
                continue;
            }
            let target = fs::read_link(&full).map_err(io_err("readlink", &full))?;
            let Some(target) = target.to_str() else {
                continue;
            };
            let Some(relative) = relative_target(&path, target, &prefix) else {
                continue;
            };
            fs::remove_file(&full).map_err(io_err("removing", &full))?;
            std::os::unix::fs::symlink(&relative, &full)
                .map_err(io_err("creating symlink", &full))?;
            done.push(RewrittenLink {
                path,
                target: target.to_string(),
            });
        }
    }
    done.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(done)
}

/// The lines hermit appends to a build's log about the links
/// [`relativise_links`] rewrote (empty when none).
pub fn rewritten_links_note(done: &[RewrittenLink], out_path: &str) -> String {
    let mut s = String::new();
    if done.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "hermit: made {} absolute symlink(s) into {out_path} relative (recorded in output.rewritten_links):\n",
        done.len()
    ));
    for l in done {
        s.push_str(&format!("hermit:   {} -> {}\n", l.path, l.target));
    }
    s
}

/// The non-empty components of a path other than `.`.
fn components(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// The relative form of `target` (absolute, under `prefix`) for a link at
/// `link` (relative to the output root), or `None` when `target` is not an
/// absolute path below `prefix`. The link's own directories are real
/// directories (the walk found the link through them), so a shared leading
/// part of the link's directory and the target can be dropped.
fn relative_target(link: &str, target: &str, prefix: &[&str]) -> Option<String> {
    if !target.starts_with('/') {
        return None;
    }
    let comps: Vec<&str> = components(target).collect();
    if comps.len() < prefix.len() || comps[..prefix.len()] != *prefix {
        return None;
    }
    let rest = &comps[prefix.len()..];
    let mut dir: Vec<&str> = link.split('/').collect();
    dir.pop();
    let shared = dir
        .iter()
        .zip(rest)
        .take_while(|(a, b)| a == b && **b != "..")
        .count();
    let mut parts: Vec<&str> = vec![".."; dir.len() - shared];
    parts.extend(&rest[shared..]);
    Some(if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    })
}

/// Refuses absolute symlink targets and targets that, resolved inside the
/// tree the way the kernel would (following the tree's own symlinks),
/// climb above the root.
pub(crate) fn check_symlinks(nodes: &[Node]) -> Result<(), OutputError> {
    let index: HashMap<&str, &Node> = nodes.iter().map(|n| (n.path.as_str(), n)).collect();
    for n in nodes {
        let Some(target) = &n.target else { continue };
        let refuse = |why| OutputError::Symlink {
            path: n.path.clone(),
            target: target.clone(),
            why,
        };
        if target.is_empty() {
            return Err(refuse("an empty target"));
        }
        if target.starts_with('/') {
            return Err(refuse("an absolute path outside the output"));
        }
        let mut stack: Vec<&str> = n.path.split('/').collect();
        stack.pop();
        if escapes(stack, target, &index) {
            return Err(refuse("outside the output"));
        }
    }
    Ok(())
}

fn escapes<'a>(mut stack: Vec<&'a str>, target: &'a str, index: &HashMap<&str, &'a Node>) -> bool {
    let mut pending: Vec<&'a str> = target.split('/').rev().collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return true;
                }
            }
            name => {
                stack.push(name);
                match index.get(stack.join("/").as_str()) {
                    // The rest does not exist: the kernel stops here (ENOENT).
                    None => return false,
                    Some(node) => match (&node.kind, &node.target) {
                        (Kind::Directory, _) => {}
                        // A file in the middle of a path: ENOTDIR.
                        (Kind::File, _) => {
                            if pending.iter().any(|c| !c.is_empty()) {
                                return false;
                            }
                        }
                        (Kind::Symlink, Some(t)) => {
                            hops += 1;
                            if hops > 40 {
                                return false; // ELOOP
                            }
                            stack.pop();
                            if t.starts_with('/') {
                                return true;
                            }
                            pending.extend(t.split('/').rev());
                        }
                        (Kind::Symlink, None) => return false,
                    },
                }
            }
        }
    }
    false
}

fn apply(root: &Path, nodes: &[Node], epoch: u64) -> Result<(), OutputError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(epoch as i64, 0);
    let touch = |p: &Path| {
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| OutputError::Io {
            op: "setting the mtime of",
            path: p.to_path_buf(),
            source: e.into(),
        })
    };
    for n in nodes {
        let p = root.join(&n.path);
        if n.kind != Kind::Symlink {
            fs::set_permissions(&p, fs::Permissions::from_mode(n.mode))
                .map_err(io_err("chmod", &p))?;
        }
        touch(&p)?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", root))?;
    touch(root)
}

/// Fills `field` with `value` as zero-padded octal followed by a NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// One ustar header. `name` and `link` must already fit their fields.
fn header(name: &[u8], link: &[u8], mode: u32, size: u64, mtime: u64, flag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "<len> <key>=<value>\n", where <len> counts itself.
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The header block(s) for one entry: a PAX header first when needed.
fn entry_headers(n: &Node, mtime: u64, out: &mut Vec<u8>) {
    let mut name = n.path.clone().into_bytes();
    if n.kind == Kind::Directory {
        name.push(b'/');
    }
    let link = n.target.as_deref().unwrap_or("").as_bytes();
    let big = n.size > 0o77777777777;
    let mut pax = Vec::new();
    if name.len() > 100 {
        pax_record(&mut pax, "path", &name);
    }
    if link.len() > 100 {
        pax_record(&mut pax, "linkpath", link);
    }
    if big {
        pax_record(&mut pax, "size", n.size.to_string().as_bytes());
    }
    let flag = match n.kind {
        Kind::File => b'0',
        Kind::Symlink => b'2',
        Kind::Directory => b'5',
    };
    if !pax.is_empty() {
        out.extend_from_slice(&header(
            b"././@PaxHeader",
            b"",
            0o644,
            pax.len() as u64,
            mtime,
            b'x',
        ));
        let padded = pax.len().div_ceil(BLOCK) * BLOCK;
        pax.resize(padded, 0);
        out.extend_from_slice(&pax);
    }
    let short_name = if name.len() > 100 {
        &name[..100]
    } else {
        &name[..]
    };
    let short_link = if link.len() > 100 { &link[..100] } else { link };
    let size = if big { 0 } else { n.size };
    out.extend_from_slice(&header(short_name, short_link, n.mode, size, mtime, flag));
}

/// Assembles the stream into buffers on its own thread and hands them over.
struct Producer<'a> {
    tx: mpsc::SyncSender<(Vec<u8>, usize)>,
    back: mpsc::Receiver<Vec<u8>>,
    made: usize,
    buf: Vec<u8>,
    fill: usize,
    files: &'a dyn FileSource,
}

impl Producer<'_> {
    /// Hands the filled buffer over; the next one is taken only when there
    /// is more to write ([`Producer::room`]), so the last flush allocates
    /// nothing.
    fn flush(&mut self) -> Result<(), OutputError> {
        if self.fill == 0 {
            return Ok(());
        }
        let full = std::mem::take(&mut self.buf);
        self.tx
            .send((full, self.fill))
            .map_err(|_| OutputError::Thread)?;
        self.fill = 0;
        Ok(())
    }

    /// Makes sure there is a buffer to write into: one handed back, a new
    /// one while fewer than BUFFERS exist, else the next one handed back.
    fn room(&mut self) -> Result<(), OutputError> {
        if !self.buf.is_empty() {
            return Ok(());
        }
        self.buf = match self.back.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < BUFFERS => {
                self.made += 1;
                vec![0u8; BUF]
            }
            Err(_) => self.back.recv().map_err(|_| OutputError::Thread)?,
        };
        Ok(())
    }

    fn put(&mut self, mut data: &[u8]) -> Result<(), OutputError> {
        while !data.is_empty() {
            self.room()?;
            let n = data.len().min(self.buf.len() - self.fill);
            self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: usize) -> Result<(), OutputError> {
        while n > 0 {
            self.room()?;
            let k = n.min(self.buf.len() - self.fill);
            self.buf[self.fill..self.fill + k].fill(0);
            self.fill += k;
            n -= k;
            if self.fill == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Copies a file's content into the stream and returns its digest.
    fn file(&mut self, index: usize, n: &Node) -> Result<Digest, OutputError> {
        let mut f = self.files.open(index, n)?;
        let mut hasher = Hasher::new();
        let mut left = n.size;
        while left > 0 {
            self.room()?;
            let room =
                (self.buf.len() - self.fill).min(usize::try_from(left).unwrap_or(usize::MAX));
            let slice = &mut self.buf[self.fill..self.fill + room];
            let got = match f.read(slice) {
                Ok(0) => {
                    return Err(OutputError::Changed {
                        path: n.path.clone(),
                        expected: n.size,
                        actual: n.size - left,
                    })
                }
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(OutputError::Io {
                        op: "reading",
                        path: self.files.shown(n),
                        source: e,
                    })
                }
            };
            hasher.update(&slice[..got]);
            self.fill += got;
            left -= got as u64;
            if self.fill == self.buf.len() {
                self.flush()?;
            }
        }
        self.files.read_done(index, n, &f)?;
        Ok(hasher.finish())
    }

    fn run(mut self, nodes: &[Node], mtime: u64) -> Result<Vec<Option<Digest>>, OutputError> {
        let mut digests = Vec::with_capacity(nodes.len());
        let mut head = Vec::with_capacity(3 * BLOCK);
        for (i, n) in nodes.iter().enumerate() {
            head.clear();
            entry_headers(n, mtime, &mut head);
            self.put(&head)?;
            if n.kind == Kind::File {
                digests.push(Some(self.file(i, n)?));
                let pad = (BLOCK - (n.size % BLOCK as u64) as usize) % BLOCK;
                self.zeros(pad)?;
            } else {
                digests.push(None);
            }
        }
        self.zeros(2 * BLOCK)?;
        self.flush()?;
        Ok(digests)
    }
}

/// Serialises `nodes` (sorted bytewise by path, symlinks already checked)
/// as the canonical tar, reading file contents from `files`; hashes the
/// stream and writes it to `sink` if given.
pub(crate) fn serialise(
    files: &dyn FileSource,
    nodes: &[Node],
    mtime: u64,
    mut sink: Option<&mut dyn Write>,
) -> Result<Normalized, OutputError> {
    if mtime > 0o77777777777 {
        return Err(OutputError::Epoch(mtime));
    }
    let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (back_tx, back) = mpsc::channel::<Vec<u8>>();

    // A small tree (most outputs) fits in the first buffer: serialised on
    // this thread, with no reader thread to start and hand over to (which
    // costs more than the hashing, and a scheduler's delay on a busy
    // machine). The channel holds BUFFERS buffers, so even an estimate off
    // several times over cannot block the producer without its consumer.
    // An upper bound of the stream's size: per entry at most three header
    // blocks (a long name's, a long link's, its own), the name and link
    // padded to blocks, the content padded to a block; then the two
    // closing blocks.
    let estimate: u64 = nodes
        .iter()
        .map(|n| {
            let names = n.path.len() + n.target.as_ref().map_or(0, |t| t.len());
            n.size + 6 * BLOCK as u64 + names as u64
        })
        .sum::<u64>()
        + 2 * BLOCK as u64;
    let inline = estimate <= BUF as u64;
    // The first buffer: no bigger than the estimate for a small tree (a
    // wrong estimate only means more buffers).
    let first = if inline {
        (estimate as usize).min(BUF)
    } else {
        BUF
    };
    let producer = Producer {
        tx,
        back,
        made: 1,
        buf: vec![0u8; first],
        fill: 0,
        files,
    };
    let (digests, stream, tar_size) = std::thread::scope(|s| {
        let (mut done, handle) = if inline {
            (Some(producer.run(nodes, mtime)), None)
        } else {
            (None, Some(s.spawn(move || producer.run(nodes, mtime))))
        };
        let mut stream = Hasher::new();
        let mut size = 0u64;
        let mut sink_err = None;
        for (buf, fill) in rx.iter() {
            stream.update(&buf[..fill]);
            size += fill as u64;
            if let Some(w) = sink.as_mut() {
                if let Err(e) = w.write_all(&buf[..fill]) {
                    sink_err = Some(e);
                    break;
                }
            }
            // The producer may have finished; a closed return channel is fine.
            let _ = back_tx.send(buf);
        }
        drop(rx);
        let produced = match (done.take(), handle) {
            (Some(d), _) => Ok(d),
            (None, Some(h)) => h.join().map_err(|_| OutputError::Thread),
            (None, None) => Err(OutputError::Thread),
        };
        if let Some(e) = sink_err {
            return Err(OutputError::Sink(e));
        }
        Ok((produced??, stream, size))
    })?;
    if let Some(w) = sink {
        w.flush().map_err(OutputError::Sink)?;
    }
    let files = nodes
        .iter()
        .zip(digests)
        .map(|(n, d)| FileEntry {
            path: n.path.clone(),
            kind: n.kind,
            mode: format!("{:04o}", n.mode),
            size: n.size,
            sha256: d,
            target: n.target.clone(),
        })
        .collect();
    Ok(Normalized {
        digest: stream.finish(),
        tar_size,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("share/doc")).unwrap();
        fs::write(dir.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
        fs::set_permissions(dir.join("bin/hello"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("share/doc/README"), b"hello docs\n").unwrap();
        fs::write(dir.join("a-b"), b"").unwrap();
        symlink("hello", dir.join("bin/hi")).unwrap();
    }

    fn opts() -> Options {
        Options::new(315532800)
    }

    #[test]
    fn golden_digest_of_a_small_tree() {
        let t = tempfile::tempdir().unwrap();
        tree(t.path());
        let n = normalize(t.path(), &opts(), None).unwrap();
        let paths: Vec<&str> = n.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a-b",
                "bin",
                "bin/hello",
                "bin/hi",
                "share",
                "share/doc",
                "share/doc/README"
            ]
        );
        let expected = include_str!("../../tests/data/outputs/small-tree.digest").trim();
        assert_eq!(n.digest.to_string(), expected);
        assert_eq!(n.files[2].mode, "0755");
        assert_eq!(n.files[3].target.as_deref(), Some("hello"));
        assert_eq!(n.files[6].sha256, Some(Digest::of(b"hello docs\n")));
    }

    #[test]
    fn stream_matches_digest_and_is_block_aligned() {
        let t = tempfile::tempdir().unwrap();
        tree(t.path());
        let mut out: Vec<u8> = Vec::new();
        let n = normalize(t.path(), &opts(), Some(&mut out)).unwrap();
        assert_eq!(Digest::of(&out), n.digest);
        assert_eq!(out.len() as u64, n.tar_size);
        assert_eq!(out.len() % BLOCK, 0);
        assert!(out[out.len() - 1024..].iter().all(|&b| b == 0));
    }

    /// Small trees are serialised on the calling thread into a buffer sized
    /// to them, big ones through the reader thread and full buffers: the
    /// same stream either way, whatever the size around the boundaries.
    #[test]
    fn stream_is_the_same_on_either_side_of_the_one_buffer_path() {
        for size in [
            0,
            1,
            BLOCK - 1,
            BUF - 8 * BLOCK,
            BUF - 4 * BLOCK,
            BUF,
            BUF + 1,
            3 * BUF + 7,
        ] {
            let t = tempfile::tempdir().unwrap();
            let long = "n".repeat(150);
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            fs::write(t.path().join(&long), &data).unwrap();
            fs::write(t.path().join("small"), b"s").unwrap();
            symlink("l".repeat(120), t.path().join("link")).unwrap();
            let mut out: Vec<u8> = Vec::new();
            let n = normalize(t.path(), &opts(), Some(&mut out)).unwrap();
            assert_eq!(Digest::of(&out), n.digest, "size {size}");
            assert_eq!(out.len() as u64, n.tar_size, "size {size}");
            let mut ar = tar::Archive::new(&out[..]);
            let mut found = Vec::new();
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                found.push((name, content));
            }
            assert_eq!(found[0], ("link".to_string(), vec![]), "size {size}");
            assert_eq!(found[1], (long.clone(), data), "size {size}");
            assert_eq!(found[2], ("small".to_string(), b"s".to_vec()));
            assert_eq!(n.files[1].sha256, Some(Digest::of(&found[1].1)));
        }
    }

    #[test]
    fn long_names_and_targets_use_pax_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let long = "d".repeat(90);
        let deep = t.path().join(&long).join("e".repeat(60));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"x").unwrap();
        let link_target = format!("{}/f", "e".repeat(60)).repeat(1) + &"/.".repeat(30);
        symlink(&link_target, t.path().join(&long).join("l")).unwrap();
        let mut out: Vec<u8> = Vec::new();
        normalize(t.path(), &opts(), Some(&mut out)).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if let Some(l) = e.link_name().unwrap() {
                assert_eq!(l.to_string_lossy(), link_target);
            }
            names.push(name);
        }
        assert_eq!(names.len(), 4);
        assert!(
            names[2].ends_with(&format!("{}/f", "e".repeat(60))),
            "{names:?}"
        );
    }

    #[test]
    fn symlink_rule() {
        let check = |target: &str, extra: &dyn Fn(&Path)| {
            let t = tempfile::tempdir().unwrap();
            fs::create_dir_all(t.path().join("a/b")).unwrap();
            extra(t.path());
            symlink(target, t.path().join("a/b/link")).unwrap();
            normalize(t.path(), &opts(), None).map(|_| ())
        };
        let none = |_: &Path| {};
        assert!(check("../../x", &none).is_ok());
        assert!(check("dangling/../../..", &none).is_ok());
        let e = check("../../../x", &none).unwrap_err().to_string();
        assert!(
            e.contains("a/b/link") && e.contains("outside the output"),
            "{e}"
        );
        let e = check("/usr/bin/cc", &none).unwrap_err().to_string();
        assert!(e.contains("an absolute path outside the output"), "{e}");
        // Lexically inside, but `up` resolves to the root first.
        let up = |p: &Path| symlink("../..", p.join("a/b/up")).unwrap();
        assert!(check("up/..", &up).is_err());
        assert!(check("up/a", &up).is_ok());
        let t = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", t.path().join("abs")).unwrap();
        let mut o = opts();
        o.symlinks = SymlinkPolicy::Verbatim;
        let n = normalize(t.path(), &o, None).unwrap();
        assert_eq!(n.files[0].target.as_deref(), Some("/etc/passwd"));
    }

    #[test]
    fn absolute_links_inside_the_output_become_relative() {
        let rel = |link: &str, target: &str| relative_target(link, target, &["out"]);
        assert_eq!(
            rel("usr/bin/bzcmp", "/out/usr/bin/bzdiff").as_deref(),
            Some("bzdiff")
        );
        assert_eq!(
            rel("usr/lib/libz.so", "/out/usr/lib64/libz.so.1").as_deref(),
            Some("../lib64/libz.so.1")
        );
        assert_eq!(rel("top", "/out/a/b").as_deref(), Some("a/b"));
        assert_eq!(rel("a/b/root", "/out").as_deref(), Some("../.."));
        assert_eq!(rel("root", "//out/./").as_deref(), Some("."));
        assert_eq!(rel("a/x", "/out/a/../etc").as_deref(), Some("../etc"));
        assert_eq!(rel("a/x", "/outside/a"), None);
        assert_eq!(rel("a/x", "/etc/passwd"), None);
        assert_eq!(rel("a/x", "out/a"), None);
        assert_eq!(rel("a/x", "/x/../out/a"), None);

        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("usr/bin")).unwrap();
        fs::write(t.path().join("usr/bin/bzdiff"), b"#!/bin/sh\n").unwrap();
        symlink("/out/usr/bin/bzdiff", t.path().join("usr/bin/bzcmp")).unwrap();
        symlink("bzdiff", t.path().join("usr/bin/bzless")).unwrap();
        symlink("/out/usr/bin", t.path().join("bin")).unwrap();
        let done = relativise_links(t.path(), "/out").unwrap();
        assert_eq!(
            done,
            [
                RewrittenLink {
                    path: "bin".into(),
                    target: "/out/usr/bin".into()
                },
                RewrittenLink {
                    path: "usr/bin/bzcmp".into(),
                    target: "/out/usr/bin/bzdiff".into()
                },
            ]
        );
        assert_eq!(
            fs::read_link(t.path().join("usr/bin/bzcmp")).unwrap(),
            Path::new("bzdiff")
        );
        assert_eq!(
            fs::read_link(t.path().join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        // The same tree built with relative links has the same digest.
        let rewritten = normalize(t.path(), &opts(), None).unwrap();
        let u = tempfile::tempdir().unwrap();
        fs::create_dir_all(u.path().join("usr/bin")).unwrap();
        fs::write(u.path().join("usr/bin/bzdiff"), b"#!/bin/sh\n").unwrap();
        symlink("bzdiff", u.path().join("usr/bin/bzcmp")).unwrap();
        symlink("bzdiff", u.path().join("usr/bin/bzless")).unwrap();
        symlink("usr/bin", u.path().join("bin")).unwrap();
        assert_eq!(normalize(u.path(), &opts(), None).unwrap(), rewritten);
        // Links leaving the output are left for normalize to refuse.
        symlink("/etc/passwd", t.path().join("usr/passwd")).unwrap();
        assert!(relativise_links(t.path(), "/out").unwrap().is_empty());
        let e = normalize(t.path(), &opts(), None).unwrap_err().to_string();
        assert!(
            e.contains("\"usr/passwd\"") && e.contains("outside the output"),
            "{e}"
        );
    }

    #[test]
    fn apply_normalises_the_tree() {
        let t = tempfile::tempdir().unwrap();
        tree(t.path());
        fs::set_permissions(
            t.path().join("share/doc/README"),
            fs::Permissions::from_mode(0o4600),
        )
        .unwrap();
        let mut o = opts();
        o.apply = true;
        let before = normalize(t.path(), &opts(), None).unwrap();
        let after = normalize(t.path(), &o, None).unwrap();
        assert_eq!(before, after);
        let m = fs::symlink_metadata(t.path().join("share/doc/README")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(m.mtime(), 315532800);
        let m = fs::symlink_metadata(t.path().join("bin/hi")).unwrap();
        assert_eq!(m.mtime(), 315532800);
        let m = fs::symlink_metadata(t.path().join("bin/hello")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
    }

    #[test]
    fn fifo_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        nix::unistd::mkfifo(&t.path().join("d/pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = normalize(t.path(), &opts(), None).unwrap_err().to_string();
        assert!(e.contains("\"d/pipe\" is a fifo"), "{e}");
    }

    #[test]
    fn hard_links_become_regular_files() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), b"same").unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        let mut out: Vec<u8> = Vec::new();
        let n = normalize(t.path(), &opts(), Some(&mut out)).unwrap();
        assert_eq!(n.files[0].sha256, n.files[1].sha256);
        let mut ar = tar::Archive::new(&out[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            assert_eq!(body, "same");
        }
        // The same tree without the link has the same digest.
        let u = tempfile::tempdir().unwrap();
        fs::write(u.path().join("a"), b"same").unwrap();
        fs::write(u.path().join("b"), b"same").unwrap();
        assert_eq!(normalize(u.path(), &opts(), None).unwrap().digest, n.digest);
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", &[b'a'; 93]);
        let s = String::from_utf8(v).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), s.len());
    }
}
