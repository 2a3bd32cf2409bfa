//! `hermit store …`: add, look up, verify, collect and pin store entries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use hermit_store::{ArchiveFormat, Digest, Store, UnpackOptions};

use crate::exit::{self, Exit};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Add files (as blobs) or directories (as trees); prints each `sha256:<hex>`
    Add(AddArgs),
    /// Print where the entry with this digest lives; fails if it is absent
    Path(PathArgs),
    /// Check every entry (blobs, trees, unpacked trees, rootfs, images,
    /// outputs); name each corrupt one and fail if any
    Verify(VerifyArgs),
    /// Remove every entry no gc root keeps; print what was freed
    Gc,
    /// Pin entries so gc keeps them
    #[command(subcommand)]
    Root(RootCommand),
    /// Unpack an archive blob into a read-only tree; prints its path
    Unpack(UnpackArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// Files or directories to add
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Remove every corrupt entry (holding the store exclusively, like gc);
    /// it is fetched, unpacked or built again when next needed
    #[arg(long)]
    repair: bool,
}

#[derive(Args)]
pub struct PathArgs {
    /// `sha256:<64 hex>` of a blob, tree, unpacked tree or output
    digest: String,
}

#[derive(Subcommand)]
pub enum RootCommand {
    /// Keep DIGEST (and what it depends on) through gc
    Add {
        digest: String,
        /// Root name under v1/gcroots/ (default: the digest's hex)
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a root, by name or by the digest it pins
    Rm { name_or_digest: String },
    /// List roots and the digests they pin
    List,
}

#[derive(Args)]
pub struct UnpackArgs {
    /// `sha256:<hex>` of an archive blob in the store
    digest: String,
    /// tar, tar.gz, tar.xz, tar.bz2, tar.zst or zip (default: detect)
    #[arg(long)]
    format: Option<String>,
    /// Drop this many leading path components from every entry
    #[arg(long, default_value_t = 0)]
    strip_components: u32,
}

fn parse_digest(s: &str) -> anyhow::Result<Digest> {
    s.parse::<Digest>()
        .map_err(|e| anyhow::Error::new(Exit::user(format!("bad digest: {e}"))))
}

fn open() -> anyhow::Result<Store> {
    let root = hermit_store::store::default_root()?;
    Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Add(a) => add(a),
        StoreCommand::Path(a) => path(a),
        StoreCommand::Verify(a) => verify(a),
        StoreCommand::Gc => gc(),
        StoreCommand::Root(r) => root(r),
        StoreCommand::Unpack(a) => unpack(a),
    }
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let store = open()?;
    for p in &args.paths {
        let added = store
            .add_path(p)
            .with_context(|| format!("adding {} to the store", p.display()))?;
        println!("{}", added.digest);
    }
    Ok(ExitCode::SUCCESS)
}

fn path(args: PathArgs) -> anyhow::Result<ExitCode> {
    let digest = parse_digest(&args.digest)?;
    let store = open()?;
    match store.find(&digest) {
        Some((_, p)) => {
            println!("{}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        None => Err(Exit::user(format!(
            "{digest} is not in the store at {} (add it with `hermit store add`, or fetch it)",
            store.base().display()
        ))
        .into()),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = open()?;
    let check = |dir: &std::path::Path| crate::integrity::check_output(dir).err();
    let report = if args.repair {
        if store.try_exclusive_lock()?.is_none() {
            eprintln!("waiting for other hermit processes using the store to finish…");
        }
        store.repair(&check).context("repairing the store")?
    } else {
        store.verify_with(&check).context("verifying the store")?
    };
    for c in &report.corrupt {
        eprintln!(
            "corrupt {}: {}: {}",
            c.kind.as_str(),
            c.path.display(),
            c.reason
        );
    }
    if args.repair {
        for c in &report.corrupt {
            println!("removed {} {}", c.kind.as_str(), c.path.display());
        }
        println!(
            "{} entries verified, {} corrupt removed; they are fetched, unpacked or built again when next needed",
            report.checked,
            report.corrupt.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if report.corrupt.is_empty() {
        println!("{} entries verified, none corrupt", report.checked);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} of {} entries corrupt; run `hermit store verify --repair` to remove them: \
             sources, images and outputs are then fetched, unpacked or built again when next needed \
             (a blob or tree added by hand must be added again)",
            report.corrupt.len(),
            report.checked
        );
        Ok(ExitCode::from(exit::BUILD_FAILED))
    }
}

fn gc() -> anyhow::Result<ExitCode> {
    let store = open()?;
    if store.try_exclusive_lock()?.is_none() {
        eprintln!("waiting for other hermit processes using the store to finish…");
    }
    let report = store.gc().context("collecting garbage")?;
    for (kind, d) in &report.removed {
        println!("removed {} {d}", kind.as_str());
    }
    for p in &report.stray {
        println!("removed stray {}", p.display());
    }
    println!(
        "freed {} bytes in {} entries",
        report.freed_bytes,
        report.removed.len() + report.stray.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn root(cmd: RootCommand) -> anyhow::Result<ExitCode> {
    let store = open()?;
    match cmd {
        RootCommand::Add { digest, name } => {
            let d = parse_digest(&digest)?;
            let p = store
                .add_root(&d, name.as_deref())
                .map_err(|e| Exit::user(e.to_string()))?;
            if store.find(&d).is_none() {
                eprintln!("note: {d} is not in the store yet; it will be kept once it is");
            }
            println!("{}", p.display());
        }
        RootCommand::Rm { name_or_digest } => {
            let removed = store
                .remove_root(&name_or_digest)
                .map_err(|e| Exit::user(e.to_string()))?;
            if removed.is_empty() {
                return Err(Exit::user(format!(
                    "no gc root named {name_or_digest:?} (see `hermit store root list`)"
                ))
                .into());
            }
            for p in removed {
                println!("removed {}", p.display());
            }
        }
        RootCommand::List => {
            for r in store.roots()? {
                let ds: Vec<String> = r.digests.iter().map(|d| d.to_string()).collect();
                println!("{}\t{}", r.name, ds.join(" "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unpack(args: UnpackArgs) -> anyhow::Result<ExitCode> {
    let digest = parse_digest(&args.digest)?;
    let format = match args.format.as_deref() {
        Some(f) => Some(
            f.parse::<ArchiveFormat>()
                .map_err(|e| Exit::user(e.to_string()))?,
        ),
        None => None,
    };
    let store = open()?;
    let opts = UnpackOptions {
        format,
        strip_components: args.strip_components,
    };
    let p = hermit_store::unpack(&store, &digest, &opts)?;
    println!("{}", p.display());
    Ok(ExitCode::SUCCESS)
}
