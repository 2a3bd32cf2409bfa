//! Stage 5, run: the sandbox set up from the plan's environment alone
//! (never from anything a record says that the profile did not derive),
//! the script run under `/bin/sh -e -c`, its stdout and stderr logged into
//! the store (and echoed as [`Echo`] says), the limits watched.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use hermit_sandbox::{Mount, Outcome, SandboxSpec};
use hermit_store::{Digest, Store};

use super::materialise::Materialised;
use super::plan::Plan;
use super::{BuildOptions, Echo};
use crate::exit::{self, Exit};
use crate::limits;

/// A build that ran to a successful end, its log stored.
pub struct Ran {
    pub m: Materialised,
    pub log_digest: Digest,
    pub log_size: u64,
    pub started: SystemTime,
    pub t0: Instant,
}

/// The sandbox for a plan over its materialised inputs.
pub fn sandbox_spec(plan: &Plan, m: &Materialised) -> SandboxSpec {
    let r = &plan.resolved;
    let env = &r.environment;
    let p = &r.profile;
    let mut spec = SandboxSpec::profile_v1(
        &m.rootfs,
        vec![
            "/bin/sh".into(),
            "-e".into(),
            "-c".into(),
            r.spec.build.script.clone(),
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
            src: m.build_dir.clone(),
            dst: PathBuf::from(&env.build_path),
            writable: true,
        },
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
    spec.mounts = mounts;
    spec
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
    let spec = sandbox_spec(plan, &m);
    let log_path = m.staging.join("build.log");
    let mut guard = limits::Guard::new(
        &env.limits,
        &r.profile,
        vec![m.build_dir.clone(), m.out_dir.clone()],
    );
    t.lap(&r.spec_path, "run.prepare");
    let report = run_logged(&spec, &log_path, &opts.echo, &mut guard)?;
    t.lap(&r.spec_path, "run.sandbox");
    let limit_hit = guard.hit(&report, &log_path);
    let outcome = report.outcome.clone();
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
    } else {
        super::materialise::discard(&m.staging);
        msg.push_str("\n  (rerun with --keep-failed to keep /build and /out)");
    }
    let code = match outcome {
        Outcome::TimedOut(_) => exit::TIMEOUT,
        Outcome::SetupFailed(_) => exit::SANDBOX_SETUP,
        _ => exit::BUILD_FAILED,
    };
    Err(Exit::with_code(code, msg).with_log(log_digest).into())
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
        )
    };
    match tee.join() {
        Ok(r) => r.context("writing the build log")?,
        Err(_) => bail!("the log writer thread panicked"),
    }
    Ok(result?)
}
