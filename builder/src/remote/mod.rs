//! hermit over the Remote Execution API (REAPI, see docs/remote.md): a
//! shared cache (`cache`, `--remote`) and, built on the same mapping of a
//! build to an action (`action`), remote execution.

pub mod action;
pub mod cache;
pub mod client;
