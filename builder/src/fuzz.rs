//! Property and fuzz tests of the spec, lock and record parsers (see
//! docs/fuzzing.md). They live in the binary's unit tests because the
//! parsers are private to it.
//!
//! Each target builds valid documents from a model, checks that they parse
//! back to the model and serialise to stable bytes, then damages them
//! (structural tweaks of the TOML/JSON tree, blind byte mutations, random
//! text) and checks that the parser either accepts something that
//! re-serialises canonically or refuses it with an error that names the
//! file — never a panic, never a hang.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hermit_store::oci::{Image, Layer};
use hermit_store::Digest;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::debian::{DebianRequest, Package};
use crate::lock::{Lock, ToolchainRequest};
use crate::record::Record;
use crate::spec::{SourceKind, Spec, Toolchain};

#[path = "../../store/tests/fuzz/common.rs"]
mod common;

use common::{mutate, mutations, run};

/// Parsing one document takes far less than this; more means a hang.
const SLOW: Duration = Duration::from_secs(5);

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,12}"
}

/// Text with the characters that need escaping in TOML and JSON.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,16}",
        Just("\"'\\\n\t\u{0}\u{7f}é𝄞".to_string()),
        Just("\"\"\"".to_string()),
        any::<String>(),
    ]
}

fn nonblank() -> impl Strategy<Value = String> {
    text().prop_filter("not blank", |s| !s.trim().is_empty())
}

// ---- the spec ----

#[derive(Debug, Clone)]
enum ToolModel {
    Image { reference: String, digest: Digest },
    Oci { path: String, digest: Digest },
    Debian { suite: String, include: Vec<String> },
}

#[derive(Debug, Clone)]
enum SourceModel {
    Remote {
        urls: Vec<String>,
        sha256: Digest,
        size: Option<u64>,
        strip: Option<u32>,
    },
    Local {
        path: String,
        include: Vec<String>,
    },
}

#[derive(Debug, Clone)]
struct SpecModel {
    format: bool,
    name: String,
    version: String,
    toolchain: ToolModel,
    sources: BTreeMap<String, SourceModel>,
    script: String,
    timeout: Option<u64>,
    env: BTreeMap<String, String>,
    inputs: BTreeMap<String, String>,
}

fn url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["http", "https", "file"]),
        "[a-z]{1,8}(\\.[a-z]{2,4})?(:[1-9][0-9]{0,3})?",
        "(/[A-Za-z0-9._~-]{1,8}){0,3}",
    )
        .prop_map(|(s, h, p)| {
            if s == "file" {
                format!("file:///{h}{p}")
            } else {
                format!("{s}://{h}{p}")
            }
        })
}

fn tool_model() -> impl Strategy<Value = ToolModel> {
    prop_oneof![
        (
            "[a-z0-9]{1,8}\\.[a-z]{2,4}(:[1-9][0-9]{0,3})?/[a-z0-9]{1,8}(/[a-z0-9]{1,8})?(:[a-z0-9][a-z0-9.]{0,5})?",
            digest()
        )
            .prop_map(|(reference, digest)| ToolModel::Image { reference, digest }),
        (nonblank(), digest()).prop_map(|(path, digest)| ToolModel::Oci { path, digest }),
        (nonblank(), prop::collection::vec("[a-z0-9][a-z0-9.+-]{0,8}", 0..4))
            .prop_map(|(suite, include)| ToolModel::Debian { suite, include }),
    ]
}

fn source_model() -> impl Strategy<Value = SourceModel> {
    prop_oneof![
        (
            prop::collection::vec(url(), 1..3),
            digest(),
            prop::option::of(any::<u64>().prop_map(|n| n >> 1)),
            prop::option::of(0u32..4),
        )
            .prop_map(|(urls, sha256, size, strip)| SourceModel::Remote {
                urls,
                sha256,
                size,
                strip,
            }),
        (
            // Local sources stay inside the project: no absolute path, no `..`.
            nonblank().prop_filter("inside the project", |p| {
                !p.starts_with('/') && !p.split('/').any(|c| c == "..")
            }),
            prop::collection::vec("[a-z*][a-z*/.]{0,8}", 0..3)
        )
            .prop_map(|(path, include)| SourceModel::Local { path, include }),
    ]
}

fn spec_model() -> impl Strategy<Value = SpecModel> {
    (
        any::<bool>(),
        name().prop_filter("no leading dot", |n| !n.starts_with('.')),
        nonblank(),
        tool_model(),
        prop::collection::btree_map(
            name().prop_filter("no leading dot", |n| !n.starts_with('.')),
            source_model(),
            0..4,
        ),
        nonblank(),
        prop::option::of(1u64..=crate::spec::MAX_TIMEOUT_SECS),
        prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", text(), 0..3).prop_map(|mut m| {
            for k in ["HERMIT_JOBS", "SOURCE_DATE_EPOCH"] {
                m.remove(k);
            }
            m
        }),
        prop::collection::btree_map(
            name().prop_filter("no leading dot", |n| !n.starts_with('.')),
            nonblank(),
            0..3,
        ),
    )
        .prop_map(
            |(format, name, version, toolchain, sources, script, timeout, env, inputs)| SpecModel {
                format,
                name,
                version,
                toolchain,
                sources,
                script,
                timeout,
                env,
                inputs,
            },
        )
}

fn spec_value(m: &SpecModel) -> toml::Value {
    let mut top = toml::Table::new();
    if m.format {
        top.insert("hermit".into(), 1.into());
    }
    let mut package = toml::Table::new();
    package.insert("name".into(), m.name.clone().into());
    package.insert("version".into(), m.version.clone().into());
    top.insert("package".into(), package.into());
    let mut tool = toml::Table::new();
    match &m.toolchain {
        ToolModel::Image { reference, digest } => {
            tool.insert("image".into(), format!("{reference}@{digest}").into());
        }
        ToolModel::Oci { path, digest } => {
            tool.insert("oci".into(), path.clone().into());
            tool.insert("digest".into(), digest.to_string().into());
        }
        ToolModel::Debian { suite, include } => {
            let mut d = toml::Table::new();
            d.insert("suite".into(), suite.clone().into());
            d.insert("include".into(), include.clone().into());
            tool.insert("debian".into(), d.into());
        }
    }
    top.insert("toolchain".into(), tool.into());
    let mut sources = Vec::new();
    for (name, s) in &m.sources {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.clone().into());
        match s {
            SourceModel::Remote {
                urls,
                sha256,
                size,
                strip,
            } => {
                t.insert("urls".into(), urls.clone().into());
                t.insert("sha256".into(), sha256.hex().into());
                if let Some(size) = size {
                    t.insert("size".into(), i64::try_from(*size).unwrap().into());
                }
                if let Some(strip) = strip {
                    t.insert("unpack".into(), true.into());
                    t.insert("strip_components".into(), i64::from(*strip).into());
                }
            }
            SourceModel::Local { path, include } => {
                t.insert("path".into(), path.clone().into());
                t.insert("include".into(), include.clone().into());
            }
        }
        sources.push(toml::Value::Table(t));
    }
    top.insert("source".into(), sources.into());
    let mut build = toml::Table::new();
    build.insert("script".into(), m.script.clone().into());
    if let Some(t) = m.timeout {
        build.insert("timeout".into(), i64::try_from(t).unwrap().into());
    }
    top.insert("build".into(), build.into());
    let env: toml::Table = m
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    top.insert("env".into(), env.into());
    let inputs: toml::Table = m
        .inputs
        .iter()
        .map(|(k, v)| {
            let mut t = toml::Table::new();
            t.insert("spec".into(), v.clone().into());
            (k.clone(), t.into())
        })
        .collect();
    top.insert("inputs".into(), inputs.into());
    toml::Value::Table(top)
}

/// Checks a parsed spec against its model.
fn matches_model(s: &Spec, m: &SpecModel) -> Result<(), TestCaseError> {
    prop_assert_eq!(&s.package.name, &m.name);
    prop_assert_eq!(&s.package.version, &m.version);
    prop_assert_eq!(&s.build.script, &m.script);
    prop_assert_eq!(s.build.timeout, m.timeout);
    prop_assert_eq!(&s.env, &m.env);
    let inputs: BTreeMap<String, String> = s
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.spec.clone()))
        .collect();
    prop_assert_eq!(&inputs, &m.inputs);
    match (&s.toolchain, &m.toolchain) {
        (
            Toolchain::Image {
                reference, digest, ..
            },
            ToolModel::Image {
                reference: r,
                digest: d,
            },
        ) => {
            prop_assert_eq!(reference, &format!("{r}@{d}"));
            prop_assert_eq!(digest, d);
        }
        (Toolchain::Oci { path, digest }, ToolModel::Oci { path: p, digest: d }) => {
            prop_assert_eq!(path, p);
            prop_assert_eq!(digest, d);
        }
        (
            Toolchain::Debian { suite, include, .. },
            ToolModel::Debian {
                suite: s,
                include: i,
            },
        ) => {
            prop_assert_eq!(suite, s);
            prop_assert_eq!(include, i);
        }
        (a, b) => prop_assert!(false, "toolchain {:?} from {:?}", a, b),
    }
    prop_assert_eq!(s.sources.len(), m.sources.len());
    for (src, (name, model)) in s.sources.iter().zip(&m.sources) {
        prop_assert_eq!(&src.name, name);
        match (&src.kind, model) {
            (
                SourceKind::Remote {
                    urls,
                    sha256,
                    size,
                    unpack,
                },
                SourceModel::Remote {
                    urls: u,
                    sha256: d,
                    size: z,
                    strip,
                },
            ) => {
                prop_assert_eq!(urls, u);
                prop_assert_eq!(sha256, d);
                prop_assert_eq!(size, z);
                prop_assert_eq!(unpack.map(|u| u.strip_components), *strip);
            }
            (
                SourceKind::Local { path, include, .. },
                SourceModel::Local {
                    path: p,
                    include: i,
                },
            ) => {
                prop_assert_eq!(path, p);
                prop_assert_eq!(include, i);
            }
            (a, b) => prop_assert!(false, "source {:?} from {:?}", a, b),
        }
    }
    Ok(())
}

/// A change to a TOML tree that keeps it TOML.
#[derive(Debug, Clone)]
enum TomlTweak {
    Remove(usize, usize),
    Set(usize, usize, toml::Value),
}

fn toml_leaf() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        any::<i64>().prop_map(toml::Value::from),
        any::<bool>().prop_map(toml::Value::from),
        Just(toml::Value::from(0)),
        Just(toml::Value::from(-1)),
        Just(toml::Value::from(2)),
        Just(toml::Value::from(1.5)),
        text().prop_map(toml::Value::from),
        Just(toml::Value::from("../etc")),
        Just(toml::Value::from("ftp://x/y")),
        Just(toml::Value::from(format!(
            "user@reg.example/x@sha256:{}",
            "0".repeat(64)
        ))),
        Just(toml::Value::from(format!(
            "reg.example/../x@sha256:{}",
            "0".repeat(64)
        ))),
        Just(toml::Value::from(format!(
            "reg.example/X@sha256:{}",
            "0".repeat(64)
        ))),
        Just(toml::Value::from(format!("sha256:{}", "0".repeat(64)))),
        Just(toml::Value::from("0".repeat(64))),
        Just(toml::Value::Array(vec![])),
        Just(toml::Value::Table(toml::Table::new())),
    ]
}

fn toml_tweak() -> impl Strategy<Value = TomlTweak> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TomlTweak::Remove(a, b)),
        (any::<usize>(), any::<usize>(), toml_leaf()).prop_map(|(a, b, v)| TomlTweak::Set(a, b, v)),
    ]
}

fn count_tables(v: &toml::Value) -> usize {
    match v {
        toml::Value::Table(t) => 1 + t.values().map(count_tables).sum::<usize>(),
        toml::Value::Array(a) => a.iter().map(count_tables).sum(),
        _ => 0,
    }
}

/// Applies tweaks by walking to the n-th table each time.
fn apply_toml(mut v: toml::Value, tweaks: &[TomlTweak]) -> toml::Value {
    fn nth<'a>(v: &'a mut toml::Value, n: &mut usize) -> Option<&'a mut toml::Table> {
        match v {
            toml::Value::Table(t) => {
                if *n == 0 {
                    return Some(t);
                }
                *n -= 1;
                t.iter_mut().find_map(|(_, c)| nth(c, n))
            }
            toml::Value::Array(a) => a.iter_mut().find_map(|c| nth(c, n)),
            _ => None,
        }
    }
    for t in tweaks {
        let total = count_tables(&v);
        let (i, k) = match t {
            TomlTweak::Remove(i, k) | TomlTweak::Set(i, k, _) => (*i, *k),
        };
        let mut n = i % total.max(1);
        let Some(table) = nth(&mut v, &mut n) else {
            continue;
        };
        match t {
            TomlTweak::Remove(..) if !table.is_empty() => {
                let key = table.keys().nth(k % table.len()).cloned().unwrap();
                table.remove(&key);
            }
            TomlTweak::Set(_, _, val) => {
                let key = match table.keys().nth(k % (table.len() + 1)) {
                    Some(key) => key.clone(),
                    None => ["url", "surprise", "mirror", "include", "exclude", "unpack"][k % 6]
                        .to_string(),
                };
                table.insert(key, val.clone());
            }
            _ => {}
        }
    }
    v
}

/// Parses `text` as `dir/spec.toml`; checks the outcome.
fn check_spec_text(text: &str) -> Result<Option<Spec>, TestCaseError> {
    let start = Instant::now();
    let r = Spec::parse(Path::new("dir/spec.toml"), text);
    prop_assert!(start.elapsed() < SLOW, "parsing took {:?}", start.elapsed());
    match r {
        Ok(s) => {
            let a = s.canonical_json().unwrap();
            let again = Spec::parse(Path::new("dir/spec.toml"), text).unwrap();
            prop_assert_eq!(&a, &again.canonical_json().unwrap());
            serde_json::from_str::<Value>(&a).unwrap();
            // An image the spec accepts is one `hermit image pull` accepts.
            if let Toolchain::Image { reference, .. } = &s.toolchain {
                let r = reference.parse::<hermit_store::oci::Reference>();
                prop_assert!(r.is_ok(), "spec accepted {:?}: {:?}", reference, r);
            }
            Ok(Some(s))
        }
        Err(e) => {
            let msg = e.to_string();
            // "dir/spec.toml:LINE:COLUMN: message", inside the text.
            let rest = msg.strip_prefix("dir/spec.toml:");
            prop_assert!(rest.is_some(), "error does not name the file: {}", msg);
            let mut parts = rest.unwrap().splitn(3, ':');
            let line: usize = parts.next().unwrap().parse().unwrap();
            let col: usize = parts.next().unwrap().parse().unwrap();
            prop_assert!(
                line >= 1 && line <= text.lines().count() + 1,
                "line {} in {}",
                line,
                msg
            );
            prop_assert!(col >= 1, "{}", msg);
            prop_assert!(
                parts.next().is_some_and(|m| !m.trim().is_empty()),
                "an error without a message: {:?} for\n{}",
                msg,
                text
            );
            Ok(None)
        }
    }
}

#[test]
fn fuzz_spec() {
    let strategy = (
        spec_model(),
        prop::collection::vec(toml_tweak(), 0..3),
        mutations(),
        any::<String>(),
    );
    run("spec", file!(), 256, strategy, |(m, tweaks, ms, junk)| {
        // The model, written out, parses back to itself.
        let v = spec_value(&m);
        let text = toml::to_string(&v).unwrap();
        let s = check_spec_text(&text)?;
        if s.is_none() {
            let e = Spec::parse(Path::new("dir/spec.toml"), &text).unwrap_err();
            prop_assert!(false, "a valid spec was refused: {}\n{}", e, text);
        }
        matches_model(s.as_ref().unwrap(), &m)?;
        // Damaged: structurally, then byte by byte; and plain junk.
        let tweaked = toml::to_string(&apply_toml(v, &tweaks)).unwrap();
        check_spec_text(&tweaked)?;
        let bytes = mutate(tweaked.into_bytes(), &ms);
        if let Ok(t) = std::str::from_utf8(&bytes) {
            check_spec_text(t)?;
        }
        check_spec_text(&junk)?;
        Ok(())
    });
}

// ---- the lock ----

fn image() -> impl Strategy<Value = Image> {
    (
        digest(),
        digest(),
        prop::collection::vec(digest(), 0..3),
        "[a-z]{1,6}/[a-z0-9]{1,6}",
    )
        .prop_map(|(manifest, config, layers, platform)| Image {
            source: "fuzz".into(),
            index: None,
            manifest,
            config,
            layers: layers
                .into_iter()
                .map(|digest| Layer {
                    digest,
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    size: 1,
                })
                .collect(),
            platform,
            path_env: None,
        })
}

fn request() -> impl Strategy<Value = ToolchainRequest> {
    prop_oneof![
        text().prop_map(|reference| ToolchainRequest::Image { reference }),
        (text(), digest()).prop_map(|(path, digest)| ToolchainRequest::Oci { path, digest }),
        (
            text(),
            prop::collection::vec(text(), 0..4),
            prop::option::of(text())
        )
            .prop_map(|(suite, include, mirror)| ToolchainRequest::Debian(
                DebianRequest::new(&suite, &include, mirror.as_deref())
            )),
    ]
}

fn packages() -> impl Strategy<Value = Vec<Package>> {
    prop::collection::vec(
        (
            text(),
            text(),
            text(),
            digest(),
            prop::option::of(text()),
            prop::option::of(0..=i64::MAX as u64),
        )
            .prop_map(|(name, version, architecture, d, pool, size)| Package {
                name,
                version,
                architecture,
                sha256: d.hex(),
                pool,
                size,
            }),
        0..3,
    )
}

fn check_lock_text(text: &str) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let r = Lock::parse("dir/hermit.lock", text);
    prop_assert!(start.elapsed() < SLOW);
    match r {
        Ok(lock) => {
            // Whatever was accepted has one canonical text, which is stable.
            let canon = lock.to_text().unwrap();
            let back = Lock::parse("dir/hermit.lock", &canon).unwrap();
            prop_assert_eq!(&back, &lock);
            prop_assert_eq!(back.to_text().unwrap(), canon);
            if let Err(e) = lock.request("dir/hermit.lock") {
                prop_assert!(e.to_string().starts_with("dir/hermit.lock: "), "{}", e);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("dir/hermit.lock: "), "{}", msg);
        }
    }
    Ok(())
}

#[test]
fn fuzz_lock() {
    let strategy = (
        request(),
        image(),
        packages(),
        prop::collection::vec(toml_tweak(), 0..3),
        mutations(),
        any::<String>(),
    );
    run(
        "lock",
        file!(),
        256,
        strategy,
        |(req, img, pkgs, tweaks, ms, junk)| {
            let lock = Lock::new(&req, &img, pkgs);
            let text = lock.to_text().unwrap();
            let back = Lock::parse("dir/hermit.lock", &text);
            prop_assert!(back.is_ok(), "{:?}\n{}", back, text);
            let back = back.unwrap();
            prop_assert_eq!(&back, &lock);
            prop_assert_eq!(back.to_text().unwrap(), text.clone());
            prop_assert_eq!(back.request("l").unwrap(), req.clone());
            prop_assert!(back.check("l", &req).is_ok());
            let v: toml::Value = toml::from_str(&text).unwrap();
            let tweaked = toml::to_string(&apply_toml(v, &tweaks)).unwrap();
            check_lock_text(&tweaked)?;
            if let Ok(t) = String::from_utf8(mutate(text.into_bytes(), &ms)) {
                check_lock_text(&t)?;
            }
            check_lock_text(&junk)?;
            Ok(())
        },
    );
}

// ---- the record ----

/// A change to a JSON tree that keeps it JSON.
#[derive(Debug, Clone)]
enum JsonTweak {
    Remove(usize, usize),
    Set(usize, usize, Value),
    /// Swap two elements of the n-th array.
    Swap(usize, usize, usize),
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        text().prop_map(Value::from),
        digest().prop_map(|d| json!(d.to_string())),
        Just(json!("file")),
        Just(json!("../../etc")),
        Just(json!("a/b")),
        Just(json!("symlink")),
        Just(json!("directory")),
        Just(json!([])),
        Just(json!({})),
    ]
}

fn json_tweak() -> impl Strategy<Value = JsonTweak> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| JsonTweak::Remove(a, b)),
        (any::<usize>(), any::<usize>(), json_leaf()).prop_map(|(a, b, v)| JsonTweak::Set(a, b, v)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| JsonTweak::Swap(a, b, c)),
    ]
}

fn pointers(v: &Value, at: String, want_object: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if want_object {
                out.push(at.clone());
            }
            for (k, c) in m {
                pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    want_object,
                    out,
                );
            }
        }
        Value::Array(a) => {
            if !want_object {
                out.push(at.clone());
            }
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), want_object, out);
            }
        }
        _ => {}
    }
}

fn apply_json(mut v: Value, tweaks: &[JsonTweak]) -> Value {
    for t in tweaks {
        let mut ptrs = Vec::new();
        pointers(
            &v,
            String::new(),
            !matches!(t, JsonTweak::Swap(..)),
            &mut ptrs,
        );
        if ptrs.is_empty() {
            continue;
        }
        let n = match t {
            JsonTweak::Remove(n, _) | JsonTweak::Set(n, _, _) | JsonTweak::Swap(n, _, _) => *n,
        };
        let Some(target) = v.pointer_mut(&ptrs[n % ptrs.len()]) else {
            continue;
        };
        match (t, target) {
            (JsonTweak::Remove(_, k), Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(k % m.len()).cloned().unwrap();
                m.remove(&key);
            }
            (JsonTweak::Set(_, k, val), Value::Object(m)) => {
                let key = match m.keys().nth(k % (m.len() + 1)) {
                    Some(key) => key.clone(),
                    None => "surprise".to_string(),
                };
                m.insert(key, val.clone());
            }
            (JsonTweak::Swap(_, a, b), Value::Array(arr)) if !arr.is_empty() => {
                let len = arr.len();
                arr.swap(a % len, b % len);
            }
            _ => {}
        }
    }
    v
}

fn check_record_text(text: &str) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let r = Record::parse(text, "dir/record.json");
    prop_assert!(start.elapsed() < SLOW);
    match r {
        Ok(rec) => {
            prop_assert!(rec.validate("x").is_ok());
            // Names become paths (/sources/<name>, /inputs/<name>): they
            // follow the spec's rule for names.
            let safe = |n: &str| {
                !n.is_empty()
                    && !n.starts_with('.')
                    && n.len() <= 128
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
            };
            for n in rec
                .sources
                .iter()
                .map(|s| s.name())
                .chain(rec.inputs.iter().map(|i| i.name.as_str()))
            {
                prop_assert!(safe(n), "the record names a source or input {:?}", n);
            }
            let canon = rec.to_json().unwrap();
            let back = Record::parse(&canon, "again").unwrap();
            prop_assert_eq!(&back, &rec);
            prop_assert_eq!(back.to_json().unwrap(), canon);
            // What is accepted can be shown as provenance.
            let _ = crate::provenance::statement(&rec);
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains("dir/record.json"), "{}", msg);
        }
    }
    Ok(())
}

/// Re-derives the digests and the build key a tweaked record claims, so
/// the checks after them are reached too.
fn repair(v: Value) -> Value {
    let Ok(mut r) = serde_json::from_value::<Record>(v.clone()) else {
        return v;
    };
    r.spec.digest = Digest::of(r.spec.text.as_bytes());
    if let Some(l) = &mut r.lock {
        l.digest = Digest::of(l.text.as_bytes());
    }
    r.build_key = r.key_inputs().build_key();
    serde_json::to_value(&r).unwrap_or(v)
}

#[test]
fn fuzz_record() {
    let strategy = (
        text(),
        prop::option::of(text()),
        prop::collection::vec(json_tweak(), 0..4),
        any::<bool>(),
        mutations(),
        any::<String>(),
    );
    run(
        "record",
        file!(),
        192,
        strategy,
        |(spec_text, lock_text, tweaks, fix, ms, junk)| {
            let mut rec = crate::record::tests::sample();
            rec.spec = crate::record::SpecRecord {
                file: "spec.toml".into(),
                digest: Digest::of(spec_text.as_bytes()),
                text: spec_text,
            };
            rec.lock = lock_text.map(crate::record::TextRecord::new);
            rec.build_key = rec.key_inputs().build_key();
            let text = rec.to_json().unwrap();
            let back = Record::parse(&text, "r");
            prop_assert!(back.is_ok(), "{:?}", back);
            prop_assert_eq!(back.unwrap(), rec.clone());
            let v = serde_json::to_value(&rec).unwrap();
            let mut tweaked = apply_json(v, &tweaks);
            if fix {
                tweaked = repair(tweaked);
            }
            let tweaked = serde_json::to_string_pretty(&tweaked).unwrap();
            check_record_text(&tweaked)?;
            if let Ok(t) = String::from_utf8(mutate(tweaked.into_bytes(), &ms)) {
                check_record_text(&t)?;
            }
            check_record_text(&junk)?;
            Ok(())
        },
    );
}

/// Found by the fuzz target `spec`: a toolchain written as
/// `[toolchain.debian]` or with dotted keys (the same TOML as
/// `debian = { ... }`) was refused with "invalid type: string \"debian\",
/// expected a borrowed string".
#[test]
fn spec_toolchain_in_every_toml_spelling() {
    let head = "[package]\nname = \"a\"\nversion = \"1\"\n[build]\nscript = \"x\"\n";
    let pin = format!("sha256:{}", "0".repeat(64));
    for form in [
        "[toolchain]\ndebian = { suite = \"b\" }\n".to_string(),
        "[toolchain.debian]\nsuite = \"b\"\n".to_string(),
        "[toolchain]\ndebian.suite = \"b\"\n".to_string(),
        "toolchain.debian.suite = \"b\"\n".to_string(),
        "toolchain = { debian = { suite = \"b\" } }\n".to_string(),
        format!("toolchain.oci = \"x\"\ntoolchain.digest = \"{pin}\"\n"),
    ] {
        let text = if form.starts_with('[') {
            format!("{head}{form}")
        } else {
            format!("{form}{head}")
        };
        if let Err(e) = Spec::parse(Path::new("s"), &text) {
            panic!("{form:?} refused: {e}");
        }
    }
    // Errors about the table as a whole still point at it.
    let e = Spec::parse(Path::new("s"), &format!("{head}[toolchain]\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("s:6:1: [toolchain] names no toolchain"),
        "{e}"
    );
    let e = Spec::parse(
        Path::new("s"),
        &format!("toolchain.oci = \"x\"\ntoolchain.image = \"y\"\n{head}"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("s:1:1: [toolchain] names more than one"),
        "{e}"
    );
}
/// Found by the fuzz target `spec`: a `key =` without a value gave the
/// error "spec.toml:2:10: " with no message at all.
#[test]
fn spec_syntax_errors_always_say_something() {
    for text in ["[t]\ndigest = ", "a = ", "a =", "[package]\nname ="] {
        let e = Spec::parse(Path::new("s.toml"), text)
            .unwrap_err()
            .to_string();
        let (_, message) = e.split_once(": ").unwrap();
        assert!(message.contains("value is missing"), "{text:?}: {e:?}");
        assert!(e.contains("help: write a value"), "{e}");
    }
}

/// Deep nesting (arrays, inline tables, dotted keys, table headers, JSON
/// arrays and objects) is refused with an error, never a stack overflow.
#[test]
fn fuzz_deep_nesting() {
    let strategy = (1usize..50_000, 0usize..7, any::<bool>());
    run("deep_nesting", file!(), 16, strategy, |(n, form, close)| {
        let toml = match form {
            0 => format!("a = {}", "[".repeat(n)),
            1 => format!("a = {}1{}", "[".repeat(n), "]".repeat(n)),
            2 => format!(
                "a = {}1{}",
                "{b=".repeat(n),
                "}".repeat(if close { n } else { 0 })
            ),
            3 => format!("{} = 1", vec!["a"; n].join(".")),
            _ => format!("[{}]", vec!["a"; n].join(".")),
        };
        check_spec_text(&toml)?;
        check_lock_text(&toml)?;
        let json = match form % 2 {
            0 => format!("{}{}", "[".repeat(n), "]".repeat(if close { n } else { 0 })),
            _ => format!(
                "{}{}",
                "{\"a\":".repeat(n),
                "}".repeat(if close { n } else { 0 })
            ),
        };
        check_record_text(&json)?;
        Ok(())
    });
}

/// Found by the fuzz target `spec`: the spec accepted image references that
/// `hermit image pull` then refused (a registry with `user@`, `..` in the
/// name), so the error came late and without the spec's line and column.
#[test]
fn spec_image_is_checked_like_a_pull() {
    let d = format!("sha256:{}", "0".repeat(64));
    for bad in [
        format!("user@reg.example/x@{d}"),
        format!("reg.example/../x@{d}"),
        format!("reg.example/X@{d}"),
    ] {
        let text = format!(
            "[package]\nname = \"a\"\nversion = \"1\"\n[build]\nscript = \"x\"\n[toolchain]\nimage = \"{bad}\"\n"
        );
        let e = Spec::parse(Path::new("s"), &text).unwrap_err().to_string();
        assert!(e.starts_with("s:7:9: image reference"), "{bad}: {e}");
    }
}

/// Found by the fuzz target `record`: a record could name a source or an
/// input `../../etc` or `a/b` (with a build key to match), which the spec
/// parser refuses; the names become mount points in the sandbox.
#[test]
fn record_names_are_path_components() {
    for bad in ["../../etc", "a/b", "", ".hidden", "["] {
        let mut rec = crate::record::tests::sample();
        match rec.sources.first_mut() {
            Some(crate::record::SourceRecord::Remote { name, .. })
            | Some(crate::record::SourceRecord::Local { name, .. }) => *name = bad.to_string(),
            None => panic!("the sample has sources"),
        }
        rec.build_key = rec.key_inputs().build_key();
        let e = Record::parse(&rec.to_json().unwrap(), "r.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.json") && e.contains("is not allowed"),
            "{bad:?}: {e}"
        );
    }
}
