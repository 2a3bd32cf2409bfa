//! `hermit build --remote-exec URL`: each build of the graph that the store
//! lacks is executed by the remote's Execution service (BuildGrid hands it
//! to a `hermit worker`) instead of in a local sandbox. The graph scheduler
//! is unchanged: it calls [`crate::pipeline::build`] per node, independent
//! nodes at once, and the pipeline calls [`build`] here in place of its
//! materialise → run → collect stages.
//!
//! For one build:
//!
//! 1. Everything the worker needs is brought into the local store first:
//!    the remote sources (fetched as for a local build), the local trees'
//!    canonical tars, the toolchain image's blobs (there already), and each
//!    input's output as a canonical tar.
//! 2. The action is [`super::action::Action::of_plan`]'s, with one addition
//!    to the input root: a directory `blobs/` listing every blob
//!    `action.json` names as a file named by its sha256 (REAPI needs sizes
//!    to read a blob; `action.json` names digests only). So the executed
//!    Action's digest differs from the cache's; the result is also written
//!    under the cache's Action digest (when the server lets clients write
//!    its ActionCache), so `--remote` builds find it.
//! 3. FindMissingBlobs, then only the missing blobs are uploaded.
//! 4. Execute, waiting on the Operation stream (resumed with WaitExecution).
//! 5. The result is checked like a cache hit: `record.json` must be a
//!    record of exactly this build key, consistent with its own key inputs
//!    and spec; `output.tar` is stored only if it has the record's output
//!    digest; after it is unpacked and installed the output is hashed again
//!    against the record. Anything else is refused, naming the digest.
//!
//! A remote that cannot be reached or fails (not the build: the service)
//! never fails a build that can run here: a warning, then the local build.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hermit_remote::{reapi, Digest as RDigest, Endpoint, Remote};
use hermit_store::unpack::ExtractOptions;
use hermit_store::{Digest, Store};
use prost::Message;

use super::action::{self as act, hdigest, rdigest, Action};
use super::run_action::ActionJson;
use super::worker::BLOBS_DIR;
use crate::exit::{self, Exit};
use crate::net::NetArgs;
use crate::pipeline::collect::Staged;
use crate::pipeline::plan::Plan;
use crate::pipeline::{cache, materialise, resolve, BuildOptions, Built};
use crate::record::SourceRecord;

/// A connection to an execution service, shared by every build of a graph.
pub struct RemoteExec {
    pub endpoint: Endpoint,
    rt: tokio::runtime::Runtime,
    /// `None` when the service could not be reached (then every build is
    /// local, after one warning).
    remote: Option<Remote>,
    /// Free slots for builds that fall back to a local sandbox: every
    /// ready node is sent away at once, but if the service fails partway,
    /// no more than `-j` of them build here at once.
    local_free: std::sync::Mutex<usize>,
    local_freed: std::sync::Condvar,
}

/// A slot for one local fallback build ([`RemoteExec::local_slot`]).
pub struct LocalSlot<'a>(&'a RemoteExec);

impl Drop for LocalSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut free) = self.0.local_free.lock() {
            *free += 1;
        }
        self.0.local_freed.notify_one();
    }
}

impl std::fmt::Debug for RemoteExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteExec({})", self.endpoint)
    }
}

/// How long one remote build may take before hermit gives up on it.
const EXECUTE_LIMIT: Duration = Duration::from_secs(24 * 3600);

impl RemoteExec {
    /// Connects to `url` (`grpc://HOST:PORT[/INSTANCE]`, `grpcs://…`); a
    /// service that cannot be reached is warned about, and builds run here.
    /// `local` is how many fallback builds may run here at once.
    pub fn connect(url: &str, quiet: bool, local: usize) -> anyhow::Result<Arc<RemoteExec>> {
        let endpoint = Endpoint::parse(url)
            .map_err(|e| Exit::user(format!("--remote-exec: {e}")))?
            .with_token(std::env::var("HERMIT_REMOTE_TOKEN").ok())
            .with_ca(crate::remote::client::ca_bundle()?)
            .with_identity(crate::remote::client::client_identity()?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let remote = match rt.block_on(Remote::connect(
            endpoint.clone(),
            hermit_remote::Options::default(),
        )) {
            Ok(r) => Some(r),
            Err(e) => {
                if !quiet {
                    eprintln!("hermit: warning: remote execution on {endpoint} is unavailable ({e}); building here");
                }
                None
            }
        };
        Ok(Arc::new(RemoteExec {
            endpoint,
            rt,
            remote,
            local_free: std::sync::Mutex::new(local.max(1)),
            local_freed: std::sync::Condvar::new(),
        }))
    }
}

/// The execution service of `--remote-exec URL`, else of `remote_exec` in
/// the config file; `None` when neither is set.
pub fn from_args(
    flag: Option<&str>,
    quiet: bool,
    local: usize,
) -> anyhow::Result<Option<Arc<RemoteExec>>> {
    let url = match flag {
        Some(u) => u.to_string(),
        None => match crate::config::load()?.1.remote_exec {
            Some(u) => u,
            None => return Ok(None),
        },
    };
    Ok(Some(RemoteExec::connect(&url, quiet, local)?))
}

impl RemoteExec {
    /// Whether the service answered when connecting (else builds are local).
    pub fn connected(&self) -> bool {
        self.remote.is_some()
    }

    /// Waits for a slot to build here, after the service failed a build.
    pub fn local_slot(&self) -> LocalSlot<'_> {
        let mut free = match self.local_free.lock() {
            Ok(f) => f,
            Err(e) => e.into_inner(),
        };
        while *free == 0 {
            free = match self.local_freed.wait(free) {
                Ok(f) => f,
                Err(e) => e.into_inner(),
            };
        }
        *free -= 1;
        LocalSlot(self)
    }
}

/// Why a remote build did not give an output.
enum Failed {
    /// The service failed (down, refused, served something wrong): the
    /// build runs here instead.
    Service(anyhow::Error),
    /// The build itself failed on the worker: that is the build's result.
    Build(anyhow::Error),
}

/// Builds `plan` remotely and installs the output; `None` when the
/// service failed and the caller should build locally (already warned).
/// The caller holds the build key's lock.
pub fn build(
    store: &Arc<Store>,
    plan: &Plan,
    net: &NetArgs,
    opts: &BuildOptions,
    rx: &RemoteExec,
) -> anyhow::Result<Option<Built>> {
    let Some(remote) = &rx.remote else {
        return Ok(None);
    };
    match build_on(store, plan, net, opts, rx, remote) {
        Ok(b) => Ok(Some(b)),
        Err(Failed::Build(e)) => Err(e),
        Err(Failed::Service(e)) => {
            if !opts.quiet {
                eprintln!(
                    "hermit: warning: {}: remote execution on {} failed: {e:#}; building here",
                    plan.resolved.spec_path.display(),
                    rx.endpoint
                );
            }
            Ok(None)
        }
    }
}

/// The builds this process had executed remotely, by build key: what
/// `--json`'s `"remote_exec"` says of each.
static EXECUTED: std::sync::Mutex<std::collections::BTreeMap<Digest, serde_json::Value>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// `--json`'s `"remote_exec"` of a build: `null` unless it was executed
/// remotely, else `{"endpoint", "action", "operation", "worker"}`.
pub fn json(key: &Digest) -> serde_json::Value {
    EXECUTED
        .lock()
        .ok()
        .and_then(|m| m.get(key).cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn service(e: impl Into<anyhow::Error>) -> Failed {
    Failed::Service(e.into())
}

fn build_on(
    store: &Arc<Store>,
    plan: &Plan,
    net: &NetArgs,
    opts: &BuildOptions,
    rx: &RemoteExec,
    remote: &Remote,
) -> Result<Built, Failed> {
    let shown = plan.resolved.spec_path.display().to_string();
    // 1. What the worker needs, in the local store (a failure here is a
    // failure of the build's inputs, as it would be locally).
    gather_blobs(store, plan, net).map_err(Failed::Build)?;

    // 2. The action, with its blobs listed.
    let cache_action = Action::of_plan(plan);
    let action_json = ActionJson::parse(
        std::str::from_utf8(&cache_action.action_json).unwrap_or(""),
        "action.json",
    )
    .map_err(Failed::Build)?;
    let mut files: Vec<(RDigest, std::path::PathBuf)> = Vec::new();
    for (d, what) in action_json.blobs("action.json").map_err(Failed::Build)? {
        let path = store.blob(&d).ok_or_else(|| {
            Failed::Build(anyhow::anyhow!(
                "internal error: {what} ({d}) is not in the store after gathering"
            ))
        })?;
        let size = fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(Failed::Build)?
            .len();
        let rd = rdigest(&d, size);
        if !files.iter().any(|(x, _)| *x == rd) {
            files.push((rd, path));
        }
    }
    files.sort_by(|a, b| a.0.hash.cmp(&b.0.hash));
    let blobs_dir = reapi::Directory {
        files: files
            .iter()
            .map(|(d, _)| reapi::FileNode {
                name: d.hash.clone(),
                digest: Some(d.to_proto()),
                is_executable: false,
                node_properties: None,
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut root = reapi::Directory::decode(cache_action.input_root.as_slice())
        .map_err(|e| Failed::Build(anyhow::anyhow!("internal error: the input root: {e}")))?;
    root.directories.push(reapi::DirectoryNode {
        name: BLOBS_DIR.to_string(),
        digest: Some(RDigest::of(&blobs_dir).to_proto()),
    });
    let root = root.encode_to_vec();
    let mut action = reapi::Action::decode(cache_action.action.as_slice())
        .map_err(|e| Failed::Build(anyhow::anyhow!("internal error: the action: {e}")))?;
    action.input_root_digest = Some(RDigest::of(&root).to_proto());
    let action = action.encode_to_vec();
    let action_digest = RDigest::of(&action);

    // 3. Upload what the CAS lacks.
    let messages: Vec<&[u8]> = vec![
        &cache_action.action_json,
        &cache_action.command,
        &blobs_dir,
        &root,
        &action,
    ];
    let mut wanted: Vec<RDigest> = messages.iter().map(|m| RDigest::of(m)).collect();
    wanted.extend(files.iter().map(|(d, _)| d.clone()));
    let missing = rx
        .rt
        .block_on(remote.find_missing(&wanted))
        .map_err(service)?;
    for m in &messages {
        let d = RDigest::of(m);
        if missing.contains(&d) {
            rx.rt.block_on(remote.upload_blob(&d, m)).map_err(service)?;
        }
    }
    for (d, path) in &files {
        if missing.contains(d) {
            rx.rt
                .block_on(remote.upload_file(d, path))
                .map_err(service)?;
        }
    }

    // 4. Execute.
    if !opts.quiet {
        eprintln!(
            "hermit: {shown}: executing remotely on {} (action {action_digest})",
            rx.endpoint
        );
    }
    let (response, operation) = rx
        .rt
        .block_on(remote.execute(&action_digest, false, EXECUTE_LIMIT))
        .map_err(service)?;
    if let Some(st) = response.status.as_ref().filter(|s| s.code != 0) {
        return Err(service(anyhow::anyhow!(
            "operation {operation} of action {action_digest} ended with status {} ({})",
            st.code,
            st.message
        )));
    }
    let result = response.result.ok_or_else(|| {
        service(anyhow::anyhow!(
            "operation {operation} of action {action_digest} has no ActionResult"
        ))
    })?;
    let worker = result
        .execution_metadata
        .as_ref()
        .map(|m| m.worker.clone())
        .unwrap_or_default();
    if result.exit_code != 0 {
        return Err(Failed::Build(build_failed(
            store, rx, remote, &result, &shown, &worker,
        )));
    }

    // 5. Check and install.
    let built = install_result(store, plan, rx, remote, &result).map_err(service)?;
    if let Ok(mut m) = EXECUTED.lock() {
        m.insert(
            plan.key,
            serde_json::json!({
                "endpoint": rx.endpoint.to_string(),
                "action": action_digest.to_string(),
                "operation": operation,
                "worker": worker,
            }),
        );
    }
    if !opts.quiet {
        eprintln!(
            "hermit: {shown}: built remotely by worker {worker} (build key {})",
            plan.key
        );
    }
    // For `--remote` users: the result under the cache's Action digest,
    // with the record as installed here (its inputs' build keys filled in).
    if remote.action_cache_writable() {
        if let Err(e) = publish_for_cache(rx, remote, &cache_action, &result, &built) {
            if !opts.quiet {
                eprintln!(
                    "hermit: warning: writing the ActionCache entry of {}: {e}",
                    plan.key
                );
            }
        }
    }
    Ok(built)
}

/// Writes `result`, with `built`'s record, under the cache's Action digest.
fn publish_for_cache(
    rx: &RemoteExec,
    remote: &Remote,
    cache_action: &Action,
    result: &reapi::ActionResult,
    built: &Built,
) -> anyhow::Result<()> {
    let text = fs::read(&built.record_path)
        .with_context(|| format!("reading {}", built.record_path.display()))?;
    let d = RDigest::of(&text);
    rx.rt.block_on(remote.upload_blob(&d, &text))?;
    let mut result = result.clone();
    for f in &mut result.output_files {
        if f.path == act::OUTPUT_RECORD {
            f.digest = Some(d.to_proto());
        }
    }
    // The cache's own Action and its messages, so the entry is complete.
    for (bd, bytes) in cache_action.blobs() {
        rx.rt.block_on(remote.upload_blob(&bd, bytes))?;
    }
    let tar = act::rdigest(&built.record.output.digest, built.record.output.tar_size);
    rx.rt
        .block_on(remote.update_action_result(&cache_action.digest, result))?;
    rx.rt
        .block_on(crate::remote::cache::publish_index(remote, &[tar]))?;
    rx.rt.block_on(crate::remote::cache::publish_record_index(
        remote,
        &built.record.build_key,
        &d,
    ))?;
    Ok(())
}

/// Brings into the store every blob the worker will need: remote sources,
/// local trees, inputs' outputs as canonical tars (the image is there).
fn gather_blobs(store: &Arc<Store>, plan: &Plan, net: &NetArgs) -> anyhow::Result<()> {
    let r = &plan.resolved;
    crate::net::fetch(
        store,
        net,
        resolve::source_wants(&r.sources, &r.spec_path.display().to_string())?,
    )?;
    let sde = r.profile.source_date_epoch.default;
    for s in &r.sources {
        if let (
            SourceRecord::Local {
                name,
                include,
                exclude,
                tree,
                ..
            },
            Some(root),
        ) = (&s.record, &s.local_root)
        {
            crate::localtree::store_tree_blob(store, root, include, exclude, sde, tree)
                .with_context(|| format!("source {name:?}: storing {}", root.display()))?;
        }
    }
    for i in &r.inputs {
        if store.blob(&i.record.output).is_some() {
            continue;
        }
        let rec = match cache::check(store, &i.record.build_key, None) {
            cache::Stored::Good(b) => b.record,
            _ => anyhow::bail!(
                "input {:?}: its output (build key {}) is not in the store",
                i.record.name,
                i.record.build_key
            ),
        };
        crate::mirror::output_tar_blob(store, &i.record.build_key, &rec)?;
    }
    for d in r.image.digests() {
        if store.blob(&d).is_none() {
            anyhow::bail!("the toolchain image's blob {d} is not in the store");
        }
    }
    Ok(())
}

/// A failed remote build, as a build failure: the worker's error, its log
/// (fetched into this store, named and its tail shown).
fn build_failed(
    store: &Store,
    rx: &RemoteExec,
    remote: &Remote,
    result: &reapi::ActionResult,
    shown: &str,
    worker: &str,
) -> anyhow::Error {
    let mut why = String::new();
    if let Some(d) = result
        .stderr_digest
        .as_ref()
        .and_then(|d| RDigest::from_proto(d).ok())
    {
        if d.size <= 1 << 20 {
            if let Ok(bytes) = rx.rt.block_on(remote.read_blob(&d)) {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                // The worker's own message; its "log:" line names a path
                // on the worker, the log is fetched below.
                why = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_string();
            }
        }
    }
    let mut message = format!(
        "{shown}: the build failed on worker {worker} (exit code {}){}{why}",
        result.exit_code,
        if why.is_empty() { "" } else { ": " }
    );
    let mut log = None;
    if let Ok(d) = output_digest(result, act::OUTPUT_LOG) {
        if let (Ok(()), Ok(h)) = (fetch_blob(rx, remote, store, &d, "build.log"), hdigest(&d)) {
            let path = store.blob_path(&h);
            message.push_str(&format!(
                "\n  log: {}\n  its last lines:\n{}",
                path.display(),
                crate::graph::log_tail(&path, 20)
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            log = Some((h, path));
        }
    }
    let mut e = Exit::with_code(exit::BUILD_FAILED, message);
    if let Some((h, path)) = log {
        e = e.with_log(h).detail("log", path.display().to_string());
    }
    e.into()
}

/// The digest of output file `name` of a result.
fn output_digest(result: &reapi::ActionResult, name: &str) -> anyhow::Result<RDigest> {
    let f = result
        .output_files
        .iter()
        .find(|f| f.path == name)
        .ok_or_else(|| anyhow::anyhow!("the ActionResult has no {name}"))?;
    let d = f
        .digest
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the ActionResult's {name} has no digest"))?;
    Ok(RDigest::from_proto(d)?)
}

/// Checks a remote result and installs it as the output of `plan`.
fn install_result(
    store: &Arc<Store>,
    plan: &Plan,
    rx: &RemoteExec,
    remote: &Remote,
    result: &reapi::ActionResult,
) -> anyhow::Result<Built> {
    // The record: untrusted, checked against this build.
    let rd = output_digest(result, act::OUTPUT_RECORD)?;
    if rd.size > crate::limits::MAX_RECORD {
        anyhow::bail!("record.json {rd} is larger than a record may be");
    }
    let text = rx.rt.block_on(remote.read_blob(&rd))?;
    let text =
        String::from_utf8(text).map_err(|_| anyhow::anyhow!("record.json {rd} is not UTF-8"))?;
    let origin = format!("record.json {rd} from the remote");
    let (mut record, _spec) = crate::pipeline::rebuild::check_record(&text, &origin)?;
    if record.build_key != plan.key || record.key_inputs().build_key() != plan.key {
        anyhow::bail!(
            "{origin} is a record of build key {}, not of {}; refused",
            record.build_key,
            plan.key
        );
    }
    // Its inputs' build keys are not part of the action: ours are put in
    // (the names and output digests are the key's, checked just above).
    if record.inputs.len() != plan.inputs.len()
        || record
            .inputs
            .iter()
            .zip(&plan.inputs)
            .any(|(a, b)| a.name != b.name || a.output != b.output)
    {
        anyhow::bail!("{origin}: its inputs are not this build's; refused");
    }
    record.inputs.clone_from(&plan.inputs);
    record.spec.file = plan
        .resolved
        .spec_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| act::SPEC_FILE.to_string());

    // The output: stored only if it is the record's canonical tar.
    let td = output_digest(result, act::OUTPUT_TAR)?;
    let want = rdigest(&record.output.digest, record.output.tar_size);
    if td != want {
        anyhow::bail!("output.tar {td} is not the record's output {want}; refused");
    }
    fetch_blob(rx, remote, store, &td, "output.tar")?;
    // The log, when it is the record's.
    if let Ok(ld) = output_digest(result, act::OUTPUT_LOG) {
        if ld == rdigest(&record.log.digest, record.log.size) {
            let _ = fetch_blob(rx, remote, store, &ld, "build.log");
        }
    }

    // Unpack into a staging directory and install like a local build.
    let staging = hermit_store::store::temp_dir(store.tmp_dir())?;
    let out = staging.join("out");
    let unpacked = (|| -> anyhow::Result<()> {
        fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
        let tar = fs::File::open(store.blob_path(&record.output.digest))
            .context("opening the output's tar")?;
        hermit_store::unpack::extract_tar(
            std::io::BufReader::new(tar),
            &out,
            &ExtractOptions {
                strip_components: 0,
                oci_whiteouts: false,
                rootfs_symlinks: false,
                skip_special: false,
            },
        )
        .context("unpacking the output's tar")?;
        hermit_store::tree::make_read_only(&out).context("making the output read-only")?;
        write_record(&staging.join("record.json"), &record.to_json()?)?;
        Ok(())
    })();
    if let Err(e) = unpacked {
        materialise::discard(&staging);
        return Err(e);
    }
    cache::install(
        store,
        Staged {
            dir: staging,
            record,
        },
        &plan.key,
    )?;
    // Hashed again against the record (the first lookup checks the content).
    match cache::check(store, &plan.key, Some(plan)) {
        cache::Stored::Good(b) => Ok(Built {
            cached: false,
            ..*b
        }),
        cache::Stored::Corrupt(why) => {
            let dir = crate::pipeline::outputs_dir(store).join(plan.key.hex());
            let _ = hermit_store::store::remove_tree(&dir);
            anyhow::bail!(
                "the remote output of build key {} does not match its record: {why}; refused",
                plan.key
            )
        }
        cache::Stored::Absent => anyhow::bail!("internal error: the installed output vanished"),
    }
}

fn write_record(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(path)
        .and_then(|f| {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            f.sync_all()
        })
        .with_context(|| format!("syncing {}", path.display()))
}

/// Downloads blob `d` into the store (checked), unless it is there.
fn fetch_blob(
    rx: &RemoteExec,
    remote: &Remote,
    store: &Store,
    d: &RDigest,
    what: &str,
) -> anyhow::Result<()> {
    let hd: Digest = hdigest(d)?;
    if store.blob(&hd).is_some() {
        return Ok(());
    }
    let (file, staging) = hermit_store::store::temp_file(store.tmp_dir())?;
    drop(file);
    if let Err(e) = rx.rt.block_on(remote.download_file(d, &staging)) {
        let _ = fs::remove_file(&staging);
        return Err(anyhow::Error::new(e).context(format!("fetching {what} {d}")));
    }
    let stored = fs::File::open(&staging)
        .with_context(|| format!("opening {}", staging.display()))
        .and_then(|mut f| {
            store
                .add_reader(
                    &mut f,
                    &format!("{what} {d} from the remote"),
                    Some(&hd),
                    Some(d.size),
                )
                .map_err(anyhow::Error::from)
        });
    let _ = fs::remove_file(&staging);
    stored.map(|_| ())
}
