//! The signed manifest: what a bundle holds and what the operator promises about the model.
//!
//! It travels as the CBOR payload of the COSE_Sign header. It is only ever decoded from bytes
//! whose signatures were already verified ([`crate::bundle::verify`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{BundleError, Result};

/// The manifest format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Longest file path accepted in a manifest.
pub const MAX_PATH_LEN: usize = 255;

/// The manifest of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Model name: the unit of anti-rollback and of the active pointer.
    pub name: String,
    /// Display version, free text for humans.
    pub version: String,
    /// Monotonic sequence for anti-rollback, per model name.
    pub sequence: u64,
    /// Creation time, unix seconds.
    pub created: i64,
    /// Expiry time, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Device classes or architectures the bundle may install on; empty means any device.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The files of the payload, in payload order.
    pub files: Vec<FileEntry>,
    /// Model inputs.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs.
    pub outputs: Vec<TensorSpec>,
    /// The health check run on the device after activation.
    pub health: HealthCheck,
    /// Limits the inference guard enforces for this model.
    pub guard: GuardSettings,
    /// Reference statistics of inputs and outputs, for drift detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceStats>,
}

/// One file of the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the model directory (`[A-Za-z0-9._-]` components, `/` separated).
    pub path: String,
    /// What the file is for.
    pub role: FileRole,
    /// Size of the plain bytes.
    pub size: u64,
    /// Size of the zstd frame in the payload.
    pub compressed_size: u64,
    /// SHA-256 of the plain bytes, lowercase hex.
    pub sha256: String,
}

/// What a file in a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    /// The ONNX model (exactly one per bundle).
    Model,
    /// Golden cases for the health check (JSON, v2 tensors).
    Golden,
    /// Anything else the model needs (labels, tokenizer, ...).
    Other,
}

/// Tensor element types, named as in the Open Inference Protocol v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum DataType {
    BOOL,
    UINT8,
    INT8,
    INT16,
    INT32,
    INT64,
    FP16,
    FP32,
    FP64,
}

impl DataType {
    /// The v2 protocol name (`FP32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::BOOL => "BOOL",
            DataType::UINT8 => "UINT8",
            DataType::INT8 => "INT8",
            DataType::INT16 => "INT16",
            DataType::INT32 => "INT32",
            DataType::INT64 => "INT64",
            DataType::FP16 => "FP16",
            DataType::FP32 => "FP32",
            DataType::FP64 => "FP64",
        }
    }

    /// Parses a v2 protocol name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => DataType::BOOL,
            "UINT8" => DataType::UINT8,
            "INT8" => DataType::INT8,
            "INT16" => DataType::INT16,
            "INT32" => DataType::INT32,
            "INT64" => DataType::INT64,
            "FP16" => DataType::FP16,
            "FP32" => DataType::FP32,
            "FP64" => DataType::FP64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::BOOL | DataType::UINT8 | DataType::INT8 => 1,
            DataType::INT16 | DataType::FP16 => 2,
            DataType::INT32 | DataType::FP32 => 4,
            DataType::INT64 | DataType::FP64 => 8,
        }
    }
}

/// Name, element type, shape and optional value range of a model input or output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name as in the model.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Shape; `-1` marks a free dimension (the batch, usually).
    pub shape: Vec<i64>,
    /// Inclusive range every value must lie in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
}

/// The health check a device runs after activating the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path of the golden-cases file (role `golden`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<String>,
    /// Absolute tolerance on each output value.
    pub tolerance_abs: f64,
    /// Relative tolerance on each output value.
    pub tolerance_rel: f64,
    /// Budget for one golden inference on the device, milliseconds.
    pub latency_budget_ms: u32,
    /// Trial window: number of requests.
    pub trial_requests: u32,
    /// Trial window: seconds.
    pub trial_seconds: u32,
    /// Largest error rate accepted during the trial (0..=1).
    pub max_error_rate: f64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            golden: None,
            tolerance_abs: 1e-4,
            tolerance_rel: 1e-3,
            latency_budget_ms: 1000,
            trial_requests: 100,
            trial_seconds: 300,
            max_error_rate: 0.05,
        }
    }
}

/// Request limits the inference guard applies to this model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSettings {
    /// Requests per second per peer.
    pub rate_limit_per_sec: u32,
    /// Largest batch dimension accepted.
    pub max_batch: u32,
    /// Deadline of one request, milliseconds.
    pub timeout_ms: u32,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            rate_limit_per_sec: 100,
            max_batch: 8,
            timeout_ms: 1000,
        }
    }
}

/// Reference statistics recorded when the bundle was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReferenceStats {
    /// One entry per input tensor.
    pub inputs: Vec<TensorStats>,
    /// One entry per output tensor.
    pub outputs: Vec<TensorStats>,
}

/// Summary statistics of the values of one tensor over the reference cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorStats {
    /// Tensor name.
    pub name: String,
    /// Number of values summarised.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Manifest {
    /// Encodes the manifest as CBOR (the COSE payload).
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).map_err(|e| BundleError::Build {
            reason: format!("cannot encode manifest: {e}"),
        })?;
        Ok(out)
    }

    /// Decodes and validates a manifest from authenticated CBOR bytes.
    ///
    /// The format version is read first, so that a newer manifest is refused as
    /// [`BundleError::UnsupportedFormat`] rather than as a decoding error.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        let mut rest = bytes;
        let value: ciborium::Value =
            ciborium::from_reader(&mut rest).map_err(|e| malformed(format!("not CBOR: {e}")))?;
        // Exactly one CBOR item: bytes after it would be signed and measured but never read,
        // and another parser might read them differently.
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the manifest's CBOR item",
                rest.len()
            )));
        }
        let map = value
            .as_map()
            .ok_or_else(|| malformed("not a CBOR map".into()))?;
        let format = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("format"))
            .and_then(|(_, v)| v.as_integer())
            .ok_or_else(|| malformed("missing integer field `format`".into()))?;
        let format = u64::try_from(format).unwrap_or(u64::MAX);
        if format != u64::from(FORMAT_VERSION) {
            return Err(BundleError::UnsupportedFormat {
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = value.deserialized().map_err(|e| {
            // ciborium's Display of this error is its Debug form (`Custom("...")`).
            let ciborium::value::Error::Custom(reason) = e;
            malformed(reason)
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The structural rules every manifest obeys, whoever signed it.
    pub fn validate(&self) -> Result<()> {
        check_name("name", &self.name)?;
        if self.version.is_empty() || self.version.len() > 64 {
            return Err(malformed("`version` must be 1 to 64 characters".into()));
        }
        if let Some(expires) = self.expires {
            if expires <= self.created {
                return Err(malformed(format!(
                    "`expires` ({expires}) is not after `created` ({})",
                    self.created
                )));
            }
        }
        for target in &self.targets {
            check_name("targets", target)?;
        }
        let mut seen = BTreeSet::new();
        for file in &self.files {
            check_path(&file.path)?;
            if !seen.insert(file.path.to_ascii_lowercase()) {
                return Err(BundleError::DuplicatePath {
                    path: file.path.clone(),
                });
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(malformed(format!(
                    "`sha256` of {} is not 64 lowercase hex digits",
                    file.path
                )));
            }
        }
        // "a" and "a/b" cannot both exist: one would have to be a file and a directory.
        for path in &seen {
            let mut prefix = path.as_str();
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(BundleError::DuplicatePath {
                        path: parent.to_owned(),
                    });
                }
                prefix = parent;
            }
        }
        let models = self
            .files
            .iter()
            .filter(|f| f.role == FileRole::Model)
            .count();
        if models != 1 {
            return Err(malformed(format!(
                "exactly one file must have role `model`, found {models}"
            )));
        }
        match &self.health.golden {
            Some(golden) => {
                let ok = self
                    .files
                    .iter()
                    .any(|f| &f.path == golden && f.role == FileRole::Golden);
                if !ok {
                    return Err(malformed(format!(
                        "`health.golden` names {golden:?}, which is not a file with role `golden`"
                    )));
                }
            }
            None => {
                if self.files.iter().any(|f| f.role == FileRole::Golden) {
                    return Err(malformed(
                        "a file has role `golden` but `health.golden` is not set".into(),
                    ));
                }
            }
        }
        let h = &self.health;
        for (field, v) in [
            ("health.tolerance_abs", h.tolerance_abs),
            ("health.tolerance_rel", h.tolerance_rel),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(malformed(format!("`{field}` must be finite and >= 0")));
            }
        }
        if !(0.0..=1.0).contains(&h.max_error_rate) {
            return Err(malformed("`health.max_error_rate` must be in 0..=1".into()));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(malformed(
                "a model needs at least one input and one output".into(),
            ));
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if spec.name.is_empty() || spec.name.len() > 256 {
                return Err(malformed(
                    "a tensor name must be 1 to 256 characters".into(),
                ));
            }
            if spec.shape.len() > 16 || spec.shape.iter().any(|&d| d < -1) {
                return Err(malformed(format!(
                    "tensor {:?} has an invalid shape {:?}",
                    spec.name, spec.shape
                )));
            }
            if let Some([lo, hi]) = spec.range {
                if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                    return Err(malformed(format!(
                        "tensor {:?} has an invalid range [{lo}, {hi}]",
                        spec.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The model file entry (validation guarantees there is exactly one).
    pub fn model_file(&self) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == FileRole::Model)
    }

    /// Sum of the plain sizes of all files.
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.size)
            .fold(0, u64::saturating_add)
    }
}

fn malformed(reason: String) -> BundleError {
    BundleError::MalformedManifest { reason }
}

/// Names (model names, targets) become directory names and MQTT topic levels.
fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(malformed(format!(
            "`{field}` value {name:?} must be 1 to 64 characters of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

/// A file path must stay inside the directory it is unpacked into, on any filesystem.
pub fn check_path(path: &str) -> Result<()> {
    let refuse = |reason| {
        Err(BundleError::BadPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("empty path");
    }
    if path.len() > MAX_PATH_LEN {
        return refuse("longer than 255 bytes");
    }
    if path.starts_with('/') {
        return refuse("absolute path");
    }
    if path.contains('\\') {
        return refuse("backslash in path");
    }
    for component in path.split('/') {
        match component {
            "" => return refuse("empty path component"),
            "." | ".." => return refuse("'.' or '..' component (path traversal)"),
            c if c.starts_with('.') => return refuse("hidden component"),
            c if !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                return refuse("characters outside [A-Za-z0-9._-]")
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "./a",
            "",
            ".hidden",
            "a/ b",
        ] {
            assert!(
                matches!(check_path(bad), Err(BundleError::BadPath { .. })),
                "{bad:?} accepted"
            );
        }
        for good in ["model.onnx", "assets/labels.txt", "a-b_c.1"] {
            check_path(good).unwrap();
        }
    }
}
