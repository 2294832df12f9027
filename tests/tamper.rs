//! Threat: a bundle altered in transit or at rest — a flipped bit from bad storage, or an
//! attacker editing the manifest or the model. No single-bit change anywhere may produce a
//! bundle that verifies; each must be refused by the check that owns the region it hit.

use mint_e2e::*;

fn flip(bytes: &[u8], pos: usize, bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[pos] ^= 1 << bit;
    out
}

fn describe(result: &Result<Verified, BundleError>) -> String {
    match result {
        Ok(_) => "Ok (the tampered bundle VERIFIED)".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn every_bit_of_the_magic_is_bad_magic() {
    let fx = BundleFixture::two_files();
    for pos in 0..8 {
        for bit in 0..8 {
            let bad = flip(&fx.bytes, pos, bit);
            let found_expected = String::from_utf8_lossy(&bad[..8]).into_owned();
            let result = verify_bytes(&bad, &fx.policy());
            assert!(
                matches!(&result, Err(BundleError::BadMagic { found }) if *found == found_expected),
                "magic byte {pos} bit {bit}: {}",
                describe(&result)
            );
        }
    }
}

#[test]
fn every_bit_of_the_header_length() {
    // A longer length swallows payload bytes into the header (trailing CBOR) or runs past
    // the end; a shorter one cuts the COSE structure; a huge one trips the size limit first.
    let fx = BundleFixture::two_files();
    let limit = Limits::default().max_header_bytes;
    let available = fx.bytes.len() - PREFIX_LEN;
    for pos in 8..PREFIX_LEN {
        for bit in 0..8 {
            let bad = flip(&fx.bytes, pos, bit);
            let len = u64::from(u32::from_be_bytes(bad[8..12].try_into().unwrap()));
            let result = verify_bytes(&bad, &fx.policy());
            let ok = if len > limit {
                matches!(&result, Err(BundleError::HeaderTooLarge { len: l, limit: m }) if *l == len && *m == limit)
            } else if len as usize > available {
                matches!(&result, Err(BundleError::Truncated { region: Region::Header, expected })
                    if *expected == len - available as u64)
            } else {
                matches!(&result, Err(BundleError::MalformedHeader { .. }))
            };
            assert!(
                ok,
                "length byte {pos} bit {bit} (length {len}): {}",
                describe(&result)
            );
        }
    }
}

#[test]
fn every_byte_of_the_signed_manifest_is_bad_signature() {
    // The manifest sits inside the COSE structure as a byte string: a flip there keeps the
    // structure intact, so it is the signature check that must catch it (and nothing of the
    // altered manifest is parsed first).
    let fx = BundleFixture::two_files();
    let kid = fx.key.kid().to_hex();
    let range = fx.manifest_range();
    assert!(range.len() > 300, "manifest is {} bytes", range.len());
    for pos in range {
        for bit in [pos % 8, 7 - pos % 8] {
            let bad = flip(&fx.bytes, pos, bit);
            let result = verify_bytes(&bad, &fx.policy());
            assert!(
                matches!(&result, Err(BundleError::BadSignature { kid: k }) if *k == kid),
                "manifest byte {pos} bit {bit}: {}",
                describe(&result)
            );
        }
    }
}

#[test]
fn every_byte_of_the_signature_value_is_bad_signature() {
    let fx = BundleFixture::two_files();
    let kid = fx.key.kid().to_hex();
    let header = fx.header_range();
    // The signature value is the last item of the header: a 64-byte bstr (0x58 0x40 ...).
    let sig = header.end - 64..header.end;
    assert_eq!(&fx.bytes[sig.start - 2..sig.start], &[0x58, 0x40]);
    for pos in sig {
        let bad = flip(&fx.bytes, pos, pos % 8);
        let result = verify_bytes(&bad, &fx.policy());
        assert!(
            matches!(&result, Err(BundleError::BadSignature { kid: k }) if *k == kid),
            "signature byte {pos}: {}",
            describe(&result)
        );
    }
}

#[test]
fn every_byte_of_the_kid_makes_the_signer_untrusted() {
    let fx = BundleFixture::two_files();
    let kid = fx.key.kid().0;
    let at = PREFIX_LEN + find(fx.header(), &kid).expect("kid in the header");
    for i in 0..32 {
        let bad = flip(&fx.bytes, at + i, i % 8);
        let mut flipped = kid;
        flipped[i] ^= 1 << (i % 8);
        let result = verify_bytes(&bad, &fx.policy());
        assert!(
            matches!(&result, Err(BundleError::ThresholdNotMet { valid: 0, required: 1, untrusted })
                if *untrusted == vec![hex::encode(flipped)]),
            "kid byte {i}: {}",
            describe(&result)
        );
    }
}

#[test]
fn bit_flips_across_the_whole_header_never_verify() {
    // ~200 positions spread over the whole header, structure included. Each must fail in the
    // header or signature checks — never later (size, manifest), never with a size error.
    let fx = BundleFixture::two_files();
    let header = fx.header_range();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    let positions = spread(header.clone(), 200);
    assert!(positions.len() >= 200);
    for pos in positions {
        let bit = (pos * 5) % 8;
        let bad = flip(&fx.bytes, pos, bit);
        let result = verify_bytes(&bad, &fx.policy());
        let name = match &result {
            Err(BundleError::MalformedHeader { .. }) => "MalformedHeader",
            Err(BundleError::BadSignature { .. }) => "BadSignature",
            Err(BundleError::ThresholdNotMet {
                valid: 0,
                required: 1,
                ..
            }) => "ThresholdNotMet",
            Err(BundleError::UnsupportedAlgorithm { .. }) => "UnsupportedAlgorithm",
            other => panic!(
                "header byte {} bit {bit}: {}",
                pos - header.start,
                describe(other)
            ),
        };
        *seen.entry(name).or_default() += 1;
    }
    println!("header flips by outcome: {seen:?}");
    assert!(seen.contains_key("MalformedHeader") && seen.contains_key("BadSignature"));
}

#[test]
fn a_flipped_alg_is_an_unsupported_algorithm() {
    // The protected alg -8 is the single byte 0x27 right after label 1 in the signature's
    // protected map {1: -8, 4: kid} (a2 01 27 04 58 20 ...).
    let fx = BundleFixture::two_files();
    let kid = fx.key.kid();
    let mut pattern = vec![0xa2, 0x01, 0x27, 0x04, 0x58, 0x20];
    pattern.extend_from_slice(&kid.0);
    let at = PREFIX_LEN + find(fx.header(), &pattern).expect("signature protected header") + 2;
    // 0x27 (-8) ^ 0x01 = 0x26 (-7, ES256).
    let bad = flip(&fx.bytes, at, 0);
    let result = verify_bytes(&bad, &fx.policy());
    assert!(
        matches!(&result, Err(BundleError::UnsupportedAlgorithm { kid: k, alg }) if *k == kid.to_hex() && alg == "Assigned(ES256)"),
        "{}",
        describe(&result)
    );
}

#[test]
fn bit_flips_in_each_file_payload_never_verify() {
    let fx = BundleFixture::two_files();
    for (index, file) in fx.manifest.files.iter().enumerate() {
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for pos in spread(fx.file_range(index), 100) {
            let bit = pos % 8;
            let bad = flip(&fx.bytes, pos, bit);
            let result = verify_bytes(&bad, &fx.policy());
            let name = match &result {
                Err(BundleError::Digest {
                    path,
                    expected,
                    actual,
                }) if *path == file.path && *expected == file.sha256 && *actual != file.sha256 => {
                    "Digest"
                }
                Err(BundleError::Decompress { path, .. }) if *path == file.path => "Decompress",
                Err(BundleError::SizeMismatch { path, declared, .. })
                    if *path == file.path && *declared == file.size =>
                {
                    "SizeMismatch"
                }
                other => panic!(
                    "{} byte {} bit {bit}: {}",
                    file.path,
                    pos - fx.file_range(index).start,
                    describe(other)
                ),
            };
            *seen.entry(name).or_default() += 1;
        }
        println!("{}: payload flips by outcome: {seen:?}", file.path);
    }
}

#[test]
fn appended_data_is_trailing_data() {
    let fx = BundleFixture::two_files();
    for extra in [&b"\0"[..], b"MINTBNDL", &[0xffu8; 4096][..]] {
        let mut bad = fx.bytes.clone();
        bad.extend_from_slice(extra);
        let result = verify_bytes(&bad, &fx.policy());
        assert!(
            matches!(result, Err(BundleError::TrailingData)),
            "{} appended bytes: {}",
            extra.len(),
            describe(&result)
        );
    }
}

#[test]
fn a_second_bundle_appended_is_trailing_data() {
    let fx = BundleFixture::two_files();
    let mut bad = fx.bytes.clone();
    bad.extend_from_slice(&fx.bytes);
    let result = verify_bytes(&bad, &fx.policy());
    assert!(
        matches!(result, Err(BundleError::TrailingData)),
        "{}",
        describe(&result)
    );
}
