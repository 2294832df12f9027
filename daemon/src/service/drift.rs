//! Drift and request-rate anomalies of the served models.
//!
//! Each served revision keeps exponentially weighted statistics of every input and output
//! tensor (mean and mean of squares of the values of recent requests) and compares them with
//! the reference statistics the operator signed into the manifest (`bundle create` records
//! them over the golden cases). The drift score of a tensor is the larger of
//!
//! - the shift of its recent mean from the reference mean, in reference standard deviations;
//! - `|ln(recent std / reference std)|`, a change of spread either way;
//!
//! and a model's score is the largest of its tensors'. Crossing `monitor.drift_threshold`
//! (after `monitor.drift_min_requests` requests) records one `drift_detected` event; falling
//! below 80 % of it records `drift_cleared`. Request counts per 10 s window are compared with
//! the model's usual rate, and a window above `monitor.rate_spike_factor` times it records one
//! `request_rate_spike` event per episode.
//!
//! Events leave through a bounded channel: observing never blocks a request, and an event
//! that does not fit is counted and logged instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mint_config::Monitor as MonitorConfig;
use mint_updater::lifecycle::{severity, LifecycleEvent};
use mint_updater::manifest::{ReferenceStats, TensorStats};
use serde_json::json;
use tokio::sync::mpsc;

use crate::tensor::Moments;

/// Requests the running statistics average plainly; after them the newest request weighs
/// [`EWMA_WEIGHT`], so that about the last this many count.
const WINDOW_REQUESTS: u64 = 64;
/// Weight of the newest request in the running statistics once warmed up.
const EWMA_WEIGHT: f64 = 1.0 / WINDOW_REQUESTS as f64;
/// A drifting model is cleared when its score falls below this share of the threshold.
const CLEAR_RATIO: f64 = 0.8;
/// Length of a request-rate window.
const WINDOW: Duration = Duration::from_secs(10);
/// Weight of the newest window in the usual rate.
const RATE_WEIGHT: f64 = 0.2;
/// Windows a model must have seen before a spike can be judged.
const RATE_WARMUP_WINDOWS: u32 = 3;
/// Events waiting to be recorded; more are dropped (and counted).
pub const EVENT_QUEUE: usize = 64;
/// Largest score reported (a constant reference makes any change infinitely many standard
/// deviations away).
const MAX_SCORE: f64 = 1e6;
/// Relative margin of the quick threshold tests: a score this close to a threshold is
/// computed in full.
const MARGIN: f64 = 1e-9;

/// Whether a tensor is a model input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A request tensor.
    Input,
    /// A model output.
    Output,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// Running statistics of one tensor against its reference.
#[derive(Debug, Clone)]
struct TensorWatch {
    name: String,
    side: Side,
    reference: TensorStats,
    /// Requests seen.
    requests: u64,
    mean: f64,
    mean_sq: f64,
    /// What is added to both spreads, so that a reference without spread still has a
    /// scale: a millionth of its magnitude.
    floor: f64,
    /// One over the mean shift's unit (the reference's standard deviation, at least
    /// `floor`), and one over the reference's spread plus `floor`: taken once, because every
    /// request judges the tensor, and a multiplication takes a few cycles where a division
    /// takes a dozen or more.
    per_scale: f64,
    per_reference_spread: f64,
}

impl TensorWatch {
    fn new(side: Side, reference: &TensorStats) -> Self {
        let floor = 1e-6
            * reference
                .mean
                .abs()
                .max(reference.max - reference.min)
                .max(1.0);
        Self {
            name: reference.name.clone(),
            side,
            reference: reference.clone(),
            requests: 0,
            mean: 0.0,
            mean_sq: 0.0,
            floor,
            per_scale: reference.std.max(floor).recip(),
            per_reference_spread: (reference.std + floor).recip(),
        }
    }

    fn observe(&mut self, m: Moments) {
        if m.count == 0 || !m.sum.is_finite() || !m.sum_sq.is_finite() {
            return;
        }
        self.requests += 1;
        // A plain average until the window is full, then exponential weights.
        let w = if self.requests < WINDOW_REQUESTS {
            (self.requests as f64).recip()
        } else {
            EWMA_WEIGHT
        };
        let per_value = (m.count as f64).recip();
        self.mean += w * (m.sum * per_value - self.mean);
        self.mean_sq += w * (m.sum_sq * per_value - self.mean_sq);
    }

    fn std(&self) -> f64 {
        (self.mean_sq - self.mean * self.mean).max(0.0).sqrt()
    }

    /// The larger of the mean shift in reference standard deviations and the log-ratio of
    /// the spreads.
    fn score(&self) -> f64 {
        let (shift, ratio) = self.shift_and_ratio();
        let score = shift.max(ratio.ln().abs());
        if score.is_finite() {
            score.min(MAX_SCORE)
        } else {
            MAX_SCORE
        }
    }

    /// The mean's shift in reference standard deviations, and the ratio of the spreads
    /// (floored) whose `|ln|` is the spread's score.
    fn shift_and_ratio(&self) -> (f64, f64) {
        let r = &self.reference;
        let shift = (self.mean - r.mean).abs() * self.per_scale;
        let ratio = (self.std() + self.floor) * self.per_reference_spread;
        (shift, ratio)
    }

    /// Whether the score is surely below `limit` (`exp_limit` = e^limit), told without the
    /// logarithm: `|ln r| < t` when `e^-t < r < e^t`. Margins keep rounding out of it; a
    /// NaN answers `false`, and the caller then computes the score itself.
    fn surely_below(&self, limit: f64, exp_limit: f64) -> bool {
        let (shift, ratio) = self.shift_and_ratio();
        shift < limit * (1.0 - MARGIN)
            && ratio < exp_limit * (1.0 - MARGIN)
            && ratio * exp_limit > 1.0 + MARGIN
    }

    /// Whether the score is surely at least `limit` (at most [`MAX_SCORE`]), as
    /// [`TensorWatch::surely_below`] tells the opposite.
    fn surely_at_least(&self, limit: f64, exp_limit: f64) -> bool {
        let (shift, ratio) = self.shift_and_ratio();
        (shift.is_finite() && shift > limit * (1.0 + MARGIN))
            || (ratio.is_finite() && ratio > exp_limit * (1.0 + MARGIN))
            || ratio * exp_limit < 1.0 - MARGIN
    }
}

/// Requests per window against the usual rate.
#[derive(Debug, Clone)]
struct RateWatch {
    window_start: Instant,
    in_window: u64,
    usual: f64,
    windows: u32,
    spiking: bool,
}

impl RateWatch {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            in_window: 0,
            usual: 0.0,
            windows: 0,
            spiking: false,
        }
    }

    /// Counts one request; `Some((count, usual))` when it starts a spike.
    fn observe(&mut self, now: Instant, factor: f64, min: u64) -> Option<(u64, f64)> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            let closed = (elapsed.as_secs_f64() / WINDOW.as_secs_f64()).floor() as u32;
            // The window that ended, then the empty ones after it.
            self.usual += RATE_WEIGHT * (self.in_window as f64 - self.usual);
            let idle = closed.saturating_sub(1).min(64);
            self.usual *= (1.0 - RATE_WEIGHT).powi(idle as i32);
            if self.spiking && (self.in_window as f64) < factor * self.usual.max(1.0) {
                self.spiking = false;
            }
            self.windows = self.windows.saturating_add(closed);
            self.window_start += WINDOW * closed;
            self.in_window = 0;
        }
        self.in_window += 1;
        let over = self.in_window >= min && self.in_window as f64 > factor * self.usual.max(1.0);
        if over && !self.spiking && self.windows >= RATE_WARMUP_WINDOWS {
            self.spiking = true;
            return Some((self.in_window, self.usual));
        }
        None
    }
}

/// What is watched of one served revision.
#[derive(Debug)]
struct ModelWatch {
    digest: String,
    version: String,
    tensors: Vec<TensorWatch>,
    requests: u64,
    drifting: bool,
    rate: RateWatch,
}

impl ModelWatch {
    /// Starts watching the reference's tensors, once a reference is known.
    fn watch_tensors(&mut self, reference: Option<&ReferenceStats>) {
        if self.tensors.is_empty() {
            if let Some(r) = reference {
                self.tensors = r
                    .inputs
                    .iter()
                    .map(|t| TensorWatch::new(Side::Input, t))
                    .chain(r.outputs.iter().map(|t| TensorWatch::new(Side::Output, t)))
                    .collect();
            }
        }
    }

    fn score(&self) -> Option<(f64, &TensorWatch)> {
        self.tensors
            .iter()
            .filter(|t| t.requests > 0)
            .map(|t| (t.score(), t))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// The drift score of one tensor, for `/metrics` and telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorScore {
    /// Tensor name.
    pub name: String,
    /// `input` or `output`.
    pub side: &'static str,
    /// Its score.
    pub score: f64,
}

/// The drift state of one served model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDrift {
    /// Model name.
    pub model: String,
    /// Version served.
    pub version: String,
    /// Manifest digest served.
    pub digest: String,
    /// Requests observed.
    pub requests: u64,
    /// The model's score (largest of its tensors'); `None` without reference statistics or
    /// requests.
    pub score: Option<f64>,
    /// Whether a `drift_detected` event is standing.
    pub drifting: bool,
    /// Per tensor.
    pub tensors: Vec<TensorScore>,
}

/// Drift and rate watch of every served model.
pub struct DriftMonitor {
    config: MonitorConfig,
    /// e^threshold and e^(clearing level), for the quick tests of every request.
    exp_threshold: f64,
    exp_clear: f64,
    /// By model name. A device serves a handful of models: a list searched by name costs
    /// less per request than hashing the name.
    models: Mutex<Vec<(String, ModelWatch)>>,
    events: mpsc::Sender<LifecycleEvent>,
    dropped: std::sync::atomic::AtomicU64,
}

impl DriftMonitor {
    /// A monitor whose events go to `events` (see [`EVENT_QUEUE`]).
    pub fn new(config: MonitorConfig, events: mpsc::Sender<LifecycleEvent>) -> Self {
        Self {
            exp_threshold: config.drift_threshold.exp(),
            exp_clear: (config.drift_threshold * CLEAR_RATIO).exp(),
            config,
            models: Mutex::new(Vec::new()),
            events,
            dropped: 0.into(),
        }
    }

    /// Counts one request to `name` (served at `digest`) for the rate watch.
    pub fn request(&self, name: &str, version: &str, digest: &str, now: Instant) {
        let spike = {
            let mut models = self.lock();
            let (factor, min) = (
                self.config.rate_spike_factor,
                self.config.rate_spike_min_requests,
            );
            Self::with_watch(
                &mut models,
                name,
                (version, digest),
                None,
                || now,
                |watch| watch.rate.observe(now, factor, min),
            )
        };
        if let Some((count, usual)) = spike {
            tracing::warn!(model = name, requests = count, usual, "request rate spike");
            self.emit(LifecycleEvent::new(
                "request_rate_spike",
                severity::WARNING,
                Some(name),
                json!({
                    "version": version,
                    "requests_in_window": count,
                    "window_seconds": WINDOW.as_secs(),
                    "usual_per_window": round3(usual),
                    "factor": self.config.rate_spike_factor,
                }),
                unix_ms(),
            ));
        }
    }

    /// Folds the moments of one successful inference's inputs and outputs into the running
    /// statistics of `name` and records an event if its drift state changed.
    pub fn observe(
        &self,
        name: &str,
        version: &str,
        digest: &str,
        reference: Option<&ReferenceStats>,
        tensors: &[(Side, &str, Moments)],
    ) {
        let Some(reference) = reference else {
            return;
        };
        let change = {
            let mut models = self.lock();
            Self::with_watch(
                &mut models,
                name,
                (version, digest),
                Some(reference),
                Instant::now,
                |watch| {
                    watch.requests += 1;
                    for (side, tensor, moments) in tensors {
                        if let Some(t) = watch
                            .tensors
                            .iter_mut()
                            .find(|t| t.side == *side && t.name == *tensor)
                        {
                            t.observe(*moments);
                        }
                    }
                    self.judge(watch)
                },
            )
        };
        if let Some(event) = change {
            self.emit(LifecycleEvent {
                model: Some(name.to_owned()),
                ..event
            });
        }
    }

    /// The drift state of every watched model, by name.
    pub fn snapshot(&self) -> Vec<ModelDrift> {
        let models = self.lock();
        let mut out: Vec<ModelDrift> = models
            .iter()
            .map(|(name, w)| ModelDrift {
                model: name.clone(),
                version: w.version.clone(),
                digest: w.digest.clone(),
                requests: w.requests,
                score: w.score().map(|(s, _)| s),
                drifting: w.drifting,
                tensors: w
                    .tensors
                    .iter()
                    .filter(|t| t.requests > 0)
                    .map(|t| TensorScore {
                        name: t.name.clone(),
                        side: t.side.name(),
                        score: t.score(),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }

    /// Events that could not be queued since start.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn judge(&self, watch: &mut ModelWatch) -> Option<LifecycleEvent> {
        if watch.requests < self.config.drift_min_requests {
            return None;
        }
        let threshold = self.config.drift_threshold;
        let clear = threshold * CLEAR_RATIO;
        // Most requests change nothing: tell so without a logarithm per tensor.
        let mut seen = watch.tensors.iter().filter(|t| t.requests > 0);
        if !watch.drifting && seen.all(|t| t.surely_below(threshold, self.exp_threshold)) {
            return None;
        }
        let mut seen = watch.tensors.iter().filter(|t| t.requests > 0);
        if watch.drifting
            && clear <= MAX_SCORE
            && seen.any(|t| t.surely_at_least(clear, self.exp_clear))
        {
            return None;
        }
        let (score, worst) = watch.score()?;
        let details = |t: &TensorWatch| {
            json!({
                "version": watch.version,
                "score": round3(score),
                "threshold": threshold,
                "requests": watch.requests,
                "tensor": t.name,
                "side": t.side.name(),
                "recent_mean": round3(t.mean),
                "reference_mean": round3(t.reference.mean),
                "recent_std": round3(t.std()),
                "reference_std": round3(t.reference.std),
            })
        };
        if !watch.drifting && score > threshold {
            let event = LifecycleEvent::new(
                "drift_detected",
                severity::WARNING,
                None,
                details(worst),
                unix_ms(),
            );
            tracing::warn!(
                score,
                threshold,
                tensor = worst.name,
                "model inputs or outputs drifted"
            );
            watch.drifting = true;
            return Some(event);
        }
        if watch.drifting && score < threshold * CLEAR_RATIO {
            let event = LifecycleEvent::new(
                "drift_cleared",
                severity::INFO,
                None,
                details(worst),
                unix_ms(),
            );
            watch.drifting = false;
            return Some(event);
        }
        None
    }

    /// Runs `f` on the watch of `name` at `digest`; a new revision starts from scratch (its
    /// reference and traffic are its own). Called on every request: one lookup when the
    /// revision is known, and the name is copied only when a revision is first seen.
    fn with_watch<R>(
        models: &mut Vec<(String, ModelWatch)>,
        name: &str,
        revision: (&str, &str),
        reference: Option<&ReferenceStats>,
        now: impl FnOnce() -> Instant,
        f: impl FnOnce(&mut ModelWatch) -> R,
    ) -> R {
        let (version, digest) = revision;
        let fresh = || ModelWatch {
            digest: digest.to_owned(),
            version: version.to_owned(),
            tensors: Vec::new(),
            requests: 0,
            drifting: false,
            rate: RateWatch::new(now()),
        };
        let at = match models.iter().position(|(n, _)| n == name) {
            Some(at) => {
                if models[at].1.digest != digest {
                    models[at].1 = fresh();
                }
                at
            }
            None => {
                models.push((name.to_owned(), fresh()));
                models.len() - 1
            }
        };
        let watch = &mut models[at].1;
        watch.watch_tensors(reference);
        f(watch)
    }

    fn emit(&self, event: LifecycleEvent) {
        if let Err(e) = self.events.try_send(event) {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "monitor event dropped: the event queue is full");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, ModelWatch)>> {
        // The state is counters only: one poisoned by a panic elsewhere is still usable.
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, mean: f64, std: f64) -> TensorStats {
        TensorStats {
            name: name.into(),
            count: 1000,
            mean,
            std,
            min: mean - 3.0 * std,
            max: mean + 3.0 * std,
        }
    }

    fn reference() -> ReferenceStats {
        ReferenceStats {
            inputs: vec![stats("x", 0.0, 1.0)],
            outputs: vec![stats("y", 5.0, 2.0)],
        }
    }

    fn config() -> MonitorConfig {
        MonitorConfig {
            drift_min_requests: 20,
            ..MonitorConfig::default()
        }
    }

    /// Moments of `n` values alternating `mean ± std` (so their mean and spread are exact).
    fn moments(mean: f64, std: f64, n: u64) -> Moments {
        let mut m = Moments::default();
        for i in 0..n {
            let x = if i % 2 == 0 { mean + std } else { mean - std };
            m.count += 1;
            m.sum += x;
            m.sum_sq += x * x;
        }
        m
    }

    fn feed(monitor: &DriftMonitor, x: (f64, f64), y: (f64, f64), times: usize) {
        let r = reference();
        for _ in 0..times {
            monitor.observe(
                "m",
                "1.0",
                "d1",
                Some(&r),
                &[
                    (Side::Input, "x", moments(x.0, x.1, 16)),
                    (Side::Output, "y", moments(y.0, y.1, 4)),
                ],
            );
        }
    }

    fn drain(rx: &mut mpsc::Receiver<LifecycleEvent>) -> Vec<LifecycleEvent> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[test]
    fn the_quick_tests_never_contradict_the_score() {
        let references = [
            stats("x", 0.0, 1.0),
            stats("y", 5.0, 0.0),
            stats("z", -3.0, 1e-3),
        ];
        let (mut below, mut at_least) = (0, 0);
        for r in &references {
            for mean in [
                -1e300, -50.0, -3.0, -1.0, 0.0, 0.5, 2.9, 3.0, 3.1, 5.0, 1e300,
            ] {
                for spread in [0.0, 1e-9, 0.05, 0.5, 1.0, 2.0, 20.0, 1e150] {
                    let mut t = TensorWatch::new(Side::Input, r);
                    t.observe(moments(mean, spread, 16));
                    let score = t.score();
                    for limit in [0.1, 2.4, 3.0, 100.0] {
                        if t.surely_below(limit, limit.exp()) {
                            assert!(score < limit, "{mean} {spread} {limit}: {score}");
                            below += 1;
                        }
                        if t.surely_at_least(limit, limit.exp()) {
                            assert!(score >= limit, "{mean} {spread} {limit}: {score}");
                            at_least += 1;
                        }
                    }
                }
            }
        }
        // Both answers occur, so the assertions above were reached.
        assert!(below > 50 && at_least > 50, "{below} {at_least}");
    }

    #[test]
    fn traffic_like_the_reference_does_not_drift() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        feed(&monitor, (0.0, 1.0), (5.0, 2.0), 200);
        let snap = monitor.snapshot();
        assert_eq!(snap.len(), 1);
        let score = snap[0].score.expect("scored");
        assert!(score < 0.01, "score {score}");
        assert!(!snap[0].drifting);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_shifted_input_is_detected_once_then_cleared() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        feed(&monitor, (0.0, 1.0), (5.0, 2.0), 50);
        // Inputs move 4 reference standard deviations away.
        feed(&monitor, (4.0, 1.0), (5.0, 2.0), 400);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e.kind, "drift_detected");
        assert_eq!(e.severity, "warning");
        assert_eq!(e.model.as_deref(), Some("m"));
        assert_eq!(e.details["tensor"], "x");
        assert_eq!(e.details["side"], "input");
        assert!(e.details["score"].as_f64().unwrap() > 3.0);
        let snap = monitor.snapshot();
        assert!(snap[0].drifting);
        assert!((snap[0].score.unwrap() - 4.0).abs() < 0.1, "{snap:?}");
        // Back to normal: one clearing event.
        feed(&monitor, (0.0, 1.0), (5.0, 2.0), 600);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, "drift_cleared");
        assert!(!monitor.snapshot()[0].drifting);
    }

    #[test]
    fn a_collapsed_output_spread_is_drift() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        // The model answers the same value whatever it is asked (std 2.0 -> 0.0001).
        feed(&monitor, (0.0, 1.0), (5.0, 0.0001), 100);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].details["tensor"], "y");
        assert_eq!(events[0].details["side"], "output");
    }

    #[test]
    fn nothing_is_judged_before_the_minimum_requests() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        feed(&monitor, (100.0, 1.0), (5.0, 2.0), 19);
        assert!(drain(&mut rx).is_empty());
        feed(&monitor, (100.0, 1.0), (5.0, 2.0), 1);
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[test]
    fn a_constant_reference_gives_a_bounded_score() {
        let (tx, _rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        let r = ReferenceStats {
            inputs: vec![TensorStats {
                name: "x".into(),
                count: 10,
                mean: 0.0,
                std: 0.0,
                min: 0.0,
                max: 0.0,
            }],
            outputs: vec![],
        };
        monitor.observe(
            "m",
            "1",
            "d",
            Some(&r),
            &[(Side::Input, "x", moments(1.0, 0.0, 4))],
        );
        let score = monitor.snapshot()[0].score.unwrap();
        assert!(score.is_finite() && score <= MAX_SCORE && score > 1000.0);
    }

    #[test]
    fn a_new_revision_starts_from_scratch() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        feed(&monitor, (4.0, 1.0), (5.0, 2.0), 30);
        assert_eq!(drain(&mut rx).len(), 1);
        let r = reference();
        monitor.observe(
            "m",
            "2.0",
            "d2",
            Some(&r),
            &[(Side::Input, "x", moments(0.0, 1.0, 16))],
        );
        let snap = monitor.snapshot();
        assert_eq!(snap[0].digest, "d2");
        assert_eq!(snap[0].version, "2.0");
        assert_eq!(snap[0].requests, 1);
        assert!(!snap[0].drifting);
    }

    #[test]
    fn without_reference_statistics_nothing_is_watched() {
        let (tx, _rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(config(), tx);
        monitor.observe(
            "m",
            "1",
            "d",
            None,
            &[(Side::Input, "x", moments(1.0, 0.0, 4))],
        );
        assert!(monitor.snapshot().is_empty());
    }

    #[test]
    fn rate_spike_is_reported_once_per_episode() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(
            MonitorConfig {
                rate_spike_min_requests: 50,
                ..MonitorConfig::default()
            },
            tx,
        );
        let t0 = Instant::now();
        // 20 requests in each of the windows: the usual rate.
        let usual = |windows: std::ops::Range<u32>| {
            for w in windows {
                for i in 0..20u64 {
                    monitor.request("m", "1", "d", t0 + WINDOW * w + Duration::from_millis(i));
                }
            }
        };
        usual(0..5);
        assert!(drain(&mut rx).is_empty());
        // Then 300 in one window: one event, not 250.
        for i in 0..300u64 {
            monitor.request("m", "1", "d", t0 + WINDOW * 5 + Duration::from_millis(i));
        }
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, "request_rate_spike");
        assert_eq!(events[0].details["window_seconds"], 10);
        assert!(events[0].details["requests_in_window"].as_u64().unwrap() >= 50);
        // The next windows are quiet again; a later spike is a new episode.
        usual(6..9);
        assert!(drain(&mut rx).is_empty());
        for i in 0..2000u64 {
            monitor.request("m", "1", "d", t0 + WINDOW * 9 + Duration::from_millis(i));
        }
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[test]
    fn a_slow_start_is_not_a_spike_before_warm_up() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let monitor = DriftMonitor::new(MonitorConfig::default(), tx);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            monitor.request("m", "1", "d", t0 + Duration::from_millis(i));
        }
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_full_event_queue_counts_drops_instead_of_blocking() {
        let (tx, _rx) = mpsc::channel(1);
        let monitor = DriftMonitor::new(config(), tx);
        let r = reference();
        for (i, digest) in ["a", "b", "c"].iter().enumerate() {
            for _ in 0..25 {
                monitor.observe(
                    &format!("m{i}"),
                    "1",
                    digest,
                    Some(&r),
                    &[(Side::Input, "x", moments(9.0, 1.0, 4))],
                );
            }
        }
        assert_eq!(monitor.dropped_events(), 2);
    }
}
