//! End-to-end tests of the real `hermit` binary. One module per area; shared
//! helpers in `common`.

mod common;
mod fixtures;
mod sandbox;
mod sandbox_escape;
