//! Why a `grpcs://` connection failed, in words that name the fix: the
//! server's certificate is not trusted, the server wants a client
//! certificate we do not have, or it refused the one we presented.
//!
//! Servers say the last two in different ways. Some send a TLS alert
//! (`CertificateRequired`, `UnknownCA`, …) that the error carries. gRPC's
//! own TLS (BuildGrid) sends none: it completes the handshake and closes
//! the connection, which the first call sees as a bare "connection closed".
//! For that case [`asks_for_client_cert`] makes one more handshake, carrying
//! no certificate and no data, that only records whether the server asks for
//! a client certificate.

use std::io::Read as _;
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::endpoint::Endpoint;

const SET_CERT: &str = "set HERMIT_REMOTE_CERT and HERMIT_REMOTE_KEY, or cert_file and key_file in [remote] of config.toml, to the PEM certificate the server's client CA signed and its private key";

/// The server requires a client certificate and we presented none.
pub(crate) fn cert_required() -> String {
    format!(" (the server requires a client certificate: {SET_CERT})")
}

/// The server refused the client certificate we presented.
pub(crate) fn cert_refused(endpoint: &Endpoint) -> String {
    match endpoint.identity() {
        Some(id) => format!(
            " (the server refused the client certificate {}: it must be signed by a CA the server trusts for clients, e.g. BuildGrid's tls-client-certs, and be valid now)",
            id.cert_path().display()
        ),
        None => cert_required(),
    }
}

/// What to add to the message `why` of a failed TLS connection or first
/// call, judged from the message alone; empty when it says nothing
/// about certificates.
pub(crate) fn hint(endpoint: &Endpoint, why: &str) -> String {
    if !endpoint.tls {
        return String::new();
    }
    let w = why.to_lowercase();
    let alert =
        |names: &[&str]| w.contains("alert") && names.iter().any(|n| w.contains(&n.to_lowercase()));
    match endpoint.identity() {
        None if alert(&["CertificateRequired", "HandshakeFailure"]) => cert_required(),
        Some(id) if alert(&["CertificateExpired"]) => format!(
            " (the server says the client certificate {} has expired: renew it)",
            id.cert_path().display()
        ),
        Some(_)
            if alert(&[
                "UnknownCA",
                "BadCertificate",
                "CertificateUnknown",
                "UnsupportedCertificate",
                "CertificateRevoked",
                "AccessDenied",
                "DecryptError",
                "HandshakeFailure",
                "CertificateRequired",
            ]) =>
        {
            cert_refused(endpoint)
        }
        _ if w.contains("certificate") && !w.contains("alert") => match endpoint.ca() {
            Some(ca) => format!(
                " (the server's certificate was checked against the web PKI roots and {})",
                ca.path().display()
            ),
            None => " (a server certificate from your own CA needs that CA: set HERMIT_REMOTE_CA or ca_file in [remote] of config.toml to its PEM file)".to_string(),
        },
        _ => String::new(),
    }
}

/// Whether the `grpcs://` server at `endpoint` asks for a client
/// certificate during the TLS handshake. One handshake within `limit`,
/// presenting no certificate and sending no data; `false` when it cannot
/// tell.
pub(crate) async fn asks_for_client_cert(endpoint: &Endpoint, limit: Duration) -> bool {
    let (host, port) = (endpoint.host.clone(), endpoint.port);
    let probe = tokio::task::spawn_blocking(move || probe(&host, port, limit).unwrap_or(false));
    // Name resolution has no deadline of its own.
    matches!(
        tokio::time::timeout(limit + Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}

fn probe(host: &str, port: u16, limit: Duration) -> Option<bool> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let asked = Arc::new(Asked::default());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(asked.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_string()).ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut tcp = TcpStream::connect_timeout(&addr, limit).ok()?;
    tcp.set_read_timeout(Some(limit)).ok()?;
    tcp.set_write_timeout(Some(limit)).ok()?;
    while conn.is_handshaking() && !asked.0.load(Ordering::SeqCst) {
        if conn.complete_io(&mut tcp).is_err() {
            break;
        }
    }
    // Under TLS 1.3 the request comes with the server's first answer; read
    // once more in case the handshake ended without it being seen yet.
    if !asked.0.load(Ordering::SeqCst) && !conn.is_handshaking() {
        let mut b = [0u8; 1];
        let _ = rustls::Stream::new(&mut conn, &mut tcp).read(&mut b);
    }
    Some(asked.0.load(Ordering::SeqCst))
}

/// Records that the server asked for a client certificate; offers none.
#[derive(Debug, Default)]
struct Asked(AtomicBool);

impl ResolvesClientCert for Asked {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The probe's server check: the real connection, made just before, has
/// already checked the server's certificate chain; the probe sends nothing
/// that needs protecting, so it checks only the handshake signatures.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_fix() {
        let tls = Endpoint::parse("grpcs://127.0.0.1:1").unwrap();
        let h = hint(
            &tls,
            "transport error: received fatal alert: CertificateRequired",
        );
        assert!(
            h.contains("requires a client certificate") && h.contains("HERMIT_REMOTE_CERT"),
            "{h}"
        );
        let h = hint(
            &tls,
            "transport error: invalid peer certificate: UnknownIssuer",
        );
        assert!(h.contains("HERMIT_REMOTE_CA"), "{h}");
        assert_eq!(hint(&tls, "connection refused"), "");
        let plain = Endpoint::parse("grpc://127.0.0.1:1").unwrap();
        assert_eq!(
            hint(&plain, "received fatal alert: CertificateRequired"),
            ""
        );
    }
}
