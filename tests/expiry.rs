//! Threat: an old bundle replayed after its operator let it expire (a model withdrawn for a
//! flaw, a key compromise window) — including on a device whose clock was set back, by
//! accident (no RTC battery) or by an attacker.

use mint_e2e::*;

const EXPIRES: i64 = CREATED + 1000;

fn expiring() -> (OperatorKey, Vec<u8>) {
    let k = key();
    let bytes = signed(
        Manifest {
            expires: Some(EXPIRES),
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
fn an_expired_bundle_is_refused() {
    let (k, bytes) = expiring();
    let t = trust(&[&k], 1);
    let now = EXPIRES + 86_400;
    let result = verify_bytes(&bytes, &Policy { now, ..policy(&t) });
    assert!(
        matches!(result, Err(BundleError::Expired { expires: EXPIRES, now: n }) if n == now),
        "{}",
        describe(&result)
    );
}

#[test]
fn expiry_is_inclusive_at_the_exact_second() {
    let (k, bytes) = expiring();
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            now: EXPIRES,
            ..policy(&t)
        },
    );
    assert!(
        matches!(
            result,
            Err(BundleError::Expired {
                expires: EXPIRES,
                now: EXPIRES
            })
        ),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_bundle_not_yet_expired_passes() {
    let (k, bytes) = expiring();
    let t = trust(&[&k], 1);
    let (header, _) = verify_bytes(
        &bytes,
        &Policy {
            now: EXPIRES - 1,
            ..policy(&t)
        },
    )
    .expect("one second left");
    assert_eq!(header.manifest.expires, Some(EXPIRES));
}

#[test]
fn a_clock_set_back_does_not_revive_an_expired_bundle() {
    // The device has already seen a trusted time after the expiry; its clock now claims an
    // earlier time. The later of the two counts.
    let (k, bytes) = expiring();
    let t = trust(&[&k], 1);
    let trusted_time = EXPIRES + 5;
    let result = verify_bytes(
        &bytes,
        &Policy {
            now: EXPIRES - 500,
            trusted_time: Some(trusted_time),
            ..policy(&t)
        },
    );
    assert!(
        matches!(result, Err(BundleError::Expired { expires: EXPIRES, now }) if now == trusted_time),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_older_trusted_time_does_not_override_the_clock() {
    let (k, bytes) = expiring();
    let t = trust(&[&k], 1);
    let now = EXPIRES + 10;
    let result = verify_bytes(
        &bytes,
        &Policy {
            now,
            trusted_time: Some(CREATED),
            ..policy(&t)
        },
    );
    assert!(
        matches!(result, Err(BundleError::Expired { expires: EXPIRES, now: n }) if n == now),
        "{}",
        describe(&result)
    );
    // And with both before the expiry, it passes.
    verify_bytes(
        &bytes,
        &Policy {
            now: EXPIRES - 10,
            trusted_time: Some(EXPIRES - 20),
            ..policy(&t)
        },
    )
    .expect("both times before expiry");
}

#[test]
fn a_bundle_without_expiry_never_expires() {
    let k = key();
    let bytes = signed(manifest(), &k);
    let t = trust(&[&k], 1);
    verify_bytes(
        &bytes,
        &Policy {
            now: i64::MAX,
            trusted_time: Some(i64::MAX),
            ..policy(&t)
        },
    )
    .expect("no expiry");
}

#[test]
fn expiry_is_checked_after_the_signature() {
    // An expired bundle by an untrusted key: the signature failure is reported, not the
    // expiry (nothing of an unauthenticated manifest is acted upon).
    let (_k, bytes) = expiring();
    let other = key();
    let t = trust(&[&other], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            now: EXPIRES + 1,
            ..policy(&t)
        },
    );
    assert!(
        matches!(
            result,
            Err(BundleError::ThresholdNotMet {
                valid: 0,
                required: 1,
                ..
            })
        ),
        "{}",
        describe(&result)
    );
}
