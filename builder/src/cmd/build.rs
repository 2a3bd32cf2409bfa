//! `hermit build`, `hermit rebuild`, `hermit graph` and `hermit lock`: thin
//! layers over [`crate::graph`] and [`crate::pipeline`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hermit_store::Store;

use crate::exit::{self, Exit};
use crate::graph::{self, Graph, RunOptions, State};
use crate::lock::Lock;
use crate::net::NetArgs;
use crate::pipeline::{self, BuildOptions};
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
    /// An archive of old Debian packages (URL of its root, holding pool/) to
    /// fetch a lock's .debs from when a Debian toolchain image must be made
    /// again; repeatable
    #[arg(long = "debian-archive", value_name = "URL")]
    pub debian_archives: Vec<String>,
    /// The machine's job budget, shared by every build: builds at once, the make jobserver's slots and HERMIT_JOBS (default: this machine's CPU count)
    #[arg(short = 'j', long = "jobs", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// Keep a failed build's /build and /out in the store and print where
    #[arg(long)]
    pub keep_failed: bool,
    /// Print one JSON object on stdout instead of text (on failure too:
    /// `error`, `exit_code`, …); progress stays on stderr
    #[arg(long)]
    pub json: bool,
    /// Do not stream the build log to the terminal (it is kept in the store)
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub remote: crate::remote::client::RemoteArgs,
}

impl CommonArgs {
    fn net(&self) -> anyhow::Result<NetArgs> {
        // --json changes stdout only: progress stays on stderr.
        let mut net = NetArgs::defaults(self.mirrors.clone(), self.offline, self.quiet);
        net.debian_archives = self.debian_archives.clone();
        if !self.offline {
            net.remote = self.remote.session()?;
        }
        Ok(net)
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
            ..BuildOptions::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The specs to build, with every spec their [inputs] name
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Leave a symlink to the output here (like nix-build's `result`; with
    /// several specs, LINK, LINK-2, LINK-3, …)
    #[arg(short = 'o', long = "out-link", value_name = "LINK")]
    pub link: Option<PathBuf>,
    /// Start no new build once one has failed (by default every build that
    /// does not depend on a failed one still runs)
    #[arg(long)]
    pub fail_fast: bool,
    /// No live progress lines (one plain line per event instead)
    #[arg(long)]
    pub no_progress: bool,
    /// Send the builds the store lacks to this remote execution service
    /// (grpc://HOST:PORT[/INSTANCE], grpcs://…; e.g. BuildGrid with `hermit
    /// worker`s); also `remote_exec` in config.toml
    #[arg(long, value_name = "URL")]
    pub remote_exec: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Opens the default store and holds it shared (no gc meanwhile).
fn open_store() -> anyhow::Result<(Arc<Store>, hermit_store::store::StoreLock)> {
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let lock = store.shared_lock().context("locking the store")?;
    Ok((store, lock))
}

pub fn run_build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let mut t = crate::timing::start();
    let g = graph::load(&args.specs)?;
    t.lap(Path::new("-"), "graph.load");
    let (store, _shared) = open_store()?;
    t.lap(Path::new("-"), "open_store");
    let mut opts = args.common.opts();
    let jobs = opts
        .jobs
        .unwrap_or_else(crate::pipeline::resolve::host_cpus);
    // One jobserver for every build of the graph: `-j N` is the budget of
    // the machine, shared by the makes of all builds running at once (or
    // the budget of the make that runs hermit).
    if opts.jobserver.is_none() {
        opts.jobserver =
            Some(crate::jobserver::Jobserver::new(jobs).context("creating the jobserver")?);
    }
    let mut parallel = jobs as usize;
    if let Some(rx) =
        crate::remote::exec::from_args(args.remote_exec.as_deref(), opts.quiet, parallel)?
    {
        if rx.connected() {
            // Builds run elsewhere: every ready node at once. The jobserver
            // stays: a node that falls back to a local build (the service
            // failed) takes a slot then, so at most `-j` of them run here.
            parallel = parallel.max(g.nodes.len());
            opts.remote_exec = Some(rx);
        }
    }
    let states = graph::run(
        &store,
        &g,
        &args.common.net()?,
        &RunOptions {
            build: opts,
            parallel,
            fail_fast: args.fail_fast,
            no_progress: args.no_progress,
        },
    );
    t.lap(Path::new("-"), "graph.run");
    let mut links = Vec::new();
    if let Some(link) = &args.link {
        for (n, &t) in g.tops.iter().enumerate() {
            if let State::Built(b) = &states[t] {
                let l = if n == 0 {
                    link.clone()
                } else {
                    PathBuf::from(format!("{}-{}", link.display(), n + 1))
                };
                link_result(&l, &b.output)?;
                links.push(l);
            }
        }
    }
    let failure = first_failure(&g, &states);
    if args.common.json {
        let mut v = match (g.tops.as_slice(), &failure) {
            ([t], None) => match &states[*t] {
                State::Built(b) => built_json(b),
                _ => serde_json::json!({}),
            },
            (_, None) => serde_json::json!({
                "builds": g.tops.iter().filter_map(|&t| match &states[t] {
                    State::Built(b) => Some(built_json(b)),
                    _ => None,
                }).collect::<Vec<_>>(),
            }),
            (_, Some((code, message))) => {
                let mut v = serde_json::json!({
                    "error": message,
                    "exit_code": code,
                });
                // The first failed build's log.
                if let Some(log) = states.iter().find_map(|s| match s {
                    State::Failed { log: Some(l), .. } => Some(l),
                    _ => None,
                }) {
                    v["log"] = serde_json::json!(log);
                }
                v
            }
        };
        v["graph"] = graph_json(&g, &states);
        println!("{}", serde_json::to_string_pretty(&v)?);
        if let Some((code, message)) = failure {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(code));
        }
        return Ok(ExitCode::SUCCESS);
    }
    for (n, &t) in g.tops.iter().enumerate() {
        if let State::Built(built) = &states[t] {
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
            if let Some(link) = links.get(n) {
                println!("  link    {}", link.display());
            }
        }
    }
    if g.nodes.len() > 1 {
        println!("{}", summary(&g, &states));
    }
    match failure {
        Some((code, message)) => Err(Exit::with_code(code, message).into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn built_json(b: &pipeline::Built) -> serde_json::Value {
    serde_json::json!({
        "build_key": b.record.build_key,
        "cached": b.cached,
        "remote": crate::remote::cache::json(&b.record.build_key),
        "remote_exec": crate::remote::exec::json(&b.record.build_key),
        "output": b.output,
        "output_digest": b.record.output.digest,
        "record": b.record_path,
    })
}

/// One object per node, in build order.
fn graph_json(g: &Graph, states: &[State]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = g
        .nodes
        .iter()
        .zip(states)
        .map(|(n, s)| {
            let mut v = serde_json::json!({
                "name": n.name,
                "spec": n.spec,
                "build_key": null,
                "output_digest": null,
                "cached": false,
            });
            match s {
                State::Built(b) => {
                    v["build_key"] = serde_json::json!(b.record.build_key);
                    v["output_digest"] = serde_json::json!(b.record.output.digest);
                    v["cached"] = serde_json::json!(b.cached);
                    v["remote"] = crate::remote::cache::json(&b.record.build_key);
                    v["remote_exec"] = crate::remote::exec::json(&b.record.build_key);
                    v["output"] = serde_json::json!(b.output);
                    v["status"] = serde_json::json!(if b.cached { "cached" } else { "built" });
                }
                State::Failed { message, log, .. } => {
                    v["status"] = serde_json::json!("failed");
                    v["error"] = serde_json::json!(message);
                    v["log"] = serde_json::json!(log);
                }
                State::Skipped { because } => {
                    v["status"] = serde_json::json!("skipped");
                    v["because"] = serde_json::json!(g.nodes[*because].spec);
                }
                State::Waiting | State::Running => {
                    v["status"] = serde_json::json!("not started");
                }
            }
            v
        })
        .collect();
    serde_json::Value::Array(nodes)
}

/// The exit code and message of a graph that did not build whole.
fn first_failure(g: &Graph, states: &[State]) -> Option<(u8, String)> {
    let failed: Vec<usize> = (0..states.len())
        .filter(|&i| matches!(states[i], State::Failed { .. }))
        .collect();
    let &first = failed.first()?;
    let State::Failed { message, code, .. } = &states[first] else {
        return None;
    };
    if g.nodes.len() == 1 {
        return Some((*code, message.clone()));
    }
    let names = |ix: &[usize]| {
        ix.iter()
            .map(|&i| format!("{} ({})", g.nodes[i].name, g.nodes[i].spec.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let skipped: Vec<usize> = (0..states.len())
        .filter(|&i| matches!(states[i], State::Skipped { .. }))
        .collect();
    let mut msg = format!(
        "{} of {} builds failed: {}",
        failed.len(),
        g.nodes.len(),
        names(&failed)
    );
    if !skipped.is_empty() {
        msg.push_str(&format!("; skipped because of them: {}", names(&skipped)));
    }
    if failed.len() == 1 {
        msg.push_str(&format!("\n  {message}"));
    }
    Some((*code, msg))
}

/// `graph: 5 specs: built 2, cached 1, failed 1 (b), skipped 1 (c, because b failed)`.
fn summary(g: &Graph, states: &[State]) -> String {
    let mut built = Vec::new();
    let mut cached = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for (i, s) in states.iter().enumerate() {
        let name = g.nodes[i].name.clone();
        match s {
            State::Built(b) if b.cached => cached.push(name),
            State::Built(_) => built.push(name),
            State::Failed { .. } => failed.push(name),
            State::Skipped { because } => skipped.push(format!(
                "{name} (because {} failed)",
                g.nodes[*because].name
            )),
            _ => {}
        }
    }
    let part = |label: &str, v: &[String]| {
        if v.is_empty() {
            format!("{label} 0")
        } else {
            format!("{label} {}: {}", v.len(), v.join(", "))
        }
    };
    format!(
        "graph of {} specs: {}; {}; {}; {}",
        g.nodes.len(),
        part("built", &built),
        part("cached", &cached),
        part("failed", &failed),
        part("skipped", &skipped)
    )
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// The specs whose closure to print
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Print Graphviz dot (draw it with `dot -Tsvg`)
    #[arg(long, conflicts_with = "json")]
    pub dot: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `hermit graph`: the closure of some specs, in build order.
pub fn run_graph(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let g = graph::load(&args.specs)?;
    if args.dot {
        print!("{}", graph::to_dot(&g));
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&graph::to_json(&g))?);
    } else {
        for n in &g.nodes {
            let inputs: Vec<String> = n
                .inputs
                .iter()
                .map(|(name, _, j)| format!("{name}={}", g.nodes[*j].name))
                .collect();
            if inputs.is_empty() {
                println!("{}  {}", n.name, n.spec.display());
            } else {
                println!("{}  {}  <- {}", n.name, n.spec.display(), inputs.join(" "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// A record.json written by `hermit build`, a bundle written by `hermit
    /// export`, or a bundle pushed to a registry (HOST/NAME@sha256:…)
    pub record: PathBuf,
    /// Rebuild every input from its own record first (found by build key in
    /// the store or a mirror) and say which node differs
    #[arg(long)]
    pub deep: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run_rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let (store, _shared) = open_store()?;
    let net = args.common.net()?;
    let opts = args.common.opts();
    // A bundle (file or registry reference) is imported; its top record is rebuilt.
    let record = crate::bundle::record_for_rebuild(&store, &args.record, args.common.offline)?;
    let args = RebuildArgs { record, ..args };
    let nodes: Vec<(String, pipeline::rebuild::Rebuilt)> = if args.deep {
        pipeline::rebuild::rebuild_deep(&store, &args.record, &net, &opts)?
            .into_iter()
            .map(|n| (n.origin, n.rebuilt))
            .collect()
    } else {
        let r = pipeline::rebuild::rebuild(&store, &args.record, &net, &opts)?;
        vec![(args.record.display().to_string(), r)]
    };
    let Some((_, top)) = nodes.last() else {
        return Err(Exit::with_code(exit::INTERNAL, "internal error: nothing was rebuilt").into());
    };
    let identical = |r: &pipeline::rebuild::Rebuilt| r.old.output.digest == r.new.output.digest;
    let all_identical = nodes.iter().all(|(_, r)| identical(r));
    let node_json = |r: &pipeline::rebuild::Rebuilt| {
        serde_json::json!({
            "name": r.old.package.name,
            "build_key": r.old.build_key,
            "identical": identical(r),
            "recorded_digest": r.old.output.digest,
            "rebuilt_digest": r.new.output.digest,
            "differences": pipeline::rebuild::differing_files(&r.old, &r.new),
            "rebuilt_output": r.kept,
        })
    };
    if args.common.json {
        let mut v = node_json(top);
        v.as_object_mut().map(|m| m.remove("name"));
        if args.deep {
            v["nodes"] = nodes.iter().map(|(_, r)| node_json(r)).collect();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (origin, r) in &nodes {
            let (old, new) = (&r.old, &r.new);
            if identical(r) {
                println!(
                    "identical: {} {} rebuilt to {}",
                    old.package.name, old.package.version, new.output.digest
                );
                continue;
            }
            println!(
                "differs: {} {} ({origin}): recorded {}, rebuilt {}",
                old.package.name, old.package.version, old.output.digest, new.output.digest
            );
            for d in &pipeline::rebuild::differing_files(old, new) {
                println!("  {d}");
            }
            if let Some(k) = &r.kept {
                println!(
                    "  rebuilt output kept at {} (compare with diffoscope)",
                    k.display()
                );
            }
        }
    }
    Ok(if all_identical {
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
    let Some(request) = crate::toolchain::toolchain_request(&spec, &dir) else {
        println!(
            "{}: the toolchain is an input's output, pinned by its digest; there is nothing to lock",
            args.spec.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let profile = hermit_profiles::Profile::default_profile()?;
    let (image, packages) =
        crate::toolchain::resolve_toolchain_fresh(&store, &request, &dir, &net, &profile)?;
    let lock =
        Lock::new(&request, &image, packages).bootstrapped_with(profile.source_date_epoch.default);
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

/// Replaces `link` with a symlink to `target`, atomically.
pub fn link_result(link: &Path, target: &Path) -> anyhow::Result<()> {
    if let Ok(m) = fs::symlink_metadata(link) {
        if !m.file_type().is_symlink() {
            return Err(Exit::user(format!(
                "{} exists and is not a symlink; hermit only replaces its own result links",
                link.display()
            ))
            .into());
        }
    }
    let parent = link
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "result".into());
    let tmp = parent.join(format!(".{name}.hermit-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("replacing {}", link.display()))?;
    Ok(())
}
