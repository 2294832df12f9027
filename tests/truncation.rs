//! Threat: a bundle cut short — an interrupted download, a full disk, a proxy that drops the
//! tail. Wherever the cut falls, the verifier must say `Truncated` and name the region that
//! was cut (and how many bytes it still expected), never accept the bundle, and never mistake
//! a cut frame for a corrupt one.

use mint_e2e::*;

/// The region a cut at `len` bytes falls in, and how many bytes of it are missing.
fn expected_cut(fx: &BundleFixture, len: usize) -> (Region, u64) {
    let header = fx.header_range();
    if len < 8 {
        return (Region::Magic, (8 - len) as u64);
    }
    if len < PREFIX_LEN {
        return (Region::HeaderLength, (PREFIX_LEN - len) as u64);
    }
    if len < header.end {
        return (Region::Header, (header.end - len) as u64);
    }
    for (i, file) in fx.manifest.files.iter().enumerate() {
        let range = fx.file_range(i);
        if range.contains(&len) {
            return (Region::File(file.path.clone()), (range.end - len) as u64);
        }
    }
    unreachable!("offset {len} is not inside the bundle")
}

fn assert_cut_at(fx: &BundleFixture, len: usize) {
    let (region, expected) = expected_cut(fx, len);
    let result = verify_bytes(&fx.bytes[..len], &fx.policy());
    match result {
        Err(BundleError::Truncated {
            region: r,
            expected: e,
        }) if r == region && e == expected => {}
        other => panic!(
            "cut at {len} of {}: expected Truncated {{ region: {region:?}, expected: {expected} }}, got {:?}",
            fx.bytes.len(),
            other.map(|_| "Ok")
        ),
    }
}

#[test]
fn the_full_bundle_passes() {
    let fx = BundleFixture::two_files();
    let (header, files) =
        verify_bytes(&fx.bytes, &fx.policy()).expect("the untouched bundle verifies");
    assert_eq!(header.manifest, fx.manifest);
    assert_eq!(header.payload_offset, fx.header_range().end as u64);
    assert_eq!(files.len(), 2);
    for (unpacked, (path, plain)) in files.iter().zip(&fx.files) {
        assert_eq!(&unpacked.path, path);
        assert_eq!(unpacked.size, plain.len() as u64);
        assert_eq!(hex::encode(unpacked.sha256), sha256_hex(plain));
    }
    // The fixture really has two multi-byte frames (otherwise the samples below mean little).
    assert!(
        fx.file_range(0).len() > 10_000,
        "model frame is {} bytes",
        fx.file_range(0).len()
    );
    assert!(
        fx.file_range(1).len() > 100,
        "labels frame is {} bytes",
        fx.file_range(1).len()
    );
}

#[test]
fn cut_inside_the_magic() {
    let fx = BundleFixture::two_files();
    for len in 0..8 {
        assert_cut_at(&fx, len);
    }
}

#[test]
fn cut_inside_the_header_length() {
    let fx = BundleFixture::two_files();
    for len in 8..PREFIX_LEN {
        assert_cut_at(&fx, len);
    }
}

#[test]
fn cut_at_every_offset_of_the_header() {
    let fx = BundleFixture::two_files();
    let range = fx.header_range();
    assert!(range.len() > 200, "header is {} bytes", range.len());
    for len in range {
        assert_cut_at(&fx, len);
    }
}

#[test]
fn cut_inside_the_model_payload() {
    let fx = BundleFixture::two_files();
    let offsets = spread(fx.file_range(0), 50);
    assert!(offsets.len() >= 50);
    for len in offsets {
        assert_cut_at(&fx, len);
    }
}

#[test]
fn cut_inside_the_second_file_payload() {
    let fx = BundleFixture::two_files();
    let offsets = spread(fx.file_range(1), 50);
    assert!(offsets.len() >= 50);
    for len in offsets {
        assert_cut_at(&fx, len);
    }
}

#[test]
fn cut_exactly_between_the_two_files() {
    // The first file is complete and correct; the second has not started.
    let fx = BundleFixture::two_files();
    let len = fx.file_range(1).start;
    let result = verify_bytes(&fx.bytes[..len], &fx.policy());
    assert!(
        matches!(
            &result,
            Err(BundleError::Truncated { region: Region::File(p), expected })
                if p == "assets/labels.txt" && *expected == fx.manifest.files[1].compressed_size
        ),
        "{:?}",
        result.map(|_| "Ok")
    );
}

#[test]
fn cut_into_a_staging_directory_leaves_nothing_outside_it() {
    let fx = BundleFixture::two_files();
    let parent = tempdir();
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let len = fx.file_range(1).start + 10;
    let result = verify_into(&fx.bytes[..len], &fx.policy(), &staging);
    assert!(
        matches!(&result, Err(BundleError::Truncated { region: Region::File(p), .. }) if p == "assets/labels.txt"),
        "{:?}",
        result.map(|_| "Ok")
    );
    for path in tree(parent.path()) {
        assert!(
            path.starts_with("staging"),
            "{path:?} was created outside staging"
        );
    }
}
