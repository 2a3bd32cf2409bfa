//! Stage 1, resolve: everything a build depends on, as digests. The spec is
//! read once and kept with its exact bytes, the lock once; the toolchain
//! image is found (store → mirrors → registry or bootstrap) and its digests
//! taken; sources are named by digest and size (a remote source is fetched
//! here only when neither the spec nor the store can say its size); local
//! trees are hashed; inputs are the outputs of specs already built. Nothing
//! is unpacked and no local tree is stored: a cache hit needs none of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hermit_profiles::{EnvInputs, Profile};
use hermit_store::fetch::Want;
use hermit_store::oci::{self, Image};
use hermit_store::{Digest, Store};

use super::BuildOptions;
use crate::exit::Exit;
use crate::limits;
use crate::localtree::{local_source_root, tree_digest};
use crate::lock::Lock;
use crate::net::{fetch, NetArgs};
use crate::record::{self, Environment, InputRecord, Record, SourceRecord, UnpackRecord};
use crate::spec::{SourceKind, Spec, Toolchain};
use crate::toolchain::{
    fetch_image_from_mirrors, find_image_seen, image_reference, input_image, input_reference,
    locked_image, resolve_toolchain, toolchain_request,
};

/// A build's inputs, resolved to digests.
pub struct Resolved {
    /// Where the spec was read from (for messages; only its file name is
    /// recorded).
    pub spec_path: PathBuf,
    pub spec: Spec,
    /// The spec's exact bytes.
    pub spec_text: String,
    pub lock_text: Option<String>,
    pub image: Image,
    pub image_reference: String,
    /// Sorted by name.
    pub sources: Vec<ResolvedSource>,
    /// Sorted by name.
    pub inputs: Vec<InputOutput>,
    pub profile: Profile,
    pub environment: Environment,
}

/// A source by digest, and where its bytes come from when the build runs.
pub struct ResolvedSource {
    pub record: SourceRecord,
    /// A local source's directory, read again to store its tree when the
    /// build runs and the store lacks it; `None` when restored from a
    /// record (the tree then comes by digest from the store or a mirror).
    pub local_root: Option<PathBuf>,
}

/// An input's output: its record entry and the stored tree mounted at
/// `/inputs/<name>`.
#[derive(Debug, Clone)]
pub struct InputOutput {
    pub record: InputRecord,
    pub path: PathBuf,
}

/// The directory of the spec at `spec_path` (`.` for a bare file name).
pub fn spec_dir(spec_path: &Path) -> PathBuf {
    spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Reads and parses a spec once, keeping its exact bytes.
pub fn read_spec(spec_path: &Path) -> anyhow::Result<(Spec, String)> {
    let text = limits::read_text(spec_path, limits::MAX_SPEC).map_err(|e| {
        Exit::user(format!(
            "{}: cannot read the spec: {e}",
            spec_path.display()
        ))
    })?;
    let spec = Spec::parse(spec_path, &text).map_err(|e| Exit::user(e.to_string()))?;
    Ok((spec, text))
}

/// Resolves a spec whose inputs are built (`inputs`, one per `[inputs]`
/// entry, in any order). `loaded` is the spec at `spec_path` as
/// [`read_spec`] read it (a graph reads each spec once, when it loads).
pub fn from_spec(
    store: &Arc<Store>,
    spec_path: &Path,
    loaded: (Spec, String),
    inputs: &[InputOutput],
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Resolved> {
    let mut t = crate::timing::start();
    let (spec, spec_text) = loaded;
    let dir = spec_dir(spec_path);
    let profile = Profile::default_profile()?;
    t.lap(spec_path, "resolve.profile");

    let inputs = match_inputs(&spec, spec_path, inputs)?;
    // The toolchain, through the lock (read once; written when new), or
    // made from an input's output.
    let request = toolchain_request(&spec, &dir);
    let lock_path = dir.join("hermit.lock");
    // Resolving may fetch, import or bootstrap: with a gate (several builds
    // at once), one build does that at a time, so two that need the same
    // toolchain or file get it once. A build whose lock pins an image this
    // process has found already (or whose toolchain is an input), and whose
    // remote sources need nothing fetched, does none of that and does not
    // wait for the gate.
    let quick = request
        .as_ref()
        .and_then(|r| quick_image(store, &lock_path, r));
    let fetches = spec.sources.iter().any(|s| {
        matches!(&s.kind, SourceKind::Remote { sha256, size: None, .. } if store.blob(sha256).is_none())
    });
    let _gate = match (request.is_none() || quick.is_some(), fetches) {
        (true, false) => None,
        _ => opts.resolve_gate.as_ref().map(|g| g.lock()),
    };
    let (image, lock_text, image_reference) = match request {
        Some(request) => {
            let (image, text) = match quick {
                Some(found) => found,
                None => locked_toolchain(store, &request, &dir, net, &profile)?,
            };
            (image, Some(text), image_reference(&request))
        }
        None => {
            let Some((image, name)) = toolchain_from_input(store, &spec, &inputs, &profile)? else {
                anyhow::bail!("internal error: a toolchain without a lock request");
            };
            (image, None, input_reference(&name))
        }
    };
    t.lap(spec_path, "resolve.toolchain");

    // Remote sources: their digest is in the spec; their size too when the
    // spec gives it or the store holds the blob, else they are fetched now.
    let mut sizeless = Vec::new();
    for s in &spec.sources {
        if let SourceKind::Remote {
            urls, sha256, size, ..
        } = &s.kind
        {
            if size.is_none() && store.blob(sha256).is_none() {
                sizeless.push(Want {
                    digest: *sha256,
                    size: None,
                    urls: parse_urls(urls, &s.name)?,
                    label: format!("source {:?} in {}", s.name, spec_path.display()),
                });
            }
        }
    }
    fetch(store, net, sizeless)?;
    let sde = profile.source_date_epoch.default;
    let mut sources = Vec::new();
    for s in &spec.sources {
        let resolved = match &s.kind {
            SourceKind::Remote {
                urls,
                sha256,
                size,
                unpack,
            } => {
                let size = match size {
                    Some(n) => *n,
                    None => {
                        let p = store.blob_path(sha256);
                        fs::metadata(&p)
                            .with_context(|| format!("reading {}", p.display()))?
                            .len()
                    }
                };
                ResolvedSource {
                    record: SourceRecord::Remote {
                        name: s.name.clone(),
                        urls: urls.clone(),
                        sha256: *sha256,
                        size,
                        unpack: unpack.map(|u| UnpackRecord {
                            strip_components: u.strip_components,
                        }),
                    },
                    local_root: None,
                }
            }
            SourceKind::Local {
                path,
                include,
                exclude,
            } => {
                let root = local_source_root(&spec, s, &dir)?;
                // Digest only: streamed or answered by the stat cache; the
                // blob is stored by `materialise` when the build runs.
                let tree = tree_digest(store, &root, include, exclude, sde)
                    .with_context(|| format!("source {:?}: hashing {}", s.name, root.display()))?;
                ResolvedSource {
                    record: SourceRecord::Local {
                        name: s.name.clone(),
                        path: path.clone(),
                        include: include.clone(),
                        exclude: exclude.clone(),
                        tree,
                    },
                    local_root: Some(root),
                }
            }
        };
        sources.push(resolved);
    }
    sources.sort_by(|a, b| a.record.name().cmp(b.record.name()));

    t.lap(spec_path, "resolve.sources");
    let jobs = profile.jobs(opts.jobs, host_cpus());
    let environment = Environment::from_profile(
        &profile,
        &EnvInputs {
            image_path: image.path_env.as_deref(),
            source_date_epoch: None,
            jobs,
            extra: &spec.env,
        },
        &spec_limits(&spec),
    )
    .map_err(|e| Exit::user(format!("{}: {e}", spec_path.display())))?;
    t.lap(spec_path, "resolve.environment");

    Ok(Resolved {
        spec_path: spec_path.to_path_buf(),
        image_reference,
        spec,
        spec_text,
        lock_text,
        image,
        sources,
        inputs,
        profile,
        environment,
    })
}

/// The image `hermit.lock` (beside the spec) pins, read once; resolved and
/// written when there is no lock yet. Returns the image and the lock's text.
fn locked_toolchain(
    store: &Arc<Store>,
    request: &crate::lock::ToolchainRequest,
    dir: &Path,
    net: &NetArgs,
    profile: &Profile,
) -> anyhow::Result<(Image, String)> {
    let lock_path = dir.join("hermit.lock");
    let shown = lock_path.display().to_string();
    let lock_text = match fs::symlink_metadata(&lock_path) {
        Ok(_) => Some(
            limits::read_text(&lock_path, limits::MAX_SPEC)
                .with_context(|| format!("reading {shown}"))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {shown}"))),
    };
    match lock_text {
        Some(text) => {
            let lock = Lock::parse(&shown, &text).map_err(|e| Exit::user(e.to_string()))?;
            lock.check(&shown, request)
                .map_err(|e| Exit::user(e.to_string()))?;
            let image = locked_image(store, &lock, request, dir, net, profile)?;
            Ok((image, text))
        }
        None => {
            let (image, packages) = resolve_toolchain(store, request, dir, net, profile)?;
            let lock = Lock::new(request, &image, packages)
                .bootstrapped_with(profile.source_date_epoch.default);
            lock.write(&lock_path)?;
            if !net.quiet {
                eprintln!("hermit: wrote {shown}");
            }
            Ok((image, lock.to_text()?))
        }
    }
}

/// The image and lock text when `hermit.lock` is there, is good for
/// `request`, and pins an image the store holds that this process has
/// found before (see [`crate::toolchain::find_image`]); `None` otherwise,
/// and the full path (under the gate) says what is wrong, if anything.
fn quick_image(
    store: &Store,
    lock_path: &Path,
    request: &crate::lock::ToolchainRequest,
) -> Option<(Image, String)> {
    let text = limits::read_text(lock_path, limits::MAX_SPEC).ok()?;
    let shown = lock_path.display().to_string();
    let lock = Lock::parse(&shown, &text).ok()?;
    lock.check(&shown, request).ok()?;
    let image = find_image_seen(store, &lock.toolchain.manifest)?;
    Some((image, text))
}

/// The image made from the output of the spec's toolchain input, and the
/// input's name; `None` when the toolchain is not an input.
pub(crate) fn toolchain_from_input(
    store: &Store,
    spec: &Spec,
    inputs: &[InputOutput],
    profile: &Profile,
) -> anyhow::Result<Option<(Image, String)>> {
    let Toolchain::Input { name } = &spec.toolchain else {
        return Ok(None);
    };
    let Some(input) = inputs.iter().find(|i| &i.record.name == name) else {
        anyhow::bail!("internal error: toolchain input {name:?} is not among the inputs");
    };
    let image = input_image(
        store,
        name,
        &input.record.output,
        &input.record.build_key,
        profile,
    )?;
    Ok(Some((image, name.clone())))
}

/// The built inputs, one for each of the spec's `[inputs]`, sorted by name.
fn match_inputs(
    spec: &Spec,
    spec_path: &Path,
    given: &[InputOutput],
) -> anyhow::Result<Vec<InputOutput>> {
    let mut out = Vec::new();
    for name in spec.inputs.keys() {
        let Some(i) = given.iter().find(|i| &i.record.name == name) else {
            anyhow::bail!(
                "internal error: input {name:?} of {} was not built before it",
                spec_path.display()
            );
        };
        out.push(i.clone());
    }
    Ok(out)
}

/// Resolves a record (already checked by [`crate::derive::check_static`]
/// against its own spec and lock): the image and sources by digest, the
/// environment derived again from the pinned profile, inputs restored by
/// the caller.
pub fn from_record(
    store: &Arc<Store>,
    rec: &Record,
    spec: Spec,
    origin: &str,
    inputs: Vec<InputOutput>,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Resolved> {
    let profile = Profile::get_pinned(&rec.profile.name, &rec.profile.digest.to_string())?;

    // The image, by digest: store, then mirrors, then the recorded
    // reference — or made again from the toolchain input's output.
    let manifest = rec.image.manifest;
    let image = match oci::find(store, &manifest)? {
        Some(img) => img,
        None if matches!(spec.toolchain, Toolchain::Input { .. }) => {
            let Some((image, name)) = toolchain_from_input(store, &spec, &inputs, &profile)? else {
                anyhow::bail!("internal error: toolchain input not restored");
            };
            if image.manifest != manifest {
                return Err(Exit::user(format!(
                    "{origin}: the toolchain made from input {name:?} is {}, but the record says {manifest}",
                    image.manifest
                ))
                .into());
            }
            image
        }
        None => {
            if fetch_image_from_mirrors(store, net, &manifest).is_ok() {
                oci::load_from_store(store, &manifest, rec.image.index, &rec.image.reference)?
            } else if let Some(img) =
                crate::debrestore::for_record(store, rec, origin, net, &profile)?
            {
                img
            } else if let (false, Ok(r)) =
                (net.offline, rec.image.reference.parse::<oci::Reference>())
            {
                crate::net::runtime()?.block_on(oci::pull(
                    store,
                    &r,
                    &oci::PullOptions::default(),
                ))?
            } else {
                return Err(Exit::user(format!(
                    "the toolchain image {manifest} (config {}, layers {}) is not in the store or any mirror, nor in a remote; \
                     add a mirror that holds it with --mirror (or fill the remote with `hermit mirror --to grpc://…`)",
                    rec.image.config,
                    rec.image.layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
        }
    };
    let jobs = profile.jobs(opts.jobs, host_cpus());
    let environment = crate::derive::environment(rec, &spec, &image, &profile, jobs, origin)
        .map_err(|e| Exit::user(e.to_string()))?;
    let sources = rec
        .sources
        .iter()
        .map(|s| ResolvedSource {
            record: s.clone(),
            local_root: None,
        })
        .collect();
    Ok(Resolved {
        spec_path: PathBuf::from(&rec.spec.file),
        spec,
        spec_text: rec.spec.text.clone(),
        lock_text: rec.lock.as_ref().map(|l| l.text.clone()),
        image_reference: rec.image.reference.clone(),
        image,
        sources,
        inputs,
        profile,
        environment,
    })
}

/// What a spec's `[build]` asks of the profile's limits.
pub(crate) fn spec_limits(spec: &Spec) -> record::SpecLimits {
    record::SpecLimits {
        timeout_secs: spec.build.timeout,
        memory_mib: spec.build.memory_mib,
        disk_mib: spec.build.disk_mib,
        log_mib: spec.build.log_mib,
    }
}

/// The CPUs hermit may use, asked once per process (the standard library
/// reads the cgroup's quota files on every call; a graph asks per node).
pub(crate) fn host_cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    })
}

pub(crate) fn parse_urls(urls: &[String], name: &str) -> anyhow::Result<Vec<hermit_store::Url>> {
    urls.iter()
        .map(|u| {
            hermit_store::Url::parse(u).with_context(|| format!("URL {u:?} of source {name:?}"))
        })
        .collect()
}

/// The digest a record's or spec's sources need fetched before a build.
pub(crate) fn source_wants(sources: &[ResolvedSource], shown: &str) -> anyhow::Result<Vec<Want>> {
    let mut wants = Vec::new();
    for s in sources {
        match &s.record {
            SourceRecord::Remote {
                name,
                urls,
                sha256,
                size,
                ..
            } => wants.push(Want {
                digest: *sha256,
                size: Some(*size),
                urls: parse_urls(urls, name)?,
                label: format!("source {name:?} of {shown}"),
            }),
            SourceRecord::Local { name, tree, .. } if s.local_root.is_none() => wants.push(Want {
                digest: *tree,
                size: None,
                urls: vec![],
                label: format!("local source {name:?} of {shown} (its canonical tar)"),
            }),
            SourceRecord::Local { .. } => {}
        }
    }
    Ok(wants)
}

/// A digest's short form for messages.
pub fn short(d: &Digest) -> String {
    d.hex().chars().take(12).collect()
}
