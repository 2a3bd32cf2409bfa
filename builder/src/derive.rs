//! A record is untrusted input: `hermit rebuild` may be handed one by anyone.
//! Its build key is a plain hash of its own fields, so an edited record can
//! carry a matching key. What decides how the sandbox is set up therefore
//! never comes from the record's own fields: it is derived again from the
//! pinned profile the record names plus the spec and lock texts it embeds
//! (whose digests the record states), and the record must agree with that
//! derivation field by field. A record that does not is refused, naming the
//! first field that differs.
//!
//! What is checked against what:
//!
//! | record field            | derived from                                  |
//! |-------------------------|-----------------------------------------------|
//! | `package`               | the spec's `[package]`                        |
//! | `image.*`               | the lock's pinned toolchain                   |
//! | `sources[]` (not trees) | the spec's `[[source]]` tables                |
//! | `inputs`                | the spec's `[inputs]`                         |
//! | `environment.*`         | the profile, the spec's `[env]` and `[build]`, the image config's PATH |
//!
//! Left to the record, because nothing else can say them: the digests of
//! local source trees (checked by digest when fetched) and of the output.
//! `environment.jobs` is informational and replaced by this host's count.

use serde_json::Value;

use hermit_profiles::{EnvInputs, Profile};
use hermit_store::oci::Image;

use crate::lock::Lock;
use crate::pipeline::resolve::spec_limits;
use crate::record::{Environment, Record, SourceRecord};
use crate::spec::{SourceKind, Spec};
use crate::toolchain::{image_reference, toolchain_request};

/// Why a record does not match what its profile, spec and lock say.
#[derive(Debug, thiserror::Error)]
#[error(
    "{origin}: `{field}` {detail}; the record was edited or made by an incompatible hermit \
     (nothing in a record may set up the sandbox other than its pinned profile, spec and lock); \
     rebuild from a record you trust, or build the spec"
)]
pub struct Mismatch {
    pub origin: String,
    pub field: String,
    pub detail: String,
}

fn mismatch(origin: &str, field: impl Into<String>, detail: impl Into<String>) -> Mismatch {
    Mismatch {
        origin: origin.to_string(),
        field: field.into(),
        detail: detail.into(),
    }
}

/// Checks everything in `rec` that can be derived without the image: the
/// package, the toolchain pinned by the lock (or made from an input's
/// output), the sources and inputs.
pub fn check_static(rec: &Record, spec: &Spec, origin: &str) -> Result<(), Mismatch> {
    if rec.package.name != spec.package.name || rec.package.version != spec.package.version {
        return Err(mismatch(
            origin,
            "package",
            format!(
                "says {} {}, but the recorded spec says {} {}",
                rec.package.name, rec.package.version, spec.package.name, spec.package.version
            ),
        ));
    }

    let Some(request) = toolchain_request(spec, std::path::Path::new(".")) else {
        check_input_toolchain(rec, spec, origin)?;
        return check_sources_and_inputs(rec, spec, origin);
    };
    // The toolchain: the lock must be the one for the spec's request, and the
    // image the one the lock pins.
    let Some(lock_rec) = &rec.lock else {
        return Err(mismatch(
            origin,
            "lock",
            "is missing; every build records the lock that pins its toolchain",
        ));
    };
    let lock = Lock::parse("the record's lock", &lock_rec.text)
        .map_err(|e| mismatch(origin, "lock.text", format!("does not parse: {e}")))?;
    lock.check("the record's lock", &request)
        .map_err(|e| mismatch(origin, "lock.text", format!("is not the spec's lock: {e}")))?;
    let t = &lock.toolchain;
    let img = &rec.image;
    let reference = image_reference(&request);
    if img.reference != reference {
        return Err(mismatch(
            origin,
            "image.reference",
            format!("says {:?}, but the spec gives {reference:?}", img.reference),
        ));
    }
    if img.manifest != t.manifest {
        return Err(mismatch(
            origin,
            "image.manifest",
            format!("says {}, but the lock pins {}", img.manifest, t.manifest),
        ));
    }
    if img.config != t.config {
        return Err(mismatch(
            origin,
            "image.config",
            format!("says {}, but the lock pins {}", img.config, t.config),
        ));
    }
    let layers: Vec<_> = img.layers.iter().map(|l| l.digest).collect();
    if layers != t.layers {
        return Err(mismatch(
            origin,
            "image.layers",
            "do not match the layers the lock pins",
        ));
    }
    if img.platform != t.platform {
        return Err(mismatch(
            origin,
            "image.platform",
            format!(
                "says {:?}, but the lock pins {:?}",
                img.platform, t.platform
            ),
        ));
    }

    check_sources_and_inputs(rec, spec, origin)
}

/// A toolchain that is an input's output: no lock, and the image is the one
/// hermit makes from that output ([`crate::toolchain::input_image`]).
fn check_input_toolchain(rec: &Record, spec: &Spec, origin: &str) -> Result<(), Mismatch> {
    let crate::spec::Toolchain::Input { name } = &spec.toolchain else {
        return Err(mismatch(
            origin,
            "lock",
            "is missing for the spec's toolchain",
        ));
    };
    if rec.lock.is_some() {
        return Err(mismatch(
            origin,
            "lock",
            format!("is given, but the toolchain is input {name:?}, which needs none"),
        ));
    }
    let img = &rec.image;
    let reference = crate::toolchain::input_reference(name);
    if img.reference != reference {
        return Err(mismatch(
            origin,
            "image.reference",
            format!("says {:?}, but the spec gives {reference:?}", img.reference),
        ));
    }
    let Some(input) = rec.inputs.iter().find(|i| &i.name == name) else {
        return Err(mismatch(
            origin,
            "inputs",
            format!("lack the toolchain input {name:?}"),
        ));
    };
    let [layer] = img.layers.as_slice() else {
        return Err(mismatch(
            origin,
            "image.layers",
            "must be exactly the toolchain input's output",
        ));
    };
    if layer.digest != input.output {
        return Err(mismatch(
            origin,
            "image.layers",
            format!(
                "name {}, but the toolchain input {name:?} has output {}",
                layer.digest, input.output
            ),
        ));
    }
    let profile = Profile::get_pinned(&rec.profile.name, &rec.profile.digest.to_string())
        .map_err(|e| mismatch(origin, "profile", e.to_string()))?;
    let made = hermit_store::oci::rootfs_tar_image(
        &layer.digest,
        layer.size,
        &reference,
        &profile.env.default_path,
    )
    .map_err(|e| mismatch(origin, "image", e.to_string()))?;
    let want = crate::record::ImageRecord::from_image(&reference, &made.image);
    if *img != want {
        return Err(mismatch(
            origin,
            "image",
            format!(
                "is not the image hermit makes from the toolchain input's output (manifest {})",
                want.manifest
            ),
        ));
    }
    Ok(())
}

/// Sources: the same names, kinds and pins as the spec's; inputs: the
/// same names and spec paths.
fn check_sources_and_inputs(rec: &Record, spec: &Spec, origin: &str) -> Result<(), Mismatch> {
    let mut wanted: Vec<_> = spec.sources.iter().collect();
    wanted.sort_by(|a, b| a.name.cmp(&b.name));
    if rec.sources.len() != wanted.len() {
        return Err(mismatch(
            origin,
            "sources",
            format!(
                "lists {} sources, but the spec has {}",
                rec.sources.len(),
                wanted.len()
            ),
        ));
    }
    for (i, (r, s)) in rec.sources.iter().zip(&wanted).enumerate() {
        let field = |f: &str| format!("sources[{i}].{f}");
        if r.name() != s.name {
            return Err(mismatch(
                origin,
                field("name"),
                format!("is {:?}, but the spec's source is {:?}", r.name(), s.name),
            ));
        }
        match (r, &s.kind) {
            (
                SourceRecord::Remote {
                    urls,
                    sha256,
                    size,
                    unpack,
                    ..
                },
                SourceKind::Remote {
                    urls: surls,
                    sha256: ssha,
                    size: ssize,
                    unpack: sunpack,
                },
            ) => {
                if sha256 != ssha {
                    return Err(mismatch(
                        origin,
                        field("sha256"),
                        format!("is {sha256}, but the spec pins {ssha}"),
                    ));
                }
                if urls != surls {
                    return Err(mismatch(
                        origin,
                        field("urls"),
                        "differ from the spec's urls",
                    ));
                }
                if ssize.is_some_and(|n| n != *size) {
                    return Err(mismatch(
                        origin,
                        field("size"),
                        "differs from the spec's size",
                    ));
                }
                if unpack.map(|u| u.strip_components) != sunpack.map(|u| u.strip_components) {
                    return Err(mismatch(
                        origin,
                        field("unpack"),
                        "differs from the spec's unpack",
                    ));
                }
            }
            (
                SourceRecord::Local {
                    path,
                    include,
                    exclude,
                    ..
                },
                SourceKind::Local {
                    path: spath,
                    include: sinclude,
                    exclude: sexclude,
                },
            ) => {
                if path != spath || include != sinclude || exclude != sexclude {
                    return Err(mismatch(
                        origin,
                        field("path"),
                        "(with include and exclude) differs from the spec's local source",
                    ));
                }
            }
            _ => {
                return Err(mismatch(
                    origin,
                    field("kind"),
                    format!("differs from the kind of the spec's source {:?}", s.name),
                ))
            }
        }
    }
    let input_names: Vec<&String> = spec.inputs.keys().collect();
    let rec_inputs: Vec<&String> = rec.inputs.iter().map(|i| &i.name).collect();
    if input_names != rec_inputs {
        return Err(mismatch(
            origin,
            "inputs",
            "do not name the spec's [inputs]",
        ));
    }
    Ok(())
}

/// The environment the record's pinned `profile` gives its spec over
/// `image`, with this host's job count. Refuses a record whose
/// `environment` says anything else (other than its job count).
pub fn environment(
    rec: &Record,
    spec: &Spec,
    image: &Image,
    profile: &Profile,
    jobs: u32,
    origin: &str,
) -> Result<Environment, Mismatch> {
    let derive = |jobs: u32| {
        Environment::from_profile(
            profile,
            &EnvInputs {
                image_path: image.path_env.as_deref(),
                source_date_epoch: None,
                jobs,
                extra: &spec.env,
            },
            &spec_limits(spec),
        )
        .map_err(|e| mismatch(origin, "spec.text", e.to_string()))
    };
    // Compared with the record's own job count, which is informational.
    let as_recorded = derive(rec.environment.jobs)?;
    let want = serde_json::to_value(&as_recorded).unwrap_or(Value::Null);
    let have = serde_json::to_value(&rec.environment).unwrap_or(Value::Null);
    if let Some((field, detail)) = first_difference("environment", &have, &want) {
        return Err(mismatch(
            origin,
            field,
            format!("{detail} (profile {})", profile.name),
        ));
    }
    derive(jobs)
}

/// The first place where `have` (the record) and `want` (the derivation)
/// differ, as a dotted path and a description.
fn first_difference(path: &str, have: &Value, want: &Value) -> Option<(String, String)> {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => {
            let mut keys: Vec<&String> = h.keys().chain(w.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = format!("{path}.{k}");
                match (h.get(k), w.get(k)) {
                    (Some(a), Some(b)) => {
                        if let Some(d) = first_difference(&sub, a, b) {
                            return Some(d);
                        }
                    }
                    (Some(a), None) => {
                        return Some((sub, format!("is {a}, but the profile and spec give none")))
                    }
                    (None, Some(b)) => {
                        return Some((
                            sub,
                            format!("is missing, but the profile and spec give {b}"),
                        ))
                    }
                    (None, None) => {}
                }
            }
            None
        }
        _ if have == want => None,
        _ => Some((
            path.to_string(),
            format!("is {have}, but the profile and spec give {want}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_deepest_field() {
        let have = serde_json::json!({"a": 1, "limits": {"tmp": 10, "pids": 5}});
        let want = serde_json::json!({"a": 1, "limits": {"tmp": 4, "pids": 5}});
        let (field, detail) = first_difference("environment", &have, &want).unwrap();
        assert_eq!(field, "environment.limits.tmp");
        assert!(
            detail.contains("is 10") && detail.contains("give 4"),
            "{detail}"
        );
        let extra = serde_json::json!({"a": 1, "b": 2});
        let (field, _) = first_difference("e", &extra, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(field, "e.b");
        assert!(first_difference("e", &want, &want).is_none());
    }
}
