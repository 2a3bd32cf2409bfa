//! The Debian package end to end, on this machine (root, as in CI): `make
//! deb` in two clean clones of the checkout's HEAD at two different paths
//! gives the same bytes; `cargo install --locked --path builder` works from
//! such a clone; `apt-get install ./hermit_*.deb` installs a hermit that
//! builds examples/hello (from the package's own docs) as root and as an
//! ordinary user to the same bytes, with its man pages and completions in
//! place; `apt-get purge hermit` leaves none of its files behind.
//!
//! It tests what is committed (a clone has no uncommitted changes), and it
//! compiles hermit in release mode twice: a test binary of its own, so that
//! cargo runs it alone, not beside the timing-sensitive sandbox tests.
//! It refuses to run where a `hermit` package is installed already, and
//! runs one at a time on a machine (a lock in /run/lock).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/common.rs"]
mod common;
#[allow(unused_macros, unused_imports)]
#[path = "../e2e/fixtures.rs"]
mod fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{both, run};
use fixtures::As;

const INSTALLED: &str = "/usr/bin/hermit";

/// Holds the machine-wide lock of this test.
fn machine_lock() -> nix::fcntl::Flock<fs::File> {
    let f = fs::File::create("/run/lock/hermit-package-test.lock").unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

fn installed() -> bool {
    let o = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "hermit"]));
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed")
}

/// Purges the package if the test stops half-way.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = apt(&["purge", "hermit"]);
        }
    }
}

fn apt(args: &[&str]) -> std::process::Output {
    run(Command::new("apt-get")
        .args(["-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = run(Command::new("git").arg("-C").arg(dir).args(args));
    assert!(o.status.success(), "git {args:?}: {}", both(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `make deb` in `src`; returns the .deb's path.
fn make_deb(src: &Path) -> PathBuf {
    let start = Instant::now();
    // Not a sub-make of `make test`: that one would print its directory.
    let o = run(Command::new("make")
        .args(["--no-print-directory", "deb"])
        .current_dir(src)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("SOURCE_DATE_EPOCH"));
    assert!(
        o.status.success(),
        "make deb in {}: {}",
        src.display(),
        both(&o)
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    let deb = PathBuf::from(
        stdout
            .lines()
            .rfind(|l| l.ends_with(".deb"))
            .unwrap_or_else(|| panic!("make deb named no .deb: {stdout}")),
    );
    eprintln!("make deb in {}: {:?}", src.display(), start.elapsed());
    assert!(
        deb.starts_with(src.join("target/debian")),
        "{}",
        deb.display()
    );
    deb
}

/// Every path the package holds, `/usr/bin/hermit` style (from its data tar).
fn contents(deb: &Path) -> Vec<PathBuf> {
    let o = run(Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$0\" | tar -t")
        .arg(deb));
    assert!(o.status.success(), "{}", both(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| PathBuf::from(l.trim_start_matches('.').trim_end_matches('/')))
        .filter(|p| p != Path::new(""))
        .collect()
}

#[test]
fn deb_is_reproducible_installs_builds_hello_and_purges_cleanly() {
    let _lock = machine_lock();
    assert!(
        !installed(),
        "a hermit package is installed on this machine; this test installs and purges its own: remove it first (apt-get purge hermit)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = tempfile::Builder::new()
        .prefix("hermit-deb")
        .tempdir()
        .unwrap();
    let a = t.path().join("a/hermit");
    let b = t.path().join("b/somewhere/else");
    for dir in [&a, &b] {
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let o = run(Command::new("git")
            .args(["clone", "-q", "--no-hardlinks"])
            .arg(&repo)
            .arg(dir));
        assert!(o.status.success(), "{}", both(&o));
    }
    let head = git(&a, &["rev-parse", "HEAD"]);

    // Two builds at two paths, each compiling hermit afresh: the same bytes.
    let deb = make_deb(&a);
    let deb_b = make_deb(&b);
    assert_eq!(deb.file_name(), deb_b.file_name());
    let (bytes_a, bytes_b) = (fs::read(&deb).unwrap(), fs::read(&deb_b).unwrap());
    assert!(
        bytes_a == bytes_b,
        "{} and {} differ; compare them with diffoscope",
        deb.display(),
        deb_b.display()
    );
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("hermit_{}_", env!("CARGO_PKG_VERSION")))
            && name.ends_with(".deb"),
        "{name}"
    );

    // `cargo install` from the clean clone: with the flags scripts/deb.sh
    // builds with (keep the two alike), it reuses that build and installs
    // the very binary the package was made from.
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
    let flags = [
        format!("--remap-path-prefix={cargo_home}=/cargo"),
        format!("--remap-path-prefix={}=/build/hermit", a.display()),
        format!(
            "--remap-path-prefix={}=/build/target",
            a.join("target").display()
        ),
    ]
    .join("\u{1f}");
    let root = t.path().join("cargo-root");
    let o = run(Command::new("cargo")
        .args(["install", "--locked", "--path", "builder", "--root"])
        .arg(&root)
        .current_dir(&a)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", &flags));
    assert!(o.status.success(), "cargo install: {}", both(&o));
    assert_eq!(
        fs::read(root.join("bin/hermit")).unwrap(),
        fs::read(a.join("target/release/hermit")).unwrap(),
        "cargo install gave another binary than make deb built"
    );

    // What the package will add: those paths must be gone after the purge.
    let paths = contents(&deb);
    assert!(paths.contains(&PathBuf::from(INSTALLED)), "{paths:?}");
    let new: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_err())
        .collect();
    assert!(new.iter().any(|p| p.ends_with("hermit-build.1.gz")));

    let _purge = Purge;
    let o = apt(&["install", deb.to_str().unwrap()]);
    assert!(o.status.success(), "apt-get install: {}", both(&o));
    assert!(installed());
    let version = run(Command::new(INSTALLED).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("hermit {} ({})\n", env!("CARGO_PKG_VERSION"), &head[..12])
    );

    // The man pages where man looks, each rendered without a warning; the
    // completions where the shells look.
    let o = run(Command::new("man").args(["-w", "hermit-build"]));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "/usr/share/man/man1/hermit-build.1.gz\n",
        "{}",
        both(&o)
    );
    for page in paths
        .iter()
        .filter(|p| p.starts_with("/usr/share/man/man1"))
    {
        if page.extension().is_none_or(|e| e != "gz") {
            continue;
        }
        let o = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        assert!(
            o.status.success() && o.stderr.is_empty() && !o.stdout.is_empty(),
            "{}: {}",
            page.display(),
            both(&o)
        );
    }
    for script in [
        "source <(hermit completions bash) && complete -p hermit",
        "source /usr/share/bash-completion/completions/hermit && complete -p hermit",
    ] {
        let o = run(Command::new("bash")
            .args(["-c", script])
            .env("PATH", "/usr/bin:/bin"));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "complete -o bashdefault -o default -F _hermit_files hermit\n",
            "{script}: {}",
            both(&o)
        );
    }
    for f in [
        "/usr/share/zsh/vendor-completions/_hermit",
        "/usr/share/fish/vendor_completions.d/hermit.fish",
        "/usr/share/doc/hermit/copyright",
        "/usr/share/doc/hermit/changelog.gz",
    ] {
        assert!(Path::new(f).is_file(), "{f}");
    }

    // The README's example, from the package's docs, with the installed
    // hermit: root, then an ordinary user in a store of their own, to the
    // same bytes.
    fixtures::ensure_subids();
    let s = As::User.scratch();
    let dir = s.path().join("hello");
    fs::create_dir(&dir).unwrap();
    for f in ["spec.toml", "Makefile", "hello.c"] {
        fs::copy(
            Path::new("/usr/share/doc/hermit/examples/hello").join(f),
            dir.join(f),
        )
        .unwrap();
    }
    let spec = dir.join("spec.toml");
    let mut digests = Vec::new();
    for who in As::BOTH {
        who.give(&dir);
        let result = dir.join(format!("result-{}", who.name()));
        let start = Instant::now();
        let o = run(who
            .program(Path::new(INSTALLED))
            .env("HERMIT_HOME", s.path().join(format!("home-{}", who.name())))
            .arg("build")
            .arg(&spec)
            .arg("--json")
            .arg("-o")
            .arg(&result));
        assert!(o.status.success(), "{}: {}", who.name(), both(&o));
        eprintln!("examples/hello as {}: {:?}", who.name(), start.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(v["record"].as_str().unwrap()).unwrap())
                .unwrap();
        assert_eq!(
            record["hermit"]["version"],
            format!("{} ({})", env!("CARGO_PKG_VERSION"), &head[..12])
        );
        let o = run(Command::new(result.join("usr/bin/hello")).arg("tester"));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "Hello, tester, from a hermetic build.\n"
        );
        digests.push(v["output_digest"].clone());
    }
    assert_eq!(digests[0], digests[1]);

    // Purged: every path the package added is gone, and dpkg forgot it.
    let o = apt(&["purge", "hermit"]);
    assert!(o.status.success(), "apt-get purge: {}", both(&o));
    assert!(!installed());
    let left: Vec<&&PathBuf> = new
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    let info: Vec<_> = fs::read_dir("/var/lib/dpkg/info")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hermit."))
        .collect();
    assert!(info.is_empty(), "{info:?}");
}
