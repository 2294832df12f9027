//! Guarded inference against the real `mintd`: `POST /v2/models/{name}/infer` answers with
//! the outputs of the verified model (checked against the fixture's reference outputs), in v2
//! JSON or the binary tensor extension, and refuses every hostile request with a clear
//! status and message — wrong datatype or shape, a batch above the manifest's limit, NaN and
//! infinity, values outside the declared range, oversized bodies, malformed JSON, a binary
//! header whose lengths lie, unknown models, floods beyond the rate limit, more requests than
//! inference slots, a deadline passed — while well-formed requests keep being answered. A
//! model that outputs NaN is a 500 and counts against its trial until it is rolled back.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mint_updater::bundle::write::{build_bundle, BuildOptions, FileSource, Source};
use mint_updater::manifest::{
    DataType, FileRole, GuardSettings, HealthCheck, TensorSpec, FORMAT_VERSION,
};
use mint_updater::{Manifest, OperatorKey};
use serde_json::{json, Value};
use support::http::Reply;
use support::{assert_close, digest, fixture, mlp_reference_cases, Daemon, Workspace, MINTCTL};

/// `POST path` over the socket with `headers` and `body`.
fn post(socket: &Path, path: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    support::http::unix(socket, "POST", path, headers, body)
}

/// A v2 JSON request.
fn infer(d: &Daemon, model: &str, request: &Value) -> Reply {
    post(
        &d.socket,
        &format!("/v2/models/{model}/infer"),
        &[("Content-Type", "application/json".into())],
        request.to_string().as_bytes(),
    )
}

/// A binary-extension request: `json` then `data`.
fn infer_binary(d: &Daemon, model: &str, json: &Value, data: &[u8]) -> Reply {
    let header = json.to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(data);
    post(
        &d.socket,
        &format!("/v2/models/{model}/infer"),
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Inference-Header-Content-Length", header.len().to_string()),
        ],
        &body,
    )
}

/// `{"inputs": [input FP32 [rows, 16]]}` for the mlp.
fn mlp_request(rows: &[Vec<f64>]) -> Value {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows.len(), 16], "data": flat}]})
}

/// A well-formed one-row request.
fn good_request() -> Value {
    mlp_request(&[vec![0.25; 16]])
}

/// Little-endian f32 bytes.
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn data_f64(output: &Value) -> Vec<f64> {
    output["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {output}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Installs `bundle`, which must commit.
fn install_committed(d: &Daemon, bundle: &Path) -> String {
    let reply = d.install(bundle).expect("install");
    assert_eq!(reply["outcome"], "committed", "{reply}");
    digest(&reply["model"])
}

/// `cmd` (`mintctl`, or a wrapper running it as another user) with `--socket S [--json]
/// infer NAME --input -` and `request` on stdin.
fn mintctl_infer(
    d: &Daemon,
    mut cmd: Command,
    json_flag: bool,
    name: &str,
    request: &str,
) -> std::process::Output {
    cmd.arg("--socket").arg(&d.socket);
    if json_flag {
        cmd.arg("--json");
    }
    let mut child = cmd
        .args(["infer", name, "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mintctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn answers_match_the_reference_outputs_of_the_verified_model() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1.0.0", 1).create();
    let d = ws.config().start();
    install_committed(&d, &bundle);
    let cases = mlp_reference_cases();
    assert_eq!(cases.len(), 3);

    // One case per request, v2 JSON.
    for (i, (input, expected)) in cases.iter().enumerate() {
        let mut request = mlp_request(std::slice::from_ref(input));
        request["id"] = json!(format!("case-{i}"));
        let reply = infer(&d, "m", &request);
        reply.assert_ok();
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("inference-header-content-length"), None);
        let body = reply.json();
        assert_eq!(body["model_name"], "m");
        assert_eq!(body["model_version"], "1.0.0");
        assert_eq!(body["id"], format!("case-{i}"));
        let out = &body["outputs"][0];
        assert_eq!(out["name"], "output");
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([1, 4]));
        assert_close(&data_f64(out), expected, &format!("case {i}"));
    }

    // All three as one batch, nested data.
    let rows: Vec<Vec<f64>> = cases.iter().map(|(i, _)| i.clone()).collect();
    let expected: Vec<f64> = cases.iter().flat_map(|(_, o)| o.clone()).collect();
    let mut request = mlp_request(&rows);
    request["inputs"][0]["data"] = json!(rows);
    let body = infer(&d, "m", &request).json();
    assert_eq!(body["outputs"][0]["shape"], json!([3, 4]), "{body}");
    assert_close(&data_f64(&body["outputs"][0]), &expected, "batch");

    // The same batch through the binary extension, both ways.
    let floats: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 16],
                    "parameters": {"binary_data_size": floats.len() * 4}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
    });
    let reply = infer_binary(&d, "m", &header, &f32_bytes(&floats));
    reply.assert_ok();
    let (json_part, binary) = reply.split();
    assert_close(
        &binary
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect::<Vec<_>>(),
        &expected,
        "binary batch",
    );
    assert_eq!(
        json_part["outputs"][0]["parameters"]["binary_data_size"],
        48
    );

    // mintctl infer: the outputs, human and --json.
    let request = mlp_request(std::slice::from_ref(&cases[0].0)).to_string();
    let out = mintctl_infer(&d, Command::new(MINTCTL), true, "m", &request);
    let text = support::stdout_ok(&out, "mintctl --json infer");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_close(
        &data_f64(&reply["outputs"][0]),
        &cases[0].1,
        "mintctl --json",
    );
    let out = mintctl_infer(&d, Command::new(MINTCTL), false, "m", &request);
    let text = support::stdout_ok(&out, "mintctl infer");
    assert!(
        text.starts_with("m 1.0.0\n  output FP32 [1, 4]: "),
        "{text}"
    );

    // mintctl infer names a refusal, with the daemon's reason as the cause.
    let hostile = mlp_request(&[vec![1e39; 16]]).to_string();
    let out = mintctl_infer(&d, Command::new(MINTCTL), true, "m", &hostile);
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"], "inference on model m failed", "{err}");
    assert!(
        err["causes"][0]
            .as_str()
            .unwrap()
            .contains("value #0 (1e39) overflows FP32 to infinity"),
        "{err}"
    );
}

#[test]
fn binary_extension_round_trip_with_per_output_choice() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1.0.0", 1).create();
    let d = ws.config().start();
    install_committed(&d, &bundle);
    let rows = [vec![0.5f32; 16], vec![-0.5f32; 16]];
    let floats: Vec<f32> = rows.iter().flatten().copied().collect();
    let reference = infer(&d, "m", &mlp_request(&[vec![0.5; 16], vec![-0.5; 16]])).json();
    let expected = data_f64(&reference["outputs"][0]);

    // tritonclient's default: binary input, request-level binary_data_output, no outputs
    // listed, a request id.
    let header = json!({
        "id": "7",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 16],
                    "parameters": {"binary_data_size": 128}}],
        "parameters": {"binary_data_output": true}
    });
    let reply = infer_binary(&d, "m", &header, &f32_bytes(&floats));
    reply.assert_ok();
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    let length: usize = reply.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, reply.body.len());
    let (json_part, binary) = reply.split();
    assert_eq!(json_part["id"], "7");
    assert_eq!(json_part["model_name"], "m");
    let out = &json_part["outputs"][0];
    assert_eq!(out["shape"], json!([2, 4]));
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["parameters"]["binary_data_size"], 32);
    assert!(out.get("data").is_none(), "{out}");
    assert_eq!(binary.len(), 32);
    let values: Vec<f32> = binary
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let expected_f32: Vec<f32> = expected.iter().map(|&x| x as f32).collect();
    assert_eq!(
        values, expected_f32,
        "binary and JSON answers carry the same f32 values"
    );

    // An output's own "binary_data": false wins over the request's choice: all JSON, no
    // binary framing in the answer.
    let mut header = header;
    header["outputs"] = json!([{"name": "output", "parameters": {"binary_data": false}}]);
    let reply = infer_binary(&d, "m", &header, &f32_bytes(&floats));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("inference-header-content-length"), None);
    assert_eq!(data_f64(&reply.json()["outputs"][0]), expected);

    // JSON inputs, binary output; the versioned path.
    let mut request = mlp_request(&[vec![0.5; 16], vec![-0.5; 16]]);
    request["outputs"] = json!([{"name": "output", "parameters": {"binary_data": true}}]);
    let reply = post(
        &d.socket,
        "/v2/models/m/versions/1.0.0/infer",
        &[],
        request.to_string().as_bytes(),
    );
    reply.assert_ok();
    let (_, binary) = reply.split();
    assert_eq!(binary.len(), 32);
    let reply = post(
        &d.socket,
        "/v2/models/m/versions/9/infer",
        &[],
        request.to_string().as_bytes(),
    );
    reply.refused(404, "unknown_model", "version \"9\" is not served");
}

#[test]
fn hostile_requests_are_refused_while_good_ones_keep_being_answered() {
    let ws = Workspace::new();
    let bundle = ws
        .bundle("m", "1.0.0", 1)
        .arg("--range")
        .arg("input=-5:5")
        .arg("--max-batch")
        .arg("4")
        .arg("--rate-limit")
        .arg("100000")
        .create();
    let mut config = ws.config();
    config.set("api", "rate_limit_per_sec", "100000");
    let d = Arc::new(config.start());
    install_committed(&d, &bundle);

    // A well-behaved client keeps asking all along.
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (d, stop) = (d.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) || statuses.is_empty() {
                statuses.push(infer(&d, "m", &good_request()).status);
                std::thread::sleep(Duration::from_millis(5));
            }
            statuses
        })
    };

    let input = |datatype: &str, shape: Value, data: Value| json!({"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]});
    let ones = |n: usize| json!(vec![1; n]);
    // Wrong datatype.
    infer(&d, "m", &input("INT32", json!([1, 16]), ones(16))).refused(
        400,
        "datatype",
        "input \"input\" has datatype INT32 but the model takes FP32",
    );
    infer(&d, "m", &input("FLOAT32", json!([1, 16]), ones(16))).refused(
        400,
        "datatype",
        "unknown datatype \"FLOAT32\"",
    );
    // Wrong shape.
    infer(&d, "m", &input("FP32", json!([1, 15]), ones(15))).refused(
        400,
        "shape",
        "input \"input\" has shape [1, 15] but the model takes [-1, 16]",
    );
    infer(&d, "m", &input("FP32", json!([16]), ones(16))).refused(400, "shape", "[16]");
    infer(&d, "m", &input("FP32", json!([0, 16]), json!([]))).refused(
        400,
        "shape",
        "dimension 0 of shape [0, 16] is 0",
    );
    // Batch above the manifest's max_batch.
    infer(&d, "m", &input("FP32", json!([5, 16]), ones(80))).refused(
        400,
        "batch",
        "batch of 5 is above the model's max_batch of 4",
    );
    // Values that do not match the shape.
    infer(&d, "m", &input("FP32", json!([1, 16]), ones(15))).refused(
        400,
        "count",
        "shape [1, 16] needs 16 values, got 15",
    );
    // NaN and infinity, in binary (JSON has no NaN) and as a JSON number beyond FP32.
    let header = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                      "parameters": {"binary_data_size": 64}}]});
    let mut values = [0.5f32; 16];
    values[3] = f32::NAN;
    infer_binary(&d, "m", &header, &f32_bytes(&values)).refused(
        400,
        "non_finite",
        "input \"input\": value #3 is NaN; NaN and infinite values are refused",
    );
    values[3] = f32::NEG_INFINITY;
    infer_binary(&d, "m", &header, &f32_bytes(&values)).refused(
        400,
        "non_finite",
        "value #3 is -inf",
    );
    let mut data = vec![json!(0.5); 16];
    data[2] = json!(1e39);
    infer(&d, "m", &input("FP32", json!([1, 16]), json!(data))).refused(
        400,
        "non_finite",
        "value #2 (1e39) overflows FP32 to infinity",
    );
    let nan_literal =
        br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1],"data":[NaN]}]}"#;
    post(&d.socket, "/v2/models/m/infer", &[], nan_literal).refused(
        400,
        "malformed",
        "NaN and Infinity are not JSON numbers",
    );
    // Outside the declared range.
    let mut data = vec![json!(0.5); 16];
    data[7] = json!(7.5);
    infer(&d, "m", &input("FP32", json!([1, 16]), json!(data))).refused(
        400,
        "range",
        "input \"input\": value #7 = 7.5 is outside the declared range [-5, 5]",
    );
    // Values of the wrong kind.
    let mut data = vec![json!(0.5); 16];
    data[0] = json!("zero");
    infer(&d, "m", &input("FP32", json!([1, 16]), json!(data))).refused(
        400,
        "value",
        "value #0 (a string) is not a valid FP32",
    );
    // Malformed JSON, not JSON at all, not a v2 request.
    post(&d.socket, "/v2/models/m/infer", &[], b"{\"inputs\": [").refused(
        400,
        "malformed",
        "not a valid v2 inference request: EOF while parsing",
    );
    post(
        &d.socket,
        "/v2/models/m/infer",
        &[],
        &[0xff, 0x00, 0x13, 0x37],
    )
    .refused(400, "malformed", "not a valid v2 inference request");
    infer(&d, "m", &json!({"instances": [[1, 2]]})).refused(
        400,
        "malformed",
        "unknown field `instances`",
    );
    // Inputs and outputs the model does not have, or lacks.
    infer(
        &d,
        "m",
        &json!({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 16], "data": ones(16)}]}),
    )
    .refused(
        400,
        "input_name",
        "unknown input \"image\": the model takes \"input\" (FP32 [-1, 16])",
    );
    infer(&d, "m", &json!({"inputs": []})).refused(400, "input_name", "missing input \"input\"");
    let mut request = good_request();
    request["outputs"] = json!([{"name": "logits"}]);
    infer(&d, "m", &request).refused(
        400,
        "output_name",
        "unknown output \"logits\": the model's outputs are \"output\"",
    );
    // Binary headers that lie.
    let json_part = header.to_string();
    let mut body = json_part.clone().into_bytes();
    body.extend_from_slice(&f32_bytes(&[0.5; 16]));
    let lying = |length: String, body: &[u8]| {
        post(
            &d.socket,
            "/v2/models/m/infer",
            &[("Inference-Header-Content-Length", length)],
            body,
        )
    };
    lying((body.len() + 100).to_string(), &body).refused(
        400,
        "malformed",
        &format!(
            "Inference-Header-Content-Length says the JSON header is {} bytes but the whole body \
             is only {} bytes",
            body.len() + 100,
            body.len()
        ),
    );
    lying((json_part.len() - 5).to_string(), &body).refused(
        400,
        "malformed",
        "not a valid v2 inference request",
    );
    lying((json_part.len() + 4).to_string(), &body).refused(
        400,
        "malformed",
        "not a valid v2 inference request",
    );
    lying("-1".into(), &body).refused(
        400,
        "malformed",
        "Inference-Header-Content-Length \"-1\" is not a byte count",
    );
    lying(json_part.len().to_string(), &body[..body.len() - 4]).refused(
        400,
        "malformed",
        "binary_data_size is 64 but only 60 bytes of binary data are left",
    );
    let mut longer = body.clone();
    longer.extend_from_slice(&[0; 8]);
    lying(json_part.len().to_string(), &longer).refused(
        400,
        "malformed",
        "8 bytes of binary data after the JSON header belong to no input",
    );
    let mut small = header.clone();
    small["inputs"][0]["parameters"]["binary_data_size"] = json!(60);
    let mut body = small.to_string().into_bytes();
    body.extend_from_slice(&[0; 60]);
    lying(small.to_string().len().to_string(), &body).refused(
        400,
        "count",
        "shape [1, 16] of FP32 needs 64 bytes of binary data, binary_data_size is 60",
    );
    post(
        &d.socket,
        "/v2/models/m/infer",
        &[],
        header.to_string().as_bytes(),
    )
    .refused(
        400,
        "malformed",
        "has binary_data_size but the request has no Inference-Header-Content-Length header",
    );
    // Compressed bodies are not inflated.
    post(
        &d.socket,
        "/v2/models/m/infer",
        &[("Content-Encoding", "gzip".into())],
        good_request().to_string().as_bytes(),
    )
    .refused(400, "malformed", "Content-Encoding gzip is not supported");
    // A model that is not served.
    infer(&d, "nope", &good_request()).refused(
        404,
        "unknown_model",
        "model \"nope\" is not served",
    );

    stop.store(true, Ordering::Relaxed);
    let statuses = good.join().unwrap();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "a well-formed request failed during the hostile ones: {statuses:?}"
    );
    assert_eq!(infer(&d, "m", &good_request()).status, 200);
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
}

#[test]
fn oversized_bodies_and_json_parts_are_413() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1.0.0", 1).create();
    let mut config = ws.config();
    let limit = 6 * 1024 * 1024;
    config.set("api", "max_body_bytes", &limit.to_string());
    let d = config.start();
    install_committed(&d, &bundle);

    // A declared length above the limit: refused before the body is read.
    let huge = vec![b' '; limit + 1];
    post(&d.socket, "/v2/models/m/infer", &[], &huge).refused(
        413,
        "body_size",
        &format!(
            "request body of {} bytes is above the limit of {limit} bytes (api.max_body_bytes)",
            limit + 1
        ),
    );
    // A chunked body that grows past the limit.
    let mut chunked = Vec::new();
    for _ in 0..7 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1024 * 1024).as_bytes());
        chunked.extend_from_slice(&vec![b' '; 1024 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    post(
        &d.socket,
        "/v2/models/m/infer",
        &[("Transfer-Encoding", "chunked".into())],
        &chunked,
    )
    .refused(
        413,
        "body_size",
        "request body of unknown length is above the limit",
    );
    // Inside the body limit, but a JSON part above 4 MiB: JSON costs far more than binary.
    let mut json_text = good_request().to_string().into_bytes();
    json_text.extend(std::iter::repeat_n(b' ', 5 * 1024 * 1024));
    post(&d.socket, "/v2/models/m/infer", &[], &json_text).refused(
        413,
        "header_size",
        &format!(
            "the JSON part of the request is {} bytes, above the limit of 4194304",
            json_text.len()
        ),
    );
    let length = json_text.len().to_string();
    post(
        &d.socket,
        "/v2/models/m/infer",
        &[("Inference-Header-Content-Length", length)],
        &json_text,
    )
    .refused(
        413,
        "header_size",
        "(send large tensors with the binary tensor extension)",
    );

    assert_eq!(infer(&d, "m", &good_request()).status, 200);
}

/// Every answer of a flood is 200 or 429, some are 429, and no more passed than the bucket
/// allows: `burst` saved up plus `rate` a second over `elapsed` (and one for rounding).
fn assert_within_rate(flood: &[Reply], burst: u32, rate: u32, elapsed: Duration) {
    let statuses: Vec<u16> = flood.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    let passed = statuses.iter().filter(|&&s| s == 200).count() as f64;
    let allowed = f64::from(burst) + f64::from(rate) * elapsed.as_secs_f64() + 1.0;
    assert!(
        passed <= allowed,
        "{passed} passed in {elapsed:?}, at most {allowed} allowed: {statuses:?}"
    );
    assert!(statuses.contains(&429), "nothing refused: {statuses:?}");
}

#[test]
fn floods_beyond_the_rate_limit_get_429_and_other_peers_are_still_served() {
    let ws = Workspace::new();
    let limited = ws
        .bundle("m", "1.0.0", 1)
        .arg("--rate-limit")
        .arg("5")
        .create();
    let open = ws
        .bundle("n", "1.0.0", 1)
        .arg("--rate-limit")
        .arg("100000")
        .create();
    let mut config = ws.config();
    config.set("api", "rate_limit_per_sec", "12");
    let d = config.start();
    install_committed(&d, &limited);
    install_committed(&d, &open);

    // The manifest allows 5 a second to model m: a burst of 5 passes, the flood does not.
    for _ in 0..5 {
        assert_eq!(infer(&d, "m", &good_request()).status, 200);
    }
    let start = Instant::now();
    let flood: Vec<Reply> = (0..20).map(|_| infer(&d, "m", &good_request())).collect();
    assert_within_rate(&flood, 0, 5, start.elapsed());
    let refused: Vec<&Reply> = flood.iter().filter(|r| r.status == 429).collect();
    for r in &refused {
        r.refused(
            429,
            "rate_limit",
            "rate limit: uid 0 may send 5 requests per second to model \"m\" (its \
             guard.rate_limit_per_sec); retry in ",
        );
        assert!(r.header("retry-after").is_some());
    }

    // Another peer is not limited by this one's flood (run as nobody, if we may).
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(
            ws.dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        std::os::unix::fs::chown(&d.socket, None, Some(65534)).unwrap();
        let mut nobody = Command::new("setpriv");
        nobody
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(MINTCTL)
            .current_dir("/");
        let out = mintctl_infer(&d, nobody, true, "m", &good_request().to_string());
        let text = support::stdout_ok(&out, "mintctl infer as nobody");
        assert!(text.contains("\"model_name\":\"m\""), "{text}");
    } else {
        eprintln!("not root: the other-peer part of this test is skipped");
    }

    // The configuration allows 12 a second per peer over every model: model n, whose own
    // limit is high, runs into it.
    std::thread::sleep(Duration::from_millis(1100));
    let start = Instant::now();
    let flood: Vec<Reply> = (0..60).map(|_| infer(&d, "n", &good_request())).collect();
    assert_within_rate(&flood, 12, 12, start.elapsed());
    let refused: Vec<&Reply> = flood.iter().filter(|r| r.status == 429).collect();
    refused[0].refused(
        429,
        "rate_limit",
        "rate limit: uid 0 may send 12 requests per second (api.rate_limit_per_sec)",
    );

    // A second later the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(infer(&d, "m", &good_request()).status, 200);
}

/// A request that keeps the engine busy for a while: `rows` rows of the mlp, binary.
fn big_request(rows: usize) -> (Value, Vec<u8>) {
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 16],
                    "parameters": {"binary_data_size": rows * 64}}],
        "parameters": {"binary_data_output": true}
    });
    (header, f32_bytes(&vec![0.25; rows * 16]))
}

#[test]
fn more_concurrent_requests_than_slots_are_refused_at_once_with_503() {
    let ws = Workspace::new();
    let bundle = ws
        .bundle("big", "1", 1)
        .arg("--max-batch")
        .arg("100000")
        .arg("--timeout-ms")
        .arg("30000")
        .create();
    let mut config = ws.config();
    config.set("api", "max_concurrency", "1");
    config.set("api", "queue_depth", "1");
    let d = Arc::new(config.start());
    install_committed(&d, &bundle);

    // Eight at once: one runs, one waits, the others are refused without waiting.
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (d, barrier) = (d.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (header, data) = big_request(50_000);
                barrier.wait();
                let start = Instant::now();
                let reply = infer_binary(&d, "big", &header, &data);
                (reply, start.elapsed())
            })
        })
        .collect();
    let replies: Vec<(Reply, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = replies.iter().filter(|(r, _)| r.status == 200).count();
    let busy: Vec<&(Reply, Duration)> = replies.iter().filter(|(r, _)| r.status == 503).collect();
    assert!(ok >= 1, "none answered");
    assert!(
        busy.len() >= 2,
        "only {} of {n} refused as busy with 1 slot and a queue of 1",
        busy.len()
    );
    assert_eq!(
        ok + busy.len(),
        n,
        "other statuses: {:?}",
        replies.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );
    for (r, _) in &busy {
        r.refused(
            503,
            "queue_full",
            "server busy: all 1 inference slots are taken and 1 requests wait \
             (api.max_concurrency, api.queue_depth); retry later",
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    for (r, _) in replies.iter().filter(|(r, _)| r.status == 200) {
        let (json_part, binary) = r.split();
        assert_eq!(json_part["outputs"][0]["shape"], json!([50_000, 4]));
        assert_eq!(binary.len(), 50_000 * 16);
    }
    // The slot is free again: a small request is answered.
    assert_eq!(infer(&d, "big", &good_request()).status, 200);
}

#[test]
fn an_inference_past_its_deadline_is_504_and_the_daemon_goes_on() {
    let ws = Workspace::new();
    let bundle = ws
        .bundle("slow", "1", 1)
        .arg("--max-batch")
        .arg("100000")
        .arg("--timeout-ms")
        .arg("20")
        .create();
    let d = ws.config().start();
    install_committed(&d, &bundle);
    let (header, data) = big_request(100_000);
    let start = Instant::now();
    let reply = infer_binary(&d, "slow", &header, &data);
    reply.refused(504, "deadline", "deadline of 20 ms passed");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the answer did not wait for the engine: {:?}",
        start.elapsed()
    );
    assert_eq!(infer(&d, "slow", &good_request()).status, 200);
}

/// A bundle of `mlp_nan.onnx` (column 1 of every output is NaN), built without golden cases
/// (`bundle create` refuses a model whose golden outputs are NaN), with a trial of 3 requests.
fn nan_bundle(ws: &Workspace, sequence: u64) -> std::path::PathBuf {
    let key = OperatorKey::load(&ws.path("op.key")).unwrap();
    let spec = |name: &str, n: i64| TensorSpec {
        name: name.into(),
        datatype: DataType::FP32,
        shape: vec![-1, n],
        range: None,
    };
    let manifest = Manifest {
        format: FORMAT_VERSION,
        name: "m".into(),
        version: "2-nan".into(),
        sequence,
        created: mintd::ctl::time_arg::now(),
        expires: None,
        targets: vec![],
        files: vec![],
        inputs: vec![spec("input", 16)],
        outputs: vec![spec("output", 4)],
        health: HealthCheck {
            golden: None,
            trial_requests: 3,
            trial_seconds: 300,
            ..HealthCheck::default()
        },
        guard: GuardSettings::default(),
        reference: None,
    };
    let path = ws.path("nan.mint");
    build_bundle(
        manifest,
        &[FileSource {
            path: "model.onnx".into(),
            role: FileRole::Model,
            data: Source::Bytes(std::fs::read(fixture("mlp_nan.onnx")).unwrap()),
        }],
        &[&key],
        &path,
        BuildOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    path
}

/// Waits until `check` holds for the record of `name`.
fn wait_record(d: &Daemon, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let record = d.record(name);
        if check(&record) {
            return record;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {record}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nan_output_is_500_and_counts_against_the_trial_until_rollback() {
    let ws = Workspace::new();
    let v1 = ws.bundle("m", "1", 1).create();
    let d = ws.config().start();
    let d1 = install_committed(&d, &v1);
    let before = infer(&d, "m", &good_request()).json();

    let reply = d
        .install(&nan_bundle(&ws, 2))
        .expect("install the NaN model");
    assert_eq!(reply["outcome"], "on_trial", "{reply}");
    let d2 = digest(&reply["model"]);

    // The client's mistakes are not the model's: refused, not counted.
    let mut wrong = good_request();
    wrong["inputs"][0]["datatype"] = json!("FP64");
    infer(&d, "m", &wrong).refused(400, "datatype", "FP64");
    infer(&d, "m", &json!({"inputs": "x"})).refused(400, "malformed", "");

    // NaN out: 500, and one error of one request in the trial.
    infer(&d, "m", &good_request()).refused(
        500,
        "non_finite_output",
        "model produced non-finite output: \"output\" value #1 is NaN",
    );
    let record = wait_record(&d, "m", "the NaN answer is counted", |r| {
        r["candidate"]["requests"] == 1
    });
    assert_eq!(record["candidate"]["errors"], 1, "{record}");
    assert_eq!(
        record["candidate"]["rev"]["digest"],
        d2.as_str(),
        "{record}"
    );

    // Two more: the trial window of 3 requests is over, 100 % errors, rolled back to v1.
    for _ in 0..2 {
        infer(&d, "m", &good_request()).refused(500, "non_finite_output", "");
    }
    let record = wait_record(&d, "m", "the trial ends in a rollback", |r| {
        r["candidate"].is_null()
    });
    assert_eq!(record["committed"]["digest"], d1.as_str(), "{record}");
    assert_eq!(record["quarantined"][0]["digest"], d2.as_str(), "{record}");
    let rolled = d.events_of("rolled_back");
    let reason = rolled.last().unwrap()["details"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("error rate 100.0% (3 of 3 requests)"),
        "{reason}"
    );
    // v1 answers again, as before.
    let after = infer(&d, "m", &good_request()).json();
    assert_eq!(after["outputs"], before["outputs"]);
    assert_eq!(after["model_version"], "1");
}
