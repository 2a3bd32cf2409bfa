//! `hermit build`, `hermit rebuild` and `hermit lock`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hermit_store::Store;

use crate::build::{self, BuildOptions};
use crate::cmd::fetch::NetArgs;
use crate::exit::{self, Exit};
use crate::lock::Lock;
use crate::spec::Spec;

/// Flags `build` and `rebuild` share.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// A content-addressed mirror (folder, file:// or http(s):// URL); repeatable
    #[arg(long = "mirror", value_name = "M")]
    pub mirrors: Vec<String>,
    /// Never use the network; fail before building if an input is missing, listing it
    #[arg(long)]
    pub offline: bool,
    /// HERMIT_JOBS for the build (default: this machine's CPU count)
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<u32>,
    /// Keep a failed build's /build and /out in the store and print where
    #[arg(long)]
    pub keep_failed: bool,
    /// Print one JSON object on stdout instead of text
    #[arg(long)]
    pub json: bool,
    /// Do not stream the build log to the terminal (it is kept in the store)
    #[arg(short, long)]
    pub quiet: bool,
}

impl CommonArgs {
    fn net(&self) -> NetArgs {
        NetArgs::defaults(self.mirrors.clone(), self.offline, self.quiet || self.json)
    }
    fn opts(&self) -> BuildOptions {
        // Run by make (`+hermit build …` in a Makefile): join its jobserver.
        let makeflags = std::env::var("MAKEFLAGS").ok();
        let (jobserver, jobs, warning) =
            crate::jobserver::Jobserver::for_command(self.jobs, makeflags.as_deref());
        if let Some(w) = warning {
            eprintln!("hermit: warning: {w}");
        }
        BuildOptions {
            keep_failed: self.keep_failed,
            jobs,
            quiet: self.quiet,
            jobserver,
        }
    }
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The spec to build
    pub spec: PathBuf,
    /// Leave a symlink to the output here (like nix-build's `result`)
    #[arg(short = 'o', long = "out-link", value_name = "LINK")]
    pub link: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run_build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let built = build::build(&args.spec, &args.common.net(), &args.common.opts())?;
    if let Some(link) = &args.link {
        build::link_result(link, &built.output)?;
    }
    if args.common.json {
        let v = serde_json::json!({
            "build_key": built.record.build_key,
            "cached": built.cached,
            "output": built.output,
            "output_digest": built.record.output.digest,
            "record": built.record_path,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let r = &built.record;
        if built.cached {
            println!(
                "{} {}: cached (build key {}), nothing to build",
                r.package.name, r.package.version, r.build_key
            );
        } else {
            println!("{} {}: built", r.package.name, r.package.version);
        }
        println!("  output  {}", built.output.display());
        println!("  digest  {}", r.output.digest);
        println!("  record  {}", built.record_path.display());
        if let Some(link) = &args.link {
            println!("  link    {}", link.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// A record.json written by `hermit build`
    pub record: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run_rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let (old, new, kept) = build::rebuild(&args.record, &args.common.net(), &args.common.opts())?;
    let identical = old.output.digest == new.output.digest;
    let diffs = build::differing_files(&old, &new);
    if args.common.json {
        let v = serde_json::json!({
            "build_key": old.build_key,
            "identical": identical,
            "recorded_digest": old.output.digest,
            "rebuilt_digest": new.output.digest,
            "differences": diffs,
            "rebuilt_output": kept,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if identical {
        println!(
            "identical: {} {} rebuilt to {}",
            old.package.name, old.package.version, new.output.digest
        );
    } else {
        println!(
            "differs: recorded {}, rebuilt {}",
            old.output.digest, new.output.digest
        );
        for d in &diffs {
            println!("  {d}");
        }
        if let Some(k) = &kept {
            println!(
                "  rebuilt output kept at {} (compare with diffoscope)",
                k.display()
            );
        }
    }
    Ok(if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::BUILD_FAILED)
    })
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The spec whose hermit.lock to write (beside it)
    pub spec: PathBuf,
    /// A content-addressed mirror; repeatable
    #[arg(long = "mirror", value_name = "M")]
    pub mirrors: Vec<String>,
}

pub fn run_lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let spec = Spec::load(&args.spec).map_err(|e| Exit::user(e.to_string()))?;
    let dir = args
        .spec
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let net = NetArgs::defaults(args.mirrors.clone(), false, false);
    let request = crate::toolchain::toolchain_request(&spec, &dir);
    let profile = hermit_profiles::Profile::default_profile()?;
    let (image, packages) =
        crate::toolchain::resolve_toolchain_fresh(&store, &request, &dir, &net, &profile)?;
    let lock = Lock::new(&request, &image, packages);
    let path = dir.join("hermit.lock");
    let old = Lock::read(&path).ok().flatten();
    lock.write(&path)?;
    match old {
        Some(o) if o == lock => println!("{}: unchanged", path.display()),
        Some(o) => println!(
            "{}: toolchain {} → {}",
            path.display(),
            o.toolchain.manifest,
            lock.toolchain.manifest
        ),
        None => println!("{}: toolchain {}", path.display(), lock.toolchain.manifest),
    }
    Ok(ExitCode::SUCCESS)
}
