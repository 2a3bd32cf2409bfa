//! `hermit export`, `hermit import` and `hermit verify`: thin layers over
//! [`crate::bundle`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hermit_store::Store;

use crate::exit::Exit;
use crate::graph::{self, RunOptions, State};
use crate::net::NetArgs;
use crate::pipeline::BuildOptions;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A record.json written by `hermit build`, or a spec (built first if
    /// its output is not in the store)
    #[arg(value_name = "RECORD|SPEC")]
    pub what: PathBuf,
    /// The bundle to write (an oci-archive)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// A content-addressed mirror to find inputs' records and pinned .debs in; repeatable
    #[arg(long = "mirror", value_name = "M")]
    pub mirrors: Vec<String>,
    /// Say nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A bundle written by `hermit export`
    #[arg(value_name = "FILE")]
    pub bundle: PathBuf,
    /// Write no gc root for the bundle: `hermit store gc` may then remove
    /// what it brought in once no build uses it
    #[arg(long)]
    pub no_root: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A bundle written by `hermit export`
    #[arg(value_name = "FILE")]
    pub bundle: PathBuf,
}

fn open_store() -> anyhow::Result<(Arc<Store>, hermit_store::store::StoreLock)> {
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let lock = store.shared_lock().context("locking the store")?;
    Ok((store, lock))
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (store, _shared) = open_store()?;
    let net = NetArgs::defaults(args.mirrors.clone(), false, true);
    let record_path = if args.what.extension().is_some_and(|e| e == "json") {
        args.what.clone()
    } else {
        built_record(&store, &net, &args.what)?
    };
    let text = crate::limits::read_text(&record_path, crate::limits::MAX_RECORD)
        .with_context(|| format!("reading {}", record_path.display()))?;
    let e = crate::bundle::export(
        &store,
        &net,
        &text,
        &record_path.display().to_string(),
        &args.output,
    )?;
    if !args.quiet {
        println!(
            "exported {} records and {} blobs ({}) to {}",
            e.records,
            e.blobs,
            indicatif::HumanBytes(e.bytes),
            args.output.display()
        );
        println!("  manifest {}", e.manifest);
    }
    Ok(ExitCode::SUCCESS)
}

/// The record of a spec's build: built (or found cached) like `hermit build`.
fn built_record(store: &Arc<Store>, net: &NetArgs, spec: &Path) -> anyhow::Result<PathBuf> {
    let g = graph::load(&[spec.to_path_buf()])?;
    let jobs = crate::pipeline::resolve::host_cpus();
    let opts = BuildOptions {
        quiet: true,
        jobserver: Some(crate::jobserver::Jobserver::new(jobs).context("creating the jobserver")?),
        ..BuildOptions::default()
    };
    let states = graph::run(
        store,
        &g,
        net,
        &RunOptions {
            build: opts,
            parallel: jobs as usize,
            fail_fast: true,
            no_progress: true,
        },
    );
    let top = g
        .tops
        .first()
        .ok_or_else(|| Exit::user(format!("{}: nothing to export", spec.display())))?;
    match &states[*top] {
        State::Built(b) => Ok(b.record_path.clone()),
        State::Failed { message, .. } => Err(Exit::user(format!(
            "{}: the build failed, so there is nothing to export: {message}",
            spec.display()
        ))
        .into()),
        _ => Err(Exit::user(format!(
            "{}: an input failed to build, so there is nothing to export",
            spec.display()
        ))
        .into()),
    }
}

pub fn run_import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let (store, _shared) = open_store()?;
    let i = crate::bundle::import(&store, &args.bundle, !args.no_root)?;
    print!("{}", i.checked_summary);
    println!("stored   {} new blobs", i.new_blobs);
    if let Some(root) = &i.root {
        println!(
            "root     {root} (`hermit store root rm {root}` lets `hermit store gc` remove them)"
        );
    }
    println!("top record file {}", i.record_path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let s = crate::bundle::verify(&args.bundle)?;
    print!("{s}");
    println!("ok: every digest checks out and the closure is complete");
    Ok(ExitCode::SUCCESS)
}
