//! Stage 2, plan: the key inputs, owned, and the build key computed once
//! from them. The record is assembled from these same values
//! ([`Plan::record`]), so the key a record states is the key the build was
//! looked up and installed under.

use hermit_store::Digest;

use super::resolve::Resolved;
use crate::record::{
    self, ImageRecord, Informational, InputRecord, LogRecord, ProfileRecord, Record, RecordParts,
    SourceRecord,
};

/// A resolved build and its key.
pub struct Plan {
    pub resolved: Resolved,
    pub image: ImageRecord,
    pub sources: Vec<SourceRecord>,
    pub inputs: Vec<InputRecord>,
    pub profile: ProfileRecord,
    pub spec_digest: Digest,
    pub lock_digest: Option<Digest>,
    /// The build key: the sha256 of [`record::KeyInputs::canonical`].
    pub key: Digest,
}

impl Plan {
    pub fn new(resolved: Resolved) -> anyhow::Result<Plan> {
        let image = ImageRecord::from_image(&resolved.image_reference, &resolved.image);
        let sources: Vec<SourceRecord> =
            resolved.sources.iter().map(|s| s.record.clone()).collect();
        let inputs: Vec<InputRecord> = resolved.inputs.iter().map(|i| i.record.clone()).collect();
        let profile = ProfileRecord {
            name: resolved.profile.name.clone(),
            digest: resolved.profile.digest()?.parse()?,
        };
        let spec_digest = Digest::of(resolved.spec_text.as_bytes());
        let lock_digest = resolved
            .lock_text
            .as_ref()
            .map(|t| Digest::of(t.as_bytes()));
        let mut plan = Plan {
            resolved,
            image,
            sources,
            inputs,
            profile,
            spec_digest,
            lock_digest,
            key: Digest::of(b""),
        };
        plan.key = plan.key_inputs().build_key();
        Ok(plan)
    }

    /// What the build key is computed from.
    pub fn key_inputs(&self) -> record::KeyInputs<'_> {
        record::KeyInputs {
            spec: &self.spec_digest,
            lock: self.lock_digest.as_ref(),
            image: &self.image,
            sources: &self.sources,
            inputs: &self.inputs,
            profile: &self.profile,
            environment: &self.resolved.environment,
        }
    }

    /// The package, as the spec names it.
    pub fn package(&self) -> record::Package {
        record::Package {
            name: self.resolved.spec.package.name.clone(),
            version: self.resolved.spec.package.version.clone(),
        }
    }

    /// The record of this plan's build with `output`.
    pub fn record(
        &self,
        output: &crate::output::Normalized,
        log: LogRecord,
        informational: Informational,
    ) -> anyhow::Result<Record> {
        let r = &self.resolved;
        Ok(Record::assemble(RecordParts {
            build_key: Some(self.key),
            package: self.package(),
            spec_file: &r.spec_path.display().to_string(),
            spec_text: r.spec_text.clone(),
            lock_text: r.lock_text.clone(),
            image: self.image.clone(),
            sources: self.sources.clone(),
            inputs: self.inputs.clone(),
            profile_name: &self.profile.name,
            environment: r.environment.clone(),
            output,
            log,
            informational,
        })?)
    }
}
