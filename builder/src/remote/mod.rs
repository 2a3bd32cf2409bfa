//! hermit over the Remote Execution API (REAPI): remote execution on a
//! BuildGrid-style cluster. `worker` is `hermit worker` (a Remote Workers API
//! bot), `run_action` the process it runs each action in, `exec` the client
//! side of `hermit build --remote-exec`.

pub mod action;
pub mod exec;
pub mod run_action;
pub mod worker;
