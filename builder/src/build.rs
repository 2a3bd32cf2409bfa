//! `hermit build` and `hermit rebuild`: from a spec (or a record) to a
//! normalised, stored output with a record beside it.
//!
//! Both go through one [`Plan`] — everything that determines the build,
//! resolved to digests — and one [`execute`]:
//!
//! 1. resolve: the toolchain image (through `hermit.lock`), every source
//!    (fetched by digest; local `path` sources become a canonical tar blob),
//!    the profile and the exact environment; the build key is the hash of all
//!    of it ([`crate::record::KeyInputs`]);
//! 2. a build key already under `v1/outputs/` is a cache hit: nothing runs;
//! 3. otherwise the image's root filesystem (unpacked once, shared) becomes
//!    the sandbox's read-only `/`, sources are bound read-only at
//!    `/sources/<name>`, `/build` and `/out` are fresh writable directories,
//!    and the script runs under `/bin/sh -e -c`;
//! 4. `$out` is normalised and hashed, moved read-only into the store with
//!    `record.json` beside it, and the log is kept as a blob.
//!
//! ```text
//! v1/outputs/<build-key-hex>/out          the output tree, read-only
//! v1/outputs/<build-key-hex>/record.json  the record (see docs/record.md)
//! v1/failed/<build-key-hex>/              a failed build's /build and /out (--keep-failed)
//! v1/rebuilds/<build-key-hex>/out         a rebuild that differed from its record
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use hermit_profiles::{EnvInputs, Profile};
use hermit_sandbox::{Mount, Outcome, SandboxSpec};
use hermit_store::fetch::Want;
use hermit_store::oci::{self, Image};
use hermit_store::unpack::{ArchiveFormat, UnpackOptions};
use hermit_store::{Digest, Store};

use crate::exit::{self, Exit};
use crate::limits;
use crate::localtree::{local_source_root, local_tree_blob, store_tree_blob, tree_digest};
use crate::lock::Lock;
use crate::net::{fetch, NetArgs};
use crate::output::{self, Normalized};
use crate::record::{
    self, Environment, ImageRecord, Informational, LogRecord, ProfileRecord, Record, RecordParts,
    SourceRecord, UnpackRecord,
};
use crate::spec::{SourceKind, Spec};
use crate::toolchain::{
    checked_rootfs, fetch_image_from_mirrors, image_reference, locked_image, resolve_toolchain,
    toolchain_request,
};

/// Everything a build depends on, resolved.
pub struct Plan {
    pub package: record::Package,
    pub spec_file: String,
    pub spec_text: String,
    pub lock_text: Option<String>,
    pub image: Image,
    pub image_reference: String,
    /// Sorted by name; each with the host path bound at `/sources/<name>`.
    pub sources: Vec<(SourceRecord, PathBuf)>,
    pub profile: Profile,
    pub environment: Environment,
    pub script: String,
}

impl Plan {
    fn image_record(&self) -> ImageRecord {
        ImageRecord::from_image(&self.image_reference, &self.image)
    }

    fn source_records(&self) -> Vec<SourceRecord> {
        self.sources.iter().map(|(r, _)| r.clone()).collect()
    }

    /// The build key: the same function the record uses.
    pub fn build_key(&self) -> anyhow::Result<Digest> {
        let spec = Digest::of(self.spec_text.as_bytes());
        let lock = self.lock_text.as_ref().map(|t| Digest::of(t.as_bytes()));
        let profile = ProfileRecord {
            name: self.profile.name.clone(),
            digest: self.profile.digest()?.parse()?,
        };
        let image = self.image_record();
        let sources = self.source_records();
        Ok(record::KeyInputs {
            spec: &spec,
            lock: lock.as_ref(),
            image: &image,
            sources: &sources,
            inputs: &[],
            profile: &profile,
            environment: &self.environment,
        }
        .build_key())
    }
}

/// Options of `hermit build` that are not about the network.
pub struct BuildOptions {
    pub keep_failed: bool,
    pub jobs: Option<u32>,
    pub quiet: bool,
}

/// What a build produced.
pub struct Built {
    pub output: PathBuf,
    pub record_path: PathBuf,
    pub record: Record,
    pub cached: bool,
}

fn outputs_dir(store: &Store) -> PathBuf {
    store.base().join("outputs")
}

/// Builds a spec: resolve, then reuse a cached output or run the build.
pub fn build(spec_path: &Path, net: &NetArgs, opts: &BuildOptions) -> anyhow::Result<Built> {
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let plan = plan_from_spec(&store, spec_path, net, opts)?;
    let key = plan.build_key()?;
    let dir = outputs_dir(&store).join(key.hex());
    let record_path = dir.join("record.json");
    let stored = fs::symlink_metadata(&dir).is_ok();
    if stored {
        // Served only after it is checked against its record.
        match crate::integrity::check_output_quick(&store, &dir) {
            Ok(record) => {
                return Ok(Built {
                    output: dir.join("out"),
                    record_path,
                    record,
                    cached: true,
                })
            }
            Err(why) => eprintln!(
                "hermit: the stored output of build key {key} is corrupt: {why}; rebuilding"
            ),
        }
    }
    let staged = execute(&store, &plan, key, opts)?;
    if stored && fs::symlink_metadata(&dir).is_ok() {
        return replace_corrupt(&store, staged, key);
    }
    install(&store, staged, key)
}

/// Installs a fresh build in place of a corrupt stored output of `key`.
fn replace_corrupt(store: &Store, staged: Staged, key: Digest) -> anyhow::Result<Built> {
    let dest = outputs_dir(store).join(key.hex());
    crate::integrity::replace_output(store, &staged.dir, &dest)?;
    Ok(Built {
        output: dest.join("out"),
        record_path: dest.join("record.json"),
        record: staged.record,
        cached: false,
    })
}

/// A finished build waiting to be installed or compared.
pub struct Staged {
    dir: PathBuf,
    record: Record,
}

fn install(store: &Store, staged: Staged, key: Digest) -> anyhow::Result<Built> {
    let outputs = outputs_dir(store);
    fs::create_dir_all(&outputs).with_context(|| format!("creating {}", outputs.display()))?;
    let dest = outputs.join(key.hex());
    // When another hermit finished the same build first, its output is the
    // same key and ours is thrown away.
    hermit_store::store::install_tree(&staged.dir, &dest)
        .with_context(|| format!("moving the output into {}", dest.display()))?;
    Ok(Built {
        output: dest.join("out"),
        record_path: dest.join("record.json"),
        record: staged.record,
        cached: false,
    })
}

/// Resolves a spec into a plan: lock, image, sources, environment.
fn plan_from_spec(
    store: &Arc<Store>,
    spec_path: &Path,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Plan> {
    let spec = Spec::load(spec_path).map_err(|e| Exit::user(e.to_string()))?;
    let spec_text = limits::read_text(spec_path, limits::MAX_SPEC)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let spec_dir = spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if !spec.inputs.is_empty() {
        return Err(Exit::user(format!(
            "{}: [inputs] (dependencies between specs) is not supported by this hermit yet; build the dependency first and add its output as a source",
            spec_path.display()
        ))
        .into());
    }
    let profile = Profile::default_profile()?;

    // The toolchain, through the lock.
    let request = toolchain_request(&spec, &spec_dir);
    let lock_path = spec_dir.join("hermit.lock");
    let lock = Lock::read(&lock_path)?;
    let (image, lock) = match lock {
        Some(lock) => {
            lock.check(&lock_path.display().to_string(), &request)
                .map_err(|e| Exit::user(e.to_string()))?;
            let image = locked_image(store, &lock, &request, &spec_dir, net, &profile)?;
            (image, lock)
        }
        None => {
            let (image, packages) = resolve_toolchain(store, &request, &spec_dir, net, &profile)?;
            let lock = Lock::new(&request, &image, packages);
            lock.write(&lock_path)?;
            if !net.quiet {
                eprintln!("hermit: wrote {}", lock_path.display());
            }
            (image, lock)
        }
    };
    drop(lock);
    let lock_text = fs::read_to_string(&lock_path)
        .with_context(|| format!("reading {}", lock_path.display()))?;

    // Sources.
    let mut wants = Vec::new();
    for s in &spec.sources {
        if let SourceKind::Remote {
            urls, sha256, size, ..
        } = &s.kind
        {
            wants.push(Want {
                digest: *sha256,
                size: *size,
                urls: parse_urls(urls, &s.name)?,
                label: format!("source {:?} in {}", s.name, spec_path.display()),
            });
        }
    }
    fetch(store, net, wants)?;
    let sde = profile.source_date_epoch.default;
    let mut sources = Vec::new();
    for s in &spec.sources {
        let (rec, path) = match &s.kind {
            SourceKind::Remote {
                urls,
                sha256,
                unpack,
                ..
            } => {
                let size = fs::metadata(store.blob_path(sha256))
                    .with_context(|| format!("reading {}", store.blob_path(sha256).display()))?
                    .len();
                let rec = SourceRecord::Remote {
                    name: s.name.clone(),
                    urls: urls.clone(),
                    sha256: *sha256,
                    size,
                    unpack: unpack.map(|u| UnpackRecord {
                        strip_components: u.strip_components,
                    }),
                };
                let path = source_path(store, &rec)?;
                (rec, path)
            }
            SourceKind::Local {
                path,
                include,
                exclude,
            } => {
                let root = local_source_root(&spec, s, &spec_dir)?;
                let tree = tree_digest(store, &root, include, exclude, sde)
                    .with_context(|| format!("source {:?}: hashing {}", s.name, root.display()))?;
                // Materialise: the blob the sandbox's unpacked tree comes from.
                store_tree_blob(store, &root, include, exclude, sde, &tree)
                    .with_context(|| format!("source {:?}: storing {}", s.name, root.display()))?;
                let rec = SourceRecord::Local {
                    name: s.name.clone(),
                    path: path.clone(),
                    include: include.clone(),
                    exclude: exclude.clone(),
                    tree,
                };
                let p = source_path(store, &rec)?;
                (rec, p)
            }
        };
        sources.push((rec, path));
    }
    sources.sort_by(|a, b| a.0.name().cmp(b.0.name()));

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

    Ok(Plan {
        package: record::Package {
            name: spec.package.name.clone(),
            version: spec.package.version.clone(),
        },
        spec_file: spec_path.display().to_string(),
        spec_text,
        lock_text: Some(lock_text),
        image_reference: image_reference(&request),
        image,
        sources,
        profile,
        environment,
        script: spec.build.script.clone(),
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

fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn parse_urls(urls: &[String], name: &str) -> anyhow::Result<Vec<hermit_store::Url>> {
    urls.iter()
        .map(|u| {
            hermit_store::Url::parse(u).with_context(|| format!("URL {u:?} of source {name:?}"))
        })
        .collect()
}

/// The host path a source is bound from: its unpacked tree, or the blob
/// itself when it is not unpacked.
fn source_path(store: &Store, rec: &SourceRecord) -> anyhow::Result<PathBuf> {
    match rec {
        SourceRecord::Remote { sha256, unpack, .. } => match unpack {
            Some(u) => Ok(hermit_store::unpack(
                store,
                sha256,
                &UnpackOptions {
                    format: None,
                    strip_components: u.strip_components,
                },
            )
            .with_context(|| format!("unpacking source {:?} ({sha256})", rec.name()))?),
            None => store
                .blob(sha256)
                .with_context(|| format!("source {:?}: {sha256} is not in the store", rec.name())),
        },
        SourceRecord::Local { tree, .. } => Ok(hermit_store::unpack(
            store,
            tree,
            &UnpackOptions {
                format: Some(ArchiveFormat::Tar),
                strip_components: 0,
            },
        )
        .with_context(|| format!("unpacking source {:?} ({tree})", rec.name()))?),
    }
}

/// Runs the plan in the sandbox and stages the normalised output with its
/// record (not yet installed).
pub fn execute(
    store: &Store,
    plan: &Plan,
    key: Digest,
    opts: &BuildOptions,
) -> anyhow::Result<Staged> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let rootfs = checked_rootfs(store, &plan.image, opts.quiet)?;
    let staging = hermit_store::store::temp_dir(store.tmp_dir())?;
    let build_dir = staging.join("build");
    let out_dir = staging.join("out");
    for d in [&build_dir, &out_dir] {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let env = &plan.environment;
    let p = &plan.profile;
    let mut spec = SandboxSpec::profile_v1(
        &rootfs,
        vec![
            "/bin/sh".into(),
            "-e".into(),
            "-c".into(),
            plan.script.clone(),
            "hermit-build".into(),
        ],
    );
    spec.env = env
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    spec.cwd = PathBuf::from(&env.build_path);
    spec.uid = env.uid;
    spec.gid = env.gid;
    spec.user = env.user.clone();
    spec.group = env.group.clone();
    spec.home = PathBuf::from(&env.home);
    spec.hostname = env.hostname.clone();
    spec.aslr = env.aslr;
    spec.umask = p.system.umask;
    spec.timeout = Some(Duration::from_secs(env.limits.timeout_secs));
    spec.limits.max_processes = Some(env.limits.max_pids.min(u64::from(u32::MAX)) as u32);
    spec.limits.max_memory = env.limits.memory_mib.map(|m| m << 20);
    // One file can never be larger than all of /build and /out together.
    spec.limits.max_file_size = env.limits.disk_mib.map(|m| m << 20);
    let mut mounts = vec![
        Mount::Tmpfs {
            dst: PathBuf::from(&env.tmp_path),
            size: Some(env.limits.tmp_size_mib << 20),
        },
        Mount::Bind {
            src: build_dir.clone(),
            dst: PathBuf::from(&env.build_path),
            writable: true,
        },
        Mount::Bind {
            src: out_dir.clone(),
            dst: PathBuf::from(&env.out_path),
            writable: true,
        },
    ];
    for (rec, path) in &plan.sources {
        mounts.push(Mount::Bind {
            src: path.clone(),
            dst: Path::new(&env.sources_path).join(rec.name()),
            writable: false,
        });
    }
    spec.mounts = mounts;

    let log_path = staging.join("build.log");
    let mut guard = limits::Guard::new(&env.limits, p, vec![build_dir.clone(), out_dir.clone()]);
    let report = run_logged(&spec, &log_path, opts.quiet, &mut guard)?;
    let limit_hit = guard.hit(&report, &log_path);
    let outcome = report.outcome.clone();
    let mut log_file =
        fs::File::open(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let log_size = log_file
        .metadata()
        .with_context(|| format!("reading {}", log_path.display()))?
        .len();
    let log_digest = store.add_reader(&mut log_file, "the build log", None, None)?;
    let log_blob = store.blob_path(&log_digest);

    if !matches!(outcome, Outcome::Exited(0)) {
        let mut msg = match &outcome {
            Outcome::Exited(n) => format!(
                "build of {} failed: the script exited with status {n}",
                plan.package.name
            ),
            Outcome::Signaled(s) => format!(
                "build of {} failed: the script was killed by signal {s}",
                plan.package.name
            ),
            Outcome::TimedOut(d) => format!(
                "build of {} timed out after {} s",
                plan.package.name,
                d.as_secs()
            ),
            Outcome::SetupFailed(f) => format!("the build sandbox could not be set up: {f}"),
        };
        match &limit_hit {
            Some(why) => msg = format!("build of {} failed: {why}", plan.package.name),
            None => {
                if let Some(note) = guard.memory_note(&report) {
                    msg.push_str(&format!("\n  {note}"));
                }
            }
        }
        msg.push_str(&format!("\n  log: {}", log_blob.display()));
        // The log is in the store now: the kept directory does not get a
        // second copy of it.
        let _ = fs::remove_file(&log_path);
        if opts.keep_failed {
            let failed = store.base().join("failed").join(key.hex());
            fs::create_dir_all(store.base().join("failed"))
                .with_context(|| format!("creating {}", store.base().join("failed").display()))?;
            let _ = hermit_store::store::remove_tree(&failed);
            fs::rename(&staging, &failed)
                .with_context(|| format!("keeping the build directory at {}", failed.display()))?;
            msg.push_str(&format!(
                "\n  build directory: {} (/build), {} (/out)",
                failed.join("build").display(),
                failed.join("out").display()
            ));
        } else {
            let _ = hermit_store::store::remove_tree(&staging);
            msg.push_str("\n  (rerun with --keep-failed to keep /build and /out)");
        }
        let code = match outcome {
            Outcome::TimedOut(_) => exit::TIMEOUT,
            Outcome::SetupFailed(_) => exit::SANDBOX_SETUP,
            _ => exit::BUILD_FAILED,
        };
        return Err(Exit::with_code(code, msg).into());
    }

    // Normalise $out and stage it with its record.
    let normalized: Normalized = output::normalize(
        &out_dir,
        &output::Options {
            source_date_epoch: env.source_date_epoch,
            symlinks: output::SymlinkPolicy::Contained,
            apply: true,
        },
        None,
    )
    .map_err(|e| {
        Exit::with_code(
            exit::BUILD_FAILED,
            format!("the build's $out cannot be stored: {e}"),
        )
    })?;
    let _ = hermit_store::store::remove_tree(&build_dir);
    let _ = fs::remove_file(&log_path);
    hermit_store::tree::make_read_only(&out_dir)
        .with_context(|| format!("making {} read-only", out_dir.display()))?;
    let finished = SystemTime::now();
    let mut info = Informational::collect(Some(started), Some(finished));
    info.duration_ms = Some(t0.elapsed().as_millis() as u64);
    let record = Record::assemble(RecordParts {
        package: plan.package.clone(),
        spec_file: &plan.spec_file,
        spec_text: plan.spec_text.clone(),
        lock_text: plan.lock_text.clone(),
        image: plan.image_record(),
        sources: plan.source_records(),
        inputs: vec![],
        profile_name: &plan.profile.name,
        environment: plan.environment.clone(),
        output: &normalized,
        log: LogRecord {
            digest: log_digest,
            size: log_size,
        },
        informational: info,
    })?;
    if record.build_key != key {
        bail!(
            "internal error: the record's build key {} differs from the planned {key}; please report this",
            record.build_key
        );
    }
    let json = record.to_json()?;
    let rp = staging.join("record.json");
    fs::write(&rp, json).with_context(|| format!("writing {}", rp.display()))?;
    fs::File::open(&rp)
        .and_then(|f| {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            f.sync_all()
        })
        .with_context(|| format!("syncing {}", rp.display()))?;
    Ok(Staged {
        dir: staging,
        record,
    })
}

/// Runs the sandbox with its stdout and stderr going through a pipe that is
/// copied to the log file and (unless quiet) to hermit's stderr.
fn run_logged(
    spec: &SandboxSpec,
    log_path: &Path,
    quiet: bool,
    guard: &mut limits::Guard,
) -> anyhow::Result<hermit_sandbox::RunReport> {
    use nix::unistd::{dup, dup2_stderr, dup2_stdout, pipe};
    let log =
        fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let (r, w) = pipe().context("creating the log pipe")?;
    let saved_out = dup(std::io::stdout()).context("saving stdout")?;
    let saved_err = dup(std::io::stderr()).context("saving stderr")?;
    let terminal = fs::File::from(dup(&saved_err).context("duplicating stderr")?);
    let mut cap = guard.log_cap();
    let tee = std::thread::spawn(move || -> std::io::Result<()> {
        let mut r = fs::File::from(r);
        let mut log = log;
        let mut terminal = terminal;
        let mut buf = vec![0u8; 64 << 10];
        let mut echo = !quiet;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // Past the log limit the output is drained (the build is
            // being stopped) but neither logged nor echoed.
            let logging = cap.write(&mut log, &buf[..n])?;
            if echo {
                let _ = terminal.write_all(&buf[..n]);
                if !logging {
                    let _ = terminal.write_all(cap.note().as_bytes());
                    echo = false;
                }
            }
        }
        log.sync_all()
    });
    let _ = std::io::stdout().flush();
    let redirected = dup2_stdout(&w).and_then(|_| dup2_stderr(&w));
    drop(w);
    let result = match redirected {
        Ok(()) => Ok(run_guarded(spec, guard)),
        Err(e) => Err(e),
    };
    // Restore hermit's own stdout/stderr (also after a failed redirect); this
    // closes the last write ends of the pipe, so the log writer finishes.
    let restored = dup2_stdout(&saved_out).and_then(|_| dup2_stderr(&saved_err));
    restored.context("restoring stdout and stderr")?;
    let result = result.context("redirecting the build's output to its log")?;
    drop(saved_out);
    drop(saved_err);
    match tee.join() {
        Ok(r) => r.context("writing the build log")?,
        Err(_) => bail!("the log writer thread panicked"),
    }
    Ok(result?)
}

/// Reads a record, which is untrusted input: parsed, validated, and checked
/// against what its own spec and lock derive (the toolchain, sources and
/// package), so that nothing but its pinned profile, spec and lock decides
/// what hermit fetches or how the sandbox is set up.
pub fn read_record(record_path: &Path) -> anyhow::Result<(Record, Spec)> {
    let text = limits::read_text(record_path, limits::MAX_RECORD)
        .with_context(|| format!("reading {}", record_path.display()))?;
    let origin = record_path.display().to_string();
    let rec = Record::parse(&text, &origin).map_err(|e| Exit::user(e.to_string()))?;
    let spec = Spec::parse(Path::new(&rec.spec.file), &rec.spec.text)
        .map_err(|e| Exit::user(format!("{origin}: the recorded spec: {e}")))?;
    crate::derive::check_static(&rec, &spec, &origin).map_err(|e| Exit::user(e.to_string()))?;
    Ok((rec, spec))
}

/// Runs the sandbox under the guard's watch (log and disk limits).
fn run_guarded(
    spec: &SandboxSpec,
    guard: &mut limits::Guard,
) -> Result<hermit_sandbox::RunReport, hermit_sandbox::RunError> {
    let mut check = || guard.check();
    hermit_sandbox::run_watched(
        spec,
        Path::new("/proc/self/exe"),
        Some(hermit_sandbox::Watch {
            every: limits::WATCH_EVERY,
            check: &mut check,
        }),
    )
}

/// Rebuilds a record: restore everything it names by digest, run the build
/// again, and compare the output digest with the recorded one.
pub fn rebuild(
    record_path: &Path,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<(Record, Record, Option<PathBuf>)> {
    let (rec, spec) = read_record(record_path)?;
    let origin = record_path.display().to_string();
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let _shared = store.shared_lock().context("locking the store")?;
    let profile = Profile::get_pinned(&rec.profile.name, &rec.profile.digest.to_string())?;

    // The image, by digest: store, then mirrors, then the recorded reference.
    let manifest = rec.image.manifest;
    let image = match oci::find(&store, &manifest)? {
        Some(img) => img,
        None => {
            let mut wants = vec![manifest];
            wants.extend(rec.image.index);
            if fetch_image_from_mirrors(&store, net, &manifest).is_ok() {
                oci::load_from_store(&store, &manifest, rec.image.index, &rec.image.reference)?
            } else if let (false, Ok(r)) =
                (net.offline, rec.image.reference.parse::<oci::Reference>())
            {
                crate::net::runtime()?.block_on(oci::pull(
                    &store,
                    &r,
                    &oci::PullOptions::default(),
                ))?
            } else {
                return Err(Exit::user(format!(
                    "the toolchain image {manifest} (config {}, layers {}) is not in the store or any mirror; \
                     add a mirror that holds it with --mirror",
                    rec.image.config,
                    rec.image.layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
        }
    };

    // Sources by digest (local trees were stored as canonical tar blobs).
    let mut wants = Vec::new();
    for s in &rec.sources {
        match s {
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
                label: format!("source {name:?} of {}", record_path.display()),
            }),
            SourceRecord::Local { name, tree, .. } => wants.push(Want {
                digest: *tree,
                size: None,
                urls: vec![],
                label: format!(
                    "local source {name:?} of {} (its canonical tar)",
                    record_path.display()
                ),
            }),
        }
    }
    fetch(&store, net, wants)?;
    let jobs = profile.jobs(opts.jobs, host_cpus());
    let environment = crate::derive::environment(&rec, &spec, &image, &profile, jobs, &origin)
        .map_err(|e| Exit::user(e.to_string()))?;
    let mut sources = Vec::new();
    for s in &rec.sources {
        sources.push((s.clone(), source_path(&store, s)?));
    }
    let plan = Plan {
        package: rec.package.clone(),
        spec_file: rec.spec.file.clone(),
        spec_text: rec.spec.text.clone(),
        lock_text: rec.lock.as_ref().map(|l| l.text.clone()),
        image_reference: rec.image.reference.clone(),
        image,
        sources,
        profile,
        environment,
        script: spec.build.script.clone(),
    };
    let key = plan.build_key()?;
    if key != rec.build_key {
        bail!(
            "the record's inputs hash to build key {key}, but it says {}; the record was edited or made by an incompatible hermit",
            rec.build_key
        );
    }
    let staged = execute(&store, &plan, key, opts)?;
    let new = staged.record.clone();
    let kept = if new.output.digest == rec.output.digest {
        // Identical: install it if the store lacks this output, and in
        // place of a stored one that is corrupt.
        let dir = outputs_dir(&store).join(key.hex());
        match fs::symlink_metadata(&dir) {
            Ok(_) => {
                if let Err(why) = crate::integrity::check_output(&dir) {
                    eprintln!(
                        "hermit: the stored output of build key {key} is corrupt: {why}; replacing it with the rebuilt one"
                    );
                    let _ = replace_corrupt(&store, staged, key)?;
                } else {
                    let _ = hermit_store::store::remove_tree(&staged.dir);
                }
            }
            Err(_) => {
                let _ = install(&store, staged, key)?;
            }
        }
        None
    } else {
        let dir = store.base().join("rebuilds").join(key.hex());
        fs::create_dir_all(store.base().join("rebuilds"))
            .with_context(|| format!("creating {}", store.base().join("rebuilds").display()))?;
        let _ = hermit_store::store::remove_tree(&dir);
        fs::rename(&staged.dir, &dir)
            .with_context(|| format!("keeping the rebuild at {}", dir.display()))?;
        Some(dir.join("out"))
    };
    Ok((rec, new, kept))
}

/// Paths whose entries differ between two file lists, sorted.
pub fn differing_files(a: &Record, b: &Record) -> Vec<String> {
    let index = |r: &Record| -> BTreeMap<String, String> {
        r.output
            .files
            .iter()
            .map(|f| (f.path.clone(), serde_json::to_string(f).unwrap_or_default()))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let mut out: Vec<String> = Vec::new();
    for (p, v) in &ia {
        match ib.get(p) {
            Some(w) if w == v => {}
            Some(_) => out.push(format!("changed  {p}")),
            None => out.push(format!("missing  {p}")),
        }
    }
    for p in ib.keys().filter(|p| !ia.contains_key(*p)) {
        out.push(format!("added    {p}"));
    }
    out
}

/// A blob a mirror should hold: digest, what it is, where it came from.
pub struct MirrorBlob {
    pub digest: Digest,
    pub name: String,
    pub urls: Vec<String>,
}

/// Every blob a spec's build needs that its `[[source]]` URLs alone do not
/// give: the toolchain image pinned by hermit.lock (index, manifest, config,
/// layers) and the canonical tar of each local `path` source. Remote sources
/// are listed by the fetch plan.
pub fn mirror_blobs_for_spec(store: &Store, spec_path: &Path) -> anyhow::Result<Vec<MirrorBlob>> {
    let spec = Spec::load(spec_path).map_err(|e| Exit::user(e.to_string()))?;
    let dir = spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let lock_path = dir.join("hermit.lock");
    if let Some(lock) = Lock::read(&lock_path)? {
        let image = oci::find(store, &lock.toolchain.manifest)?.ok_or_else(|| {
            Exit::user(format!(
                "the toolchain image {} pinned by {} is not in the store; run `hermit build {}` first",
                lock.toolchain.manifest,
                lock_path.display(),
                spec_path.display()
            ))
        })?;
        out.extend(image_blobs(&image));
    }
    let profile = Profile::default_profile()?;
    for s in &spec.sources {
        if let SourceKind::Local {
            include, exclude, ..
        } = &s.kind
        {
            let root = local_source_root(&spec, s, dir)?;
            let digest = local_tree_blob(
                store,
                &root,
                include,
                exclude,
                profile.source_date_epoch.default,
            )
            .with_context(|| format!("source {:?}: hashing {}", s.name, root.display()))?;
            out.push(MirrorBlob {
                digest,
                name: format!("{} (local source, canonical tar)", s.name),
                urls: vec![],
            });
        }
    }
    Ok(out)
}

fn image_blobs(image: &Image) -> Vec<MirrorBlob> {
    image
        .digests()
        .into_iter()
        .map(|d| MirrorBlob {
            digest: d,
            name: format!("toolchain image {}", image.source),
            urls: vec![],
        })
        .collect()
}

/// Every blob a record's rebuild needs: sources, local trees, the image.
pub fn mirror_blobs_for_record(record_path: &Path) -> anyhow::Result<Vec<MirrorBlob>> {
    let (rec, _) = read_record(record_path)?;
    let mut out = Vec::new();
    for s in &rec.sources {
        match s {
            SourceRecord::Remote {
                name, urls, sha256, ..
            } => out.push(MirrorBlob {
                digest: *sha256,
                name: name.clone(),
                urls: urls.clone(),
            }),
            SourceRecord::Local { name, tree, .. } => out.push(MirrorBlob {
                digest: *tree,
                name: format!("{name} (local source, canonical tar)"),
                urls: vec![],
            }),
        }
    }
    let i = &rec.image;
    let mut image = vec![i.manifest, i.config];
    image.extend(i.index);
    image.extend(i.layers.iter().map(|l| l.digest));
    for d in image {
        out.push(MirrorBlob {
            digest: d,
            name: format!("toolchain image {}", i.reference),
            urls: vec![],
        });
    }
    Ok(out)
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
