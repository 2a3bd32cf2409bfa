//! Why a file differs: the differing bytes of the control's and the
//! variant's copy, read for the values the variation changed.
//!
//! A variation knows what it changed ([`Marker`]s: the build path, the user
//! name, the kernel release, …, each with the control's and the variant's
//! value). A file whose differing bytes hold a variant value that the
//! control's differing bytes do not is named with that value's cause, and
//! the value is the evidence. Without such a value, the shape of the
//! difference may still say it (the same lines in another order, a time
//! stamp near the clock the build ran under, a memory address); otherwise
//! the cause is the variation's own, said as inferred from the variation
//! alone.

use std::time::{SystemTime, UNIX_EPOCH};

use hermit_sandbox::SandboxSpec;

/// The reproducible-builds causes, as the report names them.
pub const BUILD_PATH: &str = "build path";
pub const USER: &str = "user information";
pub const HOSTNAME: &str = "system DNS name (host and domain name)";
pub const KERNEL: &str = "kernel version (uname -r/-v)";
pub const ARCH: &str = "architecture information (uname)";
pub const UMASK: &str = "file permissions (umask)";
pub const LOCALE: &str = "locale / file encoding";
pub const TIMEZONE: &str = "time zone";
pub const RANDOM: &str = "randomness / snippet encoding (random seeds)";
pub const CPUS: &str = "CPU count";
pub const JOBS: &str = "parallelism (HERMIT_JOBS)";
pub const TIMESTAMP: &str = "build timestamp (the clock)";
pub const ORDERING: &str = "filesystem ordering";
pub const ARCHIVE: &str = "archive metadata (mtimes, owners, modes of the sources)";
pub const PACKAGES: &str = "package dependencies (an extra package present)";
pub const ADDRESSES: &str = "references to memory addresses (ASLR)";
pub const MALLOC: &str = "uninitialised memory";
pub const ENVIRONMENT: &str = "environment";

/// One value a variation changed: what the control had and what the
/// variant has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub cause: &'static str,
    /// What it is ("the build path").
    pub what: String,
    pub control: String,
    pub variant: String,
}

impl Marker {
    pub fn new(cause: &'static str, what: &str, control: &str, variant: &str) -> Marker {
        Marker {
            cause,
            what: what.to_string(),
            control: control.to_string(),
            variant: variant.to_string(),
        }
    }
}

/// The values that differ between the sandbox a variation started from and
/// the one it made.
pub fn spec_markers(before: &SandboxSpec, after: &SandboxSpec) -> Vec<Marker> {
    let mut m = Vec::new();
    let mut add = |cause, what: &str, c: String, v: String| {
        if c != v && !v.is_empty() {
            m.push(Marker::new(cause, what, &c, &v));
        }
    };
    let path = |p: &std::path::Path| p.display().to_string();
    add(
        BUILD_PATH,
        "the build path",
        path(&before.cwd),
        path(&after.cwd),
    );
    add(
        HOSTNAME,
        "the host name",
        before.hostname.clone(),
        after.hostname.clone(),
    );
    add(
        HOSTNAME,
        "the domain name",
        before.domainname.clone(),
        after.domainname.clone(),
    );
    add(
        USER,
        "the user name",
        before.user.clone(),
        after.user.clone(),
    );
    add(
        USER,
        "the group name",
        before.group.clone(),
        after.group.clone(),
    );
    add(
        USER,
        "the uid",
        before.uid.to_string(),
        after.uid.to_string(),
    );
    add(
        USER,
        "the gid",
        before.gid.to_string(),
        after.gid.to_string(),
    );
    add(
        USER,
        "the home directory",
        path(&before.home),
        path(&after.home),
    );
    if before.umask != after.umask {
        add(
            UMASK,
            "the umask",
            format!("{:04o}", before.umask),
            format!("{:04o}", after.umask),
        );
    }
    if before.cpus != after.cpus {
        let host = crate::pipeline::resolve::host_cpus();
        let n = |c: Option<u32>| c.unwrap_or(host).to_string();
        add(CPUS, "the CPU count", n(before.cpus), n(after.cpus));
    }
    if !before.linux32 && after.linux32 {
        let (from, to) = match std::env::consts::ARCH {
            "aarch64" => ("aarch64", "armv8l"),
            _ => ("x86_64", "i686"),
        };
        add(ARCH, "the machine name", from.into(), to.into());
    }
    if let Some(u) = &after.uname {
        let real = |f: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        add(
            KERNEL,
            "the kernel release",
            real("osrelease"),
            u.release.clone(),
        );
        add(
            KERNEL,
            "the kernel version",
            real("version"),
            u.version.clone(),
        );
    }
    let get = |s: &SandboxSpec, k: &str| {
        s.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut names: Vec<&str> = after.env.iter().map(|(k, _)| k.as_str()).collect();
    names.sort();
    names.dedup();
    for k in names {
        let (c, v) = (get(before, k), get(after, k));
        if c == v {
            continue;
        }
        let cause = match k {
            "LANG" | "LC_ALL" | "LC_COLLATE" | "LC_CTYPE" => LOCALE,
            "TZ" => TIMEZONE,
            "PYTHONHASHSEED" | "PERL_HASH_SEED" | "PERL_PERTURB_KEYS" => RANDOM,
            "USER" | "LOGNAME" | "HOME" => USER,
            "MALLOC_PERTURB_" => MALLOC,
            _ => ENVIRONMENT,
        };
        add(cause, &format!("${k}"), c.clone(), v.clone());
        if k == "TZ" {
            // A POSIX zone `NAME-HH:MM` shows as the offset it gives.
            if let Some((_, off)) = v.split_once('-') {
                add(cause, "the time zone's offset", String::new(), off.into());
                add(
                    cause,
                    "the time zone's offset",
                    String::new(),
                    off.replace(':', ""),
                );
            }
        }
        if cause == LOCALE {
            if let Some((lang, _)) = v.split_once('.') {
                add(cause, "the locale's language", String::new(), lang.into());
            }
        }
    }
    m.dedup();
    m
}

/// The cause of one differing file and what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub cause: String,
    pub evidence: String,
}

/// How much of a file is read for this.
pub const READ_CAP: usize = 16 << 20;
/// Context kept on each side of the differing bytes: a varied value that
/// starts in the common part (`/build` → `/build-…`) is still seen whole.
const CONTEXT: usize = 96;

/// Classifies one differing file from its two copies' bytes. `markers` are
/// the varied values (the triggering variation's first); `cause` is the
/// variation's own cause, given when nothing in the bytes says more;
/// `variation` its name; `now` the time of the check, in seconds since the
/// epoch; `clock_offset` how far the variant's clock was moved, in seconds.
pub fn classify(
    variation: &str,
    cause: &str,
    markers: &[Marker],
    control: &[u8],
    variant: &[u8],
    now: i64,
    clock_offset: i64,
) -> Found {
    let (c, v) = differing(control, variant);
    // 1. A varied value in the variant's differing bytes, not in the
    //    control's.
    for m in markers {
        if m.variant.is_empty() {
            continue;
        }
        let needle = m.variant.as_bytes();
        // One- and two-character values (a CPU count, a job count) are
        // believed only when they are all that differs.
        if needle.len() <= 2 {
            if trim(v) == needle && !m.control.is_empty() && trim(c) == m.control.as_bytes() {
                return found(m, &format!("{} is all that differs", shown(m)));
            }
            continue;
        }
        if contains(v, needle) && !contains(c, needle) {
            return found(
                m,
                &format!("the variant's differing bytes hold {}", shown(m)),
            );
        }
    }
    // 2. The shape of the difference.
    if same_lines_reordered(control, variant) {
        let c = match variation {
            "locale" => LOCALE,
            "dirorder" => ORDERING,
            _ => cause,
        };
        return Found {
            cause: c.to_string(),
            evidence: "the same lines in another order (a sort order or a directory listing)"
                .into(),
        };
    }
    if let Some(t) = timestamp_near(v, c, now + clock_offset) {
        return Found {
            cause: TIMESTAMP.to_string(),
            evidence: if clock_offset != 0 {
                format!("a time stamp ({t}) near the variant's moved clock")
            } else {
                format!("a time stamp ({t}) near the time of the build")
            },
        };
    }
    if variation == "clock" && clock_offset != 0 {
        let year = |t: i64| 1970 + t / 31_556_952;
        let y = year(now + clock_offset).to_string();
        if contains(v, y.as_bytes()) && !contains(c, y.as_bytes()) {
            return Found {
                cause: TIMESTAMP.to_string(),
                evidence: format!("the year of the variant's moved clock ({y})"),
            };
        }
    }
    if addresses(v) && addresses(c) {
        return Found {
            cause: if variation == "aslr" {
                ADDRESSES
            } else {
                cause
            }
            .to_string(),
            evidence: "memory addresses (0x7f… / 7ff… hexadecimal) differ".into(),
        };
    }
    Found {
        cause: cause.to_string(),
        evidence: format!("inferred from the variation ({variation}) alone: no varied value found in the differing bytes"),
    }
}

fn found(m: &Marker, evidence: &str) -> Found {
    Found {
        cause: m.cause.to_string(),
        evidence: evidence.to_string(),
    }
}

fn shown(m: &Marker) -> String {
    if m.control.is_empty() {
        format!("{} {:?}", m.what, m.variant)
    } else {
        format!("{} {:?} (control: {:?})", m.what, m.variant, m.control)
    }
}

/// The differing middle of two byte strings (after their common prefix and
/// suffix), each widened by [`CONTEXT`] bytes.
fn differing<'a>(a: &'a [u8], b: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let max_s = a.len().min(b.len()) - p;
    let s = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_s)
        .take_while(|(x, y)| x == y)
        .count();
    let cut = |x: &'a [u8]| {
        let start = p.saturating_sub(CONTEXT);
        let end = (x.len() - s + CONTEXT).min(x.len());
        &x[start..end]
    };
    (cut(a), cut(b))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The same multiset of lines, not in the same order.
fn same_lines_reordered(a: &[u8], b: &[u8]) -> bool {
    if a == b || a.len() != b.len() || !a.contains(&b'\n') {
        return false;
    }
    fn lines(x: &[u8]) -> Vec<&[u8]> {
        let mut l: Vec<&[u8]> = x.split(|c| *c == b'\n').collect();
        l.sort_unstable();
        l
    }
    lines(a) == lines(b)
}

/// A ten-digit decimal number in `v` (and not in `c`) within two days of
/// `around`.
fn timestamp_near(v: &[u8], c: &[u8], around: i64) -> Option<i64> {
    let mut i = 0;
    while i < v.len() {
        if !v[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let j = i + v[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if j - i == 10 {
            let t: i64 = std::str::from_utf8(&v[i..j]).ok()?.parse().ok()?;
            if (t - around).abs() <= 2 * 86_400 && !contains(c, &v[i..j]) {
                return Some(t);
            }
        }
        i = j;
    }
    None
}

/// Holds something that looks like a user-space address of a 64-bit
/// process (`0x7f…` or `7ff…` followed by hex digits).
fn addresses(b: &[u8]) -> bool {
    b.windows(10).any(|w| {
        (w.starts_with(b"7ff")
            || w.starts_with(b"7fe")
            || w.starts_with(b"55")
            || w.starts_with(b"56"))
            && w.iter().all(u8::is_ascii_hexdigit)
    })
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn run(variation: &str, cause: &str, markers: &[Marker], c: &str, v: &str) -> Found {
        classify(
            variation,
            cause,
            markers,
            c.as_bytes(),
            v.as_bytes(),
            NOW,
            0,
        )
    }

    #[test]
    fn a_varied_value_in_the_variant_names_its_cause() {
        let m = [Marker::new(
            BUILD_PATH,
            "the build path",
            "/build",
            "/hermit-check-build-path",
        )];
        let f = run(
            "buildpath",
            BUILD_PATH,
            &m,
            "CFLAGS=-g -ffile-prefix-map=/build=.\nsrc: /build/src/main.c\n",
            "CFLAGS=-g -ffile-prefix-map=/build=.\nsrc: /hermit-check-build-path/src/main.c\n",
        );
        assert_eq!(f.cause, BUILD_PATH);
        assert!(f.evidence.contains("/hermit-check-build-path"), "{f:?}");
        // A value present on both sides is no evidence.
        let f = run(
            "buildpath",
            "other",
            &m,
            "/hermit-check-build-path x=1\n",
            "/hermit-check-build-path x=2\n",
        );
        assert_eq!(f.cause, "other");
        assert!(f.evidence.contains("alone"), "{f:?}");
    }

    #[test]
    fn each_varied_value_is_found_in_binary_bytes_too() {
        let cases = [
            (USER, "checker", "builder"),
            (HOSTNAME, "hermit-check-variant", "localhost"),
            (KERNEL, "4.4.0-hermit-check", "6.1.0-13-amd64"),
            (ARCH, "i686", "x86_64"),
            (UMASK, "0002", "0022"),
            (LOCALE, "fr_FR.ISO-8859-1", "C.UTF-8"),
            (ARCHIVE, "2000000000", "315532800"),
            (PACKAGES, "hermit-check-extra", ""),
        ];
        for (cause, variant, control) in cases {
            let m = [Marker::new(cause, "a value", control, variant)];
            let mut c = b"\x7fELF\x02\x01\x01\0\0\0".to_vec();
            let mut v = c.clone();
            c.extend_from_slice(control.as_bytes());
            v.extend_from_slice(variant.as_bytes());
            c.extend_from_slice(b"\0\0tail");
            v.extend_from_slice(b"\0\0tail");
            let f = classify("x", "fallback", &m, &c, &v, NOW, 0);
            assert_eq!(f.cause, cause, "{variant}: {f:?}");
        }
    }

    #[test]
    fn the_first_matching_marker_wins_and_short_values_must_be_all_that_differs() {
        let m = [
            Marker::new(CPUS, "the CPU count", "2", "1"),
            Marker::new(JOBS, "HERMIT_JOBS", "2", "1"),
        ];
        assert_eq!(run("cpus", CPUS, &m, "2\n", "1\n").cause, CPUS);
        let m2 = [m[1].clone(), m[0].clone()];
        assert_eq!(run("jobs", JOBS, &m2, "2\n", "1\n").cause, JOBS);
        // "1" somewhere in a long difference says nothing.
        let f = run(
            "cpus",
            "fallback",
            &m,
            "built at 12:00\n",
            "built at 13:10\n",
        );
        assert_eq!(f.cause, "fallback");
    }

    #[test]
    fn reordered_lines_are_ordering_or_collation() {
        let (c, v) = ("a\nB\nc\n", "B\na\nc\n");
        assert_eq!(run("locale", LOCALE, &[], c, v).cause, LOCALE);
        assert_eq!(run("dirorder", ORDERING, &[], c, v).cause, ORDERING);
        let f = run("cpus", CPUS, &[], c, v);
        assert!(f.evidence.contains("another order"), "{f:?}");
        // Not a permutation: a changed line.
        assert!(!run("locale", "x", &[], "a\nb\n", "a\nc\n")
            .evidence
            .contains("order"));
    }

    #[test]
    fn time_stamps_near_the_clock_are_the_build_timestamp() {
        let f = run(
            "repeat",
            "plain",
            &[],
            &format!("built {}\n", NOW - 5),
            &format!("built {}\n", NOW + 7),
        );
        assert_eq!(f.cause, TIMESTAMP);
        // Under the moved clock: near now + the offset.
        let off = 3653 * 86_400;
        let f = classify(
            "clock",
            TIMESTAMP,
            &[],
            format!("t={}\n", NOW).as_bytes(),
            format!("t={}\n", NOW + off + 3).as_bytes(),
            NOW,
            off,
        );
        assert_eq!(f.cause, TIMESTAMP);
        assert!(f.evidence.contains("moved clock"), "{f:?}");
        let f = classify("clock", TIMESTAMP, &[], b"2027\n", b"2037\n", NOW, off);
        assert!(f.evidence.contains("year"), "{f:?}");
        // A ten-digit number far from the clock is not a time stamp.
        let f = run("repeat", "plain", &[], "id 1000000000\n", "id 1000000001\n");
        assert_eq!(f.cause, "plain");
    }

    #[test]
    fn addresses_under_aslr() {
        let f = run(
            "aslr",
            ADDRESSES,
            &[],
            "7ffc1234a000-7ffc1236b000\n",
            "7ffd99f0c000-7ffd99f2d000\n",
        );
        assert_eq!(f.cause, ADDRESSES);
        assert!(f.evidence.contains("addresses"), "{f:?}");
    }

    #[test]
    fn markers_come_from_what_the_variation_changed_in_the_sandbox() {
        let before = hermit_sandbox::SandboxSpec {
            cwd: "/build".into(),
            ..crate::check::tests_support::spec()
        };
        let mut after = before.clone();
        after.cwd = "/hermit-check-build-path".into();
        after.user = "checker".into();
        after.set_env("TZ", "CHK-13:45");
        after.set_env("LANG", "fr_FR.ISO-8859-1");
        after.clock_offset = Some(86_400);
        after.uname = Some(hermit_sandbox::Uname {
            release: "4.4.0-hermit-check".into(),
            version: "#1".into(),
        });
        let m = spec_markers(&before, &after);
        let has = |cause: &str, v: &str| m.iter().any(|x| x.cause == cause && x.variant == v);
        assert!(has(BUILD_PATH, "/hermit-check-build-path"), "{m:?}");
        assert!(has(USER, "checker"), "{m:?}");
        assert!(has(TIMEZONE, "13:45") && has(TIMEZONE, "1345"), "{m:?}");
        assert!(has(LOCALE, "fr_FR"), "{m:?}");
        assert!(has(KERNEL, "4.4.0-hermit-check"), "{m:?}");
        // The moved clock is no value to look for (its time stamps are).
        assert!(!m.iter().any(|x| x.variant.contains("86400")), "{m:?}");
        assert!(spec_markers(&before, &before).is_empty());
    }
}
