//! Threat: a header format only our own code understands — a private dialect of COSE that an
//! independent verifier would reject, or a verifier that rejects conforming headers from other
//! tools (DESIGN.md: pycose must verify our header, and we must accept a header pycose signed).
//! Uses the project venv (scripts/pyenv.sh) and tests/interop/pycose_tool.py.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use mint_e2e::*;

fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = run(Command::new("bash").arg(repo_root().join("scripts/pyenv.sh")));
        let stdout = String::from_utf8(out.stdout).expect("pyenv.sh output");
        let last = stdout
            .lines()
            .last()
            .expect("pyenv.sh prints the venv python")
            .trim();
        PathBuf::from(last)
    })
}

fn tool(args: &[&str]) -> Output {
    Command::new(python())
        .arg(repo_root().join("tests/interop/pycose_tool.py"))
        .args(args)
        .output()
        .expect("run pycose_tool.py")
}

fn openssl_key(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{stem}.key"));
    let public = dir.join(format!("{stem}.pub"));
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key));
    run(Command::new("openssl")
        .arg("pkey")
        .arg("-in")
        .arg(&key)
        .arg("-pubout")
        .arg("-out")
        .arg(&public));
    (key, public)
}

fn verify_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "pycose_tool verify printed {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A bundle of ours, signed by an openssl-made key, with that key's public PEM.
fn our_bundle(dir: &Path) -> (BundleFixture, PathBuf) {
    let (key_path, pub_path) = openssl_key(dir, "op");
    let key = OperatorKey::load(&key_path).unwrap();
    (
        BundleFixture::signed_by(manifest(), &two_files(), key),
        pub_path,
    )
}

#[test]
fn pycose_verifies_the_header_we_build() {
    let dir = tempdir();
    let (fx, pub_path) = our_bundle(dir.path());
    let header = dir.path().join("header.cose");
    std::fs::write(&header, &fx.bytes[PREFIX_LEN..PREFIX_LEN + fx.header_len()]).unwrap();
    let out = tool(&[
        "verify",
        header.to_str().unwrap(),
        pub_path.to_str().unwrap(),
    ]);
    let json = verify_json(&out);
    assert!(
        out.status.success(),
        "pycose rejected our header: {json}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["ok"], true);
    assert_eq!(
        json["verified_kids"],
        serde_json::json!([fx.key.kid().to_hex()])
    );
    assert_eq!(json["payload_sha256"], sha256_hex(&fx.manifest_cbor()));
}

#[test]
fn pycose_verifies_a_cosigned_header() {
    // Threshold signing: a second signature added with add_signature_to_file keeps the first
    // valid, for pycose too.
    let dir = tempdir();
    let (fx, pub_a) = our_bundle(dir.path());
    let (key_b, pub_b) = openssl_key(dir.path(), "second");
    let b = OperatorKey::load(&key_b).unwrap();
    let cosigned = dir.path().join("cosigned.mint");
    mint_updater::bundle::write::add_signature_to_file(&fx.path, &b, &cosigned).unwrap();
    let bytes = std::fs::read(&cosigned).unwrap();
    let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let header = dir.path().join("header.cose");
    std::fs::write(&header, &bytes[PREFIX_LEN..PREFIX_LEN + len]).unwrap();
    let out = tool(&[
        "verify",
        header.to_str().unwrap(),
        pub_a.to_str().unwrap(),
        pub_b.to_str().unwrap(),
    ]);
    let json = verify_json(&out);
    assert!(
        out.status.success(),
        "{json}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json["verified_kids"],
        serde_json::json!([fx.key.kid().to_hex(), b.kid().to_hex()])
    );
}

fn pycose_signed_bundle_is_accepted(alg: &str, kid_unprotected: bool) {
    let dir = tempdir();
    let (key_path, pub_path) = openssl_key(dir.path(), "op");
    // Build a real bundle first (for its payload frames and the manifest they match)...
    let fx = BundleFixture::signed_by(
        manifest(),
        &two_files(),
        OperatorKey::load(&key_path).unwrap(),
    );
    let manifest_file = dir.path().join("manifest.cbor");
    std::fs::write(&manifest_file, fx.manifest_cbor()).unwrap();
    // ...then have pycose sign the same manifest bytes, and swap its header in.
    let header_file = dir.path().join("pycose.cose");
    let mut args = vec![
        "sign",
        manifest_file.to_str().unwrap(),
        header_file.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
        "--alg",
        alg,
    ];
    if kid_unprotected {
        args.push("--kid-unprotected");
    }
    let out = tool(&args);
    assert!(
        out.status.success(),
        "pycose sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = std::fs::read(&header_file).unwrap();
    assert_ne!(
        header,
        fx.header(),
        "pycose produced our exact header: the test proves nothing"
    );
    let bytes = bundle_from_parts(&header, fx.payload());

    let trust = TrustStore::load(&[pub_path], 1).unwrap();
    let (verified, files) = verify_bytes(&bytes, &policy(&trust)).unwrap_or_else(|e| {
        panic!("alg {alg}, kid unprotected {kid_unprotected}: pycose header refused: {e:?}")
    });
    assert_eq!(verified.manifest, fx.manifest);
    assert_eq!(verified.signers, vec![fx.key.kid()]);
    assert_eq!(files.len(), 2);
}

#[test]
fn we_accept_a_header_pycose_signed_with_eddsa() {
    pycose_signed_bundle_is_accepted("-8", false);
}

#[test]
fn we_accept_a_header_pycose_signed_with_ed25519() {
    pycose_signed_bundle_is_accepted("-19", false);
}

#[test]
fn we_accept_a_header_pycose_signed_with_the_kid_unprotected() {
    pycose_signed_bundle_is_accepted("-8", true);
}

#[test]
fn pycose_rejects_our_header_after_a_bit_flip() {
    let dir = tempdir();
    let (fx, pub_path) = our_bundle(dir.path());
    let header = fx.header().to_vec();
    let manifest_at = fx.manifest_range().start - PREFIX_LEN;
    let kid_at = find(&header, &fx.key.kid().0).unwrap();
    let cases = [
        ("manifest first byte", manifest_at),
        (
            "manifest middle",
            manifest_at + fx.manifest_cbor().len() / 2,
        ),
        ("kid", kid_at + 5),
        ("signature value", header.len() - 10),
        ("body protected header", 5),
    ];
    for (what, pos) in cases {
        let mut bad = header.clone();
        bad[pos] ^= 0x04;
        let file = dir.path().join("bad.cose");
        std::fs::write(&file, &bad).unwrap();
        let out = tool(&["verify", file.to_str().unwrap(), pub_path.to_str().unwrap()]);
        let json = verify_json(&out);
        assert!(
            !out.status.success(),
            "{what} (byte {pos}): pycose accepted a tampered header: {json}"
        );
        assert_eq!(json["ok"], false, "{what}");
        // And ours agrees.
        let bytes = bundle_from_parts(&bad, fx.payload());
        assert!(
            verify_bytes(&bytes, &fx.policy()).is_err(),
            "{what}: we accepted it"
        );
    }
}
