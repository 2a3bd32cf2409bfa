//! Toolchain images: importing OCI image layouts, oci-archives and
//! `docker save` archives, and pulling from registries by digest.
//!
//! Every blob of an image (index, manifest, config, layers) enters the store
//! through the ordinary verified write path, so an image in the store is as
//! trustworthy as any other blob. What an import resolved is kept as a small
//! JSON document:
//!
//! ```text
//! v1/images/<manifest-hex>.json   the resolved image: manifest, config, layers, platform, PATH
//! ```
//!
//! # Which digest pins an image
//!
//! - OCI layout, oci-archive, registry: the manifest digest (what
//!   `skopeo inspect` prints as `Digest`). An index is resolved to the
//!   manifest for this machine's platform (`linux/amd64` here); pinning the
//!   index digest is accepted too.
//! - `docker save` archive: the image ID, i.e. the config digest (what
//!   `docker images --no-trunc` prints). Its layers are checked against the
//!   config's `diff_ids`, so the config digest pins every byte.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Largest JSON document (index, manifest, config) hermit will read.
const MAX_JSON: u64 = 16 << 20;

/// Largest token-service answer hermit will read (tokens are a few KiB).
const MAX_TOKEN: u64 = 1 << 20;

/// Media type strings hermit accepts for manifests and indexes.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Errors importing or pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: not an OCI image layout, oci-archive or docker-archive (no index.json or manifest.json found)", path = path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{what} is not valid JSON for an {kind}")]
    BadJson {
        what: String,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is larger than {limit} bytes; refusing to read it")]
    TooLarge { what: String, limit: u64 },
    #[error("{url}: the server announces {announced} bytes, more than the {limit} bytes hermit reads for it; refusing to read it")]
    AnnouncedTooLarge {
        url: String,
        announced: u64,
        limit: u64,
    },
    #[error("{path}: is a {kind}; the files of an image layout must be regular files (replace it with the file itself)", path = path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{what}: blob {digest} is missing from the image")]
    MissingBlob { what: String, digest: String },
    #[error("{what}: unsupported digest {digest:?} (only sha256 is supported)")]
    Algorithm { what: String, digest: String },
    #[error("{what}: path {path:?} in the archive is unsafe (absolute or with ..)")]
    UnsafePath { what: String, path: String },
    #[error("{what}: no manifest for {platform} in the index (it has: {available})")]
    NoPlatform {
        what: String,
        platform: String,
        available: String,
    },
    #[error("{what}: the image's digest is {actual}, but the spec pins {expected}; if the image was meant to change, update the pin")]
    PinMismatch {
        what: String,
        expected: Digest,
        actual: String,
    },
    #[error("{what}: layer {index} is {actual} but the config's diff_id says {expected}")]
    DiffId {
        what: String,
        index: usize,
        expected: String,
        actual: Digest,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("image reference {reference:?}: {message}")]
    Reference { reference: String, message: String },
    #[error("{url}: {message}")]
    Registry { url: String, message: String },
    #[error("{url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading {path}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> OciError {
    let path = path.into();
    move |source| OciError::Io { path, source }
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image whose blobs are all in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Where it came from, for people: a path or a registry reference.
    pub source: String,
    /// The index digest, when the pin resolved through an index.
    pub index: Option<Digest>,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Layer>,
    /// `os/architecture`.
    pub platform: String,
    /// PATH from the image config's Env, if it sets one.
    pub path_env: Option<String>,
}

impl Image {
    /// Every digest the image consists of (for GC roots, mirrors, records).
    pub fn digests(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.index.iter().copied().collect();
        v.push(self.manifest);
        v.push(self.config);
        v.extend(self.layers.iter().map(|l| l.digest));
        v
    }

    fn save(&self, store: &Store) -> Result<(), OciError> {
        let dir = store.base().join("images");
        fs::create_dir_all(&dir).map_err(StoreError::io("creating", &dir))?;
        let mut json = serde_json::to_vec_pretty(&sorted(self)).map_err(|e| OciError::BadJson {
            what: "image record".into(),
            kind: "image record",
            source: e,
        })?;
        json.push(b'\n');
        let dest = dir.join(format!("{}.json", self.manifest.hex()));
        crate::store::write_small_atomic(store.tmp_dir(), &dest, &json)?;
        Ok(())
    }
}

fn sorted<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Every image recorded in the store, sorted by manifest digest.
pub fn list(store: &Store) -> Result<Vec<Image>, OciError> {
    let dir = store.base().join("images");
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let img: Image = serde_json::from_slice(&bytes).map_err(|e| OciError::BadJson {
                what: path.display().to_string(),
                kind: "image record",
                source: e,
            })?;
            out.push(img);
        }
    }
    out.sort_by_key(|i| i.manifest);
    Ok(out)
}

/// The image with this manifest (or, for docker archives, config) digest, if
/// it has been imported.
pub fn find(store: &Store, pin: &Digest) -> Result<Option<Image>, OciError> {
    Ok(list(store)?
        .into_iter()
        .find(|i| i.manifest == *pin || i.config == *pin || i.index == Some(*pin)))
}

/// The platform hermit builds for: `linux/<this machine's architecture>`.
pub fn host_platform() -> (Os, Arch) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        "x86" => Arch::i386,
        "riscv64" => Arch::RISCV64,
        "powerpc64" => Arch::PowerPC64le,
        "s390x" => Arch::s390x,
        other => Arch::Other(other.to_string()),
    };
    (Os::Linux, arch)
}

fn platform_string() -> String {
    let (os, arch) = host_platform();
    format!("{os}/{arch}")
}

/// Converts an OCI digest string into hermit's [`Digest`], refusing other
/// algorithms.
fn parse_digest(what: &str, d: &str) -> Result<Digest, OciError> {
    d.parse().map_err(|_| OciError::Algorithm {
        what: what.to_string(),
        digest: d.to_string(),
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    what: &str,
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::BadJson {
        what: what.to_string(),
        kind,
        source: e,
    })
}

/// Where an image's files come from while importing.
trait Source {
    /// Human name for messages.
    fn name(&self) -> String;
    /// A small file by its path inside the layout (index.json, manifest.json).
    fn small(&mut self, path: &str) -> Result<Option<Vec<u8>>, OciError>;
    /// Makes sure the blob at `path` is in the store with digest `expected`
    /// (and `size` bytes, as its descriptor says, when given).
    fn blob(
        &mut self,
        store: &Store,
        path: &str,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<(), OciError>;
    /// The digest of the file at `path` (docker archives name layers by path).
    fn digest_of(&mut self, store: &Store, path: &str) -> Result<Digest, OciError>;
}

/// An image layout directory on disk.
struct DirSource {
    root: PathBuf,
}

impl Source for DirSource {
    fn name(&self) -> String {
        self.root.display().to_string()
    }
    fn small(&mut self, path: &str) -> Result<Option<Vec<u8>>, OciError> {
        let p = self.root.join(safe_rel(&self.name(), path)?);
        match open_regular(&p)? {
            Some((f, _)) => read_capped(f, &p.display().to_string()).map(Some),
            None => Ok(None),
        }
    }
    fn blob(
        &mut self,
        store: &Store,
        path: &str,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<(), OciError> {
        if store.blob(expected).is_some() {
            return Ok(());
        }
        let p = self.root.join(safe_rel(&self.name(), path)?);
        let what = p.display().to_string();
        let (f, len) = open_regular(&p)?.ok_or_else(|| OciError::MissingBlob {
            what: self.name(),
            digest: expected.to_string(),
        })?;
        // Checked before a byte is copied, and again while copying: the copy
        // stops one byte past the size, whatever the file does meanwhile.
        let size = size.unwrap_or(len);
        if len != size {
            return Err(StoreError::SizeMismatch {
                what: format!("{what} (its descriptor says {size} bytes)"),
                expected: size,
                actual: len,
            }
            .into());
        }
        let _lock = store.lock(expected)?;
        store.add_reader(&mut f.take(size + 1), &what, Some(expected), Some(size))?;
        Ok(())
    }
    fn digest_of(&mut self, store: &Store, path: &str) -> Result<Digest, OciError> {
        let p = self.root.join(safe_rel(&self.name(), path)?);
        let what = p.display().to_string();
        let (f, len) = open_regular(&p)?.ok_or_else(|| OciError::MissingBlob {
            what: self.name(),
            digest: path.to_string(),
        })?;
        Ok(store.add_reader(&mut f.take(len + 1), &what, None, Some(len))?)
    }
}

/// A tar archive (oci-archive or docker-archive): every regular file is
/// ingested into the store on one pass, remembered by its path.
struct TarSource {
    path: PathBuf,
    files: BTreeMap<String, Digest>,
    small: BTreeMap<String, Vec<u8>>,
}

impl TarSource {
    fn read(store: &Store, path: &Path) -> Result<TarSource, OciError> {
        let f = open_archive(path).map_err(io_err(path))?;
        let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, f));
        let mut files = BTreeMap::new();
        let mut small = BTreeMap::new();
        let name = path.display().to_string();
        for entry in archive.entries().map_err(io_err(path))? {
            let mut entry = entry.map_err(io_err(path))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let p = entry.path().map_err(io_err(path))?;
            let p = normalise(&name, &p.to_string_lossy())?;
            if p.ends_with(".json") || p == "oci-layout" {
                let bytes = read_capped(&mut entry, &format!("{name}:{p}"))?;
                small.insert(p, bytes);
                continue;
            }
            let d = store.add_reader(&mut entry, &format!("{name}:{p}"), None, None)?;
            files.insert(p, d);
        }
        Ok(TarSource {
            path: path.to_path_buf(),
            files,
            small,
        })
    }
}

impl Source for TarSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn small(&mut self, path: &str) -> Result<Option<Vec<u8>>, OciError> {
        let p = normalise(&self.name(), path)?;
        if let Some(b) = self.small.get(&p) {
            return Ok(Some(b.clone()));
        }
        Ok(None)
    }
    fn blob(
        &mut self,
        store: &Store,
        path: &str,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<(), OciError> {
        let p = normalise(&self.name(), path)?;
        if let Some(bytes) = self.small.get(&p) {
            let d = store.add_reader(&mut &bytes[..], &p, Some(expected), size)?;
            self.files.insert(p, d);
            return Ok(());
        }
        match self.files.get(&p) {
            Some(d) if d == expected => {
                let Some(size) = size else { return Ok(()) };
                let blob = store.blob_path(d);
                let len = fs::metadata(&blob).map_err(io_err(&blob))?.len();
                if len != size {
                    return Err(StoreError::SizeMismatch {
                        what: format!("{}:{p} (its descriptor says {size} bytes)", self.name()),
                        expected: size,
                        actual: len,
                    }
                    .into());
                }
                Ok(())
            }
            Some(d) => Err(StoreError::Mismatch {
                what: format!("{}:{p}", self.name()),
                expected: *expected,
                actual: *d,
            }
            .into()),
            None => Err(OciError::MissingBlob {
                what: self.name(),
                digest: expected.to_string(),
            }),
        }
    }
    fn digest_of(&mut self, store: &Store, path: &str) -> Result<Digest, OciError> {
        let p = normalise(&self.name(), path)?;
        if let Some(bytes) = self.small.get(&p) {
            return Ok(store.add_reader(&mut &bytes[..], &p, None, None)?);
        }
        self.files
            .get(&p)
            .copied()
            .ok_or_else(|| OciError::MissingBlob {
                what: self.name(),
                digest: p.clone(),
            })
    }
}

/// Opens an image archive the caller named (a symlink to it is fine),
/// refusing anything but a regular file: a fifo would block the import
/// forever, a device such as /dev/zero would stream into the store without end.
fn open_archive(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file; an image archive is a regular file",
        ));
    }
    Ok(f)
}

fn read_capped(r: impl Read, what: &str) -> Result<Vec<u8>, OciError> {
    let mut buf = Vec::new();
    r.take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(what))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(OciError::TooLarge {
            what: what.to_string(),
            limit: MAX_JSON,
        });
    }
    Ok(buf)
}

/// Opens a file of an image layout for reading without following a symlink
/// (`O_NOFOLLOW`) and without blocking on a fifo (`O_NONBLOCK`), and makes
/// sure it is a regular file; returns it with its size, or `None` when it
/// does not exist. A symlink to `/dev/zero` or a fifo in a layout is refused
/// with its path before a byte is read.
fn open_regular(p: &Path) -> Result<Option<(File, u64)>, OciError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OciError::NotRegular {
                path: p.to_path_buf(),
                kind: "symbolic link",
            })
        }
        Err(e) => return Err(io_err(p)(e)),
    };
    let meta = f.metadata().map_err(io_err(p))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(OciError::NotRegular {
            path: p.to_path_buf(),
            kind,
        });
    }
    Ok(Some((f, meta.len())))
}

/// A relative path inside an archive, without `.` components; refuses
/// absolute paths and `..`.
fn normalise(what: &str, p: &str) -> Result<String, OciError> {
    Ok(safe_rel(what, p)?.to_string_lossy().into_owned())
}

fn safe_rel(what: &str, p: &str) -> Result<PathBuf, OciError> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(OciError::UnsafePath {
                    what: what.to_string(),
                    path: p.to_string(),
                })
            }
        }
    }
    Ok(out)
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Imports an OCI image layout directory, an oci-archive or a docker-archive
/// into the store, checks it against `pin` (see the module docs for which
/// digest pins which kind), and records it.
pub fn import(store: &Store, path: &Path, pin: Option<&Digest>) -> Result<Image, OciError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mut src: Box<dyn Source> = if meta.is_dir() {
        Box::new(DirSource {
            root: path.to_path_buf(),
        })
    } else {
        Box::new(TarSource::read(store, path)?)
    };
    let source = path.display().to_string();
    let image = if let Some(index) = src.small("index.json")? {
        import_oci(store, src.as_mut(), &source, &index, pin)?
    } else if let Some(manifest) = src.small("manifest.json")? {
        import_docker(store, src.as_mut(), &source, &manifest, pin)?
    } else {
        return Err(OciError::UnknownFormat {
            path: path.to_path_buf(),
        });
    };
    image.save(store)?;
    Ok(image)
}

fn import_oci(
    store: &Store,
    src: &mut dyn Source,
    source: &str,
    index_bytes: &[u8],
    pin: Option<&Digest>,
) -> Result<Image, OciError> {
    let what = format!("{source}: index.json");
    let index: ImageIndex = parse_json(&what, "OCI image index", index_bytes)?;
    // index.json itself is not content-addressed in a layout; walk its
    // descriptors (and nested indexes) down to this platform's manifest.
    let mut via_index = None;
    let mut descs = index.manifests().clone();
    let (manifest_digest, manifest_size) = loop {
        let chosen = choose_manifest(&what, &descs, pin)?;
        let d = parse_digest(&what, chosen.digest().as_ref())?;
        let is_index = chosen.media_type().to_string().contains("index")
            || chosen.media_type().to_string().contains("manifest.list");
        if !is_index {
            break (d, chosen.size());
        }
        src.blob(store, &blob_rel(&d), &d, Some(chosen.size()))?;
        let bytes = read_blob(store, &d)?;
        let nested: ImageIndex = parse_json(&format!("{source}: {d}"), "OCI image index", &bytes)?;
        via_index = Some(d);
        descs = nested.manifests().clone();
    };
    src.blob(
        store,
        &blob_rel(&manifest_digest),
        &manifest_digest,
        Some(manifest_size),
    )?;
    let image = finish_manifest(store, source, via_index, manifest_digest, &mut |d, size| {
        src.blob(store, &blob_rel(d), d, Some(size))
    })?;
    check_pin(source, pin, &image, false)?;
    Ok(image)
}

/// Picks the descriptor to follow in an index: the one the pin names, else
/// the only one, else the one for this platform.
fn choose_manifest<'a>(
    what: &str,
    descs: &'a [oci_spec::image::Descriptor],
    pin: Option<&Digest>,
) -> Result<&'a oci_spec::image::Descriptor, OciError> {
    if let Some(pin) = pin {
        if let Some(d) = descs
            .iter()
            .find(|d| d.digest().as_ref() == pin.to_string())
        {
            return Ok(d);
        }
    }
    if descs.len() == 1 {
        return Ok(&descs[0]);
    }
    let (os, arch) = host_platform();
    descs
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == os && *p.architecture() == arch)
        })
        .ok_or_else(|| OciError::NoPlatform {
            what: what.to_string(),
            platform: platform_string(),
            available: descs
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "unspecified".to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn read_blob(store: &Store, d: &Digest) -> Result<Vec<u8>, OciError> {
    let p = store.blob_path(d);
    let f = File::open(&p).map_err(io_err(&p))?;
    read_capped(f, &p.display().to_string())
}

/// Reads a manifest already in the store, makes sure its config and layers
/// are too (via `ensure`), and describes the image.
fn finish_manifest(
    store: &Store,
    source: &str,
    index: Option<Digest>,
    manifest_digest: Digest,
    ensure: &mut dyn FnMut(&Digest, u64) -> Result<(), OciError>,
) -> Result<Image, OciError> {
    let what = format!("{source}: manifest {manifest_digest}");
    let manifest: ImageManifest = parse_json(
        &what,
        "OCI image manifest",
        &read_blob(store, &manifest_digest)?,
    )?;
    let config = parse_digest(&what, manifest.config().digest().as_ref())?;
    ensure(&config, manifest.config().size())?;
    let config_json: ImageConfiguration = parse_json(
        &format!("{source}: config {config}"),
        "OCI image config",
        &read_blob(store, &config)?,
    )?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let d = parse_digest(&what, l.digest().as_ref())?;
        ensure(&d, l.size())?;
        layers.push(Layer {
            digest: d,
            media_type: l.media_type().to_string(),
            size: l.size(),
        });
    }
    Ok(Image {
        source: source.to_string(),
        index,
        manifest: manifest_digest,
        config,
        layers,
        platform: format!("{}/{}", config_json.os(), config_json.architecture()),
        path_env: path_env(&config_json),
    })
}

fn path_env(config: &ImageConfiguration) -> Option<String> {
    config
        .config()
        .as_ref()
        .and_then(|c| c.env().as_ref())
        .and_then(|env| {
            env.iter()
                .find_map(|kv| kv.strip_prefix("PATH=").map(str::to_string))
        })
}

fn check_pin(
    source: &str,
    pin: Option<&Digest>,
    image: &Image,
    docker: bool,
) -> Result<(), OciError> {
    let Some(pin) = pin else { return Ok(()) };
    let ok = if docker {
        image.config == *pin
    } else {
        image.manifest == *pin || image.index == Some(*pin)
    };
    if ok {
        return Ok(());
    }
    Err(OciError::PinMismatch {
        what: source.to_string(),
        expected: *pin,
        actual: if docker {
            format!("{} (image ID, the config digest)", image.config)
        } else {
            format!("{} (manifest)", image.manifest)
        },
    })
}

/// `docker save`'s manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    layers: Vec<String>,
}

fn import_docker(
    store: &Store,
    src: &mut dyn Source,
    source: &str,
    manifest_bytes: &[u8],
    pin: Option<&Digest>,
) -> Result<Image, OciError> {
    let what = format!("{source}: manifest.json");
    let entries: Vec<DockerManifestEntry> =
        parse_json(&what, "docker-archive manifest", manifest_bytes)?;
    let [entry] = entries.as_slice() else {
        return Err(OciError::Invalid {
            what,
            message: format!(
                "holds {} images; save exactly one image per archive",
                entries.len()
            ),
        });
    };
    let config = src.digest_of(store, &entry.config)?;
    let config_bytes = read_blob(store, &config)?;
    let config_json: ImageConfiguration = parse_json(
        &format!("{source}: {}", entry.config),
        "OCI image config",
        &config_bytes,
    )?;
    let diff_ids = config_json.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(OciError::Invalid {
            what,
            message: format!(
                "{} layers but the config lists {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::new();
    for (i, (path, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let d = src.digest_of(store, path)?;
        // docker save writes layers uncompressed, so each blob's digest must
        // be its diff_id; that is what makes the image ID pin the layers.
        if d.to_string() != *diff_id {
            return Err(OciError::DiffId {
                what: source.to_string(),
                index: i,
                expected: diff_id.clone(),
                actual: d,
            });
        }
        let size = fs::metadata(store.blob_path(&d))
            .map_err(io_err(store.blob_path(&d)))?
            .len();
        layers.push(Layer {
            digest: d,
            media_type: "application/vnd.oci.image.layer.v1.tar".to_string(),
            size,
        });
    }
    // Give the image an OCI manifest so every image in the store has one.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::BadJson {
        what: what.clone(),
        kind: "OCI image manifest",
        source: e,
    })?;
    let manifest_digest = store.add_reader(&mut &manifest_bytes[..], &what, None, None)?;
    let image = Image {
        source: source.to_string(),
        index: None,
        manifest: manifest_digest,
        config,
        layers,
        platform: format!("{}/{}", config_json.os(), config_json.architecture()),
        path_env: path_env(&config_json),
    };
    check_pin(source, pin, &image, true)?;
    Ok(image)
}

/// Makes a single-layer image from an uncompressed root filesystem tar that
/// is already in the store (a bootstrapped Debian, for instance), and records
/// it. The config and manifest are canonical JSON, so the same layer always
/// gives the same manifest digest.
pub fn image_from_rootfs_tar(
    store: &Store,
    layer: &Digest,
    source: &str,
    path_env: &str,
) -> Result<Image, OciError> {
    let layer_path = store.blob_path(layer);
    let size = fs::metadata(&layer_path)
        .map_err(io_err(&layer_path))?
        .len();
    let made = rootfs_tar_image(layer, size, source, path_env)?;
    store.add_reader(
        &mut &made.config_bytes[..],
        source,
        Some(&made.image.config),
        None,
    )?;
    store.add_reader(
        &mut &made.manifest_bytes[..],
        source,
        Some(&made.image.manifest),
        None,
    )?;
    made.image.save(store)?;
    Ok(made.image)
}

/// The single-layer image [`image_from_rootfs_tar`] makes, computed
/// without the store: its config and manifest bytes and the image they
/// describe. A pure function of the layer's digest and size, the host's
/// platform and `path_env`.
pub struct MadeImage {
    pub image: Image,
    pub config_bytes: Vec<u8>,
    pub manifest_bytes: Vec<u8>,
}

pub fn rootfs_tar_image(
    layer: &Digest,
    size: u64,
    source: &str,
    path_env: &str,
) -> Result<MadeImage, OciError> {
    let (os, arch) = host_platform();
    let config = serde_json::json!({
        "architecture": arch.to_string(),
        "os": os.to_string(),
        "config": {"Env": [format!("PATH={path_env}")]},
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
    });
    let config_bytes = canonical_json(&config)?;
    let config_digest = Digest::of(&config_bytes);
    let media_type = "application/vnd.oci.image.layer.v1.tar";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": [{"mediaType": media_type, "digest": layer.to_string(), "size": size}],
    });
    let manifest_bytes = canonical_json(&manifest)?;
    let image = Image {
        source: source.to_string(),
        index: None,
        manifest: Digest::of(&manifest_bytes),
        config: config_digest,
        layers: vec![Layer {
            digest: *layer,
            media_type: media_type.to_string(),
            size,
        }],
        platform: format!("{os}/{arch}"),
        path_env: Some(path_env.to_string()),
    };
    Ok(MadeImage {
        image,
        config_bytes,
        manifest_bytes,
    })
}

/// Compact JSON with sorted keys (serde_json's Map is a BTreeMap here).
fn canonical_json(v: &serde_json::Value) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(v).map_err(|e| OciError::BadJson {
        what: "generated image JSON".into(),
        kind: "image",
        source: e,
    })
}

/// Describes an image whose manifest (and config and layers) are already in
/// the store — fetched from a mirror by digest, say — and records it.
pub fn load_from_store(
    store: &Store,
    manifest: &Digest,
    index: Option<Digest>,
    source: &str,
) -> Result<Image, OciError> {
    if store.blob(manifest).is_none() {
        return Err(OciError::MissingBlob {
            what: source.to_string(),
            digest: manifest.to_string(),
        });
    }
    let image = finish_manifest(
        store,
        source,
        index,
        *manifest,
        &mut |d, _| match store.blob(d) {
            Some(_) => Ok(()),
            None => Err(OciError::MissingBlob {
                what: source.to_string(),
                digest: d.to_string(),
            }),
        },
    )?;
    image.save(store)?;
    Ok(image)
}

/// The digests and sizes of the config and layers a manifest in the store
/// names (a fetch of each stops at its size).
pub fn manifest_blobs(store: &Store, manifest: &Digest) -> Result<Vec<(Digest, u64)>, OciError> {
    let what = format!("manifest {manifest}");
    let m: ImageManifest = parse_json(&what, "OCI image manifest", &read_blob(store, manifest)?)?;
    let mut out = vec![(
        parse_digest(&what, m.config().digest().as_ref())?,
        m.config().size(),
    )];
    for l in m.layers() {
        out.push((parse_digest(&what, l.digest().as_ref())?, l.size()));
    }
    Ok(out)
}

/// The image's root filesystem, unpacked once into the store and shared
/// read-only by every build over it:
///
/// ```text
/// v1/rootfs/<manifest-hex>/   layers applied in order, whiteouts honoured,
///                             device nodes skipped (the sandbox brings its
///                             own /dev), read-only
/// ```
pub fn rootfs(store: &Store, image: &Image) -> Result<PathBuf, OciError> {
    let dir = store.base().join("rootfs");
    let dest = dir.join(image.manifest.hex());
    if dest.is_dir() {
        return Ok(dest);
    }
    fs::create_dir_all(&dir).map_err(StoreError::io("creating", &dir))?;
    let _lock = store.lock(&image.manifest)?;
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = crate::store::temp_dir(store.tmp_dir())?;
    let result = (|| -> Result<(), OciError> {
        let opts = crate::unpack::ExtractOptions {
            strip_components: 0,
            oci_whiteouts: true,
            rootfs_symlinks: true,
            skip_special: true,
        };
        for layer in &image.layers {
            let path = store
                .blob(&layer.digest)
                .ok_or_else(|| OciError::MissingBlob {
                    what: image.source.clone(),
                    digest: layer.digest.to_string(),
                })?;
            let compression = layer_compression(&layer.media_type, &path)?;
            let f = File::open(&path).map_err(io_err(&path))?;
            crate::unpack::extract_tar_stream(f, compression, &tmp, &opts).map_err(|e| {
                OciError::Invalid {
                    what: format!("{} layer {}", image.source, layer.digest),
                    message: e.to_string(),
                }
            })?;
        }
        crate::tree::make_read_only(&tmp).map_err(io_err(&tmp))?;
        crate::store::install_tree(&tmp, &dest)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = crate::store::remove_tree(&tmp);
        return Err(e);
    }
    Ok(dest)
}

/// A layer's compression, from its media type, else from its first bytes.
fn layer_compression(
    media_type: &str,
    path: &Path,
) -> Result<crate::unpack::Compression, OciError> {
    use crate::unpack::{ArchiveFormat, Compression};
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        return Ok(Compression::Gzip);
    }
    if media_type.ends_with("+zstd") {
        return Ok(Compression::Zstd);
    }
    let mut head = [0u8; 512];
    let mut f = File::open(path).map_err(io_err(path))?;
    let n = f.read(&mut head).map_err(io_err(path))?;
    Ok(ArchiveFormat::detect(&head[..n])
        .and_then(|f| f.compression())
        .unwrap_or(Compression::None))
}

/// A registry reference pinned by digest: `HOST[:PORT]/NAME@sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub digest: Digest,
}

impl std::str::FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Reference, OciError> {
        let err = |message: &str| OciError::Reference {
            reference: s.to_string(),
            message: message.to_string(),
        };
        let (name, digest) = s.rsplit_once('@').ok_or_else(|| {
            err("images are pinned by digest: write HOST/NAME@sha256:<64 hex> (`skopeo inspect docker://HOST/NAME:TAG` prints the digest)")
        })?;
        let digest: Digest = digest
            .parse()
            .map_err(|e: crate::DigestError| err(&e.to_string()))?;
        let (registry, repository) = name
            .split_once('/')
            .ok_or_else(|| err("name the registry host: write HOST[:PORT]/NAME@sha256:<hex>"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(err(
                "the part before the first / must be a registry host (with a dot or a port); hermit has no default registry",
            ));
        }
        if !valid_registry(registry) {
            return Err(err(
                "the registry must be HOST or HOST:PORT, the host a DNS name, an IPv4 address or [IPv6], the port 1 to 65535",
            ));
        }
        // `NAME:TAG@sha256:…`: the digest pins the image; the tag is only a
        // reminder for people and is not used.
        let repository = match repository.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => {
                if !valid_tag(tag) {
                    return Err(err(
                        "a tag is 1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -",
                    ));
                }
                name
            }
            _ => repository,
        };
        if !valid_repository(repository) {
            return Err(err(
                "repository names are /-separated components of lowercase letters and digits, joined inside a component by one . or _, two _, or dashes",
            ));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest,
        })
    }
}

/// `HOST[:PORT]`: a DNS name, an IPv4 address or a bracketed IPv6
/// address, and a port from 1 to 65535, which the URL parser `pull` uses
/// reads back unchanged. Anything else (spaces, `@`, `#`, `?`, `\\`,
/// `127.0.0.105000`, invalid IDNA labels) would make the URL hermit builds
/// point somewhere else, or nowhere.
fn valid_registry(registry: &str) -> bool {
    // The host as a URL spells it (IPv6 with its brackets), and the port.
    let (host, port) = match registry.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return false;
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return false,
                },
            };
            (&registry[..v6.len() + 2], port)
        }
        None => match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        },
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    // A URL reads a host whose last label is a number as an IPv4 address
    // (`127.0.0.105000` is not a name): then it must be one.
    let numeric = !host.starts_with('[')
        && host.rsplit('.').next().is_some_and(|l| {
            l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x") || l.starts_with("0X")
        });
    let ip_ok = !numeric || host.parse::<std::net::Ipv4Addr>().is_ok();
    // Last, the URL parser must read the same host back (it also checks
    // IDNA labels such as `xn--…`).
    port_ok
        && name_ok
        && ip_ok
        && crate::Url::parse(&format!("http://{registry}/"))
            .is_ok_and(|u| u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host)))
}

/// A repository name as the OCI distribution spec defines it:
/// `/`-separated components of `[a-z0-9]+` joined by `.`, `_`, `__` or
/// dashes. No empty component, no `..`, nothing that could leave `/v2/`.
fn valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').all(|c| {
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            let b = c.as_bytes();
            if b.first().is_none_or(|x| !alnum(x)) || b.last().is_none_or(|x| !alnum(x)) {
                return false;
            }
            // Between runs of [a-z0-9]: ".", "_", "__" or one or more "-".
            c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                .all(|sep| {
                    sep.is_empty()
                        || sep == "."
                        || sep == "_"
                        || sep == "__"
                        || sep.bytes().all(|x| x == b'-')
                })
        })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

/// How to talk to registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (HOST[:PORT]) reached over plain http. Loopback hosts
    /// always are.
    pub insecure_registries: Vec<String>,
}

fn is_loopback_host(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    // IPv6 only in brackets, as a URL needs it; anything else is not a host.
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => {
            host == "localhost"
                || host
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// The repository's base URL (`http` for loopback and insecure
/// registries) and a pull session for it.
fn pull_session(
    reference: &Reference,
    opts: &PullOptions,
) -> Result<(String, RegistrySession), OciError> {
    let scheme = if is_loopback_host(&reference.registry)
        || opts.insecure_registries.contains(&reference.registry)
    {
        "http"
    } else {
        "https"
    };
    let base = format!(
        "{scheme}://{}/v2/{}",
        reference.registry, reference.repository
    );
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| OciError::Http {
            url: base.clone(),
            source: e,
        })?;
    let session = RegistrySession {
        client,
        token: None,
        scope: format!("repository:{}:pull", reference.repository),
    };
    Ok((base, session))
}

/// Pulls an image from a registry by digest (anonymous bearer-token flow),
/// verifying every blob, and records it.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Image, OciError> {
    let (base, mut session) = pull_session(reference, opts)?;
    let source = reference.to_string();
    let top = reference.digest;
    let (bytes, media_type) = session
        .get_manifest(&format!("{base}/manifests/{top}"))
        .await?;
    check_bytes(&source, &top, &bytes)?;
    store.add_reader(&mut &bytes[..], &source, Some(&top), None)?;
    let (index, manifest_digest) =
        if media_type.contains("index") || media_type.contains("manifest.list") {
            let idx: ImageIndex = parse_json(&source, "OCI image index", &bytes)?;
            let chosen = choose_manifest(&source, idx.manifests(), None)?;
            let d = parse_digest(&source, chosen.digest().as_ref())?;
            let (mbytes, _) = session
                .get_manifest(&format!("{base}/manifests/{d}"))
                .await?;
            check_bytes(&source, &d, &mbytes)?;
            store.add_reader(&mut &mbytes[..], &source, Some(&d), None)?;
            (Some(top), d)
        } else {
            (None, top)
        };
    // Collect the blobs to fetch first (the manifest is in the store now),
    // then fetch them one by one.
    let manifest: ImageManifest = parse_json(
        &source,
        "OCI image manifest",
        &read_blob(store, &manifest_digest)?,
    )?;
    let mut wanted = vec![(
        parse_digest(&source, manifest.config().digest().as_ref())?,
        manifest.config().size(),
    )];
    for l in manifest.layers() {
        wanted.push((parse_digest(&source, l.digest().as_ref())?, l.size()));
    }
    for (d, size) in &wanted {
        if store.blob(d).is_some() {
            continue;
        }
        let _lock = store.lock(d)?;
        if store.blob(d).is_some() {
            continue;
        }
        session
            .get_blob(store, &format!("{base}/blobs/{d}"), d, *size)
            .await?;
    }
    let image = finish_manifest(
        store,
        &source,
        index,
        manifest_digest,
        &mut |d, _| match store.blob(d) {
            Some(_) => Ok(()),
            None => Err(OciError::MissingBlob {
                what: source.clone(),
                digest: d.to_string(),
            }),
        },
    )?;
    image.save(store)?;
    Ok(image)
}

fn check_bytes(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), OciError> {
    let actual = Digest::of(bytes);
    if actual != *expected {
        return Err(StoreError::Mismatch {
            what: what.to_string(),
            expected: *expected,
            actual,
        }
        .into());
    }
    Ok(())
}

struct RegistrySession {
    client: reqwest::Client,
    token: Option<String>,
    scope: String,
}

impl RegistrySession {
    async fn send(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, OciError> {
        let http = |source| OciError::Http {
            url: url.to_string(),
            source,
        };
        for attempt in 0..2 {
            let mut req = self.client.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(http)?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                self.token = Some(self.fetch_token(url, &challenge).await?);
                continue;
            }
            if !resp.status().is_success() {
                return Err(OciError::Registry {
                    url: url.to_string(),
                    message: format!("registry answered {}", resp.status()),
                });
            }
            return Ok(resp);
        }
        Err(OciError::Registry {
            url: url.to_string(),
            message: "still unauthorized after an anonymous token; the image may need credentials"
                .into(),
        })
    }

    async fn fetch_token(&self, url: &str, challenge: &str) -> Result<String, OciError> {
        let params = parse_challenge(challenge).ok_or_else(|| OciError::Registry {
            url: url.to_string(),
            message: format!("unauthorized, with an authentication challenge hermit does not understand: {challenge:?}"),
        })?;
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        query.push((
            "scope",
            params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| self.scope.clone()),
        ));
        let resp = self
            .client
            .get(&realm)
            .query(&query)
            .send()
            .await
            .map_err(|e| OciError::Http {
                url: realm.clone(),
                source: e,
            })?;
        if !resp.status().is_success() {
            return Err(OciError::Registry {
                url: realm,
                message: format!("token service answered {}", resp.status()),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = read_body(resp, &realm, MAX_TOKEN).await?;
        let t: Token = parse_json(&realm, "token response", &bytes)?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| OciError::Registry {
                url: realm,
                message: "token response has neither token nor access_token".into(),
            })
    }

    async fn get_manifest(&mut self, url: &str) -> Result<(Vec<u8>, String), OciError> {
        let resp = self.send(url, Some(ACCEPT_MANIFESTS)).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = read_body(resp, url, MAX_JSON).await?;
        // Some registries answer with a generic content type; look inside.
        let media_type = if media_type.contains("json") && !media_type.contains("vnd.") {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or(media_type)
        } else {
            media_type
        };
        Ok((bytes, media_type))
    }

    /// Streams a blob into the store: refused at once when the server
    /// announces another size than the descriptor's, cut off as soon as it
    /// sends more, committed only with the right size and digest.
    async fn get_blob(
        &mut self,
        store: &Store,
        url: &str,
        expected: &Digest,
        size: u64,
    ) -> Result<(), OciError> {
        self.get_blob_staged(store, url, expected, size)
            .await?
            .install()?;
        Ok(())
    }

    /// [`RegistrySession::get_blob`], leaving the checked blob staged.
    async fn get_blob_staged(
        &mut self,
        store: &Store,
        url: &str,
        expected: &Digest,
        size: u64,
    ) -> Result<crate::store::StagedBlob, OciError> {
        use std::io::Write;
        let mut resp = self.send(url, None).await?;
        if let Some(announced) = resp.content_length() {
            if announced != size {
                return Err(OciError::Registry {
                    url: url.to_string(),
                    message: format!(
                        "the registry announces {announced} bytes but the manifest says {size}; nothing was stored"
                    ),
                });
            }
        }
        let mut w = store.blob_writer()?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| OciError::Http {
            url: url.to_string(),
            source: e,
        })? {
            if w.size() + chunk.len() as u64 > size {
                return Err(StoreError::SizeMismatch {
                    what: format!(
                        "{url} (the manifest says {size} bytes; the registry sent more, cut off)"
                    ),
                    expected: size,
                    actual: w.size() + chunk.len() as u64,
                }
                .into());
            }
            w.write_all(&chunk)
                .map_err(StoreError::io("writing blob from", url))?;
        }
        Ok(w.stage(url, Some(expected), Some(size))?)
    }
}

/// An artifact pulled from a registry by digest: its manifest's bytes and
/// every blob the manifest names (config and layers), each checked against
/// its descriptor's digest and size and left staged — nothing is in the
/// store until the caller, having checked the whole, installs them.
pub struct PulledArtifact {
    pub manifest: Vec<u8>,
    pub blobs: Vec<crate::store::StagedBlob>,
}

/// Pulls an OCI artifact (an image manifest whose config and layers may be
/// of any media type, such as a hermit bundle) by digest. The manifest must
/// hash to the reference's digest; every descriptor's digest must be a
/// well-formed sha256 (a path-like or malformed one is refused before any
/// request is made for it).
pub async fn pull_artifact(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<PulledArtifact, OciError> {
    let (base, mut session) = pull_session(reference, opts)?;
    let source = reference.to_string();
    let (bytes, _) = session
        .get_manifest(&format!("{base}/manifests/{}", reference.digest))
        .await?;
    check_bytes(&source, &reference.digest, &bytes)?;
    #[derive(Deserialize)]
    struct Desc {
        digest: String,
        size: u64,
    }
    #[derive(Deserialize)]
    struct Manifest {
        config: Desc,
        #[serde(default)]
        layers: Vec<Desc>,
    }
    let m: Manifest = parse_json(&source, "OCI image manifest", &bytes)?;
    let mut wanted: BTreeMap<Digest, u64> = BTreeMap::new();
    for d in std::iter::once(&m.config).chain(m.layers.iter()) {
        let digest = parse_digest(&source, &d.digest)?;
        if let Some(&size) = wanted.get(&digest) {
            if size != d.size {
                return Err(OciError::Invalid {
                    what: source,
                    message: format!(
                        "blob {digest} is named with two sizes ({size} and {})",
                        d.size
                    ),
                });
            }
        }
        wanted.insert(digest, d.size);
    }
    let mut blobs = Vec::new();
    for (d, size) in &wanted {
        blobs.push(
            session
                .get_blob_staged(store, &format!("{base}/blobs/{d}"), d, *size)
                .await?,
        );
    }
    Ok(PulledArtifact {
        manifest: bytes,
        blobs,
    })
}

/// Reads a whole answer of at most `limit` bytes: refused at once when its
/// `Content-Length` says more, and cut off one chunk past the limit whatever
/// the server sends (chunked, or with a lying length), so hermit never holds
/// more than the limit plus one chunk.
async fn read_body(
    mut resp: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, OciError> {
    if let Some(announced) = resp.content_length() {
        if announced > limit {
            return Err(OciError::AnnouncedTooLarge {
                url: url.to_string(),
                announced,
                limit,
            });
        }
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| OciError::Http {
        url: url.to_string(),
        source: e,
    })? {
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(OciError::TooLarge {
                what: url.to_string(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(h: &str) -> Option<BTreeMap<String, String>> {
    let rest = h.trim().strip_prefix("Bearer ")?;
    let mut out = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let end = after.find('"')?;
        out.insert(key.trim().to_string(), after[..end].to_string());
        s = after[end + 1..].trim_start_matches(',').trim();
    }
    out.contains_key("realm").then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_need_a_digest_and_a_host() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r: Reference = format!("127.0.0.1:5000/lib/busybox@{d}").parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "lib/busybox");
        assert!("127.0.0.1:5000/busybox:latest"
            .parse::<Reference>()
            .is_err());
        assert!(format!("busybox@{d}").parse::<Reference>().is_err());
        let tagged: Reference = format!("reg.example/busybox:1@{d}").parse().unwrap();
        assert_eq!(tagged.repository, "busybox");
        let e = "reg.example/x@sha256:zz"
            .parse::<Reference>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex"), "{e}");
    }

    /// Found by the fuzz target `reference`: a registry with a space, an
    /// `@`, a `#`, or a repository with `..` or empty components was
    /// accepted, and the URL pulled from was not the one named.
    #[test]
    fn references_cannot_leave_the_registry() {
        let d = format!("sha256:{}", "a".repeat(64));
        for bad in [
            format!(" 27.0.0.1:5000/x@{d}"),
            format!("user@registry.example/x@{d}"),
            format!("registry.example#/x@{d}"),
            format!("registry.example?/x@{d}"),
            format!("localhost:65600/x@{d}"),
            format!("localhost:/x@{d}"),
            format!("registry.example/../../x@{d}"),
            format!("registry.example/a//b@{d}"),
            format!("registry.example/a/@{d}"),
            format!("registry.example/-a@{d}"),
            format!("registry.example/x:b@d:{d}"),
            format!("registry.example/x: @{d}"),
            format!("127.0.0.105000/x@{d}"),
            format!("10.0.0.256/x@{d}"),
            format!("a.0x10/x@{d}"),
            format!("a.xn--0/x@{d}"),
        ] {
            let e = bad.parse::<Reference>().expect_err(&bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        for good in [
            format!("[::1]:5000/a/b-c__d.e@{d}"),
            format!("registry.example:443/a--b/c_d:v1.2-x@{d}"),
        ] {
            assert!(good.parse::<Reference>().is_ok(), "{good}");
        }
    }

    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback_host("127.0.0.1:5000"));
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("registry.example.org"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
        // Found by `fuzz_loopback_host`: these were taken for loopback
        // (brackets trimmed one by one, bare IPv6), though no URL names them.
        for odd in [
            "localhost]",
            "[localhost",
            "[localhost]",
            "::1",
            "::1:5000",
            "[127.0.0.1]",
        ] {
            assert!(!is_loopback_host(odd), "{odd}");
        }
    }

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:lib/x:pull""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:lib/x:pull");
        assert!(parse_challenge("Basic realm=\"x\"").is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("HERMIT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
            ..Default::default()
        })]

        /// A registry's `WWW-Authenticate` answer: any text is parsed
        /// without panicking; a well-formed challenge gives its parameters.
        #[test]
        fn fuzz_bearer_challenge(
            params in proptest::collection::btree_map("[a-z]{1,8}", "[^\"]{0,16}", 0..4),
            sep in "(,|, |,  )",
            junk in proptest::prelude::any::<String>(),
        ) {
            let _ = parse_challenge(&junk);
            let _ = parse_challenge(&format!("Bearer {junk}"));
            let mut all = params.clone();
            all.insert("realm".into(), "https://auth.example/token".into());
            let h = all
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect::<Vec<_>>()
                .join(&sep);
            proptest::prop_assert_eq!(parse_challenge(&format!("Bearer {h}")), Some(all));
        }

        /// Plain http is only ever used for a name whose URL really is a
        /// loopback host.
        #[test]
        fn fuzz_loopback_host(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "localhost", "127.0.0.1", "127.1", "[::1]", "::1", "evil.example", "@", ":5000",
                    ":", "[", "]", ".", "0", "%2e", "#", "/",
                ]),
                1..5,
            ),
        ) {
            let host = pieces.concat();
            if is_loopback_host(&host) {
                let url = crate::Url::parse(&format!("http://{host}/v2/"));
                let ok = url.as_ref().is_ok_and(|u| {
                    u.host_str().is_some_and(|h| {
                        h == "localhost"
                            || h
                                .trim_start_matches('[')
                                .trim_end_matches(']')
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback())
                    })
                });
                proptest::prop_assert!(ok, "{:?} counted as loopback: {:?}", host, url);
            }
        }
    }

    #[test]
    fn archive_paths_must_stay_inside() {
        assert!(safe_rel("t", "../etc/passwd").is_err());
        assert!(safe_rel("t", "/etc/passwd").is_err());
        assert_eq!(
            normalise("t", "./blobs/sha256/ab").unwrap(),
            "blobs/sha256/ab"
        );
    }
}
