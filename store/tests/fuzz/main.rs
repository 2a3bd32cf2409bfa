//! Property and fuzz tests of everything in hermit-store that reads
//! untrusted bytes: the archive extractor, OCI image layouts and archives,
//! digests and image references. See docs/fuzzing.md.
//!
//! `cargo test -p hermit-store --test fuzz` runs a bounded number of cases
//! per target; `HERMIT_FUZZ_CASES=N` raises it (scripts/fuzz.sh does).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod archives;
mod common;
mod digest;
mod oci;
mod unpack;
