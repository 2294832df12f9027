//! The inference engine: tract, fed only with model bytes whose digest is checked in memory
//! right before parsing.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mint_updater::manifest::TensorSpec;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::tensor::{datatype_of, TensorError, V2Tensor};

#[cfg(target_arch = "x86_64")]
mod avx512;
mod conv;
mod feed;
mod fuse;
mod maxpool;
mod pad;
mod pool;
#[cfg(test)]
mod testing;

pub use conv::substitute_convs;
use feed::Feed;
pub use fuse::fuse_scalar_ops_across_reshapes;
pub use maxpool::MaxPool2x2S2;
pub use pad::PadConstant;
use pool::StatePool;

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

/// Run states kept for reuse, at most: one per thread that may run the model at once is
/// plenty (the API caps concurrent inferences far below this).
const POOL_MAX: usize = 8;

/// No run-time estimate yet (the model has not run).
const UNMEASURED: u64 = u64::MAX;

/// Runs of the same or a smaller input that the run-time estimate may skip between two timed
/// ones.
const UNTIMED_MAX: u32 = 7;

/// A loaded, optimised model ready to run.
pub struct Engine {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Run states of finished inferences, reused so a run does not rebuild tract's per-run
    /// bookkeeping. `None` when the model has stateful operators (recurrent state): each run
    /// then gets a fresh state, so nothing of one request can reach the next.
    pool: Option<StatePool<TypedSimpleState>>,
    /// How pooled states take their inputs when tract's input check can be stated as a
    /// [`Feed`] (`None`: tract's `run` checks and seats them).
    feed: Option<Feed>,
    /// Typical run time in ns: a decaying average that jumps up at once to any slower run,
    /// [`UNMEASURED`] until the first run.
    run_ns: AtomicU64,
    /// The input values (all inputs together) of the last timed run, and the runs since it:
    /// see [`Engine::times`].
    timed_values: AtomicUsize,
    untimed_runs: AtomicU32,
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
    pub fn load_unchecked(bytes: &[u8]) -> Result<Self, EngineError> {
        let typed = optimize(bytes)?;
        let inputs = describe(&typed, typed.input_outlets().map_err(load)?, "input")?;
        let outputs = describe(&typed, typed.output_outlets().map_err(load)?, "output")?;
        let plan = typed.into_runnable().map_err(load)?;
        // A state whose operators keep nothing between runs can serve the next request.
        let first = plan.spawn().map_err(load)?;
        let pool = first
            .op_states
            .iter()
            .all(Option::is_none)
            .then(|| StatePool::new(first, POOL_MAX));
        let feed = pool.as_ref().and_then(|_| Feed::of(&plan));
        Ok(Engine {
            plan,
            inputs,
            outputs,
            pool,
            feed,
            run_ns: AtomicU64::new(UNMEASURED),
            timed_values: AtomicUsize::new(0),
            untimed_runs: AtomicU32::new(0),
        })
    }

    /// How long a run of this model typically takes: a decaying average of the timed runs
    /// (see [`Engine::times`]: every run with more input values than the last timed one, one
    /// in eight otherwise), raised at once by any slower one (so one slow input is enough to
    /// be treated as slow); `None` before the first run.
    pub fn typical_run(&self) -> Option<Duration> {
        match self.run_ns.load(Ordering::Relaxed) {
            UNMEASURED => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Whether a run of `values` input values is timed for the estimate: the first run, any
    /// run with more input values than the last timed one (a larger batch may take longer:
    /// the estimate must see it at once), and otherwise one run in [`UNTIMED_MAX`] + 1. A
    /// clock read costs a run of a few microseconds about 1 % (docs/performance.md); the
    /// same work again needs no new measure every time.
    fn times(&self, values: usize) -> bool {
        // Counters only steer sampling: a race between runs may time one run more or fewer,
        // so plain loads and stores (Relaxed) are enough.
        let untimed = self.untimed_runs.load(Ordering::Relaxed);
        let timed = untimed >= UNTIMED_MAX
            || values > self.timed_values.load(Ordering::Relaxed)
            || self.run_ns.load(Ordering::Relaxed) == UNMEASURED;
        if timed {
            self.untimed_runs.store(0, Ordering::Relaxed);
            self.timed_values.store(values, Ordering::Relaxed);
        } else {
            self.untimed_runs.store(untimed + 1, Ordering::Relaxed);
        }
        timed
    }

    fn observe_run(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(UNMEASURED - 1);
        // Races between runs only lose one sample of an estimate; Relaxed is enough.
        let old = self.run_ns.load(Ordering::Relaxed);
        let new = if old == UNMEASURED || took >= old {
            took
        } else {
            old - (old - took) / 8
        };
        self.run_ns.store(new, Ordering::Relaxed);
    }

    /// Runs the plan on ordered inputs with a pooled state when the model allows it, fed by
    /// [`Feed`] when the model's input facts allow that. A state goes back to the pool only
    /// after a successful run: a failed or panicking run drops it.
    fn execute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(pool) = &self.pool else {
            return self.plan.run(inputs);
        };
        let mut state = match pool.take() {
            Some(state) => state,
            None => Box::new(self.plan.spawn()?),
        };
        let outputs = match &self.feed {
            Some(feed) => match feed.run(&mut state, inputs)? {
                Ok(outputs) => outputs,
                Err(inputs) => state.run(inputs)?,
            },
            None => state.run(inputs)?,
        };
        pool.give(state);
        Ok(outputs)
    }

    /// Input specs as read from the model (`-1` for symbolic dimensions).
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Whether every input's shape is fixed (no free dimension such as a batch): the model's
    /// run then takes about the same work for every request.
    pub fn fixed_input_shapes(&self) -> bool {
        self.inputs
            .iter()
            .all(|spec| spec.shape.iter().all(|&d| d >= 0))
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
            ordered.push(inputs.swap_remove(at).1);
        }
        if !inputs.is_empty() {
            return Err(EngineError::Inputs(format!(
                "{given} inputs given, the model has {}",
                self.inputs.len()
            )));
        }
        Ok(self
            .outputs
            .iter()
            .zip(self.run_ordered(ordered)?)
            .map(|(spec, t)| (spec.name.clone(), t))
            .collect())
    }

    /// Runs one inference on inputs in the model's order ([`Engine::inputs`]); returns the
    /// outputs in the model's order ([`Engine::outputs`]).
    pub fn run_ordered(&self, inputs: TVec<Tensor>) -> Result<TVec<Tensor>, EngineError> {
        let inputs = inputs.into_iter().map(Tensor::into_tvalue).collect();
        Ok(self
            .run_values(inputs, Instant::now())?
            .into_iter()
            .map(TValue::into_tensor)
            .collect())
    }

    /// [`Engine::run_ordered`] in tract's own value type, which the guarded path hands over
    /// and takes back without moving the tensors between containers. `started` is when the
    /// caller began the run, for the run-time estimate ([`Engine::typical_run`]): the guarded
    /// path passes the instant it checked the deadline at, a clock read it has already paid.
    pub fn run_values(
        &self,
        inputs: TVec<TValue>,
        started: Instant,
    ) -> Result<TVec<TValue>, EngineError> {
        if inputs.len() != self.inputs.len() {
            return Err(EngineError::Inputs(format!(
                "{} inputs given, the model has {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        let values = inputs.iter().map(|t| t.len()).sum();
        let outputs = self
            .execute(inputs)
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        if self.times(values) {
            self.observe_run(started.elapsed());
        }
        Ok(outputs)
    }
}

/// The typed model mintd runs for ONNX `bytes`: tract's decluttered model with its
/// convolutions made direct where that pays ([`substitute_convs`]), optimised by tract,
/// scalar operations after a convolution's reshape fused into its product
/// ([`fuse_scalar_ops_across_reshapes`]), and mintd's own kernels substituted
/// ([`substitute_kernels`]). [`Engine::load_unchecked`] makes its plan from it; benchmarks
/// and profiles call it to run the very same plan.
pub fn optimize(mut bytes: &[u8]) -> Result<TypedModel, EngineError> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut bytes)
        .map_err(load)?;
    let typed = model
        .into_typed()
        .map_err(load)?
        .into_decluttered()
        .map_err(load)?;
    let typed = substitute_convs(typed).map_err(load)?;
    let typed = typed.into_optimized().map_err(load)?;
    let typed = fuse_scalar_ops_across_reshapes(typed);
    substitute_kernels(typed).map_err(load)
}

/// Replaces, in an optimised model, the operators mintd computes faster than tract-core 0.23.9,
/// bit for bit: constant-mode f32 pads by [`PadConstant`] and 2×2 stride-2 f32 max pools by
/// [`MaxPool2x2S2`], which then writes into the zero padding of a pad that alone reads it;
/// leaves every other node as it is. Run it on the result of `into_optimized()`, before
/// `into_runnable()`: [`optimize`] does, and so the engine, the benchmark and `tract_profile`
/// all run the same plan.
pub fn substitute_kernels(model: TypedModel) -> TractResult<TypedModel> {
    maxpool::absorb_pads(maxpool::substitute_pools(pad::substitute_pads(model)?)?)
}

/// The body of mintd's f32 operators: `kernel` reads `input`'s values and writes those of a
/// new f32 tensor of `shape` (zeroed at allocation), which is the operator's one output.
fn f32_into_new(
    input: &Tensor,
    shape: &[usize],
    kernel: impl FnOnce(&[f32], &mut [f32]),
) -> TractResult<TVec<TValue>> {
    let mut output = Tensor::zero::<f32>(shape)?;
    {
        let input = input.try_as_plain_ram()?;
        let mut out = output.try_as_plain_ram_mut()?;
        kernel(input.as_slice::<f32>()?, out.as_slice_mut::<f32>()?);
    }
    Ok(tvec!(output.into_tvalue()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> Engine {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/mlp.onnx"
        );
        Engine::load_unchecked(&std::fs::read(path).unwrap()).unwrap()
    }

    fn input(seed: f32, rows: usize) -> Tensor {
        let values: Vec<f32> = (0..rows * 16).map(|i| (i as f32 * seed).sin()).collect();
        Tensor::from_shape(&[rows, 16], &values).unwrap()
    }

    fn run(engine: &Engine, t: &Tensor) -> Result<Vec<f32>, EngineError> {
        let out = engine.run_tensors(vec![("input".into(), t.clone())])?;
        Ok(testing::values(&out[0].1))
    }

    #[test]
    fn pooled_states_give_the_answers_of_a_fresh_plan_run_whatever_ran_before() {
        let engine = mlp();
        assert!(engine.pool.is_some(), "the mlp has no stateful operator");
        assert!(
            engine.feed.is_some(),
            "the mlp's input is [N, 16]: a plain symbol and a fixed size"
        );
        let fresh = |t: &Tensor| -> Vec<f32> {
            let out = engine.plan.run(tvec![t.clone().into_tvalue()]).unwrap();
            testing::values(&out[0])
        };
        let (a, b) = (input(0.37, 1), input(1.9, 3));
        let (want_a, want_b) = (fresh(&a), fresh(&b));
        for _ in 0..3 {
            assert_eq!(run(&engine, &a).unwrap(), want_a);
            assert_eq!(run(&engine, &b).unwrap(), want_b);
        }
        // A failed run drops its state; the next ones are unaffected.
        let wrong = Tensor::from_shape(&[1, 15], &[0f32; 15]).unwrap();
        assert!(run(&engine, &wrong).is_err());
        assert_eq!(run(&engine, &a).unwrap(), want_a);
        // Concurrent runs each get a state of their own.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        assert_eq!(run(&engine, &b).unwrap(), want_b);
                    }
                });
            }
        });
        let kept = engine.pool.as_ref().unwrap().len();
        assert!((1..=POOL_MAX).contains(&kept), "{kept} states kept");
    }

    #[test]
    fn the_convnet_runs_mintds_convolutions_pads_pools_and_fused_relu_within_rounding_of_stock_tract(
    ) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/convnet.onnx"
        );
        let engine = Engine::load_unchecked(&std::fs::read(path).unwrap()).unwrap();
        let ops: Vec<String> = engine
            .plan
            .model()
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect();
        let count = |name: &str| ops.iter().filter(|op| *op == name).count();
        assert_eq!(count("MaxPool2x2S2"), 3, "{ops:?}");
        assert_eq!(count("OptMaxPool"), 0, "{ops:?}");
        // The image's pad before conv1; the pools write conv2's and conv3's padding.
        assert_eq!(count("PadConstant"), 1, "{ops:?}");
        assert_eq!(count("Pad"), 0, "{ops:?}");
        if conv::has_avx512_kernel() {
            // All three convolutions run on mintd's AVX-512 kernel, their Relus inside it.
            assert_eq!(count("DirectConvAvx512"), 3, "{ops:?}");
            assert_eq!(count("OptMaxByScalar"), 0, "{ops:?}");
            assert_eq!(count("LazyIm2col"), 0, "{ops:?}");
        } else if tract_linalg::routines::conv_w4_f32().is_some() {
            // conv1 (3→32 channels) and conv2 (32→64) run direct, each Relu after them on its
            // own; conv3 (64→128) keeps im2col and its Relu runs in its product's kernel.
            assert_eq!(count("DirectSpatialConv"), 2, "{ops:?}");
            assert_eq!(count("OptMaxByScalar"), 2, "{ops:?}");
            assert_eq!(count("LazyIm2col"), 1, "{ops:?}");
        } else {
            assert_eq!(count("OptMaxByScalar"), 0, "{ops:?}");
        }
        let stock = tract_onnx::onnx()
            .model_for_path(path)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let values = testing::values;
        for seed in [0.37f32, 1.9, -5.3] {
            let pixels: Vec<f32> = (0..3 * 64 * 64).map(|i| (i as f32 * seed).sin()).collect();
            let image = Tensor::from_shape(&[1, 3, 64, 64], &pixels).unwrap();
            let want = values(&stock.run(tvec![image.clone().into_tvalue()]).unwrap()[0]);
            let got = engine.run_tensors(vec![("image".into(), image)]).unwrap();
            assert_eq!(got[0].0, "logits");
            assert_eq!(got[0].1.shape(), [1, 10]);
            let got = values(&got[0].1);
            // The direct convolutions add the same products in another order (bias first):
            // the logits move by rounding only, far below the gaps between them.
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "seed {seed}: {got:?} against {want:?}, {worst:e} apart"
            );
        }
    }

    #[test]
    fn the_typical_run_is_unknown_before_the_first_run_and_jumps_up_to_a_slow_one() {
        let engine = mlp();
        assert_eq!(engine.typical_run(), None);
        run(&engine, &input(0.5, 1)).unwrap();
        assert!(engine.typical_run().is_some());
        // The arithmetic on a fresh engine (a real first run takes whatever the machine gives).
        let engine = mlp();
        engine.observe_run(Duration::from_micros(100));
        assert_eq!(engine.typical_run(), Some(Duration::from_micros(100)));
        engine.observe_run(Duration::from_micros(900));
        assert_eq!(engine.typical_run(), Some(Duration::from_micros(900)));
        // Faster runs bring it down by an eighth of the gap each.
        engine.observe_run(Duration::from_micros(100));
        assert_eq!(engine.typical_run(), Some(Duration::from_micros(800)));
        for _ in 0..60 {
            engine.observe_run(Duration::from_micros(100));
        }
        let settled = engine.typical_run().unwrap();
        assert!(settled < Duration::from_micros(101), "{settled:?}");
    }

    #[test]
    fn runs_are_timed_first_then_when_their_input_grows_and_otherwise_one_in_eight() {
        let engine = mlp();
        assert!(engine.times(16), "nothing measured yet");
        engine.observe_run(Duration::from_micros(5));
        // The same input again: seven runs untimed, the eighth timed, and so on.
        let timed: Vec<bool> = (0..16).map(|_| engine.times(16)).collect();
        let want: Vec<bool> = (1..=16).map(|i| i % 8 == 0).collect();
        assert_eq!(timed, want);
        // A larger batch is timed at once, every time it grows; smaller ones wait their turn.
        assert!(engine.times(64));
        assert!(!engine.times(16));
        assert!(engine.times(128));
        assert!(!engine.times(128));
        // Through the engine: a batch of 40 rows after many single rows is timed, so its
        // run time raises the estimate at once.
        let engine = mlp();
        for _ in 0..20 {
            run(&engine, &input(0.5, 1)).unwrap();
        }
        engine.run_ns.store(1, Ordering::Relaxed);
        run(&engine, &input(0.5, 40)).unwrap();
        let raised = engine.typical_run().unwrap();
        assert!(raised > Duration::from_nanos(1), "{raised:?}");
    }
}
