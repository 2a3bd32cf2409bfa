//! Bundles: one file that holds a build (`hermit export`, `hermit import`,
//! `hermit verify`, `hermit rebuild BUNDLE`).
//!
//! A bundle is an OCI image layout written as a tar (an `oci-archive`), so
//! that skopeo can copy it to a registry and `tar` can list it:
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one descriptor: the bundle's manifest
//! blobs/sha256/<manifest>    an OCI image manifest, artifactType
//!                            application/vnd.hermit.bundle.v1
//! blobs/sha256/<config>      the bundle config (application/vnd.hermit.bundle.config.v1+json):
//!                            format version, the top build key, build key → record blob
//! blobs/sha256/<…>           every other blob, one layer each, its role in its media type
//! ```
//!
//! The layers are the records of the whole closure (the top build and,
//! through `[inputs]`, every build below it), their spec and lock texts,
//! every source blob and local-source tree, the toolchain image (index,
//! manifest, config, layers), the outputs of inputs as canonical tars, and
//! every `.deb` a lock pins that the store or a mirror holds by its sha256.
//! Entries are written in a fixed order with fixed owners, modes and
//! mtimes, so the same build exported twice gives the same bytes.
//!
//! A bundle is untrusted input. [`scan`] reads every entry (regular files
//! under `blobs/sha256/` named by 64 lowercase hex digits, `oci-layout`,
//! `index.json`; anything else is refused), hashes every blob and stages it
//! outside the store; [`check`] then insists that the index names one hermit
//! manifest, that every descriptor's digest is well-formed and its blob
//! present with the described size, that the archive holds nothing the
//! manifest does not name, that every record passes the checks `hermit
//! rebuild` makes of a record, and that the closure is complete and holds
//! nothing the records do not account for. Only then are the blobs moved
//! into the store; on any failure nothing is.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hermit_store::oci;
use hermit_store::store::StagedBlob;
use hermit_store::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::exit::Exit;
use crate::lock::Lock;
use crate::net::NetArgs;
use crate::pipeline::rebuild::check_record;
use crate::record::{Record, SourceRecord};
use crate::spec::{Spec, Toolchain};

/// The bundle format this hermit writes.
pub const BUNDLE_VERSION: u32 = 1;
/// The bundle formats this hermit reads.
pub const READS: &[u32] = &[1];

/// The bundle manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.hermit.bundle.v1";
/// The media type of the bundle config.
pub const CONFIG_TYPE: &str = "application/vnd.hermit.bundle.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const LAYOUT: &[u8] = b"{\"imageLayoutVersion\":\"1.0.0\"}";
/// Largest index.json, manifest or config hermit reads from a bundle.
const MAX_JSON: u64 = 16 << 20;
/// Most entries hermit reads from a bundle.
const MAX_ENTRIES: usize = 1 << 20;
/// The annotation naming a layer for people.
const TITLE: &str = "org.opencontainers.image.title";

/// What a blob is to the bundle (its layer's media type says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Record,
    Spec,
    Lock,
    Source,
    LocalSource,
    Image,
    Output,
    Deb,
}

impl Role {
    const ALL: [Role; 8] = [
        Role::Record,
        Role::Spec,
        Role::Lock,
        Role::Source,
        Role::LocalSource,
        Role::Image,
        Role::Output,
        Role::Deb,
    ];
    fn media_type(self) -> &'static str {
        match self {
            Role::Record => "application/vnd.hermit.record.v1+json",
            Role::Spec => "application/vnd.hermit.spec.v1+toml",
            Role::Lock => "application/vnd.hermit.lock.v1+toml",
            Role::Source => "application/vnd.hermit.source.v1",
            Role::LocalSource => "application/vnd.hermit.local-source.v1.tar",
            Role::Image => "application/vnd.hermit.image-blob.v1",
            Role::Output => "application/vnd.hermit.output.v1.tar",
            Role::Deb => "application/vnd.hermit.deb.v1",
        }
    }
    fn from_media_type(m: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.media_type() == m)
    }
    fn plural(self) -> &'static str {
        match self {
            Role::Record => "records",
            Role::Spec => "specs",
            Role::Lock => "locks",
            Role::Source => "sources",
            Role::LocalSource => "local-source trees",
            Role::Image => "toolchain image blobs",
            Role::Output => "outputs of inputs",
            Role::Deb => "pinned .debs",
        }
    }
}

/// The bundle config: which records the bundle holds and which is on top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bundle_version: u32,
    /// The hermit that wrote the bundle, for people.
    pub made_by: String,
    /// The build key of the exported build.
    pub top: Digest,
    /// Build key → the digest of its record's blob, for the whole closure.
    pub records: BTreeMap<Digest, Digest>,
}

/// Only the version, to say which hermit reads a newer bundle.
#[derive(Deserialize)]
struct VersionOnly {
    bundle_version: serde_json::Value,
}

// ---------------------------------------------------------------- export

enum Data {
    Memory(Vec<u8>),
    Stored(PathBuf),
}

struct Item {
    role: Role,
    title: String,
    size: u64,
    data: Data,
}

/// What an export wrote.
pub struct Exported {
    pub manifest: Digest,
    pub records: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Writes the bundle of the record `top_text` (from `origin`) to `out`.
pub fn export(
    store: &Arc<Store>,
    net: &NetArgs,
    top_text: &str,
    origin: &str,
    out: &Path,
) -> anyhow::Result<Exported> {
    let (top, _) = check_record(top_text, origin)?;
    let mut items: BTreeMap<Digest, Item> = BTreeMap::new();
    let add =
        |items: &mut BTreeMap<Digest, Item>, d: Digest, role: Role, title: String, data: Data| {
            let size = match &data {
                Data::Memory(b) => b.len() as u64,
                Data::Stored(_) => 0,
            };
            let e = items.entry(d).or_insert(Item {
                role,
                title: title.clone(),
                size,
                data,
            });
            if role < e.role {
                e.role = role;
                e.title = title;
            }
        };
    // The closure, by build key.
    let mut records: BTreeMap<Digest, (Record, Spec, String)> = BTreeMap::new();
    let mut todo = vec![(top.build_key, top_text.to_string())];
    while let Some((key, text)) = todo.pop() {
        if records.contains_key(&key) {
            continue;
        }
        let (rec, spec) = check_record(&text, &format!("the record of build key {key}"))?;
        for input in &rec.inputs {
            if records.contains_key(&input.build_key) {
                continue;
            }
            let Some((irec, _, itext, _)) =
                crate::mirror::find_record(store, net, &input.build_key)?
            else {
                return Err(Exit::user(format!(
                    "the record of input {:?} of {} (build key {}) is neither in the store nor in a mirror; build {} first",
                    input.name, rec.package.name, input.build_key, input.spec
                ))
                .into());
            };
            if irec.output.digest != input.output {
                return Err(Exit::user(format!(
                    "input {:?} of {} names output {}, but the record of its build key {} says {}; build it again",
                    input.name, rec.package.name, input.output, input.build_key, irec.output.digest
                ))
                .into());
            }
            crate::mirror::output_tar_blob(store, &input.build_key, &irec)?;
            todo.push((input.build_key, itext));
        }
        records.insert(key, (rec, spec, text));
    }
    let mut record_blobs = BTreeMap::new();
    for (key, (rec, spec, text)) in &records {
        let who = format!("{} {}", rec.package.name, rec.package.version);
        let d = Digest::of(text.as_bytes());
        record_blobs.insert(*key, d);
        add(
            &mut items,
            d,
            Role::Record,
            format!("record of {who}"),
            Data::Memory(text.as_bytes().to_vec()),
        );
        add(
            &mut items,
            rec.spec.digest,
            Role::Spec,
            format!("{} of {who}", rec.spec.file),
            Data::Memory(rec.spec.text.as_bytes().to_vec()),
        );
        if let Some(l) = &rec.lock {
            add(
                &mut items,
                l.digest,
                Role::Lock,
                format!("hermit.lock of {who}"),
                Data::Memory(l.text.as_bytes().to_vec()),
            );
        }
        for s in &rec.sources {
            let (d, role) = match s {
                SourceRecord::Remote { sha256, .. } => (*sha256, Role::Source),
                SourceRecord::Local { tree, .. } => (*tree, Role::LocalSource),
            };
            add(
                &mut items,
                d,
                role,
                format!("source {:?} of {who}", s.name()),
                Data::Stored(PathBuf::new()),
            );
        }
        if !matches!(spec.toolchain, Toolchain::Input { .. }) {
            let i = &rec.image;
            let mut image: Vec<Digest> = i.index.iter().copied().collect();
            image.extend([i.manifest, i.config]);
            image.extend(i.layers.iter().map(|l| l.digest));
            for d in image {
                add(
                    &mut items,
                    d,
                    Role::Image,
                    format!("toolchain image {}", i.reference),
                    Data::Stored(PathBuf::new()),
                );
            }
        }
        for input in &rec.inputs {
            add(
                &mut items,
                input.output,
                Role::Output,
                format!("output of input {:?} of {who}", input.name),
                Data::Stored(PathBuf::new()),
            );
        }
        for d in lock_debs(rec)? {
            if store.blob(&d).is_none() {
                fetch_quietly(store, net, &d);
            }
            if store.blob(&d).is_some() {
                add(
                    &mut items,
                    d,
                    Role::Deb,
                    format!("pinned .deb of {who}'s toolchain"),
                    Data::Stored(PathBuf::new()),
                );
            }
        }
    }
    // Every stored blob must be present; say which are not, all at once.
    let mut missing = Vec::new();
    for (d, item) in items.iter_mut() {
        if let Data::Stored(p) = &mut item.data {
            match store.blob(d) {
                Some(path) => {
                    let meta = fs::metadata(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    item.size = meta.len();
                    *p = path;
                }
                None => missing.push(format!("{d} ({})", item.title)),
            }
        }
    }
    if !missing.is_empty() {
        return Err(Exit::user(format!(
            "not in the store, so the bundle cannot hold them: {}; build the spec again (or fetch its sources) first",
            missing.join(", ")
        ))
        .into());
    }
    let config = Config {
        bundle_version: BUNDLE_VERSION,
        made_by: format!("hermit {}", env!("CARGO_PKG_VERSION")),
        top: top.build_key,
        records: record_blobs,
    };
    // Through a Value: keys sorted.
    let config_bytes = serde_json::to_vec(&serde_json::to_value(&config)?)?;
    let config_digest = Digest::of(&config_bytes);
    // Layers: records first, then by role and digest.
    let mut order: Vec<(&Digest, &Item)> = items.iter().collect();
    order.sort_by_key(|(d, i)| (i.role, **d));
    let layers: Vec<serde_json::Value> = order
        .iter()
        .map(|(d, i)| {
            serde_json::json!({
                "mediaType": i.role.media_type(),
                "digest": d.to_string(),
                "size": i.size,
                "annotations": {TITLE: i.title},
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layers,
        "annotations": {
            TITLE: format!("{} {}", top.package.name, top.package.version),
            "org.opencontainers.image.version": top.package.version,
        },
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = Digest::of(&manifest_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "digest": manifest_digest.to_string(),
            "size": manifest_bytes.len(),
        }],
    });
    let index_bytes = serde_json::to_vec(&index)?;

    // Written beside `out`, renamed into place when complete.
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".hermit-export-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let mut w = TarWriter {
        file: tmp.as_file(),
        written: 0,
    };
    w.dir("blobs/")?;
    w.dir("blobs/sha256/")?;
    w.bytes("oci-layout", LAYOUT)?;
    w.bytes("index.json", &index_bytes)?;
    w.bytes(&blob_name(&manifest_digest), &manifest_bytes)?;
    w.bytes(&blob_name(&config_digest), &config_bytes)?;
    let mut bytes = 0u64;
    for (d, item) in &order {
        bytes += item.size;
        match &item.data {
            Data::Memory(b) => w.bytes(&blob_name(d), b)?,
            Data::Stored(p) => w.file(&blob_name(d), p, item.size)?,
        }
    }
    w.finish()?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", out.display()))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", out.display()))?;
    Ok(Exported {
        manifest: manifest_digest,
        records: records.len(),
        blobs: order.len() + 2,
        bytes,
    })
}

/// The sha256 of every `.deb` the record's lock pins.
fn lock_debs(rec: &Record) -> anyhow::Result<Vec<Digest>> {
    let Some(l) = &rec.lock else {
        return Ok(vec![]);
    };
    let lock = Lock::parse("hermit.lock", &l.text).map_err(|e| Exit::user(e.to_string()))?;
    let mut out = Vec::new();
    for p in &lock.toolchain.packages {
        if let Ok(d) = Digest::from_hex(&p.sha256) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Brings a blob from the configured mirrors, if any holds it; a miss is
/// not an error (a bundle holds the .debs it can).
fn fetch_quietly(store: &Arc<Store>, net: &NetArgs, d: &Digest) {
    if crate::config::mirrors(&net.mirrors).map_or(true, |m| m.is_empty()) {
        return;
    }
    let mut quiet = net.clone();
    quiet.quiet = true;
    let _ = crate::net::fetch(
        store,
        &quiet,
        vec![hermit_store::Want {
            digest: *d,
            size: None,
            urls: vec![],
            label: format!("pinned .deb {d}"),
        }],
    );
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// A tar writer with fixed metadata (ustar, owner 0:0, mtime 0), whose file
/// entries are copied by the kernel.
struct TarWriter<'a> {
    file: &'a File,
    written: u64,
}

impl TarWriter<'_> {
    fn header(
        &mut self,
        name: &str,
        size: u64,
        kind: tar::EntryType,
        mode: u32,
    ) -> anyhow::Result<()> {
        if size >= 8 << 30 {
            return Err(Exit::user(format!(
                "{name} is {size} bytes; a bundle entry is at most 8 GiB"
            ))
            .into());
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(name).with_context(|| format!("naming {name}"))?;
        h.set_size(size);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.write(h.as_bytes())
    }
    fn write(&mut self, b: &[u8]) -> anyhow::Result<()> {
        let mut f = self.file;
        f.write_all(b).context("writing the bundle")?;
        self.written += b.len() as u64;
        Ok(())
    }
    fn pad(&mut self) -> anyhow::Result<()> {
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            self.write(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }
    fn dir(&mut self, name: &str) -> anyhow::Result<()> {
        self.header(name, 0, tar::EntryType::Directory, 0o755)
    }
    fn bytes(&mut self, name: &str, data: &[u8]) -> anyhow::Result<()> {
        self.header(name, data.len() as u64, tar::EntryType::Regular, 0o644)?;
        self.write(data)?;
        self.pad()
    }
    fn file(&mut self, name: &str, path: &Path, size: u64) -> anyhow::Result<()> {
        self.header(name, size, tar::EntryType::Regular, 0o644)?;
        let src = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut f = self.file;
        let n = io::copy(&mut (&src).take(size + 1), &mut f)
            .with_context(|| format!("copying {} into the bundle", path.display()))?;
        if n != size {
            return Err(Exit::user(format!(
                "{} changed size while it was exported ({size} bytes, then {n}); the store is damaged: run `hermit store verify`",
                path.display()
            ))
            .into());
        }
        self.written += n;
        self.pad()
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.write(&[0u8; 1024])
    }
}

use std::io::Read as _;

// ---------------------------------------------------------------- reading

/// Where a blob's bytes are while a bundle is checked.
enum Loc {
    /// Inside the archive file at this offset (`hermit verify`).
    At(u64),
    /// Staged outside the store (`hermit import`).
    Staged(StagedBlob),
}

struct Blob {
    size: u64,
    loc: Loc,
}

/// Everything read from a bundle before it is checked.
pub struct Scanned {
    origin: String,
    file: Option<File>,
    index: Option<Vec<u8>>,
    /// The manifest digest when it is known otherwise (a registry reference).
    pinned: Option<Digest>,
    blobs: BTreeMap<Digest, Blob>,
}

fn bad(origin: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    Exit::user(format!(
        "{origin}: {msg}; the bundle is damaged or was tampered with, and nothing from it was stored"
    ))
    .into()
}

impl Scanned {
    fn read_small(&self, d: &Digest, what: &str) -> anyhow::Result<Vec<u8>> {
        let b = self
            .blobs
            .get(d)
            .ok_or_else(|| bad(&self.origin, format!("{what} {d} is not in the bundle")))?;
        if b.size > MAX_JSON.max(crate::limits::MAX_RECORD) {
            return Err(bad(
                &self.origin,
                format!("{what} {d} is {} bytes, too large to read", b.size),
            ));
        }
        let mut buf = vec![0u8; b.size as usize];
        match &b.loc {
            Loc::At(off) => {
                let f = self
                    .file
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("internal error: no archive"))?;
                f.read_exact_at(&mut buf, *off)
                    .with_context(|| format!("reading {}", self.origin))?;
            }
            Loc::Staged(s) => {
                let f = File::open(s.path())
                    .with_context(|| format!("reading {}", s.path().display()))?;
                f.read_exact_at(&mut buf, 0)
                    .with_context(|| format!("reading {}", s.path().display()))?;
            }
        }
        Ok(buf)
    }
}

/// Reads a bundle archive: every blob hashed (and, with a store, staged).
pub fn scan(path: &Path, store: Option<&Store>) -> anyhow::Result<Scanned> {
    use std::os::unix::fs::OpenOptionsExt;
    let origin = path.display().to_string();
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {origin}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {origin}"))?;
    if !meta.is_file() {
        return Err(Exit::user(format!(
            "{origin}: not a regular file; a bundle is a file written by `hermit export`"
        ))
        .into());
    }
    let len = meta.len();
    let mut out = Scanned {
        origin: origin.clone(),
        file: None,
        index: None,
        pinned: None,
        blobs: BTreeMap::new(),
    };
    let mut seen = BTreeSet::new();
    let mut off = 0u64;
    let mut pax_path: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    // (digest, offset of its data, size) of every blob, in archive order.
    let mut pending: Vec<(Digest, u64, u64)> = Vec::new();
    loop {
        if off + 512 > len {
            if off == len && out.index.is_some() {
                break; // no end-of-archive blocks: accepted
            }
            return Err(bad(
                &origin,
                format!("the archive ends inside a header at byte {off}"),
            ));
        }
        let mut block = [0u8; 512];
        file.read_exact_at(&mut block, off)
            .with_context(|| format!("reading {origin}"))?;
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let h = tar::Header::from_byte_slice(&block);
        let sum: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        if h.cksum().ok().map(u64::from) != Some(sum) {
            return Err(bad(
                &origin,
                format!("the tar header at byte {off} has a wrong checksum"),
            ));
        }
        let hsize = h.entry_size().map_err(|_| {
            bad(
                &origin,
                format!("the tar header at byte {off} has no valid size"),
            )
        })?;
        let size = pax_size.take().unwrap_or(hsize);
        let data = off + 512;
        let next = data
            .checked_add(size.div_ceil(512) * 512)
            .filter(|&n| n <= len)
            .ok_or_else(|| {
                bad(
                    &origin,
                    format!(
                        "the entry at byte {off} says {size} bytes, past the end of the archive"
                    ),
                )
            })?;
        let name = match pax_path.take() {
            Some(p) => p,
            None => String::from_utf8_lossy(&h.path_bytes()).into_owned(),
        };
        let kind = h.entry_type();
        off = next;
        if kind.is_pax_local_extensions() {
            let mut buf = vec![0u8; size.min(1 << 20) as usize];
            file.read_exact_at(&mut buf, data)
                .with_context(|| format!("reading {origin}"))?;
            for rec in pax_records(&buf) {
                match rec {
                    ("path", v) => pax_path = Some(v.to_string()),
                    ("size", v) => {
                        pax_size =
                            Some(v.parse().map_err(|_| {
                                bad(&origin, format!("a pax header gives size {v:?}"))
                            })?)
                    }
                    _ => {}
                }
            }
            continue;
        }
        if kind.is_pax_global_extensions() {
            continue;
        }
        let clean = name.trim_start_matches("./");
        if kind.is_dir() {
            if matches!(
                clean,
                "blobs" | "blobs/" | "blobs/sha256" | "blobs/sha256/" | "" | "."
            ) {
                continue;
            }
            return Err(bad(
                &origin,
                format!("unexpected directory {name:?} in the archive"),
            ));
        }
        if !kind.is_file() {
            return Err(bad(
                &origin,
                format!(
                    "entry {name:?} is not a regular file (tar type {:?})",
                    kind.as_byte() as char
                ),
            ));
        }
        if !seen.insert(clean.to_string()) || seen.len() > MAX_ENTRIES {
            return Err(bad(
                &origin,
                format!("entry {name:?} appears twice, or the archive has too many entries"),
            ));
        }
        match clean {
            "oci-layout" => continue,
            "index.json" => {
                if size > MAX_JSON {
                    return Err(bad(&origin, "index.json is too large"));
                }
                let mut buf = vec![0u8; size as usize];
                file.read_exact_at(&mut buf, data)
                    .with_context(|| format!("reading {origin}"))?;
                out.index = Some(buf);
                continue;
            }
            _ => {}
        }
        let Some(hex) = clean.strip_prefix("blobs/sha256/") else {
            return Err(bad(&origin, format!("unexpected entry {name:?} (a bundle holds oci-layout, index.json and blobs/sha256/<digest>)")));
        };
        let digest = Digest::from_hex(hex).map_err(|_| {
            bad(
                &origin,
                format!("entry {name:?} is not named by a sha256 digest (64 lowercase hex digits)"),
            )
        })?;
        pending.push((digest, data, size));
    }
    // Every blob, hashed, and (importing) copied into the store's temp
    // directory: in one pass over the archive on two threads
    // ([`Store::stage_ranges`]). Blobs the store holds already, or every
    // blob when only verifying, are hashed, not copied.
    let (copy, hash_only): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|(d, _, _)| store.is_some_and(|s| s.blob(d).is_none()));
    let mismatch = |e: hermit_store::StoreError| match e {
        hermit_store::StoreError::Mismatch {
            expected, actual, ..
        } => bad(&origin, format!("blob {expected} hashes to {actual}")),
        e => {
            anyhow::Error::new(e).context(format!("importing {origin}; nothing from it was stored"))
        }
    };
    if let Some(store) = store {
        let ranges: Vec<hermit_store::store::Range> = copy
            .iter()
            .map(|(d, off, size)| hermit_store::store::Range {
                offset: *off,
                len: *size,
                expected: *d,
                what: format!("{origin}: blob {d}"),
            })
            .collect();
        let staged = store.stage_ranges(&file, &ranges).map_err(mismatch)?;
        for ((d, _, size), s) in copy.into_iter().zip(staged) {
            out.blobs.insert(
                d,
                Blob {
                    size,
                    loc: Loc::Staged(s),
                },
            );
        }
    }
    let ranges: Vec<(u64, u64)> = hash_only
        .iter()
        .map(|(_, off, size)| (*off, *size))
        .collect();
    let hashes = hermit_store::store::hash_ranges(&file, &ranges);
    for ((d, off, size), h) in hash_only.into_iter().zip(hashes) {
        let actual = h.with_context(|| format!("reading {origin}"))?;
        if actual != d {
            return Err(bad(&origin, format!("blob {d} hashes to {actual}")));
        }
        out.blobs.insert(
            d,
            Blob {
                size,
                loc: Loc::At(off),
            },
        );
    }
    if out.index.is_none() {
        return Err(Exit::user(format!(
            "{origin}: no index.json; this is not a bundle written by `hermit export` (an OCI image layout as a tar)"
        ))
        .into());
    }
    out.file = Some(file);
    Ok(out)
}

/// `len key=value\n` records of a pax header.
fn pax_records(buf: &[u8]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut s = buf;
    while let Some(sp) = s.iter().position(|&b| b == b' ') {
        let Some(n) = std::str::from_utf8(&s[..sp])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        if n <= sp + 1 || n > s.len() {
            break;
        }
        if let Ok(kv) = std::str::from_utf8(&s[sp + 1..n - 1]) {
            if let Some((k, v)) = kv.split_once('=') {
                out.push((k, v));
            }
        }
        s = &s[n..];
    }
    out
}

/// Pulls a bundle from a registry by digest (every blob checked against
/// the manifest, staged outside the store).
pub fn pull(store: &Store, reference: &oci::Reference) -> anyhow::Result<Scanned> {
    let origin = reference.to_string();
    let pulled = crate::net::runtime()?
        .block_on(oci::pull_artifact(
            store,
            reference,
            &oci::PullOptions::default(),
        ))
        .map_err(|e| {
            Exit::user(format!(
                "pulling the bundle {origin}: {e}; nothing from it was stored"
            ))
        })?;
    let mut blobs = BTreeMap::new();
    let manifest = store.blob_writer()?;
    let mut manifest = manifest;
    manifest
        .write_all(&pulled.manifest)
        .context("staging the manifest")?;
    let staged = manifest.stage(&origin, Some(&reference.digest), None)?;
    blobs.insert(
        reference.digest,
        Blob {
            size: staged.size(),
            loc: Loc::Staged(staged),
        },
    );
    for b in pulled.blobs {
        blobs.insert(
            b.digest(),
            Blob {
                size: b.size(),
                loc: Loc::Staged(b),
            },
        );
    }
    Ok(Scanned {
        origin,
        file: None,
        index: None,
        pinned: Some(reference.digest),
        blobs,
    })
}

// ---------------------------------------------------------------- checking

/// A record a bundle holds, checked.
pub struct HeldRecord {
    pub record: Record,
    pub spec: Spec,
    pub blob: Digest,
}

/// A bundle whose every check passed.
pub struct Checked {
    pub manifest: Digest,
    pub config: Config,
    pub records: BTreeMap<Digest, HeldRecord>,
    pub roles: BTreeMap<Digest, (Role, u64)>,
    scanned: Scanned,
}

#[derive(Deserialize)]
struct Desc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    manifests: Vec<Desc>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Desc,
    #[serde(default)]
    layers: Vec<Desc>,
}

/// Checks a scanned bundle as a whole (see the module docs).
pub fn check(scanned: Scanned) -> anyhow::Result<Checked> {
    let origin = scanned.origin.clone();
    let digest_of = |what: &str, s: &str| -> anyhow::Result<Digest> {
        s.parse::<Digest>().map_err(|e| {
            bad(
                &origin,
                format!("{what} names a malformed or path-like digest: {e}"),
            )
        })
    };
    let present = |what: &str, d: &Digest, size: u64| -> anyhow::Result<()> {
        match scanned.blobs.get(d) {
            None => Err(bad(
                &origin,
                format!("{what} names blob {d}, which the bundle does not hold"),
            )),
            Some(b) if b.size != size => Err(bad(
                &origin,
                format!("{what} says blob {d} is {size} bytes, but it is {}", b.size),
            )),
            Some(_) => Ok(()),
        }
    };
    let manifest_digest = match (&scanned.index, scanned.pinned) {
        (_, Some(d)) => d,
        (Some(bytes), None) => {
            let index: Index = serde_json::from_slice(bytes).map_err(|e| {
                bad(
                    &origin,
                    format!("index.json is not an OCI image index: {e}"),
                )
            })?;
            if index.schema_version != 2 {
                return Err(bad(&origin, "index.json's schemaVersion is not 2"));
            }
            let [desc] = index.manifests.as_slice() else {
                return Err(bad(
                    &origin,
                    format!(
                        "index.json names {} manifests; a bundle has one",
                        index.manifests.len()
                    ),
                ));
            };
            let d = digest_of("index.json", &desc.digest)?;
            present("index.json", &d, desc.size)?;
            d
        }
        (None, None) => return Err(bad(&origin, "no index.json")),
    };
    let mbytes = scanned.read_small(&manifest_digest, "the manifest")?;
    let m: Manifest = serde_json::from_slice(&mbytes).map_err(|e| {
        bad(
            &origin,
            format!("the manifest {manifest_digest} is not an OCI image manifest: {e}"),
        )
    })?;
    if m.schema_version != 2 || m.media_type.as_deref().is_some_and(|t| t != MANIFEST_TYPE) {
        return Err(bad(
            &origin,
            format!(
                "the manifest {manifest_digest} is not an OCI image manifest (schemaVersion 2)"
            ),
        ));
    }
    if m.config.media_type != CONFIG_TYPE {
        return Err(Exit::user(format!(
            "{origin}: its manifest's config is {:?}, not a hermit bundle's ({CONFIG_TYPE}); a toolchain image is imported with `hermit image import`",
            m.config.media_type
        ))
        .into());
    }
    let what = format!("the manifest {manifest_digest}");
    let config_digest = digest_of(&what, &m.config.digest)?;
    present(&what, &config_digest, m.config.size)?;
    let cbytes = scanned.read_small(&config_digest, "the bundle config")?;
    let version: VersionOnly = serde_json::from_slice(&cbytes).map_err(|e| {
        bad(
            &origin,
            format!("the bundle config {config_digest} has no bundle_version: {e}"),
        )
    })?;
    if !version
        .bundle_version
        .as_u64()
        .is_some_and(|v| READS.iter().any(|&r| u64::from(r) == v))
    {
        return Err(Exit::user(format!(
            "{origin}: bundle format version {} is not one this hermit reads ({}); use a hermit release that reads it (see docs/bundles.md)",
            version.bundle_version,
            READS.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    let config: Config = serde_json::from_slice(&cbytes).map_err(|e| {
        bad(
            &origin,
            format!("the bundle config {config_digest} is not valid: {e}"),
        )
    })?;
    let mut roles: BTreeMap<Digest, (Role, u64)> = BTreeMap::new();
    for l in &m.layers {
        let d = digest_of(&what, &l.digest)?;
        present(&what, &d, l.size)?;
        let role = Role::from_media_type(&l.media_type).ok_or_else(|| {
            bad(
                &origin,
                format!(
                    "layer {d} has media type {:?}, not one a bundle holds",
                    l.media_type
                ),
            )
        })?;
        if roles.insert(d, (role, l.size)).is_some() {
            return Err(bad(&origin, format!("the manifest names blob {d} twice")));
        }
    }
    for d in scanned.blobs.keys() {
        if *d != manifest_digest && *d != config_digest && !roles.contains_key(d) {
            return Err(bad(
                &origin,
                format!("blob {d} is in the archive but the manifest does not name it"),
            ));
        }
    }
    // The records, each checked like any record `hermit rebuild` reads.
    let mut records = BTreeMap::new();
    for (key, blob) in &config.records {
        if roles.get(blob).map(|r| r.0) != Some(Role::Record) {
            return Err(bad(
                &origin,
                format!(
                    "the config names record {blob}, which the manifest does not hold as a record"
                ),
            ));
        }
        let bytes = scanned.read_small(blob, "record")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| bad(&origin, format!("record {blob} is not UTF-8 text")))?;
        let (record, spec) = check_record(&text, &format!("{origin}: record {blob}"))?;
        if record.build_key != *key {
            return Err(bad(&origin, format!("record {blob} is the record of build key {}, but the config files it under {key}", record.build_key)));
        }
        records.insert(
            *key,
            HeldRecord {
                record,
                spec,
                blob: *blob,
            },
        );
    }
    if !records.contains_key(&config.top) {
        return Err(bad(
            &origin,
            format!("the config's top build key {} has no record", config.top),
        ));
    }
    // The closure: every blob a record needs is held, and every blob held
    // is one a record accounts for.
    let mut needed: BTreeMap<Digest, String> = BTreeMap::new();
    let mut allowed: BTreeSet<Digest> = BTreeSet::new();
    for (key, h) in &records {
        let r = &h.record;
        let who = format!("{} {} (build key {key})", r.package.name, r.package.version);
        allowed.insert(h.blob);
        allowed.insert(r.spec.digest);
        if let Some(l) = &r.lock {
            allowed.insert(l.digest);
        }
        for s in &r.sources {
            let d = match s {
                SourceRecord::Remote { sha256, .. } => *sha256,
                SourceRecord::Local { tree, .. } => *tree,
            };
            needed.insert(d, format!("source {:?} of {who}", s.name()));
        }
        if !matches!(h.spec.toolchain, Toolchain::Input { .. }) {
            let i = &r.image;
            for d in i
                .index
                .iter()
                .chain([&i.manifest, &i.config])
                .chain(i.layers.iter().map(|l| &l.digest))
            {
                needed.insert(*d, format!("the toolchain image of {who}"));
            }
        }
        for input in &r.inputs {
            needed.insert(
                input.output,
                format!("the output of input {:?} of {who}", input.name),
            );
            match records.get(&input.build_key) {
                None => {
                    return Err(bad(
                        &origin,
                        format!(
                            "input {:?} of {who} (build key {}) has no record in the bundle",
                            input.name, input.build_key
                        ),
                    ))
                }
                Some(ih) if ih.record.output.digest != input.output => {
                    return Err(bad(
                        &origin,
                        format!(
                            "input {:?} of {who} names output {}, but its record says {}",
                            input.name, input.output, ih.record.output.digest
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        allowed.extend(lock_debs(r)?);
    }
    for (d, why) in &needed {
        if !roles.contains_key(d) {
            return Err(bad(
                &origin,
                format!("{why} is blob {d}, which the bundle does not hold"),
            ));
        }
    }
    for d in roles.keys() {
        if !needed.contains_key(d) && !allowed.contains(d) {
            return Err(bad(
                &origin,
                format!("blob {d} is not one any record of the bundle names"),
            ));
        }
    }
    Ok(Checked {
        manifest: manifest_digest,
        config,
        records,
        roles,
        scanned,
    })
}

// ---------------------------------------------------------------- import

/// What an import stored.
pub struct Imported {
    pub checked_summary: Summary,
    /// The top record's text, as a file in the store.
    pub record_path: PathBuf,
    pub top: Record,
    pub new_blobs: usize,
    /// The gc root that keeps the bundle's blobs, unless `--no-root`.
    pub root: Option<String>,
}

/// The gc root that keeps an imported bundle's blobs in the store.
pub fn root_name(manifest: &Digest) -> String {
    format!("bundle-{}", manifest.hex())
}

/// The text of an imported bundle's gc root: one `record <build key hex>
/// sha256:<record blob>` line per record (so that the records of a
/// bundle's inputs are found by build key: [`imported_record`]), then every
/// blob the bundle holds. Every `sha256:` digest in it is kept by `hermit
/// store gc` (see `hermit_store::gc`).
fn root_text(checked: &Checked) -> String {
    let name = root_name(&checked.manifest);
    let mut text = format!(
        "# the blobs of the bundle {} (`hermit store root rm {name}` releases them)\n",
        checked.manifest
    );
    for (key, blob) in &checked.config.records {
        text.push_str(&format!("record {} {blob}\n", key.hex()));
    }
    for d in checked.scanned.blobs.keys() {
        text.push_str(&format!("{d}\n"));
    }
    text
}

/// The record of build key `key` held by a bundle imported into `store`
/// (found through the bundles' gc roots): its text and where it is, or
/// `None`. The caller checks it like any record.
pub fn imported_record(store: &Store, key: &Digest) -> anyhow::Result<Option<(String, String)>> {
    let dir = store.base().join("gcroots");
    let mut names: Vec<String> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("bundle-"))
            .collect(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    names.sort();
    let want = format!("record {} ", key.hex());
    for n in names {
        let p = dir.join(&n);
        let Ok(text) = crate::limits::read_text(&p, 64 << 20) else {
            continue;
        };
        for line in text.lines() {
            let Some(blob) = line.strip_prefix(&want) else {
                continue;
            };
            let Ok(blob) = blob.trim().parse::<Digest>() else {
                continue;
            };
            let Some(path) = store.blob(&blob) else {
                continue;
            };
            let rec = crate::limits::read_text(&path, crate::limits::MAX_RECORD)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(Some((
                rec,
                format!("record {blob} of the imported bundle {n}"),
            )));
        }
    }
    Ok(None)
}

/// Moves a checked bundle's blobs into the store and records its images;
/// with `root`, a gc root named after the bundle ([`root_name`]) keeps
/// them.
pub fn install(store: &Store, checked: Checked, root: bool) -> anyhow::Result<Imported> {
    let summary = summary(&checked);
    let root_text = root.then(|| root_text(&checked));
    let mut new_blobs = 0;
    let mut staged = Vec::new();
    for (d, b) in checked.scanned.blobs {
        if let Loc::Staged(s) = b.loc {
            if store.blob(&d).is_none() {
                new_blobs += 1;
            }
            staged.push(s);
        }
    }
    // One syncfs for all of them, then the renames.
    StagedBlob::install_all(staged).context("storing the bundle's blobs")?;
    for h in checked.records.values() {
        if matches!(h.spec.toolchain, Toolchain::Input { .. }) {
            continue;
        }
        let i = &h.record.image;
        if oci::find(store, &i.manifest)?.is_none() {
            oci::load_from_store(store, &i.manifest, i.index, &i.reference)
                .with_context(|| format!("recording the toolchain image {}", i.manifest))?;
        }
    }
    let root = match root_text {
        Some(text) => {
            let name = root_name(&checked.manifest);
            let dest = store.base().join("gcroots").join(&name);
            hermit_store::store::write_small_atomic(store.tmp_dir(), &dest, text.as_bytes())
                .with_context(|| format!("writing the gc root {}", dest.display()))?;
            Some(name)
        }
        None => None,
    };
    let top = checked
        .records
        .get(&checked.config.top)
        .ok_or_else(|| anyhow::anyhow!("internal error: no top record"))?;
    Ok(Imported {
        checked_summary: summary,
        record_path: store.blob_path(&top.blob),
        top: top.record.clone(),
        new_blobs,
        root,
    })
}

/// Imports a bundle file: scan, check, then store everything or nothing
/// (with a gc root for it when `root`).
pub fn import(store: &Store, path: &Path, root: bool) -> anyhow::Result<Imported> {
    let scanned = scan(path, Some(store))?;
    install(store, check(scanned)?, root)
}

/// For `hermit shell BUNDLE` and the like: imports the bundle at `path`
/// into `store` (every check of `hermit import`) and returns the path of
/// its top record inside the store, to be used like any record file.
#[allow(dead_code)]
pub fn import_for_use(store: &Store, path: &Path) -> anyhow::Result<(PathBuf, Record)> {
    let i = import(store, path, true)?;
    Ok((i.record_path, i.top))
}

/// What `hermit rebuild ARG` should read: ARG itself when it is a record;
/// when it is a bundle file or a registry reference to a pushed bundle,
/// the bundle is imported first and its top record is returned.
pub fn record_for_rebuild(store: &Store, arg: &Path, offline: bool) -> anyhow::Result<PathBuf> {
    match kind_of(arg) {
        Kind::Bundle => Ok(import(store, arg, true)?.record_path),
        Kind::Reference(r) if offline => Err(Exit::user(format!(
            "{r} is a registry reference, and --offline forbids pulling it; drop --offline, or rebuild from the bundle file (`skopeo copy docker://… oci-archive:FILE`)"
        ))
        .into()),
        Kind::Reference(r) => Ok(install(store, check(pull(store, &r)?)?, true)?.record_path),
        Kind::Other => Ok(arg.to_path_buf()),
    }
}

enum Kind {
    Bundle,
    Reference(oci::Reference),
    Other,
}

/// A bundle is a tar (`ustar` at byte 257); a record is JSON.
fn kind_of(arg: &Path) -> Kind {
    if let Ok(f) = File::open(arg) {
        if f.metadata().is_ok_and(|m| m.is_file()) {
            let mut head = [0u8; 262];
            if f.read_exact_at(&mut head, 0).is_ok() && &head[257..262] == b"ustar" {
                return Kind::Bundle;
            }
        }
        return Kind::Other;
    }
    match arg.to_str().map(str::parse::<oci::Reference>) {
        Some(Ok(r)) => Kind::Reference(r),
        _ => Kind::Other,
    }
}

// ---------------------------------------------------------------- summary

/// What a bundle holds, for people.
pub struct Summary {
    pub manifest: Digest,
    pub version: u32,
    pub made_by: String,
    pub top: String,
    pub records: Vec<String>,
    pub roles: Vec<(Role, usize, u64)>,
}

pub fn summary(c: &Checked) -> Summary {
    let mut roles = Vec::new();
    for r in Role::ALL {
        let v: Vec<u64> = c
            .roles
            .values()
            .filter(|(x, _)| *x == r)
            .map(|(_, s)| *s)
            .collect();
        if !v.is_empty() {
            roles.push((r, v.len(), v.iter().sum()));
        }
    }
    let name = |h: &HeldRecord| {
        format!(
            "{} {} (build key {}, output {})",
            h.record.package.name,
            h.record.package.version,
            h.record.build_key,
            h.record.output.digest
        )
    };
    Summary {
        manifest: c.manifest,
        version: c.config.bundle_version,
        made_by: c.config.made_by.clone(),
        top: c.records.get(&c.config.top).map(name).unwrap_or_default(),
        records: c.records.values().map(name).collect(),
        roles,
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bundle   {} (format {}, {})",
            self.manifest, self.version, self.made_by
        )?;
        writeln!(f, "top      {}", self.top)?;
        for r in &self.records {
            writeln!(f, "record   {r}")?;
        }
        for (role, n, bytes) in &self.roles {
            writeln!(
                f,
                "holds    {n} {} ({})",
                role.plural(),
                indicatif::HumanBytes(*bytes)
            )?;
        }
        Ok(())
    }
}

/// `hermit verify FILE`: every check of an import, nothing stored.
pub fn verify(path: &Path) -> anyhow::Result<Summary> {
    let c = check(scan(path, None)?)?;
    Ok(summary(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundle config's bytes are part of format 1: compact JSON, keys
    /// sorted, digests as `sha256:<hex>`.
    #[test]
    fn config_bytes_are_format_1() {
        let key = Digest::of(b"key");
        let rec = Digest::of(b"record");
        let c = Config {
            bundle_version: 1,
            made_by: "hermit 0.1.0".into(),
            top: key,
            records: BTreeMap::from([(key, rec)]),
        };
        let got =
            String::from_utf8(serde_json::to_vec(&serde_json::to_value(&c).unwrap()).unwrap())
                .unwrap();
        assert_eq!(
            got,
            format!(
                "{{\"bundle_version\":1,\"made_by\":\"hermit 0.1.0\",\"records\":{{\"{key}\":\"{rec}\"}},\"top\":\"{key}\"}}"
            )
        );
        let back: Config = serde_json::from_str(&got).unwrap();
        assert_eq!(back, c);
        // Unknown fields are refused.
        let extra = got.replacen('{', "{\"x\":1,", 1);
        assert!(serde_json::from_str::<Config>(&extra).is_err());
    }

    #[test]
    fn every_role_has_its_own_media_type() {
        for r in Role::ALL {
            assert_eq!(Role::from_media_type(r.media_type()), Some(r));
        }
        assert_eq!(
            Role::from_media_type("application/vnd.oci.image.layer.v1.tar"),
            None
        );
    }

    #[test]
    fn pax_records_are_read_and_garbage_is_not() {
        let buf = b"29 path=blobs/sha256/../../x\n11 size=42\n";
        assert_eq!(
            pax_records(buf),
            vec![("path", "blobs/sha256/../../x"), ("size", "42")]
        );
        assert!(pax_records(b"999 path=x\n").is_empty());
        assert!(pax_records(b"x path=x\n").is_empty());
    }
}
