//! A faster 2×2, stride-2 f32 max pool for tract's optimised plans.
//!
//! tract-core 0.23.9 vectorises its 2×2 f32 pool only at stride 1; at stride 2 (the usual
//! down-sampling pool of a convnet) it visits every tap through a scalar loop with bounds
//! checks. [`substitute_pools`] swaps each such `OptMaxPool` of an optimised model for
//! [`MaxPool2x2S2`], which reads the two input rows of an output row as pairs and folds them
//! exactly as tract does, so the outputs are the same bits; on x86-64 cores with AVX-512,
//! sixteen outputs at a time. [`absorb_pads`] then lets a pool write its output straight
//! into the zero padding of the convolution that reads it, instead of a `PadConstant` copying
//! it there.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{OptMaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::pad::PadConstant;

/// Max pool of f32 NCHW tensors, kernel 2×2, stride 2, no dilation, no padding of its input:
/// output `[N, C, H/2 + top + bottom, W/2 + left + right]` (`H/2`, `W/2` rounded down: an
/// odd last row or column is not read), where `padding` adds rows and columns of +0 around
/// each pooled plane (as a `PadConstant` of zeros after the pool would).
///
/// Each output is `f32::MIN.max(a).max(b).max(c).max(d)` over its window's taps in row-major
/// order, tract's own fold (`f32::max` ignores NaN, so a window of NaN or -inf alone gives
/// `f32::MIN`), hence bit for bit tract's `OptMaxPool` on the same input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MaxPool2x2S2 {
    /// Zeros around each output plane: `[[top, bottom], [left, right]]`.
    pub padding: [[usize; 2]; 2],
}

impl Op for MaxPool2x2S2 {
    fn name(&self) -> StaticName {
        "MaxPool2x2S2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("padding: {:?}", self.padding)])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2S2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[n, c, h, w] = input.shape() else {
            bail!("MaxPool2x2S2 wants a rank-4 input, got {:?}", input.shape());
        };
        let [[top, bottom], [left, right]] = self.padding;
        let out = Plane {
            h: h / 2 + top + bottom,
            w: w / 2 + left + right,
            top,
            left,
        };
        super::f32_into_new(&input, &[n, c, out.h, out.w], |input, output| {
            pool_planes(input, output, h, w, &out)
        })
    }
}

impl TypedOp for MaxPool2x2S2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let fact = inputs[0];
        ensure!(
            fact.datum_type == f32::datum_type() && fact.rank() == 4,
            "MaxPool2x2S2 wants a rank-4 f32 input, got {fact:?}"
        );
        let s = &fact.shape;
        let [[top, bottom], [left, right]] = self.padding;
        let shape = [
            s[0].clone(),
            s[1].clone(),
            s[2].clone() / 2 + (top + bottom).to_dim(),
            s[3].clone() / 2 + (left + right).to_dim(),
        ];
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// An output plane: its size, and where the pooled values start in it.
struct Plane {
    h: usize,
    w: usize,
    top: usize,
    left: usize,
}

/// Pools every `h`×`w` plane of `input` into the matching plane of `output`, laid out as
/// `out` says (the `(h/2)`×`(w/2)` pooled values from row `top`, column `left` on; the rest
/// of the plane is left as it is).
fn pool_planes(input: &[f32], output: &mut [f32], h: usize, w: usize, out: &Plane) {
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        return;
    }
    for (plane, out_plane) in input
        .chunks_exact(h * w)
        .zip(output.chunks_exact_mut(out.h * out.w))
    {
        // `oh` pairs of rows; an odd last row is left out, as tract leaves it.
        for (rows, out_row) in plane
            .chunks_exact(2 * w)
            .zip(out_plane[out.top * out.w..].chunks_mut(out.w))
        {
            let (r0, r1) = rows.split_at(w);
            pool_row(&r0[..2 * ow], &r1[..2 * ow], &mut out_row[out.left..][..ow]);
        }
    }
}

/// One output row from its two input rows, read as pairs of columns (`out.len()` pairs).
/// Taps fold in tract's order: row 0 left, right, then row 1 left, right.
#[inline]
fn pool_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        // SAFETY: the CPU has AVX-512F, checked just above.
        unsafe { super::avx512::pool_row(r0, r1, out) };
        return;
    }
    let (top, _) = r0.as_chunks::<2>();
    let (bottom, _) = r1.as_chunks::<2>();
    for ((o, a), b) in out.iter_mut().zip(top).zip(bottom) {
        *o = f32::MIN.max(a[0]).max(a[1]).max(b[0]).max(b[1]);
    }
}

/// Replaces, in an optimised model, each of tract's `OptMaxPool` nodes that [`MaxPool2x2S2`]
/// computes the same by that operator; leaves every other node as it is. Part of
/// [`super::substitute_kernels`].
pub fn substitute_pools(mut model: TypedModel) -> TractResult<TypedModel> {
    for id in 0..model.nodes.len() {
        if replaceable(&model, &model.nodes[id])? {
            model.nodes[id].op = Box::new(MaxPool2x2S2::default());
        }
    }
    Ok(model)
}

/// Whether `node` is an `OptMaxPool` whose every output [`MaxPool2x2S2`] computes bit for bit:
/// f32 NCHW input of concrete shape with H, W ≥ 2, kernel 2×2, strides 2, dilations 1, no
/// padding, no index output, and tract's output fact `[N, C, H/2, W/2]`.
fn replaceable(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let Some(pool) = node.op_as::<OptMaxPool>() else {
        return Ok(false);
    };
    if node.inputs.len() != 1 || node.outputs.len() != 1 {
        return Ok(false);
    }
    let spec = &pool.pool_spec;
    let unpadded = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after.iter()).all(|&p| p == 0),
        _ => false,
    };
    if pool.with_index_outputs.is_some()
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape[..] != [2, 2]
        || spec.strides()[..] != [2, 2]
        || spec.dilations()[..] != [1, 1]
        || !unpadded
    {
        return Ok(false);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(&[n, c, h, w]) = input.shape.as_concrete() else {
        return Ok(false);
    };
    if input.datum_type != f32::datum_type() || h < 2 || w < 2 {
        return Ok(false);
    }
    let output = &node.outputs[0].fact;
    Ok(output.datum_type == f32::datum_type()
        && output.shape.as_concrete() == Some(&[n, c, h / 2, w / 2][..]))
}

/// Lets each [`MaxPool2x2S2`] whose output only a [`PadConstant`] of +0 reads, padding rows
/// and columns alone, write into that padding itself: the pool takes the pad's place and
/// the pad goes. The values are the same bits. Part of [`super::substitute_kernels`], after
/// [`substitute_pools`] and the pads' substitution.
pub fn absorb_pads(mut model: TypedModel) -> TractResult<TypedModel> {
    let outputs = model.output_outlets()?.to_vec();
    let mut changed = false;
    for pad_id in 0..model.nodes.len() {
        let pad_node = &model.nodes[pad_id];
        let Some(pad) = pad_node.op_as::<PadConstant>() else {
            continue;
        };
        let Some(&pool_out) = pad_node.inputs.first() else {
            continue;
        };
        let pool_node = &model.nodes[pool_out.node];
        let Some(pool) = pool_node.op_as::<MaxPool2x2S2>() else {
            continue;
        };
        if pad.value.0 != 0
            || pad.pads.len() != 4
            || pad.pads[..2] != [(0, 0), (0, 0)]
            || pool.padding != [[0, 0], [0, 0]]
            || pool_node.outputs[0].successors.len() != 1
            || outputs.contains(&pool_out)
        {
            continue;
        }
        let padded = MaxPool2x2S2 {
            padding: [
                [pad.pads[2].0, pad.pads[2].1],
                [pad.pads[3].0, pad.pads[3].1],
            ],
        };
        let mut patch = TypedModelPatch::new(format!("mintd pool into {}", pad_node.name));
        let input = patch.tap_model(&model, pool_node.inputs[0])?;
        let out = patch.wire_node(&pool_node.name, padded, &[input])?[0];
        patch.shunt_outside(&model, OutletId::new(pad_id, 0), out)?;
        patch.obliterate(pool_out.node)?;
        patch.obliterate(pad_id)?;
        patch.apply(&mut model)?;
        changed = true;
    }
    if changed {
        model.compact()?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{bits, one_op_model, op_names};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PoolSpec};

    /// A model of one tract `MaxPool` over an f32 input of `shape`, optimised by tract.
    fn pool_model(
        shape: &[usize],
        format: DataFormat,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: PaddingSpec,
    ) -> TypedModel {
        let channels = match format {
            DataFormat::NCHW => shape[1],
            _ => shape[3],
        };
        let spec = PoolSpec::new(
            format,
            tvec![kernel[0], kernel[1]],
            padding,
            None,
            Some(tvec![strides[0], strides[1]]),
            channels,
            channels,
        );
        let pool = MaxPool {
            pool_spec: spec,
            with_index_outputs: None,
        };
        one_op_model(f32::fact(shape), pool)
    }

    /// Values that tell folds apart: NaN, ±inf, ±0, f32::MIN, repeats and ordinary numbers.
    fn tricky(rng: &mut SmallRng, len: usize) -> Vec<f32> {
        const SPECIAL: [f32; 9] = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MIN,
            f32::MAX,
            1.0,
            -1.0,
        ];
        (0..len)
            .map(|_| match rng.gen_range(0..4) {
                0 => SPECIAL[rng.gen_range(0..SPECIAL.len())],
                _ => rng.gen_range(-4i32..4) as f32 * 0.5,
            })
            .collect()
    }

    #[test]
    fn substituted_pools_give_tracts_bits_for_every_shape_and_special_value() {
        let mut rng = SmallRng::seed_from_u64(0x2a2a);
        for n in 1..=3 {
            for c in 1..=5 {
                for h in 2..=17 {
                    // Rows of 1 to 8 outputs, and of more than one vector of 16.
                    for w in (2..=17).chain([31, 32, 33, 64, 65, 70]) {
                        let shape = [n, c, h, w];
                        let stock = pool_model(
                            &shape,
                            DataFormat::NCHW,
                            [2, 2],
                            [2, 2],
                            PaddingSpec::Valid,
                        );
                        assert!(op_names(&stock).contains(&"OptMaxPool".to_string()));
                        let ours = substitute_pools(stock.clone()).unwrap();
                        assert_eq!(op_names(&ours), ["Source", "MaxPool2x2S2"], "{shape:?}");
                        let (stock, ours) = (
                            stock.into_runnable().unwrap(),
                            ours.into_runnable().unwrap(),
                        );
                        for _ in 0..2 {
                            let values = tricky(&mut rng, shape.iter().product());
                            let input = Tensor::from_shape(&shape, &values).unwrap();
                            let want = stock.run(tvec![input.clone().into_tvalue()]).unwrap();
                            let got = ours.run(tvec![input.into_tvalue()]).unwrap();
                            assert_eq!(got[0].shape(), [n, c, h / 2, w / 2]);
                            assert_eq!(got[0].shape(), want[0].shape(), "{shape:?}");
                            assert_eq!(bits(&got[0]), bits(&want[0]), "{shape:?}: {values:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn windows_of_nan_or_negative_infinity_alone_give_f32_min_and_zeros_keep_tracts_sign() {
        let shape = [1, 1, 2, 8];
        #[rustfmt::skip]
        let values = [
            f32::NAN, f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, -0.0, 0.0,
            f32::NAN, f32::NAN, f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY, 0.0, 0.0, -0.0,
        ];
        let input = Tensor::from_shape(&shape, &values).unwrap();
        let stock = pool_model(&shape, DataFormat::NCHW, [2, 2], [2, 2], PaddingSpec::Valid);
        let want = stock
            .clone()
            .into_runnable()
            .unwrap()
            .run(tvec![input.clone().into_tvalue()])
            .unwrap();
        let got = substitute_pools(stock)
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec![input.into_tvalue()])
            .unwrap();
        assert_eq!(bits(&got[0]), bits(&want[0]));
        assert_eq!(bits(&got[0])[..2], [f32::MIN.to_bits(); 2]);
    }

    #[test]
    fn other_pools_keep_tracts_operator() {
        // Input shape, layout, kernel, strides, padding.
        type Case = (
            &'static [usize],
            DataFormat,
            [usize; 2],
            [usize; 2],
            PaddingSpec,
        );
        let cases: [Case; 8] = [
            (
                &[1, 2, 8, 8],
                DataFormat::NCHW,
                [2, 2],
                [1, 1],
                PaddingSpec::Valid,
            ),
            (
                &[1, 2, 9, 9],
                DataFormat::NCHW,
                [3, 3],
                [2, 2],
                PaddingSpec::Valid,
            ),
            (
                &[1, 2, 8, 8],
                DataFormat::NCHW,
                [2, 2],
                [2, 2],
                PaddingSpec::SameUpper,
            ),
            (
                &[1, 2, 8, 8],
                DataFormat::NCHW,
                [2, 2],
                [2, 2],
                PaddingSpec::Explicit(tvec![1, 0], tvec![0, 0]),
            ),
            (
                &[1, 8, 8, 2],
                DataFormat::NHWC,
                [2, 2],
                [2, 2],
                PaddingSpec::Valid,
            ),
            (
                &[1, 2, 8, 8],
                DataFormat::NCHW,
                [2, 1],
                [2, 2],
                PaddingSpec::Valid,
            ),
            (
                &[1, 2, 8, 8],
                DataFormat::NCHW,
                [2, 2],
                [2, 1],
                PaddingSpec::Valid,
            ),
            (
                &[1, 2, 8, 8],
                DataFormat::NCHW,
                [2, 2],
                [3, 3],
                PaddingSpec::Valid,
            ),
        ];
        for (shape, format, kernel, strides, padding) in cases {
            let what = format!("{shape:?} {format:?} k{kernel:?} s{strides:?} {padding:?}");
            let stock = pool_model(shape, format, kernel, strides, padding);
            let names = op_names(&stock);
            assert!(
                names.contains(&"OptMaxPool".to_string()),
                "{what}: {names:?}"
            );
            let ours = substitute_pools(stock).unwrap();
            assert_eq!(op_names(&ours), names, "{what}");
        }
    }

    #[test]
    fn explicit_zero_padding_is_substituted() {
        let stock = pool_model(
            &[2, 3, 7, 6],
            DataFormat::NCHW,
            [2, 2],
            [2, 2],
            PaddingSpec::Explicit(tvec![0, 0], tvec![0, 0]),
        );
        let ours = substitute_pools(stock).unwrap();
        assert_eq!(op_names(&ours), ["Source", "MaxPool2x2S2"]);
    }

    #[test]
    fn empty_and_single_row_or_column_planes_are_never_substituted() {
        for shape in [
            [1, 1, 1, 1],
            [1, 1, 1, 6],
            [1, 1, 6, 1],
            [1, 1, 0, 4],
            [1, 1, 4, 0],
        ] {
            let stock = pool_model(&shape, DataFormat::NCHW, [2, 2], [2, 2], PaddingSpec::Valid);
            let names = op_names(&stock);
            assert_eq!(names, ["Source", "OptMaxPool"], "{shape:?}");
            let ours = substitute_pools(stock).unwrap();
            assert_eq!(op_names(&ours), names, "{shape:?}");
        }
    }

    /// A model of a 2×2 stride-2 `MaxPool` over `[N, C, H, W]` and a constant `Pad` of
    /// `value` after it (`pads` per axis); with `shared`, the pool's output is also a model
    /// output. Optimised by tract.
    fn pool_pad_model(
        shape: [usize; 4],
        pads: [(usize, usize); 4],
        value: f32,
        shared: bool,
    ) -> TypedModel {
        use tract_onnx::tract_core::ops::array::{Pad, PadMode};
        let spec = PoolSpec::new(
            DataFormat::NCHW,
            tvec![2, 2],
            PaddingSpec::Valid,
            None,
            Some(tvec![2, 2]),
            shape[1],
            shape[1],
        );
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let pool = MaxPool {
            pool_spec: spec,
            with_index_outputs: None,
        };
        let pooled = model.wire_node("pool", pool, &[x]).unwrap()[0];
        let pad = Pad {
            pads: pads.to_vec(),
            mode: PadMode::Constant(rctensor0(value)),
        };
        let padded = model.wire_node("pad", pad, &[pooled]).unwrap()[0];
        let outputs = if shared {
            vec![padded, pooled]
        } else {
            vec![padded]
        };
        model.select_output_outlets(&outputs).unwrap();
        model.into_optimized().unwrap()
    }

    /// The bits of every output of `model` on `input`.
    fn run_bits(model: &TypedModel, input: &Tensor) -> Vec<Vec<u32>> {
        let plan = model.clone().into_runnable().unwrap();
        let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
        out.iter().map(|t| bits(t)).collect()
    }

    #[test]
    fn a_pool_writes_into_the_zero_padding_that_alone_reads_it_with_tracts_bits() {
        let mut rng = SmallRng::seed_from_u64(0x2b2b);
        let cases = [
            ([1, 4, 8, 8], [(0, 0), (0, 0), (1, 1), (1, 1)]),
            ([2, 3, 9, 37], [(0, 0), (0, 0), (2, 0), (0, 3)]),
            ([1, 2, 66, 66], [(0, 0), (0, 0), (1, 1), (1, 1)]),
        ];
        for (shape, pads) in cases {
            let stock = pool_pad_model(shape, pads, 0.0, false);
            let ours = crate::engine::substitute_kernels(stock.clone()).unwrap();
            assert_eq!(op_names(&ours), ["Source", "MaxPool2x2S2"], "{shape:?}");
            for _ in 0..3 {
                let values = tricky(&mut rng, shape.iter().product());
                let input = Tensor::from_shape(&shape, &values).unwrap();
                assert_eq!(
                    run_bits(&ours, &input),
                    run_bits(&stock, &input),
                    "{shape:?} {pads:?}"
                );
            }
        }
    }

    #[test]
    fn other_pads_after_a_pool_stay_with_tracts_bits() {
        let mut rng = SmallRng::seed_from_u64(0x2c2c);
        let shape = [1, 3, 8, 10];
        let spatial = [(0, 0), (0, 0), (1, 1), (1, 1)];
        // A pad value other than +0, a pad across channels, a pool read elsewhere too.
        let cases = [
            (spatial, 1.0, false),
            (spatial, -0.0, false),
            ([(0, 0), (1, 0), (1, 1), (1, 1)], 0.0, false),
            (spatial, 0.0, true),
        ];
        for (pads, value, shared) in cases {
            let stock = pool_pad_model(shape, pads, value, shared);
            let ours = crate::engine::substitute_kernels(stock.clone()).unwrap();
            let names = op_names(&ours);
            assert_eq!(
                names,
                ["Source", "MaxPool2x2S2", "PadConstant"],
                "{pads:?} {value} {shared}"
            );
            let values = tricky(&mut rng, shape.iter().product());
            let input = Tensor::from_shape(&shape, &values).unwrap();
            assert_eq!(run_bits(&ours, &input), run_bits(&stock, &input));
        }
    }

    #[test]
    fn pool_planes_leaves_the_output_alone_when_no_window_fits() {
        let mut out = [7.0; 2];
        let plane = |h, w| Plane {
            h,
            w,
            top: 0,
            left: 0,
        };
        pool_planes(&[1.0; 3], &mut out, 1, 3, &plane(1, 2));
        pool_planes(&[1.0; 3], &mut out, 3, 1, &plane(2, 1));
        pool_planes(&[], &mut out, 0, 0, &plane(1, 1));
        assert_eq!(out, [7.0; 2]);
    }
}
