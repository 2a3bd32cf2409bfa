//! What running a command in the sandbox can come to.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this status.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
    /// The timeout passed; every process in the sandbox was killed.
    TimedOut(Duration),
    /// The sandbox could not be set up, or the command could not be executed.
    SetupFailed(SetupFailure),
}

impl Outcome {
    /// The status a shell would report: the exit status, or 128+signal.
    pub fn shell_status(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            Outcome::Signaled(s) => Some(128 + s),
            _ => None,
        }
    }
}

/// A setup step that failed: which step, which call on which path, and the
/// errno. Travels from the sandbox to the parent as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    /// The step, as in the plan (`mount proc on /proc`).
    pub step: String,
    /// The system call or action that failed (`mount`, `mkdir`, `execve`).
    pub call: String,
    /// The path it was given (host path for sources, sandbox path otherwise).
    pub path: Option<PathBuf>,
    pub errno: Option<i32>,
    /// True when everything was set up and only executing the command failed.
    pub exec: bool,
}

impl SetupFailure {
    pub(crate) fn new(
        step: impl Into<String>,
        call: &str,
        path: Option<PathBuf>,
        errno: Option<nix::errno::Errno>,
    ) -> SetupFailure {
        SetupFailure {
            step: step.into(),
            call: call.to_string(),
            path,
            errno: errno.map(|e| e as i32),
            exec: false,
        }
    }

    /// A hint for the failures a machine's configuration causes.
    pub fn hint(&self) -> Option<&'static str> {
        let eperm = self.errno == Some(libc::EPERM) || self.errno == Some(libc::EACCES);
        if self.call == "unshare" || self.call.starts_with("write /proc/self/") {
            Some("user namespaces may be disabled here; run `hermit doctor` for the fix")
        } else if self.call == "mount" && self.step.starts_with("mount proc") && eperm {
            Some("mounting /proc needs a fully visible /proc on the host (no masked paths, as in some containers); run `hermit doctor`")
        } else {
            None
        }
    }
}

impl fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.call)?;
        if let Some(p) = &self.path {
            write!(f, " {}", p.display())?;
        }
        if let Some(e) = self.errno {
            write!(f, ": {}", std::io::Error::from_raw_os_error(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for SetupFailure {}
