//! A log is only evidence if replaying it gives the quoted PCR value.

mod common;

use common::{digest, measurement};
use mint_attest::{extend, replay, verify_against, Error, MeasurementLog, PCR_RESET};

#[test]
fn replay_matches_a_manual_chain_and_ignores_other_pcrs() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MeasurementLog::open(dir.path().join("m.jsonl")).unwrap();
    for n in 0..4 {
        let mut new = measurement(n);
        new.pcr = if n == 2 { 16 } else { 23 };
        log.append(new).unwrap();
    }
    let pcr23 = extend(
        &extend(&extend(&PCR_RESET, &digest(0)), &digest(1)),
        &digest(3),
    );
    assert_eq!(replay(log.entries(), 23), pcr23);
    assert_eq!(replay(log.entries(), 16), extend(&PCR_RESET, &digest(2)));
    assert_eq!(replay(log.entries(), 0), PCR_RESET);
    assert_eq!(replay(&[], 23), PCR_RESET);

    // Known answer (see pcr.rs for the sha256sum commands): reset, extend 0x01.., 0x02...
    let entries: Vec<_> = log.entries()[1..2].to_vec();
    assert_eq!(
        hex::encode(replay(&entries, 23)),
        "5c85955f709283ecce2b74f1b1552918819f390911816e7bb466805a38ab87f3"
    );
    verify_against(log.entries(), 23, &pcr23).unwrap();
}

#[test]
fn order_matters() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MeasurementLog::open(dir.path().join("m.jsonl")).unwrap();
    log.append(measurement(0)).unwrap();
    log.append(measurement(1)).unwrap();
    let mut swapped = log.entries().to_vec();
    swapped.swap(0, 1);
    assert_ne!(replay(&swapped, 23), replay(log.entries(), 23));
}

#[test]
fn mismatch_names_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MeasurementLog::open(dir.path().join("m.jsonl")).unwrap();
    log.append(measurement(1)).unwrap();
    let replayed = replay(log.entries(), 23);
    // The device's PCR saw one more extend than its log admits.
    let quoted = extend(&replayed, &digest(7));

    let error = verify_against(log.entries(), 23, &quoted).unwrap_err();
    match &error {
        Error::PcrMismatch {
            pcr: 23,
            expected,
            replayed: got,
        } => {
            assert_eq!(*expected, quoted);
            assert_eq!(*got, replayed);
        }
        other => panic!("expected PcrMismatch, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&hex::encode(quoted)), "{text}");
    assert!(text.contains(&hex::encode(replayed)), "{text}");
    assert!(text.contains("PCR 23"), "{text}");
}
