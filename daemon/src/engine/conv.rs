//! Direct convolutions: for narrow images, and on AVX-512 cores for all.
//!
//! tract-core 0.23.9 computes a plain f32 convolution (NCHW, one group) either as an im2col
//! and a matrix product, or, when an output row has at least 128 points, as a filter along
//! the row (`DirectSpatialConv`, tract-linalg's `conv_w4` kernel: four output channels and
//! sixteen points of a row per step, all in registers). Below 128 points it takes the
//! im2col: the rows of the narrow images of a small convnet (64, 32, 16 points) split its
//! zones into short runs that the kernel would finish one point at a time.
//!
//! [`substitute_convs`] takes the filter for those images too, with the padding made first:
//! a padded convolution becomes a constant `Pad` and a valid convolution, whose one zone
//! gives every output row as a single run of the row's full width. On x86-64 cores with
//! AVX-512 the filter is mintd's own ([`super::avx512`]: sixteen output channels per step
//! instead of four), for any number of channels, and a Relu after it runs inside it. The
//! values are those of tract's own direct convolution: each output starts from its bias and
//! adds the taps in the kernel's order, so they differ from im2col's product (which adds the
//! bias last) only by rounding.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_core::ops::cnn::conv::DirectSpatialConv;
use tract_onnx::tract_core::ops::cnn::{
    wire_reshape_bias_for_bin, Conv, KernelFormat, PaddingSpec,
};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// The shortest output row the direct convolution takes: the kernel computes sixteen points
/// of a row per step and eight at the end of a row; shorter rows would run point by point.
const MIN_ROW: usize = 16;

/// The most inputs per output point (input channels × kernel taps) the direct convolution
/// takes: tract's own limit outside Apple's AMX. It gathers this many taps per group of four
/// output channels on every run.
const MAX_TAPS: usize = 576;

/// The most output channels the direct convolution takes. im2col's matrix product gathers
/// each input point once and shares it across the output channels, so the more channels,
/// the better it pays back. Measured on the convnet fixture (x86-64, AVX-512 products): the
/// direct convolution takes 3→32 channels at 64 points a row in 0.4–0.5× im2col's time and
/// 32→64 at 32 points in 0.7–0.85×, but 64→128 at 16 points in 1.35×.
const MAX_OUTPUT_CHANNELS: usize = 64;

/// Zeros added before and after each spatial axis.
type Padding = Vec<(usize, usize)>;

/// Which direct convolution computes a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// mintd's own, on x86-64 cores with AVX-512 ([`super::avx512`]).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// tract's `DirectSpatialConv`.
    Tract,
}

/// Rewrites, in a decluttered model, f32 NCHW convolutions of one group with constant
/// weights and output rows of at least [`MIN_ROW`] points as a constant-zero `Pad` (when
/// padded) and a direct convolution over the padded image; leaves every other node as it
/// is. The direct convolution is:
///
/// - on x86-64 with AVX-512, mintd's [`super::avx512::DirectConvAvx512`], for a stride of 1
///   along the rows (any number of channels and taps);
/// - otherwise tract's `DirectSpatialConv` (where tract-linalg has its `conv_w4` kernel:
///   x86-64 with AVX2 and FMA, aarch64), for rows of at most 127 points, strides 1 to 3 along
///   them, at most [`MAX_OUTPUT_CHANNELS`] output channels and [`MAX_TAPS`] inputs per output.
pub fn substitute_convs(mut model: TypedModel) -> TractResult<TypedModel> {
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some((padding, kernel)) = eligible(&model, node, conv)? else {
            continue;
        };
        let conv = conv.clone();
        let patch = rewrite(&model, id, &conv, &padding, kernel)?;
        patch.apply(&mut model)?;
    }
    model.compact()?;
    Ok(model)
}

/// Whether this machine has mintd's AVX-512 convolution kernel.
pub(super) fn has_avx512_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Whether this machine has tract-linalg's `conv_w4` kernel (x86-64 with AVX2 and FMA,
/// aarch64), which `DirectSpatialConv` runs.
fn has_direct_kernel() -> bool {
    tract_linalg::routines::conv_w4_f32().is_some()
}

/// The padding before and after each spatial axis, and the kernel, when a direct
/// convolution takes `node`.
fn eligible(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<(Padding, Kernel)>> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || spec.data_format != DataFormat::NCHW
        || spec.rank() != 2
        || node.inputs.len() != 3
        || !matches!(spec.padding, PaddingSpec::Valid | PaddingSpec::Explicit(..))
    {
        return Ok(None);
    }
    let taps = spec.kernel_shape.iter().product::<usize>();
    if taps < 2 {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    if input.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    for ix in 1..3 {
        if model.outlet_fact(node.inputs[ix])?.konst.is_none() {
            return Ok(None);
        }
    }
    let Ok(output) = spec.output_shape(shape) else {
        return Ok(None);
    };
    let w = *output.hw_dims().last().unwrap_or(&0);
    if w < MIN_ROW {
        return Ok(None);
    }
    let kernel = if has_avx512_kernel() && avx512_takes(model, node, conv)? {
        #[cfg(target_arch = "x86_64")]
        {
            Kernel::Avx512
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("AVX-512 only on x86-64")
    } else if tract_takes(conv, w) {
        Kernel::Tract
    } else {
        return Ok(None);
    };
    let hw = &shape[2..];
    let padding = spec
        .computed_padding(hw)
        .iter()
        .map(|p| (p.pad_before, p.pad_after))
        .collect();
    Ok(Some((padding, kernel)))
}

/// Whether mintd's AVX-512 kernel computes an otherwise eligible convolution: stride 1
/// along the rows, OIHW weights, one bias per output channel (or one for all).
fn avx512_takes(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<bool> {
    let weights = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let spec = &conv.pool_spec;
    let oihw = [
        conv.output_channels(),
        conv.input_channels(),
        spec.kernel_shape[0],
        spec.kernel_shape[1],
    ];
    Ok(spec.stride(1) == 1
        && conv.kernel_fmt == KernelFormat::OIHW
        && weights.datum_type == f32::datum_type()
        && weights.shape.as_concrete() == Some(&oihw[..])
        && bias.datum_type == f32::datum_type()
        && matches!(bias.shape.volume().to_usize(), Ok(n) if n == 1 || n == conv.output_channels()))
}

/// Whether tract's `DirectSpatialConv` computes an otherwise eligible convolution with output
/// rows of `w` points faster than its im2col, and this machine has its kernel.
fn tract_takes(conv: &Conv, w: usize) -> bool {
    let taps = conv.pool_spec.kernel_shape.iter().product::<usize>();
    has_direct_kernel()
        // The kernel vectorises input strides 1 to 3 along a row.
        && (1..=3).contains(&conv.pool_spec.stride(1))
        && conv.input_channels() * taps <= MAX_TAPS
        && (conv.output_channels().is_multiple_of(4)
            || tract_linalg::routines::depthwise_w_f32().is_some())
        && w < 128
        && conv.output_channels() <= MAX_OUTPUT_CHANNELS
}

fn rewrite(
    model: &TypedModel,
    id: usize,
    conv: &Conv,
    padding: &[(usize, usize)],
    with: Kernel,
) -> TractResult<TypedModelPatch> {
    let node = &model.nodes[id];
    let name = &node.name;
    let mut patch = TypedModelPatch::new(format!("mintd direct conv {name}"));
    let taps = patch.taps(model, &node.inputs)?;
    let (mut x, kernel, bias) = (taps[0], taps[1], taps[2]);
    if padding.iter().any(|&(b, a)| b + a > 0) {
        let mut pads = vec![(0, 0), (0, 0)];
        pads.extend_from_slice(padding);
        x = patch.wire_node(
            format!("{name}.pad"),
            Pad {
                pads,
                mode: PadMode::Constant(rctensor0(0f32)),
            },
            &[x],
        )?[0];
    }
    let x_fact = patch.outlet_fact(x)?.clone();
    #[cfg(target_arch = "x86_64")]
    if with == Kernel::Avx512 {
        let op = avx512_op(model, node, conv, &x_fact)?;
        let (op, last) = match relu_after(model, id)? {
            Some(relu) => (op.with_relu(), relu),
            None => (op, id),
        };
        let out = patch.wire_node(name, op, &[x])?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), out)?;
        patch.obliterate(id)?;
        patch.obliterate(last)?;
        return Ok(patch);
    }
    debug_assert_eq!(with, Kernel::Tract);
    let mut valid = conv.clone();
    valid.pool_spec.padding = PaddingSpec::Valid;
    let x_shape = x_fact
        .shape
        .as_concrete()
        .context("concrete input")?
        .to_vec();
    let geo = valid.pool_spec.compute_geo(&x_fact.shape)?;
    let geo = geo.to_concrete(&x_shape)?.into_owned();
    let kernel = valid.wire_kernel_as_g_o_ihw(&mut patch, name, kernel)?[0];
    let bias = wire_reshape_bias_for_bin(
        &mut patch,
        name,
        bias,
        x_fact.rank(),
        1,
        valid.output_channels(),
    )?[0];
    let op = DirectSpatialConv::new(geo.patch, geo.input_shape, geo.output_shape);
    let out = patch.wire_node(name, op, &[x, kernel, bias])?[0];
    patch.shunt_outside(model, OutletId::new(id, 0), out)?;
    patch.obliterate(id)?;
    Ok(patch)
}

/// The Relu that alone reads convolution `id`'s output, if there is one: tract's
/// `TypedBinOp(Max)` of that output and a constant +0 (ONNX's `Relu` once decluttered), of
/// the convolution's output shape.
#[cfg(target_arch = "x86_64")]
fn relu_after(model: &TypedModel, id: usize) -> TractResult<Option<usize>> {
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math::Max;
    let conv_out = OutletId::new(id, 0);
    let readers = &model.nodes[id].outputs[0].successors;
    if readers.len() != 1 || model.output_outlets()?.contains(&conv_out) {
        return Ok(None);
    }
    let next = &model.nodes[readers[0].node];
    let is_max = next
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<Max>() && op.1.is_none());
    if !is_max || next.inputs.len() != 2 {
        return Ok(None);
    }
    let other = model.outlet_fact(next.inputs[1 - readers[0].slot])?;
    let zero = other.konst.as_ref().is_some_and(|k| {
        k.datum_type() == f32::datum_type()
            && k.len() == 1
            && k.cast_to_scalar::<f32>().is_ok_and(|v| v.to_bits() == 0)
    });
    let same_shape =
        model.outlet_fact(OutletId::new(next.id, 0))?.shape == model.outlet_fact(conv_out)?.shape;
    Ok((zero && same_shape).then_some(next.id))
}

/// mintd's AVX-512 convolution of `node` over its padded input of `x`.
#[cfg(target_arch = "x86_64")]
fn avx512_op(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
    x: &TypedFact,
) -> TractResult<super::avx512::DirectConvAvx512> {
    use super::avx512::{DirectConvAvx512, Geometry};
    let constant = |ix: usize| -> TractResult<Vec<f32>> {
        let fact = model.outlet_fact(node.inputs[ix])?;
        let tensor = fact.konst.as_ref().context("constant weights and bias")?;
        Ok(tensor
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    };
    let (weights, mut bias) = (constant(1)?, constant(2)?);
    if bias.len() == 1 {
        bias = vec![bias[0]; conv.output_channels()];
    }
    let shape = x.shape.as_concrete().context("concrete input")?;
    let spec = &conv.pool_spec;
    let geometry = Geometry {
        input_channels: conv.input_channels(),
        output_channels: conv.output_channels(),
        input: [shape[2], shape[3]],
        kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
        dilations: [spec.dilation(0), spec.dilation(1)],
        row_stride: spec.stride(0),
    };
    DirectConvAvx512::new(geometry, &weights, &bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{count, op_names, values};
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    /// One convolution's geometry.
    #[derive(Debug, Clone, Copy)]
    struct Geometry {
        batch: usize,
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
        kernel: [usize; 2],
        before: [usize; 2],
        after: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        group: usize,
    }

    const G: Geometry = Geometry {
        batch: 1,
        cin: 3,
        cout: 8,
        h: 5,
        w: 20,
        kernel: [3, 3],
        before: [1, 1],
        after: [1, 1],
        strides: [1, 1],
        dilations: [1, 1],
        group: 1,
    };

    fn weights(g: &Geometry) -> Tensor {
        let shape = [g.cout, g.cin / g.group, g.kernel[0], g.kernel[1]];
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 211) as f32 - 105.) / 64.)
            .collect();
        Tensor::from_shape(&shape, &values).unwrap()
    }

    fn biases(g: &Geometry) -> Tensor {
        let values: Vec<f32> = (0..g.cout).map(|i| i as f32 / 8. - 0.3).collect();
        Tensor::from_shape(&[g.cout], &values).unwrap()
    }

    /// A decluttered model of one tract `Conv` of geometry `g` over f32 NCHW images.
    fn conv_model(g: &Geometry) -> TypedModel {
        conv_relu_model(g, None)
    }

    /// How a Relu follows the convolution of [`conv_relu_model`].
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Relu {
        /// The Relu alone reads the convolution's output.
        Alone,
        /// The convolution's output is also an output of the model.
        Shared,
    }

    /// [`conv_model`], followed by a Relu as ONNX's importer wires one (`max(x, 0)`).
    fn conv_relu_model(g: &Geometry, relu: Option<Relu>) -> TypedModel {
        use tract_onnx::tract_core::ops::math::max;
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", f32::fact([g.batch, g.cin, g.h, g.w]))
            .unwrap();
        let k = model.add_const("k", weights(g)).unwrap();
        let b = model.add_const("b", biases(g)).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec::new(
                DataFormat::NCHW,
                tvec![g.kernel[0], g.kernel[1]],
                PaddingSpec::Explicit(
                    tvec![g.before[0], g.before[1]],
                    tvec![g.after[0], g.after[1]],
                ),
                Some(tvec![g.dilations[0], g.dilations[1]]),
                Some(tvec![g.strides[0], g.strides[1]]),
                g.cin,
                g.cout,
            ),
            kernel_fmt: KernelFormat::OIHW,
            group: g.group,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, k, b]).unwrap();
        let outputs = match relu {
            None => y.to_vec(),
            Some(relu) => {
                let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
                let r = model.wire_node("relu", max(), &[y[0], zero]).unwrap()[0];
                if relu == Relu::Shared {
                    vec![r, y[0]]
                } else {
                    vec![r]
                }
            }
        };
        model.select_output_outlets(&outputs).unwrap();
        model.into_decluttered().unwrap()
    }

    /// tract's plan and mintd's for geometry `g`.
    fn plans(g: &Geometry) -> (TypedModel, TypedModel) {
        relu_plans(g, None)
    }

    /// tract's plan and mintd's for [`conv_relu_model`].
    fn relu_plans(g: &Geometry, relu: Option<Relu>) -> (TypedModel, TypedModel) {
        let tract = conv_relu_model(g, relu).into_optimized().unwrap();
        let mintd = substitute_convs(conv_relu_model(g, relu))
            .unwrap()
            .into_optimized()
            .unwrap();
        (tract, mintd)
    }

    fn run(model: &TypedModel, image: &Tensor) -> Vec<f32> {
        run_all(model, image).swap_remove(0)
    }

    /// The values of each output of `model` on `image`.
    fn run_all(model: &TypedModel, image: &Tensor) -> Vec<Vec<f32>> {
        let plan = model.clone().into_runnable().unwrap();
        let out = plan.run(tvec![image.clone().into_tvalue()]).unwrap();
        out.iter().map(|t| values(t)).collect()
    }

    /// Each output of `g` on `images` in f64, and the sum of its terms' magnitudes.
    fn reference(g: &Geometry, images: &[f32]) -> Vec<(f64, f64)> {
        images
            .chunks_exact(g.cin * g.h * g.w)
            .flat_map(|image| reference_one(g, image))
            .collect()
    }

    /// [`reference`] for one image.
    fn reference_one(g: &Geometry, image: &[f32]) -> Vec<(f64, f64)> {
        let (k, b) = (values(&weights(g)), values(&biases(g)));
        let [kh, kw] = g.kernel;
        let [dh, dw] = g.dilations;
        let out_h = (g.h + g.before[0] + g.after[0] - dh * (kh - 1) - 1) / g.strides[0] + 1;
        let out_w = (g.w + g.before[1] + g.after[1] - dw * (kw - 1) - 1) / g.strides[1] + 1;
        let mut out = Vec::new();
        for o in 0..g.cout {
            for y in 0..out_h {
                for x in 0..out_w {
                    let (mut sum, mut size) = (b[o] as f64, (b[o] as f64).abs());
                    for c in 0..g.cin {
                        for dy in 0..kh {
                            for dx in 0..kw {
                                let iy =
                                    (y * g.strides[0] + dy * dh) as isize - g.before[0] as isize;
                                let ix =
                                    (x * g.strides[1] + dx * dw) as isize - g.before[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let v = image[(c * g.h + iy as usize) * g.w + ix as usize] as f64;
                                let term = k[((o * g.cin + c) * kh + dy) * kw + dx] as f64 * v;
                                sum += term;
                                size += term.abs();
                            }
                        }
                    }
                    out.push((sum, size));
                }
            }
        }
        out
    }

    /// Values for `g.batch` images.
    fn image(g: &Geometry, seed: f32) -> Vec<f32> {
        (0..g.batch * g.cin * g.h * g.w)
            .map(|i| (i as f32 * seed).sin() * 3.)
            .collect()
    }

    /// The direct convolutions of a plan, tract's and mintd's.
    fn direct_convs(model: &TypedModel) -> usize {
        op_names(model)
            .iter()
            .filter(|n| *n == "DirectSpatialConv" || *n == "DirectConvAvx512")
            .count()
    }

    /// Every output of both plans is within f32 summation's error bound of the exact value:
    /// (terms + 1) × ε × the sum of the terms' magnitudes.
    fn check_values(g: &Geometry, tract: &TypedModel, mintd: &TypedModel) {
        check_relu_values(g, None, tract, mintd)
    }

    /// [`check_values`] for the plans of [`conv_relu_model`]: each of the model's outputs
    /// against the exact values, through `max(·, 0)` for the Relu's.
    fn check_relu_values(g: &Geometry, relu: Option<Relu>, tract: &TypedModel, mintd: &TypedModel) {
        for seed in [0.37f32, 1.9] {
            let values = image(g, seed);
            let t = Tensor::from_shape(&[g.batch, g.cin, g.h, g.w], &values).unwrap();
            let exact = reference(g, &values);
            let relu_exact: Vec<_> = exact.iter().map(|&(v, size)| (v.max(0.), size)).collect();
            let wanted: Vec<&[(f64, f64)]> = match relu {
                None => vec![&exact],
                Some(Relu::Alone) => vec![&relu_exact],
                Some(Relu::Shared) => vec![&relu_exact, &exact],
            };
            let terms = (g.cin * g.kernel[0] * g.kernel[1] + 1) as f64;
            let outputs = [("tract", run_all(tract, &t)), ("mintd", run_all(mintd, &t))];
            for (plan, got, want) in outputs
                .iter()
                .flat_map(|(plan, all)| all.iter().zip(&wanted).map(move |(g, w)| (plan, g, w)))
            {
                assert_eq!(got.len(), want.len(), "{plan}: {g:?}");
                for (i, (got, (exact, size))) in got.iter().zip(want.iter()).enumerate() {
                    let bound = terms * f32::EPSILON as f64 * size;
                    assert!(
                        (*got as f64 - exact).abs() <= bound,
                        "{plan}, {g:?}, output {i}: {got} against {exact} (bound {bound:e})"
                    );
                }
            }
        }
    }

    #[test]
    fn narrow_convolutions_run_direct_with_the_exact_values_within_rounding() {
        if !has_direct_kernel() {
            return;
        }
        let cases = [
            G,
            Geometry {
                cin: 1,
                cout: 4,
                ..G
            },
            Geometry {
                cin: 5,
                cout: 12,
                w: 37,
                ..G
            },
            Geometry {
                cout: 64,
                w: 16,
                ..G
            },
            Geometry {
                before: [0, 0],
                after: [0, 0],
                w: 18,
                ..G
            },
            Geometry {
                before: [2, 1],
                after: [0, 2],
                ..G
            },
            Geometry {
                kernel: [5, 5],
                before: [2, 2],
                after: [2, 2],
                ..G
            },
            Geometry {
                kernel: [1, 3],
                before: [0, 1],
                after: [0, 1],
                ..G
            },
            Geometry {
                strides: [1, 2],
                w: 40,
                ..G
            },
            Geometry {
                strides: [2, 3],
                w: 60,
                h: 7,
                ..G
            },
            Geometry { w: 127, ..G },
        ];
        for g in cases {
            let (tract, mintd) = plans(&g);
            assert_eq!(direct_convs(&mintd), 1, "{g:?}: {:?}", op_names(&mintd));
            check_values(&g, &tract, &mintd);
        }
    }

    #[test]
    fn output_channels_not_a_multiple_of_four_run_direct_where_tract_can() {
        let g = Geometry { cout: 6, ..G };
        let (tract, mintd) = plans(&g);
        let direct = has_direct_kernel() && tract_linalg::routines::depthwise_w_f32().is_some();
        assert_eq!(
            direct_convs(&mintd),
            usize::from(direct),
            "{:?}",
            op_names(&mintd)
        );
        check_values(&g, &tract, &mintd);
    }

    #[test]
    fn other_convolutions_keep_tracts_plan() {
        let mut cases = vec![
            // Rows too short.
            Geometry { w: 14, ..G },
            // Groups, a stride no kernel vectorises, a single tap.
            Geometry {
                cin: 4,
                group: 2,
                ..G
            },
            Geometry {
                strides: [1, 4],
                w: 80,
                ..G
            },
            Geometry {
                kernel: [1, 1],
                before: [0, 0],
                after: [0, 0],
                ..G
            },
        ];
        if !has_avx512_kernel() {
            cases.extend([
                // Wide enough for tract's own direct convolution.
                Geometry { w: 128, ..G },
                // More output channels than pay back, more taps than tract's limit.
                Geometry { cout: 68, ..G },
                Geometry { cin: 65, ..G },
            ]);
        }
        for g in cases {
            let (tract, mintd) = plans(&g);
            assert_eq!(op_names(&mintd), op_names(&tract), "{g:?}");
        }
    }

    #[test]
    fn with_avx512_mintds_kernel_takes_any_width_channels_and_taps_within_rounding() {
        if !has_avx512_kernel() {
            return;
        }
        let cases = [
            G,
            // Rows of one vector, a vector and a point, two and a part (2 + 1 vectors),
            // 128 points (4 + 4), 200 points (4 + 4 + 4 + 1, the last one of 8 points).
            Geometry { w: 16, ..G },
            Geometry { w: 17, ..G },
            Geometry { w: 37, ..G },
            Geometry { w: 128, ..G },
            Geometry { w: 200, h: 3, ..G },
            // Output channels: one, not a multiple of 4, a block and a part; 585 taps.
            Geometry { cout: 1, ..G },
            Geometry { cout: 6, ..G },
            Geometry {
                cout: 68,
                w: 33,
                ..G
            },
            Geometry {
                cin: 65,
                cout: 20,
                h: 3,
                ..G
            },
            // Kernels, dilations, a stride between rows, asymmetric padding, no padding.
            Geometry {
                kernel: [5, 5],
                before: [2, 2],
                after: [2, 2],
                ..G
            },
            Geometry {
                kernel: [1, 3],
                before: [0, 1],
                after: [0, 1],
                ..G
            },
            Geometry {
                kernel: [3, 1],
                before: [1, 0],
                after: [1, 0],
                ..G
            },
            Geometry {
                dilations: [2, 3],
                before: [2, 3],
                after: [2, 3],
                ..G
            },
            Geometry {
                strides: [3, 1],
                h: 11,
                ..G
            },
            Geometry {
                before: [2, 0],
                after: [0, 2],
                ..G
            },
            Geometry {
                before: [0, 0],
                after: [0, 0],
                ..G
            },
            // Several images.
            Geometry {
                batch: 3,
                cout: 20,
                ..G
            },
        ];
        for g in cases {
            let (tract, mintd) = plans(&g);
            assert_eq!(
                count(&mintd, "DirectConvAvx512"),
                1,
                "{g:?}: {:?}",
                op_names(&mintd)
            );
            check_values(&g, &tract, &mintd);
        }
    }

    #[test]
    fn a_relu_alone_after_mintds_kernel_runs_inside_it() {
        if !has_avx512_kernel() {
            return;
        }
        for g in [
            G,
            Geometry {
                cout: 20,
                w: 37,
                ..G
            },
        ] {
            let (tract, mintd) = relu_plans(&g, Some(Relu::Alone));
            assert_eq!(
                op_names(&mintd),
                ["Source", "Pad", "DirectConvAvx512"],
                "{g:?}"
            );
            check_relu_values(&g, Some(Relu::Alone), &tract, &mintd);
            // Where the convolution's output is read elsewhere too, the Relu stays.
            let (tract, mintd) = relu_plans(&g, Some(Relu::Shared));
            assert_eq!(
                count(&mintd, "DirectConvAvx512"),
                1,
                "{:?}",
                op_names(&mintd)
            );
            assert_eq!(count(&mintd, "OptMaxByScalar"), 1, "{:?}", op_names(&mintd));
            check_relu_values(&g, Some(Relu::Shared), &tract, &mintd);
        }
    }

    #[test]
    fn nan_and_infinities_reach_the_same_outputs_as_in_tracts_plan() {
        if !has_direct_kernel() && !has_avx512_kernel() {
            return;
        }
        for relu in [None, Some(Relu::Alone)] {
            special_values_match(relu);
        }
    }

    fn special_values_match(relu: Option<Relu>) {
        let g = G;
        let (tract, mintd) = relu_plans(&g, relu);
        assert_eq!(direct_convs(&mintd), 1);
        let mut values = image(&g, 0.37);
        for (i, v) in [
            (7, f32::NAN),
            (150, f32::INFINITY),
            (233, f32::NEG_INFINITY),
        ] {
            values[i] = v;
        }
        let t = Tensor::from_shape(&[1, g.cin, g.h, g.w], &values).unwrap();
        let (a, b) = (run(&tract, &t), run(&mintd, &t));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x.is_finite() {
                assert!(
                    (x - y).abs() <= 1e-4 * (1. + x.abs()),
                    "{relu:?}, output {i}: {x} against {y}"
                );
            } else {
                assert_eq!(
                    x.is_nan(),
                    y.is_nan(),
                    "{relu:?}, output {i}: {x} against {y}"
                );
                if !x.is_nan() {
                    assert_eq!(x, y, "{relu:?}, output {i}");
                }
            }
        }
        // The convolution's sums that the special values reached (before any Relu).
        let sums = run(&conv_model(&g).into_optimized().unwrap(), &t);
        let special = sums.iter().filter(|x| !x.is_finite()).count();
        assert!(special > 20, "{special} sums saw the special values");
    }
}
