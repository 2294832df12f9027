//! `mintctl fleet events`: the fleet's events as they arrive, de-duplicated by event id (a
//! device resends what was not acknowledged before a reconnect, with the same id).

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use rumqttc::{Event, Incoming, QoS};
use serde_json::Value;

use super::{connect, BrokerArgs};
use crate::fleet::topics;

/// `mintctl fleet events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only this device (default: every device).
    #[arg(long)]
    pub device: Option<String>,
    /// Only events of at least this severity: info, warning, critical.
    #[arg(long, default_value = "info", value_parser = ["info", "warning", "critical"])]
    pub min_severity: String,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

fn rank(severity: &str) -> u8 {
    match severity {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    }
}

/// Remembers the ids seen; `true` the first time an event id shows up.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashSet<String>,
}

impl Dedup {
    /// Whether `event` is new (an event without an id is always shown).
    pub fn first(&mut self, event: &Value) -> bool {
        match event.get("id").and_then(Value::as_str) {
            Some(id) => self.seen.insert(id.to_owned()),
            None => true,
        }
    }
}

/// One human line for an event.
pub fn line(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let details = e.get("details").map(Value::to_string).unwrap_or_default();
    format!(
        "{} {} {:<8} {:<20} {} {}",
        s("timestamp"),
        s("id"),
        s("severity"),
        s("type"),
        s("model"),
        details
    )
}

/// Runs the event stream.
pub fn run(args: &EventsArgs, json: bool) -> anyhow::Result<()> {
    let (client, mut connection) = connect(&args.broker, "events")?;
    let device = args.device.as_deref().unwrap_or("+");
    client.subscribe(
        format!("{}/{device}/events", topics::ROOT),
        QoS::AtLeastOnce,
    )?;
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let min = rank(&args.min_severity);
    let mut dedup = Dedup::default();
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    while args.count.is_none_or(|c| printed < c) {
        let wait = match deadline {
            Some(d) if d <= Instant::now() => break,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500)),
            None => Duration::from_millis(500),
        };
        match connection.recv_timeout(wait) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                let Ok(event) = serde_json::from_slice::<Value>(&p.payload) else {
                    tracing::warn!(topic = %p.topic, "an event that is not JSON ignored");
                    continue;
                };
                if !event.is_object()
                    || rank(event["severity"].as_str().unwrap_or("")) < min
                    || !dedup.first(&event)
                {
                    continue;
                }
                if json {
                    writeln!(stdout, "{event}")?;
                } else {
                    writeln!(stdout, "{}", line(&event))?;
                }
                stdout.flush()?;
                printed += 1;
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "broker connection lost; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let _ = client.disconnect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicates_by_id_are_shown_once() {
        let mut d = Dedup::default();
        let e = json!({"id": "a:1", "type": "x"});
        assert!(d.first(&e));
        assert!(!d.first(&e));
        assert!(d.first(&json!({"id": "a:2"})));
        assert!(d.first(&json!({"type": "no id"})));
        assert!(d.first(&json!({"type": "no id"})));
    }

    #[test]
    fn lines_survive_missing_fields() {
        let l = line(&json!({"id": "d:1", "type": "committed", "severity": "info"}));
        assert!(l.contains("d:1") && l.contains("committed"), "{l}");
        assert!(line(&json!({})).starts_with("- -"));
    }
}
