//! `hermit shell`: a thin layer over [`crate::shell`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hermit_store::Store;

use crate::exit::Exit;
use crate::net::NetArgs;
use crate::pipeline::BuildOptions;
use crate::shell::{self, ShellOptions, Source};

#[derive(Args, Debug)]
pub struct ShellArgs {
    /// A record.json (its build's environment) or a spec (the environment
    /// its build would have); not with --failed
    #[arg(value_name = "RECORD|SPEC", required_unless_present = "failed")]
    pub target: Option<PathBuf>,
    /// Enter a failed build kept with `--keep-failed`, over its kept /build
    /// and /out: the directory its message named, or the last one kept
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with = "target")]
    pub failed: Option<Option<PathBuf>>,
    /// Never give the command a terminal, even when hermit has one
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// HERMIT_JOBS in the shell [default: the record's; for a spec, this machine's CPU count]
    #[arg(short = 'j', long = "jobs", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// A content-addressed mirror (folder, file:// or http(s):// URL); repeatable
    #[arg(long = "mirror", value_name = "M")]
    pub mirrors: Vec<String>,
    /// Never use the network to bring in what the environment needs
    #[arg(long)]
    pub offline: bool,
    /// No hermit messages (and no build logs of inputs) on stderr
    #[arg(short, long)]
    pub quiet: bool,
    /// The command to run instead of an interactive shell; hermit exits with its status
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Where a target is a record rather than a spec: JSON (`{` first).
fn is_record(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

pub fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let source = match (&args.failed, &args.target) {
        (Some(d), _) => Source::Failed(d.clone()),
        (None, Some(t)) => {
            let text = crate::limits::read_text(t, crate::limits::MAX_RECORD)
                .map_err(|e| Exit::user(format!("{}: cannot read it: {e}", t.display())))?;
            if is_record(&text) {
                Source::Record {
                    text,
                    origin: t.display().to_string(),
                }
            } else {
                Source::Spec(t.clone())
            }
        }
        (None, None) => {
            return Err(Exit::user("give a RECORD or SPEC, or --failed").into());
        }
    };
    let opts = ShellOptions {
        command: args.command,
        no_tty: args.no_tty,
        net: NetArgs::defaults(args.mirrors, args.offline, args.quiet),
        build: BuildOptions {
            jobs: args.jobs,
            quiet: args.quiet,
            ..BuildOptions::default()
        },
    };
    let code = shell::enter(&store, source, &opts)?;
    Ok(ExitCode::from(code))
}
