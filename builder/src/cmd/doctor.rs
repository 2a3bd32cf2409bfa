use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hermit doctor is not available in this build yet")
}
