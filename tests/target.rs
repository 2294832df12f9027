//! Threat: a genuine bundle installed on the wrong kind of device — a model built for one
//! accelerator or architecture pushed (by mistake or on purpose) to another.

use mint_e2e::*;

fn for_targets(targets: &[&str]) -> (OperatorKey, Vec<u8>) {
    let k = key();
    let m = Manifest {
        targets: targets.iter().map(|s| (*s).to_owned()).collect(),
        ..manifest()
    };
    let bytes = signed(m, &k);
    (k, bytes)
}

fn device() -> Option<Vec<String>> {
    Some(vec!["jetson".into(), "aarch64".into()])
}

fn describe(result: &Result<Verified, BundleError>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn a_bundle_for_another_device_is_wrong_target() {
    let (k, bytes) = for_targets(&["rpi4"]);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            device_targets: device(),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::WrongTarget { targets, device })
            if *targets == vec!["rpi4".to_owned()] && *device == vec!["jetson".to_owned(), "aarch64".to_owned()]),
        "{}",
        describe(&result)
    );
}

#[test]
fn a_matching_class_passes() {
    let (k, bytes) = for_targets(&["rpi4", "jetson"]);
    let t = trust(&[&k], 1);
    verify_bytes(
        &bytes,
        &Policy {
            device_targets: device(),
            ..policy(&t)
        },
    )
    .expect("class matches");
}

#[test]
fn a_matching_architecture_passes() {
    let (k, bytes) = for_targets(&["x86_64", "aarch64"]);
    let t = trust(&[&k], 1);
    verify_bytes(
        &bytes,
        &Policy {
            device_targets: device(),
            ..policy(&t)
        },
    )
    .expect("arch matches");
}

#[test]
fn empty_targets_pass_anywhere() {
    let (k, bytes) = for_targets(&[]);
    let t = trust(&[&k], 1);
    for dev in [device(), Some(vec![]), Some(vec!["rpi4".to_owned()])] {
        verify_bytes(
            &bytes,
            &Policy {
                device_targets: dev.clone(),
                ..policy(&t)
            },
        )
        .unwrap_or_else(|e| panic!("device {dev:?}: {e:?}"));
    }
}

#[test]
fn no_device_targets_skips_the_check() {
    let (k, bytes) = for_targets(&["rpi4"]);
    let t = trust(&[&k], 1);
    verify_bytes(
        &bytes,
        &Policy {
            device_targets: None,
            ..policy(&t)
        },
    )
    .expect("check skipped");
}

#[test]
fn a_device_with_no_names_accepts_only_untargeted_bundles() {
    let (k, bytes) = for_targets(&["rpi4"]);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            device_targets: Some(vec![]),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::WrongTarget { targets, device })
            if *targets == vec!["rpi4".to_owned()] && device.is_empty()),
        "{}",
        describe(&result)
    );
}

#[test]
fn target_names_match_exactly_not_by_prefix() {
    let (k, bytes) = for_targets(&["jetson-orin"]);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            device_targets: device(),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::WrongTarget { .. })),
        "{}",
        describe(&result)
    );
}

#[test]
fn an_invalid_target_name_is_a_malformed_manifest() {
    // Target names become directory names and MQTT topic levels.
    let (k, bytes) = for_targets(&["../rpi4"]);
    let t = trust(&[&k], 1);
    let result = verify_bytes(
        &bytes,
        &Policy {
            device_targets: device(),
            ..policy(&t)
        },
    );
    assert!(
        matches!(&result, Err(BundleError::MalformedManifest { reason }) if reason.contains("`targets`")),
        "{}",
        describe(&result)
    );
}
