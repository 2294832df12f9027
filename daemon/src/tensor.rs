//! Tensors in the Open Inference Protocol v2 JSON form (`{"name","datatype","shape","data"}`),
//! and their conversion to and from tract tensors.

use mint_updater::manifest::DataType;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{DatumType, Tensor};

mod sums;
use sums::sums_within;

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

/// The values of one tensor in their own element type, owned, flat and row-major: an input
/// sent as JSON values once decoded, on its way into a tract tensor
/// ([`TensorData::into_tract`]). Binary inputs skip it ([`tract_from_le_bytes`]); checks and
/// answers read any tensor through [`TensorValues`].
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

/// What one pass over a tensor's values found ([`TensorValues::survey`]): what the guard
/// checks and what drift detection folds in, without reading the values three times.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Survey {
    /// The first NaN or infinite element (index and value); `None` for integer types.
    pub first_non_finite: Option<(usize, f64)>,
    /// The first element outside the range asked for (NaN is outside); `None` without one.
    pub first_outside: Option<(usize, f64)>,
    /// Count, sum and sum of squares.
    pub moments: Moments,
}

/// The values of one tensor, borrowed, flat and row-major in their own element type: a
/// view of a [`TensorData`] or of a tract tensor's buffer ([`TensorValues::of_tract`]), for
/// the checks, the drift statistics and the encoding of an answer without a copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorValues<'a> {
    /// `BOOL`.
    Bool(&'a [bool]),
    /// `UINT8`.
    U8(&'a [u8]),
    /// `INT8`.
    I8(&'a [i8]),
    /// `INT16`.
    I16(&'a [i16]),
    /// `INT32`.
    I32(&'a [i32]),
    /// `INT64`.
    I64(&'a [i64]),
    /// `FP32`.
    F32(&'a [f32]),
    /// `FP64`.
    F64(&'a [f64]),
}

/// Applies `$body` to the slice inside any [`TensorValues`] variant.
macro_rules! each_variant {
    ($values:expr, $v:ident => $body:expr) => {
        match $values {
            TensorValues::Bool($v) => $body,
            TensorValues::U8($v) => $body,
            TensorValues::I8($v) => $body,
            TensorValues::I16($v) => $body,
            TensorValues::I32($v) => $body,
            TensorValues::I64($v) => $body,
            TensorValues::F32($v) => $body,
            TensorValues::F64($v) => $body,
        }
    };
}

/// `$body` with `$values` an iterator over the elements as f64 (booleans as 0 and 1), typed
/// per variant so the loop is compiled for each element type.
macro_rules! each_as_f64 {
    ($data:expr, $values:ident => $body:expr) => {
        match $data {
            TensorValues::Bool(v) => {
                let $values = v.iter().map(|&x| f64::from(u8::from(x)));
                $body
            }
            TensorValues::U8(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorValues::I8(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorValues::I16(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorValues::I32(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorValues::I64(v) => {
                let $values = v.iter().map(|&x| x as f64);
                $body
            }
            TensorValues::F32(v) => {
                let $values = v.iter().map(|&x| f64::from(x));
                $body
            }
            TensorValues::F64(v) => {
                let $values = v.iter().copied();
                $body
            }
        }
    };
}

impl<'a> TensorValues<'a> {
    /// The element type.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorValues::Bool(_) => DataType::BOOL,
            TensorValues::U8(_) => DataType::UINT8,
            TensorValues::I8(_) => DataType::INT8,
            TensorValues::I16(_) => DataType::INT16,
            TensorValues::I32(_) => DataType::INT32,
            TensorValues::I64(_) => DataType::INT64,
            TensorValues::F32(_) => DataType::FP32,
            TensorValues::F64(_) => DataType::FP64,
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

    /// The values of a tract tensor, borrowed from its buffer (`Err` for element types
    /// without a v2 datatype).
    pub fn of_tract(name: &str, tensor: &'a Tensor) -> Result<Self, TensorError> {
        let unsupported = || TensorError::Unsupported {
            name: name.into(),
            datatype: format!("{:?}", tensor.datum_type()),
        };
        let plain = tensor.try_as_plain_ram().map_err(|_| unsupported())?;
        macro_rules! view {
            ($t:ty, $variant:ident) => {
                TensorValues::$variant(plain.as_slice::<$t>().map_err(|_| unsupported())?)
            };
        }
        Ok(
            match datatype_of(tensor.datum_type()).ok_or_else(unsupported)? {
                DataType::BOOL => view!(bool, Bool),
                DataType::UINT8 => view!(u8, U8),
                DataType::INT8 => view!(i8, I8),
                DataType::INT16 => view!(i16, I16),
                DataType::INT32 => view!(i32, I32),
                DataType::INT64 => view!(i64, I64),
                DataType::FP32 => view!(f32, F32),
                DataType::FP64 => view!(f64, F64),
                DataType::FP16 => return Err(unsupported()),
            },
        )
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
        let (sum, sum_sq, _) = self.sums_within(f64::MIN, f64::MAX);
        Moments {
            count: self.len() as u64,
            sum,
            sum_sq,
        }
    }

    /// Sum and sum of squares as f64, and whether any value fails `low <= x <= high`, in the
    /// lanes of [`sums`]'s order.
    fn sums_within(&self, low: f64, high: f64) -> (f64, f64, bool) {
        match self {
            TensorValues::Bool(v) => sums_within(v, |x| f64::from(u8::from(x)), low, high),
            TensorValues::U8(v) => sums_within(v, f64::from, low, high),
            TensorValues::I8(v) => sums_within(v, f64::from, low, high),
            TensorValues::I16(v) => sums_within(v, f64::from, low, high),
            TensorValues::I32(v) => sums_within(v, f64::from, low, high),
            TensorValues::I64(v) => sums_within(v, |x| x as f64, low, high),
            TensorValues::F32(v) => sums::sums_within_f32(v, low, high),
            TensorValues::F64(v) => sums_within(v, |x| x, low, high),
        }
    }

    /// [`TensorValues::first_non_finite`], [`TensorValues::first_outside`] of `range` (when
    /// given) and [`TensorValues::moments`] in one pass: what the guard needs of every input
    /// and output.
    pub fn survey(&self, range: Option<[f64; 2]>) -> Survey {
        // One pass without branches on the values: sums, and whether any value is bad. The
        // bounds are finite, so one test per value catches NaN, infinities and values out of
        // range alike.
        let [low, high] = range.unwrap_or([f64::MIN, f64::MAX]);
        // (A NaN bound stays NaN: every value then fails, and the slow passes below answer.)
        let low = if low < f64::MIN { f64::MIN } else { low };
        let high = if high > f64::MAX { f64::MAX } else { high };
        let (sum, sum_sq, bad) = self.sums_within(low, high);
        let moments = Moments {
            count: self.len() as u64,
            sum,
            sum_sq,
        };
        if !bad {
            return Survey {
                first_non_finite: None,
                first_outside: None,
                moments,
            };
        }
        // A refused tensor, or a bound that is NaN: find where, in the passes that stop at the
        // first.
        Survey {
            first_non_finite: self.first_non_finite(),
            first_outside: range.and_then(|[low, high]| self.first_outside(low, high)),
            moments,
        }
    }

    /// The first NaN or infinite element (index and value); `None` for integer types.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        match self {
            TensorValues::F32(v) => v
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| (i, f64::from(v[i]))),
            TensorValues::F64(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            _ => None,
        }
    }

    /// Bytes of [`TensorValues::write_le_bytes`], without making them.
    pub fn byte_len(&self) -> usize {
        self.len() * self.datatype().size()
    }

    /// Appends the values as little-endian, row-major bytes (the binary tensor extension;
    /// `BOOL` is one byte, 0 or 1) to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.byte_len());
        match self {
            TensorValues::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            TensorValues::U8(v) => out.extend_from_slice(v),
            TensorValues::I8(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorValues::I16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorValues::I32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorValues::I64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorValues::F32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorValues::F64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        }
    }

    /// The values as little-endian, row-major bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        self.write_le_bytes(&mut out);
        out
    }
}

/// Serialises as a flat JSON array in the element type (f32 printed in its own shortest
/// form, so `0.1f32` is `0.1`). Non-finite floats cannot be JSON: callers check first.
impl Serialize for TensorValues<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        each_variant!(self, v => v.serialize(serializer))
    }
}

/// A tract tensor of `shape` straight from little-endian, row-major bytes (the binary
/// tensor extension of the v2 protocol; `BOOL` is one byte, 0 or 1): one copy, into tract's
/// aligned buffer. `Err` says why the bytes do not fit.
pub fn tract_from_le_bytes(
    datatype: DataType,
    shape: &[usize],
    bytes: &[u8],
) -> Result<Tensor, String> {
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let needed = count.and_then(|n| n.checked_mul(datatype.size()));
    if needed != Some(bytes.len()) {
        return Err(format!(
            "{} bytes do not make a {} tensor of shape {shape:?}",
            bytes.len(),
            datatype.name()
        ));
    }
    if datatype == DataType::BOOL {
        if let Some((i, other)) = bytes.iter().enumerate().find(|(_, &b)| b > 1) {
            return Err(format!("BOOL element #{i} is byte {other}, not 0 or 1"));
        }
    }
    // tract's buffer holds elements in the machine's byte order: on a little-endian machine
    // (every target mintd is built for) the wire bytes are the buffer, copied as they are.
    if cfg!(target_endian = "little") && datatype != DataType::FP16 {
        // SAFETY: `from_raw_dt` copies `bytes` into a new buffer of `shape` (it checks the
        // length itself, and it was checked above) and is unsafe only because the bytes must
        // be valid values of the datum type. Every bit pattern is a valid u8, i8, i16, i32,
        // i64, f32 or f64; a bool must be 0 or 1, which was checked above for BOOL.
        return unsafe { Tensor::from_raw_dt(datum_type_of(datatype), shape, bytes) }
            .map_err(|e| format!("{e:#}"));
    }
    TensorData::from_le_bytes(datatype, bytes)?
        .into_tract("", shape)
        .map_err(|e| e.to_string())
}

/// The tract datum type of a v2 datatype.
fn datum_type_of(datatype: DataType) -> DatumType {
    match datatype {
        DataType::BOOL => DatumType::Bool,
        DataType::UINT8 => DatumType::U8,
        DataType::INT8 => DatumType::I8,
        DataType::INT16 => DatumType::I16,
        DataType::INT32 => DatumType::I32,
        DataType::INT64 => DatumType::I64,
        DataType::FP16 => DatumType::F16,
        DataType::FP32 => DatumType::F32,
        DataType::FP64 => DatumType::F64,
    }
}

impl TensorData {
    /// The values, borrowed.
    pub fn values(&self) -> TensorValues<'_> {
        match self {
            TensorData::Bool(v) => TensorValues::Bool(v),
            TensorData::U8(v) => TensorValues::U8(v),
            TensorData::I8(v) => TensorValues::I8(v),
            TensorData::I16(v) => TensorValues::I16(v),
            TensorData::I32(v) => TensorValues::I32(v),
            TensorData::I64(v) => TensorValues::I64(v),
            TensorData::F32(v) => TensorValues::F32(v),
            TensorData::F64(v) => TensorValues::F64(v),
        }
    }

    /// The element type.
    pub fn datatype(&self) -> DataType {
        self.values().datatype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.values().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        each_variant!(self.values(), v => Tensor::from_shape(shape, v).map_err(|_| count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_outside_a_range_is_found_in_every_type() {
        let f = TensorData::F32(vec![0.5, 1.0, 1.5, f32::NAN]);
        assert_eq!(f.values().first_outside(-1.0, 1.0), Some((2, 1.5)));
        let nan = TensorData::F32(vec![0.0, f32::NAN]);
        assert!(matches!(nan.values().first_outside(-1.0, 1.0), Some((1, x)) if x.is_nan()));
        assert_eq!(
            TensorData::U8(vec![0, 9, 10])
                .values()
                .first_outside(0.0, 9.0),
            Some((2, 10.0))
        );
        assert_eq!(
            TensorData::I64(vec![-3, 3])
                .values()
                .first_outside(-3.0, 3.0),
            None
        );
        assert_eq!(
            TensorData::Bool(vec![false, true])
                .values()
                .first_outside(0.0, 0.0),
            Some((1, 1.0))
        );
    }

    #[test]
    fn moments_summed_in_lanes_are_the_sums_for_every_length() {
        for n in 0..=11u32 {
            let values: Vec<f32> = (1..=n).map(|i| i as f32).collect();
            let m = TensorData::F32(values).values().moments();
            let n = u64::from(n);
            assert_eq!(m.count, n);
            // Small integers: every partial sum is exact, whatever the order.
            assert_eq!(m.sum, (n * (n + 1) / 2) as f64, "n = {n}");
            assert_eq!(m.sum_sq, (n * (n + 1) * (2 * n + 1) / 6) as f64, "n = {n}");
        }
        let m = TensorData::Bool(vec![true, false, true, true, true])
            .values()
            .moments();
        assert_eq!((m.count, m.sum, m.sum_sq), (5, 4.0, 4.0));
        let m = TensorData::I64(vec![-3, 4, -5, 6, 7, -8, 9])
            .values()
            .moments();
        assert_eq!((m.sum, m.sum_sq), (10.0, 280.0));
    }

    #[test]
    fn one_survey_finds_what_the_three_passes_find() {
        let cases = [
            TensorData::F32(vec![]),
            TensorData::F32(vec![0.5, -1.0, 2.0]),
            TensorData::F32(vec![0.0, 3.0, f32::NAN, -7.0, f32::INFINITY]),
            TensorData::F32(vec![f32::NEG_INFINITY, 0.25]),
            TensorData::F64(vec![1e300, f64::NAN, -2.0]),
            TensorData::I64(vec![-3, 3, 4, i64::MIN]),
            TensorData::U8(vec![0, 9, 10]),
            TensorData::Bool(vec![false, true, true]),
        ];
        for data in &cases {
            let v = data.values();
            for range in [
                None,
                Some([-1.0, 1.0]),
                Some([0.0, 9.0]),
                Some([-3.0, 3.0]),
                Some([f64::NEG_INFINITY, f64::INFINITY]),
                Some([f64::NAN, 1.0]),
            ] {
                let s = v.survey(range);
                let same = |a: Option<(usize, f64)>, b: Option<(usize, f64)>| match (a, b) {
                    (Some((i, x)), Some((j, y))) => {
                        i == j && (x == y || (x.is_nan() && y.is_nan()))
                    }
                    (None, None) => true,
                    _ => false,
                };
                assert!(
                    same(s.first_non_finite, v.first_non_finite()),
                    "{data:?} {range:?}"
                );
                let outside = range.and_then(|[l, h]| v.first_outside(l, h));
                assert!(same(s.first_outside, outside), "{data:?} {range:?}");
                let m = v.moments();
                assert_eq!(s.moments.count, m.count);
                assert!(
                    s.moments.sum.to_bits() == m.sum.to_bits()
                        || (s.moments.sum.is_nan() && m.sum.is_nan()),
                    "{data:?}"
                );
                assert!(
                    s.moments.sum_sq.to_bits() == m.sum_sq.to_bits()
                        || (s.moments.sum_sq.is_nan() && m.sum_sq.is_nan()),
                    "{data:?}"
                );
            }
        }
        let s = TensorData::F32(vec![5.0, f32::NAN])
            .values()
            .survey(Some([0.0, 1.0]));
        assert_eq!(s.first_outside, Some((0, 5.0)));
        assert!(matches!(s.first_non_finite, Some((1, x)) if x.is_nan()));
    }

    #[test]
    fn little_endian_bytes_round_trip_and_their_length_is_known_beforehand() {
        for data in [
            TensorData::F32(vec![1.5, -2.0]),
            TensorData::I16(vec![-1, 300]),
            TensorData::Bool(vec![true, false, true]),
            TensorData::F64(vec![0.1]),
        ] {
            let bytes = data.values().to_le_bytes();
            assert_eq!(bytes.len(), data.values().byte_len());
            assert_eq!(
                TensorData::from_le_bytes(data.datatype(), &bytes).unwrap(),
                data
            );
            let mut appended = vec![7u8];
            data.values().write_le_bytes(&mut appended);
            assert_eq!(&appended[1..], &bytes[..]);
        }
    }

    #[test]
    fn tract_tensors_carry_the_same_values_both_ways() {
        let data = TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let tensor = data.clone().into_tract("x", &[2, 3]).unwrap();
        assert_eq!(tensor.shape(), &[2, 3]);
        assert_eq!(
            TensorValues::of_tract("x", &tensor).unwrap(),
            TensorValues::F32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert!(data.into_tract("x", &[4, 2]).is_err());
    }

    #[test]
    fn wire_bytes_become_a_tract_tensor_in_one_copy_with_the_decoders_answers() {
        let cases = [
            TensorData::F32(vec![1.5, -2.0, f32::MIN_POSITIVE, 0.0, -0.0, 7.25]),
            TensorData::F64(vec![0.1, -1e300]),
            TensorData::I64(vec![i64::MIN, -1, 0, i64::MAX]),
            TensorData::I32(vec![-5, 5]),
            TensorData::I16(vec![-1, 300]),
            TensorData::I8(vec![-128, 127]),
            TensorData::U8(vec![0, 255]),
            TensorData::Bool(vec![true, false]),
        ];
        for data in cases {
            let bytes = data.values().to_le_bytes();
            let shape = [1, data.len()];
            let tensor = tract_from_le_bytes(data.datatype(), &shape, &bytes).unwrap();
            assert_eq!(tensor.shape(), &shape);
            assert_eq!(tensor, data.clone().into_tract("x", &shape).unwrap());
            assert_eq!(TensorValues::of_tract("x", &tensor).unwrap(), data.values());
        }
        let e = tract_from_le_bytes(DataType::BOOL, &[3], &[0, 1, 2]).unwrap_err();
        assert_eq!(e, "BOOL element #2 is byte 2, not 0 or 1");
        let e = tract_from_le_bytes(DataType::FP32, &[2, 2], &[0; 12]).unwrap_err();
        assert_eq!(e, "12 bytes do not make a FP32 tensor of shape [2, 2]");
        let e = tract_from_le_bytes(DataType::FP32, &[usize::MAX, 2], &[0; 8]).unwrap_err();
        assert!(e.starts_with("8 bytes do not make"), "{e}");
        let e = tract_from_le_bytes(DataType::FP16, &[1], &[0; 2]).unwrap_err();
        assert_eq!(e, "FP16 tensors are not supported");
    }
}
