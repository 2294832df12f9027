//! Fleet link benchmark (not a test): sustained durable publish rate through the outbox to a
//! local mosquitto, next to rumqttc publishing the same messages without an outbox (the
//! reference, same broker, same run), and the outbox's own cost per message.
//!
//! `cargo bench -p mintd --bench fleet` (env BENCH_MESSAGES, default 20000; BENCH_PAYLOAD,
//! default 200 bytes). Prints a table; asserts nothing except that every message arrived.
//! Figures go to docs/performance.md.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mint_updater::state::{OutboxBounds, OutboxMessage, StateDb};
use mint_updater::updater::{
    HealthProbe, HealthReport, InstalledModel, Measurer, Updater, UpdaterConfig,
};
use mint_updater::{Limits, TrustStore};
use mintd::fleet::link::{LinkParts, LinkSettings};
use mintd::fleet::payload::Posture;
use mintd::fleet::topics::Topics;
use mintd::fleet::{FleetHandle, Link};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct NoProbe;
impl HealthProbe for NoProbe {
    fn check(&self, _: &InstalledModel) -> Result<HealthReport, String> {
        Err("not used".into())
    }
}
impl Measurer for NoProbe {
    fn measure(&self, _: &InstalledModel) -> Result<(), String> {
        Ok(())
    }
}

/// Counts messages on `topic` (a subscriber on its own thread, QoS 1).
fn counter(port: u16, topic: &str) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new(format!("bench-sub-{topic}"), "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(options, 64);
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let c = count.clone();
    std::thread::spawn(move || {
        let _keep = client;
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = tx.send(());
                }
                Ok(Event::Incoming(Incoming::Publish(_))) => {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => return,
                _ => {}
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("suback");
    count
}

fn wait_count(count: &AtomicU64, n: u64) {
    let start = Instant::now();
    while count.load(Ordering::Relaxed) < n {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {n} messages arrived",
            count.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// rumqttc alone: N QoS 1 publishes, until the last PUBACK. The event loop runs in its own
/// task (as in the link), the publisher awaits the request channel (capacity 1024, 200 in
/// flight, as in the link).
fn reference(rt: &tokio::runtime::Runtime, port: u16, n: u64, payload: &[u8]) -> Duration {
    let arrived = counter(port, "bench/ref");
    let payload = payload.to_vec();
    let elapsed = rt.block_on(async move {
        let mut options = MqttOptions::new("bench-ref", "127.0.0.1", port);
        options.set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            let mut done = Some(done_tx);
            let mut acks = 0;
            loop {
                match eventloop.poll().await.expect("reference connection") {
                    Event::Incoming(Incoming::ConnAck(_)) => {
                        if let Some(c) = connected.take() {
                            let _ = c.send(());
                        }
                    }
                    Event::Incoming(Incoming::PubAck(_)) => {
                        acks += 1;
                        if acks == n {
                            if let Some(d) = done.take() {
                                let _ = d.send(Instant::now());
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        connected_rx.await.unwrap();
        let start = Instant::now();
        for _ in 0..n {
            client
                .publish("bench/ref", QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        done_rx.await.unwrap() - start
    });
    wait_count(&arrived, n);
    elapsed
}

/// Through the fleet link: N messages queued on the handle, until the outbox is empty again
/// (every message stored durably, published, acknowledged and removed).
fn durable(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    port: u16,
    n: u64,
    payload: &[u8],
) -> Duration {
    let arrived = counter(port, "mint/v1/bench/telemetry");
    let updater = Arc::new(
        Updater::open(
            UpdaterConfig {
                state_dir: dir.join("state"),
                trust: TrustStore::empty(1),
                limits: Limits::default(),
                device_targets: vec!["generic".into()],
                retain: 1,
                health_timeout: Duration::from_secs(5),
                trial_max_restarts: 3,
                trial_cap: (100, 100),
                on_serve: None,
            },
            Arc::new(NoProbe),
            Arc::new(NoProbe),
        )
        .expect("updater"),
    );
    let settings = LinkSettings {
        topics: Topics::new("bench"),
        host: "127.0.0.1".into(),
        port,
        client_id: "bench".into(),
        keepalive: Duration::from_secs(30),
        tls: None,
        telemetry_interval: Duration::from_secs(3600),
        bounds: OutboxBounds {
            max_messages: n + 100,
            max_bytes: 1 << 40,
        },
        ha_discovery: false,
        posture: Posture {
            attestation_mode: "software".into(),
            bundle_keys: 0,
            bundle_threshold: 1,
            fleet_keys: 0,
            mqtt_tls: false,
            mqtt_client_cert: false,
        },
    };
    let (handle, inbox) = FleetHandle::new("bench");
    let parts = LinkParts {
        updater: updater.clone(),
        metrics: Arc::default(),
        drift: None,
        commands: Arc::new(|_, _| Box::pin(async { None })),
        runtime: rt.handle().clone(),
        started: Instant::now(),
    };
    let link = Link::start(settings, parts, inbox).expect("link");
    // The first telemetry (at start) says the link is up.
    wait_count(&arrived, 1);
    let before = arrived.load(Ordering::Relaxed);
    let payload = payload.to_vec();
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            handle
                .publish("mint/v1/bench/telemetry".into(), payload.clone())
                .await
                .unwrap();
        }
    });
    wait_count(&arrived, before + n);
    while updater.state().outbox_stats().unwrap().messages > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    link.stop();
    elapsed
}

/// The outbox alone: push (durable) and remove, per message, in batches of `batch`.
fn outbox_cost(dir: &Path, n: u64, batch: usize, payload: &[u8]) -> (f64, f64) {
    let db = StateDb::open(&dir.join(format!("outbox-{batch}.redb"))).unwrap();
    let bounds = OutboxBounds {
        max_messages: n + 1,
        max_bytes: 1 << 40,
    };
    let msgs: Vec<OutboxMessage> = (0..batch)
        .map(|_| OutboxMessage {
            destination: "mint/v1/bench/telemetry".into(),
            payload: payload.to_vec(),
        })
        .collect();
    let rounds = (n as usize).div_ceil(batch);
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..rounds {
        ids.extend(db.outbox_push(&msgs, bounds, None).unwrap().ids);
    }
    let push = start.elapsed().as_secs_f64() * 1e6 / (rounds * batch) as f64;
    let start = Instant::now();
    for chunk in ids.chunks(batch) {
        db.outbox_remove(chunk, false).unwrap();
    }
    let remove = start.elapsed().as_secs_f64() * 1e6 / (rounds * batch) as f64;
    (push, remove)
}

fn main() {
    let n: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let size: usize = std::env::var("BENCH_PAYLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let payload = vec![b'x'; size];
    let dir = tempfile::Builder::new()
        .prefix("mint-bench-fleet")
        .tempdir_in("/tmp")
        .unwrap();
    let broker = Mosquitto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!("fleet link: {n} messages of {size} bytes, QoS 1, mosquitto on loopback");
    let reference = reference(&rt, broker.port, n, &payload);
    let durable = durable(&rt, dir.path(), broker.port, n, &payload);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("{:<48} {:>10} {:>12}", "", "msg/s", "µs/msg");
    println!(
        "{:<48} {:>10.0} {:>12.1}",
        "rumqttc alone (reference, no outbox)",
        rate(reference),
        reference.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "{:<48} {:>10.0} {:>12.1}",
        "fleet link: outbox (durable) → publish → PUBACK",
        rate(durable),
        durable.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "durable / reference: {:.2}× the time; outbox adds {:.1} µs per message end to end",
        durable.as_secs_f64() / reference.as_secs_f64(),
        (durable.as_secs_f64() - reference.as_secs_f64()) * 1e6 / n as f64
    );
    let goal = 5000.0;
    println!(
        "goal: durable rate >= {goal:.0} msg/s: {} ({:.0} msg/s)",
        if rate(durable) >= goal {
            "PASS"
        } else {
            "MISS"
        },
        rate(durable)
    );
    println!("\noutbox alone (redb, push = durable commit, remove = non-durable commit):");
    println!(
        "{:<12} {:>14} {:>14}",
        "batch", "push µs/msg", "remove µs/msg"
    );
    for batch in [1usize, 16, 256] {
        let count = if batch == 1 { n.min(2000) } else { n };
        let (push, remove) = outbox_cost(dir.path(), count, batch, &payload);
        println!("{batch:<12} {push:>14.1} {remove:>14.1}");
    }
}
