//! Signed fleet commands at the dispatcher, in process, against real parts: commands signed
//! with real Ed25519 keys made by `mintctl key gen` (COSE_Sign1), the real state database
//! (redb), real bundles made by `mintctl bundle create`, the real update core with the tract
//! health probe, and real HTTP(S) servers started by the test.
//!
//! Threats: unsigned, malformed, badly signed, wrong-key, wrong-algorithm, expired,
//! not-yet-valid, replayed, mistargeted, unknown and badly argued commands → refused, a
//! `command_refused` event, nothing executed, a result naming the reason (none on the
//! broadcast topic unless signed and addressed here); floods of unauthenticated refusals are
//! rate-limited. Remote install: a transfer cut halfway resumes with `Range`; a server that
//! ignores `Range`; redirects; HTTPS; a file with the wrong digest or too many bytes is
//! refused and nothing is installed.

mod support;
mod support_http;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mint_updater::{OperatorKey, Updater};
use mintd::fleet::command::{self, Payload, TargetField};
use mintd::fleet::dispatch::{Dispatcher, DispatcherConfig, ResultSink, BROADCAST_TOPIC};
use mintd::fleet::download;
use mintd::service::registry::Registry;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::Workspace;
use support_http::{Faults, FileServer};

const DEVICE: &str = "dev-1";

struct Device {
    ws: Workspace,
    updater: Arc<Updater>,
    dispatcher: Dispatcher,
    results: Arc<Mutex<Vec<Value>>>,
    reports: Arc<AtomicUsize>,
    fleet: OperatorKey,
    topic: String,
}

fn config(ws: &Workspace) -> mint_config::Config {
    let mut c = mint_config::Config::default();
    c.device.id = DEVICE.into();
    c.device.class = "cam".into();
    c.paths.state_dir = ws.path("state");
    c.paths.socket = ws.path("s.sock");
    c.trust.keys = vec![ws.path("op.pub")];
    c.trust.keys_dir = None;
    c.trust.fleet_keys = vec![ws.path("fleet.pub")];
    c.trust.clock_skew_secs = 60;
    c
}

async fn device(ws: Workspace) -> Device {
    ws.mintctl_ok(&["key", "gen", "--out", "fleet"]);
    let c = config(&ws);
    let updater = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            mintd::service::open_updater(&c, Arc::new(Registry::default()))
        })
        .await
        .unwrap()
        .expect("updater")
    };
    let updater = Arc::new(updater);
    let results = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let results = results.clone();
        ResultSink::Callback(Arc::new(move |v: Value| results.lock().unwrap().push(v)))
    };
    let mut dc = DispatcherConfig::from_config(&c).expect("fleet keys");
    dc.download = download::Options {
        retry_base: Duration::from_millis(100),
        read_timeout: Duration::from_secs(5),
        max_failures: 4,
        ..download::Options::default()
    };
    let dispatcher = Dispatcher::new(dc, updater.clone(), sink);
    let reports = Arc::new(AtomicUsize::new(0));
    {
        let reports = reports.clone();
        dispatcher.set_report(Arc::new(move || {
            reports.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let fleet = OperatorKey::load(&ws.path("fleet.key")).unwrap();
    Device {
        ws,
        updater,
        dispatcher,
        results,
        reports,
        fleet,
        topic: format!("mint/v1/{DEVICE}/cmd"),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn nonce() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("{:016x}{:016x}", t, N.fetch_add(1, Ordering::SeqCst))
}

fn payload(command: &str, args: Value, target: &str) -> Payload {
    Payload {
        v: 1,
        command: command.into(),
        args,
        nonce: nonce(),
        issued_at: now(),
        expires_at: now() + 600,
        target: TargetField::One(target.into()),
    }
}

impl Device {
    fn sign(&self, p: &Payload) -> Vec<u8> {
        command::sign(p, &self.fleet).unwrap()
    }

    async fn send(&self, bytes: &[u8]) -> Option<Value> {
        self.dispatcher.handle(&self.topic, bytes).await
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.updater
            .events_since(0, 100_000)
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    fn serving_digest(&self, name: &str) -> Option<String> {
        self.updater.serving(name).map(|m| m.rev.digest)
    }

    fn install_file(&self, path: &Path) {
        let mut f = std::fs::File::open(path).unwrap();
        self.updater.install(&mut f, &mut |_| {}).expect("install");
    }

    /// Signs and sends an `install` of `server`'s file, bound to the digest and size of
    /// `signed` (the bundle the operator means); checks it is accepted and returns its nonce.
    async fn install_from(&self, server: &FileServer, signed: &[u8]) -> String {
        let p = payload(
            "install",
            json!({"url": server.url(false), "sha256": sha256_hex(signed), "size": signed.len()}),
            DEVICE,
        );
        let r = self.send(&self.sign(&p)).await.unwrap();
        assert_eq!(r["status"], "accepted", "{r}");
        p.nonce
    }

    /// Waits for the final result of the command `nonce` (published through the sink).
    async fn final_result(&self, nonce: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self
                .results
                .lock()
                .unwrap()
                .iter()
                .find(|r| r["nonce"] == nonce)
                .cloned()
            {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no final result for {nonce} after {timeout:?}; events: {:?}",
                self.updater.events_since(0, 1000)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A refusal: result with the reason (or none), one more `command_refused` event naming it.
async fn expect_refused(d: &Device, topic: &str, bytes: &[u8], reason: &str, answered: bool) {
    let before = d.events("command_refused").len();
    let result = d.dispatcher.handle(topic, bytes).await;
    if answered {
        let r = result.unwrap_or_else(|| panic!("{reason}: no result"));
        assert_eq!(r["status"], "refused", "{r}");
        assert_eq!(r["reason"], reason, "{r}");
        assert_eq!(r["device"], DEVICE);
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    } else {
        assert_eq!(result, None, "{reason}: answered on the broadcast topic");
    }
    let events = d.events("command_refused");
    assert_eq!(events.len(), before + 1, "{reason}: no event");
    assert_eq!(events.last().unwrap()["details"]["reason"], reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_executes_nothing_and_is_recorded_and_answered() {
    let ws = Workspace::new();
    let v1 = ws.bundle("m", "1", 1).create();
    let v2 = ws.bundle("m", "2", 2).create();
    let d = device(ws).await;
    d.install_file(&v1);
    d.install_file(&v2);
    let served = d.serving_digest("m").unwrap();
    let server = FileServer::start(std::fs::read(&v2).unwrap(), Faults::default()).await;

    let rollback = |target: &str| payload("rollback", json!({"name": "m"}), target);
    let t = d.topic.clone();

    // Unsigned: the bare document, JSON and CBOR.
    let p = rollback(DEVICE);
    expect_refused(&d, &t, &serde_json::to_vec(&p).unwrap(), "unsigned", true).await;
    let mut cbor = Vec::new();
    ciborium::into_writer(&p, &mut cbor).unwrap();
    expect_refused(&d, &t, &cbor, "unsigned", true).await;
    // Malformed envelopes.
    expect_refused(&d, &t, b"\xd2\x84garbage", "malformed", true).await;
    let good = d.sign(&rollback(DEVICE));
    expect_refused(&d, &t, &good[..good.len() - 10], "malformed", true).await;
    expect_refused(
        &d,
        &t,
        &vec![0u8; command::MAX_COMMAND_BYTES + 1],
        "too_large",
        true,
    )
    .await;
    // Badly signed: one bit of the payload flipped.
    let mut bad = good.clone();
    let at = bad.len() - 70; // inside the payload: the signature is the last 64 bytes
    bad[at] ^= 0x01;
    expect_refused(&d, &t, &bad, "bad_signature", true).await;
    let mut s = coset::CoseSign1::from_tagged_slice(&good).unwrap();
    use coset::TaggedCborSerializable;
    s.signature[5] ^= 0x80;
    expect_refused(&d, &t, &s.to_tagged_vec().unwrap(), "bad_signature", true).await;
    // Signed by a key without the fleet role: the bundle-signing operator key.
    let bundle_key = OperatorKey::load(&d.ws.path("op.key")).unwrap();
    let wrong = command::sign(&rollback(DEVICE), &bundle_key).unwrap();
    expect_refused(&d, &t, &wrong, "unknown_key", true).await;
    // Expired, and not valid yet, beyond the 60 s skew.
    let mut p = rollback(DEVICE);
    p.issued_at = now() - 1_000;
    p.expires_at = now() - 61;
    expect_refused(&d, &t, &d.sign(&p), "expired", true).await;
    let mut p = rollback(DEVICE);
    p.issued_at = now() + 120;
    p.expires_at = now() + 600;
    expect_refused(&d, &t, &d.sign(&p), "not_yet_valid", true).await;
    // Within the skew both ways: accepted (a report, which executes harmlessly).
    let mut p = payload("report", json!({}), DEVICE);
    p.issued_at = now() + 30;
    let r = d.send(&d.sign(&p)).await.unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(d.reports.load(Ordering::SeqCst), 1);
    // Mistargeted: another device, another class.
    expect_refused(&d, &t, &d.sign(&rollback("dev-2")), "mistargeted", true).await;
    expect_refused(
        &d,
        &t,
        &d.sign(&rollback("class:gateway")),
        "mistargeted",
        true,
    )
    .await;
    // Unknown command and bad arguments.
    expect_refused(
        &d,
        &t,
        &d.sign(&payload("reboot", json!({}), DEVICE)),
        "unknown_command",
        true,
    )
    .await;
    expect_refused(
        &d,
        &t,
        &d.sign(&payload("rollback", json!({"model": "m"}), DEVICE)),
        "arguments",
        true,
    )
    .await;
    let install = |url: String, sha: &str, size: u64| {
        payload(
            "install",
            json!({"url": url, "sha256": sha, "size": size}),
            DEVICE,
        )
    };
    let sha = "ab".repeat(32);
    expect_refused(
        &d,
        &t,
        &d.sign(&install("file:///etc/passwd".into(), &sha, 10)),
        "arguments",
        true,
    )
    .await;
    expect_refused(
        &d,
        &t,
        &d.sign(&install(server.url(false), &sha, 5 << 40)),
        "arguments",
        true,
    )
    .await;
    // Malformed payload under a valid signature.
    let mut p = rollback(DEVICE);
    p.nonce = "short".into();
    expect_refused(&d, &t, &d.sign(&p), "payload", true).await;
    // Replayed.
    let report = d.sign(&payload("report", json!({}), "*"));
    assert_eq!(d.send(&report).await.unwrap()["status"], "succeeded");
    expect_refused(&d, &t, &report, "replayed", true).await;
    assert_eq!(d.reports.load(Ordering::SeqCst), 2, "a replay executed");

    // Nothing was executed: the same model is served, nothing rolled back, the server never
    // asked.
    assert_eq!(d.serving_digest("m").unwrap(), served);
    assert!(d.events("rolled_back").is_empty());
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert!(d.events("download_started").is_empty());

    // On the broadcast topic: signed and addressed here → answered; the rest only recorded.
    let b = BROADCAST_TOPIC;
    expect_refused(
        &d,
        b,
        &serde_json::to_vec(&rollback("*")).unwrap(),
        "unsigned",
        false,
    )
    .await;
    expect_refused(&d, b, &wrong, "unknown_key", false).await;
    expect_refused(&d, b, &d.sign(&rollback("dev-2")), "mistargeted", false).await;
    expect_refused(&d, b, &report, "replayed", false).await;
    let mut p = rollback("*");
    p.expires_at = now() - 100;
    p.issued_at = now() - 200;
    expect_refused(&d, b, &d.sign(&p), "expired", true).await;
    // Messages on other topics are ignored, not obeyed.
    assert_eq!(
        d.dispatcher.handle("mint/v1/dev-2/cmd", &report).await,
        None
    );

    // And a good rollback on the broadcast topic executes once.
    let ok = d.sign(&rollback("class:cam"));
    let r = d.dispatcher.handle(b, &ok).await.unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_ne!(d.serving_digest("m").unwrap(), served);
    assert_eq!(d.events("rolled_back").len(), 1);
    assert_eq!(d.dispatcher.handle(b, &ok).await, None);
    assert_eq!(d.events("rolled_back").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_is_rate_limited_and_counted() {
    let d = device(Workspace::new()).await;
    let mut answered = 0;
    let started = std::time::Instant::now();
    for i in 0..60u32 {
        if d.send(&i.to_be_bytes()).await.is_some() {
            answered += 1;
        }
    }
    // The bucket holds 20 and gains one per second: a slow machine earns a few more.
    let allowed = 20 + started.elapsed().as_secs() as usize + 1;
    let events = d.events("command_refused");
    assert!(
        events.len() >= 20 && events.len() <= allowed,
        "{} > {allowed}",
        events.len()
    );
    assert_eq!(answered, events.len());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    d.send(b"more").await.expect("a token came back");
    let last = d.events("command_refused").pop().unwrap();
    let suppressed = last["details"]["suppressed"].as_u64().unwrap();
    assert_eq!(suppressed as usize + events.len(), 60, "{last}");
    // A signed command is never rate-limited.
    let r = d
        .send(&d.sign(&payload("report", json!({}), DEVICE)))
        .await
        .unwrap();
    assert_eq!(r["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_cache_survives_a_restart() {
    let ws = Workspace::new();
    ws.mintctl_ok(&["key", "gen", "--out", "fleet"]);
    let c = config(&ws);
    let fleet = OperatorKey::load(&ws.path("fleet.key")).unwrap();
    let cmd = command::sign(&payload("report", json!({}), DEVICE), &fleet).unwrap();
    for round in 0..2 {
        let c2 = c.clone();
        let updater = tokio::task::spawn_blocking(move || {
            mintd::service::open_updater(&c2, Arc::new(Registry::default())).unwrap()
        })
        .await
        .unwrap();
        let dispatcher = Dispatcher::new(
            DispatcherConfig::from_config(&c).unwrap(),
            Arc::new(updater),
            ResultSink::Callback(Arc::new(|_| {})),
        );
        dispatcher.set_report(Arc::new(|| {}));
        let r = dispatcher
            .handle(&format!("mint/v1/{DEVICE}/cmd"), &cmd)
            .await
            .unwrap();
        let want = if round == 0 { "succeeded" } else { "refused" };
        assert_eq!(r["status"], want, "round {round}: {r}");
        if round == 1 {
            assert_eq!(r["reason"], "replayed");
        }
        drop(dispatcher);
        // The worker task holds the dispatcher's state weakly; give it a moment to let go
        // of the database before it is opened again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn remote_install(faults: Faults, https: bool) -> (Device, FileServer, Value) {
    let ws = Workspace::new();
    // A bigger model so the transfer takes more than one read.
    let bundle = ws.bundle("m", "1", 1).golden("auto:64").create();
    let bytes = std::fs::read(&bundle).unwrap();
    let d = device(ws).await;
    let server = if https {
        let certs = support::broker::Certs::generate(&d.ws.path("certs"));
        let cert = std::fs::read(certs.path("server.pem")).unwrap();
        let key = std::fs::read(certs.path("server.key")).unwrap();
        FileServer::start_tls(bytes.clone(), faults, &cert, &key).await
    } else {
        FileServer::start(bytes.clone(), faults).await
    };
    let mut p = payload(
        "install",
        json!({"url": server.url(https), "sha256": sha256_hex(&bytes), "size": bytes.len()}),
        DEVICE,
    );
    if https {
        // The dispatcher of this test trusts the test CA: rebuild it with the CA.
        let ca = std::fs::read(d.ws.path("certs/ca.pem")).unwrap();
        let mut dc = DispatcherConfig::from_config(&config(&d.ws)).unwrap();
        dc.download = download::Options {
            ca_pem: Some(ca),
            retry_base: Duration::from_millis(100),
            max_failures: 4,
            ..download::Options::default()
        };
        let results = d.results.clone();
        let dispatcher = Dispatcher::new(
            dc,
            d.updater.clone(),
            ResultSink::Callback(Arc::new(move |v: Value| results.lock().unwrap().push(v))),
        );
        let d = Device { dispatcher, ..d };
        p.nonce = nonce();
        let r = d.send(&d.sign(&p)).await.unwrap();
        assert_eq!(r["status"], "accepted", "{r}");
        let done = d.final_result(&p.nonce, Duration::from_secs(60)).await;
        return (d, server, done);
    }
    let r = d.send(&d.sign(&p)).await.unwrap();
    assert_eq!(r["status"], "accepted", "{r}");
    assert_eq!(r["details"]["size"], bytes.len());
    let done = d.final_result(&p.nonce, Duration::from_secs(60)).await;
    (d, server, done)
}

/// The daemon's sink: the final result of an install goes into the link's durable outbox in
/// the transaction that forgets the command, so there is no moment where the command is
/// forgotten but its result not yet stored (a crash there lost the result before). Watched
/// from outside while the install runs, then read back from a reopened database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_result_is_stored_with_the_end_of_its_command() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1", 1).golden("auto:64").create();
    let bytes = std::fs::read(&bundle).unwrap();
    let d = device(ws).await;
    let server = FileServer::start(bytes.clone(), Faults::default()).await;
    let (handle, _inbox) = mintd::fleet::FleetHandle::new(DEVICE);
    let bounds = mint_updater::state::OutboxBounds {
        max_messages: 1000,
        max_bytes: 1 << 20,
    };
    let mut d = d;
    // Replaces (and drops) the dispatcher of `device`, whose sink is a callback.
    d.dispatcher = Dispatcher::new(
        DispatcherConfig::from_config(&config(&d.ws)).unwrap(),
        d.updater.clone(),
        ResultSink::Outbox {
            handle: handle.clone(),
            bounds,
        },
    );
    let nonce = d.install_from(&server, &bytes).await;
    let state = d.updater.state();
    let stored_result = |nonce: &str| -> Option<Value> {
        state
            .outbox_peek(0, 1000)
            .unwrap()
            .into_iter()
            .filter(|(_, m)| m.destination == format!("mint/v1/{DEVICE}/cmd/result"))
            .map(|(_, m)| serde_json::from_slice::<Value>(&m.payload).unwrap())
            .find(|v| v["nonce"] == nonce)
    };
    let pending = || {
        !mintd::fleet::replay::jobs(state.database())
            .unwrap()
            .is_empty()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        // A stored result means the job is gone, and a job gone means its result is stored
        // (each read after the other, since both only ever go one way).
        let result = stored_result(&nonce);
        let still_pending = pending();
        if let Some(done) = result {
            assert!(
                !still_pending,
                "the result is stored but the command is still pending"
            );
            break done;
        }
        let still_pending = still_pending || pending();
        assert!(
            still_pending || stored_result(&nonce).is_some(),
            "the command was forgotten before its result was stored"
        );
        assert!(Instant::now() < deadline, "no result after 60 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["device"], DEVICE);
    assert_eq!(done["command"], "install");
    assert!(
        d.results.lock().unwrap().is_empty(),
        "not through the callback"
    );
    drop(server);

    // The result is on disk: a new process (here: the database reopened) still has it.
    let c = config(&d.ws);
    let Device {
        dispatcher,
        updater,
        ..
    } = d;
    drop(dispatcher);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(updater);
    let reopened = tokio::task::spawn_blocking(move || {
        mintd::service::open_updater(&c, Arc::new(Registry::default())).unwrap()
    })
    .await
    .unwrap();
    let again: Vec<Value> = reopened
        .state()
        .outbox_peek(0, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, m)| serde_json::from_slice::<Value>(&m.payload).unwrap())
        .filter(|v| v["nonce"] == nonce.as_str())
        .collect();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0], done);
}

/// A fleet download does not hold the updater's install lock: while one is stalled halfway,
/// a local install of another model goes through at once (it used to be refused as busy for
/// as long as the transfer took), and the fleet install completes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fleet_download_does_not_keep_a_local_install_waiting() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1", 1).golden("auto:64").create();
    let local = ws.bundle("other", "1", 1).create();
    let bytes = std::fs::read(&bundle).unwrap();
    let half = bytes.len() / 2;
    let d = device(ws).await;
    let server = FileServer::start(
        bytes.clone(),
        Faults {
            stall_first_at: Some(half),
            ..Faults::default()
        },
    )
    .await;
    let nonce = d.install_from(&server, &bytes).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.sent.load(Ordering::SeqCst) < half {
        assert!(
            Instant::now() < deadline,
            "the download did not reach the stall"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        d.results.lock().unwrap().is_empty(),
        "the fleet install ended early"
    );

    let updater = d.updater.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&local).unwrap();
        updater.try_install(&mut f, &mut |_| {})
    })
    .await
    .unwrap();
    let outcome = outcome.unwrap_or_else(|e| panic!("local install during a download: {e}"));
    assert!(
        matches!(
            outcome,
            mint_updater::InstallOutcome::Committed(_) | mint_updater::InstallOutcome::OnTrial(_)
        ),
        "{outcome:?}"
    );
    assert!(d.serving_digest("other").is_some());
    assert!(
        d.results.lock().unwrap().is_empty(),
        "the fleet install ended early"
    );

    server.release.notify_waiters();
    let done = d.final_result(&nonce, Duration::from_secs(60)).await;
    assert_installed(&d, &done);
}

/// A bundle this device refuses is judged on its header while it arrives: the transfer stops
/// there (the rest of the file is never fetched), the command fails naming the check, and
/// nothing is installed. Here the bundle is for another device class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bundle_is_not_downloaded_past_its_header() {
    let ws = Workspace::new();
    // The convnet: megabytes after a header of a few kilobytes.
    let bundle = ws
        .bundle("m", "1", 1)
        .model(support::fixture("convnet.onnx"))
        .golden("auto:1")
        .arg("--target")
        .arg("doorbell")
        .create();
    let bytes = std::fs::read(&bundle).unwrap();
    let d = device(ws).await;
    let server = FileServer::start(bytes.clone(), Faults::default()).await;
    let nonce = d.install_from(&server, &bytes).await;
    let done = d.final_result(&nonce, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["reason"], "target", "{done}");
    let sent = server.sent.load(Ordering::SeqCst);
    assert!(
        sent < bytes.len() / 2,
        "{sent} of {} bytes sent for a refused bundle",
        bytes.len()
    );
    assert_eq!(d.serving_digest("m"), None);
    assert!(!d.events("install_refused").is_empty());
}

fn assert_installed(d: &Device, done: &Value) {
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["command"], "install");
    assert!(
        ["committed", "on_trial"].contains(&done["details"]["outcome"].as_str().unwrap()),
        "{done}"
    );
    let digest = done["details"]["model"]["digest"].as_str().unwrap();
    assert_eq!(d.serving_digest("m").as_deref(), Some(digest));
    // The partial file and the pending job are gone.
    let downloads = d.ws.path("state/downloads");
    let left: Vec<_> = std::fs::read_dir(&downloads)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(mintd::fleet::replay::jobs(d.updater.state().database())
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_halfway_resumes_with_range_and_installs() {
    let probe = Workspace::new();
    let size = std::fs::metadata(probe.bundle("m", "1", 1).golden("auto:64").create())
        .unwrap()
        .len() as usize;
    drop(probe);
    let faults = Faults {
        cut_first_at: Some(size / 2),
        ..Faults::default()
    };
    let (d, server, done) = remote_install(faults, false).await;
    assert_installed(&d, &done);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    let range = requests[1]
        .range
        .as_deref()
        .expect("a Range on the second request");
    let from: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0, "{range}");
    let interrupted = d.events("download_interrupted");
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    let progress = d.events("download_progress");
    assert!(progress.len() >= 2, "{progress:?}");
    assert_eq!(progress.last().unwrap()["details"]["percent"], 100);
    assert_eq!(d.events("download_started").len(), 1);
    assert!(!d.events("committed").is_empty() || !d.events("health_passed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ignoring_range_and_a_redirect_still_install() {
    let probe = Workspace::new();
    let size = std::fs::metadata(probe.bundle("m", "1", 1).golden("auto:64").create())
        .unwrap()
        .len() as usize;
    drop(probe);
    let faults = Faults {
        cut_first_at: Some(size / 3),
        ignore_range: true,
        ..Faults::default()
    };
    let (d, server, done) = remote_install(faults, false).await;
    assert_installed(&d, &done);
    assert_eq!(server.requests().len(), 2);

    // A redirect to the file.
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1", 1).create();
    let bytes = std::fs::read(&bundle).unwrap();
    let d = device(ws).await;
    let server = FileServer::start(
        bytes.clone(),
        Faults {
            redirect: true,
            ..Faults::default()
        },
    )
    .await;
    let p = payload(
        "install",
        json!({"url": format!("http://{}/redirect", server.addr), "sha256": sha256_hex(&bytes), "size": bytes.len()}),
        DEVICE,
    );
    d.send(&d.sign(&p)).await.unwrap();
    let done = d.final_result(&p.nonce, Duration::from_secs(60)).await;
    assert_installed(&d, &done);
    assert_eq!(server.requests()[0].path, "/redirect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_downloads_check_the_server_certificate() {
    let (d, _server, done) = remote_install(Faults::default(), true).await;
    assert_installed(&d, &done);

    // Without the test CA the same server is refused at once (another attempt would not make
    // its certificate trusted), nothing installed.
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1", 1).create();
    let bytes = std::fs::read(&bundle).unwrap();
    let d = device(ws).await;
    let certs = support::broker::Certs::generate(&d.ws.path("certs"));
    let server = FileServer::start_tls(
        bytes.clone(),
        Faults::default(),
        &std::fs::read(certs.path("server.pem")).unwrap(),
        &std::fs::read(certs.path("server.key")).unwrap(),
    )
    .await;
    let p = payload(
        "install",
        json!({"url": server.url(true), "sha256": sha256_hex(&bytes), "size": bytes.len()}),
        DEVICE,
    );
    d.send(&d.sign(&p)).await.unwrap();
    let done = d.final_result(&p.nonce, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["reason"], "download", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("TLS with localhost:")
            && error.contains("the server's certificate is not trusted")
            && error.contains("certificate verify failed")
            && error.contains("SSL_CERT_FILE"),
        "{done}"
    );
    assert!(!error.contains("gave up after"), "retried: {done}");
    assert_eq!(d.serving_digest("m"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_or_too_many_bytes_installs_nothing() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1", 1).create();
    let bytes = std::fs::read(&bundle).unwrap();
    let d = device(ws).await;

    // The server's file is not the signed one (one byte differs in the payload region: the
    // verifier would refuse it too, but the digest check names the problem first).
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let server = FileServer::start(tampered, Faults::default()).await;
    let nonce = d.install_from(&server, &bytes).await;
    let done = d.final_result(&nonce, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        ["download_content", "digest", "framing"].contains(&done["reason"].as_str().unwrap()),
        "{done}"
    );
    assert_eq!(d.serving_digest("m"), None);

    // A valid bundle with the right digest, but the server sends bytes beyond the signed size.
    let server = FileServer::start(
        bytes.clone(),
        Faults {
            extra: 1000,
            ..Faults::default()
        },
    )
    .await;
    let nonce = d.install_from(&server, &bytes).await;
    let done = d.final_result(&nonce, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["reason"], "download_content", "{done}");
    assert!(done["error"].as_str().unwrap().contains("offers"), "{done}");
    assert_eq!(d.serving_digest("m"), None);

    // A signed size smaller than the file: never more than the signed size is read.
    let server = FileServer::start(bytes.clone(), Faults::default()).await;
    let p = payload(
        "install",
        json!({"url": server.url(false), "sha256": sha256_hex(&bytes), "size": bytes.len() - 1}),
        DEVICE,
    );
    d.send(&d.sign(&p)).await.unwrap();
    let done = d.final_result(&p.nonce, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(d.serving_digest("m"), None);
    assert!(d.events("command_failed").len() >= 3);
    assert!(d.events("committed").is_empty());
}

/// The downloader alone, into a channel drained like the verifier drains it.
async fn fetch(job: &download::Job) -> (Result<(), download::DownloadError>, Vec<u8>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        got
    });
    let options = download::Options {
        retry_base: Duration::from_millis(50),
        max_failures: 2,
        ..download::Options::default()
    };
    let result = download::run(job, &options, &tx, &mut |_| {}).await;
    drop(tx);
    (result, reader.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_length_needs_a_given_size_and_never_exceeds_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let server = FileServer::start(
        body.clone(),
        Faults {
            no_length: true,
            ..Faults::default()
        },
    )
    .await;
    let job = |size: Option<u64>, max: u64, name: &str| download::Job {
        url: server.url(false),
        sha256: None,
        size,
        max_size: max,
        part: dir.path().join(name),
    };
    // No size given and none announced: refused before a byte is kept.
    let (r, got) = fetch(&job(None, 1 << 20, "a.part")).await;
    assert!(
        matches!(r, Err(download::DownloadError::UnknownSize)),
        "{r:?}"
    );
    assert!(got.is_empty());
    // The size given: read to the end of the body.
    let (r, got) = fetch(&job(Some(body.len() as u64), 1 << 20, "b.part")).await;
    r.unwrap();
    assert_eq!(got, body);
    // A given size smaller than what the server sends: never more than the size is read.
    let (r, got) = fetch(&job(Some(1000), 1000, "c.part")).await;
    assert!(
        matches!(r, Err(download::DownloadError::TooLarge { signed: 1000 })),
        "{r:?}"
    );
    assert!(got.len() <= 1000);
    assert!(std::fs::metadata(dir.path().join("c.part")).unwrap().len() <= 1000);
}
