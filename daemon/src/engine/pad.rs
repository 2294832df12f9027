//! Constant padding of f32 tensors in one pass, for tract's optimised plans.
//!
//! tract places a `Pad` before each padded convolution (its lazy im2col reads a valid,
//! already padded image). tract-core 0.23.9's `Pad` makes three passes over the output: it
//! fills an ndarray with the pad value, assigns the input into its interior, then copies the
//! whole array into a new tensor. [`substitute_pads`] swaps each constant-mode `Pad` of an
//! f32 tensor for [`PadConstant`], which writes every output value once into a zeroed
//! tensor: the pad value around, the input's rows copied in between. The values are the same
//! bits.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

/// Pads an f32 tensor with `value`: `pads[axis]` elements before and after each axis, like
/// tract's `Pad` in constant mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PadConstant {
    /// Elements added before and after, per axis.
    pub pads: Vec<(usize, usize)>,
    /// The value of the added elements, as tract casts its pad value to f32.
    pub value: F32Bits,
}

/// An f32 kept as its bits, so that the operator can be compared and hashed as tract's
/// operators are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct F32Bits(pub u32);

impl Op for PadConstant {
    fn name(&self) -> StaticName {
        "PadConstant".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PadConstant {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.rank() == self.pads.len(),
            "PadConstant has pads for rank {}, got an input of shape {:?}",
            self.pads.len(),
            input.shape()
        );
        let in_shape = input.shape().to_vec();
        let out_shape = self.output_shape(&in_shape);
        let before: Vec<usize> = self.pads.iter().map(|p| p.0).collect();
        let value = f32::from_bits(self.value.0);
        super::f32_into_new(&input, &out_shape, |input, out| {
            pad_into(input, &in_shape, out, &out_shape, &before, value)
        })
    }
}

impl PadConstant {
    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input
            .iter()
            .zip(&self.pads)
            .map(|(d, (a, b))| d + a + b)
            .collect()
    }
}

impl TypedOp for PadConstant {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let fact = inputs[0];
        ensure!(
            fact.datum_type == f32::datum_type() && fact.rank() == self.pads.len(),
            "PadConstant wants an f32 input of rank {}, got {fact:?}",
            self.pads.len()
        );
        let shape: TVec<TDim> = fact
            .shape
            .iter()
            .zip(&self.pads)
            .map(|(d, (a, b))| d.clone() + *a + *b)
            .collect();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Writes `input` (of `in_shape`) into `out` (of `out_shape`) at offset `before` on each axis
/// and `value` everywhere else: one write per output element, the innermost axis as slice
/// copies and fills.
fn pad_into(
    input: &[f32],
    in_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
    before: &[usize],
    value: f32,
) {
    let [rows, inner_in @ ..] = in_shape else {
        // Rank 0: the one element is the input's.
        out.copy_from_slice(input);
        return;
    };
    let inner_out = &out_shape[1..];
    if inner_in.is_empty() {
        let (head, rest) = out.split_at_mut(before[0]);
        let (body, tail) = rest.split_at_mut(*rows);
        head.fill(value);
        body.copy_from_slice(input);
        tail.fill(value);
        return;
    }
    let out_stride: usize = inner_out.iter().product();
    let in_stride: usize = inner_in.iter().product();
    if out_stride == 0 {
        return;
    }
    for (i, block) in out.chunks_exact_mut(out_stride).enumerate() {
        match i.checked_sub(before[0]).filter(|j| j < rows) {
            Some(j) => pad_into(
                &input[j * in_stride..(j + 1) * in_stride],
                inner_in,
                block,
                inner_out,
                &before[1..],
                value,
            ),
            None => block.fill(value),
        }
    }
}

/// Replaces, in an optimised model, each of tract's `Pad` nodes in constant mode on an f32
/// input of known rank by [`PadConstant`]; leaves every other node as it is.
pub fn substitute_pads(mut model: TypedModel) -> TractResult<TypedModel> {
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(pad) = node.op_as::<Pad>() else {
            continue;
        };
        let PadMode::Constant(value) = &pad.mode else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        if node.inputs.len() != 1
            || fact.datum_type != f32::datum_type()
            || fact.rank() != pad.pads.len()
        {
            continue;
        }
        let value = F32Bits(value.cast_to_scalar::<f32>()?.to_bits());
        model.nodes[id].op = Box::new(PadConstant {
            pads: pad.pads.clone(),
            value,
        });
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{bits, one_op_model, op_names};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// A model of one tract `Pad` of an f32 input of `shape`, optimised by tract.
    fn pad_model(shape: &[usize], pads: &[(usize, usize)], mode: PadMode) -> TypedModel {
        let pad = Pad {
            pads: pads.to_vec(),
            mode,
        };
        one_op_model(f32::fact(shape), pad)
    }

    #[test]
    fn substituted_pads_give_tracts_shapes_and_bits() {
        let mut rng = SmallRng::seed_from_u64(0x9ad);
        let shapes: [&[usize]; 8] = [
            &[1, 3, 8, 8],
            &[2, 5, 7, 3],
            &[1, 1, 1, 1],
            &[4],
            &[3, 0, 2],
            &[2, 3],
            &[1, 2, 3, 4, 5],
            &[1, 32, 32, 32],
        ];
        let specials = [f32::NAN, -0.0, f32::INFINITY, 1.5];
        for shape in shapes {
            for round in 0..6 {
                let mut pads: Vec<(usize, usize)> = shape
                    .iter()
                    .map(|_| (rng.gen_range(0..3), rng.gen_range(0..3)))
                    .collect();
                // tract drops a pad of nothing.
                if pads.iter().all(|&p| p == (0, 0)) {
                    pads[0].1 = 1;
                }
                let value = if round < 2 {
                    0.0
                } else {
                    specials[rng.gen_range(0..specials.len())]
                };
                let mode = PadMode::Constant(Arc::new(tensor0(value)));
                let stock = pad_model(shape, &pads, mode);
                assert!(op_names(&stock).contains(&"Pad".to_string()));
                let ours = substitute_pads(stock.clone()).unwrap();
                assert_eq!(op_names(&ours), ["Source", "PadConstant"], "{shape:?}");
                let len: usize = shape.iter().product();
                let values: Vec<f32> = (0..len)
                    .map(|i| {
                        if i % 7 == 3 {
                            -0.0
                        } else {
                            rng.gen_range(-9.0..9.0)
                        }
                    })
                    .collect();
                let x = Tensor::from_shape(shape, &values).unwrap().into_tvalue();
                let stock = stock.into_runnable().unwrap();
                let ours = ours.into_runnable().unwrap();
                let want = stock.run(tvec![x.clone()]).unwrap();
                let got = ours.run(tvec![x]).unwrap();
                assert_eq!(got[0].shape(), want[0].shape(), "{shape:?} {pads:?}");
                assert_eq!(bits(&got[0]), bits(&want[0]), "{shape:?} {pads:?} {value}");
            }
        }
    }

    #[test]
    fn reflect_and_edge_pads_keep_tracts_operator() {
        for mode in [PadMode::Reflect, PadMode::Edge] {
            let stock = pad_model(&[1, 2, 5, 5], &[(0, 0), (0, 0), (1, 1), (2, 1)], mode);
            let names = op_names(&stock);
            let ours = substitute_pads(stock).unwrap();
            assert_eq!(op_names(&ours), names);
        }
    }

    #[test]
    fn non_f32_pads_keep_tracts_operator() {
        let pad = Pad {
            pads: vec![(1, 1), (0, 2)],
            mode: PadMode::Constant(Arc::new(tensor0(0i32))),
        };
        let stock = one_op_model(i32::fact([2, 3]), pad);
        let names = op_names(&stock);
        assert_eq!(op_names(&substitute_pads(stock).unwrap()), names);
    }
}
