//! `mintctl fleet watch`: a live table of the fleet from the retained `status` and
//! `inventory` of every device, its `telemetry` and its `events`.
//!
//! [`FleetView`] is the pure part; [`run`] feeds it from the broker
//! and prints.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::view::FleetView;
use super::{connect, now_ms, BrokerArgs};
use crate::fleet::topics;
use clap::Args;
use rumqttc::{Event, Incoming, QoS};

/// `mintctl fleet watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only this device (default: every device).
    #[arg(long)]
    pub device: Option<String>,
    /// Collect for this many seconds, then print the table once (default: a live table until
    /// interrupted).
    #[arg(long)]
    pub duration: Option<u64>,
}

/// Runs the watch.
pub fn run(args: &WatchArgs, json: bool) -> anyhow::Result<()> {
    let (client, mut connection) = connect(&args.broker, "watch")?;
    let device = args.device.as_deref().unwrap_or("+");
    for leaf in ["status", "inventory", "telemetry", "events"] {
        client.subscribe(
            format!("{}/{device}/{leaf}", topics::ROOT),
            QoS::AtLeastOnce,
        )?;
    }
    let mut view = FleetView::default();
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    // A live table on a terminal; with --duration (or into a pipe) only the final one.
    let tty = std::io::stdout().is_terminal() && args.duration.is_none();
    let mut dirty = false;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut stdout = std::io::stdout().lock();
    loop {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(500),
        };
        if deadline.is_some() && wait.is_zero() {
            break;
        }
        match connection.recv_timeout(wait.min(Duration::from_millis(500))) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                if let Some(row) = view.apply(&p.topic, &p.payload, now_ms()) {
                    if json {
                        writeln!(stdout, "{}", serde_json::to_string(row)?)?;
                        stdout.flush()?;
                    }
                    dirty = true;
                }
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "broker connection lost; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // A live table redraws at most twice a second, and only on a terminal.
        if !json && tty && dirty && last_draw.elapsed() >= Duration::from_millis(500) {
            write!(stdout, "\x1b[2J\x1b[H{}", view.table(now_ms()))?;
            stdout.flush()?;
            dirty = false;
            last_draw = Instant::now();
        }
    }
    if !json {
        if tty {
            write!(stdout, "\x1b[2J\x1b[H")?;
        }
        write!(stdout, "{}", view.table(now_ms()))?;
    }
    let _ = client.disconnect();
    Ok(())
}
