//! A record is untrusted input. An edited record carries a build key that
//! matches its edits (the key is a plain hash of the record's fields), so
//! `hermit rebuild` must refuse any record whose toolchain, sources or
//! environment differ from what its pinned profile, spec and lock derive,
//! naming the field — before anything runs. As root and as an ordinary user.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::both;
use crate::fixtures::{both_users, output_within, As};

/// The build key of a record, computed as docs/record.md describes it: the
/// sha256 of the compact, key-sorted JSON of everything that goes into the
/// build (minus the job count). Checked against an unedited record first, so
/// a mistake here fails the test instead of hiding one in hermit.
pub(crate) fn build_key(r: &Value) -> String {
    let sources: Vec<Value> = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            if s["kind"] == "remote" {
                json!({"kind": "remote", "name": s["name"], "sha256": s["sha256"],
                       "size": s["size"], "unpack": s["unpack"]})
            } else {
                json!({"kind": "local", "name": s["name"], "include": s["include"],
                       "exclude": s["exclude"], "tree": s["tree"]})
            }
        })
        .collect();
    let inputs: Vec<Value> = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| json!({"name": i["name"], "output": i["output"]}))
        .collect();
    let mut env = r["environment"].clone();
    env.as_object_mut().unwrap().remove("jobs");
    env["env"].as_object_mut().unwrap().remove("HERMIT_JOBS");
    let i = &r["image"];
    let layers: Vec<Value> = i["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    let canonical = json!({
        "build_key_version": 1,
        "output_format": r["output"]["format"],
        "spec": r["spec"]["digest"],
        "lock": r["lock"]["digest"],
        "image": {"index": i["index"], "manifest": i["manifest"], "config": i["config"],
                  "layers": layers, "platform": i["platform"]},
        "sources": sources,
        "inputs": inputs,
        "profile": {"name": r["profile"]["name"], "digest": r["profile"]["digest"]},
        "environment": env,
    });
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    )
}

/// Builds the project as `who` and returns the record as JSON plus the
/// directory it was built in (kept alive by the returned TempDir).
fn built(who: As) -> (tempfile::TempDir, Value) {
    let dir = who.scratch();
    let spec = crate::build::project(dir.path(), "cat /sources/src/hello.txt > $out/hello", "");
    who.give(dir.path());
    let o = output_within(
        who.hermit().arg("build").arg(&spec).arg("--json"),
        std::time::Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", both(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let record: Value =
        serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap()).unwrap();
    (dir, record)
}

fn rebuild(who: As, dir: &Path, record: &Value, name: &str) -> std::process::Output {
    let path = dir.join(name);
    fs::write(&path, serde_json::to_string_pretty(record).unwrap()).unwrap();
    crate::fixtures::chown(&path, who.uid(), who.gid());
    output_within(
        who.hermit().arg("rebuild").arg(&path),
        std::time::Duration::from_secs(120),
    )
}

fn edited_records_with_recomputed_keys_are_refused_naming_the_field(who: As) {
    let (dir, record) = built(who);
    assert_eq!(
        build_key(&record),
        record["build_key"].as_str().unwrap(),
        "the test's key derivation must agree with hermit's"
    );
    // The unedited record rebuilds.
    let o = rebuild(who, dir.path(), &record, "good.json");
    assert!(o.status.success(), "{}", both(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("identical"));

    // A host file a hostile record would like gone.
    let decoy = dir.path().join("decoy.txt");
    fs::write(&decoy, "keep me\n").unwrap();

    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "environment.limits.tmp_size_mib",
            Box::new(|r| r["environment"]["limits"]["tmp_size_mib"] = json!(10u64 << 20)),
        ),
        (
            "environment.limits.max_pids",
            Box::new(|r| r["environment"]["limits"]["max_pids"] = json!(4_000_000_000u64)),
        ),
        (
            "environment.limits.timeout_secs",
            Box::new(|r| r["environment"]["limits"]["timeout_secs"] = json!(4_000_000_000u64)),
        ),
        (
            "environment.home",
            Box::new(move |r| r["environment"]["home"] = json!("/x/decoy.txt")),
        ),
        (
            "environment.build_path",
            Box::new(|r| r["environment"]["build_path"] = json!("/proc/sys")),
        ),
        (
            "environment.uid",
            Box::new(|r| r["environment"]["uid"] = json!(0)),
        ),
        (
            "environment.env.BASH_ENV",
            Box::new(|r| r["environment"]["env"]["BASH_ENV"] = json!("/sources/src/evil.sh")),
        ),
        (
            "environment.env.PATH",
            Box::new(|r| r["environment"]["env"]["PATH"] = json!("/sources/src:/bin")),
        ),
        (
            "image.reference",
            Box::new(|r| r["image"]["reference"] = json!("registry.invalid/evil@sha256:00")),
        ),
        (
            "sources[0].path",
            Box::new(|r| r["sources"][0]["path"] = json!("elsewhere")),
        ),
        (
            "sources[0].name",
            Box::new(|r| r["sources"][0]["name"] = json!("other")),
        ),
        (
            "package",
            Box::new(|r| r["package"]["version"] = json!("6.6.6")),
        ),
    ];
    for (field, edit) in edits {
        let mut r = record.clone();
        edit(&mut r);
        r["build_key"] = json!(build_key(&r));
        let o = rebuild(who, dir.path(), &r, "edited.json");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{field}: {}", both(&o));
        assert!(
            err.contains(&format!("`{field}`")) && err.contains("edited.json"),
            "{field} must be named: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear error: {err}");
    }
    assert_eq!(fs::read_to_string(&decoy).unwrap(), "keep me\n");

    // `hermit mirror RECORD` reads records the same way: an edited one does
    // not make hermit fetch what its spec and lock do not name.
    let mut r = record.clone();
    r["image"]["reference"] = json!("registry.invalid/evil@sha256:00");
    r["build_key"] = json!(build_key(&r));
    let path = dir.path().join("mirror-edited.json");
    fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    let o = output_within(
        who.hermit()
            .arg("mirror")
            .arg(&path)
            .arg("--to")
            .arg(dir.path().join("mirror")),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`image.reference`"));
    assert!(!dir.path().join("mirror").exists());
}

both_users!(edited_records_with_recomputed_keys_are_refused_naming_the_field);
