//! Golden cases: inputs with the outputs the operator expects, run on the device after
//! activation. Stored in a bundle as `golden.json` (role `golden`):
//! `{"cases": [{"inputs": [v2 tensors], "outputs": [v2 tensors]}]}`.

use std::collections::BTreeMap;

use mint_updater::manifest::{DataType, ReferenceStats, TensorSpec, TensorStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError};
use crate::tensor::V2Tensor;

/// Largest golden file accepted (it is parsed whole).
pub const MAX_GOLDEN_BYTES: usize = 64 * 1024 * 1024;

/// Largest number of generated cases.
pub const MAX_AUTO_CASES: usize = 10_000;

/// The golden file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenFile {
    /// The cases, run in order.
    pub cases: Vec<GoldenCase>,
}

/// One case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCase {
    /// Inputs, one per model input.
    pub inputs: Vec<V2Tensor>,
    /// Expected outputs; when absent in an operator's file, `bundle create` computes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<V2Tensor>>,
}

/// What is wrong with golden cases.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// Not parseable.
    #[error("golden file is not valid: {0}")]
    Parse(String),
    /// Too big.
    #[error("golden file is {size} bytes, above the limit of {limit}")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// No cases.
    #[error("golden file has no cases")]
    Empty,
    /// A case does not fit the model.
    #[error("golden case #{case}: {reason}")]
    Case {
        /// Case index.
        case: usize,
        /// Why.
        reason: String,
    },
    /// The model does not reproduce an expected output.
    #[error("golden case #{case}: output {output:?} value #{index} is {actual}, expected {expected} (tolerance abs {abs}, rel {rel})")]
    Mismatch {
        /// Case index.
        case: usize,
        /// Output name.
        output: String,
        /// Value index.
        index: usize,
        /// Expected value.
        expected: f64,
        /// Actual value.
        actual: f64,
        /// Absolute tolerance.
        abs: f64,
        /// Relative tolerance.
        rel: f64,
    },
    /// The engine failed on a case.
    #[error("golden case #{case}: {source}")]
    Engine {
        /// Case index.
        case: usize,
        /// Engine error.
        #[source]
        source: EngineError,
    },
}

impl GoldenFile {
    /// Parses a golden file.
    pub fn parse(bytes: &[u8]) -> Result<Self, GoldenError> {
        if bytes.len() > MAX_GOLDEN_BYTES {
            return Err(GoldenError::TooLarge {
                size: bytes.len(),
                limit: MAX_GOLDEN_BYTES,
            });
        }
        let file: GoldenFile =
            serde_json::from_slice(bytes).map_err(|e| GoldenError::Parse(e.to_string()))?;
        if file.cases.is_empty() {
            return Err(GoldenError::Empty);
        }
        Ok(file)
    }

    /// Serialises to JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("golden cases always serialise")
    }

    /// Checks every case's inputs against the model's input specs (names, types, shapes).
    pub fn check_inputs(&self, specs: &[TensorSpec]) -> Result<(), GoldenError> {
        for (case, c) in self.cases.iter().enumerate() {
            let fail = |reason: String| GoldenError::Case { case, reason };
            if c.inputs.len() != specs.len() {
                return Err(fail(format!(
                    "{} inputs, the model has {}",
                    c.inputs.len(),
                    specs.len()
                )));
            }
            for spec in specs {
                let t = c
                    .inputs
                    .iter()
                    .find(|t| t.name == spec.name)
                    .ok_or_else(|| fail(format!("missing input {:?}", spec.name)))?;
                if t.datatype != spec.datatype.name() {
                    return Err(fail(format!(
                        "input {:?} is {}, the model wants {}",
                        spec.name,
                        t.datatype,
                        spec.datatype.name()
                    )));
                }
                let fits = t.shape.len() == spec.shape.len()
                    && t.shape
                        .iter()
                        .zip(&spec.shape)
                        .all(|(&d, &s)| s < 0 || d as i64 == s);
                if !fits {
                    return Err(fail(format!(
                        "input {:?} has shape {:?}, the model wants {:?}",
                        spec.name, t.shape, spec.shape
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs each case and fills in missing outputs; cases that have outputs must match them.
    pub fn complete(&mut self, engine: &Engine, abs: f64, rel: f64) -> Result<(), GoldenError> {
        for (case, c) in self.cases.iter_mut().enumerate() {
            let actual = engine
                .run(&c.inputs)
                .map_err(|source| GoldenError::Engine { case, source })?;
            if let Some(bad) = actual
                .iter()
                .find(|t| t.values_f64().iter().any(|v| !v.is_finite()))
            {
                return Err(GoldenError::Case {
                    case,
                    reason: format!(
                        "the model's output {:?} has non-finite values (NaN or infinity); \
                         a health check on it could never pass",
                        bad.name
                    ),
                });
            }
            match &c.outputs {
                Some(expected) => compare(case, expected, &actual, abs, rel)?,
                None => c.outputs = Some(actual),
            }
        }
        Ok(())
    }

    /// Runs every case and checks the outputs within tolerance (the device's health check).
    pub fn check(&self, engine: &Engine, abs: f64, rel: f64) -> Result<(), GoldenError> {
        for (case, c) in self.cases.iter().enumerate() {
            let expected = c.outputs.as_ref().ok_or_else(|| GoldenError::Case {
                case,
                reason: "no expected outputs".into(),
            })?;
            let actual = engine
                .run(&c.inputs)
                .map_err(|source| GoldenError::Engine { case, source })?;
            compare(case, expected, &actual, abs, rel)?;
        }
        Ok(())
    }

    /// Reference statistics of inputs and outputs over all cases, for drift detection.
    pub fn reference_stats(&self) -> ReferenceStats {
        let mut inputs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut outputs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for c in &self.cases {
            for t in &c.inputs {
                inputs
                    .entry(t.name.clone())
                    .or_default()
                    .extend(t.values_f64());
            }
            for t in c.outputs.iter().flatten() {
                outputs
                    .entry(t.name.clone())
                    .or_default()
                    .extend(t.values_f64());
            }
        }
        ReferenceStats {
            inputs: inputs.into_iter().map(|(n, v)| stats(n, &v)).collect(),
            outputs: outputs.into_iter().map(|(n, v)| stats(n, &v)).collect(),
        }
    }
}

/// Generates `n` cases with random inputs inside each input's declared range (or a default
/// range), runs them through the engine and records the outputs. Free dimensions become 1.
pub fn generate(
    engine: &Engine,
    specs: &[TensorSpec],
    n: usize,
    seed: u64,
) -> Result<GoldenFile, GoldenError> {
    if n == 0 || n > MAX_AUTO_CASES {
        return Err(GoldenError::Case {
            case: 0,
            reason: format!("auto:N needs 1 <= N <= {MAX_AUTO_CASES}, got {n}"),
        });
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut cases = Vec::with_capacity(n);
    for _ in 0..n {
        let inputs = specs.iter().map(|s| random_tensor(s, &mut rng)).collect();
        cases.push(GoldenCase {
            inputs,
            outputs: None,
        });
    }
    let mut file = GoldenFile { cases };
    file.complete(engine, 0.0, 0.0)?;
    Ok(file)
}

fn random_tensor(spec: &TensorSpec, rng: &mut SmallRng) -> V2Tensor {
    let shape: Vec<u64> = spec.shape.iter().map(|&d| d.max(1) as u64).collect();
    let count = shape.iter().product::<u64>() as usize;
    let is_float = matches!(spec.datatype, DataType::FP32 | DataType::FP64);
    let [lo, hi] = spec
        .range
        .unwrap_or(if is_float { [-1.0, 1.0] } else { [0.0, 1.0] });
    let data = (0..count)
        .map(|_| match spec.datatype {
            DataType::BOOL => serde_json::json!(rng.gen_bool(0.5)),
            DataType::FP32 => serde_json::json!(rng.gen_range(lo..=hi) as f32),
            DataType::FP64 => serde_json::json!(rng.gen_range(lo..=hi)),
            _ => serde_json::json!(rng.gen_range(lo.ceil() as i64..=hi.floor() as i64)),
        })
        .collect();
    V2Tensor {
        name: spec.name.clone(),
        datatype: spec.datatype.name().into(),
        shape,
        data,
    }
}

fn compare(
    case: usize,
    expected: &[V2Tensor],
    actual: &[V2Tensor],
    abs: f64,
    rel: f64,
) -> Result<(), GoldenError> {
    for e in expected {
        let a = actual
            .iter()
            .find(|a| a.name == e.name)
            .ok_or_else(|| GoldenError::Case {
                case,
                reason: format!("the model has no output {:?}", e.name),
            })?;
        if a.shape != e.shape {
            return Err(GoldenError::Case {
                case,
                reason: format!(
                    "output {:?} has shape {:?}, expected {:?}",
                    e.name, a.shape, e.shape
                ),
            });
        }
        for (index, (x, y)) in e.values_f64().into_iter().zip(a.values_f64()).enumerate() {
            // NaN never matches: `within` is false when either side is NaN.
            let bound = abs + rel * x.abs();
            let within = (x - y).abs() <= bound;
            if !within {
                return Err(GoldenError::Mismatch {
                    case,
                    output: e.name.clone(),
                    index,
                    expected: x,
                    actual: y,
                    abs,
                    rel,
                });
            }
        }
    }
    Ok(())
}

fn stats(name: String, values: &[f64]) -> TensorStats {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let count = finite.len() as u64;
    let mean = if count == 0 {
        0.0
    } else {
        finite.iter().sum::<f64>() / count as f64
    };
    let var = if count == 0 {
        0.0
    } else {
        finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64
    };
    TensorStats {
        name,
        count,
        mean,
        std: var.sqrt(),
        min: finite
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(f64::MAX),
        max: finite
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(f64::MIN),
    }
}
