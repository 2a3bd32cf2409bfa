//! Where a build's time goes: with `HERMIT_TIMINGS=1` in the environment,
//! each pipeline stage of each node prints one line on stderr
//! (`hermit-timing: <spec> <stage> <µs>`), for profiling. Off, a span costs
//! one load of a cached flag.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HERMIT_TIMINGS").is_some_and(|v| v == "1"))
}

/// A stage being timed; [`Span::end`] prints it.
pub struct Span {
    start: Option<Instant>,
}

/// Starts timing a stage (a no-op unless `HERMIT_TIMINGS=1`).
pub fn start() -> Span {
    Span {
        start: enabled().then(Instant::now),
    }
}

impl Span {
    /// Prints the stage's time and starts the next one.
    pub fn lap(&mut self, spec: &Path, stage: &str) {
        if let Some(s) = self.start {
            eprintln!(
                "hermit-timing: {} {stage} {}",
                spec.display(),
                s.elapsed().as_micros()
            );
            self.start = Some(Instant::now());
        }
    }
}
