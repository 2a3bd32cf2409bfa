//! SLSA provenance v1, as an in-toto Statement v1, from a record.
//!
//! The mapping (also in `docs/record.md`):
//!
//! - `subject`: one entry, `<package>-<version>`, whose sha256 is the output
//!   digest (the sha256 of the canonical tar, see `docs/outputs.md`).
//! - `buildDefinition.buildType`: [`BUILD_TYPE`].
//! - `externalParameters`: the spec (file name, digest, verbatim text) and
//!   the lock (digest, text) — what the user controls.
//! - `internalParameters`: the profile (name, digest), the exact
//!   environment, the build key and the output format — what hermit chose.
//! - `resolvedDependencies`: the image's index (if any), manifest, config and
//!   every layer; every source; every dependency output. Each by sha256.
//! - `runDetails.builder.id`: [`BUILDER_ID`] with hermit's version in
//!   `builder.version`; `metadata`: `invocationId` (the build key) and
//!   `startedOn`/`finishedOn` when the record has them; `byproducts`: the log.

use serde_json::{json, Value};

use crate::record::{Record, SourceRecord};

/// The build type: "a hermit build from a spec, as defined by record version 1
/// and described in docs/record.md".
pub const BUILD_TYPE: &str = "urn:hermit:build-type:record-v1";

/// The builder: hermit running locally on the invoking user's machine.
pub const BUILDER_ID: &str = "urn:hermit:builder:local";

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";

fn sha(d: &hermit_store::Digest) -> Value {
    json!({ "sha256": d.hex() })
}

/// The in-toto Statement for a record (keys sorted at every level).
pub fn statement(r: &Record) -> Value {
    let img = &r.image;
    let repo = img
        .reference
        .split_once('@')
        .map(|(repo, _)| repo)
        .unwrap_or(&img.reference);
    let oci = |d: &hermit_store::Digest| format!("oci://{repo}@{d}");
    let mut deps = Vec::new();
    if let Some(index) = &img.index {
        deps.push(json!({"name": "image/index", "uri": oci(index), "digest": sha(index)}));
    }
    deps.push(json!({
        "name": "image/manifest",
        "uri": oci(&img.manifest),
        "digest": sha(&img.manifest),
        "annotations": {"reference": img.reference, "platform": img.platform},
    }));
    deps.push(json!({"name": "image/config", "uri": oci(&img.config), "digest": sha(&img.config)}));
    for (i, l) in img.layers.iter().enumerate() {
        deps.push(json!({
            "name": format!("image/layer/{i}"),
            "uri": oci(&l.digest),
            "digest": sha(&l.digest),
            "mediaType": l.media_type,
        }));
    }
    for s in &r.sources {
        deps.push(match s {
            SourceRecord::Remote {
                name,
                urls,
                sha256,
                size,
                unpack,
            } => {
                let mut v = json!({
                    "name": format!("source/{name}"),
                    "digest": sha(sha256),
                    "annotations": {"urls": urls, "size": size, "unpack": unpack},
                });
                if let Some(u) = urls.first() {
                    v["uri"] = Value::from(u.as_str());
                }
                v
            }
            SourceRecord::Local {
                name, path, tree, ..
            } => json!({
                "name": format!("source/{name}"),
                "uri": format!("file:{path}"),
                "digest": sha(tree),
                "annotations": {"digestOf": "canonical tar of the directory (docs/outputs.md)"},
            }),
        });
    }
    for i in &r.inputs {
        deps.push(json!({
            "name": format!("input/{}", i.name),
            "digest": sha(&i.output),
            "annotations": {"spec": i.spec, "buildKey": i.build_key.to_string()},
        }));
    }
    let mut metadata = json!({ "invocationId": r.build_key.to_string() });
    if let Some(s) = &r.informational.started {
        metadata["startedOn"] = Value::from(s.as_str());
    }
    if let Some(f) = &r.informational.finished {
        metadata["finishedOn"] = Value::from(f.as_str());
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": format!("{}-{}", r.package.name, r.package.version),
            "digest": sha(&r.output.digest),
        }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "spec": {"file": r.spec.file, "digest": r.spec.digest.to_string(), "text": r.spec.text},
                    "lock": r.lock.as_ref().map(|l| json!({"digest": l.digest.to_string(), "text": l.text})),
                },
                "internalParameters": {
                    "profile": {"name": r.profile.name, "digest": r.profile.digest.to_string()},
                    "environment": r.environment,
                    "buildKey": r.build_key.to_string(),
                    "outputFormat": r.output.format,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"hermit": r.hermit.version}},
                "metadata": metadata,
                "byproducts": [{"name": "log", "digest": sha(&r.log.digest)}],
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn statement_has_in_toto_and_slsa_fields() {
        let r = sample();
        let s = statement(&r);
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["predicateType"], PREDICATE_TYPE);
        assert_eq!(s["subject"][0]["name"], "hello-2.12.1");
        assert_eq!(s["subject"][0]["digest"]["sha256"], r.output.digest.hex());
        let p = &s["predicate"];
        assert_eq!(p["buildDefinition"]["buildType"], BUILD_TYPE);
        assert_eq!(
            p["buildDefinition"]["externalParameters"]["spec"]["text"],
            r.spec.text
        );
        assert_eq!(
            p["buildDefinition"]["internalParameters"]["profile"]["name"],
            "v1"
        );
        assert_eq!(p["runDetails"]["builder"]["id"], BUILDER_ID);
        assert_eq!(
            p["runDetails"]["byproducts"][0]["digest"]["sha256"],
            r.log.digest.hex()
        );
        assert_eq!(
            p["runDetails"]["metadata"]["startedOn"],
            "2023-11-14T22:13:20Z"
        );
        let deps = p["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        let has = |hex: String| deps.iter().any(|d| d["digest"]["sha256"] == hex.as_str());
        assert!(has(r.image.manifest.hex()));
        assert!(has(r.image.config.hex()));
        for l in &r.image.layers {
            assert!(has(l.digest.hex()));
        }
        for src in &r.sources {
            let hex = match src {
                SourceRecord::Remote { sha256, .. } => sha256.hex(),
                SourceRecord::Local { tree, .. } => tree.hex(),
            };
            assert!(has(hex), "{src:?} missing");
        }
        for i in &r.inputs {
            assert!(has(i.output.hex()));
        }
        assert!(deps
            .iter()
            .any(|d| d["uri"] == "http://127.0.0.1:8000/hello-2.12.1.tar.gz"));
    }
}
