//! `hermit rebuild`: plan from a record, then the same stages as a build,
//! then a comparison with the recorded output.
//!
//! A record is untrusted input (see [`crate::derive`]): it is read with
//! [`read_record`], which checks it against its own spec and lock, and the
//! environment is derived again from its pinned profile. Its inputs'
//! outputs are restored by digest ([`restore_input`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use hermit_store::fetch::Want;
use hermit_store::Store;

use super::plan::Plan;
use super::resolve::{self, InputOutput};
use super::{cache, BuildOptions};
use crate::exit::Exit;
use crate::limits;
use crate::net::{fetch, NetArgs};
use crate::record::{InputRecord, Record};
use crate::spec::Spec;

/// Reads a record, which is untrusted input: parsed, validated, and checked
/// against what its own spec and lock derive (the toolchain, sources and
/// package), so that nothing but its pinned profile, spec and lock decides
/// what hermit fetches or how the sandbox is set up.
pub fn read_record(record_path: &Path) -> anyhow::Result<(Record, Spec)> {
    let text = limits::read_text(record_path, limits::MAX_RECORD)
        .with_context(|| format!("reading {}", record_path.display()))?;
    check_record(&text, &record_path.display().to_string())
}

/// [`read_record`] of a record's text that came from `origin`.
pub fn check_record(text: &str, origin: &str) -> anyhow::Result<(Record, Spec)> {
    let rec = Record::parse(text, origin).map_err(|e| Exit::user(e.to_string()))?;
    let spec = Spec::parse(Path::new(&rec.spec.file), &rec.spec.text)
        .map_err(|e| Exit::user(format!("{origin}: the recorded spec: {e}")))?;
    crate::derive::check_static(&rec, &spec, origin).map_err(|e| Exit::user(e.to_string()))?;
    Ok((rec, spec))
}

/// What a rebuild found.
pub struct Rebuilt {
    pub old: Record,
    pub new: Record,
    /// Where a differing output was kept (`v1/rebuilds/<key>/out`).
    pub kept: Option<PathBuf>,
}

/// Rebuilds a record: restore everything it names by digest, run the build
/// again, and compare the output digest with the recorded one.
pub fn rebuild(
    store: &Arc<Store>,
    record_path: &Path,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Rebuilt> {
    let (rec, spec) = read_record(record_path)?;
    rebuild_record(
        store,
        rec,
        spec,
        &record_path.display().to_string(),
        net,
        opts,
    )
}

/// [`rebuild`] of a record already read and checked, from `origin`.
pub fn rebuild_record(
    store: &Arc<Store>,
    rec: Record,
    spec: Spec,
    origin: &str,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Rebuilt> {
    let mut inputs = Vec::new();
    for i in &rec.inputs {
        inputs.push(restore_input(store, i, net, origin)?);
    }
    let resolved = resolve::from_record(store, &rec, spec, origin, inputs, net, opts)?;
    let plan = Plan::new(resolved)?;
    if plan.key != rec.build_key {
        bail!(
            "the record's inputs hash to build key {}, but it says {}; the record was edited or made by an incompatible hermit",
            plan.key,
            rec.build_key
        );
    }
    let staged = super::run_stages(store, &plan, net, opts)?;
    let new = staged.record.clone();
    let kept = if new.output.digest == rec.output.digest {
        // Identical: install it where the store lacks this output or holds
        // a corrupt one.
        let _lock = cache::lock_key(store, &plan.key, true)?;
        match cache::check(store, &plan.key, Some(&plan)) {
            cache::Stored::Good(_) => super::materialise::discard(&staged.dir),
            cache::Stored::Absent => {
                cache::install(store, staged, &plan.key)?;
            }
            cache::Stored::Corrupt(why) => {
                eprintln!(
                    "hermit: the stored output of build key {} is corrupt: {why}; replacing it with the rebuilt one",
                    plan.key
                );
                cache::install(store, staged, &plan.key)?;
            }
        }
        None
    } else {
        let root = store.base().join("rebuilds");
        let dir = root.join(plan.key.hex());
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let _ = hermit_store::store::remove_tree(&dir);
        fs::rename(&staged.dir, &dir)
            .with_context(|| format!("keeping the rebuild at {}", dir.display()))?;
        Some(dir.join("out"))
    };
    Ok(Rebuilt {
        old: rec,
        new,
        kept,
    })
}

/// One node of a deep rebuild.
pub struct DeepNode {
    pub origin: String,
    pub rebuilt: Rebuilt,
}

/// `hermit rebuild --deep`: every input of the record, transitively, is
/// rebuilt from its own record first (found by build key in the store or a
/// mirror), then the record itself. Each node is compared with its own
/// record; a dependant is built over its inputs' *recorded* outputs (by
/// digest), so that each comparison says whether that node alone is
/// reproducible. Nodes come back inputs first.
pub fn rebuild_deep(
    store: &Arc<Store>,
    record_path: &Path,
    net: &NetArgs,
    opts: &BuildOptions,
) -> anyhow::Result<Vec<DeepNode>> {
    let (top, spec) = read_record(record_path)?;
    // Inputs first: a post-order walk over build keys, each once.
    let mut order: Vec<(Record, Spec, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<(Record, Spec, String, bool)> =
        vec![(top, spec, record_path.display().to_string(), false)];
    while let Some((rec, spec, origin, expanded)) = stack.pop() {
        if expanded {
            order.push((rec, spec, origin));
            continue;
        }
        if !seen.insert(rec.build_key) {
            continue;
        }
        let inputs = rec.inputs.clone();
        stack.push((rec, spec, origin.clone(), true));
        for i in inputs.iter().rev() {
            if seen.contains(&i.build_key) {
                continue;
            }
            let Some((irec, ispec, _, iorigin)) =
                crate::mirror::find_record(store, net, &i.build_key)?
            else {
                return Err(Exit::user(format!(
                    "{origin}: the record of input {:?} (build key {}) is neither in the store, nor in an imported bundle, nor in a mirror or the remote; --deep rebuilds every input from its own record: add a mirror made with `hermit mirror RECORD`",
                    i.name, i.build_key
                ))
                .into());
            };
            if irec.output.digest != i.output {
                return Err(Exit::user(format!(
                    "{origin}: input {:?} names output {}, but the record of its build key {} ({iorigin}) says {}",
                    i.name, i.output, i.build_key, irec.output.digest
                ))
                .into());
            }
            stack.push((irec, ispec, iorigin, false));
        }
    }
    let mut out = Vec::new();
    for (rec, spec, origin) in order {
        if !opts.quiet {
            eprintln!(
                "hermit: rebuilding {} {} ({origin})",
                rec.package.name, rec.package.version
            );
        }
        let rebuilt = rebuild_record(store, rec, spec, &origin, net, opts)?;
        out.push(DeepNode { origin, rebuilt });
    }
    Ok(out)
}

/// An input's output by digest: the store's output of its build key when
/// it holds that very output, else its canonical tar (named by the output
/// digest) from the store or a mirror, unpacked.
pub fn restore_input(
    store: &Arc<Store>,
    input: &InputRecord,
    net: &NetArgs,
    origin: &str,
) -> anyhow::Result<InputOutput> {
    if let cache::Stored::Good(built) = cache::check(store, &input.build_key, None) {
        if built.record.output.digest == input.output {
            return Ok(InputOutput {
                record: input.clone(),
                path: built.output,
            });
        }
    }
    fetch(
        store,
        net,
        vec![Want {
            digest: input.output,
            size: None,
            urls: vec![],
            label: format!("the output of input {:?} of {origin}", input.name),
        }],
    )
    .map_err(|e| {
        Exit::user(format!(
            "{origin}: input {:?} (output {}, build key {}) is neither in the store nor in a mirror or the remote: {e:#}; \
             build its spec ({}) first, or add a mirror made with `hermit mirror` that holds it",
            input.name, input.output, input.build_key, input.spec
        ))
    })?;
    let path = super::materialise::unpacked_tar(store, &input.output)
        .with_context(|| format!("unpacking the output of input {:?}", input.name))?;
    Ok(InputOutput {
        record: input.clone(),
        path,
    })
}

/// Paths whose entries differ between two file lists, sorted.
pub fn differing_files(a: &Record, b: &Record) -> Vec<String> {
    let index = |r: &Record| -> BTreeMap<String, String> {
        r.output
            .files
            .iter()
            .map(|f| (f.path.clone(), serde_json::to_string(f).unwrap_or_default()))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let mut out: Vec<String> = Vec::new();
    for (p, v) in &ia {
        match ib.get(p) {
            Some(w) if w == v => {}
            Some(_) => out.push(format!("changed  {p}")),
            None => out.push(format!("missing  {p}")),
        }
    }
    for p in ib.keys().filter(|p| !ia.contains_key(*p)) {
        out.push(format!("added    {p}"));
    }
    out
}
