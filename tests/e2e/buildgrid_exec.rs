//! A BuildGrid server with remote execution, for the remote execution tests
//! and benches: a PostgreSQL cluster made here (Debian's `postgresql` 15,
//! `initdb` + `pg_ctl`, always run as the unprivileged test user, since
//! PostgreSQL refuses to run as root), its tables made with
//! `bgd migrate apply`, and `bgd server start` with Execution + Bots, CAS,
//! ByteStream and ActionCache, all on loopback.
//!
//! BuildGrid comes from the virtualenv `scripts/install-deps.sh` makes at
//! `${HERMIT_TEST_BUILDGRID:-/var/cache/hermit-tests/buildgrid}` (with the
//! `[database]` extra). A missing one fails the test with the fix named.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{both, run};
use crate::fixtures::{chown, fixture};

/// The PostgreSQL server programs (Debian's `postgresql-15`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The BuildGrid virtualenv.
pub fn buildgrid_venv() -> PathBuf {
    let venv = std::env::var_os("HERMIT_TEST_BUILDGRID")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hermit-tests/buildgrid"));
    assert!(
        venv.join("bin/bgd").exists(),
        "BuildGrid is not installed at {} (no bin/bgd): run scripts/install-deps.sh as root, \
         or set HERMIT_TEST_BUILDGRID to a virtualenv with `buildgrid[database]`",
        venv.display()
    );
    venv
}

/// `bgd` with its output captured.
pub fn bgd() -> Command {
    Command::new(buildgrid_venv().join("bin/bgd"))
}

/// A free TCP port on 127.0.0.1 (closed again; taken by the caller soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, limit: Duration, what: &str, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "{what} did not listen on 127.0.0.1:{port} within {limit:?}; its log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL cluster under a directory, stopped when dropped.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
}

/// `cmd` run as the unprivileged test user (with `setpriv`).
fn as_test_user(program: &Path) -> Command {
    let (uid, gid) = fixture().user;
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .current_dir("/");
    c
}

impl Postgres {
    /// initdb + pg_ctl start in `dir` (created here, owned by the test user),
    /// trust authentication, listening on a loopback port and on a socket in
    /// `dir`; a database `bgd` owned by the role `bgd`.
    pub fn start(dir: &Path) -> Postgres {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed ({PG_BIN}/initdb is missing): run scripts/install-deps.sh (Debian package postgresql)"
        );
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        let (uid, gid) = fixture().user;
        chown(dir, uid, gid);
        let data = dir.join("data");
        let o = run(as_test_user(&Path::new(PG_BIN).join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "bgd", "-E", "UTF8", "--no-sync"]));
        assert!(o.status.success(), "initdb: {}", both(&o));
        let port = free_port();
        let o = run(as_test_user(&Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=200",
                dir.display()
            ))
            .args(["-w", "-t", "60", "start"]));
        assert!(
            o.status.success(),
            "pg_ctl start: {}\n{}",
            both(&o),
            fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
        let pg = Postgres {
            dir: dir.to_path_buf(),
            port,
        };
        let o = run(Command::new(Path::new(PG_BIN).join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "bgd",
            "bgd",
        ]));
        assert!(o.status.success(), "createdb: {}", both(&o));
        pg
    }

    /// The connection string BuildGrid uses.
    pub fn url(&self) -> String {
        format!("postgresql+psycopg2://bgd@127.0.0.1:{}/bgd", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_test_user(&Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Knobs of the BuildGrid server the tests change.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Seconds a bot may go without UpdateBotSession before its session is
    /// closed and its leases are queued again.
    pub keepalive_secs: u32,
    /// The channel's TLS settings in place of `insecure-mode: true` (e.g.
    /// [`crate::remote::mtls_channel`]); the URL is then `grpcs://`.
    pub tls: Option<String>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            keepalive_secs: 8,
            tls: None,
        }
    }
}

/// The BuildGrid configuration for execution on loopback: one unnamed
/// instance with ActionCache, Execution (+ Bots), CAS and ByteStream over a
/// disk CAS, and the SQL scheduler on `db`. Workers are matched on
/// `OSFamily` and `ISA`; a bot that stops calling in is given up after
/// `keepalive_secs`, checked every second.
pub fn exec_config(port: u16, db: &str, cas: &Path, c: &ExecConfig) -> String {
    let text = format!(
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: {db}
    pool-size: 10
    max-overflow: 20
storages:
  - !disk-storage &cas
    path: {cas}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    action-cache: *ac
    storage: *cas
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily, ISA]
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: 1
    poll-interval: 0.2
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 5
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 40
"#,
        cas = cas.display(),
        keepalive = c.keepalive_secs,
    );
    match &c.tls {
        Some(tls) => text.replace("    insecure-mode: true\n", tls),
        None => text,
    }
}

/// A BuildGrid server with execution, and its database; both stopped when
/// dropped.
pub struct BuildGridExec {
    pub dir: PathBuf,
    pub port: u16,
    tls: bool,
    child: Child,
    // Dropped after the server (fields drop in order).
    _pg: Postgres,
}

impl BuildGridExec {
    /// Starts PostgreSQL and BuildGrid under `dir`.
    pub fn start(dir: &Path, c: &ExecConfig) -> BuildGridExec {
        let venv = buildgrid_venv();
        fs::create_dir_all(dir).unwrap();
        let pg = Postgres::start(&dir.join("pg"));
        let o = run(bgd().args(["migrate", "apply", &pg.url()]));
        assert!(o.status.success(), "bgd migrate apply: {}", both(&o));
        let port = free_port();
        let cas = dir.join("cas");
        fs::create_dir_all(&cas).unwrap();
        let config = dir.join("buildgrid.yml");
        fs::write(&config, exec_config(port, &pg.url(), &cas, c)).unwrap();
        let log = dir.join("buildgrid.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(venv.join("bin/bgd"))
            .args(["server", "start"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting bgd server");
        let mut bg = BuildGridExec {
            dir: dir.to_path_buf(),
            port,
            tls: c.tls.is_some(),
            child,
            _pg: pg,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = bg.child.try_wait() {
                panic!(
                    "bgd server start exited ({status}); its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "BuildGrid did not listen on 127.0.0.1:{port} within 60 s; its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bg
    }

    /// `grpc://127.0.0.1:PORT` (`grpcs://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("buildgrid.log")).unwrap_or_default()
    }
}

impl Drop for BuildGridExec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
