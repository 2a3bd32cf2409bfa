//! The build pipeline: from a spec (or a record) to a stored output with its
//! record, in stages a scheduler can drive one node of a graph at a time.
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | resolve | [`resolve`] | reads the spec (its exact bytes) and lock once; digests of the toolchain image, every source and every input — nothing unpacked, copied or stored that a cache hit would not need |
//! | plan | [`plan`] | owns the key inputs and computes the build key once; the record embeds the same inputs |
//! | cache lookup | [`cache`] | a checked stored output of the key is a hit; otherwise the per-key lock is taken (a concurrent identical build waits, then hits) |
//! | materialise | [`materialise`] | the checked root filesystem, sources fetched and unpacked, local trees stored, inputs' outputs, fresh `/build` and `/out` |
//! | run | [`run`] | the sandbox set up from the environment alone, its output logged |
//! | collect | [`collect`] | `$out` normalised and hashed, the record written beside it |
//! | install | [`cache`] | moved read-only into `v1/outputs/<key>/`, under the per-key lock |
//!
//! `hermit build` is [`build`]: resolve → plan → lookup → (lock → lookup) →
//! materialise → run → collect → install. `hermit rebuild` is
//! [`rebuild::rebuild`]: resolve *from a record* ([`resolve::from_record`]),
//! then the same stages, then a comparison. Graphs of specs are scheduled by
//! [`crate::graph`], which calls [`build`] once per node.
//!
//! ```text
//! v1/outputs/<build-key-hex>/out          the output tree, read-only
//! v1/outputs/<build-key-hex>/record.json  the record (see docs/record.md)
//! v1/failed/<build-key-hex>/              a failed build's /build and /out (--keep-failed)
//! v1/rebuilds/<build-key-hex>/out         a rebuild that differed from its record
//! v1/locks/<build-key-hex>.lock           held while a build of that key runs and installs
//! ```

pub mod cache;
pub mod collect;
pub mod materialise;
pub mod plan;
pub mod rebuild;
pub mod resolve;
pub mod run;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hermit_store::Store;

use crate::net::NetArgs;
use crate::record::Record;
use crate::spec::Spec;

pub use resolve::InputOutput;

/// Options of a build that are not about the network.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub keep_failed: bool,
    /// HERMIT_JOBS for the build; the host's CPU count when not given.
    pub jobs: Option<u32>,
    /// No hermit messages on stderr other than errors.
    pub quiet: bool,
    /// Where the build's own output goes besides its log.
    pub echo: Echo,
    /// The jobserver every build of this hermit shares (see
    /// [`crate::jobserver`]); without one a build makes its own of
    /// HERMIT_JOBS slots.
    pub jobserver: Option<Arc<crate::jobserver::Jobserver>>,
    /// The caller holds this build's slot of `jobserver` for the whole
    /// build (the graph scheduler does); the run stage takes none.
    pub holds_slot: bool,
    /// Held while resolving anything that may fetch, import or bootstrap,
    /// when several builds run at once: two nodes that need the same
    /// toolchain bootstrapped or fetched do it once.
    pub resolve_gate: Option<Arc<std::sync::Mutex<()>>>,
    /// Changes the build's sandbox after the environment made it: only
    /// `hermit check` sets one (its variations, see [`crate::check`]).
    pub vary: Option<run::SandboxHook>,
    /// `--remote-exec`: builds the store lacks run on the execution service
    /// (see [`crate::remote::exec`]); a service that fails means a local build.
    pub remote_exec: Option<Arc<crate::remote::exec::RemoteExec>>,
}

/// Where a running build's stdout and stderr go, besides the log.
#[derive(Debug, Clone, Default)]
pub enum Echo {
    /// Copied to hermit's stderr as it comes (one build at a time).
    #[default]
    Stderr,
    /// Only into the log (several builds at once; a failed build's log
    /// tail is printed by the scheduler).
    Nowhere,
    /// The last line is kept here for a live progress line.
    LastLine(Arc<std::sync::Mutex<String>>),
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub output: PathBuf,
    pub record_path: PathBuf,
    pub record: Record,
    pub cached: bool,
}

/// `v1/outputs/`.
pub fn outputs_dir(store: &Store) -> PathBuf {
    store.base().join("outputs")
}

/// Builds one spec whose inputs (if any) are already built: resolve, plan,
/// then a cached output or a fresh build installed under the key's lock.
/// `loaded` is the spec at `spec_path` as [`resolve::read_spec`] read it.
pub fn build(
    store: &Arc<Store>,
    spec_path: &Path,
    loaded: (Spec, String),
    inputs: &[InputOutput],
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Built> {
    let mut t = crate::timing::start();
    let resolved = resolve::from_spec(store, spec_path, loaded, inputs, net, opts)?;
    t.lap(spec_path, "resolve");
    let plan = plan::Plan::new(resolved)?;
    t.lap(spec_path, "plan");
    let hit = cache::lookup(store, &plan.key, Some(&plan));
    t.lap(spec_path, "lookup");
    if let Some(hit) = hit {
        return Ok(hit);
    }
    let _key_lock = cache::lock_key(store, &plan.key, opts.quiet)?;
    // Another hermit may have built and installed it while we waited.
    if let Some(hit) = cache::lookup(store, &plan.key, Some(&plan)) {
        return Ok(hit);
    }
    t.lap(spec_path, "lock");
    // The remote cache, if any (see crate::remote::cache).
    if let Some(hit) = crate::remote::cache::lookup(store, &plan, net, opts.quiet) {
        return Ok(hit);
    }
    // Remote execution, if asked for (see crate::remote::exec); a build
    // the service failed runs here, in one of `-j` local slots.
    let mut _local_slot = None;
    if let Some(rx) = &opts.remote_exec {
        if let Some(built) = crate::remote::exec::build(store, &plan, net, opts, rx)? {
            return Ok(built);
        }
        _local_slot = Some(rx.local_slot());
    }
    let staged = run_stages(store, &plan, net, opts)?;
    t.lap(spec_path, "run_stages");
    let built = cache::install(store, staged, &plan.key);
    t.lap(spec_path, "install");
    if let Ok(b) = &built {
        crate::remote::cache::upload(store, &plan, b, net);
    }
    built
}

/// materialise → run → collect: a staged output with its record.
pub fn run_stages(
    store: &Arc<Store>,
    plan: &plan::Plan,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<collect::Staged> {
    let mut t = crate::timing::start();
    let spec = plan.resolved.spec_path.as_path();
    let m = materialise::materialise(store, plan, net, opts)?;
    t.lap(spec, "materialise");
    let ran = run::run(store, plan, m, opts)?;
    t.lap(spec, "run");
    let staged = collect::collect(store, plan, ran);
    t.lap(spec, "collect");
    staged
}
