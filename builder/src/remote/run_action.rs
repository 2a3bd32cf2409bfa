//! `hermit __remote-action action.json`: one REAPI action, run by a worker.
//!
//! The worker (see [`super::worker`]) has already brought every blob the
//! action names into its store, by digest: the toolchain image, the remote
//! sources, the local trees' canonical tars and the inputs' outputs. This
//! resolves the build from `action.json` alone — nothing from the client is
//! trusted: the spec is parsed, the profile is the pinned one, the
//! environment is derived again, and the key computed from all of it must be
//! the action's build key — then runs it through the normal pipeline
//! (lookup, per-key lock, materialise, run, collect, install) and leaves the
//! action's outputs in the current directory:
//!
//! - `output.tar`: the output's canonical tar (its digest is the record's
//!   output digest);
//! - `record.json`: the record;
//! - `build.log`: the build's log.
//!
//! It runs in its own process so that the worker can stop it (SIGTERM) and
//! so that a build never shares the worker's address space.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hermit_profiles::{EnvInputs, Profile};
use hermit_store::{oci, Digest, Store};
use serde_json::Value;

use crate::exit::Exit;
use crate::net::NetArgs;
use crate::pipeline::plan::Plan;
use crate::pipeline::resolve::{self, InputOutput, Resolved, ResolvedSource};
use crate::pipeline::{self, cache, BuildOptions};
use crate::record::{Environment, InputRecord, SourceRecord, UnpackRecord};
use crate::spec::{Spec, Toolchain};

/// The parts of `action.json` a worker needs (see docs/remote.md).
pub struct ActionJson {
    pub build_key: Digest,
    pub key_inputs: Value,
    pub spec_file: String,
    pub spec_text: String,
    pub lock_text: Option<String>,
}

/// What is wrong with an `action.json`.
fn bad(origin: &str, why: impl std::fmt::Display) -> anyhow::Error {
    Exit::user(format!("{origin}: {why}")).into()
}

fn digest_at(v: &Value, path: &str, origin: &str) -> anyhow::Result<Digest> {
    let s = v
        .pointer(path)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(origin, format!("{path} is missing or not a string")))?;
    s.parse()
        .map_err(|e| bad(origin, format!("{path}: {s:?} is not a digest: {e}")))
}

fn str_at<'a>(v: &'a Value, path: &str, origin: &str) -> anyhow::Result<&'a str> {
    v.pointer(path)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(origin, format!("{path} is missing or not a string")))
}

impl ActionJson {
    /// Parses `action.json` (untrusted: every field is checked here or by
    /// the build key comparison after resolving).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<ActionJson> {
        let v: Value = serde_json::from_str(text).map_err(|e| bad(origin, e))?;
        match v.get("action_version").and_then(Value::as_u64) {
            Some(1) => {}
            other => {
                return Err(bad(
                    origin,
                    format!("action_version {other:?} is not 1; this worker's hermit is too old or the action is not hermit's"),
                ))
            }
        }
        let spec_file = str_at(&v, "/spec/file", origin)?.to_string();
        if spec_file.is_empty()
            || spec_file.contains('/')
            || spec_file == "."
            || spec_file == ".."
            || spec_file == "action.json"
        {
            return Err(bad(
                origin,
                format!("spec.file {spec_file:?} is not a plain file name"),
            ));
        }
        let lock_text = match v.get("lock") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad(origin, "lock is neither text nor null")),
        };
        Ok(ActionJson {
            build_key: digest_at(&v, "/build_key", origin)?,
            key_inputs: v
                .get("key_inputs")
                .cloned()
                .ok_or_else(|| bad(origin, "key_inputs is missing"))?,
            spec_file,
            spec_text: str_at(&v, "/spec/text", origin)?.to_string(),
            lock_text,
        })
    }

    /// Every blob the action names, with what it is: the image's, the
    /// sources' (a local tree's canonical tar) and the inputs' outputs.
    pub fn blobs(&self, origin: &str) -> anyhow::Result<Vec<(Digest, String)>> {
        let ki = &self.key_inputs;
        let mut out = Vec::new();
        if let Some(Value::String(_)) = ki.pointer("/image/index") {
            out.push((
                digest_at(ki, "/image/index", origin)?,
                "the toolchain image's index".into(),
            ));
        }
        out.push((
            digest_at(ki, "/image/manifest", origin)?,
            "the toolchain image's manifest".into(),
        ));
        out.push((
            digest_at(ki, "/image/config", origin)?,
            "the toolchain image's config".into(),
        ));
        for (i, _) in array_at(ki, "/image/layers", origin)?.iter().enumerate() {
            out.push((
                digest_at(ki, &format!("/image/layers/{i}"), origin)?,
                format!("layer {i} of the toolchain image"),
            ));
        }
        for (i, s) in array_at(ki, "/sources", origin)?.iter().enumerate() {
            let name = str_at(s, "/name", origin)?;
            match str_at(s, "/kind", origin)? {
                "remote" => out.push((
                    digest_at(ki, &format!("/sources/{i}/sha256"), origin)?,
                    format!("source {name:?}"),
                )),
                "local" => out.push((
                    digest_at(ki, &format!("/sources/{i}/tree"), origin)?,
                    format!("local source {name:?} (canonical tar)"),
                )),
                k => return Err(bad(origin, format!("source {name:?} has kind {k:?}"))),
            }
        }
        for (i, s) in array_at(ki, "/inputs", origin)?.iter().enumerate() {
            out.push((
                digest_at(ki, &format!("/inputs/{i}/output"), origin)?,
                format!("the output of input {:?}", str_at(s, "/name", origin)?),
            ));
        }
        Ok(out)
    }
}

fn array_at<'a>(v: &'a Value, path: &str, origin: &str) -> anyhow::Result<&'a Vec<Value>> {
    v.pointer(path)
        .and_then(Value::as_array)
        .ok_or_else(|| bad(origin, format!("{path} is missing or not a list")))
}

/// Resolves the action's build from its `action.json` and the store alone.
/// `dir` is where the action runs (only for messages: the spec is named
/// `dir/<spec.file>`).
pub fn resolve_action(
    store: &Arc<Store>,
    a: &ActionJson,
    dir: &Path,
    opts: &BuildOptions,
    origin: &str,
) -> anyhow::Result<Resolved> {
    let spec_path = dir.join(&a.spec_file);
    let spec = Spec::parse(&spec_path, &a.spec_text).map_err(|e| Exit::user(e.to_string()))?;
    let ki = &a.key_inputs;
    let profile = Profile::get_pinned(
        str_at(ki, "/profile/name", origin)?,
        str_at(ki, "/profile/digest", origin)?,
    )
    .map_err(|e| bad(origin, e))?;

    // Inputs: their outputs are in the store as canonical tars. Their build
    // keys are not part of the action (only their outputs are); the client
    // puts its own into the record it installs.
    let mut inputs = Vec::new();
    for (i, v) in array_at(ki, "/inputs", origin)?.iter().enumerate() {
        let name = str_at(v, "/name", origin)?.to_string();
        let output = digest_at(ki, &format!("/inputs/{i}/output"), origin)?;
        let Some(input) = spec.inputs.get(&name) else {
            return Err(bad(
                origin,
                format!("input {name:?} is not among the spec's [inputs]"),
            ));
        };
        let path = pipeline::materialise::unpacked_tar(store, &output)
            .with_context(|| format!("unpacking the output {output} of input {name:?}"))?;
        inputs.push(InputOutput {
            record: InputRecord {
                name,
                spec: input.spec.clone(),
                output,
                build_key: output,
            },
            path,
        });
    }
    if inputs.len() != spec.inputs.len() {
        return Err(bad(
            origin,
            "key_inputs.inputs does not list every input of the spec",
        ));
    }

    let manifest = digest_at(ki, "/image/manifest", origin)?;
    let index = match ki.pointer("/image/index") {
        Some(Value::String(_)) => Some(digest_at(ki, "/image/index", origin)?),
        _ => None,
    };
    let (image, image_reference) = match &spec.toolchain {
        Toolchain::Input { .. } => {
            let Some((image, name)) =
                resolve::toolchain_from_input(store, &spec, &inputs, &profile)?
            else {
                anyhow::bail!("internal error: toolchain input not restored");
            };
            (image, crate::toolchain::input_reference(&name))
        }
        _ => {
            let reference = crate::toolchain::toolchain_request(&spec, dir)
                .map(|r| crate::toolchain::image_reference(&r))
                .unwrap_or_else(|| manifest.to_string());
            let image = match oci::find(store, &manifest)? {
                Some(img) => img,
                None => oci::load_from_store(store, &manifest, index, &reference)
                    .with_context(|| format!("the toolchain image {manifest}"))?,
            };
            (image, reference)
        }
    };

    let mut sources = Vec::new();
    for (i, s) in array_at(ki, "/sources", origin)?.iter().enumerate() {
        let name = str_at(s, "/name", origin)?.to_string();
        let strings = |key: &str| -> anyhow::Result<Vec<String>> {
            array_at(s, key, origin)?
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        bad(origin, format!("source {name:?}: {key} holds a non-string"))
                    })
                })
                .collect()
        };
        let record = match str_at(s, "/kind", origin)? {
            "remote" => SourceRecord::Remote {
                name: name.clone(),
                // Not in the key; the spec's, so the record says what a
                // local build's does.
                urls: spec
                    .sources
                    .iter()
                    .find(|x| x.name == name)
                    .and_then(|x| match &x.kind {
                        crate::spec::SourceKind::Remote { urls, .. } => Some(urls.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
                sha256: digest_at(ki, &format!("/sources/{i}/sha256"), origin)?,
                size: s
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(origin, format!("source {name:?}: size")))?,
                unpack: match s.get("unpack") {
                    None | Some(Value::Null) => None,
                    Some(u) => Some(UnpackRecord {
                        strip_components: u
                            .get("strip_components")
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| bad(origin, format!("source {name:?}: unpack")))?,
                    }),
                },
            },
            _ => {
                let path = spec
                    .sources
                    .iter()
                    .find(|x| x.name == name)
                    .and_then(|x| match &x.kind {
                        crate::spec::SourceKind::Local { path, .. } => Some(path.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        bad(
                            origin,
                            format!("source {name:?} is not a local source of the spec"),
                        )
                    })?;
                SourceRecord::Local {
                    name: name.clone(),
                    path,
                    include: strings("/include")?,
                    exclude: strings("/exclude")?,
                    tree: digest_at(ki, &format!("/sources/{i}/tree"), origin)?,
                }
            }
        };
        sources.push(ResolvedSource {
            record,
            local_root: None,
        });
    }
    sources.sort_by(|a, b| a.record.name().cmp(b.record.name()));

    let jobs = profile.jobs(opts.jobs, resolve::host_cpus());
    let environment = Environment::from_profile(
        &profile,
        &EnvInputs {
            image_path: image.path_env.as_deref(),
            source_date_epoch: None,
            jobs,
            extra: &spec.env,
        },
        &resolve::spec_limits(&spec),
    )
    .map_err(|e| bad(origin, e))?;
    Ok(Resolved {
        spec_path,
        spec,
        spec_text: a.spec_text.clone(),
        lock_text: a.lock_text.clone(),
        image,
        image_reference,
        sources,
        inputs,
        profile,
        environment,
    })
}

/// Runs the action in `dir/action.json` and writes its outputs into `dir`.
pub fn run(store: &Arc<Store>, dir: &Path, opts: &BuildOptions) -> anyhow::Result<()> {
    let path = dir.join("action.json");
    let origin = path.display().to_string();
    let text = crate::limits::read_text(&path, crate::limits::MAX_RECORD)
        .with_context(|| format!("reading {origin}"))?;
    let a = ActionJson::parse(&text, &origin)?;
    let resolved = resolve_action(store, &a, dir, opts, &origin)?;
    let plan = Plan::new(resolved)?;
    if plan.key != a.build_key {
        return Err(bad(
            &origin,
            format!(
                "its inputs hash to build key {}, but it says {}; the client's hermit makes actions this worker's hermit does not (update one of them)",
                plan.key, a.build_key
            ),
        ));
    }
    // The normal pipeline from here: a stored output is reused, else the
    // build runs under the key's lock and is installed.
    let built = match cache::lookup(store, &plan.key, Some(&plan)) {
        Some(hit) => hit,
        None => {
            let _lock = cache::lock_key(store, &plan.key, opts.quiet)?;
            match cache::lookup(store, &plan.key, Some(&plan)) {
                Some(hit) => hit,
                None => {
                    let net = NetArgs::defaults(Vec::new(), true, true);
                    let staged = pipeline::run_stages(store, &plan, &net, opts)?;
                    cache::install(store, staged, &plan.key)?
                }
            }
        }
    };
    write_outputs(store, &plan.key, &built, dir)
}

/// `output.tar`, `record.json` and `build.log` of a stored build, in `dir`.
fn write_outputs(
    store: &Store,
    key: &Digest,
    built: &pipeline::Built,
    dir: &Path,
) -> anyhow::Result<()> {
    crate::mirror::output_tar_blob(store, key, &built.record)?;
    let copy = |from: PathBuf, to: &str| -> anyhow::Result<()> {
        let dest = dir.join(to);
        fs::copy(&from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        Ok(())
    };
    copy(store.blob_path(&built.record.output.digest), "output.tar")?;
    copy(built.record_path.clone(), "record.json")?;
    copy(store.blob_path(&built.record.log.digest), "build.log")?;
    Ok(())
}
