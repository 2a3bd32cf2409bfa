//! Remote endpoints: `grpc://HOST:PORT[/INSTANCE]` (plain HTTP/2) and
//! `grpcs://HOST[:PORT][/INSTANCE]` (TLS, port 443 by default). The instance
//! name is everything after the first `/` following the authority and may
//! itself contain `/` (`grpc://cache:8980/team/linux`). A bearer token is not
//! part of the URL (it would end up in logs and shell history); it comes from
//! the environment or the config file and is attached with [`Endpoint::with_token`],
//! like the TLS settings ([`Endpoint::with_ca`], [`Endpoint::with_identity`]).

use std::fmt;

use crate::error::{Error, Result};
use crate::tls::{CaBundle, ClientIdentity};

/// Where a remote is and how to talk to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `true` for `grpcs://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The REAPI instance name; empty for the default instance.
    pub instance: String,
    /// Sent as `authorization: Bearer TOKEN` on every call.
    token: Option<String>,
    /// CA certificates trusted for `grpcs://` besides the web PKI roots.
    ca: Option<CaBundle>,
    /// The client certificate and key presented to `grpcs://` servers.
    identity: Option<ClientIdentity>,
}

impl Endpoint {
    /// Parses `grpc://HOST:PORT[/INSTANCE]` or `grpcs://HOST[:PORT][/INSTANCE]`.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::Endpoint {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("grpc://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("grpcs://") {
            (true, r)
        } else {
            return Err(bad(
                "must start with grpc:// or grpcs:// (e.g. grpc://127.0.0.1:50051)",
            ));
        };
        let (authority, instance) = match rest.split_once('/') {
            Some((a, i)) => (a, i.trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                "credentials do not belong in the URL; set HERMIT_REMOTE_TOKEN or remote.token_file",
            ));
        }
        if instance.contains(['?', '#']) || instance.split('/').any(|c| c == "." || c == "..") {
            return Err(bad("the instance name must be plain path segments"));
        }
        if instance.split('/').any(|c| {
            matches!(
                c,
                "blobs" | "uploads" | "actions" | "actionResults" | "operations" | "capabilities"
            )
        }) {
            return Err(bad(
                "an instance name may not contain the REAPI reserved words blobs, uploads, actions, actionResults, operations, capabilities",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in an IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("junk after the IPv6 address")),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
            None if tls => 443,
            None => return Err(bad("grpc:// needs a port (grpc://HOST:PORT)")),
        };
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            instance: instance.to_string(),
            token: None,
            ca: None,
            identity: None,
        })
    }

    /// The same endpoint with a bearer token (an empty token means none).
    pub fn with_token(mut self, token: Option<String>) -> Endpoint {
        self.token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        self
    }

    /// The same endpoint trusting `ca`'s certificates too (for `grpcs://`;
    /// a plain `grpc://` endpoint ignores it).
    pub fn with_ca(mut self, ca: Option<CaBundle>) -> Endpoint {
        self.ca = ca;
        self
    }

    pub fn ca(&self) -> Option<&CaBundle> {
        self.ca.as_ref()
    }

    /// The same endpoint presenting `identity` when a `grpcs://` server
    /// asks for a client certificate (mutual TLS; a plain `grpc://`
    /// endpoint ignores it).
    pub fn with_identity(mut self, identity: Option<ClientIdentity>) -> Endpoint {
        self.identity = identity;
        self
    }

    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.identity.as_ref()
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `http://host:port` or `https://host:port`, what the HTTP/2 transport wants.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// `INSTANCE/` or nothing, the prefix of ByteStream resource names.
    fn resource_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    /// ByteStream resource name to read a blob: `{instance}/blobs/{hash}/{size}`.
    pub fn read_resource(&self, hash: &str, size: u64) -> String {
        format!("{}blobs/{hash}/{size}", self.resource_prefix())
    }

    /// ByteStream resource name to write a blob:
    /// `{instance}/uploads/{uuid}/blobs/{hash}/{size}`.
    pub fn write_resource(&self, uuid: &str, hash: &str, size: u64) -> String {
        format!(
            "{}uploads/{uuid}/blobs/{hash}/{size}",
            self.resource_prefix()
        )
    }
}

impl fmt::Display for Endpoint {
    /// The URL again, without the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}", self.port)?;
        if !self.instance.is_empty() {
            write!(f, "/{}", self.instance)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Endpoint {
    /// Like Display, and never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Endpoint({self}{})",
            if self.token.is_some() {
                ", token set"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_with_port() {
        let e = Endpoint::parse("grpc://127.0.0.1:50051").unwrap();
        assert!(!e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.instance.as_str()),
            ("127.0.0.1", 50051, "")
        );
        assert_eq!(e.origin(), "http://127.0.0.1:50051");
        assert_eq!(e.to_string(), "grpc://127.0.0.1:50051");
        assert_eq!(e.read_resource("ab", 3), "blobs/ab/3");
        assert_eq!(e.write_resource("u", "ab", 3), "uploads/u/blobs/ab/3");
    }

    #[test]
    fn instance_names_may_nest() {
        let e = Endpoint::parse("grpc://cache.example:8980/team/linux/").unwrap();
        assert_eq!(e.instance, "team/linux");
        assert_eq!(e.read_resource("ab", 3), "team/linux/blobs/ab/3");
        assert_eq!(
            e.write_resource("u", "ab", 3),
            "team/linux/uploads/u/blobs/ab/3"
        );
        assert_eq!(e.to_string(), "grpc://cache.example:8980/team/linux");
    }

    #[test]
    fn tls_defaults_to_443() {
        let e = Endpoint::parse("grpcs://cache.example/main").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.origin(), "https://cache.example:443");
        assert_eq!(e.instance, "main");
    }

    #[test]
    fn ipv6() {
        let e = Endpoint::parse("grpc://[::1]:9000/x").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.origin(), "http://[::1]:9000");
        assert_eq!(e.to_string(), "grpc://[::1]:9000/x");
    }

    #[test]
    fn refusals_say_why() {
        for (url, why) in [
            ("http://h:1", "grpc://"),
            ("grpc://h", "needs a port"),
            ("grpc://h:0", "port"),
            ("grpc://h:99999", "port"),
            ("grpc://:80", "no host"),
            ("grpc://user:pw@h:1", "credentials"),
            ("grpc://h:1/a/../b", "plain path"),
            ("grpc://h:1/blobs", "reserved"),
            ("grpc://[::1:1", "unclosed"),
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn token_never_printed() {
        let e = Endpoint::parse("grpc://h:1")
            .unwrap()
            .with_token(Some(" secret\n".into()));
        assert_eq!(e.token(), Some("secret"));
        assert!(!format!("{e} {e:?}").contains("secret"));
        let e = e.with_token(Some("  ".into()));
        assert_eq!(e.token(), None);
    }
}
