//! What hermit and its sandbox processes tell each other, one JSON document
//! per line: the parent writes one [`HelperInput`] into the helper's pipe and
//! closes it; the helper, the init and the command's process (until it execs)
//! write [`Message`]s into the status pipe, each with a single `write(2)`.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::outcome::SetupFailure;
use crate::plan::Op;
use crate::spec::SandboxSpec;

/// Parent → helper.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelperInput {
    pub spec: SandboxSpec,
    pub ops: Vec<Op>,
    /// The parent's pid: the helper checks it is still its parent after
    /// arming PR_SET_PDEATHSIG.
    pub parent: i32,
    /// The pids cgroup to join, when the parent could create one.
    pub cgroup: Option<PathBuf>,
    /// The memory cgroup to join, when the parent could create one (and it
    /// is not the pids cgroup).
    #[serde(default)]
    pub memory_cgroup: Option<PathBuf>,
    /// Uid and gid outside (the caller's).
    pub outer_uid: u32,
    pub outer_gid: u32,
    /// The command's descriptors 0, 1 and 2, when init is a clone of hermit
    /// itself (a re-executed helper already has them as its own 0–2). Never
    /// a terminal: see `run.rs`.
    #[serde(skip)]
    pub stdio: Option<[OwnedFd; 3]>,
    /// Descriptors handed to the command: (number in the command, number in
    /// the process that starts init, where it is open).
    #[serde(default)]
    pub pass: Vec<(i32, i32)>,
    /// The socket to send the command's terminal's master on (a number
    /// where `pass` numbers are), when the command gets a terminal.
    #[serde(default)]
    pub console: Option<i32>,
    /// That terminal's first window size.
    #[serde(default)]
    pub window: Option<crate::terminal::WindowSize>,
}

/// Sandbox → parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Message {
    /// Setup finished; the command is about to be executed.
    Ready,
    /// Setup (or exec) failed at a step.
    Failed(SetupFailure),
    /// The command exited with this status.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
}

/// Writes `msg` as one line with one `write(2)` (pipes keep writes of up to
/// PIPE_BUF bytes whole, so lines from several processes never interleave).
/// Errors are ignored: if the parent is gone there is nobody to tell.
pub(crate) fn send(fd: &impl AsFd, msg: &Message) {
    let Ok(mut line) = serde_json::to_vec(msg) else {
        return;
    };
    line.push(b'\n');
    let mut rest = &line[..];
    while !rest.is_empty() {
        match nix::unistd::write(fd.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Reads the whole input pipe and decodes it.
pub(crate) fn read_input(fd: OwnedFd) -> Result<HelperInput, String> {
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the sandbox spec from hermit: {e}"))?;
    serde_json::from_slice(&buf).map_err(|e| format!("decoding the sandbox spec from hermit: {e}"))
}

/// Splits complete lines off `buf` and decodes them.
pub(crate) fn take_messages(buf: &mut Vec<u8>) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=i).collect();
        let msg = serde_json::from_slice(&line[..i]).map_err(|e| {
            format!(
                "undecodable message from the sandbox {:?}: {e}",
                String::from_utf8_lossy(&line)
            )
        })?;
        out.push(msg);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_line_by_line() {
        let msgs = vec![
            Message::Ready,
            Message::Failed(SetupFailure {
                step: "mount proc on /proc".into(),
                call: "mount".into(),
                path: Some("/proc".into()),
                errno: Some(libc::EPERM),
                exec: false,
            }),
            Message::Exited(3),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            buf.extend(serde_json::to_vec(m).unwrap());
            buf.push(b'\n');
        }
        buf.extend(b"{\"exi"); // a partial line stays in the buffer
        assert_eq!(take_messages(&mut buf).unwrap(), msgs);
        assert_eq!(buf, b"{\"exi");
    }
}
