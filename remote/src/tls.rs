//! TLS settings of `grpcs://` remotes besides the web PKI roots: extra
//! certificate authorities (a PEM bundle, the team's own CA, say), and a
//! client certificate with its private key for servers that require mutual
//! TLS. Both are read and checked once, up front, so that a wrong path, a
//! file of the wrong kind or a key that does not belong to its certificate
//! is one clear error naming the file instead of a handshake failure later.
//! No error ever quotes a key file's content.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// A client certificate (chain, end-entity certificate first) and its
/// private key, both PEM, presented to `grpcs://` servers that ask for one.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl ClientIdentity {
    /// Reads the certificate file `cert` and the key file `key` and checks
    /// them like [`ClientIdentity::from_pem`].
    pub fn read(cert: &Path, key: &Path) -> Result<ClientIdentity> {
        let cert_pem = std::fs::read(cert).map_err(|e| Error::ClientCert {
            path: cert.to_path_buf(),
            why: format!("cannot read it: {e}"),
        })?;
        let key_pem = std::fs::read(key).map_err(|e| Error::ClientKey {
            path: key.to_path_buf(),
            why: format!("cannot read it: {e}"),
        })?;
        ClientIdentity::from_pem(cert, cert_pem, key, key_pem)
    }

    /// Checks that `cert_pem` (the content of `cert_path`) holds one or
    /// more well-formed X.509 certificates, that `key_pem` (of `key_path`)
    /// holds exactly one unencrypted private key of a kind rustls signs
    /// with, and that this key is the one the first certificate was made
    /// for.
    pub fn from_pem(
        cert_path: &Path,
        cert_pem: Vec<u8>,
        key_path: &Path,
        key_pem: Vec<u8>,
    ) -> Result<ClientIdentity> {
        let cert_err = |why: String| Error::ClientCert {
            path: cert_path.to_path_buf(),
            why,
        };
        let key_err = |why: String| Error::ClientKey {
            path: key_path.to_path_buf(),
            why,
        };

        let mut chain = Vec::new();
        let mut keys_in_cert = false;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&cert_pem) {
            let (kind, der) =
                item.map_err(|e| cert_err(format!("not valid PEM: {}", pem_problem(&e))))?;
            match kind {
                SectionKind::Certificate => chain.push(CertificateDer::from(der)),
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => keys_in_cert = true,
                _ => {}
            }
        }
        if chain.is_empty() {
            return Err(cert_err(
                if keys_in_cert || holds_encrypted_key(&cert_pem) {
                    "holds a private key, not a certificate: the certificate file is the client certificate (chain) in PEM, the key file its private key".into()
                } else {
                    "holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" section): give the client certificate in PEM (`openssl x509 -inform der -in cert.der -out cert.pem` converts DER)".into()
                },
            ));
        }
        webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
            cert_err(match e {
                webpki::Error::UnsupportedCertVersion => "certificate 1 is an X.509 v1 certificate; TLS clients need v3 (sign it with extensions, e.g. `openssl x509 -req … -extfile client.ext` with `extendedKeyUsage=clientAuth` in client.ext)".into(),
                e => format!("certificate 1 is not a valid X.509 certificate: {e}"),
            })
        })?;
        for (i, c) in chain.iter().enumerate().skip(1) {
            webpki::anchor_from_trusted_cert(c).map_err(|e| {
                cert_err(format!(
                    "certificate {} is not a valid X.509 certificate: {e}",
                    i + 1
                ))
            })?;
        }

        let mut keys = Vec::new();
        let mut certs_in_key = false;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&key_pem) {
            let (kind, der) =
                item.map_err(|e| key_err(format!("not valid PEM: {}", pem_problem(&e))))?;
            if kind == SectionKind::Certificate {
                certs_in_key = true;
            } else if let Some(k) = PrivateKeyDer::from_pem(kind, der) {
                keys.push(k);
            }
        }
        let key = match keys.len() {
            1 => keys.remove(0),
            0 if holds_encrypted_key(&key_pem) => {
                return Err(key_err(
                    "is encrypted; hermit needs the private key unencrypted (`openssl pkey -in KEY -out client.key` writes it so; keep that file readable only by you)".into(),
                ))
            }
            0 if certs_in_key => {
                return Err(key_err(
                    "holds a certificate, not a private key: the key file is the client certificate's private key in PEM, the certificate file the certificate".into(),
                ))
            }
            0 => {
                return Err(key_err(
                    "holds no PEM private key (a \"-----BEGIN PRIVATE KEY-----\" section)".into(),
                ))
            }
            n => {
                return Err(key_err(format!(
                    "holds {n} private keys; it must hold exactly one, the client certificate's"
                )))
            }
        };
        let provider = rustls::crypto::ring::default_provider();
        let signer = provider.key_provider.load_private_key(key).map_err(|_| {
            key_err(
                "is not a private key hermit can sign with (RSA, ECDSA P-256 or P-384, or Ed25519)"
                    .into(),
            )
        })?;
        match rustls::sign::CertifiedKey::new(chain, signer).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(key_err(format!(
                    "does not belong to the certificate {} (their public keys differ): give the private key that certificate was made for",
                    cert_path.display()
                )))
            }
            Err(e) => return Err(cert_err(format!("cannot be used: {e}"))),
        }
        Ok(ClientIdentity {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            cert_pem,
            key_pem,
        })
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The certificate chain, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The private key, PEM.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

impl fmt::Debug for ClientIdentity {
    /// The two files; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientIdentity({}, key {})",
            self.cert_path.display(),
            self.key_path.display()
        )
    }
}

/// What is wrong with a PEM file, in words that never quote its content
/// (the file may be a private key).
fn pem_problem(e: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a section has no END line",
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        E::Base64Decode(_) => "a section's base64 text is damaged",
        E::SectionTooLarge => "a section is too large",
        _ => "it cannot be parsed",
    }
}

/// Whether PEM text holds an encrypted private key (a section the PEM
/// reader skips).
fn holds_encrypted_key(pem: &[u8]) -> bool {
    pem.windows(b"ENCRYPTED PRIVATE KEY-----".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY-----")
        || pem
            .windows(b"Proc-Type: 4,ENCRYPTED".len())
            .any(|w| w == b"Proc-Type: 4,ENCRYPTED")
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

    /// `openssl ARGS` in `dir`; it must succeed.
    fn openssl(dir: &Path, args: &[&str]) {
        let o = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl {args:?}: {o:?}");
    }

    /// A CA and, signed by it, a client certificate with an ECDSA, an RSA
    /// and an Ed25519 key: ec.pem and ec.key, rsa.*, ed.*.
    fn pki(dir: &Path) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
        ca.extend(["-subj", "/CN=test CA"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        openssl(dir, &ca);
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, key) in [
            ("ec", &ec[..]),
            ("rsa", &["-newkey", "rsa:2048", "-nodes"][..]),
            ("ed", &["-newkey", "ed25519", "-nodes"][..]),
        ] {
            let (k, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let mut req = vec!["req"];
            req.extend(key);
            req.extend(["-keyout", &k, "-out", &csr, "-subj", "/CN=client"]);
            openssl(dir, &req);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    "7",
                    "-days",
                    "2",
                    "-extfile",
                    "client.ext",
                    "-out",
                    &pem,
                ],
            );
        }
    }

    #[test]
    fn client_identities_are_checked_up_front() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        pki(d);
        let p = |n: &str| d.join(n);
        let err = |c: &str, k: &str| ClientIdentity::read(&p(c), &p(k)).unwrap_err().to_string();

        // Every key kind rustls signs with, and a chain (client + CA).
        for name in ["ec", "rsa", "ed"] {
            let id = ClientIdentity::read(&p(&format!("{name}.pem")), &p(&format!("{name}.key")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(id.cert_path(), p(&format!("{name}.pem")));
        }
        let mut chain = std::fs::read(p("ec.pem")).unwrap();
        chain.extend(std::fs::read(p("ca.pem")).unwrap());
        std::fs::write(p("chain.pem"), chain).unwrap();
        ClientIdentity::read(&p("chain.pem"), &p("ec.key")).unwrap();

        // An X.509 v1 certificate (no extensions) rustls cannot use.
        openssl(
            d,
            &[
                "x509", "-req", "-in", "ec.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-out",
                "v1.pem",
            ],
        );
        let e = err("v1.pem", "ec.key");
        assert!(
            e.contains("v1 certificate") && e.contains("clientAuth"),
            "{e}"
        );

        // A key that is another certificate's.
        let e = err("ec.pem", "rsa.key");
        assert!(e.contains(&p("rsa.key").display().to_string()), "{e}");
        assert!(
            e.contains("does not belong to the certificate") && e.contains("ec.pem"),
            "{e}"
        );
        // The two files swapped, or the key given as both.
        let e = err("ec.key", "ec.pem");
        assert!(
            e.contains("client certificate")
                && e.contains("holds a private key, not a certificate"),
            "{e}"
        );
        let e = err("ec.pem", "ec.pem");
        assert!(
            e.contains("client private key")
                && e.contains("holds a certificate, not a private key"),
            "{e}"
        );
        // Missing files, each named.
        let e = err("none.pem", "ec.key");
        assert!(
            e.contains("none.pem") && e.contains("cannot read it"),
            "{e}"
        );
        let e = err("ec.pem", "none.key");
        assert!(
            e.contains("none.key") && e.contains("cannot read it"),
            "{e}"
        );
        // Not PEM at all (DER), and damaged PEM.
        openssl(
            d,
            &["x509", "-in", "ec.pem", "-outform", "der", "-out", "ec.der"],
        );
        let e = err("ec.der", "ec.key");
        assert!(
            e.contains("holds no PEM certificate") && e.contains("converts DER"),
            "{e}"
        );
        let key = std::fs::read_to_string(p("ec.key")).unwrap();
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        std::fs::write(p("cut.key"), key.replace("-----END", "junk\n-----EN")).unwrap();
        let e = err("ec.pem", "cut.key");
        assert!(e.contains("not valid PEM"), "{e}");
        // An encrypted key; two keys in one file.
        openssl(
            d,
            &[
                "pkey", "-in", "ec.key", "-aes256", "-passout", "pass:pw", "-out", "enc.key",
            ],
        );
        let e = err("ec.pem", "enc.key");
        assert!(
            e.contains("is encrypted") && e.contains("openssl pkey"),
            "{e}"
        );
        std::fs::write(
            p("two.key"),
            format!("{key}{}", std::fs::read_to_string(p("rsa.key")).unwrap()),
        )
        .unwrap();
        let e = err("ec.pem", "two.key");
        assert!(e.contains("holds 2 private keys"), "{e}");

        // No error, and no Debug output, quotes the key.
        let id = ClientIdentity::read(&p("ec.pem"), &p("ec.key")).unwrap();
        for text in [
            e,
            err("ec.pem", "cut.key"),
            err("ec.key", "ec.pem"),
            format!("{id:?}"),
        ] {
            for line in body.as_bytes().chunks(16) {
                assert!(!text.contains(std::str::from_utf8(line).unwrap()), "{text}");
            }
        }
    }
}
