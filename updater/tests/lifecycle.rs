//! The update lifecycle on real files and a real database: install → trial → commit, health
//! failures and bad trials rolled back and quarantined, a hung probe bounded by its timeout,
//! operator rollback, retention of old revisions.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use mint_updater::bundle::header;
use mint_updater::updater::{InstallOutcome, UpdateError};
use mint_updater::Phase;
use sha2::{Digest, Sha256};

#[test]
fn install_goes_on_trial_then_commits_after_its_requests() {
    let fx = Fixture::new();
    let updater = fx.open();
    let bundle = fx.bundle(&Spec::new("mlp", 1));
    let mut progress = 0;
    let mut file = std::io::BufReader::new(fs::File::open(&bundle).unwrap());
    let outcome = updater
        .install(&mut file, &mut |done| progress = done)
        .unwrap();
    let model = on_trial(outcome);
    assert!(progress > 100_000, "progress reported {progress}");
    assert_eq!(updater.serving("mlp").as_ref(), Some(&model));
    assert_eq!(fx.last_served("mlp"), Some(Some(model.rev.digest.clone())));
    assert_eq!(fx.measurer.count(&model.rev.digest), 1);
    assert_eq!(fx.health.calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The store entry: the files, the manifest whose digest names it, the signed header.
    let dir = fx.store().join(&model.rev.digest);
    assert_eq!(model.dir, dir);
    assert!(dir.join("model.onnx").is_file());
    let manifest_cbor = fs::read(dir.join("manifest.cbor")).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&manifest_cbor)),
        model.rev.digest
    );
    let signed = header::decode(&fs::read(dir.join("header.cose")).unwrap()).unwrap();
    let (payload, _) = header::verify(&signed, &fx.trust).unwrap();
    assert_eq!(payload, manifest_cbor.as_slice());
    assert!(fx.staging_entries().is_empty());

    let r = record(&updater, "mlp");
    assert_eq!(r.committed, None);
    let c = r.candidate.unwrap();
    assert_eq!(c.phase, Phase::Trial);
    assert_eq!(r.highest_sequence, 1);

    for _ in 0..4 {
        updater.record_request("mlp", true);
    }
    assert!(record(&updater, "mlp").candidate.is_some());
    updater.record_request("mlp", false); // 1 of 5 = 20%: still within the maximum
    let r = record(&updater, "mlp");
    assert_eq!(r.candidate, None);
    assert_eq!(r.committed.as_ref(), Some(&model.rev));
    assert_eq!(updater.serving("mlp").as_ref(), Some(&model));

    let events = updater.events_since(0, 100);
    assert_eq!(
        kinds(&events),
        [
            "install_started",
            "verified",
            "stored",
            "measured",
            "activated",
            "health_passed",
            "committed"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert!(events.iter().all(|e| e.model.as_deref() == Some("mlp")));
    assert_eq!(events[6].details["requests"], 5);
    assert_eq!(events[6].details["errors"], 1);
    assert_eq!(updater.events_since(events[5].id, 10).len(), 1);
}

#[test]
fn failed_health_check_rolls_back_quarantines_and_waits_for_a_newer_sequence() {
    let fx = Fixture::new();
    let updater = fx.open();
    let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let bad = fx.bundle(&Spec::new("mlp", 2).behaving("BAD"));

    let outcome = install(&updater, &bad).unwrap();
    let InstallOutcome::RolledBack { to, reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert_eq!(to.as_ref(), Some(&v1));
    assert_eq!(reason, "golden case #0: output[0] is 0.9, expected 0.1");
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v1));
    assert_eq!(fx.last_served("mlp"), Some(Some(v1.rev.digest.clone())));
    let r = record(&updater, "mlp");
    assert_eq!(r.committed.as_ref(), Some(&v1.rev));
    assert_eq!(r.highest_sequence, 2);
    assert_eq!(r.quarantined.len(), 1);
    assert_eq!(r.quarantined[0].reason, reason);
    let bad_digest = r.quarantined[0].digest.clone();
    // The failed revision's store entry is collected; the committed one stays.
    assert_eq!(fx.store_entries(), vec![v1.rev.digest.clone()]);

    let events = updater.events_since(0, 100);
    let tail: Vec<&str> = kinds(&events).into_iter().rev().take(4).collect();
    assert_eq!(
        tail,
        ["quarantined", "rolled_back", "health_failed", "activated"]
    );

    // The same bundle again: refused before its payload, as quarantined.
    let err = install(&updater, &bad).unwrap_err();
    match &err {
        UpdateError::Quarantined {
            name,
            digest,
            reason: why,
        } => {
            assert_eq!(name, "mlp");
            assert_eq!(digest, &bad_digest);
            assert_eq!(why, &reason);
        }
        other => panic!("expected Quarantined, got {other}"),
    }
    let refused = updater.events_since(0, 100).pop().unwrap();
    assert_eq!(refused.kind, "install_refused");
    assert_eq!(refused.details["check"], "quarantine");

    // A newer sequence is accepted.
    let v3 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 3))).unwrap());
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v3));
}

#[test]
fn first_install_that_fails_serves_nothing() {
    let fx = Fixture::new();
    let updater = fx.open();
    let outcome = install(&updater, &fx.bundle(&Spec::new("mlp", 1).behaving("BAD"))).unwrap();
    assert!(matches!(
        outcome,
        InstallOutcome::RolledBack { to: None, .. }
    ));
    assert_eq!(updater.serving("mlp"), None);
    assert_eq!(fx.last_served("mlp"), Some(None));
    assert!(fx.store_entries().is_empty());
}

#[test]
fn hung_probe_is_bounded_by_the_health_timeout() {
    let mut fx = Fixture::new();
    fx.health_timeout = Duration::from_millis(300);
    let updater = fx.open();
    let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let started = Instant::now();
    let outcome = install(&updater, &fx.bundle(&Spec::new("mlp", 2).behaving("HANG"))).unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let InstallOutcome::RolledBack { to, reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert_eq!(reason, "health check timed out after 300 ms");
    assert_eq!(to.as_ref(), Some(&v1));
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v1));
}

#[test]
fn latency_above_the_budget_fails_the_health_check() {
    let fx = Fixture::new();
    let updater = fx.open();
    let outcome = install(&updater, &fx.bundle(&Spec::new("mlp", 1).behaving("SLOW"))).unwrap();
    let InstallOutcome::RolledBack { reason, .. } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert_eq!(
        reason,
        "slowest golden case took 5000.0 ms, above the latency budget of 1000 ms"
    );
}

#[test]
fn errors_during_the_trial_roll_back() {
    let fx = Fixture::new();
    let updater = fx.open();
    let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let v2 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap());
    for ok in [true, false, true, false, true] {
        updater.record_request("mlp", ok);
    }
    let r = record(&updater, "mlp");
    assert_eq!(r.candidate, None);
    assert_eq!(r.committed.as_ref(), Some(&v1.rev));
    assert_eq!(r.quarantined[0].digest, v2.rev.digest);
    assert_eq!(
        r.quarantined[0].reason,
        "error rate 40.0% (2 of 5 requests) above the maximum 20.0% during the trial"
    );
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v1));
    // Requests to a committed model are not trial accounting.
    updater.record_request("mlp", false);
    assert_eq!(record(&updater, "mlp"), r);
}

#[test]
fn the_trial_ends_by_time_on_tick() {
    let fx = Fixture::new();
    let updater = fx.open();
    let v1 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 1).trial(1000, 1))).unwrap());
    updater.record_request("mlp", true);
    updater.tick();
    std::thread::sleep(Duration::from_millis(2100));
    updater.tick();
    let r = record(&updater, "mlp");
    assert_eq!(r.committed.as_ref(), Some(&v1.rev), "{r:?}");
    let committed = updater.events_since(0, 100).pop().unwrap();
    assert_eq!(committed.kind, "committed");
    assert_eq!(committed.details["requests"], 1);
}

#[test]
fn an_empty_trial_window_commits_at_once() {
    let fx = Fixture::new();
    let updater = fx.open();
    let outcome = install(&updater, &fx.bundle(&Spec::new("mlp", 1).trial(0, 3600))).unwrap();
    assert!(
        matches!(outcome, InstallOutcome::Committed(_)),
        "{outcome:?}"
    );
}

#[test]
fn operator_rollback_goes_to_the_previous_committed_revision() {
    let fx = Fixture::new();
    let updater = fx.open();
    let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let v2 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 2)));
    let measured_v1 = fx.measurer.count(&v1.rev.digest);

    let serving = updater.rollback("mlp").unwrap();
    assert_eq!(serving.as_ref(), Some(&v1));
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v1));
    assert_eq!(fx.last_served("mlp"), Some(Some(v1.rev.digest.clone())));
    // What is served again is measured again.
    assert_eq!(fx.measurer.count(&v1.rev.digest), measured_v1 + 1);
    let r = record(&updater, "mlp");
    assert_eq!(r.committed.as_ref(), Some(&v1.rev));
    assert!(r.history.is_empty());
    assert_eq!(r.quarantined[0].digest, v2.rev.digest);
    assert_eq!(r.quarantined[0].reason, "rollback requested by operator");
    assert_eq!(fx.store_entries(), vec![v1.rev.digest.clone()]);

    let err = updater.rollback("mlp").unwrap_err();
    assert!(
        matches!(err, UpdateError::NoRollbackTarget { ref name } if name == "mlp"),
        "{err}"
    );
    let err = updater.rollback("nope").unwrap_err();
    assert!(matches!(err, UpdateError::UnknownModel { .. }), "{err}");

    // Rolling back a candidate on trial returns to the committed revision.
    let v3 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 3))).unwrap());
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v3));
    assert_eq!(updater.rollback("mlp").unwrap().as_ref(), Some(&v1));
    let r = record(&updater, "mlp");
    assert_eq!(r.candidate, None);
    assert_eq!(
        r.quarantine_entry(&v3.rev.digest).unwrap().reason,
        "rollback requested by operator"
    );
}

#[test]
fn garbage_collection_keeps_the_retained_history() {
    let mut fx = Fixture::new();
    fx.retain = 1;
    let updater = fx.open();
    let models: Vec<_> = (1..=4)
        .map(|s| install_committed(&updater, &fx.bundle(&Spec::new("mlp", s))))
        .collect();
    let r = record(&updater, "mlp");
    assert_eq!(r.committed.as_ref(), Some(&models[3].rev));
    assert_eq!(r.history, vec![models[2].rev.clone()]);
    let mut expected = vec![models[2].rev.digest.clone(), models[3].rev.digest.clone()];
    expected.sort();
    assert_eq!(fx.store_entries(), expected);

    // Another model's entries are never collected for this one.
    let other = install_committed(&updater, &fx.bundle(&Spec::new("other", 1)));
    assert!(fx.store_entries().contains(&other.rev.digest));
    assert_eq!(fx.store_entries().len(), 3);
}

#[test]
fn subscribers_get_what_is_served_then_every_change() {
    let fx = Fixture::new();
    let updater = fx.open();
    let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let rx = updater.subscribe();
    let first = rx.try_recv().unwrap();
    assert_eq!(
        (first.name.as_str(), first.model.as_ref()),
        ("mlp", Some(&v1))
    );
    let v2 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap());
    let change = rx.try_recv().unwrap();
    assert_eq!(change.model.as_ref(), Some(&v2));
    updater.rollback("mlp").unwrap();
    assert_eq!(rx.try_recv().unwrap().model.as_ref(), Some(&v1));
}
