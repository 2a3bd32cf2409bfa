//! The toolchain: what a spec's `[toolchain]` asks for, the image its
//! `hermit.lock` pins (from the store, mirrors, a registry or a Debian
//! bootstrap), and the image's checked root filesystem.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context};
use hermit_profiles::Profile;
use hermit_store::fetch::Want;
use hermit_store::oci::{self, Image};
use hermit_store::{Digest, Store};

use crate::debian::{self, DebianRequest};
use crate::exit::Exit;
use crate::lock::{Lock, ToolchainRequest};
use crate::net::{self, NetArgs};
use crate::spec::{Spec, Toolchain};

/// What `hermit.lock` pins for a spec's toolchain; `None` for a toolchain
/// that is an input's output (pinned by that output's digest, no lock).
pub fn toolchain_request(spec: &Spec, _spec_dir: &Path) -> Option<ToolchainRequest> {
    Some(match &spec.toolchain {
        Toolchain::Image { reference, .. } => ToolchainRequest::Image {
            reference: reference.clone(),
        },
        Toolchain::Oci { path, digest } => ToolchainRequest::Oci {
            path: path.clone(),
            digest: *digest,
        },
        Toolchain::Debian {
            suite,
            include,
            mirror,
        } => ToolchainRequest::Debian(DebianRequest::new(suite, include, mirror.as_deref())),
        Toolchain::Input { .. } => return None,
    })
}

/// The image reference recorded for a toolchain that is input `name`'s
/// output.
pub fn input_reference(name: &str) -> String {
    format!("input:{name}")
}

/// The toolchain image made from an input's output: one uncompressed
/// layer, the output's canonical tar (named by the output digest), and a
/// canonical config whose PATH is the profile's default. The same output
/// always gives the same manifest digest ([`oci::rootfs_tar_image`]).
pub fn input_image(
    store: &Store,
    name: &str,
    output: &Digest,
    build_key: &Digest,
    profile: &Profile,
) -> anyhow::Result<Image> {
    if store.blob(output).is_none() {
        let Some(built) = crate::pipeline::cache::lookup(store, build_key, None) else {
            bail!("the output {output} of toolchain input {name:?} is not in the store");
        };
        crate::mirror::output_tar_blob(store, build_key, &built.record)?;
    }
    Ok(oci::image_from_rootfs_tar(
        store,
        output,
        &input_reference(name),
        &profile.env.default_path,
    )?)
}

pub fn image_reference(req: &ToolchainRequest) -> String {
    match req {
        ToolchainRequest::Image { reference } => reference.clone(),
        ToolchainRequest::Oci { path, digest } => format!("oci:{path}@{digest}"),
        ToolchainRequest::Debian(d) => {
            format!("debian:{} include={}", d.suite, d.include.join(","))
        }
    }
}

/// Resolves a toolchain afresh, ignoring images already in the store for a
/// Debian request (whose package set may have moved on): `hermit lock`.
pub fn resolve_toolchain_fresh(
    store: &Arc<Store>,
    req: &ToolchainRequest,
    spec_dir: &Path,
    net: &NetArgs,
    profile: &Profile,
) -> anyhow::Result<(Image, Vec<debian::Package>)> {
    resolve(store, req, spec_dir, net, profile, false)
}

/// Resolves a toolchain that has no lock yet. A Debian request already
/// bootstrapped from the same state of the archive reuses that image
/// ([`crate::debreuse`]).
pub fn resolve_toolchain(
    store: &Arc<Store>,
    req: &ToolchainRequest,
    spec_dir: &Path,
    net: &NetArgs,
    profile: &Profile,
) -> anyhow::Result<(Image, Vec<debian::Package>)> {
    resolve(store, req, spec_dir, net, profile, true)
}

fn resolve(
    store: &Arc<Store>,
    req: &ToolchainRequest,
    spec_dir: &Path,
    net: &NetArgs,
    profile: &Profile,
    reuse: bool,
) -> anyhow::Result<(Image, Vec<debian::Package>)> {
    match req {
        ToolchainRequest::Image { reference } => {
            let r: oci::Reference = reference.parse()?;
            if let Some(img) = find_image(store, &r.digest)? {
                return Ok((img, vec![]));
            }
            if fetch_image_from_mirrors(store, net, &r.digest).is_ok() {
                return Ok((
                    oci::load_from_store(store, &r.digest, None, reference)?,
                    vec![],
                ));
            }
            if net.offline {
                return Err(Exit::user(format!(
                    "--offline: image {reference} is neither in the store nor in a mirror; missing {}",
                    r.digest
                ))
                .into());
            }
            let rt = net::runtime()?;
            let img = rt
                .block_on(oci::pull(store, &r, &oci::PullOptions::default()))
                .with_context(|| format!("pulling {reference}"))?;
            Ok((img, vec![]))
        }
        ToolchainRequest::Oci { path, digest } => {
            if let Some(img) = find_image(store, digest)? {
                return Ok((img, vec![]));
            }
            let p = spec_dir.join(path);
            let img = oci::import(store, &p, Some(digest))
                .with_context(|| format!("importing the toolchain image {}", p.display()))?;
            Ok((img, vec![]))
        }
        ToolchainRequest::Debian(d) => {
            if net.offline {
                return Err(Exit::user(
                    "--offline: a Debian toolchain without hermit.lock must be bootstrapped, which needs the network; run `hermit lock SPEC` online first",
                )
                .into());
            }
            // Specs of one graph that ask for the same Debian toolchain
            // (each in a directory of its own, so each without a lock yet)
            // share one bootstrap.
            static BOOTSTRAPPED: std::sync::Mutex<Vec<(String, Image, Vec<debian::Package>)>> =
                std::sync::Mutex::new(Vec::new());
            let key = req.to_string();
            if let Ok(done) = BOOTSTRAPPED.lock() {
                if let Some((_, image, packages)) = done.iter().find(|(k, _, _)| *k == key) {
                    return Ok((image.clone(), packages.clone()));
                }
            }
            let sde = profile.source_date_epoch.default;
            let state = crate::debreuse::state_now(d, sde, net);
            if let (true, Ok(state)) = (reuse, &state) {
                if let Some((image, packages)) = crate::debreuse::lookup(store, state, net.quiet) {
                    if !net.quiet {
                        eprintln!(
                            "hermit: reusing the debian {} image {} bootstrapped from the same archive state",
                            d.suite, image.manifest
                        );
                    }
                    if let Ok(mut done) = BOOTSTRAPPED.lock() {
                        done.push((key, image.clone(), packages.clone()));
                    }
                    return Ok((image, packages));
                }
            }
            if !net.quiet {
                eprintln!(
                    "hermit: bootstrapping debian {} with {} (mmdebstrap)",
                    d.suite,
                    d.include.join(", ")
                );
            }
            let b = debian::bootstrap(store, d, sde)?;
            match &state {
                Ok(state) => {
                    if !crate::debreuse::remember(store, state, &b.releases, &b.image, &b.packages)?
                        && !net.quiet
                    {
                        eprintln!("hermit: the archive changed during the bootstrap; it is not indexed for reuse");
                    }
                }
                Err(why) if !net.quiet => eprintln!(
                    "hermit: the bootstrap is not indexed for reuse: the archive's state is unknown ({why})"
                ),
                Err(_) => {}
            }
            if let Ok(mut done) = BOOTSTRAPPED.lock() {
                done.push((key, b.image.clone(), b.packages.clone()));
            }
            Ok((b.image, b.packages))
        }
    }
}

/// The image a lock pins: from the store, else from mirrors by digest,
/// else resolved again and checked against the lock.
pub fn locked_image(
    store: &Arc<Store>,
    lock: &Lock,
    req: &ToolchainRequest,
    spec_dir: &Path,
    net: &NetArgs,
    profile: &Profile,
) -> anyhow::Result<Image> {
    let want = lock.toolchain.manifest;
    if let Some(img) = find_image(store, &want)? {
        return Ok(img);
    }
    if fetch_image_from_mirrors(store, net, &want).is_ok() {
        return Ok(oci::load_from_store(
            store,
            &want,
            None,
            &image_reference(req),
        )?);
    }
    // A bootstrapped Debian: made again from the .debs the lock pins.
    if crate::debrestore::restorable(lock) {
        let origin = spec_dir.join("hermit.lock").display().to_string();
        match crate::debrestore::restore(
            store,
            lock,
            &origin,
            net,
            profile.source_date_epoch.default,
        ) {
            Ok(img) => return Ok(img),
            Err(e) if net.offline => return Err(e),
            Err(e) => eprintln!(
                "hermit: could not make the toolchain image {want} again from the .debs {origin} pins: {e:#}; bootstrapping afresh"
            ),
        }
    }
    if net.offline {
        return Err(Exit::user(format!(
            "--offline: the toolchain image {want} pinned by hermit.lock is neither in the store nor in a mirror (--mirror)"
        ))
        .into());
    }
    let (img, _) = resolve_toolchain(store, req, spec_dir, net, profile)?;
    if img.manifest != want && img.index != Some(want) {
        return Err(Exit::user(format!(
            "hermit.lock pins the toolchain image {want}, but resolving {req} now gives {}; \
             fetch the pinned image from a mirror (--mirror) or accept the new one with `hermit lock SPEC`",
            img.manifest
        ))
        .into());
    }
    Ok(img)
}

/// Fetches an image's manifest, then its config and layers, from the
/// configured mirrors only.
pub fn fetch_image_from_mirrors(
    store: &Arc<Store>,
    net: &NetArgs,
    manifest: &Digest,
) -> anyhow::Result<()> {
    let mirrors = crate::config::mirrors(&net.mirrors)?;
    if mirrors.is_empty() && (net.remote.is_none() || net.offline) {
        bail!("no mirrors configured");
    }
    let quiet = NetArgs {
        quiet: true,
        ..net.clone()
    };
    net::fetch(
        store,
        &quiet,
        vec![Want {
            digest: *manifest,
            size: None,
            urls: vec![],
            label: format!("toolchain image manifest {manifest}"),
        }],
    )?;
    let blobs = oci::manifest_blobs(store, manifest)?;
    net::fetch(
        store,
        net,
        blobs
            .into_iter()
            .map(|(d, size)| Want {
                digest: d,
                size: Some(size),
                urls: vec![],
                label: format!("toolchain image blob {d}"),
            })
            .collect(),
    )
}

/// The image pinned by `pin` (manifest, index or config digest) if the
/// store holds it. An image found once is remembered for the rest of the
/// process (the caller holds the store shared, so it cannot be collected
/// meanwhile): the nodes of a graph that share a toolchain look it up once.
pub fn find_image(store: &Store, pin: &Digest) -> anyhow::Result<Option<Image>> {
    if let Some(img) = find_image_seen(store, pin) {
        return Ok(Some(img));
    }
    let img = oci::find(store, pin)?;
    if let (Some(i), Ok(mut f)) = (&img, found_images().lock()) {
        f.push((store.base().to_path_buf(), i.clone()));
    }
    Ok(img)
}

/// The image pinned by `pin` if this process has found it in `store`
/// before ([`find_image`]); the store itself is not read.
pub fn find_image_seen(store: &Store, pin: &Digest) -> Option<Image> {
    let matches = |i: &Image| i.manifest == *pin || i.config == *pin || i.index == Some(*pin);
    let f = found_images().lock().ok()?;
    f.iter()
        .find(|(base, i)| base == store.base() && matches(i))
        .map(|(_, img)| img.clone())
}

fn found_images() -> &'static Mutex<Vec<(PathBuf, Image)>> {
    static FOUND: OnceLock<Mutex<Vec<(PathBuf, Image)>>> = OnceLock::new();
    FOUND.get_or_init(Default::default)
}

/// The toolchain's root filesystem, checked before use: a tampered one is
/// named and extracted again, never used (see `hermit_store::integrity`).
/// Checked once per process and image: the nodes of a graph that share a
/// toolchain check its root filesystem once.
pub fn checked_rootfs(store: &Store, image: &Image, quiet: bool) -> anyhow::Result<PathBuf> {
    use hermit_store::integrity::Replaced;
    static CHECKED: OnceLock<Mutex<Vec<(PathBuf, Digest, PathBuf)>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Default::default);
    if let Ok(c) = checked.lock() {
        if let Some((_, _, rootfs)) = c
            .iter()
            .find(|(base, m, _)| base == store.base() && *m == image.manifest)
        {
            return Ok(rootfs.clone());
        }
    }
    let (rootfs, replaced) = hermit_store::integrity::checked_rootfs(store, image)
        .context("unpacking the toolchain image")?;
    if let Ok(mut c) = checked.lock() {
        c.push((store.base().to_path_buf(), image.manifest, rootfs.clone()));
    }
    match replaced {
        Some(Replaced::Corrupt(why)) => eprintln!(
            "hermit: the toolchain root filesystem {} is corrupt: {why}; unpacking it again",
            rootfs.display()
        ),
        Some(Replaced::Unrecorded) if !quiet => eprintln!(
            "hermit: the toolchain root filesystem {} was made by an older hermit and cannot be checked; unpacking it again",
            rootfs.display()
        ),
        _ => {}
    }
    Ok(rootfs)
}
