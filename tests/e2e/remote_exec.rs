//! Remote execution on BuildGrid: `hermit worker`s are BuildGrid bots,
//! `hermit build --remote-exec` sends a graph's builds to BuildGrid's
//! Execution service. A real BuildGrid (with its PostgreSQL) on loopback,
//! real workers and real sandboxes, as root and as an ordinary user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::buildgrid_exec::{BuildGridExec, ExecConfig};
use crate::common::both;
use crate::fixtures::{both_users, output_within, As};
use crate::graph::graph_project;

/// A running `hermit worker`, its stderr in a file; killed when dropped.
struct Worker {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(who: As, dir: &Path, url: &str, name: &str, extra: &[&str]) -> Worker {
        Worker::start_env(who, dir, url, name, extra, &[])
    }

    /// [`Worker::start`] with environment variables `env` set.
    fn start_env(
        who: As,
        dir: &Path,
        url: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Worker {
        let home = dir.join(format!("home-{name}"));
        let log = dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = who
            .hermit_in(&home)
            .envs(env.iter().copied())
            .args(["worker", "--remote", url, "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Worker {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The build keys this worker finished, from its log.
    fn finished_keys(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(": finished action ") && l.ends_with(": exit code 0"))
            .filter_map(|l| l.split("build key ").nth(1))
            .map(|k| k.split(')').next().unwrap().to_string())
            .collect()
    }

    /// Waits until the log has a line containing `what`.
    fn wait_for(&self, what: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(
                start.elapsed() < limit,
                "worker {} did not log {what:?} within {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let o = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "kill {sig}: {o:?}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hermit build SPEC --json --remote-exec URL` as `who`, in `home`.
fn remote_build(who: As, home: &Path, spec: &str, url: &str) -> std::process::Command {
    let mut c = who.hermit_in(home);
    c.args(["build", spec, "--json", "--remote-exec", url]);
    c
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(o)))
}

/// `name → (build key, output digest)` from `--json`'s graph.
fn keys(v: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = v["graph"]
        .as_array()
        .unwrap_or_else(|| panic!("no graph in {v}"))
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["build_key"].as_str().unwrap().to_string(),
                n["output_digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Five specs: four independent leaves that each take a moment (so two
/// workers both get some) and an app over all of them.
fn project(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let leaf = |n: &str| {
        format!("sleep 1\necho {tag}-{n} > $out/{n}\nmkdir $out/sub\necho nested > $out/sub/f\nln -s {n} $out/link")
    };
    let (a, b, c, d) = (leaf("a"), leaf("b"), leaf("c"), leaf("d"));
    graph_project(
        dir,
        &[
            ("a", &a, &[]),
            ("b", &b, &[]),
            ("c", &c, &[]),
            ("d", &d, &[]),
            (
                "app",
                "cat /inputs/a/a /inputs/b/b /inputs/c/c /inputs/d/d > $out/app",
                &[("a", "a"), ("b", "b"), ("c", "c"), ("d", "d")],
            ),
        ],
    )
}

fn remote_exec_graph_runs_on_two_workers_identical_to_local(who: As) {
    let t = who.scratch();
    // Its own directory: `give` below must not hand the database's files
    // to the caller.
    let bgdir = As::Root.scratch();
    let bg = BuildGridExec::start(bgdir.path(), &ExecConfig::default());
    let specs = project(&t.path().join("p"), who.name());
    who.give(t.path());
    let url = bg.url();
    let w1 = Worker::start(who, t.path(), &url, "w1", &["--cpus", "1"]);
    let w2 = Worker::start(who, t.path(), &url, "w2", &["--cpus", "1"]);
    w1.wait_for("session", Duration::from_secs(30));
    w2.wait_for("session", Duration::from_secs(30));

    let app = specs[4].to_str().unwrap();
    let o = output_within(
        &mut remote_build(who, &t.path().join("home-client"), app, &url),
        Duration::from_secs(300),
    );
    assert!(
        o.status.success(),
        "{}\n--- w1\n{}\n--- w2\n{}\n--- buildgrid\n{}",
        both(&o),
        w1.log(),
        w2.log(),
        bg.log()
    );
    let remote = json(&o);
    let out = PathBuf::from(remote["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("app")).unwrap(),
        format!("{0}-a\n{0}-b\n{0}-c\n{0}-d\n", who.name())
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        stderr.matches("built remotely by worker").count(),
        5,
        "every node runs remotely:\n{stderr}"
    );

    // Spread over both workers, every node run by one of them.
    let (k1, k2) = (w1.finished_keys(), w2.finished_keys());
    assert!(
        !k1.is_empty() && !k2.is_empty(),
        "both workers ran actions: w1 {k1:?}, w2 {k2:?}\n--- w1\n{}\n--- w2\n{}",
        w1.log(),
        w2.log()
    );
    let mut ran: Vec<String> = k1.iter().chain(&k2).cloned().collect();
    ran.sort();
    let remote_keys = keys(&remote);
    let mut want: Vec<String> = remote_keys.iter().map(|(_, k, _)| k.clone()).collect();
    want.sort();
    assert_eq!(ran, want, "each node ran exactly once, on one worker");
    // `--json` names the worker of each node, as the workers saw it.
    for n in remote["graph"].as_array().unwrap() {
        let key = n["build_key"].as_str().unwrap().to_string();
        let by = n["remote_exec"]["worker"]
            .as_str()
            .unwrap_or_else(|| panic!("{n}"));
        let expect = if k1.contains(&key) { "w1" } else { "w2" };
        assert_eq!(by, expect, "{n}");
        assert!(
            n["remote_exec"]["operation"]
                .as_str()
                .is_some_and(|o| !o.is_empty())
                && n["remote_exec"]["endpoint"] == url.as_str(),
            "{n}"
        );
    }

    // Bit-identical to a local build of the same specs, with a fresh store.
    let o = output_within(
        who.hermit_in(&t.path().join("home-local"))
            .args(["build", app, "--json"]),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", both(&o));
    let local = json(&o);
    assert_eq!(keys(&local), remote_keys, "same keys and output digests");
    assert_eq!(local["output_digest"], remote["output_digest"]);

    // The client's stored outputs pass `hermit store verify`.
    let o = output_within(
        who.hermit_in(&t.path().join("home-client"))
            .args(["store", "verify"]),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", both(&o));

    // Graceful stop: SIGTERM ends an idle worker cleanly.
    let mut w1 = w1;
    w1.signal("-TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = w1.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker ignored SIGTERM:\n{}",
            w1.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", w1.log());
    assert!(w1.log().contains("stopped"), "{}", w1.log());
}

fn remote_exec_worker_killed_mid_action_is_retried_elsewhere(who: As) {
    let t = who.scratch();
    let bgdir = As::Root.scratch();
    let bg = BuildGridExec::start(
        bgdir.path(),
        &ExecConfig {
            keepalive_secs: 5,
            ..ExecConfig::default()
        },
    );
    let specs = graph_project(
        &t.path().join("p"),
        &[("slow", "sleep 4\necho done > $out/done", &[])],
    );
    who.give(t.path());
    let url = bg.url();
    let w1 = Worker::start(who, t.path(), &url, "w1", &[]);
    w1.wait_for("session", Duration::from_secs(30));
    let client = remote_build(
        who,
        &t.path().join("home-client"),
        specs[0].to_str().unwrap(),
        &url,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    w1.wait_for("running action", Duration::from_secs(60));
    w1.signal("-KILL");
    let w2 = Worker::start(who, t.path(), &url, "w2", &[]);
    let o = crate::fixtures::wait_within(client, Duration::from_secs(180));
    assert!(
        o.status.success(),
        "{}\n--- w1\n{}\n--- w2\n{}\n--- buildgrid\n{}",
        both(&o),
        w1.log(),
        w2.log(),
        bg.log()
    );
    let v = json(&o);
    assert_eq!(
        fs::read_to_string(PathBuf::from(v["output"].as_str().unwrap()).join("done")).unwrap(),
        "done\n"
    );
    let key = v["build_key"].as_str().unwrap().to_string();
    assert!(w1.finished_keys().is_empty(), "{}", w1.log());
    assert_eq!(w2.finished_keys(), vec![key], "{}", w2.log());
}

fn remote_exec_worker_stopped_mid_action_hands_it_back(who: As) {
    let t = who.scratch();
    let bgdir = As::Root.scratch();
    let bg = BuildGridExec::start(bgdir.path(), &ExecConfig::default());
    let specs = graph_project(
        &t.path().join("p"),
        &[("slow", "sleep 4\necho done > $out/done", &[])],
    );
    who.give(t.path());
    let url = bg.url();
    let mut w1 = Worker::start(who, t.path(), &url, "w1", &[]);
    w1.wait_for("session", Duration::from_secs(30));
    let client = remote_build(
        who,
        &t.path().join("home-client"),
        specs[0].to_str().unwrap(),
        &url,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    w1.wait_for("running action", Duration::from_secs(60));
    w1.signal("-TERM");
    let status = w1.child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", w1.log());
    assert!(w1.finished_keys().is_empty(), "{}", w1.log());
    // The lease went back to the queue at once (not after a keepalive
    // timeout): the next worker gets it.
    let w2 = Worker::start(who, t.path(), &url, "w2", &[]);
    let o = crate::fixtures::wait_within(client, Duration::from_secs(180));
    assert!(
        o.status.success(),
        "{}\n--- w1\n{}\n--- w2\n{}",
        both(&o),
        w1.log(),
        w2.log()
    );
    let v = json(&o);
    assert_eq!(
        w2.finished_keys(),
        vec![v["build_key"].as_str().unwrap().to_string()]
    );
}

fn remote_exec_failed_build_fails_with_the_workers_log(who: As) {
    let t = who.scratch();
    let bgdir = As::Root.scratch();
    let bg = BuildGridExec::start(bgdir.path(), &ExecConfig::default());
    let specs = graph_project(
        &t.path().join("p"),
        &[("bad", "echo the-marker-line\nexit 3", &[])],
    );
    who.give(t.path());
    let url = bg.url();
    let w = Worker::start(who, t.path(), &url, "w", &[]);
    w.wait_for("session", Duration::from_secs(30));
    let o = output_within(
        who.hermit_in(&t.path().join("home-client")).args([
            "build",
            specs[0].to_str().unwrap(),
            "--remote-exec",
            &url,
        ]),
        Duration::from_secs(180),
    );
    assert_eq!(o.status.code(), Some(1), "a failed build: {}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed on worker w"), "{err}");
    // The log came back with the result: its tail is printed here.
    assert!(err.contains("the-marker-line"), "{err}");
    assert!(
        !err.contains("building here"),
        "no local retry of a failed build: {err}"
    );
}

/// No BuildGrid: a remote that is not there means a local build, warned.
fn remote_exec_unreachable_service_builds_locally(who: As) {
    let t = who.scratch();
    let specs = graph_project(&t.path().join("p"), &[("x", "echo x > $out/x", &[])]);
    who.give(t.path());
    let port = crate::buildgrid_exec::free_port();
    let o = output_within(
        &mut remote_build(
            who,
            &t.path().join("home"),
            specs[0].to_str().unwrap(),
            &format!("grpc://127.0.0.1:{port}"),
        ),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is unavailable") && err.contains("building here"),
        "{err}"
    );
    let v = json(&o);
    assert_eq!(
        fs::read_to_string(PathBuf::from(v["output"].as_str().unwrap()).join("x")).unwrap(),
        "x\n"
    );
}

/// BuildGrid with execution behind TLS that requires client
/// certificates: a worker without one is refused with the fix named; a
/// worker and a client presenting theirs build remotely.
fn remote_exec_over_mutual_tls(who: As) {
    let t = who.scratch();
    let pki = t.path().join("pki");
    let (ca, cert, key) = crate::remote::test_ca(&pki);
    let (client, client_key) = crate::remote::client_cert(&pki, "client");
    let bgdir = As::Root.scratch();
    let bg = BuildGridExec::start(
        bgdir.path(),
        &ExecConfig {
            tls: Some(crate::remote::mtls_channel(&cert, &key, &ca)),
            ..ExecConfig::default()
        },
    );
    let url = bg.url();
    assert!(url.starts_with("grpcs://"), "{url}");
    let specs = graph_project(
        &t.path().join("p"),
        &[
            ("x", "echo over-mtls > $out/x", &[]),
            ("y", "echo y > $out/y", &[]),
        ],
    );
    who.give(t.path());

    // Without a certificate the worker cannot open a session.
    let mut bare = Worker::start_env(
        who,
        t.path(),
        &url,
        "bare",
        &[],
        &[("HERMIT_REMOTE_CA", &ca)],
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = bare.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a worker without a certificate kept going:\n{}",
            bare.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{}", bare.log());
    assert!(
        bare.log().contains("requires a client certificate"),
        "{}",
        bare.log()
    );

    let tls: [(&str, &Path); 3] = [
        ("HERMIT_REMOTE_CA", &ca),
        ("HERMIT_REMOTE_CERT", &client),
        ("HERMIT_REMOTE_KEY", &client_key),
    ];
    let w = Worker::start_env(who, t.path(), &url, "w1", &[], &tls);
    w.wait_for("session", Duration::from_secs(30));
    let o = output_within(
        remote_build(
            who,
            &t.path().join("home-client"),
            specs[0].to_str().unwrap(),
            &url,
        )
        .envs(tls.iter().copied()),
        Duration::from_secs(300),
    );
    assert!(
        o.status.success(),
        "{}\n--- worker\n{}\n--- buildgrid\n{}",
        both(&o),
        w.log(),
        bg.log()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(err.matches("built remotely by worker").count(), 1, "{err}");
    let v = json(&o);
    assert_eq!(
        fs::read_to_string(PathBuf::from(v["output"].as_str().unwrap()).join("x")).unwrap(),
        "over-mtls\n"
    );
    assert_eq!(
        w.finished_keys(),
        vec![v["build_key"].as_str().unwrap().to_string()],
        "{}",
        w.log()
    );
}

/// A service that connects but cannot execute (a cache-only BuildGrid: no
/// Execution service) fails every node: each falls back to a local build,
/// but no more than `-j` of them run here at once. Four independent
/// one-second builds at `-j 1` take four seconds, not one.
fn remote_exec_failing_service_falls_back_within_jobs(who: As) {
    let t = who.scratch();
    let bg = crate::remote::BuildGrid::start(&t.path().join("bg"));
    let leaves: Vec<String> = (0..4)
        .map(|i| format!("sleep 1\necho {i} > $out/n"))
        .collect();
    let specs = graph_project(
        &t.path().join("p"),
        &[
            ("l0", leaves[0].as_str(), &[]),
            ("l1", leaves[1].as_str(), &[]),
            ("l2", leaves[2].as_str(), &[]),
            ("l3", leaves[3].as_str(), &[]),
            (
                "all",
                "cat /inputs/a/n /inputs/b/n /inputs/c/n /inputs/d/n > $out/all",
                &[("a", "l0"), ("b", "l1"), ("c", "l2"), ("d", "l3")],
            ),
        ],
    );
    who.give(t.path());
    let start = Instant::now();
    let o = output_within(
        remote_build(
            who,
            &t.path().join("home"),
            specs[4].to_str().unwrap(),
            &bg.url(),
        )
        .args(["-j", "1"]),
        Duration::from_secs(300),
    );
    let took = start.elapsed();
    assert!(o.status.success(), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("building here").count(), 5, "{err}");
    let v = json(&o);
    assert_eq!(
        fs::read_to_string(PathBuf::from(v["output"].as_str().unwrap()).join("all")).unwrap(),
        "0\n1\n2\n3\n"
    );
    assert!(
        v["graph"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["remote_exec"].is_null()),
        "{v}"
    );
    assert!(
        took >= Duration::from_secs(4),
        "the four local fallbacks ran at once at -j 1 ({took:?}):\n{err}"
    );
}

both_users!(
    remote_exec_over_mutual_tls,
    remote_exec_graph_runs_on_two_workers_identical_to_local,
    remote_exec_worker_killed_mid_action_is_retried_elsewhere,
    remote_exec_worker_stopped_mid_action_hands_it_back,
    remote_exec_failed_build_fails_with_the_workers_log,
    remote_exec_unreachable_service_builds_locally,
    remote_exec_failing_service_falls_back_within_jobs,
);
