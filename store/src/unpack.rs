//! Unpacking archives into read-only trees, refusing hostile entries.
//!
//! # Layout
//!
//! ```text
//! v1/unpacked/<key>/        the tree, read-only (dirs 0555, files 0444/0555)
//! v1/unpacked/<key>.json    {"version":1,"archive":"sha256:…","format":"tar.gz",
//!                            "strip_components":0,"tree":"sha256:…"}
//! ```
//!
//! `key` = sha256 of `"hermit-unpack-v1\n" + <archive digest> + "\n" +
//! <canonical JSON of the options>`, where the options carry the *resolved*
//! format (so "detect" and naming the detected format share one tree), e.g.
//! `{"format":"tar.gz","strip_components":0}`. `tree` is the tree digest of
//! the result (see [`crate::tree`]); `store verify` re-checks it.
//!
//! An archive is unpacked once, under the key's lock, into the session's temp
//! directory; the tree is made read-only, the filesystem synced, the `.json`
//! written, and the directory renamed into place. Later calls only look.
//!
//! # Safety rules
//!
//! Extraction never follows a symlink and never trusts the archive:
//!
//! - an entry path that is absolute or has a `..` component is refused
//!   (`.` components and empty components are dropped);
//! - every parent component of every entry is checked against what has been
//!   extracted so far: an entry below a symlink ("written through a
//!   symlink") or below a regular file is refused; missing parents are
//!   created as directories;
//! - files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` after removing an
//!   earlier file or symlink of the same name; an entry that would replace a
//!   directory is refused;
//! - a symlink whose target is absolute, or that leads outside the tree once
//!   every symlink on its way is followed, is refused (checked per entry and
//!   again over the finished tree, so chains of symlinks cannot escape);
//! - a hard link must name a regular file extracted before it;
//! - device nodes, fifos and other special entries are refused;
//! - modes are reduced to 0644/0755 (then 0444/0555): setuid, setgid and
//!   sticky bits are dropped; owners are not restored; mtimes are kept.
//!
//! Every refusal is an [`UnpackError::Unsafe`] naming the entry, and nothing
//! of a refused archive stays in the store.
//!
//! # Speed
//!
//! Compressed tar streams are decompressed on one thread and parsed/written
//! on another, linked by a bounded channel of buffers, like `tar` piped from
//! `gzip -d`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::store::{self, Store, StoreError};
use crate::tree::{self, Manifest, Node};

/// Errors from unpacking.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("archive {0} is not in the store; fetch or add it first")]
    MissingArchive(Digest),
    #[error("cannot tell the format of archive {0} from its first bytes; name it explicitly (one of tar, tar.gz, tar.xz, tar.bz2, tar.zst, zip)")]
    UnknownFormat(Digest),
    #[error("unknown archive format {0:?}; use one of tar, tar.gz, tar.xz, tar.bz2, tar.zst, zip")]
    BadFormatName(String),
    #[error("refusing archive entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("reading archive data (is it truncated or not really {format}?): {source}")]
    Corrupt {
        format: String,
        #[source]
        source: io::Error,
    },
    #[error("unpacking {archive}")]
    InArchive {
        archive: Digest,
        #[source]
        source: Box<UnpackError>,
    },
    #[error("unpacked tree metadata {path} is unreadable: {reason}", path = path.display())]
    BadMeta { path: PathBuf, reason: String },
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> UnpackError + 'p {
    move |e| UnpackError::Store(StoreError::io(op, path)(e))
}

fn unsafe_entry(entry: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: tree::display_rel(entry),
        reason: reason.into(),
    }
}

/// Archive formats hermit unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArchiveFormat {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "tar.xz")]
    TarXz,
    #[serde(rename = "tar.bz2")]
    TarBz2,
    #[serde(rename = "tar.zst")]
    TarZst,
    #[serde(rename = "zip")]
    Zip,
}

impl ArchiveFormat {
    pub const ALL: [ArchiveFormat; 6] = [
        ArchiveFormat::Tar,
        ArchiveFormat::TarGz,
        ArchiveFormat::TarXz,
        ArchiveFormat::TarBz2,
        ArchiveFormat::TarZst,
        ArchiveFormat::Zip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarXz => "tar.xz",
            ArchiveFormat::TarBz2 => "tar.bz2",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::Zip => "zip",
        }
    }

    /// Recognises a format from the first bytes of a file (up to 512).
    pub fn detect(head: &[u8]) -> Option<ArchiveFormat> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(ArchiveFormat::TarGz)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(ArchiveFormat::TarXz)
        } else if head.starts_with(b"BZh") {
            Some(ArchiveFormat::TarBz2)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(ArchiveFormat::TarZst)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(ArchiveFormat::Zip)
        } else if is_tar_header(head) {
            Some(ArchiveFormat::Tar)
        } else {
            None
        }
    }

    /// The compression of a tar format (`None` for zip).
    pub fn compression(self) -> Option<Compression> {
        match self {
            ArchiveFormat::Tar => Some(Compression::None),
            ArchiveFormat::TarGz => Some(Compression::Gzip),
            ArchiveFormat::TarXz => Some(Compression::Xz),
            ArchiveFormat::TarBz2 => Some(Compression::Bzip2),
            ArchiveFormat::TarZst => Some(Compression::Zstd),
            ArchiveFormat::Zip => None,
        }
    }
}

/// A tar header block: "ustar" magic, or a valid v7 checksum.
fn is_tar_header(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let field = &head[148..156];
    let digits: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect::<String>();
    let Ok(stored) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = head[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == stored && head[0] != 0
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArchiveFormat {
    type Err = UnpackError;
    fn from_str(s: &str) -> Result<ArchiveFormat> {
        let s = match s {
            "tgz" => "tar.gz",
            "txz" => "tar.xz",
            "tbz2" => "tar.bz2",
            "tzst" => "tar.zst",
            other => other,
        };
        ArchiveFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnpackError::BadFormatName(s.to_string()))
    }
}

/// How a tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Bzip2,
    Zstd,
}

/// How to unpack an archive; goes into build records, so it serialises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpackOptions {
    /// `None`: detect from the archive's first bytes.
    #[serde(default)]
    pub format: Option<ArchiveFormat>,
    /// Leading path components to drop from every entry (`.` components are
    /// not counted); entries with no more components are skipped.
    #[serde(default)]
    pub strip_components: u32,
}

/// Options of the low-level extractors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    pub strip_components: u32,
    /// Apply OCI layer whiteouts: `.wh.<name>` deletes `<name>` from what was
    /// extracted before (earlier layers), `.wh..wh..opq` empties its
    /// directory of earlier content; neither is created. An entry may then
    /// also replace a directory of an earlier layer.
    pub oci_whiteouts: bool,
    /// Treat symlink targets as paths inside a root filesystem: absolute
    /// targets and `..` at the top are allowed (they resolve within the root
    /// once it is the sandbox's `/`). Writing *through* symlinks stays
    /// refused either way.
    pub rootfs_symlinks: bool,
    /// Skip device nodes and fifos instead of refusing the archive. For root
    /// filesystem images, whose `/dev` the sandbox replaces with its own.
    pub skip_special: bool,
}

/// What an extraction produced.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The manifest of the result, when the destination started empty.
    pub manifest: Option<Manifest>,
    /// Entries written (files, dirs, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// The metadata kept beside an unpacked tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpackedMeta {
    pub version: u32,
    pub archive: Digest,
    pub format: ArchiveFormat,
    pub strip_components: u32,
    pub tree: Digest,
}

/// The key an archive + options are unpacked under.
pub fn unpack_key(archive: &Digest, format: ArchiveFormat, strip_components: u32) -> Digest {
    let canonical = UnpackOptions {
        format: Some(format),
        strip_components,
    };
    // Serialising two plain fields cannot fail; fall back to Debug anyway.
    let json = serde_json::to_string(&canonical).unwrap_or_else(|_| format!("{canonical:?}"));
    Digest::of(format!("hermit-unpack-v1\n{archive}\n{json}").as_bytes())
}

pub(crate) fn meta_path(store: &Store, key: &Digest) -> PathBuf {
    store
        .base()
        .join("unpacked")
        .join(format!("{}.json", key.hex()))
}

/// Reads `unpacked/<key>.json`.
pub fn read_meta(store: &Store, key: &Digest) -> Result<UnpackedMeta> {
    let p = meta_path(store, key);
    let text = fs::read(&p).map_err(io_err("reading", &p))?;
    serde_json::from_slice(&text).map_err(|e| UnpackError::BadMeta {
        path: p,
        reason: e.to_string(),
    })
}

/// Unpacks the archive blob `archive` (once) and returns the read-only tree
/// `v1/unpacked/<key>/`.
pub fn unpack(store: &Store, archive: &Digest, opts: &UnpackOptions) -> Result<PathBuf> {
    unpack_inner(store, archive, opts).map_err(|e| match e {
        e @ UnpackError::MissingArchive(_) => e,
        e @ UnpackError::Store(StoreError::DiskFull { .. }) => e,
        e => UnpackError::InArchive {
            archive: *archive,
            source: Box::new(e),
        },
    })
}

fn unpack_inner(store: &Store, archive: &Digest, opts: &UnpackOptions) -> Result<PathBuf> {
    // Keeps gc away from the archive while we look at it.
    let _shared = store.shared_lock()?;
    let blob = store
        .blob(archive)
        .ok_or(UnpackError::MissingArchive(*archive))?;
    let format = match opts.format {
        Some(f) => f,
        None => {
            let mut head = Vec::with_capacity(512);
            File::open(&blob)
                .and_then(|f| f.take(512).read_to_end(&mut head))
                .map_err(io_err("reading", &blob))?;
            ArchiveFormat::detect(&head).ok_or(UnpackError::UnknownFormat(*archive))?
        }
    };
    let key = unpack_key(archive, format, opts.strip_components);
    let _lock = store.lock(&key)?;
    let dest = store.unpacked_path(&key);
    let meta_file = meta_path(store, &key);
    if dest.is_dir() && meta_file.is_file() {
        return Ok(dest);
    }
    let tmp = store::temp_dir(store.tmp_dir())?;
    let done = (|| -> Result<()> {
        let xopts = ExtractOptions {
            strip_components: opts.strip_components,
            ..ExtractOptions::default()
        };
        let file = File::open(&blob).map_err(io_err("opening", &blob))?;
        store::advise_sequential(&file);
        let extracted = match format.compression() {
            Some(c) => extract_tar_stream(file, c, &tmp, &xopts)?,
            None => extract_zip(file, &tmp, &xopts)?,
        };
        let manifest = match extracted.manifest {
            Some(m) => {
                seal_fresh_tree(&tmp, &m).map_err(io_err("making read-only", &tmp))?;
                m
            }
            None => {
                tree::make_read_only(&tmp).map_err(io_err("making read-only", &tmp))?;
                tree::scan(&tmp)?
            }
        };
        syncfs(&tmp)?;
        let meta = UnpackedMeta {
            version: 1,
            archive: *archive,
            format,
            strip_components: opts.strip_components,
            tree: manifest.digest(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| UnpackError::BadMeta {
            path: meta_file.clone(),
            reason: e.to_string(),
        })?;
        // Remove a leftover tree without metadata (cannot normally happen:
        // the metadata is written first).
        store::remove_tree(&dest).map_err(io_err("removing", &dest))?;
        store::write_small_atomic(store.tmp_dir(), &meta_file, &json)?;
        store::install_tree(&tmp, &dest)?;
        Ok(())
    })();
    if let Err(e) = done {
        let _ = store::remove_tree(&tmp);
        return Err(e);
    }
    Ok(dest)
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(io_err("opening", dir))?;
    nix::unistd::syncfs(&f)
        .map_err(|e| io_err("syncing", dir)(io::Error::from_raw_os_error(e as i32)))
}

/// Extracts a (possibly compressed) tar stream into `dest`. Compressed
/// streams are decompressed on a second thread.
pub fn extract_tar_stream<R: Read + Send>(
    reader: R,
    compression: Compression,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<Extracted> {
    fn decoder<'a, R: Read + Send + 'a>(
        r: R,
        c: Compression,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        let r = io::BufReader::with_capacity(1 << 16, r);
        Ok(match c {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
    let format = match compression {
        Compression::None => "tar",
        Compression::Gzip => "tar.gz",
        Compression::Xz => "tar.xz",
        Compression::Bzip2 => "tar.bz2",
        Compression::Zstd => "tar.zst",
    };
    let corrupt = |source| UnpackError::Corrupt {
        format: format.to_string(),
        source,
    };
    if compression == Compression::None {
        return extract_tar_with(
            io::BufReader::with_capacity(1 << 20, reader),
            dest,
            opts,
            format,
        );
    }
    const CHUNK: usize = 1 << 18;
    const DEPTH: usize = 16;
    let (data_tx, data_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut dec = match decoder(reader, compression) {
                Ok(d) => d,
                Err(e) => {
                    let _ = data_tx.send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = free_rx.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                let res = loop {
                    match dec.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(n) => {
                            filled += n;
                            if filled == CHUNK {
                                break Ok(false);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                match res {
                    Ok(eof) => {
                        if (filled > 0 && data_tx.send(Ok(buf)).is_err()) || eof {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = data_tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let reader = ChunkReader {
            rx: data_rx,
            free: free_tx,
            cur: Vec::new(),
            pos: 0,
        };
        // `reader` is moved in and dropped when extraction returns, which
        // ends the decoder thread even on an early error.
        extract_tar_with(reader, dest, opts, format)
    })
    .map_err(|e| match e {
        UnpackError::Corrupt { source, .. } => corrupt(source),
        e => e,
    })
}

/// Reads the buffers a decoder thread sends.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    free: mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(buf)) => {
                    let old = std::mem::replace(&mut self.cur, buf);
                    let _ = self.free.try_send(old);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Extracts an uncompressed tar stream into `dest` (which may already hold
/// earlier layers when `opts.oci_whiteouts` is set), with the safety rules of
/// this module. Files are created with their final modes (0444/0555);
/// directories stay 0755 so that further layers can be applied: call
/// [`crate::tree::make_read_only`] when done.
pub fn extract_tar<R: Read>(reader: R, dest: &Path, opts: &ExtractOptions) -> Result<Extracted> {
    extract_tar_with(reader, dest, opts, "tar")
}

fn extract_tar_with<R: Read>(
    reader: R,
    dest: &Path,
    opts: &ExtractOptions,
    format: &str,
) -> Result<Extracted> {
    let corrupt = |source| UnpackError::Corrupt {
        format: format.to_string(),
        source,
    };
    let mut x = Extractor::new(dest, opts)?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        use tar::EntryType as T;
        let kind = match header.entry_type() {
            T::Regular | T::Continuous | T::GNUSparse => In::File { mode, mtime },
            T::Directory => In::Dir { mtime },
            T::Symlink => In::Symlink {
                target: link.unwrap_or_default(),
            },
            T::Link => In::Hardlink {
                target: link.unwrap_or_default(),
            },
            T::Char => In::Special("a character device"),
            T::Block => In::Special("a block device"),
            T::Fifo => In::Special("a fifo"),
            // Metadata entries the tar crate did not fold into the next entry.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            _ => In::Special("an entry of an unsupported type"),
        };
        x.entry(&path, kind, &mut entry).map_err(|e| match e {
            UnpackError::Corrupt { source, .. } => corrupt(source),
            e => e,
        })?;
    }
    x.finish()
}

/// Extracts a zip archive into `dest` with the same rules.
pub fn extract_zip<R: Read + Seek>(
    reader: R,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<Extracted> {
    let corrupt = |e: zip::result::ZipError| UnpackError::Corrupt {
        format: "zip".to_string(),
        source: io::Error::other(e),
    };
    let mut zip = zip::ZipArchive::new(reader).map_err(corrupt)?;
    let mut x = Extractor::new(dest, opts)?;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(corrupt)?;
        let path = f.name_raw().to_vec();
        let mode = f.unix_mode();
        // Prefer the exact Unix mtime (extended timestamp field) over the
        // 2-second, zone-less MS-DOS time.
        let mtime = f
            .extra_data_fields()
            .find_map(|e| match e {
                zip::ExtraField::ExtendedTimestamp(t) => t.mod_time().map(u64::from),
                _ => None,
            })
            .or_else(|| f.last_modified().map(zip_time));
        let ftype = mode.map(|m| m & 0o170000).unwrap_or(0);
        let kind = if f.is_dir() || ftype == 0o040000 {
            In::Dir { mtime }
        } else if ftype == 0o120000 {
            let mut target = Vec::new();
            (&mut f)
                .take(4096)
                .read_to_end(&mut target)
                .map_err(|source| UnpackError::Corrupt {
                    format: "zip".into(),
                    source,
                })?;
            In::Symlink { target }
        } else if ftype == 0 || ftype == 0o100000 {
            In::File {
                mode: mode.unwrap_or(0o644),
                mtime,
            }
        } else if ftype == 0o020000 {
            In::Special("a character device")
        } else if ftype == 0o060000 {
            In::Special("a block device")
        } else if ftype == 0o010000 {
            In::Special("a fifo")
        } else {
            In::Special("an entry of an unsupported type")
        };
        x.entry(&path, kind, &mut f)?;
    }
    x.finish()
}

/// Seconds since the epoch of a zip (MS-DOS, local-time-less) timestamp.
fn zip_time(t: zip::DateTime) -> u64 {
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, d) = (t.year() as i64, t.month() as i64, t.day() as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + t.hour() as i64 * 3600 + t.minute() as i64 * 60 + t.second() as i64;
    secs.max(0) as u64
}

/// The process umask, read without changing it (from /proc); assumes the
/// worst when it cannot be read.
fn current_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

/// Makes the directories of a freshly extracted tree read-only (0555); the
/// files already are. `manifest` must describe `root` completely.
pub fn seal_fresh_tree(root: &Path, manifest: &Manifest) -> io::Result<()> {
    for (rel, node) in &manifest.entries {
        if matches!(node, Node::Dir) {
            fs::set_permissions(tree::join_rel(root, rel), fs::Permissions::from_mode(0o555))?;
        }
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o555))
}

/// One archive entry, as the extractor sees it.
enum In {
    File { mode: u32, mtime: Option<u64> },
    Dir { mtime: Option<u64> },
    Symlink { target: Vec<u8> },
    Hardlink { target: Vec<u8> },
    Special(&'static str),
}

/// Splits an entry path into components, refusing absolute paths and `..`,
/// dropping `.` and empty components, then strips `strip` components.
/// `Ok(None)`: nothing left after stripping (the entry is skipped).
fn components(raw: &[u8], strip: u32) -> Result<Option<Vec<&[u8]>>> {
    if raw.is_empty() {
        return Err(unsafe_entry(raw, "has an empty path"));
    }
    if raw[0] == b'/' {
        return Err(unsafe_entry(raw, "is an absolute path"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(raw, "has a `..` component")),
            c => out.push(c),
        }
    }
    if out.len() <= strip as usize {
        return Ok(None);
    }
    Ok(Some(out.split_off(strip as usize)))
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Does a symlink at `link` (relative path) with `target` lead outside the
/// root? Follows symlinks known in `nodes`; `..` above the root escapes.
/// With `nodes` empty this is the purely lexical check.
fn escapes(nodes: &BTreeMap<Vec<u8>, Node>, link: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let mut current: Vec<Vec<u8>> = parent_of(link)
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| c.to_vec())
        .collect();
    let mut pending: Vec<Vec<u8>> = target
        .split(|b| *b == b'/')
        .rev()
        .map(|c| c.to_vec())
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_slice() {
            b"" | b"." => {}
            b".." => {
                if current.pop().is_none() {
                    return true;
                }
            }
            _ => {
                current.push(c);
                let key = current.join(&b'/');
                if let Some(Node::Symlink { target }) = nodes.get(&key) {
                    hops += 1;
                    if hops > 40 {
                        // A loop resolves to nothing, hence nowhere outside.
                        return false;
                    }
                    if target.first() == Some(&b'/') {
                        return true;
                    }
                    current.pop();
                    pending.extend(target.split(|b| *b == b'/').rev().map(|c| c.to_vec()));
                }
            }
        }
    }
    false
}

struct Extractor<'a> {
    root: &'a Path,
    opts: &'a ExtractOptions,
    /// Everything known below the root: what this extraction wrote, and
    /// (when the root was not empty) what was found on disk.
    nodes: BTreeMap<Vec<u8>, Node>,
    /// Whether the root was empty at the start (then `nodes` is complete).
    fresh: bool,
    /// Paths written by this extraction (for opaque whiteouts).
    created: HashSet<Vec<u8>>,
    /// The last parent directory verified, to skip re-checking siblings.
    last_parent: Option<Vec<u8>>,
    dir_mtimes: Vec<(Vec<u8>, u64)>,
    /// The process umask would clear read/exec bits, so files need a chmod.
    umask_bites: bool,
    buf: Vec<u8>,
    entries: u64,
    bytes: u64,
}

impl<'a> Extractor<'a> {
    fn new(root: &'a Path, opts: &'a ExtractOptions) -> Result<Extractor<'a>> {
        let fresh = fs::read_dir(root)
            .map_err(io_err("listing", root))?
            .next()
            .is_none();
        Ok(Extractor {
            root,
            opts,
            nodes: BTreeMap::new(),
            fresh,
            created: HashSet::new(),
            last_parent: None,
            dir_mtimes: Vec::new(),
            umask_bites: current_umask() & 0o555 != 0,
            buf: vec![0u8; 1 << 18],
            entries: 0,
            bytes: 0,
        })
    }

    fn disk(&self, rel: &[u8]) -> PathBuf {
        tree::join_rel(self.root, rel)
    }

    /// What is at `rel`: from memory, else (for a non-empty root) from disk.
    fn lookup(&mut self, rel: &[u8]) -> Result<Option<Node>> {
        if let Some(n) = self.nodes.get(rel) {
            return Ok(Some(n.clone()));
        }
        if self.fresh {
            return Ok(None);
        }
        let p = self.disk(rel);
        let node = match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &p)(e)),
            Ok(m) if m.is_dir() => Node::Dir,
            Ok(m) if m.file_type().is_symlink() => Node::Symlink {
                target: fs::read_link(&p)
                    .map_err(io_err("reading link", &p))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            },
            Ok(m) => Node::File {
                exec: m.mode() & 0o111 != 0,
                size: m.len(),
                digest: Digest::from_bytes([0; 32]),
            },
        };
        self.nodes.insert(rel.to_vec(), node.clone());
        Ok(Some(node))
    }

    /// Makes sure every parent of `comps` is a real directory, creating the
    /// missing ones; refuses to go through a symlink or a file.
    fn ensure_parents(&mut self, entry: &[u8], comps: &[&[u8]]) -> Result<()> {
        let parent = join(&comps[..comps.len() - 1]);
        if self.last_parent.as_deref() == Some(parent.as_slice()) {
            return Ok(());
        }
        for i in 1..comps.len() {
            let prefix = join(&comps[..i]);
            match self.lookup(&prefix)? {
                Some(Node::Dir) => {}
                Some(Node::Symlink { .. }) => {
                    return Err(unsafe_entry(
                        entry,
                        format!(
                            "would be written through the symlink {:?}",
                            tree::display_rel(&prefix)
                        ),
                    ))
                }
                Some(Node::File { .. }) => {
                    return Err(unsafe_entry(
                        entry,
                        format!(
                            "would be written below the file {:?}",
                            tree::display_rel(&prefix)
                        ),
                    ))
                }
                None => {
                    let p = self.disk(&prefix);
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(io_err("creating", &p))?;
                    self.record(prefix, Node::Dir);
                }
            }
        }
        self.last_parent = Some(parent);
        Ok(())
    }

    fn record(&mut self, rel: Vec<u8>, node: Node) {
        if self.opts.oci_whiteouts {
            self.created.insert(rel.clone());
        }
        self.nodes.insert(rel, node);
    }

    /// Removes `rel` (and everything below) from disk and memory.
    fn remove(&mut self, rel: &[u8]) -> Result<()> {
        let p = self.disk(rel);
        store::remove_tree(&p).map_err(io_err("removing", &p))?;
        let mut below = rel.to_vec();
        below.push(b'/');
        let doomed: Vec<Vec<u8>> = self
            .nodes
            .range(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        self.nodes.remove(rel);
        // Dropped entries may have been the cached parent.
        self.last_parent = None;
        Ok(())
    }

    /// Clears the way for a new non-directory entry at `rel`.
    fn clear_for_leaf(&mut self, entry: &[u8], rel: &[u8]) -> Result<()> {
        match self.lookup(rel)? {
            None => Ok(()),
            Some(Node::Dir) => {
                if self.opts.oci_whiteouts && !self.created.contains(rel) {
                    self.remove(rel)
                } else {
                    Err(unsafe_entry(entry, "would replace a directory"))
                }
            }
            Some(_) => {
                let p = self.disk(rel);
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
                self.nodes.remove(rel);
                Ok(())
            }
        }
    }

    fn entry(&mut self, raw: &[u8], kind: In, data: &mut dyn Read) -> Result<()> {
        let Some(comps) = components(raw, self.opts.strip_components)? else {
            return Ok(());
        };
        if let In::Special(what) = kind {
            if self.opts.skip_special {
                return Ok(());
            }
            return Err(unsafe_entry(raw, format!("is {what}")));
        }
        let rel = join(&comps);
        let name = comps[comps.len() - 1];
        if self.opts.oci_whiteouts && name.starts_with(b".wh.") {
            return self.whiteout(raw, &comps);
        }
        self.ensure_parents(raw, &comps)?;
        match kind {
            In::Dir { mtime } => {
                match self.lookup(&rel)? {
                    Some(Node::Dir) => {}
                    Some(_) => {
                        self.clear_for_leaf(raw, &rel)?;
                        self.mkdir(&rel)?;
                    }
                    None => self.mkdir(&rel)?,
                }
                if let Some(t) = mtime {
                    self.dir_mtimes.push((rel, t));
                }
            }
            In::File { mode, mtime } => {
                self.clear_for_leaf(raw, &rel)?;
                let exec = mode & 0o111 != 0;
                let p = self.disk(&rel);
                // Created with its final, read-only mode: the descriptor
                // is writable all the same, and no chmod pass is needed.
                let final_mode = if exec { 0o555 } else { 0o444 };
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .mode(final_mode)
                    .open(&p)
                    .map_err(io_err("creating", &p))?;
                if self.umask_bites {
                    f.set_permissions(fs::Permissions::from_mode(final_mode))
                        .map_err(io_err("setting permissions of", &p))?;
                }
                let mut hasher = Hasher::new();
                let mut size = 0u64;
                loop {
                    let n = match data.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => {
                            return Err(UnpackError::Corrupt {
                                format: String::new(),
                                source,
                            })
                        }
                    };
                    f.write_all(&self.buf[..n]).map_err(io_err("writing", &p))?;
                    hasher.update(&self.buf[..n]);
                    size += n as u64;
                }
                if let Some(t) = mtime {
                    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
                        .map_err(io_err("setting mtime of", &p))?;
                }
                self.bytes += size;
                let digest = hasher.finish();
                self.record(rel, Node::File { exec, size, digest });
            }
            In::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    return Err(unsafe_entry(raw, "is a symlink with an empty target"));
                }
                if !self.opts.rootfs_symlinks && escapes(&BTreeMap::new(), &rel, &target) {
                    return Err(unsafe_entry(
                        raw,
                        format!(
                            "is a symlink to {:?}, which is outside the archive",
                            tree::display_rel(&target)
                        ),
                    ));
                }
                self.clear_for_leaf(raw, &rel)?;
                let p = self.disk(&rel);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &p)
                    .map_err(io_err("creating symlink", &p))?;
                self.record(rel, Node::Symlink { target });
            }
            In::Hardlink { target } => {
                let refuse = |why: &str| {
                    unsafe_entry(
                        raw,
                        format!("is a hard link to {:?}, {why}", tree::display_rel(&target)),
                    )
                };
                let tcomps = match components(&target, self.opts.strip_components) {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => return Err(refuse("which is outside the archive")),
                };
                let trel = join(&tcomps);
                // Every parent of the target must be a real directory too.
                for i in 1..tcomps.len() {
                    if !matches!(self.lookup(&join(&tcomps[..i]))?, Some(Node::Dir)) {
                        return Err(refuse("which is not a file extracted before it"));
                    }
                }
                let node = match self.lookup(&trel)? {
                    Some(n @ Node::File { .. }) => n,
                    _ => return Err(refuse("which is not a file extracted before it")),
                };
                if trel == rel {
                    return Ok(());
                }
                self.clear_for_leaf(raw, &rel)?;
                let (from, to) = (self.disk(&trel), self.disk(&rel));
                fs::hard_link(&from, &to).map_err(io_err("linking", &to))?;
                self.record(rel, node);
            }
            In::Special(_) => {}
        }
        self.entries += 1;
        Ok(())
    }

    fn mkdir(&mut self, rel: &[u8]) -> Result<()> {
        let p = self.disk(rel);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(io_err("creating", &p))?;
        self.record(rel.to_vec(), Node::Dir);
        Ok(())
    }

    /// Applies an OCI whiteout entry (`.wh.<name>` or `.wh..wh..opq`).
    fn whiteout(&mut self, raw: &[u8], comps: &[&[u8]]) -> Result<()> {
        let name = comps[comps.len() - 1];
        let parent = join(&comps[..comps.len() - 1]);
        // The directory must exist as a real directory for there to be
        // anything to delete; never follow a symlink to find it.
        for i in 1..comps.len() {
            match self.lookup(&join(&comps[..i]))? {
                Some(Node::Dir) => {}
                None => return Ok(()),
                Some(_) => {
                    return Err(unsafe_entry(
                        raw,
                        "is a whiteout below something that is not a directory",
                    ))
                }
            }
        }
        if name == b".wh..wh..opq" {
            let dir = self.disk(&parent);
            let children = fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
            let mut doomed = Vec::new();
            for c in children {
                let c = c.map_err(io_err("listing", &dir))?;
                let mut rel = parent.clone();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(c.file_name().as_bytes());
                if !self.created.contains(&rel) {
                    doomed.push(rel);
                }
            }
            for rel in doomed {
                self.remove(&rel)?;
            }
        } else {
            let victim = &name[4..];
            if victim.is_empty() || victim == b"." || victim == b".." {
                return Err(unsafe_entry(raw, "is a whiteout of nothing"));
            }
            let mut rel = parent;
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(victim);
            if self.lookup(&rel)?.is_some() {
                self.remove(&rel)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Extracted> {
        if !self.opts.rootfs_symlinks {
            // Chains of symlinks, each harmless alone, can still lead out.
            for (rel, node) in &self.nodes {
                if let Node::Symlink { target } = node {
                    if escapes(&self.nodes, rel, target) {
                        return Err(unsafe_entry(
                            rel,
                            format!(
                                "is a symlink to {:?}, which leads outside the archive through other symlinks",
                                tree::display_rel(target)
                            ),
                        ));
                    }
                }
            }
        }
        // Directory mtimes last, once nothing is added below them.
        for (rel, t) in std::mem::take(&mut self.dir_mtimes).into_iter().rev() {
            if !matches!(self.nodes.get(&rel), Some(Node::Dir)) {
                continue;
            }
            let p = self.disk(&rel);
            if let Ok(d) = File::open(&p) {
                let _ = d.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t));
            }
        }
        let manifest = self.fresh.then(|| Manifest {
            entries: std::mem::take(&mut self.nodes),
        });
        Ok(Extracted {
            manifest,
            entries: self.entries,
            bytes: self.bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Raw bytes: the tar crate's set_path refuses `..` and absolute
        // paths, which is exactly what these tests need to write.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn link_header(path: &str, kind: tar::EntryType, target: &str) -> tar::Header {
        let mut h = header(path, kind, 0, 0o777);
        let l = &mut h.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        h
    }

    enum E<'a> {
        F(&'a str, &'a [u8], u32),
        D(&'a str),
        L(&'a str, &'a str),
        H(&'a str, &'a str),
        Raw(Box<tar::Header>),
    }

    fn tarball(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match e {
                E::F(p, data, mode) => {
                    let h = header(p, tar::EntryType::Regular, data.len() as u64, *mode);
                    b.append(&h, *data).unwrap();
                }
                E::D(p) => b
                    .append(&header(p, tar::EntryType::Directory, 0, 0o755), &[][..])
                    .unwrap(),
                E::L(p, t) => b
                    .append(&link_header(p, tar::EntryType::Symlink, t), &[][..])
                    .unwrap(),
                E::H(p, t) => b
                    .append(&link_header(p, tar::EntryType::Link, t), &[][..])
                    .unwrap(),
                E::Raw(h) => b.append(h.as_ref(), &[][..]).unwrap(),
            }
        }
        b.into_inner().unwrap()
    }

    fn extract(entries: &[E], opts: ExtractOptions) -> (tempfile::TempDir, Result<Extracted>) {
        let dir = tempfile::tempdir().unwrap();
        let data = tarball(entries);
        let r = extract_tar(&data[..], dir.path(), &opts);
        (dir, r)
    }

    fn refused(entries: &[E], entry: &str) -> String {
        let (_d, r) = extract(entries, ExtractOptions::default());
        match r {
            Err(UnpackError::Unsafe { entry: e, reason }) => {
                assert_eq!(e, entry, "{reason}");
                reason
            }
            other => panic!("expected refusal of {entry}, got {other:?}"),
        }
    }

    #[test]
    fn refuses_hostile_entries() {
        refused(&[E::F("../evil", b"x", 0o644)], "../evil");
        refused(&[E::F("a/../../evil", b"x", 0o644)], "a/../../evil");
        refused(&[E::F("/etc/evil", b"x", 0o644)], "/etc/evil");
        refused(&[E::L("up", "../../x")], "up");
        refused(&[E::L("abs", "/etc/passwd")], "abs");
        refused(&[E::F("f", b"x", 0o644), E::H("h", "../f")], "h");
        refused(&[E::H("h", "missing")], "h");
        refused(
            &[E::D("sub"), E::L("a", "sub"), E::F("a/evil", b"x", 0o644)],
            "a/evil",
        );
        refused(
            &[E::D("d"), E::F("d/x", b"", 0o644), E::F("d", b"x", 0o644)],
            "d",
        );
        refused(&[E::D("d"), E::L("d", "x")], "d");
        refused(
            &[E::Raw(Box::new(header(
                "dev",
                tar::EntryType::Char,
                0,
                0o644,
            )))],
            "dev",
        );
        refused(
            &[E::Raw(Box::new(header(
                "blk",
                tar::EntryType::Block,
                0,
                0o644,
            )))],
            "blk",
        );
        refused(
            &[E::Raw(Box::new(header(
                "fifo",
                tar::EntryType::Fifo,
                0,
                0o644,
            )))],
            "fifo",
        );
        refused(&[E::F("f", b"x", 0o644), E::F("f/x", b"x", 0o644)], "f/x");
    }

    #[test]
    fn refuses_symlink_chains() {
        // Each link alone stays inside; followed together `esc` leads out.
        let reason = refused(
            &[E::D("d"), E::L("later", "."), E::L("esc", "later/..")],
            "esc",
        );
        assert!(reason.contains("through other symlinks"), "{reason}");
        refused(
            &[
                E::D("a"),
                E::L("a/b", ".."),
                E::L("c", "a/b"),
                E::L("esc", "c/.."),
            ],
            "esc",
        );
    }

    #[test]
    fn rootfs_mode_allows_absolute_links_but_not_writing_through() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let opts = ExtractOptions {
            rootfs_symlinks: true,
            ..Default::default()
        };
        let (d, r) = extract(&[E::L("etc-link", "/etc/passwd")], opts);
        r.unwrap();
        assert!(fs::symlink_metadata(d.path().join("etc-link"))
            .unwrap()
            .file_type()
            .is_symlink());
        let (_d, r) = extract(&[E::L("a", &target), E::F("a/evil", b"x", 0o644)], opts);
        assert!(
            matches!(r, Err(UnpackError::Unsafe { ref entry, .. }) if entry == "a/evil"),
            "{r:?}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn extracts_normal_archive() {
        let (d, r) = extract(
            &[
                E::D("./pkg"),
                E::F("./pkg/run", b"#!/bin/sh\n", 0o4755),
                E::F("pkg/sub/data", b"data", 0o600),
                E::L("pkg/link", "sub/data"),
                E::H("pkg/hard", "pkg/sub/data"),
                E::F("pkg/run", b"#!/bin/sh\necho\n", 0o6755),
            ],
            ExtractOptions::default(),
        );
        let x = r.unwrap();
        let root = d.path();
        assert_eq!(
            fs::read(root.join("pkg/run")).unwrap(),
            b"#!/bin/sh\necho\n"
        );
        assert_eq!(
            fs::metadata(root.join("pkg/run")).unwrap().mode() & 0o7777,
            0o555
        );
        assert_eq!(
            fs::metadata(root.join("pkg/sub/data")).unwrap().mode() & 0o7777,
            0o444
        );
        assert_eq!(fs::read(root.join("pkg/link")).unwrap(), b"data");
        assert_eq!(fs::metadata(root.join("pkg/hard")).unwrap().nlink(), 2);
        assert_eq!(
            fs::metadata(root.join("pkg/sub/data")).unwrap().mtime(),
            1_700_000_000
        );
        let m = x.manifest.unwrap();
        assert_eq!(m.digest(), tree::hash_tree(root).unwrap());
    }

    #[test]
    fn strip_components_skips_and_strips() {
        let (d, r) = extract(
            &[
                E::D("top"),
                E::F("top/a", b"a", 0o644),
                E::F("other", b"o", 0o644),
            ],
            ExtractOptions {
                strip_components: 1,
                ..Default::default()
            },
        );
        r.unwrap();
        assert_eq!(fs::read(d.path().join("a")).unwrap(), b"a");
        assert!(!d.path().join("other").exists());
        assert!(!d.path().join("top").exists());
    }

    #[test]
    fn oci_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ExtractOptions {
            oci_whiteouts: true,
            rootfs_symlinks: true,
            ..Default::default()
        };
        let layer1 = tarball(&[
            E::F("etc/keep", b"k", 0o644),
            E::F("etc/gone", b"g", 0o644),
            E::F("opq/old", b"o", 0o644),
            E::D("was-dir"),
            E::F("was-dir/x", b"x", 0o644),
        ]);
        extract_tar(&layer1[..], dir.path(), &opts).unwrap();
        let layer2 = tarball(&[
            E::F("etc/.wh.gone", b"", 0o644),
            E::F("opq/new", b"n", 0o644),
            E::F("opq/.wh..wh..opq", b"", 0o644),
            E::F("was-dir", b"now a file", 0o644),
        ]);
        let x = extract_tar(&layer2[..], dir.path(), &opts).unwrap();
        assert!(x.manifest.is_none());
        let root = dir.path();
        assert!(root.join("etc/keep").exists());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(!root.join("opq/old").exists());
        assert!(root.join("opq/new").exists());
        assert!(!root.join("opq/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("was-dir")).unwrap(), b"now a file");
    }

    #[test]
    fn detects_formats() {
        let tar = tarball(&[E::F("a", b"a", 0o644)]);
        assert_eq!(ArchiveFormat::detect(&tar), Some(ArchiveFormat::Tar));
        assert_eq!(
            ArchiveFormat::detect(b"\x1f\x8b\x08"),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(ArchiveFormat::detect(b"hello"), None);
        assert_eq!(
            "tgz".parse::<ArchiveFormat>().unwrap(),
            ArchiveFormat::TarGz
        );
        let opts: UnpackOptions = serde_json::from_str(r#"{"format":"tar.zst"}"#).unwrap();
        assert_eq!(opts.format, Some(ArchiveFormat::TarZst));
        assert_eq!(
            serde_json::to_string(&UnpackOptions::default()).unwrap(),
            r#"{"format":null,"strip_components":0}"#
        );
    }

    #[test]
    fn unpack_once_read_only_and_verified() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let data = tarball(&[E::F("d/f", b"hello", 0o644), E::F("x", b"x", 0o755)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let digest = store.add_reader(&mut &gz[..], "t", None, None).unwrap();
        let p = unpack(&store, &digest, &UnpackOptions::default()).unwrap();
        assert_eq!(fs::read(p.join("d/f")).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o555
        );
        assert_eq!(
            fs::metadata(p.join("x")).unwrap().permissions().mode() & 0o7777,
            0o555
        );
        let key = unpack_key(&digest, ArchiveFormat::TarGz, 0);
        assert_eq!(p, store.unpacked_path(&key));
        let meta = read_meta(&store, &key).unwrap();
        assert_eq!(meta.tree, tree::hash_tree(&p).unwrap());
        // Explicit format: same key, same tree, not unpacked again.
        let opts = UnpackOptions {
            format: Some(ArchiveFormat::TarGz),
            strip_components: 0,
        };
        assert_eq!(unpack(&store, &digest, &opts).unwrap(), p);
        assert!(store.verify().unwrap().corrupt.is_empty());
        // Not rooted: gc removes both the tree and the archive.
        let report = store.gc().unwrap();
        assert_eq!(report.removed.len(), 2, "{report:?}");
        assert!(!p.exists());
    }

    fn zip_with(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for (name, mode, data) in entries {
            let o = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            if mode & 0o170000 == 0o120000 {
                w.add_symlink(*name, std::str::from_utf8(data).unwrap(), o)
                    .unwrap();
            } else {
                w.start_file(*name, o).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zip_entries_follow_the_same_rules() {
        let opts = ExtractOptions::default();
        for (entries, bad) in [
            (vec![("../evil", 0o644, &b"x"[..])], "../evil"),
            (vec![("/abs", 0o644, &b"x"[..])], "/abs"),
            (vec![("up", 0o120777, &b"../../x"[..])], "up"),
            (
                vec![("l", 0o120777, &b"."[..]), ("l/evil", 0o644, &b"x"[..])],
                "l/evil",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let data = zip_with(&entries);
            match extract_zip(io::Cursor::new(data), dir.path(), &opts) {
                Err(UnpackError::Unsafe { entry, .. }) => assert_eq!(entry, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let data = zip_with(&[("a/run", 0o104755, b"#!"), ("a/l", 0o120777, b"run")]);
        extract_zip(io::Cursor::new(data), dir.path(), &opts).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("a/run")).unwrap().mode() & 0o7777,
            0o555
        );
        assert_eq!(fs::read(dir.path().join("a/l")).unwrap(), b"#!");
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn compressed_stream_errors_end_the_decoder_thread() {
        // A refusal early in a long compressed stream returns at once
        // (the decoder thread must not stay blocked on a full channel).
        let big = vec![7u8; 20 << 20];
        let data = gz(&tarball(&[
            E::F("../evil", b"x", 0o644),
            E::F("big", &big, 0o644),
        ]));
        let dir = tempfile::tempdir().unwrap();
        let r = extract_tar_stream(
            &data[..],
            Compression::Gzip,
            dir.path(),
            &Default::default(),
        );
        assert!(matches!(r, Err(UnpackError::Unsafe { .. })), "{r:?}");
        // A truncated stream is reported as such.
        let data = gz(&tarball(&[E::F("big", &big, 0o644)]));
        let cut = &data[..data.len() / 2];
        let dir = tempfile::tempdir().unwrap();
        let r = extract_tar_stream(cut, Compression::Gzip, dir.path(), &Default::default());
        match r {
            Err(e @ UnpackError::Corrupt { .. }) => {
                assert!(e.to_string().contains("tar.gz"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zip_time_is_utc_seconds() {
        let t = zip::DateTime::from_date_and_time(2023, 11, 14, 22, 13, 20).unwrap();
        assert_eq!(zip_time(t), 1_700_000_000);
    }
}
