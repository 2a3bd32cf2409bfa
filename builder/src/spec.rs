//! The spec: `spec.toml`, what a user writes to describe one build.
//!
//! Parsing happens in two steps. First `toml` + serde read the file into
//! `Raw*` structs (every table `deny_unknown_fields`, every value that needs
//! checking wrapped in [`toml::Spanned`] so we know where it was written);
//! then [`Spec::parse`] checks each value and builds the typed [`Spec`],
//! which cannot hold garbage: digests are [`Digest`]s, URLs have an allowed
//! scheme, names are safe path components, the toolchain is exactly one
//! kind. Every error names the file, line and column and says what to write
//! instead. The format is documented for users in `docs/spec.md`.
//!
//! Format version: an optional top-level `hermit = 1`. A spec without it is
//! read as version 1; any other number is refused, so a future format can
//! change meanings without old hermits misreading it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hermit_store::{Digest, Url};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The spec format version this hermit reads and writes.
pub const SPEC_FORMAT: u32 = 1;

/// URL schemes a source or mirror may use.
pub const URL_SCHEMES: &[&str] = &["http", "https", "file"];

/// Why a spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading spec {path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}{}", help_suffix(help))]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
        help: Option<String>,
    },
}

fn help_suffix(help: &Option<String>) -> String {
    help.as_ref()
        .map(|h| format!("\n  help: {h}"))
        .unwrap_or_default()
}

/// The longest `[build] timeout` a spec may ask for: a record is untrusted
/// input, and its spec must not hold a sandbox open for years.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A parsed, checked spec.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// Spec format version (`hermit = 1`).
    pub format: u32,
    /// The file it was read from, as given.
    #[serde(skip)]
    pub file: PathBuf,
    pub package: Package,
    pub toolchain: Toolchain,
    pub sources: Vec<Source>,
    pub build: Build,
    pub env: BTreeMap<String, String>,
    pub inputs: BTreeMap<String, Input>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// The root filesystem the build runs over; exactly one kind.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Toolchain {
    /// `image = "HOST/NAME[:TAG]@sha256:<hex>"`, pulled by digest.
    Image {
        reference: String,
        repository: String,
        digest: Digest,
    },
    /// `oci = "PATH"` (an OCI layout or archive, relative to the spec) with
    /// the `digest` of its manifest.
    Oci { path: String, digest: Digest },
    /// `debian = { suite, include, mirror? }`, bootstrapped and pinned by the lock.
    Debian {
        suite: String,
        include: Vec<String>,
        mirror: Option<String>,
    },
    /// `input = "NAME"`: the output of the `[inputs]` entry NAME is the root
    /// filesystem (a toolchain built by hermit). Pinned by that output's
    /// digest, so no lock.
    Input { name: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub name: String,
    #[serde(flatten)]
    pub kind: SourceKind,
    /// Where the source's `path` (or, for a download, its table) was
    /// written, for errors found after parsing (see [`Spec::error_at`]).
    #[serde(skip)]
    pub at: Position,
}

/// A 1-based line and column in the spec file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum SourceKind {
    /// Downloaded bytes, pinned by sha256.
    Remote {
        urls: Vec<String>,
        sha256: Digest,
        size: Option<u64>,
        /// Present when `unpack = true`.
        unpack: Option<Unpack>,
    },
    /// A local directory tree (relative to the spec's directory).
    Local {
        path: String,
        include: Vec<String>,
        exclude: Vec<String>,
    },
}

/// How to unpack an archive source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unpack {
    pub strip_components: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub script: String,
    /// Wall-clock limit in seconds.
    pub timeout: Option<u64>,
    /// Lowers the profile's memory limit (MiB); never raises it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Lowers the profile's limit on what /build and /out hold (MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Lowers the profile's build log limit (MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_mib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    /// Path of the dependency's spec, relative to this spec.
    pub spec: String,
    /// Where its `spec` is written.
    #[serde(skip)]
    pub at: Position,
}

// ---- raw, as serde reads it ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    hermit: Option<Spanned<i64>>,
    package: RawPackage,
    // Not `Spanned` (nor is `debian` below): toml 0.8 cannot give the span
    // of a table written with dotted keys or only through a sub-table
    // header (`[toolchain.debian]`), and refuses such a spec instead.
    toolchain: RawToolchain,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
    build: RawBuild,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    inputs: BTreeMap<Spanned<String>, RawInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: Spanned<String>,
    version: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolchain {
    image: Option<Spanned<String>>,
    input: Option<Spanned<String>>,
    oci: Option<Spanned<String>>,
    digest: Option<Spanned<String>>,
    debian: Option<RawDebian>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebian {
    suite: Spanned<String>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    mirror: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    sha256: Option<Spanned<String>>,
    size: Option<Spanned<u64>>,
    unpack: Option<Spanned<bool>>,
    strip_components: Option<Spanned<u32>>,
    path: Option<Spanned<String>>,
    include: Option<Spanned<Vec<String>>>,
    exclude: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    script: Spanned<String>,
    timeout: Option<Spanned<u64>>,
    memory_mib: Option<Spanned<u64>>,
    disk_mib: Option<Spanned<u64>>,
    log_mib: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    spec: Spanned<String>,
}

/// A `[build]` limit in MiB: positive when given.
fn positive_mib(
    cx: &Ctx<'_>,
    field: &str,
    v: &Option<Spanned<u64>>,
) -> Result<Option<u64>, SpecError> {
    match v {
        Some(m) if *m.get_ref() == 0 => Err(cx.err(
            m.span(),
            format!("build {field} must be a positive number of MiB"),
            Some(format!(
                "write e.g. `{field} = 512` to lower the profile's limit, or leave it out"
            )),
        )),
        Some(m) => Ok(Some(*m.get_ref())),
        None => Ok(None),
    }
}

/// The expected form of a source digest, shown in errors.
const SHA256_FORM: &str = "sha256 = \"<64 lowercase hex digits>\"";

/// Names the environment of the build already defines; `[env]` may not set them.
const RESERVED_ENV: &[&str] = &["out", "HERMIT_JOBS", "SOURCE_DATE_EPOCH"];

struct Ctx<'a> {
    file: String,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> SpecError {
        let (line, column) = line_col(self.text, span.start);
        SpecError::Invalid {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
            help,
        }
    }
}

impl Ctx<'_> {
    fn pos(&self, span: Range<usize>) -> Position {
        let (line, column) = line_col(self.text, span.start);
        Position { line, column }
    }
}

/// A local source's `path` stays inside the project: the spec's directory
/// and below. Absolute paths and `..` components are refused here; symlinks
/// leading out are refused when the tree is read (`hermit build`).
fn check_local_path(cx: &Ctx, v: &Spanned<String>, name: &str) -> Result<(), SpecError> {
    let p = v.get_ref();
    let why = if p.starts_with('/') {
        "is an absolute path"
    } else if p.split('/').any(|c| c == "..") {
        "has a `..` component"
    } else {
        return Ok(());
    };
    Err(cx.err(
        v.span(),
        format!("local source {name:?}: path {p:?} {why}; local sources must lie inside the project (the spec's directory and below)"),
        Some("write a path relative to the spec's directory without `..` (e.g. \"src\" or \".\"); move or copy files from elsewhere into the project, or publish them as a download with `urls` and `sha256`".to_string()),
    ))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

impl Spec {
    /// Reads and checks the spec at `path`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = crate::limits::read_text(path, crate::limits::MAX_SPEC).map_err(|source| {
            SpecError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Spec::parse(path, &text)
    }

    /// Checks `text` (read from `path`, used in messages) and builds the spec.
    pub fn parse(path: &Path, text: &str) -> Result<Spec, SpecError> {
        let cx = Ctx {
            file: path.display().to_string(),
            text,
        };
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            // toml gives no message at all for some syntax errors, such as
            // a `key =` with nothing after it.
            if message.is_empty() {
                return cx.err(
                    e.span().unwrap_or(0..0),
                    "invalid TOML: a value is missing or malformed here",
                    Some("write a value after `=`: a \"string\", a number, true or false, [an array] or { a table }".to_string()),
                );
            }
            let help = if message.starts_with("unknown field") {
                Some("remove it, or use one of the fields listed (see docs/spec.md)".to_string())
            } else {
                message
                    .strip_prefix("missing field ")
                    .map(|rest| format!("add {rest} to this table (see docs/spec.md)"))
            };
            cx.err(e.span().unwrap_or(0..0), message, help)
        })?;

        let format = match &raw.hermit {
            None => SPEC_FORMAT,
            Some(v) if *v.get_ref() == i64::from(SPEC_FORMAT) => SPEC_FORMAT,
            Some(v) => {
                return Err(cx.err(
                    v.span(),
                    format!("spec format {} is not known to this hermit", v.get_ref()),
                    Some(format!(
                        "this hermit reads `hermit = {SPEC_FORMAT}`; upgrade hermit or write the spec in format {SPEC_FORMAT}"
                    )),
                ))
            }
        };

        let package = Package {
            name: check_name(&cx, &raw.package.name, "package name")?,
            version: nonempty(&cx, &raw.package.version, "package version")?,
        };
        let toolchain = parse_toolchain(&cx, &raw.toolchain)?;

        let mut sources: Vec<Source> = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for s in &raw.source {
            let src = parse_source(&cx, s)?;
            // The offset, not the line: counting lines for every source would
            // make parsing quadratic in the spec's length.
            if let Some(first) = seen.insert(src.name.clone(), s.span().start) {
                let (line, _) = line_col(text, first);
                return Err(cx.err(
                    s.get_ref().name.span(),
                    format!(
                        "duplicate source name {:?} (already used by the [[source]] at line {line})",
                        src.name
                    ),
                    Some("give every [[source]] a different `name`".to_string()),
                ));
            }
            sources.push(src);
        }

        let build = Build {
            script: raw.build.script.get_ref().clone(),
            timeout: match &raw.build.timeout {
                Some(t) if *t.get_ref() == 0 || *t.get_ref() > MAX_TIMEOUT_SECS => {
                    return Err(cx.err(
                        t.span(),
                        format!(
                            "build timeout must be a positive number of seconds, at most {MAX_TIMEOUT_SECS} (7 days)"
                        ),
                        Some("write e.g. `timeout = 3600`, or leave it out".to_string()),
                    ))
                }
                Some(t) => Some(*t.get_ref()),
                None => None,
            },
            memory_mib: positive_mib(&cx, "memory_mib", &raw.build.memory_mib)?,
            disk_mib: positive_mib(&cx, "disk_mib", &raw.build.disk_mib)?,
            log_mib: positive_mib(&cx, "log_mib", &raw.build.log_mib)?,
        };
        if build.script.trim().is_empty() {
            return Err(cx.err(
                raw.build.script.span(),
                "build script is empty",
                Some("write the commands to run in `script = \"\"\"...\"\"\"`".to_string()),
            ));
        }

        let mut env = BTreeMap::new();
        for (k, v) in &raw.env {
            let key = k.get_ref();
            let valid = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(cx.err(
                    k.span(),
                    format!("{key:?} is not a valid environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit".to_string()),
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return Err(cx.err(
                    k.span(),
                    format!("{key} is set by hermit itself and cannot be overridden in [env]"),
                    Some(format!(
                        "remove it; hermit reserves {}",
                        RESERVED_ENV.join(", ")
                    )),
                ));
            }
            env.insert(key.clone(), v.clone());
        }

        let mut inputs = BTreeMap::new();
        for (k, v) in &raw.inputs {
            let name = check_name(&cx, k, "input name")?;
            let spec = nonempty(&cx, &v.spec, "input spec path")?;
            let at = cx.pos(v.spec.span());
            inputs.insert(name, Input { spec, at });
        }
        if let (Toolchain::Input { name }, Some(span)) =
            (&toolchain, raw.toolchain.input.as_ref().map(|i| i.span()))
        {
            if !inputs.contains_key(name) {
                return Err(cx.err(
                    span,
                    format!("the toolchain is input {name:?}, but [inputs] has no {name:?}"),
                    Some(format!(
                        "add it: [inputs] {name} = {{ spec = \"PATH/spec.toml\" }}"
                    )),
                ));
            }
        }

        Ok(Spec {
            format,
            file: path.to_path_buf(),
            package,
            toolchain,
            sources,
            build,
            env,
            inputs,
        })
    }

    /// An error about something written at `at` in this spec, found after
    /// parsing (e.g. a local source's path leading outside the project).
    pub fn error_at(&self, at: Position, message: String, help: Option<String>) -> SpecError {
        SpecError::Invalid {
            file: self.file.display().to_string(),
            line: at.line,
            column: at.column,
            message,
            help,
        }
    }

    // Used by the golden tests now and by the record later.
    #[cfg_attr(not(test), allow(dead_code))]
    /// The spec as canonical JSON: sorted keys, two-space indent, newline at
    /// the end. The same spec always gives the same bytes.
    pub fn canonical_json(&self) -> Result<String, serde_json::Error> {
        // serde_json's Value keeps object keys sorted (BTreeMap).
        let v = serde_json::to_value(self)?;
        let mut s = serde_json::to_string_pretty(&v)?;
        s.push('\n');
        Ok(s)
    }
}

fn nonempty(cx: &Ctx, v: &Spanned<String>, what: &str) -> Result<String, SpecError> {
    if v.get_ref().trim().is_empty() {
        return Err(cx.err(v.span(), format!("{what} is empty"), None));
    }
    Ok(v.get_ref().clone())
}

/// 1 to 128 of A-Z a-z 0-9 . _ - +, not starting with `.`: the rule for
/// names that become path components (package, sources, inputs).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// A name that becomes a path component (`/sources/<name>`, `/inputs/<name>`).
fn check_name(cx: &Ctx, v: &Spanned<String>, what: &str) -> Result<String, SpecError> {
    let s = v.get_ref();
    if !is_valid_name(s) {
        return Err(cx.err(
            v.span(),
            format!("{what} {s:?} is not allowed"),
            Some(
                "use 1 to 128 of the characters A-Z a-z 0-9 . _ - +, not starting with `.`"
                    .to_string(),
            ),
        ));
    }
    Ok(s.clone())
}

fn check_url(cx: &Ctx, v: &Spanned<String>) -> Result<String, SpecError> {
    let s = v.get_ref();
    let url = Url::parse(s).map_err(|e| {
        cx.err(
            v.span(),
            format!("{s:?} is not a valid URL: {e}"),
            Some("write a full URL such as \"https://example.org/file.tar.gz\"".to_string()),
        )
    })?;
    if !URL_SCHEMES.contains(&url.scheme()) {
        return Err(cx.err(
            v.span(),
            format!("URL scheme {:?} is not supported in {s:?}", url.scheme()),
            Some("use an http://, https:// or file:// URL".to_string()),
        ));
    }
    Ok(s.clone())
}

/// Where the toolchain table is written (`[toolchain`, or a line starting
/// with `toolchain`), for errors about the table as a whole.
fn toolchain_span(text: &str) -> Range<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("[toolchain") || t.starts_with("toolchain") {
            let at = offset + (line.len() - t.len());
            return at..at;
        }
        offset += line.len();
    }
    0..0
}

fn parse_toolchain(cx: &Ctx, r: &RawToolchain) -> Result<Toolchain, SpecError> {
    let span = toolchain_span(cx.text);
    let kinds = [
        r.image.is_some(),
        r.oci.is_some(),
        r.debian.is_some(),
        r.input.is_some(),
    ];
    let n = kinds.iter().filter(|k| **k).count();
    let one_of = "write exactly one of `image = \"HOST/NAME@sha256:<64 hex>\"`, `oci = \"PATH\"` with `digest = \"sha256:<64 hex>\"`, `debian = { suite = \"bookworm\", include = [...] }`, or `input = \"NAME\"` (an [inputs] entry whose output is the root filesystem)";
    if n != 1 {
        return Err(cx.err(
            span.clone(),
            if n == 0 {
                "[toolchain] names no toolchain".to_string()
            } else {
                "[toolchain] names more than one toolchain".to_string()
            },
            Some(one_of.to_string()),
        ));
    }
    if let (Some(d), None) = (&r.digest, &r.oci) {
        return Err(cx.err(
            d.span(),
            "`digest` belongs with `oci = \"PATH\"`",
            Some(
                "for `image`, put the digest in the reference: HOST/NAME@sha256:<64 hex>"
                    .to_string(),
            ),
        ));
    }
    if let Some(img) = &r.image {
        let s = img.get_ref();
        let help = Some(
            "pin the image by digest: image = \"HOST/NAME@sha256:<64 lowercase hex digits>\""
                .to_string(),
        );
        let Some((name, digest)) = s.rsplit_once('@') else {
            return Err(cx.err(
                img.span(),
                format!("image {s:?} is not pinned by digest"),
                help,
            ));
        };
        let digest: Digest = digest
            .parse()
            .map_err(|e| cx.err(img.span(), format!("image {s:?}: {e}"), help.clone()))?;
        // A `:` after the last `/` starts a tag; one before it is a port.
        let repository = match (name.rfind(':'), name.rfind('/')) {
            (Some(colon), Some(slash)) if colon > slash => &name[..colon],
            _ => name,
        };
        let valid = repository.contains('/')
            && !repository.starts_with('/')
            && !repository.ends_with('/')
            && !repository.chars().any(char::is_whitespace);
        if !valid {
            return Err(cx.err(
                img.span(),
                format!("image {s:?} does not name HOST/NAME"),
                help,
            ));
        }
        // What `hermit image pull` will accept: a real registry host and an
        // OCI repository name.
        if let Err(e) = s.parse::<hermit_store::oci::Reference>() {
            return Err(cx.err(img.span(), e.to_string(), help));
        }
        return Ok(Toolchain::Image {
            reference: s.clone(),
            repository: repository.to_string(),
            digest,
        });
    }
    if let Some(input) = &r.input {
        // That it names an [inputs] entry is checked once those are read.
        let name = check_name(cx, input, "toolchain input name")?;
        return Ok(Toolchain::Input { name });
    }
    if let Some(oci) = &r.oci {
        let path = nonempty(cx, oci, "oci path")?;
        let help = Some(
            "add the manifest digest: digest = \"sha256:<64 lowercase hex digits>\"".to_string(),
        );
        let Some(d) = &r.digest else {
            return Err(cx.err(oci.span(), "`oci` needs a `digest` to pin the image", help));
        };
        let digest: Digest = d
            .get_ref()
            .parse()
            .map_err(|e| cx.err(d.span(), format!("{e}"), help.clone()))?;
        return Ok(Toolchain::Oci { path, digest });
    }
    let Some(deb) = &r.debian else {
        return Err(cx.err(
            span,
            "[toolchain] names no toolchain",
            Some(one_of.to_string()),
        ));
    };
    let d = deb;
    let suite = nonempty(cx, &d.suite, "debian suite")?;
    let mut include = Vec::new();
    for p in &d.include {
        let s = p.get_ref();
        let ok = !s.is_empty()
            && s.chars().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, '.' | '+' | '-' | ':' | '=' | '~')
            });
        if !ok {
            return Err(cx.err(
                p.span(),
                format!("{s:?} is not a Debian package name"),
                Some("package names use a-z 0-9 . + - (optionally `=VERSION`)".to_string()),
            ));
        }
        include.push(s.clone());
    }
    let mirror = match &d.mirror {
        Some(m) => Some(check_url(cx, m)?),
        None => None,
    };
    Ok(Toolchain::Debian {
        suite,
        include,
        mirror,
    })
}

fn parse_source(cx: &Ctx, s: &Spanned<RawSource>) -> Result<Source, SpecError> {
    let r = s.get_ref();
    let name = check_name(cx, &r.name, "source name")?;
    match (&r.urls, &r.path) {
        (None, None) => Err(cx.err(
            s.span(),
            format!("source {name:?} has neither `urls` nor `path`"),
            Some(format!(
                "add `urls = [\"https://...\"]` and `{SHA256_FORM}` for a download, or `path = \".\"` for a local tree"
            )),
        )),
        (Some(u), Some(_)) => Err(cx.err(
            u.span(),
            format!("source {name:?} has both `urls` and `path`"),
            Some("a source is either downloaded (`urls` + `sha256`) or local (`path`); split it in two".to_string()),
        )),
        (Some(urls), None) => {
            for (field, span) in [
                ("include", r.include.as_ref().map(Spanned::span)),
                ("exclude", r.exclude.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    return Err(cx.err(
                        span,
                        format!("`{field}` only applies to local sources (`path = ...`)"),
                        Some(format!("remove `{field}` from source {name:?}")),
                    ));
                }
            }
            if urls.get_ref().is_empty() {
                return Err(cx.err(
                    urls.span(),
                    format!("source {name:?} has an empty `urls` list"),
                    Some("list at least one URL; mirrors are tried by hash before it".to_string()),
                ));
            }
            let mut list = Vec::new();
            for u in urls.get_ref() {
                list.push(check_url(cx, u)?);
            }
            let Some(sha) = &r.sha256 else {
                return Err(cx.err(
                    s.span(),
                    format!("source {name:?} has no `sha256`"),
                    Some(format!("add `{SHA256_FORM}` (e.g. from `sha256sum FILE`)")),
                ));
            };
            let hexs = sha.get_ref();
            let sha256 = Digest::from_hex(hexs).map_err(|_| {
                let extra = if hexs.starts_with("sha256:") {
                    " without the `sha256:` prefix"
                } else {
                    ""
                };
                cx.err(
                    sha.span(),
                    format!("malformed sha256 {hexs:?} in source {name:?}"),
                    Some(format!("write it as {SHA256_FORM}{extra}")),
                )
            })?;
            let unpack = match (&r.unpack, &r.strip_components) {
                (Some(u), sc) if *u.get_ref() => Some(Unpack {
                    strip_components: sc.as_ref().map_or(0, |v| *v.get_ref()),
                }),
                (_, Some(sc)) => {
                    return Err(cx.err(
                        sc.span(),
                        "`strip_components` needs `unpack = true`",
                        Some(format!("add `unpack = true` to source {name:?} or remove `strip_components`")),
                    ))
                }
                _ => None,
            };
            Ok(Source {
                name,
                at: cx.pos(s.span()),
                kind: SourceKind::Remote {
                    urls: list,
                    sha256,
                    size: r.size.as_ref().map(|v| *v.get_ref()),
                    unpack,
                },
            })
        }
        (None, Some(path)) => {
            for (field, span) in [
                ("sha256", r.sha256.as_ref().map(Spanned::span)),
                ("size", r.size.as_ref().map(Spanned::span)),
                ("unpack", r.unpack.as_ref().map(Spanned::span)),
                ("strip_components", r.strip_components.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    return Err(cx.err(
                        span,
                        format!("`{field}` does not apply to a local source (`path = ...`)"),
                        Some(format!(
                            "remove `{field}`; hermit hashes local trees itself"
                        )),
                    ));
                }
            }
            let p = nonempty(cx, path, "source path")?;
            check_local_path(cx, path, &name)?;
            let pattern = |v: &Option<Spanned<Vec<String>>>, field: &str| -> Result<Vec<String>, SpecError> {
                let Some(v) = v else { return Ok(Vec::new()) };
                if let Some(bad) = v.get_ref().iter().find(|p| p.is_empty() || p.starts_with('/')) {
                    return Err(cx.err(
                        v.span(),
                        format!("{field} pattern {bad:?} must be a non-empty path relative to `path`"),
                        Some("write patterns like \"src/**\" or \"*.o\"".to_string()),
                    ));
                }
                Ok(v.get_ref().clone())
            };
            Ok(Source {
                name,
                at: cx.pos(path.span()),
                kind: SourceKind::Local {
                    path: p,
                    include: pattern(&r.include, "include")?,
                    exclude: pattern(&r.exclude, "exclude")?,
                },
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn base(extra: &str) -> String {
        format!(
            r#"[package]
name = "hello"
version = "1.0"

[toolchain]
image = "registry.example.org/library/debian@sha256:{HEX}"

[build]
script = "make"
{extra}"#
        )
    }

    fn err(text: &str) -> String {
        match Spec::parse(Path::new("dir/spec.toml"), text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_parses() {
        let s = Spec::parse(Path::new("spec.toml"), &base("")).unwrap();
        assert_eq!(s.package.name, "hello");
        assert_eq!(s.format, 1);
        assert!(
            matches!(s.toolchain, Toolchain::Image { ref repository, .. } if repository == "registry.example.org/library/debian")
        );
    }

    #[test]
    fn unknown_field_lists_valid_ones() {
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurl = [\"https://x/a\"]\nsha256 = \"{HEX}\"\n"
        )));
        assert!(
            e.starts_with("dir/spec.toml:13:1: unknown field `url`"),
            "{e}"
        );
        assert!(
            e.contains("`urls`") && e.contains("`sha256`") && e.contains("`strip_components`"),
            "{e}"
        );
        assert!(e.contains("help: remove it"), "{e}");
    }

    #[test]
    fn unknown_top_level_table() {
        let e = err(&base("\n[sources]\nx = 1\n"));
        assert!(
            e.starts_with("dir/spec.toml:11:2: unknown field `sources`"),
            "{e}"
        );
        assert!(e.contains("`source`") && e.contains("`env`"), "{e}");
    }

    #[test]
    fn malformed_digest_shows_expected_form() {
        let e = err(&base(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\nsha256 = \"abc\"\n",
        ));
        assert!(
            e.starts_with("dir/spec.toml:14:10: malformed sha256 \"abc\" in source \"a\""),
            "{e}"
        );
        assert!(e.contains("sha256 = \"<64 lowercase hex digits>\""), "{e}");
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\nsha256 = \"sha256:{HEX}\"\n"
        )));
        assert!(e.contains("without the `sha256:` prefix"), "{e}");
        let upper = HEX.to_uppercase();
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\nsha256 = \"{upper}\"\n"
        )));
        assert!(e.contains("malformed sha256"), "{e}");
    }

    #[test]
    fn source_without_urls_or_path() {
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nsha256 = \"{HEX}\"\n"
        )));
        assert!(
            e.starts_with("dir/spec.toml:11:1: source \"a\" has neither `urls` nor `path`"),
            "{e}"
        );
        assert!(e.contains("path = \".\""), "{e}");
    }

    #[test]
    fn missing_sha256() {
        let e = err(&base(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\n",
        ));
        assert!(e.contains("source \"a\" has no `sha256`"), "{e}");
    }

    #[test]
    fn duplicate_source_names() {
        let src =
            format!("[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\nsha256 = \"{HEX}\"\n");
        let e = err(&base(&format!("\n{src}\n{src}")));
        assert!(
            e.starts_with("dir/spec.toml:17:8: duplicate source name \"a\" (already used by the [[source]] at line 11)"),
            "{e}"
        );
    }

    #[test]
    fn bad_url_scheme() {
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\", \"ftp://x/a\"]\nsha256 = \"{HEX}\"\n"
        )));
        assert!(
            e.starts_with("dir/spec.toml:13:24: URL scheme \"ftp\" is not supported"),
            "{e}"
        );
        assert!(e.contains("http://, https:// or file://"), "{e}");
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurls = [\"not a url\"]\nsha256 = \"{HEX}\"\n"
        )));
        assert!(e.contains("is not a valid URL"), "{e}");
    }

    #[test]
    fn format_version() {
        assert!(Spec::parse(Path::new("s"), &format!("hermit = 1\n{}", base(""))).is_ok());
        let e = err(&format!("hermit = 2\n{}", base("")));
        assert!(
            e.starts_with("dir/spec.toml:1:10: spec format 2 is not known"),
            "{e}"
        );
    }

    #[test]
    fn toolchain_exactly_one() {
        let t = base("").replace(
            "[toolchain]\n",
            "[toolchain]\ndebian = { suite = \"bookworm\" }\n",
        );
        let e = err(&t);
        assert!(e.contains("more than one toolchain"), "{e}");
        let t = base("").replace(
            &format!("image = \"registry.example.org/library/debian@sha256:{HEX}\"\n"),
            "",
        );
        let e = err(&t);
        assert!(
            e.contains("names no toolchain") && e.contains("exactly one of"),
            "{e}"
        );
    }

    #[test]
    fn image_must_be_pinned() {
        let t = base("").replace(&format!("@sha256:{HEX}"), ":bookworm");
        let e = err(&t);
        assert!(
            e.contains("is not pinned by digest") && e.contains("HOST/NAME@sha256:"),
            "{e}"
        );
    }

    #[test]
    fn oci_needs_digest() {
        let t = base("").replace(
            &format!("image = \"registry.example.org/library/debian@sha256:{HEX}\""),
            "oci = \"image.tar\"",
        );
        let e = err(&t);
        assert!(e.contains("`oci` needs a `digest`"), "{e}");
    }

    #[test]
    fn local_source_rules() {
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\npath = \".\"\nsha256 = \"{HEX}\"\n"
        )));
        assert!(
            e.contains("`sha256` does not apply to a local source"),
            "{e}"
        );
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\nsha256 = \"{HEX}\"\nexclude = [\"x\"]\n"
        )));
        assert!(e.contains("`exclude` only applies to local sources"), "{e}");
    }

    #[test]
    fn local_source_paths_stay_in_the_project() {
        for (path, why) in [
            ("/home/x/.ssh", "is an absolute path"),
            ("..", "has a `..` component"),
            ("src/../../x", "has a `..` component"),
        ] {
            let e = err(&base(&format!(
                "\n[[source]]\nname = \"a\"\npath = \"{path}\"\n"
            )));
            assert!(
                e.starts_with(&format!(
                    "dir/spec.toml:13:8: local source \"a\": path {path:?} {why}"
                )),
                "{e}"
            );
            assert!(e.contains("help: write a path relative"), "{e}");
        }
        for ok in [".", "src", "./src/sub", "a..b"] {
            let s = Spec::parse(
                Path::new("s"),
                &base(&format!("\n[[source]]\nname = \"a\"\npath = \"{ok}\"\n")),
            )
            .unwrap();
            assert_eq!(
                s.sources[0].at,
                Position {
                    line: 13,
                    column: 8
                }
            );
        }
    }

    #[test]
    fn strip_components_needs_unpack() {
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"a\"\nurls = [\"https://x/a\"]\nsha256 = \"{HEX}\"\nstrip_components = 1\n"
        )));
        assert!(
            e.contains("`strip_components` needs `unpack = true`"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_env() {
        let e = err(&base(&format!(
            "\n[[source]]\nname = \"../x\"\nurls = [\"https://x/a\"]\nsha256 = \"{HEX}\"\n"
        )));
        assert!(e.contains("source name \"../x\" is not allowed"), "{e}");
        let e = err(&base("\n[env]\nout = \"x\"\n"));
        assert!(e.contains("out is set by hermit itself"), "{e}");
        let e = err(&base("\n[env]\n\"A-B\" = \"x\"\n"));
        assert!(e.contains("not a valid environment variable name"), "{e}");
    }

    #[test]
    fn timeout_is_bounded() {
        let spec = |t: &str| {
            base("").replace(
                "script = \"make\"",
                &format!("script = \"make\"\ntimeout = {t}"),
            )
        };
        assert_eq!(
            Spec::parse(Path::new("spec.toml"), &spec("604800"))
                .unwrap()
                .build
                .timeout,
            Some(604800)
        );
        for bad in ["0", "604801", "4000000000"] {
            let e = err(&spec(bad));
            assert!(
                e.contains("dir/spec.toml:") && e.contains("at most 604800"),
                "{e}"
            );
        }
    }

    #[test]
    fn build_limits_are_positive() {
        let s = Spec::parse(
            Path::new("spec.toml"),
            &base("memory_mib = 64\nlog_mib = 1\n"),
        )
        .unwrap();
        assert_eq!((s.build.memory_mib, s.build.log_mib), (Some(64), Some(1)));
        let e = err(&base("disk_mib = 0\n"));
        assert!(
            e.contains("build disk_mib must be a positive number of MiB"),
            "{e}"
        );
    }

    #[test]
    fn missing_table_and_syntax_error() {
        let e = err("[package]\nname = \"x\"\nversion = \"1\"\n");
        assert!(
            e.contains("missing field `toolchain`") && e.contains("help: add `toolchain`"),
            "{e}"
        );
        let e = err("[package\n");
        assert!(e.starts_with("dir/spec.toml:1:"), "{e}");
    }

    /// Every `tests/data/specs/*.toml` parses to the JSON in the `.json` file
    /// beside it. `UPDATE_GOLDEN=1 cargo test -p hermit golden` rewrites them.
    #[test]
    fn golden_specs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/specs");
        let mut n = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        entries.sort();
        for toml_path in entries {
            let rel = Path::new("specs").join(toml_path.file_name().unwrap());
            let text = std::fs::read_to_string(&toml_path).unwrap();
            let spec = Spec::parse(&rel, &text).unwrap_or_else(|e| panic!("{e}"));
            let json = spec.canonical_json().unwrap();
            let golden = toml_path.with_extension("json");
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &json).unwrap();
            }
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            assert_eq!(
                json,
                want,
                "{} differs from its golden file",
                toml_path.display()
            );
            n += 1;
        }
        assert!(n >= 3, "expected golden specs in {}", dir.display());
    }
}
