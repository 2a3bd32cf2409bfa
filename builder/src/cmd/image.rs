//! `hermit image`: import, pull and list toolchain images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use hermit_store::oci::{self, Image, PullOptions, Reference};
use hermit_store::{Digest, Store};

use crate::debian::{self, DebianRequest};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout directory, an oci-archive or a `docker save` tar
    Import {
        /// The layout directory or archive
        path: PathBuf,
        /// Refuse the image unless it has this digest (manifest digest; image ID for docker archives)
        #[arg(long)]
        digest: Option<Digest>,
    },
    /// Pull an image by digest from a registry: HOST[:PORT]/NAME@sha256:<hex>
    Pull {
        reference: String,
        /// A registry (HOST[:PORT]) to reach over plain http; loopback registries always are
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
    /// Bootstrap a Debian root filesystem with mmdebstrap into a single-layer image
    Bootstrap {
        /// The Debian suite, e.g. bookworm
        #[arg(long)]
        suite: String,
        /// Packages to install on top of the essential set (comma-separated or repeated)
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        /// A Debian mirror URL, or a sources.list file; default: the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
        /// SOURCE_DATE_EPOCH for the bootstrap (the profile's default if absent)
        #[arg(long)]
        source_date_epoch: Option<u64>,
        /// Print the image and its packages as JSON (sorted keys)
        #[arg(long)]
        json: bool,
    },
    /// List the images in the store
    Ls {
        /// Print JSON (one array, sorted keys) instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open_default().context("opening the store")?;
    match cmd {
        ImageCommand::Import { path, digest } => {
            let image = oci::import(&store, &path, digest.as_ref())
                .with_context(|| format!("importing image {}", path.display()))?;
            print_image(&image);
        }
        ImageCommand::Pull {
            reference,
            insecure,
        } => {
            let r: Reference = reference.parse()?;
            let rt = crate::net::runtime()?;
            let opts = PullOptions {
                insecure_registries: insecure,
            };
            let image = rt
                .block_on(oci::pull(&store, &r, &opts))
                .with_context(|| format!("pulling {r}"))?;
            print_image(&image);
        }
        ImageCommand::Bootstrap {
            suite,
            include,
            mirror,
            source_date_epoch,
            json,
        } => {
            let req = DebianRequest::new(&suite, &include, mirror.as_deref());
            let sde = match source_date_epoch {
                Some(v) => v,
                None => {
                    hermit_profiles::Profile::default_profile()?
                        .source_date_epoch
                        .default
                }
            };
            let b = debian::bootstrap(&store, &req, sde)?;
            if json {
                let v = serde_json::json!({"image": b.image, "packages": b.packages});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_image(&b.image);
                for p in &b.packages {
                    println!(
                        "package  {} {} {} {}",
                        p.name, p.version, p.architecture, p.sha256
                    );
                }
            }
        }
        ImageCommand::Ls { json } => {
            let images = oci::list(&store).context("listing images")?;
            if json {
                let v = serde_json::to_value(&images).context("serialising the image list")?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for i in images {
                    println!(
                        "{}  {}  {} layers  {}",
                        i.manifest,
                        i.platform,
                        i.layers.len(),
                        i.source
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_image(image: &Image) {
    println!("manifest {}", image.manifest);
    if let Some(index) = image.index {
        println!("index    {index}");
    }
    println!("config   {}", image.config);
    println!("platform {}", image.platform);
    for l in &image.layers {
        println!("layer    {} {} bytes", l.digest, l.size);
    }
}
