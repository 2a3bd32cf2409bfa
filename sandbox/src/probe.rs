//! `hermit doctor`'s checks: can this machine run the sandbox, and if not,
//! the exact command that fixes it. Namespace probes run in a fresh copy of
//! the current executable (hidden argument [`crate::PROBE_ARG`]), so they are
//! single-threaded like the real helper.

use std::fs;
use std::path::Path;
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{mkdir, ForkResult};

use crate::spec::SandboxSpec;
use crate::{sys, Outcome};

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// A failed required check means the sandbox cannot run.
    pub required: bool,
    pub detail: String,
    /// What to run to fix a failure.
    pub fix: Option<String>,
}

fn read_sysctl(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Runs every check, in order.
pub fn checks() -> Vec<Check> {
    let root = nix::unistd::geteuid().is_root();
    let userns_fix = if root {
        None
    } else {
        Some("sudo sysctl -w kernel.unprivileged_userns_clone=1".to_string())
    };
    let mut out = Vec::new();

    match read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") {
        None => out.push(ok(
            "kernel.unprivileged_userns_clone",
            "not present (upstream kernel: unprivileged user namespaces allowed)",
        )),
        Some(v) if v == "1" => out.push(ok("kernel.unprivileged_userns_clone", "1")),
        Some(v) => out.push(Check {
            name: "kernel.unprivileged_userns_clone",
            ok: root,
            required: !root,
            detail: format!("{v}: unprivileged users may not create user namespaces"),
            fix: Some(
                "sudo sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/)"
                    .into(),
            ),
        }),
    }
    match read_sysctl("/proc/sys/user/max_user_namespaces") {
        Some(v) if v == "0" => out.push(Check {
            name: "user.max_user_namespaces",
            ok: false,
            required: true,
            detail: "0: user namespaces are disabled".into(),
            fix: Some("sudo sysctl -w user.max_user_namespaces=15000".into()),
        }),
        Some(v) => out.push(ok("user.max_user_namespaces", &v)),
        None => out.push(Check {
            name: "user.max_user_namespaces",
            ok: false,
            required: true,
            detail: "missing: the kernel has no user namespaces (CONFIG_USER_NS)".into(),
            fix: Some("use a kernel built with CONFIG_USER_NS=y".into()),
        }),
    }
    match read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        Some(v) if v == "1" => out.push(Check {
            name: "kernel.apparmor_restrict_unprivileged_userns",
            ok: root,
            required: !root,
            detail: "1: AppArmor takes capabilities away in unprivileged user namespaces".into(),
            fix: Some(
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile granting `userns,` to hermit)"
                    .into(),
            ),
        }),
        Some(v) => out.push(ok("kernel.apparmor_restrict_unprivileged_userns", &v)),
        None => out.push(ok(
            "kernel.apparmor_restrict_unprivileged_userns",
            "not present",
        )),
    }

    let probes: [(&'static str, &str, bool, Option<String>); 5] = [
        ("user namespace", "userns", true, userns_fix.clone()),
        ("mount namespace + tmpfs", "mount", true, userns_fix.clone()),
        (
            "/proc in a new pid namespace",
            "proc",
            true,
            Some("hermit needs a fully visible /proc: run it outside containers that mask /proc paths (or with those masks removed)".into()),
        ),
        (
            "network namespace + loopback",
            "net",
            true,
            userns_fix.clone(),
        ),
        ("overlayfs in a user namespace", "overlay", false, None),
    ];
    for (name, probe, required, fix) in probes {
        let r = run_probe(probe);
        out.push(Check {
            name,
            ok: r.is_ok(),
            required,
            detail: r.unwrap_or_else(|e| e),
            fix,
        });
    }

    let seccomp = nix::sys::prctl::get_no_new_privs().is_ok()
        && read_sysctl("/proc/sys/kernel/seccomp/actions_avail")
            .is_some_and(|a| a.split_whitespace().any(|x| x == "errno"));
    out.push(Check {
        name: "seccomp filters",
        ok: seccomp,
        required: true,
        detail: if seccomp {
            "available (errno action)".into()
        } else {
            "/proc/sys/kernel/seccomp/actions_avail lacks `errno`".into()
        },
        fix: Some("use a kernel built with CONFIG_SECCOMP_FILTER=y".into()),
    });

    out.push(cgroups());
    out.push(memory_cgroups());
    let newuidmap = ["/usr/bin/newuidmap", "/bin/newuidmap"]
        .iter()
        .find(|p| Path::new(p).exists());
    out.push(ok(
        "newuidmap",
        &match newuidmap {
            Some(p) => format!(
                "{p} present (builds do not need it: hermit maps a single uid itself; \
                 `hermit check --vary archive` uses it to vary the sources' owner)"
            ),
            None => "absent (builds do not need it: hermit maps a single uid itself; \
                     `hermit check --vary archive` needs it, from the uidmap package, to vary \
                     the sources' owner as an ordinary user)"
                .into(),
        },
    ));

    let e2e = end_to_end();
    out.push(Check {
        name: "sandbox end to end (/bin/true over the host's root)",
        ok: e2e.is_ok(),
        required: true,
        detail: e2e.unwrap_or_else(|e| e),
        fix: None,
    });
    out
}

fn ok(name: &'static str, detail: &str) -> Check {
    Check {
        name,
        ok: true,
        required: false,
        detail: detail.to_string(),
        fix: None,
    }
}

fn cgroups() -> Check {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = Path::new("/sys/fs/cgroup/pids").is_dir();
    let version = match (v1, v2) {
        (_, true) => "cgroup v2",
        (true, _) => "cgroup v1",
        _ => "no cgroup pids controller",
    };
    let detail = match crate::cgroup::create(16) {
        Ok(cg) => format!(
            "{version}: per-sandbox pids cgroups under {} (used {}); RLIMIT_NPROC {}",
            cg.path.parent().unwrap_or(Path::new("/")).display(),
            if !crate::cgroup::nproc_is_per_userns() {
                "always"
            } else if nix::unistd::geteuid().is_root() {
                "for every sandbox: RLIMIT_NPROC does not bind host root"
            } else {
                "with --pids-cgroup"
            },
            if crate::cgroup::nproc_is_per_userns() {
                "counts per user namespace (Linux ≥ 5.14)"
            } else {
                "counts all of the caller's processes (Linux < 5.14)"
            },
        ),
        Err(why) => {
            format!("{version}: {why}; fork bombs are bounded by RLIMIT_NPROC alone")
        }
    };
    ok("cgroups (pids)", &detail)
}

fn end_to_end() -> Result<String, String> {
    // The probe's own sandbox: the host's root, running /bin/true. Its
    // values are the probe's, not a build profile's.
    let spec = SandboxSpec {
        root: "/".into(),
        mounts: vec![],
        env: vec![],
        cwd: "/".into(),
        uid: 1000,
        gid: 1000,
        user: "probe".into(),
        group: "probe".into(),
        home: "/nonexistent".into(),
        hostname: "localhost".into(),
        domainname: "(none)".into(),
        shm_size: 1 << 20,
        command: vec!["/bin/true".into()],
        timeout: Some(std::time::Duration::from_secs(30)),
        limits: crate::Limits {
            max_processes: Some(16),
            max_open_files: Some(64),
            max_core_size: 0,
            max_file_size: None,
            pids_cgroup: false,
            max_memory: None,
            max_data: None,
        },
        aslr: false,
        umask: 0o022,
        cpus: None,
        linux32: false,
        uname: None,
        clock_offset: None,
    };
    match crate::run(&spec) {
        Ok(Outcome::Exited(0)) => Ok("ran".into()),
        Ok(Outcome::SetupFailed(f)) => Err(f.to_string()),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn run_probe(name: &str) -> Result<String, String> {
    let out = Command::new("/proc/self/exe")
        .arg(crate::PROBE_ARG)
        .arg(name)
        .output()
        .map_err(|e| format!("starting the probe: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(if text.is_empty() {
            "works".into()
        } else {
            text
        })
    } else {
        Err(if text.is_empty() {
            out.status.to_string()
        } else {
            text
        })
    }
}

/// Runs probe `args[0]` in this (fresh, single-threaded) process; prints
/// what failed on stdout.
pub(crate) fn probe_main(args: &[std::ffi::OsString]) -> u8 {
    let name = args.first().and_then(|a| a.to_str()).unwrap_or("");
    match probe(name) {
        Ok(()) => 0,
        Err((call, e)) => {
            println!("{call}: {}", std::io::Error::from(e));
            1
        }
    }
}

type P = Result<(), (&'static str, Errno)>;

fn userns(extra: CloneFlags) -> P {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    unshare(CloneFlags::CLONE_NEWUSER | extra).map_err(|e| ("unshare", e))?;
    let io = |call| move |e: std::io::Error| (call, Errno::from_raw(e.raw_os_error().unwrap_or(5)));
    fs::write("/proc/self/setgroups", "deny").map_err(io("write /proc/self/setgroups"))?;
    fs::write("/proc/self/uid_map", format!("1000 {uid} 1")).map_err(io("write uid_map"))?;
    fs::write("/proc/self/gid_map", format!("1000 {gid} 1")).map_err(io("write gid_map"))?;
    Ok(())
}

fn private_tmp() -> P {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| ("mount --make-rprivate /", e))?;
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| ("mount tmpfs", e))
}

fn probe(name: &str) -> P {
    match name {
        "userns" => userns(CloneFlags::empty()),
        "mount" => {
            userns(CloneFlags::CLONE_NEWNS)?;
            private_tmp()
        }
        "net" => {
            userns(CloneFlags::CLONE_NEWNET)?;
            sys::loopback_up().map_err(|e| ("ioctl SIOCSIFFLAGS lo", e))
        }
        "overlay" => {
            userns(CloneFlags::CLONE_NEWNS)?;
            private_tmp()?;
            for d in ["l", "u", "w", "m"] {
                mkdir(&Path::new("/tmp").join(d), Mode::from_bits_truncate(0o755))
                    .map_err(|e| ("mkdir", e))?;
            }
            mount(
                Some("overlay"),
                "/tmp/m",
                Some("overlay"),
                MsFlags::empty(),
                Some("lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w"),
            )
            .map_err(|e| ("mount overlay", e))
        }
        "proc" => {
            userns(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)?;
            match sys::fork_single_threaded().map_err(|e| ("fork", e))? {
                ForkResult::Child => {
                    let r = private_tmp().and_then(|()| {
                        mkdir("/tmp/p", Mode::from_bits_truncate(0o755))
                            .map_err(|e| ("mkdir", e))?;
                        mount(
                            Some("proc"),
                            "/tmp/p",
                            Some("proc"),
                            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                            None::<&str>,
                        )
                        .map_err(|e| ("mount proc", e))
                    });
                    if let Err((call, e)) = r {
                        println!("{call}: {}", std::io::Error::from(e));
                        sys::exit_now(1);
                    }
                    sys::exit_now(0)
                }
                ForkResult::Parent { child } => match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                    Ok(_) => Err(("mount proc", Errno::EPERM)),
                    Err(e) => Err(("waitpid", e)),
                },
            }
        }
        _ => Err(("unknown probe", Errno::EINVAL)),
    }
}

/// Whether builds get a memory cgroup here, or RLIMIT_DATA per process.
fn memory_cgroups() -> Check {
    let detail = match crate::cgroup::create_memory(64 << 20, None) {
        Ok(cg) => format!(
            "cgroup v{}: each build's memory limit bounds the whole build",
            cg.version()
        ),
        Err(why) => format!(
            "{why}: each build's memory limit is RLIMIT_DATA per process (as root, or with the memory controller delegated, it bounds the whole build)"
        ),
    };
    ok("cgroups (memory)", &detail)
}
