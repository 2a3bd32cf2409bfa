//! Stages 3 and 7, cache lookup and install, both by build key.
//!
//! A stored output is served only after it is checked against its record
//! (see [`crate::integrity`]); a corrupt one is named and built again. A
//! build that misses takes the key's lock (`v1/locks/<key>.lock`, the
//! store's per-digest lock) before it materialises anything and holds it
//! until its output is installed, so two identical builds started at once
//! on one store run once: the second waits, looks again, and reports a
//! cache hit.

use std::fs;
use std::path::Path;

use anyhow::Context;
use hermit_store::store::DigestLock;
use hermit_store::{Digest, Store};

use super::collect::Staged;
use super::{outputs_dir, Built};

/// What the store holds under a build key.
pub enum Stored {
    Absent,
    Good(Box<Built>),
    /// There, but not what its record says (or the record is damaged).
    Corrupt(String),
}

/// The stored output of `key`, checked against its record. `plan`: the
/// plan looking it up, when there is one (its key inputs spare computing
/// the record's key again; see [`crate::record::Record::parse_expecting`]).
pub fn check(store: &Store, key: &Digest, plan: Option<&super::plan::Plan>) -> Stored {
    let dir = outputs_dir(store).join(key.hex());
    if fs::symlink_metadata(&dir).is_err() {
        return Stored::Absent;
    }
    let expected = plan.map(|p| p.key_inputs());
    match crate::integrity::check_output_quick(store, &dir, expected.as_ref()) {
        Ok(record) => Stored::Good(Box::new(Built {
            output: dir.join("out"),
            record_path: dir.join("record.json"),
            record,
            cached: true,
        })),
        Err(why) => Stored::Corrupt(why),
    }
}

/// The stored output of `key`, checked; `None` when there is none or it is
/// corrupt (then said on stderr, and the caller builds it again).
pub fn lookup(store: &Store, key: &Digest, plan: Option<&super::plan::Plan>) -> Option<Built> {
    match check(store, key, plan) {
        Stored::Good(b) => Some(*b),
        Stored::Absent => None,
        Stored::Corrupt(why) => {
            eprintln!("hermit: the stored output of build key {key} is corrupt: {why}; rebuilding");
            None
        }
    }
}

/// Takes the lock of build key `key`, saying so when another hermit holds
/// it (that one is building the same thing).
pub fn lock_key(store: &Store, key: &Digest, quiet: bool) -> anyhow::Result<DigestLock> {
    if let Some(lock) = store.try_lock(key).context("locking the build key")? {
        return Ok(lock);
    }
    if !quiet {
        eprintln!(
            "hermit: another hermit is building {}; waiting for it",
            super::resolve::short(key)
        );
    }
    store.lock(key).context("locking the build key")
}

/// Installs a staged build as the output of `key` (the caller holds the
/// key's lock): moved into place, or in place of a corrupt stored one.
pub fn install(store: &Store, staged: Staged, key: &Digest) -> anyhow::Result<Built> {
    let outputs = outputs_dir(store);
    fs::create_dir_all(&outputs).with_context(|| format!("creating {}", outputs.display()))?;
    let dest = outputs.join(key.hex());
    if fs::symlink_metadata(&dest).is_ok() {
        // Only a corrupt output is still there under the key's lock
        // ([`lookup`] found it so): replace it.
        crate::integrity::replace_output(store, &staged.dir, &dest)?;
    } else {
        hermit_store::store::install_tree(&staged.dir, &dest)
            .with_context(|| format!("moving the output into {}", dest.display()))?;
    }
    Ok(built_at(&dest, staged.record))
}

fn built_at(dest: &Path, record: crate::record::Record) -> Built {
    Built {
        output: dest.join("out"),
        record_path: dest.join("record.json"),
        record,
        cached: false,
    }
}
