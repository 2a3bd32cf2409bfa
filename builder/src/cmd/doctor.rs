//! `hermit doctor`: can this machine run hermit's sandbox? One line per
//! check, and for each failure the exact command that fixes it.

use std::process::ExitCode;

use clap::Args;

use crate::exit::{Exit, SANDBOX_SETUP};

#[derive(Args)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = hermit_sandbox::probe::checks();
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut failed = Vec::new();
    for c in &checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("{mark} {:width$}  {}", c.name, c.detail);
        if !c.ok {
            if let Some(fix) = &c.fix {
                println!("     {:width$}  fix: {fix}", "");
            }
            if c.required {
                failed.push(c.name);
            }
        }
    }
    if failed.is_empty() {
        println!("hermit's sandbox works on this machine");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Exit::with_code(
            SANDBOX_SETUP,
            format!("required checks failed: {}", failed.join(", ")),
        )
        .into())
    }
}
