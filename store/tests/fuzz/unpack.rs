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
use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hermit_store::tree::{self, Manifest};
use hermit_store::unpack::{
    extract_tar, extract_tar_stream, extract_zip, Compression, ExtractOptions,
};
use hermit_store::{unpack, ArchiveFormat, Digest, Store, UnpackOptions};
use proptest::prelude::*;

use crate::archives::{
    compress, compression, entries, snapshot, stays_inside, tar_bytes, zip_bytes, Entry, Seen,
};
use crate::common::{mutate, mutations, run, Mutation};

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
