//! hermit's client for the Remote Execution API (REAPI v2), the protocol of
//! BuildGrid, Buildbarn, BuildBuddy and NativeLink.
//!
//! - [`Endpoint`]: `grpc://HOST:PORT[/INSTANCE]` and `grpcs://…` (TLS with
//!   rustls and the web PKI roots, a team CA, a client certificate for
//!   mutual TLS), plus an optional bearer token.
//! - [`Remote`]: Capabilities, the CAS (FindMissingBlobs, BatchUpdateBlobs,
//!   BatchReadBlobs), ByteStream Read/Write for big blobs (streamed, so a blob
//!   is never held in memory whole) and the ActionCache.
//!
//! Every blob read from a remote is checked against its digest before it is
//! handed out; a blob streamed to a file is only reported good once its
//! sha256 and size match, so callers write it to a staging path and move it
//! into place afterwards.
//!
//! REAPI digests are sha256 + size, the digests hermit uses everywhere.

pub mod bots;
pub mod client;
mod diagnose;
pub mod digest;
pub mod endpoint;
pub mod error;
pub mod execution;
pub mod proto;
pub mod tls;

pub use client::{Options, Remote};
pub use digest::Digest;
pub use endpoint::Endpoint;
pub use error::Error;
pub use tls::{CaBundle, ClientIdentity};

/// The REAPI v2 messages (`Action`, `Command`, `ActionResult`, …).
pub use proto::build::bazel::remote::execution::v2 as reapi;
