//! `hermit worker` (a Remote Workers API bot) and its per-action process
//! `hermit __remote-action`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hermit_store::Store;

use crate::pipeline::{BuildOptions, Echo};

/// `hermit __remote-action DIR/action.json` (run by `hermit worker`).
#[derive(Args, Debug)]
pub struct RemoteActionArgs {
    /// The action's action.json; its outputs are written beside it
    pub action: PathBuf,
    /// HERMIT_JOBS for the build (the worker's --cpus)
    #[arg(long, value_name = "N")]
    pub jobs: Option<u32>,
}

pub fn run_remote_action(args: RemoteActionArgs) -> anyhow::Result<ExitCode> {
    // Ends with the worker that started it: a worker killed mid-action
    // leaves no build behind (BuildGrid gives the action to another bot).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let dir = match args.action.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let opts = BuildOptions {
        jobs: args.jobs,
        quiet: true,
        echo: Echo::Nowhere,
        ..BuildOptions::default()
    };
    crate::remote::run_action::run(&store, &dir, &opts)?;
    Ok(ExitCode::SUCCESS)
}
