//! `hermit toolchain restore`: make a locked Debian toolchain image again
//! from the .debs its lock pins (see [`crate::debrestore`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use hermit_store::Store;

use crate::exit::Exit;
use crate::lock::Lock;
use crate::net::NetArgs;

#[derive(Subcommand)]
pub enum ToolchainCommand {
    /// Make a locked Debian toolchain image again from its pinned .debs
    /// (store, mirrors, --debian-archive), checked to be the very image the
    /// lock pins
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A spec (its hermit.lock beside it), a lock file, or a record (.json)
    #[arg(value_name = "SPEC|LOCK|RECORD")]
    pub target: PathBuf,
    /// Make the image again even when the store holds it (checks that the
    /// lock's .debs still give it)
    #[arg(long)]
    pub force: bool,
    /// An archive of old Debian packages (URL of its root, holding pool/);
    /// repeatable, tried in order after the store and mirrors
    #[arg(long = "debian-archive", value_name = "URL")]
    pub debian_archives: Vec<String>,
    /// Print one JSON object (sorted keys) on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

pub fn run(cmd: ToolchainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ToolchainCommand::Restore(a) => restore(a),
    }
}

/// The lock a target names, where it came from, and the SOURCE_DATE_EPOCH
/// of the profile it was made under (for version-1 locks).
fn target_lock(target: &Path) -> anyhow::Result<(Lock, String, u64)> {
    let shown = target.display().to_string();
    let is = |ext: &str| target.extension().is_some_and(|e| e == ext);
    if is("json") {
        let (rec, _) = crate::pipeline::rebuild::read_record(target)?;
        let Some(text) = &rec.lock else {
            return Err(Exit::user(format!("{shown}: the record has no lock")).into());
        };
        let origin = format!("the lock in {shown}");
        let lock = Lock::parse(&origin, &text.text).map_err(|e| Exit::user(e.to_string()))?;
        let profile = hermit_profiles::Profile::get_pinned(
            &rec.profile.name,
            &rec.profile.digest.to_string(),
        )?;
        return Ok((lock, origin, profile.source_date_epoch.default));
    }
    let lock_path = if is("lock") {
        target.to_path_buf()
    } else {
        target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("hermit.lock")
    };
    let lock = Lock::read(&lock_path)
        .map_err(|e| Exit::user(format!("{e:#}")))?
        .ok_or_else(|| {
            Exit::user(format!(
                "{} does not exist; run `hermit lock SPEC` first",
                lock_path.display()
            ))
        })?;
    let profile = hermit_profiles::Profile::default_profile()?;
    Ok((
        lock,
        lock_path.display().to_string(),
        profile.source_date_epoch.default,
    ))
}

fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let (lock, origin, sde) = target_lock(&a.target)?;
    if !crate::debrestore::restorable(&lock) {
        return Err(Exit::user(format!(
            "{origin}: the toolchain is not a bootstrapped Debian with pinned packages; only those are made again from their .debs"
        ))
        .into());
    }
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let want = lock.toolchain.manifest;
    let present = crate::toolchain::find_image(&store, &want)?.is_some();
    let restored = if present && !a.force {
        false
    } else {
        let mut net = a.net.clone();
        net.debian_archives = a.debian_archives.clone();
        crate::debrestore::restore(&store, &lock, &origin, &net, sde)?;
        true
    };
    if a.json {
        let v = serde_json::json!({
            "manifest": want.to_string(),
            "packages": lock.toolchain.packages.len(),
            "restored": restored,
        });
        println!(
            "{}",
            serde_json::to_string(&v).context("serialising the result")?
        );
    } else if restored {
        println!(
            "restored: {want} made again from {} .debs, identical to {origin}",
            lock.toolchain.packages.len()
        );
    } else {
        println!("present: {want} is in the store (--force makes it again)");
    }
    Ok(ExitCode::SUCCESS)
}
