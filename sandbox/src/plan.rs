//! The recipe: a [`SandboxSpec`] becomes an ordered list of filesystem
//! operations ([`Op`]) that init carries out (`setup.rs`) one by one inside
//! the new mount namespace. Planning is pure — it reads no file — so the list
//! can be unit-tested and recorded.
//!
//! Destinations are paths inside the sandbox. Sources of binds are host paths.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{Mount, SandboxSpec, SpecError};
use crate::views::View;

/// Host device nodes bound into the sandbox's `/dev`.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Parts of /proc covered read-only: sysctls, the magic SysRq key, IRQ
/// affinities, bus devices, filesystem knobs (as runc and podman do).
pub const PROC_COVERED: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Parts of /proc masked where the kernel has them (the masked paths of
/// runc, youki and podman, and the root-only files a build run by root
/// could otherwise read): a directory gets an empty read-only tmpfs, a file
/// `/dev/null`. They hold host-global state — kernel memory, other users'
/// keys, kernel page and slab maps, timers, the kernel log — and nothing a
/// build needs.
pub const PROC_MASKED: [(&str, MaskKind); 18] = [
    ("acpi", MaskKind::Dir),
    ("asound", MaskKind::Dir),
    ("kcore", MaskKind::File),
    ("keys", MaskKind::File),
    ("key-users", MaskKind::File),
    ("latency_stats", MaskKind::File),
    ("timer_list", MaskKind::File),
    ("timer_stats", MaskKind::File),
    ("sched_debug", MaskKind::File),
    ("scsi", MaskKind::Dir),
    ("kpageflags", MaskKind::File),
    ("kpagecount", MaskKind::File),
    ("kpagecgroup", MaskKind::File),
    ("slabinfo", MaskKind::File),
    ("pagetypeinfo", MaskKind::File),
    ("vmallocinfo", MaskKind::File),
    ("tty/driver", MaskKind::Dir),
    ("kmsg", MaskKind::File),
];
/// The boot id every sandbox shows (the host's changes at every boot).
pub const BOOT_ID: &str = "00000000-0000-4000-8000-000000000000\n";
/// Size of the `/dev` tmpfs (it holds only mount points and symlinks).
pub const DEV_SIZE: u64 = 64 << 10;

/// What a masked /proc entry is, on the kernels that have it (so no
/// `stat` is needed to choose the mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskKind {
    File,
    Dir,
}

/// One setup step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Show the host directory `src` as `/`, read-only, `nosuid,nodev`,
    /// submounts included. (Done as a tmpfs skeleton whose entries are binds
    /// of the image, so mount points missing from the image can be created.)
    RootImage {
        src: PathBuf,
    },
    /// A fresh procfs of the sandbox's own pid namespace.
    Proc {
        dst: PathBuf,
    },
    /// A tmpfs, `nosuid,nodev`.
    Tmpfs {
        dst: PathBuf,
        size: Option<u64>,
        mode: u32,
    },
    /// Bind the host's device node `/dev/<name>`.
    DevNode {
        name: String,
    },
    /// A devpts instance of the sandbox's own (`newinstance,ptmxmode=0666`).
    Devpts {
        dst: PathBuf,
    },
    Symlink {
        target: PathBuf,
        dst: PathBuf,
    },
    /// Bind a host path, `nosuid,nodev`, read-only unless `writable`.
    Bind {
        src: PathBuf,
        dst: PathBuf,
        writable: bool,
    },
    /// A writable overlayfs of the host directories `lower` (read-only) and
    /// `upper` (receives the changes), `nosuid,nodev`.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        dst: PathBuf,
    },
    /// A synthesised file, mounted read-only over (or in place of) the image's.
    File {
        dst: PathBuf,
        contents: String,
        mode: u32,
    },
    /// Make sure nothing exists at `dst` (an image's file is hidden).
    Hide {
        dst: PathBuf,
    },
    /// Bind `dst` onto itself read-only, if it exists (parts of /proc that
    /// are not namespaced: when the caller is root, the build's uid is host
    /// root — without capabilities, but owner of those files).
    CoverReadOnly {
        dst: PathBuf,
    },
    /// Hide a host-global /proc entry, if the kernel has it: an empty
    /// read-only tmpfs over a directory; over a file, `/dev/null`, or
    /// `contents` as a read-only file when given.
    Mask {
        dst: PathBuf,
        kind: MaskKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contents: Option<String>,
    },
    /// Show `dst` (a file of /proc, or of a bound `/sys`), if it exists,
    /// as a read-only file made at setup from its current text and `view`
    /// (see [`crate::views`]).
    View {
        dst: PathBuf,
        view: View,
    },
    /// Make the mount at `dst` read-only (it was writable while being filled).
    RemountReadOnly {
        dst: PathBuf,
    },
    /// Make every skeleton directory built over the root image read-only:
    /// after this, `/` is read-only everywhere except the writable mounts.
    SealRoot,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::RootImage { src } => write!(f, "bind root image {} read-only as /", src.display()),
            Op::Proc { dst } => write!(f, "mount proc on {}", dst.display()),
            Op::Tmpfs { dst, size, .. } => match size {
                Some(s) => write!(f, "mount tmpfs (size={s}) on {}", dst.display()),
                None => write!(f, "mount tmpfs on {}", dst.display()),
            },
            Op::DevNode { name } => write!(f, "bind device /dev/{name}"),
            Op::Devpts { dst } => write!(f, "mount devpts on {}", dst.display()),
            Op::Symlink { target, dst } => {
                write!(f, "symlink {} -> {}", dst.display(), target.display())
            }
            Op::Bind { src, dst, writable } => write!(
                f,
                "bind {} on {} ({})",
                src.display(),
                dst.display(),
                if *writable { "read-write" } else { "read-only" }
            ),
            Op::Overlay {
                lower, upper, dst, ..
            } => write!(
                f,
                "mount overlay of {} under {} on {}",
                lower.display(),
                upper.display(),
                dst.display()
            ),
            Op::File { dst, .. } => write!(f, "write {}", dst.display()),
            Op::Hide { dst } => write!(f, "hide {}", dst.display()),
            Op::RemountReadOnly { dst } => write!(f, "remount {} read-only", dst.display()),
            Op::CoverReadOnly { dst } => write!(f, "cover {} read-only", dst.display()),
            Op::Mask { dst, contents, .. } => match contents {
                None => write!(f, "mask {}", dst.display()),
                Some(_) => write!(f, "mask {} with a fixed file", dst.display()),
            },
            Op::View { dst, view } => write!(f, "show {} {}", dst.display(), view.what()),
            Op::SealRoot => f.write_str("make the root read-only"),
        }
    }
}

/// The ordered setup steps for `spec`: root image, /proc, /dev, the spec's
/// mounts in order, the synthesised /etc files, hidden files, then the root
/// sealed read-only.
pub fn plan(spec: &SandboxSpec) -> Result<Vec<Op>, SpecError> {
    spec.validate()?;
    let p = PathBuf::from;
    let mut ops = vec![
        Op::RootImage {
            src: spec.root.clone(),
        },
        Op::Proc { dst: p("/proc") },
    ];
    // As bubblewrap does: host-global corners of /proc.
    ops.extend(PROC_COVERED.iter().map(|d| Op::CoverReadOnly {
        dst: Path::new("/proc").join(d),
    }));
    ops.extend([Op::Tmpfs {
        dst: p("/dev"),
        size: Some(DEV_SIZE),
        mode: 0o755,
    }]);
    ops.extend(DEV_NODES.iter().map(|n| Op::DevNode {
        name: n.to_string(),
    }));
    ops.push(Op::Devpts { dst: p("/dev/pts") });
    ops.push(Op::Symlink {
        target: p("pts/ptmx"),
        dst: p("/dev/ptmx"),
    });
    ops.push(Op::Tmpfs {
        dst: p("/dev/shm"),
        size: Some(spec.shm_size),
        mode: 0o1777,
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::Symlink {
            target: p(target),
            dst: Path::new("/dev").join(name),
        });
    }
    ops.push(Op::RemountReadOnly { dst: p("/dev") });
    // After /dev: a masked file is a bind of the sandbox's read-only
    // /dev/null, which makes the bind read-only in the same call.
    ops.extend(PROC_MASKED.iter().map(|(d, kind)| Op::Mask {
        dst: Path::new("/proc").join(d),
        kind: *kind,
        contents: None,
    }));
    ops.push(Op::Mask {
        dst: p("/proc/sys/kernel/random/boot_id"),
        kind: MaskKind::File,
        contents: Some(BOOT_ID.to_string()),
    });
    for m in &spec.mounts {
        ops.push(match m {
            Mount::Bind { src, dst, writable } => Op::Bind {
                src: src.clone(),
                dst: dst.clone(),
                writable: *writable,
            },
            Mount::Tmpfs { dst, size } => Op::Tmpfs {
                dst: dst.clone(),
                size: *size,
                mode: 0o1777,
            },
            Mount::Overlay {
                lower,
                upper,
                work,
                dst,
            } => Op::Overlay {
                lower: lower.clone(),
                upper: upper.clone(),
                work: work.clone(),
                dst: dst.clone(),
            },
        });
    }
    ops.extend(views(spec));
    let covered = |f: &str| {
        spec.mounts
            .iter()
            .any(|m| Path::new(f).starts_with(m.dst()))
    };
    for (dst, contents) in [
        ("/etc/passwd", passwd(spec)),
        ("/etc/group", group(spec)),
        ("/etc/hosts", HOSTS.to_string()),
    ] {
        // A mount the caller asked for at or above the file wins.
        if !covered(dst) {
            ops.push(Op::File {
                dst: p(dst),
                contents,
                mode: 0o644,
            });
        }
    }
    for dst in [Path::new("/etc/resolv.conf"), &spec.home] {
        if !covered(&dst.to_string_lossy()) {
            ops.push(Op::Hide {
                dst: dst.to_path_buf(),
            });
        }
    }
    ops.push(Op::SealRoot);
    Ok(ops)
}

/// The kernel's own files of what `uname` and `cpus` vary, shown with the
/// varied values (only when a spec varies them: a build's plan has none).
/// After the spec's mounts, so that a bound `/sys` is covered too.
fn views(spec: &SandboxSpec) -> Vec<Op> {
    let p = PathBuf::from;
    let mut ops = Vec::new();
    if let Some(u) = &spec.uname {
        for (f, value) in [("osrelease", &u.release), ("version", &u.version)] {
            ops.push(Op::Mask {
                dst: Path::new("/proc/sys/kernel").join(f),
                kind: MaskKind::File,
                contents: Some(format!("{value}\n")),
            });
        }
        ops.push(Op::View {
            dst: p("/proc/version"),
            view: View::Version {
                release: u.release.clone(),
                version: u.version.clone(),
            },
        });
    }
    if let Some(cpus) = spec.cpus {
        ops.push(Op::View {
            dst: p("/proc/cpuinfo"),
            view: View::CpuInfo { cpus },
        });
        ops.push(Op::View {
            dst: p("/proc/stat"),
            view: View::Stat { cpus },
        });
        for f in ["online", "present", "possible"] {
            ops.push(Op::View {
                dst: Path::new("/sys/devices/system/cpu").join(f),
                view: View::CpuList { cpus },
            });
        }
    }
    ops
}

/// `/etc/hosts`: loopback only.
pub const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

fn passwd(spec: &SandboxSpec) -> String {
    format!(
        "root:x:0:0:root:/:/bin/sh\n{u}:x:{uid}:{gid}:{u}:{home}:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        u = spec.user,
        uid = spec.uid,
        gid = spec.gid,
        home = spec.home.display()
    )
}

fn group(spec: &SandboxSpec) -> String {
    format!(
        "root:x:0:\n{g}:x:{gid}:{u}\nnogroup:x:65534:\n",
        g = spec.group,
        gid = spec.gid,
        u = spec.user
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::Mount;

    fn spec() -> SandboxSpec {
        let mut s = crate::spec::test_spec("/img", &["/bin/sh"]);
        s.mounts.push(Mount::Bind {
            src: "/host/src".into(),
            dst: "/build".into(),
            writable: true,
        });
        s.mounts.push(Mount::Bind {
            src: "/host/in".into(),
            dst: "/inputs/zlib".into(),
            writable: false,
        });
        s
    }

    fn render(ops: &[Op]) -> Vec<String> {
        ops.iter().map(|o| o.to_string()).collect()
    }

    #[test]
    fn the_plan_is_the_recipe() {
        let ops = plan(&spec()).unwrap();
        assert_eq!(
            render(&ops),
            [
                "bind root image /img read-only as /",
                "mount proc on /proc",
                "cover /proc/sys read-only",
                "cover /proc/sysrq-trigger read-only",
                "cover /proc/irq read-only",
                "cover /proc/bus read-only",
                "cover /proc/fs read-only",
                "mount tmpfs (size=65536) on /dev",
                "bind device /dev/null",
                "bind device /dev/zero",
                "bind device /dev/full",
                "bind device /dev/random",
                "bind device /dev/urandom",
                "bind device /dev/tty",
                "mount devpts on /dev/pts",
                "symlink /dev/ptmx -> pts/ptmx",
                "mount tmpfs (size=268435456) on /dev/shm",
                "symlink /dev/fd -> /proc/self/fd",
                "symlink /dev/stdin -> /proc/self/fd/0",
                "symlink /dev/stdout -> /proc/self/fd/1",
                "symlink /dev/stderr -> /proc/self/fd/2",
                "remount /dev read-only",
                "mask /proc/acpi",
                "mask /proc/asound",
                "mask /proc/kcore",
                "mask /proc/keys",
                "mask /proc/key-users",
                "mask /proc/latency_stats",
                "mask /proc/timer_list",
                "mask /proc/timer_stats",
                "mask /proc/sched_debug",
                "mask /proc/scsi",
                "mask /proc/kpageflags",
                "mask /proc/kpagecount",
                "mask /proc/kpagecgroup",
                "mask /proc/slabinfo",
                "mask /proc/pagetypeinfo",
                "mask /proc/vmallocinfo",
                "mask /proc/tty/driver",
                "mask /proc/kmsg",
                "mask /proc/sys/kernel/random/boot_id with a fixed file",
                "mount tmpfs (size=1073741824) on /tmp",
                "bind /host/src on /build (read-write)",
                "bind /host/in on /inputs/zlib (read-only)",
                "write /etc/passwd",
                "write /etc/group",
                "write /etc/hosts",
                "hide /etc/resolv.conf",
                "hide /homeless-shelter",
                "make the root read-only",
            ]
        );
    }

    #[test]
    fn synthesised_files_name_the_build_user() {
        let ops = plan(&spec()).unwrap();
        let file = |name: &str| {
            ops.iter()
                .find_map(|o| match o {
                    Op::File { dst, contents, .. } if dst == Path::new(name) => {
                        Some(contents.clone())
                    }
                    _ => None,
                })
                .unwrap()
        };
        assert!(file("/etc/passwd")
            .contains("\nbuilder:x:1000:1000:builder:/homeless-shelter:/bin/sh\n"));
        assert!(file("/etc/group").contains("\nbuilder:x:1000:builder\n"));
        assert_eq!(file("/etc/hosts"), HOSTS);
        assert!(!HOSTS.contains(|c: char| c.is_ascii_uppercase()));
    }

    #[test]
    fn a_mount_over_etc_replaces_the_synthesised_files() {
        let mut s = spec();
        s.mounts.push(Mount::Tmpfs {
            dst: "/etc".into(),
            size: None,
        });
        let ops = plan(&s).unwrap();
        assert!(!ops.iter().any(|o| matches!(o, Op::File { .. })));
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::Hide { dst } if dst == Path::new("/etc/resolv.conf"))));
        // …and the mount comes after /dev and before sealing.
        let i = ops
            .iter()
            .position(|o| matches!(o, Op::Tmpfs { dst, .. } if dst == Path::new("/etc")))
            .unwrap();
        assert!(i > 30 && i < ops.len() - 1);
    }

    #[test]
    fn an_overlay_is_planned_in_its_place_and_named() {
        let mut s = spec();
        s.mounts.push(Mount::Overlay {
            lower: "/store/src".into(),
            upper: "/staging/build".into(),
            work: "/staging/build.work".into(),
            dst: "/build".into(),
        });
        let ops = plan(&s).unwrap();
        let i = ops
            .iter()
            .position(|o| matches!(o, Op::Overlay { dst, .. } if dst == Path::new("/build")))
            .unwrap();
        assert!(i > 30 && i < ops.len() - 1);
        assert_eq!(
            ops[i].to_string(),
            "mount overlay of /store/src under /staging/build on /build"
        );
    }

    #[test]
    fn invalid_specs_are_not_planned() {
        let mut s = spec();
        s.mounts.push(Mount::Bind {
            src: "/x".into(),
            dst: "/".into(),
            writable: true,
        });
        assert!(matches!(plan(&s), Err(SpecError::RootDestination(_))));
        let mut s = spec();
        s.mounts.push(Mount::Bind {
            src: "/x".into(),
            dst: "/dev/sda".into(),
            writable: true,
        });
        assert!(matches!(plan(&s), Err(SpecError::ReservedDestination(_))));
    }

    #[test]
    fn varied_kernel_and_cpus_are_shown_by_their_files_too() {
        let mut s = spec();
        s.uname = Some(crate::spec::Uname {
            release: "4.4.0-x".into(),
            version: "#1 x".into(),
        });
        s.cpus = Some(1);
        let ops = plan(&s).unwrap();
        let listed = render(&ops);
        let at = |line: &str| {
            listed
                .iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("no {line:?} in {listed:#?}"))
        };
        let last_mount = at("bind /host/in on /inputs/zlib (read-only)");
        for line in [
            "mask /proc/sys/kernel/osrelease with a fixed file",
            "mask /proc/sys/kernel/version with a fixed file",
            "show /proc/version with kernel release 4.4.0-x",
            "show /proc/cpuinfo with 1 CPU(s) at most",
            "show /proc/stat with 1 CPU(s) at most",
            "show /sys/devices/system/cpu/online with 1 CPU(s) at most",
            "show /sys/devices/system/cpu/present with 1 CPU(s) at most",
            "show /sys/devices/system/cpu/possible with 1 CPU(s) at most",
        ] {
            assert!(at(line) > last_mount, "{line}");
        }
        assert!(ops.contains(&Op::Mask {
            dst: "/proc/sys/kernel/osrelease".into(),
            kind: MaskKind::File,
            contents: Some("4.4.0-x\n".into()),
        }));
        let json = serde_json::to_string(&ops).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Op>>(&json).unwrap(), ops);
        // A build's plan (neither varied) has none of them.
        assert!(!render(&plan(&spec()).unwrap())
            .iter()
            .any(|l| l.starts_with("show ") || l.contains("osrelease")));
    }

    #[test]
    fn plan_serialises_for_the_record() {
        let ops = plan(&spec()).unwrap();
        let json = serde_json::to_string(&ops).unwrap();
        assert!(
            json.starts_with(r#"[{"op":"root-image","src":"/img"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Vec<Op>>(&json).unwrap(), ops);
    }
}
