//! The build environment, from the profile to the sandbox, in one place.
//!
//! A build's environment is described once: the profile
//! (`profiles/defs/*.toml`) states it; [`crate::record::Environment`] is
//! what the profile gives one build (with the spec's `[env]` and limits) and
//! what its record keeps; [`sandbox_spec`] turns the two into the
//! [`SandboxSpec`] the sandbox runs — which has no values of its own. So
//! every value a build can observe (`df /tmp /dev/shm`, `ulimit -n -c -u`,
//! `domainname`, `hostname`, `id`, `umask`, the environment, descriptors 3
//! and 4) comes from the profile and the record, and a record rebuilds under
//! exactly the environment it was made in.
//!
//! Profile v1 left a few values unstated; v1 builds got the sandbox's then
//! values, which [`hermit_profiles::Limits::shm_mib`] and its siblings supply
//! for v1 (v2 on states them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hermit_profiles::Profile;
use hermit_sandbox::{Limits, Mount, PassFd, SandboxSpec};

use crate::jobserver::{Jobserver, JobserverError, Slot};
use crate::record::Environment;

/// The sandbox for one build: `env` (the record's environment) under
/// `profile`, over `rootfs`, running `command`, with `mounts` (`/build`,
/// `/out`, `/sources/…`, `/inputs/…`) after the profile's `/tmp`.
pub fn sandbox_spec(
    env: &Environment,
    profile: &Profile,
    rootfs: &Path,
    command: Vec<String>,
    mounts: Vec<Mount>,
) -> SandboxSpec {
    let pl = &profile.limits;
    let mib = |m: u64| m.saturating_mul(1 << 20);
    let mut all = vec![Mount::Tmpfs {
        dst: PathBuf::from(&env.tmp_path),
        size: Some(mib(env.limits.tmp_size_mib)),
    }];
    all.extend(mounts);
    SandboxSpec {
        root: rootfs.to_path_buf(),
        mounts: all,
        env: env
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: PathBuf::from(&env.build_path),
        uid: env.uid,
        gid: env.gid,
        user: env.user.clone(),
        group: env.group.clone(),
        home: PathBuf::from(&env.home),
        hostname: env.hostname.clone(),
        domainname: env.domainname.clone(),
        shm_size: mib(pl.shm_mib()),
        command,
        timeout: Some(Duration::from_secs(env.limits.timeout_secs)),
        limits: Limits {
            max_processes: Some(env.limits.max_pids.min(u64::from(u32::MAX)) as u32),
            max_open_files: Some(pl.open_files()),
            max_core_size: if pl.cores() { u64::MAX } else { 0 },
            // One file can never be larger than all of /build and /out
            // together.
            max_file_size: env.limits.disk_mib.map(mib),
            pids_cgroup: false,
            max_memory: env.limits.memory_mib.map(mib),
            max_data: None,
        },
        aslr: env.aslr,
        umask: profile.system.umask,
        // What hermit cannot normalise: the CPUs and machine name the host
        // has (`hermit check` varies both).
        cpus: None,
        linux32: false,
        uname: None,
        clock_offset: None,
    }
}

/// The `hermit sandbox` command's environment: the default profile's user,
/// names, limits and variables (PATH: the profile's default), over `root`.
pub fn interactive_spec(
    profile: &Profile,
    root: &Path,
    command: Vec<String>,
) -> anyhow::Result<SandboxSpec> {
    let inputs = hermit_profiles::EnvInputs {
        image_path: None,
        source_date_epoch: None,
        jobs: 1,
        extra: &Default::default(),
    };
    let env = Environment::from_profile(profile, &inputs, &Default::default())?;
    let mut spec = sandbox_spec(&env, profile, root, command, vec![]);
    // Not a build: no /build, no $out, no jobserver, no time limit.
    spec.cwd = PathBuf::from("/");
    spec.timeout = None;
    spec.env
        .retain(|(k, _)| !matches!(k.as_str(), "out" | "HERMIT_JOBS" | "MAKEFLAGS"));
    Ok(spec)
}

/// What a build holds while its sandbox runs: its jobserver slot and the
/// descriptors to hand over, under a profile with a jobserver (v3 on).
pub struct JobserverUse {
    pub pass: Vec<PassFd>,
    /// Given back when dropped: drop it as soon as the sandbox has ended.
    pub slot: Option<Slot>,
}

/// Takes a slot of `shared` (or, with none, of a jobserver of the build's
/// own with `env.jobs` slots — a rebuild, a build outside any scheduler)
/// for a build under `profile`; waits while every slot is taken. With
/// `held`, the caller already holds the build's slot of `shared` (the graph
/// scheduler takes it when the build starts, before the makes of builds
/// already running can take every token) and none is taken here. Nothing
/// for a profile without a jobserver.
pub fn enter_jobserver(
    profile: &Profile,
    env: &Environment,
    shared: Option<&Arc<Jobserver>>,
    held: bool,
) -> Result<JobserverUse, JobserverError> {
    let Some(numbers) = profile.jobs.jobserver_fds else {
        return Ok(JobserverUse {
            pass: vec![],
            slot: None,
        });
    };
    let js = match shared {
        Some(js) => js.clone(),
        None => Jobserver::new(env.jobs)?,
    };
    let slot = if held && shared.is_some() {
        None
    } else {
        Some(js.acquire()?)
    };
    Ok(JobserverUse {
        pass: js.pass_fds(numbers)?,
        slot,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::SpecLimits;
    use hermit_profiles::EnvInputs;

    fn env(profile: &Profile) -> Environment {
        Environment::from_profile(
            profile,
            &EnvInputs {
                image_path: None,
                source_date_epoch: None,
                jobs: 2,
                extra: &Default::default(),
            },
            &SpecLimits::default(),
        )
        .unwrap()
    }

    /// What v1 builds got from the sandbox before the sandbox lost its
    /// defaults, written out: v1 records must rebuild under exactly this.
    #[test]
    fn profile_v1_gives_what_v1_builds_always_got() {
        let p = Profile::get("v1").unwrap();
        let s = sandbox_spec(
            &env(&p),
            &p,
            Path::new("/r"),
            vec!["/bin/sh".into()],
            vec![],
        );
        assert_eq!(
            s.mounts,
            [Mount::Tmpfs {
                dst: "/tmp".into(),
                size: Some(4096 << 20)
            }]
        );
        assert_eq!(s.shm_size, 256 << 20);
        assert_eq!(s.domainname, "(none)");
        assert_eq!(s.hostname, "localhost");
        assert_eq!(s.limits.max_processes, Some(4096));
        assert_eq!(s.limits.max_open_files, Some(4096));
        assert_eq!(s.limits.max_core_size, 0);
        assert_eq!(s.limits.max_memory, None);
        assert_eq!(s.limits.max_file_size, None);
        assert_eq!(s.umask, 0o022);
        assert!(!s.aslr);
        // The host's CPUs and machine name: only `hermit check` varies them.
        assert_eq!((s.cpus, s.linux32), (None, false));
        assert_eq!(s.timeout, Some(Duration::from_secs(21600)));
        assert_eq!((s.uid, s.gid, s.user.as_str()), (1000, 1000, "builder"));
        assert_eq!(s.home, Path::new("/homeless-shelter"));
        assert_eq!(s.cwd, Path::new("/build"));
        s.validate().unwrap();
    }

    /// `-j N` changes HERMIT_JOBS, never MAKEFLAGS, and neither changes the
    /// build key under v3.
    #[test]
    fn the_jobserver_keeps_the_build_key() {
        let a = crate::record::tests::sample_with("v3");
        let p = Profile::get("v3").unwrap();
        let mut b = a.clone();
        let e = Environment::from_profile(
            &p,
            &EnvInputs {
                image_path: Some("/usr/local/bin:/usr/bin:/bin"),
                source_date_epoch: None,
                jobs: 17,
                extra: &a
                    .environment
                    .env
                    .iter()
                    .filter(|(k, _)| *k == "CFLAGS")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            &SpecLimits::default(),
        )
        .unwrap();
        assert_eq!(e.env["MAKEFLAGS"], a.environment.env["MAKEFLAGS"]);
        assert_ne!(e.env["HERMIT_JOBS"], a.environment.env["HERMIT_JOBS"]);
        b.environment = e;
        assert_eq!(a.key_inputs().build_key(), b.key_inputs().build_key());
    }

    #[test]
    fn every_profile_states_what_the_sandbox_gets() {
        for name in hermit_profiles::names() {
            let p = Profile::get(name).unwrap();
            let e = env(&p);
            let s = sandbox_spec(&e, &p, Path::new("/r"), vec!["/bin/sh".into()], vec![]);
            s.validate().unwrap();
            let want_env: Vec<_> = e.env.clone().into_iter().collect();
            assert_eq!(s.env, want_env, "{name}");
            assert_eq!(s.domainname, p.system.domainname, "{name}");
            assert_eq!(s.shm_size, p.limits.shm_mib() << 20, "{name}");
            assert_eq!(
                s.limits.max_open_files,
                Some(p.limits.open_files()),
                "{name}"
            );
            assert_eq!(
                s.limits.max_memory,
                p.limits.memory_mib.map(|m| m << 20),
                "{name}"
            );
            if name != "v1" {
                assert_eq!(Some(s.shm_size >> 20), p.limits.shm_size_mib);
            }
        }
    }
}
