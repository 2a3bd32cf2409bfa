//! `[build] workdir`: `/build` starts as a writable view of a source.
//!
//! The source's tree in the store stays as it is (read-only, shared); the
//! sandbox mounts an overlayfs at `/build` with that tree as the lower layer
//! and the build's own `build/` staging directory as the upper one, which
//! receives every change — nothing is copied up front.
//!
//! Store trees have directories 0555 and files 0444/0555. overlayfs takes
//! a merged directory's owner, mode and times from the upper layer when it
//! has that directory, so before the build the upper layer gets a skeleton:
//! every directory of the source, mode 0755, owned by the caller (the build
//! user inside) with the source directory's mtime. The build can then create,
//! rename and delete entries anywhere in `/build`; a file keeps its read-only
//! mode (its owner, the build user, may `chmod u+w` it, which copies that one
//! file up). What `/build` shows depends only on the source tree: the modes
//! are fixed, the times are the tree's, and the owner is the build user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hermit_sandbox::Mount;

use crate::exit::Exit;
use crate::spec::Workdir;

/// The mount at `/build` (`dst`): the writable `build_dir` itself, or, with
/// a workdir, an overlay of that source over `build_dir` (its work directory
/// beside it, `<build_dir>.work`).
pub fn build_mount(
    workdir: Option<&Workdir>,
    sources: &[(String, PathBuf)],
    build_dir: &Path,
    dst: &Path,
) -> anyhow::Result<Mount> {
    let Some(w) = workdir else {
        return Ok(Mount::Bind {
            src: build_dir.to_path_buf(),
            dst: dst.to_path_buf(),
            writable: true,
        });
    };
    let Some((_, root)) = sources.iter().find(|(name, _)| *name == w.source) else {
        anyhow::bail!(
            "internal error: workdir source {:?} is not planned",
            w.source
        );
    };
    overlay(w, root, build_dir, &work_dir(build_dir), dst)
}

/// The overlay's work directory for `build_dir`.
pub fn work_dir(build_dir: &Path) -> PathBuf {
    build_dir.with_extension("work")
}

/// Prepares the overlay of `source_root` (the source's host path) for
/// `/build` at `dst`: the upper layer is `upper` (an empty directory, later
/// watched by the disk limit), the work directory `work` (created here, on
/// the same filesystem).
pub fn overlay(
    w: &Workdir,
    source_root: &Path,
    upper: &Path,
    work: &Path,
    dst: &Path,
) -> anyhow::Result<Mount> {
    let lower = lower_dir(w, source_root)?;
    skeleton(&lower, upper)?;
    fs::create_dir(work).with_context(|| format!("creating {}", work.display()))?;
    Ok(Mount::Overlay {
        lower,
        upper: upper.to_path_buf(),
        work: work.to_path_buf(),
        dst: dst.to_path_buf(),
    })
}

/// The overlay at `dst` again over an upper layer a build already wrote
/// (`hermit shell --failed`): the upper layer as the build left it, the
/// work directory `work` emptied (overlayfs's scratch, from a mount that
/// has ended).
pub fn reopen(
    w: &Workdir,
    source_root: &Path,
    upper: &Path,
    work: &Path,
    dst: &Path,
) -> anyhow::Result<Mount> {
    let lower = lower_dir(w, source_root)?;
    hermit_store::store::remove_tree(work)
        .with_context(|| format!("emptying {}", work.display()))?;
    fs::create_dir(work).with_context(|| format!("creating {}", work.display()))?;
    Ok(Mount::Overlay {
        lower,
        upper: upper.to_path_buf(),
        work: work.to_path_buf(),
        dst: dst.to_path_buf(),
    })
}

/// The source's directory `w.subdir`, reached without following a symlink
/// (a source's own symlinks must not lead the view out of the source).
fn lower_dir(w: &Workdir, source_root: &Path) -> anyhow::Result<PathBuf> {
    let mut dir = source_root.to_path_buf();
    let shown = |d: &str| {
        if d.is_empty() {
            w.source.clone()
        } else {
            format!("{}/{d}", w.source)
        }
    };
    let mut walked = String::new();
    let parts = std::iter::once("").chain(w.subdir.split('/').filter(|c| !c.is_empty()));
    for (i, part) in parts.enumerate() {
        if i > 0 {
            dir.push(part);
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
        }
        let meta = fs::symlink_metadata(&dir);
        if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
            let what = match meta {
                Ok(m) if m.file_type().is_symlink() => "is a symlink",
                Ok(_) => "is not a directory",
                Err(_) => "does not exist",
            };
            let parent = dir.parent().unwrap_or(source_root);
            let mut have: Vec<String> = fs::read_dir(parent)
                .map(|r| {
                    r.filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            have.sort();
            return Err(Exit::user(format!(
                "[build] workdir: /sources/{} {what}; workdir must name a directory of the source (directories there: {})",
                shown(&walked),
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            ))
            .into());
        }
    }
    Ok(dir)
}

/// Makes every directory of `lower` in `upper`: mode 0755, the lower
/// directory's mtime.
fn skeleton(lower: &Path, upper: &Path) -> anyhow::Result<()> {
    // Parents come before their children in `made`.
    let mut made = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let from = lower.join(&rel);
        let to = upper.join(&rel);
        if !rel.as_os_str().is_empty() {
            fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
        }
        for entry in fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))? {
            let entry = entry.with_context(|| format!("reading {}", from.display()))?;
            let ft = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if ft.is_dir() {
                stack.push(rel.join(entry.file_name()));
            }
        }
        made.push(rel);
    }
    // Modes and times last, children first: making an entry changes its
    // parent's mtime.
    for rel in made.iter().rev() {
        let (src, dst) = (lower.join(rel), upper.join(rel));
        let meta =
            fs::symlink_metadata(&src).with_context(|| format!("reading {}", src.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dst.display()))?;
        set_mtime(&dst, filetime_of(&meta))
            .with_context(|| format!("setting the mtime of {}", dst.display()))?;
    }
    Ok(())
}

fn filetime_of(meta: &fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime(), meta.mtime_nsec())
}

fn set_mtime(p: &Path, (secs, nsecs): (i64, i64)) -> nix::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(secs, nsecs);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn wd(subdir: &str) -> Workdir {
        Workdir {
            source: "src".into(),
            subdir: subdir.into(),
        }
    }

    #[test]
    fn skeleton_has_every_directory_writable_with_the_source_times() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("top/a/b")).unwrap();
        fs::create_dir_all(src.join("top/po")).unwrap();
        fs::write(src.join("top/po/x.po"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", src.join("top/etc")).unwrap();
        for d in ["top/a/b", "top/a", "top/po", "top"] {
            set_mtime(&src.join(d), (315532800, 0)).unwrap();
            fs::set_permissions(src.join(d), fs::Permissions::from_mode(0o555)).unwrap();
        }
        let upper = t.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let m = overlay(
            &wd("top"),
            &src,
            &upper,
            &t.path().join("work"),
            Path::new("/build"),
        )
        .unwrap();
        assert!(matches!(m, Mount::Overlay { ref lower, .. } if *lower == src.join("top")));
        for d in ["", "a", "a/b", "po"] {
            let meta = fs::symlink_metadata(upper.join(d)).unwrap();
            assert!(meta.is_dir(), "{d}");
            assert_eq!(meta.mode() & 0o7777, 0o755, "{d}");
            assert_eq!(meta.mtime(), 315532800, "{d}");
        }
        // Only directories: no files, and the symlink is not followed.
        assert!(!upper.join("po/x.po").exists());
        assert!(fs::symlink_metadata(upper.join("etc")).is_err());

        let e = overlay(
            &wd("top/etc"),
            &src,
            &t.path().join("u2"),
            &t.path().join("w2"),
            Path::new("/build"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/sources/src/top/etc is a symlink"), "{e}");
        let e = lower_dir(&wd("nope"), &src).unwrap_err().to_string();
        assert!(
            e.contains("does not exist") && e.contains("directories there: top"),
            "{e}"
        );
        for d in ["top/a/b", "top/a", "top/po", "top"] {
            fs::set_permissions(src.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}
