//! Periodic re-verification of the store on real files: every way an entry can change after
//! install is found, reported once, and the copy is never loaded again, while an intact store
//! is never accused (including while garbage collection removes entries).

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use common::*;
use mint_updater::updater::UpdateError;

fn never() -> bool {
    false
}

fn tamper_events(updater: &mint_updater::updater::Updater) -> Vec<mint_updater::LifecycleEvent> {
    updater
        .events_since(0, 1000)
        .into_iter()
        .filter(|e| e.kind == "tamper_detected")
        .collect()
}

#[test]
fn an_intact_store_is_intact() {
    let fx = Fixture::new();
    let updater = fx.open();
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 2)));
    let check = updater.verify_store(0, &never).unwrap();
    assert_eq!(check.intact, 2);
    assert!(check.tampered.is_empty());
    assert!(!check.stopped);
    assert!(check.bytes > 100_000, "{check:?}");
    assert!(tamper_events(&updater).is_empty());
}

/// Each case changes the committed entry in one way; `what` is the file the event must name.
fn case(change: impl Fn(&std::path::Path), what: &str, reason_part: &str) {
    let fx = Fixture::new();
    let updater = fx.open();
    let model = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    change(&model.dir);
    let check = updater.verify_store(0, &never).unwrap();
    assert_eq!(check.tampered, vec![model.rev.digest.clone()], "{what}");
    let events = tamper_events(&updater);
    assert_eq!(events.len(), 1, "{what}: {events:?}");
    let e = &events[0];
    assert_eq!(e.severity, "critical");
    assert_eq!(e.model.as_deref(), Some("mlp"));
    assert_eq!(e.details["digest"], model.rev.digest.as_str());
    assert_eq!(e.details["file"], what);
    assert_eq!(e.details["what"], "re-verification");
    assert_eq!(e.details["serving"], true);
    let reason = e.details["reason"].as_str().unwrap();
    assert!(reason.contains(reason_part), "{what}: {reason}");
    assert!(updater.is_tampered(&model.rev.digest));

    // Reported once: the next pass skips it.
    let again = updater.verify_store(0, &never).unwrap();
    assert!(again.tampered.is_empty());
    assert_eq!(tamper_events(&updater).len(), 1);

    // Never loaded again, even by a restarted daemon: the mark is durable.
    drop(updater);
    let reopened = fx.open();
    assert!(reopened.is_tampered(&model.rev.digest));
    assert_eq!(reopened.serving("mlp"), None, "{what}");
}

#[test]
fn a_flipped_byte_in_the_model() {
    case(
        |dir| {
            let path = dir.join("model.onnx");
            let mut bytes = fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(&path, bytes).unwrap();
        },
        "model.onnx",
        "SHA-256 is",
    );
}

#[test]
fn a_truncated_model() {
    case(
        |dir| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("model.onnx"))
                .unwrap();
            f.set_len(10).unwrap();
        },
        "model.onnx",
        "has 10 bytes",
    );
}

#[test]
fn a_deleted_model() {
    case(
        |dir| fs::remove_file(dir.join("model.onnx")).unwrap(),
        "model.onnx",
        "is missing",
    );
}

#[test]
fn a_model_replaced_by_a_symlink() {
    case(
        |dir| {
            let path = dir.join("model.onnx");
            let copy = dir
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("elsewhere.onnx");
            fs::copy(&path, &copy).unwrap();
            fs::remove_file(&path).unwrap();
            symlink(&copy, &path).unwrap();
        },
        "model.onnx",
        "not a regular file",
    );
}

#[test]
fn a_rewritten_manifest() {
    case(
        |dir| {
            let path = dir.join("manifest.cbor");
            let mut bytes = fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x20;
            fs::write(&path, bytes).unwrap();
        },
        "manifest.cbor",
        "the installed manifest's is",
    );
}

#[test]
fn a_planted_file() {
    case(
        |dir| fs::write(dir.join("extra.so"), b"payload").unwrap(),
        "extra.so",
        "not part of the installed bundle",
    );
}

#[test]
fn a_tampered_rollback_target_is_never_rolled_back_to() {
    let fx = Fixture::new();
    let updater = fx.open();
    let old = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let new = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 2)));
    let path = old.dir.join("model.onnx");
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let check = updater.verify_store(0, &never).unwrap();
    assert_eq!(check.tampered, vec![old.rev.digest.clone()]);
    assert_eq!(check.intact, 1);
    let e = &tamper_events(&updater)[0];
    assert_eq!(e.details["serving"], false);
    // The operator asks for a rollback: the tampered revision is refused, the new one stays.
    let err = updater.rollback("mlp").unwrap_err();
    assert!(
        matches!(err, UpdateError::Store { .. }),
        "expected a store refusal, got {err:?}"
    );
    assert!(err.to_string().contains("never loaded again"), "{err}");
    assert_eq!(
        updater.serving("mlp").map(|m| m.rev.digest),
        Some(new.rev.digest)
    );
}

#[test]
fn a_stopped_check_stops_and_accuses_nothing() {
    let fx = Fixture::new();
    let updater = fx.open();
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let stop = || true;
    let check = updater.verify_store(0, &stop).unwrap();
    assert!(check.stopped);
    assert!(check.tampered.is_empty());
    assert!(tamper_events(&updater).is_empty());
}

#[test]
fn the_read_rate_is_bounded() {
    let fx = Fixture::new();
    let updater = fx.open();
    install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    let full = updater.verify_store(0, &never).unwrap();
    // At a rate of a quarter of the store per second the pass takes about 4 s; what is
    // checked is the pacing arithmetic (a lower bound), not the machine's speed.
    let rate = (full.bytes / 4).max(1);
    let started = std::time::Instant::now();
    let paced = updater.verify_store(rate, &never).unwrap();
    assert_eq!(paced.intact, 1);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(3500),
        "{:?} for {} bytes at {rate} B/s",
        started.elapsed(),
        paced.bytes
    );
}
