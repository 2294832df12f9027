//! The MQTT topic contract against a real mosquitto: birth `status` online (retained, with
//! versions and uptime), retained `inventory` after a real install, `events` with stable
//! ids, flat `telemetry`, Home Assistant discovery, a `cmd/result` for every command, the
//! Last Will `offline` when mintd is killed with SIGKILL, and `offline` on a clean stop.
//! Also TLS with client certificates made by `openssl`, and a client certificate from an
//! untrusted CA refused by the broker.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;
use support::broker::{mqtt_config, Broker, Certs, Watcher};
use support::Workspace;

const WAIT: Duration = Duration::from_secs(20);

fn has(seen: &[support::broker::Seen], leaf: &str, pred: impl Fn(&Value) -> bool) -> bool {
    seen.iter()
        .filter(|s| s.topic.ends_with(&format!("/{leaf}")))
        .any(|s| serde_json::from_slice(&s.payload).is_ok_and(|v| pred(&v)))
}

#[test]
fn topic_contract_status_inventory_events_telemetry_lwt() {
    let ws = Workspace::new();
    let broker = Broker::start();
    let watcher = Watcher::new(&broker, "#");
    let mut config = ws.config();
    mqtt_config(&mut config, &broker, None);
    config.set("mqtt", "home_assistant_discovery", "true");
    let mut daemon = config.start();

    // Birth: retained status online with versions and uptime.
    watcher.wait_for("status online", WAIT, |s| {
        has(s, "status", |v| v["state"] == "online")
    });
    let status = watcher.last_json("status").unwrap();
    assert_eq!(status["device"], "test-device");
    assert_eq!(status["daemon_version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_secs"].is_u64(), "{status}");
    assert!(status["timestamp"].is_string());
    assert_eq!(status["health"], "no_model");

    // A real install shows in inventory and status, and as events.
    let bundle = ws.bundle("m", "1.0", 1).create();
    daemon.install(&bundle).expect("install");
    watcher.wait_for("inventory with m 1.0 committed", WAIT, |s| {
        has(s, "inventory", |v| {
            v["models"][0]["name"] == "m"
                && v["models"][0]["version"] == "1.0"
                && v["models"][0]["state"] == "committed"
        })
    });
    let inv = watcher.last_json("inventory").unwrap();
    let m = &inv["models"][0];
    assert_eq!(m["sequence"], 1);
    assert_eq!(m["digest"].as_str().unwrap().len(), 64, "{inv}");
    assert_eq!(inv["attestation"]["mode"], "software");
    assert_eq!(inv["posture"]["bundle_keys"], 1);
    watcher.wait_for("status naming the model", WAIT, |s| {
        has(s, "status", |v| {
            v["model"] == "m" && v["model_version"] == "1.0"
        })
    });
    watcher.wait_for("committed event", WAIT, |s| {
        has(s, "events", |v| v["type"] == "committed")
    });
    let local: Vec<Value> = daemon.events();
    let events: Vec<Value> = watcher.on("events").iter().map(|s| s.json()).collect();
    let mut seqs = BTreeSet::new();
    for e in &events {
        let seq = e["seq"].as_u64().unwrap();
        assert_eq!(e["id"], format!("test-device:{seq}"), "{e}");
        for k in ["type", "severity", "timestamp", "details", "unix_ms"] {
            assert!(!e[k].is_null(), "event without {k}: {e}");
        }
        seqs.insert(seq);
    }
    // Every local event up to the committed one went out, in the same words.
    for l in local.iter().take_while(|l| l["kind"] != "committed") {
        let id = l["id"].as_u64().unwrap();
        let e = events
            .iter()
            .find(|e| e["seq"] == id)
            .unwrap_or_else(|| panic!("event {id} not published; published: {seqs:?}"));
        assert_eq!(e["type"], l["kind"]);
    }

    // Telemetry: flat JSON with a timestamp.
    watcher.wait_for("telemetry", WAIT, |s| {
        s.iter().any(|m| m.topic.ends_with("/telemetry"))
    });
    let t = watcher.last_json("telemetry").unwrap();
    for (k, v) in t.as_object().unwrap() {
        assert!(
            !v.is_object() && !v.is_array(),
            "telemetry key {k} is nested: {t}"
        );
    }
    for k in [
        "timestamp",
        "requests_total",
        "rejects_total",
        "uptime_secs",
        "outbox_dropped",
        "rss_bytes",
    ] {
        assert!(t.get(k).is_some(), "telemetry without {k}: {t}");
    }

    // Home Assistant discovery, retained.
    watcher.wait_for("discovery", WAIT, |s| {
        s.iter()
            .filter(|m| m.topic.starts_with("homeassistant/"))
            .count()
            >= 5
    });

    // A command gets a result on cmd/result (garbage: refused by any dispatcher).
    let (client, mut conn) = rumqttc::Client::new(
        rumqttc::MqttOptions::new("op", "127.0.0.1", broker.port),
        10,
    );
    client
        .publish(
            "mint/v1/test-device/cmd",
            QoS::AtLeastOnce,
            false,
            b"not cose".to_vec(),
        )
        .unwrap();
    std::thread::spawn(move || for _ in conn.iter().take(20) {});
    watcher.wait_for("cmd/result", WAIT, |s| {
        s.iter()
            .any(|m| m.topic == "mint/v1/test-device/cmd/result")
    });

    // A subscriber that comes later gets the retained status and inventory.
    let late = Watcher::new(&broker, "mint/v1/test-device/+");
    late.wait_for("retained status and inventory", WAIT, |s| {
        s.iter().any(|m| m.retain && m.topic.ends_with("/status"))
            && s.iter()
                .any(|m| m.retain && m.topic.ends_with("/inventory"))
    });

    // SIGKILL: the broker publishes the Last Will.
    daemon.kill();
    watcher.wait_for("Last Will offline", WAIT, |s| {
        has(s, "status", |v| {
            v["state"] == "offline" && v["reason"] == "connection lost"
        })
    });
    // Back, then a clean stop says offline itself.
    let mut daemon = config.start();
    let before = watcher.on("status").len();
    watcher.wait_for("online again", WAIT, |s| {
        s.iter()
            .filter(|m| m.topic.ends_with("/status"))
            .skip(before)
            .any(|m| m.json()["state"] == "online")
    });
    assert!(
        daemon.terminate(Duration::from_secs(10)).is_some(),
        "mintd did not stop"
    );
    watcher.wait_for("offline on shutdown", WAIT, |s| {
        has(s, "status", |v| {
            v["state"] == "offline" && v["reason"] == "shutdown"
        })
    });
}

#[test]
fn tls_with_client_certificates() {
    let ws = Workspace::new();
    let certs = Certs::generate(&ws.path("certs"));
    let broker = Broker::start_tls(&certs);
    let watcher = Watcher::with_tls(&broker, "mint/v1/#", Some(&certs));
    let mut config = ws.config();
    mqtt_config(&mut config, &broker, Some(&certs));
    let daemon = config.start();
    watcher.wait_for("status online over TLS", WAIT, |s| {
        has(s, "status", |v| v["state"] == "online")
    });
    let inv = {
        watcher.wait_for("inventory", WAIT, |s| {
            s.iter().any(|m| m.topic.ends_with("/inventory"))
        });
        watcher.last_json("inventory").unwrap()
    };
    assert_eq!(inv["posture"]["mqtt_tls"], true);
    assert_eq!(inv["posture"]["mqtt_client_cert"], true);
    drop(daemon);

    // A client certificate from a CA the broker does not trust: never online.
    let ws2 = Workspace::new();
    let mut rogue = ws2.config();
    mqtt_config(&mut rogue, &broker, Some(&certs));
    rogue.set("device", "id", "\"rogue-device\"");
    rogue.set(
        "mqtt.tls",
        "cert",
        &support::toml_str(&certs.path("rogue.pem")),
    );
    rogue.set(
        "mqtt.tls",
        "key",
        &support::toml_str(&certs.path("rogue.key")),
    );
    let rogue_daemon = rogue.start();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !watcher
            .seen()
            .iter()
            .any(|m| m.topic.starts_with("mint/v1/rogue-device/")),
        "a device with an untrusted client certificate got through"
    );
    // It did try, and the broker refused its certificate (and it keeps retrying).
    let log = broker.log();
    assert!(
        log.matches("certificate verify failed").count() >= 2,
        "the broker never refused the rogue certificate:\n{log}"
    );
    drop(rogue_daemon);
}

#[test]
fn mintctl_fleet_watch_and_events() {
    let ws = Workspace::new();
    let broker = Broker::start();
    let mut config = ws.config();
    mqtt_config(&mut config, &broker, None);
    let daemon = config.start();
    let bundle = ws.bundle("m", "1.0", 1).create();
    daemon.install(&bundle).expect("install");
    let addr = broker.addr();

    // The table, from retained status and inventory.
    let watcher = Watcher::new(&broker, "mint/v1/test-device/inventory");
    watcher.wait_for("inventory with m", WAIT, |s| {
        has(s, "inventory", |v| v["models"][0]["version"] == "1.0")
    });
    let table = ws.mintctl_ok(&["fleet", "watch", "--broker", &addr, "--duration", "2"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("test-device"))
        .unwrap_or_else(|| panic!("no row for the device:\n{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[..4], ["test-device", "yes", "m", "1.0"], "{table}");
    assert!(table.starts_with("DEVICE"), "{table}");

    let json = ws.mintctl_ok(&[
        "--json",
        "fleet",
        "watch",
        "--broker",
        &addr,
        "--duration",
        "2",
    ]);
    let rows: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = rows
        .iter()
        .rev()
        .find(|r| r["device"] == "test-device")
        .expect("a row");
    assert_eq!(last["online"], true);
    assert_eq!(last["version"], "1.0");

    // Events as they come: a refused install shows up once, as JSON.
    let child = std::process::Command::new(support::MINTCTL)
        .args([
            "--json",
            "fleet",
            "events",
            "--broker",
            &addr,
            "--count",
            "1",
            "--duration",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(ws.path("bad.mint"), b"garbage").unwrap();
    assert!(daemon.install(&ws.path("bad.mint")).is_err());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let event: Value = serde_json::from_slice(&out.stdout).expect("one JSON event");
    assert_eq!(event["type"], "install_refused", "{event}");
    assert_eq!(event["severity"], "warning");

    // No broker: one clear error.
    let out = ws.mintctl(&[
        "fleet",
        "watch",
        "--broker",
        &format!("127.0.0.1:{}", support::broker::free_port()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the MQTT broker"), "{err}");
}
