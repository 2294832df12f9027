//! The local HTTP API: management under `/v1/` (admins only), health, model metadata and
//! inference under `/v2/` (Open Inference Protocol; inference in [`super::infer`]). Errors are
//! `{"error": "...", "check": ...}` (`{"error": "...", "reason": ...}` for inference).

use std::convert::Infallible;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use mint_config::Config;
use mint_updater::updater::{InstallOutcome, InstalledModel, UpdateError, Updater};
use serde_json::{json, Value};

use super::guard::Guards;
use super::infer;
use super::peer::{AdminPolicy, Caller};
use super::registry::Registry;

/// Everything a request handler needs.
pub struct AppState {
    /// The update core.
    pub updater: Arc<Updater>,
    /// Loaded engines.
    pub registry: Arc<Registry>,
    /// Who may manage the daemon.
    pub admin: AdminPolicy,
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Start time, for uptime.
    pub started: Instant,
    /// Startup recovery is done.
    pub ready: AtomicBool,
    /// The inference guard's rate limits, slots and queue.
    pub guards: Guards,
    /// Inference counters and latency histograms.
    pub metrics: Arc<super::metrics::Metrics>,
    /// Drift and request-rate watch of the served models.
    pub drift: Arc<super::drift::DriftMonitor>,
    /// Counters of the store re-verification.
    pub store_watch: Arc<super::tamper::StoreWatch>,
}

type Reply = Response<Full<Bytes>>;

/// Entry point of every request.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
    caller: Caller,
) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    tracing::debug!(%method, %path, %caller, "request");
    if segments.first() == Some(&"v1") {
        match caller {
            Caller::Local(peer) if state.admin.is_admin(&peer) => {}
            Caller::Local(peer) => {
                return Ok(error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "uid {} may not use the management API (root, the daemon's user or api.admin_group only)",
                        peer.uid
                    ),
                    None,
                ))
            }
            // TCP has no peer credentials: anyone on the device can connect to it.
            Caller::Tcp(_) => {
                return Ok(error(
                    StatusCode::FORBIDDEN,
                    "the management API (/v1/) is only served on the Unix socket: a TCP \
                     connection carries no peer credentials to check",
                    None,
                ))
            }
        }
    }
    let reply = match (&method, segments.as_slice()) {
        (&Method::GET, ["v2", "health", "live"]) => ok(json!({"live": true})),
        (&Method::GET, ["v2", "health", "ready"]) => {
            if state.ready.load(Ordering::Acquire) {
                ok(json!({"ready": true}))
            } else {
                error(StatusCode::SERVICE_UNAVAILABLE, "mintd is starting", None)
            }
        }
        (&Method::GET, ["metrics"]) => super::metrics::reply(&state),
        (&Method::GET, ["v2", "models", name]) => model_metadata(&state, name),
        (&Method::GET, ["v2", "models", name, "ready"]) => match state.registry.get(name) {
            Some(_) => ok(json!({"name": name, "ready": true})),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("model {name:?} is not served"),
                None,
            ),
        },
        (&Method::POST, ["v2", "models", name, "infer"]) => {
            let name = (*name).to_owned();
            infer::handle(req, state.clone(), caller, &name, None).await
        }
        (&Method::POST, ["v2", "models", name, "versions", version, "infer"]) => {
            let (name, version) = ((*name).to_owned(), (*version).to_owned());
            infer::handle(req, state.clone(), caller, &name, Some(&version)).await
        }
        (&Method::GET, ["v1", "status"]) => ok(status(&state)),
        (&Method::GET, ["v1", "models"]) => ok(models(&state)),
        (&Method::GET, ["v1", "events"]) => ok(events(&state, &query)),
        (&Method::POST, ["v1", "install"]) => install(req, &state).await,
        (&Method::POST, ["v1", "rollback", name]) => {
            let updater = state.updater.clone();
            let name = (*name).to_owned();
            match tokio::task::spawn_blocking(move || updater.rollback(&name)).await {
                Ok(Ok(model)) => {
                    ok(json!({"rolled_back": true, "serving": model.as_ref().map(model_json)}))
                }
                Ok(Err(e)) => update_error(&e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {method} {path}"),
            None,
        ),
    };
    Ok(reply)
}

fn status(state: &AppState) -> Value {
    json!({
        "device": {"id": state.config.device.id, "class": state.config.device.class, "arch": state.config.device.arch},
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "ready": state.ready.load(Ordering::Acquire),
        "attestation": "software (measurement log; no TPM attestor yet)",
        "serving": state.registry.all().iter().map(|m| model_json(&m.installed)).collect::<Vec<_>>(),
    })
}

fn models(state: &AppState) -> Value {
    let records = state.updater.models();
    json!({ "models": records })
}

fn events(state: &AppState, query: &str) -> Value {
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let after = param("after").unwrap_or(0);
    let limit = param("limit").unwrap_or(100).min(1000) as usize;
    json!({ "events": state.updater.events_since(after, limit) })
}

fn model_metadata(state: &AppState, name: &str) -> Reply {
    match state.registry.get(name) {
        Some(m) => {
            let manifest = &m.installed.manifest;
            let spec = |s: &mint_updater::manifest::TensorSpec| json!({"name": s.name, "datatype": s.datatype.name(), "shape": s.shape});
            ok(json!({
                "name": name,
                "versions": [manifest.version],
                "platform": "onnx_tract",
                "inputs": manifest.inputs.iter().map(spec).collect::<Vec<_>>(),
                "outputs": manifest.outputs.iter().map(spec).collect::<Vec<_>>(),
                "digest": m.installed.rev.digest,
                "sequence": manifest.sequence,
            }))
        }
        None => error(
            StatusCode::NOT_FOUND,
            &format!("model {name:?} is not served"),
            None,
        ),
    }
}

/// `POST /v1/install`: a bundle streamed in the body, or `{"path": "/local/file.mint"}`.
async fn install(req: Request<Incoming>, state: &AppState) -> Reply {
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let updater = state.updater.clone();
    let limit = state
        .config
        .limits
        .max_bundle_bytes
        .saturating_add(16 << 20);
    let result = if is_json {
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("install request: {e}"),
                    None,
                )
            }
        };
        if let Some(request) = serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|v| v.get("url").is_some())
        {
            return install_url(&request, state).await;
        }
        let path =
            match serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["path"].as_str().map(str::to_owned))
            {
                Some(p) => p,
                None => return error(
                    StatusCode::BAD_REQUEST,
                    "install request must be a bundle body or {\"path\": \"/absolute/file.mint\"}",
                    None,
                ),
            };
        if !std::path::Path::new(&path).is_absolute() {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("install path {path:?} must be absolute (the daemon has its own working directory)"),
                None,
            );
        }
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot open bundle {path} as the mintd user: {e}"),
                    None,
                )
            }
        };
        tokio::task::spawn_blocking(move || {
            let mut input = io::BufReader::with_capacity(128 * 1024, file);
            updater.try_install(&mut input, &mut |_| {})
        })
        .await
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
        let mut body = req.into_body();
        tokio::spawn(async move {
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => {
                            total += d.len() as u64;
                            if total > limit {
                                Err(io::Error::other(format!(
                                    "upload larger than {limit} bytes (limits.max_bundle_bytes)"
                                )))
                            } else {
                                Ok(d)
                            }
                        }
                        Err(_) => continue,
                    },
                    Err(e) => Err(io::Error::other(format!("upload interrupted: {e}"))),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        tokio::task::spawn_blocking(move || {
            let mut input = ChannelReader::new(rx);
            updater.try_install(&mut input, &mut |_| {})
        })
        .await
    };
    // Verification buffers and decoder windows are free now: give them back.
    super::memory::trim();
    match result {
        Ok(Ok(outcome)) => install_reply(&outcome),
        Ok(Err(e)) => update_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("install task failed: {e}"),
            None,
        ),
    }
}

/// `POST /v1/install {"url": "http(s)://…", "sha256"?: "…", "size"?: N}`: the daemon
/// downloads the bundle (resuming after cuts, bounded by `size` or `limits.max_bundle_bytes`,
/// checked against `sha256` when given) while it verifies and installs it.
async fn install_url(request: &Value, state: &AppState) -> Reply {
    use crate::fleet::{command, dispatch, download};
    let bad = |m: String| error(StatusCode::BAD_REQUEST, &m, None);
    let Some(url) = request["url"].as_str() else {
        return bad("install request: url must be a string".into());
    };
    if let Err(e) = command::check_url(url) {
        return bad(format!("install request: {e}"));
    }
    let sha256 = match &request["sha256"] {
        Value::Null => None,
        Value::String(s)
            if s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Some(s.clone())
        }
        _ => return bad("install request: sha256 must be 64 lowercase hex digits".into()),
    };
    let max = state.config.limits.max_bundle_bytes;
    let size = match &request["size"] {
        Value::Null => None,
        v => match v.as_u64() {
            Some(n) if n > 0 && n <= max => Some(n),
            _ => {
                return bad(format!(
                    "install request: size must be 1 to {max} bytes (limits.max_bundle_bytes)"
                ))
            }
        },
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let part = state
        .config
        .paths
        .state_dir
        .join(dispatch::DOWNLOADS_DIR)
        .join(format!(
            "local-{}-{}.part",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
    let job = download::Job {
        url: url.to_owned(),
        sha256,
        size,
        max_size: max,
        part: part.clone(),
    };
    let options = download::Options {
        max_failures: 4,
        ..download::Options::default()
    };
    let (downloaded, installed) =
        dispatch::install_from_url(state.updater.clone(), &job, &options, &mut |_| {}, true).await;
    let _ = tokio::fs::remove_file(&part).await;
    super::memory::trim();
    match (downloaded, installed) {
        (_, Ok(Ok(outcome))) => install_reply(&outcome),
        (Err(d), Ok(Err(_))) if !matches!(d, download::DownloadError::Abandoned) => error(
            StatusCode::BAD_GATEWAY,
            &format!("download of {} failed: {d}", download::redact(url)),
            None,
        ),
        (_, Ok(Err(e))) => update_error(&e),
        (_, Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("install task failed: {e}"),
            None,
        ),
    }
}

fn install_reply(outcome: &InstallOutcome) -> Reply {
    match outcome {
        InstallOutcome::Committed(m) => ok(json!({"outcome": "committed", "model": model_json(m)})),
        InstallOutcome::OnTrial(m) => ok(json!({"outcome": "on_trial", "model": model_json(m)})),
        InstallOutcome::AlreadyInstalled(m) => {
            ok(json!({"outcome": "already_installed", "model": model_json(m)}))
        }
        InstallOutcome::RolledBack { to, reason } => response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "error": format!("the new model failed its health check and was rolled back: {reason}"),
                "check": "health",
                "outcome": "rolled_back",
                "serving": to.as_ref().map(model_json),
            }),
        ),
    }
}

/// A model as JSON.
pub fn model_json(m: &InstalledModel) -> Value {
    json!({
        "name": m.name, "version": m.rev.version, "sequence": m.rev.sequence,
        "digest": m.rev.digest, "model_sha256": m.rev.model_sha256,
    })
}

fn update_error(e: &UpdateError) -> Reply {
    let (status, check) = match e {
        UpdateError::Bundle(b) => {
            let check = b.check();
            let status = if check == mint_updater::Check::Io {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (status, Some(check.name()))
        }
        UpdateError::Quarantined { .. } => (StatusCode::UNPROCESSABLE_ENTITY, Some("quarantine")),
        UpdateError::Busy { .. } => (StatusCode::CONFLICT, None),
        UpdateError::NoRollbackTarget { .. } | UpdateError::UnknownModel { .. } => {
            (StatusCode::NOT_FOUND, None)
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    // The device ran out of space (staging, store): its fault, not the request's.
    let status = if out_of_space(e) {
        StatusCode::INSUFFICIENT_STORAGE
    } else {
        status
    };
    error(status, &error_chain(e), check)
}

/// Whether an OS error in the chain says the disk (or the quota) is full.
fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// The error and its causes on one line, skipping causes already quoted by their parent.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn ok(body: Value) -> Reply {
    response(StatusCode::OK, body)
}

fn error(status: StatusCode, message: &str, check: Option<&str>) -> Reply {
    response(status, json!({"error": message, "check": check}))
}

fn response(status: StatusCode, body: Value) -> Reply {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// Chunks arriving on a channel (a request body, a download) as a blocking reader for the
/// updater, which runs on a blocking thread.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads what `rx` delivers until its senders are gone (end of input) or an error.
    pub fn new(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
