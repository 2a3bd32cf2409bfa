//! Fetching: bringing wanted blobs into the store, checked by hash.
//!
//! For every [`Want`] (a digest, maybe a size, and the URLs it was published
//! at) the [`Fetcher`] looks, in order:
//!
//! 1. in the store (nothing to do);
//! 2. in each configured content-addressed [`Mirror`], at `<mirror>/sha256/<hex>`
//!    (a local folder, a `file://` URL or an `http(s)://` URL);
//! 3. at the want's URLs, in order (`http`, `https`, `file`).
//!
//! The first location that yields the right bytes wins. Bytes are streamed
//! into [`Store::blob_writer`], hashed and size-checked on the way (a body
//! longer than the expected size is cut off at once), and committed only if
//! the digest matches; a location that serves wrong bytes stores nothing and
//! the next one is tried. If every location fails, the error lists each one
//! and why.
//!
//! Check-and-fetch of one digest happens under [`Store::lock`], so concurrent
//! hermit processes on one store download each digest once. Downloads run
//! concurrently, at most [`FetchOptions::jobs`] at a time. Transient failures
//! (5xx, 408, 429, connection errors, timeouts, bodies cut short) are retried
//! with exponential backoff; 4xx answers and digest or size mismatches are
//! not. `offline` never touches the network, and [`Fetcher::fetch_all`]
//! fails before fetching anything if some want is not obtainable offline.
//!
//! The caller builds the tokio runtime (the binary does; the sandbox process
//! never has one). Progress goes to a [`Reporter`]; nothing here prints.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::digest::Digest;
use crate::store::{Store, StoreError};

pub use reqwest::Url;

/// Errors from fetching.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("mirror {0:?} is neither a folder path nor a file://, http:// or https:// URL")]
    BadMirror(String),
    #[error("URL {url:?} for {label}: {reason}")]
    BadUrl {
        url: String,
        label: String,
        reason: String,
    },
    #[error("setting up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{}", render_offline(missing))]
    Offline { missing: Vec<Missing> },
    #[error(
        "could not fetch {label} ({digest}); tried:{}",
        render_attempts(attempts)
    )]
    AllFailed {
        label: String,
        digest: Digest,
        attempts: Vec<Attempt>,
    },
    #[error("{} of the wanted blobs could not be fetched:\n{}", errors.len(), render_many(errors))]
    Many { errors: Vec<FetchError> },
    #[error("a fetch task failed: {0}")]
    Task(String),
}

/// One location tried for a digest, and why it did not deliver.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub location: String,
    pub reason: String,
}

/// A digest that cannot be obtained without the network.
#[derive(Debug, Clone)]
pub struct Missing {
    pub digest: Digest,
    pub label: String,
}

fn render_attempts(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return " nowhere (no mirrors and no usable URLs)".to_string();
    }
    attempts
        .iter()
        .map(|a| format!("\n  - {}: {}", a.location, a.reason))
        .collect()
}

fn render_offline(missing: &[Missing]) -> String {
    let mut s = format!(
        "--offline: {} blob(s) are neither in the store nor in a local mirror; nothing was fetched:",
        missing.len()
    );
    for m in missing {
        s.push_str(&format!("\n  - {} ({})", m.digest, m.label));
    }
    s.push_str(
        "\nfetch them once with network (`hermit fetch SPEC`), or add `--mirror DIR` holding them",
    );
    s
}

fn render_many(errors: &[FetchError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Something to bring into the store.
#[derive(Debug, Clone)]
pub struct Want {
    pub digest: Digest,
    /// Expected size in bytes, when known; checked while streaming.
    pub size: Option<u64>,
    /// Where it was published, tried in order after the mirrors.
    pub urls: Vec<Url>,
    /// Who wants it, for messages (e.g. `source "zlib" in zlib/spec.toml`).
    pub label: String,
}

/// A content-addressed mirror: blobs live at `<mirror>/sha256/<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// A local folder (given as a path or a `file://` URL).
    Dir(PathBuf),
    /// An `http://` or `https://` base URL.
    Http(Url),
}

impl Mirror {
    /// Parses a mirror as written by a user; relative paths are resolved
    /// against `base`.
    pub fn parse(s: &str, base: &Path) -> Result<Mirror, FetchError> {
        let bad = || FetchError::BadMirror(s.to_string());
        if s.is_empty() {
            return Err(bad());
        }
        if let Some((scheme, _)) = s.split_once("://") {
            let url = Url::parse(s).map_err(|_| bad())?;
            return match scheme {
                "http" | "https" => {
                    let mut url = url;
                    if !url.path().ends_with('/') {
                        url.set_path(&format!("{}/", url.path()));
                    }
                    Ok(Mirror::Http(url))
                }
                "file" => url.to_file_path().map(Mirror::Dir).map_err(|_| bad()),
                _ => Err(bad()),
            };
        }
        Ok(Mirror::Dir(base.join(s)))
    }

    /// True when using it needs no network.
    pub fn is_local(&self) -> bool {
        matches!(self, Mirror::Dir(_))
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mirror::Dir(p) => write!(f, "{}", p.display()),
            Mirror::Http(u) => write!(f, "{u}"),
        }
    }
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub mirrors: Vec<Mirror>,
    /// Never touch the network.
    pub offline: bool,
    /// Concurrent downloads.
    pub jobs: usize,
    pub connect_timeout: Duration,
    /// Longest wait for the response head or for the next bytes of the body.
    pub read_timeout: Duration,
    /// Retries per location after a transient failure.
    pub retries: u32,
    /// First retry delay; doubled for each further retry.
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            mirrors: Vec::new(),
            offline: false,
            jobs: 8,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_millis(250),
        }
    }
}

/// How one want ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already in the store (or put there meanwhile by another process).
    Present,
    /// Fetched `bytes` from `location`.
    Fetched { bytes: u64, location: String },
    /// Could not be fetched (the error is in [`FetchError::Many`]).
    Failed,
}

/// Progress events, one stream per want (`id` is its index in the list
/// given to [`Fetcher::fetch_all`], after merging duplicates). Implemented by
/// the binary; every method has an empty default.
pub trait Reporter: Send + Sync {
    /// Bytes start flowing from `location`.
    fn start(&self, _id: usize, _label: &str, _location: &str, _size: Option<u64>) {}
    /// `bytes` received so far from the current location.
    fn progress(&self, _id: usize, _bytes: u64) {}
    /// A transient failure at `location`; trying again after `delay`.
    fn retry(&self, _id: usize, _location: &str, _attempt: u32, _delay: Duration, _reason: &str) {}
    /// `location` gave up; the next one will be tried.
    fn error(&self, _id: usize, _location: &str, _reason: &str) {}
    /// The want is done.
    fn finish(&self, _id: usize, _label: &str, _outcome: &Outcome) {}
}

/// A reporter that ignores everything.
pub struct NoReporter;
impl Reporter for NoReporter {}

/// What [`Fetcher::fetch_all`] did.
#[derive(Debug, Clone, Default)]
pub struct FetchSummary {
    /// Digests fetched now, with their sizes.
    pub fetched: Vec<(Digest, u64)>,
    /// Digests that were already in the store.
    pub present: Vec<Digest>,
}

impl FetchSummary {
    pub fn bytes(&self) -> u64 {
        self.fetched.iter().map(|(_, n)| n).sum()
    }
}

/// Fetches wants into a store. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    client: reqwest::Client,
    opts: FetchOptions,
    reporter: Arc<dyn Reporter>,
    /// Per server (`host:port`): requests waiting for their response
    /// headers (see [`MAX_CONNECTING`]).
    servers: std::sync::Mutex<BTreeMap<String, Arc<Server>>>,
    /// Transfers under way (at most `jobs`). A download gives its slot back
    /// as soon as its last byte is in, before the blob is committed
    /// (fsync, rename), so the connection serves the next download at once.
    downloads: Semaphore,
    /// Recent commit (fsync, rename) durations in ns, smoothed; `u64::MAX`
    /// until one is known. See [`INLINE_COMMIT`].
    commit_ns: std::sync::atomic::AtomicU64,
}

/// A downloaded blob is committed (fsync, rename, fsync of the folder) on a
/// worker thread, so a slow disk never stalls the transfers running on the
/// network thread. When commits have been taking less than this — a store on
/// tmpfs or a fast SSD — the hand-off to the worker and back costs more than
/// the commit, and it runs in place instead. One slow commit is enough to go
/// back to the worker.
const INLINE_COMMIT: Duration = Duration::from_micros(200);

/// At first, at most this many requests to one server wait for their
/// response headers at once (up to `jobs` bodies still stream in parallel).
/// Small static servers drop connections that arrive faster than they
/// accept them, and each drop costs a 1 s SYN retransmit:
/// `python3 -m http.server` listens with a backlog of 5, so its accept queue
/// holds 6 connections, and 6 requests waiting can never overflow it (8 do,
/// with curl too). Once a server answers on a connection it keeps open (HTTP/1.1
/// keep-alive, HTTP/2), further requests reuse pooled connections rather
/// than open new ones, and the limit rises to `jobs`.
const MAX_CONNECTING: usize = 6;

/// What hermit knows of one server during a fetch.
struct Server {
    connecting: Semaphore,
    /// Set once the server kept a connection open (the limit was raised).
    keeps_alive: std::sync::atomic::AtomicBool,
}

/// Whether the connection that brought `resp` stays open for the next
/// request.
fn keeps_alive(resp: &reqwest::Response) -> bool {
    let close = resp
        .headers()
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("close"))
        });
    resp.version() >= reqwest::Version::HTTP_11 && !close
}

/// Where bytes can come from.
#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    Http(Url),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Http(u) => write!(f, "{u}"),
        }
    }
}

/// Why one try at one location failed.
enum TryError {
    /// Try again later at the same location.
    Transient(String),
    /// Move on to the next location.
    Permanent(String),
    /// Stop: the store itself failed (disk full, permissions).
    Fatal(FetchError),
}

impl Fetcher {
    pub fn new(
        store: Arc<Store>,
        opts: FetchOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Fetcher, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .pool_max_idle_per_host(opts.jobs.max(1))
            .user_agent(concat!("hermit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(FetchError::Client)?;
        let downloads = Semaphore::new(opts.jobs.max(1));
        Ok(Fetcher {
            inner: Arc::new(Inner {
                store,
                client,
                opts,
                reporter,
                servers: std::sync::Mutex::new(BTreeMap::new()),
                downloads,
                commit_ns: std::sync::atomic::AtomicU64::new(u64::MAX),
            }),
        })
    }

    /// The locations for `want`, in lookup order, skipping the network when
    /// offline.
    fn locations(&self, want: &Want) -> Vec<Location> {
        let offline = self.inner.opts.offline;
        let hex = want.digest.hex();
        let mut out = Vec::new();
        for m in &self.inner.opts.mirrors {
            match m {
                Mirror::Dir(d) => out.push(Location::File(d.join("sha256").join(&hex))),
                Mirror::Http(base) if !offline => {
                    if let Ok(u) = base.join(&format!("sha256/{hex}")) {
                        out.push(Location::Http(u));
                    }
                }
                Mirror::Http(_) => {}
            }
        }
        for u in &want.urls {
            match u.scheme() {
                "file" => {
                    if let Ok(p) = u.to_file_path() {
                        out.push(Location::File(p));
                    }
                }
                "http" | "https" if !offline => out.push(Location::Http(u.clone())),
                _ => {}
            }
        }
        out
    }

    /// The wants that cannot be obtained without the network: not in the
    /// store, not in a local mirror, no existing `file://` URL.
    pub fn missing_offline(&self, wants: &[Want]) -> Vec<Missing> {
        let mut missing = Vec::new();
        for w in wants {
            if self.inner.store.blob(&w.digest).is_some() {
                continue;
            }
            let found = self.locations(w).iter().any(|l| match l {
                Location::File(p) => std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && w.size.is_none_or(|s| s == m.len())),
                Location::Http(_) => false,
            });
            if !found {
                missing.push(Missing {
                    digest: w.digest,
                    label: w.label.clone(),
                });
            }
        }
        missing
    }

    /// Brings every want into the store. Wants with the same digest are
    /// merged (their URLs tried in turn). When offline, fails before fetching
    /// anything if something is missing.
    pub async fn fetch_all(&self, wants: Vec<Want>) -> Result<FetchSummary, FetchError> {
        let wants = merge(wants);
        if self.inner.opts.offline {
            let missing = self.missing_offline(&wants);
            if !missing.is_empty() {
                return Err(FetchError::Offline { missing });
            }
        }
        // Wants in progress: twice the transfers, so that blobs being
        // committed do not hold transfers back, while lock files and temp
        // files stay bounded.
        let sem = Arc::new(Semaphore::new(self.inner.opts.jobs.max(1) * 2));
        let mut set = JoinSet::new();
        for (id, want) in wants.into_iter().enumerate() {
            let this = self.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = this.fetch_one(id, &want).await;
                let outcome = match &r {
                    Ok(Some(bytes)) => Outcome::Fetched {
                        bytes: bytes.1,
                        location: bytes.0.clone(),
                    },
                    Ok(None) => Outcome::Present,
                    Err(_) => Outcome::Failed,
                };
                this.inner.reporter.finish(id, &want.label, &outcome);
                (id, want.digest, r)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = set.join_next().await {
            results.push(joined.map_err(|e| FetchError::Task(e.to_string()))?);
        }
        results.sort_by_key(|r| r.0);
        let mut summary = FetchSummary::default();
        let mut errors = Vec::new();
        for (_, digest, r) in results {
            match r {
                Ok(Some((_, bytes))) => summary.fetched.push((digest, bytes)),
                Ok(None) => summary.present.push(digest),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(summary),
            1 => Err(errors.remove(0)),
            _ => Err(FetchError::Many { errors }),
        }
    }

    /// Fetches one want under its digest lock. `None` when it was present.
    async fn fetch_one(&self, id: usize, want: &Want) -> Result<Option<(String, u64)>, FetchError> {
        let store = &self.inner.store;
        if store.blob(&want.digest).is_some() {
            return Ok(None);
        }
        // The lock is almost always free: take it here, and wait for it on
        // the blocking pool only when another process holds it.
        let lock = match store.try_lock(&want.digest)? {
            Some(lock) => lock,
            None => {
                let store = store.clone();
                let d = want.digest;
                tokio::task::spawn_blocking(move || store.lock(&d))
                    .await
                    .map_err(|e| FetchError::Task(e.to_string()))??
            }
        };
        // Another process may have fetched it while we waited for the lock.
        if store.blob(&want.digest).is_some() {
            return Ok(None);
        }
        let mut attempts = Vec::new();
        for loc in self.locations(want) {
            match self.via_location(id, want, &loc).await {
                Ok(bytes) => {
                    drop(lock);
                    return Ok(Some((loc.to_string(), bytes)));
                }
                Err(TryError::Fatal(e)) => return Err(e),
                Err(TryError::Permanent(reason)) | Err(TryError::Transient(reason)) => {
                    self.inner.reporter.error(id, &loc.to_string(), &reason);
                    attempts.push(Attempt {
                        location: loc.to_string(),
                        reason,
                    });
                }
            }
        }
        Err(FetchError::AllFailed {
            label: want.label.clone(),
            digest: want.digest,
            attempts,
        })
    }

    /// Tries one location, retrying transient failures with backoff.
    async fn via_location(&self, id: usize, want: &Want, loc: &Location) -> Result<u64, TryError> {
        let opts = &self.inner.opts;
        let mut attempt = 0u32;
        loop {
            let r = match loc {
                Location::File(p) => self.via_file(id, want, p).await,
                Location::Http(u) => self.via_http(id, want, u).await,
            };
            match r {
                Err(TryError::Transient(reason)) if attempt < opts.retries => {
                    let delay = opts.backoff.saturating_mul(1 << attempt.min(16));
                    attempt += 1;
                    self.inner
                        .reporter
                        .retry(id, &loc.to_string(), attempt, delay, &reason);
                    tokio::time::sleep(delay).await;
                }
                Err(TryError::Transient(reason)) if attempt > 0 => {
                    return Err(TryError::Transient(format!(
                        "{reason} (after {attempt} retries)"
                    )))
                }
                other => return other,
            }
        }
    }

    async fn via_file(&self, id: usize, want: &Want, path: &Path) -> Result<u64, TryError> {
        let _transfer = permit(&self.inner.downloads).await?;
        let store = self.inner.store.clone();
        let reporter = self.inner.reporter.clone();
        let want = want.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || copy_file(&store, &*reporter, id, &want, &path))
            .await
            .map_err(|e| TryError::Fatal(FetchError::Task(e.to_string())))?
    }

    /// The per-server state for `url`'s host and port.
    fn server(&self, url: &Url) -> Arc<Server> {
        let key = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut servers = match self.inner.servers.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        servers
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Server {
                    connecting: Semaphore::new(MAX_CONNECTING),
                    keeps_alive: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }

    async fn via_http(&self, id: usize, want: &Want, url: &Url) -> Result<u64, TryError> {
        let opts = &self.inner.opts;
        let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        let transfer = permit(&self.inner.downloads).await?;
        let server = self.server(url);
        let connecting = permit(&server.connecting).await?;
        let send = self.inner.client.get(url.clone()).send();
        let sent = tokio::time::timeout(opts.read_timeout, send).await;
        drop(connecting);
        if let Ok(Ok(resp)) = &sent {
            if keeps_alive(resp)
                && !server
                    .keeps_alive
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                server
                    .connecting
                    .add_permits(opts.jobs.saturating_sub(MAX_CONNECTING));
            }
        }
        let mut resp = match sent {
            Err(_) => {
                return Err(TryError::Transient(format!(
                    "no response within {} (read timeout)",
                    secs(opts.read_timeout)
                )))
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let msg = format!("HTTP {status}");
            let code = status.as_u16();
            return Err(if status.is_server_error() || code == 408 || code == 429 {
                TryError::Transient(msg)
            } else {
                TryError::Permanent(msg)
            });
        }
        if let (Some(announced), Some(size)) = (resp.content_length(), want.size) {
            if announced != size {
                return Err(TryError::Permanent(format!(
                    "the server announces {announced} bytes but {size} are expected; nothing was stored"
                )));
            }
        }
        let mut w = self.inner.store.blob_writer().map_err(fatal)?;
        let location = url.to_string();
        self.inner.reporter.start(
            id,
            &want.label,
            &location,
            want.size.or(resp.content_length()),
        );
        loop {
            let chunk = match tokio::time::timeout(opts.read_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(TryError::Transient(format!(
                        "no data for {} after {} bytes (read timeout)",
                        secs(opts.read_timeout),
                        w.size()
                    )))
                }
                Ok(Err(e)) => {
                    return Err(TryError::Transient(format!(
                        "body cut short after {} bytes: {}",
                        w.size(),
                        error_chain(&e)
                    )))
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if let Some(size) = want.size {
                if w.size() + chunk.len() as u64 > size {
                    return Err(TryError::Permanent(format!(
                        "body is longer than the expected {size} bytes; aborted, nothing was stored"
                    )));
                }
            }
            w.write_all(&chunk)
                .map_err(|e| fatal(StoreError::io("writing", self.inner.store.tmp_dir())(e)))?;
            self.inner.reporter.progress(id, w.size());
        }
        drop(resp);
        drop(transfer);
        let digest = want.digest;
        let size = want.size;
        let this = self.clone();
        let commit = move || {
            let n = w.size();
            let start = std::time::Instant::now();
            let r = w.commit(&location, Some(&digest), size).map(|_| n);
            this.commit_took(start.elapsed());
            r
        };
        let fast = self
            .inner
            .commit_ns
            .load(std::sync::atomic::Ordering::Relaxed)
            < INLINE_COMMIT.as_nanos() as u64;
        if fast {
            commit().map_err(commit_error)
        } else {
            tokio::task::spawn_blocking(commit)
                .await
                .map_err(|e| TryError::Fatal(FetchError::Task(e.to_string())))?
                .map_err(commit_error)
        }
    }

    fn commit_took(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.inner.commit_ns.load(Relaxed);
        self.inner.commit_ns.store(smoothed(old, ns), Relaxed);
    }
}

/// Folds a commit's duration `ns` into the smoothed figure `old`: the mean
/// of the last few, except that a slow one counts in full at once (and the
/// first one is taken as it is).
fn smoothed(old: u64, ns: u64) -> u64 {
    if old == u64::MAX || ns >= INLINE_COMMIT.as_nanos() as u64 {
        ns
    } else {
        old.saturating_mul(3).saturating_add(ns) / 4
    }
}

/// Waits for a slot of `sem` (never closed, so an error is a bug).
async fn permit(sem: &Semaphore) -> Result<tokio::sync::SemaphorePermit<'_>, TryError> {
    sem.acquire()
        .await
        .map_err(|e| TryError::Fatal(FetchError::Task(e.to_string())))
}

fn fatal(e: StoreError) -> TryError {
    TryError::Fatal(FetchError::Store(e))
}

/// A commit that failed verification moves on; one that failed on disk stops.
fn commit_error(e: StoreError) -> TryError {
    match e {
        StoreError::Mismatch {
            expected, actual, ..
        } => TryError::Permanent(format!(
            "digest mismatch: expected {expected}, got {actual}; nothing was stored"
        )),
        StoreError::SizeMismatch {
            expected, actual, ..
        } => TryError::Permanent(format!(
            "size mismatch: expected {expected} bytes, got {actual}; nothing was stored"
        )),
        other => fatal(other),
    }
}

/// Copies a local file (mirror entry or `file://` URL) into the store.
fn copy_file(
    store: &Store,
    reporter: &dyn Reporter,
    id: usize,
    want: &Want,
    path: &Path,
) -> Result<u64, TryError> {
    // O_NONBLOCK: opening a fifo must not wait for a writer.
    let opened = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        libc::O_NONBLOCK | libc::O_CLOEXEC,
    )
    .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TryError::Permanent("not found".to_string()))
        }
        Err(e) => return Err(TryError::Permanent(format!("cannot open: {e}"))),
    };
    let meta = f
        .metadata()
        .map_err(|e| TryError::Permanent(format!("cannot stat: {e}")))?;
    // A mirror entry that is a device or fifo (a symlink to /dev/zero, say)
    // would never end: only regular files are read, and never past their size.
    if !meta.is_file() {
        return Err(TryError::Permanent(
            "not a regular file; nothing was stored".to_string(),
        ));
    }
    let len = meta.len();
    let mut f = f.take(len + 1);
    if let Some(size) = want.size {
        if len != size {
            return Err(TryError::Permanent(format!(
                "file has {len} bytes but {size} are expected; nothing was stored"
            )));
        }
    }
    let location = path.display().to_string();
    reporter.start(id, &want.label, &location, Some(len));
    let mut w = store.blob_writer().map_err(fatal)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TryError::Permanent(format!("reading: {e}"))),
        };
        w.write_all(&buf[..n])
            .map_err(|e| fatal(StoreError::io("writing", store.tmp_dir())(e)))?;
        reporter.progress(id, w.size());
    }
    let n = w.size();
    w.commit(&location, Some(&want.digest), want.size)
        .map(|_| n)
        .map_err(commit_error)
}

/// Transient or not, for errors before the body.
fn classify(e: &reqwest::Error) -> TryError {
    let msg = error_chain(e);
    if e.is_builder() || e.is_redirect() {
        TryError::Permanent(msg)
    } else if e.is_timeout() {
        TryError::Transient(format!("timed out: {msg}"))
    } else {
        TryError::Transient(msg)
    }
}

/// reqwest's errors keep the interesting part (connection refused, reset)
/// in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let top = e.to_string();
    // "error sending request for url (...)" repeats the URL we already name.
    let (mut s, mut cur) = match e.source() {
        Some(src) if top.starts_with("error sending request") => (src.to_string(), src.source()),
        _ => (top, e.source()),
    };
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Merges wants with the same digest: labels joined, URLs concatenated
/// without repeats, the first known size kept. Order of first appearance.
fn merge(wants: Vec<Want>) -> Vec<Want> {
    let mut index: BTreeMap<Digest, usize> = BTreeMap::new();
    let mut out: Vec<Want> = Vec::new();
    for w in wants {
        match index.get(&w.digest) {
            Some(&i) => {
                let m = &mut out[i];
                if !m.label.contains(&w.label) {
                    m.label = format!("{}, {}", m.label, w.label);
                }
                for u in w.urls {
                    if !m.urls.contains(&u) {
                        m.urls.push(u);
                    }
                }
                m.size = m.size.or(w.size);
            }
            None => {
                index.insert(w.digest, out.len());
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commits_run_in_place_only_while_they_stay_fast() {
        let limit = INLINE_COMMIT.as_nanos() as u64;
        let fast = |ns| ns < limit;
        // Unknown until the first commit: on the worker.
        assert!(!fast(u64::MAX));
        let mut s = smoothed(u64::MAX, 30_000);
        assert!(fast(s));
        // One slow commit sends the next ones back to the worker at once...
        s = smoothed(s, 4_000_000);
        assert_eq!(s, 4_000_000);
        assert!(!fast(s));
        // ...and it takes a run of about ten fast ones to come back.
        let mut runs = 0;
        while !fast(s) {
            s = smoothed(s, 30_000);
            runs += 1;
        }
        assert!((8..=12).contains(&runs), "{runs}");
    }

    fn want(data: &[u8], urls: &[&str]) -> Want {
        Want {
            digest: Digest::of(data),
            size: Some(data.len() as u64),
            urls: urls.iter().map(|u| Url::parse(u).unwrap()).collect(),
            label: "test".into(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn mirror_parse() {
        let base = Path::new("/base");
        assert_eq!(
            Mirror::parse("m", base).unwrap(),
            Mirror::Dir("/base/m".into())
        );
        assert_eq!(
            Mirror::parse("file:///srv/m", base).unwrap(),
            Mirror::Dir("/srv/m".into())
        );
        assert_eq!(
            Mirror::parse("http://h:1/a", base).unwrap(),
            Mirror::Http(Url::parse("http://h:1/a/").unwrap())
        );
        assert!(Mirror::parse("ftp://h/a", base).is_err());
    }

    #[test]
    fn merge_joins_duplicates() {
        let a = want(b"a", &["http://x/1"]);
        let mut b = want(b"a", &["http://x/2", "http://x/1"]);
        b.label = "other".into();
        let m = merge(vec![a, b, want(b"b", &[])]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].urls.len(), 2);
        assert_eq!(m[0].label, "test, other");
    }

    #[test]
    fn file_url_and_mirror_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("store")).unwrap());
        let mirror = dir.path().join("mirror");
        std::fs::create_dir_all(mirror.join("sha256")).unwrap();
        std::fs::write(mirror.join("sha256").join(Digest::of(b"m").hex()), b"m").unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"f").unwrap();
        let opts = FetchOptions {
            mirrors: vec![Mirror::Dir(mirror)],
            offline: true,
            ..FetchOptions::default()
        };
        let f = Fetcher::new(store.clone(), opts, Arc::new(NoReporter)).unwrap();
        let furl = Url::from_file_path(&file).unwrap();
        let wants = vec![
            want(b"m", &["http://127.0.0.1:9/never"]),
            want(b"f", &[furl.as_str()]),
        ];
        let s = rt().block_on(f.fetch_all(wants.clone())).unwrap();
        assert_eq!(s.fetched.len(), 2);
        let s = rt().block_on(f.fetch_all(wants)).unwrap();
        assert_eq!(s.present.len(), 2);
        // Missing offline: fails before anything, naming the digest.
        let err = rt()
            .block_on(f.fetch_all(vec![want(b"zz", &["http://127.0.0.1:9/x"])]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&Digest::of(b"zz").to_string()), "{err}");
    }

    #[test]
    fn wrong_bytes_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("store")).unwrap());
        let file = dir.path().join("f");
        std::fs::write(&file, b"evil").unwrap();
        let f = Fetcher::new(store.clone(), FetchOptions::default(), Arc::new(NoReporter)).unwrap();
        let mut w = want(b"good", &[Url::from_file_path(&file).unwrap().as_str()]);
        w.size = None;
        let err = rt().block_on(f.fetch_all(vec![w])).unwrap_err().to_string();
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(err.contains(&Digest::of(b"evil").to_string()), "{err}");
        assert!(store.blob(&Digest::of(b"evil")).is_none());
        assert!(store.blob(&Digest::of(b"good")).is_none());
    }
}
