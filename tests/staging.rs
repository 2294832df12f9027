//! Threat: a bundle that fails verification half-way through its payload leaves something
//! behind where it could be picked up — a partly written model outside the staging area, or
//! a file that "verified" without being the signed bytes. Verification writes only into the
//! staging directory, and what it writes on success is exactly what was signed.

use mint_e2e::*;

fn describe(result: &Result<Verified, BundleError>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn a_bad_digest_in_the_second_file_is_reported_and_nothing_leaves_staging() {
    let k = key();
    let model = pseudo_random(600 * 1024, 21);
    let labels = b"cat\ndog\n".repeat(1000);
    let (entry0, frame0) = crafted_file("model.onnx", FileRole::Model, &model);
    let (mut entry1, frame1) = crafted_file("assets/labels.txt", FileRole::Other, &labels);
    let honest = entry1.sha256.clone();
    let lie = sha256_hex(b"something else");
    entry1.sha256 = lie.clone();
    let (m, payload) = manifest_with(vec![(entry0, frame0), (entry1, frame1)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);

    let parent = tempdir();
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(parent.path().join("sibling"), b"untouched").unwrap();
    let before = tree(parent.path());

    let result = verify_into(&bytes, &policy(&t), &staging);
    assert!(
        matches!(&result, Err(BundleError::Digest { path, expected, actual })
            if path == "assets/labels.txt" && *expected == lie && *actual == honest),
        "{}",
        describe(&result)
    );
    let after = tree(parent.path());
    for path in after.difference(&before) {
        assert!(
            path.starts_with("staging"),
            "{path:?} was created outside staging"
        );
    }
    assert_eq!(
        std::fs::read(parent.path().join("sibling")).unwrap(),
        b"untouched"
    );
}

#[test]
fn a_bad_digest_in_the_first_file_stops_before_the_second() {
    let k = key();
    let (mut entry0, frame0) =
        crafted_file("model.onnx", FileRole::Model, &pseudo_random(10_000, 22));
    entry0.sha256 = sha256_hex(b"not the model");
    let (entry1, frame1) = crafted_file("second.bin", FileRole::Other, b"second");
    let expected = entry0.sha256.clone();
    let (m, payload) = manifest_with(vec![(entry0, frame0), (entry1, frame1)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let parent = tempdir();
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let result = verify_into(&bytes, &policy(&t), &staging);
    assert!(
        matches!(&result, Err(BundleError::Digest { path, expected: e, .. }) if path == "model.onnx" && *e == expected),
        "{}",
        describe(&result)
    );
    for path in tree(parent.path()) {
        assert!(path.starts_with("staging"), "{path:?} outside staging");
    }
}

#[test]
fn a_successful_unpack_is_byte_identical_to_the_sources() {
    let fx = BundleFixture::new(
        manifest(),
        &[
            ("model.onnx", FileRole::Model, pseudo_random(1_500_000, 23)),
            ("assets/labels.txt", FileRole::Other, b"a\nb\nc\n".to_vec()),
            ("assets/deep/dir/empty.bin", FileRole::Other, Vec::new()),
        ],
    );
    let parent = tempdir();
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let (header, files) = verify_into(&fx.bytes, &fx.policy(), &staging).expect("valid bundle");
    assert_eq!(header.signers, vec![fx.key.kid()]);
    assert_eq!(files.len(), fx.files.len());
    for ((path, plain), unpacked) in fx.files.iter().zip(&files) {
        assert_eq!(&unpacked.path, path);
        assert_eq!(unpacked.size, plain.len() as u64);
        assert_eq!(hex::encode(unpacked.sha256), sha256_hex(plain));
        assert_eq!(
            &std::fs::read(staging.join(path)).unwrap(),
            plain,
            "{path} differs"
        );
    }
    // Exactly the manifest's files (and their directories), nothing else, nothing outside.
    let staged: Vec<_> = tree(&staging)
        .into_iter()
        .filter(|p| staging.join(p).is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut want: Vec<_> = fx.files.iter().map(|(p, _)| p.clone()).collect();
    want.sort();
    assert_eq!(staged, want);
    for path in tree(parent.path()) {
        assert!(path.starts_with("staging"), "{path:?} outside staging");
    }
}

#[test]
fn unpacking_refuses_to_overwrite_an_existing_file_in_staging() {
    // The staging directory must be fresh: a file planted there (a symlink to somewhere else,
    // say) is not followed or overwritten.
    let fx = BundleFixture::two_files();
    let parent = tempdir();
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let target = parent.path().join("victim");
    std::fs::write(&target, b"precious").unwrap();
    std::os::unix::fs::symlink(&target, staging.join("model.onnx")).unwrap();
    let result = verify_into(&fx.bytes, &fx.policy(), &staging);
    assert!(
        matches!(&result, Err(BundleError::Io { .. })),
        "{}",
        describe(&result)
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}
