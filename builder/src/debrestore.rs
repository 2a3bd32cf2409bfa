//! Debian toolchain images made again from their lock.
//!
//! A bootstrapped Debian image is a derived artifact: its real inputs are
//! the .debs `hermit.lock` pins (name, version, architecture, sha256, and
//! since lock version 2 the pool path and size). [`restore`] gathers those
//! .debs — from the store (a bootstrap keeps each as the blob of its
//! sha256), from content-addressed mirrors, or from archives that keep old
//! packages, by pool path (`--debian-archive URL`, `$HERMIT_DEBIAN_ARCHIVES`,
//! `debian_archives` in the config file) — each checked by its sha256
//! before it is stored. It then serves exactly those .debs as a flat apt
//! repository on loopback and runs mmdebstrap against it with the same
//! options, suite, package list and `SOURCE_DATE_EPOCH` as the original
//! bootstrap. mmdebstrap's output depends only on the packages installed,
//! and the image keeps no trace of where they came from (see
//! [`crate::debian::mmdebstrap`]), so the image is the same, bit for bit;
//! an image that is not is refused, naming both digests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use hermit_store::oci::Image;
use hermit_store::{Digest, Store, Url, Want};

use crate::debian::{self, Package};
use crate::exit::Exit;
use crate::lock::{Lock, ToolchainKind, ToolchainRequest};
use crate::mirror::MirrorBlob;
use crate::net::{self, NetArgs};

/// Whether `lock` pins a Debian toolchain by its packages, so that its
/// image can be made again from them.
pub fn restorable(lock: &Lock) -> bool {
    lock.toolchain.kind == ToolchainKind::Debian && !lock.toolchain.packages.is_empty()
}

/// The archives of old Debian packages to look in, in order: `flags`, then
/// `$HERMIT_DEBIAN_ARCHIVES` (whitespace-separated), then the config file's
/// `debian_archives`. Each is the URL of an archive's root: the directory
/// that holds `pool/`.
pub fn archives(flags: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |u: &str, from: &str| -> anyhow::Result<()> {
        let parsed = Url::parse(u).map_err(|e| {
            Exit::user(format!(
                "{from}: Debian archive {u:?} is not a URL ({e}); write the archive's root, e.g. http://HOST/debian"
            ))
        })?;
        if !["http", "https", "file"].contains(&parsed.scheme()) {
            return Err(Exit::user(format!(
                "{from}: Debian archive {u:?}: only http://, https:// and file:// URLs are supported"
            ))
            .into());
        }
        let u = u.trim_end_matches('/').to_string();
        if !out.contains(&u) {
            out.push(u);
        }
        Ok(())
    };
    for u in flags {
        add(u, "--debian-archive")?;
    }
    if let Ok(env) = std::env::var("HERMIT_DEBIAN_ARCHIVES") {
        for u in env.split_whitespace() {
            add(u, "$HERMIT_DEBIAN_ARCHIVES")?;
        }
    }
    let (path, cfg) = crate::config::load()?;
    if let Some(path) = path {
        for u in &cfg.debian_archives {
            add(u, &path.display().to_string())?;
        }
    }
    Ok(out)
}

/// A package pin from a lock, checked: the lock may come from a record or
/// a mirror, so it is untrusted.
struct Pin<'a> {
    package: &'a Package,
    digest: Digest,
}

fn checked_pins<'a>(lock: &'a Lock, origin: &str) -> anyhow::Result<Vec<Pin<'a>>> {
    let mut out = Vec::new();
    for p in &lock.toolchain.packages {
        let bad = |why: String| -> anyhow::Error {
            Exit::user(format!(
                "{origin}: package {:?} {:?}: {why}",
                p.name, p.version
            ))
            .into()
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.:~_".contains(&b))
        };
        if !plain(&p.name) || !plain(&p.version) || !plain(&p.architecture) {
            return Err(bad(
                "name, version and architecture must be plain Debian package words".into(),
            ));
        }
        let ok_hex = p.sha256.len() == 64
            && p.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok_hex {
            return Err(bad(format!(
                "sha256 {:?} is not 64 lowercase hex digits",
                p.sha256
            )));
        }
        let digest: Digest = format!("sha256:{}", p.sha256)
            .parse()
            .map_err(|e| bad(format!("sha256 {:?}: {e}", p.sha256)))?;
        if let Some(pool) = &p.pool {
            check_pool_path(pool).map_err(bad)?;
        }
        out.push(Pin { package: p, digest });
    }
    Ok(out)
}

/// A pool path is a relative path below an archive's root, nothing else:
/// `pool/…/NAME.deb` of plain characters, no `..`, no empty segment.
fn check_pool_path(pool: &str) -> Result<(), String> {
    let plain = pool
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-.~_/%".contains(&b));
    let segments_ok = pool
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..");
    if !plain
        || !segments_ok
        || !pool.starts_with("pool/")
        || !pool.ends_with(".deb")
        || pool.len() > 400
    {
        return Err(format!(
            "pool path {pool:?} is not of the form pool/COMPONENT/…/NAME.deb"
        ));
    }
    Ok(())
}

/// The .debs a lock pins that the store holds, for a mirror to keep.
pub fn mirror_blobs(store: &Store, lock: &Lock) -> Vec<MirrorBlob> {
    if lock.toolchain.kind != ToolchainKind::Debian {
        return Vec::new();
    }
    lock.toolchain
        .packages
        .iter()
        .filter_map(|p| {
            let d: Digest = format!("sha256:{}", p.sha256).parse().ok()?;
            store.blob(&d)?;
            Some(MirrorBlob {
                digest: d,
                name: format!("Debian package {}_{}_{}", p.name, p.version, p.architecture),
                urls: vec![],
            })
        })
        .collect()
}

/// Makes the image `lock` pins again from its .debs (see the module doc).
/// `origin` names the lock in messages; `profile_sde` is the
/// SOURCE_DATE_EPOCH to use when the lock does not record one (version 1).
pub fn restore(
    store: &Arc<Store>,
    lock: &Lock,
    origin: &str,
    net: &NetArgs,
    profile_sde: u64,
) -> anyhow::Result<Image> {
    let ToolchainRequest::Debian(req) = lock
        .request(origin)
        .map_err(|e| Exit::user(e.to_string()))?
    else {
        return Err(Exit::user(format!(
            "{origin}: the toolchain is not a bootstrapped Debian; only those are made again from their packages"
        ))
        .into());
    };
    if lock.toolchain.packages.is_empty() {
        return Err(Exit::user(format!("{origin}: the lock pins no Debian packages")).into());
    }
    let pins = checked_pins(lock, origin)?;
    let sde = lock.toolchain.source_date_epoch.unwrap_or(profile_sde);
    let archives = archives(&net.debian_archives)?;

    // The .debs: store, then mirrors, then archives by pool path; every
    // one checked against its sha256 before it is stored.
    let mut wants = Vec::new();
    for pin in &pins {
        let p = pin.package;
        let mut urls = Vec::new();
        if let Some(pool) = &p.pool {
            for a in &archives {
                let u = format!("{a}/{pool}");
                urls.push(Url::parse(&u).with_context(|| format!("archive URL {u:?}"))?);
            }
        }
        wants.push(Want {
            digest: pin.digest,
            size: p.size,
            urls,
            label: format!(
                "Debian package {}_{}_{} ({})",
                p.name,
                p.version,
                p.architecture,
                p.pool
                    .as_deref()
                    .unwrap_or("no pool path in a version-1 lock")
            ),
        });
    }
    let missing = wants
        .iter()
        .filter(|w| store.blob(&w.digest).is_none())
        .count();
    if missing > 0 && !net.quiet {
        eprintln!(
            "hermit: fetching {missing} of the {} .debs {origin} pins",
            wants.len()
        );
    }
    net::fetch(store, net, wants).with_context(|| {
        format!(
            "gathering the .debs {origin} pins (from the store, mirrors{})",
            if archives.is_empty() {
                "; no Debian archive is configured: add one with --debian-archive URL".to_string()
            } else {
                format!(" and {}", archives.join(", "))
            }
        )
    })?;

    // A flat apt repository of exactly those .debs.
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    let mut debs = HashMap::new();
    for pin in &pins {
        let p = pin.package;
        let blob = store.blob(&pin.digest).with_context(|| {
            format!(
                "internal error: {} ({}) is not in the store after fetching",
                p.name, pin.digest
            )
        })?;
        let (name, version, arch) = debian::deb_identity(&blob)?;
        if (name.as_str(), version.as_str(), arch.as_str())
            != (p.name.as_str(), p.version.as_str(), p.architecture.as_str())
        {
            return Err(Exit::user(format!(
                "{origin}: the .deb {} is {name} {version} {arch}, but the lock says {} {} {}",
                pin.digest, p.name, p.version, p.architecture
            ))
            .into());
        }
        let control = control_fields(&blob)?;
        let size = std::fs::metadata(&blob)
            .with_context(|| format!("reading {}", blob.display()))?
            .len();
        let file = format!("pool/{}.deb", pin.digest.hex());
        let mut para = control.trim_end().to_string();
        para.push_str(&format!(
            "\nFilename: {file}\nSize: {size}\nSHA256: {}\n",
            pin.digest.hex()
        ));
        paragraphs.push((format!("{name}\t{version}\t{arch}"), para));
        debs.insert(format!("/{file}"), blob);
    }
    paragraphs.sort();
    let packages_file = paragraphs
        .into_iter()
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
        .join("\n");
    // mmdebstrap takes the essential set from the archive whose suite or
    // codename is the suite asked for.
    let release = format!(
        "Suite: {suite}\nCodename: {suite}\nSHA256:\n {} {} Packages\n",
        Digest::of(packages_file.as_bytes()).hex(),
        packages_file.len(),
        suite = req.suite
    );
    let mut files: HashMap<String, Served> = debs
        .into_iter()
        .map(|(k, v)| (k, Served::File(v)))
        .collect();
    files.insert(
        "/Packages".into(),
        Served::Bytes(packages_file.into_bytes()),
    );
    files.insert("/Release".into(), Served::Bytes(release.into_bytes()));
    let server = Server::start(files)?;

    if !net.quiet {
        eprintln!(
            "hermit: making the toolchain image {} again from its {} .debs (mmdebstrap)",
            lock.toolchain.manifest,
            pins.len()
        );
    }
    let source = format!("deb [trusted=yes] http://{}/ ./", server.addr);
    let run = debian::mmdebstrap(store, &req, sde, &[source], true);
    server.stop();
    let run = run.context("making the Debian toolchain again from its .debs")?;
    let image = run.image.clone();
    if image.manifest != lock.toolchain.manifest {
        return Err(Exit::user(format!(
            "{origin} pins the toolchain image {}, but making it again from its {} .debs gave {} \
             (layer {}); the lock's packages or source_date_epoch do not describe that image",
            lock.toolchain.manifest,
            pins.len(),
            image.manifest,
            image
                .layers
                .first()
                .map(|l| l.digest.to_string())
                .unwrap_or_default()
        ))
        .into());
    }
    debian::keep_debs(store, &image, &lock.toolchain.packages)?;
    Ok(image)
}

/// The toolchain image of a record whose lock pins a bootstrapped Debian,
/// made again from its .debs; `None` for any other toolchain.
pub fn for_record(
    store: &Arc<Store>,
    rec: &crate::record::Record,
    origin: &str,
    net: &NetArgs,
    profile: &hermit_profiles::Profile,
) -> anyhow::Result<Option<Image>> {
    let Some(text) = &rec.lock else {
        return Ok(None);
    };
    let lock_origin = format!("the lock in {origin}");
    let lock = Lock::parse(&lock_origin, &text.text).map_err(|e| Exit::user(e.to_string()))?;
    if !restorable(&lock) {
        return Ok(None);
    }
    let image = restore(
        store,
        &lock,
        &lock_origin,
        net,
        profile.source_date_epoch.default,
    )?;
    if image.manifest != rec.image.manifest {
        return Err(Exit::user(format!(
            "{origin}: the record's toolchain image is {}, but its lock pins {}",
            rec.image.manifest, image.manifest
        ))
        .into());
    }
    Ok(Some(image))
}

/// Every control field of a .deb (`dpkg-deb --field`), as a Packages
/// paragraph starts.
fn control_fields(deb: &Path) -> anyhow::Result<String> {
    let o = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .output()
        .with_context(|| format!("running dpkg-deb on {}", deb.display()))?;
    if !o.status.success() {
        bail!(
            "dpkg-deb could not read the control fields of {}: {}",
            deb.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let text = String::from_utf8(o.stdout)
        .with_context(|| format!("the control fields of {} are not UTF-8", deb.display()))?;
    // Fields hermit writes itself must not come from the .deb.
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            let key = line.split(':').next().unwrap_or("");
            skip = ["Filename", "Size", "SHA256", "MD5sum", "SHA1", "SHA512"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(key));
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// What the loopback server answers for a path.
enum Served {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for apt: GET of a fixed set of
/// paths, keep-alive and pipelined requests answered in order, 404 for
/// anything else.
struct Server {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(files: HashMap<String, Served>) -> anyhow::Result<Server> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1 for apt")?;
        let addr = listener
            .local_addr()
            .context("reading the loopback listener's address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(files);
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let files = files.clone();
                std::thread::spawn(move || {
                    let _ = serve_connection(conn, &files);
                });
            }
        });
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_connection(conn: TcpStream, files: &HashMap<String, Served>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut close = request.trim_end().ends_with("HTTP/1.0");
        // Headers, up to the blank line (bounded).
        let mut total = request.len();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            total += h.len();
            if total > 64 * 1024 {
                return Ok(());
            }
            if h.trim().is_empty() {
                break;
            }
            if h.to_ascii_lowercase().starts_with("connection:")
                && h.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let mut parts = request.split_whitespace();
        let method = parts.next().unwrap_or("");
        // apt asks for `/./Packages` for a flat repository's `./`.
        let mut path = parts.next().unwrap_or("").to_string();
        while path.contains("/./") {
            path = path.replace("/./", "/");
        }
        let head = method == "HEAD";
        let found = if method == "GET" || head {
            files.get(&path)
        } else {
            None
        };
        let conn_header = if close { "close" } else { "keep-alive" };
        match found {
            None => {
                let body = b"not found\n";
                write!(
                    out,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: {conn_header}\r\n\r\n",
                    body.len()
                )?;
                if !head {
                    out.write_all(body)?;
                }
            }
            Some(Served::Bytes(b)) => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn_header}\r\n\r\n",
                    b.len()
                )?;
                if !head {
                    out.write_all(b)?;
                }
            }
            Some(Served::File(p)) => {
                let mut f = std::fs::File::open(p)?;
                let len = f.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: {conn_header}\r\n\r\n"
                )?;
                if !head {
                    std::io::copy(&mut (&mut f).take(len), &mut out)?;
                }
            }
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_paths_are_relative_paths_below_pool() {
        assert!(check_pool_path("pool/main/m/make-dfsg/make_4.3-4.1_amd64.deb").is_ok());
        assert!(check_pool_path("pool/main/g/gcc-12/gcc-12_12.2.0-14_amd64.deb").is_ok());
        for bad in [
            "/etc/passwd",
            "pool/../../x.deb",
            "pool//x.deb",
            "pool/main/x.deb?y=1",
            "pool/main/x",
            "dists/x.deb",
            "pool/main/x y.deb",
        ] {
            assert!(check_pool_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_server_answers_pipelined_requests_in_order() {
        let mut files = HashMap::new();
        files.insert("/a".to_string(), Served::Bytes(b"first".to_vec()));
        files.insert("/b".to_string(), Served::Bytes(b"second!".to_vec()));
        let server = Server::start(files).unwrap();
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /./b HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        server.stop();
        let a = got.find("first").unwrap();
        let n = got.find("404 Not Found").unwrap();
        let b = got.find("second!").unwrap();
        assert!(a < n && n < b, "{got}");
    }
}
