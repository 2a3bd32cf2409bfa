//! The remote cache (`--remote`): the ActionCache and CAS of a REAPI
//! server used as a second store behind the local one.
//!
//! - [`lookup`]: before a build runs (under its key's lock, after the local
//!   store missed), the ActionCache is asked for the build's action
//!   ([`super::action`]). A result is accepted only when its `record.json`
//!   is a valid record of exactly this build key (the plan's key inputs)
//!   and its `output.tar` unpacks to a tree whose canonical tar has the
//!   record's output digest; its log is stored too. Then it is installed
//!   like a local build (staged, moved into `v1/outputs/<key>/`), and the
//!   build reports a cache hit. Anything else is refused with the digest
//!   named, and the build runs locally.
//! - [`upload`]: after a local build, when uploads are on, the output's
//!   canonical tar, the record, the log and the action's own blobs go to
//!   the CAS (only what it lacks), then the ActionResult.
//! - [`fetch_from_remote`]: blobs (sources, outputs of inputs) the store
//!   and the mirrors lack are looked up in the remote CAS before the URLs.
//!
//! The remote is trusted for nothing: a result it serves is checked as
//! thoroughly as a record `hermit rebuild` reads. Who may write its
//! ActionCache decides who can make everyone else skip a build; see
//! docs/remote.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use hermit_remote::{reapi, Digest as RDigest};
use hermit_store::{Digest, Store, Want};

use super::action::{self, Action};
use super::client::{Connected, Session};
use crate::net::NetArgs;
use crate::output;
use crate::pipeline::plan::Plan;
use crate::pipeline::{cache, collect::Staged, Built};
use crate::record::Record;

/// What this process asked the remote about each build key: the Action
/// digest and whether the output came from the remote (`--json`'s `"remote"`).
static ASKED: Mutex<BTreeMap<Digest, (String, String, bool)>> = Mutex::new(BTreeMap::new());

fn note(key: &Digest, endpoint: &str, action: &RDigest, hit: bool) {
    if let Ok(mut m) = ASKED.lock() {
        m.insert(*key, (endpoint.to_string(), action.to_string(), hit));
    }
}

/// `--json`'s `"remote"` of a build: `null` when no remote was asked, else
/// `{"endpoint", "action", "hit"}` (`hit`: the output came from the remote).
pub fn json(key: &Digest) -> serde_json::Value {
    match ASKED.lock().ok().and_then(|m| m.get(key).cloned()) {
        Some((endpoint, action, hit)) => {
            serde_json::json!({"endpoint": endpoint, "action": action, "hit": hit})
        }
        None => serde_json::Value::Null,
    }
}

/// A remote result refused: why, naming the digest.
struct Refused(String);

impl From<hermit_remote::Error> for Refused {
    fn from(e: hermit_remote::Error) -> Refused {
        Refused(e.to_string())
    }
}

/// The remote's result for `plan`, checked and installed as the output of
/// its key; `None` on a miss, a refused result or an unavailable remote
/// (the caller builds locally). The caller holds the key's lock.
pub fn lookup(store: &Arc<Store>, plan: &Plan, net: &NetArgs, quiet: bool) -> Option<Built> {
    let session = net.remote.as_ref()?;
    let conn = session.get()?;
    let action = Action::of_plan(plan);
    let endpoint = session.endpoint.to_string();
    note(&plan.key, &endpoint, &action.digest, false);
    let result = match conn.run(conn.remote.get_action_result(&action.digest)) {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) if e.is_unavailable() => {
            session.fail(&e);
            return None;
        }
        Err(e) => {
            eprintln!(
                "hermit: warning: the remote {} could not be asked for build key {}: {e}; building locally",
                session.endpoint, plan.key
            );
            return None;
        }
    };
    match install_result(store, plan, &conn, &result) {
        Ok(Ok(mut built)) => {
            built.cached = true;
            note(&plan.key, &endpoint, &action.digest, true);
            if !quiet {
                eprintln!(
                    "hermit: {} {}: remote cache hit from {} (output {})",
                    built.record.package.name,
                    built.record.package.version,
                    session.endpoint,
                    built.record.output.digest
                );
            }
            Some(built)
        }
        Ok(Err(Refused(why))) => {
            eprintln!(
                "hermit: refused the result of the remote {} for build key {} (action {}): {why}; building locally",
                session.endpoint, plan.key, action.digest
            );
            None
        }
        Err(e) => {
            // The remote answered but hermit could not finish (a timeout
            // mid-download, a local disk error): local build.
            if let Some(re) = e.downcast_ref::<hermit_remote::Error>() {
                if re.is_unavailable() {
                    session.fail(re);
                    return None;
                }
            }
            eprintln!(
                "hermit: warning: the remote {}'s result for build key {} could not be installed: {e:#}; building locally",
                session.endpoint, plan.key
            );
            None
        }
    }
}

/// The three output files of a result, by name.
struct Outputs {
    log: RDigest,
    tar: RDigest,
    record: RDigest,
}

fn outputs(result: &reapi::ActionResult) -> Result<Outputs, Refused> {
    if result.exit_code != 0 {
        return Err(Refused(format!(
            "it says the build exited with code {}",
            result.exit_code
        )));
    }
    let find = |name: &str| -> Result<RDigest, Refused> {
        let mut hits = result.output_files.iter().filter(|f| f.path == name);
        let f = hits
            .next()
            .ok_or_else(|| Refused(format!("it names no {name}")))?;
        if hits.next().is_some() {
            return Err(Refused(format!("it names {name} twice")));
        }
        let d = f
            .digest
            .as_ref()
            .ok_or_else(|| Refused(format!("its {name} has no digest")))?;
        Ok(RDigest::from_proto(d)?)
    };
    Ok(Outputs {
        log: find(action::OUTPUT_LOG)?,
        tar: find(action::OUTPUT_TAR)?,
        record: find(action::OUTPUT_RECORD)?,
    })
}

/// Checks a result against `plan` and installs it. The outer error is
/// hermit's or the network's; the inner one a refusal of the content.
fn install_result(
    store: &Arc<Store>,
    plan: &Plan,
    conn: &Connected,
    result: &reapi::ActionResult,
) -> anyhow::Result<Result<Built, Refused>> {
    let outs = match outputs(result) {
        Ok(o) => o,
        Err(r) => return Ok(Err(r)),
    };
    if outs.record.size > crate::limits::MAX_RECORD {
        return Ok(Err(Refused(format!(
            "its record.json {} is larger than any record",
            outs.record
        ))));
    }
    let remote = &conn.remote;
    let record_bytes = match conn.run(remote.read_blob(&outs.record)) {
        Ok(b) => b,
        Err(e) if e.is_unavailable() => return Err(e.into()),
        Err(e) => return Ok(Err(e.into())),
    };
    let origin = format!("the remote's record.json {}", outs.record);
    let Ok(text) = String::from_utf8(record_bytes) else {
        return Ok(Err(Refused(format!("{origin} is not UTF-8 text"))));
    };
    let expected = plan.key_inputs();
    let record = match Record::parse_expecting(&text, &origin, Some(&expected)) {
        Ok(r) => r,
        Err(e) => return Ok(Err(Refused(e.to_string()))),
    };
    // The build key is what must agree: what it leaves out (the job count,
    // source URLs, the image's reference) may differ between machines.
    if record.build_key != plan.key {
        return Ok(Err(Refused(format!(
            "{origin} is the record of build key {}, not of {}",
            record.build_key, plan.key
        ))));
    }
    if record.key_inputs().build_key() != record.build_key {
        return Ok(Err(Refused(format!(
            "{origin}: its build key does not follow from its own key inputs"
        ))));
    }
    if record.output.format != output::FORMAT {
        return Ok(Err(Refused(format!(
            "{origin} uses output format {}",
            record.output.format
        ))));
    }
    if outs.tar.hash != record.output.digest.hex() || outs.tar.size != record.output.tar_size {
        return Ok(Err(Refused(format!(
            "its output.tar is {}, but the record says the output is sha256:{}/{}",
            outs.tar,
            record.output.digest.hex(),
            record.output.tar_size
        ))));
    }
    if outs.log.hash != record.log.digest.hex() || outs.log.size != record.log.size {
        return Ok(Err(Refused(format!(
            "its build.log is {}, but the record says the log is {}",
            outs.log, record.log.digest
        ))));
    }
    // Stage: the tar downloaded (verified while streaming), unpacked into
    // out/, hashed again as the output format says, then installed.
    let staging = hermit_store::store::temp_dir(store.tmp_dir())?;
    match stage(store, conn, &outs, &record, &staging) {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => {
            let _ = hermit_store::store::remove_tree(&staging);
            return Ok(Err(refused));
        }
        Err(e) => {
            let _ = hermit_store::store::remove_tree(&staging);
            return Err(e);
        }
    }
    let staged = Staged {
        dir: staging.clone(),
        record,
    };
    let built = cache::install(store, staged, &plan.key);
    if built.is_err() {
        let _ = hermit_store::store::remove_tree(&staging);
    }
    Ok(Ok(built?))
}

fn stage(
    store: &Store,
    conn: &Connected,
    outs: &Outputs,
    record: &Record,
    staging: &Path,
) -> anyhow::Result<Result<(), Refused>> {
    let remote = &conn.remote;
    // The log, into the store by its digest.
    if store.blob(&record.log.digest).is_none() {
        let log_path = staging.join("build.log");
        match conn.run(remote.download_file(&outs.log, &log_path)) {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => return Err(e.into()),
            Err(e) => return Ok(Err(e.into())),
        }
        store
            .add_file(&log_path)
            .with_context(|| format!("storing the build log {}", record.log.digest))?;
        let _ = fs::remove_file(&log_path);
    }
    let tar_path = staging.join("output.tar");
    match conn.run(remote.download_file(&outs.tar, &tar_path)) {
        Ok(()) => {}
        Err(e) if e.is_unavailable() => return Err(e.into()),
        Err(e) => return Ok(Err(e.into())),
    }
    let out = staging.join("out");
    fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
    let tar =
        fs::File::open(&tar_path).with_context(|| format!("opening {}", tar_path.display()))?;
    if let Err(e) = hermit_store::unpack::extract_tar(
        std::io::BufReader::with_capacity(1 << 20, tar),
        &out,
        &hermit_store::ExtractOptions::default(),
    ) {
        return Ok(Err(Refused(format!(
            "its output.tar {} cannot be unpacked safely: {e}",
            outs.tar
        ))));
    }
    let _ = fs::remove_file(&tar_path);
    let found = match output::normalize(
        &out,
        &output::Options {
            source_date_epoch: record.environment.source_date_epoch,
            symlinks: output::SymlinkPolicy::Contained,
            apply: true,
        },
        None,
    ) {
        Ok(n) => n,
        Err(e) => {
            return Ok(Err(Refused(format!(
                "its output.tar {} is not an output: {e}",
                outs.tar
            ))))
        }
    };
    if found.digest != record.output.digest {
        return Ok(Err(Refused(format!(
            "its output.tar {} unpacks to output {}, not the record's {}",
            outs.tar, found.digest, record.output.digest
        ))));
    }
    hermit_store::tree::make_read_only(&out)
        .with_context(|| format!("making {} read-only", out.display()))?;
    let rp = staging.join("record.json");
    fs::write(&rp, record.to_json()?).with_context(|| format!("writing {}", rp.display()))?;
    fs::File::open(&rp)
        .and_then(|f| {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            f.sync_all()
        })
        .with_context(|| format!("syncing {}", rp.display()))?;
    Ok(Ok(()))
}

/// After a local build: the output, record and log to the remote's CAS
/// and the ActionResult to its ActionCache, when this command uploads.
/// Failures are warnings: the build itself succeeded.
pub fn upload(store: &Arc<Store>, plan: &Plan, built: &Built, net: &NetArgs) {
    let Some(session) = net.remote.as_ref().filter(|s| s.upload) else {
        return;
    };
    let Some(conn) = session.get() else {
        return;
    };
    let action = Action::of_plan(plan);
    note(
        &plan.key,
        &session.endpoint.to_string(),
        &action.digest,
        false,
    );
    if let Err(e) = upload_built(store, &action, built, &conn) {
        match e.downcast_ref::<hermit_remote::Error>() {
            Some(re) if re.is_unavailable() => session.fail(re),
            _ => eprintln!(
                "hermit: warning: uploading build key {} to the remote {} failed: {e:#}",
                built.record.build_key, session.endpoint
            ),
        }
    }
}

/// Uploads one stored build (output tar, record, log, action blobs) and
/// its ActionResult.
pub fn upload_built(
    store: &Store,
    action: &Action,
    built: &Built,
    conn: &Connected,
) -> anyhow::Result<()> {
    let remote = &conn.remote;
    let record = &built.record;
    let record_bytes = fs::read(&built.record_path)
        .with_context(|| format!("reading {}", built.record_path.display()))?;
    let record_digest = RDigest::of(&record_bytes);
    let log_path = store
        .blob(&record.log.digest)
        .with_context(|| format!("the build log {} is not in the store", record.log.digest))?;
    let log = action::rdigest(&record.log.digest, record.log.size);
    let tar = action::rdigest(&record.output.digest, record.output.tar_size);
    let mut small: Vec<(RDigest, Vec<u8>)> = action
        .blobs()
        .into_iter()
        .map(|(d, b)| (d, b.to_vec()))
        .collect();
    small.push((record_digest.clone(), record_bytes));
    let mut all: Vec<RDigest> = small.iter().map(|(d, _)| d.clone()).collect();
    all.extend([log.clone(), tar.clone()]);
    let missing: BTreeSet<RDigest> = conn.run(remote.find_missing(&all))?.into_iter().collect();
    let batch: Vec<(RDigest, &[u8])> = small
        .iter()
        .filter(|(d, _)| missing.contains(d))
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    conn.run(remote.batch_update(&batch))?;
    if missing.contains(&log) {
        conn.run(remote.upload_file(&log, &log_path))?;
    }
    if missing.contains(&tar) {
        let tmp = tempfile::Builder::new()
            .prefix(".output-tar-")
            .tempfile_in(store.tmp_dir())
            .context("creating a temporary file for the output's tar")?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        let n = output::normalize(
            &built.output,
            &output::Options {
                source_date_epoch: record.environment.source_date_epoch,
                symlinks: output::SymlinkPolicy::Verbatim,
                apply: false,
            },
            Some(&mut w),
        )
        .with_context(|| format!("writing the canonical tar of {}", built.output.display()))?;
        std::io::Write::flush(&mut w).context("writing the output's tar")?;
        drop(w);
        if n.digest != record.output.digest {
            anyhow::bail!(
                "the stored output {} hashes to {}, not its record's {}; run `hermit store verify`",
                built.output.display(),
                n.digest,
                record.output.digest
            );
        }
        conn.run(remote.upload_file(&tar, tmp.path()))?;
    }
    let file = |path: &str, d: &RDigest| reapi::OutputFile {
        path: path.to_string(),
        digest: Some(d.to_proto()),
        is_executable: false,
        ..Default::default()
    };
    let result = reapi::ActionResult {
        output_files: vec![
            file(action::OUTPUT_LOG, &log),
            file(action::OUTPUT_TAR, &tar),
            file(action::OUTPUT_RECORD, &record_digest),
        ],
        exit_code: 0,
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: format!("hermit {} (local build)", crate::version::VERSION),
            ..Default::default()
        }),
        ..Default::default()
    };
    conn.run(remote.update_action_result(&action.digest, result))?;
    conn.run(publish_index(remote, std::slice::from_ref(&tar)))?;
    conn.run(publish_record_index(
        remote,
        &record.build_key,
        &record_digest,
    ))?;
    Ok(())
}

/// Writes the record index entry of `build_key` ([`action::IndexAction::of_record`]);
/// the record's blob must be in the CAS already.
pub async fn publish_record_index(
    remote: &hermit_remote::Remote,
    build_key: &Digest,
    record: &RDigest,
) -> Result<(), hermit_remote::Error> {
    let ia = action::IndexAction::of_record(build_key);
    let digests: Vec<RDigest> = ia.blobs.iter().map(|(d, _)| d.clone()).collect();
    let missing: BTreeSet<RDigest> = remote.find_missing(&digests).await?.into_iter().collect();
    let batch: Vec<(RDigest, &[u8])> = ia
        .blobs
        .iter()
        .filter(|(d, _)| missing.contains(d))
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    remote.batch_update(&batch).await?;
    remote
        .update_action_result(&ia.digest, action::IndexAction::result(record))
        .await?;
    Ok(())
}

/// The text of the record of `build_key` from the remote's record index,
/// with where it came from; `None` without a remote or on a miss. The
/// caller checks it as any untrusted record.
pub fn find_record(net: &NetArgs, build_key: &Digest) -> Option<(String, String)> {
    let session = net.remote.as_ref().filter(|_| !net.offline)?;
    let conn = session.get()?;
    let ia = action::IndexAction::of_record(build_key);
    let found = conn
        .run(conn.remote.get_action_result(&ia.digest))
        .and_then(|r| {
            let Some(d) = r.as_ref().and_then(action::IndexAction::named_in) else {
                return Ok(None);
            };
            if d.size > crate::limits::MAX_RECORD {
                return Ok(None);
            }
            Ok(Some((conn.run(conn.remote.read_blob(&d))?, d)))
        });
    match found {
        Ok(Some((bytes, d))) => match String::from_utf8(bytes) {
            Ok(text) => Some((
                text,
                format!(
                    "the record {d} of build key {build_key} in the remote {}",
                    session.endpoint
                ),
            )),
            Err(_) => None,
        },
        Ok(None) => None,
        Err(e) => {
            if e.is_unavailable() {
                session.fail(&e);
            }
            None
        }
    }
}

/// Writes the blob index entries ([`action::IndexAction`]) of `blobs`, so
/// that a client knowing only their sha256 finds their size.
pub async fn publish_index(
    remote: &hermit_remote::Remote,
    blobs: &[RDigest],
) -> Result<(), hermit_remote::Error> {
    let mut messages: BTreeMap<RDigest, Vec<u8>> = BTreeMap::new();
    let mut entries = Vec::new();
    for b in blobs {
        let Ok(sha) = action::hdigest(b) else {
            continue;
        };
        let ia = action::IndexAction::of(&sha);
        messages.extend(ia.blobs);
        entries.push((ia.digest, b));
    }
    let digests: Vec<RDigest> = messages.keys().cloned().collect();
    let missing: BTreeSet<RDigest> = remote.find_missing(&digests).await?.into_iter().collect();
    let batch: Vec<(RDigest, &[u8])> = messages
        .iter()
        .filter(|(d, _)| missing.contains(d))
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    remote.batch_update(&batch).await?;
    for (a, b) in entries {
        remote
            .update_action_result(&a, action::IndexAction::result(b))
            .await?;
    }
    Ok(())
}

/// The size of the blob of `sha256`, from the remote's blob index.
fn index_size(session: &Session, conn: &Connected, sha256: &Digest) -> Option<u64> {
    let ia = action::IndexAction::of(sha256);
    match conn.run(conn.remote.get_action_result(&ia.digest)) {
        Ok(Some(r)) => action::IndexAction::size_in(&r, sha256),
        Ok(None) => None,
        Err(e) => {
            if e.is_unavailable() {
                session.fail(&e);
            }
            None
        }
    }
}

/// The wants the remote CAS could supply, brought into the store; returns
/// the rest. Order: store → mirrors → remote CAS → URLs: with mirrors
/// configured they are tried first (quietly, without URLs).
pub fn fetch_from_remote(
    store: &Arc<Store>,
    net: &NetArgs,
    wants: Vec<Want>,
) -> anyhow::Result<Vec<Want>> {
    let Some(session) = net.remote.as_ref() else {
        return Ok(wants);
    };
    if net.offline || wants.is_empty() {
        return Ok(wants);
    }
    if !crate::config::mirrors(&net.mirrors)?.is_empty() {
        let mirror_only: Vec<Want> = wants
            .iter()
            .map(|w| Want {
                urls: Vec::new(),
                ..w.clone()
            })
            .collect();
        let fetcher = hermit_store::Fetcher::new(
            store.clone(),
            hermit_store::FetchOptions {
                mirrors: crate::config::mirrors(&net.mirrors)?,
                retries: 0,
                ..hermit_store::FetchOptions::default()
            },
            Arc::new(hermit_store::fetch::NoReporter),
        )?;
        let _ = crate::net::runtime()?.block_on(fetcher.fetch_all(mirror_only));
    }
    let wants: Vec<Want> = wants
        .into_iter()
        .filter(|w| store.blob(&w.digest).is_none())
        .collect();
    if wants.is_empty() {
        return Ok(wants);
    }
    let Some(conn) = session.get() else {
        return Ok(wants);
    };
    Ok(fetch_blobs(store, session, &conn, wants, net.quiet))
}

/// Fetches what it can of `wants` from the remote CAS. A REAPI digest
/// needs the size: a want without one (an input's output, which a record
/// names by sha256 alone) takes it from the remote's blob index, and the
/// blob is still hashed as it arrives.
fn fetch_blobs(
    store: &Store,
    session: &Session,
    conn: &Connected,
    wants: Vec<Want>,
    quiet: bool,
) -> Vec<Want> {
    let sizes: Vec<Option<u64>> = wants
        .iter()
        .map(|w| w.size.or_else(|| index_size(session, conn, &w.digest)))
        .collect();
    let sized: Vec<RDigest> = wants
        .iter()
        .zip(&sizes)
        .filter_map(|(w, s)| s.map(|s| action::rdigest(&w.digest, s)))
        .collect();
    if sized.is_empty() {
        return wants;
    }
    let missing: BTreeSet<RDigest> = match conn.run(conn.remote.find_missing(&sized)) {
        Ok(m) => m.into_iter().collect(),
        Err(e) => {
            if e.is_unavailable() {
                session.fail(&e);
            }
            return wants;
        }
    };
    let mut rest = Vec::new();
    for (w, size) in wants.into_iter().zip(sizes) {
        let Some(size) = size else {
            rest.push(w);
            continue;
        };
        let d = action::rdigest(&w.digest, size);
        if missing.contains(&d) {
            rest.push(w);
            continue;
        }
        match fetch_one(store, conn, &d) {
            Ok(()) => {
                if !quiet {
                    eprintln!("hermit: {} from the remote {}", w.label, session.endpoint);
                }
            }
            Err(e) => {
                if let Some(re) = e.downcast_ref::<hermit_remote::Error>() {
                    if re.is_unavailable() {
                        session.fail(re);
                    } else {
                        eprintln!(
                            "hermit: refused {} from the remote {}: {re}",
                            w.label, session.endpoint
                        );
                    }
                } else {
                    eprintln!(
                        "hermit: warning: {} from the remote {}: {e:#}",
                        w.label, session.endpoint
                    );
                }
                rest.push(w);
            }
        }
    }
    rest
}

/// One blob from the remote CAS into the store, streamed into the store's
/// blob writer (hashed on the way in, committed only when it matches).
pub fn fetch_one(store: &Store, conn: &Connected, d: &RDigest) -> anyhow::Result<()> {
    use std::io::Write as _;
    let digest = action::hdigest(d)?;
    let mut w = store.blob_writer()?;
    conn.run(conn.remote.read_with(d, |chunk| w.write_all(chunk)))?;
    w.commit(
        &format!("blob {d} from the remote"),
        Some(&digest),
        Some(d.size),
    )?;
    Ok(())
}

/// `hermit mirror --to grpc://…`: uploads every blob of `items` (and the
/// records, as blobs) that the remote CAS lacks. An unreachable remote is
/// an error here: filling it is what the command was asked to do.
pub fn fill_remote(
    store: &Store,
    url: &str,
    items: &[hermit_store::mirror::MirrorItem],
    records: &std::collections::BTreeMap<Digest, String>,
    quiet: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let endpoint = hermit_remote::Endpoint::parse(url)?
        .with_token(std::env::var("HERMIT_REMOTE_TOKEN").ok())
        .with_ca(crate::remote::client::ca_bundle()?)
        .with_identity(crate::remote::client::client_identity()?);
    let session = Session::new(endpoint, true, hermit_remote::Options::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let remote = rt
        .block_on(hermit_remote::Remote::connect(
            session.endpoint.clone(),
            hermit_remote::Options::default(),
        ))
        .with_context(|| format!("connecting to {}", session.endpoint))?;
    let mut blobs: Vec<(RDigest, std::path::PathBuf, String)> = Vec::new();
    for i in items {
        let path = store.blob(&i.digest).with_context(|| {
            format!("{} ({}) is not in the store", i.digest, i.names.join(", "))
        })?;
        let size = fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        blobs.push((action::rdigest(&i.digest, size), path, i.names.join(", ")));
    }
    let record_blobs: Vec<(RDigest, &str)> = records
        .values()
        .map(|t| (RDigest::of(t.as_bytes()), t.as_str()))
        .collect();
    let mut all: Vec<RDigest> = blobs.iter().map(|(d, _, _)| d.clone()).collect();
    all.extend(record_blobs.iter().map(|(d, _)| d.clone()));
    let missing: BTreeSet<RDigest> = rt
        .block_on(remote.find_missing(&all))?
        .into_iter()
        .collect();
    let mut added = 0u64;
    let mut bytes = 0u64;
    for (d, path, names) in &blobs {
        if !missing.contains(d) {
            continue;
        }
        rt.block_on(remote.upload_file(d, path))
            .with_context(|| format!("uploading {d} ({names})"))?;
        added += 1;
        bytes += d.size;
        if !quiet {
            println!("added {d} {names}");
        }
    }
    let small: Vec<(RDigest, &[u8])> = record_blobs
        .iter()
        .filter(|(d, _)| missing.contains(d))
        .map(|(d, t)| (d.clone(), t.as_bytes()))
        .collect();
    rt.block_on(remote.batch_update(&small))
        .context("uploading the records")?;
    let indexed: Vec<RDigest> = blobs.iter().map(|(d, _, _)| d.clone()).collect();
    rt.block_on(publish_index(&remote, &indexed))
        .context("writing the blob index")?;
    added += small.len() as u64;
    if !quiet {
        println!(
            "remote {}: added {added} ({}), already present {}",
            session.endpoint,
            indicatif::HumanBytes(bytes + small.iter().map(|(d, _)| d.size).sum::<u64>()),
            all.len() as u64 - added
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
