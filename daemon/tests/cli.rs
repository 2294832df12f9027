//! `mintctl` and `mintd demo` as a user runs them: real processes, real files, real openssl.
//! Every refusal asserts the exit code (3 = refused by a check) and the named check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MINTCTL: &str = env!("CARGO_BIN_EXE_mintctl");
const MINTD: &str = env!("CARGO_BIN_EXE_mintd");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn run(dir: &Path, bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn")
}

fn mintctl(dir: &Path, args: &[&str]) -> Output {
    run(dir, MINTCTL, args)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A JSON error document, with its exit code.
fn json_error(out: &Output) -> (i32, serde_json::Value) {
    let code = out.status.code().expect("exit code");
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (code, doc)
}

fn create(dir: &Path, key: &str, sequence: &str, out: &str) {
    let model = fixture("mlp.onnx");
    ok(&mintctl(
        dir,
        &[
            "bundle",
            "create",
            "--model",
            model.to_str().unwrap(),
            "--name",
            "mlp",
            "--version",
            "1.0",
            "--sequence",
            sequence,
            "--key",
            key,
            "--golden",
            "auto:4",
            "--out",
            out,
        ],
    ));
}

#[test]
fn create_verify_and_refuse_a_tampered_payload_with_exit_3_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "op"]));
    create(d, "op.key", "3", "b.mint");
    let doc: serde_json::Value = serde_json::from_str(&ok(&mintctl(
        d,
        &["--json", "bundle", "verify", "b.mint", "--trust", "op.pub"],
    )))
    .unwrap();
    assert_eq!(doc["verified"], true);
    assert_eq!(doc["sequence"], 3);
    assert_eq!(doc["files"].as_array().unwrap().len(), 2);

    let mut bytes = std::fs::read(d.join("b.mint")).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(d.join("bad.mint"), bytes).unwrap();
    let (code, doc) = json_error(&mintctl(
        d,
        &[
            "--json", "bundle", "verify", "bad.mint", "--trust", "op.pub",
        ],
    ));
    assert_eq!(code, 3);
    let check = doc["check"].as_str().unwrap();
    assert!(check == "digest" || check == "size", "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("bad.mint refused"),
        "{doc}"
    );

    // Human form: one line naming what failed, then the cause chain, and the failed check.
    let out = mintctl(d, &["bundle", "verify", "bad.mint", "--trust", "op.pub"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("error: bundle bad.mint refused"), "{err}");
    assert!(err.contains("caused by: golden.json"), "{err}");
    assert!(err.contains("FAIL"), "{err}");
}

#[test]
fn verify_unpack_writes_files_and_removes_them_on_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "op"]));
    create(d, "op.key", "1", "b.mint");
    ok(&mintctl(
        d,
        &[
            "bundle", "verify", "b.mint", "--trust", "op.pub", "--unpack", "out",
        ],
    ));
    assert_eq!(
        std::fs::read(d.join("out/model.onnx")).unwrap(),
        std::fs::read(fixture("mlp.onnx")).unwrap()
    );
    let out = mintctl(
        d,
        &[
            "bundle",
            "verify",
            "b.mint",
            "--trust",
            "op.pub",
            "--min-sequence",
            "2",
            "--unpack",
            "out2",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("below the minimum 2"),
        "{}",
        stderr(&out)
    );
    assert!(
        !d.join("out2").exists(),
        "a refused bundle left files behind"
    );
}

#[test]
fn keys_made_by_openssl_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl binary");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ossl.key"]);
    openssl(&["pkey", "-in", "ossl.key", "-pubout", "-out", "ossl.pub"]);
    create(d, "ossl.key", "1", "b.mint");
    ok(&mintctl(
        d,
        &["bundle", "verify", "b.mint", "--trust", "ossl.pub"],
    ));
    // And ours are readable by openssl.
    ok(&mintctl(d, &["key", "gen", "--out", "ours"]));
    openssl(&["pkey", "-in", "ours.key", "-noout"]);
    openssl(&["pkey", "-pubin", "-in", "ours.pub", "-noout"]);
}

#[test]
fn key_gen_refuses_to_overwrite_and_protects_the_private_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "op"]));
    let mode = std::fs::metadata(d.join("op.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(d.join("op.key")).unwrap();
    let out = mintctl(d, &["key", "gen", "--out", "op"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("op.key"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(d.join("op.key")).unwrap(),
        before,
        "an existing key was overwritten"
    );
}

#[test]
fn threshold_signing_with_bundle_sign() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "a"]));
    ok(&mintctl(d, &["key", "gen", "--out", "b"]));
    create(d, "a.key", "1", "b.mint");
    let two = [
        "bundle",
        "verify",
        "b.mint",
        "--trust",
        "a.pub",
        "b.pub",
        "--threshold",
        "2",
    ];
    let out = mintctl(d, &two);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("1 distinct trusted key(s) signed, 2 required"),
        "{}",
        stderr(&out)
    );
    ok(&mintctl(d, &["bundle", "sign", "b.mint", "--key", "b.key"]));
    ok(&mintctl(d, &two));
    let out = mintctl(d, &["bundle", "sign", "b.mint", "--key", "b.key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already signed by key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bundle_sign_refuses_a_bundle_whose_payload_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "a"]));
    ok(&mintctl(d, &["key", "gen", "--out", "b"]));
    create(d, "a.key", "1", "b.mint");
    let mut bytes = std::fs::read(d.join("b.mint")).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(d.join("cut.mint"), &bytes).unwrap();
    let out = mintctl(d, &["bundle", "sign", "cut.mint", "--key", "b.key"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("refusing to sign it"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(d.join("cut.mint")).unwrap(),
        bytes,
        "the refused bundle was modified"
    );
}

#[test]
fn inspect_says_when_signatures_were_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "a"]));
    create(d, "a.key", "9", "b.mint");
    let human = ok(&mintctl(d, &["bundle", "inspect", "b.mint"]));
    assert!(human.contains("NOT verified"), "{human}");
    assert!(human.contains("mlp 1.0 (sequence 9)"), "{human}");
    let doc: serde_json::Value = serde_json::from_str(&ok(&mintctl(
        d,
        &["--json", "bundle", "inspect", "b.mint", "--trust", "a.pub"],
    )))
    .unwrap();
    assert_eq!(doc["signatures_verified"], true);
    assert_eq!(doc["manifest"]["inputs"][0]["name"], "input");
    assert_eq!(
        doc["manifest"]["inputs"][0]["shape"],
        serde_json::json!([-1, 16])
    );
    assert_eq!(
        doc["manifest"]["outputs"][0]["shape"],
        serde_json::json!([-1, 4])
    );
    assert_eq!(doc["manifest"]["files"][0]["path"], "model.onnx");
    assert_eq!(doc["manifest"]["reference"]["inputs"][0]["count"], 64);
}

#[test]
fn golden_file_is_checked_against_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "a"]));
    let model = fixture("mlp.onnx");
    let reference = fixture("mlp_reference.json");
    let base = |golden: &str| {
        vec![
            "bundle".to_string(),
            "create".into(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--name".into(),
            "mlp".into(),
            "--version".into(),
            "1".into(),
            "--sequence".into(),
            "1".into(),
            "--key".into(),
            "a.key".into(),
            "--golden".into(),
            golden.into(),
            "--out".into(),
            "g.mint".into(),
        ]
    };
    let args = base(reference.to_str().unwrap());
    ok(&mintctl(
        d,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    // An expectation the model does not meet is refused here, unless explicitly allowed.
    let mut wrong: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    wrong["cases"][1]["outputs"][0]["data"][2] = serde_json::json!(42.0);
    std::fs::write(d.join("wrong.json"), wrong.to_string()).unwrap();
    let args = base("wrong.json");
    let out = mintctl(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("golden case #1: output \"output\" value #2"),
        "{err}"
    );
    assert!(err.contains("expected 42"), "{err}");
    let mut args = base("wrong.json");
    args.push("--no-golden-check".into());
    ok(&mintctl(
        d,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    // A golden input of the wrong shape names the input and both shapes.
    wrong["cases"][0]["inputs"][0]["shape"] = serde_json::json!([1, 15]);
    std::fs::write(d.join("shape.json"), wrong.to_string()).unwrap();
    let args = base("shape.json");
    let out = mintctl(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        stderr(&out).contains("input \"input\" has shape [1, 15], the model wants [-1, 16]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_model_with_nan_outputs_is_not_bundled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "a"]));
    let model = fixture("mlp_nan.onnx");
    let out = mintctl(
        d,
        &[
            "bundle",
            "create",
            "--model",
            model.to_str().unwrap(),
            "--name",
            "m",
            "--version",
            "1",
            "--sequence",
            "1",
            "--key",
            "a.key",
            "--out",
            "n.mint",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("non-finite values"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("n.mint").exists());
}

#[test]
fn a_file_that_is_not_a_model_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&mintctl(d, &["key", "gen", "--out", "a"]));
    std::fs::write(d.join("junk.onnx"), b"\x08\x07not protobuf at all").unwrap();
    let out = mintctl(
        d,
        &[
            "bundle",
            "create",
            "--model",
            "junk.onnx",
            "--name",
            "m",
            "--version",
            "1",
            "--sequence",
            "1",
            "--key",
            "a.key",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("tract cannot run junk.onnx"),
        "{}",
        stderr(&out)
    );
    let out = mintctl(
        d,
        &[
            "bundle",
            "create",
            "--model",
            "missing.onnx",
            "--name",
            "m",
            "--version",
            "1",
            "--sequence",
            "1",
            "--key",
            "a.key",
        ],
    );
    assert!(
        stderr(&out).contains("cannot read model missing.onnx"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_check_names_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mintd.toml");
    let out = ok(&mintctl(d, &["config", "check", example.to_str().unwrap()]));
    assert!(out.contains("valid"), "{out}");
    std::fs::write(
        d.join("bad.toml"),
        "[trust]\nkeys = [\"/a.pub\", \"/b.pub\"]\nkeys_dir = \"\"\nthreshold = 3\n",
    )
    .unwrap();
    let out = mintctl(d, &["config", "check", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("trust.threshold = 3 but only 2 keys are listed"),
        "{}",
        stderr(&out)
    );
    let (code, doc) = json_error(&mintctl(d, &["--json", "config", "check", "missing.toml"]));
    assert_eq!(code, 1);
    assert!(
        doc["error"].as_str().unwrap().contains("missing.toml"),
        "{doc}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = mintctl(dir.path(), &["bundle", "verify", "x.mint"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--trust"), "{}", stderr(&out));
}

#[test]
fn the_demo_tour_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), MINTD, &["demo"]);
    let text = ok(&out);
    assert!(text.contains("The tour passed"), "{text}");
    for check in [
        "`digest`",
        "`signature`",
        "`rollback`",
        "`expiry`",
        "`target`",
    ] {
        assert!(
            text.contains(check),
            "the tour did not show a refusal by {check}: {text}"
        );
    }
}
