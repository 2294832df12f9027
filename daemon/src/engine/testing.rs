//! What the tests of mintd's operators share: one-operator models and their names and bits.

use tract_onnx::prelude::*;

/// A model of one operator over an input of `fact`, optimised by tract.
pub fn one_op_model(fact: TypedFact, op: impl Into<Box<dyn TypedOp>>) -> TypedModel {
    let mut model = TypedModel::default();
    let source = model.add_source("x", fact).unwrap();
    let out = model.wire_node("op", op, &[source]).unwrap();
    model.select_output_outlets(&out).unwrap();
    model.into_optimized().unwrap()
}

/// The names of a model's operators, in node order.
pub fn op_names(model: &TypedModel) -> Vec<String> {
    model
        .nodes
        .iter()
        .map(|n| n.op.name().to_string())
        .collect()
}

/// How many of a model's operators are named `name`.
pub fn count(model: &TypedModel, name: &str) -> usize {
    op_names(model).iter().filter(|n| *n == name).count()
}

/// An f32 tensor's values, in order.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// The bits of an f32 tensor's values, in order.
pub fn bits(t: &Tensor) -> Vec<u32> {
    values(t).into_iter().map(f32::to_bits).collect()
}
