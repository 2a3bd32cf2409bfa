//! Generators of hostile archives (tar entries with every trick, written
//! byte by byte; the same entries as zip) and the checks of what an
//! extraction left on disk. Shared by the extractor targets, the OCI
//! targets and the end-to-end fuzz test (`tests/e2e/fuzz_unpack.rs`).
#![allow(dead_code)] // not every includer uses every helper

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hermit_store::unpack::Compression;
use proptest::prelude::*;

/// Stands for the absolute path of the canary directory beside the
/// destination, substituted when the archive is written.
pub const OUT: &str = "@OUT";

#[derive(Debug, Clone)]
pub enum Kind {
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
pub enum NameEnc {
    /// In the 100-byte header field (cut there).
    Plain,
    /// A GNU `././@LongLink` entry before it.
    Gnu,
    /// A PAX extended header before it.
    Pax,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub enc: NameEnc,
}

pub fn component() -> impl Strategy<Value = String> {
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
pub fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(component(), 1..4).prop_map(|c| c.join("/")),
        1 => prop::collection::vec(component(), 1..3).prop_map(|c| format!("/{}", c.join("/"))),
        1 => Just(format!("{OUT}/canary")),
        1 => Just("../out/canary".to_string()),
    ]
}

pub fn mode() -> impl Strategy<Value = u32> {
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

pub fn kind() -> impl Strategy<Value = Kind> {
    // Specials, unknown types and huge sizes end most extractions at once,
    // so they are rarer than the entries that build up a tree.
    prop_oneof![
        10 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Kind::File),
        4 => Just(Kind::Dir),
        5 => path().prop_map(Kind::Symlink),
        3 => path().prop_map(Kind::Hardlink),
        1 => prop_oneof![Just(Kind::Char), Just(Kind::Block), Just(Kind::Fifo)],
        1 => any::<u8>().prop_map(Kind::Other),
        1 => prop_oneof![Just(1u64 << 33), Just(u64::MAX >> 1), 512u64..1 << 20].prop_map(Kind::Huge),
    ]
}

pub fn entry() -> impl Strategy<Value = Entry> {
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

pub fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let plain = prop::collection::vec(entry(), 1..10);
    // A symlink, then an entry below it: written through the link?
    let through = (
        prop::collection::vec(entry(), 0..6),
        any::<prop::sample::Index>(),
        path(),
        prop::sample::select(vec!["lnk", "a/lnk", "d"]),
        component(),
        entry(),
    )
        .prop_map(|(mut es, at, target, link, below, mut e)| {
            let i = at.index(es.len() + 1);
            e.path = format!("{link}/{below}");
            es.insert(
                i,
                Entry {
                    path: link.to_string(),
                    kind: Kind::Symlink(target),
                    mode: 0o777,
                    enc: NameEnc::Plain,
                },
            );
            es.insert(i + 1, e);
            es
        });
    prop_oneof![3 => plain, 1 => through]
}

// ---- writing archives byte by byte (the tar crate refuses hostile names) ----

pub fn block(name: &[u8], link: &[u8], flag: u8, size: u64, mode: u32) -> Vec<u8> {
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

pub fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
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

pub fn subst(s: &str, out_dir: &Path) -> Vec<u8> {
    s.replace(OUT, &out_dir.display().to_string()).into_bytes()
}

pub fn tar_bytes(entries: &[Entry], out_dir: &Path) -> Vec<u8> {
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

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
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

pub fn zip_bytes(entries: &[Entry], out_dir: &Path) -> Vec<u8> {
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
pub struct Seen {
    pub mode: u32,
    pub nlink: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime: i64,
    pub data: Vec<u8>,
}

/// Every path below `dir` (not following symlinks) and how it looks.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Seen> {
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
pub fn stays_inside(root: &Path, link: &Path) -> bool {
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

pub fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        3 => Just(Compression::None),
        1 => Just(Compression::Gzip),
        1 => Just(Compression::Xz),
        1 => Just(Compression::Bzip2),
        1 => Just(Compression::Zstd),
    ]
}
