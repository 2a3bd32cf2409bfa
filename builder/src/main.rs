//! `hermit`: hermetic, reproducible builds with a record to rebuild from.
//!
//! # Map
//!
//! | stage | where |
//! |---|---|
//! | CLI parsing, exit codes | `main.rs`, [`exit`] |
//! | one module per subcommand, each a thin layer over the libraries | [`cmd`] |
//! | graphs of specs: loading the closure, scheduling builds, progress | [`graph`] |
//! | one build, as stages: resolve → plan → cache lookup → materialise → run → collect → install; rebuild from a record | [`pipeline`] (its doc has the stage table) |
//! | the toolchain: lock requests, images from store/mirrors/registry/bootstrap, images made from an input, Debian images made again from their lock's .debs | [`toolchain`], [`lock`], [`debian`], [`debrestore`] |
//! | local `path` sources: selection, canonical tar | [`localtree`] |
//! | the network flags and the fetcher | [`net`] |
//! | what a mirror must hold for a spec or a record's graph | [`mirror`] |
//! | bundles: one file that holds a build (export, import, verify) | [`bundle`] |
//! | a record is untrusted: everything re-derived from profile, spec and lock | [`derive`] |
//! | the store, fetching, unpacking, OCI images | the `hermit-store` crate |
//! | namespaces, mounts, seccomp, the sandbox's init | the `hermit-sandbox` crate |
//! | build-environment profiles | the `hermit-profiles` crate |
//! | profile + record environment → the sandbox's spec (the one translation) | [`environment`] |
//! | the GNU make jobserver builds share (`-j N` for the whole machine) | [`jobserver`] |
//! | output normalisation, the canonical tar, the output digest | [`output`] |
//! | the record of a build, the build key | [`record`] |
//! | SLSA provenance from a record | [`provenance`] |
//! | `hermit shell`: a build's environment, entered; failed builds kept for it | [`shell`] |
//!
//! # Files hermit writes
//!
//! Everything hermit writes lives under the store root (`$HERMIT_HOME`, else
//! `$XDG_DATA_HOME/hermit`, else `~/.local/share/hermit`); its layout is drawn
//! in `hermit_store::store`. Outside the store hermit writes only what a
//! command is asked to: `hermit mirror --to DIR`, `-o LINK`.

mod bundle;
mod check;
mod cmd;
mod config;
mod debian;
mod debrestore;
mod debreuse;
mod derive;
mod environment;
mod exit;
#[cfg(test)]
mod fuzz;
mod graph;
mod integrity;
mod jobserver;
mod limits;
mod localtree;
mod lock;
mod mirror;
mod net;
mod output;
mod pipeline;
mod provenance;
mod record;
mod shell;
mod spec;
mod timing;
mod toolchain;
mod version;
mod workdir;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hermit",
    version = version::VERSION,
    about = "Hermetic, reproducible sandbox builds with a record to rebuild from",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build specs (and the specs their [inputs] name) in the sandbox; store each output with its record
    Build(cmd::build::BuildArgs),
    /// Build a record again from the record alone and say whether the output is identical
    Rebuild(cmd::build::RebuildArgs),
    /// Build twice or more, varying what hermit cannot normalise (CPUs, clock, uname, ASLR, …), and say whether the output changes
    Check(cmd::check::CheckArgs),
    /// Print the closure of specs through their [inputs], in build order
    Graph(cmd::build::GraphArgs),
    /// Resolve the spec's toolchain and write hermit.lock beside it
    Lock(cmd::build::LockArgs),
    /// Inspect and maintain the content-addressed store
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
    /// Bring every [[source]] of the specs into the store
    Fetch(cmd::fetch::FetchArgs),
    /// Copy every source of the specs into a content-addressed mirror directory
    Mirror(cmd::fetch::MirrorArgs),
    #[command(about = cmd::sandbox::ABOUT)]
    Sandbox(Box<cmd::sandbox::SandboxArgs>),
    /// Open a shell (or run one command) in exactly a build's environment: a record's, a spec's, or a failed build's
    Shell(cmd::shell::ShellArgs),
    /// Check that this machine can run hermit's sandbox, and say how to fix it if not
    Doctor(cmd::doctor::DoctorArgs),
    /// Import, pull and list toolchain images
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Normalise, serialise and hash output trees (plumbing)
    #[command(subcommand)]
    Output(cmd::output::OutputCommand),
    /// Print a record's SLSA provenance v1 as an in-toto Statement
    Provenance(cmd::provenance::ProvenanceArgs),
    /// Make a locked Debian toolchain image again from the .debs its lock pins
    #[command(subcommand)]
    Toolchain(cmd::toolchain::ToolchainCommand),
    /// Write one file (an oci-archive) that holds a build: records, sources, toolchain, inputs
    Export(cmd::bundle::ExportArgs),
    /// Check a bundle and bring everything it holds into the store
    Import(cmd::bundle::ImportArgs),
    /// Check a bundle without building or storing anything, and say what it holds
    Verify(cmd::bundle::VerifyArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    Completions(cmd::generate::CompletionsArgs),
    /// Write one man page per command (hermit.1, hermit-build.1, …) into a directory
    Manpages(cmd::generate::ManpagesArgs),
}

fn main() -> ExitCode {
    // Before anything else — before clap, before any thread exists: this
    // process may be the sandbox's helper (hermit re-executes itself to
    // enter the sandbox) or a `hermit doctor` probe.
    if let Some(code) = hermit_sandbox::enter_if_requested() {
        return ExitCode::from(code);
    }
    // The sandbox plumbing skips building the whole command tree.
    if let Some(args) = cmd::sandbox::parse_alone() {
        return match cmd::sandbox::run(args) {
            Ok(code) => code,
            Err(err) => exit::report(&err),
        };
    }
    let cli = Cli::parse();
    let json = cli.command.json();
    let result = match cli.command {
        Command::Build(a) => cmd::build::run_build(a),
        Command::Rebuild(a) => cmd::build::run_rebuild(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Graph(a) => cmd::build::run_graph(a),
        Command::Lock(a) => cmd::build::run_lock(a),
        Command::Store(c) => cmd::store::run(c),
        Command::Fetch(a) => cmd::fetch::run_fetch(a),
        Command::Mirror(a) => cmd::fetch::run_mirror(a),
        Command::Sandbox(a) => cmd::sandbox::run(*a),
        Command::Shell(a) => cmd::shell::run(a),
        Command::Doctor(a) => cmd::doctor::run(a),
        Command::Image(c) => cmd::image::run(c),
        Command::Output(c) => cmd::output::run(c),
        Command::Provenance(a) => cmd::provenance::run(a),
        Command::Toolchain(c) => cmd::toolchain::run(c),
        Command::Export(a) => cmd::bundle::run_export(a),
        Command::Import(a) => cmd::bundle::run_import(a),
        Command::Verify(a) => cmd::bundle::run_verify(a),
        Command::Completions(a) => cmd::generate::completions(a, Cli::command()),
        Command::Manpages(a) => cmd::generate::manpages(a, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) if json => exit::report_json(&err),
        Err(err) => exit::report(&err),
    }
}

impl Command {
    /// Whether the command was asked for `--json` (then a failure is also
    /// reported as a JSON object on stdout).
    fn json(&self) -> bool {
        match self {
            Command::Build(a) => a.common.json,
            Command::Rebuild(a) => a.common.json,
            Command::Graph(a) => a.json,
            Command::Check(a) => a.json,
            Command::Image(cmd::image::ImageCommand::Bootstrap { json, .. })
            | Command::Image(cmd::image::ImageCommand::Ls { json })
            | Command::Output(cmd::output::OutputCommand::Hash { json, .. }) => *json,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `hermit sandbox` parsed alone shows the same help as through the
    /// full command tree.
    #[test]
    fn sandbox_parsed_alone_has_the_same_help() {
        let mut full = super::Cli::command();
        full.build();
        let mut through_tree = full
            .find_subcommand_mut("sandbox")
            .expect("a sandbox subcommand")
            .clone();
        let mut alone = super::cmd::sandbox::command();
        assert_eq!(
            alone.render_long_help().to_string(),
            through_tree.render_long_help().to_string()
        );
        assert_eq!(alone.render_version(), through_tree.render_version());
    }
}
