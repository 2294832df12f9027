//! Threat: resource exhaustion through sizes — a file that is bigger than its manifest says,
//! a decompression bomb, sizes above the device's limits, a header that asks for a huge
//! buffer, a zstd frame that asks for a huge window, and frames that do not fill (or overflow)
//! the bytes the manifest gives them. Each must be stopped by the size check, as early as the
//! information allows, with bounded work.

use std::io::Write;

use mint_e2e::*;

fn describe<T>(result: &Result<T, BundleError>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Where the header of a crafted bundle ends.
fn header_end(bytes: &[u8]) -> usize {
    PREFIX_LEN + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize
}

#[test]
fn a_file_larger_than_declared_is_size_mismatch() {
    // 1000 real bytes declared as 100. The decoder hands out whole chunks, so the count
    // reported is the first one seen above the declared size: here all 1000 bytes.
    let k = key();
    let plain = pseudo_random(1000, 11);
    let (mut entry, frame) = crafted_file("model.onnx", FileRole::Model, &plain);
    entry.size = 100;
    let (m, payload) = manifest_with(vec![(entry, frame)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::SizeMismatch { path, declared: 100, actual })
            if path == "model.onnx" && actual == "at least 1000"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_file_smaller_than_declared_is_size_mismatch() {
    let k = key();
    let plain = pseudo_random(50, 12);
    let (mut entry, frame) = crafted_file("model.onnx", FileRole::Model, &plain);
    entry.size = 100;
    let (m, payload) = manifest_with(vec![(entry, frame)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::SizeMismatch { path, declared: 100, actual })
            if path == "model.onnx" && actual == "50"),
        "{}",
        describe(&result)
    );
}

/// One zstd frame of `len` zero bytes, compressed as a stream (no content size in the frame).
fn zeros_frame(len: u64) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(false).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        encoder.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    encoder.finish().unwrap()
}

#[test]
fn a_decompression_bomb_stops_early_with_bounded_work() {
    // 1 GiB of zeros in a frame of a few tens of KB, declared as 1 MiB (with the honest digest
    // of 1 MiB of zeros). The verifier must stop once it has seen more than 1 MiB come out,
    // having pulled only a small part of the frame from the input.
    const DECLARED: u64 = 1 << 20;
    let k = key();
    let frame = zeros_frame(1 << 30);
    assert!(
        frame.len() < 256 * 1024,
        "bomb frame is {} bytes",
        frame.len()
    );
    let entry = FileEntry {
        path: "model.onnx".into(),
        role: FileRole::Model,
        size: DECLARED,
        compressed_size: frame.len() as u64,
        sha256: sha256_hex(&vec![0u8; DECLARED as usize]),
    };
    let (m, payload) = manifest_with(vec![(entry, frame.clone())]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let payload_start = header_end(&bytes) as u64;
    let t = trust(&[&k], 1);

    // A download arrives in pieces of at most 4 KiB.
    let mut input = CountingReader::new(std::io::Cursor::new(&bytes), 4096);
    let mut most_progress = 0u64;
    let result = verify_stream(&mut input, &policy(&t), Sink::Discard, &mut |done| {
        most_progress = most_progress.max(done)
    });
    let actual = match &result {
        Err(BundleError::SizeMismatch {
            path,
            declared: DECLARED,
            actual,
        }) if path == "model.onnx" => actual.clone(),
        other => panic!("{}", describe(other)),
    };
    let seen: u64 = actual
        .strip_prefix("at least ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("actual {actual:?}"));
    let pulled = input.count - payload_start;
    println!(
        "bomb: frame {} bytes for 1 GiB; stopped at {seen} plain bytes after pulling {pulled} frame bytes; progress reported {most_progress}",
        frame.len()
    );
    assert!(
        seen > DECLARED && seen <= DECLARED + (1 << 20),
        "stopped at {seen}"
    );
    assert!(
        most_progress <= DECLARED,
        "reported {most_progress} plain bytes as done"
    );
    assert!(
        pulled * 4 < frame.len() as u64,
        "pulled {pulled} of the {} frame bytes: the decoder ran on",
        frame.len()
    );
}

#[test]
fn a_declared_size_above_max_file_bytes_is_refused_before_the_payload() {
    // Magic, length and header only — no payload at all. TooLarge, not Truncated: the size
    // bound is checked from the manifest before any payload byte is read.
    let k = key();
    let limits = Limits::default();
    let declared = limits.max_file_bytes + 1;
    let (mut entry, _) = crafted_file("model.onnx", FileRole::Model, b"tiny");
    entry.size = declared;
    entry.compressed_size = 1 << 20;
    let (m, _) = manifest_with(vec![(entry, vec![])]);
    let bytes = craft_manifest(&m, &[&k], &[]);
    let end = header_end(&bytes);
    assert_eq!(end, bytes.len());
    let t = trust(&[&k], 1);
    let mut input = FencedReader::new(bytes, end);
    let result = verify_stream(&mut input, &policy(&t), Sink::Discard, &mut |_| {});
    assert!(
        matches!(&result, Err(BundleError::TooLarge { what, declared: d, limit })
            if what == "model.onnx" && *d == declared && *limit == limits.max_file_bytes),
        "{}",
        describe(&result)
    );
    assert!(!input.crossed, "a payload byte was asked for");
}

#[test]
fn a_declared_size_above_a_configured_small_limit() {
    let k = key();
    let plain = pseudo_random(4096, 13);
    let (m, payload) = manifest_with(vec![crafted_file("model.onnx", FileRole::Model, &plain)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let limits = Limits {
        max_file_bytes: 4095,
        ..Limits::default()
    };
    let result = verify_bytes(
        &bytes,
        &Policy {
            limits,
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::TooLarge { what, declared: 4096, limit: 4095 }) if what == "model.onnx"),
        "{}",
        describe(&result)
    );
    let limits = Limits {
        max_file_bytes: 4096,
        ..Limits::default()
    };
    verify_bytes(
        &bytes,
        &Policy {
            limits,
            ..policy(&t)
        },
    )
    .expect("exactly at the limit");
}

#[test]
fn declared_sizes_that_sum_above_max_bundle_bytes() {
    // Each file within max_file_bytes, together above max_bundle_bytes.
    let k = key();
    let limits = Limits::default();
    for sizes in [
        vec![limits.max_file_bytes; 3],
        vec![limits.max_file_bytes; 2],
    ] {
        let mut files = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let role = if i == 0 {
                FileRole::Model
            } else {
                FileRole::Other
            };
            let (mut entry, _) = crafted_file(&format!("f{i}"), role, b"x");
            entry.size = *size;
            files.push((entry, vec![]));
        }
        let (m, _) = manifest_with(files);
        let bytes = craft_manifest(&m, &[&k], &[]);
        let t = trust(&[&k], 1);
        let result = verify_bytes(&bytes, &policy(&t));
        let total: u64 = sizes.iter().sum();
        if total > limits.max_bundle_bytes {
            assert!(
                matches!(&result, Err(BundleError::TooLarge { what, declared, limit })
                    if what == "the bundle's files together" && *declared == total && *limit == limits.max_bundle_bytes),
                "{sizes:?}: {}",
                describe(&result)
            );
        } else {
            // Within every bound: the verifier goes on to the (absent) payload.
            assert!(
                matches!(&result, Err(BundleError::Truncated { region: Region::File(p), .. }) if p == "f0"),
                "{sizes:?}: {}",
                describe(&result)
            );
        }
    }
}

#[test]
fn too_many_files_is_too_large() {
    let k = key();
    let limits = Limits::default();
    let count = limits.max_files + 1;
    let files: Vec<_> = (0..count)
        .map(|i| {
            let role = if i == 0 {
                FileRole::Model
            } else {
                FileRole::Other
            };
            crafted_file(&format!("f{i:03}"), role, format!("{i}").as_bytes())
        })
        .collect();
    let (m, payload) = manifest_with(files);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let end = header_end(&bytes);
    let mut input = FencedReader::new(bytes, end);
    let result = verify_stream(&mut input, &policy(&t), Sink::Discard, &mut |_| {});
    assert!(
        matches!(&result, Err(BundleError::TooLarge { what, declared, limit })
            if what == "file count" && *declared == count as u64 && *limit == limits.max_files as u64),
        "{}",
        describe(&result)
    );
    assert!(!input.crossed, "a payload byte was asked for");
}

#[test]
fn an_oversized_header_is_refused_from_its_length_prefix_alone() {
    let limit = Limits::default().max_header_bytes;
    let k = key();
    let t = trust(&[&k], 1);
    for len in [limit + 1, u64::from(u32::MAX)] {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(0xa5u8, 1 << 16));
        // Any attempt to read past the 12-byte prefix fails the read (and is remembered).
        let mut input = FencedReader::new(bytes, PREFIX_LEN);
        let result = verify_stream(&mut input, &policy(&t), Sink::Discard, &mut |_| {});
        assert!(
            matches!(&result, Err(BundleError::HeaderTooLarge { len: l, limit: m }) if *l == len && *m == limit),
            "length {len}: {}",
            describe(&result)
        );
        assert!(!input.crossed, "length {len}: the header was read");
    }
}

#[test]
fn a_header_exactly_at_the_limit_is_read() {
    // The limit is inclusive: a header of max_header_bytes is read (and here fails as CBOR).
    let limits = Limits {
        max_header_bytes: 1000,
        ..Limits::default()
    };
    let k = key();
    let t = trust(&[&k], 1);
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1000u32.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0xffu8, 1000));
    let result = verify_bytes(
        &bytes,
        &Policy {
            limits,
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::MalformedHeader { .. })),
        "{}",
        describe(&result)
    );
}

/// The window log a zstd frame header declares (RFC 8878 3.1.1.1), or None when the frame is
/// single-segment (its window is its content size).
fn declared_window_log(frame: &[u8]) -> Option<u32> {
    assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let descriptor = frame[4];
    if descriptor & 0x20 != 0 {
        return None;
    }
    Some(10 + u32::from(frame[5] >> 3))
}

#[test]
fn a_frame_that_needs_a_larger_window_than_allowed_is_refused() {
    // A real libzstd frame made with window_log(27) in streaming mode (no content size): its
    // header declares a 128 MiB window, above the device's max_window_log (23, 8 MiB). The
    // decoder must refuse it from the frame header instead of allocating the window.
    let k = key();
    let plain = pseudo_random(256 * 1024, 14);
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(false).unwrap();
    encoder.window_log(27).unwrap();
    encoder.write_all(&plain).unwrap();
    let frame = encoder.finish().unwrap();
    assert_eq!(
        declared_window_log(&frame),
        Some(27),
        "frame header does not declare 2^27"
    );
    let entry = FileEntry {
        path: "model.onnx".into(),
        role: FileRole::Model,
        size: plain.len() as u64,
        compressed_size: frame.len() as u64,
        sha256: sha256_hex(&plain),
    };
    let (m, payload) = manifest_with(vec![(entry, frame)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    assert_eq!(Limits::default().max_window_log, 23);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::Decompress { path, reason })
            if path == "model.onnx" && reason.contains("too much memory")),
        "{}",
        describe(&result)
    );
    // The same frame is fine for a device that allows the window: only the window was wrong.
    let limits = Limits {
        max_window_log: 27,
        ..Limits::default()
    };
    verify_bytes(
        &bytes,
        &Policy {
            limits,
            ..policy(&t)
        },
    )
    .expect("window allowed");
}

#[test]
fn junk_after_the_frame_inside_its_region_is_refused() {
    // compressed_size covers the frame plus 10 bytes of junk: a place to smuggle bytes past
    // the digest. The verifier must notice the frame ended early.
    let k = key();
    let plain = pseudo_random(5000, 15);
    let (mut entry, mut frame) = crafted_file("model.onnx", FileRole::Model, &plain);
    frame.extend_from_slice(b"0123456789");
    entry.compressed_size = frame.len() as u64;
    let declared = entry.compressed_size;
    let (m, payload) = manifest_with(vec![(entry, frame)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    let want = format!("the frame ends 10 bytes before its declared compressed size {declared}");
    assert!(
        matches!(&result, Err(BundleError::Decompress { path, reason }) if path == "model.onnx" && *reason == want),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_second_frame_hidden_inside_the_region_is_refused() {
    let k = key();
    let plain = pseudo_random(5000, 16);
    let (mut entry, mut frame) = crafted_file("model.onnx", FileRole::Model, &plain);
    let hidden = zstd_frame(b"#!/bin/sh\necho owned\n");
    frame.extend_from_slice(&hidden);
    entry.compressed_size = frame.len() as u64;
    let (m, payload) = manifest_with(vec![(entry, frame)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    let want = format!(
        "the frame ends {} bytes before its declared compressed size",
        hidden.len()
    );
    assert!(
        matches!(&result, Err(BundleError::Decompress { path, reason }) if path == "model.onnx" && reason.starts_with(&want)),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_frame_longer_than_its_declared_compressed_size_is_refused() {
    // The region ends mid-frame: the decoder sees the end of its input, a corrupt frame (the
    // bundle itself is complete, so this is not Truncated).
    let k = key();
    let plain = pseudo_random(5000, 17);
    let (mut entry, frame) = crafted_file("model.onnx", FileRole::Model, &plain);
    entry.compressed_size = frame.len() as u64 - 20;
    let (m, payload) = manifest_with(vec![(entry, frame)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::Decompress { path, .. }) if path == "model.onnx"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_skippable_frame_cannot_smuggle_unhashed_bytes() {
    // A zstd skippable frame decodes to nothing, so an empty file's region could carry bytes
    // that are never hashed. Each region must be one standard zstd frame.
    let k = key();
    let (mut entry, _) = crafted_file("model.onnx", FileRole::Model, b"");
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18];
    skippable.extend_from_slice(&8u32.to_le_bytes());
    skippable.extend_from_slice(b"smuggled");
    entry.compressed_size = skippable.len() as u64;
    let (m, payload) = manifest_with(vec![(entry, skippable)]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::Decompress { path, reason })
            if path == "model.onnx" && reason.contains("does not start with a zstd frame")
                && reason.contains("502a4d18")),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_region_too_short_for_a_frame_is_refused() {
    let k = key();
    let (mut entry, _) = crafted_file("model.onnx", FileRole::Model, b"");
    entry.compressed_size = 2;
    let (m, payload) = manifest_with(vec![(entry, vec![0x28, 0xb5])]);
    let bytes = craft_manifest(&m, &[&k], &payload);
    let t = trust(&[&k], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::Decompress { path, reason })
            if path == "model.onnx" && reason.contains("found 28b5")),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_compressed_size_above_the_compress_bound_is_refused_before_the_payload() {
    // 100 plain bytes can never need 10 MiB of zstd frame: refuse the padding unread.
    let k = key();
    let (mut entry, _) = crafted_file("model.onnx", FileRole::Model, &[7u8; 100]);
    entry.compressed_size = 10 << 20;
    let (m, _) = manifest_with(vec![(entry, vec![])]);
    let bytes = craft_manifest(&m, &[&k], &[]);
    let end = header_end(&bytes);
    let t = trust(&[&k], 1);
    let mut input = FencedReader::new(bytes, end);
    let result = verify_stream(&mut input, &policy(&t), Sink::Discard, &mut |_| {});
    let bound = mint_updater::bundle::verify::compress_bound(100);
    assert!(
        matches!(&result, Err(BundleError::TooLarge { what, declared, limit })
            if what == "the compressed frame of model.onnx" && *declared == 10 << 20 && *limit == bound),
        "{}",
        describe(&result)
    );
    assert!(!input.crossed, "a payload byte was asked for");
}

#[test]
fn the_compress_bound_holds_for_incompressible_data() {
    // Random bytes are the worst case for a compressor: our own builder's frames stay within
    // the bound at several sizes around block boundaries.
    for size in [
        0usize,
        1,
        1000,
        128 << 10,
        (128 << 10) + 1,
        1 << 20,
        3 << 20,
    ] {
        let plain = pseudo_random(size, size as u64 + 1);
        let frame = zstd_frame(&plain);
        let bound = mint_updater::bundle::verify::compress_bound(size as u64);
        assert!(
            frame.len() as u64 <= bound,
            "size {size}: frame {} > bound {bound}",
            frame.len()
        );
    }
}
