//! End-to-end tests of the real `hermit` binary. One module per area; shared
//! helpers in `common`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod debian;
mod image;
mod store;
mod fetch;
mod http_server;
mod output;
mod fixtures;
mod sandbox;
mod sandbox_escape;
