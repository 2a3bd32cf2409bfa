//! `hermit provenance RECORD`: print a record's SLSA provenance.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::provenance;
use crate::record::Record;

#[derive(Args)]
pub struct ProvenanceArgs {
    /// The record (JSON) written beside an output
    record: PathBuf,
}

pub fn run(args: ProvenanceArgs) -> anyhow::Result<ExitCode> {
    let path = &args.record;
    let text = crate::limits::read_text(path, crate::limits::MAX_RECORD)
        .with_context(|| format!("reading record {}", path.display()))?;
    let record = Record::parse(&text, &path.display().to_string())?;
    let statement = provenance::statement(&record);
    println!("{}", serde_json::to_string_pretty(&statement)?);
    Ok(ExitCode::SUCCESS)
}
