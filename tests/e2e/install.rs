//! What installing hermit relies on, on the binary under test: `--version`
//! names the commit and records state the same string; `hermit manpages`
//! writes pages `man` renders without a warning; `hermit completions` gives
//! scripts the shells load, and bash completes spec files after
//! `hermit build`. (The Debian package itself: tests/package.)

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::build::project;
use crate::common::{both, run};
use crate::fixtures::{both_users, wrap, As};

/// `hermit 0.1.0 (<commit>)` → `0.1.0 (<commit>)`.
fn version(who: As) -> String {
    let o = run(who.hermit().arg("--version"));
    assert!(o.status.success(), "{}", both(&o));
    let line = String::from_utf8(o.stdout).unwrap();
    line.trim_end()
        .strip_prefix("hermit ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string()
}

fn version_names_the_commit_and_records_state_it(who: As) {
    let v = version(who);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let head = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let commit = if head.status.success() {
        String::from_utf8(head.stdout).unwrap()[..12].to_string()
    } else {
        "unknown commit".to_string()
    };
    if std::env::var_os("HERMIT_COMMIT").is_none() {
        assert_eq!(
            v,
            format!("{} ({commit})", env!("CARGO_PKG_VERSION")),
            "built from {}",
            repo.display()
        );
    }
    let o = run(who.hermit().args(["sandbox", "--version"]));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("hermit-sandbox {v}\n")
    );

    let t = who.scratch();
    let spec = project(t.path(), "echo hi > $out/hi", "");
    who.give(t.path());
    let o = run(who
        .hermit_in(&t.path().join("home"))
        .arg("build")
        .arg(&spec)
        .arg("--json"));
    assert!(o.status.success(), "{}", both(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out["record"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(record["hermit"]["version"], v.as_str());
}

/// Every page `hermit manpages` writes, one per visible command, renders
/// with `man -l` without a warning from groff.
fn man_pages_render_without_warnings(who: As) {
    let t = who.scratch();
    let dir = t.path().join("man1");
    let o = run(who.hermit().arg("manpages").arg(&dir));
    assert!(o.status.success(), "{}", both(&o));
    let mut pages: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "hermit.1",
        "hermit-build.1",
        "hermit-rebuild.1",
        "hermit-sandbox.1",
        "hermit-store-gc.1",
        "hermit-completions.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    for page in &pages {
        let o = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.join(page))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("LC_ALL", "C.UTF-8"));
        assert!(o.status.success(), "{page}: {}", both(&o));
        assert!(o.stderr.is_empty(), "{page}: {}", both(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
    let o = run(Command::new("man")
        .arg("-l")
        .arg(dir.join("hermit-build.1"))
        .env("MANPAGER", "cat"));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("--out-link") && text.contains("<SPEC>"),
        "{text}"
    );
}

/// Runs `script` in bash with hermit's completion loaded (as `who`, from
/// `dir`); `$COMPREPLY` after `complete WORDS…` is printed one per line.
fn bash_completion(who: As, dir: &Path, script: &str) -> String {
    let prelude = r#"
source <("$@" completions bash) || exit 1
complete() {
    COMP_WORDS=(hermit "$@"); COMP_CWORD=$#; COMPREPLY=()
    local f; f=$(builtin complete -p hermit | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
    "$f" hermit "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    printf '%s\n' "${COMPREPLY[@]}" | sort
}
"#;
    let mut hermit = who.hermit();
    hermit.current_dir(dir);
    let o = run(&mut wrap(
        &hermit,
        &format!("{prelude}{script}"),
        "bash".as_ref(),
    ));
    assert!(o.status.success(), "{}", both(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn completions_load_and_complete_spec_files(who: As) {
    let t = who.scratch();
    fs::create_dir(t.path().join("pkg")).unwrap();
    fs::write(t.path().join("pkg/spec.toml"), "").unwrap();
    fs::write(t.path().join("pkg/notes.txt"), "").unwrap();
    fs::write(t.path().join("pkg/record.json"), "").unwrap();
    who.give(t.path());
    let d = t.path();

    let listed = bash_completion(who, d, "builtin complete -p hermit");
    assert_eq!(
        listed,
        "complete -o bashdefault -o default -F _hermit_files hermit\n"
    );
    assert_eq!(bash_completion(who, d, "complete bui"), "build\n");
    // After `hermit build`: directories to walk into, then only *.toml.
    assert_eq!(bash_completion(who, d, "complete build ''"), "pkg\n");
    assert_eq!(
        bash_completion(who, d, "complete build pkg/"),
        "pkg/spec.toml\n"
    );
    assert_eq!(
        bash_completion(who, d, "complete build pkg/spec.toml pkg/"),
        "pkg/spec.toml\n"
    );
    assert_eq!(
        bash_completion(who, d, "complete rebuild pkg/"),
        "pkg/record.json\n"
    );
    let opts = bash_completion(who, d, "complete build --o");
    assert!(
        opts.contains("--out-link") && opts.contains("--offline"),
        "{opts}"
    );

    // zsh and fish read their scripts without a syntax error.
    for (shell, check) in [("zsh", vec!["-n"]), ("fish", vec!["--no-execute"])] {
        let script = d.join(format!("hermit.{shell}"));
        let o = run(who.hermit().args(["completions", shell]));
        assert!(o.status.success(), "{}", both(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("rebuild"),
            "{shell}"
        );
        fs::write(&script, &o.stdout).unwrap();
        let o = run(Command::new(shell).args(&check).arg(&script).env("HOME", d));
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{shell}: {}",
            both(&o)
        );
    }
}

both_users!(
    version_names_the_commit_and_records_state_it,
    man_pages_render_without_warnings,
    completions_load_and_complete_spec_files,
);

/// flake.nix evaluates (against a stub nixpkgs: CI has no network to fetch
/// the real one) and builds hermit at Cargo.toml's version, stamped with the
/// flake's revision, with its man pages and completions.
#[test]
fn flake_evaluates_against_a_stub_nixpkgs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap();
    let o = run(Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(root.join("tests/data/flake/stub-eval.nix"))
        .arg("--argstr")
        .arg("root")
        .arg(&root));
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pname"], "hermit");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v["HERMIT_COMMIT"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(v["lock"], true);
    assert_eq!(v["main"], "hermit");
    let installs = v["installs"].as_str().unwrap();
    for want in [
        "hermit manpages",
        "completions bash",
        "completions zsh",
        "completions fish",
    ] {
        assert!(installs.contains(want), "{want}: {installs}");
    }
}
