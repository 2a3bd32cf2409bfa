//! Carries out a plan ([`crate::plan::Op`]s) inside a fresh mount namespace,
//! the way bubblewrap does:
//!
//! 1. make every mount private, so nothing we do propagates to the host;
//! 2. mount a staging tmpfs on the host's `/tmp` and `pivot_root` into it: the
//!    host's root is now `/oldroot`, and every host path (a bind source, the
//!    root image) is reached as `/oldroot/<path>` even if it was under `/tmp`;
//! 3. bind the root image read-only at `/image`, and build the new root at
//!    `/newroot`: a tmpfs *skeleton* whose entries are binds of the image's
//!    entries. A mount point the read-only image lacks (`/build`, `/etc/passwd`
//!    in an image without one) is made by turning the directory that should
//!    hold it into a skeleton too;
//! 4. carry out the plan's operations against `/newroot` (host paths were
//!    taken before step 3 as detached mounts: binds with `open_tree`, and
//!    overlays mounted over their host directories at a staging directory,
//!    then taken the same way);
//! 5. seal the skeletons read-only, detach `/oldroot`, `pivot_root` into
//!    `/newroot` and detach the staging tmpfs.
//!
//! Every failure names the step, the call, the path and the errno.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, mkdir, pivot_root};

use crate::outcome::SetupFailure;
use crate::plan::{MaskKind, Op};
use crate::sys;
use crate::views::{self, View};

const STAGING: &str = "/tmp";
const OLDROOT: &str = "/oldroot";
const NEWROOT: &str = "/newroot";
const IMAGE: &str = "/image";
const FILES: &str = "/files";

/// A failed call, before it is tied to its step.
struct Fail {
    call: &'static str,
    path: PathBuf,
    errno: Errno,
}

type R<T> = Result<T, Fail>;

fn fail<'a>(call: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Fail + 'a {
    move |errno| Fail {
        call,
        path: path.to_path_buf(),
        errno,
    }
}

fn io_fail<'a>(call: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Fail + 'a {
    move |e| Fail {
        call,
        path: path.to_path_buf(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// What a directory of the new root is made of.
#[derive(Debug, Clone)]
enum Backing {
    /// A tmpfs of ours, writable until sealed.
    Ours,
    /// Part of the read-only image; the path is its counterpart under /image.
    Image(PathBuf),
    /// A bind of the caller's, /proc, devpts: never written to.
    Foreign,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

struct Builder {
    /// (sandbox path, backing), in mount order; the longest prefix wins.
    mounts: Vec<(PathBuf, Backing)>,
    skeletons: Vec<PathBuf>,
    hidden: HashSet<PathBuf>,
    /// Every mount destination, with the kind of mount point it needs when
    /// the plan tells (a bind's depends on its source).
    destinations: Vec<(PathBuf, Option<Kind>)>,
    files: usize,
}

/// Host path as seen from the staging root.
fn host(p: &Path) -> PathBuf {
    Path::new(OLDROOT).join(p.strip_prefix("/").unwrap_or(p))
}

/// Sandbox path as seen from the staging root.
fn inside(p: &Path) -> PathBuf {
    Path::new(NEWROOT).join(p.strip_prefix("/").unwrap_or(p))
}

fn cpath(p: &Path) -> R<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| Fail {
        call: "path",
        path: p.to_path_buf(),
        errno: Errno::EINVAL,
    })
}

/// Adds `nosuid,nodev` (and `ro`) to the mount at `target` (and, when
/// `recursive`, every mount below it).
fn restrict(target: &Path, readonly: bool, recursive: bool) -> R<()> {
    let c = cpath(target)?;
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if readonly {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    match sys::mount_setattr(&c, set, recursive) {
        Err(Errno::ENOSYS) => {
            // Linux < 5.12: remount the top mount only, keeping the flags the
            // kernel locks (noexec, atime) as they are.
            let st = nix::sys::statvfs::statvfs(target).map_err(fail("statvfs", target))?;
            use nix::sys::statvfs::FsFlags;
            let mut flags =
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            for (f, m) in [
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if st.flags().contains(f) {
                    flags |= m;
                }
            }
            mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                .map_err(fail("remount", target))
        }
        r => r.map_err(fail("mount_setattr", target)),
    }
}

/// Refuses a path with a symlink in any component: setup acts only on the
/// paths it means, never on where an image's symlink points.
fn checked(p: &Path) -> R<()> {
    sys::check_no_symlinks(&cpath(p)?).map_err(fail("resolve without symlinks", p))
}

/// Makes the bind of a host device node at `target` read-only (the device
/// itself stays readable and writable: a read-only mount refuses only
/// changes to the node — `chmod`, `chown`, `utimes` — which a build run by
/// root could otherwise make to the host's `/dev/null`).
fn read_only_node(target: &Path) -> R<()> {
    let c = cpath(target)?;
    match sys::mount_setattr(&c, sys::MOUNT_ATTR_RDONLY, false) {
        Err(Errno::ENOSYS) => {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                .map_err(fail("remount", target))
        }
        r => r.map_err(fail("mount_setattr", target)),
    }
}

/// Binds `src` (a path of the root image or of the staging tmpfs, never of
/// the host: it is detached by then) on `dst`. Callers pass paths walked
/// without symlinks (`mountpoint`) or read from a directory listing.
fn bind(src: &Path, dst: &Path, recursive: bool) -> R<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), dst, None::<&str>, flags, None::<&str>).map_err(fail("mount", dst))
}

fn tmpfs(dst: &Path, mode: u32, size: Option<u64>) -> R<()> {
    let mut data = format!("mode={mode:o}");
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(fail("mount", dst))
}

fn create_file(p: &Path) -> R<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p)
        .map(drop)
        .map_err(io_fail("create", p))
}

/// Sets up the mount namespace and pivots into the new root.
pub(crate) fn setup(ops: &[Op]) -> Result<(), SetupFailure> {
    let step =
        |s: &'static str| move |f: Fail| SetupFailure::new(s, f.call, Some(f.path), Some(f.errno));
    prepare().map_err(step("prepare the mount namespace"))?;
    // Every host path the plan names is taken now, as a detached mount; then
    // the host's root is cut off, so nothing done while building the new root
    // from the image can reach a host file by path, whatever its symlinks say.
    let mut taken = Vec::with_capacity(ops.len());
    for op in ops {
        taken.push(take_host_path(op).map_err(|f| {
            SetupFailure::new(op.to_string(), f.call, Some(shown(&f.path)), Some(f.errno))
        })?);
    }
    detach_host_root().map_err(step("detach the host's root"))?;
    let mut b = Builder::new(ops);
    for (op, host) in ops.iter().zip(taken) {
        b.apply(op, host).map_err(|f| {
            SetupFailure::new(op.to_string(), f.call, Some(shown(&f.path)), Some(f.errno))
        })?;
    }
    enter().map_err(step("pivot into the new root"))?;
    Ok(())
}

/// Paths in errors: drop the staging prefixes the user never sees.
fn shown(p: &Path) -> PathBuf {
    for (prefix, to) in [(OLDROOT, "/"), (NEWROOT, "/")] {
        if let Ok(rest) = p.strip_prefix(prefix) {
            return Path::new(to).join(rest);
        }
    }
    p.to_path_buf()
}

fn prepare() -> R<()> {
    let root = Path::new("/");
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("mount --make-rprivate", root))?;
    let staging = Path::new(STAGING);
    tmpfs(staging, 0o755, Some(16 << 20))?;
    for d in ["oldroot", "newroot", "image", "files"] {
        let p = staging.join(d);
        mkdir(&p, Mode::from_bits_truncate(0o755)).map_err(fail("mkdir", &p))?;
    }
    let old = staging.join("oldroot");
    pivot_root(staging, &old).map_err(fail("pivot_root", staging))?;
    chdir(root).map_err(fail("chdir", root))?;
    Ok(())
}

/// A host path an operation binds, taken as a detached mount before the host
/// root is cut off.
struct Taken {
    tree: std::os::fd::OwnedFd,
    is_dir: bool,
}

/// Where a fresh procfs waits (in the staging root) to be moved into place:
/// the kernel lets a user namespace mount proc only while a fully visible
/// proc is mounted in its mount namespace, which the host's stops being once
/// the host root is detached.
const PROC_STAGING: &str = "/proc";

fn take_host_path(op: &Op) -> R<Option<Taken>> {
    let (src, recursive) = match op {
        Op::RootImage { src } => (src.clone(), true),
        Op::Bind { src, .. } => (src.clone(), true),
        Op::DevNode { name } => (Path::new("/dev").join(name), false),
        Op::Proc { .. } => {
            let t = Path::new(PROC_STAGING);
            match mkdir(t, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(fail("mkdir", t)(e)),
            }
            mount(
                Some("proc"),
                t,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(fail("mount", t))?;
            return Ok(None);
        }
        Op::Overlay {
            lower, upper, work, ..
        } => return take_overlay(lower, upper, work).map(Some),
        _ => return Ok(None),
    };
    let h = host(&src);
    let tree = sys::open_tree_clone(&cpath(&h)?, recursive).map_err(fail("open_tree", &h))?;
    let meta = nix::sys::stat::fstat(&tree).map_err(fail("stat", &h))?;
    let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
    Ok(Some(Taken { tree, is_dir }))
}

/// Mounts an overlayfs of host directories while the host is still
/// reachable (at a fresh directory of the staging root), and takes it as a
/// detached mount like a bind's source. `userxattr`: overlayfs keeps its
/// whiteouts and markers in `user.overlay.*` attributes, which a user
/// namespace may write. `volatile`: no sync of the upper filesystem (on
/// every `fsync` and at unmount, which costs a whole-filesystem `syncfs`);
/// the upper layer is a build directory, thrown away or kept as is.
fn take_overlay(lower: &Path, upper: &Path, work: &Path) -> R<Taken> {
    let mut n = 0u32;
    let at = loop {
        let at = PathBuf::from(format!("/overlay{n}"));
        match mkdir(&at, Mode::from_bits_truncate(0o755)) {
            Ok(()) => break at,
            Err(Errno::EEXIST) => n += 1,
            Err(e) => return Err(fail("mkdir", &at)(e)),
        }
    };
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr,volatile",
        host(lower).display(),
        host(upper).display(),
        host(work).display()
    );
    mount(
        Some("overlay"),
        &at,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(fail("mount overlay", &host(upper)))?;
    let tree = sys::open_tree_clone(&cpath(&at)?, false).map_err(fail("open_tree", &at))?;
    umount2(&at, MntFlags::MNT_DETACH).map_err(fail("umount2", &at))?;
    Ok(Taken { tree, is_dir: true })
}

/// Attaches a taken host path at `dst` (a path of the new root, checked to
/// have no symlink on the way).
fn attach(taken: &Taken, dst: &Path) -> R<()> {
    checked(dst)?;
    sys::move_mount(&taken.tree, &cpath(dst)?).map_err(fail("move_mount", dst))
}

fn detach_host_root() -> R<()> {
    let old = Path::new(OLDROOT);
    umount2(old, MntFlags::MNT_DETACH).map_err(fail("umount2", old))
}

fn enter() -> R<()> {
    let new = Path::new(NEWROOT);
    chdir(new).map_err(fail("chdir", new))?;
    // pivot_root(".", "."): the staging root ends up stacked over the new
    // root at `/`, from where it is detached.
    let dot = Path::new(".");
    pivot_root(dot, dot).map_err(fail("pivot_root", new))?;
    umount2(dot, MntFlags::MNT_DETACH).map_err(fail("umount2", Path::new("/")))?;
    let root = Path::new("/");
    chdir(root).map_err(fail("chdir", root))?;
    Ok(())
}

impl Builder {
    fn new(ops: &[Op]) -> Builder {
        let mut hidden = HashSet::new();
        let mut destinations = Vec::new();
        for op in ops {
            match op {
                Op::Hide { dst } => {
                    hidden.insert(dst.clone());
                }
                Op::Proc { dst } | Op::Tmpfs { dst, .. } | Op::Devpts { dst } => {
                    destinations.push((dst.clone(), Some(Kind::Dir)));
                }
                Op::File { dst, .. } => destinations.push((dst.clone(), Some(Kind::File))),
                Op::Bind { dst, .. } => destinations.push((dst.clone(), None)),
                Op::Overlay { dst, .. } => destinations.push((dst.clone(), Some(Kind::Dir))),
                Op::DevNode { name } => {
                    destinations.push((Path::new("/dev").join(name), Some(Kind::File)))
                }
                Op::Symlink { dst, .. } => destinations.push((dst.clone(), None)),
                _ => {}
            }
        }
        Builder {
            mounts: Vec::new(),
            skeletons: Vec::new(),
            hidden,
            destinations,
            files: 0,
        }
    }

    fn apply(&mut self, op: &Op, taken: Option<Taken>) -> R<()> {
        let host_path = |src: &Path| -> R<Taken> {
            let h = host(src);
            taken.ok_or_else(|| fail("open_tree", &h)(Errno::EBADF))
        };
        match op {
            Op::RootImage { src } => {
                let taken = host_path(src)?;
                if !taken.is_dir {
                    return Err(fail("stat", &host(src))(Errno::ENOTDIR));
                }
                let image = Path::new(IMAGE);
                attach(&taken, image)?;
                restrict(image, true, true)?;
                let root = Path::new("/");
                let new = Path::new(NEWROOT);
                if self.needs_skeleton(root, image) {
                    tmpfs(new, 0o755, Some(1 << 20))?;
                    self.mounts.push((root.to_path_buf(), Backing::Ours));
                    self.skeletons.push(root.to_path_buf());
                    self.populate(root, image)?;
                } else {
                    // Every mount point the plan needs at the top exists in
                    // the image: the image itself is the root (as with
                    // bubblewrap), with skeletons only further down if needed.
                    bind(image, new, true)?;
                    self.mounts
                        .push((root.to_path_buf(), Backing::Image(image.to_path_buf())));
                    self.skeletons_below(root, image)?;
                }
            }
            Op::Proc { dst } => {
                let t = self.mountpoint(dst, Kind::Dir)?;
                checked(&t)?;
                let staged = Path::new(PROC_STAGING);
                mount(
                    Some(staged),
                    &t,
                    None::<&str>,
                    MsFlags::MS_MOVE,
                    None::<&str>,
                )
                .map_err(fail("mount --move", &t))?;
                self.mounts.push((dst.clone(), Backing::Foreign));
            }
            Op::Tmpfs { dst, size, mode } => {
                let t = self.mountpoint(dst, Kind::Dir)?;
                tmpfs(&t, *mode, *size)?;
                self.mounts.push((dst.clone(), Backing::Ours));
            }
            Op::DevNode { name } => {
                let dst = Path::new("/dev").join(name);
                let taken = host_path(&dst)?;
                let t = self.mountpoint(&dst, Kind::File)?;
                attach(&taken, &t)?;
                read_only_node(&t)?;
            }
            Op::Devpts { dst } => {
                let t = self.mountpoint(dst, Kind::Dir)?;
                mount(
                    Some("devpts"),
                    &t,
                    Some("devpts"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("newinstance,ptmxmode=0666,mode=620"),
                )
                .map_err(fail("mount", &t))?;
                self.mounts.push((dst.clone(), Backing::Foreign));
            }
            Op::Symlink { target, dst } => {
                let parent = dst.parent().unwrap_or(Path::new("/"));
                self.mountpoint(parent, Kind::Dir)?;
                self.writable(parent)?;
                let t = inside(dst);
                std::os::unix::fs::symlink(target, &t).map_err(io_fail("symlink", &t))?;
            }
            Op::Bind { src, dst, writable } => {
                let taken = host_path(src)?;
                let kind = if taken.is_dir { Kind::Dir } else { Kind::File };
                let t = self.mountpoint(dst, kind)?;
                attach(&taken, &t)?;
                restrict(&t, !writable, true)?;
                self.mounts.push((dst.clone(), Backing::Foreign));
            }
            Op::Overlay { upper, dst, .. } => {
                let taken = host_path(upper)?;
                let t = self.mountpoint(dst, Kind::Dir)?;
                attach(&taken, &t)?;
                restrict(&t, false, true)?;
                self.mounts.push((dst.clone(), Backing::Foreign));
            }
            Op::File {
                dst,
                contents,
                mode,
            } => {
                self.files += 1;
                let f = Path::new(FILES).join(self.files.to_string());
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(&f)
                    .map_err(io_fail("create", &f))?;
                file.write_all(contents.as_bytes())
                    .map_err(io_fail("write", &f))?;
                fs::set_permissions(&f, fs::Permissions::from_mode(*mode))
                    .map_err(io_fail("chmod", &f))?;
                let t = self.mountpoint(dst, Kind::File)?;
                bind(&f, &t, false)?;
                restrict(&t, true, false)?;
            }
            Op::Hide { dst } => self.hide(dst)?,
            Op::RemountReadOnly { dst } => {
                checked(&inside(dst))?;
                restrict(&inside(dst), true, false)?;
                if let Some(m) = self.mounts.iter_mut().rev().find(|(p, _)| p == dst) {
                    m.1 = Backing::Foreign;
                }
            }
            Op::CoverReadOnly { dst } => {
                let t = inside(dst);
                if fs::symlink_metadata(&t).is_ok() {
                    bind(&t, &t, true)?;
                    restrict(&t, true, true)?;
                }
            }
            Op::Mask {
                dst,
                kind,
                contents,
            } => self.mask(dst, *kind, contents.as_deref())?,
            Op::View { dst, view } => self.view(dst, view)?,
            Op::SealRoot => {
                for s in &self.skeletons {
                    restrict(&inside(s), true, false)?;
                }
            }
        }
        Ok(())
    }

    /// [`Op::Mask`]: one mount over `dst` (a /proc entry), if it exists.
    /// The kind comes from the plan; `stat` is called only when the mount
    /// fails (the entry is missing on this kernel, or of the other kind).
    fn mask(&mut self, dst: &Path, kind: MaskKind, contents: Option<&str>) -> R<()> {
        let t = inside(dst);
        if let Some(text) = contents {
            if fs::symlink_metadata(&t).is_err() {
                return Ok(());
            }
            return self.fixed_file(&t, text);
        }
        let mount_as = |kind: MaskKind| match kind {
            MaskKind::Dir => {
                let flags = MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC;
                mount(
                    Some("tmpfs"),
                    &t,
                    Some("tmpfs"),
                    flags,
                    Some("size=0,mode=555"),
                )
                .map_err(fail("mount", &t))
            }
            // The plan masks after /dev is made: the sandbox's /dev/null is
            // a read-only bind (`Op::DevNode`), and a bind takes the flags
            // of the mount it is made from.
            MaskKind::File => bind(&inside(Path::new("/dev/null")), &t, false),
        };
        match mount_as(kind) {
            Ok(()) => Ok(()),
            Err(e) => match fs::symlink_metadata(&t) {
                Err(_) => Ok(()),
                Ok(m) if m.is_dir() != (kind == MaskKind::Dir) => mount_as(if m.is_dir() {
                    MaskKind::Dir
                } else {
                    MaskKind::File
                }),
                Ok(_) => Err(e),
            },
        }
    }

    /// Binds a read-only file of `text`, made in the staging tmpfs, over
    /// the existing entry `t`.
    fn fixed_file(&mut self, t: &Path, text: &str) -> R<()> {
        self.files += 1;
        let f = Path::new(FILES).join(self.files.to_string());
        fs::write(&f, text).map_err(io_fail("create", &f))?;
        bind(&f, t, false)?;
        restrict(t, true, false)
    }

    /// [`Op::View`]: `dst`, when it is a regular file reached without a
    /// symlink (a /proc file; a sysfs file where a spec binds `/sys`),
    /// shown as [`views::render`] makes it from its current text.
    fn view(&mut self, dst: &Path, view: &View) -> R<()> {
        let t = inside(dst);
        let regular = fs::symlink_metadata(&t).is_ok_and(|m| m.is_file());
        if !regular || checked(&t).is_err() {
            return Ok(());
        }
        let current = fs::read_to_string(&t).map_err(io_fail("read", &t))?;
        let u = nix::sys::utsname::uname().map_err(fail("uname", &t))?;
        let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        let (sysname, release, version) = (text(u.sysname()), text(u.release()), text(u.version()));
        let allowed = views::allowed_cpus().map_err(fail("sched_getaffinity", &t))?;
        let new = views::render(view, &current, (&sysname, &release, &version), &allowed);
        self.fixed_file(&t, &new)
    }

    fn backing(&self, dir: &Path) -> Backing {
        let (base, backing) = self
            .mounts
            .iter()
            .rev()
            .filter(|(p, _)| dir.starts_with(p))
            .max_by_key(|(p, _)| p.components().count())
            .cloned()
            .unwrap_or((PathBuf::from("/"), Backing::Foreign));
        match backing {
            Backing::Image(img) => {
                Backing::Image(img.join(dir.strip_prefix(&base).unwrap_or(Path::new(""))))
            }
            b => b,
        }
    }

    /// Makes `dir` (an existing directory of the new root) writable by us:
    /// image directories become skeletons.
    fn writable(&mut self, dir: &Path) -> R<()> {
        match self.backing(dir) {
            Backing::Ours => Ok(()),
            Backing::Image(img) => self.skeleton(dir, &img),
            Backing::Foreign => Err(fail("create a mount point in", &inside(dir))(Errno::EROFS)),
        }
    }

    /// Mounts a tmpfs over `dir` and fills it with binds of `img`'s entries.
    fn skeleton(&mut self, dir: &Path, img: &Path) -> R<()> {
        let mode = fs::metadata(img)
            .map_err(io_fail("stat", img))?
            .permissions()
            .mode()
            & 0o7777;
        tmpfs(&inside(dir), mode, Some(1 << 20))?;
        self.mounts.push((dir.to_path_buf(), Backing::Ours));
        self.skeletons.push(dir.to_path_buf());
        self.populate(dir, img)
    }

    fn populate(&mut self, dir: &Path, img: &Path) -> R<()> {
        for entry in fs::read_dir(img).map_err(io_fail("readdir", img))? {
            let entry = entry.map_err(io_fail("readdir", img))?;
            let name = entry.file_name();
            let spath = dir.join(&name);
            if self.hidden.contains(&spath) {
                continue;
            }
            let src = entry.path();
            let ft = entry.file_type().map_err(io_fail("stat", &src))?;
            let t = inside(&spath);
            let placeholder = self.destinations.iter().any(|(d, _)| *d == spath);
            if ft.is_dir() && !placeholder && self.needs_skeleton(&spath, &src) {
                mkdir(&t, Mode::from_bits_truncate(0o755)).map_err(fail("mkdir", &t))?;
                self.skeleton(&spath, &src)?;
            } else if ft.is_symlink() {
                if !placeholder {
                    let target = fs::read_link(&src).map_err(io_fail("readlink", &src))?;
                    std::os::unix::fs::symlink(&target, &t).map_err(io_fail("symlink", &t))?;
                }
            } else if ft.is_dir() {
                mkdir(&t, Mode::from_bits_truncate(0o755)).map_err(fail("mkdir", &t))?;
                if !placeholder {
                    bind(&src, &t, true)?;
                    self.mounts
                        .push((spath.clone(), Backing::Image(src.clone())));
                    self.skeletons_below(&spath, &src)?;
                }
            } else {
                create_file(&t)?;
                if !placeholder && !ft.is_block_device() && !ft.is_char_device() {
                    bind(&src, &t, false)?;
                }
            }
        }
        Ok(())
    }

    /// `dir` shows the image directory `img` as it is. Turns the directories
    /// below it that need one into skeletons now, before anything is
    /// mounted under them (a later skeleton would cover those mounts).
    fn skeletons_below(&mut self, dir: &Path, img: &Path) -> R<()> {
        let mut names: Vec<PathBuf> = Vec::new();
        let paths = self
            .destinations
            .iter()
            .map(|(d, _)| d)
            .chain(self.hidden.iter());
        for p in paths {
            let Ok(rest) = p.strip_prefix(dir) else {
                continue;
            };
            let mut comps = rest.components();
            // Only directories that something lies *below* matter here.
            if let (Some(first), Some(_)) = (comps.next(), comps.next()) {
                let name = PathBuf::from(first.as_os_str());
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names.sort();
        for name in names {
            let sub = dir.join(&name);
            let sub_img = img.join(&name);
            let is_dir = fs::symlink_metadata(&sub_img).is_ok_and(|m| m.is_dir());
            // A mount point of its own replaces what is below it; a missing
            // or non-directory entry is for `mountpoint` to deal with.
            if !is_dir || self.destinations.iter().any(|(d, _)| *d == sub) {
                continue;
            }
            if self.needs_skeleton(&sub, &sub_img) {
                self.skeleton(&sub, &sub_img)?;
            } else {
                self.skeletons_below(&sub, &sub_img)?;
            }
        }
        Ok(())
    }

    /// Whether the image directory `img`, shown at `dir`, must become a
    /// skeleton because a mount point has to be created in it or an entry
    /// hidden from it. Deciding this before anything is mounted below `dir`
    /// keeps later mounts from being covered by the skeleton's tmpfs.
    fn needs_skeleton(&self, dir: &Path, img: &Path) -> bool {
        let child_of = |p: &Path| -> Option<PathBuf> {
            let rest = p.strip_prefix(dir).ok()?;
            let first = rest.components().next()?;
            Some(PathBuf::from(first.as_os_str()))
        };
        let lstat = |name: &Path| fs::symlink_metadata(img.join(name)).ok();
        for h in &self.hidden {
            if let Some(name) = child_of(h) {
                if dir.join(&name) == *h && lstat(&name).is_some() {
                    return true;
                }
            }
        }
        for (d, kind) in &self.destinations {
            let Some(name) = child_of(d) else { continue };
            let m = lstat(&name);
            let last = dir.join(&name) == *d;
            let fits = match (&m, last, kind) {
                (None, _, _) => false,
                (Some(m), _, _) if m.file_type().is_symlink() => false,
                (Some(m), false, _) => m.is_dir(),
                (Some(m), true, Some(Kind::Dir)) => m.is_dir(),
                (Some(m), true, Some(Kind::File)) => !m.is_dir(),
                (Some(_), true, None) => true,
            };
            if !fits {
                return true;
            }
        }
        false
    }

    /// Makes sure `dst` exists in the new root as a `kind`, creating it (and
    /// its parents) where missing; refuses symlinks on the way, so a mount
    /// never lands outside the new root. Returns the staging path.
    fn mountpoint(&mut self, dst: &Path, kind: Kind) -> R<PathBuf> {
        let mut cur = PathBuf::from("/");
        let comps: Vec<_> = dst.components().skip(1).collect();
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let want = if last { kind } else { Kind::Dir };
            let next = cur.join(c);
            let t = inside(&next);
            match fs::symlink_metadata(&t) {
                Ok(m) => {
                    let is = if m.is_dir() { Kind::Dir } else { Kind::File };
                    if m.file_type().is_symlink() || is != want {
                        if last
                            && matches!(self.backing(&cur), Backing::Ours)
                            && !self.is_mount(&next)
                        {
                            // Our own placeholder or copied symlink: replace it.
                            if m.is_dir() {
                                fs::remove_dir(&t).map_err(io_fail("rmdir", &t))?;
                            } else {
                                fs::remove_file(&t).map_err(io_fail("unlink", &t))?;
                            }
                            self.create(&t, want)?;
                        } else if m.file_type().is_symlink() {
                            return Err(fail("mount on symlink", &t)(Errno::ELOOP));
                        } else if want == Kind::Dir {
                            return Err(fail("mount point", &t)(Errno::ENOTDIR));
                        } else {
                            return Err(fail("mount point", &t)(Errno::EISDIR));
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.writable(&cur)?;
                    self.create(&t, want)?;
                }
                Err(e) => return Err(io_fail("stat", &t)(e)),
            }
            cur = next;
        }
        Ok(inside(dst))
    }

    fn is_mount(&self, p: &Path) -> bool {
        self.mounts.iter().any(|(m, _)| m == p)
    }

    fn create(&self, t: &Path, kind: Kind) -> R<()> {
        match kind {
            Kind::Dir => mkdir(t, Mode::from_bits_truncate(0o755)).map_err(fail("mkdir", t)),
            Kind::File => create_file(t),
        }
    }

    fn hide(&mut self, dst: &Path) -> R<()> {
        let t = inside(dst);
        // The parent must be reached without symlinks (the entry itself may
        // be one: it is removed, not followed).
        match checked(&inside(dst.parent().unwrap_or(Path::new("/")))) {
            Err(f) if f.errno == Errno::ENOENT => return Ok(()),
            r => r?,
        }
        if fs::symlink_metadata(&t).is_err() {
            return Ok(());
        }
        let parent = dst.parent().unwrap_or(Path::new("/"));
        match self.backing(parent) {
            // populate() skipped it, unless it was created since: remove it.
            Backing::Ours => {
                if self.is_mount(dst) {
                    umount2(&t, MntFlags::MNT_DETACH).map_err(fail("umount2", &t))?;
                }
                let m = fs::symlink_metadata(&t).map_err(io_fail("stat", &t))?;
                if m.is_dir() {
                    fs::remove_dir(&t).map_err(io_fail("rmdir", &t))
                } else {
                    fs::remove_file(&t).map_err(io_fail("unlink", &t))
                }
            }
            Backing::Image(img) => self.skeleton(parent, &img),
            Backing::Foreign => Err(fail("hide", &t)(Errno::EROFS)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::Mount;

    fn builder(extra: Vec<Mount>) -> Builder {
        let mut spec = crate::spec::test_spec("/img", &["/bin/true"]);
        spec.mounts.extend(extra);
        Builder::new(&crate::plan::plan(&spec).unwrap())
    }

    #[test]
    fn a_directory_becomes_a_skeleton_only_when_it_must() {
        let img = tempfile::tempdir().unwrap();
        let etc = img.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        for f in ["passwd", "group", "hosts"] {
            fs::write(etc.join(f), "").unwrap();
        }
        let b = builder(vec![]);
        // Every synthesised file has a mount point, nothing to hide.
        assert!(!b.needs_skeleton(Path::new("/etc"), &etc));
        // A resolv.conf must disappear.
        fs::write(etc.join("resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
        assert!(b.needs_skeleton(Path::new("/etc"), &etc));
        fs::remove_file(etc.join("resolv.conf")).unwrap();
        // A missing mount point must be created.
        fs::remove_file(etc.join("hosts")).unwrap();
        assert!(b.needs_skeleton(Path::new("/etc"), &etc));

        // Deeper destinations: only the directory that lacks the next step.
        let usr = img.path().join("usr");
        fs::create_dir_all(usr.join("src")).unwrap();
        let b = builder(vec![Mount::Bind {
            src: "/x".into(),
            dst: "/usr/src/x".into(),
            writable: false,
        }]);
        assert!(!b.needs_skeleton(Path::new("/usr"), &usr));
        assert!(b.needs_skeleton(Path::new("/usr/src"), &usr.join("src")));
        // An unrelated directory never does.
        assert!(!b.needs_skeleton(Path::new("/etc/ssl"), &etc));
    }
}
