//! The inference guard: every check a request passes before and after the engine runs.
//!
//! Pure functions over the signed manifest's specs ([`check_inputs`], [`check_output`],
//! [`check_requested_outputs`], [`deadline`]) and two small pieces of shared state: a per-peer
//! [`RateLimiter`] (token buckets) and the [`Admission`] of requests to a bounded number of
//! inference slots with a bounded queue. [`contain_panic`] turns a panic inside the engine
//! into an error. Every refusal is a [`Refusal`]: an HTTP status, a stable reason name (for
//! logs and telemetry) and a message naming the problem.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use mint_config::Api;
use mint_updater::manifest::{DataType, GuardSettings, TensorSpec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tract_onnx::prelude::{IntoTValue, TValue, TVec, Tensor};

use super::infer::{InputData, RequestInput, RequestedOutput, Scalar};
use crate::tensor::{tract_from_le_bytes, Moments, TensorData, TensorValues};

/// Why a request was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not a v2 inference request (bad JSON, bad framing of the binary extension).
    Malformed,
    /// An input the model does not have, one given twice, or one missing.
    InputName,
    /// An output the model does not have.
    OutputName,
    /// The datatype differs from the manifest's.
    Datatype,
    /// The shape does not fit the manifest's.
    Shape,
    /// The batch dimension is above the manifest's `guard.max_batch`.
    Batch,
    /// The number of values (or bytes) does not match the shape.
    Count,
    /// A value is not representable in the datatype.
    Value,
    /// A NaN or infinite input value.
    NonFinite,
    /// A value outside the manifest's declared range.
    Range,
    /// The body is above `api.max_body_bytes`.
    BodyTooLarge,
    /// The JSON part of the body is above its limit.
    HeaderTooLarge,
    /// The body did not arrive in time.
    BodyTimeout,
    /// No model of that name is served.
    UnknownModel,
    /// The peer sends too fast.
    RateLimited,
    /// Every inference slot is busy and the queue is full.
    QueueFull,
    /// The daemon is starting or stopping.
    NotReady,
    /// The deadline passed before the engine started (waiting for a slot, parsing).
    DeadlineWaiting,
    /// The deadline passed while the engine ran.
    DeadlineRunning,
    /// The engine failed or panicked.
    Engine,
    /// The model produced NaN or infinity.
    NonFiniteOutput,
}

impl Reason {
    /// Every reason, in declaration order (for counters indexed by reason).
    pub const ALL: [Reason; 21] = [
        Reason::Malformed,
        Reason::InputName,
        Reason::OutputName,
        Reason::Datatype,
        Reason::Shape,
        Reason::Batch,
        Reason::Count,
        Reason::Value,
        Reason::NonFinite,
        Reason::Range,
        Reason::BodyTooLarge,
        Reason::HeaderTooLarge,
        Reason::BodyTimeout,
        Reason::UnknownModel,
        Reason::RateLimited,
        Reason::QueueFull,
        Reason::NotReady,
        Reason::DeadlineWaiting,
        Reason::DeadlineRunning,
        Reason::Engine,
        Reason::NonFiniteOutput,
    ];

    /// The HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::Malformed
            | Reason::InputName
            | Reason::OutputName
            | Reason::Datatype
            | Reason::Shape
            | Reason::Batch
            | Reason::Count
            | Reason::Value
            | Reason::NonFinite
            | Reason::Range => StatusCode::BAD_REQUEST,
            Reason::BodyTooLarge | Reason::HeaderTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::UnknownModel => StatusCode::NOT_FOUND,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::QueueFull | Reason::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Reason::DeadlineWaiting | Reason::DeadlineRunning => StatusCode::GATEWAY_TIMEOUT,
            Reason::Engine | Reason::NonFiniteOutput => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable name, in the error body (`"reason"`), logs and telemetry.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::InputName => "input_name",
            Reason::OutputName => "output_name",
            Reason::Datatype => "datatype",
            Reason::Shape => "shape",
            Reason::Batch => "batch",
            Reason::Count => "count",
            Reason::Value => "value",
            Reason::NonFinite => "non_finite",
            Reason::Range => "range",
            Reason::BodyTooLarge => "body_size",
            Reason::HeaderTooLarge => "header_size",
            Reason::BodyTimeout => "body_timeout",
            Reason::UnknownModel => "unknown_model",
            Reason::RateLimited => "rate_limit",
            Reason::QueueFull => "queue_full",
            Reason::NotReady => "not_ready",
            Reason::DeadlineWaiting | Reason::DeadlineRunning => "deadline",
            Reason::Engine => "engine",
            Reason::NonFiniteOutput => "non_finite_output",
        }
    }

    /// Whether the model is to blame (counted as an error of its trial). A refused request is
    /// the client's fault, a full queue or an early deadline the device's load: neither says
    /// anything about the model.
    pub fn is_model_fault(self) -> bool {
        matches!(
            self,
            Reason::Engine | Reason::NonFiniteOutput | Reason::DeadlineRunning
        )
    }
}

/// A refused or failed inference request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// One line naming the problem.
    pub message: String,
    /// For 429 and 503: when trying again makes sense.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// A refusal for `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }
}

fn refuse<T>(reason: Reason, message: String) -> Result<T, Refusal> {
    Err(Refusal::new(reason, message))
}

/// An input that passed every check, ready for the engine: already tract's value, made
/// with one copy of the request's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedInput<'a> {
    /// Input name (the request's).
    pub name: &'a str,
    /// Shape and values.
    pub tensor: TValue,
    /// Count, sum and sum of squares of the values, taken in the same pass as the checks
    /// (for drift detection).
    pub moments: Moments,
}

impl CheckedInput<'_> {
    /// The values, borrowed from the tensor.
    pub fn values(&self) -> TensorValues<'_> {
        checked_view(self.name, &self.tensor)
    }
}

/// The values of an input tensor [`check_input`] made. It is made from a v2 datatype that
/// tract has (FP16 is refused before), into tract's plain buffer: the view cannot fail.
fn checked_view<'t>(name: &str, tensor: &'t Tensor) -> TensorValues<'t> {
    TensorValues::of_tract(name, tensor)
        .expect("a checked input is a plain tensor of a v2 datatype")
}

/// Checks a request's inputs against the manifest's input specs: every input named once,
/// nothing else; then each input's datatype, shape (free dimensions `-1`, the batch at most
/// `guard.max_batch`, no empty dimension), number of values, the values themselves (valid in
/// the datatype, finite, inside the declared range).
pub fn check_inputs<'a>(
    specs: &[TensorSpec],
    guard: &GuardSettings,
    inputs: &'a [RequestInput],
) -> Result<TVec<CheckedInput<'a>>, Refusal> {
    let expected = || {
        specs
            .iter()
            .map(|s| format!("{:?} ({} {:?})", s.name, s.datatype.name(), s.shape))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, input) in inputs.iter().enumerate() {
        if !specs.iter().any(|s| s.name == input.name) {
            return refuse(
                Reason::InputName,
                format!(
                    "unknown input {:?}: the model takes {}",
                    input.name,
                    expected()
                ),
            );
        }
        if inputs[..i].iter().any(|o| o.name == input.name) {
            return refuse(
                Reason::InputName,
                format!("input {:?} is given twice", input.name),
            );
        }
    }
    for spec in specs {
        if !inputs.iter().any(|i| i.name == spec.name) {
            return refuse(
                Reason::InputName,
                format!(
                    "missing input {:?}: the model takes {}",
                    spec.name,
                    expected()
                ),
            );
        }
    }
    let mut checked = TVec::with_capacity(inputs.len());
    for input in inputs {
        let spec = specs
            .iter()
            .find(|s| s.name == input.name)
            .expect("every input name was checked above");
        checked.push(check_input(spec, guard, input)?);
    }
    Ok(checked)
}

fn check_input<'a>(
    spec: &TensorSpec,
    guard: &GuardSettings,
    input: &'a RequestInput,
) -> Result<CheckedInput<'a>, Refusal> {
    let name = &input.name;
    let datatype = match DataType::from_name(&input.datatype) {
        Some(dt) => dt,
        None => {
            return refuse(
                Reason::Datatype,
                format!(
                    "input {name:?}: unknown datatype {:?} (the model takes {})",
                    input.datatype,
                    spec.datatype.name()
                ),
            )
        }
    };
    if datatype != spec.datatype {
        return refuse(
            Reason::Datatype,
            format!(
                "input {name:?} has datatype {} but the model takes {}",
                datatype.name(),
                spec.datatype.name()
            ),
        );
    }
    let shape = check_shape(name, spec, guard.max_batch, &input.shape)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Refusal::new(
                Reason::Count,
                format!("input {name:?}: shape {shape:?} has too many elements"),
            )
        })?;
    let tensor = match &input.data {
        InputData::Json(values) => {
            if values.len() != count {
                return refuse(
                    Reason::Count,
                    format!(
                        "input {name:?}: shape {shape:?} needs {count} values, got {}",
                        values.len()
                    ),
                );
            }
            from_scalars(name, datatype, values)?
                .into_tract(name, &shape)
                .map_err(|e| Refusal::new(Reason::Count, e.to_string()))?
        }
        InputData::Binary(bytes) => {
            let needed = count.checked_mul(datatype.size());
            if needed != Some(bytes.len()) {
                return refuse(
                    Reason::Count,
                    format!(
                        "input {name:?}: shape {shape:?} of {} needs {} bytes of binary data, \
                         binary_data_size is {}",
                        datatype.name(),
                        needed.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string()),
                        bytes.len()
                    ),
                );
            }
            tract_from_le_bytes(datatype, &shape, bytes)
                .map_err(|e| Refusal::new(Reason::Value, format!("input {name:?}: {e}")))?
        }
    };
    let survey = checked_view(name, &tensor).survey(spec.range);
    if let Some((index, value)) = survey.first_non_finite {
        return refuse(
            Reason::NonFinite,
            format!(
                "input {name:?}: value #{index} is {value}; NaN and infinite values are refused"
            ),
        );
    }
    if let (Some([low, high]), Some((index, value))) = (spec.range, survey.first_outside) {
        return refuse(
            Reason::Range,
            format!(
                "input {name:?}: value #{index} = {value:?} is outside the declared range \
                 [{low}, {high}]"
            ),
        );
    }
    Ok(CheckedInput {
        name: &input.name,
        tensor: tensor.into_tvalue(),
        moments: survey.moments,
    })
}

/// The shape of an input against its spec: same rank, fixed dimensions equal, no negative or
/// empty dimension, a free first dimension (the batch) at most `max_batch` (0: no limit).
fn check_shape(
    name: &str,
    spec: &TensorSpec,
    max_batch: u32,
    shape: &[i64],
) -> Result<TVec<usize>, Refusal> {
    let mismatch = || {
        Refusal::new(
            Reason::Shape,
            format!(
                "input {name:?} has shape {shape:?} but the model takes {:?} (-1: any size)",
                spec.shape
            ),
        )
    };
    if shape.len() != spec.shape.len() {
        return Err(mismatch());
    }
    let mut out = TVec::with_capacity(shape.len());
    for (axis, (&got, &want)) in shape.iter().zip(&spec.shape).enumerate() {
        if got <= 0 {
            return refuse(
                Reason::Shape,
                format!(
                    "input {name:?}: dimension {axis} of shape {shape:?} is {got}; every \
                     dimension must be at least 1"
                ),
            );
        }
        if want >= 0 && got != want {
            return Err(mismatch());
        }
        if axis == 0 && want < 0 && max_batch > 0 && got > i64::from(max_batch) {
            return refuse(
                Reason::Batch,
                format!(
                    "input {name:?}: batch of {got} is above the model's max_batch of {max_batch}"
                ),
            );
        }
        out.push(usize::try_from(got).map_err(|_| mismatch())?);
    }
    Ok(out)
}

/// JSON values in the input's datatype; integers must be integers in range, floats may be
/// written as integers, booleans only as `true`/`false`.
fn from_scalars(name: &str, datatype: DataType, values: &[Scalar]) -> Result<TensorData, Refusal> {
    let bad = |index: usize| {
        Refusal::new(
            Reason::Value,
            format!(
                "input {name:?}: value #{index} ({}) is not a valid {}",
                values[index],
                datatype.name()
            ),
        )
    };
    macro_rules! ints {
        ($t:ty, $variant:ident) => {{
            let mut out = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let x = match *v {
                    Scalar::Int(x) => <$t>::try_from(x).ok(),
                    Scalar::UInt(x) => <$t>::try_from(x).ok(),
                    _ => None,
                };
                out.push(x.ok_or_else(|| bad(i))?);
            }
            TensorData::$variant(out)
        }};
    }
    let as_f64 = |i: usize| match values[i] {
        Scalar::Int(x) => Ok(x as f64),
        Scalar::UInt(x) => Ok(x as f64),
        Scalar::Float(x) => Ok(x),
        _ => Err(bad(i)),
    };
    Ok(match datatype {
        DataType::BOOL => {
            let mut out = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                match *v {
                    Scalar::Bool(b) => out.push(b),
                    _ => return Err(bad(i)),
                }
            }
            TensorData::Bool(out)
        }
        DataType::UINT8 => ints!(u8, U8),
        DataType::INT8 => ints!(i8, I8),
        DataType::INT16 => ints!(i16, I16),
        DataType::INT32 => ints!(i32, I32),
        DataType::INT64 => ints!(i64, I64),
        DataType::FP32 => {
            let mut out = Vec::with_capacity(values.len());
            for i in 0..values.len() {
                let x = as_f64(i)?;
                let narrow = x as f32;
                if x.is_finite() && !narrow.is_finite() {
                    return refuse(
                        Reason::NonFinite,
                        format!(
                            "input {name:?}: value #{i} ({x:?}) overflows FP32 to infinity; NaN \
                             and infinite values are refused"
                        ),
                    );
                }
                out.push(narrow);
            }
            TensorData::F32(out)
        }
        DataType::FP64 => TensorData::F64((0..values.len()).map(as_f64).collect::<Result<_, _>>()?),
        DataType::FP16 => {
            return refuse(
                Reason::Datatype,
                format!("input {name:?}: FP16 tensors are not supported"),
            )
        }
    })
}

/// The outputs a request asked for, by name: each must be one of the model's outputs, once.
pub fn check_requested_outputs(
    specs: &[TensorSpec],
    requested: &[RequestedOutput],
) -> Result<(), Refusal> {
    for (i, out) in requested.iter().enumerate() {
        if !specs.iter().any(|s| s.name == out.name) {
            let names: Vec<String> = specs.iter().map(|s| format!("{:?}", s.name)).collect();
            return refuse(
                Reason::OutputName,
                format!(
                    "unknown output {:?}: the model's outputs are {}",
                    out.name,
                    names.join(", ")
                ),
            );
        }
        if requested[..i].iter().any(|o| o.name == out.name) {
            return refuse(
                Reason::OutputName,
                format!("output {:?} is requested twice", out.name),
            );
        }
    }
    Ok(())
}

/// Output sanity: a NaN or infinity in an output is the model's failure, not an answer.
/// Answers the output's moments, read in the same pass, for drift detection.
pub fn check_output(name: &str, data: TensorValues<'_>) -> Result<Moments, Refusal> {
    let survey = data.survey(None);
    if let Some((index, value)) = survey.first_non_finite {
        return refuse(
            Reason::NonFiniteOutput,
            format!("model produced non-finite output: {name:?} value #{index} is {value}"),
        );
    }
    Ok(survey.moments)
}

/// The deadline of one request: the smaller of `api.request_timeout_ms` and the manifest's
/// `guard.timeout_ms` (0 there: no model limit), at least 1 ms.
pub fn deadline(config_ms: u64, manifest_ms: u32) -> Duration {
    let ms = match manifest_ms {
        0 => config_ms,
        m => config_ms.min(u64::from(m)),
    };
    Duration::from_millis(ms.max(1))
}

/// Runs `f`, turning a panic into `Err` with the panic's message: a bug or a hostile model
/// inside the engine costs one request, not the daemon.
pub fn contain_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up (one second of burst).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(rate.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let rate = f64::from(rate.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = self.last.max(now);
    }

    /// Whether a token is there now (after refilling).
    pub fn ready(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= 1.0
    }

    /// Takes a token; call after [`TokenBucket::ready`] said yes.
    pub fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Time until the next token.
    pub fn wait(&self, rate: u32) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / f64::from(rate.max(1))).max(0.0))
    }

    /// Whether the bucket is full (forgetting it changes nothing).
    pub fn is_full(&self, rate: u32) -> bool {
        self.tokens >= f64::from(rate.max(1))
    }
}

/// Who a rate limit counts: the user on the Unix socket (every process of a uid shares its
/// buckets), the remote address on the loopback TCP listener (every connection from that
/// address shares them; the port is not part of it, a client opens as many as it likes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A uid, from the Unix socket's peer credentials.
    Uid(u32),
    /// An IP address, from a TCP connection.
    Addr(IpAddr),
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerKey::Uid(uid) => write!(f, "uid {uid}"),
            PeerKey::Addr(ip) => write!(f, "address {ip}"),
        }
    }
}

/// Whose requests a bucket counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    /// Everything a peer sends (`api.rate_limit_per_sec`).
    Peer(PeerKey),
    /// What a peer sends to one model (the manifest's `guard.rate_limit_per_sec`).
    Model(PeerKey, String),
}

/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 1024;

/// Per-peer rate limits: one bucket per peer (the configuration's limit over every model)
/// and one per peer and model (the manifest's limit). A request takes a token from both or
/// from neither. Peers are uids on the Unix socket, addresses on TCP ([`PeerKey`]).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<BucketKey, TokenBucket>>,
}

impl RateLimiter {
    /// Counts one request of `peer` to `model`, or refuses it.
    pub fn check(
        &self,
        who: PeerKey,
        model: &str,
        peer_rate: u32,
        model_rate: u32,
        now: Instant,
    ) -> Result<(), Refusal> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|key, bucket| {
                let rate = match key {
                    BucketKey::Peer(_) => peer_rate,
                    BucketKey::Model(..) => model_rate,
                };
                bucket.refill(rate, now);
                !bucket.is_full(rate)
            });
        }
        let peer_key = BucketKey::Peer(who);
        let model_key = BucketKey::Model(who, model.to_owned());
        let mut peer = *buckets
            .entry(peer_key.clone())
            .or_insert_with(|| TokenBucket::full(peer_rate, now));
        // 0 in a manifest: no limit of its own.
        let mut per_model = (model_rate > 0).then(|| {
            *buckets
                .entry(model_key.clone())
                .or_insert_with(|| TokenBucket::full(model_rate, now))
        });
        let peer_ready = peer.ready(peer_rate, now);
        let model_ready = per_model.as_mut().is_none_or(|b| b.ready(model_rate, now));
        let result = if !peer_ready {
            Err(Refusal {
                retry_after: Some(peer.wait(peer_rate)),
                ..Refusal::new(
                    Reason::RateLimited,
                    format!(
                        "rate limit: {who} may send {peer_rate} requests per second \
                         (api.rate_limit_per_sec); retry in {} ms",
                        peer.wait(peer_rate).as_millis().max(1)
                    ),
                )
            })
        } else if !model_ready {
            let wait = per_model.map_or(Duration::ZERO, |b| b.wait(model_rate));
            Err(Refusal {
                retry_after: Some(wait),
                ..Refusal::new(
                    Reason::RateLimited,
                    format!(
                        "rate limit: {who} may send {model_rate} requests per second to \
                         model {model:?} (its guard.rate_limit_per_sec); retry in {} ms",
                        wait.as_millis().max(1)
                    ),
                )
            })
        } else {
            peer.take();
            if let Some(b) = per_model.as_mut() {
                b.take();
            }
            Ok(())
        };
        buckets.insert(peer_key, peer);
        if let Some(b) = per_model {
            buckets.insert(model_key, b);
        }
        result
    }
}

/// At most `max_concurrency` inferences at once, at most `queue_depth` requests waiting for
/// one of them; a request beyond that is refused at once.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_concurrency: usize,
    queue_depth: usize,
}

impl Admission {
    /// Slots and queue as configured.
    pub fn new(max_concurrency: u32, queue_depth: u32) -> Self {
        let max_concurrency = max_concurrency.max(1) as usize;
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            waiting: AtomicUsize::new(0),
            max_concurrency,
            queue_depth: queue_depth as usize,
        }
    }

    /// A slot, at once, or after waiting in the queue until `deadline` (`budget` is the
    /// deadline's length, for the message). The slot is freed when the permit is dropped.
    pub async fn admit(
        &self,
        deadline: tokio::time::Instant,
        budget: Duration,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.queue_depth).then_some(w + 1)
            });
        if queued.is_err() {
            return Err(Refusal {
                retry_after: Some(Duration::from_secs(1)),
                ..Refusal::new(
                    Reason::QueueFull,
                    format!(
                        "server busy: all {} inference slots are taken and {} requests wait \
                         (api.max_concurrency, api.queue_depth); retry later",
                        self.max_concurrency, self.queue_depth
                    ),
                )
            });
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Refusal::new(Reason::NotReady, "mintd is stopping")),
            Err(_) => Err(Refusal::new(
                Reason::DeadlineWaiting,
                format!(
                    "deadline of {} ms passed while waiting for a free inference slot",
                    budget.as_millis()
                ),
            )),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Inferences holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrency
            .saturating_sub(self.slots.available_permits())
    }
}

/// One place in the queue, given back on drop (also when the client goes away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The guard's shared state, one per daemon.
#[derive(Debug)]
pub struct Guards {
    /// Per-peer rate limits.
    pub rate: RateLimiter,
    /// Inference slots and queue.
    pub admission: Admission,
}

impl Guards {
    /// From the `[api]` configuration.
    pub fn new(api: &Api) -> Self {
        Guards {
            rate: RateLimiter::default(),
            admission: Admission::new(api.max_concurrency, api.queue_depth),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(name: &str, shape: &[i64], range: Option<[f64; 2]>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: DataType::FP32,
            shape: shape.to_vec(),
            range,
        }
    }

    fn guard(max_batch: u32) -> GuardSettings {
        GuardSettings {
            max_batch,
            ..GuardSettings::default()
        }
    }

    fn input(name: &str, shape: &[i64], values: &[f64]) -> RequestInput {
        RequestInput {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            data: InputData::Json(values.iter().map(|&x| Scalar::Float(x)).collect()),
        }
    }

    fn refused(r: Result<TVec<CheckedInput<'_>>, Refusal>) -> Refusal {
        r.expect_err("must be refused")
    }

    #[test]
    fn a_well_formed_input_passes_and_keeps_its_values() {
        let specs = [spec("x", &[-1, 2], Some([-1.0, 1.0]))];
        let sent = [input("x", &[2, 2], &[0.5, -1.0, 1.0, 0.0])];
        let ok = check_inputs(&specs, &guard(8), &sent).unwrap();
        assert_eq!(ok[0].name, "x");
        assert_eq!(ok[0].tensor.shape(), &[2, 2]);
        assert_eq!(ok[0].values(), TensorValues::F32(&[0.5, -1.0, 1.0, 0.0]));
    }

    #[test]
    fn names_are_checked_unknown_twice_missing() {
        let specs = [spec("x", &[-1, 1], None), spec("y", &[-1, 1], None)];
        let r = refused(check_inputs(
            &specs,
            &guard(8),
            &[input("x", &[1, 1], &[0.0]), input("z", &[1, 1], &[0.0])],
        ));
        assert_eq!(r.reason, Reason::InputName);
        assert!(
            r.message
                .starts_with("unknown input \"z\": the model takes \"x\" (FP32 [-1, 1])"),
            "{}",
            r.message
        );
        let r = refused(check_inputs(
            &specs,
            &guard(8),
            &[input("x", &[1, 1], &[0.0]), input("x", &[1, 1], &[0.0])],
        ));
        assert_eq!(r.message, "input \"x\" is given twice");
        let r = refused(check_inputs(
            &specs,
            &guard(8),
            &[input("x", &[1, 1], &[0.0])],
        ));
        assert!(
            r.message.starts_with("missing input \"y\""),
            "{}",
            r.message
        );
        assert_eq!(r.reason.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn datatype_must_be_the_manifests() {
        let specs = [spec("x", &[-1, 1], None)];
        let mut i = input("x", &[1, 1], &[0.0]);
        i.datatype = "INT32".into();
        let r = refused(check_inputs(&specs, &guard(8), &[i.clone()]));
        assert_eq!(r.reason, Reason::Datatype);
        assert_eq!(
            r.message,
            "input \"x\" has datatype INT32 but the model takes FP32"
        );
        i.datatype = "FLOAT".into();
        let r = refused(check_inputs(&specs, &guard(8), &[i]));
        assert!(
            r.message.contains("unknown datatype \"FLOAT\""),
            "{}",
            r.message
        );
    }

    #[test]
    fn shapes_rank_fixed_dims_empty_dims_and_batch() {
        let specs = [spec("x", &[-1, 2], None)];
        let r = refused(check_inputs(
            &specs,
            &guard(4),
            &[input("x", &[2], &[0.0, 0.0])],
        ));
        assert_eq!(r.reason, Reason::Shape);
        assert_eq!(
            r.message,
            "input \"x\" has shape [2] but the model takes [-1, 2] (-1: any size)"
        );
        let r = refused(check_inputs(
            &specs,
            &guard(4),
            &[input("x", &[1, 3], &[0.0; 3])],
        ));
        assert_eq!(r.reason, Reason::Shape);
        let r = refused(check_inputs(&specs, &guard(4), &[input("x", &[0, 2], &[])]));
        assert!(
            r.message.contains("dimension 0 of shape [0, 2] is 0"),
            "{}",
            r.message
        );
        let r = refused(check_inputs(
            &specs,
            &guard(4),
            &[input("x", &[-3, 2], &[])],
        ));
        assert_eq!(r.reason, Reason::Shape);
        let r = refused(check_inputs(
            &specs,
            &guard(4),
            &[input("x", &[5, 2], &[0.0; 10])],
        ));
        assert_eq!(r.reason, Reason::Batch);
        assert_eq!(
            r.message,
            "input \"x\": batch of 5 is above the model's max_batch of 4"
        );
        // At the limit, and 0 meaning "no limit in the manifest".
        check_inputs(&specs, &guard(4), &[input("x", &[4, 2], &[0.0; 8])]).unwrap();
        check_inputs(&specs, &guard(0), &[input("x", &[50, 2], &[0.0; 100])]).unwrap();
        // A fixed first dimension is not a batch.
        let fixed = [spec("x", &[1, 2], None)];
        let r = refused(check_inputs(
            &fixed,
            &guard(8),
            &[input("x", &[2, 2], &[0.0; 4])],
        ));
        assert_eq!(r.reason, Reason::Shape);
    }

    #[test]
    fn element_count_must_match_the_shape() {
        let specs = [spec("x", &[-1, 2], None)];
        let r = refused(check_inputs(
            &specs,
            &guard(8),
            &[input("x", &[2, 2], &[0.0; 3])],
        ));
        assert_eq!(r.reason, Reason::Count);
        assert_eq!(r.message, "input \"x\": shape [2, 2] needs 4 values, got 3");
        let huge = [spec("x", &[-1, -1, -1], None)];
        let r = refused(check_inputs(
            &huge,
            &guard(0),
            &[input("x", &[i64::MAX, i64::MAX, 2], &[0.0])],
        ));
        assert_eq!(r.reason, Reason::Count);
        assert!(r.message.contains("too many elements"), "{}", r.message);
    }

    #[test]
    fn binary_inputs_count_bytes_and_decode_little_endian() {
        let specs = [spec("x", &[-1, 2], None)];
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mk = |b: Vec<u8>| RequestInput {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            data: InputData::Binary(Bytes::from(b)),
        };
        let sent = [mk(bytes.clone())];
        let ok = check_inputs(&specs, &guard(8), &sent).unwrap();
        assert_eq!(ok[0].values(), TensorValues::F32(&[1.5, -2.0]));
        let r = refused(check_inputs(&specs, &guard(8), &[mk(bytes[..7].to_vec())]));
        assert_eq!(r.reason, Reason::Count);
        assert_eq!(
            r.message,
            "input \"x\": shape [1, 2] of FP32 needs 8 bytes of binary data, binary_data_size is 7"
        );
        let nan: Vec<u8> = [f32::NAN, 0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let r = refused(check_inputs(&specs, &guard(8), &[mk(nan)]));
        assert_eq!(r.reason, Reason::NonFinite);
        assert_eq!(
            r.message,
            "input \"x\": value #0 is NaN; NaN and infinite values are refused"
        );
    }

    #[test]
    fn values_must_be_valid_finite_and_in_range() {
        let specs = [spec("x", &[-1, 2], Some([-1.0, 1.0]))];
        let r = refused(check_inputs(
            &specs,
            &guard(8),
            &[input("x", &[1, 2], &[0.0, 1.5])],
        ));
        assert_eq!(r.reason, Reason::Range);
        assert_eq!(
            r.message,
            "input \"x\": value #1 = 1.5 is outside the declared range [-1, 1]"
        );
        let r = refused(check_inputs(
            &specs,
            &guard(8),
            &[input("x", &[1, 2], &[1e39, 0.0])],
        ));
        assert_eq!(r.reason, Reason::NonFinite);
        assert!(
            r.message.contains("overflows FP32 to infinity"),
            "{}",
            r.message
        );
        let mut i = input("x", &[1, 2], &[0.0, 0.0]);
        i.data = InputData::Json(vec![Scalar::Float(0.0), Scalar::Null]);
        let r = refused(check_inputs(&specs, &guard(8), &[i]));
        assert_eq!(r.reason, Reason::Value);
        assert_eq!(
            r.message,
            "input \"x\": value #1 (null) is not a valid FP32"
        );
        // Integers: in range of the type, never fractions.
        let ints = [TensorSpec {
            datatype: DataType::UINT8,
            ..spec("n", &[-1], None)
        }];
        let mk = |values: Vec<Scalar>| RequestInput {
            name: "n".into(),
            datatype: "UINT8".into(),
            shape: vec![values.len() as i64],
            data: InputData::Json(values),
        };
        let sent = [mk(vec![Scalar::UInt(255), Scalar::Int(0)])];
        let ok = check_inputs(&ints, &guard(8), &sent).unwrap();
        assert_eq!(ok[0].values(), TensorValues::U8(&[255, 0]));
        let r = refused(check_inputs(
            &ints,
            &guard(8),
            &[mk(vec![Scalar::UInt(256)])],
        ));
        assert_eq!(
            r.message,
            "input \"n\": value #0 (256) is not a valid UINT8"
        );
        let r = refused(check_inputs(
            &ints,
            &guard(8),
            &[mk(vec![Scalar::Float(1.5)])],
        ));
        assert_eq!(r.reason, Reason::Value);
    }

    #[test]
    fn outputs_requested_must_exist_and_must_be_finite() {
        let specs = [spec("y", &[-1, 4], None)];
        let req = |name: &str| RequestedOutput {
            name: name.into(),
            binary: None,
        };
        check_requested_outputs(&specs, &[req("y")]).unwrap();
        let r = check_requested_outputs(&specs, &[req("z")]).unwrap_err();
        assert_eq!(
            r.message,
            "unknown output \"z\": the model's outputs are \"y\""
        );
        let r = check_requested_outputs(&specs, &[req("y"), req("y")]).unwrap_err();
        assert_eq!(r.reason, Reason::OutputName);

        let m = check_output("y", TensorValues::F32(&[1.0, 2.0])).unwrap();
        assert_eq!((m.count, m.sum, m.sum_sq), (2, 3.0, 5.0));
        let r = check_output("y", TensorValues::F32(&[1.0, f32::NAN])).unwrap_err();
        assert_eq!(r.reason, Reason::NonFiniteOutput);
        assert_eq!(r.reason.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.reason.is_model_fault());
        assert!(
            r.message.starts_with("model produced non-finite output"),
            "{}",
            r.message
        );
    }

    #[test]
    fn deadline_is_the_smaller_limit_and_never_zero() {
        assert_eq!(deadline(2000, 1000), Duration::from_millis(1000));
        assert_eq!(deadline(500, 1000), Duration::from_millis(500));
        assert_eq!(deadline(500, 0), Duration::from_millis(500));
        assert_eq!(deadline(0, 0), Duration::from_millis(1));
    }

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(contain_panic(|| 7), Ok(7));
        let r = contain_panic(|| -> u32 { panic!("engine exploded at {}", 3) });
        assert_eq!(r, Err("engine exploded at 3".to_owned()));
        let r = contain_panic(|| -> u32 { panic!("static message") });
        assert_eq!(r, Err("static message".to_owned()));
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        for _ in 0..2 {
            assert!(b.ready(2, t0));
            b.take();
        }
        assert!(!b.ready(2, t0));
        assert_eq!(b.wait(2), Duration::from_millis(500));
        assert!(!b.ready(2, t0 + Duration::from_millis(499)));
        assert!(b.ready(2, t0 + Duration::from_millis(500)));
        // Never more than one second saved up.
        assert!(b.ready(2, t0 + Duration::from_secs(60)));
        assert!(b.is_full(2));
    }

    #[test]
    fn rate_limits_are_per_peer_and_the_smaller_one_wins() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let uid = PeerKey::Uid;
        // Model limit 2 under a peer limit 100.
        assert!(limiter.check(uid(1000), "m", 100, 2, t0).is_ok());
        assert!(limiter.check(uid(1000), "m", 100, 2, t0).is_ok());
        let r = limiter.check(uid(1000), "m", 100, 2, t0).unwrap_err();
        assert_eq!(r.reason, Reason::RateLimited);
        assert_eq!(r.reason.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            r.message
                .starts_with("rate limit: uid 1000 may send 2 requests per second to model \"m\""),
            "{}",
            r.message
        );
        assert!(r.retry_after.is_some());
        // Another peer, and another model of the same peer, are not affected.
        assert!(limiter.check(uid(1001), "m", 100, 2, t0).is_ok());
        assert!(limiter.check(uid(1000), "other", 100, 2, t0).is_ok());
        // Peer limit 1 under a model limit 100: the peer's bucket refuses, over all models.
        assert!(limiter.check(uid(7), "a", 1, 100, t0).is_ok());
        let r = limiter.check(uid(7), "b", 1, 100, t0).unwrap_err();
        assert!(
            r.message.contains("(api.rate_limit_per_sec)"),
            "{}",
            r.message
        );
        // A refused request takes no token: one second later one request passes.
        assert!(limiter
            .check(uid(7), "b", 1, 100, t0 + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn tcp_peers_are_addresses_apart_from_uids() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(limiter.check(PeerKey::Addr(local), "m", 1, 0, t0).is_ok());
        let r = limiter
            .check(PeerKey::Addr(local), "m", 1, 0, t0)
            .unwrap_err();
        assert_eq!(r.reason, Reason::RateLimited);
        assert!(
            r.message
                .starts_with("rate limit: address 127.0.0.1 may send 1 requests per second"),
            "{}",
            r.message
        );
        // Another address, ::1, and a uid with the same number as nothing are counted apart.
        assert!(limiter.check(PeerKey::Addr(other), "m", 1, 0, t0).is_ok());
        assert!(limiter.check(PeerKey::Addr(v6), "m", 1, 0, t0).is_ok());
        assert!(limiter.check(PeerKey::Uid(0), "m", 1, 0, t0).is_ok());
        assert!(limiter.check(PeerKey::Uid(1000), "m", 1, 0, t0).is_ok());
        // The per-model bucket of an address is its own, too.
        assert!(limiter
            .check(PeerKey::Addr(v6), "n", 100, 1, t0 + Duration::from_secs(1))
            .is_ok());
        let r = limiter
            .check(PeerKey::Addr(v6), "n", 100, 1, t0 + Duration::from_secs(1))
            .unwrap_err();
        assert!(
            r.message.starts_with(
                "rate limit: address ::1 may send 1 requests per second to model \"n\""
            ),
            "{}",
            r.message
        );
    }

    #[test]
    fn peer_keys_name_the_peer() {
        assert_eq!(PeerKey::Uid(1000).to_string(), "uid 1000");
        assert_eq!(
            PeerKey::Addr("127.0.0.1".parse().unwrap()).to_string(),
            "address 127.0.0.1"
        );
    }

    #[test]
    fn idle_buckets_are_forgotten_when_there_are_many() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for uid in 0..(MAX_BUCKETS as u32) {
            limiter.check(PeerKey::Uid(uid), "m", 10, 0, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(5);
        limiter
            .check(
                PeerKey::Addr("127.0.0.1".parse().unwrap()),
                "m",
                10,
                0,
                later,
            )
            .unwrap();
        assert!(limiter.buckets.lock().unwrap().len() <= 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn admission_runs_the_cap_queues_the_depth_and_refuses_the_rest() {
        let admission = Arc::new(Admission::new(1, 1));
        let long = tokio::time::Instant::now() + Duration::from_secs(10);
        let first = admission
            .admit(long, Duration::from_secs(10))
            .await
            .unwrap();
        // The second waits in the queue.
        let a = admission.clone();
        let second = tokio::spawn(async move { a.admit(long, Duration::from_secs(10)).await });
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // The third is refused at once.
        let r = admission
            .admit(long, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(r.reason, Reason::QueueFull);
        assert_eq!(r.reason.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            r.message
                .starts_with("server busy: all 1 inference slots are taken"),
            "{}",
            r.message
        );
        drop(first);
        let second = second.await.unwrap().unwrap();
        assert_eq!(admission.waiting(), 0);
        // A queued request whose deadline passes gives its place back.
        let short = tokio::time::Instant::now() + Duration::from_millis(20);
        let r = admission
            .admit(short, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(r.reason, Reason::DeadlineWaiting);
        assert_eq!(
            r.message,
            "deadline of 20 ms passed while waiting for a free inference slot"
        );
        assert!(!r.reason.is_model_fault());
        assert_eq!(admission.waiting(), 0);
        drop(second);
        let again = admission.admit(long, Duration::from_secs(10)).await;
        assert!(again.is_ok(), "the slot is free again");
    }
}
