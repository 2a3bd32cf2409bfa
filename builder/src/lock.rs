//! `hermit.lock`: pins what a spec leaves open.
//!
//! A spec names its toolchain by what it wants (`debian = { suite, include }`,
//! an OCI layout path, a registry reference); the lock records what that
//! resolved to — the image's manifest, config and layer digests, and for a
//! bootstrapped Debian every package with its version and .deb sha256 — so
//! every later build uses exactly that image. The lock also keeps a copy of
//! the request it was made for: when the spec's request changes, the lock no
//! longer matches and hermit refuses to build, naming what changed, until
//! `hermit lock` refreshes it.
//!
//! The file is TOML with a format version (`lock_version`) and keys sorted at
//! every level, so the same lock is always the same bytes.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use hermit_store::oci::Image;
use hermit_store::Digest;
use serde::{Deserialize, Serialize};

use crate::debian::{DebianRequest, Package};

/// The lock format this hermit writes.
///
/// - 1: the image, and for a bootstrapped Debian every package's name,
///   version, architecture and .deb sha256.
/// - 2: adds, for a bootstrapped Debian, each package's pool path and size
///   (where to find the .deb in an archive years later) and the
///   `source_date_epoch` of the bootstrap, so that the image can be made
///   again from the lock alone (`hermit toolchain restore`).
pub const LOCK_VERSION: u32 = 2;

/// Every lock format this hermit reads.
pub const READS: &[u32] = &[1, 2];

const HEADER: &str = "# hermit.lock: written by `hermit lock`; do not edit by hand.\n\
# It pins the toolchain image (and, for a bootstrapped Debian, every package).\n\n";

/// What a spec asks for as its toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolchainRequest {
    /// `image = "HOST/NAME@sha256:…"`
    Image { reference: String },
    /// `oci = "PATH"` with `digest`
    Oci { path: String, digest: Digest },
    /// `debian = { suite, include, mirror }`
    Debian(DebianRequest),
}

impl fmt::Display for ToolchainRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolchainRequest::Image { reference } => write!(f, "image = {reference:?}"),
            ToolchainRequest::Oci { path, digest } => {
                write!(f, "oci = {path:?}, digest = \"{digest}\"")
            }
            ToolchainRequest::Debian(d) => {
                write!(
                    f,
                    "debian = {{ suite = {:?}, include = {:?}",
                    d.suite, d.include
                )?;
                if let Some(m) = &d.mirror {
                    write!(f, ", mirror = {m:?}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolchainKind {
    Image,
    Oci,
    Debian,
}

/// The lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub lock_version: u32,
    pub toolchain: LockedToolchain,
}

/// The toolchain as requested and as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedToolchain {
    pub kind: ToolchainKind,
    // The request (which fields depends on `kind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    // What it resolved to.
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Digest>,
    pub platform: String,
    /// The SOURCE_DATE_EPOCH a Debian toolchain was bootstrapped with
    /// (lock version 2; a version-1 lock used the profile's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    #[serde(default, rename = "package", skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Package>,
}

/// Why a lock cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: lock_version {found} is not one this hermit reads ({READS:?}); run `hermit lock` to rewrite it")]
    Version { path: String, found: u32 },
    #[error("{path}: the lock no longer matches the spec: {changes}; run `hermit lock SPEC` to refresh it")]
    Stale { path: String, changes: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Lock {
    /// A lock for `request` resolved to `image` (with `packages` for Debian).
    pub fn new(request: &ToolchainRequest, image: &Image, packages: Vec<Package>) -> Lock {
        let mut t = LockedToolchain {
            kind: ToolchainKind::Image,
            reference: None,
            path: None,
            pin: None,
            suite: None,
            include: None,
            mirror: None,
            manifest: image.manifest,
            config: image.config,
            layers: image.layers.iter().map(|l| l.digest).collect(),
            platform: image.platform.clone(),
            source_date_epoch: None,
            packages,
        };
        match request {
            ToolchainRequest::Image { reference } => t.reference = Some(reference.clone()),
            ToolchainRequest::Oci { path, digest } => {
                t.kind = ToolchainKind::Oci;
                t.path = Some(path.clone());
                t.pin = Some(*digest);
            }
            ToolchainRequest::Debian(d) => {
                t.kind = ToolchainKind::Debian;
                t.suite = Some(d.suite.clone());
                t.include = Some(d.include.clone());
                t.mirror = d.mirror.clone();
            }
        }
        Lock {
            lock_version: LOCK_VERSION,
            toolchain: t,
        }
    }

    /// Records the SOURCE_DATE_EPOCH a Debian toolchain was bootstrapped
    /// with (nothing for other kinds).
    pub fn bootstrapped_with(mut self, source_date_epoch: u64) -> Lock {
        if self.toolchain.kind == ToolchainKind::Debian {
            self.toolchain.source_date_epoch = Some(source_date_epoch);
        }
        self
    }

    /// The request this lock was made for.
    pub fn request(&self, path: &str) -> Result<ToolchainRequest, LockError> {
        let t = &self.toolchain;
        let missing = |field: &str| LockError::Invalid {
            path: path.to_string(),
            message: format!(
                "toolchain of kind {:?} has no {field}; run `hermit lock` to rewrite it",
                t.kind
            ),
        };
        Ok(match t.kind {
            ToolchainKind::Image => ToolchainRequest::Image {
                reference: t.reference.clone().ok_or_else(|| missing("reference"))?,
            },
            ToolchainKind::Oci => ToolchainRequest::Oci {
                path: t.path.clone().ok_or_else(|| missing("path"))?,
                digest: t.pin.ok_or_else(|| missing("pin"))?,
            },
            ToolchainKind::Debian => ToolchainRequest::Debian(DebianRequest::new(
                t.suite.as_deref().ok_or_else(|| missing("suite"))?,
                t.include.as_deref().unwrap_or_default(),
                t.mirror.as_deref(),
            )),
        })
    }

    /// Refuses a lock made for a different request, naming what changed.
    pub fn check(&self, path: &str, wanted: &ToolchainRequest) -> Result<(), LockError> {
        let have = self.request(path)?;
        if have == *wanted {
            return Ok(());
        }
        let changes = match (&have, wanted) {
            (ToolchainRequest::Debian(a), ToolchainRequest::Debian(b)) => {
                let mut c = Vec::new();
                if a.suite != b.suite {
                    c.push(format!("suite was {:?}, is now {:?}", a.suite, b.suite));
                }
                let added: Vec<&String> = b
                    .include
                    .iter()
                    .filter(|p| !a.include.contains(p))
                    .collect();
                let removed: Vec<&String> = a
                    .include
                    .iter()
                    .filter(|p| !b.include.contains(p))
                    .collect();
                if !added.is_empty() {
                    c.push(format!("include gained {added:?}"));
                }
                if !removed.is_empty() {
                    c.push(format!("include lost {removed:?}"));
                }
                if a.mirror != b.mirror {
                    c.push(format!("mirror was {:?}, is now {:?}", a.mirror, b.mirror));
                }
                c.join(", ")
            }
            _ => format!("toolchain was `{have}`, is now `{wanted}`"),
        };
        Err(LockError::Stale {
            path: path.to_string(),
            changes,
        })
    }

    /// Parses a lock file's text.
    pub fn parse(path: &str, text: &str) -> Result<Lock, LockError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            lock_version: Option<u32>,
        }
        let v: VersionOnly = toml::from_str(text).map_err(|e| LockError::Invalid {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        match v.lock_version {
            Some(v) if READS.contains(&v) => {}
            Some(found) => {
                return Err(LockError::Version {
                    path: path.to_string(),
                    found,
                })
            }
            None => {
                return Err(LockError::Invalid {
                    path: path.to_string(),
                    message: "no lock_version; run `hermit lock` to rewrite it".into(),
                })
            }
        }
        toml::from_str(text).map_err(|e| LockError::Invalid {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// The canonical text: header comment, then keys sorted at every level.
    pub fn to_text(&self) -> anyhow::Result<String> {
        // toml::Value's tables are BTreeMaps, so this sorts every key.
        let v = toml::Value::try_from(self).context("serialising the lock")?;
        Ok(format!(
            "{HEADER}{}",
            toml::to_string(&v).context("serialising the lock")?
        ))
    }

    /// Reads the lock at `path`, if there is one.
    pub fn read(path: &Path) -> anyhow::Result<Option<Lock>> {
        match crate::limits::read_text(path, crate::limits::MAX_SPEC) {
            Ok(text) => Ok(Some(Lock::parse(&path.display().to_string(), &text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the lock atomically (temp file beside it, fsync, rename).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = self.to_text()?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", tmp.path().display()))?;
        tmp.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermit_store::oci::Layer;

    fn image() -> Image {
        Image {
            source: "test".into(),
            index: None,
            manifest: Digest::of(b"manifest"),
            config: Digest::of(b"config"),
            layers: vec![Layer {
                digest: Digest::of(b"layer"),
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                size: 5,
            }],
            platform: "linux/amd64".into(),
            path_env: None,
        }
    }

    fn debian() -> ToolchainRequest {
        ToolchainRequest::Debian(DebianRequest::new(
            "bookworm",
            &["make".into(), "gcc".into()],
            None,
        ))
    }

    fn packages() -> Vec<Package> {
        vec![
            Package {
                name: "gcc".into(),
                version: "4:12.2.0-3".into(),
                architecture: "amd64".into(),
                sha256: Digest::of(b"gcc").hex(),
                pool: Some("pool/main/g/gcc-defaults/gcc_12.2.0-3_amd64.deb".into()),
                size: Some(5196),
            },
            Package {
                name: "make".into(),
                version: "4.3-4.1".into(),
                architecture: "amd64".into(),
                sha256: Digest::of(b"make").hex(),
                pool: Some("pool/main/m/make-dfsg/make_4.3-4.1_amd64.deb".into()),
                size: Some(396824),
            },
        ]
    }

    fn golden(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/locks")
            .join(name)
    }

    #[test]
    fn golden_debian_lock() {
        let lock = Lock::new(&debian(), &image(), packages()).bootstrapped_with(1);
        let text = lock.to_text().unwrap();
        let path = golden("debian.lock");
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, want, "HERMIT_BLESS=1 rewrites {}", path.display());
        assert_eq!(Lock::parse("debian.lock", &want).unwrap(), lock);
    }

    /// A lock written by an older hermit (version 1: no pool paths, sizes
    /// or source_date_epoch) still reads, and asks for the same toolchain.
    #[test]
    fn version_1_lock_still_reads() {
        let text = std::fs::read_to_string(golden("debian-v1.lock")).unwrap();
        let lock = Lock::parse("debian-v1.lock", &text).unwrap();
        assert_eq!(lock.lock_version, 1);
        assert_eq!(lock.request("debian-v1.lock").unwrap(), debian());
        assert_eq!(lock.toolchain.source_date_epoch, None);
        let mut old = packages();
        for p in &mut old {
            p.pool = None;
            p.size = None;
        }
        assert_eq!(lock.toolchain.packages, old);
    }

    #[test]
    fn golden_oci_lock() {
        let req = ToolchainRequest::Oci {
            path: "images/busybox".into(),
            digest: Digest::of(b"manifest"),
        };
        let lock = Lock::new(&req, &image(), vec![]);
        let text = lock.to_text().unwrap();
        let path = golden("oci.lock");
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(text, std::fs::read_to_string(&path).unwrap());
        assert_eq!(lock.request("oci.lock").unwrap(), req);
    }

    #[test]
    fn stale_lock_names_what_changed() {
        let lock = Lock::new(&debian(), &image(), packages());
        assert!(lock.check("hermit.lock", &debian()).is_ok());
        let wanted = ToolchainRequest::Debian(DebianRequest::new(
            "bookworm",
            &["gcc".into(), "perl".into()],
            None,
        ));
        let err = lock.check("hermit.lock", &wanted).unwrap_err().to_string();
        assert!(err.contains("include gained [\"perl\"]"), "{err}");
        assert!(err.contains("include lost [\"make\"]"), "{err}");
        assert!(err.contains("hermit lock"), "{err}");
        let other = ToolchainRequest::Image {
            reference: format!("127.0.0.1:5000/x@{}", Digest::of(b"m")),
        };
        let err = lock.check("hermit.lock", &other).unwrap_err().to_string();
        assert!(err.contains("toolchain was `debian"), "{err}");
    }

    #[test]
    fn wrong_version_and_unknown_fields_are_refused() {
        let err = Lock::parse("x.lock", "lock_version = 9\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lock_version 9"), "{err}");
        let text = Lock::new(&debian(), &image(), packages())
            .to_text()
            .unwrap()
            + "\nsurprise = 1\n";
        let err = Lock::parse("x.lock", &text).unwrap_err().to_string();
        assert!(err.contains("surprise"), "{err}");
    }
}
