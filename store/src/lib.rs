//! hermit-store: the content-addressed store and everything that fills it.
//!
//! - [`digest`]: the `sha256:<hex>` type every other module names bytes with.
//! - [`store`]: the on-disk layout (drawn in its doc comment), the single
//!   write path (temp → fsync → rename), per-digest and store-wide locks,
//!   adding files.
//! - [`tree`]: directories as store entries, and the tree digest.
//! - [`gc`]: gc roots, garbage collection and `verify`.
//! - [`integrity`]: checking rootfs and image entries, removing corrupt entries.
//! - [`unpack`]: archives (tar, tar.gz/xz/bz2/zst, zip) into read-only
//!   trees, refusing hostile entries; the tar extractor OCI layers reuse.
//!   write path (temp → fsync → rename), per-digest locks.
//! - [`fetch`]: store → mirrors → URLs, hash-checked while streaming, with
//!   retries, timeouts, bounded parallelism and a [`fetch::Reporter`].
//! - [`mirror`]: writing content-addressed mirror folders (`DIR/sha256/<hex>`).
//!
//! Nothing in this crate prints; progress is reported through traits the
//! binary implements.

pub mod digest;
pub mod fetch;
pub mod gc;
pub mod integrity;
pub mod mirror;
pub mod oci;
pub mod store;
pub mod tree;
pub mod unpack;

pub use digest::{Digest, DigestError, Hasher};
pub use fetch::{FetchError, FetchOptions, Fetcher, Mirror, Reporter, Url, Want};
pub use store::{Added, EntryKind, Store, StoreError};
pub use unpack::{unpack, ArchiveFormat, ExtractOptions, UnpackError, UnpackOptions};
