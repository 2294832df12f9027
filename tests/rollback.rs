//! Threat: a downgrade — an older, genuinely signed bundle (with a known flaw) replayed to a
//! device that already runs a newer one.

use mint_e2e::*;

fn with_sequence(sequence: u64) -> (OperatorKey, Vec<u8>) {
    let k = key();
    let bytes = signed(
        Manifest {
            sequence,
            ..manifest()
        },
        &k,
    );
    (k, bytes)
}

fn describe(result: &Result<Verified, BundleError>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn a_lower_sequence_is_rollback() {
    let (k, bytes) = with_sequence(4);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            min_sequence: Some(5),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::Rollback { name, sequence: 4, minimum: 5 }) if name == "mlp"),
        "{}",
        describe(&result)
    );
}

#[test]
fn the_minimum_itself_passes() {
    let (k, bytes) = with_sequence(5);
    let t = trust(&[&k], 1);
    let (header, _) = verify_bytes(
        &bytes,
        &Policy {
            min_sequence: Some(5),
            ..policy(&t)
        },
    )
    .expect("equal");
    assert_eq!(header.manifest.sequence, 5);
}

#[test]
fn a_higher_sequence_passes() {
    let (k, bytes) = with_sequence(6);
    let t = trust(&[&k], 1);
    verify_bytes(
        &bytes,
        &Policy {
            min_sequence: Some(5),
            ..policy(&t)
        },
    )
    .expect("newer");
}

#[test]
fn no_minimum_skips_the_check() {
    let (k, bytes) = with_sequence(0);
    let t = trust(&[&k], 1);
    verify_bytes(&bytes, &policy(&t)).expect("no minimum");
}

#[test]
fn the_maximum_sequence_is_not_special() {
    let (k, bytes) = with_sequence(u64::MAX - 1);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            min_sequence: Some(u64::MAX),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::Rollback { sequence, minimum: u64::MAX, .. }) if *sequence == u64::MAX - 1),
        "{}",
        describe(&result)
    );
}

#[test]
fn expired_and_rolled_back_reports_expired() {
    // DESIGN.md: expiry is checked before target and anti-rollback.
    let k = key();
    let m = Manifest {
        sequence: 4,
        expires: Some(CREATED + 10),
        ..manifest()
    };
    let bytes = signed(m, &k);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            min_sequence: Some(5),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::Expired { expires, now: NOW }) if *expires == CREATED + 10),
        "{}",
        describe(&result)
    );
}

#[test]
fn wrong_target_and_rolled_back_reports_wrong_target() {
    let k = key();
    let m = Manifest {
        sequence: 4,
        targets: vec!["rpi4".into()],
        ..manifest()
    };
    let bytes = signed(m, &k);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            min_sequence: Some(5),
            device_targets: Some(vec!["jetson".into()]),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::WrongTarget { targets, .. }) if *targets == vec!["rpi4".to_owned()]),
        "{}",
        describe(&result)
    );
}

#[test]
fn rollback_is_reported_before_any_payload_byte_is_read() {
    // Header only, no payload at all: still Rollback, not Truncated.
    let (k, bytes) = with_sequence(4);
    let t = trust(&[&k], 1);
    let header_end = PREFIX_LEN + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let result = verify_bytes(
        &bytes[..header_end],
        &Policy {
            min_sequence: Some(5),
            ..policy(&t)
        },
    );
    assert!(
        matches!(
            &result,
            Err(BundleError::Rollback {
                sequence: 4,
                minimum: 5,
                ..
            })
        ),
        "{}",
        describe(&result)
    );
}
