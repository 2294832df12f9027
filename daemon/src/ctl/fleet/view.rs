//! The fleet as `mintctl fleet watch` shows it: [`FleetView`] folds the messages of the
//! device topics (retained `status` and `inventory`, `telemetry`, `events`) into one row per
//! device. Pure (no broker, no clock: the caller passes the time), and fed with whatever any
//! publisher put on the broker, so it ignores what it cannot read instead of failing.
//!
//! Self-contained except for `crate::fleet::topics` (the fuzz crate builds this file with that
//! module alone: `fuzz/fuzz_targets/fleet_view.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

/// One device as the fleet sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceRow {
    /// Device id.
    pub device: String,
    /// Online per the retained status (`None` until one arrived).
    pub online: Option<bool>,
    /// The served model (first one when several).
    pub model: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Number of models served.
    pub models: usize,
    /// `ok`, `updating`, `no_model`.
    pub health: Option<String>,
    /// The daemon's version.
    pub daemon_version: Option<String>,
    /// The newest message from the device (unix ms; the retained status's own time for
    /// devices not heard from since the watch started).
    pub last_seen_ms: u64,
    /// What needs attention: offline, warnings and critical events since the watch started,
    /// messages the device's outbox had to drop.
    pub alerts: Vec<String>,
    #[serde(skip)]
    alert_events: BTreeSet<String>,
}

/// The fleet, folded from messages.
#[derive(Debug, Default)]
pub struct FleetView {
    /// Rows by device id.
    pub devices: BTreeMap<String, DeviceRow>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl FleetView {
    /// Folds one message in; returns the device's row if it changed. Messages that are not
    /// JSON objects on a device topic are ignored (a watch must survive any publisher).
    pub fn apply(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<&DeviceRow> {
        let (device, leaf) = crate::fleet::topics::parse(topic)?;
        if !matches!(leaf, "status" | "inventory" | "telemetry" | "events") {
            return None;
        }
        let v: Value = serde_json::from_slice(payload).ok()?;
        v.as_object()?;
        let row = self
            .devices
            .entry(device.to_owned())
            .or_insert_with(|| DeviceRow {
                device: device.to_owned(),
                ..Default::default()
            });
        let before = row.clone();
        let stamp = v.get("unix_ms").and_then(Value::as_u64);
        match leaf {
            "status" => {
                row.online = Some(v["state"] == "online");
                row.health = text(&v, "health").or(row.health.take());
                row.daemon_version = text(&v, "daemon_version").or(row.daemon_version.take());
                if v["state"] == "online" {
                    row.model = text(&v, "model");
                    row.version = text(&v, "model_version");
                }
                if let Some(d) = v.get("outbox_dropped").and_then(Value::as_u64) {
                    row.set_dropped(d);
                }
            }
            "inventory" => {
                let models = v["models"].as_array().cloned().unwrap_or_default();
                let served: Vec<&Value> =
                    models.iter().filter(|m| !m["version"].is_null()).collect();
                row.models = served.len();
                row.model = served.first().and_then(|m| text(m, "name"));
                row.version = served.first().and_then(|m| text(m, "version"));
            }
            "telemetry" => {
                if let Some(d) = v.get("outbox_dropped").and_then(Value::as_u64) {
                    row.set_dropped(d);
                }
            }
            "events" => {
                let severity = v["severity"].as_str().unwrap_or("");
                if severity == "warning" || severity == "critical" {
                    let kind = v["type"].as_str().unwrap_or("event");
                    row.alert_events.insert(format!("{severity}:{kind}"));
                }
            }
            _ => return None,
        }
        // A retained status is as old as its own timestamp; anything live is seen now.
        let seen = if leaf == "status" {
            stamp.unwrap_or(now_ms).min(now_ms)
        } else {
            now_ms
        };
        row.last_seen_ms = row.last_seen_ms.max(seen);
        row.refresh_alerts();
        (*row != before).then_some(&*row)
    }

    /// The table as text, one line per device.
    pub fn table(&self, now_ms: u64) -> String {
        let mut rows = vec![[
            "DEVICE".to_owned(),
            "ONLINE".to_owned(),
            "MODEL".to_owned(),
            "VERSION".to_owned(),
            "LAST SEEN".to_owned(),
            "ALERTS".to_owned(),
        ]];
        for r in self.devices.values() {
            rows.push([
                r.device.clone(),
                match r.online {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "?".into(),
                },
                r.model.clone().unwrap_or_else(|| "-".into()),
                r.version.clone().unwrap_or_else(|| "-".into()),
                ago(now_ms.saturating_sub(r.last_seen_ms)),
                if r.alerts.is_empty() {
                    "-".into()
                } else {
                    r.alerts.join(", ")
                },
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        if self.devices.is_empty() {
            out.push_str("(no device has reported yet)\n");
        }
        out
    }
}

impl DeviceRow {
    fn set_dropped(&mut self, dropped: u64) {
        self.alert_events
            .retain(|a| !a.starts_with("outbox dropped"));
        if dropped > 0 {
            self.alert_events
                .insert(format!("outbox dropped {dropped}"));
        }
    }

    fn refresh_alerts(&mut self) {
        let mut alerts = Vec::new();
        if self.online == Some(false) {
            alerts.push("offline".to_owned());
        }
        if let Some(h) = self.health.as_deref().filter(|h| *h != "ok") {
            alerts.push(h.to_owned());
        }
        alerts.extend(self.alert_events.iter().cloned());
        self.alerts = alerts;
    }
}

/// "3 s ago", "5 min ago", "2 h ago", "4 d ago".
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(view: &mut FleetView, topic: &str, v: Value, now: u64) -> bool {
        view.apply(topic, v.to_string().as_bytes(), now).is_some()
    }

    #[test]
    fn rows_fold_status_inventory_events_and_telemetry() {
        let mut view = FleetView::default();
        assert!(put(
            &mut view,
            "mint/v1/a/status",
            json!({"state": "online", "model": "m", "model_version": "1", "health": "ok", "unix_ms": 1000}),
            5000
        ));
        let row = &view.devices["a"];
        assert_eq!(row.online, Some(true));
        assert_eq!(
            row.last_seen_ms, 1000,
            "a retained status is as old as it says"
        );
        assert!(row.alerts.is_empty());
        put(
            &mut view,
            "mint/v1/a/inventory",
            json!({"models": [{"name": "m", "version": "2"}, {"name": "n", "version": null}]}),
            6000,
        );
        assert_eq!(view.devices["a"].version.as_deref(), Some("2"));
        assert_eq!(view.devices["a"].models, 1);
        put(
            &mut view,
            "mint/v1/a/events",
            json!({"severity": "warning", "type": "install_refused"}),
            7000,
        );
        put(
            &mut view,
            "mint/v1/a/events",
            json!({"severity": "info", "type": "committed"}),
            7000,
        );
        put(
            &mut view,
            "mint/v1/a/telemetry",
            json!({"outbox_dropped": 3}),
            8000,
        );
        assert_eq!(
            view.devices["a"].alerts,
            ["outbox dropped 3", "warning:install_refused"]
        );
        put(
            &mut view,
            "mint/v1/a/status",
            json!({"state": "offline", "unix_ms": 9000}),
            9500,
        );
        let row = &view.devices["a"];
        assert_eq!(row.online, Some(false));
        assert_eq!(row.alerts[0], "offline");
        assert_eq!(
            row.version.as_deref(),
            Some("2"),
            "offline keeps what was known"
        );
        let table = view.table(10_000);
        assert!(table.starts_with("DEVICE"), "{table}");
        assert!(table.contains("a       NO"), "{table}");
    }

    #[test]
    fn hostile_messages_are_ignored() {
        let mut view = FleetView::default();
        for (topic, payload) in [
            ("mint/v1/a/status", &b"not json"[..]),
            ("mint/v1/a/status", b"[1,2]"),
            ("mint/v1/a/status", b"\"online\""),
            ("mint/v1/fleet/cmd", b"{}"),
            ("mint/v1/a/cmd", b"{}"),
            ("other/topic", b"{}"),
            ("mint/v1/a/status", &[0xff, 0xfe][..]),
        ] {
            assert!(view.apply(topic, payload, 0).is_none(), "{topic}");
        }
        assert!(view.devices.is_empty(), "{:?}", view.devices);
        assert!(view.table(0).contains("DEVICE"));
    }
}
