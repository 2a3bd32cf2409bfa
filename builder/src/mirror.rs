//! What a mirror must hold so that a spec or a record builds offline: the
//! blobs beyond what the spec's URLs give (`hermit mirror`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::Context;
use hermit_profiles::Profile;
use hermit_store::oci::{self, Image};
use hermit_store::{Digest, Store};

use crate::exit::Exit;
use crate::localtree::{local_source_root, local_tree_blob};
use crate::lock::Lock;
use crate::net::NetArgs;
use crate::pipeline::rebuild::check_record;
use crate::record::Record;
use crate::record::SourceRecord;
use crate::spec::{SourceKind, Spec};

/// A blob a mirror should hold: digest, what it is, where it came from.
pub struct MirrorBlob {
    pub digest: Digest,
    pub name: String,
    pub urls: Vec<String>,
}

/// Every blob a spec's build needs that its `[[source]]` URLs alone do not
/// give: the toolchain image pinned by hermit.lock (index, manifest, config,
/// layers; for a bootstrapped Debian also the .debs the store holds) and the canonical tar of each local `path` source. Remote sources
/// are listed by the fetch plan.
pub fn mirror_blobs_for_spec(store: &Store, spec_path: &Path) -> anyhow::Result<Vec<MirrorBlob>> {
    let spec = Spec::load(spec_path).map_err(|e| Exit::user(e.to_string()))?;
    let dir = spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let lock_path = dir.join("hermit.lock");
    if let Some(lock) = Lock::read(&lock_path)? {
        let image = oci::find(store, &lock.toolchain.manifest)?.ok_or_else(|| {
            Exit::user(format!(
                "the toolchain image {} pinned by {} is not in the store; run `hermit build {}` first",
                lock.toolchain.manifest,
                lock_path.display(),
                spec_path.display()
            ))
        })?;
        out.extend(image_blobs(&image));
        // A bootstrapped Debian's .debs: the image can be made again from
        // them when its blobs are lost.
        out.extend(crate::debrestore::mirror_blobs(store, &lock));
    }
    let profile = Profile::default_profile()?;
    for s in &spec.sources {
        if let SourceKind::Local {
            include, exclude, ..
        } = &s.kind
        {
            let root = local_source_root(&spec, s, dir)?;
            let digest = local_tree_blob(
                store,
                &root,
                include,
                exclude,
                profile.source_date_epoch.default,
            )
            .with_context(|| format!("source {:?}: hashing {}", s.name, root.display()))?;
            out.push(MirrorBlob {
                digest,
                name: format!("{} (local source, canonical tar)", s.name),
                urls: vec![],
            });
        }
    }
    Ok(out)
}

fn image_blobs(image: &Image) -> Vec<MirrorBlob> {
    image
        .digests()
        .into_iter()
        .map(|d| MirrorBlob {
            digest: d,
            name: format!("toolchain image {}", image.source),
            urls: vec![],
        })
        .collect()
}

/// The blobs a record names: its sources, local trees and image.
pub fn record_blobs(rec: &Record) -> Vec<MirrorBlob> {
    let mut out = Vec::new();
    for s in &rec.sources {
        match s {
            SourceRecord::Remote {
                name, urls, sha256, ..
            } => out.push(MirrorBlob {
                digest: *sha256,
                name: name.clone(),
                urls: urls.clone(),
            }),
            SourceRecord::Local { name, tree, .. } => out.push(MirrorBlob {
                digest: *tree,
                name: format!("{name} (local source, canonical tar)"),
                urls: vec![],
            }),
        }
    }
    let i = &rec.image;
    let mut image = vec![i.manifest, i.config];
    image.extend(i.index);
    image.extend(i.layers.iter().map(|l| l.digest));
    for d in image {
        out.push(MirrorBlob {
            digest: d,
            name: format!("toolchain image {}", i.reference),
            urls: vec![],
        });
    }
    out
}

/// Where a mirror keeps the record of a build key (beside `sha256/`), so
/// that `hermit rebuild --deep` finds the records of a record's inputs.
pub fn record_name(key: &Digest) -> String {
    format!("records/{}.json", key.hex())
}

/// The record of build key `key`: the store's (beside its output), else
/// one an imported bundle holds ([`crate::bundle::imported_record`]), else
/// the first mirror's that has one, else the remote's (its record index). A record from a mirror is untrusted:
/// it must parse, be consistent (its build key is the hash of its inputs)
/// and state `key`; then it is checked against its own spec and lock like
/// any record. Returns the record, its spec, its exact text and where it
/// came from.
pub fn find_record(
    store: &Store,
    net: &NetArgs,
    key: &Digest,
) -> anyhow::Result<Option<(Record, Spec, String, String)>> {
    let stored = crate::pipeline::outputs_dir(store)
        .join(key.hex())
        .join("record.json");
    let mut found: Option<(String, String)> = None;
    if fs::symlink_metadata(&stored).is_ok() {
        let text = crate::limits::read_text(&stored, crate::limits::MAX_RECORD)
            .with_context(|| format!("reading {}", stored.display()))?;
        found = Some((text, stored.display().to_string()));
    }
    if found.is_none() {
        found = crate::bundle::imported_record(store, key)?;
    }
    if found.is_none() {
        let mirrors = crate::config::mirrors(&net.mirrors)?;
        if !mirrors.is_empty() {
            let rt = crate::net::runtime()?;
            let name = record_name(key);
            for m in &mirrors {
                let got = rt.block_on(hermit_store::mirror::read_named(
                    m,
                    &name,
                    crate::limits::MAX_RECORD,
                    std::time::Duration::from_secs_f64(net.read_timeout.max(1.0)),
                ));
                match got {
                    Ok(Some(bytes)) => {
                        let text = String::from_utf8(bytes).map_err(|_| {
                            Exit::user(format!("{name} in mirror {m:?} is not UTF-8 text"))
                        })?;
                        found = Some((text, format!("{name} in mirror {m:?}")));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) if !net.quiet => eprintln!("hermit: mirror {m:?}: {e}"),
                    Err(_) => {}
                }
            }
        }
    }
    if found.is_none() {
        found = crate::remote::cache::find_record(net, key);
    }
    let Some((text, origin)) = found else {
        return Ok(None);
    };
    let (rec, spec) = check_record(&text, &origin)?;
    if rec.build_key != *key {
        return Err(Exit::user(format!(
            "{origin} is the record of build key {}, not of {key}; the mirror or store is damaged",
            rec.build_key
        ))
        .into());
    }
    Ok(Some((rec, spec, text, origin)))
}

/// The canonical tar of a stored output, put into the store as a blob
/// named by the output digest (so that a mirror can hold it and a rebuild
/// can restore the output from it).
pub fn output_tar_blob(store: &Store, key: &Digest, rec: &Record) -> anyhow::Result<()> {
    let digest = rec.output.digest;
    if store.blob(&digest).is_some() {
        return Ok(());
    }
    let out = crate::pipeline::outputs_dir(store)
        .join(key.hex())
        .join("out");
    if fs::symlink_metadata(&out).is_err() {
        return Err(Exit::user(format!(
            "the output {digest} of {} (build key {key}) is not in the store; build it first",
            rec.package.name
        ))
        .into());
    }
    let mut writer = store.blob_writer()?;
    crate::output::normalize(
        &out,
        &crate::output::Options {
            source_date_epoch: rec.environment.source_date_epoch,
            symlinks: crate::output::SymlinkPolicy::Verbatim,
            apply: false,
        },
        Some(&mut writer),
    )
    .with_context(|| format!("serialising {}", out.display()))?;
    writer.commit(
        &format!("the output of {}", rec.package.name),
        Some(&digest),
        None,
    )?;
    Ok(())
}

/// Everything a mirror needs so that a record rebuilds offline, deeply:
/// for the record and every input below it, the record itself (by build
/// key), the blobs it names, and each input's output as a canonical tar.
pub fn record_closure(
    store: &Store,
    net: &NetArgs,
    top: &Record,
    top_text: &str,
) -> anyhow::Result<(Vec<MirrorBlob>, BTreeMap<Digest, String>)> {
    let mut blobs = Vec::new();
    let mut records = BTreeMap::new();
    records.insert(top.build_key, top_text.to_string());
    let mut todo: Vec<Record> = vec![top.clone()];
    while let Some(rec) = todo.pop() {
        blobs.extend(record_blobs(&rec));
        if let Some(lock) = rec
            .lock
            .as_ref()
            .and_then(|l| Lock::parse("", &l.text).ok())
        {
            blobs.extend(crate::debrestore::mirror_blobs(store, &lock));
        }
        for input in &rec.inputs {
            blobs.push(MirrorBlob {
                digest: input.output,
                name: format!("output of input {} of {}", input.name, rec.package.name),
                urls: vec![],
            });
            if records.contains_key(&input.build_key) {
                continue;
            }
            let Some((irec, _, text, _)) = find_record(store, net, &input.build_key)? else {
                return Err(Exit::user(format!(
                    "the record of input {:?} of {} (build key {}) is neither in the store nor in a mirror; build {} first",
                    input.name, rec.package.name, input.build_key, input.spec
                ))
                .into());
            };
            if irec.output.digest == input.output {
                output_tar_blob(store, &input.build_key, &irec)?;
            }
            records.insert(input.build_key, text);
            todo.push(irec);
        }
    }
    Ok((blobs, records))
}
