//! Threat: a bundle that is not (or not enough) signed by trusted operators — signed by an
//! attacker's key, by too few operators, by one operator pretending to be several, with an
//! algorithm we do not accept, or with a signature structure meant to exhaust the verifier.

use coset::iana;
use mint_e2e::*;

/// A valid manifest + payload (one model file) and the manifest bytes.
fn content() -> (Vec<u8>, Vec<u8>) {
    let (m, payload) = manifest_with(vec![crafted_file(
        "model.onnx",
        FileRole::Model,
        &pseudo_random(4096, 3),
    )]);
    (m.to_cbor().unwrap(), payload)
}

fn describe(result: &Result<Verified, BundleError>) -> String {
    match result {
        Ok((h, _)) => format!("Ok (signers {:?})", h.signers),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn signed_by_an_untrusted_key_is_threshold_not_met() {
    let (cbor, payload) = content();
    let trusted = key();
    let attacker = key();
    let bytes = craft(&cbor, &[&attacker], &payload);
    let t = trust(&[&trusted], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::ThresholdNotMet { valid: 0, required: 1, untrusted })
            if *untrusted == vec![attacker.kid().to_hex()]),
        "{}",
        describe(&result)
    );
}

#[test]
fn one_signer_under_threshold_two() {
    let (cbor, payload) = content();
    let (a, b) = (key(), key());
    let bytes = craft(&cbor, &[&a], &payload);
    let t = trust(&[&a, &b], 2);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::ThresholdNotMet { valid: 1, required: 2, untrusted }) if untrusted.is_empty()),
        "{}",
        describe(&result)
    );
}

#[test]
fn two_distinct_trusted_signers_meet_threshold_two() {
    let (cbor, payload) = content();
    let (a, b) = (key(), key());
    let bytes = craft(&cbor, &[&a, &b], &payload);
    let t = trust(&[&a, &b], 2);
    let (header, _) = verify_bytes(&bytes, &policy(&t)).expect("two distinct trusted signers");
    assert_eq!(header.signers, vec![a.kid(), b.kid()]);
    assert!(header.untrusted_signers.is_empty());
}

#[test]
fn the_same_key_signing_twice_counts_once() {
    // sign_manifest and add_signature refuse a duplicate signer; an attacker does not use them.
    let (cbor, payload) = content();
    let (a, b) = (key(), key());
    let sign = cose_sign(&cbor, &[SigSpec::eddsa(&a), SigSpec::eddsa(&a)]);
    assert_eq!(sign.signatures.len(), 2);
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a, &b], 2);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::ThresholdNotMet { valid: 1, required: 2, untrusted }) if untrusted.is_empty()),
        "{}",
        describe(&result)
    );
}

#[test]
fn the_same_key_with_kid_in_both_buckets_still_counts_once() {
    // One signature with the kid protected, one with it unprotected: still one key.
    let (cbor, payload) = content();
    let (a, b) = (key(), key());
    let unprotected = SigSpec {
        kid: KidAt::Unprotected,
        ..SigSpec::eddsa(&a)
    };
    let bytes = bundle_from_parts(
        &encode_sign(cose_sign(&cbor, &[SigSpec::eddsa(&a), unprotected])),
        &payload,
    );
    let t = trust(&[&a, &b], 2);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(
            &result,
            Err(BundleError::ThresholdNotMet {
                valid: 1,
                required: 2,
                ..
            })
        ),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_trusted_signature_over_other_manifest_bytes_is_bad_signature() {
    // The attacker takes a genuine header and swaps in a manifest of their own (a higher
    // sequence, say), keeping the operator's signature.
    let (cbor, payload) = content();
    let a = key();
    let mut sign = cose_sign(&cbor, &[SigSpec::eddsa(&a)]);
    let mut altered = manifest_value(&Manifest::from_cbor(&cbor).unwrap());
    set_field(&mut altered, "sequence", 1_000_000u64.into());
    sign.payload = Some(mint_e2e::cbor(&altered));
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::BadSignature { kid }) if *kid == a.kid().to_hex()),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_bad_trusted_signature_fails_even_when_the_threshold_is_met_otherwise() {
    // a and b sign validly; a signature claiming to be c's does not verify: the header was
    // altered, and that is an error however many others signed.
    let (cbor, payload) = content();
    let (a, b, c) = (key(), key(), key());
    let mut sign = cose_sign(
        &cbor,
        &[SigSpec::eddsa(&a), SigSpec::eddsa(&b), SigSpec::eddsa(&c)],
    );
    sign.signatures[2].signature[0] ^= 1;
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a, &b, &c], 2);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::BadSignature { kid }) if *kid == c.kid().to_hex()),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_signature_of_the_wrong_length_is_bad_signature() {
    let (cbor, payload) = content();
    let a = key();
    for len in [0usize, 63, 65, 128] {
        let mut sign = cose_sign(&cbor, &[SigSpec::eddsa(&a)]);
        sign.signatures[0].signature.resize(len, 0);
        let bytes = bundle_from_parts(&encode_sign(sign), &payload);
        let t = trust(&[&a], 1);
        let result = verify_bytes(&bytes, &policy(&t));
        assert!(
            matches!(&result, Err(BundleError::BadSignature { kid }) if *kid == a.kid().to_hex()),
            "signature of {len} bytes: {}",
            describe(&result)
        );
    }
}

#[test]
fn an_untrusted_extra_signer_is_reported_but_does_not_count() {
    let (cbor, payload) = content();
    let (a, stranger) = (key(), key());
    let bytes = craft(&cbor, &[&stranger, &a], &payload);
    let t = trust(&[&a], 1);
    let (header, _) = verify_bytes(&bytes, &policy(&t)).expect("a trusted signer is enough");
    assert_eq!(header.signers, vec![a.kid()]);
    assert_eq!(header.untrusted_signers, vec![stranger.kid().to_hex()]);
}

#[test]
fn alg_ed25519_minus_19_is_accepted() {
    let (cbor, payload) = content();
    let a = key();
    let sign = cose_sign(&cbor, &[SigSpec::with_alg(&a, iana::Algorithm::Ed25519)]);
    assert_eq!(
        sign.signatures[0].protected.header.alg,
        Some(coset::Algorithm::Assigned(iana::Algorithm::Ed25519))
    );
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a], 1);
    let (header, files) = verify_bytes(&bytes, &policy(&t)).expect("-19 is accepted");
    assert_eq!(header.signers, vec![a.kid()]);
    assert_eq!(files.len(), 1);
}

#[test]
fn alg_es256_by_a_trusted_kid_is_unsupported() {
    // A real Ed25519 signature, labelled ES256: the label is what a verifier would dispatch on,
    // so anything but -8/-19 is refused outright.
    let (cbor, payload) = content();
    let a = key();
    let sign = cose_sign(&cbor, &[SigSpec::with_alg(&a, iana::Algorithm::ES256)]);
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::UnsupportedAlgorithm { kid, alg })
            if *kid == a.kid().to_hex() && alg == "Assigned(ES256)"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_missing_protected_alg_is_unsupported() {
    let (cbor, payload) = content();
    let a = key();
    let spec = SigSpec {
        alg: None,
        ..SigSpec::eddsa(&a)
    };
    let bytes = bundle_from_parts(&encode_sign(cose_sign(&cbor, &[spec])), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::UnsupportedAlgorithm { kid, alg })
            if *kid == a.kid().to_hex() && alg == "none (protected `alg` missing)"),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_alg_only_in_the_unprotected_header_is_unsupported() {
    // An unprotected alg is not covered by the signature: it does not count.
    let (cbor, payload) = content();
    let a = key();
    let mut sign = cose_sign(
        &cbor,
        &[SigSpec {
            alg: None,
            ..SigSpec::eddsa(&a)
        }],
    );
    sign.signatures[0].unprotected.alg = Some(coset::Algorithm::Assigned(iana::Algorithm::EdDSA));
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::UnsupportedAlgorithm { kid, .. }) if *kid == a.kid().to_hex()),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_kid_only_in_the_unprotected_header_is_accepted() {
    let (cbor, payload) = content();
    let a = key();
    let spec = SigSpec {
        kid: KidAt::Unprotected,
        ..SigSpec::eddsa(&a)
    };
    let sign = cose_sign(&cbor, &[spec]);
    assert!(sign.signatures[0].protected.header.key_id.is_empty());
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a], 1);
    let (header, _) = verify_bytes(&bytes, &policy(&t)).expect("unprotected kid selects the key");
    assert_eq!(header.signers, vec![a.kid()]);
}

#[test]
fn no_kid_at_all_is_an_untrusted_signer() {
    let (cbor, payload) = content();
    let a = key();
    let spec = SigSpec {
        kid: KidAt::Absent,
        ..SigSpec::eddsa(&a)
    };
    let bytes = bundle_from_parts(&encode_sign(cose_sign(&cbor, &[spec])), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::ThresholdNotMet { valid: 0, required: 1, untrusted })
            if *untrusted == vec!["(no kid)".to_owned()]),
        "{}",
        describe(&result)
    );
}

#[test]
fn more_than_sixteen_signatures_is_malformed() {
    let (cbor, payload) = content();
    let keys: Vec<OperatorKey> = (0..=MAX_SIGNATURES).map(|_| key()).collect();
    let specs: Vec<SigSpec> = keys.iter().map(SigSpec::eddsa).collect();
    let bytes = bundle_from_parts(&encode_sign(cose_sign(&cbor, &specs)), &payload);
    let refs: Vec<&OperatorKey> = keys.iter().collect();
    let t = trust(&refs, 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::MalformedHeader { reason }) if reason == "17 signatures, at most 16 allowed"),
        "{}",
        describe(&result)
    );

    // Sixteen is fine.
    let bytes = bundle_from_parts(
        &encode_sign(cose_sign(&cbor, &specs[..MAX_SIGNATURES])),
        &payload,
    );
    let (header, _) = verify_bytes(&bytes, &policy(&t)).expect("16 signatures");
    assert_eq!(header.signers.len(), MAX_SIGNATURES);
}

#[test]
fn no_signatures_is_malformed() {
    let (cbor, payload) = content();
    let a = key();
    let bytes = bundle_from_parts(&encode_sign(cose_sign(&cbor, &[])), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::MalformedHeader { reason }) if reason == "no signatures"),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_detached_payload_is_malformed() {
    // Signed over the manifest, then the manifest removed: the verifier must not go looking
    // for it elsewhere.
    let (cbor, payload) = content();
    let a = key();
    let mut sign = cose_sign(&cbor, &[SigSpec::eddsa(&a)]);
    sign.payload = None;
    let bytes = bundle_from_parts(&encode_sign(sign), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::MalformedHeader { reason }) if reason == "detached payload: the manifest must be embedded"),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_untagged_cose_sign_is_malformed() {
    use coset::CborSerializable;
    let (cbor, payload) = content();
    let a = key();
    let untagged = cose_sign(&cbor, &[SigSpec::eddsa(&a)]).to_vec().unwrap();
    let bytes = bundle_from_parts(&untagged, &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::MalformedHeader { .. })),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_cose_sign1_instead_of_cose_sign_is_malformed() {
    use coset::{CoseSign1Builder, TaggedCborSerializable};
    let (cbor, payload) = content();
    let a = key();
    let sign1 = CoseSign1Builder::new()
        .protected(
            coset::HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(a.kid().0.to_vec())
                .build(),
        )
        .payload(cbor)
        .create_signature(b"", |tbs| a.sign(tbs).to_bytes().to_vec())
        .build();
    let bytes = bundle_from_parts(&sign1.to_tagged_vec().unwrap(), &payload);
    let t = trust(&[&a], 1);
    let result = verify_bytes(&bytes, &policy(&t));
    assert!(
        matches!(&result, Err(BundleError::MalformedHeader { .. })),
        "{}",
        describe(&result)
    );
}
