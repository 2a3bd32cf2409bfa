//! Extra certificate authorities for `grpcs://` remotes: a PEM bundle (the
//! team's own CA, say) trusted in addition to the web PKI roots. Read and
//! checked once, up front, so that a wrong path or a file that holds no
//! certificate is one clear error naming the file instead of a handshake
//! failure later.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};

/// A bundle of CA certificates in PEM, as read from a file.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    path: PathBuf,
    pem: Vec<u8>,
    count: usize,
}

impl CaBundle {
    /// Reads `path` and checks that it holds at least one PEM certificate
    /// and that every certificate in it is a well-formed X.509 certificate.
    pub fn read(path: &Path) -> Result<CaBundle> {
        let bad = |why: String| Error::Ca {
            path: path.to_path_buf(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        CaBundle::from_pem(path, pem)
    }

    /// Checks `pem` (the content of `path`) like [`CaBundle::read`].
    pub fn from_pem(path: &Path, pem: Vec<u8>) -> Result<CaBundle> {
        let bad = |why: String| Error::Ca {
            path: path.to_path_buf(),
            why,
        };
        let mut count = 0;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
            let (kind, der) = item.map_err(|e| bad(format!("not valid PEM: {e}")))?;
            if kind != SectionKind::Certificate {
                return Err(bad(format!(
                    "holds a {kind:?} section; a CA bundle holds only CERTIFICATE sections (never a private key)"
                )));
            }
            count += 1;
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der)).map_err(|e| {
                bad(format!(
                    "certificate {count} is not a valid X.509 certificate: {e}"
                ))
            })?;
        }
        if count == 0 {
            return Err(bad(
                "holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" section)".into(),
            ));
        }
        Ok(CaBundle {
            path: path.to_path_buf(),
            pem,
            count,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Never true for a bundle that was read successfully.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The PEM text.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<CaBundle> {
        CaBundle::from_pem(Path::new("/etc/ca.pem"), text.as_bytes().to_vec())
    }

    #[test]
    fn refuses_what_is_not_a_bundle() {
        let e = check("hello\n").unwrap_err().to_string();
        assert!(
            e.contains("/etc/ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = check("-----BEGIN CERTIFICATE-----\nAAAA\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid PEM"), "{e}");
        let e = check("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("certificate 1 is not a valid X.509"), "{e}");
        let e = check("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never a private key"), "{e}");
        let e = CaBundle::read(Path::new("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("cannot read"),
            "{e}"
        );
    }
}
