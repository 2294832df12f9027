//! Inference counters and latency histograms, rendered for `GET /metrics` (Prometheus text
//! format 0.0.4) and summarised for telemetry.
//!
//! Series are keyed by model name and served revision (manifest digest), so the labels
//! `model`, `version` and `digest` identify exactly which signed model answered. Requests for
//! a model that is not served are counted under `model=""`: a client cannot create series by
//! inventing names.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::api::AppState;
use super::guard::Reason;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Revisions kept per model name besides the one served (older series are dropped).
const MAX_REVISIONS_PER_MODEL: usize = 4;

/// The counters of one served revision.
#[derive(Debug)]
pub struct ModelMetrics {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// Manifest digest.
    pub digest: String,
    requests: AtomicU64,
    rejects: Vec<AtomicU64>,
    /// One per bucket of [`LATENCY_BUCKETS`], plus `+Inf`; not cumulative.
    buckets: Vec<AtomicU64>,
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
}

impl ModelMetrics {
    fn new(model: &str, version: &str, digest: &str) -> Self {
        Self {
            model: model.to_owned(),
            version: version.to_owned(),
            digest: digest.to_owned(),
            requests: AtomicU64::new(0),
            rejects: Reason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            buckets: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_sum_ns: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }
    }

    fn record(&self, outcome: Result<Duration, Reason>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(latency) => {
                let secs = latency.as_secs_f64();
                let at = LATENCY_BUCKETS
                    .iter()
                    .position(|&le| secs <= le)
                    .unwrap_or(LATENCY_BUCKETS.len());
                self.buckets[at].fetch_add(1, Ordering::Relaxed);
                self.latency_sum_ns.fetch_add(
                    u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                self.latency_count.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                let at = Reason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .expect("every reason is in Reason::ALL");
                self.rejects[at].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Refused or failed requests by stable reason name (zeros left out).
    pub fn rejects(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for (reason, n) in Reason::ALL.iter().zip(&self.rejects) {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            // Two reasons share the name `deadline`.
            match out.iter_mut().find(|(name, _)| *name == reason.name()) {
                Some(entry) => entry.1 += n,
                None => out.push((reason.name(), n)),
            }
        }
        out
    }

    /// The `q` quantile (0..=1) of successful inference latency, estimated from the histogram
    /// by linear interpolation inside the bucket; `None` before the first success.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        quantile(&counts, q)
    }

    /// Successful inferences and their mean latency.
    pub fn latency_mean(&self) -> Option<Duration> {
        let n = self.latency_count.load(Ordering::Relaxed);
        (n > 0).then(|| Duration::from_nanos(self.latency_sum_ns.load(Ordering::Relaxed) / n))
    }
}

/// Every revision's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By model name, then by manifest digest (looked up with borrowed names: no allocation
    /// on the request path).
    models: RwLock<HashMap<String, HashMap<String, Arc<ModelMetrics>>>>,
    unknown: RwLock<Option<Arc<ModelMetrics>>>,
    /// Latency bucket totals at the previous [`Metrics::snapshot`], for per-interval
    /// percentiles.
    last_buckets: Mutex<Vec<u64>>,
    /// Model runs by [`RunThread`], in its order.
    runs: [AtomicU64; 3],
}

/// The thread a model's run took ([`Metrics::count_run`], label `thread` of
/// `mintd_inference_runs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunThread {
    /// The async worker that read the request (models within `api.inline_max_us`).
    Inline,
    /// The request's own thread after it left the async workers (tokio's `block_in_place`):
    /// fixed-shape models whose typical run fits the deadline many times.
    InPlace,
    /// Handed to the blocking pool, where the deadline answers for a run that does not end.
    Blocking,
}

impl RunThread {
    /// Every thread, in the order of [`Metrics`]' counters.
    pub const ALL: [RunThread; 3] = [RunThread::Inline, RunThread::InPlace, RunThread::Blocking];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RunThread::Inline => "inline",
            RunThread::InPlace => "in_place",
            RunThread::Blocking => "blocking",
        }
    }
}

/// Totals over every model for telemetry ([`Metrics::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Inference requests since start (of the revisions still tracked).
    pub requests: u64,
    /// Of which answered.
    pub ok: u64,
    /// Refused or failed, by reason name, since start.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Latency percentiles (50, 90, 99) of the requests answered since the previous
    /// snapshot, in milliseconds; `None` without any.
    pub latency_ms: Option<[f64; 3]>,
    /// Drift score and whether a `drift_detected` stands, by model (filled by the caller
    /// that has the drift watch; empty from [`Metrics::snapshot`]).
    pub drift: BTreeMap<String, (f64, bool)>,
}

/// Which revision answered (or none: the model is not served).
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version.
    pub version: &'a str,
    /// Manifest digest.
    pub digest: &'a str,
}

impl Metrics {
    /// Counts one request that reached the engine's thread, by that thread.
    pub fn count_run(&self, thread: RunThread) {
        self.runs[thread as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Runs counted so far on `thread`.
    pub fn runs(&self, thread: RunThread) -> u64 {
        self.runs[thread as usize].load(Ordering::Relaxed)
    }

    /// Counts one request: its latency if it succeeded, its reason if not.
    pub fn record(&self, served: Option<Served<'_>>, outcome: Result<Duration, Reason>) {
        match served {
            Some(s) => self.series(s).record(outcome),
            None => {
                let existing = read(&self.unknown).clone();
                let series = match existing {
                    Some(s) => s,
                    None => write(&self.unknown)
                        .get_or_insert_with(|| Arc::new(ModelMetrics::new("", "", "")))
                        .clone(),
                };
                series.record(outcome);
            }
        }
    }

    /// Every revision's series, by model then version.
    pub fn all(&self) -> Vec<Arc<ModelMetrics>> {
        let mut out: Vec<Arc<ModelMetrics>> = read(&self.models)
            .values()
            .flat_map(|revisions| revisions.values().cloned())
            .collect();
        if let Some(u) = read(&self.unknown).clone() {
            out.push(u);
        }
        out.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        out
    }

    /// Totals over every series, with latency percentiles of the interval since the
    /// previous snapshot (the fleet link takes one per telemetry message).
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::default();
        let mut buckets = vec![0u64; LATENCY_BUCKETS.len() + 1];
        for m in self.all() {
            out.requests += m.requests();
            out.ok += m.latency_count.load(Ordering::Relaxed);
            for (reason, n) in m.rejects() {
                *out.rejects.entry(reason).or_default() += n;
            }
            for (total, b) in buckets.iter_mut().zip(&m.buckets) {
                *total += b.load(Ordering::Relaxed);
            }
        }
        let mut last = self.last_buckets.lock().unwrap_or_else(|p| p.into_inner());
        let interval: Vec<u64> = buckets
            .iter()
            .zip(last.iter().chain(std::iter::repeat(&0)))
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        *last = buckets;
        out.latency_ms = [0.5, 0.9, 0.99]
            .map(|q| quantile(&interval, q).map(|d| d.as_secs_f64() * 1e3))
            .into_iter()
            .collect::<Option<Vec<f64>>>()
            .map(|v| [v[0], v[1], v[2]]);
        out
    }

    fn series(&self, s: Served<'_>) -> Arc<ModelMetrics> {
        if let Some(m) = read(&self.models)
            .get(s.model)
            .and_then(|revisions| revisions.get(s.digest))
        {
            return m.clone();
        }
        let mut models = write(&self.models);
        let revisions = models.entry(s.model.to_owned()).or_default();
        let fresh = revisions
            .entry(s.digest.to_owned())
            .or_insert_with(|| Arc::new(ModelMetrics::new(s.model, s.version, s.digest)))
            .clone();
        // Bound the revisions kept per model: drop the oldest idle ones.
        let mut older: Vec<(u64, String)> = revisions
            .iter()
            .filter(|(d, _)| d.as_str() != s.digest)
            .map(|(d, m)| (m.requests(), d.clone()))
            .collect();
        if older.len() > MAX_REVISIONS_PER_MODEL {
            older.sort();
            for (_, d) in older.iter().take(older.len() - MAX_REVISIONS_PER_MODEL) {
                revisions.remove(d);
            }
        }
        fresh
    }
}

/// Builds the Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(value, &mut self.out);
        self.out.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Renders the inference families of `metrics` into `x`.
pub fn render_inference(metrics: &Metrics, x: &mut Exposition) {
    let all = metrics.all();
    x.family(
        "mintd_inference_requests_total",
        "counter",
        "Inference requests, by the model revision that was asked (model=\"\" when none is served under that name).",
    );
    for m in &all {
        x.sample(
            "mintd_inference_requests_total",
            &labels(m),
            m.requests() as f64,
        );
    }
    x.family(
        "mintd_inference_rejects_total",
        "counter",
        "Inference requests refused or failed, by reason (the \"reason\" of the error body).",
    );
    for m in &all {
        let rejects = m.rejects();
        let mut names: Vec<&'static str> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.dedup();
        for name in names {
            let n = rejects
                .iter()
                .find(|(r, _)| *r == name)
                .map_or(0, |(_, n)| *n);
            let mut l = labels(m);
            l.push(("reason", name));
            x.sample("mintd_inference_rejects_total", &l, n as f64);
        }
    }
    x.family(
        "mintd_inference_latency_seconds",
        "histogram",
        "Time from the request's head to its encoded answer, successful inferences.",
    );
    for m in &all {
        if m.model.is_empty() {
            continue;
        }
        let mut cumulative = 0u64;
        for (i, bucket) in m.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let mut l = labels(m);
            l.push(("le", &le));
            x.sample(
                "mintd_inference_latency_seconds_bucket",
                &l,
                cumulative as f64,
            );
        }
        x.sample(
            "mintd_inference_latency_seconds_sum",
            &labels(m),
            m.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        );
        x.sample(
            "mintd_inference_latency_seconds_count",
            &labels(m),
            m.latency_count.load(Ordering::Relaxed) as f64,
        );
    }
}

/// `GET /metrics`: the Prometheus text exposition of everything mintd counts.
pub fn reply(state: &AppState) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Full::new(Bytes::from(render(state))))
        .expect("static response parts are valid")
}

/// The whole exposition.
pub fn render(state: &AppState) -> String {
    let mut x = Exposition::default();
    x.family(
        "mintd_up",
        "gauge",
        "1 when mintd finished its start-up recovery.",
    );
    x.sample(
        "mintd_up",
        &[("version", env!("CARGO_PKG_VERSION"))],
        f64::from(u8::from(
            state.ready.load(std::sync::atomic::Ordering::Acquire),
        )),
    );
    x.family(
        "mintd_uptime_seconds",
        "gauge",
        "Seconds since mintd started.",
    );
    x.sample(
        "mintd_uptime_seconds",
        &[],
        state.started.elapsed().as_secs_f64().floor(),
    );
    if let Some(rss) = resident_bytes() {
        x.family(
            "mintd_resident_memory_bytes",
            "gauge",
            "Resident set size of the mintd process.",
        );
        x.sample("mintd_resident_memory_bytes", &[], rss as f64);
    }
    x.family(
        "mintd_model_info",
        "gauge",
        "1 per served model, labelled with the signed revision that answers.",
    );
    for m in state.registry.all() {
        let i = &m.installed;
        let sequence = i.rev.sequence.to_string();
        let phase = state
            .updater
            .models()
            .into_iter()
            .find(|r| r.name == i.name)
            .map(|r| match r.candidate {
                Some(c) if c.rev.digest == i.rev.digest => c.phase.name().to_owned(),
                _ => "committed".to_owned(),
            })
            .unwrap_or_default();
        x.sample(
            "mintd_model_info",
            &[
                ("model", &i.name),
                ("version", &i.manifest.version),
                ("digest", &i.rev.digest),
                ("sequence", &sequence),
                ("phase", &phase),
            ],
            1.0,
        );
    }
    x.family(
        "mintd_model_typical_run_seconds",
        "gauge",
        "The engine's estimate of one run of the served model (decaying average, raised at \
         once by a slower run); absent before the first run.",
    );
    for m in state.registry.all() {
        if let Some(typical) = m.engine.typical_run() {
            let i = &m.installed;
            x.sample(
                "mintd_model_typical_run_seconds",
                &[
                    ("model", &i.name),
                    ("version", &i.manifest.version),
                    ("digest", &i.rev.digest),
                ],
                typical.as_secs_f64(),
            );
        }
    }
    render_inference(&state.metrics, &mut x);
    x.family(
        "mintd_inference_runs_total",
        "counter",
        "Requests handed to a model, by thread: inline on the async worker that read the \
         request (models within api.inline_max_us), in_place on the request's own thread \
         after it left the async workers (fixed-shape models well within their deadline), \
         or on the blocking pool.",
    );
    for thread in RunThread::ALL {
        x.sample(
            "mintd_inference_runs_total",
            &[("thread", thread.label())],
            state.metrics.runs(thread) as f64,
        );
    }
    x.family(
        "mintd_inference_in_flight",
        "gauge",
        "Inferences holding a slot (at most api.max_concurrency).",
    );
    x.sample(
        "mintd_inference_in_flight",
        &[],
        state.guards.admission.in_flight() as f64,
    );
    x.family(
        "mintd_inference_queued",
        "gauge",
        "Requests waiting for a slot (at most api.queue_depth).",
    );
    x.sample(
        "mintd_inference_queued",
        &[],
        state.guards.admission.waiting() as f64,
    );
    let drift = state.drift.snapshot();
    x.family(
        "mintd_model_drift_score",
        "gauge",
        "Largest drift of a model's inputs and outputs from the manifest's reference statistics, in reference standard deviations (see monitor.drift_threshold).",
    );
    for d in &drift {
        if let Some(score) = d.score {
            x.sample(
                "mintd_model_drift_score",
                &[
                    ("model", &d.model),
                    ("version", &d.version),
                    ("digest", &d.digest),
                ],
                score,
            );
        }
    }
    x.family(
        "mintd_model_drifting",
        "gauge",
        "1 while a drift_detected event stands for the model.",
    );
    for d in &drift {
        x.sample(
            "mintd_model_drifting",
            &[
                ("model", &d.model),
                ("version", &d.version),
                ("digest", &d.digest),
            ],
            f64::from(u8::from(d.drifting)),
        );
    }
    x.family(
        "mintd_tensor_drift_score",
        "gauge",
        "Drift score of one input or output tensor.",
    );
    for d in &drift {
        for t in &d.tensors {
            x.sample(
                "mintd_tensor_drift_score",
                &[
                    ("model", &d.model),
                    ("version", &d.version),
                    ("digest", &d.digest),
                    ("tensor", &t.name),
                    ("side", t.side),
                ],
                t.score,
            );
        }
    }
    x.family(
        "mintd_monitor_events_dropped_total",
        "counter",
        "Drift and rate events that did not fit the event queue.",
    );
    x.sample(
        "mintd_monitor_events_dropped_total",
        &[],
        state.drift.dropped_events() as f64,
    );
    let w = &state.store_watch;
    let load =
        |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    x.family(
        "mintd_store_verifications_total",
        "counter",
        "Completed re-verifications of the model store.",
    );
    x.sample("mintd_store_verifications_total", &[], load(&w.passes));
    x.family(
        "mintd_store_verified_bytes_total",
        "counter",
        "Bytes hashed by store re-verification.",
    );
    x.sample("mintd_store_verified_bytes_total", &[], load(&w.bytes));
    x.family(
        "mintd_store_last_verification_timestamp_seconds",
        "gauge",
        "When the last re-verification completed (0 = not yet).",
    );
    x.sample(
        "mintd_store_last_verification_timestamp_seconds",
        &[],
        load(&w.last_pass_unix),
    );
    x.family(
        "mintd_tamper_detected_total",
        "counter",
        "Store entries found changed since install (each is never loaded again).",
    );
    x.sample("mintd_tamper_detected_total", &[], load(&w.tampered));
    x.finish()
}

/// Resident set size from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes an integer and reads no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The `q` quantile (0..=1) of a histogram over [`LATENCY_BUCKETS`] (plus `+Inf`), by
/// linear interpolation inside the bucket; `None` when it is empty.
fn quantile(counts: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let low = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            // Above the last bound: report the last bound (the histogram cannot say more).
            let high = LATENCY_BUCKETS.get(i).copied().unwrap_or(low);
            let into = (rank - seen as f64) / n as f64;
            return Some(Duration::from_secs_f64(low + (high - low) * into));
        }
        seen += n;
    }
    None
}

fn labels(m: &ModelMetrics) -> Vec<(&str, &str)> {
    vec![
        ("model", m.model.as_str()),
        ("version", m.version.as_str()),
        ("digest", m.digest.as_str()),
    ]
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Counters only: a lock poisoned by a panic elsewhere still holds valid numbers.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Served<'static> = Served {
        model: "mlp",
        version: "1.0",
        digest: "abc",
    };

    #[test]
    fn counts_requests_rejects_and_latency() {
        let m = Metrics::default();
        m.record(Some(S), Ok(Duration::from_micros(300)));
        m.record(Some(S), Ok(Duration::from_millis(3)));
        m.record(Some(S), Err(Reason::Shape));
        m.record(Some(S), Err(Reason::DeadlineWaiting));
        m.record(Some(S), Err(Reason::DeadlineRunning));
        m.record(None, Err(Reason::UnknownModel));
        let all = m.all();
        assert_eq!(all.len(), 2);
        let unknown = &all[0];
        assert_eq!(unknown.model, "");
        assert_eq!(unknown.rejects(), vec![("unknown_model", 1)]);
        let mlp = &all[1];
        assert_eq!(mlp.requests(), 5);
        assert_eq!(mlp.rejects(), vec![("shape", 1), ("deadline", 2)]);
        let p50 = mlp.latency_quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_micros(250) && p50 <= Duration::from_micros(500),
            "{p50:?}"
        );
        let p99 = mlp.latency_quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_micros(2500) && p99 <= Duration::from_millis(5),
            "{p99:?}"
        );
        assert_eq!(mlp.latency_mean().unwrap(), Duration::from_micros(1650));
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.record(Some(S), Ok(Duration::from_micros(300)));
        m.record(Some(S), Err(Reason::Range));
        m.record(Some(S), Ok(Duration::from_secs(9)));
        let mut x = Exposition::default();
        render_inference(&m, &mut x);
        let text = x.finish();
        let l = "model=\"mlp\",version=\"1.0\",digest=\"abc\"";
        for line in [
            format!("mintd_inference_requests_total{{{l}}} 3"),
            format!("mintd_inference_rejects_total{{{l},reason=\"range\"}} 1"),
            format!("mintd_inference_rejects_total{{{l},reason=\"shape\"}} 0"),
            format!("mintd_inference_latency_seconds_bucket{{{l},le=\"0.00025\"}} 0"),
            format!("mintd_inference_latency_seconds_bucket{{{l},le=\"0.0005\"}} 1"),
            format!("mintd_inference_latency_seconds_bucket{{{l},le=\"5\"}} 1"),
            format!("mintd_inference_latency_seconds_bucket{{{l},le=\"+Inf\"}} 2"),
            format!("mintd_inference_latency_seconds_count{{{l}}} 2"),
            "# TYPE mintd_inference_latency_seconds histogram".to_owned(),
        ] {
            assert!(
                text.lines().any(|x| x == line),
                "missing {line:?} in\n{text}"
            );
        }
        // `deadline` is one label value although two reasons carry it.
        assert_eq!(text.matches("reason=\"deadline\"").count(), 1);
    }

    #[test]
    fn snapshots_total_every_model_and_take_percentiles_per_interval() {
        let m = Metrics::default();
        m.record(Some(S), Ok(Duration::from_micros(300)));
        m.record(Some(S), Err(Reason::Shape));
        m.record(None, Err(Reason::UnknownModel));
        let first = m.snapshot();
        assert_eq!(first.requests, 3);
        assert_eq!(first.ok, 1);
        assert_eq!(
            first
                .rejects
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>(),
            vec![("shape", 1), ("unknown_model", 1)]
        );
        let [p50, _, p99] = first.latency_ms.expect("one success");
        assert!(p50 > 0.25 && p50 <= 0.5 && p99 <= 0.5, "{first:?}");
        // Nothing answered since: no percentiles, totals unchanged.
        let quiet = m.snapshot();
        assert_eq!(quiet.latency_ms, None);
        assert_eq!(quiet.requests, 3);
        // Only the new interval counts.
        m.record(Some(S), Ok(Duration::from_millis(40)));
        let [p50, _, _] = m.snapshot().latency_ms.unwrap();
        assert!(p50 > 25.0 && p50 <= 50.0, "{p50}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut x = Exposition::default();
        x.sample("m", &[("version", "1\"2\\3\n")], 1.5);
        assert_eq!(x.finish(), "m{version=\"1\\\"2\\\\3\\n\"} 1.5\n");
    }

    #[test]
    fn old_revisions_are_bounded() {
        let m = Metrics::default();
        for i in 0..20 {
            let digest = format!("d{i}");
            m.record(
                Some(Served {
                    model: "mlp",
                    version: "v",
                    digest: &digest,
                }),
                Ok(Duration::from_micros(1)),
            );
        }
        assert_eq!(m.all().len(), MAX_REVISIONS_PER_MODEL + 1);
        assert!(m.all().iter().any(|s| s.digest == "d19"));
    }
}
