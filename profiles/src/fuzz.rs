//! Property and fuzz tests of the profile parser and its policies (see
//! docs/fuzzing.md): every released profile round-trips; a damaged one
//! either parses to something that round-trips or is refused naming the
//! profile; the environment and job policies hold for any spec input.
#![allow(clippy::unwrap_used)] // tests may unwrap

use proptest::prelude::*;

use crate::{EnvInputs, Profile, RESERVED_ENV};

#[path = "../../store/tests/fuzz/common.rs"]
mod common;

use common::{mutate, mutations, run};

fn check_text(name: &str, text: &str) -> Result<(), TestCaseError> {
    match Profile::parse(name, text) {
        Ok(p) => {
            let again = toml::to_string(&p).unwrap();
            prop_assert_eq!(Profile::parse(name, &again).unwrap(), p.clone());
            prop_assert_eq!(p.to_canonical_json(), p.to_canonical_json());
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains(&format!("{name:?}")), "{}", msg);
        }
    }
    Ok(())
}

#[test]
fn fuzz_profile() {
    let strategy = (
        prop::sample::select(crate::names()),
        mutations(),
        any::<String>(),
    );
    run("profile", file!(), 256, strategy, |(name, ms, junk)| {
        let text = crate::text(name).unwrap();
        let p = Profile::parse(name, text).unwrap();
        prop_assert_eq!(&p, &Profile::get(name).unwrap());
        let again = toml::to_string(&p).unwrap();
        prop_assert_eq!(Profile::parse(name, &again).unwrap(), p);
        if let Ok(t) = String::from_utf8(mutate(text.as_bytes().to_vec(), &ms)) {
            check_text(name, &t)?;
        }
        check_text(name, &junk)?;
        Ok(())
    });
}

#[test]
fn fuzz_profile_policies() {
    let strategy = (
        prop::collection::btree_map(
            prop_oneof![
                "[A-Za-z_][A-Za-z0-9_]{0,6}",
                prop::sample::select(RESERVED_ENV.to_vec()).prop_map(str::to_string),
                Just("HOME".to_string()),
            ],
            ".{0,8}",
            0..5,
        ),
        prop::option::of(".{0,12}"),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u32>()),
        any::<u32>(),
    );
    run(
        "profile_policies",
        file!(),
        256,
        strategy,
        |(extra, path, sde, jobs, cpus)| {
            let p = Profile::default_profile().unwrap();
            let j = p.jobs(jobs, cpus);
            prop_assert!(j >= 1 && j <= p.jobs.max.max(1));
            let inputs = EnvInputs {
                image_path: path.as_deref(),
                source_date_epoch: sde,
                jobs: j,
                extra: &extra,
            };
            match p.environment(&inputs) {
                Ok(env) => {
                    for (k, v) in &extra {
                        prop_assert_eq!(env.get(k), Some(v));
                    }
                    for k in RESERVED_ENV {
                        prop_assert!(env.contains_key(*k), "{} missing", k);
                    }
                    for (k, v) in &p.env.fixed {
                        prop_assert_eq!(env.get(k), Some(v));
                    }
                    let want = p.env.fixed.len() + extra.len() + RESERVED_ENV.len();
                    prop_assert_eq!(env.len(), want);
                    prop_assert_eq!(&env["HERMIT_JOBS"], &j.to_string());
                }
                Err(k) => {
                    prop_assert!(extra.contains_key(&k));
                    prop_assert!(
                        RESERVED_ENV.contains(&k.as_str()) || p.env.fixed.contains_key(&k)
                    );
                }
            }
            Ok(())
        },
    );
}
