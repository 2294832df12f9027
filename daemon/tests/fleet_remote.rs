//! Signed fleet commands end to end, against real parts only: a mosquitto broker started on
//! a free loopback port, a real `mintd` process with the MQTT link, commands published by
//! `mosquitto_pub` (hostile ones) and by the real `mintctl fleet push`, bundles served by an
//! HTTP server the test starts, and a real SIGKILL of the daemon in the middle of a download.
//!
//! Threats: every refusal of a command (unsigned, malformed, badly signed, wrong key,
//! expired, not yet valid, mistargeted, replayed, unknown) → a `cmd/result` naming the
//! reason, a `command_refused` event on `events`, and nothing executed. Remote install: the
//! transfer cut halfway resumes with `Range`; a daemon killed mid-download resumes from its
//! partial file after the restart; both end with the model active.

mod support;
mod support_http;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mint_updater::OperatorKey;
use mintd::fleet::command::{self, Payload, TargetField};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::broker::{self, Broker, Watcher};
use support::{stdout_ok, toml_str, Daemon, Workspace, MINTCTL};
use support_http::{Faults, FileServer};

const DEVICE: &str = "test-device";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn nonce(i: u32) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:032x}{i:08x}")
}

fn payload(i: u32, command: &str, args: Value, target: &str) -> Payload {
    Payload {
        v: 1,
        command: command.into(),
        args,
        nonce: nonce(i),
        issued_at: now(),
        expires_at: now() + 600,
        target: TargetField::One(target.into()),
    }
}

/// A workspace with a fleet key, and a daemon configuration on `broker` trusting it.
fn setup(broker: &Broker) -> (Workspace, support::Config) {
    let ws = Workspace::new();
    ws.mintctl_ok(&["key", "gen", "--out", "fleet"]);
    let mut c = ws.config();
    broker::mqtt_config(&mut c, broker, None);
    c.set("device", "id", &format!("\"{DEVICE}\""));
    c.set(
        "trust",
        "fleet_keys",
        &format!("[{}]", toml_str(&ws.path("fleet.pub"))),
    );
    c.set("trust", "clock_skew_secs", "60");
    (ws, c)
}

fn publish(broker: &Broker, ws: &Workspace, topic: &str, bytes: &[u8]) {
    let file = ws.path("cmd.bin");
    std::fs::write(&file, bytes).unwrap();
    let port = broker.addr().rsplit(':').next().unwrap().to_owned();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic, "-f"])
        .arg(&file)
        .output()
        .expect("mosquitto_pub (scripts/deps.sh installs mosquitto-clients)");
    stdout_ok(&out, "mosquitto_pub");
}

fn results(w: &Watcher) -> Vec<Value> {
    results_in(&w.seen())
}

fn events(w: &Watcher, kind: &str) -> Vec<Value> {
    events_in(&w.seen(), kind)
}

/// The `cmd/result` payloads among `seen` (for `Watcher::wait_for`, which holds the lock).
fn results_in(seen: &[broker::Seen]) -> Vec<Value> {
    seen.iter()
        .filter(|s| s.topic.ends_with("/cmd/result"))
        .map(|s| s.json())
        .collect()
}

fn events_in(seen: &[broker::Seen], kind: &str) -> Vec<Value> {
    seen.iter()
        .filter(|s| s.topic.ends_with("/events"))
        .map(|s| s.json())
        .filter(|e| e["type"] == kind)
        .collect()
}

fn serving(d: &Daemon, name: &str) -> Option<String> {
    d.get("/v1/status")["serving"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == name)
        .map(|m| m["digest"].as_str().unwrap().to_owned())
}

/// `mintctl --json fleet push ...`: exit code and JSON document.
fn push(ws: &Workspace, broker: &Broker, args: &[&str]) -> (i32, Value) {
    let out = Command::new(MINTCTL)
        .current_dir(ws.dir())
        .args(["--json", "fleet", "push", "--key", "fleet.key", "--broker"])
        .arg(broker.addr())
        .args(args)
        .output()
        .expect("spawn mintctl");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mintctl fleet push printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

#[test]
fn every_refusal_over_mosquitto_is_answered_recorded_and_executes_nothing() {
    let broker = Broker::start();
    let (ws, c) = setup(&broker);
    let v1 = ws.bundle("m", "1", 1).create();
    let v2 = ws.bundle("m", "2", 2).create();
    let d = c.start();
    d.install(&v1).unwrap();
    d.install(&v2).unwrap();
    let served = serving(&d, "m").unwrap();
    let w = Watcher::new(&broker, "mint/v1/#");
    w.wait_for("online status", Duration::from_secs(20), |s| {
        s.iter()
            .any(|m| m.topic.ends_with("/status") && m.payload.windows(6).any(|x| x == b"online"))
    });
    let fleet = OperatorKey::load(&ws.path("fleet.key")).unwrap();
    let op = OperatorKey::load(&ws.path("op.key")).unwrap();
    let topic = format!("mint/v1/{DEVICE}/cmd");
    let rollback = |i: u32, target: &str| payload(i, "rollback", json!({"name": "m"}), target);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push((
        "unsigned",
        serde_json::to_vec(&rollback(1, DEVICE)).unwrap(),
    ));
    cases.push(("malformed", b"\xd2\x84 not cbor".to_vec()));
    let mut bad = command::sign(&rollback(2, DEVICE), &fleet).unwrap();
    let at = bad.len() - 70;
    bad[at] ^= 1;
    cases.push(("bad_signature", bad));
    cases.push((
        "unknown_key",
        command::sign(&rollback(3, DEVICE), &op).unwrap(),
    ));
    let mut p = rollback(4, DEVICE);
    p.issued_at = now() - 7_200;
    p.expires_at = now() - 3_600;
    cases.push(("expired", command::sign(&p, &fleet).unwrap()));
    let mut p = rollback(5, DEVICE);
    p.issued_at = now() + 3_600;
    p.expires_at = now() + 7_200;
    cases.push(("not_yet_valid", command::sign(&p, &fleet).unwrap()));
    cases.push((
        "mistargeted",
        command::sign(&rollback(6, "other-device"), &fleet).unwrap(),
    ));
    cases.push((
        "unknown_command",
        command::sign(&payload(7, "format_disk", json!({}), DEVICE), &fleet).unwrap(),
    ));
    cases.push((
        "arguments",
        command::sign(
            &payload(
                8,
                "install",
                json!({"url": "ftp://x/y", "sha256": "00", "size": 1}),
                DEVICE,
            ),
            &fleet,
        )
        .unwrap(),
    ));

    for (reason, bytes) in &cases {
        let before = results(&w).len();
        publish(&broker, &ws, &topic, bytes);
        w.wait_for(
            &format!("the {reason} result"),
            Duration::from_secs(20),
            |seen| results_in(seen).len() > before,
        );
        let r = results(&w).pop().unwrap();
        assert_eq!(r["status"], "refused", "{reason}: {r}");
        assert_eq!(r["reason"], *reason, "{r}");
        assert_eq!(r["device"], DEVICE);
    }
    // Replayed: a good report, twice.
    let report = command::sign(&payload(9, "report", json!({}), DEVICE), &fleet).unwrap();
    publish(&broker, &ws, &topic, &report);
    publish(&broker, &ws, &topic, &report);
    // Both answers: the refusal as a replay and the report's own result.
    w.wait_for(
        "the replay and report results",
        Duration::from_secs(20),
        |seen| {
            let answers = results_in(seen);
            answers.iter().any(|r| r["reason"] == "replayed")
                && answers
                    .iter()
                    .any(|r| r["command"] == "report" && r["status"] == "succeeded")
        },
    );
    // One run, one refusal as a replay; the two answers may arrive in either order (the
    // refusal is answered at once, the report after it republished status and inventory).
    let mut statuses: Vec<String> = results(&w)
        .into_iter()
        .filter(|r| r["command"] == "report")
        .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["refused", "succeeded"]);

    // Each refusal is an event on `events` too.
    w.wait_for("the refusal events", Duration::from_secs(20), |seen| {
        events_in(seen, "command_refused").len() > cases.len()
    });
    let reasons: Vec<String> = events(&w, "command_refused")
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap().to_owned())
        .collect();
    for (reason, _) in &cases {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} not in {reasons:?}"
        );
    }
    assert!(reasons.iter().any(|r| r == "replayed"));

    // On the broadcast topic an unauthenticated or mistargeted command gets no answer.
    let before = results(&w).len();
    let events_before = events(&w, "command_refused").len();
    publish(&broker, &ws, "mint/v1/fleet/cmd", &cases[0].1);
    publish(
        &broker,
        &ws,
        "mint/v1/fleet/cmd",
        &command::sign(&rollback(10, "other-device"), &fleet).unwrap(),
    );
    w.wait_for("two more refusal events", Duration::from_secs(20), |seen| {
        events_in(seen, "command_refused").len() >= events_before + 2
    });
    assert_eq!(results(&w).len(), before, "{:?}", results(&w));

    // Nothing was executed.
    assert_eq!(serving(&d, "m").unwrap(), served);
    assert!(d.events_of("rolled_back").is_empty());

    // And the operator's tool, through the same broker: a rollback to the device, then a
    // report to the whole fleet.
    let (code, doc) = push(
        &ws,
        &broker,
        &["--device", DEVICE, "--timeout", "30", "rollback", "m"],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["results"][0]["status"], "succeeded", "{doc}");
    assert_ne!(serving(&d, "m").unwrap(), served);
    let (code, doc) = push(
        &ws,
        &broker,
        &["--all", "--expect", "1", "--timeout", "30", "report"],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["results"][0]["device"], DEVICE);
    // An expired --expires is refused by the tool itself.
    let (code, doc) = push(
        &ws,
        &broker,
        &["--device", DEVICE, "--expires", "1", "report"],
    );
    assert_ne!(code, 0);
    assert!(doc["error"].as_str().unwrap().contains("past"), "{doc}");
}

fn sha256_hex(path: &Path) -> (String, usize) {
    let bytes = std::fs::read(path).unwrap();
    (hex::encode(Sha256::digest(&bytes)), bytes.len())
}

#[test]
fn a_remote_install_cut_halfway_resumes_and_the_model_is_active() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::start();
    let (ws, c) = setup(&broker);
    let bundle = ws.bundle("m", "1", 1).create();
    let (_, size) = sha256_hex(&bundle);
    let server = rt.block_on(FileServer::start(
        std::fs::read(&bundle).unwrap(),
        Faults {
            cut_first_at: Some(size / 2),
            ..Faults::default()
        },
    ));
    let d = c.start();
    let w = Watcher::new(&broker, "mint/v1/#");
    let url = server.url(false);
    let (code, doc) = push(
        &ws,
        &broker,
        &[
            "--device",
            DEVICE,
            "--timeout",
            "60",
            "install",
            &url,
            "--bundle",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{doc}\n{}", d.stderr());
    let statuses: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["accepted", "succeeded"], "{doc}");
    let outcome = &doc["results"][1]["details"];
    let digest = outcome["model"]["digest"].as_str().unwrap();
    assert_eq!(serving(&d, "m").as_deref(), Some(digest));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", size / 2).as_str())
    );
    w.wait_for("download events", Duration::from_secs(20), |seen| {
        !events_in(seen, "download_interrupted").is_empty()
            && !events_in(seen, "download_progress").is_empty()
    });
    assert!(!d.events_of("download_interrupted").is_empty());
}

#[test]
fn a_daemon_killed_mid_download_resumes_after_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::start();
    let (ws, c) = setup(&broker);
    let bundle = ws.bundle("m", "1", 1).create();
    let (_, size) = sha256_hex(&bundle);
    let half = size / 2;
    let server = rt.block_on(FileServer::start(
        std::fs::read(&bundle).unwrap(),
        Faults {
            stall_first_at: Some(half),
            ..Faults::default()
        },
    ));
    let mut d = c.start();
    let w = Watcher::new(&broker, "mint/v1/#");
    let url = server.url(false);
    let (code, doc) = push(
        &ws,
        &broker,
        &[
            "--device",
            DEVICE,
            "--timeout",
            "0",
            "install",
            &url,
            "--bundle",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{doc}");
    let nonce = doc["commands"][0]["nonce"].as_str().unwrap().to_owned();

    // Wait until half of the file is in the partial download, then kill the daemon.
    let downloads = c.state_dir.join("downloads");
    let part_len = || -> u64 {
        std::fs::read_dir(&downloads)
            .map(|r| {
                r.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let start = Instant::now();
    while part_len() < half as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no partial download; {}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill();
    assert_eq!(
        part_len(),
        half as u64,
        "the partial file stays for the restart"
    );
    nothing_stored(&c);

    // Restarted, the daemon resumes the download from its partial file and installs.
    let d = c.start();
    w.wait_for(
        "the install's final result",
        Duration::from_secs(60),
        |seen| {
            results_in(seen)
                .iter()
                .any(|r| r["nonce"] == nonce.as_str() && r["status"] != "accepted")
        },
    );
    let done = results(&w)
        .into_iter()
        .rfind(|r| r["nonce"] == nonce.as_str())
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}\n{}", d.stderr());
    let digest = done["details"]["model"]["digest"].as_str().unwrap();
    assert_eq!(serving(&d, "m").as_deref(), Some(digest));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    let resumed = d.events_of("download_resumed");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["details"]["offset"], half);
    assert_eq!(part_len(), 0, "the partial file is removed once installed");
}

/// Nothing reached the store of the killed daemon: the download never finished.
fn nothing_stored(c: &support::Config) {
    assert!(
        std::fs::read_dir(c.state_dir.join("store"))
            .map(|r| r.count())
            .unwrap_or(0)
            == 0,
        "a store entry exists although the download never finished"
    );
}

#[test]
fn mintctl_install_url_downloads_resumes_verifies_and_installs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let v1 = ws.bundle("m", "1", 1).create();
    let v2 = ws.bundle("m", "2", 2).create();
    let (sha1, size1) = sha256_hex(&v1);
    let server1 = rt.block_on(FileServer::start(
        std::fs::read(&v1).unwrap(),
        Faults {
            cut_first_at: Some(size1 / 2),
            ..Faults::default()
        },
    ));
    let d = ws.config().start();
    // No digest given: the daemon learns the size from the server, resumes the cut transfer
    // and verifies the bundle's own signatures and digests.
    let reply = d.mintctl_json(&["install", &server1.url(false)]);
    assert_eq!(reply["outcome"], "committed", "{reply}");
    let digest1 = reply["model"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(serving(&d, "m").as_deref(), Some(digest1.as_str()));
    assert_eq!(server1.requests().len(), 2);
    assert_eq!(
        server1.requests()[1].range.as_deref(),
        Some(format!("bytes={}-", size1 / 2).as_str())
    );

    // A digest that is not the file's: refused, nothing installed.
    let server2 = rt.block_on(FileServer::start(
        std::fs::read(&v2).unwrap(),
        Faults::default(),
    ));
    let (code, err) = d.mintctl_json_err(&["install", &server2.url(false), "--sha256", &sha1]);
    assert_ne!(code, 0);
    assert!(
        err["causes"][0].as_str().unwrap().contains("sha256"),
        "{err}"
    );
    assert_eq!(serving(&d, "m").as_deref(), Some(digest1.as_str()));
    // A size that is not the file's: refused before a byte is installed.
    let (_, size2) = sha256_hex(&v2);
    let (_, err) = d.mintctl_json_err(&[
        "install",
        &server2.url(false),
        "--size",
        &(size2 - 1).to_string(),
    ]);
    assert!(
        err["causes"][0].as_str().unwrap().contains("offers"),
        "{err}"
    );
    // The right digest and size: installed.
    let (sha2, _) = sha256_hex(&v2);
    let reply = d.mintctl_json(&[
        "install",
        &server2.url(false),
        "--sha256",
        &sha2,
        "--size",
        &size2.to_string(),
    ]);
    assert_eq!(reply["model"]["version"], "2", "{reply}");
    let left = std::fs::read_dir(d.state_dir.join("downloads"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "partial downloads left behind");
}

#[test]
fn https_downloads_trust_the_system_store_and_ssl_cert_file() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1", 1).create();
    let certs = broker::Certs::generate(&ws.path("certs"));
    let server = rt.block_on(FileServer::start_tls(
        std::fs::read(&bundle).unwrap(),
        Faults::default(),
        &std::fs::read(certs.path("server.pem")).unwrap(),
        &std::fs::read(certs.path("server.key")).unwrap(),
    ));
    // A daemon that does not know the test CA refuses the server's certificate...
    let mut c = ws.config();
    c.env("SSL_CERT_FILE", "/nonexistent");
    let d = c.start();
    let (_, err) = d.mintctl_json_err(&["install", &server.url(true)]);
    let text = err.to_string();
    assert!(text.contains("TLS"), "{err}");
    assert_eq!(serving(&d, "m"), None);
    drop(d);
    // ... and one pointed at it with SSL_CERT_FILE accepts it.
    let mut c = ws.config();
    c.env("SSL_CERT_FILE", certs.path("ca.pem").to_str().unwrap());
    let d = c.start();
    let reply = d.mintctl_json(&["install", &server.url(true)]);
    assert_eq!(reply["outcome"], "committed", "{reply}");
}
