//! Local `path` sources: the directory a spec names (inside its project),
//! the files its `include`/`exclude` select, and their canonical tar — the
//! same serialisation as outputs — stored as a blob and named by digest.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hermit_store::{Digest, Store};

use crate::exit::Exit;
use crate::output;
use crate::spec::{Source, SourceKind, Spec};

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

/// Stores the selected files of a local directory as a canonical tar blob
/// (the same serialisation as outputs) and returns its digest.
pub fn local_tree_blob(
    store: &Store,
    root: &Path,
    include: &[String],
    exclude: &[String],
    sde: u64,
) -> anyhow::Result<Digest> {
    // Opened once, without following a symlink in its place; everything
    // below is reached through this descriptor (see `copy_selected`).
    let dir = open_dir_no_follow(root).map_err(|e| {
        Exit::user(format!(
            "{} cannot be read as a directory: {e}",
            root.display()
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
    let staging = hermit_store::store::temp_dir(store.tmp_dir())?;
    let copy = staging.join("tree");
    fs::create_dir(&copy).with_context(|| format!("creating {}", copy.display()))?;
    copy_selected(&dir, root, &copy, "", include, exclude)?;
    let mut writer = store.blob_writer()?;
    output::normalize(&copy, &output::Options::new(sde), Some(&mut writer))
        .with_context(|| format!("serialising {}", root.display()))?;
    let digest = writer.commit(&root.display().to_string(), None, None)?;
    hermit_store::store::remove_tree(&staging)
        .with_context(|| format!("removing {}", staging.display()))?;
    Ok(digest)
}

/// Opens a directory, refusing a symlink in its place.
fn open_dir_no_follow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// The `/proc/self/fd/N` path of an open directory: names below it are
/// looked up in that very directory, whatever happens to its path.
fn fd_path(dir: &fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Copies the selected entries of the open directory `src` (shown as
/// `shown` in messages) into `dst`. Directories and files are opened
/// through their parent's descriptor without following symlinks, so an
/// entry swapped for a symlink while the tree is read is refused, never
/// followed out of the project.
fn copy_selected(
    src: &fs::File,
    shown: &Path,
    dst: &Path,
    rel: &str,
    include: &[String],
    exclude: &[String],
) -> anyhow::Result<()> {
    let here = fd_path(src);
    let mut entries: Vec<_> = fs::read_dir(&here)
        .with_context(|| format!("listing {}", shown.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", shown.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: file names must be UTF-8", shown.join(&name).display());
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let shown_e = shown.join(name);
        let t = e
            .file_type()
            .with_context(|| format!("reading {}", shown_e.display()))?;
        let included = include.is_empty() || include.iter().any(|g| glob_match(g, &path));
        let excluded = exclude.iter().any(|g| glob_match(g, &path))
            || (include.is_empty() && DEFAULT_EXCLUDES.contains(&path.as_str()));
        if excluded {
            continue;
        }
        let to = dst.join(name);
        if t.is_dir() {
            fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
            // Everything below an included directory is included.
            let sub: &[String] = if included && !include.is_empty() {
                &[]
            } else {
                include
            };
            let child = open_dir_no_follow(&here.join(name))
                .with_context(|| format!("opening {}", shown_e.display()))?;
            copy_selected(&child, &shown_e, &to, &path, sub, exclude)?;
            let empty = fs::read_dir(&to)
                .with_context(|| format!("listing {}", to.display()))?
                .next()
                .is_none();
            if empty && !included {
                fs::remove_dir(&to).with_context(|| format!("removing {}", to.display()))?;
            }
        } else if included {
            if t.is_symlink() {
                let target = fs::read_link(here.join(name))
                    .with_context(|| format!("reading link {}", shown_e.display()))?;
                check_local_symlink(&path, &target)?;
                std::os::unix::fs::symlink(&target, &to)
                    .with_context(|| format!("creating {}", to.display()))?;
            } else {
                copy_no_follow(&here.join(name), &shown_e, &to)?;
            }
        }
    }
    Ok(())
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

/// Copies a regular file, refusing to follow a symlink put in its place
/// after the directory was listed.
fn copy_no_follow(from: &Path, shown: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .with_context(|| format!("opening {}", shown.display()))?;
    let meta = src
        .metadata()
        .with_context(|| format!("reading {}", shown.display()))?;
    if !meta.is_file() {
        return Err(Exit::user(format!(
            "{} is not a regular file; local sources hold files, directories and symlinks only",
            shown.display()
        ))
        .into());
    }
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.permissions().mode() & 0o777)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying {}", shown.display()))?;
    Ok(())
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
