//! hermit-profiles: versioned definitions of the build environment.
//!
//! A profile says everything about the sandbox a build runs in that is not
//! the toolchain image or the inputs: user and ids, fixed paths, hostname,
//! umask, environment, the SOURCE_DATE_EPOCH and CPU-count policies, ASLR,
//! namespaces and limits. Profiles are TOML files embedded in the binary
//! (`profiles/defs/*.toml`) and are immutable once released: a record names
//! its profile and the profile's digest (sha256 of the file's exact bytes),
//! so a later hermit rebuilds under the same environment even after the
//! default has moved on.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The profile new builds use.
pub const DEFAULT: &str = "v3";

/// The profile format this crate understands.
pub const FORMAT: u32 = 1;

/// Every released profile: (name, exact TOML text).
const PROFILES: &[(&str, &str)] = &[
    ("v1", include_str!("../defs/v1.toml")),
    ("v2", include_str!("../defs/v2.toml")),
    ("v3", include_str!("../defs/v3.toml")),
];

/// What profile v1 left unstated, as the sandbox has always set it for v1
/// builds (v2 on state these in `[limits]`): the `/dev/shm` size, MiB.
pub const V1_SHM_SIZE_MIB: u64 = 256;
/// …RLIMIT_NOFILE.
pub const V1_MAX_OPEN_FILES: u64 = 4096;
/// …core dumps (RLIMIT_CORE 0).
pub const V1_CORE_DUMPS: bool = false;

/// Errors finding or reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {name:?}; this hermit knows: {known}")]
    Unknown { name: String, known: String },
    #[error("profile {name:?} has digest {actual}, but {expected} was asked for; the record was made with a different profile of the same name")]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("profile {name:?} is malformed")]
    Malformed {
        name: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("profile {name:?} has format {found}, this hermit reads format {FORMAT}")]
    Format { name: String, found: u32 },
    #[error("profile {name:?} does not state {what}; only v1 may leave it out")]
    Incomplete { name: String, what: String },
}

/// A build-environment profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub format: u32,
    pub name: String,
    pub description: String,
    pub user: User,
    pub paths: Paths,
    pub system: System,
    pub env: Env,
    pub source_date_epoch: SourceDateEpoch,
    pub jobs: Jobs,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    pub build: String,
    pub out: String,
    pub tmp: String,
    pub sources: String,
    pub inputs: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub hostname: String,
    pub domainname: String,
    pub umask: u32,
    pub aslr: bool,
    pub network: String,
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Env {
    pub default_path: String,
    pub fixed: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDateEpoch {
    pub default: u64,
    pub spec_may_override: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    pub policy: String,
    pub max: u32,
    /// The descriptors (read end, write end) at which every build gets the
    /// shared GNU make jobserver's pipe (from v3 on; the profile's
    /// MAKEFLAGS names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobserver_fds: Option<[i32; 2]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub timeout_secs: u64,
    pub tmp_size_mib: u64,
    pub max_pids: u64,
    /// Size of the `/dev/shm` tmpfs (stated from v2 on; v1's sandbox used
    /// 256 MiB too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_mib: Option<u64>,
    /// RLIMIT_NOFILE (stated from v2 on; v1's sandbox set 4096 too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<u64>,
    /// Whether core dumps are allowed (stated from v2 on; never were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_dumps: Option<bool>,
    /// Memory of the whole build, in MiB (from v2 on; v1 has no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// What `/build` and `/out` may hold on disk, in MiB (from v2 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Size of the build log, in MiB (from v2 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_mib: Option<u64>,
}

impl Limits {
    /// Size of the `/dev/shm` tmpfs in MiB: the stated value, or what v1
    /// builds got.
    pub fn shm_mib(&self) -> u64 {
        self.shm_size_mib.unwrap_or(V1_SHM_SIZE_MIB)
    }

    /// RLIMIT_NOFILE: the stated value, or what v1 builds got.
    pub fn open_files(&self) -> u64 {
        self.max_open_files.unwrap_or(V1_MAX_OPEN_FILES)
    }

    /// Whether core dumps are allowed: the stated value, or v1's (no).
    pub fn cores(&self) -> bool {
        self.core_dumps.unwrap_or(V1_CORE_DUMPS)
    }
}

/// What the profile's policies need from the caller to produce the build's
/// environment.
#[derive(Debug, Clone)]
pub struct EnvInputs<'a> {
    /// PATH from the image config, if it has one.
    pub image_path: Option<&'a str>,
    /// The spec's SOURCE_DATE_EPOCH, if it sets one.
    pub source_date_epoch: Option<u64>,
    /// The job count (already resolved by [`Profile::jobs`]).
    pub jobs: u32,
    /// The spec's `[env]`.
    pub extra: &'a BTreeMap<String, String>,
}

/// Names the profile sets itself; a spec's `[env]` may not override them.
pub const RESERVED_ENV: &[&str] = &["HERMIT_JOBS", "SOURCE_DATE_EPOCH", "out", "PATH"];

impl Profile {
    /// The profile called `name`. Profiles are built in and immutable, so
    /// each is parsed once per process (a graph of builds asks for the
    /// same one per node).
    pub fn get(name: &str) -> Result<Profile, ProfileError> {
        static PARSED: OnceLock<Mutex<BTreeMap<String, Profile>>> = OnceLock::new();
        let parsed = PARSED.get_or_init(Default::default);
        if let Some(p) = parsed.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(p);
        }
        let p = Profile::parse(name, text(name)?)?;
        if let Ok(mut m) = parsed.lock() {
            m.insert(name.to_string(), p.clone());
        }
        Ok(p)
    }

    /// Reads a profile's TOML `text`; `name` names it in errors.
    pub fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(|e| ProfileError::Malformed {
            name: name.to_string(),
            source: Box::new(e),
        })?;
        if profile.format != FORMAT {
            return Err(ProfileError::Format {
                name: name.to_string(),
                found: profile.format,
            });
        }
        // Only v1 leaves these to the sandbox's old values.
        let l = &profile.limits;
        let missing = [
            ("limits.shm_size_mib", l.shm_size_mib.is_none()),
            ("limits.max_open_files", l.max_open_files.is_none()),
            ("limits.core_dumps", l.core_dumps.is_none()),
        ];
        if profile.name != "v1" {
            if let Some((what, _)) = missing.iter().find(|(_, m)| *m) {
                return Err(ProfileError::Incomplete {
                    name: name.to_string(),
                    what: what.to_string(),
                });
            }
        }
        if let Some([r, w]) = profile.jobs.jobserver_fds {
            let flags = profile.env.fixed.get("MAKEFLAGS").map(String::as_str);
            let auth = format!("--jobserver-auth={r},{w}");
            let ok = (3..=9).contains(&r)
                && (3..=9).contains(&w)
                && r != w
                && flags.is_some_and(|f| f.split(' ').any(|a| a == auth));
            if !ok {
                return Err(ProfileError::Incomplete {
                    name: name.to_string(),
                    what: format!(
                        "jobs.jobserver_fds as two numbers 3–9 that env.fixed.MAKEFLAGS names ({auth})"
                    ),
                });
            }
        }
        Ok(profile)
    }

    /// The profile called `name`, checked to have `digest` (`sha256:<hex>`).
    pub fn get_pinned(name: &str, digest: &str) -> Result<Profile, ProfileError> {
        let actual = self::digest(name)?;
        if actual != digest {
            return Err(ProfileError::DigestMismatch {
                name: name.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Profile::get(name)
    }

    /// The default profile.
    pub fn default_profile() -> Result<Profile, ProfileError> {
        Profile::get(DEFAULT)
    }

    /// The profile as JSON with keys sorted at every level, the form records embed.
    pub fn to_canonical_json(&self) -> serde_json::Value {
        // serde_json's Map is a BTreeMap (no preserve_order), so going through
        // Value sorts every object's keys.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// This profile's digest.
    pub fn digest(&self) -> Result<String, ProfileError> {
        digest(&self.name)
    }

    /// HERMIT_JOBS under this profile's policy: `requested` if given, else
    /// `host_cpus`, capped at the profile's maximum and at least 1.
    pub fn jobs(&self, requested: Option<u32>, host_cpus: u32) -> u32 {
        requested
            .unwrap_or(host_cpus)
            .clamp(1, self.jobs.max.max(1))
    }

    /// The exact environment handed to the build, sorted by name.
    /// Returns the name of a spec variable that tries to override a
    /// reserved one as an error.
    pub fn environment(&self, inputs: &EnvInputs<'_>) -> Result<BTreeMap<String, String>, String> {
        let mut env = self.env.fixed.clone();
        for (k, v) in inputs.extra {
            if RESERVED_ENV.contains(&k.as_str()) || env.contains_key(k) {
                return Err(k.clone());
            }
            env.insert(k.clone(), v.clone());
        }
        env.insert(
            "PATH".into(),
            inputs
                .image_path
                .unwrap_or(&self.env.default_path)
                .to_string(),
        );
        let sde = match inputs.source_date_epoch {
            Some(v) if self.source_date_epoch.spec_may_override => v,
            _ => self.source_date_epoch.default,
        };
        env.insert("SOURCE_DATE_EPOCH".into(), sde.to_string());
        env.insert("HERMIT_JOBS".into(), inputs.jobs.to_string());
        env.insert("out".into(), self.paths.out.clone());
        Ok(env)
    }
}

/// Names of every profile this hermit knows, oldest first.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|(n, _)| *n).collect()
}

/// The exact TOML text of a profile.
pub fn text(name: &str) -> Result<&'static str, ProfileError> {
    PROFILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| ProfileError::Unknown {
            name: name.to_string(),
            known: names().join(", "),
        })
}

/// `sha256:<hex>` of a profile's exact TOML bytes.
pub fn digest(name: &str) -> Result<String, ProfileError> {
    static DIGESTS: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let digests = DIGESTS.get_or_init(Default::default);
    if let Some(d) = digests.lock().ok().and_then(|m| m.get(name).cloned()) {
        return Ok(d);
    }
    let d = format!("sha256:{}", hex::encode(Sha256::digest(text(name)?)));
    if let Ok(mut m) = digests.lock() {
        m.insert(name.to_string(), d.clone());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_parses_and_names_itself() {
        for name in names() {
            let p = Profile::get(name).unwrap();
            assert_eq!(p.name, name);
        }
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let err = Profile::get("v0").unwrap_err().to_string();
        assert!(err.contains("unknown profile \"v0\""), "{err}");
        assert!(err.contains("v1"), "{err}");
    }

    #[test]
    fn pinned_digest_is_checked() {
        let d = digest("v1").unwrap();
        assert!(Profile::get_pinned("v1", &d).is_ok());
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            Profile::get_pinned("v1", &wrong),
            Err(ProfileError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn environment_is_exact_and_reserved_names_are_refused() {
        let p = Profile::get("v1").unwrap();
        let mut extra = BTreeMap::new();
        extra.insert("CFLAGS".to_string(), "-O2".to_string());
        let env = p
            .environment(&EnvInputs {
                image_path: None,
                source_date_epoch: None,
                jobs: p.jobs(None, 2),
                extra: &extra,
            })
            .unwrap();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "CFLAGS",
                "HERMIT_JOBS",
                "HOME",
                "LANG",
                "LC_ALL",
                "LOGNAME",
                "PATH",
                "SHELL",
                "SOURCE_DATE_EPOCH",
                "TERM",
                "TMPDIR",
                "TZ",
                "USER",
                "out"
            ]
        );
        assert_eq!(env["SOURCE_DATE_EPOCH"], "315532800");
        assert_eq!(env["HERMIT_JOBS"], "2");
        for bad in ["PATH", "HOME", "out", "SOURCE_DATE_EPOCH"] {
            let mut extra = BTreeMap::new();
            extra.insert(bad.to_string(), "x".to_string());
            let r = p.environment(&EnvInputs {
                image_path: None,
                source_date_epoch: None,
                jobs: 1,
                extra: &extra,
            });
            assert_eq!(r, Err(bad.to_string()));
        }
    }

    #[test]
    fn v2_states_the_limits_and_v1_does_not() {
        let v1 = Profile::get("v1").unwrap();
        assert_eq!(v1.limits.memory_mib, None);
        assert_eq!(v1.limits.disk_mib, None);
        assert_eq!(v1.limits.log_mib, None);
        let v2 = Profile::get("v2").unwrap();
        assert_eq!(v2.limits.memory_mib, Some(8192));
        assert_eq!(v2.limits.disk_mib, Some(20480));
        assert_eq!(v2.limits.log_mib, Some(64));
        assert_eq!(v2.limits.shm_size_mib, Some(256));
        assert_eq!(v2.limits.max_open_files, Some(4096));
        assert_eq!(v2.limits.core_dumps, Some(false));
        // Apart from the limits (and name, description), v2 is v1.
        let mut same = v2.clone();
        same.name = v1.name.clone();
        same.description = v1.description.clone();
        same.limits = v1.limits.clone();
        assert_eq!(same, v1);
    }

    #[test]
    fn v3_is_v2_plus_the_jobserver() {
        assert_eq!(DEFAULT, "v3");
        let v2 = Profile::get("v2").unwrap();
        let v3 = Profile::get("v3").unwrap();
        assert_eq!(v2.jobs.jobserver_fds, None);
        assert_eq!(v3.jobs.jobserver_fds, Some([3, 4]));
        assert_eq!(v3.env.fixed["MAKEFLAGS"], " -j --jobserver-auth=3,4");
        let mut same = v3.clone();
        same.name = v2.name.clone();
        same.description = v2.description.clone();
        same.jobs.jobserver_fds = None;
        same.env.fixed.remove("MAKEFLAGS");
        assert_eq!(same, v2);
    }

    #[test]
    fn v1_values_fill_only_what_v1_leaves_unstated() {
        for name in names() {
            let p = Profile::get(name).unwrap();
            assert_eq!(p.limits.shm_mib(), 256, "{name}");
            assert_eq!(p.limits.open_files(), 4096, "{name}");
            assert!(!p.limits.cores(), "{name}");
        }
        let v2 = text("v2").unwrap();
        let cut = v2.replace("shm_size_mib = 256", "");
        let e = Profile::parse("v2", &cut).unwrap_err().to_string();
        assert!(e.contains("limits.shm_size_mib"), "{e}");
        let v3 = text("v3").unwrap();
        let wrong = v3.replace("jobserver_fds = [3, 4]", "jobserver_fds = [5, 6]");
        let e = Profile::parse("v3", &wrong).unwrap_err().to_string();
        assert!(e.contains("jobserver_fds"), "{e}");
    }

    #[test]
    fn jobs_policy_caps() {
        let p = Profile::get("v1").unwrap();
        assert_eq!(p.jobs(None, 2), 2);
        assert_eq!(p.jobs(Some(0), 2), 1);
        assert_eq!(p.jobs(Some(1000), 2), 64);
    }
}

#[cfg(test)]
mod fuzz;
