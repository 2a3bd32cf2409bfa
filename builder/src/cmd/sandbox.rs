use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct SandboxArgs {}

pub fn run(_args: SandboxArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hermit sandbox is not available in this build yet")
}
