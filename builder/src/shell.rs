//! `hermit shell`: a shell (or one command) in exactly a build's
//! environment — the same root filesystem, variables, user, names, umask,
//! working directory, `/sources` and `/inputs`, no network — with a
//! writable `/build` and `/out`.
//!
//! It is a build with another command: [`enter`] resolves a record
//! ([`resolve::from_record`], the environment derived again from its pinned
//! profile) or a spec ([`resolve::from_spec`]), plans it, materialises it
//! and runs [`run::sandbox_spec_with`] — the same stages as `hermit build`
//! and `hermit rebuild`, so the shell cannot drift from the build. A failed
//! build kept with `--keep-failed` is entered over its kept `/build` and
//! `/out` ([`note_kept`] leaves what that needs beside them).
//!
//! From a terminal, the command gets a pseudo-terminal of the sandbox's own
//! (see [`hermit_sandbox::terminal`]) and hermit relays to the caller's;
//! otherwise standard input, output and error are passed through (a
//! terminal on stdout or stderr through a pipe of hermit's, as for every
//! sandbox).

use std::fs;
use std::io::IsTerminal as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hermit_sandbox::{Mount, Outcome, RunError, SandboxSpec, Stdin};
use hermit_store::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::exit::{self, Exit};
use crate::graph;
use crate::limits;
use crate::net::NetArgs;
use crate::pipeline::materialise::{self, Materialised};
use crate::pipeline::plan::Plan;
use crate::pipeline::rebuild::{check_record, restore_input};
use crate::pipeline::resolve::{self, spec_dir, InputOutput};
use crate::pipeline::{run, BuildOptions};
use crate::record::{
    Environment, ImageRecord, InputRecord, LogRecord, OutputRecord, Package, ProfileRecord, Record,
    SourceRecord, SpecRecord, TextRecord,
};
use crate::spec::Spec;

/// What to step into.
#[derive(Debug, Clone)]
pub enum Source {
    /// A record's text (a `record.json`, or one taken out of a bundle), and
    /// where it came from, for messages.
    Record { text: String, origin: String },
    /// A spec: its inputs are built (or found cached) first.
    Spec(PathBuf),
    /// A failed build kept with `--keep-failed`: its directory (or its
    /// `build` directory), or `None` for the one that failed last.
    Failed(Option<PathBuf>),
}

/// How to run the shell.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// The command to run; empty for an interactive shell.
    pub command: Vec<String>,
    /// Never give the command a terminal, even from one.
    pub no_tty: bool,
    pub net: NetArgs,
    pub build: BuildOptions,
}

/// Runs the shell (or the command) in the build's environment; returns the
/// command's exit status (128 + N for a command killed by signal N).
pub fn enter(store: &Arc<Store>, source: Source, opts: &ShellOptions) -> anyhow::Result<u8> {
    let (plan, kept) = prepare(store, source, opts)?;
    let m = match &kept {
        None => materialise::materialise(store, &plan, &opts.net, &opts.build)?,
        Some(dir) => kept_materialised(store, &plan, dir, &opts.net, &opts.build)?,
    };
    let result = run_in(&plan, &m, kept.is_some(), opts);
    // A fresh /build and /out are the shell's scratch; a kept one stays.
    if kept.is_none() {
        materialise::discard(&m.staging);
    }
    result
}

/// Resolves and plans what `source` names; with `Some(dir)`, a kept
/// failed build's directory to enter (`hermit check` plans with it too).
pub(crate) fn prepare(
    store: &Arc<Store>,
    source: Source,
    opts: &ShellOptions,
) -> anyhow::Result<(Plan, Option<PathBuf>)> {
    match source {
        Source::Record { text, origin } => {
            let (rec, spec) = check_record(&text, &origin)?;
            Ok((plan_record(store, rec, spec, &origin, opts)?, None))
        }
        Source::Spec(path) => {
            let loaded = resolve::read_spec(&path)?;
            let inputs = built_inputs(store, &path, &loaded.0, opts)?;
            let resolved =
                resolve::from_spec(store, &path, loaded, &inputs, &opts.net, &opts.build)?;
            Ok((Plan::new(resolved)?, None))
        }
        Source::Failed(dir) => {
            let dir = match dir {
                Some(d) => kept_dir(&d)?,
                None => last_failed(store)?,
            };
            let origin = dir.join(KEPT_FILE).display().to_string();
            let text = limits::read_text(&dir.join(KEPT_FILE), limits::MAX_RECORD)
                .with_context(|| format!("reading {origin}"))?;
            let (rec, spec) = Kept::parse(&text, &origin)?;
            let named = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            if named.as_deref() != Some(rec.build_key.hex().as_str()) {
                return Err(Exit::user(format!(
                    "{origin}: it describes build key {}, but its directory is named {}; \
                     it was moved or edited: enter the directory hermit kept (hermit shell --failed)",
                    rec.build_key,
                    named.unwrap_or_default()
                ))
                .into());
            }
            Ok((plan_record(store, rec, spec, &origin, opts)?, Some(dir)))
        }
    }
}

/// Plans a record already checked: its inputs restored by digest, the
/// environment derived from its pinned profile, with the record's job
/// count (HERMIT_JOBS as the build had it) unless `-j` says otherwise.
fn plan_record(
    store: &Arc<Store>,
    rec: Record,
    spec: Spec,
    origin: &str,
    opts: &ShellOptions,
) -> anyhow::Result<Plan> {
    let mut inputs = Vec::new();
    for i in &rec.inputs {
        inputs.push(restore_input(store, i, &opts.net, origin)?);
    }
    let mut bopts = opts.build.clone();
    bopts.jobs = bopts.jobs.or(Some(rec.environment.jobs));
    let resolved = resolve::from_record(store, &rec, spec, origin, inputs, &opts.net, &bopts)?;
    let plan = Plan::new(resolved)?;
    if plan.key != rec.build_key {
        return Err(Exit::user(format!(
            "{origin}: its inputs hash to build key {}, but it says {}; it was edited or made by an incompatible hermit",
            plan.key, rec.build_key
        ))
        .into());
    }
    Ok(plan)
}

/// The outputs of a spec's `[inputs]`, built first (or found cached) as
/// `hermit build` would.
fn built_inputs(
    store: &Arc<Store>,
    spec_path: &Path,
    spec: &Spec,
    opts: &ShellOptions,
) -> anyhow::Result<Vec<InputOutput>> {
    let dir = spec_dir(spec_path);
    let mut out = Vec::new();
    for (name, input) in &spec.inputs {
        let g = graph::load(&[dir.join(&input.spec)])?;
        let states = graph::run(
            store,
            &g,
            &opts.net,
            &graph::RunOptions {
                build: opts.build.clone(),
                parallel: 1,
                fail_fast: true,
                no_progress: true,
            },
        );
        let built = g.tops.first().and_then(|&t| match &states[t] {
            graph::State::Built(b) => Some(b.clone()),
            _ => None,
        });
        let Some(b) = built else {
            let why = states
                .iter()
                .find_map(|s| match s {
                    graph::State::Failed { message, .. } => Some(message.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "it was not built".into());
            return Err(Exit::with_code(
                exit::BUILD_FAILED,
                format!("input {name:?} of {}: {why}", spec_path.display()),
            )
            .into());
        };
        out.push(InputOutput {
            record: InputRecord {
                name: name.clone(),
                spec: input.spec.clone(),
                output: b.record.output.digest,
                build_key: b.record.build_key,
            },
            path: b.output,
        });
    }
    Ok(out)
}

/// Runs the command in the plan's sandbox over `m`.
fn run_in(plan: &Plan, m: &Materialised, kept: bool, opts: &ShellOptions) -> anyhow::Result<u8> {
    let r = &plan.resolved;
    let tty = !opts.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let interactive = opts.command.is_empty();
    let command = if interactive {
        vec![shell_program(&m.rootfs, tty)]
    } else {
        opts.command.clone()
    };
    let mut spec = run::sandbox_spec_with(plan, m, command);
    adjust(&mut spec, tty);
    if interactive && !opts.build.quiet {
        let what = if kept {
            format!(
                "the kept /build and /out of the failed build {}",
                resolve::short(&plan.key)
            )
        } else {
            "/build and /out are scratch, removed on exit".into()
        };
        eprintln!(
            "hermit: entering the build environment of {} {} (build key {}); {what}",
            r.spec.package.name,
            r.spec.package.version,
            resolve::short(&plan.key)
        );
    }
    // The build's jobserver, so that `make` in the shell behaves as in the
    // build (its MAKEFLAGS names descriptors 3 and 4 under profile v3).
    let jobs = crate::environment::enter_jobserver(&r.profile, &r.environment, None, false)
        .context("the shell's jobserver")?;
    let helper = Path::new("/proc/self/exe");
    let report = if tty {
        run_with_terminal(&spec, helper, jobs.pass)?
    } else {
        let stdin = if std::io::stdin().is_terminal() {
            Stdin::Null
        } else {
            match std::io::stdin().as_fd().try_clone_to_owned() {
                Ok(fd) => Stdin::From(fd),
                // No standard input at all.
                Err(_) => Stdin::Null,
            }
        };
        hermit_sandbox::run_full(&spec, helper, stdin, None, jobs.pass).map_err(run_error)?
    };
    drop(jobs.slot);
    status(report.outcome)
}

/// What the shell changes of the build's sandbox: no time limit (a shell
/// waits for its user), and from a terminal the caller's TERM (a build has
/// no terminal, so its TERM, `dumb`, describes none; line editing and
/// full-screen programs need the real one).
fn adjust(spec: &mut SandboxSpec, tty: bool) {
    spec.timeout = None;
    if !tty {
        return;
    }
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty() && t.len() < 64 && t.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(term) = term {
        spec.set_env("TERM", &term);
    }
}

/// The interactive shell: bash when the root has it and there is a
/// terminal, else `/bin/sh`.
fn shell_program(rootfs: &Path, tty: bool) -> String {
    if tty && rootfs.join("bin/bash").is_file() {
        "/bin/bash".into()
    } else {
        "/bin/sh".into()
    }
}

/// Runs the sandbox with a terminal of its own, relayed to the caller's by
/// a thread of hermit's while this thread waits for the sandbox.
fn run_with_terminal(
    spec: &SandboxSpec,
    helper: &Path,
    pass: Vec<hermit_sandbox::PassFd>,
) -> anyhow::Result<hermit_sandbox::RunReport> {
    use hermit_sandbox::terminal;
    let (ours, theirs) = terminal::console().context("creating the terminal's socket")?;
    let size = terminal::window_size(std::io::stdin().as_fd());
    let hung_up = Arc::new(AtomicBool::new(false));
    let flag = hung_up.clone();
    let relay = std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        let end = terminal::relay(ours, stdin.as_fd(), stdout.as_fd());
        if !matches!(end, Ok(terminal::RelayEnd::Ended)) {
            flag.store(true, Ordering::SeqCst);
        }
        end
    });
    // A hung-up terminal ends a shell at once; a command that ignores the
    // hang-up is killed after a grace period.
    let mut since: Option<Instant> = None;
    let mut check = || {
        if !hung_up.load(Ordering::SeqCst) {
            return false;
        }
        let t = *since.get_or_insert_with(Instant::now);
        t.elapsed() >= Duration::from_secs(2)
    };
    let report = hermit_sandbox::run_full(
        spec,
        helper,
        hermit_sandbox::Stdin::Terminal {
            console: theirs,
            size,
        },
        Some(hermit_sandbox::Watch {
            every: Duration::from_millis(200),
            check: &mut check,
        }),
        pass,
    );
    let relayed = relay.join();
    let report = report.map_err(run_error)?;
    match relayed {
        Ok(Ok(_)) => Ok(report),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("relaying the terminal")),
        Err(_) => Err(Exit::with_code(exit::INTERNAL, "the terminal relay panicked").into()),
    }
}

fn run_error(e: RunError) -> anyhow::Error {
    match e {
        RunError::Spec(e) => anyhow::Error::new(Exit::user(format!("invalid sandbox: {e}"))),
        e @ RunError::Spawn { .. } | e @ RunError::Pipe(_) => anyhow::Error::new(e).context(
            Exit::with_code(exit::SANDBOX_SETUP, "the sandbox could not be started"),
        ),
        other => anyhow::Error::new(other).context(Exit::with_code(
            exit::INTERNAL,
            "hermit lost track of the sandbox; this is a bug in hermit, please report it",
        )),
    }
}

/// The command's status as hermit's exit status.
fn status(outcome: Outcome) -> anyhow::Result<u8> {
    match outcome {
        Outcome::Exited(c) => Ok(u8::try_from(c).unwrap_or(exit::BUILD_FAILED)),
        Outcome::Signaled(s) => Ok(u8::try_from(128 + s).unwrap_or(exit::BUILD_FAILED)),
        Outcome::TimedOut(t) => {
            Err(Exit::with_code(exit::TIMEOUT, format!("timed out after {} s", t.as_secs())).into())
        }
        Outcome::SetupFailed(f) => Err(crate::cmd::sandbox::setup_failed(&f)),
    }
}

// ---------------------------------------------------------------------------
// Failed builds kept with --keep-failed.

/// The file beside a kept failed build's `build/` and `out/` that says
/// what its environment was.
pub const KEPT_FILE: &str = "failed.json";

/// What `hermit shell --failed` needs of a failed build: the key inputs of
/// its record (everything but an output it never made). Version 1.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kept {
    kept_version: u64,
    build_key: Digest,
    package: Package,
    spec: SpecRecord,
    lock: Option<TextRecord>,
    image: ImageRecord,
    sources: Vec<SourceRecord>,
    inputs: Vec<InputRecord>,
    profile: ProfileRecord,
    environment: Environment,
}

const KEPT_VERSION: u64 = 1;

impl Kept {
    /// Parses a kept build's file (untrusted, like a record): its key must
    /// be the digest of its inputs, its spec must derive its toolchain and
    /// sources ([`crate::derive::check_static`]). Returns it as a record
    /// without an output, and its spec.
    fn parse(text: &str, origin: &str) -> anyhow::Result<(Record, Spec)> {
        let kept: Kept = serde_json::from_str(text).map_err(|e| {
            Exit::user(format!(
                "{origin}: not a kept build hermit can read: {e}; it is written by `hermit build --keep-failed`"
            ))
        })?;
        if kept.kept_version != KEPT_VERSION {
            return Err(Exit::user(format!(
                "{origin}: kept_version {} is not one this hermit reads ({KEPT_VERSION})",
                kept.kept_version
            ))
            .into());
        }
        let rec = kept.into_record();
        // The same checks as a record's: digests of the texts, the key.
        rec.validate(origin)
            .map_err(|e| Exit::user(e.to_string()))?;
        let spec = Spec::parse(Path::new(&rec.spec.file), &rec.spec.text)
            .map_err(|e| Exit::user(format!("{origin}: the kept spec: {e}")))?;
        crate::derive::check_static(&rec, &spec, origin).map_err(|e| Exit::user(e.to_string()))?;
        Ok((rec, spec))
    }

    /// The record of the failed build, without an output (it made none).
    fn into_record(self) -> Record {
        let kept = self;
        Record {
            record_version: crate::record::RECORD_VERSION,
            hermit: crate::record::HermitInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            build_key: kept.build_key,
            package: kept.package,
            spec: kept.spec,
            lock: kept.lock,
            image: kept.image,
            sources: kept.sources,
            inputs: kept.inputs,
            profile: kept.profile,
            environment: kept.environment,
            // The build made no output.
            output: OutputRecord {
                format: crate::output::FORMAT,
                digest: Digest::of(b""),
                tar_size: 0,
                files: vec![],
                rewritten_links: vec![],
            },
            log: LogRecord {
                digest: Digest::of(b""),
                size: 0,
            },
            informational: crate::record::Informational::collect(None, None),
        }
    }

    /// The key inputs of `rec`.
    #[cfg(test)]
    fn of_record(rec: &Record) -> Kept {
        Kept {
            kept_version: KEPT_VERSION,
            build_key: rec.build_key,
            package: rec.package.clone(),
            spec: rec.spec.clone(),
            lock: rec.lock.clone(),
            image: rec.image.clone(),
            sources: rec.sources.clone(),
            inputs: rec.inputs.clone(),
            profile: rec.profile.clone(),
            environment: rec.environment.clone(),
        }
    }

    /// Pretty JSON (fields in their order here), with a final newline.
    fn to_text(&self) -> anyhow::Result<String> {
        let mut text = serde_json::to_string_pretty(self).context("serialising the kept build")?;
        text.push('\n');
        Ok(text)
    }
}

/// Writes [`KEPT_FILE`] into `dir`, where the run stage kept a failed
/// build of `plan`.
pub fn note_kept(plan: &Plan, dir: &Path) -> anyhow::Result<()> {
    let r = &plan.resolved;
    let file = r
        .spec_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "spec.toml".to_string());
    let kept = Kept {
        kept_version: KEPT_VERSION,
        build_key: plan.key,
        package: plan.package(),
        spec: SpecRecord {
            file,
            digest: Digest::of(r.spec_text.as_bytes()),
            text: r.spec_text.clone(),
        },
        lock: r.lock_text.clone().map(TextRecord::new),
        image: plan.image.clone(),
        sources: plan.sources.clone(),
        inputs: plan.inputs.clone(),
        profile: plan.profile.clone(),
        environment: r.environment.clone(),
    };
    let text = kept.to_text()?;
    let path = dir.join(KEPT_FILE);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The kept directory `given` names: the directory itself, or its `build`
/// (what the failed build's message shows).
fn kept_dir(given: &Path) -> anyhow::Result<PathBuf> {
    for d in [
        Some(given),
        given.parent().filter(|_| given.ends_with("build")),
    ]
    .into_iter()
    .flatten()
    {
        if d.join(KEPT_FILE).is_file() {
            return fs::canonicalize(d).with_context(|| format!("reading {}", d.display()));
        }
    }
    Err(Exit::user(format!(
        "{}: not a failed build kept by `hermit build --keep-failed` (it has no {KEPT_FILE}); \
         give the directory the failed build's message names, or --failed alone for the last one",
        given.display()
    ))
    .into())
}

/// The failed build kept last (by the time of its [`KEPT_FILE`]).
fn last_failed(store: &Store) -> anyhow::Result<PathBuf> {
    let root = store.base().join("failed");
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            let Ok(t) = e
                .path()
                .join(KEPT_FILE)
                .metadata()
                .and_then(|m| m.modified())
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| t > *b) {
                best = Some((t, e.path()));
            }
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        Exit::user(format!(
            "no failed build is kept in {}; build with --keep-failed to keep one",
            root.display()
        ))
        .into()
    })
}

/// The sandbox's binds for a kept failed build: the same read-only ones as
/// a build's, over the kept `build/` (under the workdir's overlay again,
/// with one) and `out/`.
fn kept_materialised(
    store: &Arc<Store>,
    plan: &Plan,
    dir: &Path,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Materialised> {
    let r = &plan.resolved;
    let (rootfs, sources, inputs) = materialise::bound(store, plan, net, opts)?;
    let build_dir = dir.join("build");
    let out_dir = dir.join("out");
    for d in [&build_dir, &out_dir] {
        if !d.is_dir() {
            return Err(Exit::user(format!(
                "{}: missing from the kept build; it cannot be entered",
                d.display()
            ))
            .into());
        }
    }
    let dst = Path::new(&r.environment.build_path);
    let build_mount = match &r.spec.build.workdir {
        None => Mount::Bind {
            src: build_dir.clone(),
            dst: dst.to_path_buf(),
            writable: true,
        },
        Some(w) => {
            let Some((_, root)) = sources.iter().find(|(name, _)| *name == w.source) else {
                anyhow::bail!(
                    "internal error: workdir source {:?} is not planned",
                    w.source
                );
            };
            crate::workdir::reopen(
                w,
                root,
                &build_dir,
                &crate::workdir::work_dir(&build_dir),
                dst,
            )?
        }
    };
    Ok(Materialised {
        rootfs,
        sources,
        inputs,
        staging: dir.to_path_buf(),
        build_dir,
        out_dir,
        build_mount,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn golden_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/kept/failed-v1.json")
    }

    /// `failed.json` is a format: its bytes are fixed, and what it says
    /// gives back the record's build key.
    #[test]
    fn golden_kept_build() {
        let rec = crate::record::tests::sample_with("v3");
        let text = Kept::of_record(&rec).to_text().unwrap();
        let path = golden_path();
        if std::env::var_os("HERMIT_BLESS").is_some() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &text).unwrap();
        }
        let golden = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text, golden,
            "failed-v1.json changed; rerun with HERMIT_BLESS=1 if intended"
        );
        let back: Kept = serde_json::from_str(&golden).unwrap();
        let again = back.into_record();
        again.validate("failed.json").unwrap();
        assert_eq!(again.build_key, rec.build_key);
        assert_eq!(again.key_inputs().build_key(), rec.build_key);
    }

    #[test]
    fn an_edited_kept_build_is_refused() {
        let rec = crate::record::tests::sample_with("v3");
        let text = Kept::of_record(&rec).to_text().unwrap();
        let edited = text.replacen("\"hostname\": \"", "\"hostname\": \"x", 1);
        assert_ne!(edited, text);
        let e = Kept::parse(&edited, "k/failed.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("k/failed.json") && e.contains("build_key"),
            "{e}"
        );
        let e = Kept::parse("{\"kept_version\": 2}", "k/failed.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k/failed.json"), "{e}");
    }
}
