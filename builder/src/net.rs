//! The network side of every command: the flags that shape fetching, the
//! fetcher they configure (store → mirrors → URLs, every byte hash-checked),
//! its progress on stderr, and the one-call `fetch` of whatever the store
//! lacks.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hermit_store::fetch::Outcome;
use hermit_store::{FetchOptions, Fetcher, Reporter, Store, Want};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config;

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
    /// Archives of old Debian packages (URLs of an archive's root, the
    /// directory holding `pool/`) to fetch a lock's .debs from when its
    /// toolchain image must be made again; set by the commands that build
    /// (`--debian-archive`), see [`crate::debrestore::archives`].
    #[arg(skip)]
    pub debian_archives: Vec<String>,
    /// The REAPI remote, when the command has one (`--remote` or config):
    /// its CAS is tried after the mirrors and before the URLs.
    #[arg(skip)]
    pub remote: Option<std::sync::Arc<crate::remote::client::Session>>,
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
            debian_archives: Vec::new(),
            remote: None,
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

/// Fetches whatever of `wants` is not in the store yet (no runtime is
/// started when everything is present).
pub fn fetch(store: &Arc<Store>, net: &NetArgs, wants: Vec<Want>) -> anyhow::Result<()> {
    let wants: Vec<Want> = wants
        .into_iter()
        .filter(|w| store.blob(&w.digest).is_none())
        .collect();
    if wants.is_empty() {
        return Ok(());
    }
    let wants = crate::remote::cache::fetch_from_remote(store, net, wants)?;
    if wants.is_empty() {
        return Ok(());
    }
    let fetcher: Fetcher = fetcher(net, store.clone())?;
    let rt = runtime()?;
    rt.block_on(fetcher.fetch_all(wants))?;
    Ok(())
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
