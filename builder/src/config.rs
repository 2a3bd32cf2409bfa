//! The user's configuration file, `$XDG_CONFIG_HOME/hermit/config.toml`
//! (else `~/.config/hermit/config.toml`). Optional; documented in
//! `docs/fetching.md`.
//!
//! ```toml
//! # Content-addressed mirrors tried (in order) before a source's URLs.
//! mirrors = ["/srv/hermit-mirror", "https://mirror.example.org/hermit"]
//! # Archives of old Debian packages (their root, holding pool/), tried in
//! # order for the .debs a hermit.lock pins.
//! debian_archives = ["https://archive.example.org/debian/20240101T000000Z"]
//! # Run builds on a remote execution service (docs/remote.md).
//! remote_exec = "grpc://buildgrid.example.org:50051"
//! # A shared cache on the Remote Execution API (docs/remote.md).
//! [remote]
//! url = "grpc://cache.example.org:50051/main"
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hermit_store::Mirror;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mirrors, as written; relative paths are relative to the config file.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Archives of old Debian packages, by the URL of their root (the
    /// directory holding `pool/`): where a lock's .debs are looked for by
    /// pool path when a toolchain image must be made again.
    #[serde(default)]
    pub debian_archives: Vec<String>,
    /// The execution service `hermit build` sends builds to
    /// (`grpc://HOST:PORT[/INSTANCE]`), as `--remote-exec` does.
    #[serde(default)]
    pub remote_exec: Option<String>,
    /// A REAPI remote used as a shared cache (see docs/remote.md).
    #[serde(default)]
    pub remote: Option<crate::remote::client::RemoteConfig>,
}

/// Where the config file is looked for.
pub fn config_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("hermit/config.toml"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".config/hermit/config.toml"))
}

/// Reads the config file if there is one.
pub fn load() -> anyhow::Result<(Option<PathBuf>, Config)> {
    let Some(path) = config_path() else {
        return Ok((None, Config::default()));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Config::default())),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let cfg: Config = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}\n  help: the config file knows only `mirrors = [\"DIR or URL\", ...]`, `debian_archives = [\"URL\", ...]`, `remote_exec = \"grpc://HOST:PORT\"` and `[remote]` (url, upload, token_file, ca_file, cert_file, key_file, timeout)",
            path.display(),
            e.to_string().trim_end()
        )
    })?;
    Ok((Some(path), cfg))
}

/// The mirrors to use, in order: `--mirror` flags (relative to the current
/// directory), then `$HERMIT_MIRRORS` (whitespace-separated), then the config
/// file's `mirrors`.
pub fn mirrors(flags: &[String]) -> anyhow::Result<Vec<Mirror>> {
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let mut out = Vec::new();
    let mut add = |m: &str, base: &Path, from: &str| -> anyhow::Result<()> {
        let m = Mirror::parse(m, base).with_context(|| format!("in {from}"))?;
        if !out.contains(&m) {
            out.push(m);
        }
        Ok(())
    };
    for m in flags {
        add(m, &cwd, "--mirror")?;
    }
    if let Ok(env) = std::env::var("HERMIT_MIRRORS") {
        for m in env.split_whitespace() {
            add(m, &cwd, "$HERMIT_MIRRORS")?;
        }
    }
    let (path, cfg) = load()?;
    if let Some(path) = path {
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        for m in &cfg.mirrors {
            add(m, &base, &path.display().to_string())?;
        }
    }
    Ok(out)
}
