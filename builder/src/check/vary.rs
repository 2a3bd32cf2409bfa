//! The variations that change more than a value of the sandbox: the kernel
//! `uname(2)` reports, the build path (a check-only override of the
//! profile's), the unpacked sources' metadata, an extra package in the
//! root.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hermit_sandbox::subids::SubIds;
use hermit_sandbox::{Mount, Uname};

use super::cause::{self, Marker};
use super::{hook, lock, Ctx, Variant};

/// The kernel release and version the `kernel` variant reports.
pub const KERNEL_RELEASE: &str = "4.4.0-hermit-check";
pub const KERNEL_VERSION: &str = "#1 SMP hermit-check-variant";

/// The build path of the `buildpath` variant: another name, and longer.
pub const BUILD_PATH: &str = "/build-hermitcheck/a-longer-build-path";

/// The mtime every source file gets in the `archive` variant
/// (2033-05-18T03:33:20Z).
pub const ARCHIVE_MTIME: i64 = 2_000_000_000;
/// The owner the `archive` variant gives the sources: an id the sandbox
/// does not map, so the build sees `nobody`. As root a plain `chown`; as an
/// ordinary user the caller's first subordinate uid and gid, mapped at this
/// id in a user namespace for the `chown` (see [`hermit_sandbox::subids`]).
const ARCHIVE_OWNER: u32 = 12345;

/// How the `archive` variant can vary the sources' owner here.
enum Owners {
    /// As root: `lchown`.
    Root,
    /// As an ordinary user with subordinate ids.
    Sub(SubIds),
    /// Not at all, and why.
    No(String),
}

/// The extra package of the `packages` variant.
pub const EXTRA_PACKAGE: &str = "hermit-check-extra";

fn what(s: String) -> Arc<Mutex<(bool, String)>> {
    Arc::new(Mutex::new((true, s)))
}

fn markers(m: Vec<Marker>) -> Arc<Mutex<Vec<Marker>>> {
    Arc::new(Mutex::new(m))
}

/// The host's kernel release, or why it cannot answer a seccomp user
/// notification (`SECCOMP_FILTER_FLAG_NEW_LISTENER` is Linux 5.0).
fn user_notification() -> Result<String, String> {
    let real = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut nums = real.split(|c: char| !c.is_ascii_digit());
    let major: u32 = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if major < 5 {
        return Err(format!(
            "not varied: kernel {real} has no seccomp user notification (Linux 5.0 on)"
        ));
    }
    Ok(real)
}

/// `kernel`: `uname -r`/`-v` report another release and version, through
/// seccomp user notification answered by the sandbox's init.
pub fn kernel() -> Result<Variant, String> {
    let real = user_notification()?;
    Ok(Variant {
        hook: hook(|s| {
            s.uname = Some(Uname {
                release: KERNEL_RELEASE.into(),
                version: KERNEL_VERSION.into(),
            })
        }),
        what: what(format!(
            "the kernel release and version uname(2) reports (seccomp user notification, \
             answered by the sandbox's init; static programs too): {real} → {KERNEL_RELEASE}, \
             \"{KERNEL_VERSION}\"; /proc/sys/kernel/osrelease, /proc/sys/kernel/version and \
             /proc/version show them too"
        )),
        ..Variant::default()
    })
}

/// `clock`: the wall clock about ten years ahead for every program of the
/// build, statically linked ones too: the sandbox's init traces each
/// program to hide its vDSO and answers the wall clock's system calls
/// (`SandboxSpec::clock_offset`).
pub fn clock() -> Result<Variant, String> {
    clock_on(
        std::env::consts::ARCH,
        user_notification().map(drop),
        fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok(),
    )
}

/// [`clock`] on a machine of architecture `arch`, whose kernel can (or
/// cannot) answer a seccomp user notification and whose Yama
/// `ptrace_scope` is this (`None`: no Yama).
fn clock_on(
    arch: &str,
    notification: Result<(), String>,
    yama: Option<String>,
) -> Result<Variant, String> {
    if arch != "x86_64" {
        return Err(format!(
            "not varied: hermit moves the clock on x86-64 only (it hides each program's vDSO \
             by rewriting its initial stack, which it knows for x86-64), not on {arch}"
        ));
    }
    notification?;
    // 3 forbids every ptrace attach; 0–2 let init (the parent, holding
    // CAP_SYS_PTRACE in the sandbox's user namespace) trace the build.
    if yama.as_deref().map(str::trim) == Some("3") {
        return Err(
            "not varied: Yama's ptrace_scope is 3 (/proc/sys/kernel/yama/ptrace_scope): no process \
             may trace another, and the moved clock traces each program to hide its vDSO"
                .into(),
        );
    }
    let days = super::CLOCK_OFFSET_SECS / 86_400;
    Ok(Variant {
        hook: hook(|s| s.clock_offset = Some(super::CLOCK_OFFSET_SECS)),
        what: what(format!(
            "the wall clock (CLOCK_REALTIME, gettimeofday, time): now → now + {days} days (about ten years), \
             for every program, statically linked ones too (the sandbox's init hides each program's vDSO \
             and answers the clock's system calls: ptrace and seccomp user notification); \
             the monotonic clocks and the times the kernel gives files stay real"
        )),
        ..Variant::default()
    })
}

/// `buildpath`: the build runs in another, longer `/build`: the plan's
/// environment, for this build only (the variant's record states it).
pub fn build_path(profile_path: &Path) -> Variant {
    let from = profile_path.display().to_string();
    Variant {
        build_path: Some(BUILD_PATH.into()),
        what: what(format!(
            "the build path: {from} → {BUILD_PATH} (a check-only override of the profile's path, \
             stated in the variant's record)"
        )),
        markers: markers(vec![Marker::new(
            cause::BUILD_PATH,
            "the build path",
            &from,
            BUILD_PATH,
        )]),
        ..Variant::default()
    }
}

/// `archive`: every bound source is a copy of its unpacked tree whose
/// mtimes, modes and (as root) owners differ from the store's.
pub fn archive(ctx: &Ctx) -> Variant {
    let note = what(String::new());
    let scratch = Arc::new(Mutex::new(Vec::new()));
    let (n, made) = (note.clone(), scratch.clone());
    let (tmp, sources) = (ctx.scratch.clone(), ctx.sources_path.clone());
    let owners = if nix::unistd::geteuid().is_root() {
        Owners::Root
    } else {
        match SubIds::of_caller() {
            Ok(ids) => Owners::Sub(ids),
            Err(why) => Owners::No(why),
        }
    };
    let varies_owner = !matches!(owners, Owners::No(_));
    let root = matches!(owners, Owners::Root);
    let h = hook(move |s| {
        let mut copied = Vec::new();
        let mut failed = None;
        // A `[build] workdir` view's lower layer is a source too: it shows
        // the same copy. Its files keep their owner (overlayfs cannot copy
        // up a file of an owner the sandbox does not map).
        let lowers: Vec<PathBuf> = s
            .mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Overlay { lower, .. } => Some(lower.clone()),
                _ => None,
            })
            .collect();
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut kept_owner = false;
        for m in s.mounts.iter_mut() {
            let Mount::Bind { src, dst, .. } = m else {
                continue;
            };
            if !dst.starts_with(&sources) {
                continue;
            }
            let viewed = lowers.iter().any(|l| l.starts_with(&*src));
            kept_owner |= viewed && varies_owner;
            let dir = match hermit_store::store::temp_dir(&tmp) {
                Ok(d) => d,
                Err(e) => {
                    failed = Some(format!("a scratch directory: {e}"));
                    break;
                }
            };
            lock(&made).push(dir.clone());
            let to = dir.join("src");
            let copied_ok = varied_copy(src, &to, root && !viewed).and_then(|()| match &owners {
                Owners::Sub(ids) if !viewed => ids.chown_tree(&to, ARCHIVE_OWNER),
                _ => Ok(()),
            });
            match copied_ok {
                Ok(()) => {
                    copied.push(dst.display().to_string());
                    moved.push((src.clone(), to.clone()));
                    *src = to;
                }
                Err(e) => {
                    failed = Some(format!("copying {}: {e}", src.display()));
                    break;
                }
            }
        }
        for m in s.mounts.iter_mut() {
            if let Mount::Overlay { lower, .. } = m {
                if let Some((from, to)) = moved.iter().find(|(f, _)| lower.starts_with(f)) {
                    if let Ok(rest) = lower.strip_prefix(from) {
                        *lower = if rest.as_os_str().is_empty() {
                            to.clone()
                        } else {
                            to.join(rest)
                        };
                    }
                }
            }
        }
        let how = match &owners {
            Owners::Root => String::new(),
            Owners::Sub(ids) => format!(
                " through the subordinate uid/gid {}/{} (directories keep the caller's group)",
                ids.uid, ids.gid
            ),
            Owners::No(_) => String::new(),
        };
        let owners = match &owners {
            Owners::No(why) => {
                format!("owners not varied (as an ordinary user that needs subordinate ids: {why})")
            }
            _ if kept_owner => format!(
                "owners → uid/gid {ARCHIVE_OWNER}{how} (nobody in the sandbox), except in the \
                 source /build is a view of (overlayfs cannot copy up a file of an unmapped owner)"
            ),
            _ => format!("owners → uid/gid {ARCHIVE_OWNER}{how} (nobody in the sandbox)"),
        };
        *lock(&n) = match failed {
            Some(why) => (false, format!("not varied: {why}")),
            None if copied.is_empty() => (false, "not varied: the build has no source".into()),
            None => (
                true,
                format!(
                    "the unpacked sources' metadata ({}): mtimes → {ARCHIVE_MTIME} \
                     (2033-05-18), modes 0444/0555 → 0664/0775, {owners}; the store's trees are untouched",
                    copied.join(", ")
                ),
            ),
        };
    });
    let mut m = vec![
        Marker::new(
            cause::ARCHIVE,
            "the sources' mtime",
            "",
            &ARCHIVE_MTIME.to_string(),
        ),
        Marker::new(
            cause::ARCHIVE,
            "the sources' mtime (octal, as tar stores it)",
            "",
            &format!("{ARCHIVE_MTIME:o}"),
        ),
        Marker::new(
            cause::ARCHIVE,
            "the sources' mtime (a date)",
            "",
            "2033-05-18",
        ),
        Marker::new(
            cause::ARCHIVE,
            "the sources' modes",
            "r--r--r--",
            "rw-rw-r--",
        ),
        Marker::new(
            cause::ARCHIVE,
            "the sources' modes",
            "r-xr-xr-x",
            "rwxrwxr-x",
        ),
        Marker::new(cause::ARCHIVE, "the sources' modes", "444", "664"),
        Marker::new(cause::ARCHIVE, "the sources' modes", "555", "775"),
    ];
    if varies_owner {
        m.push(Marker::new(
            cause::ARCHIVE,
            "the sources' owner",
            "",
            "nobody",
        ));
        m.push(Marker::new(
            cause::ARCHIVE,
            "the sources' owner",
            "",
            "65534",
        ));
    }
    Variant {
        hook: h,
        what: note,
        markers: markers(m),
        scratch,
        ..Variant::default()
    }
}

/// Copies `from` (a tree or one file) to `to`, every entry with
/// [`ARCHIVE_MTIME`], group-writable modes and, as root, [`ARCHIVE_OWNER`].
fn varied_copy(from: &Path, to: &Path, root: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if ft.is_dir() {
        fs::create_dir(to)?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
        let mut names: Vec<_> = fs::read_dir(from)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            varied_copy(&from.join(&n), &to.join(&n), root)?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(0o775))?;
    } else if ft.is_file() {
        fs::copy(from, to)?;
        let mode = if meta.mode() & 0o111 != 0 {
            0o775
        } else {
            0o664
        };
        fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    } else {
        return Ok(()); // the store holds no special files
    }
    if root {
        std::os::unix::fs::lchown(to, Some(ARCHIVE_OWNER), Some(ARCHIVE_OWNER))?;
    }
    let t = nix::sys::time::TimeSpec::new(ARCHIVE_MTIME, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// `packages`: an extra, unrelated package present in the root: a program
/// in `/usr/bin` and its files in `/usr/share`, bound over the image.
pub fn packages(ctx: &Ctx) -> Variant {
    let note = what(String::new());
    let scratch = Arc::new(Mutex::new(Vec::new()));
    let (n, made, tmp) = (note.clone(), scratch.clone(), ctx.scratch.clone());
    let h = hook(move |s| {
        let made_pkg = || -> io::Result<PathBuf> {
            let dir = hermit_store::store::temp_dir(&tmp).map_err(io::Error::other)?;
            lock(&made).push(dir.clone());
            let share = dir.join("share");
            fs::create_dir(&share)?;
            fs::write(
                share.join("README"),
                format!(
                    "{EXTRA_PACKAGE}: an unrelated package that only a hermit check variant has.\n"
                ),
            )?;
            let bin = dir.join(EXTRA_PACKAGE);
            fs::write(&bin, format!("#!/bin/sh\necho {EXTRA_PACKAGE}\n"))?;
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
            fs::set_permissions(&share, fs::Permissions::from_mode(0o755))?;
            Ok(dir)
        };
        match made_pkg() {
            Ok(dir) => {
                s.mounts.push(Mount::Bind {
                    src: dir.join("share"),
                    dst: PathBuf::from(format!("/usr/share/{EXTRA_PACKAGE}")),
                    writable: false,
                });
                s.mounts.push(Mount::Bind {
                    src: dir.join(EXTRA_PACKAGE),
                    dst: PathBuf::from(format!("/usr/bin/{EXTRA_PACKAGE}")),
                    writable: false,
                });
                *lock(&n) = (
                    true,
                    format!(
                        "an extra, unrelated package in the root: /usr/bin/{EXTRA_PACKAGE} and \
                         /usr/share/{EXTRA_PACKAGE}/ (the toolchain itself is pinned by digest: \
                         no build can see another version of it)"
                    ),
                );
            }
            Err(e) => *lock(&n) = (false, format!("not varied: making the extra package: {e}")),
        }
    });
    Variant {
        hook: h,
        what: note,
        markers: markers(vec![Marker::new(
            cause::PACKAGES,
            "the extra package's name",
            "",
            EXTRA_PACKAGE,
        )]),
        scratch,
        ..Variant::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_varied_where_init_may_trace_and_answer() {
        for yama in [None, Some("0\n"), Some("1\n"), Some("2\n")] {
            let v = clock_on("x86_64", Ok(()), yama.map(String::from))
                .unwrap_or_else(|e| panic!("{yama:?}: {e}"));
            let mut s = crate::check::tests_support::spec();
            (v.hook.unwrap().0)(&mut s);
            assert_eq!(s.clock_offset, Some(crate::check::CLOCK_OFFSET_SECS));
            assert!(lock(&v.what).1.contains("3653 days"), "{}", lock(&v.what).1);
        }
        let why = |r: Result<Variant, String>| r.err().unwrap();
        assert!(why(clock_on("x86_64", Ok(()), Some("3\n".into()))).contains("ptrace_scope is 3"));
        assert!(why(clock_on("aarch64", Ok(()), None)).contains("x86-64 only"));
        let old = Err("not varied: kernel 4.19 has no seccomp user notification".to_string());
        assert!(why(clock_on("x86_64", old, None)).contains("4.19"));
    }
}
