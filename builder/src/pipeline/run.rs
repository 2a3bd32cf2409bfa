//! Stage 5, run: the sandbox set up from the plan's environment alone
//! (never from anything a record says that the profile did not derive),
//! the script run under `/bin/sh -e -c`, its stdout and stderr logged into
//! the store (and echoed as [`Echo`] says), the limits watched.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use hermit_sandbox::{Mount, Outcome, SandboxSpec};
use hermit_store::{Digest, Store};

use super::materialise::Materialised;
use super::plan::Plan;
use super::{BuildOptions, Echo};
use crate::environment;
use crate::exit::{self, Exit};
use crate::limits;

/// A build that ran to a successful end, its log stored.
pub struct Ran {
    pub m: Materialised,
    pub log_digest: Digest,
    pub log_size: u64,
    pub started: SystemTime,
    pub t0: Instant,
    /// Absolute symlinks into `$out` made relative (noted in the log).
    pub rewritten_links: Vec<crate::output::RewrittenLink>,
}

/// A change to a build's sandbox after [`sandbox_spec`] made it from the
/// environment: a `hermit check` variation.
#[derive(Clone)]
pub struct SandboxHook(pub std::sync::Arc<dyn Fn(&mut SandboxSpec) + Send + Sync>);

impl std::fmt::Debug for SandboxHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxHook")
    }
}

/// The sandbox for a plan over its materialised inputs: the profile's
/// environment ([`environment::sandbox_spec`]) with `/build`, `/out`, the
/// sources and the inputs bound.
pub fn sandbox_spec(plan: &Plan, m: &Materialised) -> SandboxSpec {
    let command = vec![
        "/bin/sh".into(),
        "-e".into(),
        "-c".into(),
        plan.resolved.spec.build.script.clone(),
        "hermit-build".into(),
    ];
    sandbox_spec_with(plan, m, command)
}

/// [`sandbox_spec`] running `command` instead of the build script
/// (`hermit shell`).
pub fn sandbox_spec_with(plan: &Plan, m: &Materialised, command: Vec<String>) -> SandboxSpec {
    let r = &plan.resolved;
    let env = &r.environment;
    let mut mounts = vec![
        m.build_mount.clone(),
        Mount::Bind {
            src: m.out_dir.clone(),
            dst: PathBuf::from(&env.out_path),
            writable: true,
        },
    ];
    for (name, path) in &m.sources {
        mounts.push(Mount::Bind {
            src: path.clone(),
            dst: Path::new(&env.sources_path).join(name),
            writable: false,
        });
    }
    for (name, path) in &m.inputs {
        mounts.push(Mount::Bind {
            src: path.clone(),
            dst: Path::new(&env.inputs_path).join(name),
            writable: false,
        });
    }
    environment::sandbox_spec(env, &r.profile, &m.rootfs, command, mounts)
}

/// Runs the build; a failed one is an error naming its log (and, with
/// `--keep-failed`, where its `/build` and `/out` were kept).
pub fn run(
    store: &Store,
    plan: &Plan,
    m: Materialised,
    opts: &BuildOptions,
) -> anyhow::Result<Ran> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let r = &plan.resolved;
    let mut t = crate::timing::start();
    let env = &r.environment;
    let mut spec = sandbox_spec(plan, &m);
    if let Some(vary) = &opts.vary {
        (vary.0)(&mut spec);
    }
    let log_path = m.staging.join("build.log");
    let mut guard = limits::Guard::new(
        &env.limits,
        &r.profile,
        vec![m.build_dir.clone(), m.out_dir.clone()],
    );
    t.lap(&r.spec_path, "run.prepare");
    // Held until the sandbox has ended: the build's share of `-j N`.
    let jobs =
        environment::enter_jobserver(&r.profile, env, opts.jobserver.as_ref(), opts.holds_slot)
            .context("the build's jobserver")?;
    let report = run_logged(&spec, jobs.pass, &log_path, &opts.echo, &mut guard);
    drop(jobs.slot);
    let report = report?;
    t.lap(&r.spec_path, "run.sandbox");
    let limit_hit = guard.hit(&report, &log_path);
    let outcome = report.outcome.clone();
    let rewritten_links = match outcome {
        Outcome::Exited(0) => relativise_links(&m.out_dir, &env.out_path, &log_path, &opts.echo)
            .inspect_err(|_| super::materialise::discard(&m.staging))?,
        _ => vec![],
    };
    let mut log_file =
        fs::File::open(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let log_size = log_file
        .metadata()
        .with_context(|| format!("reading {}", log_path.display()))?
        .len();
    let log_digest = store_log(store, &mut log_file, log_size)
        .with_context(|| format!("storing {}", log_path.display()))?;
    // The log is in the store now: the staging (or kept) directory does
    // not get a second copy of it.
    let _ = fs::remove_file(&log_path);
    t.lap(&r.spec_path, "run.store_log");
    if matches!(outcome, Outcome::Exited(0)) {
        return Ok(Ran {
            m,
            log_digest,
            log_size,
            started,
            t0,
            rewritten_links,
        });
    }

    let name = &r.spec.package.name;
    let mut msg = match &outcome {
        Outcome::Exited(n) => format!("build of {name} failed: the script exited with status {n}"),
        Outcome::Signaled(s) => {
            format!("build of {name} failed: the script was killed by signal {s}")
        }
        Outcome::TimedOut(d) => format!("build of {name} timed out after {} s", d.as_secs()),
        Outcome::SetupFailed(f) => format!("the build sandbox could not be set up: {f}"),
    };
    match &limit_hit {
        Some(why) => msg = format!("build of {name} failed: {why}"),
        None => {
            if let Some(note) = guard.memory_note(&report) {
                msg.push_str(&format!("\n  {note}"));
            }
        }
    }
    msg.push_str(&format!(
        "\n  log: {}",
        store.blob_path(&log_digest).display()
    ));
    let mut kept = None;
    if opts.keep_failed {
        let failed_root = store.base().join("failed");
        let failed = failed_root.join(plan.key.hex());
        fs::create_dir_all(&failed_root)
            .with_context(|| format!("creating {}", failed_root.display()))?;
        let _ = hermit_store::store::remove_tree(&failed);
        fs::rename(&m.staging, &failed)
            .with_context(|| format!("keeping the build directory at {}", failed.display()))?;
        msg.push_str(&format!(
            "\n  build directory: {} (/build), {} (/out)",
            failed.join("build").display(),
            failed.join("out").display()
        ));
        // What `hermit shell --failed` needs to enter it again.
        match crate::shell::note_kept(plan, &failed) {
            Ok(()) => msg.push_str(&format!(
                "\n  debug it in the build's environment: hermit shell --failed {}",
                failed.display()
            )),
            Err(e) => msg.push_str(&format!(
                "\n  (hermit shell --failed cannot enter it: {e:#})"
            )),
        }
        kept = Some(failed);
    } else {
        super::materialise::discard(&m.staging);
        msg.push_str("\n  (rerun with --keep-failed to keep /build and /out)");
    }
    let code = match outcome {
        Outcome::TimedOut(_) => exit::TIMEOUT,
        Outcome::SetupFailed(_) => exit::SANDBOX_SETUP,
        _ => exit::BUILD_FAILED,
    };
    let mut failure = Exit::with_code(code, msg)
        .with_log(log_digest)
        .detail("log", store.blob_path(&log_digest).display().to_string());
    if let Some(k) = kept {
        failure = failure.detail("build_dir", k.display().to_string());
    }
    Err(failure.into())
}

/// Makes the absolute symlinks into `$out` relative and says so at the end
/// of the build's log (and on stderr when the log is echoed there).
fn relativise_links(
    out_dir: &Path,
    out_path: &str,
    log_path: &Path,
    echo: &Echo,
) -> anyhow::Result<Vec<crate::output::RewrittenLink>> {
    let done = crate::output::relativise_links(out_dir, out_path).map_err(|e| {
        Exit::with_code(
            exit::BUILD_FAILED,
            format!("the build's $out cannot be stored: {e}"),
        )
    })?;
    let note = crate::output::rewritten_links_note(&done, out_path);
    if !note.is_empty() {
        fs::OpenOptions::new()
            .append(true)
            .open(log_path)
            .and_then(|mut f| f.write_all(note.as_bytes()))
            .with_context(|| format!("writing {}", log_path.display()))?;
        if matches!(echo, Echo::Stderr) {
            eprint!("{note}");
        }
    }
    Ok(done)
}

/// A log this small is read whole and hashed first: many builds log the
/// same few bytes (nothing at all, often), and a blob the store already
/// holds is not written again.
const SMALL_LOG: u64 = 64 << 10;

/// Stores the build log as a blob.
fn store_log(store: &Store, log: &mut fs::File, size: u64) -> anyhow::Result<Digest> {
    if size > SMALL_LOG {
        return Ok(store.add_reader(log, "the build log", None, None)?);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    log.read_to_end(&mut bytes)?;
    let digest = Digest::of(&bytes);
    if store.blob(&digest).is_some() {
        return Ok(digest);
    }
    let len = bytes.len() as u64;
    Ok(store.add_reader(&mut &bytes[..], "the build log", Some(&digest), Some(len))?)
}

/// Runs the sandbox with its stdout and stderr going through a pipe of
/// hermit's that a thread copies to the log file and as `echo` says.
fn run_logged(
    spec: &SandboxSpec,
    pass: Vec<hermit_sandbox::PassFd>,
    log_path: &Path,
    echo: &Echo,
    guard: &mut limits::Guard,
) -> anyhow::Result<hermit_sandbox::RunReport> {
    let log =
        fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the log pipe")?;
    let mut cap = guard.log_cap();
    let echo = echo.clone();
    let tee = std::thread::spawn(move || -> std::io::Result<()> {
        let mut r = fs::File::from(r);
        let mut log = log;
        let mut buf = vec![0u8; 64 << 10];
        let mut echoing = true;
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
            if echoing {
                match &echo {
                    Echo::Stderr => {
                        let mut err = std::io::stderr().lock();
                        let _ = err.write_all(&buf[..n]);
                        if !logging {
                            let _ = err.write_all(cap.note().as_bytes());
                        }
                    }
                    Echo::Nowhere => {}
                    Echo::LastLine(slot) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                            if let Ok(mut s) = slot.lock() {
                                *s = line.chars().take(200).collect();
                            }
                        }
                    }
                }
                echoing = logging;
            }
        }
        log.sync_all()
    });
    let result = {
        let mut check = || guard.check();
        hermit_sandbox::run_watched_to(
            spec,
            Path::new("/proc/self/exe"),
            w,
            Some(hermit_sandbox::Watch {
                every: limits::WATCH_EVERY,
                check: &mut check,
            }),
            pass,
        )
    };
    match tee.join() {
        Ok(r) => r.context("writing the build log")?,
        Err(_) => bail!("the log writer thread panicked"),
    }
    Ok(result?)
}
