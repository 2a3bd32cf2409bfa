//! The record: a versioned JSON document written beside every output, with
//! enough in it to rebuild from alone (format described field by field in
//! `docs/record.md`).
//!
//! Serialisation goes through `serde_json::Value`, whose maps are BTreeMaps
//! in this workspace, so keys are sorted at every level and the same record
//! always gives the same bytes. [`Record::build_key`] is the sha256 of a
//! canonical (compact, sorted) JSON of everything that goes into a build and
//! nothing else: not the `informational` section, not HERMIT_JOBS.
//!
//! `hermit build` (assembled elsewhere) fills a [`RecordParts`] and calls
//! [`Record::assemble`]; until then parts of this module are only used by
//! tests and `hermit provenance`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hermit_profiles::{EnvInputs, Profile};
use hermit_store::oci::Image;
use hermit_store::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::output::{self, FileEntry, Kind, Normalized};

/// The record format this hermit writes and reads.
pub const RECORD_VERSION: u64 = 1;

/// The version of the build-key derivation; bumping it changes every key.
pub const BUILD_KEY_VERSION: u32 = 1;

/// Fields every record must have at its top level.
const REQUIRED: &[&str] = &[
    "build_key",
    "environment",
    "hermit",
    "image",
    "informational",
    "inputs",
    "log",
    "output",
    "package",
    "profile",
    "record_version",
    "sources",
    "spec",
];

/// Why a record could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{origin} is not JSON")]
    NotJson {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{origin} is not a hermit record: the top level is not a JSON object")]
    NotObject { origin: String },
    #[error("{origin} has no \"record_version\"; it is not a hermit record")]
    NoVersion { origin: String },
    #[error("{origin} has record_version {found}, but this hermit reads only record_version {RECORD_VERSION}; use a hermit release that reads version {found}")]
    Version { origin: String, found: Value },
    #[error("{origin} is missing field `{field}`")]
    Missing { origin: String, field: &'static str },
    #[error("{origin} is not a valid record_version 1 document")]
    Invalid {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{origin}: {what}; the record was edited or damaged")]
    Inconsistent { origin: String, what: String },
    #[error("profile {name:?} cannot give the build environment")]
    Profile {
        name: String,
        #[source]
        source: hermit_profiles::ProfileError,
    },
    #[error("[env] may not set {0:?}: the profile sets it; remove it from the spec")]
    ReservedEnv(String),
    #[error("[build] {field} = {value} is above profile {profile}'s limit of {limit} MiB; a spec may lower the profile's limits, never raise them (write at most {field} = {limit}, or leave it out)")]
    LimitRaised {
        field: &'static str,
        value: u64,
        profile: String,
        limit: u64,
    },
    #[error("serialising the record failed")]
    Serialise(#[source] serde_json::Error),
}

/// A build record, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub record_version: u64,
    pub hermit: HermitInfo,
    /// sha256 of the canonical JSON of the build's inputs; see [`KeyInputs`].
    pub build_key: Digest,
    pub package: Package,
    pub spec: SpecRecord,
    pub lock: Option<TextRecord>,
    pub image: ImageRecord,
    pub sources: Vec<SourceRecord>,
    pub inputs: Vec<InputRecord>,
    pub profile: ProfileRecord,
    pub environment: Environment,
    pub output: OutputRecord,
    pub log: LogRecord,
    pub informational: Informational,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HermitInfo {
    /// The version of hermit that made the record.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// The spec, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecRecord {
    /// The spec's file name only (never a host path).
    pub file: String,
    pub text: String,
    /// sha256 of `text`'s UTF-8 bytes.
    pub digest: Digest,
}

/// A text file kept verbatim with its digest (the lock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRecord {
    pub text: String,
    pub digest: Digest,
}

impl TextRecord {
    pub fn new(text: String) -> TextRecord {
        let digest = Digest::of(text.as_bytes());
        TextRecord { text, digest }
    }
}

/// The toolchain image, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// The reference the spec or lock gave (a `name@sha256:` reference, a
    /// spec-relative path, or `debian:<suite>` for bootstrapped images).
    pub reference: String,
    pub index: Option<Digest>,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    /// `os/architecture`.
    pub platform: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl ImageRecord {
    /// Mirrors a resolved store image; `reference` is what the spec/lock said.
    pub fn from_image(reference: &str, image: &Image) -> ImageRecord {
        ImageRecord {
            reference: reference.to_string(),
            index: image.index,
            manifest: image.manifest,
            config: image.config,
            layers: image
                .layers
                .iter()
                .map(|l| LayerRecord {
                    digest: l.digest,
                    media_type: l.media_type.clone(),
                    size: l.size,
                })
                .collect(),
            platform: image.platform.clone(),
        }
    }
}

/// One `[[source]]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceRecord {
    /// Downloaded bytes pinned by sha256.
    Remote {
        name: String,
        urls: Vec<String>,
        sha256: Digest,
        size: u64,
        /// Present when the source is unpacked.
        unpack: Option<UnpackRecord>,
    },
    /// A directory beside the spec, pinned by the digest of its canonical tar.
    Local {
        name: String,
        /// Relative to the spec's directory, as the spec wrote it.
        path: String,
        include: Vec<String>,
        exclude: Vec<String>,
        tree: Digest,
    },
}

impl SourceRecord {
    pub fn name(&self) -> &str {
        match self {
            SourceRecord::Remote { name, .. } | SourceRecord::Local { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpackRecord {
    pub strip_components: u32,
}

/// A dependency output, mounted at `/inputs/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    pub name: String,
    /// The dependency spec's path relative to this spec.
    pub spec: String,
    /// The dependency's output digest.
    pub output: Digest,
    /// The dependency's build key.
    pub build_key: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRecord {
    pub name: String,
    /// sha256 of the profile's TOML bytes.
    pub digest: Digest,
}

/// Exactly what the build saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Every environment variable, after clearing.
    pub env: BTreeMap<String, String>,
    pub build_path: String,
    pub out_path: String,
    pub tmp_path: String,
    pub sources_path: String,
    pub inputs_path: String,
    pub user: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub hostname: String,
    pub domainname: String,
    /// Four octal digits.
    pub umask: String,
    pub tz: String,
    pub locale: String,
    pub source_date_epoch: u64,
    pub namespaces: Vec<String>,
    pub network: String,
    pub aslr: bool,
    /// HERMIT_JOBS; recorded, not part of the build key.
    pub jobs: u32,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub timeout_secs: u64,
    pub tmp_size_mib: u64,
    pub max_pids: u64,
    /// Memory of the whole build, MiB (profile v2 on; absent in v1 records,
    /// so that their JSON and build keys stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// What `/build` and `/out` may hold on disk, MiB (profile v2 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Size of the build log, MiB (profile v2 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_mib: Option<u64>,
}

/// The limits a spec's `[build]` asks for. Each may lower the profile's
/// limit, never raise it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecLimits {
    pub timeout_secs: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub log_mib: Option<u64>,
}

/// `spec`'s value of limit `field` under a profile whose value is `profile`:
/// the lower of the two, and an error when the spec asks for more.
fn lowered(
    profile_name: &str,
    field: &'static str,
    profile: Option<u64>,
    spec: Option<u64>,
) -> Result<Option<u64>, RecordError> {
    match (profile, spec) {
        (Some(p), Some(s)) if s > p => Err(RecordError::LimitRaised {
            field,
            value: s,
            profile: profile_name.to_string(),
            limit: p,
        }),
        (p, s) => Ok(s.or(p)),
    }
}

impl Environment {
    /// The environment `profile` gives a build with these inputs;
    /// `spec` holds the spec's limits: its timeout replaces the profile's,
    /// its memory, disk and log limits may only lower the profile's.
    pub fn from_profile(
        profile: &Profile,
        inputs: &EnvInputs<'_>,
        spec: &SpecLimits,
    ) -> Result<Environment, RecordError> {
        let name = &profile.name;
        let pl = &profile.limits;
        let memory_mib = lowered(name, "memory_mib", pl.memory_mib, spec.memory_mib)?;
        let disk_mib = lowered(name, "disk_mib", pl.disk_mib, spec.disk_mib)?;
        let log_mib = lowered(name, "log_mib", pl.log_mib, spec.log_mib)?;
        let env = profile
            .environment(inputs)
            .map_err(RecordError::ReservedEnv)?;
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let source_date_epoch = get("SOURCE_DATE_EPOCH")
            .parse()
            .unwrap_or(profile.source_date_epoch.default);
        Ok(Environment {
            build_path: profile.paths.build.clone(),
            out_path: profile.paths.out.clone(),
            tmp_path: profile.paths.tmp.clone(),
            sources_path: profile.paths.sources.clone(),
            inputs_path: profile.paths.inputs.clone(),
            user: profile.user.name.clone(),
            group: profile.user.group.clone(),
            uid: profile.user.uid,
            gid: profile.user.gid,
            home: profile.user.home.clone(),
            hostname: profile.system.hostname.clone(),
            domainname: profile.system.domainname.clone(),
            umask: format!("{:04o}", profile.system.umask),
            tz: get("TZ"),
            locale: get("LC_ALL"),
            source_date_epoch,
            namespaces: profile.system.namespaces.clone(),
            network: profile.system.network.clone(),
            aslr: profile.system.aslr,
            jobs: inputs.jobs,
            limits: Limits {
                timeout_secs: spec.timeout_secs.unwrap_or(pl.timeout_secs),
                tmp_size_mib: pl.tmp_size_mib,
                max_pids: pl.max_pids,
                memory_mib,
                disk_mib,
                log_mib,
            },
            env,
        })
    }
}

/// The output: its digest and the per-file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRecord {
    /// The canonical serialisation's version ([`output::FORMAT`]).
    pub format: u32,
    pub digest: Digest,
    pub tar_size: u64,
    pub files: Vec<FileEntry>,
    /// Absolute symlinks into `$out` that hermit made relative, with the
    /// target the build gave them; absent when there were none. Not part of
    /// the build key (the output digest covers the rewritten links).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewritten_links: Vec<output::RewrittenLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRecord {
    pub digest: Digest,
    pub size: u64,
}

/// Facts about the run and the host, for people. Not part of the build key,
/// never compared by `hermit rebuild`, and free of anything that identifies
/// the host or its user. Unknown fields are accepted here (and dropped) so
/// later hermits may add facts without a new record version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Informational {
    pub note: String,
    /// RFC 3339, UTC.
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_ms: Option<u64>,
    /// The host kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    /// How the hermit binary was built: `debug`/`release` and its target.
    pub hermit_build: String,
    /// Only in the record of a `hermit check` variant (never installed):
    /// what the variant varied, e.g. its build path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_variation: Option<String>,
}

const INFORMATIONAL_NOTE: &str =
    "informational only: not part of the build key and not compared by rebuilds";

impl Informational {
    /// Collects host facts. Reads only the kernel release, the architecture
    /// and the CPU count: never the host name, user or home.
    pub fn collect(started: Option<SystemTime>, finished: Option<SystemTime>) -> Informational {
        // Asked once per process: a graph collects this once per node.
        static HOST: std::sync::OnceLock<(String, u32)> = std::sync::OnceLock::new();
        let (kernel, cpus) = HOST.get_or_init(|| {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string());
            (kernel, crate::pipeline::resolve::host_cpus())
        });
        let (kernel, cpus) = (kernel.clone(), *cpus);
        let duration_ms = match (started, finished) {
            (Some(s), Some(f)) => f
                .duration_since(s)
                .ok()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            _ => None,
        };
        Informational {
            note: INFORMATIONAL_NOTE.to_string(),
            started: started.map(rfc3339),
            finished: finished.map(rfc3339),
            duration_ms,
            kernel,
            arch: std::env::consts::ARCH.to_string(),
            cpus,
            hermit_build: format!(
                "{} {}-{}",
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
                std::env::consts::ARCH,
                std::env::consts::OS
            ),
            check_variation: None,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time (seconds precision, UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Everything that determines a build, borrowed from a record or from a
/// build about to run. Its canonical JSON's sha256 is the build key.
/// Equal key inputs give equal keys (the converse does not hold: the key
/// leaves some fields out, see [`KeyInputs::canonical`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInputs<'a> {
    pub spec: &'a Digest,
    pub lock: Option<&'a Digest>,
    pub image: &'a ImageRecord,
    pub sources: &'a [SourceRecord],
    pub inputs: &'a [InputRecord],
    pub profile: &'a ProfileRecord,
    pub environment: &'a Environment,
}

impl KeyInputs<'_> {
    /// The canonical JSON value the key hashes. Left out on purpose: the
    /// image's human reference (the digests say it all), source URLs (the
    /// sha256 says what was fetched), dependency spec paths, HERMIT_JOBS
    /// and the job count, and everything informational.
    pub fn canonical(&self) -> Value {
        let sources: Vec<Value> = self
            .sources
            .iter()
            .map(|s| match s {
                SourceRecord::Remote {
                    name,
                    sha256,
                    size,
                    unpack,
                    ..
                } => serde_json::json!({
                    "kind": "remote", "name": name, "sha256": sha256, "size": size,
                    "unpack": unpack,
                }),
                SourceRecord::Local {
                    name,
                    include,
                    exclude,
                    tree,
                    ..
                } => serde_json::json!({
                    "kind": "local", "name": name, "include": include,
                    "exclude": exclude, "tree": tree,
                }),
            })
            .collect();
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|i| serde_json::json!({"name": i.name, "output": i.output}))
            .collect();
        let mut env = serde_json::to_value(self.environment).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut env {
            m.remove("jobs");
            if let Some(Value::Object(vars)) = m.get_mut("env") {
                vars.remove("HERMIT_JOBS");
            }
        }
        let i = self.image;
        serde_json::json!({
            "build_key_version": BUILD_KEY_VERSION,
            "output_format": output::FORMAT,
            "spec": self.spec,
            "lock": self.lock,
            "image": {
                "index": i.index,
                "manifest": i.manifest,
                "config": i.config,
                "layers": i.layers.iter().map(|l| l.digest).collect::<Vec<_>>(),
                "platform": i.platform,
            },
            "sources": sources,
            "inputs": inputs,
            "profile": {"name": self.profile.name, "digest": self.profile.digest},
            "environment": env,
        })
    }

    pub fn build_key(&self) -> Digest {
        Digest::of(self.canonical().to_string().as_bytes())
    }
}

/// What a finished build hands the recorder.
#[derive(Debug, Clone)]
pub struct RecordParts<'a> {
    /// The key the build was planned under, computed once from these same
    /// inputs; `None` computes it here.
    pub build_key: Option<Digest>,
    pub package: Package,
    /// The spec's path or file name; only the file name is recorded.
    pub spec_file: &'a str,
    pub spec_text: String,
    pub lock_text: Option<String>,
    pub image: ImageRecord,
    pub sources: Vec<SourceRecord>,
    pub inputs: Vec<InputRecord>,
    pub profile_name: &'a str,
    pub environment: Environment,
    pub output: &'a Normalized,
    pub log: LogRecord,
    pub informational: Informational,
}

impl Record {
    /// Assembles a record and computes its build key.
    pub fn assemble(parts: RecordParts<'_>) -> Result<Record, RecordError> {
        let profile_digest = hermit_profiles::digest(parts.profile_name)
            .map_err(|source| RecordError::Profile {
                name: parts.profile_name.to_string(),
                source,
            })?
            .parse::<Digest>()
            .map_err(|e| RecordError::Inconsistent {
                origin: "profile".into(),
                what: e.to_string(),
            })?;
        let file = std::path::Path::new(parts.spec_file)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "spec.toml".to_string());
        let mut sources = parts.sources;
        sources.sort_by(|a, b| a.name().cmp(b.name()));
        let mut inputs = parts.inputs;
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut r = Record {
            record_version: RECORD_VERSION,
            hermit: HermitInfo {
                version: crate::version::VERSION.to_string(),
            },
            build_key: Digest::of(b""),
            package: parts.package,
            spec: SpecRecord {
                file,
                digest: Digest::of(parts.spec_text.as_bytes()),
                text: parts.spec_text,
            },
            lock: parts.lock_text.map(TextRecord::new),
            image: parts.image,
            sources,
            inputs,
            profile: ProfileRecord {
                name: parts.profile_name.to_string(),
                digest: profile_digest,
            },
            environment: parts.environment,
            output: OutputRecord {
                format: output::FORMAT,
                digest: parts.output.digest,
                tar_size: parts.output.tar_size,
                files: parts.output.files.clone(),
                rewritten_links: Vec::new(),
            },
            log: parts.log,
            informational: parts.informational,
        };
        r.build_key = match parts.build_key {
            Some(key) => {
                debug_assert_eq!(key, r.key_inputs().build_key());
                key
            }
            None => r.key_inputs().build_key(),
        };
        Ok(r)
    }

    pub fn key_inputs(&self) -> KeyInputs<'_> {
        KeyInputs {
            spec: &self.spec.digest,
            lock: self.lock.as_ref().map(|l| &l.digest),
            image: &self.image,
            sources: &self.sources,
            inputs: &self.inputs,
            profile: &self.profile,
            environment: &self.environment,
        }
    }

    /// The record as JSON: keys sorted at every level, two-space indent,
    /// trailing newline.
    pub fn to_json(&self) -> Result<String, RecordError> {
        let v = serde_json::to_value(self).map_err(RecordError::Serialise)?;
        let mut s = serde_json::to_string_pretty(&v).map_err(RecordError::Serialise)?;
        s.push('\n');
        Ok(s)
    }

    /// Parses and validates a record; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Record, RecordError> {
        Record::parse_expecting(text, origin, None)
    }

    /// [`Record::parse`], for a record expected to hold exactly the key
    /// inputs `expected` (a cache hit: the plan's). When it does, its build
    /// key is not computed again from them: equal key inputs give the key
    /// the plan computed, which the caller compares with the record's.
    /// Every other check of [`Record::validate`] is made.
    pub fn parse_expecting(
        text: &str,
        origin: &str,
        expected: Option<&KeyInputs<'_>>,
    ) -> Result<Record, RecordError> {
        let origin_s = || origin.to_string();
        // The common case, a good record, parses once. Every field of
        // REQUIRED is a non-optional field of `Record`, so a record that
        // parses has them all; only the version is left to check.
        if let Ok(r) = serde_json::from_str::<Record>(text) {
            if r.record_version != RECORD_VERSION {
                return Err(RecordError::Version {
                    origin: origin_s(),
                    found: Value::from(r.record_version),
                });
            }
            let known = expected.is_some_and(|e| *e == r.key_inputs());
            r.validate_parts(origin, !known)?;
            return Ok(r);
        }
        // A bad one: parsed step by step, so that the error says the most
        // useful thing first (no JSON, no version, a missing field).
        let v: Value = serde_json::from_str(text).map_err(|source| RecordError::NotJson {
            origin: origin_s(),
            source,
        })?;
        let Value::Object(top) = &v else {
            return Err(RecordError::NotObject { origin: origin_s() });
        };
        match top.get("record_version") {
            None => return Err(RecordError::NoVersion { origin: origin_s() }),
            Some(n) if n.as_u64() == Some(RECORD_VERSION) => {}
            Some(other) => {
                return Err(RecordError::Version {
                    origin: origin_s(),
                    found: other.clone(),
                })
            }
        }
        if let Some(field) = REQUIRED.iter().find(|f| !top.contains_key(**f)) {
            return Err(RecordError::Missing {
                origin: origin_s(),
                field,
            });
        }
        // Parse the text again (not the Value) so errors carry line and column.
        let r: Record = serde_json::from_str(text).map_err(|source| RecordError::Invalid {
            origin: origin_s(),
            source,
        })?;
        r.validate(origin)?;
        Ok(r)
    }

    /// Checks what serde cannot: digests match their texts, the build key
    /// matches the inputs, the file list is sorted and complete.
    pub fn validate(&self, origin: &str) -> Result<(), RecordError> {
        self.validate_parts(origin, true)
    }

    /// [`Record::validate`], recomputing the build key only when `key`.
    fn validate_parts(&self, origin: &str, key: bool) -> Result<(), RecordError> {
        let bad = |what: String| {
            Err(RecordError::Inconsistent {
                origin: origin.to_string(),
                what,
            })
        };
        if Digest::of(self.spec.text.as_bytes()) != self.spec.digest {
            return bad(format!(
                "spec.digest {} is not the digest of spec.text",
                self.spec.digest
            ));
        }
        if let Some(l) = &self.lock {
            if Digest::of(l.text.as_bytes()) != l.digest {
                return bad(format!(
                    "lock.digest {} is not the digest of lock.text",
                    l.digest
                ));
            }
        }
        let key = if key {
            self.key_inputs().build_key()
        } else {
            self.build_key
        };
        if key != self.build_key {
            return bad(format!(
                "build_key {} does not match the recorded inputs (they give {key})",
                self.build_key
            ));
        }
        for w in self.output.files.windows(2) {
            if w[0].path.as_bytes() >= w[1].path.as_bytes() {
                return bad(format!(
                    "output.files is not sorted by path at {:?}",
                    w[1].path
                ));
            }
        }
        for f in &self.output.files {
            let ok = match f.kind {
                Kind::File => f.sha256.is_some() && f.target.is_none(),
                Kind::Symlink => f.sha256.is_none() && f.target.is_some(),
                Kind::Directory => f.sha256.is_none() && f.target.is_none(),
            };
            if !ok {
                return bad(format!(
                    "output.files entry {:?} has the wrong fields for its type",
                    f.path
                ));
            }
        }
        for w in self.output.rewritten_links.windows(2) {
            if w[0].path.as_bytes() >= w[1].path.as_bytes() {
                return bad(format!(
                    "output.rewritten_links is not sorted by unique path at {:?}",
                    w[1].path
                ));
            }
        }
        for l in &self.output.rewritten_links {
            let listed = self
                .output
                .files
                .binary_search_by(|f| f.path.as_bytes().cmp(l.path.as_bytes()))
                .ok()
                .map(|i| &self.output.files[i]);
            if !matches!(listed, Some(f) if f.kind == Kind::Symlink) || !l.target.starts_with('/') {
                return bad(format!(
                    "output.rewritten_links names {:?} (target {:?}), which is not an absolute link the output holds as a symlink",
                    l.path, l.target
                ));
            }
        }
        for s in &self.sources {
            // Never read from the disk (rebuilds restore the tree by digest),
            // but a record naming a path outside its project is not one
            // hermit wrote.
            if let SourceRecord::Local { name, path, .. } = s {
                if path.starts_with('/') || path.split('/').any(|c| c == "..") {
                    return bad(format!(
                        "local source {name:?} has the path {path:?}, which leaves the spec's project"
                    ));
                }
            }
        }
        // Names become paths in the sandbox (/sources/<name>, /inputs/<name>).
        for name in self
            .sources
            .iter()
            .map(SourceRecord::name)
            .chain(self.inputs.iter().map(|i| i.name.as_str()))
        {
            if !crate::spec::is_valid_name(name) {
                return bad(format!(
                    "source or input name {name:?} is not allowed (1 to 128 of A-Z a-z 0-9 . _ - +, not starting with `.`)"
                ));
            }
        }
        for w in self.sources.windows(2) {
            if w[0].name() >= w[1].name() {
                return bad(format!(
                    "sources are not sorted by unique name at {:?}",
                    w[1].name()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    /// A record with fixed contents, for golden tests here and in provenance.
    pub(crate) fn sample() -> Record {
        sample_with("v1")
    }

    /// [`sample`] under another profile.
    pub(crate) fn sample_with(profile_name: &'static str) -> Record {
        let profile = Profile::get(profile_name).unwrap();
        let mut extra = BTreeMap::new();
        extra.insert("CFLAGS".to_string(), "-O2".to_string());
        let environment = Environment::from_profile(
            &profile,
            &EnvInputs {
                image_path: Some("/usr/local/bin:/usr/bin:/bin"),
                source_date_epoch: None,
                jobs: 2,
                extra: &extra,
            },
            &SpecLimits::default(),
        )
        .unwrap();
        let output = Normalized {
            digest: d("output"),
            tar_size: 3072,
            files: vec![
                FileEntry {
                    path: "bin".into(),
                    kind: Kind::Directory,
                    mode: "0755".into(),
                    size: 0,
                    sha256: None,
                    target: None,
                },
                FileEntry {
                    path: "bin/hello".into(),
                    kind: Kind::File,
                    mode: "0755".into(),
                    size: 21,
                    sha256: Some(d("hello")),
                    target: None,
                },
                FileEntry {
                    path: "bin/hi".into(),
                    kind: Kind::Symlink,
                    mode: "0777".into(),
                    size: 0,
                    sha256: None,
                    target: Some("hello".into()),
                },
            ],
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut informational = Informational::collect(Some(t), Some(t + Duration::from_secs(3)));
        informational.kernel = "6.1.0".into();
        informational.arch = "x86_64".into();
        informational.cpus = 2;
        informational.hermit_build = "release x86_64-linux".into();
        let mut r = Record::assemble(RecordParts {
            build_key: None,
            package: Package {
                name: "hello".into(),
                version: "2.12.1".into(),
            },
            spec_file: "examples/hello/spec.toml",
            spec_text: "[package]\nname = \"hello\"\nversion = \"2.12.1\"\n".into(),
            lock_text: Some("lock_version = 1\n".into()),
            image: ImageRecord {
                reference: format!("127.0.0.1:5000/debian@{}", d("manifest")),
                index: None,
                manifest: d("manifest"),
                config: d("config"),
                layers: vec![LayerRecord {
                    digest: d("layer0"),
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    size: 1234,
                }],
                platform: "linux/amd64".into(),
            },
            sources: vec![
                SourceRecord::Remote {
                    name: "hello".into(),
                    urls: vec!["http://127.0.0.1:8000/hello-2.12.1.tar.gz".into()],
                    sha256: d("tarball"),
                    size: 1_000_000,
                    unpack: Some(UnpackRecord {
                        strip_components: 0,
                    }),
                },
                SourceRecord::Local {
                    name: "patches".into(),
                    path: "patches".into(),
                    include: vec![],
                    exclude: vec![],
                    tree: d("patches"),
                },
            ],
            inputs: vec![InputRecord {
                name: "zlib".into(),
                spec: "../zlib/spec.toml".into(),
                output: d("zlib-out"),
                build_key: d("zlib-key"),
            }],
            profile_name,
            environment,
            output: &output,
            log: LogRecord {
                digest: d("log"),
                size: 42,
            },
            informational,
        })
        .unwrap();
        // The golden files keep the version their records were written
        // with; this hermit states its own (with the commit it is built
        // from), which is neither read back nor part of the build key.
        assert_eq!(r.hermit.version, crate::version::VERSION);
        r.hermit.version = "0.1.0".into();
        r
    }

    fn golden_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/records/record-v1.json")
    }

    #[test]
    fn local_source_paths_outside_the_project_are_refused() {
        for path in ["/home/x/.ssh", "../x", "a/../../x"] {
            let mut r = sample();
            for s in &mut r.sources {
                if let SourceRecord::Local { path: p, .. } = s {
                    *p = path.to_string();
                }
            }
            r.build_key = r.key_inputs().build_key();
            let e = r.validate("r.json").unwrap_err().to_string();
            assert!(e.contains("leaves the spec's project"), "{path}: {e}");
        }
        sample().validate("r.json").unwrap();
    }

    #[test]
    fn golden_record_serialises_exactly() {
        let json = sample().to_json().unwrap();
        let path = golden_path();
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::write(&path, &json).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            json, golden,
            "record-v1.json changed; rerun with HERMIT_BLESS=1 if intended"
        );
    }

    /// A v2 record states the memory, disk and log limits; v1 records
    /// (above) do not, and keep their bytes and build keys.
    #[test]
    fn golden_v2_record() {
        let r = sample_with("v2");
        let json = r.to_json().unwrap();
        let path = golden_path().with_file_name("record-v2.json");
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::write(&path, &json).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            json, golden,
            "record-v2.json changed; rerun with HERMIT_BLESS=1 if intended"
        );
        let back = Record::parse(&golden, "record-v2.json").unwrap();
        assert_eq!(back, r);
        let l = &back.environment.limits;
        assert_eq!(
            (l.memory_mib, l.disk_mib, l.log_mib),
            (Some(8192), Some(20480), Some(64))
        );
        assert_ne!(back.build_key, sample().build_key);
        let v1 = sample();
        let l = &v1.environment.limits;
        assert_eq!((l.memory_mib, l.disk_mib, l.log_mib), (None, None, None));
    }

    #[test]
    fn spec_limits_may_lower_never_raise() {
        let profile = Profile::get("v2").unwrap();
        let extra = BTreeMap::new();
        let inputs = EnvInputs {
            image_path: None,
            source_date_epoch: None,
            jobs: 1,
            extra: &extra,
        };
        let low = SpecLimits {
            memory_mib: Some(64),
            disk_mib: Some(8),
            log_mib: Some(1),
            timeout_secs: None,
        };
        let env = Environment::from_profile(&profile, &inputs, &low).unwrap();
        assert_eq!(env.limits.memory_mib, Some(64));
        assert_eq!(env.limits.disk_mib, Some(8));
        assert_eq!(env.limits.log_mib, Some(1));
        let high = SpecLimits {
            memory_mib: Some(1 << 20),
            ..SpecLimits::default()
        };
        let e = Environment::from_profile(&profile, &inputs, &high)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory_mib = 1048576 is above profile v2's limit of 8192 MiB"),
            "{e}"
        );
    }

    /// A record states the version `hermit --version` prints; records of
    /// older hermits, which state only the package version, still read.
    #[test]
    fn record_states_the_version_hermit_prints() {
        let json = sample().to_json().unwrap();
        let mut v: Value = serde_json::from_str(&json).unwrap();
        v["hermit"]["version"] = Value::from(crate::version::VERSION);
        let r = Record::parse(&v.to_string(), "r.json").unwrap();
        assert_eq!(r.hermit.version, crate::version::VERSION);
        assert_eq!(r.build_key, sample().build_key);
        let golden = std::fs::read_to_string(golden_path()).unwrap();
        let old = Record::parse(&golden, "record-v1.json").unwrap();
        assert_eq!(old.hermit.version, "0.1.0");
    }

    #[test]
    fn golden_record_round_trips() {
        let golden = std::fs::read_to_string(golden_path()).unwrap();
        let r = Record::parse(&golden, "record-v1.json").unwrap();
        assert_eq!(r, sample());
        assert_eq!(r.to_json().unwrap(), golden);
    }

    #[test]
    fn expected_key_inputs_spare_the_key_and_no_other_check() {
        let good = sample();
        let inputs = good.clone();
        let expected = inputs.key_inputs();
        let text = good.to_json().unwrap();
        assert_eq!(
            Record::parse_expecting(&text, "r", Some(&expected)).unwrap(),
            good
        );
        // Other key inputs: the key is computed again, and a wrong one is
        // refused as without them.
        let mut other = sample();
        other.environment.umask = "0077".into();
        let mut wrong_key = good.clone();
        wrong_key.build_key = Digest::of(b"not the key");
        let wrong_text = wrong_key.to_json().unwrap();
        assert!(Record::parse(&wrong_text, "r").is_err());
        assert!(Record::parse_expecting(&wrong_text, "r", Some(&other.key_inputs())).is_err());
        // The expected inputs themselves: the key is taken as stated (the
        // caller compares it with the key it looked up), every other check
        // still holds.
        let spared = Record::parse_expecting(&wrong_text, "r", Some(&expected)).unwrap();
        assert_eq!(spared.build_key, Digest::of(b"not the key"));
        let mut bad_spec = good.clone();
        bad_spec.spec.text.push_str("# edited\n");
        let err = Record::parse_expecting(&bad_spec.to_json().unwrap(), "r", Some(&expected))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.digest"), "{err}");
    }

    #[test]
    fn keys_are_sorted_at_every_level() {
        fn check(v: &Value) {
            match v {
                Value::Object(m) => {
                    let keys: Vec<&String> = m.keys().collect();
                    let mut sorted = keys.clone();
                    sorted.sort();
                    assert_eq!(keys, sorted);
                    m.values().for_each(check);
                }
                Value::Array(a) => a.iter().for_each(check),
                _ => {}
            }
        }
        let text = sample().to_json().unwrap();
        // Parse preserving the file's order (serde_json sorts; read keys by hand).
        let v: Value = serde_json::from_str(&text).unwrap();
        check(&v);
        let top: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = top.clone();
        sorted.sort();
        assert_eq!(top, sorted);
    }

    #[test]
    fn build_key_ignores_informational_and_jobs_but_not_inputs() {
        let a = sample();
        let mut b = sample();
        b.informational.cpus = 64;
        b.informational.kernel = "7.0".into();
        b.environment.jobs = 64;
        b.environment.env.insert("HERMIT_JOBS".into(), "64".into());
        assert_eq!(a.key_inputs().build_key(), b.key_inputs().build_key());
        let mut c = sample();
        c.environment.umask = "0002".into();
        assert_ne!(a.key_inputs().build_key(), c.key_inputs().build_key());
        let mut e = sample();
        e.image.layers[0].digest = d("other layer");
        assert_ne!(a.key_inputs().build_key(), e.key_inputs().build_key());
        let mut f = sample();
        if let SourceRecord::Remote { sha256, .. } = &mut f.sources[0] {
            *sha256 = d("other tarball");
        }
        assert_ne!(a.key_inputs().build_key(), f.key_inputs().build_key());
    }

    #[test]
    fn unknown_version_and_missing_fields_are_clear() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["record_version"] = Value::from(2);
        let e = Record::parse(&v.to_string(), "r.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record_version 2") && e.contains("reads only record_version 1"),
            "{e}"
        );

        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("log");
        let e = Record::parse(&v.to_string(), "r.json")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "r.json is missing field `log`");

        let mut v = serde_json::to_value(sample()).unwrap();
        v["image"].as_object_mut().unwrap().remove("manifest");
        let text = serde_json::to_string_pretty(&v).unwrap();
        let e = Record::parse(&text, "r.json").unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("missing field `manifest`"), "{chain}");

        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("record_version");
        let e = Record::parse(&v.to_string(), "r.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no \"record_version\""), "{e}");
    }

    #[test]
    fn rewritten_links_round_trip_outside_the_key_and_are_checked() {
        let plain = sample();
        let mut r = sample();
        r.output.rewritten_links = vec![output::RewrittenLink {
            path: "bin/hi".into(),
            target: "/out/bin/hello".into(),
        }];
        assert_eq!(r.key_inputs().build_key(), plain.build_key);
        let json = r.to_json().unwrap();
        assert!(json.contains("\"rewritten_links\""), "{json}");
        assert_eq!(Record::parse(&json, "r.json").unwrap(), r);
        assert!(!plain.to_json().unwrap().contains("rewritten_links"));
        for (path, target) in [("bin/hello", "/out/bin/hello"), ("bin/hi", "hello")] {
            r.output.rewritten_links[0] = output::RewrittenLink {
                path: path.into(),
                target: target.into(),
            };
            let e = Record::parse(&r.to_json().unwrap(), "r.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("r.json") && e.contains("rewritten_links"), "{e}");
        }
    }

    #[test]
    fn edited_record_is_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["environment"]["umask"] = Value::from("0000");
        let e = Record::parse(&v.to_string(), "r.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("build_key") && e.contains("edited"), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["spec"]["text"] = Value::from("something else");
        let e = Record::parse(&v.to_string(), "r.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.digest"), "{e}");
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(315_532_800);
        assert_eq!(rfc3339(t), "1980-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01Z");
    }

    const PRIVACY_USER: &str = "zqprivuser7731";
    const PRIVACY_HOST: &str = "zqprivhost4410";
    const PRIVACY_HOME: &str = "/tmp/zqprivhome9052";

    /// Runs `privacy_child_helper` in new user + UTS namespaces with a distinctive
    /// host name, user name and home, where it builds a record from a real
    /// output under that home and checks none of them leak.
    #[test]
    fn record_reveals_no_host_user_or_home() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--uts", "--"])
            .arg(exe)
            .args([
                "record::tests::privacy_child_helper",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HERMIT_PRIVACY_CHILD", "1")
            .env("USER", PRIVACY_USER)
            .env("LOGNAME", PRIVACY_USER)
            .env("HOME", PRIVACY_HOME)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("privacy child checked"), "{text}");
    }

    #[test]
    fn privacy_child_helper() {
        if std::env::var_os("HERMIT_PRIVACY_CHILD").is_none() {
            // A helper, not a test of its own: it does its work only when
            // `record_reveals_no_host_user_or_home` starts it in namespaces.
            return;
        }
        nix::unistd::sethostname(PRIVACY_HOST).unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim(),
            PRIVACY_HOST
        );
        let home = Path::new(PRIVACY_HOME);
        let _ = std::fs::remove_dir_all(home);
        std::fs::create_dir_all(home.join("project/out/bin")).unwrap();
        std::fs::write(home.join("project/out/bin/tool"), b"#!/bin/sh\n").unwrap();
        let n = output::normalize(
            &home.join("project/out"),
            &output::Options::new(315532800),
            None,
        )
        .unwrap();
        let start = SystemTime::now();
        let mut r = sample();
        r.output.digest = n.digest;
        r.output.files = n.files;
        r.informational = Informational::collect(Some(start), Some(SystemTime::now()));
        let spec = home.join("project/spec.toml");
        let r = Record::assemble(RecordParts {
            build_key: None,
            package: r.package.clone(),
            spec_file: spec.to_str().unwrap(),
            spec_text: r.spec.text.clone(),
            lock_text: None,
            image: r.image.clone(),
            sources: r.sources.clone(),
            inputs: r.inputs.clone(),
            profile_name: "v1",
            environment: r.environment.clone(),
            output: &Normalized {
                digest: r.output.digest,
                tar_size: n.tar_size,
                files: r.output.files.clone(),
            },
            log: r.log.clone(),
            informational: r.informational.clone(),
        })
        .unwrap();
        let json = r.to_json().unwrap();
        std::fs::remove_dir_all(home).unwrap();
        for secret in [PRIVACY_USER, PRIVACY_HOST, PRIVACY_HOME, "zqpriv"] {
            assert!(
                !json.contains(secret),
                "record contains {secret:?}:\n{json}"
            );
        }
        assert!(json.contains("\"bin/tool\""));
        println!("privacy child checked");
    }
}
