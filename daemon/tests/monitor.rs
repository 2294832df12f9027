//! What mintd watches while it serves, against the real daemon: `GET /metrics` in Prometheus
//! text format (requests, rejects by reason, latency histogram, drift, model labels), drift of
//! the inputs from the manifest's reference statistics (one `drift_detected` event, then
//! `drift_cleared`), and the periodic re-verification of the store: a model file changed on
//! disk is reported once as `tamper_detected`, the verified model in memory keeps answering,
//! and the changed copy is never loaded again, not even after a restart.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{digest, http, Daemon, Workspace};

/// `GET /metrics`, parsed into `series{labels} -> value`.
fn metrics(d: &Daemon) -> BTreeMap<String, f64> {
    let reply = http::unix(&d.socket, "GET", "/metrics", &[], b"");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(reply.body).expect("UTF-8 exposition");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "series {series} twice"
        );
    }
    out
}

/// An inference of one row of the mlp; waits out the model's rate limit (100/s) rather than
/// counting 429s.
fn infer_row(d: &Daemon, row: &[f64]) -> (u16, Value) {
    let request =
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": row}]});
    loop {
        let reply = http::unix(
            &d.socket,
            "POST",
            "/v2/models/m/infer",
            &[("Content-Type", "application/json".into())],
            request.to_string().as_bytes(),
        );
        if reply.status == 429 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        return (reply.status, reply.json());
    }
}

/// Rows like the reference's inputs (`auto:N` draws them uniformly from [-1, 1]), from a
/// fixed-seed generator.
fn reference_like_rows(n: usize) -> Vec<Vec<f64>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..n).map(|_| (0..16).map(|_| next()).collect()).collect()
}

fn install_committed(d: &Daemon, bundle: &Path) -> String {
    let reply = d.install(bundle).expect("install");
    assert_eq!(reply["outcome"], "committed", "{reply}");
    digest(&reply["model"])
}

/// A daemon whose files are its own (`tag` in their names), so that several run side by side,
/// with `settings` (section, key, value) and `bundle` installed and committed.
fn own_daemon(ws: &Workspace, tag: &str, settings: &[(&str, &str, &str)], bundle: &Path) -> Daemon {
    let mut config = ws.config();
    config.path = ws.path(&format!("mintd-{tag}.toml"));
    config.log = ws.path(&format!("mintd-{tag}.log"));
    config.socket = ws.path(&format!("{tag}.sock"));
    config.state_dir = ws.path(&format!("state-{tag}"));
    for (section, key, value) in settings {
        config.set(section, key, value);
    }
    let d = config.start();
    install_committed(&d, bundle);
    d
}

fn wait_for_event(d: &Daemon, kind: &str, deadline: Duration) -> Vec<Value> {
    let until = Instant::now() + deadline;
    loop {
        let events = d.events_of(kind);
        if !events.is_empty() || Instant::now() > until {
            return events;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_requests_rejects_latency_and_drift_with_model_labels() {
    let ws = Workspace::new();
    // 64 reference cases: stable reference statistics.
    let bundle = ws.bundle("m", "1.0.0", 1).golden("auto:64").create();
    let mut config = ws.config();
    config
        .set("monitor", "drift_min_requests", "20")
        .set("monitor", "drift_threshold", "3.0")
        .set("monitor", "rehash_interval_secs", "0");
    let d = config.start();
    let digest = install_committed(&d, &bundle);

    // Traffic like the reference: answered, no drift.
    for row in reference_like_rows(40) {
        let (status, body) = infer_row(&d, &row);
        assert_eq!(status, 200, "{body}");
    }
    // One refused request of each kind the series must separate.
    let (status, _) = infer_row(&d, &[0.0; 15]);
    assert_eq!(status, 400);
    let reply = http::unix(&d.socket, "POST", "/v2/models/nope/infer", &[], b"{}");
    assert_eq!(reply.status, 404);

    let m = metrics(&d);
    let l = format!("model=\"m\",version=\"1.0.0\",digest=\"{digest}\"");
    let get = |series: &str| -> f64 {
        *m.get(series)
            .unwrap_or_else(|| panic!("no series {series} in {m:#?}"))
    };
    assert_eq!(get("mintd_up{version=\"0.1.0\"}"), 1.0);
    assert_eq!(
        get(&format!(
            "mintd_model_info{{{l},sequence=\"1\",phase=\"committed\"}}"
        )),
        1.0
    );
    let rate_limited = m
        .get(&format!(
            "mintd_inference_rejects_total{{{l},reason=\"rate_limit\"}}"
        ))
        .copied()
        .unwrap_or(0.0);
    assert_eq!(
        get(&format!("mintd_inference_requests_total{{{l}}}")),
        41.0 + rate_limited
    );
    assert_eq!(
        get(&format!(
            "mintd_inference_rejects_total{{{l},reason=\"count\"}}"
        )) + get(&format!(
            "mintd_inference_rejects_total{{{l},reason=\"shape\"}}"
        )),
        1.0
    );
    assert_eq!(
        get("mintd_inference_rejects_total{model=\"\",version=\"\",digest=\"\",reason=\"unknown_model\"}"),
        1.0
    );
    assert_eq!(
        get(&format!("mintd_inference_latency_seconds_count{{{l}}}")),
        40.0
    );
    assert_eq!(
        get(&format!(
            "mintd_inference_latency_seconds_bucket{{{l},le=\"+Inf\"}}"
        )),
        40.0
    );
    assert!(get(&format!("mintd_inference_latency_seconds_sum{{{l}}}")) > 0.0);
    let score = get(&format!("mintd_model_drift_score{{{l}}}"));
    assert!(score < 1.0, "reference-like traffic scored {score}");
    assert_eq!(get(&format!("mintd_model_drifting{{{l}}}")), 0.0);
    assert_eq!(get("mintd_tamper_detected_total"), 0.0);
    assert!(get("mintd_resident_memory_bytes") > 1e6);
    assert!(d.events_of("drift_detected").is_empty());

    // Inputs far from what the model was signed with (this bundle declares no range, so
    // they are accepted): the recent mean moves about 5 reference standard deviations.
    for _ in 0..100 {
        let (status, body) = infer_row(&d, &[3.0; 16]);
        assert_eq!(status, 200, "{body}");
    }
    let events = wait_for_event(&d, "drift_detected", Duration::from_secs(5));
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["model"], "m");
    assert_eq!(e["severity"], "warning");
    assert!(e["details"]["score"].as_f64().unwrap() > 3.0, "{e}");
    assert_eq!(e["details"]["threshold"], 3.0);
    let m = metrics(&d);
    assert_eq!(m[&format!("mintd_model_drifting{{{l}}}")], 1.0);
    assert!(m[&format!("mintd_model_drift_score{{{l}}}")] > 3.0);
    assert!(
        m[&format!("mintd_tensor_drift_score{{{l},tensor=\"input\",side=\"input\"}}")].is_finite()
    );

    // Back to reference-like traffic: cleared, once.
    for row in reference_like_rows(400) {
        let (status, _) = infer_row(&d, &row);
        assert_eq!(status, 200);
    }
    let cleared = wait_for_event(&d, "drift_cleared", Duration::from_secs(5));
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(d.events_of("drift_detected").len(), 1);
}

#[test]
fn a_model_changed_on_disk_is_reported_once_keeps_serving_from_memory_and_is_never_loaded_again() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1.0.0", 1).create();
    let mut config = ws.config();
    config.set("monitor", "rehash_interval_secs", "1");
    let mut d = config.start();
    let digest = install_committed(&d, &bundle);
    let row = [0.25; 16];
    let (status, before) = infer_row(&d, &row);
    assert_eq!(status, 200);

    // Someone with write access to the store flips one byte of the model.
    let path = d.state_dir.join("store").join(&digest).join("model.onnx");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let events = wait_for_event(&d, "tamper_detected", Duration::from_secs(15));
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["severity"], "critical");
    assert_eq!(e["model"], "m");
    assert_eq!(e["details"]["digest"], digest.as_str());
    assert_eq!(e["details"]["file"], "model.onnx");
    assert_eq!(e["details"]["serving"], true);
    assert!(
        e["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("SHA-256 is"),
        "{e}"
    );

    // The verified model in memory answers as before.
    let (status, after) = infer_row(&d, &row);
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["outputs"], before["outputs"]);

    // Later passes do not report it again.
    let passes = |d: &Daemon| metrics(d)["mintd_store_verifications_total"];
    let seen = passes(&d);
    let until = Instant::now() + Duration::from_secs(10);
    while passes(&d) < seen + 2.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(passes(&d) >= seen + 2.0, "no further passes");
    assert_eq!(d.events_of("tamper_detected").len(), 1);
    assert_eq!(metrics(&d)["mintd_tamper_detected_total"], 1.0);

    // A restarted daemon does not load the changed copy: it serves nothing rather than
    // bytes nobody signed, and says why.
    d.terminate(Duration::from_secs(10));
    let d = config.start();
    let status = d.get("/v1/status");
    assert_eq!(status["serving"], json!([]), "{status}");
    let (code, body) = infer_row(&d, &row);
    assert_eq!(code, 404, "{body}");
    assert!(d.stderr().contains("never loaded again"), "{}", d.stderr());
    assert_eq!(d.events_of("tamper_detected").len(), 1);
}

/// A small model runs on the async worker that read the request (`api.inline_max_us`), and
/// answers exactly as it does from the blocking threads; `/metrics` tells which thread ran
/// it and the engine's estimate of one run. A model slower than the limit, or a body above
/// 64 KiB, goes to the blocking threads.
#[test]
fn small_models_run_inline_with_the_same_answers_as_on_the_blocking_threads() {
    let ws = Workspace::new();
    let bundle = ws
        .bundle("m", "1.0.0", 1)
        .arg("--max-batch")
        .arg("4096")
        .create();
    let start = |inline_max_us: &str| {
        own_daemon(
            &ws,
            inline_max_us,
            &[
                ("api", "inline_max_us", inline_max_us),
                ("monitor", "rehash_interval_secs", "0"),
            ],
            &bundle,
        )
    };
    let inline = start("1000");
    let blocking = start("0");
    let runs = |d: &Daemon| {
        let m = metrics(d);
        (
            m["mintd_inference_runs_total{thread=\"inline\"}"],
            m["mintd_inference_runs_total{thread=\"blocking\"}"],
        )
    };
    let typical = |d: &Daemon| -> f64 {
        let m = metrics(d);
        *m.iter()
            .find(|(k, _)| k.starts_with("mintd_model_typical_run_seconds{model=\"m\""))
            .unwrap_or_else(|| panic!("no typical run time in {m:#?}"))
            .1
    };
    // The golden cases of the install measured the model: the estimate is there already.
    // A first, cold run can be slow on a debug build; a few requests bring it down.
    assert!(typical(&inline) > 0.0);
    for row in reference_like_rows(30) {
        assert_eq!(infer_row(&inline, &row).0, 200);
    }
    let t = typical(&inline);
    assert!(t > 0.0 && t < 0.001, "typical run {t} s");
    let before = runs(&inline);

    let rows = reference_like_rows(20);
    for row in &rows {
        let (a, ja) = infer_row(&inline, row);
        let (b, jb) = infer_row(&blocking, row);
        assert_eq!((a, b), (200, 200), "{ja} {jb}");
        assert_eq!(ja, jb, "inline and blocking answers differ");
    }
    // Every request of the limit-0 daemon went to the blocking threads. On the other, a run
    // preempted on a busy machine can look slow and send a few of the next ones there too.
    assert_eq!(runs(&blocking), (0.0, 20.0));
    // Its free batch keeps it off the request's own thread (`in_place`), whatever its speed.
    assert_eq!(
        metrics(&blocking)["mintd_inference_runs_total{thread=\"in_place\"}"],
        0.0
    );
    let (on_worker, handed_off) = runs(&inline);
    let (on_worker, handed_off) = (on_worker - before.0, handed_off - before.1);
    assert_eq!(on_worker + handed_off, 20.0);
    assert!(on_worker >= 10.0, "{on_worker} of 20 ran inline");

    // A refusal on the inline path is the same refusal.
    let (a, ja) = infer_row(&inline, &[f64::from(f32::MAX) * 2.0; 16]);
    let (b, jb) = infer_row(&blocking, &[f64::from(f32::MAX) * 2.0; 16]);
    assert_eq!((a, b), (400, 400));
    assert_eq!(ja, jb);

    // A body above 64 KiB goes to the blocking threads even for a fast model.
    let big = 2048;
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [big, 16],
                    "parameters": {"binary_data_size": big * 64}}],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend((0..big * 16).flat_map(|i| ((i % 13) as f32 / 13.0).to_le_bytes()));
    let (inline_before, blocking_before) = runs(&inline);
    let reply = http::unix(
        &inline.socket,
        "POST",
        "/v2/models/m/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    reply.assert_ok();
    assert_eq!(runs(&inline), (inline_before, blocking_before + 1.0));
}

/// A fixed-shape model (the convnet) whose typical run fits its deadline many times runs on
/// the request's own thread once it has left the async workers (`in_place`: no hand-off to the
/// blocking pool and back), with the very bits of the engine run in this process. With a
/// deadline it does not fit eight times (`api.in_place_runs`), or with `in_place_runs = 0`, it
/// goes to the blocking pool, whose 504 does not wait for the run.
#[test]
fn fixed_shape_models_run_on_the_requests_own_thread_unless_their_deadline_is_near_or_off() {
    let ws = Workspace::new();
    let model = support::fixture("convnet.onnx");
    // The convnet as model `name` with the manifest's deadline; its golden case measures it at
    // install.
    let convnet = |name: &str, timeout_ms: &str| {
        ws.bundle(name, "1", 1)
            .model(model.clone())
            .golden("auto:1")
            .arg("--timeout-ms")
            .arg(timeout_ms)
            .create()
    };
    // 10 minutes (the daemon's `request_timeout_ms` below too): eight runs of a debug build on
    // a loaded machine fit it. 1 ms is below any run of the convnet.
    let fits = convnet("c", "600000");
    let tight = convnet("t", "1");
    let start = |in_place_runs: &str| {
        own_daemon(
            &ws,
            in_place_runs,
            &[
                ("api", "inline_max_us", "0"),
                ("api", "in_place_runs", in_place_runs),
                ("api", "request_timeout_ms", "600000"),
                ("update", "health_timeout_ms", "600000"),
                ("monitor", "rehash_interval_secs", "0"),
            ],
            &fits,
        )
    };
    let runs = |d: &Daemon| {
        let m = metrics(d);
        ["inline", "in_place", "blocking"]
            .map(|t| m[&format!("mintd_inference_runs_total{{thread=\"{t}\"}}")])
    };

    let values: Vec<f32> = (0..3 * 64 * 64)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let header = json!({
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64],
                    "parameters": {"binary_data_size": values.len() * 4}}],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let post = |d: &Daemon, model: &str| {
        http::unix(
            &d.socket,
            "POST",
            &format!("/v2/models/{model}/infer"),
            &[("Inference-Header-Content-Length", header.len().to_string())],
            &body,
        )
    };
    // The answer's output values as bits.
    let answer = |d: &Daemon| -> Vec<u32> {
        let reply = post(d, "c");
        reply.assert_ok();
        let json_length: usize = reply
            .header("inference-header-content-length")
            .expect("a binary answer")
            .parse()
            .unwrap();
        reply.body[json_length..]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };

    let engine = mintd::engine::Engine::load_unchecked(&fs::read(&model).unwrap()).unwrap();
    let input = mintd::tensor::V2Tensor {
        name: "image".into(),
        datatype: "FP32".into(),
        shape: vec![1, 3, 64, 64],
        data: values.iter().map(|&v| json!(v)).collect(),
    };
    let expected: Vec<u32> = engine.run(&[input]).unwrap()[0]
        .data
        .iter()
        .map(|v| (v.as_f64().unwrap() as f32).to_bits())
        .collect();

    let d = start("8");
    for _ in 0..3 {
        assert_eq!(answer(&d), expected, "the answer's bits are the engine's");
    }
    assert_eq!(runs(&d), [0.0, 3.0, 0.0]);

    install_committed(&d, &tight);
    let started = Instant::now();
    let reply = post(&d, "t");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 504, "{text}");
    assert!(text.contains("deadline of 1 ms passed"), "{text}");
    assert_eq!(
        runs(&d),
        [0.0, 3.0, 1.0],
        "the tight deadline's run went to the pool"
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    // `api.in_place_runs = 0`: the same model on the pool, with the same bits.
    let pool = start("0");
    assert_eq!(
        answer(&pool),
        expected,
        "the pool's answer has the engine's bits"
    );
    assert_eq!(runs(&pool), [0.0, 0.0, 1.0]);
}
