//! How a hermit build maps to a REAPI action (docs/design.md, "Remote
//! actions"). Everything here is a function of the build key, so two
//! machines with different paths, users or core counts compute the same
//! Action digest for the same build, and the ActionCache entry one of them
//! writes is the one the other looks up.
//!
//! - input root: a `Directory` holding one file, `action.json`: canonical
//!   JSON (compact, keys sorted) of `{"action_version": 1, "build_key": K,
//!   "key_inputs": <KeyInputs::canonical()>, "spec": {"file": "spec.toml",
//!   "text": …}, "lock": <text or null>}`. The spec and lock texts are the
//!   ones the key names by digest; the spec's file name is always
//!   `spec.toml` (the key leaves file names out).
//! - command: `hermit __remote-action action.json`, output files
//!   `build.log`, `output.tar`, `record.json`, no environment, platform
//!   `ISA=<arch of the toolchain image>`, `OSFamily=<its os>`.
//! - action: the two digests, cacheable, no timeout.
//!
//! A result is good only when `output.tar` is the canonical tar with the
//! record's output digest and `record.json` is a valid record of the
//! action's build key (see [`super::cache`]).

use hermit_remote::{reapi, Digest as RDigest};
use hermit_store::Digest;
use prost::Message;
use serde_json::Value;

use crate::record::{KeyInputs, Record};

/// The version of this mapping; a change makes every Action digest new.
pub const ACTION_VERSION: u64 = 1;
/// The one file of the input root.
pub const ACTION_FILE: &str = "action.json";
/// The spec's file name inside `action.json`.
pub const SPEC_FILE: &str = "spec.toml";
/// The action's output files, sorted as REAPI wants them.
pub const OUTPUT_LOG: &str = "build.log";
pub const OUTPUT_TAR: &str = "output.tar";
pub const OUTPUT_RECORD: &str = "record.json";
pub const OUTPUT_FILES: [&str; 3] = [OUTPUT_LOG, OUTPUT_TAR, OUTPUT_RECORD];
/// What a worker runs.
pub const ARGUMENTS: [&str; 3] = ["hermit", "__remote-action", ACTION_FILE];

/// One build as a REAPI action: the messages (encoded) and their digests.
// `build_key`, `of_record` and `host_isa` serve remote execution (workers).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Action {
    pub build_key: Digest,
    pub action_json: Vec<u8>,
    /// The encoded input root `Directory`.
    pub input_root: Vec<u8>,
    /// The encoded `Command`.
    pub command: Vec<u8>,
    /// The encoded `Action`.
    pub action: Vec<u8>,
    /// The Action's digest: the ActionCache key.
    pub digest: RDigest,
}

/// The REAPI digest of a hermit digest with its size.
pub fn rdigest(d: &Digest, size: u64) -> RDigest {
    RDigest {
        hash: d.hex(),
        size,
    }
}

/// The hermit digest of a REAPI digest.
pub fn hdigest(d: &RDigest) -> anyhow::Result<Digest> {
    Digest::from_hex(&d.hash).map_err(|e| anyhow::anyhow!("digest {d}: {e}"))
}

/// `ISA` of a platform `os/arch[/variant]`: its architecture as OCI spells
/// it (`amd64`, `arm64`, …); a worker advertises [`host_isa`].
pub fn isa_of(platform: &str) -> &str {
    platform.split('/').nth(1).unwrap_or(platform)
}

/// `OSFamily` of a platform `os/arch`.
pub fn os_of(platform: &str) -> &str {
    platform.split('/').next().unwrap_or("linux")
}

/// This machine's `ISA` in the same spelling as [`isa_of`].
#[allow(dead_code)]
pub fn host_isa() -> String {
    let (_, arch) = hermit_store::oci::host_platform();
    arch.to_string()
}

impl Action {
    /// The action of a build with these key inputs. `spec_text` and
    /// `lock_text` must be the texts `inputs` names by digest.
    pub fn new(
        build_key: &Digest,
        inputs: &KeyInputs<'_>,
        spec_text: &str,
        lock_text: Option<&str>,
    ) -> Action {
        debug_assert_eq!(Digest::of(spec_text.as_bytes()), *inputs.spec);
        let json = serde_json::json!({
            "action_version": ACTION_VERSION,
            "build_key": build_key,
            "key_inputs": inputs.canonical(),
            "spec": {"file": SPEC_FILE, "text": spec_text},
            "lock": lock_text.map(|t| Value::String(t.to_string())).unwrap_or(Value::Null),
        });
        // serde_json's maps are sorted (no preserve_order in this
        // workspace): compact output is canonical.
        let action_json = json.to_string().into_bytes();
        let json_digest = RDigest::of(&action_json);
        let input_root = reapi::Directory {
            files: vec![reapi::FileNode {
                name: ACTION_FILE.to_string(),
                digest: Some(json_digest.to_proto()),
                is_executable: false,
                node_properties: None,
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let platform = inputs.image.platform.as_str();
        let platform = reapi::Platform {
            properties: vec![
                reapi::platform::Property {
                    name: "ISA".into(),
                    value: isa_of(platform).to_string(),
                },
                reapi::platform::Property {
                    name: "OSFamily".into(),
                    value: os_of(platform).to_string(),
                },
            ],
        };
        #[allow(deprecated)]
        let command = reapi::Command {
            arguments: ARGUMENTS.iter().map(|s| s.to_string()).collect(),
            output_files: OUTPUT_FILES.iter().map(|s| s.to_string()).collect(),
            output_paths: OUTPUT_FILES.iter().map(|s| s.to_string()).collect(),
            platform: Some(platform.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        let action = reapi::Action {
            command_digest: Some(RDigest::of(&command).to_proto()),
            input_root_digest: Some(RDigest::of(&input_root).to_proto()),
            do_not_cache: false,
            platform: Some(platform),
            ..Default::default()
        }
        .encode_to_vec();
        Action {
            build_key: *build_key,
            digest: RDigest::of(&action),
            action_json,
            input_root,
            command,
            action,
        }
    }

    /// The action of the build a plan describes.
    pub fn of_plan(plan: &crate::pipeline::plan::Plan) -> Action {
        let r = &plan.resolved;
        Action::new(
            &plan.key,
            &plan.key_inputs(),
            &r.spec_text,
            r.lock_text.as_deref(),
        )
    }

    /// The action of the build a record describes.
    #[allow(dead_code)]
    pub fn of_record(record: &Record) -> Action {
        Action::new(
            &record.build_key,
            &record.key_inputs(),
            &record.spec.text,
            record.lock.as_ref().map(|l| l.text.as_str()),
        )
    }

    /// Every blob the action names, for uploading before an ActionResult
    /// or an Execute call: action.json, the input root, the command, the
    /// action.
    pub fn blobs(&self) -> Vec<(RDigest, &[u8])> {
        [
            &self.action_json,
            &self.input_root,
            &self.command,
            &self.action,
        ]
        .into_iter()
        .map(|b| (RDigest::of(b), b.as_slice()))
        .collect()
    }
}

/// The blob index: a REAPI digest needs the blob's size, but some things
/// hermit wants are named by sha256 alone (a record's inputs name their
/// outputs without the tar's size). So whenever hermit puts an output tar
/// (or, with `mirror --to`, any blob) in a remote CAS, it also writes an
/// ActionResult under this pseudo-action of the sha256, whose one output
/// file `blob` carries the full digest. It is never executed: the Command
/// names no program hermit runs. The answer is only a hint: the blob it
/// names must have the wanted sha256 and is hashed again as it arrives.
pub const INDEX_VERSION: &str = "hermit-blob-index/1";
/// The one output file of an index entry.
pub const INDEX_FILE: &str = "blob";
/// The record index: the record of a build key, for `hermit rebuild
/// --deep` (a record names its inputs by build key; the cache's own Action
/// digest needs their key inputs, which only their records hold). Written
/// with every ActionResult hermit writes; its output file names the
/// record's blob, and a record read through it is checked like a mirror's.
pub const RECORD_INDEX_VERSION: &str = "hermit-record-index/1";

/// An index entry's action for `sha256`: the messages and its digest.
#[derive(Debug, Clone)]
pub struct IndexAction {
    pub digest: RDigest,
    /// Every message the action names (command, empty input root, action).
    pub blobs: Vec<(RDigest, Vec<u8>)>,
}

impl IndexAction {
    /// The blob index entry of a sha256.
    pub fn of(sha256: &Digest) -> IndexAction {
        IndexAction::new(INDEX_VERSION, sha256)
    }

    /// The record index entry of a build key.
    pub fn of_record(build_key: &Digest) -> IndexAction {
        IndexAction::new(RECORD_INDEX_VERSION, build_key)
    }

    fn new(version: &str, name: &Digest) -> IndexAction {
        #[allow(deprecated)]
        let command = reapi::Command {
            arguments: vec![version.to_string(), name.to_string()],
            output_files: vec![INDEX_FILE.to_string()],
            output_paths: vec![INDEX_FILE.to_string()],
            ..Default::default()
        }
        .encode_to_vec();
        let input_root = reapi::Directory::default().encode_to_vec();
        let action = reapi::Action {
            command_digest: Some(RDigest::of(&command).to_proto()),
            input_root_digest: Some(RDigest::of(&input_root).to_proto()),
            do_not_cache: false,
            ..Default::default()
        }
        .encode_to_vec();
        IndexAction {
            digest: RDigest::of(&action),
            blobs: [command, input_root, action]
                .into_iter()
                .map(|b| (RDigest::of(&b), b))
                .collect(),
        }
    }

    /// The ActionResult that says `blob` is the blob of this sha256.
    pub fn result(blob: &RDigest) -> reapi::ActionResult {
        reapi::ActionResult {
            output_files: vec![reapi::OutputFile {
                path: INDEX_FILE.to_string(),
                digest: Some(blob.to_proto()),
                is_executable: false,
                ..Default::default()
            }],
            exit_code: 0,
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: format!("hermit {} (blob index)", crate::version::VERSION),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The size an index answer gives for `sha256`, if it names exactly
    /// one blob of that sha256.
    pub fn size_in(result: &reapi::ActionResult, sha256: &Digest) -> Option<u64> {
        let d = IndexAction::named_in(result)?;
        (d.hash == sha256.hex()).then_some(d.size)
    }

    /// The one blob an index answer names (a record index's answer: the
    /// record's blob, which the reader checks).
    pub fn named_in(result: &reapi::ActionResult) -> Option<RDigest> {
        let mut files = result.output_files.iter().filter(|f| f.path == INDEX_FILE);
        let f = files.next()?;
        if files.next().is_some() || result.exit_code != 0 {
            return None;
        }
        RDigest::from_proto(f.digest.as_ref()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/remote")
            .join(name)
    }

    fn sample() -> Record {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/records/record-v1.json");
        let text = std::fs::read_to_string(&path).unwrap();
        Record::parse(&text, "record-v1.json").unwrap()
    }

    /// The action of the golden v1 record: action.json byte for byte and
    /// the Action digest. A change here changes every ActionCache key:
    /// bump ACTION_VERSION and rerun with HERMIT_BLESS=1.
    #[test]
    fn golden_action_of_a_fixed_record() {
        let a = Action::of_record(&sample());
        let json = String::from_utf8(a.action_json.clone()).unwrap();
        let digests = format!(
            "action {}\ncommand {}\ninput_root {}\naction.json {}\n",
            a.digest,
            RDigest::of(&a.command),
            RDigest::of(&a.input_root),
            RDigest::of(&a.action_json)
        );
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::create_dir_all(golden("")).unwrap();
            std::fs::write(golden("action-v1.json"), format!("{json}\n")).unwrap();
            std::fs::write(golden("action-v1.digests"), &digests).unwrap();
        }
        assert_eq!(
            format!("{json}\n"),
            std::fs::read_to_string(golden("action-v1.json")).unwrap(),
            "action.json changed; rerun with HERMIT_BLESS=1 if intended"
        );
        assert_eq!(
            digests,
            std::fs::read_to_string(golden("action-v1.digests")).unwrap(),
            "the Action digest changed; rerun with HERMIT_BLESS=1 if intended"
        );
    }

    /// The index entry of a sha256 is fixed (servers keep entries across
    /// hermit versions) and names only blobs of that sha256.
    #[test]
    fn blob_index_is_fixed_and_checked() {
        let d = Digest::of(b"hello");
        let a = IndexAction::of(&d);
        let line = format!(
            "{} {}\nrecord {}\n",
            d,
            a.digest,
            IndexAction::of_record(&d).digest
        );
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::write(golden("blob-index-v1.digests"), &line).unwrap();
        }
        assert_eq!(
            line,
            std::fs::read_to_string(golden("blob-index-v1.digests")).unwrap(),
            "the blob index's action changed; rerun with HERMIT_BLESS=1 if intended"
        );
        assert_ne!(a.digest, IndexAction::of(&Digest::of(b"other")).digest);
        assert_ne!(a.digest, IndexAction::of_record(&d).digest);
        let good = IndexAction::result(&rdigest(&d, 5));
        assert_eq!(IndexAction::size_in(&good, &d), Some(5));
        // An answer naming another blob, two blobs, or a failure is no answer.
        let other = IndexAction::result(&rdigest(&Digest::of(b"x"), 1));
        assert_eq!(IndexAction::size_in(&other, &d), None);
        let mut two = good.clone();
        two.output_files.push(two.output_files[0].clone());
        assert_eq!(IndexAction::size_in(&two, &d), None);
        let mut failed = good.clone();
        failed.exit_code = 1;
        assert_eq!(IndexAction::size_in(&failed, &d), None);
        assert_eq!(
            IndexAction::size_in(&reapi::ActionResult::default(), &d),
            None
        );
    }

    /// Nothing outside the build key moves the Action digest: not the
    /// job count, not the spec's file name or path, not informational
    /// fields, not source URLs.
    #[test]
    fn only_the_key_moves_the_digest() {
        let r = sample();
        let base = Action::of_record(&r).digest;
        let mut other = r.clone();
        other.environment.jobs = 64;
        other.spec.file = "elsewhere.toml".into();
        other.informational.cpus = 64;
        other.informational.kernel = "9.9".into();
        for s in &mut other.sources {
            if let crate::record::SourceRecord::Remote { urls, .. } = s {
                urls.push("http://127.0.0.1:1/other".into());
            }
        }
        if let Some(v) = other.environment.env.get_mut("HERMIT_JOBS") {
            *v = "64".into();
        }
        assert_eq!(other.key_inputs().build_key(), r.build_key);
        assert_eq!(Action::of_record(&other).digest, base);
        // The spec text is in the key: a different spec, a different action.
        let mut changed = r.clone();
        changed.spec.text.push_str("# x\n");
        changed.spec.digest = Digest::of(changed.spec.text.as_bytes());
        changed.build_key = changed.key_inputs().build_key();
        assert_ne!(Action::of_record(&changed).digest, base);
    }

    #[test]
    fn the_command_and_input_root_decode_as_documented() {
        let r = sample();
        let a = Action::of_record(&r);
        let cmd = reapi::Command::decode(a.command.as_slice()).unwrap();
        assert_eq!(cmd.arguments, ["hermit", "__remote-action", "action.json"]);
        #[allow(deprecated)]
        let files = cmd.output_files.clone();
        assert_eq!(files, ["build.log", "output.tar", "record.json"]);
        assert!(cmd.environment_variables.is_empty());
        let dir = reapi::Directory::decode(a.input_root.as_slice()).unwrap();
        assert_eq!(dir.files.len(), 1);
        assert_eq!(dir.files[0].name, "action.json");
        let v: Value = serde_json::from_slice(&a.action_json).unwrap();
        assert_eq!(v["build_key"], serde_json::json!(r.build_key));
        assert_eq!(v["spec"]["file"], "spec.toml");
        assert_eq!(v["spec"]["text"], r.spec.text.as_str());
        // The key recomputes from action.json's own key inputs.
        assert_eq!(
            Digest::of(v["key_inputs"].to_string().as_bytes()),
            r.build_key
        );
        let act = reapi::Action::decode(a.action.as_slice()).unwrap();
        let props = act.platform.unwrap().properties;
        assert_eq!(props[0].name, "ISA");
        assert_eq!(props[0].value, "amd64");
        assert_eq!(props[1].name, "OSFamily");
        assert_eq!(props[1].value, "linux");
        assert!(act.timeout.is_none());
        assert!(!act.do_not_cache);
    }
}
