//! Handing inputs to a pooled run state: tract's input check, made by mintd from facts read
//! once at load.
//!
//! tract's `SimpleState::run` checks each input against the model's input fact before it
//! runs: it resolves the fact's symbols from the tensor's shape (a symbol table and a scenario
//! guess per dimension) and then compares the shape again under those symbols. For a model
//! of a few microseconds that is about 1 800 instructions of a 35 000-instruction run, and the
//! guard has already checked the same tensor against the manifest.
//!
//! [`Feed`] states the model's input facts once, at load, in the terms they are checked in at
//! run time: a datum type and, per dimension, a fixed size or a symbol shared between inputs.
//! [`Feed::check`] is tract's check (same datum type, same rank, every fixed dimension equal,
//! every symbol one value across all inputs), [`Feed::run`] then seats the values and the
//! symbols in the state itself and runs tract's plan. A model whose facts say more than
//! that (a dimension that is an expression, symbols with scenarios) gets no `Feed`, and a
//! state that never ran is handed back: the engine then calls tract's `run`, which checks
//! as before.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{Symbol, TDim};

/// One dimension of an input fact.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dim {
    /// A size the model fixes.
    Fixed(usize),
    /// The size of a symbol (index into [`Feed::symbols`]), the same wherever it appears.
    Symbol(usize),
}

/// One model input: the node tract reads it from, its element type and its dimensions.
#[derive(Debug, Clone)]
struct Slot {
    node: usize,
    datum_type: DatumType,
    dims: Vec<Dim>,
}

/// The model's inputs as checked at run time; see the module documentation.
#[derive(Debug, Clone)]
pub struct Feed {
    slots: Vec<Slot>,
    symbols: Vec<Symbol>,
}

/// Why a tensor does not fit the model's input: the words tract's own check would refuse it
/// with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedError {
    /// The number of inputs differs.
    #[error("{given} inputs given, the model has {expected}")]
    Count {
        /// Inputs given.
        given: usize,
        /// Inputs the model takes.
        expected: usize,
    },
    /// An input's element type, rank or a dimension differs from the model's fact.
    #[error("input #{index} is {got}, the model takes {expected}")]
    Mismatch {
        /// Input position, in the model's order.
        index: usize,
        /// The tensor given, as `F32 [1, 16]`.
        got: String,
        /// The fact, as `F32 [N, 16]`.
        expected: String,
    },
}

impl Feed {
    /// The feed of `plan`'s inputs, or `None` when its facts say more than a fixed size or a
    /// plain symbol per dimension, or a symbol belongs to a scope with scenarios: tract's own
    /// check then stays in place.
    pub fn of(plan: &TypedRunnableModel) -> Option<Feed> {
        let model = plan.model();
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut slots = Vec::new();
        for outlet in model.input_outlets().ok()? {
            if outlet.slot != 0 || !model.node(outlet.node).inputs.is_empty() {
                return None;
            }
            let fact = model.outlet_fact(*outlet).ok()?;
            if fact.konst.is_some() || fact.uniform.is_some() {
                return None;
            }
            let mut dims = Vec::with_capacity(fact.rank());
            for dim in fact.shape.iter() {
                dims.push(match dim {
                    TDim::Val(v) => Dim::Fixed(usize::try_from(*v).ok()?),
                    TDim::Sym(s) => {
                        let scope = s.scope()?;
                        if scope.all_scenarios().into_iter().next().is_some() {
                            return None;
                        }
                        let at = match symbols.iter().position(|known| known == s) {
                            Some(at) => at,
                            None => {
                                symbols.push(s.clone());
                                symbols.len() - 1
                            }
                        };
                        Dim::Symbol(at)
                    }
                    _ => return None,
                });
            }
            slots.push(Slot {
                node: outlet.node,
                datum_type: fact.datum_type,
                dims,
            });
        }
        Some(Feed { slots, symbols })
    }

    /// tract's input check: the values of the symbols, in [`Feed::symbols`]' order, when
    /// every input fits its fact; which input does not, otherwise.
    pub fn check(&self, inputs: &[TValue]) -> Result<TVec<usize>, FeedError> {
        if inputs.len() != self.slots.len() {
            return Err(FeedError::Count {
                given: inputs.len(),
                expected: self.slots.len(),
            });
        }
        let mut values: TVec<Option<usize>> = tvec![None; self.symbols.len()];
        for (index, (slot, input)) in self.slots.iter().zip(inputs).enumerate() {
            let shape = input.shape();
            let fits = input.datum_type() == slot.datum_type
                && shape.len() == slot.dims.len()
                && slot.dims.iter().zip(shape).all(|(dim, &size)| match dim {
                    Dim::Fixed(fixed) => *fixed == size,
                    Dim::Symbol(at) => *values[*at].get_or_insert(size) == size,
                });
            if !fits {
                return Err(FeedError::Mismatch {
                    index,
                    got: format!("{:?} {:?}", input.datum_type(), shape),
                    expected: self.describe(slot, &values),
                });
            }
        }
        Ok(values
            .into_iter()
            .map(|v| v.expect("every symbol appears in an input"))
            .collect())
    }

    fn describe(&self, slot: &Slot, values: &[Option<usize>]) -> String {
        let dims: Vec<String> = slot
            .dims
            .iter()
            .map(|dim| match dim {
                Dim::Fixed(size) => size.to_string(),
                Dim::Symbol(at) => match values[*at] {
                    Some(size) => format!("{}={size}", self.symbols[*at]),
                    None => self.symbols[*at].to_string(),
                },
            })
            .collect();
        format!("{:?} [{}]", slot.datum_type, dims.join(", "))
    }

    /// Runs `state` on `inputs` after [`Feed::check`]: the inputs and the symbols' values go
    /// straight into the state, then tract runs its plan, collects the outputs and clears the
    /// turn as its `run` does. `Ok(Err(inputs))` hands the inputs back when the state has never
    /// run (its value table is not laid out yet): the caller then uses tract's `run`.
    pub fn run(
        &self,
        state: &mut TypedSimpleState,
        inputs: TVec<TValue>,
    ) -> TractResult<Result<TVec<TValue>, TVec<TValue>>> {
        if state.turn_state.values.is_empty() {
            return Ok(Err(inputs));
        }
        let sizes = self.check(&inputs)?;
        for (symbol, size) in self.symbols.iter().zip(sizes) {
            state
                .turn_state
                .resolved_symbols
                .set(symbol, i64::try_from(size)?);
        }
        for (slot, input) in self.slots.iter().zip(inputs) {
            state.turn_state.values[slot.node] = Some(tvec![input]);
        }
        state.exec()?;
        let outputs = state.outputs()?;
        state.reset_turn()?;
        Ok(Ok(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::values;
    use tract_onnx::tract_core::ops::math::add;

    /// A model of two inputs `a: f32 [N, 4]` and `b: f32 [N, 4]`, their sum.
    fn two_inputs() -> Arc<TypedRunnableModel> {
        let mut model = TypedModel::default();
        let n = model.symbols.sym("N");
        let fact = f32::fact([n.to_dim(), 4.to_dim()]);
        let a = model.add_source("a", fact.clone()).unwrap();
        let b = model.add_source("b", fact).unwrap();
        let sum = model.wire_node("sum", add(), &[a, b]).unwrap();
        model.select_output_outlets(&sum).unwrap();
        model.into_runnable().unwrap()
    }

    fn ones(rows: usize) -> TValue {
        Tensor::from_shape(&[rows, 4], &vec![1f32; rows * 4])
            .unwrap()
            .into_tvalue()
    }

    #[test]
    fn a_symbol_takes_one_value_across_inputs() {
        let plan = two_inputs();
        let feed = Feed::of(&plan).expect("plain symbols and fixed sizes");
        assert_eq!(feed.check(&[ones(3), ones(3)]).unwrap().as_slice(), [3]);
        let err = feed.check(&[ones(3), ones(2)]).unwrap_err();
        assert_eq!(
            err,
            FeedError::Mismatch {
                index: 1,
                got: "F32 [2, 4]".into(),
                expected: "F32 [N=3, 4]".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "input #1 is F32 [2, 4], the model takes F32 [N=3, 4]"
        );
        // tract's own check refuses the same pair.
        assert!(plan.run(tvec![ones(3), ones(2)]).is_err());
    }

    #[test]
    fn element_type_rank_fixed_sizes_and_count_are_checked() {
        let feed = Feed::of(&two_inputs()).unwrap();
        let int = Tensor::from_shape(&[1, 4], &[1i32; 4])
            .unwrap()
            .into_tvalue();
        let flat = Tensor::from_shape(&[4], &[1f32; 4]).unwrap().into_tvalue();
        let wide = Tensor::from_shape(&[1, 5], &[1f32; 5])
            .unwrap()
            .into_tvalue();
        for (bad, at) in [
            ([int, ones(1)], 0),
            ([ones(1), flat], 1),
            ([wide, ones(1)], 0),
        ] {
            match feed.check(&bad) {
                Err(FeedError::Mismatch { index, .. }) => assert_eq!(index, at),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            feed.check(&[ones(1)]),
            Err(FeedError::Count {
                given: 1,
                expected: 2
            })
        );
    }

    #[test]
    fn a_fed_state_answers_what_tracts_run_answers_turn_after_turn() {
        let plan = two_inputs();
        let feed = Feed::of(&plan).unwrap();
        let mut state = plan.spawn().unwrap();
        let pair = |rows: usize, x: f32| {
            let a: Vec<f32> = (0..rows * 4).map(|i| i as f32 * x).collect();
            let b: Vec<f32> = (0..rows * 4).map(|i| (i as f32).sin()).collect();
            tvec![
                Tensor::from_shape(&[rows, 4], &a).unwrap().into_tvalue(),
                Tensor::from_shape(&[rows, 4], &b).unwrap().into_tvalue(),
            ]
        };
        // A state that never ran hands the inputs back.
        let back = feed.run(&mut state, pair(2, 0.5)).unwrap().unwrap_err();
        assert_eq!(back.len(), 2);
        state.run(back).unwrap();
        for (rows, x) in [(1, 0.25), (5, -3.0), (1, 7.5), (2, 0.5)] {
            let want = plan.run(pair(rows, x)).unwrap();
            let got = feed.run(&mut state, pair(rows, x)).unwrap().unwrap();
            assert_eq!(got[0].shape(), [rows, 4]);
            assert_eq!(values(&got[0]), values(&want[0]));
        }
        // A refused turn leaves the state usable.
        assert!(feed.run(&mut state, tvec![ones(2), ones(3)]).is_err());
        let got = feed.run(&mut state, pair(1, 1.0)).unwrap().unwrap();
        assert_eq!(values(&got[0]), values(&plan.run(pair(1, 1.0)).unwrap()[0]));
    }
}
