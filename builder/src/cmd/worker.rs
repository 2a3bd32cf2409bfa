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
    crate::remote::worker::unblock_stop_signals();
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
    if let Err(e) = crate::remote::run_action::run(&store, &dir, &opts) {
        // A failed build's log goes back with the result.
        if let Some(log) = e
            .chain()
            .find_map(|c| c.downcast_ref::<crate::exit::Exit>())
            .and_then(|x| x.log)
        {
            let _ = std::fs::copy(store.blob_path(&log), dir.join("build.log"));
        }
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// `hermit worker`: run hermit actions for a remote execution service.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The execution service: grpc://HOST:PORT[/INSTANCE] or grpcs://…
    /// (its bearer token from HERMIT_REMOTE_TOKEN; for grpcs://, a CA from
    /// HERMIT_REMOTE_CA and a client certificate from HERMIT_REMOTE_CERT and
    /// HERMIT_REMOTE_KEY, else config.toml's [remote])
    #[arg(long, value_name = "URL")]
    pub remote: String,
    /// The instance name (overrides the one in the URL)
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// CPUs the actions may use (the worker is pinned to that many, and
    /// builds get HERMIT_JOBS=N); all of the machine's by default
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub cpus: Option<u32>,
    /// The bot id the service knows this worker by (default: host name and
    /// process id)
    #[arg(long, value_name = "ID")]
    pub name: Option<String>,
}

pub fn run_worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut endpoint = hermit_remote::Endpoint::parse(&args.remote)
        .map_err(|e| crate::exit::Exit::user(e.to_string()))?;
    if let Some(i) = args.instance {
        endpoint.instance = i;
    }
    let endpoint = endpoint
        .with_token(std::env::var("HERMIT_REMOTE_TOKEN").ok())
        .with_ca(crate::remote::client::ca_bundle()?)
        .with_identity(crate::remote::client::client_identity()?);
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let name = match args.name {
        Some(n) => n,
        None => format!(
            "{}-{}",
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "hermit".into()),
            std::process::id()
        ),
    };
    let work_dir = store
        .base()
        .join("worker")
        .join(crate::remote::worker::dir_name(&name));
    let hermit = std::env::current_exe().context("finding this hermit's executable")?;
    crate::remote::worker::run(
        store,
        crate::remote::worker::WorkerOptions {
            endpoint,
            name,
            cpus: args.cpus,
            work_dir,
            hermit,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
