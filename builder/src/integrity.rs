//! Is a stored output still what its record says?
//!
//! `v1/outputs/<key>/` holds `out/` and `record.json`. It is intact when the
//! record parses and is consistent (its own digests and build key check
//! out), names the build key the directory is named by, and `out/`
//! serialises (the canonical tar of [`crate::output`], with the record's
//! SOURCE_DATE_EPOCH) to the record's `output.digest`. `hermit store verify`
//! checks every output this way, and every cache hit checks its output
//! before serving it: a corrupt one is rebuilt and replaced atomically
//! ([`replace_output`]), never served.
//!
//! What this cannot catch: someone with write access to the store who
//! changes an output *and* rewrites its record's `output.digest` and file
//! list to match. Records are not signed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use hermit_store::{Digest, Store};

use crate::output::{self, FileEntry};
use crate::record::{KeyInputs, Record};

/// Checks the output directory `dir` (`v1/outputs/<key>`). `Ok` carries its
/// record; `Err` says what is wrong, for "… is corrupt: <reason>".
pub fn check_output(dir: &Path) -> Result<Record, String> {
    let record = check_record(dir, None)?;
    check_content(dir, record)
}

/// The record of the output directory `dir`, checked: it parses, is
/// consistent, names the build key `dir` is named by, in an output format
/// this hermit can check.
fn check_record(dir: &Path, expected: Option<&KeyInputs<'_>>) -> Result<Record, String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = Digest::from_hex(&name).map_err(|_| "its name is not a build key".to_string())?;
    let record_path = dir.join("record.json");
    let text = fs::read_to_string(&record_path)
        .map_err(|e| format!("its record {} cannot be read: {e}", record_path.display()))?;
    let record =
        Record::parse_expecting(&text, "its record", expected).map_err(|e| e.to_string())?;
    if record.build_key != key {
        return Err(format!(
            "its record is the record of build key {}",
            record.build_key
        ));
    }
    if record.output.format != output::FORMAT {
        return Err(format!(
            "its record uses output format {}, which this hermit cannot check",
            record.output.format
        ));
    }
    Ok(record)
}

/// Re-hashes `dir/out` and compares it with `record`'s output digest.
fn check_content(dir: &Path, record: Record) -> Result<Record, String> {
    let out = dir.join("out");
    let opts = output::Options {
        source_date_epoch: record.environment.source_date_epoch,
        symlinks: output::SymlinkPolicy::Verbatim,
        apply: false,
    };
    let found = output::normalize(&out, &opts, None)
        .map_err(|e| format!("{} cannot be read as an output: {e}", out.display()))?;
    if found.digest != record.output.digest {
        return Err(format!(
            "out/ hashes to {}, but the record says {} ({})",
            found.digest,
            record.output.digest,
            differences(&record.output.files, &found.files)
        ));
    }
    Ok(record)
}

/// The check of a cache hit: [`check_output`], except that an output whose
/// stat fingerprint is the one recorded when it last passed that check is
/// not re-hashed.
///
/// The fingerprint (path, type, mode, size, inode, mtime and ctime of every
/// entry, [`hermit_store::integrity::fingerprint`]) is kept in
/// `v1/cache/outputs/<key>`. Any change made through the filesystem moves
/// a ctime, which no caller can set back, so a changed output always gets
/// the full check; silent disk corruption does not, and `hermit store
/// verify` re-hashes everything. This is the policy toolchain root
/// filesystems already follow. A fingerprint is recorded only when the
/// output did not change while it was hashed and every entry's ctime is at
/// least [`SETTLED_SECS`](hermit_store::store::SETTLED_SECS) older than the
/// check (a change within the same timestamp tick could otherwise keep a
/// fingerprint). A missing, unreadable or foreign file only means the full
/// check; writing it is best effort.
///
/// `expected`: the key inputs of the plan looking the output up, if any
/// (see [`Record::parse_expecting`]).
pub fn check_output_quick(
    store: &Store,
    dir: &Path,
    expected: Option<&KeyInputs<'_>>,
) -> Result<Record, String> {
    use hermit_store::integrity::fingerprint;
    let out = dir.join("out");
    let saved = dir
        .file_name()
        .map(|n| store.base().join("cache/outputs").join(n));
    if let Some(saved) = &saved {
        if let (Ok(text), Ok(now)) = (fs::read_to_string(saved), fingerprint(&out)) {
            if text.trim() == now.to_string() {
                return check_record(dir, expected);
            }
        }
    }
    let started = std::time::SystemTime::now();
    let before = fingerprint(&out).ok();
    let record = check_content(dir, check_record(dir, expected)?)?;
    if let (Some(saved), Some(before)) = (saved, before) {
        if fingerprint(&out).ok() == Some(before) && settled(&out, started) {
            let _ = fs::create_dir_all(store.base().join("cache/outputs")).and_then(|()| {
                hermit_store::store::write_small_atomic(
                    store.tmp_dir(),
                    &saved,
                    format!("{before}\n").as_bytes(),
                )
                .map_err(std::io::Error::other)
            });
        }
    }
    Ok(record)
}

/// Whether every entry below `root` last changed (ctime) at least
/// `SETTLED_SECS` before `now`.
fn settled(root: &Path, now: std::time::SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    let limit =
        (now.as_nanos() as i128) - i128::from(hermit_store::store::SETTLED_SECS) * 1_000_000_000;
    fn walk(dir: &Path, limit: i128) -> bool {
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        for e in entries {
            let Ok(e) = e else { return false };
            let Ok(m) = e.metadata() else { return false };
            let ctime = i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec());
            if ctime >= limit || (m.is_dir() && !walk(&e.path(), limit)) {
                return false;
            }
        }
        true
    }
    walk(root, limit)
}

/// The first few entries that differ between the recorded and the found
/// file lists, e.g. "bin/note: content changed, extra: not in the record".
fn differences(recorded: &[FileEntry], found: &[FileEntry]) -> String {
    let index = |v: &[FileEntry]| -> BTreeMap<String, FileEntry> {
        v.iter().map(|f| (f.path.clone(), f.clone())).collect()
    };
    let (want, have) = (index(recorded), index(found));
    let mut out = Vec::new();
    for (p, w) in &want {
        match have.get(p) {
            None => out.push(format!("{p}: missing")),
            Some(h) if h == w => {}
            Some(h) if h.kind != w.kind => out.push(format!("{p}: type changed")),
            Some(h) if h.mode != w.mode => {
                out.push(format!("{p}: mode {} (recorded {})", h.mode, w.mode))
            }
            Some(h) if h.target != w.target => out.push(format!("{p}: symlink target changed")),
            Some(_) => out.push(format!("{p}: content changed")),
        }
    }
    for p in have.keys().filter(|p| !want.contains_key(*p)) {
        out.push(format!("{p}: not in the record"));
    }
    if out.is_empty() {
        return "the file lists agree; the serialisation differs".to_string();
    }
    let more = out.len().saturating_sub(5);
    out.truncate(5);
    let mut s = out.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// Puts the freshly built `staged` directory in place of the corrupt
/// output directory `dest`, atomically (`renameat2(RENAME_EXCHANGE)`; on a
/// filesystem without it, by moving the corrupt one aside first), then
/// removes the corrupt one. The new top directory gets the old one's mode.
pub fn replace_output(store: &Store, staged: &Path, dest: &Path) -> anyhow::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    let old_mode = fs::symlink_metadata(dest)
        .with_context(|| format!("reading {}", dest.display()))?
        .permissions()
        .mode();
    // A directory that moves to another parent must itself be writable.
    fs::set_permissions(
        dest,
        fs::Permissions::from_mode((old_mode | 0o700) & 0o7777),
    )
    .with_context(|| format!("making {} writable to replace it", dest.display()))?;
    let exchanged = renameat2(
        AT_FDCWD,
        staged,
        AT_FDCWD,
        dest,
        RenameFlags::RENAME_EXCHANGE,
    );
    let corrupt = match exchanged {
        Ok(()) => staged.to_path_buf(),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            let aside = hermit_store::store::temp_dir(store.tmp_dir())?.join("corrupt");
            fs::rename(dest, &aside)
                .with_context(|| format!("moving the corrupt {} aside", dest.display()))?;
            fs::rename(staged, dest)
                .with_context(|| format!("moving the output into {}", dest.display()))?;
            aside
        }
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("replacing {}", dest.display()))
        }
    };
    if let Some(parent) = dest.parent() {
        hermit_store::store::sync_dir(parent)?;
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(old_mode & 0o7777))
        .with_context(|| format!("restoring the mode of {}", dest.display()))?;
    hermit_store::store::remove_tree(&corrupt)
        .with_context(|| format!("removing the corrupt output at {}", corrupt.display()))?;
    Ok(())
}
