//! The Debian-toolchain setup the Debian tests share: `examples/hello`
//! (a C program over `debian = { suite = "bookworm", include = ["gcc",
//! "libc6-dev", "make"] }`) built once per test process and user, in a
//! store of its own, bootstrapping the toolchain from the host's apt
//! sources; and a network namespace with nothing but loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crate::common::{both, run};
use crate::fixtures::As;

/// Copies examples/hello's spec, Makefile and source (no lock) into `dir`;
/// returns the spec's path.
pub fn copy_hello(dir: &Path) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    fs::create_dir_all(dir).unwrap();
    for f in ["spec.toml", "Makefile", "hello.c"] {
        fs::copy(example.join(f), dir.join(f)).unwrap();
    }
    dir.join("spec.toml")
}

/// examples/hello built by one user, once.
pub struct Built {
    _dir: tempfile::TempDir,
    /// The store (HERMIT_HOME) it was built in.
    pub home: PathBuf,
    /// Its spec; `hermit.lock` beside it is the one the build wrote.
    pub spec: PathBuf,
    /// The record `hermit build` wrote.
    pub record: PathBuf,
    /// `hermit build --json`'s answer.
    pub json: serde_json::Value,
    /// How long the first build (with its bootstrap) took, in seconds.
    pub secs: f64,
}

/// examples/hello built by `who` with its Debian toolchain, in a store and
/// directory owned by `who`: built once per test process and user. Tests
/// may read the store and build in it; they must not remove from it.
pub fn built(who: As) -> &'static Built {
    static ROOT: OnceLock<Built> = OnceLock::new();
    static USER: OnceLock<Built> = OnceLock::new();
    let cell = match who {
        As::Root => &ROOT,
        As::User => &USER,
    };
    cell.get_or_init(|| {
        crate::fixtures::ensure_subids();
        let t = who.scratch();
        let spec = copy_hello(&t.path().join("hello"));
        let home = t.path().join("home");
        who.give(t.path());
        let start = Instant::now();
        let o = run(who.hermit_in(&home).arg("build").arg(&spec).arg("--json"));
        let secs = start.elapsed().as_secs_f64();
        assert!(o.status.success(), "{}", both(&o));
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let record = PathBuf::from(json["record"].as_str().unwrap());
        Built {
            _dir: t,
            home,
            spec,
            record,
            json,
            secs,
        }
    })
}

/// `cmd` run in a new network namespace whose only interface is loopback
/// (brought up, so that hermit's own loopback apt repository works).
pub fn without_network(cmd: &Command) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--net", "--", "/bin/sh", "-c"])
        .arg("ip link set lo up && exec \"$@\"")
        .arg("netns")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}
