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
}

impl Exit {
    pub fn user(message: impl Into<String>) -> Exit {
        Exit {
            code: USER_ERROR,
            message: message.into(),
            log: None,
        }
    }
    pub fn with_code(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
            log: None,
        }
    }
    /// The same error, naming the failed build's stored log.
    pub fn with_log(mut self, log: hermit_store::Digest) -> Exit {
        self.log = Some(log);
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
    let code = err
        .chain()
        .find_map(|e| e.downcast_ref::<Exit>().map(|x| x.code))
        .unwrap_or(USER_ERROR);
    ExitCode::from(code)
}
