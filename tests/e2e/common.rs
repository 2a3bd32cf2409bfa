//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `hermit` binary under test.
pub fn hermit_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hermit"))
}

/// A `hermit` command with its store at `home` and a clean, predictable environment.
pub fn hermit(home: &Path) -> Command {
    let mut c = Command::new(hermit_bin());
    c.env("HERMIT_HOME", home).env("NO_COLOR", "1");
    c
}

/// Runs a command and returns its output, panicking with both streams if it
/// could not be started.
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("could not start {cmd:?}: {e}"),
    }
}

/// Stdout and stderr as one string, for assertion messages.
pub fn both(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
