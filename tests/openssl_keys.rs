//! Threat: key handling that silently differs from the standard tools — an operator's key
//! made with openssl that we misread, a key id that does not match the key, a private key
//! written world-readable, or a wrong kind of key accepted. Uses the real `openssl` binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mint_e2e::*;
use sha2::{Digest, Sha256};

fn openssl(args: &[&str]) -> std::process::Output {
    run(Command::new("openssl").args(args))
}

fn genpkey_ed25519(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{stem}.key"));
    let public = dir.join(format!("{stem}.pub"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

#[test]
fn an_openssl_key_signs_and_its_openssl_public_key_verifies() {
    let dir = tempdir();
    let (key_path, pub_path) = genpkey_ed25519(dir.path(), "k");
    let key = OperatorKey::load(&key_path).expect("openssl PKCS#8 key loads");
    let trust =
        TrustStore::load(std::slice::from_ref(&pub_path), 1).expect("openssl SPKI key loads");
    let fx = BundleFixture::signed_by(manifest(), &two_files(), key);
    let (header, files) =
        verify_bytes(&fx.bytes, &policy(&trust)).expect("verifies with the openssl public key");
    assert_eq!(header.signers, vec![fx.key.kid()]);
    assert_eq!(files.len(), 2);

    // A directory of .pub files works the same.
    let trust = TrustStore::load(&[dir.path().to_owned()], 1).expect("trust dir");
    verify_bytes(&fx.bytes, &policy(&trust)).expect("verifies with the trust dir");
}

#[test]
fn the_kid_is_sha256_of_the_raw_public_key_from_openssl() {
    let dir = tempdir();
    let (key_path, _) = genpkey_ed25519(dir.path(), "k");
    let der = openssl(&[
        "pkey",
        "-in",
        key_path.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ])
    .stdout;
    // SPKI DER of an Ed25519 key: a 12-byte prefix, then the raw 32-byte key.
    assert_eq!(der.len(), 44, "SPKI DER: {}", hex::encode(&der));
    let raw = &der[der.len() - 32..];
    let key = OperatorKey::load(&key_path).unwrap();
    assert_eq!(key.public().as_bytes(), raw);
    assert_eq!(key.kid().0, <[u8; 32]>::from(Sha256::digest(raw)));
    assert_eq!(key.kid(), KeyId::of(&key.public()));
}

#[test]
fn our_generated_pair_is_readable_by_openssl_and_private() {
    let dir = tempdir();
    let key = OperatorKey::generate().unwrap();
    let (key_path, pub_path) = key.write_pair(&dir.path().join("op")).expect("write_pair");
    assert_eq!(key_path, dir.path().join("op.key"));
    assert_eq!(pub_path, dir.path().join("op.pub"));
    openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-noout"]);
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        pub_path.to_str().unwrap(),
        "-noout",
    ]);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key mode {mode:o}");
    // openssl derives the same public key from our private key.
    let derived = openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"]).stdout;
    assert_eq!(derived, std::fs::read(&pub_path).unwrap());
    // And the pair loads back as the same key.
    assert_eq!(OperatorKey::load(&key_path).unwrap().kid(), key.kid());
    // Refuses to overwrite.
    assert!(matches!(
        key.write_pair(&dir.path().join("op")),
        Err(BundleError::Io { .. })
    ));
}

fn load_err(path: &Path) -> BundleError {
    match OperatorKey::load(path) {
        Ok(_) => panic!("{} loaded as an operator key", path.display()),
        Err(e) => e,
    }
}

#[test]
fn a_garbage_pem_is_a_key_error_naming_the_path() {
    let dir = tempdir();
    let path = dir.path().join("garbage.key");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, BundleError::Key { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("garbage.key"), "{err}");

    let binary = dir.path().join("binary.key");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let err = load_err(&binary);
    assert!(
        matches!(&err, BundleError::Key { path: p, .. } if *p == binary),
        "{err:?}"
    );

    let public = dir.path().join("garbage.pub");
    std::fs::write(&public, "not a key at all\n").unwrap();
    let err = TrustStore::load(std::slice::from_ref(&public), 1).unwrap_err();
    assert!(
        matches!(&err, BundleError::Key { path: p, .. } if *p == public),
        "{err:?}"
    );
}

#[test]
fn an_rsa_key_is_a_key_error_naming_the_path() {
    let dir = tempdir();
    let key_path = dir.path().join("rsa.key");
    let pub_path = dir.path().join("rsa.pub");
    openssl(&[
        "genpkey",
        "-algorithm",
        "rsa",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_path.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key_path.to_str().unwrap(),
        "-pubout",
        "-out",
        pub_path.to_str().unwrap(),
    ]);
    let err = load_err(&key_path);
    assert!(
        matches!(&err, BundleError::Key { path, .. } if *path == key_path),
        "{err:?}"
    );
    let err = TrustStore::load(std::slice::from_ref(&pub_path), 1).unwrap_err();
    assert!(
        matches!(&err, BundleError::Key { path, .. } if *path == pub_path),
        "{err:?}"
    );
}

#[test]
fn an_ed25519_public_key_is_not_a_private_key() {
    let dir = tempdir();
    let (_, pub_path) = genpkey_ed25519(dir.path(), "k");
    let err = load_err(&pub_path);
    assert!(
        matches!(&err, BundleError::Key { path, .. } if *path == pub_path),
        "{err:?}"
    );
}

#[test]
fn a_huge_key_file_is_refused_before_reading() {
    let dir = tempdir();
    let path = dir.path().join("huge.key");
    std::fs::write(&path, vec![b'A'; 1 << 20]).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, BundleError::Key { path: p, reason } if *p == path && reason.contains("too large")),
        "{err:?}"
    );
}
