//! A convolution's Relu applied by the matrix product's kernel, as tract does for a dense
//! layer's.
//!
//! tract's optimiser folds an element-wise operation with one scalar (a Relu is `max(x, 0)`)
//! into the matrix product that feeds it: the kernel applies it to each tile of the output
//! while the tile is still in registers. A convolution's product, though, is followed by the
//! reshape that gives it the image's shape (`IntoShape`, `[1, C, H·W]` to `[1, C, H, W]`),
//! and tract-core 0.23.9 does not reach across it once the Relu is an `OptBinByScalar`. The
//! Relu then runs as a pass of its own, reading and writing the whole output once more.
//!
//! [`fuse_scalar_ops_across_reshapes`] moves each such operation before the reshape (an
//! element-wise operation with a single scalar gives the same values whatever the shape) and
//! runs tract's optimiser again, which fuses it into the product.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::OptBinByScalar;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

/// Moves every element-wise operation with one constant scalar that follows a matrix
/// product through a reshape (`OptMatMul` → `IntoShape` → `OptBinByScalar`, each the only
/// consumer of the one before) to before the reshape, then lets tract's optimiser fuse it into
/// the product. A model without that pattern comes back as it was; so does one on which the
/// rewrite or tract's optimiser fails (logged): the fusion saves time, it never costs a model.
pub fn fuse_scalar_ops_across_reshapes(model: TypedModel) -> TypedModel {
    match fused(model.clone()) {
        Ok(Some(fused)) => fused,
        Ok(None) => model,
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "scalar operations not fused into matrix products; the plan runs them apart"
            );
            model
        }
    }
}

/// The model with the operations moved and fused, or `None` when nothing was to move.
fn fused(mut model: TypedModel) -> TractResult<Option<TypedModel>> {
    let mut moved = 0;
    for id in model.eval_order()? {
        if let Some(patch) = hoist(&model, id)? {
            patch.apply(&mut model)?;
            moved += 1;
        }
    }
    if moved == 0 {
        return Ok(None);
    }
    let mut model = model.into_compact()?;
    model.optimize()?;
    Ok(Some(model))
}

/// The patch that moves the scalar operation after node `id`'s reshape before it, when
/// node `id` is a matrix product followed by exactly that.
fn hoist(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let product = model.node(id);
    if !product.op_is::<OptMatMul>() || product.outputs.len() != 1 {
        return Ok(None);
    }
    let outputs = model.output_outlets()?;
    let [to_reshape] = &*product.outputs[0].successors else {
        return Ok(None);
    };
    let reshape = model.node(to_reshape.node);
    if !reshape.op_is::<IntoShape>()
        || outputs.contains(&OutletId::new(product.id, 0))
        || outputs.contains(&OutletId::new(reshape.id, 0))
    {
        return Ok(None);
    }
    let [to_op] = &*reshape.outputs[0].successors else {
        return Ok(None);
    };
    let op = model.node(to_op.node);
    if !op.op_is::<OptBinByScalar>() || to_op.slot != 0 || op.inputs.len() != 2 {
        return Ok(None);
    }
    let scalar = model.outlet_fact(op.inputs[1])?;
    let Some(value) = scalar.konst.clone() else {
        return Ok(None);
    };
    if value.len() != 1 {
        return Ok(None);
    }
    let rank = model.outlet_fact(OutletId::new(product.id, 0))?.rank();
    let value = value.into_tensor().into_shape(&vec![1; rank])?;
    let mut patch = TypedModelPatch::new(format!("{} before {}", op.name, reshape.name));
    let wire = patch.tap_model(model, OutletId::new(product.id, 0))?;
    let value = patch.add_const(format!("{}.scalar", op.name), value)?;
    let wire = patch.wire_node(&op.name, op.op.clone(), &[wire, value])?[0];
    let wire = patch.wire_node(&reshape.name, reshape.op.clone(), &[wire])?[0];
    patch.shunt_outside(model, OutletId::new(op.id, 0), wire)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing;
    use crate::engine::testing::count;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
    use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// A 3×3 convolution with padding 1 (`cin` → `cout` channels) of an f32 `[1, cin, h, w]`
    /// input, then `op` with the scalar `value`, optimised by tract; the convolution's own
    /// output is a model output too when `conv_is_output`.
    fn conv_then(
        [cin, cout, h, w]: [usize; 4],
        op: Box<dyn BinMiniOp>,
        value: f32,
        conv_is_output: bool,
    ) -> TypedModel {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut values = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| rng.gen_range(-8i32..8) as f32 * 0.125)
                .collect()
        };
        let weights = Tensor::from_shape(&[cout, cin, 3, 3], &values(cout * cin * 9)).unwrap();
        let bias = Tensor::from_shape(&[cout], &values(cout)).unwrap();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, cin, h, w])).unwrap();
        let weights = model.add_const("weights", weights).unwrap();
        let bias = model.add_const("bias", bias).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec::new(
                DataFormat::NCHW,
                tvec![3, 3],
                PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                None,
                None,
                cin,
                cout,
            ),
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let conv = model.wire_node("conv", conv, &[x, weights, bias]).unwrap()[0];
        let value = model.add_const("value", tensor0(value)).unwrap();
        let op = TypedBinOp(op, None);
        let y = wire_with_rank_broadcast("then", &mut model, op, &[conv, value]).unwrap()[0];
        let outputs = if conv_is_output {
            vec![y, conv]
        } else {
            vec![y]
        };
        model.select_output_outlets(&outputs).unwrap();
        model.into_optimized().unwrap()
    }

    fn bits(outputs: &[TValue]) -> Vec<u32> {
        outputs.iter().flat_map(|t| testing::bits(t)).collect()
    }

    /// Finite inputs with ±0 and large magnitudes among ordinary values; with `special`, NaN
    /// and ±inf too.
    fn input(rng: &mut SmallRng, shape: [usize; 4], special: bool) -> TValue {
        const EDGES: [f32; 6] = [0.0, -0.0, 1e30, -1e30, f32::MIN_POSITIVE, -1e-30];
        const SPECIAL: [f32; 3] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| match rng.gen_range(0..16) {
                0 if special => SPECIAL[rng.gen_range(0..SPECIAL.len())],
                1 => EDGES[rng.gen_range(0..EDGES.len())],
                _ => rng.gen_range(-16i32..16) as f32 * 0.0625,
            })
            .collect();
        Tensor::from_shape(&shape[..], &values)
            .unwrap()
            .into_tvalue()
    }

    /// A case: input channels, output channels, height, width; the operation, its scalar and
    /// the name of tract's pass for it.
    type Case = ([usize; 4], Box<dyn BinMiniOp>, f32, &'static str);

    fn cases() -> [Case; 4] {
        [
            ([3, 8, 16, 16], Box::new(math::Max), 0.0, "OptMaxByScalar"),
            ([4, 16, 9, 7], Box::new(math::Max), 0.0, "OptMaxByScalar"),
            ([2, 5, 32, 32], Box::new(math::Max), -0.25, "OptMaxByScalar"),
            ([8, 12, 6, 10], Box::new(math::Min), 0.5, "OptMinByScalar"),
        ]
    }

    #[test]
    fn a_convolutions_relu_and_clip_run_in_its_product_and_give_the_same_bits() {
        let mut rng = SmallRng::seed_from_u64(0xc0);
        for (shape, op, value, name) in cases() {
            let tract = conv_then(shape, op, value, false);
            assert_eq!(
                count(&tract, name),
                1,
                "{shape:?}: tract leaves a pass of its own"
            );
            let ours = fuse_scalar_ops_across_reshapes(tract.clone());
            assert_eq!(count(&ours, name), 0, "{shape:?}: fused into the product");
            assert_eq!(count(&ours, "OptMatMul"), count(&tract, "OptMatMul"));
            let (tract, ours) = (
                tract.into_runnable().unwrap(),
                ours.into_runnable().unwrap(),
            );
            for _ in 0..8 {
                let x = input(&mut rng, [1, shape[0], shape[2], shape[3]], false);
                let want = tract.run(tvec![x.clone()]).unwrap();
                let got = ours.run(tvec![x]).unwrap();
                assert_eq!(bits(&got), bits(&want), "{shape:?} {name} {value}");
            }
        }
    }

    /// Where the product itself gives NaN (an input NaN, or +inf meeting -inf in a sum),
    /// neither tract's separate pass nor the kernel's fused max or min is consistent: each
    /// answers NaN or the scalar depending on where the value falls (a vector max answers its
    /// second operand when one is NaN), as in tract's own fused dense layers. The two plans
    /// then differ only there; every other value is the same bits.
    #[test]
    fn with_nan_from_the_product_the_plans_differ_only_between_nan_and_the_scalar() {
        let mut rng = SmallRng::seed_from_u64(0xc1);
        for (shape, op, value, name) in cases() {
            let tract = conv_then(shape, op, value, false);
            let ours = fuse_scalar_ops_across_reshapes(tract.clone());
            let (tract, ours) = (
                tract.into_runnable().unwrap(),
                ours.into_runnable().unwrap(),
            );
            let mut nans = 0;
            for _ in 0..8 {
                let x = input(&mut rng, [1, shape[0], shape[2], shape[3]], true);
                let want = bits(&tract.run(tvec![x.clone()]).unwrap());
                let got = bits(&ours.run(tvec![x]).unwrap());
                for (&g, &w) in got.iter().zip(&want) {
                    let (g, w) = (f32::from_bits(g), f32::from_bits(w));
                    nans += usize::from(g.is_nan() || w.is_nan());
                    if g.to_bits() != w.to_bits() {
                        let nan_or_scalar = |v: f32| v.is_nan() || v.to_bits() == value.to_bits();
                        assert!(
                            (g.is_nan() || w.is_nan()) && nan_or_scalar(g) && nan_or_scalar(w),
                            "{shape:?} {name}: fused {g}, tract {w}"
                        );
                    }
                }
            }
            assert!(nans > 0, "{shape:?}: the inputs made no NaN to compare");
        }
    }

    #[test]
    fn a_product_whose_output_is_also_read_elsewhere_is_left_alone() {
        let tract = conv_then([3, 8, 16, 16], Box::new(math::Max), 0.0, true);
        let ours = fuse_scalar_ops_across_reshapes(tract.clone());
        assert_eq!(testing::op_names(&ours), testing::op_names(&tract));
    }

    #[test]
    fn a_model_without_the_pattern_comes_back_unchanged() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/mlp.onnx"
        );
        let mlp = tract_onnx::onnx()
            .model_for_path(path)
            .unwrap()
            .into_optimized()
            .unwrap();
        let before = format!("{mlp}");
        let after = fuse_scalar_ops_across_reshapes(mlp);
        assert_eq!(format!("{after}"), before);
    }
}
