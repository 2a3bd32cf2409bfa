//! The remote of one hermit command: where it is (`--remote URL`, else
//! `[remote]` in config.toml), its token (`$HERMIT_REMOTE_TOKEN`, else the
//! config's `token_file`), the CA bundle it trusts for `grpcs://`
//! (`$HERMIT_REMOTE_CA`, else the config's `ca_file`), the client certificate
//! it presents (`$HERMIT_REMOTE_CERT` and `$HERMIT_REMOTE_KEY`, else the
//! config's `cert_file` and `key_file`), whether local builds are uploaded,
//! and one connection made on first use.
//!
//! A remote that cannot be reached or does not answer in time is reported
//! once ("warning: … building locally") and not asked again by this
//! command: it never fails a build that can run locally.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hermit_remote::{Endpoint, Options, Remote};
use serde::Deserialize;

/// `[remote]` in config.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `grpc://HOST:PORT[/INSTANCE]` or `grpcs://HOST[:PORT][/INSTANCE]`.
    pub url: String,
    /// Upload local builds (default true: a configured remote is one the
    /// user means to share with).
    pub upload: Option<bool>,
    /// A file holding the bearer token (relative to the config file).
    pub token_file: Option<String>,
    /// Seconds to wait for a connection and for each answer (default 10).
    pub timeout: Option<f64>,
    /// A PEM file of CA certificates trusted for `grpcs://` remotes besides
    /// the web PKI roots (relative to the config file); `$HERMIT_REMOTE_CA`
    /// overrides it. Applies to every remote hermit talks to.
    pub ca_file: Option<String>,
    /// A PEM client certificate (chain) presented to `grpcs://` servers that
    /// require mutual TLS, with `key_file` its private key (both or
    /// neither; relative to the config file); `$HERMIT_REMOTE_CERT` and
    /// `$HERMIT_REMOTE_KEY` override them.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `file` of the config file at `config` (relative to its directory).
fn beside(config: Option<&std::path::Path>, file: &str) -> PathBuf {
    config
        .and_then(|p| p.parent())
        .unwrap_or(std::path::Path::new("."))
        .join(file)
}

/// The CA bundle for `grpcs://` remotes: `$HERMIT_REMOTE_CA` (relative to
/// the current directory), else `ca_file` in `[remote]` of config.toml
/// (relative to the config file), else none. A file that cannot be read or
/// holds no certificate is an error naming it.
pub fn ca_bundle() -> anyhow::Result<Option<hermit_remote::CaBundle>> {
    let path = match std::env::var_os("HERMIT_REMOTE_CA").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let (path, cfg) = crate::config::load()?;
            match cfg.remote.and_then(|r| r.ca_file) {
                Some(f) => beside(path.as_deref(), &f),
                None => return Ok(None),
            }
        }
    };
    Ok(Some(hermit_remote::CaBundle::read(&path)?))
}

/// The client certificate for `grpcs://` remotes that require one:
/// `$HERMIT_REMOTE_CERT` and `$HERMIT_REMOTE_KEY` (relative to the current
/// directory), else `cert_file` and `key_file` in `[remote]` of config.toml
/// (relative to the config file), else none. Each pair goes together; a
/// certificate without its key (or the reverse), a file that cannot be read
/// or is of the wrong kind, or a key that does not belong to the
/// certificate is an error naming the file.
pub fn client_identity() -> anyhow::Result<Option<hermit_remote::ClientIdentity>> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let (cert, key) = match (env("HERMIT_REMOTE_CERT"), env("HERMIT_REMOTE_KEY")) {
        (Some(c), Some(k)) => (c, k),
        (Some(c), None) => anyhow::bail!(
            "HERMIT_REMOTE_CERT is set ({}) but HERMIT_REMOTE_KEY is not: a client certificate needs its private key; set both, or neither",
            c.display()
        ),
        (None, Some(k)) => anyhow::bail!(
            "HERMIT_REMOTE_KEY is set ({}) but HERMIT_REMOTE_CERT is not: a client key needs its certificate; set both, or neither",
            k.display()
        ),
        (None, None) => {
            let (path, cfg) = crate::config::load()?;
            let Some(r) = cfg.remote else {
                return Ok(None);
            };
            let where_ = path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "config.toml".into());
            match (r.cert_file, r.key_file) {
                (Some(c), Some(k)) => (beside(path.as_deref(), &c), beside(path.as_deref(), &k)),
                (Some(_), None) => anyhow::bail!(
                    "{where_}: [remote] has cert_file but no key_file: a client certificate needs its private key; set both, or neither"
                ),
                (None, Some(_)) => anyhow::bail!(
                    "{where_}: [remote] has key_file but no cert_file: a client key needs its certificate; set both, or neither"
                ),
                (None, None) => return Ok(None),
            }
        }
    };
    Ok(Some(hermit_remote::ClientIdentity::read(&cert, &key)?))
}

/// The remote flags of `build`, `rebuild`, `fetch` and `mirror`.
#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// A REAPI remote used as a shared cache and content store (BuildGrid,
    /// Buildbarn, …): grpc://HOST:PORT[/INSTANCE] or grpcs://…; overrides
    /// [remote] in config.toml. Token: $HERMIT_REMOTE_TOKEN; CA bundle for
    /// grpcs://: $HERMIT_REMOTE_CA; client certificate: $HERMIT_REMOTE_CERT
    /// and $HERMIT_REMOTE_KEY
    #[arg(long = "remote", value_name = "URL")]
    pub remote: Option<String>,
    /// Upload local builds to the remote (the default only for a remote from config.toml)
    #[arg(long = "remote-upload", overrides_with = "no_remote_upload")]
    pub remote_upload: bool,
    /// Do not upload local builds to the remote
    #[arg(long = "no-remote-upload")]
    pub no_remote_upload: bool,
    /// Use no remote, not even the one in config.toml
    #[arg(long = "no-remote", conflicts_with = "remote")]
    pub no_remote: bool,
}

impl RemoteArgs {
    /// The session these flags and the config file describe, if any.
    pub fn session(&self) -> anyhow::Result<Option<Arc<Session>>> {
        if self.no_remote {
            return Ok(None);
        }
        let (url, from_config, cfg, base) = match &self.remote {
            Some(u) => (u.clone(), false, None, None),
            None => {
                let (path, cfg) = crate::config::load()?;
                match cfg.remote {
                    Some(r) => (
                        r.url.clone(),
                        true,
                        Some(r),
                        path.and_then(|p| p.parent().map(PathBuf::from)),
                    ),
                    None => return Ok(None),
                }
            }
        };
        let endpoint = Endpoint::parse(&url)?;
        let token = match std::env::var("HERMIT_REMOTE_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t),
            _ => match cfg.as_ref().and_then(|c| c.token_file.as_ref()) {
                Some(f) => {
                    let p = base.unwrap_or_default().join(f);
                    Some(std::fs::read_to_string(&p).with_context(|| {
                        format!("reading the remote token file {}", p.display())
                    })?)
                }
                None => None,
            },
        };
        let upload = if self.no_remote_upload {
            false
        } else if self.remote_upload {
            true
        } else {
            from_config && cfg.as_ref().and_then(|c| c.upload).unwrap_or(true)
        };
        let secs = cfg.as_ref().and_then(|c| c.timeout).unwrap_or_else(|| {
            std::env::var("HERMIT_REMOTE_TIMEOUT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10.0)
        });
        let t = Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!("the remote timeout must be a positive number of seconds, not {secs}")
            })?;
        Ok(Some(Arc::new(Session::new(
            endpoint
                .with_token(token)
                .with_ca(ca_bundle()?)
                .with_identity(client_identity()?),
            upload,
            Options {
                connect_timeout: t,
                rpc_timeout: t,
            },
        ))))
    }
}

enum State {
    New,
    Up(Arc<Connected>),
    Down,
}

/// A connection and the runtime that drives it.
pub struct Connected {
    pub rt: tokio::runtime::Runtime,
    pub remote: Remote,
}

impl Connected {
    /// Runs a future of the remote client to its end.
    pub fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }
}

/// One command's remote.
pub struct Session {
    pub endpoint: Endpoint,
    /// Whether local builds are uploaded.
    pub upload: bool,
    options: Options,
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({:?}, upload {})", self.endpoint, self.upload)
    }
}

impl Session {
    pub fn new(endpoint: Endpoint, upload: bool, options: Options) -> Session {
        Session {
            endpoint,
            upload,
            options,
            state: Mutex::new(State::New),
        }
    }

    /// The connection, made on first use; `None` once the remote proved
    /// unavailable (said once on stderr).
    pub fn get(&self) -> Option<Arc<Connected>> {
        let mut st = self.state.lock().ok()?;
        match &*st {
            State::Up(c) => return Some(c.clone()),
            State::Down => return None,
            State::New => {}
        }
        let made = (|| -> anyhow::Result<Connected> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let remote =
                rt.block_on(Remote::connect(self.endpoint.clone(), self.options.clone()))?;
            Ok(Connected { rt, remote })
        })();
        match made {
            Ok(c) => {
                let c = Arc::new(c);
                *st = State::Up(c.clone());
                Some(c)
            }
            Err(e) => {
                *st = State::Down;
                drop(st);
                self.warn(&format!("{e:#}"));
                None
            }
        }
    }

    /// Stops using the remote after a failure that is not the remote's
    /// content's fault (down, slow), saying so once.
    pub fn fail(&self, e: &hermit_remote::Error) {
        let first = match self.state.lock() {
            Ok(mut st) => !matches!(std::mem::replace(&mut *st, State::Down), State::Down),
            Err(_) => false,
        };
        if first {
            self.warn(&e.to_string());
        }
    }

    fn warn(&self, why: &str) {
        eprintln!(
            "hermit: warning: the remote {} is unavailable ({why}); carrying on without it (builds run locally)",
            self.endpoint
        );
    }
}
