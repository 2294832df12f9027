//! The JSON payloads of the topic contract, built by pure functions from what the daemon
//! knows (documented field by field in `docs/telemetry.md`). Every payload carries `device`,
//! `unix_ms` and an RFC 3339 `timestamp`, so that dashboards need no transformation.

use mint_updater::lifecycle::severity;
use mint_updater::{LifecycleEvent, ModelRecord};
use serde_json::{json, Map, Value};

use crate::service::metrics::Snapshot;
use mint_updater::state::OutboxStats;

/// The daemon's version, as published.
pub const DAEMON_VERSION: &str = env!("CARGO_PKG_VERSION");

/// RFC 3339 UTC with milliseconds for `unix_ms`.
pub fn timestamp(unix_ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stable, globally unique id of event `seq` of `device`: consumers de-duplicate by it.
pub fn event_id(device: &str, seq: u64) -> String {
    format!("{device}:{seq}")
}

/// The state name of a model record: the candidate's phase while one is on its way in,
/// else `committed`, or `none` when nothing is installed.
pub fn model_state(record: &ModelRecord) -> &'static str {
    match (&record.candidate, &record.committed) {
        (Some(c), _) => c.phase.name(),
        (None, Some(_)) => "committed",
        (None, None) => "none",
    }
}

/// The one-word health of the device for dashboards: `no_model`, `updating` (a candidate is
/// being installed or on trial) or `ok`.
pub fn health(models: &[ModelRecord]) -> &'static str {
    if models.iter().all(|m| m.serving().is_none()) {
        "no_model"
    } else if models.iter().any(|m| m.candidate.is_some()) {
        "updating"
    } else {
        "ok"
    }
}

/// What `status` says besides online/offline.
#[derive(Debug, Clone)]
pub struct StatusFacts<'a> {
    /// Device id.
    pub device: &'a str,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The model records.
    pub models: &'a [ModelRecord],
    /// The outbox.
    pub outbox: OutboxStats,
    /// Now.
    pub unix_ms: u64,
}

/// The retained `status` while online (the birth message, refreshed with each telemetry).
pub fn status_online(f: &StatusFacts<'_>) -> Value {
    let mut served = Map::new();
    for m in f.models {
        if let Some(rev) = m.serving() {
            served.insert(m.name.clone(), Value::String(rev.version.clone()));
        }
    }
    let primary = f
        .models
        .iter()
        .find_map(|m| m.serving().map(|r| (m.name.clone(), r.version.clone())));
    json!({
        "state": "online",
        "device": f.device,
        "daemon_version": DAEMON_VERSION,
        "protocol": "mint/v1",
        "uptime_secs": f.uptime_secs,
        "models": served,
        "model": primary.as_ref().map(|p| p.0.clone()),
        "model_version": primary.map(|p| p.1),
        "health": health(f.models),
        "outbox_messages": f.outbox.messages,
        "outbox_dropped": f.outbox.dropped,
        "unix_ms": f.unix_ms,
        "timestamp": timestamp(f.unix_ms),
    })
}

/// The retained `status` as Last Will (sent by the broker when the device vanishes), or on a
/// clean shutdown (`reason = "shutdown"`).
pub fn status_offline(device: &str, reason: &str, unix_ms: u64) -> Value {
    json!({
        "state": "offline",
        "device": device,
        "daemon_version": DAEMON_VERSION,
        "protocol": "mint/v1",
        "reason": reason,
        "unix_ms": unix_ms,
        "timestamp": timestamp(unix_ms),
    })
}

/// What the device says about its own security posture in `inventory`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Posture {
    /// `software` or `tpm`.
    pub attestation_mode: String,
    /// Keys trusted for bundles.
    pub bundle_keys: usize,
    /// Signatures a bundle needs.
    pub bundle_threshold: u32,
    /// Keys trusted for fleet commands.
    pub fleet_keys: usize,
    /// TLS to the broker.
    pub mqtt_tls: bool,
    /// A client certificate is presented to the broker.
    pub mqtt_client_cert: bool,
}

/// The retained `inventory`.
pub fn inventory(device: &str, models: &[ModelRecord], posture: &Posture, unix_ms: u64) -> Value {
    let models: Vec<Value> = models
        .iter()
        .map(|m| {
            let serving = m.serving();
            json!({
                "name": m.name,
                "version": serving.map(|r| r.version.clone()),
                "sequence": serving.map(|r| r.sequence),
                "digest": serving.map(|r| r.digest.clone()),
                "model_sha256": serving.map(|r| r.model_sha256.clone()),
                "state": model_state(m),
                "committed_version": m.committed.as_ref().map(|r| r.version.clone()),
                "candidate_version": m.candidate.as_ref().map(|c| c.rev.version.clone()),
                "highest_sequence": m.highest_sequence,
                "quarantined": m.quarantined.len(),
            })
        })
        .collect();
    let quarantined: usize = models
        .iter()
        .map(|m| m["quarantined"].as_u64().unwrap_or(0) as usize)
        .sum();
    json!({
        "device": device,
        "daemon_version": DAEMON_VERSION,
        "models": models,
        "attestation": {"mode": posture.attestation_mode},
        "posture": {
            "attestation_mode": posture.attestation_mode,
            "bundle_keys": posture.bundle_keys,
            "bundle_threshold": posture.bundle_threshold,
            "fleet_keys": posture.fleet_keys,
            "commands_accepted": posture.fleet_keys > 0,
            "mqtt_tls": posture.mqtt_tls,
            "mqtt_client_cert": posture.mqtt_client_cert,
            "quarantined_revisions": quarantined,
        },
        "unix_ms": unix_ms,
        "timestamp": timestamp(unix_ms),
    })
}

/// One `events` message.
pub fn event(device: &str, e: &LifecycleEvent) -> Value {
    json!({
        "id": event_id(device, e.id),
        "seq": e.id,
        "device": device,
        "type": e.kind,
        "severity": e.severity,
        "model": e.model,
        "details": e.details,
        "unix_ms": e.unix_ms,
        "timestamp": timestamp(e.unix_ms),
    })
}

/// Whether an event deserves an operator's attention (`warning` or `critical`).
pub fn is_alert(severity_name: &str) -> bool {
    severity_name == severity::WARNING || severity_name == severity::CRITICAL
}

/// What `telemetry` reports besides the inference counters.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Resident set size of the daemon, bytes (`None` where /proc is missing).
    pub rss_bytes: Option<u64>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Models served.
    pub models_served: usize,
    /// The outbox.
    pub outbox: OutboxStats,
    /// The newest event's sequence number.
    pub last_event_seq: u64,
}

/// One flat `telemetry` message: one level of keys, numbers only besides `device` and
/// `timestamp`, so Grafana's MQTT source, Node-RED and MQTT Explorer plot it as is.
pub fn telemetry(device: &str, m: &Snapshot, r: &Resources, unix_ms: u64) -> Value {
    let mut out = Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    put("device", json!(device));
    put("timestamp", json!(timestamp(unix_ms)));
    put("unix_ms", json!(unix_ms));
    put("uptime_secs", json!(r.uptime_secs));
    put("requests_total", json!(m.requests));
    put("requests_ok", json!(m.ok));
    put("rejects_total", json!(m.rejects.values().sum::<u64>()));
    for (reason, n) in &m.rejects {
        put(&format!("rejects_{reason}"), json!(n));
    }
    if let Some([p50, p90, p99]) = m.latency_ms {
        put("latency_p50_ms", json!(p50));
        put("latency_p90_ms", json!(p90));
        put("latency_p99_ms", json!(p99));
    }
    put(
        "drifting_models",
        json!(m.drift.values().filter(|(_, drifting)| *drifting).count()),
    );
    for (model, (score, _)) in &m.drift {
        put(
            &format!("drift_score_{model}"),
            json!((score * 1000.0).round() / 1000.0),
        );
    }
    if let Some(rss) = r.rss_bytes {
        put("rss_bytes", json!(rss));
    }
    put("models_served", json!(r.models_served));
    put("outbox_messages", json!(r.outbox.messages));
    put("outbox_bytes", json!(r.outbox.bytes));
    put("outbox_dropped", json!(r.outbox.dropped));
    put("last_event_seq", json!(r.last_event_seq));
    Value::Object(out)
}

/// The daemon's resident set size from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mint_updater::Revision;

    fn committed(name: &str, version: &str) -> ModelRecord {
        let mut r = ModelRecord::new(name);
        r.committed = Some(Revision {
            digest: "ab".repeat(32),
            version: version.into(),
            sequence: 3,
            created: 0,
            model_sha256: "cd".repeat(32),
        });
        r
    }

    #[test]
    fn telemetry_is_flat() {
        let mut m = Snapshot {
            requests: 5,
            ok: 3,
            latency_ms: Some([0.1, 0.2, 0.3]),
            ..Default::default()
        };
        m.rejects.insert("shape", 2);
        m.drift.insert("mlp".into(), (4.25, true));
        let r = Resources {
            rss_bytes: Some(1 << 20),
            uptime_secs: 9,
            models_served: 1,
            outbox: OutboxStats::default(),
            last_event_seq: 4,
        };
        let t = telemetry("d", &m, &r, 1_700_000_000_000);
        let obj = t.as_object().unwrap();
        for (k, v) in obj {
            assert!(!v.is_object() && !v.is_array(), "{k} is nested");
        }
        assert_eq!(t["rejects_shape"], 2);
        assert_eq!(t["rejects_total"], 2);
        assert_eq!(t["latency_p99_ms"], 0.3);
        assert_eq!(t["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(t["drift_score_mlp"], 4.25);
        assert_eq!(t["drifting_models"], 1);
    }

    #[test]
    fn status_and_inventory_name_the_served_model() {
        let models = [committed("m", "1.0")];
        let s = status_online(&StatusFacts {
            device: "d",
            uptime_secs: 1,
            models: &models,
            outbox: OutboxStats::default(),
            unix_ms: 0,
        });
        assert_eq!(s["state"], "online");
        assert_eq!(s["model"], "m");
        assert_eq!(s["model_version"], "1.0");
        assert_eq!(s["health"], "ok");
        let posture = Posture {
            attestation_mode: "software".into(),
            bundle_keys: 1,
            bundle_threshold: 1,
            fleet_keys: 0,
            mqtt_tls: false,
            mqtt_client_cert: false,
        };
        let inv = inventory("d", &models, &posture, 0);
        assert_eq!(inv["models"][0]["state"], "committed");
        assert_eq!(inv["models"][0]["sequence"], 3);
        assert_eq!(inv["attestation"]["mode"], "software");
        assert_eq!(health(&[]), "no_model");
    }

    #[test]
    fn event_ids_are_stable_and_name_the_device() {
        let mut e = LifecycleEvent::new("committed", "info", Some("m"), json!({}), 5);
        e.id = 42;
        let v = event("dev", &e);
        assert_eq!(v["id"], "dev:42");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["type"], "committed");
        assert_eq!(event("dev", &e), v);
    }
}
