//! `hermit fetch` and `hermit mirror`: thin layers over
//! `hermit_store::fetch` and `hermit_store::mirror`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hermit_store::fetch::FetchSummary;
use hermit_store::mirror::{write_mirror, MirrorItem};
use hermit_store::{Digest, Store, Url, Want};
use indicatif::HumanBytes;

pub use crate::net::NetArgs;
use crate::net::{fetcher, runtime};
use crate::spec::{SourceKind, Spec, Unpack};

#[derive(Args)]
pub struct FetchArgs {
    /// Spec files whose [[source]]s to fetch
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub remote: crate::remote::client::RemoteArgs,
}

#[derive(Args)]
pub struct MirrorArgs {
    /// Spec files (their sources, local trees and locked toolchain image, and
    /// those of every spec their [inputs] name) or records written by
    /// `hermit build` (everything a rebuild needs, down through the inputs:
    /// their records and outputs, for `hermit rebuild --deep`)
    #[arg(required = true, value_name = "SPEC|RECORD")]
    pub specs: Vec<PathBuf>,
    /// The mirror directory to fill (DIR/sha256/<hex>, DIR/index.json and
    /// DIR/records/<build-key>.json), or a REAPI remote's CAS to fill
    /// (grpc://HOST:PORT[/INSTANCE], grpcs://…)
    #[arg(long, value_name = "DIR|URL")]
    pub to: PathBuf,
    /// Re-hash blobs already in DIR instead of only checking their size
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub remote: crate::remote::client::RemoteArgs,
}

/// One downloaded source of one spec: the fetch plan's unit.
#[derive(Debug, Clone)]
pub struct PlannedSource {
    pub spec: PathBuf,
    pub name: String,
    pub digest: Digest,
    pub size: Option<u64>,
    pub urls: Vec<String>,
    pub unpack: Option<Unpack>,
}

impl PlannedSource {
    fn label(&self) -> String {
        format!("source {:?} in {}", self.name, self.spec.display())
    }
}

/// Reads the specs and lists their downloaded sources. Local (`path`)
/// sources need no fetching.
pub fn plan(spec_paths: &[PathBuf]) -> anyhow::Result<Vec<PlannedSource>> {
    let mut out = Vec::new();
    for path in spec_paths {
        let spec = Spec::load(path)?;
        for s in &spec.sources {
            if let SourceKind::Remote {
                urls,
                sha256,
                size,
                unpack,
            } = &s.kind
            {
                out.push(PlannedSource {
                    spec: spec.file.clone(),
                    name: s.name.clone(),
                    digest: *sha256,
                    size: *size,
                    urls: urls.clone(),
                    unpack: *unpack,
                });
            }
        }
    }
    Ok(out)
}

/// The sources to unpack after fetching: (source name, archive digest, options).
///
pub fn unpack_sources(plan: &[PlannedSource]) -> Vec<(String, Digest, Unpack)> {
    plan.iter()
        .filter_map(|p| p.unpack.map(|u| (p.name.clone(), p.digest, u)))
        .collect()
}

fn wants(plan: &[PlannedSource]) -> anyhow::Result<Vec<Want>> {
    plan.iter()
        .map(|p| {
            let urls = p
                .urls
                .iter()
                .map(|u| Url::parse(u).with_context(|| format!("URL {u:?} of {}", p.label())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Want {
                digest: p.digest,
                size: p.size,
                urls,
                label: p.label(),
            })
        })
        .collect()
}

/// Opens the store and fetches every planned source into it.
fn fetch_plan(net: &NetArgs, plan: &[PlannedSource]) -> anyhow::Result<(Arc<Store>, FetchSummary)> {
    let store = Arc::new(Store::open_default().context("opening the store")?);
    let wants = wants(plan)?;
    // Blobs the remote CAS supplies count as fetched.
    let before: Vec<(Digest, Option<u64>)> = wants
        .iter()
        .filter(|w| store.blob(&w.digest).is_none())
        .map(|w| (w.digest, w.size))
        .collect();
    let wants = crate::remote::cache::fetch_from_remote(&store, net, wants)?;
    let fetcher = fetcher(net, store.clone())?;
    let mut summary = runtime()?.block_on(fetcher.fetch_all(wants))?;
    for (d, size) in before {
        if !summary.fetched.iter().any(|(f, _)| *f == d) && store.blob(&d).is_some() {
            summary.present.retain(|p| *p != d);
            summary.fetched.push((d, size.unwrap_or(0)));
        }
    }
    Ok((store, summary))
}

pub fn run_fetch(mut args: FetchArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args.specs)?;
    if !args.net.offline {
        args.net.remote = args.remote.session()?;
    }
    let (store, summary) = fetch_plan(&args.net, &plan)?;
    for (name, digest, u) in unpack_sources(&plan) {
        let opts = hermit_store::UnpackOptions {
            format: None,
            strip_components: u.strip_components,
        };
        hermit_store::unpack(&store, &digest, &opts)
            .with_context(|| format!("unpacking source {name:?} ({digest})"))?;
    }
    if !args.net.quiet {
        println!(
            "fetched {} ({}), already present {}",
            summary.fetched.len(),
            HumanBytes(summary.bytes()),
            summary.present.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_mirror(mut args: MirrorArgs) -> anyhow::Result<ExitCode> {
    if !args.net.offline {
        args.net.remote = args.remote.session()?;
    }
    let (records, specs): (Vec<PathBuf>, Vec<PathBuf>) = args
        .specs
        .iter()
        .cloned()
        .partition(|p| p.extension().is_some_and(|e| e == "json"));
    // A spec's closure through its [inputs].
    let specs: Vec<PathBuf> = if specs.is_empty() {
        specs
    } else {
        crate::graph::load(&specs)?
            .nodes
            .into_iter()
            .map(|n| n.spec)
            .collect()
    };
    let plan = plan(&specs)?;
    let (store, _summary) = fetch_plan(&args.net, &plan)?;
    let mut extra = Vec::new();
    for s in &specs {
        extra.extend(crate::mirror::mirror_blobs_for_spec(&store, s)?);
    }
    let mut keep_records = BTreeMap::new();
    for r in &records {
        let text = crate::limits::read_text(r, crate::limits::MAX_RECORD)
            .with_context(|| format!("reading {}", r.display()))?;
        let (rec, _) = crate::pipeline::rebuild::check_record(&text, &r.display().to_string())?;
        let (blobs, recs) = crate::mirror::record_closure(&store, &args.net, &rec, &text)?;
        extra.extend(blobs);
        keep_records.extend(recs);
    }
    let missing: Vec<String> = extra
        .iter()
        .filter(|b| store.blob(&b.digest).is_none())
        .map(|b| format!("{} ({})", b.digest, b.name))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "not in the store, so not mirrored: {}; build or fetch them first",
            missing.join(", ")
        );
    }
    let mut items: BTreeMap<Digest, MirrorItem> = BTreeMap::new();
    for b in extra {
        let item = items.entry(b.digest).or_insert_with(|| MirrorItem {
            digest: b.digest,
            names: Vec::new(),
            urls: Vec::new(),
        });
        if !item.names.contains(&b.name) {
            item.names.push(b.name);
        }
        item.urls.extend(b.urls);
    }
    for p in &plan {
        let item = items.entry(p.digest).or_insert_with(|| MirrorItem {
            digest: p.digest,
            names: Vec::new(),
            urls: Vec::new(),
        });
        item.names.push(p.name.clone());
        item.urls.extend(p.urls.iter().cloned());
    }
    let items: Vec<MirrorItem> = items.into_values().collect();
    if let Some(url) = args
        .to
        .to_str()
        .filter(|s| s.starts_with("grpc://") || s.starts_with("grpcs://"))
    {
        return crate::remote::cache::fill_remote(
            &store,
            url,
            &items,
            &keep_records,
            args.net.quiet,
        );
    }
    let report = write_mirror(&store, &args.to, &items, args.verify)
        .with_context(|| format!("writing the mirror {}", args.to.display()))?;
    for (key, text) in &keep_records {
        hermit_store::mirror::write_named(
            &args.to,
            &crate::mirror::record_name(key),
            text.as_bytes(),
        )
        .with_context(|| format!("writing the record of {key} into {}", args.to.display()))?;
    }
    if !args.net.quiet {
        let names = |d: &Digest| {
            items
                .iter()
                .find(|i| i.digest == *d)
                .map(|i| i.names.join(", "))
                .unwrap_or_default()
        };
        for (d, size) in &report.added {
            println!("added {d} ({}) {}", HumanBytes(*size), names(d));
        }
        for d in &report.replaced {
            println!("replaced damaged {d} {}", names(d));
        }
        let bytes: u64 = report.added.iter().map(|(_, n)| n).sum();
        println!(
            "mirror {}: added {} ({}), replaced {}, already present {}",
            args.to.display(),
            report.added.len(),
            HumanBytes(bytes),
            report.replaced.len(),
            report.present.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
