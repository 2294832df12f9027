//! The inference engine: tract, fed only with model bytes whose digest is checked in memory
//! right before parsing.

use std::sync::Arc;

use mint_updater::manifest::TensorSpec;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::tensor::{datatype_of, TensorError, V2Tensor};

/// Why the engine refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bytes handed to the engine are not the ones that were verified.
    #[error("model bytes have SHA-256 {actual}, expected {expected}: refusing to load")]
    Digest {
        /// Verified digest.
        expected: String,
        /// Digest of the bytes given.
        actual: String,
    },
    /// tract could not load or optimise the model.
    #[error("the ONNX model cannot be loaded: {0}")]
    Load(String),
    /// The model's interface cannot be described in v2 terms.
    #[error("the model's {what} cannot be described: {reason}")]
    Interface {
        /// Which tensor.
        what: String,
        /// Why.
        reason: String,
    },
    /// An input tensor is unusable.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The request does not match the model's inputs.
    #[error("inputs do not match the model: {0}")]
    Inputs(String),
    /// tract failed while running.
    #[error("inference failed: {0}")]
    Run(String),
}

/// A loaded, optimised model ready to run.
pub struct Engine {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Engine {
    /// Checks that `bytes` hash to `expected_sha256` (hex), then loads them with tract.
    pub fn load_verified(bytes: &[u8], expected_sha256: &str) -> Result<Self, EngineError> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != expected_sha256 {
            return Err(EngineError::Digest {
                expected: expected_sha256.into(),
                actual,
            });
        }
        Self::load_unchecked(bytes)
    }

    /// Loads model bytes the caller has just produced itself (`mintctl bundle create` reads
    /// the operator's own file); the device path uses [`Engine::load_verified`].
    pub fn load_unchecked(mut bytes: &[u8]) -> Result<Self, EngineError> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut bytes)
            .map_err(|e| EngineError::Load(format!("{e:#}")))?;
        let typed = model
            .into_optimized()
            .map_err(|e| EngineError::Load(format!("{e:#}")))?;
        let inputs = describe(&typed, typed.input_outlets().map_err(load)?, "input")?;
        let outputs = describe(&typed, typed.output_outlets().map_err(load)?, "output")?;
        let plan = typed.into_runnable().map_err(load)?;
        Ok(Engine {
            plan,
            inputs,
            outputs,
        })
    }

    /// Input specs as read from the model (`-1` for symbolic dimensions).
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Output specs as read from the model.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs one inference on v2 tensors, given in any order but naming every input.
    pub fn run(&self, inputs: &[V2Tensor]) -> Result<Vec<V2Tensor>, EngineError> {
        let named = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), t.to_tract()?)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        self.run_tensors(named)?
            .iter()
            .map(|(name, t)| Ok(V2Tensor::from_tract(name, t)?))
            .collect()
    }

    /// Runs one inference on named tract tensors, given in any order but naming every input
    /// exactly once; returns every output, named, in the model's order.
    pub fn run_tensors(
        &self,
        mut inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        let given = inputs.len();
        let mut ordered = TVec::new();
        for spec in &self.inputs {
            let at = inputs
                .iter()
                .position(|(name, _)| *name == spec.name)
                .ok_or_else(|| EngineError::Inputs(format!("missing input {:?}", spec.name)))?;
            ordered.push(inputs.swap_remove(at).1.into_tvalue());
        }
        if !inputs.is_empty() {
            return Err(EngineError::Inputs(format!(
                "{given} inputs given, the model has {}",
                self.inputs.len()
            )));
        }
        let outputs = self
            .plan
            .run(ordered)
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        Ok(self
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, t)| (spec.name.clone(), t.into_tensor()))
            .collect())
    }
}

fn load(e: TractError) -> EngineError {
    EngineError::Load(format!("{e:#}"))
}

fn describe(
    model: &TypedModel,
    outlets: &[OutletId],
    what: &str,
) -> Result<Vec<TensorSpec>, EngineError> {
    outlets
        .iter()
        .enumerate()
        .map(|(ix, &outlet)| {
            let name = model
                .outlet_label(outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(outlet.node).name.clone());
            let fact = model.outlet_fact(outlet).map_err(load)?;
            let datatype = datatype_of(fact.datum_type).ok_or_else(|| EngineError::Interface {
                what: format!("{what} #{ix} ({name})"),
                reason: format!("element type {:?} has no v2 datatype", fact.datum_type),
            })?;
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().unwrap_or(-1))
                .collect();
            Ok(TensorSpec {
                name,
                datatype,
                shape,
                range: None,
            })
        })
        .collect()
}
