//! `hermit-sandbox`: runs one command in a hermetic, rootless sandbox.
//! Knows nothing of specs, stores or profiles: it takes a plain
//! [`SandboxSpec`] whose every value is explicit and returns an [`Outcome`].
//!
//! # Map — named after the process that runs each part (as in youki)
//!
//! | file | runs in | does |
//! |---|---|---|
//! | [`spec`] | — | [`SandboxSpec`] (every value explicit, no defaults), validation |
//! | [`mod@plan`] | — | pure: spec → ordered [`Op`]s (the recipe, unit-tested) |
//! | `run.rs` | hermit (main) | plans; starts init itself (single-threaded caller) or re-executes `/proc/self/exe` as the helper and feeds it the spec over a pipe; reads progress and errors back, enforces the timeout; gives the command `/dev/null` (or a pipe) as stdin and relays a terminal on 1/2 through a pipe of its own |
//! | `intermediate.rs` | init's parent (hermit or the helper) | opens the pids cgroup, clones init into the new namespaces; in the helper, waits for init and passes signals on |
//! | `init.rs` | init (pid 1) | maps the uid, joins the pids cgroup, carries out the plan (`setup.rs`), hostname, loopback, forks the command, reaps, forwards signals |
//! | `setup.rs` | init | the mount recipe: staging root, skeleton over the image, pivot_root |
//! | [`seccomp`] | the command, before exec | the BPF filter (and why each call is refused) |
//! | `trace.rs` | init | the moved clock of `hermit check`: traces every program to hide its vDSO, answers the wall clock's calls |
//! | `zygote.rs` | hermit, the zygote | for graphs: one single-threaded zygote clones each helper (`CLONE_PARENT`) instead of one `execve` of hermit per sandbox |
//! | `cgroup.rs` | hermit | the per-sandbox pids and memory cgroups, where allowed |
//! | [`probe`] | `hermit doctor` | can this machine run the sandbox, and the fix if not |
//! | [`terminal`] | init, hermit | the command's own pseudo-terminal (made by init in the sandbox's devpts, its master sent to hermit), hermit's relay to the caller's terminal |
//! | `sys.rs` | all | the only `unsafe`: raw system calls, each with a `// SAFETY:` line |
//!
//! # Entering
//!
//! Forking in a multi-threaded process is unsafe, and the process that starts
//! init must outlive it (PR_SET_PDEATHSIG follows the parent *thread*). A
//! single-threaded caller (the `hermit sandbox` CLI) clones init itself, with
//! every namespace flag in one `clone` as bubblewrap does: hermit → init
//! (pid 1) → command (pid 2). Otherwise (tokio's threads exist) [`run`]
//! re-executes the current binary with a hidden first argument
//! ([`HELPER_ARG`]) as a single-threaded helper that does the same: hermit →
//! helper → init → command. So the binary's `main` must call
//! [`enter_if_requested`] before anything else (before clap, tokio or any
//! thread).
//!
//! Nothing in this crate prints, except the helper when it is started by
//! hand with bad arguments.

pub mod cgroup;
mod init;
mod intermediate;
pub mod outcome;
pub mod plan;
pub mod probe;
mod protocol;
mod run;
pub mod seccomp;
mod setup;
pub mod spec;
pub mod subids;
mod sys;
pub mod terminal;
mod trace;
pub mod views;
mod zygote;

pub use outcome::{Outcome, SetupFailure};
pub use plan::{plan, Op};
pub use run::{
    run, run_full, run_watched, run_watched_passing, run_watched_to, run_with_helper,
    run_with_stdin, MemoryLimit, PassFd, RunError, RunReport, Stdin, Watch,
};
pub use spec::{Limits, Mount, SandboxSpec, SpecError, Uname};
pub use zygote::prefer as prefer_zygote;

/// The namespaces every sandbox gets, by name (for records).
pub const NAMESPACES: [&str; 7] = ["user", "mount", "pid", "network", "uts", "ipc", "cgroup"];

/// The hidden first argument that turns hermit into the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox-init";
/// The hidden first argument that turns hermit into the zygote that starts
/// helpers (see `zygote.rs`).
pub const ZYGOTE_ARG: &str = "__sandbox-zygote";
/// The hidden first argument for `hermit doctor`'s probes.
pub const PROBE_ARG: &str = "__sandbox-probe";

/// Call first thing in `main`: when this process is a sandbox helper or a
/// doctor probe, runs it and returns the exit code to leave with; otherwise
/// returns `None` at once (one look at `argv[1]`).
pub fn enter_if_requested() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    let first = args.next()?;
    if first == HELPER_ARG {
        let rest: Vec<_> = args.collect();
        Some(intermediate::helper_main(&rest))
    } else if first == ZYGOTE_ARG {
        let rest: Vec<_> = args.collect();
        Some(zygote::zygote_main(&rest))
    } else if first == PROBE_ARG {
        let rest: Vec<_> = args.collect();
        Some(probe::probe_main(&rest))
    } else {
        None
    }
}
