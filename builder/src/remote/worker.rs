//! `hermit worker`: a bot of the Remote Workers API (BuildGrid's Bots
//! service) that runs hermit actions.
//!
//! The loop: CreateBotSession (advertising `OSFamily` and `ISA`, capacity
//! 1), then UpdateBotSession over and over — a long poll while idle, a
//! heartbeat every second while an action runs (BuildGrid gives up on a bot
//! that stays silent longer than its `bot-session-keepalive-timeout` and
//! queues its action again, which is what happens to a worker killed
//! mid-action). A lease carries the Action; the worker reads its Command
//! (it must be `hermit __remote-action action.json`, anything else is
//! refused) and input root from the CAS, brings every blob the input root
//! lists under `blobs/` into its store by digest (checked), runs
//! `hermit __remote-action` in a fresh directory (the normal pipeline, in a
//! process of its own), uploads `output.tar`, `record.json` and `build.log`
//! and completes the lease with the ActionResult; BuildGrid writes it to
//! the ActionCache.
//!
//! SIGTERM or SIGINT: no new lease is taken; a running action is stopped and
//! its lease handed back as UNAVAILABLE, which BuildGrid retries on another
//! bot; then the session ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hermit_remote::bots::rwapi;
use hermit_remote::{reapi, Digest as RDigest, Endpoint, Remote};
use hermit_store::Store;
use nix::sys::signal::{SigSet, Signal};
use prost::Message;

use super::action::{self as act, hdigest};

/// gRPC status codes used on leases (google.rpc.Code).
const CODE_OK: i32 = 0;
const CODE_INVALID_ARGUMENT: i32 = 3;
const CODE_FAILED_PRECONDITION: i32 = 9;
const CODE_INTERNAL: i32 = 13;
const CODE_UNAVAILABLE: i32 = 14;

/// How often a worker with a running action calls UpdateBotSession (well
/// within any sensible `bot-session-keepalive-timeout`).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The name of the input root's directory of blobs the action needs (see
/// [`super::exec`]).
pub const BLOBS_DIR: &str = "blobs";

/// How `hermit worker` runs.
pub struct WorkerOptions {
    pub endpoint: Endpoint,
    /// The bot id BuildGrid knows this worker by (and that its ActionResults
    /// name as `execution_metadata.worker`).
    pub name: String,
    /// CPUs the actions may use (HERMIT_JOBS, and the worker's affinity).
    pub cpus: Option<u32>,
    /// Where actions run: `<dir>/<lease id>/`.
    pub work_dir: PathBuf,
    /// This hermit, run as `__remote-action`.
    pub hermit: PathBuf,
}

/// Stop requested (SIGTERM/SIGINT), seen by the loop.
static STOP: AtomicBool = AtomicBool::new(false);

/// Blocks SIGTERM and SIGINT in this thread (and the threads it starts) and
/// waits for them on a thread of their own, which sets [`STOP`]. Children
/// inherit the mask; `hermit __remote-action` unblocks them first thing.
fn catch_stop_signals() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM and SIGINT")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                eprintln!(
                    "hermit worker: {sig}: finishing (the running action, if any, is handed back)"
                );
                STOP.store(true, Ordering::SeqCst);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Unblocks SIGTERM and SIGINT (in `hermit __remote-action`, which inherits
/// the worker's mask).
pub fn unblock_stop_signals() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let _ = set.thread_unblock();
}

/// How a lease ended: its status code and message, and the result.
type Outcome = (i32, String, Option<reapi::ActionResult>);

/// A lease being worked on, on a thread of its own.
struct Job {
    lease_id: String,
    /// Set by the thread when it has finished: the lease's status and result.
    done: Arc<Mutex<Option<Outcome>>>,
    /// The `__remote-action` process, while it runs.
    child: Arc<Mutex<Option<Child>>>,
    cancel: Arc<AtomicBool>,
}

pub fn run(store: Arc<Store>, opts: WorkerOptions) -> anyhow::Result<()> {
    catch_stop_signals()?;
    if let Some(n) = opts.cpus {
        limit_cpus(n)?;
    }
    fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let remote = rt
        .block_on(Remote::connect(
            opts.endpoint.clone(),
            hermit_remote::Options::default(),
        ))
        .with_context(|| format!("connecting to {}", opts.endpoint))?;
    let opts = Arc::new(opts);
    let mut session = new_session(&opts.name);
    session = rt
        .block_on(remote.create_bot_session(session, Duration::from_secs(5)))
        .with_context(|| format!("opening a bot session on {}", opts.endpoint))?;
    eprintln!(
        "hermit worker {}: session {} on {}",
        opts.name, session.name, opts.endpoint
    );
    let mut job: Option<Job> = None;
    let mut failures = 0u32;
    loop {
        let stopping = STOP.load(Ordering::SeqCst);
        // A finished job: report its lease completed.
        if let Some(j) = &job {
            let finished = j.done.lock().ok().and_then(|mut d| d.take());
            if let Some((code, message, result)) = finished {
                complete_lease(&mut session, &j.lease_id, code, &message, result);
                job = None;
            }
        }
        if stopping {
            if let Some(j) = job.take() {
                j.cancel.store(true, Ordering::SeqCst);
                kill_child(&j.child);
                complete_lease(
                    &mut session,
                    &j.lease_id,
                    CODE_UNAVAILABLE,
                    &format!("hermit worker {} is stopping", opts.name),
                    None,
                );
            }
            session.status = rwapi::BotStatus::BotTerminating as i32;
            let _ = rt.block_on(remote.update_bot_session(session, Duration::from_secs(1)));
            eprintln!("hermit worker {}: stopped", opts.name);
            return Ok(());
        }
        // A new lease: start it.
        if job.is_none() {
            if let Some(lease) = session.leases.iter_mut().find(|l| {
                l.state == rwapi::LeaseState::Pending as i32
                    || l.state == rwapi::LeaseState::Active as i32
            }) {
                lease.state = rwapi::LeaseState::Active as i32;
                job = Some(start_job(&rt, &remote, &store, &opts, lease.clone()));
            }
        }
        // Report, and wait for work (or beat the heart while working).
        let wait = if job.is_some() {
            HEARTBEAT
        } else {
            Duration::from_secs(5)
        };
        let started = Instant::now();
        match rt.block_on(remote.update_bot_session(session.clone(), wait)) {
            Ok(s) => {
                failures = 0;
                session = s;
                // The server dropped our running lease (cancelled).
                if let Some(j) = &job {
                    if !session.leases.iter().any(|l| l.id == j.lease_id) {
                        eprintln!(
                            "hermit worker {}: lease {} was cancelled",
                            opts.name, j.lease_id
                        );
                        j.cancel.store(true, Ordering::SeqCst);
                        kill_child(&j.child);
                        job = None;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("hermit worker {}: UpdateBotSession: {e}", opts.name);
                if matches!(&e, hermit_remote::Error::Rpc { code, .. }
                    if matches!(code, tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition))
                    || failures > 5
                {
                    // The server no longer knows this session (it expired):
                    // open a new one. Its leases went back to the queue.
                    if let Some(j) = job.take() {
                        j.cancel.store(true, Ordering::SeqCst);
                        kill_child(&j.child);
                    }
                    let fresh = new_session(&opts.name);
                    match rt.block_on(remote.create_bot_session(fresh, Duration::from_secs(5))) {
                        Ok(s) => {
                            session = s;
                            failures = 0;
                        }
                        Err(e) => eprintln!("hermit worker {}: CreateBotSession: {e}", opts.name),
                    }
                }
                if started.elapsed() < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        // While a job runs the server answers at once: beat about once a
        // second, but report an ended job as soon as it ends.
        if let Some(j) = &job {
            while started.elapsed() < HEARTBEAT
                && !STOP.load(Ordering::SeqCst)
                && j.done.lock().is_ok_and(|d| d.is_none())
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A fresh session for bot `name`: status OK, one device with the
/// platform properties actions are matched on, capacity 1.
fn new_session(name: &str) -> rwapi::BotSession {
    let props = [("OSFamily", "linux".to_string()), ("ISA", act::host_isa())];
    rwapi::BotSession {
        bot_id: name.to_string(),
        status: rwapi::BotStatus::Ok as i32,
        worker: Some(rwapi::Worker {
            devices: vec![rwapi::Device {
                handle: name.to_string(),
                properties: props
                    .iter()
                    .map(|(k, v)| rwapi::device::Property {
                        key: k.to_string(),
                        value: v.clone(),
                    })
                    .collect(),
            }],
            properties: vec![],
            configs: vec![rwapi::worker::Config {
                key: "capacity".into(),
                value: "1".into(),
            }],
        }),
        ..Default::default()
    }
}

/// Marks lease `id` of `session` completed with a status and a result.
fn complete_lease(
    session: &mut rwapi::BotSession,
    id: &str,
    code: i32,
    message: &str,
    result: Option<reapi::ActionResult>,
) {
    if let Some(l) = session.leases.iter_mut().find(|l| l.id == id) {
        l.state = rwapi::LeaseState::Completed as i32;
        l.status = Some(hermit_remote::proto::google::rpc::Status {
            code,
            message: message.to_string(),
            details: vec![],
        });
        l.result = result.map(|r| prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult".into(),
            value: r.encode_to_vec(),
        });
    }
}

fn kill_child(child: &Mutex<Option<Child>>) {
    if let Ok(mut c) = child.lock() {
        if let Some(c) = c.as_mut() {
            let _ = c.kill();
        }
    }
}

/// Restricts this process (and so every action it runs) to the first `n`
/// CPUs it may use, like `taskset`.
fn limit_cpus(n: u32) -> anyhow::Result<()> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let have = sched_getaffinity(Pid::from_raw(0)).context("reading the CPU affinity")?;
    let mut want = CpuSet::new();
    let mut taken = 0;
    for cpu in 0..CpuSet::count() {
        if taken == n {
            break;
        }
        if have.is_set(cpu).unwrap_or(false) {
            want.set(cpu).context("building the CPU set")?;
            taken += 1;
        }
    }
    if taken == 0 {
        anyhow::bail!("--cpus {n}: no CPU to run on");
    }
    sched_setaffinity(Pid::from_raw(0), &want).context("setting the CPU affinity")?;
    Ok(())
}

fn start_job(
    rt: &tokio::runtime::Runtime,
    remote: &Remote,
    store: &Arc<Store>,
    opts: &Arc<WorkerOptions>,
    lease: rwapi::Lease,
) -> Job {
    let job = Job {
        lease_id: lease.id.clone(),
        done: Arc::default(),
        child: Arc::default(),
        cancel: Arc::default(),
    };
    let (done, child, cancel) = (job.done.clone(), job.child.clone(), job.cancel.clone());
    let (handle, remote, store, opts) = (
        rt.handle().clone(),
        remote.clone(),
        store.clone(),
        opts.clone(),
    );
    std::thread::spawn(move || {
        let r = run_lease(&handle, &remote, &store, &opts, &lease, &child, &cancel);
        let outcome = match r {
            Ok(result) => (CODE_OK, String::new(), Some(result)),
            Err(LeaseError(code, message)) => {
                eprintln!("hermit worker {}: lease {}: {message}", opts.name, lease.id);
                (code, message, None)
            }
        };
        if let Ok(mut d) = done.lock() {
            *d = Some(outcome);
        }
    });
    job
}

/// Why a lease could not give an ActionResult: a status code and message.
struct LeaseError(i32, String);

fn run_lease(
    rt: &tokio::runtime::Handle,
    remote: &Remote,
    store: &Arc<Store>,
    opts: &WorkerOptions,
    lease: &rwapi::Lease,
    child_slot: &Mutex<Option<Child>>,
    cancel: &AtomicBool,
) -> Result<reapi::ActionResult, LeaseError> {
    let started = std::time::SystemTime::now();
    let unavailable = |what: &str, e: hermit_remote::Error| {
        // An integrity failure is the action's fault, not the worker's.
        let code = if e.is_integrity() {
            CODE_FAILED_PRECONDITION
        } else {
            CODE_UNAVAILABLE
        };
        LeaseError(code, format!("{what}: {e}"))
    };
    // The Action: in the payload, or named by digest.
    let payload = lease
        .payload
        .as_ref()
        .ok_or_else(|| LeaseError(CODE_INVALID_ARGUMENT, "the lease has no payload".into()))?;
    let action = if payload
        .type_url
        .ends_with("build.bazel.remote.execution.v2.Action")
    {
        reapi::Action::decode(payload.value.as_slice())
            .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, format!("the lease's Action: {e}")))?
    } else if payload
        .type_url
        .ends_with("build.bazel.remote.execution.v2.Digest")
    {
        let d = reapi::Digest::decode(payload.value.as_slice())
            .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, format!("the lease's Digest: {e}")))?;
        let d = RDigest::from_proto(&d)
            .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, e.to_string()))?;
        let bytes = rt
            .block_on(remote.read_blob(&d))
            .map_err(|e| unavailable("reading the Action", e))?;
        reapi::Action::decode(bytes.as_slice())
            .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, format!("the Action {d}: {e}")))?
    } else {
        return Err(LeaseError(
            CODE_INVALID_ARGUMENT,
            format!(
                "the lease's payload is a {}, not an Action",
                payload.type_url
            ),
        ));
    };
    let action_digest = RDigest::of(&action.encode_to_vec());
    let read_msg = |d: &Option<reapi::Digest>, what: &str| -> Result<Vec<u8>, LeaseError> {
        let d = d.as_ref().ok_or_else(|| {
            LeaseError(CODE_INVALID_ARGUMENT, format!("the Action has no {what}"))
        })?;
        let d =
            RDigest::from_proto(d).map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, e.to_string()))?;
        rt.block_on(remote.read_blob(&d))
            .map_err(|e| unavailable(&format!("reading the {what} {d}"), e))
    };
    let command = reapi::Command::decode(read_msg(&action.command_digest, "command")?.as_slice())
        .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, format!("the Command: {e}")))?;
    if command.arguments != act::ARGUMENTS {
        return Err(LeaseError(
            CODE_INVALID_ARGUMENT,
            format!(
                "not a hermit action: its command is {:?}, a hermit worker runs only {:?}",
                command.arguments,
                act::ARGUMENTS
            ),
        ));
    }
    let root =
        reapi::Directory::decode(read_msg(&action.input_root_digest, "input root")?.as_slice())
            .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, format!("the input root: {e}")))?;
    let action_file = root
        .files
        .iter()
        .find(|f| f.name == act::ACTION_FILE)
        .ok_or_else(|| {
            LeaseError(
                CODE_INVALID_ARGUMENT,
                "the input root has no action.json".into(),
            )
        })?;
    let action_json = read_msg(&action_file.digest, "action.json")?;

    // Every blob the input root lists under blobs/: from the store, else
    // from the CAS (checked against its digest before it is stored).
    let mut blobs = Vec::new();
    if let Some(dir) = root.directories.iter().find(|d| d.name == BLOBS_DIR) {
        let listing =
            reapi::Directory::decode(read_msg(&dir.digest, "blobs directory")?.as_slice())
                .map_err(|e| {
                    LeaseError(CODE_INVALID_ARGUMENT, format!("the blobs directory: {e}"))
                })?;
        for f in listing.files {
            let d = f.digest.as_ref().ok_or_else(|| {
                LeaseError(
                    CODE_INVALID_ARGUMENT,
                    format!("blob {} has no digest", f.name),
                )
            })?;
            let d = RDigest::from_proto(d)
                .map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, e.to_string()))?;
            if d.hash != f.name {
                return Err(LeaseError(
                    CODE_INVALID_ARGUMENT,
                    format!("blobs/{} names blob {}", f.name, d),
                ));
            }
            blobs.push(d);
        }
    }
    for d in &blobs {
        let hd = hdigest(d).map_err(|e| LeaseError(CODE_INVALID_ARGUMENT, e.to_string()))?;
        if store.blob(&hd).is_some() {
            continue;
        }
        fetch_into_store(rt, remote, store, d).map_err(|e| {
            match e.downcast::<hermit_remote::Error>() {
                Ok(e) => unavailable(&format!("fetching blob {d}"), e),
                Err(e) => LeaseError(CODE_INTERNAL, format!("storing blob {d}: {e:#}")),
            }
        })?;
    }

    // Run it.
    let dir = opts.work_dir.join(sanitize(&lease.id));
    let _ = hermit_store::store::remove_tree(&dir);
    fs::create_dir_all(&dir)
        .map_err(|e| LeaseError(CODE_INTERNAL, format!("creating {}: {e}", dir.display())))?;
    let action_path = dir.join(act::ACTION_FILE);
    fs::write(&action_path, &action_json).map_err(|e| {
        LeaseError(
            CODE_INTERNAL,
            format!("writing {}: {e}", action_path.display()),
        )
    })?;
    let (key, package) = describe(&action_json);
    eprintln!(
        "hermit worker {}: running action {} (package {package}, build key {key})",
        opts.name, action_digest
    );
    let stderr_path = dir.join("stderr.log");
    let stderr = fs::File::create(&stderr_path).map_err(|e| {
        LeaseError(
            CODE_INTERNAL,
            format!("creating {}: {e}", stderr_path.display()),
        )
    })?;
    let mut cmd = Command::new(&opts.hermit);
    cmd.arg("__remote-action").arg(&action_path);
    if let Some(n) = opts.cpus {
        cmd.arg("--jobs").arg(n.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = cmd.spawn().map_err(|e| {
        LeaseError(
            CODE_INTERNAL,
            format!("starting {}: {e}", opts.hermit.display()),
        )
    })?;
    if let Ok(mut slot) = child_slot.lock() {
        *slot = Some(child);
    }
    let status = loop {
        if cancel.load(Ordering::SeqCst) {
            kill_child(child_slot);
        }
        let polled = match child_slot.lock() {
            Ok(mut slot) => match slot.as_mut() {
                Some(c) => c.try_wait(),
                None => {
                    return Err(LeaseError(
                        CODE_INTERNAL,
                        "the action's process was lost".into(),
                    ))
                }
            },
            Err(_) => {
                return Err(LeaseError(
                    CODE_INTERNAL,
                    "the action's process was lost".into(),
                ))
            }
        };
        match polled {
            Ok(Some(s)) => break s,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(LeaseError(
                    CODE_INTERNAL,
                    format!("waiting for the action: {e}"),
                ))
            }
        }
    };
    if cancel.load(Ordering::SeqCst) {
        return Err(LeaseError(
            CODE_UNAVAILABLE,
            "the action was stopped".into(),
        ));
    }
    let stderr_text = fs::read(&stderr_path).unwrap_or_default();
    let mut result = reapi::ActionResult {
        exit_code: status.code().unwrap_or(128),
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: opts.name.clone(),
            worker_start_timestamp: Some(started.into()),
            worker_completed_timestamp: Some(std::time::SystemTime::now().into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut uploads: Vec<(RDigest, PathBuf)> = Vec::new();
    let stderr_digest = RDigest::of(&stderr_text);
    if !stderr_text.is_empty() {
        uploads.push((stderr_digest.clone(), stderr_path.clone()));
        result.stderr_digest = Some(stderr_digest.to_proto());
    }
    for name in act::OUTPUT_FILES {
        let p = dir.join(name);
        // A failed build leaves only its log, if it got as far as running.
        if status.success() || (name == act::OUTPUT_LOG && p.exists()) {
            let d = digest_file(&p).map_err(|e| LeaseError(CODE_INTERNAL, format!("{e:#}")))?;
            result.output_files.push(reapi::OutputFile {
                path: name.to_string(),
                digest: Some(d.to_proto()),
                ..Default::default()
            });
            uploads.push((d, p));
        }
    }
    let wanted: Vec<RDigest> = uploads.iter().map(|(d, _)| d.clone()).collect();
    let missing = rt
        .block_on(remote.find_missing(&wanted))
        .map_err(|e| unavailable("FindMissingBlobs", e))?;
    for (d, p) in &uploads {
        if missing.contains(d) {
            rt.block_on(remote.upload_file(d, p))
                .map_err(|e| unavailable(&format!("uploading {}", p.display()), e))?;
        }
    }
    eprintln!(
        "hermit worker {}: finished action {} (package {package}, build key {key}) in {:.1} s: exit code {}",
        opts.name,
        action_digest,
        started.elapsed().unwrap_or_default().as_secs_f64(),
        result.exit_code
    );
    let _ = hermit_store::store::remove_tree(&dir);
    Ok(result)
}

/// The build key and package an action.json names, for the worker's log.
fn describe(action_json: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(action_json).unwrap_or_default();
    let key = v["build_key"].as_str().unwrap_or("?").to_string();
    let spec = v["spec"]["text"].as_str().unwrap_or("");
    let package = crate::spec::Spec::parse(Path::new(act::SPEC_FILE), spec)
        .map(|s| s.package.name)
        .unwrap_or_else(|_| "?".into());
    (key, package)
}

/// A bot id or lease id as a directory name.
pub fn dir_name(id: &str) -> String {
    sanitize(id)
}

/// A lease id as a directory name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The REAPI digest of a file.
fn digest_file(p: &Path) -> anyhow::Result<RDigest> {
    let mut f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let (d, size) = hermit_store::store::hash_reader(&mut f)
        .with_context(|| format!("reading {}", p.display()))?;
    Ok(act::rdigest(&d, size))
}

/// Downloads blob `d` from the CAS into the store, checked.
fn fetch_into_store(
    rt: &tokio::runtime::Handle,
    remote: &Remote,
    store: &Store,
    d: &RDigest,
) -> anyhow::Result<()> {
    let hd = hdigest(d)?;
    let (file, staging) = hermit_store::store::temp_file(store.tmp_dir())?;
    drop(file);
    let r = rt.block_on(remote.download_file(d, &staging));
    if let Err(e) = r {
        let _ = fs::remove_file(&staging);
        return Err(e.into());
    }
    let mut f =
        fs::File::open(&staging).with_context(|| format!("opening {}", staging.display()))?;
    let stored = store.add_reader(
        &mut f,
        &format!("blob {d} from the CAS"),
        Some(&hd),
        Some(d.size),
    );
    let _ = fs::remove_file(&staging);
    stored?;
    Ok(())
}
