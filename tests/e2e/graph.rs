//! Graphs of specs: `[inputs]` mounted read-only at `/inputs/<name>`, built
//! inputs first, independent nodes at once, failures stopping only their
//! dependants, cycles refused before anything runs — over a busybox OCI
//! image in real namespaces, as root and as an ordinary user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Instant;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::image::busybox_layout;

/// A project of several specs over one busybox image: `nodes` are
/// `(dir name, script, inputs as (name, dir))`. Returns each spec's path.
/// `(dir name, script, inputs as (name, dir))`.
pub(crate) type NodeDef<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

pub(crate) fn graph_project(dir: &Path, nodes: &[NodeDef<'_>]) -> Vec<PathBuf> {
    let manifest = busybox_layout(&dir.join("image"));
    nodes
        .iter()
        .map(|(name, script, inputs)| write_node(dir, &manifest, name, script, inputs))
        .collect()
}

fn write_node(
    dir: &Path,
    manifest: &str,
    name: &str,
    script: &str,
    inputs: &[(&str, &str)],
) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir_all(&d).unwrap();
    let mut text = format!(
        "[package]\nname = \"{name}\"\nversion = \"1\"\n\n[toolchain]\noci = \"../image\"\ndigest = \"{manifest}\"\n\n[build]\nscript = \"\"\"\n{script}\n\"\"\"\n"
    );
    if !inputs.is_empty() {
        text.push_str("\n[inputs]\n");
        for (input, dep) in inputs {
            text.push_str(&format!("{input} = {{ spec = \"../{dep}/spec.toml\" }}\n"));
        }
    }
    let spec = d.join("spec.toml");
    fs::write(&spec, text).unwrap();
    spec
}

fn hermit(who: As, home: &Path, args: &[&str]) -> Output {
    run(who.hermit_in(home).args(args))
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(o)))
}

/// `name → (cached, build_key, output_digest)` from `--json`'s graph.
fn nodes(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    v["graph"]
        .as_array()
        .unwrap_or_else(|| panic!("no graph in {v}"))
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_string(), n.clone()))
        .collect()
}

fn node<'a>(v: &'a [(String, serde_json::Value)], name: &str) -> &'a serde_json::Value {
    &v.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no node {name}"))
        .1
}

/// Four specs, three deep, with a fan-in: `app` uses `mid` and `leaf2`,
/// `mid` uses `leaf1`.
fn diamond(dir: &Path) -> Vec<PathBuf> {
    graph_project(
        dir,
        &[
            ("leaf1", "echo one > $out/one", &[]),
            ("leaf2", "echo two > $out/two", &[]),
            (
                "mid",
                "cat /inputs/lib/one > $out/mid\necho mid >> $out/mid\n! touch /inputs/lib/x 2>/dev/null",
                &[("lib", "leaf1")],
            ),
            (
                "app",
                "cat /inputs/m/mid /inputs/t/two > $out/app\nls /inputs > $out/inputs",
                &[("m", "mid"), ("t", "leaf2")],
            ),
        ],
    )
}

fn graph_builds_inputs_first_and_mounts_them_read_only(who: As) {
    let t = who.scratch();
    let specs = diamond(t.path());
    who.give(t.path());
    let home = t.path().join("home");
    let app = specs[3].to_str().unwrap();
    let o = hermit(who, &home, &["build", app, "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    let v = json(&o);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("app")).unwrap(),
        "one\nmid\ntwo\n",
        "the app did not see its inputs' outputs"
    );
    assert_eq!(fs::read_to_string(out.join("inputs")).unwrap(), "m\nt\n");
    // Build order: every input before its dependant; the top last.
    let ns = nodes(&v);
    let order: Vec<&str> = ns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order.len(), 4, "{order:?}");
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(pos("leaf1") < pos("mid") && pos("mid") < pos("app") && pos("leaf2") < pos("app"));
    assert_eq!(order[3], "app");
    for (_, n) in &ns {
        assert_eq!(n["cached"], false, "{n}");
        assert!(n["build_key"].as_str().unwrap().starts_with("sha256:"));
    }
    assert_eq!(node(&ns, "app")["build_key"], v["build_key"]);
    // The record names each input by output digest and build key.
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    let inputs = rec["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[0]["name"], "m");
    assert_eq!(inputs[0]["spec"], "../mid/spec.toml");
    assert_eq!(inputs[0]["output"], node(&ns, "mid")["output_digest"]);
    assert_eq!(inputs[0]["build_key"], node(&ns, "mid")["build_key"]);
    assert_eq!(inputs[1]["output"], node(&ns, "leaf2")["output_digest"]);

    // Again: every node a cache hit.
    let v2 = json(&hermit(who, &home, &["build", app, "--json"]));
    assert_eq!(v2["cached"], true);
    for (name, n) in nodes(&v2) {
        assert_eq!(n["cached"], true, "{name} was not a cache hit");
    }
    // Its record rebuilds identically, inputs restored from the store.
    let o = hermit(
        who,
        &home,
        &["rebuild", v["record"].as_str().unwrap(), "--json"],
    );
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(json(&o)["identical"], true);
}

fn changing_a_leaf_rebuilds_it_and_its_dependants_only(who: As) {
    let t = who.scratch();
    let specs = diamond(t.path());
    who.give(t.path());
    let home = t.path().join("home");
    let app = specs[3].to_str().unwrap();
    let v1 = json(&hermit(who, &home, &["build", app, "--json"]));
    let text = fs::read_to_string(&specs[1]).unwrap();
    fs::write(&specs[1], text.replace("echo two", "echo TWO")).unwrap();
    let o = hermit(who, &home, &["build", app, "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    let v2 = json(&o);
    let (a, b) = (nodes(&v1), nodes(&v2));
    for (name, cached) in [
        ("leaf1", true),
        ("mid", true),
        ("leaf2", false),
        ("app", false),
    ] {
        assert_eq!(node(&b, name)["cached"], cached, "{name}: {}", v2["graph"]);
        assert_eq!(
            node(&a, name)["build_key"] == node(&b, name)["build_key"],
            cached,
            "{name}'s build key"
        );
    }
    let out = PathBuf::from(v2["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("app")).unwrap(),
        "one\nmid\nTWO\n"
    );
}

fn independent_nodes_build_at_once(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            ("a", "sleep 1\necho a > $out/a", &[]),
            ("b", "sleep 1\necho b > $out/b", &[]),
        ],
    );
    who.give(t.path());
    let home = t.path().join("home");
    // Warm: the image's root filesystem is unpacked once, outside the timing.
    let warm = write_node(t.path(), &image_digest(&specs[0]), "warm", "true", &[]);
    who.give(t.path());
    let o = hermit(who, &home, &["build", warm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", both(&o));
    let start = Instant::now();
    let o = hermit(
        who,
        &home,
        &[
            "build",
            specs[0].to_str().unwrap(),
            specs[1].to_str().unwrap(),
            "-j",
            "2",
            "--json",
        ],
    );
    let took = start.elapsed();
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(json(&o)["builds"].as_array().unwrap().len(), 2);
    // One after the other they would take at least 2 s.
    assert!(
        took.as_secs_f64() < 1.8,
        "two 1 s builds at -j 2 took {took:?}"
    );
}

fn image_digest(spec: &Path) -> String {
    let text = fs::read_to_string(spec).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("digest = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

fn a_cycle_is_refused_before_anything_runs(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            ("a", "true", &[("b", "b")]),
            ("b", "true", &[("c", "c")]),
            ("c", "true", &[("a", "a")]),
        ],
    );
    who.give(t.path());
    let home = t.path().join("home");
    let o = hermit(who, &home, &["build", specs[0].to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("form a cycle"), "{err}");
    // The chain, spec by spec, back to the first.
    let chain: Vec<&str> = err.lines().filter(|l| l.contains("spec.toml")).collect();
    assert_eq!(chain.len(), 4, "{err}");
    assert!(
        chain[0].ends_with("a/spec.toml") && chain[3].ends_with("a/spec.toml"),
        "{err}"
    );
    assert!(
        chain[1].ends_with("b/spec.toml") && chain[2].ends_with("c/spec.toml"),
        "{err}"
    );
    // Nothing ran: no output, no lock written.
    assert!(!home.join("v1/outputs").exists());
    assert!(!t.path().join("a/hermit.lock").exists());
    // `hermit graph` refuses it too.
    let o = hermit(who, &home, &["graph", specs[1].to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
}

fn a_missing_input_spec_is_named_with_its_line(who: As) {
    let t = who.scratch();
    let specs = graph_project(t.path(), &[("a", "true", &[("gone", "nowhere")])]);
    who.give(t.path());
    let home = t.path().join("home");
    let o = hermit(who, &home, &["build", specs[0].to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("input \"gone\"")
            && err.contains("nowhere/spec.toml does not exist")
            && err.contains("spec.toml:15:"),
        "{err}"
    );
}

fn a_failing_node_skips_its_dependants_and_not_its_siblings(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            ("leaf", "echo leaf > $out/leaf", &[]),
            (
                "broken",
                "echo about to fail\necho the reason >&2\nexit 3",
                &[("l", "leaf")],
            ),
            ("top", "cat /inputs/b/x > $out/top", &[("b", "broken")]),
            ("sibling", "sleep 1\necho fine > $out/s", &[]),
        ],
    );
    who.give(t.path());
    let home = t.path().join("home");
    let all: Vec<&str> = [
        "build",
        specs[2].to_str().unwrap(),
        specs[3].to_str().unwrap(),
        "--json",
    ]
    .to_vec();
    let o = hermit(who, &home, &all);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let v = json(&o);
    assert!(v["error"].as_str().unwrap().contains("broken"), "{v}");
    assert_eq!(v["exit_code"], 1);
    let ns = nodes(&v);
    assert_eq!(node(&ns, "leaf")["status"], "built");
    assert_eq!(node(&ns, "sibling")["status"], "built");
    assert_eq!(node(&ns, "broken")["status"], "failed");
    assert_eq!(node(&ns, "top")["status"], "skipped");
    assert!(node(&ns, "top")["because"]
        .as_str()
        .unwrap()
        .ends_with("broken/spec.toml"));
    // Without --json: a summary, and the tail of the failed build's log.
    let text: Vec<&str> = all[..3].to_vec();
    let o = hermit(who, &home, &text);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        out.contains("cached 2: leaf, sibling")
            && out.contains("failed 1: broken")
            && out.contains("skipped 1: top (because broken failed)"),
        "{}",
        both(&o)
    );
    assert!(
        err.contains("the reason") && err.contains("1 of 4 builds failed"),
        "{}",
        both(&o)
    );
    // --fail-fast: nothing new starts after the failure.
    let o = hermit(
        who,
        &home,
        &[
            "build",
            specs[2].to_str().unwrap(),
            specs[3].to_str().unwrap(),
            "--fail-fast",
            "-j",
            "1",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
}

fn two_hermits_build_one_graph_once(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            ("a", "sleep 1\necho a > $out/a", &[]),
            ("b", "sleep 1\ncat /inputs/a/a > $out/b", &[("a", "a")]),
        ],
    );
    who.give(t.path());
    let home = t.path().join("home");
    // The lock and the image first, so both start from the same state.
    let o = hermit(who, &home, &["graph", specs[1].to_str().unwrap()]);
    assert!(o.status.success(), "{}", both(&o));
    let start = |who: As| {
        who.hermit_in(&home)
            .args(["build", specs[1].to_str().unwrap(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (x, y) = (start(who), start(who));
    let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
    assert!(x.status.success(), "{}", both(&x));
    assert!(y.status.success(), "{}", both(&y));
    let (vx, vy) = (nodes(&json(&x)), nodes(&json(&y)));
    for name in ["a", "b"] {
        let built = [node(&vx, name), node(&vy, name)]
            .iter()
            .filter(|n| n["cached"] == false)
            .count();
        assert_eq!(
            built,
            1,
            "{name} was built {built} times:\n{}\n{}",
            both(&x),
            both(&y)
        );
        assert_eq!(
            node(&vx, name)["output_digest"],
            node(&vy, name)["output_digest"]
        );
    }
}

fn hermit_graph_prints_the_closure(who: As) {
    let t = who.scratch();
    let specs = diamond(t.path());
    who.give(t.path());
    let home = t.path().join("home");
    let app = specs[3].to_str().unwrap();
    let o = hermit(who, &home, &["graph", app, "--dot"]);
    assert!(o.status.success(), "{}", both(&o));
    let dot = String::from_utf8_lossy(&o.stdout);
    assert!(dot.starts_with("digraph hermit {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 3, "{dot}");
    assert!(dot.contains("[label=\"lib\"]"), "{dot}");
    let o = hermit(who, &home, &["graph", app, "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    let v = json(&o);
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4);
    assert_eq!(names[3], "app");
    // Nothing was built or written.
    assert!(!home.join("v1/outputs").exists());
}

fn deep_rebuild_of_a_graph_offline_from_a_mirror(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            ("leaf1", "echo one > $out/one", &[]),
            ("noisy", "head -c 16 /dev/urandom > $out/random", &[]),
            (
                "mid",
                "cat /inputs/lib/one > $out/mid\necho mid >> $out/mid",
                &[("lib", "leaf1")],
            ),
            (
                "app",
                "cat /inputs/m/mid > $out/app\nwc -c < /inputs/n/random >> $out/app",
                &[("m", "mid"), ("n", "noisy")],
            ),
        ],
    );
    who.give(t.path());
    let home = t.path().join("home");
    let app = specs[3].to_str().unwrap();
    let v = json(&hermit(who, &home, &["build", app, "--json"]));
    let record = v["record"].as_str().unwrap().to_string();
    let mirror = t.path().join("mirror");
    let o = hermit(
        who,
        &home,
        &["mirror", &record, "--to", mirror.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", both(&o));
    for n in nodes(&v) {
        let key = n.1["build_key"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        assert!(
            mirror.join("records").join(format!("{key}.json")).is_file(),
            "the mirror lacks the record of {}",
            n.0
        );
    }
    // The spec's closure too: every node's toolchain image.
    let specs_mirror = t.path().join("specs-mirror");
    let o = hermit(
        who,
        &home,
        &["mirror", app, "--to", specs_mirror.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", both(&o));

    // An empty store, no network: the record's inputs come from the mirror.
    let empty = t.path().join("empty");
    let m = mirror.to_str().unwrap();
    let o = hermit(
        who,
        &empty,
        &["rebuild", &record, "--offline", "--mirror", m, "--json"],
    );
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(json(&o)["identical"], true);

    // --deep: every input rebuilt from its own record; the noisy one differs.
    let deeper = t.path().join("deeper");
    let o = hermit(
        who,
        &deeper,
        &[
            "rebuild",
            "--deep",
            &record,
            "--offline",
            "--mirror",
            m,
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let d = json(&o);
    let ns = d["nodes"].as_array().unwrap();
    assert_eq!(ns.len(), 4, "{d}");
    assert_eq!(ns[3]["name"], "app", "the record itself comes last: {d}");
    for n in ns {
        let noisy = n["name"] == "noisy";
        assert_eq!(n["identical"], !noisy, "{n}");
    }
    // The text names the node that differs.
    let o = hermit(
        who,
        &deeper,
        &["rebuild", "--deep", &record, "--offline", "--mirror", m],
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("differs: noisy 1") && out.contains("identical: app 1"),
        "{out}"
    );

    // Building the spec offline in a third empty store from the specs' mirror.
    let third = t.path().join("third");
    let o = hermit(
        who,
        &third,
        &[
            "build",
            app,
            "--offline",
            "--mirror",
            specs_mirror.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", both(&o));
}

fn a_toolchain_built_by_hermit_roots_its_dependants(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            (
                "tc",
                "mkdir -p $out/bin $out/etc\ncp /bin/busybox $out/bin/\nfor a in sh cat echo ls mkdir wc; do ln -s busybox $out/bin/$a; done\necho made-by-hermit > $out/etc/toolchain",
                &[],
            ),
            ("user", "cat /etc/toolchain > $out/which\nls /bin > $out/bins", &[("tc", "tc")]),
        ],
    );
    // The dependant's toolchain is its input's output.
    let text = fs::read_to_string(&specs[1]).unwrap();
    let text = text.replace(
        &format!(
            "oci = \"../image\"\ndigest = \"{}\"",
            image_digest(&specs[1])
        ),
        "input = \"tc\"",
    );
    fs::write(&specs[1], text).unwrap();
    who.give(t.path());
    let home = t.path().join("home");
    let user = specs[1].to_str().unwrap();
    let o = hermit(who, &home, &["build", user, "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    let v = json(&o);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("which")).unwrap(),
        "made-by-hermit\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("bins")).unwrap(),
        "busybox\ncat\necho\nls\nmkdir\nsh\nwc\n"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(rec["image"]["reference"], "input:tc");
    assert_eq!(rec["lock"], serde_json::Value::Null);
    assert_eq!(
        rec["image"]["layers"][0]["digest"],
        rec["inputs"][0]["output"]
    );
    assert!(
        !t.path().join("user/hermit.lock").exists(),
        "no lock for an input toolchain"
    );
    // `hermit lock` has nothing to pin.
    let o = hermit(who, &home, &["lock", user]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("nothing to lock"),
        "{}",
        both(&o)
    );

    // From a mirror, in an empty store, offline: the image is made again
    // from the restored output and is the recorded one.
    let record = v["record"].as_str().unwrap().to_string();
    let mirror = t.path().join("mirror");
    let o = hermit(
        who,
        &home,
        &["mirror", &record, "--to", mirror.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", both(&o));
    let empty = t.path().join("empty");
    let m = mirror.to_str().unwrap();
    let o = hermit(
        who,
        &empty,
        &[
            "rebuild",
            "--deep",
            &record,
            "--offline",
            "--mirror",
            m,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(json(&o)["identical"], true);

    // A record whose image is not the one made from the input is refused.
    let edited = t.path().join("edited.json");
    let mut r = rec.clone();
    r["image"]["layers"][0]["size"] = serde_json::json!(12345);
    fs::write(&edited, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    who.give(&edited);
    let o = hermit(who, &home, &["rebuild", edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
}

fn a_toolchain_input_must_be_an_input(who: As) {
    let t = who.scratch();
    let specs = graph_project(t.path(), &[("user", "true", &[])]);
    let text = fs::read_to_string(&specs[0]).unwrap();
    let text = text.replace(
        &format!(
            "oci = \"../image\"\ndigest = \"{}\"",
            image_digest(&specs[0])
        ),
        "input = \"tc\"",
    );
    fs::write(&specs[0], text).unwrap();
    who.give(t.path());
    let o = hermit(
        who,
        &t.path().join("home"),
        &["build", specs[0].to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[inputs] has no \"tc\"") && err.contains("spec.toml:6:"),
        "{err}"
    );
}

/// The host pids of processes whose parent is `parent` and whose command
/// line is hermit's sandbox helper (or its zygote).
fn sandbox_children(parent: u32) -> Vec<u32> {
    crate::fixtures::pids_with_cmdline("hermit-sandbox")
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Several sandboxes of a graph are started by one zygote that clones each
/// helper as hermit's own child: killing hermit mid-graph still takes every
/// build, helper and the zygote with it.
fn killing_hermit_mid_graph_leaves_nothing_running(who: As) {
    let t = who.scratch();
    let tag = format!(
        "37{}",
        std::process::id() % 100 + if who == As::Root { 0 } else { 100 }
    );
    let a = format!("sleep 9{tag}1");
    let b = format!("sleep 9{tag}2");
    let specs = graph_project(t.path(), &[("a", &a, &[]), ("b", &b, &[])]);
    who.give(t.path());
    let home = t.path().join("home");
    let mut child = who
        .hermit_in(&home)
        .args([
            "build",
            specs[0].to_str().unwrap(),
            specs[1].to_str().unwrap(),
            "-j",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hermit_pid = child.id();
    let started = Instant::now();
    let needles = [format!("sleep 9{tag}1"), format!("sleep 9{tag}2")];
    let running = || {
        needles
            .iter()
            .all(|n| !crate::fixtures::pids_with_cmdline(n).is_empty())
    };
    while !running() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the two builds never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Both helpers and the zygote are hermit's children.
    let helpers = sandbox_children(hermit_pid);
    assert!(
        helpers.len() >= 3,
        "helpers and zygote of {hermit_pid}: {helpers:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    for n in &needles {
        crate::fixtures::assert_no_survivors(n);
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while helpers
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A dead process's pid may be reused, but not by a hermit-sandbox
    // within two seconds of this test.
    let left: Vec<_> = helpers
        .iter()
        .filter(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("hermit-sandbox"))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        left.is_empty(),
        "helpers or the zygote survived hermit: {left:?}"
    );
}

/// A node's time limit holds in a graph (the helper, started by the
/// zygote, is still hermit's to stop), and fails only that node.
fn a_graph_node_that_times_out_fails_alone(who: As) {
    let t = who.scratch();
    let specs = graph_project(
        t.path(),
        &[
            ("slow", "sleep 600", &[]),
            ("quick", "echo q > $out/q", &[]),
        ],
    );
    let mut text = fs::read_to_string(&specs[0]).unwrap();
    text.push_str("timeout = 1\n");
    fs::write(&specs[0], text).unwrap();
    who.give(t.path());
    let start = Instant::now();
    let o = hermit(
        who,
        &t.path().join("home"),
        &[
            "build",
            specs[0].to_str().unwrap(),
            specs[1].to_str().unwrap(),
            "-j",
            "2",
            "--json",
        ],
    );
    assert!(!o.status.success(), "{}", both(&o));
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
    let v = json(&o);
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("slow"), "{v}");
    let n = nodes(&v);
    assert_eq!(node(&n, "slow")["status"], "failed", "{v}");
    assert_eq!(node(&n, "quick")["status"], "built", "{v}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("time limit") || err.contains("timed out"),
        "{err}"
    );
}

both_users!(
    a_toolchain_built_by_hermit_roots_its_dependants,
    a_toolchain_input_must_be_an_input,
    deep_rebuild_of_a_graph_offline_from_a_mirror,
    graph_builds_inputs_first_and_mounts_them_read_only,
    changing_a_leaf_rebuilds_it_and_its_dependants_only,
    independent_nodes_build_at_once,
    a_cycle_is_refused_before_anything_runs,
    a_missing_input_spec_is_named_with_its_line,
    a_failing_node_skips_its_dependants_and_not_its_siblings,
    two_hermits_build_one_graph_once,
    hermit_graph_prints_the_closure,
    killing_hermit_mid_graph_leaves_nothing_running,
    a_graph_node_that_times_out_fails_alone,
);
