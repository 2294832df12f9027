//! The log keeps what was appended, byte for byte, across reopen.

mod common;

use common::{digest, measurement};
use mint_attest::{
    encode_log, parse_log, Error, Measurement, MeasurementKind, MeasurementLog, NewMeasurement,
};

#[test]
fn append_then_reopen_gives_the_same_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("measurements.jsonl");

    let mut log = MeasurementLog::open(&path).unwrap();
    assert!(log.entries().is_empty());
    assert_eq!(log.recovered_bytes(), 0);
    let mut written = Vec::new();
    for n in 0..3 {
        let entry = log.append(measurement(n)).unwrap();
        assert_eq!(entry.index, u64::from(n));
        assert_eq!(entry.digest, digest(n));
        written.push(entry);
    }
    assert_eq!(log.entries(), &written[..]);
    drop(log);

    let log = MeasurementLog::open(&path).unwrap();
    assert_eq!(log.entries(), &written[..]);
    assert_eq!(log.recovered_bytes(), 0);
    assert_eq!(std::fs::read(&path).unwrap(), encode_log(&written).unwrap());
}

#[test]
fn line_format_is_stable() {
    // The wire/disk format is an external contract (dashboards, fleet verifier): pin it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut log = MeasurementLog::open(&path).unwrap();
    log.append(NewMeasurement {
        pcr: 16,
        kind: MeasurementKind::Other("trust-store".into()),
        name: "kws".into(),
        version: "1.2.0".into(),
        sequence: 7,
        digest: [0xab; 32],
        unix_time: 1_700_000_000,
    })
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!(
            "{{\"index\":0,\"pcr\":16,\"kind\":\"trust-store\",\"name\":\"kws\",\"version\":\"1.2.0\",\"sequence\":7,\"digest\":\"{}\",\"unix_time\":1700000000}}\n",
            "ab".repeat(32)
        )
    );
}

#[test]
fn open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/mintd/measurements.jsonl");
    let mut log = MeasurementLog::open(&path).unwrap();
    log.append(measurement(0)).unwrap();
    assert!(path.is_file());
}

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let first = MeasurementLog::open(&path).unwrap();
    match MeasurementLog::open(&path) {
        Err(Error::Locked { path: locked }) => assert_eq!(locked, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    MeasurementLog::open(&path).unwrap();
}

#[test]
fn other_kind_spelled_like_a_known_kind_reads_back_as_the_known_kind() {
    // Memory must agree with what a reopen gives: append returns the parsed-back entry.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut log = MeasurementLog::open(&path).unwrap();
    let mut new = measurement(0);
    new.kind = MeasurementKind::Other("model".into());
    assert_eq!(log.append(new).unwrap().kind, MeasurementKind::Model);
    drop(log);
    assert_eq!(
        MeasurementLog::open(&path).unwrap().entries()[0].kind,
        MeasurementKind::Model
    );
}

#[test]
fn appends_the_reader_would_refuse_are_rejected_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut log = MeasurementLog::open(&path).unwrap();
    log.append(measurement(0)).unwrap();

    let mut bad_pcr = measurement(1);
    bad_pcr.pcr = 24;
    match log.append(bad_pcr) {
        Err(Error::Rejected { source, .. }) => {
            assert!(matches!(*source, Error::PcrOutOfRange { line: 2, pcr: 24 }))
        }
        other => panic!("expected Rejected(PcrOutOfRange), got {other:?}"),
    }

    let mut huge = measurement(1);
    huge.name = "x".repeat(mint_attest::MAX_LINE_LEN);
    let err = log.append(huge).unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { source, .. } if matches!(**source, Error::LineTooLong { line: 2, .. })),
        "{err:?}"
    );

    // Nothing was written and the log carries on with the next index.
    assert_eq!(log.append(measurement(1)).unwrap().index, 1);
    drop(log);
    assert_eq!(MeasurementLog::open(&path).unwrap().entries().len(), 2);
}

#[test]
fn encode_then_parse_round_trips() {
    let entries: Vec<Measurement> = (0..5u8)
        .map(|n| {
            let mut entry = Measurement {
                index: u64::from(n),
                pcr: n,
                kind: MeasurementKind::Model,
                name: "näme with \"quotes\" and \n newline".into(),
                version: String::new(),
                sequence: u64::MAX,
                digest: digest(n),
                unix_time: 0,
            };
            if n == 3 {
                entry.kind = MeasurementKind::Other(String::new());
            }
            entry
        })
        .collect();
    let bytes = encode_log(&entries).unwrap();
    let parsed = parse_log(&bytes).unwrap();
    assert_eq!(parsed.entries, entries);
    assert_eq!(parsed.valid_len, bytes.len());
    assert_eq!(parsed.torn_bytes, 0);
}
