//! Consistent views of the kernel and the CPUs when a spec varies them
//! (`SandboxSpec.uname`, `.cpus`): the files of /proc (and of a `/sys` a
//! spec binds) that tell the same things are shown as read-only files made
//! at setup from what the sandbox's own /proc shows, with the varied values.
//! The text transformations are pure functions, unit-tested here; setup
//! (`setup.rs`) reads the current file, calls [`render`] and binds the result
//! from its staging tmpfs over the entry.

use serde::{Deserialize, Serialize};

/// What an [`crate::plan::Op::View`] shows instead of the kernel's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "view", rename_all = "kebab-case", deny_unknown_fields)]
pub enum View {
    /// `/proc/version` with another kernel release and version (the
    /// builder and compiler parts stay the host's).
    Version { release: String, version: String },
    /// `/proc/cpuinfo` listing only the CPUs the command may run on,
    /// numbered from 0 (as a container shows them).
    CpuInfo { cpus: u32 },
    /// `/proc/stat` with only those CPUs' `cpuN` lines, numbered from 0 (a
    /// snapshot taken at setup: glibc counts the CPUs there when there is
    /// no sysfs).
    Stat { cpus: u32 },
    /// A sysfs CPU list (`online`, `present`, `possible`): `0-(n-1)`, or
    /// `0`.
    CpuList { cpus: u32 },
}

impl View {
    /// For the plan's listing.
    pub fn what(&self) -> String {
        match self {
            View::Version { release, .. } => format!("with kernel release {release}"),
            View::CpuInfo { cpus } | View::Stat { cpus } | View::CpuList { cpus } => {
                format!("with {cpus} CPU(s) at most")
            }
        }
    }
}

/// The CPUs the command will run on when it keeps the first `n` of
/// `allowed` (the CPUs init may run on: `sched_setaffinity` in init keeps
/// the same ones).
pub(crate) fn kept(allowed: &[usize], n: u32) -> Vec<usize> {
    allowed.iter().copied().take(n as usize).collect()
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, nix::errno::Errno> {
    use nix::sched::{sched_getaffinity, CpuSet};
    let now = sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    let mut cpus = Vec::new();
    for cpu in 0..CpuSet::count() {
        if now.is_set(cpu)? {
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

/// The new contents of a viewed file: `current` is what the sandbox shows
/// now, `host_uname` the host's `(sysname, release, version)`, `allowed`
/// the CPUs init may run on.
pub(crate) fn render(
    view: &View,
    current: &str,
    host_uname: (&str, &str, &str),
    allowed: &[usize],
) -> String {
    match view {
        View::Version { release, version } => proc_version(current, host_uname, release, version),
        View::CpuInfo { cpus } => cpuinfo(current, &kept(allowed, *cpus)),
        View::Stat { cpus } => stat(current, &kept(allowed, *cpus)),
        View::CpuList { cpus } => cpu_list(kept(allowed, *cpus).len().max(1)),
    }
}

/// `Linux version <release> (<builder>) (<compiler>) <version>`: the
/// release after the sysname and the version at the end replaced; a text
/// of another shape is written anew from the sysname and the two values.
fn proc_version(
    current: &str,
    (sysname, host_release, host_version): (&str, &str, &str),
    release: &str,
    version: &str,
) -> String {
    let head = format!("{sysname} version {host_release} ");
    let line = current.trim_end_matches('\n');
    match line
        .strip_prefix(&head)
        .and_then(|rest| rest.strip_suffix(host_version))
    {
        Some(middle) => format!("{sysname} version {release} {middle}{version}\n"),
        None => format!("{sysname} version {release} {version}\n"),
    }
}

/// The number of a `processor : N` line.
fn processor_number(line: &str) -> Option<usize> {
    let (key, value) = line.split_once(':')?;
    if key.trim() != "processor" {
        return None;
    }
    value.trim().parse().ok()
}

/// Keeps the blank-line-separated blocks of `kept` CPUs (the block that
/// starts with `processor : N`), renumbered in order; blocks without a
/// processor line (a trailer on some architectures) stay as they are.
fn cpuinfo(current: &str, kept: &[usize]) -> String {
    let mut out = String::new();
    let mut next = 0usize;
    for block in current.split_inclusive("\n\n") {
        let mut lines = block.lines();
        let first = lines.next().unwrap_or("");
        match processor_number(first) {
            Some(n) if kept.contains(&n) => {
                let (key, _) = first.split_once(':').unwrap_or((first, ""));
                out.push_str(&format!("{key}: {next}\n"));
                next += 1;
                let rest = block.get(first.len()..).unwrap_or("");
                out.push_str(rest.strip_prefix('\n').unwrap_or(rest));
            }
            Some(_) => {}
            None => out.push_str(block),
        }
    }
    out
}

/// Keeps the `cpuN` lines of `kept` CPUs, renumbered in order; every other
/// line (the `cpu` total too) stays.
fn stat(current: &str, kept: &[usize]) -> String {
    let mut out = String::new();
    let mut next = 0usize;
    for line in current.split_inclusive('\n') {
        let word = line.split_whitespace().next().unwrap_or("");
        match word
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if kept.contains(&n) => {
                out.push_str(&format!("cpu{next}{}", &line[word.len()..]));
                next += 1;
            }
            Some(_) => {}
            None => out.push_str(line),
        }
    }
    out
}

/// A sysfs CPU list of `n` CPUs numbered from 0.
fn cpu_list(n: usize) -> String {
    if n <= 1 {
        "0\n".into()
    } else {
        format!("0-{}\n", n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncore id\t\t: 0\n\n\
                           processor\t: 1\nvendor_id\t: GenuineIntel\ncore id\t\t: 1\n\n\
                           processor\t: 2\nvendor_id\t: GenuineIntel\ncore id\t\t: 2\n\n";

    #[test]
    fn cpuinfo_keeps_the_allowed_cpus_numbered_from_0() {
        assert_eq!(
            cpuinfo(CPUINFO, &[2]),
            "processor\t: 0\nvendor_id\t: GenuineIntel\ncore id\t\t: 2\n\n"
        );
        assert_eq!(cpuinfo(CPUINFO, &[0, 1, 2]), CPUINFO);
        assert_eq!(
            cpuinfo("processor : 3\n\nprocessor : 4\n", &[3, 4]),
            "processor : 0\n\nprocessor : 1\n"
        );
        let two = cpuinfo(CPUINFO, &[1, 2]);
        assert_eq!(two.matches("processor").count(), 2);
        assert!(two.starts_with("processor\t: 0\n") && two.contains("processor\t: 1\n"));
        // A trailer without a processor line stays.
        let arm =
            "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n\nHardware\t: X\n";
        assert_eq!(
            cpuinfo(arm, &[1]),
            "processor\t: 0\nBogoMIPS\t: 50\n\nHardware\t: X\n"
        );
    }

    #[test]
    fn stat_keeps_the_allowed_cpu_lines() {
        let s = "cpu  9 9 9\ncpu0 1 1 1\ncpu1 2 2 2\ncpu10 3 3 3\nintr 5 0\nctxt 7\n";
        assert_eq!(stat(s, &[1]), "cpu  9 9 9\ncpu0 2 2 2\nintr 5 0\nctxt 7\n");
        assert_eq!(
            stat(s, &[0, 10]),
            "cpu  9 9 9\ncpu0 1 1 1\ncpu1 3 3 3\nintr 5 0\nctxt 7\n"
        );
    }

    #[test]
    fn cpu_lists_and_the_kept_cpus() {
        assert_eq!(cpu_list(1), "0\n");
        assert_eq!(cpu_list(4), "0-3\n");
        assert_eq!(kept(&[1, 3, 5], 2), [1, 3]);
        // More than there are: all of them (affinity only takes away).
        assert_eq!(kept(&[1, 3], 8), [1, 3]);
        let v = View::CpuList { cpus: 8 };
        assert_eq!(render(&v, "0-63\n", ("Linux", "r", "v"), &[0, 1]), "0-1\n");
    }

    #[test]
    fn proc_version_takes_the_varied_release_and_version() {
        let host = (
            "Linux",
            "6.1.0-13-amd64",
            "#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1",
        );
        let text = "Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1\n";
        assert_eq!(
            proc_version(text, host, "4.4.0-hermit-check", "#1 SMP hermit-check-variant"),
            "Linux version 4.4.0-hermit-check (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP hermit-check-variant\n"
        );
        // Another shape: written anew, never the host's release.
        assert_eq!(
            proc_version("odd\n", host, "4.4.0-x", "#2"),
            "Linux version 4.4.0-x #2\n"
        );
    }
}
