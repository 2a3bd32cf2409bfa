use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct FetchArgs {}

#[derive(Args)]
pub struct MirrorArgs {}

pub fn run_fetch(_args: FetchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hermit fetch is not available in this build yet")
}

pub fn run_mirror(_args: MirrorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hermit mirror is not available in this build yet")
}
