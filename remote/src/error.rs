//! Errors of the remote client. [`Error::is_integrity`] tells a remote that
//! served something wrong (refuse it, name the digest) from one that is merely
//! down or slow (warn, carry on locally).

use std::path::PathBuf;

/// Everything that can go wrong talking to a remote.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad remote endpoint {url:?}: {why}")]
    Endpoint { url: String, why: String },
    #[error("cannot connect to remote {endpoint}: {why}")]
    Connect { endpoint: String, why: String },
    #[error("remote {endpoint}: {op} failed: {code:?}: {message}")]
    Rpc {
        endpoint: String,
        op: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("remote {endpoint}: {op} timed out after {secs} s")]
    Timeout {
        endpoint: String,
        op: &'static str,
        secs: u64,
    },
    #[error("remote blob {digest} is missing from the CAS")]
    Missing { digest: String },
    #[error("remote blob {digest} has the wrong content (got {got}); refused")]
    Corrupt { digest: String, got: String },
    #[error("remote answered with a malformed {what}: {why}")]
    Protocol { what: &'static str, why: String },
    #[error("the CA bundle for grpcs:// remotes {}: {why}", path.display())]
    Ca { path: PathBuf, why: String },
    #[error("the client certificate {} (HERMIT_REMOTE_CERT or cert_file in [remote]): {why}", path.display())]
    ClientCert { path: PathBuf, why: String },
    #[error("the client private key {} (HERMIT_REMOTE_KEY or key_file in [remote]): {why}", path.display())]
    ClientKey { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// The remote served bytes that do not match their digest, or a message
    /// that makes no sense: a reason to distrust the answer, not just a
    /// network hiccup.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::Missing { .. } | Error::Protocol { .. }
        )
    }

    /// The remote could not be reached or did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::ResourceExhausted
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
