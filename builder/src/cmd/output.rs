//! `hermit output`: plumbing over output normalisation (`crate::output`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::output::{self, Options, SymlinkPolicy};

#[derive(Subcommand)]
pub enum OutputCommand {
    /// Print the output digest of a directory (sha256 of its canonical tar)
    Hash {
        dir: PathBuf,
        #[command(flatten)]
        norm: NormArgs,
        /// Print JSON with the digest and the per-file list (sorted keys)
        #[arg(long)]
        json: bool,
    },
    /// Write the canonical tar of a directory
    Tar {
        dir: PathBuf,
        #[command(flatten)]
        norm: NormArgs,
        /// Where to write the tar (`-` for stdout)
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Args)]
pub struct NormArgs {
    /// The mtime of every entry (default: profile v1's, 315532800 = 1980-01-01)
    #[arg(long, value_name = "N")]
    source_date_epoch: Option<u64>,
    /// Accept absolute symlink targets and targets leaving the tree
    #[arg(long)]
    allow_external_symlinks: bool,
    /// Also chmod the tree and set its mtimes to match the canonical form
    #[arg(long)]
    apply: bool,
}

impl NormArgs {
    fn options(&self) -> anyhow::Result<Options> {
        let sde = match self.source_date_epoch {
            Some(n) => n,
            None => {
                hermit_profiles::Profile::default_profile()
                    .context("reading the default profile")?
                    .source_date_epoch
                    .default
            }
        };
        let mut o = Options::new(sde);
        if self.allow_external_symlinks {
            o.symlinks = SymlinkPolicy::Verbatim;
        }
        o.apply = self.apply;
        Ok(o)
    }
}

pub fn run(cmd: OutputCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OutputCommand::Hash { dir, norm, json } => {
            let opts = norm.options()?;
            let n = output::normalize(&dir, &opts, None)
                .with_context(|| format!("normalising output {}", dir.display()))?;
            if json {
                let v = serde_json::json!({
                    "digest": n.digest,
                    "files": n.files,
                    "format": output::FORMAT,
                    "source_date_epoch": opts.source_date_epoch,
                    "tar_size": n.tar_size,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", n.digest);
            }
        }
        OutputCommand::Tar { dir, norm, output } => {
            let opts = norm.options()?;
            let n = if output == Path::new("-") {
                let mut w = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                output::normalize(&dir, &opts, Some(&mut w))
                    .with_context(|| format!("writing the canonical tar of {}", dir.display()))?
            } else {
                write_atomic(&dir, &opts, &output)?
            };
            eprintln!("{}", n.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the tar beside `dest` and renames it into place, so a failure
/// never leaves a partial file at `dest`.
fn write_atomic(dir: &Path, opts: &Options, dest: &Path) -> anyhow::Result<output::Normalized> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".hermit-tar-")
        .tempfile_in(parent)
        .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
    let file: &File = tmp.as_file();
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let n = output::normalize(dir, opts, Some(&mut w))
        .with_context(|| format!("writing the canonical tar of {}", dir.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(dest)
        .with_context(|| format!("renaming the tar into place at {}", dest.display()))?;
    Ok(n)
}
