//! Exit codes, in one place.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the build (or the sandboxed command) itself failed |
//! | 2 | bad input: a spec, a digest, a flag, a missing file — fix the input |
//! | 70 | internal error: hermit is wrong; please report it |
//! | 124 | the sandboxed command timed out |
//! | 125 | the sandbox could not be set up (see `hermit doctor`) |
//!
//! `hermit sandbox` passes the command's own status through (128+N when it was
//! killed by signal N), like `env` and `timeout` do.

use std::fmt;
use std::process::ExitCode;

pub const BUILD_FAILED: u8 = 1;
pub const USER_ERROR: u8 = 2;
pub const INTERNAL: u8 = 70;
pub const TIMEOUT: u8 = 124;
pub const SANDBOX_SETUP: u8 = 125;

/// An error that carries the exit code it should end hermit with.
/// Attach it with `anyhow::Error::new(Exit::user(..))` or `.context(..)`.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
    /// A failed build's log, stored by digest.
    pub log: Option<hermit_store::Digest>,
    /// Facts for `--json` failure reports (e.g. `log`: the build log's path),
    /// already part of `message` for people.
    pub details: Vec<(&'static str, String)>,
}

impl Exit {
    pub fn user(message: impl Into<String>) -> Exit {
        Exit::with_code(USER_ERROR, message)
    }
    pub fn with_code(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
            log: None,
            details: Vec::new(),
        }
    }
    /// The same error, naming the failed build's stored log.
    pub fn with_log(mut self, log: hermit_store::Digest) -> Exit {
        self.log = Some(log);
        self
    }
    /// Adds a fact for `--json` failure reports.
    pub fn detail(mut self, key: &'static str, value: impl Into<String>) -> Exit {
        self.details.push((key, value.into()));
        self
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Prints the error chain to stderr and picks the exit code: the code of the
/// outermost [`Exit`] in the chain, else [`USER_ERROR`] (most failures that
/// reach here are about input: files, digests, URLs).
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(code_of(err))
}

fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Exit>().map(|x| x.code))
        .unwrap_or(USER_ERROR)
}

/// [`report`] for a command run with `--json`: the same text on stderr, and
/// on stdout one JSON object (sorted keys) in place of the one success
/// prints: `error` (the message), `causes` (the chain below it, outermost
/// first), `exit_code`, and the failure's details (`log`, `build_dir`).
pub fn report_json(err: &anyhow::Error) -> ExitCode {
    let code = report(err);
    println!("{}", failure_json(err));
    code
}

fn failure_json(err: &anyhow::Error) -> String {
    let mut v = serde_json::Map::new();
    v.insert("error".into(), err.to_string().into());
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    v.insert("causes".into(), causes.into());
    v.insert("exit_code".into(), code_of(err).into());
    if let Some(x) = err.chain().find_map(|e| e.downcast_ref::<Exit>()) {
        for (k, val) in &x.details {
            v.insert((*k).into(), val.clone().into());
        }
    }
    serde_json::to_string_pretty(&serde_json::Value::Object(v))
        .unwrap_or_else(|_| "{\"error\": \"(unprintable)\"}".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn failure_json_has_the_message_code_and_details() {
        let err = Err::<(), _>(
            Exit::with_code(BUILD_FAILED, "build of x failed").detail("log", "/s/log"),
        )
        .context("building x")
        .unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&failure_json(&err)).unwrap();
        assert_eq!(v["error"], "building x");
        assert_eq!(v["causes"][0], "build of x failed");
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["log"], "/s/log");
        let plain = anyhow::anyhow!("no such file");
        let v: serde_json::Value = serde_json::from_str(&failure_json(&plain)).unwrap();
        assert_eq!(v["exit_code"], 2);
        assert_eq!(v["causes"], serde_json::json!([]));
    }
}
