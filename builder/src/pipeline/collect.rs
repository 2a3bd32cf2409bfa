//! Stage 6, collect: `$out` normalised (sorted, mtimes, owners, modes),
//! hashed into its canonical tar's digest, made read-only, and the record
//! written beside it. The result is staged, not yet installed.

use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use hermit_store::Store;

use super::plan::Plan;
use super::run::Ran;
use crate::exit::{self, Exit};
use crate::output::{self, Normalized};
use crate::record::{Informational, LogRecord, Record};

/// A finished build waiting to be installed or compared: `dir/out` and
/// `dir/record.json`.
pub struct Staged {
    pub dir: PathBuf,
    pub record: Record,
}

pub fn collect(_store: &Store, plan: &Plan, ran: Ran) -> anyhow::Result<Staged> {
    let env = &plan.resolved.environment;
    let m = &ran.m;
    let mut t = crate::timing::start();
    let shown = plan.resolved.spec_path.as_path();
    let normalized: Normalized = output::normalize(
        &m.out_dir,
        &output::Options {
            source_date_epoch: env.source_date_epoch,
            symlinks: output::SymlinkPolicy::Contained,
            apply: true,
        },
        None,
    )
    .map_err(|e| {
        super::materialise::discard(&m.staging);
        Exit::with_code(
            exit::BUILD_FAILED,
            format!("the build's $out cannot be stored: {e}"),
        )
    })?;
    t.lap(shown, "collect.normalize");
    let _ = hermit_store::store::remove_tree(&m.build_dir);
    let _ = hermit_store::store::remove_tree(&crate::workdir::work_dir(&m.build_dir));
    hermit_store::tree::make_read_only(&m.out_dir)
        .with_context(|| format!("making {} read-only", m.out_dir.display()))?;
    let mut info = Informational::collect(Some(ran.started), Some(SystemTime::now()));
    info.duration_ms = Some(ran.t0.elapsed().as_millis() as u64);
    let mut record = plan.record(
        &normalized,
        LogRecord {
            digest: ran.log_digest,
            size: ran.log_size,
        },
        info,
    )?;
    // Not part of the build key: set after the key is computed.
    record.output.rewritten_links = ran.rewritten_links.clone();
    t.lap(shown, "collect.record");
    let rp = m.staging.join("record.json");
    fs::write(&rp, record.to_json()?).with_context(|| format!("writing {}", rp.display()))?;
    fs::File::open(&rp)
        .and_then(|f| {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            f.sync_all()
        })
        .with_context(|| format!("syncing {}", rp.display()))?;
    t.lap(shown, "collect.write");
    Ok(Staged {
        dir: m.staging.clone(),
        record,
    })
}
