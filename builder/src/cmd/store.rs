use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum StoreCommand {}

pub fn run(cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
