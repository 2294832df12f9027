//! Tensors in the Open Inference Protocol v2 JSON form (`{"name","datatype","shape","data"}`),
//! and their conversion to and from tract tensors.

use mint_updater::manifest::DataType;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{DatumType, Tensor};

/// A v2 tensor: flat row-major `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V2Tensor {
    /// Tensor name.
    pub name: String,
    /// Element type (`FP32`, ...).
    pub datatype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Values, row-major; booleans as `true`/`false`.
    pub data: Vec<serde_json::Value>,
}

/// Why a tensor cannot be converted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    /// The datatype name is not a v2 datatype.
    #[error("tensor {name:?}: unknown datatype {datatype:?}")]
    UnknownDatatype {
        /// Tensor name.
        name: String,
        /// Datatype given.
        datatype: String,
    },
    /// The datatype is valid but not supported here.
    #[error("tensor {name:?}: datatype {datatype} is not supported")]
    Unsupported {
        /// Tensor name.
        name: String,
        /// Datatype.
        datatype: String,
    },
    /// The number of values does not match the shape.
    #[error("tensor {name:?}: shape {shape:?} needs {expected} values, got {got}")]
    Count {
        /// Tensor name.
        name: String,
        /// Shape.
        shape: Vec<u64>,
        /// Product of the shape.
        expected: u128,
        /// Values given.
        got: usize,
    },
    /// A value is not representable in the datatype.
    #[error("tensor {name:?}: value #{index} ({value}) is not a valid {datatype}")]
    Value {
        /// Tensor name.
        name: String,
        /// Index in `data`.
        index: usize,
        /// The value as given.
        value: String,
        /// Datatype.
        datatype: String,
    },
}

impl V2Tensor {
    /// The element type.
    pub fn datatype(&self) -> Result<DataType, TensorError> {
        DataType::from_name(&self.datatype).ok_or_else(|| TensorError::UnknownDatatype {
            name: self.name.clone(),
            datatype: self.datatype.clone(),
        })
    }

    /// Values as f64 (for statistics and tolerance comparisons).
    pub fn values_f64(&self) -> Vec<f64> {
        self.data
            .iter()
            .map(|v| match v {
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                other => other.as_f64().unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// Converts to a tract tensor, checking count and every value.
    pub fn to_tract(&self) -> Result<Tensor, TensorError> {
        let dt = self.datatype()?;
        let expected = self.shape.iter().map(|&d| u128::from(d)).product::<u128>();
        if expected != self.data.len() as u128 {
            return Err(TensorError::Count {
                name: self.name.clone(),
                shape: self.shape.clone(),
                expected,
                got: self.data.len(),
            });
        }
        let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        let bad = |index: usize| TensorError::Value {
            name: self.name.clone(),
            index,
            value: self.data[index].to_string(),
            datatype: dt.name().into(),
        };
        macro_rules! ints {
            ($t:ty) => {{
                let mut out = Vec::with_capacity(self.data.len());
                for (i, v) in self.data.iter().enumerate() {
                    let x = v
                        .as_i64()
                        .and_then(|x| <$t>::try_from(x).ok())
                        .ok_or_else(|| bad(i))?;
                    out.push(x);
                }
                Tensor::from_shape(&shape, &out)
            }};
        }
        let tensor = match dt {
            DataType::FP32 => {
                let mut out = Vec::with_capacity(self.data.len());
                for (i, v) in self.data.iter().enumerate() {
                    out.push(v.as_f64().ok_or_else(|| bad(i))? as f32);
                }
                Tensor::from_shape(&shape, &out)
            }
            DataType::FP64 => {
                let mut out = Vec::with_capacity(self.data.len());
                for (i, v) in self.data.iter().enumerate() {
                    out.push(v.as_f64().ok_or_else(|| bad(i))?);
                }
                Tensor::from_shape(&shape, &out)
            }
            DataType::BOOL => {
                let mut out = Vec::with_capacity(self.data.len());
                for (i, v) in self.data.iter().enumerate() {
                    out.push(v.as_bool().ok_or_else(|| bad(i))?);
                }
                Tensor::from_shape(&shape, &out)
            }
            DataType::UINT8 => ints!(u8),
            DataType::INT8 => ints!(i8),
            DataType::INT16 => ints!(i16),
            DataType::INT32 => ints!(i32),
            DataType::INT64 => ints!(i64),
            DataType::FP16 => {
                return Err(TensorError::Unsupported {
                    name: self.name.clone(),
                    datatype: "FP16".into(),
                })
            }
        };
        // from_shape only fails on a count mismatch, which was checked above.
        tensor.map_err(|_| TensorError::Count {
            name: self.name.clone(),
            shape: self.shape.clone(),
            expected,
            got: self.data.len(),
        })
    }

    /// Converts a tract tensor to v2 form.
    pub fn from_tract(name: &str, tensor: &Tensor) -> Result<Self, TensorError> {
        let unsupported = || TensorError::Unsupported {
            name: name.into(),
            datatype: format!("{:?}", tensor.datum_type()),
        };
        let dt = datatype_of(tensor.datum_type()).ok_or_else(unsupported)?;
        macro_rules! collect {
            ($t:ty) => {
                tensor
                    .to_plain_array_view::<$t>()
                    .map_err(|_| unsupported())?
                    .iter()
                    .map(|&x| serde_json::json!(x))
                    .collect()
            };
        }
        let data: Vec<serde_json::Value> = match dt {
            DataType::FP32 => tensor
                .to_plain_array_view::<f32>()
                .map_err(|_| unsupported())?
                .iter()
                .map(|&x| finite_json(f64::from(x)))
                .collect(),
            DataType::FP64 => tensor
                .to_plain_array_view::<f64>()
                .map_err(|_| unsupported())?
                .iter()
                .map(|&x| finite_json(x))
                .collect(),
            DataType::BOOL => collect!(bool),
            DataType::UINT8 => collect!(u8),
            DataType::INT8 => collect!(i8),
            DataType::INT16 => collect!(i16),
            DataType::INT32 => collect!(i32),
            DataType::INT64 => collect!(i64),
            DataType::FP16 => return Err(unsupported()),
        };
        Ok(V2Tensor {
            name: name.into(),
            datatype: dt.name().into(),
            shape: tensor.shape().iter().map(|&d| d as u64).collect(),
            data,
        })
    }
}

/// JSON has no NaN or infinity: they become `null`, which reads back as NaN in
/// [`V2Tensor::values_f64`] and fails any comparison.
fn finite_json(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The v2 datatype of a tract datum type.
pub fn datatype_of(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::BOOL,
        DatumType::U8 => DataType::UINT8,
        DatumType::I8 => DataType::INT8,
        DatumType::I16 => DataType::INT16,
        DatumType::I32 => DataType::INT32,
        DatumType::I64 => DataType::INT64,
        DatumType::F16 => DataType::FP16,
        DatumType::F32 => DataType::FP32,
        DatumType::F64 => DataType::FP64,
        _ => return None,
    })
}
