//! Counters of the inference API, read by the fleet link's telemetry: requests, successes,
//! refusals by reason, and a latency histogram whose percentiles are taken (and reset) once
//! per telemetry interval. Lock-free on the success path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram buckets: bucket `i` holds latencies up to `BASE_US * 2^(i/4)` microseconds
/// (four buckets per doubling, so a percentile is within 19 % of the truth), from 10 µs to
/// about 11 minutes.
const BUCKETS: usize = 4 * 26;
const BASE_US: f64 = 10.0;

/// The inference API's counters.
#[derive(Debug)]
pub struct Metrics {
    requests: AtomicU64,
    ok: AtomicU64,
    rejects: Mutex<BTreeMap<&'static str, u64>>,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            rejects: Mutex::new(BTreeMap::new()),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What [`Metrics::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Inference requests since start.
    pub requests: u64,
    /// Of which answered.
    pub ok: u64,
    /// Refused or failed, by reason name, since start.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Latency percentiles (50, 90, 99) of the answered requests since the previous
    /// snapshot, in milliseconds (upper bound of the histogram bucket); `None` without
    /// requests.
    pub latency_ms: Option<[f64; 3]>,
}

fn bucket_upper_us(i: usize) -> f64 {
    BASE_US * 2f64.powf(i as f64 / 4.0)
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= BASE_US {
        return 0;
    }
    let i = (4.0 * (us / BASE_US).log2()).ceil() as usize;
    i.min(BUCKETS - 1)
}

impl Metrics {
    /// Counts one answered request that took `latency`.
    pub fn ok(&self, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.latency[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused or failed request.
    pub fn reject(&self, reason: &'static str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut rejects = self.rejects.lock().unwrap_or_else(|e| e.into_inner());
        *rejects.entry(reason).or_default() += 1;
    }

    /// The counters, and the latency percentiles since the previous snapshot (the histogram
    /// is reset).
    pub fn snapshot(&self) -> Snapshot {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let latency_ms = (total > 0).then(|| {
            let pick = |q: f64| {
                let rank = ((q * total as f64).ceil() as u64).max(1);
                let mut seen = 0;
                for (i, c) in counts.iter().enumerate() {
                    seen += c;
                    if seen >= rank {
                        return (bucket_upper_us(i) / 1000.0 * 1000.0).round() / 1000.0;
                    }
                }
                bucket_upper_us(BUCKETS - 1) / 1000.0
            };
            [pick(0.5), pick(0.9), pick(0.99)]
        });
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            rejects: self
                .rejects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            latency_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_interval_and_reset() {
        let m = Metrics::default();
        assert_eq!(m.snapshot().latency_ms, None);
        for _ in 0..90 {
            m.ok(Duration::from_micros(100));
        }
        for _ in 0..10 {
            m.ok(Duration::from_millis(50));
        }
        m.reject("rate_limited");
        m.reject("rate_limited");
        m.reject("shape");
        let s = m.snapshot();
        assert_eq!((s.requests, s.ok), (103, 100));
        assert_eq!(s.rejects["rate_limited"], 2);
        assert_eq!(s.rejects["shape"], 1);
        let [p50, p90, p99] = s.latency_ms.unwrap();
        assert!((0.1..0.12).contains(&p50), "{p50}");
        assert!((0.1..0.12).contains(&p90), "{p90}");
        assert!((50.0..60.0).contains(&p99), "{p99}");
        // The histogram restarts; the counters do not.
        let s = m.snapshot();
        assert_eq!(s.latency_ms, None);
        assert_eq!(s.requests, 103);
    }

    #[test]
    fn extreme_latencies_land_in_the_end_buckets() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(100_000)), BUCKETS - 1);
        assert!(bucket_upper_us(bucket_of(Duration::from_millis(3))) >= 3000.0);
    }
}
