//! `hermit check SPEC|RECORD`: builds a control and one variant per
//! variation of the build environment, and compares each variant's output
//! with the control's file by file (the records' file lists).
//!
//! Every build runs through the pipeline's own stages
//! ([`pipeline::run_stages`]: materialise → run → collect) from one plan
//! ([`crate::shell::prepare`]: a spec's inputs built or found cached, a
//! record's restored by digest). A variation changes the build in one of two
//! ways, both explicit: the plan's environment (HERMIT_JOBS, the jobserver's
//! slots), or the [`hermit_sandbox::SandboxSpec`] that
//! [`crate::environment::sandbox_spec`] made from the pinned profile, through
//! [`SandboxHook`] (CPU affinity, personality, ASLR, variables, user, …).
//! Nothing a spec or record says decides a variation.
//!
//! Nothing is installed: the control and the variants are staged outputs,
//! discarded when identical; a differing variant is kept with the control
//! under `v1/checks/<build-key>/` with diffoscope's report of its first
//! differing files (when diffoscope is installed).

mod cause;
mod vary;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hermit_sandbox::SandboxSpec;
use hermit_store::Store;
use serde::Serialize;

use crate::exit::Exit;
use crate::net::NetArgs;
use crate::pipeline::plan::Plan;
use crate::pipeline::run::SandboxHook;
use crate::pipeline::{self, BuildOptions, Echo};
use crate::shell::{self, ShellOptions, Source};
use cause::Marker;

/// One variation of the build environment.
#[derive(Debug)]
pub struct Variation {
    pub name: &'static str,
    /// Varied by default: hermit cannot normalise it.
    pub default: bool,
    /// The reproducible-builds cause a difference under it points to.
    pub cause: &'static str,
}

/// Every variation `hermit check` knows, in the order it runs them.
pub const VARIATIONS: &[Variation] = &[
    Variation {
        name: "repeat",
        default: true,
        cause: PLAIN,
    },
    Variation {
        name: "jobs",
        default: true,
        cause: "parallelism (HERMIT_JOBS)",
    },
    Variation {
        name: "cpus",
        default: true,
        cause: "CPU count",
    },
    Variation {
        name: "uname",
        default: true,
        cause: "architecture information (uname)",
    },
    Variation {
        name: "kernel",
        default: true,
        cause: cause::KERNEL,
    },
    Variation {
        name: "randomness",
        default: true,
        cause: "randomness / snippet encoding (random seeds)",
    },
    Variation {
        name: "aslr",
        default: true,
        cause: "references to memory addresses (ASLR)",
    },
    Variation {
        name: "clock",
        default: true,
        cause: "build timestamp (the clock)",
    },
    Variation {
        name: "dirorder",
        default: true,
        cause: "filesystem ordering",
    },
    Variation {
        name: "umask",
        default: false,
        cause: "file permissions (umask)",
    },
    Variation {
        name: "hostname",
        default: false,
        cause: "system DNS name (host and domain name)",
    },
    Variation {
        name: "user",
        default: false,
        cause: "user information",
    },
    Variation {
        name: "locale",
        default: false,
        cause: "locale / file encoding",
    },
    Variation {
        name: "timezone",
        default: false,
        cause: "time zone",
    },
    Variation {
        name: "malloc",
        default: false,
        cause: "uninitialised memory",
    },
    Variation {
        name: "buildpath",
        default: false,
        cause: cause::BUILD_PATH,
    },
    Variation {
        name: "archive",
        default: false,
        cause: cause::ARCHIVE,
    },
    Variation {
        name: "packages",
        default: false,
        cause: cause::PACKAGES,
    },
    Variation {
        name: "environment",
        default: false,
        cause: cause::ENVIRONMENT,
    },
];

/// The cause of a difference a build with nothing varied shows too.
const PLAIN: &str = "plain nondeterminism (randomness, the clock, thread scheduling)";

/// The variations to run: `vary` (names, or `all`; the defaults when
/// empty) less `no_vary`.
pub fn select(vary: &[String], no_vary: &[String]) -> anyhow::Result<Vec<&'static Variation>> {
    let known = || {
        VARIATIONS
            .iter()
            .map(|v| v.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find = |n: &str| -> anyhow::Result<&'static Variation> {
        VARIATIONS.iter().find(|v| v.name == n).ok_or_else(|| {
            Exit::user(format!(
                "unknown variation {n:?}; the variations are: {}, and `all`",
                known()
            ))
            .into()
        })
    };
    let split = |l: &[String]| -> Vec<String> {
        l.iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let (vary, no_vary) = (split(vary), split(no_vary));
    let mut chosen: Vec<&'static Variation> = Vec::new();
    if vary.is_empty() {
        chosen.extend(VARIATIONS.iter().filter(|v| v.default));
    }
    for n in &vary {
        if n == "all" {
            chosen.extend(VARIATIONS.iter());
        } else {
            chosen.push(find(n)?);
        }
    }
    let mut drop = Vec::new();
    for n in &no_vary {
        drop.push(find(n)?.name);
    }
    // In the table's order, each once.
    let out: Vec<&'static Variation> = VARIATIONS
        .iter()
        .filter(|v| chosen.iter().any(|c| c.name == v.name) && !drop.contains(&v.name))
        .collect();
    if out.is_empty() {
        return Err(Exit::user("no variation left to check (--no-vary removed them all)").into());
    }
    Ok(out)
}

/// What `hermit check` was asked.
pub struct CheckOptions {
    pub variations: Vec<&'static Variation>,
    pub net: NetArgs,
    /// HERMIT_JOBS of the control build (the machine's CPU count when not
    /// given).
    pub jobs: Option<u32>,
    pub quiet: bool,
}

/// One differing path.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// `changed`, `missing` (in the variant) or `added` (by the variant).
    pub how: String,
    pub path: String,
    /// Its likely cause ([`cause::classify`]).
    pub cause: Option<String>,
    /// What shows it: the varied value found in the differing bytes, the
    /// shape of the difference, or that the variation alone says it.
    pub evidence: Option<String>,
}

/// What one variation found.
#[derive(Debug, Clone, Serialize)]
pub struct VariationReport {
    pub name: String,
    /// Whether the build environment was varied at all (a variation this
    /// machine or image cannot apply is not).
    pub varied: bool,
    /// What was varied, from what to what (or why nothing was).
    pub what: String,
    /// The variant's output equals the control's (`None`: not varied, or
    /// the variant's build failed).
    pub identical: Option<bool>,
    pub differing_files: Vec<Difference>,
    /// Likely causes of the difference (empty when identical).
    pub causes: Vec<String>,
    /// The variant's output, kept when it differs.
    pub output: Option<PathBuf>,
    /// diffoscope's text report of the first differing files.
    pub diffoscope: Option<PathBuf>,
    /// The same as one HTML page.
    pub diffoscope_html: Option<PathBuf>,
    /// The variant's build failed (while the control's succeeded).
    pub error: Option<String>,
}

impl VariationReport {
    fn reproducible(&self) -> bool {
        self.error.is_none() && self.identical != Some(false)
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub reproducible: bool,
    pub package: String,
    pub build_key: String,
    pub control_digest: String,
    /// The control's output, kept when a variant differs.
    pub control_output: Option<PathBuf>,
    pub variations: Vec<VariationReport>,
}

/// How one variant is built: the plan's job count and a change to the
/// sandbox, with what it varies.
pub(crate) struct Variant {
    jobs: Option<u32>,
    hook: Option<SandboxHook>,
    /// What is varied; the hook may replace it (e.g. when the image turns
    /// out to lack what the variation needs).
    what: Arc<Mutex<(bool, String)>>,
    /// FUSE mounts the hook made, unmounted when the build has ended.
    fuse: Arc<Mutex<Vec<PathBuf>>>,
    /// The build path of this build only (a check-only override of the
    /// profile's, noted in the variant's record).
    build_path: Option<String>,
    /// The values varied, for [`cause::classify`]; the sandbox's changes
    /// are added when the hook runs.
    markers: Arc<Mutex<Vec<Marker>>>,
    /// Scratch trees the hook made, removed when the build has ended.
    scratch: Arc<Mutex<Vec<PathBuf>>>,
}

impl Default for Variant {
    fn default() -> Variant {
        Variant {
            jobs: None,
            hook: None,
            what: Arc::new(Mutex::new((true, String::new()))),
            fuse: Arc::default(),
            build_path: None,
            markers: Arc::default(),
            scratch: Arc::default(),
        }
    }
}

pub(crate) fn hook(f: impl Fn(&mut SandboxSpec) + Send + Sync + 'static) -> Option<SandboxHook> {
    Some(SandboxHook(Arc::new(f)))
}

/// The CPUs hermit may run on (its affinity).
fn affinity_cpus() -> u32 {
    crate::pipeline::resolve::host_cpus()
}

/// How to build the variant of `v`, or why this machine cannot vary it.
pub(crate) fn variant(v: &Variation, control_jobs: u32, ctx: &Ctx) -> Result<Variant, String> {
    let what = |s: String| Arc::new(Mutex::new((true, s)));
    Ok(match v.name {
        "repeat" => Variant {
            jobs: None,
            hook: None,
            what: what("nothing: a second control build, to tell plain nondeterminism from one variation's effect".into()),
            ..Variant::default()
        },
        "jobs" => {
            let other = if control_jobs == 1 { 2 } else { 1 };
            Variant {
                jobs: Some(other),
                hook: None,
                what: what(format!(
                    "HERMIT_JOBS and the jobserver's slots: {control_jobs} → {other}"
                )),
                markers: Arc::new(Mutex::new(vec![Marker::new(
                    cause::JOBS,
                    "HERMIT_JOBS",
                    &control_jobs.to_string(),
                    &other.to_string(),
                )])),
                ..Variant::default()
            }
        }
        "cpus" => {
            let have = affinity_cpus();
            if have < 2 {
                return Err(format!(
                    "not varied: hermit may run on {have} CPU only here, and affinity can only take CPUs away"
                ));
            }
            Variant {
                jobs: None,
                hook: hook(|s| s.cpus = Some(1)),
                what: what(format!(
                    "the CPUs the build may run on (sched_setaffinity; what nproc reports): {have} → 1; \
                     /proc/cpuinfo and /proc/stat list that one CPU, numbered 0"
                )),
                ..Variant::default()
            }
        }
        "uname" => {
            let (from, to) = match std::env::consts::ARCH {
                "x86_64" => ("x86_64", "i686"),
                "aarch64" => ("aarch64", "armv8l"),
                other => (other, "its 32-bit name"),
            };
            Variant {
                jobs: None,
                hook: hook(|s| s.linux32 = true),
                what: what(format!(
                    "the machine name uname reports (personality PER_LINUX32): {from} → {to}; \
                     the kernel release and version (uname -r, -v) are the kernel variation's"
                )),
                ..Variant::default()
            }
        }
        "randomness" => Variant {
            jobs: None,
            hook: hook(|s| {
                s.set_env("PYTHONHASHSEED", "4242");
                s.set_env("PERL_HASH_SEED", "4242");
                s.set_env("PERL_PERTURB_KEYS", "2");
            }),
            what: what(
                "the random seeds interpreters take from the environment (PYTHONHASHSEED, PERL_HASH_SEED): unset → 4242; \
                 /dev/urandom and getrandom(2) cannot be made deterministic, so two builds draw different values anyway"
                    .into(),
            ),
            ..Variant::default()
        },
        "aslr" => {
            let what = what(
                "address-space layout randomisation (personality ADDR_NO_RANDOMIZE): the profile's setting → the other"
                    .into(),
            );
            let note = what.clone();
            Variant {
                jobs: None,
                hook: hook(move |s| {
                    let word = |on: bool| if on { "on" } else { "off" };
                    *lock(&note) = (
                        true,
                        format!(
                            "address-space layout randomisation (personality ADDR_NO_RANDOMIZE): {} → {}",
                            word(s.aslr),
                            word(!s.aslr)
                        ),
                    );
                    s.aslr = !s.aslr;
                }),
                what,
                ..Variant::default()
            }
        }
        "clock" => vary::clock()?,
        "umask" => Variant {
            jobs: None,
            hook: hook(|s| s.umask = if s.umask == 0o002 { 0o022 } else { 0o002 }),
            what: what("the umask: the profile's → 0002 (or 0022)".into()),
            ..Variant::default()
        },
        "hostname" => Variant {
            jobs: None,
            hook: hook(|s| {
                s.hostname = "hermit-check-variant".into();
                s.domainname = "check.invalid".into();
            }),
            what: what(
                "the host and domain name: the profile's → hermit-check-variant, check.invalid"
                    .into(),
            ),
            ..Variant::default()
        },
        "user" => Variant {
            jobs: None,
            hook: hook(|s| {
                s.user = "checker".into();
                s.group = "checkers".into();
                s.uid = s.uid.wrapping_add(1000).max(1);
                s.gid = s.gid.wrapping_add(1000).max(1);
                // Another home, which does not exist either (hidden like the
                // profile's): a build that records $HOME shows it.
                s.home = std::path::PathBuf::from("/home/checker");
                for (k, v) in [("USER", "checker"), ("LOGNAME", "checker"), ("HOME", "/home/checker")] {
                    if s.env.iter().any(|(n, _)| n == k) {
                        s.set_env(k, v);
                    }
                }
            }),
            what: what("the user and group (name, uid, gid, home): the profile's → checker/checkers, uid and gid + 1000, /home/checker".into()),
            ..Variant::default()
        },
        "locale" => Variant {
            jobs: None,
            hook: hook(|s| {
                s.set_env("LANG", "fr_FR.ISO-8859-1");
                s.set_env("LC_ALL", "fr_FR.ISO-8859-1");
            }),
            what: what(
                "LANG and LC_ALL: the profile's → fr_FR.ISO-8859-1 (another charset and collation where the image has that locale)"
                    .into(),
            ),
            ..Variant::default()
        },
        "timezone" => Variant {
            jobs: None,
            hook: hook(|s| s.set_env("TZ", "CHK-13:45")),
            what: what(
                "TZ: the profile's → CHK-13:45 (a POSIX zone 13 h 45 min ahead of UTC; needs no zoneinfo)"
                    .into(),
            ),
            ..Variant::default()
        },
        "malloc" => Variant {
            jobs: None,
            hook: hook(|s| s.set_env("MALLOC_PERTURB_", "165")),
            what: what("glibc's MALLOC_PERTURB_: unset → 165 (freed and fresh memory filled)".into()),
            ..Variant::default()
        },
        "dirorder" => dirorder(ctx, what(String::new()))?,
        "kernel" => vary::kernel()?,
        "buildpath" => vary::build_path(&ctx.build_path),
        "archive" => vary::archive(ctx),
        "packages" => vary::packages(ctx),
        "environment" => Variant {
            hook: hook(|s| s.set_env("HERMIT_CHECK_EXTRA", "hermit-check-extra-value")),
            what: what(
                "an extra environment variable: HERMIT_CHECK_EXTRA unset → hermit-check-extra-value"
                    .into(),
            ),
            ..Variant::default()
        },
        other => return Err(format!("not varied: hermit does not know variation {other:?}")),
    })
}

/// What the variations need to know of the build.
pub(crate) struct Ctx {
    /// Where FUSE mount points go (the store's session directory).
    scratch: PathBuf,
    sources_path: PathBuf,
    build_path: PathBuf,
}

/// `dirorder`: the sources and `/build` seen through disorderfs, which
/// lists every directory in reverse order.
fn dirorder(ctx: &Ctx, what: Arc<Mutex<(bool, String)>>) -> Result<Variant, String> {
    let Some(tool) = find_in_path("disorderfs") else {
        return Err(
            "not varied: disorderfs is not installed (Debian package disorderfs, with fuse3)"
                .into(),
        );
    };
    if !Path::new("/dev/fuse").exists() {
        return Err("not varied: this machine has no /dev/fuse".into());
    }
    use nix::unistd::{access, AccessFlags};
    if access("/dev/fuse", AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
        return Err(
            "not varied: /dev/fuse is not open to this user (Debian's default is mode 0666: chmod 0666 /dev/fuse)"
                .into(),
        );
    }
    let fuse: Arc<Mutex<Vec<PathBuf>>> = Arc::new(Mutex::new(Vec::new()));
    let (done, note) = (fuse.clone(), what.clone());
    let scratch = ctx.scratch.clone();
    let (sources, build) = (ctx.sources_path.clone(), ctx.build_path.clone());
    let hook = hook(move |s| {
        let mut done = lock(&done);
        let mut wrapped = Vec::new();
        let mut failed = None;
        for m in s.mounts.iter_mut() {
            let hermit_sandbox::Mount::Bind { src, dst, .. } = m else {
                continue;
            };
            if !(dst.starts_with(&sources) || *dst == build) || !src.is_dir() {
                continue;
            }
            let mnt = match hermit_store::store::temp_dir(&scratch) {
                Ok(d) => d,
                Err(e) => {
                    failed = Some(format!("a mount point: {e}"));
                    break;
                }
            };
            match Command::new(&tool)
                .args(["-q", "--reverse-dirents=yes", "--pad-blocks=0"])
                .arg(&*src)
                .arg(&mnt)
                .output()
            {
                Ok(o) if o.status.success() => {
                    done.push(mnt.clone());
                    wrapped.push(dst.display().to_string());
                    *src = mnt;
                }
                Ok(o) => {
                    let _ = fs::remove_dir(&mnt);
                    failed = Some(format!(
                        "disorderfs {}: {}",
                        src.display(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                    break;
                }
                Err(e) => {
                    let _ = fs::remove_dir(&mnt);
                    failed = Some(format!("running disorderfs: {e}"));
                    break;
                }
            }
        }
        *lock(&note) = match failed {
            Some(why) => (false, format!("not varied: {why}")),
            None if wrapped.is_empty() => (
                false,
                "not varied: no source or /build directory to reorder".into(),
            ),
            None => (
                true,
                format!(
                    "the order directories list their entries in (disorderfs, reversed): {}",
                    wrapped.join(", ")
                ),
            ),
        };
        if !matches!(*lock(&note), (true, _)) {
            // Nothing half-varied: undo what was mounted.
            unmount_all(&mut done);
        }
    });
    Ok(Variant {
        jobs: None,
        hook,
        what,
        fuse,
        ..Variant::default()
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Unmounts (and removes) FUSE mount points a variation made.
fn unmount_all(mounts: &mut Vec<PathBuf>) {
    for m in mounts.drain(..) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&m)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&m)
                .output();
        }
        let _ = fs::remove_dir(&m);
    }
}

/// Runs the check: a control build, then one variant per variation, each
/// compared with the control.
pub fn check(store: &Arc<Store>, target: &Path, opts: &CheckOptions) -> anyhow::Result<Report> {
    let text = crate::limits::read_text(target, crate::limits::MAX_RECORD)
        .map_err(|e| Exit::user(format!("{}: cannot read it: {e}", target.display())))?;
    let source = if text.trim_start().starts_with('{') {
        Source::Record {
            text,
            origin: target.display().to_string(),
        }
    } else {
        Source::Spec(target.to_path_buf())
    };
    let bopts = BuildOptions {
        jobs: opts.jobs,
        quiet: opts.quiet,
        echo: Echo::Nowhere,
        ..BuildOptions::default()
    };
    let sopts = ShellOptions {
        command: vec![],
        no_tty: true,
        net: opts.net.clone(),
        build: bopts.clone(),
    };
    let (mut plan, _) = shell::prepare(store, source, &sopts)?;
    let name = plan.resolved.spec.package.name.clone();
    let control_jobs = plan.resolved.environment.jobs;
    let say = |m: &str| {
        if !opts.quiet {
            eprintln!("hermit: check {name}: {m}");
        }
    };

    say("control build");
    let control = pipeline::run_stages(store, &plan, &opts.net, &bopts)
        .context("the control build (nothing varied) failed; fix the build first")?;
    let dir = store.base().join("checks").join(plan.key.hex());
    let _ = hermit_store::store::remove_tree(&dir);

    // The control stays in staging until a variant differs; then it is
    // kept beside it, for diffoscope and the user.
    let ctx = Ctx {
        scratch: store.tmp_dir().to_path_buf(),
        sources_path: PathBuf::from(&plan.resolved.environment.sources_path),
        build_path: PathBuf::from(&plan.resolved.environment.build_path),
    };
    let mut control_dir = control.dir.clone();
    let mut control_kept = false;
    let mut reports = Vec::new();
    for v in &opts.variations {
        let variant = match variant(v, control_jobs, &ctx) {
            Ok(x) => x,
            Err(why) => {
                say(&format!("{}: {why}", v.name));
                reports.push(VariationReport {
                    name: v.name.into(),
                    varied: false,
                    what: why,
                    identical: None,
                    differing_files: vec![],
                    causes: vec![],
                    output: None,
                    diffoscope: None,
                    diffoscope_html: None,
                    error: None,
                });
                continue;
            }
        };
        say(&format!("varying {}", v.name));
        // HERMIT_JOBS is no part of the build key: the plan's environment
        // takes the variant's job count for this build only.
        if let Some(j) = variant.jobs {
            set_jobs(&mut plan, j);
        }
        // The build path likewise: a check-only override of the profile's,
        // which the variant's record states (environment.build_path).
        // The variant's record is the record of that environment: its key
        // is that environment's key (never installed, never looked up).
        let profile_build_path = plan.resolved.environment.build_path.clone();
        let control_key = plan.key;
        if let Some(p) = &variant.build_path {
            plan.resolved.environment.build_path = p.clone();
            plan.key = plan.key_inputs().build_key();
        }
        let vopts = BuildOptions {
            vary: with_markers(variant.hook.clone(), variant.markers.clone()),
            ..bopts.clone()
        };
        let built = pipeline::run_stages(store, &plan, &opts.net, &vopts);
        set_jobs(&mut plan, control_jobs);
        plan.resolved.environment.build_path = profile_build_path;
        plan.key = control_key;
        unmount_all(&mut lock(&variant.fuse));
        for d in lock(&variant.scratch).drain(..) {
            let _ = hermit_store::store::remove_tree(&d);
        }
        let (varied, what) = lock(&variant.what).clone();
        let what_now = what.clone();
        let mut rep = VariationReport {
            name: v.name.into(),
            varied,
            what,
            identical: None,
            differing_files: vec![],
            causes: vec![],
            output: None,
            diffoscope: None,
            diffoscope_html: None,
            error: None,
        };
        match built {
            Err(e) => {
                rep.error = Some(format!("{e:#}"));
                rep.causes = vec![v.cause.into()];
            }
            Ok(staged) => {
                // Timed for benches/check.sh (HERMIT_TIMINGS=1).
                let mut t = crate::timing::start();
                let diffs = differences(&control.record, &staged.record);
                t.lap(&plan.resolved.spec_path, "check.compare");
                if diffs.is_empty() && staged.record.output.digest == control.record.output.digest {
                    rep.identical = Some(true);
                    pipeline::materialise::discard(&staged.dir);
                } else {
                    rep.identical = Some(false);
                    rep.causes = vec![if varied {
                        v.cause.into()
                    } else {
                        "plain nondeterminism (nothing was varied)".into()
                    }];
                    let keep = dir.join(v.name);
                    fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    if !control_kept {
                        let c = dir.join("control");
                        fs::rename(&control_dir, &c)
                            .with_context(|| format!("keeping the control at {}", c.display()))?;
                        control_dir = c;
                        control_kept = true;
                    }
                    fs::rename(&staged.dir, &keep)
                        .with_context(|| format!("keeping the variant at {}", keep.display()))?;
                    rep.output = Some(keep.join("out"));
                    note_variation(&keep.join("record.json"), staged.record, v.name, &what_now)?;
                    if let Some((text, html)) =
                        diffoscope(&control_dir.join("out"), &keep.join("out"), &diffs, &keep)?
                    {
                        rep.diffoscope = Some(text);
                        rep.diffoscope_html = html.is_file().then_some(html);
                    }
                    let markers = lock(&variant.markers).clone();
                    let offset = if v.name == "clock" && varied {
                        CLOCK_OFFSET_SECS
                    } else {
                        0
                    };
                    let mut diffs = diffs;
                    classify_files(
                        &mut diffs,
                        v,
                        &markers,
                        &control_dir.join("out"),
                        &keep.join("out"),
                        offset,
                    );
                    rep.causes = file_causes(&diffs, v.cause);
                    rep.differing_files = diffs;
                }
            }
        }
        reports.push(rep);
    }

    classify(&mut reports);
    let reproducible = reports.iter().all(|r| r.reproducible());
    let control_output = if control_kept {
        Some(control_dir.join("out"))
    } else {
        pipeline::materialise::discard(&control_dir);
        None
    };
    Ok(Report {
        reproducible,
        package: format!(
            "{} {}",
            plan.resolved.spec.package.name, plan.resolved.spec.package.version
        ),
        build_key: plan.key.to_string(),
        control_digest: control.record.output.digest.to_string(),
        control_output,
        variations: reports,
    })
}

/// A file that differs with nothing varied (`repeat`) points to plain
/// nondeterminism under every variation too; only the other files point to
/// their own causes.
fn classify(reports: &mut [VariationReport]) {
    let noisy: Vec<String> = reports
        .iter()
        .filter(|r| r.name == "repeat")
        .flat_map(|r| r.differing_files.iter().map(|d| d.path.clone()))
        .collect();
    if noisy.is_empty() {
        return;
    }
    for r in reports.iter_mut().filter(|r| r.name != "repeat") {
        if r.differing_files.is_empty() {
            continue;
        }
        let fallback = r.causes.first().cloned().unwrap_or_else(|| PLAIN.into());
        for d in r.differing_files.iter_mut() {
            if noisy.contains(&d.path) {
                d.cause = Some(PLAIN.into());
                d.evidence = Some("it differs with nothing varied too (the repeat build)".into());
            }
        }
        r.causes = file_causes(&r.differing_files, &fallback);
    }
}

/// The causes of a variation's files, each once: the files' own first,
/// plain nondeterminism last (`fallback` for files without one).
fn file_causes(files: &[Difference], fallback: &str) -> Vec<String> {
    let mut causes: Vec<String> = Vec::new();
    let mut plain = false;
    for d in files {
        let c = d.cause.clone().unwrap_or_else(|| fallback.to_string());
        if c == PLAIN {
            plain = true;
        } else if !causes.contains(&c) {
            causes.push(c);
        }
    }
    if plain {
        causes.push(PLAIN.to_string());
    }
    if causes.is_empty() {
        causes.push(fallback.to_string());
    }
    causes
}

/// The variation's hook, also noting every value it changed in the
/// sandbox as a [`Marker`] for the classifier.
fn with_markers(h: Option<SandboxHook>, markers: Arc<Mutex<Vec<Marker>>>) -> Option<SandboxHook> {
    let h = h?;
    Some(SandboxHook(Arc::new(move |s: &mut SandboxSpec| {
        let before = s.clone();
        (h.0)(s);
        lock(&markers).extend(cause::spec_markers(&before, s));
    })))
}

/// How far `clock` moves the clock, in seconds: 3653 days, about ten
/// years.
pub(crate) const CLOCK_OFFSET_SECS: i64 = 3653 * 86_400;

/// Names the likely cause of every differing file of a kept variant from
/// the two copies' bytes ([`cause::classify`]).
fn classify_files(
    diffs: &mut [Difference],
    v: &Variation,
    markers: &[Marker],
    control: &Path,
    variant: &Path,
    clock_offset: i64,
) {
    let now = cause::now();
    let read = |p: &Path| -> Option<Vec<u8>> {
        use std::io::Read;
        let m = fs::symlink_metadata(p).ok()?;
        if !m.is_file() {
            return None;
        }
        let mut buf = Vec::new();
        fs::File::open(p)
            .ok()?
            .take(cause::READ_CAP as u64)
            .read_to_end(&mut buf)
            .ok()?;
        Some(buf)
    };
    for d in diffs.iter_mut() {
        let pair = if d.how == "changed" {
            read(&control.join(&d.path)).zip(read(&variant.join(&d.path)))
        } else {
            None
        };
        let found = match pair {
            Some((c, x)) => cause::classify(v.name, v.cause, markers, &c, &x, now, clock_offset),
            None => cause::Found {
                cause: v.cause.to_string(),
                evidence: match d.how.as_str() {
                    "changed" => "its type, mode or link target differs".into(),
                    "missing" => "only the control has it".into(),
                    _ => "only the variant has it".into(),
                },
            },
        };
        d.cause = Some(found.cause);
        d.evidence = Some(found.evidence);
    }
}

/// Rewrites a kept variant's record with what the variant varied
/// (`informational.check_variation`): its environment (a build path, a job
/// count) may differ from what its build key says.
fn note_variation(
    path: &Path,
    mut record: crate::record::Record,
    name: &str,
    what: &str,
) -> anyhow::Result<()> {
    record.informational.check_variation = Some(format!("{name}: {what}"));
    let _ = fs::remove_file(path);
    fs::write(path, record.to_json()?).with_context(|| format!("writing {}", path.display()))
}

/// HERMIT_JOBS (and the slots of the build's own jobserver) of `plan`.
fn set_jobs(plan: &mut Plan, jobs: u32) {
    let env = &mut plan.resolved.environment;
    env.jobs = jobs;
    env.env.insert("HERMIT_JOBS".into(), jobs.to_string());
}

/// The paths whose entries (type, mode, size, sha256, link target) differ
/// between the control's and a variant's file lists: changed and missing
/// ones by path, then added ones. The common case — the same paths in the
/// same order — is one pass over both lists.
fn differences(
    control: &crate::record::Record,
    variant: &crate::record::Record,
) -> Vec<Difference> {
    let (a, b) = (&control.output.files, &variant.output.files);
    let diff = |how: &str, path: &str| Difference {
        how: how.to_string(),
        path: path.to_string(),
        cause: None,
        evidence: None,
    };
    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.path == y.path) {
        return a
            .iter()
            .zip(b)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| diff("changed", &x.path))
            .collect();
    }
    let theirs: std::collections::HashMap<&str, &crate::output::FileEntry> =
        b.iter().map(|f| (f.path.as_str(), f)).collect();
    let ours: std::collections::HashSet<&str> = a.iter().map(|f| f.path.as_str()).collect();
    let mut out: Vec<Difference> = a
        .iter()
        .filter_map(|f| match theirs.get(f.path.as_str()) {
            Some(g) if *g == f => None,
            Some(_) => Some(diff("changed", &f.path)),
            None => Some(diff("missing", &f.path)),
        })
        .collect();
    out.sort_by(|x, y| x.path.cmp(&y.path));
    let mut added: Vec<Difference> = b
        .iter()
        .filter(|f| !ours.contains(f.path.as_str()))
        .map(|f| diff("added", &f.path))
        .collect();
    added.sort_by(|x, y| x.path.cmp(&y.path));
    out.extend(added);
    out
}

/// How many differing files diffoscope is run on.
const DIFFOSCOPE_FILES: usize = 3;

/// Runs diffoscope (when installed) once over copies of the first changed
/// regular files of both outputs, writing its text report to `dir/diffoscope.txt`
/// and its HTML page to `dir/diffoscope.html`. Returns the two paths.
fn diffoscope(
    control: &Path,
    variant: &Path,
    diffs: &[Difference],
    dir: &Path,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    let Some(tool) = find_in_path("diffoscope") else {
        return Ok(None);
    };
    let is_file = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let picked: Vec<&Difference> = diffs
        .iter()
        .filter(|d| d.how == "changed")
        .filter(|d| is_file(&control.join(&d.path)) && is_file(&variant.join(&d.path)))
        .take(DIFFOSCOPE_FILES)
        .collect();
    if picked.is_empty() {
        return Ok(None);
    }
    // Short names in the report: `control/<path>`, `variant/<path>`.
    let work = dir.join("diffoscope");
    for d in &picked {
        for (side, root) in [("control", control), ("variant", variant)] {
            let to = work.join(side).join(&d.path);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::copy(root.join(&d.path), &to)
                .with_context(|| format!("copying {} for diffoscope", d.path))?;
        }
    }
    let (text, html) = (dir.join("diffoscope.txt"), dir.join("diffoscope.html"));
    let out = Command::new(&tool)
        .current_dir(&work)
        .args(["--no-progress", "--text"])
        .arg(&text)
        .arg("--html")
        .arg(&html)
        .args(["control", "variant"])
        .output()
        .with_context(|| format!("running {}", tool.display()));
    let _ = hermit_store::store::remove_tree(&work);
    let out = out?;
    if !out.status.success() && out.status.code() != Some(1) {
        fs::write(
            &text,
            format!(
                "diffoscope ended with {}: {}\n",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .with_context(|| format!("writing {}", text.display()))?;
    }
    Ok(Some((text, html)))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "check of {} (build key {}): control output {}\n",
        r.package, r.build_key, r.control_digest
    );
    for v in &r.variations {
        let verdict = match (&v.error, v.identical, v.varied) {
            (Some(_), _, _) => "FAILED",
            (None, Some(false), _) => "DIFFERS",
            (None, Some(true), true) => "identical",
            (None, Some(true), false) | (None, None, _) => "not varied",
        };
        s.push_str(&format!("{:<11} {verdict}\n", v.name));
        if v.varied {
            s.push_str(&format!("    varied: {}\n", v.what));
        } else {
            s.push_str(&format!("    {}\n", v.what));
        }
        if let Some(e) = &v.error {
            s.push_str(&format!(
                "    the variant's build failed: {}\n",
                e.replace('\n', "\n    ")
            ));
        }
        for d in &v.differing_files {
            s.push_str(&format!("    {:<8} {}\n", d.how, d.path));
            if let (Some(c), Some(e)) = (&d.cause, &d.evidence) {
                s.push_str(&format!("             cause: {c} ({e})\n"));
            }
        }
        if !v.causes.is_empty() {
            s.push_str(&format!("    likely cause: {}\n", v.causes.join("; ")));
        }
        if let Some(o) = &v.output {
            s.push_str(&format!("    variant output: {}\n", o.display()));
        }
        if let Some(d) = &v.diffoscope {
            s.push_str(&format!("    diffoscope: {}\n", d.display()));
        }
        if let Some(d) = &v.diffoscope_html {
            s.push_str(&format!("    diffoscope (HTML): {}\n", d.display()));
        }
    }
    if let Some(c) = &r.control_output {
        s.push_str(&format!("control output: {}\n", c.display()));
    }
    let bad = r.variations.iter().filter(|v| !v.reproducible()).count();
    if r.reproducible {
        s.push_str("reproducible under every variation checked\n");
    } else {
        s.push_str(&format!(
            "NOT reproducible: {bad} of {} variations changed the output\n",
            r.variations.len()
        ));
    }
    s
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A sandbox of profile v3, for the unit tests.
    pub fn spec() -> hermit_sandbox::SandboxSpec {
        super::tests::crate_spec()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(v: &[&Variation]) -> Vec<&'static str> {
        v.iter().map(|v| v.name).collect()
    }

    #[test]
    fn the_defaults_are_what_hermit_cannot_normalise() {
        assert_eq!(
            names(&select(&[], &[]).unwrap()),
            [
                "repeat",
                "jobs",
                "cpus",
                "uname",
                "kernel",
                "randomness",
                "aslr",
                "clock",
                "dirorder"
            ]
        );
        assert_eq!(
            select(&["all".into()], &[]).unwrap().len(),
            VARIATIONS.len()
        );
        assert_eq!(
            names(&select(&["aslr,uname".into(), "aslr".into()], &["clock".into()]).unwrap()),
            ["uname", "aslr"]
        );
        assert_eq!(
            names(&select(&[], &["jobs,clock".into()]).unwrap()),
            [
                "repeat",
                "cpus",
                "uname",
                "kernel",
                "randomness",
                "aslr",
                "dirorder"
            ]
        );
    }

    #[test]
    fn files_that_differ_unvaried_are_plain_nondeterminism() {
        let rep = |name: &str, files: &[&str], cause: &str| VariationReport {
            name: name.into(),
            varied: true,
            what: String::new(),
            identical: Some(files.is_empty()),
            differing_files: files
                .iter()
                .map(|p| Difference {
                    how: "changed".into(),
                    path: p.to_string(),
                    cause: Some(cause.into()),
                    evidence: None,
                })
                .collect(),
            causes: if files.is_empty() {
                vec![]
            } else {
                vec![cause.into()]
            },
            output: None,
            diffoscope: None,
            diffoscope_html: None,
            error: None,
        };
        let mut r = vec![
            rep("repeat", &["seed"], PLAIN),
            rep("cpus", &["seed"], "CPU count"),
            rep("uname", &["seed", "m"], "uname"),
            rep("aslr", &[], "ASLR"),
        ];
        classify(&mut r);
        assert_eq!(r[1].causes, [PLAIN]);
        assert_eq!(r[2].causes, ["uname", PLAIN]);
        assert!(r[3].causes.is_empty());
    }

    #[test]
    fn unknown_or_empty_selections_are_bad_input() {
        let e = select(&["colour".into()], &[]).unwrap_err();
        assert!(
            e.to_string().contains("unknown variation \"colour\""),
            "{e}"
        );
        assert!(e.to_string().contains("jobs, cpus"), "{e}");
        let e = select(&["aslr".into()], &["aslr".into()]).unwrap_err();
        assert!(e.to_string().contains("no variation left"), "{e}");
    }

    #[test]
    fn every_variation_changes_the_sandbox_or_the_jobs() {
        let mut base = hermit_sandbox::SandboxSpec::clone(&crate_spec());
        base.root = std::env::temp_dir();
        for v in VARIATIONS {
            let ctx = Ctx {
                scratch: std::env::temp_dir(),
                sources_path: "/sources".into(),
                build_path: "/build".into(),
            };
            if v.name == "dirorder" {
                continue; // mounts: tested end to end
            }
            let Ok(x) = variant(v, 4, &ctx) else { continue };
            let mut s = base.clone();
            if let Some(h) = &x.hook {
                (h.0)(&mut s);
            }
            assert!(
                s != base
                    || x.jobs.is_some()
                    || x.build_path.is_some()
                    || matches!(v.name, "clock" | "repeat" | "archive"),
                "{} changed nothing",
                v.name
            );
            s.validate().unwrap();
        }
    }

    pub(super) fn crate_spec() -> SandboxSpec {
        let p = hermit_profiles::Profile::get("v3").unwrap();
        let env = crate::record::Environment::from_profile(
            &p,
            &hermit_profiles::EnvInputs {
                image_path: None,
                source_date_epoch: None,
                jobs: 4,
                extra: &Default::default(),
            },
            &Default::default(),
        )
        .unwrap();
        crate::environment::sandbox_spec(&env, &p, Path::new("/r"), vec!["/bin/sh".into()], vec![])
    }
}
