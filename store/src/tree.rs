//! Trees: directories in the store, named by a digest of their content.
//!
//! # Tree digest (version 1)
//!
//! A tree's digest is the sha256 of its *manifest*, a canonical
//! serialisation that depends only on names, types, the executable bit,
//! symlink targets and file contents — never on mtimes, owners, inode
//! numbers or directory order:
//!
//! ```text
//! "hermit-tree-v1\n"
//! then, for every entry below the root, sorted bytewise by its path:
//!   directory:     "d " path "\0"
//!   regular file:  "f " ("x" | "-") " " size " " sha256-hex " " path "\0"
//!   symlink:       "l " path "\0" target "\0"
//! ```
//!
//! `path` is relative to the root with components joined by `/` (no leading
//! `./`), `size` is decimal, `x` marks a file with any execute bit set, and
//! `target` is the symlink's target bytes as stored. Paths and targets cannot
//! contain NUL, so the encoding is unambiguous. Fifos, sockets and device
//! nodes cannot be part of a tree.
//!
//! # Storage
//!
//! `store add DIR` puts a tree under `v1/trees/<hex>/` as private copies of
//! the files (not hardlinks to blobs: a blob is 0444 and a tree file may need
//! 0555, and an inode cannot be both). Trees are read-only: directories 0555,
//! files 0444 or 0555. The tree is built in the session's temp directory,
//! every file fsynced, then renamed into place; `store verify` recomputes the
//! manifest from disk and compares it with the name.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::store::{self, Added, EntryKind, Result, Store, StoreError, IO_BUF};

/// The first line of every manifest; changes when the encoding does.
pub const MANIFEST_HEADER: &[u8] = b"hermit-tree-v1\n";

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        exec: bool,
        size: u64,
        digest: Digest,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// Every entry of a tree, keyed by relative path bytes (sorted bytewise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<Vec<u8>, Node>,
}

impl Manifest {
    /// The canonical serialisation described in the module documentation.
    pub fn serialise(&self) -> Vec<u8> {
        let mut out = MANIFEST_HEADER.to_vec();
        for (path, node) in &self.entries {
            match node {
                Node::Dir => {
                    out.extend_from_slice(b"d ");
                    out.extend_from_slice(path);
                    out.push(0);
                }
                Node::File { exec, size, digest } => {
                    let x = if *exec { "x" } else { "-" };
                    out.extend_from_slice(format!("f {x} {size} {} ", digest.hex()).as_bytes());
                    out.extend_from_slice(path);
                    out.push(0);
                }
                Node::Symlink { target } => {
                    out.extend_from_slice(b"l ");
                    out.extend_from_slice(path);
                    out.push(0);
                    out.extend_from_slice(target);
                    out.push(0);
                }
            }
        }
        out
    }

    /// The tree digest: sha256 of [`Manifest::serialise`].
    pub fn digest(&self) -> Digest {
        Digest::of(&self.serialise())
    }

    /// Total bytes of file content.
    pub fn content_size(&self) -> u64 {
        self.entries
            .values()
            .map(|n| match n {
                Node::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }
}

/// A human name for a file type, for error messages.
pub(crate) fn kind_name(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Reads the directory `root` (not following symlinks) and hashes every
/// file: the manifest its tree digest is computed from.
pub fn scan(root: &Path) -> Result<Manifest> {
    let mut manifest = Manifest::default();
    let mut buf = vec![0u8; IO_BUF];
    scan_dir(root, Vec::new(), &mut manifest, &mut buf)?;
    Ok(manifest)
}

/// The tree digest of the directory `root`.
pub fn hash_tree(root: &Path) -> Result<Digest> {
    scan(root).map(|m| m.digest())
}

fn scan_dir(dir: &Path, rel: Vec<u8>, out: &mut Manifest, buf: &mut [u8]) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(StoreError::io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("listing", dir))?;
        let path = entry.path();
        let mut child = rel.clone();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(entry.file_name().as_bytes());
        let meta = fs::symlink_metadata(&path).map_err(StoreError::io("reading", &path))?;
        let t = meta.file_type();
        if t.is_dir() {
            out.entries.insert(child.clone(), Node::Dir);
            scan_dir(&path, child, out, buf)?;
        } else if t.is_file() {
            let mut f = File::open(&path).map_err(StoreError::io("opening", &path))?;
            let (digest, size) =
                hash_with(&mut f, buf).map_err(StoreError::io("reading", &path))?;
            let exec = meta.mode() & 0o111 != 0;
            out.entries.insert(child, Node::File { exec, size, digest });
        } else if t.is_symlink() {
            let target = fs::read_link(&path).map_err(StoreError::io("reading link", &path))?;
            out.entries.insert(
                child,
                Node::Symlink {
                    target: target.into_os_string().into_vec(),
                },
            );
        } else {
            return Err(StoreError::Unsupported {
                path,
                kind: kind_name(&meta),
            });
        }
    }
    Ok(())
}

/// Hashes a reader with a caller-provided buffer.
pub(crate) fn hash_with(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match reader.read(buf) {
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

/// Makes a finished tree read-only, bottom-up: directories 0555, files 0444
/// or 0555 (any execute bit), setuid/setgid/sticky bits dropped. Symlinks
/// are left alone (their mode means nothing).
pub fn make_read_only(root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let t = entry.file_type()?;
        let p = entry.path();
        if t.is_dir() {
            make_read_only(&p)?;
        } else if t.is_file() {
            let mode = entry.metadata()?.mode();
            let new = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            if mode & 0o7777 != new {
                fs::set_permissions(&p, fs::Permissions::from_mode(new))?;
            }
        }
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o555))
}

/// Total size in bytes of the files below `root` (for gc reports).
pub(crate) fn disk_size(root: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            total += disk_size(&e.path());
        }
    }
    total
}

/// Adds the directory `src` as a tree. Hashes first; if the tree is already
/// present nothing is written.
pub(crate) fn add_dir(store: &Store, src: &Path) -> Result<Added> {
    let manifest = scan(src)?;
    let digest = manifest.digest();
    let size = manifest.content_size();
    let _lock = store.lock(&digest)?;
    let dest = store.tree_path(&digest);
    if dest.is_dir() {
        return Ok(Added {
            digest,
            kind: EntryKind::Tree,
            size,
            new: false,
        });
    }
    let tmp = store::temp_dir(store.tmp_dir())?;
    let built = build_tree(src, &tmp, &manifest).and_then(|()| {
        make_read_only(&tmp).map_err(StoreError::io("making read-only", &tmp))?;
        store::sync_dir(&tmp)
    });
    if let Err(e) = built {
        let _ = store::remove_tree(&tmp);
        return Err(e);
    }
    let new = store::install_tree(&tmp, &dest)?;
    Ok(Added {
        digest,
        kind: EntryKind::Tree,
        size,
        new,
    })
}

/// Copies the scanned tree from `src` into the empty directory `dst`,
/// re-hashing every file on the way and refusing a file that changed since
/// it was scanned.
fn build_tree(src: &Path, dst: &Path, manifest: &Manifest) -> Result<()> {
    let mut buf = vec![0u8; IO_BUF];
    let mut dirs = vec![dst.to_path_buf()];
    for (rel, node) in &manifest.entries {
        let rel_path = Path::new(std::ffi::OsStr::from_bytes(rel));
        let from = src.join(rel_path);
        let to = dst.join(rel_path);
        match node {
            Node::Dir => {
                fs::create_dir(&to).map_err(StoreError::io("creating", &to))?;
                dirs.push(to);
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &to)
                    .map_err(StoreError::io("creating symlink", &to))?;
            }
            Node::File { exec, size, digest } => {
                let mut input = File::open(&from).map_err(StoreError::io("opening", &from))?;
                let mut output = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(if *exec { 0o755 } else { 0o644 })
                    .open(&to)
                    .map_err(StoreError::io("creating", &to))?;
                let (got, got_size) = if *size > 8 * IO_BUF as u64 {
                    store::copy_hashing(&mut input, &mut output, &from, &to)?
                } else {
                    copy_with(&mut input, &mut output, &mut buf, &from, &to)?
                };
                if got != *digest || got_size != *size {
                    return Err(StoreError::Changed {
                        path: from,
                        expected: *digest,
                    });
                }
                output.sync_all().map_err(StoreError::io("syncing", &to))?;
            }
        }
    }
    for d in dirs.iter().rev() {
        store::sync_dir(d)?;
    }
    Ok(())
}

fn copy_with(
    input: &mut dyn Read,
    output: &mut dyn Write,
    buf: &mut [u8],
    from: &Path,
    to: &Path,
) -> Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match input.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io("reading", from)(e)),
        };
        output
            .write_all(&buf[..n])
            .map_err(StoreError::io("writing", to))?;
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

/// The relative path bytes of `path` below `root`, for messages.
pub(crate) fn display_rel(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// Turns relative path bytes into a path below `root`.
pub(crate) fn join_rel(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"hello").unwrap();
        fs::write(root.join("a-b"), b"x").unwrap();
        fs::write(root.join("run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("a/b/f", root.join("link")).unwrap();
    }

    #[test]
    fn manifest_is_canonical() {
        let d = tempfile::tempdir().unwrap();
        sample(d.path());
        let m = scan(d.path()).unwrap();
        let text = String::from_utf8(m.serialise()).unwrap();
        let h = Digest::of(b"hello").hex();
        let x = Digest::of(b"x").hex();
        let run = Digest::of(b"#!/bin/sh\n").hex();
        let expected = format!(
            "hermit-tree-v1\nd a\0f - 1 {x} a-b\0d a/b\0f - 5 {h} a/b/f\0l link\0a/b/f\0f x 10 {run} run\0"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn digest_ignores_mtime_and_order() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        sample(d1.path());
        // Same content, created in another order, different mtimes.
        std::os::unix::fs::symlink("a/b/f", d2.path().join("link")).unwrap();
        fs::write(d2.path().join("run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(d2.path().join("run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d2.path().join("a-b"), b"x").unwrap();
        fs::create_dir_all(d2.path().join("a/b")).unwrap();
        fs::write(d2.path().join("a/b/f"), b"hello").unwrap();
        assert_eq!(hash_tree(d1.path()).unwrap(), hash_tree(d2.path()).unwrap());
        fs::write(d2.path().join("a/b/f"), b"hellO").unwrap();
        assert_ne!(hash_tree(d1.path()).unwrap(), hash_tree(d2.path()).unwrap());
    }

    #[test]
    fn add_dir_then_again_is_a_noop() {
        let home = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        sample(src.path());
        let store = Store::open(home.path()).unwrap();
        let first = store.add_path(src.path()).unwrap();
        assert!(first.new);
        let p = store.tree_path(&first.digest);
        assert_eq!(fs::read(p.join("a/b/f")).unwrap(), b"hello");
        assert_eq!(
            fs::symlink_metadata(p.join("run")).unwrap().mode() & 0o7777,
            0o555
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o555);
        assert_eq!(hash_tree(&p).unwrap(), first.digest);
        let second = store.add_path(src.path()).unwrap();
        assert_eq!(second.digest, first.digest);
        assert!(!second.new);
    }

    #[test]
    fn refuses_fifo() {
        let src = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &src.path().join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = scan(src.path()).unwrap_err();
        assert!(err.to_string().contains("pipe"), "{err}");
        assert!(err.to_string().contains("fifo"), "{err}");
    }
}
