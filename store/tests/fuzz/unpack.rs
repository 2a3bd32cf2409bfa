//! The archive extractor under fire: generated tar (plain and compressed)
//! and zip archives full of hostile entries, then blindly mutated.
//!
//! Properties checked after every case, whatever the outcome:
//! - nothing outside the destination was created, changed or removed (a
//!   canary directory beside it is compared before and after);
//! - nothing in the destination is a device, fifo or socket, or has a
//!   setuid, setgid or sticky bit; files are 0444 or 0555;
//! - every hard link inside has all its names inside;
//!
//! and when the extraction succeeded:
//! - no symlink leads outside the destination, following the symlinks
//!   actually on disk (for source archives; root filesystem layers may hold
//!   absolute links, which resolve inside the sandbox);
//! - the manifest the extractor returns is exactly what a fresh scan of
//!   the disk finds;
//! - a compressed archive gives the same result as the same tar
//!   uncompressed;
//!
//! and through the store (`unpack`): a refused archive leaves nothing behind
//! (no unpacked tree, no metadata, no temp files); an accepted one is a
//! read-only tree whose digest the metadata states.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hermit_store::tree::{self, Manifest};
use hermit_store::unpack::{
    extract_tar, extract_tar_stream, extract_zip, Compression, ExtractOptions,
};
use hermit_store::{unpack, ArchiveFormat, Digest, Store, UnpackOptions};
use proptest::prelude::*;

use crate::common::{mutate, mutations, run, Mutation};

/// Stands for the absolute path of the canary directory beside the
/// destination, substituted when the archive is written.
const OUT: &str = "@OUT";

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Char,
    Block,
    Fifo,
    /// Any other type flag, with a few data bytes.
    Other(u8),
    /// A header that claims `size` bytes, followed by far fewer.
    Huge(u64),
}

/// How an entry's name is written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NameEnc {
    /// In the 100-byte header field (cut there).
    Plain,
    /// A GNU `././@LongLink` entry before it.
    Gnu,
    /// A PAX extended header before it.
    Pax,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    enc: NameEnc,
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "lnk", "d", "x.txt"]).prop_map(str::to_string),
        2 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(String::new()),
        1 => Just(".wh.a".to_string()),
        1 => Just(".wh..wh..opq".to_string()),
        1 => (90usize..300).prop_map(|n| "n".repeat(n)),
    ]
}

/// Paths that collide often (so later entries meet earlier ones), with
/// `..`, absolute paths and the canary's own absolute path among them.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(component(), 1..4).prop_map(|c| c.join("/")),
        1 => prop::collection::vec(component(), 1..3).prop_map(|c| format!("/{}", c.join("/"))),
        1 => Just(format!("{OUT}/canary")),
        1 => Just("../out/canary".to_string()),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0o644),
        Just(0o755),
        Just(0o4755),
        Just(0o6777),
        Just(0o1777),
        Just(0),
        (0u32..0o10000),
        any::<u32>(),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Kind::File),
        3 => Just(Kind::Dir),
        4 => path().prop_map(Kind::Symlink),
        2 => path().prop_map(Kind::Hardlink),
        1 => Just(Kind::Char),
        1 => Just(Kind::Block),
        1 => Just(Kind::Fifo),
        1 => any::<u8>().prop_map(Kind::Other),
        1 => prop_oneof![Just(1u64 << 33), Just(u64::MAX >> 1), 512u64..1 << 20].prop_map(Kind::Huge),
    ]
}

pub(crate) fn entry() -> impl Strategy<Value = Entry> {
    let enc = prop_oneof![
        6 => Just(NameEnc::Plain),
        1 => Just(NameEnc::Gnu),
        1 => Just(NameEnc::Pax),
    ];
    (path(), kind(), mode(), enc).prop_map(|(path, kind, mode, enc)| Entry {
        path,
        kind,
        mode,
        enc,
    })
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(entry(), 1..10)
}

// ---- writing archives byte by byte (the tar crate refuses hostile names) ----

fn block(name: &[u8], link: &[u8], flag: u8, size: u64, mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        old.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::new(flag));
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> key=value\n", where len counts itself.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn subst(s: &str, out_dir: &Path) -> Vec<u8> {
    s.replace(OUT, &out_dir.display().to_string()).into_bytes()
}

pub(crate) fn tar_bytes(entries: &[Entry], out_dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let name = subst(&e.path, out_dir);
        let link = match &e.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => subst(t, out_dir),
            _ => Vec::new(),
        };
        match e.enc {
            NameEnc::Plain => {}
            NameEnc::Gnu => {
                for (flag, v) in [(b'L', &name), (b'K', &link)] {
                    if v.is_empty() {
                        continue;
                    }
                    out.extend(block(
                        b"././@LongLink",
                        b"",
                        flag,
                        v.len() as u64 + 1,
                        0o644,
                    ));
                    out.extend_from_slice(v);
                    out.push(0);
                    pad(&mut out);
                }
            }
            NameEnc::Pax => {
                let mut data = pax_record("path", &name);
                if !link.is_empty() {
                    data.extend(pax_record("linkpath", &link));
                }
                out.extend(block(b"pax", b"", b'x', data.len() as u64, 0o644));
                out.extend(data);
                pad(&mut out);
            }
        }
        let (flag, data): (u8, &[u8]) = match &e.kind {
            Kind::File(d) => (b'0', d),
            Kind::Dir => (b'5', b""),
            Kind::Symlink(_) => (b'2', b""),
            Kind::Hardlink(_) => (b'1', b""),
            Kind::Char => (b'3', b""),
            Kind::Block => (b'4', b""),
            Kind::Fifo => (b'6', b""),
            Kind::Other(f) => (*f, b"other"),
            Kind::Huge(size) => {
                out.extend(block(&name, &link, b'0', *size, e.mode));
                out.extend_from_slice(&[b'h'; 700]);
                pad(&mut out);
                continue;
            }
        };
        out.extend(block(&name, &link, flag, data.len() as u64, e.mode));
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub(crate) fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

fn zip_bytes(entries: &[Entry], out_dir: &Path) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for e in entries {
        let name = String::from_utf8_lossy(&subst(&e.path, out_dir)).into_owned();
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(e.mode);
        // The writer refuses some names; a refused entry is simply left out.
        let _ = match &e.kind {
            Kind::File(d) => w
                .start_file(name, opts)
                .and_then(|()| w.write_all(d).map_err(zip::result::ZipError::Io)),
            Kind::Dir => w.add_directory(name, opts),
            Kind::Symlink(t) | Kind::Hardlink(t) => {
                let t = String::from_utf8_lossy(&subst(t, out_dir)).into_owned();
                w.add_symlink(name, t, opts)
            }
            _ => w.start_file(name, opts),
        };
    }
    w.finish().map(Cursor::into_inner).unwrap_or_default()
}

// ---- looking at the result ----

/// What a path looks like, for before/after comparison.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    nlink: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    data: Vec<u8>,
}

/// Every path below `dir` (not following symlinks) and how it looks.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                fs::read(&p).unwrap_or_default()
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p,
                Seen {
                    mode: m.mode(),
                    nlink: m.nlink(),
                    ino: m.ino(),
                    len: m.len(),
                    mtime: m.mtime(),
                    data,
                },
            );
        }
    }
    out
}

/// Where a symlink at `link` (inside `root`) leads, following the symlinks
/// really on disk; `None` if it leads above `root` (or to an absolute
/// path), `Some(true)` if it stays inside. Loops count as inside.
fn stays_inside(root: &Path, link: &Path) -> bool {
    let rel = link.strip_prefix(root).unwrap();
    let mut current: Vec<Vec<u8>> = rel
        .parent()
        .map(|p| p.iter().map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>())
        .unwrap_or_default();
    let target = fs::read_link(link).unwrap();
    let mut pending: Vec<Vec<u8>> = target
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect();
    if target.as_os_str().as_bytes().first() == Some(&b'/') {
        return false;
    }
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_slice() {
            b"" | b"." => {}
            b".." => {
                if current.pop().is_none() {
                    return false;
                }
            }
            _ => {
                current.push(c);
                let mut p = root.to_path_buf();
                for c in &current {
                    p.push(std::ffi::OsStr::from_bytes(c));
                }
                if let Ok(t) = fs::read_link(&p) {
                    hops += 1;
                    if hops > 40 {
                        return true;
                    }
                    let t = t.as_os_str().as_bytes().to_vec();
                    if t.first() == Some(&b'/') {
                        return false;
                    }
                    current.pop();
                    pending.extend(t.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
                }
            }
        }
    }
    true
}

/// A destination directory with a canary directory beside it.
struct Arena {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dest: PathBuf,
    out: PathBuf,
    before: BTreeMap<PathBuf, Seen>,
}

impl Arena {
    fn new() -> Arena {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let dest = root.join("dest");
        let out = root.join("out");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("canary"), b"canary").unwrap();
        fs::write(out.join("sub/canary"), b"canary").unwrap();
        let before = snapshot(&out);
        Arena {
            _tmp: tmp,
            root,
            dest,
            out,
            before,
        }
    }

    /// The properties that hold whatever the extraction's outcome.
    fn check_always(&self) -> Result<(), TestCaseError> {
        let names: Vec<_> = fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        prop_assert_eq!(
            names.len(),
            2,
            "something appeared beside dest: {:?}",
            names
        );
        let after = snapshot(&self.out);
        prop_assert!(self.before == after, "the canary changed: {:#?}", after);
        let inside = snapshot(&self.dest);
        let mut links: BTreeMap<u64, u64> = BTreeMap::new();
        for (p, s) in &inside {
            let ft = fs::symlink_metadata(p).unwrap().file_type();
            prop_assert!(
                !(ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket()),
                "special file {}",
                p.display()
            );
            if !ft.is_symlink() {
                prop_assert_eq!(s.mode & 0o7000, 0, "{} has mode {:o}", p.display(), s.mode);
            }
            if ft.is_file() {
                let perm = s.mode & 0o7777;
                prop_assert!(
                    perm == 0o444 || perm == 0o555,
                    "{} has mode {:o}",
                    p.display(),
                    perm
                );
                *links.entry(s.ino).or_default() += 1;
                prop_assert!(s.nlink <= 2 * inside.len() as u64);
            }
        }
        for s in inside.values() {
            if s.mode & 0o170000 == 0o100000 {
                prop_assert_eq!(
                    links[&s.ino],
                    s.nlink,
                    "a hard link has names outside the destination"
                );
            }
        }
        Ok(())
    }

    /// The properties of a successful extraction.
    fn check_ok(&self, manifest: Option<&Manifest>, rootfs: bool) -> Result<(), TestCaseError> {
        if !rootfs {
            for p in snapshot(&self.dest).keys() {
                if fs::symlink_metadata(p).unwrap().file_type().is_symlink() {
                    prop_assert!(
                        stays_inside(&self.dest, p),
                        "symlink {} -> {:?} leads outside",
                        p.display(),
                        fs::read_link(p).unwrap()
                    );
                }
            }
        }
        if let Some(m) = manifest {
            let disk = tree::scan(&self.dest).unwrap();
            prop_assert!(
                *m == disk,
                "manifest differs from disk:\n{:?}\n{:?}",
                m.entries,
                disk.entries
            );
        }
        Ok(())
    }
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        3 => Just(Compression::None),
        1 => Just(Compression::Gzip),
        1 => Just(Compression::Xz),
        1 => Just(Compression::Bzip2),
        1 => Just(Compression::Zstd),
    ]
}

#[derive(Debug, Clone)]
struct TarCase {
    entries: Vec<Entry>,
    compression: Compression,
    strip: u32,
    /// Applied to the tar before compression.
    before: Vec<Mutation>,
    /// Applied to the compressed bytes.
    after: Vec<Mutation>,
    /// A root-filesystem layer (whiteouts, absolute links, devices skipped)
    /// on top of a first layer, as `oci::rootfs` extracts images.
    rootfs: Option<Vec<Entry>>,
}

fn tar_case() -> impl Strategy<Value = TarCase> {
    (
        entries(),
        compression(),
        prop_oneof![4 => Just(0u32), 1 => 0u32..3],
        mutations(),
        prop_oneof![4 => Just(Vec::new()), 1 => mutations()],
        prop_oneof![3 => Just(None), 1 => entries().prop_map(Some)],
    )
        .prop_map(
            |(entries, compression, strip, before, after, rootfs)| TarCase {
                entries,
                compression,
                strip,
                before,
                after,
                rootfs,
            },
        )
}

fn check_tar(case: TarCase) -> Result<(), TestCaseError> {
    let arena = Arena::new();
    let rootfs = case.rootfs.is_some();
    let opts = ExtractOptions {
        strip_components: case.strip,
        oci_whiteouts: rootfs,
        rootfs_symlinks: rootfs,
        skip_special: rootfs,
    };
    if let Some(first) = &case.rootfs {
        // The lower layer; its outcome does not matter, only what follows.
        let lower = tar_bytes(first, &arena.out);
        let _ = extract_tar(&lower[..], &arena.dest, &opts);
        arena.check_always()?;
    }
    let plain = mutate(tar_bytes(&case.entries, &arena.out), &case.before);
    let packed = mutate(compress(&plain, case.compression), &case.after);
    let r = extract_tar_stream(&packed[..], case.compression, &arena.dest, &opts);
    arena.check_always()?;
    match &r {
        Ok(x) => arena.check_ok(x.manifest.as_ref(), rootfs)?,
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    // The same tar, uncompressed, gives the same outcome.
    if case.compression != Compression::None && case.after.is_empty() && !rootfs {
        let again = Arena::new();
        let r2 = extract_tar(&plain[..], &again.dest, &opts);
        again.check_always()?;
        match (&r, &r2) {
            (Ok(a), Ok(b)) => prop_assert!(a.manifest == b.manifest),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(
                false,
                "compressed and plain disagree: {:?} vs {:?}",
                r.as_ref().map(|_| ()),
                r2.as_ref().map(|_| ())
            ),
        }
    }
    Ok(())
}

#[test]
fn fuzz_unpack_tar() {
    run("unpack_tar", file!(), 192, tar_case(), check_tar);
}

#[test]
fn fuzz_unpack_zip() {
    let strategy = (
        entries(),
        mutations(),
        prop_oneof![3 => Just(0u32), 1 => 0u32..3],
    );
    run(
        "unpack_zip",
        file!(),
        128,
        strategy,
        |(entries, ms, strip)| {
            let arena = Arena::new();
            let bytes = mutate(zip_bytes(&entries, &arena.out), &ms);
            let opts = ExtractOptions {
                strip_components: strip,
                ..ExtractOptions::default()
            };
            let r = extract_zip(Cursor::new(bytes), &arena.dest, &opts);
            arena.check_always()?;
            if let Ok(x) = &r {
                arena.check_ok(x.manifest.as_ref(), false)?;
            }
            Ok(())
        },
    );
}

/// Random bytes behind each format's magic number: the decoders and the tar
/// and zip readers must fail cleanly.
#[test]
fn fuzz_unpack_random_bytes() {
    let strategy = (
        prop::sample::select(ArchiveFormat::ALL.to_vec()),
        prop::collection::vec(any::<u8>(), 0..2048),
    );
    run(
        "unpack_random_bytes",
        file!(),
        128,
        strategy,
        |(format, tail)| {
            let arena = Arena::new();
            let magic: &[u8] = match format {
                ArchiveFormat::Tar => b"",
                ArchiveFormat::TarGz => &[0x1f, 0x8b, 8, 0],
                ArchiveFormat::TarXz => &[0xfd, b'7', b'z', b'X', b'Z', 0],
                ArchiveFormat::TarBz2 => b"BZh9",
                ArchiveFormat::TarZst => &[0x28, 0xb5, 0x2f, 0xfd],
                ArchiveFormat::Zip => b"PK\x03\x04",
            };
            let mut bytes = magic.to_vec();
            bytes.extend(tail);
            let r = match format.compression() {
                Some(c) => {
                    extract_tar_stream(&bytes[..], c, &arena.dest, &ExtractOptions::default())
                }
                None => extract_zip(Cursor::new(bytes), &arena.dest, &ExtractOptions::default()),
            };
            arena.check_always()?;
            if let Ok(x) = &r {
                arena.check_ok(x.manifest.as_ref(), false)?;
            }
            Ok(())
        },
    );
}

/// Every file below `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir)
        .into_keys()
        .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
        .collect()
}

/// Through the store: detect or name the format, unpack, and check that a
/// refused archive leaves nothing and an accepted one is complete.
#[test]
fn fuzz_unpack_store() {
    let strategy = (
        entries(),
        compression(),
        mutations(),
        any::<bool>(),
        any::<bool>(),
    );
    run(
        "unpack_store",
        file!(),
        64,
        strategy,
        |(entries, c, ms, zip, named)| {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(tmp.path().join("store")).unwrap();
            let out = tmp.path().join("out");
            fs::create_dir(&out).unwrap();
            fs::write(out.join("canary"), b"canary").unwrap();
            let before = snapshot(&out);
            let (bytes, format) = if zip {
                (mutate(zip_bytes(&entries, &out), &ms), ArchiveFormat::Zip)
            } else {
                let f = match c {
                    Compression::None => ArchiveFormat::Tar,
                    Compression::Gzip => ArchiveFormat::TarGz,
                    Compression::Xz => ArchiveFormat::TarXz,
                    Compression::Bzip2 => ArchiveFormat::TarBz2,
                    Compression::Zstd => ArchiveFormat::TarZst,
                };
                (mutate(compress(&tar_bytes(&entries, &out), c), &ms), f)
            };
            let archive = store
                .add_reader(&mut &bytes[..], "archive", None, None)
                .unwrap();
            let blobs = listing(&store.base().join("blobs"));
            let opts = UnpackOptions {
                format: named.then_some(format),
                strip_components: 0,
            };
            let r = unpack(&store, &archive, &opts);
            prop_assert!(before == snapshot(&out), "the canary changed");
            prop_assert_eq!(&blobs, &listing(&store.base().join("blobs")));
            let unpacked = listing(&store.base().join("unpacked"));
            match r {
                Ok(dest) => {
                    let key = dest.file_name().unwrap().to_str().unwrap().to_string();
                    let meta =
                        hermit_store::unpack::read_meta(&store, &Digest::from_hex(&key).unwrap())
                            .unwrap();
                    prop_assert_eq!(meta.archive, archive);
                    prop_assert_eq!(tree::hash_tree(&dest).unwrap(), meta.tree);
                    let m = fs::metadata(&dest).unwrap();
                    prop_assert_eq!(m.mode() & 0o777, 0o555);
                    for p in snapshot(&dest).keys() {
                        let m = fs::symlink_metadata(p).unwrap();
                        if m.is_dir() {
                            prop_assert_eq!(m.mode() & 0o7777, 0o555);
                        } else if m.is_file() {
                            prop_assert!(matches!(m.mode() & 0o7777, 0o444 | 0o555));
                        } else {
                            prop_assert!(m.file_type().is_symlink());
                            prop_assert!(stays_inside(&dest, p));
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(
                        msg.contains(&archive.to_string())
                            || msg.contains("cannot tell the format"),
                        "the error does not name the archive: {}",
                        msg
                    );
                    prop_assert!(unpacked.is_empty(), "left behind: {:?}", unpacked);
                    let mut tmp_left = listing(store.tmp_dir());
                    tmp_left.retain(|p| p != Path::new(".lock"));
                    prop_assert!(tmp_left.is_empty(), "temp files left: {:?}", tmp_left);
                }
            }
            Ok(())
        },
    );
}
