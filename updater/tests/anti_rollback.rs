//! Anti-rollback on the device: a lower or equal sequence is refused (after expiry and
//! target, before the payload), the same revision is idempotent, and the trusted time only
//! moves forward.

mod common;

use common::*;
use mint_updater::updater::{InstallOutcome, UpdateError};
use mint_updater::{BundleError, Check};

fn assert_rollback(err: UpdateError, sequence: u64, minimum: u64) {
    assert_eq!(err.check(), Some(Check::Rollback), "{err}");
    match err {
        UpdateError::Bundle(BundleError::Rollback {
            name,
            sequence: s,
            minimum: m,
        }) => {
            assert_eq!(name, "mlp");
            assert_eq!((s, m), (sequence, minimum));
        }
        other => panic!("expected a rollback refusal, got {other}"),
    }
}

#[test]
fn a_lower_sequence_is_refused_and_recorded() {
    let fx = Fixture::new();
    let updater = fx.open();
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 5)));
    let err = install(&updater, &fx.bundle(&Spec::new("mlp", 4))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle refused by the rollback check: sequence 4 of model \"mlp\" is below the minimum 6 (anti-rollback)"
    );
    assert_rollback(err, 4, 6);
    let refused = updater.events_since(0, 100).pop().unwrap();
    assert_eq!(refused.kind, "install_refused");
    assert_eq!(refused.severity, "warning");
    assert_eq!(refused.model.as_deref(), Some("mlp"));
    assert_eq!(refused.details["check"], "rollback");
}

#[test]
fn the_same_sequence_with_other_content_is_refused() {
    let fx = Fixture::new();
    let updater = fx.open();
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 5)));
    let err = install(
        &updater,
        &fx.bundle(&Spec::new("mlp", 5).version("5-other")),
    )
    .unwrap_err();
    assert_rollback(err, 5, 6);
}

#[test]
fn the_same_revision_is_idempotent() {
    let fx = Fixture::new();
    let updater = fx.open();
    let bundle = fx.bundle(&Spec::new("mlp", 1));
    let candidate = on_trial(install(&updater, &bundle).unwrap());
    let events = updater.events_since(0, 1000).len();
    // While on trial...
    match install(&updater, &bundle).unwrap() {
        InstallOutcome::AlreadyInstalled(m) => assert_eq!(m, candidate),
        other => panic!("expected AlreadyInstalled, got {other:?}"),
    }
    // ...and once committed.
    for _ in 0..5 {
        updater.record_request("mlp", true);
    }
    match install(&updater, &bundle).unwrap() {
        InstallOutcome::AlreadyInstalled(m) => assert_eq!(m, candidate),
        other => panic!("expected AlreadyInstalled, got {other:?}"),
    }
    assert_eq!(fx.measurer.count(&candidate.rev.digest), 1);
    // Nothing but the commit was recorded for the repeats.
    assert_eq!(updater.events_since(0, 1000).len(), events + 1);
}

#[test]
fn the_floor_counts_a_revision_that_failed() {
    let fx = Fixture::new();
    let updater = fx.open();
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    install(&updater, &fx.bundle(&Spec::new("mlp", 2).behaving("BAD"))).unwrap();
    // A different, good bundle with the failed sequence is still refused.
    let err = install(
        &updater,
        &fx.bundle(&Spec::new("mlp", 2).version("2-fixed")),
    )
    .unwrap_err();
    assert_rollback(err, 2, 3);
    on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 3))).unwrap());
}

#[test]
fn a_new_revision_waits_for_the_candidate_on_trial() {
    let fx = Fixture::new();
    let updater = fx.open();
    on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 1))).unwrap());
    let err = install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap_err();
    assert!(
        matches!(&err, UpdateError::Busy { name: Some(n), .. } if n == "mlp"),
        "{err}"
    );
    assert!(err.to_string().contains("is in phase trial"), "{err}");
    // Other models are independent.
    on_trial(install(&updater, &fx.bundle(&Spec::new("other", 1))).unwrap());
}

#[test]
fn a_clock_set_back_does_not_revive_an_expired_bundle() {
    let fx = Fixture::new();
    let updater = fx.open();
    // A bundle created in the "future" of the device clock raises the trusted time...
    let mut ahead = Spec::new("clock", 1);
    ahead.created = now() + 10_000;
    install_committed(&updater, &fx.bundle(&ahead));
    assert_eq!(updater.state().trusted_time().unwrap(), Some(ahead.created));
    // ...so a bundle that expires before it is refused although the clock says it is valid.
    let mut stale = Spec::new("mlp", 1);
    stale.expires = Some(now() + 5_000);
    let err = install(&updater, &fx.bundle(&stale)).unwrap_err();
    assert_eq!(err.check(), Some(Check::Expiry), "{err}");
    let refused = updater.events_since(0, 100).pop().unwrap();
    assert_eq!(refused.details["check"], "expiry");
    assert_eq!(
        refused.model, None,
        "nothing of an unaccepted manifest is attributed"
    );
}
