//! `hermit sandbox`: one command in a profile's sandbox (the default
//! profile's unless `--profile` names another) over a root directory.
//! Plumbing for debugging and for tests; it derives its sandbox from the
//! profile exactly as `hermit build` does (`crate::environment`), minus what
//! only a build has (`/build`, `$out`, the jobserver, the time limit).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hermit_sandbox::{Mount, Outcome, RunError, SandboxSpec, Stdin};

use crate::exit::{self, Exit};

/// The subcommand's one-line help.
pub const ABOUT: &str =
    "Run one command in a build profile's sandbox over a root directory (plumbing)";

/// `hermit sandbox ARGS` parsed on its own, without the rest of hermit's
/// command tree: clap builds every subcommand's arguments before parsing,
/// which costs about half a millisecond and 50 page faults — a tenth of a
/// sandbox's start-up, which scripts and tests call in loops. Returns `None`
/// when the first argument is not `sandbox`. Help, errors and `--version`
/// look as they do through the full tree (a test compares the help).
pub fn parse_alone() -> Option<SandboxArgs> {
    use clap::FromArgMatches;
    if std::env::args_os().nth(1)? != "sandbox" {
        return None;
    }
    let matches = command().get_matches_from(std::env::args_os().skip(1));
    Some(SandboxArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// The `sandbox` subcommand as a command of its own.
pub fn command() -> clap::Command {
    SandboxArgs::augment_args(
        clap::Command::new("sandbox")
            .bin_name("hermit sandbox")
            .display_name("hermit-sandbox")
            .about(ABOUT)
            .version(crate::version::VERSION),
    )
}

#[derive(Args)]
pub struct SandboxArgs {
    /// Directory shown read-only as `/`
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Bind a host path read-only (SRC, or SRC:DST)
    #[arg(long = "ro", value_name = "SRC:DST")]
    ro: Vec<String>,
    /// Bind a host path read-write (SRC, or SRC:DST)
    #[arg(long = "rw", value_name = "SRC:DST")]
    rw: Vec<String>,
    /// Mount an empty tmpfs (DST, or DST:SIZE in bytes)
    #[arg(long = "tmpfs", value_name = "DST")]
    tmpfs: Vec<String>,
    /// The build profile whose environment to give the command [default: the default profile]
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Set an environment variable on top of the profile's (repeatable)
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox
    #[arg(long, value_name = "DIR", default_value = "/")]
    cwd: PathBuf,
    /// Kill everything in the sandbox after this many seconds (exit 124)
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Hostname inside the sandbox [default: the profile's]
    #[arg(long)]
    hostname: Option<String>,
    /// Leave address-space layout randomisation on (the profiles turn it off)
    #[arg(long)]
    aslr: bool,
    /// Most processes the command may have at once (bounds fork bombs) [default: the profile's]
    #[arg(long, value_name = "N")]
    max_procs: Option<u32>,
    /// Also bound --max-procs with a pids cgroup, where hermit may create one
    #[arg(long)]
    pids_cgroup: bool,
    /// Size limit of /tmp, in bytes [default: the profile's]
    #[arg(long, value_name = "BYTES")]
    tmp_size: Option<u64>,
    /// Memory of the whole sandbox, in MiB; 0 for no limit [default: the profile's]
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u64>,
    /// Pass hermit's standard input (a pipe or file, never a terminal) to
    /// the command; without it the command reads /dev/null
    #[arg(long)]
    stdin: bool,
    /// Print the setup plan as JSON instead of running
    #[arg(long)]
    print_plan: bool,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn split_bind(arg: &str) -> (PathBuf, PathBuf) {
    match arg.split_once(':') {
        Some((src, dst)) => (PathBuf::from(src), PathBuf::from(dst)),
        None => (PathBuf::from(arg), PathBuf::from(arg)),
    }
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    Ok(cwd.join(p))
}

fn build_spec(a: SandboxArgs) -> anyhow::Result<SandboxSpec> {
    let profile = match &a.profile {
        Some(name) => hermit_profiles::Profile::get(name).map_err(|e| Exit::user(e.to_string()))?,
        None => hermit_profiles::Profile::default_profile()?,
    };
    let mut spec = crate::environment::interactive_spec(&profile, &absolute(a.root)?, a.command)?;
    // The profile's mounts (its /tmp), then the command line's.
    let profile_mounts: Vec<Mount> = std::mem::take(&mut spec.mounts);
    let mut mounts = Vec::new();
    for (list, writable) in [(&a.ro, false), (&a.rw, true)] {
        for arg in list {
            let (src, dst) = split_bind(arg);
            mounts.push(Mount::Bind {
                src: absolute(src)?,
                dst,
                writable,
            });
        }
    }
    for arg in &a.tmpfs {
        let (dst, size) = match arg.split_once(':') {
            Some((d, s)) => {
                let size = s.parse::<u64>().map_err(|_| {
                    Exit::user(format!(
                        "--tmpfs {arg}: size {s:?} is not a number of bytes"
                    ))
                })?;
                (d, Some(size))
            }
            None => (arg.as_str(), None),
        };
        mounts.push(Mount::Tmpfs {
            dst: PathBuf::from(dst),
            size,
        });
    }
    // The profile's /tmp (`--tmp-size` resizes it) unless the command line
    // mounts something there.
    for mut m in profile_mounts {
        if mounts.iter().any(|u| u.dst() == m.dst()) {
            continue;
        }
        if let (Mount::Tmpfs { size, .. }, Some(s)) = (&mut m, a.tmp_size) {
            *size = Some(s);
        }
        mounts.push(m);
    }
    // Parents before children, whatever the order of the flags.
    mounts.sort_by_key(|m| m.dst().components().count());
    spec.mounts = mounts;
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Exit::user(format!("--env {kv:?}: expected KEY=VALUE")))?;
        spec.set_env(k, v);
    }
    spec.cwd = a.cwd;
    if let Some(h) = a.hostname {
        spec.hostname = h;
    }
    spec.aslr |= a.aslr;
    if let Some(n) = a.max_procs {
        spec.limits.max_processes = Some(n);
    }
    spec.limits.pids_cgroup = a.pids_cgroup;
    match a.memory_mib {
        Some(0) => spec.limits.max_memory = None,
        Some(m) => spec.limits.max_memory = Some(m.saturating_mul(1 << 20)),
        None => {}
    }
    spec.timeout = match a.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => {
            return Err(Exit::user(format!(
                "--timeout {t}: must be a positive number of seconds"
            ))
            .into())
        }
    };
    Ok(spec)
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        format!("{s}")
    }
}

pub fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let print_plan = args.print_plan;
    let pass_stdin = args.stdin;
    let spec = build_spec(args)?;
    if print_plan {
        let ops = hermit_sandbox::plan(&spec).map_err(|e| Exit::user(format!("{e}")))?;
        let json = serde_json::to_string_pretty(&ops).context("serialising the plan")?;
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let stdin = if pass_stdin {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("--stdin: duplicating standard input")?;
        Stdin::From(fd)
    } else {
        Stdin::Null
    };
    let outcome = hermit_sandbox::run_with_stdin(&spec, stdin).map_err(|e| match e {
        RunError::Spec(e) => anyhow::Error::new(Exit::user(format!("invalid sandbox: {e}"))),
        e @ RunError::StdinIsTerminal => anyhow::Error::new(Exit::user(format!("--stdin: {e}"))),
        e @ RunError::Spawn { .. } | e @ RunError::Pipe(_) => anyhow::Error::new(e).context(
            Exit::with_code(exit::SANDBOX_SETUP, "the sandbox could not be started"),
        ),
        other => anyhow::Error::new(other).context(Exit::with_code(
            exit::INTERNAL,
            "hermit lost track of the sandbox; this is a bug in hermit, please report it",
        )),
    })?;
    match outcome {
        // Statuses are 0–255; anything else would be a kernel oddity.
        Outcome::Exited(c) => Ok(ExitCode::from(
            u8::try_from(c).unwrap_or(exit::BUILD_FAILED),
        )),
        Outcome::Signaled(s) => Ok(ExitCode::from(
            u8::try_from(128 + s).unwrap_or(exit::BUILD_FAILED),
        )),
        Outcome::TimedOut(t) => Err(Exit::with_code(
            exit::TIMEOUT,
            format!(
                "timed out after {} s; every process in the sandbox was killed",
                seconds(t)
            ),
        )
        .into()),
        Outcome::SetupFailed(f) => Err(setup_failed(&f)),
    }
}

/// A sandbox that could not start its command, as hermit's error: 127 when
/// the command was not found, 126 when it could not be executed, else the
/// sandbox-setup exit status. Shared by `hermit sandbox` and `hermit shell`.
pub(crate) fn setup_failed(f: &hermit_sandbox::SetupFailure) -> anyhow::Error {
    let code = match (f.exec, f.errno) {
        (true, Some(libc::ENOENT)) => 127,
        (true, _) => 126,
        _ => exit::SANDBOX_SETUP,
    };
    let mut msg = if f.exec {
        format!("cannot run the command: {f}")
    } else {
        format!("sandbox setup failed: {f}")
    };
    if let Some(h) = f.hint() {
        msg.push_str(&format!("\n  hint: {h}"));
    }
    Exit::with_code(code, msg).into()
}
