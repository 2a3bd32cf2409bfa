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
    /// The .deb's sha256 (hex), as the archive's `Packages` index gives it;
    /// the store keeps the .deb as the blob of this digest.
    pub sha256: String,
    /// Where the .deb lies below the archive's root: the `Filename` of its
    /// `Packages` entry, e.g. `pool/main/m/make-dfsg/make_4.3-4.1_amd64.deb`
    /// (lock version 2; absent in version-1 locks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The .deb's size in bytes (lock version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A bootstrapped image and what it holds.
#[derive(Debug)]
pub struct Bootstrapped {
    pub image: Image,
    pub packages: Vec<Package>,
    /// The sha256 of every `InRelease` (or `Release`) apt fetched for it
    /// ([`crate::debreuse::releases_in_lists`]).
    pub releases: Vec<Digest>,
}

/// Bootstraps the requested Debian into the store. Every installed .deb
/// is kept in the store as the blob of its sha256 (and pinned by a gc root
/// named `debian-<manifest hex>`), and its place in the archive (pool path,
/// size) is read from apt's own indexes, so that the image can be made
/// again from the lock alone ([`crate::debrestore`]).
pub fn bootstrap(
    store: &Store,
    req: &DebianRequest,
    source_date_epoch: u64,
) -> anyhow::Result<Bootstrapped> {
    let mirrors = match &req.mirror {
        Some(m) => vec![m.clone()],
        None => host_sources(&req.suite)?,
    };
    let run = mmdebstrap(store, req, source_date_epoch, &mirrors, false)?;
    let packages = packages(store, &run.debs(), &run.lists())?;
    keep_debs(store, &run.image, &packages)?;
    let releases = crate::debreuse::releases_in_lists(&run.lists());
    Ok(Bootstrapped {
        image: run.image,
        packages,
        releases,
    })
}

/// One mmdebstrap run: the image it made, and its work directory with the
/// .debs it installed (`debs/`) and apt's indexes (`lists/`).
pub(crate) struct Run {
    pub image: Image,
    work: tempfile::TempDir,
}

impl Run {
    pub fn debs(&self) -> PathBuf {
        self.work.path().join("debs")
    }
    pub fn lists(&self) -> PathBuf {
        self.work.path().join("lists")
    }
}

/// Runs mmdebstrap for `req` over the apt sources `mirrors` (URLs, apt
/// source lines or sources files) and makes an image of its root
/// filesystem. The same package set and `source_date_epoch` give the same
/// image whatever the sources were: the image keeps no apt source list
/// (a hook removes it) and mmdebstrap removes apt's indexes itself.
/// `local_only`: the sources are on loopback, so proxies are not used.
pub(crate) fn mmdebstrap(
    store: &Store,
    req: &DebianRequest,
    source_date_epoch: u64,
    mirrors: &[String],
    local_only: bool,
) -> anyhow::Result<Run> {
    which("mmdebstrap")
        .context("mmdebstrap is not installed; install it with: apt-get install mmdebstrap")?;
    let work = tempfile::Builder::new()
        .prefix("debian-")
        .tempdir_in(store.tmp_dir())
        .with_context(|| format!("creating a work directory in {}", store.tmp_dir().display()))?;
    let debs = work.path().join("debs");
    fs::create_dir(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let lists = work.path().join("lists");
    fs::create_dir(&lists).with_context(|| format!("creating {}", lists.display()))?;
    let out = work.path().join("rootfs.tar");
    let log = work.path().join("mmdebstrap.log");

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
        // Special hooks: mmdebstrap itself, outside the chroot and as the
        // calling user, writes the files into `debs` and `lists`. A plain
        // `cp` in a hook runs as the namespace's fake root in unshare mode,
        // which is not the user who owns `debs`, and is refused.
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            shell_quote(&debs)
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/lib/apt/lists {}",
            shell_quote(&lists)
        ))
        // The image must not depend on where its packages came from: no
        // apt source list (it would name the mirror) stays in it.
        .arg(r#"--customize-hook=rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*"#);
    if !req.include.is_empty() {
        cmd.arg(format!("--include={}", req.include.join(",")));
    }
    cmd.arg(&req.suite).arg(&out).args(mirrors);
    if local_only {
        for v in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(v);
        }
    }
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
    Ok(Run { image, work })
}

/// The gc root that keeps an image's .debs in the store.
pub fn debs_root_name(manifest: &Digest) -> String {
    format!("debian-{}", manifest.hex())
}

/// Pins the .debs of `image` (already in the store) with a gc root, so
/// that `hermit store gc` keeps them as long as the root is there.
pub(crate) fn keep_debs(store: &Store, image: &Image, packages: &[Package]) -> anyhow::Result<()> {
    let mut text = format!(
        "# the .debs of the Debian toolchain image {} (`hermit store root rm {}` releases them)\n",
        image.manifest,
        debs_root_name(&image.manifest)
    );
    for p in packages {
        text.push_str(&format!(
            "sha256:{} {}_{}_{}\n",
            p.sha256, p.name, p.version, p.architecture
        ));
    }
    let dest = store
        .base()
        .join("gcroots")
        .join(debs_root_name(&image.manifest));
    hermit_store::store::write_small_atomic(store.tmp_dir(), &dest, text.as_bytes())
        .with_context(|| format!("writing the gc root {}", dest.display()))?;
    Ok(())
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
pub(crate) fn host_sources(suite: &str) -> anyhow::Result<Vec<String>> {
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

/// Name, version and architecture of a .deb (`dpkg-deb --show`).
pub(crate) fn deb_identity(p: &Path) -> anyhow::Result<(String, String, String)> {
    let o = Command::new("dpkg-deb")
        .args([
            "--showformat=${Package}\t${Version}\t${Architecture}",
            "--show",
        ])
        .arg(p)
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
    let (Some(name), Some(version), Some(arch)) = (parts.next(), parts.next(), parts.next()) else {
        bail!(
            "dpkg-deb printed an unexpected line for {}: {line:?}",
            p.display()
        );
    };
    Ok((name.to_string(), version.to_string(), arch.to_string()))
}

/// Reads name, version and architecture of every .deb in `dir`, adds it to
/// the store (the blob of its sha256) and finds its pool path and size in
/// apt's indexes in `lists`.
fn packages(store: &Store, dir: &Path, lists: &Path) -> anyhow::Result<Vec<Package>> {
    let index = pool_index(lists)?;
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if p.extension().is_none_or(|x| x != "deb") {
            continue;
        }
        let (name, version, architecture) = deb_identity(&p)?;
        let added = store
            .add_file(&p)
            .with_context(|| format!("adding {} to the store", p.display()))?;
        let sha256 = added.digest.hex();
        let (pool, size) = match index.get(&sha256) {
            Some((pool, size)) => (Some(pool.clone()), Some(*size)),
            None => (None, Some(added.size)),
        };
        out.push(Package {
            name,
            version,
            architecture,
            sha256,
            pool,
            size,
        });
    }
    out.sort();
    Ok(out)
}

/// sha256 → (Filename, Size) of every entry of the uncompressed `Packages`
/// indexes apt left in `lists`.
fn pool_index(lists: &Path) -> anyhow::Result<std::collections::HashMap<String, (String, u64)>> {
    let mut out = std::collections::HashMap::new();
    let rd = match fs::read_dir(lists) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", lists.display())),
    };
    for e in rd {
        let p = e
            .with_context(|| format!("listing {}", lists.display()))?
            .path();
        if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("_Packages"))
        {
            continue;
        }
        let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        for para in text.split("\n\n") {
            let field = |k: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                    .map(str::trim)
            };
            if let (Some(f), Some(h), Some(n)) = (field("Filename"), field("SHA256"), field("Size"))
            {
                if let Ok(n) = n.parse::<u64>() {
                    out.entry(h.to_string()).or_insert((f.to_string(), n));
                }
            }
        }
    }
    Ok(out)
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
