//! The extractor fuzzed end to end: generated hostile archives (the
//! generators of `store/tests/fuzz/archives.rs`) through the real
//! `hermit store add` and `hermit store unpack`, as root and as the
//! unprivileged test user. After every case: hermit exited 0 or 2 (no
//! panic, no signal), nothing beside the store changed (a canary directory
//! the caller owns sits next to it), no temp files are left, a refusal
//! names the archive and leaves nothing in `unpacked/`, and an accepted
//! tree is read-only, owned by the caller, free of setuid bits and special
//! files, with no symlink leading out. See docs/fuzzing.md.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use hermit_store::unpack::Compression;
use proptest::prelude::*;

use crate::fixtures::{both_users, chown, output_within, As};

#[path = "../../store/tests/fuzz/common.rs"]
mod common;

#[path = "../../store/tests/fuzz/archives.rs"]
mod archives;

fn check(
    who: As,
    entries: &[archives::Entry],
    c: Compression,
    ms: &[common::Mutation],
    zip: bool,
) -> Result<(), TestCaseError> {
    let s = who.scratch();
    let home = s.path().join("home");
    let out = s.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("canary"), b"canary").unwrap();
    chown(&out, who.uid(), who.gid());
    chown(&out.join("canary"), who.uid(), who.gid());
    let before = archives::snapshot(&out);
    let bytes = if zip {
        archives::zip_bytes(entries, &out)
    } else {
        archives::compress(&archives::tar_bytes(entries, &out), c)
    };
    let archive = s.path().join("archive");
    fs::write(&archive, common::mutate(bytes, ms)).unwrap();
    let hermit = |args: &[&str]| {
        let mut c = who.hermit();
        c.env("HERMIT_HOME", &home).args(args);
        output_within(&mut c, Duration::from_secs(60))
    };
    let o = hermit(&["store", "add", archive.to_str().unwrap()]);
    prop_assert!(o.status.success(), "store add: {:?}", o);
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = hermit(&["store", "unpack", &digest]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    prop_assert!(
        matches!(o.status.code(), Some(0 | 2)),
        "hermit store unpack exited {:?}: {}",
        o.status,
        err
    );
    prop_assert!(before == archives::snapshot(&out), "the canary changed");
    let mut beside: Vec<_> = fs::read_dir(s.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    beside.sort();
    prop_assert_eq!(beside, vec!["archive", "home", "out"]);
    let tmp_left = fs::read_dir(home.join("v1/tmp")).unwrap().count();
    prop_assert_eq!(tmp_left, 0, "temp files left");
    if o.status.success() {
        let tree = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        prop_assert!(
            tree.starts_with(home.join("v1/unpacked")),
            "{}",
            tree.display()
        );
        check_tree(who, &tree)?;
    } else {
        prop_assert!(
            err.contains(&digest),
            "the error does not name the archive: {}",
            err
        );
        let left = fs::read_dir(home.join("v1/unpacked")).unwrap().count();
        prop_assert_eq!(left, 0, "a refused archive left something in unpacked/");
    }
    Ok(())
}

fn check_tree(who: As, tree: &Path) -> Result<(), TestCaseError> {
    for (p, seen) in archives::snapshot(tree) {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        prop_assert!(
            !(ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket()),
            "special file {}",
            p.display()
        );
        prop_assert_eq!(m.uid(), who.uid(), "{} is not the caller's", p.display());
        if ft.is_symlink() {
            prop_assert!(
                archives::stays_inside(tree, &p),
                "{} leads outside",
                p.display()
            );
        } else if ft.is_dir() {
            prop_assert_eq!(seen.mode & 0o7777, 0o555, "{}", p.display());
        } else {
            prop_assert!(
                matches!(seen.mode & 0o7777, 0o444 | 0o555),
                "{} {:o}",
                p.display(),
                seen.mode
            );
        }
    }
    Ok(())
}

fn fuzz_unpack_cli(who: As) {
    let strategy = (
        archives::entries(),
        archives::compression(),
        common::mutations(),
        prop::bool::weighted(0.2),
    );
    let target = format!("e2e_unpack_{who:?}");
    common::run(&target, file!(), 12, strategy, |(entries, c, ms, zip)| {
        check(who, &entries, c, &ms, zip)
    });
}

both_users!(fuzz_unpack_cli);
