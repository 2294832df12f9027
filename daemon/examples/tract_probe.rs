use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;
fn main() -> TractResult<()> {
    let path = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    let mode = std::env::args().nth(3).unwrap_or_default();
    let model = tract_onnx::onnx().model_for_path(&path)?;
    let model = if mode.contains("b1") {
        model.with_input_fact(0, f32::fact([1, 16]).into())?
    } else {
        model
    };
    let model = model.into_optimized()?;
    let plan = model.into_runnable()?;
    let shape: Vec<usize> = plan
        .model()
        .input_fact(0)?
        .shape
        .iter()
        .map(|d| d.to_i64().map(|v| v as usize).unwrap_or(1))
        .collect();
    let len: usize = shape.iter().product();
    let input = Tensor::from_shape(
        &shape,
        &(0..len).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>(),
    )?;
    let mut state = plan.spawn()?;
    for _ in 0..5 {
        plan.run(tvec!(input.clone().into()))?;
    }
    let mut per = vec![Duration::ZERO; plan.model().nodes().len()];
    let t = Instant::now();
    for _ in 0..n {
        if mode.contains("prof") {
            state.run_plan_with_eval(tvec!(input.clone().into()), |ctx, st, node, inp| {
                let t = Instant::now();
                let r = eval(ctx, st, node, inp);
                per[node.id] += t.elapsed();
                r
            })?;
        } else if mode.contains("state") {
            state.run(tvec!(input.clone().into()))?;
        } else {
            plan.run(tvec!(input.clone().into()))?;
        }
    }
    println!(
        "{:.2} us per run",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    if mode.contains("prof") {
        for node in plan.model().nodes() {
            let us = per[node.id].as_secs_f64() * 1e6 / n as f64;
            if us > 0.5 {
                println!("{:>9.1} us  {} {}", us, node.name, node.op().name());
            }
        }
    }
    Ok(())
}
