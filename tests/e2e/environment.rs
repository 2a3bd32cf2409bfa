//! One environment from the profile to the sandbox: what a command or a
//! build observes from inside (`df` of /tmp and /dev/shm, `ulimit`, the
//! domain name, its descriptors) is exactly what the profile and the
//! record's environment say; and the GNU make jobserver of profile v3 keeps
//! `make` in one build, and in builds running at once, within `-j N`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hermit_profiles::Profile;

use crate::build::project;
use crate::common::{both, run};
use crate::fixtures::{both_users, fixture, ok_stdout, output_within, As};

both_users!(
    sandbox_shows_each_profile,
    build_observes_its_record,
    records_of_every_profile_rebuild_in_their_environment,
    make_jobs_stay_within_the_budget,
);

/// What the command prints for [`observe`], in order.
const OBSERVE: &str = "cat /proc/sys/kernel/domainname; cat /proc/sys/kernel/hostname; \
    busybox df -k /tmp /dev/shm | busybox awk 'NR > 1 { print $2 }'; \
    ulimit -n; ulimit -c; ulimit -u; umask; id -u; id -g";

/// The values [`OBSERVE`] should print, from the profile (and the record's
/// limits, which a spec may lower), given the caller's hard limits (the
/// sandbox caps its limits there).
fn expected(p: &Profile, tmp_mib: u64, max_pids: u64) -> String {
    use nix::sys::resource::{getrlimit, Resource};
    let hard = |r| getrlimit(r).unwrap().1;
    let nofile = p.limits.open_files().min(hard(Resource::RLIMIT_NOFILE));
    let core = if p.limits.cores() { "unlimited" } else { "0" };
    // The sandbox's init and helper count against the build's RLIMIT_NPROC.
    let nproc = (max_pids + 2).min(hard(Resource::RLIMIT_NPROC));
    format!(
        "{}\n{}\n{}\n{}\n{nofile}\n{core}\n{nproc}\n{:04o}\n{}\n{}\n",
        p.system.domainname,
        p.system.hostname,
        tmp_mib * 1024,
        p.limits.shm_mib() * 1024,
        p.system.umask,
        p.user.uid,
        p.user.gid,
    )
}

/// `hermit sandbox --profile vN` for every profile: the limits and names
/// the command sees are that profile's (v1's unstated ones as v1 builds
/// always had them).
fn sandbox_shows_each_profile(who: As) {
    for name in hermit_profiles::names() {
        let p = Profile::get(name).unwrap();
        let out = ok_stdout(&who.sh(["--profile", name], OBSERVE));
        assert_eq!(
            out,
            expected(&p, p.limits.tmp_size_mib, p.limits.max_pids),
            "profile {name}"
        );
    }
}

/// A real build under the default profile: what it observes is what its
/// record's environment and its profile say, including the jobserver's
/// descriptors and MAKEFLAGS, and nothing else open.
fn build_observes_its_record(who: As) {
    let t = who.scratch();
    let script = format!(
        "{{ {OBSERVE}; }} > $out/observed\n\
         env > $out/env\n\
         for fd in 3 4 5 6 7 8 9; do if [ -e /proc/$$/fd/$fd ]; then echo $fd; fi; done > $out/fds\n\
         ls -l /proc/$$/fd/3 /proc/$$/fd/4 | busybox grep -c pipe > $out/pipes"
    );
    let spec = project(t.path(), &script, "");
    who.give(t.path());
    let o = run(who
        .hermit_in(&t.path().join("home"))
        .args(["build", "--json", "-j", "3"])
        .arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let out = PathBuf::from(v["output"].as_str().unwrap());
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    let name = rec["profile"]["name"].as_str().unwrap();
    assert_eq!(name, hermit_profiles::DEFAULT);
    let p = Profile::get(name).unwrap();
    let env = &rec["environment"];
    let limits = &env["limits"];
    let observed = fs::read_to_string(out.join("observed")).unwrap();
    assert_eq!(
        observed,
        expected(
            &p,
            limits["tmp_size_mib"].as_u64().unwrap(),
            limits["max_pids"].as_u64().unwrap()
        )
    );
    assert_eq!(env["domainname"], p.system.domainname);
    // The environment is exactly the record's (sh adds PWD, SHLVL and `_`).
    let mut seen: std::collections::BTreeMap<String, String> = fs::read_to_string(out.join("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for k in ["PWD", "SHLVL", "_"] {
        seen.remove(k);
    }
    let want: std::collections::BTreeMap<String, String> =
        serde_json::from_value(env["env"].clone()).unwrap();
    assert_eq!(seen, want);
    assert_eq!(want["MAKEFLAGS"], " -j --jobserver-auth=3,4");
    assert_eq!(want["HERMIT_JOBS"], "3");
    // Descriptors 3 and 4 are the jobserver's pipe; 5–9 are closed.
    assert_eq!(fs::read_to_string(out.join("fds")).unwrap(), "3\n4\n");
    assert_eq!(fs::read_to_string(out.join("pipes")).unwrap(), "2\n");
}

/// A record names its profile; `hermit rebuild` sets up the sandbox from
/// that profile alone. A build that writes what it observes (the values
/// every profile shares: sizes, limits, names) is recorded under the
/// default profile, then its record is restated under every older profile
/// (the environment that profile derives, the build key recomputed) and
/// rebuilt: each rebuild must observe the same, bit for bit — so v1's
/// unstated values (its `/dev/shm`, open files, core dumps) are what v2 on
/// state, and v1 records rebuild as they were made.
fn records_of_every_profile_rebuild_in_their_environment(who: As) {
    let t = who.scratch();
    let spec = project(t.path(), &format!("{{ {OBSERVE}; }} > $out/observed"), "");
    who.give(t.path());
    let home = t.path().join("home");
    let o = run(who.hermit_in(&home).args(["build", "--json"]).arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(record["profile"]["name"], hermit_profiles::DEFAULT);
    assert_eq!(
        crate::record_trust::build_key(&record),
        record["build_key"].as_str().unwrap()
    );
    for name in hermit_profiles::names() {
        let p = Profile::get(name).unwrap();
        let mut r = record.clone();
        r["profile"] =
            serde_json::json!({"name": name, "digest": hermit_profiles::digest(name).unwrap()});
        let env = &mut r["environment"];
        let vars = env["env"].as_object_mut().unwrap();
        if !p.env.fixed.contains_key("MAKEFLAGS") {
            vars.remove("MAKEFLAGS");
        }
        let limits = env["limits"].as_object_mut().unwrap();
        for (k, stated) in [
            ("memory_mib", p.limits.memory_mib),
            ("disk_mib", p.limits.disk_mib),
            ("log_mib", p.limits.log_mib),
        ] {
            match stated {
                Some(n) => limits.insert(k.into(), n.into()),
                None => limits.remove(k),
            };
        }
        r["build_key"] = crate::record_trust::build_key(&r).into();
        let path = t.path().join(format!("record-{name}.json"));
        fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
        who.give(&path);
        let o = run(who.hermit_in(&home).arg("rebuild").arg(&path));
        assert!(o.status.success(), "{name}: {}", both(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with("identical"),
            "{name}: {}",
            both(&o)
        );
    }
}

/// A Makefile of `n` independent targets, each noting when it starts and
/// ends (in `$out/log`) around a short sleep.
const MAKEFILE: &str = "T := $(addprefix t,1 2 3 4 5 6 7 8)\n\
all: $(T)\n\
$(T):\n\
\t@echo \"start $$(date +%s.%N)\" >> $(out)/log; sleep 0.25; echo \"end $$(date +%s.%N)\" >> $(out)/log\n";

/// A spec building [`MAKEFILE`] with a plain `make` in a Debian toolchain
/// with make. `name` makes each spec's key its own.
fn make_project(dir: &Path, name: &str) -> PathBuf {
    fs::create_dir_all(dir.join("mk")).unwrap();
    fs::write(dir.join("mk/Makefile"), MAKEFILE).unwrap();
    let spec = dir.join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"[package]
name = "{name}"
version = "1"

[toolchain]
debian = {{ suite = "bookworm", include = ["make"] }}

[[source]]
name = "mk"
path = "mk"

[build]
script = """
cp /sources/mk/Makefile .
make
"""
"#
        ),
    )
    .unwrap();
    spec
}

/// The most jobs that ran at once, over every log (the intervals merged).
fn most_at_once(logs: &[PathBuf]) -> usize {
    let mut events = Vec::new();
    for log in logs {
        let text = fs::read_to_string(log).unwrap();
        for line in text.lines() {
            let (what, when) = line.split_once(' ').unwrap();
            let t: f64 = when.parse().unwrap();
            // At one instant an end comes before a start.
            events.push((t, if what == "start" { 1i64 } else { -1 }));
        }
        assert_eq!(text.lines().count(), 16, "{}: {text}", log.display());
    }
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Whether the jobs of two logs ran at some common instant.
fn overlapped(a: &Path, b: &Path) -> bool {
    let span = |log: &Path| {
        let text = fs::read_to_string(log).unwrap();
        let times: Vec<f64> = text
            .lines()
            .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
            .collect();
        let lo = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = times.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let ((a0, a1), (b0, b1)) = (span(a), span(b));
    a0 < b1 && b0 < a1
}

/// One build of a Debian toolchain with make, bootstrapped once for the
/// caller: returns the store home and the lock to copy beside other specs.
fn bootstrapped(who: As, t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    crate::fixtures::ensure_subids();
    let home = t.join("home");
    let first = t.join("first");
    let spec = make_project(&first, "first");
    who.give(t);
    let o = run(who
        .hermit_in(&home)
        .args(["build", "--json", "-j", "2"])
        .arg(&spec));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let log = PathBuf::from(v["output"].as_str().unwrap()).join("log");
    (home, first.join("hermit.lock"), log)
}

/// A command run as `who` with the environment `hermit_in(home)` has.
fn as_who(who: As, home: &Path, prog: &str) -> Command {
    let h = who.hermit_in(home);
    let mut c = match who {
        As::Root => Command::new(prog),
        As::User => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", who.uid()))
                .arg(format!("--regid={}", who.gid()))
                .arg("--clear-groups")
                .arg("--")
                .arg(prog);
            c
        }
    };
    c.env_clear();
    for (k, v) in h.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

/// The jobserver, with a Debian toolchain's make 4.3 (one bootstrap per
/// caller, for both parts):
/// - `hermit build -j 2`: a plain `make` of eight parallel jobs inside runs
///   two at once (the jobserver works) and never more (it is the budget);
/// - hermit run by make (`+hermit build …` rules under `make -j2`) joins
///   make's jobserver: two builds at once, each running such a `make`,
///   never run more than two jobs in all. Each build's make would run two on
///   its own, so four at once would mean the jobserver was not shared.
///   Rules without `+` get no jobserver from make: hermit says so and runs
///   with its own.
fn make_jobs_stay_within_the_budget(who: As) {
    let t = who.scratch();
    let (home, lock, log) = bootstrapped(who, t.path());
    assert_eq!(most_at_once(&[log]), 2);
    let mut specs = Vec::new();
    for name in ["a", "b"] {
        let dir = t.path().join(name);
        specs.push(make_project(&dir, name));
        fs::copy(&lock, dir.join("hermit.lock")).unwrap();
    }
    let hermit = fixture().hermit.display().to_string();
    let makefile = t.path().join("Makefile");
    let rule = |plus: &str, spec: &Path| {
        format!(
            "\t{plus}{hermit} build --json --offline {} > {}.json\n",
            spec.display(),
            spec.display()
        )
    };
    fs::write(
        &makefile,
        format!(
            ".PHONY: all a b c\nall: a b\na:\n{}b:\n{}c:\n{}",
            rule("+", &specs[0]),
            rule("+", &specs[1]),
            rule("", &specs[0]),
        ),
    )
    .unwrap();
    who.give(t.path());
    let o = output_within(
        as_who(who, &home, "make")
            .arg("-j2")
            .arg("-f")
            .arg(&makefile),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", both(&o));
    let logs: Vec<PathBuf> = specs
        .iter()
        .map(|s| {
            let json = fs::read_to_string(format!("{}.json", s.display())).unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["cached"], false);
            PathBuf::from(v["output"].as_str().unwrap()).join("log")
        })
        .collect();
    // Two at once: the builds overlapped; no more: they shared the budget.
    assert_eq!(most_at_once(&logs), 2);

    // One hermit building both as a graph of two independent specs: they
    // run at once, on one jobserver of 2 slots.
    let graph: Vec<PathBuf> = ["ga", "gb"]
        .iter()
        .map(|name| {
            let dir = t.path().join(name);
            let spec = make_project(&dir, name);
            fs::copy(&lock, dir.join("hermit.lock")).unwrap();
            spec
        })
        .collect();
    who.give(t.path());
    let o = run(who
        .hermit_in(&home)
        .args(["build", "--json", "--offline", "-j", "2"])
        .args(&graph));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let logs: Vec<PathBuf> = v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| PathBuf::from(b["output"].as_str().unwrap()).join("log"))
        .collect();
    assert_eq!(logs.len(), 2);
    assert_eq!(
        most_at_once(&logs),
        2,
        "the two builds' makes exceeded -j 2 together"
    );
    assert!(
        overlapped(&logs[0], &logs[1]),
        "the two builds did not run at once"
    );

    // A rule without `+`: make closes its jobserver's descriptors for it.
    fs::remove_file(format!("{}.json", specs[0].display())).unwrap();
    let o = output_within(
        as_who(who, &home, "make")
            .arg("-j2")
            .arg("-f")
            .arg(&makefile)
            .arg("c"),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("jobserver in MAKEFLAGS cannot be used") && err.contains('+'),
        "{err}"
    );
}
