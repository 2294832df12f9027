//! The device's command dispatcher: what happens to a message on `mint/v1/{id}/cmd` or the
//! broadcast topic `mint/v1/fleet/cmd`.
//!
//! [`Dispatcher::handle`] runs the checks of [`command`] (envelope, algorithm, key, signature,
//! payload, target, validity window), then the replay cache, then the command's arguments,
//! and only then claims the nonce (durably, together with any work the command starts) and
//! obeys. Every refusal is recorded as a `command_refused` event and nothing is executed.
//!
//! Answers (`cmd/result` payloads) are returned by `handle`; results that come later (the end
//! of an `install`) go to the [`ResultSink`] given to [`Dispatcher::new`].
//!
//! **Amplification.** One message on the broadcast topic reaches every device: if each
//! answered anything, anyone allowed to publish there could make the fleet publish N
//! messages per message. So on the broadcast topic a device answers only a command that is
//! signed by a fleet key and addressed to it (it still answers "expired" or "unknown command"
//! for those, but not "mistargeted" nor "replayed"); other refusals there are events only.
//! Refusals of unauthenticated input (on either topic) pass through a token bucket
//! ([`REFUSAL_BURST`], one more per second): beyond it they are counted, not recorded one by
//! one, and the count is reported in the next `command_refused` event (`suppressed`).
//!
//! To add a command: a variant of [`Command`] with its argument checks in `Command::parse`,
//! and its arm in `Dispatcher::execute` below.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mint_updater::lifecycle::severity;
use mint_updater::state::{OutboxBounds, OutboxMessage};
use mint_updater::{BundleError, InstallOutcome, LifecycleEvent, TrustStore, UpdateError, Updater};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::command::{self, Command, CommandError, DeviceIdentity, InstallArgs, SignedCommand};
use super::download::{self, Report};
use super::replay::{self, Claim};
use crate::service::api::{model_json, ChannelReader};

/// The broadcast command topic.
pub const BROADCAST_TOPIC: &str = "mint/v1/fleet/cmd";
/// Unauthenticated refusals recorded in a burst before the rate limit applies.
pub const REFUSAL_BURST: f64 = 20.0;
/// Directory of partial downloads under the state directory.
pub const DOWNLOADS_DIR: &str = "downloads";

/// Where results produced after `handle` returned go: the final result of an `install`.
#[derive(Clone)]
pub enum ResultSink {
    /// The daemon: the result is stored in the fleet link's durable outbox (for
    /// `cmd/result`) in the same transaction that forgets the finished command. A crash
    /// loses neither: before that commit the command is resumed after a restart (and
    /// answers again), after it the result is delivered.
    Outbox {
        /// The link to wake and the topics.
        handle: super::FleetHandle,
        /// The outbox's bounds (`mqtt.outbox_max_*`).
        bounds: OutboxBounds,
    },
    /// Tools and tests: the command is forgotten, then the result handed to the function.
    Callback(Arc<dyn Fn(Value) + Send + Sync>),
}
/// Republishes status and inventory now (the fleet link's trigger).
pub type ReportTrigger = Arc<dyn Fn() + Send + Sync>;

/// What the dispatcher needs to know.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Who this device is (target matching, result payloads).
    pub device: DeviceIdentity,
    /// Keys with the fleet role (`trust.fleet_keys`).
    pub trust: TrustStore,
    /// `trust.clock_skew_secs`.
    pub clock_skew_secs: u64,
    /// Where partial downloads are kept (`state_dir/downloads`).
    pub downloads_dir: PathBuf,
    /// `limits.max_bundle_bytes`: the largest `install` size accepted.
    pub max_bundle_bytes: u64,
    /// Timeouts and retries of downloads.
    pub download: download::Options,
}

impl DispatcherConfig {
    /// The dispatcher's configuration from mintd's.
    pub fn from_config(config: &mint_config::Config) -> Result<Self, mint_updater::BundleError> {
        let trust = if config.trust.fleet_keys.is_empty() {
            TrustStore::empty(1)
        } else {
            TrustStore::load(&config.trust.fleet_keys, 1)?
        };
        Ok(DispatcherConfig {
            device: DeviceIdentity {
                id: config.device.id.clone(),
                class: config.device.class.clone(),
                arch: config.device.arch.clone(),
            },
            trust,
            clock_skew_secs: config.trust.clock_skew_secs,
            downloads_dir: config.paths.state_dir.join(DOWNLOADS_DIR),
            max_bundle_bytes: config.limits.max_bundle_bytes,
            download: download::Options::default(),
        })
    }
}

/// An `install` being carried out, as persisted in the state database until it finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInstall {
    /// Job key (zero-padded acceptance time and nonce: restart order is arrival order).
    pub key: String,
    /// The command's nonce (results name it).
    pub nonce: String,
    /// The signing key id (hex).
    pub kid: String,
    /// The signed arguments.
    pub args: InstallArgs,
}

/// The device's command dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    config: DispatcherConfig,
    updater: Arc<Updater>,
    results: ResultSink,
    report: Mutex<Option<ReportTrigger>>,
    jobs: mpsc::UnboundedSender<PendingInstall>,
    limiter: Mutex<Bucket>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("device", &self.inner.config.device)
            .finish_non_exhaustive()
    }
}

/// Token bucket for refusals of unauthenticated input.
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Bucket {
    fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64()).min(REFUSAL_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A refusal: the error and what is known of the command.
struct Refusal {
    error: CommandError,
    signed: Option<SignedCommand>,
}

impl From<CommandError> for Refusal {
    fn from(error: CommandError) -> Self {
        Refusal {
            error,
            signed: None,
        }
    }
}

impl Dispatcher {
    /// A dispatcher over `updater`; starts its install worker (call inside a tokio runtime)
    /// and resumes every install a previous run left pending.
    pub fn new(config: DispatcherConfig, updater: Arc<Updater>, results: ResultSink) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            updater,
            results,
            report: Mutex::new(None),
            jobs: tx,
            limiter: Mutex::new(Bucket {
                tokens: REFUSAL_BURST,
                last: Instant::now(),
                suppressed: 0,
            }),
        });
        match replay::jobs(inner.updater.state().database()) {
            Ok(jobs) => {
                for (key, json) in jobs {
                    match serde_json::from_str::<PendingInstall>(&json) {
                        Ok(job) => {
                            tracing::info!(nonce = %job.nonce, "resuming a pending install");
                            let _ = inner.jobs.send(job);
                        }
                        Err(e) => {
                            tracing::error!(job = %key, error = %e, "unreadable pending command dropped");
                            let _ = replay::remove_job(inner.updater.state().database(), &key);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read pending commands"),
        }
        tokio::spawn(worker(Arc::downgrade(&inner), rx));
        Dispatcher { inner }
    }

    /// Sets what `report` does (the fleet link's republish trigger).
    pub fn set_report(&self, trigger: ReportTrigger) {
        *self
            .inner
            .report
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(trigger);
    }

    /// The dispatcher as the link's command handler.
    pub fn handler(&self) -> super::link::CommandHandler {
        let this = self.clone();
        Arc::new(move |topic: String, payload: Vec<u8>| {
            let this = this.clone();
            Box::pin(async move { this.handle(&topic, &payload).await })
        })
    }

    /// This device's command topic.
    pub fn device_topic(&self) -> String {
        format!("mint/v1/{}/cmd", self.inner.config.device.id)
    }

    /// Handles one message from a command topic; returns the `cmd/result` payload to publish
    /// now, if any (see the module documentation for when there is none).
    pub async fn handle(&self, topic: &str, payload: &[u8]) -> Option<Value> {
        let broadcast = topic == BROADCAST_TOPIC;
        if !broadcast && topic != self.device_topic() {
            tracing::warn!(
                topic,
                "message on a topic that carries no commands for this device ignored"
            );
            return None;
        }
        match self.admit(payload).await {
            Ok((signed, command)) => Some(self.execute(signed, command).await),
            Err(refusal) => self.refuse(topic, broadcast, refusal).await,
        }
    }

    /// Every check, then the durable claim of the nonce (with the install job, if any).
    async fn admit(&self, payload: &[u8]) -> Result<(SignedCommand, Command), Refusal> {
        let config = &self.inner.config;
        let signed = command::verify(payload, &config.trust)?;
        let with = |error: CommandError| Refusal {
            error,
            signed: Some(signed.clone()),
        };
        let now = self.now();
        signed
            .check(&config.device, now, config.clock_skew_secs)
            .map_err(with)?;
        let db = self.inner.updater.state().database();
        match replay::seen(db, &signed.payload.nonce) {
            Ok(true) => {
                return Err(with(CommandError::Replayed {
                    nonce: signed.payload.nonce.clone(),
                }))
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "replay cache unreadable; command refused");
                return Err(with(CommandError::ReplayCacheFull { entries: 0 }));
            }
        }
        let command = Command::parse(&signed.payload, config.max_bundle_bytes).map_err(with)?;
        let job = match &command {
            Command::Install(args) => Some(PendingInstall {
                key: format!("{:020}-{}", unix_ms(), signed.payload.nonce),
                nonce: signed.payload.nonce.clone(),
                kid: signed.kid.to_hex(),
                args: args.clone(),
            }),
            _ => None,
        };
        let job_json = job.as_ref().map(|j| {
            (
                j.key.clone(),
                serde_json::to_string(j).expect("a pending install serialises"),
            )
        });
        let updater = self.inner.updater.clone();
        let nonce = signed.payload.nonce.clone();
        let until = signed.retain_until(config.clock_skew_secs);
        let claim = tokio::task::spawn_blocking(move || {
            replay::claim(
                updater.state().database(),
                &nonce,
                until,
                now,
                replay::MAX_NONCES,
                job_json.as_ref().map(|(k, j)| (k.as_str(), j.as_str())),
            )
        })
        .await;
        match claim {
            Ok(Ok(Claim::Claimed)) => {
                if let Some(job) = job {
                    let _ = self.inner.jobs.send(job);
                }
                Ok((signed, command))
            }
            Ok(Ok(Claim::Seen)) => Err(with(CommandError::Replayed {
                nonce: signed.payload.nonce.clone(),
            })),
            Ok(Ok(Claim::Stale(floor))) => Err(with(CommandError::Expired {
                expires_at: signed.payload.expires_at,
                now: floor,
                skew: config.clock_skew_secs,
            })),
            Ok(Ok(Claim::Full(entries))) => Err(with(CommandError::ReplayCacheFull { entries })),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot claim the nonce; command refused");
                Err(with(CommandError::ReplayCacheFull { entries: 0 }))
            }
            Err(e) => {
                tracing::error!(error = %e, "nonce claim task failed; command refused");
                Err(with(CommandError::ReplayCacheFull { entries: 0 }))
            }
        }
    }

    /// Obeys an admitted command; returns its (first) result.
    async fn execute(&self, signed: SignedCommand, command: Command) -> Value {
        let p = &signed.payload;
        let kid = signed.kid.to_hex();
        tracing::info!(command = %p.command, nonce = %p.nonce, kid = %kid, "fleet command accepted");
        self.event(
            "command_accepted",
            severity::INFO,
            None,
            json!({"command": p.command, "nonce": p.nonce, "kid": kid, "target": p.target.to_string()}),
        )
        .await;
        let result = |status: &str, details: Value| {
            self.result(&p.nonce, Some(&p.command), status, None, None, details)
        };
        match command {
            Command::Report => {
                let trigger = self
                    .inner
                    .report
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match trigger {
                    Some(t) => {
                        t();
                        result("succeeded", json!({"republished": ["status", "inventory"]}))
                    }
                    None => self.failed(p, "unavailable", "no fleet link to republish on"),
                }
            }
            Command::Rollback { name } => {
                let updater = self.inner.updater.clone();
                let n = name.clone();
                match tokio::task::spawn_blocking(move || updater.rollback(&n)).await {
                    Ok(Ok(serving)) => result(
                        "succeeded",
                        json!({"model": name, "serving": serving.as_ref().map(model_json)}),
                    ),
                    Ok(Err(e)) => self.failed(p, e.refusal(), &e.to_string()),
                    Err(e) => self.failed(p, "internal", &format!("rollback task failed: {e}")),
                }
            }
            Command::Install(args) => result(
                "accepted",
                json!({"url": download::redact(&args.url), "sha256": args.sha256, "size": args.size}),
            ),
        }
    }

    fn failed(&self, p: &command::Payload, reason: &str, error: &str) -> Value {
        self.result(
            &p.nonce,
            Some(&p.command),
            "failed",
            Some(reason),
            Some(error),
            json!({}),
        )
    }

    /// Records a refusal and decides whether to answer it.
    async fn refuse(&self, topic: &str, broadcast: bool, refusal: Refusal) -> Option<Value> {
        let error = &refusal.error;
        let suppressed = if error.authenticated() {
            Some(0)
        } else {
            self.inner
                .limiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        };
        let Some(suppressed) = suppressed else {
            tracing::debug!(reason = error.reason(), "refusal rate-limited");
            return None;
        };
        tracing::warn!(topic, reason = error.reason(), error = %error, "fleet command refused");
        let signed = refusal.signed.as_ref();
        let mut details = json!({
            "reason": error.reason(),
            "error": error.to_string(),
            "topic": topic,
            "nonce": signed.map(|s| s.payload.nonce.clone()),
            "command": signed.map(|s| s.payload.command.clone()),
            "kid": signed.map(|s| s.kid.to_hex()),
        });
        if suppressed > 0 {
            details["suppressed"] = suppressed.into();
        }
        self.event("command_refused", severity::WARNING, None, details)
            .await;
        let answer = !broadcast
            || (error.authenticated()
                && !matches!(
                    error,
                    CommandError::Mistargeted { .. } | CommandError::Replayed { .. }
                ));
        answer.then(|| {
            self.result(
                signed.map_or("", |s| s.payload.nonce.as_str()),
                signed.map(|s| s.payload.command.as_str()),
                "refused",
                Some(error.reason()),
                Some(&error.to_string()),
                json!({}),
            )
        })
    }

    /// A `cmd/result` payload.
    fn result(
        &self,
        nonce: &str,
        command: Option<&str>,
        status: &str,
        reason: Option<&str>,
        error: Option<&str>,
        details: Value,
    ) -> Value {
        result_json(
            &self.inner.config.device.id,
            nonce,
            command,
            status,
            reason,
            error,
            details,
        )
    }

    /// The time commands are checked against: the later of the clock and the trusted time
    /// (a clock set back does not revive an expired command).
    fn now(&self) -> i64 {
        let clock = unix_secs();
        match self.inner.updater.state().trusted_time() {
            Ok(Some(t)) => clock.max(t),
            _ => clock,
        }
    }

    async fn event(&self, kind: &str, sev: &str, model: Option<&str>, details: Value) {
        record(&self.inner.updater, kind, sev, model, details).await;
    }
}

fn result_json(
    device: &str,
    nonce: &str,
    command: Option<&str>,
    status: &str,
    reason: Option<&str>,
    error: Option<&str>,
    details: Value,
) -> Value {
    let mut v = json!({
        "device": device,
        "nonce": if nonce.is_empty() { Value::Null } else { nonce.into() },
        "command": command,
        "status": status,
        "unix_ms": unix_ms(),
    });
    if let Some(r) = reason {
        v["reason"] = r.into();
    }
    if let Some(e) = error {
        v["error"] = e.into();
    }
    if details.as_object().is_some_and(|d| !d.is_empty()) {
        v["details"] = details;
    }
    v
}

async fn record(
    updater: &Arc<Updater>,
    kind: &str,
    sev: &str,
    model: Option<&str>,
    details: Value,
) {
    let event = LifecycleEvent::new(kind, sev, model, details, unix_ms());
    let updater = updater.clone();
    let _ = tokio::task::spawn_blocking(move || updater.record_event(event)).await;
}

/// Runs pending installs one after the other, until the dispatcher is dropped.
async fn worker(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<PendingInstall>) {
    while let Some(job) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let result = run_install(&inner, &job).await;
        finish(&inner, job.key.clone(), result).await;
    }
}

/// Forgets a finished command and delivers its final result (see [`ResultSink`]).
async fn finish(inner: &Arc<Inner>, key: String, result: Value) {
    let updater = inner.updater.clone();
    match &inner.results {
        ResultSink::Outbox { handle, bounds } => {
            let payload = serde_json::to_vec(&result).unwrap_or_default();
            let message = OutboxMessage {
                destination: handle.topics().cmd_result(),
                payload: payload.clone(),
            };
            let bounds = *bounds;
            let stored = tokio::task::spawn_blocking(move || {
                updater
                    .state()
                    .outbox_push_and(&[message], bounds, None, |txn| {
                        replay::remove_job_in(txn, &key)
                    })
            })
            .await;
            match stored {
                Ok(Ok(_)) => handle.stored(),
                Ok(Err(e)) => {
                    // Nothing was written: the command stays pending and is resumed (and
                    // answered) after a restart; the result still goes out now if it can.
                    tracing::error!(error = %e, "cannot store a command's result with its end");
                    if handle
                        .publish(handle.topics().cmd_result(), payload)
                        .await
                        .is_err()
                    {
                        tracing::warn!("command result dropped: the MQTT link is stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "the result task failed"),
            }
        }
        ResultSink::Callback(deliver) => {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = replay::remove_job(updater.state().database(), &key) {
                    tracing::error!(error = %e, "cannot remove a finished install");
                }
            })
            .await;
            deliver(result);
        }
    }
}

/// Downloads and installs one bundle; returns the final result.
async fn run_install(inner: &Arc<Inner>, job: &PendingInstall) -> Value {
    let device = &inner.config.device.id;
    let args = &job.args;
    let url = download::redact(&args.url);
    let part = download::part_path(&inner.config.downloads_dir, &args.sha256);
    let dl = download::Job::signed(&args.url, &args.sha256, args.size, part.clone());
    record(
        &inner.updater,
        "download_started",
        severity::INFO,
        None,
        json!({"nonce": job.nonce, "url": url, "size": args.size, "sha256": args.sha256}),
    )
    .await;

    // Reports become events on their own task (recording is a durable write).
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<(String, &'static str, Value)>();
    let recorder = {
        let updater = inner.updater.clone();
        tokio::spawn(async move {
            while let Some((kind, sev, details)) = report_rx.recv().await {
                record(&updater, &kind, sev, None, details).await;
            }
        })
    };
    let mut next_percent = 10u64;
    let mut last_event = Instant::now();
    let size = args.size;
    let nonce = job.nonce.clone();
    let mut on_report = move |r: Report| match r {
        Report::Resumed { offset } => {
            let _ = report_tx.send((
                "download_resumed".into(),
                severity::INFO,
                json!({"nonce": nonce, "offset": offset, "size": size}),
            ));
        }
        Report::Progress { bytes } => {
            let percent = bytes.saturating_mul(100) / size.max(1);
            if percent >= next_percent || last_event.elapsed() >= Duration::from_secs(5) {
                while next_percent <= percent {
                    next_percent += 10;
                }
                last_event = Instant::now();
                let _ = report_tx.send((
                    "download_progress".into(),
                    severity::INFO,
                    json!({"nonce": nonce, "bytes": bytes, "size": size, "percent": percent}),
                ));
            }
        }
        Report::Interrupted {
            bytes,
            error,
            retry_in,
        } => {
            let _ = report_tx.send((
                "download_interrupted".into(),
                severity::WARNING,
                json!({"nonce": nonce, "bytes": bytes, "size": size, "error": error,
                       "retry_in_ms": retry_in.as_millis() as u64}),
            ));
        }
    };

    let (downloaded, installed) = install_from_url(
        inner.updater.clone(),
        &dl,
        &inner.config.download,
        &mut on_report,
        false,
    )
    .await;
    drop(on_report);
    let _ = recorder.await;
    crate::service::memory::trim();

    // The command has finished, successfully or not: its partial file has no further use
    // (a new command for the same bundle starts a new download).
    if let Err(e) = tokio::fs::remove_file(&part).await {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %part.display(), error = %e, "cannot remove a partial download");
        }
    }
    let result = |status: &str, reason: Option<&str>, error: Option<&str>, details: Value| {
        result_json(
            device,
            &job.nonce,
            Some("install"),
            status,
            reason,
            error,
            details,
        )
    };
    match (downloaded, installed) {
        (_, Ok(Ok(outcome))) => {
            let (name, details) = match &outcome {
                InstallOutcome::Committed(m) => (
                    Some(&m.name),
                    json!({"outcome": "committed", "model": model_json(m)}),
                ),
                InstallOutcome::OnTrial(m) => (
                    Some(&m.name),
                    json!({"outcome": "on_trial", "model": model_json(m)}),
                ),
                InstallOutcome::AlreadyInstalled(m) => (
                    Some(&m.name),
                    json!({"outcome": "already_installed", "model": model_json(m)}),
                ),
                InstallOutcome::RolledBack { to, reason } => {
                    let details =
                        json!({"outcome": "rolled_back", "serving": to.as_ref().map(model_json)});
                    return result(
                        "failed",
                        Some("health"),
                        Some(&format!(
                            "the new model failed its health check and was rolled back: {reason}"
                        )),
                        details,
                    );
                }
            };
            tracing::info!(model = name.map(String::as_str), "fleet install finished");
            result("succeeded", None, None, details)
        }
        (Err(d), Ok(Err(_))) if !matches!(d, download::DownloadError::Abandoned) => {
            let reason = if d.content_is_wrong() {
                "download_content"
            } else {
                "download"
            };
            failure(inner, job, reason, &d.to_string()).await;
            result(
                "failed",
                Some(reason),
                Some(&d.to_string()),
                json!({"url": url}),
            )
        }
        (_, Ok(Err(e))) => {
            let text = error_chain(&e);
            failure(inner, job, e.refusal(), &text).await;
            result("failed", Some(e.refusal()), Some(&text), json!({}))
        }
        (_, Err(e)) => {
            let text = format!("install task failed: {e}");
            failure(inner, job, "internal", &text).await;
            result("failed", Some("internal"), Some(&text), json!({}))
        }
    }
}

async fn failure(inner: &Arc<Inner>, job: &PendingInstall, reason: &str, error: &str) {
    tracing::warn!(nonce = %job.nonce, reason, error, "fleet install failed");
    record(
        &inner.updater,
        "command_failed",
        severity::WARNING,
        None,
        json!({"command": "install", "nonce": job.nonce, "reason": reason, "error": error}),
    )
    .await;
}

fn error_chain(e: &UpdateError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
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

/// What [`install_from_url`] ends with: the download's outcome and the install's.
pub type UrlInstall = (
    Result<(), download::DownloadError>,
    Result<Result<InstallOutcome, UpdateError>, tokio::task::JoinError>,
);

/// Downloads `job` and installs it with `updater` (waiting for an install in progress, or
/// refusing as busy with `try_install`). Both outcomes are returned: when the bundle is
/// refused the download reports `Abandoned`; when the download failed the install fails on
/// the error it was handed. The partial file is left to the caller.
///
/// The bundle's header is judged while the file arrives ([`Updater::check_header`]): a bundle
/// this device refuses, or has already, is not downloaded further. The install, which takes
/// the updater's install lock, reads the complete file afterwards, so a slow transfer never
/// keeps a local install waiting (or busy).
pub async fn install_from_url(
    updater: Arc<Updater>,
    job: &download::Job,
    options: &download::Options,
    report: &mut (dyn FnMut(Report) + Send),
    try_install: bool,
) -> UrlInstall {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let judge = {
        let updater = updater.clone();
        tokio::task::spawn_blocking(move || {
            let mut input = ChannelReader::new(rx);
            let installed = updater.check_header(&mut input)?;
            if installed.is_none() {
                // The rest goes to the partial file; an error of the transfer ends here too.
                io::copy(&mut input, &mut io::sink())
                    .map_err(|e| BundleError::io("downloading the bundle", e))?;
            }
            Ok::<_, UpdateError>(installed)
        })
    };
    let downloaded = download::run(job, options, &tx, report).await;
    drop(tx);
    let judged = judge.await;
    match (downloaded, judged) {
        (Ok(()), Ok(Ok(None))) => {}
        (downloaded, Ok(Ok(Some(model)))) => {
            return (downloaded, Ok(Ok(InstallOutcome::AlreadyInstalled(model))))
        }
        (downloaded, Ok(Err(e))) => return (downloaded, Ok(Err(e))),
        (downloaded, Err(join)) => return (downloaded, Err(join)),
        (Err(d), Ok(Ok(None))) => {
            // The transfer failed after the header was accepted and the error did not reach
            // the reader (it had ended): fail like a stream that broke.
            let e = BundleError::io("downloading the bundle", io::Error::other(d.to_string()));
            return (Err(d), Ok(Err(e.into())));
        }
    }
    let part = job.part.clone();
    let installed = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&part)
            .map_err(|e| BundleError::io(format!("opening the download {}", part.display()), e))?;
        if try_install {
            updater.try_install(&mut file, &mut |_| {})
        } else {
            updater.install(&mut file, &mut |_| {})
        }
    })
    .await;
    (Ok(()), installed)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
