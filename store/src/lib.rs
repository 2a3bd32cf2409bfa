//! hermit-store: the content-addressed store and everything that fills it.
//!
//! - [`digest`]: the `sha256:<hex>` type every other module names bytes with.
//! - [`store`]: the on-disk layout (drawn in its doc comment), the single
//!   write path (temp → fsync → rename), per-digest locks.
//!
//! Nothing in this crate prints; progress is reported through traits the
//! binary implements.

pub mod digest;
pub mod oci;
pub mod store;

pub use digest::{Digest, DigestError, Hasher};
pub use store::{Store, StoreError};
