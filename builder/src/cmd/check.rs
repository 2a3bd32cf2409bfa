//! `hermit check`: a thin layer over [`crate::check`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hermit_store::Store;

use crate::check::{self, CheckOptions};
use crate::exit;
use crate::net::NetArgs;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A spec (its inputs are built or found cached first) or a record.json
    #[arg(value_name = "SPEC|RECORD")]
    pub target: PathBuf,
    /// The variations to apply, comma-separated or repeated; `all` adds the
    /// ones hermit normalises and buildpath, archive, packages, environment
    /// [default: repeat,jobs,cpus,uname,kernel,randomness,aslr,clock,dirorder]
    #[arg(long, value_name = "LIST")]
    pub vary: Vec<String>,
    /// Variations to leave out, comma-separated or repeated
    #[arg(long = "no-vary", value_name = "LIST")]
    pub no_vary: Vec<String>,
    /// HERMIT_JOBS of the control build [default: this machine's CPU count]
    #[arg(short = 'j', long = "jobs", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// A content-addressed mirror (folder, file:// or http(s):// URL); repeatable
    #[arg(long = "mirror", value_name = "M")]
    pub mirrors: Vec<String>,
    /// Never use the network
    #[arg(long)]
    pub offline: bool,
    /// Print one JSON object on stdout instead of text
    #[arg(long)]
    pub json: bool,
    /// No progress messages on stderr
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let variations = check::select(&args.vary, &args.no_vary)?;
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let opts = CheckOptions {
        variations,
        net: NetArgs::defaults(args.mirrors, args.offline, args.quiet),
        jobs: args.jobs,
        quiet: args.quiet,
    };
    let report = check::check(&store, &args.target, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", check::render(&report));
    }
    Ok(if report.reproducible {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::BUILD_FAILED)
    })
}
