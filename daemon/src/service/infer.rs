//! `POST /v2/models/{name}/infer`: one inference, Open Inference Protocol v2 (KServe v2) JSON,
//! plus the binary tensor data extension that tritonclient uses by default.
//!
//! The wire format (parsed by [`parse_request`], written by [`encode_response`]):
//!
//! - JSON: `{"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "data"}],
//!   "outputs"?: [{"name", "parameters"?}]}` answered by `{"model_name", "model_version",
//!   "id"?, "outputs": [{"name", "datatype", "shape", "data"}]}`. `data` may be flat or nested.
//! - Binary extension: an `Inference-Header-Content-Length: N` header says the first N bytes
//!   of the body are the JSON; the rest is the raw little-endian data of the inputs that carry
//!   `"parameters": {"binary_data_size": S}`, in input order, with nothing left over. An output
//!   is answered in binary when it asks `"parameters": {"binary_data": true}` or the request
//!   asks `"parameters": {"binary_data_output": true}` (an output's own setting wins); the
//!   answer then has the same framing.
//!
//! The order of the guard ([`super::guard`]): model served (404) → rate limit (429) → body
//! size (413) → a slot or a place in the queue (503), within the deadline (504) → on the
//! engine's thread: parse (400), inputs against the signed manifest (400), engine (500, a
//! panic included), output sanity (500). Engine failures, non-finite outputs and deadlines
//! passed while the engine ran count as errors of the model's trial; refusals do not.
//!
//! The engine's thread ([`RunThread`]): the async worker that read the request for a model
//! within `api.inline_max_us`; the request's own thread, after it left the async workers, for
//! a fixed-shape model whose typical run fits the deadline `api.in_place_runs` times; the
//! blocking pool otherwise (a model not measured yet, a free batch, a slow model).
//!
//! The body must arrive within `api.request_timeout_ms` (408). The deadline, the smaller of
//! `api.request_timeout_ms` and the manifest's `guard.timeout_ms`, counts from the whole body
//! having arrived and covers the wait for a slot, parsing, the checks and the engine. The
//! engine cannot be interrupted: on the blocking pool, after a 504 it finishes on its thread,
//! keeping its slot until then, so timed-out requests never pile up beyond
//! `api.max_concurrency`; on the request's own thread, a run that overran is answered 504
//! when it ends, and its time sends the model's next requests to the pool.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::api::AppState;
use super::drift::{DriftMonitor, Side};
use super::guard::{self, Reason, Refusal};
use super::metrics::{RunThread, Served};
use super::peer::Caller;
use super::registry::LoadedModel;
use crate::tensor::{Moments, TensorError, TensorValues};
use tract_onnx::prelude::{TValue, TVec};

/// The header of the binary tensor data extension: the length of the JSON part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Largest JSON part of a request (the whole body without the binary extension). JSON
/// numbers cost far more memory parsed than binary data; large tensors should go binary.
pub const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

type Reply = Response<Full<Bytes>>;

/// One value of a tensor's JSON `data`, before the datatype is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer (or any integer serde_json reads as i64).
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// `null`.
    Null,
    /// A string (no datatype here takes strings).
    Text,
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(x) => write!(f, "{x}"),
            Scalar::UInt(x) => write!(f, "{x}"),
            Scalar::Float(x) => write!(f, "{x:?}"),
            Scalar::Null => f.write_str("null"),
            Scalar::Text => f.write_str("a string"),
        }
    }
}

/// Where an input's values are.
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    /// In the JSON `data` (flattened).
    Json(Vec<Scalar>),
    /// In the binary part of the body.
    Binary(Bytes),
}

/// One input of a request, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInput {
    /// Name.
    pub name: String,
    /// Datatype as sent (`FP32`, ...).
    pub datatype: String,
    /// Shape as sent.
    pub shape: Vec<i64>,
    /// Values.
    pub data: InputData,
}

/// One output a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    /// Name.
    pub name: String,
    /// `parameters.binary_data`, if given.
    pub binary: Option<bool>,
}

/// A parsed inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed.
    pub id: Option<String>,
    /// `model_name` in the body, if any (must be the model of the path).
    pub model_name: Option<String>,
    /// Inputs in request order.
    pub inputs: Vec<RequestInput>,
    /// Outputs asked for (`None`: all, in the model's order).
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.binary_data_output` of the request.
    pub binary_output: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    model_version: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireInput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    data: Option<FlatData>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// The `parameters` object of a request, an input or an output: the keys this server reads or
/// refuses, kept as sent; every other key is skipped unread (no map is built).
#[derive(Default)]
struct Parameters {
    binary_data_size: Option<Value>,
    binary_data: Option<Value>,
    binary_data_output: Option<Value>,
    /// A key of an extension this server refuses (`shared_memory_region`, `classification`).
    refused: Option<&'static str>,
}

impl Parameters {
    fn get(&self, key: &str) -> Option<&Value> {
        match key {
            "binary_data_size" => self.binary_data_size.as_ref(),
            "binary_data" => self.binary_data.as_ref(),
            "binary_data_output" => self.binary_data_output.as_ref(),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        enum Key {
            BinaryDataSize,
            BinaryData,
            BinaryDataOutput,
            Refused(&'static str),
            Other,
        }
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct KeyVisitor;
                impl Visitor<'_> for KeyVisitor {
                    type Value = Key;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a parameter name")
                    }
                    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                        Ok(match key {
                            "binary_data_size" => Key::BinaryDataSize,
                            "binary_data" => Key::BinaryData,
                            "binary_data_output" => Key::BinaryDataOutput,
                            "shared_memory_region" => Key::Refused("shared_memory_region"),
                            "classification" => Key::Refused("classification"),
                            _ => Key::Other,
                        })
                    }
                }
                deserializer.deserialize_str(KeyVisitor)
            }
        }
        struct Params;
        impl<'de> Visitor<'de> for Params {
            type Value = Parameters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of parameters")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Parameters, A::Error> {
                let mut p = Parameters::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::BinaryDataSize => p.binary_data_size = Some(map.next_value()?),
                        Key::BinaryData => p.binary_data = Some(map.next_value()?),
                        Key::BinaryDataOutput => p.binary_data_output = Some(map.next_value()?),
                        Key::Refused(name) => {
                            map.next_value::<de::IgnoredAny>()?;
                            p.refused.get_or_insert(name);
                        }
                        Key::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        deserializer.deserialize_map(Params)
    }
}

/// `data`: an array, nested arrays flattened row-major into compact scalars (no
/// `serde_json::Value` per element).
struct FlatData(Vec<Scalar>);

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = FlatData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlatData, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while seq.next_element_seed(Flatten(&mut out))?.is_some() {}
                Ok(FlatData(out))
            }
        }
        deserializer.deserialize_seq(Top)
    }
}

struct Flatten<'a>(&'a mut Vec<Scalar>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a boolean or an array of them")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Scalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Scalar::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Scalar::UInt(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Scalar::Float(v));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push(Scalar::Null);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.0.push(Scalar::Text);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(self.0))?.is_some() {}
        Ok(())
    }
}

fn malformed(message: String) -> Refusal {
    Refusal::new(Reason::Malformed, message)
}

/// "input \"x\"" in a message, written only when a message is.
#[derive(Clone, Copy)]
struct Named<'a>(&'static str, &'a str);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.0, self.1)
    }
}

/// A boolean parameter, or `Err` naming it.
fn bool_param(
    params: Option<&Parameters>,
    key: &str,
    what: impl fmt::Display,
) -> Result<Option<bool>, Refusal> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(malformed(format!(
            "{what}: parameter {key} must be true or false, not {other}"
        ))),
    }
}

/// Refuses the v2 extensions this server does not implement rather than ignoring them (an
/// ignored `classification` would answer something else than what was asked).
fn unsupported(params: Option<&Parameters>, what: impl fmt::Display) -> Result<(), Refusal> {
    match params.and_then(|p| p.refused) {
        None => Ok(()),
        Some(key) => {
            let extension = match key {
                "shared_memory_region" => "shared memory",
                other => other,
            };
            Err(malformed(format!(
                "{what}: parameter {key}: the {extension} extension is not supported"
            )))
        }
    }
}

/// Parses a request body. `header_length` is the `Inference-Header-Content-Length` header
/// (binary extension); `json_limit` bounds the JSON part.
pub fn parse_request(
    body: Bytes,
    header_length: Option<&str>,
    json_limit: usize,
) -> Result<InferRequest, Refusal> {
    let (json, mut binary) = match header_length {
        None => (body, Bytes::new()),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| {
                malformed(format!(
                    "Inference-Header-Content-Length {text:?} is not a byte count"
                ))
            })?;
            if n > body.len() {
                return Err(malformed(format!(
                    "Inference-Header-Content-Length says the JSON header is {n} bytes but the \
                     whole body is only {} bytes",
                    body.len()
                )));
            }
            (body.slice(..n), body.slice(n..))
        }
    };
    if json.len() > json_limit {
        return Err(Refusal::new(
            Reason::HeaderTooLarge,
            format!(
                "the JSON part of the request is {} bytes, above the limit of {json_limit} (send \
                 large tensors with the binary tensor extension)",
                json.len()
            ),
        ));
    }
    let wire: WireRequest = serde_json::from_slice(&json).map_err(|e| {
        let hint = if [&b"NaN"[..], b"Infinity"]
            .iter()
            .any(|t| json.windows(t.len()).any(|w| w == *t))
        {
            " (NaN and Infinity are not JSON numbers, and non-finite inputs are refused anyway)"
        } else {
            ""
        };
        malformed(format!("not a valid v2 inference request: {e}{hint}"))
    })?;
    let binary_output =
        bool_param(wire.parameters.as_ref(), "binary_data_output", "request")?.unwrap_or(false);
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for input in wire.inputs {
        let what = Named("input", &input.name);
        unsupported(input.parameters.as_ref(), what)?;
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                malformed(format!(
                    "{what}: binary_data_size must be a byte count, not {v}"
                ))
            })?),
        };
        let data = match (input.data, binary_size) {
            (Some(_), Some(_)) => {
                return Err(malformed(format!(
                    "{what} has both data and binary_data_size"
                )))
            }
            (Some(FlatData(values)), None) => InputData::Json(values),
            (None, Some(size)) => {
                if header_length.is_none() {
                    return Err(malformed(format!(
                        "{what} has binary_data_size but the request has no \
                         Inference-Header-Content-Length header"
                    )));
                }
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(malformed(format!(
                        "{what}: binary_data_size is {size} but only {} bytes of binary data are \
                         left (Inference-Header-Content-Length or binary_data_size is wrong)",
                        binary.len()
                    )));
                }
                InputData::Binary(binary.split_to(size))
            }
            (None, None) => {
                return Err(malformed(format!(
                    "{what} has no data (neither data nor parameters.binary_data_size)"
                )))
            }
        };
        inputs.push(RequestInput {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(malformed(format!(
            "{} bytes of binary data after the JSON header belong to no input (the \
             Inference-Header-Content-Length header and the binary_data_size parameters do not \
             add up to the body)",
            binary.len()
        )));
    }
    let outputs = match wire.outputs {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|o| {
                    let what = Named("output", &o.name);
                    let params = o.parameters.as_ref();
                    unsupported(params, what)?;
                    // `binary_data` is the extension's name; `binary_data_output` on an output is
                    // accepted too (some clients send the request-level name).
                    let binary = match bool_param(params, "binary_data", what)? {
                        Some(b) => Some(b),
                        None => bool_param(params, "binary_data_output", what)?,
                    };
                    Ok(RequestedOutput {
                        name: o.name,
                        binary,
                    })
                })
                .collect::<Result<Vec<_>, Refusal>>()?,
        ),
    };
    Ok(InferRequest {
        id: wire.id,
        model_name: wire.model_name,
        inputs,
        outputs,
        binary_output,
    })
}

/// One output of an answer, borrowed from what the model produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseOutput<'a> {
    /// Name.
    pub name: &'a str,
    /// Shape.
    pub shape: &'a [usize],
    /// Values.
    pub data: TensorValues<'a>,
    /// Sent in the binary part.
    pub binary: bool,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<WireResponseOutput<'a>>,
}

#[derive(Serialize)]
struct WireResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<TensorValues<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// An encoded answer: the body, and the length of its JSON part when binary data follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The body.
    pub body: Vec<u8>,
    /// `Inference-Header-Content-Length`, when any output is binary.
    pub header_length: Option<usize>,
}

/// Writes the answer: JSON, then the binary outputs' bytes in output order.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[ResponseOutput],
) -> Encoded {
    let wire = WireResponse {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|o| WireResponseOutput {
                name: o.name,
                datatype: o.data.datatype().name(),
                shape: o.shape,
                parameters: o.binary.then(|| BinaryParameters {
                    binary_data_size: o.data.byte_len(),
                }),
                data: (!o.binary).then_some(o.data),
            })
            .collect(),
    };
    let binary: usize = outputs
        .iter()
        .filter(|o| o.binary)
        .map(|o| o.data.byte_len())
        .sum();
    let mut body = Vec::with_capacity(256 + binary);
    serde_json::to_writer(&mut body, &wire).expect("a response of plain values serialises");
    let header_length = outputs.iter().any(|o| o.binary).then_some(body.len());
    for o in outputs.iter().filter(|o| o.binary) {
        o.data.write_le_bytes(&mut body);
    }
    Encoded {
        body,
        header_length,
    }
}

/// Handles `POST /v2/models/{name}/infer` (and `/versions/{version}/infer` when `version`
/// is the one served); counts the outcome for the model's trial.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
    caller: Caller,
    name: &str,
    version: Option<&str>,
) -> Reply {
    let received = std::time::Instant::now();
    let served = state.registry.get(name);
    if let Some(m) = &served {
        let r = &m.installed;
        state
            .drift
            .request(name, &r.manifest.version, &r.rev.digest, received);
    }
    let outcome = infer(req, &state, caller, name, version, served.clone()).await;
    state.metrics.record(
        served.as_ref().map(|m| Served {
            model: name,
            version: &m.installed.manifest.version,
            digest: &m.installed.rev.digest,
        }),
        match &outcome {
            Ok(_) => Ok(received.elapsed()),
            Err(r) => Err(r.reason),
        },
    );
    let counted = match &outcome {
        Ok(_) => Some(true),
        Err(r) if r.reason.is_model_fault() => Some(false),
        Err(_) => None,
    };
    // Only a model on trial counts (a read lock to know): the steady state skips the hop to
    // a blocking thread, which costs more than the rest of a small model's request.
    if let Some(ok) = counted.filter(|_| state.updater.on_trial(name)) {
        // May commit or roll back a trial (durable writes): not on an async worker.
        let updater = state.updater.clone();
        let model = name.to_owned();
        let _ = tokio::task::spawn_blocking(move || updater.record_request(&model, ok)).await;
    }
    match outcome {
        Ok(encoded) => {
            let mut reply = Response::builder().status(StatusCode::OK);
            reply = match encoded.header_length {
                Some(n) => reply
                    .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                    .header(HEADER_LENGTH, n),
                None => reply.header(hyper::header::CONTENT_TYPE, "application/json"),
            };
            reply
                .body(Full::new(Bytes::from(encoded.body)))
                .expect("static response parts are valid")
        }
        Err(refusal) => {
            let level_warn = refusal.reason.is_model_fault();
            if level_warn {
                tracing::warn!(model = name, %caller, reason = refusal.reason.name(), error = %refusal.message, "inference failed");
            } else {
                tracing::debug!(model = name, %caller, reason = refusal.reason.name(), error = %refusal.message, "inference refused");
            }
            refusal_reply(&refusal)
        }
    }
}

/// `{"error": ..., "reason": ...}` with the refusal's status (and `Retry-After`).
pub fn refusal_reply(refusal: &Refusal) -> Reply {
    let body = serde_json::json!({"error": refusal.message, "reason": refusal.reason.name()});
    let mut reply = Response::builder()
        .status(refusal.reason.status())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(wait) = refusal.retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        reply = reply.header(hyper::header::RETRY_AFTER, secs.max(1));
    }
    reply
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

async fn infer(
    req: Request<Incoming>,
    state: &AppState,
    caller: Caller,
    name: &str,
    version: Option<&str>,
    served: Option<Arc<LoadedModel>>,
) -> Result<Encoded, Refusal> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(Refusal::new(Reason::NotReady, "mintd is starting"));
    }
    // Looked up once by the caller: the revision counted in the metrics is the one that runs.
    let model = served.ok_or_else(|| {
        Refusal::new(
            Reason::UnknownModel,
            format!("model {name:?} is not served"),
        )
    })?;
    let manifest = &model.installed.manifest;
    if let Some(v) = version {
        if v != manifest.version {
            return Err(Refusal::new(
                Reason::UnknownModel,
                format!(
                    "model {name:?} version {v:?} is not served (version {:?} is)",
                    manifest.version
                ),
            ));
        }
    }
    let api = &state.config.api;
    state.guards.rate.check(
        caller.rate_key(),
        name,
        api.rate_limit_per_sec,
        manifest.guard.rate_limit_per_sec,
        std::time::Instant::now(),
    )?;
    let headers = req.headers();
    if let Some(encoding) = headers.get(hyper::header::CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(malformed(format!(
                "Content-Encoding {} is not supported: send the body uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            )));
        }
    }
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| malformed("Inference-Header-Content-Length is not text".into()))?
                .to_owned(),
        ),
    };
    let body = read_body(
        req.into_body(),
        api.max_body_bytes,
        Duration::from_millis(api.request_timeout_ms),
    )
    .await?;

    // The deadline counts from the whole request being here: a slow upload is bounded above.
    let budget = guard::deadline(api.request_timeout_ms, manifest.guard.timeout_ms);
    let deadline = tokio::time::Instant::now() + budget;
    let permit = state.guards.admission.admit(deadline, budget).await?;
    let json_limit = MAX_JSON_BYTES.min(usize::try_from(api.max_body_bytes).unwrap_or(usize::MAX));
    let thread = if runs_inline(&model, api.inline_max_us, body.len()) {
        RunThread::Inline
    } else if runs_in_place(&model, api.in_place_runs, budget) {
        RunThread::InPlace
    } else {
        RunThread::Blocking
    };
    state.metrics.count_run(thread);
    if thread != RunThread::Blocking {
        // A small model on a small body runs here: that costs less than the two thread
        // hand-offs of the blocking pool. A larger model well within its deadline runs on this
        // thread too, after it leaves the async workers (tokio's `block_in_place` hands the
        // worker's queue to another thread): the request then has no hand-off to the pool and
        // back on its way. The slot is held for the run like on the pool.
        let _permit = permit;
        // The parse and the run, a panic contained: the outer `Err` is the panic's refusal.
        let here = || {
            let started = AtomicBool::new(false);
            guard::contain_panic(|| {
                let request = parse_request(body, header_length.as_deref(), json_limit)?;
                run(
                    &model,
                    name,
                    request,
                    deadline.into_std(),
                    budget,
                    &started,
                    &state.drift,
                )
            })
            .map_err(|panic| {
                Refusal::new(
                    Reason::Engine,
                    format!("the inference task panicked: {panic}"),
                )
            })
        };
        let outcome = if thread == RunThread::Inline {
            here()
        } else {
            tokio::task::block_in_place(here)
        }?;
        // Nothing can interrupt a run on this thread: an answer that comes late is refused
        // as it would be from the pool, and the run's time already raised the model's typical
        // run, which sends its next requests to the pool when it nears the deadline.
        return match outcome {
            Ok(_) if tokio::time::Instant::now() > deadline => Err(deadline_refusal(
                Reason::DeadlineRunning,
                "while the model ran",
                budget,
            )),
            other => other,
        };
    }
    let started = Arc::new(AtomicBool::new(false));
    let task = {
        let model = model.clone();
        let name = name.to_owned();
        let started = started.clone();
        let deadline = deadline.into_std();
        let drift = state.drift.clone();
        tokio::task::spawn_blocking(move || {
            // The slot stays taken until the engine is done, even if the client gave up.
            let _permit = permit;
            let request = parse_request(body, header_length.as_deref(), json_limit)?;
            run(&model, &name, request, deadline, budget, &started, &drift)
        })
    };
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Refusal::new(
            Reason::Engine,
            format!("the inference task failed: {join}"),
        )),
        Err(_) => {
            let (reason, when) = if started.load(Ordering::Acquire) {
                (Reason::DeadlineRunning, "while the model ran")
            } else {
                (Reason::DeadlineWaiting, "before the model ran")
            };
            Err(deadline_refusal(reason, when, budget))
        }
    }
}

/// Whether a request that does not run inline leaves the async workers and runs on its own
/// thread: `runs` (`api.in_place_runs`) is not 0, the runtime has several workers
/// (`block_in_place` needs them), the model's inputs have fixed shapes (a free batch would let
/// one request take many typical runs), and its typical run is known and fits `runs` times in
/// the deadline. Otherwise the blocking pool, where a run that overruns is answered 504 at the
/// deadline itself.
fn runs_in_place(model: &LoadedModel, runs: u32, budget: Duration) -> bool {
    runs > 0
        && tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        && model.engine.fixed_input_shapes()
        && model
            .engine
            .typical_run()
            .is_some_and(|t| t.saturating_mul(runs) <= budget)
}

/// Largest body parsed and run on the async worker: parsing it takes microseconds.
const INLINE_MAX_BODY: usize = 64 * 1024;

/// Whether a request runs on the async worker that read it: the model's typical run is
/// known and within `inline_max_us` (0 = never), and the body is small.
fn runs_inline(model: &LoadedModel, inline_max_us: u64, body_len: usize) -> bool {
    inline_max_us > 0
        && body_len <= INLINE_MAX_BODY
        && model
            .engine
            .typical_run()
            .is_some_and(|t| t <= Duration::from_micros(inline_max_us))
}

fn deadline_refusal(reason: Reason, when: &str, budget: Duration) -> Refusal {
    Refusal::new(
        reason,
        format!(
            "deadline of {} ms passed {when} (api.request_timeout_ms, the model's \
             guard.timeout_ms)",
            budget.as_millis()
        ),
    )
}

/// One output as the model produced it: its name (the model's) and tract's value, which
/// the answer is encoded from without a copy.
#[derive(Debug)]
pub struct Produced<'m> {
    /// Output name.
    pub name: &'m str,
    /// Shape and values.
    pub tensor: TValue,
}

impl Produced<'_> {
    /// The values, borrowed from the tensor (`Err` for an element type without a v2
    /// datatype).
    pub fn values(&self) -> Result<TensorValues<'_>, TensorError> {
        TensorValues::of_tract(self.name, &self.tensor)
    }
}

/// On the blocking pool (or inline for a small model): the request checked against what the
/// operator signed, the guarded run, the encoded answer. Public for the inference benchmark,
/// which runs [`parse_request`] and this on its own thread: the endpoint without the HTTP and
/// async parts.
pub fn run(
    model: &LoadedModel,
    name: &str,
    request: InferRequest,
    deadline: std::time::Instant,
    budget: Duration,
    started: &AtomicBool,
    drift: &DriftMonitor,
) -> Result<Encoded, Refusal> {
    if let Some(other) = &request.model_name {
        if other != name {
            return Err(malformed(format!(
                "the request names model {other:?} but was sent to model {name:?}"
            )));
        }
    }
    if let Some(wanted) = &request.outputs {
        guard::check_requested_outputs(&model.installed.manifest.outputs, wanted)?;
    }
    let produced = guarded_run(
        model,
        name,
        &request.inputs,
        deadline,
        budget,
        started,
        drift,
    )?;
    let manifest = &model.installed.manifest;
    let selected: TVec<ResponseOutput> = match &request.outputs {
        None => produced
            .iter()
            .map(|p| response_output(p, request.binary_output))
            .collect::<Result<_, Refusal>>()?,
        Some(wanted) => wanted
            .iter()
            .map(|w| {
                let p = produced.iter().find(|p| p.name == w.name).ok_or_else(|| {
                    Refusal::new(
                        Reason::Engine,
                        format!("the model did not produce output {:?}", w.name),
                    )
                })?;
                response_output(p, w.binary.unwrap_or(request.binary_output))
            })
            .collect::<Result<_, Refusal>>()?,
    };
    Ok(encode_response(
        name,
        &manifest.version,
        request.id.as_deref(),
        &selected,
    ))
}

/// An output in the answer, as the model produced it.
fn response_output<'a>(p: &'a Produced<'_>, binary: bool) -> Result<ResponseOutput<'a>, Refusal> {
    Ok(ResponseOutput {
        name: p.name,
        shape: p.tensor.shape(),
        data: p.values().map_err(model_output)?,
        binary,
    })
}

fn model_output(e: TensorError) -> Refusal {
    Refusal::new(Reason::Engine, format!("model output: {e}"))
}

/// The guard around one run, in process: the inputs (as a client sends them: name,
/// datatype, shape, values) against the signed manifest, the deadline, the engine with
/// panics contained, output sanity, and the drift statistics. Every output of the model,
/// in the model's order. What the endpoint runs between decoding a request and encoding its
/// answer; the inference benchmark compares it with raw tract.
pub fn guarded_run<'m>(
    model: &'m LoadedModel,
    name: &str,
    sent: &[RequestInput],
    deadline: std::time::Instant,
    budget: Duration,
    started: &AtomicBool,
    drift: &DriftMonitor,
) -> Result<TVec<Produced<'m>>, Refusal> {
    let manifest = &model.installed.manifest;
    let mut inputs = guard::check_inputs(&manifest.inputs, &manifest.guard, sent)?;
    let now = std::time::Instant::now();
    if now >= deadline {
        return Err(Refusal::new(
            Reason::DeadlineWaiting,
            format!(
                "deadline of {} ms passed before the model ran",
                budget.as_millis()
            ),
        ));
    }
    // Drift needs the tensors' moments (taken with the checks); only models whose manifest
    // has a reference pay for keeping them.
    let watched = manifest.reference.is_some();
    let mut moments: TVec<(Side, &str, Moments)> = TVec::new();
    if watched {
        moments.extend(inputs.iter().map(|c| (Side::Input, c.name, c.moments)));
    }
    // In the model's order: every name was matched against the manifest, and the manifest's
    // inputs are the model's (checked when the bundle was made and when it was installed).
    let engine = &model.engine;
    let mut ordered = TVec::new();
    for spec in engine.inputs() {
        let at = inputs
            .iter()
            .position(|c| c.name == spec.name)
            .ok_or_else(|| {
                Refusal::new(
                    Reason::Engine,
                    format!("the model's input {:?} is not in its manifest", spec.name),
                )
            })?;
        ordered.push(inputs.swap_remove(at).tensor);
    }
    started.store(true, Ordering::Release);
    let outputs = match guard::contain_panic(|| engine.run_values(ordered, now)) {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(e)) => return Err(Refusal::new(Reason::Engine, e.to_string())),
        Err(panic) => {
            return Err(Refusal::new(
                Reason::Engine,
                format!("the inference engine panicked: {panic}"),
            ))
        }
    };
    // The checks read the outputs in place; the answer is encoded from the same buffers.
    let mut produced: TVec<Produced<'m>> = TVec::with_capacity(outputs.len());
    for (spec, tensor) in engine.outputs().iter().zip(outputs) {
        let output = Produced {
            name: &spec.name,
            tensor,
        };
        let values = output.values().map_err(model_output)?;
        let output_moments = guard::check_output(output.name, values)?;
        if watched {
            moments.push((Side::Output, output.name, output_moments));
        }
        produced.push(output);
    }
    if watched {
        drift.observe(
            name,
            &manifest.version,
            &model.installed.rev.digest,
            manifest.reference.as_ref(),
            &moments,
        );
    }
    Ok(produced)
}

/// The body, within `api.max_body_bytes` (a declared length above it is refused before a
/// byte is read) and within `timeout`.
async fn read_body(body: Incoming, limit: u64, timeout: Duration) -> Result<Bytes, Refusal> {
    let too_large = |what: String| {
        Refusal::new(
            Reason::BodyTooLarge,
            format!("request body {what} is above the limit of {limit} bytes (api.max_body_bytes)"),
        )
    };
    if let Some(declared) = body.size_hint().exact() {
        if declared > limit {
            return Err(too_large(format!("of {declared} bytes")));
        }
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large("of unknown length".into()))
        }
        Ok(Err(e)) => Err(malformed(format!("cannot read the request body: {e}"))),
        Err(_) => Err(Refusal::new(
            Reason::BodyTimeout,
            format!(
                "the request body did not arrive within {} ms (api.request_timeout_ms)",
                timeout.as_millis()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8], header: Option<&str>) -> Result<InferRequest, Refusal> {
        parse_request(Bytes::copy_from_slice(body), header, MAX_JSON_BYTES)
    }

    #[test]
    fn json_request_with_nested_data_and_outputs() {
        let r = parse(
            br#"{"id":"42","inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[[1,2.5],[-3,true]]}],
                "outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("42"));
        assert_eq!(
            r.inputs[0].data,
            InputData::Json(vec![
                Scalar::UInt(1),
                Scalar::Float(2.5),
                Scalar::Int(-3),
                Scalar::Bool(true)
            ])
        );
        let outputs = r.outputs.unwrap();
        assert_eq!(outputs[0].binary, Some(true));
        assert_eq!(outputs[1].binary, None);
        assert!(!r.binary_output);
    }

    #[test]
    fn malformed_json_is_refused_with_the_parser_position() {
        let e = parse(b"{\"inputs\": [", None).unwrap_err();
        assert_eq!(e.reason, Reason::Malformed);
        assert!(
            e.message.starts_with("not a valid v2 inference request: "),
            "{}",
            e.message
        );
        let e = parse(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[NaN]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(
            e.message.contains("NaN and Infinity are not JSON numbers"),
            "{}",
            e.message
        );
        let e = parse(br#"{"input":[]}"#, None).unwrap_err();
        assert!(e.message.contains("unknown field `input`"), "{}", e.message);
        let e = parse(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "input \"x\" has no data (neither data nor parameters.binary_data_size)"
        );
        let e = parse(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":5}]}"#,
            None,
        )
        .unwrap_err();
        assert!(
            e.message.contains("expected an array of values"),
            "{}",
            e.message
        );
        let e = parse(
            br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "output \"y\": parameter classification: the classification extension is not supported"
        );
    }

    fn binary_body(json: &str, data: &[u8]) -> (Vec<u8>, String) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(data);
        (body, json.len().to_string())
    }

    #[test]
    fn binary_inputs_are_cut_from_the_body_in_order() {
        let json = r#"{"inputs":[{"name":"a","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},
            {"name":"b","datatype":"INT64","shape":[1],"data":[7]},
            {"name":"c","datatype":"BOOL","shape":[3],"parameters":{"binary_data_size":3}}],
            "parameters":{"binary_data_output":true}}"#;
        let mut data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        data.extend_from_slice(&[1, 0, 1]);
        let (body, len) = binary_body(json, &data);
        let r = parse(&body, Some(&len)).unwrap();
        assert!(r.binary_output);
        assert_eq!(
            r.inputs[0].data,
            InputData::Binary(Bytes::copy_from_slice(&data[..8]))
        );
        assert_eq!(r.inputs[1].data, InputData::Json(vec![Scalar::UInt(7)]));
        assert_eq!(
            r.inputs[2].data,
            InputData::Binary(Bytes::copy_from_slice(&[1, 0, 1]))
        );
    }

    #[test]
    fn binary_framing_that_lies_is_refused_naming_the_problem() {
        let json = r#"{"inputs":[{"name":"a","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#;
        let data = [0u8; 8];
        let (body, len) = binary_body(json, &data);
        // Header longer than the body.
        let e = parse(&body, Some(&(body.len() + 1).to_string())).unwrap_err();
        assert_eq!(e.reason, Reason::Malformed);
        assert!(
            e.message
                .starts_with("Inference-Header-Content-Length says the JSON header is"),
            "{}",
            e.message
        );
        // Header shorter than the JSON: the JSON is cut.
        let e = parse(&body, Some(&(json.len() - 3).to_string())).unwrap_err();
        assert!(
            e.message.starts_with("not a valid v2 inference request"),
            "{}",
            e.message
        );
        // Not a number.
        let e = parse(&body, Some("lots")).unwrap_err();
        assert_eq!(
            e.message,
            "Inference-Header-Content-Length \"lots\" is not a byte count"
        );
        // Sizes claim more than there is.
        let e = parse(&body[..body.len() - 1], Some(&len)).unwrap_err();
        assert!(
            e.message.contains("binary_data_size is 8 but only 7 bytes"),
            "{}",
            e.message
        );
        // Bytes left over.
        let mut longer = body.clone();
        longer.push(0);
        let e = parse(&longer, Some(&len)).unwrap_err();
        assert!(
            e.message
                .starts_with("1 bytes of binary data after the JSON header belong to no input"),
            "{}",
            e.message
        );
        // Binary data without the header.
        let e = parse(json.as_bytes(), None).unwrap_err();
        assert!(
            e.message
                .contains("no Inference-Header-Content-Length header"),
            "{}",
            e.message
        );
        // Both data and binary.
        let both = r#"{"inputs":[{"name":"a","datatype":"FP32","shape":[1],"data":[1],"parameters":{"binary_data_size":4}}]}"#;
        let (body, len) = binary_body(both, &[0; 4]);
        let e = parse(&body, Some(&len)).unwrap_err();
        assert_eq!(e.message, "input \"a\" has both data and binary_data_size");
    }

    #[test]
    fn the_json_part_is_bounded() {
        let body = br#"{"inputs":[]}"#;
        let e = parse_request(Bytes::copy_from_slice(body), None, 4).unwrap_err();
        assert_eq!(e.reason, Reason::HeaderTooLarge);
        assert_eq!(e.reason.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e
            .message
            .starts_with("the JSON part of the request is 13 bytes, above the limit of 4"));
    }

    #[test]
    fn responses_in_json_and_binary() {
        let outputs = vec![
            ResponseOutput {
                name: "y",
                shape: &[1, 2],
                data: TensorValues::F32(&[0.1, -2.0]),
                binary: false,
            },
            ResponseOutput {
                name: "z",
                shape: &[1],
                data: TensorValues::I64(&[-1]),
                binary: false,
            },
        ];
        let e = encode_response("m", "1.0", Some("7"), &outputs);
        assert_eq!(e.header_length, None);
        assert_eq!(
            String::from_utf8(e.body).unwrap(),
            r#"{"model_name":"m","model_version":"1.0","id":"7","outputs":[{"name":"y","datatype":"FP32","shape":[1,2],"data":[0.1,-2.0]},{"name":"z","datatype":"INT64","shape":[1],"data":[-1]}]}"#
        );
        let mut binary = outputs.clone();
        binary[0].binary = true;
        let e = encode_response("m", "1.0", None, &binary);
        let n = e.header_length.unwrap();
        let json: Value = serde_json::from_slice(&e.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([-1]));
        let tail = &e.body[n..];
        assert_eq!(tail.len(), 8);
        assert_eq!(f32::from_le_bytes(tail[..4].try_into().unwrap()), 0.1);
        assert_eq!(f32::from_le_bytes(tail[4..].try_into().unwrap()), -2.0);
    }

    #[test]
    fn refusals_carry_status_reason_and_retry_after() {
        let mut r = Refusal::new(Reason::RateLimited, "slow down");
        r.retry_after = Some(Duration::from_millis(200));
        let reply = refusal_reply(&r);
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers()[hyper::header::RETRY_AFTER], "1");
    }
}
