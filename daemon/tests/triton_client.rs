//! Interop with NVIDIA's `tritonclient.http` (pip, pinned, in `.venv-triton` made by
//! `scripts/pyenv.sh triton`) against the real `mintd` on its loopback TCP listener: health
//! and metadata calls, JSON inferences (binary off both ways), a binary inference with the
//! client's defaults (binary input, `binary_data_output`), all checked against the reference
//! outputs of `make_models.py`; and errors (unknown model, wrong shape, NaN) that the client
//! raises as `InferenceServerException` with mintd's `{"error": ...}` message and status.
//! The script (tests/interop/tritonclient_check.py) reports; this file judges.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::{digest, fixture, Workspace};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The python of `.venv-triton` (created or refreshed by pyenv.sh; cached between runs).
fn triton_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/pyenv.sh"))
        .arg("triton")
        .output()
        .expect("run scripts/pyenv.sh");
    assert!(
        out.status.success(),
        "scripts/pyenv.sh triton failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("pyenv.sh output");
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("pyenv.sh prints the venv python"),
    )
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of rows: {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap_or_else(|| panic!("not a row: {r}"))
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

/// The reference outputs of mlp.onnx, one row per case.
fn reference_outputs() -> Vec<Vec<f64>> {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(fixture("mlp_reference.json")).unwrap()).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["outputs"][0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn assert_close(actual: &[Vec<f64>], expected: &[Vec<f64>], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: {actual:?}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a.len(), e.len(), "{what} row {i}: {a:?}");
        for (x, y) in a.iter().zip(e) {
            assert!(
                (x - y).abs() <= 1e-5,
                "{what} row {i}: {a:?}, the reference says {e:?}"
            );
        }
    }
}

/// An error the client raised: its status and message.
fn raised<'a>(errors: &'a Value, case: &str) -> (&'a str, &'a str) {
    let e = &errors[case];
    assert!(
        e.get("unexpected").is_none(),
        "{case}: the client raised nothing: {e}"
    );
    (
        e["status"].as_str().expect("status"),
        e["message"].as_str().expect("message"),
    )
}

#[test]
fn tritonclient_http_infers_json_and_binary_and_raises_mintds_errors() {
    let python = triton_python();
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1.0.0", 1).create();
    let mut config = ws.config();
    config.set("api", "tcp", "\"127.0.0.1:0\"");
    let d = config.start();
    let installed = d.install(&bundle).expect("install");
    assert_eq!(installed["outcome"], "committed", "{installed}");
    let addr = d.tcp_address();

    let out = Command::new(&python)
        .arg(repo_root().join("tests/interop/tritonclient_check.py"))
        .arg(addr.to_string())
        .arg("m")
        .arg(fixture("mlp_reference.json"))
        .output()
        .expect("run tritonclient_check.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tritonclient_check.py failed:\n{stderr}\nmintd:\n{}",
        d.stderr()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}); stderr:\n{stderr}"));

    assert_eq!(report["live"], true, "{report}");
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["model_ready"], true, "{report}");
    let meta = &report["metadata"];
    assert_eq!(meta["name"], "m", "{meta}");
    assert_eq!(meta["inputs"][0]["name"], "input", "{meta}");
    assert_eq!(meta["inputs"][0]["datatype"], "FP32", "{meta}");
    assert_eq!(
        meta["digest"],
        digest(&installed["model"]).as_str(),
        "{meta}"
    );

    let expected = reference_outputs();
    assert_eq!(expected.len(), 3);
    // JSON both ways: the answer carried `data`, no binary part.
    assert_close(&rows(&report["json"]), &expected, "JSON inference");
    let wire = &report["json_wire"];
    assert_eq!(wire["id"], "json-0", "{wire}");
    assert_eq!(wire["model_name"], "m", "{wire}");
    assert!(wire["outputs"][0]["data"].is_array(), "{wire}");
    // Binary with the client's defaults: the three cases as one batch.
    assert_close(&rows(&report["binary"]), &expected, "binary inference");
    let wire = &report["binary_wire"];
    assert_eq!(wire["id"], "binary", "{wire}");
    assert_eq!(wire["outputs"][0]["shape"], serde_json::json!([3, 4]));
    assert_eq!(
        wire["outputs"][0]["parameters"]["binary_data_size"], 48,
        "{wire}"
    );
    assert!(wire["outputs"][0].get("data").is_none(), "{wire}");

    // Errors reach the client as InferenceServerException(status, mintd's message).
    let errors = &report["errors"];
    assert_eq!(
        raised(errors, "unknown_model"),
        ("404", "model \"no-such-model\" is not served")
    );
    let (status, message) = raised(errors, "wrong_shape");
    assert_eq!(status, "400");
    assert!(
        message.contains("input \"input\"") && message.contains("shape"),
        "{message}"
    );
    let (status, message) = raised(errors, "nan_binary");
    assert_eq!(status, "400");
    assert!(
        message.contains("input \"input\"") && message.contains("NaN"),
        "{message}"
    );
}
