//! Stage 4, materialise: everything the sandbox will bind, on disk. The
//! toolchain's root filesystem (unpacked once, checked before use), every
//! source fetched by digest and unpacked once, local trees stored, the
//! inputs' stored outputs, and a fresh staging directory holding `/build`
//! and `/out`. Only a build that will run gets here.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hermit_store::unpack::{ArchiveFormat, UnpackOptions};
use hermit_store::Store;

use super::plan::Plan;
use super::resolve::source_wants;
use super::BuildOptions;
use crate::localtree::store_tree_blob;
use crate::net::{fetch, NetArgs};
use crate::record::SourceRecord;
use crate::toolchain::checked_rootfs;

/// What the sandbox binds, on the host.
pub struct Materialised {
    pub rootfs: PathBuf,
    /// `(name, host path)` for `/sources/<name>`, sorted by name.
    pub sources: Vec<(String, PathBuf)>,
    /// `(name, host path)` for `/inputs/<name>`, sorted by name.
    pub inputs: Vec<(String, PathBuf)>,
    /// The staging directory: `build/`, `out/`, later `build.log`.
    pub staging: PathBuf,
    pub build_dir: PathBuf,
    pub out_dir: PathBuf,
    /// What `/build` is: `build_dir` bound writable, or with `[build]
    /// workdir` an overlay of a source over it ([`crate::workdir`]).
    pub build_mount: hermit_sandbox::Mount,
}

pub fn materialise(
    store: &Arc<Store>,
    plan: &Plan,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Materialised> {
    let r = &plan.resolved;
    let (rootfs, sources, inputs) = bound(store, plan, net, opts)?;
    let staging = hermit_store::store::temp_dir(store.tmp_dir())?;
    let build_dir = staging.join("build");
    let out_dir = staging.join("out");
    for d in [&build_dir, &out_dir] {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let build_mount = crate::workdir::build_mount(
        r.spec.build.workdir.as_ref(),
        &sources,
        &build_dir,
        Path::new(&r.environment.build_path),
    )
    .inspect_err(|_| discard(&staging))?;
    Ok(Materialised {
        rootfs,
        sources,
        inputs,
        staging,
        build_dir,
        out_dir,
        build_mount,
    })
}

/// Everything the sandbox binds read-only, on disk: the checked root
/// filesystem, `(name, host path)` of every source and of every input.
pub type Bound = (PathBuf, Vec<(String, PathBuf)>, Vec<(String, PathBuf)>);

/// The read-only part of [`materialise`] (`hermit shell --failed` binds
/// these over a kept `/build` and `/out`).
pub fn bound(
    store: &Arc<Store>,
    plan: &Plan,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Bound> {
    let r = &plan.resolved;
    let rootfs = checked_rootfs(store, &r.image, opts.quiet)?;
    fetch(
        store,
        net,
        source_wants(&r.sources, &r.spec_path.display().to_string())?,
    )?;
    let sde = r.profile.source_date_epoch.default;
    let mut sources = Vec::new();
    for s in &r.sources {
        if let (
            SourceRecord::Local {
                name,
                include,
                exclude,
                tree,
                ..
            },
            Some(root),
        ) = (&s.record, &s.local_root)
        {
            // Streams the tree into the store when its blob is missing; a
            // tree that no longer hashes to `tree` stores nothing and is
            // refused ("… changed while hermit read it …; build again").
            store_tree_blob(store, root, include, exclude, sde, tree)
                .with_context(|| format!("source {name:?}: storing {}", root.display()))?;
        }
        sources.push((s.record.name().to_string(), source_path(store, &s.record)?));
    }
    let inputs = r
        .inputs
        .iter()
        .map(|i| (i.record.name.clone(), i.path.clone()))
        .collect();
    Ok((rootfs, sources, inputs))
}

/// The host path a source is bound from: its unpacked tree, or the blob
/// itself when it is not unpacked.
pub fn source_path(store: &Store, rec: &SourceRecord) -> anyhow::Result<PathBuf> {
    match rec {
        SourceRecord::Remote { sha256, unpack, .. } => match unpack {
            Some(u) => Ok(hermit_store::unpack(
                store,
                sha256,
                &UnpackOptions {
                    format: None,
                    strip_components: u.strip_components,
                },
            )
            .with_context(|| format!("unpacking source {:?} ({sha256})", rec.name()))?),
            None => store
                .blob(sha256)
                .with_context(|| format!("source {:?}: {sha256} is not in the store", rec.name())),
        },
        SourceRecord::Local { tree, .. } => unpacked_tar(store, tree)
            .with_context(|| format!("unpacking source {:?} ({tree})", rec.name())),
    }
}

/// A canonical tar blob (a local tree, an output) unpacked once, read-only.
pub fn unpacked_tar(store: &Store, digest: &hermit_store::Digest) -> anyhow::Result<PathBuf> {
    Ok(hermit_store::unpack(
        store,
        digest,
        &UnpackOptions {
            format: Some(ArchiveFormat::Tar),
            strip_components: 0,
        },
    )?)
}

/// Removes a staging directory, ignoring what cannot be removed.
pub fn discard(staging: &Path) {
    let _ = hermit_store::store::remove_tree(staging);
}
