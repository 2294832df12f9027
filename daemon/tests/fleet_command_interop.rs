//! Threat: a command format only our own code understands. Fleet commands are COSE_Sign1
//! (RFC 9052): an independent implementation (pycose, through
//! tests/interop/pycose_sign1_tool.py in the project venv, scripts/pyenv.sh) must verify the
//! commands `mintctl fleet push` signs, and the device must accept commands pycose signed
//! with an openssl-made fleet key (kid protected or unprotected), and refuse them signed by
//! any other key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use mint_updater::keys::load_public_key;
use mint_updater::{OperatorKey, TrustStore};
use mintd::fleet::command::{self, Payload, TargetField};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/pyenv.sh"))
            .output()
            .expect("run scripts/pyenv.sh");
        assert!(
            out.status.success(),
            "pyenv.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(stdout.lines().last().expect("venv python").trim())
    })
}

fn tool(args: &[&str]) -> Output {
    Command::new(python())
        .arg(repo().join("tests/interop/pycose_sign1_tool.py"))
        .args(args)
        .output()
        .expect("run pycose_sign1_tool.py")
}

fn openssl_key(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{stem}.key"));
    let public = dir.join(format!("{stem}.pub"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("openssl").args(&args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}");
    }
    (key, public)
}

fn payload() -> Payload {
    Payload {
        v: 1,
        command: "rollback".into(),
        args: json!({"name": "detector"}),
        nonce: "interop0123456789abcdef".into(),
        issued_at: 1_790_000_000,
        expires_at: 1_790_000_600,
        target: TargetField::Many(vec!["rpi-17".into(), "class:cam".into()]),
    }
}

#[test]
fn pycose_verifies_our_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = openssl_key(dir.path(), "fleet");
    let ours = command::sign(&payload(), &OperatorKey::load(&key).unwrap()).unwrap();
    let file = dir.path().join("cmd.cose");
    std::fs::write(&file, &ours).unwrap();
    let out = tool(&["verify", file.to_str().unwrap(), public.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["content_type"], "application/json");
    let parsed: Payload = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
    assert_eq!(parsed, payload());
    // One flipped payload byte: pycose refuses it too.
    let mut bad = ours.clone();
    let at = bad.len() - 70;
    bad[at] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    let out = tool(&["verify", file.to_str().unwrap(), public.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn we_accept_commands_pycose_signed_and_only_with_a_fleet_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = openssl_key(dir.path(), "fleet");
    let (other_key, _) = openssl_key(dir.path(), "other");
    let trust = TrustStore::new([load_public_key(&public).unwrap()], 1).unwrap();
    let json_file = dir.path().join("payload.json");
    std::fs::write(&json_file, serde_json::to_vec(&payload()).unwrap()).unwrap();
    let out_file = dir.path().join("cmd.cose");
    for extra in [&[][..], &["--kid-unprotected"][..]] {
        let mut args = vec![
            "sign",
            json_file.to_str().unwrap(),
            out_file.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = tool(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cmd = command::verify(&std::fs::read(&out_file).unwrap(), &trust)
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_eq!(cmd.payload, payload());
    }
    let out = tool(&[
        "sign",
        json_file.to_str().unwrap(),
        out_file.to_str().unwrap(),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let err = command::verify(&std::fs::read(&out_file).unwrap(), &trust).unwrap_err();
    assert_eq!(err.reason(), "unknown_key", "{err}");
}
