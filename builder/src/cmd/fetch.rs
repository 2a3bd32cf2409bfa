//! `hermit fetch` and `hermit mirror`: thin layers over
//! `hermit_store::fetch` and `hermit_store::mirror`.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hermit_store::fetch::{FetchSummary, Outcome};
use hermit_store::mirror::{write_mirror, MirrorItem};
use hermit_store::{Digest, FetchOptions, Fetcher, Reporter, Store, Url, Want};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config;
use crate::spec::{SourceKind, Spec, Unpack};

/// Options shared by every command that fetches.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// A content-addressed mirror (folder, file:// or http(s):// URL holding
    /// sha256/<hex>); repeatable, tried in order before the spec's URLs
    #[arg(long = "mirror", value_name = "M")]
    pub mirrors: Vec<String>,
    /// Never use the network; fail before fetching anything if a source is
    /// neither in the store nor in a local mirror
    #[arg(long)]
    pub offline: bool,
    /// Concurrent downloads
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,
    /// Seconds to wait for a connection
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        env = "HERMIT_CONNECT_TIMEOUT"
    )]
    pub connect_timeout: f64,
    /// Seconds to wait for a response or for the next bytes of a body
    #[arg(
        long,
        value_name = "SECS",
        default_value = "60",
        env = "HERMIT_READ_TIMEOUT"
    )]
    pub read_timeout: f64,
    /// Retries per location after a transient failure (5xx, reset, timeout)
    #[arg(long, value_name = "N", default_value_t = 3, env = "HERMIT_RETRIES")]
    pub retries: u32,
    /// Print only errors
    #[arg(short, long)]
    pub quiet: bool,
    /// No progress bars (plain one-line messages instead)
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Spec files whose [[source]]s to fetch
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args)]
pub struct MirrorArgs {
    /// Spec files (their sources, local trees and locked toolchain image) or
    /// records written by `hermit build` (everything a rebuild needs)
    #[arg(required = true, value_name = "SPEC|RECORD")]
    pub specs: Vec<PathBuf>,
    /// The mirror directory to fill (DIR/sha256/<hex> and DIR/index.json)
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Re-hash blobs already in DIR instead of only checking their size
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// One downloaded source of one spec: the fetch plan's unit.
#[derive(Debug, Clone)]
pub struct PlannedSource {
    pub spec: PathBuf,
    pub name: String,
    pub digest: Digest,
    pub size: Option<u64>,
    pub urls: Vec<String>,
    pub unpack: Option<Unpack>,
}

impl PlannedSource {
    fn label(&self) -> String {
        format!("source {:?} in {}", self.name, self.spec.display())
    }
}

/// Reads the specs and lists their downloaded sources. Local (`path`)
/// sources need no fetching.
pub fn plan(spec_paths: &[PathBuf]) -> anyhow::Result<Vec<PlannedSource>> {
    let mut out = Vec::new();
    for path in spec_paths {
        let spec = Spec::load(path)?;
        for s in &spec.sources {
            if let SourceKind::Remote {
                urls,
                sha256,
                size,
                unpack,
            } = &s.kind
            {
                out.push(PlannedSource {
                    spec: spec.file.clone(),
                    name: s.name.clone(),
                    digest: *sha256,
                    size: *size,
                    urls: urls.clone(),
                    unpack: *unpack,
                });
            }
        }
    }
    Ok(out)
}

/// The sources to unpack after fetching: (source name, archive digest, options).
///
pub fn unpack_sources(plan: &[PlannedSource]) -> Vec<(String, Digest, Unpack)> {
    plan.iter()
        .filter_map(|p| p.unpack.map(|u| (p.name.clone(), p.digest, u)))
        .collect()
}

fn wants(plan: &[PlannedSource]) -> anyhow::Result<Vec<Want>> {
    plan.iter()
        .map(|p| {
            let urls = p
                .urls
                .iter()
                .map(|u| Url::parse(u).with_context(|| format!("URL {u:?} of {}", p.label())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Want {
                digest: p.digest,
                size: p.size,
                urls,
                label: p.label(),
            })
        })
        .collect()
}

fn seconds(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, not {v}"))
}

/// A fetcher over `store` configured from the command line, the config file
/// and the environment.
pub fn fetcher(net: &NetArgs, store: Arc<Store>) -> anyhow::Result<Fetcher> {
    let opts = FetchOptions {
        mirrors: config::mirrors(&net.mirrors)?,
        offline: net.offline,
        jobs: net.jobs as usize,
        connect_timeout: seconds(net.connect_timeout, "--connect-timeout")?,
        read_timeout: seconds(net.read_timeout, "--read-timeout")?,
        retries: net.retries,
        ..FetchOptions::default()
    };
    let reporter: Arc<dyn Reporter> = Arc::new(CliReporter::new(net));
    Ok(Fetcher::new(store, opts, reporter)?)
}

impl NetArgs {
    /// The defaults, as if no network flag was given.
    pub fn defaults(mirrors: Vec<String>, offline: bool, quiet: bool) -> NetArgs {
        NetArgs {
            mirrors,
            offline,
            jobs: 8,
            connect_timeout: env_secs("HERMIT_CONNECT_TIMEOUT", 30.0),
            read_timeout: env_secs("HERMIT_READ_TIMEOUT", 60.0),
            retries: std::env::var("HERMIT_RETRIES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3),
            quiet,
            no_progress: false,
        }
    }
}

fn env_secs(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The async runtime for network work, started only when there is some and
/// only for that call. One thread: downloads wait on the network, not the
/// CPU (hashing runs far faster than a link), and one thread spares the
/// hand-offs between worker threads that a many-small-files fetch would
/// otherwise pay for each file. Blocking store work (locks, fsync) goes to
/// tokio's blocking pool.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Opens the store and fetches every planned source into it.
fn fetch_plan(net: &NetArgs, plan: &[PlannedSource]) -> anyhow::Result<(Arc<Store>, FetchSummary)> {
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let fetcher = fetcher(net, store.clone())?;
    let wants = wants(plan)?;
    let summary = runtime()?.block_on(fetcher.fetch_all(wants))?;
    Ok((store, summary))
}

pub fn run_fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args.specs)?;
    let (store, summary) = fetch_plan(&args.net, &plan)?;
    for (name, digest, u) in unpack_sources(&plan) {
        let opts = hermit_store::UnpackOptions {
            format: None,
            strip_components: u.strip_components,
        };
        hermit_store::unpack(&store, &digest, &opts)
            .with_context(|| format!("unpacking source {name:?} ({digest})"))?;
    }
    if !args.net.quiet {
        println!(
            "fetched {} ({}), already present {}",
            summary.fetched.len(),
            HumanBytes(summary.bytes()),
            summary.present.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_mirror(args: MirrorArgs) -> anyhow::Result<ExitCode> {
    let (records, specs): (Vec<PathBuf>, Vec<PathBuf>) = args
        .specs
        .iter()
        .cloned()
        .partition(|p| p.extension().is_some_and(|e| e == "json"));
    let plan = plan(&specs)?;
    let (store, _summary) = fetch_plan(&args.net, &plan)?;
    let mut extra = Vec::new();
    for s in &specs {
        extra.extend(crate::build::mirror_blobs_for_spec(&store, s)?);
    }
    for r in &records {
        extra.extend(crate::build::mirror_blobs_for_record(r)?);
    }
    let missing: Vec<String> = extra
        .iter()
        .filter(|b| store.blob(&b.digest).is_none())
        .map(|b| format!("{} ({})", b.digest, b.name))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "not in the store, so not mirrored: {}; build or fetch them first",
            missing.join(", ")
        );
    }
    let mut items: BTreeMap<Digest, MirrorItem> = BTreeMap::new();
    for b in extra {
        let item = items.entry(b.digest).or_insert_with(|| MirrorItem {
            digest: b.digest,
            names: Vec::new(),
            urls: Vec::new(),
        });
        if !item.names.contains(&b.name) {
            item.names.push(b.name);
        }
        item.urls.extend(b.urls);
    }
    for p in &plan {
        let item = items.entry(p.digest).or_insert_with(|| MirrorItem {
            digest: p.digest,
            names: Vec::new(),
            urls: Vec::new(),
        });
        item.names.push(p.name.clone());
        item.urls.extend(p.urls.iter().cloned());
    }
    let items: Vec<MirrorItem> = items.into_values().collect();
    let report = write_mirror(&store, &args.to, &items, args.verify)
        .with_context(|| format!("writing the mirror {}", args.to.display()))?;
    if !args.net.quiet {
        let names = |d: &Digest| {
            items
                .iter()
                .find(|i| i.digest == *d)
                .map(|i| i.names.join(", "))
                .unwrap_or_default()
        };
        for (d, size) in &report.added {
            println!("added {d} ({}) {}", HumanBytes(*size), names(d));
        }
        for d in &report.replaced {
            println!("replaced damaged {d} {}", names(d));
        }
        let bytes: u64 = report.added.iter().map(|(_, n)| n).sum();
        println!(
            "mirror {}: added {} ({}), replaced {}, already present {}",
            args.to.display(),
            report.added.len(),
            HumanBytes(bytes),
            report.replaced.len(),
            report.present.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr: bars on a terminal, one line per event otherwise,
/// nothing with `--quiet` (errors still reach the final report).
struct CliReporter {
    mode: Mode,
}

enum Mode {
    Quiet,
    Plain,
    Bars {
        multi: MultiProgress,
        style: ProgressStyle,
        bars: Mutex<HashMap<usize, ProgressBar>>,
    },
}

impl CliReporter {
    fn new(net: &NetArgs) -> CliReporter {
        let mode = if net.quiet {
            Mode::Quiet
        } else if net.no_progress || !std::io::stderr().is_terminal() {
            Mode::Plain
        } else {
            let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let template = if color {
                "{spinner:.green} {prefix:30!} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            } else {
                "{spinner} {prefix:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            };
            match ProgressStyle::with_template(template) {
                Ok(style) => Mode::Bars {
                    multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                    style: style.progress_chars("=> "),
                    bars: Mutex::new(HashMap::new()),
                },
                Err(_) => Mode::Plain,
            }
        };
        CliReporter { mode }
    }

    fn line(&self, msg: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{msg}"),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
        }
    }
}

fn short_label(label: &str) -> &str {
    // `source "x" in spec.toml` → `x` for the bar's prefix.
    label.split('"').nth(1).unwrap_or(label)
}

impl Reporter for CliReporter {
    fn start(&self, id: usize, label: &str, _location: &str, size: Option<u64>) {
        if let Mode::Bars { multi, style, bars } = &self.mode {
            let pb = multi.add(ProgressBar::new(size.unwrap_or(0)));
            pb.set_style(style.clone());
            pb.set_prefix(short_label(label).to_string());
            if let Ok(mut b) = bars.lock() {
                if let Some(old) = b.insert(id, pb) {
                    old.finish_and_clear();
                }
            }
        }
    }

    fn progress(&self, id: usize, bytes: u64) {
        if let Mode::Bars { bars, .. } = &self.mode {
            if let Some(pb) = bars.lock().ok().and_then(|b| b.get(&id).cloned()) {
                pb.set_position(bytes);
            }
        }
    }

    fn retry(&self, _id: usize, location: &str, attempt: u32, delay: Duration, reason: &str) {
        self.line(&format!(
            "retrying {location} in {:.1}s (retry {attempt}): {reason}",
            delay.as_secs_f64()
        ));
    }

    fn error(&self, _id: usize, location: &str, reason: &str) {
        self.line(&format!("{location}: {reason}"));
    }

    fn finish(&self, id: usize, label: &str, outcome: &Outcome) {
        if let Mode::Bars { bars, .. } = &self.mode {
            if let Some(pb) = bars.lock().ok().and_then(|mut b| b.remove(&id)) {
                pb.finish_and_clear();
            }
        }
        if let Outcome::Fetched { bytes, location } = outcome {
            self.line(&format!(
                "fetched {label} ({}) from {location}",
                HumanBytes(*bytes)
            ));
        }
    }
}
