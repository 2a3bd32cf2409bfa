//! Debian bootstraps reused across specs without a lock.
//!
//! A spec without `hermit.lock` whose `debian` toolchain was already
//! bootstrapped from the same state of the archive gets that image again
//! instead of a new bootstrap. "The same state" is the request (suite,
//! sorted include list, mirror, architecture, `SOURCE_DATE_EPOCH`, the
//! bootstrap's options, mmdebstrap's version, the apt sources used) and the
//! sha256 of every `InRelease` (or `Release`) those sources serve right now:
//! a changed archive publishes a new `InRelease`, which makes a new key and
//! a new bootstrap.
//!
//! The index lives in the store, `v1/debian-reuse/<key hex>.json`, one entry
//! per key, written after a bootstrap whose apt fetched exactly the
//! `InRelease` files hermit fetched before it (so the key is the state the
//! image was really made from). An entry holds its key's input, the layer
//! and manifest digests and the packages for the lock. It is a cache, not a
//! root: it keeps nothing alive, and an entry whose image is gone is a miss.
//!
//! An entry is never trusted. Before it is used, its key input must hash to
//! its file name and equal the input computed now; the layer blob is hashed
//! (it must be the entry's layer), the image is made again from it (a pure
//! function of the layer, [`oci::rootfs_tar_image`]) and must have the
//! entry's manifest digest; the packages the entry names must be exactly
//! those the layer's `var/lib/dpkg/status` lists as installed (name,
//! version, architecture), and each one's .deb must be in the store. Any
//! failure is a miss: hermit bootstraps as if there were no entry.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use hermit_store::oci::{self, Image};
use hermit_store::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::debian::{self, DebianRequest, Package};
use crate::net::NetArgs;

/// The version of the key input and entry format.
const REUSE_VERSION: u32 = 1;
/// The store directory of the index.
pub const INDEX_DIR: &str = "debian-reuse";
/// The bootstrap's own options (see [`debian::mmdebstrap`]); bump when
/// they change what an image holds.
const BOOTSTRAP_OPTIONS: &str = "variant=essential;no-apt-sources;v1";
/// Largest `InRelease`/`Release` hermit reads, and largest entry.
const MAX_RELEASE: usize = 32 << 20;
const MAX_ENTRY: u64 = 8 << 20;

/// Installed packages: (name, version, architecture).
type Installed = BTreeSet<(String, String, String)>;

/// Everything the key is made of; kept in the entry, compact JSON with
/// sorted keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    pub reuse_version: u32,
    pub suite: String,
    pub include: Vec<String>,
    pub mirror: Option<String>,
    pub architecture: String,
    pub source_date_epoch: u64,
    pub bootstrap: String,
    pub mmdebstrap: String,
    /// `URL-of-InRelease` for every apt source, sorted.
    pub sources: Vec<String>,
    /// The sha256 of each source's `InRelease` (or `Release`), sorted.
    pub releases: Vec<Digest>,
}

impl KeyInput {
    fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&serde_json::to_value(self)?)?)
    }
    /// The key: the sha256 of the input's canonical bytes.
    pub fn key(&self) -> anyhow::Result<Digest> {
        Ok(Digest::of(&self.bytes()?))
    }
}

/// One index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub key: KeyInput,
    pub layer: Digest,
    pub manifest: Digest,
    pub packages: Vec<Package>,
}

/// The path of the entry for `key`.
pub fn entry_path(store: &Store, key: &Digest) -> PathBuf {
    store
        .base()
        .join(INDEX_DIR)
        .join(format!("{}.json", key.hex()))
}

/// The archive's state for `req` now: the key input, with every source's
/// `InRelease` fetched and hashed. `None` (with the reason) when it cannot
/// be known — a source hermit cannot fetch by itself, a network error — in
/// which case nothing is reused or remembered.
pub fn state_now(
    req: &DebianRequest,
    source_date_epoch: u64,
    net: &NetArgs,
) -> Result<KeyInput, String> {
    let sources = match &req.mirror {
        Some(m) => vec![release_base(m, &req.suite)],
        None => {
            let files = debian::host_sources(&req.suite).map_err(|e| format!("{e:#}"))?;
            let mut out = Vec::new();
            for f in files.iter().map(Path::new) {
                let text =
                    fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
                let deb822 = f.extension().is_some_and(|e| e == "sources");
                for (uri, suite) in apt_sources(&text, deb822) {
                    out.push(release_base(&uri, &suite));
                }
            }
            out
        }
    };
    let mut sources: Vec<String> = sources.into_iter().collect::<Result<_, _>>()?;
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        return Err("no apt source".into());
    }
    let releases = fetch_releases(&sources, net)?;
    Ok(KeyInput {
        reuse_version: REUSE_VERSION,
        suite: req.suite.clone(),
        include: req.include.clone(),
        mirror: req.mirror.clone(),
        architecture: native_architecture()?,
        source_date_epoch,
        bootstrap: BOOTSTRAP_OPTIONS.into(),
        mmdebstrap: mmdebstrap_version()?,
        sources,
        releases,
    })
}

/// The image and packages of an earlier bootstrap from the state `key`,
/// if the index has an entry for it that checks out; a miss otherwise
/// (said on stderr when an entry was there but did not check out).
pub fn lookup(store: &Store, key: &KeyInput, quiet: bool) -> Option<(Image, Vec<Package>)> {
    let k = key.key().ok()?;
    let path = entry_path(store, &k);
    let text = match crate::limits::read_text(&path, MAX_ENTRY) {
        Ok(t) => t,
        Err(_) => return None, // no entry (or unreadable): a plain miss
    };
    match check_entry(store, key, &k, &text) {
        Ok(hit) => Some(hit),
        Err(why) => {
            if !quiet {
                eprintln!(
                    "hermit: not reusing the earlier bootstrap indexed at {}: {why}; bootstrapping again",
                    path.display()
                );
            }
            None
        }
    }
}

fn check_entry(
    store: &Store,
    want: &KeyInput,
    key: &Digest,
    text: &str,
) -> Result<(Image, Vec<Package>), String> {
    let e: Entry = serde_json::from_str(text).map_err(|e| format!("not an index entry: {e}"))?;
    if e.key.key().map_err(|e| e.to_string())? != *key {
        return Err("its key input does not hash to its name".into());
    }
    if e.key != *want {
        return Err("its key input is not the request's".into());
    }
    let layer_path = store
        .blob(&e.layer)
        .ok_or_else(|| format!("its layer {} is not in the store", e.layer))?;
    let (actual, size, installed) =
        hash_and_installed(&layer_path).map_err(|err| format!("reading its layer: {err}"))?;
    if actual != e.layer {
        return Err(format!("its layer {} hashes to {actual}", e.layer));
    }
    let made = oci::rootfs_tar_image(&e.layer, size, "", debian::DEBIAN_PATH)
        .map_err(|err| err.to_string())?;
    if made.image.manifest != e.manifest {
        return Err(format!(
            "its layer makes the image {}, not {}",
            made.image.manifest, e.manifest
        ));
    }
    let named: Installed = e
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.architecture.clone()))
        .collect();
    if named.len() != e.packages.len() || named != installed {
        return Err("its packages are not the ones the image's dpkg database lists".into());
    }
    for p in &e.packages {
        let d = Digest::from_hex(&p.sha256)
            .map_err(|_| format!("package {} has a malformed sha256", p.name))?;
        if store.blob(&d).is_none() {
            return Err(format!("the .deb of {} ({d}) is not in the store", p.name));
        }
    }
    let image = oci::image_from_rootfs_tar(
        store,
        &e.layer,
        &format!("debian:{} include={}", want.suite, want.include.join(",")),
        debian::DEBIAN_PATH,
    )
    .map_err(|err| format!("recording its image: {err}"))?;
    if image.manifest != e.manifest {
        return Err("internal error: the image changed while it was recorded".into());
    }
    // The .debs stay pinned for as long as the image is reused.
    debian::keep_debs(store, &image, &e.packages).map_err(|err| format!("{err:#}"))?;
    Ok((image, e.packages))
}

/// Indexes a bootstrap under `key` when its apt fetched exactly the
/// `InRelease` files the key names (`fetched`, from apt's lists); a
/// bootstrap from any other state of the archive is not indexed.
pub fn remember(
    store: &Store,
    key: &KeyInput,
    fetched: &[Digest],
    image: &Image,
    packages: &[Package],
) -> anyhow::Result<bool> {
    let mut fetched = fetched.to_vec();
    fetched.sort();
    if fetched != key.releases {
        return Ok(false);
    }
    let [layer] = image.layers.as_slice() else {
        return Ok(false);
    };
    let entry = Entry {
        key: key.clone(),
        layer: layer.digest,
        manifest: image.manifest,
        packages: packages.to_vec(),
    };
    let dir = store.base().join(INDEX_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = entry_path(store, &key.key()?);
    let bytes = serde_json::to_vec(&serde_json::to_value(&entry)?)?;
    hermit_store::store::write_small_atomic(store.tmp_dir(), &dest, &bytes)
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(true)
}

/// The sha256 of every `InRelease` (or, for a source without one, `Release`)
/// apt left in its lists directory, sorted: what a bootstrap really used.
pub fn releases_in_lists(lists: &Path) -> Vec<Digest> {
    let Ok(rd) = fs::read_dir(lists) else {
        return vec![];
    };
    let names: BTreeSet<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    for n in &names {
        let take = n.ends_with("_InRelease")
            || n.strip_suffix("_Release")
                .is_some_and(|stem| !names.contains(&format!("{stem}_InRelease")));
        if take {
            if let Ok(bytes) = fs::read(lists.join(n)) {
                out.push(Digest::of(&bytes));
            }
        }
    }
    out.sort();
    out
}

/// The URL of the directory holding a source's `InRelease`:
/// `URI/dists/SUITE` or, for a flat repository (`SUITE` ends with `/`),
/// `URI/SUITE`. Only http and https are fetched.
fn release_base(uri: &str, suite: &str) -> Result<String, String> {
    let uri = uri.trim_end_matches('/');
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(format!("apt source {uri:?} is not http or https"));
    }
    if suite.contains('$') || suite.is_empty() {
        return Err(format!("apt suite {suite:?} has a variable"));
    }
    Ok(match suite.strip_suffix('/') {
        Some("." | "") => uri.to_string(),
        Some(flat) => format!("{uri}/{}", flat.trim_start_matches("./")),
        None => format!("{uri}/dists/{suite}"),
    })
}

/// `(uri, suite)` of every enabled `deb` source in an apt sources file:
/// one-line format (`.list`) or deb822 (`.sources`).
pub fn apt_sources(text: &str, deb822: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !deb822 {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut rest = match line.strip_prefix("deb") {
                Some(r) if r.starts_with([' ', '\t']) => r.trim_start(),
                _ => continue,
            };
            if let Some(r) = rest.strip_prefix('[') {
                match r.split_once(']') {
                    Some((_, after)) => rest = after.trim_start(),
                    None => continue,
                }
            }
            let mut words = rest.split_whitespace();
            if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                out.push((uri.to_string(), suite.to_string()));
            }
        }
        return out;
    }
    let mut para: Vec<(String, String)> = Vec::new();
    let flush = |para: &mut Vec<(String, String)>, out: &mut Vec<(String, String)>| {
        let get = |k: &str| {
            para.iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        let types = get("Types").unwrap_or("");
        if enabled && types.split_whitespace().any(|t| t == "deb") {
            for uri in get("URIs").unwrap_or("").split_whitespace() {
                for suite in get("Suites").unwrap_or("").split_whitespace() {
                    out.push((uri.to_string(), suite.to_string()));
                }
            }
        }
        para.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut para, &mut out);
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = para.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            para.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut para, &mut out);
    out
}

/// GETs `BASE/InRelease` (else `BASE/Release`) of every source and hashes
/// it; sorted digests.
fn fetch_releases(bases: &[String], net: &NetArgs) -> Result<Vec<Digest>, String> {
    let rt = crate::net::runtime().map_err(|e| format!("{e:#}"))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs_f64(
            net.connect_timeout.clamp(1.0, 600.0),
        ))
        .timeout(Duration::from_secs_f64(net.read_timeout.clamp(1.0, 600.0)))
        .build()
        .map_err(|e| format!("starting an HTTP client: {e}"))?;
    // All at once: the wall time is the slowest source's, not their sum.
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for base in bases {
            tasks.spawn(fetch_release(client.clone(), base.clone()));
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.map_err(|e| format!("fetching an InRelease: {e}"))??);
        }
        out.sort();
        Ok(out)
    })
}

/// The sha256 of `BASE/InRelease`, else of `BASE/Release`.
async fn fetch_release(client: reqwest::Client, base: String) -> Result<Digest, String> {
    for name in ["InRelease", "Release"] {
        let url = format!("{base}/{name}");
        let mut resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        if !resp.status().is_success() {
            return Err(format!("fetching {url}: {}", resp.status()));
        }
        let mut hasher = hermit_store::digest::Hasher::new();
        let mut len = 0usize;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?
        {
            len += chunk.len();
            if len > MAX_RELEASE {
                return Err(format!("{url} is larger than {MAX_RELEASE} bytes"));
            }
            hasher.update(&chunk);
        }
        return Ok(hasher.finish());
    }
    Err(format!("{base} has neither InRelease nor Release"))
}

fn native_architecture() -> Result<String, String> {
    let o = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .map_err(|e| format!("running dpkg --print-architecture: {e}"))?;
    let a = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !o.status.success() || a.is_empty() {
        return Err("dpkg --print-architecture failed".into());
    }
    Ok(a)
}

fn mmdebstrap_version() -> Result<String, String> {
    let o = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .map_err(|e| format!("running mmdebstrap --version: {e}"))?;
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !o.status.success() || v.is_empty() {
        return Err("mmdebstrap --version failed".into());
    }
    Ok(v)
}

/// Hashes a root filesystem tar in one pass and reads, on the way, the
/// installed packages of its `var/lib/dpkg/status` (name, version,
/// architecture). Returns the digest, the size and the packages.
fn hash_and_installed(layer: &Path) -> io::Result<(Digest, u64, Installed)> {
    struct Hashing<R> {
        inner: R,
        hasher: hermit_store::digest::Hasher,
        size: u64,
    }
    impl<R: Read> Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            Ok(n)
        }
    }
    let f = File::open(layer)?;
    let mut r = Hashing {
        inner: io::BufReader::with_capacity(1 << 20, f),
        hasher: hermit_store::digest::Hasher::new(),
        size: 0,
    };
    let mut status = None;
    {
        let mut a = tar::Archive::new(&mut r);
        for e in a.entries()? {
            let mut e = e?;
            let p = e.path()?.to_string_lossy().into_owned();
            if p.trim_start_matches("./") == "var/lib/dpkg/status"
                && e.header().entry_type().is_file()
            {
                let mut s = String::new();
                (&mut e).take(64 << 20).read_to_string(&mut s)?;
                status = Some(s);
            }
        }
    }
    io::copy(&mut r, &mut io::sink())?;
    let installed = status.map(|s| installed_packages(&s)).unwrap_or_default();
    Ok((r.hasher.finish(), r.size, installed))
}

/// The installed packages of a dpkg status file.
fn installed_packages(status: &str) -> Installed {
    let mut out = BTreeSet::new();
    for para in status.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                .map(|v| v.trim().to_string())
        };
        if let (Some(n), Some(v), Some(a), Some(s)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("Status"),
        ) {
            if s.ends_with(" installed") {
                out.insert((n, v, a));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_of_both_formats() {
        let list =
            "# a comment\ndeb [arch=amd64 signed-by=/k.gpg] https://example.org/apt cloud main\n\
                    deb-src http://x/debian bookworm main\ndeb http://x/debian bookworm main # c\n";
        assert_eq!(
            apt_sources(list, false),
            vec![
                ("https://example.org/apt".to_string(), "cloud".to_string()),
                ("http://x/debian".to_string(), "bookworm".to_string())
            ]
        );
        let sources = "Types: deb\nURIs: http://x/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By:\n -----BEGIN PGP\n .\n\n\
                       Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\n\n\
                       Types: deb\nEnabled: no\nURIs: http://y/\nSuites: a\n\n\
                       # comment\nTypes: deb deb-src\nURIs: http://z/flat\nSuites: ./\n";
        assert_eq!(
            apt_sources(sources, true),
            vec![
                ("http://x/debian".to_string(), "bookworm".to_string()),
                (
                    "http://x/debian".to_string(),
                    "bookworm-updates".to_string()
                ),
                ("http://z/flat".to_string(), "./".to_string()),
            ]
        );
    }

    #[test]
    fn release_urls() {
        assert_eq!(
            release_base("http://x/debian/", "bookworm").unwrap(),
            "http://x/debian/dists/bookworm"
        );
        assert_eq!(
            release_base("http://z/flat", "./").unwrap(),
            "http://z/flat"
        );
        assert_eq!(release_base("http://z", "sub/").unwrap(), "http://z/sub");
        assert!(release_base("file:///srv/debian", "bookworm").is_err());
        assert!(release_base("http://x", "$(ARCH)/").is_err());
    }

    fn key(releases: &[&[u8]]) -> KeyInput {
        let mut r: Vec<Digest> = releases.iter().map(|b| Digest::of(b)).collect();
        r.sort();
        KeyInput {
            reuse_version: REUSE_VERSION,
            suite: "bookworm".into(),
            include: vec!["make".into()],
            mirror: None,
            architecture: "amd64".into(),
            source_date_epoch: 315532800,
            bootstrap: BOOTSTRAP_OPTIONS.into(),
            mmdebstrap: "mmdebstrap 1.3.5".into(),
            sources: vec!["http://x/debian/dists/bookworm".into()],
            releases: r,
        }
    }

    #[test]
    fn a_changed_archive_is_a_new_key() {
        let a = key(&[b"InRelease of Monday"]);
        let b = key(&[b"InRelease of Tuesday"]);
        assert_ne!(a.key().unwrap(), b.key().unwrap());
        assert_eq!(
            a.key().unwrap(),
            key(&[b"InRelease of Monday"]).key().unwrap()
        );
        let mut c = a.clone();
        c.include.push("gcc".into());
        assert_ne!(a.key().unwrap(), c.key().unwrap());
        let mut d = a.clone();
        d.source_date_epoch += 1;
        assert_ne!(a.key().unwrap(), d.key().unwrap());
    }

    fn rootfs_tar(status: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(status.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "./var/lib/dpkg/status", status.as_bytes())
            .unwrap();
        b.into_inner().unwrap()
    }

    const STATUS: &str = "Package: make\nStatus: install ok installed\nArchitecture: amd64\nVersion: 4.3-4.1\n\n\
                          Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n";

    fn package(name: &str, version: &str, deb: &Digest) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            sha256: deb.hex(),
            pool: None,
            size: None,
        }
    }

    /// A store with one "bootstrap" (a layer whose dpkg database lists make)
    /// and its index entry; returns the store, the key and the entry.
    fn indexed() -> (tempfile::TempDir, Store, KeyInput, Entry) {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let layer = store
            .add_reader(&mut &rootfs_tar(STATUS)[..], "layer", None, None)
            .unwrap();
        let image =
            oci::image_from_rootfs_tar(&store, &layer, "test", debian::DEBIAN_PATH).unwrap();
        let deb = store
            .add_reader(&mut &b"a .deb"[..], "deb", None, None)
            .unwrap();
        let k = key(&[b"InRelease"]);
        let packages = vec![package("make", "4.3-4.1", &deb)];
        assert!(!remember(&store, &k, &[Digest::of(b"other")], &image, &packages).unwrap());
        assert!(remember(&store, &k, &k.releases, &image, &packages).unwrap());
        let entry: Entry =
            serde_json::from_slice(&fs::read(entry_path(&store, &k.key().unwrap())).unwrap())
                .unwrap();
        (t, store, k, entry)
    }

    #[test]
    fn an_entry_that_checks_out_is_a_hit() {
        let (_t, store, k, entry) = indexed();
        let (image, packages) = lookup(&store, &k, true).expect("a hit");
        assert_eq!(image.manifest, entry.manifest);
        assert_eq!(packages, entry.packages);
        // Another archive state: a miss.
        assert!(lookup(&store, &key(&[b"InRelease 2"]), true).is_none());
    }

    #[test]
    fn forged_or_corrupted_entries_are_misses() {
        let (_t, store, k, entry) = indexed();
        let path = entry_path(&store, &k.key().unwrap());
        let put = |e: &Entry| {
            fs::write(&path, serde_json::to_vec(e).unwrap()).unwrap();
        };
        let other_layer = store
            .add_reader(
                &mut &rootfs_tar(&STATUS.replace("4.3-4.1", "9"))[..],
                "layer",
                None,
                None,
            )
            .unwrap();
        let other_deb = Digest::of(b"not stored");
        let mut forgeries: Vec<Entry> = Vec::new();
        // Another image's layer, with its manifest: the packages do not match.
        let mut e = entry.clone();
        e.layer = other_layer;
        let other_size = fs::metadata(store.blob_path(&other_layer)).unwrap().len();
        e.manifest = oci::rootfs_tar_image(&other_layer, other_size, "", debian::DEBIAN_PATH)
            .unwrap()
            .image
            .manifest;
        forgeries.push(e);
        // A manifest the layer does not make.
        let mut e = entry.clone();
        e.manifest = Digest::of(b"manifest");
        forgeries.push(e);
        // A layer that is not in the store.
        let mut e = entry.clone();
        e.layer = Digest::of(b"missing");
        forgeries.push(e);
        // Packages that are not the image's.
        let mut e = entry.clone();
        e.packages[0].version = "9".into();
        forgeries.push(e);
        let mut e = entry.clone();
        e.packages.push(package("gcc", "12", &other_deb));
        forgeries.push(e);
        // A .deb that is not in the store.
        let mut e = entry.clone();
        e.packages[0].sha256 = other_deb.hex();
        forgeries.push(e);
        // Filed under another key.
        let mut e = entry.clone();
        e.key.include.push("gcc".into());
        forgeries.push(e);
        for (i, e) in forgeries.iter().enumerate() {
            put(e);
            assert!(lookup(&store, &k, true).is_none(), "forgery {i} was used");
        }
        for junk in [&b""[..], b"{", b"[]", b"\xff\xfe"] {
            fs::write(&path, junk).unwrap();
            assert!(lookup(&store, &k, true).is_none());
        }
        // The layer's bytes changed in the store (its name kept).
        put(&entry);
        assert!(lookup(&store, &k, true).is_some());
        let lp = store.blob_path(&entry.layer);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&lp, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(&lp).unwrap();
        bytes[600] ^= 1;
        fs::write(&lp, bytes).unwrap();
        assert!(lookup(&store, &k, true).is_none());
    }

    #[test]
    fn releases_in_lists_prefer_inrelease() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a_dists_x_InRelease"), b"in").unwrap();
        fs::write(t.path().join("a_dists_x_Release"), b"rel").unwrap();
        fs::write(t.path().join("b_flat_Release"), b"flat").unwrap();
        fs::write(t.path().join("a_dists_x_main_binary-amd64_Packages"), b"p").unwrap();
        let mut want = vec![Digest::of(b"in"), Digest::of(b"flat")];
        want.sort();
        assert_eq!(releases_in_lists(t.path()), want);
    }
}
