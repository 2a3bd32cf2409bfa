//! Debian toolchain images bootstrapped with mmdebstrap from the host's apt
//! sources: reproducible — root's bootstrap (`--mode=root`) and an ordinary
//! user's (`--mode=unshare`) give the same image, bit for bit — and every
//! pinned package checked against apt's own index and against what the
//! image's dpkg database says is installed.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::process::Command;

use crate::common::{both, run};
use crate::fixtures::{both_users, As};

fn bootstrap(who: As, home: &std::path::Path, include: &str) -> serde_json::Value {
    let o = run(who.hermit_in(home).args([
        "image",
        "bootstrap",
        "--suite",
        "bookworm",
        "--include",
        include,
        "--json",
    ]));
    assert!(o.status.success(), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Name → version of every installed package in a root filesystem tar.
fn dpkg_status(layer: &std::path::Path) -> BTreeSet<(String, String)> {
    let f = fs::File::open(layer).unwrap();
    let mut a = tar::Archive::new(f);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if p == "var/lib/dpkg/status" {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            let mut out = BTreeSet::new();
            for para in s.split("\n\n") {
                let field = |k: &str| {
                    para.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                        .map(str::to_string)
                };
                if let (Some(n), Some(v)) = (field("Package"), field("Version")) {
                    if field("Status").is_some_and(|s| s.ends_with(" installed")) {
                        out.insert((n, v));
                    }
                }
            }
            return out;
        }
    }
    panic!("no var/lib/dpkg/status in {}", layer.display());
}

#[test]
fn bootstrap_is_reproducible_and_pins_every_package() {
    crate::fixtures::ensure_subids();
    let t = As::User.scratch();
    let a = bootstrap(As::Root, &t.path().join("a"), "make");
    let b = bootstrap(As::User, &t.path().join("b"), "make");
    assert_eq!(
        a["image"]["manifest"], b["image"]["manifest"],
        "root's and the user's bootstraps differ"
    );
    assert_eq!(a["image"]["layers"], b["image"]["layers"]);
    assert_eq!(a["packages"], b["packages"]);

    let packages = a["packages"].as_array().unwrap();
    assert!(
        packages.iter().any(|p| p["name"] == "make"),
        "make is not pinned"
    );

    // What the lock will pin is exactly what dpkg says is installed.
    let layer = a["image"]["layers"][0]["digest"].as_str().unwrap();
    let layer_path = t.path().join("a/v1/blobs/sha256").join(&layer[7..]);
    let installed = dpkg_status(&layer_path);
    let pinned: BTreeSet<(String, String)> = packages
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(pinned, installed);

    // Each .deb's sha256 is the one apt's index publishes.
    for p in packages
        .iter()
        .filter(|p| ["make", "bash", "libc6", "coreutils"].contains(&p["name"].as_str().unwrap()))
    {
        let spec = format!(
            "{}:{}={}",
            p["name"].as_str().unwrap(),
            p["architecture"].as_str().unwrap(),
            p["version"].as_str().unwrap()
        );
        let o = run(Command::new("apt-cache").args(["show", "--no-all-versions", &spec]));
        assert!(o.status.success(), "{}", both(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        let want = text
            .lines()
            .find_map(|l| l.strip_prefix("SHA256: "))
            .unwrap();
        assert_eq!(p["sha256"].as_str().unwrap(), want, "{spec}");
    }
}

fn unknown_suite_without_mirror_says_how_to_fix_it(who: As) {
    let t = who.scratch();
    let o = run(who
        .hermit_in(t.path())
        .args(["image", "bootstrap", "--suite", "no-such-suite"]));
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("do not list suite \"no-such-suite\"") && err.contains("mirror ="),
        "{err}"
    );
}

both_users!(unknown_suite_without_mirror_says_how_to_fix_it);
