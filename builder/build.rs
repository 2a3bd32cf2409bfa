//! Stamps the binary with the commit it is built from.
//!
//! Sets `HERMIT_VERSION` to `<package version> (<commit>)`, the string
//! `hermit --version` prints and every record states as `hermit.version`.
//! The commit (its first 12 hex digits) comes from, in order:
//!
//! 1. `HERMIT_COMMIT` in the environment (for builds from a source tree
//!    without `.git`, such as the flake's: it passes the flake's revision);
//! 2. git, when this package sits in the top level of a git checkout or
//!    worktree of hermit (not when hermit's sources are inside some other
//!    project's repository);
//! 3. `.cargo_vcs_info.json`, which `cargo package` writes into a crate
//!    tarball;
//!
//! else it is `unknown commit`. A tree with uncommitted changes is not
//! marked: the stamp names the commit the tree started from.
//!
//! The stamp depends only on the commit, never on the time or the path of
//! the build, so the binary stays reproducible.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-env-changed=HERMIT_COMMIT");
    let commit = from_env()
        .or_else(|| from_git(&manifest))
        .or_else(|| from_vcs_info(&manifest))
        .unwrap_or_else(|| "unknown commit".to_string());
    println!("cargo:rustc-env=HERMIT_VERSION={version} ({commit})");
}

/// `HERMIT_COMMIT`: a hex commit id (shortened to 12 digits) or another
/// short label made of `[A-Za-z0-9._+-]` (e.g. a flake's `abc1234-dirty`).
fn from_env() -> Option<String> {
    let v = std::env::var("HERMIT_COMMIT").ok()?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
    {
        panic!(
            "HERMIT_COMMIT={v:?} is not a commit id: use at most 64 characters out of [A-Za-z0-9._+-]"
        );
    }
    Some(shorten(v))
}

/// The first 12 digits of a full hex commit id; anything else unchanged.
fn shorten(id: &str) -> String {
    if id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        id[..12].to_ascii_lowercase()
    } else {
        id.to_string()
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn from_git(manifest: &Path) -> Option<String> {
    // This package is `builder/` of the workspace: the checkout's top level
    // must be the workspace's root, or the commit is someone else's.
    let root = manifest.parent()?.canonicalize().ok()?;
    let top = PathBuf::from(git(manifest, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != root {
        return None;
    }
    let head = git(manifest, &["rev-parse", "--verify", "HEAD^{commit}"])?;
    // Build again when HEAD moves: HEAD itself (a checkout), the branch it
    // names (a commit), packed refs. Only existing files: cargo would build
    // again every time for a missing one.
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            manifest.join(p)
        }
    };
    let git_dir = abs(git(manifest, &["rev-parse", "--git-dir"])?);
    let common = abs(git(manifest, &["rev-parse", "--git-common-dir"])?);
    let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(manifest, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(common.join(branch));
    }
    for p in watch.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Some(shorten(&head))
}

/// `{"git": {"sha1": "<40 hex>"}, …}`, written by `cargo package`.
fn from_vcs_info(manifest: &Path) -> Option<String> {
    let path = manifest.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&path).ok()?;
    println!("cargo:rerun-if-changed={}", path.display());
    let after = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let start = after.find('"')? + 1;
    let id: String = after[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    (id.len() == 40).then(|| shorten(&id))
}
