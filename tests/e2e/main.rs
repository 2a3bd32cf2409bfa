//! End-to-end tests of the real `hermit` binary. One module per area; shared
//! helpers in `common`.

mod common;
mod fetch;
mod http_server;
