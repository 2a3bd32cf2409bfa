//! Debian toolchain images, bootstrapped with mmdebstrap.
//!
//! `debian = { suite = "bookworm", include = ["gcc", "make"] }` becomes a
//! single-layer image: mmdebstrap (`--variant=essential` plus the include
//! list, `SOURCE_DATE_EPOCH` fixed) writes a root filesystem tar, which goes
//! into the store as the layer; a canonical config and manifest make it an
//! OCI image. mmdebstrap's output is bit-for-bit reproducible for the same
//! package set, and `hermit.lock` pins the resulting image digest and every
//! package (name, version, architecture, sha256 of the .deb), so later builds
//! use exactly that image rather than whatever the mirror serves that day.
//!
//! Packages come from the host's apt sources (`/etc/apt/sources.list` and
//! `/etc/apt/sources.list.d/`), unless the spec names a `mirror`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use hermit_store::oci::{self, Image};
use hermit_store::{Digest, Store};
use serde::{Deserialize, Serialize};

/// PATH of a Debian root filesystem.
pub const DEBIAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a spec asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianRequest {
    pub suite: String,
    /// Sorted and without duplicates (the order packages are named in does
    /// not change the image).
    pub include: Vec<String>,
    pub mirror: Option<String>,
}

impl DebianRequest {
    pub fn new(suite: &str, include: &[String], mirror: Option<&str>) -> DebianRequest {
        let mut include = include.to_vec();
        include.sort();
        include.dedup();
        DebianRequest {
            suite: suite.to_string(),
            include,
            mirror: mirror.map(str::to_string),
        }
    }
}

/// One installed package, as pinned in `hermit.lock`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

/// A bootstrapped image and what it holds.
#[derive(Debug)]
pub struct Bootstrapped {
    pub image: Image,
    pub packages: Vec<Package>,
}

/// Bootstraps the requested Debian into the store.
pub fn bootstrap(
    store: &Store,
    req: &DebianRequest,
    source_date_epoch: u64,
) -> anyhow::Result<Bootstrapped> {
    which("mmdebstrap")
        .context("mmdebstrap is not installed; install it with: apt-get install mmdebstrap")?;
    let work = tempfile::Builder::new()
        .prefix("debian-")
        .tempdir_in(store.tmp_dir())
        .with_context(|| format!("creating a work directory in {}", store.tmp_dir().display()))?;
    let debs = work.path().join("debs");
    fs::create_dir(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let out = work.path().join("rootfs.tar");
    let log = work.path().join("mmdebstrap.log");

    let mirrors = match &req.mirror {
        Some(m) => vec![m.clone()],
        None => host_sources(&req.suite)?,
    };
    let mode = if nix::unistd::geteuid().is_root() {
        "root"
    } else {
        unshare_ready()?;
        "unshare"
    };
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--mode={mode}"))
        .arg("--variant=essential")
        .arg("--format=tar")
        // Keep the essential set's .debs so the hook below can hash them.
        .arg("--skip=essential/unlink")
        // A special hook: mmdebstrap itself, outside the chroot and as the
        // calling user, writes the files into `debs`. A plain `cp` in a hook
        // runs as the namespace's fake root in unshare mode, which is not
        // the user who owns `debs`, and is refused.
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            shell_quote(&debs)
        ));
    if !req.include.is_empty() {
        cmd.arg(format!("--include={}", req.include.join(",")));
    }
    cmd.arg(&req.suite).arg(&out).args(&mirrors);
    cmd.env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?);
    let status = cmd.status().context("running mmdebstrap")?;
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "mmdebstrap failed ({status}) bootstrapping {} with {:?}; its last lines:\n{}",
            req.suite,
            req.include,
            tail.join("\n")
        );
    }

    let mut f = fs::File::open(&out).with_context(|| format!("opening {}", out.display()))?;
    let layer = store
        .add_reader(&mut f, &out.display().to_string(), None, None)
        .context("adding the bootstrapped root filesystem to the store")?;
    let source = format!("debian:{} include={}", req.suite, req.include.join(","));
    let image = oci::image_from_rootfs_tar(store, &layer, &source, DEBIAN_PATH)
        .context("making an image of the bootstrapped root filesystem")?;
    let packages = packages(&debs)?;
    Ok(Bootstrapped { image, packages })
}

/// What mmdebstrap's `--mode=unshare` needs from the host for an ordinary
/// user: newuidmap/newgidmap and a subordinate id range in /etc/subuid and
/// /etc/subgid (its fake root and the image's users live there).
fn unshare_ready() -> anyhow::Result<()> {
    which("newuidmap").context(
        "bootstrapping a Debian toolchain as an ordinary user needs newuidmap and newgidmap; install them with: apt-get install uidmap",
    )?;
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        let listed = text.lines().any(|l| {
            let owner = l.split(':').next().unwrap_or("");
            owner == name || owner == uid.to_string()
        });
        if !listed {
            bail!(
                "bootstrapping a Debian toolchain as an ordinary user needs a subordinate id range for {name} in {file} (mmdebstrap --mode=unshare maps the image's users there); \
                 an administrator adds one with: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name} (pick a range no other user has)"
            );
        }
    }
    Ok(())
}

/// The host's apt source files, checked to name `suite`.
fn host_sources(suite: &str) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if main.is_file() {
        files.push(main.to_path_buf());
    }
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut names_suite = false;
    let mut kept = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let meaningful = text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if !meaningful {
            continue;
        }
        if text.split(|c: char| c.is_whitespace()).any(|w| w == suite) {
            names_suite = true;
        }
        kept.push(f.display().to_string());
    }
    if !names_suite {
        bail!(
            "the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) do not list suite {suite:?}; \
             name a mirror in the spec: debian = {{ suite = \"{suite}\", include = [...], mirror = \"http://<debian mirror>/debian\" }}"
        );
    }
    Ok(kept)
}

/// Reads name, version and architecture of every .deb in `dir` and hashes it.
fn packages(dir: &Path) -> anyhow::Result<Vec<Package>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if p.extension().is_none_or(|x| x != "deb") {
            continue;
        }
        let o = Command::new("dpkg-deb")
            .args([
                "--showformat=${Package}\t${Version}\t${Architecture}",
                "--show",
            ])
            .arg(&p)
            .output()
            .with_context(|| format!("running dpkg-deb on {}", p.display()))?;
        if !o.status.success() {
            bail!(
                "dpkg-deb could not read {}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let line = String::from_utf8_lossy(&o.stdout);
        let mut parts = line.trim().split('\t');
        let (Some(name), Some(version), Some(arch)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!(
                "dpkg-deb printed an unexpected line for {}: {line:?}",
                p.display()
            );
        };
        let mut f = fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let mut h = hermit_store::Hasher::new();
        std::io::copy(&mut f, &mut HashWriter(&mut h))
            .with_context(|| format!("reading {}", p.display()))?;
        let d: Digest = h.finish();
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            architecture: arch.to_string(),
            sha256: d.hex(),
        });
    }
    out.sort();
    Ok(out)
}

struct HashWriter<'a>(&'a mut hermit_store::Hasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn which(prog: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("{prog} not found on PATH"))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_order_does_not_matter() {
        let a = DebianRequest::new(
            "bookworm",
            &["make".into(), "gcc".into(), "gcc".into()],
            None,
        );
        let b = DebianRequest::new("bookworm", &["gcc".into(), "make".into()], None);
        assert_eq!(a, b);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(Path::new("/a b/c'd")), r"'/a b/c'\''d'");
    }
}
