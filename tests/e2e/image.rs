//! Toolchain images: import from an OCI layout, an oci-archive and a docker
//! archive (both written by skopeo), and pull by digest from a real
//! `docker-registry` on 127.0.0.1 that skopeo pushed to.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::{both, run};
use crate::fixtures::{both_users, As};

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes an OCI image layout at `dir` holding one gzip layer with a static
/// busybox and a few applet links. Returns the manifest digest.
pub fn busybox_layout(dir: &Path) -> String {
    busybox_layout_with(dir, &[])
}

/// [`busybox_layout`] with host files added to the layer: `(host path,
/// path in the image)`, each with its parent directories.
pub fn busybox_layout_with(dir: &Path, extra: &[(&str, &str)]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut layer = Vec::new();
    {
        let mut b = tar::Builder::new(&mut layer);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        b.append_data(&mut h, "bin/", &[][..]).unwrap();
        let bb = fs::read("/bin/busybox").expect("busybox-static must be installed");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(bb.len() as u64);
        b.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
        for applet in [
            "sh", "true", "echo", "cat", "ls", "env", "id", "mkdir", "cp",
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_mtime(0);
            h.set_size(0);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (host, inside) in extra {
            let mut parents: Vec<&Path> = Path::new(inside).ancestors().skip(1).collect();
            parents.reverse();
            for d in parents.into_iter().filter(|d| !d.as_os_str().is_empty()) {
                if d != Path::new("bin") && dirs.insert(d.to_path_buf()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_mtime(0);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{}/", d.display()), &[][..])
                        .unwrap();
                }
            }
            let bytes = fs::read(host).unwrap_or_else(|e| panic!("{host}: {e}"));
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, inside, &bytes[..]).unwrap();
        }
        b.finish().unwrap();
    }
    let diff_id = sha(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let layer_gz = gz.finish().unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha(bytes);
        fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let layer_d = put(&layer_gz);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_d = put(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_d, "size": layer_gz.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_d = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_d, "size": manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifest_d
}

pub fn skopeo(args: &[&str]) -> String {
    let o = run(Command::new("skopeo").args(args));
    assert!(o.status.success(), "skopeo {args:?}: {}", both(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name).map(|r| r.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

fn import_layout_checks_the_pin_and_lists_it(who: As) {
    let t = who.scratch();
    let layout = t.path().join("layout");
    let manifest = busybox_layout(&layout);
    let home = t.path().join("home");

    who.give(t.path());
    let o = run(who
        .hermit_in(&home)
        .args(["image", "import"])
        .arg(&layout)
        .args(["--digest", &manifest]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        field(&String::from_utf8_lossy(&o.stdout), "manifest"),
        manifest
    );

    let o = run(who.hermit_in(&home).args(["image", "ls", "--json"]));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["manifest"], manifest);
    assert_eq!(v[0]["platform"], "linux/amd64");
    assert_eq!(v[0]["path_env"], "/bin");

    let wrong = format!("sha256:{}", "1".repeat(64));
    let o = run(who
        .hermit_in(&t.path().join("home2"))
        .args(["image", "import"])
        .arg(&layout)
        .args(["--digest", &wrong]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&wrong) && err.contains(&manifest), "{err}");
}

fn import_refuses_a_tampered_layer(who: As) {
    let t = who.scratch();
    let layout = t.path().join("layout");
    busybox_layout(&layout);
    // Corrupt the largest blob (the layer) in place.
    let blobs = layout.join("blobs/sha256");
    let layer = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    fs::write(&layer, bytes).unwrap();
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(who.hermit_in(&home).args(["image", "import"]).arg(&layout));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("digest mismatch"), "{err}");
    let name = layer.file_name().unwrap().to_str().unwrap();
    assert!(!home.join("v1/blobs/sha256").join(name).exists());
}

fn import_skopeo_oci_archive_and_docker_archive(who: As) {
    let t = who.scratch();
    let layout = t.path().join("layout");
    busybox_layout(&layout);
    let oci_tar = t.path().join("img.oci.tar");
    let docker_tar = t.path().join("img.docker.tar");
    let src = format!("oci:{}", layout.display());
    skopeo(&[
        "copy",
        "-q",
        &src,
        &format!("oci-archive:{}", oci_tar.display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        &src,
        &format!("docker-archive:{}:busybox:latest", docker_tar.display()),
    ]);
    let home = t.path().join("home");

    // skopeo's own idea of the oci-archive's manifest digest must be hermit's.
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}", oci_tar.display()),
    ]))
    .unwrap();
    let want = inspect["Digest"].as_str().unwrap().to_string();
    who.give(t.path());
    let o = run(who
        .hermit_in(&home)
        .args(["image", "import"])
        .arg(&oci_tar)
        .args(["--digest", &want]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(field(&String::from_utf8_lossy(&o.stdout), "manifest"), want);

    // A docker archive is pinned by its image ID, the config digest.
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        &format!("docker-archive:{}", docker_tar.display()),
    ]))
    .unwrap();
    let image_id = raw["config"]["digest"].as_str().unwrap().to_string();
    let o = run(who
        .hermit_in(&home)
        .args(["image", "import"])
        .arg(&docker_tar)
        .args(["--digest", &image_id]));
    assert!(o.status.success(), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(field(&out, "config"), image_id);
    // Its layer is the uncompressed tar: its digest is the config's diff_id.
    let cfg: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        "--raw",
        &format!("docker-archive:{}", docker_tar.display()),
    ]))
    .unwrap();
    let diff_id = cfg["rootfs"]["diff_ids"][0].as_str().unwrap();
    assert!(out.contains(&format!("layer    {diff_id}")), "{out}");
}

pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Debian's docker-registry (distribution) on 127.0.0.1 with its
/// storage in a temp dir.
pub fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry must be installed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        child,
        port,
        _dir: dir,
    }
}

/// Pushes the busybox layout to `reg` as `hermit/busybox:latest` with skopeo
/// and returns (`127.0.0.1:PORT/hermit/busybox`, the manifest digest skopeo
/// reports).
pub fn push_busybox(reg: &Registry, layout: &Path) -> (String, String) {
    let name = format!("127.0.0.1:{}/hermit/busybox", reg.port);
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://{name}:latest"),
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}:latest"),
    ]))
    .unwrap();
    (name, inspect["Digest"].as_str().unwrap().to_string())
}

fn pull_by_digest_from_a_real_registry(who: As) {
    let t = who.scratch();
    let layout = t.path().join("layout");
    busybox_layout(&layout);
    let reg = start_registry();
    let (name, digest) = push_busybox(&reg, &layout);

    let home = t.path().join("home");
    who.give(t.path());
    let o = run(who
        .hermit_in(&home)
        .args(["image", "pull", &format!("{name}@{digest}")]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        field(&String::from_utf8_lossy(&o.stdout), "manifest"),
        digest
    );
    // Every blob in the store hashes to its name.
    for e in fs::read_dir(home.join("v1/blobs/sha256")).unwrap() {
        let p: PathBuf = e.unwrap().path();
        let got = sha(&fs::read(&p).unwrap());
        assert_eq!(&got[7..], p.file_name().unwrap().to_str().unwrap());
    }

    // A digest the registry does not have is refused, naming the URL.
    let wrong = format!("sha256:{}", "2".repeat(64));
    let o = run(who.hermit_in(&t.path().join("home2")).args([
        "image",
        "pull",
        &format!("{name}@{wrong}"),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("404") && err.contains(&wrong), "{err}");

    // A tag instead of a digest is a user error that says how to pin.
    let o = run(who
        .hermit_in(&home)
        .args(["image", "pull", &format!("{name}:latest")]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pinned by digest"),
        "{}",
        both(&o)
    );
}

/// An authentication gate in front of a real registry, as public registries
/// have: `/v2/` requests without the bearer token get 401 and a
/// `WWW-Authenticate: Bearer realm=…` challenge pointing at the gate's own
/// anonymous token endpoint; requests with the token are forwarded to the
/// registry and its answer relayed byte for byte.
struct TokenGate {
    port: u16,
    tokens_issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn start_token_gate(upstream: u16, repository: &'static str) -> TokenGate {
    use std::io::{BufRead, BufReader, Read as _};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tokens_issued = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (issued, denied) = (tokens_issued.clone(), refused.clone());
    const TOKEN: &str = "anonymous-pull-token";
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (issued, denied) = (issued.clone(), denied.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    headers.push(line.trim_end().to_string());
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                let header = |name: &str| {
                    headers.iter().find_map(|h| {
                        let (k, v) = h.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let reply = |stream: &mut std::net::TcpStream,
                             status: &str,
                             extra: &str,
                             body: &str| {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                };
                if path.starts_with("/token?") {
                    if !path.contains(&format!(
                        "scope=repository%3A{}%3Apull",
                        repository.replace('/', "%2F")
                    )) && !path.contains(&format!("scope=repository:{repository}:pull"))
                    {
                        reply(&mut stream, "400 Bad Request", "", "wrong scope");
                        return;
                    }
                    issued.fetch_add(1, Ordering::SeqCst);
                    reply(
                        &mut stream,
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        &format!("{{\"token\":\"{TOKEN}\"}}"),
                    );
                    return;
                }
                if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
                    denied.fetch_add(1, Ordering::SeqCst);
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"gate\",scope=\"repository:{repository}:pull\"\r\n"
                    );
                    reply(
                        &mut stream,
                        "401 Unauthorized",
                        &challenge,
                        "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
                    );
                    return;
                }
                let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let accept = header("accept")
                    .map(|a| format!("Accept: {a}\r\n"))
                    .unwrap_or_default();
                let _ = write!(up, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\n{accept}Connection: close\r\n\r\n");
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                let _ = stream.write_all(&answer);
            });
        }
    });
    TokenGate {
        port,
        tokens_issued,
        refused,
    }
}

fn pull_through_the_anonymous_bearer_token_flow(who: As) {
    use std::sync::atomic::Ordering;
    let t = who.scratch();
    let layout = t.path().join("layout");
    busybox_layout(&layout);
    let reg = start_registry();
    let (_direct, digest) = push_busybox(&reg, &layout);

    let gate = start_token_gate(reg.port, "hermit/busybox");
    let home = t.path().join("home");
    who.give(t.path());
    let o = run(who.hermit_in(&home).args([
        "image",
        "pull",
        &format!("127.0.0.1:{}/hermit/busybox@{digest}", gate.port),
    ]));
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        field(&String::from_utf8_lossy(&o.stdout), "manifest"),
        digest
    );
    assert!(
        gate.refused.load(Ordering::SeqCst) >= 1,
        "hermit was never challenged"
    );
    assert!(
        gate.tokens_issued.load(Ordering::SeqCst) >= 1,
        "hermit never asked for a token"
    );
}

both_users!(
    import_layout_checks_the_pin_and_lists_it,
    import_refuses_a_tampered_layer,
    import_skopeo_oci_archive_and_docker_archive,
    pull_by_digest_from_a_real_registry,
    pull_through_the_anonymous_bearer_token_flow,
);
