//! Direct convolutions for narrow images.
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
//! gives every output row as a single run of the row's full width. The values are those of
//! tract's own direct convolution: each output starts from its bias and adds the taps in the
//! kernel's order, so they differ from im2col's product (which adds the bias last) only by
//! rounding.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_core::ops::cnn::conv::DirectSpatialConv;
use tract_onnx::tract_core::ops::cnn::{wire_reshape_bias_for_bin, Conv, PaddingSpec};
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

/// Rewrites, in a decluttered model, each f32 NCHW convolution of one group whose output rows
/// are [`MIN_ROW`] to 127 points wide, with at most [`MAX_OUTPUT_CHANNELS`] output channels
/// and at most [`MAX_TAPS`] inputs per output point, as a constant-zero `Pad` (when padded)
/// and tract's `DirectSpatialConv` over the padded image; leaves every other node as it is.
/// Does nothing on a machine without tract's `conv_w4` kernel.
pub fn substitute_convs(mut model: TypedModel) -> TractResult<TypedModel> {
    if !has_direct_kernel() {
        return Ok(model);
    }
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(padding) = eligible(&model, node, conv)? else {
            continue;
        };
        let conv = conv.clone();
        let patch = rewrite(&model, id, &conv, &padding)?;
        patch.apply(&mut model)?;
    }
    model.compact()?;
    Ok(model)
}

/// Whether this machine has tract-linalg's `conv_w4` kernel (x86-64 with AVX2 and FMA,
/// aarch64), which `DirectSpatialConv` runs.
fn has_direct_kernel() -> bool {
    tract_linalg::routines::conv_w4_f32().is_some()
}

/// The padding before and after each spatial axis, when the direct convolution takes `node`.
fn eligible(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<Vec<(usize, usize)>>> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || spec.data_format != DataFormat::NCHW
        || spec.rank() != 2
        || node.inputs.len() != 3
        || !matches!(spec.padding, PaddingSpec::Valid | PaddingSpec::Explicit(..))
        // The kernel vectorises input strides 1 to 3 along a row.
        || !(1..=3).contains(&spec.stride(1))
    {
        return Ok(None);
    }
    let taps = spec.kernel_shape.iter().product::<usize>();
    if taps < 2 || conv.input_channels() * taps > MAX_TAPS {
        return Ok(None);
    }
    if !conv.output_channels().is_multiple_of(4)
        && tract_linalg::routines::depthwise_w_f32().is_none()
    {
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
    if !(MIN_ROW..128).contains(&w) {
        return Ok(None);
    }
    if conv.output_channels() > MAX_OUTPUT_CHANNELS {
        return Ok(None);
    }
    let hw = &shape[2..];
    Ok(Some(
        spec.computed_padding(hw)
            .iter()
            .map(|p| (p.pad_before, p.pad_after))
            .collect(),
    ))
}

fn rewrite(
    model: &TypedModel,
    id: usize,
    conv: &Conv,
    padding: &[(usize, usize)],
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
    let mut valid = conv.clone();
    valid.pool_spec.padding = PaddingSpec::Valid;
    let x_fact = patch.outlet_fact(x)?.clone();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{op_names, values};
    use tract_onnx::tract_core::ops::cnn::{KernelFormat, PoolSpec};

    /// One convolution's geometry.
    #[derive(Debug, Clone, Copy)]
    struct Geometry {
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

    /// A decluttered model of one tract `Conv` of geometry `g` over an f32 NCHW image.
    fn conv_model(g: &Geometry) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", f32::fact([1, g.cin, g.h, g.w]))
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
        model.select_output_outlets(&y).unwrap();
        model.into_decluttered().unwrap()
    }

    /// tract's plan and mintd's for geometry `g`.
    fn plans(g: &Geometry) -> (TypedModel, TypedModel) {
        let tract = conv_model(g).into_optimized().unwrap();
        let mintd = substitute_convs(conv_model(g))
            .unwrap()
            .into_optimized()
            .unwrap();
        (tract, mintd)
    }

    fn run(model: &TypedModel, image: &Tensor) -> Vec<f32> {
        let plan = model.clone().into_runnable().unwrap();
        let out = plan.run(tvec![image.clone().into_tvalue()]).unwrap();
        values(&out[0])
    }

    /// Each output of `g` on `image` in f64, and the sum of its terms' magnitudes.
    fn reference(g: &Geometry, image: &[f32]) -> Vec<(f64, f64)> {
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

    fn image(g: &Geometry, seed: f32) -> Vec<f32> {
        (0..g.cin * g.h * g.w)
            .map(|i| (i as f32 * seed).sin() * 3.)
            .collect()
    }

    fn direct_convs(model: &TypedModel) -> usize {
        op_names(model)
            .iter()
            .filter(|n| *n == "DirectSpatialConv")
            .count()
    }

    /// Every output of both plans is within f32 summation's error bound of the exact value:
    /// (terms + 1) × ε × the sum of the terms' magnitudes.
    fn check_values(g: &Geometry, tract: &TypedModel, mintd: &TypedModel) {
        for seed in [0.37f32, 1.9] {
            let values = image(g, seed);
            let t = Tensor::from_shape(&[1, g.cin, g.h, g.w], &values).unwrap();
            let want = reference(g, &values);
            let terms = (g.cin * g.kernel[0] * g.kernel[1] + 1) as f64;
            for (plan, got) in [("tract", run(tract, &t)), ("mintd", run(mintd, &t))] {
                assert_eq!(got.len(), want.len(), "{plan}: {g:?}");
                for (i, (got, (exact, size))) in got.iter().zip(&want).enumerate() {
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
        let cases = [
            // Rows too short, or wide enough for tract's own direct convolution.
            Geometry { w: 14, ..G },
            Geometry { w: 128, ..G },
            // More output channels than pay back, more taps than tract's limit.
            Geometry { cout: 68, ..G },
            Geometry { cin: 65, ..G },
            // Groups, a stride the kernel does not vectorise, a single tap.
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
        for g in cases {
            let (tract, mintd) = plans(&g);
            assert_eq!(op_names(&mintd), op_names(&tract), "{g:?}");
        }
    }

    #[test]
    fn nan_and_infinities_reach_the_same_outputs_as_in_tracts_plan() {
        if !has_direct_kernel() {
            return;
        }
        let g = G;
        let (tract, mintd) = plans(&g);
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
        let kind = |x: f32| (x.is_nan(), x.is_finite(), x.is_sign_positive());
        let mut special = 0;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x.is_finite() {
                assert!(
                    (x - y).abs() <= 1e-4 * (1. + x.abs()),
                    "output {i}: {x} against {y}"
                );
            } else {
                special += 1;
                assert_eq!(kind(*x).0, kind(*y).0, "output {i}: {x} against {y}");
                if !x.is_nan() {
                    assert_eq!(x, y, "output {i}");
                }
            }
        }
        assert!(special > 20, "{special} outputs saw the special values");
    }
}
