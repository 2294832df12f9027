//! Crashes at every step of an update: the state on disk after a `kill -9` is reproduced
//! (a record left in a phase, a staging directory, a store entry without a record), and the
//! next `open` resumes or rolls back. The database itself is real redb, reopened after drop.

mod common;

use std::fs;
use std::sync::atomic::Ordering;

use common::*;
use mint_updater::lifecycle::ModelRecord;
use mint_updater::state::StateDb;
use mint_updater::Phase;

/// Rewrites the record as a crash at another instant would have left it.
fn crash_in_phase(fx: &Fixture, name: &str, phase: Phase) {
    let db = StateDb::open(&fx.state_dir().join("mintd.redb")).unwrap();
    let mut record: ModelRecord = db.get(name).unwrap().unwrap();
    record.candidate.as_mut().unwrap().phase = phase;
    db.commit(name, &record, &[]).unwrap();
}

#[test]
fn a_crash_during_activation_reruns_the_health_check() {
    let fx = Fixture::new();
    let (v1, v2) = {
        let updater = fx.open();
        let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
        let v2 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap());
        (v1, v2)
    };
    crash_in_phase(&fx, "mlp", Phase::Activated);
    let calls = fx.health.calls.load(Ordering::SeqCst);
    let updater = fx.open();
    assert_eq!(fx.health.calls.load(Ordering::SeqCst), calls + 1);
    let r = record(&updater, "mlp");
    assert_eq!(r.candidate.as_ref().unwrap().phase, Phase::Trial);
    assert_eq!(r.committed.as_ref(), Some(&v1.rev));
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v2));
}

#[test]
fn a_crash_before_measurement_measures_again_and_goes_on() {
    let fx = Fixture::new();
    let (v1, v2) = {
        let updater = fx.open();
        let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
        let v2 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap());
        (v1, v2)
    };
    crash_in_phase(&fx, "mlp", Phase::Stored);
    fx.served.lock().unwrap().clear();
    let updater = fx.open();
    // Measured twice (once before the crash): accepted, see `Action::Measure`.
    assert_eq!(fx.measurer.count(&v2.rev.digest), 2);
    // The committed model was served first, then the candidate once measured.
    let served = fx.served.lock().unwrap().clone();
    assert_eq!(
        served,
        vec![
            ("mlp".to_owned(), Some(v1.rev.digest.clone())),
            ("mlp".to_owned(), Some(v2.rev.digest.clone()))
        ]
    );
    assert_eq!(
        record(&updater, "mlp").candidate.unwrap().phase,
        Phase::Trial
    );
}

#[test]
fn a_crash_during_activation_rolls_back_if_the_rerun_health_check_fails() {
    let fx = Fixture::new();
    let (v1, v2) = {
        let updater = fx.open();
        let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
        let v2 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap());
        (v1, v2)
    };
    crash_in_phase(&fx, "mlp", Phase::Activated);
    fx.health.fail_all.store(true, Ordering::SeqCst);
    fx.served.lock().unwrap().clear();
    let updater = fx.open();
    let r = record(&updater, "mlp");
    assert_eq!(r.candidate, None);
    assert_eq!(
        r.quarantine_entry(&v2.rev.digest).unwrap().reason,
        "engine cannot load the model"
    );
    // The candidate was served again while its health check re-ran, then the committed one.
    let served = fx.served.lock().unwrap().clone();
    assert_eq!(
        served,
        vec![
            ("mlp".to_owned(), Some(v2.rev.digest.clone())),
            ("mlp".to_owned(), Some(v1.rev.digest.clone()))
        ]
    );
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v1));
}

#[test]
fn restarts_during_the_trial_are_counted_and_roll_back_at_the_limit() {
    let mut fx = Fixture::new();
    fx.trial_max_restarts = 2;
    let (v1, v2) = {
        let updater = fx.open();
        let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
        let v2 = on_trial(install(&updater, &fx.bundle(&Spec::new("mlp", 2))).unwrap());
        updater.record_request("mlp", true);
        (v1, v2)
    };
    {
        let updater = fx.open();
        let c = record(&updater, "mlp").candidate.unwrap();
        assert_eq!((c.phase, c.restarts, c.requests), (Phase::Trial, 1, 1));
        assert_eq!(updater.serving("mlp").as_ref(), Some(&v2));
        assert_eq!(
            updater.events_since(0, 1000).pop().unwrap().kind,
            "trial_restarted"
        );
    }
    let updater = fx.open();
    let r = record(&updater, "mlp");
    assert_eq!(r.candidate, None);
    assert_eq!(r.committed.as_ref(), Some(&v1.rev));
    assert_eq!(
        r.quarantine_entry(&v2.rev.digest).unwrap().reason,
        "crashed/restarted 2 times during trial (limit 2)"
    );
    assert_eq!(updater.serving("mlp").as_ref(), Some(&v1));
    assert_eq!(fx.last_served("mlp"), Some(Some(v1.rev.digest.clone())));
}

#[test]
fn a_staging_directory_left_by_a_crash_is_removed_at_open() {
    let fx = Fixture::new();
    drop(fx.open());
    let stale = fx.staging().join("0123456789abcdef.4242.1");
    fs::create_dir_all(stale.join("assets")).unwrap();
    fs::write(stale.join("model.onnx"), b"half a model").unwrap();
    fs::write(fx.staging().join("stray-file"), b"x").unwrap();
    let _updater = fx.open();
    assert!(fx.staging_entries().is_empty());
}

#[test]
fn a_store_entry_without_a_record_is_removed_at_open() {
    let fx = Fixture::new();
    let v1 = {
        let updater = fx.open();
        install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)))
    };
    // A crash between the rename into the store and the `stored` commit.
    let orphan = fx.store().join("ab".repeat(32));
    fs::create_dir(&orphan).unwrap();
    fs::write(orphan.join("model.onnx"), b"verified but never recorded").unwrap();
    let _updater = fx.open();
    assert_eq!(fx.store_entries(), vec![v1.rev.digest.clone()]);
}

#[test]
fn the_database_reopens_with_the_same_state() {
    let fx = Fixture::new();
    let (models, events) = {
        let updater = fx.open();
        install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
        install_committed(&updater, &fx.bundle(&Spec::new("other", 1)));
        on_trial(install(&updater, &fx.bundle(&Spec::new("other", 2))).unwrap());
        // Counted in memory, persisted on drop.
        updater.record_request("other", true);
        updater.record_request("other", false);
        (updater.models(), updater.events_since(0, 1000))
    };
    let db = StateDb::open(&fx.state_dir().join("mintd.redb")).unwrap();
    assert_eq!(db.all().unwrap(), models);
    assert_eq!(db.events_since(0, 1000).unwrap(), events);
    let c = db.get("other").unwrap().unwrap().candidate.unwrap();
    assert_eq!((c.requests, c.errors), (2, 1));
    assert!(db.trusted_time().unwrap().is_some());
}

#[test]
fn a_damaged_store_entry_is_reported_and_not_served() {
    let fx = Fixture::new();
    let v1 = {
        let updater = fx.open();
        install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)))
    };
    let manifest = v1.dir.join("manifest.cbor");
    let mut bytes = fs::read(&manifest).unwrap();
    bytes[10] ^= 1;
    fs::write(&manifest, bytes).unwrap();
    let updater = fx.open();
    assert_eq!(updater.serving("mlp"), None);
    assert_eq!(fx.last_served("mlp"), Some(None));
    let tamper = updater
        .events_since(0, 1000)
        .into_iter()
        .find(|e| e.kind == "tamper_detected")
        .expect("a tamper event");
    assert_eq!(tamper.severity, "critical");
    assert_eq!(tamper.details["digest"], v1.rev.digest);
}
