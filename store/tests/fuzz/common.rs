//! What every fuzz target shares: case counts, execution statistics and
//! byte mutations.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Runs `test` over `strategy` as the fuzz target `target`: `default`
/// cases, or `HERMIT_FUZZ_CASES`. Failures are saved in
/// `proptest-regressions/` beside the test source (`source`, from `file!()`)
/// and replayed first on every run. With `HERMIT_FUZZ_STATS=FILE`, appends
/// `target executions failures` to FILE.
pub fn run<S: Strategy>(
    target: &str,
    source: &'static str,
    default: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("HERMIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let config = Config {
        cases,
        max_shrink_iters: 4096,
        source_file: Some(source),
        ..Config::default()
    };
    let executions = AtomicU64::new(0);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |v| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    if let Some(path) = std::env::var_os("HERMIT_FUZZ_STATS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let failed = u32::from(result.is_err());
            let _ = writeln!(
                f,
                "{target} {} {failed}",
                executions.load(Ordering::Relaxed)
            );
        }
    }
    if let Err(e) = result {
        panic!("fuzz target {target}: {e}");
    }
}

/// One blind change to a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Set the byte at (index mod len) to the value.
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Cut the input at (index mod len).
    Truncate(usize),
    /// Remove `n` bytes at (index mod len).
    Delete(usize, usize),
    /// Insert bytes at (index mod len).
    Insert(usize, Vec<u8>),
    /// Copy `n` bytes from one place over another.
    Copy(usize, usize, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0u8),
        Just(0xff),
        Just(b'/'),
        Just(b'.'),
        Just(b'"'),
        Just(b'0'),
        Just(b'7'),
        Just(b' '),
        Just(b'\n'),
        any::<u8>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<usize>(), any::<usize>(), 1usize..600)
            .prop_map(|(a, b, n)| Mutation::Copy(a, b, n)),
    ]
}

pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..4)
}

/// Applies mutations in order.
pub fn mutate(mut data: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = data.len();
        if len == 0 {
            if let Mutation::Insert(_, v) = m {
                data.extend_from_slice(v);
            }
            continue;
        }
        match m {
            Mutation::Set(i, b) => data[i % len] = *b,
            Mutation::Flip(i, b) => data[i % len] ^= 1 << b,
            Mutation::Truncate(i) => data.truncate(i % len),
            Mutation::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(len);
                data.drain(i..end);
            }
            Mutation::Insert(i, v) => {
                let i = i % len;
                data.splice(i..i, v.iter().copied());
            }
            Mutation::Copy(a, b, n) => {
                let (a, b) = (a % len, b % len);
                let n = (*n).min(len - a).min(len - b);
                let chunk = data[a..a + n].to_vec();
                data[b..b + n].copy_from_slice(&chunk);
            }
        }
    }
    data
}
