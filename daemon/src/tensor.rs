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

/// The values of one tensor in their own element type, flat and row-major: what the
/// inference endpoint checks and hands to tract without a detour through JSON values.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL`.
    Bool(Vec<bool>),
    /// `UINT8`.
    U8(Vec<u8>),
    /// `INT8`.
    I8(Vec<i8>),
    /// `INT16`.
    I16(Vec<i16>),
    /// `INT32`.
    I32(Vec<i32>),
    /// `INT64`.
    I64(Vec<i64>),
    /// `FP32`.
    F32(Vec<f32>),
    /// `FP64`.
    F64(Vec<f64>),
}

/// Count, sum and sum of squares of a tensor's elements.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments {
    /// Number of elements.
    pub count: u64,
    /// Sum of the elements.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_sq: f64,
}

/// Applies `$body` to the vector inside any [`TensorData`] variant.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
        }
    };
}

/// `$body` with `$values` an iterator over the elements as f64 (booleans as 0 and 1), typed
/// per variant so the loop is compiled for each element type.
macro_rules! each_as_f64 {
    ($data:expr, $values:ident => $body:expr) => {
        match $data {
            TensorData::Bool(v) => {
                let $values = v.iter().map(|&x| f64::from(u8::from(x)));
                $body
            }
            TensorData::U8(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorData::I8(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorData::I16(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorData::I32(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorData::I64(v) => {
                let $values = v.iter().map(|&x| x as f64);
                $body
            }
            TensorData::F32(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorData::F64(v) => {
                let $values = v.iter().copied();
                $body
            }
        }
    };
}

impl TensorData {
    /// The element type.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::BOOL,
            TensorData::U8(_) => DataType::UINT8,
            TensorData::I8(_) => DataType::INT8,
            TensorData::I16(_) => DataType::INT16,
            TensorData::I32(_) => DataType::INT32,
            TensorData::I64(_) => DataType::INT64,
            TensorData::F32(_) => DataType::FP32,
            TensorData::F64(_) => DataType::FP64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first element outside `[low, high]` (as f64; NaN is outside), with its index: one
    /// typed pass, for the declared ranges of the manifest.
    pub fn first_outside(&self, low: f64, high: f64) -> Option<(usize, f64)> {
        each_as_f64!(self, values => values
            .enumerate()
            .find(|&(_, x)| !(low..=high).contains(&x)))
    }

    /// Count, sum and sum of squares of the elements as f64 (booleans as 0 and 1), for the
    /// running statistics that drift detection compares with the manifest's reference.
    pub fn moments(&self) -> Moments {
        let (sum, sum_sq) = each_as_f64!(self, values => values
            .fold((0.0, 0.0), |(sum, sum_sq), x| (sum + x, sum_sq + x * x)));
        Moments {
            count: self.len() as u64,
            sum,
            sum_sq,
        }
    }

    /// The first NaN or infinite element (index and value); `None` for integer types.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        match self {
            TensorData::F32(v) => v
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| (i, f64::from(v[i]))),
            TensorData::F64(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            _ => None,
        }
    }

    /// Decodes little-endian, row-major bytes (the binary tensor extension of the v2
    /// protocol; `BOOL` is one byte, 0 or 1). `Err` says why the bytes do not fit.
    pub fn from_le_bytes(datatype: DataType, bytes: &[u8]) -> Result<Self, String> {
        let size = datatype.size();
        if !bytes.len().is_multiple_of(size) {
            return Err(format!(
                "{} bytes is not a whole number of {} elements ({size} bytes each)",
                bytes.len(),
                datatype.name()
            ));
        }
        macro_rules! decode {
            ($t:ty, $variant:ident) => {
                TensorData::$variant(
                    bytes
                        .chunks_exact(size)
                        .map(|c| {
                            <$t>::from_le_bytes(c.try_into().expect("chunk of the element size"))
                        })
                        .collect(),
                )
            };
        }
        Ok(match datatype {
            DataType::BOOL => {
                let mut out = Vec::with_capacity(bytes.len());
                for (i, &b) in bytes.iter().enumerate() {
                    match b {
                        0 => out.push(false),
                        1 => out.push(true),
                        other => {
                            return Err(format!("BOOL element #{i} is byte {other}, not 0 or 1"))
                        }
                    }
                }
                TensorData::Bool(out)
            }
            DataType::UINT8 => TensorData::U8(bytes.to_vec()),
            DataType::INT8 => decode!(i8, I8),
            DataType::INT16 => decode!(i16, I16),
            DataType::INT32 => decode!(i32, I32),
            DataType::INT64 => decode!(i64, I64),
            DataType::FP32 => decode!(f32, F32),
            DataType::FP64 => decode!(f64, F64),
            DataType::FP16 => return Err("FP16 tensors are not supported".into()),
        })
    }

    /// Encodes as little-endian, row-major bytes (the binary tensor extension).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        self.write_le_bytes(&mut out);
        out
    }

    /// Bytes of [`TensorData::to_le_bytes`], without making them.
    pub fn byte_len(&self) -> usize {
        self.len() * self.datatype().size()
    }

    /// Appends [`TensorData::to_le_bytes`] to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.byte_len());
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            TensorData::U8(v) => out.extend_from_slice(v),
            TensorData::I8(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::I16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::I32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::I64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::F32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::F64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        }
    }

    /// A tract tensor of this shape (one copy, into tract's aligned buffer).
    pub fn into_tract(self, name: &str, shape: &[usize]) -> Result<Tensor, TensorError> {
        let expected = shape.iter().map(|&d| d as u128).product::<u128>();
        let got = self.len();
        let count = || TensorError::Count {
            name: name.into(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            expected,
            got,
        };
        if expected != got as u128 {
            return Err(count());
        }
        each_variant!(self, v => Tensor::from_shape(shape, &v).map_err(|_| count()))
    }

    /// The values of a tract tensor (`Err` for element types without a v2 datatype).
    pub fn from_tract(name: &str, tensor: &Tensor) -> Result<Self, TensorError> {
        let unsupported = || TensorError::Unsupported {
            name: name.into(),
            datatype: format!("{:?}", tensor.datum_type()),
        };
        macro_rules! collect {
            ($t:ty, $variant:ident) => {
                TensorData::$variant(
                    tensor
                        .try_as_plain_ram()
                        .and_then(|view| view.as_slice::<$t>())
                        .map_err(|_| unsupported())?
                        .to_vec(),
                )
            };
        }
        Ok(
            match datatype_of(tensor.datum_type()).ok_or_else(unsupported)? {
                DataType::BOOL => collect!(bool, Bool),
                DataType::UINT8 => collect!(u8, U8),
                DataType::INT8 => collect!(i8, I8),
                DataType::INT16 => collect!(i16, I16),
                DataType::INT32 => collect!(i32, I32),
                DataType::INT64 => collect!(i64, I64),
                DataType::FP32 => collect!(f32, F32),
                DataType::FP64 => collect!(f64, F64),
                DataType::FP16 => return Err(unsupported()),
            },
        )
    }
}

/// Serialises as a flat JSON array in the element type (f32 printed in its own shortest
/// form, so `0.1f32` is `0.1`). Non-finite floats cannot be JSON: callers check first.
impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        each_variant!(self, v => v.serialize(serializer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_outside_a_range_is_found_in_every_type() {
        let f = TensorData::F32(vec![0.5, 1.0, 1.5, f32::NAN]);
        assert_eq!(f.first_outside(-1.0, 1.0), Some((2, 1.5)));
        let nan = TensorData::F32(vec![0.0, f32::NAN]);
        assert!(matches!(nan.first_outside(-1.0, 1.0), Some((1, x)) if x.is_nan()));
        assert_eq!(
            TensorData::U8(vec![0, 9, 10]).first_outside(0.0, 9.0),
            Some((2, 10.0))
        );
        assert_eq!(TensorData::I64(vec![-3, 3]).first_outside(-3.0, 3.0), None);
        assert_eq!(
            TensorData::Bool(vec![false, true]).first_outside(0.0, 0.0),
            Some((1, 1.0))
        );
    }

    #[test]
    fn little_endian_bytes_round_trip_and_their_length_is_known_beforehand() {
        for data in [
            TensorData::F32(vec![1.5, -2.0]),
            TensorData::I16(vec![-1, 300]),
            TensorData::Bool(vec![true, false, true]),
            TensorData::F64(vec![0.1]),
        ] {
            let bytes = data.to_le_bytes();
            assert_eq!(bytes.len(), data.byte_len());
            assert_eq!(
                TensorData::from_le_bytes(data.datatype(), &bytes).unwrap(),
                data
            );
            let mut appended = vec![7u8];
            data.write_le_bytes(&mut appended);
            assert_eq!(&appended[1..], &bytes[..]);
        }
    }

    #[test]
    fn tract_tensors_carry_the_same_values_both_ways() {
        let data = TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let tensor = data.clone().into_tract("x", &[2, 3]).unwrap();
        assert_eq!(tensor.shape(), &[2, 3]);
        assert_eq!(TensorData::from_tract("x", &tensor).unwrap(), data);
        assert!(data.into_tract("x", &[4, 2]).is_err());
    }
}
