//! Where tract spends its time on a model: each operator's mean time per run, in the plan
//! mintd runs (`mintd::engine::optimize`: tract's `into_optimized` with mintd's direct
//! convolutions and own kernels substituted, then `into_runnable`), or with `--stock` in
//! tract's own plan (`model_for_path`, `into_optimized`, `into_runnable`). Not part of mintd;
//! used for the figures in docs/performance.md.
//!
//! ```sh
//! cargo build --profile profiling --example tract_profile
//! target/profiling/examples/tract_profile tests/fixtures/models/convnet.onnx 300
//! target/profiling/examples/tract_profile --stock tests/fixtures/models/convnet.onnx 300
//! ```
//!
//! Arguments: `--stock` (optional, first), the ONNX file, the number of runs (default 200).
//! Symbolic dimensions are run at 1; the input is a fixed ramp.

use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1).peekable();
    let stock = args.next_if(|a| a == "--stock").is_some();
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: tract_profile [--stock] MODEL.onnx [RUNS]"))?;
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let typed = if stock {
        tract_onnx::onnx().model_for_path(&path)?.into_optimized()?
    } else {
        mintd::engine::optimize(&std::fs::read(&path)?)?
    };
    let plan = typed.into_runnable()?;
    let shape: Vec<usize> = plan
        .model()
        .input_fact(0)?
        .shape
        .iter()
        .map(|d| d.to_i64().map_or(1, |v| v as usize))
        .collect();
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| (i % 7) as f32 * 0.1).collect();
    let input = Tensor::from_shape(&shape, &values)?;
    let mut state = plan.spawn()?;
    for _ in 0..5 {
        state.run(tvec![input.clone().into_tvalue()])?;
    }
    let mut per_node = vec![Duration::ZERO; plan.model().nodes().len()];
    let started = Instant::now();
    for _ in 0..runs {
        state.run_plan_with_eval(
            tvec![input.clone().into_tvalue()],
            |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                per_node[node.id] += t.elapsed();
                out
            },
        )?;
    }
    let total = started.elapsed().as_secs_f64() * 1e6 / runs as f64;
    let which = if stock { "stock tract" } else { "mintd's plan" };
    println!("{path} ({which}): {total:.1} µs per run ({runs} runs, input {shape:?})");
    for node in plan.model().nodes() {
        let us = per_node[node.id].as_secs_f64() * 1e6 / runs as f64;
        if us >= 0.5 {
            println!(
                "{us:>10.1} µs {:>5.1} %  {} ({})",
                100.0 * us / total,
                node.name,
                node.op().name()
            );
        }
    }
    Ok(())
}
