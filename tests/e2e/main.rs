//! End-to-end tests of the real `hermit` binary. One module per area; shared
//! helpers in `common`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounds;
mod build;
mod bundle;
mod cache_hits;
mod check;
mod common;
mod debian;
mod debrestore;
mod debreuse;
mod environment;
mod fetch;
mod fixtures;
mod fuzz_unpack;
mod graph;
mod graph_upstream;
mod hello;
mod http_server;
mod image;
mod install;
mod limits;

mod output;
mod record_trust;
mod rootless;
mod sandbox;
mod sandbox_escape;
mod sandbox_holes;
mod shell;
mod store;
mod upstream;
mod verify;
