//! What a mirror must hold so that a spec or a record builds offline: the
//! blobs beyond what the spec's URLs give (`hermit mirror`).

use std::path::Path;

use anyhow::Context;
use hermit_profiles::Profile;
use hermit_store::oci::{self, Image};
use hermit_store::{Digest, Store};

use crate::exit::Exit;
use crate::localtree::{local_source_root, local_tree_blob};
use crate::lock::Lock;
use crate::pipeline::rebuild::read_record;
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
/// layers) and the canonical tar of each local `path` source. Remote sources
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

/// Every blob a record's rebuild needs: sources, local trees, the image.
pub fn mirror_blobs_for_record(record_path: &Path) -> anyhow::Result<Vec<MirrorBlob>> {
    let (rec, _) = read_record(record_path)?;
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
    Ok(out)
}
