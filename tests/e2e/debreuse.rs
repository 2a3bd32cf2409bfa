//! A spec without a lock whose Debian toolchain was already bootstrapped
//! from the same state of the archive reuses that image: a copy of
//! examples/hello without its hermit.lock, in the store that built the
//! original, is "cached, nothing to build" in seconds and gets the same
//! lock. An index entry that does not check out (here: naming another
//! image) is a miss — hermit bootstraps again, gets the same result, and
//! indexes it afresh.

use std::fs;
use std::path::Path;
use std::time::Instant;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};
use crate::hello::{built, copy_hello};

/// Builds the spec in `home`: (stdout, stderr, seconds).
fn build(who: As, home: &Path, spec: &Path) -> (String, String, f64) {
    let start = Instant::now();
    let o = run(who.hermit_in(home).arg("build").arg(spec));
    let secs = start.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", both(&o));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        secs,
    )
}

fn a_copied_spec_without_its_lock_reuses_the_bootstrap(who: As) {
    let hello = built(who);
    let lock = fs::read_to_string(hello.spec.with_file_name("hermit.lock")).unwrap();
    let digest = hello.json["output_digest"].as_str().unwrap().to_string();
    let entries = || -> Vec<std::path::PathBuf> {
        fs::read_dir(hello.home.join("v1/debian-reuse"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let [entry] = entries()
        .try_into()
        .unwrap_or_else(|e: Vec<_>| panic!("the bootstrap left {} index entries: {e:?}", e.len()));
    let t = who.scratch();
    let copy = copy_hello(&t.path().join("copy"));
    let again = copy_hello(&t.path().join("again"));
    let after = copy_hello(&t.path().join("after"));
    who.give(t.path());

    // Reused: no bootstrap, a cache hit, the same lock.
    let (out, err, secs) = build(who, &hello.home, &copy);
    eprintln!(
        "hermit build of examples/hello: {:.1} s with its bootstrap; a copy without its lock: {secs:.1} s",
        hello.secs
    );
    assert!(
        out.contains("cached (build key") && out.contains("nothing to build"),
        "{out}\n{err}"
    );
    assert!(out.contains(&digest), "{out}");
    assert!(
        err.contains("reusing the debian bookworm image") && !err.contains("bootstrapping"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(copy.with_file_name("hermit.lock")).unwrap(),
        lock
    );
    assert!(secs < 60.0 && secs < hello.secs, "{secs:.1} s");

    // An entry naming another image is not used: a miss, a bootstrap, the
    // same output, and the entry written again.
    let text = fs::read_to_string(&entry).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let manifest = v["manifest"].as_str().unwrap();
    let forged = text.replace(manifest, &format!("sha256:{}", "1".repeat(64)));
    assert_ne!(forged, text);
    fs::write(&entry, &forged).unwrap();
    let (out, err, _) = build(who, &hello.home, &again);
    assert!(
        err.contains("not reusing the earlier bootstrap") && err.contains("bootstrapping debian"),
        "{err}"
    );
    assert!(out.contains(&digest), "{out}");
    assert_eq!(
        fs::read_to_string(again.with_file_name("hermit.lock")).unwrap(),
        lock
    );
    assert_eq!(fs::read_to_string(&entry).unwrap(), text);
    let (_, err, _) = build(who, &hello.home, &after);
    assert!(err.contains("reusing the debian bookworm image"), "{err}");
}

both_users!(a_copied_spec_without_its_lock_reuses_the_bootstrap);
