//! hermit over the Remote Execution API (REAPI, see docs/remote.md): a
//! shared cache (`cache`, `--remote`) and, built on the same mapping of a
//! build to an action (`action`), remote execution: `worker` is `hermit
//! worker` (a Remote Workers API bot), `run_action` the process it runs each
//! action in, `exec` the client side of `hermit build --remote-exec`.

pub mod action;
pub mod cache;
pub mod client;
pub mod exec;
pub mod run_action;
pub mod worker;
